/* Opening job files safely (regular files only, never blocking) and HDF5
 * files with nothing outside them reachable; see h5safe.h. */
#include "h5safe.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char *td_file_kind(mode_t m) {
  if (S_ISFIFO(m))
    return "a FIFO (named pipe)";
  if (S_ISSOCK(m))
    return "a socket";
  if (S_ISDIR(m))
    return "a directory";
  if (S_ISCHR(m))
    return "a character device";
  if (S_ISBLK(m))
    return "a block device";
  if (S_ISLNK(m))
    return "a symbolic link";
  return "not a regular file";
}

static int not_regular(const char *path, const char *what, mode_t m, td_error *err) {
  if (S_ISLNK(m))
    return td_errorf(err, TD_EINVAL,
                     "%s '%s' is a symbolic link; the link is not followed here: name the file "
                     "itself",
                     what, path);
  return td_errorf(err, TD_EINVAL,
                   "%s '%s' is %s, not a regular file; traind reads only regular files", what, path,
                   td_file_kind(m));
}

static int open_errno(const char *path, const char *what, int e, td_error *err) {
  switch (e) {
  case ENOENT:
  case ENOTDIR:
    return td_errorf(err, TD_ENOTFOUND, "cannot open %s '%s': %s", what, path, strerror(e));
  case EACCES:
  case EPERM:
    return td_errorf(err, TD_EPERM, "cannot read %s '%s': %s", what, path, strerror(e));
  case ELOOP:
    return td_errorf(err, TD_EINVAL,
                     "cannot open %s '%s': a loop of symbolic links, or a symbolic link where "
                     "none is followed; name the file itself",
                     what, path);
  case ENAMETOOLONG:
    return td_errorf(err, TD_EINVAL,
                     "cannot open %s '%s': the path or a name in it is longer than the file "
                     "system allows",
                     what, path);
  case ENXIO:
  case ENODEV:
    return td_errorf(err, TD_EINVAL, "%s '%s' is a socket or a device, not a regular file", what,
                     path);
  default:
    return td_errorf(err, TD_EIO, "cannot open %s '%s': %s", what, path, strerror(e));
  }
}

int td_open_regular(const char *path, const char *what, struct stat *st, td_error *err) {
  /* lstat first, so that a device or a FIFO is never opened at all; the
   * fstat after the open is what counts. */
  if (lstat(path, st) != 0)
    return open_errno(path, what, errno, err);
  if (!S_ISREG(st->st_mode))
    return not_regular(path, what, st->st_mode, err);
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return open_errno(path, what, errno, err);
  int flags;
  if (fstat(fd, st) != 0) {
    int e = errno;
    close(fd);
    return td_errorf(err, TD_EIO, "cannot stat %s '%s': %s", what, path, strerror(e));
  }
  if (!S_ISREG(st->st_mode)) {
    close(fd);
    return not_regular(path, what, st->st_mode, err);
  }
  if ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
    int e = errno;
    close(fd);
    return td_errorf(err, TD_EIO, "cannot open %s '%s': fcntl: %s", what, path, strerror(e));
  }
  return fd;
}

/* ---- files -------------------------------------------------------------- */

td_h5_quiet td_h5_silence(void) {
  td_h5_quiet q = {NULL, NULL};
  H5Eget_auto2(H5E_DEFAULT, &q.fn, &q.data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  return q;
}

void td_h5_restore(td_h5_quiet q) {
  H5Eclear2(H5E_DEFAULT);
  H5Eset_auto2(H5E_DEFAULT, q.fn, q.data);
}

static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *data) {
  (void)n;
  if (e->desc && e->desc[0])
    snprintf(data, TD_H5_DETAIL, "%s", e->desc);
  return 0;
}

const char *td_h5_detail(char buf[TD_H5_DETAIL]) {
  buf[0] = '\0';
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, buf);
  if (!buf[0])
    snprintf(buf, TD_H5_DETAIL, "no detail from HDF5");
  return buf;
}

/* The external link the thread's last refused traversal met. */
static _Thread_local char denied_link[512];

const char *td_h5_denied(void) { return denied_link; }
void td_h5_denied_clear(void) { denied_link[0] = '\0'; }

/* The external-link callback of every traversal: records the link and
 * refuses it, before HDF5 opens the other file. */
