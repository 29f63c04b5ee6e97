/* pbjson: the proto3 JSON mapping (https://protobuf.dev/programming-guides/json/)
 * between YAML/JSON text and protobuf-c messages, driven only by protobuf-c
 * descriptors, so that one converter serves every message type. Job files,
 * CLI output and anything else that shows a message to a person go through
 * here, and the same text is accepted by any other proto3 JSON implementation.
 *
 * Paths in error messages use the proto field names (snake_case) with [i] for
 * repeated elements, e.g. "optimizer.chain[1].adamw.weight_decay". */
#ifndef TD_PBJSON_H
#define TD_PBJSON_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "error.h"

/* Limits on untrusted input. Nodes count every value visited, so a YAML alias
 * that is used many times counts once per use. */
#define PBJSON_MAX_BYTES ((size_t)4 << 20)
#define PBJSON_MAX_DEPTH 64
#define PBJSON_MAX_NODES 100000

/* Parses text (YAML or JSON; JSON is parsed as YAML flow) as the proto3 JSON
 * mapping of `desc`. The top level must be a mapping, and the text must hold
 * exactly one document. Field keys may be the lowerCamelCase JSON name or the
 * proto field name; unknown and repeated keys are errors, and so is a
 * non-empty map field (no traind message has one). null (~, null, or nothing)
 * leaves a field unset. JSON text that writes characters beyond U+FFFF as
 * surrogate-pair escapes ("\ud83d\ude00", as json.dumps does) is accepted;
 * escapes exist only in double-quoted strings, so the same characters in a
 * single-quoted or plain scalar or a comment stay as written, as in any
 * YAML reader. The text must be strict UTF-8 ("line L, column C: not valid
 * UTF-8 (byte 0xff at offset N)" otherwise), and so must every string.
 *
 * On success returns 0 and *out is a new message owned by the caller, freed
 * with protobuf_c_message_free_unpacked(*out, NULL). On failure returns
 * TD_EINVAL (or TD_ENOMEM), leaves *out NULL, and err->msg reads
 * "line L: path: problem"; YAML syntax errors read "line L, column C: ...". */
int pbjson_parse(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
                 ProtobufCMessage **out, td_error *err);

/* Reads the file at `path` (at most PBJSON_MAX_BYTES) and parses it as
 * pbjson_parse does. Error messages start with the path. Returns TD_ENOTFOUND
 * when the file does not exist and TD_EIO when it cannot be read. */
int pbjson_parse_file(const ProtobufCMessageDescriptor *desc, const char *path,
                      ProtobufCMessage **out, td_error *err);

/* Flags for pbjson_emit. */
enum {
  PBJSON_INDENT = 1u << 0,      /* pretty print, two spaces per level */
  PBJSON_PROTO_NAMES = 1u << 1, /* proto field names instead of lowerCamelCase */
  /* Also fields left at their defaults: zero scalars, "", [] and {} for
   * repeated and map fields, null for unset messages (as Go's protojson
   * EmitUnpopulated); unset oneofs stay out. */
  PBJSON_EMIT_DEFAULTS = 1u << 2,
};

/* The proto3 JSON text of m, NUL-terminated and without a trailing newline,
 * malloc'd and owned by the caller (free()). With flags 0 the output is
 * compact, uses lowerCamelCase names and omits default values, as
 * grpcurl/protojson print. Strings that are not valid UTF-8 have each bad
 * byte replaced by U+FFFD. Returns NULL when out of memory, or when m holds a
 * google.protobuf.Timestamp or Duration outside the range the mapping allows. */
char *pbjson_emit(const ProtobufCMessage *m, unsigned flags);

/* Kinds of validation rule. */
enum {
  PBJSON_RULE_MIN = 1,        /* value >= bound */
  PBJSON_RULE_GT,             /* value > bound */
  PBJSON_RULE_MAX,            /* value <= bound */
  PBJSON_RULE_LT,             /* value < bound */
  PBJSON_RULE_REQUIRED,       /* field is set (see pbjson_validate) */
  PBJSON_RULE_ONEOF_REQUIRED, /* a member of a oneof is set */
  PBJSON_RULE_STRICT,         /* enums hold declared values, floats are finite */
};

/* One row of a validation table: in every message whose full name is
 * `message` (e.g. "traind.v1.AdamW"), `field` (a proto field name) must pass
 * `kind` against `bound`. `hint`, when not NULL, is appended to the failure
 * message after "; ". For PBJSON_RULE_ONEOF_REQUIRED, `field` is NULL (every
 * oneof of the message must have a member set) or names any member of the one
 * oneof meant. */
typedef struct pbjson_rule {
  const char *message;
  const char *field;
  int kind;
  double bound;
  const char *hint;
} pbjson_rule;

/* PBJSON_RULE_STRICT applies to every field of the matching messages (a row
 * with message NULL matches every message): each enum value must be one the
 * enum declares (proto3 parsers keep unknown numbers) and each float or
 * double, wrapped or not, must be finite. */

/* Walks m and its submessages depth first (at each message: the matching rows
 * in table order, then the submessages in field order) and stops at the first
 * failure, returning TD_EINVAL with err->msg such as
 *   "optimizer.chain[1].adamw.weight_decay: must be >= 0 (got -0.1)"
 *   "model.layers[2]: set one of: dense, relu, gelu, tanh, sigmoid, dropout"
 *   "training.batch_size: required".
 * Numeric rules apply only to fields that are set (a proto3 scalar is set when
 * nonzero, a oneof member when selected, a wrapper when present), to each
 * element of a repeated field, and see through google.protobuf.*Value
 * wrappers. PBJSON_RULE_REQUIRED means a nonzero scalar or enum, a non-empty
 * string or bytes, a present message, or a non-empty repeated field. A row
 * that names a field the message does not have, or a numeric rule on a field
 * that is not numeric, is reported as TD_EINVAL too. Returns 0 when every row
 * passes. */
int pbjson_validate(const ProtobufCMessage *m, const pbjson_rule *rules, size_t nrules,
                    td_error *err);

/* proto3 `string` fields must hold valid UTF-8. Walks every string field of
 * m and its submessages (repeated fields, oneof members, map keys and
 * values) and stops at the first that is not strict UTF-8 (no overlong
 * forms, no surrogates U+D800..U+DFFF, nothing above U+10FFFF), returning
 * TD_EINVAL with err->msg such as
 *   "spec.name: not valid UTF-8 (byte 0xff at offset 3)"
 * where the offset counts bytes from the start of the string. `prefix`, when
 * not NULL or empty, starts every path ("record" gives "record.spec.name").
 * Messages nested deeper than PBJSON_MAX_DEPTH are refused too. Returns 0
 * when every string is valid. */
int pbjson_check_utf8(const ProtobufCMessage *m, const char *prefix, td_error *err);

/* The offset of the first byte of s (n bytes) that does not begin a strict
 * UTF-8 sequence, or n when all of it is valid. */
size_t pbjson_utf8_invalid(const char *s, size_t n);

#endif
