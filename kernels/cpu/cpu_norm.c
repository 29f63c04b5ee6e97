/* The CPU backend's normalization ops: batch norm over columns (an image's
 * channels, every position of every example a row) and layer norm over
 * rows. Plain loops in a fixed order, sums in double: deterministic for
 * any thread count. oneDNN has both, but its batch norm cannot take
 * statistics reduced across replicas in the middle of its backward pass,
 * which the engine's data parallelism needs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

/* Per-column sums of x and x^2 (or of a and a*b) in double, row by row. */
static int col_sums(cpu_ctx *ctx, int rows, int cols, const float *a, const float *b,
                    const float *sub, const float *mul, double **out) {
  double *acc = cpu_doubles(ctx, 2 * (size_t)cols);
  if (!acc)
    return cpu_fail(ctx, "out of memory for %d column sums", cols);
  double *s1 = acc, *s2 = acc + cols;
  for (int r = 0; r < rows; r++) {
    const float *ar = a + (size_t)r * cols;
    const float *br = b ? b + (size_t)r * cols : ar;
    if (sub) {
      /* a and a * (b - sub) * mul: dy and dy * xhat. */
      for (int c = 0; c < cols; c++) {
        float xh = (br[c] - sub[c]) * mul[c];
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

int cpu_bn_fwd(td_backend *be, int train, int rows, int cols, const float *x, const float *m,
               float *running, float momentum, float eps, const float *scale, const float *bias,
               float *y, float *saved) {
  (void)be;
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
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * cols;
    float *yr = y + (size_t)r * cols;
    for (int c = 0; c < cols; c++) {
      float v = (xr[c] - mean[c]) * rstd[c];
      yr[c] = v * (scale ? scale[c] : 1.0f) + (bias ? bias[c] : 0.0f);
    }
  }
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

int cpu_bn_bwd_dx(td_backend *be, int rows, int cols, const float *x, const float *dy,
                  const float *saved, const float *scale, const float *s, float *dx) {
  (void)be;
  const float *mean = saved, *rstd = saved + cols;
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * cols, *dyr = dy + (size_t)r * cols;
    float *dxr = dx + (size_t)r * cols;
    for (int c = 0; c < cols; c++) {
      float xh = (xr[c] - mean[c]) * rstd[c];
      float k = (scale ? scale[c] : 1.0f) * rstd[c];
      dxr[c] = k * (dyr[c] - s[c] - xh * s[cols + c]);
    }
  }
  return TD_OK;
}

int cpu_ln_fwd(td_backend *be, int rows, int cols, float eps, const float *x, const float *scale,
               const float *bias, float *y, float *saved) {
  (void)be;
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * cols;
    float *yr = y + (size_t)r * cols;
    double s1 = 0.0, s2 = 0.0;
    for (int c = 0; c < cols; c++) {
      s1 += xr[c];
      s2 += (double)xr[c] * xr[c];
    }
    double mu = s1 / cols, var = s2 / cols - mu * mu;
    float fmu = (float)mu, rstd = (float)(1.0 / sqrt((var > 0.0 ? var : 0.0) + eps));
    saved[2 * (size_t)r] = fmu;
    saved[2 * (size_t)r + 1] = rstd;
    for (int c = 0; c < cols; c++)
      yr[c] = (xr[c] - fmu) * rstd * (scale ? scale[c] : 1.0f) + (bias ? bias[c] : 0.0f);
  }
  return TD_OK;
}

int cpu_ln_bwd(td_backend *be, int rows, int cols, const float *x, const float *dy,
               const float *saved, const float *scale, float *dx, float *dscale, float *dbias) {
  double *acc = NULL;
  if (dscale || dbias) {
    acc = cpu_doubles(be->ctx, 2 * (size_t)cols);
    if (!acc)
      return cpu_fail(be->ctx, "out of memory for %d column sums", cols);
  }
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * cols, *dyr = dy + (size_t)r * cols;
    float mu = saved[2 * (size_t)r], rstd = saved[2 * (size_t)r + 1];
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
    if (!dx)
      continue;
    float m1 = (float)(g1 / cols), m2 = (float)(g2 / cols);
    float *dxr = dx + (size_t)r * cols;
    for (int c = 0; c < cols; c++) {
      float xh = (xr[c] - mu) * rstd;
      dxr[c] = rstd * (dyr[c] * (scale ? scale[c] : 1.0f) - m1 - xh * m2);
    }
  }
  for (int c = 0; acc && c < cols; c++) {
    if (dbias)
      dbias[c] = (float)acc[c];
    if (dscale)
      dscale[c] = (float)acc[cols + c];
  }
  return TD_OK;
}
