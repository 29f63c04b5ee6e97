/* Repeats (engine/expand.c): job files with `repeat` layers parsed as
 * traind parses them, expanded, and the result's layers (kind, name,
 * inputs) compared with the list written out by hand from the rules in
 * docs/job-spec.md; one expansion is also compared byte for byte (packed)
 * with the same model written flat, and one is compiled. Every error names
 * its field. Runs under the sanitizers: nothing may leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "expand.h"
#include "jobspec.h"
#include "plan.h"

static const char *rest_yaml = "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.1}}}]}\n"
                               "dataset: {idx: {dir: none}}\n"
                               "training: {epochs: 1, batch_size: 4}\n";

/* A job whose model is model_yaml (a "model:" block), parsed and checked
 * as a job file is. NULL (a failed check) when it does not parse. */
static Traind__V1__JobSpec *parse(const char *label, const char *model_yaml) {
  size_t len = strlen(model_yaml) + strlen(rest_yaml) + 1;
  char *doc = malloc(len);
  snprintf(doc, len, "%s%s", model_yaml, rest_yaml);
  Traind__V1__JobSpec *spec = NULL;
  td_error err = {0};
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  CHECK(rc == 0, "%s: parse: %s", label, err.msg);
  free(doc);
  return rc ? NULL : spec;
}

static const char *kind_of(const Traind__V1__Layer *l) {
  if (l->kind_case == TRAIND__V1__LAYER__KIND__NOT_SET)
    return "?";
  return protobuf_c_message_descriptor_get_field(&traind__v1__layer__descriptor,
                                                 (unsigned)l->kind_case)
      ->name;
}

/* The layers as "name:kind<-in1,in2" separated by spaces ("-" for no
 * name), then " out=<output>" when the model names one. */
static char *summary(const Traind__V1__Model *m) {
  size_t cap = 256, len = 0;
  char *s = malloc(cap);
  s[0] = 0;
  for (size_t i = 0; i <= m->n_layers; i++) {
    char item[1024];
    int k;
    if (i == m->n_layers) {
      if (!m->output || !*m->output)
        break;
      k = snprintf(item, sizeof item, " out=%s", m->output);
    } else {
      const Traind__V1__Layer *l = m->layers[i];
      k = snprintf(item, sizeof item, "%s%s:%s<-", i ? " " : "", *l->name ? l->name : "-",
                   kind_of(l));
      for (size_t j = 0; j < l->n_inputs; j++)
        k += snprintf(item + k, sizeof item - (size_t)k, "%s%s", j ? "," : "", l->inputs[j]);
    }
    while (len + (size_t)k + 1 > cap)
      s = realloc(s, cap *= 2);
    memcpy(s + len, item, (size_t)k + 1);
    len += (size_t)k;
  }
  return s;
}

static uint8_t *packed(const Traind__V1__Model *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(&m->base);
  uint8_t *b = malloc(*len ? *len : 1);
  protobuf_c_message_pack(&m->base, b);
  return b;
}

/* Expands model_yaml and compares the result with want (a summary). Also:
 * a new model was made (*owned), and the parsed one is unchanged. */
static void check_expand(const char *label, const char *model_yaml, const char *want) {
  Traind__V1__JobSpec *spec = parse(label, model_yaml);
  if (!spec)
    return;
  size_t len0, len1;
  uint8_t *before = packed(spec->model, &len0);
  Traind__V1__Model *out = NULL, *owned = NULL;
  td_error err = {0};
  int rc = td_model_expand(spec->model, &out, &owned, &err);
  CHECK(rc == 0, "%s: expand: %s", label, err.msg);
  if (!rc) {
    CHECK(out && out == owned && out != spec->model, "%s: a new model (out %p, owned %p)", label,
          (void *)out, (void *)owned);
    char *got = summary(out);
    CHECK(strcmp(got, want) == 0, "%s:\n  got  %s\n  want %s", label, got, want);
    free(got);
  }
  uint8_t *after = packed(spec->model, &len1);
  CHECK(len0 == len1 && memcmp(before, after, len0) == 0, "%s: the parsed model was changed",
        label);
  free(before);
  free(after);
  td_model_expanded_free(owned);
  td_jobspec_free(spec);
}

