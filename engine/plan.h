/* The compiled training step.
 *
 * td_plan_compile turns a JobSpec's model and optimizer, at a given
 * per-device batch size, into a plan: inferred shapes, the parameter pytree
 * as named views into one flat buffer, the layout of the gradient,
 * optimizer-state and activation buffers, and the program of nodes that
 * the step runs (the model's graph in topological order). A plan holds offsets, not pointers, so it is immutable and can
 * be shared by every job with the same signature (the compile cache).
 *
 * td_state binds a plan to a backend: it allocates the four flat buffers
 * once and runs forward, loss and backward over them. Nothing is allocated
 * after td_state_init. */
#ifndef TD_PLAN_H
#define TD_PLAN_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "collective.h"
#include "error.h"
#include "optim.h"
#include "prng.h"
#include "traind/v1/job.pb-c.h"

#define TD_VIEW_NAME_MAX 64
/* The most dimensions of one example's values: (features), (H, W, C), ...
 * and of a parameter: a convolution's kernel (kh, kw, C, features). */
#define TD_MAX_RANK 4

/* A named tensor inside a flat buffer: "layer1/w" (784, 256) at offset 0. */
typedef struct td_view {
  char name[TD_VIEW_NAME_MAX];
  size_t offset; /* in floats */
  size_t size;   /* in floats */
  uint32_t ndim;
  uint32_t shape[TD_MAX_RANK];
} td_view;

#define TD_NONE SIZE_MAX
/* What a compiled model may hold: parameters, and floating-point
 * operations in one training step (jobspec.h's TD_JOB_MAX_* for what
 * compiling finds). */
#define TD_PLAN_MAX_PARAMS ((uint64_t)1 << 31)
#define TD_PLAN_MAX_STEP_FLOPS 1e15
/* The most inputs a layer takes (add). */
#define TD_MAX_INPUTS 8

/* The shape of one example's values (without the batch), row-major. */
typedef struct td_shape {
  uint32_t rank;
  uint32_t d[TD_MAX_RANK];
  /* 1: a sequence (time, features), the values of an embed layer and of
   * the layers after it; a dense layer maps its positions one by one. */
  uint32_t seq;
} td_shape;

/* The number of values of one example: the product of the dimensions. */
size_t td_shape_size(const td_shape *s);
/* "(28, 28, 1)" into buf. */
const char *td_shape_str(const td_shape *s, char *buf, size_t len);

/* The op table: X(ID, name, least inputs, most inputs, kernel). Each op
 * has its functions in engine/ops.c, named op_<name>_<part> (ops.h): how
 * it reads its layer, infers its shape, declares its parameters and
 * buffers, draws their initial values, counts its FLOPs, and runs forward
 * and backward on the backend; an op whose kernel column is KERNEL also
 * prepares a backend kernel for each state (op_<name>_prepare). Adding an
 * op is adding a row and those functions; the compiler (plan.c) goes
 * through the table only. */
#define TD_OPS(X)                                \
  X(DENSE, dense, 1, 1, NONE)                    \
  X(ACT, act, 1, 1, NONE)                        \
  X(DROPOUT, dropout, 1, 1, NONE)                \
  X(ADD, add, 2, TD_MAX_INPUTS, NONE)            \
  X(RESHAPE, reshape, 1, 1, NONE)                \
  X(CONCAT, concatenate, 2, TD_MAX_INPUTS, NONE) \
  X(CONV, conv, 1, 1, KERNEL)                    \
  X(POOL, pool, 1, 1, KERNEL)                    \
  X(GAP, global_avg_pool, 1, 1, KERNEL)          \
  X(BATCH_NORM, batch_norm, 1, 1, NONE)          \
  X(LAYER_NORM, layer_norm, 1, 1, NONE)          \
  X(EMBED, embed, 1, 1, NONE)                    \
  X(POS_EMBED, position_embedding, 1, 1, NONE)   \
  X(ATTENTION, causal_self_attention, 1, 1, NONE)

typedef enum td_op {
#define TD_OP_ENUM(id, name, min_in, max_in, kernel) TD_OP_##id,
  TD_OPS(TD_OP_ENUM)
#undef TD_OP_ENUM
} td_op;
#define TD_N_OPS (TD_OP_ATTENTION + 1)

