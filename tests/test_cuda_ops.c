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
 * ends the CUDA context).
 * The conv-net ops: convolutions of ten geometries (SAME, VALID, stride 2
 * with asymmetric padding, dilation 2, 1x1, 5x5, an even window, explicit
 * padding different on every side; 1 to 32 channels) and poolings (max,
 * average with and without the padding, global; overlapping windows,
 * padding, ties everywhere) on both backends against float64 by the
 * definition and the GPU against the CPU, within 1e-5 of the sum of the
 * terms' magnitudes (1e-4 for a convolution's kernel gradient, 1e-6 for
 * pooling; max pooling forward bit for bit); every output written, none
 * added to (they start as NaN); the same bits on a second run. Without a
 * GPU the CPU half of these runs too, so the references are checked
 * everywhere. Batch and layer norm: see check_norm. The sequence ops
 * (check_embed, check_attention, check_gather_windows): the embedding bit
 * for bit, attention within explicit bounds of float64 references, token
 * windows gathered bit for bit, the CPU against the references everywhere;
 * on a GPU also recorded into a graph and replayed.
 * Last, 20 training steps of small models on both backends from the same
 * parameters and batches: parameters (and batch norms' running statistics)
 * agree to a relative error below 1e-4; the conv nets also op by op
 * against a recorded graph of the step, and in an evaluation pass. */
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
    const td_rows rl = {dim, dim, 1, 1};
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
    C->gather(cpu, &rl, src, labels, idx, NULL, COUNT, want, want_l);
    /* The indices and the offset live in device memory. */
    const uint32_t off = OFF;
    float *dsrc = gput(src, ROWS * dim * sizeof(float));
    int32_t *dl = gput(labels, sizeof labels);
    uint32_t *didx = gput(idx, sizeof idx), *didx2 = gput(idx2, sizeof idx2);
    uint32_t *doff = gput(&off, sizeof off);
    float *dst = G->alloc(gpu, COUNT * dim * sizeof(float));
    int32_t *dstl = G->alloc(gpu, sizeof got_l);
    if (dsrc && dl && didx && didx2 && doff && dst && dstl) {
      CHECK_OK(G->gather(gpu, &rl, dsrc, dl, didx, NULL, COUNT, dst, dstl));
      /* A second gather of other rows, queued at once, into other buffers:
       * it must not disturb the first's result. */
      float *dst2 = G->alloc(gpu, COUNT * dim * sizeof(float));
      int32_t *dst2l = G->alloc(gpu, sizeof got_l);
      if (dst2 && dst2l)
        CHECK_OK(G->gather(gpu, &rl, dsrc, dl, didx2, NULL, COUNT, dst2, dst2l));
      gget(got, dst, COUNT * dim * sizeof(float));
      gget(got_l, dstl, sizeof got_l);
      char label[64];
      snprintf(label, sizeof label, "gather (dim %zu)", dim);
      CHECK_BITS(label, got, want, COUNT * dim);
      CHECK(memcmp(got_l, want_l, sizeof got_l) == 0, "%s: labels differ", label);
      if (dst2 && dst2l) {
        C->gather(cpu, &rl, src, labels, idx2, NULL, COUNT, want, want_l);
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
          G->gather(gpu, &rl, dsrc + 3 * dim, dl + 3, didx2 + OFF, NULL, COUNT - OFF, dst, dstl));
      C->gather(cpu, &rl, src + 3 * dim, labels + 3, idx2 + OFF, NULL, COUNT - OFF, want, want_l);
      gget(got, dst, (COUNT - OFF) * dim * sizeof(float));
      CHECK_BITS("gather from an offset dataset", got, want, (COUNT - OFF) * dim);
      /* The place in the order read from device memory, as a step reads
       * its batch's row0 from its record: rows idx[*off + i]. The CPU
       * reference takes the same offset from host memory, and must equal
       * the rows at idx + off. */
      memset(got_l, 0xff, sizeof got_l);
      CHECK_OK(G->fill(gpu, dst, COUNT * dim, -1.0f));
      CHECK_OK(G->gather(gpu, &rl, dsrc, dl, didx, doff, COUNT - OFF, dst, dstl));
      C->gather(cpu, &rl, src, labels, idx, &off, COUNT - OFF, want, want_l);
      float *direct = hmalloc(COUNT * dim);
      int32_t direct_l[COUNT];
      C->gather(cpu, &rl, src, labels, idx + OFF, NULL, COUNT - OFF, direct, direct_l);
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
      .rbc1 = (float)(1.0 / (1.0 - pow(0.9, step))),
      .rbc2 = (float)(1.0 / (1.0 - pow(0.999, step))),
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
                                 .rbc1 = 1.0f,
                                 .rbc2 = 1.0f};
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
        (rc = G->gather(gpu, &(td_rows){G_D, G_D, 1, 1}, b->src, b->labels, b->idx, &b->cur->row0,
                        G_B, b->x, b->xl)) ||
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

/* ------------------------------------------------------------- window ops */

/* Copies between host memory and any backend's memory, through its table
 * (the CPU backend's upload and download are copies), so that one runner
 * drives both backends. */
static void *bput(td_backend *be, const void *h, size_t bytes) {
  void *d = be->ops->alloc(be, bytes ? bytes : 4);
  CHECK(d != NULL, "%s alloc of %zu bytes", be->ops->name, bytes);
  if (d && bytes)
    CHECK(be->ops->upload(be, d, h, bytes) == 0, "%s upload", be->ops->name);
  return d;
}

static void bget(td_backend *be, void *h, const void *d, size_t bytes) {
  int rc = d ? be->ops->download(be, h, d, bytes) : -1;
  CHECK(rc == 0, "%s download", be->ops->name);
  if (rc)
    memset(h, 0xff, bytes);
}

static void bfree(td_backend *be, void *d) {
  if (d)
    be->ops->release(be, d);
}

static const char *be_error(td_backend *be) {
  return be->ops->last_error ? be->ops->last_error(be) : "";
}

#define CHECK_BE(be, expr)                                                                      \
  do {                                                                                          \
    int rc_ = (expr);                                                                           \
    CHECK(rc_ == 0, "%s: %s: %s (%s)", (be)->ops->name, #expr, td_strerror(rc_), be_error(be)); \
  } while (0)

/* A geometry with its output size; SAME padding as the engine resolves it
 * (lax.padtype_to_pads: the extra one at the end). */
static td_window mkwin(int n, int h, int w, int c, int oc, int kh, int kw, int sh, int sw, int dh,
                       int dw, int pt, int pb, int pl, int pr) {
  td_window g = {n, h, w, c, 0, 0, oc, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr};
  g.oh = td_window_out(h, pt, pb, kh, sh, dh);
  g.ow = td_window_out(w, pl, pr, kw, sw, dw);
  return g;
}

static td_window mkwin_same(int n, int h, int w, int c, int oc, int kh, int kw, int sh, int sw,
                            int dh, int dw) {
  int th = ((h + sh - 1) / sh - 1) * sh + (kh - 1) * dh + 1 - h;
  int tw = ((w + sw - 1) / sw - 1) * sw + (kw - 1) * dw + 1 - w;
  th = th < 0 ? 0 : th;
  tw = tw < 0 ? 0 : tw;
  return mkwin(n, h, w, c, oc, kh, kw, sh, sw, dh, dw, th / 2, th - th / 2, tw / 2, tw - tw / 2);
}

static void win_str(const td_window *g, char *buf, size_t len) {
  snprintf(buf, len, "%dx%dx%dx%d -> %dx%dx%d, k %dx%d s %d,%d d %d,%d pad %d,%d,%d,%d", g->n, g->h,
           g->w, g->c, g->oh, g->ow, g->oc, g->kh, g->kw, g->sh, g->sw, g->dh, g->dw, g->pt, g->pb,
           g->pl, g->pr);
}

/* The largest |got - want| / bound over an array (bound: the sum of the
 * magnitudes of the terms of want, the scale of any summation order's
 * error); where the bound is 0 got must be exactly want. */
static void check_bound(const char *label, const float *got, const double *want,
                        const double *bound, size_t n, double tol) {
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - want[i]) / (bound[i] > 1e-30 ? bound[i] : 1e-30);
    if (!(e <= worst)) {
      worst = isnan(e) ? INFINITY : e;
      at = i;
      if (isnan(e))
        break;
    }
  }
  CHECK(worst <= tol, "%s: element %zu: %.9g, want %.9g (error %.3g of the bound %.3g > %.3g)",
        label, at, (double)got[at], want[at], worst, bound[at], tol);
}

static double *to_double(const float *x, size_t n) {
  double *d = malloc((n ? n : 1) * sizeof *d);
  for (size_t i = 0; i < n; i++)
    d[i] = x[i];
  return d;
}

static size_t win_in(const td_window *g) { return (size_t)g->n * g->h * g->w * g->c; }
static size_t win_out(const td_window *g) { return (size_t)g->n * g->oh * g->ow * g->oc; }
static size_t win_taps(const td_window *g) { return (size_t)g->kh * g->kw * g->c * g->oc; }

/* Float64 convolution, its two gradients and their bounds, by the
 * definition: y[b, oy, ox, o] = sum over i, j, ci of x[b, oy sh - pt + i
 * dh, ox sw - pl + j dw, ci] w[i, j, ci, o] (zeros outside x). */
static void conv_ref(const td_window *g, const float *x, const float *w, const float *dy, double *y,
                     double *yb, double *dx, double *dxb, double *dw, double *dwb) {
  memset(y, 0, win_out(g) * sizeof *y);
  memset(yb, 0, win_out(g) * sizeof *yb);
  memset(dx, 0, win_in(g) * sizeof *dx);
  memset(dxb, 0, win_in(g) * sizeof *dxb);
  memset(dw, 0, win_taps(g) * sizeof *dw);
  memset(dwb, 0, win_taps(g) * sizeof *dwb);
  for (int b = 0; b < g->n; b++)
    for (int oy = 0; oy < g->oh; oy++)
      for (int ox = 0; ox < g->ow; ox++) {
        const size_t yo = (((size_t)b * g->oh + oy) * g->ow + ox) * g->oc;
        for (int i = 0; i < g->kh; i++) {
          const int iy = oy * g->sh - g->pt + i * g->dh;
          if (iy < 0 || iy >= g->h)
            continue;
          for (int j = 0; j < g->kw; j++) {
            const int ix = ox * g->sw - g->pl + j * g->dw;
            if (ix < 0 || ix >= g->w)
              continue;
            const size_t xo = (((size_t)b * g->h + iy) * g->w + ix) * g->c;
            for (int ci = 0; ci < g->c; ci++) {
              const size_t wo = (((size_t)i * g->kw + j) * g->c + ci) * g->oc;
              for (int o = 0; o < g->oc; o++) {
                const double xv = x[xo + ci], wv = w[wo + o], dv = dy[yo + o];
                y[yo + o] += xv * wv;
                yb[yo + o] += fabs(xv * wv);
                dx[xo + ci] += dv * wv;
                dxb[xo + ci] += fabs(dv * wv);
                dw[wo + o] += xv * dv;
                dwb[wo + o] += fabs(xv * dv);
              }
            }
          }
        }
      }
}

/* y, dx, dw of one geometry on a backend, outputs filled with NaN first
 * (every value must be written, none added to); then the same calls
 * again, which must give the same bits, and backward without dx, which
 * must give the same dw. */
