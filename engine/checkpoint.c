/* HDF5 checkpoints (see checkpoint.h and docs/checkpoint-format.md). */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5safe.h"

#define LEAF_PATH_MAX (TD_VIEW_NAME_MAX + 64)

/* One float tensor of the file: its dataset path, its view (shape) and
 * where its data lives in a host buffer. */
typedef struct leaf {
  char path[LEAF_PATH_MAX];
  const td_view *view;
  float *data;
} leaf;

/* Every float leaf of a plan, in plan order: /params/<view>, then for each
 * stage with state /opt_state/<i>_<label>/<slot>/<view>, then
 * /batch_stats/<view>. Data pointers are set into params (n_params), opt
 * (state_slots * n_params) and stats (n_stats) host buffers; opt and stats
 * may be NULL when only /params is wanted. */
static int plan_leaves(const td_plan *p, float *params, float *opt, float *stats, leaf **out,
                       size_t *n_out, td_error *err) {
  size_t cap = p->n_views * (1 + (opt ? p->optim.state_slots : 0)) + (stats ? p->n_stat_views : 0);
  leaf *ls = calloc(cap ? cap : 1, sizeof *ls);
  if (!ls)
    return td_errorf(err, TD_ENOMEM, "checkpoint: out of memory");
  size_t n = 0;
  for (size_t v = 0; v < p->n_views; v++, n++) {
    snprintf(ls[n].path, sizeof ls[n].path, "/params/%s", p->views[v].name);
    ls[n].view = &p->views[v];
    ls[n].data = params + p->views[v].offset;
  }
  for (int i = 0; opt && i < p->optim.n_stages; i++) {
    const td_opt_stage *s = &p->optim.stages[i];
    const size_t offs[2] = {s->s1_off, s->s2_off};
    for (int k = 0; k < 2; k++) {
      if (offs[k] == SIZE_MAX)
        continue;
      const char *slot = s->kind == TD_OPT_ADAM ? (k == 0 ? "mu" : "nu") : "trace";
      for (size_t v = 0; v < p->n_views; v++, n++) {
        snprintf(ls[n].path, sizeof ls[n].path, "/opt_state/%d_%s/%s/%s", i, s->label, slot,
                 p->views[v].name);
        ls[n].view = &p->views[v];
        ls[n].data = opt + offs[k] * p->n_params + p->views[v].offset;
      }
    }
  }
  for (size_t v = 0; stats && v < p->n_stat_views; v++, n++) {
    snprintf(ls[n].path, sizeof ls[n].path, "/batch_stats/%s", p->stat_views[v].name);
    ls[n].view = &p->stat_views[v];
    ls[n].data = stats + p->stat_views[v].offset;
  }
  *out = ls;
  *n_out = n;
  return TD_OK;
}

/* Path order for the checksum: component by component, bytewise (what
 * sorting the paths split at '/' gives). */
static int path_cmp(const char *a, const char *b) {
  for (;; a++, b++) {
    unsigned ca = *a == '/' ? 1u : (unsigned char)*a;
    unsigned cb = *b == '/' ? 1u : (unsigned char)*b;
    if (ca != cb || !ca)
      return (int)ca - (int)cb;
  }
}

static int leaf_ptr_cmp(const void *x, const void *y) {
  const leaf *a = *(const leaf *const *)x, *b = *(const leaf *const *)y;
  return path_cmp(a->path, b->path);
}

/* "No space left on device (ENOSPC)": the system's text and the errno's
 * name, so that a message says both what happened and what to look up. */
static const char *errno_text(int e, char *buf, size_t len) {
  const char *name = strerrorname_np(e);
  snprintf(buf, len, "%s (%s)", strerror(e), name ? name : "unknown errno");
  return buf;
}

#define ERRNO_TEXT_MAX 96

/* ---- the digest ----------------------------------------------------------- */

/* One item of the digest's input: its length as a little-endian uint64,
 * then its bytes (docs/checkpoint-format.md). */
static int put(EVP_MD_CTX *c, const void *p, size_t n) {
  uint64_t len = (uint64_t)n; /* little-endian, as on every machine traind builds for */
  return EVP_DigestUpdate(c, &len, sizeof len) == 1 && (n == 0 || EVP_DigestUpdate(c, p, n) == 1);
}

static int put_str(EVP_MD_CTX *c, const char *s) { return put(c, s, strlen(s)); }

static void hex32(const unsigned char *md, char out[TD_CKPT_HASH_HEX]) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = digits[md[i] >> 4];
    out[2 * i + 1] = digits[md[i] & 15];
  }
  out[64] = '\0';
}

/* SHA-256 of a checkpoint's whole content: each root attribute but the
 * digest itself (name, then value in its stored type, in a fixed order),
 * /opt_state/count, then every float leaf (path, then float32 bytes) in path
 * order. Any edit of the position, the binding or a tensor changes it. */
