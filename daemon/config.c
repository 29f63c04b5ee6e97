#include "config.h"

#include <stdlib.h>
#include <string.h>

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
  if (c->n_listen == 0) {
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
