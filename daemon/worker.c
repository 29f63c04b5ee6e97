/* A job's worker thread: runs the job through the engine's trainer and
 * driver, writes its metric series and TensorBoard events, takes its
 * checkpoints, and reports to the loop through the event queue. */
#include "state.h"

#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "driver.h"
#include "gpus.h"
#include "log.h"
#include "tfevents.h"
#include "train.h"

typedef struct worker_ctx {
  td_server *srv;
  td_job *job;
  char **roots;
  size_t n_roots;
  int threads;
  size_t retention; /* step points to keep */
  char ckpt_dir[PATH_MAX];
  int interrupted;        /* the daemon stopped while the job ran */
  td_driver drv;          /* the job's checkpoints */
  double final_retry_sec; /* final_checkpoint_retry_sec when the job started */
  int *gpus;              /* GPU replicas: each rank's GPU (one per device of the job), owned */
  int on_gpu;
  char tb_dir[PATH_MAX];
  td_tfevents *tb; /* the job's TensorBoard events; NULL after a failure */
  double tb_flushed;
} worker_ctx;

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
  worker_ctx *w = user;
  td_metrics_add_step(&w->job->metrics, p);
  if (!w->tb)
    return;
  double now = td_wall_sec();
  tb_scalar(w, "loss", p->step, p->loss, now);
  tb_scalar(w, "learning_rate", p->step, p->lr, now);
  tb_scalar(w, "grad_norm", p->step, p->grad_norm, now);
  tb_scalar(w, "examples_per_sec", p->step, (float)p->examples_per_sec, now);
  /* A language model's loss is per token: also in bits, and the rate in
   * tokens (examples times positions). */
  const uint32_t positions = t->plan->positions;
  if (positions > 1) {
    tb_scalar(w, "step/tokens_per_sec", p->step, (float)(p->examples_per_sec * positions), now);
    tb_scalar(w, "step/bits_per_token", p->step, td_metrics_bits(p->loss), now);
  }
  tb_maybe_flush(w, now, 0);
}

/* The epoch's per-example gradient norms as a histogram; TensorBoard's
 * buckets are closed above, so each upper edge but the last is taken just
 * below the next bucket's lower one. */
static void tb_norms(worker_ctx *w, const td_example_report *r, double now) {
  double limits[TD_EXAMPLE_BUCKETS], counts[TD_EXAMPLE_BUCKETS];
  for (int b = 0; b < TD_EXAMPLE_BUCKETS; b++) {
    limits[b] =
        b == TD_EXAMPLE_BUCKETS - 1 ? r->edges[b + 1] : nextafter(r->edges[b + 1], -INFINITY);
    counts[b] = (double)r->counts[b];
  }
  td_error err = {0};
  tb_check(w,
           td_tfevents_histogram(w->tb, "epoch/grad_norm_per_example", r->step, r->min, r->max,
                                 (double)r->count, r->sum, r->sum_sq, TD_EXAMPLE_BUCKETS, limits,
                                 counts, now, &err),
           &err);
}

/* An epoch's end, or an evaluation inside one (training.eval_every_steps):
 * both at the step they follow. */
