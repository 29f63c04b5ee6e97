# The CUDA backend against the CPU backend, op by op and over training
# steps, and the trainer on a GPU against the trainer on the CPU. Built
# wherever the CUDA backend is; without a GPU they check the clean refusal
# and exit 77 (skipped).
if(TRAIND_HAVE_CUDA)
  td_test(test_cuda_ops SOURCES test_cuda_ops.c LIBS td_cuda td_engine LABELS "unit;gpu")
  set_tests_properties(test_cuda_ops PROPERTIES SKIP_RETURN_CODE 77)

  # The GPU trainer (td_gpu_backend, from the daemon's library) on MNIST
  # subsets: against the CPU trainer, recorded against op by op, the
  # shuffle, and 2 GPUs against 1 where there are 2. Needs TRAIND_DATA_DIR
  # on a GPU machine (fails without it under CI=true, else skips).
  td_test(test_cuda_train SOURCES test_cuda_train.c LIBS td_daemon td_cuda td_engine
          LABELS "unit;gpu;mnist")
  set_tests_properties(test_cuda_train PROPERTIES SKIP_RETURN_CODE 77)
  # The reference program as shipped, 10 epochs on GPU 0: >= 97%.
  add_test(NAME test_cuda_train_reference COMMAND test_cuda_train --reference)
  set_tests_properties(test_cuda_train_reference PROPERTIES LABELS "gpu;mnist;long"
    TIMEOUT 1200 SKIP_RETURN_CODE 77
    ENVIRONMENT "TRAIND_SOURCE_DIR=${CMAKE_SOURCE_DIR};TRAIND_BINARY_DIR=${CMAKE_BINARY_DIR}")
endif()
