# The engine: gradients, optimizers, training runs.
td_test(test_grad SOURCES test_grad.c)
td_test(test_optim SOURCES test_optim.c)
# The CPU backend's thread pool, and its ops bitwise equal at 1 to 5 threads.
td_test(test_pool SOURCES test_pool.c LIBS td_kernels)
target_include_directories(test_pool PRIVATE ${CMAKE_SOURCE_DIR}/kernels/cpu)
td_test(test_train SOURCES test_train.c)
# Recorded steps (graph_record/replay) through a CPU "tape" backend.
td_test(test_record SOURCES test_record.c)
# The job footprint against the bytes the engine allocates (MNIST jobs need
# TRAIND_DATA_DIR and fail without it under CI=true).
td_test(test_footprint SOURCES test_footprint.c LABELS "unit;mnist")

# Real MNIST through the `traind run` binary.
function(td_mnist_test name job min_acc)
  cmake_parse_arguments(M "" "EPOCHS" "LABELS" ${ARGN})
  add_test(NAME ${name}
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/mnist_accuracy.py
            $<TARGET_FILE:traind> ${CMAKE_SOURCE_DIR}/config/jobs/${job} ${min_acc} ${M_EPOCHS})
  set_tests_properties(${name} PROPERTIES LABELS "${M_LABELS}" TIMEOUT 1200
    SKIP_RETURN_CODE 77)
endfunction()

# One epoch of each shipped job (quick; also run under the sanitizers).
td_mnist_test(mnist_mlp_1epoch mnist_mlp.yaml 0.95 EPOCHS 1 LABELS "mnist")
td_mnist_test(mnist_adamw_cosine_1epoch mnist_mlp_adamw_cosine.yaml 0.90 EPOCHS 1 LABELS "mnist")
# The reference program exactly as shipped: 10 epochs, >= 97%.
td_mnist_test(mnist_mlp_10epochs mnist_mlp.yaml 0.97 LABELS "mnist;long")
td_mnist_test(mnist_adamw_cosine_10epochs mnist_mlp_adamw_cosine.yaml 0.97 LABELS "mnist;long")

# Same seed -> bitwise the same losses through the binary; another seed differs.
add_test(NAME mnist_determinism
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/determinism.py
          $<TARGET_FILE:traind> ${CMAKE_SOURCE_DIR}/config/jobs/mnist_mlp.yaml)
set_tests_properties(mnist_determinism PROPERTIES LABELS "mnist" TIMEOUT 600 SKIP_RETURN_CODE 77)
# The same for a model with every layer the engine has (tests/jobs/every_op.yaml).
add_test(NAME mnist_determinism_every_op
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/determinism.py
          $<TARGET_FILE:traind> ${CMAKE_CURRENT_SOURCE_DIR}/jobs/every_op.yaml)
set_tests_properties(mnist_determinism_every_op PROPERTIES LABELS "mnist" TIMEOUT 600
                     SKIP_RETURN_CODE 77)
# And for a small GPT with every sequence layer, on Shakespeare's text.
add_test(NAME mnist_determinism_gpt
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/determinism.py
          $<TARGET_FILE:traind> ${CMAKE_CURRENT_SOURCE_DIR}/jobs/gpt_every_op.yaml)
set_tests_properties(mnist_determinism_gpt PROPERTIES LABELS "mnist" TIMEOUT 600
                     SKIP_RETURN_CODE 77)

# NCCL collectives: the no-GPU refusal everywhere; the collectives on GPUs
# where there are any (exit 77 = skipped elsewhere).
if(TRAIND_HAVE_NCCL)
  td_test(test_nccl SOURCES test_nccl.c LIBS td_nccl Threads::Threads LABELS "unit;gpu")
  set_tests_properties(test_nccl PROPERTIES SKIP_RETURN_CODE 77)
endif()
