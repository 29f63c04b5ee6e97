/* The RDP accountant of the Poisson-subsampled Gaussian mechanism. Sums
 * are kept in log space: A_alpha spans hundreds of orders of magnitude. */
#include "dp_account.h"

#include <math.h>

const double td_dp_orders[TD_DP_N_ORDERS] = {
    1.1, 1.2, 1.3, 1.4, 1.5,  1.6,  1.7,  1.8,  1.9,  2.0,  2.1,  2.2,  2.3,  2.4,  2.5, 2.6, 2.7,
    2.8, 2.9, 3.0, 3.1, 3.2,  3.3,  3.4,  3.5,  3.6,  3.7,  3.8,  3.9,  4.0,  4.1,  4.2, 4.3, 4.4,
    4.5, 4.6, 4.7, 4.8, 4.9,  5.0,  5.1,  5.2,  5.3,  5.4,  5.5,  5.6,  5.7,  5.8,  5.9, 6.0, 6.1,
    6.2, 6.3, 6.4, 6.5, 6.6,  6.7,  6.8,  6.9,  7.0,  7.1,  7.2,  7.3,  7.4,  7.5,  7.6, 7.7, 7.8,
    7.9, 8.0, 8.1, 8.2, 8.3,  8.4,  8.5,  8.6,  8.7,  8.8,  8.9,  9.0,  9.1,  9.2,  9.3, 9.4, 9.5,
    9.6, 9.7, 9.8, 9.9, 10.0, 10.1, 10.2, 10.3, 10.4, 10.5, 10.6, 10.7, 10.8, 10.9, 12,  13,  14,
    15,  16,  17,  18,  19,   20,   21,   22,   23,   24,   25,   26,   27,   28,   29,  30,  31,
    32,  33,  34,  35,  36,   37,   38,   39,   40,   41,   42,   43,   44,   45,   46,  47,  48,
    49,  50,  51,  52,  53,   54,   55,   56,   57,   58,   59,   60,   61,   62,   63};

/* log(e^x + e^y) */
static double log_add(double x, double y) {
  double a = x < y ? x : y, b = x < y ? y : x;
  if (a == -INFINITY)
    return b;
  return log1p(exp(a - b)) + b;
}

/* log |binomial(n, k)|, for real n */
static double log_comb(double n, double k) {
  return lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0);
}

/* log(erfc(x)), also where erfc underflows (an asymptotic series there). */
static double log_erfc(double x) {
  if (x < 25.0)
    return log(erfc(x));
  double x2 = x * x;
  return -0.5 * log(M_PI) - log(x) - x2 - 0.5 / x2 + 0.625 / (x2 * x2) -
         37.0 / 24.0 / (x2 * x2 * x2) + 353.0 / 64.0 / (x2 * x2 * x2 * x2);
}

/* log A_alpha for integer alpha, 0 < q < 1: the binomial sum over i of
 * C(alpha, i) q^i (1 - q)^(alpha - i) exp((i^2 - i) / (2 sigma^2)). */
static double log_a_int(double q, double sigma, int alpha) {
  double la = -INFINITY, lq = log(q), l1q = log1p(-q), s2 = 2.0 * sigma * sigma;
  for (int i = 0; i <= alpha; i++)
    la = log_add(la, log_comb(alpha, i) + i * lq + (alpha - i) * l1q + ((double)i * i - i) / s2);
  return la;
}

/* log A_alpha for fractional alpha: the paper's two series split at z0,
 * summed until their terms fall and are e^-30 below the total. */
