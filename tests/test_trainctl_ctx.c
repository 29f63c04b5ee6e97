/* trainctl's contexts and connection settings, checked without a daemon:
 * the config file's parsing (strict keys, names), where it is looked for,
 * the precedence flag > environment > context > default, relative and ~/
 * paths in a context, use-context and set-context rewriting the file
 * atomically (mode 0600, through a symbolic link, nothing left behind),
 * and the credential helpers that need no certificates: token files, which
 * targets count as loopback, the name TLS checks, and the reading of
 * gRPC's TLS failure texts. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../client/context.h"
#include "../client/credentials.h"
#include "check.h"

/* NULL reads as "(null)", so that a missing value fails the check. */
static const char *str_or_null(const char *s) { return s ? s : "(null)"; }
#define CHECK_STR(got, want) \
  CHECK(strcmp(str_or_null(got), (want)) == 0, "got \"%s\", want \"%s\"", str_or_null(got), (want))

static char tmp[512];

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  CHECK(f != NULL, "create %s: %s", path, strerror(errno));
  if (!f)
    return;
  fputs(text, f);
  fclose(f);
}

static char *path_in(const char *name) {
  static char buf[8][1024];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 1024, "%s/%s", tmp, name);
  return p;
}

/* Entries of a directory other than . and ..; names[] gets the first few. */
static int dir_entries(const char *dir, char names[][256], int cap) {
  DIR *d = opendir(dir);
  int n = 0;
  if (!d)
    return -1;
  for (struct dirent *e; (e = readdir(d));) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    if (n < cap)
      snprintf(names[n], 256, "%s", e->d_name);
    n++;
  }
  closedir(d);
  return n;
}

static const char config_text[] = "# two daemons\n"
                                  "current_context: prod\n"
                                  "contexts:\n"
                                  "- name: prod\n"
                                  "  address: traind.example.com:7070\n"
                                  "  tls_ca: certs/ca.pem\n"
                                  "  tls_cert: /etc/trainctl/alice.pem\n"
                                  "  tls_key: ~/keys/alice.key\n"
                                  "  token_file: prod.token\n"
                                  "- name: local\n"
                                  "  address: /run/traind/traind.sock\n"
                                  "  tls: false\n"
                                  "- name: sys\n"
                                  "  address: traind.internal:443\n"
                                  "  tls: true\n";

