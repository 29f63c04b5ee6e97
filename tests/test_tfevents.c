/* TensorBoard event files: CRC-32C against published check values and a
 * bitwise reference; a file of scalars and texts read back record by record
 * (lengths, both masked CRCs), its Events decoded with protobuf-c and walked
 * field by field on the wire; a flipped byte or a cut file caught by the
 * CRCs; bad arguments refused; a full disk (RLIMIT_FSIZE) reported, with the
 * file left ending in a whole record.
 *
 * The binary also drives tests/e2e/tfevents_read.py:
 *   test_tfevents write DIR   writes one event file of known scalars and
 *                             texts under DIR and prints, as JSON, its path
 *                             and every value written (floats as their bits) */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "tensorboard/event.pb-c.h"
#include "tfevents.h"

/* ---- an independent CRC-32C (bit by bit) and the record format */

static uint32_t ref_crc32c(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
  }
  return ~c;
}

static uint32_t ref_mask(uint32_t c) {
  uint32_t rot = (c >> 15) | (c << 17);
  return rot + 0xa282ead8u;
}

static uint64_t get_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

static uint32_t get_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

typedef enum scan_status {
  SCAN_OK = 0,
  SCAN_TRUNCATED,
  SCAN_BAD_LENGTH_CRC,
  SCAN_BAD_DATA_CRC,
} scan_status;

typedef struct record {
  size_t off; /* of the data in the file */
  size_t len;
} record;

/* The records of an event file, checked; stops at the first bad one, whose
 * index is then n. */
typedef struct scan {
  record *recs;
  size_t n;
  scan_status status;
} scan;

static void scan_bytes(const uint8_t *b, size_t size, scan *s) {
  s->n = 0;
  s->status = SCAN_OK;
  size_t cap = 0, pos = 0;
  while (pos < size) {
    if (size - pos < 12) {
      s->status = SCAN_TRUNCATED;
      return;
    }
    uint64_t len = get_le64(b + pos);
    if (get_le32(b + pos + 8) != ref_mask(ref_crc32c(b + pos, 8))) {
      s->status = SCAN_BAD_LENGTH_CRC;
      return;
    }
    if (len > size - pos - 12 || size - pos - 12 - len < 4) {
      s->status = SCAN_TRUNCATED;
      return;
    }
    const uint8_t *data = b + pos + 12;
    if (get_le32(data + len) != ref_mask(ref_crc32c(data, (size_t)len))) {
      s->status = SCAN_BAD_DATA_CRC;
      return;
    }
    if (s->n == cap) {
      cap = cap ? 2 * cap : 64;
      s->recs = realloc(s->recs, cap * sizeof *s->recs);
      if (!s->recs)
        abort();
    }
    s->recs[s->n++] = (record){pos + 12, (size_t)len};
    pos += 12 + (size_t)len + 4;
  }
}

static uint8_t *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
  if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
    free(b);
    b = NULL;
  }
  fclose(f);
  *size = (size_t)n;
  return b;
}

/* ---- a minimal protobuf wire walker, independent of protobuf-c */

typedef struct wire {
  int type;         /* 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 */
  uint64_t u;       /* varint, fixed64 or fixed32 value */
  const uint8_t *p; /* length-delimited bytes */
  size_t len;
  int count; /* occurrences of the field */
} wire;

static int get_varint(const uint8_t *b, size_t n, size_t *pos, uint64_t *v) {
  *v = 0;
  for (int shift = 0; shift < 64 && *pos < n; shift += 7) {
    uint8_t c = b[(*pos)++];
    *v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80))
      return 0;
  }
  return -1;
}

/* The last occurrence of field in the message b[0, n) and how many there
 * are; -1 on malformed input. */
static int wire_field(const uint8_t *b, size_t n, uint32_t field, wire *out) {
  memset(out, 0, sizeof *out);
  size_t pos = 0;
  while (pos < n) {
    uint64_t key, v = 0;
    if (get_varint(b, n, &pos, &key))
      return -1;
    int type = (int)(key & 7);
    const uint8_t *p = NULL;
    size_t len = 0;
    switch (type) {
    case 0:
      if (get_varint(b, n, &pos, &v))
        return -1;
      break;
    case 1:
      if (n - pos < 8)
        return -1;
      v = get_le64(b + pos);
      pos += 8;
      break;
    case 2:
      if (get_varint(b, n, &pos, &v) || v > n - pos)
        return -1;
      p = b + pos;
      len = (size_t)v;
      pos += len;
      break;
    case 5:
      if (n - pos < 4)
        return -1;
      v = get_le32(b + pos);
      pos += 4;
      break;
    default:
      return -1;
    }
    if ((key >> 3) == field) {
      int count = out->count + 1;
      *out = (wire){type, v, p, len, count};
    }
  }
  return 0;
}