static int conv_run(td_backend *be, const td_window *g, const float *x, const float *w,
                    const float *dy, float *y, float *dx, float *dw, const char *label) {
  const td_backend_ops *o = be->ops;
  void *k = NULL;
  int rc = o->conv_create(be, g, &k);
  CHECK(rc == 0 && k, "%s: %s conv_create: %s (%s)", label, o->name, td_strerror(rc), be_error(be));
  if (rc || !k)
    return -1;
  const size_t ni = win_in(g), no = win_out(g), nt = win_taps(g);
  float *bx = bput(be, x, ni * 4), *bw = bput(be, w, nt * 4), *bdy = bput(be, dy, no * 4);
  float *by = o->alloc(be, no * 4), *bdx = o->alloc(be, ni * 4), *bdw = o->alloc(be, nt * 4);
  float *again = hmalloc(ni > no ? (ni > nt ? ni : nt) : (no > nt ? no : nt));
  int ok = bx && bw && bdy && by && bdx && bdw;
  for (int run = 0; run < 2 && ok; run++) {
    CHECK_BE(be, o->fill(be, by, no, NAN));
    CHECK_BE(be, o->fill(be, bdx, ni, NAN));
    CHECK_BE(be, o->fill(be, bdw, nt, NAN));
    CHECK_BE(be, o->conv_fwd(be, k, bx, bw, by));
    CHECK_BE(be, o->conv_bwd(be, k, bx, bw, bdy, bdx, bdw));
    char l2[256];
    if (run == 0) {
      bget(be, y, by, no * 4);
      bget(be, dx, bdx, ni * 4);
      bget(be, dw, bdw, nt * 4);
      continue;
    }
    snprintf(l2, sizeof l2, "%s: %s run to run: y", label, o->name);
    bget(be, again, by, no * 4);
    CHECK_BITS(l2, again, y, no);
    snprintf(l2, sizeof l2, "%s: %s run to run: dx", label, o->name);
    bget(be, again, bdx, ni * 4);
    CHECK_BITS(l2, again, dx, ni);
    snprintf(l2, sizeof l2, "%s: %s run to run: dw", label, o->name);
    bget(be, again, bdw, nt * 4);
    CHECK_BITS(l2, again, dw, nt);
    /* Backward without dx: the same kernel gradient, dx untouched. */
    CHECK_BE(be, o->fill(be, bdw, nt, NAN));
    CHECK_BE(be, o->fill(be, bdx, ni, 5.0f));
    CHECK_BE(be, o->conv_bwd(be, k, bx, bw, bdy, NULL, bdw));
    snprintf(l2, sizeof l2, "%s: %s dw without dx", label, o->name);
    bget(be, again, bdw, nt * 4);
    CHECK_BITS(l2, again, dw, nt);
    bget(be, again, bdx, ni * 4);
    size_t touched = 0;
    for (size_t i = 0; i < ni; i++)
      touched += again[i] != 5.0f;
    CHECK(touched == 0, "%s: %s backward without dx wrote %zu values of dx", label, o->name,
          touched);
  }
  o->kernel_free(be, k);
  bfree(be, bx);
  bfree(be, bw);
  bfree(be, bdy);
  bfree(be, by);
  bfree(be, bdx);
  bfree(be, bdw);
  free(again);
  return ok ? 0 : -1;
}

/* Convolutions of several geometries on the CPU backend and (when there is
 * one) the GPU, against float64 by the definition and the GPU against the
 * CPU: y and dx within 1e-5 of the bound, dw within 1e-4 (its sums run
 * over every position of the batch); TF32 would miss them by far. */
static void check_conv(td_backend *gpu_be) {
  const td_window cases[] = {
      mkwin_same(3, 28, 28, 1, 32, 3, 3, 1, 1, 1, 1),        /* Flax's MNIST CNN, first layer */
      mkwin(2, 13, 11, 3, 16, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0), /* VALID, odd sizes */
      mkwin_same(3, 14, 14, 16, 32, 3, 3, 2, 2, 1, 1),       /* stride 2 SAME: pads 0 and 1 */
      mkwin_same(2, 12, 12, 16, 16, 3, 3, 1, 1, 2, 2),       /* dilation 2 */
      mkwin(2, 9, 9, 32, 16, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0),  /* 1x1 */
      mkwin_same(2, 8, 8, 32, 32, 1, 1, 2, 2, 1, 1),         /* 1x1 stride 2 (a projection) */
      mkwin_same(2, 9, 9, 3, 32, 5, 5, 1, 1, 1, 1),          /* 5x5 */
      mkwin_same(2, 10, 10, 16, 3, 2, 2, 1, 1, 1, 1),        /* an even window: pads 0 and 1 */
      mkwin(3, 7, 9, 3, 5, 3, 2, 2, 1, 1, 1, 1, 2, 0, 3),    /* explicit, every side differs */
      mkwin(1, 6, 6, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),    /* one channel in and out */
  };
  for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
    const td_window *g = &cases[t];
    char label[160];
    win_str(g, label, sizeof label);
    const size_t ni = win_in(g), no = win_out(g), nt = win_taps(g);
    float *x = hmalloc(ni), *w = hmalloc(nt), *dy = hmalloc(no);
    randn(x, ni, 1.0f);
    randn(w, nt, 0.3f);
    randn(dy, no, 1.0f);
    double *y = malloc(no * 8), *yb = malloc(no * 8), *dx = malloc(ni * 8), *dxb = malloc(ni * 8),
           *dw = malloc(nt * 8), *dwb = malloc(nt * 8);
    conv_ref(g, x, w, dy, y, yb, dx, dxb, dw, dwb);
    float *cy = hmalloc(no), *cdx = hmalloc(ni), *cdw = hmalloc(nt);
    float *gy = hmalloc(no), *gdx = hmalloc(ni), *gdw = hmalloc(nt);
    char l2[200];
    if (conv_run(cpu, g, x, w, dy, cy, cdx, cdw, label) == 0) {
      snprintf(l2, sizeof l2, "cpu conv %s: y", label);
      check_bound(l2, cy, y, yb, no, 1e-5);
      snprintf(l2, sizeof l2, "cpu conv %s: dx", label);
      check_bound(l2, cdx, dx, dxb, ni, 1e-5);
      snprintf(l2, sizeof l2, "cpu conv %s: dw", label);
      check_bound(l2, cdw, dw, dwb, nt, 1e-4);
    }
    if (gpu_be && conv_run(gpu_be, g, x, w, dy, gy, gdx, gdw, label) == 0) {
      snprintf(l2, sizeof l2, "cuda conv %s: y", label);
      check_bound(l2, gy, y, yb, no, 1e-5);
      snprintf(l2, sizeof l2, "cuda conv %s: dx", label);
      check_bound(l2, gdx, dx, dxb, ni, 1e-5);
      snprintf(l2, sizeof l2, "cuda conv %s: dw", label);
      check_bound(l2, gdw, dw, dwb, nt, 1e-4);
      /* The GPU against the CPU backend, relative to the same bounds. */
      double *c = to_double(cy, no);
      snprintf(l2, sizeof l2, "cuda vs cpu conv %s: y", label);
      check_bound(l2, gy, c, yb, no, 1e-5);
      free(c);
      c = to_double(cdx, ni);
      snprintf(l2, sizeof l2, "cuda vs cpu conv %s: dx", label);
      check_bound(l2, gdx, c, dxb, ni, 1e-5);
      free(c);
      c = to_double(cdw, nt);
      snprintf(l2, sizeof l2, "cuda vs cpu conv %s: dw", label);
      check_bound(l2, gdw, c, dwb, nt, 1e-4);
      free(c);
    }
    free(x);
    free(w);
    free(dy);
    free(y);
    free(yb);
    free(dx);
    free(dxb);
    free(dw);
    free(dwb);
    free(cy);
    free(cdx);
    free(cdw);
    free(gy);
    free(gdx);
    free(gdw);
  }
}

/* Float64 pooling by the definition: max takes the first largest value of
 * each window (rows, then columns), as the CPU's oneDNN and the CUDA
 * kernels do, so ties (a ReLU's zeros) go the same way; its y bound is
 * 0 (exact). */
static void pool_ref(const td_window *g, td_pool_kind kind, const float *x, const float *dy,
                     double *y, double *yb, double *dx, double *dxb) {
  memset(dx, 0, win_in(g) * sizeof *dx);
  memset(dxb, 0, win_in(g) * sizeof *dxb);
  for (int b = 0; b < g->n; b++)
    for (int oy = 0; oy < g->oh; oy++)
      for (int ox = 0; ox < g->ow; ox++)
        for (int ch = 0; ch < g->c; ch++) {
          const size_t o = (((size_t)b * g->oh + oy) * g->ow + ox) * g->c + ch;
          double s = 0.0, sb = 0.0;
          float best = 0.0f;
          size_t at = SIZE_MAX;
          int valid = 0;
          for (int i = 0; i < g->kh; i++)
            for (int j = 0; j < g->kw; j++) {
              const int iy = oy * g->sh - g->pt + i, ix = ox * g->sw - g->pl + j;
              if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
                continue;
              const size_t xi = (((size_t)b * g->h + iy) * g->w + ix) * g->c + ch;
              valid++;
              s += x[xi];
              sb += fabs(x[xi]);
              if (at == SIZE_MAX || x[xi] > best) {
                best = x[xi];
                at = xi;
              }
            }
          const double count = kind == TD_POOL_AVG ? (double)g->kh * g->kw : valid;
          if (kind == TD_POOL_MAX) {
            y[o] = best;
            yb[o] = 0.0;
            dx[at] += dy[o];
            dxb[at] += fabs(dy[o]);
            continue;
          }
          y[o] = s / count;
          yb[o] = sb / count;
          for (int i = 0; i < g->kh; i++)
            for (int j = 0; j < g->kw; j++) {
              const int iy = oy * g->sh - g->pt + i, ix = ox * g->sw - g->pl + j;
              if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
                continue;
              const size_t xi = (((size_t)b * g->h + iy) * g->w + ix) * g->c + ch;
              dx[xi] += dy[o] / count;
              dxb[xi] += fabs(dy[o]) / count;
            }
        }
}

/* y and dx on a backend (NaN first), run twice: the same bits. */
static int pool_run(td_backend *be, const td_window *g, td_pool_kind kind, const float *x,
                    const float *dy, float *y, float *dx, const char *label) {
  const td_backend_ops *o = be->ops;
  void *k = NULL;
  int rc = o->pool_create(be, g, kind, &k);
  CHECK(rc == 0 && k, "%s: %s pool_create: %s (%s)", label, o->name, td_strerror(rc), be_error(be));
  if (rc || !k)
    return -1;
  const size_t ni = win_in(g), no = win_out(g);
  float *bx = bput(be, x, ni * 4), *bdy = bput(be, dy, no * 4);
  float *by = o->alloc(be, no * 4), *bdx = o->alloc(be, ni * 4);
  float *again = hmalloc(ni > no ? ni : no);
  int ok = bx && bdy && by && bdx;
  for (int run = 0; run < 2 && ok; run++) {
    CHECK_BE(be, o->fill(be, by, no, NAN));
    CHECK_BE(be, o->fill(be, bdx, ni, NAN));
    CHECK_BE(be, o->pool_fwd(be, k, bx, by));
    CHECK_BE(be, o->pool_bwd(be, k, bdy, bdx));
    if (run == 0) {
      bget(be, y, by, no * 4);
      bget(be, dx, bdx, ni * 4);
      continue;
    }
    char l2[256];
    snprintf(l2, sizeof l2, "%s: %s run to run: y", label, o->name);
    bget(be, again, by, no * 4);
    CHECK_BITS(l2, again, y, no);
    snprintf(l2, sizeof l2, "%s: %s run to run: dx", label, o->name);
    bget(be, again, bdx, ni * 4);
    CHECK_BITS(l2, again, dx, ni);
  }
  o->kernel_free(be, k);
  bfree(be, bx);
  bfree(be, bdy);
  bfree(be, by);
  bfree(be, bdx);
  free(again);
  return ok ? 0 : -1;
}

/* Max, average (padding counted) and average over the valid taps, on the
 * CPU backend and the GPU, against float64 and the GPU against the CPU:
 * max forward bit for bit, its backward (each value gets the gradients of
 * the windows whose first maximum it is) within 1e-6 of the bound, the
 * averages within 1e-6. Inputs are ReLU'd with runs of equal values, so
 * that ties are everywhere. */
