/* The CUDA backend against the CPU backend, its reference.
 *
 * Everywhere: a machine without a usable GPU gets 0 GPUs with a reason and
 * a clear TD_EUNSUPPORTED naming the CUDA call; then the test exits 77
 * (skipped) when those checks pass, 1 when they fail.
 *
 * With a GPU (CTest label gpu): every op of the backend table on fresh
 * random inputs of several shapes (odd sizes, all four gemm transposes,
 * padded leading dimensions, aliased outputs) against the CPU backend at
 * explicit tolerances; indices, offsets, dropout keys, optimizer scalars,
 * norms and guards in device memory, as a recorded step reads them:
 *   bitwise      fill, copy, gather (also at an offset read from device
 *                memory), mul, add, copy2d, dropout (mask and output), the bias add,
 *                relu, the derivatives taken from y, the squared error's
 *                gradient, step_begin and record (against the table and
 *                slots as written), the shuffle (against
 *                td_prng_permutation: 0 to 3 rounds, n up to 3000000), the
 *                optimizer's clip (against the clip factor written out)
 *                and its guard (a NaN or infinite norm leaves p, g, s1, s2
 *                as they were, on both backends); the optimizer pass is
 *                checked at 1e-6 relative but rounds identically by
 *                construction
 *   1e-5         gemm, relative to sum |alpha a_ik b_kj| + |beta c_ij| (the
 *                error bound of any summation order; TF32 would miss it)
 *   1e-6         activations and the GELU derivatives, relative to the
 *                magnitude of the formula's terms (CUDA's tanhf, erff and
 *                expf are within 2 ulp of glibc's, and 1 + tanh, 1 - tanh^2
 *                cancel for large |z|)
 *   1e-5         reductions: loss sums (relative, or per row when smaller),
 *                bias gradients (relative to the sum of their terms'
 *                scales), the sum of squares, softmax gradients (through
 *                the row's sum; relative to max(|want|, grad_scale)); hit
 *                counts exact
 * plus: a small step (step_begin, gather at the record's offset, dropout
 * with the record's key, gemm, sum of squares, record) recorded as a
 * one-step and a three-step graph, replayed 10 steps' worth, equals the
 * same ops run 10 times op by op, every buffer bit for bit, and recording
 * alone runs nothing;
 * alloc returns zeroed memory, download orders after queued work,
 * reductions give the same bits twice, bad arguments and a failing cuBLAS
 * call come back as errors with the call named, and a kernel that faults on
 * a bad pointer is reported as an error (in a child process, since a fault
 * ends the CUDA context). Last, 20 training steps of two small models on
 * both backends from the same parameters and batches: parameters agree to
 * a relative error below 1e-4. */
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "check.h"
#include "cuda_backend.h"
#include "jobspec.h"
#include "plan.h"
#include "prng.h"

extern char **environ;

static td_backend *cpu, *gpu;
static const td_backend_ops *C, *G;
static uint32_t draws; /* every random array gets its own key */

/* ---------------------------------------------------------------- helpers */

static void randn(float *x, size_t n, float scale) {
  td_prng_normal(td_prng_fold_in(td_prng_key(2026), draws++), x, n);
  for (size_t i = 0; i < n; i++)
    x[i] *= scale;
}

static void rand_labels(int32_t *y, size_t n, int classes) {
  uint32_t *bits = malloc(n * sizeof *bits + 4);
  td_prng_bits(td_prng_fold_in(td_prng_key(2026), draws++), bits, n);
  for (size_t i = 0; i < n; i++)
    y[i] = (int32_t)(bits[i] % (uint32_t)classes);
  free(bits);
}

static float *hmalloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* A device copy of host data (NULL, with a failed check, on failure). */
static void *gput(const void *h, size_t bytes) {
  void *d = G->alloc(gpu, bytes);
  CHECK(d != NULL, "alloc of %zu bytes: %s", bytes, td_cuda_backend_last_error(gpu));
  if (d && bytes) {
    int rc = G->upload(gpu, d, h, bytes);
    CHECK(rc == 0, "upload: %s", td_cuda_backend_last_error(gpu));
  }
  return d;
}

static void gget(void *h, const void *d, size_t bytes) {
  int rc = G->download(gpu, h, d, bytes);
  CHECK(rc == 0, "download: %s", td_cuda_backend_last_error(gpu));
  if (rc)
    memset(h, 0xff, bytes); /* NaNs: the comparison that follows fails too */
}

static void gfree(void *d) { G->release(gpu, d); }

/* Elements of a and b whose bits differ. */
static size_t bitdiff(const void *a, const void *b, size_t n) {
  const uint32_t *x = a, *y = b;
  size_t d = 0;
  for (size_t i = 0; i < n; i++)
    d += x[i] != y[i];
  return d;
}

/* The largest |got - want| / max(|want|, floor), and where. */
static double max_rel(const float *got, const float *want, size_t n, double floor, size_t *at) {
  double worst = 0.0;
  *at = 0;
  for (size_t i = 0; i < n; i++) {
    double e = td_relerr(got[i], want[i], floor);
    if (!(e <= worst)) { /* NaN counts as worst */
      worst = e;
      *at = i;
      if (isnan(e))
        return INFINITY;
    }
  }
  return worst;
}

#define CHECK_ARRAY(label, got, want, n, tol, floor)                                           \
  do {                                                                                         \
    size_t at_;                                                                                \
    double e_ = max_rel((got), (want), (n), (floor), &at_);                                    \
    CHECK(e_ <= (tol), "%s: element %zu: %.9g, want %.9g (rel err %.3g > %.3g)", (label), at_, \
          (double)(got)[at_], (double)(want)[at_], e_, (double)(tol));                         \
  } while (0)

#define CHECK_BITS(label, got, want, n)                                         \
  do {                                                                          \
    size_t d_ = bitdiff((got), (want), (n));                                    \
    CHECK(d_ == 0, "%s: %zu of %zu elements differ", (label), d_, (size_t)(n)); \
  } while (0)

#define CHECK_OK(expr)                                                                        \
  do {                                                                                        \
    int rc_ = (expr);                                                                         \
    CHECK(rc_ == 0, "%s: %s (%s)", #expr, td_strerror(rc_), td_cuda_backend_last_error(gpu)); \
  } while (0)

/* ---------------------------------------------------- memory and ordering */

static void check_memory(void) {
  /* alloc is zeroed even where a previous buffer held data. */
  enum { N = (1 << 20) + 3 };
  float *h = hmalloc(N);
  float *d = G->alloc(gpu, N * sizeof(float));
  CHECK(d != NULL, "alloc: %s", td_cuda_backend_last_error(gpu));
  if (!d) {
    free(h);
    return;
  }
  CHECK_OK(G->fill(gpu, d, N, 7.0f));
  gfree(d);
  for (int round = 0; round < 3; round++) {
    float *z = G->alloc(gpu, N * sizeof(float) - 2); /* an odd byte count */
    CHECK(z != NULL, "alloc: %s", td_cuda_backend_last_error(gpu));
    if (!z)
      break;
    memset(h, 0x5a, N * sizeof(float));
    gget(h, z, N * sizeof(float) - 2);
    size_t nonzero = 0;
    const unsigned char *b = (const unsigned char *)h;
    for (size_t i = 0; i < N * sizeof(float) - 2; i++)
      nonzero += b[i] != 0;
    CHECK(nonzero == 0, "alloc round %d: %zu bytes are not zero", round, nonzero);
    gfree(z);
  }
  void *empty = G->alloc(gpu, 0);
  CHECK(empty != NULL, "alloc(0) must return a buffer");
  gfree(empty);

  /* Upload and download are exact, at odd sizes. */
  randn(h, N, 3.0f);
  float *r = hmalloc(N);
  float *u = gput(h, 4097 * sizeof(float));
  if (u) {
    gget(r, u, 4097 * sizeof(float));
    CHECK_BITS("upload/download round trip", r, h, 4097);
    gfree(u);
  }

  /* Download orders after queued work: a long gemm (4096^3, several ms)
   * whose result is read at once, then a fill queued behind more work. */
  enum { M = 4096 };
  float *a = G->alloc(gpu, (size_t)M * M * sizeof(float));
  float *c = G->alloc(gpu, (size_t)M * M * sizeof(float));
  float *row = hmalloc(M);
  if (a && c) {
    CHECK_OK(G->fill(gpu, a, (size_t)M * M, 0.5f));
    CHECK_OK(G->gemm(gpu, 0, 0, M, M, M, 1.0f, a, M, a, M, 0.0f, c, M));
    gget(row, c + (size_t)(M - 1) * M, M * sizeof(float));
    size_t bad = 0;
    for (int i = 0; i < M; i++)
      bad += row[i] != 0.25f * M; /* sums of 0.25: exact in any order */
    CHECK(bad == 0, "download right after a gemm: %zu of %d values not final", bad, M);
    CHECK_OK(G->gemm(gpu, 0, 0, M, M, M, 1.0f, a, M, a, M, 0.0f, c, M));
    CHECK_OK(G->fill(gpu, c, (size_t)M * M, -3.0f));
    gget(row, c + (size_t)M * M - M, M * sizeof(float));
    bad = 0;
    for (int i = 0; i < M; i++)
      bad += row[i] != -3.0f;
    CHECK(bad == 0, "download after gemm + fill: %zu of %d values not final", bad, M);
  }
  gfree(a);
  gfree(c);
  free(row);
  free(h);
  free(r);
}

/* ---------------------------------------------------- plain elementwise ops */

static void check_fill_copy_mul_add(void) {
  const size_t sizes[] = {1, 7, 1000, 65537, 3000017};
  const float values[] = {0.0f, -0.0f, 3.5f, -1e-30f};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
    size_t n = sizes[s];
    float *want = hmalloc(n), *got = hmalloc(n), *a = hmalloc(n), *b = hmalloc(n);
    float *d = G->alloc(gpu, n * sizeof(float));
    for (size_t v = 0; v < sizeof values / sizeof *values && d; v++) {
      C->fill(cpu, want, n, values[v]);
      CHECK_OK(G->fill(gpu, d, n, 1.0f));
      CHECK_OK(G->fill(gpu, d, n, values[v]));
      gget(got, d, n * sizeof(float));
      char label[64];
      snprintf(label, sizeof label, "fill(n=%zu, %g)", n, (double)values[v]);
      CHECK_BITS(label, got, want, n);
    }
    randn(a, n, 2.0f);
    randn(b, n, 2.0f);
    float *da = gput(a, n * sizeof(float)), *db = gput(b, n * sizeof(float));
    if (d && da && db) {
      CHECK_OK(G->copy(gpu, d, da, n));
      gget(got, d, n * sizeof(float));
      CHECK_BITS("copy", got, a, n);
      C->mul(cpu, n, a, b, want);
      CHECK_OK(G->mul(gpu, n, da, db, d));
      gget(got, d, n * sizeof(float));
      CHECK_BITS("mul", got, want, n);
      /* The sum, also in place (out = b): as gradients are summed. */
      C->add(cpu, n, a, b, want);
      CHECK_OK(G->add(gpu, n, da, db, d));
      gget(got, d, n * sizeof(float));
      CHECK_BITS("add", got, want, n);
      float *db2 = gput(b, n * sizeof(float));
      if (db2) {
        CHECK_OK(G->add(gpu, n, da, db2, db2));
        gget(got, db2, n * sizeof(float));
        CHECK_BITS("add in place", got, want, n);
      }
      gfree(db2);
      /* A block between buffers of other leading dimensions (concatenate):
       * rows of 5 of a's values into rows of 7 of d, the rest untouched. */
      if (n >= 35) {
        size_t rows = n / 7;
        C->copy(cpu, want, b, n);
        C->copy2d(cpu, rows, 5, want + 2, 7, a, 5);
        float *dd = gput(b, n * sizeof(float));
        if (dd) {
          CHECK_OK(G->copy2d(gpu, rows, 5, dd + 2, 7, da, 5));
          gget(got, dd, n * sizeof(float));
          CHECK_BITS("copy2d", got, want, n);
        }
        gfree(dd);
      }
      C->mul(cpu, n, a, b, want);
      /* In place, as dropout's backward pass runs it (dx = dy * mask). */
      CHECK_OK(G->mul(gpu, n, da, db, da));
      gget(got, da, n * sizeof(float));
      CHECK_BITS("mul in place", got, want, n);
    }
    gfree(d);
    gfree(da);
    gfree(db);
    free(want);
    free(got);
    free(a);
    free(b);
  }
}

