# The sequence layers against JAX, Flax and optax (the source tree's .venv,
# which scripts/setup fills with JAX, flax, optax and h5py):
#   seq_jax  embed, position_embedding, causal_self_attention (2 and 4
#            heads, with and without biases), dense over a sequence's
#            positions and the loss over every position: one training
#            step of small models through layer_ref_tool against
#            flax.linen and jax.vjp (outputs, losses and every gradient
#            within a relative error of 1e-5); then a 2-block GPT trained
#            by `traind run` on a text file for 20 steps of
#            clip_by_global_norm and AdamW, over two epochs of shuffled
#            windows, and by Flax and optax from traind's initial
#            parameters on the same windows in the same order: losses,
#            gradient norms, final parameters and test losses within 1e-4
# It exits 77 (skipped) without JAX, flax, optax or h5py, unless CI=true.
add_test(NAME seq_jax COMMAND ${CMAKE_SOURCE_DIR}/.venv/bin/python
         ${CMAKE_CURRENT_SOURCE_DIR}/e2e/seq_jax.py $<TARGET_FILE:layer_ref_tool>
         $<TARGET_FILE:traind>)
set_tests_properties(seq_jax PROPERTIES LABELS "unit" TIMEOUT 300 SKIP_RETURN_CODE 77)
