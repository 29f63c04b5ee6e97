/* Optimizers and schedules against Optax's published formulas.
 *
 * The reference below is an independent float64 transcription of Optax's
 * update rules, one gradient transformation at a time, composed the way
 * optax.chain composes them (each transform maps updates -> updates, with
 * its own state and count). The engine runs the same chains through its
 * compiled, fused passes in float32. Several steps are compared with a
 * relative error bound of 1e-5. Schedule values are also checked against
 * the numbers printed in Optax's documentation. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jobspec.h"
#include "optim.h"
#include "prng.h"

#define N 37
#define STEPS 6

/* ---------------------------------------------------- float64 reference */

typedef enum { R_SGD, R_ADAM, R_ADAMW, R_SCALE_BY_ADAM, R_CLIP, R_DECAY, R_SCHED, R_SCALE } rkind;

typedef struct rsched {
  int kind; /* 0 const, 1 warmup cosine, 2 exponential, 3 piecewise, 4 linear, 5 cosine */
  double a, b, c, d, e, f;
  int staircase, has_end;
  int nb;
  double bstep[4], bscale[4];
} rsched;

typedef struct rxf {
  rkind kind;
  rsched lr;
  double b1, b2, eps, eps_root, momentum, wd, max_norm, step;
  int nesterov;
  /* state */
  double mu[N], nu[N], trace[N];
  long count;
} rxf;

static double r_poly(double init, double end, double steps, double begin, double t) {
  if (steps <= 0)
    return init;
  double c = t - begin;
  c = c < 0 ? 0 : c > steps ? steps : c;
  return (init - end) * (1 - c / steps) + end;
}

static double r_cos(double init, double steps, double alpha, double expo, double t) {
  double c = t < steps ? t : steps;
  double cd = 0.5 * (1 + cos(M_PI * c / steps));
  return init * ((1 - alpha) * pow(cd, expo) + alpha);
}

static double r_sched(const rsched *s, double t) {
  switch (s->kind) {
  case 0:
    return s->a;
  case 1: { /* a init, b peak, c warmup, d decay_steps, e end, f exponent */
    /* join_schedules([linear(init, peak, warmup), cosine(peak, decay - warmup,
     * end / peak, exponent)], [warmup]) */
    double out = r_poly(s->a, s->b, s->c, 0, t);
    if (t >= s->c)
      out = r_cos(s->b, s->d - s->c, s->b == 0 ? 0 : s->e / s->b, s->f, t - s->c);
    return out;
  }
  case 2: { /* a init, b transition_steps, c rate, d begin, e end */
    double dc = t - s->d, p = dc / s->b;
    if (s->staircase)
      p = floor(p);
    double v = dc <= 0 ? s->a : s->a * pow(s->c, p);
    if (s->has_end)
      v = s->c < 1 ? fmax(v, s->e) : fmin(v, s->e);
    return v;
  }
  case 3: {
    double v = s->a;
    for (int i = 0; i < s->nb; i++) {
      double ind = fmax(0.0, (s->bstep[i] - t) > 0 ? 1.0 : (s->bstep[i] - t) < 0 ? -1.0 : 0.0);
      v = v * ind + (1 - ind) * s->bscale[i] * v;
    }
    return v;
  }
  case 4:
    return r_poly(s->a, s->b, s->c, s->d, t);
  case 5:
    return r_cos(s->a, s->b, s->c, s->d, t);
  }
  return NAN;
}

/* scale_by_adam: updates -> mu_hat / (sqrt(nu_hat + eps_root) + eps). */
static void r_adam(rxf *x, double *u) {
  x->count++;
  for (int i = 0; i < N; i++) {
    x->mu[i] = (1 - x->b1) * u[i] + x->b1 * x->mu[i];
    x->nu[i] = (1 - x->b2) * u[i] * u[i] + x->b2 * x->nu[i];
    double mh = x->mu[i] / (1 - pow(x->b1, (double)x->count));
    double nh = x->nu[i] / (1 - pow(x->b2, (double)x->count));
    u[i] = mh / (sqrt(nh + x->eps_root) + x->eps);
  }
}

