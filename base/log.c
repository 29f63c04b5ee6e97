#include "log.h"
#include "fmt.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

static atomic_int current_level = TD_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

int td_log_parse_level(const char *name) {
  for (int i = 0; i < 4; i++)
    if (name && strcmp(name, level_names[i]) == 0)
      return i;
  return -1;
}

void td_log_set_level(td_log_level level) { atomic_store(&current_level, (int)level); }

int td_log_enabled(td_log_level level) { return (int)level <= atomic_load(&current_level); }

/* The record being built: at most LOG_LINE_MAX bytes, the last kept for
 * the newline. */
#define LOG_LINE_MAX 2048
typedef struct {
  char buf[LOG_LINE_MAX];
  size_t n;
} line;

static void put(line *l, const char *s, size_t n) {
  size_t room = sizeof l->buf - 1 - l->n;
  if (n > room)
    n = room;
  memcpy(l->buf + l->n, s, n);
  l->n += n;
}

static void putc_(line *l, char ch) { put(l, &ch, 1); }

/* Whether s (n bytes) can stand as a bare logfmt value: not empty, and only
 * printable ASCII other than space, '=' and '"' (and '\\'). */
static int bare_ok(const char *s, size_t n) {
  if (n == 0)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= ' ' || ch >= 0x7f || ch == '=' || ch == '"' || ch == '\\')
      return 0;
  }
  return 1;
}

/* Appends s (n bytes) escaped for the inside of a logfmt quoted value: \" \\
 * \n \r \t, other control characters and bytes that are not UTF-8 as \xNN,
 * C1 controls and the Unicode line separators as \uNNNN; other UTF-8 as is.
 * Nothing of s can end the value or the line. */
static void put_escaped(line *l, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  char esc[8];
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t len = td_utf8_next(s + i, n - i, &cp);
    if (len == 0) {
      snprintf(esc, sizeof esc, "\\x%02x", s[i]);
      put(l, esc, 4);
      i++;
      continue;
    }
    switch (cp) {
    case '"':
      put(l, "\\\"", 2);
      break;
    case '\\':
      put(l, "\\\\", 2);
      break;
    case '\n':
      put(l, "\\n", 2);
      break;
    case '\r':
      put(l, "\\r", 2);
      break;
    case '\t':
      put(l, "\\t", 2);
      break;
    default:
      if (cp < 0x20 || cp == 0x7f) {
        snprintf(esc, sizeof esc, "\\x%02x", cp);
        put(l, esc, 4);
      } else if ((cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029) {
        snprintf(esc, sizeof esc, "\\u%04x", cp);
        put(l, esc, 6);
      } else {
        put(l, (const char *)s + i, len);
      }
    }
    i += len;
  }
}

/* A value: bare when it is one plain token, else quoted and escaped. */
static void put_value(line *l, const char *s, size_t n) {
  if (bare_ok(s, n)) {
    put(l, s, n);
    return;
  }
  putc_(l, '"');
  put_escaped(l, s, n);
  putc_(l, '"');
}

/* Appends fmt with its arguments (printf conversions). Literal text is
 * copied; numbers are formatted as printf would; every string argument
 * (%s, %c) is a value: escaped inside quotes the format already has
 * (key=\"%s\"), else written by put_value. */
