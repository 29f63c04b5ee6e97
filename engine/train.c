/* The training loop. */
#include "train.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "dp_account.h"
#include "log.h"
#include "text.h"

static int check_unsupported(const Traind__V1__JobSpec *s, const td_trainer_opts *o, td_error *err);

/* Where a dataset's examples lie, for gather. */
static td_rows rows_of(const td_dataset *ds) {
  return (td_rows){ds->dim, ds->stride, ds->label_dim, ds->label_stride};
}

/* Resolves one dataset file under the data roots. */
static int resolve(const td_trainer_opts *o, const char *dir, const char *name, char *out,
                   size_t outlen, td_error *err) {
  char rel[4096];
  int n = dir && *dir ? snprintf(rel, sizeof rel, "%s/%s", dir, name)
                      : snprintf(rel, sizeof rel, "%s", name);
  if (n < 0 || (size_t)n >= sizeof rel)
    return td_errorf(err, TD_EINVAL, "dataset path '%.64s%s/%s' is too long", dir ? dir : "",
                     dir && strlen(dir) > 64 ? "..." : "", name);
  return td_data_resolve(o->data_roots, o->n_data_roots, rel, 1, out, outlen, err);
}

static const char *or_default(const char *s, const char *dflt) { return s && *s ? s : dflt; }

int td_data_files_resolve(const Traind__V1__Dataset *d, const td_trainer_opts *o, td_data_files *f,
                          td_error *err) {
  int rc;
  memset(f, 0, sizeof *f);
  if (o->n_data_roots == 0)
    return td_errorf(err, TD_EINVAL, "no data roots: pass --data-dir DIR or set TRAIND_DATA_DIR");
  if (d->source_case == TRAIND__V1__DATASET__SOURCE_IDX) {
    const Traind__V1__IdxDataset *x = d->idx;
    if ((rc = resolve(o, x->dir, or_default(x->train_images, "train-images-idx3-ubyte.gz"),
                      f->train[0], sizeof f->train[0], err)) ||
        (rc = resolve(o, x->dir, or_default(x->train_labels, "train-labels-idx1-ubyte.gz"),
                      f->train[1], sizeof f->train[1], err)) ||
        (rc = resolve(o, x->dir, or_default(x->test_images, "t10k-images-idx3-ubyte.gz"),
                      f->test[0], sizeof f->test[0], err)) ||
        (rc = resolve(o, x->dir, or_default(x->test_labels, "t10k-labels-idx1-ubyte.gz"),
                      f->test[1], sizeof f->test[1], err)))
      return rc;
    f->has_test = 1;
    return TD_OK;
  }
  if (d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT ||
      d->source_case == TRAIND__V1__DATASET__SOURCE_HDF5_TOKENS) {
    const int text = d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT;
    const char *file = text ? d->text->file : d->hdf5_tokens->file;
    if (!file || !*file)
      return td_errorf(err, TD_EINVAL, "dataset.%s.file: required (a file under a data root)",
                       text ? "text" : "hdf5_tokens");
    if ((rc = resolve(o, NULL, file, f->train[0], sizeof f->train[0], err)))
      return rc;
    f->has_test = 1; /* the held-out part */
    return TD_OK;
  }
  const Traind__V1__Hdf5Dataset *h = d->hdf5;
  f->features = or_default(h->features, "features");
  f->labels = or_default(h->labels, "labels");
  if ((rc = resolve(o, NULL, h->train_file, f->train[0], sizeof f->train[0], err)))
    return rc;
  if (h->test_file && *h->test_file) {
    if ((rc = resolve(o, NULL, h->test_file, f->test[0], sizeof f->test[0], err)))
      return rc;
    f->has_test = 1;
  }
  return TD_OK;
}

int td_text_opts_of(const Traind__V1__JobSpec *spec, td_text_opts *o, td_error *err) {
  const Traind__V1__Dataset *d = spec->dataset;
  const Traind__V1__Model *m = spec->model;
  const int text = d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT;
  const char *field = text ? "dataset.text" : "dataset.hdf5_tokens";
  if (!m || m->n_input_shape != 1)
    return td_errorf(err, TD_EINVAL,
                     "model.input_shape: a model of %s takes windows of tokens: give [block_size], "
                     "for example [64]",
                     field);
  const Google__Protobuf__DoubleValue *vf =
      text ? d->text->val_fraction : d->hdf5_tokens->val_fraction;
  int rc = td_text_opts_parse(field, text ? d->text->tokens : NULL,
                              text ? d->text->sampling : d->hdf5_tokens->sampling,
                              vf ? &vf->value : NULL, m->input_shape[0], o, err);
  o->train_limit = d->train_limit;
  o->test_limit = d->test_limit;
  return rc;
}

static int load_data(td_trainer *t, const td_trainer_opts *o, td_error *err) {
  const Traind__V1__Dataset *d = t->spec->dataset;
  td_data_files *f = malloc(sizeof *f);
  if (!f)
    return td_errorf(err, TD_ENOMEM, "out of memory");
  int rc = td_data_files_resolve(d, o, f, err);
  const int tokens = d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT ||
                     d->source_case == TRAIND__V1__DATASET__SOURCE_HDF5_TOKENS;
  td_text_opts to;
  if (!rc && tokens && !(rc = td_text_opts_of(t->spec, &to, err))) {
    if (d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT)
      rc = td_text_load(f->train[0], &to, &t->train, &t->test, err);
    else
      rc = td_h5tokens_load(f->train[0], d->hdf5_tokens->train, d->hdf5_tokens->val,
                            d->hdf5_tokens->vocab_size, &to, &t->train, &t->test, err);
  } else if (!rc && !tokens && d->source_case == TRAIND__V1__DATASET__SOURCE_IDX) {
    if (!(rc = td_idx_load(f->train[0], f->train[1], d->train_limit, &t->train, err)))
      rc = td_idx_load(f->test[0], f->test[1], d->test_limit, &t->test, err);
  } else if (!rc && !tokens) {
    if (!(rc = td_hdf5_load(f->train[0], f->features, f->labels, d->train_limit, &t->train, err)) &&
        f->has_test)
      rc = td_hdf5_load(f->test[0], f->features, f->labels, d->test_limit, &t->test, err);
  }
  for (uint32_t i = 0; i < 256; i++)
    t->byte_vocab[i] = i;
  t->has_test = !rc && f->has_test;
  free(f);
  return rc;
}

/* The warm-start file of a job, resolved under the data roots; "" when the
 * job has none. */
static int resolve_init_from(const Traind__V1__JobSpec *spec, const td_trainer_opts *o, char *out,
                             size_t outlen, td_error *err) {
  out[0] = 0;
  const char *f = spec->checkpoint ? spec->checkpoint->init_from : NULL;
  if (!f || !*f)
    return TD_OK;
  int rc = td_data_resolve(o->data_roots, o->n_data_roots, f, 0, out, outlen, err);
  if (rc)
    td_error_prefix(err, "checkpoint.init_from");
  return rc;
}

int td_job_device_count(const Traind__V1__JobSpec *s) {
  const Traind__V1__Devices *d = s->devices;
  if (!d)
    return 1;
  if (d->n_ids)
    return (int)d->n_ids;
  return d->count ? (int)d->count : 1;
}

int td_device_index(const char *id, const char *kind) {
  size_t k = strlen(kind);
  if (!id || strncmp(id, kind, k) != 0 || id[k] != ':' || !id[k + 1])
    return -1;
  long v = 0;
  for (const char *c = id + k + 1; *c; c++) {
    if (*c < '0' || *c > '9' || v > 100000)
      return -1;
    v = v * 10 + (*c - '0');
  }
  return (int)v;
}

/* ---- DP-SGD -------------------------------------------------------------- */

static const Traind__V1__DpSgd *dp_of(const Traind__V1__JobSpec *s) {
  return s->training ? s->training->dp_sgd : NULL;
}

static const Traind__V1__PerExampleReport *report_of(const Traind__V1__JobSpec *s) {
  return s->training ? s->training->per_example_report : NULL;
}

static unsigned plan_flags(const Traind__V1__JobSpec *s) {
  return dp_of(s) || report_of(s) ? TD_PLAN_PER_EXAMPLE : 0;
}

