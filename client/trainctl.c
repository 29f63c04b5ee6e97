/* trainctl: the command-line client of traind.
 *
 *   trainctl submit FILE [--follow] [--name NAME]
 *   trainctl get JOB | list [--state S]... [--limit N] | cancel JOB
 *   trainctl metrics JOB [--follow] [--since STEP]
 *   trainctl checkpoint JOB | export JOB FILE [--step N] [--no-save]
 *   trainctl devices | health [--service NAME] | info | version [--client]
 *   trainctl config get-contexts | current-context | use-context NAME
 *   trainctl config set-context NAME [--addr ADDR] [--tls-ca FILE] ...
 *
 * Global flags go anywhere on the line: --addr, --timeout, -o/--output, the
 * TLS and token flags, --context. Connection settings come from the flags,
 * the environment, the context (client/context.h) and the defaults, in that
 * order; credentials are checked before connecting (client/credentials.h).
 * Every call goes through client/rpc_client.h; everything shown to a person
 * is formatted by client/view.c. Exit status: see usage_exit_codes below. */
#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <locale.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "context.h"
#include "credentials.h"
#include "dp_account.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pbjson.h"
#include "png_grid.h"
#include "rpc_client.h"
#include "traind/v1/job.pb-c.h"
#include "traind/v1/trainer.pb-c.h"
#include "view.h"

enum {
  EXIT_OK = 0,
  EXIT_JOB_FAILED = 1, /* also: health is not SERVING */
  EXIT_USAGE = 2,
  EXIT_UNREACHABLE = 3,
  EXIT_NOT_FOUND = 4,
  EXIT_JOB_CANCELLED = 5,
  EXIT_RPC = 6,
  EXIT_INTERRUPTED = 130,
};

/* gRPC status codes, by number (grpc_status_code), so that this file does
 * not need gRPC's headers. */
enum {
  GRPC_OK = 0,
  GRPC_CANCELLED = 1,
  GRPC_INVALID_ARGUMENT = 3,
  GRPC_DEADLINE_EXCEEDED = 4,
  GRPC_NOT_FOUND = 5,
  GRPC_PERMISSION_DENIED = 7,
  GRPC_RESOURCE_EXHAUSTED = 8,
  GRPC_FAILED_PRECONDITION = 9,
  GRPC_OUT_OF_RANGE = 11,
  GRPC_UNIMPLEMENTED = 12,
  GRPC_UNAVAILABLE = 14,
  GRPC_UNAUTHENTICATED = 16,
};

#define DEFAULT_ADDR TD_CTX_DEFAULT_ADDR
#define DEFAULT_TIMEOUT 10.0
#define METHOD(rpc) "/traind.v1.Trainer/" rpc
#define HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define MAX_STATES 16

/* Output formats, as a bit set so that commands can list what they allow. */
enum { OUT_TABLE = 1, OUT_JSON = 2, OUT_YAML = 4, OUT_CSV = 8 };

/* Flags, by id; a command accepts the global ones plus those in its mask. */
enum {
  FL_ADDR,
  FL_TIMEOUT,
  FL_OUTPUT,
  FL_HELP,
  FL_FOLLOW,
  FL_NAME,
  FL_STATE,
  FL_LIMIT,
  FL_SINCE,
  FL_SERVICE,
  FL_CLIENT,
  FL_STEP,
  FL_NO_SAVE,
  FL_TLS_CA,
  FL_TLS_CERT,
  FL_TLS_KEY,
  FL_TLS_SERVER_NAME,
  FL_TLS,
  FL_TOKEN_FILE,
  FL_CONTEXT,
  FL_PROMPT,
  FL_TOKENS,
  FL_TEMPERATURE,
  FL_TOP_K,
  FL_SEED,
  FL_EXAMPLES,
  FL_TOP,
  FL_PNG,
  FL_COLUMNS,
  FL_COUNT
};
#define CONN_FLAGS                                                                  \
  ((1u << FL_ADDR) | (1u << FL_TLS_CA) | (1u << FL_TLS_CERT) | (1u << FL_TLS_KEY) | \
   (1u << FL_TLS_SERVER_NAME) | (1u << FL_TLS) | (1u << FL_TOKEN_FILE) | (1u << FL_CONTEXT))
#define GLOBAL_FLAGS (CONN_FLAGS | (1u << FL_TIMEOUT) | (1u << FL_OUTPUT) | (1u << FL_HELP))

typedef struct flag_def {
  const char *name; /* long name, without "--" */
  char short_name;  /* 0 when none */
  const char *arg;  /* metavariable, NULL for a switch */
  const char *help;
} flag_def;

static const flag_def flag_defs[FL_COUNT] = {
    [FL_ADDR] = {"addr", 0, "ADDR",
                 "traind's address: unix:/path/to/sock or host:port (default: "
                 "$TRAIND_ADDR, else the context's, else " DEFAULT_ADDR ")"},
    [FL_TIMEOUT] = {"timeout", 0, "SECONDS",
                    "deadline of each call (default 10; 0 means none); --follow streams "
                    "have none unless this is given. Accepts 2.5, 30s, 500ms, 2m"},
    [FL_OUTPUT] = {"output", 'o', "FORMAT",
                   "output format: table (default), json, yaml; csv for metrics and devices"},
    [FL_HELP] = {"help", 'h', NULL, "show help for the command"},
    [FL_FOLLOW] = {"follow", 'f', NULL, "then follow the job's metrics until it ends"},
    [FL_NAME] = {"name", 0, "NAME", "the job's name (overrides the file's name)"},
    [FL_STATE] = {"state", 0, "STATE",
                  "only jobs in this state: queued, running, succeeded, failed, cancelled "
                  "(repeatable, or comma-separated)"},
    [FL_LIMIT] = {"limit", 0, "N", "show at most N jobs, newest first (default: all)"},
    [FL_SINCE] = {"since", 0, "STEP", "only points after this step (default 0: all)"},
    [FL_SERVICE] = {"service", 0, "NAME",
                    "the service to check (default \"\": the daemon as a whole)"},
    [FL_CLIENT] = {"client", 0, NULL, "print only trainctl's version; do not contact traind"},
    [FL_STEP] = {"step", 0, "STEP", "the checkpoint at this step (default: the newest)"},
    [FL_NO_SAVE] = {"no-save", 0, NULL,
                    "export the newest checkpoint as it is, without first checkpointing a "
                    "running job"},
    [FL_TLS_CA] = {"tls-ca", 0, "FILE",
                   "connect with TLS, verifying the daemon's certificate against the PEM CA "
                   "certificates in FILE ($TRAINCTL_TLS_CA)"},
    [FL_TLS_CERT] = {"tls-cert", 0, "FILE",
                     "the client certificate (PEM) shown to the daemon, with --tls-key "
                     "($TRAINCTL_TLS_CERT)"},
    [FL_TLS_KEY] = {"tls-key", 0, "FILE",
                    "the client certificate's private key (PEM, unencrypted) "
                    "($TRAINCTL_TLS_KEY)"},
    [FL_TLS_SERVER_NAME] = {"tls-server-name", 0, "NAME",
                            "the name the daemon's certificate must hold, when it is not the "
                            "address's host ($TRAINCTL_TLS_SERVER_NAME)"},
    [FL_TLS] = {"tls", 0, NULL,
                "connect with TLS, verifying the daemon against the system's CA roots when "
                "--tls-ca is not given; --tls=false: plaintext, whatever the environment and "
                "the context say"},
    [FL_TOKEN_FILE] = {"token-file", 0, "FILE",
                       "send the bearer token held in FILE with every call "
                       "($TRAINCTL_TOKEN_FILE); only over TLS or to a local address"},
    [FL_CONTEXT] = {"context", 0, "NAME",
                    "use the named context of the config file ($TRAINCTL_CONTEXT; default: its "
                    "current context; \"\" for none); see 'trainctl config --help'"},
    [FL_PROMPT] = {"prompt", 0, "TEXT", "the text to continue (default: a new line)"},
    [FL_TOKENS] = {"tokens", 0, "N", "how many tokens to generate (default 200)"},
    [FL_TEMPERATURE] = {"temperature", 0, "T",
                        "divide the logits by T (default 1; below 1 is more conservative)"},
    [FL_TOP_K] = {"top-k", 0, "K", "draw only among the K likeliest tokens (default: all)"},
    [FL_SEED] = {"seed", 0, "S", "the draws' seed: the same seed gives the same text (default 0)"},
    [FL_EXAMPLES] = {"examples", 0, "N",
                     "the training set's examples (default: the job's dataset.train_limit)"},
    [FL_TOP] = {"top", 0, "N", "show the N examples with the largest norms (default: 20)"},
    [FL_PNG] = {"png", 0, "FILE",
                "also write those examples' inputs, as images in rank order, to FILE (PNG)"},
    [FL_COLUMNS] = {"columns", 0, "N", "images per row of the PNG (default 10)"},
};

typedef struct ctl ctl;

typedef struct command {
  const char *name;
  int (*run)(ctl *c);
  const char *synopsis; /* after "trainctl NAME" */
  int min_args, max_args;
  unsigned flags;   /* FL_* bits beyond the global ones */
  unsigned outputs; /* OUT_* bits */
  const char *summary;
  const char *help; /* paragraphs after the usage line */
} command;

/* Everything one invocation knows: the command line, then the connection. */
struct ctl {
  const command *cmd;
  const char *args[2];
  int nargs;
  /* Connection settings: those the flags gave and the environment's, the
   * context asked for (NULL: the file's current one), the config file
   * (loaded on first use) and what they resolve to. addr is the address
   * in use, for messages. */
  td_ctx_settings flags, env;
  const char *context;
  td_ctx_file file;
  int file_loaded;
  td_ctx_conn conn;
  int resolved;
  char addr[1024];
  double timeout;
  int timeout_given;
  int output;
  int follow, client_only;
  const char *name, *service;
  int states[MAX_STATES];
  size_t n_states;
  uint32_t limit;
  int64_t since, step;
  int no_save;
  const char *prompt;
  uint32_t tokens, top_k;
  double temperature;
  uint64_t seed;
  uint32_t examples;
  uint32_t top, columns;
  const char *png;
  int utf8;
  td_rpc_client *rpc;
};

/* ------------------------------------------------------------ errors */

