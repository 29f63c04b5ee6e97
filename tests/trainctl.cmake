# Tests of trainctl (client/), without traind:
#   test_trainctl_view  tables, CSV, job records (owner included), the daemon's
#                       info, JSON -> YAML round trips, and the --follow view
#                       fed hand-built stream messages
#   test_trainctl_ctx   the contexts file (parsing, default path, use-context
#                       and set-context rewrites), the precedence flag >
#                       environment > context > default, relative and ~/
#                       paths, token files, loopback targets, TLS failure texts
#   trainctl_tls        the built trainctl against a Python grpcio TLS server
#                       (Debian's python3-grpcio) with certificates made by
#                       openssl: mutual TLS with a bearer token (unary and
#                       streaming), contexts and environment, the token over a
#                       unix socket, and a clear message for each way it can
#                       go wrong (wrong CA, wrong name, expired, missing or
#                       refused client certificate, token file, plaintext)
td_test(test_trainctl_view SOURCES test_trainctl_view.c ${CMAKE_SOURCE_DIR}/client/view.c LIBS td_proto m)
td_test(test_trainctl_ctx SOURCES test_trainctl_ctx.c ${CMAKE_SOURCE_DIR}/client/context.c
        ${CMAKE_SOURCE_DIR}/client/view.c LIBS td_client td_proto m)
add_test(NAME trainctl_tls
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/trainctl_tls.py
          $<TARGET_FILE:trainctl> ${CMAKE_SOURCE_DIR})
set_tests_properties(trainctl_tls PROPERTIES LABELS "unit;tls" TIMEOUT 300 SKIP_RETURN_CODE 77)
