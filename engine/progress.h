/* The terminal view of a training run: a progress bar with ETA redrawn in
 * place on a terminal, plain lines (one per epoch) otherwise. */
#ifndef TD_PROGRESS_H
#define TD_PROGRESS_H

#include <stdio.h>

#include "train.h"

typedef struct td_progress {
  FILE *out;
  int tty;
  double start, last_draw;
  int drawn; /* a bar is on screen and must be cleared before a line */
} td_progress;

void td_progress_init(td_progress *p, FILE *out);
/* Hooks that draw into p (should_stop is left NULL for the caller). */
td_train_hooks td_progress_hooks(td_progress *p);

#endif
