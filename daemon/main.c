/* traind: the training daemon's command line.
 *
 *   traind [serve] [--listen ADDR]... [--state-dir DIR] [common options]
 *   traind run JOBFILE [--json] [--metrics FILE] [--checkpoint-dir DIR]
 *              [common options]
 *   traind sample CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T]
 *                 [--top-k K] [--seed S]
 *   common: --config FILE, --data-dir DIR (repeatable), --cpu-devices N,
 *           --threads N
 *
 * `serve` runs the daemon (server.c). `run` trains one job in the
 * foreground without a server. Exit status of `run`:
 * 0 success, 1 the job failed while training or (with --checkpoint-dir) its
 * final checkpoint could not be written, 2 bad usage or a bad job or config,
 * or a job too large for the memory it may use (nothing ran), 3 data
 * missing or unreadable, 130 interrupted.
 *
 * Both ignore SIGXFSZ: a write past RLIMIT_FSIZE then fails with EFBIG,
 * which fails that checkpoint (or record) with a message, instead of
 * killing the process. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "driver.h"
#include "footprint.h"
#include "gpus.h"
#include "jobspec.h"
#include "pbjson.h"
#include "progress.h"
#include "sample.h"
#include "saver.h"
#include "server.h"
#include "train.h"

enum { EXIT_FAILED = 1, EXIT_BAD_INPUT = 2, EXIT_DATA = 3, EXIT_INTERRUPTED = 130 };

static volatile sig_atomic_t interrupted;

static int *run_gpus; /* each replica's GPU (a GPU job's device count of them) */

static void on_signal(int sig) {
  (void)sig;
  interrupted = 1;
}

static int should_stop(void *user) {
  (void)user;
  return interrupted;
}

