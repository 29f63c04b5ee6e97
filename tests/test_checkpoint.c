/* HDF5 checkpoints: a bitwise round trip of parameters, optimizer state,
 * position and binding (job id, spec hash); refusal of every kind of bad
 * file, also of edits that keep the file self-consistent (a position moved
 * with its count, another job's id), with a message naming the problem and
 * the state left untouched; the spec hash covering exactly the fields that
 * determine the state; atomic writes that leave a previous checkpoint
 * intact on failure (EFBIG named); loading parameters only.
 *
 * The binary also drives tests/e2e/checkpoint_h5py.py:
 *   test_checkpoint e2e-write DIR     trains a few steps, writes DIR/ckpt.h5,
 *                                     the evaluation inputs DIR/x.bin and the
 *                                     logits the engine computes, DIR/logits.bin
 *   test_checkpoint e2e-load IN OUT   loads /params of IN into a fresh state
 *                                     and writes it as a checkpoint to OUT */
#include <dirent.h>
#include <hdf5.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "jobspec.h"
#include "pbjson.h"
#include "plan.h"
#include "prng.h"

static const char *spec_fmt = "name: ckpt\n"
                              "model:\n"
                              "  input_shape: [4, 5]\n"
                              "  layers:\n"
                              "    - dense: {features: %u, kernel_init: HE_NORMAL}\n"
                              "    - relu: {}\n"
                              "    - dense: {features: 3, kernel_init: HE_NORMAL}\n"
                              "  loss: SOFTMAX_CROSS_ENTROPY\n"
                              "optimizer:\n"
                              "  chain: [%s]\n"
                              "dataset: {idx: {dir: none}}\n"
                              "training: {epochs: 1, batch_size: 16, seed: 42}\n";

static const char *adamw =
    "{clip_by_global_norm: {max_norm: 1.0}}, {adamw: {learning_rate: {constant: 0.01}}}";
static const char *momentum = "{sgd: {learning_rate: {constant: 0.05}, momentum: 0.9}}";

enum { BATCH = 16, IN = 20, OUT = 3 };

/* A job's parsed spec, compiled plan and state on a CPU backend. */
typedef struct model {
  Traind__V1__JobSpec *spec;
  td_plan *plan;
  td_backend *be;
  td_state st;
} model;

static int model_init(model *m, unsigned width, const char *opt) {
  memset(m, 0, sizeof *m);
  char doc[2048];
  snprintf(doc, sizeof doc, spec_fmt, width, opt);
  td_error err = {0};
  int rc = td_jobspec_parse(doc, strlen(doc), &m->spec, &err);
  if (!rc)
    rc = td_plan_compile(m->spec->model, m->spec->optimizer, BATCH, "cpu:0", &m->plan, &err);
  if (!rc)
    rc = td_cpu_backend_create(&m->be, 1, &err);
  if (!rc)
    rc = td_state_init(&m->st, m->plan, m->be, &err);
  if (!rc)
    rc = td_state_init_params(&m->st, td_prng_key(42), &err);
  CHECK(rc == 0, "model (width %u, %s): %s", width, opt, err.msg);
  return rc;
}

static void model_free(model *m) {
  td_state_free(&m->st);
  td_backend_destroy(m->be);
  td_plan_free(m->plan);
  td_jobspec_free(m->spec);
}

static size_t n_opt(const model *m) { return m->plan->optim.state_slots * m->plan->n_params; }

/* Random parameters and optimizer state (including exact zeros, negative
 * zero and denormals, which a lossy copy would change) and a step count. */
static void fill_random(model *m, uint32_t seed, int64_t step) {
  const td_plan *p = m->plan;
  td_prng_normal(td_prng_key(seed), m->st.params, p->n_params);
  td_prng_normal(td_prng_fold_in(td_prng_key(seed), 1), m->st.opt_state, n_opt(m));
  m->st.params[0] = 0.0f;
  m->st.params[1] = -0.0f;
  m->st.params[2] = 1e-40f;
  m->st.step = step;
}

static td_ckpt_meta sample_meta(void) {
  td_ckpt_meta meta = {.step = 1234,
                       .epoch = 3,
                       .step_in_epoch = 17,
                       .root_key = td_prng_key(42),
                       .seed = 42,
                       .job_id = "j-0000000001-000001",
                       .spec_hash =
                           "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
                       .spec_json = "{\"name\": \"ckpt\", \"note\": \"\\u00e9 quotes \\\" ok\"}"};
  return meta;
}

