/* The clocks: wall time for timestamps people read (records, events,
 * metrics), the monotonic clock for durations and deadlines. */
#ifndef TD_CLOCK_H
#define TD_CLOCK_H

#include <stdint.h>

/* CLOCK_REALTIME in nanoseconds and in seconds since the Unix epoch. */
int64_t td_wall_ns(void);
double td_wall_sec(void);

/* CLOCK_MONOTONIC in seconds and in milliseconds. */
double td_mono_sec(void);
double td_mono_ms(void);

#endif
