/* The training loop on a small synthetic IDX dataset written to a temporary
 * data root: reproducibility from the seed, learning, the compile cache,
 * NaN detection, cancellation, and resuming from checkpoints bitwise. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "jobspec.h"
#include "prng.h"
#include "train.h"

enum { NTRAIN = 1024, NTEST = 256, ROWS = 4, COLS = 5, CLASSES = 3, MAXSTEPS = 512 };

static void put_be32(FILE *f, uint32_t v) {
  unsigned char b[4] = {v >> 24, v >> 16, v >> 8, v};
  fwrite(b, 1, 4, f);
}

/* Images whose class is the brightest of three pixel groups. */
static void write_set(const char *dir, const char *img, const char *lab, uint32_t n,
                      uint32_t seed) {
  char path[512];
  uint32_t *bits = malloc(sizeof(uint32_t) * n * (ROWS * COLS + 1));
  td_prng_bits(td_prng_key(seed), bits, (size_t)n * (ROWS * COLS + 1));
  snprintf(path, sizeof path, "%s/%s", dir, img);
  FILE *fi = fopen(path, "wb");
  snprintf(path, sizeof path, "%s/%s", dir, lab);
  FILE *fl = fopen(path, "wb");
  put_be32(fi, 0x803);
  put_be32(fi, n);
  put_be32(fi, ROWS);
  put_be32(fi, COLS);
  put_be32(fl, 0x801);
  put_be32(fl, n);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t *b = bits + (size_t)i * (ROWS * COLS + 1);
    unsigned char px[ROWS * COLS];
    int label = (int)(b[ROWS * COLS] % CLASSES);
    for (int k = 0; k < ROWS * COLS; k++)
      px[k] = (unsigned char)(b[k] % 128);
    for (int k = label * 6; k < label * 6 + 6; k++)
      px[k] = (unsigned char)(px[k] + 100);
    fwrite(px, 1, sizeof px, fi);
    unsigned char l = (unsigned char)label;
    fwrite(&l, 1, 1, fl);
  }
  fclose(fi);
  fclose(fl);
  free(bits);
}

static const char *job_fmt =
    "name: synthetic\n"
    "model:\n"
    "  input_shape: [4, 5]\n"
    "  layers:\n"
    "    - dense: {features: 16, kernel_init: HE_NORMAL}\n"
    "    - relu: {}\n"
    "    - dropout: {rate: 0.1}\n"
    "    - dense: {features: 3, kernel_init: HE_NORMAL}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain: [{clip_by_global_norm: {max_norm: 1.0}}, {adamw: {learning_rate: {constant: %s}}}]\n"
    "dataset: {idx: {dir: syn, train_images: train-img, train_labels: train-lab,\n"
    "                test_images: test-img, test_labels: test-lab}}\n"
    "training: {epochs: %u, batch_size: %u, seed: %u}\n";

typedef struct record {
  float loss[MAXSTEPS];
  int n;
  int stop_after; /* cancel once this many steps ran (0: never) */
} record;

static void on_step(void *user, const td_trainer *t, const td_step_point *p) {
  (void)t;
  record *r = user;
  if (r->n < MAXSTEPS)
    r->loss[r->n++] = p->loss;
}

static int stop(void *user) {
  record *r = user;
  return r->stop_after && r->n >= r->stop_after;
}

static const char *roots[1];
static size_t last_n_params; /* of the last run's plan */

static int run(const char *lr, unsigned epochs, unsigned batch, unsigned seed, td_plan_cache *cache,
               record *rec, float **params_out, td_epoch_point *last, td_error *err, int *hit) {
  char doc[2048];
  snprintf(doc, sizeof doc, job_fmt, lr, epochs, batch, seed);
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, err);
  if (rc)
    return rc;
  td_trainer t;
  td_trainer_opts o = {.data_roots = roots, .n_data_roots = 1, .threads = 1, .cache = cache};
  rc = td_trainer_init(&t, spec, &o, err);
  if (!rc) {
    if (hit)
      *hit = t.plan_hit;
    td_train_hooks h = {.user = rec, .on_step = on_step, .should_stop = stop};
    rc = td_trainer_run(&t, &h, last, err);
    if (params_out) {
      last_n_params = t.plan->n_params;
      *params_out = malloc(sizeof(float) * t.plan->n_params);
      memcpy(*params_out, t.st.params, sizeof(float) * t.plan->n_params);
    }
    td_trainer_free(&t);
  }
  td_jobspec_free(spec);
  return rc;
}