/* Follows a path of length-delimited fields from the message b[0, n) and
 * returns the last field of the path in *out (count 0 when absent). */
static int wire_path(const uint8_t *b, size_t n, const uint32_t *path, int depth, wire *out) {
  for (int i = 0; i < depth; i++) {
    if (wire_field(b, n, path[i], out) || out->count == 0)
      return -1;
    if (i + 1 < depth) {
      if (out->type != 2)
        return -1;
      b = out->p;
      n = out->len;
    }
  }
  return 0;
}

static uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static uint64_t double_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  return u;
}

/* ---- what a test writes */

typedef struct expect {
  int is_text;
  const char *tag;
  int64_t step;
  float value;
  const char *text;
  double wall_time;
} expect;

static int write_expected(td_tfevents *w, const expect *e, td_error *err) {
  return e->is_text ? td_tfevents_text(w, e->tag, e->step, e->text, e->wall_time, err)
                    : td_tfevents_scalar(w, e->tag, e->step, e->value, e->wall_time, err);
}

/* A known set of values: a loss curve, a learning rate every 10 steps, edge
 * values, Markdown, UTF-8, an empty text and one longer than 64 KiB (a
 * three-byte length varint inside), written into long_text. */
static size_t build_expected(expect *out, size_t max, char *long_text, size_t long_len) {
  size_t n = 0;
  double t0 = 1700000000.125;
  static const char *const md =
      "## Job mnist_mlp\n\n| key | value |\n|---|---|\n| batch | 128 |\n| lr | 1e-3 |\n";
  out[n++] = (expect){1, "config", 0, 0, md, t0};
  for (int s = 1; s <= 120 && n < max; s++) {
    out[n++] = (expect){0, "train/loss", s, 2.5f / (float)s, NULL, t0 + 0.25 * s};
    if (s % 10 == 0 && n < max)
      out[n++] = (expect){0, "train/lr", s, 1e-3f * (float)s / 120.0f, NULL, t0 + 0.25 * s};
  }
  static const float edges[] = {0.0f,    -0.0f,        -1.5f,    FLT_MAX,   -FLT_MAX,
                                FLT_MIN, FLT_TRUE_MIN, INFINITY, -INFINITY, NAN};
  for (size_t i = 0; i < sizeof edges / sizeof edges[0] && n < max; i++)
    out[n++] = (expect){0, "edge", 200 + (int64_t)i, edges[i], NULL, t0 + 100 + (double)i};
  out[n++] = (expect){0, "big_step", (int64_t)1 << 40, 42.0f, NULL, t0 + 200};
  static const char *const utf8 =
      "na\xc3\xafve \xe2\x80\x94 \xe2\x9c\x93 \"quoted\" back\\slash\ttab";
  out[n++] = (expect){1, "notes", 121, 0, utf8, t0 + 201};
  out[n++] = (expect){1, "notes", 122, 0, "", t0 + 202};
  for (size_t i = 0; i + 1 < long_len; i++)
    long_text[i] = (char)('a' + (char)(i % 26));
  long_text[long_len - 1] = '\0';
  out[n++] = (expect){1, "long", 123, 0, long_text, t0 + 203};
  return n;
}

enum { MAX_EXPECT = 256, LONG_TEXT = 70000 };

/* Checks one decoded record against what was written: through protobuf-c
 * and through the wire walker. */
