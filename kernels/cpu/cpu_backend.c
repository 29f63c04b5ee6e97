/* The CPU backend: OpenBLAS sgemm plus fused elementwise loops written so
 * that gcc vectorizes them. It is the reference every other backend is
 * tested against, and it is deterministic: the same inputs give bitwise the
 * same outputs run to run (reductions run in a fixed order). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "prng.h"

/* OpenBLAS's own thread-count control (declared in its cblas.h on Debian,
 * repeated here so the backend also builds against other cblas headers). */
void openblas_set_num_threads(int num_threads);

static void *cpu_alloc(td_backend *be, size_t bytes) {
  (void)be;
  /* 64-byte alignment keeps AVX-512 loads aligned on every buffer. */
  size_t rounded = (bytes + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, rounded ? rounded : 64);
  if (p)
    memset(p, 0, rounded ? rounded : 64);
  return p;
}

static void cpu_release(td_backend *be, void *p) {
  (void)be;
  free(p);
}

static int cpu_memcpy(td_backend *be, void *dst, const void *src, size_t bytes) {
  (void)be;
  if (bytes)
    memcpy(dst, src, bytes);
  return TD_OK;
}

static int cpu_fill(td_backend *be, float *x, size_t n, float value) {
  (void)be;
  for (size_t i = 0; i < n; i++)
    x[i] = value;
  return TD_OK;
}

static int cpu_copy(td_backend *be, float *dst, const float *src, size_t n) {
  return cpu_memcpy(be, dst, src, n * sizeof *dst);
}

static int cpu_gather(td_backend *be, const float *src, const int32_t *src_labels, size_t dim,
                      const uint32_t *idx, const uint32_t *off, size_t count, float *dst,
                      int32_t *dst_labels) {
  (void)be;
  if (off)
    idx += *off;
  for (size_t i = 0; i < count; i++) {
    memcpy(dst + i * dim, src + (size_t)idx[i] * dim, dim * sizeof *dst);
    dst_labels[i] = src_labels[idx[i]];
  }
  return TD_OK;
}

static int cpu_gemm(td_backend *be, int trans_a, int trans_b, int m, int n, int k, float alpha,
                    const float *a, int lda, const float *b, int ldb, float beta, float *c,
                    int ldc) {
  (void)be;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  return TD_OK;
}

/* sqrt(2/pi) and the cubic coefficient of the tanh approximation of GELU. */
#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

static inline float gelu_tanh(float x) {
  float t = tanhf(GELU_C * (x + GELU_A * x * x * x));
  return 0.5f * x * (1.0f + t);
}

static inline float gelu_tanh_grad(float x) {
  float x2 = x * x;
  float t = tanhf(GELU_C * (x + GELU_A * x2 * x));
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * x2);
}

static inline float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

static inline float gelu_erf_grad(float x) {
  float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  float pdf = 0.3989422804014327f * expf(-0.5f * x * x);
  return cdf + x * pdf;
}

static int cpu_bias_act_fwd(td_backend *be, td_act act, int rows, int cols, const float *bias,
                            float *z, float *y) {
  (void)be;
  for (int r = 0; r < rows; r++) {
    float *zr = z + (size_t)r * cols, *yr = y + (size_t)r * cols;
    if (bias)
      for (int c = 0; c < cols; c++)
        zr[c] += bias[c];
    switch (act) {
    case TD_ACT_NONE:
      if (yr != zr)
        memcpy(yr, zr, (size_t)cols * sizeof *yr);
      break;
    case TD_ACT_RELU:
      for (int c = 0; c < cols; c++)
        yr[c] = zr[c] > 0.0f ? zr[c] : 0.0f;
      break;
    case TD_ACT_GELU_TANH:
      for (int c = 0; c < cols; c++)
        yr[c] = gelu_tanh(zr[c]);
      break;
    case TD_ACT_GELU_ERF:
      for (int c = 0; c < cols; c++)
        yr[c] = gelu_erf(zr[c]);
      break;
    case TD_ACT_TANH:
      for (int c = 0; c < cols; c++)
        yr[c] = tanhf(zr[c]);
      break;
    case TD_ACT_SIGMOID:
      for (int c = 0; c < cols; c++)
        yr[c] = 1.0f / (1.0f + expf(-zr[c]));
      break;
    }
  }
  return TD_OK;
}

