# Memory admission and the cost of a submission, end to end
# (tests/e2e/daemon_admission.py): jobs above the memory for jobs refused
# with RESOURCE_EXHAUSTED and the figures, jobs that fit only later waiting,
# `traind run`'s refusal, the model size limits, and health answering while
# a submission is checked. Synthetic HDF5 data; the cgroup case needs a
# writable memory cgroup and is skipped without one. The unit side
# (footprints against a counting allocator, the limit's sources, the
# limits) is tests/test_footprint.c (engine.cmake).
td_daemon_test(daemon_admission daemon_admission.py "daemon" 600)
