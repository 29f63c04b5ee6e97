#include "jobs.h"
#include "clock.h"
#include "fsutil.h"
#include "jobspec.h"
#include "pbjson.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Ids are numbers written as "j-" + 14 hex digits: the creation second
 * times 2^24 plus a counter. The last one made or seen is kept here (for
 * the process: one daemon per state directory); the next is one past it,
 * or the current second's first when that is later. So ids grow strictly,
 * sort by time, and pass every id loaded from the state directory even
 * when the clock has not moved on or went back. Atomic, so that a job may
 * be made off the loop thread. */
static _Atomic uint64_t last_id;
/* Ids at or past this are never made (some 2^36 years away): a larger one
 * loaded from disk does not move the counter, so it cannot wrap. */
#define ID_CEILING (1ull << 60)

static void make_id(char *out, size_t len, int64_t ns) {
  uint64_t floor_id = (uint64_t)(ns > 0 ? ns / 1000000000 : 0) << 24;
  uint64_t cur = atomic_load(&last_id), next;
  do
    next = cur + 1 > floor_id ? cur + 1 : floor_id;
  while (!atomic_compare_exchange_weak(&last_id, &cur, next));
  snprintf(out, len, "j-%014" PRIx64, next);
}

/* Moves the counter past id when it is one of the numbered form. */
static void id_seen(const char *id) {
  if (!id || strncmp(id, "j-", 2) != 0 || !id[2] || strlen(id + 2) > 16)
    return;
  uint64_t v = 0;
  for (const char *c = id + 2; *c; c++) {
    int d = *c >= '0' && *c <= '9' ? *c - '0' : *c >= 'a' && *c <= 'f' ? *c - 'a' + 10 : -1;
    if (d < 0)
      return;
    v = v << 4 | (uint64_t)d;
  }
  if (v >= ID_CEILING)
    return;
  uint64_t cur = atomic_load(&last_id);
  while (v > cur && !atomic_compare_exchange_weak(&last_id, &cur, v))
    ;
}

int td_job_id_valid(const char *id) {
  if (!id || strncmp(id, "j-", 2) != 0)
    return 0;
  size_t n = 0;
  for (const char *c = id + 2; *c; c++, n++)
    if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z')) || n >= TD_JOB_ID_MAX - 3)
      return 0;
  return n > 0;
}

int td_job_check_spec(const Traind__V1__JobSpec *spec, td_error *err) {
  if (!spec)
    return td_errorf(err, TD_EINVAL, "spec: required (the JobSpec to run)");
  return td_jobspec_validate(spec, err);
}

/* Device storage: the name pointers, the indices, then the names. */
#define DEVICE_NAME_MAX 16

int td_job_devices_reserve(td_job *j, int n) {
  td_job_devices_clear(j);
  if (n <= 0)
    return TD_OK;
  size_t k = (size_t)n;
  char *block = malloc(k * (sizeof(char *) + sizeof(int) + DEVICE_NAME_MAX));
  if (!block)
    return TD_ENOMEM;
  j->device_names = (char **)(void *)block;
  j->devices = (int *)(void *)(block + k * sizeof(char *));
  char *names = block + k * (sizeof(char *) + sizeof(int));
  for (size_t i = 0; i < k; i++)
    j->device_names[i] = names + i * DEVICE_NAME_MAX;
  j->cap_devices = n;
  return TD_OK;
}

void td_job_devices_add(td_job *j, int dev) {
  if (j->n_devices >= j->cap_devices)
    return;
  j->devices[j->n_devices] = dev;
  snprintf(j->device_names[j->n_devices], DEVICE_NAME_MAX, "%s:%d", j->on_gpu ? "gpu" : "cpu", dev);
  j->n_devices++;
}

void td_job_devices_clear(td_job *j) {
  free(j->device_names);
  j->device_names = NULL;
  j->devices = NULL;
  j->n_devices = j->cap_devices = 0;
}

