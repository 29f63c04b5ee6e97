/* NCCL collectives for GPU replicas (see nccl_collective.h). */
#include "nccl_collective.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>

typedef struct nccl_ctx {
  ncclComm_t *comms;     /* (size) */
  cudaStream_t *streams; /* (size) */
  int own_streams;       /* created here (else the callers') */
  int *gpus;             /* (size) */
  float **scratch;       /* (size) one float per rank, for barrier() */
} nccl_ctx;

static int nccl_fail(ncclResult_t r) { return r == ncclSuccess ? TD_OK : TD_EBACKEND; }

static int nccl_allreduce(td_comm *c, int rank, float *buf, size_t n, td_reduce_op op) {
  nccl_ctx *x = c->ctx;
  if (cudaSetDevice(x->gpus[rank]) != cudaSuccess)
    return TD_EBACKEND;
  ncclResult_t r = ncclGroupStart();
  if (r == ncclSuccess)
    r = ncclAllReduce(buf, buf, n, ncclFloat, op == TD_REDUCE_MEAN ? ncclAvg : ncclSum,
                      x->comms[rank], x->streams[rank]);
  ncclResult_t e = ncclGroupEnd();
  return nccl_fail(r != ncclSuccess ? r : e);
}

static int nccl_broadcast(td_comm *c, int rank, float *buf, size_t n, int root) {
  nccl_ctx *x = c->ctx;
  if (cudaSetDevice(x->gpus[rank]) != cudaSuccess)
    return TD_EBACKEND;
  return nccl_fail(ncclBroadcast(buf, buf, n, ncclFloat, root, x->comms[rank], x->streams[rank]));
}

static int nccl_barrier(td_comm *c, int rank) {
  nccl_ctx *x = c->ctx;
  int rc = nccl_allreduce(c, rank, x->scratch[rank], 1, TD_REDUCE_SUM);
  if (!rc && cudaStreamSynchronize(x->streams[rank]) != cudaSuccess)
    rc = TD_EBACKEND;
  return rc;
}

static void free_ctx(nccl_ctx *x, int size) {
  for (int r = 0; r < size; r++) {
    if (x->comms && x->comms[r])
      ncclCommDestroy(x->comms[r]);
    if (x->gpus)
      cudaSetDevice(x->gpus[r]);
    if (x->own_streams && x->streams && x->streams[r])
      cudaStreamDestroy(x->streams[r]);
    if (x->scratch && x->scratch[r])
      cudaFree(x->scratch[r]);
  }
  free(x->comms);
  free(x->streams);
  free(x->gpus);
  free(x->scratch);
  free(x);
}

static void nccl_destroy(td_comm *c) {
  free_ctx(c->ctx, c->size);
  free(c);
}

static const td_comm_ops nccl_ops = {
    .name = "nccl",
    .allreduce = nccl_allreduce,
    .broadcast = nccl_broadcast,
    .barrier = nccl_barrier,
    .destroy = nccl_destroy,
};

int td_comm_nccl_create(td_comm **out, int size, const int *gpus, void *const *streams,
                        td_error *err) {
  *out = NULL;
  if (size < 1)
    return td_errorf(err, TD_EINVAL, "a communicator needs at least one rank");
  int count = 0;
  cudaError_t ce = cudaGetDeviceCount(&count);
  if (ce != cudaSuccess)
    return td_errorf(err, TD_EUNSUPPORTED, "no usable GPU: cudaGetDeviceCount: %s",
                     cudaGetErrorString(ce));
  if (count == 0)
    return td_errorf(err, TD_EUNSUPPORTED, "no usable GPU: the CUDA runtime sees none");
  for (int r = 0; r < size; r++)
    if (gpus[r] < 0 || gpus[r] >= count)
      return td_errorf(err, TD_EINVAL, "GPU %d does not exist (this machine has %d)", gpus[r],
                       count);
  nccl_ctx *x = calloc(1, sizeof *x);
  td_comm *c = calloc(1, sizeof *c);
  if (x) {
    x->comms = calloc((size_t)size, sizeof *x->comms);
    x->streams = calloc((size_t)size, sizeof *x->streams);
    x->gpus = calloc((size_t)size, sizeof *x->gpus);
    x->scratch = calloc((size_t)size, sizeof *x->scratch);
  }
  if (!c || !x || !x->comms || !x->streams || !x->gpus || !x->scratch) {
    if (x)
      free_ctx(x, 0);
    free(c);
    return td_errorf(err, TD_ENOMEM, "out of memory creating an NCCL communicator");
  }
  for (int r = 0; r < size; r++) {
    x->gpus[r] = gpus[r];
    if (streams)
      x->streams[r] = (cudaStream_t)streams[r];
  }
  x->own_streams = !streams;
  int rc = TD_OK;
  ncclResult_t nr = ncclCommInitAll(x->comms, size, gpus);
  if (nr != ncclSuccess)
    rc = td_errorf(err, TD_EBACKEND, "ncclCommInitAll over %d GPUs: %s", size,
                   ncclGetErrorString(nr));
  for (int r = 0; r < size && !rc; r++) {
    if ((ce = cudaSetDevice(gpus[r])) != cudaSuccess ||
        (!streams &&
         (ce = cudaStreamCreateWithFlags(&x->streams[r], cudaStreamNonBlocking)) != cudaSuccess) ||
        (ce = cudaMalloc((void **)&x->scratch[r], sizeof(float))) != cudaSuccess)
      rc = td_errorf(err, TD_EBACKEND, "GPU %d: setting up the communicator's stream: %s", gpus[r],
                     cudaGetErrorString(ce));
  }
  if (rc) {
    free_ctx(x, size);
    free(c);
    return rc;
  }
  c->ops = &nccl_ops;
  c->size = size;
  c->ctx = x;
  *out = c;
  return TD_OK;
}

void *td_comm_nccl_stream(td_comm *c, int rank) { return ((nccl_ctx *)c->ctx)->streams[rank]; }
