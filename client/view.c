#include "view.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <yaml.h>

#include "fmt.h"
#include "traind/v1/job.pb-c.h"

/* ------------------------------------------------------------ small text */

void td_view_age(double sec, char *buf, size_t cap) {
  if (!(sec >= 0) || sec > 1e10) {
    snprintf(buf, cap, "-");
    return;
  }
  long s = (long)sec;
  if (s < 120)
    snprintf(buf, cap, "%lds", s);
  else if (s < 2 * 3600)
    snprintf(buf, cap, "%ldm", s / 60);
  else if (s < 2 * 86400)
    snprintf(buf, cap, "%ldh", s / 3600);
  else
    snprintf(buf, cap, "%ldd", s / 86400);
}

void td_view_count(double v, char *buf, size_t cap) {
  if (!isfinite(v))
    snprintf(buf, cap, "-");
  else if (fabs(v) < 9999.5)
    snprintf(buf, cap, "%.0f", v);
  else if (fabs(v) < 999950.0)
    snprintf(buf, cap, "%.1fk", v / 1e3);
  else
    snprintf(buf, cap, "%.2fM", v / 1e6);
}

double td_view_ts_seconds(const Google__Protobuf__Timestamp *ts) {
  return ts ? (double)ts->seconds + (double)ts->nanos / 1e9 : 0.0;
}

void td_view_local_time(const Google__Protobuf__Timestamp *ts, char *buf, size_t cap) {
  struct tm tm;
  time_t t = ts ? (time_t)ts->seconds : 0;
  if (!ts || (ts->seconds == 0 && ts->nanos == 0) || !localtime_r(&t, &tm) ||
      strftime(buf, cap, "%Y-%m-%d %H:%M:%S", &tm) == 0)
    snprintf(buf, cap, "-");
}

void td_view_utc_time(const Google__Protobuf__Timestamp *ts, char *buf, size_t cap) {
  struct tm tm;
  char frac[16] = "";
  time_t t = ts ? (time_t)ts->seconds : 0;
  if (!ts || ts->nanos < 0 || ts->nanos > 999999999 || !gmtime_r(&t, &tm) ||
      strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
    snprintf(buf, cap, "%s", "");
    return;
  }
  /* As the proto3 JSON mapping writes it: 0, 3, 6 or 9 fractional digits. */
  if (ts->nanos % 1000000 == 0 && ts->nanos)
    snprintf(frac, sizeof frac, ".%03d", (int)(ts->nanos / 1000000));
  else if (ts->nanos % 1000 == 0 && ts->nanos)
    snprintf(frac, sizeof frac, ".%06d", (int)(ts->nanos / 1000));
  else if (ts->nanos)
    snprintf(frac, sizeof frac, ".%09d", (int)ts->nanos);
  size_t len = strlen(buf);
  snprintf(buf + len, cap - len, "%sZ", frac);
}

void td_view_float(float v, char *buf, size_t cap) {
  if (!buf || !cap)
    return;
  for (int p = 6; p <= 9; p++) {
    snprintf(buf, cap, "%.*g", p, (double)v);
    if (!isfinite(v) || strtof(buf, NULL) == v)
      return;
  }
}

void td_view_double(double v, char *buf, size_t cap) {
  if (!buf || !cap)
    return;
  for (int p = 15; p <= 17; p++) {
    snprintf(buf, cap, "%.*g", p, v);
    if (!isfinite(v) || strtod(buf, NULL) == v)
      return;
  }
}

const char *td_view_state_name(int state, char *buf, size_t cap) {
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value(&traind__v1__job_state__descriptor, state);
  if (v && state != TRAIND__V1__JOB_STATE__JOB_STATE_UNSPECIFIED)
    snprintf(buf, cap, "%s", v->name);
  else
    snprintf(buf, cap, "UNKNOWN(%d)", state);
  return buf;
}

int td_view_parse_state(const char *s) {
  if (strcasecmp(s, "canceled") == 0)
    return TRAIND__V1__JOB_STATE__CANCELLED;
  const ProtobufCEnumDescriptor *d = &traind__v1__job_state__descriptor;
  for (unsigned i = 0; i < d->n_values; i++)
    if (d->values[i].value != TRAIND__V1__JOB_STATE__JOB_STATE_UNSPECIFIED &&
        strcasecmp(s, d->values[i].name) == 0)
      return d->values[i].value;
  return -1;
}

void td_view_job_progress(const Traind__V1__Job *job, char *buf, size_t cap) {
  const Traind__V1__Progress *p = job->progress;
  uint32_t done = p ? p->epoch : 0, total = p ? p->total_epochs : 0;
  if (total == 0 && job->spec && job->spec->training)
    total = job->spec->training->epochs;
  snprintf(buf, cap, "%" PRIu32 "/%" PRIu32 " epochs", done, total);
}

