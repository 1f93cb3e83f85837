# llama.cpp, the CPU inference baseline: bench/llamacpp/llamacpp_run.cpp is built against the
# headers and the prebuilt shared libraries that scripts/setup.d/30-llamacpp.sh puts in
# third_party/llamacpp/. DSV3_LLAMACPP: AUTO builds it when they are there, ON requires them, OFF
# leaves it out (and with it the llama.cpp parity test). Under AUTO without them the parity test
# is still built and fails, saying how to fetch llama.cpp: CI must never skip it silently.
# Sets DSV3_WITH_LLAMACPP.
set(DSV3_LLAMACPP AUTO CACHE STRING "Build the llama.cpp harness: AUTO, ON or OFF")
set_property(CACHE DSV3_LLAMACPP PROPERTY STRINGS AUTO ON OFF)
set(DSV3_LLAMACPP_DIR ${CMAKE_SOURCE_DIR}/third_party/llamacpp CACHE PATH
    "Folder with llama.cpp's headers (include/) and prebuilt libraries (prebuilt/bins/linux-x64/)")

set(DSV3_WITH_LLAMACPP OFF)
if(NOT DSV3_LLAMACPP STREQUAL "OFF")
  set(_llamacpp_lib_dir ${DSV3_LLAMACPP_DIR}/prebuilt/bins/linux-x64)
  file(GLOB _llamacpp_llama ${_llamacpp_lib_dir}/libllama.v*.so)
  file(GLOB _llamacpp_ggml ${_llamacpp_lib_dir}/libggml.v*.so)
  set(_llamacpp_ggml_base ${_llamacpp_lib_dir}/libggml-base.so)
  if(EXISTS ${DSV3_LLAMACPP_DIR}/include/llama.h AND _llamacpp_llama AND _llamacpp_ggml
     AND EXISTS ${_llamacpp_ggml_base})
    set(DSV3_WITH_LLAMACPP ON)
    message(STATUS "llama.cpp harness: ${_llamacpp_lib_dir}")
  elseif(DSV3_LLAMACPP STREQUAL "ON")
    message(FATAL_ERROR "DSV3_LLAMACPP=ON but ${DSV3_LLAMACPP_DIR} has no llama.cpp headers and "
                        "libraries; run scripts/setup.sh (scripts/setup.d/30-llamacpp.sh)")
  else()
    message(STATUS "llama.cpp harness: not built (no ${DSV3_LLAMACPP_DIR}; the llama.cpp parity "
                   "test will fail until scripts/setup.sh fetches it)")
  endif()
endif()

if(DSV3_WITH_LLAMACPP)
  add_executable(llamacpp_run ${CMAKE_SOURCE_DIR}/bench/llamacpp/llamacpp_run.cpp)
  target_include_directories(llamacpp_run SYSTEM PRIVATE ${DSV3_LLAMACPP_DIR}/include)
  target_link_libraries(llamacpp_run PRIVATE ${_llamacpp_llama} ${_llamacpp_ggml}
                                             ${_llamacpp_ggml_base} ${CMAKE_DL_LIBS})
  # The libraries stay where the setup step put them; the harness finds them (and libggml its
  # CPU backends) there.
  set_target_properties(llamacpp_run PROPERTIES BUILD_RPATH ${_llamacpp_lib_dir})
endif()
