/* layer_ref_tool: one training step's forward, loss and backward of a job's
 * model on given parameters and inputs, written out for comparison with a
 * reference outside traind (tests/e2e/layers_jax.py checks it against JAX
 * and Flax).
 *
 * Usage: layer_ref_tool JOB IN.h5 OUT.h5
 *   JOB     a job file (YAML or JSON, as `traind run` takes); only its model
 *           and optimizer are used.
 *   IN.h5   /params/<layer>/<leaf> (float32 or float64, traind's names and
 *           shapes), /x (float32, (B, ...): B examples of the model's input
 *           values, row-major, NHWC for images; token ids, as floats, for a
 *           model that starts with an embed layer) and /labels (integers,
 *           (B), or (B, T) for a model whose output is a sequence of T
 *           positions, a label for each).
 *   OUT.h5  written: /output (B, outputs), or (B, T, outputs) for a
 *           sequence, the model's output, /loss_sum (float32 scalar) the
 *           loss summed over the batch (and its positions), /grads/<view>
 *           the gradient of the mean loss for every parameter in its shape,
 *           /stats/<view> the batch norms' running statistics after the
 *           training forward pass (they start at mean 0, variance 1).
 *           A job with training.dp_sgd runs DP-SGD's backward instead:
 *           /grads is then the sum over the batch of each example's
 *           gradient clipped to l2_norm_clip, divided by B (no noise),
 *           and /pe_norms (float64, (B)) each example's gradient norm
 *           before clipping.
 *
 * The model is compiled for a batch of B (the rows of /x) on one CPU
 * device with one thread; the forward pass runs in training mode (batch
 * norms use and update batch statistics). Exits 0 on success, 1 with a
 * message on any error, 2 on bad usage. */
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "h5safe.h"
#include "jobspec.h"
#include "plan.h"
#include "prng.h"

/* The tool's inputs as read from IN.h5: host memory, owned here. */
typedef struct ref_input {
  uint32_t rows;       /* B */
  size_t values;       /* values per example (the product of /x's other dimensions) */
  uint32_t label_cols; /* labels per example: 1, or a sequence's positions */
  float *x;            /* (B, values) */
  int32_t *labels;     /* (B, label_cols) */
} ref_input;

static int read_dataset(hid_t fid, const char *path, const char *name, hid_t mtype, int min_rank,
                        hsize_t dims[H5S_MAX_RANK], int *rank, void **data, size_t elem,
                        td_error *err) {
  hid_t d = -1, sp = -1;
  int rc = td_h5_dopen(fid, path, name, name + 1, &d, err);
  if (rc)
    return rc;
  sp = H5Dget_space(d);
  *rank = sp < 0 ? -1 : H5Sget_simple_extent_dims(sp, dims, NULL);
  if (*rank < min_rank) {
    rc = td_errorf(err, TD_EDATA, "'%s': %s must have at least %d dimension%s (got %d)", path, name,
                   min_rank, min_rank == 1 ? "" : "s", *rank);
    goto done;
  }
  size_t n = 1;
  for (int i = 0; i < *rank; i++)
    n *= (size_t)dims[i];
  *data = malloc((n ? n : 1) * elem);
  if (!*data) {
    rc = td_errorf(err, TD_ENOMEM, "'%s': out of memory for %s (%zu values)", path, name, n);
    goto done;
  }
  if (H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, *data) < 0) {
    char detail[TD_H5_DETAIL];
    rc = td_errorf(err, TD_EDATA, "'%s': reading %s failed (%s)", path, name, td_h5_detail(detail));
  }
done:
  if (sp >= 0)
    H5Sclose(sp);
  H5Dclose(d);
  return rc;
}

/* Reads /x and /labels of path; their first dimensions must agree, and
 * /labels is (B) or (B, T). */
