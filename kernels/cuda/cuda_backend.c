/* The CUDA backend's table (see cuda_backend.h): device setup, memory,
 * cuBLAS for gemm, and the fused kernels' launchers (cuda_internal.h). */
#include "cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#ifdef TRAIND_HAVE_CUDNN
#include <cudnn.h>
#endif
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "log.h"

/* cuBLAS's workspace: what NVIDIA recommends for Hopper. A fixed workspace
 * per handle keeps cuBLAS from allocating during a step or a graph capture. */
#define BLAS_WORKSPACE_BYTES ((size_t)32 << 20)
/* The device scratch buffer's first size; it grows (at most a few times, in
 * the first steps) when an op needs more. */
#define SCRATCH_MIN_BYTES ((size_t)1 << 20)

typedef struct cuda_ctx {
  int device;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *blas_workspace;
  /* Device scratch for reductions and the shuffle: one op at a time uses
   * it, in stream order. */
  void *scratch;
  size_t scratch_bytes;
#ifdef TRAIND_HAVE_CUDNN
  /* cuDNN for the convolutions, bound to the stream; made by the first
   * convolution kernel. */
  cudnnHandle_t dnn;
#endif
  td_error last; /* the last failure, for td_cuda_backend_last_error */
} cuda_ctx;

/* Keeps and logs a failure whose message is in c->last already. */
static int failed(cuda_ctx *c, int rc) {
  if (rc) {
    c->last.code = rc;
    td_log_error("CUDA backend failure", "gpu=%d error=\"%s\"", c->device, c->last.msg);
  }
  return rc;
}

static int cuda_fail(cuda_ctx *c, const char *call, cudaError_t e) {
  /* Reported here, so cleared for the next launch check (a no-op after a
   * fault, which every later call reports again). */
  cudaGetLastError();
  td_errorf(&c->last, e == cudaErrorMemoryAllocation ? TD_ENOMEM : TD_EBACKEND, "%s: %s", call,
            cudaGetErrorString(e));
  return failed(c, c->last.code);
}

static int blas_fail(cuda_ctx *c, const char *call, cublasStatus_t s) {
  td_errorf(&c->last, s == CUBLAS_STATUS_ALLOC_FAILED ? TD_ENOMEM : TD_EBACKEND, "%s: %s", call,
            cublasGetStatusString(s));
  return failed(c, c->last.code);
}

static int invalid(cuda_ctx *c, const char *op, const char *what) {
  td_errorf(&c->last, TD_EINVAL, "%s: %s", op, what);
  return failed(c, TD_EINVAL);
}

/* Makes the backend's GPU current on the calling thread (ops may come from
 * any thread, and one thread may drive several GPUs). */
static int enter(cuda_ctx *c) {
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur == c->device)
    return TD_OK;
  cudaError_t e = cudaSetDevice(c->device);
  return e == cudaSuccess ? TD_OK : cuda_fail(c, "cudaSetDevice", e);
}

#define ENTER(c)        \
  do {                  \
    int rc_ = enter(c); \
    if (rc_)            \
      return rc_;       \
  } while (0)

static int sync_stream(cuda_ctx *c) {
  cudaError_t e = cudaStreamSynchronize(c->stream);
  return e == cudaSuccess ? TD_OK : cuda_fail(c, "cudaStreamSynchronize", e);
}

/* c->scratch of at least bytes. Growing waits for the stream (earlier ops
 * may still use the old buffer), so it must not happen during a graph
 * capture: a warm-up step sizes it first. */
static int scratch(cuda_ctx *c, size_t bytes, void **out) {
  if (bytes > c->scratch_bytes) {
    size_t want = c->scratch_bytes ? c->scratch_bytes : SCRATCH_MIN_BYTES;
    while (want < bytes)
      want *= 2;
    int rc = sync_stream(c);
    if (rc)
      return rc;
    cudaFree(c->scratch);
    c->scratch = NULL;
    c->scratch_bytes = 0;
    cudaError_t e = cudaMalloc(&c->scratch, want);
    if (e != cudaSuccess) {
      c->scratch = NULL;
      return cuda_fail(c, "cudaMalloc (scratch)", e);
    }
    c->scratch_bytes = want;
  }
  *out = c->scratch;
  return TD_OK;
}

/* ---------------------------------------------------------------- memory */

static void *cuda_alloc(td_backend *be, size_t bytes) {
  cuda_ctx *c = be->ctx;
  if (enter(c))
    return NULL;
  /* Whole 256-byte granules, all zeroed, so vector loads past a buffer's
   * last float stay inside it. */
  size_t rounded = (bytes + 255) & ~(size_t)255;
  if (!rounded)
    rounded = 256;
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, rounded);
  if (e != cudaSuccess) {
    cuda_fail(c, "cudaMalloc", e);
    return NULL;
  }
  /* Zeroed on the stream, and complete before returning, so that work on
   * other streams (collectives) also sees zeros. */
  if ((e = cudaMemsetAsync(p, 0, rounded, c->stream)) != cudaSuccess) {
    cuda_fail(c, "cudaMemsetAsync", e);
    cudaFree(p);
    return NULL;
  }
  if (sync_stream(c)) {
    cudaFree(p);
    return NULL;
  }
  return p;
}

