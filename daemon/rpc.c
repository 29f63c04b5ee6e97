/* The daemon's gRPC server on the gRPC C core API (see rpc.h).
 *
 * Every completion-queue tag points at an rpc_tag inside a call object (or
 * at the server's shutdown tag). The rpc thread only moves {tag, ok} pairs
 * from the completion queue into the server's inbox; the loop thread drains
 * the inbox and runs each tag's `done`, so all call state, and every
 * grpc_call_start_batch, belongs to the loop thread.
 *
 * A call object lives until its reference count drops to zero: one
 * reference per batch in flight plus one held by whoever must still answer
 * the call (the dispatcher until the handler runs, then the application
 * until td_rpc_reply, td_rpc_fail or td_rpc_finish). */
#include "rpc.h"
#include "log.h"
#include "pbgrpc.h"
#include "pbjson.h"
#include "rpc_tls.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Requests kept armed in gRPC so that calls arriving together need not wait
 * for the loop to re-arm. */
#define RPC_ARMED 8
#define RPC_DEFAULT_MAX_REQUEST (4u << 20)
#define RPC_DEFAULT_UNIX_MODE 0660
#define RPC_DEFAULT_MAX_CONNECTIONS 512
/* Streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): each
 * holds at most a bounded buffer (rpc.h), so this bounds a connection. */
#define RPC_MAX_STREAMS_PER_CONNECTION 256
/* A stream whose messages waiting behind the write in flight pass this is
 * cancelled: its client is not reading (producers in the daemon keep at
 * most one waiting, see td_rpc_pending). */
#define RPC_STREAM_QUEUE_MAX ((size_t)16 << 20)
/* After streams that moved this much in all have ended, freed memory is
 * returned to the system (malloc_trim) a second later. */
#define RPC_TRIM_AFTER_BYTES ((size_t)1 << 20)

typedef struct rpc_tag rpc_tag;
struct rpc_tag {
  void (*done)(rpc_tag *t, int ok);
  td_rpc_call *call; /* NULL for the server's shutdown tag */
};

/* One completion handed from the rpc thread to the loop. A NULL tag says
 * the completion queue is shut down and the rpc thread has returned. */
typedef struct rpc_event {
  rpc_tag *tag;
  int ok;
} rpc_event;

/* A stream message waiting for the write in flight to complete. */
typedef struct rpc_msg {
  grpc_byte_buffer *bb;
  size_t bytes;
  struct rpc_msg *next;
} rpc_msg;

/* A listening socket of ours (one address may have several). */
typedef struct rpc_listener {
  td_rpc_server *srv;
  uv_poll_t poll;
  int poll_inited, polling;
  int fd;
  size_t index;    /* into the listen addresses */
  char *unix_path; /* removed at shutdown; NULL for TCP */
} rpc_listener;

/* An accepted connection handed to gRPC: its descriptor, which socket that
 * was (gRPC closes the descriptor when the connection ends), and the
 * client's address. */
typedef struct rpc_conn {
  int fd;
  ino_t ino;
  dev_t dev;
  char peer[80];
  size_t index; /* into the listen addresses */
  td_rpc_transport transport;
  unsigned uid; /* unix sockets: the peer's user (has_uid) */
  int has_uid;
} rpc_conn;

struct td_rpc_call {
  td_rpc_server *srv;
  td_rpc_call *prev, *next; /* the server's list of live calls */
  const td_rpc_method *method;

  /* Filled in by grpc_server_request_call. */
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array request_md;

  char *peer;         /* gpr_malloc'd by grpc_call_get_peer */
  char peer_name[80]; /* the address accepted, when gRPC says only "fd:N" */
  char *ident;        /* td_rpc_set_identity */
  int ident_tag;
  grpc_byte_buffer *request_bb;
  ProtobufCMessage *request; /* unpacked with method->request */
  grpc_byte_buffer *reply_bb;
  grpc_slice status_details;
  int has_status_details;

  /* One tag per kind of batch; gRPC allows one op of each type at once. */
  rpc_tag t_new, t_recv, t_send, t_close, t_status, t_cancel;
  int refs;
  int close_cancelled; /* RECV_CLOSE_ON_SERVER's out argument */
  int md_sent, close_armed;
  int answered;  /* the application has replied, failed or finished */
  int cancelled; /* the client is gone (cancel, deadline, shutdown) */
  int cancel_notified;
  void (*cancel_cb)(void *arg, td_rpc_call *c);
  void *cancel_arg;
  void (*drain_cb)(void *arg, td_rpc_call *c);
  void *drain_arg;
  uint64_t t0_ns; /* when the call arrived */
  int ended;      /* reported to on_end */

  /* Streams: the write in flight, the writes waiting behind it, and a
   * finish that waits for them. */
  grpc_byte_buffer *sending;
  rpc_msg *queue_head, *queue_tail;
  size_t n_queued, queued_bytes; /* behind the write in flight */
  size_t stream_bytes;           /* every message sent or queued */
  int finish_pending;
  int finish_status;
  char *finish_message;
};

struct td_rpc_server {
  grpc_server *server;
  grpc_completion_queue *cq;
  int grpc_inited;

  td_rpc_method *methods; /* one block: the rows, then their paths */
  size_t n_methods;
  char **listen; /* copies of the addresses, one block */
  int *ports;
  size_t n_listen;
  td_rpc_listen_opts *lopts; /* (n_listen); tls points nowhere: see tls */
  rpc_tls **tls;             /* (n_listen); NULL for plaintext addresses */
  td_rpc_authorize authorize;
  void *authorize_arg;

  /* rpc thread → loop */
  uv_thread_t thread;
  int thread_started;
  uv_async_t async;
  int async_inited;
  uv_mutex_t mu;
  int mu_inited;
  rpc_event *inbox; /* guarded by mu */
  size_t n_inbox, cap_inbox;
  rpc_event *work; /* the loop's drained copy */
  size_t cap_work;

  td_rpc_call *calls; /* every call object, armed requests included */
  size_t n_calls, n_armed;

  /* Our listening sockets and the connections accepted on them. */
  rpc_listener *listeners;
  size_t n_listeners;
  rpc_conn *conns;
  size_t n_conns, cap_conns, max_conns;
  unsigned long long refused;
  uint64_t refused_logged_ns;
  uv_timer_t accept_pause;
  int accept_pause_inited;
  /* Returns freed memory to the system after large streams end. */
  uv_timer_t trim;
  int trim_inited;
  size_t ended_bytes; /* streamed by calls released since the last trim */

  rpc_tag t_shutdown;
  int shutting_down, shutdown_tag_in, cq_shut;
  /* At shutdown, calls get this long to deliver what they have queued
   * (a stream's last messages and status) before they are cancelled. */
  uv_timer_t grace;
  int grace_inited;
  void (*done)(void *arg);
  void *done_arg;
  void (*on_end)(void *arg, const char *method, int code, double sec);
  void *on_end_arg;
};

/* ---- small helpers */

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
static int is_loopback(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
  if (ss->ss_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
  }
  return 0;
}

/* Called by the rpc thread (and by the loop for batches that gRPC refused
 * to start): queues a completion for the loop and wakes it. */
