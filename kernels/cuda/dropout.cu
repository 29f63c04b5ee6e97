/* Inverted dropout with the counter-based mask of backend.h: element i is
 * kept when jax.random.uniform(key, (N,))[first + i] < 1 - rate, the
 * uniform draw made from threefry2x32(key, (hi32(c), lo32(c))) at
 * c = first + i exactly as base/prng.c and the CPU backend make it, so
 * the mask is bit-identical on both backends and independent of how the
 * work is split over threads or replicas. */
#include "common.cuh"

namespace td_cuda {

/* keep = 1 - rate and scale = 1 / keep come from the host, computed as
 * the CPU backend computes them; the key from the step's record in device
 * memory. y may alias x. */
__global__ void dropout_kernel(size_t n, uint64_t first, float keep, float scale,
                               const uint32_t *key, const float *x, float *mask, float *y) {
  const uint32_t k0 = key[0], k1 = key[1];
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const uint64_t c = first + i;
    uint32_t w0 = (uint32_t)(c >> 32), w1 = (uint32_t)c;
    threefry2x32(k0, k1, w0, w1);
    /* jax.random.uniform's float: 23 bits of the words' xor as the
     * mantissa of a number in [1, 2), minus 1 (exact). */
    const float u = __uint_as_float(((w0 ^ w1) >> 9) | 0x3f800000u) - 1.0f;
    const float m = u < keep ? scale : 0.0f;
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" int td_cuda_dropout_fwd(cudaStream_t stream, size_t n, uint64_t first, float rate,
                                   const uint32_t *key, const float *x, float *mask, float *y,
                                   td_error *err) {
  if (n == 0)
    return TD_OK;
  const float keep = 1.0f - rate, scale = 1.0f / keep;
  dropout_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(n, first, keep, scale, key, x, mask,
                                                             y);
  return launch_check("dropout_kernel", err);
}
