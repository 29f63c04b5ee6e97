/* The traind.v1.Trainer RPCs but the metric ones (watch.c): submissions,
 * checked on libuv's thread pool, jobs, cancels, devices, the daemon's
 * info, checkpoints and their export, and text sampled from them. */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "driver.h"
#include "gpus.h"
#include "h5safe.h"
#include "jobspec.h"
#include "log.h"
#include "pbjson.h"
#include "sample.h"
#include "traind/v1/trainer.pb-c.h"

#define LIST_DEFAULT 100
#define LIST_MAX 1000
/* A ListJobs reply packs to at most this many bytes unless its one job is
 * larger (docs/operations.md, Limits); room is kept for next_page_token. */
#define LIST_MAX_BYTES ((size_t)1 << 20)
#define NEXT_TOKEN_BYTES 64
/* Bytes per FileChunk, and chunks not yet written at a time (the one in
 * flight and one behind it): what a stream holds, however slowly its
 * client reads. */
#define EXPORT_CHUNK (64u << 10)
#define EXPORT_AHEAD 2

/* ---- submissions */

/* A SubmitJob past its cheap checks. Validation, compiling, the datasets'
 * headers and the memory checks take time that grows with the spec, so
 * they run on libuv's thread pool (submit_check), never on the loop: that
 * function reads only this struct, which holds its own copy of the spec
 * and of what it needs of the daemon's state, taken on the loop, and
 * writes the outcome here. The loop finishes the submission (the job, its
 * record, the srv_schedule, the reply) in submit_done. */
