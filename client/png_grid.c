/* A grid of images as one PNG file (libpng), for `trainctl examples
 * --png`: n images of h x w pixels with c channels (1: gray, 3: RGB),
 * row-major floats, in rows of up to `cols`, 2 pixels apart. */
#include "png_grid.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GAP 2
#define GAP_LEVEL 96 /* the gaps' gray, apart from MNIST's black */

static uint8_t level(float v, float lo, float hi) {
  float x = hi > lo ? (v - lo) / (hi - lo) : 0.0f;
  x = x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x;
  return (uint8_t)lrintf(x * 255.0f);
}

int td_png_grid(const char *path, const float *const *images, size_t n, uint32_t h, uint32_t w,
                uint32_t c, uint32_t cols, char *err, size_t err_len) {
  if (!n || !h || !w || (c != 1 && c != 3) || !cols) {
    snprintf(err, err_len, "no images of a shape a PNG holds (%u x %u x %u)", h, w, c);
    return -1;
  }
  if (cols > n)
    cols = (uint32_t)n;
  const uint32_t rows = (uint32_t)((n + cols - 1) / cols);
  const size_t W = (size_t)cols * w + (size_t)(cols + 1) * GAP;
  const size_t H = (size_t)rows * h + (size_t)(rows + 1) * GAP;
  /* Pixels in [0, 1] (the loaders' scaling of 8-bit images) are shown as
   * they are; anything else is stretched from its least to its largest. */
  float lo = 0.0f, hi = 1.0f, mn = INFINITY, mx = -INFINITY;
  const size_t per = (size_t)h * w * c;
  for (size_t k = 0; k < n; k++)
    for (size_t i = 0; i < per; i++) {
      mn = images[k][i] < mn ? images[k][i] : mn;
      mx = images[k][i] > mx ? images[k][i] : mx;
    }
  if (mn < 0.0f || mx > 1.0f) {
    lo = mn;
    hi = mx;
  }
  uint8_t *px = malloc(W * H * c);
  png_bytep *lines = malloc(H * sizeof *lines);
  if (!px || !lines) {
    free(px);
    free(lines);
    snprintf(err, err_len, "out of memory for a %zu x %zu image", W, H);
    return -1;
  }
  memset(px, GAP_LEVEL, W * H * c);
  for (size_t k = 0; k < n; k++) {
    const size_t x0 = GAP + (k % cols) * (w + GAP), y0 = GAP + (k / cols) * (h + GAP);
    for (uint32_t y = 0; y < h; y++)
      for (uint32_t x = 0; x < w; x++)
        for (uint32_t ch = 0; ch < c; ch++)
          px[((y0 + y) * W + x0 + x) * c + ch] =
              level(images[k][((size_t)y * w + x) * c + ch], lo, hi);
  }
  for (size_t y = 0; y < H; y++)
    lines[y] = px + y * W * c;
  FILE *f = fopen(path, "wb");
  if (!f) {
    snprintf(err, err_len, "%s: cannot create it", path);
    free(px);
    free(lines);
    return -1;
  }
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  volatile int ok = 0;
  if (png && info && !setjmp(png_jmpbuf(png))) {
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8,
                 c == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    png_write_image(png, lines);
    png_write_end(png, NULL);
    ok = 1;
  }
  png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
  if (fclose(f) != 0)
    ok = 0;
  free(px);
  free(lines);
  if (!ok) {
    snprintf(err, err_len, "%s: writing the PNG failed", path);
    remove(path);
    return -1;
  }
  return 0;
}
