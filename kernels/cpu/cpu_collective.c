/* In-process collectives for CPU replicas (see collective.h). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "collective.h"

typedef struct cpu_comm {
  pthread_barrier_t bar;
  float **bufs; /* (size) each rank's buffer for the collective under way */
} cpu_comm;

static int wait_all(cpu_comm *c) {
  int rc = pthread_barrier_wait(&c->bar);
  return rc == 0 || rc == PTHREAD_BARRIER_SERIAL_THREAD ? TD_OK : TD_EINTERNAL;
}

/* The rank's share of n elements: [*lo, *hi). */
static void slice(size_t n, int size, int rank, size_t *lo, size_t *hi) {
  *lo = n * (size_t)rank / (size_t)size;
  *hi = n * (size_t)(rank + 1) / (size_t)size;
}

static int cpu_allreduce(td_comm *comm, int rank, float *buf, size_t n, td_reduce_op op) {
  if (comm->size == 1)
    return TD_OK;
  cpu_comm *c = comm->ctx;
  c->bufs[rank] = buf;
  int rc = wait_all(c);
  if (rc)
    return rc;
  size_t lo, hi;
  slice(n, comm->size, rank, &lo, &hi);
  const float inv = op == TD_REDUCE_MEAN ? 1.0f / (float)comm->size : 1.0f;
  for (size_t i = lo; i < hi; i++) {
    float s = c->bufs[0][i];
    for (int r = 1; r < comm->size; r++)
      s += c->bufs[r][i];
    if (op == TD_REDUCE_MEAN)
      s *= inv;
    for (int r = 0; r < comm->size; r++)
      c->bufs[r][i] = s;
  }
  return wait_all(c);
}

static int cpu_broadcast(td_comm *comm, int rank, float *buf, size_t n, int root) {
  if (comm->size == 1)
    return TD_OK;
  cpu_comm *c = comm->ctx;
  c->bufs[rank] = buf;
  int rc = wait_all(c);
  if (rc)
    return rc;
  if (rank != root)
    memcpy(buf, c->bufs[root], n * sizeof *buf);
  return wait_all(c);
}

static int cpu_barrier(td_comm *comm, int rank) {
  (void)rank;
  return comm->size == 1 ? TD_OK : wait_all(comm->ctx);
}

static void cpu_destroy(td_comm *comm) {
  cpu_comm *c = comm->ctx;
  pthread_barrier_destroy(&c->bar);
  free(c->bufs);
  free(c);
  free(comm);
}

static const td_comm_ops cpu_comm_ops = {
    .name = "cpu",
    .allreduce = cpu_allreduce,
    .broadcast = cpu_broadcast,
    .barrier = cpu_barrier,
    .destroy = cpu_destroy,
};

int td_comm_cpu_create(td_comm **out, int size, td_error *err) {
  *out = NULL;
  if (size < 1)
    return td_errorf(err, TD_EINVAL, "a communicator needs at least one rank");
  td_comm *comm = calloc(1, sizeof *comm);
  cpu_comm *c = calloc(1, sizeof *c);
  float **bufs = calloc((size_t)size, sizeof *bufs);
  if (!comm || !c || !bufs || pthread_barrier_init(&c->bar, NULL, (unsigned)size) != 0) {
    free(comm);
    free(c);
    free(bufs);
    return td_errorf(err, TD_ENOMEM, "cannot create a communicator of %d ranks", size);
  }
  c->bufs = bufs;
  comm->ops = &cpu_comm_ops;
  comm->size = size;
  comm->ctx = c;
  *out = comm;
  return TD_OK;
}

void td_comm_destroy(td_comm *c) {
  if (c)
    c->ops->destroy(c);
}
