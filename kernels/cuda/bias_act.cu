/* Bias plus activation, forward and backward, with the CPU backend's
 * formulas operation for operation (the build disables FMA contraction, so
 * products and sums round as they do there; tanhf, erff and expf are
 * CUDA's, within 2 ulp).
 *
 * Forward: one grid-stride pass over (rows, cols): z += bias, y = act(z).
 * Backward: dz = dy * act'(...) and, when dbias is wanted, its column sums
 * in two fixed-order passes: blocks of (32 columns x 8 row lanes) each own
 * a band of rows and write per-band column partials (double) to scratch,
 * then one thread per column adds the bands in order. */
#include "common.cuh"

namespace td_cuda {

/* sqrt(2/pi) and the cubic coefficient of the tanh approximation of GELU. */
#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

__device__ __forceinline__ float gelu_tanh(float x) {
  float t = tanhf(GELU_C * (x + GELU_A * x * x * x));
  return 0.5f * x * (1.0f + t);
}

__device__ __forceinline__ float gelu_tanh_grad(float x) {
  float x2 = x * x;
  float t = tanhf(GELU_C * (x + GELU_A * x2 * x));
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * x2);
}

__device__ __forceinline__ float gelu_erf(float x) {
  return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float gelu_erf_grad(float x) {
  float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  float pdf = 0.3989422804014327f * expf(-0.5f * x * x);
  return cdf + x * pdf;
}

template <int ACT> __device__ __forceinline__ float act_fwd(float z) {
  switch (ACT) {
  case TD_ACT_RELU:
    return z > 0.0f ? z : 0.0f;
  case TD_ACT_GELU_TANH:
    return gelu_tanh(z);
  case TD_ACT_GELU_ERF:
    return gelu_erf(z);
  case TD_ACT_TANH:
    return tanhf(z);
  case TD_ACT_SIGMOID:
    return 1.0f / (1.0f + expf(-z));
  default:
    return z;
  }
}

/* dz for element i; loads z or y only where the derivative needs it. */
template <int ACT>
__device__ __forceinline__ float act_bwd(const float *z, const float *y, size_t i, float dy) {
  switch (ACT) {
  case TD_ACT_RELU:
    return y[i] > 0.0f ? dy : 0.0f;
  case TD_ACT_GELU_TANH:
    return dy * gelu_tanh_grad(z[i]);
  case TD_ACT_GELU_ERF:
    return dy * gelu_erf_grad(z[i]);
  case TD_ACT_TANH: {
    float v = y[i];
    return dy * (1.0f - v * v);
  }
  case TD_ACT_SIGMOID: {
    float v = y[i];
    return dy * v * (1.0f - v);
  }
  default:
    return dy;
  }
}

/* z (rows, cols) += bias; y = act(z). y may alias z. The column of
 * element i advances by the grid stride modulo cols: one division per
 * thread, not one per element. */
template <int ACT, bool BIAS>
__global__ void bias_act_fwd_kernel(size_t total, int cols, const float *__restrict__ bias,
                                    float *z, float *y) {
  const size_t first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const unsigned step = BIAS ? (unsigned)(stride % (size_t)cols) : 0u;
  unsigned c = BIAS ? (unsigned)(first % (size_t)cols) : 0u;
  for (size_t i = first; i < total; i += stride) {
    float v = z[i];
    if (BIAS) {
      v += bias[c];
      z[i] = v;
      c += step;
      if (c >= (unsigned)cols)
        c -= (unsigned)cols;
    }
    y[i] = act_fwd<ACT>(v);
  }
}

/* dz = dy * act'; dz may alias dy, y may alias z. */
template <int ACT>
__global__ void act_bwd_kernel(size_t total, const float *z, const float *y, const float *dy,
                               float *dz) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x)
    dz[i] = act_bwd<ACT>(z, y, i, dy[i]);
}

constexpr int kColTile = 32;     /* columns per block (one warp wide) */
constexpr int kRowLanes = 8;     /* rows a block works on at once */
constexpr int kRowsPerBand = 64; /* rows per band of the first pass */
constexpr int kMaxBands = 256;

static int bands_for(int rows) {
  int b = (rows + kRowsPerBand - 1) / kRowsPerBand;
  return b < 1 ? 1 : b > kMaxBands ? kMaxBands : b;
}

/* dz as above, plus per-band column sums: band blockIdx.y takes rows
 * blockIdx.y * 8 + ty + k * gridDim.y * 8. One band writes dbias directly;
 * several write partial (bands, cols). */
template <int ACT>
__global__ void act_bwd_cols_kernel(int rows, int cols, const float *z, const float *y,
                                    const float *dy, float *dz, double *__restrict__ partial,
                                    float *__restrict__ dbias) {
  __shared__ float sums[kRowLanes][kColTile];
  const int c = blockIdx.x * kColTile + threadIdx.x;
  float acc = 0.0f;
  if (c < cols)
    for (int r = blockIdx.y * kRowLanes + threadIdx.y; r < rows; r += gridDim.y * kRowLanes) {
      size_t i = (size_t)r * cols + c;
      float d = act_bwd<ACT>(z, y, i, dy[i]);
      dz[i] = d;
      acc += d;
    }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double s = 0.0;
    for (int k = 0; k < kRowLanes; k++)
      s += (double)sums[k][threadIdx.x];
    if (partial)
      partial[(size_t)blockIdx.y * cols + c] = s;
    else
      dbias[c] = (float)s;
  }
}

