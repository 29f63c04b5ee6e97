/* Job specs: loading a job file and checking a JobSpec before it runs. */
#ifndef TD_JOBSPEC_H
#define TD_JOBSPEC_H

#include <stdint.h>

#include "error.h"
#include "traind/v1/job.pb-c.h"

/* The largest model a job may describe (docs/job-spec.md, "Limits"):
 * entries in model.layers, parameters (weights and biases), and the
 * floating-point operations of one training step over the whole batch,
 * counted as 6 x training.batch_size x the weights of the dense layers
 * (forward, and the two gradients of backward). Generous for real models;
 * they keep a hostile or mistaken spec from costing the daemon minutes to
 * check or terabytes to run. */
#define TD_JOB_MAX_LAYERS 4096
#define TD_JOB_MAX_PARAMS ((uint64_t)1 << 31)
#define TD_JOB_MAX_STEP_FLOPS 1e15

/* Parses a YAML or JSON job file (the proto3 JSON mapping of JobSpec) and
 * validates it. Free *out with td_jobspec_free. */
int td_jobspec_load(const char *path, Traind__V1__JobSpec **out, td_error *err);
/* Parses a document held in memory (same rules as a file). */
int td_jobspec_parse(const char *text, size_t len, Traind__V1__JobSpec **out, td_error *err);
/* Checks a JobSpec however it arrived (file or RPC): required parts and
 * value bounds, with the failing field's path in the message, and the
 * model's size against the limits above. Linear in the spec's size. */
int td_jobspec_validate(const Traind__V1__JobSpec *spec, td_error *err);

/* Size limits of a job, well below gRPC's 4 MiB message limit, so that
 * every reply that carries a job (GetJob, a ListJobs page, a WatchMetrics
 * message) fits a client's default receive limit: a JobSpec packs to at
 * most 1 MiB and a job name has at most 1 KiB (docs/job-spec.md, Limits). */
#define TD_JOBSPEC_MAX_BYTES ((size_t)1 << 20)
#define TD_JOB_NAME_MAX_BYTES ((size_t)1024)
/* The spec's packed size and its name's length against those limits
 * (TD_EINVAL naming both sizes). Job files are checked by td_jobspec_load
 * and td_jobspec_parse; SubmitJob checks the request's spec. */
int td_jobspec_check_size(const Traind__V1__JobSpec *spec, td_error *err);
int td_job_name_check(const char *field, const char *name, td_error *err);
void td_jobspec_free(Traind__V1__JobSpec *spec);

#endif
