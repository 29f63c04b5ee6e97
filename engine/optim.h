/* Optax-style optimizers compiled to passes over flat buffers.
 *
 * A JobSpec's optax.chain is lowered to primitives (scale_by_adam, trace,
 * add_decayed_weights, clip_by_global_norm, scalar scales by a constant or a
 * schedule) and the primitives are grouped into as few passes as the chain
 * allows: every pass reads the gradient buffer once, and the last one also
 * applies the update to the parameters. The reference chains (adam; clip +
 * adamw) are one pass. Scalars (schedule values, bias corrections) are
 * computed on the host per step, in double precision, into td_opt_scalars
 * records ahead of the step; clip factors by the pass itself from the norm
 * on the device. */
#ifndef TD_OPTIM_H
#define TD_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "error.h"
#include "traind/v1/job.pb-c.h"

typedef enum td_sched_kind {
  TD_SCHED_CONSTANT = 0,
  TD_SCHED_WARMUP_COSINE,
  TD_SCHED_EXPONENTIAL,
  TD_SCHED_PIECEWISE,
  TD_SCHED_LINEAR,
  TD_SCHED_COSINE,
} td_sched_kind;

#define TD_SCHED_MAX_BOUNDARIES 16

/* A learning-rate schedule: a pure function of the update count. */
typedef struct td_sched {
  td_sched_kind kind;
  double init_value, peak_value, end_value, exponent, decay_rate, alpha;
  int64_t warmup_steps, decay_steps, transition_steps, transition_begin;
  int staircase, has_end_value;
  int n_boundaries;
  int64_t boundary_step[TD_SCHED_MAX_BOUNDARIES];
  double boundary_scale[TD_SCHED_MAX_BOUNDARIES];
} td_sched;

double td_sched_value(const td_sched *s, int64_t count);

/* A scalar factor inside a pass: a constant, sign * schedule(count), or a
 * clip to a maximum global norm. */
typedef enum td_scalar_kind {
  TD_SCALAR_CONST = 0,
  TD_SCALAR_SCHED,
  TD_SCALAR_CLIP,
} td_scalar_kind;

typedef struct td_scalar {
  td_scalar_kind kind;
  double value; /* CONST: the factor; SCHED: sign; CLIP: max_norm */
  td_sched sched;
} td_scalar;

#define TD_OPT_MAX_SCALARS 8
#define TD_OPT_MAX_PASSES 8

/* One compiled pass: its kind's hyperparameters, the scalar factors before
 * (pre), between the kind and the decay (mid) and after the decay (post),
 * and where its state lives in the optimizer-state buffer. */
typedef struct td_opt_stage {
  td_opt_kind kind;
  double b1, b2, eps, eps_root, momentum, wd;
  int nesterov;
  int n_pre, n_mid, n_post;
  td_scalar pre[TD_OPT_MAX_SCALARS], mid[TD_OPT_MAX_SCALARS], post[TD_OPT_MAX_SCALARS];
  size_t s1_off, s2_off; /* in units of the parameter count; SIZE_MAX: none */
  char label[32];        /* "adam", "trace", ... for the state tree */
} td_opt_stage;

typedef struct td_optim {
  int n_stages;
  td_opt_stage stages[TD_OPT_MAX_PASSES];
  size_t state_slots; /* optimizer state = state_slots * n_params floats */
  /* The schedule reported as "learning rate" in metrics, when there is one. */
  int has_lr;
  td_sched lr;
} td_optim;

/* Lowers spec's chain. Errors name the field path (optimizer.chain[1]...). */
int td_optim_compile(const Traind__V1__Optimizer *spec, td_optim *out, td_error *err);

/* The learning rate reported for update `count` (0 when there is none). */
double td_optim_lr(const td_optim *o, int64_t count);

/* What pass i (0..n_stages-1) fixes for the whole job. */
void td_optim_pass_of(const td_optim *o, int i, td_opt_pass *out);
/* The passes' scalars of update number `count` (updates applied before
 * it): n_stages records. */
void td_optim_scalars(const td_optim *o, int64_t count, td_opt_scalars *out);

/* Issues the passes over the flat buffers, with their scalars (n_stages
 * records in backend memory, from td_optim_scalars): params (n), grads (n,
 * consumed), state (state_slots * n). grad_sumsq (backend memory) is the
 * squared norm of grads: the first pass's clip reads it, and every pass
 * leaves the buffers as they were when it is not finite. scratch is one
 * float of backend memory for norms of intermediate passes. Issues ops
 * only, reads nothing back: a step that calls it can be recorded. */
int td_optim_issue(const td_optim *o, td_backend *be, const td_opt_scalars *scalars,
                   const float *grad_sumsq, size_t n, float *params, float *grads, float *state,
                   float *scratch, td_error *err);

/* Host-driven form of the same, for tools and tests: the passes of update
 * st->count with the given squared gradient norm (uploaded into a temporary
 * buffer of the backend). */
typedef struct td_optim_step {
  int64_t count; /* updates applied before this one */
  double grad_sumsq;
} td_optim_step;

int td_optim_apply(const td_optim *o, td_backend *be, const td_optim_step *st, size_t n,
                   float *params, float *grads, float *state, float *scratch, td_error *err);

#endif
