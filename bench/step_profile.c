/* Where one training step's time goes, op by op, on the CPU backend.
 *
 *   step_profile JOB.yaml [--threads N] [--reps N] [--warmup N]
 *
 * Loads the job file, compiles its model at the job's batch size (the
 * median of --reps compiles is the compile time), makes a CPU backend with
 * N threads (default 2) and a state with the job's initial parameters, and
 * fills a batch of input with uniform [0, 1) values and random labels.
 * After --warmup whole steps (default 5) it runs --reps steps (default 20)
 * in the order the trainer's step runs them (engine/train.c, step_body):
 * gather the batch, each node's forward, the loss, each node's backward in
 * reverse order, the squared gradient norm, the optimizer's passes; every
 * call is timed on its own, and each figure is the median over the
 * repetitions. Then it times --reps whole steps without the per-op clocks
 * (the step's time), and two GEMM floors on the same backend (its tiled
 * sgemm on its pool, at the same thread count):
 *   - the step's own GEMM calls: one step is run with the backend's gemm
 *     recording every call's shape, then each call is replayed alone on
 *     buffers of its shape, and the floor is the sum of their medians:
 *     what the step would take if it did nothing but its GEMMs;
 *   - the step's FLOPs at the best rate of one large GEMM, (128 x 3136) x
 *     (3136 x 256), the shape of the CNN's first dense layer: the time a
 *     step would take if all its work ran as fast as that GEMM.
 *
 * One line per node: its name, its op (with a fused activation), forward
 * and backward milliseconds and GFLOP/s, and its share of the sum. FLOPs
 * are the op table's counts (forward and backward together); for dense
 * and conv layers a third of them is the forward and a third each the
 * input's and the weights' gradients (the backward of a layer whose input
 * needs no gradient does only the weights'), for other ops half is the
 * forward. Prints everything as plain text on stdout; the timings mean
 * something only on an otherwise idle machine. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "clock.h"
#include "jobspec.h"
#include "ops.h"
#include "plan.h"
#include "prng.h"

/* The sgemm of the floor: (M x K) x (K x N), the CNN's 3136 -> 256 layer
 * over a batch of 128. */
enum { FLOOR_M = 128, FLOOR_K = 3136, FLOOR_N = 256 };

typedef struct prof_args {
  const char *job;
  int threads, reps, warmup;
} prof_args;

/* The per-op samples of the timed steps: (reps) milliseconds for each
 * node's forward and backward and for each step-level call. */
enum { S_GATHER = 0, S_LOSS, S_NORM, S_OPTIM, S_FWD_ALL, S_BWD_ALL, N_STEP_PARTS };
static const char *const part_names[N_STEP_PARTS] = {"gather",    "loss",    "grad_norm",
                                                     "optimizer", "forward", "backward"};

typedef struct prof {
  const Traind__V1__JobSpec *spec;
  const td_plan *plan;
  td_backend *be;
  td_state st;
  float *src;      /* (batch, in_dim) host rows the gather reads */
  int32_t *labels; /* (batch) their labels */
  uint32_t *idx;   /* (batch) 0..batch-1 */
  void *rec;       /* the step record (host memory is backend memory here) */
  int reps;
  double *fwd, *bwd; /* (n_nodes * reps) */
  double *part;      /* (N_STEP_PARTS * reps) */
} prof;

static int usage(void) {
  fprintf(stderr, "usage: step_profile JOB.yaml [--threads N] [--reps N] [--warmup N]\n");
  return 2;
}

