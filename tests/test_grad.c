/* Gradients of every layer and loss against central finite differences.
 *
 * The engine computes float32 gradients with its CPU backend. The reference
 * is an independent float64 implementation of the same model (written here
 * from the ops' definitions, sharing no code with the engine; it reads only
 * the compiled graph and its resolved window geometry) differentiated by
 * central finite differences: dense, activations, dropout, add, reshape,
 * concatenate, conv, max and average pooling, global average pooling, batch
 * norm (training: the batch's statistics, recomputed for each perturbation)
 * layer norm, token and position embeddings and causal self-attention
 * (its weights' dropout included), and dense layers over sequences with a
 * loss at every position. Dropout masks are read back from the engine so that both
 * see the same mask. Checked: the loss value, and for every parameter
 * tensor the norm-wise relative error and each element's relative error.
 * Also checked: batch norm's running statistics after a training forward,
 * and an evaluation forward by them. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jobspec.h"
#include "plan.h"
#include "prng.h"

#define MAX_L 32

typedef struct ref_model {
  const td_plan *p;
  int B;
  const double *x; /* (B, in_dim) */
  const int32_t *labels;
  const float *masks[MAX_L]; /* per node, dropout masks from the engine */
  /* Batch norms' running statistics (plan->n_stats) for an evaluation
   * forward; NULL: training, each batch norm by its batch's statistics. */
  const float *stats;
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

/* The parameter tensor of view v in w, or NULL for none. */
static const double *ref_param(const td_plan *p, const double *w, size_t v) {
  return v == TD_NONE ? NULL : w + p->views[v].offset;
}

/* A convolution by its definition, NHWC input (B, h, w, c), HWIO kernel:
 * y[n,i,j,o] = act(b[o] + sum_{p,q,c} x[n, i*sh - pt + p*dh, j*sw - pl +
 * q*dw, c] k[p,q,c,o]), positions outside the input read as zeros. */
static void ref_conv(const td_plan *p, const td_node *L, int B, const double *x, const double *w,
                     double *y) {
  const td_window *g = &L->win;
  const double *k = ref_param(p, w, L->w_view), *b = ref_param(p, w, L->b_view);
  for (int n = 0; n < B; n++)
    for (int i = 0; i < g->oh; i++)
      for (int j = 0; j < g->ow; j++)
        for (int o = 0; o < g->oc; o++) {
          double v = b ? b[o] : 0.0;
          for (int pp = 0; pp < g->kh; pp++)
            for (int q = 0; q < g->kw; q++) {
              int yi = i * g->sh - g->pt + pp * g->dh, xj = j * g->sw - g->pl + q * g->dw;
              if (yi < 0 || yi >= g->h || xj < 0 || xj >= g->w)
                continue;
              const double *xs = x + (((size_t)n * g->h + yi) * g->w + xj) * g->c;
              for (int c = 0; c < g->c; c++)
                v += xs[c] * k[(((size_t)pp * g->kw + q) * g->c + c) * g->oc + o];
            }
          y[(((size_t)n * g->oh + i) * g->ow + j) * g->oc + o] = act_d(L->act, v);
        }
}

/* Max and average pooling of each channel over its windows: the largest of
 * the positions inside the input (padding is never picked), or their sum
 * divided by the window's size (padding counts as zeros) or by their
 * number. */
static void ref_pool(const td_node *L, int B, const double *x, double *y) {
  const td_window *g = &L->win;
  for (int n = 0; n < B; n++)
    for (int i = 0; i < g->oh; i++)
      for (int j = 0; j < g->ow; j++)
        for (int c = 0; c < g->c; c++) {
          double mx = -INFINITY, sum = 0;
          int count = 0;
          for (int pp = 0; pp < g->kh; pp++)
            for (int q = 0; q < g->kw; q++) {
              int yi = i * g->sh - g->pt + pp * g->dh, xj = j * g->sw - g->pl + q * g->dw;
              if (yi < 0 || yi >= g->h || xj < 0 || xj >= g->w)
                continue;
              double v = x[(((size_t)n * g->h + yi) * g->w + xj) * g->c + c];
              mx = fmax(mx, v);
              sum += v;
              count++;
            }
          double v = L->pool == TD_POOL_MAX   ? mx
                     : L->pool == TD_POOL_AVG ? sum / ((double)g->kh * g->kw)
                                              : sum / count;
          y[(((size_t)n * g->oh + i) * g->ow + j) * g->c + c] = v;
        }
}

