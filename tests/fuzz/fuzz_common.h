/* Shared checks of the fuzz targets (tests/fuzz/). Each check that fails
 * prints what broke and aborts, which libFuzzer and the corpus replay both
 * report as a crash with the input kept. */
#ifndef TD_FUZZ_COMMON_H
#define TD_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "jobspec.h"
#include "pbjson.h"
#include "plan.h"
#include "train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static inline void td_fuzz_check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz check failed: %s\n", what);
    abort();
  }
}

/* m printed as proto3 JSON parses back to a message that prints the same.
 * (Texts, not packed bytes, are compared: unknown fields a decoder keeps
 * have no JSON form.) */
static inline void td_fuzz_check_roundtrip(const ProtobufCMessage *m) {
  char *json = pbjson_emit(m, PBJSON_PROTO_NAMES);
  if (!json)
    return; /* a Timestamp or Duration outside the mapping's range */
  ProtobufCMessage *back = NULL;
  td_error err = {0};
  if (pbjson_parse(m->descriptor, json, strlen(json), &back, &err)) {
    fprintf(stderr, "emitted JSON does not parse back: %s\n%.2000s\n", err.msg, json);
    abort();
  }
  char *again = pbjson_emit(back, PBJSON_PROTO_NAMES);
  td_fuzz_check(again != NULL, "a parsed message that does not print");
  if (strcmp(json, again) != 0) {
    fprintf(stderr, "emitted JSON parses back to another message:\n%.2000s\n%.2000s\n", json,
            again);
    abort();
  }
  free(again);
  free(json);
  protobuf_c_message_free_unpacked(back, NULL);
}

/* What SubmitJob does with a spec before it needs files or devices. */
static inline void td_fuzz_validate_and_compile(const Traind__V1__JobSpec *spec) {
  td_error err = {0};
  if (td_jobspec_validate(spec, &err)) {
    td_fuzz_check(err.msg[0] != 0, "a validation failure without a message");
    return;
  }
  uint32_t devices = (uint32_t)td_job_device_count(spec);
  uint32_t batch = spec->training->batch_size;
  if (!devices || batch % devices)
    return;
  td_plan *p = NULL;
  memset(&err, 0, sizeof err);
  if (td_plan_compile(spec->model, spec->optimizer, batch / devices, "fuzz", &p, &err)) {
    td_fuzz_check(err.msg[0] != 0, "a compile failure without a message");
    return;
  }
  td_plan_free(p);
}

#endif