static void cuda_release(td_backend *be, void *p) {
  cuda_ctx *c = be->ctx;
  if (!p || enter(c))
    return;
  /* Work still queued on the stream may use p. */
  cudaStreamSynchronize(c->stream);
  cudaError_t e = cudaFree(p);
  if (e != cudaSuccess)
    cuda_fail(c, "cudaFree", e);
}

/* One copy on the stream, returning once it is complete (so after
 * everything enqueued before it, and with host memory free to reuse). */
static int copy_sync(cuda_ctx *c, void *dst, const void *src, size_t bytes,
                     enum cudaMemcpyKind kind, const char *what) {
  if (!bytes)
    return TD_OK;
  ENTER(c);
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, c->stream);
  if (e != cudaSuccess)
    return cuda_fail(c, what, e);
  return sync_stream(c);
}

static int cuda_upload(td_backend *be, void *dst, const void *host_src, size_t bytes) {
  return copy_sync(be->ctx, dst, host_src, bytes, cudaMemcpyHostToDevice,
                   "cudaMemcpyAsync (upload)");
}

static int cuda_download(td_backend *be, void *host_dst, const void *src, size_t bytes) {
  return copy_sync(be->ctx, host_dst, src, bytes, cudaMemcpyDeviceToHost,
                   "cudaMemcpyAsync (download)");
}

static int cuda_fill(td_backend *be, float *x, size_t n, float value) {
  cuda_ctx *c = be->ctx;
  if (!n)
    return TD_OK;
  ENTER(c);
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  if (bits == 0) { /* +0.0f: all-zero bytes */
    cudaError_t e = cudaMemsetAsync(x, 0, n * sizeof *x, c->stream);
    return e == cudaSuccess ? TD_OK : cuda_fail(c, "cudaMemsetAsync (fill)", e);
  }
  return failed(c, td_cuda_fill(c->stream, x, n, value, &c->last));
}

static int cuda_copy(td_backend *be, float *dst, const float *src, size_t n) {
  cuda_ctx *c = be->ctx;
  if (!n || dst == src)
    return TD_OK;
  ENTER(c);
  cudaError_t e = cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToDevice, c->stream);
  return e == cudaSuccess ? TD_OK : cuda_fail(c, "cudaMemcpyAsync (copy)", e);
}

/* -------------------------------------------------------------- compute */

static int cuda_gather(td_backend *be, const td_rows *l, const float *src,
                       const int32_t *src_labels, const uint32_t *idx, const uint32_t *off,
                       size_t count, float *dst, int32_t *dst_labels) {
  cuda_ctx *c = be->ctx;
  if (!count)
    return TD_OK;
  ENTER(c);
  return failed(
      c, td_cuda_gather(c->stream, l, src, src_labels, idx, off, count, dst, dst_labels, &c->last));
}

/* Row-major C = A B is column-major C^T = B^T A^T: the operands swap and
 * the row-major leading dimensions serve as they are. */
static int cuda_gemm(td_backend *be, int trans_a, int trans_b, int m, int n, int k, float alpha,
                     const float *a, int lda, const float *b, int ldb, float beta, float *cm,
                     int ldc) {
  cuda_ctx *c = be->ctx;
  if (m < 0 || n < 0 || k < 0)
    return invalid(c, "gemm", "negative dimension");
  if (!m || !n)
    return TD_OK;
  ENTER(c);
  cublasStatus_t s =
      cublasSgemm(c->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                  n, m, k, &alpha, b, ldb, a, lda, &beta, cm, ldc);
  return s == CUBLAS_STATUS_SUCCESS ? TD_OK : blas_fail(c, "cublasSgemm", s);
}

static int valid_act(td_act act) { return act >= TD_ACT_NONE && act <= TD_ACT_SIGMOID; }

static int cuda_bias_act_fwd(td_backend *be, td_act act, int rows, int cols, const float *bias,
                             float *z, float *y) {
  cuda_ctx *c = be->ctx;
  if (rows < 0 || cols < 0)
    return invalid(c, "bias_act_fwd", "negative dimension");
  if (!valid_act(act))
    return invalid(c, "bias_act_fwd", "unknown activation");
  ENTER(c);
  return failed(c, td_cuda_bias_act_fwd(c->stream, act, rows, cols, bias, z, y, &c->last));
}

