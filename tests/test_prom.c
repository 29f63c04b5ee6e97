/* The Prometheus module (daemon/prom.c):
 *   values      shortest round-trip digits in Go's layout, checked against
 *               strings Go's strconv.FormatFloat(v, 'g', -1, 64) prints and,
 *               for random doubles, against strtod (exact) and one digit
 *               fewer (must not round-trip)
 *   text        HELP/TYPE once per family, escaping (checked exactly and
 *               by unescaping back), UTF-8 repair, every refusal
 *   histograms  buckets, sum and count against a brute-force count; merge
 *   HTTP        a real server on 127.0.0.1:0 (and [::1]:0 when the host has
 *               IPv6) spoken to with a plain socket client: status lines,
 *               Content-Type, bodies, 404, 405, HEAD, a publish while four
 *               clients scrape, an idle connection, bad addresses, a port in use
 *
 * Built a second time as prom_tool (TD_PROM_TOOL defined), the driver that
 * tests/e2e/prom_parse.py scrapes: it serves render_fixture() and publishes
 * the next generation for each "next" line on stdin. */
#include <arpa/inet.h>
#include <errno.h>
#include <float.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "check.h"
#include "prom.h"

/* ---- the fixture: one rendering with every kind of family */

/* Mirrored in tests/e2e/prom_parse.py. */
static const char *const fixture_jobs[] = {
    "plain",
    "back\\slash",
    "say \"hi\"",
    "two\nlines",
    "end\\",
    "{}=, #",
    "unicode \xC3\xA9\xE2\x9C\x93",
    "",
};
#define N_FIXTURE_JOBS (sizeof fixture_jobs / sizeof fixture_jobs[0])
static const double fixture_obs[] = {0.003, 0.005, 0.02, 0.3, 1, 7, 42};
#define N_FIXTURE_OBS (sizeof fixture_obs / sizeof fixture_obs[0])

/* Generation gen: the counter is 42 + gen, and each generation after the
 * first observes one more 0.75 s step. */
static int render_fixture(td_prom_buf *b, int gen, td_error *err) {
  const double losses[N_FIXTURE_JOBS] = {0.25, -2.5,     1e-300,    DBL_MAX,
                                         NAN,  INFINITY, -INFINITY, 0.1};
  td_prom_buf_reset(b);
  td_prom_counter(b, "traind_jobs_submitted_total", "Jobs accepted since the daemon started.",
                  42 + gen);
  td_prom_gauge(b, "traind_up", "Whether the daemon is serving.", 1);
  for (size_t i = 0; i < N_FIXTURE_JOBS; i++) {
    td_prom_family(b, "traind_job_loss", TD_PROM_GAUGE,
                   "Loss of the last step, per job (a backslash \\ and a newline\nin the help).");
    td_prom_label l[2] = {{"job", fixture_jobs[i]}, {"device", "cpu:0"}};
    td_prom_sample(b, l, 2, losses[i]);
  }
  td_prom_family(b, "traind_examples_total", TD_PROM_COUNTER, NULL);
  td_prom_sample(b, (td_prom_label[]){{"job", "plain"}, {"device", "cpu:0"}}, 2,
                 9007199254740992.0);
  td_prom_sample(b, (td_prom_label[]){{"job", "plain"}, {"device", "cpu:1"}}, 2, 0.1 + 0.2);

  const double bounds[] = TD_PROM_DEFAULT_BOUNDS;
  td_prom_hist h, empty;
  if (td_prom_hist_init(&h, bounds, TD_PROM_N_DEFAULT_BOUNDS, err))
    return err->code;
  if (td_prom_hist_init(&empty, bounds, TD_PROM_N_DEFAULT_BOUNDS, err)) {
    td_prom_hist_free(&h);
    return err->code;
  }
  for (size_t i = 0; i < N_FIXTURE_OBS; i++)
    td_prom_hist_observe(&h, fixture_obs[i]);
  for (int g = 0; g < gen; g++)
    td_prom_hist_observe(&h, 0.75);
  td_prom_family(b, "traind_step_seconds", TD_PROM_HISTOGRAM, "Wall time of one training step.");
  td_prom_histogram(b, (td_prom_label[]){{"job", "plain"}}, 1, &h);
  td_prom_histogram(b, (td_prom_label[]){{"job", "idle"}}, 1, &empty);
  td_prom_hist_free(&h);
  td_prom_hist_free(&empty);

  td_prom_family(b, "traind_build_info", TD_PROM_UNTYPED, "Build of the daemon.");
  td_prom_sample(b, (td_prom_label[]){{"version", "0.1.0"}}, 1, 1);
  return td_prom_buf_status(b, err);
}

#ifdef TD_PROM_TOOL

/* prom_tool ADDR: serves the fixture, prints "port N", publishes the next
 * generation for every "next" line on stdin ("published G"), stops at EOF. */
int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: prom_tool HOST:PORT\n");
    return 2;
  }
  td_error err = {0};
  td_prom_server *srv;
  if (td_prom_server_start(argv[1], &srv, &err)) {
    fprintf(stderr, "prom_tool: %s\n", err.msg);
    return 1;
  }
  td_prom_buf b;
  td_prom_buf_init(&b);
  int gen = 0, rc = 0;
  if (render_fixture(&b, gen, &err) || td_prom_server_publish(srv, b.data, b.len)) {
    fprintf(stderr, "prom_tool: %s\n", err.msg);
    rc = 1;
  } else {
    printf("port %d\n", td_prom_server_port(srv));
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
      if (strcmp(line, "next\n") != 0) {
        fprintf(stderr, "prom_tool: unknown command %s", line);
        rc = 1;
        break;
      }
      gen++;
      if (render_fixture(&b, gen, &err) || td_prom_server_publish(srv, b.data, b.len)) {
        fprintf(stderr, "prom_tool: %s\n", err.msg);
        rc = 1;
        break;
      }
      printf("published %d\n", gen);
      fflush(stdout);
    }
  }
  td_prom_buf_free(&b);
  td_prom_server_stop(srv);
  return rc;
}

