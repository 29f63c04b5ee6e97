/* Batch norm and layer norm over (rows, cols) row-major buffers, the CPU
 * backend's cpu_norm.c operation for operation: the same float
 * expressions (the build disables FMA contraction, so they round as they
 * do there) and sums in double. Only the order of the sums differs.
 *
 * Column sums (a batch's moments; batch norm's dscale, dbias and their
 * means; layer norm's dscale, dbias) take two fixed-order passes, as the
 * bias gradients of bias_act.cu do: blocks of 32 columns x 8 row lanes
 * each own a band of rows and write per-band partial sums (double) to
 * scratch, then one thread per column adds the bands in order and writes
 * the results. Row sums (layer norm's mean and variance, its backward's
 * two means) take one block per row: each thread sums a fixed strided set
 * of the row's columns, then block_sum's fixed tree. No atomics: the same
 * bits on every run. */
#include "common.cuh"

namespace td_cuda {

constexpr int kColTile = 32;     /* columns per block (one warp wide) */
constexpr int kRowLanes = 8;     /* rows a block works on at once */
constexpr int kRowsPerBand = 64; /* rows per band of the first pass */
constexpr int kMaxBands = 256;

static int bands_for(int rows) {
  int b = (rows + kRowsPerBand - 1) / kRowsPerBand;
  return b < 1 ? 1 : b > kMaxBands ? kMaxBands : b;
}

/* What a column pass sums over the rows of column c:
 *   MOMENTS  a and a^2 (a = x)
 *   BN       a and a * xhat, xhat = (x - mean[c]) * rstd[c] (a = dy;
 *            saved = mean, rstd per column)
 *   LN       a and a * xhat with row r's mean and rstd (saved: 2 per row) */
enum { COL_MOMENTS = 0, COL_BN, COL_LN };

template <int WHAT>
__global__ void col_partial_kernel(int rows, int cols, const float *__restrict__ a,
                                   const float *__restrict__ x, const float *__restrict__ saved,
                                   double *__restrict__ partial) {
  __shared__ double sums[2][kRowLanes][kColTile];
  const int c = blockIdx.x * kColTile + threadIdx.x;
  double s1 = 0.0, s2 = 0.0;
  if (c < cols) {
    float mean = 0.0f, rstd = 0.0f;
    if (WHAT == COL_BN) {
      mean = saved[c];
      rstd = saved[cols + c];
    }
    for (size_t r = blockIdx.y * (size_t)kRowLanes + threadIdx.y; r < (size_t)rows;
         r += (size_t)gridDim.y * kRowLanes) {
      const size_t i = r * (size_t)cols + c;
      const float v = a[i];
      s1 += v;
      if (WHAT == COL_MOMENTS) {
        s2 += (double)v * v;
      } else {
        if (WHAT == COL_LN) {
          mean = saved[2 * r];
          rstd = saved[2 * r + 1];
        }
        const float xh = (x[i] - mean) * rstd;
        s2 += (double)(v * xh);
      }
    }
  }
  sums[0][threadIdx.y][threadIdx.x] = s1;
  sums[1][threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double t1 = 0.0, t2 = 0.0;
    for (int k = 0; k < kRowLanes; k++) {
      t1 += sums[0][k][threadIdx.x];
      t2 += sums[1][k][threadIdx.x];
    }
    partial[(size_t)blockIdx.y * 2 * cols + c] = t1;
    partial[(size_t)blockIdx.y * 2 * cols + cols + c] = t2;
  }
}

/* The bands' partials of column c added in order: sum1[c] and sum2[c]
 * (when not NULL) get the two sums, mean[c] and mean[cols + c] (when not
 * NULL) the sums over rows. */
__global__ void col_final_kernel(int bands, int rows, int cols, const double *__restrict__ partial,
                                 float *__restrict__ sum1, float *__restrict__ sum2,
                                 float *__restrict__ mean) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    double t1 = 0.0, t2 = 0.0;
    for (int b = 0; b < bands; b++) {
      t1 += partial[(size_t)b * 2 * cols + c];
      t2 += partial[(size_t)b * 2 * cols + cols + c];
    }
    if (sum1)
      sum1[c] = (float)t1;
    if (sum2)
      sum2[c] = (float)t2;
    if (mean) {
      mean[c] = (float)(t1 / rows);
      mean[cols + c] = (float)(t2 / rows);
    }
  }
}

template <int WHAT>
static int col_sums(cudaStream_t stream, int rows, int cols, const float *a, const float *x,
                    const float *saved, float *sum1, float *sum2, float *mean, void *scratch,
                    td_error *err) {
  const int bands = bands_for(rows);
  double *partial = static_cast<double *>(scratch);
  dim3 grid((unsigned)((cols + kColTile - 1) / kColTile), (unsigned)bands);
  col_partial_kernel<WHAT>
      <<<grid, dim3(kColTile, kRowLanes), 0, stream>>>(rows, cols, a, x, saved, partial);
  int rc = launch_check("col_partial_kernel", err);
  if (rc)
    return rc;
  col_final_kernel<<<grid_for((size_t)cols, kBlock), kBlock, 0, stream>>>(
      bands, rows, cols, partial, sum1, sum2, mean);
  return launch_check("col_final_kernel", err);
}

