/* The client side of traind's gRPC API, on the gRPC C core API: blocking
 * unary calls and server-streaming reads with deadlines. Every gRPC call of
 * trainctl lives behind this interface. One client per thread. */
#ifndef TD_RPC_CLIENT_H
#define TD_RPC_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct td_rpc_client td_rpc_client;

/* target: gRPC target syntax, "unix:/run/traind/traind.sock" or
 * "host:port". Creating a client does not connect yet. NULL on failure. */
td_rpc_client *td_rpc_client_open(const char *target);
void td_rpc_client_close(td_rpc_client *c);

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