/* Expanding model_yaml fails with TD_EINVAL and a message holding want. */
static void check_error(const char *label, const char *model_yaml, const char *want) {
  Traind__V1__JobSpec *spec = parse(label, model_yaml);
  if (!spec)
    return;
  Traind__V1__Model *out = (Traind__V1__Model *)1, *owned = (Traind__V1__Model *)1;
  td_error err = {0};
  int rc = td_model_expand(spec->model, &out, &owned, &err);
  CHECK(rc == TD_EINVAL, "%s: rc %d (%s), want TD_EINVAL", label, rc, err.msg);
  CHECK(!out && !owned, "%s: out and owned are NULL after an error", label);
  CHECK_STR_CONTAINS(err.msg, want);
  if (rc == 0)
    td_model_expanded_free(owned);
  else
    printf("%s: %s\n", label, err.msg);
  td_jobspec_free(spec);
}

#define HEAD "model:\n  input_shape: [8]\n  loss: SOFTMAX_CROSS_ENTROPY\n  layers:\n"

static void test_no_repeat(void) {
  Traind__V1__JobSpec *spec = parse("plain", HEAD "    - {dense: {features: 8}}\n"
                                                  "    - {relu: {}}\n"
                                                  "    - {dense: {features: 4}}\n");
  if (!spec)
    return;
  Traind__V1__Model *out = NULL, *owned = (Traind__V1__Model *)1;
  td_error err = {0};
  int rc = td_model_expand(spec->model, &out, &owned, &err);
  CHECK(rc == 0, "plain: %s", err.msg);
  CHECK(out == spec->model && owned == NULL, "plain: the model itself (out %p, owned %p)",
        (void *)out, (void *)owned);
  td_jobspec_free(spec);
}

/* A pre-norm residual block, twice: within a copy, `blk` is the block's
 * input; copy 1 reads copy 0's output; the unnamed head keeps the name it
 * has in the model as written (layer2: stem is layer1's place). */
static const char *residual_yaml = HEAD "    - {name: stem, dense: {features: 8}}\n"
                                        "    - name: blk\n"
                                        "      repeat:\n"
                                        "        count: 2\n"
                                        "        layers:\n"
                                        "          - {name: ln, layer_norm: {}}\n"
                                        "          - {name: fc, dense: {features: 8}}\n"
                                        "          - {name: res, add: {}, inputs: [blk, fc]}\n"
                                        "    - {dense: {features: 4}}\n";

static void test_residual(void) {
  check_expand("residual", residual_yaml,
               "stem:dense<- blk.0.ln:layer_norm<- blk.0.fc:dense<- "
               "blk.0.res:add<-stem,blk.0.fc blk.1.ln:layer_norm<-blk.0.res blk.1.fc:dense<- "
               "blk.1.res:add<-blk.0.res,blk.1.fc layer2:dense<-");
}

/* docs/job-spec.md's example (Repeat). */
static void test_doc_example(void) {
  char want[2048];
  int k = snprintf(want, sizeof want, "stem:dense<-");
  for (int c = 0; c < 4; c++) {
    char prev[32];
    if (c)
      snprintf(prev, sizeof prev, "block.%d.res", c - 1);
    else
      snprintf(prev, sizeof prev, "stem");
    k += snprintf(want + k, sizeof want - (size_t)k,
                  " block.%d.ln:layer_norm<-%s block.%d.fc:dense<- block.%d.act:gelu<- "
                  "block.%d.res:add<-block.%d.act,%s",
                  c, c ? prev : "", c, c, c, c, prev);
  }
  snprintf(want + k, sizeof want - (size_t)k, " layer2:dense<-");
  check_expand("doc example",
               "model:\n  input_shape: [784]\n  loss: SOFTMAX_CROSS_ENTROPY\n"
               "  layers:\n"
               "    - {name: stem, dense: {features: 256}}\n"
               "    - name: block\n"
               "      repeat:\n"
               "        count: 4\n"
               "        layers:\n"
               "          - {name: ln, layer_norm: {}}\n"
               "          - {name: fc, dense: {features: 256}}\n"
               "          - {name: act, gelu: {}}\n"
               "          - {name: res, add: {}, inputs: [act, block]}\n"
               "    - {dense: {features: 10}}\n",
               want);
}

