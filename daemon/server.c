/* The daemon's lifecycle: its start (config, devices, the job records left
 * by a previous run, the listeners), the Prometheus publisher, SIGHUP's
 * reload, the graceful stop on SIGTERM/SIGINT; and the small helpers the
 * other parts share (see state.h for the map). */
#include "state.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "gpus.h"
#include "log.h"
#include "sdnotify.h"

#define FLUSH_MS 50
/* The largest request the daemon reads (a SubmitJob of a 1 MiB spec fits,
 * with room to say by how much a larger spec is over), and the largest
 * reply it sends: a client's default receive limit (docs/operations.md). */
#define MAX_REQUEST_BYTES ((size_t)2 << 20)
#define MAX_REPLY_BYTES ((size_t)4 << 20)

/* ---- shared helpers */

void srv_save_job(td_server *s, td_job *j) {
  td_error err = {0};
  if (td_job_save(j, s->cfg->state_dir, &err))
    td_log_error("cannot save job record", "job=%s err=\"%s\"", j->id, err.msg);
}

td_job *srv_find_job(td_server *s, const char *id) {
  for (size_t i = 0; i < s->n_jobs; i++)
    if (strcmp(s->jobs[i]->id, id) == 0)
      return s->jobs[i];
  return NULL;
}

/* The answer to a request whose job id find_job did not find: a malformed
 * id (td_job_id_valid) is INVALID_ARGUMENT, a well-formed one NOT_FOUND. */
void srv_fail_not_found(td_rpc_call *call, const char *id) {
  char msg[256], shown[48];
  size_t k = 0;
  for (const char *c = id ? id : ""; *c && k < 40; c++)
    shown[k++] = *c >= 0x20 && *c < 0x7f && *c != '\'' ? *c : '?';
  shown[k] = 0;
  if (!id || !*id) {
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT,
                "id: required (a job id like j-0123456789abcd; list jobs with trainctl list)");
  } else if (!td_job_id_valid(id)) {
    snprintf(msg, sizeof msg,
             "id: '%s%s' is not a job id (j- and up to 29 of [0-9a-z], like "
             "j-0123456789abcd); list jobs with trainctl list",
             shown, id[k] ? "..." : "");
    td_rpc_fail(call, TD_GRPC_INVALID_ARGUMENT, msg);
  } else {
    snprintf(msg, sizeof msg, "no job with id '%s'; list jobs with trainctl list", id);
    td_rpc_fail(call, TD_GRPC_NOT_FOUND, msg);
  }
}

int srv_job_allowed(td_server *s, td_rpc_call *call, const td_job *j, td_job_action action) {
  char why[512];
  int code = td_auth_job(s->auth, call, j->id, j->owner, action, why, sizeof why);
  if (code == TD_GRPC_OK)
    return 1;
  td_log_info("call refused", "job=%s principal=%s code=%s", j->id,
              td_rpc_identity(call, NULL) ? td_rpc_identity(call, NULL) : "",
              td_grpc_code_name(code));
  td_rpc_fail(call, code, why);
  return 0;
}

td_job *srv_job_for(td_server *s, td_rpc_call *call, const char *id, td_job_action action) {
  td_job *j = srv_find_job(s, id);
  if (!j) {
    srv_fail_not_found(call, id);
    return NULL;
  }
  return srv_job_allowed(s, call, j, action) ? j : NULL;
}

int srv_job_roots(const td_server *s, const char *owner, char ***roots, size_t *n) {
  return srv_job_roots_narrowed(s, owner, roots, n, NULL);
}

