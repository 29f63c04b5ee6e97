/* The files traind reads for a job cannot lead it outside them, block it, or
 * make it allocate what they do not hold (engine/h5safe.h):
 *   - HDF5 datasets (td_hdf5_load, td_hdf5_shape) and warm-start or resume
 *     checkpoints (td_ckpt_check_params, td_ckpt_load_params, td_ckpt_read)
 *     whose data is stored externally (H5Pset_external, pointing at a file
 *     outside the data roots and at /etc/passwd), reached through an external
 *     link (the dataset itself, a group on its path, a soft link to one) or
 *     mapped as a virtual dataset are refused with TD_EDATA naming the file,
 *     the dataset and the mechanism, and no outside byte reaches the caller;
 *   - datasets that declare more than the file holds (2^31 values never
 *     written, chunked or contiguous; chunks missing; compression beyond
 *     TD_H5_MAX_RATIO) are refused before anything is allocated, while real
 *     compressed and chunked files load;
 *   - FIFOs, sockets, devices, directories and symlinks named as data files
 *     are refused at once (TD_EINVAL, no read that could block: the test
 *     runs under an alarm), by the loaders and by td_data_resolve; symlink
 *     loops and over-long names are TD_EINVAL, not TD_EIO;
 *   - no refused or corrupt file (truncated, bytes flipped) leaves an HDF5
 *     object open: H5Fget_obj_count(H5F_OBJ_ALL) is back at 0 after every
 *     call, on the main thread and on a thread that exits (as a job's
 *     worker does), and LeakSanitizer sees nothing at exit. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "data.h"
#include "h5safe.h"
#include "jobspec.h"
#include "plan.h"
#include "prng.h"

static char tmp[256];

static const char *at(const char *rel) {
  static char bufs[8][PATH_MAX];
  static int k;
  char *b = bufs[k++ % 8];
  snprintf(b, PATH_MAX, "%s/%s", tmp, rel);
  return b;
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  CHECK(f && fwrite(data, 1, len, f) == len && fclose(f) == 0, "writing %s", path);
}

static long open_objects(void) { return (long)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL); }

/* Entries on the calling thread's HDF5 error stack: those left when a
 * thread ends are never freed (LeakSanitizer reports them) and keep HDF5
 * from closing ("infinite loop closing library"). */
static long stacked_errors(void) { return (long)H5Eget_num(H5E_DEFAULT); }

/* The call failed with `code`, its message holds every word, and it left no
 * HDF5 object open and nothing on the error stack. */
