/* Convolutions on cuDNN (cuda_internal.h), built when cuDNN is found.
 *
 * A kernel holds cuDNN's descriptors for its geometry, made once: NHWC
 * activations (x (n, h, w, c), y (n, oh, ow, oc)), the filter in cuDNN's
 * NHWC filter layout KRSC (oc, kh, kw, c), and a cross-correlation (as
 * Flax's and lax's conv) with FP32 math restricted to FMA kernels
 * (CUDNN_FMA_MATH: never TF32 tensor cores, which would round inputs to 10
 * bits of mantissa). The algorithms are chosen once, from cuDNN's
 * heuristics (the _v7 queries, fastest first), as the first that is
 * deterministic and needs at most kMaxWorkspace bytes of workspace;
 * the backward algorithms that add with atomics (backward data 0,
 * backward filter 0 and 3) are never taken, whatever cuDNN reports.
 *
 * cuDNN pads symmetrically only. A geometry with pt != pb or pl != pr
 * (SAME with an even window, or with a stride that does not divide the
 * input; explicit padding) runs on a zero-padded copy of the input in the
 * kernel's own buffer with no padding in cuDNN, and the input gradient is
 * computed into that buffer and cropped back. Refusing such geometries
 * would refuse ResNet's downsampling convolutions (3x3 stride 2 SAME on an
 * even input pads 0 on top and 1 below); the copy costs one extra pass
 * over the input.
 *
 * Every buffer (the workspace, the KRSC kernel and its gradient, the
 * padded input) is allocated when the kernel is made, so that forward and
 * backward only enqueue work on the backend's stream (cudnnSetStream on
 * its handle) and are recorded into graphs like any kernel. */
#include <cudnn.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.cuh"

namespace td_cuda {

/* The most workspace one algorithm may take; faster ones that need more
 * are passed over. */
constexpr size_t kMaxWorkspace = (size_t)256 << 20;

struct conv_kernel {
  int kind; /* TD_CUDA_KERNEL_CONV */
  td_window g;
  int padded; /* asymmetric padding: cuDNN sees the padded copy, unpadded */
  int hp, wp; /* the padded input's height and width (h, w when not padded) */
  cudnnTensorDescriptor_t x, y;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t conv;
  cudnnConvolutionFwdAlgo_t fwd_algo;
  cudnnConvolutionBwdDataAlgo_t data_algo;
  cudnnConvolutionBwdFilterAlgo_t filter_algo;
  void *workspace;
  size_t workspace_bytes;
  float *w_krsc;  /* (oc, kh, kw, c): the kernel in cuDNN's layout */
  float *dw_krsc; /* its gradient, before the transpose back to HWIO */
  float *pad;     /* padded: (n, hp, wp, c), the input, then its gradient */
};

/* dst (cols, rows) = src (rows, cols) transposed: HWIO (kh*kw*c, oc) to
 * KRSC (oc, kh*kw*c) and back. */
__global__ void transpose_kernel(int rows, int cols, const float *__restrict__ src,
                                 float *__restrict__ dst) {
  const size_t total = (size_t)rows * cols;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / (size_t)cols, c = i % (size_t)cols;
    dst[c * (size_t)rows + r] = src[i];
  }
}

/* xp (n, hp, wp, c) = x with pt rows above, pl columns left of zeros
 * (and the rest below and right). */
__global__ void pad_kernel(td_window g, int hp, int wp, const float *__restrict__ x,
                           float *__restrict__ xp) {
  const size_t total = (size_t)g.n * hp * wp * g.c;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    const int ch = (int)(i % (size_t)g.c);
    size_t t = i / (size_t)g.c;
    const int j = (int)(t % (size_t)wp) - g.pl;
    t /= (size_t)wp;
    const int r = (int)(t % (size_t)hp) - g.pt;
    const size_t b = t / (size_t)hp;
    xp[i] = r >= 0 && r < g.h && j >= 0 && j < g.w ? x[((b * g.h + r) * g.w + j) * g.c + ch] : 0.0f;
  }
}

