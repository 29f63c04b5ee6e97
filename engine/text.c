/* Language-model datasets from text files and from HDF5 token ids, as
 * token windows; see text.h. */
#include "text.h"

#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5safe.h"

/* Bytes read from a text file at a time; a chunk decodes to at most as
 * many tokens. */
#define READ_CHUNK ((size_t)1 << 20)
/* Code points are below this (U+10FFFF is the last). */
#define N_CODE_POINTS ((uint32_t)0x110000)
/* Ids read from HDF5 per H5Dread (as 8-byte integers). */
#define H5_CHUNK ((uint64_t)1 << 20)
/* The most ids an HDF5 token dataset may hold: 2^31 (8 GiB as float32). */
#define MAX_IDS ((uint64_t)1 << 31)

#define TEXT_FIELD "dataset.text"
#define H5_FIELD "dataset.hdf5_tokens"

int td_text_opts_parse(const char *field, const char *tokens, const char *sampling,
                       const double *val_fraction, uint32_t block, td_text_opts *o, td_error *err) {
  memset(o, 0, sizeof *o);
  if (tokens && *tokens) {
    if (strcmp(tokens, "byte") == 0)
      o->bytes = 1;
    else if (strcmp(tokens, "char") != 0)
      return td_errorf(err, TD_EINVAL,
                       "%s.tokens: '%s' is not a kind of token; use char (the file's UTF-8 "
                       "characters) or byte (its bytes)",
                       field, tokens);
  }
  if (sampling && *sampling) {
    if (strcmp(sampling, "tiles") == 0)
      o->tiles = 1;
    else if (strcmp(sampling, "random") != 0)
      return td_errorf(err, TD_EINVAL,
                       "%s.sampling: '%s' is not a sampling; use random (a window at every "
                       "position, in a shuffled order) or tiles (windows that do not overlap)",
                       field, sampling);
  }
  o->val_fraction = val_fraction ? *val_fraction : 0.1;
  if (!(o->val_fraction > 0 && o->val_fraction < 1))
    return td_errorf(err, TD_EINVAL, "%s.val_fraction: must be in (0, 1), got %g", field,
                     o->val_fraction);
  if (block == 0)
    return td_errorf(err, TD_EINVAL,
                     "model.input_shape: a token dataset (%s) needs input_shape [T], the "
                     "window of T >= 1 tokens each example holds",
                     field);
  o->block = block;
  return TD_OK;
}

/* The options' own checks, for callers that filled them by hand. */
static int check_opts(const char *field, const td_text_opts *o, td_error *err) {
  if (!(o->val_fraction > 0 && o->val_fraction < 1))
    return td_errorf(err, TD_EINVAL, "%s.val_fraction: must be in (0, 1), got %g", field,
                     o->val_fraction);
  if (o->block == 0)
    return td_errorf(err, TD_EINVAL,
                     "model.input_shape: a token dataset (%s) needs input_shape [T], the "
                     "window of T >= 1 tokens each example holds",
                     field);
  return TD_OK;
}

/* ---- token windows -------------------------------------------------------- */

/* Sets the window layout of a part of ntok tokens (see td_text_load);
 * TD_EINVAL when it holds no window. `what` names the part in the message
 * ("dataset.text: the training part") and `advice` says what to change. */
static int part_layout(td_dataset *ds, uint64_t ntok, uint32_t block, int tiles, uint32_t limit,
                       const char *what, const char *advice, td_error *err) {
  memset(ds, 0, sizeof *ds);
  if (ntok < (uint64_t)block + 1)
    return td_errorf(err, TD_EINVAL,
                     "%s holds %" PRIu64 " tokens, fewer than block_size + 1 = %" PRIu64
                     " (one window and the token after it); use %s",
                     what, ntok, (uint64_t)block + 1, advice);
  const uint32_t stride = tiles ? block : 1;
  uint64_t n = tiles ? (ntok - 1) / block : ntok - block;
  uint64_t n_values = ntok;
  if (limit && limit < n) {
    n = limit;
    n_values = (n - 1) * stride + block + 1;
  }
  ds->n = (uint32_t)n;
  ds->dim = block;
  ds->ndim = 1;
  ds->shape[0] = block;
  ds->n_values = (size_t)n_values;
  ds->stride = stride;
  ds->label_dim = block;
  ds->label_stride = stride;
  return TD_OK;
}

