/* Images as a grid in one PNG file. */
#ifndef TD_PNG_GRID_H
#define TD_PNG_GRID_H

#include <stddef.h>
#include <stdint.h>

/* Writes the n images (each h x w x c floats, row-major; c 1 or 3) to path
 * as a PNG, in rows of `cols` images, 2 pixels apart, in row-major order.
 * Values in [0, 1] are pixel levels / 255; other ranges are stretched from
 * their least to their largest. Returns 0, or -1 with err set. */
int td_png_grid(const char *path, const float *const *images, size_t n, uint32_t h, uint32_t w,
                uint32_t c, uint32_t cols, char *err, size_t err_len);

#endif
