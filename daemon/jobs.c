#include "jobs.h"
#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* "j-" + 8 hex digits of the creation second + 6 random hex digits: ids sort
 * roughly by time and do not collide across restarts. */
static void make_id(char *out, size_t len, int64_t ns) {
  unsigned char r[3] = {0};
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
    uint64_t x = (uint64_t)ns * 0x9E3779B97F4A7C15ull;
    memcpy(r, &x, sizeof r);
  }
  snprintf(out, len, "j-%08llx%02x%02x%02x",
           (unsigned long long)(ns / 1000000000) & 0xffffffffull, r[0], r[1], r[2]);
}

td_job *td_job_new(Traind__V1__JobSpec *spec, const char *name, uint64_t seq) {
  td_job *j = calloc(1, sizeof *j);
  if (!j)
    return NULL;
  td_metrics_init(&j->metrics);
  j->created_ns = wall_ns();
  make_id(j->id, sizeof j->id, j->created_ns);
  j->name = strdup(name ? name : "");
  j->spec = spec;
  j->state = TRAIND__V1__JOB_STATE__QUEUED;
  j->seq = seq;
  atomic_init(&j->stop, TD_STOP_NONE);
  atomic_init(&j->save_req, 0);
  if (!j->name) {
    td_metrics_free(&j->metrics);
    free(j);
    return NULL;
  }
  return j;
}

void td_job_free(td_job *j) {
  if (!j)
    return;
  if (j->spec)
    protobuf_c_message_free_unpacked(&j->spec->base, NULL);
  td_metrics_free(&j->metrics);
  free(j->cancel_calls);
  free(j->save_calls);
  free(j->name);
  free(j);
}

int td_job_is_final(const td_job *j) {
  return j->state == TRAIND__V1__JOB_STATE__SUCCEEDED ||
         j->state == TRAIND__V1__JOB_STATE__FAILED ||
         j->state == TRAIND__V1__JOB_STATE__CANCELLED;
}

const char *td_job_state_name(Traind__V1__JobState s) {
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value(&traind__v1__job_state__descriptor, (int)s);
  return v ? v->name : "UNKNOWN";
}

void td_timestamp_set(Google__Protobuf__Timestamp *t, int64_t ns) {
  google__protobuf__timestamp__init(t);
  t->seconds = ns / 1000000000;
  t->nanos = (int32_t)(ns % 1000000000);
}

void td_job_ckpt_dir(const td_job *j, const char *state_dir, char *buf, size_t len) {
  snprintf(buf, len, "%s/checkpoints/%s", state_dir, j->id);
}

void td_job_ckpt_info(const td_job_ckpt *c, const char *dir, Traind__V1__CheckpointInfo *m,
                      Google__Protobuf__Timestamp *t, char *buf, size_t len) {
  traind__v1__checkpoint_info__init(m);
  m->file = (char *)c->file;
  m->step = c->step;
  m->epochs_completed = c->epochs_completed;
  m->bytes = c->bytes;
  td_timestamp_set(t, c->time_ns);
  m->time = t;
  m->reason = (char *)c->reason;
  m->write_sec = c->write_sec;
  m->stall_ms = c->stall_ms;
  snprintf(buf, len, "%s/%s", dir ? dir : "", c->file);
  m->path = dir ? buf : "";
}

void td_job_add_resume(td_job *j, const td_job_resume *r) {
  if (j->n_resumes == TD_JOB_MAX_RESUMES) {
    memmove(j->resumes, j->resumes + 1, (TD_JOB_MAX_RESUMES - 1) * sizeof *j->resumes);
    j->n_resumes--;
  }
  j->resumes[j->n_resumes++] = *r;
}

