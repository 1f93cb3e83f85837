# The CPU emulation of CUDA (tests/cuda_emulation): the CUDA backend (src/*/cuda/, except the
# peak benchmark) compiled against emulated CUDA headers,
# linked with the library's other objects, and run by the GPU inference and router tests
# (tests/gpu/test_infer_cuda.cpp, test_router_cuda.cpp, test_bf16_storage_cuda.cpp,
# test_grouped_gemm_cuda.cpp, test_index_errors_cuda.cpp, test_decode_router_cuda.cpp,
# test_decode_fusion_cuda.cpp, test_decode_program_cuda.cpp, test_weights_cuda.cpp,
# test_grouped_streams_cuda.cpp, test_scratch_cuda.cpp, test_convert_cuda.cpp,
# test_mla_attention_cuda.cpp), the op table's CUDA cases and the emulation's own tests, on any machine, in every test run. Needs no CUDA toolkit. Test names start with "emulated.".
set(DSV3_EMU_DIR ${CMAKE_SOURCE_DIR}/tests/cuda_emulation)

# .cu files become C++ with their launches rewritten (rewrite_launches.cmake).
set(DSV3_EMU_KERNELS
    src/infer/cuda/decode_kernels.cu src/kernels/cuda/attention.cu
    src/kernels/cuda/attention_backward.cu src/kernels/cuda/attention_bf16.cu
    src/kernels/cuda/attention_bf16_backward.cu src/kernels/cuda/convert.cu
    src/kernels/cuda/cross_entropy.cu src/kernels/cuda/elementwise.cu
    src/kernels/cuda/embedding.cu src/kernels/cuda/grouped_gemm.cu src/kernels/cuda/heads.cu
    src/kernels/cuda/moe.cu src/kernels/cuda/pad_groups.cu
    src/kernels/cuda/optimizer.cu src/kernels/cuda/rmsnorm.cu src/kernels/cuda/rope.cu
    src/kernels/cuda/router.cu
    src/kernels/cuda/swiglu.cu tests/cuda_emulation/test_emulator.cu
    tests/cuda_emulation/test_tensor_core.cu)
# Rewrites the kernel source `in` (relative to the source tree) to `out`.
function(dsv3_emu_rewrite in out)
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_SOURCE_DIR}/${in} -DOUT=${out}
            -P ${DSV3_EMU_DIR}/rewrite_launches.cmake
    DEPENDS ${CMAKE_SOURCE_DIR}/${in} ${DSV3_EMU_DIR}/rewrite_launches.cmake
    COMMENT "Rewriting ${in} for the CUDA emulation")
endfunction()

set(DSV3_EMU_GENERATED)  # the backend's kernel files, rewritten
set(DSV3_EMU_KERNEL_CPP)  # and the emulation's own test kernels
foreach(cu ${DSV3_EMU_KERNELS})
  get_filename_component(name ${cu} NAME_WE)
  set(out ${CMAKE_BINARY_DIR}/cuda_emulation/${name}.cpp)
  if(cu MATCHES "^src/")
    list(APPEND DSV3_EMU_GENERATED ${out})
  endif()
  list(APPEND DSV3_EMU_KERNEL_CPP ${out})
  dsv3_emu_rewrite(${cu} ${out})
endforeach()

# Kernel headers with shared memory are rewritten the same way, to the folder of the rewritten
# .cu files under the same relative path: a quoted include finds them there first.
set(DSV3_EMU_KERNEL_HEADERS src/infer/cuda/decode_units.cuh)
foreach(cuh ${DSV3_EMU_KERNEL_HEADERS})
  string(REGEX REPLACE "^src/" "" rel ${cuh})
  set(out ${CMAKE_BINARY_DIR}/cuda_emulation/${rel})
  list(APPEND DSV3_EMU_GENERATED ${out})
  dsv3_emu_rewrite(${cuh} ${out})
endforeach()

# The backend's host code; the peak benchmark (an 8192^3 GEMM) is left out.
set(DSV3_EMU_HOST ${DSV3_ALL_SOURCES})
list(FILTER DSV3_EMU_HOST INCLUDE REGEX "/cuda/.*\\.cpp$|device_peak_nocuda")
list(FILTER DSV3_EMU_HOST EXCLUDE REGEX "kernels/cuda/peak\\.cpp$")
add_library(dsv3emu STATIC
  $<TARGET_OBJECTS:dsv3common> ${DSV3_EMU_HOST} ${DSV3_EMU_GENERATED}
  ${DSV3_EMU_DIR}/emulator.cpp ${DSV3_EMU_DIR}/tensor_core.cpp)