static int part_alloc(td_dataset *ds, const char *path, td_error *err) {
  ds->x = malloc(ds->n_values * sizeof *ds->x);
  ds->y = malloc(ds->n_values * sizeof *ds->y);
  if (!ds->x || !ds->y)
    return td_errorf(err, TD_ENOMEM, "out of memory loading '%s' (%zu MiB of tokens)", path,
                     (ds->n_values * 8) >> 20);
  ds->y[ds->n_values - 1] = 0; /* follows the part's last token: read by no window */
  return TD_OK;
}

/* Where the tokens of a sequence go: token k is token k - start[j] of
 * part[j], j = 1 from start[1] on. Each part keeps its first n_values. */
typedef struct parts {
  td_dataset *part[2];
  uint64_t start[2];
} parts;

static inline void parts_put(const parts *s, uint64_t k, uint32_t id) {
  const int j = k >= s->start[1];
  td_dataset *ds = s->part[j];
  const uint64_t local = k - s->start[j];
  if (local < ds->n_values) {
    ds->x[local] = (float)id;
    if (local)
      ds->y[local - 1] = (int32_t)id;
  }
}

/* max_label over the labels the windows read. */
static void part_finish(td_dataset *ds) {
  const size_t used = ((size_t)ds->n - 1) * ds->stride + ds->dim;
  int32_t m = 0;
  for (size_t i = 0; i < used; i++)
    if (ds->y[i] > m)
      m = ds->y[i];
  ds->max_label = m;
}

/* ---- text files ----------------------------------------------------------- */

/* A UTF-8 decoder, one byte at a time, so that a character may span two
 * reads. */
typedef struct utf8_dec {
  uint32_t cp;    /* the bits so far */
  uint32_t need;  /* continuation bytes still to come */
  uint32_t len;   /* bytes of the character being decoded */
  uint32_t min;   /* the smallest code point of that length (shorter is overlong) */
  unsigned lead;  /* its first byte */
  uint64_t start; /* its byte offset */
} utf8_dec;

static int utf8_error(const char *path, uint64_t off, unsigned b, const char *why, td_error *err) {
  return td_errorf(err, TD_EDATA,
                   "'%s': invalid UTF-8 at byte offset %" PRIu64
                   " (byte 0x%02x %s); the file must be UTF-8 text, or set %s.tokens to byte",
                   path, off, b, why, TEXT_FIELD);
}

/* A callback taking tokens first .. first + n of the file. */
typedef int (*tok_sink)(void *ctx, uint64_t first, const uint32_t *tok, size_t n, td_error *err);

/* Reads the file from its start, in READ_CHUNK pieces through buf, turns
 * them into tokens (bytes, or code points) in toks (READ_CHUNK entries)
 * and hands those to sink. *ntok: the tokens, *nbytes: the bytes read. */