static void check_pool(td_backend *gpu_be) {
  /* kind; n, h, w, c; window kh, kw; strides; padding top, bottom, left, right */
  static const int cases[][13] = {
      {TD_POOL_MAX, 3, 28, 28, 32, 2, 2, 2, 2, 0, 0, 0, 0},
      {TD_POOL_MAX, 2, 15, 15, 16, 3, 3, 2, 2, 1, 1, 1, 1},
      {TD_POOL_MAX, 2, 9, 8, 3, 2, 3, 1, 2, 0, 1, 1, 0},
      {TD_POOL_AVG, 3, 14, 14, 64, 2, 2, 2, 2, 0, 0, 0, 0},
      {TD_POOL_AVG, 2, 9, 9, 8, 3, 3, 1, 1, 1, 1, 1, 1},
      {TD_POOL_AVG_VALID, 2, 10, 10, 3, 3, 3, 2, 2, 0, 1, 0, 1},
      {TD_POOL_AVG_VALID, 2, 7, 6, 5, 3, 2, 1, 1, 1, 1, 1, 0},
      {TD_POOL_AVG, 4, 7, 7, 32, 7, 7, 1, 1, 0, 0, 0, 0}, /* global average pooling */
      {TD_POOL_AVG, 2, 1, 1, 300, 1, 1, 1, 1, 0, 0, 0, 0},
  };
  static const char *const names[] = {"max", "avg", "avg_valid"};
  for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
    const int *k = cases[t];
    const td_pool_kind kind = (td_pool_kind)k[0];
    const td_window g = mkwin(k[1], k[2], k[3], k[4], k[4], k[5], k[6], k[7], k[8], 1, 1, k[9],
                              k[10], k[11], k[12]);
    char geo[160], label[200];
    win_str(&g, geo, sizeof geo);
    snprintf(label, sizeof label, "%s pool %s", names[kind], geo);
    const size_t ni = win_in(&g), no = win_out(&g);
    float *x = hmalloc(ni), *dy = hmalloc(no);
    randn(x, ni, 1.0f);
    randn(dy, no, 1.0f);
    for (size_t i = 0; i < ni; i++) {
      if (x[i] < 0.0f)
        x[i] = 0.0f; /* a ReLU's output: ties at 0 */
      if (i % 7 == 3)
        x[i] = x[i - 1]; /* and ties between positive values */
    }
    double *y = malloc(no * 8), *yb = malloc(no * 8), *dx = malloc(ni * 8), *dxb = malloc(ni * 8);
    pool_ref(&g, kind, x, dy, y, yb, dx, dxb);
    float *cy = hmalloc(no), *cdx = hmalloc(ni), *gy = hmalloc(no), *gdx = hmalloc(ni);
    char l2[240];
    if (pool_run(cpu, &g, kind, x, dy, cy, cdx, label) == 0) {
      snprintf(l2, sizeof l2, "cpu %s: y", label);
      check_bound(l2, cy, y, yb, no, 1e-6);
      snprintf(l2, sizeof l2, "cpu %s: dx", label);
      check_bound(l2, cdx, dx, dxb, ni, 1e-6);
    }
    if (gpu_be && pool_run(gpu_be, &g, kind, x, dy, gy, gdx, label) == 0) {
      snprintf(l2, sizeof l2, "cuda %s: y", label);
      check_bound(l2, gy, y, yb, no, 1e-6);
      snprintf(l2, sizeof l2, "cuda %s: dx", label);
      check_bound(l2, gdx, dx, dxb, ni, 1e-6);
      if (kind == TD_POOL_MAX) {
        snprintf(l2, sizeof l2, "cuda vs cpu %s: y", label);
        CHECK_BITS(l2, gy, cy, no);
      }
      double *c = to_double(cdx, ni);
      snprintf(l2, sizeof l2, "cuda vs cpu %s: dx", label);
      check_bound(l2, gdx, c, dxb, ni, 1e-6);
      free(c);
    }
    free(x);
    free(dy);
    free(y);
    free(yb);
    free(dx);
    free(dxb);
    free(cy);
    free(cdx);
    free(gy);
    free(gdx);
  }
}

/* ----------------------------------------------------------- normalization */

/* Every normalization op on the GPU against the CPU backend, on shapes from
 * one column to thousands, rows from 1 to a MNIST batch's positions:
 *   bit for bit  the elementwise parts given the same statistics: batch
 *                norm's saved mean and 1/std, running statistics and y
 *                (train and evaluation), its dx (also in place)
 *   1e-6         the moments (double sums; relative to the mean of |x|,
 *                of x^2), layer norm's saved mean (of the row's mean |x|)
 *                and 1/std
 *   1e-5         the column sums (dscale, dbias, their means) relative to
 *                the sums of their terms' magnitudes, layer norm's y and
 *                dx relative to the magnitude of their formula's terms
 * and every reduction gives the same bits twice. */
static void check_norm(void) {
  const int shapes[][2] = {{1, 1},     {7, 3},    {300, 1},     {4099, 33},
                           {64, 1000}, {3, 4096}, {100352, 32}, {513, 257}};
  for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++) {
    const int rows = shapes[t][0], cols = shapes[t][1];
    const size_t n = (size_t)rows * cols, nc = (size_t)cols;
    char label[96];
    float *x = hmalloc(n), *dy = hmalloc(n), *scale = hmalloc(nc), *bias = hmalloc(nc);
    randn(x, n, 2.0f);
    for (size_t i = 0; i < n; i++)
      x[i] += 1.5f + (float)(i % nc) * 0.01f; /* means away from 0, per column */
    randn(dy, n, 1.0f);
    randn(scale, nc, 1.0f);
    randn(bias, nc, 1.0f);
    float *gx = gput(x, n * 4), *gdy = gput(dy, n * 4), *gscale = gput(scale, nc * 4),
          *gbias = gput(bias, nc * 4);
    float *gy = G->alloc(gpu, n * 4), *gm = G->alloc(gpu, 2 * nc * 4),
          *gsaved = G->alloc(gpu, 2 * (nc > (size_t)rows ? nc : (size_t)rows) * 4),
          *grun = G->alloc(gpu, 2 * nc * 4), *gds = G->alloc(gpu, nc * 4),
          *gdb = G->alloc(gpu, nc * 4), *gs = G->alloc(gpu, 2 * nc * 4);
    float *cy = hmalloc(n), *cm = hmalloc(2 * nc), *csaved = hmalloc(2 * (nc + rows)),
          *crun = hmalloc(2 * nc), *cds = hmalloc(nc), *cdb = hmalloc(nc), *cs = hmalloc(2 * nc);
    /* Room for a (rows, cols) buffer and for 2 values per row or column. */
    const size_t nbig = n > 2 * nc + 2 * (size_t)rows ? n : 2 * nc + 2 * (size_t)rows;
    float *got = hmalloc(nbig), *got2 = hmalloc(nbig);
    double *sc1 = calloc(2 * nc, sizeof(double)), *esc = calloc(n, sizeof(double));
    if (!gx || !gdy || !gscale || !gbias || !gy || !gm || !gsaved || !grun || !gds || !gdb || !gs)
      goto done;

    /* Moments. */
    C->col_moments(cpu, rows, cols, x, cm);
    CHECK_OK(G->col_moments(gpu, rows, cols, gx, gm));
    gget(got, gm, 2 * nc * 4);
    for (size_t c = 0; c < 2 * nc; c++)
      sc1[c] = 0.0;
    for (int r = 0; r < rows; r++)
      for (int c = 0; c < cols; c++) {
        const double v = x[(size_t)r * cols + c];
        sc1[c] += fabs(v) / rows;
        sc1[nc + c] += v * v / rows;
      }
    snprintf(label, sizeof label, "col_moments (%dx%d)", rows, cols);
    check_scaled(label, got, cm, sc1, 2 * nc, 1e-6);
    CHECK_OK(G->col_moments(gpu, rows, cols, gx, gm));
    gget(got2, gm, 2 * nc * 4);
    CHECK_BITS("col_moments run to run", got2, got, 2 * nc);

    /* Batch norm forward from the CPU's moments: train with and without
     * running statistics, scale and bias; then evaluation. */
    CHECK_OK(G->upload(gpu, gm, cm, 2 * nc * 4));
    for (int mode = 0; mode < 3; mode++) {
      const int train = mode < 2, affine = mode != 1;
      for (size_t c = 0; c < nc; c++) {
        crun[c] = 0.25f * (float)c;
        crun[nc + c] = 1.0f + 0.5f * (float)c;
      }
      CHECK_OK(G->upload(gpu, grun, crun, 2 * nc * 4));
      C->bn_fwd(cpu, train, rows, cols, x, cm, crun, 0.9f, 1e-5f, affine ? scale : NULL,
                affine ? bias : NULL, cy, csaved);
      CHECK_OK(G->fill(gpu, gy, n, NAN));
      CHECK_OK(G->bn_fwd(gpu, train, rows, cols, gx, train ? gm : NULL, grun, 0.9f, 1e-5f,
                         affine ? gscale : NULL, affine ? gbias : NULL, gy, gsaved));
      snprintf(label, sizeof label, "bn_fwd (%dx%d, train %d, affine %d)", rows, cols, train,
               affine);
      gget(got, gy, n * 4);
      CHECK_BITS(label, got, cy, n);
      gget(got2, gsaved, 2 * nc * 4);
      CHECK_BITS("bn_fwd saved mean and 1/std", got2, csaved, 2 * nc);
      gget(got2, grun, 2 * nc * 4);
      CHECK_BITS("bn_fwd running statistics", got2, crun, 2 * nc);
    }
    /* In place (y = x), as an evaluation may run it. */
    {
      float *gx2 = gput(x, n * 4);
      C->bn_fwd(cpu, 1, rows, cols, x, cm, NULL, 0.9f, 1e-5f, scale, bias, cy, csaved);
      if (gx2) {
        CHECK_OK(
            G->bn_fwd(gpu, 1, rows, cols, gx2, gm, NULL, 0.9f, 1e-5f, gscale, gbias, gx2, gsaved));
        gget(got, gx2, n * 4);
        CHECK_BITS("bn_fwd in place", got, cy, n);
      }
      gfree(gx2);
    }

    /* Backward sums from the CPU's saved statistics (train, affine). */
    CHECK_OK(G->upload(gpu, gsaved, csaved, 2 * nc * 4));
    for (int with = 0; with < 2; with++) {
      C->bn_bwd_sums(cpu, rows, cols, x, dy, csaved, with ? cds : NULL, with ? cdb : NULL, cs);
      CHECK_OK(G->fill(gpu, gds, nc, NAN));
      CHECK_OK(G->fill(gpu, gdb, nc, NAN));
      CHECK_OK(G->bn_bwd_sums(gpu, rows, cols, gx, gdy, gsaved, with ? gds : NULL,
                              with ? gdb : NULL, gs));
      for (size_t c = 0; c < 2 * nc; c++)
        sc1[c] = 0.0;
      for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
          const size_t i = (size_t)r * cols + c;
          const double xh = ((double)x[i] - csaved[c]) * csaved[nc + c];
          sc1[c] += fabs(dy[i]);
          sc1[nc + c] += fabs(dy[i] * xh);
        }
      if (with) {
        snprintf(label, sizeof label, "bn_bwd_sums dbias (%dx%d)", rows, cols);
        gget(got, gdb, nc * 4);
        check_scaled(label, got, cdb, sc1, nc, 1e-5);
        snprintf(label, sizeof label, "bn_bwd_sums dscale (%dx%d)", rows, cols);
        gget(got, gds, nc * 4);
        check_scaled(label, got, cds, sc1 + nc, nc, 1e-5);
      } else {
        gget(got, gds, nc * 4);
        gget(got2, gdb, nc * 4);
        size_t written = 0;
        for (size_t c = 0; c < nc; c++)
          written += !isnan(got[c]) + !isnan(got2[c]);
        CHECK(written == 0, "bn_bwd_sums without dscale and dbias wrote %zu of them", written);
      }
      for (size_t c = 0; c < 2 * nc; c++)
        sc1[c] /= rows;
      snprintf(label, sizeof label, "bn_bwd_sums means (%dx%d)", rows, cols);
      gget(got, gs, 2 * nc * 4);
      check_scaled(label, got, cs, sc1, 2 * nc, 1e-5);
      CHECK_OK(G->bn_bwd_sums(gpu, rows, cols, gx, gdy, gsaved, with ? gds : NULL,
                              with ? gdb : NULL, gs));
      gget(got2, gs, 2 * nc * 4);
      CHECK_BITS("bn_bwd_sums run to run", got2, got, 2 * nc);
    }

    /* dx from the CPU's means, with and without scale, separate and in place. */
    CHECK_OK(G->upload(gpu, gs, cs, 2 * nc * 4));
    for (int affine = 0; affine < 2; affine++)
      for (int inplace = 0; inplace < 2; inplace++) {
        C->bn_bwd_dx(cpu, rows, cols, x, dy, csaved, affine ? scale : NULL, cs, cy);
        float *gd = inplace ? gput(dy, n * 4) : gy;
        if (!gd)
          continue;
        CHECK_OK(G->bn_bwd_dx(gpu, rows, cols, gx, inplace ? gd : gdy, gsaved,
                              affine ? gscale : NULL, gs, gd));
        snprintf(label, sizeof label, "bn_bwd_dx (%dx%d, scale %d, dx=dy %d)", rows, cols, affine,
                 inplace);
        gget(got, gd, n * 4);
        CHECK_BITS(label, got, cy, n);
        if (inplace)
          gfree(gd);
      }

    /* Layer norm, with and without scale and bias. */
    for (int affine = 0; affine < 2; affine++) {
      const float *s = affine ? scale : NULL, *b = affine ? bias : NULL;
      C->ln_fwd(cpu, rows, cols, 1e-6f, x, s, b, cy, csaved);
      CHECK_OK(G->fill(gpu, gy, n, NAN));
      CHECK_OK(G->ln_fwd(gpu, rows, cols, 1e-6f, gx, affine ? gscale : NULL, affine ? gbias : NULL,
                         gy, gsaved));
      gget(got2, gsaved, 2 * (size_t)rows * 4);
      double worst_mu = 0.0, worst_rstd = 0.0;
      for (int r = 0; r < rows; r++) {
        double mabs = 0.0;
        for (int c = 0; c < cols; c++)
          mabs += fabs(x[(size_t)r * cols + c]) / cols;
        const double em = fabs((double)got2[2 * r] - csaved[2 * r]) / (mabs > 1e-30 ? mabs : 1e-30);
        const double er = td_relerr(got2[2 * r + 1], csaved[2 * r + 1], 1e-30);
        worst_mu = em > worst_mu || isnan(em) ? em : worst_mu;
        worst_rstd = er > worst_rstd || isnan(er) ? er : worst_rstd;
      }
      CHECK(worst_mu <= 1e-6 && worst_rstd <= 1e-6,
            "ln_fwd saved (%dx%d, affine %d): mean off by %.3g, 1/std by %.3g", rows, cols, affine,
            worst_mu, worst_rstd);
      for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
          const size_t i = (size_t)r * cols + c;
          const double xh = fabs(((double)x[i] - csaved[2 * r]) * csaved[2 * r + 1]);
          esc[i] = (xh + fabs((double)csaved[2 * r]) * csaved[2 * r + 1]) *
                       (affine ? fabs(scale[c]) : 1.0) +
                   (affine ? fabs(bias[c]) : 0.0);
        }
      snprintf(label, sizeof label, "ln_fwd y (%dx%d, affine %d)", rows, cols, affine);
      gget(got, gy, n * 4);
      check_scaled(label, got, cy, esc, n, 1e-5);

      /* Backward from the CPU's saved statistics. */
      CHECK_OK(G->upload(gpu, gsaved, csaved, 2 * (size_t)rows * 4));
      for (int with = 0; with < 2; with++) {
        C->ln_bwd(cpu, rows, cols, x, dy, csaved, s, cy, with ? cds : NULL, with ? cdb : NULL);
        CHECK_OK(G->fill(gpu, gy, n, NAN));
        CHECK_OK(G->ln_bwd(gpu, rows, cols, gx, gdy, gsaved, affine ? gscale : NULL, gy,
                           with ? gds : NULL, with ? gdb : NULL));
        for (int r = 0; r < rows; r++) {
          const double mu = csaved[2 * r], rs = csaved[2 * r + 1];
          double m1 = 0.0, m2 = 0.0;
          for (int c = 0; c < cols; c++) {
            const size_t i = (size_t)r * cols + c;
            const double g = fabs((double)dy[i] * (affine ? scale[c] : 1.0));
            m1 += g / cols;
            m2 += g * fabs((x[i] - mu) * rs) / cols;
          }
          for (int c = 0; c < cols; c++) {
            const size_t i = (size_t)r * cols + c;
            esc[i] = rs * (fabs((double)dy[i] * (affine ? scale[c] : 1.0)) + m1 +
                           fabs((x[i] - mu) * rs) * m2);
          }
        }
        snprintf(label, sizeof label, "ln_bwd dx (%dx%d, affine %d, sums %d)", rows, cols, affine,
                 with);
        gget(got, gy, n * 4);
        check_scaled(label, got, cy, esc, n, 1e-5);
        if (with) {
          for (size_t c = 0; c < 2 * nc; c++)
            sc1[c] = 0.0;
          for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
              const size_t i = (size_t)r * cols + c;
              sc1[c] += fabs(dy[i]);
              sc1[nc + c] += fabs(dy[i] * ((x[i] - csaved[2 * r]) * csaved[2 * r + 1]));
            }
          snprintf(label, sizeof label, "ln_bwd dbias (%dx%d)", rows, cols);
          gget(got, gdb, nc * 4);
          check_scaled(label, got, cdb, sc1, nc, 1e-5);
          snprintf(label, sizeof label, "ln_bwd dscale (%dx%d)", rows, cols);
          gget(got, gds, nc * 4);
          check_scaled(label, got, cds, sc1 + nc, nc, 1e-5);
          CHECK_OK(
              G->ln_bwd(gpu, rows, cols, gx, gdy, gsaved, affine ? gscale : NULL, gy, gds, gdb));
          gget(got2, gds, nc * 4);
          CHECK_BITS("ln_bwd dscale run to run", got2, got, nc);
        }
      }
      /* Without dx: only the sums. */
      CHECK_OK(G->fill(gpu, gy, n, 5.0f));
      CHECK_OK(G->ln_bwd(gpu, rows, cols, gx, gdy, gsaved, NULL, NULL, gds, gdb));
      gget(got, gy, n * 4);
      size_t touched = 0;
      for (size_t i = 0; i < n; i++)
        touched += got[i] != 5.0f;
      CHECK(touched == 0, "ln_bwd without dx wrote %zu values", touched);
    }
  done:
    gfree(gx);
    gfree(gdy);
    gfree(gscale);
    gfree(gbias);
    gfree(gy);
    gfree(gm);
    gfree(gsaved);
    gfree(grun);
    gfree(gds);
    gfree(gdb);
    gfree(gs);
    free(x);
    free(dy);
    free(scale);
    free(bias);
    free(cy);
    free(cm);
    free(csaved);
    free(crun);
    free(cds);
    free(cdb);
    free(cs);
    free(got);
    free(got2);
    free(sc1);
    free(esc);
  }
}