/* ---- resume */

enum { RESUME_EPOCHS = 3, RESUME_BATCH = 32, RESUME_STEPS = RESUME_EPOCHS * (NTRAIN / 32) };

/* A run that records every step's loss by step number, every epoch point,
 * and writes a checkpoint at the boundaries after the listed steps. */
typedef struct resume_rec {
  float loss[RESUME_STEPS + 1];
  td_epoch_point epochs[RESUME_EPOCHS + 1];
  int64_t save_at[4];
  char dir[600];
  int saved, stop_after;
  int64_t steps_run;
} resume_rec;

static void r_step(void *user, const td_trainer *t, const td_step_point *p) {
  (void)t;
  resume_rec *r = user;
  if (p->step <= RESUME_STEPS)
    r->loss[p->step] = p->loss;
  r->steps_run++;
}

static void r_epoch(void *user, const td_trainer *t, const td_epoch_point *p) {
  (void)t;
  resume_rec *r = user;
  if (p->epoch <= RESUME_EPOCHS)
    r->epochs[p->epoch] = *p;
}

static void ckpt_path(const resume_rec *r, int64_t step, char *buf, size_t len) {
  snprintf(buf, len, "%s/at-%lld.h5", r->dir, (long long)step);
}

static void save(const td_trainer *t, const char *path) {
  td_ckpt_meta m;
  td_trainer_meta(t, &m);
  td_error err = {0};
  int rc = td_ckpt_write(path, &t->st, &m, &err);
  CHECK(rc == 0, "checkpoint at step %lld: %s", (long long)t->st.step, err.msg);
}

static void r_boundary(void *user, td_trainer *t) {
  resume_rec *r = user;
  for (int i = 0; i < 4; i++)
    if (r->save_at[i] && r->save_at[i] == t->st.step) {
      char path[700];
      ckpt_path(r, t->st.step, path, sizeof path);
      save(t, path);
      r->saved++;
    }
}

static int r_stop(void *user) {
  resume_rec *r = user;
  return r->stop_after && r->steps_run >= r->stop_after;
}

/* A trainer for the resume runs (threads 2: the bitwise results must not
 * depend on the BLAS split being the same as a one-thread run). */
static int resume_trainer(td_trainer *t, Traind__V1__JobSpec **spec, unsigned batch, unsigned seed,
                          td_error *err) {
  char doc[2048];
  snprintf(doc, sizeof doc, job_fmt, "0.01", (unsigned)RESUME_EPOCHS, batch, seed);
  int rc = td_jobspec_parse(doc, strlen(doc), spec, err);
  if (rc)
    return rc;
  td_trainer_opts o = {.data_roots = roots, .n_data_roots = 1, .threads = 2};
  rc = td_trainer_init(t, *spec, &o, err);
  if (rc)
    td_jobspec_free(*spec);
  return rc;
}