static char *slurp(const char *path, long *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  *len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)*len + 1);
  if (b && fread(b, 1, (size_t)*len, f) != (size_t)*len) {
    free(b);
    b = NULL;
  }
  fclose(f);
  return b;
}

static void spit(const char *path, const void *b, long len) {
  FILE *f = fopen(path, "wb");
  CHECK(f && fwrite(b, 1, (size_t)len, f) == (size_t)len, "cannot write %s", path);
  if (f)
    fclose(f);
}

static void copy_file(const char *from, const char *to) {
  long len = 0;
  char *b = slurp(from, &len);
  CHECK(b != NULL, "cannot read %s", from);
  if (b)
    spit(to, b, len);
  free(b);
}

/* Names of the entries of dir starting with '.', other than . and .. */
static int hidden_entries(const char *dir, char *names, size_t len) {
  DIR *d = opendir(dir);
  int n = 0;
  names[0] = '\0';
  if (!d)
    return -1;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] == '.' && strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      n++;
      strncat(names, e->d_name, len - strlen(names) - 2);
      strcat(names, " ");
    }
  closedir(d);
  return n;
}

/* ---- round trip ---------------------------------------------------------- */

static void check_round_trip(const char *dir, const char *opt, const char *label) {
  model a, b;
  if (model_init(&a, 32, opt) || model_init(&b, 32, opt))
    return;
  fill_random(&a, 7, 1234);
  char path[512];
  snprintf(path, sizeof path, "%s/rt-%s.h5", dir, label);
  td_ckpt_meta meta = sample_meta();
  td_error err = {0};
  int rc = td_ckpt_write(path, &a.st, &meta, &err);
  CHECK(rc == 0, "%s: write: %s", label, err.msg);
  td_ckpt_meta got = {0};
  rc = td_ckpt_read(path, &b.st, &got, &err);
  CHECK(rc == 0, "%s: read: %s", label, err.msg);
  CHECK(memcmp(a.st.params, b.st.params, sizeof(float) * a.plan->n_params) == 0,
        "%s: parameters differ after the round trip", label);
  CHECK(n_opt(&a) > 0 && memcmp(a.st.opt_state, b.st.opt_state, sizeof(float) * n_opt(&a)) == 0,
        "%s: optimizer state differs after the round trip (%zu floats)", label, n_opt(&a));
  CHECK(b.st.step == 1234, "%s: step %lld", label, (long long)b.st.step);
  CHECK(got.step == meta.step && got.epoch == meta.epoch &&
            got.step_in_epoch == meta.step_in_epoch && got.seed == meta.seed &&
            got.root_key.k[0] == meta.root_key.k[0] && got.root_key.k[1] == meta.root_key.k[1],
        "%s: meta differs: step %lld epoch %u step_in_epoch %u seed %llu key %08x %08x", label,
        (long long)got.step, got.epoch, got.step_in_epoch, (unsigned long long)got.seed,
        got.root_key.k[0], got.root_key.k[1]);
  CHECK(got.spec_json && strcmp(got.spec_json, meta.spec_json) == 0, "%s: job_spec '%s'", label,
        got.spec_json ? got.spec_json : "(null)");
  CHECK(strcmp(got.job_id, meta.job_id) == 0 && strcmp(got.spec_hash, meta.spec_hash) == 0,
        "%s: binding read back as job '%s', spec hash '%s'", label, got.job_id, got.spec_hash);
  /* The attributes alone say the same. */
  td_ckpt_meta bind;
  rc = td_ckpt_read_binding(path, &bind, &err);
  CHECK(rc == 0 && strcmp(bind.job_id, meta.job_id) == 0 &&
            strcmp(bind.spec_hash, meta.spec_hash) == 0 && bind.step == meta.step &&
            bind.epoch == meta.epoch,
        "%s: read_binding: rc %d (%s), job '%s', step %lld", label, rc, err.msg, bind.job_id,
        (long long)bind.step);
  td_ckpt_meta_free(&bind);
  td_ckpt_meta_free(&got);
  CHECK(got.spec_json == NULL, "meta_free leaves spec_json");

  /* Parameters alone load too, and leave the optimizer state and step. */
  model c;
  if (!model_init(&c, 32, opt)) {
    rc = td_ckpt_load_params(path, &c.st, &err);
    CHECK(rc == 0, "%s: load_params from a full checkpoint: %s", label, err.msg);
    CHECK(memcmp(a.st.params, c.st.params, sizeof(float) * a.plan->n_params) == 0,
          "%s: load_params: parameters differ", label);
    CHECK(c.st.step == 0, "%s: load_params changed the step", label);
    model_free(&c);
  }
  model_free(&a);
  model_free(&b);
}

