/* The ops of the op table (TD_OPS, plan.h; see ops.h), each as its
 * functions: reading its layer, shapes, parameters, FLOPs, and its forward
 * and backward passes on the backend. */
#include "ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CALL(expr, what)                                                                       \
  do {                                                                                         \
    int rc_ = (expr);                                                                          \
    if (rc_)                                                                                   \
      return td_errorf(err, rc_, "%s backend: %s of %s failed (%s)", ops->name, what, n->name, \
                       td_strerror(rc_));                                                      \
  } while (0)

#define TD_OP_PREP_KERNEL(nm) op_##nm##_prepare
#define TD_OP_PREP_NONE(nm) NULL
const td_op_row td_op_table[TD_N_OPS] = {
#define TD_OP_ROW(id, nm, min_in, max_in, kernel) \
  [TD_OP_##id] = {#nm,                            \
                  min_in,                         \
                  max_in,                         \
                  op_##nm##_build,                \
                  op_##nm##_shape,                \
                  op_##nm##_params,               \
                  op_##nm##_init,                 \
                  op_##nm##_flops,                \
                  op_##nm##_fwd,                  \
                  op_##nm##_bwd,                  \
                  TD_OP_PREP_##kernel(nm)},
    TD_OPS(TD_OP_ROW)
#undef TD_OP_ROW
};

int td_op_of_layer(const Traind__V1__Layer *l) {
  switch (l->kind_case) {
  case TRAIND__V1__LAYER__KIND_DENSE:
    return TD_OP_DENSE;
  case TRAIND__V1__LAYER__KIND_RELU:
  case TRAIND__V1__LAYER__KIND_GELU:
  case TRAIND__V1__LAYER__KIND_TANH:
  case TRAIND__V1__LAYER__KIND_SIGMOID:
    return TD_OP_ACT;
  case TRAIND__V1__LAYER__KIND_DROPOUT:
    return TD_OP_DROPOUT;
  case TRAIND__V1__LAYER__KIND_ADD:
    return TD_OP_ADD;
  case TRAIND__V1__LAYER__KIND_CONCATENATE:
    return TD_OP_CONCAT;
  case TRAIND__V1__LAYER__KIND_FLATTEN:
  case TRAIND__V1__LAYER__KIND_RESHAPE:
    return TD_OP_RESHAPE;
  case TRAIND__V1__LAYER__KIND_CONV:
    return TD_OP_CONV;
  case TRAIND__V1__LAYER__KIND_MAX_POOL:
  case TRAIND__V1__LAYER__KIND_AVG_POOL:
    return TD_OP_POOL;
  case TRAIND__V1__LAYER__KIND_GLOBAL_AVG_POOL:
    return TD_OP_GAP;
  case TRAIND__V1__LAYER__KIND_BATCH_NORM:
    return TD_OP_BATCH_NORM;
  case TRAIND__V1__LAYER__KIND_LAYER_NORM:
    return TD_OP_LAYER_NORM;
  case TRAIND__V1__LAYER__KIND_EMBED:
    return TD_OP_EMBED;
  case TRAIND__V1__LAYER__KIND_POSITION_EMBEDDING:
    return TD_OP_POS_EMBED;
  case TRAIND__V1__LAYER__KIND_CAUSAL_SELF_ATTENTION:
    return TD_OP_ATTENTION;
  default:
    return -1;
  }
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

/* A gradient for input i of n, computed by `write` into dx or, when dx
 * already holds another consumer's part, into the scratch buffer and then
 * added in. */
static float *grad_target(const td_state *st, const td_node *n, int i) {
  return st->arena + (n->dx_acc[i] ? st->plan->scratch_off : n->dx[i]);
}

static int grad_finish(td_state *st, const td_node *n, int i, size_t cells, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  if (!n->dx_acc[i])
    return TD_OK;
  float *dx = st->arena + n->dx[i];
  CALL(ops->add(st->be, cells, dx, st->arena + st->plan->scratch_off, dx), "gradient sum");
  return TD_OK;
}

/* Per-example gradients (td_state_backward_dp): the norms' accumulators,
 * and n's output gradient, `per` values per example, with each example's
 * rows times its clip factor, in the plan's pe_rows buffer. */
static double *pe_acc(const td_state *st) { return (double *)(st->arena + st->plan->pe_acc_off); }

static float *pe_scaled(td_state *st, const td_node *n, size_t per, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena, *dst = a + st->plan->pe_rows_off;
  int rc = ops->row_scale(st->be, (int)st->plan->batch, per, a + n->dy, a + st->plan->pe_factor_off,
                          dst);
  if (rc) {
    td_errorf(err, rc, "%s backend: scaling the per-example gradients of %s failed (%s)", ops->name,
              n->name, td_strerror(rc));
    return NULL;
  }
  return dst;
}

/* The bias gradient: the column sums of the (rows, cols) gradient dz. */
static int colsums(td_state *st, const td_node *n, int rows, int cols, float *dz, float *db,
                   td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  CALL(ops->bias_act_bwd(st->be, TD_ACT_NONE, rows, cols, dz, dz, dz, dz, db), "bias gradient");
  return TD_OK;
}

/* How a node is called in messages: "model.layers[3] ('block1')", or
 * "model.layers[3]" for a layer without a name. */
static const char *node_ref(const td_node *n, char *buf, size_t len) {
  if (strncmp(n->name, "model.layers[", 13) == 0)
    snprintf(buf, len, "%s", n->name);
  else
    snprintf(buf, len, "model.layers[%u] ('%s')", n->spec_index, n->name);
  return buf;
}

/* ---- dense: z = x w + b, y = act(z) (the activation fused after it) ---- */

int op_dense_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  const Traind__V1__Dense *d = l->dense;
  if (d->features == 0)
    return td_errorf(err, TD_EINVAL, "model.layers[%u].dense.features: must be > 0", n->spec_index);
  n->out = n->channels = d->features;
  n->act = TD_ACT_NONE;
  n->kernel_init = d->kernel_init ? d->kernel_init : TRAIND__V1__INITIALIZER__LECUN_NORMAL;
  n->bias_init = d->bias_init ? d->bias_init : TRAIND__V1__INITIALIZER__ZEROS;
  n->use_bias = !d->use_bias || d->use_bias->value;
  return TD_OK;
}

/* A dense layer takes each example's values as one vector (the input's
 * shape flattened, row-major), or, over a sequence (time, features), each
 * position's features: the positions are rows of its GEMMs. Its
 * features are n->channels; n->out counts every position's. */
int op_dense_shape(td_node *n, const td_shape *in, td_error *err) {
  (void)err;
  if (in[0].seq) {
    n->positions = in[0].d[0];
    n->in_features = in[0].d[1];
    n->shape = (td_shape){2, {n->positions, n->channels}, 1};
  } else {
    n->positions = 1;
    n->in_features = (uint32_t)td_shape_size(&in[0]);
    n->shape = (td_shape){1, {n->channels}, 0};
  }
  n->out = n->positions * n->channels;
  return TD_OK;
}

int op_dense_params(td_compile *c, td_node *n, td_error *err) {
  int rc = td_compile_param(c, n, "w", n->in_features, n->channels, 2, &n->w_view, err);
  if (!rc && n->use_bias)
    rc = td_compile_param(c, n, "b", n->channels, 0, 1, &n->b_view, err);
  n->has_z = td_act_needs_preact(n->act);
  return rc;
}

void op_dense_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  td_key pair[2];
  td_prng_split(key, pair, 2);
  const td_view *w = &p->views[n->w_view];
  draw_init(n->kernel_init, pair[0], h + w->offset, w->size, n->in_features, n->channels);
  if (n->b_view != TD_NONE) {
    const td_view *b = &p->views[n->b_view];
    draw_init(n->bias_init, pair[1], h + b->offset, b->size, n->in_features, n->channels);
  }
}

double op_dense_flops(const td_node *n, uint32_t batch) {
  /* Forward x w, backward dw = x^T dz and dx = dz w^T: 2 flops each. */
  return 6.0 * batch * (double)n->in_features * n->out;
}

int op_dense_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_plan *p = st->plan;
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  const float *w = st->params + p->views[n->w_view].offset;
  const float *b = n->b_view == TD_NONE ? NULL : st->params + p->views[n->b_view].offset;
  const int rows = r->rows * (int)n->positions, cols = (int)n->channels;
  CALL(ops->gemm(be, 0, 0, rows, cols, (int)n->in_features, 1.0f, a + n->x[0], (int)n->in_features,
                 w, cols, 0.0f, a + n->z, cols),
       "forward gemm");
  CALL(ops->bias_act_fwd(be, n->act, rows, cols, b, a + n->z, a + n->y), "bias+activation forward");
  return TD_OK;
}

