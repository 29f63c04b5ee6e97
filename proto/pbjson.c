/* The proto3 JSON mapping over protobuf-c descriptors: YAML/JSON text in
 * (through libyaml's document tree), JSON text out, and table-driven checks.
 * Nothing here knows any particular message; every decision is made from the
 * field descriptors. */
#include "pbjson.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "fmt.h"

/* The storage of a field inside a message struct. */
#define PB_AT(m, off) ((void *)((char *)(m) + (off)))
#define PB_CAT(m, off) ((const void *)((const char *)(m) + (off)))

/* google.protobuf.Timestamp's range, 0001-01-01T00:00:00Z to
 * 9999-12-31T23:59:59.999999999Z, and Duration's, about +-10000 years. */
#define TS_MIN_SECONDS INT64_C(-62135596800)
#define TS_MAX_SECONDS INT64_C(253402300799)
#define DUR_MAX_SECONDS INT64_C(315576000000)

#define PATH_CAP 512

/* ------------------------------------------------------------------ shared */

typedef enum { WKT_NONE, WKT_WRAPPER, WKT_TIMESTAMP, WKT_DURATION } wkt_kind;

/* Well-known types whose JSON form is not an object, recognised by full name. */
static wkt_kind wkt_of(const ProtobufCMessageDescriptor *d) {
  static const char *const wrappers[] = {"DoubleValue", "FloatValue",  "Int64Value",
                                         "UInt64Value", "Int32Value",  "UInt32Value",
                                         "BoolValue",   "StringValue", "BytesValue"};
  const char *prefix = "google.protobuf.";
  size_t np = strlen(prefix);
  if (strncmp(d->name, prefix, np) != 0)
    return WKT_NONE;
  const char *n = d->name + np;
  if (strcmp(n, "Timestamp") == 0 || strcmp(n, "Duration") == 0) {
    const ProtobufCFieldDescriptor *s =
        protobuf_c_message_descriptor_get_field_by_name(d, "seconds");
    const ProtobufCFieldDescriptor *ns =
        protobuf_c_message_descriptor_get_field_by_name(d, "nanos");
    if (!s || !ns || s->type != PROTOBUF_C_TYPE_INT64 || ns->type != PROTOBUF_C_TYPE_INT32)
      return WKT_NONE;
    return n[0] == 'T' ? WKT_TIMESTAMP : WKT_DURATION;
  }
  for (size_t i = 0; i < sizeof wrappers / sizeof wrappers[0]; i++)
    if (strcmp(n, wrappers[i]) == 0 && d->n_fields == 1 &&
        d->fields[0].label != PROTOBUF_C_LABEL_REPEATED)
      return WKT_WRAPPER;
  return WKT_NONE;
}

/* Bytes one element of a field of type t occupies in a repeated array. */
static size_t elem_size(ProtobufCType t) {
  switch (t) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    return 4;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return 8;
  case PROTOBUF_C_TYPE_FLOAT:
    return sizeof(float);
  case PROTOBUF_C_TYPE_DOUBLE:
    return sizeof(double);
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_ENUM:
    return sizeof(int);
  case PROTOBUF_C_TYPE_STRING:
    return sizeof(char *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(ProtobufCMessage *);
  }
  return 0;
}

/* The proto name of a field type, indexed by ProtobufCType. */
static const char *type_name(ProtobufCType t) {
  static const char *const names[] = {
      "int32",   "sint32", "sfixed32", "int64", "sint64", "sfixed64", "uint32", "fixed32", "uint64",
      "fixed64", "float",  "double",   "bool",  "enum",   "string",   "bytes",  "message"};
  return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* A repeated message field is a map when its entry type is the nested
 * "<Name>Entry" message protoc generates, with fields key = 1 and value = 2. */
static bool is_map_field(const ProtobufCFieldDescriptor *fd) {
  if (fd->label != PROTOBUF_C_LABEL_REPEATED || fd->type != PROTOBUF_C_TYPE_MESSAGE)
    return false;
  const ProtobufCMessageDescriptor *e = fd->descriptor;
  size_t n = strlen(e->short_name);
  return e->n_fields == 2 && n > 5 && strcmp(e->short_name + n - 5, "Entry") == 0 &&
         e->fields[0].id == 1 && strcmp(e->fields[0].name, "key") == 0 && e->fields[1].id == 2 &&
         strcmp(e->fields[1].name, "value") == 0;
}

static bool oneof_selected(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd) {
  return *(const uint32_t *)PB_CAT(m, fd->quantifier_offset) == fd->id;
}

/* Whether fd in m carries a value (as protobuf-c would pack it); repeated
 * fields are not asked. A float or double is zero only when all its bits are,
 * so -0.0 counts as set (as in other proto3 runtimes). */
static bool field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd) {
  if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    return oneof_selected(m, fd);
  if (fd->label == PROTOBUF_C_LABEL_REQUIRED)
    return true;
  const void *p = PB_CAT(m, fd->offset);
  if (fd->type == PROTOBUF_C_TYPE_MESSAGE)
    return *(const void *const *)p != NULL;
  if (fd->type == PROTOBUF_C_TYPE_STRING) {
    const char *s = *(const char *const *)p;
    if (fd->label == PROTOBUF_C_LABEL_OPTIONAL)
      return s != NULL;
    return s != NULL && s[0] != '\0';
  }
  if (fd->label == PROTOBUF_C_LABEL_OPTIONAL)
    return *(const protobuf_c_boolean *)PB_CAT(m, fd->quantifier_offset) != 0;
  if (fd->type == PROTOBUF_C_TYPE_BYTES)
    return ((const ProtobufCBinaryData *)p)->len != 0;
  static const unsigned char zero[8];
  return memcmp(p, zero, elem_size(fd->type)) != 0;
}

/* Whether key (len bytes) is the lowerCamelCase JSON name of proto field
 * `name`: underscores dropped, the letter after each one upper-cased. */
static bool json_name_eq(const char *name, const char *key, size_t len) {
  size_t k = 0;
  bool up = false;
  for (const char *p = name; *p; p++) {
    if (*p == '_') {
      up = true;
      continue;
    }
    char ch = up ? (char)toupper((unsigned char)*p) : *p;
    up = false;
    if (k >= len || key[k] != ch)
      return false;
    k++;
  }
  return k == len;
}

/* Writes the JSON name of `name` into out (cap bytes, NUL-terminated, cut
 * short if it does not fit). */
static void json_name(const char *name, char *out, size_t cap) {
  size_t k = 0;
  bool up = false;
  for (const char *p = name; *p && k + 1 < cap; p++) {
    if (*p == '_') {
      up = true;
      continue;
    }
    out[k++] = up ? (char)toupper((unsigned char)*p) : *p;
    up = false;
  }
  out[k] = '\0';
}

/* Case-insensitive Levenshtein distance; strings longer than 64 bytes are
 * reported as far apart. */
static size_t edit_distance(const char *a, size_t na, const char *b) {
  size_t nb = strlen(b);
  if (na > 64 || nb > 64)
    return SIZE_MAX;
  size_t row[65];
  for (size_t j = 0; j <= nb; j++)
    row[j] = j;
  for (size_t i = 1; i <= na; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= nb; j++) {
      size_t up = row[j];
      size_t cost = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]) ? 0 : 1;
      size_t best = diag + cost;
      if (up + 1 < best)
        best = up + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[nb];
}

/* How far a misspelling may be from a name and still be suggested. */
static size_t suggest_limit(size_t len) { return len <= 3 ? 1 : len <= 8 ? 2 : 3; }

/* ------------------------------------------------------------- numbers */

/* A decimal number as written: [+-] digits [. digits] [(e|E) [+-] digits],
 * where either the integer or the fraction digits may be empty but not both. */
typedef struct {
  bool neg;
  const char *ip; /* integer digits */
  size_t ni;
  const char *fp; /* fraction digits */
  size_t nf;
  long exp; /* clamped to +-1000000 */
} decnum;

static bool dec_parse(const char *s, size_t n, decnum *d) {
  size_t i = 0;
  memset(d, 0, sizeof *d);
  if (i < n && (s[i] == '-' || s[i] == '+'))
    d->neg = s[i++] == '-';
  d->ip = s + i;
  while (i < n && isdigit((unsigned char)s[i]))
    i++, d->ni++;
  if (i < n && s[i] == '.') {
    i++;
    d->fp = s + i;
    while (i < n && isdigit((unsigned char)s[i]))
      i++, d->nf++;
  }
  if (d->ni == 0 && d->nf == 0)
    return false;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    bool eneg = false;
    if (i < n && (s[i] == '-' || s[i] == '+'))
      eneg = s[i++] == '-';
    if (i >= n || !isdigit((unsigned char)s[i]))
      return false;
    long e = 0;
    while (i < n && isdigit((unsigned char)s[i])) {
      if (e < 1000000)
        e = e * 10 + (s[i] - '0');
      i++;
    }
    d->exp = eneg ? -e : e;
  }
  return i == n;
}

static char dec_digit(const decnum *d, size_t k) { return k < d->ni ? d->ip[k] : d->fp[k - d->ni]; }

/* The magnitude of d as an exact integer: 0 when it is one and fits in 64
 * bits, 1 when it has a fractional part, 2 when it is too large. */
