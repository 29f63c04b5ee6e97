/* The job footprint against what the engine really allocates: trainers on a
 * counting backend (the CPU backend's ops, with alloc and release counted,
 * and host_memory 0 so that the engine takes the path of a GPU: uploaded
 * copies, cudaMalloc's 256-byte granules) must hold exactly the bytes
 * td_job_footprint predicts, per replica, at their peak. CPU jobs' host
 * memory against a counting allocator (malloc and friends replaced in this
 * program): the heap's peak over a job's life as the daemon's worker lives
 * it (load, init, a checkpoint, a stop, a resume, checkpoints to the end)
 * stays within the footprint, and within its margin of it. Also the
 * refusals td_footprint_fits and td_footprint_admit write, the memory
 * limit read from cgroup and /proc files, the size limits of a model, and
 * the header-only shape readers against the loaders. MNIST
 * (TRAIND_DATA_DIR) for the IDX jobs; an HDF5 set written here for the
 * rest. */
#include <hdf5.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "checkpoint.h"
#include "clock.h"
#include "data.h"
#include "footprint.h"
#include "jobspec.h"
#include "pbjson.h"
#include "prng.h"
#include "saver.h"
#include "train.h"

static char tmp[256];

/* ---- the counting allocator ----------------------------------------------- */

/* Every heap allocation of the process goes through these (ELF
 * interposition over glibc's, which they call), counted by the usable size
 * glibc gives each block; the peak of the live bytes is what a job's host
 * footprint bounds. Not under a sanitizer, which replaces malloc itself. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define COUNT_HEAP 0
#else
#define COUNT_HEAP 1
void *__libc_malloc(size_t);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);
void __libc_free(void *);

static atomic_size_t heap_cur, heap_peak;

static void *heap_add(void *p) {
  if (p) {
    size_t now = atomic_fetch_add(&heap_cur, malloc_usable_size(p)) + malloc_usable_size(p);
    size_t peak = atomic_load(&heap_peak);
    while (now > peak && !atomic_compare_exchange_weak(&heap_peak, &peak, now))
      ;
  }
  return p;
}

static void heap_sub(void *p) {
  if (p)
    atomic_fetch_sub(&heap_cur, malloc_usable_size(p));
}

void *malloc(size_t n) { return heap_add(__libc_malloc(n)); }
void *calloc(size_t n, size_t m) { return heap_add(__libc_calloc(n, m)); }
void free(void *p) {
  heap_sub(p);
  __libc_free(p);
}
void *realloc(void *p, size_t n) {
  if (!p)
    return malloc(n);
  if (!n) {
    free(p);
    return NULL;
  }
  size_t old = malloc_usable_size(p);
  void *q = __libc_realloc(p, n);
  if (q) {
    atomic_fetch_sub(&heap_cur, old);
    heap_add(q);
  }
  return q;
}
void *reallocarray(void *p, size_t n, size_t m) {
  if (m && n > SIZE_MAX / m)
    return NULL;
  return realloc(p, n * m);
}
void *memalign(size_t a, size_t n) { return heap_add(__libc_memalign(a, n)); }
void *aligned_alloc(size_t a, size_t n) { return heap_add(__libc_memalign(a, n)); }
int posix_memalign(void **out, size_t a, size_t n) {
  void *p = heap_add(__libc_memalign(a, n));
  if (!p)
    return 12; /* ENOMEM */
  *out = p;
  return 0;
}
void *valloc(size_t n) { return heap_add(__libc_memalign(4096, n)); }
void *pvalloc(size_t n) { return heap_add(__libc_memalign(4096, (n + 4095) & ~(size_t)4095)); }
#endif

/* Starts a new peak at the live bytes now; returns them. */
static size_t heap_mark(void) {
#if COUNT_HEAP
  size_t now = atomic_load(&heap_cur);
  atomic_store(&heap_peak, now);
  return now;
#else
  return 0;
#endif
}

static size_t heap_peak_now(void) {
#if COUNT_HEAP
  return atomic_load(&heap_peak);
#else
  return 0;
#endif
}

static const char *at(const char *rel) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, 512, "%s/%s", tmp, rel);
  return b;
}

/* ---- the counting backend ------------------------------------------------ */

enum { MAX_LIVE = 64, MAX_REPLICAS = 4 };

/* The CPU backend with its allocations counted. `be` comes first, so the
 * ops' td_backend pointer is the counter's; the CPU ops use nothing of it
 * but what is copied from the CPU backend. Allocations are counted as the
 * CUDA backend takes them (whole 256-byte granules, an empty one as one)
 * when host_memory is 0, as asked otherwise. */
typedef struct counting {
  td_backend be;
  td_backend *cpu;
  td_backend_ops ops;
  pthread_mutex_t mu;
  size_t cur, peak;
  int n_live;
  struct {
    void *p;
    size_t bytes;
  } live[MAX_LIVE];
} counting;

static counting *replica[MAX_REPLICAS]; /* the counters of the last trainer */

static size_t counted(const counting *c, size_t bytes) {
  if (c->be.host_memory)
    return bytes;
  return bytes ? (bytes + 255) / 256 * 256 : 256;
}

static void *count_alloc(td_backend *be, size_t bytes) {
  counting *c = (counting *)be;
  void *p = c->cpu->ops->alloc(c->cpu, bytes);
  if (!p)
    return NULL;
  pthread_mutex_lock(&c->mu);
  CHECK(c->n_live < MAX_LIVE, "more than %d live allocations", MAX_LIVE);
  if (c->n_live < MAX_LIVE) {
    c->live[c->n_live].p = p;
    c->live[c->n_live++].bytes = counted(c, bytes);
    c->cur += counted(c, bytes);
    if (c->cur > c->peak)
      c->peak = c->cur;
  }
  pthread_mutex_unlock(&c->mu);
  return p;
}

static void count_release(td_backend *be, void *p) {
  counting *c = (counting *)be;
  if (!p)
    return;
  pthread_mutex_lock(&c->mu);
  int found = 0;
  for (int i = 0; i < c->n_live && !found; i++)
    if (c->live[i].p == p) {
      c->cur -= c->live[i].bytes;
      c->live[i] = c->live[--c->n_live];
      found = 1;
    }
  CHECK(found, "release of a pointer the backend did not allocate");
  pthread_mutex_unlock(&c->mu);
  c->cpu->ops->release(c->cpu, p);
}