static herr_t refuse_elink(const char *parent_file, const char *parent_group,
                           const char *child_file, const char *child_obj, unsigned *acc_flags,
                           hid_t fapl, void *op_data) {
  (void)parent_file, (void)acc_flags, (void)fapl, (void)op_data;
  snprintf(denied_link, sizeof denied_link, "an external link (in group '%s') to '%s' in file '%s'",
           parent_group ? parent_group : "?", child_obj ? child_obj : "?",
           child_file ? child_file : "?");
  return -1;
}

/* The three shared access property lists, made once. */
static pthread_once_t plists_once = PTHREAD_ONCE_INIT;
static hid_t plists[3] = {H5I_INVALID_HID, H5I_INVALID_HID, H5I_INVALID_HID};

static void make_plists(void) {
  const hid_t classes[3] = {H5P_LINK_ACCESS, H5P_DATASET_ACCESS, H5P_GROUP_ACCESS};
  for (int i = 0; i < 3; i++) {
    hid_t p = H5Pcreate(classes[i]);
    if (p >= 0 && H5Pset_elink_cb(p, refuse_elink, NULL) < 0) {
      H5Pclose(p);
      p = H5I_INVALID_HID;
    }
    plists[i] = p;
  }
}

/* A list that failed to be made stays invalid: calls that take it then
 * fail, so nothing is traversed unguarded. */
static hid_t plist(int i) {
  pthread_once(&plists_once, make_plists);
  return plists[i];
}

hid_t td_h5_lapl(void) { return plist(0); }
hid_t td_h5_dapl(void) { return plist(1); }
hid_t td_h5_gapl(void) { return plist(2); }

/* HDF5's signature at 0, 512, 1024, 2048, ... (a user block may precede
 * the superblock). Returns 1 when found, 0 when not, -1 on a read error. */
static int has_signature(int fd, uint64_t size) {
  static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  unsigned char b[8];
  for (uint64_t off = 0; off + 8 <= size; off = off ? 2 * off : 512) {
    ssize_t n = pread(fd, b, sizeof b, (off_t)off);
    if (n < 0)
      return -1;
    if (n == 8 && memcmp(b, sig, 8) == 0)
      return 1;
  }
  return 0;
}

int td_h5_open(const char *path, const char *what, hid_t *fid, td_error *err) {
  *fid = H5I_INVALID_HID;
  struct stat st;
  int fd = td_open_regular(path, what, &st, err);
  if (fd < 0)
    return fd;
  const uint64_t size = (uint64_t)st.st_size;
  int rc = TD_OK;
  int sig = size ? has_signature(fd, size) : 0;
  if (size == 0)
    rc = td_errorf(err, TD_EDATA, "%s '%s' is empty (truncated)", what, path);
  else if (sig < 0)
    rc = td_errorf(err, TD_EIO, "cannot read %s '%s': %s", what, path, strerror(errno));
  else if (sig == 0)
    rc = td_errorf(err, TD_EDATA,
                   "'%s' is not an HDF5 file (no HDF5 signature; truncated or another format)",
                   path);
  hid_t fapl = H5I_INVALID_HID;
  if (!rc && ((fapl = H5Pcreate(H5P_FILE_ACCESS)) < 0 || H5Pset_fapl_sec2(fapl) < 0))
    rc = td_errorf(err, TD_EINTERNAL, "HDF5 file access properties cannot be made");
  if (!rc) {
    /* HDF5 opens the inode checked above: through /proc/self/fd, or by
     * path where there is no /proc, and is compared by device and inode
     * below either way. (The sec2 driver refuses files that ask for the
     * family or multi drivers, which would open other files.) */
    char name[64];
    struct stat ps;
    snprintf(name, sizeof name, "/proc/self/fd/%d", fd);
    int by_fd = stat(name, &ps) == 0 && ps.st_dev == st.st_dev && ps.st_ino == st.st_ino;
    *fid = H5Fopen(by_fd ? name : path, H5F_ACC_RDONLY, fapl);
    char detail[TD_H5_DETAIL];
    void *h = NULL;
    struct stat hs;
    if (*fid < 0) {
      td_h5_detail(detail);
      rc = strstr(detail, "truncated")
               ? td_errorf(err, TD_EDATA, "%s '%s' is truncated (%s)", what, path, detail)
               : td_errorf(err, TD_EDATA, "%s '%s' cannot be opened as HDF5: %s", what, path,
                           detail);
    } else if (H5Fget_vfd_handle(*fid, fapl, &h) < 0 || !h || fstat(*(int *)h, &hs) != 0 ||
               hs.st_dev != st.st_dev || hs.st_ino != st.st_ino) {
      rc = td_errorf(err, TD_EIO, "%s '%s' was replaced while it was being opened; try again", what,
                     path);
    }
  }
  if (fapl >= 0)
    H5Pclose(fapl);
  if (rc && *fid >= 0) {
    H5Fclose(*fid);
    *fid = H5I_INVALID_HID;
  }
  /* HDF5 holds its own descriptor of the same inode. */
  close(fd);
  return rc;
}