static int text_scan(int fd, const char *path, int bytes, unsigned char *buf, uint32_t *toks,
                     tok_sink sink, void *ctx, uint64_t *ntok, uint64_t *nbytes, td_error *err) {
  utf8_dec d = {0};
  uint64_t off = 0, k = 0;
  for (;;) {
    ssize_t got = pread(fd, buf, READ_CHUNK, (off_t)off);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0)
      return td_errorf(err, TD_EIO, "'%s': read failed: %s", path, strerror(errno));
    if (got == 0)
      break;
    if (off + (uint64_t)got > TD_TEXT_MAX_FILE)
      return td_errorf(err, TD_EINVAL,
                       "%s.file: '%s' grew past 1 GiB while being read, more than a text "
                       "dataset may be",
                       TEXT_FIELD, path);
    size_t n = 0;
    if (bytes) {
      for (ssize_t i = 0; i < got; i++)
        toks[n++] = buf[i];
    } else {
      for (ssize_t i = 0; i < got; i++) {
        const unsigned b = buf[i];
        const uint64_t at = off + (uint64_t)i;
        if (d.need == 0) {
          if (b < 0x80) {
            toks[n++] = b;
            continue;
          }
          if (b >= 0xc2 && b <= 0xdf)
            d.cp = b & 0x1f, d.len = 2, d.min = 0x80;
          else if (b >= 0xe0 && b <= 0xef)
            d.cp = b & 0x0f, d.len = 3, d.min = 0x800;
          else if (b >= 0xf0 && b <= 0xf4)
            d.cp = b & 0x07, d.len = 4, d.min = 0x10000;
          else if (b < 0xc0)
            return utf8_error(path, at, b, "is a continuation byte where a character starts", err);
          else if (b < 0xc2)
            return utf8_error(path, at, b, "starts an overlong encoding", err);
          else
            return utf8_error(path, at, b, "never occurs in UTF-8", err);
          d.need = d.len - 1;
          d.lead = b;
          d.start = at;
          continue;
        }
        if ((b & 0xc0) != 0x80) {
          char why[128];
          snprintf(why, sizeof why,
                   "starts a %u-byte character, but byte offset %" PRIu64
                   " holds 0x%02x, not a continuation byte",
                   d.len, at, b);
          return utf8_error(path, d.start, d.lead, why, err);
        }
        d.cp = d.cp << 6 | (b & 0x3f);
        if (--d.need)
          continue;
        if (d.cp < d.min)
          return utf8_error(path, d.start, d.lead, "starts an overlong encoding", err);
        if (d.cp >= 0xd800 && d.cp <= 0xdfff)
          return utf8_error(path, d.start, d.lead, "starts a surrogate (U+D800..U+DFFF)", err);
        if (d.cp >= N_CODE_POINTS)
          return utf8_error(path, d.start, d.lead, "starts a code point above U+10FFFF", err);
        toks[n++] = d.cp;
      }
    }
    if (sink && n) {
      int rc = sink(ctx, k, toks, n, err);
      if (rc)
        return rc;
    }
    k += n;
    off += (uint64_t)got;
  }
  if (d.need) {
    char why[128];
    snprintf(why, sizeof why, "starts a %u-byte character, but the file ends after %u of its bytes",
             d.len, d.len - d.need);
    return utf8_error(path, d.start, d.lead, why, err);
  }
  *ntok = k;
  *nbytes = off;
  return TD_OK;
}

/* The set of the characters a file holds, one bit per code point. */
static int mark_chars(void *ctx, uint64_t first, const uint32_t *tok, size_t n, td_error *err) {
  (void)first, (void)err;
  uint8_t *seen = ctx;
  for (size_t i = 0; i < n; i++)
    seen[tok[i] >> 3] |= (uint8_t)(1u << (tok[i] & 7));
  return TD_OK;
}

/* Fills the parts; ids maps a code point to its id (NULL for bytes:
 * id = byte; UINT32_MAX for a character the first pass did not see). */
typedef struct fill_ctx {
  parts s;
  const uint32_t *ids;
  uint32_t n_ids;
  const char *path;
} fill_ctx;

static int fill_tokens(void *ctx, uint64_t first, const uint32_t *tok, size_t n, td_error *err) {
  fill_ctx *c = ctx;
  for (size_t i = 0; i < n; i++) {
    uint32_t id = tok[i];
    if (c->ids) {
      id = tok[i] < c->n_ids ? c->ids[tok[i]] : UINT32_MAX;
      if (id == UINT32_MAX)
        return td_errorf(err, TD_EDATA, "'%s' changed while being read; load it again", c->path);
    }
    parts_put(&c->s, first + i, id);
  }
  return TD_OK;
}