int op_dense_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_plan *p = st->plan;
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  const int B = (int)p->batch * (int)n->positions, cols = (int)n->channels;
  const td_view *wv = &p->views[n->w_view];
  float *db = n->b_view == TD_NONE ? NULL : st->grads + p->views[n->b_view].offset;
  float *dz = a + n->dy;
  if (st->pe_phase != 2) {
    /* dz = dy * act'(z), in place, and db = column sums of dz. */
    CALL(ops->bias_act_bwd(be, n->act, B, cols, a + n->z, a + n->y, dz, dz,
                           st->pe_phase ? NULL : db),
         "bias+activation backward");
    if (st->pe_phase == 1)
      CALL(ops->pe_dense(be, (int)p->batch, (int)n->positions, (int)n->in_features, cols,
                         a + n->x[0], dz, db != NULL, pe_acc(st)),
           "per-example gradient norms");
  } else {
    if (!(dz = pe_scaled(st, n, (size_t)n->positions * cols, err)))
      return err->code;
    if (db && colsums(st, n, B, cols, dz, db, err))
      return err->code;
  }
  /* dw (in, out) = x^T dz */
  if (st->pe_phase != 1)
    CALL(ops->gemm(be, 1, 0, (int)n->in_features, cols, B, 1.0f, a + n->x[0], (int)n->in_features,
                   dz, cols, 0.0f, st->grads + wv->offset, cols),
         "weight gradient gemm");
  /* dx (B, in) = dz w^T, added in when another consumer wrote dx first. */
  if (n->dx[0] != TD_NONE && st->pe_phase != 2)
    CALL(ops->gemm(be, 0, 1, B, (int)n->in_features, cols, 1.0f, a + n->dy, cols,
                   st->params + wv->offset, cols, n->dx_acc[0] ? 1.0f : 0.0f, a + n->dx[0],
                   (int)n->in_features),
         "input gradient gemm");
  return TD_OK;
}

/* ---- an activation not fused into a dense layer: y = act(x) ------------ */

int op_act_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  (void)err;
  switch (l->kind_case) {
  case TRAIND__V1__LAYER__KIND_RELU:
    n->act = TD_ACT_RELU;
    break;
  case TRAIND__V1__LAYER__KIND_GELU:
    n->act =
        (!l->gelu->approximate || l->gelu->approximate->value) ? TD_ACT_GELU_TANH : TD_ACT_GELU_ERF;
    break;
  case TRAIND__V1__LAYER__KIND_TANH:
    n->act = TD_ACT_TANH;
    break;
  default:
    n->act = TD_ACT_SIGMOID;
    break;
  }
  return TD_OK;
}

int op_act_shape(td_node *n, const td_shape *in, td_error *err) {
  (void)err;
  n->shape = in[0];
  n->in_features = n->out = (uint32_t)td_shape_size(&in[0]);
  return TD_OK;
}

int op_act_params(td_compile *c, td_node *n, td_error *err) {
  (void)c;
  (void)n;
  (void)err;
  return TD_OK; /* the input is the pre-activation */
}

void op_act_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  (void)p;
  (void)n;
  (void)key;
  (void)h;
}

double op_act_flops(const td_node *n, uint32_t batch) { return 2.0 * batch * (double)n->out; }

int op_act_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  CALL(ops->bias_act_fwd(st->be, n->act, r->rows, (int)n->out, NULL, a + n->x[0], a + n->y),
       "activation forward");
  return TD_OK;
}

int op_act_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  const int B = (int)st->plan->batch;
  if (n->dx[0] == TD_NONE)
    return TD_OK;
  CALL(ops->bias_act_bwd(st->be, n->act, B, (int)n->out, a + n->x[0], a + n->y, a + n->dy,
                         grad_target(st, n, 0), NULL),
       "activation backward");
  return grad_finish(st, n, 0, (size_t)B * n->out, err);
}

/* ---- dropout: y = x * mask while training, x at evaluation ------------- */

int op_dropout_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  if (!(l->dropout->rate >= 0.0 && l->dropout->rate < 1.0))
    return td_errorf(err, TD_EINVAL, "model.layers[%u].dropout.rate: must be in [0, 1) (got %g)",
                     n->spec_index, l->dropout->rate);
  n->rate = (float)l->dropout->rate;
  return TD_OK;
}

int op_dropout_shape(td_node *n, const td_shape *in, td_error *err) {
  return op_act_shape(n, in, err);
}

int op_dropout_params(td_compile *c, td_node *n, td_error *err) {
  (void)c;
  (void)err;
  n->has_mask = 1;
  return TD_OK;
}

void op_dropout_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  (void)p;
  (void)n;
  (void)key;
  (void)h;
}

double op_dropout_flops(const td_node *n, uint32_t batch) { return 2.0 * batch * (double)n->out; }

int op_dropout_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  size_t cells = (size_t)r->rows * n->out;
  if (r->train && n->rate > 0.0f) {
    CALL(ops->dropout_fwd(st->be, cells, r->row0 * n->out, n->rate, r->keys + 2 * n->key_slot,
                          a + n->x[0], a + n->mask, a + n->y),
         "dropout forward");
  } else {
    CALL(ops->copy(st->be, a + n->y, a + n->x[0], cells), "dropout copy");
    if (r->train)
      CALL(ops->fill(st->be, a + n->mask, cells, 1.0f), "dropout mask");
  }
  return TD_OK;
}

int op_dropout_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  const size_t cells = (size_t)st->plan->batch * n->out;
  if (n->dx[0] == TD_NONE)
    return TD_OK;
  CALL(ops->mul(st->be, cells, a + n->dy, a + n->mask, grad_target(st, n, 0)), "dropout backward");
  return grad_finish(st, n, 0, cells, err);
}

/* ---- add: y = x0 + x1 + ... (a residual connection) -------------------- */

int op_add_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  (void)n;
  (void)l;
  (void)err;
  return TD_OK;
}

int op_add_shape(td_node *n, const td_shape *in, td_error *err) {
  char ref[TD_VIEW_NAME_MAX + 48], a[64], b[64];
  for (uint32_t i = 1; i < n->n_in; i++)
    if (in[i].rank != in[0].rank || memcmp(in[i].d, in[0].d, in[0].rank * sizeof in[0].d[0]))
      return td_errorf(err, TD_EINVAL,
                       "%s: add needs inputs of one shape, but input 1 is %s and input %u is %s; "
                       "make the layers before it agree",
                       node_ref(n, ref, sizeof ref), td_shape_str(&in[0], a, sizeof a), i + 1,
                       td_shape_str(&in[i], b, sizeof b));
  return op_act_shape(n, in, err);
}

int op_add_params(td_compile *c, td_node *n, td_error *err) {
  (void)c;
  (void)n;
  (void)err;
  return TD_OK;
}

void op_add_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  (void)p;
  (void)n;
  (void)key;
  (void)h;
}

double op_add_flops(const td_node *n, uint32_t batch) {
  return (double)(n->n_in - 1) * batch * n->out;
}

int op_add_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  size_t cells = (size_t)r->rows * n->out;
  CALL(ops->add(st->be, cells, a + n->x[0], a + n->x[1], a + n->y), "add");
  for (uint32_t i = 2; i < n->n_in; i++)
    CALL(ops->add(st->be, cells, a + n->y, a + n->x[i], a + n->y), "add");
  return TD_OK;
}

int op_add_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  size_t cells = (size_t)st->plan->batch * n->out;
  for (uint32_t i = 0; i < n->n_in; i++) {
    if (n->dx[i] == TD_NONE)
      continue;
    float *dx = a + n->dx[i];
    if (n->dx_acc[i])
      CALL(ops->add(st->be, cells, dx, a + n->dy, dx), "add backward");
    else
      CALL(ops->copy(st->be, dx, a + n->dy, cells), "add backward");
  }
  return TD_OK;
}

/* ---- flatten and reshape: the input's values in another shape ---------- */