static int cuda_bias_act_bwd(td_backend *be, td_act act, int rows, int cols, const float *z,
                             const float *y, const float *dy, float *dz, float *dbias) {
  cuda_ctx *c = be->ctx;
  if (rows < 0 || cols < 0)
    return invalid(c, "bias_act_bwd", "negative dimension");
  if (!valid_act(act))
    return invalid(c, "bias_act_bwd", "unknown activation");
  ENTER(c);
  void *s = NULL;
  size_t need = dbias ? td_cuda_bias_act_bwd_scratch(rows, cols) : 0;
  if (need) {
    int rc = scratch(c, need, &s);
    if (rc)
      return rc;
  }
  return failed(c,
                td_cuda_bias_act_bwd(c->stream, act, rows, cols, z, y, dy, dz, dbias, s, &c->last));
}

static int loss_args(cuda_ctx *c, const char *op, int rows, int cols, void **s) {
  if (rows < 0 || cols < 0 || (rows > 0 && cols < 1))
    return invalid(c, op, "bad shape (rows >= 0 and cols >= 1 are needed)");
  ENTER(c);
  return scratch(c, td_cuda_loss_scratch(rows), s);
}

static int cuda_softmax_xent(td_backend *be, int rows, int cols, const float *logits,
                             const int32_t *labels, float grad_scale, float *dlogits, float *out) {
  cuda_ctx *c = be->ctx;
  void *s = NULL;
  int rc = loss_args(c, "softmax_xent", rows, cols, &s);
  if (rc)
    return rc;
  return failed(c, td_cuda_softmax_xent(c->stream, rows, cols, logits, labels, grad_scale, dlogits,
                                        out, s, &c->last));
}

static int cuda_mse_onehot(td_backend *be, int rows, int cols, const float *y,
                           const int32_t *labels, float grad_scale, float *dy, float *out) {
  cuda_ctx *c = be->ctx;
  void *s = NULL;
  int rc = loss_args(c, "mse_onehot", rows, cols, &s);
  if (rc)
    return rc;
  return failed(
      c, td_cuda_mse_onehot(c->stream, rows, cols, y, labels, grad_scale, dy, out, s, &c->last));
}

static int cuda_dropout_fwd(td_backend *be, size_t n, uint64_t first, float rate,
                            const uint32_t *key, const float *x, float *mask, float *y) {
  cuda_ctx *c = be->ctx;
  if (!n)
    return TD_OK;
  ENTER(c);
  return failed(c, td_cuda_dropout_fwd(c->stream, n, first, rate, key, x, mask, y, &c->last));
}

static int cuda_mul(td_backend *be, size_t n, const float *a, const float *b, float *out) {
  cuda_ctx *c = be->ctx;
  if (!n)
    return TD_OK;
  ENTER(c);
  return failed(c, td_cuda_mul(c->stream, n, a, b, out, &c->last));
}

static int cuda_add(td_backend *be, size_t n, const float *a, const float *b, float *out) {
  cuda_ctx *c = be->ctx;
  if (!n)
    return TD_OK;
  ENTER(c);
  return failed(c, td_cuda_add(c->stream, n, a, b, out, &c->last));
}

/* cudaMemcpy2DAsync on the stream: recorded into a graph like a kernel. */
static int cuda_copy2d(td_backend *be, size_t rows, size_t cols, float *dst, size_t dst_ld,
                       const float *src, size_t src_ld) {
  cuda_ctx *c = be->ctx;
  if (!rows || !cols)
    return TD_OK;
  ENTER(c);
  cudaError_t e = cudaMemcpy2DAsync(dst, dst_ld * sizeof *dst, src, src_ld * sizeof *src,
                                    cols * sizeof *dst, rows, cudaMemcpyDeviceToDevice, c->stream);
  return e == cudaSuccess ? TD_OK : cuda_fail(c, "cudaMemcpy2DAsync (copy2d)", e);
}

static int cuda_sumsq(td_backend *be, size_t n, const float *x, float *out) {
  cuda_ctx *c = be->ctx;
  ENTER(c);
  void *s = NULL;
  int rc = scratch(c, td_cuda_sumsq_scratch(n), &s);
  if (rc)
    return rc;
  return failed(c, td_cuda_sumsq(c->stream, n, x, out, s, &c->last));
}

static int cuda_opt_pass(td_backend *be, const td_opt_pass *pass, const td_opt_scalars *sc,
                         const float *norm_sq, const float *guard, size_t n, float *p, float *g,
                         float *s1, float *s2) {
  cuda_ctx *c = be->ctx;
  if (!n)
    return TD_OK;
  ENTER(c);
  return failed(c,
                td_cuda_opt_pass(c->stream, pass, sc, norm_sq, guard, n, p, g, s1, s2, &c->last));
}

static int cuda_step_begin(td_backend *be, const void *table, size_t rec_bytes, uint32_t *counter,
                           void *cur) {
  cuda_ctx *c = be->ctx;
  ENTER(c);
  return failed(c, td_cuda_step_begin(c->stream, table, rec_bytes, counter, cur, &c->last));
}

