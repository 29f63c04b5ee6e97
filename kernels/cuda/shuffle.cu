/* The epoch's example order on the device (backend.h's shuffle): the
 * permutation base/prng.c makes, jax.random.permutation's, in the same
 * rounds. Each round draws a 32-bit key per position i (threefry2x32 of the
 * counter (0, i) under the round's key, words xor'ed) and sorts the order
 * stably by those keys, here with CUB's radix sort (stable, like the CPU's
 * LSD radix sort), so both give the same permutation bit for bit. */
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

namespace td_cuda {

__global__ void iota_kernel(uint32_t n, uint32_t *__restrict__ out) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    out[i] = (uint32_t)i;
}

__global__ void sort_keys_kernel(uint32_t n, uint32_t k0, uint32_t k1,
                                 uint32_t *__restrict__ keys) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    uint32_t w0 = 0, w1 = (uint32_t)i; /* the counter's high and low words */
    threefry2x32(k0, k1, w0, w1);
    keys[i] = w0 ^ w1;
  }
}

static size_t round_up(size_t b) { return (b + 255) & ~(size_t)255; }

static size_t cub_bytes(uint32_t n) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t *>(nullptr), static_cast<uint32_t *>(nullptr),
      static_cast<const uint32_t *>(nullptr), static_cast<uint32_t *>(nullptr), (int)n);
  return bytes;
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" size_t td_cuda_shuffle_scratch(uint32_t n) {
  return 3 * round_up((size_t)n * sizeof(uint32_t)) + round_up(cub_bytes(n));
}

extern "C" int td_cuda_shuffle(cudaStream_t stream, uint32_t n, int rounds,
                               const uint32_t *round_keys, uint32_t *order, void *scratch,
                               size_t scratch_bytes, td_error *err) {
  if (n > (uint32_t)INT32_MAX)
    return td_errorf(err, TD_EINVAL, "shuffle: %u examples are more than CUB sorts at once", n);
  if (scratch_bytes < td_cuda_shuffle_scratch(n))
    return td_errorf(err, TD_EINVAL, "shuffle: scratch too small");
  const size_t words = round_up((size_t)n * sizeof(uint32_t));
  char *s = static_cast<char *>(scratch);
  uint32_t *keys_in = reinterpret_cast<uint32_t *>(s);
  uint32_t *keys_out = reinterpret_cast<uint32_t *>(s + words);
  uint32_t *vals_out = reinterpret_cast<uint32_t *>(s + 2 * words);
  void *temp = s + 3 * words;
  size_t temp_bytes = scratch_bytes - 3 * words;
  const unsigned blocks = grid_for(n, kBlock);
  iota_kernel<<<blocks, kBlock, 0, stream>>>(n, order);
  int rc = launch_check("iota_kernel", err);
  for (int r = 0; r < rounds && !rc; r++) {
    sort_keys_kernel<<<blocks, kBlock, 0, stream>>>(n, round_keys[2 * r], round_keys[2 * r + 1],
                                                    keys_in);
    if ((rc = launch_check("sort_keys_kernel", err)))
      break;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, order,
                                                    vals_out, (int)n, 0, 32, stream);
    if (e == cudaSuccess)
      e = cudaMemcpyAsync(order, vals_out, (size_t)n * sizeof *order, cudaMemcpyDeviceToDevice,
                          stream);
    if (e != cudaSuccess)
      rc = td_errorf(err, TD_EBACKEND, "shuffle: cub::DeviceRadixSort::SortPairs: %s",
                     cudaGetErrorString(e));
  }
  return rc;
}
