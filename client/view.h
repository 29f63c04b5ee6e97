/* What trainctl shows a person: aligned tables and CSV, key: value records,
 * YAML conversion of proto3 JSON, and the live view of a job that is being
 * followed. Everything here writes to a FILE* or a caller's buffer and takes
 * the current time as an argument (local times also read the TZ), so that
 * the output can be tested without a daemon or a terminal. */
#ifndef TD_VIEW_H
#define TD_VIEW_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "traind/v1/trainer.pb-c.h"

/* ------------------------------------------------------------ small text */

/* Seconds as H:MM:SS or M:SS; "--:--" when negative, NaN or absurdly large. */

/* An age as kubectl prints it: "45s", "12m", "5h", "3d"; "-" when unknown. */
void td_view_age(double sec, char *buf, size_t cap);
/* A count with a k/M suffix once it is large: "950", "45.1k", "1.25M". */
void td_view_count(double v, char *buf, size_t cap);
/* Local time as "YYYY-MM-DD HH:MM:SS"; "-" for NULL or the zero time. */
void td_view_local_time(const Google__Protobuf__Timestamp *ts, char *buf, size_t cap);
/* RFC 3339 UTC as the proto3 JSON mapping writes it ("2024-05-01T12:00:00Z",
 * "2024-05-01T12:00:00.500Z"); "" for NULL. */
void td_view_utc_time(const Google__Protobuf__Timestamp *ts, char *buf, size_t cap);
/* The shortest text that reads back as exactly v ("0.1", not "0.100000001"). */
void td_view_float(float v, char *buf, size_t cap);
void td_view_double(double v, char *buf, size_t cap);
/* Seconds since the epoch, with nanoseconds; 0 for NULL. */
double td_view_ts_seconds(const Google__Protobuf__Timestamp *ts);

/* The name of a job state ("RUNNING") written into buf, which is returned;
 * "UNKNOWN(7)" for values the client does not know. */
const char *td_view_state_name(int state, char *buf, size_t cap);
/* Parses a state name, case-insensitively ("running", "RUNNING",
 * "canceled" too). Returns the enum value, or -1. */
int td_view_parse_state(const char *s);

/* "2/10 epochs". */
void td_view_job_progress(const Traind__V1__Job *job, char *buf, size_t cap);

/* Copies s into buf with every control byte (and DEL) replaced by '?', so
 * that names and messages from the daemon cannot move the cursor or recolour
 * the terminal. Truncates to fit. */
void td_view_sanitize(const char *s, char *buf, size_t cap);
/* Display columns of a UTF-8 string (one per code point). */
size_t td_view_width(const char *s);

/* A progress bar of `width` columns for frac in [0, 1]: Unicode blocks with
 * eighths when utf8, '#' and '.' otherwise. buf needs 3 * width + 1 bytes. */
void td_view_bar(double frac, int width, int utf8, char *buf, size_t cap);
/* One character per value, scaled between the smallest and largest finite
 * value (▁ to █, or "_.-:=+*#" without UTF-8); NaN and Inf show as '!'. A
 * flat series is drawn at mid height. buf needs 3 * n + 1 bytes. */
void td_view_sparkline(const float *v, size_t n, int utf8, char *buf, size_t cap);

/* ------------------------------------------------------------ tables */

/* Rows of cells printed as aligned columns (two spaces apart, header row in
 * capitals) or as CSV (RFC 4180 quoting, header row first). A "span" row is a
 * line of free text between the rows of a table (an epoch summary between
 * steps); CSV output leaves span rows out. Cells are copied and sanitized. */
typedef struct td_table_row {
  char **cells; /* ncols strings, or NULL for a span row */
  char *span;
} td_table_row;

typedef struct td_table {
  size_t ncols;
  char **header;
  char *align; /* ncols of 'l' or 'r' */
  td_table_row *rows;
  size_t nrows, cap;
} td_table;

/* align: a string of ncols 'l'/'r' letters, or NULL for all left. Returns 0
 * or -1 when out of memory. */
int td_table_init(td_table *t, size_t ncols, const char *const *header, const char *align);
int td_table_add(td_table *t, const char *const *cells);
int td_table_add_span(td_table *t, const char *text);
void td_table_print(const td_table *t, FILE *out);
void td_table_print_csv(const td_table *t, FILE *out);
void td_table_free(td_table *t);
/* One CSV field, quoted when it holds a comma, quote, CR or LF. */
void td_view_csv_field(FILE *out, const char *s);

/* ------------------------------------------------------------ records */

/* `trainctl list`: ID, NAME, OWNER, STATE, PROGRESS, LOSS, TEST ACC, AGE
 * (OWNER "-" for jobs kept from before owners were). */
int td_view_jobs_table(td_table *t, Traind__V1__Job *const *jobs, size_t n, double now);
/* `trainctl get`: one "key: value" line per fact, the error when there is one,
 * and a summary of the spec. */
