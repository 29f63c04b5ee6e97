/* trainctl's contexts file and the resolution of connection settings (see
 * context.h). */
#include "context.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pbjson.h"
#include "view.h"

/* Per setting: its flag, its environment variable, and whether it names a
 * file (resolved against the config file's directory in a context). */
static const struct {
  const char *flag, *env;
  int is_path;
} settings[TD_CTX_NSTR] = {
    [TD_CTX_ADDR] = {"--addr", "TRAIND_ADDR", 0},
    [TD_CTX_TLS_CA] = {"--tls-ca", "TRAINCTL_TLS_CA", 1},
    [TD_CTX_TLS_CERT] = {"--tls-cert", "TRAINCTL_TLS_CERT", 1},
    [TD_CTX_TLS_KEY] = {"--tls-key", "TRAINCTL_TLS_KEY", 1},
    [TD_CTX_TLS_SERVER_NAME] = {"--tls-server-name", "TRAINCTL_TLS_SERVER_NAME", 0},
    [TD_CTX_TOKEN_FILE] = {"--token-file", "TRAINCTL_TOKEN_FILE", 1},
};

const char *td_ctx_flag_name(int id) {
  return id >= 0 && id < TD_CTX_NSTR ? settings[id].flag : "";
}
const char *td_ctx_env_name(int id) { return id >= 0 && id < TD_CTX_NSTR ? settings[id].env : ""; }

void td_ctx_settings_init(td_ctx_settings *s) {
  memset(s, 0, sizeof *s);
  s->tls = -1;
}

void td_ctx_settings_from_env(td_ctx_settings *s) {
  td_ctx_settings_init(s);
  for (int i = 0; i < TD_CTX_NSTR; i++) {
    const char *v = getenv(settings[i].env);
    s->str[i] = v && *v ? v : NULL;
  }
}

/* A context's string field for setting id. */
static char **context_field(Traind__V1__ClientContext *c, int id) {
  switch (id) {
  case TD_CTX_ADDR:
    return &c->address;
  case TD_CTX_TLS_CA:
    return &c->tls_ca;
  case TD_CTX_TLS_CERT:
    return &c->tls_cert;
  case TD_CTX_TLS_KEY:
    return &c->tls_key;
  case TD_CTX_TLS_SERVER_NAME:
    return &c->tls_server_name;
  default:
    return &c->token_file;
  }
}

static const char *home_dir(void) {
  const char *h = getenv("HOME");
  if (h && *h)
    return h;
  struct passwd *pw = getpwuid(getuid());
  return pw && pw->pw_dir && *pw->pw_dir ? pw->pw_dir : NULL;
}

int td_ctx_default_path(char *buf, size_t cap, td_error *err) {
  const char *p = getenv("TRAINCTL_CONFIG");
  int n;
  if (p && *p) {
    n = snprintf(buf, cap, "%s", p);
  } else if ((p = getenv("XDG_CONFIG_HOME")) && p[0] == '/') {
    n = snprintf(buf, cap, "%s/trainctl/config.yaml", p);
  } else if ((p = home_dir())) {
    n = snprintf(buf, cap, "%s/.config/trainctl/config.yaml", p);
  } else {
    return td_errorf(err, TD_EINVAL,
                     "cannot find trainctl's config file: HOME is not set; set TRAINCTL_CONFIG");
  }
  if (n < 0 || (size_t)n >= cap)
    return td_errorf(err, TD_EINVAL, "the config file's path is too long; set TRAINCTL_CONFIG");
  return 0;
}