static void post_event(td_rpc_server *s, rpc_tag *tag, int ok) {
  uv_mutex_lock(&s->mu);
  if (s->n_inbox == s->cap_inbox) {
    size_t cap = s->cap_inbox ? 2 * s->cap_inbox : 64;
    rpc_event *p = realloc(s->inbox, cap * sizeof *p);
    if (!p) {
      /* A lost completion would leak a call and hang shutdown. */
      fprintf(stderr, "traind: rpc: out of memory queueing a completion\n");
      abort();
    }
    s->inbox = p;
    s->cap_inbox = cap;
  }
  s->inbox[s->n_inbox++] = (rpc_event){tag, ok};
  uv_mutex_unlock(&s->mu);
  uv_async_send(&s->async);
}

static void rpc_thread_main(void *arg) {
  td_rpc_server *s = arg;
#ifdef __linux__
  pthread_setname_np(pthread_self(), "td-rpc");
#endif
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) {
      post_event(s, NULL, 0);
      return;
    }
    if (ev.type == GRPC_OP_COMPLETE)
      post_event(s, ev.tag, ev.success);
  }
}

static const char *call_method_name(const td_rpc_call *c) {
  return c->method ? c->method->path : "(unknown method)";
}

static uint64_t mono_ns(void) { return uv_hrtime(); }

/* Reports a call's end once: its method, status and time since it came. */
static void report_end(td_rpc_call *c, int code) {
  td_rpc_server *s = c->srv;
  if (c->ended || !s->on_end)
    return;
  c->ended = 1;
  s->on_end(s->on_end_arg, c->method ? c->method->path : "unknown", code,
            (double)(mono_ns() - c->t0_ns) / 1e9);
}

/* ---- call lifetime */

static void maybe_finish_shutdown(td_rpc_server *s) {
  if (s->shutting_down && s->shutdown_tag_in && !s->calls && !s->cq_shut) {
    s->cq_shut = 1;
    grpc_completion_queue_shutdown(s->cq);
  }
}

static void drop_queue(td_rpc_call *c) {
  while (c->queue_head) {
    rpc_msg *m = c->queue_head;
    c->queue_head = m->next;
    grpc_byte_buffer_destroy(m->bb);
    free(m);
  }
  c->queue_tail = NULL;
  c->n_queued = c->queued_bytes = 0;
}

static void on_trim(uv_timer_t *t) {
  (void)t;
  malloc_trim(0);
}

static void call_release(td_rpc_call *c) {
  td_rpc_server *s = c->srv;
  /* The memory a large stream's buffers (and gRPC's for it) took would
   * otherwise stay with the process after a burst of them. */
  s->ended_bytes += c->stream_bytes;
  if (s->ended_bytes >= RPC_TRIM_AFTER_BYTES && s->trim_inited && !s->shutting_down &&
      !uv_is_active((uv_handle_t *)&s->trim)) {
    s->ended_bytes = 0;
    uv_timer_start(&s->trim, on_trim, 1000, 0);
  }
  if (c->prev)
    c->prev->next = c->next;
  else
    s->calls = c->next;
  if (c->next)
    c->next->prev = c->prev;
  s->n_calls--;

  if (c->request)
    protobuf_c_message_free_unpacked(c->request, NULL);
  if (c->request_bb)
    grpc_byte_buffer_destroy(c->request_bb);
  if (c->reply_bb)
    grpc_byte_buffer_destroy(c->reply_bb);
  if (c->sending)
    grpc_byte_buffer_destroy(c->sending);
  drop_queue(c);
  if (c->has_status_details)
    grpc_slice_unref(c->status_details);
  free(c->finish_message);
  free(c->ident);
  if (c->peer)
    gpr_free(c->peer);
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->request_md);
  if (c->call)
    grpc_call_unref(c->call);
  free(c);
  maybe_finish_shutdown(s);
}

static void call_unref(td_rpc_call *c) {
  if (--c->refs == 0)
    call_release(c);
}

/* Starts a batch that holds a reference until its tag completes. A batch
 * gRPC refuses completes as failed on the next loop turn, so that every
 * path through the state machine stays the same. */
static void start_batch(td_rpc_call *c, const grpc_op *ops, size_t n, rpc_tag *tag) {
  c->refs++;
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
  if (e != GRPC_CALL_OK) {
    fprintf(stderr, "traind: rpc: grpc_call_start_batch on %s failed: %s\n", call_method_name(c),
            grpc_call_error_to_string(e));
    post_event(c->srv, tag, 0);
  }
}

/* The last batch of a call: initial metadata unless already sent, the reply
 * message if any, the status, and RECV_CLOSE_ON_SERVER unless a stream
 * already has it in flight. */
static void send_final(td_rpc_call *c, int status, const char *message, grpc_byte_buffer *reply) {
  report_end(c, status);
  grpc_op ops[4];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  if (!c->md_sent) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
    c->md_sent = 1;
  }
  if (reply) {
    c->reply_bb = reply;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = reply;
    n++;
  }
  if (c->has_status_details)
    grpc_slice_unref(c->status_details);
  c->status_details = grpc_slice_from_copied_string(message ? message : "");
  c->has_status_details = 1;
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[n].data.send_status_from_server.status = (grpc_status_code)status;
  ops[n].data.send_status_from_server.status_details = &c->status_details;
  n++;
  if (!c->close_armed) {
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &c->close_cancelled;
    n++;
    c->close_armed = 1;
  }
  start_batch(c, ops, n, &c->t_status);
}

