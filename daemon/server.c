/* The daemon's state and the traind.v1.Trainer service.
 *
 * Ownership: everything in td_server belongs to the loop thread. A worker
 * thread reads its job's spec (immutable while the job runs), writes its
 * job's metric series (td_metrics is made for one writer and loop-thread
 * readers), polls job->stop, and reports through post_event(). */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "exporter.h"
#include "footprint.h"
#include "gpus.h"
#include "h5safe.h"
#include "health.h"
#include "jobs.h"
#include "jobspec.h"
#include "log.h"
#include "pbjson.h"
#include "plan.h"
#include "rpc.h"
#include "saver.h"
#include "sdnotify.h"
#include "tfevents.h"
#include "train.h"
#include "traind/v1/trainer.pb-c.h"

#define TRAINER_SERVICE "traind.v1.Trainer"
#define FLUSH_MS 50
#define WATCH_BATCH 1000     /* step points per streamed message */
#define LIST_DEFAULT 100
#define LIST_MAX 1000
/* A ListJobs reply packs to at most this many bytes unless its one job is
 * larger (docs/operations.md, Limits); room is kept for next_page_token. */
#define LIST_MAX_BYTES ((size_t)1 << 20)
#define NEXT_TOKEN_BYTES 64
/* The largest request the daemon reads (a SubmitJob of a 1 MiB spec fits,
 * with room to say by how much a larger spec is over), and the largest
 * reply it sends: a client's default receive limit (docs/operations.md). */
#define MAX_REQUEST_BYTES ((size_t)2 << 20)
#define MAX_REPLY_BYTES ((size_t)4 << 20)
#define METRICS_DEFAULT 1000
#define METRICS_MAX 10000
/* Bytes per FileChunk, and chunks not yet written at a time (the one in
 * flight and one behind it): what a stream holds, however slowly its
 * client reads. */
#define EXPORT_CHUNK (64u << 10)
#define EXPORT_AHEAD 2
#define DEFAULT_KEEP_LAST 3

/* A worker's report to the loop. */
typedef enum { EV_STARTED, EV_RESUMED, EV_CHECKPOINT, EV_DONE } event_kind;

typedef struct event {
  struct event *next;
  event_kind kind;
  td_job *job;
  int rc;
  char msg[TD_ERRMSG_MAX];
  int64_t total_steps;
  uint32_t total_epochs, steps_per_epoch;
  double compile_ms;
  int cache_hit;
  td_job_resume resume;  /* EV_RESUMED */
  td_saver_result ckpt;  /* EV_CHECKPOINT */
} event;

/* A WatchMetrics stream. */
typedef struct td_watch {
  struct td_watch *next;
  struct td_server *srv;
  td_rpc_call *call;
  td_job *job;
  int64_t since_step;  /* step points sent up to here */
  int64_t since_epoch; /* epoch points sent up to this step */
} td_watch;

typedef struct td_server {
  uv_loop_t loop;
  const td_server_opts *opts;
  Traind__V1__DaemonConfig *cfg;
  td_rpc_server *rpc;
  td_health *health;
  td_plan_cache cache;
  int64_t started_ns;

  td_job **jobs; /* creation order */
  size_t n_jobs, cap_jobs;
  uint64_t next_seq;
  int n_devices; /* CPU devices */
  uint32_t threads;      /* compute threads, all devices together */
  td_job **device_owner; /* (n_devices) */
  int n_gpus;
  td_job **gpu_owner; /* (n_gpus) */
  char gpu_why[256];  /* why there are no GPUs */
  int running;

  uv_async_t wake;
  pthread_mutex_t ev_mu;
  event *ev_head, *ev_tail;

  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t flush, stop_timer, prom_timer, watchdog;
  td_exporter prom;
  int prom_on;
  int draining, rpc_down;
  char **listen_shown; /* listen addresses with bound ports filled in */
  size_t n_listen_shown;
  /* The host memory the daemon's jobs may hold together (memory_limit_bytes,
   * else the cgroup limit or MemAvailable, read at start and at SIGHUP);
   * mem_on 0 when it could not be told: no memory admission. */
  td_memory_limit mem;
  int mem_on;
  char *submit_gate; /* TRAIND_TEST_SUBMIT_GATE (tests), owned; NULL: none */
} td_server;

typedef struct worker_ctx {
  td_server *srv;
  td_job *job;
  char **roots;
  size_t n_roots;
  int threads;
  size_t retention; /* step points to keep */
  char ckpt_dir[PATH_MAX];
  int interrupted;  /* the daemon stopped while the job ran */
  td_saver saver;
  uint64_t save_taken; /* SaveCheckpoint requests covered by a snapshot */
  double final_retry_sec; /* final_checkpoint_retry_sec when the job started */
  int *gpus; /* GPU replicas: each rank's GPU (one per device of the job), owned */
  int on_gpu;
  char tb_dir[PATH_MAX];
  td_tfevents *tb; /* the job's TensorBoard events; NULL after a failure */
  double tb_flushed;
} worker_ctx;

static int64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void save_job(td_server *s, td_job *j) {
  td_error err = {0};
  if (td_job_save(j, s->cfg->state_dir, &err))
    td_log_error("cannot save job record", "job=%s err=\"%s\"", j->id, err.msg);
}

static td_job *find_job(td_server *s, const char *id) {
  for (size_t i = 0; i < s->n_jobs; i++)
    if (strcmp(s->jobs[i]->id, id) == 0)
      return s->jobs[i];
  return NULL;
}

/* The answer to a request whose job id find_job did not find: a malformed
 * id (td_job_id_valid) is INVALID_ARGUMENT, a well-formed one NOT_FOUND. */
static void fail_not_found(td_rpc_call *call, const char *id) {
  char msg[256], shown[48];
  size_t k = 0;
  for (const char *c = id ? id : ""; *c && k < 40; c++)
    shown[k++] = *c >= 0x20 && *c < 0x7f && *c != '\'' ? *c : '?';
  shown[k] = 0;
  if (!id || !*id) {
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT,
                "id: required (a job id like j-0123456789abcd; list jobs with trainctl list)");
  } else if (!td_job_id_valid(id)) {
    snprintf(msg, sizeof msg, "id: '%s%s' is not a job id (j- and up to 29 of [0-9a-z], like "
             "j-0123456789abcd); list jobs with trainctl list", shown, id[k] ? "..." : "");
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT, msg);
  } else {
    snprintf(msg, sizeof msg, "no job with id '%s'; list jobs with trainctl list", id);
    td_rpc_fail(call, TD_GRPC_NOT_FOUND, msg);
  }
}

/* ---------------------------------------------------------- workers */

static void post_event(td_server *s, event *e) {
  pthread_mutex_lock(&s->ev_mu);
  if (s->ev_tail)
    s->ev_tail->next = e;
  else
    s->ev_head = e;
  s->ev_tail = e;
  pthread_mutex_unlock(&s->ev_mu);
  uv_async_send(&s->wake);
}

/* TensorBoard: a failed write is logged once and ends the job's events
 * (training goes on). */
static void tb_check(worker_ctx *w, int rc, const td_error *err) {
  if (!rc)
    return;
  td_log_warn("TensorBoard events stopped", "job=%s err=\"%s\"", w->job->id, err->msg);
  td_error e2 = {0};
  td_tfevents_close(w->tb, &e2);
  w->tb = NULL;
}

static void tb_scalar(worker_ctx *w, const char *tag, int64_t step, float v, double now) {
  td_error err = {0};
  if (w->tb)
    tb_check(w, td_tfevents_scalar(w->tb, tag, step, v, now, &err), &err);
}

/* Flushed about once a second, so that TensorBoard sees a running job. */
static void tb_maybe_flush(worker_ctx *w, double now, int force) {
  if (!w->tb || (!force && now - w->tb_flushed < 1.0))
    return;
  td_error err = {0};
  tb_check(w, td_tfevents_flush(w->tb, &err), &err);
  w->tb_flushed = now;
}

static void w_step(void *user, const td_trainer *t, const td_step_point *p) {
  (void)t;
  worker_ctx *w = user;
  td_metrics_add_step(&w->job->metrics, p);
  if (!w->tb)
    return;
  double now = td_tfevents_now();
  tb_scalar(w, "loss", p->step, p->loss, now);
  tb_scalar(w, "learning_rate", p->step, p->lr, now);
  tb_scalar(w, "grad_norm", p->step, p->grad_norm, now);
  tb_scalar(w, "examples_per_sec", p->step, (float)p->examples_per_sec, now);
  tb_maybe_flush(w, now, 0);
}

static void w_epoch(void *user, const td_trainer *t, const td_epoch_point *p) {
  (void)t;
  worker_ctx *w = user;
  td_metrics_add_epoch(&w->job->metrics, p);
  if (!w->tb)
    return;
  double now = td_tfevents_now();
  tb_scalar(w, "epoch/train_loss", p->step, p->train_loss, now);
  tb_scalar(w, "epoch/train_accuracy", p->step, p->train_accuracy, now);
  if (p->evaluated) {
    tb_scalar(w, "epoch/test_loss", p->step, p->test_loss, now);
    tb_scalar(w, "epoch/test_accuracy", p->step, p->test_accuracy, now);
  }
  tb_maybe_flush(w, now, 1);
}

/* The job's events file (a new one at each start, resumes included) and
 * its spec as text. */
static void tb_open(worker_ctx *w, const td_trainer *t, const char *spec_json) {
  td_error err = {0};
  if (td_tfevents_open(w->tb_dir, "traind", &w->tb, &err)) {
    td_log_warn("no TensorBoard events for the job", "job=%s err=\"%s\"", w->job->id, err.msg);
    w->tb = NULL;
    return;
  }
  size_t n = strlen(spec_json) + 16;
  char *md = malloc(n);
  if (md) {
    /* Markdown: the spec as a code block. */
    snprintf(md, n, "```\n%s\n```", spec_json);
    tb_check(w, td_tfevents_text(w->tb, "job_spec", t->st.step, md, td_tfevents_now(), &err),
             &err);
    free(md);
  }
  tb_maybe_flush(w, td_tfevents_now(), 1);
}

static int w_stop(void *user) {
  worker_ctx *w = user;
  return atomic_load(&w->job->stop) != TD_STOP_NONE;
}

/* Writer thread: the outcome of a snapshot goes to the loop. */
static void w_saved(void *user, const td_saver_result *r) {
  worker_ctx *w = user;
  event *e = calloc(1, sizeof *e);
  if (!e) {
    td_log_error("out of memory reporting a checkpoint", "job=%s file=%s", w->job->id, r->name);
    return;
  }
  e->kind = EV_CHECKPOINT;
  e->job = w->job;
  e->ckpt = *r;
  post_event(w->srv, e);
}

