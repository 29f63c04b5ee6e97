/* The CPU backend's window ops (convolution and pooling) on oneDNN.
 *
 * Each kernel holds oneDNN primitives for its geometry, created once:
 * convolutions with format_tag any (oneDNN picks its blocked layouts, the
 * fastest here; docs/BENCHMARKS.md, "Convolution kernels on the CPU") and
 * reorders between those and the engine's NHWC activations and HWIO
 * kernels around each call; poolings on NHWC directly.
 *
 * The batch is cut into tiles of a size fixed by the geometry (the largest
 * divisor of the batch up to WINDOW_TILE), and each tile has primitives,
 * memories, scratchpad, workspace and stream of its own, run by the
 * backend's pool (cpu_pool.h) with oneDNN single-threaded inside (each
 * call sets the calling thread's OpenMP team to 1). A convolution's weight
 * gradient is the sum of the tiles' in tile order. So a window op gives
 * bitwise the same result at any thread count, and replicas calling oneDNN
 * at the same time share nothing. */
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

/* The most examples of a tile. */
#define WINDOW_TILE 16

/* Fails the enclosing function with the oneDNN call and its status. */
#define DN(ctx, call)                                                                      \
  do {                                                                                     \
    dnnl_status_t st_ = (call);                                                            \
    if (st_ != dnnl_success)                                                               \
      return cpu_fail(ctx, "oneDNN %s failed (status %d)", dn_call_name(#call), (int)st_); \
  } while (0)

/* "dnnl_primitive_create" from "dnnl_primitive_create(&p, pd)". */
static const char *dn_call_name(const char *expr) {
  static __thread char buf[64];
  size_t n = strcspn(expr, "(");
  snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf ? n : sizeof buf - 1), expr);
  return buf;
}

/* One argument of a primitive: the engine's buffer as oneDNN memory in the
 * engine's layout and, when the primitive wants another, the primitive's
 * own memory and the reorder between them. */
typedef struct dn_arg {
  int arg, is_out;
  dnnl_memory_t user, prim; /* prim == user when no reorder is needed */
  dnnl_primitive_t reorder;
} dn_arg;

typedef struct dn_op {
  dnnl_primitive_t prim;
  dn_arg a[4];
  int na;
  dnnl_memory_t scratch, ws; /* scratchpad, pooling workspace; may be NULL */
  dnnl_stream_t strm;        /* the tile's own */
} dn_op;

typedef struct dn_kernel {
  int pool;
  td_window g;                   /* the whole batch's geometry */
  int tiles, tn;                 /* tiles of tn examples */
  dn_op *fwd, *bwd_data, *bwd_w; /* one per tile; pooling: fwd and bwd_data */
  size_t x_tile, y_tile, w_size; /* floats of a tile's x and y; of w */
  float *dwt;                    /* convolutions: each tile's weight gradient */
} dn_kernel;

static int dn_setup(cpu_ctx *ctx) {
  if (ctx->dn_eng)
    return TD_OK;
  dnnl_engine_t eng;
  DN(ctx, dnnl_engine_create(&eng, dnnl_cpu, 0));
  dnnl_primitive_attr_t attr = NULL;
  if (dnnl_primitive_attr_create(&attr) != dnnl_success ||
      dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) != dnnl_success) {
    if (attr)
      dnnl_primitive_attr_destroy(attr);
    dnnl_engine_destroy(eng);
    return cpu_fail(ctx, "oneDNN attributes failed");
  }
  ctx->dn_eng = eng;
  ctx->dn_attr = attr;
  return TD_OK;
}

void cpu_window_teardown(cpu_ctx *ctx) {
  if (!ctx->dn_eng)
    return;
  dnnl_primitive_attr_destroy(ctx->dn_attr);
  dnnl_engine_destroy(ctx->dn_eng);
  ctx->dn_eng = NULL;
}

static int dn_memory(cpu_ctx *ctx, const_dnnl_primitive_desc_t pd, dnnl_query_t what,
                     dnnl_memory_t *out) {
  *out = NULL;
  const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, what, 0);
  if (md == NULL || dnnl_memory_desc_get_size(md) == 0)
    return TD_OK;
  DN(ctx, dnnl_memory_create(out, md, ctx->dn_eng, DNNL_MEMORY_ALLOCATE));
  return TD_OK;
}

