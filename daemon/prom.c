/* Prometheus text exposition and its HTTP endpoint (see prom.h). */
#include "prom.h"

#include <arpa/inet.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"

/* ---- values */

/* Whether v printed with p significant digits reads back as v. */
static int round_trips(double v, int p, char *out, size_t cap) {
  snprintf(out, cap, "%.*e", p - 1, v);
  return strtod(out, NULL) == v;
}

size_t td_prom_format_value(double v, char out[TD_PROM_VALUE_MAX]) {
  const char *special = NULL;
  if (isnan(v))
    special = "NaN";
  else if (isinf(v))
    special = v > 0 ? "+Inf" : "-Inf";
  else if (v == 0)
    special = signbit(v) ? "-0" : "0";
  if (special) {
    size_t n = strlen(special);
    memcpy(out, special, n + 1);
    return n;
  }
  /* The fewest significant digits that round-trip. If p digits do, so do
   * p + 1 (the p-digit decimal is also a (p+1)-digit one, and the nearest
   * (p+1)-digit decimal is no farther from v), so bisect over 1..17. */
  char e[TD_PROM_VALUE_MAX];
  int lo = 1, hi = 17;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (round_trips(v, mid, e, sizeof e))
      hi = mid;
    else
      lo = mid + 1;
  }
  int p = lo;
  snprintf(e, sizeof e, "%.*e", p - 1, v);
  int exp10 = atoi(strchr(e, 'e') + 1);
  /* Go's FormatFloat(v, 'g', -1, 64): exponent form below 1e-4 and from
   * 1e6 up, plain decimals in between. */
  int n;
  if (exp10 < -4 || exp10 >= 6)
    n = snprintf(out, TD_PROM_VALUE_MAX, "%s", e);
  else
    n = snprintf(out, TD_PROM_VALUE_MAX, "%.*f", p - 1 - exp10 > 0 ? p - 1 - exp10 : 0, v);
  return (size_t)n;
}

/* ---- histogram accumulator */

int td_prom_hist_init(td_prom_hist *h, const double *bounds, size_t n_bounds, td_error *err) {
  memset(h, 0, sizeof *h);
  for (size_t i = 0; i < n_bounds; i++) {
    if (!isfinite(bounds[i]))
      return td_errorf(err, TD_EINVAL,
                       "histogram bound %zu is %g; bounds must be finite "
                       "(the +Inf bucket is always there)",
                       i, bounds[i]);
    if (i > 0 && !(bounds[i] > bounds[i - 1]))
      return td_errorf(err, TD_EINVAL,
                       "histogram bounds must increase: bound %zu (%g) "
                       "follows %g",
                       i, bounds[i], bounds[i - 1]);
  }
  /* One block: the bounds, then the counts (both 8-byte elements). */
  void *block = calloc(1, n_bounds * sizeof(double) + (n_bounds + 1) * sizeof(uint64_t));
  if (!block)
    return td_errorf(err, TD_ENOMEM, "out of memory for a histogram of %zu buckets", n_bounds + 1);
  h->n_bounds = n_bounds;
  h->bounds = block;
  h->counts = (uint64_t *)(h->bounds + n_bounds);
  if (n_bounds)
    memcpy(h->bounds, bounds, n_bounds * sizeof(double));
  return TD_OK;
}

void td_prom_hist_free(td_prom_hist *h) {
  free(h->bounds);
  memset(h, 0, sizeof *h);
}

void td_prom_hist_observe(td_prom_hist *h, double v) {
  /* The first bound >= v; NaN compares false everywhere and lands in the
   * +Inf bucket, as in the Go client. */
  size_t lo = 0, hi = h->n_bounds;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (v <= h->bounds[mid])
      hi = mid;
    else
      lo = mid + 1;
  }
  h->counts[lo]++;
  h->count++;
  h->sum += v;
}

void td_prom_hist_clear(td_prom_hist *h) {
  memset(h->counts, 0, (h->n_bounds + 1) * sizeof(uint64_t));
  h->count = 0;
  h->sum = 0;
}

