/* The GPUs a job can train on (see gpus.h). */
#include "gpus.h"

#include <stdio.h>

#ifdef TRAIND_HAVE_CUDA
#include <stdlib.h>

#include "cuda_backend.h"
#ifdef TRAIND_HAVE_NCCL
#include "nccl_collective.h"
#endif

int td_gpus_count(char *why, size_t why_len) {
  int n = 0;
  if (td_cuda_device_count(&n, why, why_len) != TD_OK)
    n = 0;
  return n;
}

int td_gpu_backend(void *arg, int rank, int threads, td_backend **out, td_error *err) {
  (void)threads;
  const int *gpus = arg;
  return td_cuda_backend_create(out, gpus[rank], err);
}

int td_gpu_memory(int gpu, size_t *free_bytes, size_t *total_bytes, td_error *err) {
  return td_cuda_mem_info(gpu, free_bytes, total_bytes, err);
}

#ifdef TRAIND_HAVE_NCCL
/* NCCL over the replicas' GPUs, each rank's collectives on the stream of
 * its backend: the allreduce follows the backward pass in stream order and
 * is captured into the recorded step with it. */
static int gpu_comm(void *arg, int n, td_backend *const *bes, td_comm **out, td_error *err) {
  (void)arg;
  int *gpus = malloc((size_t)n * sizeof *gpus);
  void **streams = malloc((size_t)n * sizeof *streams);
  int rc = gpus && streams ? TD_OK : td_errorf(err, TD_ENOMEM, "out of memory");
  for (int r = 0; r < n && !rc; r++) {
    gpus[r] = td_cuda_backend_device(bes[r]);
    streams[r] = td_cuda_backend_stream(bes[r]);
  }
  if (!rc)
    rc = td_comm_nccl_create(out, n, gpus, streams, err);
  free(gpus);
  free(streams);
  return rc;
}

td_comm_factory td_gpu_comm(void) { return gpu_comm; }
#else
td_comm_factory td_gpu_comm(void) { return NULL; }
#endif

#else

static const char no_cuda[] =
    "this build of traind has no CUDA backend (it was built without nvcc; see "
    "TRAIND_CUDA in the README)";

int td_gpus_count(char *why, size_t why_len) {
  snprintf(why, why_len, "%s", no_cuda);
  return 0;
}

int td_gpu_backend(void *arg, int rank, int threads, td_backend **out, td_error *err) {
  (void)arg;
  (void)rank;
  (void)threads;
  *out = NULL;
  return td_errorf(err, TD_EUNSUPPORTED, "%s", no_cuda);
}

int td_gpu_memory(int gpu, size_t *free_bytes, size_t *total_bytes, td_error *err) {
  (void)gpu;
  *free_bytes = *total_bytes = 0;
  return td_errorf(err, TD_EUNSUPPORTED, "%s", no_cuda);
}

td_comm_factory td_gpu_comm(void) { return NULL; }

#endif