/* Answers a call that never reaches a handler, in place of the app. */
static void answer_early(td_rpc_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void answer_early(td_rpc_call *c, int status, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  c->answered = 1;
  if (!c->cancelled)
    send_final(c, status, msg, NULL);
  call_unref(c);
}

static void notify_cancel(td_rpc_call *c) {
  if (!c->answered)
    report_end(c, TD_GRPC_CANCELLED);
  if (c->answered || c->cancel_notified || !c->cancel_cb)
    return;
  c->cancel_notified = 1;
  c->cancel_cb(c->cancel_arg, c);
}

/* ---- completions */

static void on_status_done(rpc_tag *t, int ok) {
  (void)ok;
  call_unref(t->call);
}

static void on_close_done(rpc_tag *t, int ok) {
  td_rpc_call *c = t->call;
  if (!ok || c->close_cancelled) {
    c->cancelled = 1;
    drop_queue(c);
    notify_cancel(c);
  }
  call_unref(c);
}

static void on_cancel_deferred(rpc_tag *t, int ok) {
  (void)ok;
  notify_cancel(t->call);
  call_unref(t->call);
}

static void start_send(td_rpc_call *c, grpc_byte_buffer *bb) {
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = bb;
  c->sending = bb;
  start_batch(c, &op, 1, &c->t_send);
}

static void on_send_done(rpc_tag *t, int ok) {
  td_rpc_call *c = t->call;
  grpc_byte_buffer_destroy(c->sending);
  c->sending = NULL;
  if (!ok) {
    c->cancelled = 1;
    drop_queue(c);
  }
  if (!c->cancelled && c->queue_head) {
    rpc_msg *m = c->queue_head;
    c->queue_head = m->next;
    if (!c->queue_head)
      c->queue_tail = NULL;
    c->n_queued--;
    c->queued_bytes -= m->bytes;
    start_send(c, m->bb);
    free(m);
    /* Nothing waits behind this write now: a producer may queue the next. */
    if (!c->queue_head && !c->finish_pending && !c->answered && c->drain_cb)
      c->drain_cb(c->drain_arg, c);
  } else if (c->finish_pending) {
    c->finish_pending = 0;
    if (!c->cancelled)
      send_final(c, c->finish_status, c->finish_message, NULL);
  } else if (!c->cancelled && !c->answered && c->drain_cb) {
    /* The call holds a reference while the callback may send or finish. */
    c->drain_cb(c->drain_arg, c);
  }
  call_unref(c);
}

static void on_recv_done(rpc_tag *t, int ok) {
  td_rpc_call *c = t->call;
  const td_rpc_method *m = c->method;
  if (!ok) {
    /* The call broke before its request arrived; nobody will answer. */
    c->cancelled = 1;
    c->answered = 1;
    call_unref(c); /* the dispatcher's reference */
    call_unref(c); /* this batch's */
    return;
  }
  if (m->kind == TD_RPC_SERVER_STREAM) {
    /* Its completion is how a stream learns that the client went away. */
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    c->close_armed = 1;
    start_batch(c, &op, 1, &c->t_close);
  }
  if (!c->request_bb) {
    answer_early(c, TD_GRPC_INVALID_ARGUMENT, "%s: the client sent no request message", m->path);
  } else {
    char why[160];
    c->request = td_pbgrpc_unpack(m->request, c->request_bb, why, sizeof why);
    grpc_byte_buffer_destroy(c->request_bb);
    c->request_bb = NULL;
    td_error uerr = {0};
    if (!c->request)
      answer_early(c, TD_GRPC_INVALID_ARGUMENT, "request is not a valid %s%s%s", m->request->name,
                   why[0] ? ": " : "", why);
    else if (pbjson_check_utf8(c->request, NULL, &uerr) != TD_OK)
      /* proto3 strings are UTF-8; one that is not would come back in
       * replies that protobuf clients cannot parse. */
      answer_early(c, TD_GRPC_INVALID_ARGUMENT, "%s", uerr.msg);
    else
      m->handler(m->ctx, c, c->request);
  }
  call_unref(c);
}

static const td_rpc_method *find_method(const td_rpc_server *s, grpc_slice path) {
  for (size_t i = 0; i < s->n_methods; i++)
    if (grpc_slice_str_cmp(path, s->methods[i].path) == 0)
      return &s->methods[i];
  return NULL;
}

static void arm_request(td_rpc_server *s);
static const rpc_conn *conn_of(const td_rpc_call *c);

/* A copy of n bytes as a string (the bytes need not end in NUL, and are
 * never read past n). */
static char *dup_bytes(const char *p, size_t n) {
  char *s = malloc(n + 1);
  if (s) {
    memcpy(s, p, n);
    s[n] = 0;
  }
  return s;
}

/* A verified client certificate's name: its common name, else its first
 * subject alternative name; NULL without one. malloc'd. */
static char *cert_name_of(grpc_call *call) {
  grpc_auth_context *ctx = grpc_call_auth_context(call);
  if (!ctx)
    return NULL;
  char *name = NULL;
  if (grpc_auth_context_peer_is_authenticated(ctx)) {
    static const char *const props[] = {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME};
    for (size_t i = 0; i < 2 && !name; i++) {
      grpc_auth_property_iterator it = grpc_auth_context_find_properties_by_name(ctx, props[i]);
      const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
      if (p && p->value && p->value_length)
        name = dup_bytes(p->value, p->value_length);
    }
  }
  grpc_auth_context_release(ctx);
  return name;
}

/* The credential of an `authorization: Bearer CRED` header (malloc'd);
 * *bad when the header is there in another form or more than once. */
static char *bearer_of(const grpc_metadata_array *md, int *bad) {
  char *cred = NULL;
  int seen = 0;
  *bad = 0;
  for (size_t i = 0; i < md->count; i++) {
    if (grpc_slice_str_cmp(md->metadata[i].key, "authorization") != 0)
      continue;
    const grpc_slice v = md->metadata[i].value;
    const char *p = (const char *)GRPC_SLICE_START_PTR(v);
    size_t n = GRPC_SLICE_LENGTH(v);
    if (seen++ || n <= 7 || strncasecmp(p, "Bearer ", 7) != 0) {
      *bad = 1;
      continue;
    }
    cred = dup_bytes(p + 7, n - 7);
  }
  if (*bad) {
    free(cred);
    return NULL;
  }
  return cred;
}

/* Whether the call may reach its method: health-only listeners serve their
 * methods to anyone and nothing else; everything else goes through the
 * authorize callback. conn is the call's connection (conn_of). Answers a
 * refused call and returns 0. */
static int admit_call(td_rpc_call *c, const rpc_conn *conn) {
  td_rpc_server *s = c->srv;
  const int ours = c->peer && strncmp(c->peer, "fd:", 3) == 0;
  if (ours && !conn) {
    answer_early(c, TD_GRPC_UNAVAILABLE, "the connection closed");
    return 0;
  }
  if (conn && s->lopts[conn->index].health_only) {
    if (c->method->health)
      return 1;
    answer_early(c, TD_GRPC_UNIMPLEMENTED,
                 "%s: this address (%s) serves only grpc.health.v1.Health; call the API on a "
                 "listen address",
                 c->method->path, s->listen[conn->index]);
    return 0;
  }
  if (!s->authorize)
    return 1;
  td_rpc_caller who = {.transport = conn ? conn->transport : TD_RPC_TLS,
                       .uid = conn ? conn->uid : 0,
                       .has_uid = conn ? conn->has_uid : 0};
  char *cert = conn ? NULL : cert_name_of(c->call);
  char *bearer = bearer_of(&c->request_md, &who.bad_authorization);
  who.cert_name = cert;
  who.bearer = bearer;
  char why[512] = "";
  int code = s->authorize(s->authorize_arg, c, c->method, &who, why, sizeof why);
  if (bearer) {
    memset(bearer, 0, strlen(bearer));
    free(bearer);
  }
  free(cert);
  if (code == TD_GRPC_OK)
    return 1;
  answer_early(c, code, "%s", why[0] ? why : "the call is not allowed");
  return 0;
}

static void on_new_call(rpc_tag *t, int ok) {
  td_rpc_call *c = t->call;
  td_rpc_server *s = c->srv;
  s->n_armed--;
  if (!ok) {
    /* The server is shutting down; this request slot is no longer armed. */
    call_unref(c);
    return;
  }
  if (!s->shutting_down)
    arm_request(s);

  c->t0_ns = mono_ns();
  c->peer = grpc_call_get_peer(c->call);
  /* The connection it came on (NULL for one gRPC accepted itself): the
   * address recorded at accept replaces gRPC's "fd:N". */
  const rpc_conn *conn = conn_of(c);
  if (conn)
    snprintf(c->peer_name, sizeof c->peer_name, "%s", conn->peer);
  c->method = find_method(s, c->details.method);
  if (!c->method) {
    char *path = grpc_slice_to_c_string(c->details.method);
    answer_early(c, TD_GRPC_UNIMPLEMENTED, "unknown method %s", path);
    gpr_free(path);
    return;
  }
  if (!admit_call(c, conn))
    return;
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  if (c->method->kind == TD_RPC_SERVER_STREAM) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
    c->md_sent = 1;
  }
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n].data.recv_message.recv_message = &c->request_bb;
  n++;
  start_batch(c, ops, n, &c->t_recv);
}