static void count_destroy(td_backend *be) {
  counting *c = (counting *)be;
  for (int r = 0; r < MAX_REPLICAS; r++)
    if (replica[r] == c)
      replica[r] = NULL;
  td_backend_destroy(c->cpu);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

/* The factory: arg points at host_memory for the replicas' backends. */
static int counting_backend(void *arg, int rank, int threads, td_backend **out, td_error *err) {
  counting *c = calloc(1, sizeof *c);
  if (!c)
    return td_errorf(err, TD_ENOMEM, "out of memory");
  int rc = td_cpu_backend_create(&c->cpu, threads, err);
  if (rc) {
    free(c);
    return rc;
  }
  pthread_mutex_init(&c->mu, NULL);
  c->ops = *c->cpu->ops;
  c->ops.name = "counting";
  c->ops.alloc = count_alloc;
  c->ops.release = count_release;
  c->ops.destroy = count_destroy;
  c->be.ops = &c->ops;
  c->be.ctx = c->cpu->ctx;
  c->be.threads = c->cpu->threads;
  c->be.host_memory = *(const int *)arg;
  if (rank < MAX_REPLICAS)
    replica[rank] = c;
  *out = &c->be;
  return TD_OK;
}

/* The in-process communicator also for backends that say their memory is
 * not the host's (it is). */
static int host_comm(void *arg, int n, td_backend *const *bes, td_comm **out, td_error *err) {
  (void)arg;
  (void)bes;
  return td_comm_cpu_create(out, n, err);
}

/* ---- (a) the footprint against the counted peak ---------------------------- */

static const char *roots[2];
static size_t n_roots;

/* Builds a trainer for the job on counting backends, runs it to its end
 * (every epoch with its evaluation), resumes it from a checkpoint of its
 * end, and compares every replica's counted bytes with the footprint. */
static void check_job(const char *label, const char *doc, int host_memory) {
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  CHECK(rc == 0, "%s: %s", label, err.msg);
  if (rc)
    return;
  td_trainer_opts o = {.data_roots = roots,
                       .n_data_roots = n_roots,
                       .threads = 2,
                       .backend = counting_backend,
                       .backend_arg = &host_memory,
                       .comm = host_comm};
  td_footprint f;
  rc = td_job_footprint(spec, &o, &f, &err);
  CHECK(rc == 0, "%s: footprint: %s", label, err.msg);
  td_trainer t;
  int trc = rc ? -1 : td_trainer_init(&t, spec, &o, &err);
  CHECK(trc == 0, "%s: trainer: %s", label, err.msg);
  if (rc || trc) {
    td_jobspec_free(spec);
    return;
  }
  const int n = t.n_rep;
  CHECK(f.replicas == n && f.shard == t.shard && f.train_n == t.train.n && f.test_n == t.test.n &&
            f.train_dim == t.train.dim && f.steps_per_epoch == t.steps_per_epoch,
        "%s: footprint sizes %d x %u rows, %u/%u examples, %u steps; the trainer's %d x %u, "
        "%u/%u, %u",
        label, f.replicas, f.shard, f.train_n, f.test_n, f.steps_per_epoch, n, t.shard, t.train.n,
        t.test.n, t.steps_per_epoch);
  CHECK(f.engine_bytes == f.model_bytes + f.arena_bytes + f.step_bytes + f.data_bytes,
        "%s: engine bytes %zu are not the sum of their parts", label, f.engine_bytes);
  CHECK(!f.gpu == !!host_memory, "%s: footprint gpu %d for a backend with host_memory %d", label,
        f.gpu, host_memory);
  CHECK(host_memory ? f.data_bytes == 0 : f.data_bytes > 0, "%s: data bytes %zu", label,
        f.data_bytes);
  for (int r = 0; r < n; r++) {
    counting *c = replica[r];
    CHECK(c && c->peak == f.engine_bytes,
          "%s: replica %d allocated %zu bytes at its peak after init; the footprint says %zu",
          label, r, c ? c->peak : 0, f.engine_bytes);
  }
  td_epoch_point last;
  rc = td_trainer_run(&t, NULL, &last, &err);
  CHECK(rc == 0 && (last.evaluated || !t.has_test), "%s: run: %s", label, err.msg);
  for (int r = 0; r < n; r++) {
    counting *c = replica[r];
    CHECK(c && c->peak == f.engine_bytes && c->cur == f.engine_bytes,
          "%s: replica %d after the run: %zu bytes live, %zu at the peak; the footprint says %zu",
          label, r, c ? c->cur : 0, c ? c->peak : 0, f.engine_bytes);
  }
  /* A resume holds a second state on replica 0 while it reads the file. */
  td_ckpt_meta m;
  td_trainer_meta(&t, &m);
  const char *path = at("resume.h5");
  rc = td_ckpt_write(path, &t.st, &m, &err);
  CHECK(rc == 0, "%s: checkpoint: %s", label, err.msg);
  if (!rc) {
    rc = td_trainer_resume(&t, path, &err);
    CHECK(rc == 0, "%s: resume: %s", label, err.msg);
    CHECK(replica[0] && replica[0]->peak == f.engine_bytes + f.resume_bytes &&
              replica[0]->cur == f.engine_bytes,
          "%s: replica 0 at its peak through a resume: %zu bytes; the footprint says %zu + %zu",
          label, replica[0] ? replica[0]->peak : 0, f.engine_bytes, f.resume_bytes);
    unlink(path);
  }
  td_trainer_free(&t);
  for (int r = 0; r < n; r++)
    CHECK(replica[r] == NULL, "%s: replica %d's backend outlived the trainer", label, r);
  td_jobspec_free(spec);
}

/* Models: dropout and a clipped AdamW chain; GELU (which keeps its
 * pre-activation), a layer without bias and SGD with momentum under MSE. */
static const char *mlp_dropout_fmt =
    "model:\n"
    "  input_shape: [28, 28]\n"
    "  layers:\n"
    "    - dense: {features: 48, kernel_init: HE_NORMAL}\n"
    "    - relu: {}\n"
    "    - dropout: {rate: 0.25}\n"
    "    - dense: {features: 24}\n"
    "    - tanh: {}\n"
    "    - dropout: {rate: 0.1}\n"
    "    - dense: {features: 10}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain: [{clip_by_global_norm: {max_norm: 1.0}},\n"
    "          {adamw: {learning_rate: {constant: 0.001}, weight_decay: 0.01}}]\n"
    "dataset: {idx: {dir: mnist}, train_limit: %u, test_limit: %u}\n"
    "training: {epochs: 2, batch_size: %u, seed: 3}\n"
    "devices: {kind: %s, count: %u}\n";

static const char *gelu_sgd_fmt =
    "model:\n"
    "  input_shape: [%s]\n"
    "  layers:\n"
    "    - dense: {features: 33, use_bias: false}\n"
    "    - gelu: {}\n"
    "    - dense: {features: 10}\n"
    "    - sigmoid: {}\n"
    "  loss: MEAN_SQUARED_ERROR\n"
    "optimizer:\n"
    "  chain: [{sgd: {learning_rate: {constant: 0.05}, momentum: 0.9, nesterov: true}}]\n"
    "dataset: {%s, train_limit: %u, test_limit: %u}\n"
    "training: {epochs: 1, batch_size: %u, seed: 5}\n"
    "devices: {kind: %s, count: %u}\n";

/* An HDF5 set: features (n, 4, 5) uint8, labels (n) int64 in 0..9. */
static void write_h5(const char *path, uint32_t n) {
  unsigned char *x = malloc((size_t)n * 20);
  int64_t *y = malloc(n * sizeof *y);
  for (uint32_t i = 0; i < n; i++) {
    y[i] = i % 10;
    for (int k = 0; k < 20; k++)
      x[(size_t)i * 20 + k] = (unsigned char)((i * 7 + (uint32_t)k * 13) % 256);
  }
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t dx[3] = {n, 4, 5}, dy[1] = {n};
  hid_t sx = H5Screate_simple(3, dx, NULL), sy = H5Screate_simple(1, dy, NULL);
  hid_t ix = H5Dcreate2(f, "features", H5T_NATIVE_UCHAR, sx, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t iy = H5Dcreate2(f, "labels", H5T_NATIVE_INT64, sy, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(f >= 0 && ix >= 0 && iy >= 0 &&
            H5Dwrite(ix, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0 &&
            H5Dwrite(iy, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, y) >= 0,
        "writing %s", path);
  H5Dclose(ix);
  H5Dclose(iy);
  H5Sclose(sx);
  H5Sclose(sy);
  H5Fclose(f);
  free(x);
  free(y);
}

static void test_engine_bytes(int have_mnist) {
  char doc[2048];
  /* HDF5 without a test file: no test copies. 300 examples in batches of
   * 120 (2 steps, 60 dropped); on two replicas, 60 rows each (offsets of
   * 240 bytes, where the whole batch's would take two granules). */
  const char *h5 = "hdf5: {train_file: syn.h5}";
  const char *h5_test = "hdf5: {train_file: syn.h5, test_file: syn_test.h5}";
  for (int k = 0; k < 2; k++) {
    const char *kind = k ? "cpu" : "gpu";
    int host = k;
    for (unsigned count = 1; count <= 2; count++) {
      char label[96];
      snprintf(doc, sizeof doc, gelu_sgd_fmt, "4, 5", h5, 0u, 0u, 120u, kind, count);
      snprintf(label, sizeof label, "hdf5 gelu/sgd, %s x %u", kind, count);
      check_job(label, doc, host);
      snprintf(doc, sizeof doc, gelu_sgd_fmt, "20", h5_test, 250u, 77u, 40u, kind, count);
      snprintf(label, sizeof label, "hdf5 with a test set, limits, %s x %u", kind, count);
      check_job(label, doc, host);
    }
  }
  if (!have_mnist)
    return;
  for (unsigned count = 1; count <= 2; count++) {
    char label[96];
    snprintf(doc, sizeof doc, mlp_dropout_fmt, 1000u, 300u, 64u, "gpu", count);
    snprintf(label, sizeof label, "mnist dropout/adamw+clip, gpu x %u", count);
    check_job(label, doc, 0);
    snprintf(doc, sizeof doc, mlp_dropout_fmt, 1000u, 300u, 64u, "cpu", count);
    snprintf(label, sizeof label, "mnist dropout/adamw+clip, cpu x %u", count);
    check_job(label, doc, 1);
    snprintf(doc, sizeof doc, gelu_sgd_fmt, "784", "idx: {dir: mnist}", 517u, 99u, 130u, "gpu",
             count);
    snprintf(label, sizeof label, "mnist gelu/sgd, gpu x %u", count);
    check_job(label, doc, 0);
  }
}

/* The CUDA backend's own memory for the full MNIST training set: the
 * shuffle's scratch is the largest need, 3 x 240128 bytes of arrays plus
 * CUB's bound 2 x 240128 + 60000 + 1 MiB (2.2 MiB in all), so the scratch
 * doubles from 1 MiB to 4 MiB. */
static void test_fixed_bytes(void) {
  const char *doc = "model: {input_shape: [784], layers: [{dense: {features: 10}}], loss: "
                    "SOFTMAX_CROSS_ENTROPY}\n"
                    "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.1}}}]}\n"
                    "dataset: {idx: {dir: mnist}}\n"
                    "training: {epochs: 1, batch_size: 128}\n"
                    "devices: {kind: gpu}\n";
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  int host = 0;
  td_trainer_opts o = {.data_roots = roots,
                       .n_data_roots = n_roots,
                       .backend = counting_backend,
                       .backend_arg = &host};
  td_footprint f;
  if (!rc)
    rc = td_job_footprint(spec, &o, &f, &err);
  CHECK(rc == 0, "full MNIST: %s", err.msg);
  if (!rc) {
    CHECK(f.train_n == 60000 && f.test_n == 10000 && f.train_dim == 784,
          "full MNIST: %u + %u examples of %u", f.train_n, f.test_n, f.train_dim);
    CHECK(f.scratch_bytes == ((size_t)4 << 20), "full MNIST: scratch %zu bytes, want 4 MiB",
          f.scratch_bytes);
    CHECK(f.fixed_bytes == ((size_t)(32 + 4 + 512) << 20), "full MNIST: fixed %zu bytes",
          f.fixed_bytes);
    CHECK(f.total_bytes == f.engine_bytes + f.fixed_bytes, "full MNIST: total %zu", f.total_bytes);
    /* Both sets as float32 features and int32 labels, in 256-byte granules. */
    size_t data = (60000 * 784 * 4) + (60000 * 4 + 128) + (10000 * 784 * 4) + (10000 * 4 + 192);
    CHECK(f.data_bytes == data, "full MNIST: data %zu bytes, want %zu", f.data_bytes, data);
  }
  td_jobspec_free(spec);
}

/* The scratch at its largest, from the kernels' needs: a bias gradient of
 * 4096 columns over a shard of 16384 rows takes 256 bands x 4096 doubles
 * (8 MiB exactly); without that bias, the shuffle of 300 examples (3 x 1280
 * bytes and CUB's bound, just over 1 MiB) is the largest, hence 2 MiB. No
 * trainer: the batch is larger than the set, which only the trainer
 * refuses. */
static void test_scratch(void) {
  const char *fmt = "model: {input_shape: [20], layers: [{dense: {features: 4096, use_bias: %s}},"
                    " {relu: {}}, {dense: {features: 10}}], loss: SOFTMAX_CROSS_ENTROPY}\n"
                    "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.1}}}]}\n"
                    "dataset: {hdf5: {train_file: syn.h5}}\n"
                    "training: {epochs: 1, batch_size: 16384}\n"
                    "devices: {kind: gpu}\n";
  const size_t want[2] = {(size_t)8 << 20, (size_t)2 << 20};
  for (int k = 0; k < 2; k++) {
    char doc[1024];
    snprintf(doc, sizeof doc, fmt, k ? "false" : "true");
    td_error err = {0};
    Traind__V1__JobSpec *spec = NULL;
    int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
    td_trainer_opts o = {.data_roots = roots, .n_data_roots = n_roots};
    td_footprint f;
    if (!rc)
      rc = td_job_footprint(spec, &o, &f, &err);
    CHECK(rc == 0, "scratch %d: %s", k, err.msg);
    const size_t fixed = TD_FOOTPRINT_CUBLAS_WORKSPACE + want[k] + TD_FOOTPRINT_CUDA_CONTEXT;
    if (!rc)
      CHECK(f.scratch_bytes == want[k] && f.fixed_bytes == fixed && f.steps_per_epoch == 0,
            "scratch %d: %zu bytes, want %zu (%u steps)", k, f.scratch_bytes, want[k],
            f.steps_per_epoch);
    td_jobspec_free(spec);
  }
}

/* ---- (a') a CPU job's host memory against the counting allocator ------------ */

/* One start of a job, as worker_main runs it (less the metric ring and
 * TensorBoard, which the daemon adds): the trainer, the saver, a resume
 * from the newest checkpoint, steps with a checkpoint at every boundary
 * the writer is free for, until stop_at steps (0: the end), then the last
 * checkpoint. */
typedef struct life {
  td_saver saver;
  int64_t stop_at;
  int64_t step;
} life;

static void life_step(void *user, const td_trainer *t, const td_step_point *p) {
  (void)t;
  ((life *)user)->step = p->step;
}

static void life_boundary(void *user, td_trainer *t) {
  life *l = user;
  if (!td_saver_busy(&l->saver))
    td_saver_snapshot(&l->saver, t, TD_CKPT_PERIODIC, 0, NULL);
}

static int life_stop(void *user) {
  life *l = user;
  return l->stop_at && l->step >= l->stop_at;
}

static int live_once(const char *label, const Traind__V1__JobSpec *spec, const td_trainer_opts *o,
                     const char *json, int64_t stop_at) {
  td_error err = {0};
  td_trainer t;
  int rc = td_trainer_init(&t, spec, o, &err);
  CHECK(rc == 0, "%s: trainer: %s", label, err.msg);
  if (rc)
    return rc;
  life *l = calloc(1, sizeof *l);
  l->stop_at = stop_at;
  td_saver_opts so = {.plan = t.plan,
                      .dir = at("life"),
                      .job_id = "j-footprint",
                      .spec = spec,
                      .spec_json = json,
                      .keep_last = 2};
  rc = td_saver_start(&l->saver, &so, &err);
  CHECK(rc == 0, "%s: saver: %s", label, err.msg);
  if (!rc) {
    char file[64], note[512];
    td_saver_resume(&l->saver, &t, file, sizeof file, note, sizeof note);
    l->step = t.st.step;
    td_train_hooks h = {
        .user = l, .on_step = life_step, .at_boundary = life_boundary, .should_stop = life_stop};
    rc = td_trainer_run(&t, &h, NULL, &err);
    CHECK(rc == 0 || (stop_at && rc == TD_ECANCELLED), "%s: run: %s", label, err.msg);
    td_saver_wait(&l->saver);
    if (t.st.step != l->saver.last_step) {
      td_saver_snapshot(&l->saver, &t, rc ? TD_CKPT_SHUTDOWN : TD_CKPT_FINAL, 0, &err);
      td_saver_wait(&l->saver);
    }
    td_saver_stop(&l->saver);
  }
  td_trainer_free(&t);
  free(l);
  return rc;
}

/* The heap's peak over two starts of the job (stopped halfway, resumed to
 * the end), above what was live before, against its footprint. */
static void check_host(const char *label, const char *doc) {
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  CHECK(rc == 0, "%s: %s", label, err.msg);
  if (rc)
    return;
  td_trainer_opts o = {.data_roots = roots, .n_data_roots = n_roots, .threads = 2};
  td_footprint f;
  rc = td_job_footprint(spec, &o, &f, &err);
  CHECK(rc == 0, "%s: footprint: %s", label, err.msg);
  char *json = pbjson_emit(&spec->base, PBJSON_PROTO_NAMES);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", at("life"));
  if (rc || !json || system(cmd) != 0) {
    free(json);
    td_jobspec_free(spec);
    return;
  }
  /* The parts add up. */
  const size_t base = f.host_data_bytes + f.host_engine_bytes + f.host_trainer_bytes;
  size_t run = base + f.ckpt_bytes +
               (f.image_bytes > f.resume_host_bytes ? f.image_bytes : f.resume_host_bytes);
  run = run > base + f.init_host_bytes ? run : base + f.init_host_bytes;
  CHECK(f.host_bytes == (run > f.load_bytes ? run : f.load_bytes) + TD_FOOTPRINT_HOST_MARGIN,
        "%s: host bytes %zu are not the peak of their parts", label, f.host_bytes);
  td_footprint plain = f;
  td_footprint_no_checkpoints(&plain);
  CHECK(plain.host_bytes <= f.host_bytes && plain.ckpt_bytes == 0 &&
            plain.host_bytes >= base + f.init_host_bytes + TD_FOOTPRINT_HOST_MARGIN,
        "%s: without checkpoints %zu bytes (with them %zu)", label, plain.host_bytes, f.host_bytes);
  CHECK(!f.gpu && f.host_engine_bytes >= (size_t)f.replicas * f.engine_bytes &&
            f.host_engine_bytes <= (size_t)f.replicas * (f.engine_bytes + 7 * 64),
        "%s: host engine bytes %zu for %d replicas of %zu", label, f.host_engine_bytes, f.replicas,
        f.engine_bytes);
  CHECK(f.host_data_bytes ==
            (size_t)f.train_n * (f.train_dim * 4 + 4) + (size_t)f.test_n * (f.test_dim * 4 + 4),
        "%s: data bytes %zu", label, f.host_data_bytes);
  size_t heap0 = heap_mark();
  int64_t half = f.total_steps / 2 ? f.total_steps / 2 : 1;
  live_once(label, spec, &o, json, half);
  live_once(label, spec, &o, json, 0);
  size_t peak = heap_peak_now() - heap0;
  if (COUNT_HEAP) {
    printf("%s: host footprint %zu bytes, heap peak %zu above the start (%.1f%%)\n", label,
           f.host_bytes, peak, 100.0 * (double)peak / (double)f.host_bytes);
    CHECK(peak <= f.host_bytes, "%s: the heap peaked at %zu bytes; the footprint says %zu", label,
          peak, f.host_bytes);
    /* Tight: what the job allocates at its size is all counted, so the
     * footprint exceeds the peak by about its margin (the libraries' own
     * memory, allocated once per process, is mostly there already). */
    CHECK(f.host_bytes - peak <= TD_FOOTPRINT_HOST_MARGIN + f.host_bytes / 20,
          "%s: the footprint (%zu bytes) is far above the heap's peak (%zu)", label, f.host_bytes,
          peak);
  }
  free(json);
  td_jobspec_free(spec);
}

static void test_host_bytes(int have_mnist) {
  char doc[2048], label[96];
  /* A model large next to the data (the checkpoint's image and a resume
   * dominate), and data large next to the model. */
  const char *wide = "model:\n"
                     "  input_shape: [20]\n"
                     "  layers: [{dense: {features: 2048}}, {relu: {}}, {dense: {features: 512}},\n"
                     "           {relu: {}}, {dense: {features: 10}}]\n"
                     "  loss: SOFTMAX_CROSS_ENTROPY\n"
                     "optimizer: {chain: [{adam: {learning_rate: {constant: 0.001}}}]}\n"
                     "dataset: {hdf5: {train_file: syn.h5, test_file: syn_test.h5}}\n"
                     "training: {epochs: 2, batch_size: 50, seed: 1}\n"
                     "devices: {count: %u}\n";
  for (unsigned count = 1; count <= 2; count++) {
    snprintf(doc, sizeof doc, wide, count);
    snprintf(label, sizeof label, "host: wide adam, hdf5, cpu x %u", count);
    check_host(label, doc);
  }
  if (!have_mnist)
    return;
  snprintf(doc, sizeof doc, gelu_sgd_fmt, "784", "idx: {dir: mnist}", 0u, 0u, 6000u, "cpu", 2u);
  check_host("host: full mnist (the IDX loader's bytes), sgd, cpu x 2", doc);
  snprintf(doc, sizeof doc, mlp_dropout_fmt, 3000u, 500u, 100u, "cpu", 1u);
  check_host("host: mnist dropout/adamw+clip, limits, cpu x 1", doc);
}

/* ---- (b) the refusal ---------------------------------------------------- */

static void test_fits(void) {
  td_footprint f = {.gpu = 1,
                    .replicas = 1,
                    .shard = 256,
                    .train_n = 60000,
                    .test_n = 10000,
                    .model_bytes = (size_t)300 << 20,
                    .arena_bytes = (size_t)200 << 20,
                    .data_bytes = (size_t)210 << 20,
                    .step_bytes = (size_t)2 << 20,
                    .fixed_bytes = (size_t)824 << 20};
  f.engine_bytes = f.model_bytes + f.arena_bytes + f.data_bytes + f.step_bytes;
  f.total_bytes = f.engine_bytes + f.fixed_bytes; /* 1536 MiB = 1.50 GiB */
  td_error err = {0};
  int rc = td_footprint_fits(&f, 3, (size_t)512 << 20, &err);
  CHECK(rc == TD_ENOMEM && td_grpc_status(rc) == 8,
        "too big: rc %d, gRPC %d (want 8, "
        "RESOURCE_EXHAUSTED)",
        rc, td_grpc_status(rc));
  CHECK_STR_CONTAINS(err.msg, "GPU 3");
  CHECK_STR_CONTAINS(err.msg, "1.50 GiB");
  CHECK_STR_CONTAINS(err.msg, "512.0 MiB free");
  CHECK_STR_CONTAINS(err.msg, "300.0 MiB");
  CHECK_STR_CONTAINS(err.msg, "210.0 MiB");
  CHECK_STR_CONTAINS(err.msg, "training.batch_size");
  CHECK_STR_CONTAINS(err.msg, "train_limit");
  CHECK(strchr(err.msg, '\n') == NULL, "the message is not one line: %s", err.msg);
  err = (td_error){0};
  CHECK(td_footprint_fits(&f, 0, f.total_bytes, &err) == TD_OK && err.msg[0] == 0,
        "exactly the free memory fits: %s", err.msg);
  CHECK(td_footprint_fits(&f, 0, (size_t)140 << 30, &err) == TD_OK, "140 GiB free: %s", err.msg);
  rc = td_footprint_fits(&f, 1, f.total_bytes - 1, &err);
  CHECK(rc == TD_ENOMEM, "one byte short: rc %d", rc);
  CHECK_STR_CONTAINS(err.msg, "GPU 1");
}

/* A CPU footprint as td_job_footprint would give it, for the refusal. */
static td_footprint cpu_footprint(void) {
  td_footprint f = {.replicas = 1,
                    .shard = 128,
                    .train_n = 60000,
                    .test_n = 10000,
                    .model_bytes = (size_t)22 << 30,
                    .arena_bytes = (size_t)3 << 20,
                    .host_data_bytes = (size_t)180 << 20,
                    .ckpt_bytes = (size_t)17 << 30,
                    .image_bytes = (size_t)16 << 30,
                    .resume_host_bytes = (size_t)5 << 30};
  f.host_engine_bytes = f.model_bytes + f.arena_bytes;
  f.host_bytes = f.host_engine_bytes + f.host_data_bytes + f.ckpt_bytes + f.image_bytes +
                 TD_FOOTPRINT_HOST_MARGIN;
  snprintf(f.largest[0].name, sizeof f.largest[0].name, "layer2/w");
  f.largest[0].rows = 524288;
  f.largest[0].cols = 2048;
  snprintf(f.largest[1].name, sizeof f.largest[1].name, "layer1/w");
  f.largest[1].rows = 784;
  f.largest[1].cols = 524288;
  return f;
}

static void test_admit(void) {
  td_footprint f = cpu_footprint();
  td_memory_limit lim = {.bytes = (size_t)16 << 30};
  snprintf(lim.source, sizeof lim.source, "memory_limit_bytes in the config");
  td_error err = {0};
  int rc = td_footprint_admit(&f, &lim, 0, &err);
  CHECK(rc == TD_ENOMEM && td_grpc_status(rc) == 8, "admit: rc %d, gRPC %d (want 8)", rc,
        td_grpc_status(rc));
  printf("admission refusal (%zu bytes): %s\n", strlen(err.msg), err.msg);
  char need[32];
  CHECK_STR_CONTAINS(err.msg, td_footprint_human(need, sizeof need, f.host_bytes));
  CHECK_STR_CONTAINS(err.msg, "may use 16.00 GiB (memory_limit_bytes in the config)");
  CHECK_STR_CONTAINS(err.msg, "22.00 GiB for the parameters, gradients and optimizer state");
  CHECK_STR_CONTAINS(err.msg, "33.00 GiB for checkpoints");
  CHECK_STR_CONTAINS(err.msg, "180.0 MiB for the training and test sets (60000 + 10000");
  CHECK_STR_CONTAINS(err.msg, "3.0 MiB of activations for 128 examples per device");
  CHECK_STR_CONTAINS(err.msg, "layer2/w (524288, 2048) and layer1/w (784, 524288)");
  CHECK_STR_CONTAINS(err.msg, "raise memory_limit_bytes");
  /* Largest first: the checkpoints, then the model. */
  const char *ck = strstr(err.msg, "for checkpoints"), *pm = strstr(err.msg, "for the param");
  const char *ds = strstr(err.msg, "for the training and test");
  CHECK(ck && pm && ds && ck < pm && pm < ds, "admit: the parts are not largest first: %s",
        err.msg);
  CHECK(strchr(err.msg, '\n') == NULL && strlen(err.msg) < TD_ERRMSG_MAX - 1,
        "admit: the message is not one whole line (%zu bytes)", strlen(err.msg));
  /* Data the largest part: the advice names the dataset limits first. */
  td_footprint d = {.replicas = 1,
                    .shard = 64,
                    .train_n = 9000000,
                    .test_n = 0,
                    .model_bytes = 1 << 20,
                    .host_data_bytes = (size_t)30 << 30};
  d.host_engine_bytes = d.model_bytes;
  d.host_bytes = d.host_data_bytes + d.host_engine_bytes + TD_FOOTPRINT_HOST_MARGIN;
  snprintf(d.largest[0].name, sizeof d.largest[0].name, "layer1/w");
  err = (td_error){0};
  CHECK(td_footprint_admit(&d, &lim, 0, &err) == TD_ENOMEM, "admit data: fits");
  const char *adv = strstr(err.msg, "; make ");
  CHECK(adv && strstr(adv, "make the datasets (dataset.train_limit, dataset.test_limit)"),
        "admit data: the advice does not start with the datasets: %s", err.msg);
  /* What fits: exactly the limit; and less what running jobs hold. */
  lim.bytes = f.host_bytes;
  err = (td_error){0};
  CHECK(td_footprint_admit(&f, &lim, 0, &err) == TD_OK && !err.msg[0], "exactly the limit: %s",
        err.msg);
  CHECK(td_footprint_admit(&f, &lim, 1, &err) == TD_ENOMEM, "one byte held: fits");
  CHECK_STR_CONTAINS(err.msg, "of which running jobs hold");
}

static void put_file(const char *rel, const char *text) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s", at(rel));
  for (char *c = dir + strlen(tmp) + 1; *c; c++)
    if (*c == '/') {
      *c = 0;
      mkdir(dir, 0755);
      *c = '/';
    }
  FILE *fp = fopen(at(rel), "w");
  CHECK(fp != NULL, "cannot write %s", at(rel));
  if (fp) {
    fputs(text, fp);
    fclose(fp);
  }
}

/* The limit from made-up /proc and /sys files. */
static void test_memory_limit(void) {
  td_memory_limit m;
  td_error err = {0};
  const char *meminfo = "MemTotal:       24683584 kB\nMemFree:  100 kB\n"
                        "MemAvailable:   20971520 kB\nBuffers: 1 kB\n"; /* 20 GiB */
  put_file("proc/meminfo", meminfo);
  put_file("proc/status", "Name:\ttraind\nVmRSS:\t   102400 kB\nThreads: 3\n"); /* 100 MiB */
  /* Configured wins. */
  int rc = td_memory_limit_from(123456789, at("proc/none"), at("sys"), at("proc/meminfo"),
                                at("proc/status"), &m, &err);
  CHECK(rc == 0 && m.bytes == 123456789 && strstr(m.source, "memory_limit_bytes"),
        "configured: %zu (%s)", m.bytes, m.source);
  /* No cgroup limit: MemAvailable. */
  put_file("proc/cgroup-none", "0::/\n");
  rc = td_memory_limit_from(0, at("proc/cgroup-none"), at("sys"), at("proc/meminfo"),
                            at("proc/status"), &m, &err);
  CHECK(rc == 0 && m.bytes == (size_t)20 << 30 && strstr(m.source, "MemAvailable"),
        "MemAvailable: %zu (%s)", m.bytes, m.source);
  /* cgroup v2: the smallest of the cgroup and its ancestors ("max": none),
   * less the daemon's resident memory. */
  put_file("proc/cgroup-v2", "0::/system.slice/traind.service\n");
  put_file("sys/system.slice/traind.service/memory.max", "max\n");
  put_file("sys/system.slice/memory.max", "4294967296\n");
  put_file("sys/memory.max", "8589934592\n");
  rc = td_memory_limit_from(0, at("proc/cgroup-v2"), at("sys"), at("proc/meminfo"),
                            at("proc/status"), &m, &err);
  CHECK(rc == 0 && m.bytes == ((size_t)4 << 30) - ((size_t)100 << 20) &&
            strstr(m.source, "sys/system.slice/memory.max") && strstr(m.source, "4.00 GiB") &&
            strstr(m.source, "100.0 MiB the daemon holds"),
        "cgroup v2: %zu (%s)", m.bytes, m.source);
  /* A cgroup limit above MemAvailable: MemAvailable. */
  put_file("sys/system.slice/memory.max", "68719476736\n");
  put_file("sys/memory.max", "max\n");
  rc = td_memory_limit_from(0, at("proc/cgroup-v2"), at("sys"), at("proc/meminfo"),
                            at("proc/status"), &m, &err);
  CHECK(rc == 0 && m.bytes == (size_t)20 << 30 && strstr(m.source, "MemAvailable"),
        "cgroup above MemAvailable: %zu (%s)", m.bytes, m.source);
  /* cgroup v1 (a hybrid layout as on this kind of machine): the memory
   * controller's line, its hierarchy, "unlimited" as a number near 2^63. */
  put_file("proc/cgroup-v1", "9:name=systemd:/\n4:cpuacct,memory:/pool/job\n0::/\n");
  put_file("sys/memory/pool/job/memory.limit_in_bytes", "9223372036854771712\n");
  put_file("sys/memory/pool/memory.limit_in_bytes", "1073741824\n");
  rc = td_memory_limit_from(0, at("proc/cgroup-v1"), at("sys"), at("proc/meminfo"),
                            at("proc/status"), &m, &err);
  CHECK(rc == 0 && m.bytes == ((size_t)1 << 30) - ((size_t)100 << 20) &&
            strstr(m.source, "memory/pool/memory.limit_in_bytes"),
        "cgroup v1: %zu (%s)", m.bytes, m.source);
  /* Nothing to go by. */
  err = (td_error){0};
  rc = td_memory_limit_from(0, at("proc/none"), at("sys"), at("proc/none"), at("proc/none"), &m,
                            &err);
  CHECK(rc != 0 && strstr(err.msg, "memory_limit_bytes"), "nothing: rc %d (%s)", rc, err.msg);
  /* This machine's own figures are read. */
  rc = td_memory_limit_detect(0, &m, &err);
  CHECK(rc == 0 && m.bytes > 0, "this machine: rc %d (%s)", rc, err.msg);
  printf("this machine: jobs may use %zu bytes (%s)\n", m.bytes, m.source);
}

/* A model of n dense layers of `width` (the last of 10), JSON. */
static char *deep_model(size_t n, unsigned width, const char *input, unsigned batch) {
  size_t cap = n * 40 + 1024;
  char *doc = malloc(cap);
  size_t at_ =
      (size_t)snprintf(doc, cap, "{\"model\": {\"input_shape\": [%s], \"layers\": [", input);
  for (size_t i = 0; i < n; i++)
    at_ += (size_t)snprintf(doc + at_, cap - at_, "%s{\"dense\": {\"features\": %u}}",
                            i ? ", " : "", i + 1 == n ? 10u : width);
  snprintf(doc + at_, cap - at_,
           "], \"loss\": \"SOFTMAX_CROSS_ENTROPY\"}, \"optimizer\": {\"chain\": [{\"adam\": "
           "{\"learning_rate\": {\"constant\": 0.001}}}]}, \"dataset\": {\"hdf5\": "
           "{\"train_file\": \"syn.h5\"}}, \"training\": {\"epochs\": 1, \"batch_size\": %u}}",
           batch);
  return doc;
}

/* The size limits of a model (jobspec.h), and the compile of the largest
 * allowed one in time linear in its layers (a log, not an assertion). */
static void test_limits(void) {
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  /* The layer count: at the limit it compiles, one more is refused. */
  char *doc = deep_model(TD_JOB_MAX_LAYERS, 8, "20", 32);
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  CHECK(rc == 0, "%d layers: %s", TD_JOB_MAX_LAYERS, err.msg);
  td_jobspec_free(spec);
  free(doc);
  doc = deep_model(TD_JOB_MAX_LAYERS + 1, 8, "20", 32);
  rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  CHECK(rc == TD_EINVAL && strstr(err.msg, "model.layers: 4097 layers") &&
            strstr(err.msg, "at most 4096"),
        "%d layers: rc %d (%s)", TD_JOB_MAX_LAYERS + 1, rc, err.msg);
  free(doc);
  /* Parameters: 784-2^20-2048-10 (2.97e9) is over 2^31. */
  const char *mlp = "{\"model\": {\"input_shape\": [784], \"layers\": [{\"dense\": {\"features\": "
                    "%u}}, {\"relu\": {}}, {\"dense\": {\"features\": 2048}}, {\"relu\": {}}, "
                    "{\"dense\": {\"features\": 10}}], \"loss\": \"SOFTMAX_CROSS_ENTROPY\"}, "
                    "\"optimizer\": {\"chain\": [{\"adam\": {\"learning_rate\": {\"constant\": "
                    "0.001}}}]}, \"dataset\": {\"idx\": {\"dir\": \"mnist\"}}, \"training\": "
                    "{\"epochs\": 1, \"batch_size\": %u}}";
  char buf[1024];
  snprintf(buf, sizeof buf, mlp, 1u << 20, 128u);
  rc = td_jobspec_parse(buf, strlen(buf), &spec, &err);
  CHECK(rc == TD_EINVAL && strstr(err.msg, "2970638346 parameters") &&
            strstr(err.msg, "at most 2147483648"),
        "784-2^20-2048-10: rc %d (%s)", rc, err.msg);
  /* FLOPs: half the width fits the parameters; a batch of 2^20 does not
   * fit 1e15 operations a step. */
  snprintf(buf, sizeof buf, mlp, 1u << 19, 1u << 20);
  rc = td_jobspec_parse(buf, strlen(buf), &spec, &err);
  CHECK(rc == TD_EINVAL && strstr(err.msg, "floating-point operations") &&
            strstr(err.msg, "at most 1e+15"),
        "flops: rc %d (%s)", rc, err.msg);
  snprintf(buf, sizeof buf, mlp, 1u << 19, 128u);
  rc = td_jobspec_parse(buf, strlen(buf), &spec, &err);
  CHECK(rc == 0, "784-2^19-2048-10: %s", err.msg);
  td_jobspec_free(spec);
  /* A graph: a concatenate's width is its inputs' sum, here 8 x 2^14 into
   * a dense layer of 2^14 (2.16e9 parameters with the first layer), whatever order the layers are
   * listed in. */
  const char *cat = "{\"model\": {\"input_shape\": [784], \"layers\": [%s], \"loss\": "
                    "\"SOFTMAX_CROSS_ENTROPY\"}, \"optimizer\": {\"chain\": [{\"sgd\": "
                    "{\"learning_rate\": {\"constant\": 0.1}}}]}, \"dataset\": {\"idx\": "
                    "{\"dir\": \"mnist\"}}, \"training\": {\"epochs\": 1, \"batch_size\": 8}}";
  const char *orders[2] = {
      "{\"name\": \"a\", \"dense\": {\"features\": 16384}}, {\"name\": \"c\", "
      "\"concatenate\": {}, \"inputs\": [\"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", "
      "\"a\"]}, {\"dense\": {\"features\": 16384}, \"inputs\": [\"c\"]}",
      "{\"dense\": {\"features\": 16384}, \"inputs\": [\"c\"]}, {\"name\": \"c\", "
      "\"concatenate\": {}, \"inputs\": [\"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", "
      "\"a\"]}, {\"name\": \"a\", \"dense\": {\"features\": 16384}, \"inputs\": [\"input\"]}"};
  for (int o = 0; o < 2; o++) {
    snprintf(buf, sizeof buf, cat, orders[o]);
    rc = td_jobspec_parse(buf, strlen(buf), &spec, &err);
    CHECK(rc == TD_EINVAL && strstr(err.msg, "2160361472 parameters"),
          "concatenate of 8 x 2^14 into 2^14 (order %d): rc %d (%s)", o, rc, err.msg);
  }

  /* Compile time against depth: doubling the layers about doubles it. */
  double ms[3] = {0};
  const size_t depth[3] = {TD_JOB_MAX_LAYERS / 4, TD_JOB_MAX_LAYERS / 2, TD_JOB_MAX_LAYERS};
  for (int k = 0; k < 3; k++) {
    doc = deep_model(depth[k], 64, "20", 128);
    rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
    CHECK(rc == 0, "%zu layers: %s", depth[k], err.msg);
    double best = 1e30;
    for (int rep = 0; !rc && rep < 3; rep++) {
      td_plan *p = NULL;
      double t0 = td_mono_ms();
      rc = td_plan_compile(spec->model, spec->optimizer, 128, "cpu:0", &p, &err);
      double t = td_mono_ms() - t0;
      best = t < best ? t : best;
      CHECK(rc == 0 && p->n_views == 2 * depth[k], "%zu layers: compile: %s", depth[k], err.msg);
      td_plan_free(p);
    }
    ms[k] = best;
    td_jobspec_free(spec);
    free(doc);
  }
  printf("compile (best of 3): %zu layers %.2f ms, %zu layers %.2f ms, %zu layers %.2f ms; "
         "per layer %.2f, %.2f, %.2f us\n",
         depth[0], ms[0], depth[1], ms[1], depth[2], ms[2], 1e3 * ms[0] / (double)depth[0],
         1e3 * ms[1] / (double)depth[1], 1e3 * ms[2] / (double)depth[2]);
  /* Two layers of one name are still found, at any depth. */
  doc = deep_model(3000, 8, "20", 32);
  char *second = strstr(doc, "{\"dense\"");
  second = second ? strstr(second + 1, "{\"dense\"") : NULL;
  rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  if (!rc && second) {
    spec->model->layers[0]->name = (char *)"twin";
    spec->model->layers[2999]->name = (char *)"twin";
    td_plan *p = NULL;
    rc = td_plan_compile(spec->model, spec->optimizer, 32, "cpu:0", &p, &err);
    CHECK(rc == TD_EINVAL && strstr(err.msg, "both named 'twin'"), "twins: rc %d (%s)", rc,
          err.msg);
    td_plan_free(p);
    spec->model->layers[0]->name = NULL;
    spec->model->layers[2999]->name = NULL;
  }
  td_jobspec_free(spec);
  free(doc);
}

/* The CPU job at the widest the limits allow: 784-2^19-2048-10
 * with Adam, about 24 GB, sized from MNIST's headers and refused by a
 * 16 GiB limit, with the figures. */
static void test_big_cpu_job(void) {
  const char *doc = "model: {input_shape: [784], layers: [{dense: {features: 524288}}, {relu: {}},"
                    " {dense: {features: 2048}}, {relu: {}}, {dense: {features: 10}}],"
                    " loss: SOFTMAX_CROSS_ENTROPY}\n"
                    "optimizer: {chain: [{adam: {learning_rate: {constant: 0.001}}}]}\n"
                    "dataset: {idx: {dir: mnist}}\n"
                    "training: {epochs: 1, batch_size: 128}\n";
  td_error err = {0};
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  td_trainer_opts o = {.data_roots = roots, .n_data_roots = n_roots};
  td_footprint f;
  if (!rc)
    rc = td_job_footprint(spec, &o, &f, &err);
  CHECK(rc == 0, "big cpu job: %s", err.msg);
  if (!rc) {
    /* 784*2^19 + 2^19 + 2^19*2048 + 2048 + 2048*10 + 10 parameters, each
     * tensor starting on 16 floats (all but the last are multiples of 16);
     * params, grads, mu, nu (+1). */
    const size_t np = 784 * 524288 + 524288 + 524288 * 2048ull + 2048 + 2048 * 10 + 10;
    CHECK(f.model_bytes == (4 * np + 1) * 4, "big cpu job: model %zu bytes, want %zu",
          f.model_bytes, (4 * np + 1) * 4);
    CHECK(f.host_bytes > ((size_t)40 << 30), "big cpu job: host %zu bytes", f.host_bytes);
    td_memory_limit lim = {.bytes = (size_t)16 << 30};
    snprintf(lim.source, sizeof lim.source, "memory_limit_bytes in the config");
    rc = td_footprint_admit(&f, &lim, 0, &err);
    CHECK(rc == TD_ENOMEM, "big cpu job admitted into 16 GiB");
    CHECK_STR_CONTAINS(err.msg, "layer2/w (524288, 2048) and layer1/w (784, 524288)");
    CHECK_STR_CONTAINS(err.msg, "for the parameters, gradients and optimizer state on 1 CPU");
    printf("big cpu job: %s\n", err.msg);
  }
  td_jobspec_free(spec);
}

/* ---- (c) shapes against the loaders -------------------------------------- */

static void same_shape(const char *label, int rc_shape, const td_dataset *s, int rc_load,
                       const td_dataset *l, const td_error *es, const td_error *el) {
  CHECK(rc_shape == rc_load, "%s: shape rc %d (%s), load rc %d (%s)", label, rc_shape, es->msg,
        rc_load, el->msg);
  if (rc_shape || rc_load) {
    CHECK(strcmp(es->msg, el->msg) == 0, "%s: shape says \"%s\", load \"%s\"", label, es->msg,
          el->msg);
    return;
  }
  CHECK(s->n == l->n && s->dim == l->dim && s->ndim == l->ndim &&
            memcmp(s->shape, l->shape, sizeof s->shape) == 0,
        "%s: shape %u x %u (ndim %u), loaded %u x %u (ndim %u)", label, s->n, s->dim, s->ndim, l->n,
        l->dim, l->ndim);
  CHECK(s->x == NULL && s->y == NULL, "%s: the shape reader allocated data", label);
}

static void idx_pair(const char *label, const char *img, const char *lab, uint32_t limit) {
  td_dataset s, l;
  td_error es = {0}, el = {0};
  int rs = td_idx_shape(img, lab, limit, &s, &es);
  int rl = td_idx_load(img, lab, limit, &l, &el);
  same_shape(label, rs, &s, rl, &l, &es, &el);
  td_dataset_free(&l);
}

static void h5_pair(const char *label, const char *path, const char *x, const char *y,
                    uint32_t limit) {
  td_dataset s, l;
  td_error es = {0}, el = {0};
  int rs = td_hdf5_shape(path, x, y, limit, &s, &es);
  int rl = td_hdf5_load(path, x, y, limit, &l, &el);
  same_shape(label, rs, &s, rl, &l, &es, &el);
  td_dataset_free(&l);
}

static void put_be32(FILE *f, uint32_t v) {
  unsigned char b[4] = {v >> 24, v >> 16, v >> 8, v};
  fwrite(b, 1, 4, f);
}

/* A plain IDX pair of n images (3, 7), and a gzipped copy. */
static void write_idx(uint32_t n, uint32_t n_labels) {
  FILE *fi = fopen(at("img.idx"), "wb"), *fl = fopen(at("lab.idx"), "wb");
  gzFile gi = gzopen(at("img.idx.gz"), "wb");
  put_be32(fi, 0x803);
  put_be32(fi, n);
  put_be32(fi, 3);
  put_be32(fi, 7);
  for (uint32_t i = 0; i < n * 21; i++)
    fputc((int)(i % 256), fi);
  put_be32(fl, 0x801);
  put_be32(fl, n_labels);
  for (uint32_t i = 0; i < n_labels; i++)
    fputc((int)(i % 10), fl);
  fclose(fi);
  fclose(fl);
  FILE *r = fopen(at("img.idx"), "rb");
  char buf[4096];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, r)) > 0)
    gzwrite(gi, buf, (unsigned)got);
  fclose(r);
  gzclose(gi);
}

