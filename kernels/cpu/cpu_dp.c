/* Per-example gradient norms for DP-SGD, without per-example gradients of
 * the batch: each task takes whole examples and forms, one example at a
 * time, what the norm needs (row norms, two Gram matrices, or one
 * example's gradient) in its own scratch. An example's figure depends on
 * its own values alone, so it is the same at any thread count. Then the
 * clip factors, the row scaling of the output gradients, and the Gaussian
 * noise. */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"
#include "prng.h"

/* Tasks of whole examples: at most PE_TASKS, each with its own scratch. */
#define PE_TASKS 64

static size_t pe_tasks(int ex) { return ex < PE_TASKS ? (size_t)(ex > 0 ? ex : 1) : PE_TASKS; }

static void pe_range(int ex, size_t tasks, size_t t, int *i0, int *i1) {
  *i0 = (int)((size_t)ex * t / tasks);
  *i1 = (int)((size_t)ex * (t + 1) / tasks);
}

/* In double, over 8 partial sums (lane k takes the elements i = k mod 8)
 * added in a fixed order: the same result at any thread count. */
typedef double vd4 __attribute__((vector_size(32)));
static double dot_d(const float *a, const float *b, size_t n) {
  vd4 s0 = {0.0, 0.0, 0.0, 0.0}, s1 = s0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const vd4 a0 = {a[i], a[i + 1], a[i + 2], a[i + 3]}, b0 = {b[i], b[i + 1], b[i + 2], b[i + 3]};
    const vd4 a1 = {a[i + 4], a[i + 5], a[i + 6], a[i + 7]},
              b1 = {b[i + 4], b[i + 5], b[i + 6], b[i + 7]};
    s0 += a0 * b0;
    s1 += a1 * b1;
  }
  double s = ((s0[0] + s1[0]) + (s0[1] + s1[1])) + ((s0[2] + s1[2]) + (s0[3] + s1[3]));
  for (; i < n; i++)
    s += (double)a[i] * b[i];
  return s;
}

/* |sum over p rows of d (p, f)|^2, with the column sums in s (f doubles). */
static double colsum_sq(const float *d, int p, int f, double *s) {
  memset(s, 0, (size_t)f * sizeof *s);
  for (int t = 0; t < p; t++)
    for (int c = 0; c < f; c++)
      s[c] += d[(size_t)t * f + c];
  double n = 0.0;
  for (int c = 0; c < f; c++)
    n += s[c] * s[c];
  return n;
}

/* |X^T D|_F^2 for X (p, k) and D (p, f), row-major with leading
 * dimensions k and f, through the scratch w (td_pe_ghost: 2 p^2 floats,
 * else k f). */
static double gram_norm(int p, int k, int f, const float *X, const float *D, float *w) {
  double s = 0.0;
  if (td_pe_ghost(p, k, f)) {
    float *gx = w, *gd = w + (size_t)p * p;
    cpu_sgemm(0, 1, p, p, k, 1.0f, X, k, X, k, 0.0f, gx, p);
    cpu_sgemm(0, 1, p, p, f, 1.0f, D, f, D, f, 0.0f, gd, p);
    s = dot_d(gx, gd, (size_t)p * p);
  } else {
    cpu_sgemm(1, 0, k, f, p, 1.0f, X, k, D, f, 0.0f, w, f);
    s = dot_d(w, w, (size_t)k * f);
  }
  return s;
}

static size_t gram_floats(int p, int k, int f) {
  return td_pe_ghost(p, k, f) ? 2 * (size_t)p * p : (size_t)k * f;
}

/* ---- dense layers -------------------------------------------------------- */

typedef struct pe_job {
  cpu_ctx *ctx;
  size_t tasks, per; /* per: a task's scratch, in doubles */
  double *scratch;
  int ex, p, in, out, bias;
  const float *x, *dz, *saved;
  const td_window *g;
  int scale;
  double *acc;
} pe_job;

