/* Compiling a model into a step plan, the compile cache, and running the
 * plan's forward, loss and backward on a backend. */
#include "plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "expand.h"
#include "ops.h"

/* ----------------------------------------------------------- compile */

/* Builds the signature: the packed model and optimizer messages (protobuf-c
 * packs fields in a fixed order, so equal messages give equal bytes), the
 * batch and the device set. */
static uint8_t *make_signature(const Traind__V1__Model *model, const Traind__V1__Optimizer *opt,
                               uint32_t batch, const char *device_set, unsigned flags,
                               size_t *len) {
  size_t nm = traind__v1__model__get_packed_size(model);
  size_t no = traind__v1__optimizer__get_packed_size(opt);
  size_t nd = strlen(device_set);
  size_t n = 3 * sizeof(uint64_t) + sizeof batch + sizeof flags + nm + no + nd;
  uint8_t *sig = malloc(n), *p = sig;
  if (!sig)
    return NULL;
  uint64_t lens[3] = {nm, no, nd};
  memcpy(p, lens, sizeof lens);
  p += sizeof lens;
  memcpy(p, &batch, sizeof batch);
  p += sizeof batch;
  memcpy(p, &flags, sizeof flags);
  p += sizeof flags;
  traind__v1__model__pack(model, p);
  p += nm;
  traind__v1__optimizer__pack(opt, p);
  p += no;
  memcpy(p, device_set, nd);
  *len = n;
  return sig;
}

size_t td_shape_size(const td_shape *s) {
  size_t n = 1;
  for (uint32_t i = 0; i < s->rank; i++)
    n *= s->d[i];
  return n;
}

const char *td_shape_str(const td_shape *s, char *buf, size_t len) {
  size_t o = (size_t)snprintf(buf, len, "(");
  for (uint32_t i = 0; i < s->rank && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%u", i ? ", " : "", s->d[i]);
  if (o < len)
    snprintf(buf + o, len - o, s->rank == 1 ? ",)" : ")");
  return buf;
}

/* The names of a model's layers while it compiles: an open-addressing set
 * of node indices (plus one; 0 is empty), at most half full, so that each
 * name is found in constant time. */
typedef struct name_set {
  uint32_t *slots;
  size_t mask;
} name_set;

static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* The node called name, or -1. */
static int32_t name_find(const name_set *ns, const td_node *nodes, const char *name) {
  for (size_t k = name_hash(name) & ns->mask;; k = (k + 1) & ns->mask) {
    if (!ns->slots[k])
      return -1;
    if (strcmp(nodes[ns->slots[k] - 1].name, name) == 0)
      return (int32_t)ns->slots[k] - 1;
  }
}

static void name_add(name_set *ns, const td_node *nodes, uint32_t i) {
  size_t k = name_hash(nodes[i].name) & ns->mask;
  while (ns->slots[k])
    k = (k + 1) & ns->mask;
  ns->slots[k] = i + 1;
}

static int valid_name(const char *s) {
  if (!*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
    return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '_' || *s == '-' || *s == '.'))
      return 0;
  return 1;
}

/* The name that refers to the model's input in `inputs`. */
#define INPUT_NAME "input"

struct td_compile {
  td_plan *p;
  const Traind__V1__Model *m;
  td_node *nodes; /* one per layer, in the spec's order */
  size_t n;
  int *named; /* (n) whether a node's name can be referred to */
  name_set names;
  int32_t *order; /* the program: node indices in topological order */
  int32_t *root;  /* (n) whose buffer a node's output is: itself, or for an alias the
                     root of its input (-1: the step's input) */
  size_t n_order;
};

/* A view name "<layer>/<leaf>" that does not fit TD_VIEW_NAME_MAX: the
 * message gives the longest name this leaf allows (57 characters for a
 * norm's "scale", where read_layers admits 60 for every layer). */
static int name_too_long(const td_node *n, const char *leaf, td_error *err) {
  return td_errorf(err, TD_EINVAL,
                   "model.layers[%u].name: %zu characters are too many for its parameter "
                   "'%s/%s'; give this layer a name of at most %zu characters",
                   n->spec_index, strlen(n->name), n->name, leaf,
                   TD_VIEW_NAME_MAX - 2 - strlen(leaf));
}

int td_compile_param(td_compile *c, const td_node *n, const char *leaf, uint32_t d0, uint32_t d1,
                     uint32_t ndim, size_t *index, td_error *err) {
  const uint32_t dims[2] = {d0, d1};
  return td_compile_tensor(c, n, leaf, dims, ndim, index, err);
}

int td_compile_tensor(td_compile *c, const td_node *n, const char *leaf, const uint32_t *dims,
                      uint32_t ndim, size_t *index, td_error *err) {
  td_plan *p = c->p;
  td_view *v = &p->views[p->n_views];
  int k = snprintf(v->name, sizeof v->name, "%s/%s", n->name, leaf);
  if (k < 0 || (size_t)k >= sizeof v->name)
    return name_too_long(n, leaf, err);
  v->ndim = ndim;
  double size = 1.0;
  for (uint32_t i = 0; i < TD_MAX_RANK; i++) {
    v->shape[i] = i < ndim ? dims[i] : 0;
    if (i < ndim)
      size *= dims[i];
  }
  if (size + (double)p->n_params > (double)TD_PLAN_MAX_PARAMS)
    return td_errorf(err, TD_EINVAL,
                     "model: with %s (%.0f values) the model has more than 2^31 parameters; make "
                     "the layers smaller",
                     v->name, size);
  v->size = (size_t)size;
  /* Each tensor starts on a 16-float boundary so that vector loops over
   * one tensor start aligned. */
  v->offset = (p->n_params + 15) & ~(size_t)15;
  p->n_params = v->offset + v->size;
  *index = p->n_views++;
  return TD_OK;
}

int td_compile_stats(td_compile *c, const td_node *n, uint32_t channels, size_t *index,
                     td_error *err) {
  td_plan *p = c->p;
  size_t at = (p->n_stats + 15) & ~(size_t)15;
  for (int i = 0; i < 2; i++) {
    td_view *v = &p->stat_views[p->n_stat_views + i];
    int k = snprintf(v->name, sizeof v->name, "%s/%s", n->name, i ? "var" : "mean");
    if (k < 0 || (size_t)k >= sizeof v->name)
      return name_too_long(n, i ? "var" : "mean", err);
    v->ndim = 1;
    v->shape[0] = channels;
    v->size = channels;
    v->offset = at + (size_t)i * channels;
  }
  p->n_stats = at + 2 * (size_t)channels;
  *index = p->n_stat_views;
  p->n_stat_views += 2;
  return TD_OK;
}

