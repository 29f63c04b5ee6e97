/* The DP-SGD accountant (engine/dp_account.c) on settings whose epsilons
 * dp-accounting 0.6.0 gives (its RDP accountant over the same orders, in
 * both conversions), on the closed forms, and on bad input. */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "dp_account.h"

typedef struct published {
  double q, sigma;
  int64_t steps;
  double cur, cur_order, classic, classic_order;
} published;

static void test_published(void) {
  /* The TensorFlow Privacy MNIST tutorial's setting (60 epochs of batch 256
   * of 60,000), a noisier run of half the length, and Opacus's docstring
   * example. */
  static const published cases[] = {
      {256.0 / 60000, 1.1, 14062, 2.5965558697943036, 8.1, 3.0082720891050823, 8.8},
      {256.0 / 60000, 0.6, 7031, 8.776576174145774, 2.9, 9.759807097067085, 2.9},
      {1e-5, 1.0, 10, 0.33634400931995645, 23, 0.5233182362512061, 23},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const published *c = &cases[i];
    td_error err = {0};
    double e = 0, o = 0;
    CHECK(td_dp_epsilon(c->q, c->sigma, c->steps, 1e-5, TD_DP_CONVERSION_CURRENT, &e, &o, &err) ==
              0,
          "%s", err.msg);
    CHECK_CLOSE(e, c->cur, 1e-6, 1e-12);
    CHECK(o == c->cur_order, "case %zu: order %g, want %g", i, o, c->cur_order);
    CHECK(td_dp_epsilon(c->q, c->sigma, c->steps, 1e-5, TD_DP_CONVERSION_CLASSIC, &e, &o, &err) ==
              0,
          "%s", err.msg);
    CHECK_CLOSE(e, c->classic, 1e-6, 1e-12);
    CHECK(o == c->classic_order, "case %zu: order %g, want %g", i, o, c->classic_order);
  }
}

static void test_closed_forms(void) {
  double rdp[TD_DP_N_ORDERS];
  td_error err = {0};
  /* q = 1: the Gaussian mechanism itself, alpha / (2 sigma^2). */
  CHECK(td_dp_rdp_grid(1.0, 2.0, rdp, &err) == 0, "%s", err.msg);
  for (int k = 0; k < TD_DP_N_ORDERS; k++)
    CHECK_CLOSE(rdp[k], td_dp_orders[k] / 8.0, 1e-15, 1e-300);
  /* q = 0: nothing spent. */
  CHECK(td_dp_rdp_grid(0.0, 1.0, rdp, &err) == 0, "%s", err.msg);
  CHECK(td_dp_epsilon_rdp(rdp, 1000000, 1e-5, TD_DP_CONVERSION_CURRENT, NULL) == 0.0,
        "q = 0 spends nothing");
  CHECK(td_dp_max_steps(rdp, 1e-5, 1.0) == TD_DP_STEPS_UNBOUNDED, "q = 0 has no step limit");
  /* sigma = 0: everything spent. */
  CHECK(td_dp_rdp_grid(0.01, 0.0, rdp, &err) == 0, "%s", err.msg);
  CHECK(isinf(td_dp_epsilon_rdp(rdp, 1, 1e-5, TD_DP_CONVERSION_CURRENT, NULL)),
        "no noise: infinite epsilon");
}

static void test_steps(void) {
  double rdp[TD_DP_N_ORDERS];
  td_error err = {0};
  CHECK(td_dp_rdp_grid(256.0 / 60000, 1.1, rdp, &err) == 0, "%s", err.msg);
  double last = 0.0;
  for (int64_t s = 1; s <= 100000; s *= 3) {
    double e = td_dp_epsilon_rdp(rdp, s, 1e-5, TD_DP_CONVERSION_CURRENT, NULL);
    CHECK(e > last, "epsilon after %lld steps (%g) does not exceed %g", (long long)s, e, last);
    last = e;
  }
  const double target = 2.0;
  int64_t most = td_dp_max_steps(rdp, 1e-5, target);
  CHECK(most > 1 && most < 14062, "max steps %lld", (long long)most);
  CHECK(td_dp_epsilon_rdp(rdp, most, 1e-5, TD_DP_CONVERSION_CURRENT, NULL) <= target,
        "epsilon at the limit exceeds the target");
  CHECK(td_dp_epsilon_rdp(rdp, most + 1, 1e-5, TD_DP_CONVERSION_CURRENT, NULL) > target,
        "one step past the limit stays within the target");
  CHECK(td_dp_max_steps(rdp, 1e-5, 1e-6) == 0, "a tiny target allows no step");
}

static void test_bad_input(void) {
  double rdp[TD_DP_N_ORDERS];
  td_error err = {0};
  CHECK(td_dp_rdp_grid(1.5, 1.0, rdp, &err) == TD_EINVAL, "q = 1.5 accepted");
  CHECK_STR_CONTAINS(err.msg, "sampling rate");
  CHECK(td_dp_rdp_grid(0.1, -1.0, rdp, &err) == TD_EINVAL, "sigma = -1 accepted");
  CHECK_STR_CONTAINS(err.msg, "noise multiplier");
  CHECK(td_dp_rdp_grid(NAN, 1.0, rdp, &err) == TD_EINVAL, "q = NaN accepted");
}

int main(void) {
  test_published();
  test_closed_forms();
  test_steps();
  test_bad_input();
  return td_check_exit();
}