static void check_event(const uint8_t *data, size_t len, const expect *e, size_t i) {
  Tensorboard__Event *ev = tensorboard__event__unpack(NULL, len, data);
  CHECK(ev != NULL, "record %zu does not decode as an Event", i);
  if (!ev)
    return;
  CHECK(double_bits(ev->wall_time) == double_bits(e->wall_time),
        "record %zu: wall_time %.17g, want %.17g", i, ev->wall_time, e->wall_time);
  CHECK(ev->step == e->step, "record %zu: step %" PRId64 ", want %" PRId64, i, ev->step, e->step);
  CHECK(ev->what_case == TENSORBOARD__EVENT__WHAT_SUMMARY, "record %zu: no summary", i);
  if (ev->what_case == TENSORBOARD__EVENT__WHAT_SUMMARY) {
    CHECK(ev->summary->n_value == 1, "record %zu: %zu values", i, ev->summary->n_value);
    Tensorboard__Summary__Value *v = ev->summary->value[0];
    CHECK(strcmp(v->tag, e->tag) == 0, "record %zu: tag %s, want %s", i, v->tag, e->tag);
    if (!e->is_text) {
      CHECK(v->value_case == TENSORBOARD__SUMMARY__VALUE__VALUE_SIMPLE_VALUE,
            "record %zu: not a simple_value", i);
      CHECK(float_bits(v->simple_value) == float_bits(e->value),
            "record %zu: value %.9g, want %.9g", i, (double)v->simple_value, (double)e->value);
      CHECK(v->metadata == NULL, "record %zu: a scalar with metadata", i);
    } else {
      CHECK(v->value_case == TENSORBOARD__SUMMARY__VALUE__VALUE_TENSOR, "record %zu: not a tensor",
            i);
      if (v->value_case == TENSORBOARD__SUMMARY__VALUE__VALUE_TENSOR) {
        Tensorboard__TensorProto *t = v->tensor;
        CHECK(t->dtype == TENSORBOARD__DATA_TYPE__DT_STRING, "record %zu: dtype %d", i,
              (int)t->dtype);
        CHECK(t->tensor_shape && t->tensor_shape->n_dim == 0, "record %zu: not rank 0", i);
        size_t want = strlen(e->text);
        CHECK(t->n_string_val == 1 && t->string_val[0].len == want &&
                  (want == 0 || memcmp(t->string_val[0].data, e->text, want) == 0),
              "record %zu: text differs", i);
      }
      CHECK(v->metadata && v->metadata->plugin_data &&
                strcmp(v->metadata->plugin_data->plugin_name, "text") == 0 &&
                v->metadata->plugin_data->content.len == 0,
            "record %zu: no text plugin metadata", i);
    }
  }
  tensorboard__event__free_unpacked(ev, NULL);

  /* The same on the wire, by TensorFlow's field numbers: Event.wall_time 1
   * (fixed64), step 2 (varint), summary 5; Summary.value 1; Value.tag 1,
   * simple_value 2 (fixed32), tensor 8, metadata 9. */
  wire w;
  CHECK(wire_field(data, len, 1, &w) == 0 && w.type == 1 && w.u == double_bits(e->wall_time),
        "record %zu: field 1 is not the wall time", i);
  if (e->step != 0)
    CHECK(wire_field(data, len, 2, &w) == 0 && w.type == 0 && w.u == (uint64_t)e->step,
          "record %zu: field 2 is not the step", i);
  uint32_t tag_path[] = {5, 1, 1};
  CHECK(wire_path(data, len, tag_path, 3, &w) == 0 && w.type == 2 && w.len == strlen(e->tag) &&
            memcmp(w.p, e->tag, w.len) == 0,
        "record %zu: summary/value/tag", i);
  if (!e->is_text) {
    uint32_t p[] = {5, 1, 2};
    CHECK(wire_path(data, len, p, 3, &w) == 0 && w.type == 5 &&
              (uint32_t)w.u == float_bits(e->value),
          "record %zu: summary/value/simple_value", i);
  } else {
    uint32_t plugin[] = {5, 1, 9, 1, 1}, dtype[] = {5, 1, 8, 1}, shape[] = {5, 1, 8, 2},
             sval[] = {5, 1, 8, 8};
    CHECK(wire_path(data, len, plugin, 5, &w) == 0 && w.len == 4 && memcmp(w.p, "text", 4) == 0,
          "record %zu: metadata/plugin_data/plugin_name", i);
    CHECK(wire_path(data, len, dtype, 4, &w) == 0 && w.type == 0 && w.u == 7,
          "record %zu: tensor/dtype is not DT_STRING (7)", i);
    CHECK(wire_path(data, len, shape, 4, &w) == 0 && w.type == 2 && w.len == 0,
          "record %zu: tensor/tensor_shape is not an empty (rank-0) shape", i);
    CHECK(wire_path(data, len, sval, 4, &w) == 0 && w.count == 1 && w.len == strlen(e->text) &&
              memcmp(w.p, e->text, w.len) == 0,
          "record %zu: tensor/string_val", i);
  }
}