int td_prom_hist_merge(td_prom_hist *dst, const td_prom_hist *src) {
  if (dst->n_bounds != src->n_bounds ||
      (dst->n_bounds && memcmp(dst->bounds, src->bounds, dst->n_bounds * sizeof(double))))
    return TD_EINVAL;
  for (size_t i = 0; i <= dst->n_bounds; i++)
    dst->counts[i] += src->counts[i];
  dst->count += src->count;
  dst->sum += src->sum;
  return TD_OK;
}

int td_prom_bounds_exponential(double *out, size_t n, double start, double factor) {
  if (!(start > 0) || !(factor > 1) || !isfinite(start) || !isfinite(factor))
    return TD_EINVAL;
  double b = start;
  for (size_t i = 0; i < n; i++, b *= factor)
    out[i] = b;
  return TD_OK;
}

/* ---- exposition text */

static const char *type_name(td_prom_type t) {
  switch (t) {
  case TD_PROM_COUNTER:
    return "counter";
  case TD_PROM_GAUGE:
    return "gauge";
  case TD_PROM_HISTOGRAM:
    return "histogram";
  case TD_PROM_UNTYPED:
    return "untyped";
  }
  return NULL;
}

void td_prom_buf_init(td_prom_buf *b) {
  memset(b, 0, sizeof *b);
  b->cur = SIZE_MAX;
}

void td_prom_buf_free(td_prom_buf *b) {
  free(b->data);
  free(b->names);
  td_prom_buf_init(b);
}

void td_prom_buf_reset(td_prom_buf *b) {
  b->len = 0;
  if (b->data)
    b->data[0] = '\0';
  b->names_len = 0;
  b->cur = SIZE_MAX;
  b->status = TD_OK;
  td_error_clear(&b->err);
}

int td_prom_buf_status(const td_prom_buf *b, td_error *err) {
  if (err && b->status)
    *err = b->err;
  return b->status;
}

/* Records the first failure; every later call sees it. */
__attribute__((format(printf, 3, 4))) static int buf_fail(td_prom_buf *b, int code, const char *fmt,
                                                          ...) {
  if (b->status)
    return b->status;
  va_list ap;
  va_start(ap, fmt);
  b->err.code = code;
  int n = snprintf(b->err.msg, sizeof b->err.msg, "prometheus text: ");
  vsnprintf(b->err.msg + n, sizeof b->err.msg - (size_t)n, fmt, ap);
  va_end(ap);
  b->status = code;
  return code;
}

/* Grows *p (holding *cap bytes) to hold at least need bytes. */
static int grow(char **p, size_t *cap, size_t need) {
  if (need <= *cap)
    return 0;
  size_t c = *cap ? *cap : 256;
  while (c < need)
    c *= 2;
  char *q = realloc(*p, c);
  if (!q)
    return -1;
  *p = q;
  *cap = c;
  return 0;
}

static void put(td_prom_buf *b, const char *s, size_t n) {
  if (b->status)
    return;
  if (grow(&b->data, &b->cap, b->len + n + 1)) {
    buf_fail(b, TD_ENOMEM, "out of memory growing the text past %zu bytes", b->len);
    return;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

static void puts_(td_prom_buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_value(td_prom_buf *b, double v) {
  char s[TD_PROM_VALUE_MAX];
  put(b, s, td_prom_format_value(v, s));
}

static void put_u64(td_prom_buf *b, uint64_t v) {
  char s[24];
  int n = snprintf(s, sizeof s, "%llu", (unsigned long long)v);
  put(b, s, (size_t)n);
}

/* Length of the well-formed UTF-8 sequence at s (which is not ASCII), or 0:
 * no overlong forms, surrogates or code points past U+10FFFF. */
static size_t utf8_len(const unsigned char *s) {
  unsigned c = s[0];
  size_t n;
  unsigned min;
  if (c >= 0xC2 && c <= 0xDF)
    n = 2, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF)
    n = 3, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4)
    n = 4, min = 0x10000;
  else
    return 0;
  unsigned cp = c & (0x7F >> n);
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n;
}

/* Writes s escaped: backslash and newline always, the double quote in
 * label values (quote != 0); bytes that are not UTF-8 become U+FFFD. */
static void put_escaped(td_prom_buf *b, const char *s, int quote) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    /* The longest run that needs no change goes out in one piece. */
    const unsigned char *run = p;
    for (;;) {
      if (*p == 0 || *p == '\\' || *p == '\n' || (quote && *p == '"'))
        break;
      if (*p < 0x80) {
        p++;
        continue;
      }
      size_t n = utf8_len(p);
      if (!n)
        break;
      p += n;
    }
    put(b, (const char *)run, (size_t)(p - run));
    if (*p == 0)
      break;
    if (*p == '\\')
      put(b, "\\\\", 2);
    else if (*p == '\n')
      put(b, "\\n", 2);
    else if (*p == '"')
      put(b, "\\\"", 2);
    else
      put(b, "\xEF\xBF\xBD", 3);
    p++;
  }
}