/* Adds argument `arg` of pd to op, the engine's side in layout user_md. */
static int dn_add_arg(cpu_ctx *ctx, dn_op *op, const_dnnl_primitive_desc_t pd, int arg,
                      const dnnl_memory_desc_t *user_md, int is_out) {
  dn_arg *a = &op->a[op->na++];
  a->arg = arg;
  a->is_out = is_out;
  DN(ctx, dnnl_memory_create(&a->user, user_md, ctx->dn_eng, DNNL_MEMORY_NONE));
  const dnnl_memory_desc_t *pmd = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, arg);
  if (dnnl_memory_desc_equal(pmd, user_md)) {
    a->prim = a->user;
    return TD_OK;
  }
  DN(ctx, dnnl_memory_create(&a->prim, pmd, ctx->dn_eng, DNNL_MEMORY_ALLOCATE));
  dnnl_primitive_desc_t rpd;
  /* Reorders run without a scratchpad of their own (plain layouts need none). */
  if (is_out)
    DN(ctx, dnnl_reorder_primitive_desc_create(&rpd, pmd, ctx->dn_eng, user_md, ctx->dn_eng, NULL));
  else
    DN(ctx, dnnl_reorder_primitive_desc_create(&rpd, user_md, ctx->dn_eng, pmd, ctx->dn_eng, NULL));
  dnnl_status_t st = dnnl_primitive_create(&a->reorder, rpd);
  dnnl_primitive_desc_destroy(rpd);
  if (st != dnnl_success)
    return cpu_fail(ctx, "oneDNN reorder creation failed (status %d)", (int)st);
  return TD_OK;
}

/* Creates op's primitive from pd (which it destroys), with its scratchpad
 * and, when ws, its workspace. */
static int dn_finish(cpu_ctx *ctx, dn_op *op, dnnl_primitive_desc_t pd, int ws) {
  int rc = dn_memory(ctx, pd, dnnl_query_scratchpad_md, &op->scratch);
  if (!rc && dnnl_stream_create(&op->strm, ctx->dn_eng, dnnl_stream_default_flags) != dnnl_success)
    rc = cpu_fail(ctx, "oneDNN dnnl_stream_create failed");
  if (!rc && ws)
    rc = dn_memory(ctx, pd, dnnl_query_workspace_md, &op->ws);
  dnnl_status_t st = rc ? dnnl_success : dnnl_primitive_create(&op->prim, pd);
  dnnl_primitive_desc_destroy(pd);
  if (!rc && st != dnnl_success)
    rc = cpu_fail(ctx, "oneDNN dnnl_primitive_create failed (status %d)", (int)st);
  return rc;
}

static void dn_op_free(dn_op *op) {
  for (int i = 0; i < op->na; i++) {
    dn_arg *a = &op->a[i];
    if (a->reorder) {
      dnnl_primitive_destroy(a->reorder);
      dnnl_memory_destroy(a->prim);
    }
    dnnl_memory_destroy(a->user);
  }
  if (op->prim)
    dnnl_primitive_destroy(op->prim);
  if (op->scratch)
    dnnl_memory_destroy(op->scratch);
  if (op->ws && op->ws != op->scratch)
    dnnl_memory_destroy(op->ws);
  if (op->strm)
    dnnl_stream_destroy(op->strm);
  memset(op, 0, sizeof *op);
}

/* Runs op on buffers (one per argument, in the order they were added):
 * inputs reordered in, the primitive, outputs reordered out. ws: the
 * workspace memory to pass (a pooling's, from its forward), or NULL. */