static void test_parse(void) {
  td_ctx_file f;
  td_error err = {0};
  char *cfg = path_in("cfg/config.yaml");
  mkdir(path_in("cfg"), 0700);
  write_file(cfg, config_text);
  CHECK(td_ctx_load(&f, cfg, &err) == 0, "load: %s", err.msg);
  CHECK(f.exists == 1, "the file exists");
  CHECK(f.cfg->n_contexts == 3, "3 contexts, got %zu", f.cfg->n_contexts);
  CHECK_STR(f.cfg->current_context, "prod");
  CHECK_STR(f.dir, path_in("cfg"));
  Traind__V1__ClientContext *p = td_ctx_find(&f, "prod");
  CHECK(p != NULL, "prod is there");
  if (p) {
    CHECK_STR(p->address, "traind.example.com:7070");
    CHECK_STR(p->tls_ca, "certs/ca.pem"); /* as written; resolved later */
    CHECK(!p->tls, "prod: tls not set");
  }
  CHECK(td_ctx_find(&f, "sys") && td_ctx_find(&f, "sys")->tls, "sys: tls true");
  CHECK(td_ctx_find(&f, "nope") == NULL, "no such context");
  char names[256];
  td_ctx_names(&f, names, sizeof names);
  CHECK_STR(names, "prod, local, sys");
  td_ctx_file_free(&f);

  /* JSON is YAML too, and the lowerCamelCase names are accepted. */
  write_file(cfg, "{\"currentContext\": \"a\", \"contexts\": [{\"name\": \"a\", "
                  "\"tokenFile\": \"t\"}]}");
  CHECK(td_ctx_load(&f, cfg, &err) == 0, "load JSON: %s", err.msg);
  CHECK(f.cfg->n_contexts == 1 && strcmp(f.cfg->contexts[0]->token_file, "t") == 0, "JSON context");
  td_ctx_file_free(&f);

  /* Unknown keys are errors, with the line and the field's path. */
  write_file(cfg, "contexts:\n- name: a\n  adress: x:1\n");
  CHECK(td_ctx_load(&f, cfg, &err) != 0, "a misspelt key is refused");
  CHECK_STR_CONTAINS(err.msg, cfg);
  CHECK_STR_CONTAINS(err.msg, "line 3");
  CHECK_STR_CONTAINS(err.msg, "contexts[0].adress");
  CHECK_STR_CONTAINS(err.msg, "fix it");
  CHECK(f.cfg == NULL, "nothing loaded");

  write_file(cfg, "contexts:\n- name: a\n- name: b\n- name: a\n");
  CHECK(td_ctx_load(&f, cfg, &err) == TD_EINVAL, "two contexts called a");
  CHECK_STR_CONTAINS(err.msg, "contexts[2]: a second context called 'a'");

  write_file(cfg, "contexts:\n- address: x:1\n");
  CHECK(td_ctx_load(&f, cfg, &err) == TD_EINVAL, "a context without a name");
  CHECK_STR_CONTAINS(err.msg, "contexts[0]: the context has no name");

  write_file(cfg, "contexts: [\n");
  CHECK(td_ctx_load(&f, cfg, &err) == TD_EINVAL, "broken YAML");
  CHECK_STR_CONTAINS(err.msg, cfg);

  /* A missing file is an empty config. */
  CHECK(td_ctx_load(&f, path_in("cfg/none.yaml"), &err) == 0, "missing file: %s", err.msg);
  CHECK(!f.exists && f.cfg && f.cfg->n_contexts == 0 && !*f.cfg->current_context,
        "missing file: no contexts");
  td_ctx_file_free(&f);
}

static void test_default_path(void) {
  char buf[1024];
  td_error err = {0};
  setenv("TRAINCTL_CONFIG", "/x/trainctl.yaml", 1);
  setenv("XDG_CONFIG_HOME", "/xdg", 1);
  setenv("HOME", "/home/u", 1);
  CHECK(td_ctx_default_path(buf, sizeof buf, &err) == 0, "path: %s", err.msg);
  CHECK_STR(buf, "/x/trainctl.yaml");
  unsetenv("TRAINCTL_CONFIG");
  CHECK(td_ctx_default_path(buf, sizeof buf, &err) == 0, "path: %s", err.msg);
  CHECK_STR(buf, "/xdg/trainctl/config.yaml");
  /* The XDG spec ignores a relative XDG_CONFIG_HOME. */
  setenv("XDG_CONFIG_HOME", "relative", 1);
  CHECK(td_ctx_default_path(buf, sizeof buf, &err) == 0, "path: %s", err.msg);
  CHECK_STR(buf, "/home/u/.config/trainctl/config.yaml");
  unsetenv("XDG_CONFIG_HOME");
  CHECK(td_ctx_default_path(buf, sizeof buf, &err) == 0, "path: %s", err.msg);
  CHECK_STR(buf, "/home/u/.config/trainctl/config.yaml");
}

