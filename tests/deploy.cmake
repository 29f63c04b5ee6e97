# Running traind as a service:
#   test_sdnotify  daemon/sdnotify.c: the exact sd_notify datagrams received
#                  on a stand-in NOTIFY_SOCKET (path and abstract), the
#                  no-ops without it, WATCHDOG_USEC/WATCHDOG_PID
#   deploy_check   deploy/: the systemd unit passes `systemd-analyze verify`
#                  (with and without the GPU drop-in) and agrees with its
#                  configs (config/traind.yaml, deploy/systemd/traind-tls.yaml);
#                  the Kubernetes manifests validate strictly against the
#                  official schemas (kubernetes-validate, offline) and agree
#                  with each other and with the daemon config (the API over
#                  mutual TLS from a Secret, probes on the health listener,
#                  no plaintext network port); the Containerfile builds with
#                  scripts/setup and scripts/build; docs/security.md's
#                  cert-manager example issues the mounted Secrets; traind
#                  serves both TLS configs with certificates made by
#                  docs/security.md's openssl commands, giving each kind of
#                  caller its role, and takes a Secret-style certificate
#                  rotation at SIGHUP
if(TARGET td_sdnotify)
  td_test(test_sdnotify SOURCES test_sdnotify.c LIBS td_sdnotify TIMEOUT 60)
endif()

# systemd-analyze (Debian: systemd), openssl and kubernetes-validate (PyPI)
# are looked up when the test runs: kubernetes-validate in
# $KUBERNETES_VALIDATE, then .venv/bin of the source tree (where
# scripts/setup installs it), then $VIRTUAL_ENV/bin, then PATH. The calls
# over TLS use Debian's python3-grpcio and python3-grpc-tools.
add_test(NAME deploy_check
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/deploy_check.py
          --source-dir ${CMAKE_SOURCE_DIR}
          --traind $<TARGET_FILE:traind> --trainctl $<TARGET_FILE:trainctl>)
set_tests_properties(deploy_check PROPERTIES LABELS "unit;deploy" TIMEOUT 300 SKIP_RETURN_CODE 77)
