/* The CPU backend's sequence ops: token embedding and causal
 * self-attention. Attention runs one task per (sequence, head): each task
 * makes its head's (t, t) scores with single-threaded sgemm calls on
 * strided views of qkv and writes only its own rows and columns, so the
 * result does not depend on the thread count. The softmax and its
 * backward sum in double. */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"

/* ---- embedding ---------------------------------------------------------- */

typedef struct embed_job {
  int rows, cols, vocab;
  const float *ids, *table, *dy;
  float *y, *dtable;
} embed_job;

static int token_id(float v, int vocab) { return v >= 0.0f && v < (float)vocab ? (int)v : -1; }

static void embed_fwd_task(void *arg, size_t t) {
  const embed_job *j = arg;
  int r0, r1;
  task_rows(j->rows, j->cols, t, &r0, &r1);
  for (int r = r0; r < r1; r++) {
    const int id = token_id(j->ids[r], j->vocab);
    float *y = j->y + (size_t)r * j->cols;
    if (id < 0)
      memset(y, 0, (size_t)j->cols * sizeof *y);
    else
      memcpy(y, j->table + (size_t)id * j->cols, (size_t)j->cols * sizeof *y);
  }
}

int cpu_embed_fwd(td_backend *be, int rows, int cols, int vocab, const float *ids,
                  const float *table, float *y) {
  cpu_ctx *ctx = be->ctx;
  embed_job j = {.rows = rows, .cols = cols, .vocab = vocab, .ids = ids, .table = table, .y = y};
  cpu_pool_run(ctx->pool, row_tasks(rows, cols), embed_fwd_task, &j);
  return TD_OK;
}

/* Backward: tasks own column bands of the table and add every row of dy
 * into its id's row in row order, so each sum has one fixed order. */
#define EMBED_BAND 64

static void embed_bwd_task(void *arg, size_t t) {
  const embed_job *j = arg;
  const int c0 = (int)t * EMBED_BAND;
  const int c1 = c0 + EMBED_BAND < j->cols ? c0 + EMBED_BAND : j->cols;
  const size_t w = (size_t)(c1 - c0);
  for (int v = 0; v < j->vocab; v++)
    memset(j->dtable + (size_t)v * j->cols + c0, 0, w * sizeof(float));
  for (int r = 0; r < j->rows; r++) {
    const int id = token_id(j->ids[r], j->vocab);
    if (id < 0)
      continue;
    float *d = j->dtable + (size_t)id * j->cols + c0;
    const float *g = j->dy + (size_t)r * j->cols + c0;
    for (size_t c = 0; c < w; c++)
      d[c] += g[c];
  }
}

int cpu_embed_bwd(td_backend *be, int rows, int cols, int vocab, const float *ids, const float *dy,
                  float *dtable) {
  cpu_ctx *ctx = be->ctx;
  embed_job j = {
      .rows = rows, .cols = cols, .vocab = vocab, .ids = ids, .dy = dy, .dtable = dtable};
  cpu_pool_run(ctx->pool, (size_t)(cols + EMBED_BAND - 1) / EMBED_BAND, embed_bwd_task, &j);
  return TD_OK;
}

/* ---- causal self-attention ---------------------------------------------- */

typedef struct attn_job {
  int t, h, d;
  const float *qkv, *p, *dout;
  float *pw, *o, *dp, *dqkv;
} attn_job;

/* Task k: sequence k / h, head k % h. Its q, k and v (t, d) views in qkv
 * (leading dimension 3f), its (t, t) block of p. */
typedef struct attn_view {
  const float *q, *k, *v;
  size_t pt;    /* the task's block in p and dp */
  size_t row;   /* the sequence's first row of (batch t, f) buffers */
  int col, ld3; /* the head's first column there, and qkv's leading dimension */
} attn_view;

static attn_view attn_view_of(const attn_job *j, size_t task) {
  const int f = j->h * j->d;
  const size_t b = task / (size_t)j->h, head = task % (size_t)j->h;
  attn_view v;
  v.row = b * (size_t)j->t;
  v.col = (int)head * j->d;
  v.ld3 = 3 * f;
  const float *base = j->qkv + v.row * (size_t)v.ld3;
  v.q = base + v.col;
  v.k = base + f + v.col;
  v.v = base + 2 * f + v.col;
  v.pt = task * (size_t)j->t * (size_t)j->t;
  return v;
}