static int dn_exec(cpu_ctx *ctx, dn_op *op, void *const *bufs, dnnl_memory_t ws) {
  omp_set_num_threads(1);
  dnnl_exec_arg_t args[8];
  int n = 0;
  for (int i = 0; i < op->na; i++) {
    dn_arg *a = &op->a[i];
    DN(ctx, dnnl_memory_set_data_handle(a->user, bufs[i]));
    if (a->reorder && !a->is_out) {
      dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, a->user}, {DNNL_ARG_TO, a->prim}};
      DN(ctx, dnnl_primitive_execute(a->reorder, op->strm, 2, r));
    }
    args[n++] = (dnnl_exec_arg_t){a->arg, a->prim};
  }
  if (op->scratch)
    args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, op->scratch};
  if (ws)
    args[n++] = (dnnl_exec_arg_t){DNNL_ARG_WORKSPACE, ws};
  DN(ctx, dnnl_primitive_execute(op->prim, op->strm, n, args));
  for (int i = 0; i < op->na; i++) {
    dn_arg *a = &op->a[i];
    if (a->reorder && a->is_out) {
      dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, a->prim}, {DNNL_ARG_TO, a->user}};
      DN(ctx, dnnl_primitive_execute(a->reorder, op->strm, 2, r));
    }
  }
  DN(ctx, dnnl_stream_wait(op->strm));
  return TD_OK;
}

static int dn_md(cpu_ctx *ctx, dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims,
                 dnnl_format_tag_t tag) {
  DN(ctx, dnnl_memory_desc_init_by_tag(md, nd, dims, dnnl_f32, tag));
  return TD_OK;
}

static void kernel_destroy(dn_kernel *k) {
  for (int t = 0; t < k->tiles; t++) {
    if (k->fwd)
      dn_op_free(&k->fwd[t]);
    if (k->bwd_data)
      dn_op_free(&k->bwd_data[t]);
    if (k->bwd_w)
      dn_op_free(&k->bwd_w[t]);
  }
  free(k->fwd);
  free(k->bwd_data);
  free(k->bwd_w);
  free(k->dwt);
  free(k);
}

/* Tile t's primitives (every tile has the same geometry: tn examples). */
static int conv_build(cpu_ctx *ctx, dn_kernel *k, int t) {
  const td_window *g = &k->g;
  dn_op *fwd = &k->fwd[t], *bwd_data = &k->bwd_data[t], *bwd_w = &k->bwd_w[t];
  dnnl_dims_t xd = {k->tn, g->c, g->h, g->w}, yd = {k->tn, g->oc, g->oh, g->ow};
  dnnl_dims_t wd = {g->oc, g->c, g->kh, g->kw};
  dnnl_dims_t strides = {g->sh, g->sw}, dil = {g->dh - 1, g->dw - 1};
  dnnl_dims_t pad_l = {g->pt, g->pl}, pad_r = {g->pb, g->pr};
  dnnl_memory_desc_t ux, uy, uw, px, py, pw;
  int rc = dn_md(ctx, &ux, 4, xd, dnnl_nhwc);
  if (!rc)
    rc = dn_md(ctx, &uy, 4, yd, dnnl_nhwc);
  if (!rc)
    rc = dn_md(ctx, &uw, 4, wd, dnnl_hwio);
  if (!rc)
    rc = dn_md(ctx, &px, 4, xd, dnnl_format_tag_any);
  if (!rc)
    rc = dn_md(ctx, &py, 4, yd, dnnl_format_tag_any);
  if (!rc)
    rc = dn_md(ctx, &pw, 4, wd, dnnl_format_tag_any);
  if (rc)
    return rc;
  dnnl_convolution_desc_t fd, dd, wdesc;
  dnnl_primitive_desc_t fpd, pd;
  DN(ctx,
     dnnl_dilated_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct,
                                                &px, &pw, NULL, &py, strides, dil, pad_l, pad_r));
  DN(ctx, dnnl_primitive_desc_create(&fpd, &fd, ctx->dn_attr, ctx->dn_eng, NULL));
  /* Forward: x, w -> y. */
  if (dnnl_primitive_desc_clone(&pd, fpd) != dnnl_success) {
    dnnl_primitive_desc_destroy(fpd);
    return cpu_fail(ctx, "oneDNN dnnl_primitive_desc_clone failed");
  }
  rc = dn_add_arg(ctx, fwd, pd, DNNL_ARG_SRC, &ux, 0);
  if (!rc)
    rc = dn_add_arg(ctx, fwd, pd, DNNL_ARG_WEIGHTS, &uw, 0);
  if (!rc)
    rc = dn_add_arg(ctx, fwd, pd, DNNL_ARG_DST, &uy, 1);
  rc = rc ? (dnnl_primitive_desc_destroy(pd), rc) : dn_finish(ctx, fwd, pd, 0);
  /* Backward data: dy, w -> dx. */
  if (!rc &&
      dnnl_dilated_convolution_backward_data_desc_init(&dd, dnnl_convolution_direct, &px, &pw, &py,
                                                       strides, dil, pad_l,
                                                       pad_r) == dnnl_success &&
      dnnl_primitive_desc_create(&pd, &dd, ctx->dn_attr, ctx->dn_eng, fpd) == dnnl_success) {
    rc = dn_add_arg(ctx, bwd_data, pd, DNNL_ARG_DIFF_DST, &uy, 0);
    if (!rc)
      rc = dn_add_arg(ctx, bwd_data, pd, DNNL_ARG_WEIGHTS, &uw, 0);
    if (!rc)
      rc = dn_add_arg(ctx, bwd_data, pd, DNNL_ARG_DIFF_SRC, &ux, 1);
    rc = rc ? (dnnl_primitive_desc_destroy(pd), rc) : dn_finish(ctx, bwd_data, pd, 0);
  } else if (!rc) {
    rc = cpu_fail(ctx, "oneDNN: no convolution backward-data primitive for this geometry");
  }
  /* Backward weights: x, dy -> dw. */
  if (!rc &&
      dnnl_dilated_convolution_backward_weights_desc_init(&wdesc, dnnl_convolution_direct, &px, &pw,
                                                          NULL, &py, strides, dil, pad_l,
                                                          pad_r) == dnnl_success &&
      dnnl_primitive_desc_create(&pd, &wdesc, ctx->dn_attr, ctx->dn_eng, fpd) == dnnl_success) {
    rc = dn_add_arg(ctx, bwd_w, pd, DNNL_ARG_SRC, &ux, 0);
    if (!rc)
      rc = dn_add_arg(ctx, bwd_w, pd, DNNL_ARG_DIFF_DST, &uy, 0);
    if (!rc)
      rc = dn_add_arg(ctx, bwd_w, pd, DNNL_ARG_DIFF_WEIGHTS, &uw, 1);
    rc = rc ? (dnnl_primitive_desc_destroy(pd), rc) : dn_finish(ctx, bwd_w, pd, 0);
  } else if (!rc) {
    rc = cpu_fail(ctx, "oneDNN: no convolution backward-weights primitive for this geometry");
  }
  dnnl_primitive_desc_destroy(fpd);
  return rc;
}