void td_view_sanitize(const char *s, char *buf, size_t cap) {
  size_t i = 0;
  if (cap == 0)
    return;
  for (; s && *s && i + 1 < cap; s++) {
    unsigned char ch = (unsigned char)*s;
    buf[i++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
  }
  /* Do not leave half of a multibyte character at the end. */
  if (s && *s) {
    size_t j = i;
    while (j > 0 && ((unsigned char)buf[j - 1] & 0xC0) == 0x80)
      j--;
    if (j > 0 && ((unsigned char)buf[j - 1] & 0xC0) == 0xC0)
      i = j - 1;
  }
  buf[i] = '\0';
}

size_t td_view_width(const char *s) {
  size_t w = 0;
  for (; *s; s++)
    if (((unsigned char)*s & 0xC0) != 0x80)
      w++;
  return w;
}

/* Cuts s in place to at most `cols` display columns. */
static void cut_columns(char *s, size_t cols) {
  size_t w = 0;
  for (char *p = s; *p; p++) {
    if (((unsigned char)*p & 0xC0) != 0x80) {
      if (w == cols) {
        *p = '\0';
        return;
      }
      w++;
    }
  }
}

/* Appends formatted text to buf (of capacity cap) at *len, truncating. */
static void appendf(char *buf, size_t cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void appendf(char *buf, size_t cap, size_t *len, const char *fmt, ...) {
  if (*len + 1 >= cap)
    return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
  va_end(ap);
  if (n > 0)
    *len = (size_t)n < cap - *len ? *len + (size_t)n : cap - 1;
}

void td_view_bar(double frac, int width, int utf8, char *buf, size_t cap) {
  /* U+2588 full block, then the left 7/8 ... 1/8 blocks U+2589 ... U+258F. */
  static const char *const eighths[8] = {"",       "\u258F", "\u258E", "\u258D",
                                         "\u258C", "\u258B", "\u258A", "\u2589"};
  size_t len = 0;
  if (cap)
    buf[0] = '\0';
  if (!(frac >= 0))
    frac = 0;
  if (frac > 1)
    frac = 1;
  if (width < 1)
    return;
  if (!utf8) {
    int fill = (int)(frac * width);
    for (int i = 0; i < width; i++)
      appendf(buf, cap, &len, "%c", i < fill ? '#' : '.');
    return;
  }
  int units = (int)(frac * width * 8), full = units / 8, part = units % 8;
  for (int i = 0; i < width; i++) {
    if (i < full)
      appendf(buf, cap, &len, "\u2588");
    else if (i == full && part)
      appendf(buf, cap, &len, "%s", eighths[part]);
    else
      appendf(buf, cap, &len, " ");
  }
}

void td_view_sparkline(const float *v, size_t n, int utf8, char *buf, size_t cap) {
  static const char *const blocks[8] = {"\u2581", "\u2582", "\u2583", "\u2584",
                                        "\u2585", "\u2586", "\u2587", "\u2588"};
  static const char ascii[8] = {'_', '.', '-', ':', '=', '+', '*', '#'};
  size_t len = 0;
  if (cap)
    buf[0] = '\0';
  float lo = INFINITY, hi = -INFINITY;
  for (size_t i = 0; i < n; i++)
    if (isfinite(v[i])) {
      lo = v[i] < lo ? v[i] : lo;
      hi = v[i] > hi ? v[i] : hi;
    }
  for (size_t i = 0; i < n; i++) {
    int level;
    if (!isfinite(v[i])) {
      appendf(buf, cap, &len, "!");
      continue;
    }
    if (hi - lo <= 0)
      level = 3;
    else {
      level = (int)((v[i] - lo) / (hi - lo) * 8.0f);
      level = level > 7 ? 7 : level < 0 ? 0 : level;
    }
    if (utf8)
      appendf(buf, cap, &len, "%s", blocks[level]);
    else
      appendf(buf, cap, &len, "%c", ascii[level]);
  }
}

/* ------------------------------------------------------------ tables */

static char *dup_clean(const char *s) {
  size_t n = strlen(s ? s : "") + 1;
  char *d = malloc(n);
  if (d)
    td_view_sanitize(s ? s : "", d, n);
  return d;
}

int td_table_init(td_table *t, size_t ncols, const char *const *header, const char *align) {
  memset(t, 0, sizeof *t);
  t->ncols = ncols;
  t->header = calloc(ncols, sizeof *t->header);
  t->align = calloc(ncols + 1, 1);
  if (!t->header || !t->align) {
    td_table_free(t);
    return -1;
  }
  for (size_t i = 0; i < ncols; i++) {
    t->align[i] = (align && align[i] == 'r') ? 'r' : 'l';
    if (!(t->header[i] = dup_clean(header[i]))) {
      td_table_free(t);
      return -1;
    }
  }
  return 0;
}

static td_table_row *table_grow(td_table *t) {
  if (t->nrows == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 16;
    td_table_row *r = realloc(t->rows, cap * sizeof *r);
    if (!r)
      return NULL;
    t->rows = r;
    t->cap = cap;
  }
  td_table_row *row = &t->rows[t->nrows];
  memset(row, 0, sizeof *row);
  return row;
}

int td_table_add(td_table *t, const char *const *cells) {
  td_table_row *row = table_grow(t);
  if (!row || !(row->cells = calloc(t->ncols, sizeof *row->cells)))
    return -1;
  t->nrows++;
  for (size_t i = 0; i < t->ncols; i++)
    if (!(row->cells[i] = dup_clean(cells[i])))
      return -1;
  return 0;
}

int td_table_add_span(td_table *t, const char *text) {
  td_table_row *row = table_grow(t);
  if (!row || !(row->span = dup_clean(text)))
    return -1;
  t->nrows++;
  return 0;
}

void td_table_print(const td_table *t, FILE *out) {
  size_t *w = calloc(t->ncols ? t->ncols : 1, sizeof *w);
  if (!w)
    return;
  for (size_t c = 0; c < t->ncols; c++)
    w[c] = td_view_width(t->header[c]);
  for (size_t r = 0; r < t->nrows; r++)
    for (size_t c = 0; t->rows[r].cells && c < t->ncols; c++) {
      size_t cw = td_view_width(t->rows[r].cells[c] ? t->rows[r].cells[c] : "");
      w[c] = cw > w[c] ? cw : w[c];
    }
  for (size_t r = 0; r <= t->nrows; r++) {
    char *const *cells = r == 0 ? t->header : t->rows[r - 1].cells;
    if (!cells) {
      fprintf(out, "%s\n", t->rows[r - 1].span);
      continue;
    }
    for (size_t c = 0; c < t->ncols; c++) {
      const char *s = cells[c] ? cells[c] : "";
      size_t pad = w[c] - td_view_width(s);
      int last = c + 1 == t->ncols;
      if (t->align[c] == 'r')
        fprintf(out, "%*s%s", (int)pad, "", s);
      else
        fprintf(out, "%s%*s", s, last ? 0 : (int)pad, "");
      fputs(last ? "\n" : "  ", out);
    }
  }
  free(w);
}

void td_view_csv_field(FILE *out, const char *s) {
  if (!s)
    s = "";
  if (!strpbrk(s, ",\"\r\n")) {
    fputs(s, out);
    return;
  }
  fputc('"', out);
  for (; *s; s++) {
    if (*s == '"')
      fputc('"', out);
    fputc(*s, out);
  }
  fputc('"', out);
}

void td_table_print_csv(const td_table *t, FILE *out) {
  for (size_t r = 0; r <= t->nrows; r++) {
    char *const *cells = r == 0 ? t->header : t->rows[r - 1].cells;
    if (!cells)
      continue;
    for (size_t c = 0; c < t->ncols; c++) {
      if (c)
        fputc(',', out);
      td_view_csv_field(out, cells[c]);
    }
    fputc('\n', out);
  }
}

void td_table_free(td_table *t) {
  for (size_t r = 0; r < t->nrows; r++) {
    if (t->rows[r].cells)
      for (size_t c = 0; c < t->ncols; c++)
        free(t->rows[r].cells[c]);
    free(t->rows[r].cells);
    free(t->rows[r].span);
  }
  free(t->rows);
  if (t->header)
    for (size_t c = 0; c < t->ncols; c++)
      free(t->header[c]);
  free(t->header);
  free(t->align);
  memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------ records */

/* Whether the job has reported a test evaluation yet. */
static int has_test(const Traind__V1__LatestMetrics *m) {
  return m && (m->test_accuracy != 0.0f || m->test_loss != 0.0f);
}

/* A per-token loss (nats) in bits. */
static double bits_of(float nats) { return (double)nats / 0.69314718055994530942; }

/* The unit of a language model's loss in bits: per character for a text
 * dataset's characters, per byte for its bytes, else per token. */
static const char *bits_unit(const Traind__V1__JobSpec *s) {
  const Traind__V1__Dataset *d = s ? s->dataset : NULL;
  if (d && d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT && d->text)
    return d->text->tokens && strcmp(d->text->tokens, "byte") == 0 ? "bits/byte" : "bpc";
  return "bits/token";
}

int td_view_jobs_table(td_table *t, Traind__V1__Job *const *jobs, size_t n, double now) {
  static const char *const header[] = {"ID",       "NAME", "OWNER",    "STATE",
                                       "PROGRESS", "LOSS", "TEST ACC", "AGE"};
  if (td_table_init(t, 8, header, "lllllrrr"))
    return -1;
  for (size_t i = 0; i < n; i++) {
    const Traind__V1__Job *j = jobs[i];
    char state[32], progress[64], loss[32] = "-", acc[32] = "-", age[32] = "-";
    td_view_state_name(j->state, state, sizeof state);
    td_view_job_progress(j, progress, sizeof progress);
    if (j->metrics && j->progress && j->progress->step > 0)
      snprintf(loss, sizeof loss, "%.4f", j->metrics->loss);
    if (has_test(j->metrics))
      snprintf(acc, sizeof acc, "%.2f%%", j->metrics->test_accuracy * 100.0);
    if (j->created)
      td_view_age(now - td_view_ts_seconds(j->created), age, sizeof age);
    /* Jobs from before owners were kept have none. */
    const char *owner = j->owner && *j->owner ? j->owner : "-";
    const char *row[] = {j->id, j->name, owner, state, progress, loss, acc, age};
    if (td_table_add(t, row))
      return -1;
  }
  return 0;
}

const char *td_view_oneof_name(const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
      continue;
    uint32_t which = *(const uint32_t *)((const char *)m + f->quantifier_offset);
    if (which == f->id)
      return f->name;
  }
  return NULL;
}

/* "784 → dense(256) relu dense(128) relu dense(10), SOFTMAX_CROSS_ENTROPY". */
static void model_summary(const Traind__V1__Model *m, int utf8, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < m->n_input_shape; i++)
    appendf(buf, cap, &len, "%s%" PRIu32, i ? "x" : "", m->input_shape[i]);
  appendf(buf, cap, &len, "%s", utf8 ? " \u2192" : " ->");
  for (size_t i = 0; i < m->n_layers; i++) {
    const Traind__V1__Layer *l = m->layers[i];
    const char *kind = td_view_oneof_name(&l->base);
    if (l->kind_case == TRAIND__V1__LAYER__KIND_DENSE && l->dense)
      appendf(buf, cap, &len, " dense(%" PRIu32 ")", l->dense->features);
    else if (l->kind_case == TRAIND__V1__LAYER__KIND_DROPOUT && l->dropout)
      appendf(buf, cap, &len, " dropout(%g)", l->dropout->rate);
    else
      appendf(buf, cap, &len, " %s", kind ? kind : "?");
  }
  const ProtobufCEnumValue *loss =
      protobuf_c_enum_descriptor_get_value(&traind__v1__loss__descriptor, m->loss);
  if (loss && m->loss)
    appendf(buf, cap, &len, ", %s", loss->name);
}

static void spec_lines(FILE *out, const Traind__V1__JobSpec *s, int utf8) {
  char buf[1024];
  if (s->model) {
    model_summary(s->model, utf8, buf, sizeof buf);
    fprintf(out, "model:         %s\n", buf);
  }
  if (s->optimizer && s->optimizer->n_chain) {
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < s->optimizer->n_chain; i++) {
      const char *k = td_view_oneof_name(&s->optimizer->chain[i]->base);
      appendf(buf, sizeof buf, &len, "%s%s", i ? (utf8 ? " \u2192 " : " -> ") : "", k ? k : "?");
    }
    fprintf(out, "optimizer:     %s\n", buf);
  }
  if (s->dataset) {
    const Traind__V1__Dataset *d = s->dataset;
    char clean[512] = "";
    if (d->source_case == TRAIND__V1__DATASET__SOURCE_IDX && d->idx)
      td_view_sanitize(d->idx->dir, clean, sizeof clean);
    else if (d->source_case == TRAIND__V1__DATASET__SOURCE_HDF5 && d->hdf5)
      td_view_sanitize(d->hdf5->train_file, clean, sizeof clean);
    else if (d->source_case == TRAIND__V1__DATASET__SOURCE_TEXT && d->text)
      td_view_sanitize(d->text->file, clean, sizeof clean);
    else if (d->source_case == TRAIND__V1__DATASET__SOURCE_HDF5_TOKENS && d->hdf5_tokens)
      td_view_sanitize(d->hdf5_tokens->file, clean, sizeof clean);
    const char *k = td_view_oneof_name(&d->base);
    fprintf(out, "dataset:       %s %s\n", k ? k : "?", clean);
  }
  if (s->training) {
    const Traind__V1__Training *t = s->training;
    fprintf(out, "training:      %" PRIu32 " epochs, batch %" PRIu32 ", seed %" PRIu64 "\n",
            t->epochs, t->batch_size, t->seed);
  }
}

