/* The training loop: what `traind run` drives and the daemon's job workers
 * reuse. A trainer owns one job's data, backend, plan reference and state;
 * td_trainer_run runs epochs of compiled steps and reports through hooks. */
#ifndef TD_TRAIN_H
#define TD_TRAIN_H

#include <pthread.h>
#include <stdint.h>

#include "backend.h"
#include "checkpoint.h"
#include "collective.h"
#include "data.h"
#include "error.h"
#include "examples.h"
#include "plan.h"
#include "prng.h"
#include "traind/v1/job.pb-c.h"

/* One step's metrics. */
typedef struct td_step_point {
  int64_t step;           /* 1-based: updates applied including this one */
  uint32_t epoch;         /* 1-based */
  uint32_t step_in_epoch; /* 1-based */
  float loss;             /* mean over the batch, before the update */
  float grad_norm;        /* global norm of the raw gradients */
  float lr;               /* learning rate used by this update */
  double step_ms;
  double examples_per_sec; /* over the epoch so far */
} td_step_point;

/* One epoch's metrics. Train figures average over the epoch's batches,
 * each measured before its update; test figures cover the whole test set. */
typedef struct td_epoch_point {
  uint32_t epoch;
  int64_t step;
  float train_loss, train_accuracy;
  int evaluated; /* test figures are present */
  int mid_epoch; /* an evaluation inside the epoch (training.eval_every_steps): the
                    training figures are of its steps so far */
  float test_loss, test_accuracy;
  double epoch_sec; /* training steps only */
  double eval_sec;
  double examples_per_sec;
  /* DP-SGD (training.dp_sgd): the privacy spent by the steps so far, epsilon
   * at delta (infinite without noise). */
  int has_epsilon;
  double epsilon, delta;
  /* training.per_example_report, at an epoch's end: the epoch's report
   * (the trainer's, valid during on_epoch); NULL otherwise. */
  const struct td_example_report *examples;
} td_epoch_point;

typedef struct td_trainer td_trainer;

typedef struct td_train_hooks {
  void *user;
  void (*on_step)(void *user, const td_trainer *t, const td_step_point *p);
  void (*on_epoch)(void *user, const td_trainer *t, const td_epoch_point *p);
  /* Called at every step boundary where the run could stop and resume:
   * after each step inside an epoch and after each epoch's end (its
   * evaluation and on_epoch included), with t's position set. The place to
   * take checkpoints. */
  void (*at_boundary)(void *user, td_trainer *t);
  /* Polled before each step; nonzero stops the run with TD_ECANCELLED. */
  int (*should_stop)(void *user);
} td_train_hooks;

/* Makes replica `rank`'s backend (threads: its share of the CPU threads). */
typedef int (*td_backend_factory)(void *arg, int rank, int threads, td_backend **out,
                                  td_error *err);

/* Makes the communicator of a job's n replicas (n > 1) from their
 * backends, e.g. NCCL over their GPUs and on their streams. */
typedef int (*td_comm_factory)(void *arg, int n, td_backend *const *backends, td_comm **out,
                               td_error *err);

typedef struct td_trainer_opts {
  const char *const *data_roots;
  size_t n_data_roots;
  int threads;          /* CPU threads for the job, all replicas together; <= 0: all */
  td_plan_cache *cache; /* shared compile cache; NULL: a private one */
  /* The replicas' backends; NULL: the CPU backend. A backend whose memory
   * is not host memory gets the datasets uploaded once, per replica. */
  td_backend_factory backend;
  void *backend_arg;
  const char *device_set; /* the plan cache's device key; NULL: "cpu:0" */
  /* The replicas' communicator when there are several; NULL: the
   * in-process one over host memory (host-memory backends only). */
  td_comm_factory comm;
  void *comm_arg;
  /* Run steps op by op even on a backend that can record them as graphs
   * (for comparing the two, and as a way out should recording fail). */
  int no_record;
} td_trainer_opts;

/* One replica of a data-parallel job (pmap over devices.count devices): a
 * backend and a state of its own, driven by its own thread (replica 0 by
 * the caller's). */