int srv_job_roots_narrowed(const td_server *s, const char *owner, char ***roots, size_t *n,
                           int *narrowed) {
  const char *const *mine = NULL;
  size_t k = 0;
  int own = td_auth_roots(s->auth, owner, &mine, &k);
  if (narrowed)
    *narrowed = own;
  if (!own) {
    mine = (const char *const *)s->cfg->data_dirs;
    k = s->cfg->n_data_dirs;
  }
  *n = 0;
  *roots = calloc(k ? k : 1, sizeof **roots);
  if (!*roots)
    return -1;
  for (size_t i = 0; i < k; i++) {
    if (!((*roots)[i] = strdup(mine[i]))) {
      for (size_t j = 0; j < i; j++)
        free((*roots)[j]);
      free(*roots);
      *roots = NULL;
      return -1;
    }
    *n = i + 1;
  }
  return 0;
}

/* ---------------------------------------------------------- metrics */

static void on_rpc_end(void *arg, const char *method, int code, double sec) {
  td_server *s = arg;
  if (s->prom_on)
    td_exporter_rpc(&s->prom, method, code, sec);
}

static void prom_publish(td_server *s) {
  td_exporter_view v = {.jobs = s->jobs,
                        .n_jobs = s->n_jobs,
                        .n_devices = s->n_devices,
                        .device_owner = s->device_owner,
                        .uptime_sec = (double)(td_wall_ns() - s->started_ns) / 1e9,
                        .version = TRAIND_VERSION,
                        .insecure = s->insecure_shown,
                        .n_insecure = s->n_insecure_shown};
  pthread_mutex_lock(&s->cache.mu);
  v.cache_entries = s->cache.n_entries;
  v.cache_hits = s->cache.hits;
  v.cache_misses = s->cache.misses;
  pthread_mutex_unlock(&s->cache.mu);
  td_error err = {0};
  if (td_exporter_publish(&s->prom, &v, &err))
    td_log_warn("metrics rendering failed", "err=\"%s\"", err.msg);
}

static void on_prom_timer(uv_timer_t *t) { prom_publish(t->data); }

/* ------------------------------------------------------- lifecycle */

static void on_closed(uv_handle_t *h) { (void)h; }

static void on_rpc_down(void *arg) {
  td_server *s = arg;
  s->rpc_down = 1;
  /* The stop is under way and cannot be undone: a further SIGTERM or
   * SIGINT (a second `systemctl stop`, a second ^C) no longer kills the
   * process halfway through its cleanup. */
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  if (s->prom_on) {
    td_exporter_stop(&s->prom);
    s->prom_on = 0;
  }
  uv_close((uv_handle_t *)&s->sig_term, on_closed);
  uv_close((uv_handle_t *)&s->sig_int, on_closed);
  uv_close((uv_handle_t *)&s->sig_hup, on_closed);
  uv_close((uv_handle_t *)&s->flush, on_closed);
  uv_close((uv_handle_t *)&s->stop_timer, on_closed);
  uv_close((uv_handle_t *)&s->prom_timer, on_closed);
  uv_close((uv_handle_t *)&s->watchdog, on_closed);
  uv_close((uv_handle_t *)&s->wake, on_closed);
}

void srv_maybe_finish_shutdown(td_server *s) {
  if (s->draining != 1 || s->running > 0)
    return;
  /* Streams end first, then the server. */
  for (size_t i = 0; i < s->n_jobs; i++) {
    td_watch *w = s->jobs[i]->watchers;
    while (w) {
      td_watch *next = w->next;
      td_rpc_finish(w->call, TD_GRPC_UNAVAILABLE, "the daemon is shutting down");
      srv_drop_watch(s, w);
      w = next;
    }
  }
  td_health_free(s->health);
  s->health = NULL;
  td_log_info("stopping the rpc server", NULL);
  s->draining = 2;
  td_rpc_server_shutdown(s->rpc, on_rpc_down, s); /* freed after the loop */
}

/* The stop timeout: jobs that have not reached a boundary and saved by now
 * resume from their previous checkpoints at the next start. */
static void on_stop_timeout(uv_timer_t *t) {
  td_server *s = t->data;
  td_log_error("stop timeout: exiting with jobs still running; they resume from their "
               "previous checkpoints at the next start",
               "running=%d stop_timeout_sec=%u", s->running, s->cfg->stop_timeout_sec);
  _exit(1);
}