void td_job_msg_fill(td_job_msg *m, td_job *j, const char *state_dir) {
  Traind__V1__Job *p = &m->job;
  traind__v1__job__init(p);
  p->id = j->id;
  p->name = j->name;
  p->state = j->state;
  p->spec = j->spec;
  td_timestamp_set(&m->created, j->created_ns);
  p->created = &m->created;
  if (j->started_ns) {
    td_timestamp_set(&m->started, j->started_ns);
    p->started = &m->started;
  }
  if (j->finished_ns) {
    td_timestamp_set(&m->finished, j->finished_ns);
    p->finished = &m->finished;
  }
  td_metrics_latest l;
  td_metrics_latest_get(&j->metrics, &l);
  traind__v1__progress__init(&m->progress);
  m->progress.step = l.step;
  m->progress.epoch = l.epoch;
  m->progress.total_steps = j->total_steps;
  m->progress.total_epochs = j->total_epochs;
  m->progress.steps_per_epoch = j->steps_per_epoch;
  p->progress = &m->progress;
  traind__v1__latest_metrics__init(&m->metrics);
  m->metrics.loss = l.loss;
  m->metrics.grad_norm = l.grad_norm;
  m->metrics.learning_rate = l.lr;
  m->metrics.examples_per_sec = l.examples_per_sec;
  m->metrics.train_loss = l.train_loss;
  m->metrics.train_accuracy = l.train_accuracy;
  m->metrics.test_loss = l.test_loss;
  m->metrics.test_accuracy = l.test_accuracy;
  p->metrics = &m->metrics;
  p->error = j->error;
  p->error_code = j->error_code;
  for (int i = 0; i < j->n_devices; i++) {
    snprintf(m->names[i], sizeof m->names[i], "%s:%d", j->on_gpu ? "gpu" : "cpu",
             j->devices[i]);
    m->devices[i] = m->names[i];
  }
  p->n_devices = (size_t)j->n_devices;
  p->devices = m->devices;
  p->compile_ms = j->compile_ms;
  p->compile_cache_hit = j->cache_hit;
  m->ckpt_dir[0] = 0;
  if (state_dir)
    td_job_ckpt_dir(j, state_dir, m->ckpt_dir, sizeof m->ckpt_dir);
  p->checkpoint_dir = m->ckpt_dir;
  if (j->ckpt.file[0]) {
    td_job_ckpt_info(&j->ckpt, state_dir ? m->ckpt_dir : NULL, &m->ckpt, &m->ckpt_time,
                     m->ckpt_path, sizeof m->ckpt_path);
    p->last_checkpoint = &m->ckpt;
  }
  p->checkpoints_written = j->ckpts_written;
  p->checkpoint_error = j->ckpt_error;
  for (size_t i = 0; i < j->n_resumes; i++) {
    const td_job_resume *r = &j->resumes[i];
    Traind__V1__Resume *x = &m->resumes[i];
    traind__v1__resume__init(x);
    td_timestamp_set(&m->resume_times[i], r->time_ns);
    x->time = &m->resume_times[i];
    x->step = r->step;
    x->checkpoint = (char *)r->checkpoint;
    x->note = (char *)r->note;
    m->resume_ptrs[i] = x;
  }
  p->n_resumes = j->n_resumes;
  p->resumes = m->resume_ptrs;
}

/* ----------------------------------------------------------- storage */

static int jobs_dir(const char *state_dir, char *out, size_t len, td_error *err) {
  int n = snprintf(out, len, "%s/jobs", state_dir);
  if (n < 0 || (size_t)n >= len)
    return td_errorf(err, TD_EINVAL, "state directory path is too long");
  return TD_OK;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int td_job_save(td_job *j, const char *state_dir, td_error *err) {
  char dir[4096], path[4200], tmp[4300];
  int rc = jobs_dir(state_dir, dir, sizeof dir, err);
  if (rc || (rc = td_mkdir_p(dir, err)))
    return rc;
  snprintf(path, sizeof path, "%s/%s.pb", dir, j->id);
  snprintf(tmp, sizeof tmp, "%s/.%s.pb.tmp", dir, j->id);

  td_job_msg *m = malloc(sizeof *m);
  if (!m)
    return td_errorf(err, TD_ENOMEM, "job %s: out of memory", j->id);
  td_job_msg_fill(m, j, state_dir);
  size_t n = traind__v1__job__get_packed_size(&m->job);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) {
    free(m);
    return td_errorf(err, TD_ENOMEM, "job %s: out of memory", j->id);
  }
  traind__v1__job__pack(&m->job, buf);
  free(m);

  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    free(buf);
    return td_errorf(err, TD_EIO, "cannot write %s: %s", tmp, strerror(errno));
  }
  int bad = write_all(fd, buf, n) != 0 || fsync(fd) != 0;
  int saved = errno;
  free(buf);
  if (close(fd) != 0)
    bad = 1;
  if (bad || rename(tmp, path) != 0) {
    int e = bad ? saved : errno;
    unlink(tmp);
    return td_errorf(err, TD_EIO, "cannot write %s: %s", path, strerror(e));
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return TD_OK;
}

static int read_file(const char *path, uint8_t **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return -1;
  uint8_t *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n == cap) {
      cap = cap ? cap * 2 : 4096;
      if (cap > (64u << 20)) {
        free(buf);
        fclose(f);
        return -1;
      }
      uint8_t *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        return -1;
      }
      buf = nb;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0)
      break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    return -1;
  }
  *out = buf;
  *len = n;
  return 0;
}

static int64_t ts_ns(const Google__Protobuf__Timestamp *t) {
  return t ? t->seconds * 1000000000 + t->nanos : 0;
}