/* ---- datasets ----------------------------------------------------------- */

#define INSIDE_ONLY "traind reads only data stored inside the file"

/* The file a dataset is opened in, for the checks and their messages. */
typedef struct fileref {
  hid_t fid, lapl, dapl;
  const char *path;
  uint64_t size; /* bytes in the file */
} fileref;

/* The refusal of a traversal the external-link callback stopped. */
static int denied(const char *path, const char *role, const char *name, td_error *err) {
  return td_errorf(err, TD_EDATA, "'%s': %s '%s' leads through %s; " INSIDE_ONLY, path, role, name,
                   denied_link);
}

/* Each link on the way to `name` must exist and be hard or soft; an
 * external link is named as such. */
static int check_links(fileref *f, const char *name, const char *role, td_error *err) {
  char prefix[1024];
  size_t len = 0;
  const char *p = name;
  if (*p == '/')
    prefix[len++] = '/';
  prefix[len] = '\0';
  while (*p) {
    while (*p == '/')
      p++;
    const char *seg = p;
    while (*p && *p != '/')
      p++;
    size_t n = (size_t)(p - seg);
    if (n == 0)
      break;
    if (len + n + 2 > sizeof prefix)
      return td_errorf(err, TD_EDATA, "'%s': the name of %s '%.64s...' is too long", f->path, role,
                       name);
    if (len && prefix[len - 1] != '/')
      prefix[len++] = '/';
    memcpy(prefix + len, seg, n);
    len += n;
    prefix[len] = '\0';
    if (n == 1 && seg[0] == '.')
      continue;
    htri_t e = H5Lexists(f->fid, prefix, f->lapl);
    if (e <= 0) {
      if (denied_link[0])
        return denied(f->path, role, name, err);
      return td_errorf(err, TD_ENOTFOUND, "no dataset '%s'", name);
    }
    H5L_info_t li;
    if (H5Lget_info(f->fid, prefix, &li, f->lapl) < 0) {
      if (denied_link[0])
        return denied(f->path, role, name, err);
      return td_errorf(err, TD_EDATA, "'%s': the link '%s' on the way to %s '%s' is unreadable",
                       f->path, prefix, role, name);
    }
    if (li.type == H5L_TYPE_EXTERNAL) {
      char val[512] = "";
      const char *file = "?", *obj = "?";
      unsigned flags = 0;
      if (li.u.val_size <= sizeof val &&
          H5Lget_val(f->fid, prefix, val, li.u.val_size, f->lapl) >= 0 &&
          H5Lunpack_elink_val(val, li.u.val_size, &flags, &file, &obj) < 0)
        file = obj = "?";
      return td_errorf(
          err, TD_EDATA,
          "'%s': %s '%s' leads through '%s', an external link to '%s' in file '%s'; " INSIDE_ONLY,
          f->path, role, name, prefix, obj, file);
    }
    if (li.type != H5L_TYPE_HARD && li.type != H5L_TYPE_SOFT)
      return td_errorf(
          err, TD_EDATA,
          "'%s': %s '%s' leads through '%s', a user-defined link (type %d); " INSIDE_ONLY, f->path,
          role, name, prefix, (int)li.type);
  }
  return TD_OK;
}

