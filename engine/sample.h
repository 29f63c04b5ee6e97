/* Text from a language model: a checkpoint of a job trained on a text
 * dataset, its model run token by token on the host with a cache of every
 * attention layer's keys and values, so that each new token costs one
 * position's work. Models of embed, position_embedding, layer_norm,
 * causal_self_attention, dense, activation, dropout (inactive) and add
 * layers can be sampled; the vocabulary comes from the checkpoint's
 * /vocab. */
#ifndef TD_SAMPLE_H
#define TD_SAMPLE_H

#include <stdint.h>

#include "error.h"

typedef struct td_sampler td_sampler;

/* The most tokens one call generates. */
#define TD_SAMPLE_MAX_TOKENS 10000
/* The longest prompt, in bytes. */
#define TD_SAMPLE_MAX_PROMPT 65536

typedef struct td_sample_opts {
  const char *prompt; /* UTF-8 (characters) or bytes; every token in the vocabulary */
  uint32_t tokens;    /* to generate, 1..TD_SAMPLE_MAX_TOKENS */
  double temperature; /* > 0: logits / temperature */
  uint32_t top_k;     /* 0: every token; else only the k likeliest */
  uint64_t seed;      /* token i draws uniform(fold_in(key(seed), i)) */
} td_sample_opts;

/* Loads the checkpoint at path (validated as td_ckpt_read does) with its
 * job spec and vocabulary. TD_EUNSUPPORTED for a model that is not a
 * sequence model of the layers above or a file without /vocab. */
int td_sampler_open(const char *path, td_sampler **out, td_error *err);
void td_sampler_free(td_sampler *s);
/* The step of the parameters loaded. */
int64_t td_sampler_step(const td_sampler *s);

/* The prompt followed by o->tokens generated tokens, as text (malloc'd,
 * NUL-terminated; bytes as they are). The same options give the same
 * text. While the window (the model's input_shape [T]) is not full, each
 * token sees every token before it; once it is, the cache starts again
 * from the last T/2 tokens. TD_EINVAL for an empty prompt, a character
 * not in the vocabulary (naming it and its place), or options out of
 * range. */
int td_sampler_run(td_sampler *s, const td_sample_opts *o, char **text, td_error *err);

/* The output's logits (n, the model's outputs) at positions 0..n-1 of
 * the token ids `ids` (n <= the window), by the cached position-by-position
 * path the sampler runs: the values a training forward over the same
 * window gives at each position. */
int td_sampler_logits(td_sampler *s, const uint32_t *ids, uint32_t n, float *logits, td_error *err);

#endif