static void w_epoch(void *user, const td_trainer *t, const td_epoch_point *p) {
  worker_ctx *w = user;
  td_metrics_add_epoch(&w->job->metrics, p);
  td_error err = {0};
  if (p->examples && srv_examples_save(w->srv->cfg->state_dir, w->job->id, p->examples, &err))
    td_log_warn("per-example report not kept", "job=%s epoch=%u err=\"%s\"", w->job->id, p->epoch,
                err.msg);
  if (!w->tb)
    return;
  double now = td_wall_sec();
  const int per_token = t->plan->positions > 1;
  tb_scalar(w, "epoch/train_loss", p->step, p->train_loss, now);
  tb_scalar(w, "epoch/train_accuracy", p->step, p->train_accuracy, now);
  if (per_token)
    tb_scalar(w, "epoch/train_bits_per_token", p->step, td_metrics_bits(p->train_loss), now);
  if (p->has_epsilon && isfinite(p->epsilon))
    tb_scalar(w, "epoch/dp_epsilon", p->step, (float)p->epsilon, now);
  if (p->examples)
    tb_norms(w, p->examples, now);
  if (p->evaluated) {
    tb_scalar(w, "epoch/test_loss", p->step, p->test_loss, now);
    tb_scalar(w, "epoch/test_accuracy", p->step, p->test_accuracy, now);
    if (per_token)
      tb_scalar(w, "epoch/test_bits_per_token", p->step, td_metrics_bits(p->test_loss), now);
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
    tb_check(w, td_tfevents_text(w->tb, "job_spec", t->st.step, md, td_wall_sec(), &err), &err);
    free(md);
  }
  tb_maybe_flush(w, td_wall_sec(), 1);
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

/* At a step boundary: a checkpoint when one was asked for or is due, and
 * the writer is free (otherwise at a later boundary). */
static void w_boundary(void *user, td_trainer *t) {
  worker_ctx *w = user;
  td_error err = {0};
  if (td_driver_boundary(&w->drv, t, &err))
    td_log_warn("checkpoint snapshot failed", "job=%s step=%lld err=\"%s\"", w->job->id,
                (long long)t->st.step, err.msg);
}

/* Reports a resume (also a restart from the beginning after a stop, or
 * checkpoints refused on the way) to the loop. */
static void w_resumed(worker_ctx *w, const td_trainer *t, const td_driver_resumed *dr) {
  if (!dr->resumed && !w->interrupted && !dr->note[0])
    return; /* a first start */
  td_job_resume r = {0};
  if (dr->resumed)
    snprintf(r.checkpoint, sizeof r.checkpoint, "%s", dr->file);
  snprintf(r.note, sizeof r.note, "%.*s", (int)sizeof r.note - 1,
           dr->note); /* the record keeps less */
  r.step = t->st.step;
  r.time_ns = td_wall_ns();
  event *e = calloc(1, sizeof *e);
  if (!e)
    return;
  e->kind = EV_RESUMED;
  e->job = w->job;
  e->resume = r;
  post_event(w->srv, e);
}

/* After the run: the end-of-job or shutdown checkpoint, written before the
 * worker reports (td_driver_finish). A job whose training is done succeeds
 * only once its final state is on disk (retried for final_retry_sec while
 * the job stays RUNNING; a cancel or the daemon's stop ends the retries).
 * The shutdown checkpoint is tried once. Cancelled and failed jobs keep
 * what they have. Returns the job's outcome. */
static int w_last_checkpoint(worker_ctx *w, td_trainer *t, int rc, td_error *err) {
  td_error warn = {0};
  int shutdown = atomic_load(&w->job->stop) == TD_STOP_SHUTDOWN;
  int out = td_driver_finish(&w->drv, t, rc, shutdown, err, &warn);
  if (rc == TD_OK && out != TD_OK)
    td_log_error("the job's final checkpoint was not written; the job does not succeed",
                 "job=%s err=\"%s\"", w->job->id, err->msg);
  if (warn.msg[0])
    td_log_warn("shutdown checkpoint failed; the job resumes from its previous checkpoint",
                "job=%s err=\"%s\"", w->job->id, warn.msg);
  return out;
}

static void *worker_main(void *arg) {
  worker_ctx *w = arg;
  td_job *j = w->job;
  td_error err = {0};
  char note[TD_ERRMSG_MAX] = "";
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
  int rc = td_trainer_init(&t, j->spec, &o, &err);
  /* Room for every step of the job, up to the retention; the figures are
   * per token when the model's output has positions. */
  if (!rc && td_metrics_reserve(&j->metrics,
                                (size_t)t.total_steps < w->retention ? (size_t)t.total_steps
                                                                     : w->retention,
                                t.plan->positions) != 0) {
    td_trainer_free(&t);
    rc = td_errorf(&err, TD_ENOMEM, "no memory for the job's metrics");
  }
  td_driver_resumed resumed;
  if (!rc) {
    td_driver_opts d = {.dir = w->ckpt_dir,
                        .job_id = j->id,
                        .final_retry_sec = w->final_retry_sec,
                        .save_req = &j->save_req,
                        .give_up = w_stop,
                        .give_up_user = w,
                        .done = w_saved,
                        .user = w};
    if ((rc = td_driver_start(&w->drv, &t, &d, &resumed, &err))) {
      td_error_prefix(&err, "checkpoints");
      td_trainer_free(&t);
    }
  }
  if (!rc) {
    w_resumed(w, &t, &resumed);
    tb_open(w, &t, w->drv.spec_json);
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
    td_train_hooks h = {.user = w,
                        .on_step = w_step,
                        .on_epoch = w_epoch,
                        .at_boundary = w_boundary,
                        .should_stop = w_stop};
    rc = td_trainer_run(&t, &h, NULL, &err);
    rc = w_last_checkpoint(w, &t, rc, &err);
    if (!rc && t.dp_stop_steps >= 0 && t.st.step == t.dp_stop_steps)
      td_trainer_dp_note(&t, note, sizeof note);
    td_trainer_free(&t);
    td_error tb_err = {0};
    if (w->tb && td_tfevents_close(w->tb, &tb_err))
      td_log_warn("TensorBoard events: closing failed", "job=%s err=\"%s\"", j->id, tb_err.msg);
    w->tb = NULL;
  }
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
  snprintf(done->msg, sizeof done->msg, "%s", rc ? err.msg : note);
  post_event(srv, done);
  return NULL;
}

/* Starts the job's worker thread (the job holds its devices and is
 * RUNNING). Returns 0, or -1 when no thread could be started (nothing
 * left behind). */
int srv_worker_start(td_server *s, td_job *j) {
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
    /* The roots its owner may read now (auth.h). */
    ok = srv_job_roots(s, j->owner, &w->roots, &w->n_roots) == 0;
  }
  if (ok)
    ok = pthread_create(&j->thread, NULL, worker_main, w) == 0;
  if (ok)
    return 0;
  if (w) {
    for (size_t i = 0; w->roots && i < w->n_roots; i++)
      free(w->roots[i]);
    free(w->roots);
    free(w->gpus);
    free(w);
  }
  return -1;
}
