/* The privacy accountant of DP-SGD: the Renyi differential privacy (RDP) of
 * the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang 2019,
 * "Renyi Differential Privacy of the Sampled Gaussian Mechanism"), composed
 * over the steps of a job and converted to an (epsilon, delta) guarantee.
 * It computes what Google's dp-accounting (its RDP accountant) computes,
 * over Opacus's grid of orders. */
#ifndef TD_DP_ACCOUNT_H
#define TD_DP_ACCOUNT_H

#include <stdint.h>

#include "error.h"

/* The orders alpha of the RDP curve: 1.1, 1.2, ..., 10.9, then 12 .. 63
 * (Opacus's DEFAULT_ALPHAS). */
#define TD_DP_N_ORDERS 151
extern const double td_dp_orders[TD_DP_N_ORDERS];

/* One step's RDP at every order of the grid, rdp[k] at td_dp_orders[k], of
 * the Gaussian mechanism of noise multiplier sigma applied to a batch that
 * holds each example with probability q: 0 when q is 0, alpha / (2
 * sigma^2) when q is 1, infinite when sigma is 0; otherwise log(A_alpha) /
 * (alpha - 1), A_alpha by the paper's binomial sum (integer alpha) or its
 * two series (fractional alpha). TD_EINVAL for q outside [0, 1] or a
 * negative sigma. */
int td_dp_rdp_grid(double q, double sigma, double *rdp, td_error *err);

typedef enum td_dp_conversion {
  /* Balle et al. 2020 (Prop. 12; also Asoodeh et al. 2020): eps = r +
   * log1p(-1/a) - log(delta a) / (a - 1), as dp-accounting's
   * compute_epsilon, with its special cases. */
  TD_DP_CONVERSION_CURRENT = 0,
  /* Mironov 2017 (Prop. 3): eps = r - log(delta) / (a - 1). */
  TD_DP_CONVERSION_CLASSIC,
} td_dp_conversion;

/* Epsilon at delta after `steps` steps of the mechanism whose one-step
 * RDP is rdp (RDP composes additively: steps * rdp[k]), minimised over the
 * grid; *order (when not NULL) gets the minimising order. Infinite when no
 * order gives a finite bound. */
double td_dp_epsilon_rdp(const double *rdp, int64_t steps, double delta, td_dp_conversion conv,
                         double *order);

/* Both in one call. */
int td_dp_epsilon(double q, double sigma, int64_t steps, double delta, td_dp_conversion conv,
                  double *eps, double *order, td_error *err);

/* The most steps whose epsilon (the CURRENT conversion) stays at or below
 * target_eps: 0 when one step exceeds it, TD_DP_STEPS_UNBOUNDED when no
 * number of steps does (a mechanism that spends nothing). */
#define TD_DP_STEPS_UNBOUNDED ((int64_t)1 << 50)
int64_t td_dp_max_steps(const double *rdp, double delta, double target_eps);

#endif
