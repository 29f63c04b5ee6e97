/* The CPU backend's context helpers, shared by its parts: the failure
 * record behind last_error, and the accumulators of the normalization
 * and bias-gradient sums. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

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
