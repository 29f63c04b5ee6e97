/* Prometheus metrics: the text exposition format 0.0.4 and the HTTP endpoint
 * that serves it.
 *
 *   td_prom_buf     builds one rendering: # HELP / # TYPE once per family,
 *                   then that family's samples (counters, gauges, histograms)
 *   td_prom_hist    a histogram accumulator with fixed upper bounds
 *   td_prom_server  GET /metrics over libmicrohttpd, serving the text last
 *                   published; the HTTP thread never calls back into the
 *                   caller's state
 *
 * Text is rendered by the thread that owns the state it describes and handed
 * to the server with td_prom_server_publish():
 *
 *   td_prom_buf_reset(&b);
 *   td_prom_family(&b, "traind_job_loss", TD_PROM_GAUGE, "Loss of the last step.");
 *   for each job: td_prom_sample(&b, (td_prom_label[]){{"job", id}}, 1, loss);
 *   if (td_prom_buf_status(&b, &err) == TD_OK)
 *     td_prom_server_publish(srv, b.data, b.len);
 *
 * Numbers are printed in their shortest round-trip form, as the Go client
 * library prints them ("0.005", "1e+06", "NaN", "+Inf", "-Inf"). Formatting
 * assumes the "C" numeric locale (the daemon never calls setlocale). */
#ifndef TD_PROM_H
#define TD_PROM_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* The Content-Type of the text format. */
#define TD_PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* ---- values */

/* Enough for any double in shortest form plus the NUL
 * ("-2.2250738585072014e-308" is 24 characters). */
#define TD_PROM_VALUE_MAX 32

/* Writes v as the exposition format spells it: shortest digits that read
 * back to the same double, in Go's %g layout (exponent below -4 or from 6
 * up), "NaN", "+Inf" or "-Inf". Returns the length. */
size_t td_prom_format_value(double v, char out[TD_PROM_VALUE_MAX]);

/* ---- histogram accumulator */

/* The Go and Python clients' default bounds, in seconds. */
#define TD_PROM_DEFAULT_BOUNDS \
  { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }
#define TD_PROM_N_DEFAULT_BOUNDS 11

/* Observations counted into buckets by upper bound (inclusive: v lands in
 * the first bucket with v <= bound). Not locked: the owner serializes
 * observe, merge and rendering as it sees fit. */
typedef struct td_prom_hist {
  size_t n_bounds;  /* finite bounds; the +Inf bucket is implicit */
  double *bounds;   /* (n_bounds,) strictly increasing, owned (one block with counts) */
  uint64_t *counts; /* (n_bounds + 1,) per bucket, not cumulative; the last
                     * holds values above every bound, +Inf and NaN */
  uint64_t count;   /* observations */
  double sum;       /* of every observation (NaN once a NaN was observed) */
} td_prom_hist;

/* Copies the bounds (finite, strictly increasing; none is allowed and
 * leaves only the +Inf bucket) and zeroes the counts. TD_EINVAL or
 * TD_ENOMEM with a message in *err. */
int td_prom_hist_init(td_prom_hist *h, const double *bounds, size_t n_bounds, td_error *err);
void td_prom_hist_free(td_prom_hist *h);
void td_prom_hist_observe(td_prom_hist *h, double v);
/* Zeroes counts, count and sum; the bounds stay. */
void td_prom_hist_clear(td_prom_hist *h);
/* Adds src's observations to dst. TD_EINVAL (dst unchanged) unless both
 * have the same bounds. */
int td_prom_hist_merge(td_prom_hist *dst, const td_prom_hist *src);
/* Fills out[0..n) with start, start*factor, start*factor^2, ... (Go's
 * ExponentialBuckets). TD_EINVAL unless start > 0 and factor > 1. */
int td_prom_bounds_exponential(double *out, size_t n, double start, double factor);

/* ---- exposition text */

typedef enum td_prom_type {
  TD_PROM_COUNTER,
  TD_PROM_GAUGE,
  TD_PROM_HISTOGRAM,
  TD_PROM_UNTYPED,
} td_prom_type;