/* One node of the compiled graph: a layer of the model (an activation
 * whose one input is a dense layer that feeds nothing else is fused into
 * that layer's node). Arena
 * offsets are in floats; every activation buffer is (batch, shape)
 * row-major: NHWC for images. */
typedef struct td_node {
  td_op op;
  td_act act;                  /* DENSE, CONV: the activation fused after it; ACT: its own */
  uint32_t spec_index;         /* index in model.layers (keys dropout masks) */
  uint32_t ordinal;            /* a layer with parameters: its place among those listed
                                  (from 0): its initializers' key and its default name */
  char name[TD_VIEW_NAME_MAX]; /* for messages: the layer's name, or "model.layers[i]" */
  uint32_t n_in;
  int32_t in[TD_MAX_INPUTS]; /* the nodes it reads, by index in plan->nodes; -1: the input */
  uint32_t in_features, out; /* values per example of its (first) input and of its output */
  td_shape shape;            /* its output's shape per example (out values) */
  int alias;                 /* its output is its input's buffer, seen in another shape
                                (y and dy are the input's; forward and backward do nothing) */
  int use_bias;              /* DENSE, CONV, BATCH_NORM, LAYER_NORM */
  int use_scale;             /* BATCH_NORM, LAYER_NORM */
  size_t w_view, b_view;     /* indices into plan->views (TD_NONE: none): the kernel or
                                scale, the bias */
  td_window win;             /* CONV, POOL, GAP: the geometry over the full batch */
  td_pool_kind pool;         /* POOL, GAP */
  uint32_t channels;         /* BATCH_NORM, LAYER_NORM: the last dimension's size */
  float eps, momentum;       /* BATCH_NORM, LAYER_NORM */
  size_t stat_view;          /* BATCH_NORM: its running mean in plan->stat_views (var next) */
  Traind__V1__Initializer kernel_init, bias_init;
  td_shape want;                 /* RESHAPE: the target; entry `infer` is to be inferred */
  int infer;                     /* RESHAPE: that entry, or -1 */
  int axis;                      /* CONCAT: the example's dimension, from 0 */
  uint32_t outer;                /* CONCAT: rows per example of the (rows, cols) blocks */
  uint32_t cols[TD_MAX_INPUTS];  /* CONCAT: each input's columns (its values per row) */
  float rate;                    /* DROPOUT, ATTENTION (on its weights) */
  uint32_t key_slot;             /* DROPOUT, ATTENTION with a rate: its key's place in a step
                                    record's keys */
  uint32_t positions;            /* values of a sequence: its time steps (else 1); a dense
                                    layer's rows per example */
  uint32_t heads;                /* ATTENTION */
  uint32_t vocab;                /* EMBED: num_embeddings */
  size_t w2_view, b2_view;       /* ATTENTION: the output projection's kernel and bias */
  int grad;                      /* whether the gradient of its output is needed */
  int has_z, has_mask;           /* whether it keeps a pre-activation, a mask */
  size_t x[TD_MAX_INPUTS];       /* its inputs: the producers' y, or the step's input */
  size_t dx[TD_MAX_INPUTS];      /* their gradients (the producers' dy); TD_NONE: not needed */
  uint8_t dx_acc[TD_MAX_INPUTS]; /* 1: add into dx (a later consumer wrote it first) */
  size_t y;                      /* output (batch, out) */
  size_t z;                      /* pre-activation (batch, out); equals y when not kept */
  size_t dy;                     /* gradient of y (batch, out); becomes dz in place */
  size_t mask;                   /* DROPOUT: (batch, out) */
  size_t aux, aux_floats;        /* a buffer from forward to backward (aux_floats floats;
                                    TD_NONE: none): the statistics a norm keeps */
  size_t tmp, tmp_floats;        /* a buffer of its backward alone (TD_NONE: none) */
} td_node;