#define EXPECT_REFUSED(call, code, ...)                                                           \
  do {                                                                                            \
    td_error e_ = {0};                                                                            \
    int rc_ = call(&e_);                                                                          \
    const char *words_[] = {__VA_ARGS__, NULL};                                                   \
    CHECK(rc_ == (code), "%s: rc %d (%s), want %d", #call, rc_, e_.msg, (code));                  \
    for (int w_ = 0; words_[w_]; w_++)                                                            \
      CHECK(strstr(e_.msg, words_[w_]) != NULL, "%s: message \"%s\" lacks \"%s\"", #call, e_.msg, \
            words_[w_]);                                                                          \
    /* First: any other HDF5 call empties the stack. */                                           \
    long stacked_ = stacked_errors();                                                             \
    CHECK(stacked_ == 0, "%s left %ld entries on HDF5's error stack", #call, stacked_);           \
    CHECK(open_objects() == 0, "%s left %ld HDF5 objects open", #call, open_objects());           \
  } while (0)

/* ---- building hostile files -------------------------------------------- */

enum { N = 4, DIM = 8 };

static hid_t create(const char *path) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(f >= 0, "H5Fcreate %s", path);
  return f;
}

/* A dataset of `type` and shape dims with creation properties dcpl,
 * written from data when data is not NULL. */
static void put(hid_t f, const char *name, hid_t type, int rank, const hsize_t *dims, hid_t dcpl,
                const void *data) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t s = H5Screate_simple(rank, dims, NULL);
  hid_t d = H5Dcreate2(f, name, type, s, lcpl, dcpl, H5P_DEFAULT);
  CHECK(d >= 0, "H5Dcreate %s", name);
  if (data)
    CHECK(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, "H5Dwrite %s", name);
  H5Dclose(d);
  H5Sclose(s);
  H5Pclose(lcpl);
}

static uint8_t good_x[N][DIM];
static int64_t good_y[N] = {0, 1, 2, 3};
static const hsize_t dims_x[2] = {N, DIM}, dims_y[1] = {N};

static void put_labels(hid_t f) {
  put(f, "labels", H5T_NATIVE_INT64, 1, dims_y, H5P_DEFAULT, good_y);
}

/* outside/real.h5: a valid dataset file outside the data roots, and
 * outside/secret: bytes that must never come back. */
static uint8_t secret[N * DIM];

static void make_outside(void) {
  CHECK(mkdir(at("outside"), 0700) == 0, "mkdir outside");
  for (int i = 0; i < N * DIM; i++)
    secret[i] = (uint8_t)(0xA0 + i);
  write_file(at("outside/secret"), secret, sizeof secret);
  chmod(at("outside/secret"), 0600);
  hid_t f = create(at("outside/real.h5"));
  put(f, "features", H5T_NATIVE_UINT8, 2, dims_x, H5P_DEFAULT, secret);
  put_labels(f);
  H5Gclose(H5Gcreate2(f, "grp", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  put(f, "grp/x", H5T_NATIVE_UINT8, 2, dims_x, H5P_DEFAULT, secret);
  H5Fclose(f);
}

/* Features stored in an external file list pointing at `target`. */
static void make_external_storage(const char *path, const char *target, int labels_too) {
  hid_t f = create(path);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_external(dcpl, target, 0, N * DIM);
  put(f, "features", H5T_NATIVE_UINT8, 2, dims_x, dcpl, NULL);
  H5Pclose(dcpl);
  if (labels_too) {
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_external(dcpl, target, 0, N);
    put(f, "labels", H5T_NATIVE_UINT8, 1, dims_y, dcpl, NULL);
    H5Pclose(dcpl);
    put(f, "x", H5T_NATIVE_UINT8, 2, dims_x, H5P_DEFAULT, good_x);
  } else {
    put_labels(f);
  }
  H5Fclose(f);
}

static void make_external_links(void) {
  hid_t f = create(at("root/elink.h5"));
  H5Lcreate_external(at("outside/real.h5"), "/features", f, "features", H5P_DEFAULT, H5P_DEFAULT);
  put_labels(f);
  /* A group on the path that is an external link. */
  H5Lcreate_external(at("outside/real.h5"), "/grp", f, "train", H5P_DEFAULT, H5P_DEFAULT);
  /* A soft link whose target goes through an external link. */
  H5Lcreate_external(at("outside/real.h5"), "/features", f, "ext", H5P_DEFAULT, H5P_DEFAULT);
  H5Lcreate_soft("/ext", f, "soft", H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(f);
}

static void make_virtual(const char *path, const char *src_file) {
  hid_t f = create(path);
  hid_t vspace = H5Screate_simple(2, dims_x, NULL), sspace = H5Screate_simple(2, dims_x, NULL);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  CHECK(H5Pset_virtual(dcpl, vspace, src_file, "/features", sspace) >= 0, "H5Pset_virtual");
  hid_t d = H5Dcreate2(f, "features", H5T_NATIVE_UINT8, vspace, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  CHECK(d >= 0, "virtual dataset");
  H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(vspace);
  H5Sclose(sspace);
  put_labels(f);
  H5Fclose(f);
}

/* ---- datasets ----------------------------------------------------------- */

static const char *g_path, *g_x = "features", *g_y = "labels";

static int load(td_error *e) {
  td_dataset ds = {0};
  int rc = td_hdf5_load(g_path, g_x, g_y, 0, &ds, e);
  /* A refusal leaves nothing allocated, and no outside byte came back. */
  CHECK(rc != 0 || ds.x, "load returned 0 without data");
  if (rc)
    CHECK(!ds.x && !ds.y && ds.n == 0, "a refused load left data behind");
  td_dataset_free(&ds);
  return rc;
}

static int shape(td_error *e) {
  td_dataset ds = {0};
  return td_hdf5_shape(g_path, g_x, g_y, 0, &ds, e);
}

static void expect_both(const char *path, const char *x, const char *y, int code, const char *w1,
                        const char *w2, const char *w3) {
  g_path = path, g_x = x, g_y = y;
  EXPECT_REFUSED(load, code, w1, w2, w3);
  EXPECT_REFUSED(shape, code, w1, w2, w3);
  g_x = "features", g_y = "labels";
}

static const char *INSIDE = "traind reads only data stored inside the file";

static void test_escapes(void) {
  /* The file outside is real: opened directly, it loads. */
  td_dataset ds = {0};
  td_error err = {0};
  CHECK(td_hdf5_load(at("outside/real.h5"), "features", "labels", 0, &ds, &err) == 0 &&
            ds.x[1] == secret[1] / 255.0f,
        "outside/real.h5 itself loads: %s", err.msg);
  td_dataset_free(&ds);

  make_external_storage(at("root/ext_secret.h5"), at("outside/secret"), 0);
  expect_both(at("root/ext_secret.h5"), "features", "labels", TD_EDATA,
              "features 'features' uses external storage", "outside/secret", INSIDE);
  make_external_storage(at("root/ext_passwd.h5"), "/etc/passwd", 1);
  expect_both(at("root/ext_passwd.h5"), "x", "labels", TD_EDATA,
              "labels 'labels' uses external storage", "'/etc/passwd'", INSIDE);
  /* A relative external name (resolved against the working directory). */
  make_external_storage(at("root/ext_rel.h5"), "../outside/secret", 0);
  expect_both(at("root/ext_rel.h5"), "features", "labels", TD_EDATA, "uses external storage",
              "'../outside/secret'", INSIDE);

  make_external_links();
  expect_both(at("root/elink.h5"), "features", "labels", TD_EDATA,
              "features 'features' leads through 'features', an external link to '/features'",
              "outside/real.h5", INSIDE);
  expect_both(at("root/elink.h5"), "train/x", "labels", TD_EDATA,
              "features 'train/x' leads through 'train', an external link to '/grp'",
              "outside/real.h5", INSIDE);
  expect_both(at("root/elink.h5"), "/soft", "labels", TD_EDATA,
              "features '/soft' leads through an external link", "outside/real.h5", INSIDE);

  make_virtual(at("root/vds.h5"), at("outside/real.h5"));
  expect_both(at("root/vds.h5"), "features", "labels", TD_EDATA,
              "features 'features' is a virtual dataset", "outside/real.h5", INSIDE);
  /* Even one mapped from the file itself: nothing virtual is read. */
  make_virtual(at("root/vds_self.h5"), ".");
  expect_both(at("root/vds_self.h5"), "features", "labels", TD_EDATA, "is a virtual dataset", "'.'",
              INSIDE);
}

/* ---- declared sizes the file does not hold ------------------------------ */

static void test_declared_sizes(void) {
  const hsize_t big[2] = {(hsize_t)1 << 31, 1}, big1[1] = {(hsize_t)1 << 31};
  const hsize_t chunk[2] = {1 << 20, 1};

  /* (2^31, 1) float32 features, chunked, never written. */
  hid_t f = create(at("root/chunked_empty.h5"));
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 2, chunk);
  put(f, "features", H5T_NATIVE_FLOAT, 2, big, dcpl, NULL);
  H5Pclose(dcpl);
  put(f, "labels", H5T_NATIVE_UINT8, 1, big1, H5P_DEFAULT, NULL);
  H5Fclose(f);
  struct stat st;
  CHECK(stat(at("root/chunked_empty.h5"), &st) == 0 && st.st_size < (1 << 20),
        "the file declaring 8 GiB is small (%lld bytes)", (long long)st.st_size);
  expect_both(at("root/chunked_empty.h5"), "features", "labels", TD_EDATA,
              "features 'features' declares 8589934592 bytes but stores none", "fill value",
              "never written");

  /* 2^31 uint8 values stored as a fill value only (contiguous, late
   * allocation), with real labels: the features are what is refused. */
  f = create(at("root/fill_only.h5"));
  dcpl = H5Pcreate(H5P_DATASET_CREATE);
  uint8_t fill = 7;
  H5Pset_fill_value(dcpl, H5T_NATIVE_UINT8, &fill);
  put(f, "features", H5T_NATIVE_UINT8, 2, big, dcpl, NULL);
  H5Pclose(dcpl);
  put(f, "labels", H5T_NATIVE_UINT8, 1, big1, H5P_DEFAULT, NULL);
  H5Fclose(f);
  expect_both(at("root/fill_only.h5"), "features", "labels", TD_EDATA,
              "declares 2147483648 bytes but stores none", "fill value", "'features'");

  /* One chunk of four written. */
  f = create(at("root/part.h5"));
  const hsize_t c1[2] = {1, DIM};
  dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 2, c1);
  hid_t s = H5Screate_simple(2, dims_x, NULL);
  hid_t d = H5Dcreate2(f, "features", H5T_NATIVE_UINT8, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  const hsize_t start[2] = {0, 0};
  H5Sselect_hyperslab(s, H5S_SELECT_SET, start, NULL, c1, NULL);
  hid_t ms = H5Screate_simple(2, c1, NULL);
  CHECK(H5Dwrite(d, H5T_NATIVE_UINT8, ms, s, H5P_DEFAULT, good_x) >= 0, "partial write");
  H5Sclose(ms);
  H5Sclose(s);
  H5Dclose(d);
  H5Pclose(dcpl);
  put_labels(f);
  H5Fclose(f);
  expect_both(at("root/part.h5"), "features", "labels", TD_EDATA,
              "features 'features' stores 1 of its 4 chunks", "never written", "fill value");

  /* Zeros deflated twice: far beyond what any real data compresses to. */
  enum { ROWS = 1 << 20 };
  const hsize_t zd[2] = {ROWS, DIM}, zc[2] = {ROWS / 8, DIM}, zl[1] = {ROWS};
  uint8_t *zeros = calloc((size_t)ROWS * DIM, 1);
  f = create(at("root/bomb.h5"));
  dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 2, zc);
  H5Pset_deflate(dcpl, 9);
  H5Pset_deflate(dcpl, 9);
  put(f, "features", H5T_NATIVE_UINT8, 2, zd, dcpl, zeros);
  H5Pclose(dcpl);
  put(f, "labels", H5T_NATIVE_UINT8, 1, zl, H5P_DEFAULT, zeros);
  H5Fclose(f);
  free(zeros);
  expect_both(at("root/bomb.h5"), "features", "labels", TD_EDATA,
              "features 'features' declares 8388608 bytes compressed into", "more than 2048 times",
              "'features'");

  /* Real files still load: deflated random bytes, chunks with a partial
   * edge chunk, and compact storage. */
  uint8_t rnd[9][DIM];
  int64_t lab9[9];
  uint32_t st32 = 12345;
  for (int i = 0; i < 9; i++) {
    lab9[i] = i % 3;
    for (int j = 0; j < DIM; j++)
      rnd[i][j] = (uint8_t)((st32 = st32 * 1103515245u + 12345u) >> 24);
  }
  const hsize_t d9[2] = {9, DIM}, d9y[1] = {9}, c4[2] = {4, DIM};
  f = create(at("root/real_gzip.h5"));
  dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 2, c4);
  H5Pset_shuffle(dcpl);
  H5Pset_deflate(dcpl, 4);
  put(f, "features", H5T_NATIVE_UINT8, 2, d9, dcpl, rnd);
  H5Pclose(dcpl);
  dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_layout(dcpl, H5D_COMPACT);
  put(f, "labels", H5T_NATIVE_INT64, 1, d9y, dcpl, lab9);
  H5Pclose(dcpl);
  H5Fclose(f);
  td_dataset ds = {0};
  td_error err = {0};
  int rc = td_hdf5_load(at("root/real_gzip.h5"), "features", "labels", 0, &ds, &err);
  int same = rc == 0 && ds.n == 9 && ds.dim == DIM;
  for (int i = 0; same && i < 9; i++) {
    same = ds.y[i] == lab9[i];
    for (int j = 0; same && j < DIM; j++)
      same = ds.x[i * DIM + j] == rnd[i][j] / 255.0f;
  }
  CHECK(same, "deflated, chunked (partial edge chunk) and compact data load bit for bit: %s",
        err.msg);
  td_dataset_free(&ds);
  CHECK(open_objects() == 0, "a good load left %ld objects open", open_objects());
}

/* ---- files that are not regular, and paths that cannot name one --------- */

static const char *g_img, *g_lab;
static int idx_load(td_error *e) {
  td_dataset ds = {0};
  int rc = td_idx_load(g_img, g_lab, 0, &ds, e);
  td_dataset_free(&ds);
  return rc;
}
static int idx_shape(td_error *e) {
  td_dataset ds = {0};
  return td_idx_shape(g_img, g_lab, 0, &ds, e);
}

static const char *g_rel;
static int g_alt;
static char g_root[PATH_MAX];
static int resolve(td_error *e) {
  const char *roots[1] = {g_root};
  char out[PATH_MAX];
  return td_data_resolve(roots, 1, g_rel, g_alt, out, sizeof out, e);
}

static void test_not_regular(void) {
  CHECK(mkfifo(at("root/fifo.h5"), 0600) == 0, "mkfifo: %s", strerror(errno));
  CHECK(mkfifo(at("root/fifo-idx"), 0600) == 0, "mkfifo: %s", strerror(errno));
  int sock = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", at("root/sock.h5"));
  CHECK(sock >= 0 && bind(sock, (struct sockaddr *)&sa, sizeof sa) == 0, "bind: %s",
        strerror(errno));
  CHECK(mkdir(at("root/dir.h5"), 0700) == 0, "mkdir");
  CHECK(symlink(at("root/real_gzip.h5"), at("root/link.h5")) == 0, "symlink");

  /* The loaders, given such paths directly: refused at once (a FIFO with no
   * writer would block any read). */
  expect_both(at("root/fifo.h5"), "features", "labels", TD_EINVAL,
              "is a FIFO (named pipe), not a regular file", "fifo.h5'", "regular files");
  expect_both(at("root/sock.h5"), "features", "labels", TD_EINVAL, "is a socket", "sock.h5'",
              "not a regular file");
  expect_both(at("root/dir.h5"), "features", "labels", TD_EINVAL, "is a directory", "dir.h5'",
              "not a regular file");
  expect_both("/dev/zero", "features", "labels", TD_EINVAL, "is a character device", "'/dev/zero'",
              "not a regular file");
  expect_both(at("root/link.h5"), "features", "labels", TD_EINVAL, "symbolic link", "link.h5'",
              "name the file itself");
  /* One 1x1 image and its label. */
  write_file(at("root/images-idx"), "\0\0\x08\x03\0\0\0\x01\0\0\0\x01\0\0\0\x01\x07", 17);
  write_file(at("root/labels-idx"), "\0\0\x08\x01\0\0\0\x01\x03", 9);
  td_dataset one = {0};
  td_error ierr = {0};
  CHECK(td_idx_load(at("root/images-idx"), at("root/labels-idx"), 0, &one, &ierr) == 0 &&
            one.n == 1 && one.y[0] == 3,
        "the regular IDX pair loads: %s", ierr.msg);
  td_dataset_free(&one);
  g_img = at("root/fifo-idx"), g_lab = at("root/labels-idx");
  EXPECT_REFUSED(idx_load, TD_EINVAL, "IDX image file", "fifo-idx'", "FIFO");
  EXPECT_REFUSED(idx_shape, TD_EINVAL, "IDX image file", "fifo-idx'", "FIFO");
  g_img = at("root/images-idx"), g_lab = at("root/fifo-idx");
  EXPECT_REFUSED(idx_load, TD_EINVAL, "fifo-idx'", "FIFO");
  g_img = "/dev/zero";
  EXPECT_REFUSED(idx_load, TD_EINVAL, "'/dev/zero' is a character device");

  /* Resolution, as at submission: the path inside the roots is refused
   * with what it is. */
  snprintf(g_root, sizeof g_root, "%s", at("root"));
  g_alt = 0;
  g_rel = "fifo.h5";
  EXPECT_REFUSED(resolve, TD_EINVAL, "dataset path 'fifo.h5'", "is a FIFO (named pipe)",
                 "not a regular file");
  g_rel = "sock.h5";
  EXPECT_REFUSED(resolve, TD_EINVAL, "dataset path 'sock.h5'", "is a socket");
  g_rel = "dir.h5";
  EXPECT_REFUSED(resolve, TD_EINVAL, "dataset path 'dir.h5'", "is a directory");
  g_rel = "fifo-idx";
  g_alt = 1; /* the IDX names are tried with and without .gz */
  EXPECT_REFUSED(resolve, TD_EINVAL, "dataset path 'fifo-idx'", "FIFO");

  /* Symlink loops and over-long names: a wrong argument, not "retry". */
  CHECK(symlink("loop-b", at("root/loop-a")) == 0 && symlink("loop-a", at("root/loop-b")) == 0,
        "symlink loop");
  g_alt = 0;
  g_rel = "loop-a";
  EXPECT_REFUSED(resolve, TD_EINVAL, "dataset path 'loop-a'", "a loop of symbolic links");
  g_rel = "loop-a/x.h5";
  EXPECT_REFUSED(resolve, TD_EINVAL, "dataset path 'loop-a/x.h5'", "a loop of symbolic links");
  char longname[400];
  memset(longname, 'n', 300);
  strcpy(longname + 300, ".h5");
  g_rel = longname;
  g_alt = 1;
  EXPECT_REFUSED(resolve, TD_EINVAL, "longer than the file system allows", "nnnnnnnn");
  CHECK(mkdir(at("root/sub"), 0700) == 0, "mkdir sub");
  snprintf(longname, sizeof longname, "sub/%0300d/x", 0);
  g_rel = longname;
  EXPECT_REFUSED(resolve, TD_EINVAL, "longer than the file system allows");

  close(sock);
}

/* ---- checkpoints ---------------------------------------------------------- */

/* One dense layer (4 -> 3): /params/layer1/w (4, 3) and /params/layer1/b (3). */
static const char *spec_doc = "name: h5safe\n"
                              "model:\n"
                              "  input_shape: [4]\n"
                              "  layers:\n"
                              "    - dense: {features: 3}\n"
                              "  loss: SOFTMAX_CROSS_ENTROPY\n"
                              "optimizer:\n"
                              "  chain: [{sgd: {learning_rate: {constant: 0.1}}}]\n"
                              "dataset: {idx: {dir: none}}\n"
                              "training: {epochs: 1, batch_size: 4, seed: 1}\n";

static Traind__V1__JobSpec *spec;
static td_plan *plan;
static td_backend *be;
static td_state st;

static float w_good[12], b_good[3] = {0.5f, -0.5f, 0.25f};
static const hsize_t dims_w[2] = {4, 3}, dims_b[1] = {3};

/* An init_from file: /params/layer1/{w,b}, w made by `how`. */
enum { W_PLAIN, W_EXTERNAL, W_ELINK, W_VIRTUAL, PARAMS_ELINK, EXTRA_ELINK };

static void make_init(const char *path, int how, const char *target) {
  hid_t f = create(path);
  if (how == PARAMS_ELINK) {
    H5Lcreate_external(target, "/params", f, "params", H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    return;
  }
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (how == W_EXTERNAL)
    H5Pset_external(dcpl, target, 0, sizeof w_good);
  if (how == W_VIRTUAL) {
    hid_t v = H5Screate_simple(2, dims_w, NULL), s = H5Screate_simple(2, dims_w, NULL);
    H5Pset_virtual(dcpl, v, target, "/params/layer1/w", s);
    H5Sclose(v);
    H5Sclose(s);
  }
  if (how == W_ELINK) {
    H5Gclose(H5Gcreate2(f, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Gclose(H5Gcreate2(f, "params/layer1", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Lcreate_external(target, "/params/layer1/w", f, "params/layer1/w", H5P_DEFAULT, H5P_DEFAULT);
  } else {
    put(f, "params/layer1/w", H5T_NATIVE_FLOAT, 2, dims_w, dcpl,
        how == W_PLAIN || how == EXTRA_ELINK ? w_good : NULL);
  }
  H5Pclose(dcpl);
  put(f, "params/layer1/b", H5T_NATIVE_FLOAT, 1, dims_b, H5P_DEFAULT, b_good);
  if (how == EXTRA_ELINK)
    H5Lcreate_external(target, "/params/layer1/w", f, "params/layer1/extra", H5P_DEFAULT,
                       H5P_DEFAULT);
  H5Fclose(f);
}

static const char *g_ckpt;
static int check_params(td_error *e) { return td_ckpt_check_params(g_ckpt, plan, e); }
static int load_params(td_error *e) { return td_ckpt_load_params(g_ckpt, &st, e); }
static int read_ckpt(td_error *e) {
  td_ckpt_meta m;
  int rc = td_ckpt_read(g_ckpt, &st, &m, e);
  td_ckpt_meta_free(&m);
  return rc;
}

/* Both warm-start entry points refuse, and the state keeps its parameters. */
static void expect_init_refused(const char *path, const char *w1, const char *w2, const char *w3) {
  const size_t np = plan->n_params;
  float *before = malloc(np * sizeof *before);
  memcpy(before, st.params, np * sizeof *before);
  g_ckpt = path;
  EXPECT_REFUSED(check_params, TD_EDATA, w1, w2, w3);
  EXPECT_REFUSED(load_params, TD_EDATA, w1, w2, w3);
  CHECK(memcmp(before, st.params, np * sizeof *before) == 0,
        "a refused warm start changed the parameters");
  free(before);
}

static void test_checkpoints(void) {
  td_error err = {0};
  int rc = td_jobspec_parse(spec_doc, strlen(spec_doc), &spec, &err);
  if (!rc)
    rc = td_plan_compile(spec->model, spec->optimizer, 4, "cpu:0", &plan, &err);
  if (!rc)
    rc = td_cpu_backend_create(&be, 1, &err);
  if (!rc)
    rc = td_state_init(&st, plan, be, &err);
  if (!rc)
    rc = td_state_init_params(&st, td_prng_key(1), &err);
  CHECK(rc == 0, "model: %s", err.msg);
  if (rc)
    return;
  for (int i = 0; i < 12; i++)
    w_good[i] = 0.125f * (float)(i - 6);

  /* outside/init.h5 is a valid warm start; outside/wbytes holds w's bytes. */
  make_init(at("outside/init.h5"), W_PLAIN, NULL);
  write_file(at("outside/wbytes"), w_good, sizeof w_good);
  g_ckpt = at("outside/init.h5");
  CHECK(td_ckpt_load_params(g_ckpt, &st, &err) == 0, "a plain warm start loads: %s", err.msg);
  const td_view *w = NULL;
  for (size_t i = 0; i < plan->n_views; i++)
    if (strcmp(plan->views[i].name, "layer1/w") == 0)
      w = &plan->views[i];
  CHECK(w && memcmp(st.params + w->offset, w_good, sizeof w_good) == 0, "layer1/w loaded");
  CHECK(open_objects() == 0, "a good warm start left objects open");
  td_state_init_params(&st, td_prng_key(1), &err);

  make_init(at("root/init_ext.h5"), W_EXTERNAL, at("outside/wbytes"));
  expect_init_refused(at("root/init_ext.h5"), "dataset '/params/layer1/w' uses external storage",
                      "outside/wbytes", INSIDE);
  make_init(at("root/init_passwd.h5"), W_EXTERNAL, "/etc/passwd");
  expect_init_refused(at("root/init_passwd.h5"), "'/params/layer1/w' uses external storage",
                      "'/etc/passwd'", INSIDE);
  make_init(at("root/init_elink.h5"), W_ELINK, at("outside/init.h5"));
  expect_init_refused(at("root/init_elink.h5"),
                      "'/params/layer1/w' leads through '/params/layer1/w', an external link",
                      "outside/init.h5", INSIDE);
  make_init(at("root/init_pelink.h5"), PARAMS_ELINK, at("outside/init.h5"));
  expect_init_refused(at("root/init_pelink.h5"), "leads through '/params', an external link",
                      "outside/init.h5", INSIDE);
  make_init(at("root/init_vds.h5"), W_VIRTUAL, at("outside/init.h5"));
  expect_init_refused(at("root/init_vds.h5"), "'/params/layer1/w' is a virtual dataset",
                      "outside/init.h5", INSIDE);
  make_init(at("root/init_extra.h5"), EXTRA_ELINK, at("outside/init.h5"));
  expect_init_refused(at("root/init_extra.h5"), "/params/layer1/extra is an external link",
                      "does not match", INSIDE);

  /* The resume path: a checkpoint this code wrote, whose w is then moved
   * into an external file holding the same bytes. Refused for that, before
   * its digest is looked at. */
  td_ckpt_meta meta = {.step = 0, .epoch = 1, .root_key = td_prng_key(1), .seed = 1};
  g_ckpt = at("root/ckpt-0.h5");
  CHECK(td_ckpt_write(g_ckpt, &st, &meta, &err) == 0, "td_ckpt_write: %s", err.msg);
  EXPECT_REFUSED(read_ckpt, TD_OK, "");
  float wnow[12];
  memcpy(wnow, st.params + (w ? w->offset : 0), sizeof wnow);
  write_file(at("outside/wnow"), wnow, sizeof wnow);
  hid_t f = H5Fopen(g_ckpt, H5F_ACC_RDWR, H5P_DEFAULT);
  H5Ldelete(f, "/params/layer1/w", H5P_DEFAULT);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_external(dcpl, at("outside/wnow"), 0, sizeof wnow);
  hid_t s = H5Screate_simple(2, dims_w, NULL);
  hid_t d = H5Dcreate2(f, "/params/layer1/w", H5T_IEEE_F32LE, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  CHECK(d >= 0, "re-creating w with external storage");
  H5Dclose(d);
  H5Sclose(s);
  H5Pclose(dcpl);
  H5Fclose(f);
  EXPECT_REFUSED(read_ckpt, TD_EDATA,
                 "ckpt-0.h5': dataset '/params/layer1/w' uses external storage", INSIDE);
  EXPECT_REFUSED(check_params, TD_EDATA, "'/params/layer1/w' uses external storage");
  /* /opt_state/count through an external link. */
  CHECK(td_ckpt_write(g_ckpt, &st, &meta, &err) == 0, "td_ckpt_write: %s", err.msg);
  f = H5Fopen(g_ckpt, H5F_ACC_RDWR, H5P_DEFAULT);
  H5Ldelete(f, "/opt_state/count", H5P_DEFAULT);
  H5Lcreate_external(at("outside/init.h5"), "/count", f, "/opt_state/count", H5P_DEFAULT,
                     H5P_DEFAULT);
  H5Fclose(f);
  EXPECT_REFUSED(read_ckpt, TD_EDATA, "'/opt_state/count' leads through '/opt_state/count'",
                 "an external link", INSIDE);
}

/* ---- corrupt files leave nothing open ----------------------------------- */

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  if (!fp)
    return NULL;
  fseek(fp, 0, SEEK_END);
  *len = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  unsigned char *b = malloc(*len);
  if (b && fread(b, 1, *len, fp) != *len) {
    free(b);
    b = NULL;
  }
  fclose(fp);
  return b;
}

static int corrupt_calls;

/* Truncations and single flipped bytes of a good file, each through `call`,
 * which must leave no object open whatever the outcome. */
static void corrupt_variants(const char *good, int (*call)(td_error *), const char **path_slot) {
  size_t len = 0;
  unsigned char *b = slurp(good, &len);
  CHECK(b != NULL, "reading %s", good);
  if (!b)
    return;
  const char *bad = at("root/corrupt.h5");
  long leaks = 0;
  for (size_t off = 0; off < len && off < 4096; off += 29) {
    for (int kind = 0; kind < 2; kind++) {
      if (kind == 0) {
        write_file(bad, b, off); /* truncated at off */
      } else {
        b[off] ^= 0xFF;
        write_file(bad, b, len);
        b[off] ^= 0xFF;
      }
      td_error e = {0};
      *path_slot = bad;
      call(&e);
      corrupt_calls++;
      long stacked = stacked_errors(); /* first: other calls empty the stack */
      long n = open_objects();
      if (n || stacked) {
        leaks++;
        fprintf(stderr, "%s %s at %zu: %ld objects left open, %ld errors stacked (%s)\n", good,
                kind ? "flipped" : "truncated", off, n, stacked, e.msg);
        H5close(); /* start clean for the next case */
      }
    }
  }
  CHECK(leaks == 0, "%ld corrupt variants of %s left HDF5 objects open or errors stacked", leaks,
        good);
  free(b);
}

static void corrupt_all(void) {
  corrupt_variants(at("root/real_gzip.h5"), load, &g_path);
  corrupt_variants(at("root/real_gzip.h5"), shape, &g_path);
  corrupt_variants(at("outside/init.h5"), check_params, &g_ckpt);
  if (plan) {
    td_ckpt_meta meta = {.step = 0, .epoch = 1, .root_key = td_prng_key(1), .seed = 1};
    td_error err = {0};
    CHECK(td_ckpt_write(at("root/good-ckpt.h5"), &st, &meta, &err) == 0, "%s", err.msg);
    corrupt_variants(at("root/good-ckpt.h5"), read_ckpt, &g_ckpt);
  }
}

static void *corrupt_thread(void *arg) {
  (void)arg;
  corrupt_all();
  /* The thread's last HDF5 call fails (a truncated file), as a job's may. */
  size_t len = 0;
  unsigned char *b = slurp(at("root/real_gzip.h5"), &len);
  write_file(at("root/corrupt.h5"), b, len / 2);
  free(b);
  g_path = at("root/corrupt.h5");
  EXPECT_REFUSED(load, TD_EDATA, "is truncated");
  return NULL;
}

static void test_corrupt(void) {
  corrupt_all();
  /* As a job's worker thread: the loads happen there and the thread ends. */
  pthread_t t;
  CHECK(pthread_create(&t, NULL, corrupt_thread, NULL) == 0, "pthread_create");
  pthread_join(t, NULL);
  CHECK(corrupt_calls > 500, "only %d corrupt files tried", corrupt_calls);
}

int main(void) {
  alarm(300); /* a read that blocks fails the test instead of hanging it */
  snprintf(tmp, sizeof tmp, "/tmp/td-h5safe-XXXXXX");
  if (!mkdtemp(tmp)) {
    perror("mkdtemp");
    return 1;
  }
  CHECK(mkdir(at("root"), 0700) == 0, "mkdir root");
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the file builders' own errors stay quiet too */
  make_outside();
  test_escapes();
  test_declared_sizes();
  test_not_regular();
  test_checkpoints();
  test_corrupt();
  CHECK(open_objects() == 0, "%ld HDF5 objects open at the end", open_objects());
  if (plan) {
    td_state_free(&st);
    td_backend_destroy(be);
    td_plan_free(plan);
    td_jobspec_free(spec);
  }
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (td_check_failures == 0 && system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmp);
  return td_check_exit();
}
