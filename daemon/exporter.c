/* The daemon's Prometheus metrics (see exporter.h). */
#include "exporter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TD_EXPORTER_SCRATCH 4096

/* Step times: 0.1 ms to about 3.3 s. */
static const double step_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                     0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
/* Checkpoint writes: 1 ms to 10 min. */
static const double ckpt_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1,
                                     5,     10,    30,   60,   120, 300, 600};

int td_exporter_start(td_exporter *e, const char *addr, td_error *err) {
  memset(e, 0, sizeof *e);
  td_prom_buf_init(&e->buf);
  int rc =
      td_prom_hist_init(&e->step_sec, step_bounds, sizeof step_bounds / sizeof step_bounds[0], err);
  if (!rc)
    rc = td_prom_hist_init(&e->ckpt_sec, ckpt_bounds, sizeof ckpt_bounds / sizeof ckpt_bounds[0],
                           err);
  if (!rc && !(e->scratch = malloc(TD_EXPORTER_SCRATCH * sizeof *e->scratch)))
    rc = td_errorf(err, TD_ENOMEM, "metrics: out of memory");
  if (!rc && (rc = td_prom_server_start(addr, &e->srv, err)))
    td_error_prefix(err, "metrics_listen %s", addr);
  if (rc)
    td_exporter_stop(e);
  return rc;
}

int td_exporter_port(const td_exporter *e) { return e->srv ? td_prom_server_port(e->srv) : 0; }

void td_exporter_stop(td_exporter *e) {
  if (e->srv)
    td_prom_server_stop(e->srv);
  e->srv = NULL;
  td_prom_buf_free(&e->buf);
  td_prom_hist_free(&e->step_sec);
  td_prom_hist_free(&e->ckpt_sec);
  for (size_t i = 0; i < e->n_rpc; i++)
    td_prom_hist_free(&e->rpc[i].latency);
  e->n_rpc = 0;
  free(e->scratch);
  e->scratch = NULL;
}

void td_exporter_rpc(td_exporter *e, const char *method, int code, double sec) {
  td_rpc_stat *st = NULL;
  for (size_t i = 0; i < e->n_rpc && !st; i++)
    if (strcmp(e->rpc[i].method, method) == 0)
      st = &e->rpc[i];
  if (!st) {
    if (e->n_rpc == TD_EXPORTER_MAX_METHODS)
      return;
    td_error err = {0};
    double b[TD_PROM_N_DEFAULT_BOUNDS] = TD_PROM_DEFAULT_BOUNDS;
    st = &e->rpc[e->n_rpc];
    memset(st, 0, sizeof *st);
    if (td_prom_hist_init(&st->latency, b, TD_PROM_N_DEFAULT_BOUNDS, &err))
      return;
    st->method = method;
    e->n_rpc++;
  }
  st->by_code[code >= 0 && code < TD_GRPC_NCODES ? code : 2]++; /* 2: UNKNOWN */
  td_prom_hist_observe(&st->latency, sec);
}

void td_exporter_checkpoint(td_exporter *e, int ok, double write_sec) {
  if (ok) {
    e->ckpt_ok++;
    td_prom_hist_observe(&e->ckpt_sec, write_sec);
  } else {
    e->ckpt_failed++;
  }
}

/* The step points each job published since the last call (also the last
 * ones of a job that has just ended). */
static void observe_steps(td_exporter *e, const td_exporter_view *v) {
  for (size_t i = 0; i < v->n_jobs; i++) {
    td_job *j = v->jobs[i];
    if (j->state == TRAIND__V1__JOB_STATE__QUEUED)
      continue;
    int more = 1;
    while (more) {
      int64_t oldest = 0;
      size_t n = td_metrics_read_steps(&j->metrics, j->prom_step, e->scratch, TD_EXPORTER_SCRATCH,
                                       &more, &oldest);
      for (size_t k = 0; k < n; k++)
        td_prom_hist_observe(&e->step_sec, e->scratch[k].p.step_ms / 1e3);
      if (n)
        j->prom_step = e->scratch[n - 1].p.step;
      if (!n)
        break;
    }
  }
}

/* One gauge family with a sample per running job. */
typedef double (*job_value)(const td_job *j, const td_metrics_latest *l);

