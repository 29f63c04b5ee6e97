# The layers of convolutional nets against JAX and Flax (the source tree's
# .venv, which scripts/setup fills with JAX, flax, optax and h5py):
#   layers_jax  each op's forward and backward, one training step of a
#               small model through layer_ref_tool, against flax.linen,
#               jax.lax.conv_general_dilated and jax.grad on random inputs
#               of several shapes, strides and paddings: outputs, losses,
#               every gradient and batch norms' running statistics within
#               a relative error of 1e-5
#   resnet_jax  a residual CNN with batch norm trained by `traind run` for
#               20 SGD steps and by the same model in Flax and optax from
#               the same initial parameters: losses, parameters and the
#               checkpoint's /batch_stats within 1e-4
# Both exit 77 (skipped) without JAX or flax, unless CI=true.
add_executable(layer_ref_tool layer_ref_tool.c)
target_link_libraries(layer_ref_tool PRIVATE td_engine)
add_test(NAME layers_jax COMMAND ${CMAKE_SOURCE_DIR}/.venv/bin/python
         ${CMAKE_CURRENT_SOURCE_DIR}/e2e/layers_jax.py $<TARGET_FILE:layer_ref_tool>)
set_tests_properties(layers_jax PROPERTIES LABELS "unit" TIMEOUT 300 SKIP_RETURN_CODE 77)
add_test(NAME resnet_jax COMMAND ${CMAKE_SOURCE_DIR}/.venv/bin/python
         ${CMAKE_CURRENT_SOURCE_DIR}/e2e/resnet_jax.py $<TARGET_FILE:traind>)
set_tests_properties(resnet_jax PROPERTIES LABELS "unit" TIMEOUT 300 SKIP_RETURN_CODE 77)
