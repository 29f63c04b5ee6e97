// Candidate single-threaded SGEMMs for the CPU backend, timed on the GEMMs
// of the dense layers of the race MLPs (float32, row-major).
//
// The CPU backend (kernels/cpu/cpu_backend.c, cpu_gemm) cuts C into tiles
// along the larger of M and N, tile edges on multiples of 16, and runs one
// single-threaded sgemm per tile on its pool of threads. So each candidate
// is timed two ways on every shape:
//   whole   one call for all of C on one thread;
//   2tiles  C cut in two as cpu_gemm would cut it, one tile on each of two
//           threads that start together (a spinning barrier) and finish
//           together (the same barrier); thread 0 times from the first
//           barrier to the second.
// The backend promises bitwise equal results at any thread count, so C from
// 2tiles must equal C from whole bit for bit; with --check, C computed as
// tiles of 16 rows (or columns) one after the other must too, and C is
// compared with a float64 reference (max |c - ref| / max |ref|).
//
// Shapes: for a layer d_in -> d_out at batch B, forward y = x W is
// (B, d_out, d_in) NN, the input gradient dx = dy W^T is (B, d_in, d_out)
// NT (not computed for a model's first layer), the weight gradient
// dW = x^T dy is (d_in, d_out, B) TN, each as (M, N, K) of
// C (M, N) = op(A) op(B). A step row lists the GEMMs of one training step
// with how often each occurs (--list prints both).
//
// Candidates (all single-threaded):
//   openblas  OpenBLAS cblas_sgemm, openblas_set_num_threads(1).
//   blis      BLIS bli_sgemm with explicit row and column strides,
//             bli_thread_set_num_threads(1).
//   dnnl      oneDNN dnnl_sgemm (row-major), omp_set_num_threads(1) on every
//             calling thread.
//   xsmm      libxsmm 1.17, column-major: C^T = op(B)^T op(A)^T. A kernel is
//             JIT-dispatched (libxsmm_smmdispatch) for each call's shape; where
//             libxsmm has none (it generates no kernel that transposes its A,
//             which is the row-major NT case), the call goes to libxsmm_sgemm,
//             which hands calls with M*N*K above 64^3 or a transposed A to the
//             BLAS. Those BLAS calls are counted (see libxsmm_original_sgemm
//             below) and reported as impl=libxsmm_sgemm->blas(LIBRARY).
//
// One process runs the candidates named by --cand; bench/gemm_kernels.sh
// runs one process per candidate, rotating their order over rounds, and
// takes the medians over rounds.

#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <blis.h>
#include <dnnl.h>
#include <libxsmm.h>

// OpenBLAS's own entry points; its cblas_sgemm has the prototype that blis.h
// already declares, and the link order makes the call resolve to OpenBLAS
// (checked at run time with dladdr, printed by --env).
int openblas_set_num_threads(int n);
char *openblas_get_config(void);

#define TILE_ALIGN 16 // cpu_gemm's GEMM_ALIGN
#define MAX_SHAPES 64
#define MAX_STEP_ITEMS 256

// ---------------------------------------------------------------- helpers

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "gemm_kernels: %s\n", what);
  exit(2);
}

static float *falloc(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 64, n * sizeof(float) + 64) != 0)
    die("out of memory");
  return p;
}

static void fill_nan(float *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    p[i] = NAN;
}

static uint64_t rng_state;
static float urand(void) { // uniform in [-1, 1), splitmix64
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float)((double)(z >> 40) / (double)(1ull << 23) - 1.0);
}

