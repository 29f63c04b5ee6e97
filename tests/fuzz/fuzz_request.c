/* Fuzz target: every request message of the daemon's services, decoded the
 * way the rpc layer decodes a call's payload (td_pbgrpc_unpack on a gRPC
 * byte buffer, then the UTF-8 check of every string), then printed as proto3 JSON (what trainctl and the logs
 * show) and, for SubmitJob, validated and compiled as h_submit does before
 * it touches daemon state.
 *
 * The first input byte picks the method (over traind.v1.Trainer and
 * grpc.health.v1.Health, so a method added to a service is fuzzed without
 * touching this file); the rest is the payload. A decoded message must
 * print and parse back to the same bytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/slice.h>

#include "grpc/health/v1/health.pb-c.h"
#include "pbgrpc.h"
#include "pbjson.h"
#include "traind/v1/trainer.pb-c.h"

#include "fuzz_common.h"

static const ProtobufCServiceDescriptor *const services[] = {
    &traind__v1__trainer__descriptor,
    &grpc__health__v1__health__descriptor,
};

static const ProtobufCMethodDescriptor *pick_method(uint8_t b) {
  size_t total = 0;
  for (size_t i = 0; i < sizeof services / sizeof services[0]; i++)
    total += services[i]->n_methods;
  size_t k = b % total;
  for (size_t i = 0; i < sizeof services / sizeof services[0]; i++) {
    if (k < services[i]->n_methods)
      return &services[i]->methods[k];
    k -= services[i]->n_methods;
  }
  return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  grpc_init();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const ProtobufCMethodDescriptor *m = pick_method(data[0]);
  grpc_slice sl = grpc_slice_from_copied_buffer((const char *)data + 1, size - 1);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  char why[160];
  why[0] = 0;
  ProtobufCMessage *req = td_pbgrpc_unpack(m->input, bb, why, sizeof why);
  grpc_byte_buffer_destroy(bb);
  if (!req)
    return 0;
  td_error err = {0};
  if (pbjson_check_utf8(req, NULL, &err)) {
    /* Refused before any handler, as the rpc layer does. */
    td_fuzz_check(err.msg[0] != 0, "a UTF-8 refusal without a message");
    protobuf_c_message_free_unpacked(req, NULL);
    return 0;
  }
  td_fuzz_check_roundtrip(req);
  if (m->input == &traind__v1__submit_job_request__descriptor) {
    const Traind__V1__SubmitJobRequest *r = (const void *)req;
    if (r->spec)
      td_fuzz_validate_and_compile(r->spec);
  }
  protobuf_c_message_free_unpacked(req, NULL);
  return 0;
}