static void check_gather(void) {
  const size_t dims[] = {1, 37, 784, 4};
  enum { ROWS = 1001, COUNT = 300, OFF = 10 };
  for (size_t t = 0; t < sizeof dims / sizeof *dims; t++) {
    size_t dim = dims[t];
    float *src = hmalloc(ROWS * dim), *want = hmalloc(COUNT * dim), *got = hmalloc(COUNT * dim);
    int32_t labels[ROWS], want_l[COUNT], got_l[COUNT];
    uint32_t idx[COUNT], idx2[COUNT], bits[COUNT];
    randn(src, ROWS * dim, 1.0f);
    rand_labels(labels, ROWS, 10);
    td_prng_bits(td_prng_fold_in(td_prng_key(7), draws++), bits, COUNT);
    for (int i = 0; i < COUNT; i++)
      idx[i] = bits[i] % ROWS; /* with repeats */
    idx[0] = 0;
    idx[COUNT - 1] = ROWS - 1;
    for (int i = 0; i < COUNT; i++)
      idx2[i] = (uint32_t)(ROWS - 1 - i);
    C->gather(cpu, src, labels, dim, idx, NULL, COUNT, want, want_l);
    /* The indices and the offset live in device memory. */
    const uint32_t off = OFF;
    float *dsrc = gput(src, ROWS * dim * sizeof(float));
    int32_t *dl = gput(labels, sizeof labels);
    uint32_t *didx = gput(idx, sizeof idx), *didx2 = gput(idx2, sizeof idx2);
    uint32_t *doff = gput(&off, sizeof off);
    float *dst = G->alloc(gpu, COUNT * dim * sizeof(float));
    int32_t *dstl = G->alloc(gpu, sizeof got_l);
    if (dsrc && dl && didx && didx2 && doff && dst && dstl) {
      CHECK_OK(G->gather(gpu, dsrc, dl, dim, didx, NULL, COUNT, dst, dstl));
      /* A second gather of other rows, queued at once, into other buffers:
       * it must not disturb the first's result. */
      float *dst2 = G->alloc(gpu, COUNT * dim * sizeof(float));
      int32_t *dst2l = G->alloc(gpu, sizeof got_l);
      if (dst2 && dst2l)
        CHECK_OK(G->gather(gpu, dsrc, dl, dim, didx2, NULL, COUNT, dst2, dst2l));
      gget(got, dst, COUNT * dim * sizeof(float));
      gget(got_l, dstl, sizeof got_l);
      char label[64];
      snprintf(label, sizeof label, "gather (dim %zu)", dim);
      CHECK_BITS(label, got, want, COUNT * dim);
      CHECK(memcmp(got_l, want_l, sizeof got_l) == 0, "%s: labels differ", label);
      if (dst2 && dst2l) {
        C->gather(cpu, src, labels, dim, idx2, NULL, COUNT, want, want_l);
        gget(got, dst2, COUNT * dim * sizeof(float));
        gget(got_l, dst2l, sizeof got_l);
        CHECK_BITS("second gather", got, want, COUNT * dim);
        CHECK(memcmp(got_l, want_l, sizeof got_l) == 0, "second gather: labels differ");
      }
      gfree(dst2);
      gfree(dst2l);
      /* A dataset offset by rows, as evaluation reads it (odd offset:
       * the rows are no longer 16-byte aligned). */
      CHECK_OK(
          G->gather(gpu, dsrc + 3 * dim, dl + 3, dim, didx2 + OFF, NULL, COUNT - OFF, dst, dstl));
      C->gather(cpu, src + 3 * dim, labels + 3, dim, idx2 + OFF, NULL, COUNT - OFF, want, want_l);
      gget(got, dst, (COUNT - OFF) * dim * sizeof(float));
      CHECK_BITS("gather from an offset dataset", got, want, (COUNT - OFF) * dim);
      /* The place in the order read from device memory, as a step reads
       * its batch's row0 from its record: rows idx[*off + i]. The CPU
       * reference takes the same offset from host memory, and must equal
       * the rows at idx + off. */
      memset(got_l, 0xff, sizeof got_l);
      CHECK_OK(G->fill(gpu, dst, COUNT * dim, -1.0f));
      CHECK_OK(G->gather(gpu, dsrc, dl, dim, didx, doff, COUNT - OFF, dst, dstl));
      C->gather(cpu, src, labels, dim, idx, &off, COUNT - OFF, want, want_l);
      float *direct = hmalloc(COUNT * dim);
      int32_t direct_l[COUNT];
      C->gather(cpu, src, labels, dim, idx + OFF, NULL, COUNT - OFF, direct, direct_l);
      CHECK_BITS("CPU gather at an offset", want, direct, (COUNT - OFF) * dim);
      gget(got, dst, (COUNT - OFF) * dim * sizeof(float));
      gget(got_l, dstl, (COUNT - OFF) * sizeof(int32_t));
      snprintf(label, sizeof label, "gather at a device offset (dim %zu)", dim);
      CHECK_BITS(label, got, want, (COUNT - OFF) * dim);
      CHECK(memcmp(got_l, want_l, (COUNT - OFF) * sizeof(int32_t)) == 0, "%s: labels differ",
            label);
      free(direct);
    }
    gfree(dsrc);
    gfree(dl);
    gfree(didx);
    gfree(didx2);
    gfree(doff);
    gfree(dst);
    gfree(dstl);
    free(src);
    free(want);
    free(got);
  }
}

/* ------------------------------------------------------------------ gemm */

static void check_gemm(void) {
  const int shapes[][3] = {{1, 1, 1},      {7, 13, 5},  {33, 65, 17}, {128, 256, 784},
                           {128, 10, 128}, {3, 1, 300}, {257, 129, 1}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        /* Padded leading dimensions on every other case. */
        const int pad = (int)((s + (size_t)ta + (size_t)tb) % 2) * 3;
        const int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
        const int lda = ac + pad, ldb = bc + pad, ldc = n + pad;
        const float alpha = 1.25f, beta = s % 2 ? 0.5f : 0.0f;
        size_t na = (size_t)ar * lda, nb = (size_t)br * ldb, nc = (size_t)m * ldc;
        float *a = hmalloc(na), *b = hmalloc(nb), *c0 = hmalloc(nc), *want = hmalloc(nc),
              *got = hmalloc(nc);
        randn(a, na, 1.0f);
        randn(b, nb, 1.0f);
        randn(c0, nc, 1.0f);
        memcpy(want, c0, nc * sizeof(float));
        C->gemm(cpu, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, want, ldc);
        float *da = gput(a, na * sizeof(float)), *db = gput(b, nb * sizeof(float)),
              *dc = gput(c0, nc * sizeof(float));
        if (da && db && dc) {
          CHECK_OK(G->gemm(gpu, ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc));
          gget(got, dc, nc * sizeof(float));
          /* Error relative to sum |alpha a b| + |beta c|, per element. */
          double worst = 0.0;
          int wi = 0, wj = 0;
          size_t pad_changed = 0;
          for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
              double bound = fabs(beta * c0[(size_t)i * ldc + j]);
              for (int p = 0; p < k; p++) {
                double av = ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                double bv = tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                bound += fabs(alpha * av * bv);
              }
              size_t o = (size_t)i * ldc + j;
              double e = fabs((double)got[o] - want[o]) / (bound > 1e-30 ? bound : 1e-30);
              if (!(e <= worst)) {
                worst = e;
                wi = i;
                wj = j;
              }
            }
            for (int j = n; j < ldc; j++)
              pad_changed += got[(size_t)i * ldc + j] != c0[(size_t)i * ldc + j];
          }
          CHECK(worst <= 1e-5,
                "gemm %dx%dx%d ta=%d tb=%d pad=%d: c[%d][%d] = %.9g, want %.9g "
                "(error %.3g of the bound)",
                m, n, k, ta, tb, pad, wi, wj, (double)got[(size_t)wi * ldc + wj],
                (double)want[(size_t)wi * ldc + wj], worst);
          CHECK(pad_changed == 0, "gemm %dx%dx%d: %zu padding elements of c changed", m, n, k,
                pad_changed);
        }
        gfree(da);
        gfree(db);
        gfree(dc);
        free(a);
        free(b);
        free(c0);
        free(want);
        free(got);
      }
  }
}

