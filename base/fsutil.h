/* File-system helpers shared by the daemon's stores. */
#ifndef TD_FSUTIL_H
#define TD_FSUTIL_H

#include "error.h"

/* Creates path and its missing parents with mode 0750 (like mkdir -p). */
int td_mkdir_p(const char *path, td_error *err);

#endif