static void usage(FILE *f) {
  fputs("usage: traind [serve] [options]      run the daemon\n"
        "       traind run JOBFILE [options]   train one job in the foreground\n"
        "       traind sample CHECKPOINT [--prompt TEXT] [--tokens N]\n"
        "              [--temperature T] [--top-k K] [--seed S]\n"
        "                                      text from a language model's checkpoint\n"
        "       traind --version\n"
        "\n"
        "options (both):\n"
        "  --config FILE      daemon config file (YAML; see config/traind.yaml)\n"
        "  --data-dir DIR     a data root for dataset paths (repeatable;\n"
        "                     default: $TRAIND_DATA_DIR, then the config)\n"
        "  --cpu-devices N    CPU devices to offer (default 1)\n"
        "  --threads N        compute threads (default: run, one per core;\n"
        "                     serve, one per core but one)\n"
        "serve:\n"
        "  --listen ADDR      unix:/path or host:port (repeatable;\n"
        "                     default unix:/run/traind/traind.sock)\n"
        "  --state-dir DIR    job records (default /var/lib/traind)\n"
        "  --max-concurrent-jobs N\n"
        "  --metrics-retention N   step points kept per job (default 100000)\n"
        "  --log-level LEVEL  error, warn, info or debug\n"
        "  --metrics-listen HOST:PORT  Prometheus metrics over HTTP (off by default)\n"
        "run:\n"
        "  --json             print a JSON summary on stdout when done\n"
        "  --metrics FILE     write every step and epoch point as JSON lines\n"
        "  --checkpoint-dir DIR\n"
        "                     resume from the newest checkpoint in DIR, then write\n"
        "                     the job's periodic checkpoints there, one at the end\n"
        "                     and one when interrupted\n"
        "\n"
        "The daemon stops gracefully on SIGTERM or SIGINT and reloads its\n"
        "configuration on SIGHUP.\n",
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
  /* --checkpoint-dir: the job's checkpoints and what they wrote (written
   * by the writer thread while busy, read after the driver finished). */
  td_driver *drv;
  int ckpts, ckpt_failures;
  td_saver_result last_ckpt;
  char ckpt_error[TD_ERRMSG_MAX];
} run_report;

static void run_saved(void *user, const td_saver_result *r) {
  run_report *rep = user;
  if (r->rc) {
    rep->ckpt_failures++;
    snprintf(rep->ckpt_error, sizeof rep->ckpt_error, "%s", r->msg);
  } else {
    rep->ckpts++;
    rep->last_ckpt = *r;
  }
}

static void run_boundary(void *user, td_trainer *t) {
  run_report *r = user;
  td_error err = {0};
  if (td_driver_boundary(r->drv, t, &err))
    r->ckpt_failures++;
}

/* The job id `traind run` binds its checkpoints to: the directory holds
 * one job's run (a job file's name is free to change), so the spec hash
 * is what tells runs apart. */
#define RUN_JOB_ID "run"

/* --checkpoint-dir: starts the job's checkpoints and resumes from the
 * directory. */
static int run_checkpoints_start(run_report *r, td_driver *drv, td_trainer *t, const char *dir,
                                 double retry_sec, td_error *err) {
  td_driver_opts o = {.dir = dir,
                      .job_id = RUN_JOB_ID,
                      .final_retry_sec = retry_sec,
                      .give_up = should_stop,
                      .done = run_saved,
                      .user = r};
  td_driver_resumed res;
  int rc = td_driver_start(drv, t, &o, &res, err);
  if (rc)
    return rc;
  r->drv = drv;
  if (res.resumed)
    fprintf(stderr, "traind: resumed from %s/%s at step %lld\n", dir, res.file,
            (long long)t->st.step);
  if (res.note[0])
    fprintf(stderr, "traind: %s\n", res.note);
  return TD_OK;
}

/* The checkpoint at the end (or at the interruption: a shutdown), then
 * what was written. Returns the run's outcome, with the message in err. */
static int run_checkpoints_finish(run_report *r, td_trainer *t, int rc, td_error *err) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", r->drv->saver.dir);
  td_error warn = {0};
  rc = td_driver_finish(r->drv, t, rc, 1, err, &warn);
  if (warn.msg[0])
    fprintf(stderr, "traind: checkpoint failed: %s\n", warn.msg);
  if (r->ckpts)
    fprintf(stderr, "traind: %d checkpoint%s written to %s; the newest is %s (step %lld)\n",
            r->ckpts, r->ckpts == 1 ? "" : "s", dir, r->last_ckpt.name,
            (long long)r->last_ckpt.step);
  if (r->ckpt_failures)
    fprintf(stderr, "traind: %d checkpoint%s failed; the last error: %s\n", r->ckpt_failures,
            r->ckpt_failures == 1 ? "" : "s", r->ckpt_error);
  r->drv = NULL;
  return rc;
}

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
            ep->epoch, (long long)ep->step, ep->train_loss, ep->train_accuracy, ep->epoch_sec);
    if (ep->evaluated)
      fprintf(r->metrics, ",\"test_loss\":%.9g,\"test_accuracy\":%.9g", ep->test_loss,
              ep->test_accuracy);
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
            (long long)sp->step, sp->epoch, sp->loss, sp->grad_norm, sp->lr, sp->step_ms);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void print_summary(const td_trainer *t, const run_report *r, const td_epoch_point *last) {
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
         t->spec->name ? t->spec->name : "", r->n_epochs, (long long)t->st.step, t->batch,
         t->plan->n_params, t->compile_ms, t->plan_hit ? "true" : "false", t->load_sec);
  for (size_t i = 0; i < r->n_epochs; i++)
    printf("%s%.4f", i ? "," : "", r->epoch_sec[i]);
  printf("],\"steady_epoch_sec\":%.4f,\"steady_examples_per_sec\":%.1f,"
         "\"train_loss\":%.6f,\"train_accuracy\":%.6f,\"devices\":%d",
         steady, steady > 0 ? (double)t->steps_per_epoch * t->batch / steady : 0.0,
         last->train_loss, last->train_accuracy, t->n_rep);
  printf(",\"arena_bytes\":%zu,\"arena_unplanned_bytes\":%zu,\"step_flops\":%.6g",
         t->plan->arena_floats * sizeof(float), t->plan->unplanned_floats * sizeof(float),
         t->plan->flops);
  if (t->allreduce_steps)
    printf(",\"allreduce_ms_per_step\":%.4f", t->allreduce_sec * 1e3 / (double)t->allreduce_steps);
  if (last->evaluated)
    printf(",\"test_loss\":%.6f,\"test_accuracy\":%.6f", last->test_loss, last->test_accuracy);
  if (last->has_epsilon && isfinite(last->epsilon))
    printf(",\"dp_epsilon\":%.9g,\"dp_delta\":%.9g", last->epsilon, last->delta);
  if (t->dp_stop_steps >= 0 && t->st.step == t->dp_stop_steps)
    printf(",\"dp_stopped_at_target\":true");
  printf("}\n");
}

/* Command-line settings shared by `run` and `serve`; they override the
 * config file. */
