/* Repeats written out as a flat list of layers (expand.h).
 *
 * Two passes over the model as written: check_list checks every repeat
 * (its name, count, block and the names its copies will have) and counts
 * the layers of the result; then emit_* write them, each a fresh copy of
 * its layer (packed and unpacked by protobuf-c) with its name and inputs
 * set. The new model is an ordinary unpacked message tree: every string
 * and array in it comes from malloc, as protobuf-c's default allocator's,
 * so protobuf_c_message_free_unpacked frees all of it. */
#include "expand.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The name that refers to the model's input in `inputs` (plan.c's). */
#define INPUT_NAME "input"
/* Room for a name being built: a checked one (at most TD_EXPAND_NAME_MAX
 * characters) with a copy number after it. */
#define NAME_BUF 96
/* Room for a block layer's default name, "<kind>_<index>". */
#define DFLT_BUF 48
/* Room for a field path in messages ("model.layers[3].repeat.layers[1]"). */
#define PATH_BUF 640
#define NO_LAYER SIZE_MAX

typedef struct name_ix {
  const char *name;
  size_t index;
} name_ix;

static int name_ix_cmp(const void *a, const void *b) {
  const name_ix *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->index > y->index) - (x->index < y->index);
}

static int name_key_cmp(const void *key, const void *elem) {
  return strcmp(key, ((const name_ix *)elem)->name);
}

/* snprintf into a buffer that the string fits: names are checked
 * (check_list) before any is built, and a path in a message may be cut. */
static void fmt(char *buf, size_t len, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t len, const char *f, ...) {
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, len, f, ap);
  va_end(ap);
}

static int named(const Traind__V1__Layer *l) { return l->name && *l->name; }

static int is_repeat(const Traind__V1__Layer *l) {
  return l->kind_case == TRAIND__V1__LAYER__KIND_REPEAT && l->repeat;
}

/* Whether the compiler gives a layer of this kind parameters, and so a
 * default name layerK when it has none (plan.c's op_has_params). */
static int has_params(const Traind__V1__Layer *l) {
  switch (l->kind_case) {
  case TRAIND__V1__LAYER__KIND_DENSE:
  case TRAIND__V1__LAYER__KIND_CONV:
  case TRAIND__V1__LAYER__KIND_BATCH_NORM:
  case TRAIND__V1__LAYER__KIND_LAYER_NORM:
  case TRAIND__V1__LAYER__KIND_EMBED:
  case TRAIND__V1__LAYER__KIND_POSITION_EMBEDDING:
  case TRAIND__V1__LAYER__KIND_CAUSAL_SELF_ATTENTION:
    return 1;
  default:
    return 0;
  }
}

/* The longest name a layer of this kind may have: TD_EXPAND_NAME_MAX, or
 * less where its longest parameter path "<name>/<leaf>" must fit the 63
 * characters of a view's name ("scale", "embedding", "proj/w"). */
static size_t name_limit(const Traind__V1__Layer *l) {
  switch (l->kind_case) {
  case TRAIND__V1__LAYER__KIND_BATCH_NORM:
  case TRAIND__V1__LAYER__KIND_LAYER_NORM:
    return 57;
  case TRAIND__V1__LAYER__KIND_EMBED:
  case TRAIND__V1__LAYER__KIND_POSITION_EMBEDDING:
    return 53;
  case TRAIND__V1__LAYER__KIND_CAUSAL_SELF_ATTENTION:
    return 56;
  default:
    return TD_EXPAND_NAME_MAX;
  }
}

/* The layer's kind as job files spell it: "dense", "layer_norm", ... */
static const char *kind_name(const Traind__V1__Layer *l) {
  const ProtobufCFieldDescriptor *f =
      l->kind_case == TRAIND__V1__LAYER__KIND__NOT_SET
          ? NULL
          : protobuf_c_message_descriptor_get_field(&traind__v1__layer__descriptor,
                                                    (unsigned)l->kind_case);
  return f ? f->name : "layer";
}

