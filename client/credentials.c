/* Reading and checking trainctl's credentials with OpenSSL (see
 * credentials.h). */
#include "credentials.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <strings.h>
#include <sys/socket.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "pem.h"

/* " (--tls-ca)" or "". */
static void origin(const char *what, char *buf, size_t cap) {
  if (what && *what)
    snprintf(buf, cap, " (%s)", what);
  else if (cap)
    buf[0] = '\0';
}

/* Reads the whole file (at most max bytes) as a NUL-terminated string.
 * `kind` names the file in messages ("CA file"). */
static int read_text(const char *path, const char *kind, const char *what, size_t max, char **out,
                     size_t *len, td_error *err) {
  char from[256];
  origin(what, from, sizeof from);
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f)
    return td_errorf(err, errno == ENOENT ? TD_ENOTFOUND : TD_EIO,
                     "cannot read the %s %s%s: %s; check the path", kind, path, from,
                     strerror(errno));
  char *buf = malloc(max + 1);
  if (!buf) {
    fclose(f);
    return td_errorf(err, TD_ENOMEM, "out of memory reading %s; free some memory", path);
  }
  size_t n = fread(buf, 1, max + 1, f);
  int bad = ferror(f);
  int e = errno;
  fclose(f);
  if (bad) {
    free(buf);
    return td_errorf(err, TD_EIO, "cannot read the %s %s%s: %s; check that it is a readable file",
                     kind, path, from, strerror(e ? e : EIO));
  }
  if (n > max) {
    free(buf);
    return td_errorf(err, TD_EINVAL, "the %s %s%s is larger than %zu bytes; is it the right file?",
                     kind, path, from, max);
  }
  buf[n] = '\0';
  *out = buf;
  if (len)
    *len = n;
  return 0;
}

int td_cred_read_ca(const char *path, const char *what, char **pem, td_error *err) {
  size_t len = 0;
  int rc = read_text(path, "CA file", what, TD_CRED_MAX_PEM, pem, &len, err);
  if (rc)
    return rc;
  const td_pem_src src = {.noun = "CA file", .path = path, .from = what};
  rc = td_pem_check_ca(*pem, len, &src, err);
  if (rc) {
    free(*pem);
    *pem = NULL;
  }
  return rc;
}

/* An ASN.1 time as "2024-05-01 12:00:00 UTC". */
static void asn1_time_text(const ASN1_TIME *t, char *buf, size_t cap) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1 || !strftime(buf, cap, "%Y-%m-%d %H:%M:%S UTC", &tm))
    snprintf(buf, cap, "an unreadable date");
}

/* The checks of the leaf certificate and its key. */
static int check_pair(const char *cert_path, const char *cert_what, const char *key_path,
                      const char *key_what, const char *cert_pem, const char *key_pem,
                      td_error *err) {
  char from[256], date[64];
  origin(cert_what, from, sizeof from);
  const td_pem_src cert_src = {.noun = "client certificate", .path = cert_path, .from = cert_what};
  const td_pem_src key_src = {.noun = "key", .path = key_path, .from = key_what};
  X509 *x = NULL;
  int rc = td_pem_read_cert(cert_pem, &cert_src, &x, err);
  if (rc)
    return rc;
  if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
    asn1_time_text(X509_get0_notAfter(x), date, sizeof date);
    rc =
        td_errorf(err, TD_EINVAL, "client certificate %s expired on %s; renew it", cert_path, date);
  } else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
    asn1_time_text(X509_get0_notBefore(x), date, sizeof date);
    rc = td_errorf(err, TD_EINVAL,
                   "client certificate %s is not valid before %s; check this machine's clock",
                   cert_path, date);
  } else if (X509_check_purpose(x, X509_PURPOSE_SSL_CLIENT, 0) != 1) {
    rc = td_errorf(err, TD_EINVAL,
                   "client certificate %s%s may not be used by a TLS client (its key usage or "
                   "extended key usage leaves out clientAuth); get a client certificate",
                   cert_path, from);
  }
  if (!rc)
    rc = td_pem_check_key(key_pem, &key_src, x, &cert_src, err);
  X509_free(x);
  return rc;
}

