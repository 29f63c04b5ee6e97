/* TLS listeners' certificates (see rpc_tls.h). */
#include "rpc_tls.h"

#include <openssl/x509.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pem.h"

/* A PEM file larger than this is not a certificate or a key. */
#define PEM_MAX_BYTES ((size_t)1 << 20)

typedef struct pem_set {
  char *cert, *key, *ca; /* NUL-terminated PEM text; ca NULL without one */
} pem_set;

struct rpc_tls {
  char *cert_file, *key_file, *ca_file;
  char where[160];
  td_rpc_client_cert client_cert;
  pthread_mutex_t mu;
  int mu_inited;
  pem_set pem;                       /* guarded by mu */
  unsigned long generation, fetched; /* guarded by mu */
};

static void pem_set_free(pem_set *p) {
  free(p->cert);
  if (p->key) {
    memset(p->key, 0, strlen(p->key)); /* a private key does not linger */
    free(p->key);
  }
  free(p->ca);
  memset(p, 0, sizeof *p);
}

static int read_text(const char *what, const char *path, char **out, td_error *err) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f)
    return td_errorf(err, errno == ENOENT ? TD_ENOTFOUND : TD_EIO, "%s %s: %s", what, path,
                     strerror(errno));
  char *buf = malloc(PEM_MAX_BYTES + 1);
  if (!buf) {
    fclose(f);
    return td_errorf(err, TD_ENOMEM, "%s %s: out of memory", what, path);
  }
  size_t n = fread(buf, 1, PEM_MAX_BYTES + 1, f);
  int bad = ferror(f);
  fclose(f);
  if (bad || n == 0 || n > PEM_MAX_BYTES) {
    free(buf);
    return td_errorf(err, TD_EINVAL, "%s %s: %s", what, path,
                     bad ? "read error"
                     : n ? "larger than 1 MiB"
                         : "empty");
  }
  buf[n] = 0;
  *out = buf;
  return TD_OK;
}

/* Reads the three files and checks that the certificate parses, the key is
 * its key and the CA file holds certificates. */
static int load(const rpc_tls *t, pem_set *out, td_error *err) {
  memset(out, 0, sizeof *out);
  const td_pem_src cert_src = {.noun = "tls.cert_file", .path = t->cert_file};
  const td_pem_src key_src = {.noun = "tls.key_file", .path = t->key_file};
  const td_pem_src ca_src = {.noun = "tls.client_ca_file", .path = t->ca_file};
  X509 *cert = NULL;
  int rc = read_text("tls.cert_file", t->cert_file, &out->cert, err);
  if (!rc)
    rc = read_text("tls.key_file", t->key_file, &out->key, err);
  if (!rc && t->ca_file)
    rc = read_text("tls.client_ca_file", t->ca_file, &out->ca, err);
  if (!rc)
    rc = td_pem_read_cert(out->cert, &cert_src, &cert, err);
  if (!rc)
    rc = td_pem_check_key(out->key, &key_src, cert, &cert_src, err);
  if (!rc && out->ca)
    rc = td_pem_check_ca(out->ca, strlen(out->ca), &ca_src, err);
  if (rc) {
    X509_free(cert);
    pem_set_free(out);
    td_error_prefix(err, "%s", t->where);
    return rc;
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
    td_log_warn("the TLS certificate has expired; clients will refuse it", "listener=%s file=%s",
                t->where, t->cert_file);
  X509_free(cert);
  return TD_OK;
}

static char *dup_opt(const char *s) { return s && *s ? strdup(s) : NULL; }

int rpc_tls_new(rpc_tls **out, const td_rpc_tls *cfg, const char *where, td_error *err) {
  *out = NULL;
  if (!cfg->cert_file || !*cfg->cert_file || !cfg->key_file || !*cfg->key_file)
    return td_errorf(err, TD_EINVAL, "%s: tls needs cert_file and key_file", where);
  if (cfg->client_cert != TD_RPC_CLIENT_CERT_NONE &&
      (!cfg->client_ca_file || !*cfg->client_ca_file))
    return td_errorf(err, TD_EINVAL,
                     "%s: tls.client_cert asks for client certificates; give "
                     "tls.client_ca_file, the CAs that sign them",
                     where);
  rpc_tls *t = calloc(1, sizeof *t);
  if (!t || !(t->cert_file = strdup(cfg->cert_file)) || !(t->key_file = strdup(cfg->key_file)) ||
      (cfg->client_ca_file && *cfg->client_ca_file &&
       !(t->ca_file = dup_opt(cfg->client_ca_file)))) {
    rpc_tls_free(t);
    return td_errorf(err, TD_ENOMEM, "%s: out of memory", where);
  }
  snprintf(t->where, sizeof t->where, "%s", where);
  t->client_cert = cfg->client_cert;
  pthread_mutex_init(&t->mu, NULL);
  t->mu_inited = 1;
  int rc = load(t, &t->pem, err);
  if (rc) {
    rpc_tls_free(t);
    return rc;
  }
  t->generation = 1;
  *out = t;
  return TD_OK;
}

int rpc_tls_reload(rpc_tls *t, td_error *err) {
  pem_set fresh;
  int rc = load(t, &fresh, err);
  if (rc)
    return rc;
  pthread_mutex_lock(&t->mu);
  pem_set old = t->pem;
  t->pem = fresh;
  t->generation++;
  pthread_mutex_unlock(&t->mu);
  pem_set_free(&old);
  return TD_OK;
}

/* gRPC's threads, at every handshake: a new config when the files were
 * read again since the last one it took. */
static grpc_ssl_certificate_config_reload_status fetch(void *arg,
                                                       grpc_ssl_server_certificate_config **out) {
  rpc_tls *t = arg;
  grpc_ssl_certificate_config_reload_status st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
  pthread_mutex_lock(&t->mu);
  if (t->fetched != t->generation) {
    grpc_ssl_pem_key_cert_pair pair = {.private_key = t->pem.key, .cert_chain = t->pem.cert};
    /* The config copies the strings. gRPC 1.51 asserts root certificates
     * here even when it requests no client certificates; without a client
     * CA the server's own chain stands in, and is never used. */
    *out = grpc_ssl_server_certificate_config_create(t->pem.ca ? t->pem.ca : t->pem.cert, &pair, 1);
    if (*out) {
      t->fetched = t->generation;
      st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
    } else {
      st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
    }
  }
  pthread_mutex_unlock(&t->mu);
  return st;
}

grpc_server_credentials *rpc_tls_credentials(rpc_tls *t) {
  grpc_ssl_client_certificate_request_type req =
      t->client_cert == TD_RPC_CLIENT_CERT_REQUIRE
          ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
      : t->client_cert == TD_RPC_CLIENT_CERT_REQUEST
          ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
          : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  grpc_ssl_server_credentials_options *o =
      grpc_ssl_server_credentials_create_options_using_config_fetcher(req, fetch, t);
  return o ? grpc_ssl_server_credentials_create_with_options(o) : NULL;
}

void rpc_tls_free(rpc_tls *t) {
  if (!t)
    return;
  if (t->mu_inited)
    pthread_mutex_destroy(&t->mu);
  pem_set_free(&t->pem);
  free(t->cert_file);
  free(t->key_file);
  free(t->ca_file);
  free(t);
}