/* ---- tests */

static void test_crc32c(void) {
  CHECK(td_crc32c(0, "123456789", 9) == 0xe3069283u, "crc32c(\"123456789\") = %08x",
        td_crc32c(0, "123456789", 9));
  CHECK(td_crc32c(0, "", 0) == 0, "crc32c of nothing");
  /* RFC 3720 (iSCSI), appendix B.4. */
  uint8_t buf[32];
  memset(buf, 0, sizeof buf);
  CHECK(td_crc32c(0, buf, 32) == 0x8a9136aau, "32 zeros: %08x", td_crc32c(0, buf, 32));
  memset(buf, 0xff, sizeof buf);
  CHECK(td_crc32c(0, buf, 32) == 0x62a8ab43u, "32 0xff: %08x", td_crc32c(0, buf, 32));
  for (int i = 0; i < 32; i++)
    buf[i] = (uint8_t)i;
  CHECK(td_crc32c(0, buf, 32) == 0x46dd794eu, "0..31: %08x", td_crc32c(0, buf, 32));
  for (int i = 0; i < 32; i++)
    buf[i] = (uint8_t)(31 - i);
  CHECK(td_crc32c(0, buf, 32) == 0x113fdb5cu, "31..0: %08x", td_crc32c(0, buf, 32));

  /* Against the bitwise reference on pseudo-random data, whole and in two
   * pieces. */
  uint8_t r[1000];
  uint32_t x = 12345;
  for (size_t i = 0; i < sizeof r; i++) {
    x = x * 1664525u + 1013904223u;
    r[i] = (uint8_t)(x >> 24);
  }
  int bad = 0;
  for (size_t n = 0; n <= sizeof r; n += 37) {
    uint32_t want = ref_crc32c(r, n);
    if (td_crc32c(0, r, n) != want ||
        td_crc32c(td_crc32c(0, r, n / 3), r + n / 3, n - n / 3) != want)
      bad++;
  }
  CHECK(bad == 0, "%d lengths differ from the bitwise CRC-32C", bad);

  CHECK(td_tfevents_mask_crc(0) == 0xa282ead8u, "mask(0)");
  CHECK(td_tfevents_mask_crc(0xe3069283u) == ref_mask(0xe3069283u), "mask(check value)");
  /* 0xe3069283 rotated right by 15 is 0x2507c60d; plus 0xa282ead8. */
  CHECK(td_tfevents_mask_crc(0xe3069283u) == 0xc78ab0e5u, "mask(0xe3069283) = %08x",
        td_tfevents_mask_crc(0xe3069283u));
}

/* Whether name is events.out.tfevents.<secs>.<host>.<pid>.<suffix> with secs
 * within [t0, t1]. */
static int name_ok(const char *path, const char *suffix, long t0, long t1) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  const char *prefix = "events.out.tfevents.";
  if (strncmp(base, prefix, strlen(prefix)) != 0)
    return 0;
  char *end;
  long secs = strtol(base + strlen(prefix), &end, 10);
  if (secs < t0 || secs > t1 || *end != '.')
    return 0;
  char host[256] = "";
  gethostname(host, sizeof host);
  host[sizeof host - 1] = '\0';
  char tail[512];
  snprintf(tail, sizeof tail, ".%s.%ld.%s", host, (long)getpid(), suffix);
  return strcmp(end, tail) == 0;
}

