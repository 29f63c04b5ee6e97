/* The scheduler: the device pools (CPU devices, GPUs) and who holds each,
 * the memory for jobs, the start of queued jobs in order of priority, the
 * moves of a job between states, and the loop's side of what workers
 * report. */
#include "state.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "driver.h"
#include "jobspec.h"
#include "log.h"

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

static void start_job(td_server *s, td_job *j) {
  int need = job_device_count(j);
  const Traind__V1__Devices *d = j->spec->devices;
  j->on_gpu = job_on_gpu(j);
  dev_pool p = pool_of(s, j->on_gpu);
  /* Device lists are sized from the job's count (up to the pool's size). */
  if (td_job_devices_reserve(j, need) != TD_OK) {
    srv_finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_RESOURCE_EXHAUSTED,
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
  j->started_ns = td_wall_ns();
  atomic_store(&j->stop, TD_STOP_NONE);
  s->running++;
  srv_save_job(s, j);

  if (srv_worker_start(s, j) != 0) {
    srv_finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_RESOURCE_EXHAUSTED,
                   "the daemon could not start a worker thread");
    return;
  }
  j->has_thread = 1;
  j->interrupted = 0;
  td_log_info("job started", "job=%s name=\"%s\" devices=%d threads=%u", j->id, j->name,
              j->n_devices, j->threads);
}

/* The metric ring's share of a job's footprint (td_admission.add). */
void srv_add_ring(void *user, td_footprint *f) {
  td_metrics_add_footprint(f, *(const uint32_t *)user);
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
    char **roots = NULL;
    size_t n_roots = 0;
    if (srv_job_roots(s, j->owner, &roots, &n_roots))
      return 1; /* out of memory: sized when it starts */
    td_trainer_opts o = {.data_roots = (const char *const *)roots, .n_data_roots = n_roots};
    uint32_t retention = s->cfg->metrics_retention;
    td_admission a = {.checkpoints = 1, .add = srv_add_ring, .add_user = &retention};
    td_footprint f;
    j->mem_known = 1;
    int rc = td_job_admit(j->spec, &o, &a, &f, &err);
    for (size_t i = 0; i < n_roots; i++)
      free(roots[i]);
    free(roots);
    if (rc) {
      j->mem_bytes = 0;
      return 1;
    }
    j->mem_bytes = f.host_bytes;
    if (s->mem_on && td_footprint_admit(&f, &s->mem, 0, &err)) {
      td_log_warn("job cannot fit the memory for jobs; failed", "job=%s err=\"%s\"", j->id,
                  err.msg);
      srv_finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_RESOURCE_EXHAUSTED, err.msg);
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
    srv_finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_RESOURCE_EXHAUSTED, msg);
    return 0;
  }
  return 1;
}

/* The concurrency limit: configured, or one job per device. */
uint32_t srv_max_jobs(const td_server *s) {
  return s->cfg->max_concurrent_jobs ? s->cfg->max_concurrent_jobs : (uint32_t)s->n_devices;
}

/* Starts queued jobs while devices and the concurrency limit allow, in
 * order of priority, then submission. */
void srv_schedule(td_server *s) {
  while (!s->draining && s->running < (int)srv_max_jobs(s)) {
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
        snprintf(msg, sizeof msg,
                 "the job asks for devices this daemon does not have "
                 "(it has %s:0 to %s:%d)",
                 p.kind, p.kind, p.n - 1);
      else
        snprintf(msg, sizeof msg, "the job asks for %s devices and this daemon has none", p.kind);
      srv_finish_job(s, best, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_FAILED_PRECONDITION, msg);
      continue;
    }
    if (best && !job_sized(s, best))
      continue; /* it can never fit: failed */
    if (!best || !job_fits(s, best))
      return;
    start_job(s, best);
  }
}

void srv_reply_job(td_server *s, td_rpc_call *call, td_job *j) {
  td_job_msg m;
  td_job_msg_fill(&m, j, s->cfg->state_dir);
  td_rpc_reply(call, &m.job.base);
}

