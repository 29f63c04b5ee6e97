/* A job's checkpoint directory and its writer (see saver.h). */
#include "saver.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "fsutil.h"
#include "log.h"

#define NAME_PREFIX "ckpt-"
#define NAME_SUFFIX ".h5"
#define STEP_DIGITS 12
_Static_assert(sizeof NAME_PREFIX - 1 + STEP_DIGITS + sizeof NAME_SUFFIX <= TD_CKPT_NAME_MAX,
               "checkpoint names fit td_ckpt_file.name");

const char *td_ckpt_reason_name(td_ckpt_reason r) {
  static const char *const names[] = {"periodic", "requested", "final", "shutdown"};
  return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "unknown";
}

void td_ckpt_name(int64_t step, char *buf, size_t len) {
  snprintf(buf, len, NAME_PREFIX "%0*lld" NAME_SUFFIX, STEP_DIGITS, (long long)step);
}

/* The step of a checkpoint file name; -1 for any other name. */
static int64_t name_step(const char *name) {
  size_t pl = strlen(NAME_PREFIX), sl = strlen(NAME_SUFFIX), len = strlen(name);
  if (len != pl + STEP_DIGITS + sl || strncmp(name, NAME_PREFIX, pl) != 0 ||
      strcmp(name + pl + STEP_DIGITS, NAME_SUFFIX) != 0)
    return -1;
  int64_t step = 0;
  for (size_t i = pl; i < pl + STEP_DIGITS; i++) {
    if (name[i] < '0' || name[i] > '9')
      return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

static int file_newer(const void *a, const void *b) {
  int64_t x = ((const td_ckpt_file *)a)->step, y = ((const td_ckpt_file *)b)->step;
  return (x < y) - (x > y);
}

int td_ckpt_list(const char *dir, td_ckpt_file **out, size_t *n, td_error *err) {
  *out = NULL;
  *n = 0;
  DIR *d = opendir(dir);
  if (!d) {
    if (errno == ENOENT)
      return TD_OK;
    return td_errorf(err, TD_EIO, "cannot read the checkpoint directory %s: %s", dir,
                     strerror(errno));
  }
  td_ckpt_file *fs = NULL;
  size_t cap = 0, count = 0;
  struct dirent *e;
  int rc = TD_OK;
  while ((e = readdir(d))) {
    int64_t step = name_step(e->d_name);
    if (step < 0)
      continue;
    if (count == cap) {
      cap = cap ? cap * 2 : 16;
      td_ckpt_file *nf = realloc(fs, cap * sizeof *nf);
      if (!nf) {
        rc = td_errorf(err, TD_ENOMEM, "out of memory listing %s", dir);
        break;
      }
      fs = nf;
    }
    /* name_step accepted only names of the one length that fits. */
    fs[count].step = step;
    memcpy(fs[count].name, e->d_name, strlen(e->d_name) + 1);
    count++;
  }
  closedir(d);
  if (rc) {
    free(fs);
    return rc;
  }
  if (count)
    qsort(fs, count, sizeof *fs, file_newer);
  *out = fs;
  *n = count;
  return TD_OK;
}

int td_ckpt_clean(const char *dir) {
  DIR *d = opendir(dir);
  if (!d)
    return errno == ENOENT ? 0 : -1;
  int removed = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (e->d_name[0] != '.' || len < 5 || strcmp(e->d_name + len - 4, ".tmp") != 0)
      continue;
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < sizeof path &&
        unlink(path) == 0)
      removed++;
  }
  closedir(d);
  return removed;
}

int td_ckpt_prune(const char *dir, uint32_t keep_last, uint32_t keep_every, td_error *err) {
  td_ckpt_file *fs;
  size_t n;
  int rc = td_ckpt_list(dir, &fs, &n, err);
  if (rc)
    return rc;
  for (size_t i = keep_last ? keep_last : n; i < n; i++) {
    if (keep_every && fs[i].step % keep_every == 0)
      continue;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, fs[i].name);
    if (unlink(path) != 0 && errno != ENOENT && !rc)
      rc = td_errorf(err, TD_EIO, "cannot remove the old checkpoint %s: %s", path, strerror(errno));
  }
  free(fs);
  return rc;
}

/* ---- the writer */

