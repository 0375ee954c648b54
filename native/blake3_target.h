/* One vendored BLAKE3 SIMD file, compiled with its instruction set enabled
 * for that file only: included by native/blake3_<simd>_target.c after it
 * defines BLAKE3_TARGET (the target string, e.g. "avx2") and BLAKE3_SOURCE
 * (the vendored file, e.g. "blake3/blake3_avx2.c").
 *
 * setuptools has no per-source compiler flags, so instead of -mavx2 and the
 * like the target is set here: a GCC target pragma, or for clang (which
 * ignores GCC's) a target attribute pushed onto every function.  The headers
 * come first so that only BLAKE3's own functions get the target.
 * blake3_dispatch.c calls this code only after cpuid says the CPU has the
 * instruction set, so the rest of the module stays baseline.  On other
 * architectures the file is empty.  (x86-64 Unix builds use upstream's
 * assembly instead and do not compile these files; see setup.py.) */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#include "blake3/blake3_impl.h"
#include <immintrin.h>
#define BLAKE3_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define BLAKE3_PUSH_TARGET(t) BLAKE3_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
BLAKE3_PUSH_TARGET(BLAKE3_TARGET)
#include BLAKE3_SOURCE
#pragma clang attribute pop
#elif defined(__GNUC__)
#define BLAKE3_PUSH_TARGET(t) BLAKE3_PRAGMA(GCC target(t))
#pragma GCC push_options
BLAKE3_PUSH_TARGET(BLAKE3_TARGET)
#include BLAKE3_SOURCE
#pragma GCC pop_options
#else /* MSVC compiles intrinsics without target flags */
#include BLAKE3_SOURCE
#endif
#else
typedef int blake3_target_unused; /* ISO C forbids an empty translation unit */
#endif
