/* The daemon's configuration: a DaemonConfig message read from a YAML file,
 * checked against one table of bounds, completed with defaults, and
 * overridden by command-line flags. */
#ifndef TD_CONFIG_H
#define TD_CONFIG_H

#include "error.h"
#include "traind/v1/config.pb-c.h"

/* Loads path (NULL: no file) into a new config with defaults applied.
 * Free with td_config_free. */
int td_config_load(const char *path, Traind__V1__DaemonConfig **out, td_error *err);
void td_config_free(Traind__V1__DaemonConfig *c);

/* Flag overrides: replace a list or a string, copying the values. */
int td_config_set_list(char ***list, size_t *n, char *const *values, size_t count, td_error *err);
int td_config_set_string(char **field, const char *value, td_error *err);

/* Fills unset fields with their defaults and checks the result. Call again
 * after applying overrides. `threads` stays 0 ("automatic"): `traind run`
 * then uses every core, the daemon every core but one (the control plane's,
 * so that serving RPCs does not stall the compute threads). */
int td_config_finish(Traind__V1__DaemonConfig *c, td_error *err);

#endif