static int dec_to_u64(const decnum *d, uint64_t *mag) {
  size_t total = d->ni + d->nf, first = 0;
  *mag = 0;
  while (first < total && dec_digit(d, first) == '0')
    first++;
  if (first == total)
    return 0;
  long digits = (long)(total - first);
  long e = d->exp - (long)d->nf; /* value = digits * 10^e */
  long keep = digits;
  if (e < 0) {
    if (-e >= digits)
      return 1;
    for (long k = digits + e; k < digits; k++)
      if (dec_digit(d, first + (size_t)k) != '0')
        return 1;
    keep = digits + e;
    e = 0;
  }
  if (keep + e > 20)
    return 2;
  uint64_t v = 0;
  for (long k = 0; k < keep + e; k++) {
    unsigned dig = k < keep ? (unsigned)(dec_digit(d, first + (size_t)k) - '0') : 0;
    if (v > (UINT64_MAX - dig) / 10)
      return 2;
    v = v * 10 + dig;
  }
  *mag = v;
  return 0;
}

/* %g output uses an exponent as soon as the exponent reaches the precision,
 * which turns 10 into "1e+01". Below 10^limit, where the type still holds
 * every integer exactly (10^16 for double, 10^7 for float), the value is
 * written out in full instead, as Python's repr does. */
static void widen_g(char *out, size_t cap, double d, int p, int limit) {
  const char *e = strchr(out, 'e');
  if (!e)
    return;
  int x = atoi(e + 1);
  if (x >= p && x < limit)
    snprintf(out, cap, "%.*g", x + 1, d);
}

/* The shortest %g text of d that reads back as the same double. */
static void fmt_double(char *out, size_t cap, double d) {
  for (int p = 1; p <= 17; p++) {
    snprintf(out, cap, "%.*g", p, d);
    if (strtod(out, NULL) == d) {
      widen_g(out, cap, d, p, 16);
      return;
    }
  }
}

/* The shortest %g text of f that reads back as the same float. */
static void fmt_float(char *out, size_t cap, float f) {
  for (int p = 1; p <= 9; p++) {
    snprintf(out, cap, "%.*g", p, (double)f);
    if (strtof(out, NULL) == f) {
      widen_g(out, cap, f, p, 7);
      return;
    }
  }
}

/* A numeric element as a double for comparison and as text for messages. */
static bool num_read(ProtobufCType t, const void *p, double *v, char *text, size_t cap) {
  switch (t) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
    *v = *(const int32_t *)p;
    snprintf(text, cap, "%" PRId32, *(const int32_t *)p);
    return true;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    *v = *(const uint32_t *)p;
    snprintf(text, cap, "%" PRIu32, *(const uint32_t *)p);
    return true;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
    *v = (double)*(const int64_t *)p;
    snprintf(text, cap, "%" PRId64, *(const int64_t *)p);
    return true;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    *v = (double)*(const uint64_t *)p;
    snprintf(text, cap, "%" PRIu64, *(const uint64_t *)p);
    return true;
  case PROTOBUF_C_TYPE_FLOAT:
    *v = *(const float *)p;
    if (isfinite(*v))
      fmt_float(text, cap, *(const float *)p);
    else
      snprintf(text, cap, "%s", isnan(*v) ? "NaN" : *v > 0 ? "Infinity" : "-Infinity");
    return true;
  case PROTOBUF_C_TYPE_DOUBLE:
    *v = *(const double *)p;
    if (isfinite(*v))
      fmt_double(text, cap, *v);
    else
      snprintf(text, cap, "%s", isnan(*v) ? "NaN" : *v > 0 ? "Infinity" : "-Infinity");
    return true;
  case PROTOBUF_C_TYPE_BOOL:
    *v = *(const protobuf_c_boolean *)p ? 1 : 0;
    snprintf(text, cap, "%s", *v ? "true" : "false");
    return true;
  case PROTOBUF_C_TYPE_ENUM:
    *v = *(const int *)p;
    snprintf(text, cap, "%d", *(const int *)p);
    return true;
  default:
    return false;
  }
}

/* ----------------------------------------------------------------- time */

/* Days since 1970-01-01 of a proleptic Gregorian date (the standard
 * era-of-400-years construction). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = (unsigned)(y - era * 400);
  unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
  z += 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  unsigned doe = (unsigned)(z - era * 146097);
  unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

/* Reads exactly n decimal digits. */
static bool read_digits(const char *s, size_t n, unsigned *out) {
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isdigit((unsigned char)s[i]))
      return false;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  *out = v;
  return true;
}

/* Reads "." and 1 to 9 digits at s[*i] as nanoseconds, when present. */
static bool read_fraction(const char *s, size_t n, size_t *i, int32_t *nanos) {
  *nanos = 0;
  if (*i >= n || s[*i] != '.')
    return true;
  (*i)++;
  size_t k = 0;
  int32_t v = 0;
  while (*i < n && isdigit((unsigned char)s[*i])) {
    if (k == 9)
      return false;
    v = v * 10 + (s[*i] - '0');
    (*i)++, k++;
  }
  if (k == 0)
    return false;
  for (; k < 9; k++)
    v *= 10;
  *nanos = v;
  return true;
}

/* RFC 3339, as the mapping uses for Timestamp: "1972-01-01T10:00:20.021Z" or
 * with an offset such as "+05:30". */