static int text_run(const char *path, const td_text_opts *o, td_dataset *train, td_dataset *val,
                    int load, td_error *err) {
  int rc = check_opts(TEXT_FIELD, o, err);
  if (rc)
    return rc;
  struct stat st;
  int fd = td_open_regular(path, "text dataset file", &st, err);
  if (fd < 0)
    return fd;
  unsigned char *buf = NULL;
  uint32_t *toks = NULL, *ids = NULL, *vocab = NULL;
  uint8_t *seen = NULL;
  uint32_t n_ids = 0, n_vocab = 256;
  if ((uint64_t)st.st_size > TD_TEXT_MAX_FILE) {
    rc = td_errorf(err, TD_EINVAL,
                   "%s.file: '%s' is %" PRIu64 " bytes, more than the 1 GiB a text dataset "
                   "may be; use a smaller file, or its token ids through dataset.hdf5_tokens",
                   TEXT_FIELD, path, (uint64_t)st.st_size);
    goto done;
  }
  if (st.st_size == 0) {
    rc = td_errorf(err, TD_EINVAL,
                   "%s.file: '%s' is empty; a text dataset needs at least block_size + 1 "
                   "tokens in each of its training and validation parts",
                   TEXT_FIELD, path);
    goto done;
  }
  buf = malloc(READ_CHUNK);
  toks = malloc(READ_CHUNK * sizeof *toks);
  if (!buf || !toks) {
    rc = td_errorf(err, TD_ENOMEM, "out of memory reading '%s'", path);
    goto done;
  }

  /* The tokens and the vocabulary: a byte file's size, or a first pass
   * over the characters. */
  uint64_t ntok = (uint64_t)st.st_size, nbytes = ntok;
  if (!o->bytes) {
    seen = calloc(N_CODE_POINTS / 8, 1);
    if (!seen) {
      rc = td_errorf(err, TD_ENOMEM, "out of memory reading '%s'", path);
      goto done;
    }
    if ((rc = text_scan(fd, path, 0, buf, toks, mark_chars, seen, &ntok, &nbytes, err)))
      goto done;
    n_vocab = 0;
    for (uint32_t cp = 0; cp < N_CODE_POINTS; cp++)
      if (seen[cp >> 3] >> (cp & 7) & 1) {
        n_vocab++;
        n_ids = cp + 1;
      }
  }

  /* The split, the windows. */
  const uint64_t ntr = (uint64_t)floor((1.0 - o->val_fraction) * (double)ntok);
  if ((rc = part_layout(
           train, ntr, o->block, o->tiles, o->train_limit, TEXT_FIELD ": the training part",
           "a longer file, a smaller model.input_shape, or a smaller " TEXT_FIELD ".val_fraction",
           err)) ||
      (rc = part_layout(
           val, ntok - ntr, o->block, 1, o->test_limit, TEXT_FIELD ": the validation part",
           "a longer file, a smaller model.input_shape, or a larger " TEXT_FIELD ".val_fraction",
           err)))
    goto done;
  train->vocab_size = val->vocab_size = n_vocab;
  if (!load)
    goto done;

  /* The ids: the vocabulary in code point order, and each character's
   * index in it. */
  if (!o->bytes) {
    vocab = malloc((size_t)n_vocab * sizeof *vocab);
    ids = malloc((size_t)n_ids * sizeof *ids);
    if (!vocab || !ids) {
      rc = td_errorf(err, TD_ENOMEM, "out of memory reading '%s'", path);
      goto done;
    }
    uint32_t next = 0;
    for (uint32_t cp = 0; cp < n_ids; cp++) {
      ids[cp] = UINT32_MAX;
      if (seen[cp >> 3] >> (cp & 7) & 1) {
        vocab[next] = cp;
        ids[cp] = next++;
      }
    }
  }
  if ((rc = part_alloc(train, path, err)) || (rc = part_alloc(val, path, err)))
    goto done;
  fill_ctx c = {{{train, val}, {0, ntr}}, ids, n_ids, path};
  uint64_t again = 0, again_bytes = 0;
  if ((rc = text_scan(fd, path, o->bytes, buf, toks, fill_tokens, &c, &again, &again_bytes, err)))
    goto done;
  if (again != ntok || again_bytes != nbytes) {
    rc = td_errorf(err, TD_EDATA, "'%s' changed while being read; load it again", path);
    goto done;
  }
  part_finish(train);
  part_finish(val);
  if (!o->bytes) {
    train->vocab = vocab;
    train->n_vocab = n_vocab;
    vocab = NULL;
  }

done:
  close(fd);
  free(buf);
  free(toks);
  free(seen);
  free(ids);
  free(vocab);
  if (rc) {
    td_dataset_free(train);
    td_dataset_free(val);
  }
  return rc;
}

int td_text_load(const char *path, const td_text_opts *o, td_dataset *train, td_dataset *val,
                 td_error *err) {
  memset(train, 0, sizeof *train);
  memset(val, 0, sizeof *val);
  return text_run(path, o, train, val, 1, err);
}

int td_text_shape(const char *path, const td_text_opts *o, td_dataset *train, td_dataset *val,
                  td_error *err) {
  memset(train, 0, sizeof *train);
  memset(val, 0, sizeof *val);
  return text_run(path, o, train, val, 0, err);
}

/* ---- HDF5 token ids ------------------------------------------------------- */

/* An open dataset of token ids. */
typedef struct h5_ids {
  const char *name;
  hid_t id, space, type;
  int rank;
  uint64_t dims[2];
  uint64_t count;
  int is_unsigned;
} h5_ids;

