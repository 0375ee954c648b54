/* The vendored blake3/blake3_avx512.c with AVX-512F and AVX-512VL enabled for this file only
 * (see blake3_target.h). */
#define BLAKE3_TARGET "avx512f,avx512vl"
#define BLAKE3_SOURCE "blake3/blake3_avx512.c"
#include "blake3_target.h"
