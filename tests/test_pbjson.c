/* Checks of the proto3 JSON converter (proto/pbjson.c) over the shapes in
 * tests/proto/pbjson_test.proto and the real traind.v1.JobSpec: parsing of
 * every type and its errors, the limits on hostile input, exact emitted text,
 * round trips compared as packed bytes, and validation tables. Timestamps are
 * checked against the C library's own calendar (timegm, gmtime_r). */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "pbjson.h"
#include "pbjson_test.pb-c.h"
#include "traind/v1/job.pb-c.h"

#define EVERYTHING (&pbjson__test__everything__descriptor)
#define SCALARS (&pbjson__test__scalars__descriptor)
#define JOBSPEC (&traind__v1__job_spec__descriptor)

typedef Pbjson__Test__Everything Everything;
typedef Pbjson__Test__Scalars Scalars;

/* ------------------------------------------------------------- helpers */

/* Parses text that must be accepted; NULL (and a failed check) otherwise. */
static ProtobufCMessage *parse_ok_at(int line, const ProtobufCMessageDescriptor *d,
                                     const char *text) {
  td_error err = {0};
  ProtobufCMessage *m = NULL;
  int rc = pbjson_parse(d, text, strlen(text), &m, &err);
  CHECK(rc == 0 && m != NULL, "line %d: parse failed (%d): %s\n--- input:\n%s", line, rc, err.msg,
        text);
  return rc == 0 ? m : NULL;
}
#define PARSE_OK(d, text) parse_ok_at(__LINE__, (d), (text))

/* Parses text that must be refused with TD_EINVAL and a message containing
 * `want`. */
static void parse_fails_at(int line, const ProtobufCMessageDescriptor *d, const char *text,
                           size_t len, const char *want) {
  td_error err = {0};
  ProtobufCMessage *m = (ProtobufCMessage *)1;
  int rc = pbjson_parse(d, text, len, &m, &err);
  CHECK(rc == TD_EINVAL, "line %d: parse returned %d, want TD_EINVAL; input:\n%s", line, rc, text);
  CHECK(m == NULL, "line %d: *out not cleared on failure", line);
  CHECK(strstr(err.msg, want) != NULL, "line %d: error \"%s\" does not contain \"%s\"", line,
        err.msg, want);
  if (rc == 0 && m)
    protobuf_c_message_free_unpacked(m, NULL);
}
#define PARSE_FAILS(d, text, want) parse_fails_at(__LINE__, (d), (text), strlen(text), (want))

/* The binary encoding of m (malloc'd). */
typedef struct {
  uint8_t *p;
  size_t n;
} packed;

static packed pack(const ProtobufCMessage *m) {
  packed b = {0};
  if (!m)
    return b;
  b.n = protobuf_c_message_get_packed_size(m);
  b.p = malloc(b.n + 1);
  if (b.p)
    protobuf_c_message_pack(m, b.p);
  return b;
}

static bool packed_eq(packed a, packed b) {
  return a.p && b.p && a.n == b.n && memcmp(a.p, b.p, a.n) == 0;
}

/* Whether the string emitted for m with `flags` is exactly `want`. */
static void emits_at(int line, const ProtobufCMessage *m, unsigned flags, const char *want) {
  char *got = pbjson_emit(m, flags);
  CHECK(got && strcmp(got, want) == 0, "line %d: emitted\n%s\nwant\n%s", line, got ? got : "(null)",
        want);
  free(got);
}
#define EMITS(m, flags, want) emits_at(__LINE__, (const ProtobufCMessage *)(m), (flags), (want))

/* Emits m with every flag combination, parses each text back and checks
 * that the packed bytes are unchanged. */
static void round_trips_at(int line, const ProtobufCMessage *m) {
  packed want = pack(m);
  for (unsigned flags = 0; flags < 8; flags++) {
    char *text = pbjson_emit(m, flags);
    CHECK(text != NULL, "line %d: emit failed with flags %u", line, flags);
    if (!text)
      continue;
    td_error err = {0};
    ProtobufCMessage *back = NULL;
    int rc = pbjson_parse(m->descriptor, text, strlen(text), &back, &err);
    CHECK(rc == 0, "line %d: emitted text (flags %u) does not parse: %s\n%s", line, flags, err.msg,
          text);
    packed got = pack(back);
    CHECK(rc != 0 || packed_eq(want, got),
          "line %d: round trip with flags %u changed the message:\n%s", line, flags, text);
    free(got.p);
    if (back)
      protobuf_c_message_free_unpacked(back, NULL);
    free(text);
  }
  free(want.p);
}
#define ROUND_TRIPS(m) round_trips_at(__LINE__, (const ProtobufCMessage *)(m))

static void msg_free(void *m) {
  if (m)
    protobuf_c_message_free_unpacked(m, NULL);
}

/* A small deterministic generator for the randomised round trips. */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* -------------------------------------------------------------- scalars */

static void test_scalars(void) {
  Scalars *s = (Scalars *)PARSE_OK(SCALARS, "i32: -2147483648\n"
                                            "s32: 2147483647\n"
                                            "sf32: '-7'\n"
                                            "u32: 4294967295\n"
                                            "f32: \"12\"\n"
                                            "i64: '-9223372036854775808'\n"
                                            "s64: 9223372036854775807\n"
                                            "sf64: -1e3\n"
                                            "u64: \"18446744073709551615\"\n"
                                            "f64: 1.5e1\n"
                                            "flt: 0.1\n"
                                            "dbl: -2.5e-3\n"
                                            "flag: true\n"
                                            "str: hello world\n"
                                            "raw: aGk=\n"
                                            "color: GREEN\n");
  if (s) {
    CHECK(s->i32 == INT32_MIN, "i32 %d", s->i32);
    CHECK(s->s32 == INT32_MAX, "s32 %d", s->s32);
    CHECK(s->sf32 == -7, "sf32 %d", s->sf32);
    CHECK(s->u32 == UINT32_MAX, "u32 %u", s->u32);
    CHECK(s->f32 == 12, "f32 %u", s->f32);
    CHECK(s->i64 == INT64_MIN, "i64 %lld", (long long)s->i64);
    CHECK(s->s64 == INT64_MAX, "s64 %lld", (long long)s->s64);
    CHECK(s->sf64 == -1000, "sf64 %lld", (long long)s->sf64);
    CHECK(s->u64 == UINT64_MAX, "u64 %llu", (unsigned long long)s->u64);
    CHECK(s->f64 == 15, "f64 %llu", (unsigned long long)s->f64);
    CHECK(s->flt == 0.1f, "flt %.9g", s->flt);
    CHECK(s->dbl == -2.5e-3, "dbl %.17g", s->dbl);
    CHECK(s->flag == 1, "flag %d", s->flag);
    CHECK(strcmp(s->str, "hello world") == 0, "str %s", s->str);
    CHECK(s->raw.len == 2 && memcmp(s->raw.data, "hi", 2) == 0, "raw len %zu", s->raw.len);
    CHECK(s->color == PBJSON__TEST__COLOR__GREEN, "color %d", s->color);
  }
  msg_free(s);

  /* Integral values in other spellings. */
  s = (Scalars *)PARSE_OK(SCALARS,
                          "{i32: 1.0, u32: 2.50e2, i64: -0, u64: 1E2, sf32: 00012, s32: +5}");
  if (s) {
    CHECK(s->i32 == 1 && s->u32 == 250 && s->i64 == 0 && s->u64 == 100 && s->sf32 == 12 &&
              s->s32 == 5,
          "%d %u %lld %llu %d %d", s->i32, s->u32, (long long)s->i64, (unsigned long long)s->u64,
          s->sf32, s->s32);
  }
  msg_free(s);
}

static void test_integer_errors(void) {
  PARSE_FAILS(SCALARS, "i32: 2147483648",
              "line 1: i32: \"2147483648\" is out of range for int32 [-2147483648, 2147483647]");
  PARSE_FAILS(SCALARS, "i32: -2147483649", "out of range for int32");
  PARSE_FAILS(SCALARS, "s32: 1e10", "out of range for sint32");
  PARSE_FAILS(SCALARS, "u32: -1", "u32: \"-1\" is out of range for uint32 [0, 4294967295]");
  PARSE_FAILS(SCALARS, "u32: 4294967296", "out of range for uint32");
  PARSE_FAILS(SCALARS, "f32: -3", "out of range for fixed32");
  PARSE_FAILS(SCALARS, "i64: 9223372036854775808",
              "out of range for int64 [-9223372036854775808, 9223372036854775807]");
  PARSE_FAILS(SCALARS, "sf64: '-9223372036854775809'", "out of range for sfixed64");
  PARSE_FAILS(SCALARS, "u64: 18446744073709551616",
              "out of range for uint64 [0, 18446744073709551615]");
  PARSE_FAILS(SCALARS, "f64: -1", "out of range for fixed64");
  PARSE_FAILS(SCALARS, "u64: 1e20", "out of range for uint64");
  PARSE_FAILS(SCALARS, "u64: 1e1000000000", "out of range for uint64");
  PARSE_FAILS(SCALARS, "i32: 1.5",
              "i32: expected an integer (int32), got \"1.5\", which has a fractional part");
  PARSE_FAILS(SCALARS, "i64: '2.25e1'", "fractional part");
  PARSE_FAILS(SCALARS, "i32: 1e-1", "fractional part");
  PARSE_FAILS(SCALARS, "i32: 1e-1000000000", "fractional part");
  PARSE_FAILS(SCALARS, "i32: abc", "expected an integer (int32), got \"abc\"");
  PARSE_FAILS(SCALARS, "i32: 0x10", "expected an integer (int32), got \"0x10\"");
  PARSE_FAILS(SCALARS, "i32: 1_000", "expected an integer");
  PARSE_FAILS(SCALARS, "i32: true", "expected an integer");
  PARSE_FAILS(SCALARS, "i32: ''", "expected an integer");
  PARSE_FAILS(SCALARS, "i32: [1]", "expected an integer (int32), got a list");
  PARSE_FAILS(SCALARS, "u32: {a: 1}", "expected an integer (uint32), got a mapping");
  PARSE_FAILS(SCALARS, "i32: 1e", "expected an integer");
}

