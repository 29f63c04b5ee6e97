/* Sampling from a language model's checkpoint, one position at a time
 * (sample.h). The compiled plan (at batch 1) gives the program and where
 * each parameter lies; the values of one position are computed with the
 * CPU backend's kernels on one row (the same the training step runs),
 * but for attention, computed here over every attention layer's cache of
 * the keys and values of the positions before. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "jobspec.h"
#include "ops.h"
#include "plan.h"
#include "prng.h"

struct td_sampler {
  Traind__V1__JobSpec *spec;
  td_plan *plan;
  td_backend *be;
  td_state st;
  int have_state;
  uint32_t *vocab, n_vocab;
  int bytes;
  uint32_t T;                             /* the window */
  size_t out;                             /* the output node */
  uint32_t *width;                        /* (n_nodes) values per position */
  float **val;                            /* (n_nodes) the current position's values */
  float **kc, **vc;                       /* (n_nodes) attention: (T, f) keys and values */
  float *qkv, *mix, *z, *scores, *logits; /* z: a pre-activation */
  double *probs;
  uint32_t *order; /* (n_vocab) for top-k */
};

static const float *param(const td_sampler *s, size_t view) {
  return view == TD_NONE ? NULL : s->st.params + s->plan->views[view].offset;
}

/* y (cols) = act(x (rows) w (rows, cols) + b), on the sampler's CPU
 * backend: the kernels training runs, on one row (the pre-activation in
 * s->z). y must not be x. */
static void affine(td_sampler *s, td_act act, const float *x, const float *w, const float *b,
                   int rows, int cols, float *y) {
  const td_backend_ops *ops = s->be->ops;
  ops->gemm(s->be, 0, 0, 1, cols, rows, 1.0f, x, rows, w, cols, 0.0f, s->z, cols);
  ops->bias_act_fwd(s->be, act, 1, cols, b, s->z, y);
}

static int supported(const td_node *n, uint32_t T) {
  switch (n->op) {
  case TD_OP_EMBED:
  case TD_OP_POS_EMBED:
  case TD_OP_ATTENTION:
  case TD_OP_LAYER_NORM:
  case TD_OP_ACT:
  case TD_OP_DROPOUT:
  case TD_OP_ADD:
    return 1;
  case TD_OP_DENSE:
    return n->positions == T;
  default:
    return 0;
  }
}

void td_sampler_free(td_sampler *s) {
  if (!s)
    return;
  if (s->plan)
    for (size_t i = 0; i < s->plan->n_nodes; i++) {
      free(s->val ? s->val[i] : NULL);
      free(s->kc ? s->kc[i] : NULL);
      free(s->vc ? s->vc[i] : NULL);
    }
  free(s->val);
  free(s->kc);
  free(s->vc);
  free(s->width);
  free(s->qkv);
  free(s->mix);
  free(s->z);
  free(s->scores);
  free(s->logits);
  free(s->probs);
  free(s->order);
  free(s->vocab);
  if (s->have_state)
    td_state_free(&s->st);
  td_backend_destroy(s->be);
  td_plan_free(s->plan);
  td_jobspec_free(s->spec);
  free(s);
}

int64_t td_sampler_step(const td_sampler *s) { return s->st.step; }