static void test_write_read(const char *tmp) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/logs/run1", tmp); /* two levels to create */
  static expect ex[MAX_EXPECT];
  static char long_text[LONG_TEXT];
  size_t n = build_expected(ex, MAX_EXPECT, long_text, sizeof long_text);

  long t0 = (long)time(NULL);
  td_tfevents *w = NULL;
  td_error err = {0};
  int rc = td_tfevents_open(dir, "job-7", &w, &err);
  CHECK(rc == TD_OK, "open: %s", err.msg);
  if (rc)
    return;
  const char *path = td_tfevents_path(w);
  CHECK(name_ok(path, "job-7", t0, (long)time(NULL)), "file name %s", path);
  char saved_path[4096];
  snprintf(saved_path, sizeof saved_path, "%s", path);

  /* The file_version record is on disk at once. */
  size_t size = 0;
  uint8_t *b = read_file(saved_path, &size);
  scan s = {0};
  scan_bytes(b, size, &s);
  CHECK(b && s.status == SCAN_OK && s.n == 1, "after open: %zu records, status %d", s.n,
        (int)s.status);
  free(b);

  size_t half = n / 2;
  for (size_t i = 0; i < half; i++)
    if (write_expected(w, &ex[i], &err) != TD_OK)
      CHECK(0, "write %zu: %s", i, err.msg);
  CHECK(td_tfevents_flush(w, &err) == TD_OK, "flush: %s", err.msg);
  /* After a flush a reader sees every record so far, while the writer is
   * open. */
  b = read_file(saved_path, &size);
  scan_bytes(b, size, &s);
  CHECK(b && s.status == SCAN_OK && s.n == 1 + half, "after flush: %zu records, want %zu", s.n,
        1 + half);
  free(b);
  for (size_t i = half; i < n; i++)
    if (write_expected(w, &ex[i], &err) != TD_OK)
      CHECK(0, "write %zu: %s", i, err.msg);
  CHECK(td_tfevents_close(w, &err) == TD_OK, "close: %s", err.msg);

  b = read_file(saved_path, &size);
  CHECK(b != NULL, "cannot read %s", saved_path);
  if (!b)
    return;
  scan_bytes(b, size, &s);
  CHECK(s.status == SCAN_OK, "scan status %d at record %zu", (int)s.status, s.n);
  CHECK(s.n == 1 + n, "%zu records, want %zu", s.n, 1 + n);
  size_t total = 0;
  for (size_t i = 0; i < s.n; i++)
    total += 12 + s.recs[i].len + 4;
  CHECK(total == size, "records cover %zu of %zu bytes", total, size);

  /* The first record: wall_time (field 1, fixed64) and file_version (field
   * 3) and nothing else: 9 + 2 + 13 bytes. */
  if (s.n > 0) {
    const uint8_t *d = b + s.recs[0].off;
    CHECK(s.recs[0].len == 24, "first record is %zu bytes", s.recs[0].len);
    CHECK(s.recs[0].len == 24 && d[0] == 0x09 && d[9] == 0x1a && d[10] == 13 &&
              memcmp(d + 11, "brain.Event:2", 13) == 0,
          "first record is not {wall_time, file_version: \"brain.Event:2\"}");
    double wt;
    memcpy(&wt, d + 1, 8);
    CHECK(wt >= (double)t0 && wt <= (double)time(NULL) + 1, "first wall_time %.3f", wt);
    Tensorboard__Event *ev = tensorboard__event__unpack(NULL, s.recs[0].len, d);
    CHECK(ev && ev->what_case == TENSORBOARD__EVENT__WHAT_FILE_VERSION &&
              strcmp(ev->file_version, TD_TFEVENTS_FILE_VERSION) == 0 && ev->step == 0,
          "first Event");
    if (ev)
      tensorboard__event__free_unpacked(ev, NULL);
  }
  for (size_t i = 1; i < s.n && i <= n; i++)
    check_event(b + s.recs[i].off, s.recs[i].len, &ex[i - 1], i);

  /* A scalar record is small: tag, float, step, time and framing. */
  if (s.n > 2)
    CHECK(s.recs[2].len < 48, "a scalar record of %zu bytes", s.recs[2].len);

  /* One flipped bit anywhere in a record is caught by its CRCs. */
  uint8_t *c = malloc(size);
  size_t k = 5 < s.n ? 5 : s.n - 1;
  size_t start = s.recs[k].off - 12, end = s.recs[k].off + s.recs[k].len + 4;
  int missed = 0;
  for (size_t pos = start; pos < end; pos++) {
    memcpy(c, b, size);
    c[pos] ^= 0x10;
    scan_bytes(c, size, &s);
    scan_status want = pos < start + 12 ? SCAN_BAD_LENGTH_CRC : SCAN_BAD_DATA_CRC;
    /* A changed length byte may also point past the end of the file, but
     * the length's CRC is checked first. */
    if (s.status != want || s.n != k)
      missed++;
  }
  CHECK(missed == 0, "%d of %zu flipped bytes in record %zu not caught", missed, end - start, k);
  /* A file cut inside its last record. */
  scan_bytes(b, size - 3, &s);
  CHECK(s.status == SCAN_TRUNCATED && s.n == n, "cut file: status %d, %zu records", (int)s.status,
        s.n);
  free(c);
  free(s.recs);
  free(b);
}