/* ----------------------------------------------------------- sequence ops */

/* The CPU's token id of a float (cpu_seq.c): -1 outside [0, vocab). */
static int test_token(float v, int vocab) { return v >= 0.0f && v < (float)vocab ? (int)v : -1; }

/* The embedding on shapes from one value to a vocabulary wider than a
 * grid's y dimension (70000 ids) and no rows at all, with ids outside the
 * vocabulary (negative, vocab, vocab + 0.5, NaN), fractional ones (which
 * truncate, as the CPU's do) and a quarter of the rows on id 0:
 *   bit for bit  forward against the definition (the id's row of the
 *                table, or zeros); backward against the definition (each
 *                id's rows of dy added in row order from zero, in float,
 *                here); the GPU against the CPU; the GPU's backward twice
 * Every output starts as NaN, so every element must be written; backward
 * writes the table's gradient, never adds to it. Without a GPU the CPU
 * half runs. */
static void check_embed(td_backend *gb) {
  const int shapes[][3] = {{1, 1, 1},         {300, 37, 65},   {4099, 64, 65},
                           {1000, 384, 5000}, {257, 3, 70000}, {0, 8, 11}};
  td_backend *bes[2] = {cpu, gb};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    const int rows = shapes[s][0], cols = shapes[s][1], vocab = shapes[s][2];
    const size_t n = (size_t)rows * cols, nt = (size_t)vocab * cols;
    char label[128];
    float *ids = hmalloc((size_t)rows), *table = hmalloc(nt), *dy = hmalloc(n);
    float *want_y = hmalloc(n), *want_dt = hmalloc(nt), *got = hmalloc(n > nt ? n : nt);
    float *cpu_y = hmalloc(n), *cpu_dt = hmalloc(nt);
    uint32_t *bits = calloc((size_t)rows + 1, sizeof *bits);
    td_prng_bits(td_prng_fold_in(td_prng_key(11), draws++), bits, (size_t)rows);
    for (int r = 0; r < rows; r++) {
      const uint32_t u = bits[r];
      switch (u % 16) {
      case 0:
        ids[r] = -1.0f;
        break;
      case 1:
        ids[r] = (float)vocab;
        break;
      case 2:
        ids[r] = NAN;
        break;
      case 3:
        ids[r] = (float)vocab + 0.5f;
        break;
      case 4:
        ids[r] = -0.5f;
        break;
      case 5:
        ids[r] = (float)((u >> 4) % (uint32_t)vocab) + 0.75f;
        break;
      case 6:
      case 7:
      case 8:
      case 9:
        ids[r] = 0.0f;
        break;
      default:
        ids[r] = (float)((u >> 4) % (uint32_t)vocab);
      }
    }
    randn(table, nt, 1.0f);
    randn(dy, n, 1.0f);
    /* The definitions. */
    for (int r = 0; r < rows; r++) {
      const int id = test_token(ids[r], vocab);
      for (int c = 0; c < cols; c++)
        want_y[(size_t)r * cols + c] = id < 0 ? 0.0f : table[(size_t)id * cols + c];
    }
    for (int r = 0; r < rows; r++) {
      const int id = test_token(ids[r], vocab);
      if (id >= 0)
        for (int c = 0; c < cols; c++)
          want_dt[(size_t)id * cols + c] += dy[(size_t)r * cols + c];
    }
    for (int b = 0; b < 2; b++) {
      td_backend *be = bes[b];
      if (!be)
        continue;
      const td_backend_ops *o = be->ops;
      float *bids = bput(be, ids, (size_t)rows * 4), *btab = bput(be, table, nt * 4),
            *bdy = bput(be, dy, n * 4), *by = o->alloc(be, n * 4 + 4),
            *bdt = o->alloc(be, nt * 4 + 4);
      if (!bids || !btab || !bdy || !by || !bdt) {
        CHECK(0, "%s: embedding buffers", o->name);
      } else {
        CHECK_BE(be, o->fill(be, by, n, NAN));
        CHECK_BE(be, o->fill(be, bdt, nt, NAN));
        CHECK_BE(be, o->embed_fwd(be, rows, cols, vocab, bids, btab, by));
        bget(be, got, by, n * 4);
        snprintf(label, sizeof label, "%s embed_fwd (%d rows, %d cols, vocab %d)", o->name, rows,
                 cols, vocab);
        CHECK_BITS(label, got, want_y, n);
        if (b == 0)
          memcpy(cpu_y, got, n * 4);
        else
          CHECK_BITS("embed_fwd against the CPU", got, cpu_y, n);
        CHECK_BE(be, o->embed_bwd(be, rows, cols, vocab, bids, bdy, bdt));
        bget(be, got, bdt, nt * 4);
        snprintf(label, sizeof label, "%s embed_bwd (%d rows, %d cols, vocab %d)", o->name, rows,
                 cols, vocab);
        CHECK_BITS(label, got, want_dt, nt);
        if (b == 0) {
          memcpy(cpu_dt, got, nt * 4);
        } else {
          CHECK_BITS("embed_bwd against the CPU", got, cpu_dt, nt);
          CHECK_BE(be, o->fill(be, bdt, nt, NAN));
          CHECK_BE(be, o->embed_bwd(be, rows, cols, vocab, bids, bdy, bdt));
          bget(be, got, bdt, nt * 4);
          CHECK_BITS("embed_bwd run to run", got, cpu_dt, nt);
        }
      }
      bfree(be, bids);
      bfree(be, btab);
      bfree(be, bdy);
      bfree(be, by);
      bfree(be, bdt);
    }
    free(ids);
    free(table);
    free(dy);
    free(want_y);
    free(want_dt);
    free(got);
    free(cpu_y);
    free(cpu_dt);
    free(bits);
  }
}