void td_view_checkpoint(const Traind__V1__CheckpointInfo *c, double now, char *buf, size_t cap) {
  char file[128], reason[32], size[32], age[64];
  td_view_sanitize(c->file, file, sizeof file);
  td_view_sanitize(c->reason, reason, sizeof reason);
  td_view_count((double)c->bytes, size, sizeof size);
  td_view_age(now - td_view_ts_seconds(c->time), age, sizeof age);
  snprintf(buf, cap,
           "%s, step %" PRId64 " (%" PRIu32 " epoch%s done), %sB, %s, %s ago; written in "
           "%.2f s, training paused %.1f ms",
           file, c->step, c->epochs_completed, c->epochs_completed == 1 ? "" : "s", size, reason,
           age, c->write_sec, c->stall_ms);
}

/* The job's checkpoints and the restarts that resumed from them. */
static void checkpoint_lines(FILE *out, const Traind__V1__Job *job, double now) {
  char buf[1024];
  if (job->last_checkpoint) {
    td_view_checkpoint(job->last_checkpoint, now, buf, sizeof buf);
    fprintf(out, "checkpoint:    %s\n", buf);
    fprintf(out, "checkpoints:   %" PRIu32 " written", job->checkpoints_written);
    if (job->checkpoint_dir && *job->checkpoint_dir) {
      td_view_sanitize(job->checkpoint_dir, buf, sizeof buf);
      fprintf(out, ", in %s", buf);
    }
    fputc('\n', out);
  }
  if (job->checkpoint_error && *job->checkpoint_error) {
    td_view_sanitize(job->checkpoint_error, buf, sizeof buf);
    fprintf(out, "checkpoint error: %s\n", buf);
  }
  for (size_t i = 0; i < job->n_resumes; i++) {
    const Traind__V1__Resume *r = job->resumes[i];
    char when[64], file[128];
    td_view_local_time(r->time, when, sizeof when);
    td_view_sanitize(r->checkpoint, file, sizeof file);
    if (*file)
      fprintf(out, "%s %s, from %s at step %" PRId64 "\n",
              i ? "               " : "resumed:      ", when, file, r->step);
    else
      fprintf(out, "%s %s, from the start (no checkpoint)\n",
              i ? "               " : "resumed:      ", when);
    if (r->note && *r->note) {
      td_view_sanitize(r->note, buf, sizeof buf);
      fprintf(out, "                 (%s)\n", buf);
    }
  }
}

