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

/* One pass of a compiled optimizer chain over the flat buffers:
 *   v = in_scale * g
 *   v = adam(v) | trace(v) | v          (by kind; updates s1/s2 in place)
 *   v = out_scale * (mid_scale * v + wd * p)
 *   apply ? p += v : g = v
 * adam:  s1 = (1-b1) v + b1 s1;  s2 = (1-b2) v^2 + b2 s2;
 *        v = (s1 / bc1) / (sqrt(s2 / bc2 + eps_root) + eps)
 * trace: s1 = v + momentum s1;  v = nesterov ? v + momentum s1 : s1 */
typedef enum td_opt_kind {
  TD_OPT_IDENTITY = 0,
  TD_OPT_ADAM,
  TD_OPT_TRACE,
} td_opt_kind;

typedef struct td_opt_pass {
  td_opt_kind kind;
  int apply;
  int nesterov;
  float in_scale, mid_scale, wd, out_scale;
  float b1, b2, eps, eps_root;
  float bc1, bc2; /* 1 - b1^count, 1 - b2^count, count after this update */
  float momentum;
} td_opt_pass;

typedef struct td_backend td_backend;

typedef struct td_backend_ops {
  const char *name;
  void (*destroy)(td_backend *be);

  void *(*alloc)(td_backend *be, size_t bytes); /* zeroed; NULL on failure */
  void (*release)(td_backend *be, void *p);
  int (*upload)(td_backend *be, void *dst, const void *host_src, size_t bytes);
  int (*download)(td_backend *be, void *host_dst, const void *src, size_t bytes);
  int (*fill)(td_backend *be, float *x, size_t n, float value);
  int (*copy)(td_backend *be, float *dst, const float *src, size_t n);

  /* dst (count, dim) = rows idx[i] of src (n, dim); labels likewise.
   * host_idx lives on the host: the engine shuffles there. */
  int (*gather)(td_backend *be, const float *src, const int32_t *src_labels,
                size_t dim, const uint32_t *host_idx, size_t count, float *dst,
                int32_t *dst_labels);

  /* c (m, n) = alpha op(a) op(b) + beta c, with op(a) (m, k), op(b) (k, n). */
  int (*gemm)(td_backend *be, int trans_a, int trans_b, int m, int n, int k,
              float alpha, const float *a, int lda, const float *b, int ldb,
              float beta, float *c, int ldc);

  /* z (rows, cols) += bias (cols) when bias is not NULL; y = act(z).
   * y may equal z when !td_act_needs_preact(act). */
  int (*bias_act_fwd)(td_backend *be, td_act act, int rows, int cols,
                      const float *bias, float *z, float *y);
  /* dz = dy * act'(z) (from y when the derivative allows); dz may equal dy.
   * dbias (cols) = column sums of dz, when dbias is not NULL. */
  int (*bias_act_bwd)(td_backend *be, td_act act, int rows, int cols,
                      const float *z, const float *y, const float *dy,
                      float *dz, float *dbias);

  /* Softmax cross-entropy with integer labels over `rows` of logits (rows,
   * cols). out[0] = sum over rows of the loss, out[1] = number of rows whose
   * argmax equals the label. When dlogits is not NULL it receives
   * (softmax - onehot) * grad_scale. */
  int (*softmax_xent)(td_backend *be, int rows, int cols, const float *logits,
                      const int32_t *labels, float grad_scale, float *dlogits,
                      float *out);
  /* Squared error against one-hot labels: out[0] = sum of (y - onehot)^2,
   * out[1] = argmax matches; dy = 2 (y - onehot) * grad_scale. */
  int (*mse_onehot)(td_backend *be, int rows, int cols, const float *y,
                    const int32_t *labels, float grad_scale, float *dy,
                    float *out);

  /* Inverted dropout with a counter-based mask: element i is kept exactly
   * when jax.random.bernoulli(key, 1 - rate, (N,))[first + i] is true, that
   * is when jax.random.uniform(key, (N,))[first + i] < 1 - rate
   * (threefry2x32 of the counter (hi32(c), lo32(c)), c = first + i, words
   * xor'ed, 23 bits as a mantissa). `first` lets a replica holding rows
   * r0.. of a batch draw exactly those rows' part of the batch's mask.
   * mask (n) receives 0 or 1 / (1 - rate). */
  int (*dropout_fwd)(td_backend *be, size_t n, uint64_t first, float rate, uint32_t key0,
                     uint32_t key1, const float *x, float *mask, float *y);
  /* dx = dy * mask; dx may equal dy. */
  int (*mul)(td_backend *be, size_t n, const float *a, const float *b,
             float *out);

  /* out[0] = sum of x^2 (accumulated in double, stored as float). */
  int (*sumsq)(td_backend *be, size_t n, const float *x, float *out);

  int (*opt_pass)(td_backend *be, const td_opt_pass *pass, size_t n, float *p,
                  float *g, float *s1, float *s2);
} td_backend_ops;

struct td_backend {
  const td_backend_ops *ops;
  void *ctx;
  int threads;     /* CPU threads this backend may use */
  int host_memory; /* its memory is host memory: host data can be used in place */
};

/* The CPU backend (OpenBLAS plus fused loops). threads <= 0 means all cores. */
int td_cpu_backend_create(td_backend **out, int threads, td_error *err);
void td_backend_destroy(td_backend *be);

#endif
