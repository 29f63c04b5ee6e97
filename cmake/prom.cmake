# The Prometheus endpoint (daemon/prom.c): the text exposition format 0.0.4
# and GET /metrics served by libmicrohttpd from its own thread. 0.9.71 is
# the first release with enum MHD_Result.
pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd>=0.9.71)

add_library(td_prom STATIC daemon/prom.c)
target_include_directories(td_prom PUBLIC ${CMAKE_SOURCE_DIR}/daemon)
target_link_libraries(td_prom PUBLIC td_base PkgConfig::MHD Threads::Threads m)
