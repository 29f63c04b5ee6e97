# Fuzz targets (tests/fuzz/): the job-file parser and every request message.
#   fuzz_jobspec   a job file: pbjson parse, JSON round trip, validation, compile
#   fuzz_request   a request payload of any method: td_pbgrpc_unpack, JSON round
#                  trip, and for SubmitJob validation and compile
#
# Every build replays the committed corpus (tests/fuzz/corpus/NAME/) and the
# reproducers of past crashes (tests/fuzz/crashes/NAME/) as ordinary tests
# (fuzz_NAME_replay). With -DTRAIND_FUZZ=ON and clang, the libFuzzer
# binaries are built too; scripts/fuzz runs each for a bounded time under
# ASan + UBSan.
set(TD_FUZZ_DIR ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
set(TD_FUZZ_LIBS_jobspec td_engine)
set(TD_FUZZ_LIBS_request td_engine td_pbgrpc)
set(TD_FUZZ_DEFS_jobspec TD_FUZZ_NO_INIT)
set(TD_FUZZ_DEFS_request "")
foreach(t jobspec request)
  add_executable(fuzz_${t}_replay ${TD_FUZZ_DIR}/fuzz_${t}.c ${TD_FUZZ_DIR}/replay.c)
  target_link_libraries(fuzz_${t}_replay PRIVATE ${TD_FUZZ_LIBS_${t}})
  target_compile_definitions(fuzz_${t}_replay PRIVATE ${TD_FUZZ_DEFS_${t}})
  add_test(NAME fuzz_${t}_replay
           COMMAND fuzz_${t}_replay ${TD_FUZZ_DIR}/corpus/${t} ${TD_FUZZ_DIR}/crashes/${t})
  set_tests_properties(fuzz_${t}_replay PROPERTIES LABELS "unit;fuzz" TIMEOUT 300)
  if(TRAIND_FUZZ)
    add_executable(fuzz_${t} ${TD_FUZZ_DIR}/fuzz_${t}.c)
    target_link_libraries(fuzz_${t} PRIVATE ${TD_FUZZ_LIBS_${t}})
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
  endif()
endforeach()
