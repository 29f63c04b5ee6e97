/* The NCCL collectives. Everywhere: a machine without a usable GPU gets a
 * clear TD_EUNSUPPORTED, never a crash. With a GPU (CTest label gpu; exit
 * 77 without one): allreduce (sum and mean), broadcast and barrier over
 * every GPU of the machine, each rank on its own thread, checked against the
 * host's arithmetic. */
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "nccl_collective.h"

enum { N = 100003, MAX_GPUS = 8 };

typedef struct rank_arg {
  td_comm *comm;
  int rank, gpu, rc;
  float *host; /* (N) the rank's input, then its result */
} rank_arg;

/* Each rank: upload, allreduce(SUM), allreduce(MEAN) of a copy, broadcast
 * from rank 0 of a third, barrier; results back into host (3 * N). */
static void *rank_main(void *p) {
  rank_arg *a = p;
  float *d = NULL;
  cudaSetDevice(a->gpu);
  if (cudaMalloc((void **)&d, 3 * N * sizeof(float)) != cudaSuccess) {
    a->rc = TD_ENOMEM;
    return NULL;
  }
  cudaMemcpy(d, a->host, N * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemcpy(d + N, a->host, N * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemcpy(d + 2 * N, a->host, N * sizeof(float), cudaMemcpyHostToDevice);
  const td_comm_ops *ops = a->comm->ops;
  a->rc = ops->allreduce(a->comm, a->rank, d, N, TD_REDUCE_SUM);
  if (!a->rc)
    a->rc = ops->allreduce(a->comm, a->rank, d + N, N, TD_REDUCE_MEAN);
  if (!a->rc)
    a->rc = ops->broadcast(a->comm, a->rank, d + 2 * N, N, 0);
  if (!a->rc)
    a->rc = ops->barrier(a->comm, a->rank);
  cudaMemcpy(a->host, d, 3 * N * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d);
  return NULL;
}

int main(void) {
  int count = 0;
  cudaError_t ce = cudaGetDeviceCount(&count);
  if (ce != cudaSuccess || count == 0) {
    td_comm *c = NULL;
    td_error err = {0};
    int gpu = 0;
    int rc = td_comm_nccl_create(&c, 1, &gpu, NULL, &err);
    CHECK(rc == TD_EUNSUPPORTED && c == NULL, "without a GPU: rc %d", rc);
    CHECK_STR_CONTAINS(err.msg, "no usable GPU");
    int failed = td_check_exit();
    printf("no GPU here (%s): the NCCL collectives' GPU checks are skipped\n", err.msg);
    return failed ? failed : 77;
  }
  int size = count < MAX_GPUS ? count : MAX_GPUS;
  int gpus[MAX_GPUS];
  for (int i = 0; i < size; i++)
    gpus[i] = i;
  td_comm *c = NULL;
  td_error err = {0};
  int rc = td_comm_nccl_create(&c, size, gpus, NULL, &err);
  CHECK(rc == 0, "%s", err.msg);
  if (rc)
    return td_check_exit();
  rank_arg args[MAX_GPUS];
  pthread_t th[MAX_GPUS];
  for (int r = 0; r < size; r++) {
    args[r] = (rank_arg){.comm = c, .rank = r, .gpu = gpus[r]};
    args[r].host = malloc(3 * N * sizeof(float));
    for (int i = 0; i < N; i++)
      args[r].host[i] = (float)((i * 7 + r * 13) % 101) - 50.0f;
  }
  float *want_sum = calloc(N, sizeof(float));
  for (int r = 0; r < size; r++)
    for (int i = 0; i < N; i++)
      want_sum[i] += args[r].host[i];
  float *root = malloc(N * sizeof(float));
  memcpy(root, args[0].host, N * sizeof(float));
  for (int r = 0; r < size; r++)
    pthread_create(&th[r], NULL, rank_main, &args[r]);
  for (int r = 0; r < size; r++)
    pthread_join(th[r], NULL);
  for (int r = 0; r < size; r++) {
    CHECK(args[r].rc == 0, "rank %d: rc %d", r, args[r].rc);
    int bad_sum = 0, bad_mean = 0, bad_bcast = 0;
    for (int i = 0; i < N; i++) {
      /* Small integers: every order of summation is exact. */
      bad_sum += args[r].host[i] != want_sum[i];
      bad_mean += fabsf(args[r].host[N + i] - want_sum[i] / (float)size) > 1e-5f;
      bad_bcast += args[r].host[2 * N + i] != root[i];
    }
    CHECK(!bad_sum && !bad_mean && !bad_bcast,
          "rank %d of %d: %d sums, %d means, %d broadcast values wrong", r, size, bad_sum, bad_mean,
          bad_bcast);
    free(args[r].host);
  }
  free(want_sum);
  free(root);
  td_comm_destroy(c);
  printf("NCCL collectives over %d GPU(s) checked\n", size);
  return td_check_exit();
}
