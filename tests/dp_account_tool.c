/* dp_account_tool: the accountant's epsilon for one setting, for
 * comparison with dp-accounting (tests/e2e/dp_account_ref.py).
 *
 * Usage: dp_account_tool Q SIGMA STEPS DELTA
 * Prints "eps_current order_current eps_classic order_classic" (%.17g).
 * Exits 0, 1 with a message on an error, 2 on bad usage. */
#include <stdio.h>
#include <stdlib.h>

#include "dp_account.h"

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s Q SIGMA STEPS DELTA\n", argv[0]);
    return 2;
  }
  double q = strtod(argv[1], NULL), sigma = strtod(argv[2], NULL), delta = strtod(argv[4], NULL);
  int64_t steps = strtoll(argv[3], NULL, 10);
  td_error err = {0};
  double e[2], o[2];
  if (td_dp_epsilon(q, sigma, steps, delta, TD_DP_CONVERSION_CURRENT, &e[0], &o[0], &err) ||
      td_dp_epsilon(q, sigma, steps, delta, TD_DP_CONVERSION_CLASSIC, &e[1], &o[1], &err)) {
    fprintf(stderr, "dp_account_tool: %s\n", err.msg);
    return 1;
  }
  printf("%.17g %.17g %.17g %.17g\n", e[0], o[0], e[1], o[1]);
  return 0;
}