static void test_bad_arguments(const char *tmp) {
  td_tfevents *w = (td_tfevents *)&w; /* must be reset to NULL on failure */
  td_error err = {0};
  CHECK(td_tfevents_open("", NULL, &w, &err) == TD_EINVAL && w == NULL, "empty dir");
  CHECK(td_tfevents_open(tmp, "../escape", &w, &err) == TD_EINVAL, "suffix with a slash");
  CHECK_STR_CONTAINS(err.msg, "suffix");
  CHECK(td_tfevents_open(tmp, "a b", &w, &err) == TD_EINVAL, "suffix with a space");
  char file[512], under[600];
  snprintf(file, sizeof file, "%s/plain-file", tmp);
  FILE *f = fopen(file, "w");
  if (f)
    fclose(f);
  snprintf(under, sizeof under, "%s/sub", file);
  CHECK(td_tfevents_open(under, NULL, &w, &err) == TD_EIO && w == NULL,
        "a directory under a file: %s", err.msg);
  CHECK_STR_CONTAINS(err.msg, "plain-file");
  CHECK(td_tfevents_close(NULL, &err) == TD_OK, "close(NULL)");

  char dir[512];
  snprintf(dir, sizeof dir, "%s/args", tmp);
  int rc = td_tfevents_open(dir, NULL, &w, &err);
  CHECK(rc == TD_OK, "open: %s", err.msg);
  if (rc)
    return;
  CHECK(strstr(td_tfevents_path(w), "events.out.tfevents.") &&
            td_tfevents_path(w)[strlen(td_tfevents_path(w)) - 1] != '.',
        "no suffix: %s", td_tfevents_path(w));
  CHECK(td_tfevents_scalar(w, NULL, 1, 1.0f, 0, &err) == TD_EINVAL, "NULL tag");
  CHECK(td_tfevents_scalar(w, "", 1, 1.0f, 0, &err) == TD_EINVAL, "empty tag");
  CHECK(td_tfevents_text(w, "t", 1, NULL, 0, &err) == TD_EINVAL, "NULL text");
  /* Refused arguments leave the writer working. */
  CHECK(td_tfevents_scalar(w, "ok", 1, 1.0f, 0, &err) == TD_OK, "after refusals: %s", err.msg);

  /* A second writer in the same directory in the same second gets its own
   * file. */
  td_tfevents *w2 = NULL;
  rc = td_tfevents_open(dir, NULL, &w2, &err);
  CHECK(rc == TD_OK, "second open: %s", err.msg);
  if (rc == TD_OK) {
    CHECK(strcmp(td_tfevents_path(w), td_tfevents_path(w2)) != 0, "both wrote %s",
          td_tfevents_path(w));
    CHECK(td_tfevents_close(w2, &err) == TD_OK, "close: %s", err.msg);
  }
  CHECK(td_tfevents_close(w, &err) == TD_OK, "close: %s", err.msg);
}

/* A full disk, as a file-size limit: the write that crosses it fails with a
 * message, every later call returns that error without writing, and the file
 * keeps only whole records. */