/* training.dp_sgd's own fields (those that need the data wait for it). */
static int check_dp_spec(const Traind__V1__JobSpec *s, td_error *err) {
  const Traind__V1__DpSgd *d = dp_of(s);
  const Traind__V1__PerExampleReport *r = report_of(s);
  if (r && r->top_k > TD_EXAMPLE_TOP_MAX)
    return td_errorf(err, TD_EINVAL,
                     "training.per_example_report.top_k: %u; must be at most %u (0 means %u)",
                     r->top_k, TD_EXAMPLE_TOP_MAX, TD_EXAMPLE_TOP_DEFAULT);
  if (!d)
    return TD_OK;
  if (!(d->l2_norm_clip > 0.0) || !isfinite(d->l2_norm_clip))
    return td_errorf(err, TD_EINVAL,
                     "training.dp_sgd.l2_norm_clip: %g; must be a positive number, the largest "
                     "norm an example's gradient keeps (1.0 is usual)",
                     d->l2_norm_clip);
  if (!(d->noise_multiplier >= 0.0) || !isfinite(d->noise_multiplier))
    return td_errorf(err, TD_EINVAL,
                     "training.dp_sgd.noise_multiplier: %g; must be >= 0 (the noise's standard "
                     "deviation in units of l2_norm_clip, for example 1.1)",
                     d->noise_multiplier);
  if (!(d->target_delta > 0.0 && d->target_delta < 1.0))
    return td_errorf(err, TD_EINVAL,
                     "training.dp_sgd.target_delta: %g; must be in (0, 1), below 1 / (training "
                     "examples), for example 1e-5",
                     d->target_delta);
  if (!(d->target_epsilon >= 0.0) || !isfinite(d->target_epsilon))
    return td_errorf(err, TD_EINVAL,
                     "training.dp_sgd.target_epsilon: %g; must be a positive number, or 0 "
                     "for no limit",
                     d->target_epsilon);
  if (d->target_epsilon > 0.0 && d->noise_multiplier == 0.0)
    return td_errorf(err, TD_EINVAL,
                     "training.dp_sgd.target_epsilon: without noise (noise_multiplier 0) every "
                     "step spends an infinite epsilon; set noise_multiplier");
  if (d->sampling != TRAIND__V1__DP_SGD__SAMPLING__SAMPLING_UNSPECIFIED &&
      d->sampling != TRAIND__V1__DP_SGD__SAMPLING__POISSON &&
      d->sampling != TRAIND__V1__DP_SGD__SAMPLING__SHUFFLE)
    return td_errorf(err, TD_EINVAL, "training.dp_sgd.sampling: use POISSON or SHUFFLE");
  return TD_OK;
}

/* What per-example gradients need of a compiled plan and its backend
 * (dp: DP-SGD's, which also refuses a global clip; else the report's). */
static int check_dp_plan(const td_plan *p, const td_backend *be, int dp, td_error *err) {
  for (int i = 0; dp && i < p->optim.n_stages; i++) {
    td_opt_pass pass;
    td_optim_pass_of(&p->optim, i, &pass);
    if (pass.clip)
      return td_errorf(err, TD_EINVAL,
                       "optimizer: clip_by_global_norm clips the whole batch's gradient; with "
                       "training.dp_sgd each example's gradient is clipped to l2_norm_clip "
                       "instead: remove clip_by_global_norm from the chain");
  }
  const td_backend_ops *o = be ? be->ops : NULL;
  if (o && (!o->pe_dense || !o->pe_conv || !o->pe_layer_norm || !o->pe_embed || !o->pe_sumsq ||
            !o->pe_clip || !o->row_scale || !o->gauss_add || !be->host_memory))
    return td_errorf(err, TD_EUNSUPPORTED,
                     "%s: the %s backend has no per-example gradient kernels yet; "
                     "run this job on CPU devices",
                     dp ? "training.dp_sgd" : "training.per_example_report", o->name);
  return TD_OK;
}

/* The most examples a Poisson batch of expected size m = n q can hold: the
 * least c with P(Binomial(n, q) > c) below 1e-12, from the exact tail. */
static uint32_t poisson_cap(uint32_t n, double q) {
  if (q >= 1.0)
    return n;
  const double lq = log(q), l1q = log1p(-q);
  double tail = 0.0;
  /* Sum the pmf from the top down until it reaches 1e-12; the pmf is
   * log-concave, so once past the mode from above the terms only grow. */
  const uint32_t mode = (uint32_t)((n + 1) * q);
  for (uint32_t k = n; k > mode; k--) {
    double lp = lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0) + k * lq + (n - k) * l1q;
    tail += exp(lp);
    if (tail > 1e-12)
      return k;
  }
  return mode;
}

/* The examples of step s of the epoch, each of the n in it with
 * probability q independently: the gaps between them are geometric,
 * drawn from the step's key. Writes their indices (ascending) to out, up
 * to cap; returns how many there are (more than cap: the batch does not
 * fit). */
static uint32_t poisson_batch(td_key key, uint32_t n, double q, uint32_t cap, uint32_t *out) {
  const double l1q = log1p(-q);
  uint32_t count = 0;
  double at = -1.0;
  for (uint32_t c = 0;; c++) {
    uint32_t w[2] = {0, c};
    td_threefry2x32(key, w);
    /* u in (0, 1]: 53 bits. */
    double u = ((double)(((uint64_t)w[0] << 21) | (w[1] >> 11)) + 1.0) * (1.0 / 9007199254740992.0);
    at += 1.0 + (q >= 1.0 ? 0.0 : floor(log(u) / l1q));
    if (at >= n)
      return count;
    if (count < cap)
      out[count] = (uint32_t)at;
    count++;
  }
}

uint32_t td_job_step_capacity(const Traind__V1__JobSpec *spec, uint32_t n) {
  const Traind__V1__DpSgd *d = dp_of(spec);
  const uint32_t b = spec->training->batch_size, r = (uint32_t)td_job_device_count(spec);
  if (!d || d->sampling == TRAIND__V1__DP_SGD__SAMPLING__SHUFFLE || !n || b > n)
    return b;
  uint32_t cap = poisson_cap(n, (double)b / n);
  cap = (cap + r - 1) / r * r;
  return cap < b ? b : cap;
}

unsigned td_job_plan_flags(const Traind__V1__JobSpec *spec) { return plan_flags(spec); }

/* DP-SGD with Poisson sampling runs a replica's share of a batch (about
 * batch / replicas examples, varying) in micro-batches of this many rows:
 * a quarter of the expected share (in multiples of 8, at least 32 or the
 * share), so that a batch costs about its own size, not the capacity. */
static uint32_t micro_rows(uint32_t batch, uint32_t replicas) {
  const uint32_t share = (batch + replicas - 1) / replicas;
  const uint32_t quarter = (share / 4 + 7) / 8 * 8, least = share < 32 ? share : 32;
  return quarter > least ? quarter : least;
}

uint32_t td_job_plan_rows(const Traind__V1__JobSpec *spec, uint32_t n) {
  const uint32_t b = spec->training->batch_size, r = (uint32_t)td_job_device_count(spec);
  return td_job_step_capacity(spec, n) == b ? b / r : micro_rows(b, r);
}

double td_trainer_epsilon(const td_trainer *t, int64_t steps) {
  if (!t->dp)
    return 0.0;
  if (t->dp_sigma == 0.0)
    return INFINITY;
  return td_dp_epsilon_rdp(t->dp_rdp, steps, t->dp_delta, TD_DP_CONVERSION_CURRENT, NULL);
}

void td_trainer_dp_note(const td_trainer *t, char *buf, size_t len) {
  snprintf(buf, len,
           "stopped after step %lld of %lld: one more step would spend more privacy than "
           "training.dp_sgd.target_epsilon %g (epsilon %.4g at delta %g now)",
           (long long)t->dp_stop_steps, (long long)t->steps_per_epoch * t->epochs, t->dp_target,
           td_trainer_epsilon(t, t->dp_stop_steps), t->dp_delta);
}

/* DP-SGD's setup once the data is loaded: the checks that need the
 * training set's size, the Poisson capacity (the plan recompiled for it),
 * the accountant, and a target epsilon's limit on the steps. */
static int dp_setup(td_trainer *t, const td_trainer_opts *o, td_error *err) {
  const Traind__V1__DpSgd *d = dp_of(t->spec);
  const uint32_t n = t->train.n;
  t->dp = 1;
  t->dp_clip = d->l2_norm_clip;
  t->dp_sigma = d->noise_multiplier;
  t->dp_delta = d->target_delta;
  t->dp_target = d->target_epsilon;
  t->dp_poisson = d->sampling != TRAIND__V1__DP_SGD__SAMPLING__SHUFFLE;
  t->dp_stop_steps = -1;
  if (d->target_delta >= 1.0 / n)
    return td_errorf(err, TD_EINVAL,
                     "training.dp_sgd.target_delta: %g is not below 1 / %u (the training "
                     "examples); a delta that large allows revealing an example outright: use "
                     "at most %.1e",
                     d->target_delta, n, 0.1 / n);
  const double q = (double)t->batch / n;
  if (!(t->dp_rdp = malloc(TD_DP_N_ORDERS * sizeof *t->dp_rdp)))
    return td_errorf(err, TD_ENOMEM, "trainer: out of memory");
  int rc = td_dp_rdp_grid(q, t->dp_sigma, t->dp_rdp, err);
  if (rc)
    return rc;
  t->cap = t->batch;
  if (t->dp_poisson) {
    t->cap = td_job_step_capacity(t->spec, n);
    t->shard = td_job_plan_rows(t->spec, n);
    td_plan_cache_release(t->cache, t->plan);
    t->plan = NULL;
    if ((rc = td_plan_cache_get(t->cache, t->spec->model, t->spec->optimizer, t->shard,
                                o->device_set ? o->device_set : "cpu:0", TD_PLAN_PER_EXAMPLE,
                                &t->plan, &t->plan_hit, err)))
      return rc;
  }
  if (t->dp_target > 0.0) {
    int64_t most = td_dp_max_steps(t->dp_rdp, t->dp_delta, t->dp_target);
    if (most < 1)
      return td_errorf(err, TD_EINVAL,
                       "training.dp_sgd.target_epsilon: %g is spent by the first step already "
                       "(epsilon %.3g at delta %g); raise it, or the noise_multiplier",
                       t->dp_target, td_trainer_epsilon(t, 1), t->dp_delta);
    if (most < t->total_steps) {
      t->total_steps = most;
      t->dp_stop_steps = most;
    }
  }
  return TD_OK;
}

