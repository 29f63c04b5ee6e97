/* Compiling a model into a step plan, the compile cache, and running the
 * plan's forward, loss and backward on a backend. */
#include "plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

/* ----------------------------------------------------------- compile */

static int layer_act(const Traind__V1__Layer *l, td_act *act) {
  switch (l->kind_case) {
  case TRAIND__V1__LAYER__KIND_RELU:
    *act = TD_ACT_RELU;
    return 1;
  case TRAIND__V1__LAYER__KIND_GELU:
    *act =
        (!l->gelu->approximate || l->gelu->approximate->value) ? TD_ACT_GELU_TANH : TD_ACT_GELU_ERF;
    return 1;
  case TRAIND__V1__LAYER__KIND_TANH:
    *act = TD_ACT_TANH;
    return 1;
  case TRAIND__V1__LAYER__KIND_SIGMOID:
    *act = TD_ACT_SIGMOID;
    return 1;
  default:
    return 0;
  }
}

/* Builds the signature: the packed model and optimizer messages (protobuf-c
 * packs fields in a fixed order, so equal messages give equal bytes), the
 * batch and the device set. */
static uint8_t *make_signature(const Traind__V1__Model *model, const Traind__V1__Optimizer *opt,
                               uint32_t batch, const char *device_set, size_t *len) {
  size_t nm = traind__v1__model__get_packed_size(model);
  size_t no = traind__v1__optimizer__get_packed_size(opt);
  size_t nd = strlen(device_set);
  size_t n = 3 * sizeof(uint64_t) + sizeof batch + nm + no + nd;
  uint8_t *sig = malloc(n), *p = sig;
  if (!sig)
    return NULL;
  uint64_t lens[3] = {nm, no, nd};
  memcpy(p, lens, sizeof lens);
  p += sizeof lens;
  memcpy(p, &batch, sizeof batch);
  p += sizeof batch;
  traind__v1__model__pack(model, p);
  p += nm;
  traind__v1__optimizer__pack(opt, p);
  p += no;
  memcpy(p, device_set, nd);
  *len = n;
  return sig;
}

/* The names of a plan's views while it compiles: an open-addressing set
 * of view indices (plus one; 0 is empty), at most half full, so that each
 * name is checked against the others in constant time. */
typedef struct name_set {
  uint32_t *slots;
  size_t mask;
} name_set;

static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* Adds view i of p to the set; 0 when a view of that name is in it already. */
static int name_set_add(name_set *ns, const td_plan *p, size_t i) {
  const char *name = p->views[i].name;
  for (size_t k = name_hash(name) & ns->mask;; k = (k + 1) & ns->mask) {
    if (!ns->slots[k]) {
      ns->slots[k] = (uint32_t)i + 1;
      return 1;
    }
    if (strcmp(p->views[ns->slots[k] - 1].name, name) == 0)
      return 0;
  }
}

static int add_view(td_plan *p, name_set *names, const char *group, const char *leaf, uint32_t d0,
                    uint32_t d1, uint32_t ndim, size_t *index, td_error *err) {
  td_view *v = &p->views[p->n_views];
  int n = snprintf(v->name, sizeof v->name, "%s/%s", group, leaf);
  if (n < 0 || (size_t)n >= sizeof v->name)
    return td_errorf(err, TD_EINVAL, "layer name '%s' is too long (at most %d characters)", group,
                     TD_VIEW_NAME_MAX - 3);
  if (!name_set_add(names, p, p->n_views))
    return td_errorf(err, TD_EINVAL,
                     "model.layers: two layers are both named '%s'; give "
                     "each dense layer its own name",
                     group);
  v->ndim = ndim;
  v->shape[0] = d0;
  v->shape[1] = ndim > 1 ? d1 : 0;
  v->size = (size_t)d0 * (ndim > 1 ? d1 : 1);
  /* Each tensor starts on a 16-float boundary so that vector loops over
   * one tensor start aligned. */
  v->offset = (p->n_params + 15) & ~(size_t)15;
  p->n_params = v->offset + v->size;
  *index = p->n_views++;
  return TD_OK;
}

static int valid_name(const char *s) {
  if (!*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
    return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '_' || *s == '-' || *s == '.'))
      return 0;
  return 1;
}