/* ----------------------------------------------------- bias + activation */

static const td_act acts[] = {TD_ACT_NONE,     TD_ACT_RELU, TD_ACT_GELU_TANH,
                              TD_ACT_GELU_ERF, TD_ACT_TANH, TD_ACT_SIGMOID};
#define N_ACTS (sizeof acts / sizeof *acts)

/* The magnitude of the terms of act's formula at z: what the few-ulp
 * differences between CUDA's and glibc's tanhf, erff and expf are relative
 * to (1 + tanh(u) and 1 - tanh(u)^2 cancel for large |z|). Forward: y, or
 * z for the GELUs (y = z * cdf). Backward: dy times the sum of the
 * derivative's terms. */
static double act_fwd_scale(td_act act, float z, float y) {
  return act == TD_ACT_GELU_TANH || act == TD_ACT_GELU_ERF ? fabs(z) : fabs(y);
}

static double act_bwd_scale(td_act act, float z, float dy) {
  const double x = fabs(z);
  switch (act) {
  case TD_ACT_GELU_TANH:
    return fabs(dy) * (1.0 + x * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x));
  case TD_ACT_GELU_ERF:
    return fabs(dy) * (1.0 + 0.3989422804014327 * x);
  default:
    return fabs(dy);
  }
}

/* The largest |got - want| / scale over an array; checked against tol. */
static void check_scaled(const char *label, const float *got, const float *want,
                         const double *scale, size_t n, double tol) {
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - want[i]) / (scale[i] > 1e-30 ? scale[i] : 1e-30);
    if (!(e <= worst)) {
      worst = isnan(e) ? INFINITY : e;
      at = i;
      if (isnan(e))
        break;
    }
  }
  CHECK(worst <= tol, "%s: element %zu: %.9g, want %.9g (error %.3g of the scale %.3g > %.3g)",
        label, at, (double)got[at], (double)want[at], worst, scale[at], tol);
}

/* Column sums of the elements' scales (the scale of each bias gradient). */
static void col_sums(const double *scale, int rows, int cols, double *out) {
  for (int c = 0; c < cols; c++)
    out[c] = 0.0;
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++)
      out[c] += scale[(size_t)r * cols + c];
}

static void check_bias_act(void) {
  const int shapes[][2] = {{1, 1}, {5, 37}, {128, 256}, {3, 1000}, {1000, 10}, {4099, 33}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    const int rows = shapes[s][0], cols = shapes[s][1];
    const size_t n = (size_t)rows * cols;
    float *z0 = hmalloc(n), *bias = hmalloc(cols), *dy = hmalloc(n);
    float *zc = hmalloc(n), *yc = hmalloc(n), *dzc = hmalloc(n), *dbc = hmalloc(cols);
    float *got = hmalloc(n), *gotb = hmalloc(cols);
    double *scale = calloc((size_t)cols, sizeof(double)), *elem_scale = calloc(n, sizeof(double));
    randn(z0, n, 2.0f);
    randn(bias, cols, 0.5f);
    randn(dy, n, 1.0f);
    float *dz0 = gput(z0, n * sizeof(float)), *dbias = gput(bias, cols * sizeof(float));
    float *ddy = gput(dy, n * sizeof(float));
    float *dz = G->alloc(gpu, n * sizeof(float)), *dyv = G->alloc(gpu, n * sizeof(float));
    float *ddz = G->alloc(gpu, n * sizeof(float)), *ddb = G->alloc(gpu, cols * sizeof(float));
    if (!dz0 || !dbias || !ddy || !dz || !dyv || !ddz || !ddb)
      goto done;
    for (size_t ai = 0; ai < N_ACTS; ai++) {
      const td_act act = acts[ai];
      for (int with_bias = 0; with_bias < 2; with_bias++) {
        /* y separate from z, or (when the derivative allows) y = z. */
        for (int alias = 0; alias < 1 + !td_act_needs_preact(act); alias++) {
          char label[96];
          snprintf(label, sizeof label, "%s (%dx%d, bias %d, y=z %d)", td_act_name(act), rows, cols,
                   with_bias, alias);
          memcpy(zc, z0, n * sizeof(float));
          C->bias_act_fwd(cpu, act, rows, cols, with_bias ? bias : NULL, zc, alias ? zc : yc);
          const float *yref = alias ? zc : yc;
          CHECK_OK(G->copy(gpu, dz, dz0, n));
          CHECK_OK(G->bias_act_fwd(gpu, act, rows, cols, with_bias ? dbias : NULL, dz,
                                   alias ? dz : dyv));
          if (!alias) {
            gget(got, dz, n * sizeof(float));
            CHECK_BITS(label, got, zc, n); /* z + bias */
          }
          gget(got, alias ? dz : dyv, n * sizeof(float));
          if (act == TD_ACT_NONE || act == TD_ACT_RELU) {
            CHECK_BITS(label, got, yref, n);
          } else {
            for (size_t i = 0; i < n; i++)
              elem_scale[i] = act_fwd_scale(act, zc[i], yref[i]);
            check_scaled(label, got, yref, elem_scale, n, 1e-6);
          }

          /* Backward from the CPU's z and y (uploaded), so that only the
           * backward pass is compared. */
          float *gz = gput(zc, n * sizeof(float)), *gy = alias ? gz : gput(yc, n * sizeof(float));
          if (!gz || !gy) {
            if (gy != gz)
              gfree(gy);
            gfree(gz);
            continue;
          }
          for (int with_db = 0; with_db < 2; with_db++)
            for (int inplace = 0; inplace < 2; inplace++) {
              snprintf(label, sizeof label, "%s backward (%dx%d, y=z %d, dbias %d, dz=dy %d)",
                       td_act_name(act), rows, cols, alias, with_db, inplace);
              memcpy(dzc, dy, n * sizeof(float));
              C->bias_act_bwd(cpu, act, rows, cols, zc, yref, dzc, dzc, with_db ? dbc : NULL);
              CHECK_OK(G->copy(gpu, ddz, ddy, n));
              CHECK_OK(G->fill(gpu, ddb, (size_t)cols, 99.0f));
              CHECK_OK(G->bias_act_bwd(gpu, act, rows, cols, gz, gy, inplace ? ddz : ddy, ddz,
                                       with_db ? ddb : NULL));
              gget(got, ddz, n * sizeof(float));
              const int exact = !td_act_needs_preact(act);
              for (size_t i = 0; i < n; i++)
                elem_scale[i] = exact ? fabs(dzc[i]) : act_bwd_scale(act, zc[i], dy[i]);
              if (exact) /* derivatives from y: the same float operations */
                CHECK_BITS(label, got, dzc, n);
              else
                check_scaled(label, got, dzc, elem_scale, n, 1e-6);
              if (with_db) {
                gget(gotb, ddb, cols * sizeof(float));
                col_sums(elem_scale, rows, cols, scale);
                double worst = 0.0;
                int wc = 0;
                for (int c = 0; c < cols; c++) {
                  double e = fabs((double)gotb[c] - dbc[c]) / (scale[c] > 1e-30 ? scale[c] : 1e-30);
                  if (!(e <= worst)) {
                    worst = e;
                    wc = c;
                  }
                }
                CHECK(worst <= 1e-5, "%s: dbias[%d] = %.9g, want %.9g (%.3g of the scale)", label,
                      wc, (double)gotb[wc], (double)dbc[wc], worst);
                /* The same bits on a second run. */
                float *again = hmalloc(cols);
                CHECK_OK(G->copy(gpu, ddz, ddy, n));
                CHECK_OK(G->bias_act_bwd(gpu, act, rows, cols, gz, gy, ddz, ddz, ddb));
                gget(again, ddb, cols * sizeof(float));
                CHECK_BITS("dbias run to run", again, gotb, (size_t)cols);
                free(again);
              }
            }
          if (gy != gz)
            gfree(gy);
          gfree(gz);
        }
      }
    }
  done:
    gfree(dz0);
    gfree(dbias);
    gfree(ddy);
    gfree(dz);
    gfree(dyv);
    gfree(ddz);
    gfree(ddb);
    free(z0);
    free(bias);
    free(dy);
    free(zc);
    free(yc);
    free(dzc);
    free(dbc);
    free(got);
    free(gotb);
    free(scale);
    free(elem_scale);
  }
}

/* ------------------------------------------------------------------ losses */

static void check_losses(void) {
  const int shapes[][2] = {{1, 1}, {5, 10}, {128, 10}, {64, 1000}, {3, 7}, {70000, 3}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    const int rows = shapes[s][0], cols = shapes[s][1];
    const size_t n = (size_t)rows * cols;
    float *x = hmalloc(n), *want = hmalloc(n), *got = hmalloc(n);
    int32_t *labels = malloc((size_t)rows * sizeof *labels);
    randn(x, n, 3.0f);
    rand_labels(labels, (size_t)rows, cols);
    /* Exact ties: the first maximum is the argmax on both backends. */
    if (cols >= 4 && rows >= 3) {
      for (int c = 0; c < cols; c++)
        x[c] = x[cols + c] = 0.0f;
      labels[0] = 0;
      labels[1] = 3;
      x[2 * cols + 1] = x[2 * cols + 3] = 50.0f;
      labels[2] = 1;
    }
    float *dx = gput(x, n * sizeof(float));
    int32_t *dl = gput(labels, (size_t)rows * sizeof *labels);
    float *dd = G->alloc(gpu, n * sizeof(float)), *dout = G->alloc(gpu, 2 * sizeof(float));
    if (!dx || !dl || !dd || !dout)
      goto done;
    for (int loss = 0; loss < 2; loss++)
      for (int with_grad = 0; with_grad < 2; with_grad++) {
        const float gs = loss ? 1.0f / ((float)rows * cols) : 1.0f / (float)rows;
        float outc[2], outg[2], again[2];
        char label[96];
        snprintf(label, sizeof label, "%s (%dx%d, grad %d)", loss ? "mse_onehot" : "softmax_xent",
                 rows, cols, with_grad);
        if (loss) {
          C->mse_onehot(cpu, rows, cols, x, labels, gs, with_grad ? want : NULL, outc);
          CHECK_OK(G->mse_onehot(gpu, rows, cols, dx, dl, gs, with_grad ? dd : NULL, dout));
        } else {
          C->softmax_xent(cpu, rows, cols, x, labels, gs, with_grad ? want : NULL, outc);
          CHECK_OK(G->softmax_xent(gpu, rows, cols, dx, dl, gs, with_grad ? dd : NULL, dout));
        }
        gget(outg, dout, sizeof outg);
        /* The loss sum relative to itself, or to 1 per row when smaller
         * (a row's loss can be 0). */
        CHECK(td_relerr(outg[0], outc[0], rows) <= 1e-5, "%s: loss %.9g, want %.9g", label,
              (double)outg[0], (double)outc[0]);
        CHECK(outg[1] == outc[1], "%s: %g hits, want %g", label, (double)outg[1], (double)outc[1]);
        if (with_grad) {
          gget(got, dd, n * sizeof(float));
          /* Softmax gradients depend on the row's sum of exponentials:
           * a reduction, at 1e-5 of max(|want|, grad_scale). */
          if (loss)
            CHECK_BITS(label, got, want, n);
          else
            CHECK_ARRAY(label, got, want, n, 1e-5, gs);
        }
        /* Run to run: the same bits. */
        if (loss)
          CHECK_OK(G->mse_onehot(gpu, rows, cols, dx, dl, gs, NULL, dout));
        else
          CHECK_OK(G->softmax_xent(gpu, rows, cols, dx, dl, gs, NULL, dout));
        gget(again, dout, sizeof again);
        CHECK_BITS(label, again, outg, 2);
      }
  done:
    gfree(dx);
    gfree(dl);
    gfree(dd);
    gfree(dout);
    free(x);
    free(want);
    free(got);
    free(labels);
  }
}

