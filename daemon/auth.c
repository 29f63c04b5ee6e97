/* Tokens, principals, roles and owners (see auth.h). */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define TOKEN_FILE_MAX ((size_t)4 << 20)
#define TOKEN_MIN 16
#define NAME_MAX_LEN 128
#define UID_NAMES 64

typedef struct auth_token {
  unsigned char hash[32]; /* SHA-256 of the token: compared, never the token */
  char name[NAME_MAX_LEN + 1];
  td_role role;
} auth_token;

/* A unix socket peer's principal name, as looked up for its uid. */
typedef struct uid_name {
  unsigned uid;
  char name[160]; /* "unix:alice", or "unix:uid=1000" for a uid no user has */
} uid_name;

typedef struct auth_principal {
  char *name;
  td_role role;
  char **roots;
  size_t n_roots;
} auth_principal;

struct td_auth {
  auth_token *tokens;
  size_t n_tokens;
  auth_principal *principals;
  size_t n_principals;
  /* Data roots by role (indexed by td_role); n 0: all. */
  char **role_roots[TD_ROLE_ADMIN + 1];
  size_t n_role_roots[TD_ROLE_ADMIN + 1];
  td_role local_role;
  int users_read_all;
  /* Unix socket peers' names by uid, looked up once per td_auth: the
   * lookup may ask NSS (LDAP, sssd) and take a while, and a reload builds a
   * new td_auth, so a renamed user shows after the next SIGHUP. At most
   * UID_NAMES, the oldest replaced first. Guarded by uid_mu. */
  pthread_mutex_t uid_mu;
  uid_name uids[UID_NAMES];
  size_t n_uids, next_uid;
};

static const char *const role_names[] = {"none", "viewer", "user", "admin"};

const char *td_role_name(td_role r) {
  return r >= TD_ROLE_NONE && r <= TD_ROLE_ADMIN ? role_names[r] : "none";
}

int td_role_parse(const char *s) {
  for (int i = 0; i <= TD_ROLE_ADMIN; i++)
    if (s && strcmp(s, role_names[i]) == 0)
      return i;
  return -1;
}

/* ---- building */

static void free_list(char **v, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

void td_auth_free(td_auth *a) {
  if (!a)
    return;
  if (a->tokens) {
    OPENSSL_cleanse(a->tokens, a->n_tokens * sizeof *a->tokens);
    free(a->tokens);
  }
  for (size_t i = 0; i < a->n_principals; i++) {
    free(a->principals[i].name);
    free_list(a->principals[i].roots, a->principals[i].n_roots);
  }
  free(a->principals);
  for (int r = 0; r <= TD_ROLE_ADMIN; r++)
    free_list(a->role_roots[r], a->n_role_roots[r]);
  pthread_mutex_destroy(&a->uid_mu);
  free(a);
}

static int copy_list(char ***out, size_t *n, char *const *v, size_t count) {
  *out = NULL;
  *n = 0;
  if (!count)
    return 0;
  char **c = calloc(count, sizeof *c);
  if (!c)
    return -1;
  for (size_t i = 0; i < count; i++)
    if (!(c[i] = strdup(v[i]))) {
      free_list(c, i);
      return -1;
    }
  *out = c;
  *n = count;
  return 0;
}

static void sha256(const char *s, size_t n, unsigned char out[32]) {
  unsigned int len = 32;
  EVP_Digest(s, n, out, &len, EVP_sha256(), NULL);
}

/* A principal name: printable, no spaces or commas, 1 to 128 bytes. */
static int name_ok(const char *s, size_t n) {
  if (n == 0 || n > NAME_MAX_LEN)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == ',')
      return 0;
  return 1;
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  char *e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
    *--e = 0;
  return s;
}

