/* The daemon's logfmt records (base/log.c) with hostile values: names with
 * newlines, quotes, "peer=" and bytes that are not UTF-8. stderr is sent to
 * a file, and each record read back is parsed by a logfmt reader written
 * here (Go's quoting rules: \" \\ \n \r \t \xNN \uNNNN), which must find
 * exactly one record per call, exactly the keys of its format, and each
 * value equal to the argument given. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "log.h"

#define MAX_FIELDS 16

typedef struct {
  char key[64];
  char val[4096];
  size_t len;
} field;

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* Appends code point cp as UTF-8. */
static size_t put_utf8(char *out, unsigned cp) {
  if (cp < 0x80)
    return out[0] = (char)cp, 1;
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  out[0] = (char)(0xE0 | (cp >> 12));
  out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[2] = (char)(0x80 | (cp & 0x3F));
  return 3;
}

/* Splits one record (no newline) into fields; returns their number, or -1
 * when the text is not logfmt (an unterminated quote, a bad escape, a key
 * without '='). */
static int parse_record(const char *s, field *f, int max) {
  int n = 0;
  while (*s) {
    while (*s == ' ')
      s++;
    if (!*s)
      break;
    if (n == max)
      return -1;
    size_t k = 0;
    while (*s && *s != '=' && *s != ' ' && k + 1 < sizeof f[n].key)
      f[n].key[k++] = *s++;
    f[n].key[k] = '\0';
    if (*s != '=' || k == 0)
      return -1;
    s++;
    size_t v = 0;
    if (*s == '"') {
      s++;
      for (;;) {
        if (!*s || v + 4 >= sizeof f[n].val)
          return -1;
        if (*s == '"') {
          s++;
          break;
        }
        if (*s != '\\') {
          f[n].val[v++] = *s++;
          continue;
        }
        s++;
        switch (*s) {
        case '"':
        case '\\':
          f[n].val[v++] = *s++;
          break;
        case 'n':
          f[n].val[v++] = '\n', s++;
          break;
        case 'r':
          f[n].val[v++] = '\r', s++;
          break;
        case 't':
          f[n].val[v++] = '\t', s++;
          break;
        case 'x': {
          int a = hexval(s[1]), b = a < 0 ? -1 : hexval(s[2]);
          if (b < 0)
            return -1;
          f[n].val[v++] = (char)(a * 16 + b);
          s += 3;
          break;
        }
        case 'u': {
          unsigned cp = 0;
          for (int i = 1; i <= 4; i++) {
            int d = hexval(s[i]);
            if (d < 0)
              return -1;
            cp = cp * 16 + (unsigned)d;
          }
          v += put_utf8(f[n].val + v, cp);
          s += 5;
          break;
        }
        default:
          return -1;
        }
      }
      if (*s && *s != ' ')
        return -1; /* a field must end after its closing quote */
    } else {
      while (*s && *s != ' ') {
        if (*s == '"' || *s == '=' || v + 1 >= sizeof f[n].val)
          return -1;
        f[n].val[v++] = *s++;
      }
    }
    f[n].val[v] = '\0';
    f[n].len = v;
    n++;
  }
  return n;
}

static FILE *capture;
static int capture_fd, saved_fd;
static long capture_at;

/* Sends stderr to the capture file until take_output (so that failed
 * checks still print to the real stderr). */
static void capture_on(void) {
  fflush(stderr);
  dup2(capture_fd, 2);
}

/* The records written since capture_on, as one malloc'd string. */
static char *take_output(void) {
  fflush(stderr);
  dup2(saved_fd, 2);
  fseek(capture, 0, SEEK_END);
  long end = ftell(capture);
  char *text = calloc(1, (size_t)(end - capture_at) + 1);
  fseek(capture, capture_at, SEEK_SET);
  size_t got = fread(text, 1, (size_t)(end - capture_at), capture);
  text[got] = '\0';
  capture_at = end;
  return text;
}

/* The one record in `text`: fields after time, level and msg must be
 * exactly keys[i] = vals[i] (vals NUL-terminated unless lens given). */
static void expect_record(int line, const char *text, const char *msg, int nkeys,
                          const char *const *keys, const char *const *vals) {
  size_t len = strlen(text);
  CHECK(len > 0 && text[len - 1] == '\n' && memchr(text, '\n', len) == text + len - 1,
        "line %d: not exactly one line: %s", line, text);
  char *rec = strdup(text);
  rec[len ? len - 1 : 0] = '\0';
  field f[MAX_FIELDS];
  int n = parse_record(rec, f, MAX_FIELDS);
  CHECK(n == 3 + nkeys, "line %d: %d fields in \"%s\", want %d", line, n, rec, 3 + nkeys);
  if (n == 3 + nkeys) {
    CHECK(strcmp(f[0].key, "time") == 0 && strcmp(f[1].key, "level") == 0 &&
              strcmp(f[2].key, "msg") == 0 && strcmp(f[2].val, msg) == 0,
          "line %d: header of \"%s\"", line, rec);
    for (int i = 0; i < nkeys; i++) {
      CHECK(strcmp(f[3 + i].key, keys[i]) == 0, "line %d: key %d is \"%s\", want \"%s\"", line, i,
            f[3 + i].key, keys[i]);
      CHECK(f[3 + i].len == strlen(vals[i]) && memcmp(f[3 + i].val, vals[i], f[3 + i].len) == 0,
            "line %d: %s read back as \"%s\", want \"%s\" (record: %s)", line, keys[i],
            f[3 + i].val, vals[i], rec);
    }
  }
  free(rec);
}

