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