/* dbias[c] = sum over bands of partial[band][c], bands in order. */
__global__ void colsum_kernel(int bands, int cols, const double *__restrict__ partial,
                              float *__restrict__ dbias) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    double s = 0.0;
    for (int b = 0; b < bands; b++)
      s += partial[(size_t)b * cols + c];
    dbias[c] = (float)s;
  }
}

template <int ACT>
static int fwd(cudaStream_t stream, int rows, int cols, const float *bias, float *z, float *y,
               td_error *err) {
  const size_t total = (size_t)rows * (size_t)cols;
  const unsigned blocks = grid_for(total, kBlock);
  if (bias)
    bias_act_fwd_kernel<ACT, true><<<blocks, kBlock, 0, stream>>>(total, cols, bias, z, y);
  else
    bias_act_fwd_kernel<ACT, false><<<blocks, kBlock, 0, stream>>>(total, cols, bias, z, y);
  return launch_check("bias_act_fwd_kernel", err);
}

template <int ACT>
static int bwd(cudaStream_t stream, int rows, int cols, const float *z, const float *y,
               const float *dy, float *dz, float *dbias, void *scratch, td_error *err) {
  const size_t total = (size_t)rows * (size_t)cols;
  if (!dbias) {
    act_bwd_kernel<ACT><<<grid_for(total, kBlock), kBlock, 0, stream>>>(total, z, y, dy, dz);
    return launch_check("act_bwd_kernel", err);
  }
  const int bands = bands_for(rows);
  double *partial = bands > 1 ? static_cast<double *>(scratch) : nullptr;
  dim3 grid((unsigned)((cols + kColTile - 1) / kColTile), (unsigned)bands);
  act_bwd_cols_kernel<ACT>
      <<<grid, dim3(kColTile, kRowLanes), 0, stream>>>(rows, cols, z, y, dy, dz, partial, dbias);
  int rc = launch_check("act_bwd_cols_kernel", err);
  if (rc || bands == 1)
    return rc;
  colsum_kernel<<<grid_for((size_t)cols, kBlock), kBlock, 0, stream>>>(bands, cols, partial, dbias);
  return launch_check("colsum_kernel", err);
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" int td_cuda_bias_act_fwd(cudaStream_t stream, td_act act, int rows, int cols,
                                    const float *bias, float *z, float *y, td_error *err) {
  if (rows == 0 || cols == 0)
    return TD_OK;
  switch (act) {
  case TD_ACT_NONE:
    if (!bias && y == z)
      return TD_OK;
    return fwd<TD_ACT_NONE>(stream, rows, cols, bias, z, y, err);
  case TD_ACT_RELU:
    return fwd<TD_ACT_RELU>(stream, rows, cols, bias, z, y, err);
  case TD_ACT_GELU_TANH:
    return fwd<TD_ACT_GELU_TANH>(stream, rows, cols, bias, z, y, err);
  case TD_ACT_GELU_ERF:
    return fwd<TD_ACT_GELU_ERF>(stream, rows, cols, bias, z, y, err);
  case TD_ACT_TANH:
    return fwd<TD_ACT_TANH>(stream, rows, cols, bias, z, y, err);
  case TD_ACT_SIGMOID:
    return fwd<TD_ACT_SIGMOID>(stream, rows, cols, bias, z, y, err);
  }
  return td_errorf(err, TD_EINVAL, "bias_act forward: unknown activation %d", (int)act);
}

extern "C" size_t td_cuda_bias_act_bwd_scratch(int rows, int cols) {
  int bands = bands_for(rows);
  return bands > 1 ? (size_t)bands * (size_t)cols * sizeof(double) : 0;
}

extern "C" int td_cuda_bias_act_bwd(cudaStream_t stream, td_act act, int rows, int cols,
                                    const float *z, const float *y, const float *dy, float *dz,
                                    float *dbias, void *scratch, td_error *err) {
  if (cols == 0)
    return TD_OK;
  if (rows == 0) {
    /* No rows: the column sums are zero, as the CPU backend leaves them. */
    return dbias ? td_cuda_fill(stream, dbias, (size_t)cols, 0.0f, err) : TD_OK;
  }
  switch (act) {
  case TD_ACT_NONE:
    if (!dbias && dz == dy)
      return TD_OK;
    return bwd<TD_ACT_NONE>(stream, rows, cols, z, y, dy, dz, dbias, scratch, err);
  case TD_ACT_RELU:
    return bwd<TD_ACT_RELU>(stream, rows, cols, z, y, dy, dz, dbias, scratch, err);
  case TD_ACT_GELU_TANH:
    return bwd<TD_ACT_GELU_TANH>(stream, rows, cols, z, y, dy, dz, dbias, scratch, err);
  case TD_ACT_GELU_ERF:
    return bwd<TD_ACT_GELU_ERF>(stream, rows, cols, z, y, dy, dz, dbias, scratch, err);
  case TD_ACT_TANH:
    return bwd<TD_ACT_TANH>(stream, rows, cols, z, y, dy, dz, dbias, scratch, err);
  case TD_ACT_SIGMOID:
    return bwd<TD_ACT_SIGMOID>(stream, rows, cols, z, y, dy, dz, dbias, scratch, err);
  }
  return td_errorf(err, TD_EINVAL, "bias_act backward: unknown activation %d", (int)act);
}