/* ----------------------------------------------------------------- dropout */

static void check_dropout(void) {
  enum { N = 100003 };
  const uint64_t firsts[] = {0, 5000, ((uint64_t)1 << 32) - 777, (uint64_t)3 << 40};
  const float rates[] = {0.1f, 0.3f, 0.9f};
  float *x = hmalloc(N), *mc = hmalloc(N), *yc = hmalloc(N), *mg = hmalloc(N), *yg = hmalloc(N);
  randn(x, N, 1.0f);
  float *dx = gput(x, N * sizeof(float));
  float *dm = G->alloc(gpu, N * sizeof(float)), *dy = G->alloc(gpu, N * sizeof(float));
  /* The key's two words live in backend memory: host memory for the CPU,
   * a device buffer for the GPU. */
  uint32_t *dkey = G->alloc(gpu, 2 * sizeof(uint32_t));
  for (size_t f = 0; f < sizeof firsts / sizeof *firsts && dx && dm && dy && dkey; f++)
    for (size_t r = 0; r < sizeof rates / sizeof *rates; r++) {
      td_key key = td_prng_fold_in(td_prng_key(99), (uint32_t)(f * 10 + r));
      C->dropout_fwd(cpu, N, firsts[f], rates[r], key.k, x, mc, yc);
      CHECK_OK(G->upload(gpu, dkey, key.k, sizeof key.k));
      CHECK_OK(G->dropout_fwd(gpu, N, firsts[f], rates[r], dkey, dx, dm, dy));
      gget(mg, dm, N * sizeof(float));
      gget(yg, dy, N * sizeof(float));
      char label[96];
      snprintf(label, sizeof label, "dropout mask (first %llu, rate %g)",
               (unsigned long long)firsts[f], (double)rates[r]);
      CHECK_BITS(label, mg, mc, N);
      CHECK_BITS(label, yg, yc, N);
    }
  /* In place (y = x), on a size that is no multiple of anything. */
  if (dx && dm && dkey) {
    const uint32_t k12[2] = {1, 2};
    C->dropout_fwd(cpu, 12345, 17, 0.5f, k12, x, mc, yc);
    CHECK_OK(G->upload(gpu, dkey, k12, sizeof k12));
    CHECK_OK(G->dropout_fwd(gpu, 12345, 17, 0.5f, dkey, dx, dm, dx));
    gget(yg, dx, 12345 * sizeof(float));
    CHECK_BITS("dropout in place", yg, yc, 12345);
  }
  gfree(dx);
  gfree(dm);
  gfree(dy);
  gfree(dkey);
  free(x);
  free(mc);
  free(yc);
  free(mg);
  free(yg);
}

/* ---------------------------------------------------------- sum of squares */

static void check_sumsq(void) {
  const size_t sizes[] = {0, 1, 4099, 1000003, 16777259};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
    size_t n = sizes[s];
    float *x = hmalloc(n);
    randn(x, n, 0.01f);
    float want = 0.0f, got = -1.0f, again = -2.0f;
    C->sumsq(cpu, n, x, &want);
    float *dx = gput(x, n * sizeof(float)), *dout = G->alloc(gpu, sizeof(float));
    if (dx && dout) {
      CHECK_OK(G->sumsq(gpu, n, dx, dout));
      gget(&got, dout, sizeof got);
      CHECK(td_relerr(got, want, 1e-30) <= 1e-5, "sumsq(n=%zu) = %.9g, want %.9g", n, (double)got,
            (double)want);
      CHECK_OK(G->sumsq(gpu, n, dx, dout));
      gget(&again, dout, sizeof again);
      CHECK(memcmp(&again, &got, sizeof got) == 0, "sumsq(n=%zu) run to run: %.9g then %.9g", n,
            (double)got, (double)again);
    }
    gfree(dx);
    gfree(dout);
    free(x);
  }
}

/* ------------------------------------------------------------ optimizer */

/* A pass's fixed part with the test's hyperparameters. */
static td_opt_pass test_pass(td_opt_kind kind, int apply, int nesterov) {
  td_opt_pass a = {
      .kind = kind,
      .apply = apply,
      .nesterov = nesterov,
      .wd = 1e-4f,
      .b1 = 0.9f,
      .b2 = 0.999f,
      .eps = 1e-8f,
      .eps_root = 1e-12f,
      .momentum = 0.9f,
  };
  return a;
}

/* The scalars of update `step` (1-based): in_scale 0.75 without a clip. */
static td_opt_scalars test_scalars(int step) {
  td_opt_scalars s = {
      .pre = 0.75,
      .post = 1.0,
      .mid_scale = -1e-3f,
      .out_scale = 1.5f,
      .bc1 = (float)(1.0 - pow(0.9, step)),
      .bc2 = (float)(1.0 - pow(0.999, step)),
  };
  return s;
}

static const struct {
  td_opt_kind kind;
  int nesterov;
  const char *name;
} opt_kinds[] = {{TD_OPT_ADAM, 0, "adam"},
                 {TD_OPT_TRACE, 0, "trace"},
                 {TD_OPT_TRACE, 1, "trace nesterov"},
                 {TD_OPT_IDENTITY, 0, "identity"}};
#define N_OPT_KINDS (sizeof opt_kinds / sizeof *opt_kinds)

/* Every kind, updating the gradient or applying, over three steps with the
 * step's scalars in device memory. The applying passes get a finite guard
 * (which must let them run), the others none. */
static void check_opt_pass(void) {
  enum { N = 100003, STEPS = 3 };
  float *p = hmalloc(N), *g = hmalloc(N), *s1 = hmalloc(N), *s2 = hmalloc(N);
  float *got = hmalloc(N), *p0 = hmalloc(N);
  float *dp = G->alloc(gpu, N * sizeof(float)), *dg = G->alloc(gpu, N * sizeof(float));
  float *ds1 = G->alloc(gpu, N * sizeof(float)), *ds2 = G->alloc(gpu, N * sizeof(float));
  td_opt_scalars *dsc = G->alloc(gpu, sizeof *dsc);
  const float guard = 5.0f;
  float *dguard = gput(&guard, sizeof guard);
  const int ok = dp && dg && ds1 && ds2 && dsc && dguard;
  for (size_t k = 0; k < N_OPT_KINDS && ok; k++)
    for (int apply = 0; apply < 2; apply++) {
      randn(p, N, 0.1f);
      memcpy(p0, p, N * sizeof(float));
      memset(s1, 0, N * sizeof(float));
      memset(s2, 0, N * sizeof(float));
      CHECK_OK(G->upload(gpu, dp, p, N * sizeof(float)));
      CHECK_OK(G->fill(gpu, ds1, N, 0.0f));
      CHECK_OK(G->fill(gpu, ds2, N, 0.0f));
      for (int step = 1; step <= STEPS; step++) {
        randn(g, N, 0.01f);
        CHECK_OK(G->upload(gpu, dg, g, N * sizeof(float)));
        const td_opt_pass a = test_pass(opt_kinds[k].kind, apply, opt_kinds[k].nesterov);
        const td_opt_scalars sc = test_scalars(step);
        CHECK_OK(G->upload(gpu, dsc, &sc, sizeof sc));
        const int need2 = a.kind == TD_OPT_ADAM, need1 = a.kind != TD_OPT_IDENTITY;
        C->opt_pass(cpu, &a, &sc, NULL, apply ? &guard : NULL, N, p, g, need1 ? s1 : NULL,
                    need2 ? s2 : NULL);
        CHECK_OK(G->opt_pass(gpu, &a, dsc, NULL, apply ? dguard : NULL, N, dp, dg,
                             need1 ? ds1 : NULL, need2 ? ds2 : NULL));
      }
      char label[96];
      snprintf(label, sizeof label, "opt_pass %s (apply %d): p", opt_kinds[k].name, apply);
      if (apply)
        CHECK(bitdiff(p, p0, N) > N / 2, "%s: the finite guard kept the update out", label);
      gget(got, dp, N * sizeof(float));
      CHECK_ARRAY(label, got, p, N, 1e-6, 1e-30);
      label[strlen(label) - 1] = 'g';
      gget(got, dg, N * sizeof(float));
      CHECK_ARRAY(label, got, g, N, 1e-6, 1e-30);
      if (opt_kinds[k].kind != TD_OPT_IDENTITY) {
        gget(got, ds1, N * sizeof(float));
        CHECK_ARRAY("opt_pass s1", got, s1, N, 1e-6, 1e-30);
      }
      if (opt_kinds[k].kind == TD_OPT_ADAM) {
        gget(got, ds2, N * sizeof(float));
        CHECK_ARRAY("opt_pass s2", got, s2, N, 1e-6, 1e-30);
      }
    }
  gfree(dp);
  gfree(dg);
  gfree(ds1);
  gfree(ds2);
  gfree(dsc);
  gfree(dguard);
  free(p);
  free(g);
  free(s1);
  free(s2);
  free(got);
  free(p0);
}