/* systemd's watchdog: a keep-alive from the loop, so that a loop that
 * stops turning gets the daemon restarted. */
static void on_watchdog(uv_timer_t *t) {
  (void)t;
  td_sd_watchdog_ping();
}

static void on_stop_signal(uv_signal_t *h, int signum) {
  td_server *s = h->data;
  if (s->draining)
    return;
  td_sd_stopping();
  td_log_info("draining: no new jobs; running jobs stop at their next step", "signal=%s running=%d",
              signum == SIGTERM ? "SIGTERM" : "SIGINT", s->running);
  s->draining = 1;
  if (s->running)
    uv_timer_start(&s->stop_timer, on_stop_timeout, (uint64_t)s->cfg->stop_timeout_sec * 1000, 0);
  td_health_set(s->health, "", TD_HEALTH_NOT_SERVING);
  td_health_set(s->health, TRAINER_SERVICE, TD_HEALTH_NOT_SERVING);
  for (size_t i = 0; i < s->n_jobs; i++)
    if (s->jobs[i]->state == TRAIND__V1__JOB_STATE__RUNNING) {
      int expected = TD_STOP_NONE;
      atomic_compare_exchange_strong(&s->jobs[i]->stop, &expected, TD_STOP_SHUTDOWN);
    }
  srv_maybe_finish_shutdown(s);
}

/* The memory for jobs, from the config or the machine (td_memory_limit_detect). */
static void mem_limit_update(td_server *s) {
  td_error err = {0};
  s->mem_on = td_memory_limit_detect(s->cfg->memory_limit_bytes, &s->mem, &err) == TD_OK;
  if (s->mem_on)
    td_log_info("memory for jobs", "bytes=%zu source=\"%s\"", s->mem.bytes, s->mem.source);
  else
    td_log_warn("jobs' memory is not checked", "err=\"%s\"", err.msg);
}

static void on_hup(uv_signal_t *h, int signum) {
  (void)signum;
  td_server *s = h->data;
  Traind__V1__DaemonConfig *fresh = NULL;
  td_error err = {0};
  td_sd_reloading();
  if (s->opts->load_config(s->opts->load_config_arg, &fresh, &err)) {
    td_log_error("reload failed; keeping the current configuration", "err=\"%s\"", err.msg);
    td_sd_reloaded();
    return;
  }
  Traind__V1__DaemonConfig *old = s->cfg;
  /* Tokens, principals and roles change now; a token file that does not
   * load keeps the whole configuration as it was. */
  td_auth *auth = NULL;
  if (td_auth_load(&auth, fresh, &err)) {
    td_log_error("reload failed; keeping the current configuration", "err=\"%s\"", err.msg);
    td_config_free(fresh);
    td_sd_reloaded();
    return;
  }
  /* TLS listeners read their certificate files again: the next
   * handshakes use them. */
  if (td_rpc_server_reload_tls(s->rpc, &err))
    td_log_error("TLS certificates not reloaded; the listeners keep the previous ones",
                 "err=\"%s\"", err.msg);
  td_auth_free(s->auth);
  s->auth = auth;
  /* These need a restart: keep the running values. */
  if (fresh->cpu_devices != old->cpu_devices || fresh->threads != old->threads ||
      strcmp(fresh->state_dir, old->state_dir) != 0 || fresh->n_listen != old->n_listen ||
      fresh->n_listeners != old->n_listeners)
    td_log_warn("listen, listeners, health_listen, state_dir, cpu_devices and threads change "
                "only at restart",
                NULL);
  fresh->cpu_devices = old->cpu_devices;
  fresh->threads = old->threads;
  char *keep_state = fresh->state_dir;
  fresh->state_dir = old->state_dir;
  old->state_dir = keep_state;
  int level = td_log_parse_level(fresh->log_level);
  if (level >= 0)
    td_log_set_level((td_log_level)level);
  s->cfg = fresh;
  td_config_free(old);
  mem_limit_update(s);
  td_log_info("configuration reloaded",
              "max_concurrent_jobs=%u data_dirs=%zu log_level=%s tokens=%zu", srv_max_jobs(s),
              fresh->n_data_dirs, fresh->log_level, td_auth_tokens(s->auth));
  td_sd_reloaded();
  srv_schedule(s);
}

