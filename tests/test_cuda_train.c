/* The trainer on a GPU against the trainer on the CPU, its reference, over
 * real MNIST.
 *
 * Everywhere: a machine without a usable GPU gets 0 GPUs with a reason
 * naming the CUDA call, the GPU backend factory (td_gpu_backend) refuses
 * with TD_EUNSUPPORTED and no backend, and (with MNIST) a GPU job is
 * refused at td_trainer_init with that reason; then the test exits 77
 * (skipped) when those checks pass, 1 when they fail.
 *
 * With a GPU (CTest label gpu), on the first 1280 training and 1000 test
 * images of MNIST (10 steps of batch 128 per epoch, max_steps 20: two
 * epochs, both evaluated), for the reference MLP (784-256-128-10, adam) and
 * a variant with two dropout layers and clip_by_global_norm + adamw with a
 * warmup-cosine schedule:
 *   a. the GPU trainer (td_gpu_backend on GPU 0, steps recorded as CUDA
 *      graphs) against the CPU trainer on the same job: every step's loss
 *      (on_step, log_every_steps 1) and the epochs' train and test losses
 *      to a relative error below 1e-4, test accuracies to 2 images, the
 *      final parameters to a relative (norm-wise) error below 1e-4 and the
 *      optimizer state below 1e-2 (see check_model), and the plain MLP
 *      learns (its last loss is below its first);
 *   b. the recorded GPU run against an op-by-op GPU run (no_record): the
 *      first recorded its graphs and the second none, and losses,
 *      parameters, optimizer state and epoch figures are bitwise equal;
 *   c. the GPU trainer's example order of the last epoch (shuffled on the
 *      GPU) is the CPU trainer's and td_prng_permutation's, bit for bit;
 *   e. with 2 GPUs, the dropout model on devices count 2 against 1 GPU:
 *      losses and parameters to a relative error below 1e-5, optimizer
 *      state below 1e-4 (a skip line otherwise, and when the trainer
 *      refuses because NCCL is not available).
 * MNIST comes from $TRAIND_DATA_DIR; without it the test fails under
 * CI=true and is skipped (77) otherwise.
 *
 * With --reference (CTest labels gpu and long): d. the reference program
 * (config/jobs/mnist_mlp.yaml) on the GPU, 10 epochs of full MNIST, reaches
 * a test accuracy of at least 97%; prints each epoch's seconds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "clock.h"
#include "cuda_backend.h"
#include "gpus.h"
#include "jobspec.h"
#include "prng.h"
#include "train.h"

/* The data roots: $TRAIND_DATA_DIR split at ':'. */
enum { MAX_ROOTS = 8 };
static char *roots_buf;
static const char *roots[MAX_ROOTS];
static size_t n_roots;

static int gpu0[1] = {0}, gpu01[2] = {0, 1};

/* ------------------------------------------------------------------ jobs */

enum { STEPS = 20, MAX_EPOCHS = 16, TRAIN_N = 1280, TEST_N = 1000 };

static const char *const mlp_adam =
    "name: gpu-mlp\n"
    "model:\n"
    "  input_shape: [784]\n"
    "  layers:\n"
    "    - dense: {features: 256, kernel_init: HE_NORMAL, bias_init: ZEROS}\n"
    "    - relu: {}\n"
    "    - dense: {features: 128, kernel_init: HE_NORMAL, bias_init: ZEROS}\n"
    "    - relu: {}\n"
    "    - dense: {features: 10, kernel_init: HE_NORMAL, bias_init: ZEROS}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain: [{adam: {learning_rate: {constant: 0.001}, b1: 0.9, b2: 0.999, eps: 1.0e-8}}]\n";

/* Two dropout layers (two key slots); the clip is active (the gradients'
 * norm at the start is above 1); the schedule changes every step. */
