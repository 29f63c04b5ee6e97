/* Gradients of every layer and loss against central finite differences.
 *
 * The engine computes float32 gradients with its CPU backend. The reference
 * is an independent float64 implementation of the same model (written here,
 * sharing no code with the engine) differentiated by central finite
 * differences. Dropout masks are read back from the engine so that both see
 * the same mask. Checked: the loss value, and for every parameter tensor the
 * norm-wise relative error and each element's relative error. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jobspec.h"
#include "plan.h"
#include "prng.h"

#define MAX_L 16

typedef struct ref_model {
  const td_plan *p;
  int B;
  const double *x; /* (B, in_dim) */
  const int32_t *labels;
  const float *masks[MAX_L]; /* per node, dropout masks from the engine */
} ref_model;

static double act_d(td_act a, double z) {
  switch (a) {
  case TD_ACT_NONE:
    return z;
  case TD_ACT_RELU:
    return z > 0 ? z : 0;
  case TD_ACT_GELU_TANH:
    return 0.5 * z * (1 + tanh(sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)));
  case TD_ACT_GELU_ERF:
    return 0.5 * z * (1 + erf(z / sqrt(2.0)));
  case TD_ACT_TANH:
    return tanh(z);
  case TD_ACT_SIGMOID:
    return 1 / (1 + exp(-z));
  }
  return NAN;
}

/* The mean loss of the model in float64, for parameters `w` (flat): the
 * plan's graph walked node by node, each output kept (B, out). */
static double ref_loss(const ref_model *m, const double *w) {
  const td_plan *p = m->p;
  int B = m->B;
  double **val = calloc(p->n_nodes, sizeof *val);
  for (size_t li = 0; li < p->n_nodes; li++) {
    const td_node *L = &p->nodes[li];
    const double *in[TD_MAX_INPUTS];
    for (uint32_t i = 0; i < L->n_in; i++)
      in[i] = L->in[i] < 0 ? m->x : val[L->in[i]];
    double *y = val[li] = malloc(sizeof(double) * B * L->out);
    for (int r = 0; r < B; r++)
      for (uint32_t o = 0; o < L->out; o++) {
        double v = 0;
        const double *x = in[0] + (size_t)r * L->in_features;
        if (L->op == TD_OP_DENSE) {
          const td_view *wv = &p->views[L->w_view];
          v = L->b_view == TD_NONE ? 0.0 : w[p->views[L->b_view].offset + o];
          for (uint32_t k = 0; k < L->in_features; k++)
            v += x[k] * w[wv->offset + (size_t)k * L->out + o];
          v = act_d(L->act, v);
        } else if (L->op == TD_OP_ACT) {
          v = act_d(L->act, x[o]);
        } else if (L->op == TD_OP_RESHAPE) {
          v = x[o];
        } else if (L->op == TD_OP_CONCAT) {
          /* Row q of the (outer, cols) blocks, column c: from the input whose
           * columns hold c. */
          uint32_t ld = L->out / L->outer, q = o / ld, col = o % ld, i = 0;
          while (col >= L->cols[i])
            col -= L->cols[i++];
          v = in[i][(size_t)r * L->outer * L->cols[i] + (size_t)q * L->cols[i] + col];
        } else if (L->op == TD_OP_ADD) {
          for (uint32_t i = 0; i < L->n_in; i++)
            v += in[i][(size_t)r * L->out + o];
        } else {
          v = x[o] * (double)m->masks[li][r * L->out + o];
        }
        y[r * L->out + o] = v;
      }
  }
  const double *cur = val[p->n_nodes - 1];
  double loss = 0;
  int C = (int)p->out_dim;
  for (int r = 0; r < B; r++) {
    const double *y = cur + (size_t)r * C;
    if (p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY) {
      double mx = y[0], s = 0;
      for (int c = 1; c < C; c++)
        mx = fmax(mx, y[c]);
      for (int c = 0; c < C; c++)
        s += exp(y[c] - mx);
      loss += mx + log(s) - y[m->labels[r]];
    } else {
      for (int c = 0; c < C; c++) {
        double e = y[c] - (c == m->labels[r]);
        loss += e * e;
      }
    }
  }
  for (size_t li = 0; li < p->n_nodes; li++)
    free(val[li]);
  free(val);
  return p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY ? loss / B : loss / ((double)B * C);
}

