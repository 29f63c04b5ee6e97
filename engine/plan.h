/* The compiled training step.
 *
 * td_plan_compile turns a JobSpec's model and optimizer, at a given
 * per-device batch size, into a plan: inferred shapes, the parameter pytree
 * as named views into one flat buffer, the layout of the gradient,
 * optimizer-state and activation buffers, and the list of layers that the
 * step runs. A plan holds offsets, not pointers, so it is immutable and can
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
#include "error.h"
#include "optim.h"
#include "prng.h"
#include "traind/v1/job.pb-c.h"

#define TD_VIEW_NAME_MAX 64

/* A named tensor inside a flat buffer: "layer1/w" (784, 256) at offset 0. */
typedef struct td_view {
  char name[TD_VIEW_NAME_MAX];
  size_t offset; /* in floats */
  size_t size;   /* in floats */
  uint32_t ndim;
  uint32_t shape[2];
} td_view;

typedef enum td_layer_kind {
  TD_LAYER_DENSE = 0, /* z = x w + b, y = act(z): dense and the activation after it */
  TD_LAYER_ACT,       /* y = act(x), an activation not preceded by a dense layer */
  TD_LAYER_DROPOUT,
} td_layer_kind;

#define TD_NONE SIZE_MAX

/* One executed layer. Arena offsets are in floats; every activation buffer
 * is (batch, features) row-major. */
typedef struct td_layer {
  td_layer_kind kind;
  td_act act;
  uint32_t in, out;      /* features in and out */
  uint32_t spec_index;   /* index in model.layers (keys dropout masks) */
  size_t w_view, b_view; /* DENSE: indices into plan->views; b_view TD_NONE without bias */
  Traind__V1__Initializer kernel_init, bias_init;
  size_t x;          /* input (batch, in): the previous layer's y, or the batch */
  size_t z;          /* pre-activation (batch, out); equals y when not needed */
  size_t y;          /* output (batch, out) */
  size_t dy;         /* gradient of y (batch, out); becomes dz in place */
  size_t dx;         /* gradient of x: the previous layer's dy; TD_NONE for the first */
  size_t mask;       /* DROPOUT: (batch, out) */
  float rate;        /* DROPOUT */
  uint32_t key_slot; /* DROPOUT: its key's place in a step record's keys */
} td_layer;

typedef struct td_plan {
  /* The cache key: packed model and optimizer, batch and device set. */
  uint8_t *sig;
  size_t sig_len;

  uint32_t batch;   /* per-device batch */
  uint32_t in_dim;  /* features per example */
  uint32_t out_dim; /* model outputs (classes) */
  Traind__V1__Loss loss;

  size_t n_params; /* floats in the parameter (and gradient) buffer */
  td_view *views;
  size_t n_views;
  td_layer *layers;
  size_t n_layers;

  size_t arena_floats;
  size_t in_off;      /* (batch, in_dim) input of the step */
  size_t labels_off;  /* (batch) int32 labels */
  size_t out_off;     /* (batch, out_dim) model output */
  size_t dout_off;    /* its gradient */
  size_t scalars_off; /* TD_PLAN_SCALARS floats written by the step */

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
  uint32_t keys[]; /* 2 words per dropout layer, by key_slot */
} td_step_record;

static inline td_opt_scalars *td_rec_scalars(const td_plan *p, void *rec) {
  return (td_opt_scalars *)((char *)rec + p->rec_scalars_off);
}

/* The dropout keys of a step whose key is step_key: fold_in(step_key,
 * spec_index) of each dropout layer at its key slot (2 * n_keys words). */
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
                      const td_plan **out, int *hit, td_error *err);
void td_plan_cache_release(td_plan_cache *c, const td_plan *p);

/* A plan bound to a backend, with its buffers. */
typedef struct td_state {
  const td_plan *plan;
  td_backend *be;
  float *params;    /* (n_params) */
  float *grads;     /* (n_params) */
  float *opt_state; /* (optim.state_slots * n_params) */
  float *arena;     /* (arena_floats) */
  int64_t step;     /* updates applied so far */
} td_state;

int td_state_init(td_state *st, const td_plan *plan, td_backend *be, td_error *err);
void td_state_free(td_state *st);

/* Draws the parameters from their initializers: dense layer k (from 0)
 * uses split(fold_in(key, k), 2) for its kernel and bias. Resets the
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

static inline float *td_state_at(const td_state *st, size_t off) { return st->arena + off; }

#endif
