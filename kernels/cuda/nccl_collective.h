/* NCCL collectives for the GPU replicas of one process (collective.h):
 * one communicator per rank from ncclCommInitAll over the job's GPUs, each
 * rank's buffers in its GPU's memory, each rank's collectives on its own
 * stream. An allreduce is one ncclAllReduce of the flat buffer inside
 * ncclGroupStart/End (ncclAvg for the mean). The calls are asynchronous:
 * the result is ready in the order of the rank's stream (td_comm_nccl_stream),
 * which is where the rank's kernels run too; barrier() also waits for the
 * stream. */
#ifndef TD_NCCL_COLLECTIVE_H
#define TD_NCCL_COLLECTIVE_H

#include "collective.h"

/* gpus: the CUDA device of each rank (size entries); streams: each rank's
 * stream (cudaStream_t, kept by the caller: the stream its backend's ops
 * run on, so that a collective orders with them and can be captured in
 * the same graph), or NULL for streams of the communicator's own. A
 * machine without a usable GPU or driver gets TD_EUNSUPPORTED naming the
 * CUDA call and its message; an NCCL failure TD_EBACKEND naming the NCCL
 * call. */
int td_comm_nccl_create(td_comm **out, int size, const int *gpus, void *const *streams,
                        td_error *err);
/* The rank's stream (a cudaStream_t). */
void *td_comm_nccl_stream(td_comm *c, int rank);

#endif