/* A block layer's name: its own, or "<kind>_<index>" written into buf. */
static const char *block_name(const Traind__V1__Layer *l, size_t index, char *buf, size_t len) {
  if (named(l))
    return l->name;
  fmt(buf, len, "%s_%zu", kind_name(l), index);
  return buf;
}

/* A name that can be one part of an expanded name: letters, digits, '_'
 * and '-' (the '.' separates the parts). 0: bad characters; -1: a '.'. */
static int valid_part(const char *s) {
  int dot = 0;
  for (; *s; s++) {
    if (*s == '.')
      dot = 1;
    else if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
               *s == '_' || *s == '-'))
      return 0;
  }
  return dot ? -1 : 1;
}

/* The checks of a repeat's own name (a part of its copies' names). */
static int check_repeat_name(const char *path, const char *name, td_error *err) {
  int v = valid_part(name);
  if (v < 0)
    return td_errorf(err, TD_EINVAL,
                     "%s.name: '%.64s' has a '.', which separates the parts of the names of the "
                     "repeat's copies ('%.64s.0.<layer>'); use '_' or '-' instead",
                     path, name, name);
  if (v == 0)
    return td_errorf(err, TD_EINVAL,
                     "%s.name: '%.64s' may use only letters, digits, '_' and '-' (it is part of "
                     "the names of the repeat's copies)",
                     path, name);
  if (strcmp(name, INPUT_NAME) == 0)
    return td_errorf(err, TD_EINVAL,
                     "%s.name: '" INPUT_NAME "' names the model's input in inputs; give the "
                     "repeat another name",
                     path);
  if (strlen(name) > TD_EXPAND_NAME_MAX)
    return td_errorf(err, TD_EINVAL,
                     "%s.name: longer than %d characters (its copies' layers are named "
                     "'<name>.<copy>.<layer>'); give the repeat a shorter name",
                     path, TD_EXPAND_NAME_MAX);
  return TD_OK;
}

/* The checks of a block layer's name (name, its own or its default) in the
 * block of repeat rep, whose last copy's layers are named
 * "<prefix>.<name>". */
static int check_block_name(const char *path, const Traind__V1__Layer *l, const char *name,
                            const Traind__V1__Layer *rep, const char *prefix, td_error *err) {
  if (named(l)) {
    int v = valid_part(name);
    if (v < 0)
      return td_errorf(err, TD_EINVAL,
                       "%s.name: '%.64s' has a '.', which separates the parts of its copies' "
                       "names ('%s.0.%.64s'); use '_' or '-' instead",
                       path, name, rep->name, name);
    if (v == 0)
      return td_errorf(err, TD_EINVAL,
                       "%s.name: '%.64s' may use only letters, digits, '_' and '-' (it is part "
                       "of its copies' names)",
                       path, name);
    if (strcmp(name, INPUT_NAME) == 0)
      return td_errorf(err, TD_EINVAL,
                       "%s.name: '" INPUT_NAME "' names the model's input in inputs; give the "
                       "layer another name",
                       path);
    if (strcmp(name, rep->name) == 0)
      return td_errorf(err, TD_EINVAL,
                       "%s.name: '%.64s' is the repeat's own name, which inside its block names "
                       "the block's input; give the layer another name",
                       path, name);
  }
  const size_t len = strlen(prefix) + 1 + strlen(name), max = name_limit(l);
  if (len > max)
    return td_errorf(err, TD_EINVAL,
                     "%s.name: the last copy of this layer is named '%s.%.64s', %zu characters; "
                     "a %s layer's name may have at most %zu: give the repeat or this layer a "
                     "shorter name",
                     path, prefix, name, len, kind_name(l), max);
  return TD_OK;
}