/* ---- bad files ----------------------------------------------------------- */

typedef void (*mutator)(hid_t fid);

static void set_str_attr(hid_t fid, const char *name, const char *val) {
  H5Adelete(fid, name);
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(fid, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(a >= 0 && H5Awrite(a, t, &val) >= 0, "cannot set attribute %s", name);
  H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
}

static void replace_dataset(hid_t fid, const char *name, hid_t type, int rank, hsize_t d0,
                            hsize_t d1) {
  H5Ldelete(fid, name, H5P_DEFAULT);
  hsize_t dims[2] = {d0, d1};
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t sp = H5Screate_simple(rank, dims, NULL);
  size_t n = (size_t)d0 * (rank == 2 ? (size_t)d1 : 1);
  double *zeros = calloc(n, sizeof(double));
  hid_t d = H5Dcreate2(fid, name, type, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(d >= 0 && H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros) >= 0,
        "cannot create %s", name);
  free(zeros);
  H5Dclose(d);
  H5Sclose(sp);
  H5Pclose(lcpl);
}

static void m_magic(hid_t f) { set_str_attr(f, "format", "keras-weights"); }
static void m_no_magic(hid_t f) { H5Adelete(f, "format"); }
static void set_i64_attr(hid_t f, const char *name, hid_t mtype, const void *v) {
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  CHECK(a >= 0 && H5Awrite(a, mtype, v) >= 0, "cannot set %s", name);
  H5Aclose(a);
}
static void m_version(hid_t f) {
  int32_t v = 3;
  set_i64_attr(f, "version", H5T_NATIVE_INT32, &v);
}
/* What a version 1 file looked like: no binding, a CRC-32 instead. */
static void m_version1(hid_t f) {
  int32_t v = 1;
  set_i64_attr(f, "version", H5T_NATIVE_INT32, &v);
  H5Adelete(f, "job_id");
  H5Adelete(f, "spec_hash");
  H5Adelete(f, "digest");
}
/* The position moved by a whole epoch, consistently: step, /opt_state/count
 * and epoch agree with each other, as a careful edit would leave them. */
static void m_position(hid_t f) {
  int64_t step = 0;
  uint32_t epoch = 0;
  hid_t a = H5Aopen(f, "step", H5P_DEFAULT);
  H5Aread(a, H5T_NATIVE_INT64, &step);
  H5Aclose(a);
  a = H5Aopen(f, "epoch", H5P_DEFAULT);
  H5Aread(a, H5T_NATIVE_UINT32, &epoch);
  H5Aclose(a);
  step += 100;
  epoch += 1;
  set_i64_attr(f, "step", H5T_NATIVE_INT64, &step);
  set_i64_attr(f, "epoch", H5T_NATIVE_UINT32, &epoch);
  hid_t d = H5Dopen2(f, "/opt_state/count", H5P_DEFAULT);
  CHECK(d >= 0 && H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &step) >= 0,
        "cannot set /opt_state/count");
  H5Dclose(d);
}
static void m_job_id(hid_t f) { set_str_attr(f, "job_id", "j-0000000002-000002"); }
static void m_spec_hash(hid_t f) {
  set_str_attr(f, "spec_hash", "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
}
static void m_job_spec(hid_t f) { set_str_attr(f, "job_spec", "{\"name\": \"other\"}"); }
static void m_bad_digest(hid_t f) { set_str_attr(f, "digest", "not-a-digest"); }
static void m_missing(hid_t f) { H5Ldelete(f, "/params/layer2/b", H5P_DEFAULT); }
static void m_missing_mu(hid_t f) { H5Ldelete(f, "/opt_state/0_adam/mu", H5P_DEFAULT); }
static void m_missing_count(hid_t f) { H5Ldelete(f, "/opt_state/count", H5P_DEFAULT); }
static void m_shape(hid_t f) { replace_dataset(f, "/params/layer1/w", H5T_IEEE_F32LE, 2, 20, 31); }
static void m_rank(hid_t f) { replace_dataset(f, "/params/layer1/b", H5T_IEEE_F32LE, 2, 1, 32); }
static void m_dtype(hid_t f) { replace_dataset(f, "/params/layer2/b", H5T_IEEE_F64LE, 1, 3, 0); }
static void m_extra(hid_t f) { replace_dataset(f, "/params/layer9/w", H5T_IEEE_F32LE, 2, 3, 3); }
static void m_no_digest(hid_t f) { H5Adelete(f, "digest"); }
static void m_no_job_id(hid_t f) { H5Adelete(f, "job_id"); }
static void m_flip(hid_t f) {
  /* One bit of one element of /params/layer1/w. */
  hid_t d = H5Dopen2(f, "/params/layer1/w", H5P_DEFAULT);
  float *w = malloc(sizeof(float) * 20 * 32);
  CHECK(d >= 0 && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w) >= 0,
        "cannot read layer1/w");
  uint32_t u;
  memcpy(&u, &w[37], 4);
  u ^= 1u << 3;
  memcpy(&w[37], &u, 4);
  CHECK(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w) >= 0,
        "cannot write layer1/w");
  free(w);
  H5Dclose(d);
}
static void m_flip_nu(hid_t f) {
  hid_t d = H5Dopen2(f, "/opt_state/0_adam/nu/layer2/b", H5P_DEFAULT);
  float v[3];
  CHECK(d >= 0 && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0,
        "cannot read nu");
  v[1] = -v[1];
  H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  H5Dclose(d);
}

