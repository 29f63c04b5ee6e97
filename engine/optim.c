/* Lowering of optax chains to fused passes, and the per-step scalars. */
#include "optim.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------ schedules */

static double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

/* optax.polynomial_schedule with power 1. */
static double linear_value(double init, double end, int64_t steps, int64_t begin, int64_t count) {
  if (steps <= 0)
    return init;
  double c = clampd((double)(count - begin), 0.0, (double)steps);
  double frac = 1.0 - c / (double)steps;
  return (init - end) * frac + end;
}

static double cosine_value(double init, int64_t decay_steps, double alpha, double exponent,
                           int64_t count) {
  double c = fmin((double)count, (double)decay_steps);
  double cosine = 0.5 * (1.0 + cos(M_PI * c / (double)decay_steps));
  return init * ((1.0 - alpha) * pow(cosine, exponent) + alpha);
}

double td_sched_value(const td_sched *s, int64_t count) {
  switch (s->kind) {
  case TD_SCHED_CONSTANT:
    return s->init_value;
  case TD_SCHED_LINEAR:
    return linear_value(s->init_value, s->end_value, s->transition_steps, s->transition_begin,
                        count);
  case TD_SCHED_COSINE:
    return cosine_value(s->init_value, s->decay_steps, s->alpha, s->exponent, count);
  case TD_SCHED_WARMUP_COSINE: {
    if (count < s->warmup_steps)
      return linear_value(s->init_value, s->peak_value, s->warmup_steps, 0, count);
    double alpha = s->peak_value == 0.0 ? 0.0 : s->end_value / s->peak_value;
    return cosine_value(s->peak_value, s->decay_steps - s->warmup_steps, alpha, s->exponent,
                        count - s->warmup_steps);
  }
  case TD_SCHED_EXPONENTIAL: {
    if (s->transition_steps <= 0 || s->decay_rate == 0.0)
      return s->init_value;
    double dc = (double)(count - s->transition_begin);
    double p = dc / (double)s->transition_steps;
    if (s->staircase)
      p = floor(p);
    double v = dc <= 0 ? s->init_value : s->init_value * pow(s->decay_rate, p);
    if (s->has_end_value)
      v = s->decay_rate < 1.0 ? fmax(v, s->end_value) : fmin(v, s->end_value);
    return v;
  }
  case TD_SCHED_PIECEWISE: {
    double v = s->init_value;
    for (int i = 0; i < s->n_boundaries; i++)
      if (count >= s->boundary_step[i])
        v *= s->boundary_scale[i];
    return v;
  }
  }
  return 0.0;
}

/* ------------------------------------------------------------ lowering */

static double wrap_or(const Google__Protobuf__DoubleValue *w, double dflt) {
  return w ? w->value : dflt;
}

