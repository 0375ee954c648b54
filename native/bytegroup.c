#include <string.h>
#include "bytegroup.h"

/* Blocks of 4096 elements keep every plane's write pointer in L1; k = 2 and
 * k = 4 get unrolled loops the compiler vectorizes, other k a generic one. */
#define BLOCK 4096

void bytegroup(const uint8_t *src, uint8_t *dst, size_t n, size_t k)
{
    size_t m = n / k;
    if (k == 4) {
        uint8_t *d0 = dst, *d1 = dst + m, *d2 = dst + 2 * m, *d3 = dst + 3 * m;
        for (size_t i = 0; i < m; i++) {
            d0[i] = src[4 * i]; d1[i] = src[4 * i + 1];
            d2[i] = src[4 * i + 2]; d3[i] = src[4 * i + 3];
        }
    } else if (k == 2) {
        uint8_t *d0 = dst, *d1 = dst + m;
        for (size_t i = 0; i < m; i++) {
            d0[i] = src[2 * i]; d1[i] = src[2 * i + 1];
        }
    } else {
        for (size_t b = 0; b < m; b += BLOCK) {
            size_t e = b + BLOCK < m ? b + BLOCK : m;
            for (size_t j = 0; j < k; j++)
                for (size_t i = b; i < e; i++)
                    dst[j * m + i] = src[i * k + j];
        }
    }
    memcpy(dst + k * m, src + k * m, n - k * m);
}

void byteungroup(const uint8_t *src, uint8_t *dst, size_t n, size_t k)
{
    size_t m = n / k;
    if (k == 4) {
        const uint8_t *s0 = src, *s1 = src + m, *s2 = src + 2 * m, *s3 = src + 3 * m;
        for (size_t i = 0; i < m; i++) {
            dst[4 * i] = s0[i]; dst[4 * i + 1] = s1[i];
            dst[4 * i + 2] = s2[i]; dst[4 * i + 3] = s3[i];
        }
    } else if (k == 2) {
        const uint8_t *s0 = src, *s1 = src + m;
        for (size_t i = 0; i < m; i++) {
            dst[2 * i] = s0[i]; dst[2 * i + 1] = s1[i];
        }
    } else {
        for (size_t b = 0; b < m; b += BLOCK) {
            size_t e = b + BLOCK < m ? b + BLOCK : m;
            for (size_t j = 0; j < k; j++)
                for (size_t i = b; i < e; i++)
                    dst[i * k + j] = src[j * m + i];
        }
    }
    memcpy(dst + k * m, src + k * m, n - k * m);
}