/* dx (n, h, w, c) = the interior of dxp (n, hp, wp, c). */
__global__ void crop_kernel(td_window g, int hp, int wp, const float *__restrict__ dxp,
                            float *__restrict__ dx) {
  const size_t total = (size_t)g.n * g.h * g.w * g.c;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    const int ch = (int)(i % (size_t)g.c);
    size_t t = i / (size_t)g.c;
    const int j = (int)(t % (size_t)g.w);
    t /= (size_t)g.w;
    const int r = (int)(t % (size_t)g.h);
    const size_t b = t / (size_t)g.h;
    dx[i] = dxp[((b * hp + r + g.pt) * wp + j + g.pl) * g.c + ch];
  }
}

static int dnn_fail(td_error *err, const char *call, cudnnStatus_t s) {
  return td_errorf(err, s == CUDNN_STATUS_ALLOC_FAILED ? TD_ENOMEM : TD_EBACKEND, "%s: %s", call,
                   cudnnGetErrorString(s));
}

#define DNN(call)                                     \
  do {                                                \
    cudnnStatus_t s_ = (call);                        \
    if (s_ != CUDNN_STATUS_SUCCESS)                   \
      return dnn_fail(err, dnn_call_name(#call), s_); \
  } while (0)

/* "cudnnConvolutionForward" from "cudnnConvolutionForward(dnn, ...)". */
static const char *dnn_call_name(const char *expr) {
  static thread_local char buf[64];
  int n = 0;
  while (expr[n] && expr[n] != '(' && n < (int)sizeof buf - 1)
    n++;
  snprintf(buf, sizeof buf, "%.*s", n, expr);
  return buf;
}

static int cuda_malloc(void **p, size_t bytes, const char *what, td_error *err) {
  cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
  if (e == cudaSuccess)
    return TD_OK;
  *p = NULL;
  cudaGetLastError();
  return td_errorf(err, e == cudaErrorMemoryAllocation ? TD_ENOMEM : TD_EBACKEND,
                   "cudaMalloc (%s, %zu bytes): %s", what, bytes, cudaGetErrorString(e));
}

/* The first result (cuDNN lists the fastest first) that is supported,
 * deterministic, fits the workspace limit and is not banned; -1 when none.
 * Whatever math type a result names, the descriptor's CUDNN_FMA_MATH is
 * what runs. */
template <typename Perf>
static int pick(const Perf *perf, int count, const int *banned, int n_banned) {
  for (int i = 0; i < count; i++) {
    const Perf &p = perf[i];
    if (p.status != CUDNN_STATUS_SUCCESS || p.determinism != CUDNN_DETERMINISTIC ||
        p.memory > kMaxWorkspace)
      continue;
    int ok = 1;
    for (int b = 0; b < n_banned; b++)
      ok &= (int)p.algo != banned[b];
    if (ok)
      return i;
  }
  return -1;
}

static const char *geometry(const td_window *g, char *buf, size_t len) {
  snprintf(buf, len,
           "x (%d, %d, %d, %d), kernel %dx%d to %d features, strides (%d, %d), dilation (%d, "
           "%d), padding (%d, %d, %d, %d)",
           g->n, g->h, g->w, g->c, g->kh, g->kw, g->oc, g->sh, g->sw, g->dh, g->dw, g->pt, g->pb,
           g->pl, g->pr);
  return buf;
}

static int no_algo(td_error *err, const char *what, const td_window *g) {
  char geo[256];
  return td_errorf(err, TD_EUNSUPPORTED,
                   "cuDNN offers no deterministic FP32 %s algorithm within %zu MiB of workspace "
                   "for this convolution (%s)",
                   what, kMaxWorkspace >> 20, geometry(g, geo, sizeof geo));
}

static int build(cudnnHandle_t dnn, conv_kernel *k, td_error *err) {
  const td_window *g = &k->g;
  k->padded = g->pt != g->pb || g->pl != g->pr;
  k->hp = k->padded ? g->h + g->pt + g->pb : g->h;
  k->wp = k->padded ? g->w + g->pl + g->pr : g->w;
  DNN(cudnnCreateTensorDescriptor(&k->x));
  DNN(cudnnCreateTensorDescriptor(&k->y));
  DNN(cudnnCreateFilterDescriptor(&k->w));
  DNN(cudnnCreateConvolutionDescriptor(&k->conv));
  /* Dimensions in cuDNN's NCHW order; the format gives the NHWC strides. */
  DNN(cudnnSetTensor4dDescriptor(k->x, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, g->n, g->c, k->hp,
                                 k->wp));
  DNN(cudnnSetTensor4dDescriptor(k->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, g->n, g->oc, g->oh,
                                 g->ow));
  DNN(cudnnSetFilter4dDescriptor(k->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, g->oc, g->c, g->kh,
                                 g->kw));
  DNN(cudnnSetConvolution2dDescriptor(k->conv, k->padded ? 0 : g->pt, k->padded ? 0 : g->pl, g->sh,
                                      g->sw, g->dh, g->dw, CUDNN_CROSS_CORRELATION,
                                      CUDNN_DATA_FLOAT));
  DNN(cudnnSetConvolutionMathType(k->conv, CUDNN_FMA_MATH));
  int on, oc, oh, ow;
  DNN(cudnnGetConvolution2dForwardOutputDim(k->conv, k->x, k->w, &on, &oc, &oh, &ow));
  char geo[256];
  if (on != g->n || oc != g->oc || oh != g->oh || ow != g->ow)
    return td_errorf(err, TD_EINVAL,
                     "cuDNN computes the output (%d, %d, %d, %d), the geometry says (%d, %d, %d, "
                     "%d): %s",
                     on, oh, ow, oc, g->n, g->oh, g->ow, g->oc, geometry(g, geo, sizeof geo));

  size_t need = 0, bytes = 0;
  int count = 0, at;
  cudnnConvolutionFwdAlgoPerf_t fperf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  DNN(cudnnGetConvolutionForwardAlgorithm_v7(dnn, k->x, k->w, k->conv, k->y,
                                             CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, fperf));
  if ((at = pick(fperf, count, nullptr, 0)) < 0)
    return no_algo(err, "forward", g);
  k->fwd_algo = fperf[at].algo;
  DNN(cudnnGetConvolutionForwardWorkspaceSize(dnn, k->x, k->w, k->conv, k->y, k->fwd_algo, &bytes));
  need = bytes > need ? bytes : need;

  static const int data_banned[] = {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0};
  cudnnConvolutionBwdDataAlgoPerf_t dperf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  DNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(
      dnn, k->w, k->y, k->conv, k->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, dperf));
  if ((at = pick(dperf, count, data_banned, 1)) < 0)
    return no_algo(err, "backward-data", g);
  k->data_algo = dperf[at].algo;
  DNN(cudnnGetConvolutionBackwardDataWorkspaceSize(dnn, k->w, k->y, k->conv, k->x, k->data_algo,
                                                   &bytes));
  need = bytes > need ? bytes : need;

  static const int filter_banned[] = {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                                      CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3};
  cudnnConvolutionBwdFilterAlgoPerf_t wperf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  DNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
      dnn, k->x, k->y, k->conv, k->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, wperf));
  if ((at = pick(wperf, count, filter_banned, 2)) < 0)
    return no_algo(err, "backward-filter", g);
  k->filter_algo = wperf[at].algo;
  DNN(cudnnGetConvolutionBackwardFilterWorkspaceSize(dnn, k->x, k->y, k->conv, k->w, k->filter_algo,
                                                     &bytes));
  need = bytes > need ? bytes : need;

  const size_t wbytes = (size_t)g->kh * g->kw * g->c * g->oc * sizeof(float);
  int rc = cuda_malloc(&k->workspace, need, "convolution workspace", err);
  if (!rc)
    rc = cuda_malloc((void **)&k->w_krsc, wbytes, "convolution kernel", err);
  if (!rc)
    rc = cuda_malloc((void **)&k->dw_krsc, wbytes, "convolution kernel gradient", err);
  if (!rc && k->padded)
    rc = cuda_malloc((void **)&k->pad, (size_t)g->n * k->hp * k->wp * g->c * sizeof(float),
                     "padded convolution input", err);
  k->workspace_bytes = need;
  return rc;
}

