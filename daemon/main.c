/* traind: the training daemon's command line.
 *
 *   traind run JOBFILE [--config FILE] [--data-dir DIR]... [--cpu-devices N]
 *                      [--threads N] [--json] [--metrics FILE]
 *
 * `run` trains one job in the foreground without a server. Exit status:
 * 0 success, 1 the job failed while training, 2 bad usage or a bad job or
 * config (nothing ran), 3 data missing or unreadable, 130 interrupted. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "jobspec.h"
#include "progress.h"
#include "train.h"

enum { EXIT_FAILED = 1, EXIT_BAD_INPUT = 2, EXIT_DATA = 3, EXIT_INTERRUPTED = 130 };

static volatile sig_atomic_t interrupted;

static void on_signal(int sig) {
  (void)sig;
  interrupted = 1;
}

static int should_stop(void *user) {
  (void)user;
  return interrupted;
}

static void usage(FILE *f) {
  fputs("usage: traind run JOBFILE [options]\n"
        "\n"
        "Trains the job in JOBFILE (YAML or JSON JobSpec) in the foreground.\n"
        "\n"
        "options:\n"
        "  --config FILE      daemon config file (YAML)\n"
        "  --data-dir DIR     a data root for dataset paths (repeatable;\n"
        "                     default: $TRAIND_DATA_DIR, then the config)\n"
        "  --cpu-devices N    CPU devices to offer (default 1)\n"
        "  --threads N        compute threads (default: one per core)\n"
        "  --json             print a JSON summary on stdout when done\n"
        "  --metrics FILE     write every step and epoch point as JSON lines\n"
        "  --version          print the version\n",
        f);
}

static int exit_for(int code) {
  switch (code) {
  case TD_EINVAL:
  case TD_EUNSUPPORTED:
  case TD_EPERM:
    return EXIT_BAD_INPUT;
  case TD_ENOTFOUND:
  case TD_EDATA:
  case TD_EIO:
    return EXIT_DATA;
  case TD_ECANCELLED:
    return EXIT_INTERRUPTED;
  default:
    return EXIT_FAILED;
  }
}

/* Epoch times collected for the summary. */
typedef struct run_report {
  td_progress progress;
  double *epoch_sec;
  size_t n_epochs;
  FILE *metrics; /* JSON lines, or NULL */
} run_report;

static void report_epoch(void *user, const td_trainer *t, const td_epoch_point *ep) {
  run_report *r = user;
  td_train_hooks inner = td_progress_hooks(&r->progress);
  inner.on_epoch(&r->progress, t, ep);
  if (r->n_epochs < t->epochs)
    r->epoch_sec[r->n_epochs++] = ep->epoch_sec;
  if (r->metrics) {
    fprintf(r->metrics,
            "{\"epoch\":%u,\"step\":%lld,\"train_loss\":%.9g,"
            "\"train_accuracy\":%.9g,\"epoch_sec\":%.6f",
            ep->epoch, (long long)ep->step, ep->train_loss, ep->train_accuracy,
            ep->epoch_sec);
    if (ep->evaluated)
      fprintf(r->metrics, ",\"test_loss\":%.9g,\"test_accuracy\":%.9g",
              ep->test_loss, ep->test_accuracy);
    fputs("}\n", r->metrics);
  }
}

