# Turns a .cu file into C++ for the CPU emulation of CUDA (include/cuda_emulation.h):
#   name<<<grid, block, shared, stream>>>(args)  ->  ::dsv3emu::launch("name", name, {grid, block, shared, stream}, args)
#   extern __shared__ [__align__(N)] T name[];   ->  T* const name = ::dsv3emu::dynamic_shared<T>();
#   __shared__ [__align__(N)] T name[N];         ->  auto& name = ::dsv3emu::block_shared<T[N]>([] {});
# (block_shared and dynamic shared memory are 16-byte aligned, so __align__ up to 16 holds), and
# includes the emulated runtime first, as nvcc includes cuda_runtime.h.
# Usage: cmake -DIN=file.cu -DOUT=file.cpp -P rewrite_launches.cmake
file(READ "${IN}" text)
string(REGEX REPLACE
       "([A-Za-z_][A-Za-z0-9_:]*(<[^<>;]*>)?)<<<([^;]*)>>>\\("
       "::dsv3emu::launch(\"\\1\", \\1, {\\3}, " text "${text}")
string(REGEX REPLACE
       "extern __shared__ (__align__\\([0-9]+\\) )?([A-Za-z_]([A-Za-z0-9_: ]*[A-Za-z0-9_])?) ([A-Za-z_][A-Za-z0-9_]*)\\[\\];"
       "\\2* const \\4 = ::dsv3emu::dynamic_shared<\\2>();" text "${text}")
string(REGEX REPLACE
       "__shared__ (__align__\\([0-9]+\\) )?([A-Za-z_][A-Za-z0-9_:]*) ([A-Za-z_][A-Za-z0-9_]*)((\\[[^];]+\\])*);"
       "auto& \\3 = ::dsv3emu::block_shared<\\2\\4>([] {});" text "${text}")
if(text MATCHES "__shared__")
  message(FATAL_ERROR "${IN}: a __shared__ declaration the emulation's rewrite does not understand")
endif()
if(text MATCHES "<<<|>>>\\(")
  message(FATAL_ERROR "${IN}: a kernel launch the emulation's rewrite does not understand")
endif()
file(WRITE "${OUT}.tmp" "// Generated from ${IN} by tests/cuda_emulation/rewrite_launches.cmake.\n#include <cuda_runtime.h>\n#line 1 \"${IN}\"\n${text}")
file(RENAME "${OUT}.tmp" "${OUT}")