static double log_a_frac(double q, double sigma, double alpha) {
  double a0 = -INFINITY, a1 = -INFINITY, last0 = -INFINITY, last1 = -INFINITY;
  const double z0 = sigma * sigma * log(1.0 / q - 1.0) + 0.5, lq = log(q), l1q = log1p(-q);
  const double s2 = 2.0 * sigma * sigma, r2s = sqrt(2.0) * sigma;
  for (int i = 0; i < 1000; i++) {
    double c = log_comb(alpha, i), j = alpha - i;
    double t0 = c + i * lq + j * l1q, t1 = c + j * lq + i * l1q;
    double e0 = log(0.5) + log_erfc((i - z0) / r2s), e1 = log(0.5) + log_erfc((z0 - j) / r2s);
    double s0 = t0 + ((double)i * i - i) / s2 + e0, s1 = t1 + (j * j - j) / s2 + e1;
    a0 = log_add(a0, s0);
    a1 = log_add(a1, s1);
    double total = log_add(a0, a1);
    if (s0 < last0 && s1 < last1 && (s0 > s1 ? s0 : s1) < total - 30.0)
      return total;
    last0 = s0;
    last1 = s1;
  }
  return INFINITY; /* no convergence: this order gives no bound */
}

int td_dp_rdp_grid(double q, double sigma, double *rdp, td_error *err) {
  if (!(q >= 0.0 && q <= 1.0))
    return td_errorf(err, TD_EINVAL, "the sampling rate %g is not in [0, 1]", q);
  if (!(sigma >= 0.0))
    return td_errorf(err, TD_EINVAL, "the noise multiplier %g is negative", sigma);
  for (int k = 0; k < TD_DP_N_ORDERS; k++) {
    const double a = td_dp_orders[k];
    if (q == 0.0)
      rdp[k] = 0.0;
    else if (sigma == 0.0)
      rdp[k] = INFINITY;
    else if (q == 1.0)
      rdp[k] = a / (2.0 * sigma * sigma);
    else if (a == floor(a))
      rdp[k] = log_a_int(q, sigma, (int)a) / (a - 1.0);
    else
      rdp[k] = log_a_frac(q, sigma, a) / (a - 1.0);
  }
  return TD_OK;
}

double td_dp_epsilon_rdp(const double *rdp, int64_t steps, double delta, td_dp_conversion conv,
                         double *order) {
  double best = INFINITY, best_a = td_dp_orders[0];
  for (int k = 0; k < TD_DP_N_ORDERS; k++) {
    const double a = td_dp_orders[k], r = rdp[k] * (double)steps;
    double e;
    if (conv == TD_DP_CONVERSION_CLASSIC) {
      e = r - log(delta) / (a - 1.0);
    } else if (r < 0.0 || delta * delta + expm1(-r) > 0.0) {
      e = 0.0; /* the KL bound alone gives delta */
    } else if (a > 1.01) {
      e = r + log1p(-1.0 / a) - log(delta * a) / (a - 1.0);
    } else {
      e = INFINITY;
    }
    if (e < best) {
      best = e;
      best_a = a;
    }
  }
  if (order)
    *order = best_a;
  return best > 0.0 ? best : 0.0;
}

int td_dp_epsilon(double q, double sigma, int64_t steps, double delta, td_dp_conversion conv,
                  double *eps, double *order, td_error *err) {
  double rdp[TD_DP_N_ORDERS];
  int rc = td_dp_rdp_grid(q, sigma, rdp, err);
  if (!rc)
    *eps = td_dp_epsilon_rdp(rdp, steps, delta, conv, order);
  return rc;
}

int64_t td_dp_max_steps(const double *rdp, double delta, double target_eps) {
  const td_dp_conversion c = TD_DP_CONVERSION_CURRENT;
  if (td_dp_epsilon_rdp(rdp, 1, delta, c, NULL) > target_eps)
    return 0;
  if (td_dp_epsilon_rdp(rdp, TD_DP_STEPS_UNBOUNDED, delta, c, NULL) <= target_eps)
    return TD_DP_STEPS_UNBOUNDED;
  /* eps(lo) <= target < eps(hi): epsilon grows with the steps. */
  int64_t lo = 1, hi = TD_DP_STEPS_UNBOUNDED;
  while (hi - lo > 1) {
    int64_t mid = lo + (hi - lo) / 2;
    if (td_dp_epsilon_rdp(rdp, mid, delta, c, NULL) <= target_eps)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}
