/* Keyed randomness: the Random123 known-answer vectors for threefry2x32-20,
 * values drawn with jax.random (JAX 0.10.2, CPU, jax_threefry_partitionable
 * at its default True), an independent check of erfinv against erf() in
 * double precision, and statistical properties of the permutation. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "prng.h"

static uint32_t fbits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static uint64_t fnv1a(const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < len; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

#define CHECK_KEY(key, a, b)                                                                    \
  CHECK((key).k[0] == (a) && (key).k[1] == (b), "%s = (0x%08x, 0x%08x), want (0x%08x, 0x%08x)", \
        #key, (key).k[0], (key).k[1], (uint32_t)(a), (uint32_t)(b))

static void test_threefry_kat(void) {
  /* Random123 kat_vectors: threefry2x32 with 20 rounds. */
  static const uint32_t kat[3][6] = {
      /* key0, key1, ctr0, ctr1, out0, out1 */
      {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x6b200159, 0x99ba4efe},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x1cb996fc, 0xbb002be7},
      {0x13198a2e, 0x03707344, 0x243f6a88, 0x85a308d3, 0xc4923a9c, 0x483df7a0},
  };
  for (int i = 0; i < 3; i++) {
    td_key k = {{kat[i][0], kat[i][1]}};
    uint32_t x[2] = {kat[i][2], kat[i][3]};
    td_threefry2x32(k, x);
    CHECK(x[0] == kat[i][4] && x[1] == kat[i][5], "KAT %d: got 0x%08x 0x%08x", i, x[0], x[1]);
  }
}

static void test_keys(void) {
  CHECK_KEY(td_prng_key(0), 0, 0);
  CHECK_KEY(td_prng_key(42), 0, 42);
  CHECK_KEY(td_prng_key(1234567), 0, 0x0012d687);
  /* Seeds beyond 32 bits: JAX with jax_enable_x64. */
  CHECK_KEY(td_prng_key(4294967301ull), 1, 5);
  CHECK_KEY(td_prng_key((uint64_t)-1), 0xffffffff, 0xffffffff);

  td_key k0 = td_prng_key(0), s[5];
  td_prng_split(k0, s, 2);
  CHECK_KEY(s[0], 0x6b200159u, 0x99ba4efeu);
  CHECK_KEY(s[1], 0x375f238fu, 0xcddb151du);
  td_prng_split(k0, s, 3);
  CHECK_KEY(s[0], 0x6b200159u, 0x99ba4efeu);
  CHECK_KEY(s[1], 0x375f238fu, 0xcddb151du);
  CHECK_KEY(s[2], 0xf71f4ea9u, 0xa20e4081u);
  td_prng_split(td_prng_key(42), s, 5);
  static const uint32_t want42[5][2] = {{0x6d3e048fu, 0x1022172du},
                                        {0x03d7b32du, 0xadd083f4u},
                                        {0x92fb20eau, 0x0f38d913u},
                                        {0xbad56946u, 0x354ba891u},
                                        {0xb013aee3u, 0xc34eddf6u}};
  for (int i = 0; i < 5; i++)
    CHECK_KEY(s[i], want42[i][0], want42[i][1]);

  CHECK_KEY(td_prng_fold_in(k0, 1), 0x375f238fu, 0xcddb151du);
  CHECK_KEY(td_prng_fold_in(td_prng_key(42), 0xdeadbeefu), 0x620b66abu, 0xd15de6fcu);

  /* fold_in(split(PRNGKey(0))[1], 7), then uniform(., (3,)). */
  td_prng_split(k0, s, 2);
  td_key chain = td_prng_fold_in(s[1], 7);
  CHECK_KEY(chain, 3820244711u, 2120015096u);
  float u[3];
  td_prng_uniform(chain, u, 3, 0.0f, 1.0f);
  CHECK(fbits(u[0]) == 0x3c6a5500u && fbits(u[1]) == 0x3f7b441eu && fbits(u[2]) == 0x3f39f646u,
        "uniform(chain) = %.9g %.9g %.9g", u[0], u[1], u[2]);
}