static uint64_t fnv(const float *p, size_t n) {
  const unsigned char *b = (const unsigned char *)p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n * sizeof(float); i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static const char *lib_of(void *sym) {
  Dl_info info;
  if (sym && dladdr(sym, &info) && info.dli_fname) {
    const char *s = strrchr(info.dli_fname, '/');
    return s ? s + 1 : info.dli_fname;
  }
  return "?";
}

// ------------------------------------------------------ shapes and steps

// C (m, n) = op(A) op(B), row-major; A is (m, k) or, transposed, (k, m).
typedef struct {
  char name[40]; // "b128 784x256 fwd"
  int m, n, k, ta, tb;
} shape;

// One GEMM of a step row, `count` times per step.
typedef struct {
  const char *row;
  int shape, count;
} step_item;

typedef struct {
  int d_in, d_out, count;
} layer;

// The race MLPs (bench/race/*.yaml): the reference program at three
// batches, the wide MLP and the deep one (784, eight hidden layers of 128,
// 10), all of whose 128x10 GEMMs at batch 128 are the reference's.
static const struct {
  const char *row;
  int batch, nlayers;
  layer layers[3];
} models[] = {
    {"ref_b32", 32, 3, {{784, 256, 1}, {256, 128, 1}, {128, 10, 1}}},
    {"ref_b128", 128, 3, {{784, 256, 1}, {256, 128, 1}, {128, 10, 1}}},
    {"ref_b1024", 1024, 3, {{784, 256, 1}, {256, 128, 1}, {128, 10, 1}}},
    {"wide", 128, 3, {{784, 2048, 1}, {2048, 2048, 1}, {2048, 10, 1}}},
    {"deep", 128, 3, {{784, 128, 1}, {128, 128, 7}, {128, 10, 1}}},
};

static shape shapes[MAX_SHAPES];
static int nshapes;
static step_item steps[MAX_STEP_ITEMS];
static int nsteps;

static int add_shape(int batch, int d_in, int d_out, const char *kind, int m, int n, int k, int ta,
                     int tb) {
  char name[40];
  snprintf(name, sizeof name, "b%d %dx%d %s", batch, d_in, d_out, kind);
  for (int i = 0; i < nshapes; i++)
    if (!strcmp(shapes[i].name, name))
      return i;
  if (nshapes == MAX_SHAPES)
    die("too many shapes");
  shape *s = &shapes[nshapes];
  memcpy(s->name, name, sizeof name);
  s->m = m, s->n = n, s->k = k, s->ta = ta, s->tb = tb;
  return nshapes++;
}

static void add_step(const char *row, int shape_id, int count) {
  if (nsteps == MAX_STEP_ITEMS)
    die("too many step items");
  steps[nsteps++] = (step_item){row, shape_id, count};
}

static void build_shapes(void) {
  for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
    int bsz = models[i].batch;
    for (int l = 0; l < models[i].nlayers; l++) {
      const layer *y = &models[i].layers[l];
      int fwd = add_shape(bsz, y->d_in, y->d_out, "fwd", bsz, y->d_out, y->d_in, 0, 0);
      add_step(models[i].row, fwd, y->count);
      if (l > 0) {
        int dx = add_shape(bsz, y->d_in, y->d_out, "dx", bsz, y->d_in, y->d_out, 0, 1);
        add_step(models[i].row, dx, y->count);
      }
      int dw = add_shape(bsz, y->d_in, y->d_out, "dw", y->d_in, y->d_out, bsz, 1, 0);
      add_step(models[i].row, dw, y->count);
    }
  }
}

// ------------------------------------------------------------ candidates

typedef enum { C_OPENBLAS, C_BLIS, C_DNNL, C_XSMM, C_COUNT } cand_kind;
static const char *cand_names[C_COUNT] = {"openblas", "blis", "dnnl", "xsmm"};

// libxsmm_sgemm reaches the BLAS through libxsmm_original_sgemm(), a weak
// symbol of libxsmm.a; this definition replaces it so that every call
// libxsmm hands to the BLAS is counted before it goes on to the sgemm_ the
// dynamic linker finds (OpenBLAS's: the link has no libxsmmnoblas).
typedef void (*blas_sgemm_fn)(const char *, const char *, const libxsmm_blasint *,
                              const libxsmm_blasint *, const libxsmm_blasint *, const float *,
                              const float *, const libxsmm_blasint *, const float *,
                              const libxsmm_blasint *, const float *, float *,
                              const libxsmm_blasint *);
static blas_sgemm_fn blas_sgemm;

// How the xsmm candidate ran its calls: counted per thread (so the two tile
// threads share no cache line while timed), summed by xsmm_flush.
static _Thread_local long xsmm_jit_local, xsmm_sgemm_local, xsmm_blas_local;
static _Atomic long xsmm_jit_calls, xsmm_sgemm_calls, xsmm_blas_calls;

static void xsmm_flush(void) {
  atomic_fetch_add(&xsmm_jit_calls, xsmm_jit_local);
  atomic_fetch_add(&xsmm_sgemm_calls, xsmm_sgemm_local);
  atomic_fetch_add(&xsmm_blas_calls, xsmm_blas_local);
  xsmm_jit_local = xsmm_sgemm_local = xsmm_blas_local = 0;
}

