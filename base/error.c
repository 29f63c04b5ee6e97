#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *td_strerror(int code) {
  switch (code) {
  case TD_OK:
    return "ok";
#define TD_ERR_TEXT(name, val, grpc, text) \
  case TD_E##name:                         \
    return text;
    TD_ERRNO_MAP(TD_ERR_TEXT)
#undef TD_ERR_TEXT
  }
  return "unknown error";
}

const char *td_errname(int code) {
  switch (code) {
  case TD_OK:
    return "OK";
#define TD_ERR_NAME(name, val, grpc, text) \
  case TD_E##name:                         \
    return "E" #name;
    TD_ERRNO_MAP(TD_ERR_NAME)
#undef TD_ERR_NAME
  }
  return "EUNKNOWN";
}

const char *td_grpc_code_name(int code) {
  static const char *const names[TD_GRPC_NCODES] = {
#define TD_GRPC_NAME(name, val) [val] = #name,
      TD_GRPC_CODES(TD_GRPC_NAME)
#undef TD_GRPC_NAME
  };
  return code >= 0 && code < TD_GRPC_NCODES ? names[code] : "UNKNOWN_CODE";
}

int td_grpc_status(int code) {
  switch (code) {
  case TD_OK:
    return 0;
#define TD_ERR_GRPC(name, val, grpc, text) \
  case TD_E##name:                         \
    return grpc;
    TD_ERRNO_MAP(TD_ERR_GRPC)
#undef TD_ERR_GRPC
  }
  return 2; /* UNKNOWN */
}

int td_errorf(td_error *e, int code, const char *fmt, ...) {
  if (e) {
    va_list ap;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
  }
  return code;
}

void td_error_prefix(td_error *e, const char *fmt, ...) {
  if (!e)
    return;
  char old[TD_ERRMSG_MAX];
  memcpy(old, e->msg, sizeof old);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof e->msg - 2)
    return;
  e->msg[n] = ':';
  e->msg[n + 1] = ' ';
  size_t room = sizeof e->msg - (size_t)n - 2;
  size_t len = strnlen(old, room - 1);
  memcpy(e->msg + n + 2, old, len);
  e->msg[n + 2 + len] = '\0';
}

void td_error_clear(td_error *e) {
  if (e) {
    e->code = TD_OK;
    e->msg[0] = '\0';
  }
}
