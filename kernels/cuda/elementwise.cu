/* Plain elementwise ops: fill, the product of two buffers (dropout's
 * backward pass) and their sum (add layers, gradients of values that feed
 * several layers). Both are bandwidth-bound grid-stride loops. */
#include "common.cuh"

namespace td_cuda {

__global__ void fill_kernel(float *__restrict__ x, size_t n, float value) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] = value;
}

/* out may alias a or b: each element is read before it is written, by the
 * same thread. */
__global__ void mul_kernel(size_t n, const float *a, const float *b, float *out) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    out[i] = a[i] * b[i];
}

/* out may alias a or b, as mul_kernel's. */
__global__ void add_kernel(size_t n, const float *a, const float *b, float *out) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    out[i] = a[i] + b[i];
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" int td_cuda_fill(cudaStream_t stream, float *x, size_t n, float value, td_error *err) {
  if (n == 0)
    return TD_OK;
  fill_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(x, n, value);
  return launch_check("fill_kernel", err);
}

extern "C" int td_cuda_mul(cudaStream_t stream, size_t n, const float *a, const float *b,
                           float *out, td_error *err) {
  if (n == 0)
    return TD_OK;
  mul_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(n, a, b, out);
  return launch_check("mul_kernel", err);
}

extern "C" int td_cuda_add(cudaStream_t stream, size_t n, const float *a, const float *b,
                           float *out, td_error *err) {
  if (n == 0)
    return TD_OK;
  add_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(n, a, b, out);
  return launch_check("add_kernel", err);
}
