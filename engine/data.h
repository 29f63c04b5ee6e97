/* Datasets: labelled examples held in memory as float32 features and int32
 * labels, loaded from MNIST-family IDX files or from HDF5, and the resolution
 * of dataset paths from job files under the daemon's data roots. */
#ifndef TD_DATA_H
#define TD_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* A dataset is one of two kinds, told apart by label_dim:
 *  - examples (label_dim 1): x holds n rows of dim features, y one label
 *    per example; stride = dim, label_stride = 1.
 *  - token windows (label_dim = dim, a language model's data): x holds
 *    n_values token ids (as floats, exact below 2^24) and y the id that
 *    follows each (y[k] = id[k + 1]); example i is the window
 *    x[i * stride .. + dim) and its labels y[i * stride .. + dim), with
 *    stride 1 (every position a window may start at) or dim (tiles).
 * Either way example i's features start at x + i * stride and its labels
 * at y + i * label_stride. */
typedef struct td_dataset {
  uint32_t n;              /* examples */
  uint32_t dim;            /* features per example, flattened */
  uint32_t ndim, shape[4]; /* per-example shape, e.g. {28, 28}; dim is its product */
  float *x;                /* (n_values) row-major, owned; uint8 pixels scaled to [0, 1] */
  int32_t *y;              /* labels, each >= 0, owned: (n) or (n_values) */
  int32_t max_label;       /* largest label present */
  size_t n_values;         /* floats in x (and, for windows, labels in y) */
  uint32_t stride;         /* distance in x between examples' first features */
  uint32_t label_dim;      /* labels per example */
  uint32_t label_stride;   /* distance in y between examples' first labels */
  /* Token windows: ids are < vocab_size (max_label < vocab_size too). A
   * character vocabulary's code points by id (n_vocab = vocab_size), or
   * NULL for bytes (id = byte) and for token ids from HDF5. Owned. */
  uint32_t vocab_size;
  uint32_t *vocab;
  uint32_t n_vocab;
} td_dataset;

/* The labels a dataset holds: n, or for token windows n_values. */
static inline size_t td_dataset_n_labels(const td_dataset *ds) {
  return ds->label_dim == 1 ? ds->n : ds->n_values;
}

/* Sets the layout fields of a dataset of n examples of dim features with one
 * label each (stride dim, label_dim 1, label_stride 1, n_values n * dim). */
void td_dataset_examples_layout(td_dataset *ds);

/* Frees what a loader allocated and zeroes *ds; safe on a zeroed dataset. */
void td_dataset_free(td_dataset *ds);

/* Resolves `rel` (a dataset path from a job file) under the data roots and
 * writes the canonical path (realpath) of the file to out[outlen].
 *
 * A relative path is looked up in each root in order: the first root in which
 * it exists wins. When `alt_gz` is nonzero the name with ".gz" appended (or
 * removed, if it ends in ".gz") is tried too, after the exact name in the same
 * root. An absolute path, or one with "..", is allowed only if it stays inside
 * a root, both as written and once canonicalized (so symlinks count);
 * otherwise TD_EPERM "dataset path 'x' escapes the data roots (/a, /b)". The
 * written form is checked before the file system is consulted, so a refused
 * path says nothing about what exists outside the roots. Not found anywhere:
 * TD_ENOTFOUND naming the path and every root searched. A path inside a
 * root that is not a regular file (FIFO, socket, device, directory), a loop
 * of symlinks, or one with a name longer than the file system allows:
 * TD_EINVAL saying which (a wrong argument, not a reason to retry). */
int td_data_resolve(const char *const *roots, size_t nroots, const char *rel, int alt_gz, char *out,
                    size_t outlen, td_error *err);

/* Loads an MNIST-family IDX pair: images are unsigned bytes with magic
 * 0x00000803 (more generally 0x000008DD with 2 <= DD <= 5 dimensions, the first
 * being the example count), labels unsigned bytes with magic 0x00000801. Either
 * file may be gzipped. Validates the magic numbers, that every dimension is
 * nonzero and the data at most 2^31 bytes, the exact payload length
 * ("truncated: expected N bytes of pixel data, found M", or trailing data),
 * and equal example counts. `limit` > 0 keeps only the first `limit` examples.
 * Files are opened with td_open_regular (h5safe.h): a FIFO, a device or a
 * final symlink is TD_EINVAL before anything is read.
 * On failure *ds is left zeroed and err names the file and the problem. */
int td_idx_load(const char *images_path, const char *labels_path, uint32_t limit, td_dataset *ds,
                td_error *err);

/* Loads an HDF5 file: dataset `features` of shape (N, ...) (1 to 4 dimensions
 * per example) and type uint8 (scaled by 1/255), float32 or float64, and dataset
 * `labels` of shape (N) or (N, 1) and any integer type, with no negative value.
 * Dataset names may be paths ("train/images"). `limit` > 0 reads only the
 * first `limit` examples. HDF5's own error printing is silenced for the call;
 * every failure names the file and the dataset. The file and its datasets
 * are opened through td_h5_open and td_h5_dopen (h5safe.h): a file that is
 * not regular is TD_EINVAL; a dataset with external storage, reached
 * through an external link, virtual, or declaring more than the file holds
 * (never written, chunks missing, compressed beyond TD_H5_MAX_RATIO) is
 * TD_EDATA before anything is allocated. On failure *ds is left zeroed and
 * no HDF5 object stays open. */
int td_hdf5_load(const char *path, const char *features, const char *labels, uint32_t limit,
                 td_dataset *ds, td_error *err);

/* The shape of a dataset without loading it, from the files' headers: n
 * (after `limit`, as the loader counts it), dim, ndim and shape of *ds, with
 * the loader's checks of the headers (magic numbers, dimensions, equal
 * example counts; for HDF5 also the types) but not of the data. x and y
 * stay NULL and max_label 0. For sizing a job before it loads anything; the
 * HDF5 refusals of td_hdf5_load above apply here too. */
int td_idx_shape(const char *images_path, const char *labels_path, uint32_t limit, td_dataset *ds,
                 td_error *err);
int td_hdf5_shape(const char *path, const char *features, const char *labels, uint32_t limit,
                  td_dataset *ds, td_error *err);

/* Copies the examples idx[0..count) into dst (count, dim) and, when labels is
 * not NULL, their labels into labels (count, label_dim). Every idx[k] must be
 * < ds->n. Allocates nothing. */
void td_dataset_gather(const td_dataset *ds, const uint32_t *idx, size_t count, float *dst,
                       int32_t *labels);

#endif