int td_trainer_check(const Traind__V1__JobSpec *spec, const td_trainer_opts *o, td_error *err) {
  int rc = check_unsupported(spec, o, err);
  if (rc)
    return rc;
  td_plan *p = NULL;
  rc = td_plan_compile_flags(spec->model, spec->optimizer,
                             spec->training->batch_size / (uint32_t)td_job_device_count(spec),
                             "cpu:0", plan_flags(spec), &p, err);
  if (!rc && (dp_of(spec) || report_of(spec)))
    rc = check_dp_plan(p, NULL, dp_of(spec) != NULL, err);
  td_data_files *f = malloc(sizeof *f);
  if (!rc && !f)
    rc = td_errorf(err, TD_ENOMEM, "out of memory");
  if (!rc)
    rc = td_data_files_resolve(spec->dataset, o, f, err);
  if (!rc && !(rc = resolve_init_from(spec, o, f->train[0], sizeof f->train[0], err)) &&
      f->train[0][0] && (rc = td_ckpt_check_params(f->train[0], p, err))) {
    td_error_prefix(err, "checkpoint.init_from");
    /* A file that does not fit the model is a wrong argument of the job. */
    if (rc == TD_EDATA)
      rc = err->code = TD_EINVAL;
  }
  free(f);
  td_plan_free(p);
  return rc;
}

static int check_data(const td_trainer *t, const td_dataset *ds, const char *which, td_error *err) {
  const td_plan *p = t->plan;
  if (ds->label_dim != p->positions) {
    if (p->positions > 1)
      return td_errorf(err, TD_EINVAL,
                       "model: its output is a sequence of %u positions, each with a prediction, "
                       "but the %s set has %u label%s per example; train it on a text or "
                       "hdf5_tokens dataset",
                       p->positions, which, ds->label_dim, ds->label_dim == 1 ? "" : "s");
    return td_errorf(err, TD_EINVAL,
                     "model: it makes one prediction per example, but the %s set has a label "
                     "for each of %u positions; end the model with a sequence (a dense layer "
                     "over an embed layer's output, without flatten)",
                     which, ds->label_dim);
  }
  if (p->vocab && ds->vocab_size > p->vocab)
    return td_errorf(err, TD_EINVAL,
                     "model: an embed layer has num_embeddings %u, fewer than the %s set's "
                     "vocabulary of %u tokens; make num_embeddings at least %u",
                     p->vocab, which, ds->vocab_size, ds->vocab_size);
  if (ds->dim != p->in_dim)
    return td_errorf(err, TD_EINVAL,
                     "model.input_shape: gives %u features per example, but the "
                     "%s set's examples have %u",
                     p->in_dim, which, ds->dim);
  if (ds->max_label >= (int32_t)p->out_dim)
    return td_errorf(err, TD_EINVAL,
                     "dataset: the %s set has label %d, out of range for a "
                     "model with %u outputs (labels must be 0..%u)",
                     which, ds->max_label, p->out_dim, p->out_dim - 1);
  return TD_OK;
}

/* Options that later parts of the service honour; refused here rather than
 * silently ignored. */
static int check_unsupported(const Traind__V1__JobSpec *s, const td_trainer_opts *o,
                             td_error *err) {
  int rc = check_dp_spec(s, err);
  if (rc)
    return rc;
  if (s->devices) {
    const char *kind = or_default(s->devices->kind, "cpu");
    if (strcmp(kind, "cpu") != 0 && strcmp(kind, "gpu") != 0)
      return td_errorf(err, TD_EINVAL, "devices.kind: '%s' is not a device kind (use cpu or gpu)",
                       kind);
    if (strcmp(kind, "gpu") == 0 && !o->backend)
      return td_errorf(err, TD_EUNSUPPORTED,
                       "devices.kind: gpu, but the job is given no GPU to run on");
    if (strcmp(kind, "gpu") == 0 && td_job_device_count(s) > 1 && !o->comm)
      return td_errorf(err, TD_EUNSUPPORTED,
                       "devices: a job on %d GPUs needs NCCL, which this build of traind "
                       "lacks (see TRAIND_NCCL in the README); ask for one GPU",
                       td_job_device_count(s));
    const Traind__V1__Devices *d = s->devices;
    if (d->n_ids && d->count && d->count != d->n_ids)
      return td_errorf(err, TD_EINVAL,
                       "devices.count: %u, but devices.ids names %zu device%s; give one of "
                       "the two, or make them agree",
                       d->count, d->n_ids, d->n_ids == 1 ? "" : "s");
    for (size_t i = 0; i < d->n_ids; i++) {
      int idx = td_device_index(d->ids[i], kind);
      if (idx < 0)
        return td_errorf(err, TD_EINVAL, "devices.ids[%zu]: '%s' is not a %s device id (like %s:0)",
                         i, d->ids[i], kind, kind);
      for (size_t k = 0; k < i; k++)
        if (td_device_index(d->ids[k], kind) == idx)
          return td_errorf(err, TD_EINVAL, "devices.ids[%zu]: '%s' is named twice", i, d->ids[i]);
    }
    uint32_t n = (uint32_t)td_job_device_count(s), b = s->training->batch_size;
    if (n > 1 && b % n)
      return td_errorf(err, TD_EINVAL,
                       "training.batch_size: %u does not split evenly across %u devices "
                       "(devices.count); use a multiple of %u such as %u",
                       b, n, n, (b / n + 1) * n);
  }
  return TD_OK;
}

/* ---- replicas ------------------------------------------------------------ */

/* Runs fn for every replica, replica 0 on this thread, and waits for all.
 * The first failure, in rank order, is the result. */
static int run_task(td_trainer *t, int (*fn)(td_trainer *t, int rank), td_error *err) {
  if (t->n_rep == 1) {
    t->rep[0].rc = fn(t, 0);
  } else {
    pthread_mutex_lock(&t->mu);
    t->task = fn;
    t->gen++;
    t->pending = t->n_rep - 1;
    pthread_cond_broadcast(&t->go);
    pthread_mutex_unlock(&t->mu);
    t->rep[0].rc = fn(t, 0);
    pthread_mutex_lock(&t->mu);
    while (t->pending)
      pthread_cond_wait(&t->done, &t->mu);
    pthread_mutex_unlock(&t->mu);
  }
  for (int r = 0; r < t->n_rep; r++)
    if (t->rep[r].rc) {
      td_backend *be = t->rep[r].be;
      const char *why = be && be->ops->last_error ? be->ops->last_error(be) : "";
      if (err) {
        *err = t->rep[r].err;
        /* The library call and its message, which the code alone lacks. */
        if (why[0] && !strstr(err->msg, why))
          td_errorf(err, err->code, "%s: %s", t->rep[r].err.msg, why);
      }
      if (t->n_rep > 1)
        td_error_prefix(err, "device %s:%d of %d", be->host_memory ? "cpu" : "gpu", r, t->n_rep);
      return t->rep[r].rc;
    }
  return TD_OK;
}

