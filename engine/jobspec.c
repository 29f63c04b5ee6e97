/* Job specs: one table of bounds and required parts, applied generically to
 * the message tree by pbjson_validate. */
#include "jobspec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbjson.h"

#define REQ(msg, field) \
  { "traind.v1." msg, field, PBJSON_RULE_REQUIRED, 0, NULL }
/* A required number: zero is the unset value, so "required" reads as a bound. */
#define POS(msg, field) \
  { "traind.v1." msg, field, PBJSON_RULE_REQUIRED, 0, "must be > 0" }
#define ONEOF(msg) \
  { "traind.v1." msg, NULL, PBJSON_RULE_ONEOF_REQUIRED, 0, NULL }
#define MIN(msg, field, v) \
  { "traind.v1." msg, field, PBJSON_RULE_MIN, v, NULL }
#define MAX(msg, field, v) \
  { "traind.v1." msg, field, PBJSON_RULE_MAX, v, NULL }
#define GT(msg, field, v) \
  { "traind.v1." msg, field, PBJSON_RULE_GT, v, NULL }
#define LT(msg, field, v) \
  { "traind.v1." msg, field, PBJSON_RULE_LT, v, NULL }

/* Every bound a JobSpec must satisfy that the type system does not express.
 * Cross-field checks (shapes against data, schedule lengths) happen at
 * compile time, where the facts are known. */
static const pbjson_rule job_rules[] = {
    /* Every enum a declared value, every float finite. */
    {NULL, NULL, PBJSON_RULE_STRICT, 0, NULL},

    REQ("JobSpec", "model"),
    REQ("JobSpec", "optimizer"),
    REQ("JobSpec", "dataset"),
    REQ("JobSpec", "training"),

    REQ("Model", "input_shape"),
    GT("Model", "input_shape", 0),
    REQ("Model", "layers"),
    REQ("Model", "loss"),
    ONEOF("Layer"),
    POS("Dense", "features"),
    MAX("Dense", "features", 1 << 20),
    MIN("Dropout", "rate", 0),
    LT("Dropout", "rate", 1),

    REQ("Optimizer", "chain"),
    ONEOF("Transform"),
    REQ("Sgd", "learning_rate"),
    MIN("Sgd", "momentum", 0),
    REQ("Adam", "learning_rate"),
    MIN("Adam", "b1", 0),
    LT("Adam", "b1", 1),
    MIN("Adam", "b2", 0),
    LT("Adam", "b2", 1),
    MIN("Adam", "eps", 0),
    MIN("Adam", "eps_root", 0),
    REQ("AdamW", "learning_rate"),
    MIN("AdamW", "b1", 0),
    LT("AdamW", "b1", 1),
    MIN("AdamW", "b2", 0),
    LT("AdamW", "b2", 1),
    MIN("AdamW", "eps", 0),
    MIN("AdamW", "eps_root", 0),
    MIN("AdamW", "weight_decay", 0),
    MIN("ScaleByAdam", "b1", 0),
    LT("ScaleByAdam", "b1", 1),
    MIN("ScaleByAdam", "b2", 0),
    LT("ScaleByAdam", "b2", 1),
    MIN("ScaleByAdam", "eps", 0),
    MIN("ScaleByAdam", "eps_root", 0),
    POS("ClipByGlobalNorm", "max_norm"),
    GT("ClipByGlobalNorm", "max_norm", 0),
    MIN("AddDecayedWeights", "weight_decay", 0),
    REQ("ScaleBySchedule", "schedule"),

    ONEOF("Schedule"),
    POS("WarmupCosineDecay", "decay_steps"),
    GT("WarmupCosineDecay", "exponent", 0),
    POS("ExponentialDecay", "transition_steps"),
    GT("ExponentialDecay", "decay_rate", 0),
    MIN("Boundary", "scale", 0),
    POS("CosineDecay", "decay_steps"),
    MIN("CosineDecay", "alpha", 0),
    MAX("CosineDecay", "alpha", 1),
    GT("CosineDecay", "exponent", 0),

    ONEOF("Dataset"),
    REQ("IdxDataset", "dir"),
    REQ("Hdf5Dataset", "train_file"),

    POS("Training", "epochs"),
    MAX("Training", "epochs", 1000000),
    POS("Training", "batch_size"),
    MAX("Training", "batch_size", 1 << 20),
    MAX("Devices", "count", 4096),
};

/* The features of layer i's first input (see plan.c's read_layers: named
 * inputs, else the layer before; "input" the model's), the named layer
 * found among those before it; -1 when it is none of them (the compile
 * says why). names[k] is layer k's name (a dense layer's default
 * "layerN" included). */
static double input_features(const Traind__V1__Model *m, char (*names)[32], const double *features,
                             size_t i, double in) {
  const Traind__V1__Layer *l = m->layers[i];
  if (l->n_inputs == 0)
    return i ? features[i - 1] : in;
  const char *want = l->inputs[0];
  if (strcmp(want, "input") == 0)
    return in;
  for (size_t k = 0; k < i; k++) {
    const Traind__V1__Layer *o = m->layers[k];
    const char *name = o->name && *o->name ? o->name : names[k];
    if (strcmp(name, want) == 0)
      return features[k];
  }
  return -1.0;
}

/* The model's size against TD_JOB_MAX_*: one pass over the layers,
 * following the features from the input shape through each layer's first
 * input (after pbjson_validate, so every layer has its kind). A layer
 * whose input is later in the list or unknown counts the widest features
 * of any layer (no layer is wider: only dense layers change the width),
 * so that the figures are never below the model's. Counted in double:
 * nothing overflows. */