static void test_resolve(void) {
  td_ctx_file f;
  td_error err = {0};
  char *cfg = path_in("cfg/config.yaml");
  write_file(cfg, config_text);
  CHECK(td_ctx_load(&f, cfg, &err) == 0, "load: %s", err.msg);
  setenv("HOME", "/home/u", 1);
  td_ctx_settings flags, env;
  td_ctx_conn k;

  /* The current context, with nothing else: its values, paths resolved. */
  td_ctx_settings_init(&flags);
  td_ctx_settings_init(&env);
  CHECK(td_ctx_resolve(&flags, &env, NULL, &f, &k, &err) == 0, "resolve: %s", err.msg);
  CHECK_STR(k.context, "prod");
  CHECK_STR(k.str[TD_CTX_ADDR], "traind.example.com:7070");
  CHECK_STR(k.origin[TD_CTX_ADDR], "context 'prod'");
  char want[1024];
  snprintf(want, sizeof want, "%s/certs/ca.pem", path_in("cfg"));
  CHECK_STR(k.str[TD_CTX_TLS_CA], want);
  CHECK_STR(k.str[TD_CTX_TLS_CERT], "/etc/trainctl/alice.pem");
  CHECK_STR(k.str[TD_CTX_TLS_KEY], "/home/u/keys/alice.key");
  snprintf(want, sizeof want, "%s/prod.token", path_in("cfg"));
  CHECK_STR(k.str[TD_CTX_TOKEN_FILE], want);
  CHECK(k.str[TD_CTX_TLS_SERVER_NAME] == NULL, "no server name");
  CHECK(k.tls == 1, "a CA means TLS");
  td_ctx_conn_free(&k);

  /* The environment beats the context, and a flag beats both; paths from
   * them are taken as they are (relative to the working directory). */
  setenv("TRAIND_ADDR", "env-host:1", 1);
  setenv("TRAINCTL_TLS_CA", "env-ca.pem", 1);
  setenv("TRAINCTL_TOKEN_FILE", "", 1); /* empty counts as unset */
  setenv("TRAINCTL_TLS_SERVER_NAME", "env.example", 1);
  td_ctx_settings_from_env(&env);
  flags.str[TD_CTX_TLS_CA] = "flag-ca.pem";
  CHECK(td_ctx_resolve(&flags, &env, NULL, &f, &k, &err) == 0, "resolve: %s", err.msg);
  CHECK_STR(k.str[TD_CTX_ADDR], "env-host:1");
  CHECK_STR(k.origin[TD_CTX_ADDR], "TRAIND_ADDR");
  CHECK_STR(k.str[TD_CTX_TLS_CA], "flag-ca.pem");
  CHECK_STR(k.origin[TD_CTX_TLS_CA], "--tls-ca");
  CHECK_STR(k.str[TD_CTX_TLS_SERVER_NAME], "env.example");
  CHECK_STR(k.origin[TD_CTX_TLS_SERVER_NAME], "TRAINCTL_TLS_SERVER_NAME");
  CHECK_STR(k.str[TD_CTX_TOKEN_FILE], want); /* still the context's */
  CHECK_STR(k.origin[TD_CTX_TOKEN_FILE], "context 'prod'");
  td_ctx_conn_free(&k);
  flags.str[TD_CTX_ADDR] = "/tmp/d.sock";
  CHECK(td_ctx_resolve(&flags, &env, NULL, &f, &k, &err) == 0, "resolve: %s", err.msg);
  CHECK_STR(k.str[TD_CTX_ADDR], "unix:/tmp/d.sock");
  CHECK_STR(k.origin[TD_CTX_ADDR], "--addr");
  td_ctx_conn_free(&k);
  unsetenv("TRAIND_ADDR");
  unsetenv("TRAINCTL_TLS_CA");
  unsetenv("TRAINCTL_TOKEN_FILE");
  unsetenv("TRAINCTL_TLS_SERVER_NAME");
  td_ctx_settings_init(&env);
  td_ctx_settings_init(&flags);

  /* Another context by name: an address that is a path becomes unix:, and
   * without TLS settings the connection is plaintext. */
  CHECK(td_ctx_resolve(&flags, &env, "local", &f, &k, &err) == 0, "resolve: %s", err.msg);
  CHECK_STR(k.str[TD_CTX_ADDR], "unix:/run/traind/traind.sock");
  CHECK(k.tls == 0 && !k.str[TD_CTX_TLS_CA] && !k.str[TD_CTX_TOKEN_FILE], "local: plaintext");
  td_ctx_conn_free(&k);
  CHECK(td_ctx_resolve(&flags, &env, "sys", &f, &k, &err) == 0, "resolve: %s", err.msg);
  CHECK(k.tls == 1 && !k.str[TD_CTX_TLS_CA], "sys: TLS with the system's roots");
  CHECK_STR(k.tls_origin, "context 'sys'");
  td_ctx_conn_free(&k);

  /* No context at all: the built-in default address. */
  CHECK(td_ctx_resolve(&flags, &env, "", &f, &k, &err) == 0, "resolve: %s", err.msg);
  CHECK_STR(k.str[TD_CTX_ADDR], TD_CTX_DEFAULT_ADDR);
  CHECK_STR(k.origin[TD_CTX_ADDR], "the default");
  CHECK(k.tls == 0 && !*k.context, "no context: plaintext");
  td_ctx_conn_free(&k);

  /* --tls=false drops the context's TLS settings, and contradicts a TLS
   * flag; --tls alone turns TLS on. */
  flags.tls = 0;
  CHECK(td_ctx_resolve(&flags, &env, NULL, &f, &k, &err) == 0, "resolve: %s", err.msg);
  CHECK(k.tls == 0 && !k.str[TD_CTX_TLS_CA] && !k.str[TD_CTX_TLS_CERT], "--tls=false");
  CHECK(k.str[TD_CTX_TOKEN_FILE] != NULL, "--tls=false keeps the token file");
  td_ctx_conn_free(&k);
  flags.str[TD_CTX_TLS_CERT] = "c.pem";
  CHECK(td_ctx_resolve(&flags, &env, NULL, &f, &k, &err) == TD_EINVAL, "contradiction");
  CHECK_STR_CONTAINS(err.msg, "--tls=false and --tls-cert contradict each other");
  td_ctx_settings_init(&flags);
  flags.tls = 1;
  CHECK(td_ctx_resolve(&flags, &env, "", &f, &k, &err) == 0, "resolve: %s", err.msg);
  CHECK(k.tls == 1 && !k.str[TD_CTX_TLS_CA], "--tls");
  td_ctx_conn_free(&k);
  td_ctx_settings_init(&flags);

  /* A context that is not there: the names there are. */
  CHECK(td_ctx_resolve(&flags, &env, "staging", &f, &k, &err) == TD_ENOTFOUND, "no staging");
  CHECK_STR_CONTAINS(err.msg, "no context 'staging'");
  CHECK_STR_CONTAINS(err.msg, "(contexts: prod, local, sys)");
  td_ctx_file_free(&f);
  write_file(cfg, "current_context: gone\ncontexts:\n- name: a\n");
  CHECK(td_ctx_load(&f, cfg, &err) == 0, "load: %s", err.msg);
  CHECK(td_ctx_resolve(&flags, &env, NULL, &f, &k, &err) == TD_ENOTFOUND, "current is gone");
  CHECK_STR_CONTAINS(err.msg, "the current context 'gone'");
  CHECK_STR_CONTAINS(err.msg, "use-context");
  /* ... which naming another context, or none, gets around. */
  CHECK(td_ctx_resolve(&flags, &env, "a", &f, &k, &err) == 0, "resolve: %s", err.msg);
  td_ctx_conn_free(&k);
  td_ctx_file_free(&f);
}