/* TOKEN,NAME,ROLE per line; '#' comments and blank lines. */
static int parse_tokens(td_auth *a, const char *path, char *text, td_error *err) {
  size_t cap = 0;
  int line = 0;
  for (char *save = NULL, *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
    line++;
    char *l = trim(ln);
    if (!*l || *l == '#')
      continue;
    char *c1 = strchr(l, ','), *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
    if (!c1 || !c2 || strchr(c2 + 1, ','))
      return td_errorf(err, TD_EINVAL, "auth.token_file %s line %d: expected TOKEN,NAME,ROLE", path,
                       line);
    *c1 = *c2 = 0;
    char *tok = trim(l), *name = trim(c1 + 1), *role = trim(c2 + 1);
    size_t tl = strlen(tok);
    if (tl < TOKEN_MIN)
      return td_errorf(err, TD_EINVAL,
                       "auth.token_file %s line %d: the token is shorter than %d characters "
                       "(make one with: openssl rand -hex 32)",
                       path, line, TOKEN_MIN);
    for (size_t i = 0; i < tl; i++)
      if (tok[i] <= 0x20 || tok[i] >= 0x7f)
        return td_errorf(err, TD_EINVAL,
                         "auth.token_file %s line %d: a token is printable ASCII without spaces",
                         path, line);
    if (!name_ok(name, strlen(name)))
      return td_errorf(err, TD_EINVAL,
                       "auth.token_file %s line %d: the name must be 1 to %d printable "
                       "characters without spaces or commas",
                       path, line, NAME_MAX_LEN);
    int r = td_role_parse(role);
    if (r <= TD_ROLE_NONE)
      return td_errorf(err, TD_EINVAL,
                       "auth.token_file %s line %d: role '%.32s' is not admin, user or viewer",
                       path, line, role);
    if (a->n_tokens == cap) {
      cap = cap ? 2 * cap : 16;
      auth_token *nt = realloc(a->tokens, cap * sizeof *nt);
      if (!nt)
        return td_errorf(err, TD_ENOMEM, "auth.token_file: out of memory");
      a->tokens = nt;
    }
    auth_token *t = &a->tokens[a->n_tokens];
    sha256(tok, tl, t->hash);
    OPENSSL_cleanse(tok, tl);
    for (size_t i = 0; i < a->n_tokens; i++)
      if (CRYPTO_memcmp(a->tokens[i].hash, t->hash, 32) == 0)
        return td_errorf(err, TD_EINVAL,
                         "auth.token_file %s line %d: the same token is listed twice", path, line);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->role = (td_role)r;
    a->n_tokens++;
  }
  return TD_OK;
}

static int load_tokens(td_auth *a, const char *path, td_error *err) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return td_errorf(err, errno == ENOENT ? TD_ENOTFOUND : TD_EIO, "auth.token_file %s: %s", path,
                     strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && (st.st_mode & 0007))
    td_log_warn("the token file can be read by every user of this machine; chmod o-rwx it",
                "file=%s mode=%o", path, (unsigned)(st.st_mode & 0777));
  char *text = malloc(TOKEN_FILE_MAX + 1);
  size_t n = text ? fread(text, 1, TOKEN_FILE_MAX + 1, f) : 0;
  int bad = ferror(f);
  fclose(f);
  if (!text)
    return td_errorf(err, TD_ENOMEM, "auth.token_file: out of memory");
  int rc = TD_OK;
  if (bad || n > TOKEN_FILE_MAX)
    rc = td_errorf(err, TD_EINVAL, "auth.token_file %s: %s", path,
                   bad ? "read error" : "larger than 4 MiB");
  else {
    text[n] = 0;
    rc = parse_tokens(a, path, text, err);
  }
  OPENSSL_cleanse(text, n);
  free(text);
  return rc;
}

int td_auth_load(td_auth **out, const Traind__V1__DaemonConfig *cfg, td_error *err) {
  *out = NULL;
  td_auth *a = calloc(1, sizeof *a);
  if (!a)
    return td_errorf(err, TD_ENOMEM, "auth: out of memory");
  pthread_mutex_init(&a->uid_mu, NULL);
  const Traind__V1__Auth *c = cfg->auth;
  a->local_role = TD_ROLE_ADMIN;
  int rc = TD_OK;
  if (c) {
    if (c->local_role && *c->local_role)
      a->local_role = (td_role)td_role_parse(c->local_role); /* checked by the config */
    a->users_read_all = c->users_read_all;
    if (c->n_principals && !(a->principals = calloc(c->n_principals, sizeof *a->principals)))
      rc = td_errorf(err, TD_ENOMEM, "auth: out of memory");
    for (size_t i = 0; !rc && i < c->n_principals; i++) {
      const Traind__V1__Principal *p = c->principals[i];
      auth_principal *ap = &a->principals[a->n_principals++];
      int r = td_role_parse(p->role);
      ap->role = r > 0 ? (td_role)r : TD_ROLE_NONE;
      if (!(ap->name = strdup(p->name)) ||
          copy_list(&ap->roots, &ap->n_roots, p->data_dirs, p->n_data_dirs))
        rc = td_errorf(err, TD_ENOMEM, "auth: out of memory");
    }
    for (size_t i = 0; !rc && i < c->n_roles; i++) {
      int r = td_role_parse(c->roles[i]->role);
      if (r > 0 && copy_list(&a->role_roots[r], &a->n_role_roots[r], c->roles[i]->data_dirs,
                             c->roles[i]->n_data_dirs))
        rc = td_errorf(err, TD_ENOMEM, "auth: out of memory");
    }
    if (!rc && c->token_file && *c->token_file)
      rc = load_tokens(a, c->token_file, err);
  }
  if (rc) {
    td_auth_free(a);
    return rc;
  }
  *out = a;
  return TD_OK;
}

