/* The compute backend interface: a small table of functions plus a context.
 *
 * The engine calls only these. Every pointer argument is backend memory
 * (host memory for the CPU backend, device memory for CUDA) unless its name
 * says host_. Matrices are row-major float32. Each function returns TD_OK or
 * a negative td_status; a backend failure fails the job, never the process.
 * Functions may be asynchronous on a stream; download() orders after every
 * call issued before it. */
#ifndef TD_BACKEND_H
#define TD_BACKEND_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum td_act {
  TD_ACT_NONE = 0,
  TD_ACT_RELU,
  TD_ACT_GELU_TANH, /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
  TD_ACT_GELU_ERF,  /* 0.5 x (1 + erf(x / sqrt(2))) */
  TD_ACT_TANH,
  TD_ACT_SIGMOID,
} td_act;

/* Whether act's derivative needs the pre-activation z (otherwise the output
 * y suffices and z may alias y). */
int td_act_needs_preact(td_act act);
const char *td_act_name(td_act act);

/* Functions shared by the backends' host code and their device code. */
#ifdef __CUDACC__
#define TD_HOST_DEVICE __host__ __device__
#else
#define TD_HOST_DEVICE
#endif

/* One pass of a compiled optimizer chain over the flat buffers:
 *   v = in_scale * g                    (in_scale: td_opt_in_scale)
 *   v = adam(v) | trace(v) | v          (by kind; updates s1/s2 in place)
 *   v = out_scale * (mid_scale * v + wd * p)
 *   apply ? p += v : g = v
 * adam:  s1 = (1-b1) v + b1 s1;  s2 = (1-b2) v^2 + b2 s2;
 *        v = (s1 * rbc1) / (sqrt(s2 * rbc2 + eps_root) + eps)
 * trace: s1 = v + momentum s1;  v = nesterov ? v + momentum s1 : s1
 *
 * What is fixed for a job (td_opt_pass) is an argument; what changes from
 * step to step (td_opt_scalars) lives in backend memory, written by the
 * host ahead of the step (the engine's step table), so that a recorded step
 * (a CUDA graph) replays with each step's values. The one factor the host
 * cannot know ahead, a clip to a maximum global norm, is computed by the
 * pass from the squared norm in backend memory. */
typedef enum td_opt_kind {
  TD_OPT_IDENTITY = 0,
  TD_OPT_ADAM,
  TD_OPT_TRACE,
} td_opt_kind;

typedef struct td_opt_pass {
  td_opt_kind kind;
  int apply;
  int nesterov;
  int clip; /* in_scale has a clip factor between pre and post */
  double clip_norm;
  float wd, b1, b2, eps, eps_root, momentum;
} td_opt_pass;

typedef struct td_opt_scalars {
  double pre, post; /* the factors of in_scale before and after the clip */
  float mid_scale, out_scale;
  /* 1 / (1 - b1^count), 1 / (1 - b2^count), count after this update: the
   * bias corrections as factors, so that the pass divides once, not thrice. */
  float rbc1, rbc2;
} td_opt_scalars;

/* in_scale = (float)((pre * k) * post), k = 1 without a clip, else
 * min(1, clip_norm / (|pre| sqrt(norm_sq))): optax's clip_by_global_norm of
 * the updates scaled by pre. */
static inline TD_HOST_DEVICE float td_opt_in_scale(const td_opt_pass *a, const td_opt_scalars *s,
                                                   float norm_sq) {
  double f = s->pre;
  if (a->clip) {
    double g = (f < 0 ? -f : f) * sqrt((double)norm_sq);
    f *= g < a->clip_norm ? 1.0 : a->clip_norm / g;
  }
  return (float)(f * s->post);
}

/* Whether a step's squared gradient norm lets its update be applied: a
 * non-finite one leaves parameters and optimizer state as they were (the
 * engine then fails the job at that step). */
static inline TD_HOST_DEVICE int td_opt_guard_ok(float norm_sq) {
  return norm_sq - norm_sq == 0.0f; /* false for NaN and infinities */
}

/* The geometry of a window op over a batch of NHWC images (a convolution,
 * a pooling): y (n, oh, ow, oc) from x (n, h, w, c), a kh x kw window
 * moved by (sh, sw), its taps dh, dw apart (1: adjacent), over the input
 * with pt, pb, pl, pr zeros added on the top, bottom, left and right. A
 * convolution's kernel is (kh, kw, c, oc), HWIO; a pooling has oc == c. */