static int ckpt_digest(const td_ckpt_meta *m, int64_t count, const leaf *ls, size_t n,
                       char out[TD_CKPT_HASH_HEX], td_error *err) {
  const leaf **order = malloc((n ? n : 1) * sizeof *order);
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  if (!order || !c) {
    free(order);
    EVP_MD_CTX_free(c);
    return td_errorf(err, TD_ENOMEM, "checkpoint: out of memory");
  }
  for (size_t i = 0; i < n; i++)
    order[i] = &ls[i];
  qsort(order, n, sizeof *order, leaf_ptr_cmp);
  const int32_t version = TD_CKPT_VERSION;
  const uint32_t key[2] = {m->root_key.k[0], m->root_key.k[1]};
  int ok = EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 && put_str(c, "format") &&
           put_str(c, TD_CKPT_FORMAT) && put_str(c, "version") &&
           put(c, &version, sizeof version) && put_str(c, "job_id") && put_str(c, m->job_id) &&
           put_str(c, "spec_hash") && put_str(c, m->spec_hash) && put_str(c, "step") &&
           put(c, &m->step, sizeof m->step) && put_str(c, "epoch") &&
           put(c, &m->epoch, sizeof m->epoch) && put_str(c, "step_in_epoch") &&
           put(c, &m->step_in_epoch, sizeof m->step_in_epoch) && put_str(c, "epoch_loss_sum") &&
           put(c, &m->epoch_loss_sum, sizeof(double)) && put_str(c, "epoch_correct_sum") &&
           put(c, &m->epoch_correct_sum, sizeof(double)) && put_str(c, "seed") &&
           put(c, &m->seed, sizeof m->seed) && put_str(c, "prng_key") && put(c, key, sizeof key) &&
           put_str(c, "job_spec") && put_str(c, m->spec_json ? m->spec_json : "") &&
           put_str(c, "/opt_state/count") && put(c, &count, sizeof count);
  for (size_t i = 0; ok && i < n; i++)
    ok = put_str(c, order[i]->path) && put(c, order[i]->data, order[i]->view->size * sizeof(float));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  ok = ok && EVP_DigestFinal_ex(c, md, &md_len) == 1 && md_len == 32;
  EVP_MD_CTX_free(c);
  free(order);
  if (!ok)
    return td_errorf(err, TD_EINTERNAL,
                     "checkpoint: computing the SHA-256 digest failed (OpenSSL)");
  hex32(md, out);
  return TD_OK;
}

int td_ckpt_spec_hash(const Traind__V1__JobSpec *spec, char out[TD_CKPT_HASH_HEX], td_error *err) {
  /* Shallow copies with the other fields left unset: packing only reads. */
  Traind__V1__JobSpec s = TRAIND__V1__JOB_SPEC__INIT;
  Traind__V1__Dataset ds;
  Traind__V1__IdxDataset idx;
  Traind__V1__Hdf5Dataset h5;
  Traind__V1__Training tr = TRAIND__V1__TRAINING__INIT;
  Traind__V1__Checkpointing ck = TRAIND__V1__CHECKPOINTING__INIT;
  char *none = (char *)protobuf_c_empty_string;
  s.model = spec->model;
  s.optimizer = spec->optimizer;
  if (spec->dataset) {
    ds = *spec->dataset;
    ds.test_limit = 0;
    if (ds.source_case == TRAIND__V1__DATASET__SOURCE_IDX && ds.idx) {
      idx = *ds.idx;
      idx.test_images = idx.test_labels = none;
      ds.idx = &idx;
    } else if (ds.source_case == TRAIND__V1__DATASET__SOURCE_HDF5 && ds.hdf5) {
      h5 = *ds.hdf5;
      h5.test_file = none;
      ds.hdf5 = &h5;
    }
    s.dataset = &ds;
  }
  if (spec->training) {
    tr.batch_size = spec->training->batch_size;
    tr.seed = spec->training->seed;
    s.training = &tr;
  }
  if (spec->checkpoint && spec->checkpoint->init_from && spec->checkpoint->init_from[0]) {
    ck.init_from = spec->checkpoint->init_from;
    s.checkpoint = &ck;
  }
  size_t len = protobuf_c_message_get_packed_size(&s.base);
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf)
    return td_errorf(err, TD_ENOMEM, "checkpoint: out of memory hashing the job spec");
  protobuf_c_message_pack(&s.base, buf);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  int ok = EVP_Digest(buf, len, md, &md_len, EVP_sha256(), NULL) == 1 && md_len == 32;
  free(buf);
  if (!ok)
    return td_errorf(err, TD_EINTERNAL, "checkpoint: hashing the job spec failed (OpenSSL)");
  hex32(md, out);
  return TD_OK;
}

/* ---- HDF5 helpers ------------------------------------------------------- */

static void shape_str(int rank, const hsize_t *dims, char *buf, size_t len) {
  size_t o = (size_t)snprintf(buf, len, "(");
  for (int i = 0; i < rank && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
  if (o < len)
    snprintf(buf + o, len - o, rank == 1 ? ",)" : ")");
}

static void view_shape_str(const td_view *v, char *buf, size_t len) {
  hsize_t d[TD_MAX_RANK];
  for (int i = 0; i < TD_MAX_RANK; i++)
    d[i] = v->shape[i];
  shape_str((int)v->ndim, d, buf, len);
}

static void type_str(hid_t t, char *buf, size_t len) {
  H5T_class_t c = H5Tget_class(t);
  size_t sz = H5Tget_size(t);
  if (c == H5T_FLOAT)
    snprintf(buf, len, "float%zu", 8 * sz);
  else if (c == H5T_INTEGER)
    snprintf(buf, len, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", 8 * sz);
  else if (c == H5T_STRING)
    snprintf(buf, len, "string");
  else
    snprintf(buf, len, "HDF5 class %d", (int)c);
}

static int write_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, int rank, hsize_t dim,
                      const void *val) {
  hid_t sp = rank ? H5Screate_simple(1, &dim, NULL) : H5Screate(H5S_SCALAR);
  hid_t a = sp < 0 ? -1 : H5Acreate2(obj, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
  int ok = a >= 0 && H5Awrite(a, mtype, val) >= 0;
  if (a >= 0)
    ok &= H5Aclose(a) >= 0;
  if (sp >= 0)
    H5Sclose(sp);
  return ok ? 0 : -1;
}

static int write_str_attr(hid_t obj, const char *name, const char *s) {
  hid_t t = H5Tcopy(H5T_C_S1);
  if (t < 0)
    return -1;
  int rc = -1;
  if (H5Tset_size(t, H5T_VARIABLE) >= 0 && H5Tset_cset(t, H5T_CSET_UTF8) >= 0)
    rc = write_attr(obj, name, t, t, 0, 0, &s);
  H5Tclose(t);
  return rc;
}

/* Reads a scalar or 1-D numeric attribute of exactly n elements, converting
 * to mtype; an integer attribute for an integer mtype, a float one for a
 * float mtype. 1: missing; -1: wrong kind or shape, or a failed read. */
static int read_num_attr(hid_t obj, const char *name, hid_t mtype, hssize_t n, void *out) {
  if (H5Aexists(obj, name) <= 0)
    return 1;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0)
    return -1;
  hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
  int rc = -1;
  if (t >= 0 && sp >= 0 && H5Tget_class(t) == H5Tget_class(mtype) &&
      H5Sget_simple_extent_npoints(sp) == n && H5Aread(a, mtype, out) >= 0)
    rc = 0;
  if (t >= 0)
    H5Tclose(t);
  if (sp >= 0)
    H5Sclose(sp);
  H5Aclose(a);
  return rc;
}

/* Reads a string attribute (variable or fixed length) into a malloc'd
 * string. 1: missing; -1: not a string or a failed read. */
static int read_str_attr(hid_t obj, const char *name, char **out) {
  *out = NULL;
  if (H5Aexists(obj, name) <= 0)
    return 1;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0)
    return -1;
  hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
  hid_t mt = -1;
  int rc = -1;
  if (t < 0 || sp < 0 || H5Tget_class(t) != H5T_STRING || H5Sget_simple_extent_npoints(sp) != 1)
    goto done;
  /* HDF5 converts between strings of one character set only. */
  mt = H5Tcopy(H5T_C_S1);
  if (mt < 0 || H5Tset_cset(mt, H5Tget_cset(t)) < 0)
    goto done;
  if (H5Tis_variable_str(t) > 0) {
    char *s = NULL;
    if (H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Aread(a, mt, &s) < 0)
      goto done;
    *out = strdup(s ? s : "");
    H5free_memory(s);
  } else {
    size_t sz = H5Tget_size(t);
    char *s = calloc(sz + 1, 1);
    if (!s || H5Tset_size(mt, sz + 1) < 0 || H5Aread(a, mt, s) < 0) {
      free(s);
      goto done;
    }
    *out = s;
  }
  rc = *out ? 0 : -1;
done:
  if (mt >= 0)
    H5Tclose(mt);
  if (t >= 0)
    H5Tclose(t);
  if (sp >= 0)
    H5Sclose(sp);
  H5Aclose(a);
  return rc;
}

