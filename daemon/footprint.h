/* The device memory a job will take, known before it runs: what the engine
 * allocates per replica through its backend (daemon/train.c replica_data
 * and replicas_start, daemon/plan.c td_state_init), what the CUDA backend
 * holds of its own on each GPU, and so whether a GPU job fits the free
 * memory of its GPUs. Sizes come from the compiled plan and the datasets'
 * headers: nothing is loaded and no device is touched. */
#ifndef TD_FOOTPRINT_H
#define TD_FOOTPRINT_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "train.h"
#include "traind/v1/job.pb-c.h"

/* The CUDA backend's own memory on each GPU, next to the engine's buffers
 * (kernels/cuda/cuda_backend.c):
 *  - cuBLAS's workspace (BLAS_WORKSPACE_BYTES there);
 *  - the scratch buffer, which starts at SCRATCH_MIN_BYTES and doubles
 *    until the largest need of an op fits (the shuffle's, the reductions');
 *  - the CUDA context, the kernels and cuBLAS's state, and cudaMalloc's
 *    own granularity (whole 2 MiB pages): not computable, so a margin. */
#define TD_FOOTPRINT_CUBLAS_WORKSPACE ((size_t)32 << 20)
#define TD_FOOTPRINT_SCRATCH_MIN ((size_t)1 << 20)
#define TD_FOOTPRINT_CUDA_CONTEXT ((size_t)512 << 20)
/* CUB's temporary storage for the shuffle's radix sort of n pairs cannot
 * be computed without CUDA (it depends on the GPU's tuning); it is bounded
 * by its alternate key and value buffers (2 n uint32), a byte per example
 * for its look-back state (1 KiB per tile; tiles hold thousands of items),
 * and this much for its histograms, counters and alignment. */
#define TD_FOOTPRINT_CUB_SLACK ((size_t)1 << 20)
/* The engine's buffers on a GPU are whole granules of this many bytes
 * (cuda_alloc rounds every allocation up to it, and an empty one to one). */
#define TD_FOOTPRINT_GRANULE ((size_t)256)

/* A job's memory, in bytes. Per-replica figures are for each replica:
 * every replica allocates the same, each on its own device. */
typedef struct td_footprint {
  int gpu;      /* devices.kind gpu: the CUDA backend, whose memory is not the host's */
  int replicas; /* devices */
  uint32_t batch, shard, steps_per_epoch; /* global batch, its rows per replica */
  uint32_t train_n, test_n;               /* examples, after the limits */
  uint32_t train_dim, test_dim;           /* features per example */

  /* Per replica, each buffer counted as its backend allocates it (whole
   * granules on a GPU). engine_bytes is their sum: exactly what the engine
   * allocates through the backend, and holds from td_trainer_init to
   * td_trainer_free. */
  size_t model_bytes; /* parameters, gradients, optimizer state */
  size_t arena_bytes; /* activations and their gradients for a shard */
  size_t step_bytes;  /* the step record, counter and metrics; on a GPU also
                         the example order, the offsets and the step table */
  size_t data_bytes;  /* on a GPU: the copies of the training and test sets */
  size_t engine_bytes;
  /* More on replica 0's device while td_trainer_resume reads a checkpoint
   * (a second td_state); not in engine_bytes or total_bytes. */
  size_t resume_bytes;

  /* GPU jobs: the CUDA backend's own memory on each GPU (workspace,
   * scratch_bytes of scratch at its largest, the context margin), and the
   * total each GPU needs: engine_bytes + fixed_bytes. */
  size_t scratch_bytes;
  size_t fixed_bytes;
  size_t total_bytes;
} td_footprint;

/* Sizes the job: compiles its plan at the per-replica batch (as
 * td_trainer_check does), resolves its dataset files under o's data roots
 * and reads their headers (td_idx_shape, td_hdf5_shape). Errors are those
 * of the compile, the resolution and the headers. A spec whose batch is
 * larger than its training set is sized (0 steps per epoch); the trainer
 * refuses it later, with the field named. */
int td_job_footprint(const Traind__V1__JobSpec *spec, const td_trainer_opts *o, td_footprint *out,
                     td_error *err);

/* Whether f->total_bytes fit in free_bytes on GPU `gpu`: TD_OK, or TD_ENOMEM
 * (RESOURCE_EXHAUSTED over gRPC) with a one-line message naming the GPU,
 * what the job needs there and what is free, where the need comes from,
 * and what to change. */
int td_footprint_fits(const td_footprint *f, int gpu, size_t free_bytes, td_error *err);

#endif
