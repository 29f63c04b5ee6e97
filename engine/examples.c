/* The per-epoch report on the training examples' gradient norms. */
#include "examples.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int td_examples_init(td_example_acc *a, uint32_t k, size_t cap, const td_dataset *train,
                     td_error *err) {
  memset(a, 0, sizeof *a);
  if (k == 0 || k > TD_EXAMPLE_TOP_MAX)
    return td_errorf(err, TD_EINVAL,
                     "training.per_example_report.top_k: %u; must be 1..%u (0 means %u)", k,
                     TD_EXAMPLE_TOP_MAX, TD_EXAMPLE_TOP_DEFAULT);
  a->k = k;
  a->n_train = train->n;
  a->cap = cap;
  a->rep.dim = train->dim;
  a->rep.ndim = train->ndim;
  memcpy(a->rep.shape, train->shape, sizeof a->rep.shape);
  a->norms = malloc((cap ? cap : 1) * sizeof *a->norms);
  a->seen = calloc((size_t)train->n / 8 + 1, 1);
  a->rep.top = malloc((size_t)k * sizeof *a->rep.top);
  a->rep.inputs = malloc((size_t)k * (train->dim ? train->dim : 1) * sizeof *a->rep.inputs);
  if (!a->norms || !a->seen || !a->rep.top || !a->rep.inputs) {
    td_examples_free(a);
    return td_errorf(err, TD_ENOMEM, "no memory for the per-example report (%zu norms)", cap);
  }
  return TD_OK;
}

void td_examples_free(td_example_acc *a) {
  free(a->norms);
  free(a->seen);
  free(a->rep.top);
  free(a->rep.inputs);
  memset(a, 0, sizeof *a);
}

void td_examples_add(td_example_acc *a, uint32_t index, double norm, int64_t step) {
  if (a->n < a->cap)
    a->norms[a->n++] = (td_example_norm){.index = index, .norm = norm, .step = step};
}

/* Largest norm first; equal norms by index, then step: one order for a
 * set of norms whatever order they came in. */
static int by_norm_desc(const void *pa, const void *pb) {
  const td_example_norm *x = pa, *y = pb;
  if (x->norm != y->norm)
    return x->norm < y->norm ? 1 : -1;
  if (x->index != y->index)
    return x->index < y->index ? -1 : 1;
  return (x->step > y->step) - (x->step < y->step);
}

void td_examples_report(td_example_acc *a, const td_dataset *train, uint32_t epoch, int64_t step,
                        double clip) {
  td_example_report *r = &a->rep;
  r->epoch = epoch;
  r->step = step;
  r->count = a->n;
  r->clip = clip;
  r->clipped = 0;
  r->sum = r->sum_sq = 0.0;
  r->min = a->n ? INFINITY : 0.0;
  r->max = a->n ? -INFINITY : 0.0;
  for (size_t i = 0; i < a->n; i++) {
    const double v = a->norms[i].norm;
    r->sum += v;
    r->sum_sq += v * v;
    r->min = v < r->min ? v : r->min;
    r->max = v > r->max ? v : r->max;
    r->clipped += clip > 0.0 && v > clip;
  }
  r->mean = a->n ? r->sum / (double)a->n : 0.0;
  const double width = (r->max - r->min) / TD_EXAMPLE_BUCKETS;
  for (int b = 0; b <= TD_EXAMPLE_BUCKETS; b++)
    r->edges[b] = b == TD_EXAMPLE_BUCKETS ? r->max : r->min + width * b;
  memset(r->counts, 0, sizeof r->counts);
  for (size_t i = 0; i < a->n; i++) {
    const double v = a->norms[i].norm;
    int b = width > 0.0 ? (int)((v - r->min) / width) : 0;
    /* The division can round across an edge: the edges decide. */
    while (b > 0 && v < r->edges[b])
      b--;
    while (b < TD_EXAMPLE_BUCKETS - 1 && v >= r->edges[b + 1])
      b++;
    r->counts[b < 0 ? 0 : b > TD_EXAMPLE_BUCKETS - 1 ? TD_EXAMPLE_BUCKETS - 1 : b]++;
  }
  qsort(a->norms, a->n, sizeof *a->norms, by_norm_desc);
  memset(a->seen, 0, (size_t)a->n_train / 8 + 1);
  r->n_top = 0;
  for (size_t i = 0; i < a->n && r->n_top < a->k; i++) {
    const uint32_t x = a->norms[i].index;
    if (x >= a->n_train || (a->seen[x / 8] >> (x % 8) & 1))
      continue;
    a->seen[x / 8] |= (uint8_t)(1u << (x % 8));
    td_example_norm *t = &r->top[r->n_top];
    *t = a->norms[i];
    t->label = train->label_dim == 1 ? train->y[x] : -1;
    memcpy(r->inputs + (size_t)r->n_top * r->dim, train->x + (size_t)x * train->stride,
           (size_t)r->dim * sizeof *r->inputs);
    r->n_top++;
  }
}
