/* Language-model datasets: a text file's tokens (its bytes, or its UTF-8
 * characters through a vocabulary of the characters it holds) or token ids
 * from HDF5, split into a training and a validation part, each held as
 * token windows (see td_dataset in data.h: x the ids as floats, y the id
 * that follows each, examples windows of `block` tokens). */
#ifndef TD_TEXT_H
#define TD_TEXT_H

#include <stdint.h>

#include "data.h"
#include "error.h"

/* How a token file becomes windows. */
typedef struct td_text_opts {
  int bytes;           /* 1: byte tokens, 0: characters (text files only) */
  double val_fraction; /* in (0, 1): the last part of the tokens held out */
  int tiles;           /* training windows as tiles (stride block) instead of every offset */
  uint32_t block;      /* window length T (the model's input_shape [T]) */
  uint32_t train_limit, test_limit; /* 0: all; else only the first N windows */
} td_text_opts;

/* The most ids a token dataset may have: every id is exact as a float32. */
#define TD_TEXT_MAX_VOCAB ((uint32_t)1 << 24)
/* The largest text file a job may read (1 GiB). */
#define TD_TEXT_MAX_FILE ((uint64_t)1 << 30)
/* A bound on what the loaders below allocate beyond the datasets they
 * fill: the read buffer, a character set and id table over every code
 * point (text), a chunk of ids read as int64 (HDF5). */
#define TD_TEXT_SCRATCH_BYTES ((size_t)16 << 20)

/* Fills *o from a job's fields: tokens "char" (or NULL/"": the default) or
 * "byte"; sampling "random" (or NULL/""; windows at every offset) or
 * "tiles"; val_fraction NULL for the default 0.1, else in (0, 1); block
 * from the model's input shape, at least 1. `field` names the job's
 * dataset in messages ("dataset.text", "dataset.hdf5_tokens"); tokens must
 * be NULL for HDF5 ids. TD_EINVAL naming the field and the accepted values
 * otherwise. The limits are left 0. */
int td_text_opts_parse(const char *field, const char *tokens, const char *sampling,
                       const double *val_fraction, uint32_t block, td_text_opts *o, td_error *err);

/* Loads a text file (at most TD_TEXT_MAX_FILE bytes, opened with
 * td_open_regular) into a training part, its first
 * floor((1 - val_fraction) * N) tokens, and a validation part, the rest.
 *
 * Tokens: with o->bytes the file's bytes (vocab_size 256, vocab NULL);
 * otherwise its characters, decoded from UTF-8 (anything else, overlong
 * forms and surrogates included, is TD_EDATA naming the byte offset), with
 * ids the index of the code point in the sorted set of the characters in
 * the whole file: train->vocab holds that set (n_vocab = vocab_size),
 * val->vocab is NULL and val->n_vocab 0.
 *
 * Each part holds its tokens as x (ids as floats) and y (y[k] = id[k + 1];
 * the last y of the part, which no window reads, is 0). The training part's
 * windows start at every offset (stride 1, n = tokens - block) or, with
 * o->tiles, are tiles (stride block, n = (tokens - 1) / block); the
 * validation part's are always tiles. dim = label_dim = block, label_stride
 * = stride, max_label the largest id among the windows' labels. A limit
 * keeps the first N windows, and only the tokens they read and the one
 * after (n_values = (N - 1) * stride + block + 1).
 *
 * An empty file, or a part with fewer than block + 1 tokens (no window),
 * is TD_EINVAL saying what to change. On failure both parts are left
 * zeroed. */
int td_text_load(const char *path, const td_text_opts *o, td_dataset *train, td_dataset *val,
                 td_error *err);

/* Loads token ids from HDF5: dataset `train_name` (default "train") of any
 * integer type, 1-D or 2-D (read row after row as one sequence), and the
 * held-out ids from `val_name` (NULL or "": "val"). When val_name is left
 * to the default and the file has no "val", the last val_fraction of the
 * training ids is held out instead, as td_text_load splits; a val_name
 * given explicitly must exist. Ids must be >= 0 and < vocab_size, which
 * must be at most TD_TEXT_MAX_VOCAB; vocab_size 0 takes the largest id in
 * both datasets + 1 (that must then be at most TD_TEXT_MAX_VOCAB). A bad
 * id is an error naming the file, the dataset, the position and the value.
 * The file and datasets are opened through td_h5_open and td_h5_dopen, with
 * HDF5's error printing silenced. Windows, limits and failures as
 * td_text_load; both parts get vocab_size and vocab NULL. o->bytes is
 * ignored. */
int td_h5tokens_load(const char *path, const char *train_name, const char *val_name,
                     uint32_t vocab_size, const td_text_opts *o, td_dataset *train, td_dataset *val,
                     td_error *err);

/* The two parts' sizes without keeping data, for sizing a job: n, dim, ndim,
 * shape, n_values, stride, label_dim, label_stride and vocab_size as the
 * loaders set them, with x, y and vocab NULL and max_label 0.
 *
 * td_text_shape reads the file (in small pieces; nothing as large as the
 * file is allocated): byte tokens need only its size, but for characters
 * the file is decoded, with the loader's UTF-8 checks, to count them and
 * to find the exact vocabulary size. td_h5tokens_shape reads only headers
 * (shapes and types); its vocab_size is the given one, or
 * TD_TEXT_MAX_VOCAB (a bound) when the loader would find it from the ids.
 * Both make the loaders' checks of the sizes (empty file, a part too short
 * for a window). */
int td_text_shape(const char *path, const td_text_opts *o, td_dataset *train, td_dataset *val,
                  td_error *err);
int td_h5tokens_shape(const char *path, const char *train_name, const char *val_name,
                      uint32_t vocab_size, const td_text_opts *o, td_dataset *train,
                      td_dataset *val, td_error *err);

#endif