size_t td_auth_tokens(const td_auth *a) { return a ? a->n_tokens : 0; }

/* ---- deciding */

/* The token's entry, or NULL: every entry is compared (in constant time)
 * whatever matches, so the time says nothing about the tokens. */
static const auth_token *find_token(const td_auth *a, const char *tok) {
  unsigned char h[32];
  sha256(tok, strlen(tok), h);
  const auth_token *found = NULL;
  for (size_t i = 0; i < a->n_tokens; i++) {
    int eq = CRYPTO_memcmp(a->tokens[i].hash, h, 32) == 0;
    found = eq ? &a->tokens[i] : found;
  }
  OPENSSL_cleanse(h, sizeof h);
  return found;
}

static const auth_principal *find_principal(const td_auth *a, const char *name) {
  for (size_t i = 0; name && i < a->n_principals; i++)
    if (strcmp(a->principals[i].name, name) == 0)
      return &a->principals[i];
  return NULL;
}

/* The least role a method needs; the methods that touch one job check its
 * owner too (td_auth_job). */
static td_role method_role(const char *path, const char **needs) {
  static const struct {
    const char *method;
    td_role role;
  } table[] = {
      {"/traind.v1.Trainer/SubmitJob", TD_ROLE_USER},
      {"/traind.v1.Trainer/CancelJob", TD_ROLE_USER},
      {"/traind.v1.Trainer/SaveCheckpoint", TD_ROLE_USER},
      {"/traind.v1.Trainer/ExportCheckpoint", TD_ROLE_USER},
      {"/traind.v1.Trainer/Sample", TD_ROLE_USER},
      {"/traind.v1.Trainer/GetJob", TD_ROLE_VIEWER},
      {"/traind.v1.Trainer/ListJobs", TD_ROLE_VIEWER},
      {"/traind.v1.Trainer/GetMetrics", TD_ROLE_VIEWER},
      {"/traind.v1.Trainer/GetExamples", TD_ROLE_VIEWER},
      {"/traind.v1.Trainer/WatchMetrics", TD_ROLE_VIEWER},
      {"/traind.v1.Trainer/ListDevices", TD_ROLE_VIEWER},
      {"/traind.v1.Trainer/GetDaemonInfo", TD_ROLE_VIEWER},
      {"/grpc.health.v1.Health/Check", TD_ROLE_VIEWER},
      {"/grpc.health.v1.Health/Watch", TD_ROLE_VIEWER},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(table[i].method, path) == 0) {
      *needs = table[i].role == TD_ROLE_USER ? "user or admin" : "viewer, user or admin";
      return table[i].role;
    }
  *needs = "admin";
  return TD_ROLE_ADMIN;
}