static double v_step(const td_job *j, const td_metrics_latest *l) {
  (void)j;
  return (double)l->step;
}
static double v_total(const td_job *j, const td_metrics_latest *l) {
  (void)l;
  return (double)j->total_steps;
}
static double v_epoch(const td_job *j, const td_metrics_latest *l) {
  (void)j;
  return l->epoch;
}
static double v_eps(const td_job *j, const td_metrics_latest *l) {
  (void)j;
  return l->examples_per_sec;
}
static double v_loss(const td_job *j, const td_metrics_latest *l) {
  (void)j;
  return l->loss;
}
static double v_train_acc(const td_job *j, const td_metrics_latest *l) {
  (void)j;
  return l->train_accuracy;
}
static double v_test_acc(const td_job *j, const td_metrics_latest *l) {
  (void)j;
  return l->test_accuracy;
}
static double v_test_loss(const td_job *j, const td_metrics_latest *l) {
  (void)j;
  return l->test_loss;
}

static void job_family(td_prom_buf *b, const td_exporter_view *v, const char *name,
                       const char *help, job_value fn) {
  td_prom_family(b, name, TD_PROM_GAUGE, help);
  for (size_t i = 0; i < v->n_jobs; i++) {
    const td_job *j = v->jobs[i];
    if (j->state != TRAIND__V1__JOB_STATE__RUNNING)
      continue;
    td_metrics_latest l;
    td_metrics_latest_get((td_metrics *)&j->metrics, &l);
    td_prom_label lab[3] = {{"job", j->id}, {"name", j->name}, {"owner", j->owner}};
    td_prom_sample(b, lab, 3, fn(j, &l));
  }
}

/* The per-token figures of the running language models (jobs whose losses
 * are per token): tokens a second, and bits per token of the last step's
 * loss (set="train") and of the last evaluation (set="test", once there
 * is one). */
static void token_families(td_prom_buf *b, const td_exporter_view *v) {
  td_prom_family(b, "traind_job_tokens_per_second", TD_PROM_GAUGE,
                 "Training throughput in tokens of the running language model's current epoch.");
  for (size_t i = 0; i < v->n_jobs; i++) {
    const td_job *j = v->jobs[i];
    if (j->state != TRAIND__V1__JOB_STATE__RUNNING)
      continue;
    td_metrics_latest l;
    td_metrics_latest_get((td_metrics *)&j->metrics, &l);
    td_prom_label lab[3] = {{"job", j->id}, {"name", j->name}, {"owner", j->owner}};
    if (l.per_token && l.step > 0)
      td_prom_sample(b, lab, 3, l.tokens_per_sec);
  }
  td_prom_family(b, "traind_job_bits_per_token", TD_PROM_GAUGE,
                 "The running language model's loss in bits per token: set=\"train\" the last "
                 "step's, set=\"test\" the last evaluation's.");
  for (size_t i = 0; i < v->n_jobs; i++) {
    const td_job *j = v->jobs[i];
    if (j->state != TRAIND__V1__JOB_STATE__RUNNING)
      continue;
    td_metrics_latest l;
    td_metrics_latest_get((td_metrics *)&j->metrics, &l);
    if (!l.per_token)
      continue;
    td_prom_label lab[4] = {{"job", j->id}, {"name", j->name}, {"owner", j->owner}, {"set", ""}};
    if (l.step > 0) {
      lab[3].value = "train";
      td_prom_sample(b, lab, 4, td_metrics_bits(l.loss));
    }
    if (l.have_eval) {
      lab[3].value = "test";
      td_prom_sample(b, lab, 4, td_metrics_bits(l.test_loss));
    }
  }
}

/* The privacy the running DP-SGD jobs have spent: epsilon at their delta,
 * after their last epoch. */
static void dp_family(td_prom_buf *b, const td_exporter_view *v) {
  td_prom_family(b, "traind_job_dp_epsilon", TD_PROM_GAUGE,
                 "The running DP-SGD job's privacy spent: epsilon at the job's delta, after its "
                 "last epoch.");
  for (size_t i = 0; i < v->n_jobs; i++) {
    const td_job *j = v->jobs[i];
    if (j->state != TRAIND__V1__JOB_STATE__RUNNING)
      continue;
    td_metrics_latest l;
    td_metrics_latest_get((td_metrics *)&j->metrics, &l);
    td_prom_label lab[3] = {{"job", j->id}, {"name", j->name}, {"owner", j->owner}};
    if (l.dp)
      td_prom_sample(b, lab, 3, l.epsilon);
  }
}