/* Takes a snapshot now; the writer finishes the file. */
static int w_snapshot(worker_ctx *w, td_trainer *t, td_ckpt_reason reason) {
  uint64_t req = atomic_load(&w->job->save_req);
  td_error err = {0};
  int rc = td_saver_snapshot(&w->saver, t, reason, req, &err);
  if (rc) {
    td_log_warn("checkpoint snapshot failed", "job=%s step=%lld err=\"%s\"", w->job->id,
                (long long)t->st.step, err.msg);
    return rc;
  }
  w->save_taken = req;
  return TD_OK;
}

/* At a step boundary: a checkpoint when one was asked for or is due, and
 * the writer is free (otherwise at a later boundary). */
static void w_boundary(void *user, td_trainer *t) {
  worker_ctx *w = user;
  td_ckpt_reason reason;
  if (atomic_load(&w->job->save_req) > w->save_taken)
    reason = TD_CKPT_REQUESTED;
  else if (td_saver_due(&w->saver, w->job->spec->checkpoint, t->st.step))
    reason = TD_CKPT_PERIODIC;
  else
    return;
  if (!td_saver_busy(&w->saver))
    w_snapshot(w, t, reason);
}

/* Continues from the newest checkpoint that loads, and reports a resume
 * (also a restart from the beginning after a stop) to the loop. */
static void w_resume(worker_ctx *w, td_trainer *t) {
  td_job_resume r = {0};
  if (!td_saver_resume(&w->saver, t, r.checkpoint, sizeof r.checkpoint, r.note, sizeof r.note) &&
      !w->interrupted && !r.note[0])
    return; /* a first start */
  r.step = t->st.step;
  r.time_ns = wall_ns();
  event *e = calloc(1, sizeof *e);
  if (!e)
    return;
  e->kind = EV_RESUMED;
  e->job = w->job;
  e->resume = r;
  post_event(w->srv, e);
}

/* The tag of a snapshot taken now: the SaveCheckpoint requests so far,
 * which it covers. */
static uint64_t w_gen(void *user) {
  worker_ctx *w = user;
  w->save_taken = atomic_load(&w->job->save_req);
  return w->save_taken;
}

/* After the run: the end-of-job or shutdown checkpoint, written before the
 * worker reports. A job whose training is done succeeds only once its final
 * state is on disk: a failed write is retried for final_retry_sec with the
 * state kept in memory (the job stays RUNNING), and the job fails with the
 * reason if it never gets written; a cancel or the daemon's stop ends the
 * retries (the job is then cancelled, or queued to run again from its
 * previous checkpoint). The shutdown checkpoint is tried once. Cancelled and
 * failed jobs keep what they have. Returns the job's outcome. */
static int w_last_checkpoint(worker_ctx *w, td_trainer *t, int rc, td_error *err) {
  int stop = atomic_load(&w->job->stop);
  td_ckpt_reason reason;
  if (rc == TD_OK)
    reason = TD_CKPT_FINAL;
  else if (rc == TD_ECANCELLED && stop == TD_STOP_SHUTDOWN)
    reason = TD_CKPT_SHUTDOWN;
  else
    return rc;
  td_saver_wait(&w->saver);
  int force = atomic_load(&w->job->save_req) > w->save_taken; /* a SaveCheckpoint waits */
  td_saver_retry r = {.retry_sec = reason == TD_CKPT_FINAL ? w->final_retry_sec : 0.0,
                      .give_up = w_stop,
                      .gen = w_gen,
                      .user = w};
  td_error perr = {0};
  int prc = td_saver_persist(&w->saver, t, reason, force, &r, &perr);
  if (prc && reason == TD_CKPT_FINAL) {
    td_log_error("the job's final checkpoint was not written; the job does not succeed",
                 "job=%s err=\"%s\"", w->job->id, perr.msg);
    *err = perr;
    return prc;
  }
  if (prc)
    td_log_warn("shutdown checkpoint failed; the job resumes from its previous checkpoint",
                "job=%s err=\"%s\"", w->job->id, perr.msg);
  return rc;
}

static void *worker_main(void *arg) {
  worker_ctx *w = arg;
  td_job *j = w->job;
  td_error err = {0};
  td_trainer t;
  td_trainer_opts o = {.data_roots = (const char *const *)w->roots,
                       .n_data_roots = w->n_roots,
                       .threads = w->threads,
                       .cache = &w->srv->cache,
                       .backend = w->on_gpu ? td_gpu_backend : NULL,
                       .backend_arg = w->gpus,
                       .comm = w->on_gpu ? td_gpu_comm() : NULL,
                       .device_set = w->on_gpu ? "gpu" : NULL};
  event *done = calloc(1, sizeof *done);
  char *json = NULL;
  int rc = td_trainer_init(&t, j->spec, &o, &err);
  /* Room for every step of the job, up to the retention. */
  if (!rc && td_metrics_reserve(&j->metrics, (size_t)t.total_steps < w->retention
                                                 ? (size_t)t.total_steps
                                                 : w->retention) != 0) {
    td_trainer_free(&t);
    rc = td_errorf(&err, TD_ENOMEM, "no memory for the job's metrics");
  }
  if (!rc) {
    const Traind__V1__Checkpointing *c = j->spec->checkpoint;
    json = pbjson_emit(&j->spec->base, PBJSON_PROTO_NAMES);
    td_saver_opts so = {.plan = t.plan,
                        .dir = w->ckpt_dir,
                        .job_id = j->id,
                        .spec = j->spec,
                        .spec_json = json,
                        .keep_last = c && c->keep_last ? c->keep_last : DEFAULT_KEEP_LAST,
                        .keep_every = c ? c->keep_every_steps : 0,
                        .done = w_saved,
                        .user = w};
    rc = json ? td_saver_start(&w->saver, &so, &err)
              : td_errorf(&err, TD_ENOMEM, "out of memory");
    if (rc) {
      td_error_prefix(&err, "checkpoints");
      td_trainer_free(&t);
    }
  }
  if (!rc) {
    w_resume(w, &t);
    tb_open(w, &t, json);
    event *st = calloc(1, sizeof *st);
    if (st) {
      st->kind = EV_STARTED;
      st->job = j;
      st->total_steps = t.total_steps;
      st->total_epochs = t.epochs;
      st->steps_per_epoch = t.steps_per_epoch;
      st->compile_ms = t.compile_ms;
      st->cache_hit = t.plan_hit;
      post_event(w->srv, st);
    }
    td_train_hooks h = {.user = w, .on_step = w_step, .on_epoch = w_epoch,
                        .at_boundary = w_boundary, .should_stop = w_stop};
    rc = td_trainer_run(&t, &h, NULL, &err);
    rc = w_last_checkpoint(w, &t, rc, &err);
    td_saver_stop(&w->saver);
    td_trainer_free(&t);
    td_error tb_err = {0};
    if (w->tb && td_tfevents_close(w->tb, &tb_err))
      td_log_warn("TensorBoard events: closing failed", "job=%s err=\"%s\"", j->id,
                  tb_err.msg);
    w->tb = NULL;
  }
  free(json);
  td_metrics_flush(&j->metrics);
  for (size_t i = 0; i < w->n_roots; i++)
    free(w->roots[i]);
  free(w->roots);
  td_server *srv = w->srv;
  free(w->gpus);
  free(w);
  if (!done) {
    /* Without memory for the report the loop cannot learn the outcome. */
    td_log_error("out of memory reporting a finished job", "job=%s", j->id);
    abort();
  }
  done->kind = EV_DONE;
  done->job = j;
  done->rc = rc;
  snprintf(done->msg, sizeof done->msg, "%s", rc ? err.msg : "");
  post_event(srv, done);
  return NULL;
}

/* A kind of device: its name, how many, and who holds each. */
typedef struct dev_pool {
  const char *kind;
  int n;
  td_job **owner;
} dev_pool;

static int job_on_gpu(const td_job *j) {
  return j->spec->devices && j->spec->devices->kind && strcmp(j->spec->devices->kind, "gpu") == 0;
}

static dev_pool pool_of(td_server *s, int gpu) {
  return gpu ? (dev_pool){"gpu", s->n_gpus, s->gpu_owner}
             : (dev_pool){"cpu", s->n_devices, s->device_owner};
}

static int free_in(dev_pool p) {
  int n = 0;
  for (int i = 0; i < p.n; i++)
    n += p.owner[i] == NULL;
  return n;
}

static int job_device_count(const td_job *j) { return td_job_device_count(j->spec); }

/* The device of explicit id i of a job ("cpu:N" or "gpu:N" -> N). */
static int job_device_id(const td_job *j, size_t i) {
  return td_device_index(j->spec->devices->ids[i], job_on_gpu(j) ? "gpu" : "cpu");
}

/* Whether the daemon has the devices the job asks for at all. */
static int job_possible(td_server *s, const td_job *j) {
  dev_pool p = pool_of(s, job_on_gpu(j));
  const Traind__V1__Devices *d = j->spec->devices;
  for (size_t i = 0; d && i < d->n_ids; i++) {
    int dev = job_device_id(j, i);
    if (dev < 0 || dev >= p.n)
      return 0;
  }
  return job_device_count(j) <= p.n;
}

/* The host memory the RUNNING jobs hold (their admitted footprints). */
static size_t mem_held(const td_server *s) {
  size_t held = 0;
  for (size_t i = 0; i < s->n_jobs; i++)
    if (s->jobs[i]->state == TRAIND__V1__JOB_STATE__RUNNING)
      held += s->jobs[i]->mem_bytes;
  return held;
}

/* Whether the devices the job asks for are free (its explicit ones, or
 * enough of any) and its host memory fits what running jobs leave of the
 * memory for jobs. */
static int job_fits(td_server *s, const td_job *j) {
  if (s->mem_on) {
    size_t held = mem_held(s);
    if (j->mem_bytes > (s->mem.bytes > held ? s->mem.bytes - held : 0))
      return 0;
  }
  dev_pool p = pool_of(s, job_on_gpu(j));
  const Traind__V1__Devices *d = j->spec->devices;
  if (d && d->n_ids) {
    for (size_t i = 0; i < d->n_ids; i++)
      if (p.owner[job_device_id(j, i)])
        return 0;
    return 1;
  }
  return job_device_count(j) <= free_in(p);
}

/* Frees the devices a job holds. */
static void release_devices(td_server *s, td_job *j) {
  dev_pool p = pool_of(s, j->on_gpu);
  for (int i = 0; i < j->n_devices; i++)
    if (p.owner[j->devices[i]] == j)
      p.owner[j->devices[i]] = NULL;
  td_job_devices_clear(j);
}

static void finish_job(td_server *s, td_job *j, Traind__V1__JobState state,
                       int code, const char *msg);