/* The directory of path, absolute (against the working directory). */
static int dir_of(const char *path, char *buf, size_t cap) {
  const char *slash = strrchr(path, '/');
  char cwd[4096];
  int n;
  if (path[0] == '/')
    n = snprintf(buf, cap, "%.*s", slash == path ? 1 : (int)(slash - path), path);
  else if (!getcwd(cwd, sizeof cwd))
    return -1;
  else if (slash)
    n = snprintf(buf, cap, "%s/%.*s", cwd, (int)(slash - path), path);
  else
    n = snprintf(buf, cap, "%s", cwd);
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static Traind__V1__ClientConfig *empty_config(void) {
  Traind__V1__ClientConfig *c = malloc(sizeof *c);
  if (c)
    traind__v1__client_config__init(c);
  return c;
}

int td_ctx_load(td_ctx_file *f, const char *path, td_error *err) {
  memset(f, 0, sizeof *f);
  int rc = 0;
  if (path) {
    if (strlen(path) >= sizeof f->path)
      return td_errorf(err, TD_EINVAL, "the config file's path is too long; use a shorter one");
    snprintf(f->path, sizeof f->path, "%s", path);
  } else if ((rc = td_ctx_default_path(f->path, sizeof f->path, err))) {
    return rc;
  }
  if (dir_of(f->path, f->dir, sizeof f->dir))
    return td_errorf(err, TD_EINVAL, "cannot find the directory of %s; use a shorter path",
                     f->path);
  ProtobufCMessage *m = NULL;
  td_error perr;
  memset(&perr, 0, sizeof perr);
  rc = pbjson_parse_file(&traind__v1__client_config__descriptor, f->path, &m, &perr);
  if (rc == TD_ENOTFOUND) {
    f->cfg = empty_config();
    return f->cfg ? 0 : td_errorf(err, TD_ENOMEM, "out of memory; free some memory");
  }
  if (rc)
    return td_errorf(err, rc, "trainctl's config file %s; %s", perr.msg,
                     rc == TD_EIO ? "check that it is readable (or set TRAINCTL_CONFIG)"
                                  : "fix it (or set TRAINCTL_CONFIG to another file)");
  f->exists = 1;
  f->cfg = (Traind__V1__ClientConfig *)m;
  for (size_t i = 0; i < f->cfg->n_contexts; i++) {
    const char *name = f->cfg->contexts[i]->name;
    if (!*name)
      rc = td_errorf(err, TD_EINVAL, "%s: contexts[%zu]: the context has no name; name it", f->path,
                     i);
    for (size_t j = 0; !rc && j < i; j++)
      if (strcmp(f->cfg->contexts[j]->name, name) == 0)
        rc = td_errorf(err, TD_EINVAL,
                       "%s: contexts[%zu]: a second context called '%s'; rename or remove one",
                       f->path, i, name);
    if (rc) {
      td_ctx_file_free(f);
      return rc;
    }
  }
  return 0;
}

void td_ctx_file_free(td_ctx_file *f) {
  if (f->cfg)
    protobuf_c_message_free_unpacked(&f->cfg->base, NULL);
  f->cfg = NULL;
}

Traind__V1__ClientContext *td_ctx_find(const td_ctx_file *f, const char *name) {
  for (size_t i = 0; f->cfg && i < f->cfg->n_contexts; i++)
    if (strcmp(f->cfg->contexts[i]->name, name) == 0)
      return f->cfg->contexts[i];
  return NULL;
}

void td_ctx_names(const td_ctx_file *f, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  for (size_t i = 0; f->cfg && i < f->cfg->n_contexts; i++) {
    int n = snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", f->cfg->contexts[i]->name);
    if (n < 0 || (size_t)n >= cap - len)
      break;
    len += (size_t)n;
  }
  if (!len)
    snprintf(buf, cap, "none");
}

/* "unix:" in front of an address that is an absolute path. */
static char *address_dup(const char *a) {
  size_t n = strlen(a);
  char *s = malloc(n + 6);
  if (s)
    snprintf(s, n + 6, "%s%s", a[0] == '/' ? "unix:" : "", a);
  return s;
}

/* A context's path: "~/" is the home directory, a relative path is taken
 * relative to dir. */
static char *context_path(const char *p, const char *dir) {
  const char *home = home_dir();
  const char *base = NULL, *rest = p;
  if (p[0] == '~' && (p[1] == '/' || p[1] == '\0') && home) {
    base = home;
    rest = p[1] ? p + 2 : "";
  } else if (p[0] != '/') {
    base = dir;
  }
  size_t n = (base ? strlen(base) + 1 : 0) + strlen(rest) + 1;
  char *s = malloc(n);
  if (!s)
    return NULL;
  if (base)
    snprintf(s, n, "%s%s%s", base, *rest ? "/" : "", rest);
  else
    snprintf(s, n, "%s", rest);
  return s;
}

int td_ctx_resolve(const td_ctx_settings *flags, const td_ctx_settings *env, const char *context,
                   const td_ctx_file *f, td_ctx_conn *out, td_error *err) {
  memset(out, 0, sizeof *out);
  char names[1024];
  const Traind__V1__ClientContext *ctx = NULL;
  int from_file = !context;
  if (!context)
    context = f && f->cfg ? f->cfg->current_context : "";
  if (*context) {
    ctx = f ? td_ctx_find(f, context) : NULL;
    if (!ctx) {
      td_ctx_names(f, names, sizeof names);
      if (from_file)
        return td_errorf(err, TD_ENOTFOUND,
                         "the current context '%s' of %s is not defined there (contexts: %s); "
                         "choose one with 'trainctl config use-context NAME'",
                         context, f->path, names);
      return td_errorf(err, TD_ENOTFOUND,
                       "no context '%s' in %s (contexts: %s); 'trainctl config set-context %s "
                       "--addr ADDR' creates it",
                       context, f ? f->path : "the config file", names, context);
    }
    snprintf(out->context, sizeof out->context, "%s", context);
    snprintf(out->origin_buf, sizeof out->origin_buf, "context '%s'", context);
  }
  for (int i = 0; i < TD_CTX_NSTR; i++) {
    const char *v = NULL, *origin = NULL;
    int in_context = 0;
    if (flags && flags->str[i]) {
      v = flags->str[i];
      origin = settings[i].flag;
    } else if (env && env->str[i]) {
      v = env->str[i];
      origin = settings[i].env;
    } else if (ctx && **context_field((Traind__V1__ClientContext *)ctx, i)) {
      v = *context_field((Traind__V1__ClientContext *)ctx, i);
      origin = out->origin_buf;
      in_context = 1;
    } else if (i == TD_CTX_ADDR) {
      v = TD_CTX_DEFAULT_ADDR;
      origin = "the default";
    }
    if (!v)
      continue;
    if (i == TD_CTX_ADDR)
      out->str[i] = address_dup(v);
    else if (in_context && settings[i].is_path)
      out->str[i] = context_path(v, f->dir);
    else
      out->str[i] = strdup(v);
    if (!out->str[i]) {
      td_ctx_conn_free(out);
      return td_errorf(err, TD_ENOMEM, "out of memory; free some memory");
    }
    out->origin[i] = origin;
  }
  if (flags && flags->tls == 0) {
    /* --tls=false: plaintext, whatever the environment or the context say. */
    for (int i = TD_CTX_TLS_CA; i <= TD_CTX_TLS_SERVER_NAME; i++) {
      if (flags->str[i]) {
        int id = i;
        td_ctx_conn_free(out);
        return td_errorf(err, TD_EINVAL, "--tls=false and %s contradict each other; drop one",
                         settings[id].flag);
      }
      free(out->str[i]);
      out->str[i] = NULL;
      out->origin[i] = NULL;
    }
    out->tls_origin = "--tls=false";
    return 0;
  }
  if (flags && flags->tls > 0) {
    out->tls = 1;
    out->tls_origin = "--tls";
  } else if (env && env->tls >= 0) {
    out->tls = env->tls;
    out->tls_origin = "the environment";
  } else if (ctx && ctx->tls) {
    out->tls = 1;
    out->tls_origin = out->origin_buf;
  }
  /* Any TLS setting means TLS. */
  for (int i = TD_CTX_TLS_CA; i <= TD_CTX_TLS_SERVER_NAME; i++)
    if (out->str[i] && !out->tls) {
      out->tls = 1;
      out->tls_origin = out->origin[i];
    }
  return 0;
}

void td_ctx_conn_free(td_ctx_conn *c) {
  for (int i = 0; i < TD_CTX_NSTR; i++)
    free(c->str[i]);
  memset(c, 0, sizeof *c);
}

/* Replaces a message's string field (protobuf-c leaves the shared empty
 * string alone when freeing). */
static int set_field(char **field, const char *v) {
  char *s = *v ? strdup(v) : (char *)protobuf_c_empty_string;
  if (!s)
    return -1;
  if (*field && *field != protobuf_c_empty_string)
    free(*field);
  *field = s;
  return 0;
}

int td_ctx_use(td_ctx_file *f, const char *name, td_error *err) {
  if (!td_ctx_find(f, name)) {
    char names[1024];
    td_ctx_names(f, names, sizeof names);
    return td_errorf(err, TD_ENOTFOUND,
                     "no context '%s' in %s (contexts: %s); 'trainctl config set-context %s "
                     "--addr ADDR' creates it",
                     name, f->path, names, name);
  }
  if (set_field(&f->cfg->current_context, name))
    return td_errorf(err, TD_ENOMEM, "out of memory; free some memory");
  return 0;
}

/* A path made absolute against the working directory. */
static char *absolute(const char *p) {
  if (!*p || p[0] == '/' || p[0] == '~')
    return strdup(p);
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd))
    return NULL;
  size_t n = strlen(cwd) + strlen(p) + 2;
  char *s = malloc(n);
  if (s)
    snprintf(s, n, "%s/%s", cwd, p[0] == '.' && p[1] == '/' ? p + 2 : p);
  return s;
}

