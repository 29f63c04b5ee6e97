/* Dataset loading (IDX through zlib, HDF5 through the C API) and the
 * resolution of dataset paths under the data roots; see data.h. */
#include "data.h"

#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "h5safe.h"

/* The most values one dataset may hold: 2^31 (8 GiB as float32). */
#define MAX_VALUES ((uint64_t)1 << 31)

void td_dataset_free(td_dataset *ds) {
  if (!ds)
    return;
  free(ds->x);
  free(ds->y);
  free(ds->vocab);
  memset(ds, 0, sizeof *ds);
}

void td_dataset_examples_layout(td_dataset *ds) {
  ds->stride = ds->dim;
  ds->label_dim = 1;
  ds->label_stride = 1;
  ds->n_values = (size_t)ds->n * ds->dim;
}

/* A dataset whose layout fields are all zero (one put together by hand
 * rather than by a loader) is taken as examples: stride dim, one label. */
void td_dataset_gather(const td_dataset *ds, const uint32_t *idx, size_t count, float *dst,
                       int32_t *labels) {
  const size_t dim = ds->dim;
  const size_t stride = ds->stride ? ds->stride : dim;
  const size_t label_dim = ds->label_dim ? ds->label_dim : 1;
  const size_t label_stride = ds->label_stride ? ds->label_stride : 1;
  for (size_t k = 0; k < count; k++) {
    memcpy(dst + k * dim, ds->x + (size_t)idx[k] * stride, dim * sizeof *dst);
    if (!labels)
      continue;
    if (label_dim == 1)
      labels[k] = ds->y[(size_t)idx[k] * label_stride];
    else
      memcpy(labels + k * label_dim, ds->y + (size_t)idx[k] * label_stride,
             label_dim * sizeof *labels);
  }
}

/* uint8 -> [0, 1] by division, so values equal numpy's `x / 255.0` in float32. */
static void fill_u8_table(float table[256]) {
  for (int v = 0; v < 256; v++)
    table[v] = (float)v / 255.0f;
}

/* ---- path resolution ---------------------------------------------------- */

/* Writes `path` made absolute (against the working directory) with ".", ".."
 * and repeated slashes removed, as text only: symlinks are not followed.
 * Returns 0, or -1 when the result does not fit. */
static int lexical_abs(const char *path, char *out, size_t outlen) {
  char joined[2 * PATH_MAX];
  if (path[0] == '/') {
    if (snprintf(joined, sizeof joined, "%s", path) >= (int)sizeof joined)
      return -1;
  } else {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
      return -1;
    if (snprintf(joined, sizeof joined, "%s/%s", cwd, path) >= (int)sizeof joined)
      return -1;
  }
  size_t len = 0; /* out holds "" for the root, else "/a/b" */
  const char *p = joined;
  while (*p) {
    while (*p == '/')
      p++;
    const char *seg = p;
    while (*p && *p != '/')
      p++;
    size_t n = (size_t)(p - seg);
    if (n == 0 || (n == 1 && seg[0] == '.'))
      continue;
    if (n == 2 && seg[0] == '.' && seg[1] == '.') {
      while (len > 0 && out[len - 1] != '/')
        len--;
      if (len > 0)
        len--; /* drop the slash too; ".." at the root stays there */
      continue;
    }
    if (len + 1 + n + 1 > outlen)
      return -1;
    out[len++] = '/';
    memcpy(out + len, seg, n);
    len += n;
  }
  if (len == 0) {
    if (outlen < 2)
      return -1;
    out[len++] = '/';
  }
  out[len] = '\0';
  return 0;
}