/* ---- writing ------------------------------------------------------------ */

static int write_leaf(hid_t fid, hid_t lcpl, const leaf *l) {
  hsize_t dims[TD_MAX_RANK];
  for (int i = 0; i < TD_MAX_RANK; i++)
    dims[i] = l->view->shape[i];
  hid_t sp = H5Screate_simple((int)l->view->ndim, dims, NULL);
  if (sp < 0)
    return -1;
  hid_t d = H5Dcreate2(fid, l->path, H5T_IEEE_F32LE, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  int ok = d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, l->data) >= 0;
  if (d >= 0)
    ok &= H5Dclose(d) >= 0;
  H5Sclose(sp);
  return ok ? 0 : -1;
}

/* The core driver's memory, allocated through these callbacks so that the
 * finished file can be written from it directly, and kept (in `keep`) for
 * the next write when the caller passes a buffer. */
typedef struct image_mem {
  void *p; /* the driver's current buffer */
  td_ckpt_buffer *keep;
} image_mem;

void td_ckpt_buffer_free(td_ckpt_buffer *b) {
  free(b->p);
  b->p = NULL;
  b->cap = 0;
}

static void *img_malloc(size_t size, H5FD_file_image_op_t op, void *ud) {
  (void)op;
  image_mem *m = ud;
  td_ckpt_buffer *k = m->keep;
  if (k && k->p && size <= k->cap && m->p != k->p)
    return m->p = k->p;
  void *p = malloc(size);
  if (p) {
    m->p = p;
    if (k && !k->p) {
      k->p = p;
      k->cap = size;
    }
  }
  return p;
}

static void *img_realloc(void *ptr, size_t size, H5FD_file_image_op_t op, void *ud) {
  image_mem *m = ud;
  td_ckpt_buffer *k = m->keep;
  if (!ptr)
    return img_malloc(size, op, ud);
  if (k && ptr == k->p && size <= k->cap)
    return ptr;
  void *p = realloc(ptr, size);
  if (p) {
    m->p = p;
    if (k && ptr == k->p) {
      k->p = p;
      k->cap = size;
    }
  }
  return p;
}

static herr_t img_free(void *ptr, H5FD_file_image_op_t op, void *ud) {
  (void)op;
  image_mem *m = ud;
  if (ptr == m->p)
    m->p = NULL;
  if (!m->keep || ptr != m->keep->p)
    free(ptr);
  return 0;
}

static void *img_memcpy(void *dst, const void *src, size_t n, H5FD_file_image_op_t op, void *ud) {
  (void)op;
  (void)ud;
  return memcpy(dst, src, n);
}

static void *img_udata_copy(void *ud) { return ud; }
static herr_t img_udata_free(void *ud) {
  (void)ud;
  return 0;
}

/* Creates path with the bytes of b and fsyncs it. */
static int write_fsync(const char *path, const void *b, size_t len, td_error *err) {
  char et[ERRNO_TEXT_MAX];
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    int e = errno;
    return td_errorf(err, e == EACCES || e == EROFS ? TD_EPERM : TD_EIO,
                     "checkpoint: cannot create '%s': %s", path, errno_text(e, et, sizeof et));
  }
  const char *c = b;
  while (len) {
    ssize_t w = write(fd, c, len > (1u << 30) ? (1u << 30) : len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      int e = w < 0 ? errno : ENOSPC;
      close(fd);
      return td_errorf(err, TD_EIO, "checkpoint: writing '%s' failed: %s", path,
                       errno_text(e, et, sizeof et));
    }
    c += w;
    len -= (size_t)w;
  }
  if (fsync(fd) != 0) {
    int e = errno;
    close(fd);
    return td_errorf(err, TD_EIO, "checkpoint: fsync of '%s' failed: %s", path,
                     errno_text(e, et, sizeof et));
  }
  if (close(fd) != 0)
    return td_errorf(err, TD_EIO, "checkpoint: closing '%s' failed: %s", path,
                     errno_text(errno, et, sizeof et));
  return TD_OK;
}