/* Resumes from `path` and runs to the end; compares with the full run. */
static void check_resumed(const char *path, int64_t at, const resume_rec *full,
                          const float *full_params, const char *label) {
  td_trainer t;
  Traind__V1__JobSpec *spec = NULL;
  td_error err = {0};
  int rc = resume_trainer(&t, &spec, RESUME_BATCH, 7, &err);
  CHECK(rc == 0, "%s: %s", label, err.msg);
  if (rc)
    return;
  rc = td_trainer_resume(&t, path, &err);
  CHECK(rc == 0, "%s: resume: %s", label, err.msg);
  CHECK(t.st.step == at, "%s: resumed at step %lld, want %lld", label, (long long)t.st.step,
        (long long)at);
  resume_rec r;
  memset(&r, 0, sizeof r);
  td_train_hooks h = {.user = &r, .on_step = r_step, .on_epoch = r_epoch};
  rc = td_trainer_run(&t, &h, NULL, &err);
  CHECK(rc == 0, "%s: run: %s", label, err.msg);
  CHECK(r.steps_run == RESUME_STEPS - at, "%s: ran %lld steps after the resume, want %lld", label,
        (long long)r.steps_run, (long long)(RESUME_STEPS - at));
  int same = 1;
  for (int64_t s = at + 1; s <= RESUME_STEPS; s++)
    same &= memcmp(&r.loss[s], &full->loss[s], sizeof(float)) == 0;
  CHECK(same, "%s: the losses after step %lld differ from the uninterrupted run's", label,
        (long long)at);
  CHECK(memcmp(t.st.params, full_params, sizeof(float) * t.plan->n_params) == 0,
        "%s: the final parameters differ from the uninterrupted run's", label);
  /* Epoch points from the resumed epoch on: train figures cover the whole
   * epoch, its steps before the resume included. */
  for (uint32_t e = (uint32_t)(at / (NTRAIN / RESUME_BATCH)) + 1; e <= RESUME_EPOCHS; e++) {
    const td_epoch_point *a = &r.epochs[e], *b = &full->epochs[e];
    CHECK(a->epoch == e && a->train_loss == b->train_loss &&
              a->train_accuracy == b->train_accuracy && a->test_loss == b->test_loss &&
              a->test_accuracy == b->test_accuracy,
          "%s: epoch %u: train %.9g/%.9g test %.9g/%.9g, uninterrupted %.9g/%.9g %.9g/%.9g", label,
          e, a->train_loss, a->train_accuracy, a->test_loss, a->test_accuracy, b->train_loss,
          b->train_accuracy, b->test_loss, b->test_accuracy);
  }
  td_trainer_free(&t);
  td_jobspec_free(spec);
}

