/* The sum of squares of a flat buffer (the global gradient norm), in two
 * fixed-order passes: a grid whose size depends only on n writes one double
 * per block, then one block adds those. Each square is formed in double, so
 * the result is at least as accurate as the CPU backend's and the same bits
 * on every run. */
#include "common.cuh"

namespace td_cuda {

constexpr int kSumsqThreads = 256;
constexpr size_t kSumsqPerThread = 16; /* target elements per thread */
constexpr unsigned kSumsqMaxBlocks = 1024;
constexpr int kFinalThreads = 1024;

static unsigned sumsq_blocks(size_t n) {
  size_t b = (n + kSumsqThreads * kSumsqPerThread - 1) / (kSumsqThreads * kSumsqPerThread);
  return b < 1 ? 1u : b > kSumsqMaxBlocks ? kSumsqMaxBlocks : (unsigned)b;
}

__global__ void sumsq_partial_kernel(size_t n, const float *__restrict__ x,
                                     double *__restrict__ partial) {
  __shared__ double shared[kSumsqThreads / 32];
  double acc = 0.0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const double v = x[i];
    acc += v * v;
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0)
    partial[blockIdx.x] = acc;
}

__global__ void sumsq_final_kernel(unsigned blocks, const double *__restrict__ partial,
                                   float *__restrict__ out) {
  __shared__ double shared[kFinalThreads / 32];
  double acc = 0.0;
  for (unsigned i = threadIdx.x; i < blocks; i += blockDim.x)
    acc += partial[i];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0)
    out[0] = (float)acc;
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" size_t td_cuda_sumsq_scratch(size_t n) { return sumsq_blocks(n) * sizeof(double); }

extern "C" int td_cuda_sumsq(cudaStream_t stream, size_t n, const float *x, float *out,
                             void *scratch, td_error *err) {
  const unsigned blocks = sumsq_blocks(n);
  double *partial = static_cast<double *>(scratch);
  sumsq_partial_kernel<<<blocks, kSumsqThreads, 0, stream>>>(n, x, partial);
  int rc = launch_check("sumsq_partial_kernel", err);
  if (rc)
    return rc;
  sumsq_final_kernel<<<1, kFinalThreads, 0, stream>>>(blocks, partial, out);
  return launch_check("sumsq_final_kernel", err);
}
