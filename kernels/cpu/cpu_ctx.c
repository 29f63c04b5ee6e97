/* The CPU backend's context helpers, shared by its parts: the failure
 * record behind last_error, the accumulators of the normalization and
 * bias-gradient sums, and the single-threaded SGEMM every part calls. */
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

void cpu_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
               const float *b, int ldb, float beta, float *c, int ldc) {
  omp_set_num_threads(1); /* oneDNN reads the calling thread's OpenMP setting */
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b,
                                ldb, beta, c, ldc);
  if (st != dnnl_success) {
    /* Only inconsistent shapes or leading dimensions fail, which the
     * callers rule out: a wrong C must never pass silently. */
    fprintf(stderr,
            "cpu backend: dnnl_sgemm(%c%c, m=%d n=%d k=%d, lda=%d ldb=%d ldc=%d) failed: %d\n",
            trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, lda, ldb, ldc, (int)st);
    abort();
  }
}

int cpu_fail(cpu_ctx *ctx, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx->last, sizeof ctx->last, fmt, ap);
  va_end(ap);
  return TD_EBACKEND;
}

double *cpu_scratch(cpu_ctx *ctx, size_t n) {
  if (n > ctx->dbuf_n) {
    double *p = realloc(ctx->dbuf, n * sizeof *p);
    if (!p)
      return NULL;
    ctx->dbuf = p;
    ctx->dbuf_n = n;
  }
  return ctx->dbuf;
}

double *cpu_doubles(cpu_ctx *ctx, size_t n) {
  double *p = cpu_scratch(ctx, n);
  if (p)
    memset(p, 0, n * sizeof *p);
  return p;
}