static void pe_dense_task(void *arg, size_t t) {
  const pe_job *j = arg;
  int i0, i1;
  pe_range(j->ex, j->tasks, t, &i0, &i1);
  double *ds = j->scratch + t * j->per;
  float *w = (float *)(ds + j->out);
  const size_t xs = (size_t)j->p * j->in, ys = (size_t)j->p * j->out;
  for (int i = i0; i < i1; i++) {
    const float *x = j->x + i * xs, *d = j->dz + i * ys;
    double s;
    if (j->p == 1) {
      double dd = dot_d(d, d, (size_t)j->out);
      s = dot_d(x, x, (size_t)j->in) * dd + (j->bias ? dd : 0.0);
    } else {
      s = gram_norm(j->p, j->in, j->out, x, d, w);
      if (j->bias)
        s += colsum_sq(d, j->p, j->out, ds);
    }
    j->acc[i] += s;
  }
}

static int pe_run(cpu_ctx *ctx, pe_job *j, size_t scratch_floats, size_t scratch_doubles,
                  cpu_task task) {
  j->ctx = ctx;
  j->tasks = pe_tasks(j->ex);
  j->per = scratch_doubles + (scratch_floats + 1) / 2;
  j->per = (j->per + 15) & ~(size_t)7; /* each task's scratch on its own cache lines */
  if (!(j->scratch = cpu_scratch(ctx, j->tasks * j->per)))
    return cpu_fail(ctx, "out of memory for per-example norms (%zu doubles)", j->tasks * j->per);
  cpu_pool_run(ctx->pool, j->tasks, task, j);
  return TD_OK;
}

int cpu_pe_dense(td_backend *be, int ex, int p, int in, int out, const float *x, const float *dz,
                 int bias, double *acc) {
  pe_job j = {.ex = ex, .p = p, .in = in, .out = out, .bias = bias, .x = x, .dz = dz, .acc = acc};
  size_t w = p > 1 ? gram_floats(p, in, out) : 0;
  return pe_run(be->ctx, &j, w, p > 1 ? (size_t)out : 0, pe_dense_task);
}

/* ---- convolutions: through each example's unfolded input ---------------- */

/* U (oh ow, kh kw c): example x's (h, w, c) patches, zeros for padding. */
static void unfold(const td_window *g, const float *x, float *u) {
  const size_t K = (size_t)g->kh * g->kw * g->c;
  for (int oy = 0; oy < g->oh; oy++)
    for (int ox = 0; ox < g->ow; ox++) {
      float *row = u + ((size_t)oy * g->ow + ox) * K;
      for (int ky = 0; ky < g->kh; ky++) {
        int iy = oy * g->sh + ky * g->dh - g->pt;
        for (int kx = 0; kx < g->kw; kx++) {
          int ix = ox * g->sw + kx * g->dw - g->pl;
          float *dst = row + ((size_t)ky * g->kw + kx) * g->c;
          if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
            memset(dst, 0, (size_t)g->c * sizeof *dst);
          else
            memcpy(dst, x + ((size_t)iy * g->w + ix) * g->c, (size_t)g->c * sizeof *dst);
        }
      }
    }
}

static void pe_conv_task(void *arg, size_t t) {
  const pe_job *j = arg;
  const td_window *g = j->g;
  int i0, i1;
  pe_range(j->ex, j->tasks, t, &i0, &i1);
  const int P = g->oh * g->ow, K = g->kh * g->kw * g->c, F = g->oc;
  double *ds = j->scratch + t * j->per;
  float *u = (float *)(ds + F), *w = u + (size_t)P * K;
  const size_t xs = (size_t)g->h * g->w * g->c, ys = (size_t)P * F;
  for (int i = i0; i < i1; i++) {
    const float *d = j->dz + i * ys;
    unfold(g, j->x + i * xs, u);
    double s = gram_norm(P, K, F, u, d, w);
    if (j->bias)
      s += colsum_sq(d, P, F, ds);
    j->acc[i] += s;
  }
}

int cpu_pe_conv(td_backend *be, const td_window *g, const float *x, const float *dz, int bias,
                double *acc) {
  const int P = g->oh * g->ow, K = g->kh * g->kw * g->c;
  pe_job j = {.ex = g->n, .bias = bias, .x = x, .dz = dz, .g = g, .acc = acc};
  return pe_run(be->ctx, &j, (size_t)P * K + gram_floats(P, K, g->oc), (size_t)g->oc, pe_conv_task);
}

/* ---- layer norm, embeddings --------------------------------------------- */