target_include_directories(dsv3emu BEFORE PUBLIC ${DSV3_EMU_DIR}/include)
target_include_directories(dsv3emu PUBLIC ${CMAKE_SOURCE_DIR}/src)
target_compile_definitions(dsv3emu PRIVATE DSV3_CUDA_EMULATION=1)
# Kernel sources carry nvcc's pragmas (#pragma unroll).
target_compile_options(dsv3emu PRIVATE -Wno-unknown-pragmas)
# A misaligned vector load (float4, uint4) faults on a GPU: in the emulated kernels it stops the
# program with UndefinedBehaviorSanitizer's report (the vector types are 16-byte aligned).
set_source_files_properties(${DSV3_EMU_KERNEL_CPP} PROPERTIES COMPILE_OPTIONS
                            "-fsanitize=alignment;-fno-sanitize-recover=alignment")
target_link_options(dsv3emu INTERFACE -fsanitize=alignment)
target_link_libraries(dsv3emu PUBLIC ${DSV3_DEPENDENCIES} ${CMAKE_DL_LIBS})
# The emulated cuBLAS is found by name at run time (kernels/cuda/context.cpp looks its entry
# points up in the program), so nothing references it at link time: from the static library
# the linker would leave it out. Each program that links the emulation compiles it in instead.
target_sources(dsv3emu INTERFACE ${DSV3_EMU_DIR}/cublas.cpp)

add_executable(dsv3_emu_tests ${CMAKE_SOURCE_DIR}/tests/gpu/test_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_infer_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_router_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_bf16_storage_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_grouped_gemm_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_index_errors_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_decode_router_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_decode_fusion_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_decode_program_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_weights_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_grouped_streams_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_convert_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_scratch_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/gpu/test_mla_attention_cuda.cpp
                              ${CMAKE_SOURCE_DIR}/tests/ops/test_ops.cpp
                              ${CMAKE_BINARY_DIR}/cuda_emulation/test_emulator.cpp
                              ${CMAKE_BINARY_DIR}/cuda_emulation/test_tensor_core.cpp
                              ${DSV3_EMU_DIR}/test_decode_launches.cpp
                              ${DSV3_EMU_DIR}/test_out_of_memory.cpp
                              ${DSV3_EMU_DIR}/test_train_step_host_calls.cpp)
target_link_libraries(dsv3_emu_tests PRIVATE dsv3emu GTest::gtest GTest::gtest_main)
target_compile_options(dsv3_emu_tests PRIVATE -Wno-unknown-pragmas)
target_compile_definitions(dsv3_emu_tests PRIVATE DSV3_TEST_DATA="${CMAKE_SOURCE_DIR}/tests/data"
                                                  DSV3_CUDA_EMULATION=1)
# cuBLAS's entry points are looked up by name in the program (kernels/cuda/context.cpp).
set_target_properties(dsv3_emu_tests PROPERTIES ENABLE_EXPORTS ON)
# The op table's CUDA cases only (its CPU cases run in dsv3_tests).
gtest_discover_tests(dsv3_emu_tests TEST_PREFIX "emulated." DISCOVERY_TIMEOUT 60
                     TEST_FILTER "-Ops*_cpu*:OpCompare.*"
                     PROPERTIES TIMEOUT 900)

# The command line on the emulation, for an end-to-end check of --device cuda.
add_executable(dsv3_emulated $<TARGET_OBJECTS:dsv3apps>)
target_link_libraries(dsv3_emulated PRIVATE dsv3emu CLI11::CLI11)
set_target_properties(dsv3_emulated PROPERTIES ENABLE_EXPORTS ON)
add_test(NAME emulated.command_line
         COMMAND bash ${DSV3_EMU_DIR}/command_line.sh $<TARGET_FILE:dsv3> $<TARGET_FILE:dsv3_emulated>
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
# The longest test (about 4 minutes): a high cost makes a parallel ctest start it first rather
# than leave it running alone at the end.
set_tests_properties(emulated.command_line PROPERTIES TIMEOUT 900 COST 1000)