/* Checks a list of layers: the model's (rep NULL, path "model") or the
 * block of repeat rep (path "model.layers[3].repeat"), whose last copy's
 * layers are named "<prefix>.<name>". Then each repeat in it, recursively
 * (each level's names are checked before the next, so the depth is
 * bounded by the name limit). *count: the layers they expand to. */
static int check_list(Traind__V1__Layer *const *layers, size_t n, const Traind__V1__Layer *rep,
                      const char *prefix, const char *path, double *count, td_error *err) {
  name_ix *names = malloc((n ? n : 1) * sizeof *names);
  char(*dflt)[DFLT_BUF] = malloc((n ? n : 1) * sizeof *dflt);
  if (!names || !dflt) {
    free(names);
    free(dflt);
    return td_errorf(err, TD_ENOMEM, "model: out of memory expanding repeats");
  }
  char at[PATH_BUF];
  int rc = TD_OK;
  size_t n_names = 0;
  uint32_t with_params = 0;
  /* The names in this list: a block's, every layer's (its own or its
   * default); the model's, those the compiler knows a layer by. */
  for (size_t j = 0; j < n && !rc; j++) {
    const Traind__V1__Layer *l = layers[j];
    fmt(at, sizeof at, "%s.layers[%zu]", path, j);
    const char *name = NULL;
    if (rep) {
      name = block_name(l, j, dflt[j], sizeof dflt[j]);
      rc = check_block_name(at, l, name, rep, prefix, err);
    } else if (is_repeat(l)) {
      if (named(l))
        rc = check_repeat_name(at, l->name, err);
      name = l->name;
    } else {
      with_params += (uint32_t)has_params(l);
      if (!named(l) && has_params(l))
        fmt(dflt[j], sizeof dflt[j], "layer%u", with_params);
      name = named(l) ? l->name : has_params(l) ? dflt[j] : NULL;
    }
    if (!rc && is_repeat(l) && !named(l))
      rc = td_errorf(err, TD_EINVAL,
                     "%s.name: a repeat needs a name: its copies' layers are named after it "
                     "('<name>.0.<layer>', '<name>.1.<layer>', ...); give it one",
                     at);
    if (name && *name)
      names[n_names++] = (name_ix){name, j};
  }
  /* Names used twice: in a block, any; in the model, a repeat's (the
   * compiler reports the others, as in a model without repeats). */
  if (!rc)
    qsort(names, n_names, sizeof *names, name_ix_cmp);
  for (size_t k = 1; k < n_names && !rc; k++) {
    const name_ix *a = &names[k - 1], *b = &names[k];
    if (strcmp(a->name, b->name) != 0)
      continue;
    const Traind__V1__Layer *la = layers[a->index], *lb = layers[b->index];
    if (rep)
      rc = td_errorf(
          err, TD_EINVAL,
          "%s.layers[%zu].name: '%.64s' is also the name of %s.layers[%zu]%s; give "
          "each layer of the block its own name",
          path, b->index, b->name, path, a->index,
          named(la) && named(lb) ? "" : " (a block layer without a name is called <kind>_<index>)");
    else if (is_repeat(la) || is_repeat(lb))
      rc = td_errorf(err, TD_EINVAL,
                     "model.layers[%zu].name: '%.64s' is also the name of model.layers[%zu]; "
                     "give each layer its own name",
                     b->index, b->name, a->index);
  }
  /* Each repeat, and the size of the result. */
  double total = 0.0;
  for (size_t j = 0; j < n && !rc; j++) {
    const Traind__V1__Layer *l = layers[j];
    fmt(at, sizeof at, "%s.layers[%zu]", path, j);
    double size = 1.0;
    if (is_repeat(l)) {
      const Traind__V1__Repeat *r = l->repeat;
      if (r->count == 0) {
        rc = td_errorf(err, TD_EINVAL,
                       "%s.repeat.count: must be at least 1; set how many copies of the block "
                       "to make",
                       at);
        break;
      }
      if (r->n_layers == 0) {
        rc = td_errorf(err, TD_EINVAL,
                       "%s.repeat.layers: the block is empty; list the layers to repeat", at);
        break;
      }
      if (l->n_inputs > 1) {
        rc = td_errorf(err, TD_EINVAL,
                       "%s.inputs: %zu inputs; a repeat takes one (its first copy's input): "
                       "name one layer",
                       at, l->n_inputs);
        break;
      }
      /* The last copy's name for this repeat, and so the prefix of its
       * block's longest names. */
      char inner_prefix[NAME_BUF], inner_path[PATH_BUF];
      if (rep)
        fmt(inner_prefix, sizeof inner_prefix, "%s.%s.%u", prefix, l->name, r->count - 1);
      else
        fmt(inner_prefix, sizeof inner_prefix, "%s.%u", l->name, r->count - 1);
      fmt(inner_path, sizeof inner_path, "%s.repeat", at);
      double inner = 0.0;
      rc = check_list(r->layers, r->n_layers, l, inner_prefix, inner_path, &inner, err);
      if (rc)
        break;
      size = (double)r->count * inner;
      if (size > TD_EXPAND_MAX_LAYERS) {
        rc = td_errorf(err, TD_EINVAL,
                       "%s.repeat.count: %u copies of its block (%.0f layers each) make %.0f "
                       "layers; a model may have at most %d once its repeats are expanded: make "
                       "count smaller or the block shorter",
                       at, r->count, inner, size, TD_EXPAND_MAX_LAYERS);
        break;
      }
    }
    total += size;
    if (total > TD_EXPAND_MAX_LAYERS) {
      if (is_repeat(l))
        rc = td_errorf(err, TD_EINVAL,
                       "%s.repeat.count: with this repeat's %.0f layers the model has more than "
                       "%d once its repeats are expanded; make count smaller or the block "
                       "shorter",
                       at, size, TD_EXPAND_MAX_LAYERS);
      else
        rc = td_errorf(err, TD_EINVAL,
                       "%s.layers: more than %d layers once the repeats are expanded; make the "
                       "repeats' counts smaller or their blocks shorter",
                       path, TD_EXPAND_MAX_LAYERS);
    }
  }
  free(names);
  free(dflt);
  *count = total;
  return rc;
}

