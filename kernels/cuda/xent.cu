/* The losses against integer labels: softmax cross-entropy and squared
 * error against one-hot targets, each with its gradient and the argmax
 * accuracy count.
 *
 * One warp per row: the lanes take columns lane, lane + 32, ... in order,
 * then combine by butterflies (every lane ends with the same value). Each
 * row's loss and hit go to scratch as doubles; one block then adds them in
 * a fixed order into out[0] (loss sum) and out[1] (hits). No float
 * atomics, so the result is the same bits on every run. */
#include <math.h>

#include "common.cuh"

namespace td_cuda {

constexpr int kRowWarps = 8; /* rows per block of 256 threads */
constexpr int kSumThreads = 1024;

/* The lane's first maximum over its columns, then the warp's: the largest
 * value, ties to the lowest column (the CPU's argmax, which keeps the first
 * maximum). Lanes without a column hold (-inf, INT_MAX). */
__device__ inline void warp_argmax(const float *x, int cols, int lane, float *best_v, int *best_i) {
  float v = -INFINITY;
  int bi = 0x7fffffff;
  if (lane < cols) {
    v = x[lane];
    bi = lane;
    for (int c = lane + 32; c < cols; c += 32)
      if (x[c] > v) {
        v = x[c];
        bi = c;
      }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > v || (ov == v && oi < bi)) {
      v = ov;
      bi = oi;
    }
  }
  *best_v = v;
  *best_i = bi;
}

/* Per row: loss = logsumexp(x) - x[label], hit = argmax == label; dlogits
 * (when not NULL) = softmax * grad_scale - onehot * grad_scale. A label
 * outside [0, cols) gives a NaN loss. */
__global__ void xent_rows_kernel(int rows, int cols, const float *logits,
                                 const int32_t *__restrict__ labels, float grad_scale,
                                 float *dlogits, double *__restrict__ row_loss,
                                 double *__restrict__ row_hit) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = blockIdx.x * kRowWarps + warp; r < rows; r += gridDim.x * kRowWarps) {
    const float *x = logits + (size_t)r * cols;
    float mx;
    int arg;
    warp_argmax(x, cols, lane, &mx, &arg);
    float sum = 0.0f;
    for (int c = lane; c < cols; c += 32)
      sum += expf(x[c] - mx);
    for (int o = 16; o > 0; o >>= 1)
      sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const int label = labels[r];
    const bool valid = label >= 0 && label < cols;
    const float lse = mx + logf(sum);
    const float loss = valid ? lse - x[label] : NAN;
    if (lane == 0) {
      row_loss[r] = (double)loss;
      row_hit[r] = arg == label ? 1.0 : 0.0;
    }
    if (dlogits) {
      __syncwarp(); /* every lane has read x[label] before dlogits (maybe x) changes */
      float *d = dlogits + (size_t)r * cols;
      const float inv = 1.0f / sum;
      for (int c = lane; c < cols; c += 32) {
        float g = expf(x[c] - mx) * inv * grad_scale;
        if (c == label)
          g -= grad_scale;
        d[c] = g;
      }
    }
  }
}

/* Per row: loss = sum of (y - onehot)^2 in double, hit as above; dy (when
 * not NULL) = 2 (y - onehot) grad_scale. */
__global__ void mse_rows_kernel(int rows, int cols, const float *y,
                                const int32_t *__restrict__ labels, float grad_scale, float *dy,
                                double *__restrict__ row_loss, double *__restrict__ row_hit) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = blockIdx.x * kRowWarps + warp; r < rows; r += gridDim.x * kRowWarps) {
    const float *yr = y + (size_t)r * cols;
    float best;
    int arg;
    warp_argmax(yr, cols, lane, &best, &arg);
    const int label = labels[r];
    double loss = 0.0;
    __syncwarp(); /* the argmax has read yr before dy (maybe yr) changes */
    for (int c = lane; c < cols; c += 32) {
      float e = yr[c] - (c == label ? 1.0f : 0.0f);
      loss += (double)e * e;
      if (dy)
        dy[(size_t)r * cols + c] = 2.0f * e * grad_scale;
    }
    for (int o = 16; o > 0; o >>= 1)
      loss += __shfl_xor_sync(0xffffffffu, loss, o);
    if (lane == 0) {
      row_loss[r] = loss;
      row_hit[r] = arg == label ? 1.0 : 0.0;
    }
  }
}

/* out[0] = sum of row_loss, out[1] = sum of row_hit, by one block. */
__global__ void loss_sum_kernel(int rows, const double *__restrict__ row_loss,
                                const double *__restrict__ row_hit, float *__restrict__ out) {
  __shared__ double shared[kSumThreads / 32];
  double loss = 0.0, hits = 0.0;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    loss += row_loss[r];
    hits += row_hit[r];
  }
  loss = block_sum(loss, shared);
  hits = block_sum(hits, shared);
  if (threadIdx.x == 0) {
    out[0] = (float)loss;
    out[1] = (float)hits;
  }
}

static int finish(cudaStream_t stream, int rows, double *row_loss, double *row_hit, float *out,
                  const char *kernel, td_error *err) {
  int rc = launch_check(kernel, err);
  if (rc)
    return rc;
  loss_sum_kernel<<<1, kSumThreads, 0, stream>>>(rows, row_loss, row_hit, out);
  return launch_check("loss_sum_kernel", err);
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" size_t td_cuda_loss_scratch(int rows) {
  return 2 * (size_t)(rows > 0 ? rows : 1) * sizeof(double);
}

extern "C" int td_cuda_softmax_xent(cudaStream_t stream, int rows, int cols, const float *logits,
                                    const int32_t *labels, float grad_scale, float *dlogits,
                                    float *out, void *scratch, td_error *err) {
  double *row_loss = static_cast<double *>(scratch), *row_hit = row_loss + rows;
  if (rows > 0)
    xent_rows_kernel<<<grid_for((size_t)rows, kRowWarps), kBlock, 0, stream>>>(
        rows, cols, logits, labels, grad_scale, dlogits, row_loss, row_hit);
  return finish(stream, rows, row_loss, row_hit, out, "xent_rows_kernel", err);
}

extern "C" int td_cuda_mse_onehot(cudaStream_t stream, int rows, int cols, const float *y,
                                  const int32_t *labels, float grad_scale, float *dy, float *out,
                                  void *scratch, td_error *err) {
  double *row_loss = static_cast<double *>(scratch), *row_hit = row_loss + rows;
  if (rows > 0)
    mse_rows_kernel<<<grid_for((size_t)rows, kRowWarps), kBlock, 0, stream>>>(
        rows, cols, y, labels, grad_scale, dy, row_loss, row_hit);
  return finish(stream, rows, row_loss, row_hit, out, "mse_rows_kernel", err);
}