/* The same expansion as the same model written flat, byte for byte: every
 * other field of each layer (features, initializers, ...) and of the
 * model is copied. */
static void test_residual_equals_flat(void) {
  const char *flat = "model:\n  input_shape: [8]\n  loss: SOFTMAX_CROSS_ENTROPY\n"
                     "  layers:\n"
                     "    - {name: stem, dense: {features: 8}}\n"
                     "    - {name: blk.0.ln, layer_norm: {epsilon: 0.001}}\n"
                     "    - {name: blk.0.fc, dense: {features: 8, kernel_init: HE_NORMAL}}\n"
                     "    - {name: blk.0.res, add: {}, inputs: [stem, blk.0.fc]}\n"
                     "    - {name: blk.1.ln, layer_norm: {epsilon: 0.001}, inputs: [blk.0.res]}\n"
                     "    - {name: blk.1.fc, dense: {features: 8, kernel_init: HE_NORMAL}}\n"
                     "    - {name: blk.1.res, add: {}, inputs: [blk.0.res, blk.1.fc]}\n"
                     "    - {name: layer2, dense: {features: 4, use_bias: false}}\n"
                     "  output: blk.1.res\n";
  const char *rep = "model:\n  input_shape: [8]\n  loss: SOFTMAX_CROSS_ENTROPY\n"
                    "  layers:\n"
                    "    - {name: stem, dense: {features: 8}}\n"
                    "    - name: blk\n"
                    "      repeat:\n"
                    "        count: 2\n"
                    "        layers:\n"
                    "          - {name: ln, layer_norm: {epsilon: 0.001}}\n"
                    "          - {name: fc, dense: {features: 8, kernel_init: HE_NORMAL}}\n"
                    "          - {name: res, add: {}, inputs: [blk, fc]}\n"
                    "    - {dense: {features: 4, use_bias: false}}\n"
                    "  output: blk\n";
  Traind__V1__JobSpec *a = parse("flat", flat), *b = parse("repeat", rep);
  Traind__V1__Model *out = NULL, *owned = NULL;
  td_error err = {0};
  if (a && b) {
    int rc = td_model_expand(b->model, &out, &owned, &err);
    CHECK(rc == 0, "equals flat: %s", err.msg);
  }
  if (owned) {
    size_t la, lb;
    uint8_t *pa = packed(a->model, &la), *pb = packed(out, &lb);
    char *sa = summary(a->model), *sb = summary(out);
    CHECK(la == lb && memcmp(pa, pb, la) == 0,
          "equals flat: the packed models differ (%zu and %zu bytes):\n  flat     %s\n  "
          "expanded %s",
          la, lb, sa, sb);
    free(pa);
    free(pb);
    free(sa);
    free(sb);
  }
  td_model_expanded_free(owned);
  td_jobspec_free(a);
  td_jobspec_free(b);
}

/* Unnamed block layers are <kind>_<index>; a repeat with inputs feeds
 * them to copy 0; outer layers that name R read its last copy's output. */
