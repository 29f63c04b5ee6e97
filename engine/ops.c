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

const td_op_row td_op_table[TD_N_OPS] = {
#define TD_OP_ROW(id, nm, min_in, max_in) \
  [TD_OP_##id] = {#nm,                    \
                  min_in,                 \
                  max_in,                 \
                  op_##nm##_build,        \
                  op_##nm##_shape,        \
                  op_##nm##_params,       \
                  op_##nm##_init,         \
                  op_##nm##_flops,        \
                  op_##nm##_fwd,          \
                  op_##nm##_bwd},
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
  n->out = d->features;
  n->act = TD_ACT_NONE;
  n->kernel_init = d->kernel_init ? d->kernel_init : TRAIND__V1__INITIALIZER__LECUN_NORMAL;
  n->bias_init = d->bias_init ? d->bias_init : TRAIND__V1__INITIALIZER__ZEROS;
  n->use_bias = !d->use_bias || d->use_bias->value;
  return TD_OK;
}

/* A dense layer takes each example's values as one vector (the input's
 * shape flattened, row-major). */
int op_dense_shape(td_node *n, const td_shape *in, td_error *err) {
  (void)err;
  n->in_features = (uint32_t)td_shape_size(&in[0]);
  n->shape = (td_shape){1, {n->out}};
  return TD_OK;
}

int op_dense_params(td_compile *c, td_node *n, td_error *err) {
  int rc = td_compile_param(c, n, "w", n->in_features, n->out, 2, &n->w_view, err);
  if (!rc && n->use_bias)
    rc = td_compile_param(c, n, "b", n->out, 0, 1, &n->b_view, err);
  n->has_z = td_act_needs_preact(n->act);
  return rc;
}

void op_dense_init(const td_plan *p, const td_node *n, td_key key, float *h) {
  td_key pair[2];
  td_prng_split(key, pair, 2);
  const td_view *w = &p->views[n->w_view];
  draw_init(n->kernel_init, pair[0], h + w->offset, w->size, n->in_features, n->out);
  if (n->b_view != TD_NONE) {
    const td_view *b = &p->views[n->b_view];
    draw_init(n->bias_init, pair[1], h + b->offset, b->size, n->in_features, n->out);
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
  CALL(ops->gemm(be, 0, 0, r->rows, (int)n->out, (int)n->in_features, 1.0f, a + n->x[0],
                 (int)n->in_features, w, (int)n->out, 0.0f, a + n->z, (int)n->out),
       "forward gemm");
  CALL(ops->bias_act_fwd(be, n->act, r->rows, (int)n->out, b, a + n->z, a + n->y),
       "bias+activation forward");
  return TD_OK;
}

int op_dense_bwd(td_state *st, const td_node *n, td_error *err) {
  const td_plan *p = st->plan;
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  const int B = (int)p->batch;
  const td_view *wv = &p->views[n->w_view];
  float *db = n->b_view == TD_NONE ? NULL : st->grads + p->views[n->b_view].offset;
  /* dz = dy * act'(z), in place, and db = column sums of dz. */
  CALL(ops->bias_act_bwd(be, n->act, B, (int)n->out, a + n->z, a + n->y, a + n->dy, a + n->dy, db),
       "bias+activation backward");
  /* dw (in, out) = x^T dz */
  CALL(ops->gemm(be, 1, 0, (int)n->in_features, (int)n->out, B, 1.0f, a + n->x[0],
                 (int)n->in_features, a + n->dy, (int)n->out, 0.0f, st->grads + wv->offset,
                 (int)n->out),
       "weight gradient gemm");
  /* dx (B, in) = dz w^T, added in when another consumer wrote dx first. */
  if (n->dx[0] != TD_NONE)
    CALL(ops->gemm(be, 0, 1, B, (int)n->in_features, (int)n->out, 1.0f, a + n->dy, (int)n->out,
                   st->params + wv->offset, (int)n->out, n->dx_acc[0] ? 1.0f : 0.0f, a + n->dx[0],
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
    n->want = (td_shape){1, {0}};
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