typedef struct flags {
  const char *config_path;
  char **data_dirs, **listen;
  size_t n_data_dirs, n_listen;
  const char *state_dir, *log_level, *metrics_listen;
  long cpu_devices, threads, max_jobs, retention;
  int json;
  const char *metrics_path;
  char *env_copy; /* TRAIND_DATA_DIR, split in place */
  const char *ckpt_dir;
} flags;

static void flags_free(flags *f) {
  free(f->data_dirs);
  free(f->listen);
  free(f->env_copy);
}

enum {
  OPT_CONFIG = 256,
  OPT_DATA_DIR,
  OPT_CPU_DEVICES,
  OPT_THREADS,
  OPT_JSON,
  OPT_METRICS,
  OPT_LISTEN,
  OPT_STATE_DIR,
  OPT_MAX_JOBS,
  OPT_LOG_LEVEL,
  OPT_RETENTION,
  OPT_CKPT_DIR,
  OPT_METRICS_LISTEN
};

static int parse_count(const char *name, const char *arg, long *out) {
  char *end = NULL;
  long v = strtol(arg, &end, 10);
  if (!*arg || *end || v < 1 || v > 4096) {
    fprintf(stderr, "traind: --%s takes a whole number from 1 to 4096, got '%s'\n", name, arg);
    return -1;
  }
  *out = v;
  return 0;
}

/* Parses argv (argv[0] is the command name). serve: whether the daemon's
 * flags are allowed. Returns 0, 1 for --help (printed), -1 for bad usage. */
static int parse_flags(int argc, char **argv, int serve, flags *f) {
  static const struct option opts[] = {{"config", required_argument, 0, OPT_CONFIG},
                                       {"data-dir", required_argument, 0, OPT_DATA_DIR},
                                       {"cpu-devices", required_argument, 0, OPT_CPU_DEVICES},
                                       {"threads", required_argument, 0, OPT_THREADS},
                                       {"json", no_argument, 0, OPT_JSON},
                                       {"metrics", required_argument, 0, OPT_METRICS},
                                       {"listen", required_argument, 0, OPT_LISTEN},
                                       {"state-dir", required_argument, 0, OPT_STATE_DIR},
                                       {"max-concurrent-jobs", required_argument, 0, OPT_MAX_JOBS},
                                       {"log-level", required_argument, 0, OPT_LOG_LEVEL},
                                       {"metrics-retention", required_argument, 0, OPT_RETENTION},
                                       {"checkpoint-dir", required_argument, 0, OPT_CKPT_DIR},
                                       {"metrics-listen", required_argument, 0, OPT_METRICS_LISTEN},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  memset(f, 0, sizeof *f);
  f->data_dirs = calloc((size_t)argc + 64, sizeof *f->data_dirs);
  f->listen = calloc((size_t)argc + 1, sizeof *f->listen);
  if (!f->data_dirs || !f->listen)
    return -1;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int daemon_only = c == OPT_LISTEN || c == OPT_STATE_DIR || c == OPT_MAX_JOBS ||
                      c == OPT_LOG_LEVEL || c == OPT_RETENTION || c == OPT_METRICS_LISTEN;
    int run_only = c == OPT_JSON || c == OPT_METRICS || c == OPT_CKPT_DIR;
    if ((daemon_only && !serve) || (run_only && serve)) {
      fprintf(stderr, "traind: %s does not take --%s (see traind --help)\n", argv[0],
              argv[optind - 1] + 2);
      return -1;
    }
    switch (c) {
    case OPT_CONFIG:
      f->config_path = optarg;
      break;
    case OPT_DATA_DIR:
      f->data_dirs[f->n_data_dirs++] = optarg;
      break;
    case OPT_CPU_DEVICES:
      if (parse_count("cpu-devices", optarg, &f->cpu_devices))
        return -1;
      break;
    case OPT_THREADS:
      if (parse_count("threads", optarg, &f->threads))
        return -1;
      break;
    case OPT_MAX_JOBS:
      if (parse_count("max-concurrent-jobs", optarg, &f->max_jobs))
        return -1;
      break;
    case OPT_RETENTION: {
      char *end = NULL;
      long v = strtol(optarg, &end, 10);
      if (!*optarg || *end || v < 1 || v > 10000000) {
        fprintf(stderr,
                "traind: --metrics-retention takes a whole number from 1 to "
                "10000000, got '%s'\n",
                optarg);
        return -1;
      }
      f->retention = v;
      break;
    }
    case OPT_JSON:
      f->json = 1;
      break;
    case OPT_METRICS:
      f->metrics_path = optarg;
      break;
    case OPT_CKPT_DIR:
      f->ckpt_dir = optarg;
      break;
    case OPT_METRICS_LISTEN:
      f->metrics_listen = optarg;
      break;
    case OPT_LISTEN:
      f->listen[f->n_listen++] = optarg;
      break;
    case OPT_STATE_DIR:
      f->state_dir = optarg;
      break;
    case OPT_LOG_LEVEL:
      f->log_level = optarg;
      break;
    case 'h':
      usage(stdout);
      return 1;
    default:
      usage(stderr);
      return -1;
    }
  }
  /* Data roots: flags, else TRAIND_DATA_DIR (colon-separated), else the
   * config file. */
  const char *env = getenv("TRAIND_DATA_DIR");
  if (f->n_data_dirs == 0 && env && *env && (f->env_copy = strdup(env))) {
    for (char *save = NULL, *tok = strtok_r(f->env_copy, ":", &save);
         tok && f->n_data_dirs < (size_t)argc + 63; tok = strtok_r(NULL, ":", &save))
      f->data_dirs[f->n_data_dirs++] = tok;
  }
  return 0;
}