static int valid_metric_name(const char *s) {
  if (!s || !*s)
    return 0;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
             (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return 0;
  }
  return 1;
}

static int valid_label_name(const char *s) {
  if (!s || !*s || (s[0] == '_' && s[1] == '_'))
    return 0;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
             (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return 0;
  }
  return 1;
}

int td_prom_family(td_prom_buf *b, const char *name, td_prom_type type, const char *help) {
  if (b->status)
    return b->status;
  if (!valid_metric_name(name))
    return buf_fail(b, TD_EINVAL, "metric name \"%s\" is not [a-zA-Z_:][a-zA-Z0-9_:]*",
                    name ? name : "(null)");
  if (!type_name(type))
    return buf_fail(b, TD_EINVAL, "family %s: unknown type %d", name, (int)type);
  if (b->cur != SIZE_MAX && strcmp(b->names + b->cur, name) == 0) {
    if (type != b->cur_type)
      return buf_fail(b, TD_EINVAL, "family %s begun as a %s, then as a %s", name,
                      type_name(b->cur_type), type_name(type));
    return TD_OK;
  }
  for (size_t off = 0; off < b->names_len; off += strlen(b->names + off) + 1)
    if (strcmp(b->names + off, name) == 0)
      return buf_fail(b, TD_EINVAL,
                      "family %s begun twice; a family's samples must be "
                      "written together",
                      name);
  size_t n = strlen(name) + 1;
  if (grow(&b->names, &b->names_cap, b->names_len + n))
    return buf_fail(b, TD_ENOMEM, "out of memory recording family %s", name);
  memcpy(b->names + b->names_len, name, n);
  b->cur = b->names_len;
  b->names_len += n;
  b->cur_type = type;
  if (help) {
    puts_(b, "# HELP ");
    puts_(b, name);
    put(b, " ", 1);
    put_escaped(b, help, 0);
    put(b, "\n", 1);
  }
  puts_(b, "# TYPE ");
  puts_(b, name);
  put(b, " ", 1);
  puts_(b, type_name(type));
  put(b, "\n", 1);
  return b->status;
}

/* Checks the labels of a sample of the current family (which must exist
 * and be a histogram exactly when `histogram`). */
