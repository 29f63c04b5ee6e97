# The daemon's security rules without a server:
#   test_auth  the token file's grammar and refusals, the config checks of
#              listeners, TLS, roles and data roots, data roots by owner
# Over real sockets with certificates: tests/security.cmake.
td_test(test_auth SOURCES test_auth.c LIBS td_daemon)