#else

/* ---- values */

static void check_value(double v, const char *want) {
  char s[TD_PROM_VALUE_MAX];
  size_t n = td_prom_format_value(v, s);
  CHECK(strcmp(s, want) == 0 && n == strlen(want), "format(%.17g) = \"%s\", want \"%s\"", v, s,
        want);
}

/* Significant digits of a formatted finite value. */
static int significant_digits(const char *s) {
  char d[TD_PROM_VALUE_MAX];
  size_t n = 0;
  for (const char *p = s; *p && *p != 'e'; p++)
    if (*p >= '0' && *p <= '9')
      d[n++] = *p;
  size_t a = 0;
  while (a < n && d[a] == '0')
    a++;
  while (n > a && d[n - 1] == '0')
    n--;
  return (int)(n - a);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void) {
  /* splitmix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void test_values(void) {
  /* What Go's strconv.FormatFloat(v, 'g', -1, 64) prints. */
  check_value(0, "0");
  check_value(-0.0, "-0");
  check_value(1, "1");
  check_value(-1, "-1");
  check_value(42, "42");
  check_value(0.005, "0.005");
  check_value(0.025, "0.025");
  check_value(2.5, "2.5");
  check_value(0.1, "0.1");
  check_value(0.0001, "0.0001");
  check_value(0.00001, "1e-05");
  check_value(999999, "999999");
  check_value(100000, "100000");
  check_value(1e6, "1e+06");
  check_value(1234567, "1.234567e+06");
  check_value(123456789, "1.23456789e+08");
  check_value(1.0 / 3, "0.3333333333333333");
  check_value(0.1 + 0.2, "0.30000000000000004");
  check_value(9007199254740992.0, "9.007199254740992e+15");
  check_value(DBL_MAX, "1.7976931348623157e+308");
  check_value(-DBL_MIN, "-2.2250738585072014e-308");
  check_value(4.9406564584124654e-324, "5e-324");
  check_value(1e21, "1e+21");
  check_value(1e-300, "1e-300");
  check_value(NAN, "NaN");
  check_value(INFINITY, "+Inf");
  check_value(-INFINITY, "-Inf");

  /* Random bit patterns: exact round trip, and no shorter form does. */
  int bad_trip = 0, not_shortest = 0, bad_layout = 0;
  for (int i = 0; i < 200000; i++) {
    uint64_t bits = rng_next();
    double v;
    memcpy(&v, &bits, sizeof v);
    if (!isfinite(v))
      continue;
    char s[TD_PROM_VALUE_MAX];
    size_t n = td_prom_format_value(v, s);
    double back = strtod(s, NULL);
    if (memcmp(&back, &v, sizeof v) != 0 || n != strlen(s)) {
      if (bad_trip++ < 5)
        fprintf(stderr, "round trip: %a printed as %s\n", v, s);
      continue;
    }
    int p = significant_digits(s);
    if (p > 1) {
      char shorter[64];
      snprintf(shorter, sizeof shorter, "%.*e", p - 2, v);
      if (strtod(shorter, NULL) == v && not_shortest++ < 5)
        fprintf(stderr, "not shortest: %a printed as %s, %s also reads back\n", v, s, shorter);
    }
    /* Exponent form exactly when the shortest form's decimal exponent is
     * below -4 or from 6 up. */
    char e[64];
    snprintf(e, sizeof e, "%.*e", p > 0 ? p - 1 : 0, v);
    int e10 = atoi(strchr(e, 'e') + 1);
    int has_e = strchr(s, 'e') != NULL;
    if ((e10 < -4 || e10 >= 6) != has_e && bad_layout++ < 5)
      fprintf(stderr, "layout: %s for exponent %d\n", s, e10);
  }
  CHECK(bad_trip == 0, "%d values did not read back exactly", bad_trip);
  CHECK(not_shortest == 0, "%d values were not printed in the fewest digits", not_shortest);
  CHECK(bad_layout == 0, "%d values used the wrong layout", bad_layout);
}

/* ---- exposition text */

/* Undoes label-value escaping (\\, \", \n) for the round-trip check; -1 on
 * a stray backslash or an unescaped quote or newline. */
static int unescape(const char *s, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '"' || s[i] == '\n')
      return -1;
    if (s[i] != '\\') {
      out[o++] = s[i];
      continue;
    }
    if (++i == n)
      return -1;
    if (s[i] == '\\' || s[i] == '"')
      out[o++] = s[i];
    else if (s[i] == 'n')
      out[o++] = '\n';
    else
      return -1;
  }
  out[o] = '\0';
  return 0;
}

static void check_label_value(const char *value, const char *want_escaped) {
  td_prom_buf b;
  td_prom_buf_init(&b);
  td_prom_family(&b, "m", TD_PROM_GAUGE, NULL);
  int rc = td_prom_sample(&b, (td_prom_label[]){{"k", value}}, 1, 1);
  CHECK(rc == TD_OK, "sample with value \"%s\": %d", value, rc);
  const char *prefix = "# TYPE m gauge\nm{k=\"";
  const char *suffix = "\"} 1\n";
  char want[256];
  snprintf(want, sizeof want, "%s%s%s", prefix, want_escaped, suffix);
  CHECK(b.data && strcmp(b.data, want) == 0, "escaped text\n%s\nwant\n%s", b.data ? b.data : "",
        want);
  if (b.data && strncmp(b.data, prefix, strlen(prefix)) == 0 &&
      b.len > strlen(prefix) + strlen(suffix)) {
    const char *esc = b.data + strlen(prefix);
    size_t n = b.len - strlen(prefix) - strlen(suffix);
    char back[256];
    int ok = n < sizeof back && unescape(esc, n, back) == 0;
    /* Valid UTF-8 comes back unchanged. */
    if (strstr(want_escaped, "\xEF\xBF\xBD") == NULL)
      CHECK(ok && strcmp(back, value) == 0, "unescaped \"%s\", want \"%s\"", ok ? back : "?",
            value);
    else
      CHECK(ok, "repaired value does not unescape");
  }
  td_prom_buf_free(&b);
}