static void h5_ids_close(h5_ids *d) {
  if (d->type >= 0)
    H5Tclose(d->type);
  if (d->space >= 0)
    H5Sclose(d->space);
  if (d->id >= 0)
    H5Dclose(d->id);
  d->id = d->space = d->type = H5I_INVALID_HID;
}

/* Opens dataset `name` of ids and checks its shape and type. TD_ENOTFOUND
 * when the file has nothing of that name (with what it holds). */
static int h5_ids_open(hid_t fid, const char *path, const char *name, const char *role, h5_ids *d,
                       td_error *err) {
  memset(d, 0, sizeof *d);
  d->name = name;
  d->id = d->space = d->type = H5I_INVALID_HID;
  int rc = td_h5_dopen(fid, path, name, role, &d->id, err);
  if (rc == TD_ENOTFOUND || rc == TD_EINVAL) {
    char top[400];
    td_h5_list_top(fid, top, sizeof top);
    return td_errorf(err, rc, "'%s' has no dataset '%s' (the %s); the file holds: %s", path, name,
                     role, top[0] ? top : "nothing at the top level");
  }
  if (rc)
    return rc;
  hsize_t dims[H5S_MAX_RANK];
  d->space = H5Dget_space(d->id);
  d->type = H5Dget_type(d->id);
  d->rank = d->space >= 0 ? H5Sget_simple_extent_ndims(d->space) : -1;
  if (d->type < 0 || d->rank < 0 ||
      (d->rank > 0 && H5Sget_simple_extent_dims(d->space, dims, NULL) < 0))
    return td_errorf(err, TD_EDATA, "'%s': cannot read the shape of dataset '%s'", path, name);
  if (d->rank < 1 || d->rank > 2)
    return td_errorf(err, TD_EDATA,
                     "'%s': the %s '%s' have %d dimensions; expected 1 (ids) or 2 (rows of "
                     "ids, read row after row)",
                     path, role, name, d->rank);
  d->count = 1;
  for (int i = 0; i < d->rank; i++) {
    d->dims[i] = dims[i];
    d->count = dims[i] > MAX_IDS ? MAX_IDS + 1 : d->count * dims[i];
    if (d->count > MAX_IDS)
      return td_errorf(err, TD_EDATA,
                       "'%s': the %s '%s' hold more than the 2^31 ids this loader accepts", path,
                       role, name);
  }
  if (H5Tget_class(d->type) != H5T_INTEGER) {
    char tname[64];
    td_h5_type_name(d->type, tname, sizeof tname);
    return td_errorf(err, TD_EDATA, "'%s': the %s '%s' have type %s; expected an integer type",
                     path, role, name, tname);
  }
  d->is_unsigned = H5Tget_sign(d->type) == H5T_SGN_NONE;
  return TD_OK;
}

/* " (row r, column c)" of flat position p of a 2-D dataset; "" for 1-D. */
static void where_2d(const h5_ids *d, uint64_t p, char *buf, size_t len) {
  buf[0] = '\0';
  if (d->rank == 2)
    snprintf(buf, len, " (row %" PRIu64 ", column %" PRIu64 ")", p / d->dims[1], p % d->dims[1]);
}

/* Reads every id of d in order, checks it (>= 0, < vocab_size when that is
 * given, else < TD_TEXT_MAX_VOCAB), raises *max_id and puts id k as token
 * k of s. chunk holds H5_CHUNK 8-byte integers. */
