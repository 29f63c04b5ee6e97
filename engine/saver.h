/* A job's checkpoint directory and its writer.
 *
 * Files are DIR/ckpt-<step, 12 digits>.h5 (docs/checkpoint-format.md).
 * The trainer's thread takes a snapshot at a step boundary (copies the
 * parameters and optimizer state out of the backend into the saver's host
 * buffer, the only time training waits); the saver's own thread writes the
 * file, applies the retention rule and reports through a callback. One
 * snapshot is in flight at a time: a snapshot asked for while the writer is
 * busy is refused, and the caller asks again at a later boundary. */
#ifndef TD_SAVER_H
#define TD_SAVER_H

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "train.h"

#define TD_CKPT_NAME_MAX 32

/* Why a checkpoint was taken. */
typedef enum td_ckpt_reason {
  TD_CKPT_PERIODIC = 0, /* every_steps / every_seconds */
  TD_CKPT_REQUESTED,    /* SaveCheckpoint */
  TD_CKPT_FINAL,        /* the job's end */
  TD_CKPT_SHUTDOWN,     /* the daemon's stop */
} td_ckpt_reason;

const char *td_ckpt_reason_name(td_ckpt_reason r);

/* The file name of the checkpoint at step. */
void td_ckpt_name(int64_t step, char *buf, size_t len);

typedef struct td_ckpt_file {
  int64_t step;
  char name[TD_CKPT_NAME_MAX];
} td_ckpt_file;

/* The checkpoints in dir, newest (highest step) first. A missing directory
 * is an empty list. Free *out with free(). */
int td_ckpt_list(const char *dir, td_ckpt_file **out, size_t *n, td_error *err);
/* Removes the temporaries an interrupted write left in dir; returns how many
 * (negative on an unreadable directory). */
int td_ckpt_clean(const char *dir);
/* Keeps the newest keep_last checkpoints (0: all) and, when keep_every is
 * set, every checkpoint whose step is a multiple of it; removes the rest. */
int td_ckpt_prune(const char *dir, uint32_t keep_last, uint32_t keep_every, td_error *err);

/* What became of one snapshot. */
typedef struct td_saver_result {
  int rc;
  char msg[TD_ERRMSG_MAX];
  td_ckpt_reason reason;
  uint64_t gen; /* the caller's tag of the snapshot */
  int64_t step;
  uint32_t epoch; /* the position's epoch (1-based, next step's) */
  char name[TD_CKPT_NAME_MAX];
  int64_t bytes;
  double stall_ms;  /* the copy out of the backend */
  double write_sec; /* building, writing and syncing the file */
  int64_t time_ns;  /* wall clock when the file was complete */
} td_saver_result;

typedef void (*td_saver_done)(void *user, const td_saver_result *r);

/* What a saver writes for, and where. */
typedef struct td_saver_opts {
  const td_plan *plan;
  const char *dir;
  /* The binding of every file: the job's id ("run" for `traind run`) and
   * its spec, whose td_ckpt_spec_hash goes with it. The JSON of the spec
   * (spec_json) is stored as the job_spec attribute. All copied. */
  const char *job_id;
  const Traind__V1__JobSpec *spec;
  const char *spec_json;
  uint32_t keep_last, keep_every;
  td_saver_done done; /* runs on the writer thread after every snapshot's write */
  void *user;
} td_saver_opts;

typedef struct td_saver {
  char dir[PATH_MAX];
  const td_plan *plan;
  uint32_t keep_last, keep_every;
  char job_id[TD_CKPT_JOB_ID_MAX];
  char spec_hash[TD_CKPT_HASH_HEX];
  char *spec_json; /* owned */
  td_saver_done done;
  void *user;

  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, busy, quit;

  /* The snapshot being written (valid while busy). */
  float *host;             /* (n_params * (1 + state_slots)) */
  td_ckpt_buffer file_mem; /* where the writer builds files */
  td_ckpt_meta meta;
  td_saver_result res;

  int64_t last_step; /* step of the newest snapshot taken (or resumed) */
  double last_sec;   /* monotonic time of it (or of the start) */
  /* Step of the newest file known complete on disk: written by the writer
   * or resumed from; -1 when none. Under mu. */
  int64_t written_step;
} td_saver;

/* Creates o->dir when missing, removes its temporaries, hashes the spec
 * and starts the writer thread. */
int td_saver_start(td_saver *s, const td_saver_opts *o, td_error *err);
/* Nonzero while a snapshot is being written. */
int td_saver_busy(td_saver *s);
/* Copies t's state and position out and hands them to the writer. Returns
 * TD_EINVAL (and takes nothing) while the writer is busy. */
int td_saver_snapshot(td_saver *s, td_trainer *t, td_ckpt_reason reason, uint64_t gen,
                      td_error *err);
/* Continues t from the newest checkpoint in the directory that loads and
 * belongs to this saver's job: same job id, same spec hash, a position at
 * or before the job's end, named for its step (then td_trainer_resume's
 * checks: the tensors, the digest, the seed, the position against the
 * epoch length). Files that are refused are renamed NAME.refused, logged,
 * and described in note ("" when none). Returns 1 with the file's name in
 * file when t resumed, 0 when it starts from the beginning. */
int td_saver_resume(td_saver *s, td_trainer *t, char *file, size_t file_len, char *note,
                    size_t note_len);
/* Whether the job's periodic rule (every_steps, every_seconds) asks for a
 * checkpoint at this boundary. */
int td_saver_due(const td_saver *s, const Traind__V1__Checkpointing *c, int64_t step);
/* Waits until the writer is idle. */
void td_saver_wait(td_saver *s);

/* How td_saver_persist tries again. */
typedef struct td_saver_retry {
  double retry_sec; /* how long after the first failure to keep trying (0: once) */
  /* Polled while waiting between attempts: nonzero stops the retries (the
   * job is cancelled or the process stops). May be NULL. */
  int (*give_up)(void *user);
  /* The tag of each attempt's snapshot (td_saver_result.gen); NULL: 0. */
  uint64_t (*gen)(void *user);
  void *user;
} td_saver_retry;

/* Makes sure t's current state is in a complete file: waits for the
 * writer, and unless force is set returns at once when the newest file
 * written holds this step; otherwise snapshots it and, while the write
 * fails, tries again after 1, 2, 4, ... seconds (at most 30 apart) until
 * r->retry_sec have passed since the first failure. Every attempt is
 * reported through the saver's callback as usual. Returns TD_OK once the
 * file is complete; TD_ECANCELLED when give_up stopped the retries; else
 * the last failure, in a message that names the step, the attempts, the
 * write's error (its path and errno) and the newest checkpoint on disk. */
int td_saver_persist(td_saver *s, td_trainer *t, td_ckpt_reason reason, int force,
                     const td_saver_retry *r, td_error *err);
/* Waits for the writer, stops its thread and frees the saver. */
void td_saver_stop(td_saver *s);

#endif