void srv_finish_job(td_server *s, td_job *j, Traind__V1__JobState state, int code,
                    const char *msg) {
  j->state = state;
  j->finished_ns = td_wall_ns();
  j->error_code = code;
  snprintf(j->error, sizeof j->error, "%s", msg ? msg : "");
  release_devices(s, j);
  srv_save_job(s, j);
  if (state == TRAIND__V1__JOB_STATE__SUCCEEDED) {
    td_metrics_latest l;
    td_metrics_latest_get(&j->metrics, &l);
    td_log_info("job succeeded", "job=%s steps=%lld test_accuracy=%.4f", j->id, (long long)l.step,
                l.test_accuracy);
  } else {
    td_log_info("job ended", "job=%s state=%s err=\"%s\"", j->id, td_job_state_name(state),
                j->error);
  }
  for (size_t i = 0; i < j->n_cancel_calls; i++)
    srv_reply_job(s, j->cancel_calls[i], j);
  free(j->cancel_calls);
  j->cancel_calls = NULL;
  j->n_cancel_calls = 0;
  /* Final flush: watchers get the rest of the points and the end. */
  td_watch *w = j->watchers;
  while (w) {
    td_watch *next = w->next;
    srv_flush_watch(s, w);
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
    srv_save_job(s, j);
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
  srv_save_job(s, j);
}

static void on_event(td_server *s, event *e) {
  td_job *j = e->job;
  if (e->kind == EV_CHECKPOINT) {
    on_checkpoint(s, j, &e->ckpt);
    return;
  }
  if (e->kind == EV_RESUMED) {
    td_job_add_resume(j, &e->resume);
    srv_save_job(s, j);
    /* Every %s of a record is escaped as a value (base/log.h), so the
     * optional note is a second form, not text spliced into the format. */
    if (e->resume.checkpoint[0] && e->resume.note[0])
      td_log_info("job resumed from a checkpoint", "job=%s file=%s step=%lld note=\"%s\"", j->id,
                  e->resume.checkpoint, (long long)e->resume.step, e->resume.note);
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
    srv_save_job(s, j);
    return;
  }
  pthread_join(j->thread, NULL);
  j->has_thread = 0;
  s->running--;
  int stop = atomic_load(&j->stop);
  if (j->n_save_calls) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "job %s stopped (%s) before it reached a step boundary to checkpoint at", j->id,
             e->rc == TD_OK ? "finished" : td_errname(e->rc));
    answer_saves(s, j, UINT64_MAX, TD_GRPC_FAILED_PRECONDITION, msg);
  }
  if (e->rc == TD_OK) {
    snprintf(j->note, sizeof j->note, "%s", e->msg);
    srv_finish_job(s, j, TRAIND__V1__JOB_STATE__SUCCEEDED, 0, NULL);
  } else if (e->rc == TD_ECANCELLED && stop == TD_STOP_SHUTDOWN && j->n_cancel_calls == 0) {
    /* Interrupted by the daemon's stop: queued again for the next start. */
    release_devices(s, j);
    j->state = TRAIND__V1__JOB_STATE__QUEUED;
    j->started_ns = 0;
    srv_save_job(s, j);
    td_log_info("job interrupted by shutdown; queued for the next start", "job=%s", j->id);
    td_watch *w = j->watchers;
    while (w) {
      td_watch *next = w->next;
      srv_flush_watch(s, w);
      td_rpc_finish(w->call, TD_GRPC_UNAVAILABLE,
                    "the daemon is shutting down; the job will run again when it restarts");
      srv_drop_watch(s, w);
      w = next;
    }
  } else if (e->rc == TD_ECANCELLED) {
    srv_finish_job(s, j, TRAIND__V1__JOB_STATE__CANCELLED, TD_GRPC_CANCELLED, e->msg);
  } else {
    srv_finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, td_grpc_status(e->rc), e->msg);
  }
  srv_schedule(s);
  srv_maybe_finish_shutdown(s);
}

void srv_on_wake(uv_async_t *h) {
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