void td_view_job_detail(FILE *out, const Traind__V1__Job *job, double now, int utf8) {
  char buf[1024], a[64], b[64];
  td_view_sanitize(job->id, buf, sizeof buf);
  fprintf(out, "id:            %s\n", buf);
  td_view_sanitize(job->name, buf, sizeof buf);
  fprintf(out, "name:          %s\n", buf);
  td_view_sanitize(job->owner && *job->owner ? job->owner : "- (submitted before owners were kept)",
                   buf, sizeof buf);
  fprintf(out, "owner:         %s\n", buf);
  fprintf(out, "state:         %s\n", td_view_state_name(job->state, a, sizeof a));
  if (job->error && *job->error) {
    td_view_sanitize(job->error, buf, sizeof buf);
    if (job->error_code)
      fprintf(out, "error:         %s (%s)\n", buf, td_grpc_code_name(job->error_code));
    else
      fprintf(out, "error:         %s\n", buf);
  }
  const Traind__V1__Progress *p = job->progress;
  td_view_job_progress(job, a, sizeof a);
  if (p && p->total_steps > 0)
    fprintf(out, "progress:      %s, step %" PRId64 "/%" PRId64 " (%.0f%%)\n", a, p->step,
            p->total_steps, 100.0 * (double)p->step / (double)p->total_steps);
  else
    fprintf(out, "progress:      %s\n", a);
  const Traind__V1__LatestMetrics *m = job->metrics;
  /* A language model's losses are per token: each also in bits. */
  const int per_token = m && m->per_token;
  const char *unit = bits_unit(job->spec);
  if (m && p && p->step > 0) {
    if (per_token)
      fprintf(out, "loss:          %.4f (last step; %.4f %s), learning rate %.3g, grad norm %.3g\n",
              m->loss, bits_of(m->loss), unit, m->learning_rate, m->grad_norm);
    else
      fprintf(out, "loss:          %.4f (last step), learning rate %.3g, grad norm %.3g\n", m->loss,
              m->learning_rate, m->grad_norm);
    if (p->epoch > 0 && per_token)
      fprintf(out, "train:         loss %.4f (%.4f %s), accuracy %.2f%%\n", m->train_loss,
              m->train_bits_per_token, unit, m->train_accuracy * 100.0);
    else if (p->epoch > 0)
      fprintf(out, "train:         loss %.4f, accuracy %.2f%%\n", m->train_loss,
              m->train_accuracy * 100.0);
    td_view_count(m->examples_per_sec, a, sizeof a);
    if (per_token) {
      td_view_count(m->tokens_per_sec, b, sizeof b);
      fprintf(out, "throughput:    %s tokens/s (%s examples/s)\n", b, a);
    } else {
      fprintf(out, "throughput:    %s examples/s\n", a);
    }
  }
  if (m && m->dp)
    fprintf(out, "privacy:       epsilon %.4g at delta %.3g (DP-SGD, spent so far)\n", m->epsilon,
            m->delta);
  if (has_test(m) && per_token)
    fprintf(out, "test:          loss %.4f (%.4f %s), accuracy %.2f%%\n", m->test_loss,
            m->test_bits_per_token, unit, m->test_accuracy * 100.0);
  else if (has_test(m))
    fprintf(out, "test:          loss %.4f, accuracy %.2f%%\n", m->test_loss,
            m->test_accuracy * 100.0);
  if (job->n_devices) {
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < job->n_devices; i++) {
      char d[128];
      td_view_sanitize(job->devices[i], d, sizeof d);
      appendf(buf, sizeof buf, &len, "%s%s", i ? ", " : "", d);
    }
    fprintf(out, "devices:       %s\n", buf);
  }
  td_view_local_time(job->created, a, sizeof a);
  if (job->created) {
    td_view_age(now - td_view_ts_seconds(job->created), b, sizeof b);
    fprintf(out, "created:       %s (%s ago)\n", a, b);
  }
  if (job->started) {
    td_view_local_time(job->started, a, sizeof a);
    fprintf(out, "started:       %s\n", a);
  }
  if (job->finished) {
    td_view_local_time(job->finished, a, sizeof a);
    if (job->started) {
      td_format_duration(td_view_ts_seconds(job->finished) - td_view_ts_seconds(job->started), b,
                         sizeof b);
      fprintf(out, "finished:      %s (ran %s)\n", a, b);
    } else {
      fprintf(out, "finished:      %s\n", a);
    }
  } else if (job->started && job->state == TRAIND__V1__JOB_STATE__RUNNING) {
    td_format_duration(now - td_view_ts_seconds(job->started), b, sizeof b);
    fprintf(out, "running for:   %s\n", b);
  }
  if (job->compile_ms > 0 || job->compile_cache_hit)
    fprintf(out, "compile:       %.2f ms (%s)\n", job->compile_ms,
            job->compile_cache_hit ? "cache hit" : "compiled");
  checkpoint_lines(out, job, now);
  if (job->spec)
    spec_lines(out, job->spec, utf8);
}

int td_view_devices_table(td_table *t, const Traind__V1__ListDevicesResponse *r) {
  static const char *const header[] = {"ID", "KIND", "THREADS", "JOB", "DESCRIPTION"};
  if (td_table_init(t, 5, header, "llrll"))
    return -1;
  for (size_t i = 0; i < r->n_devices; i++) {
    const Traind__V1__Device *d = r->devices[i];
    char threads[32] = "-";
    if (d->threads)
      snprintf(threads, sizeof threads, "%" PRIu32, d->threads);
    const char *row[] = {d->id, d->kind, threads, (d->job_id && *d->job_id) ? d->job_id : "-",
                         d->description};
    if (td_table_add(t, row))
      return -1;
  }
  return 0;
}

static void string_list(FILE *out, const char *key, char **v, size_t n) {
  fprintf(out, "%s", key);
  if (n == 0)
    fputs("-", out);
  for (size_t i = 0; i < n; i++) {
    char clean[512];
    td_view_sanitize(v[i], clean, sizeof clean);
    fprintf(out, "%s%s", i ? ", " : "", clean);
  }
  fputc('\n', out);
}

