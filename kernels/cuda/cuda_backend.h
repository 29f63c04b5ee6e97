/* The CUDA backend: the td_backend interface (backend.h) on one GPU.
 *
 * Each backend owns a non-blocking stream, a cuBLAS handle bound to it (FP32
 * math, no TF32, its own workspace), a cuDNN handle bound to it once a
 * convolution kernel is made (builds with cuDNN), and a device scratch
 * buffer for reductions and gather indices. Every op is enqueued on the
 * stream and returns at once, except: alloc, release, upload, download and
 * kernel_free, which return when the stream has drained (so host buffers
 * may be reused and results read as soon as they return); making a window
 * kernel allocates its device buffers, so, like alloc, it never happens
 * while a step is recorded. All pointers the ops take are device memory
 * from this backend's alloc, except host_ arguments.
 *
 * Results match the CPU backend: elementwise arithmetic rounds as the CPU
 * code does (no FMA contraction; transcendental functions differ by at most
 * a few ulp), the dropout mask is bit-identical, and every reduction runs in
 * a fixed order, so the same inputs give bitwise the same outputs run to
 * run on the same GPU.
 *
 * A CUDA or cuBLAS failure is an error value (TD_EBACKEND, or TD_ENOMEM for
 * a failed allocation), never an abort. The ops' interface has no room for
 * a message, so the failing call and its cause ("xent_rows_kernel:
 * an illegal memory access was encountered") are kept for
 * td_cuda_backend_last_error() and logged. A kernel fault poisons the CUDA
 * context of the whole process: every later call on that GPU fails too. */
#ifndef TD_CUDA_BACKEND_H
#define TD_CUDA_BACKEND_H

#include <stddef.h>

#include "backend.h"

/* A backend on GPU `device` (0-based, as CUDA numbers them). Makes the
 * device current on the calling thread. A machine without a usable GPU or
 * driver gets TD_EUNSUPPORTED with the CUDA call and its message ("no
 * usable GPU: cudaGetDeviceCount: CUDA driver version is insufficient for
 * CUDA runtime version"); a device that does not exist TD_EINVAL; a failure
 * to set the device up TD_EBACKEND naming the call. */
int td_cuda_backend_create(td_backend **out, int device, td_error *err);

/* The number of usable GPUs into *count. When there are none, *count is 0
 * and why (when not NULL) receives the reason, naming the CUDA call. Always
 * returns TD_OK: having no GPU is an answer, not a failure. */
int td_cuda_device_count(int *count, char *why, size_t why_len);

/* The backend's stream (a cudaStream_t), for ordering other work (NCCL
 * collectives, events, graph capture) against its ops. */
void *td_cuda_backend_stream(td_backend *be);

/* The GPU a CUDA backend runs on. */
int td_cuda_backend_device(td_backend *be);

/* The last failure of be's ops as one line ("" when none has failed). */
const char *td_cuda_backend_last_error(td_backend *be);

/* Free and total memory of GPU `device` in bytes. Leaves the calling
 * thread's current device as it was. TD_EUNSUPPORTED without a usable GPU,
 * TD_EINVAL for a device that does not exist, TD_EBACKEND when the query
 * fails. */
int td_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes, td_error *err);

#endif