static void test_rewrite(void) {
  td_ctx_file f;
  td_error err = {0};
  /* The directory does not exist yet: it is made, mode 0700. */
  char *dir = path_in("new/trainctl"), *cfg = path_in("new/trainctl/config.yaml");
  CHECK(td_ctx_load(&f, cfg, &err) == 0, "load: %s", err.msg);
  td_ctx_settings s;
  td_ctx_settings_init(&s);
  s.str[TD_CTX_ADDR] = "traind:7070";
  s.str[TD_CTX_TLS_CA] = "ca.pem"; /* relative to the working directory */
  s.str[TD_CTX_TOKEN_FILE] = "~/t.token";
  int created = 0;
  CHECK(td_ctx_set(&f, "prod", &s, &created, &err) == 0 && created, "set prod: %s", err.msg);
  td_ctx_settings_init(&s);
  s.str[TD_CTX_ADDR] = "unix:/run/traind/traind.sock";
  CHECK(td_ctx_set(&f, "local", &s, &created, &err) == 0 && created, "set local: %s", err.msg);
  CHECK(td_ctx_use(&f, "prod", &err) == 0, "use prod: %s", err.msg);
  CHECK(td_ctx_use(&f, "nope", &err) == TD_ENOTFOUND, "use nope");
  CHECK_STR_CONTAINS(err.msg, "(contexts: prod, local)");
  CHECK(td_ctx_set(&f, "bad name", &s, &created, &err) == TD_EINVAL, "a name with a space");
  CHECK(td_ctx_save(&f, &err) == 0, "save: %s", err.msg);
  td_ctx_file_free(&f);
  struct stat st;
  CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700, "directory mode %o", st.st_mode & 0777);
  CHECK(stat(cfg, &st) == 0 && (st.st_mode & 0777) == 0600, "file mode %o", st.st_mode & 0777);
  char names[4][256];
  int n = dir_entries(dir, names, 4);
  CHECK(n == 1 && strcmp(names[0], "config.yaml") == 0, "only config.yaml in %s (%d, %s)", dir, n,
        n > 0 ? names[0] : "");

  /* Read back: what was set, with the relative path made absolute. */
  CHECK(td_ctx_load(&f, cfg, &err) == 0, "reload: %s", err.msg);
  CHECK_STR(f.cfg->current_context, "prod");
  CHECK(f.cfg->n_contexts == 2, "2 contexts");
  char cwd[1024], want[1100];
  CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
  snprintf(want, sizeof want, "%s/ca.pem", cwd);
  Traind__V1__ClientContext *p = td_ctx_find(&f, "prod");
  CHECK(p && strcmp(p->tls_ca, want) == 0, "tls_ca %s, want %s", p ? p->tls_ca : "-", want);
  CHECK(p && strcmp(p->token_file, "~/t.token") == 0, "~ paths are kept");

  /* Updating changes only what is given; "" clears. */
  td_ctx_settings_init(&s);
  s.str[TD_CTX_TLS_CA] = "";
  s.str[TD_CTX_TLS_SERVER_NAME] = "traind.example.com";
  s.tls = 1;
  CHECK(td_ctx_set(&f, "prod", &s, &created, &err) == 0 && !created, "update prod: %s", err.msg);
  CHECK(td_ctx_use(&f, "local", &err) == 0, "use local: %s", err.msg);
  CHECK(td_ctx_save(&f, &err) == 0, "save: %s", err.msg);
  td_ctx_file_free(&f);
  CHECK(td_ctx_load(&f, cfg, &err) == 0, "reload: %s", err.msg);
  CHECK_STR(f.cfg->current_context, "local");
  p = td_ctx_find(&f, "prod");
  CHECK(p && !*p->tls_ca && p->tls && strcmp(p->address, "traind:7070") == 0 &&
            strcmp(p->tls_server_name, "traind.example.com") == 0,
        "prod after the update");
  td_ctx_file_free(&f);

  /* The file as written is the YAML form of the message. */
  FILE *fp = fopen(cfg, "r");
  char text[4096] = "";
  size_t got = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
  text[got] = '\0';
  if (fp)
    fclose(fp);
  const char *written = text;
  CHECK_STR_CONTAINS(written, "current_context: local\n");
  CHECK_STR_CONTAINS(written, "- name: prod\n");
  CHECK_STR_CONTAINS(written, "  tls: true\n");

  /* Through a symbolic link: the link stays, the file it names changes. */
  char *link = path_in("link.yaml");
  CHECK(symlink(cfg, link) == 0, "symlink: %s", strerror(errno));
  CHECK(td_ctx_load(&f, link, &err) == 0, "load the link: %s", err.msg);
  CHECK(td_ctx_use(&f, "prod", &err) == 0, "use prod: %s", err.msg);
  CHECK(td_ctx_save(&f, &err) == 0, "save: %s", err.msg);
  td_ctx_file_free(&f);
  CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "the link is still a link");
  CHECK(td_ctx_load(&f, cfg, &err) == 0, "reload: %s", err.msg);
  CHECK_STR(f.cfg->current_context, "prod");
  td_ctx_file_free(&f);
  n = dir_entries(dir, names, 4);
  CHECK(n == 1, "no temporary file left (%d entries)", n);
}