void td_view_daemon_info(FILE *out, const Traind__V1__DaemonInfo *info, double now) {
  char a[64], b[64];
  td_view_sanitize(info->version, a, sizeof a);
  fprintf(out, "version:        %s\n", a);
  td_view_local_time(info->started, a, sizeof a);
  td_format_duration(info->uptime_sec > 0
                         ? info->uptime_sec
                         : (info->started ? now - td_view_ts_seconds(info->started) : -1),
                     b, sizeof b);
  fprintf(out, "started:        %s (up %s)\n", a, b);
  string_list(out, "listen:         ", info->listen, info->n_listen);
  if (info->n_insecure_listen)
    string_list(out, "insecure:       ", info->insecure_listen, info->n_insecure_listen);
  if (info->caller && *info->caller) {
    char who[512], role[64];
    td_view_sanitize(info->caller, who, sizeof who);
    td_view_sanitize(info->caller_role && *info->caller_role ? info->caller_role : "-", role,
                     sizeof role);
    fprintf(out, "you are:        %s (role %s)\n", who, role);
  }
  string_list(out, "data dirs:      ", info->data_dirs, info->n_data_dirs);
  fprintf(out,
          "jobs:           %" PRIu32 " running, %" PRIu32 " queued, %" PRIu32
          " in total; at most %" PRIu32 " at once\n",
          info->jobs_running, info->jobs_queued, info->jobs_total, info->max_concurrent_jobs);
  fprintf(out, "compile cache:  %" PRIu64 " entries, %" PRIu64 " hits, %" PRIu64 " misses\n",
          info->compile_cache_entries, info->compile_cache_hits, info->compile_cache_misses);
}

/* An epoch point's line (td_view_epoch_line): an evaluation inside an
 * epoch as "step N/total_steps" (total_steps 0: unknown), a language
 * model's losses also in bits (unit NULL: "bits/token"). */
static void point_line(const Traind__V1__EpochPoint *e, uint32_t total_epochs, int64_t total_steps,
                       const char *unit, char *buf, size_t cap) {
  size_t len = 0;
  char rate[32];
  buf[0] = '\0';
  unit = unit ? unit : "bits/token";
  if (e->mid_epoch && total_steps > 0)
    appendf(buf, cap, &len, "step %" PRId64 "/%" PRId64, e->step, total_steps);
  else if (e->mid_epoch)
    appendf(buf, cap, &len, "step %" PRId64, e->step);
  else if (total_epochs)
    appendf(buf, cap, &len, "epoch %" PRIu32 "/%" PRIu32, e->epoch, total_epochs);
  else
    appendf(buf, cap, &len, "epoch %" PRIu32, e->epoch);
  appendf(buf, cap, &len, "  train loss %.4f", e->train_loss);
  if (e->per_token)
    appendf(buf, cap, &len, " (%.4f %s)", e->train_bits_per_token, unit);
  appendf(buf, cap, &len, " acc %.2f%%", e->train_accuracy * 100.0);
  if (e->evaluated) {
    appendf(buf, cap, &len, "  test loss %.4f", e->test_loss);
    if (e->per_token)
      appendf(buf, cap, &len, " (%.4f %s)", e->test_bits_per_token, unit);
    appendf(buf, cap, &len, " acc %.2f%%", e->test_accuracy * 100.0);
  }
  if (e->dp)
    appendf(buf, cap, &len, "  eps %.4g", e->epsilon);
  appendf(buf, cap, &len, "  %.2f s", e->epoch_sec);
  if (e->per_token && e->tokens_per_sec > 0) {
    td_view_count(e->tokens_per_sec, rate, sizeof rate);
    appendf(buf, cap, &len, "  %s tok/s", rate);
  } else if (e->examples_per_sec > 0) {
    td_view_count(e->examples_per_sec, rate, sizeof rate);
    appendf(buf, cap, &len, "  %s ex/s", rate);
  }
}

void td_view_epoch_line(const Traind__V1__EpochPoint *e, uint32_t total_epochs, char *buf,
                        size_t cap) {
  point_line(e, total_epochs, 0, NULL, buf, cap);
}

/* Visits step and epoch points in order of step, an epoch after the step
 * that ended it. Inputs are each already in order of step. */
typedef struct point_visit {
  void (*step)(void *arg, const Traind__V1__StepPoint *s);
  void (*epoch)(void *arg, const Traind__V1__EpochPoint *e);
  void *arg;
} point_visit;

static void merge_points(Traind__V1__StepPoint *const *steps, size_t n_steps,
                         Traind__V1__EpochPoint *const *epochs, size_t n_epochs,
                         const point_visit *v) {
  size_t i = 0, j = 0;
  while (i < n_steps || j < n_epochs) {
    if (j >= n_epochs || (i < n_steps && steps[i]->step <= epochs[j]->step))
      v->step(v->arg, steps[i++]);
    else
      v->epoch(v->arg, epochs[j++]);
  }
}

typedef struct metrics_table_ctx {
  td_table *t;
  int rc;
} metrics_table_ctx;

static void table_step(void *arg, const Traind__V1__StepPoint *s) {
  metrics_table_ctx *c = arg;
  char step[32], epoch[32], loss[32], gn[32], lr[32], rate[32], ms[32];
  snprintf(step, sizeof step, "%" PRId64, s->step);
  snprintf(epoch, sizeof epoch, "%" PRIu32, s->epoch);
  snprintf(loss, sizeof loss, "%.4f", s->loss);
  snprintf(gn, sizeof gn, "%.4g", s->grad_norm);
  snprintf(lr, sizeof lr, "%.3g", s->learning_rate);
  td_view_count(s->examples_per_sec, rate, sizeof rate);
  snprintf(ms, sizeof ms, "%.3f", s->step_ms);
  const char *row[] = {step, epoch, loss, gn, lr, rate, ms};
  if (td_table_add(c->t, row))
    c->rc = -1;
}

static void table_epoch(void *arg, const Traind__V1__EpochPoint *e) {
  metrics_table_ctx *c = arg;
  char line[512], span[600];
  td_view_epoch_line(e, 0, line, sizeof line);
  if (e->mid_epoch) /* the line starts with its step */
    snprintf(span, sizeof span, "-- %s", line);
  else
    snprintf(span, sizeof span, "-- %s (step %" PRId64 ")", line, e->step);
  if (td_table_add_span(c->t, span))
    c->rc = -1;
}

int td_view_metrics_table(td_table *t, Traind__V1__StepPoint *const *steps, size_t n_steps,
                          Traind__V1__EpochPoint *const *epochs, size_t n_epochs) {
  static const char *const header[] = {"STEP", "EPOCH", "LOSS",   "GRAD NORM",
                                       "LR",   "EX/S",  "STEP MS"};
  if (td_table_init(t, 7, header, "rrrrrrr"))
    return -1;
  metrics_table_ctx c = {t, 0};
  point_visit v = {table_step, table_epoch, &c};
  merge_points(steps, n_steps, epochs, n_epochs, &v);
  return c.rc;
}

static void csv_step(void *arg, const Traind__V1__StepPoint *s) {
  char time[64], loss[32], gn[32], lr[32], rate[32], ms[32];
  td_view_utc_time(s->time, time, sizeof time);
  td_view_float(s->loss, loss, sizeof loss);
  td_view_float(s->grad_norm, gn, sizeof gn);
  td_view_float(s->learning_rate, lr, sizeof lr);
  td_view_double(s->examples_per_sec, rate, sizeof rate);
  td_view_double(s->step_ms, ms, sizeof ms);
  fprintf(arg, "step,%" PRId64 ",%" PRIu32 ",%s,%s,%s,%s,%s,,,,,,%s\n", s->step, s->epoch, loss, gn,
          lr, rate, ms, time);
}

