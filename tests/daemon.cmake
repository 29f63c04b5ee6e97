# The daemon end to end: a real traind on a temporary unix socket and/or
# 127.0.0.1:0 with a temporary state directory, driven by trainctl and by
# Python grpcio with stubs generated from proto/ (tests/e2e/daemon_*.py,
# helpers in tests/e2e/traind_harness.py). Each script runs its cases and
# ends with "N passed, N failed"; it fails when any daemon does not exit 0
# on SIGTERM or leaves a sanitizer report on its stderr.
#
#   daemon_scheduler           queue, cancel, priority, devices, SIGHUP, paging
#                              (synthetic HDF5 data: no MNIST needed)
#   daemon_bad_input           bad RPCs get the right status; the daemon serves on
#   daemon_interop             Python grpcio: submit, WatchMetrics, health, info
#   daemon_restart             records across SIGTERM, SIGKILL and restarts
#   daemon_sdnotify            READY, watchdog pings, RELOADING, STOPPING to a
#                              notification socket, as under systemd
#   daemon_prometheus          /metrics scraped during training and parsed with
#                              prometheus_client; values agree with the API
#   daemon_tensorboard         jobs' TensorBoard event files read back: equal
#                              to GetMetrics, a second file after a resume
#   daemon_checkpoint          HDF5 checkpoints: retention, export, bit-exact resume
#   daemon_cnn                 conv nets and batch norm: Flax's MNIST CNN for an
#                              epoch (10 epochs: long), a residual net, batch
#                              norm on 2 devices, kill -9 resume, h5py accuracy
#   daemon_gpt                 character GPTs on Shakespeare: the baby GPT for 100
#                              steps, 2 devices equal 1, vocabulary and parameters
#                              in checkpoints, bad text jobs
#   daemon_lm_metrics          language models' metrics: per-token losses in bits,
#                              tokens/s, mid-epoch evaluations, in RPC points,
#                              TensorBoard, Prometheus and trainctl
#   daemon_trainctl            the CLI: --follow over unix and TCP, -o json,
#                              exit codes, errors, TRAIND_ADDR
#   daemon_reference_2devices_10epochs
#                              the same on 2 CPU devices (data parallel): >= 97%
#   daemon_reference_10epochs  the reference program as shipped through
#                              `trainctl submit --follow`: >= 97% (long)
#
# MNIST comes from $TRAIND_DATA_DIR; without it the MNIST tests are skipped
# (exit 77), or fail when CI=true.
#
# The scripts must hold on a slow, loaded machine (a busy core, sanitizer
# builds): they wait for conditions with deadlines and never sleep in their
# place; what they compare comes from one reply (ListJobs is one snapshot,
# a WatchMetrics message carries the job record of its moment) or from
# replies bracketed by the job being RUNNING before and after; a job a test
# must see running is long enough, and the harness fails with "make it
# longer" when it ends first (Suite.jobs, wait_steps, wait_running and
# while_running in traind_harness.py). Timing bounds are for what takes
# milliseconds when idle and are set to seconds.
function(td_daemon_test name script labels timeout)
  add_test(NAME ${name}
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/${script}
            $<TARGET_FILE:traind> $<TARGET_FILE:trainctl> ${CMAKE_SOURCE_DIR} ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "${labels}" TIMEOUT ${timeout}
    SKIP_RETURN_CODE 77)
endfunction()

td_daemon_test(daemon_scheduler daemon_scheduler.py "daemon" 600)
td_daemon_test(daemon_bad_input daemon_bad_input.py "daemon" 600)
td_daemon_test(daemon_interop daemon_interop.py "daemon;mnist" 600)
td_daemon_test(daemon_restart daemon_restart.py "daemon;mnist" 600)
td_daemon_test(daemon_tensorboard daemon_tensorboard.py "daemon;mnist" 600)
td_daemon_test(daemon_prometheus daemon_prometheus.py "daemon;mnist" 600)
td_daemon_test(daemon_sdnotify daemon_sdnotify.py "daemon" 120)
td_daemon_test(daemon_checkpoint daemon_checkpoint.py "daemon;mnist" 600)
td_daemon_test(daemon_trainctl daemon_trainctl.py "daemon;mnist" 600)
td_daemon_test(daemon_cnn daemon_cnn.py "daemon;mnist" 900)
td_daemon_test(daemon_gpt daemon_gpt.py "daemon;mnist" 900)
td_daemon_test(daemon_dp daemon_dp.py "daemon;mnist" 900)
td_daemon_test(daemon_dp_60epochs daemon_dp.py "daemon;mnist;long" 3600 mnist_dp_60_epochs)
td_daemon_test(daemon_gpt_2000 daemon_gpt.py "daemon;mnist;long" 3600 char_2000_steps)
td_daemon_test(daemon_cnn_10epochs daemon_cnn.py "daemon;mnist;long" 2400 cnn_10_epochs)
td_daemon_test(daemon_reference_10epochs daemon_trainctl.py "daemon;mnist;long" 1200
               reference_10_epochs)
td_daemon_test(daemon_reference_2devices_10epochs daemon_trainctl.py "daemon;mnist;long" 1200
               reference_2_devices_10_epochs)
td_daemon_test(daemon_lm_metrics daemon_lm_metrics.py "daemon;mnist" 600)