static void test_shapes(const char *mnist_root) {
  write_idx(50, 50);
  idx_pair("plain idx", at("img.idx"), at("lab.idx"), 0);
  idx_pair("plain idx, limit 20", at("img.idx"), at("lab.idx"), 20);
  idx_pair("plain idx, limit above n", at("img.idx"), at("lab.idx"), 500);
  idx_pair("gzipped idx, limit 7", at("img.idx.gz"), at("lab.idx"), 7);
  idx_pair("labels for images", at("lab.idx"), at("lab.idx"), 0);
  idx_pair("missing file", at("none.idx"), at("lab.idx"), 0);
  write_idx(50, 49);
  idx_pair("unequal counts", at("img.idx"), at("lab.idx"), 0);

  write_h5(at("shape.h5"), 123);
  h5_pair("hdf5", at("shape.h5"), "features", "labels", 0);
  h5_pair("hdf5, limit 100", at("shape.h5"), "features", "labels", 100);
  h5_pair("hdf5, limit above n", at("shape.h5"), "features", "labels", 1000);
  h5_pair("hdf5, no such dataset", at("shape.h5"), "images", "labels", 0);
  h5_pair("hdf5, labels as features", at("shape.h5"), "labels", "labels", 0);
  h5_pair("not hdf5", at("img.idx"), "features", "labels", 0);

  if (!mnist_root)
    return;
  char img[512], lab[512];
  const char *sets[2][2] = {{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"},
                            {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}};
  for (int k = 0; k < 2; k++) {
    snprintf(img, sizeof img, "%s/mnist/%s", mnist_root, sets[k][0]);
    snprintf(lab, sizeof lab, "%s/mnist/%s", mnist_root, sets[k][1]);
    idx_pair(k ? "mnist test" : "mnist train", img, lab, 0);
    idx_pair(k ? "mnist test, limit 999" : "mnist train, limit 999", img, lab, 999);
  }
}

int main(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmp, sizeof tmp, "%s/td_footprint_XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmp)) {
    perror("mkdtemp");
    return 1;
  }
  const char *mnist = td_test_data_root();
  if (!mnist) {
    if (td_test_in_ci())
      CHECK(0, "TRAIND_DATA_DIR is not set under CI=true; the MNIST checks cannot run");
    else
      printf("SKIP: the MNIST jobs (set TRAIND_DATA_DIR to the directory holding mnist/)\n");
  }
  roots[n_roots++] = tmp;
  if (mnist)
    roots[n_roots++] = mnist;
  write_h5(at("syn.h5"), 300);
  write_h5(at("syn_test.h5"), 90);

  test_fits();
  test_admit();
  test_memory_limit();
  test_limits();
  if (mnist)
    test_big_cpu_job();
  test_scratch();
  test_shapes(mnist);
  test_engine_bytes(mnist != NULL);
  if (mnist)
    test_fixed_bytes();
  test_host_bytes(mnist != NULL);

  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmp);
  return td_check_exit();
}