static void counting_sgemm(const char *ta, const char *tb, const libxsmm_blasint *m,
                           const libxsmm_blasint *n, const libxsmm_blasint *k, const float *alpha,
                           const float *a, const libxsmm_blasint *lda, const float *b,
                           const libxsmm_blasint *ldb, const float *beta, float *c,
                           const libxsmm_blasint *ldc) {
  xsmm_blas_local++;
  blas_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

libxsmm_sgemm_function libxsmm_original_sgemm(void) {
  return (libxsmm_sgemm_function)counting_sgemm;
}

static void xsmm_gemm(int ta, int tb, int m, int n, int k, const float *a, int lda, const float *b,
                      int ldb, float *c, int ldc) {
  // Column-major C^T (n, m) = op(B)^T (n, k) op(A)^T (k, m): the row-major
  // buffers of B and A are libxsmm's A and B with the same transpose flags.
  const float alpha = 1.0f, beta = 0.0f;
  libxsmm_blasint xm = n, xn = m, xk = k, xlda = ldb, xldb = lda, xldc = ldc;
  int flags = (tb ? LIBXSMM_GEMM_FLAG_TRANS_A : 0) | (ta ? LIBXSMM_GEMM_FLAG_TRANS_B : 0);
  libxsmm_smmfunction f =
      libxsmm_smmdispatch(xm, xn, xk, &xlda, &xldb, &xldc, &alpha, &beta, &flags, NULL);
  if (f) {
    xsmm_jit_local++;
    f(b, a, c);
    return;
  }
  xsmm_sgemm_local++;
  char xta = tb ? 'T' : 'N', xtb = ta ? 'T' : 'N';
  libxsmm_sgemm(&xta, &xtb, &xm, &xn, &xk, &alpha, b, &xlda, a, &xldb, &beta, c, &xldc);
}

// Row-major C (m, n) = op(A) op(B), alpha 1, beta 0, on the calling thread.
static void cand_gemm(cand_kind cand, int ta, int tb, int m, int n, int k, const float *a, int lda,
                      const float *b, int ldb, float *c, int ldc) {
  switch (cand) {
  case C_OPENBLAS:
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
                k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
    break;
  case C_BLIS: {
    float one = 1.0f, zero = 0.0f;
    // Explicit row and column strides: row-major needs no flip.
    bli_sgemm(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m,
              n, k, &one, (float *)a, lda, 1, (float *)b, ldb, 1, &zero, c, ldc, 1);
    break;
  }
  case C_DNNL: {
    dnnl_status_t st =
        dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
    if (st != dnnl_success) {
      fprintf(stderr, "gemm_kernels: dnnl_sgemm failed: status %d\n", (int)st);
      exit(2);
    }
    break;
  }
  case C_XSMM:
    xsmm_gemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
    break;
  default:
    die("unknown candidate");
  }
}

// ------------------------------------------------------- one GEMM's data

// The operands of one shape (owned here) and how cpu_gemm would cut it.
typedef struct {
  const shape *s;
  int lda, ldb, ldc;
  float *a, *b;      // op(A) (m, k), op(B) (k, n) as stored
  float *c_whole;    // (m, n): the first whole run's C
  float *c;          // (m, n): scratch C for the other runs
  int along_n, tile; // tiles of `tile` columns (along_n) or rows
} gemm_data;

static size_t a_elems(const shape *s) { return (size_t)s->m * s->k; }
static size_t b_elems(const shape *s) { return (size_t)s->k * s->n; }
static size_t c_elems(const shape *s) { return (size_t)s->m * s->n; }

// Inputs from a seed per shape, so every candidate and process sees the
// same numbers: activations x in [0, 1) as after a ReLU, weights in
// [-1, 1) / sqrt(d_in), gradients dy in [-1e-3, 1e-3).
static void gemm_data_init(gemm_data *g, const shape *s, int shape_id) {
  g->s = s;
  g->lda = s->ta ? s->m : s->k;
  g->ldb = s->tb ? s->k : s->n;
  g->ldc = s->n;
  g->a = falloc(a_elems(s));
  g->b = falloc(b_elems(s));
  g->c_whole = falloc(c_elems(s));
  g->c = falloc(c_elems(s));
  rng_state = 0x243f6a8885a308d3ull * (uint64_t)(shape_id + 1);
  // A is x (fwd, dw) or dy (dx); B is W (fwd, dx) or dy (dw).
  for (size_t i = 0; i < a_elems(s); i++)
    g->a[i] = s->tb ? 1e-3f * urand() : 0.5f * (urand() + 1.0f);
  float scale = s->ta ? 1e-3f : 1.0f / sqrtf((float)(s->tb ? s->n : s->k));
  for (size_t i = 0; i < b_elems(s); i++)
    g->b[i] = scale * urand();
  fill_nan(g->c_whole, c_elems(s));
  fill_nan(g->c, c_elems(s));
  // cpu_gemm's cut into two tiles: along the larger of M and N, the first
  // tile's edge rounded up to a multiple of 16.
  g->along_n = s->n >= s->m;
  int dim = g->along_n ? s->n : s->m;
  int tile = (dim + 1) / 2;
  g->tile = (tile + TILE_ALIGN - 1) / TILE_ALIGN * TILE_ALIGN;
}

static void gemm_data_free(gemm_data *g) {
  free(g->a);
  free(g->b);
  free(g->c_whole);
  free(g->c);
}

// Runs the part of C from `lo` of width `span` along the cut axis.
static void run_part(cand_kind cand, const gemm_data *g, float *c, int lo, int span) {
  const shape *s = g->s;
  const float *a = g->a, *b = g->b;
  int m = s->m, n = s->n;
  if (g->along_n) {
    b += s->tb ? (size_t)lo * g->ldb : (size_t)lo;
    c += lo;
    n = span;
  } else {
    a += s->ta ? (size_t)lo : (size_t)lo * g->lda;
    c += (size_t)lo * g->ldc;
    m = span;
  }
  cand_gemm(cand, s->ta, s->tb, m, n, s->k, a, g->lda, b, g->ldb, c, g->ldc);
}

static int cut_dim(const gemm_data *g) { return g->along_n ? g->s->n : g->s->m; }

// Runs C as consecutive parts of `width` along the cut axis, one thread.
static void run_parts(cand_kind cand, const gemm_data *g, float *c, int width) {
  int dim = cut_dim(g);
  for (int lo = 0; lo < dim; lo += width)
    run_part(cand, g, c, lo, dim - lo < width ? dim - lo : width);
}

// ------------------------------------------------ two threads, two tiles

// A barrier for the two tile threads: spins (the threads wait microseconds)
// and yields after a while, for a machine where others run too.
typedef struct {
  _Atomic int arrived;
  _Atomic int gen;
} spin_barrier;

static void barrier_wait(spin_barrier *b) {
  int g = atomic_load(&b->gen);
  if (atomic_fetch_add(&b->arrived, 1) == 1) {
    atomic_store(&b->arrived, 0);
    atomic_fetch_add(&b->gen, 1);
    return;
  }
  for (long spins = 0; atomic_load(&b->gen) == g; spins++) {
    if (spins < 20000)
      __builtin_ia32_pause();
    else
      sched_yield();
  }
}

typedef struct {
  cand_kind cand;
  const gemm_data *g;
  int warmup, reps;
  spin_barrier bar;
  double *times; // (reps), thread 0's
} tiled_run;

typedef struct {
  tiled_run *r;
  int id;
} tiled_thread;

static void *tiled_main(void *arg) {
  tiled_thread *t = arg;
  tiled_run *r = t->r;
  omp_set_num_threads(1); // oneDNN reads this thread's OpenMP setting
  int dim = cut_dim(r->g);
  int lo = t->id * r->g->tile;
  int span = t->id == 0 ? r->g->tile : dim - r->g->tile;
  for (int it = -r->warmup; it < r->reps; it++) {
    barrier_wait(&r->bar);
    double s = now_sec();
    run_part(r->cand, r->g, r->g->c, lo, span);
    barrier_wait(&r->bar);
    if (t->id == 0 && it >= 0)
      r->times[it] = now_sec() - s;
  }
  xsmm_flush();
  return NULL;
}

static void run_tiled(tiled_run *r) {
  pthread_t th[2];
  tiled_thread ts[2] = {{r, 0}, {r, 1}};
  atomic_store(&r->bar.arrived, 0);
  atomic_store(&r->bar.gen, 0);
  for (int i = 0; i < 2; i++)
    if (pthread_create(&th[i], NULL, tiled_main, &ts[i]) != 0)
      die("pthread_create failed");
  for (int i = 0; i < 2; i++)
    pthread_join(th[i], NULL);
}

// ---------------------------------------------------------- float64 check

// max |c - ref| / max |ref| (infinite where c has a NaN: an element the
// candidate did not write).
static double rel_error(const float *c, const double *ref, size_t n) {
  double emax = 0, rmax = 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan(c[i]))
      return INFINITY;
    double e = fabs((double)c[i] - ref[i]);
    if (e > emax)
      emax = e;
    if (fabs(ref[i]) > rmax)
      rmax = fabs(ref[i]);
  }
  return rmax > 0 ? emax / rmax : emax;
}

