/* A minimal assertion layer for the C tests: every CHECK counts, a failed one
 * prints where and why, and td_check_exit() turns the tally into the exit
 * status CTest reads. */
#ifndef TD_CHECK_H
#define TD_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int td_check_failures;
static int td_check_count;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    td_check_count++;                                                          \
    if (!(cond)) {                                                             \
      td_check_failures++;                                                     \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
    }                                                                          \
  } while (0)

/* Relative error of `got` against the reference `want`, with `floor` guarding
 * against division by values near zero. */
static inline double td_relerr(double got, double want, double floor) {
  double d = fabs(got - want), m = fabs(want);
  return d / (m > floor ? m : floor);
}

#define CHECK_CLOSE(got, want, tol, floor)                                                        \
  CHECK(td_relerr((got), (want), (floor)) <= (tol), "%s = %.9g, want %.9g (rel err %.3g > %.3g)", \
        #got, (double)(got), (double)(want), td_relerr((got), (want), (floor)), (double)(tol))

#define CHECK_STR_CONTAINS(hay, needle)                                             \
  CHECK((hay) && strstr((hay), (needle)) != NULL, "\"%s\" does not contain \"%s\"", \
        (hay) ? (hay) : "(null)", (needle))

static inline int td_check_exit(void) {
  printf("%d checks, %d failed\n", td_check_count, td_check_failures);
  return td_check_failures ? 1 : 0;
}

/* The data root for tests that need MNIST: TRAIND_DATA_DIR, else ../shared/data
 * relative to the source tree. Returns NULL when absent; callers fail rather
 * than skip when CI=true. */
static inline const char *td_test_data_root(void) {
  const char *d = getenv("TRAIND_DATA_DIR");
  return (d && *d) ? d : NULL;
}

static inline int td_test_in_ci(void) {
  const char *ci = getenv("CI");
  return ci && strcmp(ci, "true") == 0;
}

#endif