static int sched_compile(const Traind__V1__Schedule *in, const char *path, td_sched *s,
                         td_error *err) {
  memset(s, 0, sizeof *s);
  s->exponent = 1.0;
  if (!in)
    return td_errorf(err, TD_EINVAL, "%s: required (for example {constant: 0.001})", path);
  switch (in->kind_case) {
  case TRAIND__V1__SCHEDULE__KIND_CONSTANT:
    s->kind = TD_SCHED_CONSTANT;
    s->init_value = in->constant;
    return TD_OK;
  case TRAIND__V1__SCHEDULE__KIND_WARMUP_COSINE_DECAY: {
    const Traind__V1__WarmupCosineDecay *w = in->warmup_cosine_decay;
    s->kind = TD_SCHED_WARMUP_COSINE;
    s->init_value = w->init_value;
    s->peak_value = w->peak_value;
    s->end_value = w->end_value;
    s->warmup_steps = w->warmup_steps;
    s->decay_steps = w->decay_steps;
    s->exponent = wrap_or(w->exponent, 1.0);
    if (w->decay_steps <= w->warmup_steps)
      return td_errorf(err, TD_EINVAL,
                       "%s.warmup_cosine_decay.decay_steps: must be greater "
                       "than warmup_steps (%u); it counts the warmup too",
                       path, w->warmup_steps);
    return TD_OK;
  }
  case TRAIND__V1__SCHEDULE__KIND_EXPONENTIAL_DECAY: {
    const Traind__V1__ExponentialDecay *e = in->exponential_decay;
    s->kind = TD_SCHED_EXPONENTIAL;
    s->init_value = e->init_value;
    s->transition_steps = e->transition_steps;
    s->decay_rate = e->decay_rate;
    s->transition_begin = e->transition_begin;
    s->staircase = e->staircase;
    s->has_end_value = e->end_value != NULL;
    s->end_value = wrap_or(e->end_value, 0.0);
    return TD_OK;
  }
  case TRAIND__V1__SCHEDULE__KIND_PIECEWISE_CONSTANT: {
    const Traind__V1__PiecewiseConstant *p = in->piecewise_constant;
    s->kind = TD_SCHED_PIECEWISE;
    s->init_value = p->init_value;
    if (p->n_boundaries_and_scales > TD_SCHED_MAX_BOUNDARIES)
      return td_errorf(err, TD_EINVAL,
                       "%s.piecewise_constant.boundaries_and_scales: at most "
                       "%d boundaries",
                       path, TD_SCHED_MAX_BOUNDARIES);
    for (size_t i = 0; i < p->n_boundaries_and_scales; i++) {
      const Traind__V1__Boundary *b = p->boundaries_and_scales[i];
      if (i > 0 && b->step <= s->boundary_step[i - 1])
        return td_errorf(err, TD_EINVAL,
                         "%s.piecewise_constant.boundaries_and_scales[%zu].step:"
                         " steps must be strictly increasing",
                         path, i);
      s->boundary_step[i] = b->step;
      s->boundary_scale[i] = b->scale;
    }
    s->n_boundaries = (int)p->n_boundaries_and_scales;
    return TD_OK;
  }
  case TRAIND__V1__SCHEDULE__KIND_LINEAR: {
    const Traind__V1__Linear *l = in->linear;
    s->kind = TD_SCHED_LINEAR;
    s->init_value = l->init_value;
    s->end_value = l->end_value;
    s->transition_steps = l->transition_steps;
    s->transition_begin = l->transition_begin;
    return TD_OK;
  }
  case TRAIND__V1__SCHEDULE__KIND_COSINE_DECAY: {
    const Traind__V1__CosineDecay *c = in->cosine_decay;
    s->kind = TD_SCHED_COSINE;
    s->init_value = c->init_value;
    s->decay_steps = c->decay_steps;
    s->alpha = c->alpha;
    s->exponent = wrap_or(c->exponent, 1.0);
    if (c->decay_steps == 0)
      return td_errorf(err, TD_EINVAL, "%s.cosine_decay.decay_steps: must be > 0", path);
    return TD_OK;
  }
  default:
    return td_errorf(err, TD_EINVAL,
                     "%s: set one of: constant, warmup_cosine_decay, "
                     "exponential_decay, piecewise_constant, linear, "
                     "cosine_decay",
                     path);
  }
}

/* The primitives a chain lowers to, in order. */
typedef enum prim_kind { P_SCALAR, P_CLIP, P_ADAM, P_TRACE, P_DECAY } prim_kind;

typedef struct prim {
  prim_kind kind;
  td_scalar scalar;
  double b1, b2, eps, eps_root, momentum, wd;
  int nesterov;
} prim;

#define MAX_PRIMS 64

typedef struct lowering {
  prim p[MAX_PRIMS];
  int n;
} lowering;

static int push(lowering *l, prim p, td_error *err) {
  if (l->n == MAX_PRIMS)
    return td_errorf(err, TD_EINVAL, "optimizer.chain: too many transforms");
  l->p[l->n++] = p;
  return TD_OK;
}

static int push_lr(lowering *l, const Traind__V1__Schedule *lr, const char *path, td_optim *o,
                   td_error *err) {
  prim p = {.kind = P_SCALAR};
  p.scalar.kind = TD_SCALAR_SCHED;
  p.scalar.value = -1.0;
  int rc = sched_compile(lr, path, &p.scalar.sched, err);
  if (rc)
    return rc;
  if (!o->has_lr) {
    o->has_lr = 1;
    o->lr = p.scalar.sched;
  }
  return push(l, p, err);
}

