# The daemon's transport security, credentials and roles end to end
# (docs/security.md): a real traind with TLS listeners, client
# certificates, bearer tokens, roles and data roots by principal, driven by
# Python grpcio over real sockets (tests/e2e/daemon_security.py, helpers in
# tests/e2e/traind_harness.py). Certificates are made with the openssl CLI
# in a temporary directory; jobs are tiny and read a synthetic HDF5
# dataset, so no MNIST is needed. td_daemon_test comes from daemon.cmake.
#
#   daemon_security   mutual TLS on every RPC, handshake failures, tokens and
#                     their reload, the role matrix, certificate rotation,
#                     secure defaults, refused configurations, the health
#                     listener, data roots by principal, local_role none
td_daemon_test(daemon_security daemon_security.py "daemon;security" 300)
