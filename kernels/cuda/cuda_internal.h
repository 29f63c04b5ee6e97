/* Inside the CUDA backend: the launchers of its kernels, shared by the
 * backend table (cuda_backend.c, plain C) and the kernels (*.cu, one file
 * per fused op family).
 *
 * Every launcher enqueues its kernel(s) on `stream`, checks the launch and
 * returns TD_OK, or TD_EBACKEND with err->msg naming the kernel and the
 * CUDA error ("dropout_kernel: invalid configuration argument"). Launchers
 * do no allocation: ops that reduce take a device scratch buffer of at
 * least the bytes their *_scratch() function asks for. Sizes are checked by
 * the caller (non-negative, within int where the interface says int). */
#ifndef TD_CUDA_INTERNAL_H
#define TD_CUDA_INTERNAL_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"

/* elementwise.cu: x[i] = value; out[i] = a[i] * b[i]. */
int td_cuda_fill(cudaStream_t stream, float *x, size_t n, float value, td_error *err);
int td_cuda_mul(cudaStream_t stream, size_t n, const float *a, const float *b, float *out,
                td_error *err);
int td_cuda_add(cudaStream_t stream, size_t n, const float *a, const float *b, float *out,
                td_error *err);

/* gather.cu: dst (count, dim) = rows idx[*off + i] of src (off may be
 * NULL: 0), labels likewise; idx and off are device memory. */
int td_cuda_gather(cudaStream_t stream, const td_rows *l, const float *src,
                   const int32_t *src_labels, const uint32_t *idx, const uint32_t *off,
                   size_t count, float *dst, int32_t *dst_labels, td_error *err);

/* step.cu: backend.h's step_begin and record. */
int td_cuda_step_begin(cudaStream_t stream, const void *table, size_t rec_bytes, uint32_t *counter,
                       void *cur, td_error *err);
int td_cuda_record(cudaStream_t stream, const uint32_t *slot, const float *src, size_t n,
                   float *dst, td_error *err);

/* shuffle.cu: backend.h's shuffle, with CUB's stable radix sort. The
 * scratch holds three arrays of n words and CUB's temporary storage:
 * td_cuda_shuffle_scratch(n) bytes. */
size_t td_cuda_shuffle_scratch(uint32_t n);
int td_cuda_shuffle(cudaStream_t stream, uint32_t n, int rounds, const uint32_t *round_keys,
                    uint32_t *order, void *scratch, size_t scratch_bytes, td_error *err);

/* bias_act.cu: backend.h's bias_act_fwd and bias_act_bwd. The column sums
 * of the backward pass are two fixed-order passes through scratch. */
int td_cuda_bias_act_fwd(cudaStream_t stream, td_act act, int rows, int cols, const float *bias,
                         float *z, float *y, td_error *err);
size_t td_cuda_bias_act_bwd_scratch(int rows, int cols);
int td_cuda_bias_act_bwd(cudaStream_t stream, td_act act, int rows, int cols, const float *z,
                         const float *y, const float *dy, float *dz, float *dbias, void *scratch,
                         td_error *err);

/* xent.cu: the losses against integer labels. Per-row values go to
 * scratch, then one block sums them in a fixed order into out[0..1]. */
size_t td_cuda_loss_scratch(int rows);
int td_cuda_softmax_xent(cudaStream_t stream, int rows, int cols, const float *logits,
                         const int32_t *labels, float grad_scale, float *dlogits, float *out,
                         void *scratch, td_error *err);
int td_cuda_mse_onehot(cudaStream_t stream, int rows, int cols, const float *y,
                       const int32_t *labels, float grad_scale, float *dy, float *out,
                       void *scratch, td_error *err);

/* dropout.cu: the counter-based threefry2x32 mask of backend.h. */
int td_cuda_dropout_fwd(cudaStream_t stream, size_t n, uint64_t first, float rate,
                        const uint32_t *key, const float *x, float *mask, float *y, td_error *err);

/* reduce.cu: out[0] = sum of x^2 in double, per-block partials then one
 * block, stored as float. */
size_t td_cuda_sumsq_scratch(size_t n);
int td_cuda_sumsq(cudaStream_t stream, size_t n, const float *x, float *out, void *scratch,
                  td_error *err);

/* optim.cu: one fused optimizer pass (backend.h's opt_pass). */
int td_cuda_opt_pass(cudaStream_t stream, const td_opt_pass *pass, const td_opt_scalars *sc,
                     const float *norm_sq, const float *guard, size_t n, float *p, float *g,
                     float *s1, float *s2, td_error *err);

/* Window kernels (pool.cu, conv.cu): what pool_create and conv_create
 * hand the engine. Each begins with its kind, so that kernel_free can tell
 * them apart. A kernel owns every buffer it uses (allocated when it is
 * created, none in forward or backward), so that recorded steps replay
 * with nothing to allocate. Creating and freeing wait for the device;
 * forward and backward only enqueue. */
enum { TD_CUDA_KERNEL_POOL = 0x706f6f6c, TD_CUDA_KERNEL_CONV = 0x636f6e76 };

static inline int td_cuda_kernel_kind(const void *kernel) { return *(const int *)kernel; }