/* Writes the whole checkpoint to `name` (a new file). HDF5 builds the file
 * in memory (its core driver, without a backing store); the finished bytes
 * are then written from that memory with plain POSIX calls, so that a disk
 * error fails one write() that cleans up after itself (HDF5's own writers
 * do not survive a disk error mid-dataset: they crash or leak the file's
 * memory). The caller renames the file and, on failure, removes it. */
static int write_file(const char *name, const td_ckpt_image *img, const td_ckpt_meta *meta,
                      td_error *err) {
  const td_plan *p = img->plan;
  leaf *ls = NULL;
  size_t n = 0;
  char digest[TD_CKPT_HASH_HEX];
  /* The image is const; the leaves only read through their pointers. */
  int rc = plan_leaves(p, (float *)img->params, (float *)img->opt_state, (float *)img->stats, &ls,
                       &n, err);
  if (rc)
    return rc;
  if ((rc = ckpt_digest(meta, img->count, ls, n, digest, err))) {
    free(ls);
    return rc;
  }
  size_t floats = p->n_params * (1 + p->optim.state_slots) + p->n_stats;
  image_mem mem = {NULL, img->reuse};
  H5FD_file_image_callbacks_t cb = {img_malloc,     img_memcpy,     img_realloc, img_free,
                                    img_udata_copy, img_udata_free, &mem};
  const char *what = "H5Pset_fapl_core";
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE), fid = -1, g = -1;
  int bad = fapl < 0 || lcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
            H5Pset_fapl_core(fapl, floats * sizeof(float) + (256u << 10), 0) < 0 ||
            H5Pset_file_image_callbacks(fapl, &cb) < 0;
  if (!bad) {
    what = "H5Fcreate";
    fid = H5Fcreate(name, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    bad = fid < 0;
  }
  if (!bad) {
    what = "H5Gcreate";
    static const char *const groups[3] = {"/params", "/opt_state", "/batch_stats"};
    for (int i = 0; i < (p->n_stat_views ? 3 : 2) && !bad; i++) {
      g = H5Gcreate2(fid, groups[i], lcpl, H5P_DEFAULT, H5P_DEFAULT);
      bad = g < 0 || H5Gclose(g) < 0;
    }
  }
  for (size_t i = 0; i < n && !bad; i++) {
    what = "H5Dcreate/H5Dwrite";
    bad = write_leaf(fid, lcpl, &ls[i]) < 0;
  }
  if (!bad) {
    what = "writing /opt_state/count";
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t d = sp < 0 ? -1
                     : H5Dcreate2(fid, "/opt_state/count", H5T_STD_I64LE, sp, lcpl, H5P_DEFAULT,
                                  H5P_DEFAULT);
    bad = d < 0 || H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &img->count) < 0;
    if (d >= 0)
      bad |= H5Dclose(d) < 0;
    if (sp >= 0)
      H5Sclose(sp);
  }
  if (!bad && meta->n_vocab) {
    what = "writing /vocab";
    const hsize_t dim = meta->n_vocab;
    hid_t sp = H5Screate_simple(1, &dim, NULL);
    hid_t d =
        sp < 0 ? -1 : H5Dcreate2(fid, "/vocab", H5T_STD_U32LE, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    bad = d < 0 || H5Dwrite(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, meta->vocab) < 0 ||
          write_str_attr(d, "tokens", meta->vocab_bytes ? "byte" : "char") < 0;
    if (d >= 0)
      bad |= H5Dclose(d) < 0;
    if (sp >= 0)
      H5Sclose(sp);
  }
  if (!bad) {
    what = "writing the root attributes";
    const int32_t version = TD_CKPT_VERSION;
    const uint32_t key[2] = {meta->root_key.k[0], meta->root_key.k[1]};
    bad = write_str_attr(fid, "format", TD_CKPT_FORMAT) < 0 ||
          write_attr(fid, "version", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, 0, &version) < 0 ||
          write_attr(fid, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, 0, &meta->step) < 0 ||
          write_attr(fid, "epoch", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, 0, &meta->epoch) < 0 ||
          write_attr(fid, "step_in_epoch", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, 0,
                     &meta->step_in_epoch) < 0 ||
          write_attr(fid, "epoch_loss_sum", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, 0,
                     &meta->epoch_loss_sum) < 0 ||
          write_attr(fid, "epoch_correct_sum", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, 0,
                     &meta->epoch_correct_sum) < 0 ||
          write_attr(fid, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, 0, &meta->seed) < 0 ||
          write_attr(fid, "prng_key", H5T_STD_U32LE, H5T_NATIVE_UINT32, 1, 2, key) < 0 ||
          write_str_attr(fid, "job_spec", meta->spec_json ? meta->spec_json : "") < 0 ||
          write_str_attr(fid, "job_id", meta->job_id) < 0 ||
          write_str_attr(fid, "spec_hash", meta->spec_hash) < 0 ||
          write_str_attr(fid, "digest", digest) < 0;
  }
  ssize_t len = -1;
  if (!bad) {
    what = "H5Fflush";
    bad = H5Fflush(fid, H5F_SCOPE_GLOBAL) < 0 || (len = H5Fget_file_image(fid, NULL, 0)) <= 0 ||
          !mem.p;
  }
  char detail[TD_H5_DETAIL] = "";
  if (bad)
    td_h5_detail(detail);
  /* The file is complete in the driver's memory: out it goes, before the
   * close frees that memory. */
  if (!bad && (rc = write_fsync(name, mem.p, (size_t)len, err))) {
    H5Fclose(fid);
    H5Pclose(lcpl);
    H5Pclose(fapl);
    free(ls);
    return rc;
  }
  if (fid >= 0 && H5Fclose(fid) < 0 && !bad) {
    what = "H5Fclose";
    bad = 1;
    td_h5_detail(detail);
  }
  if (lcpl >= 0)
    H5Pclose(lcpl);
  if (fapl >= 0)
    H5Pclose(fapl);
  free(ls);
  if (bad)
    return td_errorf(err, TD_EIO, "checkpoint: writing '%s' failed in %s: %s", name, what, detail);
  return TD_OK;
}