static void csv_epoch(void *arg, const Traind__V1__EpochPoint *e) {
  char time[64], rate[32], tl[32], ta[32], vl[32] = "", va[32] = "", sec[32];
  td_view_utc_time(e->time, time, sizeof time);
  td_view_double(e->examples_per_sec, rate, sizeof rate);
  td_view_float(e->train_loss, tl, sizeof tl);
  td_view_float(e->train_accuracy, ta, sizeof ta);
  if (e->evaluated) {
    td_view_float(e->test_loss, vl, sizeof vl);
    td_view_float(e->test_accuracy, va, sizeof va);
  }
  td_view_double(e->epoch_sec, sec, sizeof sec);
  fprintf(arg, "epoch,%" PRId64 ",%" PRIu32 ",,,,%s,,%s,%s,%s,%s,%s,%s\n", e->step, e->epoch, rate,
          tl, ta, vl, va, sec, time);
}

void td_view_metrics_csv(FILE *out, Traind__V1__StepPoint *const *steps, size_t n_steps,
                         Traind__V1__EpochPoint *const *epochs, size_t n_epochs, int header) {
  if (header)
    fputs("kind,step,epoch,loss,grad_norm,learning_rate,examples_per_sec,step_ms,"
          "train_loss,train_accuracy,test_loss,test_accuracy,epoch_sec,time\n",
          out);
  point_visit v = {csv_step, csv_epoch, out};
  merge_points(steps, n_steps, epochs, n_epochs, &v);
}

/* ------------------------------------------------------------ YAML */

typedef struct text_buf {
  char *p;
  size_t len, cap;
  int oom;
} text_buf;

static int buf_write(void *data, unsigned char *bytes, size_t size) {
  text_buf *b = data;
  if (b->len + size + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + size + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return 0;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, bytes, size);
  b->len += size;
  b->p[b->len] = '\0';
  return 1;
}

/* Whether a string can be written as a plain YAML scalar and read back as
 * the same string: it starts with a letter, '_' or '/', holds only
 * identifier-like characters and single spaces inside, and is none of the
 * words YAML 1.1 reads as booleans or null. */
static int yaml_plain_safe(const char *s, size_t n) {
  static const char *const words[] = {"y", "yes", "n", "no", "true", "false", "on", "off", "null"};
  if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == '/'))
    return 0;
  if (s[n - 1] == ' ')
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!(isalnum(ch) || ch == '_' || ch == '.' || ch == '/' || ch == '-' || ch == '+' ||
          (ch == ' ' && s[i + 1] != ' ')))
      return 0;
  }
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (strlen(words[i]) == n && strncasecmp(s, words[i], n) == 0)
      return 0;
  return 1;
}

/* Deeper than any message pbjson emits. */
#define YAML_DEPTH_MAX 128

char *td_view_json_to_yaml(const char *json) {
  yaml_parser_t parser;
  yaml_emitter_t emitter;
  text_buf out = {0};
  int ok = 1;
  /* For each open mapping, whether the next node is a key. */
  unsigned char expect_key[YAML_DEPTH_MAX];
  int is_map[YAML_DEPTH_MAX], depth = 0;

  if (!yaml_parser_initialize(&parser))
    return NULL;
  if (!yaml_emitter_initialize(&emitter)) {
    yaml_parser_delete(&parser);
    return NULL;
  }
  yaml_parser_set_input_string(&parser, (const unsigned char *)json, strlen(json));
  yaml_emitter_set_output(&emitter, buf_write, &out);
  yaml_emitter_set_unicode(&emitter, 1);
  yaml_emitter_set_width(&emitter, -1);
  yaml_emitter_set_indent(&emitter, 2);

  for (int done = 0; ok && !done;) {
    yaml_event_t in, ev;
    if (!yaml_parser_parse(&parser, &in)) {
      ok = 0;
      break;
    }
    int emit = 1, is_key = 0;
    if (in.type == YAML_SCALAR_EVENT || in.type == YAML_MAPPING_START_EVENT ||
        in.type == YAML_SEQUENCE_START_EVENT) {
      if (depth > 0 && is_map[depth - 1]) {
        is_key = expect_key[depth - 1];
        expect_key[depth - 1] = !expect_key[depth - 1];
      }
    }
    switch (in.type) {
    case YAML_STREAM_START_EVENT:
      ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
      break;
    case YAML_STREAM_END_EVENT:
      ok = yaml_stream_end_event_initialize(&ev);
      done = 1;
      break;
    case YAML_DOCUMENT_START_EVENT:
      ok = yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
      break;
    case YAML_DOCUMENT_END_EVENT:
      ok = yaml_document_end_event_initialize(&ev, 1);
      break;
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
      if (depth == YAML_DEPTH_MAX) {
        ok = 0;
        break;
      }
      is_map[depth] = in.type == YAML_MAPPING_START_EVENT;
      expect_key[depth] = 1;
      depth++;
      if (in.type == YAML_MAPPING_START_EVENT)
        ok = yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
      else
        ok = yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
      break;
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
      depth--;
      ok = in.type == YAML_MAPPING_END_EVENT ? yaml_mapping_end_event_initialize(&ev)
                                             : yaml_sequence_end_event_initialize(&ev);
      break;
    case YAML_SCALAR_EVENT: {
      const char *v = (const char *)in.data.scalar.value;
      size_t n = in.data.scalar.length;
      int plain =
          in.data.scalar.style == YAML_PLAIN_SCALAR_STYLE || is_key || yaml_plain_safe(v, n);
      ok = yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)in.data.scalar.value,
                                        (int)n, plain, !plain, YAML_ANY_SCALAR_STYLE);
      break;
    }
    default:
      emit = 0;
      break;
    }
    yaml_event_delete(&in);
    if (ok && emit && !yaml_emitter_emit(&emitter, &ev))
      ok = 0;
  }
  yaml_emitter_delete(&emitter);
  yaml_parser_delete(&parser);
  if (!ok || out.oom) {
    free(out.p);
    return NULL;
  }
  return out.p;
}

/* ------------------------------------------------------------ following */

void td_follow_init(td_follow *f, FILE *out, int tty, int utf8, int cols) {
  memset(f, 0, sizeof *f);
  f->out = out;
  f->tty = tty;
  f->utf8 = utf8;
  f->cols = cols > 20 ? cols : 80;
  f->min_interval = 0.1;
  f->last_draw = -1.0;
  f->span = 1;
  f->last_step_seen = -1;
}