// ref (m, n) = op(A) op(B) in float64, from copies of op(A) and op(B)^T
// laid out (m, k) and (n, k) so that every dot product reads contiguously.
static double *reference(const gemm_data *g) {
  const shape *s = g->s;
  size_t m = (size_t)s->m, n = (size_t)s->n, k = (size_t)s->k;
  double *at = malloc(m * k * sizeof(double)), *bt = malloc(n * k * sizeof(double));
  double *ref = malloc(m * n * sizeof(double));
  if (!at || !bt || !ref)
    die("out of memory");
  for (size_t i = 0; i < m; i++)
    for (size_t p = 0; p < k; p++)
      at[i * k + p] = s->ta ? g->a[p * (size_t)g->lda + i] : g->a[i * (size_t)g->lda + p];
  for (size_t j = 0; j < n; j++)
    for (size_t p = 0; p < k; p++)
      bt[j * k + p] = s->tb ? g->b[j * (size_t)g->ldb + p] : g->b[p * (size_t)g->ldb + j];
  for (size_t i = 0; i < m; i++)
    for (size_t j = 0; j < n; j++) {
      const double *x = at + i * k, *y = bt + j * k;
      double acc = 0;
      for (size_t p = 0; p < k; p++)
        acc += x[p] * y[p];
      ref[i * n + j] = acc;
    }
  free(at);
  free(bt);
  return ref;
}

