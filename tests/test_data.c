/* Datasets: IDX (plain and gzipped) and HDF5 files written here, every error
 * case of both loaders, path resolution under data roots (including symlink
 * and ".." escapes), gathering, and real MNIST when TRAIND_DATA_DIR is set. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "clock.h"
#include "data.h"

static char tmp[256];

static const char *at(const char *rel) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, 512, "%s/%s", tmp, rel);
  return b;
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  CHECK(f && fwrite(data, 1, len, f) == len && fclose(f) == 0, "writing %s", path);
}

static void write_gz(const char *path, const void *data, size_t len) {
  gzFile f = gzopen(path, "wb");
  CHECK(f && gzwrite(f, data, (unsigned)len) == (int)len && gzclose(f) == Z_OK, "writing %s", path);
}

static size_t put_be32(unsigned char *p, uint32_t v) {
  p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
  return 4;
}

/* Images: n examples of rows x cols, pixel (i, j) = (7 i + 3 j) mod 256. */
static size_t idx_images(unsigned char *buf, uint32_t magic, uint32_t n, uint32_t rows,
                         uint32_t cols) {
  size_t o = put_be32(buf, magic);
  o += put_be32(buf + o, n);
  o += put_be32(buf + o, rows);
  o += put_be32(buf + o, cols);
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < rows * cols; j++)
      buf[o++] = (unsigned char)((7 * i + 3 * j) % 256);
  return o;
}

/* Labels: label i = i mod 3, except the last, which is 9. */
static size_t idx_labels(unsigned char *buf, uint32_t magic, uint32_t n) {
  size_t o = put_be32(buf, magic);
  o += put_be32(buf + o, n);
  for (uint32_t i = 0; i < n; i++)
    buf[o++] = (unsigned char)(i + 1 == n ? 9 : i % 3);
  return o;
}