static int h5_ids_read(const h5_ids *d, const char *path, uint32_t vocab_size, const parts *s,
                       uint64_t *chunk, uint32_t *max_id, td_error *err) {
  char detail[TD_H5_DETAIL], where[96];
  const uint64_t limit = vocab_size ? vocab_size : TD_TEXT_MAX_VOCAB;
  for (uint64_t p = 0; p < d->count;) {
    hsize_t start[2] = {0, 0}, count[2];
    if (d->rank == 1) {
      start[0] = p;
      count[0] = d->count - p < H5_CHUNK ? d->count - p : H5_CHUNK;
    } else {
      const uint64_t cols = d->dims[1], r = p / cols, c = p % cols;
      start[0] = r;
      start[1] = c;
      if (c == 0 && cols <= H5_CHUNK) {
        const uint64_t rows = H5_CHUNK / cols;
        count[0] = d->dims[0] - r < rows ? d->dims[0] - r : rows;
        count[1] = cols;
      } else {
        count[0] = 1;
        count[1] = cols - c < H5_CHUNK ? cols - c : H5_CHUNK;
      }
    }
    const hsize_t n = d->rank == 1 ? count[0] : count[0] * count[1];
    hid_t mem = H5Screate_simple(1, &n, NULL);
    herr_t st =
        mem < 0 ? -1 : H5Sselect_hyperslab(d->space, H5S_SELECT_SET, start, NULL, count, NULL);
    if (st >= 0)
      st = H5Dread(d->id, d->is_unsigned ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64, mem, d->space,
                   H5P_DEFAULT, chunk);
    if (mem >= 0)
      H5Sclose(mem);
    if (st < 0)
      return td_errorf(err, TD_EIO, "'%s': H5Dread of token ids '%s' failed: %s", path, d->name,
                       td_h5_detail(detail));
    for (hsize_t i = 0; i < n; i++, p++) {
      const int neg = !d->is_unsigned && (int64_t)chunk[i] < 0;
      if (neg || chunk[i] >= limit) {
        where_2d(d, p, where, sizeof where);
        char val[32];
        if (d->is_unsigned)
          snprintf(val, sizeof val, "%" PRIu64, chunk[i]);
        else
          snprintf(val, sizeof val, "%" PRId64, (int64_t)chunk[i]);
        if (neg)
          return td_errorf(err, TD_EDATA,
                           "token id %s at position %" PRIu64
                           "%s of dataset '%s' in %s is negative; token ids are 0 or more",
                           val, p, where, d->name, path);
        if (vocab_size)
          return td_errorf(err, TD_EINVAL,
                           H5_FIELD ".vocab_size: token id %s at position %" PRIu64
                                    " of dataset '%s' in %s is out of range for vocab_size "
                                    "%" PRIu32 "%s; set vocab_size above the largest id, or to 0 "
                                    "for the largest id + 1",
                           val, p, d->name, path, vocab_size, where);
        return td_errorf(err, TD_EDATA,
                         "token id %s at position %" PRIu64
                         " of dataset '%s' in %s is out of range: ids must be below 2^24 = "
                         "%" PRIu32 " (the most a float32 holds exactly)%s",
                         val, p, d->name, path, TD_TEXT_MAX_VOCAB, where);
      }
      const uint32_t id = (uint32_t)chunk[i];
      if (id > *max_id)
        *max_id = id;
      parts_put(s, p, id);
    }
  }
  return TD_OK;
}

