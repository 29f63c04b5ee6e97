/* The daemon's gRPC server, on the gRPC C core API. Every gRPC call of the
 * daemon lives behind this interface (the C core API has no compatibility
 * promise).
 *
 * Threads: one thread blocks in grpc_completion_queue_next and hands each
 * completion to the libuv loop (a locked queue plus uv_async_send, drained
 * whole). Handlers, replies, sends and the cancel callback all run on the
 * loop thread; no function here may be called from another thread.
 *
 * Methods come from a table of rows {path, kind, request descriptor,
 * handler}. Unknown methods are answered UNIMPLEMENTED, requests that do not
 * unpack or hold a string that is not UTF-8 INVALID_ARGUMENT (with the
 * field's path), requests over the size limit RESOURCE_EXHAUSTED, all
 * without reaching a handler.
 *
 * The server binds its plaintext listen addresses itself and hands each
 * accepted connection to gRPC, so that connections are counted
 * (max_connections). TLS addresses are bound by gRPC (1.51 takes an accepted
 * descriptor only with insecure credentials), so their connections are not
 * counted; their certificates are read again by td_rpc_server_reload_tls.
 *
 * Before a method's handler runs, the authorize callback sees who calls
 * (td_rpc_caller) and may refuse the call; the handler then reads the
 * identity it recorded with td_rpc_identity. */
#ifndef TD_RPC_H
#define TD_RPC_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <uv.h>

#include "error.h"

typedef struct td_rpc_server td_rpc_server;
typedef struct td_rpc_call td_rpc_call;

typedef enum td_rpc_kind {
  TD_RPC_UNARY = 0,
  TD_RPC_SERVER_STREAM,
} td_rpc_kind;

/* Runs on the loop thread with the unpacked request (owned by the call,
 * valid until the call is answered). A unary handler answers exactly once,
 * now or later, with td_rpc_reply or td_rpc_fail. A streaming handler sends
 * any number of messages with td_rpc_send and ends with td_rpc_finish. */
typedef void (*td_rpc_handler)(void *ctx, td_rpc_call *call, const ProtobufCMessage *request);

typedef struct td_rpc_method {
  const char *path; /* "/traind.v1.Trainer/SubmitJob" */
  td_rpc_kind kind;
  const ProtobufCMessageDescriptor *request;
  td_rpc_handler handler;
  void *ctx;  /* passed to the handler */
  int health; /* also served on health-only listeners, without authorize */
} td_rpc_method;

/* Client certificates on a TLS listener. */
typedef enum td_rpc_client_cert {
  TD_RPC_CLIENT_CERT_NONE = 0,
  TD_RPC_CLIENT_CERT_REQUEST, /* verified when the client sends one */
  TD_RPC_CLIENT_CERT_REQUIRE, /* a handshake without a valid one fails */
} td_rpc_client_cert;

typedef struct td_rpc_tls {
  const char *cert_file;      /* PEM certificate chain */
  const char *key_file;       /* PEM private key */
  const char *client_ca_file; /* PEM CAs of client certificates; NULL: none */
  td_rpc_client_cert client_cert;
} td_rpc_tls;

/* How one listen address is served. */
typedef struct td_rpc_listen_opts {
  const td_rpc_tls *tls; /* NULL: plaintext */
  /* Plaintext on a TCP address that is not loopback: refused without this
   * (anyone who can reach the address could call). */
  int insecure;
  /* Serves only the methods marked `health`, to anyone. */
  int health_only;
} td_rpc_listen_opts;

/* How a call reached the server. */
typedef enum td_rpc_transport {
  TD_RPC_UNIX = 0,  /* a unix socket */
  TD_RPC_LOOPBACK,  /* plaintext TCP on a loopback address */
  TD_RPC_PLAINTEXT, /* plaintext TCP on a network address (insecure) */
  TD_RPC_TLS,       /* TLS */
} td_rpc_transport;

/* Who calls, as the transport tells; valid during the authorize callback. */
typedef struct td_rpc_caller {
  td_rpc_transport transport;
  /* A verified client certificate's subject common name, else its first
   * subject alternative name; NULL without one. */
  const char *cert_name;
  /* The credential of `authorization: Bearer CRED`; NULL without the
   * header. bad_authorization: the header is there in another form. */
  const char *bearer;
  int bad_authorization;
  /* A unix socket peer's user id (has_uid 0 when it could not be read). */
  unsigned uid;
  int has_uid;
} td_rpc_caller;

/* Decides whether a call may reach its method: returns a gRPC status (0:
 * go on; the callback records the identity with td_rpc_set_identity) or
 * refuses with that status and the message in why. */
typedef int (*td_rpc_authorize)(void *arg, td_rpc_call *call, const td_rpc_method *m,
                                const td_rpc_caller *caller, char *why, size_t why_len);