static void test_defaults_and_outer_refs(void) {
  check_expand("defaults",
               HEAD "    - {name: a, dense: {features: 8}}\n"
                    "    - {relu: {}}\n"
                    "    - name: R\n"
                    "      inputs: [a]\n"
                    "      repeat:\n"
                    "        count: 3\n"
                    "        layers: [{dense: {features: 8}}, {relu: {}}]\n"
                    "    - {name: cat, concatenate: {}, inputs: [R, a]}\n"
                    "    - {dense: {features: 4}}\n",
               "a:dense<- -:relu<- R.0.dense_0:dense<-a R.0.relu_1:relu<- "
               "R.1.dense_0:dense<-R.0.relu_1 R.1.relu_1:relu<- R.2.dense_0:dense<-R.1.relu_1 "
               "R.2.relu_1:relu<- cat:concatenate<-R.2.relu_1,a layer2:dense<-");
  /* layerK counts the model's layers with parameters as written: the
   * repeat and its copies are not counted, and an outer `layer3` still
   * names the third. */
  check_expand("layerK",
               HEAD "    - {dense: {features: 8}}\n"
                    "    - {name: R, repeat: {count: 2, layers: [{dense: {features: 8}}]}}\n"
                    "    - {layer_norm: {}}\n"
                    "    - {dense: {features: 8}, inputs: [layer2]}\n"
                    "    - {name: s, add: {}, inputs: [layer3, R]}\n",
               "layer1:dense<- R.0.dense_0:dense<- R.1.dense_0:dense<-R.0.dense_0 "
               "layer2:layer_norm<- layer3:dense<-layer2 s:add<-layer3,R.1.dense_0");
}

/* model.output naming R; a block naming R where R reads an unnamed layer
 * (it is named R.in) and where R is the model's first layer (input). */
static void test_output_and_block_input(void) {
  check_expand("output",
               HEAD "    - {name: R, repeat: {count: 2, layers: [{name: d, dense: "
                    "{features: 8}}, {name: t, tanh: {}}]}}\n"
                    "    - {name: side, dense: {features: 4}}\n"
                    "  output: R\n",
               "R.0.d:dense<- R.0.t:tanh<- R.1.d:dense<-R.0.t R.1.t:tanh<- side:dense<- "
               "out=R.1.t");
  check_expand("block input unnamed",
               HEAD "    - {dense: {features: 8}}\n"
                    "    - {relu: {}}\n"
                    "    - name: R\n"
                    "      repeat:\n"
                    "        count: 2\n"
                    "        layers:\n"
                    "          - {name: f, dense: {features: 8}}\n"
                    "          - {name: s, add: {}, inputs: [f, R]}\n",
               "layer1:dense<- R.in:relu<- R.0.f:dense<- R.0.s:add<-R.0.f,R.in "
               "R.1.f:dense<-R.0.s R.1.s:add<-R.1.f,R.0.s");
  check_expand("block input unnamed, nested",
               HEAD "    - {dense: {features: 8}}\n"
                    "    - {relu: {}}\n"
                    "    - name: R\n"
                    "      repeat:\n"
                    "        count: 2\n"
                    "        layers:\n"
                    "          - name: S\n"
                    "            repeat: {count: 1, layers: [{name: "
                    "f, dense: {features: 8}}, {name: s, add: {}, "
                    "inputs: [f, S]}]}\n",
               "layer1:dense<- R.in:relu<- R.0.S.0.f:dense<- R.0.S.0.s:add<-R.0.S.0.f,R.in "
               "R.1.S.0.f:dense<-R.0.S.0.s R.1.S.0.s:add<-R.1.S.0.f,R.0.S.0.s");
  check_expand("block input is the model's",
               HEAD "    - name: R\n"
                    "      repeat:\n"
                    "        count: 2\n"
                    "        layers:\n"
                    "          - {name: f, dense: {features: 8}}\n"
                    "          - {name: s, add: {}, inputs: [f, R]}\n",
               "R.0.f:dense<- R.0.s:add<-R.0.f,input R.1.f:dense<-R.0.s R.1.s:add<-R.1.f,R.0.s");
}

/* Repeats inside repeats: names compose (A.k.B.j.X); inside B, B is B's
 * input and A is A's; a block layer after B that names B reads B's last
 * copy; a later repeat's block names an earlier repeat of the model. */
