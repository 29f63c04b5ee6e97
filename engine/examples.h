/* The per-epoch report on a job's training examples
 * (training.per_example_report): every gradient norm the epoch's steps
 * computed, reduced at the epoch's end to their distribution (a histogram
 * of equal-width buckets from the smallest to the largest, as
 * TensorBoard's) and the k examples with the largest norms, each example
 * once, with its label and input. */
#ifndef TD_EXAMPLES_H
#define TD_EXAMPLES_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "error.h"

#define TD_EXAMPLE_BUCKETS 30
#define TD_EXAMPLE_TOP_MAX 1000
#define TD_EXAMPLE_TOP_DEFAULT 20

typedef struct td_example_norm {
  uint32_t index; /* in the training set */
  int32_t label;  /* -1 for an example with a label per position */
  double norm;
  int64_t step; /* the step that computed it */
} td_example_norm;

typedef struct td_example_report {
  uint32_t epoch;
  int64_t step;
  uint64_t count; /* norms (examples times the steps that drew them) */
  double min, max, mean, sum, sum_sq;
  double edges[TD_EXAMPLE_BUCKETS + 1];
  uint64_t counts[TD_EXAMPLE_BUCKETS];
  double clip; /* DP-SGD's l2_norm_clip, 0 without */
  uint64_t clipped;
  uint32_t n_top;
  td_example_norm *top; /* (k) largest first */
  float *inputs;        /* (k * dim) the top examples' features */
  uint32_t dim, ndim, shape[4];
} td_example_report;

typedef struct td_example_acc {
  uint32_t k;
  uint32_t n_train;
  size_t n, cap;          /* the epoch's norms so far, and room */
  td_example_norm *norms; /* (cap) */
  uint8_t *seen;          /* (n_train / 8 + 1) bitmap for the top's uniqueness */
  td_example_report rep;  /* the newest epoch's (td_examples_report) */
} td_example_acc;

/* Room for `cap` norms an epoch and a top of k (1..TD_EXAMPLE_TOP_MAX) of
 * examples of train's shape. */
int td_examples_init(td_example_acc *a, uint32_t k, size_t cap, const td_dataset *train,
                     td_error *err);
void td_examples_free(td_example_acc *a);
/* A new epoch: no norms yet. */
static inline void td_examples_begin(td_example_acc *a) { a->n = 0; }
/* One example's norm at a step (dropped past the room, which init sized
 * for an epoch). */
void td_examples_add(td_example_acc *a, uint32_t index, double norm, int64_t step);
/* The epoch's report from its norms, into a->rep; labels and inputs from
 * train. */
void td_examples_report(td_example_acc *a, const td_dataset *train, uint32_t epoch, int64_t step,
                        double clip);

#endif
