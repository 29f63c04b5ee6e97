/* The CPU backend's normalization ops: batch norm over columns (an image's
 * channels, every position of every example a row) and layer norm over
 * rows. They run on the backend's pool in tasks of whole rows fixed by the
 * shape; column sums are taken in double per task and added in task
 * order: deterministic for any thread count. oneDNN has both, but its
 * batch norm cannot take statistics reduced across replicas in the middle
 * of its backward pass, which the engine's data parallelism needs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

typedef struct norm_job {
  int rows, cols;
  const float *a, *b, *sub, *mul; /* col_sums */
  const float *x, *dy, *saved, *scale, *bias, *s, *mean, *rstd;
  float *y, *dx, *saved_out;
  float eps;
  double *part; /* per task: 2 * cols partial sums */
} norm_job;

/* Column sums of a and a*b (or, with sub: a and a * (b - sub) * mul, that
 * is dy and dy * xhat), one task's rows. */
static void col_sums_task(void *arg, size_t t) {
  const norm_job *j = arg;
  const int cols = j->cols;
  int r0, r1;
  task_rows(j->rows, cols, t, &r0, &r1);
  double *s1 = j->part + t * 2 * (size_t)cols, *s2 = s1 + cols;
  memset(s1, 0, 2 * (size_t)cols * sizeof *s1);
  for (int r = r0; r < r1; r++) {
    const float *ar = j->a + (size_t)r * cols;
    const float *br = j->b ? j->b + (size_t)r * cols : ar;
    if (j->sub) {
      for (int c = 0; c < cols; c++) {
        float xh = (br[c] - j->sub[c]) * j->mul[c];
        s1[c] += ar[c];
        s2[c] += (double)(ar[c] * xh);
      }
    } else {
      for (int c = 0; c < cols; c++) {
        s1[c] += ar[c];
        s2[c] += (double)ar[c] * br[c];
      }
    }
  }
}

/* The two column sums over every row, in acc[0 .. 2 cols): the tasks'
 * partial sums added in task order. */
static int col_sums(cpu_ctx *ctx, int rows, int cols, const float *a, const float *b,
                    const float *sub, const float *mul, double **out) {
  const size_t tasks = row_tasks(rows, cols), w = 2 * (size_t)cols;
  double *acc = cpu_doubles(ctx, (tasks + 1) * w);
  if (!acc)
    return cpu_fail(ctx, "out of memory for %d column sums", cols);
  norm_job j = {
      .rows = rows, .cols = cols, .a = a, .b = b, .sub = sub, .mul = mul, .part = acc + w};
  cpu_pool_run(ctx->pool, tasks, col_sums_task, &j);
  for (size_t t = 0; t < tasks; t++)
    for (size_t c = 0; c < w; c++)
      acc[c] += j.part[t * w + c];
  *out = acc;
  return TD_OK;
}

int cpu_col_moments(td_backend *be, int rows, int cols, const float *x, float *m) {
  double *acc = NULL;
  int rc = col_sums(be->ctx, rows, cols, x, NULL, NULL, NULL, &acc);
  if (rc)
    return rc;
  for (int c = 0; c < 2 * cols; c++)
    m[c] = (float)(acc[c] / rows);
  return TD_OK;
}

static void bn_fwd_task(void *arg, size_t t) {
  const norm_job *j = arg;
  const int cols = j->cols;
  int r0, r1;
  task_rows(j->rows, cols, t, &r0, &r1);
  for (int r = r0; r < r1; r++) {
    const float *xr = j->x + (size_t)r * cols;
    float *yr = j->y + (size_t)r * cols;
    for (int c = 0; c < cols; c++) {
      float v = (xr[c] - j->mean[c]) * j->rstd[c];
      yr[c] = v * (j->scale ? j->scale[c] : 1.0f) + (j->bias ? j->bias[c] : 0.0f);
    }
  }
}

int cpu_bn_fwd(td_backend *be, int train, int rows, int cols, const float *x, const float *m,
               float *running, float momentum, float eps, const float *scale, const float *bias,
               float *y, float *saved) {
  float *mean = saved, *rstd = saved + cols;
  for (int c = 0; c < cols; c++) {
    float mu, var;
    if (train) {
      mu = m[c];
      var = fmaxf(0.0f, m[cols + c] - mu * mu);
      if (running) {
        running[c] = momentum * running[c] + (1.0f - momentum) * mu;
        running[cols + c] = momentum * running[cols + c] + (1.0f - momentum) * var;
      }
    } else {
      mu = running[c];
      var = running[cols + c];
    }
    mean[c] = mu;
    rstd[c] = 1.0f / sqrtf(var + eps);
  }
  norm_job j = {.rows = rows,
                .cols = cols,
                .x = x,
                .scale = scale,
                .bias = bias,
                .y = y,
                .mean = mean,
                .rstd = rstd};
  cpu_pool_run(((cpu_ctx *)be->ctx)->pool, row_tasks(rows, cols), bn_fwd_task, &j);
  return TD_OK;
}

int cpu_bn_bwd_sums(td_backend *be, int rows, int cols, const float *x, const float *dy,
                    const float *saved, float *dscale, float *dbias, float *s) {
  double *acc = NULL;
  int rc = col_sums(be->ctx, rows, cols, dy, x, saved, saved + cols, &acc);
  if (rc)
    return rc;
  for (int c = 0; c < cols; c++) {
    if (dbias)
      dbias[c] = (float)acc[c];
    if (dscale)
      dscale[c] = (float)acc[cols + c];
    s[c] = (float)(acc[c] / rows);
    s[cols + c] = (float)(acc[cols + c] / rows);
  }
  return TD_OK;
}