static const char *const mlp_dropout_clip_adamw =
    "name: gpu-mlp-dropout\n"
    "model:\n"
    "  input_shape: [784]\n"
    "  layers:\n"
    "    - dense: {features: 256, kernel_init: HE_NORMAL}\n"
    "    - relu: {}\n"
    "    - dropout: {rate: 0.2}\n"
    "    - dense: {features: 128, kernel_init: HE_NORMAL}\n"
    "    - relu: {}\n"
    "    - dropout: {rate: 0.1}\n"
    "    - dense: {features: 10, kernel_init: HE_NORMAL}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain:\n"
    "    - clip_by_global_norm: {max_norm: 1.0}\n"
    "    - adamw:\n"
    "        learning_rate:\n"
    "          warmup_cosine_decay: {init_value: 1.0e-4, peak_value: 2.0e-3,\n"
    "                                warmup_steps: 5, decay_steps: 40}\n"
    "        weight_decay: 0.01\n";

/* The dataset and training part, and the devices of each kind of run. */
static const char *const job_tail =
    "dataset: {idx: {dir: mnist}, train_limit: %u, test_limit: %u}\n"
    "training: {epochs: 3, batch_size: 128, seed: 7, max_steps: %u, log_every_steps: 1}\n"
    "%s";

typedef enum run_kind { ON_CPU, ON_GPU, ON_2GPUS } run_kind;

static const char *devices_of(run_kind k) {
  return k == ON_CPU   ? ""
         : k == ON_GPU ? "devices: {kind: gpu}\n"
                       : "devices: {kind: gpu, count: 2}\n";
}

/* ------------------------------------------------------------------ runs */

/* What a run leaves behind. */
typedef struct run_out {
  int rc;
  td_error err;
  double sec;
  int n_steps;        /* on_step calls */
  int steps_in_order; /* they came as steps 1, 2, ... */
  float loss[STEPS];  /* by step */
  int n_epochs;
  td_epoch_point epochs[MAX_EPOCHS];
  int print_epochs; /* print each epoch point as it comes */
  size_t n_params, n_state;
  float *params, *state; /* downloaded after the run */
  uint32_t n_order;
  uint32_t *order; /* the last epoch's example order, from replica 0's backend */
  td_key shuffle_key;
  uint32_t last_epoch;
  int record, graph1, graphn; /* the trainer recorded; its graphs existed */
} run_out;

static void on_step(void *user, const td_trainer *t, const td_step_point *p) {
  (void)t;
  run_out *o = user;
  if (p->step != o->n_steps + 1)
    o->steps_in_order = 0;
  if (p->step >= 1 && p->step <= STEPS)
    o->loss[p->step - 1] = p->loss;
  o->n_steps++;
}

static void on_epoch(void *user, const td_trainer *t, const td_epoch_point *p) {
  (void)t;
  run_out *o = user;
  if (o->n_epochs < MAX_EPOCHS)
    o->epochs[o->n_epochs] = *p;
  o->n_epochs++;
  if (o->print_epochs)
    printf("  epoch %2u: %.2f s training (%.0f examples/s), %.2f s evaluation; train loss "
           "%.4f, test loss %.4f, test accuracy %.4f\n",
           p->epoch, p->epoch_sec, p->examples_per_sec, p->eval_sec, (double)p->train_loss,
           (double)p->test_loss, (double)p->test_accuracy);
}

static void run_out_free(run_out *o) {
  free(o->params);
  free(o->state);
  free(o->order);
  memset(o, 0, sizeof *o);
}

/* Copies n bytes of backend memory of t's replica 0 to a fresh host
 * buffer (NULL, with the reason in o->err, on failure). */
static void *fetch(td_trainer *t, const void *src, size_t bytes, run_out *o) {
  void *h = malloc(bytes ? bytes : 1);
  if (!h) {
    td_errorf(&o->err, TD_ENOMEM, "out of memory");
    return NULL;
  }
  int rc = t->be->ops->download(t->be, h, src, bytes);
  if (rc) {
    const int gpu = !t->be->host_memory;
    td_errorf(&o->err, rc, "downloading after the run failed%s%s", gpu ? ": " : "",
              gpu ? td_cuda_backend_last_error(t->be) : "");
    free(h);
    return NULL;
  }
  return h;
}

/* Builds a trainer for the job text and runs it to its end; the results
 * go to *o (o->rc: the first failure). */