static bool parse_timestamp(const char *s, size_t n, int64_t *secs, int32_t *nanos) {
  unsigned y, mo, d, h, mi, se;
  if (n < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
      s[16] != ':')
    return false;
  if (!read_digits(s, 4, &y) || !read_digits(s + 5, 2, &mo) || !read_digits(s + 8, 2, &d) ||
      !read_digits(s + 11, 2, &h) || !read_digits(s + 14, 2, &mi) || !read_digits(s + 17, 2, &se))
    return false;
  static const unsigned mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || se > 59)
    return false;
  if (d > mdays[mo - 1] + (mo == 2 && is_leap(y) ? 1u : 0u))
    return false;
  size_t i = 19;
  if (!read_fraction(s, n, &i, nanos))
    return false;
  int64_t offset = 0;
  if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
    i++;
  } else if (i + 6 <= n && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
    unsigned oh, om;
    if (!read_digits(s + i + 1, 2, &oh) || !read_digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
      return false;
    offset = (int64_t)(oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
    i += 6;
  } else {
    return false;
  }
  if (i != n)
    return false;
  *secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset;
  return *secs >= TS_MIN_SECONDS && *secs <= TS_MAX_SECONDS;
}

/* "-1.5s": seconds with up to 9 fractional digits and a trailing "s". */
static bool parse_duration(const char *s, size_t n, int64_t *secs, int32_t *nanos) {
  size_t i = 0;
  bool neg = false;
  if (i < n && s[i] == '-')
    neg = true, i++;
  int64_t v = 0;
  size_t nd = 0;
  while (i < n && isdigit((unsigned char)s[i])) {
    v = v * 10 + (s[i] - '0');
    if (v > DUR_MAX_SECONDS)
      return false;
    i++, nd++;
  }
  if (nd == 0 || !read_fraction(s, n, &i, nanos) || i + 1 != n || s[i] != 's')
    return false;
  *secs = neg ? -v : v;
  if (neg)
    *nanos = -*nanos;
  return true;
}

static void frac_text(char *out, size_t cap, int32_t nanos) {
  if (nanos == 0)
    out[0] = '\0';
  else if (nanos % 1000000 == 0)
    snprintf(out, cap, ".%03" PRId32, nanos / 1000000);
  else if (nanos % 1000 == 0)
    snprintf(out, cap, ".%06" PRId32, nanos / 1000);
  else
    snprintf(out, cap, ".%09" PRId32, nanos);
}

/* Output uses 0, 3, 6 or 9 fractional digits and "Z", as the mapping asks. */
static bool fmt_timestamp(char *out, size_t cap, int64_t secs, int32_t nanos) {
  if (secs < TS_MIN_SECONDS || secs > TS_MAX_SECONDS || nanos < 0 || nanos > 999999999)
    return false;
  int64_t days = secs / 86400, rem = secs % 86400;
  if (rem < 0)
    rem += 86400, days--;
  int64_t y;
  unsigned m, d;
  civil_from_days(days, &y, &m, &d);
  char frac[16];
  frac_text(frac, sizeof frac, nanos);
  snprintf(out, cap, "%04" PRId64 "-%02u-%02uT%02u:%02u:%02u%sZ", y, m, d, (unsigned)(rem / 3600),
           (unsigned)(rem / 60 % 60), (unsigned)(rem % 60), frac);
  return true;
}

static bool fmt_duration(char *out, size_t cap, int64_t secs, int32_t nanos) {
  if (secs < -DUR_MAX_SECONDS || secs > DUR_MAX_SECONDS || nanos <= -1000000000 ||
      nanos >= 1000000000 || (secs > 0 && nanos < 0) || (secs < 0 && nanos > 0))
    return false;
  bool neg = secs < 0 || nanos < 0;
  char frac[16];
  frac_text(frac, sizeof frac, nanos < 0 ? -nanos : nanos);
  snprintf(out, cap, "%s%" PRId64 "%ss", neg ? "-" : "", secs < 0 ? -secs : secs, frac);
  return true;
}

/* Seconds and nanos of a Timestamp or Duration message, by field name. */
static void time_fields(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor **s,
                        const ProtobufCFieldDescriptor **ns) {
  *s = protobuf_c_message_descriptor_get_field_by_name(d, "seconds");
  *ns = protobuf_c_message_descriptor_get_field_by_name(d, "nanos");
}

/* --------------------------------------------------------------- base64 */

static int b64_value(unsigned char ch) {
  if (ch >= 'A' && ch <= 'Z')
    return ch - 'A';
  if (ch >= 'a' && ch <= 'z')
    return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9')
    return ch - '0' + 52;
  if (ch == '+' || ch == '-')
    return 62;
  if (ch == '/' || ch == '_')
    return 63;
  return -1;
}

/* Decodes standard or URL-safe base64, padded or not, into a malloc'd
 * buffer (NULL for no bytes). Returns 0, TD_EINVAL or TD_ENOMEM. */
static int b64_decode(const char *s, size_t n, uint8_t **out, size_t *outlen) {
  *out = NULL;
  *outlen = 0;
  size_t pad = 0;
  while (n > 0 && s[n - 1] == '=' && pad < 2)
    n--, pad++;
  if ((pad && (n + pad) % 4 != 0) || n % 4 == 1)
    return TD_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (b64_value((unsigned char)s[i]) < 0)
      return TD_EINVAL;
  size_t len = n / 4 * 3 + (n % 4 == 2 ? 1 : n % 4 == 3 ? 2 : 0);
  if (len == 0)
    return 0;
  uint8_t *buf = malloc(len);
  if (!buf)
    return TD_ENOMEM;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    acc = (acc << 6) | (uint32_t)b64_value((unsigned char)s[i]);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      buf[o++] = (uint8_t)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  *out = buf;
  *outlen = o;
  return 0;
}

/* ================================================================ parsing */

/* State of one parse: the document, the error to fill, the limits' counters
 * and the path of the value being converted. */
typedef struct {
  yaml_document_t *doc;
  td_error *err;
  size_t nodes;
  int depth;
  size_t path_len;
  char path[PATH_CAP];
} pctx;

static size_t path_push(pctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_push(pctx *c, const char *fmt, ...) {
  size_t old = c->path_len;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->path + old, sizeof c->path - old, fmt, ap);
  va_end(ap);
  c->path_len = old + strlen(c->path + old);
  return old;
}

static size_t path_push_field(pctx *c, const char *name, size_t len) {
  if (len > 64)
    len = 64;
  return c->path_len ? path_push(c, ".%.*s", (int)len, name) : path_push(c, "%.*s", (int)len, name);
}

static void path_pop(pctx *c, size_t old) {
  c->path_len = old;
  c->path[old] = '\0';
}

static int perr(pctx *c, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr(pctx *c, const yaml_node_t *n, const char *fmt, ...) {
  char what[TD_ERRMSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  unsigned long line = n ? (unsigned long)n->start_mark.line + 1 : 1;
  if (c->path_len)
    return td_errorf(c->err, TD_EINVAL, "line %lu: %s: %s", line, c->path, what);
  return td_errorf(c->err, TD_EINVAL, "line %lu: %s", line, what);
}

static int poom(pctx *c) {
  return td_errorf(c->err, TD_ENOMEM, "out of memory at %s", c->path_len ? c->path : "top level");
}

static const char *sc_text(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }
static size_t sc_len(const yaml_node_t *n) { return n->data.scalar.length; }
static bool sc_plain(const yaml_node_t *n) {
  return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static bool sc_is(const yaml_node_t *n, const char *s) {
  return n->type == YAML_SCALAR_NODE && sc_len(n) == strlen(s) &&
         memcmp(sc_text(n), s, sc_len(n)) == 0;
}

/* YAML's null: an unquoted ~, null, Null, NULL or nothing at all. */
static bool is_null(const yaml_node_t *n) {
  if (n->type != YAML_SCALAR_NODE || !sc_plain(n))
    return false;
  return sc_len(n) == 0 || sc_is(n, "~") || sc_is(n, "null") || sc_is(n, "Null") ||
         sc_is(n, "NULL");
}

/* A short description of a node for "got ..." in messages: scalars are
 * quoted and cut after about 32 bytes, so GOT_CAP always suffices. */
#define GOT_CAP 160
static const char *describe(const yaml_node_t *n, char *out, size_t cap) {
  if (n->type == YAML_MAPPING_NODE)
    return "a mapping";
  if (n->type == YAML_SEQUENCE_NODE)
    return "a list";
  if (is_null(n))
    return "null";
  size_t o = 0, len = sc_len(n);
  const unsigned char *s = n->data.scalar.value;
  out[o++] = '"';
  for (size_t i = 0; i < len && o + 8 < cap; i++) {
    if (i >= 32 && (s[i] & 0xC0) != 0x80) { /* cut at a character boundary */
      memcpy(out + o, "...", 3);
      o += 3;
      break;
    }
    if (s[i] == '"' || s[i] == '\\') {
      out[o++] = '\\';
      out[o++] = (char)s[i];
    } else if (s[i] < 0x20 || s[i] == 0x7f) {
      o += (size_t)snprintf(out + o, cap - o, "\\x%02x", s[i]);
    } else {
      out[o++] = (char)s[i];
    }
  }
  out[o++] = '"';
  out[o] = '\0';
  return out;
}

#define GOT(n) describe((n), got, sizeof got)

static int parse_message(pctx *c, const yaml_node_t *n, ProtobufCMessage *m);

static int parse_integer(pctx *c, const yaml_node_t *n, ProtobufCType t, void *dst) {
  char got[GOT_CAP];
  const char *tn = type_name(t);
  decnum d;
  uint64_t mag = 0;
  if (n->type != YAML_SCALAR_NODE || !dec_parse(sc_text(n), sc_len(n), &d))
    return perr(c, n, "expected an integer (%s), got %s", tn, GOT(n));
  int r = dec_to_u64(&d, &mag);
  if (r == 1)
    return perr(c, n, "expected an integer (%s), got %s, which has a fractional part", tn, GOT(n));
  bool is_signed = t == PROTOBUF_C_TYPE_INT32 || t == PROTOBUF_C_TYPE_SINT32 ||
                   t == PROTOBUF_C_TYPE_SFIXED32 || t == PROTOBUF_C_TYPE_INT64 ||
                   t == PROTOBUF_C_TYPE_SINT64 || t == PROTOBUF_C_TYPE_SFIXED64;
  bool is32 = elem_size(t) == 4;
  uint64_t hi = is_signed ? (is32 ? (uint64_t)INT32_MAX : (uint64_t)INT64_MAX)
                          : (is32 ? (uint64_t)UINT32_MAX : UINT64_MAX);
  uint64_t neg_lim = is_signed ? hi + 1 : 0; /* largest magnitude allowed below zero */
  bool neg = d.neg && mag != 0;
  if (r == 2 || (neg && mag > neg_lim) || (!neg && mag > hi)) {
    if (is_signed)
      return perr(c, n, "%s is out of range for %s [%s, %s]", GOT(n), tn,
                  is32 ? "-2147483648" : "-9223372036854775808",
                  is32 ? "2147483647" : "9223372036854775807");
    return perr(c, n, "%s is out of range for %s [0, %s]", GOT(n), tn,
                is32 ? "4294967295" : "18446744073709551615");
  }
  int64_t sv = !neg ? (int64_t)mag : mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
  if (is_signed && is32)
    *(int32_t *)dst = (int32_t)sv;
  else if (is_signed)
    *(int64_t *)dst = sv;
  else if (is32)
    *(uint32_t *)dst = (uint32_t)mag;
  else
    *(uint64_t *)dst = mag;
  return 0;
}

static int parse_floating(pctx *c, const yaml_node_t *n, ProtobufCType t, void *dst) {
  char got[GOT_CAP];
  bool is_float = t == PROTOBUF_C_TYPE_FLOAT;
  double v;
  decnum d;
  if (n->type != YAML_SCALAR_NODE)
    return perr(c, n, "expected a number, got %s", GOT(n));
  if (sc_is(n, "NaN")) {
    v = NAN;
  } else if (sc_is(n, "Infinity")) {
    v = INFINITY;
  } else if (sc_is(n, "-Infinity")) {
    v = -INFINITY;
  } else if (!dec_parse(sc_text(n), sc_len(n), &d)) {
    return perr(c, n, "expected a number, got %s", GOT(n));
  } else if (is_float) {
    float f = strtof(sc_text(n), NULL);
    if (isinf(f))
      return perr(c, n, "%s is out of range for float (magnitude at most 3.4028235e+38)", GOT(n));
    *(float *)dst = f;
    return 0;
  } else {
    v = strtod(sc_text(n), NULL);
    if (isinf(v))
      return perr(c, n, "%s is out of range for double (magnitude at most 1.7976931348623157e+308)",
                  GOT(n));
  }
  if (is_float)
    *(float *)dst = (float)v;
  else
    *(double *)dst = v;
  return 0;
}

/* Lists an enum's value names into out, suggesting the closest to the bad
 * name first when one is close. */
static void enum_choices(const ProtobufCEnumDescriptor *ed, const char *bad, size_t badlen,
                         char *out, size_t cap) {
  size_t o = 0, best = SIZE_MAX;
  const char *near = NULL;
  for (unsigned i = 0; i < ed->n_values; i++) {
    size_t dist = edit_distance(bad, badlen, ed->values[i].name);
    if (dist < best) {
      best = dist;
      near = ed->values[i].name;
    }
  }
  out[0] = '\0';
  if (near && best <= suggest_limit(badlen))
    o += (size_t)snprintf(out, cap, "did you mean '%s'? ", near);
  if (o < cap)
    o += (size_t)snprintf(out + o, cap - o, "valid values:");
  for (unsigned i = 0; i < ed->n_values && o < cap; i++)
    o += (size_t)snprintf(out + o, cap - o, "%s %s", i ? "," : "", ed->values[i].name);
}

/* A message's field names as "a, b, c". */
static void field_list(const ProtobufCMessageDescriptor *d, char *out, size_t cap) {
  size_t o = 0;
  out[0] = '\0';
  for (unsigned f = 0; f < d->n_fields && o < cap; f++)
    o += (size_t)snprintf(out + o, cap - o, "%s%s", f ? ", " : "", d->fields[f].name);
}

static int parse_enum(pctx *c, const yaml_node_t *n, const ProtobufCEnumDescriptor *ed, int *dst) {
  char got[GOT_CAP];
  decnum d;
  uint64_t mag;
  if (n->type != YAML_SCALAR_NODE)
    return perr(c, n, "expected a %s name, got %s", ed->name, GOT(n));
  const char *s = sc_text(n);
  size_t len = sc_len(n);
  if (strlen(s) == len) {
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(ed, s);
    if (v) {
      *dst = v->value;
      return 0;
    }
  }
  /* proto3 enums are open: any int32 number is kept. */
  if (dec_parse(s, len, &d) && dec_to_u64(&d, &mag) == 0 &&
      mag <= (d.neg ? (uint64_t)INT32_MAX + 1 : (uint64_t)INT32_MAX)) {
    *dst = d.neg ? (int)(-(int64_t)mag) : (int)mag;
    return 0;
  }
  char choices[700];
  enum_choices(ed, s, len, choices, sizeof choices);
  return perr(c, n, "unknown %s value %s; %s", ed->name, GOT(n), choices);
}

static int parse_message_value(pctx *c, const yaml_node_t *n, const ProtobufCMessageDescriptor *md,
                               ProtobufCMessage **slot);

/* Converts one non-null value into dst, the storage of one element of fd's
 * type (the struct member for a singular field, an array slot for a repeated
 * one). What it allocates is reachable from dst at once, so freeing the
 * enclosing message on a later failure releases it. */
static int parse_single(pctx *c, const yaml_node_t *n, const ProtobufCFieldDescriptor *fd,
                        void *dst) {
  char got[GOT_CAP];
  if (++c->nodes > PBJSON_MAX_NODES)
    return perr(c, n,
                "the document expands to more than %d values (YAML aliases count once per use); "
                "refusing it",
                PBJSON_MAX_NODES);
  switch (fd->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return parse_integer(c, n, fd->type, dst);
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_DOUBLE:
    return parse_floating(c, n, fd->type, dst);
  case PROTOBUF_C_TYPE_BOOL:
    if (n->type == YAML_SCALAR_NODE && sc_plain(n) && (sc_is(n, "true") || sc_is(n, "false"))) {
      *(protobuf_c_boolean *)dst = sc_is(n, "true");
      return 0;
    }
    return perr(c, n, "expected true or false, got %s%s",
                n->type == YAML_SCALAR_NODE && !sc_plain(n) ? "the quoted string " : "", GOT(n));
  case PROTOBUF_C_TYPE_ENUM:
    return parse_enum(c, n, fd->descriptor, dst);
  case PROTOBUF_C_TYPE_STRING: {
    if (n->type != YAML_SCALAR_NODE)
      return perr(c, n, "expected a string, got %s", GOT(n));
    size_t len = sc_len(n);
    if (memchr(sc_text(n), '\0', len))
      return perr(c, n, "strings may not contain a NUL character");
    size_t bad = pbjson_utf8_invalid(sc_text(n), len);
    if (bad < len)
      return perr(c, n, "not valid UTF-8 (byte 0x%02x at offset %zu)",
                  (unsigned)(unsigned char)sc_text(n)[bad], bad);
    char *s = malloc(len + 1);
    if (!s)
      return poom(c);
    memcpy(s, sc_text(n), len + 1);
    *(char **)dst = s;
    return 0;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    ProtobufCBinaryData *bd = dst;
    if (n->type != YAML_SCALAR_NODE)
      return perr(c, n, "expected base64 text, got %s", GOT(n));
    int rc = b64_decode(sc_text(n), sc_len(n), &bd->data, &bd->len);
    if (rc == TD_ENOMEM)
      return poom(c);
    if (rc)
      return perr(c, n, "expected base64 text (standard or URL-safe alphabet), got %s", GOT(n));
    return 0;
  }
  case PROTOBUF_C_TYPE_MESSAGE:
    return parse_message_value(c, n, fd->descriptor, dst);
  }
  return perr(c, n, "field type %d is not supported", (int)fd->type);
}

static int parse_message_value(pctx *c, const yaml_node_t *n, const ProtobufCMessageDescriptor *md,
                               ProtobufCMessage **slot) {
  char got[GOT_CAP];
  ProtobufCMessage *sub = malloc(md->sizeof_message);
  if (!sub)
    return poom(c);
  protobuf_c_message_init(md, sub);
  *slot = sub;
  wkt_kind k = wkt_of(md);
  if (k == WKT_WRAPPER)
    return parse_single(c, n, &md->fields[0], PB_AT(sub, md->fields[0].offset));
  if (k == WKT_TIMESTAMP || k == WKT_DURATION) {
    const ProtobufCFieldDescriptor *fs, *fns;
    int64_t secs = 0;
    int32_t nanos = 0;
    time_fields(md, &fs, &fns);
    if (n->type != YAML_SCALAR_NODE)
      return perr(c, n, "expected a %s string, got %s",
                  k == WKT_TIMESTAMP ? "timestamp" : "duration", GOT(n));
    if (k == WKT_TIMESTAMP && !parse_timestamp(sc_text(n), sc_len(n), &secs, &nanos))
      return perr(c, n,
                  "expected an RFC 3339 timestamp between years 0001 and 9999 such as "
                  "\"1972-01-01T10:00:20.021Z\" or \"2024-05-01T09:30:00+02:00\", got %s",
                  GOT(n));
    if (k == WKT_DURATION && !parse_duration(sc_text(n), sc_len(n), &secs, &nanos))
      return perr(c, n,
                  "expected a duration in seconds such as \"1.5s\" or \"-0.25s\" "
                  "(at most 315576000000s, 9 fractional digits), got %s",
                  GOT(n));
    *(int64_t *)PB_AT(sub, fs->offset) = secs;
    *(int32_t *)PB_AT(sub, fns->offset) = nanos;
    return 0;
  }
  return parse_message(c, n, sub);
}

static int parse_repeated(pctx *c, const yaml_node_t *n, ProtobufCMessage *m,
                          const ProtobufCFieldDescriptor *fd) {
  char got[GOT_CAP];
  if (is_null(n))
    return 0;
  if (n->type != YAML_SEQUENCE_NODE)
    return perr(c, n, "expected a list, got %s", GOT(n));
  if (++c->depth > PBJSON_MAX_DEPTH)
    return perr(c, n, "nested more than %d levels deep", PBJSON_MAX_DEPTH);
  size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
  int rc = 0;
  if (count > 0) {
    size_t esz = elem_size(fd->type);
    char *arr = calloc(count, esz);
    if (!arr)
      return poom(c);
    /* The count is set up front: unfilled slots are zero, which the free
     * routine skips. */
    *(size_t *)PB_AT(m, fd->quantifier_offset) = count;
    *(void **)PB_AT(m, fd->offset) = arr;
    for (size_t i = 0; i < count && rc == 0; i++) {
      const yaml_node_t *item = yaml_document_get_node(c->doc, n->data.sequence.items.start[i]);
      size_t old = path_push(c, "[%zu]", i);
      if (is_null(item))
        rc = perr(c, item, "null is not allowed as a list element");
      else
        rc = parse_single(c, item, fd, arr + i * esz);
      if (rc == 0)
        path_pop(c, old);
    }
  }
  c->depth--;
  return rc;
}

/* Converts the value of one field; the path already names the field. */
static int parse_field(pctx *c, const yaml_node_t *n, ProtobufCMessage *m,
                       const ProtobufCFieldDescriptor *fd) {
  /* An empty map is accepted so that PBJSON_EMIT_DEFAULTS output reads back. */
  if (is_map_field(fd)) {
    if (is_null(n) ||
        (n->type == YAML_MAPPING_NODE && n->data.mapping.pairs.top == n->data.mapping.pairs.start))
      return 0;
    return perr(c, n, "map fields are not supported");
  }
  if (fd->label == PROTOBUF_C_LABEL_REPEATED)
    return parse_repeated(c, n, m, fd);
  if (is_null(n))
    return 0;
  if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    *(uint32_t *)PB_AT(m, fd->quantifier_offset) = fd->id;
  else if (fd->label == PROTOBUF_C_LABEL_OPTIONAL && fd->type != PROTOBUF_C_TYPE_STRING &&
           fd->type != PROTOBUF_C_TYPE_MESSAGE)
    *(protobuf_c_boolean *)PB_AT(m, fd->quantifier_offset) = 1;
  return parse_single(c, n, fd, PB_AT(m, fd->offset));
}

/* A field by proto name or JSON name. */
static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *d,
                                                  const char *key, size_t len) {
  if (strlen(key) == len) {
    const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(d, key);
    if (fd)
      return fd;
  }
  for (unsigned i = 0; i < d->n_fields; i++)
    if (json_name_eq(d->fields[i].name, key, len))
      return &d->fields[i];
  return NULL;
}

/* The field name closest to an unknown key, in the spelling (proto or JSON)
 * nearer to it, or NULL when none is close. */
static const char *suggest_field(const ProtobufCMessageDescriptor *d, const char *key, size_t len,
                                 char *buf, size_t cap) {
  size_t best = suggest_limit(len) + 1;
  const char *pick = NULL;
  for (unsigned i = 0; i < d->n_fields; i++) {
    char jn[80];
    json_name(d->fields[i].name, jn, sizeof jn);
    size_t dp = edit_distance(key, len, d->fields[i].name), dj = edit_distance(key, len, jn);
    if (dp < best) {
      best = dp;
      pick = d->fields[i].name;
    }
    if (dj < best) {
      best = dj;
      snprintf(buf, cap, "%s", jn);
      pick = buf;
    }
  }
  return pick;
}

static int parse_message(pctx *c, const yaml_node_t *n, ProtobufCMessage *m) {
  char got[GOT_CAP];
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (n->type != YAML_MAPPING_NODE)
    return perr(c, n, "expected a mapping for %s, got %s", d->name, GOT(n));
  if (++c->depth > PBJSON_MAX_DEPTH)
    return perr(c, n, "nested more than %d levels deep", PBJSON_MAX_DEPTH);
  /* The key node that set each field, to catch a field given twice. */
  const yaml_node_t **seen = calloc(d->n_fields + 1, sizeof *seen);
  if (!seen)
    return poom(c);
  int rc = 0;
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top && rc == 0;
       p++) {
    const yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
    const yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
    if (k->type != YAML_SCALAR_NODE || is_null(k)) {
      rc = perr(c, k, "keys must be field names, got %s", GOT(k));
      break;
    }
    const char *key = sc_text(k);
    size_t klen = sc_len(k);
    const ProtobufCFieldDescriptor *fd = find_field(d, key, klen);
    size_t old = path_push_field(c, key, klen);
    if (!fd && sc_is(k, "<<")) {
      rc = perr(c, k,
                "YAML merge keys (<<) are not supported; repeat the fields or use an alias for the "
                "whole value");
      break;
    }
    if (!fd) {
      char buf[80];
      const char *near = suggest_field(d, key, klen, buf, sizeof buf);
      if (near)
        rc = perr(c, k, "unknown field %s in %s; did you mean '%s'?", GOT(k), d->name, near);
      else {
        char names[TD_ERRMSG_MAX / 2];
        field_list(d, names, sizeof names);
        rc = perr(c, k, "unknown field %s in %s (its fields: %s)", GOT(k), d->name, names);
      }
      break;
    }
    path_pop(c, old);
    old = path_push_field(c, fd->name, strlen(fd->name));
    size_t idx = (size_t)(fd - d->fields);
    if (seen[idx]) {
      rc = perr(c, k, "field given twice (first as '%s' on line %lu)", sc_text(seen[idx]),
                (unsigned long)seen[idx]->start_mark.line + 1);
      break;
    }
    seen[idx] = k;
    if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && !is_null(v)) {
      uint32_t sel = *(const uint32_t *)PB_AT(m, fd->quantifier_offset);
      if (sel != 0 && sel != fd->id) {
        const char *other = "?";
        for (unsigned i = 0; i < d->n_fields; i++)
          if (d->fields[i].id == sel)
            other = d->fields[i].name;
        path_pop(c, old);
        rc = perr(c, k, "'%s' and '%s' are both set; set only one", other, fd->name);
        break;
      }
    }
    rc = parse_field(c, v, m, fd);
    if (rc == 0)
      path_pop(c, old);
  }
  free(seen);
  c->depth--;
  return rc;
}

/* Reads four hex digits. */
static bool hex4(const char *s, unsigned *v) {
  *v = 0;
  for (int i = 0; i < 4; i++) {
    int ch = (unsigned char)s[i], d;
    if (ch >= '0' && ch <= '9')
      d = ch - '0';
    else if (ch >= 'a' && ch <= 'f')
      d = ch - 'a' + 10;
    else if (ch >= 'A' && ch <= 'F')
      d = ch - 'A' + 10;
    else
      return false;
    *v = *v * 16 + (unsigned)d;
  }
  return true;
}

/* Where json_fix_surrogates is in the text: between tokens of the flow
 * context, inside a plain (unquoted) scalar, a double-quoted or a
 * single-quoted scalar, or a comment. */
typedef enum { LX_NORMAL, LX_PLAIN, LX_DQ, LX_SQ, LX_COMMENT } lx_state;

static bool lx_blank(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }
static bool lx_flow(char ch) {
  return ch == ',' || ch == '[' || ch == ']' || ch == '{' || ch == '}';
}

/* libyaml refuses the UTF-16 surrogate pairs ("\ud83d\ude00") that JSON
 * encoders write for characters beyond U+FFFF. For JSON text (first
 * non-blank character '{') this returns a malloc'd copy in which each such
 * pair inside a double-quoted scalar is the YAML escape "\U0001F600" instead;
 * the copy is shorter and keeps every line break. Only double-quoted scalars
 * have escapes: the text is scanned as YAML's flow context does (plain
 * scalars, single-quoted scalars with their '' escape, comments), so a
 * backslash anywhere else stays what it is, as every YAML reader reads it.
 * Returns NULL when nothing needs rewriting; *oom reports allocation
 * failure. */
static char *json_fix_surrogates(const char *t, size_t len, size_t *outlen, bool *oom) {
  size_t i = 0;
  *oom = false;
  while (i < len && lx_blank(t[i]))
    i++;
  if (i >= len || t[i] != '{' || !memmem(t, len, "\\u", 2))
    return NULL;
  char *out = NULL;
  size_t o = 0;
  lx_state st = LX_NORMAL;
  bool after_blank = true; /* a '#' starts a comment only after a blank */
#define LX_COPY(n)                 \
  do {                             \
    if (out) {                     \
      memcpy(out + o, t + i, (n)); \
      o += (n);                    \
    }                              \
    i += (n);                      \
  } while (0)
  for (i = 0; i < len;) {
    char ch = t[i];
    switch (st) {
    case LX_NORMAL:
      if (lx_blank(ch)) {
        after_blank = true;
        LX_COPY(1);
        continue;
      }
      if (ch == '#' && after_blank)
        st = LX_COMMENT;
      else if (ch == '"')
        st = LX_DQ;
      else if (ch == '\'')
        st = LX_SQ;
      else if (!lx_flow(ch) && ch != ':' && ch != '?')
        st = LX_PLAIN;
      after_blank = false;
      LX_COPY(1);
      continue;
    case LX_PLAIN:
      /* A plain scalar ends at a flow indicator, at ": " (or ':' before a
       * flow indicator or the end) and at " #"; quotes inside it are text. */
      if (lx_flow(ch) || (ch == ':' && (i + 1 == len || lx_blank(t[i + 1]) || lx_flow(t[i + 1]))) ||
          (ch == '#' && after_blank)) {
        st = LX_NORMAL;
        continue; /* the same character again, between tokens */
      }
      after_blank = lx_blank(ch);
      LX_COPY(1);
      continue;
    case LX_SQ:
      if (ch == '\'') {
        if (i + 1 < len && t[i + 1] == '\'') {
          LX_COPY(2);
          continue;
        }
        st = LX_NORMAL;
        after_blank = false;
      }
      LX_COPY(1);
      continue;
    case LX_COMMENT:
      if (ch == '\n') {
        st = LX_NORMAL;
        after_blank = true;
      }
      LX_COPY(1);
      continue;
    case LX_DQ:
      break;
    }
    unsigned hi, lo;
    if (ch == '\\' && i + 12 <= len && t[i + 1] == 'u' && t[i + 6] == '\\' && t[i + 7] == 'u' &&
        hex4(t + i + 2, &hi) && hex4(t + i + 8, &lo) && hi >= 0xD800 && hi <= 0xDBFF &&
        lo >= 0xDC00 && lo <= 0xDFFF) {
      if (!out) {
        out = malloc(len + 1);
        if (!out) {
          *oom = true;
          return NULL;
        }
        memcpy(out, t, i);
        o = i;
      }
      unsigned cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
      o += (size_t)snprintf(out + o, 11, "\\U%08X", cp);
      i += 12;
      continue;
    }
    if (ch == '\\') {
      LX_COPY(i + 1 < len ? 2 : 1);
      continue;
    }
    if (ch == '"') {
      st = LX_NORMAL;
      after_blank = false;
    }
    LX_COPY(1);
  }
#undef LX_COPY
  if (out) {
    out[o] = '\0';
    *outlen = o;
  }
  return out;
}

/* A libyaml failure as "line L, column C: problem (context)". */
static int yaml_failure(const yaml_parser_t *p, const char *text, size_t len, td_error *err) {
  if (p->error == YAML_MEMORY_ERROR)
    return td_errorf(err, TD_ENOMEM, "out of memory while reading YAML");
  const char *problem = p->problem ? p->problem : "invalid YAML";
  if (p->error == YAML_READER_ERROR) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < p->problem_offset && i < len; i++) {
      if (text[i] == '\n')
        line++, col = 1;
      else
        col++;
    }
    return td_errorf(err, TD_EINVAL, "line %zu, column %zu: %s", line, col, problem);
  }
  if (p->context)
    return td_errorf(err, TD_EINVAL, "line %zu, column %zu: %s (%s that starts on line %zu)",
                     p->problem_mark.line + 1, p->problem_mark.column + 1, problem, p->context,
                     p->context_mark.line + 1);
  return td_errorf(err, TD_EINVAL, "line %zu, column %zu: %s", p->problem_mark.line + 1,
                   p->problem_mark.column + 1, problem);
}

