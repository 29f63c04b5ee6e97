# DP-SGD's per-example gradients against JAX (the source tree's .venv):
#   dp_jax  one DP-SGD backward pass of small models of every layer kind
#           with per-example support (dense over examples and over a
#           sequence's positions, conv, layer_norm, embed,
#           position_embedding, and the layers without parameters between
#           them) through layer_ref_tool, against jax.vmap(jax.grad) in
#           float64: each example's gradient norm and the clipped
#           gradient within 1e-5; both the ghost norm and the formed
#           gradient run; batch_norm and attention are refused
# It exits 77 (skipped) without JAX or h5py, unless CI=true.
add_test(NAME dp_jax COMMAND ${CMAKE_SOURCE_DIR}/.venv/bin/python
         ${CMAKE_CURRENT_SOURCE_DIR}/e2e/dp_jax.py $<TARGET_FILE:layer_ref_tool>)
set_tests_properties(dp_jax PROPERTIES LABELS "unit" TIMEOUT 300 SKIP_RETURN_CODE 77)