static int check_sample(td_prom_buf *b, const td_prom_label *labels, size_t n, int histogram) {
  if (b->status)
    return b->status;
  if (b->cur == SIZE_MAX)
    return buf_fail(b, TD_EINVAL, "a sample before any family was begun");
  const char *family = b->names + b->cur;
  if (histogram != (b->cur_type == TD_PROM_HISTOGRAM))
    return buf_fail(b, TD_EINVAL, "family %s is a %s; write its samples with %s", family,
                    type_name(b->cur_type), histogram ? "td_prom_sample" : "td_prom_histogram");
  for (size_t i = 0; i < n; i++) {
    if (!valid_label_name(labels[i].name))
      return buf_fail(b, TD_EINVAL,
                      "family %s: label name \"%s\" is not "
                      "[a-zA-Z_][a-zA-Z0-9_]* or starts with __",
                      family, labels[i].name ? labels[i].name : "(null)");
    if (!labels[i].value)
      return buf_fail(b, TD_EINVAL, "family %s: label %s has no value", family, labels[i].name);
    if (histogram && strcmp(labels[i].name, "le") == 0)
      return buf_fail(b, TD_EINVAL, "family %s: label le is the bucket bound's", family);
    for (size_t j = 0; j < i; j++)
      if (strcmp(labels[i].name, labels[j].name) == 0)
        return buf_fail(b, TD_EINVAL, "family %s: label %s given twice", family, labels[i].name);
  }
  return TD_OK;
}

/* name[suffix]{labels[,le="le"]} with the braces left out when empty. */
static void put_series(td_prom_buf *b, const char *suffix, const td_prom_label *labels, size_t n,
                       const char *le) {
  puts_(b, b->names + b->cur);
  puts_(b, suffix);
  if (n == 0 && !le)
    return;
  put(b, "{", 1);
  for (size_t i = 0; i < n; i++) {
    if (i)
      put(b, ",", 1);
    puts_(b, labels[i].name);
    put(b, "=\"", 2);
    put_escaped(b, labels[i].value, 1);
    put(b, "\"", 1);
  }
  if (le) {
    puts_(b, n ? ",le=\"" : "le=\"");
    puts_(b, le);
    put(b, "\"", 1);
  }
  put(b, "}", 1);
}

int td_prom_sample(td_prom_buf *b, const td_prom_label *labels, size_t n_labels, double value) {
  if (check_sample(b, labels, n_labels, 0))
    return b->status;
  put_series(b, "", labels, n_labels, NULL);
  put(b, " ", 1);
  put_value(b, value);
  put(b, "\n", 1);
  return b->status;
}

int td_prom_histogram(td_prom_buf *b, const td_prom_label *labels, size_t n_labels,
                      const td_prom_hist *h) {
  if (check_sample(b, labels, n_labels, 1))
    return b->status;
  uint64_t cumulative = 0;
  char le[TD_PROM_VALUE_MAX];
  for (size_t i = 0; i <= h->n_bounds; i++) {
    cumulative += h->counts[i];
    if (i < h->n_bounds)
      td_prom_format_value(h->bounds[i], le);
    else
      memcpy(le, "+Inf", 5);
    put_series(b, "_bucket", labels, n_labels, le);
    put(b, " ", 1);
    put_u64(b, cumulative);
    put(b, "\n", 1);
  }
  put_series(b, "_sum", labels, n_labels, NULL);
  put(b, " ", 1);
  put_value(b, h->sum);
  put(b, "\n", 1);
  put_series(b, "_count", labels, n_labels, NULL);
  put(b, " ", 1);
  put_u64(b, h->count);
  put(b, "\n", 1);
  return b->status;
}

int td_prom_counter(td_prom_buf *b, const char *name, const char *help, double value) {
  if (td_prom_family(b, name, TD_PROM_COUNTER, help))
    return b->status;
  return td_prom_sample(b, NULL, 0, value);
}

int td_prom_gauge(td_prom_buf *b, const char *name, const char *help, double value) {
  if (td_prom_family(b, name, TD_PROM_GAUGE, help))
    return b->status;
  return td_prom_sample(b, NULL, 0, value);
}

/* ---- HTTP endpoint */

/* Connections served at once (a Prometheus server keeps one open) and the
 * seconds an idle one is kept: longer than a usual scrape interval, so a
 * scraper's connection stays alive between scrapes. */
#define PROM_MAX_CONNECTIONS 32
#define PROM_IDLE_TIMEOUT_SEC 30

struct td_prom_server {
  struct MHD_Daemon *mhd;
  int port;
  char addr[64]; /* as given, for messages */
  pthread_mutex_t mu;
  /* Guarded by mu. */
  char *text; /* the rendering served, owned; NULL until the first publish */
  size_t len;
  int starting;        /* libmicrohttpd's messages go to start_msg, not the log */
  char start_msg[256]; /* its first message while starting */
};