static int add_job_sorted(td_server *s, td_job *j) {
  if (s->n_jobs == s->cap_jobs) {
    size_t cap = s->cap_jobs ? s->cap_jobs * 2 : 64;
    td_job **nj = realloc(s->jobs, cap * sizeof *nj);
    if (!nj)
      return -1;
    s->jobs = nj;
    s->cap_jobs = cap;
  }
  size_t i = s->n_jobs;
  while (i > 0 && s->jobs[i - 1]->created_ns > j->created_ns) {
    s->jobs[i] = s->jobs[i - 1];
    i--;
  }
  s->jobs[i] = j;
  s->n_jobs++;
  return 0;
}

static void warn_record(const td_job_bad *b) {
  if (b->job)
    td_log_warn("job record not valid: set aside, the job is listed FAILED",
                "file=jobs/%s job=%s aside=jobs/%s problem=\"%s\"", b->file, b->job, b->aside,
                b->why);
  else
    td_log_warn("skipping a job record", "file=jobs/%s aside=%s%s problem=\"%s\"", b->file,
                b->aside ? "jobs/" : "", b->aside ? b->aside : "(could not rename)", b->why);
}

/* UTC as 2024-05-01T12:00:00Z; "-" for 0. */
static void utc_text(int64_t ns, char *buf, size_t len) {
  time_t t = (time_t)(ns / 1000000000);
  struct tm tm;
  if (!ns || !gmtime_r(&t, &tm) || !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(buf, len, "-");
}

/* Crash-loop protection: a record that says RUNNING is a run the daemon
 * did not see end (it was killed, crashed or ran out of memory). After
 * job_crash_limit of them with no new checkpoint in between, the job fails
 * instead of taking the daemon down again. Returns whether it failed. */
static int count_crash(td_server *s, td_job *j) {
  j->crashes++;
  if (j->crashes < s->cfg->job_crash_limit)
    return 0;
  char started[32], at[32], last[400], msg[TD_ERRMSG_MAX];
  utc_text(j->started_ns, started, sizeof started);
  if (j->ckpt.file[0]) {
    utc_text(j->ckpt.time_ns, at, sizeof at);
    snprintf(last, sizeof last, "run started %s, checkpoint %s at step %lld (%s)", started,
             j->ckpt.file, (long long)j->ckpt.step, at);
  } else {
    snprintf(last, sizeof last, "run started %s, no checkpoint written", started);
  }
  td_metrics_latest l;
  td_metrics_latest_get(&j->metrics, &l);
  snprintf(msg, sizeof msg,
           "the daemon stopped %u time%s while running this job; last: %s; step %lld "
           "recorded. It is not run again (job_crash_limit %u): see the daemon's and the "
           "kernel's log for why (out of memory?), then submit it again",
           j->crashes, j->crashes == 1 ? "" : "s", last, (long long)l.step,
           s->cfg->job_crash_limit);
  td_log_error("job failed: the daemon stopped while running it too often", "job=%s crashes=%u",
               j->id, j->crashes);
  srv_finish_job(s, j, TRAIND__V1__JOB_STATE__FAILED, TD_GRPC_ABORTED, msg);
  return 1;
}

static int load_jobs(td_server *s, td_error *err) {
  td_job **loaded = NULL;
  size_t n = 0;
  int rc = td_job_load_all(s->cfg->state_dir, &loaded, &n, warn_record, err);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++)
    if (add_job_sorted(s, loaded[i]) != 0) {
      for (size_t k = i; k < n; k++)
        td_job_free(loaded[k]);
      free(loaded);
      return td_errorf(err, TD_ENOMEM, "out of memory loading job records");
    }
  free(loaded);
  /* Submission order follows creation; unfinished jobs run again. */
  for (size_t i = 0; i < s->n_jobs; i++) {
    td_job *j = s->jobs[i];
    j->seq = s->next_seq++;
    if (j->state == TRAIND__V1__JOB_STATE__RUNNING && count_crash(s, j))
      continue;
    if (j->state == TRAIND__V1__JOB_STATE__RUNNING || j->state == TRAIND__V1__JOB_STATE__QUEUED) {
      if (j->state == TRAIND__V1__JOB_STATE__RUNNING) {
        td_log_info("job was running when the daemon stopped; queued again", "job=%s crashes=%u",
                    j->id, j->crashes);
        j->interrupted = 1;
      }
      j->state = TRAIND__V1__JOB_STATE__QUEUED;
      j->started_ns = 0;
      td_metrics_latest zero = {0};
      td_metrics_latest_set(&j->metrics, &zero);
      srv_save_job(s, j);
    }
  }
  /* Checkpoint writes a stop interrupted left temporaries; the checkpoints
   * before them stand. */
  int cleaned = 0;
  for (size_t i = 0; i < s->n_jobs; i++) {
    char dir[4096];
    td_job_ckpt_dir(s->jobs[i], s->cfg->state_dir, dir, sizeof dir);
    int removed = td_ckpt_clean(dir);
    cleaned += removed > 0 ? removed : 0;
  }
  td_log_info("job records loaded", "jobs=%zu state_dir=%s checkpoint_temporaries_removed=%d",
              s->n_jobs, s->cfg->state_dir, cleaned);
  return TD_OK;
}