static void check_resume(const char *root) {
  resume_rec full;
  memset(&full, 0, sizeof full);
  snprintf(full.dir, sizeof full.dir, "%s", root);
  /* 32 steps per epoch: 32 is the boundary after epoch 1 (position epoch 2,
   * nothing taken), 50 is mid-epoch 2. */
  full.save_at[0] = 32;
  full.save_at[1] = 50;
  td_trainer t;
  Traind__V1__JobSpec *spec = NULL;
  td_error err = {0};
  int rc = resume_trainer(&t, &spec, RESUME_BATCH, 7, &err);
  CHECK(rc == 0, "full run: %s", err.msg);
  if (rc)
    return;
  td_train_hooks h = {
      .user = &full, .on_step = r_step, .on_epoch = r_epoch, .at_boundary = r_boundary};
  rc = td_trainer_run(&t, &h, NULL, &err);
  CHECK(rc == 0 && full.steps_run == RESUME_STEPS && full.saved == 2,
        "full run: rc %d, %lld steps, %d checkpoints: %s", rc, (long long)full.steps_run,
        full.saved, err.msg);
  float *params = malloc(sizeof(float) * t.plan->n_params);
  memcpy(params, t.st.params, sizeof(float) * t.plan->n_params);
  CHECK(t.epoch == RESUME_EPOCHS + 1 && t.step_in_epoch == 0,
        "after the run the position is epoch %u step %u", t.epoch, t.step_in_epoch);
  td_trainer_free(&t);
  td_jobspec_free(spec);

  char path[700];
  ckpt_path(&full, 32, path, sizeof path);
  check_resumed(path, 32, &full, params, "resume at an epoch boundary");
  ckpt_path(&full, 50, path, sizeof path);
  check_resumed(path, 50, &full, params, "resume mid-epoch");

  /* Stopped (as by a cancel or the daemon's stop) and checkpointed after
   * the run returned, as the daemon does on SIGTERM. */
  resume_rec part;
  memset(&part, 0, sizeof part);
  part.stop_after = 77;
  rc = resume_trainer(&t, &spec, RESUME_BATCH, 7, &err);
  CHECK(rc == 0, "stopped run: %s", err.msg);
  if (!rc) {
    h = (td_train_hooks){.user = &part, .on_step = r_step, .should_stop = r_stop};
    rc = td_trainer_run(&t, &h, NULL, &err);
    CHECK(rc == TD_ECANCELLED && t.st.step == 77 && t.epoch == 3 && t.step_in_epoch == 13,
          "stopped run: rc %d at step %lld, position epoch %u step %u", rc, (long long)t.st.step,
          t.epoch, t.step_in_epoch);
    ckpt_path(&part, 77, path, sizeof path);
    snprintf(part.dir, sizeof part.dir, "%s", root);
    ckpt_path(&part, 77, path, sizeof path);
    save(&t, path);
    td_trainer_free(&t);
    td_jobspec_free(spec);
    check_resumed(path, 77, &full, params, "resume after a stop");
  }

  /* Refusals leave the trainer as it was: another seed; another batch size
   * (the position does not fit 32 steps per epoch). */
  rc = resume_trainer(&t, &spec, RESUME_BATCH, 8, &err);
  CHECK(rc == 0, "seed 8: %s", err.msg);
  if (!rc) {
    float *before = malloc(sizeof(float) * t.plan->n_params);
    memcpy(before, t.st.params, sizeof(float) * t.plan->n_params);
    ckpt_path(&full, 50, path, sizeof path);
    rc = td_trainer_resume(&t, path, &err);
    CHECK(rc == TD_EDATA, "a checkpoint of seed 7 resumed by seed 8: rc %d", rc);
    CHECK_STR_CONTAINS(err.msg, "seed 7; this job's seed is 8");
    CHECK(t.st.step == 0 && t.epoch == 1 && t.step_in_epoch == 0 &&
              memcmp(before, t.st.params, sizeof(float) * t.plan->n_params) == 0,
          "a refused resume changed the trainer");
    free(before);
    td_trainer_free(&t);
    td_jobspec_free(spec);
  }
  resume_rec b64;
  memset(&b64, 0, sizeof b64);
  snprintf(b64.dir, sizeof b64.dir, "%s/b64", root);
  mkdir(b64.dir, 0755);
  b64.save_at[0] = 20; /* 16 steps per epoch: epoch 2, step 4 */
  rc = resume_trainer(&t, &spec, 64, 7, &err);
  CHECK(rc == 0, "batch 64: %s", err.msg);
  if (!rc) {
    h = (td_train_hooks){.user = &b64, .at_boundary = r_boundary};
    rc = td_trainer_run(&t, &h, NULL, &err);
    CHECK(rc == 0 && b64.saved == 1, "batch 64 run: rc %d, %d saved", rc, b64.saved);
    td_trainer_free(&t);
    td_jobspec_free(spec);
  }
  rc = resume_trainer(&t, &spec, RESUME_BATCH, 7, &err);
  if (!rc) {
    ckpt_path(&b64, 20, path, sizeof path);
    rc = td_trainer_resume(&t, path, &err);
    CHECK(rc == TD_EDATA, "a batch-64 checkpoint resumed at batch 32: rc %d", rc);
    CHECK_STR_CONTAINS(err.msg, "does not fit step 20 with 32 steps per epoch");
    td_trainer_free(&t);
    td_jobspec_free(spec);
  }
  free(params);
}

/* ---- data parallelism */

enum { DP_BATCH = 96, DP_STEPS = 50 };

static const char *dp_fmt =
    "name: dp\n"
    "model:\n"
    "  input_shape: [4, 5]\n"
    "  layers:\n"
    "    - dense: {features: 16, kernel_init: HE_NORMAL}\n"
    "    - relu: {}\n"
    "    - dropout: {rate: 0.1}\n"
    "    - dense: {features: 3, kernel_init: HE_NORMAL}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain: [{clip_by_global_norm: {max_norm: 1.0}}, {adamw: {learning_rate: {constant: "
    "0.01}}}]\n"
    "dataset: {idx: {dir: syn, train_images: train-img, train_labels: train-lab,\n"
    "                test_images: test-img, test_labels: test-lab}}\n"
    "training: {epochs: 10, batch_size: %u, seed: 3, max_steps: %u}\n"
    "devices: {count: %u}\n";