/* Batch norm's per-column mean and 1/std from the moments (train) or the
 * running statistics, updating those in train mode when given. */
__global__ void bn_stats_kernel(int train, int cols, const float *__restrict__ m, float *running,
                                float momentum, float eps, float *__restrict__ saved) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    float mu, var;
    if (train) {
      mu = m[c];
      var = fmaxf(0.0f, m[cols + c] - mu * mu);
      if (running) {
        running[c] = momentum * running[c] + (1.0f - momentum) * mu;
        running[cols + c] = momentum * running[cols + c] + (1.0f - momentum) * var;
      }
    } else {
      mu = running[c];
      var = running[cols + c];
    }
    saved[c] = mu;
    saved[cols + c] = 1.0f / sqrtf(var + eps);
  }
}

/* Elementwise over (rows, cols): the column of element i advances by the
 * grid stride modulo cols, one division per thread (as bias_act.cu). */
#define FOR_EACH_ELEMENT(total, cols, i, c)                            \
  const size_t first_ = blockIdx.x * (size_t)blockDim.x + threadIdx.x; \
  const size_t stride_ = (size_t)gridDim.x * blockDim.x;               \
  const unsigned step_ = (unsigned)(stride_ % (size_t)(cols));         \
  unsigned c = (unsigned)(first_ % (size_t)(cols));                    \
  for (size_t i = first_; i < (total);                                 \
       i += stride_, c = c + step_ >= (unsigned)(cols) ? c + step_ - (unsigned)(cols) : c + step_)

/* y = (x - mean) * rstd * scale + bias; y may alias x. */
__global__ void bn_apply_kernel(size_t total, int cols, const float *x, const float *saved,
                                const float *__restrict__ scale, const float *__restrict__ bias,
                                float *y) {
  FOR_EACH_ELEMENT(total, cols, i, c) {
    const float v = (x[i] - saved[c]) * saved[cols + c];
    y[i] = v * (scale ? scale[c] : 1.0f) + (bias ? bias[c] : 0.0f);
  }
}

/* dx = scale * rstd * (dy - s[c] - xhat * s[cols + c]); dx may alias dy. */
__global__ void bn_dx_kernel(size_t total, int cols, const float *__restrict__ x, const float *dy,
                             const float *__restrict__ saved, const float *__restrict__ scale,
                             const float *__restrict__ s, float *dx) {
  FOR_EACH_ELEMENT(total, cols, i, c) {
    const float rstd = saved[cols + c];
    const float xh = (x[i] - saved[c]) * rstd;
    const float k = (scale ? scale[c] : 1.0f) * rstd;
    dx[i] = k * (dy[i] - s[c] - xh * s[cols + c]);
  }
}

/* Threads per block of the row kernels: a warp for narrow rows, up to 256. */
static unsigned row_threads(int cols) {
  unsigned t = 32;
  while (t < 256 && t < (unsigned)cols)
    t *= 2;
  return t;
}

/* Layer norm forward, one block per row (grid-stride over rows). */
__global__ void ln_fwd_kernel(int rows, int cols, float eps, const float *x,
                              const float *__restrict__ scale, const float *__restrict__ bias,
                              float *y, float *__restrict__ saved) {
  __shared__ double shared[32];
  __shared__ float stat[2];
  for (size_t r = blockIdx.x; r < (size_t)rows; r += gridDim.x) {
    const float *xr = x + r * (size_t)cols;
    double s1 = 0.0, s2 = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const float v = xr[c];
      s1 += v;
      s2 += (double)v * v;
    }
    s1 = block_sum(s1, shared);
    s2 = block_sum(s2, shared);
    if (threadIdx.x == 0) {
      const double mu = s1 / cols, var = s2 / cols - mu * mu;
      const float fmu = (float)mu, rstd = (float)(1.0 / sqrt((var > 0.0 ? var : 0.0) + eps));
      saved[2 * r] = fmu;
      saved[2 * r + 1] = rstd;
      stat[0] = fmu;
      stat[1] = rstd;
    }
    __syncthreads();
    const float fmu = stat[0], rstd = stat[1];
    float *yr = y + r * (size_t)cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
      yr[c] = (xr[c] - fmu) * rstd * (scale ? scale[c] : 1.0f) + (bias ? bias[c] : 0.0f);
    __syncthreads(); /* stat is read before the next row writes it */
  }
}

