/* A gRPC server with only grpc.health.v1.Health, for checks by clients of
 * other gRPC implementations (tests/e2e/rpc_health_interop.py).
 *
 *   rpc_test_server ADDR...
 *
 * Listens on every ADDR, prints "port N" per address (0 for unix sockets)
 * and then "ready". "" and "traind.v1.Trainer" start SERVING; SIGUSR1
 * toggles "traind.v1.Trainer" between SERVING and NOT_SERVING; SIGTERM or
 * SIGINT shuts down cleanly and exits 0. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "health.h"
#include "rpc.h"

typedef struct app {
  uv_loop_t *loop;
  td_rpc_server *srv;
  td_health *health;
  uv_signal_t sig_term, sig_int, sig_usr1;
  int trainer_status;
} app;

static void on_server_done(void *arg) {
  app *a = arg;
  td_rpc_server_free(a->srv);
  a->srv = NULL;
  uv_close((uv_handle_t *)&a->sig_term, NULL);
  uv_close((uv_handle_t *)&a->sig_int, NULL);
  uv_close((uv_handle_t *)&a->sig_usr1, NULL);
}

static void on_stop(uv_signal_t *h, int signum) {
  (void)signum;
  app *a = h->data;
  if (!a->health)
    return;
  td_health_free(a->health);
  a->health = NULL;
  td_rpc_server_shutdown(a->srv, on_server_done, a);
}

static void on_toggle(uv_signal_t *h, int signum) {
  (void)signum;
  app *a = h->data;
  if (!a->health)
    return;
  a->trainer_status =
      a->trainer_status == TD_HEALTH_SERVING ? TD_HEALTH_NOT_SERVING : TD_HEALTH_SERVING;
  td_health_set(a->health, "traind.v1.Trainer", a->trainer_status);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: rpc_test_server ADDR...\n");
    return 2;
  }
  app a = {.loop = uv_default_loop(), .trainer_status = TD_HEALTH_SERVING};
  a.health = td_health_new();
  td_health_set(a.health, "", TD_HEALTH_SERVING);
  td_health_set(a.health, "traind.v1.Trainer", a.trainer_status);
  td_rpc_method methods[2];
  td_health_methods(a.health, methods);
  td_rpc_server_opts opts = {.listen = (const char *const *)(argv + 1),
                             .n_listen = (size_t)(argc - 1),
                             .methods = methods,
                             .n_methods = 2};
  td_error err = {0};
  if (td_rpc_server_start(&a.srv, a.loop, &opts, &err) != TD_OK) {
    fprintf(stderr, "rpc_test_server: %s\n", err.msg);
    td_health_free(a.health);
    return 1;
  }
  for (int i = 1; i < argc; i++)
    printf("port %d\n", td_rpc_server_port(a.srv, (size_t)(i - 1)));
  printf("ready\n");
  fflush(stdout);

  uv_signal_t *sigs[] = {&a.sig_term, &a.sig_int, &a.sig_usr1};
  int nums[] = {SIGTERM, SIGINT, SIGUSR1};
  for (int i = 0; i < 3; i++) {
    uv_signal_init(a.loop, sigs[i]);
    sigs[i]->data = &a;
    uv_signal_start(sigs[i], nums[i] == SIGUSR1 ? on_toggle : on_stop, nums[i]);
  }
  uv_run(a.loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(a.loop);
  if (rc != 0) {
    fprintf(stderr, "rpc_test_server: handles left open at exit\n");
    return 1;
  }
  return 0;
}