static void *replica_main(void *arg) {
  td_replica *r = arg;
  td_trainer *t = r->owner;
  uint64_t seen = 0;
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (t->gen == seen && !t->quit)
      pthread_cond_wait(&t->go, &t->mu);
    if (t->quit)
      break;
    seen = t->gen;
    int (*fn)(td_trainer *, int) = t->task;
    pthread_mutex_unlock(&t->mu);
    r->rc = fn(t, r->rank);
    pthread_mutex_lock(&t->mu);
    if (--t->pending == 0)
      pthread_cond_signal(&t->done);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

/* The replica's share of a Poisson batch of `rows` examples: [*lo, *hi). */
static void poisson_share(const td_trainer *t, int rank, uint32_t rows, uint32_t *lo,
                          uint32_t *hi) {
  *lo = (uint32_t)((uint64_t)rows * (uint64_t)rank / (uint64_t)t->n_rep);
  *hi = (uint32_t)((uint64_t)rows * (uint64_t)(rank + 1) / (uint64_t)t->n_rep);
}

/* DP-SGD's gradients of a Poisson batch: the replica's share in
 * micro-batches of the plan's rows (the last one padded with a zero
 * gradient), their clipped sums added up in r->acc, their losses and
 * correct counts in the scalars block. A host-memory backend only (the
 * record is read here; DP-SGD is refused elsewhere). */
static int poisson_grads(td_replica *r) {
  td_trainer *t = r->owner;
  const td_plan *p = t->plan;
  td_state *st = r->st;
  td_backend *be = r->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena, *sc = a + p->scalars_off;
  td_error *err = &r->err;
  const td_step_record *cur = r->cur;
  const td_rows rows = rows_of(&t->train);
  const uint32_t m = t->shard;
  const double scale = (double)t->n_rep / t->batch;
  uint32_t lo, hi;
  poisson_share(t, r->rank, cur->rows, &lo, &hi);
  double loss = 0.0, correct = 0.0;
  int rc = TD_OK;
  if (hi == lo && (rc = ops->fill(be, st->grads, p->n_params, 0.0f)))
    return td_errorf(err, rc, "step: zeroing the gradients failed");
  for (uint32_t off = lo; off < hi && !rc; off += m) {
    const int real = (int)(hi - off < m ? hi - off : m);
    const uint32_t row0 = cur->row0 + off;
    if ((rc = ops->gather(be, &rows, r->train_x, r->train_y, r->order, &row0, m, a + p->in_off,
                          (int32_t *)(a + p->labels_off))))
      return td_errorf(err, rc, "step: gather failed");
    if ((rc = td_state_forward(st, (int)m, 1, cur->keys, off, err)) ||
        (rc = td_state_loss_scaled(st, real, 1, (float)(scale / p->positions), err)) ||
        (rc = td_state_backward_dp(st, real, scale, t->dp_clip, err)))
      return rc;
    loss += sc[TD_SC_LOSS_SUM];
    correct += sc[TD_SC_CORRECT];
    if (t->pe_report)
      memcpy(r->pe_norms_host + ((size_t)cur->slot * t->pe_rows + (off - lo)) * 2,
             a + p->pe_acc_off, (size_t)real * 2 * sizeof(float));
    if (hi - lo > m && (rc = off == lo ? ops->copy(be, r->acc, st->grads, p->n_params)
                                       : ops->add(be, p->n_params, r->acc, st->grads, r->acc)))
      return td_errorf(err, rc, "step: adding the micro-batches' gradients failed");
  }
  if (hi - lo > m && (rc = ops->copy(be, st->grads, r->acc, p->n_params)))
    return td_errorf(err, rc, "step: adding the micro-batches' gradients failed");
  sc[TD_SC_LOSS_SUM] = (float)loss;
  sc[TD_SC_CORRECT] = (float)correct;
  return TD_OK;
}

/* Issues one step of the replica: its record from the step table, the
 * gather of its shard of the batch, forward, loss and backward, the
 * allreduce that averages the gradients over the replicas, their squared
 * norm, the optimizer passes and the step's metrics into the epoch's
 * metrics. Everything it reads that changes from step to step comes from
 * the record in backend memory, and nothing is read back, so the same
 * sequence of ops can be recorded once and replayed. */
static int step_body(td_replica *r) {
  td_trainer *t = r->owner;
  const td_plan *p = t->plan;
  td_state *st = r->st;
  td_backend *be = r->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena, *sc = a + p->scalars_off;
  td_error *err = &r->err;
  const td_step_record *cur = r->cur;
  st->collectives = 0; /* none of this step's made yet, whatever fails first */
  int rc = ops->step_begin(be, r->table, p->rec_bytes, r->counter, r->cur);
  if (rc)
    rc = td_errorf(err, rc, "step: reading the step table failed");
  const td_rows rows = rows_of(&t->train);
  if (!rc && t->dp_poisson)
    rc = poisson_grads(r);
  else if (!rc && (rc = ops->gather(be, &rows, r->train_x, r->train_y,
                                    r->order + (size_t)r->rank * t->shard, &cur->row0, t->shard,
                                    a + p->in_off, (int32_t *)(a + p->labels_off))))
    rc = td_errorf(err, rc, "step: gather failed");
  else if (!rc && !(rc = td_state_forward(st, (int)t->shard, 1, cur->keys,
                                          (uint64_t)r->rank * t->shard, err))) {
    if (!t->per_example) {
      if (!(rc = td_state_loss(st, (int)t->shard, 1, err)))
        rc = td_state_backward(st, err);
    } else {
      /* Per-example gradients of a batch of exactly `batch` (Poisson
       * batches run in poisson_grads): each example's gradient times
       * n_rep / batch, so that the replicas' mean is the sum over the
       * batch / batch; clipped with DP-SGD only. */
      const double scale = (double)t->n_rep / t->batch;
      if (!(rc = td_state_loss_scaled(st, (int)t->shard, 1, (float)(scale / p->positions), err)))
        rc = td_state_backward_dp(st, (int)t->shard, scale, t->dp ? t->dp_clip : INFINITY, err);
      if (!rc && t->pe_report &&
          (rc = ops->record(be, &cur->slot, a + p->pe_acc_off, 2 * (size_t)t->shard, r->pe_norms)))
        rc = td_errorf(err, rc, "step: recording the per-example norms failed");
    }
  }
  if (t->n_rep > 1) {
    /* Every replica joins the allreduces, also after a failure. */
    if (rc)
      td_state_finish_collectives(st);
    double a0 = r->rank == 0 ? td_mono_sec() : 0.0;
    int crc = t->comm->ops->allreduce(t->comm, r->rank, st->grads, p->n_params, TD_REDUCE_MEAN);
    if (r->rank == 0 && !r->recording) {
      t->allreduce_sec += td_mono_sec() - a0;
      t->allreduce_steps++;
    }
    if (!rc && crc)
      rc = td_errorf(err, crc, "step: the gradient allreduce failed");
  }
  /* DP-SGD's noise, once for the batch: every replica draws the same. */
  if (!rc && t->dp && t->dp_sigma > 0.0 &&
      (rc = ops->gauss_add(be, p->n_params, cur->keys + 2 * p->noise_slot,
                           (float)(t->dp_sigma * t->dp_clip / t->batch), st->grads)))
    rc = td_errorf(err, rc, "step: adding the noise failed");
  if (!rc && (rc = ops->sumsq(be, p->n_params, st->grads, sc + TD_SC_GRAD_SUMSQ)))
    rc = td_errorf(err, rc, "step: gradient norm failed");
  if (!rc)
    rc = td_optim_issue(&p->optim, be, td_rec_scalars(p, r->cur), sc + TD_SC_GRAD_SUMSQ,
                        p->n_params, st->params, st->grads, st->opt_state, sc + TD_SC_SCRATCH, err);
  if (!rc && (rc = ops->record(be, &cur->slot, sc, TD_STEP_METRICS, r->metrics)))
    rc = td_errorf(err, rc, "step: recording the metrics failed");
  return rc;
}

static int step_body_n(void *arg, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    int rc = step_body(arg);
    if (rc)
      return rc;
  }
  return TD_OK;
}

static int record_one(void *arg) { return step_body_n(arg, 1); }

static int record_many(void *arg) {
  td_replica *r = arg;
  return step_body_n(arg, r->owner->graph_steps);
}

static void release_graphs(td_replica *r) {
  if (r->graph1)
    r->be->ops->graph_free(r->be, r->graph1);
  if (r->graphn)
    r->be->ops->graph_free(r->be, r->graphn);
  r->graph1 = r->graphn = NULL;
}

/* Records the replica's graphs, after its warm-up step. A failure to
 * record leaves the replica running op by op (and says why in the log). */
static int record_graphs(td_trainer *t, td_replica *r) {
  td_backend *be = r->be;
  r->recording = 1;
  int rc = be->ops->graph_record(be, record_one, r, &r->graph1);
  if (!rc && t->graph_steps > 1)
    rc = be->ops->graph_record(be, record_many, r, &r->graphn);
  r->recording = 0;
  if (rc && !r->err.code)
    td_errorf(&r->err, rc, "%s", td_strerror(rc));
  if (rc)
    td_error_prefix(&r->err, "recording the step as a graph");
  return rc;
}

/* The chunk t->task_first.. of t->task_count steps on one replica, then
 * the chunk's metrics read back. A replica that fails still joins the
 * allreduces of the steps it did not run, so that the others never wait
 * for it forever. */