uint32_t td_compile_batch(const td_compile *c) { return c->p->batch; }

/* Whether a layer of this op has parameters (and so a default name and
 * an initializer key). */
static int op_has_params(td_op op) {
  return op == TD_OP_DENSE || op == TD_OP_CONV || op == TD_OP_BATCH_NORM ||
         op == TD_OP_LAYER_NORM || op == TD_OP_EMBED || op == TD_OP_POS_EMBED ||
         op == TD_OP_ATTENTION;
}

/* How a layer is called in messages: "model.layers[3] ('block1')". */
static const char *layer_ref(const td_compile *c, size_t i, char *buf, size_t len) {
  if (c->named[i])
    snprintf(buf, len, "model.layers[%zu] ('%s')", i, c->nodes[i].name);
  else
    snprintf(buf, len, "model.layers[%zu]", i);
  return buf;
}

/* Reads every layer into a node: its op's fields, its name (explicit, or
 * layerN for the N-th layer with parameters), and its inputs by name. */
static int read_layers(td_compile *c, td_error *err) {
  const Traind__V1__Model *m = c->m;
  uint32_t dense = 0, with_params = 0;
  char ref[TD_VIEW_NAME_MAX + 48];
  for (size_t i = 0; i < c->n; i++) {
    const Traind__V1__Layer *l = m->layers[i];
    td_node *n = &c->nodes[i];
    n->spec_index = (uint32_t)i;
    n->w_view = n->b_view = n->w2_view = n->b2_view = TD_NONE;
    n->positions = 1;
    int op = td_op_of_layer(l);
    if (op < 0)
      return td_errorf(err, TD_EINVAL,
                       "model.layers[%zu]: set one of: dense, conv, max_pool, avg_pool, "
                       "global_avg_pool, batch_norm, layer_norm, embed, position_embedding, "
                       "causal_self_attention, repeat, relu, gelu, tanh, sigmoid, dropout, add, "
                       "flatten, reshape, concatenate",
                       i);
    n->op = (td_op)op;
    dense += n->op == TD_OP_DENSE;
    if (op_has_params(n->op))
      n->ordinal = with_params++;
    if (l->name && *l->name) {
      if (!valid_name(l->name))
        return td_errorf(err, TD_EINVAL,
                         "model.layers[%zu].name: '%.64s' may use only letters, digits, '_', "
                         "'-' and '.'",
                         i, l->name);
      if (strlen(l->name) > TD_VIEW_NAME_MAX - 4)
        return td_errorf(err, TD_EINVAL, "model.layers[%zu].name: longer than %d characters", i,
                         TD_VIEW_NAME_MAX - 4);
      if (strcmp(l->name, INPUT_NAME) == 0)
        return td_errorf(err, TD_EINVAL,
                         "model.layers[%zu].name: '" INPUT_NAME "' names the model's input in "
                         "inputs; give the layer another name",
                         i);
      snprintf(n->name, sizeof n->name, "%s", l->name);
      c->named[i] = 1;
    } else if (op_has_params(n->op)) {
      snprintf(n->name, sizeof n->name, "layer%u", n->ordinal + 1);
      c->named[i] = 1;
    } else {
      snprintf(n->name, sizeof n->name, "model.layers[%zu]", i);
    }
    if (c->named[i]) {
      int32_t other = name_find(&c->names, c->nodes, n->name);
      if (other >= 0)
        return td_errorf(err, TD_EINVAL,
                         "model.layers: two layers are both named '%s' (model.layers[%d] and "
                         "model.layers[%zu]); give each layer its own name",
                         n->name, other, i);
      name_add(&c->names, c->nodes, (uint32_t)i);
    }
    int rc = td_op_table[n->op].build(n, l, err);
    if (rc)
      return rc;
  }
  /* The inputs, now that every name is known. */
  for (size_t i = 0; i < c->n; i++) {
    const Traind__V1__Layer *l = m->layers[i];
    td_node *n = &c->nodes[i];
    const td_op_row *row = &td_op_table[n->op];
    if (l->n_inputs == 0) {
      n->n_in = 1;
      n->in[0] = (int32_t)i - 1; /* the layer before, or the input */
    } else {
      if (l->n_inputs > TD_MAX_INPUTS)
        return td_errorf(err, TD_EINVAL, "%s.inputs: %zu inputs; at most %d",
                         layer_ref(c, i, ref, sizeof ref), l->n_inputs, TD_MAX_INPUTS);
      n->n_in = (uint32_t)l->n_inputs;
      for (size_t k = 0; k < l->n_inputs; k++) {
        const char *want = l->inputs[k];
        int32_t src = strcmp(want, INPUT_NAME) == 0 ? -1 : name_find(&c->names, c->nodes, want);
        if (src < 0 && strcmp(want, INPUT_NAME) != 0)
          return td_errorf(err, TD_EINVAL,
                           "%s.inputs[%zu]: no layer is named '%.64s'; name a layer of the "
                           "model (or '" INPUT_NAME "' for the model's input)",
                           layer_ref(c, i, ref, sizeof ref), k, want);
        if (src == (int32_t)i)
          return td_errorf(err, TD_EINVAL,
                           "%s.inputs[%zu]: a layer cannot take its own output (a cycle)",
                           layer_ref(c, i, ref, sizeof ref), k);
        n->in[k] = src;
      }
    }
    if (n->n_in < row->min_in || n->n_in > row->max_in) {
      if (row->min_in == row->max_in)
        return td_errorf(err, TD_EINVAL, "%s: %s takes %u input%s, not %u",
                         layer_ref(c, i, ref, sizeof ref), row->name, row->min_in,
                         row->min_in == 1 ? "" : "s", n->n_in);
      return td_errorf(err, TD_EINVAL, "%s: %s takes %u to %u inputs, not %u; list them in inputs",
                       layer_ref(c, i, ref, sizeof ref), row->name, row->min_in, row->max_in,
                       n->n_in);
    }
  }
  if (dense == 0)
    return td_errorf(err, TD_EINVAL, "model.layers: the model needs at least one dense layer");
  return TD_OK;
}