int pbjson_parse(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
                 ProtobufCMessage **out, td_error *err) {
  if (out)
    *out = NULL;
  if (!desc || !out || (!text && len))
    return td_errorf(err, TD_EINVAL, "pbjson_parse: missing argument");
  if (len > PBJSON_MAX_BYTES)
    return td_errorf(err, TD_EINVAL, "document is %zu bytes; the limit is %zu bytes (4 MiB)", len,
                     PBJSON_MAX_BYTES);
  /* proto3 strings are UTF-8, and so is JSON text: a document that is not
   * is refused here, naming the first bad byte, before libyaml (which would
   * also read UTF-16) sees it. */
  size_t bad = pbjson_utf8_invalid(text ? text : "", len);
  if (bad < len) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < bad; i++) {
      if (text[i] == '\n')
        line++, col = 1;
      else if (((unsigned char)text[i] & 0xC0) != 0x80)
        col++;
    }
    return td_errorf(err, TD_EINVAL,
                     "line %zu, column %zu: not valid UTF-8 (byte 0x%02x at offset %zu); "
                     "the text must be UTF-8",
                     line, col, (unsigned)(unsigned char)text[bad], bad);
  }
  bool oom;
  size_t fixed_len = 0;
  char *fixed = json_fix_surrogates(text ? text : "", len, &fixed_len, &oom);
  if (oom)
    return td_errorf(err, TD_ENOMEM, "out of memory");
  if (fixed) {
    text = fixed;
    len = fixed_len;
  }

  yaml_parser_t parser;
  yaml_document_t doc, extra;
  int rc = 0;
  if (!yaml_parser_initialize(&parser)) {
    free(fixed);
    return td_errorf(err, TD_ENOMEM, "out of memory");
  }
  yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);
  if (!yaml_parser_load(&parser, &doc)) {
    rc = yaml_failure(&parser, text, len, err);
    goto done_parser;
  }
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (!root) {
    rc = td_errorf(err, TD_EINVAL, "line 1: the document is empty; expected a mapping of %s fields",
                   desc->name);
    goto done_doc;
  }
  /* Exactly one document: a second one is refused, not ignored. */
  if (!yaml_parser_load(&parser, &extra)) {
    rc = yaml_failure(&parser, text, len, err);
    goto done_doc;
  }
  yaml_node_t *root2 = yaml_document_get_root_node(&extra);
  if (root2)
    rc = td_errorf(err, TD_EINVAL,
                   "line %zu: a second YAML document starts here; a file holds exactly one",
                   extra.start_mark.line + 1);
  yaml_document_delete(&extra);
  if (rc)
    goto done_doc;

  pctx c = {.doc = &doc, .err = err};
  if (root->type != YAML_MAPPING_NODE) {
    char got[GOT_CAP];
    rc = perr(&c, root, "the top level must be a mapping of %s fields, got %s", desc->name,
              GOT(root));
    goto done_doc;
  }
  ProtobufCMessage *m = malloc(desc->sizeof_message);
  if (!m) {
    rc = td_errorf(err, TD_ENOMEM, "out of memory");
    goto done_doc;
  }
  protobuf_c_message_init(desc, m);
  rc = parse_message(&c, root, m);
  if (rc)
    protobuf_c_message_free_unpacked(m, NULL);
  else
    *out = m;