/* Reads path into a zeroed state and expects a refusal whose message
 * contains want, with the state still zero. */
static void expect_refusal(const char *label, const char *path, model *m, const char *want,
                           const char *want2) {
  memset(m->st.params, 0, sizeof(float) * m->plan->n_params);
  memset(m->st.opt_state, 0, sizeof(float) * n_opt(m));
  m->st.step = 99;
  td_error err = {0};
  td_ckpt_meta meta = {0};
  int rc = td_ckpt_read(path, &m->st, &meta, &err);
  CHECK(rc == TD_EDATA, "%s: read returned %d (%s), want TD_EDATA", label, rc, err.msg);
  CHECK_STR_CONTAINS(err.msg, want);
  if (want2)
    CHECK_STR_CONTAINS(err.msg, want2);
  CHECK_STR_CONTAINS(err.msg, path);
  int untouched = m->st.step == 99 && meta.spec_json == NULL;
  for (size_t i = 0; i < m->plan->n_params; i++)
    untouched &= m->st.params[i] == 0.0f;
  for (size_t i = 0; i < n_opt(m); i++)
    untouched &= m->st.opt_state[i] == 0.0f;
  CHECK(untouched, "%s: a refused checkpoint changed the state", label);
}

static void check_bad_files(const char *dir) {
  model a, b;
  if (model_init(&a, 32, adamw) || model_init(&b, 32, adamw))
    return;
  fill_random(&a, 11, 50);
  char good[512], bad[512];
  snprintf(good, sizeof good, "%s/good.h5", dir);
  snprintf(bad, sizeof bad, "%s/bad.h5", dir);
  td_ckpt_meta meta = sample_meta();
  td_error err = {0};
  CHECK(td_ckpt_write(good, &a.st, &meta, &err) == 0, "write: %s", err.msg);

  /* Not HDF5 at all. */
  spit(bad, "step: 10\nparams: [1, 2, 3]\n", 26);
  expect_refusal("text file", bad, &b, "not an HDF5 file", NULL);

  /* Truncated copies, from empty to one byte short. */
  long len = 0;
  char *bytes = slurp(good, &len);
  CHECK(bytes && len > 4096, "good checkpoint is %ld bytes", len);
  if (bytes) {
    const long cuts[] = {0, 7, 64, 512, 2048, len / 2, len - 100, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
      char label[64];
      snprintf(label, sizeof label, "truncated to %ld of %ld bytes", cuts[i], len);
      spit(bad, bytes, cuts[i]);
      memset(b.st.params, 0, sizeof(float) * b.plan->n_params);
      td_ckpt_meta got = {0};
      int rc = td_ckpt_read(bad, &b.st, &got, &err);
      CHECK(rc == TD_EDATA, "%s: read returned %d (%s)", label, rc, err.msg);
      /* Below HDF5's 8-byte signature the file is simply not HDF5; past
       * it, HDF5's end-of-file check names the truncation. */
      const char *want = cuts[i] == 0  ? "is empty (truncated)"
                         : cuts[i] < 8 ? "is not an HDF5 file"
                                       : "is truncated (truncated file: eof = ";
      CHECK(strstr(err.msg, want) != NULL, "%s: message does not say '%s': %s", label, want,
            err.msg);
      td_ckpt_meta_free(&got);
    }
  }
  free(bytes);

  struct {
    const char *label;
    mutator fn;
    const char *want, *want2;
  } cases[] = {
      {"wrong magic", m_magic, "attribute 'format' is 'keras-weights'", "not a traind checkpoint"},
      {"no magic", m_no_magic, "attribute 'format' is missing", NULL},
      {"wrong version", m_version, "format version 3", "reads version 2"},
      {"version 1 (unbound)", m_version1, "format version 1", "checkpoint.init_from"},
      {"missing dataset", m_missing, "missing dataset /params/layer2/b (3,)", NULL},
      {"missing optimizer leaf", m_missing_mu, "missing dataset /opt_state/0_adam/mu/layer1/w",
       "missing dataset /opt_state/0_adam/mu/layer2/b"},
      {"missing count", m_missing_count, "missing dataset /opt_state/count", NULL},
      {"wrong shape", m_shape, "/params/layer1/w has shape (20, 31) in the file, (20, 32)", NULL},
      {"wrong rank", m_rank, "/params/layer1/b has shape (1, 32) in the file, (32,)", NULL},
      {"wrong dtype", m_dtype, "/params/layer2/b has dtype float64, want float32", NULL},
      {"extra dataset", m_extra, "extra dataset /params/layer9/w", NULL},
      {"no digest", m_no_digest, "attribute 'digest' is missing", NULL},
      {"no job id", m_no_job_id, "attribute 'job_id' is missing", NULL},
      {"malformed digest", m_bad_digest, "'digest' is not a SHA-256", NULL},
      {"flipped parameter bit", m_flip, "digest mismatch", NULL},
      {"flipped optimizer sign", m_flip_nu, "digest mismatch", NULL},
      {"position moved consistently", m_position, "digest mismatch", "was edited"},
      {"another job's id", m_job_id, "digest mismatch", NULL},
      {"another spec hash", m_spec_hash, "digest mismatch", NULL},
      {"another job_spec", m_job_spec, "digest mismatch", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    copy_file(good, bad);
    hid_t f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK(f >= 0, "%s: cannot open the copy", cases[i].label);
    if (f < 0)
      continue;
    cases[i].fn(f);
    H5Fclose(f);
    expect_refusal(cases[i].label, bad, &b, cases[i].want, cases[i].want2);
  }

  /* A version 1 file is refused for resuming, also by read_binding, but its
   * /params still load as warm-start parameters. */
  copy_file(good, bad);
  hid_t f1 = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
  CHECK(f1 >= 0, "cannot open the copy for version 1");
  if (f1 >= 0) {
    m_version1(f1);
    H5Fclose(f1);
    td_ckpt_meta bind;
    int rc = td_ckpt_read_binding(bad, &bind, &err);
    CHECK(rc == TD_EDATA, "read_binding of a version 1 file returned %d", rc);
    CHECK_STR_CONTAINS(err.msg, "format version 1");
    rc = td_ckpt_load_params(bad, &b.st, &err);
    CHECK(rc == 0, "load_params of a version 1 file: %s", err.msg);
    CHECK(rc || memcmp(b.st.params, a.st.params, sizeof(float) * a.plan->n_params) == 0,
          "load_params of a version 1 file: parameters differ");
  }

  /* A plan that does not match: another layer width, another optimizer. */
  model w, s;
  if (!model_init(&w, 24, adamw)) {
    expect_refusal("other width", good, &w,
                   "/params/layer1/w has shape (20, 32) in the file, (20, 24) in the model",
                   "/opt_state/0_adam/nu/layer2/w has shape (32, 3) in the file, (24, 3)");
    model_free(&w);
  }
  if (!model_init(&s, 32, momentum)) {
    expect_refusal("other optimizer", good, &s, "missing dataset /opt_state/0_trace/trace/layer1/w",
                   "extra dataset /opt_state/0_adam/mu/layer1/w");
    /* Parameters alone do fit a model with another optimizer. */
    CHECK(td_ckpt_load_params(good, &s.st, &err) == 0, "load_params: %s", err.msg);
    CHECK(memcmp(s.st.params, a.st.params, sizeof(float) * a.plan->n_params) == 0,
          "load_params into a momentum model: parameters differ");
    model_free(&s);
  }
  /* Every mismatch of a parameters-only load is listed. */
  if (!model_init(&w, 24, adamw)) {
    int rc = td_ckpt_load_params(good, &w.st, &err);
    CHECK(rc == TD_EDATA, "load_params into width 24 returned %d", rc);
    CHECK_STR_CONTAINS(err.msg, "3 problems");
    CHECK_STR_CONTAINS(err.msg, "/params/layer1/w has shape (20, 32) in the file, (20, 24)");
    CHECK_STR_CONTAINS(err.msg, "/params/layer1/b has shape (32,) in the file, (24,)");
    CHECK_STR_CONTAINS(err.msg, "/params/layer2/w has shape (32, 3) in the file, (24, 3)");
    model_free(&w);
  }
  /* A missing file. */
  char none[512];
  snprintf(none, sizeof none, "%s/none.h5", dir);
  CHECK(td_ckpt_read(none, &b.st, NULL, &err) == TD_ENOTFOUND, "missing file: %s", err.msg);
  model_free(&a);
  model_free(&b);
}

/* ---- the spec hash -------------------------------------------------------- */

static const char *hash_base =
    "name: hashed\n"
    "model:\n"
    "  input_shape: [784]\n"
    "  layers:\n"
    "    - dense: {features: 32, kernel_init: HE_NORMAL}\n"
    "    - relu: {}\n"
    "    - dropout: {rate: 0.1}\n"
    "    - dense: {features: 10}\n"
    "  loss: SOFTMAX_CROSS_ENTROPY\n"
    "optimizer:\n"
    "  chain: [{adamw: {learning_rate: {constant: 0.001}}}]\n"
    "dataset: {hdf5: {train_file: train.h5, test_file: test.h5}, train_limit: 1000, "
    "test_limit: 500}\n"
    "training: {epochs: 3, batch_size: 16, seed: 7, eval_every_epochs: 1, log_every_steps: 5, "
    "max_steps: 100}\n"
    "devices: {count: 1}\n"
    "checkpoint: {every_steps: 10, keep_last: 2}\n"
    "priority: 1\n";

/* The hash of hash_base with `from` replaced by `to` ("" when the spec
 * does not parse). */
static void hash_variant(const char *from, const char *to, char out[TD_CKPT_HASH_HEX]) {
  char doc[4096];
  out[0] = '\0';
  const char *at = strstr(hash_base, from);
  CHECK(at != NULL, "'%s' is not in the base spec", from);
  if (!at)
    return;
  snprintf(doc, sizeof doc, "%.*s%s%s", (int)(at - hash_base), hash_base, to, at + strlen(from));
  Traind__V1__JobSpec *spec = NULL;
  td_error err = {0};
  int rc = td_jobspec_parse(doc, strlen(doc), &spec, &err);
  CHECK(rc == 0, "variant '%s' -> '%s' does not parse: %s", from, to, err.msg);
  if (!rc) {
    rc = td_ckpt_spec_hash(spec, out, &err);
    CHECK(rc == 0 && strlen(out) == 64, "spec hash of '%s' -> '%s': %s", from, to, err.msg);
  }
  td_jobspec_free(spec);
}

static void check_spec_hash(void) {
  char base[TD_CKPT_HASH_HEX], again[TD_CKPT_HASH_HEX], v[TD_CKPT_HASH_HEX];
  hash_variant("name: hashed", "name: hashed", base);
  hash_variant("name: hashed", "name: hashed", again);
  CHECK(base[0] && strcmp(base, again) == 0, "the spec hash is not deterministic: %s %s", base,
        again);
  /* What changes only what is run or reported keeps the hash. */
  static const char *const same[][2] = {
      {"name: hashed", "name: renamed"},
      {"epochs: 3", "epochs: 30"},
      {"max_steps: 100", "max_steps: 0"},
      {"eval_every_epochs: 1", "eval_every_epochs: 2"},
      {"log_every_steps: 5", "log_every_steps: 50"},
      {"devices: {count: 1}", "devices: {count: 2}"},
      {"priority: 1", "priority: 9"},
      {"every_steps: 10, keep_last: 2", "every_seconds: 60, keep_last: 5"},
      {"test_file: test.h5", "test_file: other.h5"},
      {"test_limit: 500", "test_limit: 50"},
  };
  for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
    hash_variant(same[i][0], same[i][1], v);
    CHECK(strcmp(v, base) == 0, "'%s' -> '%s' changed the spec hash", same[i][0], same[i][1]);
  }
  /* What determines the state changes it. */
  static const char *const differ[][2] = {
      {"features: 32", "features: 33"},
      {"kernel_init: HE_NORMAL", "kernel_init: GLOROT_NORMAL"},
      {"rate: 0.1", "rate: 0.2"},
      {"loss: SOFTMAX_CROSS_ENTROPY", "loss: MEAN_SQUARED_ERROR"},
      {"constant: 0.001", "constant: 0.002"},
      {"train_file: train.h5", "train_file: train2.h5"},
      {"train_limit: 1000", "train_limit: 999"},
      {"batch_size: 16", "batch_size: 32"},
      {"seed: 7", "seed: 8"},
      {"keep_last: 2}", "keep_last: 2, init_from: warm.h5}"},
  };
  for (size_t i = 0; i < sizeof differ / sizeof differ[0]; i++) {
    hash_variant(differ[i][0], differ[i][1], v);
    CHECK(v[0] && strcmp(v, base) != 0, "'%s' -> '%s' kept the spec hash", differ[i][0],
          differ[i][1]);
  }
}