static int fsync_path(const char *path, int flags) {
  int fd = open(path, flags | O_CLOEXEC);
  if (fd < 0)
    return -1;
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  errno = e;
  return rc;
}

int td_ckpt_write_image(const char *path, const td_ckpt_image *img, const td_ckpt_meta *meta,
                        td_error *err) {
  char dir[PATH_MAX], tmp[PATH_MAX];
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  if (!*base)
    return td_errorf(err, TD_EINVAL, "checkpoint: '%s' names a directory, not a file", path);
  size_t dlen = slash ? (size_t)(slash - path) : 1;
  if (dlen >= sizeof dir)
    return td_errorf(err, TD_EINVAL, "checkpoint: path too long: '%s'", path);
  if (slash)
    snprintf(dir, sizeof dir, "%.*s", (int)(dlen ? dlen : 1), dlen ? path : "/");
  else
    snprintf(dir, sizeof dir, ".");
  if ((size_t)snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, base) >= sizeof tmp)
    return td_errorf(err, TD_EINVAL, "checkpoint: path too long: '%s'", path);

  struct stat sb;
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
    return td_errorf(err, errno == EACCES ? TD_EPERM : TD_ENOTFOUND,
                     "checkpoint: directory '%s' does not exist; create it or choose "
                     "another checkpoint directory",
                     dir);
  char et[ERRNO_TEXT_MAX];
  if (unlink(tmp) != 0 && errno != ENOENT)
    return td_errorf(err, TD_EIO, "checkpoint: cannot remove the stale '%s': %s", tmp,
                     errno_text(errno, et, sizeof et));

  td_h5_quiet q = td_h5_silence();
  int rc = write_file(tmp, img, meta, err);
  td_h5_restore(q);
  if (!rc && rename(tmp, path) != 0) {
    int e = errno;
    rc = td_errorf(err, e == EACCES ? TD_EPERM : TD_EIO,
                   "checkpoint: cannot rename '%s' to '%s': %s", tmp, path,
                   errno_text(e, et, sizeof et));
  }
  if (rc) {
    unlink(tmp);
    return rc;
  }
  if (fsync_path(dir, O_RDONLY | O_DIRECTORY) != 0)
    return td_errorf(err, TD_EIO,
                     "checkpoint: '%s' is complete but fsync of its directory '%s' failed: %s",
                     path, dir, errno_text(errno, et, sizeof et));
  return TD_OK;
}

int td_ckpt_write(const char *path, const td_state *st, const td_ckpt_meta *meta, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  size_t np = p->n_params, no = p->optim.state_slots * np, ns = p->n_stats;
  float *host = malloc((np + no + ns + 1) * sizeof(float));
  if (!host)
    return td_errorf(err, TD_ENOMEM, "checkpoint: cannot allocate %.1f MiB of host memory",
                     (double)(np + no + ns) * 4.0 / (1024.0 * 1024.0));
  int rc = ops->download(st->be, host, st->params, np * sizeof(float));
  if (!rc && no)
    rc = ops->download(st->be, host + np, st->opt_state, no * sizeof(float));
  if (!rc && ns)
    rc = ops->download(st->be, host + np + no, st->stats, ns * sizeof(float));
  if (rc) {
    free(host);
    return td_errorf(err, rc, "checkpoint: copying the state from the %s backend failed",
                     ops->name);
  }
  td_ckpt_image img = {.plan = p,
                       .params = host,
                       .opt_state = host + np,
                       .stats = host + np + no,
                       .count = st->step};
  rc = td_ckpt_write_image(path, &img, meta, err);
  free(host);
  return rc;
}

/* ---- validating and reading --------------------------------------------- */

/* A bounded list of problems, joined by "; ". */
typedef struct problems {
  char buf[TD_ERRMSG_MAX - 200];
  size_t len;
  int n;
} problems;

static void problem(problems *pr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(problems *pr, const char *fmt, ...) {
  pr->n++;
  if (pr->len >= sizeof pr->buf - 1)
    return;
  if (pr->n > 1)
    pr->len += (size_t)snprintf(pr->buf + pr->len, sizeof pr->buf - pr->len, "; ");
  if (pr->len >= sizeof pr->buf - 1)
    return;
  va_list ap;
  va_start(ap, fmt);
  pr->len += (size_t)vsnprintf(pr->buf + pr->len, sizeof pr->buf - pr->len, fmt, ap);
  va_end(ap);
  if (pr->len >= sizeof pr->buf - 1) {
    pr->len = sizeof pr->buf - 1;
    memcpy(pr->buf + sizeof pr->buf - 5, "...", 4);
  }
}

/* Checks every leaf's presence, shape and dtype (float32 only unless
 * any_float) and, when `read`, reads it into its host location. Leaves are
 * opened through td_h5_dopen: one that leads outside the file (external
 * link, external storage, virtual dataset) or is not stored in it refuses
 * the whole file with that error; other mismatches go into pr. */
static int check_and_read_leaves(hid_t fid, const char *path, const leaf *ls, size_t n,
                                 int any_float, int read, problems *pr, td_error *err) {
  for (size_t i = 0; i < n; i++) {
    const leaf *l = &ls[i];
    char want[64], got[64], tn[32];
    view_shape_str(l->view, want, sizeof want);
    hid_t d;
    int rc = td_h5_dopen(fid, path, l->path, "dataset", &d, err);
    if (rc == TD_ENOTFOUND) {
      problem(pr, "missing dataset %s %s", l->path, want);
      continue;
    }
    if (rc == TD_EINVAL) {
      problem(pr, "%s is not a dataset", l->path);
      continue;
    }
    if (rc)
      return rc;
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    hsize_t dims[H5S_MAX_RANK];
    int rank = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    if (rank >= 0 && rank <= H5S_MAX_RANK)
      H5Sget_simple_extent_dims(sp, dims, NULL);
    int shape_ok = rank == (int)l->view->ndim;
    for (int k = 0; shape_ok && k < rank; k++)
      shape_ok = dims[k] == l->view->shape[k];
    H5T_class_t c = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    size_t sz = t >= 0 ? H5Tget_size(t) : 0;
    int type_ok = c == H5T_FLOAT && (sz == 4 || (any_float && sz == 8));
    if (!shape_ok) {
      if (rank >= 0 && rank <= H5S_MAX_RANK)
        shape_str(rank, dims, got, sizeof got);
      else
        snprintf(got, sizeof got, "unreadable");
      problem(pr, "%s has shape %s in the file, %s in the model", l->path, got, want);
    } else if (!type_ok) {
      type_str(t, tn, sizeof tn);
      problem(pr, "%s has dtype %s, want float32%s", l->path, tn, any_float ? " or float64" : "");
    } else if (read && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, l->data) < 0) {
      char detail[TD_H5_DETAIL];
      problem(pr, "%s cannot be read: %s", l->path, td_h5_detail(detail));
    }
    if (t >= 0)
      H5Tclose(t);
    if (sp >= 0)
      H5Sclose(sp);
    H5Dclose(d);
  }
  return TD_OK;
}