static void test_disk_full(const char *tmp) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/full", tmp);
  td_tfevents *w = NULL;
  td_error err = {0};
  int rc = td_tfevents_open(dir, "x", &w, &err);
  CHECK(rc == TD_OK, "open: %s", err.msg);
  if (rc)
    return;
  char path[4096];
  snprintf(path, sizeof path, "%s", td_tfevents_path(w));

  enum { LIMIT = 2000 };
  struct rlimit old, lim;
  getrlimit(RLIMIT_FSIZE, &old);
  lim = old;
  lim.rlim_cur = LIMIT;
  signal(SIGXFSZ, SIG_IGN);
  CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit: %s", strerror(errno));
  int failed_at = -1;
  for (int i = 0; i < 1000 && failed_at < 0; i++) {
    rc = td_tfevents_scalar(w, "loss", i, 1.0f / (float)(i + 1), td_wall_sec(), &err);
    if (rc == TD_OK)
      rc = td_tfevents_flush(w, &err);
    if (rc != TD_OK)
      failed_at = i;
  }
  CHECK(failed_at > 0, "no write failed under a %d-byte limit", LIMIT);
  CHECK(rc == TD_EIO, "error %d (%s)", rc, td_errname(rc));
  CHECK_STR_CONTAINS(err.msg, "File too large");
  CHECK_STR_CONTAINS(err.msg, path);
  td_error err2 = {0};
  CHECK(td_tfevents_scalar(w, "loss", 9999, 1.0f, 0, &err2) == TD_EIO, "write after a failure");
  CHECK_STR_CONTAINS(err2.msg, "earlier write failed");
  CHECK(td_tfevents_text(w, "t", 9999, "x", 0, &err2) == TD_EIO, "text after a failure");
  CHECK(td_tfevents_flush(w, &err2) == TD_EIO, "flush after a failure");
  CHECK(td_tfevents_close(w, &err2) == TD_EIO, "close after a failure");
  CHECK_STR_CONTAINS(err2.msg, "File too large");
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, SIG_DFL);

  size_t size = 0;
  uint8_t *b = read_file(path, &size);
  scan s = {0};
  scan_bytes(b, size, &s);
  CHECK(b && s.status == SCAN_OK && s.n == (size_t)failed_at + 1 && size <= LIMIT,
        "after the failure: status %d, %zu records (want %d), %zu bytes", (int)s.status, s.n,
        failed_at + 1, size);
  free(s.recs);
  free(b);
}

/* ---- the driver for tests/e2e/tfevents_read.py */

static void json_string(const char *s) {
  putchar('"');
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      printf("\\%c", *p);
    else if (*p < 0x20)
      printf("\\u%04x", *p);
    else
      putchar(*p);
  }
  putchar('"');
}

static int tool_write(const char *dir) {
  static expect ex[MAX_EXPECT];
  static char long_text[LONG_TEXT];
  size_t n = build_expected(ex, MAX_EXPECT, long_text, sizeof long_text);
  td_tfevents *w = NULL;
  td_error err = {0};
  if (td_tfevents_open(dir, "e2e", &w, &err) != TD_OK) {
    fprintf(stderr, "test_tfevents: %s\n", err.msg);
    return 1;
  }
  printf("{\"path\": ");
  json_string(td_tfevents_path(w));
  printf(", \"file_version\": \"%s\", \"events\": [\n", TD_TFEVENTS_FILE_VERSION);
  for (size_t i = 0; i < n; i++) {
    if (write_expected(w, &ex[i], &err) != TD_OK) {
      fprintf(stderr, "test_tfevents: %s\n", err.msg);
      td_tfevents_close(w, NULL);
      return 1;
    }
    printf("  {\"tag\": ");
    json_string(ex[i].tag);
    printf(", \"step\": %" PRId64 ", \"wall_time\": %.17g, ", ex[i].step, ex[i].wall_time);
    if (ex[i].is_text) {
      printf("\"text\": ");
      json_string(ex[i].text);
    } else {
      printf("\"bits\": %" PRIu32, float_bits(ex[i].value));
    }
    printf("}%s\n", i + 1 < n ? "," : "");
  }
  printf("]}\n");
  if (td_tfevents_close(w, &err) != TD_OK) {
    fprintf(stderr, "test_tfevents: %s\n", err.msg);
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "write") == 0)
    return tool_write(argv[2]);
  if (argc != 1) {
    fprintf(stderr, "usage: test_tfevents [write DIR]\n");
    return 2;
  }
  char tmp[] = "/tmp/td_tfevents_XXXXXX";
  if (!mkdtemp(tmp)) {
    perror("mkdtemp");
    return 1;
  }
  test_crc32c();
  test_write_read(tmp);
  test_bad_arguments(tmp);
  test_disk_full(tmp);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmp);
  return td_check_exit();
}
