/* Sampling from a language model's checkpoint (engine/sample.h): a small
 * GPT's checkpoint written with a vocabulary, its position-by-position
 * logits (the attention layers' key and value caches) against the
 * training forward over the same window, the text it samples (the
 * prompt continued, only characters of the vocabulary, the same for a
 * seed, another for another seed), and the refusals: a character outside
 * the vocabulary, an empty prompt, a temperature of 0, a checkpoint
 * without a vocabulary, a model that is not a sequence model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "jobspec.h"
#include "pbjson.h"
#include "plan.h"
#include "prng.h"
#include "sample.h"

static const char *gpt_yaml =
    "name: tiny-gpt\n"
    "model:\n"
    "  input_shape: [8]\n"
    "  layers:\n"
    "    - {name: tok, embed: {num_embeddings: 12, features: 16}}\n"
    "    - {name: pos, position_embedding: {}}\n"
    "    - name: h\n"
    "      repeat:\n"
    "        count: 2\n"
    "        layers:\n"
    "          - {name: ln1, layer_norm: {}}\n"
    "          - {name: attn, causal_self_attention: {num_heads: 4, dropout_rate: 0.1}}\n"
    "          - {name: r1, add: {}, inputs: [h, attn]}\n"
    "          - {name: ln2, layer_norm: {}}\n"
    "          - {name: fc, dense: {features: 32}}\n"
    "          - {gelu: {}}\n"
    "          - {name: proj, dense: {features: 16}}\n"
    "          - {name: r2, add: {}, inputs: [r1, proj]}\n"
    "    - {name: ln_f, layer_norm: {}}\n"
    "    - {name: head, dense: {features: 12}}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer: {chain: [{adamw: {learning_rate: {constant: 0.001}}}]}\n"
    "dataset: {text: {file: none.txt}}\n"
    "training: {epochs: 1, batch_size: 1}\n";

/* The vocabulary: ten characters, one of them two bytes in UTF-8. */
static const uint32_t vocab[10] = {'\n', ' ', 'A', 'E', 'M', 'O', 'R', 'a', 'e', 0xe9};

/* Writes a checkpoint of the model in yaml with random parameters (scaled
 * up, so that the attention weights are far from uniform) to path. */
static int write_ckpt(const char *yaml, const char *path, int with_vocab, td_plan **plan_out,
                      td_state *st, td_backend **be) {
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_jobspec_parse(yaml, strlen(yaml), &spec, &err);
  CHECK(rc == 0, "spec: %s", err.msg);
  if (rc)
    return rc;
  rc = td_plan_compile(spec->model, spec->optimizer, 1, "cpu:0", plan_out, &err);
  CHECK(rc == 0, "compile: %s", err.msg);
  if (!rc)
    rc = td_cpu_backend_create(be, 1, &err);
  if (!rc)
    rc = td_state_init(st, *plan_out, *be, &err);
  if (!rc)
    rc = td_state_init_params(st, td_prng_key(5), &err);
  if (!rc) {
    for (size_t i = 0; i < (*plan_out)->n_params; i++)
      st->params[i] *= 3.0f;
    char *json = pbjson_emit(&spec->base, PBJSON_PROTO_NAMES);
    st->step = 7;
    td_ckpt_meta m = {.step = 7, .epoch = 1, .root_key = td_prng_key(0), .spec_json = json};
    if (with_vocab) {
      m.vocab = vocab;
      m.n_vocab = 10;
    }
    rc = td_ckpt_write(path, st, &m, &err);
    CHECK(rc == 0, "write: %s", err.msg);
    free(json);
  }
  td_jobspec_free(spec);
  return rc;
}

