/* Errors are values: negative codes from one table, a message that says what
 * to fix, and the mapping to gRPC status codes in exactly one place. */
#ifndef TD_ERROR_H
#define TD_ERROR_H

#include <stddef.h>

/* The gRPC status codes, X(NAME, value): the numbers of grpc_status_code,
 * kept here so that no caller needs gRPC's headers for them. */
#define TD_GRPC_CODES(X)    \
  X(OK, 0)                  \
  X(CANCELLED, 1)           \
  X(UNKNOWN, 2)             \
  X(INVALID_ARGUMENT, 3)    \
  X(DEADLINE_EXCEEDED, 4)   \
  X(NOT_FOUND, 5)           \
  X(ALREADY_EXISTS, 6)      \
  X(PERMISSION_DENIED, 7)   \
  X(RESOURCE_EXHAUSTED, 8)  \
  X(FAILED_PRECONDITION, 9) \
  X(ABORTED, 10)            \
  X(OUT_OF_RANGE, 11)       \
  X(UNIMPLEMENTED, 12)      \
  X(INTERNAL, 13)           \
  X(UNAVAILABLE, 14)        \
  X(DATA_LOSS, 15)          \
  X(UNAUTHENTICATED, 16)

enum {
#define TD_GRPC_ENUM(name, val) TD_GRPC_##name = (val),
  TD_GRPC_CODES(TD_GRPC_ENUM)
#undef TD_GRPC_ENUM
};
#define TD_GRPC_NCODES (TD_GRPC_UNAUTHENTICATED + 1)

/* "INVALID_ARGUMENT" for 3, ...; "UNKNOWN_CODE" outside 0..16. */
const char *td_grpc_code_name(int code);

/* X(name, value, gRPC status code, text). */
#define TD_ERRNO_MAP(X)                                       \
  X(INVAL, -1, TD_GRPC_INVALID_ARGUMENT, "invalid argument")  \
  X(NOTFOUND, -2, TD_GRPC_NOT_FOUND, "not found")             \
  X(PERM, -3, TD_GRPC_PERMISSION_DENIED, "permission denied") \
  X(IO, -4, TD_GRPC_UNAVAILABLE, "input/output error")        \
  X(DATA, -5, TD_GRPC_FAILED_PRECONDITION, "bad data")        \
  X(NOMEM, -6, TD_GRPC_RESOURCE_EXHAUSTED, "out of memory")   \
  X(NUMERIC, -7, TD_GRPC_ABORTED, "numeric failure")          \
  X(UNSUPPORTED, -8, TD_GRPC_UNIMPLEMENTED, "not supported")  \
  X(CANCELLED, -9, TD_GRPC_CANCELLED, "cancelled")            \
  X(BACKEND, -10, TD_GRPC_INTERNAL, "backend failure")        \
  X(INTERNAL, -11, TD_GRPC_INTERNAL, "internal error")

typedef enum {
  TD_OK = 0,
#define TD_ERR_ENUM(name, val, grpc, text) TD_E##name = (val),
  TD_ERRNO_MAP(TD_ERR_ENUM)
#undef TD_ERR_ENUM
} td_status;

#define TD_ERRMSG_MAX 1024

/* A failure: its code and a one-line message for a person. */
typedef struct td_error {
  int code;
  char msg[TD_ERRMSG_MAX];
} td_error;

const char *td_strerror(int code);
const char *td_errname(int code);
/* The grpc_status_code for a td_status (0 for TD_OK). */
int td_grpc_status(int code);

/* Sets *e (when e is not NULL) and returns code. */
int td_errorf(td_error *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prepends "prefix: " to e->msg (for adding context on the way up). */
void td_error_prefix(td_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void td_error_clear(td_error *e);

#endif
