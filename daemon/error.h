/* Errors are values: negative codes from one table, a message that says what
 * to fix, and the mapping to gRPC status codes in exactly one place. */
#ifndef TD_ERROR_H
#define TD_ERROR_H

#include <stddef.h>

/* X(name, value, grpc status code, text). gRPC codes are the numbers of
 * grpc_status_code, kept here as plain integers so that this header does not
 * depend on gRPC. */
#define TD_ERRNO_MAP(X)                                                       \
  X(INVAL, -1, 3, "invalid argument")                                         \
  X(NOTFOUND, -2, 5, "not found")                                             \
  X(PERM, -3, 7, "permission denied")                                         \
  X(IO, -4, 14, "input/output error")                                         \
  X(DATA, -5, 9, "bad data")                                                  \
  X(NOMEM, -6, 8, "out of memory")                                            \
  X(NUMERIC, -7, 10, "numeric failure")                                       \
  X(UNSUPPORTED, -8, 12, "not supported")                                     \
  X(CANCELLED, -9, 1, "cancelled")                                            \
  X(BACKEND, -10, 13, "backend failure")                                      \
  X(INTERNAL, -11, 13, "internal error")

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
int td_errorf(td_error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prepends "prefix: " to e->msg (for adding context on the way up). */
void td_error_prefix(td_error *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void td_error_clear(td_error *e);

#endif