int td_ctx_set(td_ctx_file *f, const char *name, const td_ctx_settings *s, int *created,
               td_error *err) {
  *created = 0;
  if (!*name || strlen(name) > 253)
    return td_errorf(err, TD_EINVAL, "a context's name has 1 to 253 characters; choose another");
  for (const char *p = name; *p; p++)
    if ((unsigned char)*p <= 0x20 || *p == 0x7f)
      return td_errorf(err, TD_EINVAL,
                       "a context's name may not hold spaces or control characters; choose "
                       "another");
  Traind__V1__ClientContext *ctx = td_ctx_find(f, name);
  if (!ctx) {
    Traind__V1__ClientContext **grown =
        realloc(f->cfg->contexts, (f->cfg->n_contexts + 1) * sizeof *grown);
    if (!grown)
      return td_errorf(err, TD_ENOMEM, "out of memory; free some memory");
    f->cfg->contexts = grown;
    ctx = malloc(sizeof *ctx);
    if (!ctx)
      return td_errorf(err, TD_ENOMEM, "out of memory; free some memory");
    traind__v1__client_context__init(ctx);
    if (set_field(&ctx->name, name)) {
      free(ctx);
      return td_errorf(err, TD_ENOMEM, "out of memory; free some memory");
    }
    f->cfg->contexts[f->cfg->n_contexts++] = ctx;
    *created = 1;
  }
  for (int i = 0; i < TD_CTX_NSTR; i++) {
    if (!s->str[i])
      continue;
    char *v = settings[i].is_path ? absolute(s->str[i]) : strdup(s->str[i]);
    int bad = !v || set_field(context_field(ctx, i), v);
    free(v);
    if (bad)
      return td_errorf(err, TD_ENOMEM, "out of memory; free some memory");
  }
  if (s->tls >= 0)
    ctx->tls = s->tls ? 1 : 0;
  return 0;
}