static void run_job(const char *doc, run_kind kind, int no_record, run_out *o) {
  const int print = o->print_epochs;
  memset(o, 0, sizeof *o);
  o->print_epochs = print;
  o->steps_in_order = 1;
  Traind__V1__JobSpec *spec = NULL;
  o->rc = td_jobspec_parse(doc, strlen(doc), &spec, &o->err);
  if (o->rc)
    return;
  td_trainer_opts opts = {.data_roots = roots,
                          .n_data_roots = n_roots,
                          .backend = kind == ON_CPU ? NULL : td_gpu_backend,
                          .backend_arg = kind == ON_2GPUS ? gpu01 : gpu0,
                          .device_set = kind == ON_CPU ? NULL : "gpu",
                          .comm = kind == ON_CPU ? NULL : td_gpu_comm(),
                          .no_record = no_record};
  td_trainer t;
  double t0 = td_mono_sec();
  o->rc = td_trainer_init(&t, spec, &opts, &o->err);
  if (o->rc) {
    td_jobspec_free(spec);
    return;
  }
  o->record = t.record;
  td_train_hooks h = {.user = o, .on_step = on_step, .on_epoch = on_epoch};
  o->rc = td_trainer_run(&t, &h, NULL, &o->err);
  o->sec = td_mono_sec() - t0;
  o->graph1 = t.rep[0].graph1 != NULL;
  o->graphn = t.rep[0].graphn != NULL;
  o->last_epoch = t.epoch - 1;
  o->shuffle_key = t.shuffle_key;
  if (!o->rc) {
    o->n_params = t.plan->n_params;
    o->n_state = t.plan->optim.state_slots * t.plan->n_params;
    o->n_order = t.train.n;
    o->params = fetch(&t, t.st.params, o->n_params * sizeof(float), o);
    o->state = fetch(&t, t.st.opt_state, o->n_state * sizeof(float), o);
    o->order = t.be->host_memory
                   ? fetch(&t, t.order, (size_t)o->n_order * sizeof(uint32_t), o)
                   : fetch(&t, t.rep[0].order, (size_t)o->n_order * sizeof(uint32_t), o);
    if (!o->params || !o->state || !o->order)
      o->rc = o->err.code ? o->err.code : TD_ENOMEM;
  }
  td_trainer_free(&t);
  td_jobspec_free(spec);
}

static void job_text(char *doc, size_t len, const char *head, run_kind kind, uint32_t train_n,
                     uint32_t test_n, uint32_t max_steps) {
  int n = snprintf(doc, len, "%s", head);
  snprintf(doc + n, len - (size_t)n, job_tail, train_n, test_n, max_steps, devices_of(kind));
}

/* ------------------------------------------------------------ comparisons */

/* |a - b| / |b|, norm-wise over n floats. */
static double rel_norm(const float *a, const float *b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  return sqrt(num / (den > 0.0 ? den : 1e-30));
}

/* A run that must have succeeded, with all its steps and epochs. */
static int check_ran(const char *label, const run_out *o, int want_epochs) {
  CHECK(o->rc == 0, "%s: %s (%s)", label, o->err.msg, td_strerror(o->rc));
  if (o->rc)
    return 0;
  CHECK(o->n_steps == STEPS && o->steps_in_order, "%s: %d step points, want 1..%d", label,
        o->n_steps, STEPS);
  CHECK(o->n_epochs == want_epochs, "%s: %d epoch points, want %d", label, o->n_epochs,
        want_epochs);
  int evaluated = 1;
  for (int e = 0; e < o->n_epochs && e < MAX_EPOCHS; e++)
    evaluated &= o->epochs[e].evaluated;
  CHECK(evaluated, "%s: an epoch was not evaluated", label);
  return o->n_steps == STEPS && o->n_epochs == want_epochs;
}

/* got against want (the reference run): losses of every step and epoch
 * figures at relative tolerance tol, the parameters (norm-wise) at ptol,
 * the optimizer state (norm-wise) at stol. */