static int compile_layers(td_plan *p, const Traind__V1__Model *m, name_set *names, td_error *err) {
  size_t n = m->n_layers;
  p->layers = calloc(n ? n : 1, sizeof *p->layers);
  p->views = calloc(2 * (n ? n : 1), sizeof *p->views);
  /* Two views per layer at most, in a set at most half full. */
  names->mask = 1;
  while (names->mask + 1 < 4 * (n ? n : 1))
    names->mask = names->mask * 2 + 1;
  names->slots = calloc(names->mask + 1, sizeof *names->slots);
  if (!p->layers || !p->views || !names->slots)
    return td_errorf(err, TD_ENOMEM, "compile: out of memory");

  const size_t B = p->batch;
  size_t arena = 0;
#define ARENA(nfloats) \
  (arena += (((nfloats) + 15) & ~(size_t)15), arena - (((nfloats) + 15) & ~(size_t)15))
  p->in_off = ARENA(B * p->in_dim);
  p->labels_off = ARENA(B);

  uint32_t features = p->in_dim;
  size_t x = p->in_off, dx = TD_NONE;
  int dense_count = 0;
  for (size_t i = 0; i < n; i++) {
    const Traind__V1__Layer *l = m->layers[i];
    td_layer *L = &p->layers[p->n_layers];
    memset(L, 0, sizeof *L);
    L->spec_index = (uint32_t)i;
    L->in = features;
    L->x = x;
    L->dx = dx;
    L->w_view = L->b_view = TD_NONE;
    L->mask = TD_NONE;
    td_act act;
    if (l->kind_case == TRAIND__V1__LAYER__KIND_DENSE) {
      const Traind__V1__Dense *d = l->dense;
      if (d->features == 0)
        return td_errorf(err, TD_EINVAL, "model.layers[%zu].dense.features: must be > 0", i);
      dense_count++;
      char group[TD_VIEW_NAME_MAX];
      if (l->name && *l->name) {
        if (!valid_name(l->name))
          return td_errorf(err, TD_EINVAL,
                           "model.layers[%zu].name: '%s' may use only letters, "
                           "digits, '_', '-' and '.'",
                           i, l->name);
        if (strlen(l->name) > TD_VIEW_NAME_MAX - 4)
          return td_errorf(err, TD_EINVAL, "model.layers[%zu].name: longer than %d characters", i,
                           TD_VIEW_NAME_MAX - 4);
        snprintf(group, sizeof group, "%.*s", TD_VIEW_NAME_MAX - 4, l->name);
      } else {
        snprintf(group, sizeof group, "layer%d", dense_count);
      }
      L->kind = TD_LAYER_DENSE;
      L->out = d->features;
      L->kernel_init = d->kernel_init ? d->kernel_init : TRAIND__V1__INITIALIZER__LECUN_NORMAL;
      L->bias_init = d->bias_init ? d->bias_init : TRAIND__V1__INITIALIZER__ZEROS;
      int rc = add_view(p, names, group, "w", features, d->features, 2, &L->w_view, err);
      if (!rc && (!d->use_bias || d->use_bias->value))
        rc = add_view(p, names, group, "b", d->features, 0, 1, &L->b_view, err);
      if (rc)
        return rc;
      /* Fuse the activation that follows, if any. */
      L->act = TD_ACT_NONE;
      if (i + 1 < n && layer_act(m->layers[i + 1], &act)) {
        L->act = act;
        i++;
      }
    } else if (layer_act(l, &act)) {
      L->kind = TD_LAYER_ACT;
      L->act = act;
      L->out = features;
    } else if (l->kind_case == TRAIND__V1__LAYER__KIND_DROPOUT) {
      L->kind = TD_LAYER_DROPOUT;
      L->out = features;
      L->rate = (float)l->dropout->rate;
      if (!(l->dropout->rate >= 0.0 && l->dropout->rate < 1.0))
        return td_errorf(err, TD_EINVAL,
                         "model.layers[%zu].dropout.rate: must be in [0, 1) "
                         "(got %g)",
                         i, l->dropout->rate);
    } else {
      return td_errorf(err, TD_EINVAL,
                       "model.layers[%zu]: set one of: dense, relu, gelu, tanh, "
                       "sigmoid, dropout",
                       i);
    }
    size_t cells = B * L->out;
    L->y = ARENA(cells);
    L->z = (L->kind == TD_LAYER_DENSE && td_act_needs_preact(L->act)) ? ARENA(cells) : L->y;
    if (L->kind == TD_LAYER_ACT)
      L->z = L->x; /* the input is the pre-activation */
    L->dy = ARENA(cells);
    if (L->kind == TD_LAYER_DROPOUT) {
      L->mask = ARENA(cells);
      L->key_slot = p->n_keys++;
    }
    features = L->out;
    x = L->y;
    dx = L->dy;
    p->n_layers++;
  }
  if (dense_count == 0)
    return td_errorf(err, TD_EINVAL, "model.layers: the model needs at least one dense layer");
  p->out_dim = features;
  p->out_off = x;
  p->dout_off = dx;
  p->scalars_off = ARENA(TD_PLAN_SCALARS);
  p->arena_floats = arena;
#undef ARENA
  return TD_OK;
}