/* Each channel's mean over the image's positions: (B, positions, C) -> (B, C). */
static void ref_gap(const td_node *L, int B, const double *x, double *y) {
  size_t C = L->out, P = L->in_features / L->out;
  for (int n = 0; n < B; n++)
    for (size_t c = 0; c < C; c++) {
      double s = 0;
      for (size_t q = 0; q < P; q++)
        s += x[((size_t)n * P + q) * C + c];
      y[(size_t)n * C + c] = s / (double)P;
    }
}

/* Normalization of x (rows, C) row-major, by column (batch norm: every
 * position of every example a row) or by row (layer norm), with the biased
 * variance mean(x^2) - mean^2; or, when mean_in is not NULL, by the given
 * means and variances per column (batch norm's evaluation). Then scale and
 * bias per column (NULL: 1 and 0). */
static void ref_norm(int by_col, size_t rows, size_t C, double eps, const double *x,
                     const double *mean_in, const double *var_in, const double *scale,
                     const double *bias, double *y) {
  size_t groups = by_col ? C : rows, len = by_col ? rows : C;
  size_t step = by_col ? C : 1, stride = by_col ? 1 : C;
  for (size_t g = 0; g < groups; g++) {
    const double *xg = x + g * stride;
    double mean, var;
    if (mean_in) {
      mean = mean_in[g];
      var = var_in[g];
    } else {
      double s = 0, s2 = 0;
      for (size_t k = 0; k < len; k++) {
        s += xg[k * step];
        s2 += xg[k * step] * xg[k * step];
      }
      mean = s / (double)len;
      var = s2 / (double)len - mean * mean;
    }
    double rstd = 1 / sqrt(var + eps);
    for (size_t k = 0; k < len; k++) {
      size_t at = g * stride + k * step, c = at % C;
      y[at] = (x[at] - mean) * rstd * (scale ? scale[c] : 1.0) + (bias ? bias[c] : 0.0);
    }
  }
}

/* Causal self-attention by its definition, for each sequence b and head
 * h: qkv = x w + b; p = softmax over j <= i of q_i . k_j / sqrt(d), times
 * the dropout mask (when given); o_i = sum_j p_ij v_j; y = o w2 + b2. */
static void ref_attention(const td_plan *p, const td_node *L, int B, const double *x,
                          const double *w, const float *mask, double *y) {
  const int T = (int)L->positions, F = (int)L->channels, H = (int)L->heads, D = F / H;
  const double *wq = ref_param(p, w, L->w_view), *bq = ref_param(p, w, L->b_view);
  const double *wo = ref_param(p, w, L->w2_view), *bo = ref_param(p, w, L->b2_view);
  double *qkv = malloc(sizeof(double) * (size_t)T * 3 * F), *o = malloc(sizeof(double) * T * F);
  double *pr = malloc(sizeof(double) * T);
  for (int b = 0; b < B; b++) {
    const double *xb = x + (size_t)b * T * F;
    for (int t = 0; t < T; t++)
      for (int c = 0; c < 3 * F; c++) {
        double v = bq ? bq[c] : 0.0;
        for (int k = 0; k < F; k++)
          v += xb[t * F + k] * wq[(size_t)k * 3 * F + c];
        qkv[(size_t)t * 3 * F + c] = v;
      }
    for (int h = 0; h < H; h++)
      for (int i = 0; i < T; i++) {
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j <= i; j++) {
          double s = 0.0;
          for (int d = 0; d < D; d++)
            s += qkv[(size_t)i * 3 * F + h * D + d] * qkv[(size_t)j * 3 * F + F + h * D + d];
          pr[j] = s / sqrt((double)D);
          mx = fmax(mx, pr[j]);
        }
        for (int j = 0; j <= i; j++)
          sum += (pr[j] = exp(pr[j] - mx));
        for (int j = 0; j <= i; j++) {
          pr[j] /= sum;
          if (mask)
            pr[j] *= mask[(((size_t)b * H + h) * T + i) * T + j];
        }
        for (int d = 0; d < D; d++) {
          double v = 0.0;
          for (int j = 0; j <= i; j++)
            v += pr[j] * qkv[(size_t)j * 3 * F + 2 * F + h * D + d];
          o[(size_t)i * F + h * D + d] = v;
        }
      }
    for (int t = 0; t < T; t++)
      for (int c = 0; c < F; c++) {
        double v = bo ? bo[c] : 0.0;
        for (int k = 0; k < F; k++)
          v += o[t * F + k] * wo[(size_t)k * F + c];
        y[((size_t)b * T + t) * F + c] = v;
      }
  }
  free(qkv);
  free(o);
  free(pr);
}

