/* Who may call what: bearer tokens, certificate principals, roles, job
 * owners and data roots by principal (docs/security.md).
 *
 * The loop thread owns a td_auth: it is built from the config at start and
 * again at SIGHUP (td_auth_load reads the token file), and consulted by the
 * rpc server's authorize callback for every call and by the handlers for
 * every job a call touches. */
#ifndef TD_AUTH_H
#define TD_AUTH_H

#include <stddef.h>

#include "error.h"
#include "rpc.h"
#include "traind/v1/config.pb-c.h"

typedef enum td_role {
  TD_ROLE_NONE = 0,
  TD_ROLE_VIEWER,
  TD_ROLE_USER,
  TD_ROLE_ADMIN,
} td_role;

/* What a call does to a job. */
typedef enum td_job_action {
  TD_JOB_READ = 0, /* GetJob, ListJobs, GetMetrics, WatchMetrics */
  TD_JOB_WRITE,    /* CancelJob, SaveCheckpoint */
  TD_JOB_EXPORT,   /* ExportCheckpoint, Sample */
} td_job_action;

typedef struct td_auth td_auth;

/* Builds the rules of cfg (which td_config_finish has checked) and reads
 * its token file. */
int td_auth_load(td_auth **out, const Traind__V1__DaemonConfig *cfg, td_error *err);
void td_auth_free(td_auth *a);
/* Tokens loaded, for logs. */
size_t td_auth_tokens(const td_auth *a);

/* "admin", "user", "viewer", "none"; TD_ROLE_NONE and -1 for another. */
const char *td_role_name(td_role r);
int td_role_parse(const char *s);

/* The rpc server's authorize callback (arg: the td_auth **, so that a
 * reload can swap it): finds the principal and role of the call, records
 * them on the call, and checks the role against the method. */
int td_auth_authorize(void *arg, td_rpc_call *call, const td_rpc_method *m,
                      const td_rpc_caller *caller, char *why, size_t why_len);

/* The principal name of a unix socket peer with this uid: "unix:NAME", or
 * "unix:uid=N" when no user has it. Looked up once per td_auth (a SIGHUP
 * reload builds a new one and looks up again); safe from any thread. */
void td_auth_unix_name(td_auth *a, unsigned uid, char *buf, size_t n);

/* Whether the call's principal may do `action` to a job owned by `owner`;
 * 0 when it may, else a gRPC status with the reason in why. */
int td_auth_job(const td_auth *a, const td_rpc_call *call, const char *job_id, const char *owner,
                td_job_action action, char *why, size_t why_len);
/* Whether the call's principal reads every job (ListJobs shows only its
 * own otherwise). */
int td_auth_reads_all(const td_auth *a, const td_rpc_call *call);

/* The data roots a job owner's jobs may read: 0 when all of the config's,
 * 1 when only *roots (n of them, owned by a): the principal's own, else
 * its role's; none for an owner that has no role any more. */
int td_auth_roots(const td_auth *a, const char *owner, const char *const **roots, size_t *n);

#endif
