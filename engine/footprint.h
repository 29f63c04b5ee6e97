/* The memory a job will take, known before it runs: what the engine
 * allocates per replica through its backend (engine/train.c replica_data
 * and replicas_start, engine/plan.c td_state_init), what the CUDA backend
 * holds of its own on each GPU, and what the job holds in host memory
 * (its datasets, the engine's buffers for CPU jobs, the trainer's tables,
 * the checkpoint writer's snapshot and file image); and so whether a job
 * fits the memory the daemon may use and a GPU job the free memory of its
 * GPUs. Sizes come from the compiled plan and the datasets' headers:
 * nothing is loaded and no device is touched. */
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
/* Host memory of a job that does not grow with it: the libraries' own
 * (HDF5's caches and free lists, zlib's window, the touched part of the
 * worker's and writer's stacks) and the allocator's rounding. */
#define TD_FOOTPRINT_HOST_MARGIN ((size_t)8 << 20)
/* The CPU backend's allocations are whole multiples of this many bytes
 * (cpu_alloc's alignment). */
#define TD_FOOTPRINT_CPU_ALIGN ((size_t)64)
/* A bound on the HDF5 metadata a checkpoint holds per leaf (the dataset's
 * object header and its link in the group), next to the floats. */
#define TD_FOOTPRINT_CKPT_LEAF_META ((size_t)2 << 10)

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

  /* Host memory, every job (a GPU job's datasets are loaded on the host
   * before they are uploaded). host_bytes is the peak: the largest of the
   * datasets' loading (load_bytes), the start (host_data + host_engine +
   * host_trainer + init_host_bytes) and the running job, which holds
   * host_data + host_engine + host_trainer + ckpt_bytes and, at its
   * largest moment, either a checkpoint being read to resume
   * (resume_host_bytes) or the file image a checkpoint is built in
   * (image_bytes, kept from the first checkpoint on); plus
   * TD_FOOTPRINT_HOST_MARGIN. */
  int64_t total_steps;       /* steps the job runs (epochs, max_steps) */
  size_t host_data_bytes;    /* the training and test sets: float32 features, int32 labels */
  size_t load_bytes;         /* while loading: the sets so far and the file's raw bytes */
  size_t host_engine_bytes;  /* CPU jobs: every replica's engine_bytes, as allocated */
  size_t host_trainer_bytes; /* example order, offsets, step tables, metrics read back,
                                the run's step points, the plan, the metric ring */
  size_t ckpt_bytes;         /* the writer's snapshot buffer and the spec as JSON (three copies) */
  size_t image_bytes;        /* the HDF5 image a checkpoint is built in */
  size_t resume_host_bytes;  /* reading a checkpoint: its floats, and on a CPU job the
                               second state (resume_bytes) */
  size_t init_host_bytes;    /* drawing the initial parameters, reading init_from */
  size_t host_bytes;

  /* The model's largest weight matrices, for messages (name "" when
   * fewer). */
  struct {
    char name[64];
    uint32_t rows, cols;
  } largest[2];
} td_footprint;

/* Where the memory for jobs comes from, and how much there is. */
typedef struct td_memory_limit {
  size_t bytes;     /* what the daemon's jobs may hold together */
  char source[256]; /* for messages: "memory_limit_bytes in the config", ... */
} td_memory_limit;

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

/* The job run without checkpoints (`traind run` without --checkpoint-dir):
 * no writer, no resume; host_bytes recomputed. */
void td_footprint_no_checkpoints(td_footprint *f);

/* Whether f->host_bytes fit in what is left of the limit when jobs
 * holding `held` bytes run: TD_OK, or TD_ENOMEM (RESOURCE_EXHAUSTED) with
 * a one-line message giving what the job needs, the limit and where it
 * comes from, the parts (largest first) and what to make smaller. */
int td_footprint_admit(const td_footprint *f, const td_memory_limit *lim, size_t held,
                       td_error *err);

/* The memory the daemon's jobs may use: `configured` bytes when nonzero;
 * otherwise the daemon's cgroup limit (cgroup v2 memory.max of its own
 * cgroup and its ancestors, or v1 memory.limit_in_bytes) less what the
 * daemon holds now (VmRSS), or the machine's MemAvailable, whichever is
 * smaller. Reads /proc/self/cgroup, /sys/fs/cgroup, /proc/meminfo and
 * /proc/self/status. */
int td_memory_limit_detect(uint64_t configured, td_memory_limit *out, td_error *err);
/* The same with the files named (for tests): proc_cgroup is
 * /proc/self/cgroup, cgroup_root /sys/fs/cgroup, meminfo /proc/meminfo,
 * status /proc/self/status. */
int td_memory_limit_from(uint64_t configured, const char *proc_cgroup, const char *cgroup_root,
                         const char *meminfo, const char *status, td_memory_limit *out,
                         td_error *err);
/* "512.0 MiB", "1.25 GiB" into buf. */
const char *td_footprint_human(char *buf, size_t len, size_t bytes);

#endif
