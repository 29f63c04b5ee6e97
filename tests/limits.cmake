# Limits on what clients can make the daemon hold or print:
#   test_log        logfmt records with hostile values (base/log.c): one
#                   line per record, every value read back unchanged
#   daemon_limits   a real traind: request strings that are not UTF-8, reply
#                   and spec size limits at the boundary, ListJobs paged by
#                   bytes, never-reading WatchMetrics and ExportCheckpoint
#                   streams (RSS bounded and returned), max_connections
td_test(test_log SOURCES test_log.c LIBS td_base)
td_daemon_test(daemon_limits daemon_limits.py "daemon" 600)