int td_plan_compile(const Traind__V1__Model *model, const Traind__V1__Optimizer *opt,
                    uint32_t batch, const char *device_set, td_plan **out, td_error *err) {
  double t0 = td_mono_ms();
  *out = NULL;
  if (!model)
    return td_errorf(err, TD_EINVAL, "model: required");
  if (batch == 0)
    return td_errorf(err, TD_EINVAL, "training.batch_size: must be > 0");
  if (model->n_input_shape == 0)
    return td_errorf(err, TD_EINVAL, "model.input_shape: required (for example [784] or [28, 28])");
  uint64_t in_dim = 1;
  for (size_t i = 0; i < model->n_input_shape; i++) {
    if (model->input_shape[i] == 0)
      return td_errorf(err, TD_EINVAL, "model.input_shape[%zu]: must be > 0", i);
    in_dim *= model->input_shape[i];
    if (in_dim > (1u << 24))
      return td_errorf(err, TD_EINVAL, "model.input_shape: more than %u features per example",
                       1u << 24);
  }
  if (model->dtype != TRAIND__V1__DTYPE__DTYPE_UNSPECIFIED &&
      model->dtype != TRAIND__V1__DTYPE__FLOAT32)
    return td_errorf(err, TD_EINVAL, "model.dtype: only FLOAT32 is supported");

  td_plan *p = calloc(1, sizeof *p);
  if (!p)
    return td_errorf(err, TD_ENOMEM, "compile: out of memory");
  p->batch = batch;
  p->in_dim = (uint32_t)in_dim;
  p->loss = model->loss;
  name_set names = {NULL, 0};
  int rc = compile_layers(p, model, &names, err);
  free(names.slots);
  if (!rc) {
    if (p->loss == TRAIND__V1__LOSS__LOSS_UNSPECIFIED)
      rc = td_errorf(err, TD_EINVAL,
                     "model.loss: required (SOFTMAX_CROSS_ENTROPY or MEAN_SQUARED_ERROR)");
    else if (p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY && p->out_dim < 2)
      rc = td_errorf(err, TD_EINVAL,
                     "model.layers: SOFTMAX_CROSS_ENTROPY needs at least 2 "
                     "outputs, the last layer has %u",
                     p->out_dim);
  }
  if (!rc)
    rc = td_optim_compile(opt, &p->optim, err);
  if (!rc) {
    /* The step record: slot and row0, the dropout keys, then the passes' scalars
     * (8-byte aligned: they hold doubles). */
    p->rec_scalars_off = ((2 + 2 * (size_t)p->n_keys) * sizeof(uint32_t) + 7) & ~(size_t)7;
    p->rec_bytes = p->rec_scalars_off + (size_t)p->optim.n_stages * sizeof(td_opt_scalars);
  }
  if (!rc) {
    p->sig = make_signature(model, opt, batch, device_set ? device_set : "", &p->sig_len);
    if (!p->sig)
      rc = td_errorf(err, TD_ENOMEM, "compile: out of memory");
  }
  if (rc) {
    td_plan_free(p);
    return rc;
  }
  p->compile_ms = td_mono_ms() - t0;
  *out = p;
  return TD_OK;
}

void td_plan_free(td_plan *p) {
  if (!p)
    return;
  free(p->sig);
  free(p->views);
  free(p->layers);
  free(p);
}