/* Prints the one error line: "trainctl: <what happened>; <what to do>". */
static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  /* One line, whatever the daemon or a file put in the message. */
  for (char *p = msg; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = ((*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : '?');
  fflush(stdout);
  fprintf(stderr, "trainctl: %s\n", msg);
  return code;
}

static int usage_error(const ctl *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const ctl *c, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  /* A message that already says what to do gets the help pointer in
   * parentheses, so that the line keeps one "; ". */
  const char *name = c->cmd ? c->cmd->name : "", *sep = c->cmd ? " " : "";
  if (strstr(msg, "; "))
    return fail(EXIT_USAGE, "%s (see 'trainctl %s%s--help')", msg, name, sep);
  return fail(EXIT_USAGE, "%s; see 'trainctl %s%s--help'", msg, name, sep);
}

/* The exit status for a failed call's gRPC status code. */
static int exit_for_status(int code) {
  switch (code) {
  case GRPC_INVALID_ARGUMENT:
  case GRPC_OUT_OF_RANGE:
  case GRPC_PERMISSION_DENIED:   /* a role or a data root that does not allow it */
  case GRPC_UNAUTHENTICATED:     /* no credentials, or ones the daemon does not know */
  case GRPC_FAILED_PRECONDITION: /* more devices than the daemon has, ... */
    return EXIT_USAGE;
  case GRPC_UNAVAILABLE:
  case GRPC_DEADLINE_EXCEEDED:
    return EXIT_UNREACHABLE;
  case GRPC_NOT_FOUND:
    return EXIT_NOT_FOUND;
  default:
    return EXIT_RPC;
  }
}

static int is_cmd(const ctl *c, const char *name) { return strcmp(c->cmd->name, name) == 0; }

/* An UNAVAILABLE call over TLS: what gRPC's detail says about the
 * certificates, as one line with the fix (gRPC's words in brackets at the
 * end). Returns 0 when it says nothing about them. */
static int tls_fail(const ctl *c, const char *msg) {
  const td_ctx_conn *k = &c->conn;
  const char *detail = td_cred_tls_detail(msg);
  const char *cert = k->str[TD_CTX_TLS_CERT], *sni = k->str[TD_CTX_TLS_SERVER_NAME];
  char name[512], ca[1200];
  if (k->str[TD_CTX_TLS_CA])
    snprintf(ca, sizeof ca, "the CA in %s (from %s)", k->str[TD_CTX_TLS_CA],
             k->origin[TD_CTX_TLS_CA]);
  else
    snprintf(ca, sizeof ca, "the system's CA roots (no --tls-ca)");
  switch (td_cred_tls_failure(msg)) {
  case TD_CRED_TLS_SERVER_CERT:
    return fail(EXIT_UNREACHABLE,
                "cannot reach traind at %s: its TLS certificate did not verify against %s: it "
                "comes from another CA, or has expired; give --tls-ca the CA that signed the "
                "daemon's certificate [%s]",
                c->addr, ca, detail);
  case TD_CRED_TLS_SERVER_NAME:
    td_cred_checked_name(c->addr, sni, name, sizeof name);
    if (sni)
      return fail(EXIT_UNREACHABLE,
                  "cannot reach traind at %s: its TLS certificate verified but is not for the "
                  "name '%s' that was checked (from %s); give --tls-server-name a name the "
                  "certificate holds [%s]",
                  c->addr, name, k->origin[TD_CTX_TLS_SERVER_NAME], detail);
    return fail(EXIT_UNREACHABLE,
                "cannot reach traind at %s: its TLS certificate verified but is not for the "
                "name '%s' that was checked (the address's host); connect by a name the "
                "certificate holds, or check another with --tls-server-name NAME [%s]",
                c->addr, name, detail);
  case TD_CRED_TLS_CLIENT_CERT:
  case TD_CRED_TLS_CLOSED:
    if (!cert)
      return fail(EXIT_UNREACHABLE,
                  "cannot reach traind at %s: the daemon closed the TLS connection; it wants "
                  "a client certificate, most likely: give --tls-cert and --tls-key [%s]",
                  c->addr, detail);
    return fail(EXIT_UNREACHABLE,
                "cannot reach traind at %s: the daemon closed the TLS connection; it refused "
                "the client certificate %s (from %s), most likely: give one signed by a CA "
                "the daemon trusts for clients (its client_ca_file) [%s]",
                c->addr, cert, k->origin[TD_CTX_TLS_CERT], detail);
  case TD_CRED_TLS_HANDSHAKE:
    return fail(EXIT_UNREACHABLE,
                "cannot reach traind at %s: the TLS handshake failed; check that the daemon "
                "serves TLS at this address (TLS is on through %s) [%s]",
                c->addr, k->tls_origin ? k->tls_origin : "a TLS setting", detail);
  default:
    return 0;
  }
}

/* Reports a failed call (`what`: "get job j-1") with a hint that fits the
 * status and the command, and returns the exit status. */
static int rpc_fail(const ctl *c, const char *what, const td_rpc_status *st) {
  const char *msg = st->message[0] ? st->message : td_grpc_code_name(st->code);
  const char *hint;
  switch (st->code) {
  case GRPC_UNAVAILABLE:
    if (c->conn.tls) {
      int rc = tls_fail(c, msg);
      if (rc)
        return rc;
    } else if (strncmp(c->addr, "unix", 4) != 0 && td_cred_tls_failure(msg) == TD_CRED_TLS_CLOSED) {
      /* What a TLS listener does with a plaintext client. */
      return fail(EXIT_UNREACHABLE,
                  "cannot reach traind at %s: the daemon closed the connection; if it serves "
                  "TLS there, connect with --tls-ca FILE (or --tls) [%s]",
                  c->addr, td_cred_tls_detail(msg));
    }
    /* The client library names the address itself when it never connected. */
    if (strncmp(msg, "cannot reach traind", 19) == 0)
      return fail(EXIT_UNREACHABLE, "%s; is the daemon running? set --addr or TRAIND_ADDR", msg);
    return fail(EXIT_UNREACHABLE,
                "cannot reach traind at %s: %s; is the daemon running? set --addr or TRAIND_ADDR",
                c->addr, msg);
  case GRPC_DEADLINE_EXCEEDED:
    return fail(EXIT_UNREACHABLE,
                "%s: traind at %s did not answer within %g s (%s); check that it is running "
                "and reachable, or raise --timeout",
                what, c->addr, c->timeout, msg);
  case GRPC_INVALID_ARGUMENT:
  case GRPC_OUT_OF_RANGE:
    hint = is_cmd(c, "submit") ? "fix the job file and submit it again"
                               : "check the command's arguments";
    break;
  case GRPC_NOT_FOUND:
    hint = is_cmd(c, "submit")   ? "check the dataset paths (trainctl info lists the data dirs)"
           : is_cmd(c, "health") ? "check --service"
           : is_cmd(c, "examples") && strstr(msg, "no per-example report yet")
               ? "the report comes at the end of the job's first epoch; 'trainctl get' shows "
                 "its progress"
               : "'trainctl list' shows the jobs there are";
    break;
  case GRPC_PERMISSION_DENIED:
    hint = is_cmd(c, "submit") ? "dataset paths must lie under the daemon's data dirs "
                                 "(trainctl info lists them)"
                               : "'trainctl info' shows who the daemon takes you for and "
                                 "your role; ask its admin";
    break;
  case GRPC_UNAUTHENTICATED:
    hint = "give a token (--token-file) or a client certificate (--tls-cert, --tls-key)";
    break;
  case GRPC_FAILED_PRECONDITION:
    hint = is_cmd(c, "submit")   ? "the daemon cannot run the job as written; "
                                   "'trainctl devices' shows what it has"
           : is_cmd(c, "cancel") ? "the job has already ended; 'trainctl get' shows how"
                                 : "'trainctl get' shows the job's state";
    break;
  case GRPC_RESOURCE_EXHAUSTED:
    hint = "the daemon is at a limit; retry later or send less";
    break;
  case GRPC_UNIMPLEMENTED:
    hint = "the daemon does not offer this call; compare 'trainctl version' with the daemon's";
    break;
  default:
    hint = "the daemon's log has the details";
    break;
  }
  /* The daemon's messages usually say what to do already ("...; list jobs
   * with trainctl list"); then they stand as they are. */
  if (strstr(msg, "; "))
    return fail(exit_for_status(st->code), "%s: %s", what, msg);
  /* A refusal of the credentials says which ones the daemon wants. */
  if (st->code == GRPC_UNAUTHENTICATED && st->message[0])
    return fail(exit_for_status(st->code), "%s: %s (%s)", what, msg, td_grpc_code_name(st->code));
  return fail(exit_for_status(st->code), "%s: %s (%s); %s", what, msg, td_grpc_code_name(st->code),
              hint);
}

/* ------------------------------------------------------------ calls */

/* Loads the config file (once). */
static int load_config(ctl *c) {
  if (c->file_loaded)
    return 0;
  td_error err;
  memset(&err, 0, sizeof err);
  if (td_ctx_load(&c->file, NULL, &err))
    return fail(EXIT_USAGE, "%s", err.msg);
  c->file_loaded = 1;
  return 0;
}

/* Resolves the connection settings (once): flag > environment > context >
 * default. */
static int resolve_conn(ctl *c) {
  if (c->resolved)
    return 0;
  int rc = load_config(c);
  if (rc)
    return rc;
  td_error err;
  memset(&err, 0, sizeof err);
  if (td_ctx_resolve(&c->flags, &c->env, c->context, &c->file, &c->conn, &err))
    return fail(EXIT_USAGE, "%s", err.msg);
  c->resolved = 1;
  snprintf(c->addr, sizeof c->addr, "%s", c->conn.str[TD_CTX_ADDR]);
  return 0;
}

/* Frees a secret's text after wiping it. */
static void free_secret(char *s) {
  if (s) {
    volatile char *p = s;
    while (*p)
      *p++ = 0;
  }
  free(s);
}

/* Reads and checks the credentials the settings name, then makes the
 * client. Every problem with a file is reported here, before connecting. */
static int open_rpc(ctl *c) {
  if (c->rpc)
    return 0;
  int rc = resolve_conn(c);
  if (rc)
    return rc;
  const td_ctx_conn *k = &c->conn;
  td_rpc_client_opts o;
  memset(&o, 0, sizeof o);
  char *ca = NULL, *cert = NULL, *key = NULL, *token = NULL;
  td_error err;
  memset(&err, 0, sizeof err);
  const char *cert_path = k->str[TD_CTX_TLS_CERT], *key_path = k->str[TD_CTX_TLS_KEY];
  if (!cert_path != !key_path) {
    int have = cert_path ? TD_CTX_TLS_CERT : TD_CTX_TLS_KEY;
    return fail(EXIT_USAGE,
                "%s %s (from %s) needs %s too: a client certificate and its key go together; "
                "give both or neither",
                cert_path ? "the client certificate" : "the key", k->str[have], k->origin[have],
                cert_path ? "--tls-key" : "--tls-cert");
  }
  if (k->str[TD_CTX_TLS_CA])
    rc = td_cred_read_ca(k->str[TD_CTX_TLS_CA], k->origin[TD_CTX_TLS_CA], &ca, &err);
  if (!rc && cert_path)
    rc = td_cred_read_pair(cert_path, k->origin[TD_CTX_TLS_CERT], key_path,
                           k->origin[TD_CTX_TLS_KEY], &cert, &key, &err);
  if (!rc && k->str[TD_CTX_TOKEN_FILE])
    rc = td_cred_read_token(k->str[TD_CTX_TOKEN_FILE], k->origin[TD_CTX_TOKEN_FILE], &token, &err);
  if (!rc && token && !k->tls && !td_cred_target_is_local(c->addr)) {
    rc = td_errorf(&err, TD_EINVAL,
                   "refusing to send the token from %s (%s) in plain text to %s, which is not a "
                   "loopback address; connect with TLS: --tls-ca FILE (the CA of the daemon's "
                   "certificate), or --tls for the system's CAs",
                   k->str[TD_CTX_TOKEN_FILE], k->origin[TD_CTX_TOKEN_FILE], c->addr);
  }
  if (!rc) {
    o.tls = k->tls;
    o.ca_pem = ca;
    o.cert_pem = cert;
    o.key_pem = key;
    o.server_name = k->str[TD_CTX_TLS_SERVER_NAME];
    o.token = token;
    c->rpc = td_rpc_client_open_opts(c->addr, &o);
  }
  free(ca);
  free(cert);
  free_secret(key);
  free_secret(token);
  if (rc)
    return fail(EXIT_USAGE, "%s", err.msg);
  if (!c->rpc)
    return fail(EXIT_USAGE,
                "cannot use '%s' (from %s) as traind's address; give --addr as "
                "unix:/path/to/sock or host:port",
                c->addr, k->origin[TD_CTX_ADDR]);
  return 0;
}

/* A unary call with the --timeout deadline. Returns 0 with *resp set, or the
 * exit status after reporting the failure. */
static int unary(ctl *c, const char *method, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp, const char *what) {
  td_rpc_status st;
  memset(&st, 0, sizeof st);
  *resp = NULL;
  int rc = open_rpc(c);
  if (rc)
    return rc;
  if (td_rpc_call_unary(c->rpc, method, req, rd, resp, c->timeout, &st) != GRPC_OK || !*resp) {
    if (*resp) {
      protobuf_c_message_free_unpacked(*resp, NULL);
      *resp = NULL;
    }
    if (st.code == GRPC_OK)
      st.code = 13; /* INTERNAL: OK without a reply */
    return rpc_fail(c, what, &st);
  }
  return 0;
}

/* ------------------------------------------------------------ output */

static int print_message(const ctl *c, const ProtobufCMessage *m, int stream_item) {
  char *json = pbjson_emit(m, PBJSON_INDENT);
  if (!json)
    return fail(EXIT_RPC,
                "cannot print the %s as JSON (a timestamp out of range, or out of memory); "
                "try -o table",
                m->descriptor->short_name);
  if (c->output == OUT_YAML) {
    char *yaml = td_view_json_to_yaml(json);
    free(json);
    if (!yaml)
      return fail(EXIT_RPC, "cannot print the %s as YAML (out of memory); try -o json",
                  m->descriptor->short_name);
    if (stream_item)
      fputs("---\n", stdout);
    fputs(yaml, stdout);
    free(yaml);
  } else {
    puts(json);
    free(json);
  }
  if (stream_item)
    fflush(stdout);
  return 0;
}

static int term_cols(void) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  const char *env = getenv("COLUMNS");
  int n = env ? atoi(env) : 0;
  return n > 0 ? n : 80;
}

