# Models as graphs (engine/plan.c, engine/ops.c):
#   graph_jax  a residual block and a branch from the input with an add of
#              three, trained by `traind run` for 20 SGD steps and by the
#              same model in JAX from the same initial parameters: losses
#              and parameters within 1e-4 (the source tree's .venv, which
#              scripts/setup fills with JAX and h5py)
# (test_grad checks every op's gradients, graphs included, against float64
# finite differences; daemon_bad_input's graph_errors the compile errors.)
add_test(NAME graph_jax COMMAND ${CMAKE_SOURCE_DIR}/.venv/bin/python
         ${CMAKE_CURRENT_SOURCE_DIR}/e2e/graph_jax.py $<TARGET_FILE:traind>)
set_tests_properties(graph_jax PROPERTIES LABELS "unit" TIMEOUT 300 SKIP_RETURN_CODE 77)