size_t td_plan_find_view(const td_plan *p, const char *name) {
  for (size_t i = 0; i < p->n_views; i++)
    if (strcmp(p->views[i].name, name) == 0)
      return i;
  return TD_NONE;
}

/* ------------------------------------------------------------- cache */

typedef struct td_plan_entry {
  struct td_plan_entry *next;
  td_plan *plan;
  int refs;
} td_plan_entry;

void td_plan_cache_init(td_plan_cache *c) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
}

void td_plan_cache_free(td_plan_cache *c) {
  td_plan_entry *e = c->head;
  while (e) {
    td_plan_entry *next = e->next;
    td_plan_free(e->plan);
    free(e);
    e = next;
  }
  c->head = NULL;
  pthread_mutex_destroy(&c->mu);
}

int td_plan_cache_get(td_plan_cache *c, const Traind__V1__Model *model,
                      const Traind__V1__Optimizer *opt, uint32_t batch, const char *device_set,
                      const td_plan **out, int *hit, td_error *err) {
  /* Compiling is cheap next to a job, so compile outside the lock and
   * keep the first plan if two jobs race on one signature. */
  td_plan *fresh = NULL;
  int rc = td_plan_compile(model, opt, batch, device_set, &fresh, err);
  if (rc)
    return rc;
  pthread_mutex_lock(&c->mu);
  td_plan_entry *e = c->head;
  for (; e; e = e->next)
    if (e->plan->sig_len == fresh->sig_len && memcmp(e->plan->sig, fresh->sig, fresh->sig_len) == 0)
      break;
  if (e) {
    c->hits++;
    e->refs++;
    *hit = 1;
  } else {
    e = calloc(1, sizeof *e);
    if (!e) {
      pthread_mutex_unlock(&c->mu);
      td_plan_free(fresh);
      return td_errorf(err, TD_ENOMEM, "compile cache: out of memory");
    }
    e->plan = fresh;
    e->refs = 1;
    e->next = c->head;
    c->head = e;
    c->n_entries++;
    c->misses++;
    fresh = NULL;
    *hit = 0;
  }
  *out = e->plan;
  pthread_mutex_unlock(&c->mu);
  td_plan_free(fresh);
  return TD_OK;
}

void td_plan_cache_release(td_plan_cache *c, const td_plan *p) {
  pthread_mutex_lock(&c->mu);
  for (td_plan_entry *e = c->head; e; e = e->next)
    if (e->plan == p) {
      e->refs--;
      break;
    }
  pthread_mutex_unlock(&c->mu);
}

/* ------------------------------------------------------------- state */

int td_state_init(td_state *st, const td_plan *plan, td_backend *be, td_error *err) {
  memset(st, 0, sizeof *st);
  st->plan = plan;
  st->be = be;
  const td_backend_ops *ops = be->ops;
  size_t np = plan->n_params;
  st->params = ops->alloc(be, np * sizeof(float));
  st->grads = ops->alloc(be, np * sizeof(float));
  st->opt_state = ops->alloc(be, (plan->optim.state_slots * np + 1) * sizeof(float));
  st->arena = ops->alloc(be, plan->arena_floats * sizeof(float));
  if (!st->params || !st->grads || !st->opt_state || !st->arena) {
    td_state_free(st);
    return td_errorf(err, TD_ENOMEM, "%s backend: cannot allocate %.1f MiB of buffers", ops->name,
                     (double)((2 + plan->optim.state_slots) * np + plan->arena_floats) * 4.0 /
                         (1024.0 * 1024.0));
  }
  return TD_OK;
}

void td_state_free(td_state *st) {
  if (!st->be)
    return;
  const td_backend_ops *ops = st->be->ops;
  ops->release(st->be, st->params);
  ops->release(st->be, st->grads);
  ops->release(st->be, st->opt_state);
  ops->release(st->be, st->arena);
  memset(st, 0, sizeof *st);
}

