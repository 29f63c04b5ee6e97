/* The gRPC layer end to end: a real server (daemon/rpc.c, daemon/health.c)
 * on its own libuv loop thread, listening on a unix socket and on
 * 127.0.0.1:0, called through the client library (client/rpc_client.c)
 * with real traind.v1 messages.
 *
 * The test's method table:
 *   /traind.v1.Trainer/GetJob        unary echo: Job{id = request id}
 *   /traind.v1.Trainer/CancelJob     unary, always NOT_FOUND naming the id
 *   /traind.test.Echo/GetJobLater    unary, answered 100 ms later from a timer
 *   /traind.v1.Trainer/WatchMetrics  stream: since_step messages (0: endless),
 *                                    four per 2 ms timer tick, steps 0,1,2...
 *   /grpc.health.v1.Health/{Check,Watch}
 * Handlers count what they see; the checks compare those counts and the
 * server's live-call count with what the clients saw. */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "check.h"
#include "clock.h"
#include "grpc/health/v1/health.pb-c.h"
#include "health.h"
#include "rpc.h"
#include "rpc_client.h"
#include "traind/v1/trainer.pb-c.h"

#define STREAM_BURST 4
#define LATER_MS 100
/* How long a condition may take to come true on a loaded machine; only a
 * failing test waits this long. */
#define WAIT_SEC 30
/* Upper bounds on things that take milliseconds when idle (an answer from
 * a 100 ms timer, a cancel, a deadline of 0.3 s): well above a loaded
 * machine's delays, well below the 10 s call deadlines they are told from. */
#define PROMPT_SEC 5

static char tmpdir[64];

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "test_rpc: timed out (a shutdown or call hung)\n";
  ssize_t w = write(2, msg, sizeof msg - 1);
  (void)w;
  _exit(2);
}

static int wait_atomic_at_least(atomic_int *v, int want, double sec) {
  double end = td_mono_sec() + sec;
  while (atomic_load(v) < want) {
    if (td_mono_sec() > end)
      return 0;
    sleep_ms(2);
  }
  return 1;
}

/* ---- a server on its own loop thread */

typedef struct loop_job {
  void (*fn)(void *arg);
  void *arg;
  int done;
  struct loop_job *next;
} loop_job;

typedef struct fixture {
  uv_loop_t loop;
  uv_async_t wake; /* runs loop_jobs on the loop thread */
  uv_mutex_t mu;
  uv_cond_t cv;
  loop_job *jobs;
  uv_thread_t thread;
  td_rpc_server *srv;
  td_health *health;
  char sock[200];
  char unix_addr[220];
  char tcp_addr[64];
  int done_called;
  atomic_int loop_exited;

  atomic_int unary_calls, later_started, streams_started, streams_finished, stream_cancels;
  char last_peer[128]; /* guarded by mu */
  char last_method[128];
} fixture;

static void on_wake(uv_async_t *h) {
  fixture *fx = h->data;
  uv_mutex_lock(&fx->mu);
  loop_job *j = fx->jobs;
  fx->jobs = NULL;
  uv_mutex_unlock(&fx->mu);
  while (j) {
    loop_job *next = j->next;
    j->fn(j->arg);
    uv_mutex_lock(&fx->mu);
    j->done = 1;
    uv_cond_broadcast(&fx->cv);
    uv_mutex_unlock(&fx->mu);
    j = next;
  }
}

/* Runs fn(arg) on the fixture's loop thread and waits for it. */
static void on_loop(fixture *fx, void (*fn)(void *), void *arg) {
  loop_job j = {fn, arg, 0, NULL};
  uv_mutex_lock(&fx->mu);
  j.next = fx->jobs;
  fx->jobs = &j;
  uv_mutex_unlock(&fx->mu);
  uv_async_send(&fx->wake);
  uv_mutex_lock(&fx->mu);
  while (!j.done)
    uv_cond_wait(&fx->cv, &fx->mu);
  uv_mutex_unlock(&fx->mu);
}

static void record_call(fixture *fx, td_rpc_call *call) {
  uv_mutex_lock(&fx->mu);
  snprintf(fx->last_peer, sizeof fx->last_peer, "%s", td_rpc_peer(call));
  snprintf(fx->last_method, sizeof fx->last_method, "%s", td_rpc_method_of(call)->path);
  uv_mutex_unlock(&fx->mu);
}

static void h_get_job(void *ctx, td_rpc_call *call, const ProtobufCMessage *req) {
  fixture *fx = ctx;
  const Traind__V1__GetJobRequest *r = (const Traind__V1__GetJobRequest *)req;
  atomic_fetch_add(&fx->unary_calls, 1);
  record_call(fx, call);
  Traind__V1__Job job = TRAIND__V1__JOB__INIT;
  job.id = r->id;
  job.name = "echo";
  job.state = TRAIND__V1__JOB_STATE__RUNNING;
  td_rpc_reply(call, &job.base);
}

static void h_cancel_job(void *ctx, td_rpc_call *call, const ProtobufCMessage *req) {
  fixture *fx = ctx;
  const Traind__V1__CancelJobRequest *r = (const Traind__V1__CancelJobRequest *)req;
  atomic_fetch_add(&fx->unary_calls, 1);
  char msg[256];
  snprintf(msg, sizeof msg, "no job named \"%s\"", r->id);
  td_rpc_fail(call, TD_GRPC_NOT_FOUND, msg);
}

typedef struct later {
  uv_timer_t timer;
  td_rpc_call *call;
  const Traind__V1__GetJobRequest *req; /* owned by the call until answered */
} later;

static void later_closed(uv_handle_t *h) { free(h->data); }

static void later_fire(uv_timer_t *t) {
  later *l = t->data;
  Traind__V1__Job job = TRAIND__V1__JOB__INIT;
  job.id = l->req->id;
  job.name = "later";
  td_rpc_reply(l->call, &job.base);
  uv_close((uv_handle_t *)&l->timer, later_closed);
}

static void h_get_job_later(void *ctx, td_rpc_call *call, const ProtobufCMessage *req) {
  fixture *fx = ctx;
  later *l = calloc(1, sizeof *l);
  l->call = call;
  l->req = (const Traind__V1__GetJobRequest *)req;
  uv_timer_init(&fx->loop, &l->timer);
  l->timer.data = l;
  uv_timer_start(&l->timer, later_fire, LATER_MS, 0);
  atomic_fetch_add(&fx->later_started, 1);
}