done_doc:
  yaml_document_delete(&doc);
done_parser:
  yaml_parser_delete(&parser);
  free(fixed);
  return rc;
}

int pbjson_parse_file(const ProtobufCMessageDescriptor *desc, const char *path,
                      ProtobufCMessage **out, td_error *err) {
  if (out)
    *out = NULL;
  if (!path)
    return td_errorf(err, TD_EINVAL, "pbjson_parse_file: missing path");
  FILE *f = fopen(path, "rb");
  if (!f)
    return td_errorf(err, errno == ENOENT ? TD_ENOTFOUND : TD_EIO, "%s: %s", path, strerror(errno));
  /* Read at most one byte past the limit, so that the size is known without
   * trusting stat (pipes and /proc files report none). */
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  int rc = 0;
  while (buf && len <= PBJSON_MAX_BYTES) {
    if (len == cap) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    size_t want = cap - len;
    if (want > PBJSON_MAX_BYTES + 1 - len)
      want = PBJSON_MAX_BYTES + 1 - len;
    size_t got = fread(buf + len, 1, want, f);
    len += got;
    if (got == 0)
      break;
  }
  if (!buf)
    rc = td_errorf(err, TD_ENOMEM, "%s: out of memory", path);
  else if (ferror(f))
    rc = td_errorf(err, TD_EIO, "%s: %s", path, strerror(errno));
  else if (len > PBJSON_MAX_BYTES)
    rc = td_errorf(err, TD_EINVAL, "%s: larger than %zu bytes (4 MiB); refusing to read it", path,
                   PBJSON_MAX_BYTES);
  fclose(f);
  if (rc == 0) {
    rc = pbjson_parse(desc, buf, len, out, err);
    if (rc)
      td_error_prefix(err, "%s", path);
  }
  free(buf);
  return rc;
}

