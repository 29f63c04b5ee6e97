# TensorBoard event files (daemon/tfevents.c):
#   test_tfevents    CRC-32C check values, a file written and read back record
#                    by record in C, corruption and a full disk
#   tfevents_read    the same kind of file read by an independent Python reader
#                    (its own CRC-32C, Python protobuf classes generated from
#                    proto/tensorboard) and, when the tensorboard package is
#                    importable, by TensorBoard's EventAccumulator
td_test(test_tfevents SOURCES test_tfevents.c LIBS td_tfevents)

add_test(NAME tfevents_read
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/tfevents_read.py
          $<TARGET_FILE:test_tfevents> ${CMAKE_SOURCE_DIR}/proto)
set_tests_properties(tfevents_read PROPERTIES LABELS unit TIMEOUT 120 SKIP_RETURN_CODE 77)
