#pragma once
// <immintrin.h> for the AVX-512 inference kernels, without GCC 12's false warnings.
//
// GCC 12 reports `'__Y' (may be) used uninitialized` inside its own avx512fintrin.h wherever
// _mm512_reduce_add_ps and friends are inlined: those helpers start from _mm512_undefined_ps(),
// which is uninitialised on purpose (GCC bug 105593, fixed in GCC 13). The dozens of copies
// buried real warnings in the build log. The pragma covers only the header's own lines, so
// dsv3's code keeps the warning.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