int op_reshape_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  n->infer = -1;
  if (l->kind_case == TRAIND__V1__LAYER__KIND_FLATTEN) {
    n->want = (td_shape){1, {0}, 0};
    n->infer = 0;
    return TD_OK;
  }
  const Traind__V1__Reshape *r = l->reshape;
  if (r->n_shape == 0 || r->n_shape > TD_MAX_RANK)
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].reshape.shape: give 1 to %d dimensions (one may be -1)",
                     n->spec_index, TD_MAX_RANK);
  n->want.rank = (uint32_t)r->n_shape;
  for (size_t i = 0; i < r->n_shape; i++) {
    if (r->shape[i] == -1 && n->infer < 0) {
      n->infer = (int)i;
      n->want.d[i] = 0;
    } else if (r->shape[i] > 0) {
      n->want.d[i] = (uint32_t)r->shape[i];
    } else {
      return td_errorf(err, TD_EINVAL,
                       "model.layers[%u].reshape.shape[%zu]: %d; each dimension is > 0, or "
                       "-1 once (the size the others leave)",
                       n->spec_index, i, (int)r->shape[i]);
    }
  }
  return TD_OK;
}

int op_reshape_shape(td_node *n, const td_shape *in, td_error *err) {
  char ref[TD_VIEW_NAME_MAX + 48], a[64], b[64];
  const size_t size = td_shape_size(&in[0]);
  td_shape s = n->want;
  size_t known = 1;
  for (uint32_t i = 0; i < s.rank; i++)
    if ((int)i != n->infer)
      known *= s.d[i];
  if (n->infer >= 0 && known && size % known == 0)
    s.d[n->infer] = (uint32_t)(size / known);
  if (td_shape_size(&s) != size || (n->infer >= 0 && s.d[n->infer] == 0)) {
    /* The target as written: -1 where a size was to be inferred. */
    size_t o = (size_t)snprintf(b, sizeof b, "(");
    for (uint32_t i = 0; i < n->want.rank && o < sizeof b; i++)
      o += (size_t)snprintf(b + o, sizeof b - o, (int)i == n->infer ? "%s-1" : "%s%u",
                            i ? ", " : "", n->want.d[i]);
    if (o < sizeof b)
      snprintf(b + o, sizeof b - o, n->want.rank == 1 ? ",)" : ")");
    return td_errorf(err, TD_EINVAL,
                     "%s: reshape of %s (%zu values) to %s: the sizes differ; give a shape of "
                     "%zu values",
                     node_ref(n, ref, sizeof ref), td_shape_str(&in[0], a, sizeof a), size, b,
                     size);
  }
  n->shape = s;
  n->in_features = n->out = (uint32_t)size;
  n->alias = 1;
  return TD_OK;
}

int op_reshape_params(td_compile *c, td_node *n, td_error *err) {
  (void)c;
  (void)n;
  (void)err;
  return TD_OK;
}

void op_reshape_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  (void)p;
  (void)n;
  (void)key;
  (void)h;
}

double op_reshape_flops(const td_node *n, uint32_t batch) {
  (void)n;
  (void)batch;
  return 0.0;
}

/* Row-major values are the same in any shape: nothing to run. */
int op_reshape_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  (void)st;
  (void)n;
  (void)r;
  (void)err;
  return TD_OK;
}

int op_reshape_bwd(td_state *st, const td_node *n, td_error *err) {
  (void)st;
  (void)n;
  (void)err;
  return TD_OK;
}

/* ---- concatenate: jnp.concatenate(inputs, axis) -------------------------
 * Row-major, every input is (outer, cols[i]) per example for the axis: the
 * dimensions before it make the rows, the axis and those after it the
 * columns. The output's rows are the inputs' side by side. */

int op_concatenate_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  (void)err;
  n->axis = l->concatenate->axis ? l->concatenate->axis : -1; /* resolved by shape */
  return TD_OK;
}

int op_concatenate_shape(td_node *n, const td_shape *in, td_error *err) {
  char ref[TD_VIEW_NAME_MAX + 48], a[64], b[64];
  const int rank = (int)in[0].rank;
  int axis = n->axis < 0 ? rank + n->axis : n->axis - 1; /* jnp's axis counts the batch */
  if (axis < 0 || axis >= rank)
    return td_errorf(err, TD_EINVAL,
                     "%s: concatenate.axis %d is outside its inputs' %d dimensions (1 to %d, or "
                     "-1 to -%d, counting the batch as jnp.concatenate does)",
                     node_ref(n, ref, sizeof ref), n->axis, rank + 1, rank, rank);
  td_shape s = in[0];
  s.d[axis] = 0;
  for (uint32_t i = 0; i < n->n_in; i++) {
    int same = in[i].rank == in[0].rank;
    for (int k = 0; same && k < rank; k++)
      same = k == axis || in[i].d[k] == in[0].d[k];
    if (!same)
      return td_errorf(err, TD_EINVAL,
                       "%s: concatenate needs inputs that agree but along axis %d, but input 1 "
                       "is %s and input %u is %s",
                       node_ref(n, ref, sizeof ref), n->axis, td_shape_str(&in[0], a, sizeof a),
                       i + 1, td_shape_str(&in[i], b, sizeof b));
    s.d[axis] += in[i].d[axis];
  }
  n->outer = 1;
  for (int k = 0; k < axis; k++)
    n->outer *= in[0].d[k];
  for (uint32_t i = 0; i < n->n_in; i++)
    n->cols[i] = (uint32_t)(td_shape_size(&in[i]) / n->outer);
  n->axis = axis;
  n->shape = s;
  n->in_features = (uint32_t)td_shape_size(&in[0]);
  n->out = (uint32_t)td_shape_size(&s);
  return TD_OK;
}

int op_concatenate_params(td_compile *c, td_node *n, td_error *err) {
  return op_reshape_params(c, n, err);
}

void op_concatenate_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  op_reshape_init(p, n, key, h);
}

double op_concatenate_flops(const td_node *n, uint32_t batch) {
  (void)n;
  (void)batch;
  return 0.0;
}

int op_concatenate_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  const size_t rows = (size_t)r->rows * n->outer, ld = n->out / n->outer;
  size_t col = 0;
  for (uint32_t i = 0; i < n->n_in; i++) {
    CALL(ops->copy2d(st->be, rows, n->cols[i], a + n->y + col, ld, a + n->x[i], n->cols[i]),
         "concatenate");
    col += n->cols[i];
  }
  return TD_OK;
}

int op_concatenate_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  const size_t rows = (size_t)st->plan->batch * n->outer, ld = n->out / n->outer;
  size_t col = 0;
  for (uint32_t i = 0; i < n->n_in; i++) {
    if (n->dx[i] != TD_NONE) {
      CALL(ops->copy2d(st->be, rows, n->cols[i], grad_target(st, n, (int)i), n->cols[i],
                       a + n->dy + col, ld),
           "concatenate backward");
      int rc = grad_finish(st, n, (int)i, rows * n->cols[i], err);
      if (rc)
        return rc;
    }
    col += n->cols[i];
  }
  return TD_OK;
}

/* ---- window ops over images (H, W, C): conv, max_pool and avg_pool ---- */

/* A spatial argument: none (dflt for both dimensions), one value for
 * both, or (height, width); each > 0. */
static int spatial(const uint32_t *v, size_t n, uint32_t dflt, int out[2], const td_node *nd,
                   const char *field, td_error *err) {
  if (n > 2)
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].%s: %zu values; give one for both dimensions or two "
                     "(height, width)",
                     nd->spec_index, field, n);
  for (int i = 0; i < 2; i++) {
    uint32_t x = n == 0 ? dflt : v[n == 1 ? 0 : i];
    if (x == 0 || x > 65536)
      return td_errorf(err, TD_EINVAL, "model.layers[%u].%s: must be in 1..65536 (got %u)",
                       nd->spec_index, field, x);
    out[i] = (int)x;
  }
  return TD_OK;
}

/* The padding of a window op: kind "SAME"/"VALID" (or empty: the default)
 * or explicit values; resolved against the input in op_*_shape. */
enum { PAD_SAME = 0, PAD_VALID, PAD_EXPLICIT };