static void arm_request(td_rpc_server *s) {
  td_rpc_call *c = calloc(1, sizeof *c);
  if (!c) {
    fprintf(stderr, "traind: rpc: out of memory arming a request\n");
    return;
  }
  c->srv = s;
  c->refs = 1;
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->request_md);
  rpc_tag *tags[] = {&c->t_new, &c->t_recv, &c->t_send, &c->t_close, &c->t_status, &c->t_cancel};
  for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
    tags[i]->call = c;
  c->t_new.done = on_new_call;
  c->t_recv.done = on_recv_done;
  c->t_send.done = on_send_done;
  c->t_close.done = on_close_done;
  c->t_status.done = on_status_done;
  c->t_cancel.done = on_cancel_deferred;

  c->next = s->calls;
  if (s->calls)
    s->calls->prev = c;
  s->calls = c;
  s->n_calls++;
  s->n_armed++;
  grpc_call_error e = grpc_server_request_call(s->server, &c->call, &c->details, &c->request_md,
                                               s->cq, s->cq, &c->t_new);
  if (e != GRPC_CALL_OK) {
    fprintf(stderr, "traind: rpc: grpc_server_request_call failed: %s\n",
            grpc_call_error_to_string(e));
    s->n_armed--;
    call_unref(c);
  }
}

static void on_server_shutdown(rpc_tag *t, int ok) {
  (void)ok;
  td_rpc_server *s = (td_rpc_server *)((char *)t - offsetof(td_rpc_server, t_shutdown));
  s->shutdown_tag_in = 1;
  maybe_finish_shutdown(s);
}

static void on_grace_closed(uv_handle_t *h) { (void)h; }

static void on_async_closed(uv_handle_t *h) {
  td_rpc_server *s = h->data;
  s->async_inited = 0;
  if (s->done)
    s->done(s->done_arg); /* may free s */
}

/* The rpc thread has returned: nothing of gRPC's is left but the server
 * and the queue themselves. */
static void finish_teardown(td_rpc_server *s) {
  uv_thread_join(&s->thread);
  s->thread_started = 0;
  grpc_server_destroy(s->server);
  s->server = NULL;
  grpc_completion_queue_destroy(s->cq);
  s->cq = NULL;
  if (s->grace_inited) {
    s->grace_inited = 0;
    uv_close((uv_handle_t *)&s->grace, on_grace_closed); /* closes before async */
  }
  if (s->trim_inited) {
    s->trim_inited = 0;
    uv_close((uv_handle_t *)&s->trim, on_grace_closed);
  }
  uv_close((uv_handle_t *)&s->async, on_async_closed);
}

static void on_async(uv_async_t *h) {
  td_rpc_server *s = h->data;
  for (;;) {
    uv_mutex_lock(&s->mu);
    rpc_event *batch = s->inbox;
    size_t n = s->n_inbox, cap = s->cap_inbox;
    s->inbox = s->work;
    s->cap_inbox = s->cap_work;
    s->n_inbox = 0;
    s->work = batch;
    s->cap_work = cap;
    uv_mutex_unlock(&s->mu);
    if (n == 0)
      return;
    for (size_t i = 0; i < n; i++) {
      if (!batch[i].tag) {
        /* The rpc thread's last word; nothing can follow it. */
        finish_teardown(s);
        return;
      }
      batch[i].tag->done(batch[i].tag, batch[i].ok);
    }
  }
}

/* ---- listening addresses */

/* The file path of a "unix:" address, or NULL for other schemes. */
static const char *unix_path_of(const char *addr) {
  if (strncmp(addr, "unix://", 7) == 0)
    return addr + 7;
  if (strncmp(addr, "unix:", 5) == 0)
    return addr + 5;
  return NULL;
}

static int make_parents(const char *addr, const char *path, td_error *err) {
  char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir)
    return TD_OK;
  *slash = '\0';
  for (char *p = dir + 1;; p++) {
    if (*p != '/' && *p != '\0')
      continue;
    char saved = *p;
    *p = '\0';
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
      return td_errorf(err, errno == EACCES ? TD_EPERM : TD_EIO,
                       "cannot listen on %s: mkdir %s: %s", addr, dir, strerror(errno));
    *p = saved;
    if (saved == '\0')
      return TD_OK;
  }
}

/* Makes room for a unix socket: its directory exists, and a socket file
 * left by a process that is gone is removed. One that answers is not. */
static int prepare_unix(const char *addr, const char *path, td_error *err) {
  struct sockaddr_un sa;
  if (!*path || strlen(path) >= sizeof sa.sun_path)
    return td_errorf(err, TD_EINVAL, "cannot listen on %s: a socket path must have 1 to %zu bytes",
                     addr, sizeof sa.sun_path - 1);
  int rc = make_parents(addr, path, err);
  if (rc)
    return rc;
  struct stat st;
  if (lstat(path, &st) != 0) {
    if (errno == ENOENT)
      return TD_OK;
    return td_errorf(err, TD_EIO, "cannot listen on %s: %s", addr, strerror(errno));
  }
  if (!S_ISSOCK(st.st_mode))
    return td_errorf(err, TD_EINVAL, "cannot listen on %s: %s exists and is not a socket", addr,
                     path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return td_errorf(err, TD_EIO, "cannot listen on %s: socket: %s", addr, strerror(errno));
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path) + 1);
  rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  int e = errno;
  close(fd);
  if (rc == 0)
    return td_errorf(err, TD_EIO,
                     "cannot listen on %s: another process is listening on it "
                     "(is traind already running?)",
                     addr);
  if (e != ECONNREFUSED)
    return td_errorf(err, e == EACCES ? TD_EPERM : TD_EIO,
                     "cannot listen on %s: probing the existing socket: %s", addr, strerror(e));
  if (unlink(path) != 0)
    return td_errorf(err, TD_EIO, "cannot listen on %s: removing the stale socket: %s", addr,
                     strerror(errno));
  return TD_OK;
}

/* ---- our own listeners
 *
 * The daemon accepts connections itself and hands each to gRPC
 * (grpc_server_add_channel_from_fd), so that it can count them: gRPC 1.51
 * has no limit on incoming connections, and idle ones would otherwise use
 * up the file descriptors every job and checkpoint needs. A connection
 * beyond max_connections is accepted and closed at once (the client sees
 * UNAVAILABLE); the ones already open keep working. */

/* Adds a listening socket for address i. */
static int push_listener(td_rpc_server *s, size_t i, int fd, const char *unix_path, td_error *err) {
  rpc_listener *nl = realloc(s->listeners, (s->n_listeners + 1) * sizeof *nl);
  if (!nl) {
    close(fd);
    return td_errorf(err, TD_ENOMEM, "out of memory starting the rpc server");
  }
  s->listeners = nl;
  rpc_listener *l = &s->listeners[s->n_listeners];
  memset(l, 0, sizeof *l);
  l->srv = s;
  l->fd = fd;
  l->index = i;
  if (unix_path && !(l->unix_path = strdup(unix_path))) {
    close(fd);
    return td_errorf(err, TD_ENOMEM, "out of memory starting the rpc server");
  }
  s->n_listeners++;
  return TD_OK;
}