static void start_job(td_server *s, td_job *j) {
  int need = job_device_count(j);
  const Traind__V1__Devices *d = j->spec->devices;
  j->on_gpu = job_on_gpu(j);
  dev_pool p = pool_of(s, j->on_gpu);
  /* Device lists are sized from the job's count (up to the pool's size). */
  if (td_job_devices_reserve(j, need) != TD_OK) {
    finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_RESOURCE_EXHAUSTED,
               "the daemon is out of memory");
    return;
  }
  for (size_t i = 0; d && i < d->n_ids; i++) {
    int dev = job_device_id(j, i);
    p.owner[dev] = j;
    td_job_devices_add(j, dev);
  }
  for (int i = 0; i < p.n && j->n_devices < need; i++)
    if (!p.owner[i]) {
      p.owner[i] = j;
      td_job_devices_add(j, i);
    }
  uint32_t per_device = s->threads / (uint32_t)s->n_devices;
  j->threads = (per_device ? per_device : 1) * (uint32_t)need;
  j->state = TRAIND__V1__JOB_STATE__RUNNING;
  j->started_ns = wall_ns();
  atomic_store(&j->stop, TD_STOP_NONE);
  s->running++;
  save_job(s, j);

  worker_ctx *w = calloc(1, sizeof *w);
  int ok = w != NULL && (w->gpus = calloc((size_t)j->n_devices + 1, sizeof *w->gpus)) != NULL;
  if (ok) {
    w->srv = s;
    w->job = j;
    w->threads = (int)j->threads;
    w->retention = s->cfg->metrics_retention;
    w->final_retry_sec = s->cfg->final_checkpoint_retry_sec;
    w->interrupted = j->interrupted;
    w->on_gpu = j->on_gpu;
    for (int i = 0; i < j->n_devices; i++)
      w->gpus[i] = j->devices[i];
    td_job_ckpt_dir(j, s->cfg->state_dir, w->ckpt_dir, sizeof w->ckpt_dir);
    snprintf(w->tb_dir, sizeof w->tb_dir, "%s/tensorboard/%s", s->cfg->state_dir, j->id);
    w->n_roots = s->cfg->n_data_dirs;
    w->roots = calloc(w->n_roots ? w->n_roots : 1, sizeof *w->roots);
    ok = w->roots != NULL;
    for (size_t i = 0; ok && i < w->n_roots; i++)
      ok = (w->roots[i] = strdup(s->cfg->data_dirs[i])) != NULL;
  }
  if (ok)
    ok = pthread_create(&j->thread, NULL, worker_main, w) == 0;
  if (!ok) {
    if (w) {
      for (size_t i = 0; w->roots && i < w->n_roots; i++)
        free(w->roots[i]);
      free(w->roots);
      free(w->gpus);
      free(w);
    }
    finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_RESOURCE_EXHAUSTED,
               "the daemon could not start a worker thread");
    return;
  }
  j->has_thread = 1;
  j->interrupted = 0;
  td_log_info("job started", "job=%s name=\"%s\" devices=%d threads=%u", j->id,
              j->name, j->n_devices, j->threads);
}

/* Sizes a queued job whose host memory is not known yet (one loaded at
 * start: records do not keep it), on the loop (linear in the bounded
 * spec; the datasets' headers only), and fails a job that cannot fit the
 * memory for jobs even on an idle daemon, with RESOURCE_EXHAUSTED and the
 * figures as at submission: a job that would only be OOM-killed, and the
 * daemon with it, never starts (also after a restart or a reload that
 * lowered the limit). A job that cannot be sized (its data gone) is left to
 * fail at start with the reason. Returns whether the job may wait. */
static int job_sized(td_server *s, td_job *j) {
  td_error err = {0};
  if (!j->mem_known) {
    td_trainer_opts o = {.data_roots = (const char *const *)s->cfg->data_dirs,
                         .n_data_roots = s->cfg->n_data_dirs};
    td_footprint f;
    j->mem_known = 1;
    if (td_job_footprint(j->spec, &o, &f, &err)) {
      j->mem_bytes = 0;
      return 1;
    }
    td_metrics_add_footprint(&f, s->cfg->metrics_retention);
    j->mem_bytes = f.host_bytes;
    if (s->mem_on && td_footprint_admit(&f, &s->mem, 0, &err)) {
      td_log_warn("job cannot fit the memory for jobs; failed", "job=%s err=\"%s\"", j->id,
                  err.msg);
      finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_RESOURCE_EXHAUSTED, err.msg);
      return 0;
    }
    return 1;
  }
  if (s->mem_on && j->mem_bytes > s->mem.bytes) {
    char need[32], lim[32], msg[512];
    snprintf(msg, sizeof msg,
             "memory: the job needs %s and the daemon's jobs may now use only %s (%s); make "
             "the job smaller, or raise memory_limit_bytes in the daemon's config",
             td_footprint_human(need, sizeof need, j->mem_bytes),
             td_footprint_human(lim, sizeof lim, s->mem.bytes), s->mem.source);
    finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_RESOURCE_EXHAUSTED, msg);
    return 0;
  }
  return 1;
}

/* The concurrency limit: configured, or one job per device. */
static uint32_t max_jobs(const td_server *s) {
  return s->cfg->max_concurrent_jobs ? s->cfg->max_concurrent_jobs
                                     : (uint32_t)s->n_devices;
}

/* Starts queued jobs while devices and the concurrency limit allow, in
 * order of priority, then submission. */
static void schedule(td_server *s) {
  while (!s->draining && s->running < (int)max_jobs(s)) {
    td_job *best = NULL;
    for (size_t i = 0; i < s->n_jobs; i++) {
      td_job *j = s->jobs[i];
      if (j->state != TRAIND__V1__JOB_STATE__QUEUED)
        continue;
      if (!best || j->spec->priority > best->spec->priority ||
          (j->spec->priority == best->spec->priority && j->seq < best->seq))
        best = j;
    }
    if (best && !job_possible(s, best)) {
      /* The daemon restarted with fewer devices than the job was given. */
      char msg[160];
      dev_pool p = pool_of(s, job_on_gpu(best));
      if (p.n)
        snprintf(msg, sizeof msg, "the job asks for devices this daemon does not have "
                 "(it has %s:0 to %s:%d)", p.kind, p.kind, p.n - 1);
      else
        snprintf(msg, sizeof msg, "the job asks for %s devices and this daemon has none",
                 p.kind);
      finish_job(s, best, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_FAILED_PRECONDITION, msg);
      continue;
    }
    if (best && !job_sized(s, best))
      continue; /* it can never fit: failed */
    if (!best || !job_fits(s, best))
      return;
    start_job(s, best);
  }
}

/* ------------------------------------------------------- job messages */

static void flush_watch(td_server *s, td_watch *w);
static void drop_watch(td_server *s, td_watch *w);
static void maybe_finish_shutdown(td_server *s);

static void reply_job(td_server *s, td_rpc_call *call, td_job *j) {
  td_job_msg m;
  td_job_msg_fill(&m, j, s->cfg->state_dir);
  td_rpc_reply(call, &m.job.base);
}

static void finish_job(td_server *s, td_job *j, Traind__V1__JobState state,
                       int code, const char *msg) {
  j->state = state;
  j->finished_ns = wall_ns();
  j->error_code = code;
  snprintf(j->error, sizeof j->error, "%s", msg ? msg : "");
  release_devices(s, j);
  save_job(s, j);
  if (state == TRAIND__V1__JOB_STATE__SUCCEEDED) {
    td_metrics_latest l;
    td_metrics_latest_get(&j->metrics, &l);
    td_log_info("job succeeded", "job=%s steps=%lld test_accuracy=%.4f", j->id,
                (long long)l.step, l.test_accuracy);
  } else {
    td_log_info("job ended", "job=%s state=%s err=\"%s\"", j->id,
                td_job_state_name(state), j->error);
  }
  for (size_t i = 0; i < j->n_cancel_calls; i++)
    reply_job(s, j->cancel_calls[i], j);
  free(j->cancel_calls);
  j->cancel_calls = NULL;
  j->n_cancel_calls = 0;
  /* Final flush: watchers get the rest of the points and the end. */
  td_watch *w = j->watchers;
  while (w) {
    td_watch *next = w->next;
    flush_watch(s, w);
    w = next;
  }
}

/* Answers the SaveCheckpoint calls that a checkpoint (or its failure)
 * covers: every call with gen <= upto; all of them when upto is UINT64_MAX. */
static void answer_saves(td_server *s, td_job *j, uint64_t upto, int code, const char *msg) {
  size_t keep = 0;
  char dir[4096], path[4200];
  td_job_ckpt_dir(j, s->cfg->state_dir, dir, sizeof dir);
  for (size_t i = 0; i < j->n_save_calls; i++) {
    td_save_wait *sw = &j->save_calls[i];
    if (sw->gen > upto) {
      j->save_calls[keep++] = *sw;
    } else if (code != TD_GRPC_OK) {
      td_rpc_fail(sw->call, code, msg);
    } else {
      Traind__V1__CheckpointInfo info;
      Google__Protobuf__Timestamp t;
      td_job_ckpt_info(&j->ckpt, dir, &info, &t, path, sizeof path);
      td_rpc_reply(sw->call, &info.base);
    }
  }
  j->n_save_calls = keep;
}

static void on_checkpoint(td_server *s, td_job *j, const td_saver_result *r) {
  if (s->prom_on)
    td_exporter_checkpoint(&s->prom, r->rc == TD_OK, r->write_sec);
  if (r->rc) {
    snprintf(j->ckpt_error, sizeof j->ckpt_error, "step %lld (%s): %s", (long long)r->step,
             td_ckpt_reason_name(r->reason), r->msg);
    td_log_error("checkpoint failed", "job=%s step=%lld reason=%s err=\"%s\"", j->id,
                 (long long)r->step, td_ckpt_reason_name(r->reason), r->msg);
    char msg[TD_ERRMSG_MAX + 64];
    snprintf(msg, sizeof msg, "the checkpoint failed: %s", r->msg);
    answer_saves(s, j, r->gen, td_grpc_status(r->rc), msg);
    save_job(s, j);
    return;
  }
  td_job_ckpt *c = &j->ckpt;
  snprintf(c->file, sizeof c->file, "%s", r->name);
  c->step = r->step;
  c->epochs_completed = r->epoch ? r->epoch - 1 : 0;
  c->bytes = r->bytes;
  c->time_ns = r->time_ns;
  snprintf(c->reason, sizeof c->reason, "%s", td_ckpt_reason_name(r->reason));
  c->write_sec = r->write_sec;
  c->stall_ms = r->stall_ms;
  j->ckpts_written++;
  j->ckpt_error[0] = 0;
  j->crashes = 0; /* progress a restart keeps: earlier stops are forgiven */
  td_log_info("checkpoint written",
              "job=%s file=%s step=%lld reason=%s bytes=%lld stall_ms=%.2f write_sec=%.3f", j->id,
              r->name, (long long)r->step, c->reason, (long long)r->bytes, r->stall_ms,
              r->write_sec);
  answer_saves(s, j, r->gen, TD_GRPC_OK, NULL);
  save_job(s, j);
}