static void test_escaping(void) {
  check_label_value("plain", "plain");
  check_label_value("", "");
  check_label_value("a\\b", "a\\\\b");
  check_label_value("say \"hi\"", "say \\\"hi\\\"");
  check_label_value("two\nlines", "two\\nlines");
  check_label_value("end\\", "end\\\\");
  check_label_value("\\\"\n", "\\\\\\\"\\n");
  check_label_value("{}=, #\t", "{}=, #\t");
  check_label_value("caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80",
                    "caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80");
  /* Not UTF-8: a stray byte, a cut sequence, an overlong slash, a
   * surrogate, a code point past U+10FFFF. */
  check_label_value("a\xFFz", "a\xEF\xBF\xBDz");
  check_label_value("x\xE2\x9C", "x\xEF\xBF\xBD\xEF\xBF\xBD");
  check_label_value("\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD");
  check_label_value("\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  check_label_value("\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");

  /* HELP escapes backslash and newline but not quotes. */
  td_prom_buf b;
  td_prom_buf_init(&b);
  td_prom_family(&b, "m", TD_PROM_COUNTER, "a \\ b\n\"c\"");
  CHECK(b.data && strcmp(b.data, "# HELP m a \\\\ b\\n\"c\"\n# TYPE m counter\n") == 0,
        "help text:\n%s", b.data ? b.data : "");
  td_prom_buf_free(&b);
}

static void test_families(void) {
  td_prom_buf b;
  td_prom_buf_init(&b);
  CHECK(td_prom_buf_status(&b, NULL) == TD_OK && b.len == 0, "fresh buffer");
  td_prom_counter(&b, "a_total", "A.", 3);
  for (int i = 0; i < 3; i++) {
    td_prom_family(&b, "g", TD_PROM_GAUGE, "G.");
    char v[8];
    snprintf(v, sizeof v, "%d", i);
    td_prom_sample(&b, (td_prom_label[]){{"i", v}, {"x", "y"}}, 2, i * 0.5);
  }
  td_prom_family(&b, "u", TD_PROM_UNTYPED, NULL);
  td_prom_sample(&b, NULL, 0, -7);
  const char *want = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n"
                     "# HELP g G.\n# TYPE g gauge\n"
                     "g{i=\"0\",x=\"y\"} 0\ng{i=\"1\",x=\"y\"} 0.5\ng{i=\"2\",x=\"y\"} 1\n"
                     "# TYPE u untyped\nu -7\n";
  CHECK(td_prom_buf_status(&b, NULL) == TD_OK, "status %d", b.status);
  CHECK(b.data && strcmp(b.data, want) == 0 && b.len == strlen(want), "rendering\n%s\nwant\n%s",
        b.data ? b.data : "", want);

  /* Going back to an earlier family would split it: refused, and sticky. */
  size_t len = b.len;
  td_error err = {0};
  CHECK(td_prom_family(&b, "g", TD_PROM_GAUGE, "G.") == TD_EINVAL, "family g begun twice");
  CHECK(td_prom_buf_status(&b, &err) == TD_EINVAL, "status after refusal");
  CHECK_STR_CONTAINS(err.msg, "family g begun twice");
  CHECK(td_prom_gauge(&b, "later", NULL, 1) == TD_EINVAL && b.len == len,
        "calls after a failure write nothing (len %zu, was %zu)", b.len, len);

  /* Reset starts a new rendering: the same families are allowed again. */
  td_prom_buf_reset(&b);
  CHECK(b.len == 0 && strcmp(b.data, "") == 0 && td_prom_buf_status(&b, NULL) == TD_OK,
        "reset empties");
  CHECK(td_prom_gauge(&b, "g", NULL, 2) == TD_OK && strcmp(b.data, "# TYPE g gauge\ng 2\n") == 0,
        "after reset: %s", b.data);

  /* Every refusal, each on a fresh buffer, with the culprit named. */
  struct {
    const char *what, *needle;
  } cases[] = {
      {"name starting with a digit", "\"1abc\""},
      {"name with a dash", "\"a-b\""},
      {"empty name", "\"\""},
      {"null name", "(null)"},
      {"type changed", "begun as a gauge, then as a counter"},
      {"sample before a family", "before any family"},
      {"reserved label", "\"__name\""},
      {"label with a space", "\"a b\""},
      {"duplicate label", "label job given twice"},
      {"null label value", "label job has no value"},
      {"le on a histogram", "label le"},
      {"td_prom_sample on a histogram", "write its samples with td_prom_histogram"},
      {"td_prom_histogram on a gauge", "write its samples with td_prom_sample"},
      {"unknown type", "unknown type 9"},
  };
  const double bounds[] = {1};
  td_prom_hist h;
  CHECK(td_prom_hist_init(&h, bounds, 1, &err) == TD_OK, "hist init: %s", err.msg);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    td_prom_buf_reset(&b);
    int rc = TD_OK;
    switch (i) {
    case 0:
      rc = td_prom_family(&b, "1abc", TD_PROM_GAUGE, NULL);
      break;
    case 1:
      rc = td_prom_family(&b, "a-b", TD_PROM_GAUGE, NULL);
      break;
    case 2:
      rc = td_prom_family(&b, "", TD_PROM_GAUGE, NULL);
      break;
    case 3:
      rc = td_prom_family(&b, NULL, TD_PROM_GAUGE, NULL);
      break;
    case 4:
      td_prom_family(&b, "m", TD_PROM_GAUGE, NULL);
      rc = td_prom_family(&b, "m", TD_PROM_COUNTER, NULL);
      break;
    case 5:
      rc = td_prom_sample(&b, NULL, 0, 1);
      break;
    case 6:
      td_prom_family(&b, "m", TD_PROM_GAUGE, NULL);
      rc = td_prom_sample(&b, (td_prom_label[]){{"__name", "x"}}, 1, 1);
      break;
    case 7:
      td_prom_family(&b, "m", TD_PROM_GAUGE, NULL);
      rc = td_prom_sample(&b, (td_prom_label[]){{"a b", "x"}}, 1, 1);
      break;
    case 8:
      td_prom_family(&b, "m", TD_PROM_GAUGE, NULL);
      rc = td_prom_sample(&b, (td_prom_label[]){{"job", "a"}, {"job", "b"}}, 2, 1);
      break;
    case 9:
      td_prom_family(&b, "m", TD_PROM_GAUGE, NULL);
      rc = td_prom_sample(&b, (td_prom_label[]){{"job", NULL}}, 1, 1);
      break;
    case 10:
      td_prom_family(&b, "m", TD_PROM_HISTOGRAM, NULL);
      rc = td_prom_histogram(&b, (td_prom_label[]){{"le", "1"}}, 1, &h);
      break;
    case 11:
      td_prom_family(&b, "m", TD_PROM_HISTOGRAM, NULL);
      rc = td_prom_sample(&b, NULL, 0, 1);
      break;
    case 12:
      td_prom_family(&b, "m", TD_PROM_GAUGE, NULL);
      rc = td_prom_histogram(&b, NULL, 0, &h);
      break;
    case 13:
      rc = td_prom_family(&b, "m", (td_prom_type)9, NULL);
      break;
    }
    td_error e = {0};
    CHECK(rc == TD_EINVAL && td_prom_buf_status(&b, &e) == TD_EINVAL, "%s: rc %d", cases[i].what,
          rc);
    CHECK(strstr(e.msg, cases[i].needle) != NULL, "%s: message \"%s\" lacks \"%s\"", cases[i].what,
          e.msg, cases[i].needle);
  }
  /* Names with colons and digits are fine. */
  td_prom_buf_reset(&b);
  CHECK(td_prom_gauge(&b, "job:loss:avg5m", NULL, 1) == TD_OK, "recording-rule name");
  td_prom_family(&b, "m2", TD_PROM_GAUGE, NULL);
  CHECK(td_prom_sample(&b, (td_prom_label[]){{"_a1", "x"}}, 1, 1) == TD_OK, "label _a1");
  td_prom_hist_free(&h);
  td_prom_buf_free(&b);
}