static int listen_unix(td_rpc_server *s, size_t i, const char *addr, const char *path, int abstract,
                       int unix_mode, td_error *err) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t len = strlen(path);
  socklen_t salen;
  if (abstract) {
    if (len == 0 || len + 1 > sizeof sa.sun_path)
      return td_errorf(err, TD_EINVAL,
                       "cannot listen on %s: an abstract socket name has 1 to %zu bytes", addr,
                       sizeof sa.sun_path - 1);
    memcpy(sa.sun_path + 1, path, len);
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
  } else {
    int rc = prepare_unix(addr, path, err);
    if (rc)
      return rc;
    memcpy(sa.sun_path, path, len + 1);
    salen = (socklen_t)sizeof sa;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return td_errorf(err, TD_EIO, "cannot listen on %s: socket: %s", addr, strerror(errno));
  if (bind(fd, (struct sockaddr *)&sa, salen) != 0 || listen(fd, SOMAXCONN) != 0) {
    int e = errno;
    close(fd);
    return td_errorf(err, e == EACCES ? TD_EPERM : TD_EIO, "cannot listen on %s: %s", addr,
                     strerror(e));
  }
  if (!abstract && chmod(path, (mode_t)unix_mode) != 0) {
    int e = errno;
    close(fd);
    unlink(path);
    return td_errorf(err, TD_EIO, "cannot listen on %s: chmod %o: %s", addr, (unsigned)unix_mode,
                     strerror(e));
  }
  return push_listener(s, i, fd, abstract ? NULL : path, err);
}

/* "host:port", "[v6]:port" or ":port" (every interface); each address the
 * host resolves to gets a socket, and port 0 becomes one port the system
 * chose for all of them. */
static int listen_tcp(td_rpc_server *s, size_t i, const char *addr, const char *hostport,
                      td_error *err) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  if (!colon || !colon[1] || (size_t)(colon - hostport) >= sizeof host)
    return td_errorf(err, TD_EINVAL, "cannot listen on %s: expected unix:PATH or HOST:PORT", addr);
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  char *h = host;
  if (h[0] == '[') {
    h++;
    char *close_bracket = strchr(h, ']');
    if (close_bracket)
      *close_bracket = '\0';
  }
  char port[16];
  snprintf(port, sizeof port, "%s", colon + 1);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int rc = getaddrinfo(*h ? h : NULL, port, &hints, &res);
  if (rc != 0)
    return td_errorf(err, TD_EINVAL, "cannot listen on %s: %s", addr, gai_strerror(rc));
  int families = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    families |= ai->ai_family == AF_INET6 ? 2 : 1;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen < sizeof ss ? ai->ai_addrlen : sizeof ss);
    if (!is_loopback(&ss) && !s->lopts[i].insecure && !s->lopts[i].health_only) {
      freeaddrinfo(res);
      return td_errorf(err, TD_EPERM,
                       "cannot listen on %s: plaintext on an address that is not loopback lets "
                       "anyone who reaches it call; give the listener tls (listeners: - "
                       "address: %s, tls: {cert_file, key_file, client_ca_file}) or, to accept "
                       "that, insecure: true",
                       addr, addr);
    }
  }
  int bound = 0, chosen = 0, first_errno = 0;
  rc = TD_OK;
  for (struct addrinfo *ai = res; ai && rc == TD_OK; ai = ai->ai_next) {
    if (chosen) {
      if (ai->ai_family == AF_INET)
        ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)chosen);
      else if (ai->ai_family == AF_INET6)
        ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port = htons((uint16_t)chosen);
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      first_errno = first_errno ? first_errno : errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Both families for one host: each socket serves its own. */
    if (ai->ai_family == AF_INET6 && families == 3)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
      int e = errno;
      close(fd);
      /* An address in use is an error; a family the host lacks is not,
       * when another address works. */
      if (e == EADDRINUSE || e == EACCES) {
        rc = td_errorf(err, e == EACCES ? TD_EPERM : TD_EIO, "cannot listen on %s: %s", addr,
                       strerror(e));
        break;
      }
      first_errno = first_errno ? first_errno : e;
      continue;
    }
    if (!chosen) {
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;
      if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        chosen = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
    }
    rc = push_listener(s, i, fd, NULL, err);
    bound++;
  }
  freeaddrinfo(res);
  if (rc == TD_OK && !bound)
    rc = td_errorf(err, TD_EIO, "cannot listen on %s: %s", addr,
                   first_errno ? strerror(first_errno) : "no address to bind");
  if (rc == TD_OK)
    s->ports[i] = chosen;
  return rc;
}

/* A TLS address: gRPC binds it, with credentials that fetch from the
 * listener's rpc_tls. */
static int listen_tls(td_rpc_server *s, size_t i, const char *addr, const char *hostport,
                      td_error *err) {
  grpc_server_credentials *cr = rpc_tls_credentials(s->tls[i]);
  if (!cr)
    return td_errorf(err, TD_EINVAL, "cannot listen on %s: gRPC refused the TLS credentials", addr);
  int port = grpc_server_add_http2_port(s->server, hostport, cr);
  grpc_server_credentials_release(cr);
  if (port <= 0)
    return td_errorf(err, TD_EIO,
                     "cannot listen on %s with TLS: gRPC could not bind it (an address in use, "
                     "one this host does not have, or certificates gRPC refused; its log says "
                     "which)",
                     addr);
  s->ports[i] = port;
  return TD_OK;
}

static int add_listener(td_rpc_server *s, size_t i, int unix_mode, td_error *err) {
  const char *addr = s->listen[i];
  const char *path = unix_path_of(addr);
  s->ports[i] = 0;
  if (s->tls[i] && (path || strncmp(addr, "unix", 4) == 0))
    return td_errorf(err, TD_EINVAL,
                     "cannot listen on %s: tls is for TCP addresses (a unix socket is guarded "
                     "by its file mode)",
                     addr);
  if (path)
    return listen_unix(s, i, addr, path, 0, unix_mode, err);
  if (strncmp(addr, "unix-abstract:", 14) == 0)
    return listen_unix(s, i, addr, addr + 14, 1, unix_mode, err);
  const char *hp = addr;
  if (strncmp(hp, "dns:///", 7) == 0)
    hp += 7;
  else if (strncmp(hp, "ipv4:", 5) == 0 || strncmp(hp, "ipv6:", 5) == 0)
    hp += 5;
  if (s->tls[i])
    return listen_tls(s, i, addr, hp, err);
  return listen_tcp(s, i, addr, hp, err);
}

/* Closes the listening sockets (a unix socket's file is removed). Safe to
 * call twice; the poll handles close on the loop. */
static void on_listener_closed(uv_handle_t *h) { (void)h; }

