/* Small text formatting shared by traind and trainctl. */
#ifndef TD_FMT_H
#define TD_FMT_H

#include <stddef.h>
#include <stdint.h>

/* Seconds as H:MM:SS (an hour or more) or M:SS; "--:--" when unknown
 * (negative, NaN or absurdly large). */
void td_format_duration(double sec, char *buf, size_t len);

/* The length of the valid UTF-8 sequence at s (n >= 1 bytes left) and its
 * code point in *cp, or 0 when the bytes there are not strict UTF-8 (an
 * overlong form, a surrogate, a code point above U+10FFFF, a bad or
 * missing continuation byte). */
size_t td_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

#endif