/* The clip inside a pass, from the squared norm in backend memory: optax's
 * clip_by_global_norm(clip_norm) of the updates scaled by pre, then post.
 * With an identity pass that only scales (mid 1, out 1, no decay) the
 * result is in_scale * g exactly, in_scale from the formula written out
 * here; and the clipped updates' norm is clip_norm when the norm was above
 * it, the norm itself when below. Then clip + adamw over three steps, the
 * GPU against the CPU. */
static void check_opt_clip(void) {
  enum { N = 100003, STEPS = 3 };
  const double clips[] = {1.0, 10.0}; /* below and above |pre| times the norm (about 2.4) */
  const double pres[] = {0.75, -0.75};
  float *p = hmalloc(N), *g = hmalloc(N), *gc = hmalloc(N), *got = hmalloc(N), *want = hmalloc(N),
        *s1 = hmalloc(N), *s2 = hmalloc(N);
  randn(p, N, 0.1f);
  randn(g, N, 0.01f);
  double sq = 0.0;
  for (size_t i = 0; i < N; i++)
    sq += (double)g[i] * g[i];
  float norm_sq = (float)sq;
  float *dp = gput(p, N * sizeof(float)), *dg = G->alloc(gpu, N * sizeof(float));
  float *dnorm = gput(&norm_sq, sizeof norm_sq);
  float *ds1 = G->alloc(gpu, N * sizeof(float)), *ds2 = G->alloc(gpu, N * sizeof(float));
  td_opt_scalars *dsc = G->alloc(gpu, sizeof *dsc);
  if (!dp || !dg || !dnorm || !ds1 || !ds2 || !dsc)
    goto done;
  for (size_t c = 0; c < sizeof clips / sizeof *clips; c++)
    for (size_t s = 0; s < sizeof pres / sizeof *pres; s++) {
      const td_opt_pass a = {.kind = TD_OPT_IDENTITY, .clip = 1, .clip_norm = clips[c]};
      const td_opt_scalars sc = {.pre = pres[s],
                                 .post = 2.0,
                                 .mid_scale = 1.0f,
                                 .out_scale = 1.0f,
                                 .bc1 = 1.0f,
                                 .bc2 = 1.0f};
      const double norm = fabs(sc.pre) * sqrt((double)norm_sq);
      CHECK(c == 0 ? norm > clips[c] : norm < clips[c],
            "clip test: |pre| * norm %.6g is on the wrong side of %g", norm, clips[c]);
      const double factor = norm < a.clip_norm ? 1.0 : a.clip_norm / norm;
      const float scale = (float)(sc.pre * factor * sc.post);
      char label[96];
      snprintf(label, sizeof label, "clip to %g of %.4g (pre %g)", clips[c], norm, sc.pre);
      CHECK(td_opt_in_scale(&a, &sc, norm_sq) == scale, "%s: td_opt_in_scale %.9g, want %.9g",
            label, (double)td_opt_in_scale(&a, &sc, norm_sq), (double)scale);
      for (size_t i = 0; i < N; i++)
        want[i] = scale * g[i];
      memcpy(gc, g, N * sizeof(float));
      C->opt_pass(cpu, &a, &sc, &norm_sq, NULL, N, p, gc, NULL, NULL);
      CHECK_BITS(label, gc, want, N);
      CHECK_OK(G->upload(gpu, dg, g, N * sizeof(float)));
      CHECK_OK(G->upload(gpu, dsc, &sc, sizeof sc));
      CHECK_OK(G->opt_pass(gpu, &a, dsc, dnorm, NULL, N, dp, dg, NULL, NULL));
      gget(got, dg, N * sizeof(float));
      CHECK_BITS(label, got, want, N);
      double out = 0.0;
      for (size_t i = 0; i < N; i++)
        out += (double)want[i] * want[i];
      out = sqrt(out) / fabs(sc.post);
      const double expect = norm < clips[c] ? norm : clips[c];
      CHECK(td_relerr(out, expect, 1e-30) < 1e-6, "%s: the clipped norm is %.9g, want %.9g", label,
            out, expect);
    }

  /* clip_by_global_norm(1) + adamw, three steps, each with its gradients'
   * squared norm; the clip is active (the norm is about 3). */
  memset(s1, 0, N * sizeof(float));
  memset(s2, 0, N * sizeof(float));
  CHECK_OK(G->upload(gpu, dp, p, N * sizeof(float)));
  CHECK_OK(G->fill(gpu, ds1, N, 0.0f));
  CHECK_OK(G->fill(gpu, ds2, N, 0.0f));
  for (int step = 1; step <= STEPS; step++) {
    randn(g, N, 0.01f);
    sq = 0.0;
    for (size_t i = 0; i < N; i++)
      sq += (double)g[i] * g[i];
    norm_sq = (float)sq;
    td_opt_pass a = test_pass(TD_OPT_ADAM, 1, 0);
    a.clip = 1;
    a.clip_norm = 1.0;
    td_opt_scalars sc = test_scalars(step);
    sc.pre = 1.0;
    CHECK_OK(G->upload(gpu, dg, g, N * sizeof(float)));
    CHECK_OK(G->upload(gpu, dnorm, &norm_sq, sizeof norm_sq));
    CHECK_OK(G->upload(gpu, dsc, &sc, sizeof sc));
    C->opt_pass(cpu, &a, &sc, &norm_sq, &norm_sq, N, p, g, s1, s2);
    CHECK_OK(G->opt_pass(gpu, &a, dsc, dnorm, dnorm, N, dp, dg, ds1, ds2));
  }
  gget(got, dp, N * sizeof(float));
  CHECK_ARRAY("clip + adamw: p", got, p, N, 1e-6, 1e-30);
  gget(got, ds1, N * sizeof(float));
  CHECK_ARRAY("clip + adamw: s1", got, s1, N, 1e-6, 1e-30);
  gget(got, ds2, N * sizeof(float));
  CHECK_ARRAY("clip + adamw: s2", got, s2, N, 1e-6, 1e-30);
done:
  gfree(dp);
  gfree(dg);
  gfree(dnorm);
  gfree(ds1);
  gfree(ds2);
  gfree(dsc);
  free(p);
  free(g);
  free(gc);
  free(got);
  free(want);
  free(s1);
  free(s2);
}

/* A non-finite guard (the step's squared gradient norm) leaves p, g, s1
 * and s2 bitwise as they were, on both backends, for every kind, with and
 * without apply, with a clip that reads the same non-finite norm. */
static void check_opt_guard(void) {
  enum { N = 4099 };
  const float guards[] = {NAN, INFINITY, -INFINITY};
  float *h[4], *h0[4], *got = hmalloc(N);
  float *d[4] = {NULL, NULL, NULL, NULL};
  for (int b = 0; b < 4; b++) {
    h[b] = hmalloc(N);
    h0[b] = hmalloc(N);
    d[b] = G->alloc(gpu, N * sizeof(float));
  }
  td_opt_scalars *dsc = G->alloc(gpu, sizeof *dsc);
  float *dguard = G->alloc(gpu, sizeof(float));
  static const char *const names[4] = {"p", "g", "s1", "s2"};
  for (size_t k = 0; k < N_OPT_KINDS && d[0] && d[1] && d[2] && d[3] && dsc && dguard; k++)
    for (int apply = 0; apply < 2; apply++)
      for (size_t gi = 0; gi < sizeof guards / sizeof *guards; gi++) {
        for (int b = 0; b < 4; b++) {
          randn(h[b], N, 0.1f);
          if (b == 3)
            for (size_t i = 0; i < N; i++)
              h[b][i] = fabsf(h[b][i]); /* a second moment */
          memcpy(h0[b], h[b], N * sizeof(float));
          CHECK_OK(G->upload(gpu, d[b], h[b], N * sizeof(float)));
        }
        td_opt_pass a = test_pass(opt_kinds[k].kind, apply, opt_kinds[k].nesterov);
        a.clip = 1;
        a.clip_norm = 1.0;
        const td_opt_scalars sc = test_scalars(2);
        const float gv = guards[gi];
        CHECK_OK(G->upload(gpu, dsc, &sc, sizeof sc));
        CHECK_OK(G->upload(gpu, dguard, &gv, sizeof gv));
        C->opt_pass(cpu, &a, &sc, &gv, &gv, N, h[0], h[1], h[2], h[3]);
        CHECK_OK(G->opt_pass(gpu, &a, dsc, dguard, dguard, N, d[0], d[1], d[2], d[3]));
        for (int b = 0; b < 4; b++) {
          char label[96];
          snprintf(label, sizeof label, "guard %g, %s (apply %d): CPU %s", (double)gv,
                   opt_kinds[k].name, apply, names[b]);
          CHECK_BITS(label, h[b], h0[b], N);
          gget(got, d[b], N * sizeof(float));
          snprintf(label, sizeof label, "guard %g, %s (apply %d): GPU %s", (double)gv,
                   opt_kinds[k].name, apply, names[b]);
          CHECK_BITS(label, got, h0[b], N);
        }
      }
  for (int b = 0; b < 4; b++) {
    gfree(d[b]);
    free(h[b]);
    free(h0[b]);
  }
  gfree(dsc);
  gfree(dguard);
  free(got);
}

/* ------------------------------------------------------------- step table */

/* step_begin copies record *counter of the table to cur and moves the
 * counter on, all in device memory: records of several sizes (one word to
 * more than a block's threads move at once), from the first record and
 * from the middle, read back after each call and after two calls queued
 * back to back (the second must see the first's counter). The CPU backend
 * does the same on host memory. */
