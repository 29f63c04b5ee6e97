/* Recorded steps without a GPU. The trainer records its step as a graph
 * (graph_record) on backends that can, and then runs chunks of steps by
 * replaying a one-step graph and a graph of graph_steps steps; only the
 * CUDA backend records, so that path would otherwise never run here.
 *
 * The "tape" backend below wraps the CPU backend: while a graph is being
 * recorded, every compute op is appended to a tape with its arguments by
 * value (pointers stay pointers: they are backend memory, read again at
 * each replay) instead of running, and alloc/release/upload/download fail
 * the test, as they cannot be captured into a CUDA graph either; a replay
 * runs the tape through the CPU ops. It can also claim its memory is not
 * host memory, and then checks that every buffer an op is given is one of
 * its own allocations. Its communicator puts the allreduce on the tape of
 * a recording rank (as NCCL is captured into a CUDA graph).
 *
 * Checked, on a synthetic IDX dataset written to a temporary data root:
 * the tape gives bitwise the step points, epoch figures and final
 * parameters of the plain CPU backend (one and two replicas, host memory
 * or not); resuming, on a fresh trainer and on one that has recorded
 * already; cancellation at a chunk boundary with a consistent position; a
 * diverging run failing at the same step with the same report (the good
 * steps before it reported); a backend whose recording fails going on op
 * by op. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "jobspec.h"
#include "prng.h"
#include "train.h"

enum {
  SIDE = 28,
  NTRAIN = 4096,
  NTEST = 512,
  CLASSES = 10,
  BATCH = 32,
  SPE = NTRAIN / BATCH, /* 128 steps per epoch: one 64-step graph fits twice */
  EPOCHS = 2,
  TOTAL = SPE * EPOCHS,
  MAXREP = 2,
  MAXG = 256, /* the longest graph the stats count by length */
};

/* ---- the tape backend ------------------------------------------------------ */

typedef enum op_tag {
  OP_FILL,
  OP_COPY,
  OP_GATHER,
  OP_GEMM,
  OP_BIAS_ACT_FWD,
  OP_BIAS_ACT_BWD,
  OP_SOFTMAX_XENT,
  OP_MSE_ONEHOT,
  OP_DROPOUT_FWD,
  OP_MUL,
  OP_SUMSQ,
  OP_OPT_PASS,
  OP_STEP_BEGIN,
  OP_RECORD,
  OP_ALLREDUCE,
} op_tag;

/* One op and its arguments, by value. */
typedef struct tape_op {
  op_tag tag;
  union {
    struct {
      float *x;
      size_t n;
      float value;
    } fill;
    struct {
      float *dst;
      const float *src;
      size_t n;
    } copy;
    struct {
      td_rows l;
      const float *src;
      const int32_t *src_labels;
      const uint32_t *idx, *off;
      size_t count;
      float *dst;
      int32_t *dst_labels;
    } gather;
    struct {
      int trans_a, trans_b, m, n, k;
      float alpha;
      const float *a;
      int lda;
      const float *b;
      int ldb;
      float beta;
      float *c;
      int ldc;
    } gemm;
    struct {
      td_act act;
      int rows, cols;
      const float *bias;
      float *z, *y;
    } fwd;
    struct {
      td_act act;
      int rows, cols;
      const float *z, *y, *dy;
      float *dz, *dbias;
    } bwd;
    struct { /* softmax_xent and mse_onehot */
      int rows, cols;
      const float *x;
      const int32_t *labels;
      float grad_scale;
      float *dx, *out;
    } loss;
    struct {
      size_t n;
      uint64_t first;
      float rate;
      const uint32_t *key;
      const float *x;
      float *mask, *y;
    } dropout;
    struct {
      size_t n;
      const float *a, *b;
      float *out;
    } mul;
    struct {
      size_t n;
      const float *x;
      float *out;
    } sumsq;
    struct {
      td_opt_pass pass; /* the caller's is host memory, maybe a temporary */
      const td_opt_scalars *sc;
      const float *norm_sq, *guard;
      size_t n;
      float *p, *g, *s1, *s2;
    } opt;
    struct {
      const void *table;
      size_t rec_bytes;
      uint32_t *counter;
      void *cur;
    } begin;
    struct {
      const uint32_t *slot;
      const float *src;
      size_t n;
      float *dst;
    } record;
    struct {
      td_comm *comm; /* the real communicator */
      int rank;
      float *buf;
      size_t n;
      td_reduce_op op;
    } allreduce;
  } u;
} tape_op;

/* A recorded graph: its ops in order, and the steps (step_begin ops) in it. */
typedef struct tape {
  tape_op *ops;
  size_t n, cap;
  int steps;
} tape;

/* What one replica's tape backend saw, for the assertions. */
typedef struct tape_stats {
  int recorded[MAXG + 1];  /* graphs recorded, by their steps */
  long replayed[MAXG + 1]; /* replays, by the graph's steps */
  long direct_steps;       /* steps run op by op */
  long allreduces_taped;   /* allreduces put on a tape */
  int live;                /* graphs recorded and not freed */
  int leaked;              /* allocations left at destroy */
  int violations;
  char why[256]; /* the first violation */
} tape_stats;

/* The factory's argument: whether to claim host memory, and the replicas'
 * stats (reset by the test before each trainer). */
typedef struct tape_cfg {
  int host_memory;
  int fail_record; /* graph_record fails, as a capture can on a GPU */
  tape_stats stats[MAXREP];
} tape_cfg;

typedef struct tape_be {
  td_backend pub; /* what the trainer holds; pub.ctx points back here */
  td_backend_ops ops;
  td_backend *cpu; /* the backend that runs the ops */
  tape_stats *stats;
  int fail_record;
  tape *rec; /* the graph being recorded; NULL when ops run */
  struct {
    char *p;
    size_t bytes;
  } * allocs; /* live allocations, checked when !pub.host_memory */
  int n_allocs, cap_allocs;
} tape_be;

static int violation(tape_be *b, const char *what) {
  if (!b->stats->violations++)
    snprintf(b->stats->why, sizeof b->stats->why, "%s", what);
  return TD_EINTERNAL;
}

/* Whether [p, p + bytes) lies in one of b's allocations; always so for a
 * host-memory backend, which may be given host arrays. */
static int mine(tape_be *b, const void *p, size_t bytes, const char *what) {
  if (b->pub.host_memory)
    return 1;
  const char *c = p;
  for (int i = 0; i < b->n_allocs; i++)
    if (c >= b->allocs[i].p && bytes <= b->allocs[i].bytes &&
        (size_t)(c - b->allocs[i].p) <= b->allocs[i].bytes - bytes)
      return 1;
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %p (%zu bytes) is not this backend's memory", what, p, bytes);
  violation(b, msg);
  return 0;
}

/* Like mine() for an argument that may be NULL. */
static int mine_opt(tape_be *b, const void *p, size_t bytes, const char *what) {
  return !p || mine(b, p, bytes, what);
}

/* The floats a (rows, cols) matrix with leading dimension ld spans. */
static size_t span(int rows, int cols, int ld) {
  return rows > 0 && cols > 0 ? ((size_t)rows - 1) * (size_t)ld + (size_t)cols : 0;
}

/* Runs one op through the CPU backend: the one path of both direct calls
 * and replays. */