/* ------------------------------------------------------------ following */

/* What an interrupted follow writes: the cursor shown again, a line break
 * after the live block, and one line saying the job goes on. Prepared
 * before the stream starts, since a signal handler may only write(). */
static char interrupt_out[64], interrupt_err[512];
static size_t interrupt_out_len, interrupt_err_len;

static void on_interrupt(int sig) {
  (void)sig;
  if (interrupt_out_len && write(STDOUT_FILENO, interrupt_out, interrupt_out_len) < 0)
    interrupt_out_len = 0;
  if (interrupt_err_len && write(STDERR_FILENO, interrupt_err, interrupt_err_len) < 0)
    interrupt_err_len = 0;
  _exit(EXIT_INTERRUPTED);
}

typedef struct follow_ctx {
  ctl *c;
  td_follow view;
  int messages;
  int csv_header_done;
  int state;         /* the job's last reported state */
  int rc;            /* a failure inside the callback */
  int64_t last_step; /* of the last step point, to resume after */
} follow_ctx;

static int on_watch(void *arg, const ProtobufCMessage *msg) {
  follow_ctx *fc = arg;
  const Traind__V1__WatchMetricsResponse *m = (const Traind__V1__WatchMetricsResponse *)msg;
  fc->messages++;
  if (m->job)
    fc->state = m->job->state;
  if (m->n_steps)
    fc->last_step = m->steps[m->n_steps - 1]->step;
  switch (fc->c->output) {
  case OUT_TABLE:
    fc->view.cols = term_cols();
    td_follow_feed(&fc->view, m, td_mono_sec());
    break;
  case OUT_CSV:
    td_view_metrics_csv(stdout, m->steps, m->n_steps, m->epochs, m->n_epochs, !fc->csv_header_done);
    fc->csv_header_done = 1;
    fflush(stdout);
    break;
  default:
    if ((fc->rc = print_message(fc->c, msg, 1)))
      return 1;
    break;
  }
  return ferror(stdout) ? (fc->rc = fail(EXIT_RPC, "cannot write the output; check stdout")) : 0;
}

/* Streams WatchMetrics for job `id` after `since`, shows it in the chosen
 * format, and returns the exit status for how the job ended. */
static int follow(ctl *c, const char *id, int64_t since) {
  Traind__V1__WatchMetricsRequest req = TRAIND__V1__WATCH_METRICS_REQUEST__INIT;
  req.id = (char *)id;
  req.since_step = since;
  follow_ctx fc;
  memset(&fc, 0, sizeof fc);
  fc.c = c;
  fc.last_step = since;
  int tty = c->output == OUT_TABLE && isatty(STDOUT_FILENO);
  td_follow_init(&fc.view, stdout, tty, c->utf8, term_cols());
  int rc = open_rpc(c);
  if (rc)
    return rc;

  /* ^C stops following; the job itself goes on. */
  char clean[256];
  td_view_sanitize(id, clean, sizeof clean);
  interrupt_out_len = 0;
  if (tty) {
    memcpy(interrupt_out, "\n\033[?25h", 8);
    interrupt_out_len = 7;
  }
  int n = snprintf(interrupt_err, sizeof interrupt_err,
                   "trainctl: stopped following job %s; it goes on running "
                   "('trainctl cancel %s' stops it)\n",
                   clean, clean);
  interrupt_err_len = n > 0 && (size_t)n < sizeof interrupt_err ? (size_t)n : 0;
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  td_rpc_status st;
  memset(&st, 0, sizeof st);
  int code = td_rpc_call_stream(c->rpc, METHOD("WatchMetrics"), &req.base,
                                &traind__v1__watch_metrics_response__descriptor, on_watch, &fc,
                                c->timeout_given ? c->timeout : 0, &st);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  interrupt_out_len = interrupt_err_len = 0;

  if (fc.rc) {
    td_follow_clear(&fc.view);
    return fc.rc;
  }
  char what[300], state[32];
  snprintf(what, sizeof what, "follow job %s", clean);
  td_view_state_name(fc.state, state, sizeof state);
  if (code != GRPC_OK) {
    td_follow_clear(&fc.view);
    if (code == GRPC_DEADLINE_EXCEEDED && fc.messages > 0)
      return fail(EXIT_RPC,
                  "stopped following job %s after --timeout %g s while it was %s; "
                  "'trainctl metrics %s --follow --since %lld' goes on from here",
                  clean, c->timeout, state, clean, (long long)fc.last_step);
    return rpc_fail(c, what, &st);
  }
  if (c->output == OUT_TABLE)
    td_follow_finish(&fc.view);
  fflush(stdout);
  switch (fc.state) {
  case TRAIND__V1__JOB_STATE__SUCCEEDED:
    return EXIT_OK;
  case TRAIND__V1__JOB_STATE__FAILED:
    return EXIT_JOB_FAILED;
  case TRAIND__V1__JOB_STATE__CANCELLED:
    return EXIT_JOB_CANCELLED;
  default:
    return fail(EXIT_RPC,
                "the daemon ended the stream of job %s while it was %s; "
                "'trainctl metrics %s --follow --since %lld' goes on from here",
                clean, state, clean, (long long)fc.last_step);
  }
}

/* ------------------------------------------------------------ commands */

/* Reads a job file ("-": standard input) as a JobSpec. Bad files are
 * reported here, with the parser's line and field path, before any call. */
static int read_job_file(const char *path, Traind__V1__JobSpec **spec) {
  td_error err;
  ProtobufCMessage *m = NULL;
  int rc;
  memset(&err, 0, sizeof err);
  if (strcmp(path, "-") == 0) {
    size_t cap = PBJSON_MAX_BYTES + 1, len = 0;
    char *text = malloc(cap);
    if (!text)
      return fail(EXIT_RPC, "out of memory reading standard input; free some memory");
    size_t got;
    while (len < cap && (got = fread(text + len, 1, cap - len, stdin)) > 0)
      len += got;
    if (ferror(stdin)) {
      free(text);
      return fail(EXIT_USAGE, "cannot read the job from standard input: %s; check the pipe",
                  strerror(errno));
    }
    if (len > PBJSON_MAX_BYTES) {
      free(text);
      return fail(EXIT_USAGE, "<stdin>: the job is larger than %zu bytes; shorten it",
                  PBJSON_MAX_BYTES);
    }
    rc = pbjson_parse(&traind__v1__job_spec__descriptor, text, len, &m, &err);
    free(text);
    if (rc)
      td_error_prefix(&err, "<stdin>");
  } else {
    rc = pbjson_parse_file(&traind__v1__job_spec__descriptor, path, &m, &err);
  }
  if (rc) {
    const char *hint = rc == TD_ENOTFOUND ? "check the path"
                       : rc == TD_EIO     ? "check that the file is readable"
                       : rc == TD_ENOMEM  ? "free some memory"
                                          : "fix the job file";
    return fail(EXIT_USAGE, "%s; %s", err.msg, hint);
  }
  *spec = (Traind__V1__JobSpec *)m;
  return 0;
}

static int cmd_submit(ctl *c) {
  const char *path = c->args[0];
  Traind__V1__JobSpec *spec = NULL;
  int rc = read_job_file(path, &spec);
  if (rc)
    return rc;
  Traind__V1__SubmitJobRequest req = TRAIND__V1__SUBMIT_JOB_REQUEST__INIT;
  req.spec = spec;
  if (c->name)
    req.name = (char *)c->name;
  Traind__V1__SubmitJobResponse *resp = NULL;
  char what[1100];
  snprintf(what, sizeof what, "submit %s", path);
  rc = unary(c, METHOD("SubmitJob"), &req.base, &traind__v1__submit_job_response__descriptor,
             (ProtobufCMessage **)&resp, what);
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  if (rc)
    return rc;
  if (!resp->job || !resp->job->id || !*resp->job->id) {
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return fail(EXIT_RPC,
                "the daemon accepted %s but sent no job id; "
                "'trainctl list' shows whether the job exists",
                path);
  }
  char id[256];
  td_view_sanitize(resp->job->id, id, sizeof id);
  if (c->output == OUT_TABLE) {
    if (c->follow && isatty(STDOUT_FILENO)) {
      char name[256];
      td_view_sanitize(resp->job->name, name, sizeof name);
      printf("job %s%s%s%s submitted\n", id, *name ? " (" : "", name, *name ? ")" : "");
    } else {
      printf("%s\n", id);
    }
    fflush(stdout);
  } else {
    rc = print_message(c, &resp->base, c->follow);
  }
  if (!rc && c->follow)
    rc = follow(c, resp->job->id, 0);
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  return rc;
}

static int cmd_get(ctl *c) {
  Traind__V1__GetJobRequest req = TRAIND__V1__GET_JOB_REQUEST__INIT;
  req.id = (char *)c->args[0];
  Traind__V1__Job *job = NULL;
  char what[300];
  snprintf(what, sizeof what, "get job %s", c->args[0]);
  int rc = unary(c, METHOD("GetJob"), &req.base, &traind__v1__job__descriptor,
                 (ProtobufCMessage **)&job, what);
  if (rc)
    return rc;
  if (c->output == OUT_TABLE)
    td_view_job_detail(stdout, job, td_wall_sec(), c->utf8);
  else
    rc = print_message(c, &job->base, 0);
  protobuf_c_message_free_unpacked(&job->base, NULL);
  return rc;
}

/* The most a page may hold, as the daemon caps it. */
#define LIST_PAGE_MAX 1000u