static void test_nested(void) {
  check_expand("nested",
               HEAD "    - name: A\n"
                    "      repeat:\n"
                    "        count: 2\n"
                    "        layers:\n"
                    "          - {name: pre, dense: {features: 8}}\n"
                    "          - name: B\n"
                    "            repeat:\n"
                    "              count: 2\n"
                    "              layers:\n"
                    "                - {name: f, dense: {features: 8}}\n"
                    "                - {name: s, add: {}, inputs: [f, B, A]}\n"
                    "          - {name: post, add: {}, inputs: [B, pre, A]}\n"
                    "    - {name: head, dense: {features: 4}, inputs: [A]}\n"
                    "  output: head\n",
               "A.0.pre:dense<- A.0.B.0.f:dense<- A.0.B.0.s:add<-A.0.B.0.f,A.0.pre,input "
               "A.0.B.1.f:dense<-A.0.B.0.s A.0.B.1.s:add<-A.0.B.1.f,A.0.B.0.s,input "
               "A.0.post:add<-A.0.B.1.s,A.0.pre,input A.1.pre:dense<-A.0.post "
               "A.1.B.0.f:dense<- A.1.B.0.s:add<-A.1.B.0.f,A.1.pre,A.0.post "
               "A.1.B.1.f:dense<-A.1.B.0.s A.1.B.1.s:add<-A.1.B.1.f,A.1.B.0.s,A.0.post "
               "A.1.post:add<-A.1.B.1.s,A.1.pre,A.0.post head:dense<-A.1.post out=head");
  /* A repeat first in a block whose repeat reads a named layer: copy 0 of
   * the inner block reads it too; the output is the innermost last layer. */
  check_expand("nested first",
               HEAD "    - {name: x, dense: {features: 8}}\n"
                    "    - {name: y, dense: {features: 8}}\n"
                    "    - name: A\n"
                    "      inputs: [x]\n"
                    "      repeat:\n"
                    "        count: 2\n"
                    "        layers:\n"
                    "          - name: B\n"
                    "            repeat: {count: 1, layers: [{name: f, dense: "
                    "{features: 8}}, {name: g, add: {}, inputs: [f, y]}]}\n"
                    "  output: A\n",
               "x:dense<- y:dense<- A.0.B.0.f:dense<-x A.0.B.0.g:add<-A.0.B.0.f,y "
               "A.1.B.0.f:dense<-A.0.B.0.g A.1.B.0.g:add<-A.1.B.0.f,y out=A.1.B.0.g");
  check_expand("repeat names repeat",
               HEAD "    - {name: P, repeat: {count: 2, layers: [{name: "
                    "d, dense: {features: 8}}]}}\n"
                    "    - {name: mid, relu: {}}\n"
                    "    - {name: Q, repeat: {count: 2, layers: [{name: "
                    "s, add: {}, inputs: [Q, P]}]}}\n"
                    "    - {name: head, dense: {features: 4}, inputs: [Q]}\n",
               "P.0.d:dense<- P.1.d:dense<-P.0.d mid:relu<- Q.0.s:add<-mid,P.1.d "
               "Q.1.s:add<-Q.0.s,P.1.d head:dense<-Q.1.s");
}

/* The size limit exactly: 100000 layers expand, 100001 do not. */
static void test_size(void) {
  Traind__V1__JobSpec *spec =
      parse("100000", HEAD "    - {name: R, repeat: {count: 99999, layers: [{relu: {}}]}}\n"
                           "    - {dense: {features: 4}}\n");
  if (spec) {
    Traind__V1__Model *out = NULL, *owned = NULL;
    td_error err = {0};
    int rc = td_model_expand(spec->model, &out, &owned, &err);
    CHECK(rc == 0, "100000: %s", err.msg);
    if (!rc) {
      CHECK(out->n_layers == TD_EXPAND_MAX_LAYERS, "100000: %zu layers", out->n_layers);
      CHECK(strcmp(out->layers[99998]->name, "R.99998.relu_0") == 0, "100000: %s",
            out->layers[99998]->name);
      CHECK(out->layers[99998]->n_inputs == 1 &&
                strcmp(out->layers[99998]->inputs[0], "R.99997.relu_0") == 0,
            "100000: the last copy reads the one before");
      CHECK(out->layers[0]->n_inputs == 0, "100000: copy 0 reads the model's input");
      CHECK(out->layers[5]->n_inputs == 1 && strcmp(out->layers[5]->inputs[0], "R.4.relu_0") == 0,
            "100000: copy 5 reads copy 4");
      CHECK(strcmp(out->layers[99999]->name, "layer1") == 0, "100000: %s",
            out->layers[99999]->name);
    }
    td_model_expanded_free(owned);
    td_jobspec_free(spec);
  }
  check_error("100001",
              HEAD "    - {dense: {features: 4}}\n"
                   "    - {name: R, repeat: {count: 100000, layers: [{relu: {}}]}}\n",
              "model.layers[1].repeat.count: with this repeat's 100000 layers the model has more "
              "than 100000");
  check_error("nested size",
              HEAD "    - name: A\n"
                   "      repeat:\n"
                   "        count: 1000\n"
                   "        layers:\n"
                   "          - {name: B, repeat: {count: 1000, layers: [{relu: "
                   "{}}]}}\n",
              "model.layers[0].repeat.count: 1000 copies of its block (1000 layers each) make "
              "1000000 layers");
  check_error("sum size",
              HEAD "    - {name: P, repeat: {count: 60000, layers: [{relu: {}}]}}\n"
                   "    - {name: Q, repeat: {count: 60000, layers: [{relu: {}}]}}\n",
              "model.layers[1].repeat.count");
  check_error("huge",
              HEAD "    - {name: A, repeat: {count: 4294967295, layers: [{name: B, "
                   "repeat: {count: 4294967295, layers: [{relu: {}}]}}]}}\n",
              "model.layers[0].repeat.layers[0].repeat.count");
}