/* The config file with the flags applied; also the daemon's reload. */
static int build_config(void *arg, Traind__V1__DaemonConfig **out, td_error *err) {
  const flags *f = arg;
  Traind__V1__DaemonConfig *cfg = NULL;
  int rc = td_config_load(f->config_path, &cfg, err);
  if (!rc && f->n_data_dirs)
    rc = td_config_set_list(&cfg->data_dirs, &cfg->n_data_dirs, f->data_dirs, f->n_data_dirs, err);
  if (!rc && f->n_listen)
    rc = td_config_set_list(&cfg->listen, &cfg->n_listen, f->listen, f->n_listen, err);
  if (!rc && f->state_dir)
    rc = td_config_set_string(&cfg->state_dir, f->state_dir, err);
  if (!rc && f->log_level)
    rc = td_config_set_string(&cfg->log_level, f->log_level, err);
  if (!rc && f->metrics_listen)
    rc = td_config_set_string(&cfg->metrics_listen, f->metrics_listen, err);
  if (!rc) {
    if (f->cpu_devices)
      cfg->cpu_devices = (uint32_t)f->cpu_devices;
    if (f->threads)
      cfg->threads = (uint32_t)f->threads;
    if (f->max_jobs)
      cfg->max_concurrent_jobs = (uint32_t)f->max_jobs;
    if (f->retention)
      cfg->metrics_retention = (uint32_t)f->retention;
    rc = td_config_finish(cfg, err);
  }
  if (rc) {
    td_config_free(cfg);
    return rc;
  }
  *out = cfg;
  return TD_OK;
}

static int cmd_serve(int argc, char **argv) {
  flags f;
  int p = parse_flags(argc, argv, 1, &f);
  if (p || optind != argc) {
    if (!p)
      fprintf(stderr, "traind: serve takes no arguments, only options (see traind --help)\n");
    flags_free(&f);
    return p > 0 ? 0 : EXIT_BAD_INPUT;
  }
  td_server_opts o = {.load_config = build_config, .load_config_arg = &f};
  int rc = td_server_main(&o);
  flags_free(&f);
  return rc;
}

/* Refuses, before any data is loaded, a job whose host memory does not fit
 * the memory for jobs (memory_limit_bytes, else the cgroup limit or
 * MemAvailable: the daemon's admission, with no other job running), and a
 * GPU job whose buffers do not fit the free memory of its n GPUs
 * (run_gpus). Without --checkpoint-dir the job has no checkpoints. Sets
 * *refused when the job does not fit (exit status 2: nothing ran). */
static int run_check_memory(const Traind__V1__JobSpec *spec, const td_trainer_opts *o,
                            uint64_t limit_bytes, int gpu, int n, int checkpoints, int *refused,
                            td_error *err) {
  td_memory_limit lim;
  td_error lerr = {0};
  int have_limit = td_memory_limit_detect(limit_bytes, &lim, &lerr) == TD_OK;
  if (!have_limit)
    fprintf(stderr, "traind: the job's memory is not checked: %s\n", lerr.msg);
  td_admission a = {.mem = have_limit ? &lim : NULL,
                    .checkpoints = checkpoints,
                    .gpus = run_gpus,
                    .n_gpus = gpu ? n : 0};
  td_footprint fp;
  int rc = td_job_admit(spec, o, &a, &fp, err);
  *refused = rc == TD_ENOMEM;
  return rc;
}

