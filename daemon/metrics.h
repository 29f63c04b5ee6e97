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
  /* A language model's (its losses are per token): tokens a second,
   * examples_per_sec times the positions of an example. */
  int per_token;
  double tokens_per_sec;
  /* A DP-SGD job's privacy spent at the last epoch point. */
  int dp;
  double epsilon, delta;
} td_metrics_latest;

/* A per-token loss in bits: nats / ln 2, rounded once to float so that
 * every place that reports it reports the same value. */
static inline float td_metrics_bits(float nats) {
  return (float)((double)nats / 0.69314718055994530942);
}

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
  /* Tokens per example: the positions of a sequence model's output, each
   * with its own label and loss (1 otherwise). Set with the rings. */
  uint32_t positions;
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
 * points, for a run whose examples have `positions` tokens (the plan's
 * positions: more than 1 makes the job's figures per token); the worker
 * calls it before its first step. -1 when out of memory. */
int td_metrics_reserve(td_metrics *m, size_t step_capacity, uint32_t positions);

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
/* Epoch points with step > since_step (all the ring holds), evaluations
 * inside an epoch (mid_epoch) among them. */
size_t td_metrics_read_epochs(td_metrics *m, int64_t since_step, td_epoch_rec *out, size_t max);
void td_metrics_latest_get(td_metrics *m, td_metrics_latest *out);
/* The positions of the run the rings hold (1 before any). */
uint32_t td_metrics_positions(td_metrics *m);
/* Restores the latest figures (from a persisted job record). */
void td_metrics_latest_set(td_metrics *m, const td_metrics_latest *l);

/* Adds the job's metric rings (the step points it keeps, at most
 * `retention`, and the epoch points) to its host footprint. */
void td_metrics_add_footprint(td_footprint *f, size_t retention);

#endif