/* The program: the nodes the output depends on, in an order where every
 * node comes after its inputs (depth first from the output, inputs in
 * their order, so a sequential model keeps its order). A cycle and a
 * layer the output does not use are errors naming the layers. */
static int order_nodes(td_compile *c, size_t out, td_error *err) {
  enum { WHITE = 0, GRAY, BLACK };
  unsigned char *color = calloc(c->n, 1);
  struct frame {
    uint32_t node, next;
  } *stack = malloc(c->n * sizeof *stack);
  c->order = malloc(c->n * sizeof *c->order);
  if (!color || !stack || !c->order) {
    free(color);
    free(stack);
    return td_errorf(err, TD_ENOMEM, "compile: out of memory");
  }
  char ref[TD_VIEW_NAME_MAX + 48], ref2[TD_VIEW_NAME_MAX + 48];
  int rc = TD_OK;
  size_t top = 0;
  stack[top++] = (struct frame){(uint32_t)out, 0};
  color[out] = GRAY;
  while (top && !rc) {
    struct frame *f = &stack[top - 1];
    const td_node *n = &c->nodes[f->node];
    if (f->next == n->n_in) {
      color[f->node] = BLACK;
      c->order[c->n_order++] = (int32_t)f->node;
      top--;
      continue;
    }
    int32_t src = n->in[f->next++];
    if (src < 0 || color[src] == BLACK)
      continue;
    if (color[src] == GRAY) {
      /* The stack from src up to here is the cycle. */
      rc = td_errorf(err, TD_EINVAL,
                     "model.layers: the inputs make a cycle: %s takes %s, which depends on it; a "
                     "layer may take only layers that do not depend on it",
                     layer_ref(c, f->node, ref, sizeof ref),
                     layer_ref(c, (size_t)src, ref2, sizeof ref2));
      break;
    }
    color[src] = GRAY;
    stack[top++] = (struct frame){(uint32_t)src, 0};
  }
  for (size_t i = 0; i < c->n && !rc; i++)
    if (color[i] != BLACK)
      rc = td_errorf(err, TD_EINVAL,
                     "%s: its output is not used (the model's output, %s, does not depend on "
                     "it); remove the layer or name it in another layer's inputs",
                     layer_ref(c, i, ref, sizeof ref), layer_ref(c, out, ref2, sizeof ref2));
  free(color);
  free(stack);
  return rc;
}

/* Consumers of each node, counted. */
static void count_uses(const td_compile *c, uint32_t *uses) {
  memset(uses, 0, c->n * sizeof *uses);
  for (size_t k = 0; k < c->n_order; k++) {
    const td_node *n = &c->nodes[c->order[k]];
    for (uint32_t i = 0; i < n->n_in; i++)
      if (n->in[i] >= 0)
        uses[n->in[i]]++;
  }
}

/* Fusion: an activation whose one input is a dense or conv layer that
 * feeds nothing else becomes that layer's fused activation; the activation's
 * consumers read the dense node, which takes its place in the program.
 * Returns the (possibly new) output node. */
static size_t fuse(td_compile *c, size_t out, const uint32_t *uses) {
  int32_t *repl = malloc(c->n * sizeof *repl);
  if (!repl)
    return out; /* no fusion: still correct */
  for (size_t i = 0; i < c->n; i++)
    repl[i] = (int32_t)i;
  size_t w = 0;
  for (size_t k = 0; k < c->n_order; k++) {
    int32_t i = c->order[k];
    td_node *n = &c->nodes[i];
    int32_t src = n->in[0];
    if (n->op == TD_OP_ACT && src >= 0 &&
        (c->nodes[src].op == TD_OP_DENSE || c->nodes[src].op == TD_OP_CONV) &&
        c->nodes[src].act == TD_ACT_NONE && uses[src] == 1) {
      c->nodes[src].act = n->act;
      repl[i] = src;
      continue;
    }
    c->order[w++] = i;
  }
  c->n_order = w;
  for (size_t k = 0; k < c->n_order; k++) {
    td_node *n = &c->nodes[c->order[k]];
    for (uint32_t i = 0; i < n->n_in; i++)
      if (n->in[i] >= 0)
        n->in[i] = repl[n->in[i]];
  }
  out = (size_t)repl[out];
  free(repl);
  return out;
}

/* One buffer of the arena and its life in the step's program: forward of
 * node k at time k, the loss at n, backward of node k at 2n - k. */
typedef struct buf {
  size_t *off; /* where its offset goes */
  size_t floats;
  uint32_t from, to;
} buf;

static int buf_by_start(const void *a, const void *b) {
  const buf *x = a, *y = b;
  if (x->from != y->from)
    return x->from < y->from ? -1 : 1;
  return x->to < y->to ? -1 : x->to > y->to;
}

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* A free range of the arena. */
typedef struct span {
  size_t at, len;
} span;

/* Places the buffers in order of their starts: at each start the buffers
 * whose lives have ended give back their ranges (kept sorted and merged),
 * and the new one takes the first free range that holds it, else the end
 * of the arena (growing a free range that reaches the end). Buffers alive
 * at the same time never overlap. O(n log n + n f) for f free ranges. */