static int cmd_list(ctl *c) {
  Traind__V1__ListJobsResponse **pages = NULL;
  size_t n_pages = 0, n_jobs = 0;
  char token[1024] = "";
  int rc = 0;
  for (;;) {
    Traind__V1__ListJobsRequest req = TRAIND__V1__LIST_JOBS_REQUEST__INIT;
    req.n_states = c->n_states;
    req.states = (Traind__V1__JobState *)c->states;
    uint32_t want = c->limit ? c->limit - (uint32_t)n_jobs : LIST_PAGE_MAX;
    req.page_size = want < LIST_PAGE_MAX ? want : LIST_PAGE_MAX;
    req.page_token = token;
    Traind__V1__ListJobsResponse *page = NULL;
    if ((rc = unary(c, METHOD("ListJobs"), &req.base, &traind__v1__list_jobs_response__descriptor,
                    (ProtobufCMessage **)&page, "list jobs")))
      break;
    Traind__V1__ListJobsResponse **grown = realloc(pages, (n_pages + 1) * sizeof *grown);
    if (!grown) {
      protobuf_c_message_free_unpacked(&page->base, NULL);
      rc = fail(EXIT_RPC, "out of memory after %zu jobs; use --limit", n_jobs);
      break;
    }
    pages = grown;
    pages[n_pages++] = page;
    n_jobs += page->n_jobs;
    const char *next = page->next_page_token ? page->next_page_token : "";
    /* A page that is empty or hands back the token it was given ends the
     * listing, so that a confused daemon cannot keep us here. */
    if (!*next || page->n_jobs == 0 || strcmp(next, token) == 0 || (c->limit && n_jobs >= c->limit))
      break;
    if (strlen(next) >= sizeof token) {
      rc = fail(EXIT_RPC, "the daemon sent a page token of %zu bytes; use --limit", strlen(next));
      break;
    }
    snprintf(token, sizeof token, "%s", next);
  }

  Traind__V1__Job **jobs = rc ? NULL : calloc(n_jobs ? n_jobs : 1, sizeof *jobs);
  if (!rc && !jobs)
    rc = fail(EXIT_RPC, "out of memory after %zu jobs; use --limit", n_jobs);
  if (!rc) {
    size_t k = 0;
    for (size_t p = 0; p < n_pages; p++)
      for (size_t i = 0; i < pages[p]->n_jobs && (!c->limit || k < c->limit); i++)
        jobs[k++] = pages[p]->jobs[i];
    n_jobs = k;
    if (c->output == OUT_TABLE) {
      td_table t;
      if (n_jobs == 0)
        fputs("no jobs\n", stderr);
      else if (td_view_jobs_table(&t, jobs, n_jobs, td_wall_sec()) == 0)
        td_table_print(&t, stdout);
      else
        rc = fail(EXIT_RPC, "out of memory formatting %zu jobs; use --limit", n_jobs);
      if (n_jobs)
        td_table_free(&t);
    } else {
      /* One ListJobsResponse holding every page's jobs; the token is there
       * only when --limit stopped the listing early. */
      Traind__V1__ListJobsResponse all = TRAIND__V1__LIST_JOBS_RESPONSE__INIT;
      all.n_jobs = n_jobs;
      all.jobs = jobs;
      if (c->limit && n_pages && pages[n_pages - 1]->next_page_token)
        all.next_page_token = pages[n_pages - 1]->next_page_token;
      rc = print_message(c, &all.base, 0);
    }
  }
  free(jobs);
  for (size_t p = 0; p < n_pages; p++)
    protobuf_c_message_free_unpacked(&pages[p]->base, NULL);
  free(pages);
  return rc;
}

static int cmd_cancel(ctl *c) {
  Traind__V1__CancelJobRequest req = TRAIND__V1__CANCEL_JOB_REQUEST__INIT;
  req.id = (char *)c->args[0];
  Traind__V1__Job *job = NULL;
  char what[300];
  snprintf(what, sizeof what, "cancel job %s", c->args[0]);
  int rc = unary(c, METHOD("CancelJob"), &req.base, &traind__v1__job__descriptor,
                 (ProtobufCMessage **)&job, what);
  if (rc)
    return rc;
  if (c->output == OUT_TABLE) {
    char id[256], state[32];
    td_view_sanitize(job->id && *job->id ? job->id : c->args[0], id, sizeof id);
    td_view_state_name(job->state, state, sizeof state);
    if (job->state == TRAIND__V1__JOB_STATE__RUNNING)
      printf("job %s is being cancelled; it stops at its next step\n", id);
    else
      printf("job %s %s\n", id, state);
  } else {
    rc = print_message(c, &job->base, 0);
  }
  protobuf_c_message_free_unpacked(&job->base, NULL);
  return rc;
}

/* Step points per GetMetrics page, the most the daemon allows. */
#define METRICS_PAGE_MAX 10000u

static int cmd_metrics(ctl *c) {
  const char *id = c->args[0];
  if (c->follow)
    return follow(c, id, c->since);

  Traind__V1__GetMetricsResponse **pages = NULL;
  size_t n_pages = 0, n_steps = 0, n_epochs = 0;
  int64_t since = c->since;
  char what[300];
  snprintf(what, sizeof what, "get metrics of job %s", id);
  int rc = 0;
  for (;;) {
    Traind__V1__GetMetricsRequest req = TRAIND__V1__GET_METRICS_REQUEST__INIT;
    req.id = (char *)id;
    req.since_step = since;
    req.max_points = METRICS_PAGE_MAX;
    Traind__V1__GetMetricsResponse *page = NULL;
    if ((rc = unary(c, METHOD("GetMetrics"), &req.base,
                    &traind__v1__get_metrics_response__descriptor, (ProtobufCMessage **)&page,
                    what)))
      break;
    Traind__V1__GetMetricsResponse **grown = realloc(pages, (n_pages + 1) * sizeof *grown);
    if (!grown) {
      protobuf_c_message_free_unpacked(&page->base, NULL);
      rc = fail(EXIT_RPC, "out of memory after %zu points; use --since", n_steps);
      break;
    }
    pages = grown;
    pages[n_pages++] = page;
    n_steps += page->n_steps;
    n_epochs += page->n_epochs;
    /* Only a page that moved forward may be followed by another. */
    if (!page->more || page->last_step <= since)
      break;
    since = page->last_step;
  }

  Traind__V1__StepPoint **steps = NULL;
  Traind__V1__EpochPoint **epochs = NULL;
  if (!rc) {
    steps = calloc(n_steps ? n_steps : 1, sizeof *steps);
    epochs = calloc(n_epochs ? n_epochs : 1, sizeof *epochs);
    if (!steps || !epochs)
      rc = fail(EXIT_RPC, "out of memory after %zu points; use --since", n_steps);
  }
  if (!rc) {
    /* Pages follow each other; a point repeated across pages counts once. */
    size_t ks = 0, ke = 0;
    for (size_t p = 0; p < n_pages; p++) {
      for (size_t i = 0; i < pages[p]->n_steps; i++)
        if (ks == 0 || pages[p]->steps[i]->step > steps[ks - 1]->step)
          steps[ks++] = pages[p]->steps[i];
      for (size_t i = 0; i < pages[p]->n_epochs; i++)
        if (ke == 0 || pages[p]->epochs[i]->epoch > epochs[ke - 1]->epoch)
          epochs[ke++] = pages[p]->epochs[i];
    }
    n_steps = ks;
    n_epochs = ke;
    const Traind__V1__GetMetricsResponse *first = pages[0], *last = pages[n_pages - 1];
    if (c->output == OUT_TABLE) {
      td_table t;
      if (n_steps == 0 && n_epochs == 0) {
        char state[32];
        td_view_state_name(last->state, state, sizeof state);
        fprintf(stderr, "no metric points after step %lld (job is %s)\n", (long long)c->since,
                state);
      } else if (td_view_metrics_table(&t, steps, n_steps, epochs, n_epochs) == 0) {
        td_table_print(&t, stdout);
        td_table_free(&t);
      } else {
        td_table_free(&t);
        rc = fail(EXIT_RPC, "out of memory formatting %zu points; use --since", n_steps);
      }
    } else if (c->output == OUT_CSV) {
      td_view_metrics_csv(stdout, steps, n_steps, epochs, n_epochs, 1);
    } else {
      /* One GetMetricsResponse holding every page's points. */
      Traind__V1__GetMetricsResponse all = TRAIND__V1__GET_METRICS_RESPONSE__INIT;
      all.n_steps = n_steps;
      all.steps = steps;
      all.n_epochs = n_epochs;
      all.epochs = epochs;
      all.last_step = last->last_step;
      all.more = last->more;
      all.oldest_step = first->oldest_step;
      all.state = last->state;
      rc = print_message(c, &all.base, 0);
    }
  }
  free(steps);
  free(epochs);
  for (size_t p = 0; p < n_pages; p++)
    protobuf_c_message_free_unpacked(&pages[p]->base, NULL);
  free(pages);
  return rc;
}

static int cmd_devices(ctl *c) {
  Traind__V1__ListDevicesRequest req = TRAIND__V1__LIST_DEVICES_REQUEST__INIT;
  Traind__V1__ListDevicesResponse *resp = NULL;
  int rc =
      unary(c, METHOD("ListDevices"), &req.base, &traind__v1__list_devices_response__descriptor,
            (ProtobufCMessage **)&resp, "list devices");
  if (rc)
    return rc;
  if (c->output == OUT_TABLE || c->output == OUT_CSV) {
    td_table t;
    if (td_view_devices_table(&t, resp) == 0) {
      if (c->output == OUT_CSV) {
        td_table_print_csv(&t, stdout);
      } else {
        td_table_print(&t, stdout);
        if (resp->gpus_unavailable && *resp->gpus_unavailable) {
          char why[512];
          td_view_sanitize(resp->gpus_unavailable, why, sizeof why);
          printf("no GPUs: %s\n", why);
        }
      }
    } else {
      rc = fail(EXIT_RPC, "out of memory formatting the devices; free some memory");
    }
    td_table_free(&t);
  } else {
    rc = print_message(c, &resp->base, 0);
  }
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  return rc;
}

static int cmd_health(ctl *c) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)(c->service ? c->service : "");
  Grpc__Health__V1__HealthCheckResponse *resp = NULL;
  int rc = unary(c, HEALTH_CHECK, &req.base, &grpc__health__v1__health_check_response__descriptor,
                 (ProtobufCMessage **)&resp, "health check");
  if (rc)
    return rc;
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
      &grpc__health__v1__health_check_response__serving_status__descriptor, resp->status);
  if (c->output == OUT_TABLE) {
    if (v)
      printf("%s\n", v->name);
    else
      printf("UNKNOWN(%d)\n", (int)resp->status);
  } else {
    rc = print_message(c, &resp->base, 0);
  }
  int serving = resp->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  return rc ? rc : serving ? EXIT_OK : EXIT_JOB_FAILED;
}

static int cmd_info(ctl *c) {
  Traind__V1__GetDaemonInfoRequest req = TRAIND__V1__GET_DAEMON_INFO_REQUEST__INIT;
  Traind__V1__DaemonInfo *info = NULL;
  int rc = unary(c, METHOD("GetDaemonInfo"), &req.base, &traind__v1__daemon_info__descriptor,
                 (ProtobufCMessage **)&info, "get daemon info");
  if (rc)
    return rc;
  if (c->output == OUT_TABLE)
    td_view_daemon_info(stdout, info, td_wall_sec());
  else
    rc = print_message(c, &info->base, 0);
  protobuf_c_message_free_unpacked(&info->base, NULL);
  return rc;
}

/* A JSON string literal of s (for the few fields trainctl writes itself). */
static void json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(out, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(out, "\\u%04x", ch);
    else
      fputc(ch, out);
  }
  fputc('"', out);
}

/* The privacy a planned DP-SGD job would spend, epoch by epoch, from its
 * file alone: the accountant the daemon runs (engine/dp_account.c). */
