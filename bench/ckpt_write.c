/* Checkpoint writing and reading, timed.
 *
 *   ckpt_write_bench --widths 784,512,512,10 [--opt adam|sgd] [--dir DIR]
 *                    [--reps N] [--warm-read] [--fresh-memory]
 *
 * Builds the plan of an MLP (dense layers of the given widths with ReLU
 * between them, softmax cross-entropy; Adam with learning rate 1e-3, or plain
 * SGD) and a CPU state with initialised parameters and random optimizer
 * state, then per repetition times what a checkpoint costs:
 *   snapshot  copying parameters and optimizer state out of the backend into
 *             one preallocated host buffer (the training stall: the daemon
 *             does this between steps and writes on another thread),
 *   crc32     zlib's CRC-32 over the same bytes (the checksum the writer
 *             computes), for the breakdown of the write,
 *   write     td_ckpt_write_image of that image to DIR/ckpt-bench.h5 (build
 *             in memory, write, fsync, rename, fsync the directory), with
 *             the CPU time (user and system) and minor page faults of the
 *             calling thread in it (getrusage RUSAGE_THREAD),
 *   posix     write(2) and fsync of as many bytes as the file has (the
 *             image, then its start again), to DIR/.ckpt-bench.raw (what
 *             the disk alone allows),
 *   read      td_ckpt_read of the file into the state (every check and the
 *             checksum included); the file's pages are dropped from the page
 *             cache first unless --warm-read.
 * The writes build their files in one buffer kept across repetitions, as the
 * daemon's checkpoint writer does (the first repetition allocates it);
 * --fresh-memory gives each write new memory instead.
 * Prints one JSON object per repetition and a summary object with the
 * median, minimum and maximum of each figure. MB is 10^6 bytes. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "backend.h"
#include "checkpoint.h"
#include "clock.h"
#include "pbjson.h"
#include "plan.h"
#include "prng.h"

enum { MAX_WIDTHS = 32, BATCH = 128, SPEC_MAX = 8192, NAME_MAX_LEN = 256 };

typedef struct bench_args {
  uint32_t widths[MAX_WIDTHS];
  int n_widths;
  const char *opt; /* "adam" or "sgd" */
  const char *dir;
  int reps;
  int warm_read;
  int fresh_memory;
} bench_args;

/* The figures of one repetition, in output order. */
enum {
  F_SNAPSHOT_MS = 0,
  F_CRC32_SEC,
  F_WRITE_SEC,
  F_WRITE_MBPS,
  F_WRITE_USER_SEC,
  F_WRITE_SYS_SEC,
  F_WRITE_MINFLT,
  F_POSIX_SEC,
  F_POSIX_MBPS,
  F_READ_SEC,
  F_READ_MBPS,
  N_FIGURES
};
static const char *const figure_names[N_FIGURES] = {
    "snapshot_ms",      "crc32_sec",     "write_sec",    "write_MBps",
    "write_user_sec",   "write_sys_sec", "write_minflt", "posix_write_sec",
    "posix_write_MBps", "read_sec",      "read_MBps"};

typedef struct bench_rep {
  double v[N_FIGURES];
} bench_rep;

/* A parsed model and optimizer, the plan compiled from them, and a state on
 * a CPU backend. */
typedef struct bench_model {
  Traind__V1__Model *model;
  Traind__V1__Optimizer *opt;
  td_plan *plan;
  td_backend *be;
  td_state st;
  int have_state;
} bench_model;

static double tv_sec(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6; }

static void die(const char *what, const td_error *err) {
  fprintf(stderr, "ckpt_write_bench: %s: %s\n", what, err->msg);
  exit(1);
}

static void die_errno(const char *what, const char *path) {
  fprintf(stderr, "ckpt_write_bench: %s '%s': %s\n", what, path, strerror(errno));
  exit(1);
}

static void usage(void) {
  fprintf(stderr, "usage: ckpt_write_bench --widths W0,W1,...,Wn [--opt adam|sgd] [--dir DIR] "
                  "[--reps N] [--warm-read] [--fresh-memory]\n");
  exit(2);
}

static void parse_widths(const char *s, bench_args *a) {
  a->n_widths = 0;
  while (*s) {
    char *end = NULL;
    errno = 0;
    unsigned long w = strtoul(s, &end, 10);
    if (end == s || errno || w == 0 || w > UINT32_MAX || (*end && *end != ',') ||
        a->n_widths == MAX_WIDTHS) {
      fprintf(stderr,
              "ckpt_write_bench: --widths takes 2 to %d positive integers separated "
              "by commas, e.g. 784,512,512,10\n",
              MAX_WIDTHS);
      exit(2);
    }
    a->widths[a->n_widths++] = (uint32_t)w;
    s = *end ? end + 1 : end;
  }
  if (a->n_widths < 2) {
    fprintf(stderr, "ckpt_write_bench: --widths needs an input width and at least one layer\n");
    exit(2);
  }
}

