# Tests of trainctl's output (client/view.c), without a daemon:
#   test_trainctl_view  tables, CSV, job records, JSON -> YAML round trips,
#                       and the --follow view fed hand-built stream messages
td_test(test_trainctl_view SOURCES test_trainctl_view.c ${CMAKE_SOURCE_DIR}/client/view.c LIBS td_proto m)
