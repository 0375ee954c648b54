/* The vendored blake3/blake3_sse2.c with SSE2 enabled for this file only
 * (see blake3_target.h). */
#define BLAKE3_TARGET "sse2"
#define BLAKE3_SOURCE "blake3/blake3_sse2.c"
#include "blake3_target.h"
