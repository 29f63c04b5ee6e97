#include "pbgrpc.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

grpc_byte_buffer *td_pbgrpc_pack(const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  grpc_slice s = grpc_slice_malloc(n);
  protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  *v = 0;
  for (int shift = 0; shift < 64 && *p < end; shift += 7) {
    uint8_t b = *(*p)++;
    *v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80))
      return 0;
  }
  return -1;
}

/* Whether a string field anywhere in the encoded message holds a NUL byte.
 * protobuf-c's strings end at the first NUL, so such a string would arrive
 * cut short ("id\0x" read as "id"): a request holding one is refused. Bytes
 * that do not parse are left to protobuf-c to refuse. */
static const char *nul_string_field(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                                    int depth) {
  const uint8_t *end = p + n;
  if (depth > 64)
    return NULL;
  while (p < end) {
    uint64_t key, len;
    if (read_varint(&p, end, &key))
      return NULL;
    switch (key & 7) {
    case 0:
      if (read_varint(&p, end, &len))
        return NULL;
      break;
    case 1:
      p += 8;
      break;
    case 5:
      p += 4;
      break;
    case 2: {
      if (read_varint(&p, end, &len) || len > (uint64_t)(end - p))
        return NULL;
      const ProtobufCFieldDescriptor *f =
          protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
      if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(p, 0, len))
        return f->name;
      const char *inner = f && f->type == PROTOBUF_C_TYPE_MESSAGE
                              ? nul_string_field(f->descriptor, p, len, depth + 1)
                              : NULL;
      if (inner)
        return inner;
      p += len;
      break;
    }
    default:
      return NULL;
    }
  }
  return NULL;
}

ProtobufCMessage *td_pbgrpc_unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb,
                                   char *why, size_t whylen) {
  grpc_byte_buffer_reader r;
  if (why && whylen)
    why[0] = '\0';
  if (!grpc_byte_buffer_reader_init(&r, bb))
    return NULL;
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  const char *bad = nul_string_field(d, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), 0);
  if (bad && why && whylen)
    snprintf(why, whylen, "the string field '%s' holds a NUL byte", bad);
  ProtobufCMessage *m =
      bad ? NULL
          : protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
  grpc_slice_unref(s);
  return m;
}
