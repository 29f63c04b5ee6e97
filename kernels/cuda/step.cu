/* The step table at work on the device (backend.h's step_begin and
 * record): a recorded step begins by copying its record from the epoch's
 * table, at the place a device-side counter says, and ends by storing its
 * metrics at the slot its record names. Both read their places on the
 * device, so one recorded graph serves every step it is replayed for. */
#include "common.cuh"

namespace td_cuda {

/* One block: every thread reads the counter before thread 0 moves it on
 * (the barrier orders the reads before the write). */
__global__ void step_begin_kernel(const uint32_t *__restrict__ table, size_t words,
                                  uint32_t *counter, uint32_t *__restrict__ cur) {
  const uint32_t at = *counter;
  const uint32_t *rec = table + (size_t)at * words;
  for (size_t i = threadIdx.x; i < words; i += blockDim.x)
    cur[i] = rec[i];
  __syncthreads();
  if (threadIdx.x == 0)
    *counter = at + 1;
}

__global__ void record_kernel(const uint32_t *__restrict__ slot, const float *__restrict__ src,
                              size_t n, float *__restrict__ dst) {
  float *d = dst + (size_t)*slot * n;
  for (size_t k = threadIdx.x; k < n; k += blockDim.x)
    d[k] = src[k];
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" int td_cuda_step_begin(cudaStream_t stream, const void *table, size_t rec_bytes,
                                  uint32_t *counter, void *cur, td_error *err) {
  if (rec_bytes % sizeof(uint32_t))
    return td_errorf(err, TD_EINVAL, "step_begin: records of %zu bytes are not whole words",
                     rec_bytes);
  step_begin_kernel<<<1, 128, 0, stream>>>(static_cast<const uint32_t *>(table),
                                           rec_bytes / sizeof(uint32_t), counter,
                                           static_cast<uint32_t *>(cur));
  return launch_check("step_begin_kernel", err);
}

extern "C" int td_cuda_record(cudaStream_t stream, const uint32_t *slot, const float *src, size_t n,
                              float *dst, td_error *err) {
  if (n == 0)
    return TD_OK;
  record_kernel<<<1, 32, 0, stream>>>(slot, src, n, dst);
  return launch_check("record_kernel", err);
}