static int check_model_size(const Traind__V1__JobSpec *spec, td_error *err) {
  const Traind__V1__Model *m = spec->model;
  double in = 1.0, params = 0.0, weights = 0.0, widest = 0.0;
  for (size_t i = 0; i < m->n_input_shape; i++)
    in *= m->input_shape[i];
  widest = in;
  const size_t n = m->n_layers ? m->n_layers : 1;
  double *features = malloc(n * sizeof *features);
  char(*names)[32] = calloc(n, sizeof *names);
  if (!features || !names) {
    free(features);
    free(names);
    return td_errorf(err, TD_ENOMEM, "out of memory");
  }
  uint32_t dense = 0;
  for (size_t i = 0; i < m->n_layers; i++)
    if (m->layers[i]->kind_case == TRAIND__V1__LAYER__KIND_DENSE)
      snprintf(names[i], sizeof names[i], "layer%u", ++dense);
  for (size_t i = 0; i < m->n_layers; i++) {
    const Traind__V1__Layer *l = m->layers[i];
    double f = input_features(m, names, features, i, in);
    if (f < 0)
      f = widest;
    if (l->kind_case == TRAIND__V1__LAYER__KIND_DENSE) {
      const Traind__V1__Dense *d = l->dense;
      const double out = d->features;
      weights += f * out;
      params += f * out + (!d->use_bias || d->use_bias->value ? out : 0.0);
      f = out;
    }
    features[i] = f;
  }
  free(features);
  free(names);
  if (params > (double)TD_JOB_MAX_PARAMS)
    return td_errorf(err, TD_EINVAL,
                     "model: %.0f parameters; a model may have at most %llu (2^31, see "
                     "docs/job-spec.md, Limits): make the dense layers narrower or fewer",
                     params, (unsigned long long)TD_JOB_MAX_PARAMS);
  const double flops = 6.0 * spec->training->batch_size * weights;
  if (flops > TD_JOB_MAX_STEP_FLOPS)
    return td_errorf(err, TD_EINVAL,
                     "model: a training step takes %.3g floating-point operations (6 x "
                     "training.batch_size %u x %.0f weights); at most %.0e (see "
                     "docs/job-spec.md, Limits): make the batch or the dense layers smaller",
                     flops, spec->training->batch_size, weights, TD_JOB_MAX_STEP_FLOPS);
  return TD_OK;
}

int td_jobspec_validate(const Traind__V1__JobSpec *spec, td_error *err) {
  /* The layer count first: it bounds the work of everything after. */
  if (spec->model && spec->model->n_layers > TD_JOB_MAX_LAYERS)
    return td_errorf(err, TD_EINVAL,
                     "model.layers: %zu layers; a model may have at most %d (see "
                     "docs/job-spec.md, Limits)",
                     spec->model->n_layers, TD_JOB_MAX_LAYERS);
  int rc = pbjson_validate(&spec->base, job_rules, sizeof job_rules / sizeof job_rules[0], err);
  if (rc)
    return rc;
  return check_model_size(spec, err);
}

static int finish(ProtobufCMessage *m, int rc, Traind__V1__JobSpec **out, td_error *err) {
  *out = NULL;
  if (rc)
    return rc;
  Traind__V1__JobSpec *spec = (Traind__V1__JobSpec *)m;
  rc = td_jobspec_check_size(spec, err);
  if (!rc)
    rc = td_jobspec_validate(spec, err);
  if (rc) {
    td_jobspec_free(spec);
    return rc;
  }
  *out = spec;
  return TD_OK;
}

int td_jobspec_load(const char *path, Traind__V1__JobSpec **out, td_error *err) {
  ProtobufCMessage *m = NULL;
  /* Parse errors already start with the path; validation errors get it. */
  int rc = pbjson_parse_file(&traind__v1__job_spec__descriptor, path, &m, err);
  if (rc)
    return finish(m, rc, out, err);
  rc = finish(m, rc, out, err);
  if (rc)
    td_error_prefix(err, "%s", path);
  return rc;
}

int td_jobspec_parse(const char *text, size_t len, Traind__V1__JobSpec **out, td_error *err) {
  ProtobufCMessage *m = NULL;
  int rc = pbjson_parse(&traind__v1__job_spec__descriptor, text, len, &m, err);
  return finish(m, rc, out, err);
}

void td_jobspec_free(Traind__V1__JobSpec *spec) {
  if (spec)
    protobuf_c_message_free_unpacked(&spec->base, NULL);
}

int td_job_name_check(const char *field, const char *name, td_error *err) {
  size_t n = name ? strlen(name) : 0;
  if (n > TD_JOB_NAME_MAX_BYTES)
    return td_errorf(err, TD_EINVAL, "%s: %zu bytes; a job name has at most %zu bytes", field, n,
                     TD_JOB_NAME_MAX_BYTES);
  return TD_OK;
}

int td_jobspec_check_size(const Traind__V1__JobSpec *spec, td_error *err) {
  size_t packed = protobuf_c_message_get_packed_size(&spec->base);
  if (packed > TD_JOBSPEC_MAX_BYTES)
    return td_errorf(err, TD_EINVAL,
                     "spec: the JobSpec is %zu bytes packed; the limit is %zu bytes (1 MiB): "
                     "make it smaller",
                     packed, TD_JOBSPEC_MAX_BYTES);
  return td_job_name_check("name", spec->name, err);
}