static void test_bits(void) {
  static const uint32_t want0[8] = {0xf29a4fa7u, 0xfa843692u, 0x55110e28u, 0x77faa835u,
                                    0x91e43bb7u, 0x2a5e6943u, 0x4f68ea7du, 0xb081ccfeu};
  static const uint32_t want42[5] = {0x7d1c13a2u, 0xae0730d9u, 0x9dc3f9f9u, 0x8f9ec1d7u,
                                     0x735d7315u};
  uint32_t b[8];
  td_prng_bits(td_prng_key(0), b, 8);
  for (int i = 0; i < 8; i++)
    CHECK(b[i] == want0[i], "bits(0)[%d] = 0x%08x, want 0x%08x", i, b[i], want0[i]);
  td_prng_bits(td_prng_key(42), b, 5);
  for (int i = 0; i < 5; i++)
    CHECK(b[i] == want42[i], "bits(42)[%d] = 0x%08x, want 0x%08x", i, b[i], want42[i]);
}

static void test_uniform(void) {
  static const uint32_t want0[8] = {0x3f729a4eu, 0x3f7a8436u, 0x3eaa221cu, 0x3eeff550u,
                                    0x3f11e43au, 0x3e2979a0u, 0x3e9ed1d4u, 0x3f3081ccu};
  static const uint32_t want42[6] = {0x3ee318b4u, 0x3fb311f8u, 0x3f8a69ecu,
                                     0x3f4e19c0u, 0x3e81a674u, 0x3f6de886u};
  float u[8];
  td_prng_uniform(td_prng_key(0), u, 8, 0.0f, 1.0f);
  for (int i = 0; i < 8; i++)
    CHECK(fbits(u[i]) == want0[i], "uniform(0)[%d] = %.9g (0x%08x)", i, u[i], fbits(u[i]));
  td_prng_uniform(td_prng_key(42), u, 6, -2.0f, 3.0f);
  for (int i = 0; i < 6; i++)
    CHECK(fbits(u[i]) == want42[i], "uniform(42, -2, 3)[%d] = %.9g (0x%08x)", i, u[i], fbits(u[i]));

  /* A longer draw with an inexact scale, compared through a hash of its bits. */
  enum { N = 1000 };
  static float v[N];
  td_prng_uniform(td_prng_key(5), v, N, -1.5f, 0.25f);
  CHECK(fnv1a(v, sizeof v) == 0x3e6bf6fefeeef06full, "uniform(5, -1.5, 0.25) hash 0x%016llx",
        (unsigned long long)fnv1a(v, sizeof v));
  int in_range = 1;
  for (int i = 0; i < N; i++)
    in_range &= v[i] >= -1.5f && v[i] < 0.25f;
  CHECK(in_range, "uniform values outside [-1.5, 0.25)");

  /* JAX clamps below at lo: with hi <= lo every value is lo. */
  td_prng_uniform(td_prng_key(1), u, 5, 3.0f, -2.0f);
  CHECK(u[0] == 3.0f && u[1] == 3.0f && u[2] == 3.0f && u[3] == 3.0f && u[4] == 3.0f,
        "uniform(3, -2) = %g %g %g %g %g", u[0], u[1], u[2], u[3], u[4]);
  td_prng_uniform(td_prng_key(1), u, 2, 2.0f, 2.0f);
  CHECK(u[0] == 2.0f && u[1] == 2.0f, "uniform(2, 2) = %g %g", u[0], u[1]);
}