static int read_input(const char *path, ref_input *in, td_error *err) {
  td_h5_quiet q = td_h5_silence();
  hid_t fid = -1;
  int rc = td_h5_open(path, "input file", &fid, err);
  hsize_t xd[H5S_MAX_RANK], ld[H5S_MAX_RANK];
  int xr = 0, lr = 0;
  if (!rc)
    rc = read_dataset(fid, path, "/x", H5T_NATIVE_FLOAT, 2, xd, &xr, (void **)&in->x, sizeof(float),
                      err);
  if (!rc)
    rc = read_dataset(fid, path, "/labels", H5T_NATIVE_INT32, 1, ld, &lr, (void **)&in->labels,
                      sizeof(int32_t), err);
  if (!rc &&
      (lr < 1 || lr > 2 || ld[0] != xd[0] || (lr == 2 && (ld[1] == 0 || ld[1] > UINT32_MAX))))
    rc = td_errorf(err, TD_EDATA,
                   "'%s': /labels must have shape (%llu), or (%llu, T) for a sequence, like "
                   "/x's rows",
                   path, (unsigned long long)xd[0], (unsigned long long)xd[0]);
  if (!rc && (xd[0] == 0 || xd[0] > UINT32_MAX))
    rc = td_errorf(err, TD_EDATA, "'%s': /x must have between 1 and %u rows", path, UINT32_MAX);
  if (!rc) {
    in->rows = (uint32_t)xd[0];
    in->label_cols = lr == 2 ? (uint32_t)ld[1] : 1;
    in->values = 1;
    for (int i = 1; i < xr; i++)
      in->values *= (size_t)xd[i];
  }
  if (fid >= 0)
    H5Fclose(fid);
  td_h5_restore(q);
  return rc;
}

