/* jax.random's threefry2x32 key derivation and samplers; see prng.h for the
 * mode implemented and the contract of each function.
 *
 * The float code reproduces XLA's CPU results bit for bit, so every rounding
 * step is spelled out: fmaf() where XLA's compiled code fuses a multiply-add,
 * separate operations where it does not. It relies on the compiler not fusing
 * anything else (GCC's default in ISO C mode); tests/test_prng.c checks the
 * results against values drawn with JAX. */
#include "prng.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static inline uint32_t rotl32(uint32_t x, unsigned d) { return (x << d) | (x >> (32 - d)); }

void td_threefry2x32(td_key key, uint32_t x[2]) {
  /* Threefish rotation constants for two words, used four at a time. */
  static const unsigned rot[8] = {13, 15, 26, 6, 17, 29, 16, 24};
  const uint32_t ks[3] = {key.k[0], key.k[1], 0x1BD11BDAu ^ key.k[0] ^ key.k[1]};
  uint32_t x0 = x[0] + ks[0], x1 = x[1] + ks[1];
  /* 20 rounds: five groups of four, each followed by a key injection. */
  for (unsigned g = 0; g < 5; g++) {
    const unsigned *r = rot + 4 * (g & 1);
    for (unsigned i = 0; i < 4; i++) {
      x0 += x1;
      x1 = rotl32(x1, r[i]) ^ x0;
    }
    x0 += ks[(g + 1) % 3];
    x1 += ks[(g + 2) % 3] + g + 1;
  }
  x[0] = x0;
  x[1] = x1;
}

td_key td_prng_key(uint64_t seed) {
  td_key k = {{(uint32_t)(seed >> 32), (uint32_t)seed}};
  return k;
}

/* The hash of the 64-bit counter i, as iota_2x32_shape lays it out. */
static inline void hash_counter(td_key key, uint64_t i, uint32_t out[2]) {
  out[0] = (uint32_t)(i >> 32);
  out[1] = (uint32_t)i;
  td_threefry2x32(key, out);
}

void td_prng_split(td_key key, td_key *out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t b[2];
    hash_counter(key, i, b);
    out[i].k[0] = b[0];
    out[i].k[1] = b[1];
  }
}

td_key td_prng_fold_in(td_key key, uint32_t data) {
  /* fold_in hashes the key made from `data` as a seed: (0, data). */
  uint32_t b[2] = {0, data};
  td_threefry2x32(key, b);
  td_key k = {{b[0], b[1]}};
  return k;
}

void td_prng_bits(td_key key, uint32_t *out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t b[2];
    hash_counter(key, i, b);
    out[i] = b[0] ^ b[1];
  }
}

static inline float bits_to_unit(uint32_t bits) {
  /* Exponent of 1.0 with 23 random mantissa bits: a float in [1, 2). */
  uint32_t u = (bits >> 9) | 0x3f800000u;
  float f;
  memcpy(&f, &u, sizeof f);
  return f - 1.0f;
}

void td_prng_uniform(td_key key, float *out, size_t n, float lo, float hi) {
  const float span = hi - lo;
  for (size_t i = 0; i < n; i++) {
    uint32_t b[2];
    hash_counter(key, i, b);
    /* One rounding for the scale and shift: XLA fuses them. */
    const float v = fmaf(bits_to_unit(b[0] ^ b[1]), span, lo);
    out[i] = v < lo ? lo : v;
  }
}

/* Natural log for the normal range, the Cephes single-precision method that
 * XLA's CPU backend uses: split v = m * 2^e with m in [sqrt(1/2), sqrt(2)),
 * then log(m) = x - x^2/2 + x^3 P(x) for x = m - 1, and e * ln 2 added in two
 * parts (0.693359375 exactly, plus a small correction). The fused multiply-adds
 * are where XLA's compiled code has them, so the result is bit-identical. */
static float cephes_logf(float v) {
  static const float p[9] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                             -1.2420140846E-1f, 1.4249322787E-1f,  -1.6668057665E-1f,
                             2.0000714765E-1f,  -2.4999993993E-1f, 3.3333331174E-1f};
  const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  if (!(v > 0.0f))
    return v == 0.0f ? -INFINITY : NAN;
  if (isinf(v))
    return v;
  if (v < FLT_MIN)
    v = FLT_MIN; /* XLA treats subnormal inputs as the smallest normal */
  uint32_t b;
  memcpy(&b, &v, sizeof b);
  float e = (float)((int)(b >> 23) - 126); /* v = m * 2^e, m in [0.5, 1) */
  uint32_t mb = (b & 0x807fffffu) | 0x3f000000u;
  float m;
  memcpy(&m, &mb, sizeof m);
  float x;
  if (m < 0.707106781186547524f) {
    e -= 1.0f;
    x = (m - 1.0f) + m;
  } else {
    x = m - 1.0f;
  }
  const float x2 = x * x, x3 = x2 * x;
  /* P(x) in three interleaved pieces, combined by powers of x^3. */
  float ya = fmaf(fmaf(p[0], x, p[1]), x, p[2]);
  float yb = fmaf(fmaf(p[3], x, p[4]), x, p[5]);
  float yc = fmaf(fmaf(p[6], x, p[7]), x, p[8]);
  float y = fmaf(fmaf(ya, x3, yb), x3, yc);
  y = fmaf(y, x3, e * ln2_lo);
  float r = x - 0.5f * x2; /* 0.5 * x2 is exact, so fusing would not change it */
  r = r + y;
  return fmaf(e, ln2_hi, r);
}