static void pe_ln_task(void *arg, size_t t) {
  const pe_job *j = arg;
  int i0, i1;
  pe_range(j->ex, j->tasks, t, &i0, &i1);
  const int C = j->out;
  double *gs = j->scratch + t * j->per, *gb = gs + C;
  for (int i = i0; i < i1; i++) {
    memset(gs, 0, 2 * (size_t)C * sizeof *gs);
    for (int r = 0; r < j->p; r++) {
      const size_t row = (size_t)i * j->p + r;
      const float *x = j->x + row * C, *dy = j->dz + row * C;
      const double mu = j->saved[2 * row], rstd = j->saved[2 * row + 1];
      for (int c = 0; c < C; c++) {
        gs[c] += dy[c] * ((x[c] - mu) * rstd);
        gb[c] += dy[c];
      }
    }
    double s = 0.0;
    for (int c = 0; c < C; c++)
      s += (j->scale ? gs[c] * gs[c] : 0.0) + (j->bias ? gb[c] * gb[c] : 0.0);
    j->acc[i] += s;
  }
}

int cpu_pe_layer_norm(td_backend *be, int ex, int p, int cols, const float *x, const float *dy,
                      const float *saved, int scale, int bias, double *acc) {
  pe_job j = {.ex = ex,
              .p = p,
              .out = cols,
              .x = x,
              .dz = dy,
              .saved = saved,
              .scale = scale,
              .bias = bias,
              .acc = acc};
  return pe_run(be->ctx, &j, 0, 2 * (size_t)cols, pe_ln_task);
}

/* Example i's embedding gradient has a row per distinct id: the sum of dy's
 * rows at that id's positions, added at its first position. */
static void pe_embed_task(void *arg, size_t t) {
  const pe_job *j = arg;
  int i0, i1;
  pe_range(j->ex, j->tasks, t, &i0, &i1);
  const int P = j->p, C = j->out;
  double *sum = j->scratch + t * j->per;
  for (int i = i0; i < i1; i++) {
    const float *ids = j->x + (size_t)i * P, *dy = j->dz + (size_t)i * P * C;
    double s = 0.0;
    for (int a = 0; a < P; a++) {
      int first = 1;
      for (int b = 0; b < a && first; b++)
        first = ids[b] != ids[a];
      if (!first)
        continue;
      memset(sum, 0, (size_t)C * sizeof *sum);
      for (int b = a; b < P; b++)
        if (ids[b] == ids[a])
          for (int c = 0; c < C; c++)
            sum[c] += dy[(size_t)b * C + c];
      for (int c = 0; c < C; c++)
        s += sum[c] * sum[c];
    }
    j->acc[i] += s;
  }
}

int cpu_pe_embed(td_backend *be, int ex, int p, int cols, const float *ids, const float *dy,
                 double *acc) {
  pe_job j = {.ex = ex, .p = p, .out = cols, .x = ids, .dz = dy, .acc = acc};
  return pe_run(be->ctx, &j, 0, (size_t)cols, pe_embed_task);
}

static void pe_sumsq_task(void *arg, size_t t) {
  const pe_job *j = arg;
  int i0, i1;
  pe_range(j->ex, j->tasks, t, &i0, &i1);
  const size_t per = (size_t)j->in;
  for (int i = i0; i < i1; i++)
    j->acc[i] += dot_d(j->x + i * per, j->x + i * per, per);
}

int cpu_pe_sumsq(td_backend *be, int ex, size_t per, const float *x, double *acc) {
  pe_job j = {.ex = ex, .in = (int)per, .x = x, .acc = acc};
  return pe_run(be->ctx, &j, 0, 0, pe_sumsq_task);
}

/* ---- clip factors, row scaling, noise ----------------------------------- */

int cpu_pe_clip(td_backend *be, int ex, int rows, double scale, double clip, const double *acc,
                float *factor) {
  (void)be;
  for (int i = 0; i < ex; i++) {
    double norm = sqrt(acc[i]) / scale, f = clip / (norm + 1e-6);
    factor[i] = i >= rows ? 0.0f : f < 1.0 ? (float)f : 1.0f;
  }
  return TD_OK;
}

typedef struct scale_job {
  size_t per, tasks;
  int ex;
  const float *src, *factor;
  float *dst;
} scale_job;