static int place(buf *bs, size_t nb, size_t base, size_t *end_out) {
  qsort(bs, nb, sizeof *bs, buf_by_start);
  span *fr = malloc((nb + 1) * sizeof *fr);
  size_t *live = malloc((nb + 1) * sizeof *live); /* indices into bs, a min-heap on .to */
  if (!fr || !live) {
    free(fr);
    free(live);
    return TD_ENOMEM;
  }
  size_t nf = 0, nl = 0, end = base;
  for (size_t i = 0; i < nb; i++) {
    /* Give back the ranges of buffers dead before this one starts. */
    while (nl && bs[live[0]].to < bs[i].from) {
      const buf *d = &bs[live[0]];
      span g = {*d->off, round16(d->floats)};
      live[0] = live[--nl];
      for (size_t k = 0;;) { /* sift down */
        size_t l = 2 * k + 1, r = l + 1, m = k;
        if (l < nl && bs[live[l]].to < bs[live[m]].to)
          m = l;
        if (r < nl && bs[live[r]].to < bs[live[m]].to)
          m = r;
        if (m == k)
          break;
        size_t t = live[k];
        live[k] = live[m];
        live[m] = t;
        k = m;
      }
      size_t k = 0;
      while (k < nf && fr[k].at < g.at)
        k++;
      memmove(fr + k + 1, fr + k, (nf - k) * sizeof *fr);
      fr[k] = g;
      nf++;
      if (k + 1 < nf && fr[k].at + fr[k].len == fr[k + 1].at) { /* merge with the next */
        fr[k].len += fr[k + 1].len;
        memmove(fr + k + 1, fr + k + 2, (nf - k - 2) * sizeof *fr);
        nf--;
      }
      if (k > 0 && fr[k - 1].at + fr[k - 1].len == fr[k].at) { /* and with the one before */
        fr[k - 1].len += fr[k].len;
        memmove(fr + k, fr + k + 1, (nf - k - 1) * sizeof *fr);
        nf--;
      }
    }
    size_t sz = round16(bs[i].floats), k = 0;
    while (k < nf && fr[k].len < sz)
      k++;
    if (k < nf) {
      *bs[i].off = fr[k].at;
      fr[k].at += sz;
      fr[k].len -= sz;
      if (!fr[k].len) {
        memmove(fr + k, fr + k + 1, (nf - k - 1) * sizeof *fr);
        nf--;
      }
    } else if (nf && fr[nf - 1].at + fr[nf - 1].len == end) {
      *bs[i].off = fr[nf - 1].at; /* the last free range, grown */
      end = fr[nf - 1].at + sz;
      nf--;
    } else {
      *bs[i].off = end;
      end += sz;
    }
    /* Into the heap of live buffers. */
    size_t c = nl++;
    live[c] = i;
    while (c && bs[live[(c - 1) / 2]].to > bs[live[c]].to) {
      size_t p = (c - 1) / 2, t = live[p];
      live[p] = live[c];
      live[c] = t;
      c = p;
    }
  }
  free(fr);
  free(live);
  *end_out = end;
  return TD_OK;
}

static int has_params(const td_node *n) { return n->w_view != TD_NONE || n->b_view != TD_NONE; }

/* fanout: whether a value feeds several layers (so that gradients are
 * summed, through the scratch buffer). */
static int plan_arena(td_compile *c, size_t out, int fanout, td_error *err) {
  td_plan *p = c->p;
  const size_t B = p->batch;
  const uint32_t T = (uint32_t)c->n_order; /* the loss's time */
  buf *bs = malloc(6 * c->n_order * sizeof *bs);
  if (!bs) {
    return td_errorf(err, TD_ENOMEM, "compile: out of memory");
  }
  /* Fixed: the step's input and labels, the scalars, the scratch. */
  uint32_t widest = p->in_dim;
  for (uint32_t k = 0; k < T; k++)
    if (c->nodes[c->order[k]].out > widest)
      widest = c->nodes[c->order[k]].out;
  size_t at = 0;
  p->in_off = at;
  at += round16(B * p->in_dim);
  p->labels_off = at;
  at += round16(B * p->positions);
  p->scalars_off = at;
  at += round16(TD_PLAN_SCALARS);
  p->scratch_off = at;
  if (fanout)
    at += round16(B * widest);
  /* Per-example gradients: the norms, the clip factors, the row-scaled
   * output gradient of the widest layer with parameters. */
  p->pe_acc_off = p->pe_factor_off = p->pe_rows_off = TD_NONE;
  if (p->per_example) {
    size_t rows = 0;
    for (uint32_t k = 0; k < T; k++) {
      const td_node *m = &c->nodes[c->order[k]];
      if (has_params(m) && m->out > rows)
        rows = m->out;
    }
    p->pe_acc_off = at;
    at += round16(2 * B);
    p->pe_factor_off = at;
    at += round16(B);
    p->pe_rows_off = at;
    at += round16(B * rows);
  }
  size_t fixed = at;
  /* With per-example gradients, the parameters' gradients come after the
   * whole backward pass, at time W: what they read lives to then. */
  const uint32_t W = 2 * T + 1;
  /* Each value's last read and its gradient's first write, from its
   * consumers: their forward, or their backward when they have one (it
   * reads their inputs and writes the inputs' gradients). */
  uint32_t *last_read = calloc(c->n, sizeof *last_read);
  uint32_t *first_grad = malloc(c->n * sizeof *first_grad);
  if (!last_read || !first_grad) {
    free(bs);
    free(last_read);
    free(first_grad);
    return td_errorf(err, TD_ENOMEM, "compile: out of memory");
  }
  for (uint32_t k = 0; k < T; k++) {
    const td_node *m = &c->nodes[c->order[k]];
    first_grad[c->order[k]] = UINT32_MAX;
    for (uint32_t i = 0; i < m->n_in; i++) {
      int32_t src = m->in[i] < 0 ? -1 : c->root[m->in[i]];
      if (src < 0)
        continue;
      uint32_t t = m->grad ? 2 * T - k : k;
      if (p->per_example && m->grad && has_params(m))
        t = W;
      if (t > last_read[src])
        last_read[src] = t;
      if (2 * T - k < first_grad[src])
        first_grad[src] = 2 * T - k;
    }
  }
  /* The loss reads the output's buffer and writes its gradient. */
  const int32_t out_root = c->root[out];
  size_t nb = 0;
  for (uint32_t k = 0; k < T; k++) {
    const int32_t id = c->order[k];
    td_node *n = &c->nodes[id];
    if (n->alias)
      continue; /* its input's buffers */
    const uint32_t fwd = k, bwd = 2 * T - k;
    const size_t cells = B * n->out;
    /* y: from its forward to its last read (its own backward, the loss). */
    uint32_t last = n->grad ? bwd : fwd;
    if (id == out_root && T > last)
      last = T;
    if (last_read[id] > last)
      last = last_read[id];
    bs[nb++] = (buf){&n->y, cells, fwd, last};
    if (n->has_z)
      bs[nb++] = (buf){&n->z, cells, fwd, bwd};
    if (n->has_mask)
      bs[nb++] = (buf){&n->mask, cells, fwd, bwd};
    const int late = p->per_example && n->grad && has_params(n);
    if (n->aux_floats)
      bs[nb++] = (buf){&n->aux, n->aux_floats, fwd, late ? W : n->grad ? bwd : fwd};
    if (n->tmp_floats && n->grad)
      bs[nb++] = (buf){&n->tmp, n->tmp_floats, bwd, bwd};
    if (n->grad) {
      /* dy: from the first consumer's backward (the loss for the output)
       * to its own. */
      uint32_t first = id == out_root ? T : first_grad[id];
      if (first > bwd)
        first = bwd;
      bs[nb++] = (buf){&n->dy, cells, first, late ? W : bwd};
    }
  }
  free(last_read);
  free(first_grad);
  size_t unplanned = fixed;
  for (size_t i = 0; i < nb; i++)
    unplanned += round16(bs[i].floats);
  p->unplanned_floats = unplanned;
  int rc = place(bs, nb, fixed, &p->arena_floats);
  free(bs);
  return rc ? td_errorf(err, TD_ENOMEM, "compile: out of memory") : TD_OK;
}

