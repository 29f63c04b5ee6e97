/* The client side of traind's gRPC API on the gRPC C core API (see
 * rpc_client.h). Every call gets its own pluck completion queue, so a call
 * is a plain blocking sequence of batches. */
#include "rpc_client.h"
#include "pbgrpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Replies can be large (metrics histories, job lists). */
#define CLIENT_MAX_REPLY (64 << 20)

struct td_rpc_client {
  grpc_channel *channel;
  char *target;
  /* "authorization: Bearer TOKEN", sent with every call; n_md 0 without a
   * token. The slices are owned here. */
  grpc_metadata md[1];
  size_t n_md;
};

/* One call in progress: its queue and its gRPC call. */
typedef struct client_call {
  grpc_completion_queue *cq;
  grpc_call *call;
} client_call;

static void set_status(td_rpc_status *st, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_status(td_rpc_status *st, int code, const char *fmt, ...) {
  va_list ap;
  st->code = code;
  va_start(ap, fmt);
  vsnprintf(st->message, sizeof st->message, fmt, ap);
  va_end(ap);
}

static void drop_log(gpr_log_func_args *args) { (void)args; }

void td_rpc_client_quiet(void) {
  const char *v = getenv("GRPC_VERBOSITY");
  if (!v || !*v)
    gpr_set_log_function(drop_log);
}

td_rpc_client *td_rpc_client_open(const char *target) {
  return td_rpc_client_open_opts(target, NULL);
}

/* The channel's credentials: TLS with the given roots, key pair and name,
 * or plaintext. NULL when a key pair has one half missing. */
static grpc_channel_credentials *channel_credentials(const td_rpc_client_opts *o) {
  int tls = o && (o->tls || o->ca_pem || o->cert_pem || o->key_pem || o->server_name);
  if (!tls)
    return grpc_insecure_credentials_create();
  if (!o->cert_pem != !o->key_pem)
    return NULL;
  grpc_ssl_pem_key_cert_pair pair = {o->key_pem, o->cert_pem};
  return grpc_ssl_credentials_create_ex(o->ca_pem, o->cert_pem ? &pair : NULL, NULL, NULL);
}

td_rpc_client *td_rpc_client_open_opts(const char *target, const td_rpc_client_opts *opts) {
  if (!target || !*target)
    return NULL;
  td_rpc_client *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->target = strdup(target);
  if (!c->target) {
    free(c);
    return NULL;
  }
  grpc_init();
  grpc_channel_credentials *cr = channel_credentials(opts);
  if (!cr) {
    grpc_shutdown();
    free(c->target);
    free(c);
    return NULL;
  }
  grpc_arg args[3];
  size_t nargs = 0;
  memset(args, 0, sizeof args);
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[nargs].value.integer = CLIENT_MAX_REPLY;
  nargs++;
  /* A daemon that is down should be reported at once, not retried. */
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = (char *)GRPC_ARG_ENABLE_RETRIES;
  args[nargs].value.integer = 0;
  nargs++;
  if (opts && opts->server_name && *opts->server_name) {
    args[nargs].type = GRPC_ARG_STRING;
    args[nargs].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
    args[nargs].value.string = (char *)opts->server_name;
    nargs++;
  }
  grpc_channel_args chargs = {nargs, args};
  c->channel = grpc_channel_create(target, cr, &chargs);
  grpc_channel_credentials_release(cr);
  if (!c->channel) {
    grpc_shutdown();
    free(c->target);
    free(c);
    return NULL;
  }
  if (opts && opts->token && *opts->token) {
    size_t n = strlen(opts->token);
    grpc_slice v = grpc_slice_malloc(7 + n);
    memcpy(GRPC_SLICE_START_PTR(v), "Bearer ", 7);
    memcpy(GRPC_SLICE_START_PTR(v) + 7, opts->token, n);
    c->md[0].key = grpc_slice_from_static_string("authorization");
    c->md[0].value = v;
    c->n_md = 1;
  }
  return c;
}

void td_rpc_client_close(td_rpc_client *c) {
  if (!c)
    return;
  grpc_channel_destroy(c->channel);
  for (size_t i = 0; i < c->n_md; i++) {
    grpc_slice_unref(c->md[i].key);
    grpc_slice_unref(c->md[i].value);
  }
  grpc_shutdown();
  free(c->target);
  free(c);
}

/* Fills a SEND_INITIAL_METADATA op with the client's metadata. */
static void initial_metadata(td_rpc_client *c, grpc_op *op) {
  op->op = GRPC_OP_SEND_INITIAL_METADATA;
  op->data.send_initial_metadata.count = c->n_md;
  op->data.send_initial_metadata.metadata = c->n_md ? c->md : NULL;
}

static int call_begin(td_rpc_client *c, client_call *cc, const char *method, double timeout_sec) {
  gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_REALTIME);
  if (timeout_sec > 0) {
    double us = timeout_sec * 1e6;
    deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_micros(us > 9e15 ? (int64_t)9e15 : (int64_t)us, GPR_TIMESPAN));
  }
  cc->cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_slice path = grpc_slice_from_copied_string(method);
  cc->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cc->cq, path, NULL,
                                      deadline, NULL);
  grpc_slice_unref(path);
  return cc->call != NULL;
}