typedef struct tstream {
  uv_timer_t timer;
  fixture *fx;
  td_rpc_call *call;
  int64_t n, sent;
  char id[64];
} tstream;

static void tstream_closed(uv_handle_t *h) { free(h->data); }

static void tstream_end(tstream *ts) {
  uv_timer_stop(&ts->timer);
  uv_close((uv_handle_t *)&ts->timer, tstream_closed);
}

static void tstream_tick(uv_timer_t *t) {
  tstream *ts = t->data;
  for (int k = 0; k < STREAM_BURST; k++) {
    Traind__V1__StepPoint p = TRAIND__V1__STEP_POINT__INIT;
    Traind__V1__StepPoint *pp = &p;
    p.step = ts->sent;
    p.loss = 1.0f / (float)(1 + ts->sent);
    Traind__V1__Job job = TRAIND__V1__JOB__INIT;
    job.id = ts->id;
    Traind__V1__WatchMetricsResponse resp = TRAIND__V1__WATCH_METRICS_RESPONSE__INIT;
    resp.n_steps = 1;
    resp.steps = &pp;
    resp.job = &job;
    if (td_rpc_send(ts->call, &resp.base) != TD_OK) {
      /* The client is gone; the cancel callback finishes the stream. */
      uv_timer_stop(&ts->timer);
      return;
    }
    ts->sent++;
    if (ts->n > 0 && ts->sent == ts->n) {
      /* Counted before the status goes out, so that a client that has the
       * status also sees the count. Finishing right behind a burst: the
       * status must wait for it. */
      atomic_fetch_add(&ts->fx->streams_finished, 1);
      td_rpc_finish(ts->call, TD_GRPC_OK, NULL);
      tstream_end(ts);
      return;
    }
  }
}

static void tstream_cancel(void *arg, td_rpc_call *call) {
  tstream *ts = arg;
  atomic_fetch_add(&ts->fx->stream_cancels, 1);
  td_rpc_finish(call, TD_GRPC_CANCELLED, "stream cancelled");
  tstream_end(ts);
}

static void h_watch_metrics(void *ctx, td_rpc_call *call, const ProtobufCMessage *req) {
  fixture *fx = ctx;
  const Traind__V1__WatchMetricsRequest *r = (const Traind__V1__WatchMetricsRequest *)req;
  tstream *ts = calloc(1, sizeof *ts);
  ts->fx = fx;
  ts->call = call;
  ts->n = r->since_step;
  snprintf(ts->id, sizeof ts->id, "%s", r->id);
  uv_timer_init(&fx->loop, &ts->timer);
  ts->timer.data = ts;
  uv_timer_start(&ts->timer, tstream_tick, 2, 2);
  td_rpc_on_cancel(call, tstream_cancel, ts);
  atomic_fetch_add(&fx->streams_started, 1);
}

static void loop_main(void *arg) {
  fixture *fx = arg;
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  atomic_store(&fx->loop_exited, 1);
}

/* max_connections for the next fixture_start (0: the default). */
static size_t fixture_max_connections;

/* Starts a server listening on unix:<sock> and 127.0.0.1:0. */
static int fixture_start(fixture *fx, const char *sock, size_t max_request) {
  memset(fx, 0, sizeof *fx);
  snprintf(fx->sock, sizeof fx->sock, "%s", sock);
  snprintf(fx->unix_addr, sizeof fx->unix_addr, "unix:%s", sock);
  uv_loop_init(&fx->loop);
  uv_mutex_init(&fx->mu);
  uv_cond_init(&fx->cv);
  uv_async_init(&fx->loop, &fx->wake, on_wake);
  fx->wake.data = fx;
  fx->health = td_health_new();
  td_health_set(fx->health, "", TD_HEALTH_SERVING);
  td_health_set(fx->health, "traind.v1.Trainer", TD_HEALTH_NOT_SERVING);

  td_rpc_method methods[6] = {
      {"/traind.v1.Trainer/GetJob", TD_RPC_UNARY, &traind__v1__get_job_request__descriptor,
       h_get_job, fx, 0},
      {"/traind.v1.Trainer/CancelJob", TD_RPC_UNARY, &traind__v1__cancel_job_request__descriptor,
       h_cancel_job, fx, 0},
      {"/traind.test.Echo/GetJobLater", TD_RPC_UNARY, &traind__v1__get_job_request__descriptor,
       h_get_job_later, fx, 0},
      {"/traind.v1.Trainer/WatchMetrics", TD_RPC_SERVER_STREAM,
       &traind__v1__watch_metrics_request__descriptor, h_watch_metrics, fx, 0},
  };
  td_health_methods(fx->health, methods + 4);
  const char *listen[2] = {fx->unix_addr, "127.0.0.1:0"};
  td_rpc_server_opts opts = {.listen = listen,
                             .n_listen = 2,
                             .methods = methods,
                             .n_methods = 6,
                             .max_request_bytes = max_request,
                             .max_connections = fixture_max_connections};
  td_error err = {0};
  int rc = td_rpc_server_start(&fx->srv, &fx->loop, &opts, &err);
  CHECK(rc == TD_OK, "server start on %s: %s", fx->unix_addr, err.msg);
  if (rc != TD_OK)
    return rc;
  CHECK(td_rpc_server_port(fx->srv, 0) == 0, "a unix socket has no port");
  int port = td_rpc_server_port(fx->srv, 1);
  CHECK(port > 0 && port < 65536, "ephemeral port %d", port);
  snprintf(fx->tcp_addr, sizeof fx->tcp_addr, "127.0.0.1:%d", port);
  uv_thread_create(&fx->thread, loop_main, fx);
  return TD_OK;
}

static void stop_health(void *arg) {
  fixture *fx = arg;
  td_health_free(fx->health);
  fx->health = NULL;
}

static void on_server_done(void *arg) {
  fixture *fx = arg;
  td_rpc_server_free(fx->srv);
  fx->srv = NULL;
  fx->done_called = 1;
  uv_close((uv_handle_t *)&fx->wake, NULL);
}

static void stop_server(void *arg) {
  fixture *fx = arg;
  td_rpc_server_shutdown(fx->srv, on_server_done, fx);
}

/* Shuts the server down from the loop and waits for the loop to run out of
 * handles, which needs every call, timer and gRPC object to be gone. */
