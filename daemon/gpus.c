/* The daemon's GPUs (see gpus.h). */
#include "gpus.h"

#include <stdio.h>

#ifdef TRAIND_HAVE_CUDA
#include "cuda_backend.h"

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

#endif