static void free_server(td_server *s) {
  for (size_t i = 0; i < s->n_jobs; i++)
    td_job_free(s->jobs[i]);
  free(s->jobs);
  free(s->device_owner);
  free(s->gpu_owner);
  for (size_t i = 0; i < s->n_listen_shown; i++)
    free(s->listen_shown[i]);
  free(s->listen_shown);
  for (size_t i = 0; i < s->n_insecure_shown; i++)
    free(s->insecure_shown[i]);
  free(s->insecure_shown);
  td_auth_free(s->auth);
  event *e = s->ev_head;
  while (e) {
    event *next = e->next;
    free(e);
    e = next;
  }
  pthread_mutex_destroy(&s->ev_mu);
  td_plan_cache_free(&s->cache);
  td_config_free(s->cfg);
  free(s->submit_gate);
}

/* Connections, job files and checkpoints all take file descriptors: the
 * soft limit goes up to the hard one, and a max_connections that leaves
 * little for the rest is reported. */
static void raise_fd_limit(uint32_t max_connections) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      rl.rlim_cur = was;
  }
  if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)max_connections + 256 > rl.rlim_cur)
    td_log_warn("max_connections leaves few file descriptors for jobs and checkpoints",
                "max_connections=%u nofile=%llu", max_connections, (unsigned long long)rl.rlim_cur);
}

/* Every address the rpc server binds: `listen` (plaintext), `listeners`,
 * then health_listen; rows point into the config. */
typedef struct srv_listen {
  const char **addrs;
  td_rpc_listen_opts *opts;
  td_rpc_tls *tls;
  size_t n, n_api; /* all; those that serve the API (not health_listen) */
} srv_listen;

static void srv_listen_free(srv_listen *l) {
  free(l->addrs);
  free(l->opts);
  free(l->tls);
}