static void test_floating(void) {
  Scalars *s = (Scalars *)PARSE_OK(SCALARS, "{flt: \"NaN\", dbl: -Infinity}");
  if (s)
    CHECK(isnan(s->flt) && isinf(s->dbl) && s->dbl < 0, "flt %g dbl %g", s->flt, s->dbl);
  msg_free(s);
  s = (Scalars *)PARSE_OK(SCALARS, "{flt: '3.4028235e38', dbl: '.5'}");
  if (s)
    CHECK(s->flt == 3.40282347e38f && s->dbl == 0.5, "flt %.9g dbl %g", s->flt, s->dbl);
  msg_free(s);
  s = (Scalars *)PARSE_OK(SCALARS, "{flt: 1e-50, dbl: 1.7976931348623157e308}");
  if (s)
    CHECK(s->flt == 0 && s->dbl == 1.7976931348623157e308, "flt %g dbl %g", s->flt, s->dbl);
  msg_free(s);
  PARSE_FAILS(SCALARS, "flt: 3.5e38", "flt: \"3.5e38\" is out of range for float");
  PARSE_FAILS(SCALARS, "dbl: 1e309", "out of range for double");
  PARSE_FAILS(SCALARS, "dbl: abc", "dbl: expected a number, got \"abc\"");
  PARSE_FAILS(SCALARS, "dbl: inf", "expected a number, got \"inf\"");
  PARSE_FAILS(SCALARS, "dbl: .nan", "expected a number");
  PARSE_FAILS(SCALARS, "dbl: nan", "expected a number");
  PARSE_FAILS(SCALARS, "dbl: 1,5", "expected a number");
  PARSE_FAILS(SCALARS, "dbl: [1]", "expected a number, got a list");
}

static void test_bool_string_bytes(void) {
  Scalars *s = (Scalars *)PARSE_OK(SCALARS, "{flag: false, str: 123, raw: '-_8'}");
  if (s) {
    CHECK(s->flag == 0, "flag %d", s->flag);
    CHECK(strcmp(s->str, "123") == 0, "str %s", s->str);
    CHECK(s->raw.len == 2 && s->raw.data[0] == 0xFB && s->raw.data[1] == 0xFF, "raw %zu",
          s->raw.len);
  }
  msg_free(s);
  s = (Scalars *)PARSE_OK(SCALARS, "str: \"caf\\u00e9 \\t\\\"q\\\"\"\nraw: +/8=\n");
  if (s) {
    CHECK(strcmp(s->str, "caf\xc3\xa9 \t\"q\"") == 0, "str %s", s->str);
    CHECK(s->raw.len == 2 && s->raw.data[0] == 0xFB && s->raw.data[1] == 0xFF, "raw %zu",
          s->raw.len);
  }
  msg_free(s);
  s = (Scalars *)PARSE_OK(SCALARS, "raw: AAECAwQFBgcICQ\nstr: ''\n");
  if (s) {
    CHECK(s->raw.len == 10, "raw len %zu", s->raw.len);
    for (size_t i = 0; s->raw.data && i < s->raw.len; i++)
      CHECK(s->raw.data[i] == i, "raw[%zu] = %u", i, s->raw.data[i]);
    CHECK(s->str[0] == '\0', "str %s", s->str);
  }
  msg_free(s);
  for (const char *const *w =
           (const char *const[]){"yes", "no", "on", "off", "True", "FALSE", "1", "y", NULL};
       *w; w++) {
    char doc[64];
    snprintf(doc, sizeof doc, "flag: %s", *w);
    PARSE_FAILS(SCALARS, doc, "flag: expected true or false");
  }
  PARSE_FAILS(SCALARS, "flag: 'true'", "expected true or false, got the quoted string \"true\"");
  PARSE_FAILS(SCALARS, "str: {a: b}", "str: expected a string, got a mapping");
  PARSE_FAILS(SCALARS, "str: [a]", "expected a string, got a list");
  PARSE_FAILS(SCALARS, "str: \"a\\0b\"", "NUL");
  PARSE_FAILS(SCALARS, "raw: 'a'", "raw: expected base64 text");
  PARSE_FAILS(SCALARS, "raw: 'ab!c'", "expected base64 text");
  PARSE_FAILS(SCALARS, "raw: 'ab=c'", "expected base64 text");
  PARSE_FAILS(SCALARS, "raw: 'abc=='", "expected base64 text");
}

static void test_enums(void) {
  Everything *e = (Everything *)PARSE_OK(
      EVERYTHING, "scalars: {color: INFRARED}\n"
                  "repeats: {color: [RED, 2, -1, 7, '1', COLOR_UNSPECIFIED]}\n");
  if (e && e->scalars && e->repeats) {
    CHECK(e->scalars->color == PBJSON__TEST__COLOR__INFRARED, "color %d", e->scalars->color);
    int want[] = {1, 2, -1, 7, 1, 0};
    CHECK(e->repeats->n_color == 6, "n_color %zu", e->repeats->n_color);
    for (size_t i = 0; i < 6 && i < e->repeats->n_color; i++)
      CHECK((int)e->repeats->color[i] == want[i], "color[%zu] = %d", i, e->repeats->color[i]);
    /* Unknown numbers are kept (open enums) and written as numbers. */
    char *json = pbjson_emit(&e->repeats->base, 0);
    CHECK(json &&
              strcmp(
                  json,
                  "{\"color\":[\"RED\",\"GREEN\",\"INFRARED\",7,\"RED\",\"COLOR_UNSPECIFIED\"]}") ==
                  0,
          "%s", json ? json : "(null)");
    free(json);
  }
  msg_free(e);
  PARSE_FAILS(EVERYTHING, "scalars:\n  color: GREN\n",
              "line 2: scalars.color: unknown pbjson.test.Color value \"GREN\"; did you mean "
              "'GREEN'? valid values: "
              "INFRARED, COLOR_UNSPECIFIED, RED, GREEN");
  PARSE_FAILS(EVERYTHING, "scalars: {color: red}", "did you mean 'RED'?");
  PARSE_FAILS(EVERYTHING, "scalars: {color: PURPLE}",
              "unknown pbjson.test.Color value \"PURPLE\"; valid values:");
  PARSE_FAILS(EVERYTHING, "scalars: {color: 2147483648}", "unknown pbjson.test.Color value");
  PARSE_FAILS(EVERYTHING, "scalars: {color: 1.5}", "unknown pbjson.test.Color value");
  PARSE_FAILS(EVERYTHING, "scalars: {color: [RED]}",
              "expected a pbjson.test.Color name, got a list");
}

/* ----------------------------------------------------------------- keys */

static void test_keys(void) {
  Everything *a = (Everything *)PARSE_OK(
      EVERYTHING, "multiWordFieldName2x: x\ntimeLimit: 2s\nscalar_list: [{u64: 1}]\n");
  Everything *b = (Everything *)PARSE_OK(
      EVERYTHING, "multi_word_field_name_2x: x\ntime_limit: 2s\nscalarList: [{u64: 1}]\n");
  if (a && b) {
    CHECK(strcmp(a->multi_word_field_name_2x, "x") == 0, "%s", a->multi_word_field_name_2x);
    packed pa = pack(&a->base), pb = pack(&b->base);
    CHECK(packed_eq(pa, pb), "camelCase and snake_case keys give different messages");
    CHECK(pa.n > 10, "packed only %zu bytes", pa.n);
    free(pa.p);
    free(pb.p);
  }
  msg_free(a);
  msg_free(b);

  PARSE_FAILS(EVERYTHING, "scalars:\n  i32: 1\n  flagg: true\n",
              "line 3: scalars.flagg: unknown field \"flagg\" in pbjson.test.Scalars; did you mean "
              "'flag'?");
  PARSE_FAILS(EVERYTHING, "creatd_at: '1970-01-01T00:00:00Z'", "did you mean 'created_at'?");
  PARSE_FAILS(EVERYTHING, "createdat: '1970-01-01T00:00:00Z'", "did you mean 'createdAt'?");
  PARSE_FAILS(EVERYTHING, "TimeLimit: 1s", "did you mean 'timeLimit'?");
  PARSE_FAILS(EVERYTHING, "bogus: 1",
              "line 1: bogus: unknown field \"bogus\" in pbjson.test.Everything");
  {
    td_error err = {0};
    ProtobufCMessage *m = NULL;
    pbjson_parse(EVERYTHING, "bogus: 1", 8, &m, &err);
    CHECK(strstr(err.msg, "did you mean") == NULL, "unexpected suggestion: %s", err.msg);
  }
  PARSE_FAILS(EVERYTHING, "scalars:\n  i32: 1\n  i32: 2\n",
              "line 3: scalars.i32: field given twice (first as 'i32' on line 2)");
  PARSE_FAILS(EVERYTHING, "timeLimit: 1s\ntime_limit: 2s\n",
              "line 2: time_limit: field given twice (first as 'timeLimit' on line 1)");
  PARSE_FAILS(EVERYTHING, "{scalars: {}, scalars: ~}", "scalars: field given twice");
  PARSE_FAILS(EVERYTHING, "? [a]\n: 1\n", "keys must be field names, got a list");
  PARSE_FAILS(EVERYTHING, "base: &b {i32: 1}\nscalars:\n  <<: *b\n", "line 1: base: unknown field");
  PARSE_FAILS(EVERYTHING, "scalar_list:\n  - &b {i32: 1}\n  - <<: *b\n    u32: 2\n",
              "line 3: scalar_list[1].<<: YAML merge keys (<<) are not supported");
  PARSE_FAILS(EVERYTHING, "labels: {a: 1}", "line 1: labels: map fields are not supported");
  PARSE_FAILS(EVERYTHING, "labels: [{key: a, value: 1}]",
              "line 1: labels: map fields are not supported");
  msg_free(PARSE_OK(EVERYTHING, "labels: {}\nscalars: {}"));
}

static void test_oneof(void) {
  PARSE_FAILS(EVERYTHING, "choice_int: 1\nchoiceStr: x\n",
              "line 2: 'choice_int' and 'choice_str' are both set; set only one");
  PARSE_FAILS(EVERYTHING, "tree: {}\nchoice_msg: {}\nchoice_wrapped: 0\n",
              "'choice_msg' and 'choice_wrapped' are both set");
  /* A zero value still selects the member, and is written out. */
  Everything *e = (Everything *)PARSE_OK(EVERYTHING, "choiceInt: 0");
  if (e) {
    CHECK(e->choice_case == PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_INT, "case %d", e->choice_case);
    EMITS(e, 0, "{\"choiceInt\":0}");
  }
  msg_free(e);
  /* null leaves a member unset, so it does not conflict. */
  e = (Everything *)PARSE_OK(EVERYTHING, "choice_int: null\nchoice_str: ''\nchoice_msg: ~\n");
  if (e) {
    CHECK(e->choice_case == PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_STR, "case %d", e->choice_case);
    EMITS(e, 0, "{\"choiceStr\":\"\"}");
    packed p = pack(&e->base);
    CHECK(p.n == 2 && p.p[0] == (11 << 3 | 2) && p.p[1] == 0, "packed %zu bytes", p.n);
    free(p.p);
  }
  msg_free(e);
  e = (Everything *)PARSE_OK(EVERYTHING, "choice_msg: {i32: 3}");
  if (e) {
    CHECK(e->choice_case == PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_MSG && e->choice_msg &&
              e->choice_msg->i32 == 3,
          "case %d", e->choice_case);
  }
  msg_free(e);
  e = (Everything *)PARSE_OK(EVERYTHING, "choice_color: 0");
  if (e)
    EMITS(e, 0, "{\"choiceColor\":\"COLOR_UNSPECIFIED\"}");
  msg_free(e);
  /* Errors inside a member free what was built. */
  PARSE_FAILS(EVERYTHING, "choice_msg: {str: x, i32: x}", "choice_msg.i32: expected an integer");
}