typedef struct td_plan {
  /* The cache key: packed model and optimizer, batch and device set. */
  uint8_t *sig;
  size_t sig_len;

  uint32_t batch;     /* per-device batch */
  uint32_t in_dim;    /* values per example */
  td_shape in_shape;  /* their shape (model.input_shape) */
  uint32_t out_dim;   /* model outputs (classes) per position */
  uint32_t positions; /* positions of the output, each with its own label (1, or a
                         sequence's time steps) */
  uint32_t vocab;     /* the least num_embeddings of the embed layers (reading the input's
                         token ids), 0 without */
  Traind__V1__Loss loss;

  size_t n_params; /* floats in the parameter (and gradient) buffer */
  td_view *views;
  size_t n_views;
  /* State that is not trained: batch norms' running means and variances,
   * in their own buffer (n_stats floats), checkpointed as /batch_stats. */
  size_t n_stats;
  td_view *stat_views;
  size_t n_stat_views;
  /* Collectives of one training step inside forward and backward (batch
   * norms' statistics across replicas), in the order they are made. */
  uint32_t n_collectives;
  /* The program: the graph's nodes in topological order. Forward runs
   * them in order, backward in reverse, each bound to its offsets. */
  td_node *nodes;
  size_t n_nodes;
  double flops; /* one training step's floating-point operations, forward and backward */

  /* The activation arena, planned by liveness: buffers whose lives in the
   * step do not overlap share memory. unplanned_floats is what one buffer
   * each would take. */
  size_t arena_floats, unplanned_floats;
  size_t in_off;      /* (batch, in_dim) input of the step */
  size_t labels_off;  /* (batch, positions) int32 labels */
  size_t out_off;     /* (batch, out_dim) model output */
  size_t dout_off;    /* its gradient */
  size_t scalars_off; /* TD_PLAN_SCALARS floats written by the step */
  size_t scratch_off; /* (batch, widest layer): a gradient before it is added in (only
                         in a model where a value feeds several layers) */

  /* Per-example gradients (TD_PLAN_PER_EXAMPLE, for DP-SGD): backward
   * runs the input-gradient chain with each example's squared gradient
   * norm added up in pe_acc (batch doubles), then the parameters'
   * gradients from each layer's output gradient with its rows scaled by
   * pe_factor (batch floats) into pe_rows (the widest such gradient). The
   * values those need live to the end of backward. noise_slot: the key
   * slot of the step's Gaussian noise. */
  int per_example;
  size_t pe_acc_off, pe_factor_off, pe_rows_off;
  uint32_t noise_slot;

  td_optim optim;
  /* The step record (td_step_record): its size in bytes and where its
   * passes' scalars begin; n_keys dropout keys (one per dropout layer). */
  uint32_t n_keys;
  size_t rec_bytes, rec_scalars_off;
  double compile_ms;
} td_plan;

/* One step's record in the step table, in backend memory: everything a
 * step needs that changes from step to step, written by the host ahead of
 * the step, so that a recorded step (a CUDA graph) replays with each step's
 * values. Followed by the optimizer passes' scalars at plan->rec_scalars_off. */
typedef struct td_step_record {
  uint32_t slot;   /* where the step's metrics go (its index in the epoch) */
  uint32_t row0;   /* its batch's first position in the epoch's order */
  uint32_t rows;   /* DP-SGD: the examples of its batch (Poisson sampling varies them) */
  uint32_t keys[]; /* 2 words per dropout layer, by key_slot (and the noise's) */
} td_step_record;

static inline td_opt_scalars *td_rec_scalars(const td_plan *p, void *rec) {
  return (td_opt_scalars *)((char *)rec + p->rec_scalars_off);
}

/* The dropout keys of a step whose key is step_key: fold_in(step_key,
 * spec_index) of each dropout layer at its key slot (2 * n_keys words);
 * with per-example gradients, the noise's fold_in(step_key, 0xffffffff). */
void td_plan_dropout_keys(const td_plan *p, td_key step_key, uint32_t *keys);

/* Fills the record of update number `count` (updates before it) at slot
 * with its batch at row0: dropout keys fold_in(fold_in(dropout_key,
 * count), spec_index) and the optimizer passes' scalars. */
void td_plan_fill_rec(const td_plan *p, void *rec, uint32_t slot, uint32_t row0, int64_t count,
                      td_key dropout_key);

/* Layout of the scalars block the step writes and the host reads. */
enum { TD_SC_LOSS_SUM = 0, TD_SC_CORRECT, TD_SC_GRAD_SUMSQ, TD_SC_SCRATCH, TD_PLAN_SCALARS = 8 };

int td_plan_compile(const Traind__V1__Model *model, const Traind__V1__Optimizer *opt,
                    uint32_t batch, const char *device_set, td_plan **out, td_error *err);
