/* File-system helpers. */
#include "fsutil.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int td_mkdir_p(const char *path, td_error *err) {
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s", path) >= sizeof tmp)
    return td_errorf(err, TD_EINVAL, "path too long: %.64s...", path);
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
        return td_errorf(err, TD_EIO, "cannot create %s: %s", tmp, strerror(errno));
      *p = '/';
    }
  if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
    return td_errorf(err, TD_EIO, "cannot create %s: %s", tmp, strerror(errno));
  return TD_OK;
}