#define EXPECT_FAIL(call, want_code, ...)                                                     \
  do {                                                                                        \
    td_error e_ = {0};                                                                        \
    td_dataset d_ = {0};                                                                      \
    (void)d_;                                                                                 \
    int rc_ = (call);                                                                         \
    CHECK(rc_ == (want_code), "%s returned %d (%s), want %d", #call, rc_, e_.msg, want_code); \
    const char *needles_[] = {__VA_ARGS__};                                                   \
    for (size_t k_ = 0; k_ < sizeof needles_ / sizeof *needles_; k_++)                        \
      CHECK_STR_CONTAINS(e_.msg, needles_[k_]);                                               \
    td_dataset_free(&d_);                                                                     \
  } while (0)

static void check_small(const td_dataset *ds, uint32_t n, const char *what) {
  CHECK(ds->n == n && ds->dim == 12 && ds->ndim == 2 && ds->shape[0] == 3 && ds->shape[1] == 4,
        "%s: n %u dim %u ndim %u shape %ux%u", what, ds->n, ds->dim, ds->ndim, ds->shape[0],
        ds->shape[1]);
  int ok = ds->x && ds->y;
  for (uint32_t i = 0; ok && i < ds->n; i++) {
    for (uint32_t j = 0; j < 12; j++)
      if (ds->x[i * 12 + j] != (float)((7 * i + 3 * j) % 256) / 255.0f)
        ok = 0;
    if (ds->y[i] != (i == 4 ? 9 : (int32_t)(i % 3)))
      ok = 0;
  }
  CHECK(ok, "%s: wrong pixel or label values", what);
}

static void test_idx(void) {
  unsigned char img[16 + 5 * 12 + 16], lab[8 + 5 + 8];
  size_t ni = idx_images(img, 0x803, 5, 3, 4), nl = idx_labels(lab, 0x801, 5);
  write_file(at("img"), img, ni);
  write_file(at("lab"), lab, nl);
  write_gz(at("img.gz"), img, ni);
  write_gz(at("lab.gz"), lab, nl);

  td_dataset ds = {0};
  td_error err = {0};
  CHECK(td_idx_load(at("img"), at("lab"), 0, &ds, &err) == 0, "plain IDX: %s", err.msg);
  check_small(&ds, 5, "plain");
  CHECK(ds.max_label == 9, "max_label %d", ds.max_label);
  td_dataset_free(&ds);
  CHECK(ds.x == NULL && ds.n == 0, "free does not reset");

  CHECK(td_idx_load(at("img.gz"), at("lab.gz"), 0, &ds, &err) == 0, "gzipped IDX: %s", err.msg);
  check_small(&ds, 5, "gzip");
  td_dataset_free(&ds);

  CHECK(td_idx_load(at("img.gz"), at("lab"), 2, &ds, &err) == 0, "limit 2: %s", err.msg);
  check_small(&ds, 2, "limit");
  CHECK(ds.max_label == 1, "max_label over the kept examples %d", ds.max_label);
  td_dataset_free(&ds);
  CHECK(td_idx_load(at("img"), at("lab"), 99, &ds, &err) == 0 && ds.n == 5, "limit 99: %s",
        err.msg);
  td_dataset_free(&ds);

  /* Bad magic: labels given as images, images given as labels, text. */
  EXPECT_FAIL(td_idx_load(at("lab"), at("lab"), 0, &d_, &e_), TD_EDATA, "/lab'",
              "not an IDX image file", "0x00000801");
  EXPECT_FAIL(td_idx_load(at("img"), at("img"), 0, &d_, &e_), TD_EDATA, "/img'",
              "not an IDX label file");
  write_file(at("text"), "hello, world\n", 13);
  EXPECT_FAIL(td_idx_load(at("text"), at("lab"), 0, &d_, &e_), TD_EDATA, "text'",
              "not an IDX image file");
  write_file(at("short"), "\0\0", 2);
  EXPECT_FAIL(td_idx_load(at("short"), at("lab"), 0, &d_, &e_), TD_EDATA, "short'", "only 2 bytes");
  /* A signed-int IDX (type 0x0C) is not accepted as pixels. */
  unsigned char bad[16 + 60];
  idx_images(bad, 0x0C03, 5, 3, 4);
  write_file(at("int32img"), bad, sizeof bad);
  EXPECT_FAIL(td_idx_load(at("int32img"), at("lab"), 0, &d_, &e_), TD_EDATA, "0x00000c03");

  /* Truncated payload, plain and gzipped; truncated header; trailing bytes. */
  write_file(at("trunc"), img, ni - 3);
  EXPECT_FAIL(td_idx_load(at("trunc"), at("lab"), 0, &d_, &e_), TD_EDATA, "trunc'",
              "truncated: expected 60 bytes of pixel data, found 57");
  write_gz(at("trunc.gz"), img, ni - 3);
  EXPECT_FAIL(td_idx_load(at("trunc.gz"), at("lab"), 0, &d_, &e_), TD_EDATA,
              "truncated: expected 60 bytes of pixel data, found 57");
  write_file(at("trunclab"), lab, nl - 1);
  EXPECT_FAIL(td_idx_load(at("img"), at("trunclab"), 0, &d_, &e_), TD_EDATA, "trunclab'",
              "expected 5 bytes of label data, found 4");
  write_file(at("hdr"), img, 10);
  EXPECT_FAIL(td_idx_load(at("hdr"), at("lab"), 0, &d_, &e_), TD_EDATA, "hdr'", "header");
  memcpy(img + ni, "\1\2\3\4\5\6\7\10", 8);
  write_file(at("trail"), img, ni + 8);
  EXPECT_FAIL(td_idx_load(at("trail"), at("lab"), 0, &d_, &e_), TD_EDATA, "trail'",
              "8 bytes of trailing data");

  /* A gzip stream cut in half. */
  FILE *f = fopen(at("img.gz"), "rb");
  unsigned char gz[512];
  size_t ngz = f ? fread(gz, 1, sizeof gz, f) : 0;
  if (f)
    fclose(f);
  write_file(at("cut.gz"), gz, ngz / 2);
  EXPECT_FAIL(td_idx_load(at("cut.gz"), at("lab"), 0, &d_, &e_), TD_EDATA, "cut.gz'");
  /* Corrupt deflate data after a valid gzip header. */
  for (size_t i = 12; i < ngz - 8; i++)
    gz[i] ^= 0x5a;
  write_file(at("corrupt.gz"), gz, ngz);
  EXPECT_FAIL(td_idx_load(at("corrupt.gz"), at("lab"), 0, &d_, &e_), TD_EDATA, "corrupt.gz'");

  /* Counts that differ, zero and absurd dimensions, missing files. */
  size_t nl4 = idx_labels(lab, 0x801, 4);
  write_file(at("lab4"), lab, nl4);
  EXPECT_FAIL(td_idx_load(at("img"), at("lab4"), 0, &d_, &e_), TD_EDATA, "holds 5 images",
              "holds 4 labels");
  unsigned char hdr[16];
  put_be32(hdr, 0x803), put_be32(hdr + 4, 5), put_be32(hdr + 8, 0), put_be32(hdr + 12, 4);
  write_file(at("zero"), hdr, 16);
  EXPECT_FAIL(td_idx_load(at("zero"), at("lab"), 0, &d_, &e_), TD_EDATA, "zero'", "dimension 1",
              "is 0");
  put_be32(hdr + 4, 60000), put_be32(hdr + 8, 60000), put_be32(hdr + 12, 60000);
  write_file(at("huge"), hdr, 16);
  EXPECT_FAIL(td_idx_load(at("huge"), at("lab"), 0, &d_, &e_), TD_EDATA, "huge'", "2^31");
  EXPECT_FAIL(td_idx_load(at("nonexistent"), at("lab"), 0, &d_, &e_), TD_ENOTFOUND, "nonexistent'",
              "No such file");
  EXPECT_FAIL(td_idx_load(at("img"), at("nolabels"), 0, &d_, &e_), TD_ENOTFOUND, "nolabels'");
}

/* ---- HDF5 ---- */

static hid_t h5_file(const char *path, int create) {
  return create ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)
                : H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
}

