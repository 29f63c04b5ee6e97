/* A job's memory before it runs (see footprint.h). Every figure mirrors
 * an allocation of the engine, the trainer, the checkpoint writer or the
 * CUDA backend; the comments name where that allocation is. */
#include "footprint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "pbjson.h"
#include "plan.h"
#include "text.h"
#include "train.h"

/* The epoch points a job's metric ring keeps (metrics.c EPOCH_CAP). */

/* ---- the datasets' shapes ------------------------------------------------ */

/* The shapes of a token dataset's training and validation parts (its
 * file resolved in f) through td_text_shape and td_h5tokens_shape: a text
 * file of characters is read through, in small pieces, to count them; an
 * HDF5 file's headers only. Both parts are loaded together, with at most
 * TD_TEXT_SCRATCH_BYTES more. */
static int read_token_shapes(const Traind__V1__JobSpec *spec, const td_data_files *f,
                             td_dataset *train, td_dataset *test, size_t raw[2], td_error *err) {
  const Traind__V1__Dataset *d = spec->dataset;
  td_text_opts to;
  int rc = td_text_opts_of(spec, &to, err);
  if (rc)
    return rc;
  if (d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT)
    rc = td_text_shape(f->train[0], &to, train, test, err);
  else
    rc = td_h5tokens_shape(f->train[0], d->hdf5_tokens->train, d->hdf5_tokens->val,
                           d->hdf5_tokens->vocab_size, &to, train, test, err);
  if (!rc)
    raw[0] = raw[1] = TD_TEXT_SCRATCH_BYTES;
  return rc;
}

/* The shapes of the job's training and test sets (test: zeroed when the
 * job has none), from the files the trainer would load, and what loading
 * each set allocates on top of the set itself (raw[k]): an IDX loader
 * reads the whole file's pixels and labels as bytes, limit or not; an
 * HDF5 loader reads the kept rows' labels as int64 and, for uint8
 * features, their bytes (counted for every type: the header reader does
 * not say which). Token datasets: see read_token_shapes. */
