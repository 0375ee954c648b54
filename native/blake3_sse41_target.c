/* The vendored blake3/blake3_sse41.c, compiled with SSE4.1 enabled for this file only.
 *
 * setuptools has no per-source compiler flags, so instead of -msse4.1
 * the target is set here: a GCC target pragma, or for clang (which ignores
 * GCC's) a target attribute pushed onto every function.  The headers come
 * first so that only BLAKE3's own functions get the target.  blake3_dispatch.c
 * calls this code only after cpuid says the CPU has SSE4.1, so the rest of
 * the module stays baseline.  On other architectures this file is empty. */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#include "blake3/blake3_impl.h"
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("sse4.1"))), apply_to = function)
#include "blake3/blake3_sse41.c"
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("sse4.1")
#include "blake3/blake3_sse41.c"
#pragma GCC pop_options
#else /* MSVC compiles intrinsics without target flags */
#include "blake3/blake3_sse41.c"
#endif
#else
typedef int blake3_sse41_target_unused; /* ISO C forbids an empty translation unit */
#endif