int td_exporter_publish(td_exporter *e, const td_exporter_view *v, td_error *err) {
  observe_steps(e, v);
  td_prom_buf *b = &e->buf;
  td_prom_buf_reset(b);

  td_prom_family(b, "traind_build_info", TD_PROM_GAUGE, "The daemon's version.");
  td_prom_label ver = {"version", v->version};
  td_prom_sample(b, &ver, 1, 1);
  td_prom_gauge(b, "traind_uptime_seconds", "Seconds since the daemon started.", v->uptime_sec);
  td_prom_family(b, "traind_insecure_listener", TD_PROM_GAUGE,
                 "1 for each plaintext listener on a network address (insecure: true).");
  for (size_t i = 0; i < v->n_insecure; i++) {
    td_prom_label a = {"addr", v->insecure[i]};
    td_prom_sample(b, &a, 1, 1);
  }

  static const Traind__V1__JobState states[] = {
      TRAIND__V1__JOB_STATE__QUEUED, TRAIND__V1__JOB_STATE__RUNNING,
      TRAIND__V1__JOB_STATE__SUCCEEDED, TRAIND__V1__JOB_STATE__FAILED,
      TRAIND__V1__JOB_STATE__CANCELLED};
  td_prom_family(b, "traind_jobs", TD_PROM_GAUGE, "Jobs the daemon knows, by state.");
  for (size_t s = 0; s < sizeof states / sizeof states[0]; s++) {
    size_t n = 0;
    for (size_t i = 0; i < v->n_jobs; i++)
      n += v->jobs[i]->state == states[s];
    td_prom_label lab = {"state", td_job_state_name(states[s])};
    td_prom_sample(b, &lab, 1, (double)n);
  }

  job_family(b, v, "traind_job_step", "Updates applied, per running job.", v_step);
  job_family(b, v, "traind_job_total_steps", "Steps the running job will take.", v_total);
  job_family(b, v, "traind_job_epochs_completed", "Epochs completed, per running job.", v_epoch);
  job_family(b, v, "traind_job_examples_per_second",
             "Training throughput of the running job's current epoch.", v_eps);
  job_family(b, v, "traind_job_loss", "The running job's last step loss.", v_loss);
  job_family(b, v, "traind_job_train_accuracy",
             "The running job's last completed epoch's train accuracy.", v_train_acc);
  job_family(b, v, "traind_job_test_accuracy", "The running job's last test accuracy.", v_test_acc);
  job_family(b, v, "traind_job_test_loss", "The running job's last test loss.", v_test_loss);
  token_families(b, v);
  dp_family(b, v);

  td_prom_family(b, "traind_step_seconds", TD_PROM_HISTOGRAM, "Time of a training step, all jobs.");
  td_prom_histogram(b, NULL, 0, &e->step_sec);

  td_prom_family(b, "traind_checkpoint_write_seconds", TD_PROM_HISTOGRAM,
                 "Time to build, write and sync a checkpoint file.");
  td_prom_histogram(b, NULL, 0, &e->ckpt_sec);
  td_prom_family(b, "traind_checkpoints_total", TD_PROM_COUNTER, "Checkpoints written, by result.");
  td_prom_label ok = {"result", "ok"}, failed = {"result", "failed"};
  td_prom_sample(b, &ok, 1, (double)e->ckpt_ok);
  td_prom_sample(b, &failed, 1, (double)e->ckpt_failed);

  td_prom_family(b, "traind_rpc_requests_total", TD_PROM_COUNTER,
                 "gRPC calls answered, by method and status code.");
  for (size_t i = 0; i < e->n_rpc; i++)
    for (int c = 0; c < TD_GRPC_NCODES; c++)
      if (e->rpc[i].by_code[c]) {
        td_prom_label lab[2] = {{"method", e->rpc[i].method}, {"code", td_grpc_code_name(c)}};
        td_prom_sample(b, lab, 2, (double)e->rpc[i].by_code[c]);
      }
  td_prom_family(b, "traind_rpc_seconds", TD_PROM_HISTOGRAM,
                 "gRPC call latency, from arrival to the answer, by method.");
  for (size_t i = 0; i < e->n_rpc; i++) {
    td_prom_label lab = {"method", e->rpc[i].method};
    td_prom_histogram(b, &lab, 1, &e->rpc[i].latency);
  }

  td_prom_counter(b, "traind_compile_cache_hits_total", "Step plans found in the cache.",
                  (double)v->cache_hits);
  td_prom_counter(b, "traind_compile_cache_misses_total", "Step plans compiled.",
                  (double)v->cache_misses);
  td_prom_gauge(b, "traind_compile_cache_entries", "Step plans in the cache.",
                (double)v->cache_entries);

  td_prom_family(b, "traind_device_busy", TD_PROM_GAUGE, "1 when a job holds the device, else 0.");
  for (int d = 0; d < v->n_devices; d++) {
    char id[32];
    snprintf(id, sizeof id, "cpu:%d", d);
    const td_job *owner = v->device_owner[d];
    td_prom_label lab[2] = {{"device", id}, {"job", owner ? owner->id : ""}};
    td_prom_sample(b, lab, 2, owner ? 1 : 0);
  }
  int rc = td_prom_buf_status(b, err);
  if (!rc)
    rc = td_prom_server_publish(e->srv, b->data, b->len);
  return rc;
}