static void check_step_begin(void) {
  const size_t rec_words[] = {1, 3, 10, 250};
  enum { RECS = 9 };
  for (size_t w = 0; w < sizeof rec_words / sizeof *rec_words; w++) {
    const size_t words = rec_words[w], rec_bytes = words * sizeof(uint32_t);
    uint32_t *table = malloc(RECS * rec_bytes), *cur = malloc(rec_bytes),
             *cpu_cur = malloc(rec_bytes);
    td_prng_bits(td_prng_fold_in(td_prng_key(31), draws++), table, RECS * words);
    uint32_t *dtable = gput(table, RECS * rec_bytes), *dcur = G->alloc(gpu, rec_bytes);
    uint32_t *dcounter = G->alloc(gpu, sizeof(uint32_t));
    const uint32_t starts[] = {0, 4};
    for (size_t s = 0; s < sizeof starts / sizeof *starts && dtable && dcur && dcounter; s++) {
      uint32_t counter = starts[s], cpu_counter = starts[s];
      CHECK_OK(G->upload(gpu, dcounter, &counter, sizeof counter));
      for (uint32_t k = starts[s]; k < RECS; k++) {
        char label[96];
        snprintf(label, sizeof label, "step_begin (%zu-word records), record %u", words, k);
        const int twice = k + 1 < RECS && k % 3 == 2;
        CHECK_OK(G->step_begin(gpu, dtable, rec_bytes, dcounter, dcur));
        C->step_begin(cpu, table, rec_bytes, &cpu_counter, cpu_cur);
        if (twice) {
          k++;
          CHECK_OK(G->step_begin(gpu, dtable, rec_bytes, dcounter, dcur));
          C->step_begin(cpu, table, rec_bytes, &cpu_counter, cpu_cur);
        }
        counter = 0;
        memset(cur, 0xa5, rec_bytes);
        gget(&counter, dcounter, sizeof counter);
        gget(cur, dcur, rec_bytes);
        CHECK(counter == k + 1, "%s: the counter is %u, want %u", label, counter, k + 1);
        CHECK(memcmp(cur, table + (size_t)k * words, rec_bytes) == 0,
              "%s: cur is not the table's record", label);
        CHECK(cpu_counter == k + 1, "%s on the CPU: the counter is %u", label, cpu_counter);
        CHECK(memcmp(cpu_cur, table + (size_t)k * words, rec_bytes) == 0,
              "%s on the CPU: cur is not the table's record", label);
      }
    }
    /* The table itself is only read. */
    uint32_t *back = malloc(RECS * rec_bytes);
    if (dtable) {
      gget(back, dtable, RECS * rec_bytes);
      CHECK(memcmp(back, table, RECS * rec_bytes) == 0, "step_begin wrote into the table");
    }
    free(back);
    gfree(dtable);
    gfree(dcur);
    gfree(dcounter);
    free(table);
    free(cur);
    free(cpu_cur);
  }
}

/* record stores n floats at the slot that device memory names: slots in
 * any order, sizes below and above a warp, the other slots untouched; the
 * CPU backend likewise. */
static void check_record(void) {
  const size_t ns[] = {1, 3, 1000};
  const uint32_t slots[] = {3, 0, 4, 3};
  enum { SLOTS = 5 };
  for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
    const size_t n = ns[t];
    float *src = hmalloc(n), *want = hmalloc(SLOTS * n), *cpu_dst = hmalloc(SLOTS * n),
          *got = hmalloc(SLOTS * n);
    float *dsrc = G->alloc(gpu, n * sizeof(float));
    float *ddst = G->alloc(gpu, SLOTS * n * sizeof(float));
    uint32_t *dslot = G->alloc(gpu, sizeof(uint32_t));
    if (dsrc && ddst && dslot) {
      for (size_t i = 0; i < SLOTS * n; i++)
        want[i] = cpu_dst[i] = -7.0f;
      CHECK_OK(G->fill(gpu, ddst, SLOTS * n, -7.0f));
      for (size_t s = 0; s < sizeof slots / sizeof *slots; s++) {
        randn(src, n, 1.0f);
        memcpy(want + (size_t)slots[s] * n, src, n * sizeof(float));
        C->record(cpu, &slots[s], src, n, cpu_dst);
        CHECK_OK(G->upload(gpu, dsrc, src, n * sizeof(float)));
        CHECK_OK(G->upload(gpu, dslot, &slots[s], sizeof slots[s]));
        CHECK_OK(G->record(gpu, dslot, dsrc, n, ddst));
      }
      gget(got, ddst, SLOTS * n * sizeof(float));
      char label[64];
      snprintf(label, sizeof label, "record (n=%zu)", n);
      CHECK_BITS(label, got, want, SLOTS * n);
      snprintf(label, sizeof label, "record on the CPU (n=%zu)", n);
      CHECK_BITS(label, cpu_dst, want, SLOTS * n);
    }
    gfree(dsrc);
    gfree(ddst);
    gfree(dslot);
    free(src);
    free(want);
    free(cpu_dst);
    free(got);
  }
}

/* ------------------------------------------------------------------ shuffle */

/* The backend's shuffle against td_prng_permutation, bit for bit: sizes
 * with 0 rounds (1), 1 round (2, 1000), 2 rounds (60000, MNIST's) and 3
 * rounds (3000000), several keys each; the order buffer is garbage before. */
static void check_shuffle(void) {
  CHECK(G->shuffle != NULL, "the CUDA backend has no shuffle");
  if (!G->shuffle)
    return;
  const uint32_t ns[] = {1, 2, 1000, 60000, 3000000};
  const int want_rounds[] = {0, 1, 1, 2, 3};
  const uint64_t seeds[] = {0, 1, 42, 0xdeadbeefcafeull};
  for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
    const uint32_t n = ns[t];
    uint32_t *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
    uint32_t *dorder = G->alloc(gpu, (size_t)n * sizeof *dorder);
    for (size_t s = 0; s < sizeof seeds / sizeof *seeds && dorder; s++) {
      const td_key key = td_prng_fold_in(td_prng_key(seeds[s]), (uint32_t)t);
      td_key rk[TD_PRNG_MAX_ROUNDS];
      const int rounds = td_prng_permutation_keys(key, n, rk);
      CHECK(rounds == want_rounds[t], "n=%u: %d rounds, want %d", n, rounds, want_rounds[t]);
      uint32_t words[2 * TD_PRNG_MAX_ROUNDS];
      for (int r = 0; r < rounds; r++) {
        words[2 * r] = rk[r].k[0];
        words[2 * r + 1] = rk[r].k[1];
      }
      CHECK_OK(td_prng_permutation(key, want, n));
      memset(got, 0xff, (size_t)n * sizeof *got);
      CHECK_OK(G->upload(gpu, dorder, got, (size_t)n * sizeof *got));
      CHECK_OK(G->shuffle(gpu, n, rounds, words, dorder));
      gget(got, dorder, (size_t)n * sizeof *got);
      size_t first = n;
      for (size_t i = 0; i < n && first == n; i++)
        if (got[i] != want[i])
          first = i;
      CHECK(first == n, "shuffle n=%u, seed %llu: position %zu is %u, want %u", n,
            (unsigned long long)seeds[s], first, first < n ? got[first] : 0,
            first < n ? want[first] : 0);
    }
    gfree(dorder);
    free(want);
    free(got);
  }
}

/* ------------------------------------------------------------------ graphs */

/* A small recorded step: the record from a table (step_begin), the batch
 * from the place the record names (gather at a device offset), dropout with
 * the record's key, c += y w (gemm with beta 1: every step changes c), the
 * sum of squares of c next to it, and both stored at the record's slot. */
enum { G_RECS = 12, G_ROWS = 200, G_B = 16, G_D = 33, G_H = 24, G_OUT = G_B * G_H + 1 };

typedef struct graph_rec {
  uint32_t slot, row0, key[2];
} graph_rec;

typedef struct graph_bufs {
  /* Shared and only read: the table, the dataset, its order, w (D, H). */
  const graph_rec *table;
  const float *src;
  const int32_t *labels;
  const uint32_t *idx;
  const float *w;
  /* Each run's own. */
  uint32_t *counter;
  graph_rec *cur;
  float *x, *mask, *y; /* (B, D) */
  int32_t *xl;         /* (B) */
  float *c;            /* (B, H) and its sum of squares: G_OUT floats */
  float *metrics;      /* (G_RECS, G_OUT) */
  int steps;           /* steps per body */
} graph_bufs;

static int graph_body(void *arg) {
  const graph_bufs *b = arg;
  int rc = 0;
  for (int s = 0; s < b->steps && !rc; s++) {
    if ((rc = G->step_begin(gpu, b->table, sizeof(graph_rec), b->counter, b->cur)) ||
        (rc = G->gather(gpu, b->src, b->labels, G_D, b->idx, &b->cur->row0, G_B, b->x, b->xl)) ||
        (rc = G->dropout_fwd(gpu, (size_t)G_B * G_D, 0, 0.25f, b->cur->key, b->x, b->mask, b->y)) ||
        (rc = G->gemm(gpu, 0, 0, G_B, G_H, G_D, 1.0f, b->y, G_D, b->w, G_H, 1.0f, b->c, G_H)) ||
        (rc = G->sumsq(gpu, (size_t)G_B * G_H, b->c, b->c + G_B * G_H)))
      break;
    rc = G->record(gpu, &b->cur->slot, b->c, G_OUT, b->metrics);
  }
  return rc;
}

/* One run's buffers, c starting from c0. */
static int graph_bufs_init(graph_bufs *b, const float *c0) {
  b->counter = G->alloc(gpu, sizeof(uint32_t));
  b->cur = G->alloc(gpu, sizeof(graph_rec));
  b->x = G->alloc(gpu, (size_t)G_B * G_D * sizeof(float));
  b->mask = G->alloc(gpu, (size_t)G_B * G_D * sizeof(float));
  b->y = G->alloc(gpu, (size_t)G_B * G_D * sizeof(float));
  b->xl = G->alloc(gpu, G_B * sizeof(int32_t));
  b->c = gput(c0, G_OUT * sizeof(float));
  b->metrics = G->alloc(gpu, (size_t)G_RECS * G_OUT * sizeof(float));
  return b->counter && b->cur && b->x && b->mask && b->y && b->xl && b->c && b->metrics;
}

static void graph_bufs_free(graph_bufs *b) {
  gfree(b->counter);
  gfree(b->cur);
  gfree(b->x);
  gfree(b->mask);
  gfree(b->y);
  gfree(b->xl);
  gfree(b->c);
  gfree(b->metrics);
}