static int parse_args(int argc, char **argv, prof_args *a) {
  *a = (prof_args){.threads = 2, .reps = 20, .warmup = 5};
  for (int i = 1; i < argc; i++) {
    int *v = !strcmp(argv[i], "--threads")  ? &a->threads
             : !strcmp(argv[i], "--reps")   ? &a->reps
             : !strcmp(argv[i], "--warmup") ? &a->warmup
                                            : NULL;
    if (v) {
      char *end = NULL;
      long x = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : -1;
      if (!end || *end || x < (v == &a->warmup ? 0 : 1) || x > 100000) {
        fprintf(stderr, "step_profile: %s needs a whole number (at least %d)\n", argv[i],
                v == &a->warmup ? 0 : 1);
        return 2;
      }
      *v = (int)x;
      i++;
    } else if (argv[i][0] == '-' || a->job) {
      return usage();
    } else {
      a->job = argv[i];
    }
  }
  return a->job ? 0 : usage();
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

/* The median of n samples (reordered in place). */
static double median(double *s, size_t n) {
  qsort(s, n, sizeof *s, cmp_double);
  return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/* One training step as the trainer runs it; with samples (rep >= 0), every
 * call timed into the profile's row rep. */
static int run_step(prof *pr, int rep, td_error *err) {
  const td_plan *p = pr->plan;
  td_state *st = &pr->st;
  td_backend *be = pr->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena, *sc = a + p->scalars_off;
  const td_step_record *rec = pr->rec;
  const td_run run = {.rows = (int)p->batch, .train = 1, .keys = rec->keys, .row0 = 0};
  double t0 = td_mono_ms(), t;
#define LAP(slot)           \
  do {                      \
    if (rep >= 0) {         \
      t = td_mono_ms();     \
      (slot)[rep] = t - t0; \
      t0 = t;               \
    }                       \
  } while (0)
  const td_rows rl = {p->in_dim, p->in_dim, 1, 1};
  int rc = ops->gather(be, &rl, pr->src, pr->labels, pr->idx, NULL, p->batch, a + p->in_off,
                       (int32_t *)(a + p->labels_off));
  if (rc)
    return td_errorf(err, rc, "gather failed");
  LAP(pr->part + S_GATHER * pr->reps);
  double f0 = t0;
  st->collectives = 0;
  for (size_t i = 0; i < p->n_nodes; i++) {
    const td_node *n = &p->nodes[i];
    if ((rc = td_op_table[n->op].fwd(st, n, &run, err)))
      return rc;
    LAP(pr->fwd + i * pr->reps);
  }
  if (rep >= 0)
    pr->part[S_FWD_ALL * pr->reps + rep] = t0 - f0;
  if ((rc = td_state_loss(st, (int)p->batch, 1, err)))
    return rc;
  LAP(pr->part + S_LOSS * pr->reps);
  double b0 = t0;
  for (size_t i = p->n_nodes; i-- > 0;) {
    const td_node *n = &p->nodes[i];
    if (n->grad && (rc = td_op_table[n->op].bwd(st, n, err)))
      return rc;
    LAP(pr->bwd + i * pr->reps);
  }
  if (rep >= 0)
    pr->part[S_BWD_ALL * pr->reps + rep] = t0 - b0;
  if ((rc = ops->sumsq(be, p->n_params, st->grads, sc + TD_SC_GRAD_SUMSQ)))
    return td_errorf(err, rc, "gradient norm failed");
  LAP(pr->part + S_NORM * pr->reps);
  if ((rc = td_optim_issue(&p->optim, be, td_rec_scalars(p, pr->rec), sc + TD_SC_GRAD_SUMSQ,
                           p->n_params, st->params, st->grads, st->opt_state, sc + TD_SC_SCRATCH,
                           err)))
    return rc;
  LAP(pr->part + S_OPTIM * pr->reps);
#undef LAP
  return TD_OK;
}

/* The op column: the table's name, a pooling's kind, an activation's
 * function, "+act" for one fused into a dense or conv node, "(alias)" for
 * a node that only sees its input in another shape. */
static const char *op_label(const td_node *n, char *buf, size_t len) {
  const char *base = td_op_table[n->op].name;
  if (n->op == TD_OP_ACT)
    base = td_act_name(n->act);
  else if (n->op == TD_OP_POOL)
    base = n->pool == TD_POOL_MAX ? "max_pool" : "avg_pool";
  if ((n->op == TD_OP_DENSE || n->op == TD_OP_CONV) && n->act != TD_ACT_NONE)
    snprintf(buf, len, "%s+%s", base, td_act_name(n->act));
  else
    snprintf(buf, len, "%s%s", base, n->alias ? "(alias)" : "");
  return buf;
}

/* A node's FLOPs in forward and in backward (see the file's comment). */
static void node_flops(const td_node *n, uint32_t batch, double *fwd, double *bwd) {
  double all = td_op_table[n->op].flops(n, batch);
  if (n->op == TD_OP_DENSE || n->op == TD_OP_CONV) {
    *fwd = all / 3.0;
    *bwd = all / 3.0 * (n->dx[0] == TD_NONE ? 1.0 : 2.0);
  } else {
    *fwd = *bwd = all / 2.0;
  }
  if (!n->grad)
    *bwd = 0.0;
}

static double gflops(double flops, double ms) { return ms > 0 ? flops / (ms * 1e6) : 0.0; }

/* The best and median GFLOP/s of the backend's gemm at the floor's shape,
 * over reps runs after warmup. */
static int sgemm_rate(td_backend *be, int reps, int warmup, double *best, double *med) {
  float *x = malloc((size_t)FLOOR_M * FLOOR_K * sizeof *x);
  float *w = malloc((size_t)FLOOR_K * FLOOR_N * sizeof *w);
  float *y = malloc((size_t)FLOOR_M * FLOOR_N * sizeof *y);
  double *ms = malloc((size_t)reps * sizeof *ms);
  if (!x || !w || !y || !ms) {
    free(x), free(w), free(y), free(ms);
    return TD_ENOMEM;
  }
  td_prng_uniform(td_prng_key(1), x, (size_t)FLOOR_M * FLOOR_K, 0.0f, 1.0f);
  td_prng_normal(td_prng_key(2), w, (size_t)FLOOR_K * FLOOR_N);
  const double flops = 2.0 * FLOOR_M * FLOOR_K * FLOOR_N;
  *best = 0.0;
  for (int i = -warmup; i < reps; i++) {
    double t0 = td_mono_ms();
    be->ops->gemm(be, 0, 0, FLOOR_M, FLOOR_N, FLOOR_K, 1.0f, x, FLOOR_K, w, FLOOR_N, 0.0f, y,
                  FLOOR_N);
    double t = td_mono_ms() - t0;
    if (i >= 0) {
      ms[i] = t;
      if (gflops(flops, t) > *best)
        *best = gflops(flops, t);
    }
  }
  *med = gflops(flops, median(ms, (size_t)reps));
  free(x), free(w), free(y), free(ms);
  return TD_OK;
}

/* ---- the step's own GEMM calls, recorded once and replayed alone */

typedef struct gemm_call {
  int ta, tb, m, n, k, lda, ldb, ldc;
  float alpha, beta;
} gemm_call;

enum { MAX_CALLS = 4096 };
static gemm_call calls[MAX_CALLS];
static size_t n_calls;
static const td_backend_ops *real_ops;

static int recording_gemm(td_backend *be, int ta, int tb, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb, float beta, float *c,
                          int ldc) {
  if (n_calls < MAX_CALLS)
    calls[n_calls++] = (gemm_call){ta, tb, m, n, k, lda, ldb, ldc, alpha, beta};
  return real_ops->gemm(be, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Runs one step with the backend's gemm recording its calls, then times
 * each call alone (median of reps runs after warmup, on fresh buffers of
 * its shape); *ms: the sum of the medians, *flops: the calls' FLOPs. */
static int gemm_alone(prof *pr, int reps, int warmup, size_t *count, double *ms, double *flops,
                      td_error *err) {
  td_backend *be = pr->be;
  td_backend_ops rec = *be->ops;
  real_ops = be->ops;
  rec.gemm = recording_gemm;
  n_calls = 0;
  be->ops = &rec;
  int rc = run_step(pr, -1, err);
  be->ops = real_ops;
  if (rc)
    return rc;
  if (n_calls == MAX_CALLS)
    return td_errorf(err, TD_EINTERNAL, "more than %d GEMM calls in a step", MAX_CALLS);
  double *t = malloc((size_t)reps * sizeof *t);
  if (!t)
    return td_errorf(err, TD_ENOMEM, "out of memory");
  *ms = *flops = 0.0;
  for (size_t i = 0; i < n_calls && !rc; i++) {
    const gemm_call *g = &calls[i];
    size_t na = (size_t)(g->ta ? g->k : g->m) * g->lda, nb = (size_t)(g->tb ? g->n : g->k) * g->ldb;
    size_t nc = (size_t)g->m * g->ldc;
    float *a = malloc((na ? na : 1) * sizeof *a), *b = malloc((nb ? nb : 1) * sizeof *b);
    float *c = calloc(nc ? nc : 1, sizeof *c);
    if (!a || !b || !c) {
      rc = td_errorf(err, TD_ENOMEM, "out of memory");
    } else {
      td_prng_uniform(td_prng_key(5), a, na, -1.0f, 1.0f);
      td_prng_uniform(td_prng_key(6), b, nb, -1.0f, 1.0f);
      for (int r = -warmup; r < reps; r++) {
        double t0 = td_mono_ms();
        be->ops->gemm(be, g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, g->lda, b, g->ldb, g->beta,
                      c, g->ldc);
        if (r >= 0)
          t[r] = td_mono_ms() - t0;
      }
      *ms += median(t, (size_t)reps);
      *flops += 2.0 * g->m * g->n * (double)g->k;
    }
    free(a), free(b), free(c);
  }
  *count = n_calls;
  free(t);
  return rc;
}

/* The median of reps compiles of the job's model, in ms. */
static int compile_time(const Traind__V1__JobSpec *spec, int reps, double *ms, td_error *err) {
  double *s = malloc((size_t)reps * sizeof *s);
  if (!s)
    return td_errorf(err, TD_ENOMEM, "out of memory");
  for (int i = 0; i < reps; i++) {
    td_plan *p = NULL;
    int rc =
        td_plan_compile(spec->model, spec->optimizer, spec->training->batch_size, "cpu:0", &p, err);
    if (rc) {
      free(s);
      return rc;
    }
    s[i] = p->compile_ms;
    td_plan_free(p);
  }
  *ms = median(s, (size_t)reps);
  free(s);
  return TD_OK;
}

static int prof_setup(prof *pr, const prof_args *a, td_error *err) {
  const Traind__V1__JobSpec *spec = pr->spec;
  td_plan *plan = NULL;
  int rc = td_plan_compile(spec->model, spec->optimizer, spec->training->batch_size, "cpu:0", &plan,
                           err);
  if (rc)
    return rc;
  pr->plan = plan;
  if ((rc = td_cpu_backend_create(&pr->be, a->threads, err)) ||
      (rc = td_state_init(&pr->st, plan, pr->be, err)))
    return rc;
  /* The trainer's keys: init, shuffle, dropout from the job's seed. */
  td_key keys[3];
  td_prng_split(td_prng_key(spec->training->seed), keys, 3);
  if ((rc = td_state_init_params(&pr->st, keys[0], err)))
    return rc;
  const size_t b = plan->batch;
  pr->reps = a->reps;
  pr->src = malloc(b * plan->in_dim * sizeof *pr->src);
  pr->labels = malloc(b * sizeof *pr->labels);
  pr->idx = malloc(b * sizeof *pr->idx);
  pr->rec = calloc(1, plan->rec_bytes);
  pr->fwd = calloc(plan->n_nodes * (size_t)a->reps, sizeof *pr->fwd);
  pr->bwd = calloc(plan->n_nodes * (size_t)a->reps, sizeof *pr->bwd);
  pr->part = calloc(N_STEP_PARTS * (size_t)a->reps, sizeof *pr->part);
  uint32_t *bits = malloc(b * sizeof *bits);
  if (!pr->src || !pr->labels || !pr->idx || !pr->rec || !pr->fwd || !pr->bwd || !pr->part ||
      !bits) {
    free(bits);
    return td_errorf(err, TD_ENOMEM, "out of memory");
  }
  td_prng_uniform(td_prng_key(3), pr->src, b * plan->in_dim, 0.0f, 1.0f);
  td_prng_bits(td_prng_key(4), bits, b);
  for (size_t i = 0; i < b; i++) {
    pr->labels[i] = (int32_t)(bits[i] % plan->out_dim);
    pr->idx[i] = (uint32_t)i;
  }
  free(bits);
  /* Every step reuses the record of the first update (its optimizer
   * scalars and dropout keys): the work is the same for any update. */
  td_plan_fill_rec(plan, pr->rec, 0, 0, 0, keys[2]);
  return TD_OK;
}

static void prof_free(prof *pr) {
  td_state_free(&pr->st);
  if (pr->be)
    td_backend_destroy(pr->be);
  td_plan_free((td_plan *)pr->plan);
  free(pr->src), free(pr->labels), free(pr->idx), free(pr->rec);
  free(pr->fwd), free(pr->bwd), free(pr->part);
}

typedef struct floors {
  double best_gf, med_gf;       /* the large GEMM's rates */
  size_t calls;                 /* the step's GEMM calls */
  double alone_ms, alone_flops; /* their medians' sum, their FLOPs */
} floors;

static void report(prof *pr, const prof_args *a, double compile_ms, double step_ms,
                   const floors *fl) {
  const double best_gf = fl->best_gf, med_gf = fl->med_gf;
  const td_plan *p = pr->plan;
  const int R = pr->reps;
  double part[N_STEP_PARTS];
  for (int k = 0; k < N_STEP_PARTS; k++)
    part[k] = median(pr->part + (size_t)k * R, (size_t)R);
  double *fwd = malloc((p->n_nodes ? p->n_nodes : 1) * 2 * sizeof *fwd), *bwd = fwd + p->n_nodes;
  if (!fwd) {
    fprintf(stderr, "step_profile: out of memory\n");
    return;
  }
  double sum = part[S_GATHER] + part[S_LOSS] + part[S_NORM] + part[S_OPTIM], flops = 0.0;
  for (size_t i = 0; i < p->n_nodes; i++) {
    fwd[i] = median(pr->fwd + i * R, (size_t)R);
    bwd[i] = median(pr->bwd + i * R, (size_t)R);
    sum += fwd[i] + bwd[i];
  }
  printf("job %s model=%s batch=%u threads=%d reps=%d warmup=%d\n", a->job,
         pr->spec->name ? pr->spec->name : "", p->batch, a->threads, R, a->warmup);
  printf("plan params=%zu nodes=%zu compile_ms=%.3f arena_bytes=%zu arena_unplanned_bytes=%zu "
         "step_flops=%.6g\n",
         p->n_params, p->n_nodes, compile_ms, p->arena_floats * sizeof(float),
         p->unplanned_floats * sizeof(float), p->flops);
  printf("\n%-4s %-20s %-16s %9s %9s %9s %9s %7s\n", "node", "name", "op", "fwd_ms", "fwd_GF/s",
         "bwd_ms", "bwd_GF/s", "share");
  for (size_t i = 0; i < p->n_nodes; i++) {
    const td_node *n = &p->nodes[i];
    char op[48], bms[16] = "-", bgf[16] = "-";
    double ff, bf;
    node_flops(n, p->batch, &ff, &bf);
    flops += ff + bf;
    if (n->grad) {
      snprintf(bms, sizeof bms, "%.3f", bwd[i]);
      snprintf(bgf, sizeof bgf, "%.1f", gflops(bf, bwd[i]));
    }
    printf("%-4zu %-20s %-16s %9.3f %9.1f %9s %9s %6.1f%%\n", i, n->name,
           op_label(n, op, sizeof op), fwd[i], gflops(ff, fwd[i]), bms, bgf,
           100.0 * (fwd[i] + bwd[i]) / sum);
  }
  for (int k = S_GATHER; k <= S_OPTIM; k++)
    printf("%-4s %-20s %-16s %9.3f %9s %9s %9s %6.1f%%\n", "-", part_names[k],
           k == S_LOSS    ? (p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY ? "softmax_xent"
                                                                                : "mse_onehot")
           : k == S_OPTIM ? "optim_passes"
           : k == S_NORM  ? "sumsq"
                          : "gather",
           part[k], "-", "-", "-", 100.0 * part[k] / sum);
  printf("\nforward_ms=%.3f backward_ms=%.3f (each as one median over the steps)\n",
         part[S_FWD_ALL], part[S_BWD_ALL]);
  printf("sum_of_medians_ms=%.3f step_ms=%.3f (median of %d whole steps; sum/step %.3f)\n", sum,
         step_ms, R, step_ms > 0 ? sum / step_ms : 0.0);
  printf("flops_run=%.6g (the ops as run; plan step_flops=%.6g) step_GF/s=%.1f\n", flops, p->flops,
         gflops(flops, step_ms));
  printf("gemm_calls=%zu gemm_alone_ms=%.3f (the step's GEMM calls, each timed alone; %.1f "
         "GF/s) gemm_alone/step=%.2f\n",
         fl->calls, fl->alone_ms, gflops(fl->alone_flops, fl->alone_ms),
         step_ms > 0 ? fl->alone_ms / step_ms : 0.0);
  printf("gemm m=%d k=%d n=%d threads=%d best_GF/s=%.1f median_GF/s=%.1f\n", FLOOR_M, FLOOR_K,
         FLOOR_N, a->threads, best_gf, med_gf);
  /* The floor of the work the step does, and of the plan's count (which
   * includes input gradients that no layer needs). */
  double floor_ms = best_gf > 0 ? flops / (best_gf * 1e6) : 0.0;
  double plan_floor_ms = best_gf > 0 ? p->flops / (best_gf * 1e6) : 0.0;
  printf("gemm_floor_ms=%.3f (flops_run at best_GF/s) step/floor=%.2f plan_floor_ms=%.3f "
         "(step_flops at best_GF/s) step/plan_floor=%.2f\n",
         floor_ms, floor_ms > 0 ? step_ms / floor_ms : 0.0, plan_floor_ms,
         plan_floor_ms > 0 ? step_ms / plan_floor_ms : 0.0);
  free(fwd);
}

int main(int argc, char **argv) {
  prof_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc)
    return rc;
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  if ((rc = td_jobspec_load(a.job, &spec, &err))) {
    fprintf(stderr, "step_profile: %s\n", err.msg);
    return 1;
  }
  prof pr = {.spec = spec};
  double compile_ms = 0.0, step_ms = 0.0;
  floors fl = {0};
  double *steps = malloc((size_t)a.reps * sizeof *steps);
  if (!steps)
    rc = td_errorf(&err, TD_ENOMEM, "out of memory");
  if (!rc)
    rc = compile_time(spec, a.reps, &compile_ms, &err);
  if (!rc)
    rc = prof_setup(&pr, &a, &err);
  for (int i = 0; !rc && i < a.warmup; i++)
    rc = run_step(&pr, -1, &err);
  for (int i = 0; !rc && i < a.reps; i++)
    rc = run_step(&pr, i, &err);
  for (int i = 0; !rc && i < a.reps; i++) {
    double t0 = td_mono_ms();
    rc = run_step(&pr, -1, &err);
    steps[i] = td_mono_ms() - t0;
  }
  if (!rc)
    step_ms = median(steps, (size_t)a.reps);
  /* The best of many runs: the floor's rate is what the GEMM can reach. */
  if (!rc &&
      (rc = sgemm_rate(pr.be, a.reps < 10 ? 30 : 3 * a.reps, a.warmup, &fl.best_gf, &fl.med_gf)))
    td_errorf(&err, rc, "gemm: out of memory");
  if (!rc)
    rc = gemm_alone(&pr, a.reps < 10 ? 30 : a.reps, a.warmup, &fl.calls, &fl.alone_ms,
                    &fl.alone_flops, &err);
  if (!rc)
    report(&pr, &a, compile_ms, step_ms, &fl);
  else
    fprintf(stderr, "step_profile: %s: %s\n", a.job, err.msg);
  free(steps);
  prof_free(&pr);
  td_jobspec_free(spec);
  return rc ? 1 : 0;
}
