/* The client side of traind's gRPC API, on the gRPC C core API: blocking
 * unary calls and server-streaming reads with deadlines. Every gRPC call of
 * trainctl lives behind this interface. One client per thread. */
#ifndef TD_RPC_CLIENT_H
#define TD_RPC_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct td_rpc_client td_rpc_client;

/* target: gRPC target syntax, "unix:/run/traind/traind.sock" or
 * "host:port". Creating a client does not connect yet. NULL on failure.
 * Plaintext, without credentials. */
td_rpc_client *td_rpc_client_open(const char *target);

/* How a client proves who it is and checks whom it talks to. Every string
 * is NUL-terminated and is copied by td_rpc_client_open_opts. */
typedef struct td_rpc_client_opts {
  /* TLS when set, or when any of the four below is set; plaintext otherwise. */
  int tls;
  /* PEM certificates that verify the server; NULL: the system's roots. */
  const char *ca_pem;
  /* The client's certificate chain and private key (PEM), both or neither. */
  const char *cert_pem, *key_pem;
  /* The name the server's certificate must hold (and the call authority)
   * instead of the target's host; NULL: the target's. */
  const char *server_name;
  /* Sent as "authorization: Bearer TOKEN" in the initial metadata of every
   * call (also over a unix socket); NULL: none. */
  const char *token;
} td_rpc_client_opts;

/* As td_rpc_client_open, with credentials (opts NULL: none). NULL on
 * failure (an empty target, a key pair with one half missing). */
td_rpc_client *td_rpc_client_open_opts(const char *target, const td_rpc_client_opts *opts);
void td_rpc_client_close(td_rpc_client *c);

/* Keeps gRPC's own log lines (a failed TLS handshake, ...) off stderr,
 * since every failure comes back as a status to report; GRPC_VERBOSITY in
 * the environment brings them back. Process-wide: for a command-line
 * program, called once before any client is opened. */
void td_rpc_client_quiet(void);

/* The result of a call: grpc status code and its message. */
typedef struct td_rpc_status {
  int code; /* grpc_status_code; 0 is OK */
  char message[1024];
} td_rpc_status;

/* A unary call. timeout_sec <= 0 means no deadline. On OK, *response is the
 * unpacked reply (free with protobuf_c_message_free_unpacked(*response,
 * NULL)); otherwise *response is NULL. Returns st->code. A daemon that
 * cannot be reached gives UNAVAILABLE with a message naming the target. */
int td_rpc_call_unary(td_rpc_client *c, const char *method, const ProtobufCMessage *request,
                      const ProtobufCMessageDescriptor *response_desc, ProtobufCMessage **response,
                      double timeout_sec, td_rpc_status *st);

/* A server-streaming call: on_message runs for every message received
 * (the message is freed after it returns); a nonzero return cancels the
 * call. Returns the final status code (CANCELLED after a cancel). */
int td_rpc_call_stream(td_rpc_client *c, const char *method, const ProtobufCMessage *request,
                       const ProtobufCMessageDescriptor *response_desc,
                       int (*on_message)(void *arg, const ProtobufCMessage *m), void *arg,
                       double timeout_sec, td_rpc_status *st);

/* Raw bytes, for tests of malformed input: sends `len` bytes as the request
 * (bytes NULL: no request message at all, only the half-close) and returns
 * the status (the reply, if any, is discarded). */
int td_rpc_call_raw(td_rpc_client *c, const char *method, const void *bytes, size_t len,
                    double timeout_sec, td_rpc_status *st);

#endif