static void on_event(td_server *s, event *e) {
  td_job *j = e->job;
  if (e->kind == EV_CHECKPOINT) {
    on_checkpoint(s, j, &e->ckpt);
    return;
  }
  if (e->kind == EV_RESUMED) {
    td_job_add_resume(j, &e->resume);
    save_job(s, j);
    /* Every %s of a record is escaped as a value (daemon/log.h), so the
     * optional note is a second form, not text spliced into the format. */
    if (e->resume.checkpoint[0] && e->resume.note[0])
      td_log_info("job resumed from a checkpoint", "job=%s file=%s step=%lld note=\"%s\"",
                  j->id, e->resume.checkpoint, (long long)e->resume.step, e->resume.note);
    else if (e->resume.checkpoint[0])
      td_log_info("job resumed from a checkpoint", "job=%s file=%s step=%lld", j->id,
                  e->resume.checkpoint, (long long)e->resume.step);
    else if (e->resume.note[0])
      td_log_info("job starts over: no usable checkpoint", "job=%s note=\"%s\"", j->id,
                  e->resume.note);
    else
      td_log_info("job starts over: no usable checkpoint", "job=%s", j->id);
    return;
  }
  if (e->kind == EV_STARTED) {
    j->total_steps = e->total_steps;
    j->total_epochs = e->total_epochs;
    j->steps_per_epoch = e->steps_per_epoch;
    j->compile_ms = e->compile_ms;
    j->cache_hit = e->cache_hit;
    save_job(s, j);
    return;
  }
  pthread_join(j->thread, NULL);
  j->has_thread = 0;
  s->running--;
  int stop = atomic_load(&j->stop);
  if (j->n_save_calls) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "job %s stopped (%s) before it reached a step boundary to checkpoint at",
             j->id, e->rc == TD_OK ? "finished" : td_errname(e->rc));
    answer_saves(s, j, UINT64_MAX, TD_GRPC_FAILED_PRECONDITION, msg);
  }
  if (e->rc == TD_OK) {
    finish_job(s, j, TRAIND__V1__JOB_STATE__SUCCEEDED, 0, NULL);
  } else if (e->rc == TD_ECANCELLED && stop == TD_STOP_SHUTDOWN &&
             j->n_cancel_calls == 0) {
    /* Interrupted by the daemon's stop: queued again for the next start. */
    release_devices(s, j);
    j->state = TRAIND__V1__JOB_STATE__QUEUED;
    j->started_ns = 0;
    save_job(s, j);
    td_log_info("job interrupted by shutdown; queued for the next start", "job=%s", j->id);
    td_watch *w = j->watchers;
    while (w) {
      td_watch *next = w->next;
      flush_watch(s, w);
      td_rpc_finish(w->call, TD_GRPC_UNAVAILABLE,
                    "the daemon is shutting down; the job will run again when it restarts");
      drop_watch(s, w);
      w = next;
    }
  } else if (e->rc == TD_ECANCELLED) {
    finish_job(s, j, TRAIND__V1__JOB_STATE__CANCELLED, TD_GRPC_CANCELLED, e->msg);
  } else {
    finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, td_grpc_status(e->rc), e->msg);
  }
  schedule(s);
  maybe_finish_shutdown(s);
}

static void on_wake(uv_async_t *h) {
  td_server *s = h->data;
  pthread_mutex_lock(&s->ev_mu);
  event *e = s->ev_head;
  s->ev_head = s->ev_tail = NULL;
  pthread_mutex_unlock(&s->ev_mu);
  while (e) {
    event *next = e->next;
    on_event(s, e);
    free(e);
    e = next;
  }
}

/* ----------------------------------------------------------- metrics */

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

static int page_read(page *p, td_job *j, int64_t since_step,
                     int64_t since_epoch, size_t max_steps) {
  memset(p, 0, sizeof *p);
  size_t max_epochs = 4096;
  p->srec = malloc(max_steps * sizeof *p->srec);
  p->erec = malloc(max_epochs * sizeof *p->erec);
  if (!p->srec || !p->erec)
    return -1;
  p->n_steps = td_metrics_read_steps(&j->metrics, since_step, p->srec, max_steps,
                                     &p->more, &p->oldest);
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
    td_timestamp_set(&p->times[p->n_steps + i], r->time_ns);
    m->time = &p->times[p->n_steps + i];
    p->epoch_ptrs[i] = m;
  }
  return 0;
}

static void drop_watch(td_server *s, td_watch *w) {
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
static void flush_watch(td_server *s, td_watch *w) {
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
      drop_watch(s, w);
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
        drop_watch(s, w);
      }
      return;
    }
  }
}

static void on_flush_timer(uv_timer_t *t) {
  td_server *s = t->data;
  for (size_t i = 0; i < s->n_jobs; i++) {
    td_watch *w = s->jobs[i]->watchers;
    while (w) {
      td_watch *next = w->next;
      flush_watch(s, w);
      w = next;
    }
  }
}

static void on_watch_drain(void *arg, td_rpc_call *call) {
  (void)call;
  td_watch *w = arg;
  flush_watch(w->srv, w);
}

static void on_watch_cancel(void *arg, td_rpc_call *call) {
  td_watch *w = arg;
  td_rpc_finish(call, TD_GRPC_CANCELLED, "cancelled");
  drop_watch(NULL, w);
}

/* ---------------------------------------------------------- handlers */

/* ------------------------------------------------------ submissions */

/* A SubmitJob past its cheap checks. Validation, compiling, the datasets'
 * headers and the memory checks take time that grows with the spec, so
 * they run on libuv's thread pool (submit_check), never on the loop: that
 * function reads only this struct, which holds its own copy of the spec
 * and of what it needs of the daemon's state, taken on the loop, and
 * writes the outcome here. The loop finishes the submission (the job, its
 * record, the schedule, the reply) in submit_done. */
typedef struct submit_work {
  uv_work_t req;
  td_server *srv;            /* for submit_done, on the loop */
  td_rpc_call *call;         /* answered by submit_done */
  Traind__V1__JobSpec *spec; /* owned until it goes to the job */
  char *name;                /* owned */
  char **roots;              /* the data roots at submission, owned */
  size_t n_roots;
  int n_cpus, n_gpus;        /* the device pools (fixed while the daemon runs) */
  char gpu_why[256];
  unsigned char *gpu_held;   /* (n_gpus) whether a job holds each GPU now; owned */
  td_memory_limit mem;       /* the memory for jobs; checked when mem_on */
  int mem_on;
  uint32_t retention;        /* metrics_retention */
  const char *gate;          /* td_server submit_gate; borrowed (outlives the loop) */
  /* The outcome. */
  int code;                  /* a gRPC status; TD_GRPC_OK: the job is accepted */
  char msg[TD_ERRMSG_MAX];
  size_t mem_bytes;          /* the job's host memory (td_footprint host_bytes) */
  double check_ms;
} submit_work;

static void submit_work_free(submit_work *w) {
  if (!w)
    return;
  if (w->spec)
    protobuf_c_message_free_unpacked(&w->spec->base, NULL);
  free(w->name);
  for (size_t i = 0; i < w->n_roots; i++)
    free(w->roots[i]);
  free(w->roots);
  free(w->gpu_held);
  free(w);
}

/* A deep copy of a spec (the request belongs to its call). */
static Traind__V1__JobSpec *copy_spec(const Traind__V1__JobSpec *spec) {
  size_t n = traind__v1__job_spec__get_packed_size(spec);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf)
    return NULL;
  traind__v1__job_spec__pack(spec, buf);
  Traind__V1__JobSpec *copy = traind__v1__job_spec__unpack(NULL, n, buf);
  free(buf);
  return copy;
}

static double mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int submit_refuse(submit_work *w, int code, const char *msg) {
  w->code = code;
  snprintf(w->msg, sizeof w->msg, "%s", msg);
  return code;
}

/* Whether a GPU job's buffers fit the free memory of the GPUs it would run
 * on: its devices.ids, else the first devices.count GPUs that no job of
 * this daemon holds (those start_job would give it now; when fewer are
 * free, the job waits for whichever frees first, so this is an
 * approximation). A GPU another job of this daemon holds is not checked:
 * its free memory now is not what the job will find once it gets the GPU
 * (should it be short then, the job fails at start naming the allocation).
 * TD_ENOMEM (RESOURCE_EXHAUSTED) says what the job needs, what is free on
 * which GPU, and what to change. */
static int check_gpu_memory(const submit_work *w, const td_footprint *f, td_error *err) {
  const Traind__V1__Devices *d = w->spec->devices;
  const int need = td_job_device_count(w->spec);
  int rc = TD_OK;
  for (int i = 0, seen = 0; !rc && seen < need && i < w->n_gpus; i++) {
    int gpu = d->n_ids ? td_device_index(d->ids[i], "gpu") : i;
    if (!d->n_ids && w->gpu_held[gpu])
      continue; /* the job would be given a free one */
    seen++;
    if (w->gpu_held[gpu])
      continue; /* the job waits for it: not checked (see above) */
    size_t free_bytes = 0, total_bytes = 0;
    td_error qerr = {0};
    if (td_gpu_memory(gpu, &free_bytes, &total_bytes, &qerr)) {
      td_log_warn("cannot query GPU memory; not checking the job's size on it",
                  "gpu=%d err=\"%s\"", gpu, qerr.msg);
      continue;
    }
    rc = td_footprint_fits(f, gpu, free_bytes, err);
  }
  return rc;
}

/* Tests only: while the file TRAIND_TEST_SUBMIT_GATE names exists, a
 * submission waits here, after it logged its start (so that a test can
 * show the daemon serving other calls while a submission is checked). At
 * most a minute. */
