/* A job's device memory before it runs (see footprint.h). Every figure
 * mirrors an allocation of the engine or of the CUDA backend; the comments
 * name where that allocation is. */
#include "footprint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "plan.h"

/* ---- the datasets' shapes ------------------------------------------------ */

/* The shapes of the job's training and test sets (test: zeroed when the
 * job has none), from the files the trainer would load. */
static int read_shapes(const Traind__V1__Dataset *d, const td_trainer_opts *o, td_dataset *train,
                       td_dataset *test, td_error *err) {
  memset(train, 0, sizeof *train);
  memset(test, 0, sizeof *test);
  if (!d)
    return td_errorf(err, TD_EINVAL, "dataset: required");
  td_data_files *f = malloc(sizeof *f);
  if (!f)
    return td_errorf(err, TD_ENOMEM, "out of memory");
  int rc = td_data_files_resolve(d, o, f, err);
  if (!rc && d->source_case == TRAIND__V1__DATASET__SOURCE_IDX) {
    if (!(rc = td_idx_shape(f->train[0], f->train[1], d->train_limit, train, err)))
      rc = td_idx_shape(f->test[0], f->test[1], d->test_limit, test, err);
  } else if (!rc) {
    if (!(rc = td_hdf5_shape(f->train[0], f->features, f->labels, d->train_limit, train, err)) &&
        f->has_test)
      rc = td_hdf5_shape(f->test[0], f->features, f->labels, d->test_limit, test, err);
  }
  free(f);
  return rc;
}

/* ---- the CUDA backend's scratch ------------------------------------------ */

static size_t round_up(size_t b, size_t to) { return (b + to - 1) / to * to; }

/* The most scratch any op of the job asks for, mirroring the *_scratch()
 * functions of kernels/cuda:
 *  - shuffle.cu td_cuda_shuffle_scratch(n): three arrays of n uint32 and
 *    CUB's temporary storage (bounded: see TD_FOOTPRINT_CUB_SLACK), each in
 *    256-byte granules;
 *  - bias_act.cu td_cuda_bias_act_bwd_scratch(rows, cols) of each dense
 *    layer with a bias: a double per column per band of 64 rows (at most
 *    256 bands), none for one band;
 *  - xent.cu td_cuda_loss_scratch(rows): two doubles per row;
 *  - reduce.cu td_cuda_sumsq_scratch(n): a double per block of 4096
 *    elements (at most 1024 blocks), over the gradients. */
static size_t scratch_need(const td_plan *p, uint32_t train_n) {
  const size_t words = round_up((size_t)train_n * sizeof(uint32_t), 256);
  size_t need = 3 * words + round_up(2 * words + train_n + TD_FOOTPRINT_CUB_SLACK, 256);
  const size_t rows = p->batch;
  for (size_t i = 0; i < p->n_layers; i++) {
    const td_layer *L = &p->layers[i];
    size_t bands = (rows + 63) / 64;
    bands = bands < 1 ? 1 : bands > 256 ? 256 : bands;
    if (L->kind == TD_LAYER_DENSE && L->b_view != TD_NONE && bands > 1 &&
        bands * L->out * sizeof(double) > need)
      need = bands * L->out * sizeof(double);
  }
  size_t loss = 2 * (rows ? rows : 1) * sizeof(double);
  size_t blocks = (p->n_params + 4095) / 4096;
  blocks = blocks < 1 ? 1 : blocks > 1024 ? 1024 : blocks;
  if (loss > need)
    need = loss;
  if (blocks * sizeof(double) > need)
    need = blocks * sizeof(double);
  return need;
}

/* ---- the footprint -------------------------------------------------------- */

/* What an allocation of b bytes takes on the job's backend: whole granules
 * on a GPU (cuda_alloc); as asked on the host. */
static size_t take(const td_footprint *f, size_t b) {
  if (!f->gpu)
    return b;
  return b ? round_up(b, TD_FOOTPRINT_GRANULE) : TD_FOOTPRINT_GRANULE;
}

