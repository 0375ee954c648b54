/* The vendored blake3/blake3_neon.c, on AArch64 only, where NEON is part of
 * the baseline and needs no flags; blake3_impl.h turns on BLAKE3_USE_NEON by
 * itself there, and blake3_dispatch.c then calls this code.  (ARMv7 may lack
 * NEON, so, as upstream does, it gets the portable code only.)  On other
 * architectures this file is empty. */
#if defined(__aarch64__) || defined(_M_ARM64)
#include "blake3/blake3_neon.c"
#else
typedef int blake3_neon_target_unused; /* ISO C forbids an empty translation unit */
#endif