static void test_hostile_values(void) {
  static const char *const names[] = {
      "plain",
      "two words",
      "evil\ntime=2020-01-01T00:00:00.000Z level=error msg=\"forged\" peer=unix:",
      "x peer=ipv4:6.6.6.6:1",
      "q\"uote\\back",
      "tab\there\rret",
      "bell\x07 del\x7f",
      "bad\xff\xfe utf8 \xc0\xaf",
      "caf\xc3\xa9 \xf0\x9f\x98\x80",
      "c1 \xc2\x85 ls \xe2\x80\xa8",
      "a=b",
      "",
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    capture_on();
    td_log_info("job queued", "job=%s name=\"%s\" peer=%s", "j-1", names[i], "unix:");
    char *out = take_output();
    const char *keys[] = {"job", "name", "peer"};
    const char *vals[] = {"j-1", names[i], "unix:"};
    expect_record(__LINE__, out, "job queued", 3, keys, vals);
    free(out);
    /* The same value bare (key=%s): quoted when it must be. */
    capture_on();
    td_log_info("job started", "name=%s devices=%d", names[i], 2);
    out = take_output();
    const char *keys2[] = {"name", "devices"};
    const char *vals2[] = {names[i], "2"};
    expect_record(__LINE__, out, "job started", 2, keys2, vals2);
    free(out);
    /* And as the message itself. */
    capture_on();
    td_log_warn(names[i], "k=%d", 1);
    out = take_output();
    const char *keys3[] = {"k"};
    const char *vals3[] = {"1"};
    expect_record(__LINE__, out, names[i], 1, keys3, vals3);
    free(out);
  }
}

static void test_exact_text(void) {
  /* Plain tokens stay bare; numbers are printf's. */
  capture_on();
  td_log_info("checkpoint written", "job=%s file=%s step=%lld bytes=%zu ms=%.2f hex=%x pct=100%%",
              "j-1a2b", "ckpt-000030.h5", 30LL, (size_t)4096, 1.5, 255u);
  char *out = take_output();
  const char *tail = strstr(out, " level=");
  CHECK(tail &&
            strcmp(tail, " level=info msg=\"checkpoint written\" job=j-1a2b "
                         "file=ckpt-000030.h5 step=30 bytes=4096 ms=1.50 hex=ff pct=100%\n") == 0,
        "record \"%s\"", out);
  free(out);
  capture_on();
  td_log_info("x", "name=%s err=\"%s\"", "a b", "line1\nline2 \"q\"");
  out = take_output();
  tail = strstr(out, " level=");
  CHECK(tail && strcmp(tail, " level=info msg=\"x\" name=\"a b\" "
                             "err=\"line1\\nline2 \\\"q\\\"\"\n") == 0,
        "record \"%s\"", out);
  free(out);
  capture_on();
  td_log_info("x", "v=%.3s w=%c", "abcdef", '"');
  out = take_output();
  tail = strstr(out, " level=");
  CHECK(tail && strcmp(tail, " level=info msg=\"x\" v=abc w=\"\\\"\"\n") == 0, "record \"%s\"",
        out);
  free(out);
  capture_on();
  const char *volatile none = NULL; /* volatile: the compiler must not see it is NULL */
  td_log_info("x", "v=%s", none);
  out = take_output();
  CHECK(strstr(out, " v=(null)\n") != NULL, "record \"%s\"", out);
  free(out);
  capture_on();
  td_log_info("no fields", NULL);
  out = take_output();
  tail = strstr(out, " level=");
  CHECK(tail && strcmp(tail, " level=info msg=\"no fields\"\n") == 0, "record \"%s\"", out);
  free(out);

  /* A record longer than the line is cut, and still ends with one newline. */
  char *big = malloc(5000);
  memset(big, 'n', 4999);
  big[4999] = '\0';
  big[100] = '\n';
  capture_on();
  td_log_info("long", "name=\"%s\"", big);
  out = take_output();
  size_t len = strlen(out);
  CHECK(len == 2048 && out[len - 1] == '\n' && strchr(out, '\n') == out + len - 1,
        "a long record is one line of 2048 bytes (%zu)", len);
  free(out);
  free(big);
}

int main(void) {
  char path[] = "/tmp/td-log-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) {
    perror("mkstemp");
    return 1;
  }
  unlink(path);
  saved_fd = dup(2);
  capture_fd = fd;
  capture = fdopen(fd, "r");
  capture_at = 0;
  td_log_set_level(TD_LOG_DEBUG);
  test_hostile_values();
  test_exact_text();
  close(saved_fd);
  fclose(capture);
  return td_check_exit();
}