static const char *optimizer_yaml =
    "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.1}}}]}\n"
    "dataset: {idx: {dir: none}}\n"
    "training: {epochs: 1, batch_size: 1}\n";

static void check_case(const char *label, const char *model_yaml, int B, uint32_t seed) {
  char doc[4096];
  snprintf(doc, sizeof doc, "%s%s", model_yaml, optimizer_yaml);
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  CHECK(rc == 0, "%s: spec: %s", label, err.msg);
  if (rc)
    return;
  td_plan *p = NULL;
  rc = td_plan_compile(spec->model, spec->optimizer, (uint32_t)B, "cpu:0", &p, &err);
  CHECK(rc == 0, "%s: compile: %s", label, err.msg);
  td_backend *be = NULL;
  td_state st;
  if (rc || td_cpu_backend_create(&be, 1, &err) || td_state_init(&st, p, be, &err)) {
    td_plan_free(p);
    td_jobspec_free(spec);
    td_backend_destroy(be);
    return;
  }
  td_key key = td_prng_key(seed);
  td_state_init_params(&st, key, &err);
  /* Nonzero biases, so bias gradients meet nonzero inputs downstream. */
  float *noise = malloc(sizeof(float) * p->n_params);
  td_prng_normal(td_prng_fold_in(key, 100), noise, p->n_params);
  for (size_t v = 0; v < p->n_views; v++)
    if (p->views[v].ndim == 1)
      for (size_t i = 0; i < p->views[v].size; i++)
        st.params[p->views[v].offset + i] = 0.1f * noise[p->views[v].offset + i];

  float *xin = st.arena + p->in_off;
  int32_t *labels = (int32_t *)(st.arena + p->labels_off);
  td_prng_normal(td_prng_fold_in(key, 200), xin, (size_t)B * p->in_dim);
  uint32_t bits[64];
  td_prng_bits(td_prng_fold_in(key, 300), bits, (size_t)B);
  for (int r = 0; r < B; r++)
    labels[r] = (int32_t)(bits[r] % p->out_dim);

  uint32_t dkeys[2 * 16];
  CHECK(p->n_keys <= 16, "%u dropout layers", p->n_keys);
  td_plan_dropout_keys(p, td_prng_fold_in(key, 400), dkeys);
  CHECK(td_state_forward(&st, B, 1, dkeys, 0, &err) == 0, "%s", err.msg);
  CHECK(td_state_loss(&st, B, 1, &err) == 0, "%s", err.msg);
  CHECK(td_state_backward(&st, &err) == 0, "%s", err.msg);
  float loss_sum = st.arena[p->scalars_off + TD_SC_LOSS_SUM];
  double engine_loss = p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY
                           ? loss_sum / B
                           : loss_sum / ((double)B * p->out_dim);

  double *xd = malloc(sizeof(double) * B * p->in_dim);
  for (size_t i = 0; i < (size_t)B * p->in_dim; i++)
    xd[i] = xin[i];
  ref_model m = {.p = p, .B = B, .x = xd, .labels = labels};
  for (size_t li = 0; li < p->n_nodes && li < MAX_L; li++)
    if (p->nodes[li].op == TD_OP_DROPOUT)
      m.masks[li] = st.arena + p->nodes[li].mask;
  double *w = malloc(sizeof(double) * p->n_params);
  for (size_t i = 0; i < p->n_params; i++)
    w[i] = st.params[i];

  double ref = ref_loss(&m, w);
  CHECK(td_relerr(engine_loss, ref, 1e-6) < 1e-5, "%s: loss %.9g vs float64 reference %.9g", label,
        engine_loss, ref);

  const double h = 1e-6;
  for (size_t v = 0; v < p->n_views; v++) {
    const td_view *tv = &p->views[v];
    double num = 0, den = 0, gmax = 0;
    double *fd = malloc(sizeof(double) * tv->size);
    for (size_t i = 0; i < tv->size; i++) {
      size_t k = tv->offset + i;
      double save = w[k];
      w[k] = save + h;
      double lp = ref_loss(&m, w);
      w[k] = save - h;
      double lm = ref_loss(&m, w);
      w[k] = save;
      fd[i] = (lp - lm) / (2 * h);
      double g = st.grads[k];
      num += (g - fd[i]) * (g - fd[i]);
      den += fd[i] * fd[i];
      gmax = fmax(gmax, fabs(fd[i]));
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    CHECK(rel < 1e-3, "%s: %s: norm-wise relative error %.3g", label, tv->name, rel);
    int bad = 0;
    for (size_t i = 0; i < tv->size; i++) {
      double g = st.grads[tv->offset + i];
      if (td_relerr(g, fd[i], fmax(1e-2 * gmax, 1e-7)) >= 1e-3 && bad++ < 3)
        fprintf(stderr, "%s: %s[%zu] = %.8g, finite difference %.8g\n", label, tv->name, i, g,
                fd[i]);
    }
    CHECK(bad == 0, "%s: %s: %d elements off by more than 1e-3", label, tv->name, bad);
    CHECK(gmax > 0, "%s: %s: the gradient is identically zero", label, tv->name);
    free(fd);
  }
  free(w);
  free(xd);
  free(noise);
  td_state_free(&st);
  td_backend_destroy(be);
  td_plan_free(p);
  td_jobspec_free(spec);
}

/* The dropout mask is jax.random.bernoulli(key, 1 - rate, (n,)): the
 * uniform draws (checked bit for bit against JAX in test_prng) below the
 * keep probability. */
static void check_dropout_mask(void) {
  enum { N = 10007 };
  td_error err = {0};
  td_backend *be = NULL;
  CHECK(td_cpu_backend_create(&be, 1, &err) == 0, "%s", err.msg);
  static float x[N], mask[N], y[N], u[N];
  td_key key = td_prng_fold_in(td_prng_key(11), 5);
  for (int i = 0; i < N; i++)
    x[i] = (float)i;
  const float rate = 0.3f;
  be->ops->dropout_fwd(be, N, 0, rate, key.k, x, mask, y);
  td_prng_uniform(key, u, N, 0.0f, 1.0f);
  int mismatch = 0, kept = 0;
  for (int i = 0; i < N; i++) {
    int keep = u[i] < 1.0f - rate;
    kept += keep;
    mismatch += keep != (mask[i] != 0.0f);
    mismatch += y[i] != x[i] * mask[i];
    mismatch += keep && mask[i] != 1.0f / (1.0f - rate);
  }
  CHECK(mismatch == 0, "dropout mask differs from bernoulli(uniform) in %d places", mismatch);
  CHECK(fabs((double)kept / N - 0.7) < 0.02, "kept fraction %.4f", (double)kept / N);
  /* A shard's mask: elements first.. of the whole one. */
  static float mask2[N], y2[N];
  be->ops->dropout_fwd(be, N - 5000, 5000, rate, key.k, x + 5000, mask2, y2);
  CHECK(memcmp(mask2, mask + 5000, sizeof(float) * (N - 5000)) == 0 &&
            memcmp(y2, y + 5000, sizeof(float) * (N - 5000)) == 0,
        "the mask from counter 5000 is not the tail of the whole mask");
  td_backend_destroy(be);
}

int main(void) {
  check_dropout_mask();
  check_case("relu mlp + softmax xent",
             "model: {input_shape: [5], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{dense: {features: 7, kernel_init: HE_NORMAL}}, {relu: {}},"
             "{dense: {features: 3, kernel_init: HE_NORMAL}}]}\n",
             4, 1);
  check_case("gelu/tanh/sigmoid + mse",
             "model: {input_shape: [2, 3], loss: MEAN_SQUARED_ERROR, layers: ["
             "{dense: {features: 8, kernel_init: GLOROT_UNIFORM}}, {gelu: {}},"
             "{dense: {features: 6, kernel_init: LECUN_NORMAL}}, {tanh: {}},"
             "{dense: {features: 4, kernel_init: GLOROT_NORMAL}}, {sigmoid: {}}]}\n",
             5, 2);
  check_case("exact gelu + softmax xent",
             "model: {input_shape: [4], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{dense: {features: 9, kernel_init: HE_UNIFORM}}, {gelu: {approximate: false}},"
             "{dense: {features: 5, kernel_init: LECUN_UNIFORM}}]}\n",
             3, 3);
  check_case("dropout between dense layers",
             "model: {input_shape: [6], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{dense: {features: 16, kernel_init: HE_NORMAL}}, {relu: {}},"
             "{dropout: {rate: 0.3}},"
             "{dense: {features: 4, kernel_init: HE_NORMAL}}]}\n",
             8, 4);
  check_case("activation on the input, no bias",
             "model: {input_shape: [5], loss: MEAN_SQUARED_ERROR, layers: ["
             "{tanh: {}}, {dense: {features: 6, use_bias: false}},"
             "{sigmoid: {}}, {dense: {features: 3}}]}\n",
             4, 5);
  check_case("single example, wide output",
             "model: {input_shape: [13], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{dense: {features: 16, kernel_init: HE_NORMAL}}, {relu: {}},"
             "{dense: {features: 10, kernel_init: HE_NORMAL}}]}\n",
             1, 6);
  /* Graphs: a value feeding several layers gets the sum of their
   * gradients, whichever op adds in (gemm, activation, dropout, add). */
  check_case("residual block (fan-out into dense and add)",
             "model: {input_shape: [6], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{name: stem, dense: {features: 8, kernel_init: HE_NORMAL}}, {name: a, relu: {}},"
             "{name: f1, dense: {features: 8}}, {relu: {}}, {name: f2, dense: {features: 8}},"
             "{name: sum, add: {}, inputs: [f2, a]}, {relu: {}},"
             "{name: head, dense: {features: 3}}]}\n",
             5, 7);
  check_case("three branches from the input, add of three",
             "model: {input_shape: [5], loss: MEAN_SQUARED_ERROR, layers: ["
             "{name: p, dense: {features: 6}, inputs: [input]}, {name: pt, tanh: {}},"
             "{name: q, dense: {features: 6}, inputs: [input]},"
             "{name: r, sigmoid: {}, inputs: [q]},"
             "{name: s, dropout: {rate: 0.25}, inputs: [q]},"
             "{name: t, add: {}, inputs: [pt, r, s]},"
             "{name: out, dense: {features: 4}}]}\n",
             6, 8);
  check_case("the same input twice, and an output that is not last",
             "model: {input_shape: [4], loss: SOFTMAX_CROSS_ENTROPY, output: o, layers: ["
             "{name: h, dense: {features: 5}}, {name: g, gelu: {}, inputs: [h]},"
             "{name: twice, add: {}, inputs: [g, g]},"
             "{name: o, dense: {features: 3}, inputs: [twice]}]}\n",
             3, 9);
  check_case("image input, reshape and flatten (aliases) into an add",
             "model: {input_shape: [2, 3, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{relu: {}}, {name: a, dense: {features: 12}},"
             "{name: r1, reshape: {shape: [3, -1]}, inputs: [a]},"
             "{name: r2, reshape: {shape: [2, 2, 3]}, inputs: [a]},"
             "{name: f1, flatten: {}, inputs: [r1]}, {name: f2, flatten: {}, inputs: [r2]},"
             "{name: s, add: {}, inputs: [f1, f2, a]}, {tanh: {}},"
             "{name: out, dense: {features: 3}}]}\n",
             4, 10);
  check_case("concatenate along the last axis and along an inner one",
             "model: {input_shape: [2, 3], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{name: a, dense: {features: 6}}, {name: ra, reshape: {shape: [2, 3]}},"
             "{name: b, tanh: {}, inputs: [input]},"
             "{name: c1, concatenate: {}, inputs: [ra, b]},"
             "{name: c2, concatenate: {axis: 1}, inputs: [ra, b]},"
             "{name: c2r, reshape: {shape: [2, 6]}}, {name: s, add: {}, inputs: [c1, c2r]},"
             "{sigmoid: {}}, {name: out, dense: {features: 4}}]}\n",
             3, 11);
  return td_check_exit();
}