static int cuda_record(td_backend *be, const uint32_t *slot, const float *src, size_t n,
                       float *dst) {
  cuda_ctx *c = be->ctx;
  ENTER(c);
  return failed(c, td_cuda_record(c->stream, slot, src, n, dst, &c->last));
}

static int cuda_shuffle(td_backend *be, uint32_t n, int rounds, const uint32_t *round_keys,
                        uint32_t *order) {
  cuda_ctx *c = be->ctx;
  if (!n)
    return TD_OK;
  ENTER(c);
  size_t need = td_cuda_shuffle_scratch(n);
  void *s = NULL;
  int rc = scratch(c, need, &s);
  if (rc)
    return rc;
  return failed(
      c, td_cuda_shuffle(c->stream, n, rounds, round_keys, order, s, c->scratch_bytes, &c->last));
}

/* ------------------------------------------------------------ window ops */

/* A geometry the kernels can take: positive sizes, non-negative padding,
 * and output sizes that follow from the rest (td_window_out). */
static int window_check(cuda_ctx *c, const char *op, const td_window *g, int pool) {
  char what[160];
  if (g->n < 1 || g->h < 1 || g->w < 1 || g->c < 1 || g->oc < 1 || g->kh < 1 || g->kw < 1 ||
      g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1 || g->pt < 0 || g->pb < 0 || g->pl < 0 ||
      g->pr < 0)
    return invalid(c, op, "sizes, strides and dilations must be positive, padding non-negative");
  const int oh = td_window_out(g->h, g->pt, g->pb, g->kh, g->sh, g->dh);
  const int ow = td_window_out(g->w, g->pl, g->pr, g->kw, g->sw, g->dw);
  if (oh < 1 || ow < 1 || g->oh != oh || g->ow != ow || (pool && g->oc != g->c)) {
    snprintf(what, sizeof what,
             "output (%d, %d, %d) does not follow from the geometry (%d, %d, %d)", g->oh, g->ow,
             g->oc, oh, ow, pool ? g->c : g->oc);
    return invalid(c, op, what);
  }
  return TD_OK;
}

#ifdef TRAIND_HAVE_CUDNN
static int dnn_handle(cuda_ctx *c) {
  if (c->dnn)
    return TD_OK;
  cudnnHandle_t h = NULL;
  cudnnStatus_t s = cudnnCreate(&h);
  if (s == CUDNN_STATUS_SUCCESS && (s = cudnnSetStream(h, c->stream)) != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(h);
    td_errorf(&c->last, TD_EBACKEND, "cudnnSetStream: %s", cudnnGetErrorString(s));
    return failed(c, TD_EBACKEND);
  }
  if (s != CUDNN_STATUS_SUCCESS) {
    td_errorf(&c->last, s == CUDNN_STATUS_ALLOC_FAILED ? TD_ENOMEM : TD_EBACKEND, "cudnnCreate: %s",
              cudnnGetErrorString(s));
    return failed(c, c->last.code);
  }
  c->dnn = h;
  return TD_OK;
}

static int cuda_conv_create(td_backend *be, const td_window *g, void **kernel) {
  cuda_ctx *c = be->ctx;
  *kernel = NULL;
  int rc = window_check(c, "conv_create", g, 0);
  if (rc)
    return rc;
  ENTER(c);
  if ((rc = dnn_handle(c)))
    return rc;
  return failed(c, td_cuda_conv_create(c->dnn, g, kernel, &c->last));
}

static int cuda_conv_fwd(td_backend *be, void *kernel, const float *x, const float *w, float *y) {
  cuda_ctx *c = be->ctx;
  if (!kernel || td_cuda_kernel_kind(kernel) != TD_CUDA_KERNEL_CONV)
    return invalid(c, "conv_fwd", "not a convolution kernel");
  ENTER(c);
  return failed(c, td_cuda_conv_fwd(c->dnn, c->stream, kernel, x, w, y, &c->last));
}

static int cuda_conv_bwd(td_backend *be, void *kernel, const float *x, const float *w,
                         const float *dy, float *dx, float *dw) {
  cuda_ctx *c = be->ctx;
  if (!kernel || td_cuda_kernel_kind(kernel) != TD_CUDA_KERNEL_CONV)
    return invalid(c, "conv_bwd", "not a convolution kernel");
  ENTER(c);
  return failed(c, td_cuda_conv_bwd(c->dnn, c->stream, kernel, x, w, dy, dx, dw, &c->last));
}
#endif

static int cuda_pool_create(td_backend *be, const td_window *g, td_pool_kind kind, void **kernel) {
  cuda_ctx *c = be->ctx;
  *kernel = NULL;
  int rc = window_check(c, "pool_create", g, 1);
  if (rc)
    return rc;
  ENTER(c);
  return failed(c, td_cuda_pool_create(g, kind, kernel, &c->last));
}