/* ================================================================ emitting */

/* A growing output buffer; `failed` latches the first failure (no memory,
 * or a value that has no JSON form). */
typedef struct {
  char *p;
  size_t len, cap;
  bool failed;
} ebuf;

static bool eb_reserve(ebuf *b, size_t n) {
  if (b->failed)
    return false;
  if (b->len + n + 1 <= b->cap)
    return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + n + 1)
    cap *= 2;
  char *np = realloc(b->p, cap);
  if (!np) {
    b->failed = true;
    return false;
  }
  b->p = np;
  b->cap = cap;
  return true;
}

static void eb_put(ebuf *b, const char *s, size_t n) {
  if (!eb_reserve(b, n))
    return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void eb_puts(ebuf *b, const char *s) { eb_put(b, s, strlen(s)); }
static void eb_putc(ebuf *b, char ch) { eb_put(b, &ch, 1); }

static void eb_newline(ebuf *b, unsigned flags, int level) {
  if (!(flags & PBJSON_INDENT))
    return;
  eb_putc(b, '\n');
  for (int i = 0; i < level; i++)
    eb_put(b, "  ", 2);
}

/* A JSON string. Control characters, and the code points YAML readers treat
 * as line breaks or refuse (DEL, C1 controls, U+2028/9, BOM, U+FFFE/F), are
 * escaped so the output reads back through libyaml unchanged. */
static void emit_string(ebuf *b, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  char esc[12];
  eb_putc(b, '"');
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t len = td_utf8_next(s + i, n - i, &cp);
    if (len == 0) {
      eb_puts(b, "\xEF\xBF\xBD");
      i++;
      continue;
    }
    switch (cp) {
    case '"':
      eb_puts(b, "\\\"");
      break;
    case '\\':
      eb_puts(b, "\\\\");
      break;
    case '\n':
      eb_puts(b, "\\n");
      break;
    case '\r':
      eb_puts(b, "\\r");
      break;
    case '\t':
      eb_puts(b, "\\t");
      break;
    case '\b':
      eb_puts(b, "\\b");
      break;
    case '\f':
      eb_puts(b, "\\f");
      break;
    default:
      if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 || cp == 0xFEFF ||
          cp == 0xFFFE || cp == 0xFFFF) {
        snprintf(esc, sizeof esc, "\\u%04x", (unsigned)cp);
        eb_puts(b, esc);
      } else {
        eb_put(b, (const char *)s + i, len);
      }
    }
    i += len;
  }
  eb_putc(b, '"');
}

static void emit_base64(ebuf *b, const uint8_t *d, size_t n) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  eb_putc(b, '"');
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)d[i] << 16;
    if (i + 1 < n)
      v |= (uint32_t)d[i + 1] << 8;
    if (i + 2 < n)
      v |= d[i + 2];
    char q[4] = {tab[v >> 18], tab[(v >> 12) & 63], i + 1 < n ? tab[(v >> 6) & 63] : '=',
                 i + 2 < n ? tab[v & 63] : '='};
    eb_put(b, q, 4);
  }
  eb_putc(b, '"');
}

static void emit_float_text(ebuf *b, double v, bool is_float) {
  char num[40];
  if (isnan(v)) {
    eb_puts(b, "\"NaN\"");
  } else if (isinf(v)) {
    eb_puts(b, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
  } else if (v == 0 && signbit(v)) {
    /* "-0" is valid JSON, but some readers (Python's json) take it for the
     * integer 0 and lose the sign. */
    eb_puts(b, "-0.0");
  } else {
    if (is_float)
      fmt_float(num, sizeof num, (float)v);
    else
      fmt_double(num, sizeof num, v);
    eb_puts(b, num);
  }
}

static void emit_message_value(ebuf *b, const ProtobufCMessage *m, unsigned flags, int level);

/* One element of fd's type stored at p. */
static void emit_scalar(ebuf *b, const ProtobufCFieldDescriptor *fd, const void *p, unsigned flags,
                        int level) {
  char num[48];
  switch (fd->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
    snprintf(num, sizeof num, "%" PRId32, *(const int32_t *)p);
    eb_puts(b, num);
    return;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    snprintf(num, sizeof num, "%" PRIu32, *(const uint32_t *)p);
    eb_puts(b, num);
    return;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
    snprintf(num, sizeof num, "\"%" PRId64 "\"", *(const int64_t *)p);
    eb_puts(b, num);
    return;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    snprintf(num, sizeof num, "\"%" PRIu64 "\"", *(const uint64_t *)p);
    eb_puts(b, num);
    return;
  case PROTOBUF_C_TYPE_FLOAT:
    emit_float_text(b, *(const float *)p, true);
    return;
  case PROTOBUF_C_TYPE_DOUBLE:
    emit_float_text(b, *(const double *)p, false);
    return;
  case PROTOBUF_C_TYPE_BOOL:
    eb_puts(b, *(const protobuf_c_boolean *)p ? "true" : "false");
    return;
  case PROTOBUF_C_TYPE_ENUM: {
    int v = *(const int *)p;
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(fd->descriptor, v);
    if (ev) {
      emit_string(b, ev->name, strlen(ev->name));
    } else {
      snprintf(num, sizeof num, "%d", v);
      eb_puts(b, num);
    }
    return;
  }
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(const char *const *)p;
    emit_string(b, s ? s : "", s ? strlen(s) : 0);
    return;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    const ProtobufCBinaryData *bd = p;
    emit_base64(b, bd->data, bd->data ? bd->len : 0);
    return;
  }
  case PROTOBUF_C_TYPE_MESSAGE:
    emit_message_value(b, *(const ProtobufCMessage *const *)p, flags, level);
    return;
  }
}

