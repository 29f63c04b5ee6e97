/* The daemon's Prometheus metrics: what the loop thread accumulates
 * (step times, checkpoint writes, RPCs) and the rendering of a snapshot of
 * daemon state in the text format, published to the HTTP endpoint
 * (daemon/prom.h) about once a second. Loop thread only. */
#ifndef TD_EXPORTER_H
#define TD_EXPORTER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "jobs.h"
#include "prom.h"

#define TD_EXPORTER_MAX_METHODS 32

typedef struct td_rpc_stat {
  const char *method; /* the rpc module's path (static storage) */
  uint64_t by_code[TD_GRPC_NCODES];
  td_prom_hist latency;
} td_rpc_stat;

typedef struct td_exporter {
  td_prom_server *srv;
  td_prom_buf buf;
  td_prom_hist step_sec, ckpt_sec;
  uint64_t ckpt_ok, ckpt_failed;
  td_rpc_stat rpc[TD_EXPORTER_MAX_METHODS];
  size_t n_rpc;
  td_step_rec *scratch; /* (TD_EXPORTER_SCRATCH) step points being observed */
} td_exporter;

/* What the renderer reads of the daemon (all owned by the loop thread). */
typedef struct td_exporter_view {
  td_job *const *jobs;
  size_t n_jobs;
  int n_devices;
  td_job *const *device_owner; /* (n_devices) */
  uint64_t cache_entries, cache_hits, cache_misses;
  double uptime_sec;
  const char *version;
  char *const *insecure; /* insecure listen addresses */
  size_t n_insecure;
} td_exporter_view;

/* Starts the HTTP endpoint on addr ("host:port"). */
int td_exporter_start(td_exporter *e, const char *addr, td_error *err);
int td_exporter_port(const td_exporter *e);
void td_exporter_stop(td_exporter *e);

void td_exporter_rpc(td_exporter *e, const char *method, int code, double sec);
void td_exporter_checkpoint(td_exporter *e, int ok, double write_sec);
/* Observes the step times the jobs have published since the last call
 * (each job's position is job->prom_step), renders everything and
 * publishes it. */
int td_exporter_publish(td_exporter *e, const td_exporter_view *v, td_error *err);

#endif
