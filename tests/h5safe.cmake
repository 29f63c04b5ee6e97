# Files a job names cannot lead traind outside them or block it
# (engine/h5safe.h): HDF5 datasets and checkpoints with external storage,
# external links or virtual datasets, declared sizes the file does not hold,
# FIFOs, sockets, devices, symlink loops and over-long names; no HDF5 object
# left open by a refused or corrupt file (C, unit). The same end to end
# through a real traind: SubmitJob, the job's outcome, `trainctl export`
# (tests/e2e/daemon_hdf5_escape.py; synthetic files, no MNIST needed).
td_test(test_h5safe SOURCES test_h5safe.c)
td_daemon_test(daemon_hdf5_escape daemon_hdf5_escape.py "daemon" 600)