/* Runs one batch to completion; returns its success flag. */
static int call_batch(client_call *cc, const grpc_op *ops, size_t n) {
  void *tag = (void *)ops;
  if (grpc_call_start_batch(cc->call, ops, n, tag, NULL) != GRPC_CALL_OK)
    return 0;
  grpc_event ev =
      grpc_completion_queue_pluck(cc->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success;
}

static void call_end(client_call *cc) {
  if (cc->call)
    grpc_call_unref(cc->call);
  grpc_completion_queue_shutdown(cc->cq);
  while (grpc_completion_queue_pluck(cc->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cc->cq);
}

/* Fills *st from RECV_STATUS_ON_CLIENT's results. A connection that never
 * came up is reported with the target, so that the user sees which
 * address was tried. */
static void take_status(td_rpc_client *c, td_rpc_status *st, grpc_status_code code,
                        grpc_slice details, const char *error_string) {
  char *msg = grpc_slice_to_c_string(details);
  if (code == GRPC_STATUS_UNAVAILABLE &&
      grpc_channel_check_connectivity_state(c->channel, 0) != GRPC_CHANNEL_READY)
    set_status(st, code, "cannot reach traind at %s: %s", c->target,
               *msg ? msg : "connection failed");
  else if (!*msg && code != GRPC_STATUS_OK && error_string)
    set_status(st, code, "%s", error_string);
  else
    set_status(st, code, "%s", msg);
  gpr_free(msg);
}

/* A unary exchange of raw buffers. `request` NULL sends no message at all;
 * *reply receives the reply buffer (NULL when none). */
static int unary_bytes(td_rpc_client *c, const char *method, grpc_byte_buffer *request,
                       grpc_byte_buffer **reply, double timeout_sec, td_rpc_status *st) {
  *reply = NULL;
  client_call cc = {0};
  if (!call_begin(c, &cc, method, timeout_sec)) {
    set_status(st, GRPC_STATUS_INTERNAL, "cannot create a call to %s", method);
    call_end(&cc);
    return st->code;
  }
  grpc_metadata_array md, trailers;
  grpc_metadata_array_init(&md);
  grpc_metadata_array_init(&trailers);
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  const char *error_string = NULL;

  grpc_op ops[6];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  initial_metadata(c, &ops[n++]);
  if (request) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = request;
    n++;
  }
  ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[n].data.recv_initial_metadata.recv_initial_metadata = &md;
  n++;
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n].data.recv_message.recv_message = reply;
  n++;
  ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[n].data.recv_status_on_client.trailing_metadata = &trailers;
  ops[n].data.recv_status_on_client.status = &code;
  ops[n].data.recv_status_on_client.status_details = &details;
  ops[n].data.recv_status_on_client.error_string = &error_string;
  n++;
  if (!call_batch(&cc, ops, n) && code == GRPC_STATUS_UNKNOWN)
    set_status(st, GRPC_STATUS_INTERNAL, "the call to %s failed", method);
  else
    take_status(c, st, code, details, error_string);

  grpc_slice_unref(details);
  if (error_string)
    gpr_free((void *)error_string);
  grpc_metadata_array_destroy(&md);
  grpc_metadata_array_destroy(&trailers);
  call_end(&cc);
  return st->code;
}