static int task_chunk(td_trainer *t, int rank) {
  td_replica *r = &t->rep[rank];
  td_backend *be = r->be;
  const td_backend_ops *ops = be->ops;
  uint32_t left = t->task_count, first = t->task_first;
  int rc = ops->upload(be, r->counter, &first, sizeof first);
  if (rc)
    td_errorf(&r->err, rc, "step: setting the step counter failed");
  if (!rc && t->record && !r->graph1 && r->warm && !r->op_by_op && record_graphs(t, r)) {
    /* Op by op from here on; the job goes on. */
    td_log_warn("steps run op by op", "replica=%d error=\"%s\"", rank, r->err.msg);
    release_graphs(r);
    r->op_by_op = 1;
    memset(&r->err, 0, sizeof r->err);
  }
  while (left && !rc) {
    if (r->graphn && left >= t->graph_steps) {
      if (!(rc = ops->graph_replay(be, r->graphn)))
        left -= t->graph_steps;
    } else if (r->graph1) {
      if (!(rc = ops->graph_replay(be, r->graph1)))
        left--;
    } else {
      /* A failed step has joined its allreduce already. */
      rc = step_body(r);
      r->warm = 1;
      left--;
      continue;
    }
    if (rc)
      td_errorf(&r->err, rc, "step: replaying the recorded step failed");
  }
  if (rc) {
    for (; left && t->n_rep > 1; left--) {
      r->st->collectives = 0;
      td_state_finish_collectives(r->st);
      t->comm->ops->allreduce(t->comm, rank, r->st->grads, t->plan->n_params, TD_REDUCE_MEAN);
    }
    return rc;
  }
  size_t m = TD_STEP_METRICS;
  if ((rc = ops->download(be, r->metrics_host + (size_t)first * m, r->metrics + (size_t)first * m,
                          (size_t)t->task_count * m * sizeof(float))))
    rc = td_errorf(&r->err, rc, "step: reading the metrics failed");
  const size_t pe = 2 * (size_t)t->pe_rows;
  if (!rc && t->pe_report && !t->dp_poisson &&
      (rc = ops->download(be, r->pe_norms_host + (size_t)first * pe,
                          r->pe_norms + (size_t)first * pe,
                          (size_t)t->task_count * pe * sizeof(float))))
    rc = td_errorf(&r->err, rc, "step: reading the per-example norms failed");
  return rc;
}

/* The order of the epoch (shuffled by the backend, or t->order from the
 * host) and its step table to the replica, when its backend's memory is
 * not the host's. */
static int task_epoch(td_trainer *t, int rank) {
  td_replica *r = &t->rep[rank];
  td_backend *be = r->be;
  if (be->host_memory)
    return TD_OK;
  int rc = be->ops->shuffle ? be->ops->shuffle(be, t->train.n, t->shuffle_rounds,
                                               &t->round_keys[0].k[0], (uint32_t *)r->order)
                            : be->ops->upload(be, (void *)r->order, t->order,
                                              (size_t)t->train.n * sizeof *t->order);
  if (!rc)
    rc = be->ops->upload(be, (void *)r->table, t->table,
                         (size_t)t->steps_per_epoch * t->plan->rec_bytes);
  return rc ? td_errorf(&r->err, rc, "uploading the epoch's order and steps failed") : TD_OK;
}

/* Loss sum and correct count over the replica's share of t->task_ds, in
 * chunks of a shard. */
static int task_eval(td_trainer *t, int rank) {
  td_replica *r = &t->rep[rank];
  const td_plan *p = t->plan;
  const td_dataset *ds = t->task_ds;
  td_backend *be = r->be;
  float *a = r->st->arena;
  /* A host-memory backend reads any dataset in place; others have copies
   * of the job's two. */
  const float *x = be->host_memory ? ds->x : ds == &t->test ? r->test_x : r->train_x;
  const int32_t *y = be->host_memory ? ds->y : ds == &t->test ? r->test_y : r->train_y;
  uint32_t lo = (uint32_t)((uint64_t)ds->n * (uint64_t)rank / (uint64_t)t->n_rep);
  uint32_t hi = (uint32_t)((uint64_t)ds->n * (uint64_t)(rank + 1) / (uint64_t)t->n_rep);
  r->sums[0] = r->sums[1] = 0.0;
  for (uint32_t start = lo; start < hi; start += t->shard) {
    uint32_t rows = hi - start < t->shard ? hi - start : t->shard;
    /* Rows start..start+rows: the dataset pointer is offset instead of the
     * indices, so the one iota buffer serves every chunk. */
    const td_rows l = rows_of(ds);
    int rc = be->ops->gather(be, &l, x + (size_t)start * ds->stride,
                             y + (size_t)start * ds->label_stride, r->iota, NULL, rows,
                             a + p->in_off, (int32_t *)(a + p->labels_off));
    if (rc)
      return td_errorf(&r->err, rc, "evaluate: gather failed");
    if ((rc = td_state_forward(r->st, (int)rows, 0, NULL, 0, &r->err)) ||
        (rc = td_state_loss(r->st, (int)rows, 0, &r->err)))
      return rc;
    float sc[2];
    if ((rc = be->ops->download(be, sc, a + p->scalars_off + TD_SC_LOSS_SUM, sizeof sc)))
      return td_errorf(&r->err, rc, "evaluate: reading the loss failed");
    r->sums[0] += sc[0];
    r->sums[1] += sc[1];
  }
  return TD_OK;
}

/* Replica 0's parameters, optimizer state, running statistics and step to
 * every replica. */
static int task_sync(td_trainer *t, int rank) {
  td_replica *r = &t->rep[rank];
  const td_plan *p = t->plan;
  size_t np = p->n_params, no = p->optim.state_slots * np;
  td_comm *c = t->comm;
  int rc = c->ops->broadcast(c, rank, r->st->params, np, 0);
  int rc2 = c->ops->broadcast(c, rank, r->st->opt_state, no, 0);
  if (!rc && p->n_stats)
    rc = c->ops->broadcast(c, rank, r->st->stats, p->n_stats, 0);
  if (rc || rc2)
    return td_errorf(&r->err, rc ? rc : rc2, "broadcasting the parameters failed");
  r->st->step = t->st.step;
  /* Recorded steps read the buffers of before; they are recorded again. */
  release_graphs(r);
  return TD_OK;
}

/* Backend memory of bytes for the replica, released with it. */
static void *replica_alloc(td_replica *r, size_t bytes, const char *what, td_error *err) {
  td_backend *be = r->be;
  void *p = be->ops->alloc(be, bytes ? bytes : 1);
  if (!p) {
    td_errorf(err, TD_ENOMEM, "%s backend: no memory for %s (%.1f MiB)", be->ops->name, what,
              (double)bytes / 1048576.0);
    return NULL;
  }
  r->owned[r->n_owned++] = p;
  return p;
}

/* The replica's view of the datasets (the host arrays, or copies in its
 * backend's memory) and the compiled step's buffers. */
static int replica_data(td_trainer *t, td_replica *x, td_error *err) {
  td_backend *be = x->be;
  const td_plan *p = t->plan;
  size_t steps = t->steps_per_epoch;
  if (!(x->cur = replica_alloc(x, p->rec_bytes, "the step record", err)) ||
      !(x->counter = replica_alloc(x, sizeof *x->counter, "the step counter", err)) ||
      !(x->metrics =
            replica_alloc(x, steps * TD_STEP_METRICS * sizeof(float), "the step metrics", err)))
    return err->code;
  if (!(x->metrics_host = calloc(steps * TD_STEP_METRICS, sizeof(float))))
    return td_errorf(err, TD_ENOMEM, "trainer: out of memory");
  if (t->dp_poisson && !(x->acc = replica_alloc(x, t->plan->n_params * sizeof(float),
                                                "the micro-batches' gradient sum", err)))
    return err->code;
  if (t->pe_report) {
    const size_t per = steps * 2 * t->pe_rows;
    /* Poisson micro-batches write the host's copy themselves. */
    if (!t->dp_poisson &&
        !(x->pe_norms = replica_alloc(x, per * sizeof(float), "the per-example norms", err)))
      return err->code;
    if (!(x->pe_norms_host = calloc(per, sizeof(float))))
      return td_errorf(err, TD_ENOMEM, "trainer: out of memory");
  }
  if (be->host_memory) {
    x->train_x = t->train.x;
    x->train_y = t->train.y;
    x->test_x = t->test.x;
    x->test_y = t->test.y;
    x->order = t->order;
    x->iota = t->iota;
    x->table = t->table;
    return TD_OK;
  }
  uint32_t *iota;
  if (!(x->order =
            replica_alloc(x, (size_t)t->train.n * sizeof *x->order, "the example order", err)) ||
      !(iota = replica_alloc(x, (size_t)t->shard * sizeof *iota, "the offsets", err)) ||
      !(x->table = replica_alloc(x, steps * p->rec_bytes, "the step table", err)))
    return err->code;
  x->iota = iota;
  int rc = be->ops->upload(be, iota, t->iota, (size_t)t->shard * sizeof *iota);
  if (rc)
    return td_errorf(err, rc, "%s backend: uploading the offsets failed", be->ops->name);
  const td_dataset *ds[2] = {&t->train, &t->test};
  for (int k = 0; k < 2; k++) {
    size_t nx = ds[k]->n_values * sizeof(float), ny = td_dataset_n_labels(ds[k]) * sizeof(int32_t);
    if (!ds[k]->n)
      continue;
    const char *what = k ? "the test set" : "the training set";
    float *dx = replica_alloc(x, nx, what, err);
    int32_t *dy = dx ? replica_alloc(x, ny, what, err) : NULL;
    if (!dy)
      return err->code;
    rc = be->ops->upload(be, dx, ds[k]->x, nx);
    if (!rc)
      rc = be->ops->upload(be, dy, ds[k]->y, ny);
    if (rc)
      return td_errorf(err, rc, "%s backend: uploading %s failed", be->ops->name, what);
    if (k) {
      x->test_x = dx;
      x->test_y = dy;
    } else {
      x->train_x = dx;
      x->train_y = dy;
    }
  }
  return TD_OK;
}