static void put_fields(line *l, const char *fmt, va_list ap) {
  for (const char *p = fmt; *p;) {
    if (*p != '%') {
      const char *q = strchr(p, '%');
      size_t n = q ? (size_t)(q - p) : strlen(p);
      put(l, p, n);
      p += n;
      continue;
    }
    const char *start = p++;
    if (*p == '%') {
      putc_(l, '%');
      p++;
      continue;
    }
    /* %[flags][width][.precision][length]conversion, '*' read from the
     * arguments and written into a copy of the spec. */
    char spec[64];
    size_t k = 0;
    spec[k++] = '%';
    while (*p && strchr("-+ #0", *p) && k < 8)
      spec[k++] = *p++;
    int precision = -1;
    if (*p == '*') {
      k += (size_t)snprintf(spec + k, sizeof spec - k, "%d", va_arg(ap, int));
      p++;
    } else {
      while (*p >= '0' && *p <= '9' && k < 24)
        spec[k++] = *p++;
    }
    if (*p == '.') {
      p++;
      if (*p == '*') {
        precision = va_arg(ap, int);
        p++;
      } else {
        precision = 0;
        while (*p >= '0' && *p <= '9')
          precision = precision * 10 + (*p++ - '0');
      }
      k += (size_t)snprintf(spec + k, sizeof spec - k, ".%d", precision < 0 ? 0 : precision);
    }
    char len1 = 0, len2 = 0;
    if (*p && strchr("hljztL", *p)) {
      len1 = *p++;
      if ((len1 == 'h' || len1 == 'l') && *p == len1)
        len2 = *p++;
    }
    char conv = *p ? *p++ : '\0';
    if (len1)
      spec[k++] = len1;
    if (len2)
      spec[k++] = len2;
    spec[k++] = conv;
    spec[k] = '\0';
    char num[128];
    int w = -1;
    switch (conv) {
    case 'd':
    case 'i':
      if (len1 == 'l' && len2)
        w = snprintf(num, sizeof num, spec, va_arg(ap, long long));
      else if (len1 == 'l')
        w = snprintf(num, sizeof num, spec, va_arg(ap, long));
      else if (len1 == 'j')
        w = snprintf(num, sizeof num, spec, va_arg(ap, intmax_t));
      else if (len1 == 'z')
        w = snprintf(num, sizeof num, spec, va_arg(ap, ssize_t));
      else if (len1 == 't')
        w = snprintf(num, sizeof num, spec, va_arg(ap, ptrdiff_t));
      else
        w = snprintf(num, sizeof num, spec, va_arg(ap, int));
      break;
    case 'u':
    case 'o':
    case 'x':
    case 'X':
      if (len1 == 'l' && len2)
        w = snprintf(num, sizeof num, spec, va_arg(ap, unsigned long long));
      else if (len1 == 'l')
        w = snprintf(num, sizeof num, spec, va_arg(ap, unsigned long));
      else if (len1 == 'j')
        w = snprintf(num, sizeof num, spec, va_arg(ap, uintmax_t));
      else if (len1 == 'z')
        w = snprintf(num, sizeof num, spec, va_arg(ap, size_t));
      else if (len1 == 't')
        w = snprintf(num, sizeof num, spec, va_arg(ap, ptrdiff_t));
      else
        w = snprintf(num, sizeof num, spec, va_arg(ap, unsigned));
      break;
    case 'f':
    case 'F':
    case 'e':
    case 'E':
    case 'g':
    case 'G':
    case 'a':
    case 'A':
      if (len1 == 'L')
        w = snprintf(num, sizeof num, spec, va_arg(ap, long double));
      else
        w = snprintf(num, sizeof num, spec, va_arg(ap, double));
      break;
    case 'p':
      w = snprintf(num, sizeof num, "%p", va_arg(ap, void *));
      break;
    case 'c':
    case 's': {
      char one;
      const char *str;
      size_t n;
      if (conv == 'c') {
        one = (char)va_arg(ap, int);
        str = &one;
        n = 1;
      } else {
        str = va_arg(ap, const char *);
        if (!str)
          str = "(null)";
        n = strlen(str);
        if (precision >= 0 && (size_t)precision < n)
          n = (size_t)precision;
      }
      int quoted = start > fmt && start[-1] == '"' && *p == '"';
      if (quoted)
        put_escaped(l, str, n);
      else
        put_value(l, str, n);
      continue;
    }
    default:
      /* Not a conversion this formatter knows: the text as written. */
      put(l, start, (size_t)(p - start));
      continue;
    }
    if (w > 0)
      put(l, num, (size_t)w < sizeof num ? (size_t)w : sizeof num - 1);
  }
}

void td_log(td_log_level level, const char *msg, const char *fmt, ...) {
  if (!td_log_enabled(level))
    return;
  line l;
  l.n = 0;
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  l.n = strftime(l.buf, sizeof l.buf, "time=%Y-%m-%dT%H:%M:%S", &tm);
  char head[64];
  int w = snprintf(head, sizeof head, ".%03ldZ level=%s msg=", ts.tv_nsec / 1000000,
                   level_names[level]);
  put(&l, head, (size_t)w);
  putc_(&l, '"');
  put_escaped(&l, msg ? msg : "", msg ? strlen(msg) : 0);
  putc_(&l, '"');
  if (fmt) {
    putc_(&l, ' ');
    va_list ap;
    va_start(ap, fmt);
    put_fields(&l, fmt, ap);
    va_end(ap);
  }
  l.buf[l.n++] = '\n';
  fwrite(l.buf, 1, l.n, stderr);
}