/* log(1 + t) as XLA computes it in float32: for |t| < sqrt(2) - 1 a rational
 * approximation (the Cephes log1p coefficients, rounded to float), otherwise
 * log(1 + t) directly. */
static float xla_log1pf(float t) {
  static const double num[7] = {4.5270000862445199635215E-5, 4.9854102823193375972212E-1,
                                6.5787325942061044846969E0,  2.9911919328553073277375E1,
                                6.0949667980987787057556E1,  5.7112963590585538103336E1,
                                2.0039553499201281259648E1};
  static const double den[7] = {1.0,
                                1.5062909083469192043167E1,
                                8.3047565967967209469434E1,
                                2.2176239823732856465394E2,
                                3.0909872225312059774938E2,
                                2.1642788614495947685003E2,
                                6.0118660497603843919306E1};
  if (!(fabsf(t) < (float)0.41421356237309504880))
    return cephes_logf(t + 1.0f);
  float n = (float)num[0], d = (float)den[0];
  for (int i = 1; i < 7; i++) {
    n = fmaf(n, t, (float)num[i]);
    d = fmaf(d, t, (float)den[i]);
  }
  const float t2 = t * t;
  const float r = (t * t2) * (n / d);
  return t + (r - 0.5f * t2);
}

float td_erfinvf(float x) {
  /* Giles' single-precision coefficients, highest degree first, for the
   * central region (w < 5) and the tails. */
  static const float central[9] = {2.81022636e-08f,  3.43273939e-07f, -3.5233877e-06f,
                                   -4.39150654e-06f, 0.00021858087f,  -0.00125372503f,
                                   -0.00417768164f,  0.246640727f,    1.50140941f};
  static const float tail[9] = {-0.000200214257f, 0.000100950558f, 0.00134934322f,
                                -0.00367342844f,  0.00573950773f,  -0.0076224613f,
                                0.00943887047f,   1.00167406f,     2.83297682f};
  if (fabsf(x) == 1.0f)
    return x * INFINITY;
  float w = -xla_log1pf(x * -x);
  const float *c;
  if (w < 5.0f) {
    w = w - 2.5f;
    c = central;
  } else {
    w = sqrtf(w) - 3.0f;
    c = tail;
  }
  float p = c[0];
  for (int i = 1; i < 9; i++)
    p = fmaf(p, w, c[i]);
  return p * x;
}

void td_prng_normal(td_key key, float *out, size_t n) {
  const float lo = nextafterf(-1.0f, 0.0f);
  const float sqrt2 = 1.41421356237309504880f;
  td_prng_uniform(key, out, n, lo, 1.0f);
  for (size_t i = 0; i < n; i++)
    out[i] = sqrt2 * td_erfinvf(out[i]);
}

/* Stable LSD radix sort of (sort key << 32 | value) pairs by the high 32 bits,
 * 8 bits per pass, ping-ponging between a and tmp. Returns the buffer that
 * holds the sorted pairs. */
static uint64_t *radix_sort_hi32(uint64_t *a, uint64_t *tmp, size_t n) {
  for (unsigned shift = 32; shift < 64; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; i++)
      count[((a[i] >> shift) & 0xff) + 1]++;
    if (count[((a[0] >> shift) & 0xff) + 1] == n)
      continue; /* one bucket: nothing moves */
    for (unsigned d = 0; d < 256; d++)
      count[d + 1] += count[d];
    for (size_t i = 0; i < n; i++)
      tmp[count[(a[i] >> shift) & 0xff]++] = a[i];
    uint64_t *s = a;
    a = tmp;
    tmp = s;
  }
  return a;
}

int td_prng_permutation_keys(td_key key, size_t n, td_key *round_keys) {
  if (n < 2)
    return 0;
  /* JAX's static round count: enough rounds that 32-bit keys collide rarely. */
  const int rounds = (int)ceil(3.0 * log((double)n) / log(4294967295.0));
  for (int r = 0; r < rounds; r++) {
    td_key ks[2];
    td_prng_split(key, ks, 2);
    key = ks[0];
    round_keys[r] = ks[1];
  }
  return rounds;
}

int td_prng_permutation(td_key key, uint32_t *out, size_t n) {
  if ((uint64_t)n > (uint64_t)UINT32_MAX + 1)
    return TD_EINVAL;
  for (size_t i = 0; i < n; i++)
    out[i] = (uint32_t)i;
  td_key round_keys[TD_PRNG_MAX_ROUNDS];
  const int rounds = td_prng_permutation_keys(key, n, round_keys);
  if (rounds == 0)
    return 0;
  uint64_t *pairs = malloc(2 * n * sizeof *pairs);
  if (!pairs)
    return TD_ENOMEM;
  uint64_t *a = pairs, *tmp = pairs + n;
  for (int r = 0; r < rounds; r++) {
    for (size_t i = 0; i < n; i++) {
      uint32_t b[2];
      hash_counter(round_keys[r], i, b);
      a[i] = (uint64_t)(b[0] ^ b[1]) << 32 | out[i];
    }
    const uint64_t *sorted = radix_sort_hi32(a, tmp, n);
    for (size_t i = 0; i < n; i++)
      out[i] = (uint32_t)sorted[i];
  }
  free(pairs);
  return 0;
}
