/* Fuzz target: a job file as traind reads it (YAML or JSON through pbjson),
 * then what SubmitJob does with a parsed spec that involves no files:
 * validation and compilation of the step plan.
 *
 * Besides the sanitizers' findings it checks properties that every input
 * must keep:
 *   - a failure always comes with a message;
 *   - a parsed spec printed as proto3 JSON (pbjson_emit) parses back to the
 *     same message, byte for byte once packed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobspec.h"
#include "pbjson.h"
#include "plan.h"
#include "traind/v1/job.pb-c.h"

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Traind__V1__JobSpec *spec = NULL;
  td_error err = {0};
  int rc = td_jobspec_parse((const char *)data, size, &spec, &err);
  if (rc) {
    td_fuzz_check(err.msg[0] != 0, "a parse failure without a message");
    td_fuzz_check(spec == NULL, "a parse failure that returned a spec");
    return 0;
  }
  td_fuzz_check_roundtrip(&spec->base);
  td_fuzz_validate_and_compile(spec);
  td_jobspec_free(spec);
  return 0;
}