static int srv_listen_build(const Traind__V1__DaemonConfig *c, srv_listen *l) {
  size_t n = c->n_listen + c->n_listeners + 1;
  memset(l, 0, sizeof *l);
  l->addrs = calloc(n, sizeof *l->addrs);
  l->opts = calloc(n, sizeof *l->opts);
  l->tls = calloc(n, sizeof *l->tls);
  if (!l->addrs || !l->opts || !l->tls)
    return -1;
  for (size_t i = 0; i < c->n_listen; i++)
    l->addrs[l->n++] = c->listen[i];
  for (size_t i = 0; i < c->n_listeners; i++) {
    const Traind__V1__Listener *x = c->listeners[i];
    td_rpc_listen_opts *o = &l->opts[l->n];
    o->insecure = x->insecure;
    if (x->tls) {
      td_rpc_tls *t = &l->tls[l->n];
      /* td_config_finish filled in the default and checked the value. */
      const char *cc = x->tls->client_cert;
      t->cert_file = x->tls->cert_file;
      t->key_file = x->tls->key_file;
      t->client_ca_file =
          x->tls->client_ca_file && *x->tls->client_ca_file ? x->tls->client_ca_file : NULL;
      t->client_cert = strcmp(cc, "require") == 0   ? TD_RPC_CLIENT_CERT_REQUIRE
                       : strcmp(cc, "request") == 0 ? TD_RPC_CLIENT_CERT_REQUEST
                                                    : TD_RPC_CLIENT_CERT_NONE;
      o->tls = t;
    }
    l->addrs[l->n++] = x->address;
  }
  l->n_api = l->n;
  if (c->health_listen && *c->health_listen) {
    l->opts[l->n].health_only = 1;
    l->addrs[l->n++] = c->health_listen;
  }
  return 0;
}

/* An address as bound ("127.0.0.1:0" becomes the chosen port). */
static char *bound_addr(td_server *s, const char *a, size_t i) {
  int port = td_rpc_server_port(s->rpc, i);
  const char *colon = strrchr(a, ':');
  char buf[512];
  if (port > 0 && colon && strncmp(a, "unix:", 5) != 0)
    snprintf(buf, sizeof buf, "%.*s:%d", (int)(colon - a), a, port);
  else
    snprintf(buf, sizeof buf, "%s", a);
  return strdup(buf);
}

static int show_listen(td_server *s, const srv_listen *l) {
  s->listen_shown = calloc(l->n_api ? l->n_api : 1, sizeof *s->listen_shown);
  s->insecure_shown = calloc(l->n_api ? l->n_api : 1, sizeof *s->insecure_shown);
  if (!s->listen_shown || !s->insecure_shown)
    return -1;
  for (size_t i = 0; i < l->n_api; i++) {
    if (!(s->listen_shown[i] = bound_addr(s, l->addrs[i], i)))
      return -1;
    s->n_listen_shown = i + 1;
    if (l->opts[i].insecure) {
      if (!(s->insecure_shown[s->n_insecure_shown] = strdup(s->listen_shown[i])))
        return -1;
      s->n_insecure_shown++;
    }
  }
  return 0;
}