/* A job with no id yet (the loader gives it the record's). */
static td_job *job_alloc(Traind__V1__JobSpec *spec, const char *name, uint64_t seq) {
  td_job *j = calloc(1, sizeof *j);
  if (!j)
    return NULL;
  td_metrics_init(&j->metrics);
  j->created_ns = td_wall_ns();
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

td_job *td_job_new(Traind__V1__JobSpec *spec, const char *name, uint64_t seq) {
  td_job *j = job_alloc(spec, name, seq);
  if (j)
    make_id(j->id, sizeof j->id, j->created_ns);
  return j;
}

void td_job_free(td_job *j) {
  if (!j)
    return;
  if (j->spec)
    protobuf_c_message_free_unpacked(&j->spec->base, NULL);
  td_metrics_free(&j->metrics);
  td_job_devices_clear(j);
  free(j->cancel_calls);
  free(j->save_calls);
  free(j->name);
  free(j);
}

int td_job_is_final(const td_job *j) {
  return j->state == TRAIND__V1__JOB_STATE__SUCCEEDED ||
         j->state == TRAIND__V1__JOB_STATE__FAILED || j->state == TRAIND__V1__JOB_STATE__CANCELLED;
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
  p->owner = j->owner;
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
  if (l.per_token) {
    m->metrics.per_token = 1;
    m->metrics.train_bits_per_token = td_metrics_bits(l.train_loss);
    m->metrics.test_bits_per_token = td_metrics_bits(l.test_loss);
    m->metrics.tokens_per_sec = l.tokens_per_sec;
  }
  if (l.dp) {
    m->metrics.dp = 1;
    m->metrics.epsilon = l.epsilon;
    m->metrics.delta = l.delta;
  }
  p->metrics = &m->metrics;
  p->error = j->error;
  p->error_code = j->error_code;
  p->note = j->note;
  p->n_devices = (size_t)j->n_devices;
  p->devices = j->device_names;
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
  p->crash_count = j->crashes;
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

/* rename(2) that fails with EEXIST instead of replacing `to`. Where the
 * file system has no RENAME_NOREPLACE, a hard link does the same for
 * files; for anything else, a check just before the rename. */
static int rename_noreplace(int dfd, const char *from, const char *to) {
  if (renameat2(dfd, from, dfd, to, RENAME_NOREPLACE) == 0)
    return 0;
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
    return -1;
  if (linkat(dfd, from, dfd, to, 0) == 0)
    return unlinkat(dfd, from, 0) == 0 || errno == ENOENT ? 0 : -1;
  if (errno == EEXIST)
    return -1;
  struct stat sb;
  if (fstatat(dfd, to, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
    errno = EEXIST;
    return -1;
  }
  return renameat(dfd, from, dfd, to);
}

/* The packed record of j (malloc'd), or NULL when out of memory. */
static uint8_t *pack_record(td_job *j, const char *state_dir, size_t *len) {
  td_job_msg *m = malloc(sizeof *m);
  if (!m)
    return NULL;
  td_job_msg_fill(m, j, state_dir);
  size_t n = traind__v1__job__get_packed_size(&m->job);
  uint8_t *buf = malloc(n ? n : 1);
  if (buf)
    traind__v1__job__pack(&m->job, buf);
  free(m);
  *len = n;
  return buf;
}

int td_job_save(td_job *j, const char *state_dir, td_error *err) {
  char dir[4096], path[4200], tmp[4300];
  int rc = jobs_dir(state_dir, dir, sizeof dir, err);
  if (rc || (rc = td_mkdir_p(dir, err)))
    return rc;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return td_errorf(err, TD_EIO, "cannot open %s: %s", dir, strerror(errno));
  /* A new job claims its name; should it be taken (a record this daemon
   * did not make, or a second daemon on the same directory), the job
   * takes the next id, at most a few times. */
  for (int attempt = 0;; attempt++) {
    if (!td_job_id_valid(j->id)) {
      close(dfd);
      return td_errorf(err, TD_EINVAL, "job id '%.40s' cannot name a record", j->id);
    }
    snprintf(path, sizeof path, "%s.pb", j->id);
    snprintf(tmp, sizeof tmp, ".%s.pb.tmp", j->id);
    size_t n = 0;
    uint8_t *buf = pack_record(j, state_dir, &n);
    if (!buf) {
      close(dfd);
      return td_errorf(err, TD_ENOMEM, "job %s: out of memory", j->id);
    }
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0) {
      int e = errno;
      free(buf);
      close(dfd);
      return td_errorf(err, TD_EIO, "cannot write %s/%s: %s", dir, tmp, strerror(e));
    }
    int bad = write_all(fd, buf, n) != 0 || fsync(fd) != 0;
    int saved = errno;
    free(buf);
    if (close(fd) != 0 && !bad) {
      bad = 1;
      saved = errno;
    }
    int moved = !bad && (j->on_disk ? renameat(dfd, tmp, dfd, path)
                                    : rename_noreplace(dfd, tmp, path)) == 0;
    if (!moved) {
      int e = bad ? saved : errno;
      unlinkat(dfd, tmp, 0);
      if (!bad && e == EEXIST && attempt < 8) {
        make_id(j->id, sizeof j->id, td_wall_ns());
        continue;
      }
      close(dfd);
      return td_errorf(err, TD_EIO, "cannot write %s/%s: %s", dir, path, strerror(e));
    }
    break;
  }
  j->on_disk = 1;
  fsync(dfd);
  close(dfd);
  return TD_OK;
}

/* A file name as it may appear in a message or the log: at most 64
 * characters, anything but [A-Za-z0-9._-] shown as '?'. */
static void clean_name(const char *in, char *out, size_t len) {
  size_t k = 0;
  for (const char *c = in; *c && k + 4 < len && k < 64; c++) {
    int ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
             *c == '.' || *c == '_' || *c == '-';
    out[k++] = ok ? *c : '?';
  }
  if (strlen(in) > k && k + 4 <= len) {
    memcpy(out + k, "...", 3);
    k += 3;
  }
  out[k] = 0;
}

/* Reads the record `name` in dfd: a regular file (not followed when a
 * link, not waited on when a FIFO) of at most TD_JOB_RECORD_MAX bytes.
 * On failure *why says what it is. */
static int read_record(int dfd, const char *name, uint8_t **out, size_t *len, char *why,
                       size_t whylen) {
  int fd = openat(dfd, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    snprintf(why, whylen, "%s",
             errno == ELOOP ? "is a symbolic link, not a file" : strerror(errno));
    return -1;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    snprintf(why, whylen, "cannot be read: %s", strerror(errno));
    close(fd);
    return -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    snprintf(why, whylen, "is not a regular file (%s)",
             S_ISDIR(sb.st_mode)                          ? "a directory"
             : S_ISFIFO(sb.st_mode)                       ? "a FIFO"
             : S_ISSOCK(sb.st_mode)                       ? "a socket"
             : S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode) ? "a device"
                                                          : "not a file");
    close(fd);
    return -1;
  }
  if ((uint64_t)sb.st_size > TD_JOB_RECORD_MAX) {
    snprintf(why, whylen, "is %lld bytes; a job record is at most %u", (long long)sb.st_size,
             TD_JOB_RECORD_MAX);
    close(fd);
    return -1;
  }
  /* One byte more than the size said, to see a file that grew. */
  size_t cap = (size_t)sb.st_size + 1, n = 0;
  uint8_t *buf = malloc(cap);
  if (!buf) {
    snprintf(why, whylen, "cannot be read: out of memory");
    close(fd);
    return -1;
  }
  for (;;) {
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      snprintf(why, whylen, "cannot be read: %s", strerror(errno));
      break;
    }
    if (r == 0) {
      close(fd);
      *out = buf;
      *len = n;
      return 0;
    }
    n += (size_t)r;
    if (n > TD_JOB_RECORD_MAX) {
      snprintf(why, whylen, "grew past %u bytes while it was read", TD_JOB_RECORD_MAX);
      break;
    }
    if (n == cap) {
      uint8_t *nb = realloc(buf, cap *= 2);
      if (!nb) {
        snprintf(why, whylen, "cannot be read: out of memory");
        break;
      }
      buf = nb;
    }
  }
  free(buf);
  close(fd);
  return -1;
}