static td_job *job_from_record(Traind__V1__Job *r) {
  if (!r->spec || !r->id || strlen(r->id) >= TD_JOB_ID_MAX)
    return NULL;
  td_job *j = td_job_new(r->spec, r->name, 0);
  if (!j)
    return NULL;
  r->spec = NULL; /* now the job's */
  snprintf(j->id, sizeof j->id, "%s", r->id);
  j->state = r->state;
  j->created_ns = ts_ns(r->created);
  j->started_ns = ts_ns(r->started);
  j->finished_ns = ts_ns(r->finished);
  snprintf(j->error, sizeof j->error, "%s", r->error ? r->error : "");
  j->error_code = r->error_code;
  j->compile_ms = r->compile_ms;
  j->cache_hit = r->compile_cache_hit;
  td_metrics_latest l = {0};
  if (r->progress) {
    l.step = r->progress->step;
    l.epoch = r->progress->epoch;
    j->total_steps = r->progress->total_steps;
    j->total_epochs = r->progress->total_epochs;
    j->steps_per_epoch = r->progress->steps_per_epoch;
  }
  if (r->metrics) {
    l.loss = r->metrics->loss;
    l.grad_norm = r->metrics->grad_norm;
    l.lr = r->metrics->learning_rate;
    l.examples_per_sec = r->metrics->examples_per_sec;
    l.train_loss = r->metrics->train_loss;
    l.train_accuracy = r->metrics->train_accuracy;
    l.test_loss = r->metrics->test_loss;
    l.test_accuracy = r->metrics->test_accuracy;
  }
  td_metrics_latest_set(&j->metrics, &l);
  const Traind__V1__CheckpointInfo *c = r->last_checkpoint;
  if (c && c->file) {
    snprintf(j->ckpt.file, sizeof j->ckpt.file, "%s", c->file);
    j->ckpt.step = c->step;
    j->ckpt.epochs_completed = c->epochs_completed;
    j->ckpt.bytes = c->bytes;
    j->ckpt.time_ns = ts_ns(c->time);
    snprintf(j->ckpt.reason, sizeof j->ckpt.reason, "%s", c->reason ? c->reason : "");
    j->ckpt.write_sec = c->write_sec;
    j->ckpt.stall_ms = c->stall_ms;
  }
  j->ckpts_written = r->checkpoints_written;
  snprintf(j->ckpt_error, sizeof j->ckpt_error, "%s",
           r->checkpoint_error ? r->checkpoint_error : "");
  for (size_t i = 0; i < r->n_resumes; i++) {
    const Traind__V1__Resume *x = r->resumes[i];
    td_job_resume res = {.time_ns = ts_ns(x->time), .step = x->step};
    snprintf(res.checkpoint, sizeof res.checkpoint, "%s", x->checkpoint ? x->checkpoint : "");
    snprintf(res.note, sizeof res.note, "%s", x->note ? x->note : "");
    td_job_add_resume(j, &res);
  }
  return j;
}

int td_job_load_all(const char *state_dir, td_job ***out,
                    size_t *count, void (*warn)(const char *path, const char *why),
                    td_error *err) {
  char dir[4096];
  int rc = jobs_dir(state_dir, dir, sizeof dir, err);
  if (rc || (rc = td_mkdir_p(dir, err)))
    return rc;
  DIR *d = opendir(dir);
  if (!d)
    return td_errorf(err, TD_EIO, "cannot read %s: %s", dir, strerror(errno));
  td_job **jobs = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    char path[4400];
    size_t len = strlen(e->d_name);
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (e->d_name[0] == '.' && len > 4 && strcmp(e->d_name + len - 4, ".tmp") == 0) {
      unlink(path); /* an interrupted write: the record before it stands */
      continue;
    }
    if (len < 4 || strcmp(e->d_name + len - 3, ".pb") != 0)
      continue;
    uint8_t *buf;
    size_t blen;
    if (read_file(path, &buf, &blen) != 0) {
      if (warn)
        warn(path, "cannot be read");
      continue;
    }
    Traind__V1__Job *r = traind__v1__job__unpack(NULL, blen, buf);
    free(buf);
    td_job *j = r ? job_from_record(r) : NULL;
    if (r)
      traind__v1__job__free_unpacked(r, NULL);
    if (!j) {
      if (warn)
        warn(path, "is not a valid job record");
      continue;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      td_job **nj = realloc(jobs, cap * sizeof *nj);
      if (!nj) {
        td_job_free(j);
        break;
      }
      jobs = nj;
    }
    jobs[n++] = j;
  }
  closedir(d);
  *out = jobs;
  *count = n;
  return TD_OK;
}