int td_cred_read_pair(const char *cert_path, const char *cert_what, const char *key_path,
                      const char *key_what, char **cert_pem, char **key_pem, td_error *err) {
  *cert_pem = *key_pem = NULL;
  int rc =
      read_text(cert_path, "client certificate", cert_what, TD_CRED_MAX_PEM, cert_pem, NULL, err);
  if (!rc)
    rc = read_text(key_path, "key", key_what, TD_CRED_MAX_PEM, key_pem, NULL, err);
  if (!rc)
    rc = check_pair(cert_path, cert_what, key_path, key_what, *cert_pem, *key_pem, err);
  if (rc) {
    free(*cert_pem);
    if (*key_pem)
      OPENSSL_cleanse(*key_pem, strlen(*key_pem));
    free(*key_pem);
    *cert_pem = *key_pem = NULL;
  }
  return rc;
}

int td_cred_read_token(const char *path, const char *what, char **token, td_error *err) {
  char from[256];
  origin(what, from, sizeof from);
  char *text = NULL;
  size_t len = 0;
  *token = NULL;
  int rc = read_text(path, "token file", what, TD_CRED_MAX_TOKEN, &text, &len, err);
  if (rc)
    return rc;
  /* The first line that is not blank, trimmed: text[a, b). */
  size_t a = 0, b = 0;
  for (size_t i = 0; i < len;) {
    size_t eol = i;
    while (eol < len && text[eol] != '\n')
      eol++;
    a = i;
    b = eol;
    while (a < b && isspace((unsigned char)text[a]))
      a++;
    while (b > a && isspace((unsigned char)text[b - 1]))
      b--;
    if (b > a)
      break;
    i = eol + 1;
  }
  const char *p = text + a, *end = text + b;
  if (p == end) {
    OPENSSL_cleanse(text, len);
    free(text);
    return td_errorf(err, TD_EINVAL,
                     "the token file %s%s is empty; put the token on its first line", path, from);
  }
  for (const char *c = p; c < end; c++)
    if (*c <= 0x20 || *c >= 0x7f) {
      unsigned byte = (unsigned char)*c;
      size_t at = (size_t)(c - p);
      OPENSSL_cleanse(text, len);
      free(text);
      return td_errorf(err, TD_EINVAL,
                       "the token in %s%s holds a character that cannot be sent in a header "
                       "(byte 0x%02x at offset %zu); the file holds the token alone, on one line",
                       path, from, byte, at);
    }
  size_t n = (size_t)(end - p);
  *token = malloc(n + 1);
  if (*token) {
    memcpy(*token, p, n);
    (*token)[n] = '\0';
  }
  OPENSSL_cleanse(text, len);
  free(text);
  if (!*token)
    return td_errorf(err, TD_ENOMEM, "out of memory reading %s; free some memory", path);
  return 0;
}

/* Case-insensitive substring search. */
static int has(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; *hay; hay++)
    if (strncasecmp(hay, needle, n) == 0)
      return 1;
  return 0;
}