static void fixture_stop(fixture *fx) {
  if (fx->health)
    on_loop(fx, stop_health, fx);
  double t0 = td_mono_sec();
  on_loop(fx, stop_server, fx);
  if (!wait_atomic_at_least(&fx->loop_exited, 1, 10)) {
    CHECK(0, "shutdown finished within 10 s");
    exit(td_check_exit());
  }
  uv_thread_join(&fx->thread);
  double dt = td_mono_sec() - t0;
  CHECK(fx->done_called, "shutdown's done callback ran");
  CHECK(dt < 10, "shutdown took %.2f s", dt);
  int rc = uv_loop_close(&fx->loop);
  CHECK(rc == 0, "loop closed with every handle released (%s)", rc ? uv_strerror(rc) : "ok");
  uv_cond_destroy(&fx->cv);
  uv_mutex_destroy(&fx->mu);
}

typedef struct calls_query {
  fixture *fx;
  size_t calls;
} calls_query;

static void query_calls(void *arg) {
  calls_query *q = arg;
  q->calls = td_rpc_server_calls(q->fx->srv);
}

static size_t live_calls(fixture *fx) {
  calls_query q = {fx, 0};
  on_loop(fx, query_calls, &q);
  return q.calls;
}

/* Waits up to `sec` for the server to release every call. */
static int wait_no_calls(fixture *fx, double sec) {
  double end = td_mono_sec() + sec;
  while (live_calls(fx) != 0) {
    if (td_mono_sec() > end)
      return 0;
    sleep_ms(2);
  }
  return 1;
}

typedef struct health_set_args {
  fixture *fx;
  const char *service;
  int status;
} health_set_args;

static void do_health_set(void *arg) {
  health_set_args *a = arg;
  td_health_set(a->fx->health, a->service, a->status);
}

static void health_set(fixture *fx, const char *service, int status) {
  health_set_args a = {fx, service, status};
  on_loop(fx, do_health_set, &a);
}

/* ---- client helpers */

static int get_job(td_rpc_client *c, const char *id, Traind__V1__Job **job, double timeout,
                   td_rpc_status *st) {
  Traind__V1__GetJobRequest req = TRAIND__V1__GET_JOB_REQUEST__INIT;
  req.id = (char *)id;
  return td_rpc_call_unary(c, "/traind.v1.Trainer/GetJob", &req.base, &traind__v1__job__descriptor,
                           (ProtobufCMessage **)job, timeout, st);
}

typedef struct stream_run {
  const char *target;
  int64_t n;      /* messages the server sends (0: endless) */
  int stop_after; /* cancel after this many (0: never) */
  double timeout;
  int got;
  int in_order;
  atomic_int messages;
  int code;
  td_rpc_status st;
  double elapsed;
} stream_run;

static int stream_message(void *arg, const ProtobufCMessage *m) {
  stream_run *r = arg;
  const Traind__V1__WatchMetricsResponse *w = (const Traind__V1__WatchMetricsResponse *)m;
  if (w->n_steps != 1 || w->steps[0]->step != r->got || !w->job || strcmp(w->job->id, "job-7") != 0)
    r->in_order = 0;
  r->got++;
  atomic_fetch_add(&r->messages, 1);
  return r->stop_after && r->got >= r->stop_after;
}

static void stream_thread(void *arg) {
  stream_run *r = arg;
  td_rpc_client *c = td_rpc_client_open(r->target);
  Traind__V1__WatchMetricsRequest req = TRAIND__V1__WATCH_METRICS_REQUEST__INIT;
  req.id = "job-7";
  req.since_step = r->n;
  r->in_order = 1;
  double t0 = td_mono_sec();
  r->code = td_rpc_call_stream(c, "/traind.v1.Trainer/WatchMetrics", &req.base,
                               &traind__v1__watch_metrics_response__descriptor, stream_message, r,
                               r->timeout, &r->st);
  r->elapsed = td_mono_sec() - t0;
  td_rpc_client_close(c);
}

typedef struct watch_run {
  const char *target, *service;
  int stop_after;
  int statuses[16];
  atomic_int n;
  int code;
  td_rpc_status st;
} watch_run;

static int watch_message(void *arg, const ProtobufCMessage *m) {
  watch_run *w = arg;
  const Grpc__Health__V1__HealthCheckResponse *r = (const Grpc__Health__V1__HealthCheckResponse *)m;
  int i = atomic_load(&w->n);
  if (i < 16)
    w->statuses[i] = (int)r->status;
  atomic_store(&w->n, i + 1);
  return w->stop_after && i + 1 >= w->stop_after;
}

static void watch_thread(void *arg) {
  watch_run *w = arg;
  td_rpc_client *c = td_rpc_client_open(w->target);
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)w->service;
  w->code = td_rpc_call_stream(c, "/grpc.health.v1.Health/Watch", &req.base,
                               &grpc__health__v1__health_check_response__descriptor, watch_message,
                               w, 30, &w->st);
  td_rpc_client_close(c);
}

/* ---- the checks */