/* libmicrohttpd's own messages: while starting they explain a failure to
 * the caller; afterwards they are warnings in the log. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  td_prom_server *s = cls;
  char msg[256];
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n && (msg[n - 1] == '\n' || msg[n - 1] == '.' || msg[n - 1] == ' '))
    msg[--n] = '\0';
  for (size_t i = 0; i < n; i++) /* one logfmt value: no quotes, no line breaks */
    if (msg[i] == '"' || msg[i] == '\\' || (unsigned char)msg[i] < 0x20)
      msg[i] = '\'';
  pthread_mutex_lock(&s->mu);
  int starting = s->starting;
  if (starting && !s->start_msg[0])
    snprintf(s->start_msg, sizeof s->start_msg, "%s", msg);
  pthread_mutex_unlock(&s->mu);
  if (!starting)
    td_log(TD_LOG_WARN, "metrics endpoint", "addr=%s detail=\"%s\"", s->addr, msg);
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *body,
                                  const char *allow) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
  if (!r)
    return MHD_NO;
  enum MHD_Result ok =
      MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
  if (ok == MHD_YES && allow)
    ok = MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
  if (ok == MHD_YES)
    ok = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ok;
}

/* Errors are answered on a request's first call, before any body is read
 * (libmicrohttpd then refuses the body and closes the connection). A
 * scrape is answered on the second call, once the request is complete, so
 * that the connection can be kept alive for the next one. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls) {
  static char seen; /* *req_cls after the first call */
  td_prom_server *s = cls;
  if (!*req_cls) {
    if (strcmp(url, "/metrics") != 0)
      return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: the metrics are at /metrics\n", NULL);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
      return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED,
                        "method not allowed: /metrics answers GET and HEAD\n", "GET, HEAD");
    *req_cls = &seen;
    return MHD_YES;
  }
  if (*upload_data_size) { /* a body on a GET means nothing: dropped */
    *upload_data_size = 0;
    return MHD_YES;
  }
  pthread_mutex_lock(&s->mu);
  struct MHD_Response *r = MHD_create_response_from_buffer(s->len, s->text, MHD_RESPMEM_MUST_COPY);
  pthread_mutex_unlock(&s->mu);
  if (!r)
    return MHD_NO;
  enum MHD_Result ok =
      MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, TD_PROM_CONTENT_TYPE);
  if (ok == MHD_YES)
    ok = MHD_queue_response(c, MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ok;
}

/* Parses "HOST:PORT" into *sa. */
static int parse_addr(const char *addr, struct sockaddr_storage *sa, td_error *err) {
  const char *usage = "give HOST:PORT with an IPv4 address, [IPv6] or localhost, "
                      "e.g. 127.0.0.1:9400";
  if (!addr || !*addr)
    return td_errorf(err, TD_EINVAL, "metrics address is empty; %s", usage);
  const char *colon = strrchr(addr, ':');
  if (!colon)
    return td_errorf(err, TD_EINVAL, "metrics address \"%s\" has no port; %s", addr, usage);
  char host[64];
  const char *h = addr;
  size_t hlen = (size_t)(colon - addr);
  int bracketed = addr[0] == '[';
  if (bracketed) {
    if (hlen < 2 || addr[hlen - 1] != ']')
      return td_errorf(err, TD_EINVAL,
                       "metrics address \"%s\": an IPv6 address goes in "
                       "brackets before the port, e.g. [::1]:9400",
                       addr);
    h++;
    hlen -= 2;
  }
  if (hlen == 0)
    return td_errorf(err, TD_EINVAL,
                     "metrics address \"%s\" has no host; %s (0.0.0.0 or "
                     "[::] for every interface)",
                     addr, usage);
  if (hlen >= sizeof host)
    return td_errorf(err, TD_EINVAL, "metrics address \"%s\": host too long", addr);
  memcpy(host, h, hlen);
  host[hlen] = '\0';

  const char *p = colon + 1;
  unsigned long port = 0;
  size_t digits = 0;
  for (; *p >= '0' && *p <= '9' && digits < 6; p++, digits++)
    port = port * 10 + (unsigned long)(*p - '0');
  if (digits == 0 || *p || port > 65535)
    return td_errorf(err, TD_EINVAL,
                     "metrics address: port \"%s\" is not a number from "
                     "0 to 65535",
                     colon + 1);

  memset(sa, 0, sizeof *sa);
  struct sockaddr_in *in4 = (struct sockaddr_in *)sa;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
  if (!bracketed && strcmp(host, "localhost") == 0)
    strcpy(host, "127.0.0.1");
  if (!bracketed && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
  } else if (bracketed && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
  } else if (!bracketed && strchr(host, ':')) {
    return td_errorf(err, TD_EINVAL,
                     "metrics address \"%s\": an IPv6 address goes in "
                     "brackets before the port, e.g. [::1]:9400",
                     addr);
  } else {
    return td_errorf(err, TD_EINVAL,
                     "metrics address: \"%s\" is not an %s address "
                     "literal; %s",
                     host, bracketed ? "IPv6" : "IPv4", usage);
  }
  return TD_OK;
}