static void test_token(void) {
  char *tok = NULL;
  td_error err = {0};
  char *p = path_in("t.token");
  write_file(p, "\n  \r\n  s3cr3t-Token.value \r\n second line\n");
  CHECK(td_cred_read_token(p, "--token-file", &tok, &err) == 0, "token: %s", err.msg);
  CHECK_STR(tok, "s3cr3t-Token.value");
  free(tok);
  write_file(p, "abc");
  CHECK(td_cred_read_token(p, NULL, &tok, &err) == 0, "no newline: %s", err.msg);
  CHECK_STR(tok, "abc");
  free(tok);
  write_file(p, " \n\t\n");
  CHECK(td_cred_read_token(p, "--token-file", &tok, &err) == TD_EINVAL && !tok, "blank file");
  CHECK_STR_CONTAINS(err.msg, "is empty");
  CHECK_STR_CONTAINS(err.msg, "(--token-file)");
  write_file(p, "two words\n");
  CHECK(td_cred_read_token(p, NULL, &tok, &err) == TD_EINVAL, "a space inside");
  CHECK_STR_CONTAINS(err.msg, "byte 0x20 at offset 3");
  CHECK(td_cred_read_token(path_in("none.token"), "context 'x'", &tok, &err) == TD_ENOTFOUND,
        "missing token file");
  CHECK_STR_CONTAINS(err.msg, "cannot read the token file");
  CHECK_STR_CONTAINS(err.msg, "(context 'x')");
}