static int cuda_pool_fwd(td_backend *be, void *kernel, const float *x, float *y) {
  cuda_ctx *c = be->ctx;
  if (!kernel || td_cuda_kernel_kind(kernel) != TD_CUDA_KERNEL_POOL)
    return invalid(c, "pool_fwd", "not a pooling kernel");
  ENTER(c);
  return failed(c, td_cuda_pool_fwd(c->stream, kernel, x, y, &c->last));
}

static int cuda_pool_bwd(td_backend *be, void *kernel, const float *dy, float *dx) {
  cuda_ctx *c = be->ctx;
  if (!kernel || td_cuda_kernel_kind(kernel) != TD_CUDA_KERNEL_POOL)
    return invalid(c, "pool_bwd", "not a pooling kernel");
  ENTER(c);
  return failed(c, td_cuda_pool_bwd(c->stream, kernel, dy, dx, &c->last));
}

/* Waits for the stream first: queued work or a replaying graph may still
 * use the kernel's buffers. */
static void cuda_kernel_free(td_backend *be, void *kernel) {
  cuda_ctx *c = be->ctx;
  if (!kernel)
    return;
  if (!enter(c))
    cudaStreamSynchronize(c->stream);
  switch (td_cuda_kernel_kind(kernel)) {
#ifdef TRAIND_HAVE_CUDNN
  case TD_CUDA_KERNEL_CONV:
    td_cuda_conv_free(kernel);
    break;
#endif
  case TD_CUDA_KERNEL_POOL:
    td_cuda_pool_free(kernel);
    break;
  default:
    td_log_error("CUDA backend: kernel_free of an unknown kernel", "gpu=%d", c->device);
  }
}

/* --------------------------------------------------------- normalization */

static int norm_args(cuda_ctx *c, const char *op, int rows, int cols) {
  if (rows < 0 || cols < 0)
    return invalid(c, op, "negative dimension");
  ENTER(c);
  return TD_OK;
}

/* The scratch of a column pass (sized by the warm-up step). */
static int colsum_scratch(cuda_ctx *c, int rows, int cols, void **s) {
  return scratch(c, td_cuda_colsum_scratch(rows, cols), s);
}

static int cuda_col_moments(td_backend *be, int rows, int cols, const float *x, float *m) {
  cuda_ctx *c = be->ctx;
  void *s = NULL;
  int rc = norm_args(c, "col_moments", rows, cols);
  if (!rc)
    rc = colsum_scratch(c, rows, cols, &s);
  if (rc)
    return rc;
  return failed(c, td_cuda_col_moments(c->stream, rows, cols, x, m, s, &c->last));
}

static int cuda_bn_fwd(td_backend *be, int train, int rows, int cols, const float *x,
                       const float *m, float *running, float momentum, float eps,
                       const float *scale, const float *bias, float *y, float *saved) {
  cuda_ctx *c = be->ctx;
  int rc = norm_args(c, "bn_fwd", rows, cols);
  if (rc)
    return rc;
  if (!train && !running)
    return invalid(c, "bn_fwd", "evaluation needs the running statistics");
  return failed(c, td_cuda_bn_fwd(c->stream, train, rows, cols, x, m, running, momentum, eps, scale,
                                  bias, y, saved, &c->last));
}

static int cuda_bn_bwd_sums(td_backend *be, int rows, int cols, const float *x, const float *dy,
                            const float *saved, float *dscale, float *dbias, float *sums) {
  cuda_ctx *c = be->ctx;
  void *s = NULL;
  int rc = norm_args(c, "bn_bwd_sums", rows, cols);
  if (!rc)
    rc = colsum_scratch(c, rows, cols, &s);
  if (rc)
    return rc;
  return failed(c, td_cuda_bn_bwd_sums(c->stream, rows, cols, x, dy, saved, dscale, dbias, sums, s,
                                       &c->last));
}

static int cuda_bn_bwd_dx(td_backend *be, int rows, int cols, const float *x, const float *dy,
                          const float *saved, const float *scale, const float *sums, float *dx) {
  cuda_ctx *c = be->ctx;
  int rc = norm_args(c, "bn_bwd_dx", rows, cols);
  if (rc)
    return rc;
  return failed(c,
                td_cuda_bn_bwd_dx(c->stream, rows, cols, x, dy, saved, scale, sums, dx, &c->last));
}

static int cuda_ln_fwd(td_backend *be, int rows, int cols, float eps, const float *x,
                       const float *scale, const float *bias, float *y, float *saved) {
  cuda_ctx *c = be->ctx;
  int rc = norm_args(c, "ln_fwd", rows, cols);
  if (rc)
    return rc;
  return failed(c, td_cuda_ln_fwd(c->stream, rows, cols, eps, x, scale, bias, y, saved, &c->last));
}