/* Compares one buffer of two runs bitwise. */
static void graph_same(const char *what, const void *da, const void *db, size_t words) {
  uint32_t *ha = malloc(words * 4), *hb = malloc(words * 4);
  gget(ha, da, words * 4);
  gget(hb, db, words * 4);
  char label[96];
  snprintf(label, sizeof label, "graph replays against op by op: %s", what);
  CHECK_BITS(label, hb, ha, words);
  free(ha);
  free(hb);
}

/* The step recorded as a one-step graph and a three-step graph, replayed
 * 3 x 1 + 2 x 3 + 1 x 1 = 10 times, against the same ops run 10 times op
 * by op on buffers of their own from the same start: every buffer bitwise
 * equal. Recording runs nothing; each replay reads its own record. */
static void check_graph(void) {
  CHECK(G->graph_record && G->graph_replay && G->graph_free, "the CUDA backend cannot record");
  if (!G->graph_record || !G->graph_replay || !G->graph_free)
    return;
  enum { STEPS = 10 };
  graph_rec table[G_RECS];
  uint32_t bits[G_RECS * 2], order[G_ROWS];
  td_prng_bits(td_prng_fold_in(td_prng_key(5), draws++), bits, G_RECS * 2);
  for (uint32_t s = 0; s < G_RECS; s++) {
    table[s].slot = G_RECS - 1 - s;
    table[s].row0 = (s * 37) % (G_ROWS - G_B);
    table[s].key[0] = bits[2 * s];
    table[s].key[1] = bits[2 * s + 1];
  }
  CHECK_OK(td_prng_permutation(td_prng_key(6), order, G_ROWS));
  float *src = hmalloc((size_t)G_ROWS * G_D), *w = hmalloc((size_t)G_D * G_H), *c0 = hmalloc(G_OUT);
  int32_t labels[G_ROWS];
  randn(src, (size_t)G_ROWS * G_D, 1.0f);
  randn(w, (size_t)G_D * G_H, 0.3f);
  randn(c0, G_OUT, 1.0f);
  rand_labels(labels, G_ROWS, 10);
  graph_bufs a = {0}, b = {0};
  a.table = b.table = gput(table, sizeof table);
  a.src = b.src = gput(src, (size_t)G_ROWS * G_D * sizeof(float));
  a.labels = b.labels = gput(labels, sizeof labels);
  a.idx = b.idx = gput(order, sizeof order);
  a.w = b.w = gput(w, (size_t)G_D * G_H * sizeof(float));
  void *g1 = NULL, *gn = NULL;
  float *metrics = hmalloc((size_t)G_RECS * G_OUT), *c = hmalloc(G_OUT);
  uint32_t counter = 99;
  if (!a.table || !a.src || !a.labels || !a.idx || !a.w || !graph_bufs_init(&a, c0) ||
      !graph_bufs_init(&b, c0))
    goto done;

  /* Op by op (the first run also warms cuBLAS and the scratch up). */
  a.steps = 1;
  for (int s = 0; s < STEPS; s++)
    CHECK_OK(graph_body(&a));

  /* Recorded: nothing runs while recording. */
  graph_bufs b1 = b, bn = b;
  b1.steps = 1;
  bn.steps = 3;
  CHECK_OK(G->graph_record(gpu, graph_body, &b1, &g1));
  CHECK_OK(G->graph_record(gpu, graph_body, &bn, &gn));
  CHECK(g1 && gn, "graph_record returned no graph");
  if (!g1 || !gn)
    goto done;
  gget(&counter, b.counter, sizeof counter);
  CHECK(counter == 0, "recording ran the step: the counter is %u", counter);
  gget(c, b.c, G_OUT * sizeof(float));
  CHECK_BITS("recording ran the step: c", c, c0, G_OUT);
  for (int r = 0; r < 3; r++)
    CHECK_OK(G->graph_replay(gpu, g1));
  for (int r = 0; r < 2; r++)
    CHECK_OK(G->graph_replay(gpu, gn));
  CHECK_OK(G->graph_replay(gpu, g1));

  gget(&counter, b.counter, sizeof counter);
  CHECK(counter == STEPS, "after the replays the counter is %u, want %d", counter, STEPS);
  graph_same("counter", a.counter, b.counter, 1);
  graph_same("cur", a.cur, b.cur, sizeof(graph_rec) / 4);
  graph_same("x", a.x, b.x, (size_t)G_B * G_D);
  graph_same("labels", a.xl, b.xl, G_B);
  graph_same("mask", a.mask, b.mask, (size_t)G_B * G_D);
  graph_same("y", a.y, b.y, (size_t)G_B * G_D);
  graph_same("c and its sum of squares", a.c, b.c, G_OUT);
  graph_same("metrics", a.metrics, b.metrics, (size_t)G_RECS * G_OUT);
  /* Each step stored its metrics at its own record's slot: the slots of
   * steps 0..9 hold distinct values (c grew), those of 10 and 11 none. */
  gget(metrics, b.metrics, (size_t)G_RECS * G_OUT * sizeof(float));
  for (uint32_t s = 0; s < G_RECS; s++) {
    const float *m = metrics + (size_t)table[s].slot * G_OUT;
    if (s < STEPS)
      CHECK(m[G_OUT - 1] > 0.0f && (s == 0 || m[G_OUT - 1] != m[G_OUT - 1 + G_OUT]),
            "step %u: sum of squares %g at slot %u", s, (double)m[G_OUT - 1], table[s].slot);
    else
      CHECK(m[G_OUT - 1] == 0.0f, "slot %u of an unrun step holds %g", table[s].slot,
            (double)m[G_OUT - 1]);
  }
done:
  if (g1)
    G->graph_free(gpu, g1);
  if (gn)
    G->graph_free(gpu, gn);
  graph_bufs_free(&a);
  graph_bufs_free(&b);
  gfree((void *)a.table);
  gfree((void *)a.src);
  gfree((void *)a.labels);
  gfree((void *)a.idx);
  gfree((void *)a.w);
  free(src);
  free(w);
  free(c0);
  free(metrics);
  free(c);
}

/* ---------------------------------------------------------------- errors */

