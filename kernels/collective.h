/* Collectives over the replicas of one job (pmap's lax.pmean and friends):
 * allreduce (sum or mean) of a flat float buffer, broadcast, barrier.
 *
 * Every rank of a communicator calls each collective, in the same order,
 * with its own buffer of the same length; a call returns once the result is
 * in that rank's buffer. Results are identical on every rank, bit for bit,
 * and do not depend on timing: the in-process implementation sums the ranks
 * in rank order. A rank that has failed still makes its calls (with any
 * contents), so that the others never wait forever. */
#ifndef TD_COLLECTIVE_H
#define TD_COLLECTIVE_H

#include <stddef.h>

#include "error.h"

typedef enum td_reduce_op {
  TD_REDUCE_SUM = 0,
  TD_REDUCE_MEAN, /* the sum divided by the number of ranks */
} td_reduce_op;

typedef struct td_comm td_comm;

typedef struct td_comm_ops {
  const char *name;
  int (*allreduce)(td_comm *c, int rank, float *buf, size_t n, td_reduce_op op);
  int (*broadcast)(td_comm *c, int rank, float *buf, size_t n, int root);
  int (*barrier)(td_comm *c, int rank);
  void (*destroy)(td_comm *c);
} td_comm_ops;

struct td_comm {
  const td_comm_ops *ops;
  int size; /* ranks */
  void *ctx;
};

/* Ranks that are threads of this process, buffers in host memory. An
 * allreduce is parallel across the buffer: rank r reduces the r-th slice
 * over all ranks (in rank order) and writes it into every rank's buffer. */
int td_comm_cpu_create(td_comm **out, int size, td_error *err);
void td_comm_destroy(td_comm *c);

#endif
