/* What runs around td_trainer_run for one job, the same in `traind run`
 * and in the daemon's workers:
 *  - admission (td_job_admit): the job's footprint against the memory for
 *    jobs and against the free memory of its GPUs, before anything is
 *    loaded;
 *  - checkpoints (td_driver_*): the saver with the job's retention
 *    (keep_last, default TD_DRIVER_KEEP_LAST; keep_every_steps), the resume
 *    from the newest checkpoint that loads, periodic and requested
 *    snapshots at step boundaries, and the last checkpoint of the run (at
 *    its end, with retries, or at a shutdown).
 * What differs between the two, where reports go, stays with the caller:
 * the saver's callback, the returned messages. */
#ifndef TD_DRIVER_H
#define TD_DRIVER_H

#include <stdatomic.h>
#include <stddef.h>

#include "error.h"
#include "footprint.h"
#include "saver.h"
#include "train.h"

#define TD_DRIVER_KEEP_LAST 3

/* What a job is admitted against. */
typedef struct td_admission {
  const td_memory_limit *mem; /* the memory for jobs; NULL: host memory not checked */
  /* 0: the job runs without checkpoints (no writer, no resume). */
  int checkpoints;
  /* The caller's own memory per job (the daemon's metric ring), added to
   * the footprint before it is checked. May be NULL. */
  void (*add)(void *user, td_footprint *f);
  void *add_user;
  /* A GPU job: the GPU of each of its n_gpus replicas, checked against its
   * free memory now (replica 0's also for a resume's second state when the
   * job has checkpoints), except those marked in unchecked (a GPU another
   * job holds now: what is free on it is not what the job will find). A
   * GPU whose memory cannot be queried is logged and not checked. */
  const int *gpus;
  const unsigned char *unchecked; /* (n_gpus) or NULL */
  int n_gpus;
} td_admission;

/* Sizes the job (td_job_footprint with o's data roots) into *out and
 * admits it: TD_OK, or TD_ENOMEM (RESOURCE_EXHAUSTED) with the message of
 * td_footprint_admit or td_footprint_fits; the sizing's own errors
 * otherwise (a missing dataset, a compile error). */
int td_job_admit(const Traind__V1__JobSpec *spec, const td_trainer_opts *o, const td_admission *a,
                 td_footprint *out, td_error *err);

/* One job's checkpoints. */
typedef struct td_driver_opts {
  const char *dir;        /* the job's checkpoint directory (created when missing) */
  const char *job_id;     /* the files' binding (td_saver_opts) */
  double final_retry_sec; /* how long a failed final checkpoint is retried */
  /* Checkpoints asked for so far (the daemon's SaveCheckpoint count), or
   * NULL: every request newer than the last snapshot is taken at the next
   * boundary the writer is free, and forces the last checkpoint. */
  atomic_uint_fast64_t *save_req;
  /* Nonzero ends the final checkpoint's retries (a cancel, a stop). */
  int (*give_up)(void *user);
  void *give_up_user;
  td_saver_done done; /* each file's outcome, on the writer thread */
  void *user;
} td_driver_opts;

typedef struct td_driver {
  td_saver saver;
  char *spec_json; /* the job's spec as JSON (PBJSON_PROTO_NAMES), owned */
  const Traind__V1__Checkpointing *policy;
  atomic_uint_fast64_t *save_req;
  uint64_t save_taken; /* requests covered by a snapshot */
  double final_retry_sec;
  int (*give_up)(void *user);
  void *give_up_user;
  int started;
} td_driver;

/* Where td_driver_start left the trainer. */
typedef struct td_driver_resumed {
  int resumed; /* 1: from file; 0: from the beginning */
  char file[TD_CKPT_NAME_MAX];
  char note[1024]; /* files refused on the way ("" when none) */
} td_driver_resumed;

/* Starts the saver for t's job and continues t from the newest checkpoint
 * in o->dir that loads and belongs to the job (td_saver_resume). */
int td_driver_start(td_driver *d, td_trainer *t, const td_driver_opts *o, td_driver_resumed *r,
                    td_error *err);
/* At a step boundary: a snapshot when one was asked for or the job's
 * periodic rule says so and the writer is free (otherwise at a later
 * boundary). Returns TD_OK, or the snapshot's failure (nothing was taken). */
int td_driver_boundary(td_driver *d, td_trainer *t, td_error *err);
/* After td_trainer_run returned rc: the last checkpoint, then the saver
 * stopped. rc TD_OK: the final checkpoint, retried for final_retry_sec; a
 * run whose training is done succeeds only once its state is on disk, so
 * its failure is the outcome (message in err). rc TD_ECANCELLED with
 * shutdown set (the process stops; the job runs again later): one try, a
 * failure described in warn and the outcome left TD_ECANCELLED. Any other
 * outcome keeps what is on disk. Returns the run's outcome. */
int td_driver_finish(td_driver *d, td_trainer *t, int rc, int shutdown, td_error *err,
                     td_error *warn);
/* Stops the saver when td_driver_finish did not (an early failure). */
void td_driver_stop(td_driver *d);

#endif