typedef struct extra_walk {
  const char *prefix; /* "/params" or "/opt_state" */
  const leaf *ls;
  size_t n;
  problems *pr;
} extra_walk;

static herr_t extra_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
  extra_walk *w = data;
  char full[LEAF_PATH_MAX + 64];
  snprintf(full, sizeof full, "%s/%s", w->prefix, name);
  /* H5Lvisit follows no external link; opening one is refused as well
   * (td_h5_lapl), and one is reported rather than skipped. */
  if (info->type == H5L_TYPE_EXTERNAL) {
    problem(w->pr, "%s is an external link (traind reads only data stored inside the file)", full);
    return 0;
  }
  hid_t o = H5Oopen(g, name, td_h5_lapl());
  if (o < 0)
    return 0;
  int is_dset = H5Iget_type(o) == H5I_DATASET;
  H5Oclose(o);
  if (!is_dset)
    return 0;
  if (strcmp(full, "/opt_state/count") == 0)
    return 0;
  for (size_t i = 0; i < w->n; i++)
    if (strcmp(full, w->ls[i].path) == 0)
      return 0;
  problem(w->pr, "extra dataset %s (not in the model)", full);
  return 0;
}

static void check_extras(hid_t fid, const char *group, const leaf *ls, size_t n, problems *pr) {
  if (H5Lexists(fid, group, td_h5_lapl()) <= 0)
    return;
  hid_t g = H5Gopen2(fid, group, td_h5_gapl());
  if (g < 0) {
    problem(pr, "%s is not a group", group);
    return;
  }
  extra_walk w = {group, ls, n, pr};
  H5Lvisit(g, H5_INDEX_NAME, H5_ITER_INC, extra_cb, &w);
  H5Gclose(g);
}

/* Opens path read-only, with a message that says why not: a regular file
 * (never a FIFO or a device), HDF5, through td_h5_open. Datasets in it are
 * opened through td_h5_dopen and every traversal uses td_h5_lapl/gapl, so
 * nothing outside the file is read. */
static int open_h5(const char *path, hid_t *fid, td_error *err) {
  return td_h5_open(path, "checkpoint", fid, err);
}

/* Reads a string attribute that must fit in len bytes (NUL included). */
static int read_str_attr_into(hid_t fid, const char *path, const char *name, char *out, size_t len,
                              td_error *err) {
  char *v = NULL;
  int r = read_str_attr(fid, name, &v);
  if (r)
    return td_errorf(err, TD_EDATA, "checkpoint '%s': attribute '%s' is %s", path, name,
                     r > 0 ? "missing" : "not a string");
  size_t n = strlen(v);
  int rc = TD_OK;
  if (n >= len)
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s': attribute '%s' is %zu bytes long, "
                   "at most %zu are allowed",
                   path, name, n, len - 1);
  else
    memcpy(out, v, n + 1);
  free(v);
  return rc;
}

static int is_sha256_hex(const char *s) {
  size_t n = 0;
  for (; s[n]; n++)
    if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
      return 0;
  return n == 64;
}