/* Refuses external raw storage and virtual layouts. */
static int check_layout(const fileref *f, hid_t dcpl, const char *role, const char *name,
                        H5D_layout_t *layout, td_error *err) {
  *layout = H5Pget_layout(dcpl);
  int next = H5Pget_external_count(dcpl);
  if (*layout < 0 || next < 0)
    return td_errorf(err, TD_EDATA, "'%s': the storage of %s '%s' is unreadable", f->path, role,
                     name);
  if (*layout == H5D_VIRTUAL) {
    size_t count = 0;
    char vfile[256] = "?", vdset[256] = "?";
    if (H5Pget_virtual_count(dcpl, &count) >= 0 && count > 0) {
      if (H5Pget_virtual_filename(dcpl, 0, vfile, sizeof vfile) < 0)
        strcpy(vfile, "?");
      if (H5Pget_virtual_dsetname(dcpl, 0, vdset, sizeof vdset) < 0)
        strcpy(vdset, "?");
      vfile[sizeof vfile - 1] = vdset[sizeof vdset - 1] = '\0';
    }
    return td_errorf(err, TD_EDATA,
                     "'%s': %s '%s' is a virtual dataset (H5D_VIRTUAL, mapped from %zu source%s, "
                     "the first '%s' in file '%s'); " INSIDE_ONLY,
                     f->path, role, name, count, count == 1 ? "" : "s", vdset, vfile);
  }
  if (next > 0) {
    char ename[256] = "?";
    off_t off = 0;
    hsize_t size = 0;
    if (H5Pget_external(dcpl, 0, sizeof ename, ename, &off, &size) < 0)
      strcpy(ename, "?");
    ename[sizeof ename - 1] = '\0';
    return td_errorf(err, TD_EDATA,
                     "'%s': %s '%s' uses external storage (H5D external file list of %d file%s, "
                     "the first '%s'); " INSIDE_ONLY,
                     f->path, role, name, next, next == 1 ? "" : "s", ename);
  }
  return TD_OK;
}

