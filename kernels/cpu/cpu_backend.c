/* The CPU backend: oneDNN's sgemm plus fused elementwise loops written so
 * that gcc vectorizes them. It is the reference every other backend is
 * tested against, and it is deterministic: the same inputs give bitwise the
 * same outputs run to run and at any thread count. Its parallel loops run
 * on the backend's own pool (cpu_pool.h), split into tasks by shape alone;
 * the sgemm runs single-threaded inside those tasks (a GEMM is cut into
 * tiles of C, each one sgemm call), and reductions add the tasks' partial
 * sums in task order. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "prng.h"

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

typedef struct gather_job {
  const td_rows *l;
  const float *src;
  const int32_t *src_labels;
  const uint32_t *idx;
  size_t count;
  float *dst;
  int32_t *dst_labels;
} gather_job;

static void gather_task(void *arg, size_t t) {
  const gather_job *j = arg;
  const td_rows *l = j->l;
  int r0, r1;
  task_rows((int)j->count, (int)l->dim, t, &r0, &r1);
  for (size_t i = (size_t)r0; i < (size_t)r1; i++) {
    memcpy(j->dst + i * l->dim, j->src + (size_t)j->idx[i] * l->stride, l->dim * sizeof *j->dst);
    memcpy(j->dst_labels + i * l->label_dim, j->src_labels + (size_t)j->idx[i] * l->label_stride,
           l->label_dim * sizeof *j->dst_labels);
  }
}

/* The batch's rows, copied in tasks of rows on the pool (a copy has no
 * order to keep): at batch 1024 of MNIST, 3.2 MB a step. */
static int cpu_gather(td_backend *be, const td_rows *l, const float *src, const int32_t *src_labels,
                      const uint32_t *idx, const uint32_t *off, size_t count, float *dst,
                      int32_t *dst_labels) {
  gather_job j = {l, src, src_labels, off ? idx + *off : idx, count, dst, dst_labels};
  if (count)
    cpu_pool_run(((cpu_ctx *)be->ctx)->pool, row_tasks((int)count, (int)l->dim), gather_task, &j);
  return TD_OK;
}

/* ---- GEMM: tiles of C, one single-threaded sgemm each */

/* FLOPs a tile should have at least: enough to amortize packing its
 * operands (each tile packs its own; 6 MFLOP tiles cost the reference
 * program 20% on 2 cores), few enough that the large GEMMs feed several
 * threads. */
#define GEMM_TILE_FLOPS (20.0e6)
/* The least width of a tile along the dimension cut: every tile packs the
 * whole of the other operand again, so the wide MLP's 2048 x 2048 GEMMs
 * in 43 tiles of 48 took 17 ms a step, in 4 of 512 12.7 ms. */
#define GEMM_TILE_EDGE 512
/* A GEMM of at least this many FLOPs is cut in two at least, so that the
 * small GEMMs of small batches and narrow layers (the reference program's
 * second layer, batch 32's every layer) use two threads: at batch 32 the
 * step takes 0.47 ms instead of 0.78 on 2 cores. */
#define GEMM_SPLIT_FLOPS (2.0e6)
#define GEMM_MAX_TILES 64
#define GEMM_ALIGN 16 /* tile edges on multiples of the kernels' widths */

typedef struct gemm_job {
  int trans_a, trans_b, m, n, k, lda, ldb, ldc, along_n, tile;
  float alpha, beta;
  const float *a, *b;
  float *c;
} gemm_job;

static void gemm_tile(void *arg, size_t t) {
  const gemm_job *g = arg;
  int lo = (int)t * g->tile;
  int span = (g->along_n ? g->n : g->m) - lo;
  if (span > g->tile)
    span = g->tile;
  const float *a = g->a, *b = g->b;
  float *c = g->c;
  int m = g->m, n = g->n;
  if (g->along_n) {
    b += g->trans_b ? (size_t)lo * g->ldb : (size_t)lo;
    c += lo;
    n = span;
  } else {
    a += g->trans_a ? (size_t)lo : (size_t)lo * g->lda;
    c += (size_t)lo * g->ldc;
    m = span;
  }
  cpu_sgemm(g->trans_a, g->trans_b, m, n, g->k, g->alpha, a, g->lda, b, g->ldb, g->beta, c, g->ldc);
}