/* The root attributes into *m (spec_json malloc'd) and the stored digest. */
static int read_meta(hid_t fid, const char *path, td_ckpt_meta *m, char digest[TD_CKPT_HASH_HEX],
                     td_error *err) {
  char *fmt = NULL;
  int r = read_str_attr(fid, "format", &fmt);
  if (r || strcmp(fmt, TD_CKPT_FORMAT) != 0) {
    int rc = td_errorf(err, TD_EDATA,
                       "'%s' is not a traind checkpoint: attribute 'format' is %s%s%s, want '%s'",
                       path, r ? (r > 0 ? "missing" : "not a string") : "'", r ? "" : fmt,
                       r ? "" : "'", TD_CKPT_FORMAT);
    free(fmt);
    return rc;
  }
  free(fmt);
  int64_t version = 0;
  if ((r = read_num_attr(fid, "version", H5T_NATIVE_INT64, 1, &version)))
    return td_errorf(err, TD_EDATA, "checkpoint '%s': attribute 'version' is %s", path,
                     r > 0 ? "missing" : "not an integer scalar");
  if (version == 1)
    return td_errorf(err, TD_EDATA,
                     "checkpoint '%s' has format version 1 (not bound to a job): no job "
                     "resumes from it; its /params can warm-start one (checkpoint.init_from)",
                     path);
  if (version != TD_CKPT_VERSION)
    return td_errorf(err, TD_EDATA,
                     "checkpoint '%s' has format version %lld; this traind reads version %d", path,
                     (long long)version, TD_CKPT_VERSION);
  uint32_t key[2];
  struct {
    const char *name;
    hid_t mtype;
    hssize_t n;
    void *out;
  } nums[] = {
      {"step", H5T_NATIVE_INT64, 1, &m->step},
      {"epoch", H5T_NATIVE_UINT32, 1, &m->epoch},
      {"step_in_epoch", H5T_NATIVE_UINT32, 1, &m->step_in_epoch},
      {"epoch_loss_sum", H5T_NATIVE_DOUBLE, 1, &m->epoch_loss_sum},
      {"epoch_correct_sum", H5T_NATIVE_DOUBLE, 1, &m->epoch_correct_sum},
      {"seed", H5T_NATIVE_UINT64, 1, &m->seed},
      {"prng_key", H5T_NATIVE_UINT32, 2, key},
  };
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
    if ((r = read_num_attr(fid, nums[i].name, nums[i].mtype, nums[i].n, nums[i].out)))
      return td_errorf(err, TD_EDATA, "checkpoint '%s': attribute '%s' is %s", path, nums[i].name,
                       r > 0                                ? "missing"
                       : nums[i].n != 1                     ? "not an integer array of 2"
                       : nums[i].mtype == H5T_NATIVE_DOUBLE ? "not a float scalar"
                                                            : "not an integer scalar");
  m->root_key.k[0] = key[0];
  m->root_key.k[1] = key[1];
  if ((r = read_str_attr(fid, "job_spec", &m->spec_json)))
    return td_errorf(err, TD_EDATA, "checkpoint '%s': attribute 'job_spec' is %s", path,
                     r > 0 ? "missing" : "not a string");
  int rc = read_str_attr_into(fid, path, "job_id", m->job_id, sizeof m->job_id, err);
  if (!rc)
    rc = read_str_attr_into(fid, path, "spec_hash", m->spec_hash, sizeof m->spec_hash, err);
  if (!rc)
    rc = read_str_attr_into(fid, path, "digest", digest, TD_CKPT_HASH_HEX, err);
  if (!rc && !is_sha256_hex(digest))
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s': attribute 'digest' is not a SHA-256 in lowercase hex", path);
  return rc;
}

static int read_count(hid_t fid, const char *path, int64_t *count, td_error *err) {
  hid_t d;
  int rc = td_h5_dopen(fid, path, "/opt_state/count", "dataset", &d, err);
  if (rc == TD_ENOTFOUND)
    return td_errorf(err, TD_EDATA, "checkpoint '%s': missing dataset /opt_state/count", path);
  if (rc == TD_EINVAL)
    return td_errorf(err, TD_EDATA, "checkpoint '%s': /opt_state/count is not a dataset", path);
  if (rc)
    return rc;
  hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
  int ok = t >= 0 && sp >= 0 && H5Tget_class(t) == H5T_INTEGER &&
           H5Sget_simple_extent_npoints(sp) == 1 &&
           H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, count) >= 0;
  if (t >= 0)
    H5Tclose(t);
  if (sp >= 0)
    H5Sclose(sp);
  H5Dclose(d);
  if (!ok)
    return td_errorf(err, TD_EDATA, "checkpoint '%s': /opt_state/count is not an integer scalar",
                     path);
  if (*count < 0)
    return td_errorf(err, TD_EDATA, "checkpoint '%s': /opt_state/count is negative (%lld)", path,
                     (long long)*count);
  return TD_OK;
}

void td_ckpt_meta_free(td_ckpt_meta *m) {
  if (!m)
    return;
  free(m->spec_json);
  memset(m, 0, sizeof *m);
}

static int upload_state(td_state *st, const float *host, int with_opt, td_error *err) {
  const td_plan *p = st->plan;
  const td_backend_ops *ops = st->be->ops;
  size_t np = p->n_params, no = with_opt ? p->optim.state_slots * np : 0;
  size_t ns = with_opt ? p->n_stats : 0;
  int rc = ops->upload(st->be, st->params, host, np * sizeof(float));
  if (!rc && no)
    rc = ops->upload(st->be, st->opt_state, host + np, no * sizeof(float));
  if (!rc && ns)
    rc = ops->upload(st->be, st->stats, host + np + no, ns * sizeof(float));
  if (rc)
    return td_errorf(err, rc, "checkpoint: copying the state to the %s backend failed", ops->name);
  return TD_OK;
}

static int ckpt_read(const char *path, td_state *st, td_ckpt_meta *meta, td_error *err) {
  const td_plan *p = st->plan;
  size_t np = p->n_params, no = p->optim.state_slots * np, ns = p->n_stats;
  hid_t fid = -1;
  int rc = open_h5(path, &fid, err);
  if (rc)
    return rc;
  td_ckpt_meta m = {0};
  char want_digest[TD_CKPT_HASH_HEX] = "", digest[TD_CKPT_HASH_HEX];
  int64_t count = 0;
  leaf *ls = NULL;
  size_t n = 0;
  float *host = NULL;
  if ((rc = read_meta(fid, path, &m, want_digest, err)) ||
      (rc = read_count(fid, path, &count, err)))
    goto done;
  if (!(host = malloc((np + no + ns + 1) * sizeof(float)))) {
    rc = td_errorf(err, TD_ENOMEM, "checkpoint: out of memory");
    goto done;
  }
  if ((rc = plan_leaves(p, host, host + np, host + np + no, &ls, &n, err)))
    goto done;
  problems pr = {{0}, 0, 0};
  if (H5Lexists(fid, "/params", td_h5_lapl()) <= 0)
    problem(&pr, "missing group /params");
  if ((rc = check_and_read_leaves(fid, path, ls, n, 0, 1, &pr, err)))
    goto done;
  check_extras(fid, "/params", ls, n, &pr);
  check_extras(fid, "/opt_state", ls, n, &pr);
  check_extras(fid, "/batch_stats", ls, n, &pr);
  if (pr.n) {
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s' does not match this job's model (%d problem%s): %s", path, pr.n,
                   pr.n == 1 ? "" : "s", pr.buf);
    goto done;
  }
  if ((rc = ckpt_digest(&m, count, ls, n, digest, err)))
    goto done;
  if (strcmp(digest, want_digest) != 0) {
    rc = td_errorf(err, TD_EDATA,
                   "checkpoint '%s' is corrupt or was edited: digest mismatch (SHA-256 "
                   "%.12s..., the file says %.12s...)",
                   path, digest, want_digest);
    goto done;
  }
  if ((rc = upload_state(st, host, 1, err)))
    goto done;
  st->step = count;
  if (meta) {
    *meta = m;
    m.spec_json = NULL;
  }
