/* Job specs: loading a job file and checking a JobSpec before it runs. */
#ifndef TD_JOBSPEC_H
#define TD_JOBSPEC_H

#include "error.h"
#include "traind/v1/job.pb-c.h"

/* Parses a YAML or JSON job file (the proto3 JSON mapping of JobSpec) and
 * validates it. Free *out with td_jobspec_free. */
int td_jobspec_load(const char *path, Traind__V1__JobSpec **out, td_error *err);
/* Parses a document held in memory (same rules as a file). */
int td_jobspec_parse(const char *text, size_t len, Traind__V1__JobSpec **out,
                     td_error *err);
/* Checks a JobSpec however it arrived (file or RPC): required parts and
 * value bounds, with the failing field's path in the message. */
int td_jobspec_validate(const Traind__V1__JobSpec *spec, td_error *err);
void td_jobspec_free(Traind__V1__JobSpec *spec);

#endif