static int read_shapes(const Traind__V1__JobSpec *spec, const td_trainer_opts *o, td_dataset *train,
                       td_dataset *test, size_t raw[2], td_error *err) {
  const Traind__V1__Dataset *d = spec->dataset;
  memset(train, 0, sizeof *train);
  memset(test, 0, sizeof *test);
  raw[0] = raw[1] = 0;
  if (!d)
    return td_errorf(err, TD_EINVAL, "dataset: required");
  td_data_files *f = malloc(sizeof *f);
  if (!f)
    return td_errorf(err, TD_ENOMEM, "out of memory");
  int rc = td_data_files_resolve(d, o, f, err);
  td_dataset *set[2] = {train, test};
  const uint32_t limit[2] = {d->train_limit, d->test_limit};
  if (!rc && (d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT ||
              d->source_case == TRAIND__V1__DATASET__SOURCE_HDF5_TOKENS)) {
    rc = read_token_shapes(spec, f, train, test, raw, err);
  } else if (!rc && d->source_case == TRAIND__V1__DATASET__SOURCE_IDX) {
    for (int k = 0; k < 2 && !rc; k++) {
      const char(*files)[4096] = k ? f->test : f->train;
      td_dataset all;
      if (!(rc = td_idx_shape(files[0], files[1], 0, &all, err))) {
        *set[k] = all;
        if (limit[k] && limit[k] < all.n)
          set[k]->n = limit[k];
        raw[k] = (size_t)all.n * all.dim + all.n;
      }
    }
  } else if (!rc) {
    for (int k = 0; k < 2 && !rc; k++) {
      if (k && !f->has_test)
        break;
      const char *file = k ? f->test[0] : f->train[0];
      if (!(rc = td_hdf5_shape(file, f->features, f->labels, limit[k], set[k], err)))
        raw[k] = (size_t)set[k]->n * sizeof(int64_t) + (size_t)set[k]->n * set[k]->dim;
    }
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
 *    elements (at most 1024 blocks), over the gradients;
 *  - seq.cu td_cuda_embed_bwd_scratch(rows, vocab) of each embed layer:
 *    four arrays of its rows' uint32 ids and orders, a start per id, and
 *    CUB's sort storage (bounded as the shuffle's).
 * Rows are the batch's examples, or their positions for a sequence. */
static size_t scratch_need(const td_plan *p, uint32_t train_n) {
  const size_t words = round_up((size_t)train_n * sizeof(uint32_t), 256);
  size_t need = 3 * words + round_up(2 * words + train_n + TD_FOOTPRINT_CUB_SLACK, 256);
  for (size_t i = 0; i < p->n_nodes; i++) {
    const td_node *L = &p->nodes[i];
    const size_t rows = (size_t)p->batch * L->positions;
    size_t bands = (rows + 63) / 64;
    bands = bands < 1 ? 1 : bands > 256 ? 256 : bands;
    const size_t cols = L->out / L->positions;
    if (L->op == TD_OP_DENSE && L->b_view != TD_NONE && bands > 1 &&
        bands * cols * sizeof(double) > need)
      need = bands * cols * sizeof(double);
    if (L->op == TD_OP_EMBED) {
      const size_t e = 4 * round_up(rows * sizeof(uint32_t), 256) +
                       round_up(((size_t)L->vocab + 1) * sizeof(uint32_t), 256) +
                       round_up(TD_FOOTPRINT_CUB_SLACK, 256);
      if (e > need)
        need = e;
    }
  }
  const size_t rows = (size_t)p->batch * p->positions;
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

/* The bytes of a set as loaded: x, its float32 features (n * dim for
 * examples, n_values for token windows, which alone have a vocab_size);
 * y, its int32 labels (one per example, or per token of windows). */
typedef struct set_size {
  size_t x, y;
} set_size;

static set_size set_size_of(const td_dataset *ds) {
  if (ds->vocab_size)
    return (set_size){ds->n_values * sizeof(float), ds->n_values * sizeof(int32_t)};
  return (set_size){(size_t)ds->n * ds->dim * sizeof(float), (size_t)ds->n * sizeof(int32_t)};
}

/* What an allocation of b bytes takes on the job's backend: whole granules
 * on a GPU (cuda_alloc); as asked on the host. */
static size_t take(const td_footprint *f, size_t b) {
  if (!f->gpu)
    return b;
  return b ? round_up(b, TD_FOOTPRINT_GRANULE) : TD_FOOTPRINT_GRANULE;
}

/* The engine's buffers, in the order it allocates them; set[k]: the
 * training and test sets' sizes. */
static void size_engine(td_footprint *f, const td_plan *p, const set_size set[2]) {
  const size_t np = p->n_params, fl = sizeof(float);
  /* td_state_init: params, grads, opt_state (one float more than the
   * slots: never an empty buffer), arena, stats. */
  f->model_bytes = 2 * take(f, np * fl) + take(f, (p->optim.state_slots * np + 1) * fl);
  f->arena_bytes = take(f, p->arena_floats * fl);
  /* The running statistics, when the model has batch norms. (A backend's
   * own kernels, oneDNN's reordered copies and workspaces on the CPU, are
   * not counted.) */
  if (p->n_stats)
    f->model_bytes += take(f, p->n_stats * fl);
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
    const uint32_t n[2] = {f->train_n, f->test_n};
    f->data_bytes = 0;
    for (int k = 0; k < 2; k++)
      if (n[k])
        f->data_bytes += take(f, set[k].x) + take(f, set[k].y);
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

/* A CPU backend allocation of b bytes (cpu_alloc: whole 64-byte lines,
 * at least one). */
static size_t cpu_take(size_t b) {
  return b ? round_up(b, TD_FOOTPRINT_CPU_ALIGN) : TD_FOOTPRINT_CPU_ALIGN;
}

/* The HDF5 image a checkpoint is built in (checkpoint.c write_file): the
 * core driver grows its buffer in whole increments of the floats' bytes
 * plus 256 KiB, up to the file's size; the file holds the floats, the
 * spec as an attribute and each leaf's metadata. */
static size_t image_size(const td_plan *p, size_t json) {
  const size_t floats = p->n_params * (1 + p->optim.state_slots);
  const size_t leaves = p->n_views * (1 + p->optim.state_slots);
  const size_t inc = floats * sizeof(float) + ((size_t)256 << 10);
  const size_t file =
      floats * sizeof(float) + leaves * TD_FOOTPRINT_CKPT_LEAF_META + json + ((size_t)64 << 10);
  return (file + inc - 1) / inc * inc;
}

static void host_total(td_footprint *f, int with_ckpt);

/* The job's host memory (see td_footprint). */
static void size_host(td_footprint *f, const td_plan *p, const set_size sets[2],
                      const size_t raw[2], size_t json) {
  const size_t fl = sizeof(float), np = p->n_params, steps = f->steps_per_epoch;
  const size_t set[2] = {sets[0].x + sets[0].y, sets[1].x + sets[1].y};
  f->host_data_bytes = set[0] + set[1];
  /* td_idx_load / td_hdf5_load, the training set first. */
  f->load_bytes = set[0] + raw[0];
  if (set[0] + set[1] + raw[1] > f->load_bytes)
    f->load_bytes = set[0] + set[1] + raw[1];
  if (!f->gpu) {
    /* Each replica's td_state_init and replica_data, through cpu_alloc. */
    const size_t per = 2 * cpu_take(np * fl) + cpu_take((p->optim.state_slots * np + 1) * fl) +
                       cpu_take(p->arena_floats * fl) + cpu_take(p->rec_bytes) +
                       cpu_take(sizeof(uint32_t)) + cpu_take(steps * TD_STEP_METRICS * fl);
    f->host_engine_bytes = (size_t)f->replicas * per;
  }
  /* td_trainer_init: the order, the offsets, the step table; replica_data:
   * each replica's metrics read back; td_trainer_run: the step points and
   * correct counts of an epoch; the plan's layers and views. */
  f->host_trainer_bytes =
      (size_t)f->train_n * sizeof(uint32_t) + f->shard * sizeof(uint32_t) + steps * p->rec_bytes +
      (size_t)f->replicas * steps * TD_STEP_METRICS * fl + steps * (sizeof(td_step_point) + fl) +
      p->n_nodes * sizeof(td_node) + p->n_views * sizeof(td_view);
  /* td_saver_start's snapshot buffer; the spec as JSON in the worker, the
   * saver and the TensorBoard text. */
  f->ckpt_bytes = (np * (1 + p->optim.state_slots) + (np == 0)) * fl + 3 * (json + 16);
  f->image_bytes = image_size(p, json);
  /* td_trainer_resume: ckpt_read's host copy of the floats (and the
   * leaves' table, one per view and slot); on the CPU the second state. */
  f->resume_host_bytes =
      (np * (1 + p->optim.state_slots) + 1) * fl +
      p->n_views * (1 + p->optim.state_slots) * (TD_VIEW_NAME_MAX + 80) +
      (f->gpu ? 0
              : 2 * cpu_take(np * fl) + cpu_take((p->optim.state_slots * np + 1) * fl) +
                    cpu_take(p->arena_floats * fl));
  /* td_state_init_params draws the parameters on the host (np floats),
   * then checkpoint.init_from is read (np + 1, and the leaves' table),
   * before the writer exists. */
  f->init_host_bytes = (np + 1) * fl + p->n_views * (TD_VIEW_NAME_MAX + 80);
  host_total(f, 1);
}

static size_t max2(size_t a, size_t b) { return a > b ? a : b; }

/* host_bytes from the parts: the largest of loading, initialising and
 * running (with the checkpoint writer's buffers when with_ckpt). */
static void host_total(td_footprint *f, int with_ckpt) {
  const size_t base = f->host_data_bytes + f->host_engine_bytes + f->host_trainer_bytes;
  size_t peak = max2(f->load_bytes, base + f->init_host_bytes);
  if (with_ckpt)
    peak = max2(peak, base + f->ckpt_bytes + max2(f->image_bytes, f->resume_host_bytes));
  f->host_bytes = peak + TD_FOOTPRINT_HOST_MARGIN;
}

void td_footprint_no_checkpoints(td_footprint *f) {
  f->ckpt_bytes = f->image_bytes = f->resume_host_bytes = 0;
  host_total(f, 0);
}

/* The two largest weight matrices of the plan, for messages. */
static void find_largest(td_footprint *f, const td_plan *p) {
  size_t best[2] = {0, 0};
  for (size_t i = 0; i < p->n_views; i++) {
    const td_view *v = &p->views[i];
    if (v->ndim != 2 || v->size <= best[1])
      continue;
    int at = v->size > best[0] ? 0 : 1;
    if (at == 0) {
      best[1] = best[0];
      f->largest[1] = f->largest[0];
    }
    best[at] = v->size;
    snprintf(f->largest[at].name, sizeof f->largest[at].name, "%s", v->name);
    f->largest[at].rows = v->shape[0];
    f->largest[at].cols = v->shape[1];
  }
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
  const unsigned flags = td_job_plan_flags(spec);
  int rc = td_plan_compile_flags(spec->model, spec->optimizer, f->shard, "cpu:0", flags, &p, err);
  if (rc)
    return rc;
  td_dataset train, test;
  size_t raw[2];
  if ((rc = read_shapes(spec, o, &train, &test, raw, err))) {
    td_plan_free(p);
    return rc;
  }
  /* DP-SGD's Poisson batches: the plan runs micro-batches. */
  const uint32_t rows = td_job_plan_rows(spec, train.n);
  if (rows != f->shard) {
    td_plan_free(p);
    p = NULL;
    f->shard = rows;
    if ((rc = td_plan_compile_flags(spec->model, spec->optimizer, f->shard, "cpu:0", flags, &p,
                                    err)))
      return rc;
  }
  /* The worker's copy of the spec as JSON (pbjson_emit, as worker_main). */
  char *json = pbjson_emit(&spec->base, PBJSON_PROTO_NAMES);
  if (!json) {
    td_plan_free(p);
    return td_errorf(err, TD_ENOMEM, "out of memory");
  }
  const size_t json_len = strlen(json);
  free(json);
  f->train_n = train.n;
  f->train_dim = train.dim;
  f->test_n = test.n;
  f->test_dim = test.dim;
  f->steps_per_epoch = f->batch ? f->train_n / f->batch : 0;
  f->total_steps = (int64_t)f->steps_per_epoch * spec->training->epochs;
  if (spec->training->max_steps && spec->training->max_steps < f->total_steps)
    f->total_steps = spec->training->max_steps;
  const set_size sets[2] = {set_size_of(&train), set_size_of(&test)};
  size_engine(f, p, sets);
  size_fixed(f, p);
  f->total_bytes = f->engine_bytes + f->fixed_bytes;
  size_host(f, p, sets, raw, json_len);
  find_largest(f, p);
  td_plan_free(p);
  return TD_OK;
}

const char *td_footprint_human(char *buf, size_t len, size_t b) {
  if (b >= ((size_t)1 << 40))
    snprintf(buf, len, "%.2f TiB", (double)b / (double)((size_t)1 << 40));
  else if (b >= ((size_t)1 << 30))
    snprintf(buf, len, "%.2f GiB", (double)b / (double)((size_t)1 << 30));
  else
    snprintf(buf, len, "%.1f MiB", (double)b / (double)((size_t)1 << 20));
  return buf;
}

#define human td_footprint_human

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

/* ---- admission ------------------------------------------------------------ */

/* One part of a job's host memory, for the refusal. */
typedef struct mem_part {
  size_t bytes;
  char what[256];
  int advice; /* what makes it smaller: ADV_* */
} mem_part;

enum { ADV_MODEL = 0, ADV_BATCH, ADV_DATA, ADV_STEPS, ADV_N };

static int part_cmp(const void *a, const void *b) {
  const mem_part *x = a, *y = b;
  return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : 0;
}

int td_footprint_admit(const td_footprint *f, const td_memory_limit *lim, size_t held,
                       td_error *err) {
  const size_t avail = lim->bytes > held ? lim->bytes - held : 0;
  if (f->host_bytes <= avail)
    return TD_OK;
  char need[32], limit[32], held_s[32], b[5][32];
  const size_t reps = (size_t)f->replicas;
  const size_t model = f->gpu ? 0 : reps * f->model_bytes;
  const size_t arena = f->gpu ? 0 : reps * f->arena_bytes;
  const size_t ckpt =
      f->ckpt_bytes +
      (f->image_bytes > f->resume_host_bytes ? f->image_bytes : f->resume_host_bytes);
  const size_t data = f->host_data_bytes;
  const size_t sum = model + arena + ckpt + data;
  const size_t rest = f->host_bytes > sum ? f->host_bytes - sum : 0;
  mem_part parts[5] = {{0}};
  size_t n = 0;
  if (model) {
    parts[n].bytes = model;
    snprintf(parts[n].what, sizeof parts[n].what,
             "%s for the parameters, gradients and optimizer state on %d CPU device%s",
             human(b[n], sizeof b[n], model), f->replicas, f->replicas == 1 ? "" : "s");
    parts[n++].advice = ADV_MODEL;
  }
  parts[n].bytes = ckpt;
  snprintf(parts[n].what, sizeof parts[n].what,
           "%s for checkpoints (the snapshot, the HDF5 file image or a resume's copy)",
           human(b[n], sizeof b[n], ckpt));
  parts[n++].advice = ADV_MODEL;
  if (arena) {
    parts[n].bytes = arena;
    snprintf(parts[n].what, sizeof parts[n].what, "%s of activations for %u examples per device",
             human(b[n], sizeof b[n], arena), f->shard);
    parts[n++].advice = ADV_BATCH;
  }
  parts[n].bytes = data;
  snprintf(parts[n].what, sizeof parts[n].what,
           "%s for the training and test sets (%u + %u examples)", human(b[n], sizeof b[n], data),
           f->train_n, f->test_n);
  parts[n++].advice = ADV_DATA;
  parts[n].bytes = rest;
  snprintf(parts[n].what, sizeof parts[n].what,
           "%s for the trainer's tables, metrics and libraries", human(b[n], sizeof b[n], rest));
  parts[n++].advice = ADV_STEPS;
  qsort(parts, n, sizeof parts[0], part_cmp);

  char list[700] = "";
  size_t at = 0;
  for (size_t i = 0; i < n && at < sizeof list; i++)
    at += (size_t)snprintf(list + at, sizeof list - at, "%s%s", i ? ", " : "", parts[i].what);
  /* What to make smaller: the advice of the two largest parts. */
  char model_adv[200];
  if (f->largest[0].name[0] && f->largest[1].name[0])
    snprintf(model_adv, sizeof model_adv,
             "the model (fewer or narrower layers; the largest are %s (%u, %u) and %s (%u, %u))",
             f->largest[0].name, f->largest[0].rows, f->largest[0].cols, f->largest[1].name,
             f->largest[1].rows, f->largest[1].cols);
  else
    snprintf(model_adv, sizeof model_adv,
             "the model (fewer or narrower layers; the largest is %s (%u, %u))", f->largest[0].name,
             f->largest[0].rows, f->largest[0].cols);
  const char *adv[ADV_N] = {model_adv, "training.batch_size",
                            "the datasets (dataset.train_limit, dataset.test_limit)",
                            "the steps per epoch (a larger training.batch_size)"};
  int used[ADV_N] = {0};
  char advice[300] = "";
  size_t k = 0;
  for (size_t i = 0; i < n && k < 2; i++) {
    if (used[parts[i].advice] || !parts[i].bytes)
      continue;
    used[parts[i].advice] = 1;
    snprintf(advice + strlen(advice), sizeof advice - strlen(advice), "%s%s", k ? " or " : "",
             adv[parts[i].advice]);
    k++;
  }
  char held_note[96] = "";
  if (held)
    snprintf(held_note, sizeof held_note, ", of which running jobs hold %s",
             human(held_s, sizeof held_s, held));
  return td_errorf(err, TD_ENOMEM,
                   "memory: the job needs %s and the daemon's jobs may use %s (%s)%s: %s; make "
                   "%s smaller, or raise memory_limit_bytes in the daemon's config",
                   human(need, sizeof need, f->host_bytes), human(limit, sizeof limit, lim->bytes),
                   lim->source, held_note, list, advice);
}

/* ---- the memory the daemon may use --------------------------------------- */

/* The first len-1 bytes of path, NUL-terminated; -1 when unreadable. */
static long slurp(const char *path, char *buf, size_t len) {
  FILE *fp = fopen(path, "re");
  if (!fp)
    return -1;
  size_t got = fread(buf, 1, len - 1, fp);
  fclose(fp);
  buf[got] = 0;
  return (long)got;
}

/* A "Key:   123 kB" line of /proc/meminfo or /proc/self/status, in bytes. */
static int kb_field(const char *path, const char *key, uint64_t *out) {
  char buf[8192];
  if (slurp(path, buf, sizeof buf) < 0)
    return 0;
  const size_t k = strlen(key);
  for (const char *line = buf; line && *line;
       line = strchr(line, '\n'), line = line ? line + 1 : NULL)
    if (strncmp(line, key, k) == 0) {
      char *end;
      errno = 0;
      unsigned long long v = strtoull(line + k, &end, 10);
      if (errno || end == line + k)
        return 0;
      *out = (uint64_t)v * 1024;
      return 1;
    }
  return 0;
}

/* A cgroup limit file: a number of bytes, or "max" (none). v1 says "none"
 * with a number near 2^63. */
static int limit_file(const char *path, uint64_t *out) {
  char buf[64];
  if (slurp(path, buf, sizeof buf) <= 0 || strncmp(buf, "max", 3) == 0)
    return 0;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(buf, &end, 10);
  if (errno || end == buf || v >= (1ull << 62))
    return 0;
  *out = (uint64_t)v;
  return 1;
}

/* The smallest limit in the cgroup at rel (under dir, in file `name`) and
 * its ancestors; the file that sets it in `where`. */
static int cgroup_walk(const char *dir, const char *rel, const char *name, uint64_t *out,
                       char *where, size_t where_len) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s", rel) >= (int)sizeof path)
    return 0;
  int found = 0;
  for (;;) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
      path[--len] = 0;
    char file[4400];
    snprintf(file, sizeof file, "%s%s/%s", dir, strcmp(path, "/") == 0 ? "" : path, name);
    uint64_t v;
    if (limit_file(file, &v) && (!found || v < *out)) {
      *out = v;
      snprintf(where, where_len, "%s", file);
      found = 1;
    }
    char *slash = strrchr(path, '/');
    if (!slash || (slash == path && !path[1]))
      break;
    slash[slash == path ? 1 : 0] = 0;
  }
  return found;
}

/* The daemon's cgroup memory limit from /proc/self/cgroup: v2 ("0::PATH",
 * memory.max, on a unified or a hybrid mount) or v1 (a "memory" controller,
 * memory.limit_in_bytes). */
static int cgroup_limit(const char *proc_cgroup, const char *root, uint64_t *out, char *where,
                        size_t where_len) {
  char buf[8192];
  if (slurp(proc_cgroup, buf, sizeof buf) < 0)
    return 0;
  int found = 0;
  for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
    char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2)
      continue;
    *c2 = 0;
    const char *ctrl = c1 + 1, *rel = c2 + 1;
    uint64_t v;
    char w[4400];
    char dir[4200];
    if (!*ctrl) {
      for (int k = 0; k < 2; k++) {
        snprintf(dir, sizeof dir, "%s%s", root, k ? "/unified" : "");
        if (cgroup_walk(dir, rel, "memory.max", &v, w, sizeof w) && (!found || v < *out)) {
          *out = v;
          snprintf(where, where_len, "%s", w);
          found = 1;
        }
      }
    } else {
      /* A comma-separated list of v1 controllers. */
      int memory = 0;
      for (const char *p = ctrl; *p;) {
        size_t n = strcspn(p, ",");
        memory |= n == 6 && strncmp(p, "memory", 6) == 0;
        p += n + (p[n] == ',');
      }
      snprintf(dir, sizeof dir, "%s/memory", root);
      if (memory && cgroup_walk(dir, rel, "memory.limit_in_bytes", &v, w, sizeof w) &&
          (!found || v < *out)) {
        *out = v;
        snprintf(where, where_len, "%s", w);
        found = 1;
      }
    }
  }
  return found;
}

