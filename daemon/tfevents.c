/* TensorBoard event files (see tfevents.h). */
#include "tfevents.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "fsutil.h"
#include "tensorboard/event.pb-c.h"

/* Bytes around each record's data: its length and the length's CRC; the
 * data's CRC. */
#define HEADER 12
#define FOOTER 4
#define SUFFIX_MAX 128
/* How many ".N" names are tried after the plain name is taken. */
#define NAME_TRIES 1000

struct td_tfevents {
  FILE *f;
  char path[PATH_MAX];
  /* One record at a time is built here: header, Event, footer. It grows to
   * the largest record written and is reused. */
  uint8_t *buf;
  size_t cap;
  /* Bytes of whole records handed to stdio, and how many of them a
   * successful fflush has passed to the kernel. */
  uint64_t bytes, flushed;
  /* The first write failure; later calls return it. */
  int failed;
  td_error fail;
};

/* ---- CRC-32C */

/* crc32c_table[b]: the CRC of byte b with the reflected Castagnoli
 * polynomial 0x82f63b78. */
static const uint32_t crc32c_table[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu, 0x26a1e7e8u,
    0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu, 0x4d43cfd0u, 0xbf284cd3u,
    0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu, 0xf165b798u, 0x030e349bu, 0xd7c45070u,
    0x25afd373u, 0x36ff2087u, 0xc494a384u, 0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u,
    0x5d1d08bfu, 0xaf768bbcu, 0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u,
    0x33ed7d2au, 0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau, 0x30e349b1u,
    0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu, 0x1642ae59u, 0xe4292d5au,
    0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au, 0x7da08661u, 0x8fcb0562u, 0x9c9bf696u,
    0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu, 0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u,
    0x67dafa54u, 0x95b17957u, 0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu,
    0xfe53516fu, 0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu, 0x3ac7f2ebu,
    0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u, 0x61c69362u, 0x93ad1061u,
    0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu, 0x4767748au, 0xb50cf789u, 0xeb1fcbadu,
    0x197448aeu, 0x0a24bb5au, 0xf84f3859u, 0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u,
    0x7198540du, 0x83f3d70eu, 0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u,
    0xa55230e6u, 0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu, 0x456cac67u,
    0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u, 0xe9141340u, 0x1b7f9043u,
    0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu, 0x92a8fc17u, 0x60c37f14u, 0x73938ce0u,
    0x81f80fe3u, 0x55326b08u, 0xa759e80bu, 0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu,
    0xf94ad42fu, 0x0b21572cu, 0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u,
    0x502036a5u, 0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u, 0x0e330a81u,
    0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du, 0x758fe5d6u, 0x87e466d5u,
    0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u, 0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u,
    0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu, 0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u,
    0x0417b1dbu, 0xf67c32d8u, 0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu,
    0x5a048dffu, 0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u, 0x590ab964u,
    0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u, 0x7fab5e8cu, 0x8dc0dd8fu,
    0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu, 0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u,
    0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u, 0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u,
    0x4f48173du, 0xbd23943eu, 0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au,
    0xc69f7b69u, 0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};