static void row_scale_task(void *arg, size_t t) {
  const scale_job *j = arg;
  int i0, i1;
  pe_range(j->ex, j->tasks, t, &i0, &i1);
  for (int i = i0; i < i1; i++) {
    const float f = j->factor[i], *s = j->src + i * j->per;
    float *d = j->dst + i * j->per;
    for (size_t k = 0; k < j->per; k++)
      d[k] = s[k] * f;
  }
}

int cpu_row_scale(td_backend *be, int ex, size_t per, const float *src, const float *factor,
                  float *dst) {
  cpu_ctx *ctx = be->ctx;
  size_t tasks = ((size_t)ex * per + ELEM_GRAIN - 1) / ELEM_GRAIN;
  if (tasks > (size_t)ex)
    tasks = (size_t)(ex > 0 ? ex : 1);
  if (tasks < 1)
    tasks = 1;
  scale_job j = {per, tasks, ex, src, factor, dst};
  cpu_pool_run(ctx->pool, tasks, row_scale_task, &j);
  return TD_OK;
}

/* Noise: NL pairs at a time in vector lanes (threefry, then Box-Muller
 * with polynomial log, sin and cos in float, good to a few ulp), in chunks
 * of NOISE_GRAIN values (whole vectors of pairs). Each value depends only
 * on its index, whatever the chunk or thread. */
#if defined(__AVX512F__)
#define NL 16
#elif defined(__AVX2__)
#define NL 8
#else
#define NL 4
#endif
#if NL == 16
#define INTERLEAVE_LO(a, b) \
  __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define INTERLEAVE_HI(a, b) \
  __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
#elif NL == 8
#define INTERLEAVE_LO(a, b) __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11)
#define INTERLEAVE_HI(a, b) __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15)
#else
#define INTERLEAVE_LO(a, b) __builtin_shufflevector(a, b, 0, 4, 1, 5)
#define INTERLEAVE_HI(a, b) __builtin_shufflevector(a, b, 2, 6, 3, 7)
#endif
typedef uint32_t vu __attribute__((vector_size(NL * 4)));
typedef int32_t vi __attribute__((vector_size(NL * 4)));
typedef float vf __attribute__((vector_size(NL * 4)));
#define NOISE_GRAIN 8192

static inline vu rotl(vu x, unsigned r) { return (x << r) | (x >> (32 - r)); }

/* threefry2x32 (20 rounds) of the counters (0, c) in every lane. */
static inline void threefry_v(td_key key, vu c, vu *o0, vu *o1) {
  static const unsigned rot[8] = {13, 15, 26, 6, 17, 29, 16, 24};
  const uint32_t ks[3] = {key.k[0], key.k[1], 0x1BD11BDAu ^ key.k[0] ^ key.k[1]};
  vu x0 = (vu){0} + ks[0], x1 = c + ks[1];
  for (unsigned g = 0; g < 5; g++) {
    const unsigned *r = rot + 4 * (g & 1);
    for (unsigned i = 0; i < 4; i++) {
      x0 += x1;
      x1 = rotl(x1, r[i]) ^ x0;
    }
    x0 += ks[(g + 1) % 3];
    x1 += ks[(g + 2) % 3] + g + 1;
  }
  *o0 = x0;
  *o1 = x1;
}

/* Lane by lane: a where mask (all ones), else b. */
static inline vf sel(vi mask, vf a, vf b) {
  vi ai, bi, r;
  vf out;
  memcpy(&ai, &a, sizeof ai);
  memcpy(&bi, &b, sizeof bi);
  r = (mask & ai) | (~mask & bi);
  memcpy(&out, &r, sizeof out);
  return out;
}

/* log(x) for x in (0, 1] (Cephes' logf polynomial). */
static inline vf log_v(vf x) {
  vi bits;
  memcpy(&bits, &x, sizeof bits);
  vi e = ((bits >> 23) & 0xff) - 126;
  vi mb = (bits & 0x807fffff) | 0x3f000000;
  vf m;
  memcpy(&m, &mb, sizeof m);
  /* m in [0.5, 1): below sqrt(1/2) take 2m - 1 and e - 1, else m - 1. */
  vi small = m < 0.70710678f;
  e += small;
  m = m - 1.0f + sel(small, m, (vf){0});
  vf z = m * m;
  vf p = 7.0376836292E-2f + (vf){0};
  p = p * m - 1.1514610310E-1f;
  p = p * m + 1.1676998740E-1f;
  p = p * m - 1.2420140846E-1f;
  p = p * m + 1.4249322787E-1f;
  p = p * m - 1.6668057665E-1f;
  p = p * m + 2.0000714765E-1f;
  p = p * m - 2.4999993993E-1f;
  p = p * m + 3.3333331174E-1f;
  vf ef = __builtin_convertvector(e, vf);
  vf y = m * z * p + ef * -2.12194440e-4f - 0.5f * z;
  return m + y + ef * 0.693359375f;
}

