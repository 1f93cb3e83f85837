# The CPU emulation of CUDA (tests/cuda_emulation): the GPU inference path (src/infer/cuda/, with
# the device memory and cuBLAS glue it uses) compiled against emulated CUDA headers, linked with
# the library's other objects, and run by the GPU inference tests (tests/gpu/test_infer_cuda.cpp)
# plus the emulation's own tests, on any machine, in every test run. Needs no CUDA toolkit.
# Test names start with "emulated.".
set(DSV3_EMU_DIR ${CMAKE_SOURCE_DIR}/tests/cuda_emulation)

# .cu files become C++ with their launches rewritten (rewrite_launches.cmake).
set(DSV3_EMU_KERNELS src/infer/cuda/decode_kernels.cu src/kernels/cuda/convert.cu
                     src/kernels/cuda/elementwise.cu tests/cuda_emulation/test_emulator.cu)
foreach(cu ${DSV3_EMU_KERNELS})
  get_filename_component(name ${cu} NAME_WE)
  set(out ${CMAKE_BINARY_DIR}/cuda_emulation/${name}.cpp)
  set(DSV3_EMU_${name} ${out})
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_SOURCE_DIR}/${cu} -DOUT=${out}
            -P ${DSV3_EMU_DIR}/rewrite_launches.cmake
    DEPENDS ${CMAKE_SOURCE_DIR}/${cu} ${DSV3_EMU_DIR}/rewrite_launches.cmake
    COMMENT "Rewriting ${cu} for the CUDA emulation")
endforeach()

# The backend's stand-ins, except for the pieces emulated for real.
set(DSV3_EMU_STANDINS ${DSV3_NOCUDA_SOURCES})
list(FILTER DSV3_EMU_STANDINS EXCLUDE REGEX "core/device_nocuda|infer/device_forward_nocuda")
add_library(dsv3emu STATIC
  $<TARGET_OBJECTS:dsv3common> ${DSV3_EMU_STANDINS} ${DSV3_EMU_decode_kernels}
  ${DSV3_EMU_convert} ${DSV3_EMU_elementwise}
  ${CMAKE_SOURCE_DIR}/src/core/cuda/device.cpp ${CMAKE_SOURCE_DIR}/src/infer/cuda/forward_cuda.cpp
  ${CMAKE_SOURCE_DIR}/src/kernels/cuda/context.cpp ${DSV3_EMU_DIR}/emulator.cpp)
target_include_directories(dsv3emu BEFORE PUBLIC ${DSV3_EMU_DIR}/include)
target_include_directories(dsv3emu PUBLIC ${CMAKE_SOURCE_DIR}/src)
target_compile_definitions(dsv3emu PRIVATE DSV3_CUDA_EMULATION=1)
# Kernel sources carry nvcc's pragmas (#pragma unroll).
target_compile_options(dsv3emu PRIVATE -Wno-unknown-pragmas)
target_link_libraries(dsv3emu PUBLIC ${DSV3_DEPENDENCIES} ${CMAKE_DL_LIBS})

add_executable(dsv3_emu_tests ${CMAKE_SOURCE_DIR}/tests/gpu/test_infer_cuda.cpp
                              ${DSV3_EMU_test_emulator}
                              ${DSV3_EMU_DIR}/test_decode_launches.cpp)
target_link_libraries(dsv3_emu_tests PRIVATE dsv3emu GTest::gtest GTest::gtest_main)
target_compile_options(dsv3_emu_tests PRIVATE -Wno-unknown-pragmas)
target_compile_definitions(dsv3_emu_tests PRIVATE DSV3_TEST_DATA="${CMAKE_SOURCE_DIR}/tests/data")
# cuBLAS's entry points are looked up by name in the program (kernels/cuda/context.cpp).
set_target_properties(dsv3_emu_tests PROPERTIES ENABLE_EXPORTS ON)
gtest_discover_tests(dsv3_emu_tests TEST_PREFIX "emulated." DISCOVERY_TIMEOUT 60
                     PROPERTIES TIMEOUT 900)

# The command line on the emulation, for an end-to-end check of --device cuda.
add_executable(dsv3_emulated ${DSV3_APP_SOURCES})
target_link_libraries(dsv3_emulated PRIVATE dsv3emu CLI11::CLI11)
set_target_properties(dsv3_emulated PROPERTIES ENABLE_EXPORTS ON)
add_test(NAME emulated.command_line
         COMMAND bash ${DSV3_EMU_DIR}/command_line.sh $<TARGET_FILE:dsv3> $<TARGET_FILE:dsv3_emulated>
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(emulated.command_line PROPERTIES TIMEOUT 900)
