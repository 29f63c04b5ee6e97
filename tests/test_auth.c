/* The daemon's security rules without a server (daemon/auth.c,
 * daemon/config.c): the token file's grammar and its refusals; the config
 * checks of listeners, TLS, roles and principals' data roots; which data
 * roots a job owner's jobs read. Calls over real sockets, certificates and
 * the role matrix are tests/e2e/daemon_security.py. */
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "check.h"
#include "config.h"
#include "pbjson.h"

static char dir[] = "/tmp/td-auth-XXXXXX";

static const char *write_file(const char *name, const char *text) {
  static char path[4][512];
  static int k;
  char *p = path[k++ % 4];
  snprintf(p, 512, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  CHECK(f != NULL, "cannot write %s", p);
  if (f) {
    fputs(text, f);
    fclose(f);
  }
  chmod(p, 0600);
  return p;
}

/* A config from YAML text through the daemon's own loader. */
static int load_config(const char *yaml, Traind__V1__DaemonConfig **c, td_error *err) {
  return td_config_load(write_file("traind.yaml", yaml), c, err);
}

static int load_auth(const char *yaml, td_auth **a, td_error *err) {
  Traind__V1__DaemonConfig *c = NULL;
  int rc = load_config(yaml, &c, err);
  if (!rc)
    rc = td_auth_load(a, c, err);
  td_config_free(c);
  return rc;
}

static void test_tokens(void) {
  const char *tok = write_file("tokens", "# comment\n\n"
                                         "0123456789abcdef0123,alice,user\n"
                                         "  fedcba9876543210fedc , ops , admin  \n");
  char yaml[1024];
  snprintf(yaml, sizeof yaml, "auth: {token_file: %s}\n", tok);
  td_auth *a = NULL;
  td_error err = {0};
  CHECK(load_auth(yaml, &a, &err) == TD_OK, "tokens: %s", err.msg);
  CHECK(td_auth_tokens(a) == 2, "tokens loaded: %zu", td_auth_tokens(a));
  td_auth_free(a);

  static const struct {
    const char *text, *want;
  } bad[] = {
      {"0123456789abcdef0123,alice\n", "line 1: expected TOKEN,NAME,ROLE"},
      {"# c\nshort,alice,user\n", "line 2: the token is shorter than 16 characters"},
      {"0123456789abcdef0123,alice,root\n", "role 'root' is not admin, user or viewer"},
      {"0123456789abcdef0123,alice,none\n", "role 'none' is not admin, user or viewer"},
      {"0123456789abcdef0123,al ice,user\n", "the name must be 1 to 128 printable"},
      {"0123456789abcdef0123,a,user\n0123456789abcdef0123,b,viewer\n",
       "line 2: the same token is listed twice"},
      {"0123456789abcdef0123,a,user,extra\n", "expected TOKEN,NAME,ROLE"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tok = write_file("tokens", bad[i].text);
    snprintf(yaml, sizeof yaml, "auth: {token_file: %s}\n", tok);
    a = NULL;
    memset(&err, 0, sizeof err);
    int rc = load_auth(yaml, &a, &err);
    CHECK(rc == TD_EINVAL && a == NULL, "bad token file %zu loaded (rc %d)", i, rc);
    CHECK_STR_CONTAINS(err.msg, bad[i].want);
  }
  snprintf(yaml, sizeof yaml, "auth: {token_file: %s/missing}\n", dir);
  memset(&err, 0, sizeof err);
  CHECK(load_auth(yaml, &a, &err) == TD_ENOTFOUND, "a missing token file: %s", err.msg);
  CHECK_STR_CONTAINS(err.msg, "missing");
}

static void test_config_checks(void) {
  static const struct {
    const char *yaml, *want;
  } bad[] = {
      {"listeners: [{address: ''}]\n", "listeners[0].address: required"},
      {"listeners: [{address: '0.0.0.0:1', tls: {cert_file: c}}]\n",
       "tls needs cert_file and key_file"},
      {"listeners: [{address: '0.0.0.0:1', tls: {cert_file: c, key_file: k, client_cert: "
       "require}}]\n",
       "needs tls.client_ca_file"},
      {"listeners: [{address: '0.0.0.0:1', tls: {cert_file: c, key_file: k}}]\n",
       "nobody could call"},
      {"listeners: [{address: '0.0.0.0:1', tls: {cert_file: c, key_file: k, client_ca_file: "
       "a, client_cert: sometimes}}]\n",
       "'sometimes' is not require, request or none"},
      {"listeners: [{address: '0.0.0.0:1', insecure: true, tls: {cert_file: c, key_file: k, "
       "client_ca_file: a}}]\n",
       "insecure is for plaintext listeners"},
      {"health_listen: unix:/tmp/h.sock\n", "health_listen: 'unix:/tmp/h.sock' is not host:port"},
      {"auth: {local_role: root}\n", "auth.local_role: 'root'"},
      {"auth: {principals: [{name: alice}]}\n", "auth.principals[0] (alice).role"},
      {"auth: {principals: [{name: alice, role: user}, {name: alice, role: viewer}]}\n",
       "'alice' is listed twice"},
      {"data_dirs: [/data]\nauth: {principals: [{name: a, role: user, data_dirs: [/other]}]}\n",
       "'/other' is not inside any of data_dirs"},
      {"data_dirs: [/data]\nauth: {principals: [{name: a, role: user, data_dirs: "
       "[/data/../etc]}]}\n",
       "must be an absolute path without . or .."},
      {"data_dirs: [/data]\nauth: {principals: [{name: a, role: user, data_dirs: [/database]}]}\n",
       "'/database' is not inside any of data_dirs"},
      {"data_dirs: [/data]\nauth: {roles: [{role: admins, data_dirs: [/data]}]}\n",
       "auth.roles[0].role: 'admins'"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    Traind__V1__DaemonConfig *c = NULL;
    td_error err = {0};
    int rc = load_config(bad[i].yaml, &c, &err);
    CHECK(rc == TD_EINVAL && c == NULL, "bad config %zu accepted (rc %d): %s", i, rc, bad[i].yaml);
    CHECK_STR_CONTAINS(err.msg, bad[i].want);
  }
  /* Good ones; with listeners the plaintext unix default is not added. */
  Traind__V1__DaemonConfig *c = NULL;
  td_error err = {0};
  CHECK(load_config("data_dirs: [/data/]\n"
                    "listeners: [{address: '0.0.0.0:7443', tls: {cert_file: c, key_file: k, "
                    "client_ca_file: a}}, {address: '0.0.0.0:7070', insecure: true}]\n"
                    "health_listen: '0.0.0.0:7071'\n"
                    "auth: {local_role: none, users_read_all: true, principals: [{name: a, "
                    "role: user, data_dirs: [/data/a, /data]}]}\n",
                    &c, &err) == TD_OK,
        "good config: %s", err.msg);
  CHECK(c && c->n_listen == 0 && c->n_listeners == 2, "listen %zu listeners %zu",
        c ? c->n_listen : 0, c ? c->n_listeners : 0);
  /* tls.client_cert's default is filled in: require with a CA. */
  CHECK(c && c->n_listeners == 2 && strcmp(c->listeners[0]->tls->client_cert, "require") == 0,
        "client_cert with a CA: '%s'",
        c && c->n_listeners ? c->listeners[0]->tls->client_cert : "");
  td_config_free(c);
  /* None without one; a value given stays, and a second finish keeps both. */
  const char *tok = write_file("tokens", "0123456789abcdef0123,alice,user\n");
  char yaml[1024];
  snprintf(yaml, sizeof yaml,
           "listeners: [{address: '0.0.0.0:7443', tls: {cert_file: c, key_file: k}}, "
           "{address: '0.0.0.0:7444', tls: {cert_file: c, key_file: k, client_ca_file: a, "
           "client_cert: request}}]\n"
           "auth: {token_file: %s}\n",
           tok);
  c = NULL;
  CHECK(load_config(yaml, &c, &err) == TD_OK, "config with a token file: %s", err.msg);
  for (int pass = 0; c && pass < 2; pass++) {
    CHECK(strcmp(c->listeners[0]->tls->client_cert, "none") == 0, "client_cert without a CA: '%s'",
          c->listeners[0]->tls->client_cert);
    CHECK(strcmp(c->listeners[1]->tls->client_cert, "request") == 0, "client_cert given: '%s'",
          c->listeners[1]->tls->client_cert);
    CHECK(td_config_finish(c, &err) == TD_OK, "finish again: %s", err.msg);
  }
  td_config_free(c);
}

static void test_roots(void) {
  const char *tok = write_file("tokens", "0123456789abcdef0123,tuser,user\n"
                                         "0123456789abcdef0124,tadmin,admin\n"
                                         "0123456789abcdef0125,tview,viewer\n");
  char yaml[1024];
  snprintf(yaml, sizeof yaml,
           "data_dirs: [/d]\n"
           "auth: {token_file: %s, local_role: user,\n"
           "  principals: [{name: alice, role: user, data_dirs: [/d/alice]}, {name: carol, "
           "role: user}],\n"
           "  roles: [{role: user, data_dirs: [/d/users]}]}\n",
           tok);
  td_auth *a = NULL;
  td_error err = {0};
  CHECK(load_auth(yaml, &a, &err) == TD_OK, "auth: %s", err.msg);
  if (!a)
    return;
  const char *const *r = NULL;
  size_t n = 0;
  /* A principal's own roots. */
  CHECK(td_auth_roots(a, "alice", &r, &n) == 1 && n == 1 && strcmp(r[0], "/d/alice") == 0,
        "alice: n %zu", n);
  /* Its role's, for a listed principal without its own and for a token. */
  CHECK(td_auth_roots(a, "carol", &r, &n) == 1 && n == 1 && strcmp(r[0], "/d/users") == 0,
        "carol: n %zu", n);
  CHECK(td_auth_roots(a, "tuser", &r, &n) == 1 && n == 1 && strcmp(r[0], "/d/users") == 0,
        "tuser: n %zu", n);
  /* Local callers have local_role (user here). */
  CHECK(td_auth_roots(a, "unix:bob", &r, &n) == 1 && n == 1, "unix:bob: n %zu", n);
  /* Admins and roles without a list read all of data_dirs. */
  CHECK(td_auth_roots(a, "tadmin", &r, &n) == 0, "tadmin restricted");
  CHECK(td_auth_roots(a, "tview", &r, &n) == 0, "tview restricted");
  /* An owner that has no role any more reads nothing. */
  CHECK(td_auth_roots(a, "mallory", &r, &n) == 1 && n == 0, "mallory: n %zu", n);
  td_auth_free(a);
}

static void test_role_names(void) {
  CHECK(td_role_parse("admin") == TD_ROLE_ADMIN && td_role_parse("user") == TD_ROLE_USER &&
            td_role_parse("viewer") == TD_ROLE_VIEWER && td_role_parse("none") == TD_ROLE_NONE,
        "role names");
  CHECK(td_role_parse("Admin") == -1 && td_role_parse("") == -1 && td_role_parse(NULL) == -1,
        "bad role names");
  CHECK(strcmp(td_role_name(TD_ROLE_USER), "user") == 0, "td_role_name");
}

/* What the uid's name is, read here directly. */
static void unix_name_of(unsigned uid, char *buf, size_t n) {
  struct passwd pw, *res = NULL;
  char pwbuf[1024];
  if (getpwuid_r((uid_t)uid, &pw, pwbuf, sizeof pwbuf, &res) == 0 && res)
    snprintf(buf, n, "unix:%.120s", res->pw_name);
  else
    snprintf(buf, n, "unix:uid=%u", uid);
}

/* Unix socket peers' names, remembered by uid: the same names as a direct
 * lookup, also for uids no user has, after the table of 64 has turned over
 * and on the second look. */
static void test_unix_names(void) {
  td_auth *a = NULL;
  td_error err = {0};
  CHECK(load_auth("{}\n", &a, &err) == TD_OK, "auth: %s", err.msg);
  if (!a)
    return;
  char got[160], want[160];
  td_auth_unix_name(a, 0, got, sizeof got);
  CHECK(strcmp(got, "unix:root") == 0, "uid 0: %s", got);
  unsigned me = (unsigned)getuid();
  unix_name_of(me, want, sizeof want);
  for (int pass = 0; pass < 2; pass++) {
    td_auth_unix_name(a, me, got, sizeof got);
    CHECK(strcmp(got, want) == 0, "uid %u, look %d: %s, want %s", me, pass, got, want);
  }
  /* Uids no user has (checked), more of them than the table holds. */
  unsigned base = 3999999000u;
  for (unsigned k = 0; k < 100; k++) {
    char direct[160], expect[160];
    unix_name_of(base + k, direct, sizeof direct);
    snprintf(expect, sizeof expect, "unix:uid=%u", base + k);
    CHECK(strcmp(direct, expect) == 0, "uid %u has a user: %s", base + k, direct);
    td_auth_unix_name(a, base + k, got, sizeof got);
    CHECK(strcmp(got, expect) == 0, "uid %u: %s", base + k, got);
  }
  for (int pass = 0; pass < 2; pass++) {
    td_auth_unix_name(a, 0, got, sizeof got);
    CHECK(strcmp(got, "unix:root") == 0, "uid 0 after the table turned over: %s", got);
    td_auth_unix_name(a, me, got, sizeof got);
    CHECK(strcmp(got, want) == 0, "uid %u after the table turned over: %s", me, got);
    td_auth_unix_name(a, base + 99, got, sizeof got);
    CHECK(strcmp(got, "unix:uid=3999999099") == 0, "uid %u again: %s", base + 99, got);
  }
  /* A short buffer gets a truncated, terminated name. */
  char shortbuf[8];
  td_auth_unix_name(a, 0, shortbuf, sizeof shortbuf);
  CHECK(strcmp(shortbuf, "unix:ro") == 0, "short buffer: %s", shortbuf);
  td_auth_free(a);
}

int main(void) {
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_tokens();
  test_config_checks();
  test_roots();
  test_role_names();
  test_unix_names();
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  return td_check_exit();
}