static void test_normal(void) {
  static const uint32_t want0[8] = {0x3fcfb2bdu, 0x40019df0u, 0xbede0017u, 0xbda10222u,
                                    0x3e34512cu, 0xbf78dad7u, 0xbefd97ccu, 0x3efd1f31u};
  static const uint32_t want42[6] = {0xbce7df15u, 0x3eef2be8u, 0x3e976661u,
                                     0x3e1d3b24u, 0xbdfe04ebu, 0x3e5e211au};
  float z[8];
  td_prng_normal(td_prng_key(0), z, 8);
  for (int i = 0; i < 8; i++)
    CHECK(fbits(z[i]) == want0[i], "normal(0)[%d] = %.9g (0x%08x)", i, z[i], fbits(z[i]));
  td_prng_normal(td_prng_key(42), z, 6);
  for (int i = 0; i < 6; i++)
    CHECK(fbits(z[i]) == want42[i], "normal(42)[%d] = %.9g (0x%08x)", i, z[i], fbits(z[i]));

  /* 100000 draws cover every branch of erfinv and log1p; JAX's bits hash to
   * this value, and the largest |z| is -4.9415946 at index 49205. */
  enum { N = 100000 };
  static float v[N];
  td_prng_normal(td_prng_key(3), v, N);
  CHECK(fnv1a(v, sizeof v) == 0x0ec006dae9695dc7ull, "normal(3, 100000) hash 0x%016llx",
        (unsigned long long)fnv1a(v, sizeof v));
  CHECK(fbits(v[49205]) == 0xc09e218bu, "normal(3)[49205] = %.9g", v[49205]);
  double mean = 0, var = 0;
  for (int i = 0; i < N; i++)
    mean += v[i];
  mean /= N;
  for (int i = 0; i < N; i++)
    var += (v[i] - mean) * (v[i] - mean);
  var /= N - 1;
  /* Standard errors: 1/sqrt(N) = 0.0032 for the mean, sqrt(2/N) = 0.0045 for the variance. */
  CHECK(fabs(mean) < 0.015, "normal mean %g", mean);
  CHECK(fabs(var - 1.0) < 0.02, "normal variance %g", var);
}

/* erfinv in double by Newton's method on the C library's erf(). */
static double erfinv_ref(double y) {
  double x = 0;
  for (int i = 0; i < 100; i++) {
    double step = (erf(x) - y) / (2.0 / sqrt(M_PI) * exp(-x * x));
    x -= step;
    if (fabs(step) < 1e-15 * (1 + fabs(x)))
      break;
  }
  return x;
}

static void test_erfinv(void) {
  /* jax.lax.erf_inv on these float32 inputs, bit for bit. */
  static const uint32_t xs[11] = {0x00000000u, 0x3e99999au, 0xbf000000u, 0x3f333333u,
                                  0xbf666666u, 0x3f7d70a4u, 0x3f7fbe77u, 0x3f7fff58u,
                                  0x3f7fffffu, 0xbf7fffffu, 0x1e3ce508u};
  static const uint32_t ys[11] = {0x00000000u, 0x3e8b803du, 0xbef430feu, 0x3f3b9d4fu,
                                  0xbf94e009u, 0x3fe92333u, 0x4014e999u, 0x4047e297u,
                                  0x407547cau, 0xc07547cau, 0x1e27674cu};
  for (int i = 0; i < 11; i++) {
    float x;
    memcpy(&x, &xs[i], sizeof x);
    float y = td_erfinvf(x);
    CHECK(fbits(y) == ys[i], "erfinv(%.9g) = %.9g (0x%08x), want 0x%08x", x, y, fbits(y), ys[i]);
  }
  CHECK(isinf(td_erfinvf(1.0f)) && td_erfinvf(1.0f) > 0, "erfinv(1) = %g", td_erfinvf(1.0f));
  CHECK(isinf(td_erfinvf(-1.0f)) && td_erfinvf(-1.0f) < 0, "erfinv(-1) = %g", td_erfinvf(-1.0f));
  CHECK(isnan(td_erfinvf(1.5f)), "erfinv(1.5) = %g", td_erfinvf(1.5f));

  /* Against the double-precision reference on a grid over (-1, 1): within
   * 6e-7 relative (about 5 float32 ulp) for |x| < 0.99; closer to +-1 the
   * float32 rounding of x^2 inside log1p(-x^2), which XLA's formula shares,
   * limits it to about 6e-6. */
  double worst_in = 0, worst_out = 0;
  float at_in = 0, at_out = 0;
  for (int i = -99999; i <= 99999; i++) {
    float x = (float)i / 100000.0f;
    double want = erfinv_ref(x), got = td_erfinvf(x);
    double rel = x == 0 ? fabs(got) : fabs(got - want) / fabs(want);
    if (fabsf(x) < 0.99f && rel > worst_in)
      worst_in = rel, at_in = x;
    if (fabsf(x) >= 0.99f && rel > worst_out)
      worst_out = rel, at_out = x;
  }
  CHECK(worst_in < 6e-7, "erfinv worst relative error %.3g at x = %.9g", worst_in, at_in);
  CHECK(worst_out < 1e-5, "erfinv worst relative error %.3g at x = %.9g", worst_out, at_out);
}

