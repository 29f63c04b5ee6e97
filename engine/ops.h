/* The functions of each op of the op table (TD_OPS, plan.h), for the
 * compiler (plan.c) and the step it runs. For an op `name`:
 *   op_name_build   reads the layer's fields into the node (and checks them)
 *   op_name_shape   the output's shape (n->shape, n->out) from the inputs'
 *                   (in[i] for input i); a mismatch names both shapes
 *   op_name_params  declares its parameters (td_compile_param) and its
 *                   buffers besides y and dy (has_z, has_mask)
 *   op_name_init    draws its parameters into the host buffer h (the
 *                   plan's layout) from key, fold_in(the job's init key,
 *                   its ordinal)
 *   op_name_flops   floating-point operations of forward and backward
 *                   over `batch` rows
 *   op_name_fwd     forward over the first r->rows rows
 *   op_name_bwd     backward over the full batch: the parameters' gradients
 *                   and, for each input whose dx is not TD_NONE, its
 *                   gradient, written or (dx_acc) added in
 *   op_name_prepare (ops with a kernel) the backend's kernel for a state,
 *                   found in st->kernels[node] by fwd and bwd; refuses a
 *                   backend without the op */
#ifndef TD_OPS_H
#define TD_OPS_H

#include "plan.h"

typedef struct td_compile td_compile;

/* One forward pass's arguments (td_state_forward). */
typedef struct td_run {
  int rows;
  int train;
  const uint32_t *keys; /* dropout keys of the step record (backend memory) */
  uint64_t row0;
} td_run;

/* Declares parameter `leaf` of n's group: "group/leaf" of shape (d0) or
 * (d0, d1). */
int td_compile_param(td_compile *c, const td_node *n, const char *leaf, uint32_t d0, uint32_t d1,
                     uint32_t ndim, size_t *index, td_error *err);

/* The same for a parameter of ndim (up to TD_MAX_RANK) dimensions. */
int td_compile_tensor(td_compile *c, const td_node *n, const char *leaf, const uint32_t *dims,
                      uint32_t ndim, size_t *index, td_error *err);

/* Declares n's running statistics: "group/mean" and "group/var", of
 * (channels) each, one after the other in the stats buffer (mean at
 * stat_views[*index], var at *index + 1). */
int td_compile_stats(td_compile *c, const td_node *n, uint32_t channels, size_t *index,
                     td_error *err);
/* The per-device batch being compiled for. */
uint32_t td_compile_batch(const td_compile *c);

/* The op of a layer kind, or -1 for none. */
int td_op_of_layer(const Traind__V1__Layer *l);

#define TD_OP_DECL_KERNEL(name) \
  int op_##name##_prepare(td_state *st, const td_node *n, void **kernel, td_error *err);
#define TD_OP_DECL_NONE(name)
#define TD_OP_DECLS(id, name, min_in, max_in, kernel)                                     \
  TD_OP_DECL_##kernel(name) int op_##name##_build(td_node *n, const Traind__V1__Layer *l, \
                                                  td_error *err);                         \
  int op_##name##_shape(td_node *n, const td_shape *in, td_error *err);                   \
  int op_##name##_params(td_compile *c, td_node *n, td_error *err);                       \
  void op_##name##_init(const td_plan *p, const td_node *n, td_key key, float *h);        \
  double op_##name##_flops(const td_node *n, uint32_t batch);                             \
  int op_##name##_fwd(td_state *st, const td_node *n, const td_run *r, td_error *err);    \
  int op_##name##_bwd(td_state *st, const td_node *n, td_error *err);
TD_OPS(TD_OP_DECLS)
#undef TD_OP_DECLS

/* A row of the table, for the compiler. */
typedef struct td_op_row {
  const char *name;
  uint32_t min_in, max_in;
  int (*build)(td_node *n, const Traind__V1__Layer *l, td_error *err);
  int (*shape)(td_node *n, const td_shape *in, td_error *err);
  int (*params)(td_compile *c, td_node *n, td_error *err);
  void (*init)(const td_plan *p, const td_node *n, td_key key, float *h);
  double (*flops)(const td_node *n, uint32_t batch);
  int (*fwd)(td_state *st, const td_node *n, const td_run *r, td_error *err);
  int (*bwd)(td_state *st, const td_node *n, td_error *err);
  /* NULL for an op without a kernel */
  int (*prepare)(td_state *st, const td_node *n, void **kernel, td_error *err);
} td_op_row;

extern const td_op_row td_op_table[TD_N_OPS];

#endif
