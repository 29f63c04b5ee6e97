/* protobuf-c messages to and from gRPC byte buffers, shared by the daemon's
 * server and trainctl's client. */
#ifndef TD_PBGRPC_H
#define TD_PBGRPC_H

#include <grpc/byte_buffer.h>
#include <protobuf-c/protobuf-c.h>

/* Packs m straight into one gRPC slice. The caller owns the buffer. */
grpc_byte_buffer *td_pbgrpc_pack(const ProtobufCMessage *m);
/* Unpacks bb (decompressing if need be) as a message of type d; NULL when
 * the bytes are not one, or when a string field holds a NUL byte (which a C
 * string cannot carry); then `why` (when not NULL) says which field. Free
 * with protobuf_c_message_free_unpacked. */
ProtobufCMessage *td_pbgrpc_unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb,
                                   char *why, size_t whylen);

#endif