static void test_unary(fixture *fx, const char *target, const char *peer_prefix) {
  td_rpc_client *c = td_rpc_client_open(target);
  CHECK(c != NULL, "client for %s", target);
  Traind__V1__Job *job = NULL;
  td_rpc_status st;
  int before = atomic_load(&fx->unary_calls);
  int code = get_job(c, "job-42", &job, 5, &st);
  CHECK(code == TD_GRPC_OK, "GetJob over %s: %d %s", target, code, st.message);
  CHECK(job && strcmp(job->id, "job-42") == 0 && strcmp(job->name, "echo") == 0 &&
            job->state == TRAIND__V1__JOB_STATE__RUNNING,
        "echoed job over %s", target);
  CHECK(atomic_load(&fx->unary_calls) == before + 1, "handler ran once");
  if (job)
    protobuf_c_message_free_unpacked(&job->base, NULL);
  uv_mutex_lock(&fx->mu);
  CHECK(strncmp(fx->last_peer, peer_prefix, strlen(peer_prefix)) == 0,
        "peer \"%s\" starts with \"%s\"", fx->last_peer, peer_prefix);
  CHECK(strcmp(fx->last_method, "/traind.v1.Trainer/GetJob") == 0, "method row %s",
        fx->last_method);
  uv_mutex_unlock(&fx->mu);

  /* A status and its message travel to the client unchanged. */
  Traind__V1__CancelJobRequest creq = TRAIND__V1__CANCEL_JOB_REQUEST__INIT;
  creq.id = "job-9";
  ProtobufCMessage *resp = NULL;
  code = td_rpc_call_unary(c, "/traind.v1.Trainer/CancelJob", &creq.base,
                           &traind__v1__job__descriptor, &resp, 5, &st);
  CHECK(code == TD_GRPC_NOT_FOUND && resp == NULL, "CancelJob: %d", code);
  CHECK(strcmp(st.message, "no job named \"job-9\"") == 0, "message \"%s\"", st.message);

  /* An answer given later, from a timer on the loop. */
  Traind__V1__GetJobRequest lreq = TRAIND__V1__GET_JOB_REQUEST__INIT;
  lreq.id = "slow";
  double t0 = td_mono_sec();
  code = td_rpc_call_unary(c, "/traind.test.Echo/GetJobLater", &lreq.base,
                           &traind__v1__job__descriptor, &resp, 5, &st);
  double dt = td_mono_sec() - t0;
  CHECK(code == TD_GRPC_OK, "GetJobLater: %d %s", code, st.message);
  job = (Traind__V1__Job *)resp;
  CHECK(job && strcmp(job->id, "slow") == 0 && strcmp(job->name, "later") == 0,
        "late answer carries the request's id");
  CHECK(dt >= LATER_MS * 1e-3 * 0.9 && dt < PROMPT_SEC, "late answer after %.3f s", dt);
  if (resp)
    protobuf_c_message_free_unpacked(resp, NULL);
  td_rpc_client_close(c);
}

/* Requests just under `limit` are served; one over it is refused with
 * RESOURCE_EXHAUSTED and never reaches the handler. */
static void check_size_limit(fixture *fx, td_rpc_client *c, size_t limit) {
  size_t under = limit - 1024, over = limit + 1024;
  char *id = malloc(over + 1);
  memset(id, 'x', over);
  id[under] = '\0';
  Traind__V1__Job *job = NULL;
  td_rpc_status st;
  int code = get_job(c, id, &job, 30, &st);
  CHECK(code == TD_GRPC_OK, "request of %zu bytes under a %zu limit: %d %s", under, limit, code,
        st.message);
  CHECK(job && strlen(job->id) == under, "large id echoed");
  if (job)
    protobuf_c_message_free_unpacked(&job->base, NULL);
  int before = atomic_load(&fx->unary_calls);
  id[under] = 'x';
  id[over] = '\0';
  code = get_job(c, id, &job, 30, &st);
  CHECK(code == TD_GRPC_RESOURCE_EXHAUSTED && job == NULL, "request over a %zu limit: %d %s", limit,
        code, st.message);
  CHECK(atomic_load(&fx->unary_calls) == before, "oversized request not handled");
  free(id);
}

static void test_bad_requests(fixture *fx, size_t max_request) {
  td_rpc_client *c = td_rpc_client_open(fx->unix_addr);
  td_rpc_status st;
  int before = atomic_load(&fx->unary_calls);

  Traind__V1__GetJobRequest req = TRAIND__V1__GET_JOB_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  int code = td_rpc_call_unary(c, "/traind.v1.Trainer/NoSuchMethod", &req.base,
                               &traind__v1__job__descriptor, &resp, 5, &st);
  CHECK(code == TD_GRPC_UNIMPLEMENTED, "unknown method: %d %s", code, st.message);
  CHECK_STR_CONTAINS(st.message, "/traind.v1.Trainer/NoSuchMethod");

  /* 0xff is field 31 with wire type 7, which does not exist. */
  static const unsigned char garbage[] = {0xff, 0xff, 0xff, 0xff, 0x01};
  code = td_rpc_call_raw(c, "/traind.v1.Trainer/GetJob", garbage, sizeof garbage, 5, &st);
  CHECK(code == TD_GRPC_INVALID_ARGUMENT, "garbage: %d %s", code, st.message);
  CHECK_STR_CONTAINS(st.message, "traind.v1.GetJobRequest");

  /* A truncated message: field 1 claims 10 bytes and has 2. */
  static const unsigned char truncated[] = {0x0a, 0x0a, 'a', 'b'};
  code = td_rpc_call_raw(c, "/traind.v1.Trainer/GetJob", truncated, sizeof truncated, 5, &st);
  CHECK(code == TD_GRPC_INVALID_ARGUMENT, "truncated: %d %s", code, st.message);

  /* No message at all: the client half-closes at once. */
  code = td_rpc_call_raw(c, "/traind.v1.Trainer/GetJob", NULL, 0, 5, &st);
  CHECK(code == TD_GRPC_INVALID_ARGUMENT, "no message: %d %s", code, st.message);
  CHECK_STR_CONTAINS(st.message, "no request message");
  CHECK(atomic_load(&fx->unary_calls) == before, "no handler saw a bad request (%d calls)",
        atomic_load(&fx->unary_calls) - before);

  /* An empty message is a valid GetJobRequest with every field default. */
  static const unsigned char empty[1] = {0};
  code = td_rpc_call_raw(c, "/traind.v1.Trainer/GetJob", empty, 0, 5, &st);
  CHECK(code == TD_GRPC_OK, "empty message: %d %s", code, st.message);
  CHECK(atomic_load(&fx->unary_calls) == before + 1, "empty request handled");

  /* The size limit is enforced by gRPC itself, before any handler. */
  check_size_limit(fx, c, max_request);

  /* The connection survives all of the above. */
  Traind__V1__Job *job = NULL;
  code = get_job(c, "after", &job, 5, &st);
  CHECK(code == TD_GRPC_OK && job && strcmp(job->id, "after") == 0, "call after bad ones: %d %s",
        code, st.message);
  if (job)
    protobuf_c_message_free_unpacked(&job->base, NULL);
  td_rpc_client_close(c);
}

