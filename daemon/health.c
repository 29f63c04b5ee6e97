/* grpc.health.v1.Health over the rpc module (see health.h). */
#include "health.h"

#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"

typedef struct health_service {
  char *name;
  int status;
} health_service;

/* One open Watch stream. */
typedef struct health_watch {
  td_health *h;
  td_rpc_call *call;
  char *service;
  int last_sent; /* -1 before the first message */
  struct health_watch *prev, *next;
} health_watch;

struct td_health {
  health_service *services;
  size_t n_services, cap_services;
  health_watch *watches;
};

static health_service *find_service(td_health *h, const char *name) {
  for (size_t i = 0; i < h->n_services; i++)
    if (strcmp(h->services[i].name, name) == 0)
      return &h->services[i];
  return NULL;
}

/* The status a Watch reports for `name`. */
static int watch_status(td_health *h, const char *name) {
  health_service *s = find_service(h, name);
  return s ? s->status : TD_HEALTH_SERVICE_UNKNOWN;
}

static void watch_unlink(health_watch *w) {
  if (w->prev)
    w->prev->next = w->next;
  else
    w->h->watches = w->next;
  if (w->next)
    w->next->prev = w->prev;
}

static void watch_free(health_watch *w) {
  free(w->service);
  free(w);
}

/* Sends `status` unless it is what the watcher saw last. A send that fails
 * means the client is gone; the cancel callback ends the watch. */
static void watch_send(health_watch *w, int status) {
  if (status == w->last_sent)
    return;
  w->last_sent = status;
  Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
  td_rpc_send(w->call, &r.base);
}

static void on_check(void *ctx, td_rpc_call *call, const ProtobufCMessage *req) {
  td_health *h = ctx;
  const Grpc__Health__V1__HealthCheckRequest *r = (const Grpc__Health__V1__HealthCheckRequest *)req;
  health_service *s = find_service(h, r->service ? r->service : "");
  if (!s) {
    td_rpc_fail(call, TD_GRPC_NOT_FOUND, "unknown service");
    return;
  }
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)s->status;
  td_rpc_reply(call, &resp.base);
}

static void on_watch_cancel(void *arg, td_rpc_call *call) {
  health_watch *w = arg;
  watch_unlink(w);
  watch_free(w);
  td_rpc_finish(call, TD_GRPC_CANCELLED, "the watch was cancelled");
}

static void on_watch(void *ctx, td_rpc_call *call, const ProtobufCMessage *req) {
  td_health *h = ctx;
  const Grpc__Health__V1__HealthCheckRequest *r = (const Grpc__Health__V1__HealthCheckRequest *)req;
  health_watch *w = calloc(1, sizeof *w);
  if (w)
    w->service = strdup(r->service ? r->service : "");
  if (!w || !w->service) {
    free(w);
    td_rpc_finish(call, TD_GRPC_RESOURCE_EXHAUSTED, "out of memory starting a health watch");
    return;
  }
  w->h = h;
  w->call = call;
  w->last_sent = -1;
  w->next = h->watches;
  if (h->watches)
    h->watches->prev = w;
  h->watches = w;
  td_rpc_on_cancel(call, on_watch_cancel, w);
  watch_send(w, watch_status(h, w->service));
}

td_health *td_health_new(void) { return calloc(1, sizeof(td_health)); }

void td_health_free(td_health *h) {
  if (!h)
    return;
  while (h->watches) {
    health_watch *w = h->watches;
    watch_unlink(w);
    /* Watchers learn that the server is going before the stream ends. */
    watch_send(w, TD_HEALTH_NOT_SERVING);
    td_rpc_finish(w->call, TD_GRPC_UNAVAILABLE, "the server is shutting down");
    watch_free(w);
  }
  for (size_t i = 0; i < h->n_services; i++)
    free(h->services[i].name);
  free(h->services);
  free(h);
}

void td_health_set(td_health *h, const char *service, int status) {
  if (!service)
    service = "";
  if (status < TD_HEALTH_UNKNOWN || status > TD_HEALTH_SERVICE_UNKNOWN)
    status = TD_HEALTH_UNKNOWN;
  health_service *s = find_service(h, service);
  if (!s) {
    if (h->n_services == h->cap_services) {
      size_t cap = h->cap_services ? 2 * h->cap_services : 4;
      health_service *p = realloc(h->services, cap * sizeof *p);
      if (!p)
        return;
      h->services = p;
      h->cap_services = cap;
    }
    char *name = strdup(service);
    if (!name)
      return;
    s = &h->services[h->n_services++];
    s->name = name;
  }
  s->status = status;
  for (health_watch *w = h->watches; w; w = w->next)
    if (strcmp(w->service, service) == 0)
      watch_send(w, status);
}

void td_health_methods(td_health *h, td_rpc_method out[2]) {
  out[0] = (td_rpc_method){
      .path = "/grpc.health.v1.Health/Check",
      .kind = TD_RPC_UNARY,
      .request = &grpc__health__v1__health_check_request__descriptor,
      .handler = on_check,
      .ctx = h,
      .health = 1,
  };
  out[1] = (td_rpc_method){
      .path = "/grpc.health.v1.Health/Watch",
      .kind = TD_RPC_SERVER_STREAM,
      .request = &grpc__health__v1__health_check_request__descriptor,
      .handler = on_watch,
      .ctx = h,
      .health = 1,
  };
}