/* One label of a sample. Names match [a-zA-Z_][a-zA-Z0-9_]* and do not
 * start with "__"; values are any text (escaped on output, bytes that are
 * not UTF-8 replaced by U+FFFD). */
typedef struct td_prom_label {
  const char *name;
  const char *value;
} td_prom_label;

/* A rendering in progress. The first failure (TD_EINVAL for a bad name or
 * a family begun twice, TD_ENOMEM) sticks: later calls do nothing and return
 * it, so a rendering can be written straight through and checked once. */
typedef struct td_prom_buf {
  char *data; /* len bytes of text and a NUL, owned; NULL until written */
  size_t len, cap;
  int status; /* TD_OK or the first failure */
  td_error err;
  /* Names of the families begun since the last reset, each with its NUL,
   * back to back: a family's samples must be contiguous, so each name is
   * begun once. */
  char *names;
  size_t names_len, names_cap;
  size_t cur; /* offset of the current family's name in names, or SIZE_MAX */
  td_prom_type cur_type;
} td_prom_buf;

void td_prom_buf_init(td_prom_buf *b);
void td_prom_buf_free(td_prom_buf *b);
/* Empties the text, the family list and the status for the next rendering,
 * keeping the storage. */
void td_prom_buf_reset(td_prom_buf *b);
/* The first failure since the last reset (TD_OK when none), copied to *err
 * when err is not NULL. */
int td_prom_buf_status(const td_prom_buf *b, td_error *err);

/* Begins a family: writes "# HELP name help" (help escaped; NULL writes no
 * HELP line) and "# TYPE name type". Beginning the current family again
 * with the same type writes nothing, so a loop may call it per sample.
 * Names match [a-zA-Z_:][a-zA-Z0-9_:]*; counters should end in "_total". */
int td_prom_family(td_prom_buf *b, const char *name, td_prom_type type, const char *help);
/* One sample of the current counter, gauge or untyped family:
 * name{labels} value. */
int td_prom_sample(td_prom_buf *b, const td_prom_label *labels, size_t n_labels, double value);
/* One series of the current histogram family: the cumulative
 * name_bucket{labels,le="..."} lines ending with le="+Inf", then name_sum
 * and name_count. "le" is not allowed among the labels. */
int td_prom_histogram(td_prom_buf *b, const td_prom_label *labels, size_t n_labels,
                      const td_prom_hist *h);
/* A family with one unlabelled sample. */
int td_prom_counter(td_prom_buf *b, const char *name, const char *help, double value);
int td_prom_gauge(td_prom_buf *b, const char *name, const char *help, double value);

/* ---- HTTP endpoint */

typedef struct td_prom_server td_prom_server;

/* Listens on addr, "HOST:PORT": an IPv4 literal, a bracketed IPv6 literal
 * ("[::1]:9100"; "[::]" also accepts IPv4) or "localhost" (127.0.0.1); port
 * 0 picks a free port. libmicrohttpd serves from its own thread:
 *   GET or HEAD /metrics  200, the text last published (empty before the
 *                         first), Content-Type TD_PROM_CONTENT_TYPE
 *   another path          404
 *   another method        405 with "Allow: GET, HEAD"
 * with a bounded number of connections and an idle timeout. TD_EINVAL for a
 * malformed address, TD_EIO when it cannot listen (the message says why),
 * TD_ENOMEM. */
int td_prom_server_start(const char *addr, td_prom_server **out, td_error *err);
/* The bound TCP port. */
int td_prom_server_port(const td_prom_server *s);
/* Replaces the served text with a copy of text[0..len). Safe from any
 * thread while the server runs. TD_ENOMEM leaves the old text served. */
int td_prom_server_publish(td_prom_server *s, const char *text, size_t len);
/* Closes the listener and every connection, joins the HTTP thread and
 * frees. NULL is allowed. */
void td_prom_server_stop(td_prom_server *s);

#endif