static int compile_graph(td_plan *p, const Traind__V1__Model *m, td_error *err) {
  td_compile c = {.p = p, .m = m, .n = m->n_layers};
  size_t n = c.n ? c.n : 1;
  c.nodes = calloc(n, sizeof *c.nodes);
  c.named = calloc(n, sizeof *c.named);
  c.root = calloc(n, sizeof *c.root);
  p->views = calloc(4 * n, sizeof *p->views); /* four parameters per layer at most */
  p->stat_views = calloc(2 * n, sizeof *p->stat_views);
  uint32_t *uses = calloc(n, sizeof *uses);
  c.names.mask = 1;
  while (c.names.mask + 1 < 2 * n)
    c.names.mask = c.names.mask * 2 + 1;
  c.names.slots = calloc(c.names.mask + 1, sizeof *c.names.slots);
  int rc = c.nodes && c.named && c.root && p->views && p->stat_views && uses && c.names.slots
               ? TD_OK
               : td_errorf(err, TD_ENOMEM, "compile: out of memory");
  if (!rc && c.n == 0)
    rc = td_errorf(err, TD_EINVAL, "model.layers: the model needs at least one dense layer");
  if (!rc)
    rc = read_layers(&c, err);
  size_t out = c.n ? c.n - 1 : 0;
  if (!rc && m->output && *m->output) {
    int32_t o = name_find(&c.names, c.nodes, m->output);
    if (o < 0)
      rc = td_errorf(err, TD_EINVAL,
                     "model.output: no layer is named '%.64s'; name a layer of "
                     "the model",
                     m->output);
    else
      out = (size_t)o;
  }
  if (!rc)
    rc = order_nodes(&c, out, err);
  if (!rc) {
    count_uses(&c, uses);
    out = fuse(&c, out, uses);
  }
  /* Shapes and parameters, in program order; then which gradients are
   * needed: a node's, when it has parameters or an input whose is. */
  for (size_t k = 0; !rc && k < c.n_order; k++) {
    td_node *nd = &c.nodes[c.order[k]];
    td_shape in[TD_MAX_INPUTS];
    for (uint32_t i = 0; i < nd->n_in; i++)
      in[i] = nd->in[i] < 0 ? p->in_shape : c.nodes[nd->in[i]].shape;
    rc = td_op_table[nd->op].shape(nd, in, err);
    if (!rc)
      rc = td_op_table[nd->op].params(&c, nd, err);
    if (rc)
      break;
    nd->grad = nd->w_view != TD_NONE || nd->b_view != TD_NONE;
    for (uint32_t i = 0; i < nd->n_in; i++)
      if (nd->in[i] >= 0 && c.nodes[nd->in[i]].grad)
        nd->grad = 1;
    p->flops += td_op_table[nd->op].flops(nd, p->batch);
    const int32_t id = c.order[k];
    c.root[id] = !nd->alias ? id : nd->in[0] < 0 ? -1 : c.root[nd->in[0]];
  }
  if (!rc && p->flops > TD_PLAN_MAX_STEP_FLOPS)
    rc = td_errorf(err, TD_EINVAL,
                   "model: a training step takes %.3g floating-point operations at "
                   "training.batch_size %u; at most %.0e (see docs/job-spec.md, Limits): make the "
                   "batch or the layers smaller",
                   p->flops, p->batch, TD_PLAN_MAX_STEP_FLOPS);
  if (!rc) {
    /* A sequence's output: a prediction (and a label) per position. */
    const td_node *o = &c.nodes[out];
    p->positions = o->shape.seq ? o->shape.d[0] : 1;
    p->out_dim = o->out / p->positions;
    for (size_t k = 0; k < c.n_order; k++) {
      const td_node *nd = &c.nodes[c.order[k]];
      if (nd->op == TD_OP_EMBED && (p->vocab == 0 || nd->vocab < p->vocab))
        p->vocab = nd->vocab;
    }
    int fanout = 0;
    for (size_t i = 0; i < c.n; i++)
      fanout |= uses[i] > 1;
    rc = plan_arena(&c, out, fanout, err);
  }
  if (!rc) {
    /* Bind every input and its gradient; in backward order, the first
     * consumer to reach a gradient writes it and the others add in. */
    unsigned char *written = calloc(c.n, 1);
    if (!written)
      rc = td_errorf(err, TD_ENOMEM, "compile: out of memory");
    for (size_t k = c.n_order; !rc && k-- > 0;) {
      td_node *nd = &c.nodes[c.order[k]];
      if (!nd->has_z)
        nd->z = nd->op == TD_OP_ACT ? TD_NONE : nd->y;
      if (!nd->has_mask)
        nd->mask = TD_NONE;
      if (!nd->aux_floats)
        nd->aux = TD_NONE;
      if (!nd->tmp_floats || !nd->grad)
        nd->tmp = TD_NONE;
      if (!nd->grad)
        nd->dy = TD_NONE;
      for (uint32_t i = 0; i < nd->n_in; i++) {
        int32_t src = nd->in[i] < 0 ? -1 : c.root[nd->in[i]];
        nd->x[i] = src < 0 ? p->in_off : c.nodes[src].y;
        nd->dx[i] = TD_NONE;
        nd->dx_acc[i] = 0;
        if (src >= 0 && c.nodes[src].grad && nd->grad) {
          nd->dx[i] = c.nodes[src].dy;
          nd->dx_acc[i] = written[src];
          written[src] = 1;
        }
      }
      if (nd->op == TD_OP_ACT)
        nd->z = nd->x[0]; /* the input is the pre-activation */
      if (nd->alias) {
        nd->y = nd->z = nd->x[0];
        nd->dy = nd->dx[0];
      }
    }
    free(written);
  }
  if (!rc) {
    p->out_off = c.nodes[out].y;
    p->dout_off = c.nodes[out].dy;
    p->nodes = malloc(c.n_order * sizeof *p->nodes);
    if (!p->nodes)
      rc = td_errorf(err, TD_ENOMEM, "compile: out of memory");
    /* The program's nodes; inputs renumbered to program positions. */
    int32_t *at = malloc(n * sizeof *at);
    if (!at && !rc)
      rc = td_errorf(err, TD_ENOMEM, "compile: out of memory");
    for (size_t k = 0; !rc && k < c.n_order; k++)
      at[c.order[k]] = (int32_t)k;
    for (size_t k = 0; !rc && k < c.n_order; k++) {
      td_node *nd = &p->nodes[k];
      *nd = c.nodes[c.order[k]];
      for (uint32_t i = 0; i < nd->n_in; i++)
        if (nd->in[i] >= 0)
          nd->in[i] = at[nd->in[i]];
      if (nd->op == TD_OP_DROPOUT || (nd->op == TD_OP_ATTENTION && nd->rate > 0.0f))
        nd->key_slot = p->n_keys++;
      /* A batch norm's statistics: in forward, and in backward when its
       * input's gradient is needed. */
      if (nd->op == TD_OP_BATCH_NORM)
        p->n_collectives += 1 + (nd->dx[0] != TD_NONE);
    }
    free(at);
    if (!rc)
      p->n_nodes = c.n_order;
  }
  free(c.nodes);
  free(c.named);
  free(c.root);
  free(c.names.slots);
  free(c.order);
  free(uses);
  return rc;
}