typedef struct td_window {
  int n, h, w, c;
  int oh, ow, oc;
  int kh, kw, sh, sw, dh, dw;
  int pt, pb, pl, pr;
} td_window;

typedef enum td_pool_kind {
  TD_POOL_MAX = 0,   /* the window's largest value (padding is never picked) */
  TD_POOL_AVG,       /* the window's sum / its size (padding counts as zeros) */
  TD_POOL_AVG_VALID, /* the sum / the number of the window's positions inside the input */
} td_pool_kind;

/* The output size of a window along one dimension: in, plus padding lo and
 * hi, swept by a window of k taps d apart moved by s; 0 when it does not
 * fit. */
static inline int td_window_out(int in, int lo, int hi, int k, int s, int d) {
  int span = (k - 1) * d + 1, padded = in + lo + hi;
  return padded < span ? 0 : (padded - span) / s + 1;
}

typedef struct td_backend td_backend;

/* Whether the squared norm of X^T D, X (p, k) and D (p, f), is cheaper as
 * the ghost norm (two p x p Gram matrices) than formed (k x f). */
static inline int td_pe_ghost(int p, int k, int f) {
  return (double)p * p * (k + f) < (double)p * k * f;
}

/* Where a dataset's examples lie in its values and labels (gather). */
typedef struct td_rows {
  size_t dim, stride;             /* values per example, and between examples' first */
  size_t label_dim, label_stride; /* labels per example, and between examples' first */
} td_rows;