int td_prom_server_start(const char *addr, td_prom_server **out, td_error *err) {
  *out = NULL;
  struct sockaddr_storage sa;
  int rc = parse_addr(addr, &sa, err);
  if (rc)
    return rc;
  td_prom_server *s = calloc(1, sizeof *s);
  if (!s)
    return td_errorf(err, TD_ENOMEM, "out of memory starting the metrics endpoint");
  snprintf(s->addr, sizeof s->addr, "%s", addr);
  pthread_mutex_init(&s->mu, NULL);
  s->starting = 1;

  unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
  if (sa.ss_family == AF_INET6) {
    flags |= MHD_USE_IPv6;
    /* "[::]" means every interface, IPv4 included, as in other servers. */
    if (IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&sa)->sin6_addr))
      flags |= MHD_USE_DUAL_STACK;
  }
  /* libmicrohttpd binds to sa; given port 0 it reads the chosen port back
   * from the socket. */
  uint16_t port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                 : ((struct sockaddr_in *)&sa)->sin_port);
  s->mhd = MHD_start_daemon(flags, port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
                            on_mhd_log, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)PROM_MAX_CONNECTIONS,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)PROM_IDLE_TIMEOUT_SEC,
                            MHD_OPTION_END);
  pthread_mutex_lock(&s->mu);
  s->starting = 0;
  pthread_mutex_unlock(&s->mu);
  if (!s->mhd) {
    rc = td_errorf(err, TD_EIO, "cannot serve metrics on %s: %s", addr,
                   s->start_msg[0] ? s->start_msg : "libmicrohttpd could not start");
    pthread_mutex_destroy(&s->mu);
    free(s);
    return rc;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
  s->port = info ? (int)info->port : 0;
  if (s->port == 0) {
    td_prom_server_stop(s);
    return td_errorf(err, TD_EIO, "cannot serve metrics on %s: the bound port is unknown", addr);
  }
  *out = s;
  return TD_OK;
}

int td_prom_server_port(const td_prom_server *s) { return s->port; }

int td_prom_server_publish(td_prom_server *s, const char *text, size_t len) {
  char *copy = malloc(len ? len : 1);
  if (!copy)
    return TD_ENOMEM;
  if (len)
    memcpy(copy, text, len);
  pthread_mutex_lock(&s->mu);
  char *old = s->text;
  s->text = copy;
  s->len = len;
  pthread_mutex_unlock(&s->mu);
  free(old);
  return TD_OK;
}

void td_prom_server_stop(td_prom_server *s) {
  if (!s)
    return;
  if (s->mhd)
    MHD_stop_daemon(s->mhd);
  pthread_mutex_destroy(&s->mu);
  free(s->text);
  free(s);
}
