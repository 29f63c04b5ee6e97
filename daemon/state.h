/* The daemon's state and what its parts call of each other. The daemon is
 * one libuv loop thread that owns everything here, and one worker thread
 * per running job:
 *   server.c    lifecycle: start, the loaded records, signals, reload,
 *               the stop, the Prometheus timer; shared small helpers
 *   sched.c     the scheduler and its device pools, job state changes, and
 *               the loop's side of the workers' reports
 *   worker.c    a job's worker thread: the run, its checkpoint and
 *               TensorBoard hooks
 *   watch.c     metric pages: GetMetrics and the WatchMetrics streams
 *   handlers.c  the other traind.v1.Trainer RPCs
 *
 * Ownership: everything in td_server belongs to the loop thread. A worker
 * thread reads its job's spec (immutable while the job runs), writes its
 * job's metric series (td_metrics is made for one writer and loop-thread
 * readers), polls job->stop, and reports through the event queue (ev_mu,
 * then the wake handle). */
#ifndef TD_STATE_H
#define TD_STATE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth.h"
#include "examples.h"
#include "exporter.h"
#include "footprint.h"
#include "health.h"
#include "jobs.h"
#include "plan.h"
#include "rpc.h"
#include "saver.h"
#include "server.h"

#define TRAINER_SERVICE "traind.v1.Trainer"
#define SRV_N_TRAINER 12 /* the methods of traind.v1.Trainer */

/* A worker's report to the loop. */
typedef enum { EV_STARTED, EV_RESUMED, EV_CHECKPOINT, EV_DONE } event_kind;

typedef struct event {
  struct event *next;
  event_kind kind;
  td_job *job;
  int rc;
  char msg[TD_ERRMSG_MAX];
  int64_t total_steps;
  uint32_t total_epochs, steps_per_epoch;
  double compile_ms;
  int cache_hit;
  td_job_resume resume; /* EV_RESUMED */
  td_saver_result ckpt; /* EV_CHECKPOINT */
} event;

/* A WatchMetrics stream. */
typedef struct td_watch {
  struct td_watch *next;
  struct td_server *srv;
  td_rpc_call *call;
  td_job *job;
  int64_t since_step;  /* step points sent up to here */
  int64_t since_epoch; /* epoch points sent up to this step */
} td_watch;

typedef struct td_server {
  uv_loop_t loop;
  const td_server_opts *opts;
  Traind__V1__DaemonConfig *cfg;
  td_rpc_server *rpc;
  td_health *health;
  td_plan_cache cache;
  int64_t started_ns;

  td_job **jobs; /* creation order */
  size_t n_jobs, cap_jobs;
  uint64_t next_seq;
  int n_devices;         /* CPU devices */
  uint32_t threads;      /* compute threads, all devices together */
  td_job **device_owner; /* (n_devices) */
  int n_gpus;
  td_job **gpu_owner; /* (n_gpus) */
  char gpu_why[256];  /* why there are no GPUs */
  int running;

  uv_async_t wake;
  pthread_mutex_t ev_mu;
  event *ev_head, *ev_tail;

  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t flush, stop_timer, prom_timer, watchdog;
  td_exporter prom;
  int prom_on;
  int draining, rpc_down;
  char **listen_shown; /* API addresses with bound ports filled in */
  size_t n_listen_shown;
  char **insecure_shown; /* those of them that are insecure: true */
  size_t n_insecure_shown;
  /* Who may call what (auth.h): rebuilt at SIGHUP; the rpc server's
   * authorize callback reads it through &auth. */
  td_auth *auth;
  /* The host memory the daemon's jobs may hold together (memory_limit_bytes,
   * else the cgroup limit or MemAvailable, read at start and at SIGHUP);
   * mem_on 0 when it could not be told: no memory admission. */
  td_memory_limit mem;
  int mem_on;
  char *submit_gate; /* TRAIND_TEST_SUBMIT_GATE (tests), owned; NULL: none */
} td_server;

/* ---- server.c */
void srv_save_job(td_server *s, td_job *j);
td_job *srv_find_job(td_server *s, const char *id);
/* The answer to a request whose job id srv_find_job did not find. */
void srv_fail_not_found(td_rpc_call *call, const char *id);
/* Whether the call may do `action` to job j; answers the call with
 * PERMISSION_DENIED and returns 0 when not. */
int srv_job_allowed(td_server *s, td_rpc_call *call, const td_job *j, td_job_action action);
/* The job a request names, when the call may do `action` to it; else NULL,
 * with the call answered (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED). */
td_job *srv_job_for(td_server *s, td_rpc_call *call, const char *id, td_job_action action);
/* The data roots job j (or a job of `owner`) may read, as copies: the
 * owner's (auth.h), else the config's. Returns 0, or -1 out of memory. */
int srv_job_roots(const td_server *s, const char *owner, char ***roots, size_t *n);
/* The same, and *narrowed (when not NULL): 1 when auth narrows them to the
 * owner's or its role's roots (possibly none), 0 when they are all of the
 * config's. */
int srv_job_roots_narrowed(const td_server *s, const char *owner, char ***roots, size_t *n,
                           int *narrowed);
/* Ends the stop once no job runs and no stream is open. */
void srv_maybe_finish_shutdown(td_server *s);

/* ---- sched.c */
/* Starts queued jobs while devices, memory and the concurrency limit
 * allow. */
void srv_schedule(td_server *s);
uint32_t srv_max_jobs(const td_server *s);
/* Moves j to a final state (or back to QUEUED), frees what it holds and
 * tells its watchers. */
void srv_finish_job(td_server *s, td_job *j, Traind__V1__JobState state, int code, const char *msg);
void srv_reply_job(td_server *s, td_rpc_call *call, td_job *j);
/* td_admission.add: the metric ring's share of a job's footprint; user
 * points at the retention (uint32_t). */
void srv_add_ring(void *user, td_footprint *f);
/* The wake handle's callback: the workers' reports. */
void srv_on_wake(uv_async_t *h);

/* ---- worker.c */
int srv_worker_start(td_server *s, td_job *j);

/* ---- watch.c */
void srv_flush_watch(td_server *s, td_watch *w);
void srv_drop_watch(td_server *s, td_watch *w);
void srv_on_flush_timer(uv_timer_t *t);
void srv_h_metrics(void *ctx, td_rpc_call *call, const ProtobufCMessage *req);
void srv_h_watch(void *ctx, td_rpc_call *call, const ProtobufCMessage *req);

/* ---- examples.c */
/* Keeps an epoch's per-example report as the job's (examples/JOB.pb in
 * the state directory, replaced atomically). */
int srv_examples_save(const char *state_dir, const char *job_id, const td_example_report *r,
                      td_error *err);
void srv_h_examples(void *ctx, td_rpc_call *call, const ProtobufCMessage *req);

/* ---- handlers.c */
extern const td_rpc_method srv_trainer_methods[SRV_N_TRAINER];

#endif