/* One attention shape: batch sequences of t positions, h heads of d. */
typedef struct seq_shape {
  int batch, t, h, d;
} seq_shape;

/* What the four attention ops give on one backend (host copies). */
typedef struct attn_res {
  float *p;     /* attn_probs (batch, h, t, t) */
  float *o;     /* attn_mix (batch, t, f) */
  float *dp;    /* attn_mix_bwd's dp (batch, h, t, t) */
  float *dqkv1; /* dqkv (batch, t, 3f) after attn_mix_bwd, from NaNs */
  float *ds;    /* attn_probs_bwd's ds, in place of dp */
  float *dqkv;  /* dqkv after attn_probs_bwd too */
} attn_res;

static size_t seq_qkv(seq_shape s) { return (size_t)s.batch * s.t * 3 * s.h * s.d; }
static size_t seq_out(seq_shape s) { return (size_t)s.batch * s.t * s.h * s.d; }
static size_t seq_probs(seq_shape s) { return (size_t)s.batch * s.h * s.t * s.t; }

static void attn_res_init(attn_res *r, seq_shape s) {
  r->p = hmalloc(seq_probs(s));
  r->o = hmalloc(seq_out(s));
  r->dp = hmalloc(seq_probs(s));
  r->dqkv1 = hmalloc(seq_qkv(s));
  r->ds = hmalloc(seq_probs(s));
  r->dqkv = hmalloc(seq_qkv(s));
}

static void attn_res_free(attn_res *r) {
  free(r->p);
  free(r->o);
  free(r->dp);
  free(r->dqkv1);
  free(r->ds);
  free(r->dqkv);
}

/* The four ops on be, in the engine's order. Each op after attn_probs
 * takes the weights p_in and attn_probs_bwd takes dp_in when they are not
 * NULL (the CPU's, so that the GPU's ops are compared one at a time), else
 * the backend's own. Outputs start as NaN. */
static void attn_chain(td_backend *be, seq_shape s, const float *qkv, const float *dout,
                       const float *p_in, const float *dp_in, attn_res *r) {
  const td_backend_ops *o = be->ops;
  const size_t nq = seq_qkv(s), no = seq_out(s), np = seq_probs(s);
  float *bq = bput(be, qkv, nq * 4), *bdo = bput(be, dout, no * 4);
  float *bp = o->alloc(be, np * 4), *bo = o->alloc(be, no * 4), *bdp = o->alloc(be, np * 4),
        *bdq = o->alloc(be, nq * 4);
  float *bpin = p_in ? bput(be, p_in, np * 4) : NULL;
  if (!bq || !bdo || !bp || !bo || !bdp || !bdq || (p_in && !bpin)) {
    CHECK(0, "%s: attention buffers", o->name);
    goto done;
  }
  CHECK_BE(be, o->fill(be, bp, np, NAN));
  CHECK_BE(be, o->fill(be, bo, no, NAN));
  CHECK_BE(be, o->fill(be, bdp, np, NAN));
  CHECK_BE(be, o->fill(be, bdq, nq, NAN));
  CHECK_BE(be, o->attn_probs(be, s.batch, s.t, s.h, s.d, bq, bp));
  bget(be, r->p, bp, np * 4);
  const float *pw = p_in ? bpin : bp;
  CHECK_BE(be, o->attn_mix(be, s.batch, s.t, s.h, s.d, pw, bq, bo));
  bget(be, r->o, bo, no * 4);
  CHECK_BE(be, o->attn_mix_bwd(be, s.batch, s.t, s.h, s.d, pw, bq, bdo, bdp, bdq));
  bget(be, r->dp, bdp, np * 4);
  bget(be, r->dqkv1, bdq, nq * 4);
  if (dp_in)
    CHECK_BE(be, o->upload(be, bdp, dp_in, np * 4));
  CHECK_BE(be, o->attn_probs_bwd(be, s.batch, s.t, s.h, s.d, pw, bdp, bq, bdq));
  bget(be, r->ds, bdp, np * 4);
  bget(be, r->dqkv, bdq, nq * 4);
done:
  bfree(be, bq);
  bfree(be, bdo);
  bfree(be, bp);
  bfree(be, bo);
  bfree(be, bdp);
  bfree(be, bdq);
  bfree(be, bpin);
}

/* Float64 references of the four ops by their definitions in backend.h,
 * and the bounds their float errors are measured against: the sums of the
 * magnitudes of each result's terms (any summation order's error scale),
 * and for the softmax the way score errors carry into the weights. Each
 * op's reference is computed from the inputs the ops get: qkv and dout,
 * the CPU's weights p and its dp. */
typedef struct attn_ref {
  double *p, *bp;   /* attn_probs */
  double *o, *bo;   /* attn_mix */
  double *dp, *bdp; /* attn_mix_bwd's dp */
  double *dq, *bdq; /* the gradient of qkv (q, k and v parts) */
  double *ds, *bds; /* attn_probs_bwd's ds */
} attn_ref;

static void attn_ref_make(attn_ref *a, seq_shape s, const float *qkv, const float *dout,
                          const float *p, const float *dp) {
  const int T = s.t, H = s.h, D = s.d, F = H * D, L3 = 3 * F;
  const size_t nq = seq_qkv(s), no = seq_out(s), np = seq_probs(s);
  a->p = calloc(np, sizeof(double));
  a->bp = calloc(np, sizeof(double));
  a->o = calloc(no, sizeof(double));
  a->bo = calloc(no, sizeof(double));
  a->dp = calloc(np, sizeof(double));
  a->bdp = calloc(np, sizeof(double));
  a->dq = calloc(nq, sizeof(double));
  a->bdq = calloc(nq, sizeof(double));
  a->ds = calloc(np, sizeof(double));
  a->bds = calloc(np, sizeof(double));
  double *sc = calloc((size_t)T * T, sizeof(double)), *mag = calloc((size_t)T * T, sizeof(double));
  const double scale = 1.0 / sqrt((double)D);
  for (int b = 0; b < s.batch; b++)
    for (int k = 0; k < H; k++) {
      const float *q = qkv + (size_t)b * T * L3 + (size_t)k * D, *kk = q + F, *v = q + 2 * F;
      const float *dob = dout + (size_t)b * T * F + (size_t)k * D;
      const size_t blk = ((size_t)b * H + k) * T * T;
      const size_t qrow = (size_t)b * T * L3 + (size_t)k * D;
      const size_t orow = (size_t)b * T * F + (size_t)k * D;
      /* attn_probs: the scores, their magnitudes, the softmax. */
      for (int i = 0; i < T; i++) {
        double mx = -INFINITY;
        for (int j = 0; j <= i; j++) {
          double dot = 0.0, m = 0.0;
          for (int l = 0; l < D; l++) {
            dot += (double)q[(size_t)i * L3 + l] * kk[(size_t)j * L3 + l];
            m += fabs((double)q[(size_t)i * L3 + l] * kk[(size_t)j * L3 + l]);
          }
          sc[(size_t)i * T + j] = dot * scale;
          mag[(size_t)i * T + j] = m * scale;
          mx = sc[(size_t)i * T + j] > mx ? sc[(size_t)i * T + j] : mx;
        }
        double sum = 0.0, pm = 0.0;
        for (int j = 0; j <= i; j++)
          sum += exp(sc[(size_t)i * T + j] - mx);
        for (int j = 0; j <= i; j++) {
          const double pij = exp(sc[(size_t)i * T + j] - mx) / sum;
          a->p[blk + (size_t)i * T + j] = pij;
          pm += pij * mag[(size_t)i * T + j];
        }
        /* A score error of e * mag moves p_ij by p_ij (e mag_ij - sum_k
         * p_ik e mag_ik); exp and the division add a few ulps of p_ij. */
        for (int j = 0; j <= i; j++)
          a->bp[blk + (size_t)i * T + j] =
              a->p[blk + (size_t)i * T + j] * (mag[(size_t)i * T + j] + pm + 1.0);
      }
      /* attn_mix from the CPU's p. */
      const float *pb = p + blk, *dpb = dp + blk;
      for (int i = 0; i < T; i++)
        for (int l = 0; l < D; l++) {
          double acc = 0.0, m = 0.0;
          for (int j = 0; j < T; j++) {
            const double t = (double)pb[(size_t)i * T + j] * v[(size_t)j * L3 + l];
            acc += t;
            m += fabs(t);
          }
          a->o[orow + (size_t)i * F + l] = acc;
          a->bo[orow + (size_t)i * F + l] = m;
        }
      /* attn_mix_bwd: dp = do v^T below the diagonal, dv = p^T do. */
      for (int i = 0; i < T; i++)
        for (int j = 0; j <= i; j++) {
          double acc = 0.0, m = 0.0;
          for (int l = 0; l < D; l++) {
            const double t = (double)dob[(size_t)i * F + l] * v[(size_t)j * L3 + l];
            acc += t;
            m += fabs(t);
          }
          a->dp[blk + (size_t)i * T + j] = acc;
          a->bdp[blk + (size_t)i * T + j] = m;
        }
      for (int j = 0; j < T; j++)
        for (int l = 0; l < D; l++) {
          double acc = 0.0, m = 0.0;
          for (int i = 0; i < T; i++) {
            const double t = (double)pb[(size_t)i * T + j] * dob[(size_t)i * F + l];
            acc += t;
            m += fabs(t);
          }
          a->dq[qrow + 2 * (size_t)F + (size_t)j * L3 + l] = acc;
          a->bdq[qrow + 2 * (size_t)F + (size_t)j * L3 + l] = m;
        }
      /* attn_probs_bwd from the CPU's p and dp: ds = p (dp - sum p dp),
       * then dq = ds k / sqrt(d), dk = ds^T q / sqrt(d). The float ds the
       * products get is within a few ulps of its bound. */
      for (int i = 0; i < T; i++) {
        double dot = 0.0, m = 0.0;
        for (int j = 0; j <= i; j++) {
          dot += (double)pb[(size_t)i * T + j] * dpb[(size_t)i * T + j];
          m += fabs((double)pb[(size_t)i * T + j] * dpb[(size_t)i * T + j]);
        }
        for (int j = 0; j <= i; j++) {
          const double pij = pb[(size_t)i * T + j], dij = dpb[(size_t)i * T + j];
          a->ds[blk + (size_t)i * T + j] = pij * (dij - dot);
          a->bds[blk + (size_t)i * T + j] = pij * (fabs(dij) + m);
        }
      }
      for (int i = 0; i < T; i++)
        for (int l = 0; l < D; l++) {
          double acc = 0.0, m = 0.0, acck = 0.0, mk = 0.0;
          for (int j = 0; j < T; j++) {
            /* dq_i = sum_j ds_ij k_j; dk_i = sum_j ds_ji q_j */
            const double dij = a->ds[blk + (size_t)i * T + j];
            const double bij = fabs(dij) + a->bds[blk + (size_t)i * T + j];
            acc += dij * kk[(size_t)j * L3 + l];
            m += bij * fabs(kk[(size_t)j * L3 + l]);
            const double dji = a->ds[blk + (size_t)j * T + i];
            const double bji = fabs(dji) + a->bds[blk + (size_t)j * T + i];
            acck += dji * q[(size_t)j * L3 + l];
            mk += bji * fabs(q[(size_t)j * L3 + l]);
          }
          a->dq[qrow + (size_t)i * L3 + l] = acc * scale;
          a->bdq[qrow + (size_t)i * L3 + l] = m * scale;
          a->dq[qrow + F + (size_t)i * L3 + l] = acck * scale;
          a->bdq[qrow + F + (size_t)i * L3 + l] = mk * scale;
        }
    }
  free(sc);
  free(mag);
}

