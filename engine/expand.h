/* Repeats: a model's repeated blocks (Layer.repeat) written out as the
 * flat list of layers the compiler reads.
 *
 * A repeat layer R with count N and block layers X1..Xm becomes N * m
 * layers, copy k (from 0) of block layer X named "R.k.X", in the order
 * copy 0 (X1..Xm), copy 1, ... Inside the block, `inputs` that name a
 * block layer mean that layer of the same copy, and R means the block's
 * input: for copy 0, what R reads (its `inputs`, or the layer before it);
 * for a later copy, the output of the copy before. A first block layer
 * without inputs reads the block's input, another the block layer before
 * it. Names of layers outside the block ("input" included) keep their
 * meaning. Outside, R (in `inputs` or model.output) means the last copy's
 * last layer, "R.<N-1>.<Xm>". Repeats nest: a block may hold a repeat,
 * expanded copy by copy ("R.k.S.j.Y").
 *
 * Names: a block layer without a name is called "<kind>_<index>" by its
 * kind (the `oneof kind` field: dense, layer_norm, ...) and its index in
 * the block (from 0): "dense_1". A layer of the model (outside every block)
 * that has parameters and no name gets the name the compiler would give it
 * in the model as written, "layerK", K counting the model's layers with
 * parameters (a repeat is not one); so the numbering is the same with or
 * without repeats elsewhere in the model. When a block names R and R reads
 * a layer that has no name (an activation before it), that layer is named
 * "R.in" (R the outermost repeat). The expanded list is the model the
 * compiler sees: initializer keys and dropout indices count its layers.
 * docs/job-spec.md, "Repeat", is the user's description. */
#ifndef TD_EXPAND_H
#define TD_EXPAND_H

#include "error.h"
#include "traind/v1/job.pb-c.h"

/* The most layers a model may have once its repeats are expanded. */
#define TD_EXPAND_MAX_LAYERS 100000
/* The longest name of an expanded layer (the compiler's limit for every
 * layer name; a norm's, an embedding's or an attention layer's is shorter,
 * so that its parameters' paths fit). */
#define TD_EXPAND_NAME_MAX 60

/* A model whose layers hold no repeat: *out = (Traind__V1__Model *)m and
 * *owned = NULL. Otherwise *out = *owned = a new model, owned by the
 * caller and freed with td_model_expanded_free, a complete message tree of
 * its own (nothing shared with m) in which every repeat is expanded; m is
 * not changed. TD_EINVAL names the field to fix (a repeat's count of 0,
 * an empty block, a repeat without a name or with more than one input, a
 * name with '.' or used twice (in a block; a repeat's among the model's
 * layers), an expanded name over its limit, more than TD_EXPAND_MAX_LAYERS
 * layers); then *out = *owned = NULL. The names and inputs the expanded
 * layers have are left to the compiler to check, as in any model. */
int td_model_expand(const Traind__V1__Model *m, Traind__V1__Model **out, Traind__V1__Model **owned,
                    td_error *err);
/* Frees a model made by td_model_expand (NULL: nothing). */
void td_model_expanded_free(Traind__V1__Model *m);

#endif
