/* Max and average pooling over NHWC images (cuda_internal.h).
 *
 * Forward: one thread per output value walks its window's taps in order
 * (rows, then columns), skipping those in the padding. Max pooling keeps
 * the first largest value, as the CPU backend's oneDNN does, and stores
 * the tap where it was (0 .. kh * kw - 1) in the kernel's own buffer; the
 * backward pass reads it, so a max pooling's backward pairs with its last
 * forward (backend.h). Average pooling divides the window's sum by the
 * window's size, or (TD_POOL_AVG_VALID) by the number of its taps inside
 * the input.
 *
 * Backward: one thread per input value adds, in a fixed order (output rows,
 * then columns), the gradients of the windows that cover it: dy where the
 * window's maximum was this value, or dy / the window's count. The result
 * is written, not added (the engine adds where a value has several
 * consumers). No atomics: the same bits on every run. Rows of the batch
 * past those an evaluation reads are computed and ignored. */
#include <stdlib.h>

#include "common.cuh"

namespace td_cuda {

struct pool_kernel {
  int kind; /* TD_CUDA_KERNEL_POOL */
  td_window g;
  td_pool_kind pool;
  int32_t *tap; /* max pooling: (n, oh, ow, c), where each window's maximum was */
};

/* The window of output (oy, ox) starts at input (oy * sh - pt, ox * sw -
 * pl); its taps inside the input number rows x cols. */
__device__ __forceinline__ int inside(int start, int k, int size) {
  int lo = start < 0 ? 0 : start, hi = start + k < size ? start + k : size;
  return hi > lo ? hi - lo : 0;
}

template <td_pool_kind KIND>
__global__ void pool_fwd_kernel(td_window g, const float *__restrict__ x, float *__restrict__ y,
                                int32_t *__restrict__ tap) {
  const size_t total = (size_t)g.n * g.oh * g.ow * g.c;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    const int ch = (int)(i % (size_t)g.c);
    size_t t = i / (size_t)g.c;
    const int ox = (int)(t % (size_t)g.ow);
    t /= (size_t)g.ow;
    const int oy = (int)(t % (size_t)g.oh);
    const size_t b = t / (size_t)g.oh;
    const int y0 = oy * g.sh - g.pt, x0 = ox * g.sw - g.pl;
    const float *xb = x + b * (size_t)g.h * g.w * g.c + ch;
    if (KIND == TD_POOL_MAX) {
      float best = 0.0f;
      int at = -1;
      for (int ki = 0; ki < g.kh; ki++) {
        const int iy = y0 + ki;
        if (iy < 0 || iy >= g.h)
          continue;
        for (int kj = 0; kj < g.kw; kj++) {
          const int ix = x0 + kj;
          if (ix < 0 || ix >= g.w)
            continue;
          const float v = xb[((size_t)iy * g.w + ix) * g.c];
          if (at < 0 || v > best) {
            best = v;
            at = ki * g.kw + kj;
          }
        }
      }
      y[i] = best;
      tap[i] = at;
    } else {
      float s = 0.0f;
      for (int ki = 0; ki < g.kh; ki++) {
        const int iy = y0 + ki;
        if (iy < 0 || iy >= g.h)
          continue;
        for (int kj = 0; kj < g.kw; kj++) {
          const int ix = x0 + kj;
          if (ix >= 0 && ix < g.w)
            s += xb[((size_t)iy * g.w + ix) * g.c];
        }
      }
      const int count =
          KIND == TD_POOL_AVG ? g.kh * g.kw : inside(y0, g.kh, g.h) * inside(x0, g.kw, g.w);
      y[i] = s / (float)count;
    }
  }
}

/* The first output index along one dimension whose window reaches input
 * position p + pad (windows start at o * s), and the last that starts at
 * or before it, clipped to 0 .. out - 1. */
__device__ __forceinline__ int first_out(int pp, int k, int s) {
  const int num = pp - k + 1;
  return num <= 0 ? 0 : (num + s - 1) / s;
}

template <td_pool_kind KIND>
__global__ void pool_bwd_kernel(td_window g, const float *__restrict__ dy, float *__restrict__ dx,
                                const int32_t *__restrict__ tap) {
  const size_t total = (size_t)g.n * g.h * g.w * g.c;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    const int ch = (int)(i % (size_t)g.c);
    size_t t = i / (size_t)g.c;
    const int ix = (int)(t % (size_t)g.w);
    t /= (size_t)g.w;
    const int iy = (int)(t % (size_t)g.h);
    const size_t b = t / (size_t)g.h;
    const int py = iy + g.pt, px = ix + g.pl; /* in the padded input */
    const int oy0 = first_out(py, g.kh, g.sh), ox0 = first_out(px, g.kw, g.sw);
    int oy1 = py / g.sh, ox1 = px / g.sw;
    if (oy1 > g.oh - 1)
      oy1 = g.oh - 1;
    if (ox1 > g.ow - 1)
      ox1 = g.ow - 1;
    float acc = 0.0f;
    for (int oy = oy0; oy <= oy1; oy++)
      for (int ox = ox0; ox <= ox1; ox++) {
        const size_t o = ((b * g.oh + oy) * g.ow + ox) * g.c + ch;
        if (KIND == TD_POOL_MAX) {
          if (tap[o] == (py - oy * g.sh) * g.kw + (px - ox * g.sw))
            acc += dy[o];
        } else {
          const int count = KIND == TD_POOL_AVG ? g.kh * g.kw
                                                : inside(oy * g.sh - g.pt, g.kh, g.h) *
                                                      inside(ox * g.sw - g.pl, g.kw, g.w);
          acc += dy[o] / (float)count;
        }
      }
    dx[i] = acc;
  }
}

