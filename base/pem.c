/* PEM checks with OpenSSL (see pem.h). */
#include "pem.h"

#include <stdio.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

/* " (--tls-ca)" or "". */
static void origin(const td_pem_src *src, char *buf, size_t cap) {
  if (src->from && *src->from)
    snprintf(buf, cap, " (%s)", src->from);
  else if (cap)
    buf[0] = '\0';
}

int td_pem_at_end(void) {
  unsigned long e = ERR_peek_last_error();
  return e && ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
}

/* The OpenSSL error queue's last reason, for messages; clears the queue. */
static void ssl_reason(char *buf, size_t cap) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  snprintf(buf, cap, "%s", r ? r : "unknown error");
  ERR_clear_error();
}

int td_pem_check_ca(const char *pem, size_t len, const td_pem_src *src, td_error *err) {
  char from[256], why[256];
  origin(src, from, sizeof from);
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  if (!bio)
    return td_errorf(err, TD_ENOMEM, "out of memory reading %s; free some memory", src->path);
  int count = 0;
  ERR_clear_error();
  for (;;) {
    X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (!x)
      break;
    X509_free(x);
    count++;
  }
  int clean_end = td_pem_at_end();
  ssl_reason(why, sizeof why);
  BIO_free(bio);
  if (clean_end && count > 0)
    return TD_OK;
  if (clean_end)
    return td_errorf(err, TD_EINVAL,
                     "the %s %s%s holds no PEM certificate; give the CA's certificate in PEM form "
                     "(-----BEGIN CERTIFICATE-----)",
                     src->noun, src->path, from);
  return td_errorf(err, TD_EINVAL,
                   "the %s %s%s holds a certificate that does not parse (certificate %d: %s); "
                   "give the CA's certificates in PEM form",
                   src->noun, src->path, from, count + 1, why);
}

int td_pem_read_cert(const char *pem, const td_pem_src *src, X509 **out, td_error *err) {
  char from[256], why[256];
  origin(src, from, sizeof from);
  *out = NULL;
  BIO *bio = BIO_new_mem_buf(pem, -1);
  if (!bio)
    return td_errorf(err, TD_ENOMEM, "out of memory reading %s; free some memory", src->path);
  ERR_clear_error();
  X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
  BIO_free(bio);
  if (x) {
    *out = x;
    return TD_OK;
  }
  int none = td_pem_at_end();
  ssl_reason(why, sizeof why);
  if (none)
    return td_errorf(err, TD_EINVAL,
                     "the %s %s%s holds no PEM certificate; give the certificate in PEM form "
                     "(-----BEGIN CERTIFICATE-----)",
                     src->noun, src->path, from);
  return td_errorf(err, TD_EINVAL,
                   "the %s %s%s does not parse (%s); give the certificate in PEM form", src->noun,
                   src->path, from, why);
}

/* A passphrase callback that gives none: an encrypted key fails instead of
 * prompting on the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)u;
  return 0;
}

int td_pem_check_key(const char *key_pem, const td_pem_src *src, X509 *cert,
                     const td_pem_src *cert_src, td_error *err) {
  char from[256], why[256];
  origin(src, from, sizeof from);
  BIO *bio = BIO_new_mem_buf(key_pem, -1);
  if (!bio)
    return td_errorf(err, TD_ENOMEM, "out of memory reading %s; free some memory", src->path);
  ERR_clear_error();
  EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
  BIO_free(bio);
  if (!key) {
    ssl_reason(why, sizeof why);
    if (strstr(key_pem, "ENCRYPTED"))
      return td_errorf(err, TD_EINVAL,
                       "the %s %s%s is encrypted; give it unencrypted (openssl pkey -in %s -out "
                       "FILE) and keep that file private",
                       src->noun, src->path, from, src->path);
    if (!strstr(key_pem, "PRIVATE KEY-----"))
      return td_errorf(err, TD_EINVAL,
                       "the %s %s%s holds no PEM private key (-----BEGIN PRIVATE KEY-----); "
                       "give the private key of %s",
                       src->noun, src->path, from, cert_src->path);
    return td_errorf(err, TD_EINVAL,
                     "the %s %s%s does not parse (%s); give the private key of %s in PEM form",
                     src->noun, src->path, from, why, cert_src->path);
  }
  int rc = TD_OK;
  if (X509_check_private_key(cert, key) != 1)
    rc = td_errorf(err, TD_EINVAL,
                   "the %s %s does not belong to the %s %s; give the key the certificate was "
                   "made for",
                   src->noun, src->path, cert_src->noun, cert_src->path);
  ERR_clear_error();
  EVP_PKEY_free(key);
  return rc;
}
