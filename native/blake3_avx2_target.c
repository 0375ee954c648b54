/* The vendored blake3/blake3_avx2.c with AVX2 enabled for this file only
 * (see blake3_target.h). */
#define BLAKE3_TARGET "avx2"
#define BLAKE3_SOURCE "blake3/blake3_avx2.c"
#include "blake3_target.h"