td_cred_tls_fail td_cred_tls_failure(const char *detail) {
  if (!detail)
    return TD_CRED_TLS_OTHER;
  /* gRPC's own check of the name, after the chain verified. */
  if (has(detail, "is not in peer certificate"))
    return TD_CRED_TLS_SERVER_NAME;
  /* The client's verification of the daemon's chain (OpenSSL's and
   * BoringSSL's spellings). */
  if (has(detail, "certificate verify failed") || has(detail, "CERTIFICATE_VERIFY_FAILED"))
    return TD_CRED_TLS_SERVER_CERT;
  /* Alerts the daemon sends about the client's certificate. */
  static const char *const refused[] = {
      "alert certificate required",
      "alert bad certificate",
      "alert unknown ca",
      "alert certificate expired",
      "alert certificate revoked",
      "alert unsupported certificate",
      "alert certificate unknown",
      "alert access denied",
      "peer did not return a certificate",
      "TLSV13_ALERT_CERTIFICATE_REQUIRED",
      "SSLV3_ALERT_BAD_CERTIFICATE",
      "TLSV1_ALERT_UNKNOWN_CA",
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    if (has(detail, refused[i]))
      return TD_CRED_TLS_CLIENT_CERT;
  if (has(detail, "ssl") || has(detail, "tls") || has(detail, "handshake"))
    return TD_CRED_TLS_HANDSHAKE;
  if (has(detail, "Socket closed") || has(detail, "Connection reset"))
    return TD_CRED_TLS_CLOSED;
  return TD_CRED_TLS_OTHER;
}

const char *td_cred_tls_detail(const char *detail) {
  const char *p = detail ? strstr(detail, "last error: ") : NULL;
  return p ? p + 12 : detail ? detail : "";
}

/* The host of one address ("h:p", "[h]:p", "h"), without brackets. */
static void address_host(const char *t, size_t len, char *buf, size_t cap) {
  size_t n;
  if (len && *t == '[') {
    const char *close = memchr(t, ']', len);
    t++;
    n = close ? (size_t)(close - t) : len - 1;
  } else {
    const char *colon = NULL;
    int colons = 0;
    for (size_t i = 0; i < len; i++)
      if (t[i] == ':') {
        colon = t + i;
        colons++;
      }
    /* A bare IPv6 address has several colons and no port. */
    n = colons == 1 ? (size_t)(colon - t) : len;
  }
  snprintf(buf, cap, "%.*s", (int)n, t);
}

/* The address part of a target: "dns:///h:p" and "dns://resolver/h:p" give
 * "h:p"; "ipv4:" and "ipv6:" are dropped (what follows may be a
 * comma-separated list). */
static const char *target_address(const char *t) {
  if (strncmp(t, "dns:", 4) == 0) {
    t += 4;
    if (strncmp(t, "//", 2) == 0) {
      const char *slash = strchr(t + 2, '/');
      t = slash ? slash + 1 : t + 2;
    }
  } else if (strncmp(t, "ipv4:", 5) == 0 || strncmp(t, "ipv6:", 5) == 0) {
    t += 5;
  }
  return t;
}

static int is_unix(const char *t) {
  return strncmp(t, "unix:", 5) == 0 || strncmp(t, "unix-abstract:", 14) == 0;
}

void td_cred_checked_name(const char *target, const char *server_name, char *buf, size_t cap) {
  if (server_name && *server_name) {
    snprintf(buf, cap, "%s", server_name);
    return;
  }
  const char *t = target ? target : "";
  if (is_unix(t)) {
    snprintf(buf, cap, "localhost");
    return;
  }
  t = target_address(t);
  address_host(t, strcspn(t, ","), buf, cap);
}

/* Whether one host is loopback: localhost, 127.0.0.0/8, ::1 or
 * ::ffff:127.x.y.z. */
static int host_is_loopback(const char *h) {
  if (strcasecmp(h, "localhost") == 0 || strcasecmp(h, "localhost.") == 0)
    return 1;
  unsigned char a[16];
  if (inet_pton(AF_INET, h, a) == 1)
    return a[0] == 127;
  if (inet_pton(AF_INET6, h, a) == 1) {
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char loop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    return memcmp(a, loop6, 16) == 0 || (memcmp(a, v4mapped, 12) == 0 && a[12] == 127);
  }
  return 0;
}

int td_cred_target_is_local(const char *target) {
  if (!target || !*target)
    return 0;
  if (is_unix(target))
    return 1;
  const char *t = target_address(target);
  if (!*t)
    return 0;
  /* Every address of a list must be loopback. */
  while (*t) {
    size_t len = strcspn(t, ",");
    char host[256];
    address_host(t, len, host, sizeof host);
    if (!host_is_loopback(host))
      return 0;
    t += len;
    if (*t == ',')
      t++;
  }
  return 1;
}