static int setup(td_sampler *s, const char *path, td_error *err) {
  const td_plan *p = s->plan;
  if (p->vocab == 0 || p->positions < 2 || p->loss != TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY)
    return td_errorf(err, TD_EUNSUPPORTED,
                     "checkpoint '%s': its model is not a language model (an embed layer first, "
                     "a prediction at every position, softmax cross-entropy)",
                     path);
  s->T = p->in_dim;
  if (p->out_dim < s->n_vocab)
    return td_errorf(err, TD_EUNSUPPORTED,
                     "checkpoint '%s': the model predicts %u tokens, the vocabulary has %u", path,
                     p->out_dim, s->n_vocab);
  const size_t n = p->n_nodes;
  s->width = calloc(n, sizeof *s->width);
  s->val = calloc(n, sizeof *s->val);
  s->kc = calloc(n, sizeof *s->kc);
  s->vc = calloc(n, sizeof *s->vc);
  if (!s->width || !s->val || !s->kc || !s->vc)
    return td_errorf(err, TD_ENOMEM, "sampling: out of memory");
  size_t widest = 0;
  s->out = n;
  for (size_t i = 0; i < n; i++) {
    const td_node *L = &p->nodes[i];
    if (!supported(L, s->T))
      return td_errorf(err, TD_EUNSUPPORTED,
                       "checkpoint '%s': layer '%s' (%s) cannot be sampled position by position; "
                       "sampling runs embed, position_embedding, layer_norm, "
                       "causal_self_attention, dense, activations, dropout and add",
                       path, L->name, td_op_table[L->op].name);
    s->width[i] = L->out / s->T;
    if (L->y == p->out_off)
      s->out = i;
    if (!(s->val[i] = calloc(s->width[i], sizeof(float))))
      return td_errorf(err, TD_ENOMEM, "sampling: out of memory");
    if (L->op == TD_OP_ATTENTION) {
      const size_t tf = (size_t)s->T * L->channels;
      if (!(s->kc[i] = calloc(tf, sizeof(float))) || !(s->vc[i] = calloc(tf, sizeof(float))))
        return td_errorf(err, TD_ENOMEM, "sampling: out of memory");
    }
    if (3 * (size_t)s->width[i] > widest)
      widest = 3 * (size_t)s->width[i];
  }
  if (s->out == n)
    return td_errorf(err, TD_EINTERNAL, "sampling: the model's output is no node's");
  s->qkv = malloc(widest * sizeof *s->qkv);
  s->mix = malloc(widest * sizeof *s->mix);
  s->z = malloc(widest * sizeof *s->z);
  s->scores = malloc(s->T * sizeof *s->scores);
  s->logits = malloc(p->out_dim * sizeof *s->logits);
  s->probs = malloc(p->out_dim * sizeof *s->probs);
  s->order = malloc(p->out_dim * sizeof *s->order);
  if (!s->qkv || !s->mix || !s->z || !s->scores || !s->logits || !s->probs || !s->order)
    return td_errorf(err, TD_ENOMEM, "sampling: out of memory");
  return TD_OK;
}

int td_sampler_open(const char *path, td_sampler **out, td_error *err) {
  *out = NULL;
  td_sampler *s = calloc(1, sizeof *s);
  if (!s)
    return td_errorf(err, TD_ENOMEM, "sampling: out of memory");
  td_ckpt_meta m;
  int rc = td_ckpt_read_binding(path, &m, err);
  if (!rc) {
    if (!m.spec_json || !*m.spec_json)
      rc = td_errorf(err, TD_EDATA, "checkpoint '%s' holds no job spec", path);
    else if ((rc = td_jobspec_parse(m.spec_json, strlen(m.spec_json), &s->spec, err)))
      td_error_prefix(err, "checkpoint '%s': its job spec", path);
    td_ckpt_meta_free(&m);
  }
  if (!rc)
    rc = td_ckpt_read_vocab(path, &s->vocab, &s->n_vocab, &s->bytes, err);
  if (rc == TD_ENOTFOUND)
    rc = err->code = TD_EUNSUPPORTED;
  if (!rc)
    rc = td_plan_compile(s->spec->model, s->spec->optimizer, 1, "cpu:0", &s->plan, err);
  if (!rc)
    rc = td_cpu_backend_create(&s->be, 1, err);
  if (!rc)
    s->have_state = !(rc = td_state_init(&s->st, s->plan, s->be, err));
  if (!rc)
    rc = td_ckpt_read(path, &s->st, NULL, err);
  if (!rc)
    rc = setup(s, path, err);
  if (rc) {
    td_sampler_free(s);
    return rc;
  }
  *out = s;
  return TD_OK;
}

static void attention(td_sampler *s, size_t i, const float *x, uint32_t t, float *y) {
  const td_node *L = &s->plan->nodes[i];
  const int F = (int)L->channels, H = (int)L->heads, D = F / H;
  float *qkv = s->qkv;
  affine(s, TD_ACT_NONE, x, param(s, L->w_view), param(s, L->b_view), F, 3 * F, qkv);
  memcpy(s->kc[i] + (size_t)t * F, qkv + F, (size_t)F * sizeof(float));
  memcpy(s->vc[i] + (size_t)t * F, qkv + 2 * F, (size_t)F * sizeof(float));
  float *o = s->mix;
  const float scale = 1.0f / sqrtf((float)D);
  for (int h = 0; h < H; h++) {
    const float *q = qkv + h * D;
    float mx = -INFINITY;
    for (uint32_t j = 0; j <= t; j++) {
      const float *k = s->kc[i] + (size_t)j * F + h * D;
      float dot = 0.0f;
      for (int d = 0; d < D; d++)
        dot += q[d] * k[d];
      s->scores[j] = dot * scale;
      mx = s->scores[j] > mx ? s->scores[j] : mx;
    }
    double sum = 0.0;
    for (uint32_t j = 0; j <= t; j++)
      sum += (s->scores[j] = expf(s->scores[j] - mx));
    for (int d = 0; d < D; d++)
      o[h * D + d] = 0.0f;
    for (uint32_t j = 0; j <= t; j++) {
      const float w = (float)(s->scores[j] / sum);
      const float *v = s->vc[i] + (size_t)j * F + h * D;
      for (int d = 0; d < D; d++)
        o[h * D + d] += w * v[d];
    }
  }
  affine(s, TD_ACT_NONE, o, param(s, L->w2_view), param(s, L->b2_view), F, F, y);
}