/* scale_by_learning_rate(lr) = scale_by_schedule(lambda c: -lr(c)); the
 * schedule sees the count before this update. */
static void r_lr(rxf *x, double *u, long count) {
  double lr = r_sched(&x->lr, (double)count);
  for (int i = 0; i < N; i++)
    u[i] *= -lr;
}

static void r_apply(rxf *x, double *u, const double *p) {
  long count = x->count;
  switch (x->kind) {
  case R_SGD:
    if (x->momentum != 0) {
      for (int i = 0; i < N; i++) {
        x->trace[i] = u[i] + x->momentum * x->trace[i];
        u[i] = x->nesterov ? u[i] + x->momentum * x->trace[i] : x->trace[i];
      }
    }
    r_lr(x, u, count);
    x->count++;
    break;
  case R_ADAM:
    r_adam(x, u);
    r_lr(x, u, count);
    break;
  case R_ADAMW:
    r_adam(x, u);
    for (int i = 0; i < N; i++)
      u[i] += x->wd * p[i];
    r_lr(x, u, count);
    break;
  case R_SCALE_BY_ADAM:
    r_adam(x, u);
    break;
  case R_CLIP: {
    double g = 0;
    for (int i = 0; i < N; i++)
      g += u[i] * u[i];
    g = sqrt(g);
    if (!(g < x->max_norm))
      for (int i = 0; i < N; i++)
        u[i] = u[i] / g * x->max_norm;
    break;
  }
  case R_DECAY:
    for (int i = 0; i < N; i++)
      u[i] += x->wd * p[i];
    break;
  case R_SCHED: {
    double s = r_sched(&x->lr, (double)x->count);
    for (int i = 0; i < N; i++)
      u[i] *= s;
    x->count++;
    break;
  }
  case R_SCALE:
    for (int i = 0; i < N; i++)
      u[i] *= x->step;
    break;
  }
}

/* ---------------------------------------------------------- the runner */

static void run_chain(const char *label, const char *chain_yaml, rxf *ref, int n_ref,
                      double grad_scale) {
  char doc[4096];
  snprintf(doc, sizeof doc,
           "model: {input_shape: [1], loss: MEAN_SQUARED_ERROR, layers: [{dense: {features: 1}}]}\n"
           "optimizer: {chain: %s}\n"
           "dataset: {idx: {dir: none}}\n"
           "training: {epochs: 1, batch_size: 1}\n",
           chain_yaml);
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  td_optim o;
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  if (!rc)
    rc = td_optim_compile(spec->optimizer, &o, &err);
  CHECK(rc == 0, "%s: %s", label, err.msg);
  if (rc) {
    td_jobspec_free(spec);
    return;
  }
  td_backend *be = NULL;
  td_cpu_backend_create(&be, 1, &err);
  float p[N], g[N], *state = calloc(o.state_slots * N + 1, sizeof(float)), scratch;
  double pd[N], u[N];
  td_key key = td_prng_key(42);
  td_prng_normal(key, p, N);
  for (int i = 0; i < N; i++)
    pd[i] = p[i];
  for (int step = 0; step < STEPS; step++) {
    td_prng_normal(td_prng_fold_in(key, (uint32_t)step + 1), g, N);
    double sumsq = 0;
    for (int i = 0; i < N; i++) {
      g[i] = (float)(g[i] * grad_scale);
      u[i] = g[i];
      sumsq += (double)g[i] * g[i];
    }
    double pbefore[N];
    memcpy(pbefore, pd, sizeof pd);
    for (int k = 0; k < n_ref; k++)
      r_apply(&ref[k], u, pbefore);
    for (int i = 0; i < N; i++)
      pd[i] += u[i];
    td_optim_step st = {.count = step, .grad_sumsq = sumsq};
    rc = td_optim_apply(&o, be, &st, N, p, g, state, &scratch, &err);
    CHECK(rc == 0, "%s: apply: %s", label, err.msg);
    double worst = 0;
    int worst_i = 0;
    for (int i = 0; i < N; i++) {
      /* Parameters are O(1): float32 rounds them to ~1e-7 absolute, so a
       * value that lands near zero is judged against 1e-2. */
      double e = td_relerr(p[i], pd[i], 1e-2);
      if (e > worst) {
        worst = e;
        worst_i = i;
      }
    }
    CHECK(worst < 1e-5, "%s: step %d: param[%d] = %.9g, reference %.9g (rel err %.3g)", label,
          step + 1, worst_i, p[worst_i], pd[worst_i], worst);
    /* The update itself, not only the parameters, must match. */
    double uerr = 0, umax = 0, pmax = 0;
    for (int i = 0; i < N; i++) {
      umax = fmax(umax, fabs(u[i]));
      pmax = fmax(pmax, fabs(pbefore[i]));
    }
    for (int i = 0; i < N; i++)
      uerr = fmax(uerr, fabs((p[i] - pbefore[i]) - u[i]));
    /* p - p_before in float32 resolves the update to a few ulps of p. */
    CHECK(uerr <= 1e-5 * umax + 4 * FLT_EPSILON * pmax,
          "%s: step %d: update off by %.3g (max update %.3g)", label, step + 1, uerr, umax);
  }
  free(state);
  td_backend_destroy(be);
  td_jobspec_free(spec);
}