// ------------------------------------------------------------------ driver

typedef struct {
  int warmup, iters, max_iters, check;
  double min_sec;
} bench_opts;

static void xsmm_reset(void) {
  xsmm_jit_local = xsmm_sgemm_local = xsmm_blas_local = 0;
  atomic_store(&xsmm_jit_calls, 0);
  atomic_store(&xsmm_sgemm_calls, 0);
  atomic_store(&xsmm_blas_calls, 0);
}

// What the xsmm candidate did for the calls since xsmm_reset.
static void xsmm_impl(char *out, size_t size) {
  xsmm_flush();
  long jit = atomic_load(&xsmm_jit_calls), sg = atomic_load(&xsmm_sgemm_calls);
  long blas = atomic_load(&xsmm_blas_calls);
  if (sg == 0)
    snprintf(out, size, "jit");
  else if (blas >= sg)
    snprintf(out, size, "libxsmm_sgemm->blas(%s)%s", lib_of((void *)blas_sgemm), jit ? "+jit" : "");
  else
    snprintf(out, size, "libxsmm_sgemm(jit_calls=%ld,sgemm_calls=%ld,blas_calls=%ld)", jit, sg,
             blas);
}

static void impl_of(cand_kind cand, char *out, size_t size) {
  if (cand == C_XSMM)
    xsmm_impl(out, size);
  else
    snprintf(out, size, "%s",
             cand == C_OPENBLAS ? lib_of((void *)cblas_sgemm)
             : cand == C_BLIS   ? lib_of((void *)bli_sgemm)
                                : lib_of((void *)dnnl_sgemm));
}