int td_rpc_call_unary(td_rpc_client *c, const char *method, const ProtobufCMessage *request,
                      const ProtobufCMessageDescriptor *response_desc, ProtobufCMessage **response,
                      double timeout_sec, td_rpc_status *st) {
  td_rpc_status local;
  if (!st)
    st = &local;
  *response = NULL;
  grpc_byte_buffer *req = td_pbgrpc_pack(request), *reply = NULL;
  unary_bytes(c, method, req, &reply, timeout_sec, st);
  grpc_byte_buffer_destroy(req);
  if (st->code == GRPC_STATUS_OK) {
    if (!reply)
      set_status(st, GRPC_STATUS_INTERNAL, "%s answered OK without a message", method);
    else if (!(*response = td_pbgrpc_unpack(response_desc, reply, NULL, 0)))
      set_status(st, GRPC_STATUS_INTERNAL, "the reply to %s is not a valid %s", method,
                 response_desc->name);
  }
  if (reply)
    grpc_byte_buffer_destroy(reply);
  return st->code;
}

int td_rpc_call_raw(td_rpc_client *c, const char *method, const void *bytes, size_t len,
                    double timeout_sec, td_rpc_status *st) {
  td_rpc_status local;
  if (!st)
    st = &local;
  grpc_byte_buffer *req = NULL, *reply = NULL;
  if (bytes) {
    grpc_slice s = grpc_slice_from_copied_buffer(bytes, len);
    req = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
  }
  unary_bytes(c, method, req, &reply, timeout_sec, st);
  if (req)
    grpc_byte_buffer_destroy(req);
  if (reply)
    grpc_byte_buffer_destroy(reply);
  return st->code;
}

int td_rpc_call_stream(td_rpc_client *c, const char *method, const ProtobufCMessage *request,
                       const ProtobufCMessageDescriptor *response_desc,
                       int (*on_message)(void *arg, const ProtobufCMessage *m), void *arg,
                       double timeout_sec, td_rpc_status *st) {
  td_rpc_status local;
  if (!st)
    st = &local;
  client_call cc = {0};
  if (!call_begin(c, &cc, method, timeout_sec)) {
    set_status(st, GRPC_STATUS_INTERNAL, "cannot create a call to %s", method);
    call_end(&cc);
    return st->code;
  }
  grpc_metadata_array md, trailers;
  grpc_metadata_array_init(&md);
  grpc_metadata_array_init(&trailers);
  grpc_byte_buffer *req = td_pbgrpc_pack(request);

  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  initial_metadata(c, &ops[0]);
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = req;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &md;
  int ok = call_batch(&cc, ops, 4);

  /* Messages until the end of the stream, an error or a cancel. */
  int stopped = 0, bad_reply = 0;
  while (ok) {
    grpc_byte_buffer *bb = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &bb;
    if (!call_batch(&cc, &op, 1) || !bb)
      break;
    ProtobufCMessage *m = td_pbgrpc_unpack(response_desc, bb, NULL, 0);
    grpc_byte_buffer_destroy(bb);
    if (!m) {
      bad_reply = 1;
      grpc_call_cancel_with_status(cc.call, GRPC_STATUS_INTERNAL, "malformed stream message", NULL);
      break;
    }
    int r = on_message ? on_message(arg, m) : 0;
    protobuf_c_message_free_unpacked(m, NULL);
    if (r) {
      stopped = 1;
      grpc_call_cancel(cc.call, NULL);
      break;
    }
  }

  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  const char *error_string = NULL;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  op.data.recv_status_on_client.trailing_metadata = &trailers;
  op.data.recv_status_on_client.status = &code;
  op.data.recv_status_on_client.status_details = &details;
  op.data.recv_status_on_client.error_string = &error_string;
  if (!call_batch(&cc, &op, 1) && code == GRPC_STATUS_UNKNOWN)
    set_status(st, GRPC_STATUS_INTERNAL, "the call to %s failed", method);
  else if (stopped)
    set_status(st, GRPC_STATUS_CANCELLED, "%s: cancelled by the client", method);
  else if (bad_reply)
    set_status(st, GRPC_STATUS_INTERNAL, "a message from %s is not a valid %s", method,
               response_desc->name);
  else
    take_status(c, st, code, details, error_string);

  grpc_slice_unref(details);
  if (error_string)
    gpr_free((void *)error_string);
  grpc_byte_buffer_destroy(req);
  grpc_metadata_array_destroy(&md);
  grpc_metadata_array_destroy(&trailers);
  call_end(&cc);
  return st->code;
}