static int cmd_run(int argc, char **argv) {
  flags f;
  int p = parse_flags(argc, argv, 0, &f);
  if (p) {
    flags_free(&f);
    return p > 0 ? 0 : EXIT_BAD_INPUT;
  }
  if (optind != argc - 1) {
    fprintf(stderr, "traind: run takes exactly one JOBFILE (see traind --help)\n");
    flags_free(&f);
    return EXIT_BAD_INPUT;
  }
  const char *job_path = argv[optind];
  const char *metrics_path = f.metrics_path;
  int json = f.json;

  td_error err = {0};
  Traind__V1__DaemonConfig *cfg = NULL;
  Traind__V1__JobSpec *spec = NULL;
  int rc = build_config(&f, &cfg, &err);
  if (!rc)
    rc = td_jobspec_load(job_path, &spec, &err);
  /* A missing or unreadable job or config file is bad input, not data. */
  int bad_input = rc != TD_OK;

  td_trainer t;
  td_driver drv;
  int have_trainer = 0;
  run_report report = {0};
  td_epoch_point last = {0};
  int final_lost = 0;
  if (!rc) {
    td_trainer_opts o = {.data_roots = (const char *const *)cfg->data_dirs,
                         .n_data_roots = cfg->n_data_dirs,
                         .threads = (int)cfg->threads};
    int need = td_job_device_count(spec);
    int gpu = spec->devices && spec->devices->kind && strcmp(spec->devices->kind, "gpu") == 0;
    char why[256];
    int n_gpus = gpu ? td_gpus_count(why, sizeof why) : 0;
    if (gpu && need > 0 && !(run_gpus = calloc((size_t)need, sizeof *run_gpus)))
      rc = td_errorf(&err, TD_ENOMEM, "out of memory");
    for (int i = 0; gpu && run_gpus && i < need; i++)
      run_gpus[i] = spec->devices->n_ids ? td_device_index(spec->devices->ids[i], "gpu") : i;
    if (gpu) {
      o.backend = td_gpu_backend;
      o.backend_arg = run_gpus;
      o.comm = td_gpu_comm();
      o.device_set = "gpu";
    }
    if (rc)
      ; /* out of memory above */
    else if (gpu && need > n_gpus)
      rc = td_errorf(&err, TD_EUNSUPPORTED, "devices: the job asks for %d GPU%s%s%s", need,
                     need == 1 ? "" : "s", n_gpus ? ", but this machine has fewer" : "; ",
                     n_gpus ? "" : why);
    else if (!gpu && need > (int)cfg->cpu_devices)
      rc = td_errorf(&err, TD_EINVAL,
                     "devices: the job asks for %d devices, but traind run offers %u; pass "
                     "--cpu-devices %d",
                     need, cfg->cpu_devices, need);
    else if (!(rc = run_check_memory(spec, &o, cfg->memory_limit_bytes, gpu, need,
                                     f.ckpt_dir != NULL, &bad_input, &err)))
      rc = td_trainer_init(&t, spec, &o, &err);
    have_trainer = rc == TD_OK;
  }
  if (!rc) {
    fprintf(stderr,
            "traind: job '%s': %zu parameters, %u steps/epoch x %u epochs, "
            "compiled in %.2f ms, data loaded in %.2f s\n",
            spec->name ? spec->name : "", t.plan->n_params, t.steps_per_epoch, t.epochs,
            t.compile_ms, t.load_sec);
    report.epoch_sec = calloc(t.epochs ? t.epochs : 1, sizeof *report.epoch_sec);
    if (metrics_path && !(report.metrics = fopen(metrics_path, "w")))
      rc = td_errorf(&err, TD_EINVAL, "--metrics %s: cannot create the file (%s)", metrics_path,
                     strerror(errno));
    if (!rc && f.ckpt_dir)
      rc = run_checkpoints_start(&report, &drv, &t, f.ckpt_dir, cfg->final_checkpoint_retry_sec,
                                 &err);
    else if (!rc && spec->checkpoint &&
             (spec->checkpoint->every_steps || spec->checkpoint->every_seconds))
      fprintf(stderr, "traind: the job's periodic checkpoints are written only with "
                      "--checkpoint-dir DIR\n");
  }
  if (!rc) {
    td_progress_init(&report.progress, stderr);
    td_train_hooks hooks = {.user = &report,
                            .on_step = report_step,
                            .on_epoch = report_epoch,
                            .at_boundary = report.drv ? run_boundary : NULL,
                            .should_stop = should_stop};
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    rc = report.epoch_sec ? td_trainer_run(&t, &hooks, &last, &err)
                          : td_errorf(&err, TD_ENOMEM, "out of memory");
    if (report.progress.drawn)
      fputc('\n', stderr);
    int trained = rc == TD_OK;
    if (report.drv)
      rc = run_checkpoints_finish(&report, &t, rc, &err);
    /* Training that is done but not on disk is a failed run, whatever the
     * write's error. */
    final_lost = trained && rc != TD_OK && rc != TD_ECANCELLED;
    if (!rc && t.dp_stop_steps >= 0 && t.st.step == t.dp_stop_steps) {
      char note[TD_ERRMSG_MAX];
      td_trainer_dp_note(&t, note, sizeof note);
      fprintf(stderr, "traind: %s\n", note);
    }
    if (!rc && json)
      print_summary(&t, &report, &last);
  }
  if (rc)
    fprintf(stderr, "traind: %s\n", err.msg);
  if (report.drv)
    td_driver_stop(report.drv);
  if (have_trainer)
    td_trainer_free(&t);
  free(report.epoch_sec);
  free(run_gpus);
  if (report.metrics && fclose(report.metrics) != 0 && !rc) {
    fprintf(stderr, "traind: --metrics %s: write failed\n", metrics_path);
    rc = TD_EIO;
  }
  td_jobspec_free(spec);
  td_config_free(cfg);
  flags_free(&f);
  return rc ? (bad_input ? EXIT_BAD_INPUT : final_lost ? EXIT_FAILED : exit_for(rc)) : 0;
}