static void probs_task(void *arg, size_t task) {
  const attn_job *j = arg;
  const attn_view v = attn_view_of(j, task);
  const int T = j->t;
  float *p = j->pw + v.pt;
  const float scale = 1.0f / sqrtf((float)j->d);
  cpu_sgemm(0, 1, T, T, j->d, scale, v.q, v.ld3, v.k, v.ld3, 0.0f, p, T);
  for (int i = 0; i < T; i++) {
    float *row = p + (size_t)i * T;
    float mx = row[0];
    for (int k = 1; k <= i; k++)
      mx = row[k] > mx ? row[k] : mx;
    double sum = 0.0;
    for (int k = 0; k <= i; k++) {
      row[k] = expf(row[k] - mx);
      sum += row[k];
    }
    const float inv = (float)(1.0 / sum);
    for (int k = 0; k <= i; k++)
      row[k] *= inv;
    for (int k = i + 1; k < T; k++)
      row[k] = 0.0f;
  }
}

static void mix_task(void *arg, size_t task) {
  const attn_job *j = arg;
  const attn_view v = attn_view_of(j, task);
  const int T = j->t, f = j->h * j->d;
  cpu_sgemm(0, 0, T, j->d, T, 1.0f, j->p + v.pt, T, v.v, v.ld3, 0.0f,
            j->o + v.row * (size_t)f + v.col, f);
}

static void mix_bwd_task(void *arg, size_t task) {
  const attn_job *j = arg;
  const attn_view v = attn_view_of(j, task);
  const int T = j->t, f = j->h * j->d;
  const float *dout = j->dout + v.row * (size_t)f + v.col;
  float *dp = j->dp + v.pt;
  /* dp = do v^T, zero above the diagonal (those weights are zeros). */
  cpu_sgemm(0, 1, T, T, j->d, 1.0f, dout, f, v.v, v.ld3, 0.0f, dp, T);
  for (int i = 0; i < T; i++)
    memset(dp + (size_t)i * T + i + 1, 0, (size_t)(T - 1 - i) * sizeof *dp);
  /* dv = p^T do */
  float *dv = j->dqkv + v.row * (size_t)v.ld3 + 2 * f + v.col;
  cpu_sgemm(1, 0, T, j->d, T, 1.0f, j->p + v.pt, T, dout, f, 0.0f, dv, v.ld3);
}

static void probs_bwd_task(void *arg, size_t task) {
  const attn_job *j = arg;
  const attn_view v = attn_view_of(j, task);
  const int T = j->t, f = j->h * j->d;
  const float *p = j->p + v.pt;
  float *ds = j->dp + v.pt;
  for (int i = 0; i < T; i++) {
    const float *pr = p + (size_t)i * T;
    float *dr = ds + (size_t)i * T;
    double dot = 0.0;
    for (int k = 0; k <= i; k++)
      dot += (double)pr[k] * dr[k];
    const float fd = (float)dot;
    for (int k = 0; k <= i; k++)
      dr[k] = pr[k] * (dr[k] - fd);
    for (int k = i + 1; k < T; k++)
      dr[k] = 0.0f;
  }
  const float scale = 1.0f / sqrtf((float)j->d);
  float *dq = j->dqkv + v.row * (size_t)v.ld3 + v.col;
  float *dk = dq + f;
  /* dq = ds k / sqrt(d), dk = ds^T q / sqrt(d) */
  cpu_sgemm(0, 0, T, j->d, T, scale, ds, T, v.k, v.ld3, 0.0f, dq, v.ld3);
  cpu_sgemm(1, 0, T, j->d, T, scale, ds, T, v.q, v.ld3, 0.0f, dk, v.ld3);
}

static void attn_run(td_backend *be, int batch, cpu_task task, attn_job *j) {
  cpu_ctx *ctx = be->ctx;
  cpu_pool_run(ctx->pool, (size_t)batch * (size_t)j->h, task, j);
}

int cpu_attn_probs(td_backend *be, int batch, int t, int h, int d, const float *qkv, float *p) {
  attn_job j = {.t = t, .h = h, .d = d, .qkv = qkv, .pw = p};
  attn_run(be, batch, probs_task, &j);
  return TD_OK;
}

int cpu_attn_mix(td_backend *be, int batch, int t, int h, int d, const float *p, const float *qkv,
                 float *o) {
  attn_job j = {.t = t, .h = h, .d = d, .qkv = qkv, .p = p, .o = o};
  attn_run(be, batch, mix_task, &j);
  return TD_OK;
}

int cpu_attn_mix_bwd(td_backend *be, int batch, int t, int h, int d, const float *p,
                     const float *qkv, const float *dout, float *dp, float *dqkv) {
  attn_job j = {.t = t, .h = h, .d = d, .qkv = qkv, .p = p, .dout = dout, .dp = dp, .dqkv = dqkv};
  attn_run(be, batch, mix_bwd_task, &j);
  return TD_OK;
}

int cpu_attn_probs_bwd(td_backend *be, int batch, int t, int h, int d, const float *p, float *dp,
                       const float *qkv, float *dqkv) {
  attn_job j = {.t = t, .h = h, .d = d, .qkv = qkv, .p = p, .dp = dp, .dqkv = dqkv};
  attn_run(be, batch, probs_bwd_task, &j);
  return TD_OK;
}