static void test_targets(void) {
  static const struct {
    const char *target;
    int local;
    const char *name;
  } cases[] = {
      {"unix:/run/traind/traind.sock", 1, "localhost"},
      {"unix-abstract:traind", 1, "localhost"},
      {"localhost:7070", 1, "localhost"},
      {"LOCALHOST:7070", 1, "LOCALHOST"},
      {"127.0.0.1:7070", 1, "127.0.0.1"},
      {"127.8.9.10:7070", 1, "127.8.9.10"},
      {"[::1]:7070", 1, "::1"},
      {"[::ffff:127.0.0.1]:7070", 1, "::ffff:127.0.0.1"},
      {"dns:///localhost:7070", 1, "localhost"},
      {"dns://8.8.8.8/localhost:7070", 1, "localhost"},
      {"ipv4:127.0.0.1:1,127.0.0.2:2", 1, "127.0.0.1"},
      {"ipv4:127.0.0.1:1,10.0.0.2:2", 0, "127.0.0.1"},
      {"ipv6:[::1]:7070", 1, "::1"},
      {"0.0.0.0:7070", 0, "0.0.0.0"},
      {"[::]:7070", 0, "::"},
      {"10.1.2.3:7070", 0, "10.1.2.3"},
      {"traind.example.com:7070", 0, "traind.example.com"},
      {"traind.example.com", 0, "traind.example.com"},
      {"localhost.example.com:1", 0, "localhost.example.com"},
      {"128.0.0.1:1", 0, "128.0.0.1"},
      {"", 0, ""},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CHECK(td_cred_target_is_local(cases[i].target) == cases[i].local, "%s: local %d, want %d",
          cases[i].target, td_cred_target_is_local(cases[i].target), cases[i].local);
    char name[256];
    td_cred_checked_name(cases[i].target, NULL, name, sizeof name);
    CHECK(strcmp(name, cases[i].name) == 0, "%s: name '%s', want '%s'", cases[i].target, name,
          cases[i].name);
  }
  char name[256];
  td_cred_checked_name("127.0.0.1:7070", "traind.example.com", name, sizeof name);
  CHECK_STR(name, "traind.example.com");
}

