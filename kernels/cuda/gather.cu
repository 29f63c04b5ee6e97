/* Rows of a dataset by index: the step's batch from the shuffled order,
 * from the place in it that the step's record gives (read on the device,
 * so a recorded step gathers each replay's batch). One block per output
 * row (grid-stride over rows), its threads over the row's features; rows
 * whose length and addresses allow it move as float4. */
#include "common.cuh"

namespace td_cuda {

template <bool VEC4>
__global__ void gather_kernel(const float *__restrict__ src, const int32_t *__restrict__ src_labels,
                              td_rows l, const uint32_t *__restrict__ idx,
                              const uint32_t *__restrict__ off, size_t count,
                              float *__restrict__ dst, int32_t *__restrict__ dst_labels) {
  if (off)
    idx += *off;
  const size_t dim = l.dim;
  for (size_t r = blockIdx.x; r < count; r += gridDim.x) {
    const size_t from = idx[r] * l.stride;
    if (VEC4) {
      const float4 *s = reinterpret_cast<const float4 *>(src + from);
      float4 *d = reinterpret_cast<float4 *>(dst + r * dim);
      for (size_t c = threadIdx.x; c < dim / 4; c += blockDim.x)
        d[c] = s[c];
    } else {
      const float *s = src + from;
      float *d = dst + r * dim;
      for (size_t c = threadIdx.x; c < dim; c += blockDim.x)
        d[c] = s[c];
    }
    const int32_t *sl = src_labels + idx[r] * l.label_stride;
    for (size_t c = threadIdx.x; c < l.label_dim; c += blockDim.x)
      dst_labels[r * l.label_dim + c] = sl[c];
  }
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" int td_cuda_gather(cudaStream_t stream, const td_rows *l, const float *src,
                              const int32_t *src_labels, const uint32_t *idx, const uint32_t *off,
                              size_t count, float *dst, int32_t *dst_labels, td_error *err) {
  if (count == 0)
    return TD_OK;
  const size_t dim = l->dim;
  /* float4 rows: every row's start aligned, which a stride of a multiple
   * of 4 keeps. */
  const bool vec4 = dim % 4 == 0 && l->stride % 4 == 0 && (uintptr_t)src % 16 == 0 &&
                    (uintptr_t)dst % 16 == 0;
  const unsigned blocks = grid_for(count, 1);
  const int threads = dim >= 512 ? 256 : 128;
  if (vec4)
    gather_kernel<true>
        <<<blocks, threads, 0, stream>>>(src, src_labels, *l, idx, off, count, dst, dst_labels);
  else
    gather_kernel<false>
        <<<blocks, threads, 0, stream>>>(src, src_labels, *l, idx, off, count, dst, dst_labels);
  return launch_check("gather_kernel", err);
}