static void print_result(const gemm_data *g, cand_kind cand, const char *mode, double med,
                         double mn, int reps, const char *bitwise, double err, const char *impl) {
  const shape *s = g->s;
  double flops = 2.0 * s->m * s->n * (double)s->k;
  int dim = cut_dim(g);
  char spans[48];
  if (!strcmp(mode, "whole"))
    snprintf(spans, sizeof spans, "%d", dim);
  else
    snprintf(spans, sizeof spans, "%d+%d", g->tile, dim - g->tile);
  printf("result shape=\"%s\" cand=%s mode=%s m=%d n=%d k=%d op=%c%c median_us=%.2f min_us=%.2f "
         "gflops=%.2f reps=%d cut=%s spans=%s bitwise=%s hash=%016llx relerr=%.3g impl=%s\n",
         s->name, cand_names[cand], mode, s->m, s->n, s->k, s->ta ? 'T' : 'N', s->tb ? 'T' : 'N',
         1e6 * med, 1e6 * mn, 1e-9 * flops / med, reps, g->along_n ? "n" : "m", spans, bitwise,
         (unsigned long long)fnv(!strcmp(mode, "whole") ? g->c_whole : g->c, c_elems(s)), err,
         impl);
}

// Times one candidate on one shape, whole and as 2 tiles on 2 threads, and
// prints a result line for each mode (plus, with check, a tiles16 line).
static void bench_shape(cand_kind cand, const gemm_data *g, const double *ref,
                        const bench_opts *o) {
  const shape *s = g->s;
  size_t cn = c_elems(s);
  char impl[160];

  // Whole: the first run's C is the one every other run must equal.
  xsmm_reset();
  cand_gemm(cand, s->ta, s->tb, s->m, s->n, s->k, g->a, g->lda, g->b, g->ldb, g->c_whole, g->ldc);
  double est = 1e9;
  for (int i = 0; i < o->warmup; i++) {
    double t0 = now_sec();
    cand_gemm(cand, s->ta, s->tb, s->m, s->n, s->k, g->a, g->lda, g->b, g->ldb, g->c, g->ldc);
    double e = now_sec() - t0;
    if (e < est)
      est = e;
  }
  int reps = o->iters;
  if (est > 0 && est < 1e9 && o->min_sec / est > reps)
    reps = (int)(o->min_sec / est);
  if (reps > o->max_iters)
    reps = o->max_iters;
  double *t = malloc((size_t)reps * sizeof(double));
  if (!t)
    die("out of memory");
  fill_nan(g->c, cn);
  for (int it = 0; it < reps; it++) {
    double t0 = now_sec();
    cand_gemm(cand, s->ta, s->tb, s->m, s->n, s->k, g->a, g->lda, g->b, g->ldb, g->c, g->ldc);
    t[it] = now_sec() - t0;
  }
  int same = memcmp(g->c, g->c_whole, cn * sizeof(float)) == 0;
  double err = ref ? rel_error(g->c_whole, ref, cn) : -1;
  impl_of(cand, impl, sizeof impl);
  double med = median(t, reps);
  print_result(g, cand, "whole", med, t[0], reps, same ? "yes" : "NO", err, impl);

  // Two tiles on two threads at once; the same number of timed runs.
  xsmm_reset();
  fill_nan(g->c, cn);
  tiled_run r = {.cand = cand, .g = g, .warmup = o->warmup, .reps = reps, .times = t};
  run_tiled(&r);
  same = memcmp(g->c, g->c_whole, cn * sizeof(float)) == 0;
  err = ref ? rel_error(g->c, ref, cn) : -1;
  impl_of(cand, impl, sizeof impl);
  med = median(t, reps);
  print_result(g, cand, "2tiles", med, t[0], reps, same ? "yes" : "NO", err, impl);

  if (o->check) {
    // Tiles of 16 one after the other: every tile edge cpu_gemm may use.
    xsmm_reset();
    fill_nan(g->c, cn);
    run_parts(cand, g, g->c, TILE_ALIGN);
    same = memcmp(g->c, g->c_whole, cn * sizeof(float)) == 0;
    impl_of(cand, impl, sizeof impl);
    printf("tiles16 shape=\"%s\" cand=%s cut=%s bitwise=%s relerr=%.3g impl=%s\n", s->name,
           cand_names[cand], g->along_n ? "n" : "m", same ? "yes" : "NO",
           ref ? rel_error(g->c, ref, cn) : -1, impl);
  }
  free(t);
}