/* Fills host buffer h (n) from an initializer. */
static void draw_init(Traind__V1__Initializer init, td_key key, float *h, size_t n, double fan_in,
                      double fan_out) {
  double scale = 0.0;
  int normal = 1;
  switch (init) {
  case TRAIND__V1__INITIALIZER__ONES:
    for (size_t i = 0; i < n; i++)
      h[i] = 1.0f;
    return;
  case TRAIND__V1__INITIALIZER__HE_NORMAL:
    scale = sqrt(2.0 / fan_in);
    break;
  case TRAIND__V1__INITIALIZER__HE_UNIFORM:
    scale = sqrt(6.0 / fan_in);
    normal = 0;
    break;
  case TRAIND__V1__INITIALIZER__GLOROT_NORMAL:
    scale = sqrt(2.0 / (fan_in + fan_out));
    break;
  case TRAIND__V1__INITIALIZER__GLOROT_UNIFORM:
    scale = sqrt(6.0 / (fan_in + fan_out));
    normal = 0;
    break;
  case TRAIND__V1__INITIALIZER__LECUN_NORMAL:
    scale = sqrt(1.0 / fan_in);
    break;
  case TRAIND__V1__INITIALIZER__LECUN_UNIFORM:
    scale = sqrt(3.0 / fan_in);
    normal = 0;
    break;
  default: /* ZEROS and unset */
    memset(h, 0, n * sizeof *h);
    return;
  }
  if (normal) {
    td_prng_normal(key, h, n);
    for (size_t i = 0; i < n; i++)
      h[i] = (float)(h[i] * scale);
  } else {
    td_prng_uniform(key, h, n, (float)-scale, (float)scale);
  }
}

int td_state_init_params(td_state *st, td_key key, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  float *h = calloc(p->n_params ? p->n_params : 1, sizeof *h);
  if (!h)
    return td_errorf(err, TD_ENOMEM, "init: out of memory");
  uint32_t k = 0;
  for (size_t i = 0; i < p->n_layers; i++) {
    const td_layer *L = &p->layers[i];
    if (L->kind != TD_LAYER_DENSE)
      continue;
    td_key pair[2];
    td_prng_split(td_prng_fold_in(key, k++), pair, 2);
    const td_view *w = &p->views[L->w_view];
    draw_init(L->kernel_init, pair[0], h + w->offset, w->size, L->in, L->out);
    if (L->b_view != TD_NONE) {
      const td_view *b = &p->views[L->b_view];
      draw_init(L->bias_init, pair[1], h + b->offset, b->size, L->in, L->out);
    }
  }
  int rc = ops->upload(st->be, st->params, h, p->n_params * sizeof *h);
  free(h);
  if (!rc)
    rc = ops->fill(st->be, st->opt_state, p->optim.state_slots * p->n_params, 0.0f);
  if (rc)
    return td_errorf(err, rc, "init: upload of parameters failed");
  st->step = 0;
  return TD_OK;
}

#define CALL(expr, what)                                                                           \
  do {                                                                                             \
    int rc_ = (expr);                                                                              \
    if (rc_)                                                                                       \
      return td_errorf(err, rc_, "%s backend: %s failed (%s)", ops->name, what, td_strerror(rc_)); \
  } while (0)

void td_plan_dropout_keys(const td_plan *p, td_key step_key, uint32_t *keys) {
  for (size_t i = 0; i < p->n_layers; i++) {
    const td_layer *L = &p->layers[i];
    if (L->kind == TD_LAYER_DROPOUT) {
      td_key k = td_prng_fold_in(step_key, L->spec_index);
      keys[2 * L->key_slot] = k.k[0];
      keys[2 * L->key_slot + 1] = k.k[1];
    }
  }
}

void td_plan_fill_rec(const td_plan *p, void *rec, uint32_t slot, uint32_t row0, int64_t count,
                      td_key dropout_key) {
  td_step_record *r = rec;
  r->slot = slot;
  r->row0 = row0;
  td_plan_dropout_keys(p, td_prng_fold_in(dropout_key, (uint32_t)count), r->keys);
  td_optim_scalars(&p->optim, count, td_rec_scalars(p, rec));
}