done:
  td_ckpt_meta_free(&m);
  free(ls);
  free(host);
  H5Fclose(fid);
  return rc;
}

int td_ckpt_read_binding(const char *path, td_ckpt_meta *meta, td_error *err) {
  memset(meta, 0, sizeof *meta);
  td_h5_quiet q = td_h5_silence();
  hid_t fid = -1;
  int rc = open_h5(path, &fid, err);
  if (!rc) {
    char digest[TD_CKPT_HASH_HEX];
    rc = read_meta(fid, path, meta, digest, err);
    H5Fclose(fid);
  }
  td_h5_restore(q);
  if (rc)
    td_ckpt_meta_free(meta);
  return rc;
}

int td_ckpt_read(const char *path, td_state *st, td_ckpt_meta *meta, td_error *err) {
  if (meta)
    memset(meta, 0, sizeof *meta);
  td_h5_quiet q = td_h5_silence();
  int rc = ckpt_read(path, st, meta, err);
  td_h5_restore(q);
  return rc;
}

/* Validates path's /params against plan; with st, also loads them. */
static int load_params(const char *path, const td_plan *p, td_state *st, td_error *err) {
  hid_t fid = -1;
  int rc = open_h5(path, &fid, err);
  if (rc)
    return rc;
  leaf *ls = NULL;
  size_t n = 0;
  float *host = malloc((p->n_params + 1) * sizeof(float));
  if (!host) {
    rc = td_errorf(err, TD_ENOMEM, "checkpoint: out of memory");
    goto done;
  }
  if ((rc = plan_leaves(p, host, NULL, NULL, &ls, &n, err)))
    goto done;
  problems pr = {{0}, 0, 0};
  if (H5Lexists(fid, "/params", td_h5_lapl()) <= 0) {
    rc = td_errorf(err, TD_EDATA,
                   "'%s' has no /params group; parameters go in /params/<layer>/<leaf>", path);
    goto done;
  }
  if ((rc = check_and_read_leaves(fid, path, ls, n, 1, st != NULL, &pr, err)))
    goto done;
  check_extras(fid, "/params", ls, n, &pr);
  if (pr.n) {
    rc = td_errorf(err, TD_EDATA, "'%s' does not match this job's parameters (%d problem%s): %s",
                   path, pr.n, pr.n == 1 ? "" : "s", pr.buf);
    goto done;
  }
  if (st)
    rc = upload_state(st, host, 0, err);
done:
  free(ls);
  free(host);
  H5Fclose(fid);
  return rc;
}

int td_ckpt_load_params(const char *path, td_state *st, td_error *err) {
  td_h5_quiet q = td_h5_silence();
  int rc = load_params(path, st->plan, st, err);
  td_h5_restore(q);
  return rc;
}

int td_ckpt_check_params(const char *path, const td_plan *plan, td_error *err) {
  td_h5_quiet q = td_h5_silence();
  int rc = load_params(path, plan, NULL, err);
  td_h5_restore(q);
  return rc;
}

int td_ckpt_read_vocab(const char *path, uint32_t **vocab, uint32_t *n, int *bytes, td_error *err) {
  *vocab = NULL;
  *n = 0;
  *bytes = 0;
  td_h5_quiet q = td_h5_silence();
  hid_t fid = -1, d = -1, sp = -1;
  int rc = open_h5(path, &fid, err);
  if (rc) {
    td_h5_restore(q);
    return rc;
  }
  if (H5Lexists(fid, "/vocab", td_h5_lapl()) <= 0) {
    rc = td_errorf(err, TD_ENOTFOUND,
                   "checkpoint '%s' holds no vocabulary (/vocab): its job was not trained on a "
                   "text dataset",
                   path);
    goto done;
  }
  d = H5Dopen2(fid, "/vocab", td_h5_dapl());
  sp = d < 0 ? -1 : H5Dget_space(d);
  hssize_t count = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
  if (d < 0 || sp < 0 || H5Sget_simple_extent_ndims(sp) != 1 || count < 1 || count > (1 << 24)) {
    rc =
        td_errorf(err, TD_EDATA, "checkpoint '%s': /vocab is not a list of 1 to 2^24 tokens", path);
    goto done;
  }
  char *tokens = NULL;
  if (read_str_attr(d, "tokens", &tokens) ||
      (strcmp(tokens, "char") != 0 && strcmp(tokens, "byte") != 0)) {
    rc = td_errorf(err, TD_EDATA, "checkpoint '%s': /vocab's attribute tokens is not char or byte",
                   path);
    free(tokens);
    goto done;
  }
  *bytes = strcmp(tokens, "byte") == 0;
  free(tokens);
  if (!(*vocab = malloc((size_t)count * sizeof **vocab))) {
    rc = td_errorf(err, TD_ENOMEM, "checkpoint: out of memory");
    goto done;
  }
  if (H5Dread(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, *vocab) < 0) {
    free(*vocab);
    *vocab = NULL;
    rc = td_errorf(err, TD_EDATA, "checkpoint '%s': /vocab cannot be read as uint32", path);
    goto done;
  }
  *n = (uint32_t)count;
done:
  if (sp >= 0)
    H5Sclose(sp);
  if (d >= 0)
    H5Dclose(d);
  H5Fclose(fid);
  td_h5_restore(q);
  return rc;
}