static int push_adam(lowering *l, const Google__Protobuf__DoubleValue *b1,
                     const Google__Protobuf__DoubleValue *b2,
                     const Google__Protobuf__DoubleValue *eps, double eps_root, td_error *err) {
  prim p = {.kind = P_ADAM,
            .b1 = wrap_or(b1, 0.9),
            .b2 = wrap_or(b2, 0.999),
            .eps = wrap_or(eps, 1e-8),
            .eps_root = eps_root};
  return push(l, p, err);
}

static int lower(const Traind__V1__Optimizer *spec, lowering *l, td_optim *o, td_error *err) {
  char path[96];
  int rc = TD_OK;
  for (size_t i = 0; i < spec->n_chain && !rc; i++) {
    const Traind__V1__Transform *t = spec->chain[i];
    switch (t->kind_case) {
    case TRAIND__V1__TRANSFORM__KIND_SGD: {
      const Traind__V1__Sgd *s = t->sgd;
      if (s->momentum != 0.0) {
        prim p = {.kind = P_TRACE, .momentum = s->momentum, .nesterov = s->nesterov};
        rc = push(l, p, err);
      }
      snprintf(path, sizeof path, "optimizer.chain[%zu].sgd.learning_rate", i);
      if (!rc)
        rc = push_lr(l, s->learning_rate, path, o, err);
      break;
    }
    case TRAIND__V1__TRANSFORM__KIND_ADAM: {
      const Traind__V1__Adam *a = t->adam;
      rc = push_adam(l, a->b1, a->b2, a->eps, a->eps_root, err);
      snprintf(path, sizeof path, "optimizer.chain[%zu].adam.learning_rate", i);
      if (!rc)
        rc = push_lr(l, a->learning_rate, path, o, err);
      break;
    }
    case TRAIND__V1__TRANSFORM__KIND_ADAMW: {
      const Traind__V1__AdamW *a = t->adamw;
      rc = push_adam(l, a->b1, a->b2, a->eps, a->eps_root, err);
      prim d = {.kind = P_DECAY, .wd = wrap_or(a->weight_decay, 1e-4)};
      if (!rc)
        rc = push(l, d, err);
      snprintf(path, sizeof path, "optimizer.chain[%zu].adamw.learning_rate", i);
      if (!rc)
        rc = push_lr(l, a->learning_rate, path, o, err);
      break;
    }
    case TRAIND__V1__TRANSFORM__KIND_SCALE_BY_ADAM: {
      const Traind__V1__ScaleByAdam *a = t->scale_by_adam;
      rc = push_adam(l, a->b1, a->b2, a->eps, a->eps_root, err);
      break;
    }
    case TRAIND__V1__TRANSFORM__KIND_CLIP_BY_GLOBAL_NORM: {
      prim p = {.kind = P_CLIP};
      p.scalar.kind = TD_SCALAR_CLIP;
      p.scalar.value = t->clip_by_global_norm->max_norm;
      rc = push(l, p, err);
      break;
    }
    case TRAIND__V1__TRANSFORM__KIND_ADD_DECAYED_WEIGHTS: {
      prim p = {.kind = P_DECAY, .wd = t->add_decayed_weights->weight_decay};
      rc = push(l, p, err);
      break;
    }
    case TRAIND__V1__TRANSFORM__KIND_SCALE_BY_SCHEDULE: {
      prim p = {.kind = P_SCALAR};
      p.scalar.kind = TD_SCALAR_SCHED;
      p.scalar.value = 1.0;
      snprintf(path, sizeof path, "optimizer.chain[%zu].scale_by_schedule.schedule", i);
      rc = sched_compile(t->scale_by_schedule->schedule, path, &p.scalar.sched, err);
      if (!rc)
        rc = push(l, p, err);
      break;
    }
    case TRAIND__V1__TRANSFORM__KIND_SCALE: {
      prim p = {.kind = P_SCALAR};
      p.scalar.kind = TD_SCALAR_CONST;
      p.scalar.value = t->scale->step_size;
      rc = push(l, p, err);
      break;
    }
    default:
      rc = td_errorf(err, TD_EINVAL,
                     "optimizer.chain[%zu]: set one of: sgd, adam, adamw, "
                     "clip_by_global_norm, add_decayed_weights, "
                     "scale_by_schedule, scale, scale_by_adam",
                     i);
    }
  }
  return rc;
}

/* Phases of a pass being filled: scalars before the kind, after the kind,
 * after the decay. */