void td_view_job_detail(FILE *out, const Traind__V1__Job *job, double now, int utf8);
/* One line about a checkpoint: file, step, size, reason, age, timings. */
void td_view_checkpoint(const Traind__V1__CheckpointInfo *c, double now, char *buf, size_t cap);
/* `trainctl devices`: ID, KIND, THREADS, JOB, DESCRIPTION. */
int td_view_devices_table(td_table *t, const Traind__V1__ListDevicesResponse *r);
/* `trainctl info`: key: value lines, with the caller as the daemon sees it
 * and its plaintext network addresses when it has any. */
void td_view_daemon_info(FILE *out, const Traind__V1__DaemonInfo *info, double now);

/* `trainctl metrics`: step rows in order of step, each epoch's summary as a
 * span row after the step that ended it. */
int td_view_metrics_table(td_table *t, Traind__V1__StepPoint *const *steps, size_t n_steps,
                          Traind__V1__EpochPoint *const *epochs, size_t n_epochs);
/* The CSV form: one header (kind,step,epoch,...) and one row per step point
 * and per epoch point, epochs after the step that ended them. With
 * `header` 0 only the rows are written (for streaming). */
void td_view_metrics_csv(FILE *out, Traind__V1__StepPoint *const *steps, size_t n_steps,
                         Traind__V1__EpochPoint *const *epochs, size_t n_epochs, int header);

/* The permanent line for a finished epoch:
 * "epoch 3/10  train loss 0.1234 acc 96.12%  test loss ... acc ...  12.3 s  45.1k ex/s";
 * a language model's (per_token) adds each loss in bits and counts tokens:
 * "train loss 1.3863 (2.0000 bits/token) acc ...  ...  12.3k tok/s". An
 * evaluation inside an epoch (mid_epoch) reads "step 500  train loss ...". */
void td_view_epoch_line(const Traind__V1__EpochPoint *e, uint32_t total_epochs, char *buf,
                        size_t cap);

/* The name of the member set in the first oneof of m (e.g. "dense" for a
 * Layer), or NULL when none is. Works for any message through its descriptor. */
const char *td_view_oneof_name(const ProtobufCMessage *m);

/* Proto3 JSON text (as pbjson_emit writes it) re-emitted as block YAML, with
 * strings quoted only where YAML would read them as something else. Returns a
 * malloc'd NUL-terminated string ending in a newline, or NULL when the text
 * is not valid JSON or memory runs out. */
char *td_view_json_to_yaml(const char *json);

/* ------------------------------------------------------------ following */

/* Loss history for the live curve: at most TD_FOLLOW_BUCKETS buckets, each
 * the mean loss over `span` consecutive step points. When the buckets fill,
 * neighbours merge pairwise and the span doubles, so the curve always covers
 * the whole run seen so far. It is drawn on a log scale when every value is
 * positive (a loss falls by orders of magnitude). */
#define TD_FOLLOW_BUCKETS 60

typedef struct td_follow {
  FILE *out;
  int tty, utf8, cols;
  double min_interval; /* seconds between redraws on a terminal (0.1) */
  double last_draw;    /* `now` of the last redraw; < 0 before the first */
  int lines;           /* lines of the live block on screen (0: none) */
  int cursor_hidden;

  /* The job as last reported. */
  char id[128], name[128];
  int state;
  int64_t step, total_steps;
  uint32_t epoch, total_epochs, steps_per_epoch;
  double started, finished; /* unix seconds, 0 when unknown */
  float loss, test_accuracy, test_loss;
  double examples_per_sec, step_ms, point_time;
  int have_step;
  /* A language model's figures: its losses are per token, shown also in
   * bits_unit ("bpc" for characters), its rate in tokens. */
  int per_token;
  double tokens_per_sec;
  const char *bits_unit;
  char error[512];
  int error_code;

  /* Epoch lines already printed (a stream may repeat points), and the
   * step of the last evaluation inside an epoch printed. */
  uint32_t epochs_printed;
  int64_t mid_printed;
  int64_t last_step_seen;
  float last_test_accuracy, last_test_loss;
  int have_test;

  double sum[TD_FOLLOW_BUCKETS];
  uint32_t count[TD_FOLLOW_BUCKETS];
  size_t nbuckets;
  uint32_t span;
} td_follow;

/* tty: redraw a live block in place; otherwise print only epoch lines and
 * the final line. cols: terminal width (lines are cut to cols - 1). */
void td_follow_init(td_follow *f, FILE *out, int tty, int utf8, int cols);
/* Takes in one WatchMetricsResponse received at monotonic time `now`
 * (seconds): prints new epoch lines and, on a terminal, redraws the live
 * block when min_interval has passed since the last redraw. */
void td_follow_feed(td_follow *f, const Traind__V1__WatchMetricsResponse *m, double now);
/* Removes the live block (if any) and shows the cursor again, without
 * printing anything else. */
void td_follow_clear(td_follow *f);
/* Removes the live block and prints the final line: the state, the time the
 * job ran, and for SUCCEEDED the final test accuracy; for FAILED and
 * CANCELLED the error. */
void td_follow_finish(td_follow *f);
/* Writes the live block's lines (without escape codes) into buf, separated
 * by '\n'; returns the number of lines. Exposed for tests. */
int td_follow_render(const td_follow *f, char *buf, size_t cap);
/* The loss curve's bucket means, oldest first; returns how many. */
size_t td_follow_curve(const td_follow *f, float *out, size_t cap);

#endif
