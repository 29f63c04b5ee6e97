# Tests of the Prometheus module (daemon/prom.c):
#   test_prom    unit checks in C (value formatting, escaping, families,
#                histograms) and the HTTP endpoint over real sockets
#   prom_parse   the endpoint scraped with urllib and its text read by the
#                Python client library's exposition-format parser (Debian's
#                python3-prometheus-client), through prom_tool
td_test(test_prom SOURCES test_prom.c LIBS td_prom Threads::Threads TIMEOUT 120)

# The driver prom_parse scrapes: test_prom.c's fixture behind a server.
add_executable(prom_tool test_prom.c)
target_compile_definitions(prom_tool PRIVATE TD_PROM_TOOL)
target_include_directories(prom_tool PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(prom_tool PRIVATE td_prom)
add_dependencies(test_prom prom_tool)

add_test(NAME prom_parse
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/prom_parse.py $<TARGET_FILE:prom_tool>)
set_tests_properties(prom_parse PROPERTIES LABELS unit TIMEOUT 120 SKIP_RETURN_CODE 77)