int td_server_main(const td_server_opts *opts) {
  td_server *s = calloc(1, sizeof *s);
  if (!s)
    return 1;
  s->opts = opts;
  td_error err = {0};
  if (opts->load_config(opts->load_config_arg, &s->cfg, &err)) {
    fprintf(stderr, "traind: %s\n", err.msg);
    free(s);
    return 2;
  }
  int level = td_log_parse_level(s->cfg->log_level);
  td_log_set_level(level >= 0 ? (td_log_level)level : TD_LOG_INFO);
  s->started_ns = td_wall_ns();
  s->n_devices = (int)s->cfg->cpu_devices;
  /* Automatic: every core but one, which stays free for the loop, the rpc
   * thread and gRPC's own; compute threads that share their cores with
   * request handling stall at every BLAS barrier (docs/BENCHMARKS.md). */
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  s->threads = s->cfg->threads ? s->cfg->threads : (uint32_t)(cores > 1 ? cores - 1 : 1);
  s->device_owner = calloc((size_t)s->n_devices, sizeof *s->device_owner);
  s->n_gpus = td_gpus_count(s->gpu_why, sizeof s->gpu_why);
  s->gpu_owner = calloc((size_t)(s->n_gpus ? s->n_gpus : 1), sizeof *s->gpu_owner);
  mem_limit_update(s);
  const char *gate = getenv("TRAIND_TEST_SUBMIT_GATE");
  if (gate && *gate) {
    s->submit_gate = strdup(gate);
    td_log_warn("testing: submissions wait while this file exists", "file=%s", gate);
  }
  pthread_mutex_init(&s->ev_mu, NULL);
  td_plan_cache_init(&s->cache);
  int exit_code = 0;
  /* Job records, checkpoints and event files admit the daemon's user and
   * group only (docs/security.md): other users of the machine read jobs'
   * data only through the API, which checks who they are. */
  umask(027);
  if (!s->device_owner || !s->gpu_owner || load_jobs(s, &err)) {
    fprintf(stderr, "traind: %s\n", err.msg[0] ? err.msg : "out of memory");
    free_server(s);
    free(s);
    return 1;
  }

  struct stat sd;
  if (stat(s->cfg->state_dir, &sd) == 0 && (sd.st_mode & 0007))
    td_log_warn("state_dir can be read by every user of this machine (job records and "
                "checkpoints); chmod o-rwx it",
                "state_dir=%s mode=%o", s->cfg->state_dir, (unsigned)(sd.st_mode & 0777));
  uv_loop_init(&s->loop);
  uv_async_init(&s->loop, &s->wake, srv_on_wake);
  s->wake.data = s;
  uv_timer_init(&s->loop, &s->flush);
  s->flush.data = s;
  uv_timer_start(&s->flush, srv_on_flush_timer, FLUSH_MS, FLUSH_MS);
  uv_timer_init(&s->loop, &s->stop_timer);
  s->stop_timer.data = s;
  uv_timer_init(&s->loop, &s->prom_timer);
  s->prom_timer.data = s;
  uv_timer_init(&s->loop, &s->watchdog);
  uv_signal_init(&s->loop, &s->sig_term);
  uv_signal_init(&s->loop, &s->sig_int);
  uv_signal_init(&s->loop, &s->sig_hup);
  s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
  uv_signal_start(&s->sig_term, on_stop_signal, SIGTERM);
  uv_signal_start(&s->sig_int, on_stop_signal, SIGINT);
  uv_signal_start(&s->sig_hup, on_hup, SIGHUP);

  s->health = td_health_new();
  td_rpc_method methods[SRV_N_TRAINER + 2];
  for (size_t i = 0; i < SRV_N_TRAINER; i++) {
    methods[i] = srv_trainer_methods[i];
    methods[i].ctx = s;
  }
  td_health_methods(s->health, methods + SRV_N_TRAINER);
  raise_fd_limit(s->cfg->max_connections);
  srv_listen ls;
  if (srv_listen_build(s->cfg, &ls) || td_auth_load(&s->auth, s->cfg, &err)) {
    fprintf(stderr, "traind: %s\n", err.msg[0] ? err.msg : "out of memory");
    exit_code = 2;
  }
  td_rpc_server_opts ro = {.listen = ls.addrs,
                           .n_listen = ls.n,
                           .listen_opts = ls.opts,
                           .authorize = td_auth_authorize,
                           .authorize_arg = &s->auth,
                           .methods = methods,
                           .n_methods = SRV_N_TRAINER + 2,
                           .max_request_bytes = MAX_REQUEST_BYTES,
                           .max_reply_bytes = MAX_REPLY_BYTES,
                           .max_connections = s->cfg->max_connections,
                           .connection_idle_ms = s->cfg->connection_idle_sec * 1000u,
                           .on_end = on_rpc_end,
                           .on_end_arg = s};
  int prom_rc = TD_OK;
  if (s->cfg->metrics_listen && *s->cfg->metrics_listen) {
    prom_rc = td_exporter_start(&s->prom, s->cfg->metrics_listen, &err);
    s->prom_on = prom_rc == TD_OK;
  }
  if (exit_code || prom_rc || !s->health || td_rpc_server_start(&s->rpc, &s->loop, &ro, &err) ||
      show_listen(s, &ls)) {
    if (s->prom_on) {
      td_exporter_stop(&s->prom);
      s->prom_on = 0;
    }
    if (!exit_code)
      fprintf(stderr, "traind: %s\n", err.msg[0] ? err.msg : "out of memory");
    exit_code = exit_code ? exit_code : 1;
    s->draining = 1;
    td_health_free(s->health);
    s->health = NULL;
    s->draining = 2;
    if (s->rpc) {
      td_rpc_server_shutdown(s->rpc, on_rpc_down, s);
    } else {
      on_rpc_down(s);
    }
  } else {
    for (size_t i = 0; i < s->n_listen_shown; i++)
      td_log_info("listening", "addr=%s tls=%s", s->listen_shown[i],
                  ls.opts[i].tls
                      ? (ls.tls[i].client_cert == TD_RPC_CLIENT_CERT_REQUIRE ? "mutual" : "server")
                      : "off");
    for (size_t i = 0; i < s->n_insecure_shown; i++)
      td_log_warn("insecure listener: plaintext on a network address; anyone who can reach it "
                  "may do everything an admin may",
                  "addr=%s", s->insecure_shown[i]);
    for (size_t i = ls.n_api; i < ls.n; i++) {
      char *h = bound_addr(s, ls.addrs[i], i);
      td_log_info("health listening", "addr=%s service=grpc.health.v1.Health", h ? h : ls.addrs[i]);
      free(h);
    }
    if (td_auth_tokens(s->auth))
      td_log_info("bearer tokens loaded", "tokens=%zu", td_auth_tokens(s->auth));
    if (s->prom_on) {
      td_log_info("metrics listening", "addr=%s port=%d path=/metrics", s->cfg->metrics_listen,
                  td_exporter_port(&s->prom));
      prom_publish(s);
      uv_timer_start(&s->prom_timer, on_prom_timer, 1000, 1000);
    }
    td_log_info("traind ready", "version=%s cpu_devices=%d gpus=%d threads=%u data_dirs=%zu",
                TRAIND_VERSION, s->n_devices, s->n_gpus, s->threads, s->cfg->n_data_dirs);
    if (!s->n_gpus)
      td_log_info("no GPUs: GPU jobs are refused", "why=\"%s\"", s->gpu_why);
    td_health_set(s->health, "", TD_HEALTH_SERVING);
    td_health_set(s->health, TRAINER_SERVICE, TD_HEALTH_SERVING);
    char status[160];
    snprintf(status, sizeof status, "serving on %s; %d CPU device%s", s->listen_shown[0],
             s->n_devices, s->n_devices == 1 ? "" : "s");
    td_sd_ready(status);
    uint64_t wd_usec = 0;
    if (td_sd_watchdog_usec(&wd_usec) > 0 && wd_usec) {
      uint64_t ms = wd_usec / 2000 ? wd_usec / 2000 : 1;
      uv_timer_start(&s->watchdog, on_watchdog, ms, ms);
      td_log_info("systemd watchdog", "interval_ms=%llu", (unsigned long long)(wd_usec / 1000));
    }
    srv_schedule(s);
  }
  srv_listen_free(&ls); /* the rpc server keeps copies */
  uv_run(&s->loop, UV_RUN_DEFAULT);
  /* Every handle is closed; workers have all reported. */
  if (s->rpc)
    td_rpc_server_free(s->rpc);
  int rc = uv_loop_close(&s->loop);
  if (rc)
    td_log_warn("event loop closed with open handles", "err=\"%s\"", uv_strerror(rc));
  if (!exit_code)
    td_log_info("traind stopped", NULL);
  free_server(s);
  free(s);
  return exit_code;
}