static int cuda_ln_bwd(td_backend *be, int rows, int cols, const float *x, const float *dy,
                       const float *saved, const float *scale, float *dx, float *dscale,
                       float *dbias) {
  cuda_ctx *c = be->ctx;
  void *s = NULL;
  int rc = norm_args(c, "ln_bwd", rows, cols);
  if (rc)
    return rc;
  if (dx && dx == dy)
    return invalid(c, "ln_bwd", "dx must not be dy");
  if ((dscale || dbias) && (rc = colsum_scratch(c, rows, cols, &s)))
    return rc;
  return failed(c, td_cuda_ln_bwd(c->stream, rows, cols, x, dy, saved, scale, dx, dscale, dbias, s,
                                  &c->last));
}

/* --------------------------------------------------------- sequence ops */

static int embed_args(cuda_ctx *c, const char *op, int rows, int cols, int vocab) {
  if (rows < 0 || cols < 0 || vocab < 0)
    return invalid(c, op, "negative dimension");
  ENTER(c);
  return TD_OK;
}

static int cuda_embed_fwd(td_backend *be, int rows, int cols, int vocab, const float *ids,
                          const float *table, float *y) {
  cuda_ctx *c = be->ctx;
  int rc = embed_args(c, "embed_fwd", rows, cols, vocab);
  if (rc)
    return rc;
  return failed(c, td_cuda_embed_fwd(c->stream, rows, cols, vocab, ids, table, y, &c->last));
}

/* The sort's buffers are the scratch (sized by the warm-up step). */
static int cuda_embed_bwd(td_backend *be, int rows, int cols, int vocab, const float *ids,
                          const float *dy, float *dtable) {
  cuda_ctx *c = be->ctx;
  void *s = NULL;
  int rc = embed_args(c, "embed_bwd", rows, cols, vocab);
  if (!rc && rows > 0 && vocab > 0 && cols > 0)
    rc = scratch(c, td_cuda_embed_bwd_scratch(rows, vocab), &s);
  if (rc)
    return rc;
  return failed(c, td_cuda_embed_bwd(c->stream, rows, cols, vocab, ids, dy, dtable, s,
                                     c->scratch_bytes, &c->last));
}

/* Shapes the attention kernels take: qkv's leading dimension 3 h d must
 * fit cuBLAS's int. */
static int attn_args(cuda_ctx *c, const char *op, int batch, int t, int h, int d) {
  if (batch < 0 || t < 0)
    return invalid(c, op, "negative dimension");
  if (h < 1 || d < 1)
    return invalid(c, op, "heads and head size must be positive");
  if ((long long)h * d > INT_MAX / 3)
    return invalid(c, op, "3 * heads * head size exceeds a cuBLAS leading dimension");
  ENTER(c);
  return TD_OK;
}

static int cuda_attn_probs(td_backend *be, int batch, int t, int h, int d, const float *qkv,
                           float *p) {
  cuda_ctx *c = be->ctx;
  int rc = attn_args(c, "attn_probs", batch, t, h, d);
  if (rc)
    return rc;
  return failed(c, td_cuda_attn_probs(c->blas, c->stream, batch, t, h, d, qkv, p, &c->last));
}

static int cuda_attn_mix(td_backend *be, int batch, int t, int h, int d, const float *p,
                         const float *qkv, float *o) {
  cuda_ctx *c = be->ctx;
  int rc = attn_args(c, "attn_mix", batch, t, h, d);
  if (rc)
    return rc;
  return failed(c, td_cuda_attn_mix(c->blas, c->stream, batch, t, h, d, p, qkv, o, &c->last));
}

static int cuda_attn_mix_bwd(td_backend *be, int batch, int t, int h, int d, const float *p,
                             const float *qkv, const float *dout, float *dp, float *dqkv) {
  cuda_ctx *c = be->ctx;
  int rc = attn_args(c, "attn_mix_bwd", batch, t, h, d);
  if (rc)
    return rc;
  return failed(c, td_cuda_attn_mix_bwd(c->blas, c->stream, batch, t, h, d, p, qkv, dout, dp, dqkv,
                                        &c->last));
}

static int cuda_attn_probs_bwd(td_backend *be, int batch, int t, int h, int d, const float *p,
                               float *dp, const float *qkv, float *dqkv) {
  cuda_ctx *c = be->ctx;
  int rc = attn_args(c, "attn_probs_bwd", batch, t, h, d);
  if (rc)
    return rc;
  return failed(
      c, td_cuda_attn_probs_bwd(c->blas, c->stream, batch, t, h, d, p, dp, qkv, dqkv, &c->last));
}

/* ---------------------------------------------------------------- graphs */

/* The ops body issues are captured from the stream into a graph (nothing
 * runs), which is instantiated once and launched on the stream per replay.
 * Capture is thread-local: other threads (the other replicas of a job, on
 * their own GPUs) may call the CUDA API meanwhile. Ops that wait for the
 * stream (alloc, upload, download, a growing scratch) are illegal inside,
 * and the step issues none once a warm-up step has sized the scratch. */