/* a * b, or UINT64_MAX when that overflows. */
static uint64_t mul_sat(uint64_t a, uint64_t b) {
  uint64_t r;
  return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

/* Refuses a dataset whose declared bytes the file does not hold. */
static int check_stored(const fileref *f, hid_t did, hid_t dcpl, H5D_layout_t layout,
                        const char *role, const char *name, td_error *err) {
  hid_t sp = H5Dget_space(did), t = H5Dget_type(did);
  int rank = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  hsize_t dims[H5S_MAX_RANK];
  size_t tsize = t >= 0 ? H5Tget_size(t) : 0;
  if (rank > 0 && H5Sget_simple_extent_dims(sp, dims, NULL) < 0)
    rank = -1;
  if (t >= 0)
    H5Tclose(t);
  if (sp >= 0)
    H5Sclose(sp);
  if (rank < 0 || tsize == 0)
    return td_errorf(err, TD_EDATA, "'%s': the shape or type of %s '%s' is unreadable", f->path,
                     role, name);
  uint64_t declared = tsize;
  for (int i = 0; i < rank; i++)
    declared = mul_sat(declared, dims[i]);
  if (declared == 0 || layout == H5D_COMPACT)
    return TD_OK; /* nothing, or inside the header */
  const uint64_t stored = H5Dget_storage_size(did);
  uint64_t chunks = 0, want_chunks = 1;
  if (layout == H5D_CHUNKED) {
    hsize_t cdims[H5S_MAX_RANK];
    hsize_t n = 0;
    /* HDF5 1.10 takes no H5S_ALL here: the file space, all selected. */
    hid_t fsp = H5Dget_space(did);
    int ok =
        fsp >= 0 && H5Pget_chunk(dcpl, rank, cdims) == rank && H5Dget_num_chunks(did, fsp, &n) >= 0;
    if (fsp >= 0)
      H5Sclose(fsp);
    if (!ok)
      return td_errorf(err, TD_EDATA, "'%s': the chunks of %s '%s' are unreadable", f->path, role,
                       name);
    for (int i = 0; i < rank; i++)
      want_chunks = mul_sat(want_chunks, cdims[i] ? (dims[i] + cdims[i] - 1) / cdims[i] : 0);
    chunks = n;
  }
  if (stored == 0 || (layout == H5D_CHUNKED && chunks == 0))
    return td_errorf(err, TD_EDATA,
                     "'%s': %s '%s' declares %" PRIu64 " bytes but stores none: it was created "
                     "and never written, so every value would be the fill value",
                     f->path, role, name, declared);
  if (layout == H5D_CHUNKED && chunks < want_chunks)
    return td_errorf(err, TD_EDATA,
                     "'%s': %s '%s' stores %" PRIu64 " of its %" PRIu64 " chunks; the others "
                     "were never written (they would read as the fill value)",
                     f->path, role, name, chunks, want_chunks);
  if (stored > f->size)
    return td_errorf(err, TD_EDATA,
                     "'%s': %s '%s' claims %" PRIu64 " bytes of storage in a file of %" PRIu64
                     " bytes (truncated or corrupt)",
                     f->path, role, name, stored, f->size);
  if (layout == H5D_CONTIGUOUS) {
    haddr_t off = H5Dget_offset(did);
    if (stored < declared || off == HADDR_UNDEF || off > f->size || stored > f->size - off)
      return td_errorf(err, TD_EDATA,
                       "'%s': %s '%s' declares %" PRIu64 " bytes that do not lie inside the "
                       "file of %" PRIu64 " bytes (truncated or corrupt)",
                       f->path, role, name, declared, f->size);
  }
  if (layout == H5D_CHUNKED && H5Pget_nfilters(dcpl) > 0 && declared / TD_H5_MAX_RATIO > stored)
    return td_errorf(err, TD_EDATA,
                     "'%s': %s '%s' declares %" PRIu64 " bytes compressed into %" PRIu64
                     ", more than %d times; no real dataset compresses that far",
                     f->path, role, name, declared, stored, TD_H5_MAX_RATIO);
  return TD_OK;
}

int td_h5_dopen(hid_t fid, const char *path, const char *name, const char *role, hid_t *did,
                td_error *err) {
  *did = H5I_INVALID_HID;
  td_h5_denied_clear();
  if (!name || !name[0])
    return td_errorf(err, TD_ENOTFOUND, "no dataset ''");
  hsize_t size = 0;
  if (H5Fget_filesize(fid, &size) < 0)
    return td_errorf(err, TD_EDATA, "'%s': the size of the file is unreadable", path);
  fileref fr = {fid, td_h5_lapl(), td_h5_dapl(), path, size}, *f = &fr;
  int rc = check_links(f, name, role, err);
  if (rc)
    return rc;
  hid_t d = H5Dopen2(f->fid, name, f->dapl);
  if (d < 0) {
    if (denied_link[0])
      return denied(f->path, role, name, err);
    if (H5Oexists_by_name(f->fid, name, f->lapl) > 0)
      return td_errorf(err, TD_EINVAL, "'%s' is not a dataset", name);
    if (denied_link[0])
      return denied(f->path, role, name, err);
    return td_errorf(err, TD_ENOTFOUND, "no dataset '%s'", name);
  }
  hid_t dcpl = H5Dget_create_plist(d);
  H5D_layout_t layout = H5D_LAYOUT_ERROR;
  if (dcpl < 0)
    rc = td_errorf(err, TD_EDATA, "'%s': the creation properties of %s '%s' are unreadable",
                   f->path, role, name);
  if (!rc)
    rc = check_layout(f, dcpl, role, name, &layout, err);
  if (!rc)
    rc = check_stored(f, d, dcpl, layout, role, name, err);
  if (dcpl >= 0)
    H5Pclose(dcpl);
  if (rc) {
    H5Dclose(d);
    return rc;
  }
  *did = d;
  return TD_OK;
}

/* A readable name for an HDF5 type: "uint8", "float64", "string", ... */
void td_h5_type_name(hid_t t, char *buf, size_t len) {
  H5T_class_t c = H5Tget_class(t);
  size_t sz = H5Tget_size(t);
  if (c == H5T_INTEGER)
    snprintf(buf, len, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", 8 * sz);
  else if (c == H5T_FLOAT)
    snprintf(buf, len, "float%zu", 8 * sz);
  else if (c == H5T_STRING)
    snprintf(buf, len, "string");
  else if (c == H5T_COMPOUND)
    snprintf(buf, len, "compound");
  else
    snprintf(buf, len, "HDF5 type class %d", (int)c);
}

/* The first top-level names in the file, for "no such dataset" messages. */
void td_h5_list_top(hid_t fid, char *buf, size_t len) {
  H5G_info_t gi;
  buf[0] = '\0';
  if (H5Gget_info(fid, &gi) < 0)
    return;
  size_t used = 0;
  for (hsize_t i = 0; i < gi.nlinks && i < 16; i++) {
    char name[128];
    /* Names only: no link is traversed. */
    if (H5Lget_name_by_idx(fid, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                           H5P_DEFAULT) < 0)
      break;
    int w = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", name);
    if (w < 0 || (size_t)w >= len - used)
      break;
    used += (size_t)w;
  }
  if (gi.nlinks > 16 && used + 5 < len)
    strcpy(buf + used, ", ...");
}
