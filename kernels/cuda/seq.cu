/* The sequence ops (backend.h's embed_* and attn_*), the twins of
 * kernels/cpu/cpu_seq.c.
 *
 * Embedding forward: one warp per row copies its id's row of the table
 * (a zero row for an id outside the vocabulary). Backward sums dy's rows
 * into their ids' rows in row order without atomics: the rows are sorted
 * by id with CUB's stable radix sort (so each id's rows stay in row
 * order), a binary search finds where each id's run starts, and one block
 * per id adds its run column by column, in order, from zero. That is the
 * CPU's order exactly, so dtable equals the CPU's bit for bit.
 *
 * Attention: the per-(example, head) products are cuBLAS strided batched
 * GEMMs on strided views of qkv (leading dimension 3f), one call per head
 * batched over the examples; nothing is copied or allocated, so a step
 * stays recordable. The causal softmax and its backward take one warp per
 * (t)-long row, their sums in double, every element written (zeros above
 * the diagonal). The build disables FMA contraction, so the elementwise
 * products round as the CPU's do; expf is CUDA's (within 2 ulp). */
#include <cub/device/device_radix_sort.cuh>
#include <cublas_v2.h>
#include <math.h>

#include "common.cuh"

namespace td_cuda {

constexpr int kRowWarps = 8; /* rows per block of 256 threads */

/* ---- embedding ---------------------------------------------------------- */

/* The row of the table an id names, or -1 (the CPU's token_id). */
__device__ __forceinline__ int token_id(float v, int vocab) {
  return v >= 0.0f && v < (float)vocab ? (int)v : -1;
}

__global__ void embed_fwd_kernel(int rows, int cols, int vocab, const float *__restrict__ ids,
                                 const float *__restrict__ table, float *__restrict__ y) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (size_t r = blockIdx.x * (size_t)kRowWarps + warp; r < (size_t)rows;
       r += (size_t)gridDim.x * kRowWarps) {
    const int id = token_id(ids[r], vocab);
    float *yr = y + r * (size_t)cols;
    if (id < 0) {
      for (int c = lane; c < cols; c += 32)
        yr[c] = 0.0f;
    } else {
      const float *tr = table + (size_t)id * cols;
      for (int c = lane; c < cols; c += 32)
        yr[c] = tr[c];
    }
  }
}

/* The sort's input: key = the row's id (vocab for an id outside the
 * vocabulary, which sorts last), value = the row. */
__global__ void embed_keys_kernel(int rows, int vocab, const float *__restrict__ ids,
                                  uint32_t *__restrict__ keys, uint32_t *__restrict__ vals) {
  for (size_t r = blockIdx.x * (size_t)blockDim.x + threadIdx.x; r < (size_t)rows;
       r += (size_t)gridDim.x * blockDim.x) {
    const int id = token_id(ids[r], vocab);
    keys[r] = id < 0 ? (uint32_t)vocab : (uint32_t)id;
    vals[r] = (uint32_t)r;
  }
}

/* start[v] (v = 0..vocab) = the number of sorted keys below v: id v's run
 * is start[v] .. start[v + 1]. */
__global__ void embed_starts_kernel(int rows, int vocab, const uint32_t *__restrict__ keys,
                                    uint32_t *__restrict__ start) {
  for (size_t v = blockIdx.x * (size_t)blockDim.x + threadIdx.x; v <= (size_t)vocab;
       v += (size_t)gridDim.x * blockDim.x) {
    uint32_t lo = 0, hi = (uint32_t)rows;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      if (keys[mid] < (uint32_t)v)
        lo = mid + 1;
      else
        hi = mid;
    }
    start[v] = lo;
  }
}

/* dtable[v] = the sum of dy's rows of id v, in row order from zero (a
 * zero row for an id no row has). One block per id, its threads over the
 * columns. */
__global__ void embed_sum_kernel(int cols, int vocab, const uint32_t *__restrict__ start,
                                 const uint32_t *__restrict__ order, const float *__restrict__ dy,
                                 float *__restrict__ dtable) {
  for (size_t v = blockIdx.x; v < (size_t)vocab; v += gridDim.x) {
    const uint32_t s0 = start[v], s1 = start[v + 1];
    float *d = dtable + v * (size_t)cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      float s = 0.0f;
      for (uint32_t i = s0; i < s1; i++)
        s += dy[(size_t)order[i] * cols + c];
      d[c] = s;
    }
  }
}