static int pool_build(cpu_ctx *ctx, dn_kernel *k, td_pool_kind kind, int t) {
  const td_window *g = &k->g;
  dn_op *fwd = &k->fwd[t], *bwd_data = &k->bwd_data[t];
  dnnl_dims_t xd = {k->tn, g->c, g->h, g->w}, yd = {k->tn, g->c, g->oh, g->ow};
  dnnl_dims_t strides = {g->sh, g->sw}, win = {g->kh, g->kw}, dil = {0, 0};
  dnnl_dims_t pad_l = {g->pt, g->pl}, pad_r = {g->pb, g->pr};
  dnnl_memory_desc_t ux, uy;
  int rc = dn_md(ctx, &ux, 4, xd, dnnl_nhwc);
  if (!rc)
    rc = dn_md(ctx, &uy, 4, yd, dnnl_nhwc);
  if (rc)
    return rc;
  dnnl_alg_kind_t alg = kind == TD_POOL_MAX   ? dnnl_pooling_max
                        : kind == TD_POOL_AVG ? dnnl_pooling_avg_include_padding
                                              : dnnl_pooling_avg_exclude_padding;
  dnnl_pooling_v2_desc_t fd, bd;
  dnnl_primitive_desc_t fpd, pd;
  DN(ctx, dnnl_pooling_v2_forward_desc_init(&fd, dnnl_forward_training, alg, &ux, &uy, strides, win,
                                            dil, pad_l, pad_r));
  DN(ctx, dnnl_primitive_desc_create(&fpd, &fd, ctx->dn_attr, ctx->dn_eng, NULL));
  if (dnnl_primitive_desc_clone(&pd, fpd) != dnnl_success) {
    dnnl_primitive_desc_destroy(fpd);
    return cpu_fail(ctx, "oneDNN dnnl_primitive_desc_clone failed");
  }
  rc = dn_add_arg(ctx, fwd, pd, DNNL_ARG_SRC, &ux, 0);
  if (!rc)
    rc = dn_add_arg(ctx, fwd, pd, DNNL_ARG_DST, &uy, 1);
  rc = rc ? (dnnl_primitive_desc_destroy(pd), rc) : dn_finish(ctx, fwd, pd, 1);
  if (!rc &&
      dnnl_pooling_v2_backward_desc_init(&bd, alg, &ux, &uy, strides, win, dil, pad_l, pad_r) ==
          dnnl_success &&
      dnnl_primitive_desc_create(&pd, &bd, ctx->dn_attr, ctx->dn_eng, fpd) == dnnl_success) {
    rc = dn_add_arg(ctx, bwd_data, pd, DNNL_ARG_DIFF_DST, &uy, 0);
    if (!rc)
      rc = dn_add_arg(ctx, bwd_data, pd, DNNL_ARG_DIFF_SRC, &ux, 1);
    rc = rc ? (dnnl_primitive_desc_destroy(pd), rc) : dn_finish(ctx, bwd_data, pd, 0);
  } else if (!rc) {
    rc = cpu_fail(ctx, "oneDNN: no pooling backward primitive for this geometry");
  }
  dnnl_primitive_desc_destroy(fpd);
  return rc;
}