/* Names: the longest copy's name counts ("R.10.X" is one longer than
 * "R.9.X"); norms allow 57 characters. */
static void test_name_length(void) {
  char r52[53], doc[1024];
  memset(r52, 'r', 52);
  r52[52] = 0;
  snprintf(doc, sizeof doc,
           HEAD "    - {name: %s, repeat: {count: 10, layers: [{name: abcde, dense: {features: "
                "8}}]}}\n",
           r52);
  Traind__V1__JobSpec *spec = parse("60 characters", doc);
  if (spec) {
    Traind__V1__Model *out = NULL, *owned = NULL;
    td_error err = {0};
    int rc = td_model_expand(spec->model, &out, &owned, &err);
    CHECK(rc == 0, "60 characters: %s", err.msg);
    if (!rc)
      CHECK(strlen(out->layers[9]->name) == 60, "60 characters: '%s'", out->layers[9]->name);
    td_model_expanded_free(owned);
    td_jobspec_free(spec);
  }
  char want[160];
  snprintf(doc, sizeof doc,
           HEAD
           "    - {name: %s, repeat: {count: 11, layers: [{name: a, dense: {features: 8}}, {name: "
           "abcde, dense: {features: 8}}]}}\n",
           r52);
  snprintf(want, sizeof want,
           "model.layers[0].repeat.layers[1].name: the last copy of this "
           "layer is named '%s.10.abcde', 61 characters",
           r52);
  check_error("61 characters", doc, want);
  snprintf(doc, sizeof doc,
           HEAD "    - {name: %s, repeat: {count: 2, layers: [{name: abc, layer_norm: {}}]}}\n",
           r52);
  check_error("norm name", doc, "a layer_norm layer's name may have at most 57");
}