/* ------------------------------------------------------------- writing */

/* A list of layers being written: the model's, or one copy of a repeat's
 * block. Scopes nest as repeats do; a name in `inputs` is looked up from
 * the innermost out. */
typedef struct scope {
  const struct scope *parent;
  const Traind__V1__Layer *rep; /* the repeat; NULL: the model's list */
  Traind__V1__Layer *const *layers;
  size_t n;
  char full[NAME_BUF]; /* the repeat's name in the expanded model: "R", "R.0.S" */
  uint32_t copy;       /* the copy being written */
  const char **names;  /* (n) block: each layer's name, its own or dflt's */
  char (*dflt)[DFLT_BUF];
  name_ix *sorted; /* block: all names; model: the repeats' */
  size_t n_sorted;
  /* Copy 0's input by name, or NULL: the layer written before copy 0,
   * out[before] (NO_LAYER: the model's input). */
  const char *input;
  char input_buf[NAME_BUF];
  size_t before;
} scope;

typedef struct expander {
  Traind__V1__Model *model; /* the result; its layers are written in order */
  size_t cap;               /* the layers it has room for (check_list's count) */
  uint8_t *buf;             /* packing buffer for copies */
  size_t buf_cap;
  uint32_t with_params; /* model layers with parameters so far (their layerK) */
  td_error *err;
} expander;

static int oom(expander *e) {
  return td_errorf(e->err, TD_ENOMEM, "model: out of memory expanding repeats");
}

