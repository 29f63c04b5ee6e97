/* The GPUs traind can train on: none in a build without the CUDA
 * backend, else what the CUDA runtime reports (none, with the reason, on a
 * machine without a GPU or driver). */
#ifndef TD_GPUS_H
#define TD_GPUS_H

#include <stddef.h>

#include "train.h"

/* The number of usable GPUs; when 0, why says why (for messages). */
int td_gpus_count(char *why, size_t why_len);
/* A td_backend_factory for GPU replicas: arg is an int array mapping each
 * rank to its GPU. TD_EUNSUPPORTED in a build without CUDA. */
int td_gpu_backend(void *arg, int rank, int threads, td_backend **out, td_error *err);
/* The communicator factory of multi-GPU jobs (NCCL on the replicas'
 * streams), or NULL in a build without NCCL. */
td_comm_factory td_gpu_comm(void);
/* Free and total memory of a GPU. */
int td_gpu_memory(int gpu, size_t *free_bytes, size_t *total_bytes, td_error *err);

#endif