/* One float32 dataset at name (intermediate groups made) of shape dims. */
static int write_floats(hid_t fid, hid_t lcpl, const char *name, int rank, const hsize_t *dims,
                        const float *data) {
  hid_t sp = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
  if (sp < 0)
    return -1;
  hid_t d = H5Dcreate2(fid, name, H5T_IEEE_F32LE, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  int ok = d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
  if (d >= 0)
    ok &= H5Dclose(d) >= 0;
  H5Sclose(sp);
  return ok ? 0 : -1;
}

static int write_views(hid_t fid, hid_t lcpl, const char *group, const td_view *views, size_t n,
                       const float *buf) {
  for (size_t v = 0; v < n; v++) {
    char name[TD_VIEW_NAME_MAX + 16];
    hsize_t dims[TD_MAX_RANK];
    for (uint32_t i = 0; i < views[v].ndim; i++)
      dims[i] = views[v].shape[i];
    snprintf(name, sizeof name, "/%s/%s", group, views[v].name);
    if (write_floats(fid, lcpl, name, (int)views[v].ndim, dims, buf + views[v].offset))
      return -1;
  }
  return 0;
}

/* The step's results, downloaded to host memory by the caller. */
typedef struct ref_output {
  float *output; /* (B, positions, out_dim) */
  float loss_sum;
  float *grads;     /* (n_params) */
  float *stats;     /* (n_stats) */
  double *pe_norms; /* DP-SGD: (B) */
} ref_output;

static int write_output(const char *path, const td_plan *p, const ref_output *o, td_error *err) {
  td_h5_quiet q = td_h5_silence();
  hid_t fid = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  /* (B, out_dim), or (B, T, out_dim) for a sequence. */
  const int seq = p->positions > 1;
  hsize_t od[3] = {p->batch, seq ? p->positions : p->out_dim, p->out_dim};
  int bad = fid < 0 || lcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
            write_floats(fid, lcpl, "/output", seq ? 3 : 2, od, o->output) ||
            write_floats(fid, lcpl, "/loss_sum", 0, NULL, &o->loss_sum) ||
            write_views(fid, lcpl, "grads", p->views, p->n_views, o->grads) ||
            write_views(fid, lcpl, "stats", p->stat_views, p->n_stat_views, o->stats);
  if (!bad && o->pe_norms) {
    hsize_t nd[1] = {p->batch};
    hid_t sp = H5Screate_simple(1, nd, NULL);
    hid_t d =
        sp < 0 ? -1
               : H5Dcreate2(fid, "/pe_norms", H5T_IEEE_F64LE, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    bad = d < 0 || H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, o->pe_norms) < 0;
    if (d >= 0)
      H5Dclose(d);
    if (sp >= 0)
      H5Sclose(sp);
  }
  if (lcpl >= 0)
    H5Pclose(lcpl);
  if (fid >= 0 && H5Fclose(fid) < 0)
    bad = 1;
  int rc = TD_OK;
  if (bad) {
    char detail[TD_H5_DETAIL];
    rc =
        td_errorf(err, TD_EIO, "'%s': writing the results failed (%s)", path, td_h5_detail(detail));
  }
  td_h5_restore(q);
  return rc;
}

/* Forward (training), loss with its gradient, backward; then the results
 * downloaded into o. */
static int run_step(td_state *st, const ref_input *in, double clip, ref_output *o, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  const size_t nk = 2 * (size_t)(p->n_keys ? p->n_keys : 1);
  uint32_t *host_keys = calloc(nk, sizeof *host_keys);
  uint32_t *keys = ops->alloc(st->be, nk * sizeof *keys);
  int rc = TD_OK;
  if (!host_keys || !keys) {
    rc = td_errorf(err, TD_ENOMEM, "out of memory for the dropout keys");
    goto done;
  }
  td_plan_dropout_keys(p, td_prng_key(0), host_keys);
  if (ops->upload(st->be, keys, host_keys, nk * sizeof *keys) ||
      ops->upload(st->be, td_state_at(st, p->in_off), in->x,
                  (size_t)in->rows * in->values * sizeof(float)) ||
      ops->upload(st->be, td_state_at(st, p->labels_off), in->labels,
                  (size_t)in->rows * in->label_cols * sizeof(int32_t))) {
    rc = td_errorf(err, TD_EIO, "uploading the inputs failed");
    goto done;
  }
  /* The output is read before backward, which may reuse its memory (the
   * arena is planned by liveness). */
  if ((rc = td_state_forward(st, (int)in->rows, 1, keys, 0, err)))
    goto done;
  if (ops->download(st->be, o->output, td_state_at(st, p->out_off),
                    (size_t)p->batch * p->positions * p->out_dim * sizeof(float))) {
    rc = td_errorf(err, TD_EIO, "downloading the output failed");
    goto done;
  }
  const double scale = 1.0 / p->batch;
  if ((rc = td_state_loss(st, (int)in->rows, 1, err)) ||
      (rc = p->per_example ? td_state_backward_dp(st, (int)in->rows, scale, clip, err)
                           : td_state_backward(st, err)))
    goto done;
  if (p->per_example) {
    if (ops->download(st->be, o->pe_norms, td_state_at(st, p->pe_acc_off),
                      (size_t)p->batch * sizeof(double))) {
      rc = td_errorf(err, TD_EIO, "downloading the norms failed");
      goto done;
    }
    for (uint32_t i = 0; i < p->batch; i++)
      o->pe_norms[i] = sqrt(o->pe_norms[i]) / scale;
  }
  float scalars[TD_PLAN_SCALARS];
  if (ops->download(st->be, scalars, td_state_at(st, p->scalars_off), sizeof scalars) ||
      ops->download(st->be, o->grads, st->grads, p->n_params * sizeof(float)) ||
      (p->n_stats && ops->download(st->be, o->stats, st->stats, p->n_stats * sizeof(float)))) {
    rc = td_errorf(err, TD_EIO, "downloading the results failed");
    goto done;
  }
  o->loss_sum = scalars[TD_SC_LOSS_SUM];
done:
  if (keys)
    ops->release(st->be, keys);
  free(host_keys);
  return rc;
}

static int run(const char *job, const char *in_path, const char *out_path, td_error *err) {
  Traind__V1__JobSpec *spec = NULL;
  td_plan *p = NULL;
  td_backend *be = NULL;
  td_state st;
  int have_state = 0;
  ref_input in = {0};
  ref_output o = {0};
  int rc = td_jobspec_load(job, &spec, err);
  if (!rc)
    rc = read_input(in_path, &in, err);
  const Traind__V1__DpSgd *dp = spec && spec->training ? spec->training->dp_sgd : NULL;
  if (!rc)
    rc = td_plan_compile_flags(spec->model, spec->optimizer, in.rows, "cpu:0",
                               dp ? TD_PLAN_PER_EXAMPLE : 0, &p, err);
  if (!rc && in.values != p->in_dim)
    rc = td_errorf(err, TD_EDATA, "'%s': /x has %zu values per example; the model takes %u",
                   in_path, in.values, p->in_dim);
  if (!rc && in.label_cols != p->positions && p->positions == 1)
    rc = td_errorf(err, TD_EDATA,
                   "'%s': /labels has %u labels per example, but the model makes one prediction "
                   "per example; give /labels the shape (%u)",
                   in_path, in.label_cols, in.rows);
  else if (!rc && in.label_cols != p->positions)
    rc = td_errorf(err, TD_EDATA,
                   "'%s': /labels has %u label%s per example, but the model's output is a "
                   "sequence of %u positions; give /labels the shape (%u, %u)",
                   in_path, in.label_cols, in.label_cols == 1 ? "" : "s", p->positions, in.rows,
                   p->positions);
  /* Token ids: an id outside the vocabulary would embed as zeros. */
  for (size_t k = 0; !rc && p->vocab && k < (size_t)in.rows * in.values; k++)
    if (!(in.x[k] >= 0.0f && in.x[k] < (float)p->vocab && in.x[k] == (float)(uint32_t)in.x[k]))
      rc = td_errorf(err, TD_EDATA,
                     "'%s': /x[%zu] is %g (row-major); token ids must be integers in [0, %u), "
                     "the embed layer's num_embeddings",
                     in_path, k, (double)in.x[k], p->vocab);
  const size_t n_labels = (size_t)in.rows * in.label_cols;
  for (size_t r = 0; !rc && p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY && r < n_labels; r++)
    if (in.labels[r] < 0 || (uint32_t)in.labels[r] >= p->out_dim)
      rc = td_errorf(err, TD_EDATA,
                     "'%s': /labels[%zu] is %d (row-major); labels must be in [0, %u)", in_path, r,
                     in.labels[r], p->out_dim);
  if (!rc)
    rc = td_cpu_backend_create(&be, 1, err);
  if (!rc && !(rc = td_state_init(&st, p, be, err)))
    have_state = 1;
  /* Initial values first (running statistics at 0 and 1), then the file's
   * parameters over them. */
  if (!rc)
    rc = td_state_init_params(&st, td_prng_key(0), err);
  if (!rc)
    rc = td_ckpt_load_params(in_path, &st, err);
  if (!rc) {
    o.output = malloc(((size_t)p->batch * p->positions * p->out_dim + 1) * sizeof(float));
    o.grads = malloc((p->n_params + 1) * sizeof(float));
    o.stats = malloc((p->n_stats + 1) * sizeof(float));
    o.pe_norms = dp ? malloc(((size_t)p->batch + 1) * sizeof(double)) : NULL;
    if (!o.output || !o.grads || !o.stats || (dp && !o.pe_norms))
      rc = td_errorf(err, TD_ENOMEM, "out of memory for the results");
  }
  if (!rc)
    rc = run_step(&st, &in, dp ? dp->l2_norm_clip : 0.0, &o, err);
  if (!rc)
    rc = write_output(out_path, p, &o, err);
  free(o.output);
  free(o.grads);
  free(o.stats);
  free(o.pe_norms);
  if (have_state)
    td_state_free(&st);
  td_backend_destroy(be);
  td_plan_free(p);
  td_jobspec_free(spec);
  free(in.x);
  free(in.labels);
  return rc;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s JOB IN.h5 OUT.h5\n", argv[0]);
    return 2;
  }
  td_error err = {0};
  if (run(argv[1], argv[2], argv[3], &err)) {
    fprintf(stderr, "layer_ref_tool: %s\n", err.msg);
    return 1;
  }
  return 0;
}