/* A map field as a JSON object keyed by the entries' keys. */
static void emit_map(ebuf *b, const ProtobufCFieldDescriptor *fd,
                     const ProtobufCMessage *const *entries, size_t n, unsigned flags, int level) {
  const ProtobufCMessageDescriptor *ed = fd->descriptor;
  const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
  eb_putc(b, '{');
  for (size_t i = 0; i < n; i++) {
    const ProtobufCMessage *e = entries[i];
    if (i)
      eb_putc(b, ',');
    eb_newline(b, flags, level + 1);
    const void *kp = PB_CAT(e, kf->offset);
    if (kf->type == PROTOBUF_C_TYPE_STRING) {
      const char *s = *(const char *const *)kp;
      emit_string(b, s ? s : "", s ? strlen(s) : 0);
    } else {
      char key[48];
      double unused;
      if (!num_read(kf->type, kp, &unused, key, sizeof key))
        key[0] = '\0';
      emit_string(b, key, strlen(key));
    }
    eb_puts(b, (flags & PBJSON_INDENT) ? ": " : ":");
    emit_scalar(b, vf, PB_CAT(e, vf->offset), flags, level + 1);
  }
  if (n)
    eb_newline(b, flags, level);
  eb_putc(b, '}');
}

static void emit_object(ebuf *b, const ProtobufCMessage *m, unsigned flags, int level) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  bool any = false;
  eb_putc(b, '{');
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    bool repeated = fd->label == PROTOBUF_C_LABEL_REPEATED, as_null = false;
    size_t count = repeated ? *(const size_t *)PB_CAT(m, fd->quantifier_offset) : 0;
    if (repeated) {
      if (count == 0 && !(flags & PBJSON_EMIT_DEFAULTS))
        continue;
    } else if (!field_present(m, fd)) {
      if (!(flags & PBJSON_EMIT_DEFAULTS) || (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
        continue;
      as_null = fd->type == PROTOBUF_C_TYPE_MESSAGE || fd->label == PROTOBUF_C_LABEL_OPTIONAL;
    }
    if (any)
      eb_putc(b, ',');
    any = true;
    eb_newline(b, flags, level + 1);
    char jn[256];
    if (flags & PBJSON_PROTO_NAMES)
      snprintf(jn, sizeof jn, "%s", fd->name);
    else
      json_name(fd->name, jn, sizeof jn);
    emit_string(b, jn, strlen(jn));
    eb_puts(b, (flags & PBJSON_INDENT) ? ": " : ":");
    const void *p = PB_CAT(m, fd->offset);
    if (as_null) {
      eb_puts(b, "null");
    } else if (!repeated) {
      emit_scalar(b, fd, p, flags, level + 1);
    } else if (is_map_field(fd)) {
      emit_map(b, fd, *(const ProtobufCMessage *const *const *)p, count, flags, level + 1);
    } else {
      const char *arr = *(const char *const *)p;
      size_t esz = elem_size(fd->type);
      eb_putc(b, '[');
      for (size_t k = 0; k < count; k++) {
        if (k)
          eb_putc(b, ',');
        eb_newline(b, flags, level + 2);
        emit_scalar(b, fd, arr + k * esz, flags, level + 2);
      }
      if (count)
        eb_newline(b, flags, level + 1);
      eb_putc(b, ']');
    }
  }
  if (any)
    eb_newline(b, flags, level);
  eb_putc(b, '}');
}

static void emit_message_value(ebuf *b, const ProtobufCMessage *m, unsigned flags, int level) {
  if (!m) {
    eb_puts(b, "null");
    return;
  }
  const ProtobufCMessageDescriptor *d = m->descriptor;
  wkt_kind k = wkt_of(d);
  if (k == WKT_WRAPPER) {
    emit_scalar(b, &d->fields[0], PB_CAT(m, d->fields[0].offset), flags, level);
  } else if (k == WKT_TIMESTAMP || k == WKT_DURATION) {
    const ProtobufCFieldDescriptor *fs, *fns;
    time_fields(d, &fs, &fns);
    int64_t secs = *(const int64_t *)PB_CAT(m, fs->offset);
    int32_t nanos = *(const int32_t *)PB_CAT(m, fns->offset);
    char text[64];
    bool ok = k == WKT_TIMESTAMP ? fmt_timestamp(text, sizeof text, secs, nanos)
                                 : fmt_duration(text, sizeof text, secs, nanos);
    if (!ok) {
      b->failed = true;
      return;
    }
    eb_putc(b, '"');
    eb_puts(b, text);
    eb_putc(b, '"');
  } else {
    emit_object(b, m, flags, level);
  }
}

