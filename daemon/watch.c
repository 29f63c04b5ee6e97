/* Metric pages out of a job's series: GetMetrics, and WatchMetrics
 * streams, which hold at most the write in flight and one message behind
 * it however slowly their client reads. */
#include "state.h"

#include <stdlib.h>
#include <string.h>

#define WATCH_BATCH 1000 /* step points per streamed message */
#define METRICS_DEFAULT 1000
#define METRICS_MAX 10000

/* A metrics page: StepPoint and EpochPoint messages in arrays owned by
 * the page, ready to be pointed at from a response. */
typedef struct page {
  size_t n_steps, n_epochs;
  Traind__V1__StepPoint *steps;
  Traind__V1__StepPoint **step_ptrs;
  Traind__V1__EpochPoint *epochs;
  Traind__V1__EpochPoint **epoch_ptrs;
  Google__Protobuf__Timestamp *times; /* n_steps + n_epochs */
  td_step_rec *srec;
  td_epoch_rec *erec;
  int more;
  int64_t oldest;
} page;

static void page_free(page *p) {
  free(p->steps);
  free(p->step_ptrs);
  free(p->epochs);
  free(p->epoch_ptrs);
  free(p->times);
  free(p->srec);
  free(p->erec);
  memset(p, 0, sizeof *p);
}

static int page_read(page *p, td_job *j, int64_t since_step, int64_t since_epoch,
                     size_t max_steps) {
  memset(p, 0, sizeof *p);
  size_t max_epochs = 4096;
  p->srec = malloc(max_steps * sizeof *p->srec);
  p->erec = malloc(max_epochs * sizeof *p->erec);
  if (!p->srec || !p->erec)
    return -1;
  p->n_steps =
      td_metrics_read_steps(&j->metrics, since_step, p->srec, max_steps, &p->more, &p->oldest);
  int64_t last = p->n_steps ? p->srec[p->n_steps - 1].p.step : since_step;
  /* Epoch points up to the last step sent, so the two series stay in step. */
  size_t ne = td_metrics_read_epochs(&j->metrics, since_epoch, p->erec, max_epochs);
  while (ne && p->erec[ne - 1].p.step > last && p->more)
    ne--;
  p->n_epochs = ne;
  size_t nt = p->n_steps + p->n_epochs;
  p->steps = calloc(p->n_steps + 1, sizeof *p->steps);
  p->step_ptrs = calloc(p->n_steps + 1, sizeof *p->step_ptrs);
  p->epochs = calloc(p->n_epochs + 1, sizeof *p->epochs);
  p->epoch_ptrs = calloc(p->n_epochs + 1, sizeof *p->epoch_ptrs);
  p->times = calloc(nt + 1, sizeof *p->times);
  if (!p->steps || !p->step_ptrs || !p->epochs || !p->epoch_ptrs || !p->times)
    return -1;
  /* A language model's figures are per token: also in bits, and its rates
   * in tokens. */
  const uint32_t positions = td_metrics_positions(&j->metrics);
  const int per_token = positions > 1;
  for (size_t i = 0; i < p->n_steps; i++) {
    const td_step_rec *r = &p->srec[i];
    Traind__V1__StepPoint *m = &p->steps[i];
    traind__v1__step_point__init(m);
    m->step = r->p.step;
    m->epoch = r->p.epoch;
    m->loss = r->p.loss;
    m->grad_norm = r->p.grad_norm;
    m->learning_rate = r->p.lr;
    m->examples_per_sec = r->p.examples_per_sec;
    m->step_ms = r->p.step_ms;
    if (per_token) {
      m->tokens_per_sec = r->p.examples_per_sec * positions;
      m->bits_per_token = td_metrics_bits(r->p.loss);
    }
    td_timestamp_set(&p->times[i], r->time_ns);
    m->time = &p->times[i];
    p->step_ptrs[i] = m;
  }
  for (size_t i = 0; i < p->n_epochs; i++) {
    const td_epoch_rec *r = &p->erec[i];
    Traind__V1__EpochPoint *m = &p->epochs[i];
    traind__v1__epoch_point__init(m);
    m->epoch = r->p.epoch;
    m->step = r->p.step;
    m->train_loss = r->p.train_loss;
    m->train_accuracy = r->p.train_accuracy;
    m->evaluated = r->p.evaluated;
    m->test_loss = r->p.test_loss;
    m->test_accuracy = r->p.test_accuracy;
    m->epoch_sec = r->p.epoch_sec;
    m->examples_per_sec = r->p.examples_per_sec;
    m->mid_epoch = r->p.mid_epoch;
    if (r->p.has_epsilon) {
      m->dp = 1;
      m->epsilon = r->p.epsilon;
      m->delta = r->p.delta;
    }
    if (per_token) {
      m->per_token = 1;
      m->tokens_per_sec = r->p.examples_per_sec * positions;
      m->train_bits_per_token = td_metrics_bits(r->p.train_loss);
      if (r->p.evaluated)
        m->test_bits_per_token = td_metrics_bits(r->p.test_loss);
    }
    td_timestamp_set(&p->times[p->n_steps + i], r->time_ns);
    m->time = &p->times[p->n_steps + i];
    p->epoch_ptrs[i] = m;
  }
  return 0;
}

