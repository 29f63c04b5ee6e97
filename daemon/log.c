#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
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

int td_log_enabled(td_log_level level) {
  return (int)level <= atomic_load(&current_level);
}

/* Appends s as a logfmt value, quoted and escaped. */
static size_t put_quoted(char *buf, size_t at, size_t cap, const char *s) {
  if (at < cap)
    buf[at++] = '"';
  for (; *s && at + 2 < cap; s++) {
    if (*s == '"' || *s == '\\') {
      buf[at++] = '\\';
      buf[at++] = *s;
    } else if ((unsigned char)*s < 0x20) {
      buf[at++] = ' ';
    } else {
      buf[at++] = *s;
    }
  }
  if (at < cap)
    buf[at++] = '"';
  return at;
}

void td_log(td_log_level level, const char *msg, const char *fmt, ...) {
  if (!td_log_enabled(level))
    return;
  char buf[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(buf, sizeof buf, "time=%Y-%m-%dT%H:%M:%S", &tm);
  n += (size_t)snprintf(buf + n, sizeof buf - n, ".%03ldZ level=%s msg=",
                        ts.tv_nsec / 1000000, level_names[level]);
  n = put_quoted(buf, n, sizeof buf - 2, msg);
  if (fmt && n < sizeof buf - 2) {
    buf[n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
    va_end(ap);
    if (k > 0)
      n += (size_t)k < sizeof buf - n - 1 ? (size_t)k : sizeof buf - n - 2;
  }
  buf[n++] = '\n';
  fwrite(buf, 1, n, stderr);
}