/* ---- histograms */

static void test_histograms(void) {
  td_error err = {0};
  const double bounds[] = TD_PROM_DEFAULT_BOUNDS;
  enum { NB = TD_PROM_N_DEFAULT_BOUNDS, NV = 5000 };
  td_prom_hist h;
  CHECK(td_prom_hist_init(&h, bounds, NB, &err) == TD_OK, "init: %s", err.msg);
  static double values[NV];
  long double ref_sum = 0;
  for (int i = 0; i < NV; i++) {
    double v;
    if (i % 10 == 0)
      v = bounds[(size_t)i / 10 % NB]; /* exactly on a bound: counted in it */
    else if (i % 10 == 1)
      v = -(double)(rng_next() % 100); /* zero and below */
    else
      v = exp((double)(rng_next() % 20000) / 1000.0 - 8); /* 3e-4 .. 1.6e5 */
    values[i] = v;
    ref_sum += v;
    td_prom_hist_observe(&h, v);
  }
  for (size_t k = 0; k <= NB; k++) {
    uint64_t want = 0, got = 0;
    for (int i = 0; i < NV; i++)
      want += k == NB || values[i] <= bounds[k];
    for (size_t j = 0; j <= k; j++)
      got += h.counts[j];
    CHECK(got == want, "cumulative bucket %zu: %llu, brute force %llu", k, (unsigned long long)got,
          (unsigned long long)want);
  }
  CHECK(h.count == NV, "count %llu", (unsigned long long)h.count);
  CHECK_CLOSE(h.sum, (double)ref_sum, 1e-12, 1.0);

  /* The rendering of the same histogram: one line per bound plus +Inf,
   * cumulative, then _sum and _count. */
  td_prom_buf b;
  td_prom_buf_init(&b);
  td_prom_family(&b, "h_seconds", TD_PROM_HISTOGRAM, NULL);
  CHECK(td_prom_histogram(&b, (td_prom_label[]){{"job", "j"}}, 1, &h) == TD_OK, "render");
  const char *les[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                       "0.5",   "1",    "2.5",   "5",    "10",  "+Inf"};
  uint64_t cum = 0;
  const char *at = b.data ? strchr(b.data, '\n') + 1 : "";
  for (size_t k = 0; k <= NB; k++) {
    cum += h.counts[k];
    char line[128];
    snprintf(line, sizeof line, "h_seconds_bucket{job=\"j\",le=\"%s\"} %llu\n", les[k],
             (unsigned long long)cum);
    CHECK(strncmp(at, line, strlen(line)) == 0, "bucket line %zu: want %s", k, line);
    const char *nl = strchr(at, '\n');
    at = nl ? nl + 1 : at;
  }
  char sum[TD_PROM_VALUE_MAX], line[128];
  td_prom_format_value(h.sum, sum);
  snprintf(line, sizeof line, "h_seconds_sum{job=\"j\"} %s\nh_seconds_count{job=\"j\"} %d\n", sum,
           NV);
  CHECK(strcmp(at, line) == 0, "sum and count lines\n%s\nwant\n%s", at, line);
  td_prom_buf_free(&b);

  /* Exact small case, without labels; NaN and +Inf land in +Inf. */
  td_prom_hist s;
  CHECK(td_prom_hist_init(&s, (double[]){0.5, 1}, 2, &err) == TD_OK, "init small");
  td_prom_hist_observe(&s, 0.5);
  td_prom_hist_observe(&s, 0.75);
  td_prom_hist_observe(&s, 3);
  td_prom_buf_init(&b);
  td_prom_family(&b, "s", TD_PROM_HISTOGRAM, "Small.");
  td_prom_histogram(&b, NULL, 0, &s);
  const char *want = "# HELP s Small.\n# TYPE s histogram\n"
                     "s_bucket{le=\"0.5\"} 1\ns_bucket{le=\"1\"} 2\ns_bucket{le=\"+Inf\"} 3\n"
                     "s_sum 4.25\ns_count 3\n";
  CHECK(b.data && strcmp(b.data, want) == 0, "small histogram\n%s\nwant\n%s", b.data ? b.data : "",
        want);
  td_prom_hist_observe(&s, INFINITY);
  td_prom_hist_observe(&s, NAN);
  CHECK(s.counts[0] == 1 && s.counts[1] == 1 && s.counts[2] == 3 && s.count == 5 && isnan(s.sum),
        "after +Inf and NaN: %llu %llu %llu count %llu sum %g", (unsigned long long)s.counts[0],
        (unsigned long long)s.counts[1], (unsigned long long)s.counts[2],
        (unsigned long long)s.count, s.sum);
  td_prom_hist_clear(&s);
  CHECK(s.counts[0] == 0 && s.counts[2] == 0 && s.count == 0 && s.sum == 0 && s.bounds[1] == 1,
        "clear keeps bounds, zeroes counts");
  td_prom_buf_free(&b);

  /* No bounds: only the +Inf bucket. */
  td_prom_hist z;
  CHECK(td_prom_hist_init(&z, NULL, 0, &err) == TD_OK, "init without bounds");
  td_prom_hist_observe(&z, -1);
  td_prom_buf_init(&b);
  td_prom_family(&b, "z", TD_PROM_HISTOGRAM, NULL);
  td_prom_histogram(&b, NULL, 0, &z);
  CHECK(b.data && strcmp(b.data,
                         "# TYPE z histogram\nz_bucket{le=\"+Inf\"} 1\nz_sum -1\nz_count 1\n") == 0,
        "bucketless histogram\n%s", b.data ? b.data : "");
  td_prom_buf_free(&b);

  /* Merge: the union of two halves equals the whole. */
  td_prom_hist a, c;
  td_prom_hist_init(&a, bounds, NB, &err);
  td_prom_hist_init(&c, bounds, NB, &err);
  for (int i = 0; i < NV; i++)
    td_prom_hist_observe(i < NV / 3 ? &a : &c, values[i]);
  CHECK(td_prom_hist_merge(&a, &c) == TD_OK, "merge");
  CHECK(memcmp(a.counts, h.counts, (NB + 1) * sizeof(uint64_t)) == 0 && a.count == h.count,
        "merged counts differ from the whole");
  CHECK_CLOSE(a.sum, h.sum, 1e-12, 1.0);
  CHECK(td_prom_hist_merge(&a, &s) == TD_EINVAL, "merge with other bounds");
  td_prom_hist_free(&a);
  td_prom_hist_free(&c);
  td_prom_hist_free(&s);
  td_prom_hist_free(&z);
  td_prom_hist_free(&h);

  /* Bad bounds. */
  err.msg[0] = '\0';
  CHECK(td_prom_hist_init(&a, (double[]){1, 1}, 2, &err) == TD_EINVAL, "repeated bound");
  CHECK_STR_CONTAINS(err.msg, "must increase");
  CHECK(td_prom_hist_init(&a, (double[]){2, 1}, 2, &err) == TD_EINVAL, "decreasing bounds");
  CHECK(td_prom_hist_init(&a, (double[]){1, INFINITY}, 2, &err) == TD_EINVAL, "+Inf bound");
  CHECK_STR_CONTAINS(err.msg, "finite");
  CHECK(td_prom_hist_init(&a, (double[]){NAN}, 1, &err) == TD_EINVAL, "NaN bound");

  double eb[5];
  CHECK(td_prom_bounds_exponential(eb, 5, 0.001, 2) == TD_OK, "exponential bounds");
  for (int i = 0; i < 5; i++)
    CHECK_CLOSE(eb[i], 0.001 * pow(2, i), 1e-15, 1e-300);
  CHECK(td_prom_bounds_exponential(eb, 5, 0, 2) == TD_EINVAL, "start 0");
  CHECK(td_prom_bounds_exponential(eb, 5, 1, 1) == TD_EINVAL, "factor 1");
}

