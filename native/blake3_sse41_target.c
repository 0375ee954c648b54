/* The vendored blake3/blake3_sse41.c with SSE4.1 enabled for this file only
 * (see blake3_target.h). */
#define BLAKE3_TARGET "sse4.1"
#define BLAKE3_SOURCE "blake3/blake3_sse41.c"
#include "blake3_target.h"