typedef struct dp_rec {
  float loss[DP_STEPS + 1];
  int steps, drift; /* steps seen; steps after which a replica differed */
} dp_rec;

/* Every replica's parameters and optimizer state equal replica 0's, bit
 * for bit, after every step. */
static void dp_step(void *user, const td_trainer *t, const td_step_point *p) {
  dp_rec *r = user;
  if (p->step <= DP_STEPS)
    r->loss[p->step] = p->loss;
  r->steps++;
  const td_plan *pl = t->plan;
  size_t no = pl->optim.state_slots * pl->n_params;
  for (int k = 1; k < t->n_rep; k++)
    if (memcmp(t->rep[k].st->params, t->st.params, sizeof(float) * pl->n_params) != 0 ||
        memcmp(t->rep[k].st->opt_state, t->st.opt_state, sizeof(float) * no) != 0 ||
        t->rep[k].st->step != t->st.step) {
      r->drift++;
      break;
    }
}

/* A checkpoint of the run at this step (0: none), and one to resume from
 * (NULL: none). */
static const char *dp_save_path, *dp_resume_path;
static int64_t dp_save_at;

static void dp_boundary(void *user, td_trainer *t) {
  (void)user;
  if (dp_save_at && t->st.step == dp_save_at)
    save(t, dp_save_path);
}

static int dp_run(unsigned devices, unsigned batch, dp_rec *rec, float **params, size_t *np,
                  td_epoch_point *last, td_error *err) {
  char doc[2048];
  snprintf(doc, sizeof doc, dp_fmt, batch, (unsigned)DP_STEPS, devices);
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, err);
  if (rc)
    return rc;
  td_trainer t;
  td_trainer_opts o = {.data_roots = roots, .n_data_roots = 1, .threads = 2};
  rc = td_trainer_init(&t, spec, &o, err);
  if (!rc && dp_resume_path)
    rc = td_trainer_resume(&t, dp_resume_path, err);
  if (!rc) {
    td_train_hooks h = {.user = rec, .on_step = dp_step, .at_boundary = dp_boundary};
    rc = td_trainer_run(&t, &h, last, err);
    *np = t.plan->n_params;
    *params = malloc(sizeof(float) * *np);
    memcpy(*params, t.st.params, sizeof(float) * *np);
    td_trainer_free(&t);
  }
  td_jobspec_free(spec);
  return rc;
}