static void check_logits(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/gpt.h5", dir);
  td_plan *p = NULL;
  td_state st;
  td_backend *be = NULL;
  if (write_ckpt(gpt_yaml, path, 1, &p, &st, &be))
    return;
  td_error err = {0};
  td_sampler *s = NULL;
  CHECK(td_sampler_open(path, &s, &err) == 0, "open: %s", err.msg);
  if (s) {
    CHECK(td_sampler_step(s) == 7, "step %lld", (long long)td_sampler_step(s));
    const uint32_t ids[8] = {2, 6, 5, 4, 3, 5, 1, 9};
    float *got = malloc(sizeof(float) * 8 * p->out_dim);
    CHECK(td_sampler_logits(s, ids, 8, got, &err) == 0, "%s", err.msg);
    /* The training forward (evaluation mode: no dropout) over the window. */
    float *x = st.arena + p->in_off;
    for (int i = 0; i < 8; i++)
      x[i] = (float)ids[i];
    CHECK(td_state_forward(&st, 1, 0, NULL, 0, &err) == 0, "%s", err.msg);
    const float *want = st.arena + p->out_off;
    double num = 0, den = 0;
    for (size_t i = 0; i < 8 * (size_t)p->out_dim; i++) {
      num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
      den += (double)want[i] * want[i];
    }
    double rel = sqrt(num / den);
    CHECK(rel < 1e-5, "cached logits differ from the full forward by %.3g", rel);
    printf("cached vs full-window logits: relative error %.3g\n", rel);
    /* A shorter window: the same values at its positions. */
    float *got5 = malloc(sizeof(float) * 5 * p->out_dim);
    CHECK(td_sampler_logits(s, ids, 5, got5, &err) == 0, "%s", err.msg);
    CHECK(memcmp(got5, got, sizeof(float) * 5 * p->out_dim) == 0,
          "positions 0..4 differ between a 5- and an 8-token run");
    free(got5);
    free(got);

    /* Sampling: beyond the window (8) to exercise the cache's restart. */
    td_sample_opts o = {.prompt = "ROMEO:", .tokens = 40, .temperature = 0.8, .seed = 3};
    char *a = NULL, *b = NULL, *c = NULL;
    CHECK(td_sampler_run(s, &o, &a, &err) != 0, "':' is not in the vocabulary, yet sampled");
    CHECK(strstr(err.msg, "':'") && strstr(err.msg, "vocabulary"), "message: %s", err.msg);
    o.prompt = "ROMEO é";
    CHECK(td_sampler_run(s, &o, &a, &err) == 0, "%s", err.msg);
    CHECK(td_sampler_run(s, &o, &b, &err) == 0, "%s", err.msg);
    o.seed = 4;
    o.top_k = 3;
    CHECK(td_sampler_run(s, &o, &c, &err) == 0, "%s", err.msg);
    if (a && b && c) {
      CHECK(strncmp(a, "ROMEO é", strlen("ROMEO é")) == 0,
            "the text does not start with the "
            "prompt: %s",
            a);
      CHECK(strcmp(a, b) == 0, "one seed, two texts:\n%s\n%s", a, b);
      CHECK(strcmp(a, c) != 0, "another seed and top_k gave the same text: %s", a);
      /* Only the vocabulary's characters, 40 of them after the prompt. */
      int n = 0, bad = 0;
      for (const unsigned char *q = (const unsigned char *)a + strlen("ROMEO é"); *q;) {
        uint32_t cp = *q;
        if (cp == 0xc3 && q[1] == 0xa9) {
          cp = 0xe9;
          q += 2;
        } else {
          q++;
        }
        int in = 0;
        for (int v = 0; v < 10; v++)
          in |= vocab[v] == cp;
        bad += !in;
        n++;
      }
      CHECK(n == 40 && bad == 0, "%d characters generated, %d outside the vocabulary", n, bad);
    }
    free(a);
    free(b);
    free(c);
    o.prompt = "";
    CHECK(td_sampler_run(s, &o, &a, &err) == TD_EINVAL && strstr(err.msg, "empty"), "%s", err.msg);
    o.prompt = "A";
    o.temperature = 0.0;
    CHECK(td_sampler_run(s, &o, &a, &err) == TD_EINVAL && strstr(err.msg, "temperature"), "%s",
          err.msg);
    td_sampler_free(s);
  }
  td_state_free(&st);
  td_backend_destroy(be);
  td_plan_free(p);
}

static void check_refusals(const char *dir) {
  char path[4096];
  td_plan *p = NULL;
  td_state st;
  td_backend *be = NULL;
  td_error err = {0};
  td_sampler *s = NULL;
  /* No vocabulary. */
  snprintf(path, sizeof path, "%s/novocab.h5", dir);
  if (!write_ckpt(gpt_yaml, path, 0, &p, &st, &be)) {
    int rc = td_sampler_open(path, &s, &err);
    CHECK(rc == TD_EUNSUPPORTED && strstr(err.msg, "vocab"), "no vocabulary: rc %d %s", rc,
          err.msg);
    td_state_free(&st);
  }
  td_backend_destroy(be);
  td_plan_free(p);
  /* An MLP. */
  static const char *mlp =
      "model: {input_shape: [4], loss: SOFTMAX_CROSS_ENTROPY, layers: [{dense: {features: 3}}]}\n"
      "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.1}}}]}\n"
      "dataset: {idx: {dir: none}}\n"
      "training: {epochs: 1, batch_size: 1}\n";
  snprintf(path, sizeof path, "%s/mlp.h5", dir);
  p = NULL;
  be = NULL;
  if (!write_ckpt(mlp, path, 1, &p, &st, &be)) {
    int rc = td_sampler_open(path, &s, &err);
    CHECK(rc == TD_EUNSUPPORTED && strstr(err.msg, "language model"), "an MLP: rc %d %s", rc,
          err.msg);
    td_state_free(&st);
  }
  td_backend_destroy(be);
  td_plan_free(p);
}

int main(void) {
  char dir[] = "/tmp/td_sample_XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  check_logits(dir);
  check_refusals(dir);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  return td_check_exit();
}