char *td_ctx_yaml(const Traind__V1__ClientConfig *cfg) {
  char *json = pbjson_emit(&cfg->base, PBJSON_INDENT | PBJSON_PROTO_NAMES);
  if (!json)
    return NULL;
  char *yaml = td_view_json_to_yaml(json);
  free(json);
  return yaml;
}

/* mkdir -p with mode 0700 for the directories it makes. */
static int make_dirs(const char *dir) {
  char p[4096];
  if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
    return -1;
  for (char *s = p + 1;; s++) {
    if (*s == '/' || *s == '\0') {
      char keep = *s;
      *s = '\0';
      if (mkdir(p, 0700) != 0 && errno != EEXIST)
        return -1;
      *s = keep;
      if (!keep)
        return 0;
    }
  }
}

static int write_all(int fd, const char *s, size_t n) {
  while (n) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

int td_ctx_save(td_ctx_file *f, td_error *err) {
  static const char header[] =
      "# trainctl's contexts (traind.v1.ClientConfig, see docs/trainctl.md).\n"
      "# 'trainctl config use-context' and 'set-context' rewrite this file.\n";
  char target[4096], dir[4096];
  struct stat st;
  /* Write through a symbolic link, to the file it names. */
  if (lstat(f->path, &st) == 0 && S_ISLNK(st.st_mode)) {
    if (!realpath(f->path, target))
      return td_errorf(err, TD_EIO, "cannot follow the link %s: %s; fix the link", f->path,
                       strerror(errno));
  } else {
    snprintf(target, sizeof target, "%s", f->path);
  }
  if (dir_of(target, dir, sizeof dir))
    return td_errorf(err, TD_EINVAL, "cannot find the directory of %s; use a shorter path", target);
  if (make_dirs(dir))
    return td_errorf(err, TD_EIO,
                     "cannot create the directory %s: %s; create it or set "
                     "TRAINCTL_CONFIG",
                     dir, strerror(errno));
  char *yaml = td_ctx_yaml(f->cfg);
  if (!yaml)
    return td_errorf(err, TD_ENOMEM, "out of memory; free some memory");
  const char *base = strrchr(target, '/');
  base = base ? base + 1 : target;
  char tmp[8320];
  snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, base);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    int e = errno;
    free(yaml);
    return td_errorf(err, TD_EIO, "cannot write in %s: %s; check its permissions", dir,
                     strerror(e));
  }
  int bad = fchmod(fd, 0600) != 0 || write_all(fd, header, strlen(header)) ||
            write_all(fd, yaml, strlen(yaml)) || fsync(fd) != 0;
  int e = errno;
  free(yaml);
  if (close(fd) != 0 && !bad) {
    bad = 1;
    e = errno;
  }
  if (!bad && rename(tmp, target) != 0) {
    bad = 1;
    e = errno;
  }
  if (bad) {
    unlink(tmp);
    return td_errorf(err, TD_EIO, "cannot write %s: %s; check the disk and the permissions", target,
                     strerror(e));
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  f->exists = 1;
  return 0;
}