/* ---- atomic writes ------------------------------------------------------- */

static void check_atomic(const char *dir) {
  model a, b;
  if (model_init(&a, 32, adamw) || model_init(&b, 32, adamw))
    return;
  char sub[512], path[600], names[512];
  snprintf(sub, sizeof sub, "%s/atomic", dir);
  mkdir(sub, 0755);
  snprintf(path, sizeof path, "%s/ckpt.h5", sub);
  td_ckpt_meta meta = sample_meta();
  td_error err = {0};
  fill_random(&a, 21, 100);
  CHECK(td_ckpt_write(path, &a.st, &meta, &err) == 0, "first write: %s", err.msg);
  long len0 = 0;
  char *before = slurp(path, &len0);

  /* A stale temporary from an earlier crash is replaced, then gone. */
  char stale[600];
  snprintf(stale, sizeof stale, "%s/.ckpt.h5.tmp", sub);
  spit(stale, "partial", 7);
  fill_random(&a, 22, 200);
  CHECK(td_ckpt_write(path, &a.st, &meta, &err) == 0, "overwrite: %s", err.msg);
  CHECK(hidden_entries(sub, names, sizeof names) == 0, "left behind: %s", names);
  CHECK(td_ckpt_read(path, &b.st, NULL, &err) == 0 && b.st.step == 200 &&
            memcmp(a.st.params, b.st.params, sizeof(float) * a.plan->n_params) == 0,
        "the overwrite did not replace the checkpoint: %s", err.msg);
  free(before);
  before = slurp(path, &len0);

  /* A directory that does not exist. */
  char nodir[600];
  snprintf(nodir, sizeof nodir, "%s/missing/ckpt.h5", sub);
  int rc = td_ckpt_write(nodir, &a.st, &meta, &err);
  CHECK(rc == TD_ENOTFOUND, "write into a missing directory returned %d: %s", rc, err.msg);
  CHECK_STR_CONTAINS(err.msg, "does not exist");

  /* The target is a directory: the rename fails, the temporary goes. */
  char isdir[600];
  snprintf(isdir, sizeof isdir, "%s/adir", sub);
  mkdir(isdir, 0755);
  rc = td_ckpt_write(isdir, &a.st, &meta, &err);
  CHECK(rc != 0, "writing over a directory succeeded");
  CHECK_STR_CONTAINS(err.msg, "rename");
  CHECK(hidden_entries(sub, names, sizeof names) == 0, "left behind: %s", names);
  rmdir(isdir);

  /* A disk that fills up mid-write (a file size limit): the previous
   * checkpoint stays byte for byte, no temporary is left. */
  struct rlimit old, lim;
  getrlimit(RLIMIT_FSIZE, &old);
  lim = old;
  lim.rlim_cur = 4096;
  signal(SIGXFSZ, SIG_IGN);
  fill_random(&a, 23, 300);
  setrlimit(RLIMIT_FSIZE, &lim);
  rc = td_ckpt_write(path, &a.st, &meta, &err);
  setrlimit(RLIMIT_FSIZE, &old);
  CHECK(rc == TD_EIO, "write past the size limit returned %d: %s", rc, err.msg);
  CHECK_STR_CONTAINS(err.msg, "File too large (EFBIG)");
  CHECK_STR_CONTAINS(err.msg, "/.ckpt.h5.tmp");
  long len1 = 0;
  char *after = slurp(path, &len1);
  CHECK(before && after && len0 == len1 && memcmp(before, after, (size_t)len0) == 0,
        "a failed write changed the previous checkpoint");
  CHECK(hidden_entries(sub, names, sizeof names) == 0, "left behind: %s", names);
  CHECK(td_ckpt_read(path, &b.st, NULL, &err) == 0 && b.st.step == 200,
        "the previous checkpoint no longer reads: %s", err.msg);
  free(before);
  free(after);

  /* A file name with no directory part is written in the current one. */
  char cwd[512];
  if (getcwd(cwd, sizeof cwd)) {
    CHECK(chdir(sub) == 0, "chdir");
    CHECK(td_ckpt_write("plain.h5", &a.st, &meta, &err) == 0, "relative path: %s", err.msg);
    CHECK(td_ckpt_read("plain.h5", &b.st, NULL, &err) == 0 && b.st.step == 300,
          "relative path read: %s", err.msg);
    CHECK(chdir(cwd) == 0, "chdir back");
  }
  model_free(&a);
  model_free(&b);
}