static int read_padding(td_node *n, const char *kind, const uint32_t *expl, size_t n_expl, int dflt,
                        const char *layer, td_error *err) {
  if (n_expl) {
    if (kind && *kind)
      return td_errorf(err, TD_EINVAL,
                       "model.layers[%u].%s: set padding or explicit_padding, not both",
                       n->spec_index, layer);
    if (n_expl != 2 && n_expl != 4)
      return td_errorf(err, TD_EINVAL,
                       "model.layers[%u].%s.explicit_padding: %zu values; give [low, high] for "
                       "both dimensions or [top, bottom, left, right]",
                       n->spec_index, layer, n_expl);
    for (size_t i = 0; i < n_expl; i++)
      if (expl[i] > 65536)
        return td_errorf(err, TD_EINVAL,
                         "model.layers[%u].%s.explicit_padding[%zu]: %u is too large (at most "
                         "65536)",
                         n->spec_index, layer, i, expl[i]);
    int *p = &n->win.pt; /* pt, pb, pl, pr */
    for (int i = 0; i < 4; i++)
      p[i] = (int)expl[n_expl == 2 ? i % 2 : i];
    n->infer = PAD_EXPLICIT;
    return TD_OK;
  }
  if (!kind || !*kind)
    n->infer = dflt;
  else if (strcmp(kind, "SAME") == 0)
    n->infer = PAD_SAME;
  else if (strcmp(kind, "VALID") == 0)
    n->infer = PAD_VALID;
  else
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].%s.padding: '%.32s'; use \"SAME\", \"VALID\" or "
                     "explicit_padding",
                     n->spec_index, layer, kind);
  return TD_OK;
}

/* The window's geometry on an input of shape in (H, W, C): the padding
 * resolved (SAME as lax.padtype_to_pads: out = ceil(in / stride), the
 * padding split with the extra one at the end), the output's size. */
static int window_shape(td_node *n, const td_shape *in, const char *layer, td_error *err) {
  char ref[TD_VIEW_NAME_MAX + 48], sh[64];
  if (in->rank != 3)
    return td_errorf(err, TD_EINVAL,
                     "%s: %s takes images (height, width, channels), not values of shape %s; "
                     "give model.input_shape three dimensions or reshape the input",
                     node_ref(n, ref, sizeof ref), layer, td_shape_str(in, sh, sizeof sh));
  td_window *g = &n->win;
  g->h = (int)in->d[0];
  g->w = (int)in->d[1];
  g->c = (int)in->d[2];
  const int insz[2] = {g->h, g->w}, k[2] = {g->kh, g->kw}, s[2] = {g->sh, g->sw},
            d[2] = {g->dh, g->dw};
  int *lo[2] = {&g->pt, &g->pl}, *hi[2] = {&g->pb, &g->pr}, out[2];
  for (int i = 0; i < 2; i++) {
    if (n->infer == PAD_SAME) {
      int o = (insz[i] + s[i] - 1) / s[i];
      int total = (o - 1) * s[i] + (k[i] - 1) * d[i] + 1 - insz[i];
      if (total < 0)
        total = 0;
      *lo[i] = total / 2;
      *hi[i] = total - total / 2;
    } else if (n->infer == PAD_VALID) {
      *lo[i] = *hi[i] = 0;
    }
    out[i] = td_window_out(insz[i], *lo[i], *hi[i], k[i], s[i], d[i]);
    if (out[i] == 0)
      return td_errorf(err, TD_EINVAL,
                       "%s: the %s window (%d taps%s) does not fit the input's %s of %d (padded "
                       "%d + %d); use a smaller window or more padding",
                       node_ref(n, ref, sizeof ref), layer, k[i], d[i] > 1 ? ", dilated" : "",
                       i ? "width" : "height", insz[i], *lo[i], *hi[i]);
    /* A pooling window wholly in the padding has no value to take: max
     * pooling would give -inf and average pooling without the padding
     * 0 / 0 (with it, 0, as in Flax). SAME padding never does this. */
    if (n->op == TD_OP_POOL && n->pool != TD_POOL_AVG &&
        (*lo[i] >= k[i] || (out[i] - 1) * s[i] - *lo[i] >= insz[i]))
      return td_errorf(err, TD_EINVAL,
                       "%s: with padding %d + %d on the input's %s of %d, some %s windows (%d "
                       "taps) lie wholly in the padding; pad each side by less than the window%s",
                       node_ref(n, ref, sizeof ref), *lo[i], *hi[i], i ? "width" : "height",
                       insz[i], n->pool == TD_POOL_MAX ? "max_pool" : "avg_pool", k[i],
                       n->pool == TD_POOL_MAX ? "" : " or count the padding (count_include_pad)");
  }
  g->oh = out[0];
  g->ow = out[1];
  if ((double)g->oh * g->ow * (g->oc > g->c ? g->oc : g->c) > (double)(1u << 24))
    return td_errorf(err, TD_EINVAL,
                     "%s: its output (%d, %d, %d) has more than %u values per example; use "
                     "larger strides or fewer features",
                     node_ref(n, ref, sizeof ref), g->oh, g->ow, g->oc > g->c ? g->oc : g->c,
                     1u << 24);
  return TD_OK;
}

/* Prepares n's window kernel on the state's backend (over the full batch). */
static int window_prepare(td_state *st, const td_node *n, void **kernel, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  char ref[TD_VIEW_NAME_MAX + 48];
  int conv = n->op == TD_OP_CONV;
  if (conv ? !ops->conv_create : !ops->pool_create)
    return td_errorf(err, TD_EUNSUPPORTED,
                     "%s: the %s backend has no %s kernels yet; run this job on CPU devices",
                     node_ref(n, ref, sizeof ref), ops->name, conv ? "convolution" : "pooling");
  td_window g = n->win;
  g.n = (int)st->plan->batch;
  int rc =
      conv ? ops->conv_create(st->be, &g, kernel) : ops->pool_create(st->be, &g, n->pool, kernel);
  if (rc) {
    const char *why = ops->last_error ? ops->last_error(st->be) : "";
    return td_errorf(err, rc, "%s backend: preparing the kernel of %s failed%s%s", ops->name,
                     node_ref(n, ref, sizeof ref), *why ? ": " : "", why);
  }
  return TD_OK;
}

/* A call to a prepared kernel, failing with the backend's reason. */
#define KCALL(expr, what)                                                                      \
  do {                                                                                         \
    int rc_ = (expr);                                                                          \
    if (rc_) {                                                                                 \
      const char *why_ = ops->last_error ? ops->last_error(st->be) : "";                       \
      return td_errorf(err, rc_, "%s backend: %s of %s failed (%s)", ops->name, what, n->name, \
                       *why_ ? why_ : td_strerror(rc_));                                       \
    }                                                                                          \
  } while (0)

int op_conv_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  const Traind__V1__Conv *cv = l->conv;
  if (cv->features == 0 || cv->features > (1u << 20))
    return td_errorf(err, TD_EINVAL, "model.layers[%u].conv.features: must be in 1..%u (got %u)",
                     n->spec_index, 1u << 20, cv->features);
  if (cv->n_kernel_size == 0)
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].conv.kernel_size: required (for example [3, 3])",
                     n->spec_index);
  int k[2] = {1, 1}, s[2] = {1, 1}, d[2] = {1, 1};
  int rc = spatial(cv->kernel_size, cv->n_kernel_size, 1, k, n, "conv.kernel_size", err);
  if (!rc)
    rc = spatial(cv->strides, cv->n_strides, 1, s, n, "conv.strides", err);
  if (!rc)
    rc = spatial(cv->kernel_dilation, cv->n_kernel_dilation, 1, d, n, "conv.kernel_dilation", err);
  if (!rc)
    rc = read_padding(n, cv->padding, cv->explicit_padding, cv->n_explicit_padding, PAD_SAME,
                      "conv", err);
  if (rc)
    return rc;
  n->win.kh = k[0];
  n->win.kw = k[1];
  n->win.sh = s[0];
  n->win.sw = s[1];
  n->win.dh = d[0];
  n->win.dw = d[1];
  n->win.oc = (int)cv->features;
  n->act = TD_ACT_NONE;
  n->kernel_init = cv->kernel_init ? cv->kernel_init : TRAIND__V1__INITIALIZER__LECUN_NORMAL;
  n->bias_init = cv->bias_init ? cv->bias_init : TRAIND__V1__INITIALIZER__ZEROS;
  n->use_bias = !cv->use_bias || cv->use_bias->value;
  return TD_OK;
}

int op_conv_shape(td_node *n, const td_shape *in, td_error *err) {
  int rc = window_shape(n, in, "conv", err);
  if (rc)
    return rc;
  n->in_features = (uint32_t)td_shape_size(in);
  n->shape = (td_shape){3, {(uint32_t)n->win.oh, (uint32_t)n->win.ow, (uint32_t)n->win.oc}, 0};
  n->out = (uint32_t)td_shape_size(&n->shape);
  return TD_OK;
}