static int cuda_graph_record(td_backend *be, int (*body)(void *arg), void *arg, void **out) {
  cuda_ctx *c = be->ctx;
  *out = NULL;
  ENTER(c);
  cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess)
    return cuda_fail(c, "cudaStreamBeginCapture", e);
  int rc = body(arg);
  cudaGraph_t g = NULL;
  e = cudaStreamEndCapture(c->stream, &g);
  if (rc) {
    if (g)
      cudaGraphDestroy(g);
    cudaGetLastError();
    return rc;
  }
  if (e != cudaSuccess)
    return cuda_fail(c, "cudaStreamEndCapture", e);
  cudaGraphExec_t exec = NULL;
  e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  if (e != cudaSuccess)
    return cuda_fail(c, "cudaGraphInstantiate", e);
  /* Uploading the graph now keeps the first replay's setup out of a step. */
  if ((e = cudaGraphUpload(exec, c->stream)) != cudaSuccess) {
    cudaGraphExecDestroy(exec);
    return cuda_fail(c, "cudaGraphUpload", e);
  }
  *out = exec;
  return TD_OK;
}

static int cuda_graph_replay(td_backend *be, void *graph) {
  cuda_ctx *c = be->ctx;
  ENTER(c);
  cudaError_t e = cudaGraphLaunch((cudaGraphExec_t)graph, c->stream);
  return e == cudaSuccess ? TD_OK : cuda_fail(c, "cudaGraphLaunch", e);
}

static void cuda_graph_free(td_backend *be, void *graph) {
  cuda_ctx *c = be->ctx;
  if (!graph || enter(c))
    return;
  /* A replay still running uses it. */
  cudaStreamSynchronize(c->stream);
  cudaGraphExecDestroy((cudaGraphExec_t)graph);
}

/* ------------------------------------------------------------ lifecycle */

static void free_ctx(cuda_ctx *c) {
  if (!c)
    return;
  int prev = -1;
  int have_prev = cudaGetDevice(&prev) == cudaSuccess;
  if (cudaSetDevice(c->device) == cudaSuccess) {
    if (c->stream)
      cudaStreamSynchronize(c->stream);
    if (c->blas)
      cublasDestroy(c->blas);
#ifdef TRAIND_HAVE_CUDNN
    if (c->dnn)
      cudnnDestroy(c->dnn);
#endif
    cudaFree(c->blas_workspace);
    cudaFree(c->scratch);
    if (c->stream)
      cudaStreamDestroy(c->stream);
    if (have_prev && prev != c->device)
      cudaSetDevice(prev);
  }
  free(c);
}

static void cuda_destroy(td_backend *be) {
  free_ctx(be->ctx);
  free(be);
}

static const td_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .release = cuda_release,
    .upload = cuda_upload,
    .download = cuda_download,
    .fill = cuda_fill,
    .copy = cuda_copy,
    .gather = cuda_gather,
    .gemm = cuda_gemm,
    .bias_act_fwd = cuda_bias_act_fwd,
    .bias_act_bwd = cuda_bias_act_bwd,
    .softmax_xent = cuda_softmax_xent,
    .mse_onehot = cuda_mse_onehot,
    .dropout_fwd = cuda_dropout_fwd,
    .mul = cuda_mul,
    .add = cuda_add,
    .copy2d = cuda_copy2d,
#ifdef TRAIND_HAVE_CUDNN
    .conv_create = cuda_conv_create,
    .conv_fwd = cuda_conv_fwd,
    .conv_bwd = cuda_conv_bwd,
#endif
    .pool_create = cuda_pool_create,
    .pool_fwd = cuda_pool_fwd,
    .pool_bwd = cuda_pool_bwd,
    .kernel_free = cuda_kernel_free,
    .col_moments = cuda_col_moments,
    .bn_fwd = cuda_bn_fwd,
    .bn_bwd_sums = cuda_bn_bwd_sums,
    .bn_bwd_dx = cuda_bn_bwd_dx,
    .ln_fwd = cuda_ln_fwd,
    .ln_bwd = cuda_ln_bwd,
    .embed_fwd = cuda_embed_fwd,
    .embed_bwd = cuda_embed_bwd,
    .attn_probs = cuda_attn_probs,
    .attn_mix = cuda_attn_mix,
    .attn_mix_bwd = cuda_attn_mix_bwd,
    .attn_probs_bwd = cuda_attn_probs_bwd,
    .sumsq = cuda_sumsq,
    .opt_pass = cuda_opt_pass,
    .step_begin = cuda_step_begin,
    .record = cuda_record,
    .shuffle = cuda_shuffle,
    .graph_record = cuda_graph_record,
    .graph_replay = cuda_graph_replay,
    .graph_free = cuda_graph_free,
    .last_error = td_cuda_backend_last_error,
};

