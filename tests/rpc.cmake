# Tests of the gRPC layer (daemon/rpc.c, daemon/health.c, client/rpc_client.c):
#   test_rpc            a real server on a unix socket and on 127.0.0.1:0 called
#                       through the client library: statuses, bad and oversized
#                       requests, streams (order, client cancel, deadline),
#                       health, socket files, unreachable targets, 32 threads of
#                       concurrent calls, shutdown with calls open, request
#                       strings that are not UTF-8, max_connections
#   rpc_health_interop  grpc.health.v1 Check and Watch from another gRPC
#                       implementation (Debian's python3-grpcio) against
#                       rpc_test_server
td_test(test_rpc SOURCES test_rpc.c LIBS td_rpc td_client Threads::Threads TIMEOUT 300)

# A server with the health service only, for clients written elsewhere.
add_executable(rpc_test_server rpc_test_server.c)
target_link_libraries(rpc_test_server PRIVATE td_rpc)
add_dependencies(test_rpc rpc_test_server)

add_test(NAME rpc_health_interop
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/rpc_health_interop.py
          --server $<TARGET_FILE:rpc_test_server>
          --proto ${CMAKE_SOURCE_DIR}/proto/grpc/health/v1/health.proto)
set_tests_properties(rpc_health_interop PROPERTIES LABELS unit TIMEOUT 120)
