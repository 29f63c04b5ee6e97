# The CUDA backend against the CPU backend, op by op and over training
# steps. Built wherever the CUDA backend is; without a GPU it checks the
# clean refusal and exits 77 (skipped).
if(TRAIND_HAVE_CUDA)
  td_test(test_cuda_ops SOURCES test_cuda_ops.c LIBS td_cuda td_core LABELS "unit;gpu")
  set_tests_properties(test_cuda_ops PROPERTIES SKIP_RETURN_CODE 77)
endif()
