/* Helpers shared by the kernels: launch checks, grid sizes and a
 * fixed-order block reduction. Device code only sees this file. */
#ifndef TD_CUDA_COMMON_CUH
#define TD_CUDA_COMMON_CUH

#include <cuda_runtime.h>

#include "cuda_internal.h"

namespace td_cuda {

/* Threads per block of the elementwise kernels. */
constexpr int kBlock = 256;
/* Enough blocks to fill any current GPU several times over; larger inputs
 * are covered by grid-stride loops. */
constexpr size_t kMaxBlocks = 65536;

/* Blocks for n elements at `per_block` elements per block, at least one. */
static inline unsigned grid_for(size_t n, size_t per_block) {
  size_t b = (n + per_block - 1) / per_block;
  if (b < 1)
    b = 1;
  return (unsigned)(b < kMaxBlocks ? b : kMaxBlocks);
}

/* The check after every launch: a bad configuration, a missing kernel
 * image or an earlier fault on the device comes back as TD_EBACKEND naming
 * the kernel. */
static inline int launch_check(const char *kernel, td_error *err) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess)
    return TD_OK;
  return td_errorf(err, TD_EBACKEND, "%s: %s", kernel, cudaGetErrorString(e));
}

/* Sum of v over the block, in an order that depends only on the block
 * size: warp butterflies, then warp 0 over the warps' sums. Every thread
 * must call it (blockDim.x a multiple of 32); the result is valid in thread
 * 0. `shared` holds one T per warp and may be reused by the next call. */
template <typename T> __device__ inline T block_sum(T v, T *shared) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  __syncthreads(); /* a previous call's readers are done with shared */
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0)
    shared[warp] = v;
  __syncthreads();
  const unsigned warps = (blockDim.x + 31u) >> 5;
  if (warp == 0) {
    v = lane < warps ? shared[lane] : T(0);
    for (int o = 16; o > 0; o >>= 1)
      v += __shfl_xor_sync(0xffffffffu, v, o);
  }
  return v;
}

__device__ __forceinline__ uint32_t rotl32(uint32_t x, unsigned d) {
  return (x << d) | (x >> (32 - d));
}

/* Random123's threefry2x32 with 20 rounds (base/prng.c), unrolled: the
 * dropout masks and the shuffle's sort keys. */
__device__ __forceinline__ void threefry2x32(uint32_t k0, uint32_t k1, uint32_t &x0, uint32_t &x1) {
  const uint32_t ks[3] = {k0, k1, 0x1BD11BDAu ^ k0 ^ k1};
  const unsigned rot[8] = {13, 15, 26, 6, 17, 29, 16, 24};
  x0 += ks[0];
  x1 += ks[1];
#pragma unroll
  for (unsigned g = 0; g < 5; g++) {
#pragma unroll
    for (unsigned i = 0; i < 4; i++) {
      x0 += x1;
      x1 = rotl32(x1, rot[4 * (g & 1) + i]) ^ x0;
    }
    x0 += ks[(g + 1) % 3];
    x1 += ks[(g + 2) % 3] + g + 1;
  }
}

} // namespace td_cuda

#endif