/* ---- drivers for the h5py test -------------------------------------------- */

static int e2e_write(const char *dir) {
  model m;
  if (model_init(&m, 32, adamw))
    return 1;
  const td_plan *p = m.plan;
  td_state *st = &m.st;
  td_error err = {0};
  float *a = st->arena, *sc = a + p->scalars_off;
  int32_t *labels = (int32_t *)(a + p->labels_off);
  /* Five steps on batches whose label is the argmax of three pixel sums. */
  for (uint32_t s = 0; s < 5; s++) {
    td_prng_uniform(td_prng_fold_in(td_prng_key(5), s), a + p->in_off, BATCH * IN, 0.f, 1.f);
    for (int r = 0; r < BATCH; r++) {
      const float *x = a + p->in_off + r * IN;
      float g[3] = {x[0] + x[1] + x[2], x[3] + x[4] + x[5], x[6] + x[7] + x[8]};
      labels[r] = g[0] > g[1] ? (g[0] > g[2] ? 0 : 2) : (g[1] > g[2] ? 1 : 2);
    }
    int rc = td_state_forward(st, BATCH, 1, NULL, 0, &err);
    if (!rc)
      rc = td_state_loss(st, BATCH, 1, &err);
    if (!rc)
      rc = td_state_backward(st, &err);
    if (!rc)
      rc = st->be->ops->sumsq(st->be, p->n_params, st->grads, sc + TD_SC_GRAD_SUMSQ);
    td_optim_step os = {.count = st->step, .grad_sumsq = sc[TD_SC_GRAD_SUMSQ]};
    if (!rc)
      rc = td_optim_apply(&p->optim, st->be, &os, p->n_params, st->params, st->grads, st->opt_state,
                          sc + TD_SC_SCRATCH, &err);
    if (rc) {
      fprintf(stderr, "step %u: %s\n", s, err.msg);
      return 1;
    }
    st->step++;
  }
  /* Logits of a fresh batch, computed by the engine. */
  td_prng_uniform(td_prng_key(77), a + p->in_off, BATCH * IN, 0.f, 1.f);
  if (td_state_forward(st, BATCH, 0, NULL, 0, &err)) {
    fprintf(stderr, "forward: %s\n", err.msg);
    return 1;
  }
  char path[512];
  snprintf(path, sizeof path, "%s/x.bin", dir);
  spit(path, a + p->in_off, (long)sizeof(float) * BATCH * IN);
  snprintf(path, sizeof path, "%s/logits.bin", dir);
  spit(path, a + p->out_off, (long)sizeof(float) * BATCH * OUT);
  snprintf(path, sizeof path, "%s/ckpt.h5", dir);
  td_ckpt_meta meta = {.step = st->step,
                       .epoch = 1,
                       .step_in_epoch = 5,
                       .root_key = td_prng_key(42),
                       .seed = 42,
                       .job_id = "e2e-job"};
  /* The job's own spec and its hash, for h5py to recompute. */
  char *json = pbjson_emit(&m.spec->base, PBJSON_PROTO_NAMES);
  meta.spec_json = json;
  if (!json || td_ckpt_spec_hash(m.spec, meta.spec_hash, &err) ||
      td_ckpt_write(path, st, &meta, &err)) {
    fprintf(stderr, "%s\n", json ? err.msg : "pbjson_emit failed");
    free(json);
    return 1;
  }
  free(json);
  model_free(&m);
  return td_check_failures ? 1 : 0;
}

static int e2e_load(const char *in, const char *out) {
  model m;
  if (model_init(&m, 32, adamw))
    return 1;
  td_error err = {0};
  int rc = td_ckpt_load_params(in, &m.st, &err);
  if (rc) {
    fprintf(stderr, "%s\n", err.msg);
    model_free(&m);
    return 2;
  }
  td_ckpt_meta meta = {.root_key = td_prng_key(42), .seed = 42};
  rc = td_ckpt_write(out, &m.st, &meta, &err);
  if (rc)
    fprintf(stderr, "%s\n", err.msg);
  model_free(&m);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "e2e-write") == 0)
    return e2e_write(argv[2]);
  if (argc == 4 && strcmp(argv[1], "e2e-load") == 0)
    return e2e_load(argv[2], argv[3]);

  char dir[] = "/tmp/td_ckpt_XXXXXX";
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  check_round_trip(dir, adamw, "adamw");
  check_round_trip(dir, momentum, "momentum");
  check_bad_files(dir);
  check_spec_hash();
  check_atomic(dir);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (!td_check_failures && system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  return td_check_exit();
}