static void curve_add(td_follow *f, float loss) {
  if (f->nbuckets == TD_FOLLOW_BUCKETS && f->count[f->nbuckets - 1] >= f->span) {
    /* Full: merge neighbours pairwise and double the span. */
    for (size_t i = 0; i < TD_FOLLOW_BUCKETS / 2; i++) {
      f->sum[i] = f->sum[2 * i] + f->sum[2 * i + 1];
      f->count[i] = f->count[2 * i] + f->count[2 * i + 1];
    }
    f->nbuckets = TD_FOLLOW_BUCKETS / 2;
    f->span *= 2;
  }
  if (f->nbuckets == 0 || f->count[f->nbuckets - 1] >= f->span) {
    f->sum[f->nbuckets] = 0;
    f->count[f->nbuckets] = 0;
    f->nbuckets++;
  }
  f->sum[f->nbuckets - 1] += loss;
  f->count[f->nbuckets - 1]++;
}

size_t td_follow_curve(const td_follow *f, float *out, size_t cap) {
  size_t n = f->nbuckets < cap ? f->nbuckets : cap;
  for (size_t i = 0; i < n; i++)
    out[i] = (float)(f->sum[i] / (double)f->count[i]);
  return n;
}

static void follow_job(td_follow *f, const Traind__V1__Job *j) {
  td_view_sanitize(j->id, f->id, sizeof f->id);
  td_view_sanitize(j->name, f->name, sizeof f->name);
  f->state = j->state;
  if (j->progress) {
    if (j->progress->step > f->step)
      f->step = j->progress->step;
    f->total_steps = j->progress->total_steps;
    f->total_epochs = j->progress->total_epochs;
    f->steps_per_epoch = j->progress->steps_per_epoch;
    if (j->progress->epoch > f->epoch && !f->have_step)
      f->epoch = j->progress->epoch;
  }
  f->started = td_view_ts_seconds(j->started);
  f->finished = td_view_ts_seconds(j->finished);
  if (j->metrics) {
    if (!f->have_step)
      f->loss = j->metrics->loss;
    f->test_accuracy = j->metrics->test_accuracy;
    f->test_loss = j->metrics->test_loss;
    if (j->metrics->per_token)
      f->per_token = 1;
  }
  if (j->spec)
    f->bits_unit = bits_unit(j->spec);
  td_view_sanitize(j->error, f->error, sizeof f->error);
  f->error_code = j->error_code;
}

static void follow_step(td_follow *f, const Traind__V1__StepPoint *s) {
  if (s->step <= f->last_step_seen)
    return;
  f->last_step_seen = s->step;
  f->have_step = 1;
  if (s->step > f->step)
    f->step = s->step;
  f->epoch = s->epoch;
  f->loss = s->loss;
  f->examples_per_sec = s->examples_per_sec;
  f->tokens_per_sec = s->tokens_per_sec;
  if (s->tokens_per_sec > 0)
    f->per_token = 1;
  f->step_ms = s->step_ms;
  f->point_time = td_view_ts_seconds(s->time);
  curve_add(f, s->loss);
}

/* Steps per second for the ETA: the whole run so far by the daemon's clock
 * (compiling and evaluation included), else the last step's own time. */
static double step_rate(const td_follow *f) {
  if (f->started > 0 && f->point_time > f->started && f->step > 0)
    return (double)f->step / (f->point_time - f->started);
  if (f->step_ms > 0)
    return 1e3 / f->step_ms;
  return 0;
}

int td_follow_render(const td_follow *f, char *buf, size_t cap) {
  size_t len = 0;
  char state[32], name[160] = "";
  buf[0] = '\0';
  if (f->name[0])
    snprintf(name, sizeof name, " (%s)", f->name);
  td_view_state_name(f->state, state, sizeof state);
  if (f->state == TRAIND__V1__JOB_STATE__QUEUED) {
    appendf(buf, cap, &len, "job %s%s QUEUED, waiting for a device", f->id, name);
    return 1;
  }
  if (!f->have_step && f->step == 0) {
    appendf(buf, cap, &len, "job %s%s %s, waiting for the first step", f->id, name, state);
    return 1;
  }
  /* The figures, in the order shown; on a narrow terminal the least
   * important go first (keep[] ranks them), and the bar shrinks to 10. */
  double frac = f->total_steps > 0 ? (double)f->step / (double)f->total_steps : 0.0;
  char fig[5][64], rate[32], eta[32];
  static const int keep[5] = {4, 1, 2, 0, 3}; /* step, epoch, loss, ex/s, ETA */
  td_view_count(f->examples_per_sec, rate, sizeof rate);
  double r = step_rate(f);
  td_format_duration(r > 0 && f->total_steps > 0 ? (double)(f->total_steps - f->step) / r : -1, eta,
                     sizeof eta);
  snprintf(fig[0], sizeof fig[0], "step %" PRId64 "/%" PRId64, f->step, f->total_steps);
  fig[1][0] = '\0';
  if (f->total_epochs)
    snprintf(fig[1], sizeof fig[1], "epoch %" PRIu32 "/%" PRIu32, f->epoch, f->total_epochs);
  if (f->per_token) {
    snprintf(fig[2], sizeof fig[2], "loss %.4f (%.3f %s)", f->loss, bits_of(f->loss),
             f->bits_unit ? f->bits_unit : "bits/token");
    td_view_count(f->tokens_per_sec, rate, sizeof rate);
    snprintf(fig[3], sizeof fig[3], "%s tok/s", rate);
  } else {
    snprintf(fig[2], sizeof fig[2], "loss %.4f", f->loss);
    snprintf(fig[3], sizeof fig[3], "%s ex/s", rate);
  }
  snprintf(fig[4], sizeof fig[4], "ETA %s", eta);
  int budget = f->cols - 1, shown[5], figs_w = 0;
  for (int i = 0; i < 5; i++) {
    shown[i] = fig[i][0] != '\0';
    figs_w += shown[i] ? 2 + (int)strlen(fig[i]) : 0;
  }
  /* The bar, its two edges, a space and "100.0%" take bar_w + 9 columns. */
  for (int drop = 0; drop < 5 && 10 + 9 + figs_w > budget; drop++)
    for (int i = 0; i < 5; i++)
      if (keep[i] == drop && shown[i]) {
        shown[i] = 0;
        figs_w -= 2 + (int)strlen(fig[i]);
      }
  int bar_w = budget - 9 - figs_w;
  bar_w = bar_w < 10 ? 10 : bar_w > 30 ? 30 : bar_w;
  char bar[128];
  td_view_bar(frac, bar_w, f->utf8, bar, sizeof bar);
  const char *edge = f->utf8 ? "\u2502" : "|";
  appendf(buf, cap, &len, "%s%s%s %5.1f%%", edge, bar, edge, frac * 100.0);
  for (int i = 0; i < 5; i++)
    if (shown[i])
      appendf(buf, cap, &len, "  %s", fig[i]);
  if (f->nbuckets == 0)
    return 1;

  float curve[TD_FOLLOW_BUCKETS];
  size_t n = td_follow_curve(f, curve, TD_FOLLOW_BUCKETS);
  /* As many of the newest buckets as fit beside the labels. */
  size_t room = f->cols > 40 ? (size_t)f->cols - 40 : 1;
  size_t first = n > room ? n - room : 0;
  float lo = INFINITY, hi = -INFINITY;
  for (size_t i = first; i < n; i++)
    if (isfinite(curve[i])) {
      lo = curve[i] < lo ? curve[i] : lo;
      hi = curve[i] > hi ? curve[i] : hi;
    }
  /* A loss falls by orders of magnitude, so the curve is drawn on a log
   * scale whenever every value is positive. */
  int log_scale = lo > 0 && lo < hi;
  if (log_scale)
    for (size_t i = first; i < n; i++)
      curve[i] = logf(curve[i]);
  char spark[3 * TD_FOLLOW_BUCKETS + 1];
  td_view_sparkline(curve + first, n - first, f->utf8, spark, sizeof spark);
  appendf(buf, cap, &len, "\nloss%s %s", log_scale ? " (log)" : "", spark);
  if (lo <= hi)
    appendf(buf, cap, &len, "  min %.4f  max %.4f", lo, hi);
  return 2;
}