static size_t round_up(size_t b) { return (b + 255) & ~(size_t)255; }

/* The bits of a key in [0, vocab]. */
static int key_bits(int vocab) {
  int b = 1;
  while (b < 31 && ((uint32_t)vocab >> b) != 0)
    b++;
  return b;
}

static size_t sort_bytes(int rows, int vocab) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t *>(nullptr),
                                  static_cast<uint32_t *>(nullptr),
                                  static_cast<const uint32_t *>(nullptr),
                                  static_cast<uint32_t *>(nullptr), rows, 0, key_bits(vocab));
  return bytes;
}

/* ---- attention ---------------------------------------------------------- */

/* A row-major matrix per (example b, head k): at base + b * sb + k * sk,
 * leading dimension ld. */
struct head_mat {
  const float *base;
  int ld;
  long long sb, sk;
};

static int blas_error(cublasStatus_t s, td_error *err) {
  return td_errorf(err, s == CUBLAS_STATUS_ALLOC_FAILED ? TD_ENOMEM : TD_EBACKEND,
                   "cublasSgemmStridedBatched: %s", cublasGetStatusString(s));
}

/* For every (example, head): c (m, n) = alpha op(a) op(b), op(a) (m, k),
 * op(b) (k, n), all row-major. Row-major C = A B is column-major C^T =
 * B^T A^T, so the operands swap (as the backend's gemm does). One strided
 * batched call per head, over the examples: each call's outputs then lie
 * in disjoint address ranges (an example's t rows), where batching over
 * the heads would interleave them column by column. */
static int heads_gemm(cublasHandle_t blas, int batch, int h, bool ta, bool tb, int m, int n, int k,
                      float alpha, head_mat a, head_mat b, float *c, int ldc, long long csb,
                      long long csk, td_error *err) {
  const float beta = 0.0f;
  for (int i = 0; i < h; i++) {
    cublasStatus_t s = cublasSgemmStridedBatched(blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                                 ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha,
                                                 b.base + i * b.sk, b.ld, b.sb, a.base + i * a.sk,
                                                 a.ld, a.sb, &beta, c + i * csk, ldc, csb, batch);
    if (s != CUBLAS_STATUS_SUCCESS)
      return blas_error(s, err);
  }
  return TD_OK;
}

/* The views of one call's buffers: q, k and v in qkv (batch, t, 3f), the
 * weights (batch, h, t, t), and (batch, t, f) buffers (o, do). */
struct attn_views {
  head_mat q, k, v, p, o;
};

static attn_views views_of(int t, int h, int d, const float *qkv, const float *p, const float *o) {
  const long long f = (long long)h * d, tt = (long long)t * t;
  const int ld3 = (int)(3 * f);
  attn_views w;
  w.q = {qkv, ld3, t * 3 * f, d};
  w.k = {qkv ? qkv + f : nullptr, ld3, t * 3 * f, d};
  w.v = {qkv ? qkv + 2 * f : nullptr, ld3, t * 3 * f, d};
  w.p = {p, t, h * tt, tt};
  w.o = {o, (int)f, t * f, d};
  return w;
}

/* The causal softmax of each (t)-long row r of p (row r % t of its block):
 * max, exp and sum (double) over k <= i, then times 1 / sum; zeros above
 * the diagonal. */
__global__ void causal_softmax_kernel(size_t rows, int t, float *p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (size_t r = blockIdx.x * (size_t)kRowWarps + warp; r < rows;
       r += (size_t)gridDim.x * kRowWarps) {
    float *row = p + r * (size_t)t;
    const int i = (int)(r % (size_t)t);
    float mx = -INFINITY;
    for (int k = lane; k <= i; k += 32) {
      const float v = row[k];
      mx = v > mx ? v : mx;
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, mx, o);
      mx = v > mx ? v : mx;
    }
    double sum = 0.0;
    for (int k = lane; k <= i; k += 32) {
      const float e = expf(row[k] - mx);
      row[k] = e;
      sum += e;
    }
    for (int o = 16; o > 0; o >>= 1)
      sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float inv = (float)(1.0 / sum);
    for (int k = lane; k <= i; k += 32)
      row[k] *= inv;
    for (int k = i + 1 + lane; k < t; k += 32)
      row[k] = 0.0f;
  }
}

/* ds = p (dp - sum_k p dp) over k <= i (the sum in double), in place of
 * dp; zeros above the diagonal. */