/* A fresh copy of l, owned by nobody yet. */
static Traind__V1__Layer *clone_layer(expander *e, const Traind__V1__Layer *l) {
  size_t len = protobuf_c_message_get_packed_size(&l->base);
  if (len > e->buf_cap) {
    uint8_t *b = realloc(e->buf, len);
    if (!b)
      return NULL;
    e->buf = b;
    e->buf_cap = len;
  }
  protobuf_c_message_pack(&l->base, e->buf);
  return (Traind__V1__Layer *)protobuf_c_message_unpack(&traind__v1__layer__descriptor, NULL, len,
                                                        e->buf);
}

/* Replaces a string field of an unpacked message (protobuf-c leaves an
 * unset one pointing at protobuf_c_empty_string, which is not freed). */
static int set_string(char **field, const char *value) {
  char *s = strdup(value);
  if (!s)
    return -1;
  if (*field && *field != protobuf_c_empty_string)
    free(*field);
  *field = s;
  return 0;
}

/* Replaces a layer's inputs with names[0..n). */
static int set_inputs(Traind__V1__Layer *l, const char *const *names, size_t n) {
  char **v = calloc(n ? n : 1, sizeof *v);
  if (!v)
    return -1;
  for (size_t k = 0; k < n; k++)
    if (!(v[k] = strdup(names[k]))) {
      for (size_t i = 0; i < k; i++)
        free(v[i]);
      free(v);
      return -1;
    }
  for (size_t k = 0; k < l->n_inputs; k++)
    free(l->inputs[k]);
  free(l->inputs);
  l->inputs = v;
  l->n_inputs = n;
  return 0;
}

/* The name of the output of the repeat rep whose name in the expanded
 * model is full: its last copy's last layer, itself maybe a repeat's. */
static const char *final_name(const char *full, const Traind__V1__Layer *rep, char *buf) {
  char cur[NAME_BUF], d[DFLT_BUF];
  fmt(cur, sizeof cur, "%s", full);
  for (;;) {
    const Traind__V1__Repeat *r = rep->repeat;
    const size_t j = r->n_layers - 1;
    const Traind__V1__Layer *last = r->layers[j];
    fmt(buf, NAME_BUF, "%s.%u.%s", cur, r->count - 1, block_name(last, j, d, sizeof d));
    if (!is_repeat(last))
      return buf;
    memcpy(cur, buf, NAME_BUF);
    rep = last;
  }
}

/* Block layer j of scope s in its current copy, by name (a repeat: its
 * output). */
static const char *copy_name(const scope *s, uint32_t copy, size_t j, char *buf) {
  char full[NAME_BUF];
  fmt(full, sizeof full, "%s.%u.%s", s->full, copy, s->names[j]);
  if (is_repeat(s->layers[j]))
    return final_name(full, s->layers[j], buf);
  memcpy(buf, full, NAME_BUF);
  return buf;
}

/* The block's input for the current copy where it is known by a name
 * without naming a layer: the previous copy's output, or copy 0's input
 * by name; NULL: the layer written before copy 0. */
static const char *block_default(const scope *s, char *buf) {
  if (s->copy > 0)
    return copy_name(s, s->copy - 1, s->n - 1, buf);
  return s->input;
}

/* The block's input by name, for a block layer's input that names the
 * repeat. The layer before copy 0 is named "<R>.in" (R the outermost
 * repeat) when it has no name. NULL: out of memory. */
static const char *block_input(expander *e, const scope *s, char *buf) {
  const char *d = block_default(s, buf);
  if (d)
    return d;
  if (s->before == NO_LAYER)
    return INPUT_NAME;
  Traind__V1__Layer *prev = e->model->layers[s->before];
  if (!named(prev)) {
    /* Only a layer of the model lacks a name: s is copy 0 of a chain of
     * first block layers that starts at a repeat of the model. */
    const scope *top = s;
    while (top->parent && top->parent->rep)
      top = top->parent;
    char in[NAME_BUF];
    fmt(in, sizeof in, "%s.in", top->rep->name);
    if (set_string(&prev->name, in))
      return NULL;
  }
  return prev->name;
}