char *pbjson_emit(const ProtobufCMessage *m, unsigned flags) {
  if (!m)
    return NULL;
  ebuf b = {0};
  emit_message_value(&b, m, flags, 0);
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* ============================================================== validation */

typedef struct {
  td_error *err;
  size_t path_len;
  char path[PATH_CAP];
} vctx;

static size_t vpath_push(vctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t vpath_push(vctx *c, const char *fmt, ...) {
  size_t old = c->path_len;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->path + old, sizeof c->path - old, fmt, ap);
  va_end(ap);
  c->path_len = old + strlen(c->path + old);
  return old;
}

static size_t vpath_field(vctx *c, const char *name) {
  return c->path_len ? vpath_push(c, ".%s", name) : vpath_push(c, "%s", name);
}

static void vpath_pop(vctx *c, size_t old) {
  c->path_len = old;
  c->path[old] = '\0';
}

/* Reports a failed rule at the current path. */
static int vfail(vctx *c, const pbjson_rule *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int vfail(vctx *c, const pbjson_rule *r, const char *fmt, ...) {
  char what[TD_ERRMSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  const char *sep = r->hint ? "; " : "", *hint = r->hint ? r->hint : "";
  if (c->path_len)
    return td_errorf(c->err, TD_EINVAL, "%s: %s%s%s", c->path, what, sep, hint);
  return td_errorf(c->err, TD_EINVAL, "%s%s%s", what, sep, hint);
}

/* Whether a bound can apply to fd: a numeric, bool or enum field, or a
 * wrapper of one. */
static bool numeric_field(const ProtobufCFieldDescriptor *fd) {
  ProtobufCType t = fd->type;
  if (t == PROTOBUF_C_TYPE_MESSAGE) {
    const ProtobufCMessageDescriptor *d = fd->descriptor;
    if (wkt_of(d) != WKT_WRAPPER)
      return false;
    t = d->fields[0].type;
  }
  return t != PROTOBUF_C_TYPE_STRING && t != PROTOBUF_C_TYPE_BYTES && t != PROTOBUF_C_TYPE_MESSAGE;
}

/* Checks one element of a numeric_field (stored at p) against a bound,
 * seeing through wrappers; an absent wrapper is not checked. */
static int check_bound(vctx *c, const pbjson_rule *r, const ProtobufCFieldDescriptor *fd,
                       const void *p) {
  ProtobufCType t = fd->type;
  if (t == PROTOBUF_C_TYPE_MESSAGE) {
    const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
    if (!sub)
      return 0;
    t = sub->descriptor->fields[0].type;
    p = PB_CAT(sub, sub->descriptor->fields[0].offset);
  }
  double v;
  char text[48], bound[40];
  if (!num_read(t, p, &v, text, sizeof text))
    return 0;
  bool ok;
  const char *op;
  switch (r->kind) {
  case PBJSON_RULE_MIN:
    ok = v >= r->bound, op = ">=";
    break;
  case PBJSON_RULE_GT:
    ok = v > r->bound, op = ">";
    break;
  case PBJSON_RULE_MAX:
    ok = v <= r->bound, op = "<=";
    break;
  default:
    ok = v < r->bound, op = "<";
    break;
  }
  if (ok)
    return 0;
  fmt_double(bound, sizeof bound, r->bound);
  return vfail(c, r, "must be %s %s (got %s)", op, bound, text);
}

/* The members of the oneof whose case lives at `qoff`, as "a, b, c". */
static void oneof_members(const ProtobufCMessageDescriptor *d, unsigned qoff, char *out,
                          size_t cap) {
  size_t o = 0;
  out[0] = '\0';
  for (unsigned i = 0; i < d->n_fields && o < cap; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && fd->quantifier_offset == qoff)
      o += (size_t)snprintf(out + o, cap - o, "%s%s", o ? ", " : "", fd->name);
  }
}

static int check_oneof(vctx *c, const pbjson_rule *r, const ProtobufCMessage *m, unsigned qoff) {
  if (*(const uint32_t *)PB_CAT(m, qoff) != 0)
    return 0;
  char names[TD_ERRMSG_MAX / 2];
  oneof_members(m->descriptor, qoff, names, sizeof names);
  return vfail(c, r, "set one of: %s", names);
}

static int apply_rule(vctx *c, const pbjson_rule *r, const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const ProtobufCFieldDescriptor *fd = NULL;
  if (r->field) {
    fd = protobuf_c_message_descriptor_get_field_by_name(d, r->field);
    if (!fd)
      return td_errorf(c->err, TD_EINVAL, "validation rule for %s names no field '%s'", d->name,
                       r->field);
  }
  if (r->kind == PBJSON_RULE_ONEOF_REQUIRED) {
    if (fd) {
      if (!(fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
        return td_errorf(c->err, TD_EINVAL, "validation rule for %s: '%s' is not in a oneof",
                         d->name, r->field);
      return check_oneof(c, r, m, fd->quantifier_offset);
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
      const ProtobufCFieldDescriptor *f = &d->fields[i];
      if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
        continue;
      bool first = true; /* check each oneof once, at its first member */
      for (unsigned j = 0; j < i; j++)
        if ((d->fields[j].flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            d->fields[j].quantifier_offset == f->quantifier_offset)
          first = false;
      int rc = first ? check_oneof(c, r, m, f->quantifier_offset) : 0;
      if (rc)
        return rc;
    }
    return 0;
  }
  if (!fd)
    return td_errorf(c->err, TD_EINVAL, "validation rule for %s has no field", d->name);
  if (r->kind != PBJSON_RULE_REQUIRED && (r->kind < PBJSON_RULE_MIN || r->kind > PBJSON_RULE_LT))
    return td_errorf(c->err, TD_EINVAL, "validation rule for %s.%s has unknown kind %d", d->name,
                     fd->name, r->kind);
  if (r->kind != PBJSON_RULE_REQUIRED && !numeric_field(fd))
    return td_errorf(c->err, TD_EINVAL, "validation rule for %s.%s: a bound needs a numeric field",
                     d->name, fd->name);
  size_t old = vpath_field(c, fd->name);
  int rc = 0;
  if (r->kind == PBJSON_RULE_REQUIRED) {
    bool set = fd->label == PROTOBUF_C_LABEL_REPEATED
                   ? *(const size_t *)PB_CAT(m, fd->quantifier_offset) > 0
                   : field_present(m, fd);
    if (!set)
      rc = vfail(c, r, "required");
  } else if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
    size_t n = *(const size_t *)PB_CAT(m, fd->quantifier_offset), esz = elem_size(fd->type);
    const char *arr = *(const char *const *)PB_CAT(m, fd->offset);
    for (size_t i = 0; i < n && rc == 0; i++) {
      size_t o2 = vpath_push(c, "[%zu]", i);
      rc = check_bound(c, r, fd, arr + i * esz);
      if (rc == 0)
        vpath_pop(c, o2);
    }
  } else if (field_present(m, fd)) {
    rc = check_bound(c, r, fd, PB_CAT(m, fd->offset));
  }
  if (rc == 0)
    vpath_pop(c, old);
  return rc;
}

/* One element of a field for PBJSON_RULE_STRICT (wrappers seen through). */
static int check_strict_elem(vctx *c, const pbjson_rule *r, const ProtobufCFieldDescriptor *fd,
                             const void *p) {
  ProtobufCType t = fd->type;
  if (t == PROTOBUF_C_TYPE_MESSAGE) {
    const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
    if (!sub || wkt_of(sub->descriptor) != WKT_WRAPPER)
      return 0;
    t = sub->descriptor->fields[0].type;
    p = PB_CAT(sub, sub->descriptor->fields[0].offset);
  }
  if (t == PROTOBUF_C_TYPE_ENUM) {
    int v = *(const int *)p;
    if (!protobuf_c_enum_descriptor_get_value(fd->descriptor, v)) {
      const ProtobufCEnumDescriptor *ed = fd->descriptor;
      char names[TD_ERRMSG_MAX / 2];
      enum_choices(ed, "", 0, names, sizeof names);
      return vfail(c, r, "%d is not a value of %s (%s)", v, ed->name, names);
    }
  } else if (t == PROTOBUF_C_TYPE_DOUBLE || t == PROTOBUF_C_TYPE_FLOAT) {
    double v = t == PROTOBUF_C_TYPE_DOUBLE ? *(const double *)p : *(const float *)p;
    if (!isfinite(v))
      return vfail(c, r, "must be a finite number (got %s)",
                   isnan(v) ? "NaN"
                   : v > 0  ? "Infinity"
                            : "-Infinity");
  }
  return 0;
}

static int check_strict(vctx *c, const pbjson_rule *r, const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    ProtobufCType t = fd->type;
    if (t != PROTOBUF_C_TYPE_ENUM && t != PROTOBUF_C_TYPE_DOUBLE && t != PROTOBUF_C_TYPE_FLOAT &&
        t != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    size_t old = vpath_field(c, fd->name);
    int rc = 0;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)PB_CAT(m, fd->quantifier_offset), esz = elem_size(t);
      const char *arr = *(const char *const *)PB_CAT(m, fd->offset);
      for (size_t k = 0; k < n && rc == 0; k++) {
        size_t o2 = vpath_push(c, "[%zu]", k);
        rc = check_strict_elem(c, r, fd, arr + k * esz);
        if (rc == 0)
          vpath_pop(c, o2);
      }
    } else if (field_present(m, fd) || t == PROTOBUF_C_TYPE_ENUM) {
      rc = check_strict_elem(c, r, fd, PB_CAT(m, fd->offset));
    }
    if (rc)
      return rc;
    vpath_pop(c, old);
  }
  return 0;
}

static int validate_message(vctx *c, const ProtobufCMessage *m, const pbjson_rule *rules,
                            size_t nrules) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  for (size_t i = 0; i < nrules; i++) {
    if (rules[i].kind == PBJSON_RULE_STRICT) {
      int rc = (!rules[i].message || strcmp(rules[i].message, d->name) == 0)
                   ? check_strict(c, &rules[i], m)
                   : 0;
      if (rc)
        return rc;
      continue;
    }
    if (rules[i].message && strcmp(rules[i].message, d->name) == 0) {
      int rc = apply_rule(c, &rules[i], m);
      if (rc)
        return rc;
    }
  }
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)PB_CAT(m, fd->quantifier_offset);
      const ProtobufCMessage *const *arr =
          *(const ProtobufCMessage *const *const *)PB_CAT(m, fd->offset);
      for (size_t k = 0; k < n; k++) {
        if (!arr[k])
          continue;
        size_t old = vpath_field(c, fd->name);
        vpath_push(c, "[%zu]", k);
        int rc = validate_message(c, arr[k], rules, nrules);
        if (rc)
          return rc;
        vpath_pop(c, old);
      }
    } else if (field_present(m, fd)) {
      size_t old = vpath_field(c, fd->name);
      int rc = validate_message(c, *(const ProtobufCMessage *const *)PB_CAT(m, fd->offset), rules,
                                nrules);
      if (rc)
        return rc;
      vpath_pop(c, old);
    }
  }
  return 0;
}

int pbjson_validate(const ProtobufCMessage *m, const pbjson_rule *rules, size_t nrules,
                    td_error *err) {
  if (!m || (!rules && nrules))
    return td_errorf(err, TD_EINVAL, "pbjson_validate: missing argument");
  vctx c = {.err = err};
  return validate_message(&c, m, rules, nrules);
}

/* ================================================================== UTF-8 */

size_t pbjson_utf8_invalid(const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t len = td_utf8_next(s + i, n - i, &cp);
    if (len == 0)
      return i;
    i += len;
  }
  return n;
}

/* Checks one string at the current path. */
static int utf8_string(vctx *c, const char *s) {
  size_t n = s ? strlen(s) : 0;
  size_t bad = pbjson_utf8_invalid(s, n);
  if (bad == n)
    return 0;
  return td_errorf(c->err, TD_EINVAL, "%s: not valid UTF-8 (byte 0x%02x at offset %zu)",
                   c->path_len ? c->path : "(message)", (unsigned)(unsigned char)s[bad], bad);
}

/* Every string field of m and of its submessages (repeated, oneof members
 * and map entries included), depth first in field order. */
static int utf8_message(vctx *c, const ProtobufCMessage *m, int depth) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (depth > PBJSON_MAX_DEPTH)
    return td_errorf(c->err, TD_EINVAL, "%s: messages nested deeper than %d levels",
                     c->path_len ? c->path : "(message)", PBJSON_MAX_DEPTH);
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    if (fd->type != PROTOBUF_C_TYPE_STRING && fd->type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)PB_CAT(m, fd->quantifier_offset);
      const void *const *arr = *(const void *const *const *)PB_CAT(m, fd->offset);
      for (size_t k = 0; k < n; k++) {
        if (!arr[k])
          continue;
        size_t old = vpath_field(c, fd->name);
        vpath_push(c, "[%zu]", k);
        int rc = fd->type == PROTOBUF_C_TYPE_STRING ? utf8_string(c, arr[k])
                                                    : utf8_message(c, arr[k], depth + 1);
        if (rc)
          return rc;
        vpath_pop(c, old);
      }
      continue;
    }
    /* A oneof member that is not selected shares its storage with one that
     * is: only the selected one may be read. */
    if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && !oneof_selected(m, fd))
      continue;
    const void *p = *(const void *const *)PB_CAT(m, fd->offset);
    if (!p)
      continue;
    size_t old = vpath_field(c, fd->name);
    int rc = fd->type == PROTOBUF_C_TYPE_STRING ? utf8_string(c, p) : utf8_message(c, p, depth + 1);
    if (rc)
      return rc;
    vpath_pop(c, old);
  }
  return 0;
}

int pbjson_check_utf8(const ProtobufCMessage *m, const char *prefix, td_error *err) {
  if (!m)
    return td_errorf(err, TD_EINVAL, "pbjson_check_utf8: missing message");
  vctx c = {.err = err};
  if (prefix && *prefix)
    vpath_push(&c, "%s", prefix);
  return utf8_message(&c, m, 0);
}