static void attn_ref_free(attn_ref *a) {
  free(a->p);
  free(a->bp);
  free(a->o);
  free(a->bo);
  free(a->dp);
  free(a->bdp);
  free(a->dq);
  free(a->bdq);
  free(a->ds);
  free(a->bds);
}

/* The parts of dqkv (batch, t, 3f) in [c0, c1) of each row: NaN (not
 * written) or not, counted. */
static size_t dqkv_nans(const float *x, seq_shape s, int c0, int c1) {
  const int L3 = 3 * s.h * s.d;
  size_t nans = 0;
  for (size_t r = 0; r < (size_t)s.batch * s.t; r++)
    for (int c = c0; c < c1; c++)
      nans += isnan(x[r * L3 + c]) != 0;
  return nans;
}

/* Checks one backend's results (the CPU's, or the GPU's on the CPU's
 * inputs) against the float64 references, at the tolerances of
 * check_attention. */
static void attn_check_res(const char *who, seq_shape s, const attn_res *r, const attn_ref *a) {
  const size_t nq = seq_qkv(s), no = seq_out(s), np = seq_probs(s);
  const int F = s.h * s.d;
  char label[160];
#define ATTN_LABEL(what)                                                                       \
  snprintf(label, sizeof label, "%s %s (batch %d, t %d, h %d, d %d)", who, what, s.batch, s.t, \
           s.h, s.d)
  ATTN_LABEL("attn_probs");
  check_bound(label, r->p, a->p, a->bp, np, 1e-5);
  ATTN_LABEL("attn_mix");
  check_bound(label, r->o, a->o, a->bo, no, 1e-5);
  ATTN_LABEL("attn_mix_bwd dp");
  check_bound(label, r->dp, a->dp, a->bdp, np, 1e-5);
  const size_t qk_unwritten = dqkv_nans(r->dqkv1, s, 0, 2 * F);
  const size_t v_unwritten = dqkv_nans(r->dqkv1, s, 2 * F, 3 * F);
  CHECK(qk_unwritten == (size_t)s.batch * s.t * 2 * F && v_unwritten == 0,
        "%s attn_mix_bwd (batch %d, t %d, h %d, d %d): %zu values' gradients unwritten, %zu of "
        "the queries' and keys' written (it writes exactly the values' part)",
        who, s.batch, s.t, s.h, s.d, v_unwritten, (size_t)s.batch * s.t * 2 * F - qk_unwritten);
  ATTN_LABEL("attn_probs_bwd ds");
  check_bound(label, r->ds, a->ds, a->bds, np, 1e-6);
  ATTN_LABEL("dqkv");
  check_bound(label, r->dqkv, a->dq, a->bdq, nq, 1e-5);
  /* attn_probs_bwd leaves the values' part as attn_mix_bwd wrote it. */
  size_t moved = 0;
  for (size_t r0 = 0; r0 < (size_t)s.batch * s.t; r0++)
    moved += bitdiff(r->dqkv + r0 * 3 * F + 2 * F, r->dqkv1 + r0 * 3 * F + 2 * F, (size_t)F);
  CHECK(moved == 0, "%s attn_probs_bwd changed %zu of the values' gradients", who, moved);
#undef ATTN_LABEL
}

/* Every attention op on the shapes t 1, 7, 64 x h 1, 4 x d 8, 32 x batch
 * 1, 3, and two more (t 9 over 5 sequences of 2 heads; t 130, past four
 * warps' widths), qkv and do random normal (scores of order 1):
 *   1e-5         attn_probs against float64, relative to p_ij (|s|_ij +
 *                sum_k p_ik |s|_ik + 1), |s| the score's sum of term
 *                magnitudes (how a GEMM's error in the scores carries into
 *                the weights; CUDA's expf is within 2 ulp of glibc's);
 *                attn_mix, attn_mix_bwd's dp and dv, attn_probs_bwd's dq
 *                and dk, relative to the sums of their terms' magnitudes
 *                (dq and dk with ds's error bound in them)
 *   1e-6         ds, relative to p_ij (|dp_ij| + sum_k |p_ik dp_ik|)
 *   exact        zeros above the diagonal of p, dp and ds (every output
 *                starts as NaN, so every element must be written);
 *                attn_mix_bwd writes exactly the values' part of dqkv,
 *                attn_probs_bwd the rest; the GPU's results twice
 * The CPU is checked against float64, and the GPU, given the CPU's
 * weights (and dp), against the CPU at the same bounds; without a GPU the
 * CPU half runs. */
static void check_attention(td_backend *gb) {
  seq_shape shapes[26];
  size_t ns = 0;
  const int t_of[] = {1, 7, 64}, h_of[] = {1, 4}, d_of[] = {8, 32}, batch_of[] = {1, 3};
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 2; b++)
      for (int c = 0; c < 2; c++)
        for (int e = 0; e < 2; e++)
          shapes[ns++] = (seq_shape){batch_of[e], t_of[a], h_of[b], d_of[c]};
  shapes[ns++] = (seq_shape){5, 9, 2, 8};
  shapes[ns++] = (seq_shape){2, 130, 3, 16};
  for (size_t k = 0; k < ns; k++) {
    const seq_shape s = shapes[k];
    const size_t nq = seq_qkv(s), no = seq_out(s), np = seq_probs(s);
    float *qkv = hmalloc(nq), *dout = hmalloc(no);
    randn(qkv, nq, 1.0f);
    randn(dout, no, 1.0f);
    attn_res c, g, g2;
    attn_res_init(&c, s);
    attn_chain(cpu, s, qkv, dout, NULL, NULL, &c);
    attn_ref a;
    attn_ref_make(&a, s, qkv, dout, c.p, c.dp);
    attn_check_res("cpu", s, &c, &a);
    if (gb) {
      attn_res_init(&g, s);
      attn_res_init(&g2, s);
      attn_chain(gb, s, qkv, dout, c.p, c.dp, &g);
      attn_check_res("gpu", s, &g, &a);
      /* Against the CPU's own results, at the references' bounds. */
      double *cd = malloc((nq > np ? nq : np) * sizeof(double));
      char label[160];
#define GPU_VS_CPU(what, field, bound, n, tol)                                                 \
  do {                                                                                         \
    for (size_t i_ = 0; i_ < (n); i_++)                                                        \
      cd[i_] = c.field[i_];                                                                    \
    snprintf(label, sizeof label, "gpu %s against the cpu (batch %d, t %d, h %d, d %d)", what, \
             s.batch, s.t, s.h, s.d);                                                          \
    check_bound(label, g.field, cd, a.bound, (n), (tol));                                      \
  } while (0)
      GPU_VS_CPU("attn_probs", p, bp, np, 1e-5);
      GPU_VS_CPU("attn_mix", o, bo, no, 1e-5);
      GPU_VS_CPU("attn_mix_bwd dp", dp, bdp, np, 1e-5);
      GPU_VS_CPU("attn_probs_bwd ds", ds, bds, np, 1e-6);
      GPU_VS_CPU("dqkv", dqkv, bdq, nq, 1e-5);
#undef GPU_VS_CPU
      free(cd);
      attn_chain(gb, s, qkv, dout, c.p, c.dp, &g2);
      CHECK_BITS("attn_probs run to run", g2.p, g.p, np);
      CHECK_BITS("attn_mix run to run", g2.o, g.o, no);
      CHECK_BITS("attn_mix_bwd run to run", g2.dp, g.dp, np);
      CHECK_BITS("attn_probs_bwd run to run", g2.ds, g.ds, np);
      CHECK_BITS("dqkv run to run", g2.dqkv, g.dqkv, nq);
      attn_res_free(&g);
      attn_res_free(&g2);
    }
    attn_ref_free(&a);
    attn_res_free(&c);
    free(qkv);
    free(dout);
  }
}

/* Token windows (td_rows {T, 1, T, 1}: example i is T consecutive values
 * and labels from idx[i], overlapping), tiled windows ({T, T, T, T}) and
 * overlapping windows whose rows can move as float4 ({8, 4, 8, 4}):
 * gathered by the GPU, also from an offset in device memory, bit for bit
 * as the CPU, which equals the definition. */
static void check_gather_windows(td_backend *gb) {
  enum { N = 10007, COUNT = 100, OFF = 7 };
  const td_rows layouts[] = {{64, 1, 64, 1}, {33, 33, 33, 33}, {8, 4, 8, 4}, {1, 1, 1, 1}};
  float *src = hmalloc(N);
  int32_t *labels = calloc(N, sizeof *labels);
  randn(src, N, 1.0f);
  rand_labels(labels, N, 65);
  for (size_t t = 0; t < sizeof layouts / sizeof *layouts; t++) {
    const td_rows l = layouts[t];
    const uint32_t windows = (uint32_t)((N - l.dim) / l.stride + 1);
    uint32_t idx[COUNT], bits[COUNT];
    td_prng_bits(td_prng_fold_in(td_prng_key(13), draws++), bits, COUNT);
    for (int i = 0; i < COUNT; i++)
      idx[i] = bits[i] % windows;
    idx[0] = 0;
    idx[COUNT - 1] = windows - 1; /* the last window ends at the last value */
    const size_t nv = COUNT * l.dim, nl = COUNT * l.label_dim;
    float *want = hmalloc(nv), *cpu_v = hmalloc(nv), *got = hmalloc(nv);
    int32_t *want_l = calloc(nl, sizeof *want_l), *cpu_l = calloc(nl, sizeof *cpu_l),
            *got_l = calloc(nl, sizeof *got_l);
    for (int i = 0; i < COUNT; i++) {
      for (size_t c = 0; c < l.dim; c++)
        want[i * l.dim + c] = src[idx[i] * l.stride + c];
      for (size_t c = 0; c < l.label_dim; c++)
        want_l[i * l.label_dim + c] = labels[idx[i] * l.label_stride + c];
    }
    char label[128];
    snprintf(label, sizeof label, "cpu gather of windows {%zu, %zu, %zu, %zu}", l.dim, l.stride,
             l.label_dim, l.label_stride);
    C->gather(cpu, &l, src, labels, idx, NULL, COUNT, cpu_v, cpu_l);
    CHECK_BITS(label, cpu_v, want, nv);
    CHECK(memcmp(cpu_l, want_l, nl * 4) == 0, "%s: labels differ", label);
    if (gb) {
      const td_backend_ops *o = gb->ops;
      const uint32_t off = OFF;
      float *dsrc = bput(gb, src, N * 4), *dst = o->alloc(gb, nv * 4);
      int32_t *dl = bput(gb, labels, N * 4), *dstl = o->alloc(gb, nl * 4);
      uint32_t *didx = bput(gb, idx, sizeof idx), *doff = bput(gb, &off, sizeof off);
      if (dsrc && dst && dl && dstl && didx && doff) {
        CHECK_BE(gb, o->fill(gb, dst, nv, NAN));
        CHECK_BE(gb, o->gather(gb, &l, dsrc, dl, didx, NULL, COUNT, dst, dstl));
        bget(gb, got, dst, nv * 4);
        bget(gb, got_l, dstl, nl * 4);
        snprintf(label, sizeof label, "gpu gather of windows {%zu, %zu, %zu, %zu}", l.dim, l.stride,
                 l.label_dim, l.label_stride);
        CHECK_BITS(label, got, cpu_v, nv);
        CHECK(memcmp(got_l, cpu_l, nl * 4) == 0, "%s: labels differ", label);
        /* At the offset a step's record gives. */
        C->gather(cpu, &l, src, labels, idx, &off, COUNT - OFF, cpu_v, cpu_l);
        CHECK_BE(gb, o->fill(gb, dst, nv, NAN));
        CHECK_BE(gb, o->gather(gb, &l, dsrc, dl, didx, doff, COUNT - OFF, dst, dstl));
        bget(gb, got, dst, (COUNT - OFF) * l.dim * 4);
        bget(gb, got_l, dstl, (COUNT - OFF) * l.label_dim * 4);
        CHECK_BITS("gpu gather of windows at a device offset", got, cpu_v, (COUNT - OFF) * l.dim);
        CHECK(memcmp(got_l, cpu_l, (COUNT - OFF) * l.label_dim * 4) == 0,
              "gpu gather of windows at a device offset: labels differ");
      }
      bfree(gb, dsrc);
      bfree(gb, dst);
      bfree(gb, dl);
      bfree(gb, dstl);
      bfree(gb, didx);
      bfree(gb, doff);
    }
    free(want);
    free(cpu_v);
    free(got);
    free(want_l);
    free(cpu_l);
    free(got_l);
  }
  free(src);
  free(labels);
}