__global__ void causal_softmax_bwd_kernel(size_t rows, int t, const float *__restrict__ p,
                                          float *__restrict__ dp) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (size_t r = blockIdx.x * (size_t)kRowWarps + warp; r < rows;
       r += (size_t)gridDim.x * kRowWarps) {
    const float *pr = p + r * (size_t)t;
    float *dr = dp + r * (size_t)t;
    const int i = (int)(r % (size_t)t);
    double dot = 0.0;
    for (int k = lane; k <= i; k += 32)
      dot += (double)pr[k] * dr[k];
    for (int o = 16; o > 0; o >>= 1)
      dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float fd = (float)dot;
    for (int k = lane; k <= i; k += 32)
      dr[k] = pr[k] * (dr[k] - fd);
    for (int k = i + 1 + lane; k < t; k += 32)
      dr[k] = 0.0f;
  }
}

/* Zeros above the diagonal of each (t, t) block of x (n blocks). */
__global__ void causal_zero_kernel(size_t total, int t, float *x) {
  for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    const size_t row = e / (size_t)t;
    const int j = (int)(e - row * (size_t)t), i = (int)(row % (size_t)t);
    if (j > i)
      x[e] = 0.0f;
  }
}

static float attn_scale(int d) { return 1.0f / sqrtf((float)d); }

} // namespace td_cuda

using namespace td_cuda;

extern "C" int td_cuda_embed_fwd(cudaStream_t stream, int rows, int cols, int vocab,
                                 const float *ids, const float *table, float *y, td_error *err) {
  if (rows == 0 || cols == 0)
    return TD_OK;
  embed_fwd_kernel<<<grid_for((size_t)rows, kRowWarps), kBlock, 0, stream>>>(rows, cols, vocab, ids,
                                                                             table, y);
  return launch_check("embed_fwd_kernel", err);
}

extern "C" size_t td_cuda_embed_bwd_scratch(int rows, int vocab) {
  const size_t words = round_up((size_t)(rows > 0 ? rows : 1) * sizeof(uint32_t));
  return 4 * words + round_up(((size_t)vocab + 1) * sizeof(uint32_t)) +
         round_up(sort_bytes(rows, vocab));
}

extern "C" int td_cuda_embed_bwd(cudaStream_t stream, int rows, int cols, int vocab,
                                 const float *ids, const float *dy, float *dtable, void *scratch,
                                 size_t scratch_bytes, td_error *err) {
  if (vocab == 0 || cols == 0)
    return TD_OK;
  if (rows == 0) {
    cudaError_t e =
        cudaMemsetAsync(dtable, 0, (size_t)vocab * (size_t)cols * sizeof *dtable, stream);
    return e == cudaSuccess ? TD_OK
                            : td_errorf(err, TD_EBACKEND, "embed_bwd: cudaMemsetAsync: %s",
                                        cudaGetErrorString(e));
  }
  if (scratch_bytes < td_cuda_embed_bwd_scratch(rows, vocab))
    return td_errorf(err, TD_EINVAL, "embed_bwd: scratch too small");
  const size_t words = round_up((size_t)rows * sizeof(uint32_t));
  char *s = static_cast<char *>(scratch);
  uint32_t *keys_in = reinterpret_cast<uint32_t *>(s);
  uint32_t *keys_out = reinterpret_cast<uint32_t *>(s + words);
  uint32_t *vals_in = reinterpret_cast<uint32_t *>(s + 2 * words);
  uint32_t *vals_out = reinterpret_cast<uint32_t *>(s + 3 * words);
  uint32_t *start = reinterpret_cast<uint32_t *>(s + 4 * words);
  const size_t start_bytes = round_up(((size_t)vocab + 1) * sizeof(uint32_t));
  void *temp = s + 4 * words + start_bytes;
  size_t temp_bytes = scratch_bytes - 4 * words - start_bytes;

  embed_keys_kernel<<<grid_for((size_t)rows, kBlock), kBlock, 0, stream>>>(rows, vocab, ids,
                                                                           keys_in, vals_in);
  int rc = launch_check("embed_keys_kernel", err);
  if (rc)
    return rc;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in,
                                                  vals_out, rows, 0, key_bits(vocab), stream);
  if (e != cudaSuccess)
    return td_errorf(err, TD_EBACKEND, "embed_bwd: cub::DeviceRadixSort::SortPairs: %s",
                     cudaGetErrorString(e));
  embed_starts_kernel<<<grid_for((size_t)vocab + 1, kBlock), kBlock, 0, stream>>>(rows, vocab,
                                                                                  keys_out, start);
  if ((rc = launch_check("embed_starts_kernel", err)))
    return rc;
  unsigned threads = 32;
  while (threads < 256 && threads < (unsigned)cols)
    threads *= 2;
  embed_sum_kernel<<<grid_for((size_t)vocab, 1), threads, 0, stream>>>(cols, vocab, start, vals_out,
                                                                       dy, dtable);
  return launch_check("embed_sum_kernel", err);
}

