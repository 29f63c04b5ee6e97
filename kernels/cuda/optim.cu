/* One fused optimizer pass over the flat parameter, gradient and state
 * buffers (backend.h's td_opt_pass), with the CPU backend's formulas
 * operation for operation. The step's scalars, the norm a clip needs and
 * the guard are read from device memory, so that a recorded step replays
 * with each step's values. Without FMA contraction and with IEEE division
 * and square root (nvcc's defaults without --use_fast_math), each element
 * rounds exactly as on the CPU. Specialised on kind, apply and nesterov so
 * that the loop has no branches inside. */
#include "common.cuh"

namespace td_cuda {

template <int KIND, bool APPLY, bool NESTEROV>
__global__ void opt_pass_kernel(td_opt_pass a, const td_opt_scalars *__restrict__ sc,
                                const float *__restrict__ norm_sq, const float *__restrict__ guard,
                                size_t n, float *__restrict__ p, float *__restrict__ g,
                                float *__restrict__ s1, float *__restrict__ s2) {
  if (guard && !td_opt_guard_ok(*guard))
    return;
  const td_opt_scalars k = *sc;
  const float in_scale = td_opt_in_scale(&a, &k, a.clip ? *norm_sq : 0.0f);
  const float rbc1 = k.rbc1, rbc2 = k.rbc2, mid_scale = k.mid_scale, out_scale = k.out_scale;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = in_scale * g[i];
    if (KIND == TD_OPT_ADAM) {
      const float m = (1.0f - a.b1) * v + a.b1 * s1[i];
      const float s = (1.0f - a.b2) * (v * v) + a.b2 * s2[i];
      s1[i] = m;
      s2[i] = s;
      v = (m * rbc1) / (sqrtf(s * rbc2 + a.eps_root) + a.eps);
    } else if (KIND == TD_OPT_TRACE) {
      const float t = v + a.momentum * s1[i];
      s1[i] = t;
      v = NESTEROV ? v + a.momentum * t : t;
    }
    v = out_scale * (mid_scale * v + a.wd * p[i]);
    if (APPLY)
      p[i] += v;
    else
      g[i] = v;
  }
}

template <int KIND, bool NESTEROV>
static void launch(cudaStream_t stream, const td_opt_pass &a, const td_opt_scalars *sc,
                   const float *norm_sq, const float *guard, size_t n, float *p, float *g,
                   float *s1, float *s2) {
  const unsigned blocks = grid_for(n, kBlock);
  if (a.apply)
    opt_pass_kernel<KIND, true, NESTEROV>
        <<<blocks, kBlock, 0, stream>>>(a, sc, norm_sq, guard, n, p, g, s1, s2);
  else
    opt_pass_kernel<KIND, false, NESTEROV>
        <<<blocks, kBlock, 0, stream>>>(a, sc, norm_sq, guard, n, p, g, s1, s2);
}

} // namespace td_cuda

using namespace td_cuda;

extern "C" int td_cuda_opt_pass(cudaStream_t stream, const td_opt_pass *a, const td_opt_scalars *sc,
                                const float *norm_sq, const float *guard, size_t n, float *p,
                                float *g, float *s1, float *s2, td_error *err) {
  if (n == 0)
    return TD_OK;
  if (a->clip && !norm_sq)
    return td_errorf(err, TD_EINVAL, "optimizer pass: a clip needs the squared norm");
  switch (a->kind) {
  case TD_OPT_ADAM:
    if (!s1 || !s2)
      return td_errorf(err, TD_EINVAL, "optimizer pass: adam needs two state buffers");
    launch<TD_OPT_ADAM, false>(stream, *a, sc, norm_sq, guard, n, p, g, s1, s2);
    break;
  case TD_OPT_TRACE:
    if (!s1)
      return td_errorf(err, TD_EINVAL, "optimizer pass: trace needs a state buffer");
    if (a->nesterov)
      launch<TD_OPT_TRACE, true>(stream, *a, sc, norm_sq, guard, n, p, g, s1, s2);
    else
      launch<TD_OPT_TRACE, false>(stream, *a, sc, norm_sq, guard, n, p, g, s1, s2);
    break;
  case TD_OPT_IDENTITY:
    launch<TD_OPT_IDENTITY, false>(stream, *a, sc, norm_sq, guard, n, p, g, s1, s2);
    break;
  default:
    return td_errorf(err, TD_EINVAL, "optimizer pass: unknown kind %d", (int)a->kind);
  }
  return launch_check("opt_pass_kernel", err);
}