/* The model at position t for token id: every node's values there. */
static void step(td_sampler *s, uint32_t t, uint32_t id) {
  const td_plan *p = s->plan;
  const td_backend_ops *ops = s->be->ops;
  for (size_t i = 0; i < p->n_nodes; i++) {
    const td_node *L = &p->nodes[i];
    float *y = s->val[i];
    const uint32_t w = s->width[i];
    const float *x = L->in[0] >= 0 ? s->val[L->in[0]] : NULL;
    switch (L->op) {
    case TD_OP_EMBED: {
      const float fid = (float)id;
      ops->embed_fwd(s->be, 1, (int)w, (int)L->vocab, &fid, param(s, L->w_view), y);
      break;
    }
    case TD_OP_POS_EMBED: {
      const float *e = param(s, L->w_view) + (size_t)t * w;
      for (uint32_t c = 0; c < w; c++)
        y[c] = x[c] + e[c];
      break;
    }
    case TD_OP_LAYER_NORM: {
      float saved[2];
      ops->ln_fwd(s->be, 1, (int)w, L->eps, x, param(s, L->w_view), param(s, L->b_view), y, saved);
      break;
    }
    case TD_OP_DENSE:
      affine(s, L->act, x, param(s, L->w_view), param(s, L->b_view), (int)L->in_features, (int)w,
             y);
      break;
    case TD_OP_ACT:
      memcpy(s->z, x, w * sizeof *y);
      ops->bias_act_fwd(s->be, L->act, 1, (int)w, NULL, s->z, y);
      break;
    case TD_OP_DROPOUT:
      memcpy(y, x, w * sizeof *y);
      break;
    case TD_OP_ADD:
      memcpy(y, x, w * sizeof *y);
      for (uint32_t k = 1; k < L->n_in; k++)
        for (uint32_t c = 0; c < w; c++)
          y[c] += s->val[L->in[k]][c];
      break;
    case TD_OP_ATTENTION:
      attention(s, i, x, t, y);
      break;
    default:
      break;
    }
  }
}

static int by_logit_desc(const void *a, const void *b, void *arg) {
  const float *l = arg;
  const float x = l[*(const uint32_t *)a], y = l[*(const uint32_t *)b];
  return x > y   ? -1
         : x < y ? 1
                 : (*(const uint32_t *)a > *(const uint32_t *)b) -
                       (*(const uint32_t *)a < *(const uint32_t *)b);
}

/* The next token from the output's logits: softmax(logits / temperature)
 * over the top_k likeliest (ties by id), drawn with u. */
static uint32_t draw(td_sampler *s, const td_sample_opts *o, float u) {
  const uint32_t V = s->n_vocab;
  const float *z = s->val[s->out];
  for (uint32_t v = 0; v < V; v++) {
    s->logits[v] = (float)(z[v] / o->temperature);
    s->order[v] = v;
  }
  uint32_t k = o->top_k && o->top_k < V ? o->top_k : V;
  qsort_r(s->order, V, sizeof *s->order, by_logit_desc, s->logits);
  const float mx = s->logits[s->order[0]];
  double sum = 0.0;
  for (uint32_t r = 0; r < k; r++)
    sum += (s->probs[r] = exp((double)s->logits[s->order[r]] - mx));
  double at = (double)u * sum, acc = 0.0;
  for (uint32_t r = 0; r < k; r++) {
    acc += s->probs[r];
    if (at < acc)
      return s->order[r];
  }
  return s->order[k - 1];
}

/* UTF-8: the code point at *p (advanced), or -1 for an invalid sequence. */
static int32_t utf8_next(const unsigned char **p, const unsigned char *end) {
  const unsigned char *c = *p;
  uint32_t cp, need;
  if (c[0] < 0x80) {
    *p = c + 1;
    return c[0];
  }
  if ((c[0] & 0xe0) == 0xc0)
    cp = c[0] & 0x1f, need = 1;
  else if ((c[0] & 0xf0) == 0xe0)
    cp = c[0] & 0x0f, need = 2;
  else if ((c[0] & 0xf8) == 0xf0)
    cp = c[0] & 0x07, need = 3;
  else
    return -1;
  if ((size_t)(end - c) <= need)
    return -1;
  for (uint32_t i = 1; i <= need; i++) {
    if ((c[i] & 0xc0) != 0x80)
      return -1;
    cp = cp << 6 | (c[i] & 0x3f);
  }
  *p = c + need + 1;
  return (int32_t)cp;
}