static void test_errors(void) {
  check_error("count 0",
              HEAD "    - {dense: {features: 8}}\n"
                   "    - {name: R, repeat: {count: 0, layers: [{relu: {}}]}}\n",
              "model.layers[1].repeat.count: must be at least 1");
  check_error("count unset", HEAD "    - {name: R, repeat: {layers: [{relu: {}}]}}\n",
              "model.layers[0].repeat.count: must be at least 1");
  check_error("nested count 0",
              HEAD "    - name: R\n"
                   "      repeat:\n"
                   "        count: 2\n"
                   "        layers:\n"
                   "          - {relu: {}}\n"
                   "          - {name: S, repeat: {count: 0, layers: [{relu: "
                   "{}}]}}\n",
              "model.layers[0].repeat.layers[1].repeat.count: must be at least 1");
  check_error("empty block", HEAD "    - {name: R, repeat: {count: 3, layers: []}}\n",
              "model.layers[0].repeat.layers: the block is empty");
  check_error("no name",
              HEAD "    - {dense: {features: 8}}\n"
                   "    - {repeat: {count: 3, layers: [{relu: {}}]}}\n",
              "model.layers[1].name: a repeat needs a name");
  check_error("nested no name",
              HEAD "    - name: R\n"
                   "      repeat: {count: 2, layers: [{repeat: {count: 2, "
                   "layers: [{relu: {}}]}}]}\n",
              "model.layers[0].repeat.layers[0].name: a repeat needs a name");
  check_error("dot in block name",
              HEAD "    - name: R\n"
                   "      repeat: {count: 2, layers: [{relu: {}}, {name: "
                   "a.b, dense: {features: 8}}]}\n",
              "model.layers[0].repeat.layers[1].name: 'a.b' has a '.'");
  check_error("dot in repeat name",
              HEAD "    - {name: a.b, repeat: {count: 2, layers: [{relu: "
                   "{}}]}}\n",
              "model.layers[0].name: 'a.b' has a '.'");
  check_error("bad character",
              HEAD "    - name: R\n"
                   "      repeat: {count: 2, layers: [{name: 'a/b', relu: {}}]}\n",
              "model.layers[0].repeat.layers[0].name: 'a/b' may use only letters, digits");
  check_error("duplicate",
              HEAD "    - name: R\n"
                   "      repeat: {count: 2, layers: [{name: x, dense: {features: "
                   "8}}, {relu: {}}, {name: x, relu: {}}]}\n",
              "model.layers[0].repeat.layers[2].name: 'x' is also the name of "
              "model.layers[0].repeat.layers[0]; give each layer of the block its own name");
  check_error("duplicate default",
              HEAD "    - name: R\n"
                   "      repeat: {count: 2, layers: [{name: dense_1, relu: "
                   "{}}, {dense: {features: 8}}]}\n",
              "model.layers[0].repeat.layers[1].name: 'dense_1' is also the name of "
              "model.layers[0].repeat.layers[0] (a block layer without a name is called "
              "<kind>_<index>)");
  check_error("block layer named as the repeat",
              HEAD "    - name: R\n"
                   "      repeat: {count: 2, layers: [{name: R, dense: {features: 8}}]}\n",
              "model.layers[0].repeat.layers[0].name: 'R' is the repeat's own name");
  check_error("block layer named input",
              HEAD "    - name: R\n"
                   "      repeat: {count: 2, layers: [{name: input, dense: {features: 8}}]}\n",
              "model.layers[0].repeat.layers[0].name: 'input' names the model's input");
  check_error("repeat named input",
              HEAD "    - {name: input, repeat: {count: 2, layers: [{relu: {}}]}}\n",
              "model.layers[0].name: 'input' names the model's input");
  check_error("repeat named as a layer",
              HEAD "    - {dense: {features: 8}}\n"
                   "    - {name: layer1, repeat: {count: 2, layers: "
                   "[{relu: {}}]}}\n",
              "model.layers[1].name: 'layer1' is also the name of model.layers[0]");
  check_error("two repeats, one name",
              HEAD "    - {name: R, repeat: {count: 2, layers: [{relu: {}}]}}\n"
                   "    - {name: R, repeat: {count: 2, layers: [{relu: {}}]}}\n",
              "model.layers[1].name: 'R' is also the name of model.layers[0]");
  check_error("two inputs",
              HEAD "    - {name: a, dense: {features: 8}}\n"
                   "    - {name: R, inputs: [a, input], repeat: {count: 2, layers: "
                   "[{relu: {}}]}}\n",
              "model.layers[1].inputs: 2 inputs; a repeat takes one");
}

/* An expanded model compiles: three copies of dense + relu with a
 * residual add, between an unnamed stem and head. Each copy has its own
 * parameters, R.k.fc/w (16, 16) and R.k.fc/b (16); the stem and head keep
 * layer1 and layer2; copy k's add reads copy k's dense (its relu fused
 * into it) and copy k-1's add (the stem for copy 0). */