typedef struct submit_work {
  uv_work_t req;
  td_server *srv;            /* for submit_done, on the loop */
  td_rpc_call *call;         /* answered by submit_done */
  Traind__V1__JobSpec *spec; /* owned until it goes to the job */
  char *name;                /* owned */
  char **roots;              /* the data roots the owner may read, owned */
  size_t n_roots;
  char **all_roots; /* every data root, when the owner's are fewer; owned */
  size_t n_all_roots;
  char owner[TD_JOB_OWNER_MAX];
  int n_cpus, n_gpus; /* the device pools (fixed while the daemon runs) */
  char gpu_why[256];
  unsigned char *gpu_held; /* (n_gpus) whether a job holds each GPU now; owned */
  td_memory_limit mem;     /* the memory for jobs; checked when mem_on */
  int mem_on;
  uint32_t retention; /* metrics_retention */
  const char *gate;   /* td_server submit_gate; borrowed (outlives the loop) */
  /* The outcome. */
  int code; /* a gRPC status; TD_GRPC_OK: the job is accepted */
  char msg[TD_ERRMSG_MAX];
  size_t mem_bytes; /* the job's host memory (td_footprint host_bytes) */
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
  for (size_t i = 0; i < w->n_all_roots; i++)
    free(w->all_roots[i]);
  free(w->all_roots);
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

static int submit_refuse(submit_work *w, int code, const char *msg) {
  w->code = code;
  snprintf(w->msg, sizeof w->msg, "%s", msg);
  return code;
}

/* The GPUs a GPU job would run on, for its memory check: its devices.ids,
 * else the first devices.count GPUs that no job of this daemon holds (those
 * start_job would give it now; when fewer are free, the job waits for
 * whichever frees first, so this is an approximation). A GPU another job
 * of this daemon holds is left unchecked (td_admission). Fills gpus and
 * unchecked (n_gpus each); returns how many. */
static int submit_gpus(const submit_work *w, int *gpus, unsigned char *unchecked) {
  const Traind__V1__Devices *d = w->spec->devices;
  const int need = td_job_device_count(w->spec);
  int n = 0;
  for (int i = 0; n < need && i < w->n_gpus; i++) {
    int gpu = d->n_ids ? td_device_index(d->ids[i], "gpu") : i;
    if (!d->n_ids && w->gpu_held[gpu])
      continue; /* the job would be given a free one */
    gpus[n] = gpu;
    unchecked[n++] = w->gpu_held[gpu];
  }
  return n;
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
  const double t0 = td_mono_ms();
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
    /* A file the owner's roots do not have but another root does: the
     * owner may not read it. */
    const int code = td_grpc_status(rc);
    td_error aerr = {0};
    td_trainer_opts all = o;
    all.data_roots = (const char *const *)w->all_roots;
    all.n_data_roots = w->n_all_roots;
    if (w->all_roots && (code == TD_GRPC_NOT_FOUND || code == TD_GRPC_PERMISSION_DENIED) &&
        td_grpc_status(td_trainer_check(spec, &all, &aerr)) != code) {
      char roots[512] = "";
      for (size_t i = 0, k = 0; i < w->n_roots && k < sizeof roots; i++)
        k += (size_t)snprintf(roots + k, sizeof roots - k, "%s%s", i ? ", " : "", w->roots[i]);
      char denied[TD_ERRMSG_MAX];
      snprintf(denied, sizeof denied,
               "principal '%.120s' may read data only under its data roots (%.200s); the job "
               "names a file outside them: %.560s",
               w->owner, w->n_roots ? roots : "none", err.msg);
      submit_refuse(w, TD_GRPC_PERMISSION_DENIED, denied);
      return;
    }
    submit_refuse(w, code, err.msg);
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
  int *gpus = gpu ? calloc((size_t)w->n_gpus + 1, sizeof *gpus) : NULL;
  unsigned char *unchecked = gpu ? calloc((size_t)w->n_gpus + 1, 1) : NULL;
  if (gpu && (!gpus || !unchecked)) {
    free(gpus);
    free(unchecked);
    submit_refuse(w, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
    return;
  }
  td_admission a = {.mem = w->mem_on ? &w->mem : NULL,
                    .checkpoints = 1,
                    .add = srv_add_ring,
                    .add_user = &w->retention,
                    .gpus = gpus,
                    .unchecked = unchecked,
                    .n_gpus = gpu ? submit_gpus(w, gpus, unchecked) : 0};
  td_footprint f;
  rc = td_job_admit(spec, &fo, &a, &f, &err);
  free(gpus);
  free(unchecked);
  if (rc) {
    submit_refuse(w, td_grpc_status(rc), err.msg);
    return;
  }
  w->mem_bytes = f.host_bytes;
  w->check_ms = td_mono_ms() - t0;
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
  if (j) {
    w->spec = NULL; /* the job's now */
    snprintf(j->owner, sizeof j->owner, "%s", w->owner);
  }
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
  td_log_info("job queued", "job=%s name=\"%s\" owner=%s peer=%s", j->id, j->name, j->owner,
              td_rpc_peer(call));
  srv_schedule(s);
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
           (w->gpu_held = calloc((size_t)(s->n_gpus ? s->n_gpus : 1), 1));
  const char *owner = td_rpc_identity(call, NULL);
  int narrowed = 0;
  if (ok) {
    snprintf(w->owner, sizeof w->owner, "%s", owner ? owner : "");
    ok = srv_job_roots_narrowed(s, w->owner, &w->roots, &w->n_roots, &narrowed) == 0;
  }
  if (ok && narrowed) {
    ok = (w->all_roots = calloc(s->cfg->n_data_dirs + 1, sizeof *w->all_roots)) != NULL;
    for (size_t i = 0; ok && i < s->cfg->n_data_dirs; i++)
      ok = (w->all_roots[w->n_all_roots++] = strdup(s->cfg->data_dirs[i])) != NULL;
  }
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
  td_job *j = srv_job_for(s, call, req->id, TD_JOB_READ);
  if (!j)
    return;
  srv_reply_job(s, call, j);
}

/* A job in one of the states asked for, and one the caller may read: its
 * own when `me` is set (a user that reads only its own jobs). */
static int wanted(const Traind__V1__ListJobsRequest *req, const td_job *j, const char *me) {
  if (me && strcmp(j->owner, me) != 0)
    return 0;
  if (req->n_states == 0)
    return 1;
  for (size_t i = 0; i < req->n_states; i++)
    if (req->states[i] == j->state)
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
  const int reads_all = td_auth_reads_all(s->auth, call);
  const char *me = reads_all ? NULL : td_rpc_identity(call, NULL);
  if (!me && !reads_all)
    me = ""; /* no principal: no job */
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
    if (!wanted(req, j, me)) {
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
    more = wanted(req, s->jobs[k - 1], me);
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
  td_job *j = srv_job_for(s, call, req->id, TD_JOB_WRITE);
  if (!j)
    return;
  if (td_job_is_final(j)) {
    char msg[128];
    snprintf(msg, sizeof msg, "job %s already ended (%s); nothing to cancel", j->id,
             td_job_state_name(j->state));
    td_rpc_fail(call, TD_GRPC_FAILED_PRECONDITION, msg);
    return;
  }
  if (j->state == TRAIND__V1__JOB_STATE__QUEUED) {
    srv_finish_job(s, j, TRAIND__V1__JOB_STATE__CANCELLED, TD_GRPC_CANCELLED,
                   "cancelled while queued");
    srv_reply_job(s, call, j);
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

static void h_save(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__SaveCheckpointRequest *req = (const void *)req_;
  td_job *j = srv_job_for(s, call, req->id, TD_JOB_WRITE);
  if (!j)
    return;
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

/* The checkpoint of job `id` that an export or a sample reads: the newest,
 * or the one at `step`. When the job is unknown or not the caller's, or
 * has no such checkpoint, the call is failed (none_code: the status for a
 * job with no checkpoint yet) and NULL returned. */
typedef struct ckpt_pick {
  char path[4200];
  char file[TD_CKPT_NAME_MAX];
  int64_t step;
} ckpt_pick;

static td_job *pick_checkpoint(td_server *s, td_rpc_call *call, const char *id, int64_t step,
                               int none_code, ckpt_pick *out) {
  td_job *j = srv_job_for(s, call, id, TD_JOB_EXPORT);
  if (!j)
    return NULL;
  char dir[4096], msg[512];
  td_job_ckpt_dir(j, s->cfg->state_dir, dir, sizeof dir);
  td_ckpt_file *fs = NULL;
  size_t n = 0;
  td_error err = {0};
  if (td_ckpt_list(dir, &fs, &n, &err)) {
    td_rpc_fail(call, TD_GRPC_INTERNAL, err.msg);
    return NULL;
  }
  size_t pick = 0;
  while (step && pick < n && fs[pick].step != step)
    pick++;
  if (pick >= n) {
    if (step)
      snprintf(msg, sizeof msg,
               "job %s has no checkpoint at step %lld (it has %zu; the newest "
               "is at step %lld)",
               j->id, (long long)step, n, n ? (long long)fs[0].step : 0LL);
    else
      snprintf(msg, sizeof msg, "job %s has no checkpoint yet%s", j->id,
               j->state == TRAIND__V1__JOB_STATE__RUNNING ? "; take one with trainctl checkpoint"
                                                          : "");
    free(fs);
    td_rpc_fail(call, step ? TD_GRPC_NOT_FOUND : none_code, msg);
    return NULL;
  }
  snprintf(out->path, sizeof out->path, "%s/%s", dir, fs[pick].name);
  snprintf(out->file, sizeof out->file, "%s", fs[pick].name);
  out->step = fs[pick].step;
  free(fs);
  return j;
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
    size_t want =
        (size_t)(x->size - x->offset) < EXPORT_CHUNK ? (size_t)(x->size - x->offset) : EXPORT_CHUNK;
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
  ckpt_pick pk;
  td_job *j = pick_checkpoint(s, call, req->id, req->step, TD_GRPC_NOT_FOUND, &pk);
  if (!j)
    return;
  const char *path = pk.path;
  exporter *x = calloc(1, sizeof *x);
  if (x) {
    snprintf(x->file, sizeof x->file, "%s", pk.file);
    x->step = pk.step;
    x->buf = malloc(EXPORT_CHUNK);
  }
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

/* A Sample call: the checkpoint is loaded and the text generated on
 * libuv's thread pool (sample_run), from a copy of the request; the loop
 * replies in sample_done. */
typedef struct sample_work {
  uv_work_t req;
  td_rpc_call *call;
  char path[4200], file[TD_CKPT_NAME_MAX];
  int64_t step;
  char *prompt;
  td_sample_opts opts;
  /* The outcome. */
  int code;
  char msg[TD_ERRMSG_MAX];
  char *text;
  double sec;
} sample_work;

static void sample_run(uv_work_t *req) {
  sample_work *w = req->data;
  td_error err = {0};
  td_sampler *s = NULL;
  double t0 = td_mono_sec();
  int rc = td_sampler_open(w->path, &s, &err);
  if (!rc)
    rc = td_sampler_run(s, &w->opts, &w->text, &err);
  td_sampler_free(s);
  w->sec = td_mono_sec() - t0;
  if (rc) {
    /* A model that cannot be sampled is the job's state, not the request's. */
    w->code = rc == TD_EUNSUPPORTED ? TD_GRPC_FAILED_PRECONDITION : td_grpc_status(rc);
    snprintf(w->msg, sizeof w->msg, "%s", err.msg);
  }
}

static void sample_done(uv_work_t *req, int status) {
  sample_work *w = req->data;
  if (status != 0) {
    td_rpc_fail(w->call, TD_GRPC_INTERNAL, "the sampling did not run");
  } else if (w->code != TD_GRPC_OK) {
    td_rpc_fail(w->call, w->code, w->msg);
  } else {
    Traind__V1__SampleResponse r = TRAIND__V1__SAMPLE_RESPONSE__INIT;
    r.text = w->text;
    r.step = w->step;
    r.file = w->file;
    r.tokens = w->opts.tokens;
    r.tokens_per_sec = w->sec > 0.0 ? w->opts.tokens / w->sec : 0.0;
    td_rpc_reply(w->call, &r.base);
  }
  free(w->prompt);
  free(w->text);
  free(w);
}

static void h_sample(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__SampleRequest *req = (const void *)req_;
  if (req->tokens > TD_SAMPLE_MAX_TOKENS) {
    char msg[128];
    snprintf(msg, sizeof msg, "tokens: %u; at most %d per call", req->tokens, TD_SAMPLE_MAX_TOKENS);
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT, msg);
    return;
  }
  ckpt_pick pk;
  td_job *j = pick_checkpoint(s, call, req->id, req->step, TD_GRPC_FAILED_PRECONDITION, &pk);
  if (!j)
    return;
  sample_work *w = calloc(1, sizeof *w);
  if (w && !(w->prompt = strdup(req->prompt ? req->prompt : ""))) {
    free(w);
    w = NULL;
  }
  if (w) {
    w->req.data = w;
    w->call = call;
    snprintf(w->path, sizeof w->path, "%s", pk.path);
    snprintf(w->file, sizeof w->file, "%s", pk.file);
    w->step = pk.step;
    w->opts = (td_sample_opts){.prompt = w->prompt,
                               .tokens = req->tokens ? req->tokens : 200,
                               .temperature = req->temperature != 0.0 ? req->temperature : 1.0,
                               .top_k = req->top_k,
                               .seed = req->seed};
  }
  if (w)
    td_log_info("sampling", "job=%s file=%s tokens=%u peer=%s", j->id, w->file, w->opts.tokens,
                td_rpc_peer(call));
  if (!w || uv_queue_work(&s->loop, &w->req, sample_run, sample_done) != 0) {
    if (w)
      free(w->prompt);
    free(w);
    td_rpc_fail(call, TD_GRPC_RESOURCE_EXHAUSTED, "the daemon is out of memory");
  }
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
        snprintf(desc[i], sizeof desc[i], "CPU replica %zu (%u compute threads)", k, per ? per : 1);
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
  r.uptime_sec = (double)(td_wall_ns() - s->started_ns) / 1e9;
  pthread_mutex_lock(&s->cache.mu);
  r.compile_cache_entries = s->cache.n_entries;
  r.compile_cache_hits = s->cache.hits;
  r.compile_cache_misses = s->cache.misses;
  pthread_mutex_unlock(&s->cache.mu);
  r.n_listen = s->n_listen_shown;
  r.listen = s->listen_shown;
  r.n_data_dirs = s->cfg->n_data_dirs;
  r.data_dirs = s->cfg->data_dirs;
  r.max_concurrent_jobs = srv_max_jobs(s);
  for (size_t i = 0; i < s->n_jobs; i++) {
    r.jobs_queued += s->jobs[i]->state == TRAIND__V1__JOB_STATE__QUEUED;
    r.jobs_running += s->jobs[i]->state == TRAIND__V1__JOB_STATE__RUNNING;
  }
  r.jobs_total = (uint32_t)s->n_jobs;
  r.n_insecure_listen = s->n_insecure_shown;
  r.insecure_listen = s->insecure_shown;
  int role = 0;
  const char *me = td_rpc_identity(call, &role);
  r.caller = (char *)(me ? me : "");
  r.caller_role = (char *)td_role_name((td_role)role);
  td_rpc_reply(call, &r.base);
}

#define TRAINER(rpc, k, req, fn)                                                                 \
  {                                                                                              \
    .path = "/" TRAINER_SERVICE "/" rpc, .kind = k, .request = &traind__v1__##req##__descriptor, \
    .handler = fn                                                                                \
  }

const td_rpc_method srv_trainer_methods[SRV_N_TRAINER] = {
    TRAINER("SubmitJob", TD_RPC_UNARY, submit_job_request, h_submit),
    TRAINER("GetJob", TD_RPC_UNARY, get_job_request, h_get),
    TRAINER("ListJobs", TD_RPC_UNARY, list_jobs_request, h_list),
    TRAINER("CancelJob", TD_RPC_UNARY, cancel_job_request, h_cancel),
    TRAINER("GetMetrics", TD_RPC_UNARY, get_metrics_request, srv_h_metrics),
    TRAINER("WatchMetrics", TD_RPC_SERVER_STREAM, watch_metrics_request, srv_h_watch),
    TRAINER("ListDevices", TD_RPC_UNARY, list_devices_request, h_devices),
    TRAINER("GetDaemonInfo", TD_RPC_UNARY, get_daemon_info_request, h_info),
    TRAINER("SaveCheckpoint", TD_RPC_UNARY, save_checkpoint_request, h_save),
    TRAINER("ExportCheckpoint", TD_RPC_SERVER_STREAM, export_checkpoint_request, h_export),
    TRAINER("Sample", TD_RPC_UNARY, sample_request, h_sample),
    TRAINER("GetExamples", TD_RPC_UNARY, get_examples_request, srv_h_examples),
};