/* The GPU count, or TD_EUNSUPPORTED with the reason in err. */
static int usable_gpus(int *count, td_error *err) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) {
    *count = 0;
    cudaGetLastError(); /* not sticky: leave no trace for later launches */
    return td_errorf(err, TD_EUNSUPPORTED, "no usable GPU: cudaGetDeviceCount: %s",
                     cudaGetErrorString(e));
  }
  if (*count == 0)
    return td_errorf(err, TD_EUNSUPPORTED, "no usable GPU: cudaGetDeviceCount reports none");
  return TD_OK;
}

int td_cuda_device_count(int *count, char *why, size_t why_len) {
  td_error err = {0};
  usable_gpus(count, &err);
  if (why && why_len)
    snprintf(why, why_len, "%s", *count ? "" : err.msg);
  return TD_OK;
}

static int setup_fail(td_error *err, int device, const char *call, const char *msg) {
  return td_errorf(err, TD_EBACKEND, "GPU %d: %s: %s", device, call, msg);
}

int td_cuda_backend_create(td_backend **out, int device, td_error *err) {
  *out = NULL;
  int count = 0;
  int rc = usable_gpus(&count, err);
  if (rc)
    return rc;
  if (device < 0 || device >= count)
    return td_errorf(err, TD_EINVAL, "GPU %d does not exist (this machine has %d)", device, count);
  td_backend *be = calloc(1, sizeof *be);
  cuda_ctx *c = calloc(1, sizeof *c);
  if (!be || !c) {
    free(be);
    free(c);
    return td_errorf(err, TD_ENOMEM, "cuda backend: out of memory");
  }
  c->device = device;
  cudaError_t e;
  cublasStatus_t s;
  const char *call = NULL;
  if ((e = cudaSetDevice(device)) != cudaSuccess)
    call = "cudaSetDevice";
  else if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess)
    call = "cudaStreamCreateWithFlags";
  else if ((e = cudaMalloc(&c->blas_workspace, BLAS_WORKSPACE_BYTES)) != cudaSuccess)
    call = "cudaMalloc (cuBLAS workspace)";
  else if ((e = cudaMalloc(&c->scratch, SCRATCH_MIN_BYTES)) != cudaSuccess)
    call = "cudaMalloc (scratch)";
  if (call) {
    c->scratch = NULL;
    rc = setup_fail(err, device, call, cudaGetErrorString(e));
    cudaGetLastError();
  } else {
    c->scratch_bytes = SCRATCH_MIN_BYTES;
    /* Plain FP32 math: CUBLAS_DEFAULT_MATH never uses TF32 tensor cores
     * (only CUBLAS_TF32_TENSOR_OP_MATH does), so gemm agrees with the CPU
     * reference to float32 rounding. */
    if ((s = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS)
      call = "cublasCreate";
    else if ((s = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS)
      call = "cublasSetStream";
    else if ((s = cublasSetWorkspace(c->blas, c->blas_workspace, BLAS_WORKSPACE_BYTES)) !=
             CUBLAS_STATUS_SUCCESS)
      call = "cublasSetWorkspace";
    else if ((s = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS)
      call = "cublasSetMathMode";
    if (call)
      rc = setup_fail(err, device, call, cublasGetStatusString(s));
  }
  if (rc) {
    free_ctx(c);
    free(be);
    return rc;
  }
  be->ops = &cuda_ops;
  be->ctx = c;
  be->threads = 1;
  be->host_memory = 0;
  *out = be;
  return TD_OK;
}

void *td_cuda_backend_stream(td_backend *be) { return ((cuda_ctx *)be->ctx)->stream; }

int td_cuda_backend_device(td_backend *be) { return ((cuda_ctx *)be->ctx)->device; }

const char *td_cuda_backend_last_error(td_backend *be) { return ((cuda_ctx *)be->ctx)->last.msg; }

int td_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes, td_error *err) {
  *free_bytes = *total_bytes = 0;
  int count = 0;
  int rc = usable_gpus(&count, err);
  if (rc)
    return rc;
  if (device < 0 || device >= count)
    return td_errorf(err, TD_EINVAL, "GPU %d does not exist (this machine has %d)", device, count);
  int prev = -1;
  int have_prev = cudaGetDevice(&prev) == cudaSuccess;
  cudaError_t e = cudaSetDevice(device);
  const char *call = "cudaSetDevice";
  if (e == cudaSuccess) {
    e = cudaMemGetInfo(free_bytes, total_bytes);
    call = "cudaMemGetInfo";
  }
  if (have_prev && prev != device)
    cudaSetDevice(prev);
  if (e != cudaSuccess) {
    *free_bytes = *total_bytes = 0;
    return td_errorf(err, TD_EBACKEND, "GPU %d: %s: %s", device, call, cudaGetErrorString(e));
  }
  return TD_OK;
}