int td_state_forward(td_state *st, int rows, int train, const uint32_t *keys, uint64_t row0,
                     td_error *err) {
  const td_plan *p = st->plan;
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  for (size_t i = 0; i < p->n_layers; i++) {
    const td_layer *L = &p->layers[i];
    switch (L->kind) {
    case TD_LAYER_DENSE: {
      const float *w = st->params + p->views[L->w_view].offset;
      const float *b = L->b_view == TD_NONE ? NULL : st->params + p->views[L->b_view].offset;
      CALL(ops->gemm(be, 0, 0, rows, (int)L->out, (int)L->in, 1.0f, a + L->x, (int)L->in, w,
                     (int)L->out, 0.0f, a + L->z, (int)L->out),
           "dense forward gemm");
      CALL(ops->bias_act_fwd(be, L->act, rows, (int)L->out, b, a + L->z, a + L->y),
           "bias+activation forward");
      break;
    }
    case TD_LAYER_ACT:
      CALL(ops->bias_act_fwd(be, L->act, rows, (int)L->out, NULL, a + L->x, a + L->y),
           "activation forward");
      break;
    case TD_LAYER_DROPOUT: {
      size_t cells = (size_t)rows * L->out;
      if (train && L->rate > 0.0f) {
        CALL(ops->dropout_fwd(be, cells, row0 * L->out, L->rate, keys + 2 * L->key_slot, a + L->x,
                              a + L->mask, a + L->y),
             "dropout forward");
      } else {
        CALL(ops->copy(be, a + L->y, a + L->x, cells), "dropout copy");
        if (train)
          CALL(ops->fill(be, a + L->mask, cells, 1.0f), "dropout mask");
      }
      break;
    }
    }
  }
  return TD_OK;
}

int td_state_loss(td_state *st, int rows, int with_grad, td_error *err) {
  const td_plan *p = st->plan;
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  const int32_t *labels = (const int32_t *)(a + p->labels_off);
  float *dout = with_grad ? a + p->dout_off : NULL;
  float *sc = a + p->scalars_off;
  if (p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY)
    CALL(ops->softmax_xent(be, rows, (int)p->out_dim, a + p->out_off, labels,
                           1.0f / (float)p->batch, dout, sc + TD_SC_LOSS_SUM),
         "softmax cross-entropy");
  else
    CALL(ops->mse_onehot(be, rows, (int)p->out_dim, a + p->out_off, labels,
                         1.0f / ((float)p->batch * (float)p->out_dim), dout, sc + TD_SC_LOSS_SUM),
         "mean squared error");
  return TD_OK;
}

int td_state_backward(td_state *st, td_error *err) {
  const td_plan *p = st->plan;
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  const int B = (int)p->batch;
  for (size_t i = p->n_layers; i-- > 0;) {
    const td_layer *L = &p->layers[i];
    switch (L->kind) {
    case TD_LAYER_DENSE: {
      const td_view *wv = &p->views[L->w_view];
      float *db = L->b_view == TD_NONE ? NULL : st->grads + p->views[L->b_view].offset;
      /* dz = dy * act'(z), in place, and db = column sums of dz. */
      CALL(ops->bias_act_bwd(be, L->act, B, (int)L->out, a + L->z, a + L->y, a + L->dy, a + L->dy,
                             db),
           "bias+activation backward");
      /* dw (in, out) = x^T dz */
      CALL(ops->gemm(be, 1, 0, (int)L->in, (int)L->out, B, 1.0f, a + L->x, (int)L->in, a + L->dy,
                     (int)L->out, 0.0f, st->grads + wv->offset, (int)L->out),
           "dense weight gradient gemm");
      /* dx (B, in) = dz w^T, skipped for the first layer. */
      if (L->dx != TD_NONE)
        CALL(ops->gemm(be, 0, 1, B, (int)L->in, (int)L->out, 1.0f, a + L->dy, (int)L->out,
                       st->params + wv->offset, (int)L->out, 0.0f, a + L->dx, (int)L->in),
             "dense input gradient gemm");
      break;
    }
    case TD_LAYER_ACT:
      if (L->dx != TD_NONE)
        CALL(ops->bias_act_bwd(be, L->act, B, (int)L->out, a + L->x, a + L->y, a + L->dy, a + L->dx,
                               NULL),
             "activation backward");
      break;
    case TD_LAYER_DROPOUT:
      if (L->dx != TD_NONE)
        CALL(ops->mul(be, (size_t)B * L->out, a + L->dy, a + L->mask, a + L->dx),
             "dropout backward");
      break;
    }
  }
  return TD_OK;
}