static void report_step(void *user, const td_trainer *t, const td_step_point *sp) {
  run_report *r = user;
  td_train_hooks inner = td_progress_hooks(&r->progress);
  inner.on_step(&r->progress, t, sp);
  if (r->metrics)
    fprintf(r->metrics,
            "{\"step\":%lld,\"epoch\":%u,\"loss\":%.9g,\"grad_norm\":%.9g,"
            "\"learning_rate\":%.9g,\"step_ms\":%.4f}\n",
            (long long)sp->step, sp->epoch, sp->loss, sp->grad_norm, sp->lr,
            sp->step_ms);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void print_summary(const td_trainer *t, const run_report *r,
                          const td_epoch_point *last) {
  /* Steady state leaves out the first epoch (page faults, cold caches). */
  double steady = 0.0;
  size_t first = r->n_epochs > 1 ? 1 : 0, n = r->n_epochs - first;
  if (n) {
    double *s = malloc(n * sizeof *s);
    if (s) {
      memcpy(s, r->epoch_sec + first, n * sizeof *s);
      qsort(s, n, sizeof *s, cmp_double);
      steady = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
      free(s);
    }
  }
  printf("{\"job\":\"%s\",\"epochs\":%zu,\"steps\":%lld,\"batch_size\":%u,"
         "\"params\":%zu,\"compile_ms\":%.3f,\"plan_cache_hit\":%s,"
         "\"load_sec\":%.3f,\"epoch_sec\":[",
         t->spec->name ? t->spec->name : "", r->n_epochs,
         (long long)t->st.step, t->batch, t->plan->n_params, t->compile_ms,
         t->plan_hit ? "true" : "false", t->load_sec);
  for (size_t i = 0; i < r->n_epochs; i++)
    printf("%s%.4f", i ? "," : "", r->epoch_sec[i]);
  printf("],\"steady_epoch_sec\":%.4f,\"steady_examples_per_sec\":%.1f,"
         "\"train_loss\":%.6f,\"train_accuracy\":%.6f",
         steady, steady > 0 ? (double)t->steps_per_epoch * t->batch / steady : 0.0,
         last->train_loss, last->train_accuracy);
  if (last->evaluated)
    printf(",\"test_loss\":%.6f,\"test_accuracy\":%.6f", last->test_loss,
           last->test_accuracy);
  printf("}\n");
}

static int cmd_run(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'},
      {"data-dir", required_argument, 0, 'd'},
      {"cpu-devices", required_argument, 0, 'n'},
      {"threads", required_argument, 0, 't'},
      {"json", no_argument, 0, 'j'},
      {"metrics", required_argument, 0, 'm'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *config_path = NULL, *metrics_path = NULL;
  char **dirs = calloc((size_t)argc + 1, sizeof *dirs);
  size_t n_dirs = 0;
  long cpu_devices = 0, threads = 0;
  int json = 0, c;
  if (!dirs)
    return EXIT_FAILED;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    char *end = NULL;
    switch (c) {
    case 'c':
      config_path = optarg;
      break;
    case 'd':
      dirs[n_dirs++] = optarg;
      break;
    case 'n':
    case 't': {
      long v = strtol(optarg, &end, 10);
      if (!*optarg || *end || v < 1 || v > 4096) {
        fprintf(stderr, "traind: --%s takes a whole number from 1 to 4096, got '%s'\n",
                c == 'n' ? "cpu-devices" : "threads", optarg);
        free(dirs);
        return EXIT_BAD_INPUT;
      }
      *(c == 'n' ? &cpu_devices : &threads) = v;
      break;
    }
    case 'j':
      json = 1;
      break;
    case 'm':
      metrics_path = optarg;
      break;
    case 'h':
      usage(stdout);
      free(dirs);
      return 0;
    default:
      usage(stderr);
      free(dirs);
      return EXIT_BAD_INPUT;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "traind: run takes exactly one JOBFILE (see traind run --help)\n");
    free(dirs);
    return EXIT_BAD_INPUT;
  }
  const char *job_path = argv[optind];

  td_error err = {0};
  Traind__V1__DaemonConfig *cfg = NULL;
  Traind__V1__JobSpec *spec = NULL;
  int rc = td_config_load(config_path, &cfg, &err);
  /* Data roots: flags, else TRAIND_DATA_DIR (colon-separated), else the
   * config file. */
  char *env_copy = NULL;
  if (!rc && n_dirs == 0) {
    const char *env = getenv("TRAIND_DATA_DIR");
    if (env && *env && (env_copy = strdup(env))) {
      for (char *save = NULL, *tok = strtok_r(env_copy, ":", &save); tok;
           tok = strtok_r(NULL, ":", &save))
        if ((size_t)n_dirs < (size_t)argc)
          dirs[n_dirs++] = tok;
    }
  }
  if (!rc && n_dirs)
    rc = td_config_set_list(&cfg->data_dirs, &cfg->n_data_dirs, dirs, n_dirs, &err);
  if (!rc && cpu_devices)
    cfg->cpu_devices = (uint32_t)cpu_devices;
  if (!rc && threads)
    cfg->threads = (uint32_t)threads;
  if (!rc)
    rc = td_config_finish(cfg, &err);
  if (!rc)
    rc = td_jobspec_load(job_path, &spec, &err);

  td_trainer t;
  int have_trainer = 0;
  run_report report = {0};
  td_epoch_point last = {0};
  if (!rc) {
    td_trainer_opts o = {.data_roots = (const char *const *)cfg->data_dirs,
                         .n_data_roots = cfg->n_data_dirs,
                         .threads = (int)cfg->threads};
    rc = td_trainer_init(&t, spec, &o, &err);
    have_trainer = rc == TD_OK;
  }
  if (!rc) {
    fprintf(stderr,
            "traind: job '%s': %zu parameters, %u steps/epoch x %u epochs, "
            "compiled in %.2f ms, data loaded in %.2f s\n",
            spec->name ? spec->name : "", t.plan->n_params, t.steps_per_epoch,
            t.epochs, t.compile_ms, t.load_sec);
    report.epoch_sec = calloc(t.epochs ? t.epochs : 1, sizeof *report.epoch_sec);
    if (metrics_path && !(report.metrics = fopen(metrics_path, "w")))
      rc = td_errorf(&err, TD_EINVAL, "--metrics %s: cannot create the file (%s)",
                     metrics_path, strerror(errno));
  }
  if (!rc) {
    td_progress_init(&report.progress, stderr);
    td_train_hooks hooks = {.user = &report,
                            .on_step = report_step,
                            .on_epoch = report_epoch,
                            .should_stop = should_stop};
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    rc = report.epoch_sec ? td_trainer_run(&t, &hooks, &last, &err)
                          : td_errorf(&err, TD_ENOMEM, "out of memory");
    if (report.progress.drawn)
      fputc('\n', stderr);
    if (!rc && json)
      print_summary(&t, &report, &last);
  }
  if (rc)
    fprintf(stderr, "traind: %s\n", err.msg);
  if (have_trainer)
    td_trainer_free(&t);
  free(report.epoch_sec);
  if (report.metrics && fclose(report.metrics) != 0 && !rc) {
    fprintf(stderr, "traind: --metrics %s: write failed\n", metrics_path);
    rc = TD_EIO;
  }
  td_jobspec_free(spec);
  td_config_free(cfg);
  free(env_copy);
  free(dirs);
  return rc ? exit_for(rc) : 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return EXIT_BAD_INPUT;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
    printf("traind %s\n", TRAIND_VERSION);
    return 0;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(argv[1], "run") == 0)
    return cmd_run(argc - 1, argv + 1);
  fprintf(stderr, "traind: unknown command '%s' (see traind --help)\n", argv[1]);
  return EXIT_BAD_INPUT;
}
