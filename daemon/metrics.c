#include "metrics.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

#define EPOCH_CAP 4096

void td_metrics_init(td_metrics *m) {
  memset(m, 0, sizeof *m);
  pthread_mutex_init(&m->mu, NULL);
}

void td_metrics_free(td_metrics *m) {
  pthread_mutex_destroy(&m->mu);
  free(m->steps);
  free(m->epochs);
  m->steps = NULL;
  m->epochs = NULL;
}

int td_metrics_reserve(td_metrics *m, size_t step_capacity, uint32_t positions) {
  size_t cap = step_capacity ? step_capacity : 1;
  td_step_rec *steps = malloc(cap * sizeof *steps);
  td_epoch_rec *epochs = malloc(EPOCH_CAP * sizeof *epochs);
  if (!steps || !epochs) {
    free(steps);
    free(epochs);
    return -1;
  }
  pthread_mutex_lock(&m->mu);
  free(m->steps);
  free(m->epochs);
  m->steps = steps;
  m->epochs = epochs;
  m->step_cap = cap;
  m->epoch_cap = EPOCH_CAP;
  m->n_steps = m->n_epochs = 0;
  m->n_stage = m->n_estage = 0;
  m->positions = positions ? positions : 1;
  m->wlatest.per_token = m->latest.per_token = m->positions > 1;
  pthread_mutex_unlock(&m->mu);
  return 0;
}

/* Moves the staged points into the rings; mu is held. */
static void publish(td_metrics *m) {
  if (!m->steps)
    m->n_stage = m->n_estage = 0; /* nowhere to keep them: only `latest` */
  for (size_t i = 0; i < m->n_stage; i++)
    m->steps[m->n_steps++ % m->step_cap] = m->stage[i];
  for (size_t i = 0; i < m->n_estage; i++)
    m->epochs[m->n_epochs++ % m->epoch_cap] = m->estage[i];
  m->n_stage = m->n_estage = 0;
  m->latest = m->wlatest;
}

static int try_publish(td_metrics *m) {
  if (m->n_stage < TD_METRICS_STAGE && pthread_mutex_trylock(&m->mu) != 0)
    return 0;
  /* A full stage waits for the lock: readers hold it only to copy. */
  if (m->n_stage == TD_METRICS_STAGE)
    pthread_mutex_lock(&m->mu);
  publish(m);
  pthread_mutex_unlock(&m->mu);
  return 1;
}

int td_metrics_add_step(td_metrics *m, const td_step_point *p) {
  td_step_rec *r = &m->stage[m->n_stage++];
  r->p = *p;
  r->time_ns = td_wall_ns();
  td_metrics_latest *l = &m->wlatest;
  l->step = p->step;
  l->loss = p->loss;
  l->grad_norm = p->grad_norm;
  l->lr = p->lr;
  l->examples_per_sec = p->examples_per_sec;
  l->tokens_per_sec = l->per_token ? p->examples_per_sec * m->positions : 0.0;
  return try_publish(m);
}

int td_metrics_add_epoch(td_metrics *m, const td_epoch_point *p) {
  if (m->n_estage == sizeof m->estage / sizeof m->estage[0])
    td_metrics_flush(m);
  td_epoch_rec *r = &m->estage[m->n_estage++];
  r->p = *p;
  r->time_ns = td_wall_ns();
  td_metrics_latest *l = &m->wlatest;
  /* An evaluation inside an epoch brings test figures; the epoch's
   * training figures wait for its end. */
  if (!p->mid_epoch) {
    l->epoch = p->epoch;
    l->have_epoch = 1;
    l->train_loss = p->train_loss;
    l->train_accuracy = p->train_accuracy;
  }
  l->examples_per_sec = p->examples_per_sec;
  l->tokens_per_sec = l->per_token ? p->examples_per_sec * m->positions : 0.0;
  if (p->has_epsilon) {
    l->dp = 1;
    l->epsilon = p->epsilon;
    l->delta = p->delta;
  }
  if (p->evaluated) {
    l->have_eval = 1;
    l->test_loss = p->test_loss;
    l->test_accuracy = p->test_accuracy;
  }
  return try_publish(m);
}

void td_metrics_flush(td_metrics *m) {
  pthread_mutex_lock(&m->mu);
  publish(m);
  pthread_mutex_unlock(&m->mu);
}

size_t td_metrics_read_steps(td_metrics *m, int64_t since_step, td_step_rec *out, size_t max,
                             int *more, int64_t *oldest) {
  size_t n = 0;
  pthread_mutex_lock(&m->mu);
  uint64_t first = m->n_steps > m->step_cap ? m->n_steps - m->step_cap : 0;
  *oldest = m->n_steps > first ? m->steps[first % m->step_cap].p.step : 0;
  /* Steps are increasing along the ring: find the first past since_step. */
  uint64_t lo = first, hi = m->n_steps;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (m->steps[mid % m->step_cap].p.step <= since_step)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (uint64_t k = lo; k < m->n_steps && n < max; k++)
    out[n++] = m->steps[k % m->step_cap];
  *more = lo + n < m->n_steps;
  pthread_mutex_unlock(&m->mu);
  return n;
}

size_t td_metrics_read_epochs(td_metrics *m, int64_t since_step, td_epoch_rec *out, size_t max) {
  size_t n = 0;
  pthread_mutex_lock(&m->mu);
  uint64_t first = m->n_epochs > m->epoch_cap ? m->n_epochs - m->epoch_cap : 0;
  for (uint64_t k = first; k < m->n_epochs && n < max; k++)
    if (m->epochs[k % m->epoch_cap].p.step > since_step)
      out[n++] = m->epochs[k % m->epoch_cap];
  pthread_mutex_unlock(&m->mu);
  return n;
}

void td_metrics_latest_get(td_metrics *m, td_metrics_latest *out) {
  pthread_mutex_lock(&m->mu);
  *out = m->latest;
  pthread_mutex_unlock(&m->mu);
}

uint32_t td_metrics_positions(td_metrics *m) {
  pthread_mutex_lock(&m->mu);
  uint32_t n = m->positions ? m->positions : 1;
  pthread_mutex_unlock(&m->mu);
  return n;
}

void td_metrics_latest_set(td_metrics *m, const td_metrics_latest *l) {
  pthread_mutex_lock(&m->mu);
  m->latest = *l;
  m->wlatest = *l;
  pthread_mutex_unlock(&m->mu);
}

void td_metrics_add_footprint(td_footprint *f, size_t retention) {
  size_t points = f->total_steps < 1 ? 1 : (size_t)f->total_steps;
  if (points > retention)
    points = retention ? retention : 1;
  const size_t ring = points * sizeof(td_step_rec) + EPOCH_CAP * sizeof(td_epoch_rec);
  f->host_trainer_bytes += ring;
  f->host_bytes += ring;
}
