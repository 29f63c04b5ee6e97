# HDF5 checkpoints: round trip, bad files, atomic writes (C), and the same
# files opened with h5py and used from numpy.
td_test(test_checkpoint SOURCES test_checkpoint.c)

add_test(NAME checkpoint_h5py
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/checkpoint_h5py.py
          $<TARGET_FILE:test_checkpoint>)
set_tests_properties(checkpoint_h5py PROPERTIES LABELS unit TIMEOUT 120 SKIP_RETURN_CODE 77)
# Text from a language model's checkpoint: the cached position-by-position
# path against the training forward, the sampled text, the refusals.
td_test(test_sample SOURCES test_sample.c)
