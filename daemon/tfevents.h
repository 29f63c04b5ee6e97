/* TensorBoard event files: what `tensorboard --logdir DIR` reads.
 *
 * A writer owns one new file,
 *
 *   DIR/events.out.tfevents.<unix seconds>.<hostname>.<pid>[.<suffix>]
 *
 * (never an existing one: on a clash a counter ".N" is appended). The file
 * is a sequence of records, each
 *
 *   uint64  length of data, little-endian
 *   uint32  masked CRC32C of those 8 bytes, little-endian
 *   bytes   data: one serialized tensorboard.Event (proto/tensorboard/)
 *   uint32  masked CRC32C of data, little-endian
 *
 * with masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8. The first
 * record is an Event whose file_version is "brain.Event:2"; every later one
 * holds a Summary with one value.
 *
 * Threads: a writer is used from one thread at a time (a job's worker);
 * distinct writers are independent. Errors are returned, never raised: the
 * first failed write (disk full, file too large, I/O error) is remembered,
 * the file is cut back to the end of the last flushed record, and every
 * later call on that writer returns the same error without touching the
 * file again. Records reach the file at td_tfevents_flush() or when stdio's
 * buffer fills; the caller flushes about once a second, which bounds what a
 * failure loses. */
#ifndef TD_TFEVENTS_H
#define TD_TFEVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define TD_TFEVENTS_FILE_VERSION "brain.Event:2"

typedef struct td_tfevents td_tfevents;

/* CRC-32C (Castagnoli, reflected polynomial 0x82f63b78) of n bytes,
 * continuing from crc (0 to start): td_crc32c(0, "123456789", 9) is
 * 0xe3069283. */
uint32_t td_crc32c(uint32_t crc, const void *data, size_t n);
/* The masked form of a CRC that event-file records store. */
uint32_t td_tfevents_mask_crc(uint32_t crc);

/* Creates dir (and its parents) when missing, creates a new event file in it
 * and writes the file_version record. run_suffix (NULL or "" for none) ends
 * the file name; it may hold letters, digits and "-_.+@=" only. On success
 * *out is the writer, to be closed with td_tfevents_close(). */
int td_tfevents_open(const char *dir, const char *run_suffix, td_tfevents **out, td_error *err);
/* The file's path (owned by the writer). */
const char *td_tfevents_path(const td_tfevents *w);

/* Appends one scalar (a simple_value, which TensorBoard's scalar dashboard
 * shows under tag) at step. wall_time is seconds since the epoch. */
int td_tfevents_scalar(td_tfevents *w, const char *tag, int64_t step, float value, double wall_time,
                       td_error *err);
/* Appends one text (a rank-0 DT_STRING tensor for the "text" plugin, which
 * renders it as Markdown) at step. */
int td_tfevents_text(td_tfevents *w, const char *tag, int64_t step, const char *text,
                     double wall_time, td_error *err);
/* A histogram (TensorBoard's histograms and distributions): n buckets,
 * counts[i] values in (limits[i - 1], limits[i]]; min, max, the number of
 * values, their sum and their sum of squares. */
int td_tfevents_histogram(td_tfevents *w, const char *tag, int64_t step, double min, double max,
                          double num, double sum, double sum_sq, size_t n, const double *limits,
                          const double *counts, double wall_time, td_error *err);
/* Hands buffered records to the file (fflush). */
int td_tfevents_flush(td_tfevents *w, td_error *err);
/* Flushes, closes the file and frees w (NULL is a no-op). Returns the first
 * error the writer met, if any; w is freed either way. */
int td_tfevents_close(td_tfevents *w, td_error *err);

#endif