/* The model's values in float64 for parameters `w` (flat): the plan's graph
 * walked node by node, each output kept (B, out). The caller frees each
 * and the array (plan->n_nodes). */
static double **ref_forward(const ref_model *m, const double *w) {
  const td_plan *p = m->p;
  int B = m->B;
  double **val = calloc(p->n_nodes, sizeof *val);
  for (size_t li = 0; li < p->n_nodes; li++) {
    const td_node *L = &p->nodes[li];
    const double *in[TD_MAX_INPUTS];
    for (uint32_t i = 0; i < L->n_in; i++)
      in[i] = L->in[i] < 0 ? m->x : val[L->in[i]];
    double *y = val[li] = malloc(sizeof(double) * B * L->out);
    switch (L->op) {
    case TD_OP_CONV:
      ref_conv(p, L, B, in[0], w, y);
      continue;
    case TD_OP_POOL:
      ref_pool(L, B, in[0], y);
      continue;
    case TD_OP_GAP:
      ref_gap(L, B, in[0], y);
      continue;
    case TD_OP_ATTENTION:
      ref_attention(p, L, B, in[0], w, m->masks[li], y);
      continue;
    case TD_OP_EMBED: {
      const double *table = ref_param(p, w, L->w_view);
      for (size_t r = 0; r < (size_t)B * L->positions; r++)
        for (uint32_t c = 0; c < L->channels; c++)
          y[r * L->channels + c] = table[(size_t)in[0][r] * L->channels + c];
      continue;
    }
    case TD_OP_POS_EMBED: {
      const double *table = ref_param(p, w, L->w_view);
      for (size_t r = 0; r < (size_t)B; r++)
        for (uint32_t k = 0; k < L->out; k++)
          y[r * L->out + k] = in[0][r * L->out + k] + table[k];
      continue;
    }
    case TD_OP_DENSE: {
      /* Each row: an example, or a position of a sequence. */
      const td_view *wv = &p->views[L->w_view];
      const uint32_t C = L->channels;
      for (size_t r = 0; r < (size_t)B * L->positions; r++)
        for (uint32_t o = 0; o < C; o++) {
          const double *x = in[0] + r * L->in_features;
          double v = L->b_view == TD_NONE ? 0.0 : w[p->views[L->b_view].offset + o];
          for (uint32_t k = 0; k < L->in_features; k++)
            v += x[k] * w[wv->offset + (size_t)k * C + o];
          y[r * C + o] = act_d(L->act, v);
        }
      continue;
    }
    case TD_OP_BATCH_NORM:
    case TD_OP_LAYER_NORM: {
      size_t C = L->channels, rows = (size_t)B * L->out / C;
      /* Evaluation: the running mean and variance (views mean, var). */
      double *run = NULL;
      if (L->op == TD_OP_BATCH_NORM && m->stats && (run = malloc(2 * C * sizeof *run)))
        for (size_t c = 0; c < C; c++) {
          run[c] = m->stats[p->stat_views[L->stat_view].offset + c];
          run[C + c] = m->stats[p->stat_views[L->stat_view + 1].offset + c];
        }
      ref_norm(L->op == TD_OP_BATCH_NORM, rows, C, (double)L->eps, in[0], run, run ? run + C : NULL,
               ref_param(p, w, L->w_view), ref_param(p, w, L->b_view), y);
      free(run);
      continue;
    }
    default:
      break;
    }
    for (int r = 0; r < B; r++)
      for (uint32_t o = 0; o < L->out; o++) {
        double v = 0;
        const double *x = in[0] + (size_t)r * L->in_features;
        if (L->op == TD_OP_ACT) {
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
  return val;
}

static void ref_free(const td_plan *p, double **val) {
  for (size_t li = 0; li < p->n_nodes; li++)
    free(val[li]);
  free(val);
}

/* The mean loss of the model in float64, for parameters `w` (flat). */
static double ref_loss(const ref_model *m, const double *w) {
  const td_plan *p = m->p;
  int B = m->B;
  double **val = ref_forward(m, w);
  const double *cur = val[p->n_nodes - 1];
  double loss = 0;
  int C = (int)p->out_dim;
  /* A sequence's output: a row and a label per position. */
  B *= (int)p->positions;
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
  ref_free(p, val);
  return p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY ? loss / B : loss / ((double)B * C);
}

static const char *optimizer_yaml =
    "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.1}}}]}\n"
    "dataset: {idx: {dir: none}}\n"
    "training: {epochs: 1, batch_size: 1}\n";

/* One model compiled at batch B on a one-thread CPU backend, its
 * parameters drawn from seed with nonzero biases and scales near 1, and a
 * random input and labels in the arena. */
typedef struct grad_env {
  Traind__V1__JobSpec *spec;
  td_plan *p;
  td_backend *be;
  td_state st;
  int have_state;
  td_key key;
} grad_env;

static void env_close(grad_env *e) {
  if (e->have_state)
    td_state_free(&e->st);
  td_backend_destroy(e->be);
  td_plan_free(e->p);
  td_jobspec_free(e->spec);
}

static int env_open(grad_env *e, const char *label, const char *model_yaml, int B, uint32_t seed) {
  memset(e, 0, sizeof *e);
  char doc[4096];
  snprintf(doc, sizeof doc, "%s%s", model_yaml, optimizer_yaml);
  td_error err = {0};
  int rc = td_jobspec_parse(doc, strlen(doc), &e->spec, &err);
  CHECK(rc == 0, "%s: spec: %s", label, err.msg);
  if (!rc) {
    rc = td_plan_compile(e->spec->model, e->spec->optimizer, (uint32_t)B, "cpu:0", &e->p, &err);
    CHECK(rc == 0, "%s: compile: %s", label, err.msg);
  }
  if (!rc)
    rc = td_cpu_backend_create(&e->be, 1, &err);
  if (!rc)
    e->have_state = (rc = td_state_init(&e->st, e->p, e->be, &err)) == 0;
  e->key = td_prng_key(seed);
  if (!rc) {
    rc = td_state_init_params(&e->st, e->key, &err);
    CHECK(rc == 0, "%s: init: %s", label, err.msg);
  }
  if (rc) {
    env_close(e);
    return -1;
  }
  const td_plan *p = e->p;
  td_state *st = &e->st;
  /* Nonzero biases, so bias gradients meet nonzero inputs downstream; norm
   * scales near 1. */
  float *noise = malloc(sizeof(float) * p->n_params);
  td_prng_normal(td_prng_fold_in(e->key, 100), noise, p->n_params);
  for (size_t v = 0; v < p->n_views; v++) {
    const td_view *tv = &p->views[v];
    size_t len = strlen(tv->name);
    float base = len > 6 && strcmp(tv->name + len - 6, "/scale") == 0 ? 1.0f : 0.0f;
    if (tv->ndim == 1)
      for (size_t i = 0; i < tv->size; i++)
        st->params[tv->offset + i] = base + 0.1f * noise[tv->offset + i];
  }
  free(noise);

  float *xin = st->arena + p->in_off;
  int32_t *labels = (int32_t *)(st->arena + p->labels_off);
  const size_t n_in = (size_t)B * p->in_dim, n_labels = (size_t)B * p->positions;
  uint32_t *bits = malloc(sizeof *bits * (n_in > n_labels ? n_in : n_labels));
  td_prng_normal(td_prng_fold_in(e->key, 200), xin, n_in);
  if (p->vocab) {
    /* Token ids for the embed layers. */
    td_prng_bits(td_prng_fold_in(e->key, 250), bits, n_in);
    for (size_t i = 0; i < n_in; i++)
      xin[i] = (float)(bits[i] % p->vocab);
  }
  td_prng_bits(td_prng_fold_in(e->key, 300), bits, n_labels);
  for (size_t r = 0; r < n_labels; r++)
    labels[r] = (int32_t)(bits[r] % p->out_dim);
  free(bits);
  return 0;
}

static double *to_double(const float *x, size_t n) {
  double *d = malloc(sizeof(double) * (n ? n : 1));
  for (size_t i = 0; i < n; i++)
    d[i] = x[i];
  return d;
}

static void check_case(const char *label, const char *model_yaml, int B, uint32_t seed) {
  grad_env e;
  if (env_open(&e, label, model_yaml, B, seed))
    return;
  const td_plan *p = e.p;
  td_state *st = &e.st;
  td_key key = e.key;
  td_error err = {0};
  float *xin = st->arena + p->in_off;
  int32_t *labels = (int32_t *)(st->arena + p->labels_off);

  uint32_t dkeys[2 * 16];
  CHECK(p->n_keys <= 16, "%u dropout layers", p->n_keys);
  CHECK(p->n_nodes <= MAX_L, "%s: %zu nodes; raise MAX_L", label, p->n_nodes);
  td_plan_dropout_keys(p, td_prng_fold_in(key, 400), dkeys);
  CHECK(td_state_forward(st, B, 1, dkeys, 0, &err) == 0, "%s", err.msg);
  CHECK(td_state_loss(st, B, 1, &err) == 0, "%s", err.msg);
  CHECK(td_state_backward(st, &err) == 0, "%s", err.msg);
  float loss_sum = st->arena[p->scalars_off + TD_SC_LOSS_SUM];
  const double rows = (double)B * p->positions;
  double engine_loss = p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY
                           ? loss_sum / rows
                           : loss_sum / (rows * p->out_dim);

  double *xd = to_double(xin, (size_t)B * p->in_dim);
  ref_model m = {.p = p, .B = B, .x = xd, .labels = labels};
  for (size_t li = 0; li < p->n_nodes && li < MAX_L; li++)
    if (p->nodes[li].op == TD_OP_DROPOUT)
      m.masks[li] = st->arena + p->nodes[li].mask;
    else if (p->nodes[li].op == TD_OP_ATTENTION && p->nodes[li].rate > 0.0f) {
      /* Its mask in its aux buffer, after qkv, the weights and o. */
      const td_node *L = &p->nodes[li];
      const size_t tf = (size_t)B * L->positions * L->channels;
      m.masks[li] = st->arena + L->aux + 3 * tf + (size_t)B * L->heads * L->positions *
                                                       L->positions + tf;
    }
  double *w = to_double(st->params, p->n_params);

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
      double g = st->grads[k];
      num += (g - fd[i]) * (g - fd[i]);
      den += fd[i] * fd[i];
      gmax = fmax(gmax, fabs(fd[i]));
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    CHECK(rel < 1e-3, "%s: %s: norm-wise relative error %.3g", label, tv->name, rel);
    int bad = 0;
    for (size_t i = 0; i < tv->size; i++) {
      double g = st->grads[tv->offset + i];
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
  env_close(&e);
}

/* Batch norm's running statistics are state, not parameters: one training
 * forward leaves momentum * initial + (1 - momentum) * the batch's value of
 * each channel's mean and (biased) variance (initially mean 0, variance 1);
 * an evaluation forward normalizes by them and leaves them as they are.
 * The input is moved off mean 0 and variance 1, by channel. */
static void check_batch_stats(const char *label, const char *model_yaml, int B, uint32_t seed) {
  grad_env e;
  if (env_open(&e, label, model_yaml, B, seed))
    return;
  const td_plan *p = e.p;
  td_state *st = &e.st;
  td_error err = {0};
  float *xin = st->arena + p->in_off;
  const uint32_t in_c = p->in_shape.d[p->in_shape.rank - 1];
  for (size_t i = 0; i < (size_t)B * p->in_dim; i++) {
    float c = (float)(i % in_c);
    xin[i] = 0.5f * (c + 1) + (1.0f + 0.5f * c) * xin[i];
  }
  uint32_t keys[2] = {0, 0};
  CHECK(td_state_forward(st, B, 1, keys, 0, &err) == 0, "%s: %s", label, err.msg);

  int norms = 0;
  for (size_t li = 0; li < p->n_nodes; li++) {
    const td_node *L = &p->nodes[li];
    if (L->op != TD_OP_BATCH_NORM)
      continue;
    norms++;
    const td_view *mv = &p->stat_views[L->stat_view], *vv = mv + 1;
    char want[2 * TD_VIEW_NAME_MAX];
    snprintf(want, sizeof want, "%s/mean", L->name);
    CHECK(strcmp(mv->name, want) == 0, "%s: statistics view '%s', want '%s'", label, mv->name,
          want);
    snprintf(want, sizeof want, "%s/var", L->name);
    CHECK(strcmp(vv->name, want) == 0, "%s: statistics view '%s', want '%s'", label, vv->name,
          want);
    /* The batch's statistics of the layer's input (the engine's values,
     * kept by the step for backward) in float64. */
    const size_t C = L->channels, rows = (size_t)B * L->out / C;
    const float *x = st->arena + L->x[0];
    const double mom = L->momentum;
    int bad = 0;
    for (size_t c = 0; c < C; c++) {
      double s = 0, s2 = 0;
      for (size_t r = 0; r < rows; r++) {
        s += x[r * C + c];
        s2 += (double)x[r * C + c] * x[r * C + c];
      }
      double mean = s / (double)rows, var = s2 / (double)rows - mean * mean;
      double want_m = mom * 0.0 + (1 - mom) * mean, want_v = mom * 1.0 + (1 - mom) * var;
      double got_m = st->stats[mv->offset + c], got_v = st->stats[vv->offset + c];
      if ((td_relerr(got_m, want_m, 1e-3) >= 1e-5 || td_relerr(got_v, want_v, 1e-3) >= 1e-5) &&
          bad++ < 3)
        fprintf(stderr, "%s: %s channel %zu: running mean %.8g var %.8g, want %.8g %.8g\n", label,
                L->name, c, got_m, got_v, want_m, want_v);
    }
    CHECK(bad == 0, "%s: %s: %d channels' running statistics off by more than 1e-5", label, L->name,
          bad);
  }
  CHECK(norms > 0, "%s: no batch norm in the model", label);

  /* Evaluation: by the running statistics, which stay. */
  float *before = malloc(sizeof(float) * p->n_stats);
  memcpy(before, st->stats, sizeof(float) * p->n_stats);
  CHECK(td_state_forward(st, B, 0, keys, 0, &err) == 0, "%s: %s", label, err.msg);
  CHECK(memcmp(before, st->stats, sizeof(float) * p->n_stats) == 0,
        "%s: an evaluation forward changed the running statistics", label);
  double *xd = to_double(xin, (size_t)B * p->in_dim), *w = to_double(st->params, p->n_params);
  ref_model m = {.p = p, .B = B, .x = xd, .stats = st->stats};
  double **eval = ref_forward(&m, w);
  m.stats = NULL;
  double **train = ref_forward(&m, w);
  const double *want = eval[p->n_nodes - 1], *other = train[p->n_nodes - 1];
  const float *got = st->arena + p->out_off;
  int bad = 0;
  double apart = 0;
  for (size_t i = 0; i < (size_t)B * p->out_dim; i++) {
    if (td_relerr(got[i], want[i], 1.0) >= 1e-5 && bad++ < 3)
      fprintf(stderr,
              "%s: evaluation output[%zu] = %.8g, float64 from the running statistics %.8g\n",
              label, i, got[i], want[i]);
    apart = fmax(apart, td_relerr(got[i], other[i], 1.0));
  }
  CHECK(bad == 0, "%s: %d evaluation outputs off by more than 1e-5", label, bad);
  /* The check can tell the two apart: batch statistics give other outputs. */
  CHECK(apart > 1e-2, "%s: evaluation output equals training's (max rel. difference %.3g)", label,
        apart);
  ref_free(p, eval);
  ref_free(p, train);
  free(xd);
  free(w);
  free(before);
  env_close(&e);
}

/* An activation after a conv that feeds nothing else is fused into it, so
 * that the "conv fused with relu" case checks the fused kernel. */
static void check_conv_fused(const char *model_yaml, td_act act) {
  grad_env e;
  if (env_open(&e, "fusion", model_yaml, 2, 1))
    return;
  int fused = 0;
  for (size_t li = 0; li < e.p->n_nodes; li++)
    fused += e.p->nodes[li].op == TD_OP_CONV && e.p->nodes[li].act == act;
  CHECK(fused == 1, "%d conv nodes with the %s fused, want 1", fused, td_act_name(act));
  env_close(&e);
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

  /* Sequences: token ids into embeddings, attention, dense layers over
   * every position and a loss at each. */
  check_case("embed, position embedding, attention, per-position head",
             "model: {input_shape: [5], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{name: tok, embed: {num_embeddings: 7, features: 8}},"
             "{name: pos, position_embedding: {}},"
             "{name: ln, layer_norm: {}},"
             "{name: attn, causal_self_attention: {num_heads: 2}},"
             "{name: res, add: {}, inputs: [pos, attn]},"
             "{name: fc, dense: {features: 12}}, {gelu: {}},"
             "{name: head, dense: {features: 7}}]}\n",
             3, 30);
  check_case("attention with dropout on its weights, one head, no bias",
             "model: {input_shape: [4], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{name: tok, embed: {num_embeddings: 5, features: 6}},"
             "{name: attn, causal_self_attention: {num_heads: 1, dropout_rate: 0.3, "
             "use_bias: false}},"
             "{name: attn2, causal_self_attention: {num_heads: 3}},"
             "{name: head, dense: {features: 5}}]}\n",
             4, 31);
  check_case("a sequence flattened into one prediction, mse",
             "model: {input_shape: [3], loss: MEAN_SQUARED_ERROR, layers: ["
             "{name: tok, embed: {num_embeddings: 4, features: 4}},"
             "{name: attn, causal_self_attention: {num_heads: 2}},"
             "{flatten: {}}, {name: head, dense: {features: 3}}]}\n",
             2, 32);

  /* Convolutions, each behind another layer with parameters so that its
   * input gradient is checked too. Images are (5, 6, 2), NHWC. */
  check_case("conv SAME 3x3 into conv VALID",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{conv: {features: 3, kernel_size: [3, 3]}},"
             "{conv: {features: 4, kernel_size: [3, 3], padding: VALID}},"
             "{dense: {features: 3}}]}\n",
             3, 20);
  check_case("conv strides 2, SAME (padding 1+1 and 0+1)",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{conv: {features: 3, kernel_size: [3, 3]}},"
             "{conv: {features: 4, kernel_size: [3, 3], strides: [2, 2]}},"
             "{dense: {features: 3}}]}\n",
             4, 21);
  check_case("conv kernel_dilation 2, SAME and VALID with uneven strides",
             "model: {input_shape: [5, 6, 2], loss: MEAN_SQUARED_ERROR, layers: ["
             "{conv: {features: 3, kernel_size: [1, 1]}},"
             "{conv: {features: 3, kernel_size: [3, 3], kernel_dilation: [2, 2]}},"
             "{conv: {features: 2, kernel_size: [2, 3], kernel_dilation: [2, 1], strides: [1, 2],"
             " padding: VALID}},"
             "{dense: {features: 3}}]}\n",
             3, 22);
  check_case(
      "conv explicit asymmetric padding, non-square kernels",
      "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
      "{conv: {features: 3, kernel_size: [2, 3], explicit_padding: [0, 2, 1, 0]}},"
      "{conv: {features: 2, kernel_size: [3, 1], strides: [2, 1], explicit_padding: [1, 0]}},"
      "{dense: {features: 3}}]}\n",
      4, 23);
  static const char *conv_relu =
      "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
      "{conv: {features: 4, kernel_size: [1, 1], use_bias: false}},"
      "{conv: {features: 3, kernel_size: [3, 3]}}, {relu: {}},"
      "{conv: {features: 2, kernel_size: [2, 2], strides: [2, 2], use_bias: false}},"
      "{dense: {features: 3}}]}\n";
  check_conv_fused(conv_relu, TD_ACT_RELU);
  check_case("1x1 conv without bias, conv fused with relu", conv_relu, 4, 24);

  /* Pooling. Max pooling's inputs come from a conv (no relu: no ties). */
  check_case("max_pool SAME, window 3x3 strides (2, 1)",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{conv: {features: 3, kernel_size: [3, 3]}},"
             "{max_pool: {window_shape: [3, 3], strides: [2, 1], padding: SAME}},"
             "{dense: {features: 3}}]}\n",
             4, 30);
  check_case("max_pool VALID 2x2 strides (1, 2), then explicit padding",
             "model: {input_shape: [5, 6, 2], loss: MEAN_SQUARED_ERROR, layers: ["
             "{conv: {features: 3, kernel_size: [3, 3]}},"
             "{max_pool: {window_shape: [2, 2], strides: [1, 2]}},"
             "{max_pool: {window_shape: [2, 3], explicit_padding: [1, 0, 0, 2]}},"
             "{dense: {features: 3}}]}\n",
             3, 31);
  check_case("avg_pool SAME counting padding, then VALID",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{conv: {features: 3, kernel_size: [3, 3]}}, {relu: {}},"
             "{avg_pool: {window_shape: [3, 3], strides: [2, 2], padding: SAME}},"
             "{avg_pool: {window_shape: [2, 2]}},"
             "{dense: {features: 3}}]}\n",
             4, 32);
  check_case("avg_pool SAME without padding in the count",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{conv: {features: 3, kernel_size: [3, 3]}},"
             "{avg_pool: {window_shape: [3, 2], strides: [1, 2], padding: SAME,"
             " count_include_pad: false}},"
             "{avg_pool: {window_shape: [2, 2], strides: [2, 2], explicit_padding: [1, 1],"
             " count_include_pad: false}},"
             "{dense: {features: 3}}]}\n",
             3, 33);
  check_case("global_avg_pool",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{conv: {features: 4, kernel_size: [3, 3]}}, {relu: {}},"
             "{global_avg_pool: {}}, {dense: {features: 3}}]}\n",
             4, 34);

  /* Normalization. Training: batch norm by the batch's statistics over
   * every position of every example. A conv or dense layer right before a
   * batch norm has no bias (its gradient would be zero). */
  check_case("batch_norm after a conv",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{conv: {features: 4, kernel_size: [3, 3], use_bias: false}},"
             "{batch_norm: {}}, {relu: {}}, {dense: {features: 3}}]}\n",
             4, 40);
  check_case("batch_norm without scale and bias after a conv",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{conv: {features: 3, kernel_size: [3, 3], strides: [2, 2], use_bias: false}},"
             "{batch_norm: {use_scale: false, use_bias: false}}, {tanh: {}},"
             "{dense: {features: 3}}]}\n",
             3, 41);
  check_case("batch_norm on vectors (scale only, bias only)",
             "model: {input_shape: [4], loss: MEAN_SQUARED_ERROR, layers: ["
             "{batch_norm: {use_bias: false, epsilon: 0.01}}, {dense: {features: 5}}, {tanh: {}},"
             "{batch_norm: {use_scale: false, momentum: 0.9}},"
             "{dense: {features: 3}}]}\n",
             5, 42);
  check_case("layer_norm on vectors",
             "model: {input_shape: [6], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{dense: {features: 8}}, {layer_norm: {}}, {gelu: {}},"
             "{dense: {features: 3}}]}\n",
             3, 43);
  check_case("layer_norm on images (over channels), with and without scale and bias",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{layer_norm: {use_scale: false, use_bias: false}},"
             "{conv: {features: 4, kernel_size: [3, 3]}},"
             "{layer_norm: {use_bias: false, epsilon: 0.001}}, {relu: {}},"
             "{dense: {features: 3}}]}\n",
             4, 44);

  /* Residual CNNs: the stem's output feeds the block and the skip. */
  check_case("residual CNN (conv, batch_norm, relu, conv, add with the skip, gap, dense)",
             "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
             "{name: stem, conv: {features: 4, kernel_size: [3, 3]}}, {name: a, relu: {}},"
             "{name: c1, conv: {features: 4, kernel_size: [3, 3], use_bias: false}},"
             "{name: bn, batch_norm: {}}, {relu: {}},"
             "{name: c2, conv: {features: 4, kernel_size: [3, 3]}},"
             "{name: sum, add: {}, inputs: [c2, a]}, {relu: {}},"
             "{global_avg_pool: {}}, {name: head, dense: {features: 3}}]}\n",
             4, 50);
  check_case(
      "residual CNN with a strided projection shortcut",
      "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
      "{name: stem, conv: {features: 3, kernel_size: [3, 3]}}, {name: a, relu: {}},"
      "{name: c1, conv: {features: 4, kernel_size: [3, 3], strides: [2, 2], use_bias: false}},"
      "{name: bn1, batch_norm: {}}, {relu: {}},"
      "{name: c2, conv: {features: 4, kernel_size: [3, 3], use_bias: false}},"
      "{name: bn2, batch_norm: {}},"
      "{name: proj, conv: {features: 4, kernel_size: [1, 1], strides: [2, 2], use_bias: false},"
      " inputs: [a]},"
      "{name: bn3, batch_norm: {}},"
      "{name: sum, add: {}, inputs: [bn2, bn3]}, {relu: {}},"
      "{global_avg_pool: {}}, {name: head, dense: {features: 3}}]}\n",
      4, 51);

  /* Batch norm's running statistics. */
  check_batch_stats("running statistics, vector input",
                    "model: {input_shape: [4], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
                    "{name: bn, batch_norm: {momentum: 0.6}}, {dense: {features: 3}}]}\n",
                    5, 60);
  check_batch_stats("running statistics, two batch norms on images",
                    "model: {input_shape: [5, 6, 2], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
                    "{conv: {features: 3, kernel_size: [3, 3], use_bias: false}},"
                    "{batch_norm: {}}, {relu: {}},"
                    "{conv: {features: 3, kernel_size: [3, 3], use_bias: false}},"
                    "{batch_norm: {momentum: 0.8, use_scale: false}},"
                    "{global_avg_pool: {}}, {dense: {features: 3}}]}\n",
                    4, 61);
  return td_check_exit();
}
