/* The daemon: one libuv loop thread owns all daemon state (jobs, queue,
 * devices, metric streams); the rpc module hands it gRPC calls; each running
 * job has a worker thread that trains and reports back through a locked
 * event queue plus uv_async_send. */
#ifndef TD_SERVER_H
#define TD_SERVER_H

#include "error.h"
#include "traind/v1/config.pb-c.h"

typedef struct td_server_opts {
  /* Loads the configuration (file plus command-line overrides); called at
   * start and again on SIGHUP. The result is owned by the server. */
  int (*load_config)(void *arg, Traind__V1__DaemonConfig **out, td_error *err);
  void *load_config_arg;
} td_server_opts;

/* Runs the daemon until SIGTERM/SIGINT have drained it. Returns the process
 * exit status (0 after a clean stop). */
int td_server_main(const td_server_opts *opts);

#endif