static int transpose(cudaStream_t stream, int rows, int cols, const float *src, float *dst,
                     td_error *err) {
  const size_t total = (size_t)rows * cols;
  transpose_kernel<<<grid_for(total, kBlock), kBlock, 0, stream>>>(rows, cols, src, dst);
  return launch_check("transpose_kernel", err);
}

/* The input cuDNN reads: x, or its padded copy made now. */
static int input(cudaStream_t stream, const conv_kernel *k, const float *x, const float **out,
                 td_error *err) {
  *out = x;
  if (!k->padded)
    return TD_OK;
  const size_t total = (size_t)k->g.n * k->hp * k->wp * k->g.c;
  pad_kernel<<<grid_for(total, kBlock), kBlock, 0, stream>>>(k->g, k->hp, k->wp, x, k->pad);
  *out = k->pad;
  return launch_check("pad_kernel", err);
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" void td_cuda_conv_free(void *kernel) {
  conv_kernel *k = static_cast<conv_kernel *>(kernel);
  if (!k)
    return;
  if (k->x)
    cudnnDestroyTensorDescriptor(k->x);
  if (k->y)
    cudnnDestroyTensorDescriptor(k->y);
  if (k->w)
    cudnnDestroyFilterDescriptor(k->w);
  if (k->conv)
    cudnnDestroyConvolutionDescriptor(k->conv);
  cudaFree(k->workspace);
  cudaFree(k->w_krsc);
  cudaFree(k->dw_krsc);
  cudaFree(k->pad);
  free(k);
}

