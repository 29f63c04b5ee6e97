/* The per-example report of a job (training.per_example_report): the
 * worker keeps each epoch's in the state directory, examples/JOB.pb (a
 * packed GetExamplesResponse with every kept example's input, replaced
 * atomically), and GetExamples answers from that file, so the report
 * outlives the job and the daemon. */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "log.h"

/* What a reply with inputs may hold, under gRPC's 4 MiB default. */
#define REPLY_INPUT_BYTES (3u << 20)

static int report_path(const char *state_dir, const char *job_id, char *out, size_t len) {
  int n = snprintf(out, len, "%s/examples/%s.pb", state_dir, job_id);
  return n < 0 || (size_t)n >= len ? -1 : 0;
}

int srv_examples_save(const char *state_dir, const char *job_id, const td_example_report *r,
                      td_error *err) {
  char dir[PATH_MAX], path[PATH_MAX], tmp[2 * PATH_MAX];
  if (snprintf(dir, sizeof dir, "%s/examples", state_dir) >= (int)sizeof dir ||
      report_path(state_dir, job_id, path, sizeof path))
    return td_errorf(err, TD_EINVAL, "the state directory's path is too long");
  int rc = td_mkdir_p(dir, err);
  if (rc)
    return rc;
  Traind__V1__GetExamplesResponse m = TRAIND__V1__GET_EXAMPLES_RESPONSE__INIT;
  m.job_id = (char *)job_id;
  m.epoch = r->epoch;
  m.step = r->step;
  m.count = r->count;
  m.min = r->min;
  m.max = r->max;
  m.mean = r->mean;
  m.n_bucket_edges = TD_EXAMPLE_BUCKETS + 1;
  m.bucket_edges = (double *)r->edges;
  m.n_bucket_counts = TD_EXAMPLE_BUCKETS;
  m.bucket_counts = (uint64_t *)r->counts;
  m.l2_norm_clip = r->clip;
  m.clipped = r->clipped;
  m.n_input_shape = r->ndim;
  m.input_shape = (uint32_t *)r->shape;
  Traind__V1__ExampleNorm *ex = calloc(r->n_top ? r->n_top : 1, sizeof *ex);
  Traind__V1__ExampleNorm **ptrs = calloc(r->n_top ? r->n_top : 1, sizeof *ptrs);
  uint8_t *buf = NULL;
  size_t n = 0;
  if (ex && ptrs) {
    for (uint32_t i = 0; i < r->n_top; i++) {
      traind__v1__example_norm__init(&ex[i]);
      ex[i].index = r->top[i].index;
      ex[i].label = r->top[i].label;
      ex[i].grad_norm = r->top[i].norm;
      ex[i].step = r->top[i].step;
      ex[i].n_input = r->dim;
      ex[i].input = r->inputs + (size_t)i * r->dim;
      ptrs[i] = &ex[i];
    }
    m.n_top = r->n_top;
    m.top = ptrs;
    n = traind__v1__get_examples_response__get_packed_size(&m);
    if ((buf = malloc(n ? n : 1)))
      traind__v1__get_examples_response__pack(&m, buf);
  }
  free(ex);
  free(ptrs);
  if (!buf)
    return td_errorf(err, TD_ENOMEM, "no memory for the per-example report");
  snprintf(tmp, sizeof tmp, "%s/.%s.pb.tmp", dir, job_id);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  size_t off = 0;
  while (fd >= 0 && off < n) {
    ssize_t w = write(fd, buf + off, n - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      break;
    off += (size_t)w;
  }
  int e = fd < 0 ? errno : 0;
  if (fd >= 0 && (off < n || fsync(fd) != 0))
    e = errno ? errno : EIO;
  if (fd >= 0 && close(fd) != 0 && !e)
    e = errno;
  if (!e && rename(tmp, path) != 0)
    e = errno;
  free(buf);
  if (e) {
    unlink(tmp);
    return td_errorf(err, TD_EIO, "writing %s: %s", path, strerror(e));
  }
  return TD_OK;
}

/* The report file, unpacked; NULL with errno ENOENT when there is none. */
static Traind__V1__GetExamplesResponse *load(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  uint8_t *buf = NULL;
  long n = -1;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
      (buf = malloc(n ? (size_t)n : 1)) && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  Traind__V1__GetExamplesResponse *m =
      buf ? traind__v1__get_examples_response__unpack(NULL, (size_t)n, buf) : NULL;
  free(buf);
  if (!m)
    errno = EIO;
  return m;
}

void srv_h_examples(void *ctx, td_rpc_call *call, const ProtobufCMessage *req_) {
  td_server *s = ctx;
  const Traind__V1__GetExamplesRequest *req = (const void *)req_;
  td_job *j = srv_job_for(s, call, req->id, TD_JOB_READ);
  if (!j)
    return;
  char msg[PATH_MAX + 256], path[PATH_MAX];
  if (!j->spec->training || !j->spec->training->per_example_report) {
    snprintf(msg, sizeof msg,
             "job %s keeps no per-example report; submit it with "
             "training.per_example_report: {top_k: 20}",
             j->id);
    td_rpc_fail(call, TD_GRPC_FAILED_PRECONDITION, msg);
    return;
  }
  if (report_path(s->cfg->state_dir, j->id, path, sizeof path)) {
    td_rpc_fail(call, TD_GRPC_INTERNAL, "the state directory's path is too long");
    return;
  }
  Traind__V1__GetExamplesResponse *m = load(path);
  if (!m && errno == ENOENT) {
    snprintf(msg, sizeof msg,
             "job %s has no per-example report yet: one is made at each epoch's end", j->id);
    td_rpc_fail(call, TD_GRPC_NOT_FOUND, msg);
    return;
  }
  if (!m) {
    td_log_error("per-example report unreadable", "job=%s file=%s", j->id, path);
    snprintf(msg, sizeof msg, "job %s: its per-example report %s cannot be read", j->id, path);
    td_rpc_fail(call, TD_GRPC_DATA_LOSS, msg);
    return;
  }
  size_t keep = m->n_top;
  if (req->top && req->top < keep)
    keep = req->top;
  size_t per = 0;
  for (size_t i = 0; i < m->n_top; i++)
    per = m->top[i]->n_input > per ? m->top[i]->n_input : per;
  if (req->with_inputs && keep * per * sizeof(float) > REPLY_INPUT_BYTES) {
    snprintf(msg, sizeof msg,
             "top: %zu examples with inputs of %zu features are more than a reply holds "
             "(%u MiB); ask for at most %zu (top), or leave with_inputs out",
             keep, per, REPLY_INPUT_BYTES >> 20, REPLY_INPUT_BYTES / (per * sizeof(float)));
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT, msg);
  } else {
    /* The reply holds the first `keep`; every example stays counted for
     * the free (a float array is freed whatever its count says). */
    const size_t all = m->n_top;
    m->n_top = keep;
    for (size_t i = 0; !req->with_inputs && i < keep; i++)
      m->top[i]->n_input = 0;
    td_rpc_reply(call, &m->base);
    m->n_top = all;
  }
  traind__v1__get_examples_response__free_unpacked(m, NULL);
}