static int h5tokens_run(const char *path, const char *train_name, const char *val_name,
                        uint32_t vocab_size, const td_text_opts *o, td_dataset *train,
                        td_dataset *val, int load, td_error *err) {
  int rc = check_opts(H5_FIELD, o, err);
  if (rc)
    return rc;
  if (vocab_size > TD_TEXT_MAX_VOCAB)
    return td_errorf(err, TD_EINVAL,
                     H5_FIELD ".vocab_size: %" PRIu32 " is more than 2^24 = %" PRIu32
                              ", the most ids a float32 holds exactly",
                     vocab_size, TD_TEXT_MAX_VOCAB);
  const int val_default = !val_name || !*val_name;
  train_name = train_name && *train_name ? train_name : "train";
  val_name = val_default ? "val" : val_name;
  hid_t fid = H5I_INVALID_HID;
  h5_ids dt, dv;
  dt.id = dt.space = dt.type = dv.id = dv.space = dv.type = H5I_INVALID_HID;
  uint64_t *chunk = NULL;
  int split = 0;
  if ((rc = td_h5_open(path, "HDF5 token file", &fid, err)))
    return rc;
  if ((rc = h5_ids_open(fid, path, train_name, "training ids", &dt, err))) {
    if (rc == TD_ENOTFOUND)
      td_error_prefix(err, H5_FIELD ".train");
    goto done;
  }
  rc = h5_ids_open(fid, path, val_name, "validation ids", &dv, err);
  if (rc == TD_ENOTFOUND && val_default) {
    split = 1;
    rc = TD_OK;
    td_error_clear(err);
    h5_ids_close(&dv);
  } else if (rc == TD_ENOTFOUND && err) {
    char msg[TD_ERRMSG_MAX];
    snprintf(msg, sizeof msg, "%s", err->msg);
    td_errorf(err, rc,
              H5_FIELD ".val: %s; name a dataset of held-out ids the file holds, or leave val "
                       "unset to hold out the last val_fraction of '%s'",
              msg, train_name);
  }
  if (rc)
    goto done;

  /* The parts: the training ids split, or the two datasets. */
  char what[2][600], advice[2][300];
  uint64_t ntr = dt.count, nval = split ? 0 : dv.count;
  if (split) {
    ntr = (uint64_t)floor((1.0 - o->val_fraction) * (double)dt.count);
    nval = dt.count - ntr;
    snprintf(what[0], sizeof what[0], H5_FIELD ": the training part of '%s' in %s", train_name,
             path);
    snprintf(what[1], sizeof what[1],
             H5_FIELD ": the validation part of '%s' in %s (the file has no '%s')", train_name,
             path, val_name);
    snprintf(advice[0], sizeof advice[0],
             "more ids, a smaller model.input_shape, or a smaller " H5_FIELD ".val_fraction");
    snprintf(advice[1], sizeof advice[1],
             "more ids, a smaller model.input_shape, a larger " H5_FIELD
             ".val_fraction, or a dataset '%s' of held-out ids",
             val_name);
  } else {
    snprintf(what[0], sizeof what[0], H5_FIELD ": the training ids '%s' in %s", train_name, path);
    snprintf(what[1], sizeof what[1], H5_FIELD ": the validation ids '%s' in %s", val_name, path);
    snprintf(advice[0], sizeof advice[0], "more ids or a smaller model.input_shape");
    snprintf(advice[1], sizeof advice[1], "more ids or a smaller model.input_shape");
  }
  if ((rc = part_layout(train, ntr, o->block, o->tiles, o->train_limit, what[0], advice[0], err)) ||
      (rc = part_layout(val, nval, o->block, 1, o->test_limit, what[1], advice[1], err)))
    goto done;
  train->vocab_size = val->vocab_size = vocab_size ? vocab_size : TD_TEXT_MAX_VOCAB;
  if (!load)
    goto done;

  chunk = malloc(H5_CHUNK * sizeof *chunk);
  if (!chunk) {
    rc = td_errorf(err, TD_ENOMEM, "out of memory reading '%s'", path);
    goto done;
  }
  if ((rc = part_alloc(train, path, err)) || (rc = part_alloc(val, path, err)))
    goto done;
  uint32_t max_id = 0;
  const parts s = {{train, val}, {0, split ? ntr : UINT64_MAX}};
  if ((rc = h5_ids_read(&dt, path, vocab_size, &s, chunk, &max_id, err)))
    goto done;
  if (!split) {
    const parts sv = {{val, val}, {0, UINT64_MAX}};
    if ((rc = h5_ids_read(&dv, path, vocab_size, &sv, chunk, &max_id, err)))
      goto done;
  }
  train->vocab_size = val->vocab_size = vocab_size ? vocab_size : max_id + 1;
  part_finish(train);
  part_finish(val);

done:
  free(chunk);
  h5_ids_close(&dv);
  h5_ids_close(&dt);
  if (fid >= 0)
    H5Fclose(fid);
  if (rc) {
    td_dataset_free(train);
    td_dataset_free(val);
  }
  return rc;
}

int td_h5tokens_load(const char *path, const char *train_name, const char *val_name,
                     uint32_t vocab_size, const td_text_opts *o, td_dataset *train, td_dataset *val,
                     td_error *err) {
  memset(train, 0, sizeof *train);
  memset(val, 0, sizeof *val);
  td_h5_quiet q = td_h5_silence();
  int rc = h5tokens_run(path, train_name, val_name, vocab_size, o, train, val, 1, err);
  td_h5_restore(q);
  return rc;
}

int td_h5tokens_shape(const char *path, const char *train_name, const char *val_name,
                      uint32_t vocab_size, const td_text_opts *o, td_dataset *train,
                      td_dataset *val, td_error *err) {
  memset(train, 0, sizeof *train);
  memset(val, 0, sizeof *val);
  td_h5_quiet q = td_h5_silence();
  int rc = h5tokens_run(path, train_name, val_name, vocab_size, o, train, val, 0, err);
  td_h5_restore(q);
  return rc;
}