static int replicas_start(td_trainer *t, const td_trainer_opts *o, td_error *err) {
  const int n = t->n_rep;
  int threads = o->threads;
  if (threads <= 0 && n > 1) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cores > 0 ? (int)cores : 1;
  }
  int per = threads <= 0 ? 0 : (threads / n > 0 ? threads / n : 1);
  if (!(t->rep = calloc((size_t)n, sizeof *t->rep)))
    return td_errorf(err, TD_ENOMEM, "trainer: out of memory");
  int rc = TD_OK;
  for (int r = 0; r < n && !rc; r++) {
    td_replica *x = &t->rep[r];
    x->owner = t;
    x->rank = r;
    x->st = r ? &x->own : &t->st;
    rc = o->backend ? o->backend(o->backend_arg, r, per, &x->be, err)
                    : td_cpu_backend_create(&x->be, per, err);
    if (!rc)
      rc = td_state_init(x->st, t->plan, x->be, err);
    if (!rc)
      rc = replica_data(t, x, err);
  }
  if (rc)
    return rc;
  t->be = t->rep[0].be;
  if (n > 1 && o->comm) {
    td_backend **bes = malloc((size_t)n * sizeof *bes);
    if (!bes)
      return td_errorf(err, TD_ENOMEM, "trainer: out of memory");
    for (int r = 0; r < n; r++)
      bes[r] = t->rep[r].be;
    rc = o->comm(o->comm_arg, n, bes, &t->comm, err);
    free(bes);
  } else if (n > 1 && !t->be->host_memory) {
    rc = td_errorf(err, TD_EUNSUPPORTED,
                   "devices: %d %s devices need a communicator for their memory", n,
                   t->be->ops->name);
  } else {
    rc = td_comm_cpu_create(&t->comm, n, err);
  }
  if (rc)
    return rc;
  if (n == 1)
    return TD_OK;
  /* Batch norms reduce their statistics across the replicas. */
  for (int r = 0; r < n; r++) {
    t->rep[r].st->comm = t->comm;
    t->rep[r].st->rank = r;
  }
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->go, NULL);
  pthread_cond_init(&t->done, NULL);
  t->pool = 1;
  for (int r = 1; r < n; r++) {
    if (pthread_create(&t->rep[r].thread, NULL, replica_main, &t->rep[r]) != 0)
      return td_errorf(err, TD_ENOMEM, "trainer: cannot start the thread of device cpu:%d", r);
    t->rep[r].has_thread = 1;
  }
  return TD_OK;
}

static void replicas_stop(td_trainer *t) {
  if (t->pool) {
    pthread_mutex_lock(&t->mu);
    t->quit = 1;
    pthread_cond_broadcast(&t->go);
    pthread_mutex_unlock(&t->mu);
    for (int r = 1; r < t->n_rep; r++)
      if (t->rep[r].has_thread)
        pthread_join(t->rep[r].thread, NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->go);
    pthread_cond_destroy(&t->done);
    t->pool = 0;
  }
  for (int r = 0; t->rep && r < t->n_rep; r++) {
    td_replica *x = &t->rep[r];
    if (x->be)
      release_graphs(x);
    if (x->st)
      td_state_free(x->st);
    for (int k = 0; k < x->n_owned; k++)
      x->be->ops->release(x->be, x->owned[k]);
    free(x->metrics_host);
    free(x->pe_norms_host);
    td_backend_destroy(x->be);
  }
  free(t->rep);
  t->rep = NULL;
  t->be = NULL;
  td_comm_destroy(t->comm);
  t->comm = NULL;
}

int td_trainer_init(td_trainer *t, const Traind__V1__JobSpec *spec, const td_trainer_opts *o,
                    td_error *err) {
  memset(t, 0, sizeof *t);
  t->spec = spec;
  int rc = check_unsupported(spec, o, err);
  if (rc)
    return rc;
  const Traind__V1__Training *tr = spec->training;
  t->batch = tr->batch_size;
  t->n_rep = td_job_device_count(spec);
  t->shard = t->batch / (uint32_t)t->n_rep;
  t->epochs = tr->epochs;
  t->eval_every = tr->eval_every_epochs ? tr->eval_every_epochs : 1;
  t->eval_steps = tr->eval_every_steps;
  t->log_every = tr->log_every_steps ? tr->log_every_steps : 1;

  if (o->cache) {
    t->cache = o->cache;
  } else {
    td_plan_cache_init(&t->own_cache);
    t->cache = &t->own_cache;
  }
  rc = td_plan_cache_get(t->cache, spec->model, spec->optimizer, t->shard,
                         o->device_set ? o->device_set : "cpu:0", plan_flags(spec), &t->plan,
                         &t->plan_hit, err);
  if (rc)
    goto fail;

  double t0 = td_mono_sec();
  rc = load_data(t, o, err);
  t->load_sec = td_mono_sec() - t0;
  if (rc)
    goto fail;
  if ((rc = check_data(t, &t->train, "training", err)) ||
      (t->has_test && (rc = check_data(t, &t->test, "test", err))))
    goto fail;
  if (t->train.n < t->batch) {
    rc = td_errorf(err, TD_EINVAL,
                   "training.batch_size: %u is larger than the training set "
                   "(%u examples)",
                   t->batch, t->train.n);
    goto fail;
  }
  t->steps_per_epoch = t->train.n / t->batch;
  t->total_steps = (int64_t)t->steps_per_epoch * t->epochs;
  if (tr->max_steps && tr->max_steps < t->total_steps)
    t->total_steps = tr->max_steps;
  t->cap = t->batch;
  if (tr->dp_sgd && (rc = dp_setup(t, o, err)))
    goto fail;
  t->per_example = t->dp || tr->per_example_report;
  if (tr->per_example_report) {
    const uint32_t k = tr->per_example_report->top_k;
    t->pe_report = 1;
    if ((rc = td_examples_init(&t->examples, k ? k : TD_EXAMPLE_TOP_DEFAULT,
                               (size_t)t->steps_per_epoch * t->cap, &t->train, err)))
      goto fail;
  }
  t->compile_ms = t->plan->compile_ms;

  /* Poisson batches lie at s * cap of the order, padded. */
  size_t order_n = t->train.n;
  if (t->dp_poisson && (size_t)t->steps_per_epoch * t->cap + t->shard > order_n)
    order_n = (size_t)t->steps_per_epoch * t->cap + t->shard; /* a last micro-batch's tail */
  t->order = calloc(order_n, sizeof *t->order);
  t->pe_rows = t->dp_poisson ? (t->cap + (uint32_t)t->n_rep - 1) / (uint32_t)t->n_rep : t->shard;
  t->step_rows = malloc((size_t)t->steps_per_epoch * sizeof *t->step_rows);
  t->iota = malloc((size_t)t->shard * sizeof *t->iota);
  /* 8-byte aligned records: the passes in them hold doubles. */
  t->table = calloc((size_t)t->steps_per_epoch, t->plan->rec_bytes);
  if (!t->order || !t->iota || !t->table || !t->step_rows) {
    rc = td_errorf(err, TD_ENOMEM, "trainer: out of memory");
    goto fail;
  }
  for (uint32_t i = 0; i < t->shard; i++)
    t->iota[i] = i;
  if ((rc = replicas_start(t, o, err)))
    goto fail;
  if (t->per_example && (rc = check_dp_plan(t->plan, t->be, t->dp, err)))
    goto fail;
  /* Backends that record steps run chunks of them between reads of the
   * metrics; graph_steps steps per long graph. */
  const td_backend_ops *bops = t->be->ops;
  t->record = !o->no_record && bops->graph_record && bops->graph_replay && bops->graph_free;
  t->graph_steps = t->record ? (t->steps_per_epoch < 64 ? t->steps_per_epoch : 64) : 1;
  t->chunk_max = t->record ? t->steps_per_epoch : 1;

  td_key keys[3];
  td_prng_split(td_prng_key(tr->seed), keys, 3);
  t->init_key = keys[0];
  t->shuffle_key = keys[1];
  t->dropout_key = keys[2];
  if ((rc = td_state_init_params(&t->st, t->init_key, err)))
    goto fail;
  char warm[4096];
  if ((rc = resolve_init_from(spec, o, warm, sizeof warm, err)))
    goto fail;
  if (warm[0] && (rc = td_ckpt_load_params(warm, &t->st, err))) {
    td_error_prefix(err, "checkpoint.init_from");
    goto fail;
  }
  /* Every replica starts from replica 0's parameters. */
  if ((rc = run_task(t, task_sync, err)))
    goto fail;
  t->epoch = 1;
  return TD_OK;

fail:
  td_trainer_free(t);
  return rc;
}