/* Erases the live block, leaving the cursor at the start of its first line
 * (the cursor is at the end of the block's last line). */
static void erase_block(td_follow *f) {
  if (!f->tty || f->lines == 0)
    return;
  fputs("\r\033[K", f->out);
  for (int i = 1; i < f->lines; i++)
    fputs("\033[1A\r\033[K", f->out);
  f->lines = 0;
}

void td_follow_clear(td_follow *f) {
  if (!f->tty)
    return;
  erase_block(f);
  if (f->cursor_hidden) {
    fputs("\033[?25h", f->out);
    f->cursor_hidden = 0;
  }
  fflush(f->out);
}

static void follow_draw(td_follow *f) {
  char text[2048];
  int n = td_follow_render(f, text, sizeof text);
  /* The cursor would blink across the bar; it is hidden while the block is
   * on screen. */
  if (!f->cursor_hidden) {
    fputs("\033[?25l", f->out);
    f->cursor_hidden = 1;
  }
  erase_block(f);
  char *line = text;
  for (int i = 0; i < n; i++) {
    char *nl = strchr(line, '\n');
    if (nl)
      *nl = '\0';
    cut_columns(line, (size_t)f->cols - 1);
    fprintf(f->out, "%s%s", i ? "\n" : "", line);
    line = nl ? nl + 1 : line + strlen(line);
  }
  f->lines = n;
  fflush(f->out);
}

void td_follow_feed(td_follow *f, const Traind__V1__WatchMetricsResponse *m, double now) {
  int old_state = f->state, printed = 0;
  if (m->job)
    follow_job(f, m->job);
  /* Epoch lines go out in order of step, after the steps before them. */
  size_t j = 0;
  for (size_t i = 0; i <= m->n_steps; i++) {
    int64_t upto = i < m->n_steps ? m->steps[i]->step : INT64_MAX;
    for (; j < m->n_epochs && m->epochs[j]->step < upto; j++) {
      const Traind__V1__EpochPoint *e = m->epochs[j];
      /* An evaluation inside an epoch prints as a step, before the
       * epoch's own line. */
      if (e->epoch <= f->epochs_printed || (e->mid_epoch && e->step <= f->mid_printed))
        continue;
      if (e->per_token)
        f->per_token = 1;
      char line[512];
      point_line(e, f->total_epochs, f->total_steps, f->bits_unit, line, sizeof line);
      erase_block(f);
      fprintf(f->out, "%s\n", line);
      if (e->mid_epoch)
        f->mid_printed = e->step;
      else
        f->epochs_printed = e->epoch;
      if (e->evaluated) {
        f->have_test = 1;
        f->last_test_accuracy = e->test_accuracy;
        f->last_test_loss = e->test_loss;
      }
      printed = 1;
    }
    if (i < m->n_steps)
      follow_step(f, m->steps[i]);
  }
  if (printed)
    fflush(f->out);
  if (f->tty && (printed || f->state != old_state || f->last_draw < 0 ||
                 now - f->last_draw >= f->min_interval)) {
    follow_draw(f);
    f->last_draw = now;
  }
}

void td_follow_finish(td_follow *f) {
  char line[1024], state[32], name[160] = "", dur[32] = "", at[96] = "";
  size_t len = 0;
  td_follow_clear(f);
  if (f->name[0])
    snprintf(name, sizeof name, " (%s)", f->name);
  td_view_state_name(f->state, state, sizeof state);
  if (f->started > 0 && f->finished >= f->started)
    td_format_duration(f->finished - f->started, dur, sizeof dur);
  if (f->total_steps > 0)
    snprintf(at, sizeof at, "step %" PRId64 "/%" PRId64, f->step, f->total_steps);
  else
    snprintf(at, sizeof at, "step %" PRId64, f->step);
  line[0] = '\0';
  appendf(line, sizeof line, &len, "job %s%s %s", f->id, name, state);
  switch (f->state) {
  case TRAIND__V1__JOB_STATE__SUCCEEDED:
    if (dur[0])
      appendf(line, sizeof line, &len, " in %s", dur);
    /* A language model's result is its loss in bits. */
    if (f->per_token && (f->test_loss != 0.0f || f->have_test))
      appendf(line, sizeof line, &len, "  test %.4f %s (loss %.4f, accuracy %.2f%%)",
              bits_of(f->test_loss != 0.0f ? f->test_loss : f->last_test_loss),
              f->bits_unit ? f->bits_unit : "bits/token",
              f->test_loss != 0.0f ? f->test_loss : f->last_test_loss,
              (f->test_loss != 0.0f ? f->test_accuracy : f->last_test_accuracy) * 100.0);
    else if (f->per_token)
      appendf(line, sizeof line, &len, "  final loss %.4f (%.4f %s)", f->loss, bits_of(f->loss),
              f->bits_unit ? f->bits_unit : "bits/token");
    else if (f->test_accuracy != 0.0f || f->test_loss != 0.0f)
      appendf(line, sizeof line, &len, "  test accuracy %.2f%% (loss %.4f)",
              f->test_accuracy * 100.0, f->test_loss);
    else if (f->have_test)
      appendf(line, sizeof line, &len, "  test accuracy %.2f%% (loss %.4f)",
              f->last_test_accuracy * 100.0, f->last_test_loss);
    else
      appendf(line, sizeof line, &len, "  final loss %.4f", f->loss);
    break;
  case TRAIND__V1__JOB_STATE__FAILED:
  case TRAIND__V1__JOB_STATE__CANCELLED:
    appendf(line, sizeof line, &len, " at %s", at);
    if (dur[0])
      appendf(line, sizeof line, &len, " after %s", dur);
    if (f->error[0])
      appendf(line, sizeof line, &len, ": %s", f->error);
    break;
  default:
    appendf(line, sizeof line, &len, " at %s", at);
    break;
  }
  fprintf(f->out, "%s\n", line);
  fflush(f->out);
}