static void check_close(const char *label, const run_out *got, const run_out *want, double tol,
                        double ptol, double stol) {
  double worst = 0.0;
  int at = 0;
  for (int s = 0; s < STEPS; s++) {
    double e = td_relerr(got->loss[s], want->loss[s], 1e-6);
    if (!(e <= worst)) {
      worst = isnan(e) ? INFINITY : e;
      at = s;
    }
  }
  CHECK(worst < tol, "%s: step %d: loss %.9g, want %.9g (rel err %.3g >= %.3g)", label, at + 1,
        (double)got->loss[at], (double)want->loss[at], worst, tol);
  for (int e = 0; e < got->n_epochs && e < want->n_epochs && e < MAX_EPOCHS; e++) {
    const td_epoch_point *a = &got->epochs[e], *b = &want->epochs[e];
    CHECK(td_relerr(a->train_loss, b->train_loss, 1e-6) < tol &&
              td_relerr(a->test_loss, b->test_loss, 1e-6) < tol,
          "%s: epoch %u: train loss %.9g, test loss %.9g; want %.9g, %.9g", label, b->epoch,
          (double)a->train_loss, (double)a->test_loss, (double)b->train_loss, (double)b->test_loss);
    /* A near tie may go either way: 2 images of the test set. */
    CHECK(fabs((double)a->test_accuracy - b->test_accuracy) <= 2.0 / TEST_N + 1e-7,
          "%s: epoch %u: test accuracy %.6f, want %.6f", label, b->epoch, (double)a->test_accuracy,
          (double)b->test_accuracy);
  }
  if (got->n_params != want->n_params || got->n_state != want->n_state) {
    CHECK(0, "%s: %zu parameters and %zu state floats, want %zu and %zu", label, got->n_params,
          got->n_state, want->n_params, want->n_state);
    return;
  }
  double ep = rel_norm(got->params, want->params, want->n_params);
  double es = rel_norm(got->state, want->state, want->n_state);
  CHECK(ep < ptol, "%s: the final parameters differ by %.3g (relative), more than %.3g", label, ep,
        ptol);
  CHECK(es < stol, "%s: the final optimizer state differs by %.3g (relative), more than %.3g",
        label, es, stol);
  printf("%s: losses agree to %.3g, parameters to %.3g, optimizer state to %.3g\n", label, worst,
         ep, es);
}

/* got and want bitwise equal: losses, epoch figures, parameters, state. */
static void check_same(const char *label, const run_out *got, const run_out *want) {
  CHECK(memcmp(got->loss, want->loss, sizeof got->loss) == 0, "%s: the losses differ", label);
  for (int e = 0; e < got->n_epochs && e < want->n_epochs && e < MAX_EPOCHS; e++) {
    const td_epoch_point *a = &got->epochs[e], *b = &want->epochs[e];
    CHECK(a->train_loss == b->train_loss && a->train_accuracy == b->train_accuracy &&
              a->test_loss == b->test_loss && a->test_accuracy == b->test_accuracy,
          "%s: epoch %u: %.9g/%.9g %.9g/%.9g, want %.9g/%.9g %.9g/%.9g", label, b->epoch,
          (double)a->train_loss, (double)a->train_accuracy, (double)a->test_loss,
          (double)a->test_accuracy, (double)b->train_loss, (double)b->train_accuracy,
          (double)b->test_loss, (double)b->test_accuracy);
  }
  if (got->n_params != want->n_params || got->n_state != want->n_state) {
    CHECK(0, "%s: the runs have different sizes", label);
    return;
  }
  size_t dp = 0, ds = 0;
  for (size_t i = 0; i < want->n_params; i++)
    dp += memcmp(&got->params[i], &want->params[i], sizeof(float)) != 0;
  for (size_t i = 0; i < want->n_state; i++)
    ds += memcmp(&got->state[i], &want->state[i], sizeof(float)) != 0;
  CHECK(dp == 0, "%s: %zu of %zu parameters differ", label, dp, want->n_params);
  CHECK(ds == 0, "%s: %zu of %zu optimizer state floats differ", label, ds, want->n_state);
}

/* The run's last epoch order against td_prng_permutation of that epoch's
 * key (the trainer's shuffle key folded with the epoch's index) and, when
 * given, another run's. */
