/* HDF5 checkpoints: a job's parameter pytree, optimizer state and position,
 * in one file that h5py opens directly. The layout is documented in
 * docs/checkpoint-format.md.
 *
 * Writing is complete or absent: the file is built in memory (HDF5's core
 * driver), written to `dir/.name.tmp` and fsynced, renamed over `path`, and
 * the directory is fsynced. A crash leaves at most a `.name.tmp` file, which
 * is never read as a checkpoint.
 * Reading validates everything (magic, version, every dataset's presence,
 * shape and dtype, no extra leaves, the digest) before it touches the
 * state, so a refused file leaves the state as it was.
 *
 * A checkpoint is bound to the job that wrote it: it carries the job's id,
 * the hash of the parts of its spec that determine the training state
 * (td_ckpt_spec_hash) and its position, and a SHA-256 digest covers all of
 * them together with every tensor. Whoever resumes from a file compares the
 * binding with its own job (td_saver_resume). */
#ifndef TD_CHECKPOINT_H
#define TD_CHECKPOINT_H

#include <stdint.h>

#include "error.h"
#include "plan.h"
#include "prng.h"
#include "traind/v1/job.pb-c.h"

#define TD_CKPT_FORMAT "traind-checkpoint"
#define TD_CKPT_VERSION 2
/* Room for a job id (`job_id`), and for a SHA-256 in lowercase hex. */
#define TD_CKPT_JOB_ID_MAX 64
#define TD_CKPT_HASH_HEX 65

/* Where a job stands, stored as root attributes next to the tensors. */
typedef struct td_ckpt_meta {
  int64_t step;           /* updates applied (the `step` attribute) */
  uint32_t epoch;         /* 1-based epoch the next step belongs to */
  uint32_t step_in_epoch; /* steps of that epoch already taken */
  /* That epoch's running sums over its steps taken: batch losses and
   * correct predictions (`epoch_loss_sum`, `epoch_correct_sum`, float64). */
  double epoch_loss_sum, epoch_correct_sum;
  td_key root_key; /* the job's root PRNG key (`prng_key`, uint32[2]) */
  uint64_t seed;   /* training.seed */
  /* The binding: the job the file belongs to and td_ckpt_spec_hash of its
   * spec (empty strings are written as they are, and match no job). */
  char job_id[TD_CKPT_JOB_ID_MAX];
  char spec_hash[TD_CKPT_HASH_HEX];
  char *spec_json; /* the job spec as JSON; owned, may be NULL on write */
  /* A language model's tokens, written as /vocab (uint32, the code point
   * or byte of each token id) with attribute tokens "char" or "byte";
   * borrowed, written only (n_vocab 0: none). */
  const uint32_t *vocab;
  uint32_t n_vocab;
  int vocab_bytes;
} td_ckpt_meta;

/* The SHA-256 (lowercase hex) of the parts of spec that determine a job's
 * training state at a given step: model, optimizer, the training data
 * (dataset without its test files and test_limit), training.batch_size,
 * training.seed and checkpoint.init_from, as the protobuf encoding of a
 * JobSpec holding only those fields (docs/checkpoint-format.md). Epochs,
 * max_steps, evaluation, logging, devices, priority, the name and the
 * checkpoint schedule change what is run or reported, not the state. */
int td_ckpt_spec_hash(const Traind__V1__JobSpec *spec, char out[TD_CKPT_HASH_HEX], td_error *err);

/* Memory for building files, kept between writes by a caller that writes
 * many (fresh memory of a file's size costs a page fault per 4 KiB). Zero
 * it before the first use; free with td_ckpt_buffer_free. */
typedef struct td_ckpt_buffer {
  void *p;
  size_t cap;
} td_ckpt_buffer;

void td_ckpt_buffer_free(td_ckpt_buffer *b);

/* The host-side image of a state, for writing from a snapshot taken between
 * steps (so that training does not wait for the disk). */
typedef struct td_ckpt_image {
  const td_plan *plan;
  const float *params;    /* (n_params) host memory */
  const float *opt_state; /* (optim.state_slots * n_params) host memory */
  const float *stats;     /* (n_stats) host memory: batch norms' running statistics */
  int64_t count;          /* updates applied: /opt_state/count */
  td_ckpt_buffer *reuse;  /* optional: build the file in this memory */
} td_ckpt_image;

/* Writes a complete checkpoint of st (parameters, optimizer state per stage,
 * update count) and meta to path, atomically. On failure nothing new is left
 * at path (a previous file there stays untouched) and the temporary file is
 * removed. The one exception is a failing fsync of the directory after the
 * rename: the new, complete file is then in place and the error says so. */
int td_ckpt_write(const char *path, const td_state *st, const td_ckpt_meta *meta, td_error *err);
/* The same from a host image. Makes no backend calls, so it can run on a
 * writer thread from a snapshot copied out between steps (Debian's HDF5 is
 * built thread-safe: its calls are serialized by the library). */
int td_ckpt_write_image(const char *path, const td_ckpt_image *img, const td_ckpt_meta *meta,
                        td_error *err);

/* Validates the checkpoint at path against st's plan and loads it: every
 * parameter and optimizer-state leaf present with its shape and float32, no
 * extra leaves, the digest matching. Sets st->step from /opt_state/count
 * and fills *meta (free with td_ckpt_meta_free; meta may be NULL). On any
 * refusal the state is unchanged and the message names the problem. */
int td_ckpt_read(const char *path, td_state *st, td_ckpt_meta *meta, td_error *err);
void td_ckpt_meta_free(td_ckpt_meta *m);
/* Reads only the root attributes of path (format, version, binding,
 * position) into *meta, for deciding whether a file belongs to a job before
 * loading it. Refuses what td_ckpt_read would refuse in them, among them
 * files of format version 1, which carry no binding. */
int td_ckpt_read_binding(const char *path, td_ckpt_meta *meta, td_error *err);

/* Loads only /params (for example a file written with h5py from JAX
 * parameters) into st->params. Float64 datasets are converted. A mismatch is
 * one error listing every missing, extra and misshapen leaf. The optimizer
 * state and step are left alone. */
int td_ckpt_load_params(const char *path, td_state *st, td_error *err);
/* The same checks without loading: whether path's /params fit plan. */
int td_ckpt_check_params(const char *path, const td_plan *plan, td_error *err);

/* A language model's vocabulary (/vocab): *vocab (malloc'd, *n entries)
 * the code point or byte of each token id, *bytes whether they are bytes.
 * TD_ENOTFOUND when the file has none (a job not trained on text). */
int td_ckpt_read_vocab(const char *path, uint32_t **vocab, uint32_t *n, int *bytes, td_error *err);

#endif