extern "C" int td_cuda_attn_probs(struct cublasContext *blas, cudaStream_t stream, int batch, int t,
                                  int h, int d, const float *qkv, float *p, td_error *err) {
  if (batch == 0 || t == 0)
    return TD_OK;
  const attn_views w = views_of(t, h, d, qkv, p, nullptr);
  /* scores = q k^T / sqrt(d), then the softmax in place. */
  int rc = heads_gemm(blas, batch, h, false, true, t, t, d, attn_scale(d), w.q, w.k, p, t, w.p.sb,
                      w.p.sk, err);
  if (rc)
    return rc;
  const size_t rows = (size_t)batch * h * t;
  causal_softmax_kernel<<<grid_for(rows, kRowWarps), kBlock, 0, stream>>>(rows, t, p);
  return launch_check("causal_softmax_kernel", err);
}

extern "C" int td_cuda_attn_mix(struct cublasContext *blas, cudaStream_t stream, int batch, int t,
                                int h, int d, const float *p, const float *qkv, float *o,
                                td_error *err) {
  (void)stream;
  if (batch == 0 || t == 0)
    return TD_OK;
  const attn_views w = views_of(t, h, d, qkv, p, o);
  /* o = p v */
  return heads_gemm(blas, batch, h, false, false, t, d, t, 1.0f, w.p, w.v, o, w.o.ld, w.o.sb,
                    w.o.sk, err);
}

extern "C" int td_cuda_attn_mix_bwd(struct cublasContext *blas, cudaStream_t stream, int batch,
                                    int t, int h, int d, const float *p, const float *qkv,
                                    const float *dout, float *dp, float *dqkv, td_error *err) {
  if (batch == 0 || t == 0)
    return TD_OK;
  const attn_views w = views_of(t, h, d, qkv, p, dout);
  /* dp = do v^T, zero above the diagonal (those weights are zeros). */
  int rc =
      heads_gemm(blas, batch, h, false, true, t, t, d, 1.0f, w.o, w.v, dp, t, w.p.sb, w.p.sk, err);
  if (rc)
    return rc;
  const size_t total = (size_t)batch * h * t * t;
  causal_zero_kernel<<<grid_for(total, kBlock), kBlock, 0, stream>>>(total, t, dp);
  if ((rc = launch_check("causal_zero_kernel", err)))
    return rc;
  /* dv = p^T do, into the values' columns of dqkv. */
  const long long f = (long long)h * d;
  return heads_gemm(blas, batch, h, true, false, t, d, t, 1.0f, w.p, w.o, dqkv + 2 * f, w.v.ld,
                    w.v.sb, w.v.sk, err);
}

extern "C" int td_cuda_attn_probs_bwd(struct cublasContext *blas, cudaStream_t stream, int batch,
                                      int t, int h, int d, const float *p, float *dp,
                                      const float *qkv, float *dqkv, td_error *err) {
  if (batch == 0 || t == 0)
    return TD_OK;
  const size_t rows = (size_t)batch * h * t;
  causal_softmax_bwd_kernel<<<grid_for(rows, kRowWarps), kBlock, 0, stream>>>(rows, t, p, dp);
  int rc = launch_check("causal_softmax_bwd_kernel", err);
  if (rc)
    return rc;
  const attn_views w = views_of(t, h, d, qkv, dp, nullptr);
  const long long f = (long long)h * d;
  const float scale = attn_scale(d);
  /* dq = ds k / sqrt(d), dk = ds^T q / sqrt(d) */
  if ((rc = heads_gemm(blas, batch, h, false, false, t, d, t, scale, w.p, w.k, dqkv, w.q.ld, w.q.sb,
                       w.q.sk, err)))
    return rc;
  return heads_gemm(blas, batch, h, true, false, t, d, t, scale, w.p, w.q, dqkv + f, w.k.ld, w.k.sb,
                    w.k.sk, err);
}