static void write_snapshot(td_saver *s) {
  td_saver_result *r = &s->res;
  td_error err = {0};
  char path[PATH_MAX];
  double t0 = td_mono_sec();
  const size_t np = s->plan->n_params, no = s->plan->optim.state_slots * np;
  td_ckpt_image img = {.plan = s->plan,
                       .params = s->host,
                       .opt_state = s->host + np,
                       .stats = s->host + np + no,
                       .count = s->meta.step,
                       .reuse = &s->file_mem};
  if ((size_t)snprintf(path, sizeof path, "%s/%s", s->dir, r->name) >= sizeof path)
    r->rc = td_errorf(&err, TD_EINVAL, "checkpoint path too long in %s", s->dir);
  else
    r->rc = td_ckpt_write_image(path, &img, &s->meta, &err);
  struct stat sb;
  if (!r->rc && stat(path, &sb) == 0)
    r->bytes = (int64_t)sb.st_size;
  /* Retention runs after every successful write: the newest file counts. */
  if (!r->rc)
    r->rc = td_ckpt_prune(s->dir, s->keep_last, s->keep_every, &err);
  r->write_sec = td_mono_sec() - t0;
  r->time_ns = td_wall_ns();
  snprintf(r->msg, sizeof r->msg, "%s", r->rc ? err.msg : "");
}

static void *writer_main(void *arg) {
  td_saver *s = arg;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->busy && !s->quit)
      pthread_cond_wait(&s->cv, &s->mu);
    if (!s->busy)
      break;
    pthread_mutex_unlock(&s->mu);
    write_snapshot(s);
    if (s->done)
      s->done(s->user, &s->res);
    pthread_mutex_lock(&s->mu);
    if (s->res.rc == TD_OK)
      s->written_step = s->res.step;
    s->busy = 0;
    pthread_cond_broadcast(&s->cv);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

int td_saver_start(td_saver *s, const td_saver_opts *o, td_error *err) {
  memset(s, 0, sizeof *s);
  const char *dir = o->dir;
  if ((size_t)snprintf(s->dir, sizeof s->dir, "%s", dir) >= sizeof s->dir)
    return td_errorf(err, TD_EINVAL, "checkpoint directory path too long: %.64s...", dir);
  if (!o->job_id || !o->job_id[0] || strlen(o->job_id) >= sizeof s->job_id)
    return td_errorf(err, TD_EINVAL, "checkpoints need a job id of 1 to %zu bytes",
                     sizeof s->job_id - 1);
  memcpy(s->job_id, o->job_id, strlen(o->job_id) + 1);
  if (!o->spec)
    return td_errorf(err, TD_EINVAL, "checkpoints need the job's spec");
  int rc = td_ckpt_spec_hash(o->spec, s->spec_hash, err);
  if (rc)
    return rc;
  if ((rc = td_mkdir_p(dir, err)))
    return rc;
  td_ckpt_clean(dir);
  const td_plan *plan = o->plan;
  s->plan = plan;
  s->keep_last = o->keep_last;
  s->keep_every = o->keep_every;
  s->done = o->done;
  s->user = o->user;
  s->last_step = -1;
  s->written_step = -1;
  s->last_sec = td_mono_sec();
  size_t floats = plan->n_params * (1 + plan->optim.state_slots) + plan->n_stats;
  s->host = malloc((floats ? floats : 1) * sizeof(float));
  s->spec_json = strdup(o->spec_json ? o->spec_json : "");
  if (!s->host || !s->spec_json) {
    free(s->host);
    free(s->spec_json);
    return td_errorf(err, TD_ENOMEM, "no memory for a %.1f MiB checkpoint snapshot",
                     (double)floats * 4.0 / (1024.0 * 1024.0));
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->host);
    free(s->spec_json);
    return td_errorf(err, TD_ENOMEM, "cannot start the checkpoint writer thread");
  }
  s->started = 1;
  return TD_OK;
}

int td_saver_busy(td_saver *s) {
  pthread_mutex_lock(&s->mu);
  int b = s->busy;
  pthread_mutex_unlock(&s->mu);
  return b;
}