static void close_listeners(td_rpc_server *s) {
  for (size_t i = 0; i < s->n_listeners; i++) {
    rpc_listener *l = &s->listeners[i];
    if (l->polling) {
      l->polling = 0;
      uv_poll_stop(&l->poll);
    }
    if (l->poll_inited) {
      l->poll_inited = 0;
      uv_close((uv_handle_t *)&l->poll, on_listener_closed);
    }
    if (l->fd >= 0) {
      close(l->fd);
      l->fd = -1;
    }
    if (l->unix_path) {
      unlink(l->unix_path);
      free(l->unix_path);
      l->unix_path = NULL;
    }
  }
  if (s->accept_pause_inited) {
    s->accept_pause_inited = 0;
    uv_timer_stop(&s->accept_pause);
    uv_close((uv_handle_t *)&s->accept_pause, on_listener_closed);
  }
}

/* A connection is still open when its descriptor still names the socket
 * accepted (gRPC closes the descriptor when the connection ends, and the
 * number may since name another file). */
static int conn_alive(const rpc_conn *c) {
  struct stat st;
  return fstat(c->fd, &st) == 0 && st.st_ino == c->ino && st.st_dev == c->dev;
}

static void prune_conns(td_rpc_server *s) {
  size_t k = 0;
  for (size_t i = 0; i < s->n_conns; i++)
    if (conn_alive(&s->conns[i]))
      s->conns[k++] = s->conns[i];
  s->n_conns = k;
}

/* The client's address for logs, as gRPC writes it ("ipv4:127.0.0.1:5555",
 * "unix:"). */
static void format_peer(const struct sockaddr_storage *ss, char *out, size_t n) {
  char host[INET6_ADDRSTRLEN];
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    snprintf(out, n, "ipv4:%s:%u", host, (unsigned)ntohs(a->sin_port));
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    snprintf(out, n, "ipv6:[%s]:%u", host, (unsigned)ntohs(a->sin6_port));
  } else {
    snprintf(out, n, "unix:");
  }
}

static void on_accept_pause_done(uv_timer_t *t);

/* Out of descriptors: the pending connection stays queued and the socket
 * stays readable, so accepting pauses for a moment instead of spinning. */
static void pause_accepting(td_rpc_server *s) {
  for (size_t i = 0; i < s->n_listeners; i++)
    if (s->listeners[i].polling) {
      uv_poll_stop(&s->listeners[i].poll);
      s->listeners[i].polling = 0;
    }
  if (s->accept_pause_inited)
    uv_timer_start(&s->accept_pause, on_accept_pause_done, 100, 0);
}

static void on_accept(uv_poll_t *h, int status, int events);

static void resume_accepting(td_rpc_server *s) {
  for (size_t i = 0; i < s->n_listeners; i++) {
    rpc_listener *l = &s->listeners[i];
    if (l->poll_inited && !l->polling && uv_poll_start(&l->poll, UV_READABLE, on_accept) == 0)
      l->polling = 1;
  }
}

static void on_accept_pause_done(uv_timer_t *t) {
  td_rpc_server *s = t->data;
  if (!s->shutting_down)
    resume_accepting(s);
}

static void refuse_conn(td_rpc_server *s, int fd, const char *peer) {
  close(fd);
  s->refused++;
  uint64_t now = mono_ns();
  if (now - s->refused_logged_ns > 10ull * 1000000000ull || !s->refused_logged_ns) {
    s->refused_logged_ns = now;
    td_log_warn("connection refused: max_connections reached; raise max_connections or close "
                "idle clients",
                "peer=%s max_connections=%zu refused_total=%llu", peer, s->max_conns,
                (unsigned long long)s->refused);
  }
}

static void on_accept(uv_poll_t *h, int status, int events) {
  (void)events;
  rpc_listener *l = h->data;
  td_rpc_server *s = l->srv;
  if (status < 0)
    return;
  for (int burst = 0; burst < 256; burst++) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        td_log_warn("cannot accept a connection; pausing for 100 ms", "err=%s", strerror(errno));
        pause_accepting(s);
      }
      return; /* EAGAIN: nothing more now; other errors concern one peer */
    }
    char peer[80];
    format_peer(&ss, peer, sizeof peer);
    if (s->shutting_down) {
      close(fd);
      continue;
    }
    if (s->n_conns >= s->max_conns)
      prune_conns(s);
    struct stat st;
    if (s->n_conns >= s->max_conns || fstat(fd, &st) != 0) {
      refuse_conn(s, fd, peer);
      continue;
    }
    if (s->n_conns == s->cap_conns) {
      size_t cap = s->cap_conns ? 2 * s->cap_conns : 64;
      rpc_conn *nc = realloc(s->conns, cap * sizeof *nc);
      if (!nc) {
        refuse_conn(s, fd, peer);
        continue;
      }
      s->conns = nc;
      s->cap_conns = cap;
    }
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    rpc_conn *c = &s->conns[s->n_conns++];
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->ino = st.st_ino;
    c->dev = st.st_dev;
    c->index = l->index;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    if (ss.ss_family == AF_UNIX) {
      c->transport = TD_RPC_UNIX;
      struct ucred cred;
      socklen_t cl = sizeof cred;
      if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
        c->uid = (unsigned)cred.uid;
        c->has_uid = 1;
      }
    } else {
      /* The address the client reached: a connection to a loopback
       * address never left the machine. */
      struct sockaddr_storage local;
      socklen_t ll = sizeof local;
      c->transport = getsockname(fd, (struct sockaddr *)&local, &ll) == 0 && is_loopback(&local)
                         ? TD_RPC_LOOPBACK
                         : TD_RPC_PLAINTEXT;
    }
    grpc_server_credentials *cr = grpc_insecure_server_credentials_create();
    grpc_server_add_channel_from_fd(s->server, fd, cr);
    grpc_server_credentials_release(cr);
  }
}

/* gRPC names a connection it was handed "fd:N"; the address recorded at
 * accept replaces that. */
static const rpc_conn *conn_of(const td_rpc_call *c) {
  const char *p = c->peer;
  if (!p || strncmp(p, "fd:", 3) != 0)
    return NULL;
  long fd = strtol(p + 3, NULL, 10);
  const td_rpc_server *s = c->srv;
  for (size_t i = 0; i < s->n_conns; i++)
    if (s->conns[i].fd == fd && conn_alive(&s->conns[i]))
      return &s->conns[i];
  return NULL;
}

size_t td_rpc_server_connections(td_rpc_server *s) {
  if (!s)
    return 0;
  prune_conns(s);
  return s->n_conns;
}

/* ---- the server */

