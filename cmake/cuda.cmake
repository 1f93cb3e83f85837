# The CUDA backend's build (DSV3_CUDA = AUTO | ON | OFF; see CMakeLists.txt). Sets DSV3_WITH_CUDA
# and defines dsv3_cuda_configure(target) for the library.
#
# Targets: sm_90a machine code for Hopper (wgmma/setmaxnreg need the "a" variant; written in the
# -gencode form, which nvcc 13.0 accepts) and compute_80 PTX, which the driver compiles for any
# other GPU of compute capability 8.0 or later. Override with -DCMAKE_CUDA_ARCHITECTURES=...
string(TOUPPER "${DSV3_CUDA}" DSV3_CUDA)
set(DSV3_WITH_CUDA OFF)
if(NOT DSV3_CUDA STREQUAL "OFF")
  # nvcc is often installed outside PATH; look in the toolkit's usual place as well.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    find_program(DSV3_NVCC nvcc)
    if(NOT DSV3_NVCC)
      set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(DSV3_WITH_CUDA ON)
  elseif(DSV3_CUDA STREQUAL "ON")
    message(FATAL_ERROR "DSV3_CUDA=ON but no CUDA compiler (nvcc) was found; set CUDACXX or "
                        "CMAKE_CUDA_COMPILER, or configure with -DDSV3_CUDA=OFF")
  endif()
endif()

if(DSV3_WITH_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # Set before enable_language so CMake does not probe for a (possibly absent) GPU.
    set(CMAKE_CUDA_ARCHITECTURES OFF)
    set(DSV3_CUDA_GENCODE "-gencode=arch=compute_90a,code=sm_90a"
                          "-gencode=arch=compute_80,code=compute_80")
  endif()
  enable_language(CUDA)
  # The .cu files are plain C++17 (CMake 3.25 does not know how to ask nvcc 13 for C++20).
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "dsv3: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION})")
else()
  message(STATUS "dsv3: CUDA backend OFF")
endif()

function(dsv3_cuda_configure target)
  # cuBLAS (and cuBLASLt, which it loads) is opened with dlopen on first use instead of being
  # linked: linking it costs ~0.6 s of static initialisation at every process start, CPU-only
  # runs included (kernels/cuda/context.cpp). Its headers come with CUDA::cudart's include path.
  target_link_libraries(${target} PUBLIC CUDA::cudart ${CMAKE_DL_LIBS})
  target_compile_definitions(${target} PUBLIC DSV3_WITH_CUDA=1)
  target_compile_definitions(${target} PRIVATE DSV3_CUDA_LIB_DIR="${CUDAToolkit_LIBRARY_DIR}")
  # Line info for profilers and sanitizer reports; costs nothing at run time.
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
  foreach(flag ${DSV3_CUDA_GENCODE})
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${flag}>)
  endforeach()
endfunction()
