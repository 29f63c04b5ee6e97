#include "progress.h"

#include "clock.h"
#include "fmt.h"

#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void td_progress_init(td_progress *p, FILE *out) {
  memset(p, 0, sizeof *p);
  p->out = out;
  p->tty = isatty(fileno(out));
  p->start = td_mono_sec();
}

static void on_step(void *user, const td_trainer *t, const td_step_point *sp) {
  td_progress *p = user;
  if (!p->tty)
    return;
  double now = td_mono_sec();
  if (now - p->last_draw < 0.1 && sp->step_in_epoch != t->steps_per_epoch)
    return;
  p->last_draw = now;
  enum { WIDTH = 24 };
  double frac = (double)sp->step / (double)t->total_steps;
  int fill = (int)(frac * WIDTH);
  char bar[WIDTH + 1];
  for (int i = 0; i < WIDTH; i++)
    bar[i] = i < fill ? '#' : '.';
  bar[WIDTH] = '\0';
  char eta[32];
  double elapsed = now - p->start;
  td_format_duration(frac > 0 ? elapsed * (1.0 - frac) / frac : -1, eta, sizeof eta);
  fprintf(p->out,
          "\r\033[Kepoch %u/%u [%s] %3.0f%%  step %u/%u  loss %.4f  lr %.2e  "
          "%.0f ex/s  ETA %s",
          sp->epoch, t->epochs, bar, frac * 100.0, sp->step_in_epoch, t->steps_per_epoch, sp->loss,
          sp->lr, sp->examples_per_sec, eta);
  fflush(p->out);
  p->drawn = 1;
}

static void on_epoch(void *user, const td_trainer *t, const td_epoch_point *ep) {
  td_progress *p = user;
  if (p->drawn)
    fputs("\r\033[K", p->out);
  p->drawn = 0;
  if (ep->mid_epoch)
    fprintf(p->out, "step %lld  train loss %.4f acc %.2f%%", (long long)ep->step, ep->train_loss,
            ep->train_accuracy * 100.0);
  else
    fprintf(p->out, "epoch %u/%u  train loss %.4f acc %.2f%%", ep->epoch, t->epochs, ep->train_loss,
            ep->train_accuracy * 100.0);
  if (ep->evaluated)
    fprintf(p->out, "  test loss %.4f acc %.2f%%", ep->test_loss, ep->test_accuracy * 100.0);
  if (ep->has_epsilon)
    fprintf(p->out, "  eps %.4g (delta %g)", ep->epsilon, ep->delta);
  fprintf(p->out, "  %.2f s  %.0f ex/s\n", ep->epoch_sec, ep->examples_per_sec);
  fflush(p->out);
}

td_train_hooks td_progress_hooks(td_progress *p) {
  td_train_hooks h = {.user = p, .on_step = on_step, .on_epoch = on_epoch};
  return h;
}
