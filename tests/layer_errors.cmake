# Bad conv, pooling and normalization layers through a real daemon:
#   daemon_layer_errors  each bad layer spec refused by SubmitJob with
#                        INVALID_ARGUMENT and its message, the daemon serving
#                        on; the same layers set right accepted and trained
#                        (synthetic HDF5 data: no MNIST needed)
td_daemon_test(daemon_layer_errors daemon_layer_errors.py "daemon" 600)