typedef struct td_replica {
  struct td_trainer *owner;
  int rank;
  td_backend *be;
  td_state *st; /* replica 0: &trainer->st; the others: &own */
  td_state own;
  /* The datasets in the backend's memory (the host arrays themselves for
   * a host-memory backend; else copies, uploaded once). */
  const float *train_x, *test_x;
  const int32_t *train_y, *test_y;
  /* The compiled step's inputs and outputs in the backend's memory: the
   * epoch's example order, the offsets 0..shard-1 (for evaluation), the
   * epoch's step table (a td_step_record per step), the record of the step
   * being run, the table's counter, and the epoch's per-step metrics
   * (TD_STEP_METRICS floats per step). A host-memory backend uses the
   * trainer's order, offsets and table in place. */
  const uint32_t *order, *iota;
  const void *table;
  void *cur;
  uint32_t *counter;
  float *metrics;
  float *metrics_host; /* (steps_per_epoch * TD_STEP_METRICS) read back */
  /* training.per_example_report: each step's per-example squared norms
   * (the plan's pe_acc, 2 * shard floats a step) and their copy read back. */
  float *pe_norms, *pe_norms_host;
  /* DP-SGD with Poisson batches: the sum of a step's micro-batches'
   * gradients (n_params floats). */
  float *acc;
  void *owned[12]; /* backend allocations to release */
  int n_owned;
  /* The recorded step: graph1 one step, graphn graph_steps steps; NULL
   * while not recorded. The first step of a job runs unrecorded (warm-up:
   * the libraries set themselves up), the graphs are recorded after it. */
  void *graph1, *graphn;
  int recording; /* step_body is being recorded, not run */
  int warm;      /* a step has run unrecorded */
  int op_by_op;  /* recording failed: steps run op by op */
  pthread_t thread;
  int has_thread;
  /* A task's outputs. */
  int rc;
  td_error err;
  double sums[2]; /* evaluation: loss sum and correct over its rows */
} td_replica;

/* The metrics a step records: its shard's loss sum and correct count, and
 * the squared norm of the averaged gradients. */
enum { TD_STEP_METRICS = 3 };

struct td_trainer {
  const Traind__V1__JobSpec *spec; /* borrowed; outlives the trainer */
  td_dataset train, test;
  int has_test;
  td_backend *be;
  td_plan_cache *cache;
  td_plan_cache own_cache;
  const td_plan *plan; /* compiled for one replica's shard of the batch */
  int plan_hit;
  td_state st; /* replica 0's: the one checkpoints and callers read */
  td_key init_key, shuffle_key, dropout_key;
  uint32_t *order; /* (train.n) this epoch's example order */
  uint32_t *iota;  /* (batch) 0..batch-1, offsets for evaluation */
  uint32_t batch, steps_per_epoch, epochs, eval_every, log_every;
  uint32_t eval_steps;      /* training.eval_every_steps (0: none) */
  uint32_t byte_vocab[256]; /* a byte-token text's vocabulary, for checkpoints */
  int64_t total_steps;
  /* The position: the epoch the next step belongs to (1-based), the steps
   * of it already taken, and that epoch's running sums of batch loss and
   * correct predictions (for its train figures). Set by td_trainer_run at
   * each boundary and by td_trainer_resume. */
  uint32_t epoch, step_in_epoch;
  double epoch_loss_sum, epoch_correct_sum;
  /* Data-loading and compile times, for reports. */
  double load_sec, compile_ms;

  /* Data parallelism: n_rep replicas, each taking `shard` rows of every
   * batch; gradients are averaged with one allreduce of the flat buffer,
   * and every replica applies the same update, so the replicas stay
   * bitwise identical. n_rep 1 runs everything on the caller's thread. */
  int n_rep;
  uint32_t shard;
  /* Time replica 0 spent in the gradient allreduce (waiting for the others
   * included), and the steps it covers: for reports. */
  double allreduce_sec;
  int64_t allreduce_steps;
  td_replica *rep; /* (n_rep) */
  td_comm *comm;
  /* The step table of the epoch on the host (steps_per_epoch records of
   * plan->rec_bytes), filled at the epoch's start. */
  void *table;
  /* The epoch's shuffle rounds, for backends that shuffle on their own. */
  td_key round_keys[TD_PRNG_MAX_ROUNDS];
  int shuffle_rounds;
  /* Recorded steps: backends that can record (CUDA graphs) run chunks of
   * up to chunk_max steps between reads of the metrics, replaying a graph
   * of graph_steps steps while at least that many are left, and one of one
   * step for the rest. Others run one step per chunk. */
  int record;
  uint32_t chunk_max, graph_steps;
  /* The task the replicas' threads run next (a new `gen` starts it;
   * `pending` counts the threads still at it), and its arguments. */
  pthread_mutex_t mu;
  pthread_cond_t go, done;
  uint64_t gen;
  int pending, pool, quit;
  int (*task)(td_trainer *t, int rank);
  uint32_t task_first, task_count; /* a chunk: its first slot and its steps */
  const td_dataset *task_ds;