/* traind sample CHECKPOINT: text from a checkpoint file (an exported one,
 * for example), printed on stdout. */
static int cmd_sample(int argc, char **argv) {
  static const struct option opts[] = {
      {"prompt", required_argument, NULL, 'p'},      {"tokens", required_argument, NULL, 'n'},
      {"temperature", required_argument, NULL, 't'}, {"top-k", required_argument, NULL, 'k'},
      {"seed", required_argument, NULL, 's'},        {NULL, 0, NULL, 0}};
  td_sample_opts o = {.prompt = "\n", .tokens = 200, .temperature = 1.0};
  int c;
  char *end = NULL;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    errno = 0;
    switch (c) {
    case 'p':
      o.prompt = optarg;
      break;
    case 'n':
      o.tokens = (uint32_t)strtoul(optarg, &end, 10);
      break;
    case 't':
      o.temperature = strtod(optarg, &end);
      break;
    case 'k':
      o.top_k = (uint32_t)strtoul(optarg, &end, 10);
      break;
    case 's':
      o.seed = strtoull(optarg, &end, 10);
      break;
    default:
      fprintf(stderr, "traind sample: see traind --help\n");
      return EXIT_BAD_INPUT;
    }
    if (c != 'p' && (errno || !end || *end || end == optarg)) {
      fprintf(stderr, "traind sample: '%s' is not a number\n", optarg);
      return EXIT_BAD_INPUT;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "usage: traind sample CHECKPOINT [--prompt TEXT] [--tokens N] "
                    "[--temperature T] [--top-k K] [--seed S]\n");
    return EXIT_BAD_INPUT;
  }
  td_error err = {0};
  td_sampler *s = NULL;
  char *text = NULL;
  int rc = td_sampler_open(argv[optind], &s, &err);
  if (!rc)
    rc = td_sampler_run(s, &o, &text, &err);
  td_sampler_free(s);
  if (rc) {
    fprintf(stderr, "traind sample: %s\n", err.msg);
    return rc == TD_ENOTFOUND || rc == TD_EIO ? EXIT_DATA : EXIT_BAD_INPUT;
  }
  fputs(text, stdout);
  fputc('\n', stdout);
  free(text);
  return 0;
}

int main(int argc, char **argv) {
  /* Writes past RLIMIT_FSIZE fail with EFBIG instead of killing us. */
  signal(SIGXFSZ, SIG_IGN);
  if (argc < 2)
    return cmd_serve(argc, argv);
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
  if (strcmp(argv[1], "serve") == 0)
    return cmd_serve(argc - 1, argv + 1);
  if (strcmp(argv[1], "sample") == 0)
    return cmd_sample(argc - 1, argv + 1);
  if (argv[1][0] == '-')
    return cmd_serve(argc, argv); /* `traind --listen ...` is serve */
  fprintf(stderr, "traind: unknown command '%s' (see traind --help)\n", argv[1]);
  return EXIT_BAD_INPUT;
}