static void test_wrappers(void) {
  Everything *e = (Everything *)PARSE_OK(EVERYTHING, "wrappers:\n"
                                                     "  dbl: 0\n"
                                                     "  flt: 0.5\n"
                                                     "  i64: '0'\n"
                                                     "  u64: 18446744073709551615\n"
                                                     "  i32: -3\n"
                                                     "  flag: false\n"
                                                     "  str: ''\n"
                                                     "  raw: ''\n");
  if (e && e->wrappers) {
    Pbjson__Test__Wrappers *w = e->wrappers;
    CHECK(w->dbl && w->dbl->value == 0, "dbl");
    CHECK(w->flt && w->flt->value == 0.5f, "flt");
    CHECK(w->i64 && w->i64->value == 0, "i64");
    CHECK(w->u64 && w->u64->value == UINT64_MAX, "u64");
    CHECK(w->i32 && w->i32->value == -3, "i32");
    CHECK(w->u32 == NULL, "u32 should be absent");
    CHECK(w->flag && w->flag->value == 0, "flag");
    CHECK(w->str && w->str->value[0] == '\0', "str");
    CHECK(w->raw && w->raw->value.len == 0, "raw");
    EMITS(w, 0,
          "{\"dbl\":0,\"flt\":0.5,\"i64\":\"0\",\"u64\":\"18446744073709551615\",\"i32\":-3,"
          "\"flag\":false,"
          "\"str\":\"\",\"raw\":\"\"}");
    /* Present-but-zero wrappers still encode (an empty submessage). */
    packed p = pack(&w->base);
    CHECK(p.n > 0 && p.p[0] == (1 << 3 | 2) && p.p[1] == 0, "dbl wrapper not encoded");
    free(p.p);
  }
  msg_free(e);
  e = (Everything *)PARSE_OK(EVERYTHING, "wrappers: {dbl: null, flag: ~, u32: }");
  if (e && e->wrappers) {
    CHECK(!e->wrappers->dbl && !e->wrappers->flag && !e->wrappers->u32,
          "null wrappers must be absent");
    EMITS(e, 0, "{\"wrappers\":{}}");
    EMITS(e->wrappers, PBJSON_EMIT_DEFAULTS,
          "{\"dbl\":null,\"flt\":null,\"i64\":null,\"u64\":null,\"i32\":null,\"u32\":null,\"flag\":"
          "null,"
          "\"str\":null,\"raw\":null}");
  }
  msg_free(e);
  e = (Everything *)PARSE_OK(EVERYTHING, "double_list: [1.5, 0, NaN]\nchoice_wrapped: 0\n");
  if (e) {
    CHECK(e->n_double_list == 3 && e->double_list[1]->value == 0 && isnan(e->double_list[2]->value),
          "double_list");
    CHECK(e->choice_case == PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_WRAPPED && e->choice_wrapped &&
              e->choice_wrapped->value == 0,
          "choice_wrapped");
    EMITS(e, 0, "{\"doubleList\":[1.5,0,\"NaN\"],\"choiceWrapped\":0}");
  }
  msg_free(e);
  PARSE_FAILS(EVERYTHING, "wrappers:\n  u32: -1\n",
              "line 2: wrappers.u32: \"-1\" is out of range for uint32");
  PARSE_FAILS(EVERYTHING, "wrappers: {i32: {value: 1}}",
              "wrappers.i32: expected an integer (int32), got a mapping");
  PARSE_FAILS(EVERYTHING, "wrappers: {flag: yes}", "wrappers.flag: expected true or false");
  PARSE_FAILS(EVERYTHING, "double_list: [1, null]",
              "double_list[1]: null is not allowed as a list element");
}

/* ----------------------------------------------------------------- time */