static int cpu_bias_act_bwd(td_backend *be, td_act act, int rows, int cols, const float *z,
                            const float *y, const float *dy, float *dz, float *dbias) {
  /* The bias gradient is summed in double: a convolution's sums over every
   * position of the batch (100,352 for MNIST's first) would lose digits in
   * float. */
  double *acc = NULL;
  if (dbias && !(acc = cpu_doubles(be->ctx, (size_t)cols)))
    return cpu_fail(be->ctx, "out of memory for %d column sums", cols);
  for (int r = 0; r < rows; r++) {
    size_t o = (size_t)r * cols;
    const float *zr = z + o, *yr = y + o, *dyr = dy + o;
    float *dzr = dz + o;
    switch (act) {
    case TD_ACT_NONE:
      if (dzr != dyr)
        memcpy(dzr, dyr, (size_t)cols * sizeof *dzr);
      break;
    case TD_ACT_RELU:
      for (int c = 0; c < cols; c++)
        dzr[c] = yr[c] > 0.0f ? dyr[c] : 0.0f;
      break;
    case TD_ACT_GELU_TANH:
      for (int c = 0; c < cols; c++)
        dzr[c] = dyr[c] * gelu_tanh_grad(zr[c]);
      break;
    case TD_ACT_GELU_ERF:
      for (int c = 0; c < cols; c++)
        dzr[c] = dyr[c] * gelu_erf_grad(zr[c]);
      break;
    case TD_ACT_TANH:
      for (int c = 0; c < cols; c++)
        dzr[c] = dyr[c] * (1.0f - yr[c] * yr[c]);
      break;
    case TD_ACT_SIGMOID:
      for (int c = 0; c < cols; c++)
        dzr[c] = dyr[c] * yr[c] * (1.0f - yr[c]);
      break;
    }
    if (acc)
      for (int c = 0; c < cols; c++)
        acc[c] += dzr[c];
  }
  for (int c = 0; acc && c < cols; c++)
    dbias[c] = (float)acc[c];
  return TD_OK;
}

static int argmax_row(const float *x, int cols) {
  int best = 0;
  for (int c = 1; c < cols; c++)
    if (x[c] > x[best])
      best = c;
  return best;
}

static int cpu_softmax_xent(td_backend *be, int rows, int cols, const float *logits,
                            const int32_t *labels, float grad_scale, float *dlogits, float *out) {
  (void)be;
  double loss = 0.0;
  int correct = 0;
  for (int r = 0; r < rows; r++) {
    const float *x = logits + (size_t)r * cols;
    int label = labels[r];
    float mx = x[0];
    for (int c = 1; c < cols; c++)
      mx = x[c] > mx ? x[c] : mx;
    float sum = 0.0f;
    for (int c = 0; c < cols; c++)
      sum += expf(x[c] - mx);
    float lse = mx + logf(sum);
    loss += (double)(lse - x[label]);
    correct += argmax_row(x, cols) == label;
    if (dlogits) {
      float *d = dlogits + (size_t)r * cols;
      float inv = 1.0f / sum;
      for (int c = 0; c < cols; c++)
        d[c] = expf(x[c] - mx) * inv * grad_scale;
      d[label] -= grad_scale;
    }
  }
  out[0] = (float)loss;
  out[1] = (float)correct;
  return TD_OK;
}

static int cpu_mse_onehot(td_backend *be, int rows, int cols, const float *y, const int32_t *labels,
                          float grad_scale, float *dy, float *out) {
  (void)be;
  double loss = 0.0;
  int correct = 0;
  for (int r = 0; r < rows; r++) {
    const float *yr = y + (size_t)r * cols;
    float *dr = dy ? dy + (size_t)r * cols : NULL;
    for (int c = 0; c < cols; c++) {
      float e = yr[c] - (c == labels[r] ? 1.0f : 0.0f);
      loss += (double)e * e;
      if (dr)
        dr[c] = 2.0f * e * grad_scale;
    }
    correct += argmax_row(yr, cols) == labels[r];
  }
  out[0] = (float)loss;
  out[1] = (float)correct;
  return TD_OK;
}