static int cmd_dp_budget(ctl *c) {
  const char *path = c->args[0];
  Traind__V1__JobSpec *spec = NULL;
  int rc = read_job_file(path, &spec);
  if (rc)
    return rc;
  const Traind__V1__Training *tr = spec->training;
  const Traind__V1__DpSgd *d = tr ? tr->dp_sgd : NULL;
  uint32_t n = c->examples ? c->examples : spec->dataset ? spec->dataset->train_limit : 0;
  double rdp[TD_DP_N_ORDERS];
  td_error err = {0};
  if (!d) {
    rc = fail(EXIT_USAGE,
              "%s: the job has no training.dp_sgd; it spends no privacy budget to "
              "account for",
              path);
  } else if (!n) {
    rc = fail(EXIT_USAGE,
              "%s: how many training examples? give --examples N (the job's "
              "dataset is read by the daemon, not here)",
              path);
  } else if (!tr->batch_size || tr->batch_size > n || !tr->epochs) {
    rc = fail(EXIT_USAGE,
              "%s: training.batch_size and training.epochs must be set, the batch "
              "at most the %u examples",
              path, n);
  } else if (!(d->target_delta > 0.0 && d->target_delta < 1.0 / n)) {
    rc = fail(EXIT_USAGE, "%s: training.dp_sgd.target_delta %g must be in (0, 1/%u)", path,
              d->target_delta, n);
  } else if (td_dp_rdp_grid((double)tr->batch_size / n, d->noise_multiplier, rdp, &err)) {
    rc = fail(EXIT_USAGE, "%s: training.dp_sgd: %s", path, err.msg);
  }
  if (rc) {
    protobuf_c_message_free_unpacked(&spec->base, NULL);
    return rc;
  }
  const int64_t per_epoch = n / tr->batch_size;
  int64_t total = per_epoch * tr->epochs;
  if (tr->max_steps && tr->max_steps < total)
    total = tr->max_steps;
  int64_t stop = d->target_epsilon > 0.0 ? td_dp_max_steps(rdp, d->target_delta, d->target_epsilon)
                                         : TD_DP_STEPS_UNBOUNDED;
  const int64_t run = stop < total ? stop : total;
  double order = 0.0;
  const double eps = td_dp_epsilon_rdp(rdp, run, d->target_delta, TD_DP_CONVERSION_CURRENT, &order);
  const double classic =
      td_dp_epsilon_rdp(rdp, run, d->target_delta, TD_DP_CONVERSION_CLASSIC, NULL);
  if (c->output == OUT_JSON) {
    printf("{\"examples\": %u, \"sampling_rate\": %.9g, \"steps\": %lld, \"epsilon\": %.9g, "
           "\"epsilon_classic\": %.9g, \"order\": %g, \"delta\": %g, \"stops_early\": %s, "
           "\"epochs\": [",
           n, (double)tr->batch_size / n, (long long)run, eps, classic, order, d->target_delta,
           stop < total ? "true" : "false");
    for (uint32_t e = 1; e <= tr->epochs && (int64_t)(e - 1) * per_epoch < run; e++) {
      int64_t s = (int64_t)e * per_epoch < run ? (int64_t)e * per_epoch : run;
      printf("%s{\"epoch\": %u, \"step\": %lld, \"epsilon\": %.9g}", e > 1 ? ", " : "", e,
             (long long)s,
             td_dp_epsilon_rdp(rdp, s, d->target_delta, TD_DP_CONVERSION_CURRENT, NULL));
    }
    printf("]}\n");
  } else {
    printf("sampling rate %.6g (batch %u of %u examples, Poisson), noise multiplier %g, delta %g\n",
           (double)tr->batch_size / n, tr->batch_size, n, d->noise_multiplier, d->target_delta);
    printf("%lld steps: epsilon %.4g (RDP order %g; %.4g in the classic conversion)\n",
           (long long)run, eps, order, classic);
    if (stop < total)
      printf("target_epsilon %g stops the job after step %lld of %lld\n", d->target_epsilon,
             (long long)stop, (long long)total);
    for (uint32_t e = 1; e <= tr->epochs && (int64_t)(e - 1) * per_epoch < run; e++) {
      int64_t s = (int64_t)e * per_epoch < run ? (int64_t)e * per_epoch : run;
      printf("  epoch %u  step %lld  epsilon %.4g\n", e, (long long)s,
             td_dp_epsilon_rdp(rdp, s, d->target_delta, TD_DP_CONVERSION_CURRENT, NULL));
    }
  }
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  return 0;
}

static int cmd_version(ctl *c) {
  Traind__V1__DaemonInfo *info = NULL;
  int rc = 0;
  if (!c->client_only) {
    /* Print the client's version even when the daemon cannot be reached. */
    Traind__V1__GetDaemonInfoRequest req = TRAIND__V1__GET_DAEMON_INFO_REQUEST__INIT;
    if (c->output == OUT_TABLE) {
      printf("trainctl %s\n", TRAIND_VERSION);
      fflush(stdout);
    }
    rc = unary(c, METHOD("GetDaemonInfo"), &req.base, &traind__v1__daemon_info__descriptor,
               (ProtobufCMessage **)&info, "get the daemon's version");
    if (rc)
      return rc;
  }
  char server[256] = "";
  if (info)
    td_view_sanitize(info->version, server, sizeof server);
  switch (c->output) {
  case OUT_JSON:
    printf("{\n  \"client\": ");
    json_string(stdout, TRAIND_VERSION);
    if (info) {
      printf(",\n  \"server\": ");
      json_string(stdout, server);
    }
    printf("\n}\n");
    break;
  case OUT_YAML:
    printf("client: '%s'\n", TRAIND_VERSION);
    if (info) {
      /* Single-quoted YAML: a quote is written twice. */
      fputs("server: '", stdout);
      for (const char *p = server; *p; p++) {
        if (*p == '\'')
          putchar('\'');
        putchar(*p);
      }
      fputs("'\n", stdout);
    }
    break;
  default:
    if (c->client_only)
      printf("trainctl %s\n", TRAIND_VERSION);
    else
      printf("traind %s at %s\n", server, c->addr);
    break;
  }
  if (info)
    protobuf_c_message_free_unpacked(&info->base, NULL);
  return rc;
}

/* Checkpoints can take a while for large models: without --timeout the
 * call waits this long. */
#define CHECKPOINT_TIMEOUT 600.0

/* SaveCheckpoint; *info is the new checkpoint. */
static int save_checkpoint(ctl *c, const char *id, Traind__V1__CheckpointInfo **info) {
  Traind__V1__SaveCheckpointRequest req = TRAIND__V1__SAVE_CHECKPOINT_REQUEST__INIT;
  req.id = (char *)id;
  char what[300];
  snprintf(what, sizeof what, "checkpoint job %s", id);
  double keep = c->timeout;
  if (!c->timeout_given)
    c->timeout = CHECKPOINT_TIMEOUT;
  int rc = unary(c, METHOD("SaveCheckpoint"), &req.base, &traind__v1__checkpoint_info__descriptor,
                 (ProtobufCMessage **)info, what);
  c->timeout = keep;
  return rc;
}

/* A running job is checkpointed now, and c->step set to that checkpoint's
 * step, so that what an export or a sample reads holds its latest
 * parameters; another job is left as it is. */
static int checkpoint_if_running(ctl *c, const char *id, const char *clean) {
  char what[300];
  Traind__V1__GetJobRequest greq = TRAIND__V1__GET_JOB_REQUEST__INIT;
  greq.id = (char *)id;
  Traind__V1__Job *job = NULL;
  snprintf(what, sizeof what, "get job %s", clean);
  int rc = unary(c, METHOD("GetJob"), &greq.base, &traind__v1__job__descriptor,
                 (ProtobufCMessage **)&job, what);
  if (rc)
    return rc;
  int running = job->state == TRAIND__V1__JOB_STATE__RUNNING;
  protobuf_c_message_free_unpacked(&job->base, NULL);
  if (!running)
    return 0;
  Traind__V1__CheckpointInfo *info = NULL;
  if ((rc = save_checkpoint(c, id, &info)))
    return rc;
  c->step = info->step;
  protobuf_c_message_free_unpacked(&info->base, NULL);
  return 0;
}

static int cmd_checkpoint(ctl *c) {
  Traind__V1__CheckpointInfo *info = NULL;
  int rc = save_checkpoint(c, c->args[0], &info);
  if (rc)
    return rc;
  if (c->output == OUT_TABLE) {
    char line[1024], path[1024];
    td_view_checkpoint(info, td_wall_sec(), line, sizeof line);
    td_view_sanitize(info->path, path, sizeof path);
    printf("%s\n%s\n", line, path);
  } else {
    rc = print_message(c, &info->base, 0);
  }
  protobuf_c_message_free_unpacked(&info->base, NULL);
  return rc;
}

/* An export in progress: chunks go to a temporary file beside the target. */
typedef struct export_ctx {
  int fd;
  int64_t next, total, step;
  char file[128];
  int bad;
  char why[256];
} export_ctx;

static int on_chunk(void *arg, const ProtobufCMessage *m) {
  export_ctx *x = arg;
  const Traind__V1__FileChunk *ch = (const void *)m;
  if (x->next == 0) {
    x->total = ch->total_bytes;
    x->step = ch->step;
    td_view_sanitize(ch->file, x->file, sizeof x->file);
  }
  if (ch->offset != x->next || x->next + (int64_t)ch->data.len > x->total) {
    x->bad = 1;
    snprintf(x->why, sizeof x->why,
             "the daemon sent bytes %lld..%lld of a %lld-byte file, "
             "expected offset %lld",
             (long long)ch->offset, (long long)(ch->offset + (int64_t)ch->data.len),
             (long long)x->total, (long long)x->next);
    return 1;
  }
  const uint8_t *p = ch->data.data;
  size_t left = ch->data.len;
  while (left) {
    ssize_t w = write(x->fd, p, left);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      x->bad = 1;
      snprintf(x->why, sizeof x->why, "writing failed: %s", strerror(w < 0 ? errno : ENOSPC));
      return 1;
    }
    p += w;
    left -= (size_t)w;
  }
  x->next += (int64_t)ch->data.len;
  return 0;
}