/* An attention layer's forward and backward and an embedding's, recorded
 * as one graph (after a run op by op has sized the scratch) and replayed:
 * recording runs nothing, and a replay gives the op-by-op results bit for
 * bit. */
enum { SG_B = 3, SG_T = 64, SG_H = 4, SG_D = 32, SG_F = SG_H * SG_D, SG_V = 65 };

typedef struct seq_graph_bufs {
  const float *qkv, *dout, *ids, *table;
  float *p, *o, *dp, *dqkv, *y, *dtable;
} seq_graph_bufs;

static int seq_graph_body(void *arg) {
  const seq_graph_bufs *b = arg;
  int rc;
  if ((rc = G->embed_fwd(gpu, SG_B * SG_T, SG_F, SG_V, b->ids, b->table, b->y)) ||
      (rc = G->attn_probs(gpu, SG_B, SG_T, SG_H, SG_D, b->qkv, b->p)) ||
      (rc = G->attn_mix(gpu, SG_B, SG_T, SG_H, SG_D, b->p, b->qkv, b->o)) ||
      (rc = G->attn_mix_bwd(gpu, SG_B, SG_T, SG_H, SG_D, b->p, b->qkv, b->dout, b->dp, b->dqkv)) ||
      (rc = G->attn_probs_bwd(gpu, SG_B, SG_T, SG_H, SG_D, b->p, b->dp, b->qkv, b->dqkv)))
    return rc;
  return G->embed_bwd(gpu, SG_B * SG_T, SG_F, SG_V, b->ids, b->o, b->dtable);
}

static void check_seq_graph(void) {
  if (!G->graph_record)
    return;
  const size_t nq = (size_t)SG_B * SG_T * 3 * SG_F, no = (size_t)SG_B * SG_T * SG_F,
               np = (size_t)SG_B * SG_H * SG_T * SG_T, nt = (size_t)SG_V * SG_F;
  float *qkv = hmalloc(nq), *dout = hmalloc(no), *ids = hmalloc(SG_B * SG_T), *table = hmalloc(nt);
  float *ha = hmalloc(nq), *hb = hmalloc(nq);
  randn(qkv, nq, 1.0f);
  randn(dout, no, 1.0f);
  randn(table, nt, 1.0f);
  for (int r = 0; r < SG_B * SG_T; r++)
    ids[r] = (float)((r * 7) % (SG_V + 2)); /* with two ids outside */
  seq_graph_bufs a = {0}, b = {0};
  a.qkv = b.qkv = gput(qkv, nq * 4);
  a.dout = b.dout = gput(dout, no * 4);
  a.ids = b.ids = gput(ids, SG_B * SG_T * 4);
  a.table = b.table = gput(table, nt * 4);
  seq_graph_bufs *runs[2] = {&a, &b};
  for (int k = 0; k < 2; k++) {
    runs[k]->p = G->alloc(gpu, np * 4);
    runs[k]->o = G->alloc(gpu, no * 4);
    runs[k]->dp = G->alloc(gpu, np * 4);
    runs[k]->dqkv = G->alloc(gpu, nq * 4);
    runs[k]->y = G->alloc(gpu, no * 4);
    runs[k]->dtable = G->alloc(gpu, nt * 4);
  }
  void *graph = NULL;
  if (!a.qkv || !a.dout || !a.ids || !a.table || !a.p || !a.o || !a.dp || !a.dqkv || !a.y ||
      !a.dtable || !b.p || !b.o || !b.dp || !b.dqkv || !b.y || !b.dtable)
    goto done;
  CHECK_OK(seq_graph_body(&a));
  CHECK_OK(G->fill(gpu, b.p, np, NAN));
  CHECK_OK(G->fill(gpu, b.dtable, nt, NAN));
  CHECK_OK(G->graph_record(gpu, seq_graph_body, &b, &graph));
  CHECK(graph != NULL, "graph_record of the sequence ops returned no graph");
  if (!graph)
    goto done;
  gget(hb, b.p, np * 4);
  size_t ran = 0;
  for (size_t i = 0; i < np; i++)
    ran += !isnan(hb[i]);
  CHECK(ran == 0, "recording the sequence ops ran them: %zu weights written", ran);
  CHECK_OK(G->graph_replay(gpu, graph));
  const struct {
    const char *what;
    const float *x, *y;
    size_t n;
  } bufs[] = {{"p", a.p, b.p, np},         {"o", a.o, b.o, no},
              {"ds", a.dp, b.dp, np},      {"dqkv", a.dqkv, b.dqkv, nq},
              {"embedding", a.y, b.y, no}, {"embedding gradient", a.dtable, b.dtable, nt}};
  for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) {
    gget(ha, bufs[k].x, bufs[k].n * 4);
    gget(hb, bufs[k].y, bufs[k].n * 4);
    char label[96];
    snprintf(label, sizeof label, "sequence ops replayed against op by op: %s", bufs[k].what);
    CHECK_BITS(label, hb, ha, bufs[k].n);
  }
done:
  if (graph)
    G->graph_free(gpu, graph);
  gfree((void *)a.qkv);
  gfree((void *)a.dout);
  gfree((void *)a.ids);
  gfree((void *)a.table);
  for (int k = 0; k < 2; k++) {
    gfree(runs[k]->p);
    gfree(runs[k]->o);
    gfree(runs[k]->dp);
    gfree(runs[k]->dqkv);
    gfree(runs[k]->y);
    gfree(runs[k]->dtable);
  }
  free(qkv);
  free(dout);
  free(ids);
  free(table);
  free(ha);
  free(hb);
}