static int is_permutation(const uint32_t *p, size_t n) {
  unsigned char *seen = calloc(n ? n : 1, 1);
  int ok = seen != NULL;
  for (size_t i = 0; ok && i < n; i++) {
    if (p[i] >= n || seen[p[i]])
      ok = 0;
    else
      seen[p[i]] = 1;
  }
  free(seen);
  return ok;
}

static void test_permutation(void) {
  uint32_t p10[10];
  static const uint32_t want10[10] = {0, 1, 8, 5, 6, 4, 3, 2, 7, 9};
  CHECK(td_prng_permutation(td_prng_key(0), p10, 10) == 0, "permutation(10) failed");
  CHECK(memcmp(p10, want10, sizeof p10) == 0,
        "permutation(0, 10) differs from JAX: %u %u %u %u ...", p10[0], p10[1], p10[2], p10[3]);

  /* n = 1626 is the smallest size JAX sorts twice. */
  static uint32_t p[60000], q[60000];
  CHECK(td_prng_permutation(td_prng_key(11), p, 1626) == 0, "permutation(1626) failed");
  CHECK(p[0] == 123 && p[1] == 1283 && p[2] == 969 && p[1623] == 242 && p[1625] == 338,
        "permutation(11, 1626) differs from JAX: %u %u %u ... %u", p[0], p[1], p[2], p[1625]);

  CHECK(td_prng_permutation(td_prng_key(7), p, 60000) == 0, "permutation(60000) failed");
  static const uint32_t first7[8] = {10952, 14640, 31430, 33190, 36436, 9910, 4768, 34042};
  CHECK(memcmp(p, first7, sizeof first7) == 0, "permutation(7, 60000) starts %u %u %u", p[0], p[1],
        p[2]);
  uint64_t wsum = 0;
  for (uint64_t i = 0; i < 60000; i++)
    wsum += i * p[i];
  CHECK(wsum == 54012440062392ull, "permutation(7, 60000) weighted sum %llu",
        (unsigned long long)wsum);
  CHECK(is_permutation(p, 60000), "permutation(7, 60000) is not a permutation");

  /* Deterministic per key, different across keys. */
  td_prng_permutation(td_prng_key(7), q, 60000);
  CHECK(memcmp(p, q, sizeof p) == 0, "same key, different permutation");
  td_prng_permutation(td_prng_key(8), q, 60000);
  size_t same = 0;
  for (size_t i = 0; i < 60000; i++)
    same += p[i] == q[i];
  CHECK(same < 20, "keys 7 and 8 agree at %zu of 60000 positions", same);

  /* Edge sizes. */
  for (size_t n = 0; n < 40; n++) {
    CHECK(td_prng_permutation(td_prng_key(n), p, n) == 0 && is_permutation(p, n), "n = %zu", n);
  }
  CHECK(td_prng_permutation(td_prng_key(0), p, (size_t)1 << 33) == TD_EINVAL, "n = 2^33 accepted");

  /* Uniformity: the position of element 0 in permutations of 10 under 20000
   * keys. Chi-square with 9 degrees of freedom; 27.88 is its 0.999 quantile. */
  enum { N = 10, KEYS = 20000 };
  unsigned pos[N] = {0}, first[N] = {0};
  td_key base = td_prng_key(2024);
  for (uint32_t k = 0; k < KEYS; k++) {
    td_prng_permutation(td_prng_fold_in(base, k), p, N);
    for (int i = 0; i < N; i++)
      if (p[i] == 0)
        pos[i]++;
    first[p[0]]++;
  }
  double chi_pos = 0, chi_first = 0, e = (double)KEYS / N;
  for (int i = 0; i < N; i++) {
    chi_pos += (pos[i] - e) * (pos[i] - e) / e;
    chi_first += (first[i] - e) * (first[i] - e) / e;
  }
  CHECK(chi_pos < 27.88, "position of element 0: chi-square %.2f", chi_pos);
  CHECK(chi_first < 27.88, "first element: chi-square %.2f", chi_first);
}

int main(void) {
  test_threefry_kat();
  test_keys();
  test_bits();
  test_uniform();
  test_normal();
  test_erfinv();
  test_permutation();
  return td_check_exit();
}