static void test_streams(fixture *fx, const char *target) {
  /* All messages in order, then OK. */
  int finished = atomic_load(&fx->streams_finished);
  int cancels = atomic_load(&fx->stream_cancels);
  stream_run r = {.target = target, .n = 50, .timeout = 10};
  stream_thread(&r);
  CHECK(r.code == TD_GRPC_OK, "stream over %s: %d %s", target, r.code, r.st.message);
  CHECK(r.got == 50 && r.in_order, "stream: %d messages, in order %d", r.got, r.in_order);
  CHECK(atomic_load(&fx->streams_finished) == finished + 1, "stream finished");
  CHECK(wait_no_calls(fx, WAIT_SEC), "finished stream released");
  CHECK(atomic_load(&fx->stream_cancels) == cancels, "no cancel callback after a normal finish");

  /* The client stops after 5 messages of an endless stream. */
  r = (stream_run){.target = target, .n = 0, .stop_after = 5, .timeout = 10};
  stream_thread(&r);
  CHECK(r.code == TD_GRPC_CANCELLED, "client cancel: %d %s", r.code, r.st.message);
  CHECK(r.got == 5 && r.in_order, "5 messages before the cancel (%d)", r.got);
  CHECK(r.elapsed < PROMPT_SEC, "cancelled stream returned after %.2f s", r.elapsed);
  CHECK(wait_atomic_at_least(&fx->stream_cancels, cancels + 1, WAIT_SEC), "server saw the cancel");
  CHECK(wait_no_calls(fx, WAIT_SEC), "cancelled stream released (%zu calls left)", live_calls(fx));
  cancels = atomic_load(&fx->stream_cancels);

  /* A deadline ends an endless stream on both sides. */
  r = (stream_run){.target = target, .n = 0, .timeout = 0.3};
  stream_thread(&r);
  CHECK(r.code == TD_GRPC_DEADLINE_EXCEEDED, "deadline: %d %s", r.code, r.st.message);
  CHECK(r.got > 10 && r.in_order, "messages before the deadline: %d", r.got);
  CHECK(r.elapsed > 0.25 && r.elapsed < PROMPT_SEC, "deadline hit after %.3f s", r.elapsed);
  CHECK(wait_atomic_at_least(&fx->stream_cancels, cancels + 1, WAIT_SEC),
        "server saw the deadline");
  CHECK(wait_no_calls(fx, WAIT_SEC), "expired stream released");
  CHECK(atomic_load(&fx->stream_cancels) == cancels + 1, "cancel callback ran exactly once");
}