template <td_pool_kind KIND>
static int fwd(cudaStream_t stream, const pool_kernel *k, const float *x, float *y, td_error *err) {
  const size_t total = (size_t)k->g.n * k->g.oh * k->g.ow * k->g.c;
  pool_fwd_kernel<KIND><<<grid_for(total, kBlock), kBlock, 0, stream>>>(k->g, x, y, k->tap);
  return launch_check("pool_fwd_kernel", err);
}

template <td_pool_kind KIND>
static int bwd(cudaStream_t stream, const pool_kernel *k, const float *dy, float *dx,
               td_error *err) {
  const size_t total = (size_t)k->g.n * k->g.h * k->g.w * k->g.c;
  pool_bwd_kernel<KIND><<<grid_for(total, kBlock), kBlock, 0, stream>>>(k->g, dy, dx, k->tap);
  return launch_check("pool_bwd_kernel", err);
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" int td_cuda_pool_create(const td_window *g, td_pool_kind kind, void **kernel,
                                   td_error *err) {
  *kernel = NULL;
  if (kind != TD_POOL_MAX && kind != TD_POOL_AVG && kind != TD_POOL_AVG_VALID)
    return td_errorf(err, TD_EINVAL, "pool_create: unknown pooling kind %d", (int)kind);
  if (g->dh != 1 || g->dw != 1)
    return td_errorf(err, TD_EUNSUPPORTED,
                     "pool_create: dilated pooling windows (%d, %d) are not supported", g->dh,
                     g->dw);
  pool_kernel *k = static_cast<pool_kernel *>(calloc(1, sizeof *k));
  if (!k)
    return td_errorf(err, TD_ENOMEM, "pool_create: out of memory");
  k->kind = TD_CUDA_KERNEL_POOL;
  k->g = *g;
  k->pool = kind;
  if (kind == TD_POOL_MAX) {
    const size_t bytes = (size_t)g->n * g->oh * g->ow * g->c * sizeof(int32_t);
    cudaError_t e = cudaMalloc(&k->tap, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      free(k);
      return td_errorf(err, e == cudaErrorMemoryAllocation ? TD_ENOMEM : TD_EBACKEND,
                       "cudaMalloc (max pooling's %zu bytes of maxima): %s", bytes,
                       cudaGetErrorString(e));
    }
  }
  *kernel = k;
  return TD_OK;
}

extern "C" int td_cuda_pool_fwd(cudaStream_t stream, void *kernel, const float *x, float *y,
                                td_error *err) {
  const pool_kernel *k = static_cast<const pool_kernel *>(kernel);
  switch (k->pool) {
  case TD_POOL_MAX:
    return fwd<TD_POOL_MAX>(stream, k, x, y, err);
  case TD_POOL_AVG:
    return fwd<TD_POOL_AVG>(stream, k, x, y, err);
  case TD_POOL_AVG_VALID:
    return fwd<TD_POOL_AVG_VALID>(stream, k, x, y, err);
  }
  return td_errorf(err, TD_EINVAL, "pool_fwd: unknown pooling kind %d", (int)k->pool);
}

extern "C" int td_cuda_pool_bwd(cudaStream_t stream, void *kernel, const float *dy, float *dx,
                                td_error *err) {
  const pool_kernel *k = static_cast<const pool_kernel *>(kernel);
  switch (k->pool) {
  case TD_POOL_MAX:
    return bwd<TD_POOL_MAX>(stream, k, dy, dx, err);
  case TD_POOL_AVG:
    return bwd<TD_POOL_AVG>(stream, k, dy, dx, err);
  case TD_POOL_AVG_VALID:
    return bwd<TD_POOL_AVG_VALID>(stream, k, dy, dx, err);
  }
  return td_errorf(err, TD_EINVAL, "pool_bwd: unknown pooling kind %d", (int)k->pool);
}

extern "C" void td_cuda_pool_free(void *kernel) {
  pool_kernel *k = static_cast<pool_kernel *>(kernel);
  cudaFree(k->tap);
  free(k);
}