extern "C" int td_cuda_conv_create(struct cudnnContext *dnn, const td_window *g, void **kernel,
                                   td_error *err) {
  *kernel = NULL;
  conv_kernel *k = static_cast<conv_kernel *>(calloc(1, sizeof *k));
  if (!k)
    return td_errorf(err, TD_ENOMEM, "conv_create: out of memory");
  k->kind = TD_CUDA_KERNEL_CONV;
  k->g = *g;
  int rc = build(dnn, k, err);
  if (rc) {
    td_cuda_conv_free(k);
    return rc;
  }
  *kernel = k;
  return TD_OK;
}

extern "C" int td_cuda_conv_fwd(struct cudnnContext *dnn, cudaStream_t stream, void *kernel,
                                const float *x, const float *w, float *y, td_error *err) {
  const conv_kernel *k = static_cast<const conv_kernel *>(kernel);
  const td_window *g = &k->g;
  const int taps = g->kh * g->kw * g->c;
  int rc = transpose(stream, taps, g->oc, w, k->w_krsc, err);
  const float *xin = x;
  if (!rc)
    rc = input(stream, k, x, &xin, err);
  if (rc)
    return rc;
  const float one = 1.0f, zero = 0.0f;
  DNN(cudnnConvolutionForward(dnn, &one, k->x, xin, k->w, k->w_krsc, k->conv, k->fwd_algo,
                              k->workspace, k->workspace_bytes, &zero, k->y, y));
  return TD_OK;
}

extern "C" int td_cuda_conv_bwd(struct cudnnContext *dnn, cudaStream_t stream, void *kernel,
                                const float *x, const float *w, const float *dy, float *dx,
                                float *dw, td_error *err) {
  const conv_kernel *k = static_cast<const conv_kernel *>(kernel);
  const td_window *g = &k->g;
  const int taps = g->kh * g->kw * g->c;
  const float one = 1.0f, zero = 0.0f;
  /* The kernel's gradient, from this call's x (padded again: backward
   * needs no forward before it). */
  const float *xin = x;
  int rc = input(stream, k, x, &xin, err);
  if (rc)
    return rc;
  DNN(cudnnConvolutionBackwardFilter(dnn, &one, k->x, xin, k->y, dy, k->conv, k->filter_algo,
                                     k->workspace, k->workspace_bytes, &zero, k->w, k->dw_krsc));
  if ((rc = transpose(stream, g->oc, taps, k->dw_krsc, dw, err)))
    return rc;
  if (!dx)
    return TD_OK;
  /* The input's gradient, from this call's w; into the padded buffer (the
   * filter gradient above has read it, in stream order) and cropped. */
  if ((rc = transpose(stream, taps, g->oc, w, k->w_krsc, err)))
    return rc;
  DNN(cudnnConvolutionBackwardData(dnn, &one, k->w, k->w_krsc, k->y, dy, k->conv, k->data_algo,
                                   k->workspace, k->workspace_bytes, &zero, k->x,
                                   k->padded ? k->pad : dx));
  if (!k->padded)
    return TD_OK;
  const size_t total = (size_t)g->n * g->h * g->w * g->c;
  crop_kernel<<<grid_for(total, kBlock), kBlock, 0, stream>>>(*g, k->hp, k->wp, k->pad, dx);
  return launch_check("crop_kernel", err);
}