static void submit_gate_wait(const char *gate) {
  struct stat st;
  for (int i = 0; gate && i < 6000 && stat(gate, &st) == 0; i++) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

/* libuv's thread pool: every check of the submission that reads more than
 * the request (the spec's rules and size limits, devices, the compile, the
 * dataset files and their headers, init_from, the memory for jobs and on
 * GPUs). Reads only w; shares nothing with the loop but the log. */
static void submit_check(uv_work_t *req) {
  submit_work *w = req->data;
  const Traind__V1__JobSpec *spec = w->spec;
  const double t0 = mono_ms();
  td_log_debug("checking a submission", "layers=%zu bytes=%zu",
               spec->model ? spec->model->n_layers : 0,
               traind__v1__job_spec__get_packed_size(spec));
  submit_gate_wait(w->gate);
  td_error err = {0};
  int rc = td_job_check_spec(spec, &err);
  if (rc) {
    submit_refuse(w, td_grpc_status(rc), err.msg);
    return;
  }
  const int need = td_job_device_count(spec);
  const int gpu = spec->devices && spec->devices->kind && strcmp(spec->devices->kind, "gpu") == 0;
  const char *kind = gpu ? "gpu" : "cpu";
  const int pool = gpu ? w->n_gpus : w->n_cpus;
  char msg[512];
  if (gpu && !pool) {
    snprintf(msg, sizeof msg, "devices.kind: the job asks for GPUs, but this daemon has none: %s",
             w->gpu_why);
    submit_refuse(w, TD_GRPC_FAILED_PRECONDITION, msg);
    return;
  }
  if (need > pool) {
    snprintf(msg, sizeof msg,
             "devices.count: the job asks for %d %s devices but the daemon has %d; "
             "ask for at most %d",
             need, kind, pool, pool);
    submit_refuse(w, TD_GRPC_FAILED_PRECONDITION, msg);
    return;
  }
  td_trainer_opts o = {.data_roots = (const char *const *)w->roots,
                       .n_data_roots = w->n_roots,
                       .backend = gpu ? td_gpu_backend : NULL,
                       .comm = gpu ? td_gpu_comm() : NULL};
  if ((rc = td_trainer_check(spec, &o, &err))) {
    submit_refuse(w, td_grpc_status(rc), err.msg);
    return;
  }
  /* The format of the ids is checked; now whether the daemon has them. */
  const Traind__V1__Devices *dv = spec->devices;
  for (size_t i = 0; dv && i < dv->n_ids; i++)
    if (td_device_index(dv->ids[i], kind) >= pool) {
      snprintf(msg, sizeof msg,
               "devices.ids[%zu]: %.32s does not exist; the daemon has %s:0 to %s:%d", i,
               dv->ids[i], kind, kind, pool - 1);
      submit_refuse(w, TD_GRPC_FAILED_PRECONDITION, msg);
      return;
    }
  /* Memory: the job's host memory against what the daemon's jobs may use
   * (on an idle daemon: a job that fits only once others finish waits in
   * the queue), and a GPU job's buffers against its GPUs' free memory. */
  td_trainer_opts fo = {.data_roots = (const char *const *)w->roots, .n_data_roots = w->n_roots};
  td_footprint f;
  if ((rc = td_job_footprint(spec, &fo, &f, &err))) {
    submit_refuse(w, td_grpc_status(rc), err.msg);
    return;
  }
  td_metrics_add_footprint(&f, w->retention);
  if ((w->mem_on && (rc = td_footprint_admit(&f, &w->mem, 0, &err))) ||
      (gpu && (rc = check_gpu_memory(w, &f, &err)))) {
    submit_refuse(w, td_grpc_status(rc), err.msg);
    return;
  }
  w->mem_bytes = f.host_bytes;
  w->check_ms = mono_ms() - t0;
  w->code = TD_GRPC_OK;
}

/* On the loop: the outcome of submit_check. An accepted job gets its id
 * and record, is queued and scheduled, and the call is answered. */
static void submit_done(uv_work_t *req, int status) {
  submit_work *w = req->data;
  td_server *s = w->srv;
  td_rpc_call *call = w->call;
  if (status == 0 && w->code == TD_GRPC_OK && s->draining) {
    /* The daemon began to stop while the job was checked. */
    submit_refuse(w, TD_GRPC_UNAVAILABLE,
                  "the daemon is shutting down and accepts no jobs; submit again after it "
                  "restarts");
  } else if (status != 0) {
    submit_refuse(w, TD_GRPC_INTERNAL, "the submission's checks did not run");
  }
  if (w->code != TD_GRPC_OK) {
    td_log_debug("submission refused", "code=%d err=\"%s\"", w->code, w->msg);
    td_rpc_fail(call, w->code, w->msg);
    submit_work_free(w);
    return;
  }
  td_log_debug("submission checked", "check_ms=%.1f mem_bytes=%zu", w->check_ms, w->mem_bytes);
  td_error err = {0};
  const size_t mem_bytes = w->mem_bytes;
  td_job *j = td_job_new(w->spec, w->name, s->next_seq++);
  if (j)
    w->spec = NULL; /* the job's now */
  if (j && s->n_jobs == s->cap_jobs) {
    size_t cap = s->cap_jobs ? s->cap_jobs * 2 : 64;
    td_job **nj = realloc(s->jobs, cap * sizeof *nj);
    if (nj) {
      s->jobs = nj;
      s->cap_jobs = cap;
    } else {
      td_job_free(j);
      j = NULL;
    }
  }
  submit_work_free(w);
  if (!j) {
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
    return;
  }
  j->mem_bytes = mem_bytes;
  j->mem_known = 1;
  if (td_job_save(j, s->cfg->state_dir, &err)) {
    td_log_error("cannot save job record", "job=%s err=\"%s\"", j->id, err.msg);
    td_job_free(j);
    td_rpc_fail(call, TD_GRPC_INTERNAL, "the daemon cannot write its state directory");
    return;
  }
  s->jobs[s->n_jobs++] = j;
  td_log_info("job queued", "job=%s name=\"%s\" peer=%s", j->id, j->name, td_rpc_peer(call));
  schedule(s);
  td_job_msg m;
  td_job_msg_fill(&m, j, s->cfg->state_dir);
  Traind__V1__SubmitJobResponse resp = TRAIND__V1__SUBMIT_JOB_RESPONSE__INIT;
  resp.job = &m.job;
  td_rpc_reply(call, &resp.base);
}

static void h_submit(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__SubmitJobRequest *req = (const void *)req_;
  if (s->draining) {
    td_rpc_fail(call, TD_GRPC_UNAVAILABLE,
                "the daemon is shutting down and accepts no jobs; submit again after it restarts");
    return;
  }
  if (!req->spec) {
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT, "spec: required (the JobSpec to run)");
    return;
  }
  td_error err = {0};
  /* Sizes first: a job must fit every reply that carries it. */
  size_t packed = traind__v1__job_spec__get_packed_size(req->spec);
  if (packed > TD_JOBSPEC_MAX_BYTES) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "spec: the JobSpec is %zu bytes packed; the limit is %zu bytes (1 MiB): "
             "make it smaller",
             packed, TD_JOBSPEC_MAX_BYTES);
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT, msg);
    return;
  }
  if (td_job_name_check("spec.name", req->spec->name, &err) ||
      td_job_name_check("name", req->name, &err)) {
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT, err.msg);
    return;
  }
  /* The checks that can take a while run off the loop (submit_check), on
   * a copy of the request's spec; the loop finishes in submit_done. */
  submit_work *w = calloc(1, sizeof *w);
  const char *name = req->name && *req->name ? req->name : req->spec->name;
  int ok = w && (w->spec = copy_spec(req->spec)) && (w->name = strdup(name ? name : "")) &&
           (w->gpu_held = calloc((size_t)(s->n_gpus ? s->n_gpus : 1), 1)) &&
           (w->roots = calloc(s->cfg->n_data_dirs ? s->cfg->n_data_dirs : 1, sizeof *w->roots));
  for (size_t i = 0; ok && i < s->cfg->n_data_dirs; i++)
    ok = (w->roots[w->n_roots++] = strdup(s->cfg->data_dirs[i])) != NULL;
  if (ok) {
    w->req.data = w;
    w->srv = s;
    w->call = call;
    w->n_cpus = s->n_devices;
    w->n_gpus = s->n_gpus;
    snprintf(w->gpu_why, sizeof w->gpu_why, "%s", s->gpu_why);
    for (int i = 0; i < s->n_gpus; i++)
      w->gpu_held[i] = s->gpu_owner[i] != NULL;
    w->mem = s->mem;
    w->mem_on = s->mem_on;
    w->retention = s->cfg->metrics_retention;
    w->gate = s->submit_gate;
    ok = uv_queue_work(&s->loop, &w->req, submit_check, submit_done) == 0;
  }
  if (!ok) {
    submit_work_free(w);
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
  }
}

static void h_get(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__GetJobRequest *req = (const void *)req_;
  td_job *j = find_job(s, req->id);
  if (!j) {
    fail_not_found(call, req->id);
    return;
  }
  reply_job(s, call, j);
}

static int state_wanted(const Traind__V1__ListJobsRequest *req, Traind__V1__JobState st) {
  if (req->n_states == 0)
    return 1;
  for (size_t i = 0; i < req->n_states; i++)
    if (req->states[i] == st)
      return 1;
  return 0;
}

/* The bytes of a protobuf varint holding v. */
static size_t varint_size(size_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static void h_list(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__ListJobsRequest *req = (const void *)req_;
  size_t limit = req->page_size ? req->page_size : LIST_DEFAULT;
  if (limit > LIST_MAX)
    limit = LIST_MAX;
  /* Newest first; a page token is the id of the last job of the previous
   * page, and the next page starts after it. */
  size_t start = s->n_jobs;
  if (req->page_token && *req->page_token) {
    size_t i = 0;
    while (i < s->n_jobs && strcmp(s->jobs[i]->id, req->page_token) != 0)
      i++;
    if (i == s->n_jobs) {
      td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT,
                  "page_token: not a token from a previous ListJobs reply");
      return;
    }
    start = i;
  }
  td_job_msg *msgs = calloc(limit, sizeof *msgs);
  Traind__V1__Job **ptrs = calloc(limit, sizeof *ptrs);
  if (!msgs || !ptrs) {
    free(msgs);
    free(ptrs);
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
    return;
  }
  /* Jobs are added while the packed reply stays within LIST_MAX_BYTES; a
   * page holds at least one job (at most a 1 MiB spec and a 1 KiB name,
   * so a reply stays far below a client's 4 MiB receive limit). */
  size_t n = 0, i = start, bytes = 0;
  while (i > 0 && n < limit) {
    td_job *j = s->jobs[i - 1];
    if (!state_wanted(req, j->state)) {
      i--;
      continue;
    }
    td_job_msg_fill(&msgs[n], j, s->cfg->state_dir);
    size_t len = traind__v1__job__get_packed_size(&msgs[n].job);
    size_t add = 1 + varint_size(len) + len; /* field 1: tag, length, bytes */
    if (n > 0 && bytes + add + NEXT_TOKEN_BYTES > LIST_MAX_BYTES)
      break;
    bytes += add;
    i--;
    ptrs[n] = &msgs[n].job;
    n++;
  }
  /* A next page exists when an older matching job remains. */
  int more = 0;
  for (size_t k = i; k > 0 && !more; k--)
    more = state_wanted(req, s->jobs[k - 1]->state);
  Traind__V1__ListJobsResponse resp = TRAIND__V1__LIST_JOBS_RESPONSE__INIT;
  resp.n_jobs = n;
  resp.jobs = ptrs;
  if (more && n)
    resp.next_page_token = msgs[n - 1].job.id;
  td_rpc_reply(call, &resp.base);
  free(msgs);
  free(ptrs);
}

static void h_cancel(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__CancelJobRequest *req = (const void *)req_;
  td_job *j = find_job(s, req->id);
  if (!j) {
    fail_not_found(call, req->id);
    return;
  }
  if (td_job_is_final(j)) {
    char msg[128];
    snprintf(msg, sizeof msg, "job %s already ended (%s); nothing to cancel", j->id,
             td_job_state_name(j->state));
    td_rpc_fail(call, TD_GRPC_FAILED_PRECONDITION, msg);
    return;
  }
  if (j->state == TRAIND__V1__JOB_STATE__QUEUED) {
    finish_job(s, j, TRAIND__V1__JOB_STATE__CANCELLED, TD_GRPC_CANCELLED,
               "cancelled while queued");
    reply_job(s, call, j);
    return;
  }
  /* Running: the worker stops at its next step boundary; the reply waits
   * for that, so it carries the final state. */
  td_rpc_call **nc = realloc(j->cancel_calls, (j->n_cancel_calls + 1) * sizeof *nc);
  if (!nc) {
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
    return;
  }
  j->cancel_calls = nc;
  j->cancel_calls[j->n_cancel_calls++] = call;
  int expected = TD_STOP_NONE;
  atomic_compare_exchange_strong(&j->stop, &expected, TD_STOP_CANCEL);
  td_log_info("job cancel requested", "job=%s peer=%s", j->id, td_rpc_peer(call));
}