/* What `name` in the inputs of a layer of scope s refers to in the
 * expanded model: a name of the innermost block that has it, a repeat's
 * name (inside its block: the block's input; elsewhere: its output), or
 * else the name as it is. NULL: out of memory. */
static const char *resolve(expander *e, const scope *s, const char *name, char *buf) {
  if (strcmp(name, INPUT_NAME) == 0)
    return name;
  for (const scope *t = s; t; t = t->parent) {
    if (t->rep && strcmp(name, t->rep->name) == 0)
      return block_input(e, t, buf);
    const name_ix *hit = bsearch(name, t->sorted, t->n_sorted, sizeof *t->sorted, name_key_cmp);
    if (!hit)
      continue;
    if (t->rep)
      return copy_name(t, t->copy, hit->index, buf);
    return final_name(name, t->layers[hit->index], buf); /* the model's: only repeats */
  }
  return name;
}

/* Fills a scope's names and their index. */
static int scope_names(scope *s) {
  const size_t n = s->n ? s->n : 1;
  s->sorted = malloc(n * sizeof *s->sorted);
  if (s->rep) {
    s->names = malloc(n * sizeof *s->names);
    s->dflt = malloc(n * sizeof *s->dflt);
    if (!s->names || !s->dflt)
      return -1;
  }
  if (!s->sorted)
    return -1;
  for (size_t j = 0; j < s->n; j++) {
    const Traind__V1__Layer *l = s->layers[j];
    if (s->rep) {
      s->names[j] = block_name(l, j, s->dflt[j], sizeof s->dflt[j]);
      s->sorted[s->n_sorted++] = (name_ix){s->names[j], j};
    } else if (is_repeat(l)) {
      s->sorted[s->n_sorted++] = (name_ix){l->name, j};
    }
  }
  qsort(s->sorted, s->n_sorted, sizeof *s->sorted, name_ix_cmp);
  return 0;
}

static void scope_free(scope *s) {
  free(s->names);
  free(s->dflt);
  free(s->sorted);
}

static int emit_list(expander *e, const scope *s);

/* Layer j of scope s (not a repeat), as the next layer of the model. */
static int emit_layer(expander *e, const scope *s, size_t j) {
  const Traind__V1__Layer *l = s->layers[j];
  Traind__V1__Model *m = e->model;
  if (m->n_layers == e->cap) /* check_list counted them all */
    return td_errorf(e->err, TD_EINTERNAL, "model: expanding repeats: more layers than counted");
  Traind__V1__Layer *c = clone_layer(e, l);
  if (!c)
    return oom(e);
  m->layers[m->n_layers++] = c; /* the model owns it from here on */
  char buf[NAME_BUF];
  if (s->rep) {
    fmt(buf, sizeof buf, "%s.%u.%s", s->full, s->copy, s->names[j]);
    if (set_string(&c->name, buf))
      return oom(e);
  } else if (has_params(l)) {
    e->with_params++;
    fmt(buf, sizeof buf, "layer%u", e->with_params);
    if (!named(l) && set_string(&c->name, buf))
      return oom(e);
  }
  if (l->n_inputs) {
    /* Each input resolved into its own buffer: several may be generated. */
    char(*bufs)[NAME_BUF] = malloc(l->n_inputs * sizeof *bufs);
    const char **v = malloc(l->n_inputs * sizeof *v);
    int bad = !bufs || !v;
    for (size_t k = 0; k < l->n_inputs && !bad; k++)
      bad = !(v[k] = resolve(e, s, l->inputs[k], bufs[k]));
    bad = bad || set_inputs(c, v, l->n_inputs);
    free(bufs);
    free(v);
    if (bad)
      return oom(e);
  } else if (s->rep && j == 0) {
    const char *in = block_default(s, buf);
    if (in && set_inputs(c, &in, 1))
      return oom(e);
  }
  return TD_OK;
}