int op_conv_params(td_compile *c, td_node *n, td_error *err) {
  const td_window *g = &n->win;
  const uint32_t dims[4] = {(uint32_t)g->kh, (uint32_t)g->kw, (uint32_t)g->c, (uint32_t)g->oc};
  int rc = td_compile_tensor(c, n, "w", dims, 4, &n->w_view, err);
  if (!rc && n->use_bias)
    rc = td_compile_param(c, n, "b", (uint32_t)g->oc, 0, 1, &n->b_view, err);
  n->has_z = td_act_needs_preact(n->act);
  return rc;
}

void op_conv_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  td_key pair[2];
  td_prng_split(key, pair, 2);
  const td_window *g = &n->win;
  const double field = (double)g->kh * g->kw;
  const td_view *w = &p->views[n->w_view];
  draw_init(n->kernel_init, pair[0], h + w->offset, w->size, field * g->c, field * g->oc);
  if (n->b_view != TD_NONE) {
    const td_view *b = &p->views[n->b_view];
    draw_init(n->bias_init, pair[1], h + b->offset, b->size, field * g->c, field * g->oc);
  }
}

double op_conv_flops(const td_node *n, uint32_t batch) {
  /* Forward, backward data and backward weights: 2 flops a tap each. */
  const td_window *g = &n->win;
  return 6.0 * batch * (double)g->oh * g->ow * g->oc * g->kh * g->kw * g->c;
}

int op_conv_prepare(td_state *st, const td_node *n, void **kernel, td_error *err) {
  return window_prepare(st, n, kernel, err);
}

int op_conv_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  void *k = st->kernels[n - p->nodes];
  float *a = st->arena;
  const float *b = n->b_view == TD_NONE ? NULL : st->params + p->views[n->b_view].offset;
  KCALL(ops->conv_fwd(st->be, k, a + n->x[0], st->params + p->views[n->w_view].offset, a + n->z),
        "convolution forward");
  const int positions = n->win.oh * n->win.ow;
  CALL(ops->bias_act_fwd(st->be, n->act, r->rows * positions, n->win.oc, b, a + n->z, a + n->y),
       "bias+activation forward");
  return TD_OK;
}

int op_conv_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  void *k = st->kernels[n - p->nodes];
  float *a = st->arena;
  const int rows = (int)p->batch * n->win.oh * n->win.ow;
  float *db = n->b_view == TD_NONE ? NULL : st->grads + p->views[n->b_view].offset;
  float *dz = a + n->dy, *dw = st->grads + p->views[n->w_view].offset;
  if (st->pe_phase != 2) {
    CALL(ops->bias_act_bwd(st->be, n->act, rows, n->win.oc, a + n->z, a + n->y, dz, dz,
                           st->pe_phase ? NULL : db),
         "bias+activation backward");
    if (st->pe_phase == 1) {
      td_window g = n->win; /* the plan's geometry is per example */
      g.n = (int)p->batch;
      CALL(ops->pe_conv(st->be, &g, a + n->x[0], dz, db != NULL, pe_acc(st)),
           "per-example gradient norms");
    }
  } else {
    if (!(dz = pe_scaled(st, n, (size_t)n->out, err)))
      return err->code;
    if (db && colsums(st, n, rows, n->win.oc, dz, db, err))
      return err->code;
  }
  float *dx = n->dx[0] == TD_NONE || st->pe_phase == 2 ? NULL : grad_target(st, n, 0);
  KCALL(ops->conv_bwd(st->be, k, a + n->x[0], st->params + p->views[n->w_view].offset, dz, dx,
                      st->pe_phase == 1 ? NULL : dw),
        "convolution backward");
  return dx ? grad_finish(st, n, 0, (size_t)p->batch * n->in_features, err) : TD_OK;
}

/* max_pool and avg_pool: one op, the kind in n->pool. */
int op_pool_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  int max = l->kind_case == TRAIND__V1__LAYER__KIND_MAX_POOL;
  const Traind__V1__Pool *pl = max ? l->max_pool : l->avg_pool;
  const char *layer = max ? "max_pool" : "avg_pool";
  char field[32];
  int k[2] = {1, 1}, s[2] = {1, 1};
  if (pl->n_window_shape == 0)
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].%s.window_shape: required (for example [2, 2])",
                     n->spec_index, layer);
  snprintf(field, sizeof field, "%s.window_shape", layer);
  int rc = spatial(pl->window_shape, pl->n_window_shape, 1, k, n, field, err);
  snprintf(field, sizeof field, "%s.strides", layer);
  if (!rc)
    rc = spatial(pl->strides, pl->n_strides, 1, s, n, field, err);
  if (!rc)
    rc = read_padding(n, pl->padding, pl->explicit_padding, pl->n_explicit_padding, PAD_VALID,
                      layer, err);
  if (rc)
    return rc;
  if (max && pl->count_include_pad)
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].max_pool.count_include_pad: only avg_pool takes it",
                     n->spec_index);
  n->win.kh = k[0];
  n->win.kw = k[1];
  n->win.sh = s[0];
  n->win.sw = s[1];
  n->win.dh = n->win.dw = 1;
  n->pool = max                                                        ? TD_POOL_MAX
            : (!pl->count_include_pad || pl->count_include_pad->value) ? TD_POOL_AVG
                                                                       : TD_POOL_AVG_VALID;
  return TD_OK;
}

int op_pool_shape(td_node *n, const td_shape *in, td_error *err) {
  int rc = window_shape(n, in, n->pool == TD_POOL_MAX ? "max_pool" : "avg_pool", err);
  if (rc)
    return rc;
  n->win.oc = n->win.c;
  n->in_features = (uint32_t)td_shape_size(in);
  n->shape = (td_shape){3, {(uint32_t)n->win.oh, (uint32_t)n->win.ow, (uint32_t)n->win.c}, 0};
  n->out = (uint32_t)td_shape_size(&n->shape);
  return TD_OK;
}

int op_pool_params(td_compile *c, td_node *n, td_error *err) {
  (void)c;
  (void)n;
  (void)err;
  return TD_OK;
}

void op_pool_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  (void)p;
  (void)n;
  (void)key;
  (void)h;
}

double op_pool_flops(const td_node *n, uint32_t batch) {
  const td_window *g = &n->win;
  return 2.0 * batch * (double)g->oh * g->ow * g->c * g->kh * g->kw;
}

int op_pool_prepare(td_state *st, const td_node *n, void **kernel, td_error *err) {
  return window_prepare(st, n, kernel, err);
}

int op_pool_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  (void)r;
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  KCALL(ops->pool_fwd(st->be, st->kernels[n - st->plan->nodes], a + n->x[0], a + n->y),
        "pooling forward");
  return TD_OK;
}

int op_pool_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  if (n->dx[0] == TD_NONE)
    return TD_OK;
  KCALL(ops->pool_bwd(st->be, st->kernels[n - st->plan->nodes], st->arena + n->dy,
                      grad_target(st, n, 0)),
        "pooling backward");
  return grad_finish(st, n, 0, (size_t)st->plan->batch * n->in_features, err);
}

/* global_avg_pool: an average pooling whose window is the whole image. */
int op_global_avg_pool_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  (void)l;
  (void)err;
  n->pool = TD_POOL_AVG;
  n->infer = PAD_VALID;
  n->win.sh = n->win.sw = n->win.dh = n->win.dw = 1;
  return TD_OK;
}

int op_global_avg_pool_shape(td_node *n, const td_shape *in, td_error *err) {
  if (in->rank == 3) {
    n->win.kh = (int)in->d[0];
    n->win.kw = (int)in->d[1];
  }
  int rc = window_shape(n, in, "global_avg_pool", err);
  if (rc)
    return rc;
  n->win.oc = n->win.c;
  n->in_features = (uint32_t)td_shape_size(in);
  n->shape = (td_shape){1, {(uint32_t)n->win.c}, 0};
  n->out = (uint32_t)n->win.c;
  return TD_OK;
}

int op_global_avg_pool_params(td_compile *c, td_node *n, td_error *err) {
  return op_pool_params(c, n, err);
}

void op_global_avg_pool_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  op_pool_init(p, n, key, h);
}

double op_global_avg_pool_flops(const td_node *n, uint32_t batch) {
  return op_pool_flops(n, batch);
}

int op_global_avg_pool_prepare(td_state *st, const td_node *n, void **kernel, td_error *err) {
  return window_prepare(st, n, kernel, err);
}

int op_global_avg_pool_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  return op_pool_fwd(st, n, r, err);
}

int op_global_avg_pool_bwd(td_state *st, const td_node *n, td_error *err) {
  return op_pool_bwd(st, n, err);
}

