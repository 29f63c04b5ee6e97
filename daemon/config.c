#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "pbjson.h"

#define ROW(field, kind, v) \
  { "traind.v1.DaemonConfig", field, kind, v, NULL }

/* Bounds of every numeric option; names and types come from the message. */
static const pbjson_rule config_rules[] = {
    {NULL, NULL, PBJSON_RULE_STRICT, 0, NULL},
    ROW("cpu_devices", PBJSON_RULE_MAX, 1024),
    ROW("threads", PBJSON_RULE_MAX, 4096),
    ROW("max_concurrent_jobs", PBJSON_RULE_MAX, 4096),
    ROW("metrics_retention", PBJSON_RULE_MAX, 10000000),
    ROW("stop_timeout_sec", PBJSON_RULE_MAX, 86400),
    ROW("job_crash_limit", PBJSON_RULE_MAX, 1000),
    ROW("final_checkpoint_retry_sec", PBJSON_RULE_MAX, 86400),
    ROW("memory_limit_bytes", PBJSON_RULE_MAX, 1125899906842624.0), /* 1 PiB */
    ROW("max_connections", PBJSON_RULE_MAX, 1000000),
    ROW("connection_idle_sec", PBJSON_RULE_MAX, 7 * 86400),
};

/* Defaults, applied to fields left unset. */
#define DEFAULT_STATE_DIR "/var/lib/traind"
#define DEFAULT_LISTEN "unix:/run/traind/traind.sock"
#define DEFAULT_METRICS_RETENTION 100000
#define DEFAULT_LOG_LEVEL "info"
#define DEFAULT_STOP_TIMEOUT_SEC 60
#define DEFAULT_JOB_CRASH_LIMIT 2
#define DEFAULT_FINAL_CHECKPOINT_RETRY_SEC 600
#define DEFAULT_MAX_CONNECTIONS 512
#define DEFAULT_CONNECTION_IDLE_SEC 600

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static int set(const char *s) { return s && *s; }

/* Whether r names a role (auth.h): admin, user or viewer, and none too
 * when allow_none. */
static int role_ok(const char *r, int allow_none) {
  int role = td_role_parse(r);
  return role > TD_ROLE_NONE || (allow_none && role == TD_ROLE_NONE);
}

/* A principal's or role's data roots: absolute, each inside one of the
 * daemon's data_dirs (compared as written, on path components). */
static int check_roots(const Traind__V1__DaemonConfig *c, const char *what, char *const *dirs,
                       size_t n, td_error *err) {
  for (size_t i = 0; i < n; i++) {
    const char *d = dirs[i];
    if (d[0] != '/' || strstr(d, "/../") || strstr(d, "/./") ||
        (strlen(d) >= 3 && strcmp(d + strlen(d) - 3, "/..") == 0))
      return td_errorf(err, TD_EINVAL,
                       "%s.data_dirs[%zu]: '%s' must be an absolute path without . or ..", what, i,
                       d);
    int inside = 0;
    for (size_t k = 0; k < c->n_data_dirs && !inside; k++) {
      size_t rl = strlen(c->data_dirs[k]);
      while (rl > 1 && c->data_dirs[k][rl - 1] == '/')
        rl--;
      inside = strncmp(d, c->data_dirs[k], rl) == 0 && (d[rl] == 0 || d[rl] == '/');
    }
    if (!inside)
      return td_errorf(err, TD_EINVAL,
                       "%s.data_dirs[%zu]: '%s' is not inside any of data_dirs; a principal's "
                       "roots narrow the daemon's",
                       what, i, d);
  }
  return TD_OK;
}