typedef struct td_backend_ops {
  const char *name;
  void (*destroy)(td_backend *be);

  void *(*alloc)(td_backend *be, size_t bytes); /* zeroed; NULL on failure */
  void (*release)(td_backend *be, void *p);
  int (*upload)(td_backend *be, void *dst, const void *host_src, size_t bytes);
  int (*download)(td_backend *be, void *host_dst, const void *src, size_t bytes);
  int (*fill)(td_backend *be, float *x, size_t n, float value);
  int (*copy)(td_backend *be, float *dst, const float *src, size_t n);

  /* dst (count, dim) = for each i, the dim values of src from
   * idx[off + i] * l->stride; dst_labels (count, label_dim) likewise the
   * label_dim labels of src_labels from idx[off + i] * label_stride (an
   * example dataset: stride dim, one label; token windows: overlapping or
   * tiled windows of one sequence). idx lives in backend memory, and so
   * does the offset *off (none when off is NULL), so that a recorded step
   * reads its batch's place in the epoch's order at replay. */
  int (*gather)(td_backend *be, const td_rows *l, const float *src, const int32_t *src_labels,
                const uint32_t *idx, const uint32_t *off, size_t count, float *dst,
                int32_t *dst_labels);

  /* c (m, n) = alpha op(a) op(b) + beta c, with op(a) (m, k), op(b) (k, n). */
  int (*gemm)(td_backend *be, int trans_a, int trans_b, int m, int n, int k, float alpha,
              const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);

  /* z (rows, cols) += bias (cols) when bias is not NULL; y = act(z).
   * y may equal z when !td_act_needs_preact(act). */
  int (*bias_act_fwd)(td_backend *be, td_act act, int rows, int cols, const float *bias, float *z,
                      float *y);
  /* dz = dy * act'(z) (from y when the derivative allows); dz may equal dy.
   * dbias (cols) = column sums of dz, when dbias is not NULL. */
  int (*bias_act_bwd)(td_backend *be, td_act act, int rows, int cols, const float *z,
                      const float *y, const float *dy, float *dz, float *dbias);

  /* Softmax cross-entropy with integer labels over `rows` of logits (rows,
   * cols). out[0] = sum over rows of the loss, out[1] = number of rows whose
   * argmax equals the label. When dlogits is not NULL it receives
   * (softmax - onehot) * grad_scale. */
  int (*softmax_xent)(td_backend *be, int rows, int cols, const float *logits,
                      const int32_t *labels, float grad_scale, float *dlogits, float *out);
  /* Squared error against one-hot labels: out[0] = sum of (y - onehot)^2,
   * out[1] = argmax matches; dy = 2 (y - onehot) * grad_scale. */
  int (*mse_onehot)(td_backend *be, int rows, int cols, const float *y, const int32_t *labels,
                    float grad_scale, float *dy, float *out);

  /* Inverted dropout with a counter-based mask: element i is kept exactly
   * when jax.random.bernoulli(key, 1 - rate, (N,))[first + i] is true, that
   * is when jax.random.uniform(key, (N,))[first + i] < 1 - rate
   * (threefry2x32 of the counter (hi32(c), lo32(c)), c = first + i, words
   * xor'ed, 23 bits as a mantissa). `first` lets a replica holding rows
   * r0.. of a batch draw exactly those rows' part of the batch's mask.
   * mask (n) receives 0 or 1 / (1 - rate). key: the two words of the key,
   * in backend memory. */
  int (*dropout_fwd)(td_backend *be, size_t n, uint64_t first, float rate, const uint32_t *key,
                     const float *x, float *mask, float *y);
  /* dx = dy * mask; dx may equal dy. */
  int (*mul)(td_backend *be, size_t n, const float *a, const float *b, float *out);
  /* out = a + b elementwise (an add layer, and gradients summed where a
   * value feeds several layers); out may equal a or b. */
  int (*add)(td_backend *be, size_t n, const float *a, const float *b, float *out);
  /* Copies a (rows, cols) block between row-major buffers of leading
   * dimensions src_ld and dst_ld (in floats): concatenation and its
   * backward. The two do not overlap. */
  int (*copy2d)(td_backend *be, size_t rows, size_t cols, float *dst, size_t dst_ld,
                const float *src, size_t src_ld);

  /* Window ops (optional: NULL when the backend has none; the engine then
   * refuses models that use them on this backend). A kernel is prepared
   * once for the full batch of its geometry and used by every step, with
   * whatever buffers it is given; kernel_free releases it. Forward runs
   * over the whole batch (rows past those an evaluation reads are
   * computed and ignored). */
  int (*conv_create)(td_backend *be, const td_window *g, void **kernel);
  /* y = x convolved with w (HWIO), no bias. */
  int (*conv_fwd)(td_backend *be, void *kernel, const float *x, const float *w, float *y);
  /* dw = the kernel's gradient, and dx = the input's (not when NULL). */
  int (*conv_bwd)(td_backend *be, void *kernel, const float *x, const float *w, const float *dy,
                  float *dx, float *dw);
  int (*pool_create)(td_backend *be, const td_window *g, td_pool_kind kind, void **kernel);
  int (*pool_fwd)(td_backend *be, void *kernel, const float *x, float *y);
  /* dx from dy; a max pooling reads where its last forward found the maxima. */
  int (*pool_bwd)(td_backend *be, void *kernel, const float *dy, float *dx);
  void (*kernel_free)(td_backend *be, void *kernel);

  /* Normalization over (rows, cols) row-major buffers (optional: NULL when
   * the backend has none). Sums are accumulated in double.
   * Batch norm normalizes each column, layer norm each row; scale and
   * bias (one per column) may be NULL (1 and 0).
   *
   * col_moments: m[c] = mean over rows of x[., c], m[cols + c] = mean of
   * x^2: a batch's moments, which replicas average into the whole batch's. */
  int (*col_moments)(td_backend *be, int rows, int cols, const float *x, float *m);
  /* Batch norm forward. train: mean and var from the moments m (var =
   * max(0, mean(x^2) - mean^2)), and, when running (2 * cols: mean, var)
   * is not NULL, running = momentum * running + (1 - momentum) * (mean,
   * var); otherwise mean and var are running's. y = (x - mean) /
   * sqrt(var + eps) * scale + bias; saved (2 * cols) = mean, 1/sqrt(var +
   * eps) for backward. */
  int (*bn_fwd)(td_backend *be, int train, int rows, int cols, const float *x, const float *m,
                float *running, float momentum, float eps, const float *scale, const float *bias,
                float *y, float *saved);
  /* Batch norm backward, first half: with xhat = (x - mean) * rstd,
   * dscale = sum dy * xhat and dbias = sum dy over rows (when not NULL), and
   * s (2 * cols) = their means over rows, which replicas average. */
  int (*bn_bwd_sums)(td_backend *be, int rows, int cols, const float *x, const float *dy,
                     const float *saved, float *dscale, float *dbias, float *s);
  /* Second half: dx = scale * rstd * (dy - s[c] - xhat * s[cols + c]);
   * dx may equal dy. */
  int (*bn_bwd_dx)(td_backend *be, int rows, int cols, const float *x, const float *dy,
                   const float *saved, const float *scale, const float *s, float *dx);
  /* Layer norm: each row by its own mean and variance (as batch norm's
   * train mode, over cols); saved (2 * rows) = each row's mean and rstd. */
  int (*ln_fwd)(td_backend *be, int rows, int cols, float eps, const float *x, const float *scale,
                const float *bias, float *y, float *saved);
  /* dx (not when NULL; not equal to dy), and dscale, dbias summed over rows (when not NULL). */
  int (*ln_bwd)(td_backend *be, int rows, int cols, const float *x, const float *dy,
                const float *saved, const float *scale, float *dx, float *dscale, float *dbias);

  /* Token embedding: y (rows, cols) = row ids[r] of table (vocab, cols),
   * the ids held as floats (an id outside [0, vocab) gives a zero row).
   * Backward: dtable (vocab, cols) = the sum, in row order, of dy's rows
   * into their ids' rows (dtable is written, not added to). Optional (NULL:
   * models with embed layers are refused on this backend). */
  int (*embed_fwd)(td_backend *be, int rows, int cols, int vocab, const float *ids,
                   const float *table, float *y);
  int (*embed_bwd)(td_backend *be, int rows, int cols, int vocab, const float *ids, const float *dy,
                   float *dtable);

  /* Causal self-attention of `batch` sequences of t positions, h heads of
   * d values each (f = h d). qkv (batch, t, 3f) holds each position's
   * query, key and value, head k's at columns k d, f + k d and 2f + k d.
   * Optional, all four or none (NULL: attention layers are refused).
   * attn_probs: p (batch, h, t, t) = softmax over j <= i of
   *   q_i . k_j / sqrt(d), zero for j > i.
   * attn_mix: o (batch, t, f), head k's columns = sum_j p[i, j] v_j.
   * attn_mix_bwd: from do (batch, t, f): dp[i, j] = do_i . v_j (j <= i,
   *   else 0), and the values' part of dqkv = sum_i p[i, j] do_i.
   * attn_probs_bwd: ds = p (dp - sum_j p dp) (in place of dp), and the
   *   queries' and keys' parts of dqkv = ds k / sqrt(d), ds^T q / sqrt(d). */
  int (*attn_probs)(td_backend *be, int batch, int t, int h, int d, const float *qkv, float *p);
  int (*attn_mix)(td_backend *be, int batch, int t, int h, int d, const float *p, const float *qkv,
                  float *o);
  int (*attn_mix_bwd)(td_backend *be, int batch, int t, int h, int d, const float *p,
                      const float *qkv, const float *dout, float *dp, float *dqkv);
  int (*attn_probs_bwd)(td_backend *be, int batch, int t, int h, int d, const float *p, float *dp,
                        const float *qkv, float *dqkv);

  /* Per-example gradients (DP-SGD), all optional (NULL: the backend refuses
   * jobs with training.dp_sgd). Each adds, for each of `ex` examples, the
   * squared norm of that example's share of a layer's parameter gradient
   * to acc[i] (doubles, backend memory), without forming the per-example
   * gradients of the batch.
   *
   * pe_dense: a dense layer over examples of p rows (p > 1: a sequence's
   *   positions) of x (ex * p, in) and its output gradient dz (ex * p,
   *   out). Example i's kernel gradient is X_i^T D_i: for p == 1 its norm^2
   *   is |x_i|^2 |d_i|^2 (Goodfellow 2015); for p > 1 it is the "ghost
   *   norm" sum_{t,t'} (x_t . x_t') (d_t . d_t') (Li et al. 2021) or the
   *   norm of X_i^T D_i formed one example at a time, whichever costs less
   *   (td_pe_ghost). With bias, |sum_t d_t|^2 is added. */
  int (*pe_dense)(td_backend *be, int ex, int p, int in, int out, const float *x, const float *dz,
                  int bias, double *acc);
  /* pe_conv: a convolution of geometry g (g->n examples): example i's
   *   kernel gradient is U_i^T D_i, U_i its input unfolded into (oh ow,
   *   kh kw c) patches and D_i (oh ow, oc) its output gradient; with bias,
   *   |sum_p d_p|^2. */
  int (*pe_conv)(td_backend *be, const td_window *g, const float *x, const float *dz, int bias,
                 double *acc);
  /* pe_layer_norm: a layer norm over examples of p rows of cols: scale
   *   gradient sum_t dy_t * xhat_t, bias gradient sum_t dy_t (saved: the
   *   forward's mean and rstd per row). */
  int (*pe_layer_norm)(td_backend *be, int ex, int p, int cols, const float *x, const float *dy,
                       const float *saved, int scale, int bias, double *acc);
  /* pe_embed: an embedding read by p ids per example: the rows of dy
   *   summed per distinct id, and their squared norms summed. */
  int (*pe_embed)(td_backend *be, int ex, int p, int cols, const float *ids, const float *dy,
                  double *acc);
  /* pe_sumsq: acc[i] += sum of x[i * per .. (i + 1) * per)^2 (a position
   *   embedding's gradient is its output gradient). */
  int (*pe_sumsq)(td_backend *be, int ex, size_t per, const float *x, double *acc);
  /* factor[i] = min(1, clip / (sqrt(acc[i]) / scale + 1e-6)) for i < rows
   *   (Opacus's clip factor of a gradient whose norm is sqrt(acc[i]) / scale),
   *   0 for rows <= i < ex. */
  int (*pe_clip)(td_backend *be, int ex, int rows, double scale, double clip, const double *acc,
                 float *factor);
  /* dst (ex, per) = src's rows, row i times factor[i]. */
  int (*row_scale)(td_backend *be, int ex, size_t per, const float *src, const float *factor,
                   float *dst);
  /* x[i] += stddev * z_i for i < n, z_i standard normal from the counter
   *   i under key (2 words, backend memory): threefry2x32 of (0, i / 2)
   *   gives two uniforms, Box-Muller two normals (even i the cosine). */
  int (*gauss_add)(td_backend *be, size_t n, const uint32_t *key, float stddev, float *x);

  /* out[0] = sum of x^2 (accumulated in double, stored as float). */
  int (*sumsq)(td_backend *be, size_t n, const float *x, float *out);

  /* One optimizer pass; sc, norm_sq and guard are backend memory, pass
   * host memory. norm_sq (read when pass->clip) is the squared norm the
   * clip uses; the pass does nothing when guard is not NULL and
   * !td_opt_guard_ok(*guard). */
  int (*opt_pass)(td_backend *be, const td_opt_pass *pass, const td_opt_scalars *sc,
                  const float *norm_sq, const float *guard, size_t n, float *p, float *g, float *s1,
                  float *s2);

  /* The step table (td_step_record in train.h) at work: copies record
   * *counter of table (records of rec_bytes) to cur and increments
   * *counter; all in backend memory. A recorded step begins with it. */
  int (*step_begin)(td_backend *be, const void *table, size_t rec_bytes, uint32_t *counter,
                    void *cur);
  /* dst[*slot * n + k] = src[k] for k < n; all in backend memory. */
  int (*record)(td_backend *be, const uint32_t *slot, const float *src, size_t n, float *dst);

  /* Optional (NULL: the engine shuffles on the host and uploads).
   * order (n, backend memory) = the permutation td_prng_permutation makes
   * from the rounds' keys: starting from 0..n-1, each round r sorts order
   * stably by the 32-bit keys hash(round_keys[r], i) (threefry2x32 of the
   * counter i, words xor'ed) of the positions i. round_keys: host, 2 words
   * per round. */
  int (*shuffle)(td_backend *be, uint32_t n, int rounds, const uint32_t *round_keys,
                 uint32_t *order);

  /* Optional (NULL: steps run op by op). Records the ops body(arg) issues
   * on this backend, without running them, as one replayable graph; each
   * replay runs them again in order, reading the same buffers. */
  int (*graph_record)(td_backend *be, int (*body)(void *arg), void *arg, void **graph);
  int (*graph_replay)(td_backend *be, void *graph);
  void (*graph_free)(td_backend *be, void *graph);

  /* Optional: the last failure of this backend's ops as one line, naming
   * the library call and its message ("" when none has failed); the
   * interface's return codes have no room for it. */
  const char *(*last_error)(td_backend *be);
} td_backend_ops;

struct td_backend {
  const td_backend_ops *ops;
  void *ctx;
  int threads;     /* CPU threads this backend may use */
  int host_memory; /* its memory is host memory: host data can be used in place */
};

/* The CPU backend (oneDNN's sgemm plus fused loops). threads <= 0 means all cores. */
int td_cpu_backend_create(td_backend **out, int threads, td_error *err);
void td_backend_destroy(td_backend *be);

#endif