static void check_data_parallel(void) {
  td_error err = {0};
  dp_rec one;
  memset(&one, 0, sizeof one);
  float *p1 = NULL;
  size_t np = 0;
  td_epoch_point l1;
  int rc = dp_run(1, DP_BATCH, &one, &p1, &np, &l1, &err);
  CHECK(rc == 0 && one.steps == DP_STEPS, "1 device: rc %d, %d steps: %s", rc, one.steps, err.msg);
  for (unsigned d = 2; d <= 4; d++) {
    dp_rec many;
    memset(&many, 0, sizeof many);
    float *pd = NULL;
    size_t npd = 0;
    td_epoch_point ld;
    rc = dp_run(d, DP_BATCH, &many, &pd, &npd, &ld, &err);
    CHECK(rc == 0 && many.steps == DP_STEPS, "%u devices: rc %d, %d steps: %s", d, rc, many.steps,
          err.msg);
    if (rc || !p1)
      continue;
    CHECK(many.drift == 0, "%u devices: replicas differed after %d of %d steps", d, many.drift,
          many.steps);
    double worst = 0.0;
    for (int s = 1; s <= DP_STEPS; s++) {
      double e = td_relerr(many.loss[s], one.loss[s], 1e-6);
      worst = e > worst ? e : worst;
    }
    CHECK(worst < 1e-5, "%u devices: loss rel err %.3g against 1 device (batch %u)", d, worst,
          (unsigned)DP_BATCH);
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < np && npd == np; i++) {
      num += ((double)pd[i] - p1[i]) * ((double)pd[i] - p1[i]);
      den += (double)p1[i] * p1[i];
    }
    double perr = sqrt(num / den);
    CHECK(npd == np && perr < 1e-5, "%u devices: parameters after %d steps differ by %.3g (rel)", d,
          DP_STEPS, perr);
    CHECK(td_relerr(ld.test_loss, l1.test_loss, 1e-6) < 1e-5 &&
              td_relerr(ld.test_accuracy, l1.test_accuracy, 1e-6) < 1e-5,
          "%u devices: sharded evaluation %.9g/%.9g, 1 device %.9g/%.9g", d, ld.test_loss,
          ld.test_accuracy, l1.test_loss, l1.test_accuracy);
    printf("%u devices: loss rel err %.2g, params rel err %.2g after %d steps\n", d, worst, perr,
           DP_STEPS);
    free(pd);
  }
  free(p1);

  /* A two-device run checkpointed at step 20 and resumed on two fresh
   * replicas ends bit for bit where the uninterrupted run ends. */
  char path[700];
  snprintf(path, sizeof path, "%s/dp-20.h5", roots[0]);
  dp_rec full, resumed;
  memset(&full, 0, sizeof full);
  memset(&resumed, 0, sizeof resumed);
  float *pf = NULL, *pr = NULL;
  size_t nf = 0, nr = 0;
  dp_save_path = path;
  dp_save_at = 20;
  rc = dp_run(2, DP_BATCH, &full, &pf, &nf, NULL, &err);
  CHECK(rc == 0, "2 devices, checkpointed: %s", err.msg);
  dp_save_at = 0;
  dp_resume_path = path;
  rc = dp_run(2, DP_BATCH, &resumed, &pr, &nr, NULL, &err);
  dp_resume_path = NULL;
  CHECK(rc == 0 && resumed.steps == DP_STEPS - 20 && resumed.drift == 0,
        "2 devices, resumed: rc %d, %d steps, drift %d: %s", rc, resumed.steps, resumed.drift,
        err.msg);
  CHECK(pf && pr && nf == nr && memcmp(pf, pr, sizeof(float) * nf) == 0 &&
            memcmp(&full.loss[21], &resumed.loss[21], sizeof(float) * (DP_STEPS - 20)) == 0,
        "2 devices: the resumed run differs from the uninterrupted one");
  free(pf);
  free(pr);

  /* A batch the devices cannot share evenly is refused before anything runs. */
  dp_rec bad;
  float *pb = NULL;
  size_t npb = 0;
  rc = dp_run(3, 64, &bad, &pb, &npb, NULL, &err);
  CHECK(rc == TD_EINVAL, "batch 64 on 3 devices: rc %d", rc);
  CHECK_STR_CONTAINS(err.msg, "64 does not split evenly across 3 devices");
  free(pb);
}