static const char *short_method(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* Refusals are logged, at most 10 a second (a client retrying in a loop
 * does not flood the log; the Prometheus counters count every one). */
static int refused(const td_rpc_call *call, const td_rpc_method *m, int code, const char *who,
                   const char *why) {
  static time_t second;
  static int in_second;
  time_t now = time(NULL);
  if (now != second) {
    second = now;
    in_second = 0;
  }
  if (in_second++ < 10)
    td_log_info("call refused", "method=%s code=%s principal=\"%s\" peer=%s why=\"%s\"", m->path,
                td_grpc_code_name(code), who, td_rpc_peer(call), why);
  return code;
}

void td_auth_unix_name(td_auth *a, unsigned uid, char *buf, size_t n) {
  pthread_mutex_lock(&a->uid_mu);
  for (size_t i = 0; i < a->n_uids; i++)
    if (a->uids[i].uid == uid) {
      snprintf(buf, n, "%s", a->uids[i].name);
      pthread_mutex_unlock(&a->uid_mu);
      return;
    }
  pthread_mutex_unlock(&a->uid_mu);
  /* Looked up outside the lock: two callers may both look up a new uid,
   * and the second finds the first one's entry. */
  uid_name u = {.uid = uid};
  struct passwd pw, *res = NULL;
  char pwbuf[1024];
  int rc = getpwuid_r((uid_t)uid, &pw, pwbuf, sizeof pwbuf, &res);
  if (rc == 0 && res)
    snprintf(u.name, sizeof u.name, "unix:%.120s", res->pw_name);
  else
    snprintf(u.name, sizeof u.name, "unix:uid=%u", uid);
  snprintf(buf, n, "%s", u.name);
  /* A uid no user has is remembered too; a failed lookup (rc set) is not,
   * so that it is tried again. */
  if (rc != 0)
    return;
  pthread_mutex_lock(&a->uid_mu);
  int seen = 0;
  for (size_t i = 0; i < a->n_uids && !seen; i++)
    seen = a->uids[i].uid == uid;
  if (!seen) {
    size_t slot = a->n_uids < UID_NAMES ? a->n_uids++ : a->next_uid++ % UID_NAMES;
    a->uids[slot] = u;
  }
  pthread_mutex_unlock(&a->uid_mu);
}

static int authorize(td_auth *a, td_rpc_call *call, const td_rpc_method *m,
                     const td_rpc_caller *who, char *why, size_t n);

int td_auth_authorize(void *arg, td_rpc_call *call, const td_rpc_method *m,
                      const td_rpc_caller *who, char *why, size_t n) {
  int code = authorize(*(td_auth *const *)arg, call, m, who, why, n);
  if (code != TD_GRPC_OK) {
    const char *me = td_rpc_identity(call, NULL);
    refused(call, m, code, me ? me : "", why);
  }
  return code;
}

static int authorize(td_auth *a, td_rpc_call *call, const td_rpc_method *m,
                     const td_rpc_caller *who, char *why, size_t n) {
  char name[160];
  td_role role = TD_ROLE_NONE;
  const char *via = "";
  if (who->bad_authorization) {
    snprintf(why, n,
             "the authorization header must be 'Bearer TOKEN' (once); fix the client's "
             "credentials");
    return TD_GRPC_UNAUTHENTICATED;
  }
  if (who->bearer) {
    if (who->transport == TD_RPC_PLAINTEXT) {
      snprintf(why, n,
               "bearer tokens are not accepted over plaintext TCP on a network address (anyone "
               "on the path could read them); call over a TLS listener");
      return TD_GRPC_UNAUTHENTICATED;
    }
    const auth_token *t = find_token(a, who->bearer);
    if (!t) {
      snprintf(why, n,
               "unknown bearer token: it is not in the daemon's auth.token_file (mistyped, or "
               "revoked); ask the daemon's admin for a token");
      return TD_GRPC_UNAUTHENTICATED;
    }
    snprintf(name, sizeof name, "%s", t->name);
    role = t->role;
    via = "token";
  } else if (who->cert_name) {
    snprintf(name, sizeof name, "%s", who->cert_name);
    const auth_principal *p = find_principal(a, who->cert_name);
    if (!p || p->role == TD_ROLE_NONE) {
      td_rpc_set_identity(call, name, TD_ROLE_NONE);
      snprintf(why, n,
               "principal '%.128s' (client certificate) has no role: the daemon's admin adds it "
               "to auth.principals with role admin, user or viewer",
               who->cert_name);
      return TD_GRPC_PERMISSION_DENIED;
    }
    role = p->role;
    via = "certificate";
  } else if (who->transport == TD_RPC_UNIX || who->transport == TD_RPC_LOOPBACK) {
    if (a->local_role == TD_ROLE_NONE) {
      snprintf(why, n,
               "no credentials: this daemon asks for a bearer token on the unix socket and "
               "loopback too (auth.local_role: none); give trainctl --token-file");
      return TD_GRPC_UNAUTHENTICATED;
    }
    if (who->transport == TD_RPC_LOOPBACK) {
      snprintf(name, sizeof name, "local");
    } else if (who->has_uid) {
      td_auth_unix_name(a, who->uid, name, sizeof name);
    } else {
      snprintf(name, sizeof name, "unix:");
    }
    role = a->local_role;
    via = "local";
  } else if (who->transport == TD_RPC_PLAINTEXT) {
    snprintf(name, sizeof name, "anonymous");
    role = TD_ROLE_ADMIN; /* the listener is insecure: true */
    via = "insecure";
  } else {
    snprintf(why, n,
             "no credentials: present a client certificate signed by the daemon's client CA "
             "(trainctl --tls-cert/--tls-key) or a bearer token (trainctl --token-file)");
    return TD_GRPC_UNAUTHENTICATED;
  }
  td_rpc_set_identity(call, name, (int)role);
  const char *needs;
  td_role least = method_role(m->path, &needs);
  if (role < least) {
    snprintf(why, n, "principal '%s' (role %s, by %s) may not call %s: it needs role %s", name,
             td_role_name(role), via, short_method(m->path), needs);
    return TD_GRPC_PERMISSION_DENIED;
  }
  return TD_GRPC_OK;
}

int td_auth_reads_all(const td_auth *a, const td_rpc_call *call) {
  int role = TD_ROLE_NONE;
  if (!td_rpc_identity(call, &role))
    return 0;
  return role == TD_ROLE_ADMIN || role == TD_ROLE_VIEWER ||
         (role == TD_ROLE_USER && a->users_read_all);
}

int td_auth_job(const td_auth *a, const td_rpc_call *call, const char *job_id, const char *owner,
                td_job_action action, char *why, size_t n) {
  int role = TD_ROLE_NONE;
  const char *me = td_rpc_identity(call, &role);
  if (!me) {
    snprintf(why, n, "the call has no principal");
    return TD_GRPC_PERMISSION_DENIED;
  }
  if (role == TD_ROLE_ADMIN)
    return TD_GRPC_OK;
  const int mine = owner && *owner && strcmp(owner, me) == 0;
  if (action == TD_JOB_READ && (mine || td_auth_reads_all(a, call)))
    return TD_GRPC_OK;
  if (action != TD_JOB_READ && role == TD_ROLE_USER && mine)
    return TD_GRPC_OK;
  static const char *const verbs[] = {"read", "cancel or checkpoint", "export"};
  if (!owner || !*owner)
    snprintf(why, n,
             "job %s has no recorded owner (it was submitted before owners were kept); only "
             "an admin may %s it",
             job_id, verbs[action]);
  else if (action == TD_JOB_READ)
    snprintf(why, n,
             "job %s belongs to '%s'; principal '%s' (role %s) reads only its own jobs "
             "(auth.users_read_all lets users read all)",
             job_id, owner, me, td_role_name((td_role)role));
  else
    snprintf(why, n, "job %s belongs to '%s'; principal '%s' (role %s) may not %s it", job_id,
             owner, me, td_role_name((td_role)role), verbs[action]);
  return TD_GRPC_PERMISSION_DENIED;
}

/* The role an owner has now: its principal entry, its token, or the local
 * and insecure names. */
static td_role role_of(const td_auth *a, const char *owner) {
  const auth_principal *p = find_principal(a, owner);
  if (p)
    return p->role;
  for (size_t i = 0; i < a->n_tokens; i++)
    if (strcmp(a->tokens[i].name, owner) == 0)
      return a->tokens[i].role;
  if (strcmp(owner, "local") == 0 || strncmp(owner, "unix:", 5) == 0)
    return a->local_role;
  if (strcmp(owner, "anonymous") == 0 || !*owner)
    return TD_ROLE_ADMIN; /* insecure listeners; records from before owners */
  return TD_ROLE_NONE;
}

int td_auth_roots(const td_auth *a, const char *owner, const char *const **roots, size_t *n) {
  *roots = NULL;
  *n = 0;
  const auth_principal *p = find_principal(a, owner ? owner : "");
  if (p && p->n_roots) {
    *roots = (const char *const *)p->roots;
    *n = p->n_roots;
    return 1;
  }
  td_role role = role_of(a, owner ? owner : "");
  if (role == TD_ROLE_ADMIN)
    return 0;
  if (role == TD_ROLE_NONE)
    return 1; /* an owner without a role now reads nothing */
  if (a->n_role_roots[role]) {
    *roots = (const char *const *)a->role_roots[role];
    *n = a->n_role_roots[role];
    return 1;
  }
  return 0;
}