/* Bad shapes to the sequence ops: error values naming the op. */
static void check_seq_errors(void) {
  float *a = G->alloc(gpu, 64 * sizeof(float));
  int rc = G->embed_fwd(gpu, -1, 4, 4, a, a, a);
  CHECK(rc == TD_EINVAL, "embed_fwd with negative rows: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "embed_fwd");
  rc = G->embed_bwd(gpu, 2, 4, -3, a, a, a);
  CHECK(rc == TD_EINVAL, "embed_bwd with a negative vocabulary: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "embed_bwd");
  rc = G->attn_probs(gpu, 1, 2, 0, 4, a, a);
  CHECK(rc == TD_EINVAL, "attn_probs with no heads: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "attn_probs");
  rc = G->attn_mix_bwd(gpu, 1, -2, 1, 4, a, a, a, a, a);
  CHECK(rc == TD_EINVAL, "attn_mix_bwd with negative positions: rc %d", rc);
  rc = G->attn_probs_bwd(gpu, 1, 2, 1 << 20, 1 << 12, a, a, a, a);
  CHECK(rc == TD_EINVAL, "attn_probs_bwd past cuBLAS's leading dimension: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "leading dimension");
  float h[64];
  CHECK_OK(G->fill(gpu, a, 64, 3.5f));
  gget(h, a, sizeof h);
  CHECK(h[0] == 3.5f && h[63] == 3.5f, "the backend after refused calls: %g %g", (double)h[0],
        (double)h[63]);
  gfree(a);
}

/* Bad arguments to the window and normalization ops: error values naming
 * the op, and the backend goes on working. */
static void check_window_errors(void) {
  void *k = NULL;
  td_window g = mkwin_same(2, 8, 8, 3, 4, 3, 3, 1, 1, 1, 1);
  td_window bad = g;
  bad.oh = 9; /* does not follow from the rest */
  int rc = G->pool_create(gpu, &bad, TD_POOL_MAX, &k);
  CHECK(rc == TD_EINVAL && !k, "pool_create with a wrong output size: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "pool_create");
  bad = g;
  bad.oc = g.c;
  bad.dh = 2;
  bad.oh = td_window_out(bad.h, bad.pt, bad.pb, bad.kh, bad.sh, 2);
  rc = G->pool_create(gpu, &bad, TD_POOL_AVG, &k);
  CHECK(rc == TD_EUNSUPPORTED && !k, "dilated pooling: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "dilated");
  bad = g;
  bad.sh = 0;
  rc = G->pool_create(gpu, &bad, TD_POOL_AVG, &k);
  CHECK(rc == TD_EINVAL && !k, "stride 0: rc %d", rc);
  float *a = G->alloc(gpu, 64 * sizeof(float));
  rc = G->ln_bwd(gpu, 2, 4, a, a, a, NULL, a, NULL, NULL);
  CHECK(rc == TD_EINVAL, "ln_bwd with dx = dy: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "ln_bwd");
  rc = G->col_moments(gpu, -1, 4, a, a);
  CHECK(rc == TD_EINVAL, "col_moments with negative rows: rc %d", rc);
  rc = G->bn_fwd(gpu, 0, 2, 4, a, NULL, NULL, 0.9f, 1e-5f, NULL, NULL, a, a);
  CHECK(rc == TD_EINVAL, "bn_fwd evaluation without running statistics: rc %d", rc);
#ifdef TRAIND_HAVE_CUDNN
  bad = g;
  bad.ow = 3;
  rc = G->conv_create(gpu, &bad, &k);
  CHECK(rc == TD_EINVAL && !k, "conv_create with a wrong output size: rc %d", rc);
  CHECK_STR_CONTAINS(td_cuda_backend_last_error(gpu), "conv_create");
  /* A pooling kernel is not a convolution's. */
  td_window pg = g;
  pg.oc = pg.c;
  if (G->pool_create(gpu, &pg, TD_POOL_MAX, &k) == 0) {
    rc = G->conv_fwd(gpu, k, a, a, a);
    CHECK(rc == TD_EINVAL, "conv_fwd with a pooling kernel: rc %d", rc);
    G->kernel_free(gpu, k);
    k = NULL;
  }
#else
  CHECK(G->conv_create == NULL && G->conv_fwd == NULL && G->conv_bwd == NULL,
        "a build without cuDNN has no convolution kernels");
#endif
  float h[64];
  CHECK_OK(G->fill(gpu, a, 64, 1.5f));
  gget(h, a, sizeof h);
  CHECK(h[0] == 1.5f && h[63] == 1.5f, "the backend after refused calls: %g %g", (double)h[0],
        (double)h[63]);
  gfree(a);
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

/* One step's work up to the optimizer on one backend: the batch gathered
 * at the order's start, forward, loss, backward and the squared gradient
 * norm into the scalars. On the GPU it may be recorded as a graph and
 * replayed (the order and keys are device buffers it reads at replay). */
typedef struct train_body {
  td_state *st;
  const float *x;
  const int32_t *y;
  const uint32_t *order, *keys;
  uint32_t batch;
  td_error *err;
} train_body;

static int train_body_run(void *arg) {
  train_body *t = arg;
  td_state *st = t->st;
  td_backend *be = st->be;
  const td_plan *p = st->plan;
  float *a = st->arena;
  const td_rows rl = {p->in_dim, p->in_dim, 1, 1};
  int rc = be->ops->gather(be, &rl, t->x, t->y, t->order, NULL, t->batch, a + p->in_off,
                           (int32_t *)(a + p->labels_off));
  if (!rc && !(rc = td_state_forward(st, (int)t->batch, 1, t->keys, 0, t->err)) &&
      !(rc = td_state_loss(st, (int)t->batch, 1, t->err)) && !(rc = td_state_backward(st, t->err)))
    rc = be->ops->sumsq(be, p->n_params, st->grads, a + p->scalars_off + TD_SC_GRAD_SUMSQ);
  return rc;
}

/* The relative distance between two flat buffers (a norm of the difference
 * over the norm of want). */
static double rel_dist(const float *got, const float *want, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)got[i] - want[i];
    num += d * d;
    den += (double)want[i] * want[i];
  }
  return isnan(num) ? INFINITY : sqrt(num / (den > 0 ? den : 1e-30));
}

/* 20 steps on both backends from the same parameters, batches and dropout
 * keys; the parameters (and batch norms' running statistics) must agree to
 * a relative error below 1e-4, and so must an evaluation pass after them
 * (batch norm on its running statistics). record: on the GPU, the first
 * step runs op by op (the warm-up) and the rest replay one recorded graph
 * of the step up to the optimizer. */
static void check_training(const char *label, const char *doc_head, uint32_t batch, int record) {
  enum { N_EX = 517, STEPS = 20 };
  char doc[4096];
  snprintf(doc, sizeof doc, "%s%s", doc_head, train_opt_tail);
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  td_plan *p = NULL;
  td_state sc = {0}, sg = {0};
  void *graph = NULL;
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
  const size_t np = p->n_params, dim = p->in_dim, ns = p->n_stats;
  float *p0 = hmalloc(np), *pg = hmalloc(np), *sgot = hmalloc(ns);
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
  train_body bodies[2] = {
      {&sc, x, y, order, p->n_keys ? keys : NULL, batch, &err},
      {&sg, gx, gy, gorder, p->n_keys ? gkeys : NULL, batch, &err},
  };
  float scal[2][TD_PLAN_SCALARS];
  double worst_loss = 0.0;
  for (int step = 0; step < STEPS && gx && gy && gorder && gkeys; step++) {
    CHECK_OK(td_prng_permutation(td_prng_fold_in(key, 1000 + step), order, N_EX));
    td_plan_dropout_keys(p, td_prng_fold_in(key, 2000 + step), keys);
    CHECK_OK(G->upload(gpu, gorder, order, sizeof order));
    CHECK_OK(G->upload(gpu, gkeys, keys, (key_words + 2) * sizeof *keys));
    if (record && step == 1) {
      rc = G->graph_record(gpu, train_body_run, &bodies[1], &graph);
      CHECK(rc == 0 && graph, "%s: recording the step: %s (%s)", label, err.msg,
            td_cuda_backend_last_error(gpu));
      if (rc)
        goto done;
    }
    for (int b = 0; b < 2; b++) {
      td_state *st = both[b];
      td_backend *be = st->be;
      float *sca = st->arena + p->scalars_off;
      rc = b && graph ? G->graph_replay(gpu, graph) : train_body_run(&bodies[b]);
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
    const double rel = rel_dist(pg, sc.params, np), moved = rel_dist(p0, sc.params, np);
    CHECK(rel < 1e-4, "%s: after %d steps the parameters differ by %.3g (relative)", label, STEPS,
          rel);
    CHECK(moved > 1e-3, "%s: training did not move the parameters", label);
    double srel = 0.0;
    if (ns) {
      gget(sgot, sg.stats, ns * sizeof(float));
      srel = rel_dist(sgot, sc.stats, ns);
      CHECK(srel < 1e-4, "%s: the running statistics differ by %.3g (relative)", label, srel);
    }
    /* An evaluation pass over the last batch: batch norms use their
     * running statistics. */
    float ev[2][TD_PLAN_SCALARS];
    for (int b = 0; b < 2; b++) {
      td_state *st = both[b];
      rc = td_state_forward(st, (int)batch, 0, NULL, 0, &err);
      if (!rc)
        rc = td_state_loss(st, (int)batch, 0, &err);
      if (!rc)
        rc = st->be->ops->download(st->be, ev[b], st->arena + p->scalars_off, sizeof ev[b]);
      CHECK(rc == 0, "%s: evaluation on %s: %s", label, st->be->ops->name, err.msg);
    }
    if (!rc)
      CHECK(td_relerr(ev[1][TD_SC_LOSS_SUM], ev[0][TD_SC_LOSS_SUM], 1e-6) < 1e-4,
            "%s: evaluation loss %.9g on the GPU, %.9g on the CPU", label,
            (double)ev[1][TD_SC_LOSS_SUM], (double)ev[0][TD_SC_LOSS_SUM]);
    printf("%s%s: %d steps, parameters agree to %.3g, statistics to %.3g, losses to %.3g\n", label,
           record ? " (recorded)" : "", STEPS, rel, srel, worst_loss);
  }
done:
  if (graph)
    G->graph_free(gpu, graph);
  gfree(gx);
  gfree(gy);
  gfree(gorder);
  gfree(gkeys);
  free(keys);
  free(x);
  free(p0);
  free(pg);
  free(sgot);
out:
  td_state_free(&sc);
  td_state_free(&sg);
  td_plan_free(p);
  td_jobspec_free(spec);
}

/* The conv-net models of the training checks. The first has every new
 * layer: convolutions with bias, dilation, stride 2 (asymmetric SAME
 * padding) and explicit padding, batch norm, layer norm, max, average
 * (with and without the padding) and global average pooling, and a
 * residual add; the second is Flax's MNIST CNN, smaller. */
static const char *const cnn_models[][2] = {
    {"conv net with batch norm, layer norm and every pooling",
     "model: {input_shape: [12, 12, 3], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
     "{name: c1, conv: {features: 8, kernel_size: [3, 3]}},"
     "{name: bn1, batch_norm: {momentum: 0.9}}, {relu: {}},"
     "{name: mp, max_pool: {window_shape: [2, 2], strides: [2, 2]}},"
     "{name: c2, conv: {features: 16, kernel_size: [3, 3], strides: [2, 2], use_bias: false}},"
     "{name: bn2, batch_norm: {}}, {name: r2, relu: {}},"
     "{name: c3, conv: {features: 16, kernel_size: [3, 3], kernel_dilation: [2, 2]}},"
     "{name: ln, layer_norm: {}},"
     "{name: sum, add: {}, inputs: [ln, r2]},"
     "{name: c4, conv: {features: 12, kernel_size: [2, 2], explicit_padding: [0, 1, 1, 0]}},"
     "{relu: {}},"
     "{avg_pool: {window_shape: [2, 2], padding: SAME, count_include_pad: false}},"
     "{avg_pool: {window_shape: [3, 3], padding: SAME}},"
     "{global_avg_pool: {}},"
     "{dense: {features: 10}}]}\n"
     "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.05}, momentum: 0.9}}]}\n"},
    {"Flax's MNIST CNN (smaller)",
     "model: {input_shape: [28, 28, 1], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
     "{conv: {features: 8, kernel_size: [3, 3]}}, {relu: {}},"
     "{avg_pool: {window_shape: [2, 2], strides: [2, 2]}},"
     "{conv: {features: 16, kernel_size: [3, 3]}}, {relu: {}},"
     "{avg_pool: {window_shape: [2, 2], strides: [2, 2]}},"
     "{flatten: {}}, {dense: {features: 32}}, {relu: {}}, {dense: {features: 10}}]}\n"
     "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.1}, momentum: 0.9}}]}\n"},
};

/* A build without cuDNN: a model with a convolution is refused on the GPU
 * when its state is made, naming the layer. */
static void check_cnn_refused(void) {
  char doc[4096];
  snprintf(doc, sizeof doc, "%s%s", cnn_models[0][1], train_opt_tail);
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  td_plan *p = NULL;
  td_state st = {0};
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  if (!rc)
    rc = td_plan_compile(spec->model, spec->optimizer, 16, "cuda:0", &p, &err);
  CHECK(rc == 0, "compile: %s", err.msg);
  if (!rc) {
    rc = td_state_init(&st, p, gpu, &err);
    CHECK(rc == TD_EUNSUPPORTED, "a conv layer on a GPU without cuDNN: rc %d", rc);
    CHECK_STR_CONTAINS(err.msg, "c1");
    CHECK_STR_CONTAINS(err.msg, "convolution");
  }
  td_state_free(&st);
  td_plan_free(p);
  td_jobspec_free(spec);
}

/* Without a GPU: the conv-net models compile and take their kernels on the
 * CPU backend, so that the GPU's training checks meet no error of their own. */
static void check_cnn_models_compile(void) {
  for (size_t m = 0; m < sizeof cnn_models / sizeof *cnn_models; m++) {
    char doc[4096];
    snprintf(doc, sizeof doc, "%s%s", cnn_models[m][1], train_opt_tail);
    td_error err = {0};
    Traind__V1__JobSpec *spec = NULL;
    td_plan *p = NULL;
    td_state st = {0};
    int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
    if (!rc)
      rc = td_plan_compile(spec->model, spec->optimizer, 16, "cpu:0", &p, &err);
    if (!rc)
      rc = td_state_init(&st, p, cpu, &err);
    CHECK(rc == 0, "%s: %s", cnn_models[m][0], err.msg);
    td_state_free(&st);
    td_plan_free(p);
    td_jobspec_free(spec);
  }
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
  /* The window checks' float64 references against the CPU backend, and the
   * training checks' models on it: what the GPU run will compare with. */
  if (td_cpu_backend_create(&cpu, 0, &err2) == 0) {
    C = cpu->ops;
    check_conv(NULL);
    check_pool(NULL);
    check_cnn_models_compile();
    check_embed(NULL);
    check_attention(NULL);
    check_gather_windows(NULL);
    td_backend_destroy(cpu);
  } else {
    CHECK(0, "CPU backend: %s", err2.msg);
  }
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
  check_conv(G->conv_create ? gpu : NULL);
  check_pool(gpu);
  check_norm();
  check_window_errors();
  check_embed(gpu);
  check_attention(gpu);
  check_gather_windows(gpu);
  check_seq_graph();
  check_seq_errors();
  check_training("relu + dropout + gelu, softmax xent, clip + adamw",
                 "model: {input_shape: [20], loss: SOFTMAX_CROSS_ENTROPY, layers: ["
                 "{dense: {features: 33, kernel_init: HE_NORMAL}}, {relu: {}},"
                 "{dropout: {rate: 0.25}},"
                 "{dense: {features: 17, kernel_init: GLOROT_UNIFORM}}, {gelu: {}},"
                 "{dense: {features: 7, kernel_init: LECUN_NORMAL}}]}\n"
                 "optimizer: {chain: [{clip_by_global_norm: {max_norm: 1.0}},"
                 "{adamw: {learning_rate: {constant: 0.003}}}]}\n",
                 24, 0);
  check_training("tanh + exact gelu + sigmoid, mse, nesterov sgd",
                 "model: {input_shape: [3, 5], loss: MEAN_SQUARED_ERROR, layers: ["
                 "{tanh: {}}, {dense: {features: 19, kernel_init: GLOROT_NORMAL}},"
                 "{gelu: {approximate: false}}, {dense: {features: 8, use_bias: false}},"
                 "{sigmoid: {}}, {dense: {features: 5, kernel_init: HE_UNIFORM}}]}\n"
                 "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.05}, momentum: 0.9,"
                 " nesterov: true}}]}\n",
                 31, 0);
  for (size_t m = 0; m < sizeof cnn_models / sizeof *cnn_models && G->conv_create; m++)
    for (int record = 0; record < 2; record++)
      check_training(cnn_models[m][0], cnn_models[m][1], 16, record);
  if (!G->conv_create)
    check_cnn_refused();
  check_fault(argv[0]);

  td_backend_destroy(gpu);
  td_backend_destroy(cpu);
  return td_check_exit();
}