static int cpu_dropout_fwd(td_backend *be, size_t n, uint64_t first, float rate,
                           const uint32_t *key_words, const float *x, float *mask, float *y) {
  (void)be;
  td_key key = {{key_words[0], key_words[1]}};
  float keep = 1.0f - rate, scale = 1.0f / keep;
  for (size_t i = 0; i < n; i++) {
    uint64_t c = first + i;
    uint32_t ctr[2] = {(uint32_t)(c >> 32), (uint32_t)c};
    td_threefry2x32(key, ctr);
    /* jax.random.uniform's float: 23 bits of the two words' xor as the
     * mantissa of a number in [1, 2), minus 1. */
    uint32_t bits = ((ctr[0] ^ ctr[1]) >> 9) | 0x3f800000u;
    float u;
    memcpy(&u, &bits, sizeof u);
    mask[i] = u - 1.0f < keep ? scale : 0.0f;
    y[i] = x[i] * mask[i];
  }
  return TD_OK;
}

static int cpu_mul(td_backend *be, size_t n, const float *a, const float *b, float *out) {
  (void)be;
  for (size_t i = 0; i < n; i++)
    out[i] = a[i] * b[i];
  return TD_OK;
}

static int cpu_add(td_backend *be, size_t n, const float *a, const float *b, float *out) {
  (void)be;
  for (size_t i = 0; i < n; i++)
    out[i] = a[i] + b[i];
  return TD_OK;
}

static int cpu_copy2d(td_backend *be, size_t rows, size_t cols, float *dst, size_t dst_ld,
                      const float *src, size_t src_ld) {
  (void)be;
  for (size_t r = 0; r < rows; r++)
    memcpy(dst + r * dst_ld, src + r * src_ld, cols * sizeof *dst);
  return TD_OK;
}

static int cpu_sumsq(td_backend *be, size_t n, const float *x, float *out) {
  (void)be;
  /* Eight float partial sums vectorize; folding them into a double keeps
   * the result order-fixed and accurate for buffers of millions. */
  enum { LANES = 8, BLOCK = 4096 };
  double total = 0.0;
  for (size_t base = 0; base < n; base += BLOCK) {
    size_t end = base + BLOCK < n ? base + BLOCK : n;
    float acc[LANES] = {0};
    size_t i = base;
    for (; i + LANES <= end; i += LANES)
      for (int l = 0; l < LANES; l++)
        acc[l] += x[i + l] * x[i + l];
    for (; i < end; i++)
      acc[0] += x[i] * x[i];
    for (int l = 0; l < LANES; l++)
      total += acc[l];
  }
  out[0] = (float)total;
  return TD_OK;
}

/* The loop body is specialised on kind and apply so that each variant
 * vectorizes without branches inside. */
#define OPT_LOOP(KIND_EXPR, APPLY)               \
  for (size_t i = 0; i < n; i++) {               \
    float v = in_scale * g[i];                   \
    KIND_EXPR;                                   \
    v = out_scale * (mid_scale * v + wd * p[i]); \
    if (APPLY)                                   \
      p[i] += v;                                 \
    else                                         \
      g[i] = v;                                  \
  }