static size_t utf8_put(uint32_t cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | cp >> 18);
  out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* The id of code point cp in the sorted vocabulary, or -1. */
static int64_t token_of(const td_sampler *s, uint32_t cp) {
  if (s->bytes)
    return cp < 256 ? (int64_t)cp : -1;
  uint32_t lo = 0, hi = s->n_vocab;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (s->vocab[mid] < cp)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < s->n_vocab && s->vocab[lo] == cp ? (int64_t)lo : -1;
}

int td_sampler_logits(td_sampler *s, const uint32_t *ids, uint32_t n, float *logits,
                      td_error *err) {
  if (n > s->T)
    return td_errorf(err, TD_EINVAL, "%u positions; the window holds %u", n, s->T);
  const uint32_t V = s->plan->out_dim;
  for (uint32_t t = 0; t < n; t++) {
    step(s, t, ids[t]);
    memcpy(logits + (size_t)t * V, s->val[s->out], V * sizeof *logits);
  }
  return TD_OK;
}

int td_sampler_run(td_sampler *s, const td_sample_opts *o, char **text, td_error *err) {
  *text = NULL;
  const size_t plen = o->prompt ? strlen(o->prompt) : 0;
  if (plen == 0)
    return td_errorf(err, TD_EINVAL, "prompt: empty; give text for the model to continue");
  if (plen > TD_SAMPLE_MAX_PROMPT)
    return td_errorf(err, TD_EINVAL, "prompt: %zu bytes; at most %d", plen, TD_SAMPLE_MAX_PROMPT);
  if (o->tokens < 1 || o->tokens > TD_SAMPLE_MAX_TOKENS)
    return td_errorf(err, TD_EINVAL, "tokens: %u; ask for 1 to %d", o->tokens,
                     TD_SAMPLE_MAX_TOKENS);
  if (!(o->temperature > 0.0) || !isfinite(o->temperature))
    return td_errorf(err, TD_EINVAL, "temperature: %g; must be > 0 (1 samples the model as it is)",
                     o->temperature);
  /* The prompt's tokens, then the generated ones. */
  uint32_t *ids = malloc((plen + o->tokens) * sizeof *ids);
  if (!ids)
    return td_errorf(err, TD_ENOMEM, "sampling: out of memory");
  size_t n = 0;
  const unsigned char *c = (const unsigned char *)o->prompt, *end = c + plen;
  while (c < end) {
    const size_t at = (size_t)(c - (const unsigned char *)o->prompt);
    int32_t cp = s->bytes ? *c++ : utf8_next(&c, end);
    int64_t id = cp < 0 ? -1 : token_of(s, (uint32_t)cp);
    if (cp < 0 || id < 0) {
      free(ids);
      if (cp < 0)
        return td_errorf(err, TD_EINVAL, "prompt: invalid UTF-8 at byte %zu", at);
      char ch[5] = {0};
      utf8_put((uint32_t)cp, ch);
      return td_errorf(err, TD_EINVAL,
                       "prompt: the character '%s' (U+%04X) at byte %zu is not in the model's "
                       "vocabulary of %u characters",
                       ch, (unsigned)cp, at, s->n_vocab);
    }
    ids[n++] = (uint32_t)id;
  }
  const td_key key = td_prng_key(o->seed);
  /* pos: the window's next position; ids[base..] are in the cache. */
  size_t base = n > s->T ? n - s->T / 2 : 0;
  uint32_t pos = 0;
  for (size_t i = base; i < n; i++)
    step(s, pos++, ids[i]);
  for (uint32_t g = 0; g < o->tokens; g++) {
    float u;
    td_prng_uniform(td_prng_fold_in(key, g), &u, 1, 0.0f, 1.0f);
    const uint32_t next = draw(s, o, u);
    ids[n++] = next;
    if (g + 1 == o->tokens)
      break;
    if (pos == s->T) {
      /* The window is full: the cache starts again from its last half. */
      base = n - s->T / 2;
      pos = 0;
      for (size_t i = base; i < n - 1; i++)
        step(s, pos++, ids[i]);
    }
    step(s, pos++, next);
  }
  /* The text: the prompt as given, then the new tokens. */
  char *out = malloc(plen + 4 * (size_t)o->tokens + 1);
  if (!out) {
    free(ids);
    return td_errorf(err, TD_ENOMEM, "sampling: out of memory");
  }
  memcpy(out, o->prompt, plen);
  size_t len = plen;
  for (size_t i = n - o->tokens; i < n; i++) {
    if (s->bytes)
      out[len++] = (char)ids[i];
    else
      len += utf8_put(s->vocab[ids[i]], out + len);
  }
  out[len] = 0;
  free(ids);
  *text = out;
  return TD_OK;
}