static void test_compile(void) {
  Traind__V1__JobSpec *spec =
      parse("compile", "model:\n  input_shape: [6]\n  loss: SOFTMAX_CROSS_ENTROPY\n  layers:\n"
                       "    - {dense: {features: 16}}\n"
                       "    - name: R\n"
                       "      repeat:\n"
                       "        count: 3\n"
                       "        layers:\n"
                       "          - {name: fc, dense: {features: 16}}\n"
                       "          - {name: act, relu: {}}\n"
                       "          - {name: res, add: {}, inputs: [act, R]}\n"
                       "    - {dense: {features: 3}}\n");
  if (!spec)
    return;
  Traind__V1__Model *out = NULL, *owned = NULL;
  td_plan *p = NULL;
  td_error err = {0};
  int rc = td_model_expand(spec->model, &out, &owned, &err);
  CHECK(rc == 0, "compile: expand: %s", err.msg);
  if (!rc) {
    rc = td_plan_compile(out, spec->optimizer, 4, "cpu:0", &p, &err);
    CHECK(rc == 0, "compile: %s", err.msg);
  }
  if (!rc) {
    CHECK(p->n_views == 10, "compile: %zu views, want 10", p->n_views);
    static const struct {
      const char *name;
      uint32_t ndim, d0, d1;
    } want[] = {{"layer1/w", 2, 6, 16},  {"layer1/b", 1, 16, 0},  {"R.0.fc/w", 2, 16, 16},
                {"R.0.fc/b", 1, 16, 0},  {"R.1.fc/w", 2, 16, 16}, {"R.1.fc/b", 1, 16, 0},
                {"R.2.fc/w", 2, 16, 16}, {"R.2.fc/b", 1, 16, 0},  {"layer2/w", 2, 16, 3},
                {"layer2/b", 1, 3, 0}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
      size_t v = td_plan_find_view(p, want[i].name);
      CHECK(v != TD_NONE, "compile: no view %s", want[i].name);
      if (v == TD_NONE)
        continue;
      const td_view *w = &p->views[v];
      CHECK(w->ndim == want[i].ndim && w->shape[0] == want[i].d0 &&
                (w->ndim < 2 || w->shape[1] == want[i].d1),
            "compile: %s has ndim %u shape (%u, %u)", want[i].name, w->ndim, w->shape[0],
            w->shape[1]);
    }
    CHECK(td_plan_find_view(p, "R.3.fc/w") == TD_NONE, "compile: a fourth copy");
    CHECK(td_plan_find_view(p, "R.fc/w") == TD_NONE, "compile: an unexpanded name");
    /* The graph: each add's inputs, by node name. */
    for (uint32_t k = 0; k < 3; k++) {
      char res[32], fc[32], act[32], prev[32];
      snprintf(res, sizeof res, "R.%u.res", k);
      snprintf(fc, sizeof fc, "R.%u.fc", k);
      snprintf(act, sizeof act, "R.%u.act", k);
      if (k)
        snprintf(prev, sizeof prev, "R.%u.res", k - 1);
      else
        snprintf(prev, sizeof prev, "layer1");
      const td_node *add = NULL;
      for (size_t i = 0; i < p->n_nodes; i++)
        if (strcmp(p->nodes[i].name, res) == 0)
          add = &p->nodes[i];
      CHECK(add && add->op == TD_OP_ADD && add->n_in == 2, "compile: no add node %s", res);
      if (!add || add->n_in != 2 || add->in[0] < 0 || add->in[1] < 0)
        continue;
      const char *a = p->nodes[add->in[0]].name, *b = p->nodes[add->in[1]].name;
      CHECK((strcmp(a, fc) == 0 || strcmp(a, act) == 0) && strcmp(b, prev) == 0,
            "compile: %s reads %s and %s, want %s and %s", res, a, b, fc, prev);
    }
  }
  td_plan_free(p);
  td_model_expanded_free(owned);
  td_jobspec_free(spec);
}

int main(void) {
  test_no_repeat();
  test_residual();
  test_residual_equals_flat();
  test_doc_example();
  test_defaults_and_outer_refs();
  test_output_and_block_input();
  test_nested();
  test_size();
  test_name_length();
  test_errors();
  test_compile();
  return td_check_exit();
}