static int copy_opts(td_rpc_server *s, const td_rpc_server_opts *o, td_error *err) {
  size_t bytes = o->n_methods * sizeof(td_rpc_method);
  for (size_t i = 0; i < o->n_methods; i++)
    bytes += strlen(o->methods[i].path) + 1;
  s->methods = malloc(bytes ? bytes : 1);
  size_t lbytes = o->n_listen * sizeof(char *);
  for (size_t i = 0; i < o->n_listen; i++)
    lbytes += strlen(o->listen[i]) + 1;
  s->listen = malloc(lbytes);
  s->ports = calloc(o->n_listen, sizeof(int));
  s->lopts = calloc(o->n_listen, sizeof *s->lopts);
  s->tls = calloc(o->n_listen, sizeof *s->tls);
  if (!s->methods || !s->listen || !s->ports || !s->lopts || !s->tls)
    return td_errorf(err, TD_ENOMEM, "out of memory starting the rpc server");
  s->n_listen = o->n_listen; /* the tls rows are freed by count */
  for (size_t i = 0; o->listen_opts && i < o->n_listen; i++) {
    s->lopts[i] = o->listen_opts[i];
    s->lopts[i].tls = NULL;
    if (o->listen_opts[i].tls) {
      char where[160];
      snprintf(where, sizeof where, "listener %s", o->listen[i]);
      int rc = rpc_tls_new(&s->tls[i], o->listen_opts[i].tls, where, err);
      if (rc)
        return rc;
    }
  }

  char *p = (char *)(s->methods + o->n_methods);
  for (size_t i = 0; i < o->n_methods; i++) {
    s->methods[i] = o->methods[i];
    size_t len = strlen(o->methods[i].path) + 1;
    memcpy(p, o->methods[i].path, len);
    s->methods[i].path = p;
    p += len;
  }
  s->n_methods = o->n_methods;
  p = (char *)(s->listen + o->n_listen);
  for (size_t i = 0; i < o->n_listen; i++) {
    size_t len = strlen(o->listen[i]) + 1;
    memcpy(p, o->listen[i], len);
    s->listen[i] = p;
    p += len;
  }
  s->n_listen = o->n_listen;
  return TD_OK;
}

static int check_opts(const td_rpc_server_opts *o, td_error *err) {
  if (!o || o->n_listen == 0 || !o->listen)
    return td_errorf(err, TD_EINVAL, "the rpc server needs a listen address");
  for (size_t i = 0; i < o->n_listen; i++)
    if (!o->listen[i] || !*o->listen[i])
      return td_errorf(err, TD_EINVAL, "listen address %zu is empty", i);
  if (o->n_methods && !o->methods)
    return td_errorf(err, TD_EINVAL, "the method table is missing");
  for (size_t i = 0; i < o->n_methods; i++) {
    const td_rpc_method *m = &o->methods[i];
    if (!m->path || m->path[0] != '/' || !m->handler || !m->request ||
        (m->kind != TD_RPC_UNARY && m->kind != TD_RPC_SERVER_STREAM))
      return td_errorf(err, TD_EINVAL,
                       "method row %zu needs a \"/pkg.Service/Method\" path, a "
                       "kind, a request descriptor and a handler",
                       i);
    for (size_t j = 0; j < i; j++)
      if (strcmp(o->methods[j].path, m->path) == 0)
        return td_errorf(err, TD_EINVAL, "method %s is listed twice", m->path);
  }
  return TD_OK;
}

/* Undoes a start that failed before the rpc thread existed: the shutdown
 * tag is collected here, on the calling thread. */
static void abort_start(td_rpc_server *s) {
  close_listeners(s);
  if (s->server) {
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->t_shutdown);
    for (;;) {
      grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
      if (ev.type == GRPC_OP_COMPLETE && ev.tag == &s->t_shutdown)
        break;
    }
    grpc_completion_queue_shutdown(s->cq);
    while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_server_destroy(s->server);
    s->server = NULL;
  }
  if (s->cq) {
    grpc_completion_queue_destroy(s->cq);
    s->cq = NULL;
  }
  td_rpc_server_free(s);
}

/* gRPC's own log lines become the daemon's structured records. */
static void log_from_grpc(gpr_log_func_args *a) {
  td_log_level level = a->severity == GPR_LOG_SEVERITY_ERROR  ? TD_LOG_WARN
                       : a->severity == GPR_LOG_SEVERITY_INFO ? TD_LOG_INFO
                                                              : TD_LOG_DEBUG;
  const char *file = strrchr(a->file, '/');
  td_log(level, a->message, "component=grpc src=%s:%d", file ? file + 1 : a->file, a->line);
}

int td_rpc_server_start(td_rpc_server **out, uv_loop_t *loop, const td_rpc_server_opts *opts,
                        td_error *err) {
  *out = NULL;
  int rc = check_opts(opts, err);
  if (rc)
    return rc;
  td_rpc_server *s = calloc(1, sizeof *s);
  if (!s)
    return td_errorf(err, TD_ENOMEM, "out of memory starting the rpc server");
  s->t_shutdown.done = on_server_shutdown;
  s->on_end = opts->on_end;
  s->on_end_arg = opts->on_end_arg;
  s->authorize = opts->authorize;
  s->authorize_arg = opts->authorize_arg;
  rc = copy_opts(s, opts, err);
  if (rc) {
    td_rpc_server_free(s);
    return rc;
  }
  gpr_set_log_function(log_from_grpc);
  grpc_init();
  s->grpc_inited = 1;

  size_t max = opts->max_request_bytes ? opts->max_request_bytes : RPC_DEFAULT_MAX_REQUEST;
  size_t max_reply = opts->max_reply_bytes ? opts->max_reply_bytes : RPC_DEFAULT_MAX_REQUEST;
  s->max_conns = opts->max_connections ? opts->max_connections : RPC_DEFAULT_MAX_CONNECTIONS;
  grpc_arg args[4];
  size_t nargs = 0;
  memset(args, 0, sizeof args);
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[nargs++].value.integer = max > INT_MAX ? INT_MAX : (int)max;
  /* Replies are bounded by construction; this makes one that is not fail
   * on the server instead of at a client. */
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  args[nargs++].value.integer = max_reply > INT_MAX ? INT_MAX : (int)max_reply;
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS;
  args[nargs++].value.integer = RPC_MAX_STREAMS_PER_CONNECTION;
  if (opts->connection_idle_ms) {
    /* A connection with no call for this long is closed (GOAWAY), so that
     * idle clients do not hold max_connections slots forever. */
    args[nargs].type = GRPC_ARG_INTEGER;
    args[nargs].key = (char *)GRPC_ARG_MAX_CONNECTION_IDLE_MS;
    args[nargs++].value.integer =
        opts->connection_idle_ms > INT_MAX ? INT_MAX : (int)opts->connection_idle_ms;
  }
  grpc_channel_args chargs = {nargs, args};
  s->server = grpc_server_create(&chargs, NULL);
  s->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(s->server, s->cq, NULL);

  int mode = opts->unix_mode ? opts->unix_mode : RPC_DEFAULT_UNIX_MODE;
  for (size_t i = 0; i < s->n_listen; i++) {
    rc = add_listener(s, i, mode, err);
    if (rc) {
      abort_start(s);
      return rc;
    }
  }

  uv_mutex_init(&s->mu);
  s->mu_inited = 1;
  uv_async_init(loop, &s->async, on_async);
  s->async.data = s;
  s->async_inited = 1;
  grpc_server_start(s->server);
  uv_timer_init(loop, &s->accept_pause);
  s->accept_pause.data = s;
  s->accept_pause_inited = 1;
  uv_timer_init(loop, &s->trim);
  s->trim.data = s;
  s->trim_inited = 1;
  for (size_t i = 0; i < s->n_listeners; i++) {
    rpc_listener *l = &s->listeners[i];
    if (uv_poll_init(loop, &l->poll, l->fd) == 0) {
      l->poll.data = l;
      l->poll_inited = 1;
    }
  }
  resume_accepting(s);
  if (uv_thread_create(&s->thread, rpc_thread_main, s) != 0) {
    /* Without the thread nothing completes; fail loudly and early. */
    fprintf(stderr, "traind: rpc: cannot create the rpc thread\n");
    abort();
  }
  s->thread_started = 1;
  for (int i = 0; i < RPC_ARMED; i++)
    arm_request(s);
  *out = s;
  return TD_OK;
}