static int run_op(tape_be *b, const tape_op *o) {
  td_backend *c = b->cpu;
  const td_backend_ops *x = c->ops;
  switch (o->tag) {
  case OP_FILL:
    return x->fill(c, o->u.fill.x, o->u.fill.n, o->u.fill.value);
  case OP_COPY:
    return x->copy(c, o->u.copy.dst, o->u.copy.src, o->u.copy.n);
  case OP_GATHER: {
    const __typeof__(o->u.gather) *a = &o->u.gather;
    return x->gather(c, &a->l, a->src, a->src_labels, a->idx, a->off, a->count, a->dst,
                     a->dst_labels);
  }
  case OP_GEMM: {
    const __typeof__(o->u.gemm) *a = &o->u.gemm;
    return x->gemm(c, a->trans_a, a->trans_b, a->m, a->n, a->k, a->alpha, a->a, a->lda, a->b,
                   a->ldb, a->beta, a->c, a->ldc);
  }
  case OP_BIAS_ACT_FWD: {
    const __typeof__(o->u.fwd) *a = &o->u.fwd;
    return x->bias_act_fwd(c, a->act, a->rows, a->cols, a->bias, a->z, a->y);
  }
  case OP_BIAS_ACT_BWD: {
    const __typeof__(o->u.bwd) *a = &o->u.bwd;
    return x->bias_act_bwd(c, a->act, a->rows, a->cols, a->z, a->y, a->dy, a->dz, a->dbias);
  }
  case OP_SOFTMAX_XENT:
  case OP_MSE_ONEHOT: {
    const __typeof__(o->u.loss) *a = &o->u.loss;
    return (o->tag == OP_SOFTMAX_XENT ? x->softmax_xent : x->mse_onehot)(
        c, a->rows, a->cols, a->x, a->labels, a->grad_scale, a->dx, a->out);
  }
  case OP_DROPOUT_FWD: {
    const __typeof__(o->u.dropout) *a = &o->u.dropout;
    return x->dropout_fwd(c, a->n, a->first, a->rate, a->key, a->x, a->mask, a->y);
  }
  case OP_MUL:
    return x->mul(c, o->u.mul.n, o->u.mul.a, o->u.mul.b, o->u.mul.out);
  case OP_SUMSQ:
    return x->sumsq(c, o->u.sumsq.n, o->u.sumsq.x, o->u.sumsq.out);
  case OP_OPT_PASS: {
    const __typeof__(o->u.opt) *a = &o->u.opt;
    return x->opt_pass(c, &a->pass, a->sc, a->norm_sq, a->guard, a->n, a->p, a->g, a->s1, a->s2);
  }
  case OP_STEP_BEGIN: {
    const __typeof__(o->u.begin) *a = &o->u.begin;
    return x->step_begin(c, a->table, a->rec_bytes, a->counter, a->cur);
  }
  case OP_RECORD:
    return x->record(c, o->u.record.slot, o->u.record.src, o->u.record.n, o->u.record.dst);
  case OP_ALLREDUCE: {
    const __typeof__(o->u.allreduce) *a = &o->u.allreduce;
    return a->comm->ops->allreduce(a->comm, a->rank, a->buf, a->n, a->op);
  }
  }
  return violation(b, "an op of no known kind");
}

/* Appends the op to the tape being recorded, else runs it now. */
static int issue(tape_be *b, const tape_op *o) {
  if (!b->rec) {
    b->stats->direct_steps += o->tag == OP_STEP_BEGIN;
    return run_op(b, o);
  }
  tape *t = b->rec;
  if (t->n == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 256;
    tape_op *ops = realloc(t->ops, cap * sizeof *ops);
    if (!ops)
      return TD_ENOMEM;
    t->ops = ops;
    t->cap = cap;
  }
  t->ops[t->n++] = *o;
  t->steps += o->tag == OP_STEP_BEGIN;
  b->stats->allreduces_taped += o->tag == OP_ALLREDUCE;
  return TD_OK;
}

static tape_be *tb(td_backend *be) { return be->ctx; }

static void *t_alloc(td_backend *be, size_t bytes) {
  tape_be *b = tb(be);
  if (b->rec) {
    violation(b, "alloc while recording");
    return NULL;
  }
  if (b->n_allocs == b->cap_allocs) {
    int cap = b->cap_allocs ? 2 * b->cap_allocs : 32;
    void *a = realloc(b->allocs, (size_t)cap * sizeof *b->allocs);
    if (!a)
      return NULL;
    b->allocs = a;
    b->cap_allocs = cap;
  }
  char *p = b->cpu->ops->alloc(b->cpu, bytes);
  if (p) {
    b->allocs[b->n_allocs].p = p;
    b->allocs[b->n_allocs++].bytes = bytes;
  }
  return p;
}

static void t_release(td_backend *be, void *p) {
  tape_be *b = tb(be);
  if (b->rec)
    violation(b, "release while recording");
  if (!p)
    return;
  for (int i = 0; i < b->n_allocs; i++)
    if (b->allocs[i].p == p) {
      b->allocs[i] = b->allocs[--b->n_allocs];
      b->cpu->ops->release(b->cpu, p);
      return;
    }
  violation(b, "release of memory this backend did not allocate");
}

static int t_upload(td_backend *be, void *dst, const void *host_src, size_t bytes) {
  tape_be *b = tb(be);
  if (b->rec)
    return violation(b, "upload while recording");
  if (!mine(b, dst, bytes, "upload dst"))
    return TD_EINTERNAL;
  return b->cpu->ops->upload(b->cpu, dst, host_src, bytes);
}

static int t_download(td_backend *be, void *host_dst, const void *src, size_t bytes) {
  tape_be *b = tb(be);
  if (b->rec)
    return violation(b, "download while recording");
  if (!mine(b, src, bytes, "download src"))
    return TD_EINTERNAL;
  return b->cpu->ops->download(b->cpu, host_dst, src, bytes);
}