int td_memory_limit_from(uint64_t configured, const char *proc_cgroup, const char *cgroup_root,
                         const char *meminfo, const char *status, td_memory_limit *out,
                         td_error *err) {
  memset(out, 0, sizeof *out);
  if (configured) {
    out->bytes = (size_t)configured;
    snprintf(out->source, sizeof out->source, "memory_limit_bytes in the config");
    return TD_OK;
  }
  uint64_t avail = 0, cg = 0, rss = 0;
  char where[4400] = "";
  const int have_avail = kb_field(meminfo, "MemAvailable:", &avail);
  const int have_cg = cgroup_limit(proc_cgroup, cgroup_root, &cg, where, sizeof where);
  kb_field(status, "VmRSS:", &rss);
  if (have_cg) {
    const uint64_t usable = cg > rss ? cg - rss : 0;
    if (!have_avail || usable <= avail) {
      char l[32], r[32];
      out->bytes = (size_t)usable;
      snprintf(out->source, sizeof out->source,
               "the cgroup limit of %s in %.120s less the %s the daemon holds",
               human(l, sizeof l, (size_t)cg), where, human(r, sizeof r, (size_t)rss));
      return TD_OK;
    }
  }
  if (have_avail) {
    out->bytes = (size_t)avail;
    snprintf(out->source, sizeof out->source, "the machine's MemAvailable (%.100s) at start",
             meminfo);
    return TD_OK;
  }
  return td_errorf(err, TD_EUNSUPPORTED,
                   "cannot tell how much memory jobs may use (no cgroup limit, and no "
                   "MemAvailable in %s); set memory_limit_bytes in the config",
                   meminfo);
}

int td_memory_limit_detect(uint64_t configured, td_memory_limit *out, td_error *err) {
  return td_memory_limit_from(configured, "/proc/self/cgroup", "/sys/fs/cgroup", "/proc/meminfo",
                              "/proc/self/status", out, err);
}