/* The detail texts gRPC 1.51 with OpenSSL 3 gives for each failure, as
 * seen from trainctl (and BoringSSL's spelling of the same). */
static void test_tls_failures(void) {
  static const struct {
    const char *detail;
    td_cred_tls_fail want;
  } cases[] = {
      {"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50111: Ssl "
       "handshake failed: SSL_ERROR_SSL: error:0A000086:SSL routines::certificate verify failed",
       TD_CRED_TLS_SERVER_CERT},
      {"Ssl handshake failed: SSL_ERROR_SSL: error:1000007d:SSL "
       "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED",
       TD_CRED_TLS_SERVER_CERT},
      {"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50111: Peer name "
       "wrong.example is not in peer certificate",
       TD_CRED_TLS_SERVER_NAME},
      {"failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:50111: "
       "Socket closed",
       TD_CRED_TLS_CLOSED},
      {"Ssl handshake failed: SSL_ERROR_SSL: error:0A00045C:SSL routines::tlsv13 alert "
       "certificate required",
       TD_CRED_TLS_CLIENT_CERT},
      {"Ssl handshake failed: SSL_ERROR_SSL: error:0A000418:SSL routines::tlsv1 alert unknown ca",
       TD_CRED_TLS_CLIENT_CERT},
      {"Ssl handshake failed: SSL_ERROR_SSL: error:0A00010B:SSL routines::wrong version number",
       TD_CRED_TLS_HANDSHAKE},
      {"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50119: Failed to "
       "connect to remote host: Connection refused",
       TD_CRED_TLS_OTHER},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    CHECK(td_cred_tls_failure(cases[i].detail) == cases[i].want, "'%s': %d, want %d",
          cases[i].detail, td_cred_tls_failure(cases[i].detail), cases[i].want);
  CHECK_STR(td_cred_tls_detail("cannot reach traind at x:1: failed to connect to all addresses; "
                               "last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"),
            "UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed");
  CHECK_STR(td_cred_tls_detail("Socket closed"), "Socket closed");
}

int main(void) {
  snprintf(tmp, sizeof tmp, "/tmp/td-ctx-XXXXXX");
  if (!mkdtemp(tmp)) {
    perror("mkdtemp");
    return 1;
  }
  /* Nothing from the caller's environment may leak in. */
  static const char *const vars[] = {
      "TRAIND_ADDR",      "TRAINCTL_TLS_CA",          "TRAINCTL_TLS_CERT",
      "TRAINCTL_TLS_KEY", "TRAINCTL_TLS_SERVER_NAME", "TRAINCTL_TOKEN_FILE",
      "TRAINCTL_CONTEXT", "TRAINCTL_CONFIG"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
    unsetenv(vars[i]);
  CHECK(chdir(tmp) == 0, "chdir %s", tmp);
  test_parse();
  test_default_path();
  test_resolve();
  test_rewrite();
  test_token();
  test_targets();
  test_tls_failures();
  if (!td_check_failures) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
      fprintf(stderr, "could not remove %s\n", tmp);
  } else {
    fprintf(stderr, "files kept in %s\n", tmp);
  }
  return td_check_exit();
}