void td_trainer_free(td_trainer *t) {
  replicas_stop(t);
  if (t->plan)
    td_plan_cache_release(t->cache, t->plan);
  t->plan = NULL;
  if (t->cache == &t->own_cache)
    td_plan_cache_free(&t->own_cache);
  t->cache = NULL;
  td_dataset_free(&t->train);
  td_dataset_free(&t->test);
  free(t->order);
  free(t->iota);
  free(t->table);
  free(t->step_rows);
  free(t->dp_rdp);
  td_examples_free(&t->examples);
  t->step_rows = NULL;
  t->dp_rdp = NULL;
  t->order = t->iota = NULL;
  t->table = NULL;
}

int td_trainer_evaluate(td_trainer *t, const td_dataset *ds, float *loss, float *accuracy,
                        td_error *err) {
  const td_plan *p = t->plan;
  t->task_ds = ds;
  int rc = run_task(t, task_eval, err);
  if (rc)
    return rc;
  double loss_sum = 0.0, correct = 0.0;
  for (int r = 0; r < t->n_rep; r++) {
    loss_sum += t->rep[r].sums[0];
    correct += t->rep[r].sums[1];
  }
  double denom = ds->n ? (double)ds->n * p->positions : 1.0;
  if (p->loss == TRAIND__V1__LOSS__MEAN_SQUARED_ERROR)
    *loss = (float)(loss_sum / (denom * p->out_dim));
  else
    *loss = (float)(loss_sum / denom);
  *accuracy = (float)(correct / denom);
  return TD_OK;
}

/* The epoch's order (on the backend when it shuffles, else on the host)
 * and its step table from the step at slot `first` on, to every replica. */
static int begin_epoch(td_trainer *t, uint32_t epoch, uint32_t first, td_error *err) {
  const td_plan *p = t->plan;
  td_key key = td_prng_fold_in(t->shuffle_key, epoch - 1);
  int rc = TD_OK;
  if (t->dp_poisson) {
    /* Every step's batch, also those before `first` (their sizes make the
     * epoch's figures); padded with the batch's first example (or 0). */
    td_key pk = td_prng_fold_in(td_prng_fold_in(t->shuffle_key, 0xffffffffu), epoch - 1);
    const double q = (double)t->batch / t->train.n;
    for (uint32_t s = 0; s < t->steps_per_epoch; s++) {
      uint32_t *b = t->order + (size_t)s * t->cap;
      uint32_t k = poisson_batch(td_prng_fold_in(pk, s), t->train.n, q, t->cap, b);
      if (k > t->cap)
        return td_errorf(err, TD_EINTERNAL,
                         "epoch %u, step %u: Poisson sampling drew %u examples, more than the "
                         "%u a step holds (a chance below 1e-12 per step); run the job with "
                         "another training.seed",
                         epoch, s + 1, k, t->cap);
      for (uint32_t i = k; i < t->cap; i++)
        b[i] = k ? b[0] : 0;
      t->step_rows[s] = k;
    }
  } else if (t->be->ops->shuffle && !t->be->host_memory) {
    t->shuffle_rounds = td_prng_permutation_keys(key, t->train.n, t->round_keys);
  } else if ((rc = td_prng_permutation(key, t->order, t->train.n))) {
    return td_errorf(err, rc, "epoch %u: shuffling failed", epoch);
  }
  if (!t->dp_poisson)
    for (uint32_t s = 0; s < t->steps_per_epoch; s++)
      t->step_rows[s] = t->batch;
  for (uint32_t s = first; s < t->steps_per_epoch; s++) {
    void *rec = (char *)t->table + (size_t)s * p->rec_bytes;
    td_plan_fill_rec(p, rec, s, s * t->cap, t->st.step + (s - first), t->dropout_key);
    ((td_step_record *)rec)->rows = t->step_rows[s];
  }
  if ((rc = run_task(t, task_epoch, err)))
    td_error_prefix(err, "epoch %u", epoch);
  return rc;
}

/* Runs the steps at slots first..first+count-1 of the epoch and reads their
 * metrics into points (count of them) and correct (their correct counts).
 * A non-finite loss or gradient norm fails the run at the first step that
 * has one; the optimizer left the parameters as they were at that step. */
static int run_chunk(td_trainer *t, uint32_t first, uint32_t count, td_step_point *points,
                     float *correct, uint32_t *done, td_error *err) {
  const td_plan *p = t->plan;
  const int64_t step0 = t->st.step;
  t->task_first = first;
  t->task_count = count;
  *done = 0;
  int rc = run_task(t, task_chunk, err);
  if (rc)
    return rc;
  for (uint32_t i = 0; i < count; i++) {
    /* The batch's loss and correct count: the replicas' shards, in order. */
    size_t at = (size_t)(first + i) * TD_STEP_METRICS;
    float loss_sum = 0.0f, corr = 0.0f;
    for (int r = 0; r < t->n_rep; r++) {
      loss_sum += t->rep[r].metrics_host[at + TD_SC_LOSS_SUM];
      corr += t->rep[r].metrics_host[at + TD_SC_CORRECT];
    }
    /* Of the averaged gradients: the same on every replica. */
    const float sumsq = t->rep[0].metrics_host[at + TD_SC_GRAD_SUMSQ];
    const uint32_t rows = t->step_rows[first + i];
    float loss = rows ? loss_sum / ((float)rows * (float)p->positions) : 0.0f;
    if (p->loss == TRAIND__V1__LOSS__MEAN_SQUARED_ERROR)
      loss /= (float)p->out_dim;
    int64_t step = step0 + i;
    if (!isfinite(loss) || !isfinite(sumsq)) {
      /* The chunk's steps before this one stand, as they would op by op. */
      *done = i;
      for (int r = 0; r < t->n_rep; r++)
        t->rep[r].st->step = step;
      return td_errorf(err, TD_ENUMERIC,
                       "step %lld: the %s is %s; lower the learning rate or add "
                       "clip_by_global_norm to the optimizer chain",
                       (long long)step + 1, isfinite(loss) ? "gradient norm" : "loss",
                       isnan(isfinite(loss) ? sumsq : loss) ? "NaN" : "infinite");
    }
    memset(&points[i], 0, sizeof points[i]);
    points[i].loss = loss;
    points[i].grad_norm = sqrtf(sumsq);
    points[i].lr = (float)td_optim_lr(&p->optim, step);
    points[i].step = step + 1;
    correct[i] = corr;
  }
  for (int r = 0; r < t->n_rep; r++)
    t->rep[r].st->step = step0 + count;
  *done = count;
  return TD_OK;
}

/* The steps of the next chunk from slot s of the epoch: up to the epoch's
 * end, the job's end, the next multiple of the checkpoint interval, and
 * chunk_max. */
static uint32_t chunk_len(const td_trainer *t, uint32_t s) {
  int64_t n = (int64_t)t->steps_per_epoch - s;
  int64_t left = t->total_steps - t->st.step;
  if (left < n)
    n = left;
  if (t->eval_steps && t->has_test) {
    int64_t to = (int64_t)t->eval_steps - t->st.step % (int64_t)t->eval_steps;
    if (to < n)
      n = to;
  }
  const Traind__V1__Checkpointing *c = t->spec->checkpoint;
  if (c && c->every_steps) {
    int64_t to = (int64_t)c->every_steps - t->st.step % (int64_t)c->every_steps;
    if (to < n)
      n = to;
  }
  /* The first step of a job runs alone: it warms the backend up before
   * anything is recorded. */
  if (t->record && !t->rep[0].warm)
    n = 1;
  return (uint32_t)(n < (int64_t)t->chunk_max ? n : (int64_t)t->chunk_max);
}

/* Backends that record: chunks are kept to about a quarter second, so
 * that cancellation, checkpoint requests and metrics stay timely. */
static void adapt_chunk(td_trainer *t, uint32_t steps, double sec) {
  if (!t->record || steps < 2 || sec <= 0.0)
    return;
  double per = sec / steps, want = 0.25 / per;
  uint32_t n = want >= t->steps_per_epoch ? t->steps_per_epoch : want < 1.0 ? 1 : (uint32_t)want;
  t->chunk_max = n;
}

int td_trainer_resume(td_trainer *t, const char *path, td_error *err) {
  /* The file is read into a scratch state first, so that a refusal of its
   * position leaves t untouched; then the two swap. */
  td_state st;
  int rc = td_state_init(&st, t->plan, t->be, err);
  if (rc)
    return rc;
  td_ckpt_meta m;
  if ((rc = td_ckpt_read(path, &st, &m, err))) {
    td_state_free(&st);
    return rc;
  }
  uint64_t seed = t->spec->training->seed;
  int64_t at = (int64_t)(m.epoch - 1) * t->steps_per_epoch + m.step_in_epoch;
  if (m.seed != seed)
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s' is of a run with seed %llu; this job's seed is %llu", path,
                   (unsigned long long)m.seed, (unsigned long long)seed);
  else if (m.step != st.step)
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s': attribute step (%lld) disagrees with "
                   "/opt_state/count (%lld)",
                   path, (long long)m.step, (long long)st.step);
  else if (m.epoch < 1 || m.step_in_epoch >= t->steps_per_epoch ||
           (st.step < t->total_steps && at != st.step))
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s': position epoch %u, step %u of the epoch does not fit "
                   "step %lld with %u steps per epoch (another batch size or dataset?)",
                   path, m.epoch, m.step_in_epoch, (long long)st.step, t->steps_per_epoch);
  if (!rc) {
    td_state old = t->st;
    t->st = st;
    st = old;
    t->epoch = m.epoch;
    t->step_in_epoch = m.step_in_epoch;
    t->epoch_loss_sum = m.epoch_loss_sum;
    t->epoch_correct_sum = m.epoch_correct_sum;
  }
  td_state_free(&st);
  td_ckpt_meta_free(&m);
  /* The other replicas take replica 0's state. */
  if (!rc)
    rc = run_task(t, task_sync, err);
  return rc;
}