void srv_drop_watch(td_server *s, td_watch *w) {
  (void)s;
  td_watch **pp = &w->job->watchers;
  while (*pp && *pp != w)
    pp = &(*pp)->next;
  if (*pp)
    *pp = w->next;
  free(w);
}

/* Sends what the job has past the watcher's position; at the job's end
 * also the final record, then ends the stream. */
void srv_flush_watch(td_server *s, td_watch *w) {
  td_job *j = w->job;
  int final = td_job_is_final(j);
  for (int round = 0; round < 64; round++) {
    /* A stream holds at most the write in flight and one message behind
     * it; points that come meanwhile wait in the job's ring and go out
     * together in the next message, from the drain callback. */
    if (td_rpc_pending(w->call) >= 2)
      return;
    page p;
    if (page_read(&p, j, w->since_step, w->since_epoch, WATCH_BATCH) != 0) {
      page_free(&p);
      td_rpc_finish(w->call, TD_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      srv_drop_watch(s, w);
      return;
    }
    if (p.n_steps == 0 && p.n_epochs == 0 && !final) {
      page_free(&p);
      return;
    }
    Traind__V1__WatchMetricsResponse r = TRAIND__V1__WATCH_METRICS_RESPONSE__INIT;
    r.n_steps = p.n_steps;
    r.steps = p.step_ptrs;
    r.n_epochs = p.n_epochs;
    r.epochs = p.epoch_ptrs;
    td_job_msg jm;
    td_job_msg_fill(&jm, j, s->cfg->state_dir);
    r.job = &jm.job;
    int rc = td_rpc_send(w->call, &r.base);
    if (p.n_steps)
      w->since_step = p.steps[p.n_steps - 1].step;
    if (p.n_epochs)
      w->since_epoch = p.epochs[p.n_epochs - 1].step;
    int more = p.more;
    page_free(&p);
    if (rc != TD_OK)
      return; /* the cancel callback ends it */
    if (!more) {
      if (final) {
        td_rpc_finish(w->call, TD_GRPC_OK, NULL);
        srv_drop_watch(s, w);
      }
      return;
    }
  }
}

void srv_on_flush_timer(uv_timer_t *t) {
  td_server *s = t->data;
  for (size_t i = 0; i < s->n_jobs; i++) {
    td_watch *w = s->jobs[i]->watchers;
    while (w) {
      td_watch *next = w->next;
      srv_flush_watch(s, w);
      w = next;
    }
  }
}

static void on_watch_drain(void *arg, td_rpc_call *call) {
  (void)call;
  td_watch *w = arg;
  srv_flush_watch(w->srv, w);
}

static void on_watch_cancel(void *arg, td_rpc_call *call) {
  td_watch *w = arg;
  td_rpc_finish(call, TD_GRPC_CANCELLED, "cancelled");
  srv_drop_watch(NULL, w);
}

void srv_h_metrics(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__GetMetricsRequest *req = (const void *)req_;
  td_job *j = srv_job_for(s, call, req->id, TD_JOB_READ);
  if (!j)
    return;
  size_t max = req->max_points ? req->max_points : METRICS_DEFAULT;
  if (max > METRICS_MAX)
    max = METRICS_MAX;
  page p;
  if (page_read(&p, j, req->since_step, req->since_step, max) != 0) {
    page_free(&p);
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
    return;
  }
  Traind__V1__GetMetricsResponse r = TRAIND__V1__GET_METRICS_RESPONSE__INIT;
  r.n_steps = p.n_steps;
  r.steps = p.step_ptrs;
  r.n_epochs = p.n_epochs;
  r.epochs = p.epoch_ptrs;
  r.last_step = p.n_steps ? p.steps[p.n_steps - 1].step : req->since_step;
  r.more = p.more;
  r.oldest_step = p.oldest;
  r.state = j->state;
  td_rpc_reply(call, &r.base);
  page_free(&p);
}

void srv_h_watch(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__WatchMetricsRequest *req = (const void *)req_;
  td_job *j = srv_job_for(s, call, req->id, TD_JOB_READ);
  if (!j)
    return;
  td_watch *w = calloc(1, sizeof *w);
  if (!w) {
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
    return;
  }
  w->call = call;
  w->job = j;
  w->since_step = req->since_step;
  w->since_epoch = req->since_step;
  w->next = j->watchers;
  j->watchers = w;
  w->srv = s;
  td_rpc_on_cancel(call, on_watch_cancel, w);
  td_rpc_on_drain(call, on_watch_drain, w);
  srv_flush_watch(s, w);
}