static int kernel_new(td_backend *be, const td_window *g, int pool, td_pool_kind kind, void **out) {
  cpu_ctx *ctx = be->ctx;
  int rc = dn_setup(ctx);
  if (rc)
    return rc;
  dn_kernel *k = calloc(1, sizeof *k);
  if (!k)
    return cpu_fail(ctx, "out of memory for a window kernel");
  k->pool = pool;
  k->g = *g;
  /* Tiles: the largest divisor of the batch up to WINDOW_TILE, a function
   * of the geometry alone. */
  k->tn = 1;
  for (int d = g->n < WINDOW_TILE ? g->n : WINDOW_TILE; d > 1; d--)
    if (g->n % d == 0) {
      k->tn = d;
      break;
    }
  k->tiles = g->n / k->tn;
  k->x_tile = (size_t)k->tn * g->h * g->w * g->c;
  k->y_tile = (size_t)k->tn * g->oh * g->ow * (pool ? g->c : g->oc);
  k->w_size = pool ? 0 : (size_t)g->kh * g->kw * g->c * g->oc;
  k->fwd = calloc((size_t)k->tiles, sizeof *k->fwd);
  k->bwd_data = calloc((size_t)k->tiles, sizeof *k->bwd_data);
  k->bwd_w = pool ? NULL : calloc((size_t)k->tiles, sizeof *k->bwd_w);
  k->dwt = pool ? NULL : malloc(k->tiles * k->w_size * sizeof *k->dwt);
  if (!k->fwd || !k->bwd_data || (!pool && (!k->bwd_w || !k->dwt))) {
    kernel_destroy(k);
    return cpu_fail(ctx, "out of memory for a window kernel's %d tiles", g->n);
  }
  /* oneDNN plans each primitive for the threads it will have: one. */
  omp_set_num_threads(1);
  for (int t = 0; !rc && t < k->tiles; t++)
    rc = pool ? pool_build(ctx, k, kind, t) : conv_build(ctx, k, t);
  if (rc) {
    kernel_destroy(k);
    return rc;
  }
  *out = k;
  return TD_OK;
}

int cpu_conv_create(td_backend *be, const td_window *g, void **kernel) {
  return kernel_new(be, g, 0, TD_POOL_MAX, kernel);
}

/* One window call on the pool: `what` for every tile, the first failure
 * kept. */
typedef struct win_job {
  cpu_ctx *ctx;
  dn_kernel *k;
  int what; /* 0 conv fwd, 1 conv bwd, 2 pool fwd, 3 pool bwd */
  const float *x, *w, *dy;
  float *y, *dx;
  int dw; /* conv bwd: the weight gradient is wanted */
  _Atomic int rc;
} win_job;

