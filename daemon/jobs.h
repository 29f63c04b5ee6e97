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

/* A job id: "j-" and 1 to 29 characters of [0-9a-z] (td_job_id_valid);
 * the daemon makes "j-" + 14 hex digits (td_job_new). */
#define TD_JOB_ID_MAX 32
#define TD_JOB_MAX_RESUMES 16 /* the newest are kept */
#define TD_JOB_NAME_MAX 32    /* checkpoint file names */
#define TD_JOB_OWNER_MAX 160  /* a principal: "unix:" and a user, or a name */
/* The largest job record read from the state directory (bytes). */
#define TD_JOB_RECORD_MAX (8u << 20)

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

/* A job. Its id always satisfies td_job_id_valid (made by td_job_new or
 * checked on load), so it can name files: STATE_DIR/jobs/ID.pb,
 * checkpoints/ID, tensorboard/ID. */
typedef struct td_job {
  char id[TD_JOB_ID_MAX];
  int on_disk;                  /* its record file exists (claimed) */
  char *name;                   /* owned */
  char owner[TD_JOB_OWNER_MAX]; /* the submitting principal; "" in old records */
  Traind__V1__JobSpec *spec;    /* owned */
  Traind__V1__JobState state;
  int64_t created_ns, started_ns, finished_ns; /* wall clock; 0: not yet */
  uint64_t seq;                                /* submission order */
  char error[TD_ERRMSG_MAX];
  int error_code;           /* grpc status code */
  char note[TD_ERRMSG_MAX]; /* how a job that succeeded ended early (Job.note) */

  /* Progress, as the worker reported it. */
  int64_t total_steps;
  uint32_t total_epochs, steps_per_epoch;
  double compile_ms;
  int cache_hit;

  td_metrics metrics; /* live series (latest kept when loaded) */
  int64_t prom_step;  /* step points the exporter has observed */

  /* Devices held while running (GPUs when on_gpu): n_devices indices and
   * their names ("cpu:3"), in one block sized from the job's device count
   * (td_job_devices_reserve), owned by the job. */
  int on_gpu;
  int n_devices, cap_devices;
  int *devices;
  char **device_names;
  uint32_t threads; /* compute threads for the job */
  /* Host memory the job holds while it runs (td_footprint host_bytes),
   * counted against the daemon's memory for jobs; mem_known 0 until sized
   * (at submission, or by the scheduler for a job loaded at start). */
  size_t mem_bytes;
  int mem_known;

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
  /* Daemon stops while the job ran, since its newest checkpoint
   * (Job.crash_count): counted at load for a record that says RUNNING,
   * reset by a checkpoint written. */
  uint32_t crashes;

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

/* A new QUEUED job taking ownership of spec, with a new id: ids grow
 * strictly within the process (the creation second and a counter) and past
 * every id td_job_load_all has seen, so no two jobs share one; the first
 * td_job_save also refuses a name already taken on disk. */
td_job *td_job_new(Traind__V1__JobSpec *spec, const char *name, uint64_t seq);
void td_job_free(td_job *j);
/* Whether id is a job id: "j-" and 1 to 29 characters of [0-9a-z]. Ids
 * name files and directories, so nothing else is one. */
int td_job_id_valid(const char *id);
/* The checks a JobSpec must pass to be run, the same for a SubmitJob
 * request and a record loaded from the state directory: present, and
 * td_jobspec_validate (required parts, bounds). What depends on the
 * moment (the daemon's devices, data roots and files, memory) is checked
 * by the caller. TD_EINVAL with the field's path. */
int td_job_check_spec(const Traind__V1__JobSpec *spec, td_error *err);

/* Storage for n devices (n_devices 0), replacing any; TD_ENOMEM. */
int td_job_devices_reserve(td_job *j, int n);
/* Appends device index dev (within the reserved count) and its name. */
void td_job_devices_add(td_job *j, int dev);
/* Frees the device storage; n_devices becomes 0. */
void td_job_devices_clear(td_job *j);
int td_job_is_final(const td_job *j);
const char *td_job_state_name(Traind__V1__JobState s);

/* Storage for a Job message that points into a td_job (no allocation):
 * valid while the job is unchanged. */
typedef struct td_job_msg {
  Traind__V1__Job job;
  Google__Protobuf__Timestamp created, started, finished;
  Traind__V1__Progress progress;
  Traind__V1__LatestMetrics metrics;
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
 * directory, so a record is complete or absent. The first save of a new
 * job claims the name (a rename that never replaces): should a file of
 * that name exist, the job takes the next id, so a record is never
 * overwritten by another job's. */
int td_job_save(td_job *j, const char *state_dir, td_error *err);

/* What td_job_load_all did with a record it could not load as it was. */
typedef struct td_job_bad {
  const char *file;  /* the entry's name in state_dir/jobs */
  const char *aside; /* its new name there ("ID.pb.bad"), or NULL when it
                      * could not be renamed */
  const char *why;
  const char *job; /* the id it is listed under as FAILED, or NULL when
                      * it names no job of its own (unreadable, or its id is
                      * not its file name) */
} td_job_bad;

/* Reads every record in state_dir/jobs (creating the directory when
 * missing), checked as a submission is: only regular files of at most
 * TD_JOB_RECORD_MAX bytes named ID.pb, holding job ID, a known state, and,
 * for a job that would run (QUEUED, RUNNING), a spec that passes
 * td_job_check_spec. A record that fails is renamed aside (ID.pb.bad) and
 * reported through bad(); when its id is its file name the job is loaded
 * FAILED with the reason (and a fresh record saved), so it stays listed.
 * Temporary leftovers are removed. Ids made later are past every id
 * seen. */
int td_job_load_all(const char *state_dir, td_job ***out, size_t *n,
                    void (*bad)(const td_job_bad *b), td_error *err);

#endif