static void check_order(const char *label, const run_out *o, const run_out *other) {
  if (o->rc || !o->order)
    return;
  uint32_t *want = malloc((size_t)o->n_order * sizeof *want);
  int rc =
      td_prng_permutation(td_prng_fold_in(o->shuffle_key, o->last_epoch - 1), want, o->n_order);
  CHECK(rc == 0 && memcmp(o->order, want, (size_t)o->n_order * sizeof *want) == 0,
        "%s: the example order of epoch %u is not td_prng_permutation's", label, o->last_epoch);
  if (other && !other->rc && other->order)
    CHECK(other->n_order == o->n_order && other->last_epoch == o->last_epoch &&
              memcmp(o->order, other->order, (size_t)o->n_order * sizeof *want) == 0,
          "%s: the example order of epoch %u differs from the CPU trainer's", label, o->last_epoch);
  free(want);
}

/* ----------------------------------------------------------------- checks */

/* a, b and c for one model. */
static void check_model(const char *name, const char *head) {
  char doc[4096], label[160];
  run_out cpu = {0}, gpu = {0}, flat = {0};
  job_text(doc, sizeof doc, head, ON_CPU, TRAIN_N, TEST_N, STEPS);
  run_job(doc, ON_CPU, 0, &cpu);
  snprintf(label, sizeof label, "%s on the CPU", name);
  int ok = check_ran(label, &cpu, 2);
  /* Learning: the last loss is below the first. */
  CHECK(!ok || cpu.loss[STEPS - 1] < cpu.loss[0], "%s: loss %.4f at step 1, %.4f at step %d", label,
        (double)cpu.loss[0], (double)cpu.loss[STEPS - 1], STEPS);

  job_text(doc, sizeof doc, head, ON_GPU, TRAIN_N, TEST_N, STEPS);
  run_job(doc, ON_GPU, 0, &gpu);
  snprintf(label, sizeof label, "%s on the GPU (recorded)", name);
  ok = check_ran(label, &gpu, 2) && ok;
  CHECK(gpu.rc || (gpu.record && gpu.graph1 && gpu.graphn),
        "%s: the trainer did not record its steps (record %d, graphs %d %d)", label, gpu.record,
        gpu.graph1, gpu.graphn);
  if (ok) {
    snprintf(label, sizeof label, "%s: GPU against CPU", name);
    /* Rounding differences flip the odd ReLU whose input is within
     * rounding of 0, which changes a whole column of that step's
     * gradients: the moments take that in full (about 2e-3 when one
     * flips in the reference MLP, between the CPU backend on 1 and 2
     * BLAS threads), the parameters only by adam's steps (about 5e-5). */
    check_close(label, &gpu, &cpu, 1e-4, 1e-4, 1e-2); /* a */
    check_order(label, &gpu, &cpu);                   /* c */
  }

  run_job(doc, ON_GPU, 1, &flat);
  snprintf(label, sizeof label, "%s on the GPU (op by op)", name);
  int ok_flat = check_ran(label, &flat, 2);
  CHECK(flat.rc || (!flat.record && !flat.graph1 && !flat.graphn),
        "%s: no_record, but the trainer recorded (record %d, graphs %d %d)", label, flat.record,
        flat.graph1, flat.graphn);
  if (ok_flat && !gpu.rc) {
    snprintf(label, sizeof label, "%s: recorded against op by op", name);
    check_same(label, &gpu, &flat); /* b */
  }
  printf("%s: %.2f s on the CPU, %.2f s on the GPU recorded, %.2f s op by op\n", name, cpu.sec,
         gpu.sec, flat.sec);
  run_out_free(&cpu);
  run_out_free(&gpu);
  run_out_free(&flat);
}

/* e: devices count 2 on GPUs 0 and 1 against one GPU, on the model with
 * dropout (each replica draws its rows' part of the batch's mask) and the
 * clip (the norm of the averaged gradients). Not on the plain adam MLP:
 * there a ReLU flip at rounding level moves the parameters by about 5e-5
 * (2 CPU devices against 1 do the same), which 1e-5 cannot allow. */