static void test_timestamp_duration(void) {
  Everything *e = (Everything *)PARSE_OK(
      EVERYTHING,
      "createdAt: 1972-01-01T10:00:20.021Z\n"
      "timeLimit: 1.5s\n"
      "stamps: ['1970-01-01T00:00:00Z', '1970-01-01T01:00:00+01:00',\n"
      "         '0001-01-01T00:00:00Z', '9999-12-31T23:59:59.999999999Z',\n"
      "         '2000-02-29t12:30:00.5-08:30', '1969-12-31T23:59:59.000001Z']\n"
      "durations: [-0.25s, 0s, 315576000000s, -315576000000.999999999s, 0.000000001s]\n");
  if (e && e->created_at && e->time_limit && e->n_stamps == 6 && e->n_durations == 5) {
    CHECK(e->created_at->seconds == 63108020 && e->created_at->nanos == 21000000,
          "created_at %lld %d", (long long)e->created_at->seconds, e->created_at->nanos);
    CHECK(e->time_limit->seconds == 1 && e->time_limit->nanos == 500000000, "time_limit");
    struct tm tm = {
        .tm_year = 2000 - 1900, .tm_mon = 1, .tm_mday = 29, .tm_hour = 12, .tm_min = 30};
    int64_t want[6] = {0, 0, -62135596800, 253402300799, (int64_t)timegm(&tm) + 8 * 3600 + 30 * 60,
                       -1};
    int32_t want_ns[6] = {0, 0, 0, 999999999, 500000000, 1000};
    for (int i = 0; i < 6; i++)
      CHECK(e->stamps[i]->seconds == want[i] && e->stamps[i]->nanos == want_ns[i],
            "stamps[%d] = %lld.%09d", i, (long long)e->stamps[i]->seconds, e->stamps[i]->nanos);
    int64_t dsec[5] = {0, 0, 315576000000, -315576000000, 0};
    int32_t dns[5] = {-250000000, 0, 0, -999999999, 1};
    for (int i = 0; i < 5; i++)
      CHECK(e->durations[i]->seconds == dsec[i] && e->durations[i]->nanos == dns[i],
            "durations[%d]", i);
    EMITS(e, 0,
          "{\"createdAt\":\"1972-01-01T10:00:20.021Z\",\"timeLimit\":\"1.500s\",\"stamps\":[\"1970-"
          "01-01T00:00:00Z\","
          "\"1970-01-01T00:00:00Z\",\"0001-01-01T00:00:00Z\",\"9999-12-31T23:59:59.999999999Z\","
          "\"2000-02-29T21:00:00.500Z\",\"1969-12-31T23:59:59.000001Z\"],\"durations\":[\"-0."
          "250s\",\"0s\","
          "\"315576000000s\",\"-315576000000.999999999s\",\"0.000000001s\"]}");
    ROUND_TRIPS(e);
  } else {
    CHECK(0, "timestamps and durations not parsed");
  }
  msg_free(e);
  PARSE_FAILS(EVERYTHING, "createdAt: 2021-02-29T00:00:00Z",
              "line 1: created_at: expected an RFC 3339 timestamp");
  PARSE_FAILS(EVERYTHING, "created_at: '1972-01-01 10:00:20Z'",
              "created_at: expected an RFC 3339 timestamp");
  PARSE_FAILS(EVERYTHING, "created_at: '1972-01-01T10:00:20'", "expected an RFC 3339 timestamp");
  PARSE_FAILS(EVERYTHING, "created_at: '1972-01-01T24:00:00Z'", "expected an RFC 3339 timestamp");
  PARSE_FAILS(EVERYTHING, "created_at: '1972-01-01T10:00:20.1234567891Z'",
              "expected an RFC 3339 timestamp");
  PARSE_FAILS(EVERYTHING, "created_at: '0000-12-31T23:59:59Z'", "expected an RFC 3339 timestamp");
  PARSE_FAILS(EVERYTHING, "created_at: '0001-01-01T00:00:00+00:01'",
              "expected an RFC 3339 timestamp");
  PARSE_FAILS(EVERYTHING, "created_at: 12", "expected an RFC 3339 timestamp");
  PARSE_FAILS(EVERYTHING, "created_at: {seconds: 1}", "expected a timestamp string, got a mapping");
  PARSE_FAILS(EVERYTHING, "time_limit: 1.5", "time_limit: expected a duration in seconds");
  PARSE_FAILS(EVERYTHING, "time_limit: 315576000001s", "expected a duration");
  PARSE_FAILS(EVERYTHING, "time_limit: 1m", "expected a duration");
  PARSE_FAILS(EVERYTHING, "time_limit: .5s", "expected a duration");
  PARSE_FAILS(EVERYTHING, "time_limit: 1.s", "expected a duration");

  /* Against the C library's calendar, over the whole allowed range. */
  Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  int bad = 0;
  for (int i = 0; i < 20000 && bad < 5; i++) {
    int64_t secs = -62135596800 + (int64_t)(rng() % (uint64_t)(253402300799 + 62135596800 + 1));
    if (i < 3)
      secs = i == 0 ? -62135596800 : i == 1 ? 253402300799 : 951782400; /* 2000-02-29 */
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    char want[64], doc[96];
    snprintf(want, sizeof want, "\"%04d-%02d-%02dT%02d:%02d:%02dZ\"", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    ts.seconds = secs;
    char *got = pbjson_emit(&ts.base, 0);
    if (!got || strcmp(got, want) != 0) {
      bad++;
      CHECK(0, "timestamp %lld emitted %s, want %s", (long long)secs, got ? got : "(null)", want);
    }
    free(got);
    snprintf(doc, sizeof doc, "created_at: %s", want);
    td_error err = {0};
    Everything *back = NULL;
    if (pbjson_parse(EVERYTHING, doc, strlen(doc), (ProtobufCMessage **)&back, &err) != 0 ||
        !back->created_at || back->created_at->seconds != secs) {
      bad++;
      CHECK(0, "%s parsed wrong: %s", doc, err.msg);
    }
    msg_free(back);
  }
  CHECK(bad == 0, "%d timestamp mismatches", bad);
  ts.seconds = 253402300800;
  char *none = pbjson_emit(&ts.base, 0);
  CHECK(none == NULL, "out-of-range timestamp emitted as %s", none);
  free(none);
  Google__Protobuf__Duration du = GOOGLE__PROTOBUF__DURATION__INIT;
  du.seconds = 1;
  du.nanos = -1;
  none = pbjson_emit(&du.base, 0);
  CHECK(none == NULL, "duration with mixed signs emitted as %s", none);
  free(none);
}

/* ------------------------------------------------------ nesting and null */

static void test_nested_and_null(void) {
  Everything *e = (Everything *)PARSE_OK(
      EVERYTHING, "tree:\n"
                  "  name: root\n"
                  "  children:\n"
                  "    - name: a\n"
                  "      children: [{name: a1}, {name: a2, child: {name: a2x}}]\n"
                  "    - {}\n"
                  "    - name: c\n"
                  "scalar_list:\n"
                  "  - {i32: 1}\n"
                  "  - {i32: 2, str: two}\n");
  if (e && e->tree && e->tree->n_children == 3 && e->n_scalar_list == 2) {
    Pbjson__Test__Node *a = e->tree->children[0];
    CHECK(strcmp(e->tree->name, "root") == 0, "root");
    CHECK(a->n_children == 2 && strcmp(a->children[1]->name, "a2") == 0 && a->children[1]->child &&
              strcmp(a->children[1]->child->name, "a2x") == 0,
          "nested children");
    CHECK(e->tree->children[1]->name[0] == '\0' && e->tree->children[1]->n_children == 0,
          "empty child");
    CHECK(strcmp(e->tree->children[2]->name, "c") == 0, "c");
    CHECK(e->scalar_list[1]->i32 == 2 && strcmp(e->scalar_list[1]->str, "two") == 0, "scalar_list");
  } else {
    CHECK(0, "nested message not parsed");
  }
  msg_free(e);
  PARSE_FAILS(EVERYTHING, "tree:\n  children:\n    - name: a\n    - name: [b]\n",
              "line 4: tree.children[1].name: expected a string, got a list");
  PARSE_FAILS(EVERYTHING, "scalar_list: [{i32: 1}, ~]",
              "scalar_list[1]: null is not allowed as a list element");
  PARSE_FAILS(EVERYTHING, "scalar_list: {i32: 1}", "scalar_list: expected a list, got a mapping");
  PARSE_FAILS(EVERYTHING, "repeats: {u32: 5}", "repeats.u32: expected a list, got \"5\"");
  PARSE_FAILS(EVERYTHING, "repeats: {u32: [1, 2, -3]}",
              "repeats.u32[2]: \"-3\" is out of range for uint32");
  PARSE_FAILS(EVERYTHING, "tree: [a]", "tree: expected a mapping for pbjson.test.Node, got a list");
  PARSE_FAILS(EVERYTHING, "tree: 5", "expected a mapping for pbjson.test.Node, got \"5\"");

  /* Every spelling of null leaves the field at its default. */
  e = (Everything *)PARSE_OK(EVERYTHING, "scalars: null\n"
                                         "repeats: ~\n"
                                         "wrappers:\n"
                                         "tree: {name: NULL, children: null, child: Null}\n"
                                         "stamps: ~\n"
                                         "multi_word_field_name_2x:\n"
                                         "created_at: null\n");
  if (e) {
    CHECK(!e->scalars && !e->repeats && !e->wrappers && !e->created_at && e->n_stamps == 0,
          "nulls set fields");
    CHECK(e->tree && e->tree->name[0] == '\0' && e->tree->n_children == 0 && !e->tree->child,
          "tree");
    CHECK(e->multi_word_field_name_2x[0] == '\0', "string");
    EMITS(e, 0, "{\"tree\":{}}");
  }
  msg_free(e);
  /* Quoted "null" is a string, not null. */
  e = (Everything *)PARSE_OK(EVERYTHING, "multi_word_field_name_2x: 'null'");
  if (e)
    CHECK(strcmp(e->multi_word_field_name_2x, "null") == 0, "%s", e->multi_word_field_name_2x);
  msg_free(e);
  e = (Everything *)PARSE_OK(EVERYTHING, "repeats: {str: [a, '', \"~\"], raw: [AA==, '']}");
  if (e && e->repeats) {
    CHECK(e->repeats->n_str == 3 && e->repeats->str[1][0] == '\0' &&
              strcmp(e->repeats->str[2], "~") == 0,
          "str");
    CHECK(e->repeats->n_raw == 2 && e->repeats->raw[0].len == 1 && e->repeats->raw[1].len == 0,
          "raw");
  }
  msg_free(e);
}

/* --------------------------------------------------------- the documents */

static const char job_yaml[] = "# an MLP on MNIST\n"
                               "name: mnist-mlp\n"
                               "model:\n"
                               "  input_shape: [28, 28]\n"
                               "  layers:\n"
                               "    - name: hidden\n"
                               "      dense: {features: 128, kernel_init: HE_NORMAL}\n"
                               "    - relu: {}\n"
                               "    - dropout: {rate: 0.1}\n"
                               "    - dense:\n"
                               "        features: 10\n"
                               "        use_bias: false\n"
                               "  loss: SOFTMAX_CROSS_ENTROPY\n"
                               "optimizer:\n"
                               "  chain:\n"
                               "    - clip_by_global_norm: {max_norm: 1.0}\n"
                               "    - adamw:\n"
                               "        learning_rate:\n"
                               "          warmup_cosine_decay:\n"
                               "            init_value: 0.0\n"
                               "            peak_value: 1e-3\n"
                               "            warmup_steps: 100\n"
                               "            decay_steps: 1000\n"
                               "        b2: 0.98\n"
                               "        weight_decay: 0\n"
                               "dataset:\n"
                               "  idx: {dir: mnist}\n"
                               "  train_limit: 1000\n"
                               "training: {epochs: 2, batch_size: 64, seed: 42}\n"
                               "checkpoint: {every_steps: 500}\n"
                               "priority: -1\n";

/* The same job as Python's json.dumps(doc, indent=2) writes it. */
static const char job_json[] = "{\n"
                               "  \"name\": \"mnist-mlp\",\n"
                               "  \"model\": {\n"
                               "    \"inputShape\": [\n"
                               "      28,\n"
                               "      28\n"
                               "    ],\n"
                               "    \"layers\": [\n"
                               "      {\n"
                               "        \"name\": \"hidden\",\n"
                               "        \"dense\": {\n"
                               "          \"features\": 128,\n"
                               "          \"kernelInit\": \"HE_NORMAL\"\n"
                               "        }\n"
                               "      },\n"
                               "      {\n"
                               "        \"relu\": {}\n"
                               "      },\n"
                               "      {\n"
                               "        \"dropout\": {\n"
                               "          \"rate\": 0.1\n"
                               "        }\n"
                               "      },\n"
                               "      {\n"
                               "        \"dense\": {\n"
                               "          \"features\": 10,\n"
                               "          \"useBias\": false\n"
                               "        }\n"
                               "      }\n"
                               "    ],\n"
                               "    \"loss\": \"SOFTMAX_CROSS_ENTROPY\"\n"
                               "  },\n"
                               "  \"optimizer\": {\n"
                               "    \"chain\": [\n"
                               "      {\n"
                               "        \"clipByGlobalNorm\": {\n"
                               "          \"maxNorm\": 1.0\n"
                               "        }\n"
                               "      },\n"
                               "      {\n"
                               "        \"adamw\": {\n"
                               "          \"learningRate\": {\n"
                               "            \"warmupCosineDecay\": {\n"
                               "              \"initValue\": 0.0,\n"
                               "              \"peakValue\": 0.001,\n"
                               "              \"warmupSteps\": 100,\n"
                               "              \"decaySteps\": 1000\n"
                               "            }\n"
                               "          },\n"
                               "          \"b2\": 0.98,\n"
                               "          \"weightDecay\": 0\n"
                               "        }\n"
                               "      }\n"
                               "    ]\n"
                               "  },\n"
                               "  \"dataset\": {\n"
                               "    \"idx\": {\n"
                               "      \"dir\": \"mnist\"\n"
                               "    },\n"
                               "    \"trainLimit\": 1000\n"
                               "  },\n"
                               "  \"training\": {\n"
                               "    \"epochs\": 2,\n"
                               "    \"batchSize\": 64,\n"
                               "    \"seed\": \"42\"\n"
                               "  },\n"
                               "  \"checkpoint\": {\n"
                               "    \"everySteps\": 500\n"
                               "  },\n"
                               "  \"priority\": -1\n"
                               "}\n";

static void test_json_and_yaml(void) {
  Traind__V1__JobSpec *y = (Traind__V1__JobSpec *)PARSE_OK(JOBSPEC, job_yaml);
  Traind__V1__JobSpec *j = (Traind__V1__JobSpec *)PARSE_OK(JOBSPEC, job_json);
  if (y && j) {
    packed py = pack(&y->base), pj = pack(&j->base);
    CHECK(packed_eq(py, pj), "YAML and JSON forms of the job differ (%zu vs %zu bytes)", py.n,
          pj.n);
    free(py.p);
    free(pj.p);
    /* Spot checks that the fields landed where they belong. */
    CHECK(y->model && y->model->n_layers == 4 && y->model->n_input_shape == 2, "model");
    if (y->model && y->model->n_layers == 4) {
      Traind__V1__Layer *l0 = y->model->layers[0], *l3 = y->model->layers[3];
      CHECK(l0->kind_case == TRAIND__V1__LAYER__KIND_DENSE && l0->dense->features == 128 &&
                l0->dense->kernel_init == TRAIND__V1__INITIALIZER__HE_NORMAL &&
                !l0->dense->use_bias,
            "layer 0");
      CHECK(l3->dense && l3->dense->use_bias && l3->dense->use_bias->value == 0,
            "use_bias false kept");
      CHECK(y->model->layers[2]->dropout->rate == 0.1, "dropout");
    }
    Traind__V1__Transform *t1 =
        y->optimizer && y->optimizer->n_chain == 2 ? y->optimizer->chain[1] : NULL;
    CHECK(t1 && t1->adamw && t1->adamw->weight_decay && t1->adamw->weight_decay->value == 0 &&
              !t1->adamw->b1 && t1->adamw->b2->value == 0.98,
          "adamw");
    CHECK(t1 && t1->adamw && t1->adamw->learning_rate->warmup_cosine_decay->peak_value == 1e-3,
          "schedule");
    CHECK(y->training && y->training->seed == 42 && y->priority == -1, "training");
    /* The default output is what grpcurl/protojson print. */
    EMITS(y, 0,
          "{\"name\":\"mnist-mlp\",\"model\":{\"inputShape\":[28,28],\"layers\":[{\"name\":"
          "\"hidden\",\"dense\":"
          "{\"features\":128,\"kernelInit\":\"HE_NORMAL\"}},{\"relu\":{}},{\"dropout\":{\"rate\":0."
          "1}},{\"dense\":"
          "{\"features\":10,\"useBias\":false}}],\"loss\":\"SOFTMAX_CROSS_ENTROPY\"},\"optimizer\":"
          "{\"chain\":"
          "[{\"clipByGlobalNorm\":{\"maxNorm\":1}},{\"adamw\":{\"learningRate\":{"
          "\"warmupCosineDecay\":"
          "{\"peakValue\":0.001,\"warmupSteps\":100,\"decaySteps\":1000}},\"b2\":0.98,"
          "\"weightDecay\":0}}]},"
          "\"dataset\":{\"idx\":{\"dir\":\"mnist\"},\"trainLimit\":1000},\"training\":{\"epochs\":"
          "2,\"batchSize\":64,"
          "\"seed\":\"42\"},\"checkpoint\":{\"everySteps\":500},\"priority\":-1}");
    ROUND_TRIPS(y);
  }
  msg_free(y);
  msg_free(j);

  /* Compact JSON with no spaces, tabs, and a non-BMP character written as a
   * UTF-16 surrogate pair (as json.dumps does by default). */
  Scalars *s = (Scalars *)PARSE_OK(
      SCALARS, "{\"str\":\"x\\ud83d\\ude00y\\\\ud83d\",\t\"i64\":\"5\",\"color\":1}");
  if (s)
    CHECK(strcmp(s->str, "x\xF0\x9F\x98\x80y\\ud83d") == 0 && s->i64 == 5 && s->color == 1,
          "str %s", s->str);
  msg_free(s);
}

static void test_hostile_input(void) {
  PARSE_FAILS(EVERYTHING, "tree:\n  name: x\n  child: @bad\n",
              "line 3, column 10: found character that cannot start any token");
  /* JSON with a missing comma. */
  PARSE_FAILS(EVERYTHING, "{\n  \"scalars\": {\"i32\": 1}\n  \"tree\": {}\n}",
              "line 3, column 3: did not find expected ',' or '}' (while parsing a flow mapping "
              "that starts on line 1)");
  PARSE_FAILS(EVERYTHING, "a: *nope", "found undefined alias");
  PARSE_FAILS(EVERYTHING, "scalars: {}\n---\nscalars: {}\n",
              "line 2: a second YAML document starts here");
  PARSE_FAILS(EVERYTHING, "", "the document is empty");
  PARSE_FAILS(EVERYTHING, "# only a comment\n", "the document is empty");
  PARSE_FAILS(
      EVERYTHING, "[1, 2]",
      "line 1: the top level must be a mapping of pbjson.test.Everything fields, got a list");
  PARSE_FAILS(EVERYTHING, "just text", "the top level must be a mapping");
  PARSE_FAILS(EVERYTHING, "scalars:\n  str: \"\xff\"\n",
              "line 2, column 9: not valid UTF-8 (byte 0xff at offset 17)");

  /* Ten levels of ten aliases each expand to 10^10 nodes; the walk stops at
   * the node limit. */
  char bomb[2048];
  size_t o = (size_t)snprintf(bomb, sizeof bomb, "tree:\n  children:\n    - &l0 {name: x}\n");
  for (int lvl = 1; lvl <= 10; lvl++) {
    o += (size_t)snprintf(bomb + o, sizeof bomb - o, "    - &l%d {children: [", lvl);
    for (int k = 0; k < 10; k++)
      o += (size_t)snprintf(bomb + o, sizeof bomb - o, "%s*l%d", k ? ", " : "", lvl - 1);
    o += (size_t)snprintf(bomb + o, sizeof bomb - o, "]}\n");
  }
  PARSE_FAILS(EVERYTHING, bomb, "expands to more than 100000 values");
  /* A few aliases are fine. */
  Everything *e = (Everything *)PARSE_OK(EVERYTHING, "tree:\n  children: [&a {name: x}, *a, *a]\n");
  if (e && e->tree)
    CHECK(e->tree->n_children == 3 && strcmp(e->tree->children[2]->name, "x") == 0, "aliases");
  msg_free(e);
  /* A self-referencing alias is infinitely deep. */
  PARSE_FAILS(EVERYTHING, "tree: &a {child: *a}", "nested more than 64 levels deep");
  PARSE_FAILS(EVERYTHING, "tree: &a {children: [*a]}", "nested more than 64 levels deep");

  /* Depth: 60 nested messages parse, 70 do not. */
  for (int depth = 60; depth <= 70; depth += 10) {
    size_t cap = (size_t)depth * 16 + 64, n = 0;
    char *doc = malloc(cap);
    n += (size_t)snprintf(doc + n, cap - n, "tree: ");
    for (int i = 0; i < depth; i++)
      n += (size_t)snprintf(doc + n, cap - n, "{child: ");
    n += (size_t)snprintf(doc + n, cap - n, "{}");
    for (int i = 0; i < depth; i++)
      n += (size_t)snprintf(doc + n, cap - n, "}");
    if (depth == 60) {
      e = (Everything *)PARSE_OK(EVERYTHING, doc);
      msg_free(e);
    } else {
      PARSE_FAILS(EVERYTHING, doc, "nested more than 64 levels deep");
    }
    free(doc);
  }

  /* Size: a document just over 4 MiB is refused before it is read. */
  size_t big = PBJSON_MAX_BYTES + 1;
  char *doc = malloc(big + 1);
  memset(doc, ' ', big);
  memcpy(doc, "name: x", 7);
  doc[big] = '\0';
  parse_fails_at(__LINE__, JOBSPEC, doc, big, "limit is 4194304 bytes (4 MiB)");
  /* At the limit it is read. */
  e = NULL;
  td_error err = {0};
  CHECK(pbjson_parse(JOBSPEC, doc, big - 1, (ProtobufCMessage **)&e, &err) == 0,
        "4 MiB document refused: %s", err.msg);
  msg_free(e);
  free(doc);
}

/* ---------------------------------------------------------------- UTF-8 */

/* Strict UTF-8 at the edges of each sequence length: every row is a byte
 * string and the offset of its first bad byte (its length when valid). */
static void test_utf8_strict(void) {
  static const struct {
    const char *s;
    size_t bad;
  } rows[] = {
      {"", 0},
      {"plain", 5},
      {"\x7f", 1},
      {"\xc2\x80", 2},            /* U+0080 */
      {"\xdf\xbf", 2},            /* U+07FF */
      {"\xe0\xa0\x80", 3},        /* U+0800 */
      {"\xed\x9f\xbf", 3},        /* U+D7FF */
      {"\xee\x80\x80", 3},        /* U+E000 */
      {"\xef\xbf\xbf", 3},        /* U+FFFF */
      {"\xf0\x90\x80\x80", 4},    /* U+10000 */
      {"\xf4\x8f\xbf\xbf", 4},    /* U+10FFFF */
      {"ab\xf0\x9f\x98\x80z", 7}, /* U+1F600 */
      {"\x80", 0},                /* a lone continuation byte */
      {"a\xbf", 1},
      {"\xc0\x80", 0},                 /* overlong U+0000 */
      {"\xc1\xbf", 0},                 /* overlong U+007F */
      {"\xe0\x9f\xbf", 0},             /* overlong U+07FF */
      {"\xf0\x8f\xbf\xbf", 0},         /* overlong U+FFFF */
      {"x\xed\xa0\x80", 1},            /* U+D800, a surrogate */
      {"\xed\xbf\xbf", 0},             /* U+DFFF */
      {"\xed\xa0\xbd\xed\xb8\x80", 0}, /* a surrogate pair written as CESU-8 */
      {"\xf4\x90\x80\x80", 0},         /* U+110000 */
      {"\xf5\x80\x80\x80", 0},
      {"\xf8\x88\x80\x80\x80", 0}, /* five-byte form */
      {"\xfe", 0},
      {"\xff", 0},
      {"ok\xc3", 2}, /* cut short */
      {"\xe2\x82", 0},
      {"\xe2\x82(", 0}, /* a continuation byte missing */
      {"\xf0\x9f\x98", 0},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    size_t n = strlen(rows[i].s);
    size_t got = pbjson_utf8_invalid(rows[i].s, n);
    CHECK(got == rows[i].bad, "row %zu: first bad byte at %zu, want %zu", i, got, rows[i].bad);
  }
}

/* A string field set to text that is not UTF-8 is reported with its path,
 * wherever it sits: a singular field, a repeated element, a oneof member, a
 * wrapper, a map key or value, a recursive submessage. */
static void utf8_fails_at(int line, const ProtobufCMessage *m, const char *want) {
  td_error err = {0};
  int rc = pbjson_check_utf8(m, NULL, &err);
  CHECK(rc == TD_EINVAL, "line %d: pbjson_check_utf8 returned %d", line, rc);
  CHECK(strcmp(err.msg, want) == 0, "line %d: message \"%s\", want \"%s\"", line, err.msg, want);
}
#define UTF8_FAILS(m, want) utf8_fails_at(__LINE__, (const ProtobufCMessage *)(m), (want))

static void test_utf8_check(void) {
  Everything *e = (Everything *)PARSE_OK(
      EVERYTHING, "scalars: {str: \"h\\u00e9\"}\nrepeats: {str: [a, b, c]}\n"
                  "wrappers: {str: \"\\U0001F600\"}\nchoice_str: x\n"
                  "tree: {name: r, children: [{name: a}, {name: b, child: {name: c}}]}\n");
  if (!e)
    return;
  td_error err = {0};
  CHECK(pbjson_check_utf8(&e->base, NULL, &err) == 0, "valid strings refused: %s", err.msg);

  char bad[] = "ab\xff";
  char *keep = e->scalars->str;
  e->scalars->str = bad;
  UTF8_FAILS(e, "scalars.str: not valid UTF-8 (byte 0xff at offset 2)");
  err = (td_error){0};
  CHECK(pbjson_check_utf8(&e->base, "request", &err) == TD_EINVAL &&
            strcmp(err.msg, "request.scalars.str: not valid UTF-8 (byte 0xff at offset 2)") == 0,
        "prefix: %s", err.msg);
  e->scalars->str = keep;

  char surrogate[] = "x\xed\xa0\x80";
  keep = e->repeats->str[2];
  e->repeats->str[2] = surrogate;
  UTF8_FAILS(e, "repeats.str[2]: not valid UTF-8 (byte 0xed at offset 1)");
  e->repeats->str[2] = keep;

  char overlong[] = "\xc0\xaf";
  keep = e->wrappers->str->value;
  e->wrappers->str->value = overlong;
  UTF8_FAILS(e, "wrappers.str.value: not valid UTF-8 (byte 0xc0 at offset 0)");
  e->wrappers->str->value = keep;

  char high[] = "\xf4\x90\x80\x80";
  keep = e->choice_str;
  e->choice_str = high;
  UTF8_FAILS(e, "choice_str: not valid UTF-8 (byte 0xf4 at offset 0)");
  e->choice_str = keep;

  char cut[] = "ok\xe2\x82";
  keep = e->tree->children[1]->child->name;
  e->tree->children[1]->child->name = cut;
  UTF8_FAILS(e, "tree.children[1].child.name: not valid UTF-8 (byte 0xe2 at offset 2)");
  e->tree->children[1]->child->name = keep;

  /* Only the selected member of a oneof is read: another member's bytes
   * share its storage. */
  e->choice_case = PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_INT;
  char *str_member = e->choice_str;
  e->choice_int = 7;
  CHECK(pbjson_check_utf8(&e->base, NULL, &err) == 0, "an int oneof member read as a string");
  e->choice_case = PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_STR;
  e->choice_str = str_member;

  /* Map entries: keys and values are strings like any other. */
  Pbjson__Test__Everything__LabelsEntry entry = PBJSON__TEST__EVERYTHING__LABELS_ENTRY__INIT;
  Pbjson__Test__Everything__LabelsEntry *entries[] = {&entry};
  char badkey[] = "k\x80";
  entry.key = badkey;
  entry.value = 3;
  e->n_labels = 1;
  e->labels = entries;
  UTF8_FAILS(e, "labels[0].key: not valid UTF-8 (byte 0x80 at offset 1)");
  entry.key = "fine";
  CHECK(pbjson_check_utf8(&e->base, NULL, &err) == 0, "a valid map entry refused: %s", err.msg);
  e->n_labels = 0;
  e->labels = NULL;
  msg_free(e);

  /* Job files: bytes that are not UTF-8 are refused before YAML reads
   * them, wherever they are, with the line, column and offset. */
  PARSE_FAILS(JOBSPEC, "name: \"caf\xc3\"\n",
              "line 1, column 11: not valid UTF-8 (byte 0xc3 at offset 10)");
  PARSE_FAILS(JOBSPEC, "# comment\nname: 'x\xed\xa0\x80'\n",
              "line 2, column 9: not valid UTF-8 (byte 0xed at offset 18)");
  PARSE_FAILS(JOBSPEC, "{\"name\": \"\xe2\x82\xac\xc0\xaf\"}",
              "line 1, column 12: not valid UTF-8 (byte 0xc0 at offset 13)");
  /* UTF-16 text (libyaml would read it) is not UTF-8 either. */
  static const char utf16[] = "\xff\xfen\0a\0m\0e\0:\0 \0x\0";
  parse_fails_at(__LINE__, JOBSPEC, utf16, sizeof utf16 - 1, "byte 0xff at offset 0");
  /* Escapes cannot make invalid text: a lone surrogate escape is refused,
   * \xff is U+00FF. */
  PARSE_FAILS(JOBSPEC, "name: \"\\ud800\"\n", "invalid Unicode character escape code");
  Traind__V1__JobSpec *j = (Traind__V1__JobSpec *)PARSE_OK(JOBSPEC, "name: \"\\xff\"\n");
  if (j)
    CHECK(strcmp(j->name, "\xc3\xbf") == 0, "\\xff read as U+00FF (%s)", j->name);
  msg_free(j);
}

/* Backslashes are escapes only inside double-quoted scalars. A JSON-style
 * surrogate pair elsewhere (a single-quoted or plain scalar, a comment) is
 * plain text, however many double quotes came before it (PyYAML reads the
 * same; tests/pbjson_interop.py compares). */
static void test_surrogates_in_flow(void) {
  static const struct {
    const char *doc, *name;
  } rows[] = {
      {"{\"name\": \"\\uD83D\\uDE00\"}", "\xF0\x9F\x98\x80"},
      {"{\"name\":\"a\\ud83d\\ude00b\"}", "a\xF0\x9F\x98\x80"
                                          "b"},
      {"{name: '\\uD83D\\uDE00'}", "\\uD83D\\uDE00"},
      /* A double quote inside a single-quoted scalar starts nothing. */
      {"{training: {seed: 1}, dataset: {idx: {dir: 'say \"x'}}, name: '\\uD83D\\uDE00'}",
       "\\uD83D\\uDE00"},
      {"{dataset: {idx: {dir: 'it''s \"'}}, name: '\\uD83D\\uDE00'}", "\\uD83D\\uDE00"},
      /* Nor inside a plain scalar, nor in a comment. */
      {"{dataset: {idx: {dir: a\"b}}, name: '\\uD83D\\uDE00'}", "\\uD83D\\uDE00"},
      {"{dataset: {idx: {dir: a \"b}}, name: x\\uD83D\\uDE00}", "x\\uD83D\\uDE00"},
      {"{ # a \"comment\n name: '\\uD83D\\uDE00'}", "\\uD83D\\uDE00"},
      /* After a double-quoted scalar with escaped quotes, the next
       * double-quoted one is still rewritten. */
      {"{dataset: {idx: {dir: \"q\\\"\"}}, name: \"\\uD83D\\uDE00\"}", "\xF0\x9F\x98\x80"},
      {"{dataset: {idx: {dir: \"x\"}}, name: 'a\\uD83D\\uDE00''\"'}", "a\\uD83D\\uDE00'\""},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    Traind__V1__JobSpec *j = (Traind__V1__JobSpec *)PARSE_OK(JOBSPEC, rows[i].doc);
    CHECK(j && strcmp(j->name, rows[i].name) == 0, "row %zu: name \"%s\", want \"%s\"", i,
          j ? j->name : "(null)", rows[i].name);
    msg_free(j);
  }
  /* Line numbers stay right after a rewrite. */
  PARSE_FAILS(JOBSPEC, "{\"name\": \"\\uD83D\\uDE00\",\n \"nope\": 1}", "line 2");
}

/* -------------------------------------------------------------- emitting */

static void test_emit_format(void) {
  Scalars s = PBJSON__TEST__SCALARS__INIT;
  EMITS(&s, 0, "{}");
  EMITS(&s, PBJSON_INDENT, "{}");
  EMITS(&s, PBJSON_EMIT_DEFAULTS,
        "{\"i32\":0,\"s32\":0,\"sf32\":0,\"u32\":0,\"f32\":0,\"i64\":\"0\",\"s64\":\"0\",\"sf64\":"
        "\"0\",\"u64\":\"0\","
        "\"f64\":\"0\",\"flt\":0,\"dbl\":0,\"flag\":false,\"str\":\"\",\"raw\":\"\",\"color\":"
        "\"COLOR_UNSPECIFIED\"}");
  s.i32 = -5;
  s.u64 = 18446744073709551615u;
  s.flt = 0.1f;
  s.dbl = 1.0 / 3.0;
  s.str = "q\"\\/\n\r\t\b\f\x01\x1f\x7f \xc3\xa9\xc2\x85\xe2\x80\xa8\xef\xbb\xbf\xf0\x9f\x98\x80 "
          "\xff\xc3";
  uint8_t raw[] = {0, 1, 2, 0xfe, 0xff};
  s.raw.data = raw;
  s.raw.len = sizeof raw;
  s.color = 7;
  EMITS(&s, 0,
        "{\"i32\":-5,\"u64\":\"18446744073709551615\",\"flt\":0.1,\"dbl\":0.3333333333333333,"
        "\"str\":\"q\\\"\\\\/\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f "
        "\xc3\xa9\\u0085\\u2028\\ufeff\xf0\x9f\x98\x80 "
        "\xef\xbf\xbd\xef\xbf\xbd\",\"raw\":\"AAEC/v8=\",\"color\":7}");
  s.str = "";
  s.raw.len = 0;
  s.color = 1;
  s.flt = 1e21f;
  s.dbl = -0.0;
  EMITS(
      &s, 0,
      "{\"i32\":-5,\"u64\":\"18446744073709551615\",\"flt\":1e+21,\"dbl\":-0.0,\"color\":\"RED\"}");
  s.flt = INFINITY;
  s.dbl = NAN;
  s.u64 = 0;
  s.color = 0;
  EMITS(&s, 0, "{\"i32\":-5,\"flt\":\"Infinity\",\"dbl\":\"NaN\"}");
  s.flt = -INFINITY;
  s.dbl = 5e-324;
  EMITS(&s, 0, "{\"i32\":-5,\"flt\":\"-Infinity\",\"dbl\":5e-324}");

  Everything *e = (Everything *)PARSE_OK(EVERYTHING, "multi_word_field_name_2x: x\n"
                                                     "repeats: {u32: [1, 2], str: []}\n"
                                                     "scalar_list: [{}, {i32: 1}]\n"
                                                     "tree: {}\n");
  if (e) {
    EMITS(e, 0,
          "{\"repeats\":{\"u32\":[1,2]},\"scalarList\":[{},{\"i32\":1}],\"tree\":{},"
          "\"multiWordFieldName2x\":\"x\"}");
    EMITS(e, PBJSON_PROTO_NAMES,
          "{\"repeats\":{\"u32\":[1,2]},\"scalar_list\":[{},{\"i32\":1}],\"tree\":{},"
          "\"multi_word_field_name_2x\":\"x\"}");
    EMITS(e, PBJSON_INDENT,
          "{\n"
          "  \"repeats\": {\n"
          "    \"u32\": [\n"
          "      1,\n"
          "      2\n"
          "    ]\n"
          "  },\n"
          "  \"scalarList\": [\n"
          "    {},\n"
          "    {\n"
          "      \"i32\": 1\n"
          "    }\n"
          "  ],\n"
          "  \"tree\": {},\n"
          "  \"multiWordFieldName2x\": \"x\"\n"
          "}");
    EMITS(e, PBJSON_EMIT_DEFAULTS | PBJSON_PROTO_NAMES,
          "{\"scalars\":null,\"repeats\":{\"i32\":[],\"s32\":[],\"sf32\":[],\"u32\":[1,2],\"f32\":["
          "],\"i64\":[],"
          "\"s64\":[],\"sf64\":[],\"u64\":[],\"f64\":[],\"flt\":[],\"dbl\":[],\"flag\":[],\"str\":["
          "],\"raw\":[],"
          "\"color\":[]},\"wrappers\":null,\"created_at\":null,\"time_limit\":null,\"stamps\":[],"
          "\"durations\":[],"
          "\"double_list\":[],\"scalar_list\":[{\"i32\":0,\"s32\":0,\"sf32\":0,\"u32\":0,\"f32\":0,"
          "\"i64\":\"0\","
          "\"s64\":\"0\",\"sf64\":\"0\",\"u64\":\"0\",\"f64\":\"0\",\"flt\":0,\"dbl\":0,\"flag\":"
          "false,\"str\":\"\","
          "\"raw\":\"\",\"color\":\"COLOR_UNSPECIFIED\"},{\"i32\":1,\"s32\":0,\"sf32\":0,\"u32\":0,"
          "\"f32\":0,"
          "\"i64\":\"0\",\"s64\":\"0\",\"sf64\":\"0\",\"u64\":\"0\",\"f64\":\"0\",\"flt\":0,"
          "\"dbl\":0,\"flag\":false,"
          "\"str\":\"\",\"raw\":\"\",\"color\":\"COLOR_UNSPECIFIED\"}],\"tree\":{\"name\":\"\","
          "\"children\":[],"
          "\"child\":null},\"labels\":{},\"multi_word_field_name_2x\":\"x\"}");
    ROUND_TRIPS(e);
  }
  msg_free(e);

  /* Maps are written (as objects) even though the parser refuses them. */
  Everything m = PBJSON__TEST__EVERYTHING__INIT;
  Pbjson__Test__Everything__LabelsEntry l1 = PBJSON__TEST__EVERYTHING__LABELS_ENTRY__INIT, l2 = l1;
  Pbjson__Test__Everything__LabelsEntry *ls[2] = {&l1, &l2};
  l1.key = "a";
  l1.value = 1;
  l2.key = "b\"";
  m.labels = ls;
  m.n_labels = 2;
  EMITS(&m, 0, "{\"labels\":{\"a\":1,\"b\\\"\":0}}");
  EMITS(&m, PBJSON_INDENT, "{\n  \"labels\": {\n    \"a\": 1,\n    \"b\\\"\": 0\n  }\n}");

  /* Float text is the shortest that reads back as the same value. */
  int bad = 0;
  for (int i = 0; i < 100000 && bad < 5; i++) {
    uint64_t bits = rng();
    double d;
    float f;
    uint32_t fb = (uint32_t)bits;
    memcpy(&d, &bits, sizeof d);
    memcpy(&f, &fb, sizeof f);
    if (!isfinite(d) || !isfinite(f))
      continue;
    Scalars t = PBJSON__TEST__SCALARS__INIT;
    t.dbl = d;
    t.flt = f;
    char *json = pbjson_emit(&t.base, 0);
    Scalars *back = NULL;
    td_error err = {0};
    if (!json || pbjson_parse(SCALARS, json, strlen(json), (ProtobufCMessage **)&back, &err) != 0 ||
        memcmp(&back->dbl, &d, sizeof d) != 0 || memcmp(&back->flt, &f, sizeof f) != 0) {
      bad++;
      CHECK(0, "float round trip failed for %a / %a: %s %s", d, (double)f, json ? json : "(null)",
            err.msg);
    }
    /* and no longer than %.17g / %.9g need */
    if (json &&
        strlen(json) > strlen("{\"flt\":-1.23456789e-38,\"dbl\":-1.2345678901234567e-308}")) {
      bad++;
      CHECK(0, "float text too long: %s", json);
    }
    free(json);
    msg_free(back);
  }
  CHECK(bad == 0, "%d float round-trip failures", bad);
}

/* A random UTF-8 string with the awkward characters over-represented. */
static char *random_string(void) {
  static const uint32_t awkward[] = {
      1,      9,      10,     13,     0x1f,   '"',     '\\',    '/',      0x7f, 0x85, 0xa0, 0x2028,
      0x2029, 0xfeff, 0xfffd, 0xfffe, 0xffff, 0x10000, 0x1f600, 0x10ffff, ':',  '#',  '\''};
  size_t n = rng() % 12;
  char *s = malloc(n * 4 + 1), *p = s;
  for (size_t i = 0; i < n; i++) {
    uint32_t cp;
    switch (rng() % 3) {
    case 0:
      cp = awkward[rng() % (sizeof awkward / sizeof awkward[0])];
      break;
    case 1:
      cp = 0x20 + (uint32_t)(rng() % 0x5f);
      break;
    default:
      do
        cp = 1 + (uint32_t)(rng() % 0x10ffff);
      while (cp >= 0xd800 && cp <= 0xdfff);
    }
    if (cp < 0x80) {
      *p++ = (char)cp;
    } else if (cp < 0x800) {
      *p++ = (char)(0xc0 | cp >> 6);
      *p++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      *p++ = (char)(0xe0 | cp >> 12);
      *p++ = (char)(0x80 | ((cp >> 6) & 0x3f));
      *p++ = (char)(0x80 | (cp & 0x3f));
    } else {
      *p++ = (char)(0xf0 | cp >> 18);
      *p++ = (char)(0x80 | ((cp >> 12) & 0x3f));
      *p++ = (char)(0x80 | ((cp >> 6) & 0x3f));
      *p++ = (char)(0x80 | (cp & 0x3f));
    }
  }
  *p = '\0';
  return s;
}

/* Fills a Scalars with random values; strings and bytes are malloc'd so the
 * message frees like a parsed one. */
static Scalars *random_scalars(void) {
  Scalars *s = malloc(sizeof *s);
  pbjson__test__scalars__init(s);
  uint64_t r = rng();
  s->i32 = (int32_t)r;
  s->s32 = (int32_t)(r >> 32);
  s->sf32 = (int32_t)rng();
  s->u32 = (uint32_t)rng();
  s->f32 = (uint32_t)rng();
  s->i64 = (int64_t)rng();
  s->s64 = (int64_t)rng();
  s->sf64 = (int64_t)rng();
  s->u64 = rng();
  s->f64 = rng();
  uint32_t fb = (uint32_t)rng();
  memcpy(&s->flt, &fb, sizeof s->flt);
  uint64_t db = rng();
  memcpy(&s->dbl, &db, sizeof s->dbl);
  if (isnan(s->flt)) /* NaN payloads have no JSON form */
    s->flt = NAN;
  if (isnan(s->dbl))
    s->dbl = NAN;
  s->flag = (int)(rng() & 1);
  s->str = random_string();
  s->raw.len = rng() % 9;
  s->raw.data = s->raw.len ? malloc(s->raw.len) : NULL;
  for (size_t i = 0; i < s->raw.len; i++)
    s->raw.data[i] = (uint8_t)rng();
  s->color = (int)(rng() % 5) - 1;
  if (rng() % 4 == 0) /* make some fields zero, some small */
    s->i32 = s->u64 = 0, s->i64 = 5;
  return s;
}

/* Repeated fields of every type, k elements each, with the values of k
 * random Scalars (whose strings and bytes change owner). */
static Pbjson__Test__Repeats *random_repeats(size_t k) {
  Pbjson__Test__Repeats *r = malloc(sizeof *r);
  pbjson__test__repeats__init(r);
  r->n_i32 = r->n_s32 = r->n_sf32 = r->n_u32 = r->n_f32 = k;
  r->n_i64 = r->n_s64 = r->n_sf64 = r->n_u64 = r->n_f64 = k;
  r->n_flt = r->n_dbl = r->n_flag = r->n_str = r->n_raw = r->n_color = k;
  r->i32 = malloc(k * sizeof *r->i32);
  r->s32 = malloc(k * sizeof *r->s32);
  r->sf32 = malloc(k * sizeof *r->sf32);
  r->u32 = malloc(k * sizeof *r->u32);
  r->f32 = malloc(k * sizeof *r->f32);
  r->i64 = malloc(k * sizeof *r->i64);
  r->s64 = malloc(k * sizeof *r->s64);
  r->sf64 = malloc(k * sizeof *r->sf64);
  r->u64 = malloc(k * sizeof *r->u64);
  r->f64 = malloc(k * sizeof *r->f64);
  r->flt = malloc(k * sizeof *r->flt);
  r->dbl = malloc(k * sizeof *r->dbl);
  r->flag = malloc(k * sizeof *r->flag);
  r->str = malloc(k * sizeof *r->str);
  r->raw = malloc(k * sizeof *r->raw);
  r->color = malloc(k * sizeof *r->color);
  for (size_t i = 0; i < k; i++) {
    Scalars *t = random_scalars();
    r->i32[i] = t->i32;
    r->s32[i] = t->s32;
    r->sf32[i] = t->sf32;
    r->u32[i] = t->u32;
    r->f32[i] = t->f32;
    r->i64[i] = t->i64;
    r->s64[i] = t->s64;
    r->sf64[i] = t->sf64;
    r->u64[i] = t->u64;
    r->f64[i] = t->f64;
    r->flt[i] = t->flt;
    r->dbl[i] = t->dbl;
    r->flag[i] = t->flag;
    r->str[i] = t->str;
    r->raw[i] = t->raw;
    r->color[i] = t->color;
    t->str = NULL;
    t->raw.data = NULL;
    protobuf_c_message_free_unpacked(&t->base, NULL);
  }
  return r;
}

static void test_random_round_trips(void) {
  for (int iter = 0; iter < 300; iter++) {
    Everything *e = malloc(sizeof *e);
    pbjson__test__everything__init(e);
    e->scalars = random_scalars();
    size_t n = rng() % 4;
    e->n_scalar_list = n;
    e->scalar_list = n ? malloc(n * sizeof *e->scalar_list) : NULL;
    for (size_t i = 0; i < n; i++)
      e->scalar_list[i] = random_scalars();
    e->repeats = random_repeats(1 + rng() % 3);
    if (rng() % 2) {
      e->created_at = malloc(sizeof *e->created_at);
      google__protobuf__timestamp__init(e->created_at);
      e->created_at->seconds = -62135596800 + (int64_t)(rng() % 315537897600u);
      e->created_at->nanos = (int32_t)(rng() % 1000000000);
    }
    if (rng() % 2) {
      e->time_limit = malloc(sizeof *e->time_limit);
      google__protobuf__duration__init(e->time_limit);
      int64_t sec = (int64_t)(rng() % 315576000001u);
      int32_t ns = (int32_t)(rng() % 1000000000);
      bool neg = rng() % 2;
      e->time_limit->seconds = neg ? -sec : sec;
      e->time_limit->nanos = neg ? -ns : ns;
    }
    switch (rng() % 4) {
    case 0:
      e->choice_case = PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_STR;
      e->choice_str = random_string();
      break;
    case 1:
      e->choice_case = PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_INT;
      e->choice_int = (int32_t)(rng() % 3);
      break;
    case 2:
      e->choice_case = PBJSON__TEST__EVERYTHING__CHOICE_CHOICE_WRAPPED;
      e->choice_wrapped = malloc(sizeof *e->choice_wrapped);
      google__protobuf__double_value__init(e->choice_wrapped);
      break;
    default:
      break;
    }
    ROUND_TRIPS(e);
    protobuf_c_message_free_unpacked(&e->base, NULL);
  }
}

/* ------------------------------------------------------------ validation */

static const pbjson_rule job_rules[] = {
    {"traind.v1.JobSpec", "model", PBJSON_RULE_REQUIRED, 0, NULL},
    {"traind.v1.JobSpec", "training", PBJSON_RULE_REQUIRED, 0, "say how long to train"},
    {"traind.v1.Model", "input_shape", PBJSON_RULE_MIN, 1, NULL},
    {"traind.v1.Layer", NULL, PBJSON_RULE_ONEOF_REQUIRED, 0, NULL},
    {"traind.v1.Dense", "features", PBJSON_RULE_REQUIRED, 0, NULL},
    {"traind.v1.Dropout", "rate", PBJSON_RULE_LT, 1, NULL},
    {"traind.v1.Dropout", "rate", PBJSON_RULE_MIN, 0, NULL},
    {"traind.v1.Transform", "sgd", PBJSON_RULE_ONEOF_REQUIRED, 0, NULL},
    {"traind.v1.AdamW", "weight_decay", PBJSON_RULE_MIN, 0, NULL},
    {"traind.v1.AdamW", "b1", PBJSON_RULE_LT, 1, NULL},
    {"traind.v1.AdamW", "b2", PBJSON_RULE_LT, 1, "b2 is a decay rate in [0, 1)"},
    {"traind.v1.ClipByGlobalNorm", "max_norm", PBJSON_RULE_GT, 0, NULL},
    {"traind.v1.Schedule", "constant", PBJSON_RULE_GT, 0, NULL},
    {"traind.v1.WarmupCosineDecay", "exponent", PBJSON_RULE_MAX, 10, NULL},
    {"traind.v1.Training", "batch_size", PBJSON_RULE_REQUIRED, 0, NULL},
    {"traind.v1.Training", "epochs", PBJSON_RULE_MAX, 1000, NULL},
    {"traind.v1.JobSpec", "priority", PBJSON_RULE_MIN, -100, NULL},
};
#define NRULES (sizeof job_rules / sizeof job_rules[0])

/* Parses doc as a JobSpec, validates it against job_rules, and checks the
 * outcome: success when want is NULL, else exactly that message. */
static void validates_at(int line, int index, const char *doc, const char *want) {
  Traind__V1__JobSpec *j = (Traind__V1__JobSpec *)parse_ok_at(line, JOBSPEC, doc);
  if (!j)
    return;
  td_error err = {0};
  int rc = pbjson_validate(&j->base, job_rules, NRULES, &err);
  if (want) {
    CHECK(rc == TD_EINVAL, "line %d case %d: validate returned %d, want TD_EINVAL", line, index,
          rc);
    CHECK(strcmp(err.msg, want) == 0, "line %d case %d: validate said \"%s\", want \"%s\"", line,
          index, err.msg, want);
  } else {
    CHECK(rc == 0, "line %d case %d: validate refused a good job: %s", line, index, err.msg);
  }
  msg_free(j);
}
#define VALIDATES(doc, want) validates_at(__LINE__, -1, (doc), (want))

/* base with the first occurrence of `from` replaced by `to` (malloc'd). */
static char *replaced(const char *base, const char *from, const char *to) {
  const char *at = strstr(base, from);
  CHECK(at != NULL, "\"%s\" not in the document", from);
  if (!at)
    return strdup(base);
  size_t n = strlen(base) - strlen(from) + strlen(to) + 1;
  char *out = malloc(n);
  snprintf(out, n, "%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
  return out;
}

static char *job_with(const char *from, const char *to) { return replaced(job_yaml, from, to); }

static void test_validate(void) {
  VALIDATES(job_yaml, NULL);
  struct {
    const char *from, *to, *want;
  } cases[] = {
      {"        weight_decay: 0\n", "        weight_decay: -0.1\n",
       "optimizer.chain[1].adamw.weight_decay: must be >= 0 (got -0.1)"},
      {"    - relu: {}\n", "    - name: act\n",
       "model.layers[1]: set one of: dense, relu, gelu, tanh, sigmoid, dropout, add, flatten, "
       "reshape, concatenate, conv, max_pool, avg_pool, global_avg_pool, batch_norm, "
       "layer_norm, embed, position_embedding, causal_self_attention, repeat"},
      {"batch_size: 64", "batch_size: 0", "training.batch_size: required"},
      {"training: {epochs: 2, batch_size: 64, seed: 42}\n", "",
       "training: required; say how long to train"},
      {"  input_shape: [28, 28]\n", "  input_shape: [28, 0, 3]\n",
       "model.input_shape[1]: must be >= 1 (got 0)"},
      {"{rate: 0.1}", "{rate: 1}", "model.layers[2].dropout.rate: must be < 1 (got 1)"},
      {"{rate: 0.1}", "{rate: -Infinity}",
       "model.layers[2].dropout.rate: must be >= 0 (got -Infinity)"},
      {"{rate: 0.1}", "{rate: NaN}", "model.layers[2].dropout.rate: must be < 1 (got NaN)"},
      {"        b2: 0.98\n", "        b2: 1\n",
       "optimizer.chain[1].adamw.b2: must be < 1 (got 1); b2 is a decay rate in [0, 1)"},
      {"        b2: 0.98\n", "        b1: 1.5\n",
       "optimizer.chain[1].adamw.b1: must be < 1 (got 1.5)"},
      {"{max_norm: 1.0}", "{max_norm: -2}",
       "optimizer.chain[0].clip_by_global_norm.max_norm: must be > 0 (got -2)"},
      {"    - clip_by_global_norm: {max_norm: 1.0}\n", "    - {}\n",
       "optimizer.chain[0]: set one of: sgd, adam, adamw, clip_by_global_norm, "
       "add_decayed_weights, "
       "scale_by_schedule, scale, scale_by_adam"},
      {"          warmup_cosine_decay:\n            init_value: 0.0\n            peak_value: "
       "1e-3\n            "
       "warmup_steps: 100\n            decay_steps: 1000\n",
       "          constant: 0\n",
       "optimizer.chain[1].adamw.learning_rate.constant: must be > 0 (got 0)"},
      {"            decay_steps: 1000\n",
       "            decay_steps: 1000\n            exponent: 11\n",
       "optimizer.chain[1].adamw.learning_rate.warmup_cosine_decay.exponent: must be <= 10 (got "
       "11)"},
      {"epochs: 2", "epochs: 1001", "training.epochs: must be <= 1000 (got 1001)"},
      {"priority: -1", "priority: -101", "priority: must be >= -100 (got -101)"},
      {"dense: {features: 128, kernel_init: HE_NORMAL}", "dense: {kernel_init: HE_NORMAL}",
       "model.layers[0].dense.features: required"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *doc = job_with(cases[i].from, cases[i].to);
    validates_at(__LINE__, (int)i, doc, cases[i].want);
    free(doc);
  }
  /* Numeric rules skip unset values: zero plain scalars, absent wrappers. */
  char *doc = job_with("{rate: 0.1}", "{}");
  VALIDATES(doc, NULL);
  free(doc);
  doc = job_with("        b2: 0.98\n", "");
  VALIDATES(doc, NULL);
  free(doc);
  /* The first failure in walk order wins: the JobSpec's own rows come
   * before anything in its submessages. */
  doc = job_with("priority: -1", "priority: -101");
  char *doc2 = replaced(doc, "batch_size: 64", "batch_size: 0");
  VALIDATES(doc2, "priority: must be >= -100 (got -101)");
  free(doc2);
  doc2 = replaced(doc, "{rate: 0.1}", "{rate: 2}");
  free(doc);
  doc = replaced(doc2, "batch_size: 64", "batch_size: 0");
  VALIDATES(doc, "priority: must be >= -100 (got -101)");
  free(doc2);
  doc2 = replaced(doc, "priority: -101", "priority: 0");
  VALIDATES(doc2, "model.layers[2].dropout.rate: must be < 1 (got 2)");
  free(doc);
  free(doc2);

  /* Mistakes in the table are reported, not ignored. */
  Traind__V1__JobSpec *j = (Traind__V1__JobSpec *)PARSE_OK(JOBSPEC, job_yaml);
  if (j) {
    td_error err = {0};
    pbjson_rule bad1[] = {{"traind.v1.AdamW", "weightdecay", PBJSON_RULE_MIN, 0, NULL}};
    CHECK(pbjson_validate(&j->base, bad1, 1, &err) == TD_EINVAL &&
              strstr(err.msg, "names no field 'weightdecay'") != NULL,
          "%s", err.msg);
    pbjson_rule bad2[] = {{"traind.v1.JobSpec", "name", PBJSON_RULE_MIN, 0, NULL}};
    CHECK(pbjson_validate(&j->base, bad2, 1, &err) == TD_EINVAL &&
              strstr(err.msg, "numeric") != NULL,
          "%s", err.msg);
    pbjson_rule bad3[] = {{"traind.v1.Layer", "name", PBJSON_RULE_ONEOF_REQUIRED, 0, NULL}};
    CHECK(pbjson_validate(&j->base, bad3, 1, &err) == TD_EINVAL &&
              strstr(err.msg, "not in a oneof") != NULL,
          "%s", err.msg);
    pbjson_rule bad4[] = {
        {"traind.v1.JobSpec", "devices", PBJSON_RULE_MAX, 1, NULL}}; /* devices unset */
    CHECK(pbjson_validate(&j->base, bad4, 1, &err) == TD_EINVAL &&
              strstr(err.msg, "numeric") != NULL,
          "%s", err.msg);
    pbjson_rule bad5[] = {{"traind.v1.JobSpec", "priority", 99, 0, NULL}};
    CHECK(pbjson_validate(&j->base, bad5, 1, &err) == TD_EINVAL &&
              strstr(err.msg, "unknown kind 99") != NULL,
          "%s", err.msg);
    pbjson_rule unused[] = {{"traind.v1.Sgd", "momentum", PBJSON_RULE_MIN, 0, NULL}};
    CHECK(pbjson_validate(&j->base, unused, 1, &err) == 0, "rule for an absent message failed: %s",
          err.msg);
    pbjson_rule root_oneof[] = {{"traind.v1.Transform", NULL, PBJSON_RULE_ONEOF_REQUIRED, 0, NULL}};
    Traind__V1__Transform t = TRAIND__V1__TRANSFORM__INIT;
    CHECK(pbjson_validate(&t.base, root_oneof, 1, &err) == TD_EINVAL &&
              strncmp(err.msg, "set one of: sgd,", 16) == 0,
          "%s", err.msg);
  }
  msg_free(j);
}

/* ----------------------------------------------------------------- files */

static void test_parse_file(void) {
  char dir[] = "/tmp/pbjson_testXXXXXX";
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  char path[256];
  snprintf(path, sizeof path, "%s/job.yaml", dir);
  FILE *f = fopen(path, "w");
  fputs(job_yaml, f);
  fclose(f);
  td_error err = {0};
  ProtobufCMessage *m = NULL;
  CHECK(pbjson_parse_file(JOBSPEC, path, &m, &err) == 0 && m, "parse_file: %s", err.msg);
  Traind__V1__JobSpec *y = (Traind__V1__JobSpec *)PARSE_OK(JOBSPEC, job_yaml);
  packed a = pack(m), b = pack(y ? &y->base : NULL);
  CHECK(packed_eq(a, b), "file and text parse differ");
  free(a.p);
  free(b.p);
  msg_free(m);
  msg_free(y);

  f = fopen(path, "w");
  fputs("name: x\ntraining:\n  epochs: many\n", f);
  fclose(f);
  m = NULL;
  char want[400];
  snprintf(want, sizeof want,
           "%s: line 3: training.epochs: expected an integer (uint32), got \"many\"", path);
  CHECK(pbjson_parse_file(JOBSPEC, path, &m, &err) == TD_EINVAL && strcmp(err.msg, want) == 0 && !m,
        "%s", err.msg);

  f = fopen(path, "w");
  for (size_t i = 0; i < PBJSON_MAX_BYTES / 64 + 1; i++)
    fprintf(f, "%-63s\n", "# padding");
  fclose(f);
  CHECK(pbjson_parse_file(JOBSPEC, path, &m, &err) == TD_EINVAL &&
            strstr(err.msg, path) == err.msg &&
            strstr(err.msg, "larger than 4194304 bytes (4 MiB)") != NULL,
        "%s", err.msg);
  unlink(path);
  CHECK(pbjson_parse_file(JOBSPEC, path, &m, &err) == TD_ENOTFOUND &&
            strstr(err.msg, path) == err.msg,
        "%s", err.msg);
  CHECK(pbjson_parse_file(JOBSPEC, dir, &m, &err) == TD_EIO && strstr(err.msg, dir) == err.msg,
        "%s", err.msg);
  rmdir(dir);
}

int main(void) {
  test_scalars();
  test_integer_errors();
  test_floating();
  test_bool_string_bytes();
  test_enums();
  test_keys();
  test_oneof();
  test_wrappers();
  test_timestamp_duration();
  test_nested_and_null();
  test_json_and_yaml();
  test_hostile_input();
  test_utf8_strict();
  test_utf8_check();
  test_surrogates_in_flow();
  test_emit_format();
  test_random_round_trips();
  test_validate();
  test_parse_file();
  return td_check_exit();
}