static void win_task(void *arg, size_t t) {
  win_job *j = arg;
  dn_kernel *k = j->k;
  const size_t xo = t * k->x_tile, yo = t * k->y_tile;
  int rc = TD_OK;
  switch (j->what) {
  case 0: {
    void *b[3] = {(void *)(j->x + xo), (void *)j->w, j->y + yo};
    rc = dn_exec(j->ctx, &k->fwd[t], b, NULL);
    break;
  }
  case 1: {
    void *wb[3] = {(void *)(j->x + xo), (void *)(j->dy + yo), k->dwt + t * k->w_size};
    if (j->dw)
      rc = dn_exec(j->ctx, &k->bwd_w[t], wb, NULL);
    if (!rc && j->dx) {
      void *db[3] = {(void *)(j->dy + yo), (void *)j->w, j->dx + xo};
      rc = dn_exec(j->ctx, &k->bwd_data[t], db, NULL);
    }
    break;
  }
  case 2: {
    void *b[2] = {(void *)(j->x + xo), j->y + yo};
    rc = dn_exec(j->ctx, &k->fwd[t], b, k->fwd[t].ws);
    break;
  }
  default: {
    void *b[2] = {(void *)(j->dy + yo), j->dx + xo};
    rc = dn_exec(j->ctx, &k->bwd_data[t], b, k->fwd[t].ws);
    break;
  }
  }
  if (rc) {
    int none = TD_OK;
    atomic_compare_exchange_strong(&j->rc, &none, rc);
  }
}

static int win_run(win_job *j) {
  atomic_init(&j->rc, TD_OK);
  cpu_pool_run(j->ctx->pool, (size_t)j->k->tiles, win_task, j);
  return atomic_load(&j->rc);
}

/* dw = the tiles' weight gradients added in tile order. */
typedef struct dw_job {
  const dn_kernel *k;
  float *dw;
} dw_job;

#define DW_GRAIN 4096

static void dw_task(void *arg, size_t t) {
  const dw_job *j = arg;
  const dn_kernel *k = j->k;
  size_t i0 = t * DW_GRAIN, i1 = i0 + DW_GRAIN < k->w_size ? i0 + DW_GRAIN : k->w_size;
  for (size_t i = i0; i < i1; i++) {
    float s = k->dwt[i];
    for (int tile = 1; tile < k->tiles; tile++)
      s += k->dwt[(size_t)tile * k->w_size + i];
    j->dw[i] = s;
  }
}

int cpu_conv_fwd(td_backend *be, void *kernel, const float *x, const float *w, float *y) {
  win_job j = {.ctx = be->ctx, .k = kernel, .what = 0, .x = x, .w = w, .y = y};
  return win_run(&j);
}

int cpu_conv_bwd(td_backend *be, void *kernel, const float *x, const float *w, const float *dy,
                 float *dx, float *dw) {
  dn_kernel *k = kernel;
  win_job j = {
      .ctx = be->ctx, .k = k, .what = 1, .x = x, .w = w, .dy = dy, .dx = dx, .dw = dw != NULL};
  int rc = win_run(&j);
  if (rc || !dw)
    return rc;
  dw_job d = {k, dw};
  cpu_pool_run(((cpu_ctx *)be->ctx)->pool, (k->w_size + DW_GRAIN - 1) / DW_GRAIN, dw_task, &d);
  return TD_OK;
}

int cpu_pool_create(td_backend *be, const td_window *g, td_pool_kind kind, void **kernel) {
  return kernel_new(be, g, 1, kind, kernel);
}

int cpu_pool_fwd(td_backend *be, void *kernel, const float *x, float *y) {
  win_job j = {.ctx = be->ctx, .k = kernel, .what = 2, .x = x, .y = y};
  return win_run(&j);
}

int cpu_pool_bwd(td_backend *be, void *kernel, const float *dy, float *dx) {
  win_job j = {.ctx = be->ctx, .k = kernel, .what = 3, .dy = dy, .dx = dx};
  return win_run(&j);
}

void cpu_kernel_free(td_backend *be, void *kernel) {
  (void)be;
  if (kernel)
    kernel_destroy(kernel);
}