static void check_errors(void) {
  float *a = G->alloc(gpu, 64 * sizeof(float)), *c = G->alloc(gpu, 64 * sizeof(float));
  if (!a || !c)
    return;
  /* cuBLAS refuses a leading dimension smaller than a row: an error value
   * that names the call, and the backend goes on working. */
  int rc = G->gemm(gpu, 0, 0, 4, 4, 4, 1.0f, a, 3, a, 4, 0.0f, c, 4);
  CHECK(rc == TD_EBACKEND, "gemm with lda < k: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "cublasSgemm");
  rc = G->bias_act_fwd(gpu, TD_ACT_RELU, -1, 4, NULL, a, a);
  CHECK(rc == TD_EINVAL, "negative rows: rc %d", rc);
  rc = G->softmax_xent(gpu, 2, 0, a, (const int32_t *)c, 1.0f, NULL, c);
  CHECK(rc == TD_EINVAL, "softmax over no columns: rc %d", rc);
  rc = G->bias_act_bwd(gpu, (td_act)42, 2, 2, a, a, a, a, NULL);
  CHECK(rc == TD_EINVAL, "unknown activation: rc %d", rc);
  float h[64];
  CHECK_OK(G->fill(gpu, a, 64, 2.5f));
  gget(h, a, sizeof h);
  CHECK(h[0] == 2.5f && h[63] == 2.5f, "the backend after refused calls: %g %g", (double)h[0],
        (double)h[63]);
  gfree(a);
  gfree(c);
}

/* The child: a kernel reads through a pointer that is no device memory.
 * The fault must come back as errors from the calls that meet it, and
 * tearing the backend down must not crash. */
static int fault_child(void) {
  td_error err = {0};
  td_backend *be = NULL;
  if (td_cuda_backend_create(&be, 0, &err)) {
    fprintf(stderr, "fault child: %s\n", err.msg);
    return 2;
  }
  gpu = be;
  G = be->ops;
  enum { N = 1 << 20 };
  float *good = G->alloc(be, N * sizeof(float));
  CHECK(good != NULL, "alloc: %s", td_cuda_backend_last_error(be));
  if (!good)
    return td_check_exit();
  float host[4];
  /* A kernel reading from address 0x100: the launch may succeed; the
   * fault shows at the latest when the stream is synchronized. */
  int rc1 = G->mul(be, N, (const float *)(uintptr_t)0x100, good, good);
  int rc2 = G->download(be, host, good, sizeof host);
  CHECK(rc1 != TD_OK || rc2 != TD_OK, "a kernel reading address 0x100 reported no error");
  CHECK(td_cuda_backend_last_error(be)[0] != '\0', "no message for the fault");
  fprintf(stderr, "fault child: after the fault: %s\n", td_cuda_backend_last_error(be));
  /* The context is gone: a launch reports it, and so does cuBLAS. */
  int rc = G->fill(be, good, N, 1.0f);
  CHECK(rc == TD_EBACKEND, "fill after the fault: rc %d", rc);
  /* Named by the launch check (or by the device switch before it). */
  const char *msg = td_cuda_backend_last_error(be);
  CHECK(strstr(msg, "fill_kernel") || strstr(msg, "cudaSetDevice"),
        "fill after the fault: \"%s\" names neither the kernel nor the call", msg);
  fprintf(stderr, "fault child: fill after the fault: %s\n", msg);
  rc = G->gemm(be, 0, 0, 8, 8, 8, 1.0f, good, 8, good, 8, 0.0f, good, 8);
  int rc3 = G->download(be, host, good, sizeof host);
  CHECK(rc != TD_OK || rc3 != TD_OK, "gemm after the fault reported no error");
  G->release(be, good);
  td_backend_destroy(be);
  return td_check_exit();
}

static void check_fault(const char *self) {
  char *args[] = {(char *)self, "--fault", NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args, environ);
  CHECK(rc == 0, "posix_spawn: %s", strerror(rc));
  if (rc)
    return;
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "the fault child %s %d (0 expected: every fault reported as an error)",
        WIFEXITED(status) ? "exited with" : "was killed by signal",
        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

/* -------------------------------------------------------- training steps */

static const char *train_opt_tail = "dataset: {idx: {dir: none}}\n"
                                    "training: {epochs: 1, batch_size: 1}\n";

/* 20 steps on both backends from the same parameters, batches and dropout
 * keys; the parameters must agree to a relative error below 1e-4. */
static void check_training(const char *label, const char *doc_head, uint32_t batch) {
  enum { N_EX = 517, STEPS = 20 };
  char doc[4096];
  snprintf(doc, sizeof doc, "%s%s", doc_head, train_opt_tail);
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  td_plan *p = NULL;
  td_state sc = {0}, sg = {0};
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  if (!rc)
    rc = td_plan_compile(spec->model, spec->optimizer, batch, "cuda:0", &p, &err);
  if (!rc)
    rc = td_state_init(&sc, p, cpu, &err);
  if (!rc)
    rc = td_state_init(&sg, p, gpu, &err);
  CHECK(rc == 0, "%s: %s", label, err.msg);
  if (rc)
    goto out;
  const td_key key = td_prng_key(77);
  CHECK_OK(td_state_init_params(&sc, key, &err));
  CHECK_OK(td_state_init_params(&sg, key, &err));
  const size_t np = p->n_params, dim = p->in_dim;
  float *p0 = hmalloc(np), *pg = hmalloc(np);
  memcpy(p0, sc.params, np * sizeof(float));
  gget(pg, sg.params, np * sizeof(float));
  CHECK_BITS("initial parameters", pg, p0, np);

  float *x = hmalloc(N_EX * dim);
  int32_t y[N_EX];
  randn(x, N_EX * dim, 1.0f);
  rand_labels(y, N_EX, (int)p->out_dim);
  float *gx = gput(x, N_EX * dim * sizeof(float));
  int32_t *gy = gput(y, sizeof y);
  uint32_t order[N_EX];
  /* The step's order and dropout keys (2 words per dropout layer): host
   * memory for the CPU, device copies for the GPU. */
  const size_t key_words = 2 * (size_t)p->n_keys;
  uint32_t *keys = calloc(key_words + 2, sizeof *keys);
  uint32_t *gorder = G->alloc(gpu, sizeof order);
  uint32_t *gkeys = G->alloc(gpu, (key_words + 2) * sizeof *keys);
  CHECK(gorder && gkeys, "alloc: %s", td_cuda_backend_last_error(gpu));
  td_state *both[2] = {&sc, &sg};
  float scal[2][TD_PLAN_SCALARS];
  double worst_loss = 0.0;
  for (int step = 0; step < STEPS && gx && gy && gorder && gkeys; step++) {
    CHECK_OK(td_prng_permutation(td_prng_fold_in(key, 1000 + step), order, N_EX));
    td_plan_dropout_keys(p, td_prng_fold_in(key, 2000 + step), keys);
    CHECK_OK(G->upload(gpu, gorder, order, sizeof order));
    CHECK_OK(G->upload(gpu, gkeys, keys, (key_words + 2) * sizeof *keys));
    for (int b = 0; b < 2; b++) {
      td_state *st = both[b];
      td_backend *be = st->be;
      float *a = st->arena, *sca = a + p->scalars_off;
      const uint32_t *k = p->n_keys ? (b ? gkeys : keys) : NULL;
      rc = be->ops->gather(be, b ? gx : x, b ? gy : y, dim, b ? gorder : order, NULL, batch,
                           a + p->in_off, (int32_t *)(a + p->labels_off));
      if (!rc && !(rc = td_state_forward(st, (int)batch, 1, k, 0, &err)) &&
          !(rc = td_state_loss(st, (int)batch, 1, &err)) && !(rc = td_state_backward(st, &err)))
        rc = be->ops->sumsq(be, np, st->grads, sca + TD_SC_GRAD_SUMSQ);
      if (!rc)
        rc = be->ops->download(be, scal[b], sca, sizeof scal[b]);
      if (!rc) {
        td_optim_step os = {.count = st->step, .grad_sumsq = scal[b][TD_SC_GRAD_SUMSQ]};
        rc = td_optim_apply(&p->optim, be, &os, np, st->params, st->grads, st->opt_state,
                            sca + TD_SC_SCRATCH, &err);
      }
      CHECK(rc == 0, "%s: step %d on %s: %s (%s)", label, step, be->ops->name, err.msg,
            b ? td_cuda_backend_last_error(gpu) : "");
      if (rc)
        goto done;
      st->step++;
    }
    double e = td_relerr(scal[1][TD_SC_LOSS_SUM], scal[0][TD_SC_LOSS_SUM], 1e-6);
    worst_loss = e > worst_loss ? e : worst_loss;
    CHECK(e < 1e-4, "%s: step %d: loss sum %.9g on the GPU, %.9g on the CPU", label, step,
          (double)scal[1][TD_SC_LOSS_SUM], (double)scal[0][TD_SC_LOSS_SUM]);
    CHECK(fabs(scal[1][TD_SC_CORRECT] - scal[0][TD_SC_CORRECT]) <= 1.0,
          "%s: step %d: %g hits on the GPU, %g on the CPU", label, step,
          (double)scal[1][TD_SC_CORRECT], (double)scal[0][TD_SC_CORRECT]);
  }
  {
    gget(pg, sg.params, np * sizeof(float));
    double num = 0.0, den = 0.0, moved = 0.0;
    for (size_t i = 0; i < np; i++) {
      double d = (double)pg[i] - sc.params[i];
      num += d * d;
      den += (double)sc.params[i] * sc.params[i];
      moved += ((double)sc.params[i] - p0[i]) * ((double)sc.params[i] - p0[i]);
    }
    double rel = sqrt(num / (den > 0 ? den : 1e-30));
    CHECK(rel < 1e-4, "%s: after %d steps the parameters differ by %.3g (relative)", label, STEPS,
          rel);
    CHECK(sqrt(moved / den) > 1e-3, "%s: training did not move the parameters", label);
    printf("%s: %d steps, parameters agree to %.3g, losses to %.3g\n", label, STEPS, rel,
           worst_loss);
  }
done:
  gfree(gx);
  gfree(gy);
  gfree(gorder);
  gfree(gkeys);
  free(keys);
  free(x);
  free(p0);
  free(pg);
out:
  td_state_free(&sc);
  td_state_free(&sg);
  td_plan_free(p);
  td_jobspec_free(spec);
}

/* ---------------------------------------------------------------- main */

static int no_gpu(const char *why) {
  CHECK(why[0] != '\0', "no GPU but no reason");
  CHECK_STR_CONTAINS(why, "cudaGetDeviceCount");
  td_error err = {0};
  td_backend dummy, *be = &dummy; /* must be cleared */
  int rc = td_cuda_backend_create(&be, 0, &err);
  CHECK(rc == TD_EUNSUPPORTED && be == NULL, "backend without a GPU: rc %d", rc);
  CHECK_STR_CONTAINS(err.msg, "no usable GPU");
  CHECK_STR_CONTAINS(err.msg, "cudaGetDeviceCount");
  size_t fr = 1, total = 1;
  td_error err2 = {0};
  rc = td_cuda_mem_info(0, &fr, &total, &err2);
  CHECK(rc == TD_EUNSUPPORTED && fr == 0 && total == 0, "memory info without a GPU: rc %d", rc);
  CHECK_STR_CONTAINS(err2.msg, "no usable GPU");
  int failed = td_check_exit();
  printf("no GPU here (%s): the CUDA backend's GPU checks are skipped\n", err.msg);
  return failed ? 1 : 77;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--fault") == 0)
    return fault_child();
  int count = -1;
  char why[512] = "";
  CHECK(td_cuda_device_count(&count, why, sizeof why) == TD_OK, "device count");
  if (count <= 0)
    return no_gpu(why);

  td_error err = {0};
  td_backend *bad = NULL;
  int rc = td_cuda_backend_create(&bad, count, &err);
  CHECK(rc == TD_EINVAL && bad == NULL, "GPU %d of %d: rc %d", count, count, rc);
  size_t fr = 0, total = 0;
  CHECK(td_cuda_mem_info(0, &fr, &total, &err) == 0 && fr > 0 && fr <= total,
        "memory info: %s (%zu of %zu free)", err.msg, fr, total);
  if (td_cpu_backend_create(&cpu, 0, &err) || td_cuda_backend_create(&gpu, 0, &err)) {
    CHECK(0, "backends: %s", err.msg);
    return td_check_exit();
  }
  C = cpu->ops;
  G = gpu->ops;
  CHECK(strcmp(G->name, "cuda") == 0 && !gpu->host_memory, "the CUDA backend's table");
  CHECK(td_cuda_backend_stream(gpu) != NULL, "the backend has its own stream");
  CHECK(td_cuda_backend_device(gpu) == 0, "the backend's GPU");
  CHECK(td_cuda_backend_last_error(gpu)[0] == '\0', "a fresh backend has no error");

  check_memory();
  check_fill_copy_mul_add();
  check_gather();
  check_gemm();
  check_bias_act();
  check_losses();
  check_dropout();
  check_sumsq();
  check_opt_pass();
  check_opt_clip();
  check_opt_guard();
  check_step_begin();
  check_record();
  check_shuffle();
  check_graph();
  check_errors();
  check_training("relu + dropout + gelu, softmax xent, clip + adamw",
                 "model: {input_shape: [20], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
                 "{dense: {features: 33, kernel_init: HE_NORMAL}}, {relu: {}},"
                 "{dropout: {rate: 0.25}},"
                 "{dense: {features: 17, kernel_init: GLOROT_UNIFORM}}, {gelu: {}},"
                 "{dense: {features: 7, kernel_init: LECUN_NORMAL}}]}\n"
                 "optimizer: {chain: [{clip_by_global_norm: {max_norm: 1.0}},"
                 "{adamw: {learning_rate: {constant: 0.003}}}]}\n",
                 24);
  check_training("tanh + exact gelu + sigmoid, mse, nesterov sgd",
                 "model: {input_shape: [3, 5], loss: MEAN_SQUARED_ERROR, layers: ["
                 "{tanh: {}}, {dense: {features: 19, kernel_init: GLOROT_NORMAL}},"
                 "{gelu: {approximate: false}}, {dense: {features: 8, use_bias: false}},"
                 "{sigmoid: {}}, {dense: {features: 5, kernel_init: HE_UNIFORM}}]}\n"
                 "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.05}, momentum: 0.9,"
                 " nesterov: true}}]}\n",
                 31);
  check_fault(argv[0]);

  td_backend_destroy(gpu);
  td_backend_destroy(cpu);
  return td_check_exit();
}