static int64_t ts_ns(const Google__Protobuf__Timestamp *t) {
  return t ? t->seconds * 1000000000 + t->nanos : 0;
}

static int state_known(int s) {
  return s == TRAIND__V1__JOB_STATE__QUEUED || s == TRAIND__V1__JOB_STATE__RUNNING ||
         s == TRAIND__V1__JOB_STATE__SUCCEEDED || s == TRAIND__V1__JOB_STATE__FAILED ||
         s == TRAIND__V1__JOB_STATE__CANCELLED;
}

/* Whether a record (whose id is its file name) may load as it is: a known
 * state, and for a job that would run, a spec that passes as a submission
 * does. A finished job's spec is its history and stays as it was. */
static int check_record(const Traind__V1__Job *r, td_error *err) {
  if (!state_known((int)r->state))
    return td_errorf(err, TD_EINVAL,
                     "state: %d is not a job state (QUEUED, RUNNING, "
                     "SUCCEEDED, FAILED or CANCELLED)",
                     (int)r->state);
  if (r->state != TRAIND__V1__JOB_STATE__QUEUED && r->state != TRAIND__V1__JOB_STATE__RUNNING)
    return TD_OK;
  int rc = td_job_check_spec(r->spec, err);
  if (rc && r->spec)
    td_error_prefix(err, "spec");
  return rc;
}

