/* The CPU backend's thread pool (kernels/cpu/cpu_pool.c): every task of a
 * run runs exactly once, runs follow each other without a task of one
 * leaking into the next (tens of thousands of short runs of varying
 * sizes), with 1 to 5 threads, also after the workers went to sleep; and
 * the backend's ops give bitwise the same results at any thread count
 * (GEMM tiles, bias gradients, losses, sums of squares). */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "check.h"
#include "cpu_pool.h"

typedef struct count_job {
  _Atomic int *hits;
  size_t n;
  _Atomic int bad;
} count_job;

static void count_task(void *arg, size_t i) {
  count_job *j = arg;
  if (i >= j->n)
    atomic_store(&j->bad, 1);
  else
    atomic_fetch_add(&j->hits[i], 1);
}

static void test_runs(int threads) {
  cpu_pool *p = cpu_pool_new(threads);
  CHECK(p != NULL && cpu_pool_threads(p) == threads, "pool of %d", threads);
  if (!p)
    return;
  enum { MAXN = 300 };
  _Atomic int hits[MAXN];
  int wrong = 0;
  for (int run = 0; run < 20000; run++) {
    size_t n = (size_t)(run * 7919 % MAXN) + 1;
    for (size_t i = 0; i < n; i++)
      atomic_store(&hits[i], 0);
    count_job j = {hits, n, 0};
    cpu_pool_run(p, n, count_task, &j);
    for (size_t i = 0; i < n; i++)
      wrong += atomic_load(&hits[i]) != 1;
    wrong += atomic_load(&j.bad);
    if (run % 5000 == 4999) {
      /* Long enough for the workers to go to sleep on their futex. */
      struct timespec ts = {0, 20 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  CHECK(wrong == 0, "%d threads: %d tasks ran other than once", threads, wrong);
  cpu_pool_free(p);
}

/* Fills x with a fixed pseudo-random sequence. */
static void fill(float *x, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = (float)((int32_t)(seed >> 8) % 2001 - 1000) / 997.0f;
  }
}

/* The results of a few ops on one backend, concatenated. */
static float *ops_on(int threads, size_t *len) {
  td_backend *be = NULL;
  td_error err = {0};
  if (td_cpu_backend_create(&be, threads, &err)) {
    CHECK(0, "backend: %s", err.msg);
    return NULL;
  }
  const int m = 200, n = 300, k = 700;
  size_t total = (size_t)m * n * 3 + n + 2 + 1;
  float *out = calloc(total, sizeof *out), *a = malloc(sizeof(float) * m * k),
        *b = malloc(sizeof(float) * k * n), *dz = malloc(sizeof(float) * m * n);
  int32_t labels[200];
  fill(a, (size_t)m * k, 1);
  fill(b, (size_t)k * n, 2);
  for (int i = 0; i < m; i++)
    labels[i] = i % n;
  float *c = out, *ct = out + (size_t)m * n, *y = out + 2 * (size_t)m * n;
  float *dbias = out + 3 * (size_t)m * n, *loss = dbias + n, *ss = loss + 2;
  be->ops->gemm(be, 0, 0, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
  /* C^T = B^T A^T, tiled along the other dimension. */
  be->ops->gemm(be, 1, 1, n, m, k, 1.0f, b, n, a, k, 0.0f, ct, m);
  be->ops->bias_act_bwd(be, TD_ACT_TANH, m, n, c, c, c, dz, dbias);
  memcpy(y, c, sizeof(float) * m * n);
  be->ops->softmax_xent(be, m, n, y, labels, 1.0f / m, y, loss);
  be->ops->sumsq(be, (size_t)m * k, a, ss);
  free(a);
  free(b);
  free(dz);
  be->ops->destroy(be);
  *len = total;
  return out;
}

static void test_bitwise(void) {
  size_t n1 = 0, n = 0;
  float *one = ops_on(1, &n1);
  for (int t = 2; t <= 5 && one; t++) {
    float *r = ops_on(t, &n);
    CHECK(r && n == n1 && memcmp(r, one, n * sizeof *r) == 0,
          "%d threads: results differ from 1 thread", t);
    free(r);
  }
  free(one);
}

int main(void) {
  for (int t = 1; t <= 5; t++)
    test_runs(t);
  test_bitwise();
  return td_check_exit();
}