int td_saver_snapshot(td_saver *s, td_trainer *t, td_ckpt_reason reason, uint64_t gen,
                      td_error *err) {
  if (td_saver_busy(s))
    return td_errorf(err, TD_EINVAL, "the previous checkpoint is still being written");
  /* The writer is idle: the buffer and result are this thread's until busy. */
  double t0 = td_mono_sec();
  const td_state *st = &t->st;
  const td_backend_ops *ops = st->be->ops;
  size_t np = s->plan->n_params, no = s->plan->optim.state_slots * np;
  int rc = ops->download(st->be, s->host, st->params, np * sizeof(float));
  if (!rc && no)
    rc = ops->download(st->be, s->host + np, st->opt_state, no * sizeof(float));
  if (!rc && s->plan->n_stats)
    rc = ops->download(st->be, s->host + np + no, st->stats, s->plan->n_stats * sizeof(float));
  if (rc)
    return td_errorf(err, rc, "checkpoint: copying the state from the %s backend failed",
                     ops->name);
  td_trainer_meta(t, &s->meta);
  memcpy(s->meta.job_id, s->job_id, sizeof s->job_id);
  memcpy(s->meta.spec_hash, s->spec_hash, sizeof s->spec_hash);
  s->meta.spec_json = s->spec_json; /* borrowed; never freed through meta */
  memset(&s->res, 0, sizeof s->res);
  s->res.reason = reason;
  s->res.gen = gen;
  s->res.step = s->meta.step;
  s->res.epoch = s->meta.epoch;
  td_ckpt_name(s->meta.step, s->res.name, sizeof s->res.name);
  s->res.stall_ms = (td_mono_sec() - t0) * 1e3;
  s->last_step = s->meta.step;
  s->last_sec = td_mono_sec();
  pthread_mutex_lock(&s->mu);
  s->busy = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return TD_OK;
}

/* Whether the checkpoint at path belongs to s's job and fits t, from its
 * attributes alone: the job id, the spec hash, the step its name gives and
 * a position within the job. td_trainer_resume then reads the whole file
 * and checks the digest that covers these attributes. */
static int check_binding(const td_saver *s, const td_trainer *t, const char *path,
                         int64_t name_step, td_error *err) {
  td_ckpt_meta m;
  int rc = td_ckpt_read_binding(path, &m, err);
  if (rc)
    return rc;
  if (strcmp(m.job_id, s->job_id) != 0)
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s' belongs to job '%s', not to this job '%s' (a file of "
                   "another job in this job's directory)",
                   path, m.job_id, s->job_id);
  else if (strcmp(m.spec_hash, s->spec_hash) != 0)
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s' was written for another spec (spec hash %.12s..., this "
                   "job's is %.12s...): the model, optimizer, training data, batch size, "
                   "seed or init_from differ",
                   path, m.spec_hash, s->spec_hash);
  else if (m.step != name_step)
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s' holds step %lld, not the step %lld its "
                   "name says (renamed?)",
                   path, (long long)m.step, (long long)name_step);
  else if (m.step < 0 || m.step > t->total_steps)
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s' is at step %lld, outside this job's %lld "
                   "steps",
                   path, (long long)m.step, (long long)t->total_steps);
  td_ckpt_meta_free(&m);
  return rc;
}

int td_saver_resume(td_saver *s, td_trainer *t, char *file, size_t file_len, char *note,
                    size_t note_len) {
  size_t used = 0;
  file[0] = note[0] = 0;
  td_ckpt_file *fs = NULL;
  size_t n = 0;
  td_error err = {0};
  if (td_ckpt_list(s->dir, &fs, &n, &err)) {
    td_log_error("cannot list checkpoints", "dir=%s err=\"%s\"", s->dir, err.msg);
    snprintf(note, note_len, "%s", err.msg);
    n = 0;
  }
  int resumed = 0;
  for (size_t i = 0; i < n && !resumed; i++) {
    char path[PATH_MAX + TD_CKPT_NAME_MAX];
    snprintf(path, sizeof path, "%s/%s", s->dir, fs[i].name);
    if (check_binding(s, t, path, fs[i].step, &err) == TD_OK &&
        td_trainer_resume(t, path, &err) == TD_OK) {
      snprintf(file, file_len, "%s", fs[i].name);
      resumed = 1;
      break;
    }
    td_log_warn("checkpoint refused; trying the one before", "file=%s err=\"%s\"", path, err.msg);
    if (used < note_len) {
      int w = snprintf(note + used, note_len - used, "%s%s refused: %s", used ? "; " : "",
                       fs[i].name, err.msg);
      used = w < 0 ? note_len : used + (size_t)w;
    }
    char bad[sizeof path + 16];
    snprintf(bad, sizeof bad, "%s.refused", path);
    if (rename(path, bad) != 0)
      td_log_warn("cannot set the refused checkpoint aside", "file=%s err=\"%s\"", path,
                  strerror(errno));
  }
  free(fs);
  s->last_step = t->st.step;
  s->last_sec = td_mono_sec();
  pthread_mutex_lock(&s->mu);
  s->written_step = resumed ? t->st.step : -1;
  pthread_mutex_unlock(&s->mu);
  return resumed;
}