typedef struct td_rpc_server_opts {
  const char *const *listen; /* "unix:/run/traind/traind.sock", "127.0.0.1:0" */
  size_t n_listen;
  const td_rpc_listen_opts *listen_opts; /* n_listen rows; NULL: all plaintext */
  /* Called for every call of a method not marked `health` (and for health
   * methods off the health-only listeners); NULL: every call goes on. */
  td_rpc_authorize authorize;
  void *authorize_arg;
  const td_rpc_method *methods; /* copied */
  size_t n_methods;
  size_t max_request_bytes; /* 0: 4 MiB; a larger request: RESOURCE_EXHAUSTED */
  size_t max_reply_bytes;   /* 0: 4 MiB; a larger reply fails on the server */
  int unix_mode;            /* socket file mode; 0: 0660 */
  /* Connections open at once, over every address; 0: 512. One more is
   * accepted and closed at once (the client sees UNAVAILABLE) while the
   * open ones keep working. */
  size_t max_connections;
  /* A connection with no call for this long is closed; 0: never. */
  unsigned connection_idle_ms;
  /* Called on the loop once per call as it ends (answered, failed, or
   * cancelled by the client or a deadline): the method path ("unknown"
   * for methods not in the table), the status code, and the seconds since
   * the call arrived. Optional. */
  void (*on_end)(void *arg, const char *method, int code, double sec);
  void *on_end_arg;
} td_rpc_server_opts;

/* Binds every address and starts serving on `loop`. A unix socket's
 * directory is created (0755) when missing, a stale socket file is
 * replaced, and the socket gets unix_mode. Any address that cannot be bound
 * fails the whole start with a message naming it. */
int td_rpc_server_start(td_rpc_server **out, uv_loop_t *loop, const td_rpc_server_opts *opts,
                        td_error *err);
/* Reads the certificate, key and CA files of every TLS listener again; the
 * next handshakes use them (open connections keep theirs). On an error
 * (a file that cannot be read, a key that does not match its certificate)
 * nothing changes and err says which file. */
int td_rpc_server_reload_tls(td_rpc_server *s, td_error *err);
/* The TCP port bound for listen address i (0 for unix sockets); resolves
 * "host:0" to the port the system chose. */
int td_rpc_server_port(const td_rpc_server *s, size_t i);
/* The number of calls accepted and not yet released (answered calls whose
 * last batch is still in flight count too); for tests and daemon info. */
size_t td_rpc_server_calls(const td_rpc_server *s);
/* The connections open now (counted against max_connections). */
size_t td_rpc_server_connections(td_rpc_server *s);
/* Stops accepting calls, gives the calls in flight one second to finish
 * (so that a stream's last messages and status reach the client), then
 * cancels what is left (streams see their cancel callback), and calls
 * done(arg) on the loop once everything gRPC owned is released. A unary
 * call still waiting for its handler's answer holds the shutdown until it is
 * answered.
 * td_rpc_server_free after that, from done itself if convenient. */
void td_rpc_server_shutdown(td_rpc_server *s, void (*done)(void *arg), void *arg);
void td_rpc_server_free(td_rpc_server *s);

/* Answers a unary call with OK and `response` (packed immediately; the
 * caller keeps ownership of it). On a stream it sends `response` and
 * finishes with OK. The call must not be used afterwards. */
void td_rpc_reply(td_rpc_call *c, const ProtobufCMessage *response);
/* Answers a unary call or ends a stream with a status and a one-line
 * message. The call must not be used afterwards. */
void td_rpc_fail(td_rpc_call *c, int grpc_status, const char *message);

/* Streams: queues a message (packed immediately). Returns TD_OK, or
 * TD_ECANCELLED when the client is gone or the stream is finished
 * (TD_EINVAL on a unary call). At most one write is in flight; later ones
 * wait in order, and a stream whose waiting messages pass 16 MiB is
 * cancelled (RESOURCE_EXHAUSTED: the client is not reading; the cancel
 * callback runs as for any cancel). A producer that can outpace its client
 * sends only while td_rpc_pending is below 2 and goes on from its drain
 * callback, so that a stream holds at most the write in flight and one
 * message behind it. */
int td_rpc_send(td_rpc_call *c, const ProtobufCMessage *message);
/* Messages of a stream not yet written: the one in flight and those
 * waiting behind it. */
size_t td_rpc_pending(const td_rpc_call *c);
/* Ends a stream after its queued messages. The call must not be used
 * afterwards. */
void td_rpc_finish(td_rpc_call *c, int grpc_status, const char *message);
/* Called on the loop when a stream's client cancels, its deadline passes or
 * the server shuts down, at most once and never after td_rpc_finish. The
 * callback must stop sending and call td_rpc_finish (once). Registering on
 * a stream that is already cancelled calls cb on the next loop turn. Unary
 * calls never call it: their cancellation shows only when answered. */
void td_rpc_on_cancel(td_rpc_call *c, void (*cb)(void *arg, td_rpc_call *c), void *arg);
/* Streams: cb runs on the loop each time a write completes and nothing
 * waits behind the next one (td_rpc_pending is then 0 or 1), while the
 * stream is neither finished nor cancelled, so that a producer can send
 * the next messages only as the client takes them. */
void td_rpc_on_drain(td_rpc_call *c, void (*cb)(void *arg, td_rpc_call *c), void *arg);
int td_rpc_is_cancelled(const td_rpc_call *c);
/* The client's address ("unix:", "ipv4:127.0.0.1:5555") for logs. */
const char *td_rpc_peer(const td_rpc_call *c);
/* The identity authorize recorded for the call (a principal's name and an
 * opaque tag, its role); NULL before or without one. */
void td_rpc_set_identity(td_rpc_call *c, const char *name, int tag);
const char *td_rpc_identity(const td_rpc_call *c, int *tag);
/* The method row the call came in on. */
const td_rpc_method *td_rpc_method_of(const td_rpc_call *c);

#endif
