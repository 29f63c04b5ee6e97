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
#define TD_JOB_MAX_RESUMES 16 /* the newest are kept */
#define TD_JOB_NAME_MAX 32    /* checkpoint file names */

/* Why a worker is asked to stop. */
enum { TD_STOP_NONE = 0, TD_STOP_CANCEL = 1, TD_STOP_SHUTDOWN = 2 };

struct td_watch;
struct td_rpc_call;

/* A checkpoint file the job wrote. */
typedef struct td_job_ckpt {
  char file[TD_JOB_NAME_MAX]; /* "" when none yet */
  int64_t step;
  uint32_t epochs_completed;
  int64_t bytes;
  int64_t time_ns;
  char reason[16];
  double write_sec, stall_ms;
} td_job_ckpt;

/* A restart of the job after a daemon stop or crash. */
typedef struct td_job_resume {
  int64_t time_ns;
  int64_t step;
  char checkpoint[TD_JOB_NAME_MAX];
  char note[512];
} td_job_resume;

/* A SaveCheckpoint call waiting for the checkpoint of its request. */
typedef struct td_save_wait {
  struct td_rpc_call *call;
  uint64_t gen;
} td_save_wait;

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
  int64_t prom_step;               /* step points the exporter has observed */

  /* Devices held while running (GPUs when on_gpu). */
  int on_gpu;
  int n_devices;
  int devices[TD_JOB_MAX_DEVICES];
  uint32_t threads;                /* compute threads for the job */

  /* The worker thread, and the flag it polls between steps. */
  pthread_t thread;
  int has_thread;
  atomic_int stop;

  /* Checkpoints, and the restarts that resumed from them. */
  td_job_ckpt ckpt;
  uint32_t ckpts_written;
  char ckpt_error[TD_ERRMSG_MAX + 32];
  td_job_resume resumes[TD_JOB_MAX_RESUMES];
  size_t n_resumes;
  int interrupted; /* was running when the daemon stopped */

  /* SaveCheckpoint requests: counted by the loop, taken by the worker at
   * a step boundary; each waiting call answers once a checkpoint of at
   * least its count is written. */
  atomic_uint_fast64_t save_req;
  td_save_wait *save_calls;
  size_t n_save_calls;

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
  Traind__V1__CheckpointInfo ckpt;
  Google__Protobuf__Timestamp ckpt_time;
  char ckpt_path[4200];
  Traind__V1__Resume resumes[TD_JOB_MAX_RESUMES];
  Traind__V1__Resume *resume_ptrs[TD_JOB_MAX_RESUMES];
  Google__Protobuf__Timestamp resume_times[TD_JOB_MAX_RESUMES];
  char ckpt_dir[4096];
} td_job_msg;

/* state_dir: for the checkpoint paths shown (NULL: none). */
void td_job_msg_fill(td_job_msg *m, td_job *j, const char *state_dir);
/* The job's checkpoint directory: state_dir/checkpoints/ID. */
void td_job_ckpt_dir(const td_job *j, const char *state_dir, char *buf, size_t len);
/* Fills a CheckpointInfo from a checkpoint record (path storage in buf). */
void td_job_ckpt_info(const td_job_ckpt *c, const char *dir, Traind__V1__CheckpointInfo *m,
                      Google__Protobuf__Timestamp *t, char *buf, size_t len);
/* Records a resume, dropping the oldest when full. */
void td_job_add_resume(td_job *j, const td_job_resume *r);
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