int main(void) {
  char root[] = "/tmp/traind-train-XXXXXX";
  CHECK(mkdtemp(root) != NULL, "mkdtemp");
  char dir[600];
  snprintf(dir, sizeof dir, "%s/syn", root);
  mkdir(dir, 0755);
  write_set(dir, "train-img", "train-lab", NTRAIN, 1);
  write_set(dir, "test-img", "test-lab", NTEST, 2);
  roots[0] = root;

  td_plan_cache cache;
  td_plan_cache_init(&cache);
  td_error err = {0};
  record a = {0}, b = {0}, c = {0};
  float *pa = NULL, *pb = NULL, *pc = NULL;
  td_epoch_point la, lb, lc;
  int hit = -1;

  /* Learns: the classes are separable, so 5 epochs get well above chance. */
  int rc = run("0.01", 5, 32, 7, &cache, &a, &pa, &la, &err, &hit);
  CHECK(rc == 0, "run a: %s", err.msg);
  CHECK(hit == 0, "the first compile is a cache miss");
  CHECK(a.n == 5 * (NTRAIN / 32), "ran %d steps", a.n);
  CHECK(la.evaluated && la.test_accuracy > 0.9f, "test accuracy %.3f", la.test_accuracy);
  CHECK(a.loss[a.n - 1] < a.loss[0], "loss fell from %.4f to %.4f", a.loss[0], a.loss[a.n - 1]);

  /* Same seed: bitwise the same losses and parameters, and a cache hit. */
  rc = run("0.01", 5, 32, 7, &cache, &b, &pb, &lb, &err, &hit);
  CHECK(rc == 0, "run b: %s", err.msg);
  CHECK(hit == 1, "the same model, optimizer and batch hit the compile cache");
  CHECK(a.n == b.n && memcmp(a.loss, b.loss, sizeof(float) * a.n) == 0,
        "same seed gives the same loss sequence");
  CHECK(pa && pb && memcmp(pa, pb, sizeof(float) * last_n_params) == 0 &&
            la.test_loss == lb.test_loss,
        "same seed gives the same parameters");

  /* Another seed: other losses. */
  rc = run("0.01", 5, 32, 8, &cache, &c, &pc, &lc, &err, &hit);
  CHECK(rc == 0, "run c: %s", err.msg);
  int differ = 0;
  for (int i = 0; i < a.n && i < c.n; i++)
    differ += a.loss[i] != c.loss[i];
  CHECK(differ > a.n / 2, "another seed changes the losses (%d of %d differ)", differ, a.n);
  CHECK(cache.hits == 2 && cache.misses == 1, "cache hits %llu misses %llu",
        (unsigned long long)cache.hits, (unsigned long long)cache.misses);

  /* Another batch size is another plan. */
  record d = {0};
  rc = run("0.01", 1, 64, 7, &cache, &d, NULL, NULL, &err, &hit);
  CHECK(rc == 0 && hit == 0, "batch 64 compiles a new plan (rc %d, hit %d)", rc, hit);

  /* A diverging run stops with an error naming the step. */
  record e = {0};
  rc = run("1e38", 2, 32, 7, &cache, &e, NULL, NULL, &err, &hit);
  CHECK(rc == TD_ENUMERIC, "a huge learning rate fails with ENUMERIC (rc %d: %s)", rc, err.msg);
  CHECK_STR_CONTAINS(err.msg, "step ");
  CHECK(strstr(err.msg, "NaN") || strstr(err.msg, "infinite"), "message: %s", err.msg);

  /* Cancellation stops at a step boundary. */
  record f = {.stop_after = 5};
  rc = run("0.01", 3, 32, 7, &cache, &f, NULL, NULL, &err, &hit);
  CHECK(rc == TD_ECANCELLED && f.n == 5, "cancel after 5 steps: rc %d, ran %d", rc, f.n);

  /* A model that does not fit the data is refused with the field path. */
  char doc[2048];
  snprintf(doc, sizeof doc, job_fmt, "0.01", 1u, 32u, 1u);
  char *shape = strstr(doc, "[4, 5]");
  memcpy(shape, "[4, 6]", 6);
  Traind__V1__JobSpec *spec = NULL;
  CHECK(td_jobspec_parse(doc, strlen(doc), &spec, &err) == 0, "%s", err.msg);
  td_trainer t;
  td_trainer_opts o = {.data_roots = roots, .n_data_roots = 1, .threads = 1};
  rc = td_trainer_init(&t, spec, &o, &err);
  CHECK(rc == TD_EINVAL, "input shape mismatch refused (rc %d)", rc);
  CHECK_STR_CONTAINS(err.msg, "model.input_shape");
  td_jobspec_free(spec);

  check_resume(root);
  check_data_parallel();

  free(pa);
  free(pb);
  free(pc);
  td_plan_cache_free(&cache);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  CHECK(system(cmd) == 0, "cleanup");
  return td_check_exit();
}
