/* The certificates of one TLS listener, for rpc.c: PEM files read and
 * checked with OpenSSL (so that a wrong file is refused with its name at
 * start or at a reload, instead of failing every handshake), and handed to
 * gRPC through a certificate config fetcher. gRPC asks the fetcher at every
 * handshake, on its own threads; a reload swaps the PEM text under a lock
 * and the next handshake picks it up. */
#ifndef TD_RPC_TLS_H
#define TD_RPC_TLS_H

#include <grpc/grpc_security.h>

#include "error.h"
#include "rpc.h"

typedef struct rpc_tls rpc_tls;

/* Reads and checks the files; `where` names the listener in messages. */
int rpc_tls_new(rpc_tls **out, const td_rpc_tls *cfg, const char *where, td_error *err);
/* Reads the files again; on an error nothing changes. */
int rpc_tls_reload(rpc_tls *t, td_error *err);
/* New server credentials that fetch from t (t must outlive them and the
 * server they serve). */
grpc_server_credentials *rpc_tls_credentials(rpc_tls *t);
void rpc_tls_free(rpc_tls *t);

#endif