static int cpu_gemm(td_backend *be, int trans_a, int trans_b, int m, int n, int k, float alpha,
                    const float *a, int lda, const float *b, int ldb, float beta, float *c,
                    int ldc) {
  cpu_ctx *ctx = be->ctx;
  gemm_job g = {trans_a, trans_b, m, n, k, lda, ldb, ldc, n >= m, 0, alpha, beta, a, b, c};
  /* The tiles follow from the shape alone; each element of C is one
   * sgemm's dot product of the same K values whichever thread runs it. */
  const int dim = g.along_n ? n : m;
  double flops = 2.0 * m * n * (double)k;
  size_t tiles = cpu_tasks((size_t)(flops / GEMM_TILE_FLOPS), 1, GEMM_MAX_TILES);
  if (tiles > (size_t)(dim / GEMM_TILE_EDGE))
    tiles = dim >= 2 * GEMM_TILE_EDGE ? (size_t)(dim / GEMM_TILE_EDGE) : 1;
  if (flops >= GEMM_SPLIT_FLOPS && tiles < 2)
    tiles = 2;
  if ((size_t)dim < tiles * GEMM_ALIGN)
    tiles = (size_t)(dim / GEMM_ALIGN) > 0 ? (size_t)(dim / GEMM_ALIGN) : 1;
  int tile = (dim + (int)tiles - 1) / (int)tiles;
  tile = (tile + GEMM_ALIGN - 1) / GEMM_ALIGN * GEMM_ALIGN;
  g.tile = tile > 0 ? tile : 1;
  tiles = (size_t)((dim + g.tile - 1) / g.tile);
  if (dim == 0 || tiles <= 1) {
    cpu_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return TD_OK;
  }
  cpu_pool_run(ctx->pool, tiles, gemm_tile, &g);
  return TD_OK;
}

/* exp and tanh on a vector register of floats at a time (GCC vector
 * extensions: 16 lanes with AVX-512, 8 with AVX, else 4; each lane the
 * same arithmetic, so the lane count does not change a result): libm's expf and tanhf
 * are scalar calls, and GELU's tanh was 40% of a GPT step. Cephes's expf
 * and tanhf, within 2 ulp of the exact values (1.3e-7 relative, measured
 * over [-10, 10]). exp: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two
 * parts), a degree-6 polynomial for exp(r), 2^n from the exponent bits;
 * clamped to [-87.3, 88.7], where float's exp neither overflows nor goes
 * subnormal. tanh: an odd polynomial below |x| = 0.625 (where
 * 1 - 2 / (exp(2x) + 1) would cancel), that form above, clamped at 9
 * (where tanh is 1 in float). */
#if defined(__AVX512F__)
#define VLANES 16
#elif defined(__AVX__)
#define VLANES 8
#else
#define VLANES 4
#endif
typedef float vfl __attribute__((vector_size(VLANES * 4)));
typedef int32_t vil __attribute__((vector_size(VLANES * 4)));

static inline vfl vsel(vil m, vfl a, vfl b) { return (vfl)(((vil)a & m) | ((vil)b & ~m)); }

static inline vfl vexpl(vfl x) {
  const vfl zero = x - x, hi = zero + 88.7f, lo = zero - 87.3f;
  x = vsel(x > hi, hi, x);
  x = vsel(x < lo, lo, x);
  const vfl n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vfl r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const vfl z = r * r;
  vfl y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const vil bits = (__builtin_convertvector(n, vil) + 127) << 23;
  return y * (vfl)bits;
}