enum { PH_PRE, PH_MID, PH_POST };

/* The index of the clip among s's pre scalars, or -1. A pass holds one
 * clip at most: the norm a second one needs is that of the first one's
 * output, which the next pass sees as its input. */
static int stage_clip(const td_opt_stage *s) {
  for (int i = 0; i < s->n_pre; i++)
    if (s->pre[i].kind == TD_SCALAR_CLIP)
      return i;
  return -1;
}

static td_opt_stage *new_stage(td_optim *o, td_error *err) {
  if (o->n_stages == TD_OPT_MAX_PASSES) {
    td_errorf(err, TD_EINVAL, "optimizer.chain: too many stateful transforms");
    return NULL;
  }
  td_opt_stage *s = &o->stages[o->n_stages++];
  memset(s, 0, sizeof *s);
  s->s1_off = s->s2_off = SIZE_MAX;
  snprintf(s->label, sizeof s->label, "identity");
  return s;
}

static int add_scalar(td_opt_stage *s, int phase, const td_scalar *sc, td_error *err) {
  int *n = phase == PH_PRE ? &s->n_pre : phase == PH_MID ? &s->n_mid : &s->n_post;
  td_scalar *arr = phase == PH_PRE ? s->pre : phase == PH_MID ? s->mid : s->post;
  if (*n == TD_OPT_MAX_SCALARS)
    return td_errorf(err, TD_EINVAL, "optimizer.chain: too many scalar transforms in a row");
  arr[(*n)++] = *sc;
  return TD_OK;
}

int td_optim_compile(const Traind__V1__Optimizer *spec, td_optim *o, td_error *err) {
  memset(o, 0, sizeof *o);
  if (!spec || spec->n_chain == 0)
    return td_errorf(err, TD_EINVAL,
                     "optimizer.chain: required (for example [{adam: "
                     "{learning_rate: {constant: 0.001}}}])");
  lowering l = {.n = 0};
  int rc = lower(spec, &l, o, err);
  if (rc)
    return rc;

  td_opt_stage *s = new_stage(o, err);
  int phase = PH_PRE;
  for (int i = 0; i < l.n; i++) {
    const prim *p = &l.p[i];
    switch (p->kind) {
    case P_SCALAR:
      rc = add_scalar(s, phase, &p->scalar, err);
      break;
    case P_CLIP:
      /* A clip needs the norm of its input: only the input of a pass has
       * a norm we can compute before the pass runs. */
      if (phase != PH_PRE || stage_clip(s) >= 0) {
        s = new_stage(o, err);
        phase = PH_PRE;
      }
      rc = s ? add_scalar(s, PH_PRE, &p->scalar, err) : TD_EINVAL;
      break;
    case P_ADAM:
    case P_TRACE:
      if (phase != PH_PRE) {
        s = new_stage(o, err);
        phase = PH_PRE;
      }
      if (!s) {
        rc = TD_EINVAL;
        break;
      }
      s->kind = p->kind == P_ADAM ? TD_OPT_ADAM : TD_OPT_TRACE;
      s->b1 = p->b1;
      s->b2 = p->b2;
      s->eps = p->eps;
      s->eps_root = p->eps_root;
      s->momentum = p->momentum;
      s->nesterov = p->nesterov;
      s->s1_off = o->state_slots++;
      if (s->kind == TD_OPT_ADAM)
        s->s2_off = o->state_slots++;
      snprintf(s->label, sizeof s->label, "%s", s->kind == TD_OPT_ADAM ? "adam" : "trace");
      phase = PH_MID;
      break;
    case P_DECAY:
      if (phase == PH_POST) {
        s = new_stage(o, err);
        phase = PH_PRE;
      }
      if (!s) {
        rc = TD_EINVAL;
        break;
      }
      s->wd = p->wd;
      phase = PH_POST;
      break;
    }
    if (rc)
      return rc;
  }
  return TD_OK;
}

double td_optim_lr(const td_optim *o, int64_t count) {
  return o->has_lr ? td_sched_value(&o->lr, count) : 0.0;
}

/* ------------------------------------------------------------ runtime */