/* Layer norm's dx, one block per row: with g = dy * scale,
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). dx is not dy. */
__global__ void ln_dx_kernel(int rows, int cols, const float *__restrict__ x,
                             const float *__restrict__ dy, const float *__restrict__ saved,
                             const float *__restrict__ scale, float *__restrict__ dx) {
  __shared__ double shared[32];
  __shared__ float means[2];
  for (size_t r = blockIdx.x; r < (size_t)rows; r += gridDim.x) {
    const float *xr = x + r * (size_t)cols, *dyr = dy + r * (size_t)cols;
    const float mu = saved[2 * r], rstd = saved[2 * r + 1];
    double g1 = 0.0, g2 = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const float xh = (xr[c] - mu) * rstd;
      const float g = dyr[c] * (scale ? scale[c] : 1.0f);
      g1 += g;
      g2 += (double)(g * xh);
    }
    g1 = block_sum(g1, shared);
    g2 = block_sum(g2, shared);
    if (threadIdx.x == 0) {
      means[0] = (float)(g1 / cols);
      means[1] = (float)(g2 / cols);
    }
    __syncthreads();
    const float m1 = means[0], m2 = means[1];
    float *dxr = dx + r * (size_t)cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const float xh = (xr[c] - mu) * rstd;
      dxr[c] = rstd * (dyr[c] * (scale ? scale[c] : 1.0f) - m1 - xh * m2);
    }
    __syncthreads(); /* means is read before the next row writes it */
  }
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" size_t td_cuda_colsum_scratch(int rows, int cols) {
  return (size_t)bands_for(rows) * 2 * (size_t)(cols > 0 ? cols : 0) * sizeof(double);
}

extern "C" int td_cuda_col_moments(cudaStream_t stream, int rows, int cols, const float *x,
                                   float *m, void *scratch, td_error *err) {
  if (cols == 0)
    return TD_OK;
  return col_sums<COL_MOMENTS>(stream, rows, cols, x, nullptr, nullptr, nullptr, nullptr, m,
                               scratch, err);
}

extern "C" int td_cuda_bn_fwd(cudaStream_t stream, int train, int rows, int cols, const float *x,
                              const float *m, float *running, float momentum, float eps,
                              const float *scale, const float *bias, float *y, float *saved,
                              td_error *err) {
  if (cols == 0)
    return TD_OK;
  bn_stats_kernel<<<grid_for((size_t)cols, kBlock), kBlock, 0, stream>>>(train, cols, m, running,
                                                                         momentum, eps, saved);
  int rc = launch_check("bn_stats_kernel", err);
  const size_t total = (size_t)rows * (size_t)cols;
  if (rc || total == 0)
    return rc;
  bn_apply_kernel<<<grid_for(total, kBlock), kBlock, 0, stream>>>(total, cols, x, saved, scale,
                                                                  bias, y);
  return launch_check("bn_apply_kernel", err);
}

extern "C" int td_cuda_bn_bwd_sums(cudaStream_t stream, int rows, int cols, const float *x,
                                   const float *dy, const float *saved, float *dscale, float *dbias,
                                   float *s, void *scratch, td_error *err) {
  if (cols == 0)
    return TD_OK;
  return col_sums<COL_BN>(stream, rows, cols, dy, x, saved, dbias, dscale, s, scratch, err);
}

extern "C" int td_cuda_bn_bwd_dx(cudaStream_t stream, int rows, int cols, const float *x,
                                 const float *dy, const float *saved, const float *scale,
                                 const float *s, float *dx, td_error *err) {
  const size_t total = (size_t)rows * (size_t)cols;
  if (total == 0)
    return TD_OK;
  bn_dx_kernel<<<grid_for(total, kBlock), kBlock, 0, stream>>>(total, cols, x, dy, saved, scale, s,
                                                               dx);
  return launch_check("bn_dx_kernel", err);
}

extern "C" int td_cuda_ln_fwd(cudaStream_t stream, int rows, int cols, float eps, const float *x,
                              const float *scale, const float *bias, float *y, float *saved,
                              td_error *err) {
  if (rows == 0 || cols == 0)
    return TD_OK;
  ln_fwd_kernel<<<grid_for((size_t)rows, 1), row_threads(cols), 0, stream>>>(rows, cols, eps, x,
                                                                             scale, bias, y, saved);
  return launch_check("ln_fwd_kernel", err);
}

extern "C" int td_cuda_ln_bwd(cudaStream_t stream, int rows, int cols, const float *x,
                              const float *dy, const float *saved, const float *scale, float *dx,
                              float *dscale, float *dbias, void *scratch, td_error *err) {
  if (cols == 0)
    return TD_OK;
  if (dscale || dbias) {
    int rc =
        col_sums<COL_LN>(stream, rows, cols, dy, x, saved, dbias, dscale, nullptr, scratch, err);
    if (rc)
      return rc;
  }
  if (!dx || rows == 0)
    return TD_OK;
  ln_dx_kernel<<<grid_for((size_t)rows, 1), row_threads(cols), 0, stream>>>(rows, cols, x, dy,
                                                                            saved, scale, dx);
  return launch_check("ln_dx_kernel", err);
}