static void h_metrics(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__GetMetricsRequest *req = (const void *)req_;
  td_job *j = find_job(s, req->id);
  if (!j) {
    fail_not_found(call, req->id);
    return;
  }
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

static void h_watch(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__WatchMetricsRequest *req = (const void *)req_;
  td_job *j = find_job(s, req->id);
  if (!j) {
    fail_not_found(call, req->id);
    return;
  }
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
  flush_watch(s, w);
}

static void h_save(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__SaveCheckpointRequest *req = (const void *)req_;
  td_job *j = find_job(s, req->id);
  if (!j) {
    fail_not_found(call, req->id);
    return;
  }
  if (j->state != TRAIND__V1__JOB_STATE__RUNNING || atomic_load(&j->stop) != TD_STOP_NONE) {
    char msg[512];
    if (td_job_is_final(j) && j->ckpt.file[0])
      snprintf(msg, sizeof msg,
               "job %s has ended (%s); its last checkpoint is %s at step %lld "
               "(trainctl export %s FILE)",
               j->id, td_job_state_name(j->state), j->ckpt.file, (long long)j->ckpt.step, j->id);
    else
      snprintf(msg, sizeof msg, "job %s is %s; only a running job can be checkpointed", j->id,
               j->state == TRAIND__V1__JOB_STATE__RUNNING ? "stopping"
                                                          : td_job_state_name(j->state));
    td_rpc_fail(call, TD_GRPC_FAILED_PRECONDITION, msg);
    return;
  }
  td_save_wait *nc = realloc(j->save_calls, (j->n_save_calls + 1) * sizeof *nc);
  if (!nc) {
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
    return;
  }
  j->save_calls = nc;
  uint64_t gen = atomic_fetch_add(&j->save_req, 1) + 1;
  j->save_calls[j->n_save_calls++] = (td_save_wait){call, gen};
  td_log_info("checkpoint requested", "job=%s peer=%s", j->id, td_rpc_peer(call));
}

/* An ExportCheckpoint stream: the file goes out a chunk at a time as the
 * client takes it. */
typedef struct exporter {
  FILE *f;
  char file[TD_CKPT_NAME_MAX];
  int64_t step, size, offset;
  uint8_t *buf; /* EXPORT_CHUNK bytes while reading; freed while the stream waits */
} exporter;

static void export_free(exporter *x) {
  if (x->f)
    fclose(x->f);
  free(x->buf);
  free(x);
}

static void export_more(void *arg, td_rpc_call *call) {
  exporter *x = arg;
  while (td_rpc_pending(call) < EXPORT_AHEAD) {
    if (x->offset >= x->size && x->offset > 0) {
      td_rpc_on_drain(call, NULL, NULL);
      td_rpc_on_cancel(call, NULL, NULL);
      td_rpc_finish(call, TD_GRPC_OK, NULL);
      export_free(x);
      return;
    }
    size_t want = (size_t)(x->size - x->offset) < EXPORT_CHUNK ? (size_t)(x->size - x->offset)
                                                               : EXPORT_CHUNK;
    if (!x->buf && !(x->buf = malloc(EXPORT_CHUNK))) {
      td_rpc_on_drain(call, NULL, NULL);
      td_rpc_on_cancel(call, NULL, NULL);
      td_rpc_finish(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
      export_free(x);
      return;
    }
    size_t got = want ? fread(x->buf, 1, want, x->f) : 0;
    if (got != want) {
      td_rpc_on_drain(call, NULL, NULL);
      td_rpc_on_cancel(call, NULL, NULL);
      td_rpc_finish(call, TD_GRPC_INTERNAL, "reading the checkpoint file failed");
      export_free(x);
      return;
    }
    Traind__V1__FileChunk c = TRAIND__V1__FILE_CHUNK__INIT;
    if (x->offset == 0) {
      c.file = x->file;
      c.step = x->step;
      c.total_bytes = x->size;
    }
    c.offset = x->offset;
    c.data.data = x->buf;
    c.data.len = got;
    x->offset += (int64_t)got;
    if (td_rpc_send(call, &c.base) != TD_OK)
      return; /* cancelled: the cancel callback frees */
    if (x->size == 0)
      x->offset = 1; /* an empty file: one chunk, then the end */
  }
  /* The chunks are packed into their messages: while the client takes
   * them, the stream holds only those. */
  free(x->buf);
  x->buf = NULL;
}

static void export_cancel(void *arg, td_rpc_call *call) {
  td_rpc_on_drain(call, NULL, NULL);
  td_rpc_finish(call, TD_GRPC_CANCELLED, "cancelled");
  export_free(arg);
}

static void h_export(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__ExportCheckpointRequest *req = (const void *)req_;
  td_job *j = find_job(s, req->id);
  if (!j) {
    fail_not_found(call, req->id);
    return;
  }
  char dir[4096], path[4200], msg[4400];
  td_job_ckpt_dir(j, s->cfg->state_dir, dir, sizeof dir);
  td_ckpt_file *fs = NULL;
  size_t n = 0;
  td_error err = {0};
  if (td_ckpt_list(dir, &fs, &n, &err)) {
    td_rpc_fail(call, TD_GRPC_INTERNAL, err.msg);
    return;
  }
  size_t pick = 0;
  while (req->step && pick < n && fs[pick].step != req->step)
    pick++;
  if (pick >= n) {
    if (req->step)
      snprintf(msg, sizeof msg, "job %s has no checkpoint at step %lld (it has %zu; the newest "
               "is at step %lld)", j->id, (long long)req->step, n, n ? (long long)fs[0].step : 0LL);
    else
      snprintf(msg, sizeof msg, "job %s has no checkpoint yet%s", j->id,
               j->state == TRAIND__V1__JOB_STATE__RUNNING
                   ? "; take one with trainctl checkpoint" : "");
    free(fs);
    td_rpc_fail(call, TD_GRPC_NOT_FOUND, msg);
    return;
  }
  exporter *x = calloc(1, sizeof *x);
  snprintf(path, sizeof path, "%s/%s", dir, fs[pick].name);
  if (x) {
    snprintf(x->file, sizeof x->file, "%s", fs[pick].name);
    x->step = fs[pick].step;
    x->buf = malloc(EXPORT_CHUNK);
  }
  free(fs);
  if (!x || !x->buf) {
    if (x)
      export_free(x);
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
    return;
  }
  /* Opened now: retention may remove the name, the open file stays whole. */
  struct stat sb;
  td_error oerr = {0};
  int fd = td_open_regular(path, "checkpoint", &sb, &oerr);
  if (fd >= 0 && !(x->f = fdopen(fd, "rb")))
    close(fd);
  if (!x->f) {
    if (fd >= 0)
      snprintf(oerr.msg, sizeof oerr.msg, "cannot read %.900s: %s", path, strerror(errno));
    export_free(x);
    td_rpc_fail(call, fd >= 0 ? TD_GRPC_INTERNAL : td_grpc_status(fd), oerr.msg);
    return;
  }
  x->size = (int64_t)sb.st_size;
  td_log_info("exporting a checkpoint", "job=%s file=%s bytes=%lld peer=%s", j->id, x->file,
              (long long)x->size, td_rpc_peer(call));
  td_rpc_on_cancel(call, export_cancel, x);
  td_rpc_on_drain(call, export_more, x);
  export_more(x, call);
}

static void h_devices(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  (void)req_;
  td_server *s = ctx;
  size_t n = (size_t)s->n_devices + (size_t)s->n_gpus;
  Traind__V1__Device *d = calloc(n, sizeof *d);
  Traind__V1__Device **ptrs = calloc(n, sizeof *ptrs);
  char(*ids)[32] = calloc(n, sizeof *ids);
  char(*desc)[128] = calloc(n, sizeof *desc);
  if (!d || !ptrs || !ids || !desc) {
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
  } else {
    uint32_t per = s->threads / (uint32_t)s->n_devices;
    for (size_t i = 0; i < n; i++) {
      traind__v1__device__init(&d[i]);
      size_t k = i < (size_t)s->n_devices ? i : i - (size_t)s->n_devices;
      int gpu = i >= (size_t)s->n_devices;
      snprintf(ids[i], sizeof ids[i], "%s:%zu", gpu ? "gpu" : "cpu", k);
      if (gpu)
        snprintf(desc[i], sizeof desc[i], "GPU %zu (CUDA device %zu)", k, k);
      else
        snprintf(desc[i], sizeof desc[i], "CPU replica %zu (%u compute threads)", k,
                 per ? per : 1);
      d[i].id = ids[i];
      d[i].kind = gpu ? "gpu" : "cpu";
      d[i].description = desc[i];
      d[i].threads = gpu ? 0 : (per ? per : 1);
      td_job *owner = gpu ? s->gpu_owner[k] : s->device_owner[k];
      d[i].job_id = owner ? owner->id : "";
      ptrs[i] = &d[i];
    }
    Traind__V1__ListDevicesResponse r = TRAIND__V1__LIST_DEVICES_RESPONSE__INIT;
    r.n_devices = n;
    r.devices = ptrs;
    r.gpus_unavailable = s->n_gpus ? "" : s->gpu_why;
    td_rpc_reply(call, &r.base);
  }
  free(d);
  free(ptrs);
  free(ids);
  free(desc);
}

static void h_info(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  (void)req_;
  td_server *s = ctx;
  Traind__V1__DaemonInfo r = TRAIND__V1__DAEMON_INFO__INIT;
  Google__Protobuf__Timestamp started;
  td_timestamp_set(&started, s->started_ns);
  r.version = TRAIND_VERSION;
  r.started = &started;
  r.uptime_sec = (double)(wall_ns() - s->started_ns) / 1e9;
  pthread_mutex_lock(&s->cache.mu);
  r.compile_cache_entries = s->cache.n_entries;
  r.compile_cache_hits = s->cache.hits;
  r.compile_cache_misses = s->cache.misses;
  pthread_mutex_unlock(&s->cache.mu);
  r.n_listen = s->n_listen_shown;
  r.listen = s->listen_shown;
  r.n_data_dirs = s->cfg->n_data_dirs;
  r.data_dirs = s->cfg->data_dirs;
  r.max_concurrent_jobs = max_jobs(s);
  for (size_t i = 0; i < s->n_jobs; i++) {
    r.jobs_queued += s->jobs[i]->state == TRAIND__V1__JOB_STATE__QUEUED;
    r.jobs_running += s->jobs[i]->state == TRAIND__V1__JOB_STATE__RUNNING;
  }
  r.jobs_total = (uint32_t)s->n_jobs;
  td_rpc_reply(call, &r.base);
}

#define TRAINER(rpc, kind, req, fn)                                          \
  {"/" TRAINER_SERVICE "/" rpc, kind, &traind__v1__##req##__descriptor, fn, NULL}

static const td_rpc_method trainer_methods[] = {
    TRAINER("SubmitJob", TD_RPC_UNARY, submit_job_request, h_submit),
    TRAINER("GetJob", TD_RPC_UNARY, get_job_request, h_get),
    TRAINER("ListJobs", TD_RPC_UNARY, list_jobs_request, h_list),
    TRAINER("CancelJob", TD_RPC_UNARY, cancel_job_request, h_cancel),
    TRAINER("GetMetrics", TD_RPC_UNARY, get_metrics_request, h_metrics),
    TRAINER("WatchMetrics", TD_RPC_SERVER_STREAM, watch_metrics_request, h_watch),
    TRAINER("ListDevices", TD_RPC_UNARY, list_devices_request, h_devices),
    TRAINER("GetDaemonInfo", TD_RPC_UNARY, get_daemon_info_request, h_info),
    TRAINER("SaveCheckpoint", TD_RPC_UNARY, save_checkpoint_request, h_save),
    TRAINER("ExportCheckpoint", TD_RPC_SERVER_STREAM, export_checkpoint_request, h_export),
};
#define N_TRAINER (sizeof trainer_methods / sizeof trainer_methods[0])

/* ---------------------------------------------------------- metrics */

static void on_rpc_end(void *arg, const char *method, int code, double sec) {
  td_server *s = arg;
  if (s->prom_on)
    td_exporter_rpc(&s->prom, method, code, sec);
}

static void prom_publish(td_server *s) {
  td_exporter_view v = {.jobs = s->jobs,
                        .n_jobs = s->n_jobs,
                        .n_devices = s->n_devices,
                        .device_owner = s->device_owner,
                        .uptime_sec = (double)(wall_ns() - s->started_ns) / 1e9,
                        .version = TRAIND_VERSION};
  pthread_mutex_lock(&s->cache.mu);
  v.cache_entries = s->cache.n_entries;
  v.cache_hits = s->cache.hits;
  v.cache_misses = s->cache.misses;
  pthread_mutex_unlock(&s->cache.mu);
  td_error err = {0};
  if (td_exporter_publish(&s->prom, &v, &err))
    td_log_warn("metrics rendering failed", "err=\"%s\"", err.msg);
}

static void on_prom_timer(uv_timer_t *t) { prom_publish(t->data); }

/* ------------------------------------------------------- lifecycle */

static void on_closed(uv_handle_t *h) { (void)h; }

static void on_rpc_down(void *arg) {
  td_server *s = arg;
  s->rpc_down = 1;
  /* The stop is under way and cannot be undone: a further SIGTERM or
   * SIGINT (a second `systemctl stop`, a second ^C) no longer kills the
   * process halfway through its cleanup. */
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  if (s->prom_on) {
    td_exporter_stop(&s->prom);
    s->prom_on = 0;
  }
  uv_close((uv_handle_t *)&s->sig_term, on_closed);
  uv_close((uv_handle_t *)&s->sig_int, on_closed);
  uv_close((uv_handle_t *)&s->sig_hup, on_closed);
  uv_close((uv_handle_t *)&s->flush, on_closed);
  uv_close((uv_handle_t *)&s->stop_timer, on_closed);
  uv_close((uv_handle_t *)&s->prom_timer, on_closed);
  uv_close((uv_handle_t *)&s->watchdog, on_closed);
  uv_close((uv_handle_t *)&s->wake, on_closed);
}

static void maybe_finish_shutdown(td_server *s) {
  if (s->draining != 1 || s->running > 0)
    return;
  /* Streams end first, then the server. */
  for (size_t i = 0; i < s->n_jobs; i++) {
    td_watch *w = s->jobs[i]->watchers;
    while (w) {
      td_watch *next = w->next;
      td_rpc_finish(w->call, TD_GRPC_UNAVAILABLE, "the daemon is shutting down");
      drop_watch(s, w);
      w = next;
    }
  }
  td_health_free(s->health);
  s->health = NULL;
  td_log_info("stopping the rpc server", NULL);
  s->draining = 2;
  td_rpc_server_shutdown(s->rpc, on_rpc_down, s); /* freed after the loop */
}

/* The stop timeout: jobs that have not reached a boundary and saved by now
 * resume from their previous checkpoints at the next start. */
static void on_stop_timeout(uv_timer_t *t) {
  td_server *s = t->data;
  td_log_error("stop timeout: exiting with jobs still running; they resume from their "
               "previous checkpoints at the next start",
               "running=%d stop_timeout_sec=%u", s->running, s->cfg->stop_timeout_sec);
  _exit(1);
}

/* systemd's watchdog: a keep-alive from the loop, so that a loop that
 * stops turning gets the daemon restarted. */
static void on_watchdog(uv_timer_t *t) {
  (void)t;
  td_sd_watchdog_ping();
}

static void on_stop_signal(uv_signal_t *h, int signum) {
  td_server *s = h->data;
  if (s->draining)
    return;
  td_sd_stopping();
  td_log_info("draining: no new jobs; running jobs stop at their next step",
              "signal=%s running=%d", signum == SIGTERM ? "SIGTERM" : "SIGINT", s->running);
  s->draining = 1;
  if (s->running)
    uv_timer_start(&s->stop_timer, on_stop_timeout, (uint64_t)s->cfg->stop_timeout_sec * 1000, 0);
  td_health_set(s->health, "", TD_HEALTH_NOT_SERVING);
  td_health_set(s->health, TRAINER_SERVICE, TD_HEALTH_NOT_SERVING);
  for (size_t i = 0; i < s->n_jobs; i++)
    if (s->jobs[i]->state == TRAIND__V1__JOB_STATE__RUNNING) {
      int expected = TD_STOP_NONE;
      atomic_compare_exchange_strong(&s->jobs[i]->stop, &expected, TD_STOP_SHUTDOWN);
    }
  maybe_finish_shutdown(s);
}

/* The memory for jobs, from the config or the machine (td_memory_limit_detect). */
static void mem_limit_update(td_server *s) {
  td_error err = {0};
  s->mem_on = td_memory_limit_detect(s->cfg->memory_limit_bytes, &s->mem, &err) == TD_OK;
  if (s->mem_on)
    td_log_info("memory for jobs", "bytes=%zu source=\"%s\"", s->mem.bytes, s->mem.source);
  else
    td_log_warn("jobs' memory is not checked", "err=\"%s\"", err.msg);
}

static void on_hup(uv_signal_t *h, int signum) {
  (void)signum;
  td_server *s = h->data;
  Traind__V1__DaemonConfig *fresh = NULL;
  td_error err = {0};
  td_sd_reloading();
  if (s->opts->load_config(s->opts->load_config_arg, &fresh, &err)) {
    td_log_error("reload failed; keeping the current configuration", "err=\"%s\"", err.msg);
    td_sd_reloaded();
    return;
  }
  Traind__V1__DaemonConfig *old = s->cfg;
  /* These need a restart: keep the running values. */
  if (fresh->cpu_devices != old->cpu_devices || fresh->threads != old->threads ||
      strcmp(fresh->state_dir, old->state_dir) != 0 || fresh->n_listen != old->n_listen)
    td_log_warn("listen, state_dir, cpu_devices and threads change only at restart", NULL);
  fresh->cpu_devices = old->cpu_devices;
  fresh->threads = old->threads;
  char *keep_state = fresh->state_dir;
  fresh->state_dir = old->state_dir;
  old->state_dir = keep_state;
  int level = td_log_parse_level(fresh->log_level);
  if (level >= 0)
    td_log_set_level((td_log_level)level);
  s->cfg = fresh;
  td_config_free(old);
  mem_limit_update(s);
  td_log_info("configuration reloaded", "max_concurrent_jobs=%u data_dirs=%zu log_level=%s",
              max_jobs(s), fresh->n_data_dirs, fresh->log_level);
  td_sd_reloaded();
  schedule(s);
}

static int add_job_sorted(td_server *s, td_job *j) {
  if (s->n_jobs == s->cap_jobs) {
    size_t cap = s->cap_jobs ? s->cap_jobs * 2 : 64;
    td_job **nj = realloc(s->jobs, cap * sizeof *nj);
    if (!nj)
      return -1;
    s->jobs = nj;
    s->cap_jobs = cap;
  }
  size_t i = s->n_jobs;
  while (i > 0 && s->jobs[i - 1]->created_ns > j->created_ns) {
    s->jobs[i] = s->jobs[i - 1];
    i--;
  }
  s->jobs[i] = j;
  s->n_jobs++;
  return 0;
}

static void warn_record(const td_job_bad *b) {
  if (b->job)
    td_log_warn("job record not valid: set aside, the job is listed FAILED",
                "file=jobs/%s job=%s aside=jobs/%s problem=\"%s\"", b->file, b->job, b->aside,
                b->why);
  else
    td_log_warn("skipping a job record", "file=jobs/%s aside=%s%s problem=\"%s\"", b->file,
                b->aside ? "jobs/" : "", b->aside ? b->aside : "(could not rename)", b->why);
}

/* UTC as 2024-05-01T12:00:00Z; "-" for 0. */
static void utc_text(int64_t ns, char *buf, size_t len) {
  time_t t = (time_t)(ns / 1000000000);
  struct tm tm;
  if (!ns || !gmtime_r(&t, &tm) || !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(buf, len, "-");
}

/* Crash-loop protection: a record that says RUNNING is a run the daemon
 * did not see end (it was killed, crashed or ran out of memory). After
 * job_crash_limit of them with no new checkpoint in between, the job fails
 * instead of taking the daemon down again. Returns whether it failed. */
static int count_crash(td_server *s, td_job *j) {
  j->crashes++;
  if (j->crashes < s->cfg->job_crash_limit)
    return 0;
  char started[32], at[32], last[400], msg[TD_ERRMSG_MAX];
  utc_text(j->started_ns, started, sizeof started);
  if (j->ckpt.file[0]) {
    utc_text(j->ckpt.time_ns, at, sizeof at);
    snprintf(last, sizeof last, "run started %s, checkpoint %s at step %lld (%s)", started,
             j->ckpt.file, (long long)j->ckpt.step, at);
  } else {
    snprintf(last, sizeof last, "run started %s, no checkpoint written", started);
  }
  td_metrics_latest l;
  td_metrics_latest_get(&j->metrics, &l);
  snprintf(msg, sizeof msg,
           "the daemon stopped %u time%s while running this job; last: %s; step %lld "
           "recorded. It is not run again (job_crash_limit %u): see the daemon's and the "
           "kernel's log for why (out of memory?), then submit it again",
           j->crashes, j->crashes == 1 ? "" : "s", last, (long long)l.step,
           s->cfg->job_crash_limit);
  td_log_error("job failed: the daemon stopped while running it too often", "job=%s crashes=%u",
               j->id, j->crashes);
  finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_ABORTED, msg);
  return 1;
}

static int load_jobs(td_server *s, td_error *err) {
  td_job **loaded = NULL;
  size_t n = 0;
  int rc = td_job_load_all(s->cfg->state_dir, &loaded, &n, warn_record, err);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++)
    if (add_job_sorted(s, loaded[i]) != 0) {
      for (size_t k = i; k < n; k++)
        td_job_free(loaded[k]);
      free(loaded);
      return td_errorf(err, TD_ENOMEM, "out of memory loading job records");
    }
  free(loaded);
  /* Submission order follows creation; unfinished jobs run again. */
  for (size_t i = 0; i < s->n_jobs; i++) {
    td_job *j = s->jobs[i];
    j->seq = s->next_seq++;
    if (j->state == TRAIND__V1__JOB_STATE__RUNNING && count_crash(s, j))
      continue;
    if (j->state == TRAIND__V1__JOB_STATE__RUNNING ||
        j->state == TRAIND__V1__JOB_STATE__QUEUED) {
      if (j->state == TRAIND__V1__JOB_STATE__RUNNING) {
        td_log_info("job was running when the daemon stopped; queued again", "job=%s crashes=%u",
                    j->id, j->crashes);
        j->interrupted = 1;
      }
      j->state = TRAIND__V1__JOB_STATE__QUEUED;
      j->started_ns = 0;
      td_metrics_latest zero = {0};
      td_metrics_latest_set(&j->metrics, &zero);
      save_job(s, j);
    }
  }
  /* Checkpoint writes a stop interrupted left temporaries; the checkpoints
   * before them stand. */
  int cleaned = 0;
  for (size_t i = 0; i < s->n_jobs; i++) {
    char dir[4096];
    td_job_ckpt_dir(s->jobs[i], s->cfg->state_dir, dir, sizeof dir);
    int removed = td_ckpt_clean(dir);
    cleaned += removed > 0 ? removed : 0;
  }
  td_log_info("job records loaded", "jobs=%zu state_dir=%s checkpoint_temporaries_removed=%d",
              s->n_jobs, s->cfg->state_dir, cleaned);
  return TD_OK;
}

static void free_server(td_server *s) {
  for (size_t i = 0; i < s->n_jobs; i++)
    td_job_free(s->jobs[i]);
  free(s->jobs);
  free(s->device_owner);
  free(s->gpu_owner);
  for (size_t i = 0; i < s->n_listen_shown; i++)
    free(s->listen_shown[i]);
  free(s->listen_shown);
  event *e = s->ev_head;
  while (e) {
    event *next = e->next;
    free(e);
    e = next;
  }
  pthread_mutex_destroy(&s->ev_mu);
  td_plan_cache_free(&s->cache);
  td_config_free(s->cfg);
  free(s->submit_gate);
}

/* Connections, job files and checkpoints all take file descriptors: the
 * soft limit goes up to the hard one, and a max_connections that leaves
 * little for the rest is reported. */
static void raise_fd_limit(uint32_t max_connections) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      rl.rlim_cur = was;
  }
  if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)max_connections + 256 > rl.rlim_cur)
    td_log_warn("max_connections leaves few file descriptors for jobs and checkpoints",
                "max_connections=%u nofile=%llu", max_connections,
                (unsigned long long)rl.rlim_cur);
}

