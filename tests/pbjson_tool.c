/* A command-line driver for the proto3 JSON converter, so that other
 * implementations can be checked against it (tests/pbjson_interop.py):
 *
 *   pbjson_tool to-bin MESSAGE < text > packed
 *       parses YAML/JSON with pbjson_parse and writes the binary encoding
 *   pbjson_tool to-json MESSAGE [--indent] [--proto-names] [--emit-defaults] < packed > json
 *       reads the binary encoding and writes pbjson_emit's text
 *
 * MESSAGE is a full name such as pbjson.test.Everything or traind.v1.JobSpec.
 * Exit status: 0 done, 1 conversion failed (reason on stderr), 2 usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "pbjson.h"
#include "pbjson_test.pb-c.h"
#include "traind/v1/job.pb-c.h"

static const ProtobufCMessageDescriptor *const known[] = {
    &pbjson__test__everything__descriptor,    &pbjson__test__scalars__descriptor,
    &pbjson__test__repeats__descriptor,       &pbjson__test__wrappers__descriptor,
    &pbjson__test__node__descriptor,          &traind__v1__job_spec__descriptor,
    &google__protobuf__timestamp__descriptor, &google__protobuf__duration__descriptor,
};

/* Reads all of stdin into a malloc'd buffer (NUL-terminated). */
static char *read_stdin(size_t *len) {
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (n + 1 >= cap) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        return NULL;
      }
      buf = nb;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n - 1, stdin);
    n += got;
    if (got == 0)
      break;
  }
  if (buf)
    buf[n] = '\0';
  *len = n;
  return buf;
}

static int usage(void) {
  fprintf(stderr, "usage: pbjson_tool to-bin|to-json MESSAGE [--indent] [--proto-names] "
                  "[--emit-defaults]\nmessages:");
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    fprintf(stderr, " %s", known[i]->name);
  fputc('\n', stderr);
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 3)
    return usage();
  const ProtobufCMessageDescriptor *desc = NULL;
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (strcmp(known[i]->name, argv[2]) == 0)
      desc = known[i];
  if (!desc)
    return usage();
  unsigned flags = 0;
  for (int i = 3; i < argc; i++) {
    if (strcmp(argv[i], "--indent") == 0)
      flags |= PBJSON_INDENT;
    else if (strcmp(argv[i], "--proto-names") == 0)
      flags |= PBJSON_PROTO_NAMES;
    else if (strcmp(argv[i], "--emit-defaults") == 0)
      flags |= PBJSON_EMIT_DEFAULTS;
    else
      return usage();
  }
  size_t len;
  char *in = read_stdin(&len);
  if (!in) {
    fprintf(stderr, "pbjson_tool: out of memory reading stdin\n");
    return 1;
  }
  int status = 0;
  if (strcmp(argv[1], "to-bin") == 0) {
    td_error err = {0};
    ProtobufCMessage *m = NULL;
    if (pbjson_parse(desc, in, len, &m, &err) != 0) {
      fprintf(stderr, "pbjson_tool: %s\n", err.msg);
      status = 1;
    } else {
      size_t n = protobuf_c_message_get_packed_size(m);
      uint8_t *out = malloc(n ? n : 1);
      if (out && protobuf_c_message_pack(m, out) == n && fwrite(out, 1, n, stdout) == n) {
        status = 0;
      } else {
        fprintf(stderr, "pbjson_tool: cannot pack or write the message\n");
        status = 1;
      }
      free(out);
      protobuf_c_message_free_unpacked(m, NULL);
    }
  } else if (strcmp(argv[1], "to-json") == 0) {
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, (const uint8_t *)in);
    char *json = m ? pbjson_emit(m, flags) : NULL;
    if (!m) {
      fprintf(stderr, "pbjson_tool: stdin is not a valid %s\n", desc->name);
      status = 1;
    } else if (!json) {
      fprintf(stderr, "pbjson_tool: %s cannot be written as JSON\n", desc->name);
      status = 1;
    } else {
      fputs(json, stdout);
      fputc('\n', stdout);
    }
    free(json);
    if (m)
      protobuf_c_message_free_unpacked(m, NULL);
  } else {
    status = usage();
  }
  free(in);
  if (fflush(stdout) != 0)
    status = 1;
  return status;
}