static void check_two_gpus(const char *name, const char *head, int n_gpus) {
  if (n_gpus < 2) {
    printf("SKIP: %s on 2 GPUs: this machine has %d\n", name, n_gpus);
    return;
  }
  char doc[4096], label[160];
  run_out one = {0}, two = {0};
  job_text(doc, sizeof doc, head, ON_GPU, TRAIN_N, TEST_N, STEPS);
  run_job(doc, ON_GPU, 0, &one);
  job_text(doc, sizeof doc, head, ON_2GPUS, TRAIN_N, TEST_N, STEPS);
  run_job(doc, ON_2GPUS, 0, &two);
  if (!td_gpu_comm()) {
    /* A build without NCCL: the job is refused, saying so. */
    CHECK(two.rc == TD_EUNSUPPORTED, "%s on 2 GPUs without NCCL: rc %d (%s)", name, two.rc,
          two.err.msg);
    CHECK_STR_CONTAINS(two.err.msg, "NCCL");
    printf("SKIP: %s on 2 GPUs: this build has no NCCL (%s)\n", name, two.err.msg);
  } else if (two.rc == TD_EUNSUPPORTED && strstr(two.err.msg, "NCCL") &&
             strstr(two.err.msg, "not available")) {
    printf("SKIP: %s on 2 GPUs: %s\n", name, two.err.msg);
  } else {
    snprintf(label, sizeof label, "%s on 1 GPU", name);
    int ok = check_ran(label, &one, 2);
    snprintf(label, sizeof label, "%s on 2 GPUs", name);
    ok = check_ran(label, &two, 2) && ok;
    if (ok) {
      snprintf(label, sizeof label, "%s: 2 GPUs against 1", name);
      check_close(label, &two, &one, 1e-5, 1e-5, 1e-4);
      check_order(label, &two, &one);
    }
  }
  run_out_free(&one);
  run_out_free(&two);
}

/* d: the reference program as shipped, on the GPU. */
static void check_reference(void) {
  const char *src = getenv("TRAIND_SOURCE_DIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/config/jobs/mnist_mlp.yaml", src && *src ? src : ".");
  FILE *f = fopen(path, "rb");
  CHECK(f != NULL, "cannot open %s (TRAIND_SOURCE_DIR names the source tree)", path);
  if (!f)
    return;
  static char doc[65536];
  size_t n = fread(doc, 1, sizeof doc - 64, f);
  fclose(f);
  doc[n] = '\0';
  /* The job as shipped, on a GPU: devices is a key of its own. */
  if (n && doc[n - 1] != '\n')
    strcat(doc, "\n");
  strcat(doc, "devices: {kind: gpu}\n");
  run_out o = {.print_epochs = 1};
  printf("the reference program (%s) on GPU 0:\n", path);
  run_job(doc, ON_GPU, 0, &o);
  CHECK(o.rc == 0, "reference program: %s (%s)", o.err.msg, td_strerror(o.rc));
  if (!o.rc) {
    const int kept = o.n_epochs < MAX_EPOCHS ? o.n_epochs : MAX_EPOCHS;
    const td_epoch_point *last = kept ? &o.epochs[kept - 1] : NULL;
    CHECK(o.n_epochs == 10 && last && last->epoch == 10 && last->evaluated,
          "reference program: %d epochs", o.n_epochs);
    CHECK(o.n_steps == 10 * (60000 / 128), "reference program: %d steps, want %d", o.n_steps,
          10 * (60000 / 128));
    CHECK(last && last->test_accuracy >= 0.97f, "reference program: test accuracy %.4f < 0.97",
          last ? (double)last->test_accuracy : 0.0);
    CHECK(o.record && o.graph1 && o.graphn, "reference program: the steps were not recorded");
    /* The last epoch's order of all 60000 examples, shuffled on the GPU. */
    CHECK(o.n_order == 60000, "reference program: %u training examples", o.n_order);
    check_order("reference program", &o, NULL);
    double train = 0.0;
    for (int e = 0; e < o.n_epochs && e < MAX_EPOCHS; e++)
      train += o.epochs[e].epoch_sec;
    printf("reference program: test accuracy %.4f after %d epochs; %.2f s training in all "
           "(%.3f s per epoch), %.2f s with loading and evaluation\n",
           last ? (double)last->test_accuracy : 0.0, o.n_epochs, train,
           o.n_epochs ? train / o.n_epochs : 0.0, o.sec);
  }
  run_out_free(&o);
}

/* ------------------------------------------------------------------ main */

/* No GPU: the reasons, the factory's refusal, and (with MNIST) the
 * trainer's; 77 when all hold. */