/* pool.cu: max and average pooling over NHWC on the backend's own
 * kernels, forward over the whole batch of the geometry. Max pooling
 * takes the first largest value of each window (rows, then columns, as
 * the CPU's oneDNN does) and keeps where it was for backward. Backward
 * gathers, for each input value, the gradients of the windows that cover
 * it, in a fixed order: no atomics, the same bits every run. */
int td_cuda_pool_create(const td_window *g, td_pool_kind kind, void **kernel, td_error *err);
int td_cuda_pool_fwd(cudaStream_t stream, void *kernel, const float *x, float *y, td_error *err);
int td_cuda_pool_bwd(cudaStream_t stream, void *kernel, const float *dy, float *dx, td_error *err);
void td_cuda_pool_free(void *kernel);

/* conv.cu (built with cuDNN only): convolutions with cuDNN on NHWC
 * activations, deterministic FP32 algorithms (no TF32), the kernel
 * transposed from HWIO to cuDNN's KRSC into the kernel's own buffer.
 * Asymmetric padding (SAME with an even window or stride 2, or explicit)
 * goes through a zero-padded copy of the input owned by the kernel. dnn is
 * the backend's cuDNN handle, bound to its stream. */
struct cudnnContext;
int td_cuda_conv_create(struct cudnnContext *dnn, const td_window *g, void **kernel, td_error *err);
int td_cuda_conv_fwd(struct cudnnContext *dnn, cudaStream_t stream, void *kernel, const float *x,
                     const float *w, float *y, td_error *err);
int td_cuda_conv_bwd(struct cudnnContext *dnn, cudaStream_t stream, void *kernel, const float *x,
                     const float *w, const float *dy, float *dx, float *dw, td_error *err);
void td_cuda_conv_free(void *kernel);

/* norm.cu: batch norm and layer norm (backend.h's col_moments, bn_*,
 * ln_*), with the CPU backend's float operations and double sums.
 * Column sums (batch statistics, scale and bias gradients) are two
 * fixed-order passes through scratch, td_cuda_colsum_scratch(rows, cols)
 * bytes; row sums (layer norm) one block per row. */
size_t td_cuda_colsum_scratch(int rows, int cols);
int td_cuda_col_moments(cudaStream_t stream, int rows, int cols, const float *x, float *m,
                        void *scratch, td_error *err);
int td_cuda_bn_fwd(cudaStream_t stream, int train, int rows, int cols, const float *x,
                   const float *m, float *running, float momentum, float eps, const float *scale,
                   const float *bias, float *y, float *saved, td_error *err);
int td_cuda_bn_bwd_sums(cudaStream_t stream, int rows, int cols, const float *x, const float *dy,
                        const float *saved, float *dscale, float *dbias, float *s, void *scratch,
                        td_error *err);
int td_cuda_bn_bwd_dx(cudaStream_t stream, int rows, int cols, const float *x, const float *dy,
                      const float *saved, const float *scale, const float *s, float *dx,
                      td_error *err);
int td_cuda_ln_fwd(cudaStream_t stream, int rows, int cols, float eps, const float *x,
                   const float *scale, const float *bias, float *y, float *saved, td_error *err);
int td_cuda_ln_bwd(cudaStream_t stream, int rows, int cols, const float *x, const float *dy,
                   const float *saved, const float *scale, float *dx, float *dscale, float *dbias,
                   void *scratch, td_error *err);

/* seq.cu: backend.h's embed_* and attn_* (the twins of cpu_seq.c).
 * Embedding backward sorts the rows by id (CUB's stable radix sort) and
 * adds each id's rows in row order, as the CPU does: no atomics, the CPU's
 * bits; its scratch is td_cuda_embed_bwd_scratch(rows, vocab) bytes. The
 * attention launchers run their GEMMs through blas (the backend's cuBLAS
 * handle, bound to stream): strided batched calls over the (example,
 * head) views of qkv, no copies and no allocation. */
size_t td_cuda_embed_bwd_scratch(int rows, int vocab);
int td_cuda_embed_fwd(cudaStream_t stream, int rows, int cols, int vocab, const float *ids,
                      const float *table, float *y, td_error *err);
int td_cuda_embed_bwd(cudaStream_t stream, int rows, int cols, int vocab, const float *ids,
                      const float *dy, float *dtable, void *scratch, size_t scratch_bytes,
                      td_error *err);
struct cublasContext;
int td_cuda_attn_probs(struct cublasContext *blas, cudaStream_t stream, int batch, int t, int h,
                       int d, const float *qkv, float *p, td_error *err);
int td_cuda_attn_mix(struct cublasContext *blas, cudaStream_t stream, int batch, int t, int h,
                     int d, const float *p, const float *qkv, float *o, td_error *err);
int td_cuda_attn_mix_bwd(struct cublasContext *blas, cudaStream_t stream, int batch, int t, int h,
                         int d, const float *p, const float *qkv, const float *dout, float *dp,
                         float *dqkv, td_error *err);
int td_cuda_attn_probs_bwd(struct cublasContext *blas, cudaStream_t stream, int batch, int t, int h,
                           int d, const float *p, float *dp, const float *qkv, float *dqkv,
                           td_error *err);

#ifdef __cplusplus
}
#endif

#endif
