# The state directory end to end (tests/e2e/daemon_state_dir.py): hostile
# and corrupt job records, unique ids, malformed ids on every RPC, crash-loop
# protection (a real OOM kill in a memory cgroup where the machine allows
# one, else kill -9), and jobs on more than 64 devices. Synthetic HDF5 data:
# no MNIST needed. td_daemon_test comes from daemon.cmake.
if(COMMAND td_daemon_test)
  td_daemon_test(daemon_state_dir daemon_state_dir.py "daemon" 900)
endif()

# Job ids and records as a unit: the id grammar, ids in a burst, a first
# save that never replaces, seeding past loaded ids, device lists past 64.
td_test(test_jobs SOURCES test_jobs.c LIBS td_daemon)
