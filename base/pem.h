/* The checks of PEM certificates, keys and CA bundles (OpenSSL), shared by
 * the daemon's TLS listeners and trainctl's credentials: each reads its
 * files itself and hands the text here, so that a wrong file is refused
 * with its name before any handshake. Messages name the file by the
 * caller's noun ("client certificate", "tls.cert_file") and say what to do.
 * Each function leaves OpenSSL's error queue empty. */
#ifndef TD_PEM_H
#define TD_PEM_H

#include <stddef.h>

#include <openssl/x509.h>

#include "error.h"

/* One file, as messages name it: "the NOUN PATH (FROM) ...". */
typedef struct td_pem_src {
  const char *noun; /* what the file is: "client certificate", "key", "tls.key_file" */
  const char *path;
  const char *from; /* where the path came from ("--tls-cert"); NULL or "": not said */
} td_pem_src;

/* Whether OpenSSL's last error is the clean end of PEM input (no further
 * BEGIN line), which is how reading past the last PEM block ends. */
int td_pem_at_end(void);

/* Checks a CA bundle, pem[0, len): at least one certificate, each of which
 * parses, and nothing after them but text outside PEM blocks. TD_EINVAL
 * otherwise ("holds no PEM certificate", "holds a certificate that does not
 * parse (certificate 2: ...)"). */
int td_pem_check_ca(const char *pem, size_t len, const td_pem_src *src, td_error *err);

/* Parses the first certificate of the chain in pem (NUL-terminated): *out,
 * which the caller X509_free's. TD_EINVAL when there is none or it does not
 * parse. */
int td_pem_read_cert(const char *pem, const td_pem_src *src, X509 **out, td_error *err);

/* Checks the private key in key_pem (NUL-terminated): it parses, is not
 * encrypted (an encrypted key fails at once; nothing prompts for a
 * passphrase), and belongs to cert, which cert_src names. TD_EINVAL with
 * what to do otherwise. */
int td_pem_check_key(const char *key_pem, const td_pem_src *src, X509 *cert,
                     const td_pem_src *cert_src, td_error *err);

#endif