/* ---- normalization: batch_norm over the batch, layer_norm per position -- */

/* The backend functions a norm needs, or a refusal naming the layer. */
static int norm_supported(const td_state *st, const td_node *n, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  int ok = n->op == TD_OP_BATCH_NORM
               ? ops->col_moments && ops->bn_fwd && ops->bn_bwd_sums && ops->bn_bwd_dx
               : ops->ln_fwd && ops->ln_bwd;
  char ref[TD_VIEW_NAME_MAX + 48];
  if (!ok)
    return td_errorf(err, TD_EUNSUPPORTED,
                     "%s: the %s backend has no normalization kernels yet; run this job on CPU "
                     "devices",
                     node_ref(n, ref, sizeof ref), ops->name);
  return TD_OK;
}

static int norm_eps(td_node *n, const Google__Protobuf__DoubleValue *eps, double dflt,
                    const char *layer, td_error *err) {
  double e = eps ? eps->value : dflt;
  if (!(e > 0.0 && e < 1.0))
    return td_errorf(err, TD_EINVAL, "model.layers[%u].%s.epsilon: must be in (0, 1) (got %g)",
                     n->spec_index, layer, e);
  n->eps = (float)e;
  return TD_OK;
}

/* Both norms: the last dimension is the channels; scale and bias per channel. */
static int norm_shape(td_node *n, const td_shape *in) {
  n->shape = in[0];
  n->in_features = n->out = (uint32_t)td_shape_size(&in[0]);
  n->channels = in->d[in->rank - 1];
  return TD_OK;
}

static int norm_params(td_compile *c, td_node *n, td_error *err) {
  int rc = TD_OK;
  if (n->use_scale)
    rc = td_compile_param(c, n, "scale", n->channels, 0, 1, &n->w_view, err);
  if (!rc && n->use_bias)
    rc = td_compile_param(c, n, "bias", n->channels, 0, 1, &n->b_view, err);
  return rc;
}

static void norm_init(const td_plan *p, const td_node *n, float *h) {
  if (n->w_view != TD_NONE)
    draw_init(TRAIND__V1__INITIALIZER__ONES, (td_key){{0, 0}}, h + p->views[n->w_view].offset,
              n->channels, 1, 1);
  if (n->b_view != TD_NONE)
    memset(h + p->views[n->b_view].offset, 0, n->channels * sizeof *h);
}

static double norm_flops(const td_node *n, uint32_t batch) { return 16.0 * batch * (double)n->out; }

static const float *param_or_null(const td_state *st, size_t view) {
  return view == TD_NONE ? NULL : st->params + st->plan->views[view].offset;
}

static float *grad_or_null(const td_state *st, size_t view) {
  return view == TD_NONE ? NULL : st->grads + st->plan->views[view].offset;
}

/* The mean over replicas of buf (n floats), one of the step's collectives. */
static int replicas_mean(td_state *st, const td_node *n, float *buf, size_t len, td_error *err) {
  if (!st->comm || st->comm->size < 2)
    return TD_OK;
  st->collectives++;
  int rc = st->comm->ops->allreduce(st->comm, st->rank, buf, len, TD_REDUCE_MEAN);
  if (rc)
    return td_errorf(err, rc, "%s: reducing its statistics across replicas failed", n->name);
  return TD_OK;
}

int op_batch_norm_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  const Traind__V1__BatchNorm *b = l->batch_norm;
  double m = b->momentum ? b->momentum->value : 0.99;
  if (!(m >= 0.0 && m <= 1.0))
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].batch_norm.momentum: must be in [0, 1] (got %g)",
                     n->spec_index, m);
  n->momentum = (float)m;
  n->use_scale = !b->use_scale || b->use_scale->value;
  n->use_bias = !b->use_bias || b->use_bias->value;
  return norm_eps(n, b->epsilon, 1e-5, "batch_norm", err);
}

int op_batch_norm_shape(td_node *n, const td_shape *in, td_error *err) {
  (void)err;
  return norm_shape(n, in);
}

int op_batch_norm_params(td_compile *c, td_node *n, td_error *err) {
  int rc = norm_params(c, n, err);
  if (!rc)
    rc = td_compile_stats(c, n, n->channels, &n->stat_view, err);
  /* Saved mean and 1/std, then the batch's moments (or backward's means). */
  n->aux_floats = 4 * (size_t)n->channels;
  return rc;
}

void op_batch_norm_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  (void)key;
  norm_init(p, n, h);
}

double op_batch_norm_flops(const td_node *n, uint32_t batch) { return norm_flops(n, batch); }

int op_batch_norm_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  int rc = norm_supported(st, n, err);
  if (rc)
    return rc;
  float *a = st->arena, *saved = a + n->aux, *mom = saved + 2 * n->channels;
  const int C = (int)n->channels, rows = r->rows * (int)(n->out / n->channels);
  float *running = st->stats + p->stat_views[n->stat_view].offset;
  if (r->train) {
    CALL(ops->col_moments(st->be, rows, C, a + n->x[0], mom), "batch statistics");
    if ((rc = replicas_mean(st, n, mom, 2 * (size_t)C, err)))
      return rc;
  }
  CALL(ops->bn_fwd(st->be, r->train, rows, C, a + n->x[0], mom, running, n->momentum, n->eps,
                   param_or_null(st, n->w_view), param_or_null(st, n->b_view), a + n->y, saved),
       "batch norm forward");
  return TD_OK;
}

int op_batch_norm_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena, *saved = a + n->aux, *s = saved + 2 * n->channels;
  const int C = (int)n->channels, rows = (int)p->batch * (int)(n->out / n->channels);
  CALL(ops->bn_bwd_sums(st->be, rows, C, a + n->x[0], a + n->dy, saved, grad_or_null(st, n->w_view),
                        grad_or_null(st, n->b_view), s),
       "batch norm backward");
  if (n->dx[0] == TD_NONE)
    return TD_OK;
  int rc = replicas_mean(st, n, s, 2 * (size_t)C, err);
  if (rc)
    return rc;
  CALL(ops->bn_bwd_dx(st->be, rows, C, a + n->x[0], a + n->dy, saved, param_or_null(st, n->w_view),
                      s, grad_target(st, n, 0)),
       "batch norm input gradient");
  return grad_finish(st, n, 0, (size_t)p->batch * n->out, err);
}

int op_layer_norm_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  const Traind__V1__LayerNorm *ln = l->layer_norm;
  n->use_scale = !ln->use_scale || ln->use_scale->value;
  n->use_bias = !ln->use_bias || ln->use_bias->value;
  return norm_eps(n, ln->epsilon, 1e-6, "layer_norm", err);
}

int op_layer_norm_shape(td_node *n, const td_shape *in, td_error *err) {
  (void)err;
  return norm_shape(n, in);
}

int op_layer_norm_params(td_compile *c, td_node *n, td_error *err) {
  int rc = norm_params(c, n, err);
  /* Each position's mean and 1/std, over the full batch. */
  n->aux_floats = 2 * (size_t)td_compile_batch(c) * (n->out / n->channels);
  return rc;
}

void op_layer_norm_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  (void)key;
  norm_init(p, n, h);
}

double op_layer_norm_flops(const td_node *n, uint32_t batch) { return norm_flops(n, batch); }

int op_layer_norm_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  int rc = norm_supported(st, n, err);
  if (rc)
    return rc;
  float *a = st->arena;
  const int C = (int)n->channels, rows = r->rows * (int)(n->out / n->channels);
  CALL(ops->ln_fwd(st->be, rows, C, n->eps, a + n->x[0], param_or_null(st, n->w_view),
                   param_or_null(st, n->b_view), a + n->y, a + n->aux),
       "layer norm forward");
  return TD_OK;
}

int op_layer_norm_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  const int C = (int)n->channels, rows = (int)p->batch * (int)(n->out / n->channels);
  float *dx = n->dx[0] == TD_NONE || st->pe_phase == 2 ? NULL : grad_target(st, n, 0);
  float *dy = a + n->dy;
  if (st->pe_phase == 1)
    CALL(ops->pe_layer_norm(st->be, (int)p->batch, rows / (int)p->batch, C, a + n->x[0], dy,
                            a + n->aux, n->w_view != TD_NONE, n->b_view != TD_NONE, pe_acc(st)),
         "per-example gradient norms");
  if (st->pe_phase == 2 && !(dy = pe_scaled(st, n, (size_t)n->out, err)))
    return err->code;
  if (dx || st->pe_phase != 1)
    CALL(ops->ln_bwd(st->be, rows, C, a + n->x[0], dy, a + n->aux, param_or_null(st, n->w_view), dx,
                     st->pe_phase == 1 ? NULL : grad_or_null(st, n->w_view),
                     st->pe_phase == 1 ? NULL : grad_or_null(st, n->b_view)),
         "layer norm backward");
  return dx ? grad_finish(st, n, 0, (size_t)p->batch * n->out, err) : TD_OK;
}