static int t_fill(td_backend *be, float *x, size_t n, float value) {
  tape_be *b = tb(be);
  if (!mine(b, x, n * sizeof *x, "fill x"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_FILL, .u.fill = {x, n, value}};
  return issue(b, &o);
}

static int t_copy(td_backend *be, float *dst, const float *src, size_t n) {
  tape_be *b = tb(be);
  if (!mine(b, dst, n * sizeof *dst, "copy dst") || !mine(b, src, n * sizeof *src, "copy src"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_COPY, .u.copy = {dst, src, n}};
  return issue(b, &o);
}

static int t_gather(td_backend *be, const td_rows *l, const float *src, const int32_t *src_labels,
                    const uint32_t *idx, const uint32_t *off, size_t count, float *dst,
                    int32_t *dst_labels) {
  tape_be *b = tb(be);
  if (!mine(b, src, l->dim * sizeof *src, "gather src") ||
      !mine(b, src_labels, l->label_dim * sizeof *src_labels, "gather src_labels") ||
      !mine(b, idx, count * sizeof *idx, "gather idx") ||
      !mine_opt(b, off, sizeof *off, "gather off") ||
      !mine(b, dst, count * l->dim * sizeof *dst, "gather dst") ||
      !mine(b, dst_labels, count * l->label_dim * sizeof *dst_labels, "gather dst_labels"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_GATHER,
               .u.gather = {*l, src, src_labels, idx, off, count, dst, dst_labels}};
  return issue(b, &o);
}

static int t_gemm(td_backend *be, int trans_a, int trans_b, int m, int n, int k, float alpha,
                  const float *a, int lda, const float *bm, int ldb, float beta, float *c,
                  int ldc) {
  tape_be *b = tb(be);
  size_t sa = trans_a ? span(k, m, lda) : span(m, k, lda);
  size_t sb = trans_b ? span(n, k, ldb) : span(k, n, ldb);
  if (!mine(b, a, sa * sizeof *a, "gemm a") || !mine(b, bm, sb * sizeof *bm, "gemm b") ||
      !mine(b, c, span(m, n, ldc) * sizeof *c, "gemm c"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_GEMM,
               .u.gemm = {trans_a, trans_b, m, n, k, alpha, a, lda, bm, ldb, beta, c, ldc}};
  return issue(b, &o);
}

static int t_bias_act_fwd(td_backend *be, td_act act, int rows, int cols, const float *bias,
                          float *z, float *y) {
  tape_be *b = tb(be);
  size_t n = (size_t)rows * cols * sizeof *z;
  if (!mine_opt(b, bias, cols * sizeof *bias, "bias_act_fwd bias") ||
      !mine(b, z, n, "bias_act_fwd z") || !mine(b, y, n, "bias_act_fwd y"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_BIAS_ACT_FWD, .u.fwd = {act, rows, cols, bias, z, y}};
  return issue(b, &o);
}

static int t_bias_act_bwd(td_backend *be, td_act act, int rows, int cols, const float *z,
                          const float *y, const float *dy, float *dz, float *dbias) {
  tape_be *b = tb(be);
  size_t n = (size_t)rows * cols * sizeof *z;
  if (!mine_opt(b, z, n, "bias_act_bwd z") || !mine_opt(b, y, n, "bias_act_bwd y") ||
      !mine(b, dy, n, "bias_act_bwd dy") || !mine(b, dz, n, "bias_act_bwd dz") ||
      !mine_opt(b, dbias, cols * sizeof *dbias, "bias_act_bwd dbias"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_BIAS_ACT_BWD, .u.bwd = {act, rows, cols, z, y, dy, dz, dbias}};
  return issue(b, &o);
}

static int loss_op(td_backend *be, op_tag tag, int rows, int cols, const float *x,
                   const int32_t *labels, float grad_scale, float *dx, float *out) {
  tape_be *b = tb(be);
  size_t n = (size_t)rows * cols * sizeof *x;
  if (!mine(b, x, n, "loss input") || !mine(b, labels, rows * sizeof *labels, "loss labels") ||
      !mine_opt(b, dx, n, "loss gradient") || !mine(b, out, 2 * sizeof *out, "loss out"))
    return TD_EINTERNAL;
  tape_op o = {.tag = tag, .u.loss = {rows, cols, x, labels, grad_scale, dx, out}};
  return issue(b, &o);
}

static int t_softmax_xent(td_backend *be, int rows, int cols, const float *logits,
                          const int32_t *labels, float grad_scale, float *dlogits, float *out) {
  return loss_op(be, OP_SOFTMAX_XENT, rows, cols, logits, labels, grad_scale, dlogits, out);
}

static int t_mse_onehot(td_backend *be, int rows, int cols, const float *y, const int32_t *labels,
                        float grad_scale, float *dy, float *out) {
  return loss_op(be, OP_MSE_ONEHOT, rows, cols, y, labels, grad_scale, dy, out);
}

static int t_dropout_fwd(td_backend *be, size_t n, uint64_t first, float rate, const uint32_t *key,
                         const float *x, float *mask, float *y) {
  tape_be *b = tb(be);
  if (!mine(b, key, 2 * sizeof *key, "dropout key") || !mine(b, x, n * sizeof *x, "dropout x") ||
      !mine(b, mask, n * sizeof *mask, "dropout mask") || !mine(b, y, n * sizeof *y, "dropout y"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_DROPOUT_FWD, .u.dropout = {n, first, rate, key, x, mask, y}};
  return issue(b, &o);
}

static int t_mul(td_backend *be, size_t n, const float *a, const float *bv, float *out) {
  tape_be *b = tb(be);
  if (!mine(b, a, n * sizeof *a, "mul a") || !mine(b, bv, n * sizeof *bv, "mul b") ||
      !mine(b, out, n * sizeof *out, "mul out"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_MUL, .u.mul = {n, a, bv, out}};
  return issue(b, &o);
}

static int t_sumsq(td_backend *be, size_t n, const float *x, float *out) {
  tape_be *b = tb(be);
  if (!mine(b, x, n * sizeof *x, "sumsq x") || !mine(b, out, sizeof *out, "sumsq out"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_SUMSQ, .u.sumsq = {n, x, out}};
  return issue(b, &o);
}

static int t_opt_pass(td_backend *be, const td_opt_pass *pass, const td_opt_scalars *sc,
                      const float *norm_sq, const float *guard, size_t n, float *p, float *g,
                      float *s1, float *s2) {
  tape_be *b = tb(be);
  size_t bytes = n * sizeof *p;
  if (!mine(b, sc, sizeof *sc, "opt_pass scalars") ||
      !mine_opt(b, norm_sq, sizeof *norm_sq, "opt_pass norm_sq") ||
      !mine_opt(b, guard, sizeof *guard, "opt_pass guard") || !mine(b, p, bytes, "opt_pass p") ||
      !mine(b, g, bytes, "opt_pass g") || !mine_opt(b, s1, bytes, "opt_pass s1") ||
      !mine_opt(b, s2, bytes, "opt_pass s2"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_OPT_PASS, .u.opt = {*pass, sc, norm_sq, guard, n, p, g, s1, s2}};
  return issue(b, &o);
}

static int t_step_begin(td_backend *be, const void *table, size_t rec_bytes, uint32_t *counter,
                        void *cur) {
  tape_be *b = tb(be);
  if (!mine(b, table, rec_bytes, "step_begin table") ||
      !mine(b, counter, sizeof *counter, "step_begin counter") ||
      !mine(b, cur, rec_bytes, "step_begin cur"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_STEP_BEGIN, .u.begin = {table, rec_bytes, counter, cur}};
  return issue(b, &o);
}

static int t_record(td_backend *be, const uint32_t *slot, const float *src, size_t n, float *dst) {
  tape_be *b = tb(be);
  if (!mine(b, slot, sizeof *slot, "record slot") || !mine(b, src, n * sizeof *src, "record src") ||
      !mine(b, dst, n * sizeof *dst, "record dst"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_RECORD, .u.record = {slot, src, n, dst}};
  return issue(b, &o);
}

static int t_shuffle(td_backend *be, uint32_t n, int rounds, const uint32_t *round_keys,
                     uint32_t *order) {
  tape_be *b = tb(be);
  if (b->rec)
    return violation(b, "shuffle while recording");
  if (!mine(b, order, n * sizeof *order, "shuffle order"))
    return TD_EINTERNAL;
  return b->cpu->ops->shuffle(b->cpu, n, rounds, round_keys, order);
}

static void tape_free(tape *t) {
  if (t) {
    free(t->ops);
    free(t);
  }
}

static int t_graph_record(td_backend *be, int (*body)(void *arg), void *arg, void **graph) {
  tape_be *b = tb(be);
  if (b->rec)
    return violation(b, "graph_record while recording");
  if (b->fail_record)
    return TD_EBACKEND;
  tape *t = calloc(1, sizeof *t);
  if (!t)
    return TD_ENOMEM;
  b->rec = t;
  int rc = body(arg);
  b->rec = NULL;
  if (rc) {
    tape_free(t);
    return rc;
  }
  b->stats->recorded[t->steps < MAXG ? t->steps : MAXG]++;
  b->stats->live++;
  *graph = t;
  return TD_OK;
}

static int t_graph_replay(td_backend *be, void *graph) {
  tape_be *b = tb(be);
  if (b->rec)
    return violation(b, "graph_replay while recording");
  const tape *t = graph;
  for (size_t i = 0; i < t->n; i++) {
    int rc = run_op(b, &t->ops[i]);
    if (rc)
      return rc;
  }
  b->stats->replayed[t->steps < MAXG ? t->steps : MAXG]++;
  return TD_OK;
}

static void t_graph_free(td_backend *be, void *graph) {
  tape_be *b = tb(be);
  if (b->rec)
    violation(b, "graph_free while recording");
  b->stats->live--;
  tape_free(graph);
}

static void t_destroy(td_backend *be) {
  tape_be *b = tb(be);
  b->stats->leaked += b->n_allocs;
  for (int i = 0; i < b->n_allocs; i++)
    b->cpu->ops->release(b->cpu, b->allocs[i].p);
  td_backend_destroy(b->cpu);
  free(b->allocs);
  free(b);
}

/* td_backend_factory: replica `rank`'s tape backend over a CPU backend. */
static int tape_factory(void *arg, int rank, int threads, td_backend **out, td_error *err) {
  tape_cfg *cfg = arg;
  if (rank >= MAXREP)
    return td_errorf(err, TD_EINVAL, "tape backend: rank %d of at most %d", rank, MAXREP);
  td_backend *cpu = NULL;
  int rc = td_cpu_backend_create(&cpu, threads, err);
  if (rc)
    return rc;
  tape_be *b = calloc(1, sizeof *b);
  if (!b) {
    td_backend_destroy(cpu);
    return td_errorf(err, TD_ENOMEM, "tape backend: out of memory");
  }
  b->cpu = cpu;
  b->stats = &cfg->stats[rank];
  b->fail_record = cfg->fail_record;
  /* The CPU table with every op it has wrapped. */
  b->ops = *cpu->ops;
  b->ops.name = "tape";
  b->ops.destroy = t_destroy;
  b->ops.alloc = t_alloc;
  b->ops.release = t_release;
  b->ops.upload = t_upload;
  b->ops.download = t_download;
  b->ops.fill = t_fill;
  b->ops.copy = t_copy;
  b->ops.gather = t_gather;
  b->ops.gemm = t_gemm;
  b->ops.bias_act_fwd = t_bias_act_fwd;
  b->ops.bias_act_bwd = t_bias_act_bwd;
  b->ops.softmax_xent = t_softmax_xent;
  b->ops.mse_onehot = t_mse_onehot;
  b->ops.dropout_fwd = t_dropout_fwd;
  b->ops.mul = t_mul;
  b->ops.sumsq = t_sumsq;
  b->ops.opt_pass = t_opt_pass;
  b->ops.step_begin = t_step_begin;
  b->ops.record = t_record;
  b->ops.shuffle = cpu->ops->shuffle ? t_shuffle : NULL;
  b->ops.graph_record = t_graph_record;
  b->ops.graph_replay = t_graph_replay;
  b->ops.graph_free = t_graph_free;
  b->pub.ops = &b->ops;
  b->pub.ctx = b;
  b->pub.threads = cpu->threads;
  b->pub.host_memory = cfg->host_memory;
  *out = &b->pub;
  return TD_OK;
}

/* ---- the tape communicator --------------------------------------------------
 * The in-process communicator is host-synchronous: called while a rank
 * records, it would reduce once at record time and be missing from every
 * replay. This one puts a recording rank's allreduce on its tape; the
 * replay calls the real one, and the replicas replay on their own threads
 * concurrently, so its barriers pair up as in a run op by op. */

typedef struct tape_comm {
  td_comm pub;
  td_comm *cpu;
  tape_be *bes[MAXREP];
} tape_comm;

static int c_allreduce(td_comm *c, int rank, float *buf, size_t n, td_reduce_op op) {
  tape_comm *tc = c->ctx;
  tape_be *b = tc->bes[rank];
  if (!mine(b, buf, n * sizeof *buf, "allreduce buf"))
    return TD_EINTERNAL;
  tape_op o = {.tag = OP_ALLREDUCE, .u.allreduce = {tc->cpu, rank, buf, n, op}};
  return issue(b, &o);
}

static int c_broadcast(td_comm *c, int rank, float *buf, size_t n, int root) {
  tape_comm *tc = c->ctx;
  if (tc->bes[rank]->rec)
    return violation(tc->bes[rank], "broadcast while recording");
  if (!mine(tc->bes[rank], buf, n * sizeof *buf, "broadcast buf"))
    return TD_EINTERNAL;
  return tc->cpu->ops->broadcast(tc->cpu, rank, buf, n, root);
}

static int c_barrier(td_comm *c, int rank) {
  tape_comm *tc = c->ctx;
  if (tc->bes[rank]->rec)
    return violation(tc->bes[rank], "barrier while recording");
  return tc->cpu->ops->barrier(tc->cpu, rank);
}

static void c_destroy(td_comm *c) {
  tape_comm *tc = c->ctx;
  td_comm_destroy(tc->cpu);
  free(tc);
}

static const td_comm_ops tape_comm_ops = {
    .name = "tape",
    .allreduce = c_allreduce,
    .broadcast = c_broadcast,
    .barrier = c_barrier,
    .destroy = c_destroy,
};

/* td_comm_factory over tape backends. */
static int tape_comm_factory(void *arg, int n, td_backend *const *backends, td_comm **out,
                             td_error *err) {
  (void)arg;
  if (n > MAXREP)
    return td_errorf(err, TD_EINVAL, "tape communicator: %d ranks of at most %d", n, MAXREP);
  for (int r = 0; r < n; r++)
    if (backends[r]->ops->graph_record != t_graph_record)
      return td_errorf(err, TD_EINVAL, "tape communicator: rank %d is not a tape backend", r);
  tape_comm *tc = calloc(1, sizeof *tc);
  if (!tc)
    return td_errorf(err, TD_ENOMEM, "tape communicator: out of memory");
  int rc = td_comm_cpu_create(&tc->cpu, n, err);
  if (rc) {
    free(tc);
    return rc;
  }
  for (int r = 0; r < n; r++)
    tc->bes[r] = backends[r]->ctx;
  tc->pub.ops = &tape_comm_ops;
  tc->pub.size = n;
  tc->pub.ctx = tc;
  *out = &tc->pub;
  return TD_OK;
}

/* ---- the dataset ------------------------------------------------------------ */

static void put_be32(FILE *f, uint32_t v) {
  unsigned char b[4] = {v >> 24, v >> 16, v >> 8, v};
  fwrite(b, 1, 4, f);
}

/* 28x28 images whose class is the brightest of ten bands of pixels, with
 * noise. */
static int write_set(const char *dir, const char *img, const char *lab, uint32_t n, uint32_t seed) {
  enum { PX = SIDE * SIDE, BAND = PX / CLASSES };
  char path[700];
  uint32_t *bits = malloc(sizeof(uint32_t) * n * (PX + 1));
  snprintf(path, sizeof path, "%s/%s", dir, img);
  FILE *fi = bits ? fopen(path, "wb") : NULL;
  snprintf(path, sizeof path, "%s/%s", dir, lab);
  FILE *fl = fi ? fopen(path, "wb") : NULL;
  if (!fl) {
    if (fi)
      fclose(fi);
    free(bits);
    return -1;
  }
  td_prng_bits(td_prng_key(seed), bits, (size_t)n * (PX + 1));
  put_be32(fi, 0x803);
  put_be32(fi, n);
  put_be32(fi, SIDE);
  put_be32(fi, SIDE);
  put_be32(fl, 0x801);
  put_be32(fl, n);
  for (uint32_t i = 0; i < n; i++) {
    const uint32_t *b = bits + (size_t)i * (PX + 1);
    unsigned char px[PX];
    int label = (int)(b[PX] % CLASSES);
    for (int k = 0; k < PX; k++)
      px[k] = (unsigned char)(b[k] % 160);
    for (int k = label * BAND; k < (label + 1) * BAND; k++)
      px[k] = (unsigned char)(px[k] + 90);
    fwrite(px, 1, sizeof px, fi);
    unsigned char l = (unsigned char)label;
    fwrite(&l, 1, 1, fl);
  }
  int bad = ferror(fi) || ferror(fl);
  bad |= fclose(fi) != 0;
  bad |= fclose(fl) != 0;
  free(bits);
  return bad ? -1 : 0;
}

/* ---- the jobs ----------------------------------------------------------------- */

static const char *data_yaml =
    "dataset: {idx: {dir: syn, train_images: train-img, train_labels: train-lab,\n"
    "                test_images: test-img, test_labels: test-lab}}\n";

/* The reference MLP (config/jobs/mnist_mlp.yaml) with Adam. */
static const char *mlp_adam =
    "name: mlp-adam\n"
    "model:\n"
    "  input_shape: [28, 28]\n"
    "  layers:\n"
    "    - dense: {features: 256, kernel_init: HE_NORMAL, bias_init: ZEROS}\n"
    "    - relu: {}\n"
    "    - dense: {features: 128, kernel_init: HE_NORMAL, bias_init: ZEROS}\n"
    "    - relu: {}\n"
    "    - dense: {features: 10, kernel_init: HE_NORMAL, bias_init: ZEROS}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain: [{adam: {learning_rate: {constant: 0.001}, b1: 0.9, b2: 0.999, eps: 1.0e-8}}]\n";

/* Dropout (keys from the step table), a clip computed from the norm in
 * backend memory, AdamW and a schedule (scalars from the step table). */
static const char *mlp_dropout =
    "name: mlp-dropout\n"
    "model:\n"
    "  input_shape: [784]\n"
    "  layers:\n"
    "    - dense: {features: 64, kernel_init: HE_NORMAL}\n"
    "    - relu: {}\n"
    "    - dropout: {rate: 0.2}\n"
    "    - dense: {features: 32, kernel_init: HE_NORMAL}\n"
    "    - gelu: {}\n"
    "    - dropout: {rate: 0.1}\n"
    "    - dense: {features: 10, kernel_init: HE_NORMAL}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain:\n"
    "    - clip_by_global_norm: {max_norm: 0.5}\n"
    "    - adamw:\n"
    "        learning_rate:\n"
    "          warmup_cosine_decay: {init_value: 0.0, peak_value: 3.0e-3,\n"
    "                                warmup_steps: 40, decay_steps: 300}\n"
    "        weight_decay: 0.01\n";

/* SGD whose learning rate jumps to 1e28 at count 20: the loss goes
 * non-finite a few steps later, in the middle of a recorded chunk. */
static const char *mlp_diverge =
    "name: mlp-diverge\n"
    "model:\n"
    "  input_shape: [784]\n"
    "  layers:\n"
    "    - dense: {features: 32, kernel_init: HE_NORMAL}\n"
    "    - relu: {}\n"
    "    - dense: {features: 10, kernel_init: HE_NORMAL}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain:\n"
    "    - sgd:\n"
    "        learning_rate:\n"
    "          piecewise_constant: {init_value: 0.01,\n"
    "                               boundaries_and_scales: [{step: 20, scale: 1.0e30}]}\n";

static const char *roots[1];

/* How a job is run. */
typedef struct run_cfg {
  const char *model; /* one of the documents above */
  int tape;          /* the tape backend; 0: the plain CPU backend */
  int host_memory;   /* of the tape backend */
  int devices;
  int plain_comm;       /* tape replicas with the in-process communicator */
  int fail_record;      /* the tape backend fails to record */
  int every_steps;      /* checkpoint.every_steps: step boundaries there */
  const char *resume;   /* a checkpoint to resume from before running */
  int64_t stop_after;   /* should_stop once this many steps were seen */
  int64_t save_at[3];   /* checkpoint at these steps' boundaries ... */
  const char *save_fmt; /* ... to this path ("%lld": the step) */
  /* After a cancelled run: resume the same trainer from this checkpoint
   * and run again to the end. */
  const char *then_resume;
} run_cfg;

/* What a run gave. */
typedef struct outcome {
  int rc, rc2; /* of the run (and of the second run after then_resume) */
  td_error err;
  td_step_point pts[TOTAL + 1]; /* by step number, timings zeroed */
  int seen[TOTAL + 1];
  int n_steps;      /* on_step calls */
  int out_of_order; /* on_step calls not one step after the previous */
  int64_t prev_step;
  td_epoch_point epochs[EPOCHS + 1]; /* by epoch, timings zeroed */
  int n_epochs, saved, drift;
  float *params;
  size_t n_params;
  int64_t st_step, cancel_step; /* at the end; where the first run stopped */
  uint32_t epoch, step_in_epoch, steps_per_epoch, graph_steps;
  const run_cfg *cfg;
  tape_cfg tape;
} outcome;

static void o_step(void *user, const td_trainer *t, const td_step_point *p) {
  outcome *o = user;
  o->n_steps++;
  o->out_of_order += p->step != o->prev_step + 1;
  o->prev_step = p->step;
  if (p->step >= 1 && p->step <= TOTAL) {
    td_step_point q = *p;
    q.step_ms = q.examples_per_sec = 0.0;
    o->pts[p->step] = q;
    o->seen[p->step] = 1;
  }
  /* Every replica holds replica 0's parameters, state and step. */
  const td_plan *pl = t->plan;
  size_t no = pl->optim.state_slots * pl->n_params;
  for (int k = 1; k < t->n_rep; k++)
    if (memcmp(t->rep[k].st->params, t->st.params, sizeof(float) * pl->n_params) != 0 ||
        memcmp(t->rep[k].st->opt_state, t->st.opt_state, sizeof(float) * no) != 0 ||
        t->rep[k].st->step != t->st.step) {
      o->drift++;
      break;
    }
}

static void o_epoch(void *user, const td_trainer *t, const td_epoch_point *p) {
  (void)t;
  outcome *o = user;
  o->n_epochs++;
  if (p->epoch >= 1 && p->epoch <= EPOCHS) {
    td_epoch_point q = *p;
    q.epoch_sec = q.eval_sec = q.examples_per_sec = 0.0;
    o->epochs[p->epoch] = q;
  }
}

static int save(const td_trainer *t, const char *path) {
  td_ckpt_meta m;
  td_trainer_meta(t, &m);
  td_error err = {0};
  int rc = td_ckpt_write(path, &t->st, &m, &err);
  CHECK(rc == 0, "checkpoint at step %lld: %s", (long long)t->st.step, err.msg);
  return rc;
}

static void o_boundary(void *user, td_trainer *t) {
  outcome *o = user;
  for (int i = 0; i < 3; i++)
    if (o->cfg->save_at[i] && o->cfg->save_at[i] == t->st.step) {
      char path[700];
      snprintf(path, sizeof path, o->cfg->save_fmt, (long long)t->st.step);
      o->saved += save(t, path) == 0;
    }
}

static int o_stop(void *user) {
  outcome *o = user;
  return o->cfg->stop_after && o->n_steps >= o->cfg->stop_after;
}

/* Runs the job as cfg says into *o (free o->params after). */
static void run_job(const run_cfg *cfg, outcome *o) {
  memset(o, 0, sizeof *o);
  o->cfg = cfg;
  o->tape.host_memory = cfg->host_memory;
  o->tape.fail_record = cfg->fail_record;
  char doc[4096];
  snprintf(doc, sizeof doc,
           "%s%s"
           "training: {epochs: %d, batch_size: %d, seed: 5, log_every_steps: 1}\n"
           "devices: {count: %d}\n"
           "checkpoint: {every_steps: %d}\n",
           cfg->model, data_yaml, (int)EPOCHS, (int)BATCH, cfg->devices ? cfg->devices : 1,
           cfg->every_steps);
  Traind__V1__JobSpec *spec = NULL;
  o->rc = td_jobspec_parse(doc, strlen(doc), &spec, &o->err);
  if (o->rc)
    return;
  td_trainer t;
  td_trainer_opts opts = {
      .data_roots = roots,
      .n_data_roots = 1,
      .threads = cfg->devices > 1 ? cfg->devices : 1,
      .backend = cfg->tape ? tape_factory : NULL,
      .backend_arg = &o->tape,
      .comm = cfg->tape && cfg->devices > 1 && !cfg->plain_comm ? tape_comm_factory : NULL,
  };
  o->rc = td_trainer_init(&t, spec, &opts, &o->err);
  if (!o->rc && cfg->resume)
    o->rc = td_trainer_resume(&t, cfg->resume, &o->err);
  if (!o->rc) {
    o->prev_step = t.st.step;
    o->steps_per_epoch = t.steps_per_epoch;
    o->graph_steps = t.graph_steps;
    td_train_hooks h = {.user = o,
                        .on_step = o_step,
                        .on_epoch = o_epoch,
                        .at_boundary = o_boundary,
                        .should_stop = o_stop};
    o->rc = td_trainer_run(&t, &h, NULL, &o->err);
    o->cancel_step = t.st.step;
    if (o->rc == TD_ECANCELLED && cfg->then_resume) {
      o->rc2 = td_trainer_resume(&t, cfg->then_resume, &o->err);
      h.should_stop = NULL;
      /* Steps from the checkpoint on are seen again. */
      o->prev_step = t.st.step;
      if (!o->rc2)
        o->rc2 = td_trainer_run(&t, &h, NULL, &o->err);
    }
    o->st_step = t.st.step;
    o->epoch = t.epoch;
    o->step_in_epoch = t.step_in_epoch;
    o->n_params = t.plan->n_params;
    o->params = malloc(sizeof(float) * o->n_params);
    if (o->params && t.be->ops->download(t.be, o->params, t.st.params, sizeof(float) * o->n_params))
      memset(o->params, 0xff, sizeof(float) * o->n_params);
    td_trainer_free(&t);
  }
  td_jobspec_free(spec);
  /* What the tape backends saw, freed with the trainer. */
  for (int r = 0; cfg->tape && r < MAXREP; r++) {
    const tape_stats *s = &o->tape.stats[r];
    CHECK(s->violations == 0, "tape %d: %d violations; the first: %s", r, s->violations, s->why);
    CHECK(s->live == 0 && s->leaked == 0, "tape %d: %d graphs and %d allocations left", r, s->live,
          s->leaked);
  }
}

static int64_t replays(const outcome *o, int rank, int steps) {
  return o->tape.stats[rank].replayed[steps];
}

/* The steps first..last of a and b: the same points, bit for bit. */
static int same_steps(const outcome *a, const outcome *b, int64_t first, int64_t last) {
  for (int64_t s = first; s <= last; s++)
    if (!a->seen[s] || !b->seen[s] || memcmp(&a->pts[s], &b->pts[s], sizeof a->pts[s]) != 0)
      return 0;
  return 1;
}

static int same_epoch(const outcome *a, const outcome *b, uint32_t e) {
  return memcmp(&a->epochs[e], &b->epochs[e], sizeof a->epochs[e]) == 0;
}

static int same_params(const outcome *a, const outcome *b) {
  return a->params && b->params && a->n_params == b->n_params &&
         memcmp(a->params, b->params, sizeof(float) * a->n_params) == 0;
}

/* A completed run against the reference: every step point, epoch figure
 * and the final parameters, bit for bit. */
static void check_same_run(const outcome *ref, const outcome *o, const char *label) {
  CHECK(o->rc == 0, "%s: %s", label, o->err.msg);
  CHECK(o->n_steps == TOTAL && o->out_of_order == 0 && o->n_epochs == EPOCHS,
        "%s: %d step points (%d out of order), %d epoch points", label, o->n_steps, o->out_of_order,
        o->n_epochs);
  int64_t diff = 0;
  for (int64_t s = 1; s <= TOTAL && !diff; s++)
    if (!same_steps(ref, o, s, s))
      diff = s;
  CHECK(diff == 0, "%s: step %lld differs: loss %.9g/%.9g grad_norm %.9g/%.9g lr %.9g/%.9g", label,
        (long long)diff, diff ? o->pts[diff].loss : 0.0, diff ? ref->pts[diff].loss : 0.0,
        diff ? o->pts[diff].grad_norm : 0.0, diff ? ref->pts[diff].grad_norm : 0.0,
        diff ? o->pts[diff].lr : 0.0, diff ? ref->pts[diff].lr : 0.0);
  for (uint32_t e = 1; e <= EPOCHS; e++)
    CHECK(same_epoch(ref, o, e),
          "%s: epoch %u: train %.9g/%.9g test %.9g/%.9g, reference %.9g/%.9g %.9g/%.9g", label, e,
          o->epochs[e].train_loss, o->epochs[e].train_accuracy, o->epochs[e].test_loss,
          o->epochs[e].test_accuracy, ref->epochs[e].train_loss, ref->epochs[e].train_accuracy,
          ref->epochs[e].test_loss, ref->epochs[e].test_accuracy);
  CHECK(same_params(ref, o), "%s: the final parameters differ from the reference's", label);
  CHECK(o->st_step == TOTAL && o->epoch == EPOCHS + 1 && o->step_in_epoch == 0,
        "%s: ends at step %lld, position epoch %u step %u", label, (long long)o->st_step, o->epoch,
        o->step_in_epoch);
}

/* The recorded graphs of a tape run from its start: one warm-up step op by
 * op, then a one-step and a graph_steps-step graph per replica, the long
 * one replayed while at least graph_steps steps are left of a chunk. */
static void check_recorded(const outcome *o, int devices, const char *label) {
  for (int r = 0; r < devices; r++) {
    const tape_stats *s = &o->tape.stats[r];
    CHECK(o->graph_steps == 64 && s->recorded[1] == 1 && s->recorded[64] == 1,
          "%s: rank %d recorded %d one-step and %d 64-step graphs (graph_steps %u)", label, r,
          s->recorded[1], s->recorded[64], o->graph_steps);
    CHECK(s->direct_steps == 1, "%s: rank %d ran %ld steps op by op, want the warm-up only", label,
          r, s->direct_steps);
    CHECK(s->replayed[64] >= 1 && s->replayed[1] >= 1 &&
              s->replayed[1] + 64 * s->replayed[64] == TOTAL - 1,
          "%s: rank %d replayed %ld 64-step and %ld one-step graphs for %d steps", label, r,
          s->replayed[64], s->replayed[1], TOTAL - 1);
    /* Two replicas: one allreduce per recorded step. */
    CHECK(s->allreduces_taped == (devices > 1 ? 65 : 0), "%s: rank %d taped %ld allreduces", label,
          r, s->allreduces_taped);
  }
}

static void free_outcome(outcome *o) {
  free(o->params);
  o->params = NULL;
}

/* ---- a, b: the tape against the plain backend ----------------------------- */

static void check_equal_runs(const char *model, const char *name, int devices) {
  run_cfg plain = {.model = model, .devices = devices};
  outcome *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  run_job(&plain, ref);
  CHECK(ref->rc == 0 && ref->n_steps == TOTAL, "%s, plain, %d device(s): rc %d, %d steps: %s", name,
        devices, ref->rc, ref->n_steps, ref->err.msg);
  CHECK(ref->pts[TOTAL].loss < ref->pts[1].loss, "%s: the loss fell from %.4f to %.4f", name,
        ref->pts[1].loss, ref->pts[TOTAL].loss);
  CHECK(devices == 1 || ref->drift == 0, "%s: plain replicas drifted", name);
  for (int hm = 1; hm >= 0; hm--) {
    char label[160];
    snprintf(label, sizeof label, "%s, tape, %d device(s), host_memory %d", name, devices, hm);
    run_cfg c = {.model = model, .tape = 1, .host_memory = hm, .devices = devices};
    run_job(&c, o);
    check_same_run(ref, o, label);
    check_recorded(o, devices, label);
    CHECK(o->drift == 0, "%s: the replicas differed after %d steps", label, o->drift);
    printf("%s: %d steps bitwise equal; 64-step replays %lld, one-step %lld\n", label, o->n_steps,
           (long long)replays(o, 0, 64), (long long)replays(o, 0, 1));
    free_outcome(o);
  }
  if (devices > 1) {
    /* The harness can tell: with the in-process communicator the allreduce
     * runs once at record time and is missing from the replays, so each
     * replica trains on its own shard and the run differs. */
    run_cfg c = {.model = model, .tape = 1, .host_memory = 1, .devices = devices, .plain_comm = 1};
    run_job(&c, o);
    CHECK(o->rc == 0 && (o->drift > 0 || !same_params(ref, o)),
          "%s: tape replicas without a recordable allreduce matched the reference (rc %d)", name,
          o->rc);
    free_outcome(o);
  }
  free_outcome(ref);
  free(ref);
  free(o);
}

/* ---- c: resume ----------------------------------------------------------------- */

static void check_resume(const char *root) {
  char fmt[700], path[700], path2[700];
  snprintf(fmt, sizeof fmt, "%s/plain-%%lld.h5", root);
  /* every_steps 100: boundaries at 100 (mid-epoch 1), 128 (its end) and
   * 200; chunks of 99, 28, 72 and 56 steps on the tape. */
  run_cfg plain = {
      .model = mlp_dropout, .every_steps = 100, .save_at = {100, 128}, .save_fmt = fmt};
  outcome *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  run_job(&plain, ref);
  CHECK(ref->rc == 0 && ref->saved == 2, "plain run for resume: rc %d, %d saved: %s", ref->rc,
        ref->saved, ref->err.msg);

  for (int hm = 1; hm >= 0; hm--) {
    char label[160];
    /* A fresh tape trainer from the plain run's checkpoint mid-epoch. */
    snprintf(path, sizeof path, fmt, 100LL);
    snprintf(label, sizeof label, "tape (host_memory %d) resumed at step 100", hm);
    run_cfg c = {
        .model = mlp_dropout, .tape = 1, .host_memory = hm, .every_steps = 100, .resume = path};
    run_job(&c, o);
    CHECK(o->rc == 0 && o->n_steps == TOTAL - 100 && o->out_of_order == 0,
          "%s: rc %d, %d steps: %s", label, o->rc, o->n_steps, o->err.msg);
    CHECK(same_steps(ref, o, 101, TOTAL) && same_epoch(ref, o, 1) && same_epoch(ref, o, 2) &&
              same_params(ref, o),
          "%s: differs from the uninterrupted run", label);
    CHECK(o->tape.stats[0].direct_steps == 1 && o->tape.stats[0].recorded[1] == 1,
          "%s: %ld warm-up steps, %d one-step graphs", label, o->tape.stats[0].direct_steps,
          o->tape.stats[0].recorded[1]);
    free_outcome(o);

    /* A tape trainer that has recorded already, stopped past step 100
     * (at 128, the epoch's end, unless chunks are short) and sent back to
     * step 100 of epoch 1: the resume drops its graphs, which are recorded
     * again without another warm-up step. */
    snprintf(label, sizeof label, "tape (host_memory %d) stopped, resumed at 100", hm);
    run_cfg w = {.model = mlp_dropout,
                 .tape = 1,
                 .host_memory = hm,
                 .every_steps = 100,
                 .stop_after = 101,
                 .then_resume = path};
    run_job(&w, o);
    CHECK(o->rc == TD_ECANCELLED && o->rc2 == 0 && o->cancel_step > 100,
          "%s: rc %d at step %lld, then %d: %s", label, o->rc, (long long)o->cancel_step, o->rc2,
          o->err.msg);
    CHECK(o->n_steps == o->cancel_step + TOTAL - 100 && o->out_of_order == 0,
          "%s: %d step points, %d out of order", label, o->n_steps, o->out_of_order);
    CHECK(same_steps(ref, o, 1, TOTAL) && same_epoch(ref, o, 1) && same_epoch(ref, o, 2) &&
              same_params(ref, o),
          "%s: differs from the uninterrupted run", label);
    const tape_stats *s = &o->tape.stats[0];
    CHECK(s->direct_steps == 1 && s->recorded[1] == 2 && s->recorded[64] == 2,
          "%s: %ld steps op by op, %d one-step and %d 64-step graphs recorded", label,
          s->direct_steps, s->recorded[1], s->recorded[64]);
    free_outcome(o);
  }

  /* The tape run checkpoints at the epoch's end; a fresh tape trainer
   * resumes there; and the plain backend resumes from a tape checkpoint. */
  snprintf(fmt, sizeof fmt, "%s/tape-%%lld.h5", root);
  run_cfg t = {.model = mlp_dropout,
               .tape = 1,
               .host_memory = 0,
               .every_steps = 100,
               .save_at = {128},
               .save_fmt = fmt};
  run_job(&t, o);
  check_same_run(ref, o, "tape run checkpointing at 128");
  CHECK(o->saved == 1, "the tape run wrote %d checkpoints", o->saved);
  free_outcome(o);
  snprintf(path2, sizeof path2, fmt, 128LL);
  for (int use_tape = 1; use_tape >= 0; use_tape--) {
    run_cfg c = {.model = mlp_dropout, .tape = use_tape, .every_steps = 100, .resume = path2};
    run_job(&c, o);
    CHECK(o->rc == 0 && o->n_steps == TOTAL - 128 && same_steps(ref, o, 129, TOTAL) &&
              same_epoch(ref, o, 2) && same_params(ref, o),
          "%s resumed at the tape run's step 128: rc %d, %d steps, differs: %s",
          use_tape ? "tape" : "plain", o->rc, o->n_steps, o->err.msg);
    free_outcome(o);
  }
  free_outcome(ref);
  free(ref);
  free(o);
}

/* ---- d: cancellation --------------------------------------------------------- */

static void check_cancel(void) {
  outcome *o = calloc(1, sizeof *o);
  /* Stops are polled between chunks: after step 30 the next is at the
   * boundary at 100 (every_steps), or with none at the epoch's end. */
  const struct { int every, stop; } cases[] = {{100, 30}, {0, 30}, {0, 1}, {100, 150}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    for (int use_tape = 0; use_tape <= 1; use_tape++) {
      run_cfg c = {.model = mlp_adam,
                   .tape = use_tape,
                   .every_steps = cases[i].every,
                   .stop_after = cases[i].stop};
      run_job(&c, o);
      char label[160];
      snprintf(label, sizeof label, "%s, every_steps %d, stop after %d",
               use_tape ? "tape" : "plain", cases[i].every, cases[i].stop);
      int64_t at = (int64_t)(o->epoch - 1) * SPE + o->step_in_epoch;
      CHECK(o->rc == TD_ECANCELLED && o->st_step == o->n_steps && o->out_of_order == 0 &&
                o->n_steps >= cases[i].stop && at == o->st_step,
            "%s: rc %d, step %lld after %d step points, position epoch %u step %u", label, o->rc,
            (long long)o->st_step, o->n_steps, o->epoch, o->step_in_epoch);
      /* The plain backend runs a step per chunk; the tape stops at the
       * next chunk boundary: at the latest the next multiple of
       * every_steps or end of an epoch, exactly that in the first chunk
       * after the warm-up step (later ones may be shorter, as
       * adapt_chunk times them). */
      int64_t s = cases[i].stop, want = s;
      if (use_tape && s > 1) {
        int64_t e = (s + SPE - 1) / SPE * SPE;
        int64_t k = cases[i].every ? (s + cases[i].every - 1) / cases[i].every * cases[i].every : e;
        want = k < e ? k : e;
      }
      CHECK(use_tape && s > SPE ? o->st_step >= s && o->st_step <= want : o->st_step == want,
            "%s: stopped at step %lld, want %lld", label, (long long)o->st_step, (long long)want);
      CHECK(o->n_epochs == (int)(o->st_step / SPE), "%s: %d epoch points at step %lld", label,
            o->n_epochs, (long long)o->st_step);
      free_outcome(o);
    }
  }
  free(o);
}

/* ---- e: a diverging run ---------------------------------------------------- */

static void check_diverge(void) {
  outcome *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  run_cfg plain = {.model = mlp_diverge};
  run_job(&plain, ref);
  CHECK(ref->rc == TD_ENUMERIC, "plain: a learning rate of 1e28 fails with ENUMERIC (rc %d: %s)",
        ref->rc, ref->err.msg);
  CHECK(ref->n_steps > 20 && ref->n_steps < SPE && ref->st_step == ref->n_steps,
        "plain: failed after %d good steps at step %lld", ref->n_steps, (long long)ref->st_step);
  char want[64];
  snprintf(want, sizeof want, "step %d: ", ref->n_steps + 1);
  CHECK_STR_CONTAINS(ref->err.msg, want);
  for (int hm = 1; hm >= 0; hm--) {
    run_cfg c = {.model = mlp_diverge, .tape = 1, .host_memory = hm};
    run_job(&c, o);
    CHECK(o->rc == TD_ENUMERIC && strcmp(o->err.msg, ref->err.msg) == 0,
          "tape (host_memory %d): rc %d \"%s\", plain \"%s\"", hm, o->rc, o->err.msg, ref->err.msg);
    CHECK(o->st_step == ref->st_step, "tape (host_memory %d): fails with step %lld, plain %lld", hm,
          (long long)o->st_step, (long long)ref->st_step);
    /* The failing step is inside the first recorded chunk (2..128). */
    CHECK(replays(o, 0, 64) == 1 && o->tape.stats[0].direct_steps == 1 && ref->n_steps >= 2,
          "tape (host_memory %d): %lld 64-step replays, %ld steps op by op", hm,
          (long long)replays(o, 0, 64), o->tape.stats[0].direct_steps);
    /* The steps before the failing one were taken and are reported, as op
     * by op, and the position is where the run failed. */
    int reported = o->n_steps == ref->n_steps && same_steps(ref, o, 1, ref->n_steps);
    int position = o->epoch == ref->epoch && o->step_in_epoch == ref->step_in_epoch;
    CHECK(reported, "tape (host_memory %d): %d step points before the failure, plain %d", hm,
          o->n_steps, ref->n_steps);
    CHECK(position,
          "tape (host_memory %d): position epoch %u step %u after the failure, plain %u %u", hm,
          o->epoch, o->step_in_epoch, ref->epoch, ref->step_in_epoch);
    free_outcome(o);
  }
  free_outcome(ref);
  free(ref);
  free(o);
}

/* ---- f: a backend that cannot record ---------------------------------- */

/* A backend whose recording fails: the job goes on op by op, with the
 * same results. */
static void check_record_failure(void) {
  outcome *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  run_cfg plain = {.model = mlp_dropout};
  run_job(&plain, ref);
  run_cfg c = {.model = mlp_dropout, .tape = 1, .host_memory = 0, .fail_record = 1};
  run_job(&c, o);
  check_same_run(ref, o, "tape failing to record");
  CHECK(o->tape.stats[0].direct_steps == TOTAL, "tape failing to record: %ld steps op by op",
        o->tape.stats[0].direct_steps);
  free_outcome(o);
  free_outcome(ref);
  free(ref);
  free(o);
}

int main(void) {
  char root[] = "/tmp/traind-record-XXXXXX";
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    return 1;
  }
  char dir[600];
  snprintf(dir, sizeof dir, "%s/syn", root);
  mkdir(dir, 0755);
  int wrc = write_set(dir, "train-img", "train-lab", NTRAIN, 1);
  wrc |= write_set(dir, "test-img", "test-lab", NTEST, 2);
  CHECK(wrc == 0, "writing the synthetic dataset under %s", dir);
  roots[0] = root;

  check_equal_runs(mlp_adam, "reference MLP, adam", 1);
  check_equal_runs(mlp_dropout, "dropout, clip, adamw, warmup_cosine_decay", 1);
  check_equal_runs(mlp_dropout, "dropout, clip, adamw, warmup_cosine_decay", 2);
  check_resume(root);
  check_cancel();
  check_diverge();
  check_record_failure();

  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  CHECK(system(cmd) == 0, "cleanup");
  return td_check_exit();
}
