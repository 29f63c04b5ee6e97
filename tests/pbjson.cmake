# Tests of the proto3 JSON converter (proto/pbjson.c):
#   test_pbjson     unit checks in C over tests/proto/pbjson_test.proto and the
#                   real traind.v1.JobSpec
#   pbjson_interop  the same mapping checked against Google's implementation
#                   (Debian's python3-protobuf, json_format) through pbjson_tool
#
# The test proto imports Timestamp and Duration, whose C code td_proto
# already holds.
set(PBJSON_GEN ${CMAKE_CURRENT_BINARY_DIR}/pbjson_proto)
set(PBJSON_GEN_SRCS ${PBJSON_GEN}/pbjson_test.pb-c.c)
add_custom_command(
  OUTPUT ${PBJSON_GEN}/pbjson_test.pb-c.c ${PBJSON_GEN}/pbjson_test.pb-c.h
  COMMAND ${CMAKE_COMMAND} -E make_directory ${PBJSON_GEN}
  COMMAND ${PROTOC_C} -I${CMAKE_CURRENT_SOURCE_DIR}/proto -I/usr/include --c_out=${PBJSON_GEN}
          ${CMAKE_CURRENT_SOURCE_DIR}/proto/pbjson_test.proto
  DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/proto/pbjson_test.proto
  COMMENT "protoc-c pbjson_test.proto (pbjson tests)")
set_source_files_properties(${PBJSON_GEN_SRCS} PROPERTIES COMPILE_OPTIONS "-Wno-error;-w")

add_library(pbjson_test_proto STATIC ${PBJSON_GEN_SRCS})
target_include_directories(pbjson_test_proto PUBLIC ${PBJSON_GEN})
target_link_libraries(pbjson_test_proto PUBLIC td_proto)

td_test(test_pbjson SOURCES test_pbjson.c LIBS pbjson_test_proto td_proto)

# The driver the interoperability check runs; building test_pbjson builds it.
add_executable(pbjson_tool pbjson_tool.c)
target_link_libraries(pbjson_tool PRIVATE pbjson_test_proto td_proto)
add_dependencies(test_pbjson pbjson_tool)

find_program(PBJSON_PROTOC protoc)
add_test(NAME pbjson_interop
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/pbjson_interop.py
          --tool $<TARGET_FILE:pbjson_tool> --protoc ${PBJSON_PROTOC}
          --proto-path ${CMAKE_CURRENT_SOURCE_DIR}/proto --proto-path ${CMAKE_SOURCE_DIR}/proto)
set_tests_properties(pbjson_interop PROPERTIES LABELS unit TIMEOUT 300)
