/* Token datasets: text files written here (characters through UTF-8 of
 * every length, bytes), the split, the windows and their labels through
 * td_dataset_gather at both strides, the limits, every refusal of the text
 * and HDF5 token loaders, the shape readers against the loaders, and the
 * real Shakespeare text from TRAIND_DATA_DIR. */
#include <fcntl.h>
#include <hdf5.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "data.h"
#include "text.h"

static char tmp[256];

static const char *at(const char *rel) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, 512, "%s/%s", tmp, rel);
  return b;
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  CHECK(f && fwrite(data, 1, len, f) == len && fclose(f) == 0, "writing %s", path);
}

/* UTF-8 of code point cp into p; returns its length. The reference the
 * decoder is checked against. */
static size_t utf8_put(unsigned char *p, uint32_t cp) {
  if (cp < 0x80) {
    p[0] = (unsigned char)cp;
    return 1;
  }
  if (cp < 0x800) {
    p[0] = (unsigned char)(0xc0 | cp >> 6);
    p[1] = (unsigned char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    p[0] = (unsigned char)(0xe0 | cp >> 12);
    p[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    p[2] = (unsigned char)(0x80 | (cp & 0x3f));
    return 3;
  }
  p[0] = (unsigned char)(0xf0 | cp >> 18);
  p[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
  p[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
  p[3] = (unsigned char)(0x80 | (cp & 0x3f));
  return 4;
}

static td_text_opts opts(int bytes, double vf, int tiles, uint32_t block) {
  td_text_opts o = {0};
  o.bytes = bytes;
  o.val_fraction = vf;
  o.tiles = tiles;
  o.block = block;
  return o;
}

/* A call that must fail with want_code and a message holding each needle;
 * both parts must come back zeroed. */
#define EXPECT_FAIL(call, want_code, ...)                                                       \
  do {                                                                                          \
    td_error e_ = {0};                                                                          \
    td_dataset tr_, va_;                                                                        \
    memset(&tr_, 0x5a, sizeof tr_);                                                             \
    memset(&va_, 0x5a, sizeof va_);                                                             \
    int rc_ = (call);                                                                           \
    CHECK(rc_ == (want_code), "%s returned %d (%s), want %d", #call, rc_, e_.msg, want_code);   \
    const char *needles_[] = {__VA_ARGS__};                                                     \
    for (size_t k_ = 0; k_ < sizeof needles_ / sizeof *needles_; k_++)                          \
      CHECK_STR_CONTAINS(e_.msg, needles_[k_]);                                                 \
    CHECK(tr_.x == NULL && tr_.y == NULL && tr_.vocab == NULL && tr_.n == 0 && va_.x == NULL && \
              va_.n == 0,                                                                       \
          "%s: the parts are not left zeroed", #call);                                          \
  } while (0)

/* ---- characters ------------------------------------------------------------ */

/* 20 characters of 1 to 4 bytes; U+1D11E (4 bytes) and 'z' appear only in
 * the last five, the validation part at val_fraction 0.25. */
static const uint32_t text_cps[20] = {'h', 0xe9, 'l', 'l', 'o',    ' ', 0x20ac,  'w', 0xf6, 'r',
                                      'l', 'd',  ' ', 'a', 0x20ac, 'b', 0x1d11e, 'z', 'a',  '\n'};

/* The sorted set of text_cps, and each one's index in it: the expected
 * vocabulary and ids, computed here by sorting. */
static uint32_t ref_vocab[20], ref_ids[20], ref_nvocab;

static void make_reference(void) {
  uint32_t s[20];
  memcpy(s, text_cps, sizeof s);
  for (int i = 1; i < 20; i++)
    for (int j = i; j > 0 && s[j - 1] > s[j]; j--) {
      uint32_t t = s[j];
      s[j] = s[j - 1];
      s[j - 1] = t;
    }
  ref_nvocab = 0;
  for (int i = 0; i < 20; i++)
    if (i == 0 || s[i] != s[i - 1])
      ref_vocab[ref_nvocab++] = s[i];
  for (int i = 0; i < 20; i++)
    for (uint32_t v = 0; v < ref_nvocab; v++)
      if (ref_vocab[v] == text_cps[i])
        ref_ids[i] = v;
}

static size_t write_text(const char *path) {
  unsigned char buf[80];
  size_t len = 0;
  for (int i = 0; i < 20; i++)
    len += utf8_put(buf + len, text_cps[i]);
  write_file(path, buf, len);
  return len;
}

/* The part holds tokens ids[first ..] as x, with y the next id (0 for its
 * last). */
static void check_part(const td_dataset *ds, const uint32_t *ids, size_t first, size_t ntok,
                       const char *what) {
  CHECK(ds->n_values == ntok, "%s: n_values %zu, want %zu", what, ds->n_values, ntok);
  int ok = ds->x && ds->y && ds->n_values == ntok;
  for (size_t k = 0; ok && k < ntok; k++) {
    if (ds->x[k] != (float)ids[first + k])
      ok = 0;
    if (ds->y[k] != (k + 1 < ntok ? (int32_t)ids[first + k + 1] : 0))
      ok = 0;
  }
  CHECK(ok, "%s: x or y differ from the reference ids", what);
}

static void test_chars(void) {
  make_reference();
  const size_t len = write_text(at("chars.txt"));
  CHECK(len == 20 + 1 + 2 + 1 + 2 + 3, "the file has %zu bytes", len);
  CHECK(ref_nvocab == 15, "reference vocabulary of %u", ref_nvocab);

  td_dataset tr, va;
  td_error err = {0};
  td_text_opts o = opts(0, 0.25, 0, 3);
  int rc = td_text_load(at("chars.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0, "chars: %s", err.msg);
  if (rc)
    return;
  /* The vocabulary: every character of the whole file, sorted. */
  CHECK(tr.vocab_size == ref_nvocab && tr.n_vocab == ref_nvocab && va.vocab_size == ref_nvocab,
        "vocab_size %u / n_vocab %u / val %u, want %u", tr.vocab_size, tr.n_vocab, va.vocab_size,
        ref_nvocab);
  CHECK(tr.vocab && memcmp(tr.vocab, ref_vocab, ref_nvocab * sizeof *tr.vocab) == 0,
        "vocabulary differs from the sorted set");
  CHECK(va.vocab == NULL && va.n_vocab == 0, "the validation part has its own vocabulary");
  CHECK(tr.vocab && tr.vocab[ref_nvocab - 1] == 0x1d11e, "the last id is U+1D11E, seen only in "
                                                         "the validation part");
  /* The split: floor(0.75 * 20) = 15 training tokens. */
  check_part(&tr, ref_ids, 0, 15, "chars train");
  check_part(&va, ref_ids, 15, 5, "chars val");
  /* Windows: every offset in training (15 - 3), tiles in validation
   * ((5 - 1) / 3). */
  CHECK(tr.n == 12 && tr.dim == 3 && tr.ndim == 1 && tr.shape[0] == 3 && tr.stride == 1 &&
            tr.label_dim == 3 && tr.label_stride == 1,
        "train layout n %u dim %u stride %u label_dim %u label_stride %u", tr.n, tr.dim, tr.stride,
        tr.label_dim, tr.label_stride);
  CHECK(va.n == 1 && va.dim == 3 && va.stride == 3 && va.label_dim == 3 && va.label_stride == 3,
        "val layout n %u stride %u", va.n, va.stride);
  /* max_label over the labels the windows read: train y[0..14) are ids
   * 1..14 of the text; val y[0..3) ids 16..18. */
  int32_t mt = 0, mv = 0;
  for (int k = 1; k <= 14; k++)
    mt = (int32_t)ref_ids[k] > mt ? (int32_t)ref_ids[k] : mt;
  for (int k = 16; k <= 18; k++)
    mv = (int32_t)ref_ids[k] > mv ? (int32_t)ref_ids[k] : mv;
  CHECK(tr.max_label == mt && va.max_label == mv, "max_label %d / %d, want %d / %d", tr.max_label,
        va.max_label, mt, mv);
  CHECK(va.max_label == (int32_t)ref_nvocab - 1, "the validation labels reach the last id");

  /* Windows and labels through gather, stride 1: window i is ids
   * [i, i + 3), its labels ids [i + 1, i + 4). */
  const uint32_t idx[3] = {11, 0, 5};
  float x[9];
  int32_t y[9];
  td_dataset_gather(&tr, idx, 3, x, y);
  int ok = 1;
  for (int r = 0; r < 3; r++)
    for (int j = 0; j < 3; j++)
      if (x[r * 3 + j] != (float)ref_ids[idx[r] + j] ||
          y[r * 3 + j] != (int32_t)ref_ids[idx[r] + j + 1])
        ok = 0;
  CHECK(ok, "stride-1 windows 11, 0, 5 differ");
  td_dataset_gather(&va, idx + 1, 1, x, y);
  CHECK(x[0] == (float)ref_ids[15] && x[2] == (float)ref_ids[17] && y[0] == (int32_t)ref_ids[16] &&
            y[2] == (int32_t)ref_ids[18],
        "validation tile 0");
  td_dataset_free(&tr);
  td_dataset_free(&va);
  CHECK(tr.vocab == NULL && tr.x == NULL && tr.n == 0, "free does not reset");

  /* Tiles in training too: (15 - 1) / 3 = 4 windows; window i is ids
   * [3 i, 3 i + 3). */
  o.tiles = 1;
  rc = td_text_load(at("chars.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0, "tiles: %s", err.msg);
  if (rc)
    return;
  CHECK(tr.n == 4 && tr.stride == 3 && tr.label_stride == 3, "tiles: n %u stride %u", tr.n,
        tr.stride);
  const uint32_t tidx[2] = {3, 1};
  td_dataset_gather(&tr, tidx, 2, x, y);
  ok = 1;
  for (int r = 0; r < 2; r++)
    for (int j = 0; j < 3; j++)
      if (x[r * 3 + j] != (float)ref_ids[3 * tidx[r] + j] ||
          y[r * 3 + j] != (int32_t)ref_ids[3 * tidx[r] + j + 1])
        ok = 0;
  CHECK(ok, "tiles 3, 1 differ");
  /* Without labels, only the features. */
  float x2[3] = {-1, -1, -1};
  td_dataset_gather(&tr, tidx, 1, x2, NULL);
  CHECK(x2[0] == (float)ref_ids[9] && x2[2] == (float)ref_ids[11], "tile without labels");
  td_dataset_free(&tr);
  td_dataset_free(&va);

  /* The shape reader agrees with the loader, and keeps nothing. */
  o.tiles = 0;
  td_dataset st, sv;
  rc = td_text_shape(at("chars.txt"), &o, &st, &sv, &err);
  CHECK(rc == 0, "shape: %s", err.msg);
  CHECK(st.n == 12 && st.n_values == 15 && st.dim == 3 && st.stride == 1 && st.label_dim == 3 &&
            sv.n == 1 && sv.n_values == 5 && sv.stride == 3 && st.vocab_size == ref_nvocab &&
            sv.vocab_size == ref_nvocab,
        "shape n %u/%u n_values %zu/%zu vocab %u", st.n, sv.n, st.n_values, sv.n_values,
        st.vocab_size);
  CHECK(!st.x && !st.y && !st.vocab && !sv.x && !sv.y, "the shape reader kept data");
}

/* ---- bytes, the split, the limits -------------------------------------------- */

static void test_bytes(void) {
  /* The same file as bytes: 29 tokens, ids are the bytes. */
  unsigned char buf[80];
  size_t len = 0;
  for (int i = 0; i < 20; i++)
    len += utf8_put(buf + len, text_cps[i]);
  uint32_t ids[80];
  for (size_t i = 0; i < len; i++)
    ids[i] = buf[i];
  td_dataset tr, va;
  td_error err = {0};
  td_text_opts o = opts(1, 0.2, 0, 4);
  int rc = td_text_load(at("chars.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0, "bytes: %s", err.msg);
  if (rc)
    return;
  /* floor(0.8 * 29) = 23 */
  CHECK(len == 29, "%zu bytes", len);
  CHECK(tr.vocab_size == 256 && va.vocab_size == 256 && !tr.vocab && tr.n_vocab == 0,
        "bytes: vocab_size %u vocab %p", tr.vocab_size, (void *)tr.vocab);
  check_part(&tr, ids, 0, 23, "bytes train");
  check_part(&va, ids, 23, 6, "bytes val");
  CHECK(tr.n == 19 && va.n == 1, "bytes: n %u / %u", tr.n, va.n);
  int32_t m = 0;
  for (int k = 1; k <= 22; k++)
    m = (int32_t)ids[k] > m ? (int32_t)ids[k] : m;
  CHECK(tr.max_label == m && m >= 0xc3, "bytes: max_label %d, want %d", tr.max_label, m);
  td_dataset_free(&tr);
  td_dataset_free(&va);

  /* The split point rounds down: floor(0.85 * 10) = 8. */
  write_file(at("ten.txt"), "0123456789", 10);
  o = opts(1, 0.15, 0, 1);
  rc = td_text_load(at("ten.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0 && tr.n_values == 8 && va.n_values == 2 && tr.n == 7 && va.n == 1,
        "ten at 0.15: %d %s, %zu + %zu", rc, err.msg, tr.n_values, va.n_values);
  td_dataset_free(&tr);
  td_dataset_free(&va);
  /* nanoGPT's split, int(0.9 * n). */
  char thousand[1000];
  for (int i = 0; i < 1000; i++)
    thousand[i] = (char)('a' + i % 26);
  write_file(at("thousand.txt"), thousand, sizeof thousand);
  o = opts(1, 0.1, 0, 8);
  rc = td_text_load(at("thousand.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0 && tr.n_values == 900 && va.n_values == 100 && tr.n == 892 && va.n == 12,
        "thousand at 0.1: %d %s, %zu + %zu, n %u + %u", rc, err.msg, tr.n_values, va.n_values, tr.n,
        va.n);
  td_dataset_free(&tr);
  td_dataset_free(&va);

  /* Limits keep the first windows and the tokens they read (and the one
   * after). */
  o = opts(1, 0.1, 0, 8);
  o.train_limit = 5;
  o.test_limit = 2;
  rc = td_text_load(at("thousand.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0 && tr.n == 5 && tr.n_values == 4 + 8 + 1 && va.n == 2 && va.n_values == 8 + 8 + 1,
        "limits: %d %s, n %u (%zu) + %u (%zu)", rc, err.msg, tr.n, tr.n_values, va.n, va.n_values);
  if (rc == 0) {
    CHECK(tr.x[12] == (float)'m' && tr.y[11] == 'm' && tr.y[12] == 0,
          "limited train part: x[12] %g y[11] %d y[12] %d", tr.x[12], tr.y[11], tr.y[12]);
    CHECK(va.x[0] == (float)thousand[900] && va.x[16] == (float)thousand[916] && va.y[16] == 0,
          "limited validation part");
    const uint32_t i4 = 4;
    float x[8];
    int32_t y[8];
    td_dataset_gather(&tr, &i4, 1, x, y);
    CHECK(x[0] == (float)'e' && x[7] == (float)'l' && y[0] == 'f' && y[7] == 'm',
          "the last kept window");
    CHECK(tr.max_label == 'm', "limited max_label %d", tr.max_label);
  }
  td_dataset_free(&tr);
  td_dataset_free(&va);
  td_dataset st, sv;
  rc = td_text_shape(at("thousand.txt"), &o, &st, &sv, &err);
  CHECK(rc == 0 && st.n == 5 && st.n_values == 13 && sv.n == 2 && sv.n_values == 17 &&
            st.vocab_size == 256,
        "limited shape: %d %s", rc, err.msg);
  /* Tiles with a limit: n_values (N - 1) * block + block + 1. */
  o.tiles = 1;
  o.train_limit = 3;
  rc = td_text_load(at("thousand.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0 && tr.n == 3 && tr.n_values == 25, "limited tiles: %d %s n %u (%zu)", rc, err.msg,
        tr.n, tr.n_values);
  td_dataset_free(&tr);
  td_dataset_free(&va);
  /* A limit above the windows there are keeps them all. */
  o.train_limit = 1000;
  o.test_limit = 1000;
  rc = td_text_load(at("thousand.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0 && tr.n == 112 && tr.n_values == 900 && va.n == 12 && va.n_values == 100,
        "limits above n: %d %s n %u", rc, err.msg, tr.n);
  td_dataset_free(&tr);
  td_dataset_free(&va);
}

/* An examples dataset gathers as it always has: one label per example. */
static void test_examples_gather(void) {
  float x[4 * 3];
  int32_t y[4] = {10, 11, 12, 13};
  for (int i = 0; i < 12; i++)
    x[i] = (float)i;
  td_dataset ds = {.n = 4, .dim = 3, .ndim = 1, .shape = {3}, .x = x, .y = y, .max_label = 13};
  td_dataset_examples_layout(&ds);
  CHECK(ds.stride == 3 && ds.label_dim == 1 && ds.label_stride == 1 && ds.n_values == 12,
        "examples layout: stride %u label_dim %u label_stride %u n_values %zu", ds.stride,
        ds.label_dim, ds.label_stride, ds.n_values);
  const uint32_t idx[2] = {3, 1};
  float dst[6];
  int32_t lab[2] = {-1, -1};
  td_dataset_gather(&ds, idx, 2, dst, lab);
  CHECK(dst[0] == 9 && dst[2] == 11 && dst[3] == 3 && dst[5] == 5 && lab[0] == 13 && lab[1] == 11,
        "examples gather");
}

/* ---- the text loader's refusals ------------------------------------------------ */

static void test_text_errors(void) {
  td_text_opts o = opts(0, 0.1, 0, 4);
  write_file(at("empty.txt"), "", 0);
  EXPECT_FAIL(td_text_load(at("empty.txt"), &o, &tr_, &va_, &e_), TD_EINVAL, "dataset.text.file",
              "empty.txt' is empty");
  EXPECT_FAIL(td_text_shape(at("empty.txt"), &o, &tr_, &va_, &e_), TD_EINVAL, "is empty");

  /* 20 tokens at block 4: 18 training tokens hold windows, 2 validation
   * tokens do not. */
  char twenty[20];
  memset(twenty, 'q', sizeof twenty);
  write_file(at("twenty.txt"), twenty, sizeof twenty);
  EXPECT_FAIL(td_text_load(at("twenty.txt"), &o, &tr_, &va_, &e_), TD_EINVAL,
              "dataset.text: the validation part holds 2 tokens, fewer than block_size + 1 = 5",
              "larger dataset.text.val_fraction", "model.input_shape");
  /* At block 18 the training part (18 tokens) is too short. */
  o = opts(0, 0.1, 0, 18);
  EXPECT_FAIL(td_text_load(at("twenty.txt"), &o, &tr_, &va_, &e_), TD_EINVAL,
              "dataset.text: the training part holds 18 tokens, fewer than block_size + 1 = 19",
              "a longer file", "a smaller model.input_shape",
              "a smaller dataset.text.val_fraction");
  EXPECT_FAIL(td_text_shape(at("twenty.txt"), &o, &tr_, &va_, &e_), TD_EINVAL,
              "the training part holds 18 tokens");
  /* Exactly block + 1 tokens in each part is one window each. */
  o = opts(1, 0.5, 1, 9);
  td_dataset tr, va;
  td_error err = {0};
  int rc = td_text_load(at("twenty.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0 && tr.n == 1 && va.n == 1, "block + 1 tokens: %d %s", rc, err.msg);
  td_dataset_free(&tr);
  td_dataset_free(&va);

  /* Invalid UTF-8, each with the byte offset it is at. */
  struct {
    const char *bytes;
    const char *want;
  } bad[] = {
      {"abcd\x80xyz", "byte offset 4 (byte 0x80 is a continuation byte"},
      {"ab\xc3(xyz", "byte offset 2 (byte 0xc3 starts a 2-byte character, but byte offset 3"},
      {"abc\xc0\x80xyz", "byte offset 3 (byte 0xc0 starts an overlong"},
      {"a\xe0\x80\x80xyzw", "byte offset 1 (byte 0xe0 starts an overlong"},
      {"ab\xed\xa0\x80xyz", "byte offset 2 (byte 0xed starts a surrogate"},
      {"\xf4\x90\x80\x80xyzw", "byte offset 0 (byte 0xf4 starts a code point above U+10FFFF"},
      {"abcdef\xff", "byte offset 6 (byte 0xff never occurs in UTF-8"},
      {"abcdefgh\xe2\x82", "byte offset 8 (byte 0xe2 starts a 3-byte character, but the file "
                           "ends after 2 of its bytes"},
  };
  o = opts(0, 0.1, 0, 1);
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    write_file(at("bad.txt"), bad[i].bytes, strlen(bad[i].bytes));
    EXPECT_FAIL(td_text_load(at("bad.txt"), &o, &tr_, &va_, &e_), TD_EDATA, "invalid UTF-8",
                bad[i].want, "set dataset.text.tokens to byte");
    EXPECT_FAIL(td_text_shape(at("bad.txt"), &o, &tr_, &va_, &e_), TD_EDATA, bad[i].want);
  }
  /* As bytes, the same file loads: 8 + 2 bytes. */
  o = opts(1, 0.2, 0, 1);
  rc = td_text_load(at("bad.txt"), &o, &tr, &va, &err);
  CHECK(rc == 0 && va.x && va.x[0] == (float)0xe2 && va.x[1] == (float)0x82,
        "the bad file as bytes: %s", err.msg);
  td_dataset_free(&tr);
  td_dataset_free(&va);

  /* A UTF-8 character cut by the 1 MiB read buffer is still one token. */
  {
    const size_t n = ((size_t)1 << 20) + 4;
    unsigned char *big = malloc(n);
    CHECK(big != NULL, "malloc");
    if (big) {
      memset(big, 'x', n);
      big[((size_t)1 << 20) - 1] = 0xe2, big[1 << 20] = 0x82, big[(1 << 20) + 1] = 0xac;
      write_file(at("big.txt"), big, n);
      free(big);
      o = opts(0, 0.5, 0, 1);
      rc = td_text_load(at("big.txt"), &o, &tr, &va, &err);
      const size_t ntok = n - 2, ntr = ntok / 2;
      CHECK(rc == 0 && tr.vocab_size == 2 && tr.n_values + va.n_values == ntok &&
                tr.n_values == ntr,
            "a character across reads: %d %s, %zu + %zu tokens", rc, err.msg, tr.n_values,
            va.n_values);
      if (rc == 0)
        CHECK(tr.vocab[0] == 'x' && tr.vocab[1] == 0x20ac &&
                  va.x[((size_t)1 << 20) - 1 - ntr] == 1.0f,
              "the euro sign's id");
      td_dataset_free(&tr);
      td_dataset_free(&va);
    }
  }

  /* Options. */
  o = opts(0, 0, 0, 4);
  EXPECT_FAIL(td_text_load(at("twenty.txt"), &o, &tr_, &va_, &e_), TD_EINVAL,
              "dataset.text.val_fraction: must be in (0, 1), got 0");
  o = opts(0, 1, 0, 4);
  EXPECT_FAIL(td_text_load(at("twenty.txt"), &o, &tr_, &va_, &e_), TD_EINVAL,
              "dataset.text.val_fraction: must be in (0, 1), got 1");
  o = opts(0, 0.1, 0, 0);
  EXPECT_FAIL(td_text_load(at("twenty.txt"), &o, &tr_, &va_, &e_), TD_EINVAL, "model.input_shape");

  /* Files: missing, not regular, over 1 GiB (sparse: nothing is written). */
  o = opts(0, 0.1, 0, 4);
  EXPECT_FAIL(td_text_load(at("missing.txt"), &o, &tr_, &va_, &e_), TD_ENOTFOUND, "missing.txt");
  CHECK(mkfifo(at("fifo.txt"), 0600) == 0, "mkfifo");
  EXPECT_FAIL(td_text_load(at("fifo.txt"), &o, &tr_, &va_, &e_), TD_EINVAL, "FIFO");
  int fd = open(at("huge.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  CHECK(fd >= 0 && ftruncate(fd, ((off_t)1 << 30) + 1) == 0, "making a sparse file");
  if (fd >= 0)
    close(fd);
  EXPECT_FAIL(td_text_load(at("huge.txt"), &o, &tr_, &va_, &e_), TD_EINVAL,
              "1073741825 bytes, more than the 1 GiB");
  unlink(at("huge.txt"));
}

static void test_opts_parse(void) {
  td_text_opts o;
  td_error err = {0};
  CHECK(td_text_opts_parse("dataset.text", NULL, NULL, NULL, 64, &o, &err) == 0 && !o.bytes &&
            !o.tiles && o.val_fraction == 0.1 && o.block == 64 && o.train_limit == 0,
        "defaults: %s", err.msg);
  const double vf = 0.25;
  CHECK(td_text_opts_parse("dataset.text", "byte", "tiles", &vf, 8, &o, &err) == 0 && o.bytes &&
            o.tiles && o.val_fraction == 0.25,
        "byte, tiles: %s", err.msg);
  CHECK(td_text_opts_parse("dataset.text", "char", "random", NULL, 8, &o, &err) == 0 && !o.bytes &&
            !o.tiles,
        "char, random: %s", err.msg);
  struct {
    const char *tokens, *sampling;
    double vf;
    uint32_t block;
    const char *want;
  } bad[] = {
      {"word", NULL, 0.1, 8, "dataset.text.tokens: 'word' is not a kind of token; use char"},
      {NULL, "shuffle", 0.1, 8, "dataset.text.sampling: 'shuffle' is not a sampling; use random"},
      {NULL, NULL, -0.5, 8, "dataset.text.val_fraction: must be in (0, 1), got -0.5"},
      {NULL, NULL, 1.5, 8, "dataset.text.val_fraction: must be in (0, 1), got 1.5"},
      {NULL, NULL, 0.1, 0, "model.input_shape"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    td_error e = {0};
    int rc = td_text_opts_parse("dataset.text", bad[i].tokens, bad[i].sampling, &bad[i].vf,
                                bad[i].block, &o, &e);
    CHECK(rc == TD_EINVAL, "bad option %zu: %d", i, rc);
    CHECK_STR_CONTAINS(e.msg, bad[i].want);
  }
}

/* ---- HDF5 token ids ------------------------------------------------------------- */

static void h5_put(const char *path, int create, const char *name, hid_t ftype, hid_t mtype,
                   int rank, const hsize_t *dims, const void *data) {
  hid_t f = create ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)
                   : H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t s = H5Screate_simple(rank, dims, NULL);
  hid_t d = H5Dcreate2(f, name, ftype, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(f >= 0 && d >= 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
        "writing %s:%s", path, name);
  H5Dclose(d);
  H5Sclose(s);
  H5Fclose(f);
}

static void test_h5tokens(void) {
  /* 1-D int32 train (40 ids, i * 7 mod 50) and val (12 ids, 60 + i). */
  int32_t trn[40], vl[12];
  uint32_t ref_t[40], ref_v[12];
  for (int i = 0; i < 40; i++)
    ref_t[i] = (uint32_t)(trn[i] = i * 7 % 50);
  for (int i = 0; i < 12; i++)
    ref_v[i] = (uint32_t)(vl[i] = 60 + i);
  const hsize_t d40 = 40, d12 = 12;
  h5_put(at("ids.h5"), 1, "train", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &d40, trn);
  h5_put(at("ids.h5"), 0, "val", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &d12, vl);

  td_dataset tr, va;
  td_error err = {0};
  td_text_opts o = opts(0, 0.1, 0, 4);
  int rc = td_h5tokens_load(at("ids.h5"), NULL, NULL, 0, &o, &tr, &va, &err);
  CHECK(rc == 0, "hdf5 ids: %s", err.msg);
  if (rc == 0) {
    check_part(&tr, ref_t, 0, 40, "hdf5 train");
    check_part(&va, ref_v, 0, 12, "hdf5 val");
    CHECK(tr.n == 36 && va.n == 2 && tr.stride == 1 && va.stride == 4 && tr.label_dim == 4,
          "hdf5 layout n %u / %u", tr.n, va.n);
    /* vocab_size 0: the largest id of both datasets + 1. */
    CHECK(tr.vocab_size == 72 && va.vocab_size == 72 && !tr.vocab, "vocab_size %u", tr.vocab_size);
    CHECK(tr.max_label == 49 && va.max_label == 68, "max_label %d / %d (val's windows read 61..68)",
          tr.max_label, va.max_label);
    const uint32_t i = 35;
    float x[4];
    int32_t y[4];
    td_dataset_gather(&tr, &i, 1, x, y);
    CHECK(x[0] == (float)ref_t[35] && x[3] == (float)ref_t[38] && y[3] == (int32_t)ref_t[39],
          "the last training window");
  }
  td_dataset_free(&tr);
  td_dataset_free(&va);
  td_dataset st, sv;
  rc = td_h5tokens_shape(at("ids.h5"), "train", "val", 0, &o, &st, &sv, &err);
  CHECK(rc == 0 && st.n == 36 && st.n_values == 40 && sv.n == 2 && sv.n_values == 12 &&
            st.vocab_size == TD_TEXT_MAX_VOCAB && !st.x,
        "hdf5 shape: %d %s, vocab_size %u", rc, err.msg, st.vocab_size);
  rc = td_h5tokens_shape(at("ids.h5"), "train", "val", 100, &o, &st, &sv, &err);
  CHECK(rc == 0 && st.vocab_size == 100, "hdf5 shape with vocab_size: %u", st.vocab_size);

  /* A given vocab_size, and an id at or above it. */
  rc = td_h5tokens_load(at("ids.h5"), "train", "val", 100, &o, &tr, &va, &err);
  CHECK(rc == 0 && tr.vocab_size == 100 && va.vocab_size == 100, "vocab_size 100: %d %s", rc,
        err.msg);
  td_dataset_free(&tr);
  td_dataset_free(&va);
  EXPECT_FAIL(td_h5tokens_load(at("ids.h5"), "train", "val", 64, &o, &tr_, &va_, &e_), TD_EINVAL,
              "dataset.hdf5_tokens.vocab_size: token id 64 at position 4 of dataset 'val' in ",
              "ids.h5 is out of range for vocab_size 64");
  /* In a file without "val": half the ids held out. */
  o = opts(0, 0.5, 0, 4);
  trn[17] = 300;
  h5_put(at("oor.h5"), 1, "train", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &d40, trn);
  char want[700];
  snprintf(want, sizeof want,
           "token id 300 at position 17 of dataset 'train' in %s is out of range for vocab_size "
           "256",
           at("oor.h5"));
  EXPECT_FAIL(td_h5tokens_load(at("oor.h5"), NULL, NULL, 256, &o, &tr_, &va_, &e_), TD_EINVAL,
              want);
  trn[17] = -3;
  h5_put(at("neg.h5"), 1, "train", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &d40, trn);
  EXPECT_FAIL(td_h5tokens_load(at("neg.h5"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_EDATA,
              "token id -3 at position 17 of dataset 'train'", "is negative");
  trn[17] = 1 << 24;
  h5_put(at("wide.h5"), 1, "train", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &d40, trn);
  EXPECT_FAIL(td_h5tokens_load(at("wide.h5"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_EDATA,
              "token id 16777216 at position 17", "below 2^24");
  trn[17] = 17 * 7 % 50;
  /* uint64 ids beyond int64, reported as they are. */
  uint64_t u64[6] = {1, 2, 3, 4, 5, UINT64_MAX};
  const hsize_t d6 = 6;
  h5_put(at("u64.h5"), 1, "train", H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, &d6, u64);
  o = opts(0, 0.5, 0, 1);
  EXPECT_FAIL(td_h5tokens_load(at("u64.h5"), NULL, NULL, 1000, &o, &tr_, &va_, &e_), TD_EINVAL,
              "token id 18446744073709551615 at position 5");
  EXPECT_FAIL(
      td_h5tokens_load(at("ids.h5"), NULL, NULL, TD_TEXT_MAX_VOCAB + 1, &o, &tr_, &va_, &e_),
      TD_EINVAL, "dataset.hdf5_tokens.vocab_size: 16777217 is more than 2^24");
  EXPECT_FAIL(
      td_h5tokens_shape(at("ids.h5"), NULL, NULL, TD_TEXT_MAX_VOCAB + 1, &o, &tr_, &va_, &e_),
      TD_EINVAL, "16777217 is more than 2^24");

  /* 2-D uint16 ids (3 rows of 10), read row after row; no "val": the last
   * val_fraction is held out. */
  uint16_t ids2[3][10];
  uint32_t ref2[30];
  for (int r = 0; r < 3; r++)
    for (int c = 0; c < 10; c++)
      ref2[r * 10 + c] = ids2[r][c] = (uint16_t)(1000 + 37 * r + c * c);
  const hsize_t d3x10[2] = {3, 10};
  h5_put(at("ids2.h5"), 1, "tokens", H5T_STD_U16LE, H5T_NATIVE_UINT16, 2, d3x10, ids2);
  o = opts(0, 0.2, 1, 5);
  rc = td_h5tokens_load(at("ids2.h5"), "tokens", "", 2000, &o, &tr, &va, &err);
  CHECK(rc == 0, "2-D ids split: %s", err.msg);
  if (rc == 0) {
    /* floor(0.8 * 30) = 24 training ids, 6 held out. */
    check_part(&tr, ref2, 0, 24, "2-D train");
    check_part(&va, ref2, 24, 6, "2-D val");
    CHECK(tr.n == 4 && tr.stride == 5 && va.n == 1 && tr.vocab_size == 2000,
          "2-D layout n %u stride %u / %u", tr.n, tr.stride, va.n);
    const uint32_t i = 2;
    float x[5];
    int32_t y[5];
    td_dataset_gather(&tr, &i, 1, x, y);
    CHECK(x[0] == (float)ref2[10] && x[4] == (float)ref2[14] && y[4] == (int32_t)ref2[15],
          "2-D tile 2 (the second row)");
  }
  td_dataset_free(&tr);
  td_dataset_free(&va);
  rc = td_h5tokens_shape(at("ids2.h5"), "tokens", NULL, 2000, &o, &st, &sv, &err);
  CHECK(rc == 0 && st.n == 4 && st.n_values == 24 && sv.n_values == 6, "2-D shape: %d %s", rc,
        err.msg);
  ids2[2][3] = 2500;
  h5_put(at("ids2bad.h5"), 1, "tokens", H5T_STD_U16LE, H5T_NATIVE_UINT16, 2, d3x10, ids2);
  EXPECT_FAIL(td_h5tokens_load(at("ids2bad.h5"), "tokens", NULL, 2000, &o, &tr_, &va_, &e_),
              TD_EINVAL, "token id 2500 at position 23 of dataset 'tokens'", "(row 2, column 3)");

  /* The split too short for a window, the file's datasets named. */
  o = opts(0, 0.1, 0, 5);
  EXPECT_FAIL(td_h5tokens_load(at("ids2.h5"), "tokens", NULL, 0, &o, &tr_, &va_, &e_), TD_EINVAL,
              "dataset.hdf5_tokens: the validation part of 'tokens'",
              "holds 3 tokens, fewer than block_size + 1 = 6", "(the file has no 'val')");
  o = opts(0, 0.1, 0, 12);
  EXPECT_FAIL(td_h5tokens_load(at("ids.h5"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_EINVAL,
              "the validation ids 'val'", "holds 12 tokens, fewer than block_size + 1 = 13");

  /* Missing datasets, wrong types and shapes. */
  o = opts(0, 0.1, 0, 2);
  EXPECT_FAIL(td_h5tokens_load(at("ids2.h5"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_ENOTFOUND,
              "dataset.hdf5_tokens.train: ", "has no dataset 'train'", "the file holds: tokens");
  EXPECT_FAIL(td_h5tokens_load(at("ids.h5"), "train", "heldout", 0, &o, &tr_, &va_, &e_),
              TD_ENOTFOUND, "dataset.hdf5_tokens.val: ", "has no dataset 'heldout'", "train, val",
              "or leave val unset");
  float f40[40] = {0};
  h5_put(at("float.h5"), 1, "train", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &d40, f40);
  EXPECT_FAIL(td_h5tokens_load(at("float.h5"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_EDATA,
              "'train' have type float32; expected an integer type");
  EXPECT_FAIL(td_h5tokens_shape(at("float.h5"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_EDATA,
              "expected an integer type");
  int32_t cube[2][2][10] = {{{0}}};
  const hsize_t d3[3] = {2, 2, 10};
  h5_put(at("cube.h5"), 1, "train", H5T_STD_I32LE, H5T_NATIVE_INT32, 3, d3, cube);
  EXPECT_FAIL(td_h5tokens_load(at("cube.h5"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_EDATA,
              "have 3 dimensions; expected 1");
  EXPECT_FAIL(td_h5tokens_load(at("chars.txt"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_EDATA,
              "chars.txt");
  o = opts(0, 0, 0, 2);
  EXPECT_FAIL(td_h5tokens_load(at("ids.h5"), NULL, NULL, 0, &o, &tr_, &va_, &e_), TD_EINVAL,
              "dataset.hdf5_tokens.val_fraction: must be in (0, 1)");
}

/* ---- real Shakespeare -------------------------------------------------------------- */

static void test_shakespeare(void) {
  const char *root = td_test_data_root();
  char path[4096];
  td_error err = {0};
  const char *roots[1] = {root};
  if (!root ||
      td_data_resolve(roots, 1, "shakespeare/shakespeare.txt", 0, path, sizeof path, &err) != 0) {
    if (td_test_in_ci())
      CHECK(0, "CI=true but shakespeare/shakespeare.txt is not under TRAIND_DATA_DIR (%s): %s",
            root ? root : "unset", err.msg);
    else
      printf("SKIP: real Shakespeare (set TRAIND_DATA_DIR to a directory with "
             "shakespeare/shakespeare.txt)\n");
    return;
  }
  /* The file itself, and its set of bytes (it is ASCII), read here. */
  FILE *fp = fopen(path, "rb");
  CHECK(fp != NULL, "opening %s", path);
  if (!fp)
    return;
  const size_t N = 5057198;
  unsigned char *raw = malloc(N + 1);
  const size_t got = raw ? fread(raw, 1, N + 1, fp) : 0;
  fclose(fp);
  CHECK(got == N, "%s has %zu bytes, want %zu", path, got, N);
  if (got != N) {
    free(raw);
    return;
  }
  int seen[256] = {0}, ascii = 1;
  uint32_t distinct = 0;
  for (size_t i = 0; i < N; i++) {
    ascii &= raw[i] < 0x80;
    distinct += !seen[raw[i]];
    seen[raw[i]] = 1;
  }
  CHECK(ascii && distinct == 84, "the file: ascii %d, %u distinct bytes", ascii, distinct);

  td_dataset tr, va;
  td_text_opts o = opts(0, 0.1, 0, 64);
  int rc = td_text_load(path, &o, &tr, &va, &err);
  CHECK(rc == 0, "loading %s: %s", path, err.msg);
  if (rc) {
    free(raw);
    return;
  }
  /* nanoGPT's split: int(0.9 * n) = 4551478. */
  CHECK(tr.vocab_size == 84 && tr.n_vocab == 84 && tr.vocab[0] == '\n' && tr.vocab[83] == '}',
        "vocabulary of %u, first %u, last %u", tr.vocab_size, tr.vocab ? tr.vocab[0] : 0,
        tr.vocab ? tr.vocab[83] : 0);
  CHECK(tr.n_values == 4551478 && va.n_values == N - 4551478 && tr.n == 4551478 - 64 &&
            va.n == (uint32_t)((N - 4551478 - 1) / 64),
        "split %zu + %zu, windows %u + %u", tr.n_values, va.n_values, tr.n, va.n);
  int sorted = 1;
  for (uint32_t v = 1; v < tr.n_vocab; v++)
    sorted &= tr.vocab[v - 1] < tr.vocab[v];
  CHECK(sorted, "the vocabulary is not sorted");
  /* The first ids decode to the file's first characters ("ALL'S WELL THAT
   * ENDS WELL"), and so does every other one. */
  char first[27] = {0};
  for (int k = 0; k < 26; k++)
    first[k] = (char)tr.vocab[(uint32_t)tr.x[k]];
  CHECK(strcmp(first, "ALL'S WELL THAT ENDS WELL\n") == 0, "the first characters: '%s'", first);
  size_t bad = 0;
  for (size_t k = 0; k < N; k++) {
    const float id = k < tr.n_values ? tr.x[k] : va.x[k - tr.n_values];
    if (id < 0 || id >= 84 || tr.vocab[(uint32_t)id] != raw[k])
      bad++;
  }
  CHECK(bad == 0, "%zu tokens do not decode to the file's characters", bad);
  /* The labels of the last training window. */
  const uint32_t last = tr.n - 1;
  float x[64];
  int32_t y[64];
  td_dataset_gather(&tr, &last, 1, x, y);
  CHECK(tr.vocab[y[63]] == raw[4551478 - 1] && tr.vocab[(uint32_t)x[0]] == raw[last],
        "the last training window");

  td_dataset st, sv;
  rc = td_text_shape(path, &o, &st, &sv, &err);
  CHECK(rc == 0 && st.n == tr.n && st.n_values == tr.n_values && sv.n == va.n &&
            st.vocab_size == 84,
        "shape agrees with the load: %d %s", rc, err.msg);
  td_dataset_free(&tr);
  td_dataset_free(&va);
  free(raw);
}

int main(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmp, sizeof tmp, "%s/td_text_XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmp)) {
    perror("mkdtemp");
    return 1;
  }
  test_chars();
  test_bytes();
  test_examples_gather();
  test_text_errors();
  test_opts_parse();
  test_h5tokens();
  test_shakespeare();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmp);
  return td_check_exit();
}