/* listeners, auth and health_listen. */
static int check_security(Traind__V1__DaemonConfig *c, td_error *err) {
  const Traind__V1__Auth *a = c->auth;
  const int tokens = a && set(a->token_file);
  for (size_t i = 0; i < c->n_listeners; i++) {
    Traind__V1__Listener *l = c->listeners[i];
    if (!set(l->address))
      return td_errorf(err, TD_EINVAL, "listeners[%zu].address: required (unix:/path or host:port)",
                       i);
    Traind__V1__Tls *t = l->tls;
    if (!t)
      continue;
    if (l->insecure)
      return td_errorf(err, TD_EINVAL,
                       "listeners[%zu] (%s): insecure is for plaintext listeners; this one has tls",
                       i, l->address);
    if (!set(t->cert_file) || !set(t->key_file))
      return td_errorf(err, TD_EINVAL, "listeners[%zu] (%s): tls needs cert_file and key_file", i,
                       l->address);
    /* The default: require client certificates when a CA is given. */
    if (!set(t->client_cert)) {
      int rc =
          td_config_set_string(&t->client_cert, set(t->client_ca_file) ? "require" : "none", err);
      if (rc)
        return rc;
    }
    const char *cc = t->client_cert;
    if (strcmp(cc, "require") && strcmp(cc, "request") && strcmp(cc, "none"))
      return td_errorf(err, TD_EINVAL,
                       "listeners[%zu] (%s): tls.client_cert: '%s' is not require, request or none",
                       i, l->address, cc);
    if (strcmp(cc, "none") && !set(t->client_ca_file))
      return td_errorf(err, TD_EINVAL,
                       "listeners[%zu] (%s): tls.client_cert %s needs tls.client_ca_file (the CAs "
                       "that sign client certificates)",
                       i, l->address, cc);
    if (strcmp(cc, "none") == 0 && !tokens)
      return td_errorf(err, TD_EINVAL,
                       "listeners[%zu] (%s): with no client certificates and no auth.token_file "
                       "nobody could call; give tls.client_ca_file or auth.token_file",
                       i, l->address);
  }
  if (set(c->health_listen) &&
      (strncmp(c->health_listen, "unix", 4) == 0 || !strchr(c->health_listen, ':')))
    return td_errorf(err, TD_EINVAL, "health_listen: '%s' is not host:port", c->health_listen);
  if (!a)
    return TD_OK;
  if (set(a->local_role) && !role_ok(a->local_role, 1))
    return td_errorf(err, TD_EINVAL, "auth.local_role: '%s' is not admin, user, viewer or none",
                     a->local_role);
  char what[64];
  for (size_t i = 0; i < a->n_principals; i++) {
    const Traind__V1__Principal *p = a->principals[i];
    if (!set(p->name))
      return td_errorf(err, TD_EINVAL, "auth.principals[%zu].name: required", i);
    if (!set(p->role) || !role_ok(p->role, 0))
      return td_errorf(err, TD_EINVAL,
                       "auth.principals[%zu] (%s).role: '%s' is not admin, user or viewer", i,
                       p->name, p->role ? p->role : "");
    for (size_t k = 0; k < i; k++)
      if (strcmp(a->principals[k]->name, p->name) == 0)
        return td_errorf(err, TD_EINVAL, "auth.principals: '%s' is listed twice", p->name);
    snprintf(what, sizeof what, "auth.principals[%zu]", i);
    int rc = check_roots(c, what, p->data_dirs, p->n_data_dirs, err);
    if (rc)
      return rc;
  }
  for (size_t i = 0; i < a->n_roles; i++) {
    const Traind__V1__RoleData *r = a->roles[i];
    if (!set(r->role) || !role_ok(r->role, 0))
      return td_errorf(err, TD_EINVAL, "auth.roles[%zu].role: '%s' is not admin, user or viewer", i,
                       r->role ? r->role : "");
    snprintf(what, sizeof what, "auth.roles[%zu]", i);
    int rc = check_roots(c, what, r->data_dirs, r->n_data_dirs, err);
    if (rc)
      return rc;
  }
  return TD_OK;
}

int td_config_set_string(char **field, const char *value, td_error *err) {
  char *copy = dup_or_null(value);
  if (value && !copy)
    return td_errorf(err, TD_ENOMEM, "config: out of memory");
  /* protobuf-c points unset strings at a shared empty default. */
  if (*field && *field != protobuf_c_empty_string)
    free(*field);
  *field = copy ? copy : (char *)protobuf_c_empty_string;
  return TD_OK;
}