void td_trainer_meta(const td_trainer *t, td_ckpt_meta *m) {
  memset(m, 0, sizeof *m);
  m->step = t->st.step;
  m->epoch = t->epoch;
  m->step_in_epoch = t->step_in_epoch;
  m->epoch_loss_sum = t->epoch_loss_sum;
  m->epoch_correct_sum = t->epoch_correct_sum;
  m->root_key = td_prng_key(t->spec->training->seed);
  if (t->train.vocab) {
    m->vocab = t->train.vocab;
    m->n_vocab = t->train.n_vocab;
  } else if (t->spec->dataset->source_case == TRAIND__V1__DATASET__SOURCE_TEXT) {
    m->vocab = t->byte_vocab;
    m->n_vocab = 256;
    m->vocab_bytes = 1;
  }
  m->seed = t->spec->training->seed;
}

/* The epoch's training figures over its `taken` steps so far: the mean
 * batch loss, and the fraction of correct predictions (of every position
 * of a sequence's). */
static void train_figures(const td_trainer *t, uint32_t taken, td_epoch_point *ep) {
  double examples = 0.0;
  for (uint32_t s = 0; s < taken; s++)
    examples += t->step_rows[s];
  const double predictions = examples * t->plan->positions;
  ep->train_loss = taken ? (float)(t->epoch_loss_sum / taken) : 0.0f;
  ep->train_accuracy = taken ? (float)(t->epoch_correct_sum / predictions) : 0.0f;
}

/* The per-example norms of a chunk's steps (at slots s.., their points) to
 * the epoch's report: every replica's examples of each step, with their
 * indices in the training set. */
static void take_norms(td_trainer *t, uint32_t s, uint32_t done, const td_step_point *points) {
  const size_t pe = 2 * (size_t)t->pe_rows;
  const double scale = (double)t->n_rep / t->batch;
  for (uint32_t i = 0; i < done; i++) {
    const uint32_t slot = s + i, rows = t->step_rows[slot];
    for (int r = 0; r < t->n_rep; r++) {
      const double *acc = (const double *)(t->rep[r].pe_norms_host + (size_t)slot * pe);
      uint32_t lo = (uint32_t)r * t->shard, hi = lo + t->shard;
      if (t->dp_poisson)
        poisson_share(t, r, rows, &lo, &hi);
      for (uint32_t k = lo; k < hi; k++)
        td_examples_add(&t->examples, t->order[(size_t)slot * t->cap + k],
                        sqrt(acc[k - lo]) / scale, points[i].step);
    }
  }
}

int td_trainer_run(td_trainer *t, const td_train_hooks *hooks, td_epoch_point *last,
                   td_error *err) {
  static const td_train_hooks none = {0};
  if (!hooks)
    hooks = &none;
  td_epoch_point ep = {0};
  td_step_point *points = malloc((size_t)t->steps_per_epoch * sizeof *points);
  float *correct = malloc((size_t)t->steps_per_epoch * sizeof *correct);
  int rc = points && correct ? TD_OK : td_errorf(err, TD_ENOMEM, "trainer: out of memory");
  for (; !rc && t->epoch <= t->epochs && t->st.step < t->total_steps;
       t->epoch++, t->step_in_epoch = 0, t->epoch_loss_sum = t->epoch_correct_sum = 0.0) {
    uint32_t epoch = t->epoch;
    if ((rc = begin_epoch(t, epoch, t->step_in_epoch, err)))
      break;
    double e0 = td_mono_sec();
    uint32_t steps = 0;
    td_examples_begin(&t->examples);
    while (t->step_in_epoch < t->steps_per_epoch && t->st.step < t->total_steps) {
      if (hooks->should_stop && hooks->should_stop(hooks->user)) {
        rc = td_errorf(err, TD_ECANCELLED, "cancelled at step %lld", (long long)t->st.step);
        break;
      }
      uint32_t s = t->step_in_epoch, n = chunk_len(t, s), done = 0;
      double s0 = td_mono_sec();
      if ((rc = run_chunk(t, s, n, points, correct, &done, err))) {
        if (rc != TD_ENUMERIC)
          td_error_prefix(err, "epoch %u, step %lld", epoch, (long long)t->st.step + 1);
        if (!done)
          break;
      }
      double s1 = td_mono_sec();
      if (!rc)
        adapt_chunk(t, n, s1 - s0);
      for (uint32_t i = 0; i < done; i++) {
        td_step_point *sp = &points[i];
        steps++;
        t->epoch_loss_sum += sp->loss;
        t->epoch_correct_sum += correct[i];
        sp->epoch = epoch;
        sp->step_in_epoch = s + i + 1;
        sp->step_ms = (s1 - s0) * 1e3 / n;
        sp->examples_per_sec = (double)steps * t->batch / (s0 + (s1 - s0) * (i + 1) / n - e0);
        if (hooks->on_step && (sp->step % t->log_every == 0 || s + i + 1 == t->steps_per_epoch))
          hooks->on_step(hooks->user, t, sp);
      }
      t->step_in_epoch = s + done;
      if (t->pe_report)
        take_norms(t, s, done, points);
      if (rc)
        break;
      /* An evaluation inside the epoch (training.eval_every_steps): a
       * point with the epoch's training figures so far. */
      if (t->eval_steps && t->has_test && t->st.step % t->eval_steps == 0 &&
          t->step_in_epoch < t->steps_per_epoch && t->st.step < t->total_steps) {
        td_epoch_point mid = {.epoch = epoch, .step = t->st.step, .mid_epoch = 1};
        const double v0 = td_mono_sec();
        train_figures(t, t->step_in_epoch, &mid);
        if (t->dp) {
          mid.has_epsilon = 1;
          mid.epsilon = td_trainer_epsilon(t, t->st.step);
          mid.delta = t->dp_delta;
        }
        mid.epoch_sec = v0 - e0;
        mid.examples_per_sec = (double)steps * t->batch / (v0 - e0);
        if ((rc = td_trainer_evaluate(t, &t->test, &mid.test_loss, &mid.test_accuracy, err)))
          break;
        mid.evaluated = 1;
        mid.eval_sec = td_mono_sec() - v0;
        e0 += mid.eval_sec; /* training time only */
        if (hooks->on_epoch)
          hooks->on_epoch(hooks->user, t, &mid);
      }
      if (hooks->at_boundary && t->step_in_epoch < t->steps_per_epoch &&
          t->st.step < t->total_steps)
        hooks->at_boundary(hooks->user, t);
    }
    if (rc)
      break;
    double e1 = td_mono_sec();
    /* Train figures cover the whole epoch, also its steps before a resume. */
    uint32_t taken = t->step_in_epoch;
    memset(&ep, 0, sizeof ep);
    ep.epoch = epoch;
    ep.step = t->st.step;
    ep.epoch_sec = e1 - e0;
    ep.examples_per_sec = (double)steps * t->batch / (e1 - e0);
    train_figures(t, taken, &ep);
    if (t->dp) {
      ep.has_epsilon = 1;
      ep.epsilon = td_trainer_epsilon(t, t->st.step);
      ep.delta = t->dp_delta;
    }
    if (t->pe_report) {
      td_examples_report(&t->examples, &t->train, epoch, t->st.step, t->dp ? t->dp_clip : 0.0);
      ep.examples = &t->examples.rep;
    }
    int final = epoch == t->epochs || t->st.step >= t->total_steps;
    if (t->has_test && (epoch % t->eval_every == 0 || final)) {
      if ((rc = td_trainer_evaluate(t, &t->test, &ep.test_loss, &ep.test_accuracy, err)))
        break;
      ep.evaluated = 1;
      ep.eval_sec = td_mono_sec() - e1;
    }
    if (hooks->on_epoch)
      hooks->on_epoch(hooks->user, t, &ep);
    if (hooks->at_boundary) {
      /* The position after this epoch: the next one, nothing taken. */
      t->epoch++;
      t->step_in_epoch = 0;
      t->epoch_loss_sum = t->epoch_correct_sum = 0.0;
      hooks->at_boundary(hooks->user, t);
      t->epoch--;
    }
  }
  free(points);
  free(correct);
  if (!rc && last)
    *last = ep;
  return rc;
}
