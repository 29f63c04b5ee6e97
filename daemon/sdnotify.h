/* systemd service notification (sd_notify(3)) for traind.
 *
 * Every function is a no-op returning 0 when the process was not started
 * by systemd with a notification socket (NOTIFY_SOCKET unset), so the
 * daemon calls them unconditionally. Return values follow libsystemd:
 * > 0 the message was sent, 0 nothing to do (no NOTIFY_SOCKET; for
 * td_sd_watchdog_usec: no watchdog), < 0 a negative errno value.
 *
 * The daemon's loop thread calls td_sd_ready() once it serves,
 * td_sd_watchdog_ping() from a timer at half of td_sd_watchdog_usec(),
 * td_sd_reloading()/td_sd_reloaded() around a SIGHUP reload and
 * td_sd_stopping() when SIGTERM starts the drain. The functions keep no
 * state and may be called from any thread. */
#ifndef TD_SDNOTIFY_H
#define TD_SDNOTIFY_H

#include <stdint.h>

/* "READY=1" and, when status is not NULL or empty, "STATUS=<status>"
 * (cut like td_sd_status()'s). */
int td_sd_ready(const char *status);

/* "STOPPING=1": the service is shutting down (draining jobs). */
int td_sd_stopping(void);

/* "RELOADING=1" with "MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>" (which
 * systemd >= 253 requires for Type=notify-reload and older ones ignore);
 * then td_sd_reloaded() sends "READY=1" once the new configuration is in
 * force (or the reload failed and the old one stays). */
int td_sd_reloading(void);
int td_sd_reloaded(void);

/* The service manager's watchdog interval for this process: returns > 0
 * and sets *usec to the interval when WATCHDOG_USEC is set (and
 * WATCHDOG_PID, when set, names this process); returns 0 and sets *usec
 * to 0 when there is no watchdog (or no NOTIFY_SOCKET to ping); returns
 * < 0 (and *usec = 0) when the variables are malformed. Ping at half the
 * interval. usec may be NULL. */
int td_sd_watchdog_usec(uint64_t *usec);

/* "WATCHDOG=1": the keep-alive ping. */
int td_sd_watchdog_ping(void);

/* "STATUS=<status>": a one-line status shown by `systemctl status` (NULL
 * or "" clears it). Cut at the first newline and at 900 bytes. */
int td_sd_status(const char *status);

#endif
