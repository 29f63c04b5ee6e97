/* Job records: what the daemon knows about a job, its protobuf form, and
 * its file in the state directory (written atomically). */
#ifndef TD_JOBS_H
#define TD_JOBS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "error.h"
#include "metrics.h"
#include "traind/v1/trainer.pb-c.h"

#define TD_JOB_ID_MAX 32
#define TD_JOB_MAX_DEVICES 64

/* Why a worker is asked to stop. */
enum { TD_STOP_NONE = 0, TD_STOP_CANCEL = 1, TD_STOP_SHUTDOWN = 2 };

struct td_watch;
struct td_rpc_call;

typedef struct td_job {
  char id[TD_JOB_ID_MAX];
  char *name;                      /* owned */
  Traind__V1__JobSpec *spec;       /* owned */
  Traind__V1__JobState state;
  int64_t created_ns, started_ns, finished_ns; /* wall clock; 0: not yet */
  uint64_t seq;                    /* submission order */
  char error[TD_ERRMSG_MAX];
  int error_code;                  /* grpc status code */

  /* Progress, as the worker reported it. */
  int64_t total_steps;
  uint32_t total_epochs, steps_per_epoch;
  double compile_ms;
  int cache_hit;

  td_metrics metrics;              /* live series (latest kept when loaded) */

  /* Devices held while running. */
  int n_devices;
  int devices[TD_JOB_MAX_DEVICES];
  uint32_t threads;                /* compute threads for the job */

  /* The worker thread, and the flag it polls between steps. */
  pthread_t thread;
  int has_thread;
  atomic_int stop;

  /* Loop-thread bookkeeping: metric streams and pending CancelJob calls. */
  struct td_watch *watchers;
  struct td_rpc_call **cancel_calls;
  size_t n_cancel_calls;
} td_job;

/* A new QUEUED job taking ownership of spec. */
td_job *td_job_new(Traind__V1__JobSpec *spec, const char *name, uint64_t seq);
void td_job_free(td_job *j);
int td_job_is_final(const td_job *j);
const char *td_job_state_name(Traind__V1__JobState s);

/* Storage for a Job message that points into a td_job (no allocation):
 * valid while the job is unchanged. */
typedef struct td_job_msg {
  Traind__V1__Job job;
  Google__Protobuf__Timestamp created, started, finished;
  Traind__V1__Progress progress;
  Traind__V1__LatestMetrics metrics;
  char names[TD_JOB_MAX_DEVICES][16];
  char *devices[TD_JOB_MAX_DEVICES];
} td_job_msg;

void td_job_msg_fill(td_job_msg *m, td_job *j);
void td_timestamp_set(Google__Protobuf__Timestamp *t, int64_t ns);

/* Writes state_dir/jobs/ID.pb: temporary file, fsync, rename, fsync of the
 * directory, so a record is complete or absent. */
int td_job_save(td_job *j, const char *state_dir, td_error *err);
/* Reads every record in state_dir/jobs (creating the directory when
 * missing). Unreadable records are skipped with a warning in `warnings`
 * (a callback per file). Temporary leftovers are removed. */
int td_job_load_all(const char *state_dir, td_job ***out, size_t *n,
                    void (*warn)(const char *path, const char *why),
                    td_error *err);

#endif