static inline vfl vtanhl(vfl x) {
  const vil neg = x < 0.0f;
  const vfl a = vsel(neg, -x, x), z = x * x, nine = a - a + 9.0f;
  vfl p = z * -5.70498872745e-3f + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const vfl small = p * z * x + x;
  const vfl e = vexpl(2.0f * vsel(a < nine, a, nine));
  const vfl big = 1.0f - 2.0f / (e + 1.0f);
  return vsel(a < 0.625f, small, vsel(neg, -big, big));
}

/* sqrt(2/pi) and the cubic coefficient of the tanh approximation of GELU. */
#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

typedef enum { V_GELU, V_GELU_GRAD, V_TANH, V_SIGMOID, V_EXP } vec_fn;

static inline vfl vec_apply(vec_fn fn, vfl x, vfl g) {
  switch (fn) {
  case V_GELU:
    return 0.5f * x * (1.0f + vtanhl(GELU_C * (x + GELU_A * x * x * x)));
  case V_GELU_GRAD: {
    const vfl x2 = x * x, t = vtanhl(GELU_C * (x + GELU_A * x2 * x));
    return g *
           (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * x2));
  }
  case V_TANH:
    return vtanhl(x);
  case V_EXP:
    return vexpl(x);
  default:
    return 1.0f / (1.0f + vexpl(-x));
  }
}

/* out[i] = fn(x[i]) (times g[i] for a gradient) for i < n, VLANES at a
 * time; out may equal x or g. */
static void vec_row(vec_fn fn, const float *x, const float *g, float *out, int n) {
  int i = 0;
  vfl v, w = {0};
  for (; i + VLANES <= n; i += VLANES) {
    memcpy(&v, x + i, sizeof v);
    if (g)
      memcpy(&w, g + i, sizeof w);
    v = vec_apply(fn, v, w);
    memcpy(out + i, &v, sizeof v);
  }
  if (i < n) {
    const size_t rest = (size_t)(n - i) * sizeof(float);
    memset(&v, 0, sizeof v);
    memcpy(&v, x + i, rest);
    if (g)
      memcpy(&w, g + i, rest);
    v = vec_apply(fn, v, w);
    memcpy(out + i, &v, rest);
  }
}

static inline float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

static inline float gelu_erf_grad(float x) {
  float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  float pdf = 0.3989422804014327f * expf(-0.5f * x * x);
  return cdf + x * pdf;
}

/* ---- parallel loops: tasks of rows or of elements, sized by shape */

/* Element ranges: ELEM_GRAIN each (the last shorter), at most MAX_TASKS
 * (then longer). */
static size_t elem_tasks(size_t n) {
  size_t t = (n + ELEM_GRAIN - 1) / ELEM_GRAIN;
  return t < 1 ? 1 : t > MAX_TASKS ? MAX_TASKS : t;
}

static void task_elems(size_t n, size_t t, size_t *i0, size_t *i1) {
  size_t tasks = elem_tasks(n), per = (n + tasks - 1) / tasks;
  *i0 = t * per < n ? t * per : n;
  *i1 = *i0 + per < n ? *i0 + per : n;
}

typedef struct bias_act_job {
  td_act act;
  int rows, cols;
  const float *bias, *z_in, *y_in, *dy;
  float *z, *y, *dz;
  double *acc; /* bwd: (tasks, cols) partial bias sums */
} bias_act_job;

static void bias_act_fwd_task(void *arg, size_t t) {
  const bias_act_job *j = arg;
  const int cols = j->cols;
  const td_act act = j->act;
  const float *bias = j->bias;
  int r0, r1;
  task_rows(j->rows, cols, t, &r0, &r1);
  for (int r = r0; r < r1; r++) {
    float *zr = j->z + (size_t)r * cols, *yr = j->y + (size_t)r * cols;
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
      vec_row(V_GELU, zr, NULL, yr, cols);
      break;
    case TD_ACT_GELU_ERF:
      for (int c = 0; c < cols; c++)
        yr[c] = gelu_erf(zr[c]);
      break;
    case TD_ACT_TANH:
      vec_row(V_TANH, zr, NULL, yr, cols);
      break;
    case TD_ACT_SIGMOID:
      vec_row(V_SIGMOID, zr, NULL, yr, cols);
      break;
    }
  }
}