static rxf X(rkind k) {
  rxf x;
  memset(&x, 0, sizeof x);
  x.kind = k;
  x.b1 = 0.9;
  x.b2 = 0.999;
  x.eps = 1e-8;
  return x;
}

static rsched CONST(double v) {
  rsched s = {.kind = 0, .a = v};
  return s;
}

static void check_schedules(void) {
  /* Values printed in Optax's docstrings. */
  td_sched lin = {
      .kind = TD_SCHED_LINEAR, .init_value = 1.0, .end_value = 0.01, .transition_steps = 100};
  CHECK_CLOSE(td_sched_value(&lin, 0), 1.0, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&lin, 100), 0.01, 1e-12, 1e-12);
  td_sched lb = lin;
  lb.transition_begin = 5;
  CHECK_CLOSE(td_sched_value(&lb, 5), 1.0, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&lb, 105), 0.01, 1e-12, 1e-12);
  CHECK(fabs(td_sched_value(&lb, 6) - 0.9901) < 5e-5, "linear(6) = %.6f", td_sched_value(&lb, 6));
  td_sched pw = {.kind = TD_SCHED_PIECEWISE,
                 .init_value = 1.0,
                 .n_boundaries = 2,
                 .boundary_step = {100, 200},
                 .boundary_scale = {0.1, 0.01}};
  CHECK_CLOSE(td_sched_value(&pw, 50), 1.0, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&pw, 150), 0.1, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&pw, 250), 0.001, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&pw, 100), 0.1, 1e-12, 1e-12);

  /* The reference chain's schedule, against the float64 transcription. */
  struct {
    const char *name;
    td_sched s;
    rsched r;
  } cases[] = {
      {"warmup_cosine",
       {.kind = TD_SCHED_WARMUP_COSINE,
        .init_value = 0.0,
        .peak_value = 1e-3,
        .warmup_steps = 1000,
        .decay_steps = 50000,
        .exponent = 1.0},
       {.kind = 1, .a = 0.0, .b = 1e-3, .c = 1000, .d = 50000, .e = 0, .f = 1.0}},
      {"warmup_cosine end/exponent",
       {.kind = TD_SCHED_WARMUP_COSINE,
        .init_value = 1e-4,
        .peak_value = 2e-3,
        .warmup_steps = 10,
        .decay_steps = 110,
        .end_value = 1e-5,
        .exponent = 2.0},
       {.kind = 1, .a = 1e-4, .b = 2e-3, .c = 10, .d = 110, .e = 1e-5, .f = 2.0}},
      {"exponential",
       {.kind = TD_SCHED_EXPONENTIAL,
        .init_value = 0.1,
        .transition_steps = 7,
        .decay_rate = 0.5,
        .transition_begin = 3},
       {.kind = 2, .a = 0.1, .b = 7, .c = 0.5, .d = 3}},
      {"exponential staircase end",
       {.kind = TD_SCHED_EXPONENTIAL,
        .init_value = 0.1,
        .transition_steps = 5,
        .decay_rate = 0.3,
        .staircase = 1,
        .has_end_value = 1,
        .end_value = 0.005},
       {.kind = 2, .a = 0.1, .b = 5, .c = 0.3, .staircase = 1, .has_end = 1, .e = 0.005}},
      {"cosine alpha",
       {.kind = TD_SCHED_COSINE,
        .init_value = 0.5,
        .decay_steps = 40,
        .alpha = 0.1,
        .exponent = 1.0},
       {.kind = 5, .a = 0.5, .b = 40, .c = 0.1, .d = 1.0}},
      {"linear begin",
       {.kind = TD_SCHED_LINEAR,
        .init_value = 0.2,
        .end_value = 0.7,
        .transition_steps = 30,
        .transition_begin = 4},
       {.kind = 4, .a = 0.2, .b = 0.7, .c = 30, .d = 4}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int bad = 0;
    for (int64_t t = 0; t <= 60000; t += (t < 200 ? 1 : 997)) {
      double got = td_sched_value(&cases[i].s, t), want = r_sched(&cases[i].r, (double)t);
      if (td_relerr(got, want, 1e-12) > 1e-12 && bad++ < 3)
        fprintf(stderr, "%s(%lld) = %.12g, want %.12g\n", cases[i].name, (long long)t, got, want);
    }
    CHECK(bad == 0, "schedule %s differs from the reference", cases[i].name);
  }
  /* Warmup starts from init_value and peaks at warmup_steps. */
  CHECK_CLOSE(td_sched_value(&cases[0].s, 0), 0.0, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&cases[0].s, 500), 5e-4, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&cases[0].s, 1000), 1e-3, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&cases[0].s, 50000), 0.0, 1e-12, 1e-12);
  CHECK_CLOSE(td_sched_value(&cases[0].s, 25500), 5e-4, 1e-9, 1e-12);
}