int td_plan_compile(const Traind__V1__Model *model, const Traind__V1__Optimizer *opt,
                    uint32_t batch, const char *device_set, td_plan **out, td_error *err) {
  return td_plan_compile_flags(model, opt, batch, device_set, 0, out, err);
}

/* The layers with parameters that per-example gradients cover; the others
 * are refused, saying why. */
static int check_per_example(const td_plan *p, td_error *err) {
  for (size_t i = 0; i < p->n_nodes; i++) {
    const td_node *n = &p->nodes[i];
    if (n->op == TD_OP_BATCH_NORM)
      return td_errorf(err, TD_EINVAL,
                       "%s: batch_norm mixes the examples of a batch (each example's output "
                       "depends on the others' through the batch statistics), so no example "
                       "has a gradient of its own (to clip or to report); training.dp_sgd and "
                       "training.per_example_report need layer_norm (or no normalization) "
                       "instead",
                       n->name);
    if (n->op == TD_OP_ATTENTION)
      return td_errorf(err, TD_EUNSUPPORTED,
                       "%s: causal_self_attention has no per-example gradient norms yet; "
                       "training.dp_sgd and training.per_example_report support dense, conv, "
                       "layer_norm, embed and position_embedding layers (and the layers "
                       "without parameters)",
                       n->name);
  }
  return TD_OK;
}

int td_plan_compile_flags(const Traind__V1__Model *model, const Traind__V1__Optimizer *opt,
                          uint32_t batch, const char *device_set, unsigned flags, td_plan **out,
                          td_error *err) {
  double t0 = td_mono_ms();
  *out = NULL;
  if (!model)
    return td_errorf(err, TD_EINVAL, "model: required");
  if (batch == 0)
    return td_errorf(err, TD_EINVAL, "training.batch_size: must be > 0");
  if (model->n_input_shape == 0)
    return td_errorf(err, TD_EINVAL, "model.input_shape: required (for example [784] or [28, 28])");
  uint64_t in_dim = 1;
  for (size_t i = 0; i < model->n_input_shape; i++) {
    if (model->input_shape[i] == 0)
      return td_errorf(err, TD_EINVAL, "model.input_shape[%zu]: must be > 0", i);
    in_dim *= model->input_shape[i];
    if (in_dim > (1u << 24))
      return td_errorf(err, TD_EINVAL, "model.input_shape: more than %u features per example",
                       1u << 24);
  }
  if (model->dtype != TRAIND__V1__DTYPE__DTYPE_UNSPECIFIED &&
      model->dtype != TRAIND__V1__DTYPE__FLOAT32)
    return td_errorf(err, TD_EINVAL, "model.dtype: only FLOAT32 is supported");

  td_plan *p = calloc(1, sizeof *p);
  if (!p)
    return td_errorf(err, TD_ENOMEM, "compile: out of memory");
  p->batch = batch;
  p->per_example = (flags & TD_PLAN_PER_EXAMPLE) != 0;
  p->in_dim = (uint32_t)in_dim;
  /* More dimensions than a shape holds: the values as one vector. */
  if (model->n_input_shape > TD_MAX_RANK) {
    p->in_shape = (td_shape){1, {(uint32_t)in_dim}, 0};
  } else {
    p->in_shape.rank = (uint32_t)model->n_input_shape;
    for (size_t i = 0; i < model->n_input_shape; i++)
      p->in_shape.d[i] = model->input_shape[i];
  }
  p->loss = model->loss;
  /* Repeated blocks written out; the signature stays the model as given. */
  Traind__V1__Model *flat = NULL, *owned = NULL;
  int rc = td_model_expand(model, &flat, &owned, err);
  if (!rc)
    rc = compile_graph(p, flat, err);
  td_model_expanded_free(owned);
  if (!rc) {
    if (p->loss == TRAIND__V1__LOSS__LOSS_UNSPECIFIED)
      rc = td_errorf(err, TD_EINVAL,
                     "model.loss: required (SOFTMAX_CROSS_ENTROPY or MEAN_SQUARED_ERROR)");
    else if (p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY && p->out_dim < 2)
      rc = td_errorf(err, TD_EINVAL,
                     "model.layers: SOFTMAX_CROSS_ENTROPY needs at least 2 "
                     "outputs, the last layer has %u",
                     p->out_dim);
  }
  if (!rc && p->per_example)
    rc = check_per_example(p, err);
  if (!rc && p->per_example)
    p->noise_slot = p->n_keys++;
  if (!rc)
    rc = td_optim_compile(opt, &p->optim, err);
  if (!rc) {
    /* The step record: slot, row0 and rows, the keys, then the passes'
     * scalars (8-byte aligned: they hold doubles). */
    p->rec_scalars_off = ((3 + 2 * (size_t)p->n_keys) * sizeof(uint32_t) + 7) & ~(size_t)7;
    p->rec_bytes = p->rec_scalars_off + (size_t)p->optim.n_stages * sizeof(td_opt_scalars);
  }
  if (!rc) {
    p->sig = make_signature(model, opt, batch, device_set ? device_set : "", flags, &p->sig_len);
    if (!p->sig)
      rc = td_errorf(err, TD_ENOMEM, "compile: out of memory");
  }
  if (rc) {
    td_plan_free(p);
    return rc;
  }
  p->compile_ms = td_mono_ms() - t0;
  *out = p;
  return TD_OK;
}

