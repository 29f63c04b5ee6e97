# Bad job files through the real `traind run`: each file in tests/bad_jobs/
# holds (or, for JSON, sits next to a .expect file holding) the exit status
# and the error text it must produce. Cases that need MNIST read it from
# $TRAIND_DATA_DIR and are skipped without it (failed under CI=true).
add_test(NAME bad_job_files COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/bad_jobs.py $<TARGET_FILE:traind> ${CMAKE_CURRENT_SOURCE_DIR}/bad_jobs)
set_tests_properties(bad_job_files PROPERTIES LABELS "unit;mnist" TIMEOUT 300 SKIP_RETURN_CODE 77)