int td_config_set_list(char ***list, size_t *n, char *const *values, size_t count, td_error *err) {
  char **fresh = calloc(count ? count : 1, sizeof *fresh);
  if (!fresh)
    return td_errorf(err, TD_ENOMEM, "config: out of memory");
  for (size_t i = 0; i < count; i++)
    if (!(fresh[i] = strdup(values[i]))) {
      while (i--)
        free(fresh[i]);
      free(fresh);
      return td_errorf(err, TD_ENOMEM, "config: out of memory");
    }
  for (size_t i = 0; i < *n; i++)
    free((*list)[i]);
  free(*list);
  *list = fresh;
  *n = count;
  return TD_OK;
}

int td_config_finish(Traind__V1__DaemonConfig *c, td_error *err) {
  int rc =
      pbjson_validate(&c->base, config_rules, sizeof config_rules / sizeof config_rules[0], err);
  if (rc)
    return rc;
  if (!c->cpu_devices)
    c->cpu_devices = 1;
  if (!c->metrics_retention)
    c->metrics_retention = DEFAULT_METRICS_RETENTION;
  if (!c->stop_timeout_sec)
    c->stop_timeout_sec = DEFAULT_STOP_TIMEOUT_SEC;
  if (!c->job_crash_limit)
    c->job_crash_limit = DEFAULT_JOB_CRASH_LIMIT;
  if (!c->final_checkpoint_retry_sec)
    c->final_checkpoint_retry_sec = DEFAULT_FINAL_CHECKPOINT_RETRY_SEC;
  if (!c->max_connections)
    c->max_connections = DEFAULT_MAX_CONNECTIONS;
  if (!c->connection_idle_sec)
    c->connection_idle_sec = DEFAULT_CONNECTION_IDLE_SEC;
  if ((!c->state_dir || !*c->state_dir) &&
      (rc = td_config_set_string(&c->state_dir, DEFAULT_STATE_DIR, err)))
    return rc;
  if ((!c->log_level || !*c->log_level) &&
      (rc = td_config_set_string(&c->log_level, DEFAULT_LOG_LEVEL, err)))
    return rc;
  static const char *const levels[] = {"error", "warn", "info", "debug"};
  int ok = 0;
  for (size_t i = 0; i < 4; i++)
    ok |= strcmp(c->log_level, levels[i]) == 0;
  if (!ok)
    return td_errorf(err, TD_EINVAL,
                     "log_level: '%s' is not a level (use error, warn, info or debug)",
                     c->log_level);
  if ((rc = check_security(c, err)))
    return rc;
  if (c->n_listen == 0 && c->n_listeners == 0) {
    char *const dflt[] = {DEFAULT_LISTEN};
    if ((rc = td_config_set_list(&c->listen, &c->n_listen, dflt, 1, err)))
      return rc;
  }
  return TD_OK;
}

int td_config_load(const char *path, Traind__V1__DaemonConfig **out, td_error *err) {
  *out = NULL;
  ProtobufCMessage *m = NULL;
  if (path) {
    int rc = pbjson_parse_file(&traind__v1__daemon_config__descriptor, path, &m, err);
    if (rc)
      return rc;
  } else {
    Traind__V1__DaemonConfig *c = malloc(sizeof *c);
    if (!c)
      return td_errorf(err, TD_ENOMEM, "config: out of memory");
    traind__v1__daemon_config__init(c);
    m = &c->base;
  }
  Traind__V1__DaemonConfig *c = (Traind__V1__DaemonConfig *)m;
  int rc = td_config_finish(c, err);
  if (rc) {
    if (path)
      td_error_prefix(err, "%s", path);
    td_config_free(c);
    return rc;
  }
  *out = c;
  return TD_OK;
}

void td_config_free(Traind__V1__DaemonConfig *c) {
  if (c)
    protobuf_c_message_free_unpacked(&c->base, NULL);
}