static void bn_dx_task(void *arg, size_t t) {
  const norm_job *j = arg;
  const int cols = j->cols;
  const float *mean = j->saved, *rstd = j->saved + cols, *s = j->s;
  int r0, r1;
  task_rows(j->rows, cols, t, &r0, &r1);
  for (int r = r0; r < r1; r++) {
    const float *xr = j->x + (size_t)r * cols, *dyr = j->dy + (size_t)r * cols;
    float *dxr = j->dx + (size_t)r * cols;
    for (int c = 0; c < cols; c++) {
      float xh = (xr[c] - mean[c]) * rstd[c];
      float k = (j->scale ? j->scale[c] : 1.0f) * rstd[c];
      dxr[c] = k * (dyr[c] - s[c] - xh * s[cols + c]);
    }
  }
}

int cpu_bn_bwd_dx(td_backend *be, int rows, int cols, const float *x, const float *dy,
                  const float *saved, const float *scale, const float *s, float *dx) {
  norm_job j = {.rows = rows,
                .cols = cols,
                .x = x,
                .dy = dy,
                .saved = saved,
                .scale = scale,
                .s = s,
                .dx = dx};
  cpu_pool_run(((cpu_ctx *)be->ctx)->pool, row_tasks(rows, cols), bn_dx_task, &j);
  return TD_OK;
}

static void ln_fwd_task(void *arg, size_t t) {
  const norm_job *j = arg;
  const int cols = j->cols;
  int r0, r1;
  task_rows(j->rows, cols, t, &r0, &r1);
  for (int r = r0; r < r1; r++) {
    const float *xr = j->x + (size_t)r * cols;
    float *yr = j->y + (size_t)r * cols;
    double s1 = 0.0, s2 = 0.0;
    for (int c = 0; c < cols; c++) {
      s1 += xr[c];
      s2 += (double)xr[c] * xr[c];
    }
    double mu = s1 / cols, var = s2 / cols - mu * mu;
    float fmu = (float)mu, rstd = (float)(1.0 / sqrt((var > 0.0 ? var : 0.0) + j->eps));
    j->saved_out[2 * (size_t)r] = fmu;
    j->saved_out[2 * (size_t)r + 1] = rstd;
    for (int c = 0; c < cols; c++)
      yr[c] =
          (xr[c] - fmu) * rstd * (j->scale ? j->scale[c] : 1.0f) + (j->bias ? j->bias[c] : 0.0f);
  }
}

int cpu_ln_fwd(td_backend *be, int rows, int cols, float eps, const float *x, const float *scale,
               const float *bias, float *y, float *saved) {
  norm_job j = {.rows = rows,
                .cols = cols,
                .eps = eps,
                .x = x,
                .scale = scale,
                .bias = bias,
                .y = y,
                .saved_out = saved};
  cpu_pool_run(((cpu_ctx *)be->ctx)->pool, row_tasks(rows, cols), ln_fwd_task, &j);
  return TD_OK;
}

static void ln_bwd_task(void *arg, size_t t) {
  const norm_job *j = arg;
  const int cols = j->cols;
  const float *scale = j->scale;
  int r0, r1;
  task_rows(j->rows, cols, t, &r0, &r1);
  double *acc = j->part ? j->part + t * 2 * (size_t)cols : NULL;
  if (acc)
    memset(acc, 0, 2 * (size_t)cols * sizeof *acc);
  for (int r = r0; r < r1; r++) {
    const float *xr = j->x + (size_t)r * cols, *dyr = j->dy + (size_t)r * cols;
    float mu = j->saved[2 * (size_t)r], rstd = j->saved[2 * (size_t)r + 1];
    double g1 = 0.0, g2 = 0.0;
    for (int c = 0; c < cols; c++) {
      float xh = (xr[c] - mu) * rstd;
      float g = dyr[c] * (scale ? scale[c] : 1.0f);
      g1 += g;
      g2 += (double)(g * xh);
      if (acc) {
        acc[c] += dyr[c];
        acc[cols + c] += (double)(dyr[c] * xh);
      }
    }
    if (!j->dx)
      continue;
    float m1 = (float)(g1 / cols), m2 = (float)(g2 / cols);
    float *dxr = j->dx + (size_t)r * cols;
    for (int c = 0; c < cols; c++) {
      float xh = (xr[c] - mu) * rstd;
      dxr[c] = rstd * (dyr[c] * (scale ? scale[c] : 1.0f) - m1 - xh * m2);
    }
  }
}

int cpu_ln_bwd(td_backend *be, int rows, int cols, const float *x, const float *dy,
               const float *saved, const float *scale, float *dx, float *dscale, float *dbias) {
  cpu_ctx *ctx = be->ctx;
  const size_t tasks = row_tasks(rows, cols), w = 2 * (size_t)cols;
  norm_job j = {
      .rows = rows, .cols = cols, .x = x, .dy = dy, .saved = saved, .scale = scale, .dx = dx};
  if ((dscale || dbias) && !(j.part = cpu_doubles(ctx, tasks * w)))
    return cpu_fail(ctx, "out of memory for %d column sums", cols);
  cpu_pool_run(ctx->pool, tasks, ln_bwd_task, &j);
  for (int c = 0; j.part && c < cols; c++) {
    double sb = 0.0, ss = 0.0;
    for (size_t t = 0; t < tasks; t++) {
      sb += j.part[t * w + (size_t)c];
      ss += j.part[t * w + (size_t)cols + (size_t)c];
    }
    if (dbias)
      dbias[c] = (float)sb;
    if (dscale)
      dscale[c] = (float)ss;
  }
  return TD_OK;
}