static td_job *job_from_record(Traind__V1__Job *r) {
  td_job *j = job_alloc(r->spec, r->name, 0);
  if (!j)
    return NULL;
  r->spec = NULL; /* now the job's */
  snprintf(j->id, sizeof j->id, "%s", r->id);
  j->on_disk = 1;
  j->state = r->state;
  j->created_ns = ts_ns(r->created);
  j->started_ns = ts_ns(r->started);
  j->finished_ns = ts_ns(r->finished);
  snprintf(j->error, sizeof j->error, "%s", r->error ? r->error : "");
  j->error_code = r->error_code;
  snprintf(j->note, sizeof j->note, "%s", r->note ? r->note : "");
  j->compile_ms = r->compile_ms;
  j->cache_hit = r->compile_cache_hit;
  j->crashes = r->crash_count;
  snprintf(j->owner, sizeof j->owner, "%s", r->owner ? r->owner : "");
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
    /* The bits follow from the losses. */
    l.per_token = r->metrics->per_token;
    l.tokens_per_sec = r->metrics->tokens_per_sec;
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

/* Renames the entry `name` aside as NAME.bad (or NAME.bad.2, ... when
 * that is taken: nothing set aside before is replaced). */
static int set_aside(int dfd, const char *name, char *out, size_t len) {
  for (int k = 1; k <= 20; k++) {
    if (k == 1)
      snprintf(out, len, "%s.bad", name);
    else
      snprintf(out, len, "%s.bad.%d", name, k);
    if (rename_noreplace(dfd, name, out) == 0)
      return 0;
    if (errno != EEXIST)
      return -1;
  }
  return -1;
}

/* The names in the directory, read before anything is renamed or written
 * there (a directory listing that changes while it is read may show an
 * entry twice or not at all). */
static int list_names(DIR *d, char ***out, size_t *count) {
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **nn = realloc(names, cap * sizeof *nn);
      if (!nn)
        goto oom;
      names = nn;
    }
    if (!(names[n] = strdup(e->d_name)))
      goto oom;
    n++;
  }
  *out = names;
  *count = n;
  return 0;
oom:
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  return -1;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Loads one record `name`: the job (as it was, or FAILED when its content
 * is not valid), or NULL when it names no job (then reported). */