  /* DP-SGD (training.dp_sgd; dp 0 without). Each example's gradient is
   * clipped to dp_clip and Gaussian noise of dp_sigma * dp_clip is added to
   * the sum, divided by the expected batch `batch`. With Poisson sampling a
   * step's batch is step_rows[s] examples at s * cap of the order (cap: the
   * most a batch holds), each replica taking its share in micro-batches of
   * the plan's `shard` rows (td_job_plan_rows). dp_rdp: one step's Renyi DP at the accountant's orders. A
   * target epsilon may end the job early: dp_stop_steps, the steps it
   * allows (total_steps is cut to them), or -1. */
  int dp, dp_poisson;
  double dp_clip, dp_sigma, dp_delta, dp_target;
  uint32_t cap;
  uint32_t *step_rows;
  double *dp_rdp;
  int64_t dp_stop_steps;
  /* Per-example gradient norms (per_example: DP-SGD or the report; the
   * plan is compiled TD_PLAN_PER_EXAMPLE and steps run its backward). With
   * training.per_example_report (pe_report) each chunk's norms go to
   * `examples`, which reports at each epoch's end. */
  int per_example, pe_report;
  td_example_acc examples;
  /* The per-example norms a replica records a step (its most examples). */
  uint32_t pe_rows;
};

/* The privacy a DP-SGD job has spent after `steps` steps (its accountant's
 * epsilon at training.dp_sgd.target_delta); 0 for a job without DP-SGD. */
double td_trainer_epsilon(const td_trainer *t, int64_t steps);
/* The examples one step of a job holds over a training set of n: the
 * batch, or with DP-SGD's Poisson sampling its capacity (a multiple of
 * the devices); and the flags its plan is compiled with. */
uint32_t td_job_step_capacity(const Traind__V1__JobSpec *spec, uint32_t n);
/* The rows a job's plan is compiled for: a replica's shard of the batch,
 * or with Poisson sampling its micro-batch. */
uint32_t td_job_plan_rows(const Traind__V1__JobSpec *spec, uint32_t n);
unsigned td_job_plan_flags(const Traind__V1__JobSpec *spec);
/* Why a DP-SGD job whose target epsilon cut its steps (dp_stop_steps)
 * stopped there, for its record. */
void td_trainer_dp_note(const td_trainer *t, char *buf, size_t len);

int td_trainer_init(td_trainer *t, const Traind__V1__JobSpec *spec, const td_trainer_opts *o,
                    td_error *err);
/* The checks td_trainer_init makes before loading any data: options this
 * build does not support, the model and optimizer compile, and every
 * dataset file resolves under the data roots. For refusing a job at
 * submission. */
int td_trainer_check(const Traind__V1__JobSpec *spec, const td_trainer_opts *o, td_error *err);
void td_trainer_free(td_trainer *t);

/* The files of a job's dataset resolved under the data roots, with the
 * defaults for names the job leaves unset: for IDX, train images and
 * labels then test images and labels (MNIST's four file names under
 * idx.dir, each also tried with ".gz" added or removed); for HDF5, the
 * train and test file (has_test 0 without one) and the features and
 * labels dataset names. */
typedef struct td_data_files {
  char train[2][4096], test[2][4096];
  int has_test;
  const char *features, *labels; /* HDF5; borrowed from the spec or static */
} td_data_files;

/* The windows of a job's text or hdf5_tokens dataset: the spec's fields
 * checked (td_text_opts_parse), the block from model.input_shape ([T]),
 * the limits from dataset.train_limit and test_limit. */
struct td_text_opts;
int td_text_opts_of(const Traind__V1__JobSpec *spec, struct td_text_opts *o, td_error *err);

int td_data_files_resolve(const Traind__V1__Dataset *d, const td_trainer_opts *o, td_data_files *f,
                          td_error *err);

/* The devices a job asks for: the number of devices.ids, else
 * devices.count, else 1. */
int td_job_device_count(const Traind__V1__JobSpec *s);
/* The index N of a device id "KIND:N"; -1 when id is not of that form. */
int td_device_index(const char *id, const char *kind);

/* Continues from the checkpoint at path: loads its state (validated against
 * the plan) and position. Refuses, leaving t as it was, a checkpoint of
 * another seed or whose position does not fit this job's epoch length. */
int td_trainer_resume(td_trainer *t, const char *path, td_error *err);
/* The checkpoint metadata of t's current position (spec_json left NULL). */
void td_trainer_meta(const td_trainer *t, td_ckpt_meta *m);

/* Evaluates the current parameters on ds: mean loss and accuracy. */
int td_trainer_evaluate(td_trainer *t, const td_dataset *ds, float *loss, float *accuracy,
                        td_error *err);

/* Runs the job to its end (or until hooks->should_stop). The last epoch
 * point is copied to *last when last is not NULL. */
int td_trainer_run(td_trainer *t, const td_train_hooks *hooks, td_epoch_point *last, td_error *err);

#endif