/* The product of scalar factors lo..hi-1 of a list (none are clips). */
static double fold_scalars(const td_scalar *sc, int lo, int hi, int64_t count) {
  double f = 1.0;
  for (int i = lo; i < hi; i++)
    f *= sc[i].kind == TD_SCALAR_SCHED ? sc[i].value * td_sched_value(&sc[i].sched, count)
                                       : sc[i].value;
  return f;
}

void td_optim_pass_of(const td_optim *o, int i, td_opt_pass *out) {
  const td_opt_stage *s = &o->stages[i];
  int c = stage_clip(s);
  td_opt_pass a = {
      .kind = s->kind,
      .apply = i == o->n_stages - 1,
      .nesterov = s->nesterov,
      .clip = c >= 0,
      .clip_norm = c >= 0 ? s->pre[c].value : 0.0,
      .wd = (float)s->wd,
      .b1 = (float)s->b1,
      .b2 = (float)s->b2,
      .eps = (float)s->eps,
      .eps_root = (float)s->eps_root,
      .momentum = (float)s->momentum,
  };
  *out = a;
}

void td_optim_scalars(const td_optim *o, int64_t count, td_opt_scalars *out) {
  const int64_t inc = count + 1;
  for (int i = 0; i < o->n_stages; i++) {
    const td_opt_stage *s = &o->stages[i];
    int c = stage_clip(s);
    td_opt_scalars a = {
        .pre = fold_scalars(s->pre, 0, c >= 0 ? c : s->n_pre, count),
        .post = c >= 0 ? fold_scalars(s->pre, c + 1, s->n_pre, count) : 1.0,
        .mid_scale = (float)fold_scalars(s->mid, 0, s->n_mid, count),
        .out_scale = (float)fold_scalars(s->post, 0, s->n_post, count),
        .rbc1 = (float)(1.0 / (1.0 - pow(s->b1, (double)inc))),
        .rbc2 = (float)(1.0 / (1.0 - pow(s->b2, (double)inc))),
    };
    out[i] = a;
  }
}

int td_optim_issue(const td_optim *o, td_backend *be, const td_opt_scalars *scalars,
                   const float *grad_sumsq, size_t n, float *params, float *grads, float *state,
                   float *scratch, td_error *err) {
  const td_backend_ops *ops = be->ops;
  for (int i = 0; i < o->n_stages; i++) {
    const td_opt_stage *s = &o->stages[i];
    const float *norm_sq = grad_sumsq;
    if (i > 0 && stage_clip(s) >= 0) {
      int rc = ops->sumsq(be, n, grads, scratch);
      if (rc)
        return td_errorf(err, rc, "optimizer: norm of updates failed");
      norm_sq = scratch;
    }
    float *s1 = s->s1_off == SIZE_MAX ? NULL : state + s->s1_off * n;
    float *s2 = s->s2_off == SIZE_MAX ? NULL : state + s->s2_off * n;
    td_opt_pass a;
    td_optim_pass_of(o, i, &a);
    int rc = ops->opt_pass(be, &a, scalars + i, norm_sq, grad_sumsq, n, params, grads, s1, s2);
    if (rc)
      return td_errorf(err, rc, "optimizer: pass %d (%s) failed", i, s->label);
  }
  return TD_OK;
}

int td_optim_apply(const td_optim *o, td_backend *be, const td_optim_step *st, size_t n,
                   float *params, float *grads, float *state, float *scratch, td_error *err) {
  td_opt_scalars host[TD_OPT_MAX_PASSES];
  td_optim_scalars(o, st->count, host);
  size_t bytes = sizeof host + sizeof(float);
  void *buf = be->ops->alloc(be, bytes);
  if (!buf)
    return td_errorf(err, TD_ENOMEM, "optimizer: out of %s backend memory", be->ops->name);
  td_opt_scalars *passes = buf;
  float *sumsq = (float *)(passes + TD_OPT_MAX_PASSES), sq = (float)st->grad_sumsq;
  int rc = be->ops->upload(be, passes, host, sizeof host);
  if (!rc)
    rc = be->ops->upload(be, sumsq, &sq, sizeof sq);
  if (rc)
    rc = td_errorf(err, rc, "optimizer: uploading the passes failed");
  else
    rc = td_optim_issue(o, be, passes, sumsq, n, params, grads, state, scratch, err);
  be->ops->release(be, buf);
  return rc;
}