static td_job *load_one(int dfd, const char *state_dir, const char *name,
                        void (*bad)(const td_job_bad *b)) {
  char file_id[256], why[TD_ERRMSG_MAX + 128], shown[80], rid[80];
  size_t len = strlen(name) - 3;
  snprintf(file_id, sizeof file_id, "%.*s", (int)(len < 255 ? len : 255), name);
  clean_name(name, shown, sizeof shown);
  why[0] = 0;
  Traind__V1__Job *r = NULL;
  td_job *j = NULL;
  if (!td_job_id_valid(file_id) || len >= TD_JOB_ID_MAX) {
    snprintf(why, sizeof why,
             "the name is not ID.pb for a job id (j- and up to 29 of "
             "[0-9a-z])");
  } else {
    id_seen(file_id);
    uint8_t *buf = NULL;
    size_t blen = 0;
    char what[256];
    if (read_record(dfd, name, &buf, &blen, what, sizeof what) != 0) {
      snprintf(why, sizeof why, "%s", what);
    } else {
      r = traind__v1__job__unpack(NULL, blen, buf);
      free(buf);
      if (!r) {
        snprintf(why, sizeof why, "is not a job record (it does not parse as traind.v1.Job)");
      } else {
        /* Every reply that lists the job would carry a bad string. */
        td_error uerr = {0};
        if (pbjson_check_utf8(&r->base, "record", &uerr))
          snprintf(why, sizeof why, "%s", uerr.msg);
      }
    }
  }
  if (r) {
    id_seen(r->id);
    clean_name(r->id, rid, sizeof rid);
    if (!td_job_id_valid(r->id))
      snprintf(why, sizeof why, "holds the id '%s', which is not a job id", rid);
    else if (strcmp(r->id, file_id) != 0)
      snprintf(why, sizeof why,
               "holds job %s, not %s: a record is named after its job "
               "(a copy or a renamed file?)",
               rid, file_id);
  }
  td_error err = {0};
  int listed = r && !why[0];
  if (listed && check_record(r, &err) == TD_OK) {
    j = job_from_record(r);
    traind__v1__job__free_unpacked(r, NULL);
    if (!j && bad) {
      td_job_bad b = {.file = shown, .why = "out of memory loading the record"};
      bad(&b);
    }
    return j;
  }
  if (listed)
    snprintf(why, sizeof why, "%s", err.msg);
  char aside[300], aside_shown[96];
  int moved = set_aside(dfd, name, aside, sizeof aside) == 0;
  if (moved)
    clean_name(aside, aside_shown, sizeof aside_shown);
  if (listed && moved) {
    /* The job stays listed, FAILED with the reason; its fresh record
     * replaces the one set aside. */
    j = job_from_record(r);
    if (j) {
      j->state = TRAIND__V1__JOB_STATE__FAILED;
      j->error_code = td_grpc_status(TD_EINVAL);
      snprintf(j->error, sizeof j->error,
               "the job record was not valid and was set aside as jobs/%s: %.800s; submit the "
               "job again",
               aside_shown, why);
      j->started_ns = 0;
      j->finished_ns = td_wall_ns();
      j->crashes = 0;
      td_error serr = {0};
      if (td_job_save(j, state_dir, &serr))
        snprintf(why + strlen(why), sizeof why - strlen(why), " (and %s)", serr.msg);
    }
  }
  if (r)
    traind__v1__job__free_unpacked(r, NULL);
  if (bad) {
    td_job_bad b = {
        .file = shown, .aside = moved ? aside_shown : NULL, .why = why, .job = j ? j->id : NULL};
    bad(&b);
  }
  return j;
}

int td_job_load_all(const char *state_dir, td_job ***out, size_t *count,
                    void (*bad)(const td_job_bad *b), td_error *err) {
  char dir[4096];
  *out = NULL;
  *count = 0;
  int rc = jobs_dir(state_dir, dir, sizeof dir, err);
  if (rc || (rc = td_mkdir_p(dir, err)))
    return rc;
  DIR *d = opendir(dir);
  if (!d)
    return td_errorf(err, TD_EIO, "cannot read %s: %s", dir, strerror(errno));
  char **names = NULL;
  size_t n_names = 0;
  if (list_names(d, &names, &n_names) != 0) {
    closedir(d);
    return td_errorf(err, TD_ENOMEM, "out of memory reading %s", dir);
  }
  int dfd = dirfd(d);
  td_job **jobs = NULL;
  size_t n = 0, cap = 0;
  rc = TD_OK;
  for (size_t i = 0; i < n_names; i++) {
    const char *name = names[i];
    if (rc) {
    } else if (name[0] == '.' && ends_with(name, ".tmp")) {
      unlinkat(dfd, name, 0); /* an interrupted write: the record before it stands */
    } else if (ends_with(name, ".pb")) {
      td_job *j = load_one(dfd, state_dir, name, bad);
      if (j && n == cap) {
        cap = cap ? cap * 2 : 64;
        td_job **nj = realloc(jobs, cap * sizeof *nj);
        if (!nj) {
          td_job_free(j);
          j = NULL;
          rc = td_errorf(err, TD_ENOMEM, "out of memory loading job records");
        } else {
          jobs = nj;
        }
      }
      if (j)
        jobs[n++] = j;
    }
    free(names[i]);
  }
  free(names);
  closedir(d);
  if (rc) {
    for (size_t i = 0; i < n; i++)
      td_job_free(jobs[i]);
    free(jobs);
    return rc;
  }
  *out = jobs;
  *count = n;
  return TD_OK;
}