static int cmd_export(ctl *c) {
  const char *id = c->args[0], *out = c->args[1];
  char clean[256], what[300];
  td_view_sanitize(id, clean, sizeof clean);
  /* A running job is checkpointed first, so that the file holds its
   * latest parameters. */
  if (!c->step && !c->no_save) {
    int rc = checkpoint_if_running(c, id, clean);
    if (rc)
      return rc;
  }
  char tmp[4200];
  const char *slash = strrchr(out, '/');
  if (slash)
    snprintf(tmp, sizeof tmp, "%.*s/.%s.part", (int)(slash - out), out, slash + 1);
  else
    snprintf(tmp, sizeof tmp, ".%s.part", out);
  export_ctx x = {.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
  if (x.fd < 0)
    return fail(EXIT_USAGE, "cannot create %s: %s; choose a writable place for FILE", tmp,
                strerror(errno));
  int rc = open_rpc(c);
  if (rc) {
    close(x.fd);
    unlink(tmp);
    return rc;
  }
  Traind__V1__ExportCheckpointRequest req = TRAIND__V1__EXPORT_CHECKPOINT_REQUEST__INIT;
  req.id = (char *)id;
  req.step = c->step;
  td_rpc_status st;
  memset(&st, 0, sizeof st);
  int code = td_rpc_call_stream(c->rpc, METHOD("ExportCheckpoint"), &req.base,
                                &traind__v1__file_chunk__descriptor, on_chunk, &x,
                                c->timeout_given ? c->timeout : 0, &st);
  int ok = code == GRPC_OK && !x.bad && x.next == x.total;
  if (ok && fsync(x.fd) != 0) {
    ok = 0;
    x.bad = 1;
    snprintf(x.why, sizeof x.why, "fsync failed: %s", strerror(errno));
  }
  if (close(x.fd) != 0 && ok) {
    ok = 0;
    x.bad = 1;
    snprintf(x.why, sizeof x.why, "close failed: %s", strerror(errno));
  }
  if (ok && rename(tmp, out) != 0) {
    ok = 0;
    x.bad = 1;
    snprintf(x.why, sizeof x.why, "cannot rename it to %s: %s", out, strerror(errno));
  }
  if (!ok) {
    unlink(tmp);
    snprintf(what, sizeof what, "export job %s", clean);
    if (x.bad)
      return fail(EXIT_RPC, "export of job %s failed: %s", clean, x.why);
    if (code == GRPC_OK)
      return fail(EXIT_RPC, "export of job %s ended after %lld of %lld bytes", clean,
                  (long long)x.next, (long long)x.total);
    return rpc_fail(c, what, &st);
  }
  if (c->output == OUT_TABLE) {
    char size[32];
    td_view_count((double)x.total, size, sizeof size);
    printf("wrote %s: %s of job %s, step %lld, %sB\n", out, x.file, clean, (long long)x.step, size);
  } else {
    Traind__V1__FileChunk r = TRAIND__V1__FILE_CHUNK__INIT;
    r.file = x.file;
    r.step = x.step;
    r.total_bytes = x.total;
    rc = print_message(c, &r.base, 0);
  }
  return rc;
}

/* Text from a job's language model: a running job is checkpointed first,
 * so that the text comes from its latest parameters. */
static int cmd_sample(ctl *c) {
  const char *id = c->args[0];
  char clean[256], what[300];
  td_view_sanitize(id, clean, sizeof clean);
  if (!c->step) {
    int rc = checkpoint_if_running(c, id, clean);
    if (rc)
      return rc;
  }
  Traind__V1__SampleRequest req = TRAIND__V1__SAMPLE_REQUEST__INIT;
  req.id = (char *)id;
  req.prompt = (char *)(c->prompt ? c->prompt : "\n");
  req.tokens = c->tokens;
  req.temperature = c->temperature;
  req.top_k = c->top_k;
  req.seed = c->seed;
  req.step = c->step;
  Traind__V1__SampleResponse *r = NULL;
  snprintf(what, sizeof what, "sample job %s", clean);
  double keep = c->timeout;
  if (!c->timeout_given)
    c->timeout = CHECKPOINT_TIMEOUT;
  int rc = unary(c, METHOD("Sample"), &req.base, &traind__v1__sample_response__descriptor,
                 (ProtobufCMessage **)&r, what);
  c->timeout = keep;
  if (rc)
    return rc;
  if (c->output == OUT_TABLE)
    printf("%s\n", r->text);
  else
    rc = print_message(c, &r->base, 0);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return rc;
}

/* The report's examples as a PNG grid, when their inputs are images
 * (input_shape H x W, or H x W x C with C 1 or 3). */
static int examples_png(ctl *c, const Traind__V1__GetExamplesResponse *r) {
  const uint32_t *sh = r->input_shape;
  const size_t nd = r->n_input_shape;
  uint32_t h = nd >= 2 ? sh[0] : 0, w = nd >= 2 ? sh[1] : 0, ch = nd == 3 ? sh[2] : 1;
  if ((nd != 2 && nd != 3) || (ch != 1 && ch != 3))
    return fail(EXIT_USAGE,
                "--png: the job's examples are not images (input shape of %zu dimensions; an "
                "image is H x W or H x W x C with 1 or 3 channels)",
                nd);
  const float **img = calloc(r->n_top ? r->n_top : 1, sizeof *img);
  if (!img)
    return fail(EXIT_RPC, "out of memory");
  for (size_t i = 0; i < r->n_top; i++) {
    if (r->top[i]->n_input != (size_t)h * w * ch) {
      free(img);
      return fail(EXIT_RPC, "the daemon sent example %zu with %zu input values, not %u x %u x %u",
                  i + 1, r->top[i]->n_input, h, w, ch);
    }
    img[i] = r->top[i]->input;
  }
  char err[512];
  int rc =
      td_png_grid(c->png, img, r->n_top, h, w, ch, c->columns ? c->columns : 10, err, sizeof err);
  free(img);
  if (rc)
    return fail(EXIT_USAGE, "--png: %s", err);
  return 0;
}

/* The newest epoch's report on a job's examples: their gradient norms'
 * distribution and the largest. */
static int cmd_examples(ctl *c) {
  const char *id = c->args[0];
  char clean[256], what[300];
  td_view_sanitize(id, clean, sizeof clean);
  Traind__V1__GetExamplesRequest req = TRAIND__V1__GET_EXAMPLES_REQUEST__INIT;
  req.id = (char *)id;
  req.top = c->top ? c->top : 20;
  req.with_inputs = c->png != NULL;
  Traind__V1__GetExamplesResponse *r = NULL;
  snprintf(what, sizeof what, "get the examples of job %s", clean);
  int rc = unary(c, METHOD("GetExamples"), &req.base,
                 &traind__v1__get_examples_response__descriptor, (ProtobufCMessage **)&r, what);
  if (rc)
    return rc;
  if (c->png && r->n_top && (rc = examples_png(c, r))) {
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
  }
  if (c->output != OUT_TABLE) {
    for (size_t i = 0; i < r->n_top; i++)
      r->top[i]->n_input = 0; /* inputs go to the PNG only */
    rc = print_message(c, &r->base, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
  }
  printf("epoch %u (step %lld): %llu gradient norms, min %.4g, mean %.4g, max %.4g\n", r->epoch,
         (long long)r->step, (unsigned long long)r->count, r->min, r->mean, r->max);
  if (r->l2_norm_clip > 0.0)
    printf("clipped to %g: %llu of them (%.1f%%)\n", r->l2_norm_clip,
           (unsigned long long)r->clipped,
           r->count ? 100.0 * (double)r->clipped / (double)r->count : 0.0);
  uint64_t most = 0;
  for (size_t b = 0; b < r->n_bucket_counts; b++)
    most = r->bucket_counts[b] > most ? r->bucket_counts[b] : most;
  for (size_t b = 0; b + 1 < r->n_bucket_edges && b < r->n_bucket_counts; b++) {
    char bar[41];
    size_t len = most ? (size_t)((r->bucket_counts[b] * 40 + most - 1) / most) : 0;
    memset(bar, '#', len);
    bar[len] = 0;
    printf("  %10.4g - %-10.4g %8llu %s\n", r->bucket_edges[b], r->bucket_edges[b + 1],
           (unsigned long long)r->bucket_counts[b], bar);
  }
  static const char *const header[] = {"RANK", "INDEX", "LABEL", "GRAD NORM", "STEP"};
  td_table t;
  rc = td_table_init(&t, 5, header, "rrrrr") ? fail(EXIT_RPC, "out of memory") : 0;
  for (size_t i = 0; !rc && i < r->n_top; i++) {
    char rank[24], index[16], label[16], norm[32], step[24];
    snprintf(rank, sizeof rank, "%zu", i + 1);
    snprintf(index, sizeof index, "%u", r->top[i]->index);
    if (r->top[i]->label < 0)
      snprintf(label, sizeof label, "-");
    else
      snprintf(label, sizeof label, "%d", r->top[i]->label);
    snprintf(norm, sizeof norm, "%.6g", r->top[i]->grad_norm);
    snprintf(step, sizeof step, "%lld", (long long)r->top[i]->step);
    const char *row[] = {rank, index, label, norm, step};
    if (td_table_add(&t, row))
      rc = fail(EXIT_RPC, "out of memory");
  }
  if (!rc) {
    printf("\n");
    td_table_print(&t, stdout);
    if (c->png)
      printf("\nwrote %s: the %zu examples in rank order, %u to a row\n", c->png, r->n_top,
             c->columns ? c->columns : 10);
  }
  td_table_free(&t);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return rc;
}

/* `config get-contexts`: one row per context, * marking the current one. */
static int config_get_contexts(ctl *c) {
  const Traind__V1__ClientConfig *cfg = c->file.cfg;
  if (c->output != OUT_TABLE)
    return print_message(c, &cfg->base, 0);
  if (cfg->n_contexts == 0) {
    fprintf(stderr,
            "no contexts in %s ('trainctl config set-context NAME --addr ADDR' makes one)\n",
            c->file.path);
    return 0;
  }
  static const char *const header[] = {"CURRENT", "NAME",        "ADDRESS",
                                       "TLS CA",  "CLIENT CERT", "TOKEN FILE"};
  td_table t;
  int rc = td_table_init(&t, 6, header, NULL) ? -1 : 0;
  for (size_t i = 0; !rc && i < cfg->n_contexts; i++) {
    const Traind__V1__ClientContext *x = cfg->contexts[i];
    const char *ca = *x->tls_ca                                      ? x->tls_ca
                     : x->tls || *x->tls_cert || *x->tls_server_name ? "(system roots)"
                                                                     : "-";
    const char *row[] = {strcmp(x->name, cfg->current_context) == 0 ? "*" : "",
                         x->name,
                         *x->address ? x->address : "-",
                         ca,
                         *x->tls_cert ? x->tls_cert : "-",
                         *x->token_file ? x->token_file : "-"};
    rc = td_table_add(&t, row);
  }
  if (!rc)
    td_table_print(&t, stdout);
  td_table_free(&t);
  return rc ? fail(EXIT_RPC, "out of memory formatting the contexts; free some memory") : 0;
}

/* `trainctl config SUBCOMMAND [NAME]`: reads and rewrites the contexts
 * file; never connects. */
static int cmd_config(ctl *c) {
  const char *sub = c->args[0], *name = c->nargs > 1 ? c->args[1] : NULL;
  static const char *const subs[] = {"get-contexts", "current-context", "use-context",
                                     "set-context"};
  int k = -1;
  for (int i = 0; i < 4; i++)
    if (strcmp(sub, subs[i]) == 0)
      k = i;
  if (k < 0)
    return usage_error(c,
                       "unknown config command '%s'; use get-contexts, current-context, "
                       "use-context or set-context",
                       sub);
  if (k >= 2 && !name)
    return usage_error(c, "config %s needs the context's NAME", sub);
  if (k < 2 && name)
    return usage_error(c, "config %s takes no NAME (got '%s')", sub, name);
  unsigned set = 0;
  for (int i = 0; i < TD_CTX_NSTR; i++)
    if (c->flags.str[i])
      set |= 1u << i;
  if (k != 3 && (set || c->flags.tls >= 0))
    return usage_error(c, "config %s takes no connection flags; they go with set-context", sub);
  int rc = load_config(c);
  if (rc)
    return rc;
  td_error err;
  memset(&err, 0, sizeof err);
  Traind__V1__ClientConfig *cfg = c->file.cfg;
  switch (k) {
  case 0:
    return config_get_contexts(c);
  case 1:
    if (!*cfg->current_context)
      return fail(EXIT_NOT_FOUND,
                  "%s sets no current context; 'trainctl config use-context NAME' sets one",
                  c->file.path);
    if (c->output == OUT_TABLE) {
      printf("%s\n", cfg->current_context);
      return 0;
    } else {
      Traind__V1__ClientConfig only = TRAIND__V1__CLIENT_CONFIG__INIT;
      only.current_context = cfg->current_context;
      return print_message(c, &only.base, 0);
    }
  case 2:
    if (td_ctx_use(&c->file, name, &err))
      return fail(EXIT_USAGE, "%s", err.msg);
    if (td_ctx_save(&c->file, &err))
      return fail(EXIT_RPC, "%s", err.msg);
    if (c->output == OUT_TABLE)
      printf("switched to context '%s'\n", name);
    else
      return print_message(c, &cfg->base, 0);
    return 0;
  default: {
    int created = 0;
    if (td_ctx_set(&c->file, name, &c->flags, &created, &err))
      return fail(err.code == TD_ENOMEM ? EXIT_RPC : EXIT_USAGE, "%s", err.msg);
    if (td_ctx_save(&c->file, &err))
      return fail(EXIT_RPC, "%s", err.msg);
    if (c->output != OUT_TABLE)
      return print_message(c, &td_ctx_find(&c->file, name)->base, 0);
    printf("context '%s' %s in %s\n", name, created ? "created" : "updated", c->file.path);
    if (created && strcmp(cfg->current_context, name) != 0)
      printf("'trainctl config use-context %s' makes it the current context\n", name);
    return 0;
  }
  }
}

static const command commands[] = {
    {"submit", cmd_submit, "FILE [--follow] [--name NAME]", 1, 1,
     (1u << FL_FOLLOW) | (1u << FL_NAME), OUT_TABLE | OUT_JSON | OUT_YAML,
     "submit a job file; print the new job's id",
     "Submits the job in FILE, a YAML or JSON JobSpec ('-' reads standard input),\n"
     "and prints the new job's id (with -o json, the SubmitJobResponse). A file\n"
     "that does not parse is reported with its line and field, and nothing is\n"
     "sent. With --follow, then shows the job's progress until it ends, and exits\n"
     "0 if it SUCCEEDED, 1 if it FAILED, 5 if it was CANCELLED.\n"},
    {"get", cmd_get, "JOB", 1, 1, 0, OUT_TABLE | OUT_JSON | OUT_YAML,
     "show one job: state, progress, metrics, error",
     "Shows one job: its state and progress, its latest metrics, why it failed\n"
     "(if it did), its times and devices, and a summary of its spec. -o json\n"
     "prints the Job message, spec included.\n"},
    {"list", cmd_list, "[--state STATE]... [--limit N]", 0, 0, (1u << FL_STATE) | (1u << FL_LIMIT),
     OUT_TABLE | OUT_JSON | OUT_YAML, "list jobs, newest first",
     "Lists jobs, newest first, reading every page the daemon has. -o json prints\n"
     "one ListJobsResponse holding them all.\n"},
    {"cancel", cmd_cancel, "JOB", 1, 1, 0, OUT_TABLE | OUT_JSON | OUT_YAML,
     "cancel a queued or running job",
     "Cancels a queued or running job; a running job stops at its next step.\n"
     "Cancelling a job that has ended fails (exit 6).\n"},
    {"metrics", cmd_metrics, "JOB [--follow] [--since STEP]", 1, 1,
     (1u << FL_FOLLOW) | (1u << FL_SINCE), OUT_TABLE | OUT_JSON | OUT_YAML | OUT_CSV,
     "show a job's step and epoch metrics",
     "Shows a job's metric points: one row per recorded step, and after each\n"
     "epoch a line with its train and test figures. -o csv writes one header and\n"
     "a row per point (kind is step or epoch); -o json one GetMetricsResponse\n"
     "holding every page. With --follow, streams new points until the job ends\n"
     "and exits as 'submit --follow' does.\n"},
    {"checkpoint", cmd_checkpoint, "JOB", 1, 1, 0, OUT_TABLE | OUT_JSON | OUT_YAML,
     "checkpoint a running job now",
     "Asks the daemon to checkpoint a running job at its next step and waits\n"
     "until the HDF5 file is complete (up to 10 minutes unless --timeout is\n"
     "given); prints the file, its step and size, and how long training paused.\n"
     "A job that is not running fails (exit 2).\n"},
    {"export", cmd_export, "JOB FILE [--step N] [--no-save]", 2, 2,
     (1u << FL_STEP) | (1u << FL_NO_SAVE), OUT_TABLE | OUT_JSON | OUT_YAML,
     "copy a job's checkpoint (HDF5) to FILE on this machine",
     "Copies one of a job's HDF5 checkpoints to FILE, here on the client's\n"
     "machine: the newest, or the one at --step. A running job is checkpointed\n"
     "first (unless --no-save), so that FILE holds its latest parameters. FILE\n"
     "appears only once complete. Its /params open with h5py (see\n"
     "docs/checkpoint-format.md) and can warm-start another job\n"
     "(checkpoint.init_from).\n"},
    {"sample", cmd_sample,
     "JOB [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S] [--step N]", 1, 1,
     (1u << FL_PROMPT) | (1u << FL_TOKENS) | (1u << FL_TEMPERATURE) | (1u << FL_TOP_K) |
         (1u << FL_SEED) | (1u << FL_STEP),
     OUT_TABLE | OUT_JSON | OUT_YAML, "print text from a job's language model",
     "Continues the prompt with text from a job trained on a text dataset: the\n"
     "model runs token by token (with a cache of the attention layers' keys and\n"
     "values) from the job's newest checkpoint, or the one at --step; a running\n"
     "job is checkpointed first, so the text comes from its latest parameters.\n"
     "Every character of the prompt must be in the model's vocabulary. The same\n"
     "--seed (and options) gives the same text. For a checkpoint file on this\n"
     "machine (trainctl export), 'traind sample FILE' does the same locally.\n"},
    {"examples", cmd_examples, "JOB [--top N] [--png FILE] [--columns N]", 1, 1,
     (1u << FL_TOP) | (1u << FL_PNG) | (1u << FL_COLUMNS), OUT_TABLE | OUT_JSON | OUT_YAML,
     "show the training examples with the largest gradients",
     "Shows the newest epoch's report of a job trained with\n"
     "training.per_example_report: the distribution of its examples' gradient\n"
     "norms (a histogram of 30 buckets) and the examples with the largest, with\n"
     "their index in the training set, label, norm and the step that computed\n"
     "it. --png FILE also writes those examples' inputs, when they are images,\n"
     "as a grid in rank order (left to right, then down). A job without the\n"
     "report fails (exit 6), as does one before its first epoch's end (exit 4).\n"},
    {"dp-budget", cmd_dp_budget, "JOBFILE [--examples N]", 1, 1, 1u << FL_EXAMPLES,
     OUT_TABLE | OUT_JSON, "the privacy a DP-SGD job would spend, before submitting it",
     "Computes, from a job file alone (no daemon is asked), the epsilon a job\n"
     "with training.dp_sgd would spend after each epoch and at its end, with\n"
     "the accountant the daemon reports it with (RDP of the Poisson-subsampled\n"
     "Gaussian mechanism, over Opacus's orders, converted as dp-accounting\n"
     "does), and where a target_epsilon would stop it. The training set's size\n"
     "comes from --examples, else from dataset.train_limit.\n"},
    {"devices", cmd_devices, "", 0, 0, 0, OUT_TABLE | OUT_JSON | OUT_YAML | OUT_CSV,
     "list the daemon's devices and the jobs holding them",
     "Lists the devices the daemon can run jobs on and the job holding each.\n"},
    {"health", cmd_health, "[--service NAME]", 0, 0, 1u << FL_SERVICE,
     OUT_TABLE | OUT_JSON | OUT_YAML, "check the daemon's health (grpc.health.v1)",
     "Asks the daemon's standard gRPC health service and prints SERVING,\n"
     "NOT_SERVING or UNKNOWN. Exits 0 only when SERVING (1 otherwise).\n"},
    {"info", cmd_info, "", 0, 0, 0, OUT_TABLE | OUT_JSON | OUT_YAML,
     "show the daemon's version, uptime, data dirs, compile cache",
     "Shows the daemon's version and uptime, its addresses and data dirs, its\n"
     "job counts and its compile cache.\n"},
    {"version", cmd_version, "[--client]", 0, 0, 1u << FL_CLIENT, OUT_TABLE | OUT_JSON | OUT_YAML,
     "print trainctl's and the daemon's versions",
     "Prints trainctl's version and the daemon's (from GetDaemonInfo).\n"},
    {"config", cmd_config,
     "get-contexts | current-context | use-context NAME | set-context NAME [flags]", 1, 2, 0,
     OUT_TABLE | OUT_JSON | OUT_YAML,
     "show or change the contexts: named daemons and how to reach them",
     "A context names a daemon's address and the credentials for it, so that\n"
     "'--context NAME' (or the current context) stands for all of them. The\n"
     "contexts live in $TRAINCTL_CONFIG, else $XDG_CONFIG_HOME/trainctl/config.yaml,\n"
     "else ~/.config/trainctl/config.yaml (a traind.v1.ClientConfig in YAML).\n"
     "Flags and environment variables override a context's settings.\n"
     "\n"
     "  get-contexts        list the contexts; * marks the current one\n"
     "  current-context     print the current context's name (exit 4: none)\n"
     "  use-context NAME    make NAME the current context\n"
     "  set-context NAME    create NAME, or change the settings given as flags:\n"
     "                      --addr, --tls-ca, --tls-cert, --tls-key,\n"
     "                      --tls-server-name, --tls[=false], --token-file\n"
     "                      (relative paths are stored as absolute ones; an\n"
     "                      empty value such as --tls-ca= clears a setting;\n"
     "                      the environment's values are not stored)\n"
     "\n"
     "The file is rewritten whole (mode 0600) by use-context and set-context.\n"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* ------------------------------------------------------------ help */

static const char usage_exit_codes[] =
    "exit status:\n"
    "  0  success (with --follow: the job SUCCEEDED)\n"
    "  1  the followed job FAILED (health: the daemon is not SERVING)\n"
    "  2  bad usage or bad input: unknown flag, unreadable or invalid job file,\n"
    "     credentials that do not check out (before connecting),\n"
    "     INVALID_ARGUMENT, OUT_OF_RANGE, PERMISSION_DENIED, UNAUTHENTICATED or\n"
    "     FAILED_PRECONDITION from the daemon\n"
    "  3  the daemon cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED)\n"
    "  4  not found (NOT_FOUND): no such job; config current-context: none set\n"
    "  5  the followed job was CANCELLED\n"
    "  6  any other error from the daemon\n"
    "  130  interrupted while following (the job goes on)\n";

/* One flag's help line, its text wrapped to 79 columns under itself. */
static void print_flag(FILE *out, int id) {
  enum { INDENT = 25, WIDTH = 79 };
  const flag_def *d = &flag_defs[id];
  char left[64];
  snprintf(left, sizeof left, "%c%c%s--%s%s%s", d->short_name ? '-' : ' ',
           d->short_name ? d->short_name : ' ', d->short_name ? ", " : "  ", d->name,
           d->arg ? " " : "", d->arg ? d->arg : "");
  fprintf(out, "  %-*s", INDENT - 3, left);
  /* A long flag gets its text on the next line. */
  if ((int)strlen(left) > INDENT - 4)
    fprintf(out, "\n%*s", INDENT - 1, "");
  int col = INDENT - 1;
  for (const char *w = d->help; *w;) {
    size_t n = strcspn(w, " ");
    if (col + 1 + (int)n > WIDTH && col > INDENT - 1) {
      fprintf(out, "\n%*s", INDENT - 1, "");
      col = INDENT - 1;
    }
    fprintf(out, " %.*s", (int)n, w);
    col += 1 + (int)n;
    w += n;
    while (*w == ' ')
      w++;
  }
  fputc('\n', out);
}

static void outputs_text(unsigned outputs, char *buf, size_t cap) {
  static const char *const names[] = {"table", "json", "yaml", "csv"};
  size_t len = 0;
  buf[0] = '\0';
  for (int i = 0; i < 4; i++)
    if (outputs & (1u << i)) {
      int n = snprintf(buf + len, cap - len, "%s%s", len ? ", " : "", names[i]);
      if (n > 0 && (size_t)n < cap - len)
        len += (size_t)n;
    }
}

static void command_help(FILE *out, const command *cmd) {
  char formats[64];
  outputs_text(cmd->outputs, formats, sizeof formats);
  fprintf(out, "usage: trainctl %s%s%s [global flags]\n\n%s", cmd->name, *cmd->synopsis ? " " : "",
          cmd->synopsis, cmd->help);
  int any = 0;
  for (int i = 0; i < FL_COUNT; i++)
    if (cmd->flags & (1u << i)) {
      if (!any++)
        fputs("\nflags:\n", out);
      print_flag(out, i);
    }
  fputs("\nglobal flags:\n", out);
  for (int i = 0; i < FL_COUNT; i++)
    if (GLOBAL_FLAGS & (1u << i))
      print_flag(out, i);
  fprintf(out, "\noutput formats: %s\n\n%s", formats, usage_exit_codes);
}

static void main_help(FILE *out) {
  fputs("usage: trainctl COMMAND [ARGS] [flags]\n"
        "\n"
        "The command-line client of traind, the training daemon.\n"
        "\n"
        "commands:\n",
        out);
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fputs("  help       show help for a command\n\nglobal flags (anywhere on the line):\n", out);
  for (int i = 0; i < FL_COUNT; i++)
    if (GLOBAL_FLAGS & (1u << i))
      print_flag(out, i);
  fputs("\nenvironment (a flag overrides its variable, which overrides the context):\n"
        "  TRAIND_ADDR               the daemon's address (--addr)\n"
        "  TRAINCTL_TLS_CA           --tls-ca\n"
        "  TRAINCTL_TLS_CERT         --tls-cert\n"
        "  TRAINCTL_TLS_KEY          --tls-key\n"
        "  TRAINCTL_TLS_SERVER_NAME  --tls-server-name\n"
        "  TRAINCTL_TOKEN_FILE       --token-file\n"
        "  TRAINCTL_CONTEXT          --context\n"
        "  TRAINCTL_CONFIG           the contexts file (default:\n"
        "                            $XDG_CONFIG_HOME/trainctl/config.yaml, else\n"
        "                            ~/.config/trainctl/config.yaml)\n"
        "\n'trainctl COMMAND --help' describes each command.\n\n",
        out);
  fputs(usage_exit_codes, out);
}

/* ------------------------------------------------------------ parsing */

static const command *find_command(const char *name) {
  for (size_t i = 0; i < N_COMMANDS; i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

/* "10", "2.5", "30s", "500ms", "2m" as seconds; -1 when malformed. */
static double parse_seconds(const char *s) {
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || errno || !isfinite(v) || v < 0)
    return -1;
  if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
    return v;
  if (strcmp(end, "ms") == 0)
    return v / 1e3;
  if (strcmp(end, "m") == 0)
    return v * 60;
  return -1;
}

static int parse_uint(const char *s, uint64_t max, uint64_t *out) {
  char *end = NULL;
  if (!*s || *s == '-' || *s == '+')
    return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v > max)
    return -1;
  *out = v;
  return 0;
}

/* Applies one flag and its value (NULL for a switch). */
static int apply_flag(ctl *c, int id, const char *flag, const char *val) {
  uint64_t u;
  switch (id) {
  case FL_ADDR:
    /* Empty values are refused after parsing, except by set-context, where
     * they clear a setting. A bare socket path is taken as a unix:
     * address when the settings are resolved. */
    c->flags.str[TD_CTX_ADDR] = val;
    return 0;
  case FL_TLS_CA:
    c->flags.str[TD_CTX_TLS_CA] = val;
    return 0;
  case FL_TLS_CERT:
    c->flags.str[TD_CTX_TLS_CERT] = val;
    return 0;
  case FL_TLS_KEY:
    c->flags.str[TD_CTX_TLS_KEY] = val;
    return 0;
  case FL_TLS_SERVER_NAME:
    c->flags.str[TD_CTX_TLS_SERVER_NAME] = val;
    return 0;
  case FL_TOKEN_FILE:
    c->flags.str[TD_CTX_TOKEN_FILE] = val;
    return 0;
  case FL_TLS:
    if (!val || strcmp(val, "true") == 0)
      c->flags.tls = 1;
    else if (strcmp(val, "false") == 0)
      c->flags.tls = 0;
    else
      return usage_error(c, "--tls takes no value, or =true or =false; got '%s'", val);
    return 0;
  case FL_CONTEXT:
    c->context = val;
    return 0;
  case FL_TIMEOUT: {
    double t = parse_seconds(val);
    if (t < 0)
      return usage_error(c, "--timeout takes seconds (like 10, 2.5, 30s, 500ms), got '%s'", val);
    c->timeout = t;
    c->timeout_given = 1;
    return 0;
  }
  case FL_OUTPUT:
    if (strcmp(val, "table") == 0)
      c->output = OUT_TABLE;
    else if (strcmp(val, "json") == 0)
      c->output = OUT_JSON;
    else if (strcmp(val, "yaml") == 0)
      c->output = OUT_YAML;
    else if (strcmp(val, "csv") == 0)
      c->output = OUT_CSV;
    else
      return usage_error(c, "unknown output format '%s'; use table, json, yaml or csv", val);
    return 0;
  case FL_FOLLOW:
    c->follow = 1;
    return 0;
  case FL_CLIENT:
    c->client_only = 1;
    return 0;
  case FL_NO_SAVE:
    c->no_save = 1;
    return 0;
  case FL_STEP:
    if (parse_uint(val, INT64_MAX, &u) || u == 0)
      return usage_error(c, "--step takes a step number (1 or more), got '%s'", val);
    c->step = (int64_t)u;
    return 0;
  case FL_NAME:
    c->name = val;
    return 0;
  case FL_PROMPT:
    c->prompt = val;
    return 0;
  case FL_TOKENS:
    if (parse_uint(val, 10000, &u) || u == 0)
      return usage_error(c, "--tokens takes a count from 1 to 10000, got '%s'", val);
    c->tokens = (uint32_t)u;
    return 0;
  case FL_TOP_K:
    if (parse_uint(val, UINT32_MAX, &u))
      return usage_error(c, "--top-k takes a count (0: all tokens), got '%s'", val);
    c->top_k = (uint32_t)u;
    return 0;
  case FL_TOP:
    if (parse_uint(val, 1000, &u) || u == 0)
      return usage_error(c, "--top takes a count from 1 to 1000, got '%s'", val);
    c->top = (uint32_t)u;
    return 0;
  case FL_COLUMNS:
    if (parse_uint(val, 1000, &u) || u == 0)
      return usage_error(c, "--columns takes a count from 1 to 1000, got '%s'", val);
    c->columns = (uint32_t)u;
    return 0;
  case FL_PNG:
    c->png = val;
    return 0;
  case FL_EXAMPLES:
    if (parse_uint(val, UINT32_MAX, &u) || u == 0)
      return usage_error(c, "--examples takes a count (1 or more), got '%s'", val);
    c->examples = (uint32_t)u;
    return 0;
  case FL_SEED:
    if (parse_uint(val, UINT64_MAX, &u))
      return usage_error(c, "--seed takes a number, got '%s'", val);
    c->seed = (uint64_t)u;
    return 0;
  case FL_TEMPERATURE: {
    char *end = NULL;
    errno = 0;
    double t = strtod(val, &end);
    if (errno || end == val || *end || !(t > 0.0) || !isfinite(t))
      return usage_error(c, "--temperature takes a number above 0 (like 0.8), got '%s'", val);
    c->temperature = t;
    return 0;
  }
  case FL_SERVICE:
    c->service = val;
    return 0;
  case FL_STATE: {
    char buf[256];
    if (strlen(val) >= sizeof buf)
      return usage_error(c, "--state value is too long");
    snprintf(buf, sizeof buf, "%s", val);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
      int s = td_view_parse_state(tok);
      if (s < 0)
        return usage_error(c,
                           "unknown job state '%s'; use queued, running, succeeded, failed "
                           "or cancelled",
                           tok);
      if (c->n_states == MAX_STATES)
        return usage_error(c, "too many --state values");
      c->states[c->n_states++] = s;
    }
    return 0;
  }
  case FL_LIMIT:
    if (parse_uint(val, 1000000, &u) || u == 0)
      return usage_error(c, "--limit takes a whole number from 1 to 1000000, got '%s'", val);
    c->limit = (uint32_t)u;
    return 0;
  case FL_SINCE:
    if (parse_uint(val, INT64_MAX, &u))
      return usage_error(c, "--since takes a step number (0 or more), got '%s'", val);
    c->since = (int64_t)u;
    return 0;
  default:
    return usage_error(c, "flag %s is not handled", flag);
  }
}

/* Parses argv into c. Returns -1 when help was printed (exit 0), 0 when a
 * command is ready to run, or an exit status after an error. */
static int parse_args(ctl *c, int argc, char **argv) {
  int only_args = 0, help = 0;
  for (int i = 1; i < argc; i++) {
    const char *tok = argv[i];
    if (only_args || tok[0] != '-' || strcmp(tok, "-") == 0) {
      if (!c->cmd) {
        if (strcmp(tok, "help") == 0) {
          help = 1;
          continue;
        }
        if (!(c->cmd = find_command(tok)))
          return usage_error(c, "unknown command '%s'", tok);
        continue;
      }
      if (c->nargs == c->cmd->max_args)
        return usage_error(c, "unexpected argument '%s'", tok);
      c->args[c->nargs++] = tok;
      continue;
    }
    if (strcmp(tok, "--") == 0) {
      only_args = 1;
      continue;
    }
    /* A flag: --name, --name=value, -x, -xVALUE. */
    char name[64];
    const char *val = NULL;
    int id = -1;
    unsigned allowed = GLOBAL_FLAGS | (c->cmd ? c->cmd->flags : 0);
    if (tok[1] == '-') {
      const char *eq = strchr(tok + 2, '=');
      size_t n = eq ? (size_t)(eq - tok - 2) : strlen(tok + 2);
      snprintf(name, sizeof name, "%.*s", (int)(n < 60 ? n : 60), tok + 2);
      for (int k = 0; k < FL_COUNT; k++)
        if (strcmp(flag_defs[k].name, name) == 0)
          id = k;
      if (eq)
        val = eq + 1;
    } else {
      snprintf(name, sizeof name, "%c", tok[1]);
      for (int k = 0; k < FL_COUNT; k++)
        if (flag_defs[k].short_name == tok[1])
          id = k;
      if (tok[2])
        val = tok + 2;
    }
    if (id == FL_HELP && !val) {
      help = 1;
      break;
    }
    if (id < 0 || !(allowed & (1u << id))) {
      if (id >= 0 && !c->cmd)
        return usage_error(c, "flag %s goes after the command", tok);
      return usage_error(c, "unknown flag '%s'%s%s", tok, c->cmd ? " for " : "",
                         c->cmd ? c->cmd->name : "");
    }
    const flag_def *d = &flag_defs[id];
    if (!d->arg && val && id != FL_TLS)
      return usage_error(c, "flag --%s takes no value", d->name);
    if (d->arg && !val) {
      if (i + 1 >= argc)
        return usage_error(c, "flag --%s needs a value (%s)", d->name, d->arg);
      val = argv[++i];
    }
    int rc = apply_flag(c, id, tok, val);
    if (rc)
      return rc;
  }

  if (help || !c->cmd) {
    if (!help && !c->cmd)
      return usage_error(c, "no command given");
    if (c->cmd)
      command_help(stdout, c->cmd);
    else
      main_help(stdout);
    return -1;
  }
  if (c->nargs < c->cmd->min_args)
    return usage_error(c, "%s needs %s", c->cmd->name, c->cmd->synopsis);
  /* An empty value clears a context's setting in set-context; elsewhere
   * it is a mistake (--context "" alone means no context). */
  if (!is_cmd(c, "config"))
    for (int i = 0; i < TD_CTX_NSTR; i++)
      if (c->flags.str[i] && !*c->flags.str[i])
        return usage_error(c, "%s is empty; give %s", td_ctx_flag_name(i),
                           i == TD_CTX_ADDR              ? "unix:/path/to/sock or host:port"
                           : i == TD_CTX_TLS_SERVER_NAME ? "a name"
                                                         : "a file");
  if (!(c->cmd->outputs & (unsigned)c->output)) {
    char formats[64];
    outputs_text(c->cmd->outputs, formats, sizeof formats);
    return usage_error(c, "%s does not print that format; use one of: %s", c->cmd->name, formats);
  }
  return 0;
}

/* The `help COMMAND` form. */
static int help_command(int argc, char **argv) {
  for (int i = 2; i < argc; i++)
    if (argv[i][0] != '-') {
      const command *cmd = find_command(argv[i]);
      if (!cmd)
        return fail(EXIT_USAGE, "unknown command '%s'; see 'trainctl --help'", argv[i]);
      command_help(stdout, cmd);
      return EXIT_OK;
    }
  main_help(stdout);
  return EXIT_OK;
}

int main(int argc, char **argv) {
  ctl c;
  memset(&c, 0, sizeof c);
  c.output = OUT_TABLE;
  c.timeout = DEFAULT_TIMEOUT;
  td_ctx_settings_init(&c.flags);
  td_ctx_settings_from_env(&c.env);
  const char *env = getenv("TRAINCTL_CONTEXT");
  c.context = env && *env ? env : NULL;
  snprintf(c.addr, sizeof c.addr, "%s", DEFAULT_ADDR);

  if (argc >= 2 && strcmp(argv[1], "help") == 0)
    return help_command(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
    printf("trainctl %s\n", TRAIND_VERSION);
    return EXIT_OK;
  }
  int rc = parse_args(&c, argc, argv);
  if (rc)
    return rc < 0 ? EXIT_OK : rc;
  td_rpc_client_quiet();

  /* Unicode blocks for bars and curves only where the terminal takes UTF-8;
   * only LC_CTYPE is set, so numbers keep their '.'. */
  setlocale(LC_CTYPE, "");
  c.utf8 = strcmp(nl_langinfo(CODESET), "UTF-8") == 0;

  rc = c.cmd->run(&c);
  if (c.rpc)
    td_rpc_client_close(c.rpc);
  td_ctx_conn_free(&c.conn);
  td_ctx_file_free(&c.file);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "trainctl: cannot write the output: %s; check stdout\n", strerror(errno));
    return rc ? rc : EXIT_RPC;
  }
  return rc;
}
