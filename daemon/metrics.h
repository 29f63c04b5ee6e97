/* A job's metric series: bounded rings of step points and epoch points,
 * written by the job's worker thread and read by the loop thread.
 *
 * The writer never waits for a reader: points are staged privately and
 * published with a trylock; when a reader holds the lock the points wait
 * for the next step. Readers copy under the lock. */
#ifndef TD_METRICS_H
#define TD_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "footprint.h"
#include "train.h"

typedef struct td_step_rec {
  td_step_point p;
  int64_t time_ns; /* wall clock */
} td_step_rec;

typedef struct td_epoch_rec {
  td_epoch_point p;
  int64_t time_ns;
} td_epoch_rec;

/* What the job record shows as "latest". */
typedef struct td_metrics_latest {
  int64_t step;
  uint32_t epoch; /* epochs completed */
  float loss, grad_norm, lr;
  double examples_per_sec;
  int have_epoch, have_eval;
  float train_loss, train_accuracy, test_loss, test_accuracy;
} td_metrics_latest;

#define TD_METRICS_STAGE 256

typedef struct td_metrics {
  pthread_mutex_t mu;
  /* Published (guarded by mu). Ring index of point k is k % cap. */
  td_step_rec *steps;
  size_t step_cap;
  uint64_t n_steps; /* points ever published */
  td_epoch_rec *epochs;
  size_t epoch_cap;
  uint64_t n_epochs;
  td_metrics_latest latest;
  /* Writer-private staging. */
  td_step_rec stage[TD_METRICS_STAGE];
  size_t n_stage;
  td_epoch_rec estage[8];
  size_t n_estage;
  td_metrics_latest wlatest;
} td_metrics;

/* A series with no storage yet: job records loaded from disk keep only
 * their latest figures. */
void td_metrics_init(td_metrics *m);
void td_metrics_free(td_metrics *m);
/* Allocates the rings (step_capacity step points), dropping any earlier
 * points; the worker calls it before its first step. -1 when out of memory. */
int td_metrics_reserve(td_metrics *m, size_t step_capacity);

/* Writer side (one thread). Returns nonzero when something was published,
 * so the caller knows to wake readers. */
int td_metrics_add_step(td_metrics *m, const td_step_point *p);
int td_metrics_add_epoch(td_metrics *m, const td_epoch_point *p);
/* Publishes everything staged, waiting for the lock if need be (at the end
 * of a job). */
void td_metrics_flush(td_metrics *m);

/* Reader side. Copies up to max step points with step > since_step into
 * out (in order) and returns how many; *more says whether further points
 * exist; *oldest is the oldest step still held (0 when none). */
size_t td_metrics_read_steps(td_metrics *m, int64_t since_step, td_step_rec *out, size_t max,
                             int *more, int64_t *oldest);
/* Epoch points with step > since_step (all the ring holds). */
size_t td_metrics_read_epochs(td_metrics *m, int64_t since_step, td_epoch_rec *out, size_t max);
void td_metrics_latest_get(td_metrics *m, td_metrics_latest *out);
/* Restores the latest figures (from a persisted job record). */
void td_metrics_latest_set(td_metrics *m, const td_metrics_latest *l);

/* Adds the job's metric rings (the step points it keeps, at most
 * `retention`, and the epoch points) to its host footprint. */
void td_metrics_add_footprint(td_footprint *f, size_t retention);

#endif