/* ---- HTTP */

typedef struct http_resp {
  int status;
  char head[4096]; /* status line and headers */
  char *body;      /* malloc'd */
  size_t body_len;
} http_resp;

/* Sends req to [family]:port and reads until the server closes (requests
 * say "Connection: close"). -1 when the exchange fails. */
static int http_exchange(int family, int port, const char *req, http_resp *r) {
  memset(r, 0, sizeof *r);
  int fd = socket(family, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_storage sa = {0};
  socklen_t len;
  if (family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&sa;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  }
  if (connect(fd, (struct sockaddr *)&sa, len) != 0) {
    close(fd);
    return -1;
  }
  for (size_t off = 0, n = strlen(req); off < n;) {
    ssize_t w = send(fd, req + off, n - off, MSG_NOSIGNAL);
    if (w <= 0) {
      close(fd);
      return -1;
    }
    off += (size_t)w;
  }
  /* buf keeps a byte for the NUL that sscanf below needs. */
  size_t cap = 1 << 16, got = 0;
  char *buf = malloc(cap + 1);
  for (;;) {
    if (got == cap)
      buf = realloc(buf, (cap *= 2) + 1);
    ssize_t n = recv(fd, buf + got, cap - got, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      if (n < 0) {
        free(buf);
        close(fd);
        return -1;
      }
      break;
    }
    got += (size_t)n;
  }
  close(fd);
  buf[got] = '\0';
  char *end = NULL;
  for (size_t i = 0; i + 4 <= got; i++)
    if (memcmp(buf + i, "\r\n\r\n", 4) == 0) {
      end = buf + i;
      break;
    }
  if (!end || (size_t)(end - buf) >= sizeof r->head ||
      sscanf(buf, "HTTP/1.1 %d ", &r->status) != 1) {
    free(buf);
    return -1;
  }
  memcpy(r->head, buf, (size_t)(end - buf));
  r->head[end - buf] = '\0';
  r->body_len = got - (size_t)(end + 4 - buf);
  r->body = malloc(r->body_len + 1);
  memcpy(r->body, end + 4, r->body_len);
  r->body[r->body_len] = '\0';
  free(buf);
  return 0;
}

/* The value of header `name` (case-insensitive), or "" when absent. */
static const char *header(http_resp *r, const char *name, char *out, size_t cap) {
  out[0] = '\0';
  size_t n = strlen(name);
  for (const char *l = strstr(r->head, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
    const char *h = l + 2;
    if (strncasecmp(h, name, n) == 0 && h[n] == ':') {
      h += n + 1;
      while (*h == ' ')
        h++;
      const char *e = strstr(h, "\r\n");
      size_t len = e ? (size_t)(e - h) : strlen(h);
      if (len >= cap)
        len = cap - 1;
      memcpy(out, h, len);
      out[len] = '\0';
      break;
    }
  }
  return out;
}

static int http_get(int port, const char *path, http_resp *r) {
  char req[256];
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
           path);
  return http_exchange(AF_INET, port, req, r);
}

/* Generation k of the concurrent-publish text: its length depends on k, its
 * first and last lines name k. */
static char *gen_text(int k, size_t *len) {
  size_t filler = 1000 + (size_t)(k % 5) * 40000;
  char *t = malloc(filler + 64);
  int n = snprintf(t, 64, "# gen %d\n", k);
  for (size_t i = 0; i < filler; i++)
    t[n + i] = i % 64 == 63 ? '\n' : (char)('a' + k % 26);
  n += (int)filler;
  n += snprintf(t + n, 64, "\n# end %d\n", k);
  *len = (size_t)n;
  return t;
}

typedef struct scrape_ctx {
  td_prom_server *srv;
  int port;
  atomic_int stop;
  atomic_int published; /* generations published so far */
  atomic_int bad, ok;
  atomic_int max_gen_seen, min_gen_seen;
} scrape_ctx;

static void *publisher(void *arg) {
  scrape_ctx *c = arg;
  for (int k = 1; !atomic_load(&c->stop); k++) {
    size_t len;
    char *t = gen_text(k, &len);
    if (td_prom_server_publish(c->srv, t, len) != TD_OK)
      atomic_fetch_add(&c->bad, 1);
    atomic_store(&c->published, k);
    free(t);
  }
  return NULL;
}

static void *scraper(void *arg) {
  scrape_ctx *c = arg;
  for (int i = 0; i < 40; i++) {
    http_resp r;
    if (http_get(c->port, "/metrics", &r) != 0 || r.status != 200) {
      atomic_fetch_add(&c->bad, 1);
      continue;
    }
    int k = -1;
    size_t len = 0;
    char *want = NULL;
    if (sscanf(r.body, "# gen %d\n", &k) == 1 && k >= 1)
      want = gen_text(k, &len);
    if (!want || len != r.body_len || memcmp(want, r.body, len) != 0) {
      if (atomic_fetch_add(&c->bad, 1) < 3)
        fprintf(stderr, "torn or unknown body: %zu bytes, generation %d\n", r.body_len, k);
    } else {
      atomic_fetch_add(&c->ok, 1);
      int m = atomic_load(&c->max_gen_seen);
      while (k > m && !atomic_compare_exchange_weak(&c->max_gen_seen, &m, k)) {
      }
      m = atomic_load(&c->min_gen_seen);
      while (k < m && !atomic_compare_exchange_weak(&c->min_gen_seen, &m, k)) {
      }
    }
    free(want);
    free(r.body);
  }
  return NULL;
}

static void test_http(void) {
  td_error err = {0};
  td_prom_server *srv = NULL;
  CHECK(td_prom_server_start("127.0.0.1:0", &srv, &err) == TD_OK, "start: %s", err.msg);
  if (!srv)
    return;
  int port = td_prom_server_port(srv);
  CHECK(port > 0 && port < 65536, "port %d", port);
  char v[256];
  http_resp r;

  /* Before any publish: 200 with an empty body. */
  CHECK(http_get(port, "/metrics", &r) == 0 && r.status == 200 && r.body_len == 0,
        "empty endpoint: status %d, %zu bytes", r.status, r.body_len);
  free(r.body);

  td_prom_buf b;
  td_prom_buf_init(&b);
  CHECK(render_fixture(&b, 0, &err) == TD_OK, "fixture: %s", err.msg);
  CHECK(td_prom_server_publish(srv, b.data, b.len) == TD_OK, "publish");
  CHECK(http_get(port, "/metrics", &r) == 0, "GET /metrics");
  CHECK(strncmp(r.head, "HTTP/1.1 200 OK\r\n", 17) == 0, "status line: %.40s", r.head);
  CHECK(strcmp(header(&r, "Content-Type", v, sizeof v),
               "text/plain; version=0.0.4; charset=utf-8") == 0,
        "Content-Type \"%s\"", v);
  CHECK(atol(header(&r, "Content-Length", v, sizeof v)) == (long)b.len,
        "Content-Length %s, want %zu", v, b.len);
  CHECK(r.body_len == b.len && memcmp(r.body, b.data, b.len) == 0,
        "body (%zu bytes) differs from "
        "the published text (%zu bytes)",
        r.body_len, b.len);
  free(r.body);

  /* The query string is not part of the path. */
  CHECK(http_get(port, "/metrics?name[]=x", &r) == 0 && r.status == 200 && r.body_len == b.len,
        "GET with a query: %d", r.status);
  free(r.body);

  /* HEAD: the headers of GET, no body. */
  CHECK(http_exchange(AF_INET, port,
                      "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &r) == 0 &&
            r.status == 200 && r.body_len == 0,
        "HEAD: %d with %zu body bytes", r.status, r.body_len);
  CHECK(atol(header(&r, "Content-Length", v, sizeof v)) == (long)b.len, "HEAD Content-Length %s",
        v);
  free(r.body);

  const char *paths[] = {"/", "/metric", "/metrics/", "/metricsx", "/favicon.ico"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    CHECK(http_get(port, paths[i], &r) == 0 && r.status == 404, "GET %s: %d", paths[i], r.status);
    CHECK(strncmp(r.head, "HTTP/1.1 404 Not Found\r\n", 24) == 0, "404 status line: %.40s", r.head);
    free(r.body);
  }
  const char *methods[] = {"POST", "PUT", "DELETE", "OPTIONS"};
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    char req[256];
    snprintf(req, sizeof req,
             "%s /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
             "Content-Length: 5\r\n\r\nhello",
             methods[i]);
    CHECK(http_exchange(AF_INET, port, req, &r) == 0 && r.status == 405, "%s /metrics: %d",
          methods[i], r.status);
    CHECK(strcmp(header(&r, "Allow", v, sizeof v), "GET, HEAD") == 0, "%s: Allow \"%s\"",
          methods[i], v);
    free(r.body);
  }

  /* Scrapes keep the connection alive: three requests on one connection
   * (the second with a body, which is dropped), the last one a 404. */
  CHECK(http_exchange(AF_INET, port,
                      "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                      "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      &r) == 0 &&
            r.status == 200,
        "keep-alive requests: %d", r.status);
  {
    const char *second = r.body ? strstr(r.body, "HTTP/1.1 ") : NULL;
    const char *third = second ? strstr(second + 1, "HTTP/1.1 ") : NULL;
    CHECK(second && strncmp(second, "HTTP/1.1 200 OK\r\n", 17) == 0 && r.body + b.len == second,
          "second response on the connection: %.20s", second ? second : "(none)");
    CHECK(third && strncmp(third, "HTTP/1.1 404 ", 13) == 0, "third response: %.20s",
          third ? third : "(none)");
  }
  free(r.body);

  /* A big rendering comes back whole. */
  size_t big_len = 3u << 20;
  char *big = malloc(big_len);
  for (size_t i = 0; i < big_len; i++)
    big[i] = i % 80 == 79 ? '\n' : (char)('0' + i % 10);
  CHECK(td_prom_server_publish(srv, big, big_len) == TD_OK, "publish 3 MiB");
  CHECK(http_get(port, "/metrics", &r) == 0 && r.body_len == big_len &&
            memcmp(r.body, big, big_len) == 0,
        "3 MiB body: %zu bytes", r.body_len);
  free(r.body);
  free(big);

  /* A client that connects and says nothing does not hold up others. */
  int idle = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in ia = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(connect(idle, (struct sockaddr *)&ia, sizeof ia) == 0, "idle connect");
  CHECK(http_get(port, "/metrics", &r) == 0 && r.status == 200, "GET beside an idle client");
  free(r.body);

  /* The connection limit: with 32 connections open (the idle one and 31
   * more) a 33rd waits unanswered; once the others close it is served. */
  int extra[31];
  for (int i = 0; i < 31; i++) {
    extra[i] = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(extra[i], (struct sockaddr *)&ia, sizeof ia) == 0, "connection %d", i);
  }
  /* Lets the server accept them all: a client sees no sign of that (the
   * kernel completes the connections), so this is a pause, not a wait. */
  usleep(200 * 1000);
  int over = socket(AF_INET, SOCK_STREAM, 0);
  const char *get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  CHECK(connect(over, (struct sockaddr *)&ia, sizeof ia) == 0 &&
            send(over, get, strlen(get), MSG_NOSIGNAL) == (ssize_t)strlen(get),
        "33rd connection");
  struct pollfd pf = {.fd = over, .events = POLLIN};
  CHECK(poll(&pf, 1, 300) == 0, "the 33rd connection was answered at the limit");
  for (int i = 0; i < 31; i++)
    close(extra[i]);
  char head[16] = {0};
  CHECK(poll(&pf, 1, 30000) == 1 && recv(over, head, 15, MSG_WAITALL) == 15 &&
            strcmp(head, "HTTP/1.1 200 OK") == 0,
        "the 33rd connection, once others closed: \"%s\"", head);
  close(over);

  /* Publishing while four clients scrape: every body is one whole
   * generation, and later generations show up. */
  scrape_ctx c = {.srv = srv, .port = port};
  atomic_init(&c.min_gen_seen, 1 << 30);
  pthread_t pub, scr[4];
  pthread_create(&pub, NULL, publisher, &c);
  while (atomic_load(&c.published) < 1)
    usleep(100);
  for (int i = 0; i < 4; i++)
    pthread_create(&scr[i], NULL, scraper, &c);
  for (int i = 0; i < 4; i++)
    pthread_join(scr[i], NULL);
  atomic_store(&c.stop, 1);
  pthread_join(pub, NULL);
  CHECK(atomic_load(&c.bad) == 0, "%d bad scrapes", atomic_load(&c.bad));
  CHECK(atomic_load(&c.ok) == 160, "%d good scrapes of 160", atomic_load(&c.ok));
  CHECK(atomic_load(&c.max_gen_seen) > atomic_load(&c.min_gen_seen),
        "scrapes saw only generation %d (of %d published)", atomic_load(&c.max_gen_seen),
        atomic_load(&c.published));
  /* After the last publish, the next scrape serves exactly it. */
  CHECK(td_prom_server_publish(srv, "final 1\n", 8) == TD_OK, "final publish");
  CHECK(http_get(port, "/metrics", &r) == 0 && r.body_len == 8 &&
            memcmp(r.body, "final 1\n", 8) == 0,
        "after the final publish: \"%s\"", r.body ? r.body : "");
  free(r.body);

  /* The port is taken: a second server refuses with the reason. */
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  td_prom_server *dup = NULL;
  err.msg[0] = '\0';
  CHECK(td_prom_server_start(addr, &dup, &err) == TD_EIO && dup == NULL, "second server on %s",
        addr);
  CHECK_STR_CONTAINS(err.msg, addr);
  CHECK_STR_CONTAINS(err.msg, "in use");

  /* Stop with the idle client still connected, then the port is closed. */
  td_prom_server_stop(srv);
  close(idle);
  CHECK(http_get(port, "/metrics", &r) != 0, "the stopped server still answers");
  free(r.body);
  /* A restarted daemon gets its port back at once. */
  CHECK(td_prom_server_start(addr, &dup, &err) == TD_OK, "restart on %s: %s", addr, err.msg);
  td_prom_server_stop(dup);
  td_prom_server_stop(NULL);
  td_prom_buf_free(&b);
}

