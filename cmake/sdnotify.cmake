# systemd service notification (daemon/sdnotify.[ch]): READY/STOPPING/
# RELOADING/WATCHDOG/STATUS through libsystemd's sd_notify(3). Debian:
# libsystemd-dev (pkg-config libsystemd). Every call is a no-op when the
# process was not started by systemd with NOTIFY_SOCKET set.
pkg_check_modules(SYSTEMD IMPORTED_TARGET libsystemd)
if(NOT SYSTEMD_FOUND)
  message(FATAL_ERROR "libsystemd (pkg-config libsystemd) was not found: "
                      "install Debian's libsystemd-dev (scripts/setup does)")
endif()
add_library(td_sdnotify STATIC ${CMAKE_SOURCE_DIR}/daemon/sdnotify.c)
target_include_directories(td_sdnotify PUBLIC ${CMAKE_SOURCE_DIR}/daemon)
target_link_libraries(td_sdnotify PUBLIC PkgConfig::SYSTEMD)