/* ---- sequences: token and position embeddings, causal self-attention --- */

/* A sequence's layer needs a (time, features) input. */
static int need_sequence(const td_node *n, const td_shape *in, const char *what, td_error *err) {
  char ref[TD_VIEW_NAME_MAX + 48], b[64];
  if (in[0].seq && in[0].rank == 2)
    return TD_OK;
  return td_errorf(err, TD_EINVAL,
                   "%s: %s needs a sequence (time, features), such as an embed layer's "
                   "output, but its input is %s",
                   node_ref(n, ref, sizeof ref), what, td_shape_str(&in[0], b, sizeof b));
}

static int seq_supported(const td_state *st, const td_node *n, int ok, const char *what,
                         td_error *err) {
  char ref[TD_VIEW_NAME_MAX + 48];
  if (ok)
    return TD_OK;
  return td_errorf(err, TD_EUNSUPPORTED,
                   "%s: the %s backend has no %s kernels yet; run this job on CPU devices",
                   node_ref(n, ref, sizeof ref), st->be->ops->name, what);
}

/* embed: y[t] = embedding[id[t]] for the token ids of the model's input. */

int op_embed_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  const Traind__V1__Embed *e = l->embed;
  if (e->num_embeddings == 0 || e->num_embeddings > (1u << 24))
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].embed.num_embeddings: must be in 1..%u (the vocabulary's "
                     "size)",
                     n->spec_index, 1u << 24);
  if (e->features == 0)
    return td_errorf(err, TD_EINVAL, "model.layers[%u].embed.features: must be > 0", n->spec_index);
  n->vocab = e->num_embeddings;
  n->channels = e->features;
  n->kernel_init = e->embedding_init ? e->embedding_init : TRAIND__V1__INITIALIZER__LECUN_NORMAL;
  return TD_OK;
}

int op_embed_shape(td_node *n, const td_shape *in, td_error *err) {
  char ref[TD_VIEW_NAME_MAX + 48], b[64];
  if (n->in[0] >= 0 || in[0].rank != 1)
    return td_errorf(err, TD_EINVAL,
                     "%s: embed reads the model's input, token ids of shape (time); make it "
                     "a first layer (its input is %s)",
                     node_ref(n, ref, sizeof ref), td_shape_str(&in[0], b, sizeof b));
  n->positions = in[0].d[0];
  n->in_features = n->positions;
  n->shape = (td_shape){2, {n->positions, n->channels}, 1};
  n->out = n->positions * n->channels;
  return TD_OK;
}

int op_embed_params(td_compile *c, td_node *n, td_error *err) {
  return td_compile_param(c, n, "embedding", n->vocab, n->channels, 2, &n->w_view, err);
}

void op_embed_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  const td_view *w = &p->views[n->w_view];
  draw_init(n->kernel_init, key, h + w->offset, w->size, n->channels, n->vocab);
}

double op_embed_flops(const td_node *n, uint32_t batch) { return 2.0 * batch * (double)n->out; }

int op_embed_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  int rc = seq_supported(st, n, ops->embed_fwd && ops->embed_bwd, "embedding", err);
  if (rc)
    return rc;
  float *a = st->arena;
  CALL(ops->embed_fwd(st->be, r->rows * (int)n->positions, (int)n->channels, (int)n->vocab,
                      a + n->x[0], param_or_null(st, n->w_view), a + n->y),
       "embedding forward");
  return TD_OK;
}

int op_embed_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena, *dy = a + n->dy;
  if (st->pe_phase == 1) {
    CALL(ops->pe_embed(st->be, (int)st->plan->batch, (int)n->positions, (int)n->channels,
                       a + n->x[0], dy, pe_acc(st)),
         "per-example gradient norms");
    return TD_OK;
  }
  if (st->pe_phase == 2 && !(dy = pe_scaled(st, n, (size_t)n->out, err)))
    return err->code;
  CALL(ops->embed_bwd(st->be, (int)(st->plan->batch * n->positions), (int)n->channels,
                      (int)n->vocab, a + n->x[0], dy, grad_or_null(st, n->w_view)),
       "embedding backward");
  return TD_OK;
}

/* position_embedding: y[t] = x[t] + embedding[t], a bias over the whole
 * (time, features) example. */

int op_position_embedding_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  (void)err;
  const Traind__V1__PositionEmbedding *e = l->position_embedding;
  n->kernel_init = e->embedding_init ? e->embedding_init : TRAIND__V1__INITIALIZER__LECUN_NORMAL;
  return TD_OK;
}

int op_position_embedding_shape(td_node *n, const td_shape *in, td_error *err) {
  int rc = need_sequence(n, in, "position_embedding", err);
  if (rc)
    return rc;
  n->positions = in[0].d[0];
  n->channels = in[0].d[1];
  return op_act_shape(n, in, err);
}

int op_position_embedding_params(td_compile *c, td_node *n, td_error *err) {
  return td_compile_param(c, n, "embedding", n->positions, n->channels, 2, &n->w_view, err);
}

void op_position_embedding_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  const td_view *w = &p->views[n->w_view];
  draw_init(n->kernel_init, key, h + w->offset, w->size, n->channels, n->positions);
}

double op_position_embedding_flops(const td_node *n, uint32_t batch) {
  return 2.0 * batch * (double)n->out;
}

int op_position_embedding_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  CALL(ops->copy(st->be, a + n->y, a + n->x[0], (size_t)r->rows * n->out), "copy");
  CALL(ops->bias_act_fwd(st->be, TD_ACT_NONE, r->rows, (int)n->out, param_or_null(st, n->w_view),
                         a + n->y, a + n->y),
       "position embedding forward");
  return TD_OK;
}

int op_position_embedding_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_backend_ops *ops = st->be->ops;
  float *a = st->arena;
  const size_t cells = (size_t)st->plan->batch * n->out;
  if (st->pe_phase == 2) {
    /* Its gradient is the sum of the scaled output gradients. */
    float *dy = pe_scaled(st, n, (size_t)n->out, err);
    return dy ? colsums(st, n, (int)st->plan->batch, (int)n->out, dy, grad_or_null(st, n->w_view),
                        err)
              : err->code;
  }
  if (st->pe_phase == 1) {
    CALL(ops->pe_sumsq(st->be, (int)st->plan->batch, n->out, a + n->dy, pe_acc(st)),
         "per-example gradient norms");
    if (n->dx[0] == TD_NONE)
      return TD_OK;
  }
  /* With per-example gradients, dy stays as it is for the second pass. */
  float *dx = n->dx[0] == TD_NONE ? a + n->dy : grad_target(st, n, 0);
  CALL(ops->bias_act_bwd(st->be, TD_ACT_NONE, (int)st->plan->batch, (int)n->out, a + n->y, a + n->y,
                         a + n->dy, dx, st->pe_phase ? NULL : grad_or_null(st, n->w_view)),
       "position embedding backward");
  return n->dx[0] == TD_NONE ? TD_OK : grad_finish(st, n, 0, cells, err);
}

/* causal_self_attention: qkv = x w + b; each head's softmax(q k^T /
 * sqrt(d)) over the positions up to its own, dropout on those weights in
 * training, times v; then o w2 + b2. Its aux buffer keeps, per example,
 * qkv (t, 3f), the weights p (h, t, t), o (t, f) and, with dropout, the
 * mask and the dropped weights (h, t, t) each; its tmp buffer holds
 * backward's do (t, f), dp (h, t, t) and dqkv (t, 3f). */

typedef struct attn_bufs {
  float *qkv, *p, *o, *mask, *pd; /* pd: the weights o was made from */
  float *dout, *dp, *dqkv;
} attn_bufs;

static attn_bufs attn_at(const td_state *st, const td_node *n) {
  const size_t B = st->plan->batch, T = n->positions, F = n->channels, H = n->heads;
  float *aux = st->arena + n->aux;
  attn_bufs b;
  b.qkv = aux;
  b.p = b.qkv + B * T * 3 * F;
  b.o = b.p + B * H * T * T;
  b.mask = n->rate > 0.0f ? b.o + B * T * F : NULL;
  b.pd = n->rate > 0.0f ? b.mask + B * H * T * T : b.p;
  float *tmp = st->arena + n->tmp;
  b.dout = tmp;
  b.dp = b.dout + B * T * F;
  b.dqkv = b.dp + B * H * T * T;
  return b;
}

