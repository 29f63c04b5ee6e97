# The DP-SGD accountant (engine/dp_account.c):
#   test_dp_account  the published settings' epsilons (as dp-accounting
#                    0.6.0 gives them), q = 1's closed form, q = 0, growth
#                    with the steps, the target's step limit, bad inputs
#   dp_account_ref   against dp-accounting's RDP accountant (the source
#                    tree's .venv) on a grid of sampling rates, noise
#                    multipliers, steps and deltas: epsilon within 1e-3
#                    relative, in both conversions; exits 77 (skipped)
#                    without dp_accounting, unless CI=true
td_test(test_dp_account SOURCES test_dp_account.c)
add_executable(dp_account_tool dp_account_tool.c)
target_link_libraries(dp_account_tool PRIVATE td_engine)
add_test(NAME dp_account_ref COMMAND ${CMAKE_SOURCE_DIR}/.venv/bin/python
         ${CMAKE_CURRENT_SOURCE_DIR}/e2e/dp_account_ref.py $<TARGET_FILE:dp_account_tool>)
set_tests_properties(dp_account_ref PROPERTIES LABELS "unit" TIMEOUT 300 SKIP_RETURN_CODE 77)
#   test_dp_kernels  the CPU backend's DP-SGD kernels: the Gaussian noise
#                    against Box-Muller in double from the same threefry
#                    words, its moments and tails, the same at 1, 2 and 3
#                    threads; the clip factors and the row scaling
td_test(test_dp_kernels SOURCES test_dp_kernels.c)
