/* Keyed, counter-based randomness that reproduces jax.random bit for bit.
 *
 * A key is two 32-bit words, as in JAX's default "threefry2x32" implementation.
 * Nothing here holds state: every draw is a pure function of (key, shape), so
 * a training run is reproducible from its seed and a worker thread can derive
 * its own stream with td_prng_fold_in() without coordination.
 *
 * Which JAX mode: current JAX defaults `jax_threefry_partitionable` to True
 * (the default since JAX 0.5.0), and that is the mode implemented here:
 *   split(key, n)[i]  = threefry2x32(key, (hi32(i), lo32(i)))
 *   bits(key, (n,))[i] = xor of the two words of threefry2x32(key, (hi32(i), lo32(i)))
 * so element i of a draw depends only on the key and i. (The older,
 * non-partitionable mode hashed the counter array 0..2n-1 split in halves and
 * gives different values for split and bits.) fold_in and seeding are the same
 * in both modes. The golden values in tests/test_prng.c come from jax.random. */
#ifndef TD_PRNG_H
#define TD_PRNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct td_key {
  uint32_t k[2];
} td_key;

/* jax.random.PRNGKey(seed): the key (high 32 bits, low 32 bits) of the seed.
 * This is JAX's answer for every seed below 2^31; for larger or negative seeds
 * (an int64 passed as uint64) it is the answer of JAX with jax_enable_x64 on,
 * since default 32-bit JAX keeps only the low 32 bits of the seed. */
td_key td_prng_key(uint64_t seed);

/* The Random123 threefry2x32 block with 20 rounds: encrypts the counter x in
 * place under key. */
void td_threefry2x32(td_key key, uint32_t x[2]);

/* jax.random.split(key, n): n new keys in out[0..n). */
void td_prng_split(td_key key, td_key *out, size_t n);

/* jax.random.fold_in(key, data). */
td_key td_prng_fold_in(td_key key, uint32_t data);

/* jax.random.bits(key, (n,), uint32). */
void td_prng_bits(td_key key, uint32_t *out, size_t n);

/* jax.random.uniform(key, (n,), float32, lo, hi): values in [lo, hi), made
 * from the top 23 bits of each word as a mantissa in [1, 2), then scaled and
 * clamped below at lo exactly as JAX does. */
void td_prng_uniform(td_key key, float *out, size_t n, float lo, float hi);

/* jax.random.normal(key, (n,), float32): sqrt(2) * erfinv(u) with u uniform in
 * [nextafter(-1, 0), 1), using td_erfinvf below. Bit-identical to JAX on CPU. */
void td_prng_normal(td_key key, float *out, size_t n);

/* Single-precision inverse error function: M. Giles' polynomial ("Approximating
 * the erfinv function", GPU Computing Gems, 2011), with w = -log1p(-x^2), each
 * step rounded (and fused) as in XLA's CPU code, so that the result equals
 * jax.lax.erf_inv on CPU bit for bit. Relative error below 6e-7 for
 * |x| < 0.99; nearer +-1 the float32 rounding of x^2 limits it to about 6e-6.
 * erfinv(+-1) = +-inf; |x| > 1 gives NaN. */
float td_erfinvf(float x);

/* jax.random.permutation(key, n): a permutation of 0..n-1, bit for bit the one
 * JAX returns. Like JAX, it sorts by fresh random 32-bit keys in
 * ceil(3 ln n / ln(2^32 - 1)) rounds (each round: key, sub = split(key);
 * stable sort by bits(sub, n)); the result is exactly uniform unless the
 * concatenated sort keys of two elements collide, which happens with
 * probability below about 1/(2n). Allocates 16n bytes of scratch. Returns 0, or
 * TD_ENOMEM, or TD_EINVAL when n > 2^32. */
int td_prng_permutation(td_key key, uint32_t *out, size_t n);

/* The most rounds a permutation of up to 2^32 elements takes. */
#define TD_PRNG_MAX_ROUNDS 3
/* The rounds' keys (`sub` above) of td_prng_permutation(key, ., n) into
 * round_keys (TD_PRNG_MAX_ROUNDS entries); returns the number of rounds (0
 * for n < 2). For a backend that sorts on its own device. */
int td_prng_permutation_keys(td_key key, size_t n, td_key *round_keys);

#endif