int td_rpc_server_reload_tls(td_rpc_server *s, td_error *err) {
  for (size_t i = 0; i < s->n_listen; i++)
    if (s->tls[i]) {
      int rc = rpc_tls_reload(s->tls[i], err);
      if (rc)
        return rc;
    }
  return TD_OK;
}

int td_rpc_server_port(const td_rpc_server *s, size_t i) {
  return s && i < s->n_listen ? s->ports[i] : 0;
}

size_t td_rpc_server_calls(const td_rpc_server *s) { return s ? s->n_calls - s->n_armed : 0; }

#define SHUTDOWN_GRACE_MS 1000

static void on_grace(uv_timer_t *t) {
  td_rpc_server *s = t->data;
  if (s->server)
    grpc_server_cancel_all_calls(s->server);
}

void td_rpc_server_shutdown(td_rpc_server *s, void (*done)(void *arg), void *arg) {
  if (s->shutting_down)
    return;
  s->shutting_down = 1;
  s->done = done;
  s->done_arg = arg;
  close_listeners(s);
  if (s->trim_inited)
    uv_timer_stop(&s->trim);
  grpc_server_shutdown_and_notify(s->server, s->cq, &s->t_shutdown);
  /* Finished calls still have their last writes in flight: cancelling now
   * would cut a stream's final status. Cancel what is left after a grace. */
  if (uv_timer_init(s->async.loop, &s->grace) == 0) {
    s->grace.data = s;
    s->grace_inited = 1;
    uv_timer_start(&s->grace, on_grace, SHUTDOWN_GRACE_MS, 0);
  } else {
    grpc_server_cancel_all_calls(s->server);
  }
}

void td_rpc_server_free(td_rpc_server *s) {
  if (!s)
    return;
  if (s->mu_inited)
    uv_mutex_destroy(&s->mu);
  for (size_t i = 0; i < s->n_listeners; i++) {
    if (s->listeners[i].fd >= 0)
      close(s->listeners[i].fd);
    free(s->listeners[i].unix_path);
  }
  free(s->listeners);
  free(s->conns);
  free(s->inbox);
  free(s->work);
  free(s->methods);
  free(s->listen);
  free(s->ports);
  free(s->lopts);
  for (size_t i = 0; s->tls && i < s->n_listen; i++)
    rpc_tls_free(s->tls[i]);
  free(s->tls);
  if (s->grpc_inited)
    grpc_shutdown();
  free(s);
}

/* ---- answering calls */

void td_rpc_reply(td_rpc_call *c, const ProtobufCMessage *response) {
  if (c->method->kind == TD_RPC_SERVER_STREAM) {
    td_rpc_send(c, response);
    td_rpc_finish(c, TD_GRPC_OK, NULL);
    return;
  }
  if (c->answered)
    return;
  c->answered = 1;
  send_final(c, TD_GRPC_OK, NULL, td_pbgrpc_pack(response));
  call_unref(c);
}

void td_rpc_fail(td_rpc_call *c, int grpc_status, const char *message) {
  if (c->method->kind == TD_RPC_SERVER_STREAM) {
    td_rpc_finish(c, grpc_status, message);
    return;
  }
  if (c->answered)
    return;
  c->answered = 1;
  send_final(c, grpc_status, message, NULL);
  call_unref(c);
}

int td_rpc_send(td_rpc_call *c, const ProtobufCMessage *message) {
  if (c->method->kind != TD_RPC_SERVER_STREAM)
    return TD_EINVAL;
  if (c->answered || c->cancelled)
    return TD_ECANCELLED;
  size_t bytes = protobuf_c_message_get_packed_size(message);
  if (c->sending && c->queued_bytes + bytes > RPC_STREAM_QUEUE_MAX) {
    /* The client does not take what it asked for: end the stream rather
     * than hold more. The cancel callback follows as for any cancel. */
    grpc_call_cancel_with_status(c->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                 "the client is not reading the stream", NULL);
    return TD_ECANCELLED;
  }
  grpc_byte_buffer *bb = td_pbgrpc_pack(message);
  c->stream_bytes += bytes;
  if (!c->sending) {
    start_send(c, bb);
    return TD_OK;
  }
  rpc_msg *m = malloc(sizeof *m);
  if (!m) {
    grpc_byte_buffer_destroy(bb);
    return TD_ENOMEM;
  }
  m->bb = bb;
  m->bytes = bytes;
  m->next = NULL;
  c->n_queued++;
  c->queued_bytes += bytes;
  if (c->queue_tail)
    c->queue_tail->next = m;
  else
    c->queue_head = m;
  c->queue_tail = m;
  return TD_OK;
}

void td_rpc_finish(td_rpc_call *c, int grpc_status, const char *message) {
  if (c->method->kind != TD_RPC_SERVER_STREAM) {
    td_rpc_fail(c, grpc_status, message);
    return;
  }
  if (c->answered)
    return;
  c->answered = 1;
  if (!c->cancelled) {
    if (c->sending) {
      /* The status goes out when the last queued message has. */
      free(c->finish_message);
      c->finish_message = message ? strdup(message) : NULL;
      c->finish_status = grpc_status;
      c->finish_pending = 1;
    } else {
      send_final(c, grpc_status, message, NULL);
    }
  }
  call_unref(c);
}

void td_rpc_on_cancel(td_rpc_call *c, void (*cb)(void *arg, td_rpc_call *c), void *arg) {
  c->cancel_cb = cb;
  c->cancel_arg = arg;
  if (cb && c->cancelled && !c->answered && !c->cancel_notified) {
    /* Already gone: tell the caller on the next loop turn, not from
     * inside this call. */
    c->refs++;
    post_event(c->srv, &c->t_cancel, 1);
  }
}

void td_rpc_on_drain(td_rpc_call *c, void (*cb)(void *arg, td_rpc_call *c), void *arg) {
  c->drain_cb = cb;
  c->drain_arg = arg;
}

int td_rpc_is_cancelled(const td_rpc_call *c) { return c->cancelled; }

size_t td_rpc_pending(const td_rpc_call *c) { return (c->sending ? 1 : 0) + c->n_queued; }

const char *td_rpc_peer(const td_rpc_call *c) {
  if (c->peer_name[0])
    return c->peer_name;
  return c->peer ? c->peer : "unknown";
}

const td_rpc_method *td_rpc_method_of(const td_rpc_call *c) { return c->method; }

void td_rpc_set_identity(td_rpc_call *c, const char *name, int tag) {
  free(c->ident);
  c->ident = name ? strdup(name) : NULL;
  c->ident_tag = tag;
}

const char *td_rpc_identity(const td_rpc_call *c, int *tag) {
  if (tag)
    *tag = c->ident_tag;
  return c->ident;
}