static bench_args parse_args(int argc, char **argv) {
  bench_args a = {.opt = "adam", .dir = ".", .reps = 5};
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(arg, "--warm-read")) {
      a.warm_read = 1;
      continue;
    }
    if (!strcmp(arg, "--fresh-memory")) {
      a.fresh_memory = 1;
      continue;
    }
    if (!val)
      usage();
    i++;
    if (!strcmp(arg, "--widths")) {
      parse_widths(val, &a);
    } else if (!strcmp(arg, "--opt")) {
      if (strcmp(val, "adam") && strcmp(val, "sgd")) {
        fprintf(stderr, "ckpt_write_bench: --opt is adam or sgd, not '%s'\n", val);
        exit(2);
      }
      a.opt = val;
    } else if (!strcmp(arg, "--dir")) {
      a.dir = val;
    } else if (!strcmp(arg, "--reps")) {
      char *end = NULL;
      long r = strtol(val, &end, 10);
      if (end == val || *end || r < 1 || r > 1000) {
        fprintf(stderr, "ckpt_write_bench: --reps takes an integer from 1 to 1000\n");
        exit(2);
      }
      a.reps = (int)r;
    } else {
      usage();
    }
  }
  if (!a.n_widths)
    usage();
  return a;
}

/* The model as a Model message in YAML: dense layers with ReLU between them. */
static void model_yaml(const bench_args *a, char *buf, size_t len) {
  size_t n = (size_t)snprintf(buf, len, "input_shape: [%u]\nlayers:\n", a->widths[0]);
  for (int i = 1; i < a->n_widths && n < len; i++) {
    if (i > 1)
      n += (size_t)snprintf(buf + n, len - n, "  - relu: {}\n");
    if (n < len)
      n += (size_t)snprintf(buf + n, len - n,
                            "  - dense: {features: %u, kernel_init: HE_NORMAL, "
                            "bias_init: ZEROS}\n",
                            a->widths[i]);
  }
  if (n < len)
    n += (size_t)snprintf(buf + n, len - n, "loss: SOFTMAX_CROSS_ENTROPY\n");
  if (n >= len) {
    fprintf(stderr, "ckpt_write_bench: too many layers for the spec buffer\n");
    exit(2);
  }
}

/* Parses the spec, compiles the plan, binds it to a one-thread CPU backend
 * and draws the parameters. */
static void model_init(bench_model *m, const bench_args *a) {
  memset(m, 0, sizeof *m);
  td_error err = {0};
  char doc[SPEC_MAX];
  model_yaml(a, doc, sizeof doc);
  if (pbjson_parse(&traind__v1__model__descriptor, doc, strlen(doc), (ProtobufCMessage **)&m->model,
                   &err))
    die("parsing the model", &err);
  snprintf(doc, sizeof doc, "chain: [{%s: {learning_rate: {constant: 0.001}}}]\n", a->opt);
  if (pbjson_parse(&traind__v1__optimizer__descriptor, doc, strlen(doc),
                   (ProtobufCMessage **)&m->opt, &err))
    die("parsing the optimizer", &err);
  if (td_plan_compile(m->model, m->opt, BATCH, "cpu:0", &m->plan, &err))
    die("td_plan_compile", &err);
  if (td_cpu_backend_create(&m->be, 1, &err))
    die("td_cpu_backend_create", &err);
  if (td_state_init(&m->st, m->plan, m->be, &err))
    die("td_state_init", &err);
  m->have_state = 1;
  if (td_state_init_params(&m->st, td_prng_key(0), &err))
    die("td_state_init_params", &err);
}

static void model_free(bench_model *m) {
  if (m->have_state)
    td_state_free(&m->st);
  td_backend_destroy(m->be);
  td_plan_free(m->plan);
  if (m->opt)
    protobuf_c_message_free_unpacked(&m->opt->base, NULL);
  if (m->model)
    protobuf_c_message_free_unpacked(&m->model->base, NULL);
}

/* Copies parameters and optimizer state out of the backend into host:
 * (n_params) then (state_slots * n_params), as td_ckpt_image wants them. */
static void snapshot(const bench_model *m, float *host) {
  const td_backend_ops *ops = m->be->ops;
  size_t np = m->plan->n_params, no = m->plan->optim.state_slots * np;
  td_error err = {0};
  int rc = ops->download(m->be, host, m->st.params, np * sizeof(float));
  if (!rc && no)
    rc = ops->download(m->be, host + np, m->st.opt_state, no * sizeof(float));
  if (rc) {
    td_errorf(&err, rc, "%s backend: %s", ops->name, td_strerror(rc));
    die("downloading the state", &err);
  }
}