/* Sleeps sec seconds in short naps, or until r->give_up says to stop
 * (returns 1 then). */
static int nap(const td_saver_retry *r, double sec) {
  double until = td_mono_sec() + sec;
  for (;;) {
    if (r && r->give_up && r->give_up(r->user))
      return 1;
    double left = until - td_mono_sec();
    if (left <= 0)
      return 0;
    double d = left < 0.05 ? left : 0.05;
    struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
    nanosleep(&ts, NULL);
  }
}

int td_saver_persist(td_saver *s, td_trainer *t, td_ckpt_reason reason, int force,
                     const td_saver_retry *r, td_error *err) {
  td_saver_wait(s);
  const int64_t step = t->st.step;
  pthread_mutex_lock(&s->mu);
  int64_t written = s->written_step;
  pthread_mutex_unlock(&s->mu);
  if (!force && written == step)
    return TD_OK;
  const double window = r ? r->retry_sec : 0.0;
  double first_fail = 0.0, delay = 1.0;
  char last[TD_ERRMSG_MAX] = "";
  int rc = TD_OK, attempts = 0;
  for (;;) {
    td_error e = {0};
    attempts++;
    rc = td_saver_snapshot(s, t, reason, r && r->gen ? r->gen(r->user) : 0, &e);
    if (!rc) {
      td_saver_wait(s);
      rc = s->res.rc; /* the writer is idle: its result stays until the next snapshot */
      if (rc)
        snprintf(e.msg, sizeof e.msg, "%s", s->res.msg);
    }
    if (!rc)
      return TD_OK;
    snprintf(last, sizeof last, "%s", e.msg);
    double now = td_mono_sec();
    if (attempts == 1)
      first_fail = now;
    double left = window - (now - first_fail);
    if (left <= 0)
      break;
    double wait = delay < left ? delay : left;
    td_log_warn("checkpoint failed; trying again",
                "dir=%s step=%lld reason=%s attempt=%d "
                "retry_in_sec=%.1f err=\"%s\"",
                s->dir, (long long)step, td_ckpt_reason_name(reason), attempts, wait, last);
    if (nap(r, wait))
      return td_errorf(err, TD_ECANCELLED,
                       "stopped while retrying the %s checkpoint of step %lld, which is not on "
                       "disk (the last attempt: %s)",
                       td_ckpt_reason_name(reason), (long long)step, last);
    delay = delay * 2 > 30 ? 30 : delay * 2;
  }
  /* What is on disk, so that the message claims nothing more. */
  char newest[TD_CKPT_NAME_MAX + 64] = "none";
  td_ckpt_file *fs = NULL;
  size_t n = 0;
  td_error le = {0};
  if (td_ckpt_list(s->dir, &fs, &n, &le) == TD_OK && n)
    snprintf(newest, sizeof newest, "%s (step %lld)", fs[0].name, (long long)fs[0].step);
  free(fs);
  char tries[96] = "";
  if (attempts > 1)
    snprintf(tries, sizeof tries, " in %d attempts over %.0f s", attempts, window);
  return td_errorf(err, rc,
                   "the %s checkpoint of step %lld could not be written%s: %s; the "
                   "newest checkpoint on disk in %s is %s",
                   td_ckpt_reason_name(reason), (long long)step, tries, last, s->dir, newest);
}

int td_saver_due(const td_saver *s, const Traind__V1__Checkpointing *c, int64_t step) {
  if (!c)
    return 0;
  int64_t last = s->last_step < 0 ? 0 : s->last_step;
  if (c->every_steps && step / c->every_steps > last / c->every_steps)
    return 1;
  return c->every_seconds && step != last && td_mono_sec() - s->last_sec >= c->every_seconds;
}

void td_saver_wait(td_saver *s) {
  if (!s->started)
    return;
  pthread_mutex_lock(&s->mu);
  while (s->busy)
    pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

void td_saver_stop(td_saver *s) {
  if (!s->started)
    return;
  pthread_mutex_lock(&s->mu);
  s->quit = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s->host);
  free(s->spec_json);
  td_ckpt_buffer_free(&s->file_mem);
  memset(s, 0, sizeof *s);
}