static void test_addresses(void) {
  td_error err;
  td_prom_server *s;
  struct {
    const char *addr, *needle;
  } bad[] = {
      {"", "empty"},
      {"127.0.0.1", "no port"},
      {"127.0.0.1:", "port \"\""},
      {"127.0.0.1:65536", "65535"},
      {"127.0.0.1:-1", "65535"},
      {"127.0.0.1:80x", "65535"},
      {"127.0.0.1:0000009", "65535"},
      {":9400", "no host"},
      {"example.com:80", "\"example.com\" is not an IPv4"},
      {"127.1:80", "\"127.1\" is not an IPv4"},
      {"::1:9400", "brackets"},
      {"[::1:9400", "brackets"},
      {"[127.0.0.1]:80", "is not an IPv6"},
      {"[]:80", "no host"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err.msg[0] = '\0';
    s = (td_prom_server *)&err; /* must be reset to NULL */
    int rc = td_prom_server_start(bad[i].addr, &s, &err);
    CHECK(rc == TD_EINVAL && s == NULL, "address \"%s\": rc %d", bad[i].addr, rc);
    CHECK(strstr(err.msg, bad[i].needle) != NULL, "address \"%s\": message \"%s\" lacks \"%s\"",
          bad[i].addr, err.msg, bad[i].needle);
  }

  /* localhost is 127.0.0.1. */
  CHECK(td_prom_server_start("localhost:0", &s, &err) == TD_OK, "localhost: %s", err.msg);
  if (s) {
    td_prom_server_publish(s, "x 1\n", 4);
    http_resp r;
    CHECK(http_get(td_prom_server_port(s), "/metrics", &r) == 0 && strcmp(r.body, "x 1\n") == 0,
          "GET via localhost");
    free(r.body);
    td_prom_server_stop(s);
  }

  /* IPv6 loopback, when this host has one. */
  int probe = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = in6addr_loopback};
  int have6 = probe >= 0 && bind(probe, (struct sockaddr *)&a6, sizeof a6) == 0;
  if (probe >= 0)
    close(probe);
  if (!have6) {
    printf("no IPv6 loopback here; [::1] not tested\n");
    return;
  }
  CHECK(td_prom_server_start("[::1]:0", &s, &err) == TD_OK, "[::1]: %s", err.msg);
  if (s) {
    td_prom_server_publish(s, "v6 1\n", 5);
    http_resp r;
    CHECK(http_exchange(AF_INET6, td_prom_server_port(s),
                        "GET /metrics HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n",
                        &r) == 0 &&
              r.status == 200 && strcmp(r.body, "v6 1\n") == 0,
          "GET over IPv6");
    free(r.body);
    /* [::1] is IPv6 only. */
    CHECK(http_get(td_prom_server_port(s), "/metrics", &r) != 0, "[::1] answered on 127.0.0.1");
    free(r.body);
    td_prom_server_stop(s);
  }
  /* [::] is every interface, IPv4 included. */
  CHECK(td_prom_server_start("[::]:0", &s, &err) == TD_OK, "[::]: %s", err.msg);
  if (s) {
    td_prom_server_publish(s, "any 1\n", 6);
    http_resp r;
    CHECK(http_get(td_prom_server_port(s), "/metrics", &r) == 0 && strcmp(r.body, "any 1\n") == 0,
          "[::] over IPv4");
    free(r.body);
    CHECK(http_exchange(AF_INET6, td_prom_server_port(s),
                        "GET /metrics HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n",
                        &r) == 0 &&
              strcmp(r.body, "any 1\n") == 0,
          "[::] over IPv6");
    free(r.body);
    td_prom_server_stop(s);
  }
}

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "test_prom: timed out (a request or a stop hung)\n";
  ssize_t w = write(2, msg, sizeof msg - 1);
  (void)w;
  _exit(2);
}

int main(void) {
  signal(SIGALRM, on_alarm);
  alarm(100);
  test_values();
  test_escaping();
  test_families();
  test_histograms();

  /* The fixture renders exactly as prom_tool serves it. */
  td_prom_buf b;
  td_prom_buf_init(&b);
  td_error err = {0};
  CHECK(render_fixture(&b, 1, &err) == TD_OK, "fixture: %s", err.msg);
  CHECK_STR_CONTAINS(b.data, "traind_jobs_submitted_total 43\n");
  CHECK_STR_CONTAINS(
      b.data, "traind_job_loss{job=\"two\\nlines\",device=\"cpu:0\"} 1.7976931348623157e+308\n");
  CHECK_STR_CONTAINS(b.data, "traind_job_loss{job=\"end\\\\\",device=\"cpu:0\"} NaN\n");
  CHECK_STR_CONTAINS(b.data, "traind_step_seconds_bucket{job=\"plain\",le=\"1\"} 6\n");
  CHECK_STR_CONTAINS(b.data, "traind_step_seconds_count{job=\"plain\"} 8\n");
  td_prom_buf_free(&b);

  test_http();
  test_addresses();
  return td_check_exit();
}

#endif
