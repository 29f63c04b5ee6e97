/* Opening the files traind reads for a job (datasets, warm-start files,
 * checkpoints) so that a file can neither block the reader nor lead it
 * outside itself.
 *
 * Every such file is opened through td_open_regular: without following a
 * final symlink, without blocking (a FIFO, a device or a socket is refused
 * before anything is read), and checked with fstat to be a regular file.
 *
 * HDF5 files are opened through td_h5_open, which lets HDF5 open the inode
 * it checked (through /proc/self/fd where the system has it; otherwise by
 * path, compared by device and inode afterwards), and each dataset through
 * td_h5_dopen. Together they refuse the three ways an HDF5 file reaches
 * data outside itself:
 *   - external links (H5Lcreate_external) anywhere on a dataset's path, and
 *     soft links that lead through one: every traversal uses access
 *     properties whose external-link callback refuses (td_h5_lapl,
 *     td_h5_dapl, td_h5_gapl);
 *   - external raw storage (H5Pset_external: an external file list);
 *   - virtual datasets (H5D_VIRTUAL layout, mapped from other datasets).
 * They also refuse a dataset whose declared size the file cannot hold: no
 * space allocated (its values would all be the fill value), chunks never
 * written, more stored bytes than the file has, or a declared size beyond
 * TD_H5_MAX_RATIO times the compressed bytes. So a caller may allocate
 * what an opened dataset declares. */
#ifndef TD_H5SAFE_H
#define TD_H5SAFE_H

#include <hdf5.h>
#include <stdint.h>
#include <sys/stat.h>

#include "error.h"

/* The most a filtered (compressed) dataset may declare per stored byte.
 * Deflate, the strongest filter built into HDF5, stays below 1032:1. */
#define TD_H5_MAX_RATIO 2048

/* HDF5's error reporting, for every reader and writer of HDF5 files:
 * td_h5_silence turns its automatic printing off and td_h5_restore turns
 * it back on after emptying the thread's error stack (entries left there
 * when a thread ends, a job's worker or the checkpoint writer, are never
 * freed and hold references that keep HDF5 from closing at exit). */
typedef struct td_h5_quiet {
  H5E_auto2_t fn;
  void *data;
} td_h5_quiet;
td_h5_quiet td_h5_silence(void);
void td_h5_restore(td_h5_quiet q);

/* The description of the innermost (most specific) entry on the calling
 * thread's HDF5 error stack, or "no detail from HDF5"; written into buf
 * (TD_H5_DETAIL bytes) and returned. */
#define TD_H5_DETAIL 256
const char *td_h5_detail(char buf[TD_H5_DETAIL]);

/* Opens path read-only for reading a job's data: O_NOFOLLOW, O_NONBLOCK
 * (cleared again once the file is known to be regular), O_CLOEXEC. Returns
 * the descriptor (>= 0) with *st filled, or a negative td_status:
 * TD_ENOTFOUND (no such file), TD_EPERM (no permission), TD_EINVAL (not a
 * regular file: FIFO, socket, device, directory, a symlink as the last
 * component, a loop of symlinks, a name too long; the message says which),
 * TD_EIO (anything else). `what` starts the message ("dataset file",
 * "checkpoint"). */
int td_open_regular(const char *path, const char *what, struct stat *st, td_error *err);
/* What a file of mode m is, for messages: "a FIFO (named pipe)", "a
 * socket", "a directory", ... */
const char *td_file_kind(mode_t m);

/* Opens path (see above) read-only into *fid and checks it is HDF5 (the
 * signature at offset 0 or a power of two from 512). Errors:
 * td_open_regular's, and TD_EDATA for an empty file, one without the
 * signature, or one HDF5 cannot open ("truncated" in the message when HDF5
 * says so). `what` starts the messages ("HDF5 dataset file",
 * "checkpoint"). Call between td_h5_silence and td_h5_restore (which
 * empties the thread's error stack; entries left there keep HDF5 from
 * closing at exit, "infinite loop closing library"). */
int td_h5_open(const char *path, const char *what, hid_t *fid, td_error *err);

/* Access properties whose external-link callback refuses the traversal:
 * pass them wherever an HDF5 call on a file from td_h5_open takes a link,
 * dataset or group access property list. Made once, shared, never freed. */
hid_t td_h5_lapl(void);
hid_t td_h5_dapl(void);
hid_t td_h5_gapl(void);
/* The external link the calling thread's last refused traversal met ("an
 * external link (in group '/g') to '/x' in file 'f.h5'"), or "" when none
 * since td_h5_denied_clear. */
const char *td_h5_denied(void);
void td_h5_denied_clear(void);

/* Opens dataset `name` of fid (opened by td_h5_open from `path`) for
 * reading, after refusing what leads outside the file and what the file
 * cannot hold (see above). `role` names the dataset in messages
 * ("features", "labels", "dataset"). Returns 0 with *did open (the caller
 * closes it), or, with *did invalid:
 *   TD_ENOTFOUND  nothing of that name (message: "no dataset 'name'");
 *   TD_EINVAL     something that is not a dataset ("'name' is not a
 *                 dataset");
 *   TD_EDATA      refused, naming the file, the role, the dataset and the
 *                 mechanism ("'f.h5': features '/x' uses external storage
 *                 (...); traind reads only data stored inside the file"),
 *                 or unreadable. */
int td_h5_dopen(hid_t fid, const char *path, const char *name, const char *role, hid_t *did,
                td_error *err);

/* A readable name for an HDF5 type, for messages: "uint8", "float64",
 * "string", "compound", ... */
void td_h5_type_name(hid_t t, char *buf, size_t len);
/* The first 16 top-level names of the file (", ..." after), for "no such
 * dataset" messages; no link is traversed. "" when none can be read. */
void td_h5_list_top(hid_t fid, char *buf, size_t len);

#endif
