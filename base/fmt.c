#include "fmt.h"

#include <math.h>
#include <stdio.h>

void td_format_duration(double sec, char *buf, size_t len) {
  if (!(sec >= 0) || sec > 1e8) {
    snprintf(buf, len, "--:--");
    return;
  }
  long s = lround(sec);
  if (s >= 3600)
    snprintf(buf, len, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    snprintf(buf, len, "%ld:%02ld", s / 60, s % 60);
}

size_t td_utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
  size_t len;
  uint32_t v, min;
  if (s[0] < 0x80)
    return *cp = s[0], 1;
  if ((s[0] & 0xE0) == 0xC0)
    len = 2, v = s[0] & 0x1F, min = 0x80;
  else if ((s[0] & 0xF0) == 0xE0)
    len = 3, v = s[0] & 0x0F, min = 0x800;
  else if ((s[0] & 0xF8) == 0xF0)
    len = 4, v = s[0] & 0x07, min = 0x10000;
  else
    return 0;
  if (len > n)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80)
      return 0;
    v = (v << 6) | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
    return 0;
  *cp = v;
  return len;
}