/* The engine's buffers, in the order it allocates them. */
static void size_engine(td_footprint *f, const td_plan *p) {
  const size_t np = p->n_params, fl = sizeof(float);
  /* td_state_init: params, grads, opt_state (one float more than the
   * slots: never an empty buffer), arena. */
  f->model_bytes = 2 * take(f, np * fl) + take(f, (p->optim.state_slots * np + 1) * fl);
  f->arena_bytes = take(f, p->arena_floats * fl);
  /* replica_data, through replica_alloc (which asks for at least 1 byte):
   * the step record, the step counter, the per-step metrics. */
  const size_t steps = f->steps_per_epoch;
  size_t step = take(f, p->rec_bytes) + take(f, sizeof(uint32_t)) +
                take(f, steps ? steps * TD_STEP_METRICS * fl : 1);
  if (f->gpu) {
    /* A backend whose memory is not the host's: the example order, the
     * offsets 0..shard-1, the step table, and copies of the datasets
     * (features, then labels; a set without examples is skipped). */
    step += take(f, f->train_n ? (size_t)f->train_n * sizeof(uint32_t) : 1) +
            take(f, f->shard ? (size_t)f->shard * sizeof(uint32_t) : 1) +
            take(f, steps ? steps * p->rec_bytes : 1);
    const uint32_t n[2] = {f->train_n, f->test_n}, dim[2] = {f->train_dim, f->test_dim};
    f->data_bytes = 0;
    for (int k = 0; k < 2; k++)
      if (n[k])
        f->data_bytes +=
            take(f, (size_t)n[k] * dim[k] * fl) + take(f, (size_t)n[k] * sizeof(int32_t));
  }
  f->step_bytes = step;
  f->engine_bytes = f->model_bytes + f->arena_bytes + f->step_bytes + f->data_bytes;
  /* td_trainer_resume reads a checkpoint into a second td_state. */
  f->resume_bytes = f->model_bytes + f->arena_bytes;
}

/* The CUDA backend's own memory on each GPU (td_cuda_backend_create and
 * its scratch()). */
static void size_fixed(td_footprint *f, const td_plan *p) {
  if (!f->gpu)
    return;
  const size_t need = scratch_need(p, f->train_n);
  size_t scratch = TD_FOOTPRINT_SCRATCH_MIN;
  while (scratch < need)
    scratch *= 2;
  f->scratch_bytes = scratch;
  f->fixed_bytes = TD_FOOTPRINT_CUBLAS_WORKSPACE + scratch + TD_FOOTPRINT_CUDA_CONTEXT;
}

int td_job_footprint(const Traind__V1__JobSpec *spec, const td_trainer_opts *o, td_footprint *out,
                     td_error *err) {
  memset(out, 0, sizeof *out);
  td_footprint *f = out;
  const Traind__V1__Devices *dv = spec->devices;
  f->gpu = dv && dv->kind && strcmp(dv->kind, "gpu") == 0;
  f->replicas = td_job_device_count(spec);
  if (!spec->training)
    return td_errorf(err, TD_EINVAL, "training: required");
  f->batch = spec->training->batch_size;
  f->shard = f->batch / (uint32_t)f->replicas;
  td_plan *p = NULL;
  int rc = td_plan_compile(spec->model, spec->optimizer, f->shard, "cpu:0", &p, err);
  if (rc)
    return rc;
  td_dataset train, test;
  if ((rc = read_shapes(spec->dataset, o, &train, &test, err))) {
    td_plan_free(p);
    return rc;
  }
  f->train_n = train.n;
  f->train_dim = train.dim;
  f->test_n = test.n;
  f->test_dim = test.dim;
  f->steps_per_epoch = f->batch ? f->train_n / f->batch : 0;
  size_engine(f, p);
  size_fixed(f, p);
  f->total_bytes = f->engine_bytes + f->fixed_bytes;
  td_plan_free(p);
  return TD_OK;
}

/* "512.0 MiB", "1.25 GiB". */
static const char *human(char *buf, size_t len, size_t b) {
  if (b >= ((size_t)1 << 30))
    snprintf(buf, len, "%.2f GiB", (double)b / (double)((size_t)1 << 30));
  else
    snprintf(buf, len, "%.1f MiB", (double)b / (double)((size_t)1 << 20));
  return buf;
}

int td_footprint_fits(const td_footprint *f, int gpu, size_t free_bytes, td_error *err) {
  if (f->total_bytes <= free_bytes)
    return TD_OK;
  char need[32], avail[32], model[32], arena[32], data[32], rest[32];
  return td_errorf(
      err, TD_ENOMEM,
      "devices: the job needs %s on GPU %d, which has %s free: %s for the model's parameters, "
      "gradients and optimizer state, %s of activations for %u examples per GPU, %s for the "
      "training and test sets (%u + %u examples), %s for the CUDA context, cuBLAS and the "
      "step's buffers; make the model or training.batch_size smaller, set dataset.train_limit "
      "and test_limit, or free memory on GPU %d",
      human(need, sizeof need, f->total_bytes), gpu, human(avail, sizeof avail, free_bytes),
      human(model, sizeof model, f->model_bytes), human(arena, sizeof arena, f->arena_bytes),
      f->shard, human(data, sizeof data, f->data_bytes), f->train_n, f->test_n,
      human(rest, sizeof rest, f->fixed_bytes + f->step_bytes), gpu);
}
