/* The CPU backend's DP-SGD kernels (kernels/cpu/cpu_dp.c) against plain
 * double-precision references: the Gaussian noise (each value against
 * Box-Muller in double from the same threefry words; its moments and
 * tails; the same at any thread count), the clip factors and the row
 * scaling. The per-example norms are checked against JAX in dp_jax. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "prng.h"

static td_backend *backend(int threads) {
  td_backend *be = NULL;
  td_error err = {0};
  CHECK(td_cpu_backend_create(&be, threads, &err) == 0, "%s", err.msg);
  return be;
}

static void test_noise(void) {
  const size_t n = 1000003; /* odd: the last pair is half used */
  const uint32_t key[2] = {0x12345678u, 0x9abcdef0u};
  const float sd = 2.5f;
  float *x[3];
  int threads[3] = {1, 2, 3};
  for (int k = 0; k < 3; k++) {
    td_backend *be = backend(threads[k]);
    x[k] = calloc(n, sizeof *x[k]);
    CHECK(be->ops->gauss_add(be, n, key, sd, x[k]) == 0, "gauss_add");
    td_backend_destroy(be);
  }
  CHECK(memcmp(x[0], x[1], n * sizeof *x[0]) == 0, "1 and 2 threads differ");
  CHECK(memcmp(x[0], x[2], n * sizeof *x[0]) == 0, "1 and 3 threads differ");
  /* Each value against Box-Muller in double from the same words. */
  double worst = 0.0, sum = 0.0, sum2 = 0.0;
  size_t beyond2 = 0, beyond3 = 0;
  const td_key tk = {{key[0], key[1]}};
  for (size_t i = 0; i < n; i += 2) {
    uint32_t w[2] = {0, (uint32_t)(i / 2)};
    td_threefry2x32(tk, w);
    double u1 = ((w[0] >> 8) + 1.0) / 16777216.0, u2 = (w[1] >> 8) / 16777216.0;
    double r = sqrt(-2.0 * log(u1)), z[2] = {r * cos(2 * M_PI * u2), r * sin(2 * M_PI * u2)};
    for (size_t k = 0; k < 2 && i + k < n; k++) {
      double got = x[0][i + k] / sd, d = fabs(got - z[k]) / (1.0 + fabs(z[k]));
      if (d > worst)
        worst = d;
      sum += got;
      sum2 += got * got;
      beyond2 += fabs(got) > 2.0;
      beyond3 += fabs(got) > 3.0;
    }
  }
  printf("noise: worst error against double Box-Muller %.3g\n", worst);
  CHECK(worst < 2e-6, "noise differs from Box-Muller in double by %.3g", worst);
  double mean = sum / n, var = sum2 / n - mean * mean;
  CHECK(fabs(mean) < 5.0 / sqrt((double)n), "mean %g", mean);
  CHECK(fabs(var - 1.0) < 0.01, "variance %g", var);
  CHECK(fabs((double)beyond2 / n - 0.0455) < 0.002, "beyond 2 sd: %g", (double)beyond2 / n);
  CHECK(fabs((double)beyond3 / n - 0.0027) < 0.0004, "beyond 3 sd: %g", (double)beyond3 / n);
  for (int k = 0; k < 3; k++)
    free(x[k]);
}

static void test_clip_and_scale(void) {
  td_backend *be = backend(2);
  enum { EX = 7, PER = 5 };
  /* Norms sqrt(acc) / scale of 0.5, 1, 2, 4, ...; clip 1.5; rows 6. */
  double acc[EX];
  const double scale = 0.25;
  for (int i = 0; i < EX; i++)
    acc[i] = pow(0.5 * pow(2.0, i) * scale, 2.0);
  float f[EX];
  CHECK(be->ops->pe_clip(be, EX, 6, scale, 1.5, acc, f) == 0, "pe_clip");
  for (int i = 0; i < EX; i++) {
    double norm = 0.5 * pow(2.0, i), want = i >= 6 ? 0.0 : fmin(1.0, 1.5 / (norm + 1e-6));
    CHECK_CLOSE(f[i], want, 1e-7, 1e-30);
  }
  float src[EX * PER], dst[EX * PER];
  for (int k = 0; k < EX * PER; k++)
    src[k] = (float)(k % 11) - 4.0f;
  CHECK(be->ops->row_scale(be, EX, PER, src, f, dst) == 0, "row_scale");
  for (int k = 0; k < EX * PER; k++)
    CHECK(dst[k] == src[k] * f[k / PER], "row_scale [%d]", k);
  td_backend_destroy(be);
}

int main(void) {
  test_noise();
  test_clip_and_scale();
  return td_check_exit();
}