uint32_t td_crc32c(uint32_t crc, const void *data, size_t n) {
  const uint8_t *p = data;
  crc = ~crc;
  for (size_t i = 0; i < n; i++)
    crc = crc32c_table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

uint32_t td_tfevents_mask_crc(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

/* ---- records */

static void put_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

/* Records the writer's first failure (errno_val from the failed call) and
 * returns it. Nothing more reaches the file: what stdio still holds is
 * dropped and the file is cut back to the end of the last flushed record, so
 * that it ends with a whole record. */
static int fail(td_tfevents *w, int errno_val, td_error *err) {
  w->failed = 1;
  td_errorf(&w->fail, TD_EIO, "cannot write TensorBoard event file %s: %s", w->path,
            errno_val ? strerror(errno_val) : "unknown error");
  __fpurge(w->f);
  if (ftruncate(fileno(w->f), (off_t)w->flushed) != 0) {
    /* The partial record stays; readers stop at it, and nothing follows it. */
  }
  return td_errorf(err, w->fail.code, "%s", w->fail.msg);
}

static int failed_before(const td_tfevents *w, td_error *err) {
  return td_errorf(err, w->fail.code,
                   "%s (an earlier write failed; no more records "
                   "are written to this file)",
                   w->fail.msg);
}

/* Frames ev as one record and hands it to stdio. */
static int write_event(td_tfevents *w, const Tensorboard__Event *ev, td_error *err) {
  if (w->failed)
    return failed_before(w, err);
  size_t n = tensorboard__event__get_packed_size(ev);
  size_t total = HEADER + n + FOOTER;
  if (total > w->cap) {
    size_t cap = w->cap * 2 > total ? w->cap * 2 : total;
    uint8_t *b = realloc(w->buf, cap);
    if (!b)
      return td_errorf(err, TD_ENOMEM, "out of memory for a %zu-byte TensorBoard record", total);
    w->buf = b;
    w->cap = cap;
  }
  uint8_t *p = w->buf, *data = p + HEADER;
  put_le64(p, (uint64_t)n);
  put_le32(p + 8, td_tfevents_mask_crc(td_crc32c(0, p, 8)));
  size_t packed = tensorboard__event__pack(ev, data);
  if (packed != n)
    return td_errorf(err, TD_EINTERNAL, "a TensorBoard event packed to %zu bytes, not %zu", packed,
                     n);
  put_le32(data + n, td_tfevents_mask_crc(td_crc32c(0, data, n)));
  errno = 0;
  if (fwrite(p, 1, total, w->f) != total)
    return fail(w, errno, err);
  w->bytes += total;
  return TD_OK;
}

/* Writes a summary holding the one value v. */
static int write_value(td_tfevents *w, Tensorboard__Summary__Value *v, int64_t step,
                       double wall_time, td_error *err) {
  Tensorboard__Summary__Value *values[1] = {v};
  Tensorboard__Summary summary = TENSORBOARD__SUMMARY__INIT;
  summary.n_value = 1;
  summary.value = values;
  Tensorboard__Event ev = TENSORBOARD__EVENT__INIT;
  ev.wall_time = wall_time;
  ev.step = step;
  ev.what_case = TENSORBOARD__EVENT__WHAT_SUMMARY;
  ev.summary = &summary;
  return write_event(w, &ev, err);
}

/* ---- the writer */

static int suffix_ok(const char *s) {
  size_t n = strlen(s);
  if (n > SUFFIX_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && !strchr("-_.+@=", s[i]))
      return 0;
  return 1;
}

/* This machine's name as a file-name component. */
static void host_name(char *buf, size_t len) {
  if (gethostname(buf, len) != 0 || !buf[0])
    snprintf(buf, len, "localhost");
  buf[len - 1] = '\0';
  for (char *c = buf; *c; c++)
    if (*c == '/' || !isgraph((unsigned char)*c))
      *c = '_';
}

/* Creates a file that does not exist yet, trying base, base.1, base.2, ...
 * Sets w->path and w->f. */
static int create_file(td_tfevents *w, const char *base, td_error *err) {
  for (int i = 0; i <= NAME_TRIES; i++) {
    int len = i ? snprintf(w->path, sizeof w->path, "%s.%d", base, i)
                : snprintf(w->path, sizeof w->path, "%s", base);
    if (len < 0 || (size_t)len >= sizeof w->path)
      return td_errorf(err, TD_EINVAL, "TensorBoard event file path too long: %.64s...", base);
    int fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0 && errno == EEXIST)
      continue;
    if (fd < 0)
      return td_errorf(err, TD_EIO, "cannot create TensorBoard event file %s: %s", w->path,
                       strerror(errno));
    w->f = fdopen(fd, "wb");
    if (!w->f) {
      int e = errno;
      close(fd);
      unlink(w->path);
      return td_errorf(err, TD_EIO, "cannot open TensorBoard event file %s: %s", w->path,
                       strerror(e));
    }
    return TD_OK;
  }
  return td_errorf(err, TD_EIO,
                   "cannot create TensorBoard event file %s: %d files of "
                   "that name exist",
                   base, NAME_TRIES + 1);
}

int td_tfevents_open(const char *dir, const char *run_suffix, td_tfevents **out, td_error *err) {
  *out = NULL;
  if (!dir || !dir[0])
    return td_errorf(err, TD_EINVAL, "no directory for TensorBoard event files");
  if (!run_suffix)
    run_suffix = "";
  if (!suffix_ok(run_suffix))
    return td_errorf(err, TD_EINVAL,
                     "bad TensorBoard event file suffix \"%.64s\": use at most %d letters, "
                     "digits and -_.+@=",
                     run_suffix, SUFFIX_MAX);
  int rc = td_mkdir_p(dir, err);
  if (rc != TD_OK) {
    td_error_prefix(err, "TensorBoard log directory");
    return rc;
  }

  char host[256], base[PATH_MAX];
  host_name(host, sizeof host);
  double now = td_wall_sec();
  int len = snprintf(base, sizeof base, "%s/events.out.tfevents.%lld.%s.%ld%s%s", dir,
                     (long long)now, host, (long)getpid(), run_suffix[0] ? "." : "", run_suffix);
  if (len < 0 || (size_t)len >= sizeof base)
    return td_errorf(err, TD_EINVAL, "TensorBoard log directory path too long: %.64s...", dir);

  td_tfevents *w = calloc(1, sizeof *w);
  if (!w)
    return td_errorf(err, TD_ENOMEM, "out of memory for a TensorBoard writer");
  rc = create_file(w, base, err);
  if (rc != TD_OK) {
    free(w);
    return rc;
  }

  Tensorboard__Event ev = TENSORBOARD__EVENT__INIT;
  ev.wall_time = now;
  ev.what_case = TENSORBOARD__EVENT__WHAT_FILE_VERSION;
  ev.file_version = (char *)TD_TFEVENTS_FILE_VERSION;
  rc = write_event(w, &ev, err);
  if (rc == TD_OK)
    rc = td_tfevents_flush(w, err);
  if (rc != TD_OK) {
    fclose(w->f);
    unlink(w->path);
    free(w->buf);
    free(w);
    return rc;
  }
  *out = w;
  return TD_OK;
}

const char *td_tfevents_path(const td_tfevents *w) { return w->path; }

int td_tfevents_scalar(td_tfevents *w, const char *tag, int64_t step, float value, double wall_time,
                       td_error *err) {
  if (!tag || !tag[0])
    return td_errorf(err, TD_EINVAL, "a TensorBoard scalar needs a tag");
  Tensorboard__Summary__Value v = TENSORBOARD__SUMMARY__VALUE__INIT;
  v.tag = (char *)tag;
  v.value_case = TENSORBOARD__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
  v.simple_value = value;
  return write_value(w, &v, step, wall_time, err);
}

int td_tfevents_text(td_tfevents *w, const char *tag, int64_t step, const char *text,
                     double wall_time, td_error *err) {
  if (!tag || !tag[0])
    return td_errorf(err, TD_EINVAL, "a TensorBoard text needs a tag");
  if (!text)
    return td_errorf(err, TD_EINVAL, "no text for TensorBoard tag %s", tag);
  /* The text plugin's metadata: its name and an empty TextPluginData
   * (version 0), as tf.summary.text writes. */
  Tensorboard__SummaryMetadata__PluginData plugin =
      TENSORBOARD__SUMMARY_METADATA__PLUGIN_DATA__INIT;
  plugin.plugin_name = "text";
  Tensorboard__SummaryMetadata meta = TENSORBOARD__SUMMARY_METADATA__INIT;
  meta.plugin_data = &plugin;
  /* A rank-0 string tensor: a shape with no dims and one string_val. */
  Tensorboard__TensorShapeProto shape = TENSORBOARD__TENSOR_SHAPE_PROTO__INIT;
  ProtobufCBinaryData str = {strlen(text), (uint8_t *)text};
  Tensorboard__TensorProto tensor = TENSORBOARD__TENSOR_PROTO__INIT;
  tensor.dtype = TENSORBOARD__DATA_TYPE__DT_STRING;
  tensor.tensor_shape = &shape;
  tensor.n_string_val = 1;
  tensor.string_val = &str;
  Tensorboard__Summary__Value v = TENSORBOARD__SUMMARY__VALUE__INIT;
  v.tag = (char *)tag;
  v.metadata = &meta;
  v.value_case = TENSORBOARD__SUMMARY__VALUE__VALUE_TENSOR;
  v.tensor = &tensor;
  return write_value(w, &v, step, wall_time, err);
}

int td_tfevents_histogram(td_tfevents *w, const char *tag, int64_t step, double min, double max,
                          double num, double sum, double sum_sq, size_t n, const double *limits,
                          const double *counts, double wall_time, td_error *err) {
  if (!tag || !tag[0])
    return td_errorf(err, TD_EINVAL, "a TensorBoard histogram needs a tag");
  Tensorboard__HistogramProto h = TENSORBOARD__HISTOGRAM_PROTO__INIT;
  h.min = min;
  h.max = max;
  h.num = num;
  h.sum = sum;
  h.sum_squares = sum_sq;
  h.n_bucket_limit = h.n_bucket = n;
  h.bucket_limit = (double *)limits;
  h.bucket = (double *)counts;
  Tensorboard__Summary__Value v = TENSORBOARD__SUMMARY__VALUE__INIT;
  v.tag = (char *)tag;
  v.value_case = TENSORBOARD__SUMMARY__VALUE__VALUE_HISTO;
  v.histo = &h;
  return write_value(w, &v, step, wall_time, err);
}

int td_tfevents_flush(td_tfevents *w, td_error *err) {
  if (w->failed)
    return failed_before(w, err);
  errno = 0;
  if (fflush(w->f) != 0)
    return fail(w, errno, err);
  w->flushed = w->bytes;
  return TD_OK;
}

int td_tfevents_close(td_tfevents *w, td_error *err) {
  if (!w)
    return TD_OK;
  int rc = TD_OK;
  if (w->failed)
    rc = failed_before(w, err);
  else
    rc = td_tfevents_flush(w, err);
  errno = 0;
  if (fclose(w->f) != 0 && rc == TD_OK)
    rc = td_errorf(err, TD_EIO, "cannot close TensorBoard event file %s: %s", w->path,
                   errno ? strerror(errno) : "unknown error");
  free(w->buf);
  free(w);
  return rc;
}