void td_plan_free(td_plan *p) {
  if (!p)
    return;
  free(p->sig);
  free(p->views);
  free(p->stat_views);
  free(p->nodes);
  free(p);
}

size_t td_plan_find_view(const td_plan *p, const char *name) {
  for (size_t i = 0; i < p->n_views; i++)
    if (strcmp(p->views[i].name, name) == 0)
      return i;
  return TD_NONE;
}

/* ------------------------------------------------------------- cache */

typedef struct td_plan_entry {
  struct td_plan_entry *next;
  td_plan *plan;
  int refs;
} td_plan_entry;

void td_plan_cache_init(td_plan_cache *c) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
}

void td_plan_cache_free(td_plan_cache *c) {
  td_plan_entry *e = c->head;
  while (e) {
    td_plan_entry *next = e->next;
    td_plan_free(e->plan);
    free(e);
    e = next;
  }
  c->head = NULL;
  pthread_mutex_destroy(&c->mu);
}

int td_plan_cache_get(td_plan_cache *c, const Traind__V1__Model *model,
                      const Traind__V1__Optimizer *opt, uint32_t batch, const char *device_set,
                      unsigned flags, const td_plan **out, int *hit, td_error *err) {
  /* Compiling is cheap next to a job, so compile outside the lock and
   * keep the first plan if two jobs race on one signature. */
  td_plan *fresh = NULL;
  int rc = td_plan_compile_flags(model, opt, batch, device_set, flags, &fresh, err);
  if (rc)
    return rc;
  pthread_mutex_lock(&c->mu);
  td_plan_entry *e = c->head;
  for (; e; e = e->next)
    if (e->plan->sig_len == fresh->sig_len && memcmp(e->plan->sig, fresh->sig, fresh->sig_len) == 0)
      break;
  if (e) {
    c->hits++;
    e->refs++;
    *hit = 1;
  } else {
    e = calloc(1, sizeof *e);
    if (!e) {
      pthread_mutex_unlock(&c->mu);
      td_plan_free(fresh);
      return td_errorf(err, TD_ENOMEM, "compile cache: out of memory");
    }
    e->plan = fresh;
    e->refs = 1;
    e->next = c->head;
    c->head = e;
    c->n_entries++;
    c->misses++;
    fresh = NULL;
    *hit = 0;
  }
  *out = e->plan;
  pthread_mutex_unlock(&c->mu);
  td_plan_free(fresh);
  return TD_OK;
}

void td_plan_cache_release(td_plan_cache *c, const td_plan *p) {
  pthread_mutex_lock(&c->mu);
  for (td_plan_entry *e = c->head; e; e = e->next)
    if (e->plan == p) {
      e->refs--;
      break;
    }
  pthread_mutex_unlock(&c->mu);
}

/* ------------------------------------------------------------- state */

int td_state_init(td_state *st, const td_plan *plan, td_backend *be, td_error *err) {
  memset(st, 0, sizeof *st);
  st->plan = plan;
  st->be = be;
  const td_backend_ops *ops = be->ops;
  size_t np = plan->n_params;
  st->params = ops->alloc(be, np * sizeof(float));
  st->grads = ops->alloc(be, np * sizeof(float));
  st->opt_state = ops->alloc(be, (plan->optim.state_slots * np + 1) * sizeof(float));
  st->arena = ops->alloc(be, plan->arena_floats * sizeof(float));
  st->stats = plan->n_stats ? ops->alloc(be, plan->n_stats * sizeof(float)) : NULL;
  st->kernels = calloc(plan->n_nodes ? plan->n_nodes : 1, sizeof *st->kernels);
  if (!st->params || !st->grads || !st->opt_state || !st->arena || (plan->n_stats && !st->stats) ||
      !st->kernels) {
    td_state_free(st);
    return td_errorf(
        err, TD_ENOMEM, "%s backend: cannot allocate %.1f MiB of buffers", ops->name,
        (double)((2 + plan->optim.state_slots) * np + plan->arena_floats + plan->n_stats) * 4.0 /
            (1024.0 * 1024.0));
  }
  /* The kernels the ops prepare on this backend. */
  for (size_t i = 0; i < plan->n_nodes; i++) {
    const td_node *n = &plan->nodes[i];
    const td_op_row *row = &td_op_table[n->op];
    int rc = row->prepare ? row->prepare(st, n, &st->kernels[i], err) : TD_OK;
    if (rc) {
      td_state_free(st);
      return rc;
    }
  }
  return TD_OK;
}

void td_state_free(td_state *st) {
  if (!st->be)
    return;
  const td_backend_ops *ops = st->be->ops;
  for (size_t i = 0; st->kernels && i < st->plan->n_nodes; i++)
    if (st->kernels[i])
      ops->kernel_free(st->be, st->kernels[i]);
  free(st->kernels);
  if (st->stats)
    ops->release(st->be, st->stats);
  ops->release(st->be, st->params);
  ops->release(st->be, st->grads);
  ops->release(st->be, st->opt_state);
  ops->release(st->be, st->arena);
  memset(st, 0, sizeof *st);
}

int td_state_init_params(td_state *st, td_key key, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  float *h = calloc(p->n_params ? p->n_params : 1, sizeof *h);
  if (!h)
    return td_errorf(err, TD_ENOMEM, "init: out of memory");
  /* Each layer with parameters draws from fold_in(key, its ordinal). */
  for (size_t i = 0; i < p->n_nodes; i++) {
    const td_node *n = &p->nodes[i];
    if (n->w_view != TD_NONE || n->b_view != TD_NONE)
      td_op_table[n->op].init(p, n, td_prng_fold_in(key, n->ordinal), h);
  }
  int rc = ops->upload(st->be, st->params, h, p->n_params * sizeof *h);
  free(h);
  /* Running statistics start at mean 0, variance 1 (Flax's). */
  for (size_t i = 0; !rc && i < p->n_stat_views; i++) {
    const td_view *v = &p->stat_views[i];
    rc = ops->fill(st->be, st->stats + v->offset, v->size, i % 2 ? 1.0f : 0.0f);
  }
  if (!rc)
    rc = ops->fill(st->be, st->opt_state, p->optim.state_slots * p->n_params, 0.0f);
  if (rc)
    return td_errorf(err, rc, "init: upload of parameters failed");
  st->step = 0;
  return TD_OK;
}

