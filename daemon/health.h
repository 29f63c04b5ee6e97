/* The standard grpc.health.v1.Health service (Check and Watch) over the
 * rpc module. The daemon sets the status of "" (the whole server) and of
 * "traind.v1.Trainer"; Watch streams every change. Loop thread only. */
#ifndef TD_HEALTH_H
#define TD_HEALTH_H

#include "rpc.h"

typedef struct td_health td_health;

/* Values of grpc.health.v1.HealthCheckResponse.ServingStatus. */
enum {
  TD_HEALTH_UNKNOWN = 0,
  TD_HEALTH_SERVING = 1,
  TD_HEALTH_NOT_SERVING = 2,
  TD_HEALTH_SERVICE_UNKNOWN = 3
};

td_health *td_health_new(void);
/* Ends every Watch stream (call before the server shuts down) and frees. */
void td_health_free(td_health *h);
/* Sets a service's status (adding the service if new) and notifies its
 * watchers. Unknown services answer NOT_FOUND to Check and
 * SERVICE_UNKNOWN to Watch. */
void td_health_set(td_health *h, const char *service, int status);
/* The two method rows (Check, Watch) with ctx = h. */
void td_health_methods(td_health *h, td_rpc_method out[2]);

#endif
