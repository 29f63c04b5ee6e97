/* trainctl's contexts: named sets of connection settings (the daemon's
 * address, TLS files, token file) in a config file, as kubectl keeps them,
 * and the resolution of each setting from the command line, the
 * environment, the chosen context and the built-in default, in that order.
 *
 * The file is the proto3 JSON mapping (YAML or JSON) of
 * traind.v1.ClientConfig (proto/traind/v1/client.proto):
 *
 *   current_context: prod
 *   contexts:
 *   - name: prod
 *     address: traind.example.com:7070
 *     tls_ca: ca.pem            # relative to the config file's directory
 *     token_file: ~/.config/trainctl/prod.token
 *
 * Its path: $TRAINCTL_CONFIG, else $XDG_CONFIG_HOME/trainctl/config.yaml,
 * else ~/.config/trainctl/config.yaml. A missing file means no contexts. */
#ifndef TD_CONTEXT_H
#define TD_CONTEXT_H

#include <stddef.h>

#include "error.h"
#include "traind/v1/client.pb-c.h"

#define TD_CTX_DEFAULT_ADDR "unix:/run/traind/traind.sock"

/* The settings, by id. */
enum {
  TD_CTX_ADDR,
  TD_CTX_TLS_CA,
  TD_CTX_TLS_CERT,
  TD_CTX_TLS_KEY,
  TD_CTX_TLS_SERVER_NAME,
  TD_CTX_TOKEN_FILE,
  TD_CTX_NSTR
};

/* The settings one source gives: NULL where it says nothing; tls -1 when
 * unset. Not owned. */
typedef struct td_ctx_settings {
  const char *str[TD_CTX_NSTR];
  int tls;
} td_ctx_settings;

/* No setting given. */
void td_ctx_settings_init(td_ctx_settings *s);
/* The environment's: TRAIND_ADDR, TRAINCTL_TLS_CA, TRAINCTL_TLS_CERT,
 * TRAINCTL_TLS_KEY, TRAINCTL_TLS_SERVER_NAME, TRAINCTL_TOKEN_FILE (empty
 * values count as unset). */
void td_ctx_settings_from_env(td_ctx_settings *s);

/* The flag and the environment variable of setting `id` ("--tls-ca",
 * "TRAINCTL_TLS_CA"). */
const char *td_ctx_flag_name(int id);
const char *td_ctx_env_name(int id);

/* The config file, loaded. */
typedef struct td_ctx_file {
  char path[4096]; /* as found (not necessarily absolute) */
  char dir[4096];  /* its directory, against which relative paths resolve */
  int exists;
  Traind__V1__ClientConfig *cfg; /* never NULL after a successful load */
} td_ctx_file;

/* The config file's path: $TRAINCTL_CONFIG, else
 * $XDG_CONFIG_HOME/trainctl/config.yaml, else
 * $HOME/.config/trainctl/config.yaml. Returns 0, or TD_EINVAL when none of
 * these can be formed. */
int td_ctx_default_path(char *buf, size_t cap, td_error *err);

/* Loads the file at `path` (NULL: td_ctx_default_path). A missing file
 * loads as an empty config (exists 0). A file that does not parse, that
 * names two contexts alike or a context without a name is an error
 * ("FILE: line 3: contexts[0].adress: unknown field ...; fix FILE"). */
int td_ctx_load(td_ctx_file *f, const char *path, td_error *err);
void td_ctx_file_free(td_ctx_file *f);

/* The context called name, or NULL. */
Traind__V1__ClientContext *td_ctx_find(const td_ctx_file *f, const char *name);
/* The names of the file's contexts, "a, b, c" ("none" when there are none). */
void td_ctx_names(const td_ctx_file *f, char *buf, size_t cap);

/* The connection settings in effect, each with where it came from. */
typedef struct td_ctx_conn {
  char *str[TD_CTX_NSTR];          /* NULL where no source set it; addr always set */
  const char *origin[TD_CTX_NSTR]; /* "--tls-ca", "TRAINCTL_TLS_CA", "context 'prod'" */
  int tls;                         /* TLS is on: --tls, or any TLS setting */
  const char *tls_origin;
  char context[256]; /* the context used, "" when none */
  char origin_buf[300];
} td_ctx_conn;

/* Resolves every setting: flag > environment > context > default.
 * `context` is the context asked for by name (--context, else
 * $TRAINCTL_CONTEXT; NULL: the file's current_context, "" for none at all).
 * A context's relative paths are taken relative to the file's directory,
 * and "~/" in them as $HOME; an address that is an absolute path becomes a
 * unix: target. flags->tls 0 (--tls=false) means plaintext: the TLS
 * settings of the environment and the context are dropped (and TLS flags
 * with it are TD_EINVAL). Asking for a context the file lacks is
 * TD_ENOTFOUND, with a message listing the names there are. */
int td_ctx_resolve(const td_ctx_settings *flags, const td_ctx_settings *env, const char *context,
                   const td_ctx_file *f, td_ctx_conn *out, td_error *err);
void td_ctx_conn_free(td_ctx_conn *c);

/* Sets the file's current context to name (which must exist). */
int td_ctx_use(td_ctx_file *f, const char *name, td_error *err);
/* Creates the context called name, or updates it: each setting given in s
 * replaces the context's (an empty string clears it). Relative paths are
 * made absolute against the working directory, so that they name the same
 * files from wherever trainctl runs. *created tells which it was. */
int td_ctx_set(td_ctx_file *f, const char *name, const td_ctx_settings *s, int *created,
               td_error *err);

/* Writes the config back to f->path atomically: a temporary file beside it
 * with mode 0600, fsync, rename, fsync of the directory (which is made,
 * mode 0700, when missing). A symbolic link at the path is followed. */
int td_ctx_save(td_ctx_file *f, td_error *err);

/* The config as YAML (the file's form), malloc'd. */
char *td_ctx_yaml(const Traind__V1__ClientConfig *cfg);

#endif