/* sin and cos of 2 pi u for u in [0, 1): the quadrant, then Taylor
 * polynomials on [0, pi/2). */
static inline void sincos2pi_v(vf u, vf *s, vf *c) {
  vf t = u * 4.0f;
  vi q = __builtin_convertvector(t, vi);
  vf f = (t - __builtin_convertvector(q, vf)) * 1.57079632679f;
  vf f2 = f * f;
  vf sp = 1.0f / 362880 + f2 * (-1.0f / 39916800);
  sp = -1.0f / 5040 + f2 * sp;
  sp = 1.0f / 120 + f2 * sp;
  sp = -1.0f / 6 + f2 * sp;
  sp = f + f * f2 * sp;
  vf cp = 1.0f / 3628800 * -1.0f + f2 * (1.0f / 479001600);
  cp = 1.0f / 40320 + f2 * cp;
  cp = -1.0f / 720 + f2 * cp;
  cp = 1.0f / 24 + f2 * cp;
  cp = -0.5f + f2 * cp;
  cp = 1.0f + f2 * cp;
  vi q1 = (q & 1) != 0, q2 = (q & 2) != 0;
  /* sin: q 0 s, 1 c, 2 -s, 3 -c; cos: q 0 c, 1 -s, 2 -c, 3 s. */
  vf ss = sel(q1, cp, sp), cc = sel(q1, -sp, cp);
  *s = sel(q2, -ss, ss);
  *c = sel(q2, -cc, cc);
}

typedef struct noise_job {
  size_t n;
  td_key key;
  float stddev;
  float *x;
} noise_job;

static void noise_task(void *arg, size_t t) {
  const noise_job *j = arg;
  const size_t i0 = t * NOISE_GRAIN, i1 = i0 + NOISE_GRAIN < j->n ? i0 + NOISE_GRAIN : j->n;
  vu lane;
  for (int l = 0; l < NL; l++)
    lane[l] = (uint32_t)l;
  for (size_t i = i0; i < i1; i += 2 * NL) {
    vu w0, w1;
    threefry_v(j->key, lane + (uint32_t)(i / 2), &w0, &w1);
    /* u1 in (0, 1], u2 in [0, 1): 24 bits each. */
    vf u1 = (__builtin_convertvector(w0 >> 8, vf) + 1.0f) * (1.0f / 16777216.0f);
    vf u2 = __builtin_convertvector(w1 >> 8, vf) * (1.0f / 16777216.0f);
    vf r2 = -2.0f * log_v(u1), r;
    for (int l = 0; l < NL; l++)
      r[l] = sqrtf(r2[l]) * j->stddev;
    vf sn, cs;
    sincos2pi_v(u2, &sn, &cs);
    vf z0 = r * cs, z1 = r * sn;
    /* Pairs in order: value 2l is z0[l], 2l + 1 is z1[l]. */
    vf lo = INTERLEAVE_LO(z0, z1), hi = INTERLEAVE_HI(z0, z1);
    if (i + 2 * NL <= i1) {
      vf x0, x1;
      memcpy(&x0, j->x + i, sizeof x0);
      memcpy(&x1, j->x + i + NL, sizeof x1);
      x0 += lo;
      x1 += hi;
      memcpy(j->x + i, &x0, sizeof x0);
      memcpy(j->x + i + NL, &x1, sizeof x1);
    } else {
      for (size_t k = i; k < i1; k++)
        j->x[k] += k - i < NL ? lo[k - i] : hi[k - i - NL];
    }
  }
}

int cpu_gauss_add(td_backend *be, size_t n, const uint32_t *key, float stddev, float *x) {
  cpu_ctx *ctx = be->ctx;
  noise_job j = {n, {{key[0], key[1]}}, stddev, x};
  cpu_pool_run(ctx->pool, (n + NOISE_GRAIN - 1) / NOISE_GRAIN, noise_task, &j);
  return TD_OK;
}