static int cpu_bias_act_fwd(td_backend *be, td_act act, int rows, int cols, const float *bias,
                            float *z, float *y) {
  cpu_ctx *ctx = be->ctx;
  bias_act_job j = {.act = act, .rows = rows, .cols = cols, .bias = bias, .z = z, .y = y};
  cpu_pool_run(ctx->pool, row_tasks(rows, cols), bias_act_fwd_task, &j);
  return TD_OK;
}

static void bias_act_bwd_task(void *arg, size_t t) {
  const bias_act_job *j = arg;
  const int cols = j->cols;
  int r0, r1;
  task_rows(j->rows, cols, t, &r0, &r1);
  double *acc = j->acc ? j->acc + t * (size_t)cols : NULL;
  for (int r = r0; r < r1; r++) {
    size_t o = (size_t)r * cols;
    const float *zr = j->z_in + o, *yr = j->y_in + o, *dyr = j->dy + o;
    float *dzr = j->dz + o;
    switch (j->act) {
    case TD_ACT_NONE:
      if (dzr != dyr)
        memcpy(dzr, dyr, (size_t)cols * sizeof *dzr);
      break;
    case TD_ACT_RELU:
      for (int c = 0; c < cols; c++)
        dzr[c] = yr[c] > 0.0f ? dyr[c] : 0.0f;
      break;
    case TD_ACT_GELU_TANH:
      vec_row(V_GELU_GRAD, zr, dyr, dzr, cols);
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
}

static int cpu_bias_act_bwd(td_backend *be, td_act act, int rows, int cols, const float *z,
                            const float *y, const float *dy, float *dz, float *dbias) {
  cpu_ctx *ctx = be->ctx;
  /* The bias gradient is summed in double, per task, then over the tasks
   * in their order: a convolution's sums over every position of the batch
   * (100,352 for MNIST's first) would lose digits in float. */
  const size_t tasks = row_tasks(rows, cols);
  bias_act_job j = {
      .act = act, .rows = rows, .cols = cols, .z_in = z, .y_in = y, .dy = dy, .dz = dz};
  if (dbias && !(j.acc = cpu_doubles(ctx, tasks * (size_t)cols)))
    return cpu_fail(ctx, "out of memory for %d column sums", cols);
  cpu_pool_run(ctx->pool, tasks, bias_act_bwd_task, &j);
  for (int c = 0; dbias && c < cols; c++) {
    double sum = 0.0;
    for (size_t t = 0; t < tasks; t++)
      sum += j.acc[t * (size_t)cols + c];
    dbias[c] = (float)sum;
  }
  return TD_OK;
}

static int argmax_row(const float *x, int cols) {
  int best = 0;
  for (int c = 1; c < cols; c++)
    if (x[c] > x[best])
      best = c;
  return best;
}

/* The sum over c of exp(x[c] - mx), added in column order, the exps taken
 * a vector register at a time (a chunk of columns at a time through a
 * buffer on the stack); e, when not NULL, receives them. */
static float row_exp_sum(const float *x, int cols, float mx, float *e) {
  enum { CHUNK = 256 };
  float buf[CHUNK], sum = 0.0f;
  for (int c0 = 0; c0 < cols; c0 += CHUNK) {
    const int n = cols - c0 < CHUNK ? cols - c0 : CHUNK;
    float *out = e ? e + c0 : buf;
    for (int c = 0; c < n; c++)
      out[c] = x[c0 + c] - mx;
    vec_row(V_EXP, out, NULL, out, n);
    for (int c = 0; c < n; c++)
      sum += out[c];
  }
  return sum;
}

/* Losses: each task sums its rows' loss (double) and correct count; the
 * tasks' sums are added in task order. */
typedef struct loss_job {
  int rows, cols, mse;
  const float *x;
  const int32_t *labels;
  float grad_scale;
  float *d;
  double *part; /* (tasks, 2): loss, correct */
} loss_job;

static void loss_task(void *arg, size_t t) {
  const loss_job *j = arg;
  const int cols = j->cols;
  const float grad_scale = j->grad_scale;
  int r0, r1;
  task_rows(j->rows, cols, t, &r0, &r1);
  double loss = 0.0;
  int correct = 0;
  for (int r = r0; r < r1; r++) {
    const float *x = j->x + (size_t)r * cols;
    const int label = j->labels[r];
    float *d = j->d ? j->d + (size_t)r * cols : NULL;
    if (j->mse) {
      for (int c = 0; c < cols; c++) {
        float e = x[c] - (c == label ? 1.0f : 0.0f);
        loss += (double)e * e;
        if (d)
          d[c] = 2.0f * e * grad_scale;
      }
    } else {
      float mx = x[0];
      for (int c = 1; c < cols; c++)
        mx = x[c] > mx ? x[c] : mx;
      const float sum = row_exp_sum(x, cols, mx, d);
      float lse = mx + logf(sum);
      loss += (double)(lse - x[label]);
      if (d) {
        const float f = grad_scale / sum;
        for (int c = 0; c < cols; c++)
          d[c] *= f;
        d[label] -= grad_scale;
      }
    }
    correct += argmax_row(x, cols) == label;
  }
  j->part[2 * t] = loss;
  j->part[2 * t + 1] = correct;
}

static int run_loss(td_backend *be, int mse, int rows, int cols, const float *x,
                    const int32_t *labels, float grad_scale, float *d, float *out) {
  cpu_ctx *ctx = be->ctx;
  const size_t tasks = row_tasks(rows, cols);
  loss_job j = {rows, cols, mse, x, labels, grad_scale, d, cpu_doubles(ctx, 2 * tasks)};
  if (!j.part)
    return cpu_fail(ctx, "out of memory for %zu loss sums", tasks);
  cpu_pool_run(ctx->pool, tasks, loss_task, &j);
  double loss = 0.0, correct = 0.0;
  for (size_t t = 0; t < tasks; t++) {
    loss += j.part[2 * t];
    correct += j.part[2 * t + 1];
  }
  out[0] = (float)loss;
  out[1] = (float)correct;
  return TD_OK;
}

static int cpu_softmax_xent(td_backend *be, int rows, int cols, const float *logits,
                            const int32_t *labels, float grad_scale, float *dlogits, float *out) {
  return run_loss(be, 0, rows, cols, logits, labels, grad_scale, dlogits, out);
}

static int cpu_mse_onehot(td_backend *be, int rows, int cols, const float *y, const int32_t *labels,
                          float grad_scale, float *dy, float *out) {
  return run_loss(be, 1, rows, cols, y, labels, grad_scale, dy, out);
}

/* Elementwise ops: ranges of elements. */
typedef struct elem_job {
  size_t n;
  const float *a, *b;
  float *out, *mask;
  uint64_t first;
  float rate;
  const uint32_t *key_words;
  int op; /* 0 mul, 1 add, 2 dropout */
} elem_job;

static void elem_task(void *arg, size_t t) {
  const elem_job *j = arg;
  size_t i0, i1;
  task_elems(j->n, t, &i0, &i1);
  const float *restrict a = j->a, *restrict b = j->b;
  float *restrict out = j->out;
  if (j->op == 0) {
    for (size_t i = i0; i < i1; i++)
      out[i] = a[i] * b[i];
  } else if (j->op == 1) {
    for (size_t i = i0; i < i1; i++)
      out[i] = a[i] + b[i];
  } else {
    td_key key = {{j->key_words[0], j->key_words[1]}};
    float keep = 1.0f - j->rate, scale = 1.0f / keep;
    for (size_t i = i0; i < i1; i++) {
      uint64_t c = j->first + i;
      uint32_t ctr[2] = {(uint32_t)(c >> 32), (uint32_t)c};
      td_threefry2x32(key, ctr);
      /* jax.random.uniform's float: 23 bits of the two words' xor as the
       * mantissa of a number in [1, 2), minus 1. */
      uint32_t bits = ((ctr[0] ^ ctr[1]) >> 9) | 0x3f800000u;
      float u;
      memcpy(&u, &bits, sizeof u);
      j->mask[i] = u - 1.0f < keep ? scale : 0.0f;
      out[i] = a[i] * j->mask[i];
    }
  }
}

static int run_elem(td_backend *be, elem_job *j) {
  cpu_pool_run(((cpu_ctx *)be->ctx)->pool, elem_tasks(j->n), elem_task, j);
  return TD_OK;
}

static int cpu_dropout_fwd(td_backend *be, size_t n, uint64_t first, float rate,
                           const uint32_t *key_words, const float *x, float *mask, float *y) {
  elem_job j = {.n = n,
                .a = x,
                .out = y,
                .mask = mask,
                .first = first,
                .rate = rate,
                .key_words = key_words,
                .op = 2};
  return run_elem(be, &j);
}

static int cpu_mul(td_backend *be, size_t n, const float *a, const float *b, float *out) {
  elem_job j = {.n = n, .a = a, .b = b, .out = out, .op = 0};
  return run_elem(be, &j);
}

static int cpu_add(td_backend *be, size_t n, const float *a, const float *b, float *out) {
  elem_job j = {.n = n, .a = a, .b = b, .out = out, .op = 1};
  return run_elem(be, &j);
}

static int cpu_copy2d(td_backend *be, size_t rows, size_t cols, float *dst, size_t dst_ld,
                      const float *src, size_t src_ld) {
  (void)be;
  for (size_t r = 0; r < rows; r++)
    memcpy(dst + r * dst_ld, src + r * src_ld, cols * sizeof *dst);
  return TD_OK;
}

/* Sums of squares: blocks of 4096, each summed in 32 float lanes (four
 * vectors of eight, enough to keep the adds' latency hidden) and folded
 * into a double; the blocks' sums are added in block order, so the result
 * is order-fixed and accurate for buffers of millions. */
#define SUMSQ_BLOCK 4096
#define SUMSQ_BLOCKS_PER_TASK 8

typedef float v8f __attribute__((vector_size(32)));

typedef struct sumsq_job {
  size_t n;
  const float *x;
  double *part; /* one per block */
} sumsq_job;

static double sumsq_block(const float *x, size_t n) {
  enum { VW = 8, NV = 4 };
  v8f acc[NV] = {{0}};
  size_t i = 0;
  for (; i + VW * NV <= n; i += VW * NV)
    for (int v = 0; v < NV; v++) {
      v8f a;
      memcpy(&a, x + i + (size_t)v * VW, sizeof a);
      acc[v] += a * a;
    }
  float tail = 0.0f;
  for (; i < n; i++)
    tail += x[i] * x[i];
  double s = tail;
  for (int v = 0; v < NV; v++)
    for (int l = 0; l < VW; l++)
      s += acc[v][l];
  return s;
}

static void sumsq_task(void *arg, size_t t) {
  const sumsq_job *j = arg;
  size_t nb = (j->n + SUMSQ_BLOCK - 1) / SUMSQ_BLOCK;
  for (size_t blk = t * SUMSQ_BLOCKS_PER_TASK; blk < nb && blk < (t + 1) * SUMSQ_BLOCKS_PER_TASK;
       blk++) {
    size_t base = blk * SUMSQ_BLOCK, end = base + SUMSQ_BLOCK < j->n ? base + SUMSQ_BLOCK : j->n;
    j->part[blk] = sumsq_block(j->x + base, end - base);
  }
}

static int cpu_sumsq(td_backend *be, size_t n, const float *x, float *out) {
  cpu_ctx *ctx = be->ctx;
  size_t nb = (n + SUMSQ_BLOCK - 1) / SUMSQ_BLOCK;
  sumsq_job j = {n, x, cpu_doubles(ctx, nb ? nb : 1)};
  if (!j.part)
    return cpu_fail(ctx, "out of memory for %zu block sums", nb);
  cpu_pool_run(ctx->pool, (nb + SUMSQ_BLOCKS_PER_TASK - 1) / SUMSQ_BLOCKS_PER_TASK, sumsq_task, &j);
  double total = 0.0;
  for (size_t b = 0; b < nb; b++)
    total += j.part[b];
  out[0] = (float)total;
  return TD_OK;
}

/* The optimizer pass: ranges of the flat buffers. The loop body is
 * specialised on kind and apply so that each variant vectorizes without
 * branches inside. */
#define OPT_LOOP(KIND_EXPR, APPLY)               \
  for (size_t i = i0; i < i1; i++) {             \
    float v = in_scale * g[i];                   \
    KIND_EXPR;                                   \
    v = out_scale * (mid_scale * v + wd * p[i]); \
    if (APPLY)                                   \
      p[i] += v;                                 \
    else                                         \
      g[i] = v;                                  \
  }

typedef struct opt_job {
  const td_opt_pass *a;
  float in_scale, mid_scale, out_scale, rbc1, rbc2;
  size_t n;
  float *p, *g, *s1, *s2;
} opt_job;

static void opt_task(void *arg, size_t t) {
  const opt_job *j = arg;
  const td_opt_pass *a = j->a;
  size_t i0, i1;
  task_elems(j->n, t, &i0, &i1);
  float *restrict p = j->p, *restrict g = j->g, *restrict s1 = j->s1, *restrict s2 = j->s2;
  const float in_scale = j->in_scale, mid_scale = j->mid_scale, wd = a->wd,
              out_scale = j->out_scale;
  const float b1 = a->b1, b2 = a->b2, eps = a->eps, eps_root = a->eps_root;
  const float rbc1 = j->rbc1, rbc2 = j->rbc2, mom = a->momentum;
#define ADAM_STEP                             \
  s1[i] = (1.0f - b1) * v + b1 * s1[i];       \
  s2[i] = (1.0f - b2) * (v * v) + b2 * s2[i]; \
  v = (s1[i] * rbc1) / (sqrtf(s2[i] * rbc2 + eps_root) + eps)
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
}

static int cpu_opt_pass(td_backend *be, const td_opt_pass *a, const td_opt_scalars *sc,
                        const float *norm_sq, const float *guard, size_t n, float *restrict p,
                        float *restrict g, float *restrict s1, float *restrict s2) {
  if (guard && !td_opt_guard_ok(*guard))
    return TD_OK;
  opt_job j = {a,
               td_opt_in_scale(a, sc, a->clip ? *norm_sq : 0.0f),
               sc->mid_scale,
               sc->out_scale,
               sc->rbc1,
               sc->rbc2,
               n,
               p,
               g,
               s1,
               s2};
  cpu_pool_run(((cpu_ctx *)be->ctx)->pool, elem_tasks(n), opt_task, &j);
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
  cpu_pool_free(ctx->pool);
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
    .pe_dense = cpu_pe_dense,
    .pe_conv = cpu_pe_conv,
    .pe_layer_norm = cpu_pe_layer_norm,
    .pe_embed = cpu_pe_embed,
    .pe_sumsq = cpu_pe_sumsq,
    .pe_clip = cpu_pe_clip,
    .row_scale = cpu_row_scale,
    .gauss_add = cpu_gauss_add,
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
    .embed_fwd = cpu_embed_fwd,
    .embed_bwd = cpu_embed_bwd,
    .attn_probs = cpu_attn_probs,
    .attn_mix = cpu_attn_mix,
    .attn_mix_bwd = cpu_attn_mix_bwd,
    .attn_probs_bwd = cpu_attn_probs_bwd,
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
  /* oneDNN runs in the calling thread, inside the pool's tasks: one pool
   * per backend does all of its parallel work. */
  if (!(ctx->pool = cpu_pool_new(ctx->threads))) {
    free(be);
    free(ctx);
    return td_errorf(err, TD_ENOMEM, "cpu backend: cannot start %d threads", threads);
  }
  be->ctx = ctx;
  be->ops = &cpu_ops;
  be->threads = threads;
  be->host_memory = 1;
  *out = be;
  return TD_OK;
}