/* Repeat j of scope s: count copies of its block, one after the other. */
static int emit_repeat(expander *e, const scope *s, size_t j) {
  const Traind__V1__Layer *l = s->layers[j];
  const Traind__V1__Repeat *r = l->repeat;
  scope *t = calloc(1, sizeof *t);
  if (!t)
    return oom(e);
  t->parent = s;
  t->rep = l;
  t->layers = r->layers;
  t->n = r->n_layers;
  if (s->rep)
    fmt(t->full, sizeof t->full, "%s.%u.%s", s->full, s->copy, l->name);
  else
    fmt(t->full, sizeof t->full, "%s", l->name);
  t->before = e->model->n_layers ? e->model->n_layers - 1 : NO_LAYER;
  int rc = scope_names(t) ? oom(e) : TD_OK;
  if (!rc && l->n_inputs) {
    t->input = resolve(e, s, l->inputs[0], t->input_buf);
    if (!t->input)
      rc = oom(e);
  } else if (!rc && s->rep && j == 0) {
    t->input = block_default(s, t->input_buf);
  }
  for (uint32_t k = 0; k < r->count && !rc; k++) {
    t->copy = k;
    rc = emit_list(e, t);
  }
  scope_free(t);
  free(t);
  return rc;
}

static int emit_list(expander *e, const scope *s) {
  for (size_t j = 0; j < s->n; j++) {
    int rc = is_repeat(s->layers[j]) ? emit_repeat(e, s, j) : emit_layer(e, s, j);
    if (rc)
      return rc;
  }
  return TD_OK;
}

int td_model_expand(const Traind__V1__Model *m, Traind__V1__Model **out, Traind__V1__Model **owned,
                    td_error *err) {
  *out = *owned = NULL;
  int any = 0;
  for (size_t i = 0; i < m->n_layers && !any; i++)
    any = is_repeat(m->layers[i]);
  if (!any) {
    *out = (Traind__V1__Model *)m;
    return TD_OK;
  }
  double total = 0.0;
  int rc = check_list(m->layers, m->n_layers, NULL, "", "model", &total, err);
  if (rc)
    return rc;

  /* The model's other fields, copied by packing it without its layers and
   * output (set below). */
  Traind__V1__Model shell = *m;
  shell.n_layers = 0;
  shell.layers = NULL;
  shell.output = (char *)protobuf_c_empty_string;
  expander e = {.cap = (size_t)total, .err = err};
  const size_t len = protobuf_c_message_get_packed_size(&shell.base);
  e.buf_cap = len > 256 ? len : 256;
  e.buf = malloc(e.buf_cap);
  if (!e.buf)
    return oom(&e);
  protobuf_c_message_pack(&shell.base, e.buf);
  e.model = (Traind__V1__Model *)protobuf_c_message_unpack(&traind__v1__model__descriptor, NULL,
                                                           len, e.buf);
  if (!e.model || !(e.model->layers = calloc(e.cap ? e.cap : 1, sizeof *e.model->layers))) {
    free(e.buf);
    td_model_expanded_free(e.model);
    return oom(&e);
  }

  scope top = {.layers = m->layers, .n = m->n_layers, .before = NO_LAYER};
  rc = scope_names(&top) ? oom(&e) : emit_list(&e, &top);
  if (!rc && m->output && *m->output) {
    char buf[NAME_BUF];
    const char *o = resolve(&e, &top, m->output, buf);
    if (!o || set_string(&e.model->output, o))
      rc = oom(&e);
  }
  scope_free(&top);
  free(e.buf);
  if (rc) {
    td_model_expanded_free(e.model);
    return rc;
  }
  *out = *owned = e.model;
  return TD_OK;
}

void td_model_expanded_free(Traind__V1__Model *m) {
  if (m)
    protobuf_c_message_free_unpacked(&m->base, NULL);
}