#define CALL(expr, what)                                                                           \
  do {                                                                                             \
    int rc_ = (expr);                                                                              \
    if (rc_)                                                                                       \
      return td_errorf(err, rc_, "%s backend: %s failed (%s)", ops->name, what, td_strerror(rc_)); \
  } while (0)

void td_plan_dropout_keys(const td_plan *p, td_key step_key, uint32_t *keys) {
  for (size_t i = 0; i < p->n_nodes; i++) {
    const td_node *n = &p->nodes[i];
    if (n->op == TD_OP_DROPOUT) {
      td_key k = td_prng_fold_in(step_key, n->spec_index);
      keys[2 * n->key_slot] = k.k[0];
      keys[2 * n->key_slot + 1] = k.k[1];
    }
  }
  if (p->per_example) {
    td_key k = td_prng_fold_in(step_key, 0xffffffffu);
    keys[2 * p->noise_slot] = k.k[0];
    keys[2 * p->noise_slot + 1] = k.k[1];
  }
}

void td_plan_fill_rec(const td_plan *p, void *rec, uint32_t slot, uint32_t row0, int64_t count,
                      td_key dropout_key) {
  td_step_record *r = rec;
  r->slot = slot;
  r->row0 = row0;
  td_plan_dropout_keys(p, td_prng_fold_in(dropout_key, (uint32_t)count), r->keys);
  td_optim_scalars(&p->optim, count, td_rec_scalars(p, rec));
}

int td_state_forward(td_state *st, int rows, int train, const uint32_t *keys, uint64_t row0,
                     td_error *err) {
  const td_plan *p = st->plan;
  const td_run r = {.rows = rows, .train = train, .keys = keys, .row0 = row0};
  for (size_t i = 0; i < p->n_nodes; i++) {
    const td_node *n = &p->nodes[i];
    int rc = td_op_table[n->op].fwd(st, n, &r, err);
    if (rc)
      return rc;
  }
  return TD_OK;
}

int td_state_loss(td_state *st, int rows, int with_grad, td_error *err) {
  const td_plan *p = st->plan;
  return td_state_loss_scaled(st, rows, with_grad, 1.0f / ((float)p->batch * (float)p->positions),
                              err);
}

int td_state_loss_scaled(td_state *st, int rows, int with_grad, float grad_scale, td_error *err) {
  const td_plan *p = st->plan;
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  const int32_t *labels = (const int32_t *)(a + p->labels_off);
  float *dout = with_grad ? a + p->dout_off : NULL;
  float *sc = a + p->scalars_off;
  /* Every position of a sequence is a row with its own label; the loss is
   * the mean over the batch's positions. */
  const int R = rows * (int)p->positions;
  if (p->loss == TRAIND__V1__LOSS__SOFTMAX_CROSS_ENTROPY)
    CALL(ops->softmax_xent(be, R, (int)p->out_dim, a + p->out_off, labels, grad_scale, dout,
                           sc + TD_SC_LOSS_SUM),
         "softmax cross-entropy");
  else
    CALL(ops->mse_onehot(be, R, (int)p->out_dim, a + p->out_off, labels,
                         grad_scale / (float)p->out_dim, dout, sc + TD_SC_LOSS_SUM),
         "mean squared error");
  return TD_OK;
}

int td_state_backward(td_state *st, td_error *err) {
  const td_plan *p = st->plan;
  for (size_t i = p->n_nodes; i-- > 0;) {
    const td_node *n = &p->nodes[i];
    if (!n->grad)
      continue;
    int rc = td_op_table[n->op].bwd(st, n, err);
    if (rc)
      return rc;
  }
  return TD_OK;
}

int td_state_backward_dp(td_state *st, int rows, double scale, double clip, td_error *err) {
  const td_plan *p = st->plan;
  td_backend *be = st->be;
  const td_backend_ops *ops = be->ops;
  float *a = st->arena;
  double *acc = (double *)(a + p->pe_acc_off);
  float *factor = a + p->pe_factor_off;
  int rc = TD_OK;
  /* A backend without the ops was refused before; the padding rows' output
   * gradient is zero from here. */
  if (rows < (int)p->batch)
    CALL(ops->fill(be, a + p->dout_off + (size_t)rows * p->positions * p->out_dim,
                   ((size_t)p->batch - rows) * p->positions * p->out_dim, 0.0f),
         "zeroing the padding's gradient");
  CALL(ops->fill(be, (float *)acc, 2 * (size_t)p->batch, 0.0f), "zeroing the norms");
  st->pe_phase = 1;
  for (size_t i = p->n_nodes; !rc && i-- > 0;)
    if (p->nodes[i].grad)
      rc = td_op_table[p->nodes[i].op].bwd(st, &p->nodes[i], err);
  if (!rc && (rc = ops->pe_clip(be, (int)p->batch, rows, scale, clip, acc, factor)))
    rc = td_errorf(err, rc, "per-example clip factors failed");
  st->pe_phase = 2;
  for (size_t i = p->n_nodes; !rc && i-- > 0;)
    if (p->nodes[i].grad && has_params(&p->nodes[i]))
      rc = td_op_table[p->nodes[i].op].bwd(st, &p->nodes[i], err);
  st->pe_phase = 0;
  return rc;
}

void td_state_finish_collectives(td_state *st) {
  const td_plan *p = st->plan;
  if (!st->comm || st->comm->size < 2)
    return;
  /* The step's collectives in order: each batch norm's in forward, then in
   * backward (in reverse order) those that reduce an input gradient; each
   * has 2 * channels floats, made here on the node's own buffer. */
  uint32_t k = 0;
  for (size_t pass = 0; pass < 2; pass++)
    for (size_t j = 0; j < p->n_nodes; j++) {
      const td_node *n = &p->nodes[pass ? p->n_nodes - 1 - j : j];
      if (n->op != TD_OP_BATCH_NORM || (pass && n->dx[0] == TD_NONE))
        continue;
      if (k++ < st->collectives)
        continue;
      st->comm->ops->allreduce(st->comm, st->rank, st->arena + n->aux + 2 * n->channels,
                               2 * (size_t)n->channels, TD_REDUCE_MEAN);
    }
  st->collectives = k;
}
