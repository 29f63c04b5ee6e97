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

/* A layer's name and its index, for the size check's lookups. */
typedef struct named_layer {
  const char *name;
  size_t index;
} named_layer;

static int named_cmp(const void *a, const void *b) {
  return strcmp(((const named_layer *)a)->name, ((const named_layer *)b)->name);
}

/* The index of the layer input k of layer i reads (see plan.c's
 * read_layers: named inputs, else the layer before), -1 for the model's
 * input, -2 for a name no layer has (the compile says why). */
static long input_of(const Traind__V1__Model *m, const named_layer *byname, size_t n_named,
                     size_t i, size_t k) {
  const Traind__V1__Layer *l = m->layers[i];
  if (l->n_inputs == 0)
    return (long)i - 1;
  if (strcmp(l->inputs[k], "input") == 0)
    return -1;
  named_layer key = {l->inputs[k], 0};
  const named_layer *hit = bsearch(&key, byname, n_named, sizeof *byname, named_cmp);
  return hit ? (long)hit->index : -2;
}

/* The model's size against TD_JOB_MAX_*, before anything is compiled
 * (after pbjson_validate, so every layer has its kind): each layer's
 * values per example follow from its inputs (a concatenate's are their
 * sum, a dense layer's its features, every other layer's its first
 * input's), evaluated depth first in time linear in the model. An input
 * that names nothing, or one that closes a cycle, counts as the widest of
 * the input and the dense layers; the compile refuses those models
 * anyway. The width after a conv or pooling layer depends on its geometry
 * (kernel, strides, padding, features), which only the compile's shape
 * inference knows: it is unknown here (negative), and so are the weights
 * of a dense layer that reads it; the compile counts every parameter and
 * FLOP exactly against the same limits. Counted in double: nothing
 * overflows. */
static int check_model_size(const Traind__V1__JobSpec *spec, td_error *err) {
  const Traind__V1__Model *m = spec->model;
  double in = 1.0, params = 0.0, weights = 0.0, widest = 0.0;
  for (size_t i = 0; i < m->n_input_shape; i++)
    in *= m->input_shape[i];
  widest = in;
  for (size_t i = 0; i < m->n_layers; i++)
    if (m->layers[i]->kind_case == TRAIND__V1__LAYER__KIND_DENSE &&
        m->layers[i]->dense->features > widest)
      widest = m->layers[i]->dense->features;
  const size_t n = m->n_layers ? m->n_layers : 1;
  double *features = malloc(n * sizeof *features);
  char(*dflt)[32] = calloc(n, sizeof *dflt);
  named_layer *byname = malloc(n * sizeof *byname);
  unsigned char *state = calloc(n, 1); /* 0 to do, 1 on the stack, 2 done */
  struct frame {
    size_t layer, next;
  } *stack = malloc(n * sizeof *stack);
  if (!features || !dflt || !byname || !state || !stack) {
    free(features);
    free(dflt);
    free(byname);
    free(state);
    free(stack);
    return td_errorf(err, TD_ENOMEM, "out of memory");
  }
  /* The names plan.c's read_layers gives: layerN for the N-th layer with
   * parameters (dense, conv, batch_norm, layer_norm). */
  uint32_t with_params = 0;
  size_t n_named = 0;
  for (size_t i = 0; i < m->n_layers; i++) {
    const Traind__V1__Layer *l = m->layers[i];
    const int k = l->kind_case;
    if (k == TRAIND__V1__LAYER__KIND_DENSE || k == TRAIND__V1__LAYER__KIND_CONV ||
        k == TRAIND__V1__LAYER__KIND_BATCH_NORM || k == TRAIND__V1__LAYER__KIND_LAYER_NORM)
      snprintf(dflt[i], sizeof dflt[i], "layer%u", ++with_params);
    const char *name = l->name && *l->name ? l->name : dflt[i];
    if (*name)
      byname[n_named++] = (named_layer){name, i};
  }
  qsort(byname, n_named, sizeof *byname, named_cmp);
  for (size_t root = 0; root < m->n_layers; root++) {
    if (state[root])
      continue;
    size_t top = 0;
    stack[top++] = (struct frame){root, 0};
    state[root] = 1;
    while (top) {
      struct frame *fr = &stack[top - 1];
      const Traind__V1__Layer *l = m->layers[fr->layer];
      const size_t n_in = l->n_inputs ? l->n_inputs : 1;
      if (fr->next < n_in) {
        long src = input_of(m, byname, n_named, fr->layer, fr->next++);
        if (src >= 0 && state[src] == 0) {
          state[src] = 1;
          stack[top++] = (struct frame){(size_t)src, 0};
        }
        continue;
      }
      /* Every input known (or on the stack: a cycle): this layer's values. */
      double f = 0.0;
      const int concat = l->kind_case == TRAIND__V1__LAYER__KIND_CONCATENATE;
      for (size_t k = 0; k < (concat ? n_in : 1) && f >= 0.0; k++) {
        long src = input_of(m, byname, n_named, fr->layer, k);
        double w = src == -1 ? in : src >= 0 && state[src] == 2 ? features[src] : widest;
        f = w < 0.0 ? -1.0 : f + w;
      }
      switch (l->kind_case) {
      case TRAIND__V1__LAYER__KIND_CONV:
      case TRAIND__V1__LAYER__KIND_EMBED:
      case TRAIND__V1__LAYER__KIND_POSITION_EMBEDDING:
      case TRAIND__V1__LAYER__KIND_CAUSAL_SELF_ATTENTION:
      case TRAIND__V1__LAYER__KIND_REPEAT:
      case TRAIND__V1__LAYER__KIND_MAX_POOL:
      case TRAIND__V1__LAYER__KIND_AVG_POOL:
      case TRAIND__V1__LAYER__KIND_GLOBAL_AVG_POOL:
        f = -1.0;
        break;
      case TRAIND__V1__LAYER__KIND_DENSE: {
        const Traind__V1__Dense *d = l->dense;
        const double out = d->features;
        if (f >= 0.0) {
          weights += f * out;
          params += f * out;
        }
        params += !d->use_bias || d->use_bias->value ? out : 0.0;
        f = out;
        break;
      }
      default:
        break;
      }
      features[fr->layer] = f;
      state[fr->layer] = 2;
      top--;
    }
  }
  free(features);
  free(dflt);
  free(byname);
  free(state);
  free(stack);
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