int main(void) {
  check_schedules();

  rxf r[4];
  r[0] = X(R_SGD);
  r[0].lr = CONST(0.1);
  run_chain("sgd", "[{sgd: {learning_rate: {constant: 0.1}}}]", r, 1, 1.0);

  r[0] = X(R_SGD);
  r[0].lr = CONST(0.05);
  r[0].momentum = 0.9;
  run_chain("sgd momentum", "[{sgd: {learning_rate: {constant: 0.05}, momentum: 0.9}}]", r, 1, 1.0);

  r[0] = X(R_SGD);
  r[0].lr = CONST(0.05);
  r[0].momentum = 0.8;
  r[0].nesterov = 1;
  run_chain("sgd nesterov",
            "[{sgd: {learning_rate: {constant: 0.05}, momentum: 0.8, nesterov: true}}]", r, 1, 1.0);

  r[0] = X(R_ADAM);
  r[0].lr = CONST(1e-3);
  run_chain("adam", "[{adam: {learning_rate: {constant: 0.001}}}]", r, 1, 1.0);

  r[0] = X(R_ADAM);
  r[0].lr = CONST(3e-2);
  r[0].b1 = 0.5;
  r[0].b2 = 0.9;
  r[0].eps = 1e-3;
  r[0].eps_root = 1e-4;
  run_chain(
      "adam custom",
      "[{adam: {learning_rate: {constant: 0.03}, b1: 0.5, b2: 0.9, eps: 0.001, eps_root: 0.0001}}]",
      r, 1, 0.01);

  rsched wc = {.kind = 1, .a = 0.0, .b = 1e-2, .c = 2, .d = 10, .e = 0, .f = 1};
  r[0] = X(R_ADAMW);
  r[0].lr = wc;
  r[0].wd = 0.01;
  run_chain("adamw warmup-cosine",
            "[{adamw: {learning_rate: {warmup_cosine_decay: {init_value: 0, peak_value: 0.01, "
            "warmup_steps: 2, decay_steps: 10}}, weight_decay: 0.01}}]",
            r, 1, 1.0);

  r[0] = X(R_ADAMW);
  r[0].lr = CONST(1e-3);
  r[0].wd = 1e-4; /* optax.adamw's default */
  run_chain("adamw default decay", "[{adamw: {learning_rate: {constant: 0.001}}}]", r, 1, 1.0);

  /* The reference chain: clip (active: norms ~6 > 1) then adamw. */
  for (int k = 0; k < 2; k++) {
    r[0] = X(R_CLIP);
    r[0].max_norm = 1.0;
    r[1] = X(R_ADAMW);
    r[1].lr = wc;
    r[1].wd = 0.01;
    run_chain(k ? "clip (inactive) + adamw" : "clip + adamw",
              "[{clip_by_global_norm: {max_norm: 1.0}}, {adamw: {learning_rate: "
              "{warmup_cosine_decay: {init_value: 0, peak_value: 0.01, warmup_steps: 2, "
              "decay_steps: 10}}, weight_decay: 0.01}}]",
              r, 2, k ? 0.01 : 1.0);
  }

  r[0] = X(R_DECAY);
  r[0].wd = 0.1;
  r[1] = X(R_SGD);
  r[1].lr = CONST(0.1);
  r[1].momentum = 0.5;
  run_chain("add_decayed_weights + sgd momentum",
            "[{add_decayed_weights: {weight_decay: 0.1}}, {sgd: {learning_rate: {constant: 0.1}, "
            "momentum: 0.5}}]",
            r, 2, 1.0);

  rsched ex = {.kind = 2, .a = 0.2, .b = 2, .c = 0.5};
  r[0] = X(R_SCHED);
  r[0].lr = ex;
  r[1] = X(R_SCALE);
  r[1].step = -1.0;
  run_chain("scale_by_schedule(exponential) + scale",
            "[{scale_by_schedule: {schedule: {exponential_decay: {init_value: 0.2, "
            "transition_steps: 2, decay_rate: 0.5}}}}, {scale: {step_size: -1.0}}]",
            r, 2, 1.0);

  /* A clip after a stateful transform needs a second pass. */
  r[0] = X(R_SCALE_BY_ADAM);
  r[1] = X(R_CLIP);
  r[1].max_norm = 2.0;
  r[2] = X(R_SCALE);
  r[2].step = -0.01;
  run_chain(
      "scale_by_adam + clip + scale",
      "[{scale_by_adam: {}}, {clip_by_global_norm: {max_norm: 2.0}}, {scale: {step_size: -0.01}}]",
      r, 3, 1.0);

  /* Two stateful transforms in a row. */
  r[0] = X(R_SGD);
  r[0].lr = CONST(-1.0); /* trace only: sgd with lr -1 scales by +1 */
  r[0].momentum = 0.9;
  r[1] = X(R_ADAM);
  r[1].lr = CONST(1e-2);
  run_chain("trace then adam",
            "[{sgd: {learning_rate: {constant: -1.0}, momentum: 0.9}}, {adam: {learning_rate: "
            "{constant: 0.01}}}]",
            r, 2, 1.0);

  rsched pw = {.kind = 3, .a = 0.1, .nb = 2, .bstep = {2, 4}, .bscale = {0.5, 0.1}};
  r[0] = X(R_SGD);
  r[0].lr = pw;
  run_chain("sgd piecewise",
            "[{sgd: {learning_rate: {piecewise_constant: {init_value: 0.1, boundaries_and_scales: "
            "[{step: 2, scale: 0.5}, {step: 4, scale: 0.1}]}}}}]",
            r, 1, 1.0);

  rsched ln = {.kind = 4, .a = 0.1, .b = 0.0, .c = 4, .d = 1};
  r[0] = X(R_SGD);
  r[0].lr = ln;
  run_chain(
      "sgd linear",
      "[{sgd: {learning_rate: {linear: {init_value: 0.1, end_value: 0.0, transition_steps: 4, "
      "transition_begin: 1}}}}]",
      r, 1, 1.0);

  return td_check_exit();
}