static int no_gpu(const char *why) {
  CHECK(why[0] != '\0', "no GPU but no reason");
  CHECK_STR_CONTAINS(why, "cudaGetDeviceCount");
  char buf[512] = "";
  const char *why2 = buf;
  CHECK(td_gpus_count(buf, sizeof buf) == 0, "td_gpus_count reports GPUs");
  CHECK_STR_CONTAINS(why2, "cudaGetDeviceCount");
  td_error err = {0};
  td_backend dummy, *be = &dummy; /* must be cleared */
  int rc = td_gpu_backend(gpu0, 0, 1, &be, &err);
  CHECK(rc == TD_EUNSUPPORTED && be == NULL, "the GPU backend factory without a GPU: rc %d", rc);
  CHECK_STR_CONTAINS(err.msg, "no usable GPU");
  /* A job on 2 GPUs given no communicator is refused before anything
   * loads (NCCL is what a multi-GPU job needs). */
  char doc2[4096];
  job_text(doc2, sizeof doc2, mlp_adam, ON_2GPUS, 256, 256, STEPS);
  Traind__V1__JobSpec *spec = NULL;
  rc = td_jobspec_parse(doc2, strlen(doc2), &spec, &err);
  CHECK(rc == 0, "job text: %s", err.msg);
  if (!rc) {
    td_trainer t;
    td_trainer_opts opts = {.data_roots = roots,
                            .n_data_roots = n_roots,
                            .backend = td_gpu_backend,
                            .backend_arg = gpu01,
                            .device_set = "gpu"};
    rc = td_trainer_init(&t, spec, &opts, &err);
    CHECK(rc == TD_EUNSUPPORTED, "a 2-GPU job without a communicator: rc %d (%s)", rc, err.msg);
    CHECK_STR_CONTAINS(err.msg, "NCCL");
    if (rc == 0)
      td_trainer_free(&t);
    td_jobspec_free(spec);
  }
  if (n_roots) {
    char doc[4096];
    job_text(doc, sizeof doc, mlp_adam, ON_GPU, 256, 256, STEPS);
    run_out o = {0};
    run_job(doc, ON_GPU, 0, &o);
    CHECK(o.rc == TD_EUNSUPPORTED, "a GPU job without a GPU: rc %d (%s)", o.rc, o.err.msg);
    CHECK_STR_CONTAINS(o.err.msg, "no usable GPU");
    run_out_free(&o);
  } else {
    printf("SKIP: the trainer's refusal of a GPU job (needs MNIST under TRAIND_DATA_DIR)\n");
  }
  int failed = td_check_exit();
  printf("no GPU here (%s): the GPU trainer's checks are skipped\n", why);
  return failed ? 1 : 77;
}

static void find_roots(void) {
  const char *d = td_test_data_root();
  if (!d)
    return;
  roots_buf = strdup(d);
  for (char *s = roots_buf, *tok; n_roots < MAX_ROOTS && (tok = strsep(&s, ":"));)
    if (*tok)
      roots[n_roots++] = tok;
}

int main(int argc, char **argv) {
  const int reference = argc > 1 && strcmp(argv[1], "--reference") == 0;
  find_roots();
  int count = -1;
  char why[512] = "";
  CHECK(td_cuda_device_count(&count, why, sizeof why) == TD_OK, "device count");
  if (count <= 0) {
    int rc = no_gpu(why);
    free(roots_buf);
    return rc;
  }
  if (!n_roots) {
    free(roots_buf);
    if (td_test_in_ci()) {
      CHECK(0, "TRAIND_DATA_DIR is not set under CI=true; the GPU trainer's checks need MNIST");
      return td_check_exit();
    }
    printf("SKIP: the GPU trainer's checks (set TRAIND_DATA_DIR to the directory holding "
           "mnist/)\n");
    return 77;
  }
  printf("%d GPU%s\n", count, count == 1 ? "" : "s");
  if (reference) {
    check_reference();
  } else {
    check_model("mlp adam", mlp_adam);
    check_model("mlp dropout clip adamw cosine", mlp_dropout_clip_adamw);
    check_two_gpus("mlp dropout clip adamw cosine", mlp_dropout_clip_adamw, count);
  }
  free(roots_buf);
  return td_check_exit();
}