static int path_inside(const char *path, const char *root) {
  if (!root[0])
    return 0;
  if (strcmp(root, "/") == 0)
    return path[0] == '/';
  size_t n = strlen(root);
  return strncmp(path, root, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* Each root as written (made absolute, lexically) and canonical ("" when the
 * root does not exist: then it holds nothing, but an absolute path under it is
 * reported as not found rather than as an escape). */
typedef struct root_forms {
  char lexical[PATH_MAX];
  char canonical[PATH_MAX];
} root_forms;

static int inside_any(const char *path, const root_forms *r, size_t n, int canonical_only) {
  for (size_t i = 0; i < n; i++) {
    if (path_inside(path, r[i].canonical))
      return 1;
    if (!canonical_only && path_inside(path, r[i].lexical))
      return 1;
  }
  return 0;
}

/* "/a, /b (missing)" for messages, shortened with "..." when long. */
static void format_roots(const char *const *roots, const root_forms *r, size_t n, char *buf,
                         size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    int w = snprintf(buf + used, len - used, "%s%s%s", i ? ", " : "", roots[i],
                     r[i].canonical[0] ? "" : " (missing)");
    if (w < 0 || (size_t)w >= len - used) {
      if (len > 4)
        strcpy(buf + len - 4, "...");
      return;
    }
    used += (size_t)w;
  }
}

/* A failed stat or realpath of a candidate: a path that cannot name a file
 * (a loop of symlinks, a name too long) is a wrong argument, not a reason
 * to retry. */
static int access_error(const char *rel, const char *path, const char *doing, int e,
                        td_error *err) {
  if (e == ELOOP)
    return td_errorf(err, TD_EINVAL,
                     "dataset path '%s': cannot %s '%s': a loop of symbolic links (or more "
                     "than the system follows); point the path at the file itself",
                     rel, doing, path);
  if (e == ENAMETOOLONG)
    return td_errorf(err, TD_EINVAL,
                     "dataset path '%s': cannot %s '%s': a name in it is longer than the file "
                     "system allows (%d bytes)",
                     rel, doing, path, NAME_MAX);
  return td_errorf(err, e == EACCES ? TD_EPERM : TD_EIO, "dataset path '%s': cannot %s '%s': %s",
                   rel, doing, path, strerror(e));
}

/* Tries one candidate path. Returns 0 with the canonical path in out, 1 when
 * nothing is there, or an error. */
static int try_candidate(const char *path, const char *rel, const root_forms *r, size_t n,
                         const char *rootlist, char *out, size_t outlen, td_error *err) {
  struct stat st;
  if (stat(path, &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return 1;
    return access_error(rel, path, "access", errno, err);
  }
  char *canon = realpath(path, NULL);
  if (!canon)
    return access_error(rel, path, "canonicalize", errno, err);
  int rc = 0;
  if (!inside_any(canon, r, n, 1)) {
    rc = td_errorf(err, TD_EPERM, "dataset path '%s' escapes the data roots (%s): it leads to '%s'",
                   rel, rootlist, canon);
  } else if (!S_ISREG(st.st_mode)) {
    rc = td_errorf(err, TD_EINVAL,
                   "dataset path '%s': '%s' is %s, not a regular file; datasets and warm-start "
                   "files are read only from regular files",
                   rel, canon, td_file_kind(st.st_mode));
  } else if (strlen(canon) >= outlen) {
    rc = td_errorf(err, TD_EINVAL, "dataset path '%s': the resolved path '%s' is too long", rel,
                   canon);
  } else {
    strcpy(out, canon);
  }
  free(canon);
  return rc;
}

int td_data_resolve(const char *const *roots, size_t nroots, const char *rel, int alt_gz, char *out,
                    size_t outlen, td_error *err) {
  if (!rel || !rel[0])
    return td_errorf(err, TD_EINVAL, "dataset path is empty");
  if (nroots == 0)
    return td_errorf(err, TD_EINVAL,
                     "dataset path '%s' cannot be resolved: no data roots are configured "
                     "(start traind with --data-dir DIR)",
                     rel);
  size_t rlen = strlen(rel);
  if (rlen + 4 >= PATH_MAX)
    return td_errorf(err, TD_EINVAL, "dataset path '%.64s...' is too long", rel);

  /* The names to try: as written, then with ".gz" added or removed. */
  char names[2][PATH_MAX];
  int nnames = 1;
  strcpy(names[0], rel);
  if (alt_gz) {
    if (rlen > 3 && strcmp(rel + rlen - 3, ".gz") == 0) {
      memcpy(names[1], rel, rlen - 3);
      names[1][rlen - 3] = '\0';
    } else {
      snprintf(names[1], sizeof names[1], "%s.gz", rel);
    }
    nnames = 2;
  }

  root_forms *r = calloc(nroots, sizeof *r);
  if (!r)
    return td_errorf(err, TD_ENOMEM, "out of memory resolving dataset path '%s'", rel);
  for (size_t i = 0; i < nroots; i++) {
    if (!roots[i] || !roots[i][0] || lexical_abs(roots[i], r[i].lexical, sizeof r[i].lexical) != 0)
      r[i].lexical[0] = '\0';
    char *canon = roots[i] && roots[i][0] ? realpath(roots[i], NULL) : NULL;
    if (canon && strlen(canon) < sizeof r[i].canonical)
      strcpy(r[i].canonical, canon);
    free(canon);
  }
  char rootlist[640];
  format_roots(roots, r, nroots, rootlist, sizeof rootlist);

  int rc = 1;
  char lex[PATH_MAX], joined[2 * PATH_MAX];
  if (rel[0] == '/') {
    if (lexical_abs(rel, lex, sizeof lex) != 0 || !inside_any(lex, r, nroots, 0)) {
      rc = td_errorf(err, TD_EPERM, "dataset path '%s' escapes the data roots (%s)", rel, rootlist);
    }
    for (int k = 0; rc == 1 && k < nnames; k++)
      rc = try_candidate(names[k], rel, r, nroots, rootlist, out, outlen, err);
  } else {
    for (size_t i = 0; rc == 1 && i < nroots; i++) {
      if (!r[i].canonical[0])
        continue;
      for (int k = 0; rc == 1 && k < nnames; k++) {
        snprintf(joined, sizeof joined, "%s/%s", r[i].lexical, names[k]);
        if (lexical_abs(joined, lex, sizeof lex) != 0 || !inside_any(lex, r, nroots, 0)) {
          rc = td_errorf(err, TD_EPERM, "dataset path '%s' escapes the data roots (%s)", rel,
                         rootlist);
          break;
        }
        rc = try_candidate(joined, rel, r, nroots, rootlist, out, outlen, err);
      }
    }
  }
  if (rc == 1) {
    if (nnames == 2)
      rc = td_errorf(err, TD_ENOTFOUND,
                     "dataset file '%s' (or '%s') not found in the data roots (%s); put it under "
                     "one of them or add its directory with --data-dir",
                     names[0], names[1], rootlist);
    else
      rc = td_errorf(err, TD_ENOTFOUND,
                     "dataset file '%s' not found in the data roots (%s); put it under one of "
                     "them or add its directory with --data-dir",
                     rel, rootlist);
  }
  free(r);
  return rc;
}

/* ---- IDX ---------------------------------------------------------------- */

/* One IDX file: its header and the open stream positioned at the payload. */
typedef struct idx_file {
  const char *path;
  gzFile f;
  uint32_t ndims;
  uint32_t dims[5];
  uint64_t count;    /* dims[0] */
  uint64_t per_item; /* product of the other dimensions */
} idx_file;

static int idx_open_error(const char *path, td_error *err) {
  int e = errno;
  int code = e == ENOENT ? TD_ENOTFOUND : (e == EACCES || e == EPERM) ? TD_EPERM : TD_EIO;
  return td_errorf(err, code, "cannot open '%s': %s", path, e ? strerror(e) : "out of memory");
}

/* Reads up to len bytes; *got says how many came. Returns 0, or an error for
 * corrupt compressed data or a read failure (a stream that just ends is not
 * an error here: the caller compares *got with what it expected). */
static int idx_read(idx_file *f, void *buf, uint64_t len, uint64_t *got, td_error *err) {
  *got = 0;
  while (*got < len) {
    uint64_t want = len - *got;
    if (want > (1u << 30))
      want = 1u << 30;
    int n = gzread(f->f, (char *)buf + *got, (unsigned)want);
    if (n < 0) {
      int zerr;
      const char *msg = gzerror(f->f, &zerr);
      if (zerr == Z_ERRNO)
        return td_errorf(err, TD_EIO, "'%s': read failed: %s", f->path, strerror(errno));
      if (zerr == Z_BUF_ERROR)
        break; /* the gzip stream ends early: reported as truncation */
      return td_errorf(err, TD_EDATA, "'%s': corrupt gzip data: %s", f->path, msg);
    }
    if (n == 0)
      break;
    *got += (uint64_t)n;
  }
  return 0;
}

static uint32_t be32(const unsigned char *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Opens an IDX file of unsigned bytes and reads its header. Labels have one
 * dimension; images 2 to 5 (the first being the example count). */
static int idx_open(idx_file *f, const char *path, int labels, td_error *err) {
  memset(f, 0, sizeof *f);
  f->path = path;
  struct stat st;
  int fd = td_open_regular(path, labels ? "IDX label file" : "IDX image file", &st, err);
  if (fd < 0)
    return fd;
  errno = 0;
  f->f = gzdopen(fd, "rb");
  if (!f->f) {
    int rc = idx_open_error(path, err);
    close(fd);
    return rc;
  }
  gzbuffer(f->f, 1u << 18);
  const char *what = labels ? "label" : "image";
  const uint32_t expect = labels ? 0x00000801u : 0x00000803u;
  unsigned char b[4 * 6];
  uint64_t got;
  int rc = idx_read(f, b, 4, &got, err);
  if (rc)
    return rc;
  if (got < 4)
    return td_errorf(err, TD_EDATA, "'%s': not an IDX %s file: only %" PRIu64 " bytes long", path,
                     what, got);
  const uint32_t magic = be32(b);
  const uint32_t nd = b[3];
  if (b[0] || b[1] || b[2] != 0x08 || (labels ? nd != 1 : (nd < 2 || nd > 5)))
    return td_errorf(err, TD_EDATA,
                     "'%s': not an IDX %s file: magic number 0x%08" PRIx32 ", expected 0x%08" PRIx32
                     " (unsigned bytes, %s)",
                     path, what, magic, expect, labels ? "1 dimension" : "3 dimensions");
  f->ndims = nd;
  rc = idx_read(f, b, 4 * (uint64_t)nd, &got, err);
  if (rc)
    return rc;
  if (got < 4 * (uint64_t)nd)
    return td_errorf(err, TD_EDATA, "'%s': truncated: the IDX header ends inside its dimensions",
                     path);
  uint64_t total = 1;
  for (uint32_t i = 0; i < nd; i++) {
    f->dims[i] = be32(b + 4 * i);
    if (f->dims[i] == 0)
      return td_errorf(err, TD_EDATA, "'%s': dimension %" PRIu32 " of the IDX header is 0", path,
                       i);
    total *= f->dims[i];
    if (total > MAX_VALUES)
      return td_errorf(err, TD_EDATA,
                       "'%s': the IDX header promises more than 2^31 bytes of %s data; refusing "
                       "to load it",
                       path, what);
  }
  f->count = f->dims[0];
  f->per_item = total / f->count;
  return 0;
}

static void idx_close(idx_file *f) {
  if (f->f)
    gzclose(f->f);
  f->f = NULL;
}

/* Reads exactly len bytes of payload and checks that nothing follows. */
static int idx_payload(idx_file *f, unsigned char *buf, uint64_t len, const char *what,
                       td_error *err) {
  uint64_t got;
  int rc = idx_read(f, buf, len, &got, err);
  if (rc)
    return rc;
  if (got < len)
    return td_errorf(err, TD_EDATA,
                     "'%s': truncated: expected %" PRIu64 " bytes of %s data, found %" PRIu64,
                     f->path, len, what, got);
  uint64_t extra = 0;
  unsigned char tail[4096];
  do {
    rc = idx_read(f, tail, sizeof tail, &got, err);
    if (rc)
      return rc;
    extra += got;
  } while (got == sizeof tail);
  if (extra)
    return td_errorf(err, TD_EDATA,
                     "'%s': %" PRIu64 " bytes of trailing data after the %" PRIu64
                     " bytes of %s data (wrong dimensions in the header?)",
                     f->path, extra, len, what);
  return 0;
}

/* Opens an IDX pair and checks that they hold as many images as labels.
 * On failure both are closed. */
static int idx_open_pair(idx_file *im, idx_file *lb, const char *images_path,
                         const char *labels_path, td_error *err) {
  memset(lb, 0, sizeof *lb);
  int rc = idx_open(im, images_path, 0, err);
  if (!rc)
    rc = idx_open(lb, labels_path, 1, err);
  if (!rc && im->count != lb->count)
    rc = td_errorf(err, TD_EDATA, "'%s' holds %" PRIu64 " images but '%s' holds %" PRIu64 " labels",
                   images_path, im->count, labels_path, lb->count);
  if (rc) {
    idx_close(lb);
    idx_close(im);
  }
  return rc;
}

/* The examples a loader keeps of n: the first `limit` when limit > 0. */
static uint64_t kept(uint64_t n, uint32_t limit) { return (limit > 0 && limit < n) ? limit : n; }

/* n, dim, ndim and shape of ds from an opened images file. */
static void idx_set_shape(const idx_file *im, uint64_t keep, td_dataset *ds) {
  ds->n = (uint32_t)keep;
  ds->dim = (uint32_t)im->per_item;
  ds->ndim = im->ndims - 1;
  for (uint32_t i = 0; i + 1 < im->ndims; i++)
    ds->shape[i] = im->dims[i + 1];
}

int td_idx_shape(const char *images_path, const char *labels_path, uint32_t limit, td_dataset *ds,
                 td_error *err) {
  memset(ds, 0, sizeof *ds);
  idx_file im, lb;
  int rc = idx_open_pair(&im, &lb, images_path, labels_path, err);
  if (rc)
    return rc;
  idx_set_shape(&im, kept(im.count, limit), ds);
  td_dataset_examples_layout(ds);
  idx_close(&lb);
  idx_close(&im);
  return 0;
}

int td_idx_load(const char *images_path, const char *labels_path, uint32_t limit, td_dataset *ds,
                td_error *err) {
  memset(ds, 0, sizeof *ds);
  idx_file im, lb;
  unsigned char *pix = NULL, *lab = NULL;
  int rc = idx_open_pair(&im, &lb, images_path, labels_path, err);
  if (rc)
    return rc;
  const uint64_t n = im.count, dim = im.per_item;
  const uint64_t keep = kept(n, limit);
  pix = malloc(n * dim);
  lab = malloc(n);
  ds->x = malloc(keep * dim * sizeof *ds->x);
  ds->y = malloc(keep * sizeof *ds->y);
  if (!pix || !lab || !ds->x || !ds->y) {
    rc = td_errorf(err, TD_ENOMEM, "out of memory loading '%s' (%" PRIu64 " MiB)", images_path,
                   (n * dim * 5) >> 20);
    goto done;
  }
  rc = idx_payload(&im, pix, n * dim, "pixel", err);
  if (rc)
    goto done;
  rc = idx_payload(&lb, lab, n, "label", err);
  if (rc)
    goto done;

  float table[256];
  fill_u8_table(table);
  for (uint64_t i = 0; i < keep * dim; i++)
    ds->x[i] = table[pix[i]];
  int32_t max_label = 0;
  for (uint64_t i = 0; i < keep; i++) {
    ds->y[i] = lab[i];
    if (lab[i] > max_label)
      max_label = lab[i];
  }
  idx_set_shape(&im, keep, ds);
  td_dataset_examples_layout(ds);
  ds->max_label = max_label;

done:
  idx_close(&lb);
  idx_close(&im);
  free(pix);
  free(lab);
  if (rc)
    td_dataset_free(ds);
  return rc;
}

/* ---- HDF5 --------------------------------------------------------------- */

/* An open dataset with its shape. */
typedef struct h5_dset {
  hid_t id, space, type;
  int rank;
  hsize_t dims[H5S_MAX_RANK];
} h5_dset;

static void h5_dset_close(h5_dset *d) {
  if (d->type >= 0)
    H5Tclose(d->type);
  if (d->space >= 0)
    H5Sclose(d->space);
  if (d->id >= 0)
    H5Dclose(d->id);
  d->id = d->space = d->type = H5I_INVALID_HID;
}

/* Opens dataset `name` through td_h5_dopen (which refuses what leads outside
 * the file and what the file cannot hold) and reads its shape. */
static int h5_dset_open(hid_t fid, const char *path, const char *name, const char *role, h5_dset *d,
                        td_error *err) {
  d->id = d->space = d->type = H5I_INVALID_HID;
  int rc = td_h5_dopen(fid, path, name, role, &d->id, err);
  if (rc == TD_ENOTFOUND || rc == TD_EINVAL) {
    char top[400];
    td_h5_list_top(fid, top, sizeof top);
    return td_errorf(err, TD_ENOTFOUND, "'%s' has no dataset '%s' (the %s); the file holds: %s",
                     path, name, role, top[0] ? top : "nothing at the top level");
  }
  if (rc)
    return rc;
  d->space = H5Dget_space(d->id);
  d->type = H5Dget_type(d->id);
  d->rank = d->space >= 0 ? H5Sget_simple_extent_ndims(d->space) : -1;
  if (d->type < 0 || d->rank < 0 ||
      (d->rank > 0 && H5Sget_simple_extent_dims(d->space, d->dims, NULL) < 0))
    return td_errorf(err, TD_EDATA, "'%s': cannot read the shape of dataset '%s'", path, name);
  return 0;
}

static void format_shape(const h5_dset *d, char *buf, size_t len) {
  size_t used = (size_t)snprintf(buf, len, "(");
  for (int i = 0; i < d->rank && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%llu", i ? ", " : "",
                             (unsigned long long)d->dims[i]);
  if (used < len)
    snprintf(buf + used, len - used, ")");
}

/* Selects the first `keep` rows of d in the file and makes a matching memory
 * space. */
static hid_t h5_select_rows(h5_dset *d, hsize_t keep) {
  hsize_t start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK];
  for (int i = 0; i < d->rank; i++)
    count[i] = d->dims[i];
  count[0] = keep;
  if (H5Sselect_hyperslab(d->space, H5S_SELECT_SET, start, NULL, count, NULL) < 0)
    return H5I_INVALID_HID;
  return H5Screate_simple(d->rank, count, NULL);
}

/* An HDF5 pair of features and labels, opened and checked as far as their
 * headers go: shapes (features (N, ...), labels (N) or (N, 1), the same N),
 * the kept rows and types. */
typedef struct h5_pair {
  hid_t fid;
  h5_dset x, y;
  uint64_t n, dim, keep;
  int is_u8; /* uint8 features (else float32 or float64) */
} h5_pair;

static void h5_pair_close(h5_pair *p) {
  h5_dset_close(&p->x);
  h5_dset_close(&p->y);
  if (p->fid >= 0)
    H5Fclose(p->fid);
  p->fid = H5I_INVALID_HID;
}

/* Opens and checks the pair; on failure everything is closed again. The
 * file is opened through td_h5_open (a regular file, HDF5, nothing outside
 * it followed) and each dataset through td_h5_dopen, so what a pair that
 * opened declares is stored in the file and may be allocated. */
static int h5_pair_open(h5_pair *p, const char *path, const char *features, const char *labels,
                        uint32_t limit, td_error *err) {
  memset(p, 0, sizeof *p);
  p->fid = p->x.id = p->x.space = p->x.type = H5I_INVALID_HID;
  p->y = p->x;
  char shape[128], tname[64];
  int rc = td_h5_open(path, "HDF5 dataset file", &p->fid, err);
  if (rc)
    return rc;
  h5_dset *fx = &p->x, *fy = &p->y;
  rc = h5_dset_open(p->fid, path, features, "features", fx, err);
  if (rc)
    goto fail;
  rc = h5_dset_open(p->fid, path, labels, "labels", fy, err);
  if (rc)
    goto fail;

  /* Shapes: features (N, ...), labels (N) or (N, 1), the same N. */
  format_shape(fx, shape, sizeof shape);
  if (fx->rank < 2 || fx->rank > 5) {
    rc = td_errorf(err, TD_EDATA,
                   "'%s': features '%s' have shape %s; expected (N, ...) with 1 to 4 dimensions "
                   "per example",
                   path, features, shape);
    goto fail;
  }
  uint64_t dim = 1; /* saturates just above MAX_VALUES, so it cannot overflow */
  for (int i = 1; i < fx->rank; i++)
    dim = fx->dims[i] > MAX_VALUES || dim * fx->dims[i] > MAX_VALUES ? MAX_VALUES + 1
                                                                     : dim * fx->dims[i];
  const uint64_t n = fx->dims[0];
  if (n == 0 || dim == 0) {
    rc = td_errorf(err, TD_EDATA, "'%s': features '%s' have shape %s and hold no values", path,
                   features, shape);
    goto fail;
  }
  format_shape(fy, shape, sizeof shape);
  if (!(fy->rank == 1 || (fy->rank == 2 && fy->dims[1] == 1))) {
    rc = td_errorf(err, TD_EDATA, "'%s': labels '%s' have shape %s; expected (N) or (N, 1)", path,
                   labels, shape);
    goto fail;
  }
  if (fy->dims[0] != n) {
    rc = td_errorf(err, TD_EDATA,
                   "'%s': features '%s' hold %" PRIu64 " examples but labels '%s' hold %llu", path,
                   features, n, labels, (unsigned long long)fy->dims[0]);
    goto fail;
  }
  const uint64_t keep = kept(n, limit);
  if (keep > UINT32_MAX || keep * dim > MAX_VALUES) {
    rc = td_errorf(err, TD_EDATA,
                   "'%s': features '%s' hold %" PRIu64 " x %" PRIu64
                   " values, more than the 2^31 this loader accepts",
                   path, features, keep, dim);
    goto fail;
  }

  /* Types: uint8, float32 or float64 features; integer labels. */
  const H5T_class_t cx = H5Tget_class(fx->type);
  const size_t sx = H5Tget_size(fx->type);
  p->is_u8 = cx == H5T_INTEGER && sx == 1 && H5Tget_sign(fx->type) == H5T_SGN_NONE;
  if (!p->is_u8 && !(cx == H5T_FLOAT && (sx == 4 || sx == 8))) {
    td_h5_type_name(fx->type, tname, sizeof tname);
    rc = td_errorf(err, TD_EDATA,
                   "'%s': features '%s' have type %s; expected uint8, float32 or float64", path,
                   features, tname);
    goto fail;
  }
  if (H5Tget_class(fy->type) != H5T_INTEGER) {
    td_h5_type_name(fy->type, tname, sizeof tname);
    rc = td_errorf(err, TD_EDATA, "'%s': labels '%s' have type %s; expected an integer type", path,
                   labels, tname);
    goto fail;
  }
  p->n = n;
  p->dim = dim;
  p->keep = keep;
  return 0;

fail:
  h5_pair_close(p);
  return rc;
}

/* n, dim, ndim and shape of ds from an opened pair. */
static void h5_set_shape(const h5_pair *p, td_dataset *ds) {
  ds->n = (uint32_t)p->keep;
  ds->dim = (uint32_t)p->dim;
  ds->ndim = (uint32_t)p->x.rank - 1;
  for (int i = 1; i < p->x.rank; i++)
    ds->shape[i - 1] = (uint32_t)p->x.dims[i];
}

static int hdf5_load(const char *path, const char *features, const char *labels, uint32_t limit,
                     td_dataset *ds, td_error *err) {
  h5_pair pr;
  int rc = h5_pair_open(&pr, path, features, labels, limit, err);
  if (rc)
    return rc;
  char detail[TD_H5_DETAIL];
  h5_dset *fx = &pr.x, *fy = &pr.y;
  const uint64_t keep = pr.keep, dim = pr.dim;
  const int is_u8 = pr.is_u8;
  hid_t memx = H5I_INVALID_HID, memy = H5I_INVALID_HID;
  unsigned char *u8 = NULL;
  int64_t *lab = NULL;

  ds->x = malloc(keep * dim * sizeof *ds->x);
  ds->y = malloc(keep * sizeof *ds->y);
  lab = malloc(keep * sizeof *lab);
  if (is_u8)
    u8 = malloc(keep * dim);
  if (!ds->x || !ds->y || !lab || (is_u8 && !u8)) {
    rc = td_errorf(err, TD_ENOMEM, "out of memory loading '%s' (%" PRIu64 " MiB)", path,
                   (keep * dim * 4) >> 20);
    goto done;
  }
  memx = h5_select_rows(fx, keep);
  memy = h5_select_rows(fy, keep);
  if (memx < 0 || memy < 0) {
    rc = td_errorf(err, TD_EIO, "'%s': selecting the first %" PRIu64 " rows failed: %s", path, keep,
                   td_h5_detail(detail));
    goto done;
  }
  if (H5Dread(fx->id, is_u8 ? H5T_NATIVE_UCHAR : H5T_NATIVE_FLOAT, memx, fx->space, H5P_DEFAULT,
              is_u8 ? (void *)u8 : (void *)ds->x) < 0) {
    rc = td_errorf(err, TD_EIO, "'%s': H5Dread of features '%s' failed: %s", path, features,
                   td_h5_detail(detail));
    goto done;
  }
  if (H5Dread(fy->id, H5T_NATIVE_INT64, memy, fy->space, H5P_DEFAULT, lab) < 0) {
    rc = td_errorf(err, TD_EIO, "'%s': H5Dread of labels '%s' failed: %s", path, labels,
                   td_h5_detail(detail));
    goto done;
  }

  const size_t total = (size_t)(keep * dim);
  if (is_u8) {
    float table[256];
    fill_u8_table(table);
    for (size_t i = 0; i < total; i++)
      ds->x[i] = table[u8[i]];
  } else {
    for (size_t i = 0; i < total; i++) {
      if (!isfinite(ds->x[i])) {
        rc = td_errorf(err, TD_EDATA,
                       "'%s': features '%s' hold a non-finite value (%g) in example %zu "
                       "(or a float64 value too large for float32)",
                       path, features, (double)ds->x[i], i / (size_t)dim);
        goto done;
      }
    }
  }
  int32_t max_label = 0;
  for (size_t i = 0; i < (size_t)keep; i++) {
    if (lab[i] < 0 || lab[i] > INT32_MAX) {
      rc = td_errorf(err, TD_EDATA, "'%s': labels '%s' hold %s value %" PRId64 " at example %zu",
                     path, labels, lab[i] < 0 ? "the negative" : "the too large", lab[i], i);
      goto done;
    }
    ds->y[i] = (int32_t)lab[i];
    if (ds->y[i] > max_label)
      max_label = ds->y[i];
  }
  h5_set_shape(&pr, ds);
  td_dataset_examples_layout(ds);
  ds->max_label = max_label;

done:
  if (memx >= 0)
    H5Sclose(memx);
  if (memy >= 0)
    H5Sclose(memy);
  h5_pair_close(&pr);
  free(u8);
  free(lab);
  return rc;
}

int td_hdf5_load(const char *path, const char *features, const char *labels, uint32_t limit,
                 td_dataset *ds, td_error *err) {
  memset(ds, 0, sizeof *ds);
  td_h5_quiet q = td_h5_silence();
  int rc = hdf5_load(path, features, labels, limit, ds, err);
  td_h5_restore(q);
  if (rc)
    td_dataset_free(ds);
  return rc;
}

int td_hdf5_shape(const char *path, const char *features, const char *labels, uint32_t limit,
                  td_dataset *ds, td_error *err) {
  memset(ds, 0, sizeof *ds);
  td_h5_quiet q = td_h5_silence();
  h5_pair pr;
  int rc = h5_pair_open(&pr, path, features, labels, limit, err);
  if (!rc) {
    h5_set_shape(&pr, ds);
    td_dataset_examples_layout(ds);
    h5_pair_close(&pr);
  }
  td_h5_restore(q);
  return rc;
}
