/* systemd notification through libsystemd's sd_notify(3); see sdnotify.h. */
#include "sdnotify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

/* Sends `head` (may be empty) followed by "STATUS=<status>" when status is
 * not NULL. A status is cut at its first newline (a newline would start
 * another assignment) and at 900 bytes. */
static int send_with_status(const char *head, const char *status) {
  if (!status)
    return sd_notify(0, head);
  int n = (int)strcspn(status, "\n");
  if (n > 900)
    n = 900;
  char msg[1024];
  snprintf(msg, sizeof msg, "%s%sSTATUS=%.*s", head, *head ? "\n" : "", n, status);
  return sd_notify(0, msg);
}

int td_sd_ready(const char *status) {
  return send_with_status("READY=1", status && *status ? status : NULL);
}

int td_sd_stopping(void) { return sd_notify(0, "STOPPING=1"); }

int td_sd_reloading(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
    return sd_notify(0, "RELOADING=1");
  unsigned long long usec =
      (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL;
  char msg[64];
  snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
  return sd_notify(0, msg);
}

int td_sd_reloaded(void) { return sd_notify(0, "READY=1"); }

int td_sd_watchdog_usec(uint64_t *usec) {
  uint64_t v = 0;
  /* Without a socket to ping there is no watchdog to keep alive. */
  const char *sock = getenv("NOTIFY_SOCKET");
  int r = sock && *sock ? sd_watchdog_enabled(0, &v) : 0;
  if (usec)
    *usec = r > 0 ? v : 0;
  return r;
}

int td_sd_watchdog_ping(void) { return sd_notify(0, "WATCHDOG=1"); }

int td_sd_status(const char *status) { return send_with_status("", status ? status : ""); }
