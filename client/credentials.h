/* trainctl's credentials, read and checked before any connection is made:
 * the CA bundle that verifies the daemon, the client's certificate and key,
 * and the bearer token. Each failure reads as one line that names the file
 * and says what to do, instead of a TLS handshake error later. Also the
 * reading of a failed TLS connection's gRPC detail text, for the hint that
 * goes with it. */
#ifndef TD_CREDENTIALS_H
#define TD_CREDENTIALS_H

#include <stddef.h>

#include "error.h"

/* The largest PEM file and token file read. */
#define TD_CRED_MAX_PEM ((size_t)1 << 20)
#define TD_CRED_MAX_TOKEN ((size_t)64 << 10)

/* `what` in the functions below says where a path came from ("--tls-ca",
 * "context 'prod'") and goes into the messages; NULL leaves it out. */

/* Reads a CA bundle: PEM text holding at least one certificate, each of
 * which parses. On success *pem is the file's text (malloc'd,
 * NUL-terminated). TD_ENOTFOUND / TD_EIO when the file cannot be read,
 * TD_EINVAL when it holds no certificate or a broken one. */
int td_cred_read_ca(const char *path, const char *what, char **pem, td_error *err);

/* Reads the client's certificate chain and private key (PEM), and checks
 * that the first certificate parses, is valid now (neither expired, "client
 * certificate F expired on 2024-05-01 12:00:00 UTC; renew it", nor not yet
 * valid), may be used by a TLS client, and that the key is unencrypted and
 * belongs to it. On success *cert_pem and *key_pem are the files' texts
 * (malloc'd). */
int td_cred_read_pair(const char *cert_path, const char *cert_what, const char *key_path,
                      const char *key_what, char **cert_pem, char **key_pem, td_error *err);

/* Reads a token file: the token is its first line that is not blank, with
 * the white space around it removed. It must hold only visible ASCII (it
 * goes into a header). On success *token is malloc'd. */
int td_cred_read_token(const char *path, const char *what, char **token, td_error *err);

/* What a failed TLS connection's detail text (from gRPC) says went wrong. */
typedef enum td_cred_tls_fail {
  TD_CRED_TLS_OTHER = 0,   /* nothing about certificates */
  TD_CRED_TLS_SERVER_CERT, /* the daemon's certificate did not verify */
  TD_CRED_TLS_SERVER_NAME, /* it verified, but is not for the name checked */
  TD_CRED_TLS_CLIENT_CERT, /* the daemon refused the client's certificate */
  TD_CRED_TLS_CLOSED,      /* the daemon closed the connection right away: under
                               TLS 1.3 how a refused (or missing) client
                               certificate shows on the client's side */
  TD_CRED_TLS_HANDSHAKE,   /* another TLS failure (a plaintext daemon, ...) */
} td_cred_tls_fail;

td_cred_tls_fail td_cred_tls_failure(const char *detail);
/* The useful tail of such a detail text: what follows gRPC's "last error: ",
 * else all of it. */
const char *td_cred_tls_detail(const char *detail);

/* The name a TLS connection to `target` checks in the daemon's certificate:
 * server_name when set, else the target's host ("localhost" for
 * "localhost:7070", "::1" for "[::1]:7070", "localhost" for unix:
 * targets). Written into buf. */
void td_cred_checked_name(const char *target, const char *server_name, char *buf, size_t cap);

/* Whether a token may travel in plain text to this target: a unix socket,
 * or only loopback addresses (localhost, 127.0.0.0/8, ::1, also in the
 * dns:, ipv4: and ipv6: forms). 0.0.0.0 and every other name is not. */
int td_cred_target_is_local(const char *target);

#endif