static uint32_t crc_bytes(const void *p, size_t len) {
  const unsigned char *b = p;
  uLong crc = crc32(0L, Z_NULL, 0);
  while (len) {
    uInt chunk = len > (1u << 30) ? (1u << 30) : (uInt)len;
    crc = crc32(crc, b, chunk);
    b += chunk;
    len -= chunk;
  }
  return (uint32_t)crc;
}

/* Writes len bytes to path with write(2), going round the b_len bytes of b
 * as often as needed, then fsyncs and removes the file. */
static void posix_write(const char *path, const void *b, size_t b_len, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    die_errno("cannot create", path);
  size_t at = 0;
  while (len) {
    size_t n = b_len - at;
    if (n > len)
      n = len;
    if (n > (1u << 30))
      n = 1u << 30;
    ssize_t w = write(fd, (const char *)b + at, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      if (w == 0)
        errno = ENOSPC;
      die_errno("writing", path);
    }
    at = (at + (size_t)w) % b_len;
    len -= (size_t)w;
  }
  if (fsync(fd) != 0)
    die_errno("fsync of", path);
  if (close(fd) != 0)
    die_errno("closing", path);
  if (unlink(path) != 0)
    die_errno("cannot remove", path);
}

/* Drops the (clean, fsynced) pages of path from the page cache. */
static void drop_cache(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    die_errno("cannot open", path);
  int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  if (rc) {
    errno = rc;
    die_errno("posix_fadvise(DONTNEED) of", path);
  }
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Prints s as a JSON string. */
static void print_json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

/* The opening of an output object: what was measured and where. */
static void print_head(const bench_args *a, const char *name, size_t n_params, off_t file_bytes) {
  printf("{\"bench\":\"ckpt_write\",\"model\":\"%s\",\"opt\":\"%s\",\"dir\":", name, a->opt);
  print_json_str(a->dir);
  printf(",\"read_cache\":\"%s\",\"file_memory\":\"%s\",\"n_params\":%zu,"
         "\"file_bytes\":%lld",
         a->warm_read ? "warm" : "cold", a->fresh_memory ? "fresh" : "kept", n_params,
         (long long)file_bytes);
}

static void print_figure(const char *sep, int f, double v) {
  printf(f == F_WRITE_MINFLT ? "%s\"%s\":%.0f" : "%s\"%s\":%.6g", sep, figure_names[f], v);
}

static void print_figures(const char *key, const double *v) {
  printf(",\"%s\":{", key);
  for (int f = 0; f < N_FIGURES; f++)
    print_figure(f ? "," : "", f, v[f]);
  printf("}");
}

int main(int argc, char **argv) {
  bench_args a = parse_args(argc, argv);
  bench_model m;
  model_init(&m, &a);
  const td_plan *p = m.plan;
  const td_backend_ops *ops = m.be->ops;
  size_t np = p->n_params, no = p->optim.state_slots * np;
  td_error err = {0};

  char name[NAME_MAX_LEN];
  size_t nl = (size_t)snprintf(name, sizeof name, "mlp");
  for (int i = 0; i < a.n_widths && nl < sizeof name; i++)
    nl += (size_t)snprintf(name + nl, sizeof name - nl, "-%u", a.widths[i]);
  char path[PATH_MAX], raw[PATH_MAX];
  if ((size_t)snprintf(path, sizeof path, "%s/ckpt-bench.h5", a.dir) >= sizeof path ||
      (size_t)snprintf(raw, sizeof raw, "%s/.ckpt-bench.raw", a.dir) >= sizeof raw) {
    fprintf(stderr, "ckpt_write_bench: --dir is too long\n");
    return 2;
  }

  /* The snapshot buffer is allocated and touched once, as the daemon's is. */
  float *host = malloc((np + no + 1) * sizeof(float));
  bench_rep *reps = calloc((size_t)a.reps, sizeof *reps);
  if (!host || !reps) {
    fprintf(stderr, "ckpt_write_bench: cannot allocate %.1f MiB of host memory\n",
            (double)(np + no) * 4.0 / (1024.0 * 1024.0));
    return 1;
  }
  /* Not zero: the compiler would make malloc and a zeroing memset a calloc,
   * which leaves the pages untouched. */
  memset(host, 0xff, (np + no + 1) * sizeof(float));
  /* Random optimizer state, as after some training (a zero file could be
   * written faster by storage that detects zeros). */
  if (no) {
    td_prng_normal(td_prng_key(1), host + np, no);
    int rc = ops->upload(m.be, m.st.opt_state, host + np, no * sizeof(float));
    if (rc) {
      td_errorf(&err, rc, "%s backend: %s", ops->name, td_strerror(rc));
      die("uploading the optimizer state", &err);
    }
  }
  m.st.step = 1000;

  const td_ckpt_meta meta = {.step = 1000,
                             .epoch = 3,
                             .step_in_epoch = 62,
                             .root_key = td_prng_key(0),
                             .seed = 0,
                             .spec_json = NULL};
  uint32_t want_crc = 0;
  off_t file_bytes = 0;
  td_ckpt_buffer file_mem = {0};
  for (int r = 0; r < a.reps; r++) {
    bench_rep *x = &reps[r];
    double t0 = td_mono_sec();
    snapshot(&m, host);
    x->v[F_SNAPSHOT_MS] = (td_mono_sec() - t0) * 1e3;

    t0 = td_mono_sec();
    want_crc = crc_bytes(host, (np + no) * sizeof(float));
    x->v[F_CRC32_SEC] = td_mono_sec() - t0;

    td_ckpt_image img = {.plan = p,
                         .params = host,
                         .opt_state = host + np,
                         .count = m.st.step,
                         .reuse = a.fresh_memory ? NULL : &file_mem};
    struct rusage ru0, ru1;
    getrusage(RUSAGE_THREAD, &ru0);
    t0 = td_mono_sec();
    if (td_ckpt_write_image(path, &img, &meta, &err))
      die("td_ckpt_write_image", &err);
    x->v[F_WRITE_SEC] = td_mono_sec() - t0;
    getrusage(RUSAGE_THREAD, &ru1);
    x->v[F_WRITE_USER_SEC] = tv_sec(ru1.ru_utime) - tv_sec(ru0.ru_utime);
    x->v[F_WRITE_SYS_SEC] = tv_sec(ru1.ru_stime) - tv_sec(ru0.ru_stime);
    x->v[F_WRITE_MINFLT] = (double)(ru1.ru_minflt - ru0.ru_minflt);
    struct stat sb;
    if (stat(path, &sb) != 0)
      die_errno("cannot stat", path);
    file_bytes = sb.st_size;
    x->v[F_WRITE_MBPS] = (double)file_bytes / 1e6 / x->v[F_WRITE_SEC];

    t0 = td_mono_sec();
    posix_write(raw, host, (np + no) * sizeof(float), (size_t)file_bytes);
    x->v[F_POSIX_SEC] = td_mono_sec() - t0;
    x->v[F_POSIX_MBPS] = (double)file_bytes / 1e6 / x->v[F_POSIX_SEC];

    /* Clear the state so that the read has to load every value. */
    int rc = ops->fill(m.be, m.st.params, np, 0.0f);
    if (!rc && no)
      rc = ops->fill(m.be, m.st.opt_state, no, 0.0f);
    if (rc) {
      td_errorf(&err, rc, "%s backend: %s", ops->name, td_strerror(rc));
      die("clearing the state", &err);
    }
    m.st.step = 0;
    if (!a.warm_read)
      drop_cache(path);
    t0 = td_mono_sec();
    if (td_ckpt_read(path, &m.st, NULL, &err))
      die("td_ckpt_read", &err);
    x->v[F_READ_SEC] = td_mono_sec() - t0;
    x->v[F_READ_MBPS] = (double)file_bytes / 1e6 / x->v[F_READ_SEC];
    if (m.st.step != img.count) {
      fprintf(stderr, "ckpt_write_bench: read step %lld, wrote %lld\n", (long long)m.st.step,
              (long long)img.count);
      return 1;
    }

    print_head(&a, name, np, file_bytes);
    printf(",\"rep\":%d", r + 1);
    for (int f = 0; f < N_FIGURES; f++)
      print_figure(",", f, x->v[f]);
    printf("}\n");
    fflush(stdout);
  }

  /* The state read back equals the snapshot it was written from. */
  snapshot(&m, host);
  if (crc_bytes(host, (np + no) * sizeof(float)) != want_crc) {
    fprintf(stderr, "ckpt_write_bench: the state read back differs from the one written\n");
    return 1;
  }

  double med[N_FIGURES], lo[N_FIGURES], hi[N_FIGURES];
  double *col = malloc((size_t)a.reps * sizeof *col);
  if (!col) {
    fprintf(stderr, "ckpt_write_bench: out of memory\n");
    return 1;
  }
  for (int f = 0; f < N_FIGURES; f++) {
    for (int r = 0; r < a.reps; r++)
      col[r] = reps[r].v[f];
    med[f] = median(col, a.reps);
    lo[f] = col[0];
    hi[f] = col[a.reps - 1];
  }
  print_head(&a, name, np, file_bytes);
  printf(",\"summary\":true,\"reps\":%d", a.reps);
  print_figures("median", med);
  print_figures("min", lo);
  print_figures("max", hi);
  printf("}\n");

  free(col);
  free(reps);
  free(host);
  td_ckpt_buffer_free(&file_mem);
  model_free(&m);
  return 0;
}
