# TensorBoard event files (daemon/tfevents.c): the writer and the C code
# protoc-c generates from proto/tensorboard/*.proto, into the build tree next
# to the API's generated code (PROTO_OUT).
set(TFEVENTS_PROTO_SRCS)
foreach(p tensorboard/summary tensorboard/event)
  add_custom_command(
    OUTPUT ${PROTO_OUT}/${p}.pb-c.c ${PROTO_OUT}/${p}.pb-c.h
    COMMAND ${CMAKE_COMMAND} -E make_directory ${PROTO_OUT}
    COMMAND ${PROTOC_C} -I${CMAKE_SOURCE_DIR}/proto --c_out=${PROTO_OUT}
            ${CMAKE_SOURCE_DIR}/proto/${p}.proto
    DEPENDS ${CMAKE_SOURCE_DIR}/proto/${p}.proto
    COMMENT "protoc-c ${p}.proto")
  list(APPEND TFEVENTS_PROTO_SRCS ${PROTO_OUT}/${p}.pb-c.c)
endforeach()
# Generated code is not ours to warn about.
set_source_files_properties(${TFEVENTS_PROTO_SRCS} PROPERTIES COMPILE_OPTIONS "-Wno-error;-w")

add_library(td_tfevents STATIC daemon/tfevents.c ${TFEVENTS_PROTO_SRCS})
target_include_directories(td_tfevents PUBLIC ${CMAKE_SOURCE_DIR}/daemon)
target_link_libraries(td_tfevents PUBLIC td_proto td_base)