static void print_env(void) {
  const dnnl_version_t *v = dnnl_version();
  printf("env onednn=%d.%d.%d cpu_runtime=%u isa=0x%x\n", v->major, v->minor, v->patch,
         v->cpu_runtime, (unsigned)dnnl_get_effective_cpu_isa());
  printf("env openblas=\"%s\"\n", openblas_get_config());
  printf("env blis=%s arch=%s\n", bli_info_get_version_str(), bli_arch_string(bli_arch_query_id()));
  printf("env libxsmm=%s target=%s\n", LIBXSMM_VERSION, libxsmm_get_target_arch());
  printf("env symbol cblas_sgemm=%s bli_sgemm=%s dnnl_sgemm=%s xsmm_blas_sgemm_=%s\n",
         lib_of((void *)cblas_sgemm), lib_of((void *)bli_sgemm), lib_of((void *)dnnl_sgemm),
         lib_of((void *)blas_sgemm));
}

static void print_list(void) {
  for (int i = 0; i < nshapes; i++)
    printf("shape name=\"%s\" m=%d n=%d k=%d op=%c%c mflop=%.3f\n", shapes[i].name, shapes[i].m,
           shapes[i].n, shapes[i].k, shapes[i].ta ? 'T' : 'N', shapes[i].tb ? 'T' : 'N',
           2e-6 * shapes[i].m * shapes[i].n * (double)shapes[i].k);
  for (int i = 0; i < nsteps; i++)
    printf("step row=%s shape=\"%s\" count=%d\n", steps[i].row, shapes[steps[i].shape].name,
           steps[i].count);
}

static void usage(void) {
  die("usage: gemm_kernels [--cand openblas,blis,dnnl,xsmm|all] [--iters N] [--warmup N] "
      "[--min-ms MS] [--max-iters N] [--shape SUBSTRING] [--check] [--env] [--list]");
}

int main(int argc, char **argv) {
  bench_opts o = {.warmup = 3, .iters = 11, .max_iters = 2000, .check = 0, .min_sec = 0.025};
  int env = 0, list = 0, want[C_COUNT] = {0}, any = 0;
  const char *filter = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--check")) {
      o.check = 1;
      continue;
    }
    if (!strcmp(a, "--env")) {
      env = 1;
      continue;
    }
    if (!strcmp(a, "--list")) {
      list = 1;
      continue;
    }
    if (i + 1 >= argc)
      usage();
    const char *v = argv[++i];
    if (!strcmp(a, "--cand")) {
      char buf[128];
      snprintf(buf, sizeof buf, "%s", v);
      for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int found = 0;
        for (int c = 0; c < C_COUNT; c++)
          if (!strcmp(tok, "all") || !strcmp(tok, cand_names[c]))
            want[c] = found = 1;
        if (!found)
          die("unknown --cand; use openblas, blis, dnnl, xsmm or all (comma-separated)");
      }
      any = 1;
    } else if (!strcmp(a, "--iters")) {
      o.iters = atoi(v);
    } else if (!strcmp(a, "--warmup")) {
      o.warmup = atoi(v);
    } else if (!strcmp(a, "--min-ms")) {
      o.min_sec = 1e-3 * atof(v);
    } else if (!strcmp(a, "--max-iters")) {
      o.max_iters = atoi(v);
    } else if (!strcmp(a, "--shape")) {
      filter = v;
    } else {
      usage();
    }
  }
  if (o.iters < 1 || o.warmup < 0 || o.max_iters < o.iters || o.min_sec < 0)
    die("--iters must be positive, --warmup not negative, --max-iters at least --iters");

  build_shapes();
  if (list) {
    print_list();
    return 0;
  }
  // Single-threaded everywhere: the backend's own threads run the tiles.
  omp_set_num_threads(1);
  openblas_set_num_threads(1);
  bli_thread_set_num_threads(1);
  libxsmm_init();
  blas_sgemm = (blas_sgemm_fn)dlsym(RTLD_DEFAULT, "sgemm_");
  if (!blas_sgemm)
    die("no sgemm_ for libxsmm's BLAS fallback");
  if (env)
    print_env();
  if (!any) {
    if (env)
      return 0;
    usage();
  }

  for (int i = 0; i < nshapes; i++) {
    if (filter && !strstr(shapes[i].name, filter))
      continue;
    gemm_data g;
    gemm_data_init(&g, &shapes[i], i);
    double *ref = o.check ? reference(&g) : NULL;
    for (int c = 0; c < C_COUNT; c++)
      if (want[c])
        bench_shape((cand_kind)c, &g, ref, &o);
    free(ref);
    gemm_data_free(&g);
  }
  libxsmm_finalize();
  return 0;
}