static int health_check(fixture *fx, const char *service, td_rpc_status *st) {
  td_rpc_client *c = td_rpc_client_open(fx->tcp_addr);
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  ProtobufCMessage *resp = NULL;
  int code = td_rpc_call_unary(c, "/grpc.health.v1.Health/Check", &req.base,
                               &grpc__health__v1__health_check_response__descriptor, &resp, 5, st);
  int status = -1;
  if (code == TD_GRPC_OK)
    status = (int)((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
  if (resp)
    protobuf_c_message_free_unpacked(resp, NULL);
  td_rpc_client_close(c);
  return code == TD_GRPC_OK ? status : -100 - code;
}

static void test_health(fixture *fx) {
  td_rpc_status st;
  int s = health_check(fx, "", &st);
  CHECK(s == TD_HEALTH_SERVING, "overall status %d", s);
  s = health_check(fx, "traind.v1.Trainer", &st);
  CHECK(s == TD_HEALTH_NOT_SERVING, "Trainer status %d", s);
  s = health_check(fx, "no.such.Service", &st);
  CHECK(s == -100 - TD_GRPC_NOT_FOUND, "unknown service: %d", s);
  CHECK(strcmp(st.message, "unknown service") == 0, "message \"%s\"", st.message);

  /* Watch sees the current status, then the change. */
  watch_run w = {.target = fx->unix_addr, .service = "traind.v1.Trainer", .stop_after = 2};
  uv_thread_t th;
  uv_thread_create(&th, watch_thread, &w);
  CHECK(wait_atomic_at_least(&w.n, 1, WAIT_SEC), "first watch message");
  health_set(fx, "traind.v1.Trainer", TD_HEALTH_SERVING);
  uv_thread_join(&th);
  CHECK(atomic_load(&w.n) == 2 && w.statuses[0] == TD_HEALTH_NOT_SERVING &&
            w.statuses[1] == TD_HEALTH_SERVING,
        "watch saw NOT_SERVING then SERVING (%d messages: %d %d)", atomic_load(&w.n), w.statuses[0],
        w.statuses[1]);
  CHECK(w.code == TD_GRPC_CANCELLED, "watch ended by the client: %d", w.code);
  s = health_check(fx, "traind.v1.Trainer", &st);
  CHECK(s == TD_HEALTH_SERVING, "Check after the change: %d", s);

  /* An unknown service watches as SERVICE_UNKNOWN until it appears. */
  w = (watch_run){.target = fx->tcp_addr, .service = "later.Service", .stop_after = 2};
  uv_thread_create(&th, watch_thread, &w);
  CHECK(wait_atomic_at_least(&w.n, 1, WAIT_SEC), "first watch message");
  health_set(fx, "traind.v1.Trainer", TD_HEALTH_NOT_SERVING); /* not watched */
  health_set(fx, "later.Service", TD_HEALTH_SERVING);
  uv_thread_join(&th);
  CHECK(atomic_load(&w.n) == 2 && w.statuses[0] == TD_HEALTH_SERVICE_UNKNOWN &&
            w.statuses[1] == TD_HEALTH_SERVING,
        "watch of a new service: %d messages: %d %d", atomic_load(&w.n), w.statuses[0],
        w.statuses[1]);
  CHECK(wait_no_calls(fx, WAIT_SEC), "watch streams released");
}

typedef struct load_run {
  const char *target;
  int index, calls, ok;
} load_run;

static void load_thread(void *arg) {
  load_run *r = arg;
  td_rpc_client *c = td_rpc_client_open(r->target);
  for (int i = 0; i < r->calls; i++) {
    char id[32];
    snprintf(id, sizeof id, "t%d-%d", r->index, i);
    Traind__V1__Job *job = NULL;
    td_rpc_status st;
    if (get_job(c, id, &job, 10, &st) == TD_GRPC_OK && job && strcmp(job->id, id) == 0)
      r->ok++;
    else if (r->ok == i)
      fprintf(stderr, "load %s: call %d: %d %s\n", r->target, i, st.code, st.message);
    if (job)
      protobuf_c_message_free_unpacked(&job->base, NULL);
  }
  td_rpc_client_close(c);
}

static void test_load(fixture *fx) {
  enum { THREADS = 32, CALLS = 200 };
  load_run runs[THREADS];
  uv_thread_t th[THREADS];
  int before = atomic_load(&fx->unary_calls);
  double t0 = td_mono_sec();
  for (int i = 0; i < THREADS; i++) {
    runs[i] = (load_run){i % 2 ? fx->tcp_addr : fx->unix_addr, i, CALLS, 0};
    uv_thread_create(&th[i], load_thread, &runs[i]);
  }
  int ok = 0;
  for (int i = 0; i < THREADS; i++) {
    uv_thread_join(&th[i]);
    ok += runs[i].ok;
  }
  double dt = td_mono_sec() - t0;
  CHECK(ok == THREADS * CALLS, "%d of %d concurrent calls succeeded", ok, THREADS * CALLS);
  CHECK(atomic_load(&fx->unary_calls) == before + THREADS * CALLS, "handler ran %d times",
        atomic_load(&fx->unary_calls) - before);
  printf("load: %d threads x %d unary calls in %.2f s (%.0f calls/s)\n", THREADS, CALLS, dt,
         THREADS * CALLS / dt);
  CHECK(wait_no_calls(fx, WAIT_SEC), "every call released");
}

static void test_unreachable(void) {
  char target[300], want[400];
  snprintf(target, sizeof target, "unix:%s/nobody/here.sock", tmpdir);
  td_rpc_client *c = td_rpc_client_open(target);
  Traind__V1__Job *job = NULL;
  td_rpc_status st;
  double t0 = td_mono_sec();
  int code = get_job(c, "x", &job, 10, &st);
  double dt = td_mono_sec() - t0;
  printf("unreachable: %s\n", st.message);
  CHECK(code == TD_GRPC_UNAVAILABLE, "unreachable unix: %d %s", code, st.message);
  snprintf(want, sizeof want, "cannot reach traind at %s: ", target);
  CHECK(strncmp(st.message, want, strlen(want)) == 0, "\"%s\" names the target", st.message);
  CHECK(dt < PROMPT_SEC, "unreachable unix target failed after %.2f s", dt);
  td_rpc_client_close(c);

  /* A TCP port that nobody listens on: bound here and released. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  bind(fd, (struct sockaddr *)&sa, sizeof sa);
  getsockname(fd, (struct sockaddr *)&sa, &len);
  close(fd);
  snprintf(target, sizeof target, "127.0.0.1:%d", ntohs(sa.sin_port));
  c = td_rpc_client_open(target);
  t0 = td_mono_sec();
  code = get_job(c, "x", &job, 10, &st);
  dt = td_mono_sec() - t0;
  printf("unreachable: %s\n", st.message);
  CHECK(code == TD_GRPC_UNAVAILABLE, "unreachable tcp: %d %s", code, st.message);
  snprintf(want, sizeof want, "cannot reach traind at %s: ", target);
  CHECK(strncmp(st.message, want, strlen(want)) == 0, "\"%s\" names the target", st.message);
  CHECK(dt < PROMPT_SEC, "unreachable tcp target failed after %.2f s", dt);
  td_rpc_client_close(c);
}

/* A start that must fail, on a private loop that never runs. */
static int start_fails(const char *const *listen, size_t n, td_error *err) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  td_health *h = td_health_new();
  td_rpc_method m[2];
  td_health_methods(h, m);
  td_rpc_server_opts opts = {.listen = listen, .n_listen = n, .methods = m, .n_methods = 2};
  td_rpc_server *s = NULL;
  int rc = td_rpc_server_start(&s, &loop, &opts, err);
  printf("refused: %s\n", err->msg);
  int closed = uv_loop_close(&loop);
  CHECK(closed == 0, "a failed start leaves no handle on the loop");
  td_health_free(h);
  return rc != TD_OK && s == NULL;
}

static void free_server(void *arg) { td_rpc_server_free(arg); }

static void test_addresses(fixture *fx) {
  struct stat st;
  CHECK(stat(fx->sock, &st) == 0 && S_ISSOCK(st.st_mode), "socket file %s", fx->sock);
  CHECK((st.st_mode & 07777) == 0660, "socket mode %o", st.st_mode & 07777);
  char dir[256];
  snprintf(dir, sizeof dir, "%s/run", tmpdir);
  CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0755,
        "socket directory created 0755 (%o)", st.st_mode & 07777);

  /* The unix socket of a live server is not taken over. */
  td_error err = {0};
  const char *a1[] = {fx->unix_addr};
  CHECK(start_fails(a1, 1, &err), "second server on %s fails", fx->unix_addr);
  CHECK_STR_CONTAINS(err.msg, fx->unix_addr);
  CHECK_STR_CONTAINS(err.msg, "listening");

  /* Nor its TCP port. */
  const char *a2[] = {fx->tcp_addr};
  CHECK(start_fails(a2, 1, &err), "second server on %s fails", fx->tcp_addr);
  CHECK_STR_CONTAINS(err.msg, fx->tcp_addr);
  CHECK_STR_CONTAINS(err.msg, "in use");

  /* A failure after another address was bound releases that one. */
  char partial[300];
  snprintf(partial, sizeof partial, "unix:%s/partial.sock", tmpdir);
  const char *a3[] = {partial, "127.0.0.1:0", fx->tcp_addr};
  CHECK(start_fails(a3, 3, &err), "partial start fails");
  CHECK_STR_CONTAINS(err.msg, fx->tcp_addr);
  const char *a4[] = {partial};
  uv_loop_t loop;
  uv_loop_init(&loop);
  td_rpc_server *s = NULL;
  td_rpc_method m = {"/x.Y/Z",  TD_RPC_UNARY, &traind__v1__get_job_request__descriptor,
                     h_get_job, fx,           0};
  td_rpc_server_opts opts = {
      .listen = a4, .n_listen = 1, .methods = &m, .n_methods = 1, .unix_mode = 0600};
  int rc = td_rpc_server_start(&s, &loop, &opts, &err);
  CHECK(rc == TD_OK, "start on the released address: %s", err.msg);
  snprintf(dir, sizeof dir, "%s/partial.sock", tmpdir);
  CHECK(stat(dir, &st) == 0 && (st.st_mode & 07777) == 0600, "unix_mode 0600 applied (%o)",
        st.st_mode & 07777);
  if (rc == TD_OK) {
    td_rpc_server_shutdown(s, free_server, s);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  CHECK(uv_loop_close(&loop) == 0, "idle server shut down on its loop");

  /* A path that is not a socket is left alone. */
  char file[256];
  snprintf(file, sizeof file, "%s/plain-file", tmpdir);
  FILE *f = fopen(file, "w");
  fputs("keep me\n", f);
  fclose(f);
  char addr[300];
  snprintf(addr, sizeof addr, "unix:%s", file);
  const char *a5[] = {addr};
  CHECK(start_fails(a5, 1, &err), "start on a plain file fails");
  CHECK_STR_CONTAINS(err.msg, "not a socket");
  CHECK(stat(file, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 8,
        "the plain file is untouched");

  const char *a6[] = {"256.1.1.1:1"};
  CHECK(start_fails(a6, 1, &err), "start on a bad host fails: %s", err.msg);
  CHECK_STR_CONTAINS(err.msg, "256.1.1.1:1");

  /* The live server still answers on both addresses. */
  test_unary(fx, fx->unix_addr, "unix:");
}

typedef struct {
  const char *target;
  int code;
} later_run;

static void later_thread(void *arg) {
  later_run *lr = arg;
  td_rpc_client *c = td_rpc_client_open(lr->target);
  Traind__V1__GetJobRequest req = TRAIND__V1__GET_JOB_REQUEST__INIT;
  req.id = "pending";
  ProtobufCMessage *resp = NULL;
  td_rpc_status st;
  lr->code = td_rpc_call_unary(c, "/traind.test.Echo/GetJobLater", &req.base,
                               &traind__v1__job__descriptor, &resp, 10, &st);
  if (resp)
    protobuf_c_message_free_unpacked(resp, NULL);
  td_rpc_client_close(c);
}

/* Leaves a socket file whose owner is gone, as a killed daemon does. */
static void make_stale_socket(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t len = strlen(path);
  CHECK(len < sizeof sa.sun_path, "socket path %s fits", path);
  memcpy(sa.sun_path, path, len < sizeof sa.sun_path ? len + 1 : 0);
  CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "bind %s: %s", path, strerror(errno));
  close(fd);
}

static void test_stale_and_shutdown(void) {
  char sock[256];
  snprintf(sock, sizeof sock, "%s/stale.sock", tmpdir);
  make_stale_socket(sock);
  struct stat st;
  CHECK(stat(sock, &st) == 0 && S_ISSOCK(st.st_mode), "stale socket exists");

  fixture fx;
  if (fixture_start(&fx, sock, 0) != TD_OK)
    return;
  td_rpc_client *c = td_rpc_client_open(fx.unix_addr);
  Traind__V1__Job *job = NULL;
  td_rpc_status rs;
  int code = get_job(c, "over-stale", &job, 5, &rs);
  CHECK(code == TD_GRPC_OK && job && strcmp(job->id, "over-stale") == 0,
        "server on a replaced stale socket: %d %s", code, rs.message);
  if (job)
    protobuf_c_message_free_unpacked(&job->base, NULL);
  /* Without max_request_bytes the limit is 4 MiB. */
  check_size_limit(&fx, c, 4u << 20);
  td_rpc_client_close(c);

  /* Open: an endless stream, a health watch, and a unary call whose answer
   * is still on a timer. */
  stream_run r = {.target = fx.tcp_addr, .n = 0, .timeout = 30};
  watch_run w = {.target = fx.unix_addr, .service = ""};
  uv_thread_t ts, tw, tl;
  uv_thread_create(&ts, stream_thread, &r);
  uv_thread_create(&tw, watch_thread, &w);
  CHECK(wait_atomic_at_least(&r.messages, 3, WAIT_SEC), "stream running");
  CHECK(wait_atomic_at_least(&w.n, 1, WAIT_SEC), "watch running");

  later_run lr = {fx.unix_addr, -1};
  uv_thread_create(&tl, later_thread, &lr);
  CHECK(wait_atomic_at_least(&fx.later_started, 1, WAIT_SEC), "late call pending");

  /* Health goes first (as in the daemon): watchers hear NOT_SERVING and the
   * stream ends UNAVAILABLE. */
  on_loop(&fx, stop_health, &fx);
  uv_thread_join(&tw);
  CHECK(atomic_load(&w.n) == 2 && w.statuses[0] == TD_HEALTH_SERVING &&
            w.statuses[1] == TD_HEALTH_NOT_SERVING,
        "watch heard the shutdown (%d messages)", atomic_load(&w.n));
  CHECK(w.code == TD_GRPC_UNAVAILABLE, "watch ended %d %s", w.code, w.st.message);
  /* A server's own UNAVAILABLE is passed on as is, not as unreachable. */
  CHECK(strcmp(w.st.message, "the server is shutting down") == 0, "watch end message \"%s\"",
        w.st.message);

  int cancels = atomic_load(&fx.stream_cancels);
  fixture_stop(&fx);
  CHECK(atomic_load(&fx.stream_cancels) == cancels + 1, "the open stream got its cancel callback");
  uv_thread_join(&ts);
  uv_thread_join(&tl);
  CHECK(r.code != TD_GRPC_OK && r.got >= 3, "stream ended by shutdown: %d %s", r.code,
        r.st.message);
  /* Calls get a grace period to finish: the pending unary call (answered
   * 100 ms later) completes normally; the endless stream is cancelled. */
  CHECK(lr.code == TD_GRPC_OK, "pending unary call answered within the grace: %d", lr.code);
}

/* Request strings that are not UTF-8 are refused before any handler, with
 * the field's path and the first bad byte. */
static void test_utf8_requests(fixture *fx) {
  td_rpc_client *c = td_rpc_client_open(fx->unix_addr);
  td_rpc_status st;
  int before = atomic_load(&fx->unary_calls);
  static const struct {
    const char *id, *want;
  } rows[] = {
      {"job\xff", "id: not valid UTF-8 (byte 0xff at offset 3)"},
      {"\xc0\xaf", "id: not valid UTF-8 (byte 0xc0 at offset 0)"},         /* overlong '/' */
      {"ab\xed\xa0\x80", "id: not valid UTF-8 (byte 0xed at offset 2)"},   /* U+D800 */
      {"\xf4\x90\x80\x80", "id: not valid UTF-8 (byte 0xf4 at offset 0)"}, /* U+110000 */
      {"cut\xe2\x82", "id: not valid UTF-8 (byte 0xe2 at offset 3)"},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    Traind__V1__Job *job = NULL;
    int code = get_job(c, rows[i].id, &job, 5, &st);
    CHECK(code == TD_GRPC_INVALID_ARGUMENT && job == NULL, "row %zu: %d %s", i, code, st.message);
    CHECK(strcmp(st.message, rows[i].want) == 0, "row %zu: \"%s\", want \"%s\"", i, st.message,
          rows[i].want);
    if (job)
      protobuf_c_message_free_unpacked(&job->base, NULL);
  }
  CHECK(atomic_load(&fx->unary_calls) == before, "no handler saw a string that is not UTF-8");
  /* Nested: a WatchMetrics request is checked the same way (a stream). */
  Traind__V1__Job *job = NULL;
  int code = get_job(c, "caf\xc3\xa9 \xf0\x9f\x98\x80", &job, 5, &st);
  CHECK(code == TD_GRPC_OK && job && strcmp(job->id, "caf\xc3\xa9 \xf0\x9f\x98\x80") == 0,
        "valid UTF-8 passes: %d %s", code, st.message);
  if (job)
    protobuf_c_message_free_unpacked(&job->base, NULL);
  td_rpc_client_close(c);
}

static void query_connections(void *arg) {
  void **a = arg;
  *(size_t *)a[1] = td_rpc_server_connections(a[0]);
}

static size_t open_connections(fixture *fx) {
  size_t n = 0;
  void *a[2] = {fx->srv, &n};
  on_loop(fx, query_connections, a);
  return n;
}

static int tcp_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* max_connections: idle connections beyond it are closed at once, the ones
 * open keep working, and a slot freed by a client that leaves is taken by
 * the next one. */
static void test_connection_limit(void) {
  enum { LIMIT = 6 };
  char sock[256];
  snprintf(sock, sizeof sock, "%s/limit.sock", tmpdir);
  fixture fx;
  fixture_max_connections = LIMIT;
  int rc = fixture_start(&fx, sock, 0);
  fixture_max_connections = 0;
  if (rc != TD_OK)
    return;
  int port = td_rpc_server_port(fx.srv, 1);
  /* A working client first: its connection is one of the six. */
  td_rpc_client *c = td_rpc_client_open(fx.tcp_addr);
  Traind__V1__Job *job = NULL;
  td_rpc_status st;
  int code = get_job(c, "first", &job, 5, &st);
  CHECK(code == TD_GRPC_OK, "first client: %d %s", code, st.message);
  if (job)
    protobuf_c_message_free_unpacked(&job->base, NULL);
  /* Idle TCP connections that never speak HTTP/2 fill the rest, and more. */
  int idle[LIMIT + 4];
  for (int i = 0; i < LIMIT + 4; i++)
    idle[i] = tcp_connect(port);
  double end = td_mono_sec() + 5;
  while (open_connections(&fx) < LIMIT && td_mono_sec() < end)
    sleep_ms(5);
  CHECK(open_connections(&fx) == LIMIT, "%zu connections open, limit %d", open_connections(&fx),
        LIMIT);
  /* The four beyond the limit were closed by the server: they read EOF. */
  int closed = 0;
  for (int i = 0; i < LIMIT + 4; i++) {
    struct timeval tv = {0, 200000};
    setsockopt(idle[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char b;
    if (recv(idle[i], &b, 1, 0) == 0) {
      closed++;
      close(idle[i]);
      idle[i] = -1;
    }
  }
  CHECK(closed == 5, "%d connections beyond the limit closed, want 5", closed);
  /* A new client is refused (UNAVAILABLE), the old one still works. (The
   * unix socket: gRPC shares one connection between channels to the same
   * target in a process.) */
  td_rpc_client *c2 = td_rpc_client_open(fx.unix_addr);
  code = get_job(c2, "refused", &job, 2, &st);
  CHECK(code == TD_GRPC_UNAVAILABLE || code == TD_GRPC_DEADLINE_EXCEEDED,
        "a connection beyond the limit: %d %s", code, st.message);
  td_rpc_client_close(c2);
  code = get_job(c, "still", &job, 5, &st);
  CHECK(code == TD_GRPC_OK && job && strcmp(job->id, "still") == 0,
        "the open connection keeps working: %d %s", code, st.message);
  if (job)
    protobuf_c_message_free_unpacked(&job->base, NULL);
  /* Idle connections leave; a new client gets in. */
  for (int i = 0; i < LIMIT + 4; i++)
    if (idle[i] >= 0)
      close(idle[i]);
  end = td_mono_sec() + 5;
  while (open_connections(&fx) > 1 && td_mono_sec() < end)
    sleep_ms(5);
  CHECK(open_connections(&fx) == 1, "%zu connections after the idle ones left",
        open_connections(&fx));
  /* (A client refused a moment ago backs off before it connects again.) */
  end = td_mono_sec() + 10;
  do {
    c2 = td_rpc_client_open(fx.unix_addr);
    code = get_job(c2, "later", &job, 2, &st);
    if (job)
      protobuf_c_message_free_unpacked(&job->base, NULL);
    job = NULL;
    td_rpc_client_close(c2);
  } while (code != TD_GRPC_OK && td_mono_sec() < end);
  CHECK(code == TD_GRPC_OK, "a client after the idle ones left: %d %s", code, st.message);
  td_rpc_client_close(c);
  fixture_stop(&fx);
}

int main(void) {
  signal(SIGALRM, on_alarm);
  alarm(240);
  umask(022);
  snprintf(tmpdir, sizeof tmpdir, "/tmp/td-rpc-XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  char sock[300];
  snprintf(sock, sizeof sock, "%s/run/sub/traind.sock", tmpdir);

  fixture fx;
  if (fixture_start(&fx, sock, 2u << 20) != TD_OK)
    return td_check_exit();
  test_unary(&fx, fx.unix_addr, "unix:");
  test_unary(&fx, fx.tcp_addr, "ipv4:127.0.0.1:");
  test_bad_requests(&fx, 2u << 20);
  test_utf8_requests(&fx);
  test_streams(&fx, fx.unix_addr);
  test_streams(&fx, fx.tcp_addr);
  test_health(&fx);
  test_addresses(&fx);
  test_unreachable();
  test_load(&fx);
  CHECK(live_calls(&fx) == 0, "no call left before shutdown");
  fixture_stop(&fx);
  struct stat st;
  CHECK(stat(sock, &st) != 0 && errno == ENOENT, "socket file removed at shutdown");

  test_stale_and_shutdown();
  test_connection_limit();

  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmpdir);
  return td_check_exit();
}