int op_causal_self_attention_build(td_node *n, const Traind__V1__Layer *l, td_error *err) {
  const Traind__V1__CausalSelfAttention *at = l->causal_self_attention;
  if (at->num_heads == 0)
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].causal_self_attention.num_heads: must be > 0",
                     n->spec_index);
  if (!(at->dropout_rate >= 0.0 && at->dropout_rate < 1.0))
    return td_errorf(err, TD_EINVAL,
                     "model.layers[%u].causal_self_attention.dropout_rate: must be in [0, 1) "
                     "(got %g)",
                     n->spec_index, at->dropout_rate);
  n->heads = at->num_heads;
  n->rate = (float)at->dropout_rate;
  n->use_bias = !at->use_bias || at->use_bias->value;
  n->kernel_init = at->kernel_init ? at->kernel_init : TRAIND__V1__INITIALIZER__LECUN_NORMAL;
  n->bias_init = at->bias_init ? at->bias_init : TRAIND__V1__INITIALIZER__ZEROS;
  return TD_OK;
}

int op_causal_self_attention_shape(td_node *n, const td_shape *in, td_error *err) {
  char ref[TD_VIEW_NAME_MAX + 48];
  int rc = need_sequence(n, in, "causal_self_attention", err);
  if (rc)
    return rc;
  n->positions = in[0].d[0];
  n->channels = in[0].d[1];
  if (n->channels % n->heads)
    return td_errorf(err, TD_EINVAL,
                     "%s: causal_self_attention.num_heads %u does not divide its %u features; "
                     "use a number of heads that does (for example %u)",
                     node_ref(n, ref, sizeof ref), n->heads, n->channels,
                     n->channels % 4 == 0 ? 4u : 1u);
  return op_act_shape(n, in, err);
}

int op_causal_self_attention_params(td_compile *c, td_node *n, td_error *err) {
  const uint32_t F = n->channels;
  int rc = td_compile_param(c, n, "qkv/w", F, 3 * F, 2, &n->w_view, err);
  if (!rc && n->use_bias)
    rc = td_compile_param(c, n, "qkv/b", 3 * F, 0, 1, &n->b_view, err);
  if (!rc)
    rc = td_compile_param(c, n, "proj/w", F, F, 2, &n->w2_view, err);
  if (!rc && n->use_bias)
    rc = td_compile_param(c, n, "proj/b", F, 0, 1, &n->b2_view, err);
  const size_t B = td_compile_batch(c), T = n->positions, H = n->heads;
  const size_t tt = B * H * T * T, tf = B * T * F;
  n->aux_floats = 3 * tf + tt + tf + (n->rate > 0.0f ? 2 * tt : 0);
  n->tmp_floats = tf + tt + 3 * tf;
  return rc;
}

void op_causal_self_attention_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  td_key k[4];
  td_prng_split(key, k, 4);
  const size_t views[4] = {n->w_view, n->b_view, n->w2_view, n->b2_view};
  const uint32_t fan_out[4] = {3 * n->channels, 3 * n->channels, n->channels, n->channels};
  for (int i = 0; i < 4; i++) {
    if (views[i] == TD_NONE)
      continue;
    const td_view *v = &p->views[views[i]];
    draw_init(i % 2 ? n->bias_init : n->kernel_init, k[i], h + v->offset, v->size, n->channels,
              fan_out[i]);
  }
}

double op_causal_self_attention_flops(const td_node *n, uint32_t batch) {
  const double T = n->positions, F = n->channels;
  /* The projections (3f and f columns) as a dense layer's 6 flops per
   * weight and row; the scores and the mix 2 t t f each forward, twice
   * that backward. */
  return batch * (6.0 * T * F * 4.0 * F + 12.0 * T * T * F);
}

int op_causal_self_attention_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err) {
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  int rc = seq_supported(
      st, n, ops->attn_probs && ops->attn_mix && ops->attn_mix_bwd && ops->attn_probs_bwd,
      "attention", err);
  if (rc)
    return rc;
  float *a = st->arena;
  const int R = r->rows, T = (int)n->positions, F = (int)n->channels, H = (int)n->heads;
  const attn_bufs b = attn_at(st, n);
  CALL(ops->gemm(be, 0, 0, R * T, 3 * F, F, 1.0f, a + n->x[0], F, param_or_null(st, n->w_view),
                 3 * F, 0.0f, b.qkv, 3 * F),
       "query, key and value gemm");
  if (n->b_view != TD_NONE)
    CALL(ops->bias_act_fwd(be, TD_ACT_NONE, R * T, 3 * F, param_or_null(st, n->b_view), b.qkv,
                           b.qkv),
         "query, key and value bias");
  CALL(ops->attn_probs(be, R, T, H, F / H, b.qkv, b.p), "attention weights");
  const float *mix = b.p;
  if (n->rate > 0.0f) {
    const size_t per = (size_t)H * T * T;
    if (r->train) {
      CALL(ops->dropout_fwd(be, (size_t)R * per, r->row0 * per, n->rate, r->keys + 2 * n->key_slot,
                            b.p, b.mask, b.pd),
           "attention dropout");
      mix = b.pd;
    }
  }
  CALL(ops->attn_mix(be, R, T, H, F / H, mix, b.qkv, b.o), "attention mix");
  CALL(ops->gemm(be, 0, 0, R * T, F, F, 1.0f, b.o, F, param_or_null(st, n->w2_view), F, 0.0f,
                 a + n->y, F),
       "output projection gemm");
  if (n->b2_view != TD_NONE)
    CALL(ops->bias_act_fwd(be, TD_ACT_NONE, R * T, F, param_or_null(st, n->b2_view), a + n->y,
                           a + n->y),
         "output projection bias");
  return TD_OK;
}

int op_causal_self_attention_bwd(td_state *st, const td_node *n, td_error *err) {
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  const int B = (int)st->plan->batch, T = (int)n->positions, F = (int)n->channels;
  const int H = (int)n->heads, D = F / H, BT = B * T;
  const attn_bufs b = attn_at(st, n);
  if (n->b2_view != TD_NONE)
    CALL(ops->bias_act_bwd(be, TD_ACT_NONE, BT, F, a + n->y, a + n->y, a + n->dy, a + n->dy,
                           grad_or_null(st, n->b2_view)),
         "output projection bias gradient");
  CALL(ops->gemm(be, 1, 0, F, F, BT, 1.0f, b.o, F, a + n->dy, F, 0.0f, grad_or_null(st, n->w2_view),
                 F),
       "output projection weight gradient gemm");
  CALL(ops->gemm(be, 0, 1, BT, F, F, 1.0f, a + n->dy, F, param_or_null(st, n->w2_view), F, 0.0f,
                 b.dout, F),
       "output projection input gradient gemm");
  CALL(ops->attn_mix_bwd(be, B, T, H, D, b.pd, b.qkv, b.dout, b.dp, b.dqkv),
       "attention mix backward");
  if (n->rate > 0.0f)
    CALL(ops->mul(be, (size_t)B * H * T * T, b.dp, b.mask, b.dp), "attention dropout backward");
  CALL(ops->attn_probs_bwd(be, B, T, H, D, b.p, b.dp, b.qkv, b.dqkv), "attention weights backward");
  if (n->b_view != TD_NONE)
    CALL(ops->bias_act_bwd(be, TD_ACT_NONE, BT, 3 * F, b.qkv, b.qkv, b.dqkv, b.dqkv,
                           grad_or_null(st, n->b_view)),
         "query, key and value bias gradient");
  CALL(ops->gemm(be, 1, 0, F, 3 * F, BT, 1.0f, a + n->x[0], F, b.dqkv, 3 * F, 0.0f,
                 grad_or_null(st, n->w_view), 3 * F),
       "query, key and value weight gradient gemm");
  if (n->dx[0] != TD_NONE)
    CALL(ops->gemm(be, 0, 1, BT, F, 3 * F, 1.0f, b.dqkv, 3 * F, param_or_null(st, n->w_view), 3 * F,
                   n->dx_acc[0] ? 1.0f : 0.0f, a + n->dx[0], F),
         "query, key and value input gradient gemm");
  return TD_OK;
}
