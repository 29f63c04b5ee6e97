# Checkpoints refused for resuming (another job's, edited, version 1; a
# `traind run` directory of another spec) and checkpoints that cannot be
# written (RLIMIT_FSIZE, a full tmpfs): a real traind and real files
# (tests/e2e/daemon_ckpt_faults.py; synthetic data, no MNIST needed).
td_daemon_test(daemon_ckpt_faults daemon_ckpt_faults.py "daemon" 900)