static int cpu_opt_pass(td_backend *be, const td_opt_pass *a, const td_opt_scalars *sc,
                        const float *norm_sq, const float *guard, size_t n, float *restrict p,
                        float *restrict g, float *restrict s1, float *restrict s2) {
  (void)be;
  if (guard && !td_opt_guard_ok(*guard))
    return TD_OK;
  const float in_scale = td_opt_in_scale(a, sc, a->clip ? *norm_sq : 0.0f),
              mid_scale = sc->mid_scale, wd = a->wd, out_scale = sc->out_scale;
  const float b1 = a->b1, b2 = a->b2, eps = a->eps, eps_root = a->eps_root;
  const float bc1 = sc->bc1, bc2 = sc->bc2, mom = a->momentum;
#define ADAM_STEP                             \
  s1[i] = (1.0f - b1) * v + b1 * s1[i];       \
  s2[i] = (1.0f - b2) * (v * v) + b2 * s2[i]; \
  v = (s1[i] / bc1) / (sqrtf(s2[i] / bc2 + eps_root) + eps)
#define TRACE_STEP         \
  s1[i] = v + mom * s1[i]; \
  v = a->nesterov ? v + mom * s1[i] : s1[i]
  switch (a->kind) {
  case TD_OPT_ADAM:
    if (a->apply) {
      OPT_LOOP(ADAM_STEP, 1)
    } else {
      OPT_LOOP(ADAM_STEP, 0)
    }
    break;
  case TD_OPT_TRACE:
    if (a->apply) {
      OPT_LOOP(TRACE_STEP, 1)
    } else {
      OPT_LOOP(TRACE_STEP, 0)
    }
    break;
  case TD_OPT_IDENTITY:
    if (a->apply) {
      OPT_LOOP((void)0, 1)
    } else {
      OPT_LOOP((void)0, 0)
    }
    break;
  }
#undef ADAM_STEP
#undef TRACE_STEP
  return TD_OK;
}

static int cpu_step_begin(td_backend *be, const void *table, size_t rec_bytes, uint32_t *counter,
                          void *cur) {
  (void)be;
  memcpy(cur, (const char *)table + (size_t)*counter * rec_bytes, rec_bytes);
  ++*counter;
  return TD_OK;
}

static int cpu_record(td_backend *be, const uint32_t *slot, const float *src, size_t n,
                      float *dst) {
  (void)be;
  memcpy(dst + (size_t)*slot * n, src, n * sizeof *dst);
  return TD_OK;
}

static const char *cpu_last_error(td_backend *be) { return ((cpu_ctx *)be->ctx)->last; }

static void cpu_destroy(td_backend *be) {
  cpu_ctx *ctx = be->ctx;
  cpu_window_teardown(ctx);
  free(ctx->dbuf);
  free(ctx);
  free(be);
}

static const td_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .fill = cpu_fill,
    .copy = cpu_copy,
    .gather = cpu_gather,
    .gemm = cpu_gemm,
    .bias_act_fwd = cpu_bias_act_fwd,
    .bias_act_bwd = cpu_bias_act_bwd,
    .softmax_xent = cpu_softmax_xent,
    .mse_onehot = cpu_mse_onehot,
    .dropout_fwd = cpu_dropout_fwd,
    .mul = cpu_mul,
    .add = cpu_add,
    .copy2d = cpu_copy2d,
    .sumsq = cpu_sumsq,
    .opt_pass = cpu_opt_pass,
    .step_begin = cpu_step_begin,
    .record = cpu_record,
    .conv_create = cpu_conv_create,
    .conv_fwd = cpu_conv_fwd,
    .conv_bwd = cpu_conv_bwd,
    .pool_create = cpu_pool_create,
    .pool_fwd = cpu_pool_fwd,
    .pool_bwd = cpu_pool_bwd,
    .kernel_free = cpu_kernel_free,
    .col_moments = cpu_col_moments,
    .bn_fwd = cpu_bn_fwd,
    .bn_bwd_sums = cpu_bn_bwd_sums,
    .bn_bwd_dx = cpu_bn_bwd_dx,
    .ln_fwd = cpu_ln_fwd,
    .ln_bwd = cpu_ln_bwd,
    .last_error = cpu_last_error,
};

int td_cpu_backend_create(td_backend **out, int threads, td_error *err) {
  td_backend *be = calloc(1, sizeof *be);
  cpu_ctx *ctx = calloc(1, sizeof *ctx);
  if (!be || !ctx) {
    free(be);
    free(ctx);
    return td_errorf(err, TD_ENOMEM, "cpu backend: out of memory");
  }
  ctx->threads = threads > 0 ? threads : omp_get_num_procs();
  be->ctx = ctx;
  be->ops = &cpu_ops;
  be->threads = threads;
  be->host_memory = 1;
  if (threads > 0)
    openblas_set_num_threads(threads);
  *out = be;
  return TD_OK;
}
