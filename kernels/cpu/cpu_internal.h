/* The CPU backend's parts: its context and the ops kept in their own
 * files (window ops on oneDNN, normalization loops). */
#ifndef TD_CPU_INTERNAL_H
#define TD_CPU_INTERNAL_H

#include "backend.h"
#include "cpu_pool.h"

typedef struct cpu_ctx {
  int threads;    /* this backend's threads (at least 1) */
  cpu_pool *pool; /* they run every parallel loop of the backend's own ops */
  char last[512]; /* the last failure, for last_error */
  /* oneDNN's engine and attributes, made by the first window kernel (each
   * tile's primitive has its own stream). */
  void *dn_eng, *dn_attr;
  double *dbuf; /* accumulators of the normalization ops, grown on first use */
  size_t dbuf_n;
} cpu_ctx;

/* Parallel loops over rows: tasks of whole rows, about ELEM_GRAIN
 * elements each, a function of the shape alone. */
/* Elements a task of an elementwise loop should have at least. */
#define ELEM_GRAIN 16384
#define MAX_TASKS 256

/* Rows per task for rows of `cols` elements, and the tasks for `rows`. */
static inline int rows_per_task(int cols) {
  int r = cols > 0 ? ELEM_GRAIN / cols : 1;
  return r > 0 ? r : 1;
}

static inline size_t row_tasks(int rows, int cols) {
  int rpt = rows_per_task(cols);
  size_t t = (size_t)((rows + rpt - 1) / rpt);
  return t ? t : 1;
}

static inline void task_rows(int rows, int cols, size_t t, int *r0, int *r1) {
  int rpt = rows_per_task(cols);
  *r0 = (int)t * rpt;
  *r1 = *r0 + rpt < rows ? *r0 + rpt : rows;
}

/* n zeroed doubles of ctx's accumulator buffer (valid until the next call),
 * or NULL when out of memory. */
double *cpu_doubles(cpu_ctx *ctx, size_t n);
/* The same buffer, not zeroed: a scratch of n doubles. */
double *cpu_scratch(cpu_ctx *ctx, size_t n);

/* C = alpha op(A) op(B) + beta C, row-major, in the calling thread alone:
 * oneDNN's dnnl_sgemm, which picks its kernels from the CPU's features
 * (AVX-512 where there is one). Measured on the MLP rows' GEMMs
 * (docs/BENCHMARKS.md, "SGEMM candidates"), it is about 2x OpenBLAS 0.3.21
 * on an AVX-512 machine where OpenBLAS runs its Haswell kernels, and level
 * with OpenBLAS where neither has AVX-512. op(X) is X, or X transposed
 * when trans_x is set. */
void cpu_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
               const float *b, int ldb, float beta, float *c, int ldc);

/* Records the failure in ctx->last and returns TD_EBACKEND. */
int cpu_fail(cpu_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* cpu_ctx.c: cpu_fail, cpu_doubles (above). cpu_window.c: */
int cpu_conv_create(td_backend *be, const td_window *g, void **kernel);
int cpu_conv_fwd(td_backend *be, void *kernel, const float *x, const float *w, float *y);
int cpu_conv_bwd(td_backend *be, void *kernel, const float *x, const float *w, const float *dy,
                 float *dx, float *dw);
int cpu_pool_create(td_backend *be, const td_window *g, td_pool_kind kind, void **kernel);
int cpu_pool_fwd(td_backend *be, void *kernel, const float *x, float *y);
int cpu_pool_bwd(td_backend *be, void *kernel, const float *dy, float *dx);
void cpu_kernel_free(td_backend *be, void *kernel);
void cpu_window_teardown(cpu_ctx *ctx);

/* cpu_norm.c */
int cpu_col_moments(td_backend *be, int rows, int cols, const float *x, float *m);
int cpu_bn_fwd(td_backend *be, int train, int rows, int cols, const float *x, const float *m,
               float *running, float momentum, float eps, const float *scale, const float *bias,
               float *y, float *saved);
int cpu_bn_bwd_sums(td_backend *be, int rows, int cols, const float *x, const float *dy,
                    const float *saved, float *dscale, float *dbias, float *s);
int cpu_bn_bwd_dx(td_backend *be, int rows, int cols, const float *x, const float *dy,
                  const float *saved, const float *scale, const float *s, float *dx);
int cpu_ln_fwd(td_backend *be, int rows, int cols, float eps, const float *x, const float *scale,
               const float *bias, float *y, float *saved);
int cpu_ln_bwd(td_backend *be, int rows, int cols, const float *x, const float *dy,
               const float *saved, const float *scale, float *dx, float *dscale, float *dbias);

/* cpu_seq.c */
int cpu_embed_fwd(td_backend *be, int rows, int cols, int vocab, const float *ids,
                  const float *table, float *y);
int cpu_embed_bwd(td_backend *be, int rows, int cols, int vocab, const float *ids, const float *dy,
                  float *dtable);
int cpu_attn_probs(td_backend *be, int batch, int t, int h, int d, const float *qkv, float *p);
int cpu_attn_mix(td_backend *be, int batch, int t, int h, int d, const float *p, const float *qkv,
                 float *o);
int cpu_attn_mix_bwd(td_backend *be, int batch, int t, int h, int d, const float *p,
                     const float *qkv, const float *dout, float *dp, float *dqkv);
int cpu_attn_probs_bwd(td_backend *be, int batch, int t, int h, int d, const float *p, float *dp,
                       const float *qkv, float *dqkv);

/* cpu_dp.c: per-example gradient norms, clip factors and noise (DP-SGD) */
int cpu_pe_dense(td_backend *be, int ex, int p, int in, int out, const float *x, const float *dz,
                 int bias, double *acc);
int cpu_pe_conv(td_backend *be, const td_window *g, const float *x, const float *dz, int bias,
                double *acc);
int cpu_pe_layer_norm(td_backend *be, int ex, int p, int cols, const float *x, const float *dy,
                      const float *saved, int scale, int bias, double *acc);
int cpu_pe_embed(td_backend *be, int ex, int p, int cols, const float *ids, const float *dy,
                 double *acc);
int cpu_pe_sumsq(td_backend *be, int ex, size_t per, const float *x, double *acc);
int cpu_pe_clip(td_backend *be, int ex, int rows, double scale, double clip, const double *acc,
                float *factor);
int cpu_row_scale(td_backend *be, int ex, size_t per, const float *src, const float *factor,
                  float *dst);
int cpu_gauss_add(td_backend *be, size_t n, const uint32_t *key, float stddev, float *x);

#endif