/* The listen addresses as bound ("127.0.0.1:0" becomes the chosen port). */
static int show_listen(td_server *s) {
  s->listen_shown = calloc(s->cfg->n_listen, sizeof *s->listen_shown);
  if (!s->listen_shown)
    return -1;
  for (size_t i = 0; i < s->cfg->n_listen; i++) {
    const char *a = s->cfg->listen[i];
    int port = td_rpc_server_port(s->rpc, i);
    const char *colon = strrchr(a, ':');
    char buf[512];
    if (port > 0 && colon && strncmp(a, "unix:", 5) != 0)
      snprintf(buf, sizeof buf, "%.*s:%d", (int)(colon - a), a, port);
    else
      snprintf(buf, sizeof buf, "%s", a);
    if (!(s->listen_shown[i] = strdup(buf)))
      return -1;
    s->n_listen_shown = i + 1;
  }
  return 0;
}

int td_server_main(const td_server_opts *opts) {
  td_server *s = calloc(1, sizeof *s);
  if (!s)
    return 1;
  s->opts = opts;
  td_error err = {0};
  if (opts->load_config(opts->load_config_arg, &s->cfg, &err)) {
    fprintf(stderr, "traind: %s\n", err.msg);
    free(s);
    return 2;
  }
  int level = td_log_parse_level(s->cfg->log_level);
  td_log_set_level(level >= 0 ? (td_log_level)level : TD_LOG_INFO);
  s->started_ns = wall_ns();
  s->n_devices = (int)s->cfg->cpu_devices;
  /* Automatic: every core but one, which stays free for the loop, the rpc
   * thread and gRPC's own; compute threads that share their cores with
   * request handling stall at every BLAS barrier (docs/BENCHMARKS.md). */
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  s->threads = s->cfg->threads ? s->cfg->threads
                               : (uint32_t)(cores > 1 ? cores - 1 : 1);
  s->device_owner = calloc((size_t)s->n_devices, sizeof *s->device_owner);
  s->n_gpus = td_gpus_count(s->gpu_why, sizeof s->gpu_why);
  s->gpu_owner = calloc((size_t)(s->n_gpus ? s->n_gpus : 1), sizeof *s->gpu_owner);
  mem_limit_update(s);
  const char *gate = getenv("TRAIND_TEST_SUBMIT_GATE");
  if (gate && *gate) {
    s->submit_gate = strdup(gate);
    td_log_warn("testing: submissions wait while this file exists", "file=%s", gate);
  }
  pthread_mutex_init(&s->ev_mu, NULL);
  td_plan_cache_init(&s->cache);
  int exit_code = 0;
  if (!s->device_owner || !s->gpu_owner || load_jobs(s, &err)) {
    fprintf(stderr, "traind: %s\n", err.msg[0] ? err.msg : "out of memory");
    free_server(s);
    free(s);
    return 1;
  }

  uv_loop_init(&s->loop);
  uv_async_init(&s->loop, &s->wake, on_wake);
  s->wake.data = s;
  uv_timer_init(&s->loop, &s->flush);
  s->flush.data = s;
  uv_timer_start(&s->flush, on_flush_timer, FLUSH_MS, FLUSH_MS);
  uv_timer_init(&s->loop, &s->stop_timer);
  s->stop_timer.data = s;
  uv_timer_init(&s->loop, &s->prom_timer);
  s->prom_timer.data = s;
  uv_timer_init(&s->loop, &s->watchdog);
  uv_signal_init(&s->loop, &s->sig_term);
  uv_signal_init(&s->loop, &s->sig_int);
  uv_signal_init(&s->loop, &s->sig_hup);
  s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
  uv_signal_start(&s->sig_term, on_stop_signal, SIGTERM);
  uv_signal_start(&s->sig_int, on_stop_signal, SIGINT);
  uv_signal_start(&s->sig_hup, on_hup, SIGHUP);

  s->health = td_health_new();
  td_rpc_method methods[N_TRAINER + 2];
  for (size_t i = 0; i < N_TRAINER; i++) {
    methods[i] = trainer_methods[i];
    methods[i].ctx = s;
  }
  td_health_methods(s->health, methods + N_TRAINER);
  raise_fd_limit(s->cfg->max_connections);
  td_rpc_server_opts ro = {.listen = (const char *const *)s->cfg->listen,
                           .n_listen = s->cfg->n_listen,
                           .methods = methods,
                           .n_methods = N_TRAINER + 2,
                           .max_request_bytes = MAX_REQUEST_BYTES,
                           .max_reply_bytes = MAX_REPLY_BYTES,
                           .max_connections = s->cfg->max_connections,
                           .connection_idle_ms = s->cfg->connection_idle_sec * 1000u,
                           .on_end = on_rpc_end,
                           .on_end_arg = s};
  int prom_rc = TD_OK;
  if (s->cfg->metrics_listen && *s->cfg->metrics_listen) {
    prom_rc = td_exporter_start(&s->prom, s->cfg->metrics_listen, &err);
    s->prom_on = prom_rc == TD_OK;
  }
  if (prom_rc || !s->health || td_rpc_server_start(&s->rpc, &s->loop, &ro, &err) ||
      show_listen(s)) {
    if (s->prom_on) {
      td_exporter_stop(&s->prom);
      s->prom_on = 0;
    }
    fprintf(stderr, "traind: %s\n", err.msg[0] ? err.msg : "out of memory");
    exit_code = 1;
    s->draining = 1;
    td_health_free(s->health);
    s->health = NULL;
    s->draining = 2;
    if (s->rpc) {
      td_rpc_server_shutdown(s->rpc, on_rpc_down, s);
    } else {
      on_rpc_down(s);
    }
  } else {
    for (size_t i = 0; i < s->n_listen_shown; i++)
      td_log_info("listening", "addr=%s", s->listen_shown[i]);
    if (s->prom_on) {
      td_log_info("metrics listening", "addr=%s port=%d path=/metrics",
                  s->cfg->metrics_listen, td_exporter_port(&s->prom));
      prom_publish(s);
      uv_timer_start(&s->prom_timer, on_prom_timer, 1000, 1000);
    }
    td_log_info("traind ready", "version=%s cpu_devices=%d gpus=%d threads=%u data_dirs=%zu",
                TRAIND_VERSION, s->n_devices, s->n_gpus, s->threads, s->cfg->n_data_dirs);
    if (!s->n_gpus)
      td_log_info("no GPUs: GPU jobs are refused", "why=\"%s\"", s->gpu_why);
    td_health_set(s->health, "", TD_HEALTH_SERVING);
    td_health_set(s->health, TRAINER_SERVICE, TD_HEALTH_SERVING);
    char status[160];
    snprintf(status, sizeof status, "serving on %s; %d CPU device%s", s->listen_shown[0],
             s->n_devices, s->n_devices == 1 ? "" : "s");
    td_sd_ready(status);
    uint64_t wd_usec = 0;
    if (td_sd_watchdog_usec(&wd_usec) > 0 && wd_usec) {
      uint64_t ms = wd_usec / 2000 ? wd_usec / 2000 : 1;
      uv_timer_start(&s->watchdog, on_watchdog, ms, ms);
      td_log_info("systemd watchdog", "interval_ms=%llu", (unsigned long long)(wd_usec / 1000));
    }
    schedule(s);
  }
  uv_run(&s->loop, UV_RUN_DEFAULT);
  /* Every handle is closed; workers have all reported. */
  if (s->rpc)
    td_rpc_server_free(s->rpc);
  int rc = uv_loop_close(&s->loop);
  if (rc)
    td_log_warn("event loop closed with open handles", "err=\"%s\"", uv_strerror(rc));
  if (!exit_code)
    td_log_info("traind stopped", NULL);
  free_server(s);
  free(s);
  return exit_code;
}
