/* Small text formatting shared by traind and trainctl. */
#ifndef TD_FMT_H
#define TD_FMT_H

#include <stddef.h>

/* Seconds as H:MM:SS (an hour or more) or M:SS; "--:--" when unknown
 * (negative, NaN or absurdly large). */
void td_format_duration(double sec, char *buf, size_t len);

#endif