/* Writes `data` (in the native type mtype) as dataset `name` of file type ftype. */
static void h5_put_as(const char *path, int create, const char *name, hid_t ftype, hid_t mtype,
                      int rank, const hsize_t *dims, const void *data) {
  hid_t f = h5_file(path, create);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t s = H5Screate_simple(rank, dims, NULL);
  hid_t d = H5Dcreate2(f, name, ftype, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(f >= 0 && d >= 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
        "writing %s:%s", path, name);
  H5Dclose(d);
  H5Sclose(s);
  H5Pclose(lcpl);
  H5Fclose(f);
}

static void h5_put(const char *path, int create, const char *name, hid_t type, int rank,
                   const hsize_t *dims, const void *data) {
  h5_put_as(path, create, name, type, type, rank, dims, data);
}

/* Runs `call` with stderr redirected to a file and returns how many bytes it
 * printed there. */
static long stderr_bytes_during(void (*call)(void)) {
  fflush(stderr);
  int saved = dup(2);
  int fd = open(at("stderr.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(fd, 2);
  call();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  struct stat st;
  long n = fstat(fd, &st) == 0 ? (long)st.st_size : -1;
  close(fd);
  return n;
}

static td_error quiet_err;
static int quiet_rc;
static void missing_dataset_quietly(void) {
  td_dataset ds = {0};
  quiet_rc = td_hdf5_load(at("u8.h5"), "nope", "labels", 0, &ds, &quiet_err);
}

static void test_hdf5(void) {
  enum { N = 6 };
  unsigned char u8[N][2][3];
  int64_t lab64[N];
  float f32[N][4];
  uint8_t labu8[N][1];
  double f64[N][2][2][2];
  int16_t lab16[N];
  for (int i = 0; i < N; i++) {
    for (int j = 0; j < 6; j++)
      u8[i][j / 3][j % 3] = (unsigned char)(40 * i + j);
    for (int j = 0; j < 4; j++)
      f32[i][j] = 0.25f * i - 1.5f * j;
    for (int j = 0; j < 8; j++)
      f64[i][j / 4][(j / 2) % 2][j % 2] = 0.1 * i + j;
    lab64[i] = 7 * i;
    labu8[i][0] = (uint8_t)(i % 2);
    lab16[i] = (int16_t)(100 + i);
  }
  const hsize_t d_u8[3] = {N, 2, 3}, d_n[1] = {N}, d_f32[2] = {N, 4}, d_n1[2] = {N, 1},
                d_f64[4] = {N, 2, 2, 2};
  h5_put(at("u8.h5"), 1, "features", H5T_NATIVE_UCHAR, 3, d_u8, u8);
  h5_put(at("u8.h5"), 0, "labels", H5T_NATIVE_INT64, 1, d_n, lab64);
  h5_put(at("f32.h5"), 1, "x", H5T_NATIVE_FLOAT, 2, d_f32, f32);
  h5_put(at("f32.h5"), 0, "y", H5T_NATIVE_UINT8, 2, d_n1, labu8);
  h5_put(at("f64.h5"), 1, "train/x", H5T_NATIVE_DOUBLE, 4, d_f64, f64);
  h5_put_as(at("f64.h5"), 0, "train/y", H5T_STD_I16BE, H5T_NATIVE_INT16, 1, d_n, lab16);

  td_dataset ds = {0};
  td_error err = {0};
  CHECK(td_hdf5_load(at("u8.h5"), "features", "labels", 0, &ds, &err) == 0, "u8: %s", err.msg);
  CHECK(ds.n == N && ds.dim == 6 && ds.ndim == 2 && ds.shape[0] == 2 && ds.shape[1] == 3,
        "u8 shape n %u dim %u", ds.n, ds.dim);
  int ok = ds.x && ds.y;
  for (int i = 0; ok && i < N; i++) {
    for (int j = 0; j < 6; j++)
      ok &= ds.x[i * 6 + j] == (float)(40 * i + j) / 255.0f;
    ok &= ds.y[i] == 7 * i;
  }
  CHECK(ok && ds.max_label == 35, "u8 values (max_label %d)", ds.max_label);
  td_dataset_free(&ds);

  CHECK(td_hdf5_load(at("f32.h5"), "x", "y", 0, &ds, &err) == 0, "f32: %s", err.msg);
  ok = ds.n == N && ds.dim == 4 && ds.ndim == 1 && ds.shape[0] == 4;
  for (int i = 0; ok && i < N; i++) {
    for (int j = 0; j < 4; j++)
      ok &= ds.x[i * 4 + j] == f32[i][j];
    ok &= ds.y[i] == i % 2;
  }
  CHECK(ok && ds.max_label == 1, "f32 values");
  td_dataset_free(&ds);

  CHECK(td_hdf5_load(at("f64.h5"), "train/x", "/train/y", 3, &ds, &err) == 0, "f64: %s", err.msg);
  ok = ds.n == 3 && ds.dim == 8 && ds.ndim == 3 && ds.shape[0] == 2 && ds.shape[2] == 2;
  for (int i = 0; ok && i < 3; i++) {
    for (int j = 0; j < 8; j++)
      ok &= ds.x[i * 8 + j] == (float)(0.1 * i + j);
    ok &= ds.y[i] == 100 + i;
  }
  CHECK(ok && ds.max_label == 102, "f64 values with limit 3");
  td_dataset_free(&ds);

  /* Failures, each naming the file and the dataset. */
  EXPECT_FAIL(td_hdf5_load(at("none.h5"), "x", "y", 0, &d_, &e_), TD_ENOTFOUND, "none.h5'");
  write_file(at("text.h5"), "not hdf5 at all\n", 16);
  EXPECT_FAIL(td_hdf5_load(at("text.h5"), "x", "y", 0, &d_, &e_), TD_EDATA,
              "text.h5' is not an HDF5 file");
  EXPECT_FAIL(td_hdf5_load(at("u8.h5"), "nope", "labels", 0, &d_, &e_), TD_ENOTFOUND, "u8.h5'",
              "no dataset 'nope'", "features, labels");
  EXPECT_FAIL(td_hdf5_load(at("u8.h5"), "features", "train/nope", 0, &d_, &e_), TD_ENOTFOUND,
              "no dataset 'train/nope' (the labels)");
  EXPECT_FAIL(td_hdf5_load(at("u8.h5"), "labels", "labels", 0, &d_, &e_), TD_EDATA,
              "features 'labels' have shape (6)");
  EXPECT_FAIL(td_hdf5_load(at("u8.h5"), "features", "features", 0, &d_, &e_), TD_EDATA,
              "labels 'features' have shape (6, 2, 3)");

  int16_t i16[N][3] = {{0}};
  const hsize_t d_i16[2] = {N, 3};
  float flab[N] = {0};
  int32_t neg[N] = {0, 1, 2, -3, 4, 5};
  uint8_t lab5[5] = {0};
  const hsize_t d_5[1] = {5};
  float nanx[N][2] = {{0}};
  nanx[4][1] = NAN;
  const hsize_t d_nan[2] = {N, 2};
  h5_put(at("bad.h5"), 1, "int16x", H5T_NATIVE_INT16, 2, d_i16, i16);
  h5_put(at("bad.h5"), 0, "floaty", H5T_NATIVE_FLOAT, 1, d_n, flab);
  h5_put(at("bad.h5"), 0, "negy", H5T_NATIVE_INT32, 1, d_n, neg);
  h5_put(at("bad.h5"), 0, "y5", H5T_NATIVE_UINT8, 1, d_5, lab5);
  h5_put(at("bad.h5"), 0, "wide", H5T_NATIVE_FLOAT, 2, d_f32, f32);
  h5_put(at("bad.h5"), 0, "nanx", H5T_NATIVE_FLOAT, 2, d_nan, nanx);
  h5_put(at("bad.h5"), 0, "y", H5T_NATIVE_UINT8, 1, d_n, labu8);
  EXPECT_FAIL(td_hdf5_load(at("bad.h5"), "int16x", "y", 0, &d_, &e_), TD_EDATA, "bad.h5'",
              "features 'int16x' have type int16");
  EXPECT_FAIL(td_hdf5_load(at("bad.h5"), "wide", "floaty", 0, &d_, &e_), TD_EDATA,
              "labels 'floaty' have type float32; expected an integer type");
  EXPECT_FAIL(td_hdf5_load(at("bad.h5"), "wide", "negy", 0, &d_, &e_), TD_EDATA,
              "labels 'negy' hold the negative value -3 at example 3");
  EXPECT_FAIL(td_hdf5_load(at("bad.h5"), "wide", "y5", 0, &d_, &e_), TD_EDATA,
              "features 'wide' hold 6 examples but labels 'y5' hold 5");
  EXPECT_FAIL(td_hdf5_load(at("bad.h5"), "wide", "wide", 0, &d_, &e_), TD_EDATA,
              "labels 'wide' have shape (6, 4); expected (N) or (N, 1)");
  EXPECT_FAIL(td_hdf5_load(at("bad.h5"), "nanx", "y", 0, &d_, &e_), TD_EDATA,
              "non-finite value (nan) in example 4");
  /* Labels read with a limit stop before the bad one. */
  CHECK(td_hdf5_load(at("bad.h5"), "wide", "negy", 3, &ds, &err) == 0 && ds.n == 3,
        "limit before a bad label: %s", err.msg);
  td_dataset_free(&ds);

  /* HDF5 prints nothing of its own. */
  long printed = stderr_bytes_during(missing_dataset_quietly);
  CHECK(quiet_rc == TD_ENOTFOUND && printed == 0, "rc %d, %ld bytes on stderr (%s)", quiet_rc,
        printed, quiet_err.msg);
}

/* ---- path resolution ---- */

static void mkdirs(const char *rel) {
  CHECK(mkdir(at(rel), 0755) == 0, "mkdir %s: %s", rel, strerror(errno));
}
static void touch(const char *rel) { write_file(at(rel), "x", 1); }

static void expect_resolved(const char *const *roots, size_t n, const char *rel, int alt_gz,
                            const char *want_rel) {
  char out[4096], want[4096];
  td_error err = {0};
  int rc = td_data_resolve(roots, n, rel, alt_gz, out, sizeof out, &err);
  CHECK(realpath(at(want_rel), want) != NULL, "realpath %s", want_rel);
  CHECK(rc == 0 && strcmp(out, want) == 0, "resolve '%s': rc %d, got '%s', want '%s' (%s)", rel, rc,
        rc == 0 ? out : "", want, err.msg);
}

static void test_resolve(void) {
  mkdirs("r1");
  mkdirs("r2");
  mkdirs("r2/mnist");
  mkdirs("outside");
  touch("r2/mnist/a.idx");
  touch("r1/both");
  touch("r2/both");
  touch("r2/d.gz");
  touch("r1/e");
  touch("outside/secret");
  CHECK(symlink(at("outside/secret"), at("r1/escape")) == 0, "symlink");
  CHECK(symlink(at("outside"), at("r1/outdir")) == 0, "symlink");
  CHECK(symlink(at("r2/mnist/a.idx"), at("r1/inlink")) == 0, "symlink");
  CHECK(symlink("../r2/mnist", at("r1/reldir")) == 0, "symlink");

  char r1[512], r2[512], gone[512], out[4096];
  snprintf(r1, sizeof r1, "%s", at("r1"));
  snprintf(r2, sizeof r2, "%s", at("r2"));
  snprintf(gone, sizeof gone, "%s", at("gone"));
  const char *roots[3] = {r1, r2, gone};

  expect_resolved(roots, 2, "mnist/a.idx", 0, "r2/mnist/a.idx"); /* second root */
  expect_resolved(roots, 2, "both", 0, "r1/both");               /* first root wins */
  expect_resolved(roots, 2, "d", 1, "r2/d.gz");                  /* ".gz" added */
  expect_resolved(roots, 2, "e.gz", 1, "r1/e");                  /* ".gz" removed */
  expect_resolved(roots, 2, "./mnist//a.idx", 0, "r2/mnist/a.idx");
  expect_resolved(roots, 2, "inlink", 0, "r2/mnist/a.idx"); /* symlink within the roots */
  expect_resolved(roots, 2, "reldir/a.idx", 0, "r2/mnist/a.idx");
  expect_resolved(roots, 2, "../r2/mnist/a.idx", 0, "r2/mnist/a.idx");  /* ".." that stays inside */
  expect_resolved(roots, 2, at("r2/mnist/a.idx"), 0, "r2/mnist/a.idx"); /* absolute, inside */
  expect_resolved(roots, 3, "mnist/a.idx", 1, "r2/mnist/a.idx"); /* a missing root is skipped */

  EXPECT_FAIL(td_data_resolve(roots, 2, "d", 0, out, sizeof out, &e_), TD_ENOTFOUND,
              "'d' not found", r1, r2);
  EXPECT_FAIL(td_data_resolve(roots, 3, "mnist/x.idx", 1, out, sizeof out, &e_), TD_ENOTFOUND,
              "'mnist/x.idx' (or 'mnist/x.idx.gz') not found", r1, r2, "gone (missing)",
              "--data-dir");
  EXPECT_FAIL(td_data_resolve(roots, 2, "../outside/secret", 0, out, sizeof out, &e_), TD_EPERM,
              "dataset path '../outside/secret' escapes the data roots", r1, r2);
  EXPECT_FAIL(
      td_data_resolve(roots, 2, "mnist/../../../outside/nothing-here", 0, out, sizeof out, &e_),
      TD_EPERM, "escapes");
  EXPECT_FAIL(td_data_resolve(roots, 2, at("outside/secret"), 0, out, sizeof out, &e_), TD_EPERM,
              "escapes");
  EXPECT_FAIL(td_data_resolve(roots, 2, "/etc/passwd", 0, out, sizeof out, &e_), TD_EPERM,
              "'/etc/passwd' escapes");
  EXPECT_FAIL(td_data_resolve(roots, 2, "/no/such/file", 0, out, sizeof out, &e_), TD_EPERM,
              "escapes");
  EXPECT_FAIL(td_data_resolve(roots, 2, "escape", 0, out, sizeof out, &e_), TD_EPERM,
              "'escape' escapes", "outside/secret");
  EXPECT_FAIL(td_data_resolve(roots, 2, "outdir/secret", 0, out, sizeof out, &e_), TD_EPERM,
              "escapes");
  char under_gone[600];
  snprintf(under_gone, sizeof under_gone, "%s/mnist/a.idx", gone);
  EXPECT_FAIL(td_data_resolve(roots, 3, under_gone, 0, out, sizeof out, &e_), TD_ENOTFOUND,
              "gone (missing)");
  EXPECT_FAIL(td_data_resolve(roots, 0, "x", 0, out, sizeof out, &e_), TD_EINVAL, "--data-dir");
  EXPECT_FAIL(td_data_resolve(roots, 2, "", 0, out, sizeof out, &e_), TD_EINVAL, "empty");
  EXPECT_FAIL(td_data_resolve(roots, 2, "both", 0, out, 4, &e_), TD_EINVAL, "too long");

  /* A relative root is taken from the working directory. */
  char cwd[4096];
  CHECK(getcwd(cwd, sizeof cwd) != NULL && chdir(tmp) == 0, "chdir");
  const char *rel_roots[1] = {"r2"};
  expect_resolved(rel_roots, 1, "mnist/a.idx", 0, "r2/mnist/a.idx");
  EXPECT_FAIL(td_data_resolve(rel_roots, 1, "../r1/both", 0, out, sizeof out, &e_), TD_EPERM,
              "escapes");
  CHECK(chdir(cwd) == 0, "chdir back");
}

static void test_gather(void) {
  float x[4 * 3];
  int32_t y[4] = {10, 11, 12, 13};
  for (int i = 0; i < 12; i++)
    x[i] = (float)i;
  td_dataset ds = {.n = 4, .dim = 3, .ndim = 1, .shape = {3}, .x = x, .y = y, .max_label = 13};
  const uint32_t idx[3] = {2, 0, 2};
  float dst[9];
  int32_t lab[3];
  td_dataset_gather(&ds, idx, 3, dst, lab);
  const float want[9] = {6, 7, 8, 0, 1, 2, 6, 7, 8};
  CHECK(memcmp(dst, want, sizeof want) == 0 && lab[0] == 12 && lab[1] == 10 && lab[2] == 12,
        "gather rows 2, 0, 2");
  float dst2[3] = {0};
  td_dataset_gather(&ds, idx + 1, 1, dst2, NULL);
  CHECK(dst2[0] == 0 && dst2[2] == 2, "gather without labels");
}

/* ---- real MNIST ---- */

/* A load takes about a second on a loaded 2-core machine; a sanitizer
 * build is several times slower. Far longer means a slow path crept in. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MNIST_LOAD_SEC 20.0
#else
#define MNIST_LOAD_SEC 5.0
#endif

static void check_mnist(const char *root, const char *images, const char *labels, uint32_t n,
                        const unsigned *hist, uint64_t pixel_sum, td_dataset *ds) {
  const char *roots[1] = {root};
  char ipath[4096], lpath[4096];
  td_error err = {0};
  /* Names without ".gz", as a job file might give them. */
  CHECK(td_data_resolve(roots, 1, images, 1, ipath, sizeof ipath, &err) == 0, "%s", err.msg);
  CHECK(td_data_resolve(roots, 1, labels, 1, lpath, sizeof lpath, &err) == 0, "%s", err.msg);
  double t0 = td_mono_sec();
  int rc = td_idx_load(ipath, lpath, 0, ds, &err);
  double dt = td_mono_sec() - t0;
  CHECK(rc == 0, "loading %s: %s", images, err.msg);
  if (rc)
    return;
  printf("loaded %s: %u examples in %.3f s\n", images, ds->n, dt);
  CHECK(dt < MNIST_LOAD_SEC, "loading %s took %.2f s (limit %.0f s)", images, dt, MNIST_LOAD_SEC);
  CHECK(ds->n == n && ds->dim == 784 && ds->ndim == 2 && ds->shape[0] == 28 && ds->shape[1] == 28,
        "%s: n %u dim %u", images, ds->n, ds->dim);
  CHECK(ds->max_label == 9, "max_label %d", ds->max_label);
  unsigned h[10] = {0};
  int labels_ok = 1;
  for (uint32_t i = 0; i < ds->n; i++) {
    if (ds->y[i] < 0 || ds->y[i] > 9)
      labels_ok = 0;
    else
      h[ds->y[i]]++;
  }
  CHECK(labels_ok, "labels outside 0..9");
  CHECK(memcmp(h, hist, sizeof h) == 0, "%s label histogram %u %u %u ... %u", labels, h[0], h[1],
        h[2], h[9]);
  /* Every pixel is exactly v / 255 for an integer v; their sum is known. */
  uint64_t sum = 0;
  int exact = 1;
  float lo = 1, hi = 0;
  for (size_t i = 0; i < (size_t)ds->n * ds->dim; i++) {
    float v = ds->x[i];
    long q = lrintf(v * 255.0f);
    if (q < 0 || q > 255 || v != (float)q / 255.0f)
      exact = 0;
    sum += (uint64_t)q;
    if (v < lo)
      lo = v;
    if (v > hi)
      hi = v;
  }
  CHECK(exact && lo == 0.0f && hi == 1.0f, "pixels not v/255 in [0, 1] (min %g max %g)", lo, hi);
  CHECK(sum == pixel_sum, "%s pixel sum %llu, want %llu", images, (unsigned long long)sum,
        (unsigned long long)pixel_sum);
}

static void test_mnist(void) {
  const char *root = td_test_data_root();
  if (!root) {
    if (td_test_in_ci())
      CHECK(0, "TRAIND_DATA_DIR is not set under CI=true; the MNIST checks cannot run");
    else
      printf("SKIP: real MNIST checks (set TRAIND_DATA_DIR to the directory holding mnist/)\n");
    return;
  }
  static const unsigned train_hist[10] = {5923, 6742, 5958, 6131, 5842,
                                          5421, 5918, 6265, 5851, 5949};
  static const unsigned test_hist[10] = {980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009};
  td_dataset tr = {0}, te = {0};
  check_mnist(root, "mnist/train-images-idx3-ubyte", "mnist/train-labels-idx1-ubyte", 60000,
              train_hist, 1567298545ull, &tr);
  check_mnist(root, "mnist/t10k-images-idx3-ubyte", "mnist/t10k-labels-idx1-ubyte", 10000,
              test_hist, 264923200ull, &te);
  if (tr.n == 60000) {
    /* Spot values: the first training image is a 5 whose row 14 starts
     * 0 0 0 81 240 253 at column 10; the last is an 8. */
    CHECK(tr.y[0] == 5 && tr.y[59999] == 8, "train labels %d ... %d", tr.y[0], tr.y[59999]);
    const float *row = tr.x + 14 * 28 + 10;
    CHECK(row[2] == 0.0f && row[3] == 81.0f / 255.0f && row[4] == 240.0f / 255.0f &&
              row[5] == 253.0f / 255.0f,
          "train[0] row 14: %g %g %g", row[3], row[4], row[5]);
    CHECK(tr.x[59999 * 784 + 184] == 38.0f / 255.0f, "train[59999] pixel 184 = %g",
          tr.x[59999 * 784 + 184]);
  }
  if (te.n == 10000) {
    CHECK(te.y[0] == 7 && te.y[9999] == 6, "test labels %d ... %d", te.y[0], te.y[9999]);
    const float *row = te.x + 10 * 28 + 10;
    CHECK(row[1] == 17.0f / 255.0f && row[2] == 66.0f / 255.0f && row[3] == 14.0f / 255.0f,
          "test[0] row 10: %g %g %g", row[1], row[2], row[3]);
  }
  td_dataset_free(&tr);
  td_dataset_free(&te);
}

int main(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmp, sizeof tmp, "%s/td_data_XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmp)) {
    perror("mkdtemp");
    return 1;
  }
  test_idx();
  test_hdf5();
  test_resolve();
  test_gather();
  test_mnist();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmp);
  return td_check_exit();
}