/* flags: TD_PLAN_PER_EXAMPLE, or 0 (td_plan_compile). */
enum { TD_PLAN_PER_EXAMPLE = 1 };
int td_plan_compile_flags(const Traind__V1__Model *model, const Traind__V1__Optimizer *opt,
                          uint32_t batch, const char *device_set, unsigned flags, td_plan **out,
                          td_error *err);
void td_plan_free(td_plan *p);
/* Index of the view called name, or TD_NONE. */
size_t td_plan_find_view(const td_plan *p, const char *name);

/* The compile cache: plans shared by signature. Thread-safe. */
typedef struct td_plan_cache {
  pthread_mutex_t mu;
  struct td_plan_entry *head;
  size_t n_entries;
  uint64_t hits, misses;
} td_plan_cache;

void td_plan_cache_init(td_plan_cache *c);
void td_plan_cache_free(td_plan_cache *c); /* every plan must be released */
/* Returns a plan for the signature, compiling it on a miss. *hit says which.
 * Release it with td_plan_cache_release. */
int td_plan_cache_get(td_plan_cache *c, const Traind__V1__Model *model,
                      const Traind__V1__Optimizer *opt, uint32_t batch, const char *device_set,
                      unsigned flags, const td_plan **out, int *hit, td_error *err);
void td_plan_cache_release(td_plan_cache *c, const td_plan *p);

/* A plan bound to a backend, with its buffers. */
typedef struct td_state {
  const td_plan *plan;
  td_backend *be;
  /* The replicas' communicator and this one's rank, when the step's
   * statistics are reduced across replicas (NULL: one replica). */
  td_comm *comm;
  int rank;
  uint32_t collectives; /* made so far in the current step (the trainer zeroes it) */
  void **kernels;       /* (n_nodes) the backend's prepared kernels, NULL for none */
  float *stats;         /* (n_stats) */
  float *params;        /* (n_params) */
  float *grads;         /* (n_params) */
  float *opt_state;     /* (optim.state_slots * n_params) */
  float *arena;         /* (arena_floats) */
  int64_t step;         /* updates applied so far */
  /* Backward's pass with per-example gradients: 0 all at once, 1 the
   * input-gradient chain and the norms, 2 the parameters' gradients from
   * the row-scaled output gradients. */
  int pe_phase;
} td_state;

int td_state_init(td_state *st, const td_plan *plan, td_backend *be, td_error *err);
void td_state_free(td_state *st);

/* Draws the parameters from their initializers: the dense layer listed
 * k-th (from 0) uses split(fold_in(key, k), 2) for its kernel and bias. Resets the
 * optimizer state and the step count. */
int td_state_init_params(td_state *st, td_key key, td_error *err);

/* Forward over the first `rows` rows of the input (rows <= batch).
 * train: dropout active, layer by layer with the keys of a step record
 * (keys: backend memory, 2 words per key slot), masked as for a batch whose
 * rows row0.. these are (0 unless the batch is sharded). */
int td_state_forward(td_state *st, int rows, int train, const uint32_t *keys, uint64_t row0,
                     td_error *err);
/* The loss over the first `rows` rows: writes the loss sum and the number of
 * correct predictions to the scalars block; with_grad also writes the
 * gradient of the mean loss over the full batch into dout. */
int td_state_loss(td_state *st, int rows, int with_grad, td_error *err);
/* Backward over the full batch: fills grads. */
int td_state_backward(td_state *st, td_error *err);
/* Backward of a per-example plan (DP-SGD) over the full batch, whose
 * first `rows` rows are examples (the rest padding, with a zero output
 * gradient): each example's gradient, whose norm is that of its rows'
 * share divided by `scale` (the output gradient's factor per example),
 * clipped to norm `clip`, and the clipped gradients' sum times scale into
 * grads. The squared norms (times scale^2) stay at pe_acc_off. */
int td_state_backward_dp(td_state *st, int rows, double scale, double clip, td_error *err);
/* td_state_loss with the output gradient's scale given: the loss of each
 * row (position) times grad_scale. */
int td_state_loss_scaled(td_state *st, int rows, int with_grad, float grad_scale, td_error *err);
/* A replica whose step failed makes the step's collectives it has not
 * made (with any contents), so that the others do not wait for it. */
void td_state_finish_collectives(td_state *st);

static inline float *td_state_at(const td_state *st, size_t off) { return st->arena + off; }

#endif
