#include "gearcdc.h"
#include "gear_table.h"

size_t cdc_cut_reference(const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)
{
    size_t limit = n < p->max_size ? n : p->max_size;
    size_t len = p->min_size > scanned + 1 ? p->min_size : scanned + 1;
    for (; len <= limit; len++) {
        uint64_t h = 0;
        for (size_t j = len - 64; j < len; j++)
            h = (h << 1) + GEAR[buf[j]];
        if (h < (len <= p->normal_size ? p->strict : p->loose))
            return len;
    }
    if (n >= p->max_size)
        return p->max_size;
    return eof ? n : 0;
}

/* Scan lengths [len, end] against one threshold; returns the cut length or 0.
 * h = 2h + g is one LEA per byte on x86-64, so the loop-carried chain is a
 * single cycle; the table load is off the chain. */
static inline size_t scan(const uint8_t *buf, size_t len, size_t end, uint64_t *hp, uint64_t thr)
{
    uint64_t h = *hp;
    size_t j = len - 1;                 /* index of the byte that ends length len */
    size_t stop = end;                  /* last length to test */
    while (j + 4 <= stop) {             /* 4 bytes per trip: fewer loop branches */
        h = (h << 1) + GEAR[buf[j]];     if (__builtin_expect(h < thr, 0)) return j + 1;
        h = (h << 1) + GEAR[buf[j + 1]]; if (__builtin_expect(h < thr, 0)) return j + 2;
        h = (h << 1) + GEAR[buf[j + 2]]; if (__builtin_expect(h < thr, 0)) return j + 3;
        h = (h << 1) + GEAR[buf[j + 3]]; if (__builtin_expect(h < thr, 0)) return j + 4;
        j += 4;
    }
    for (; j < stop; j++) {
        h = (h << 1) + GEAR[buf[j]];
        if (h < thr) return j + 1;
    }
    *hp = h;
    return 0;
}

size_t cdc_cut(const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)
{
    size_t limit = n < p->max_size ? n : p->max_size;
    size_t len = p->min_size > scanned + 1 ? p->min_size : scanned + 1;
    if (len <= limit) {
        uint64_t h = 0;
        for (size_t j = len - 64; j < len - 1; j++)   /* 63-byte warm-up */
            h = (h << 1) + GEAR[buf[j]];
        size_t cut;
        if (len <= p->normal_size) {
            size_t end = limit < p->normal_size ? limit : p->normal_size;
            if ((cut = scan(buf, len, end, &h, p->strict)))
                return cut;
            len = end + 1;
        }
        if (len <= limit && (cut = scan(buf, len, limit, &h, p->loose)))
            return cut;
    }
    if (n >= p->max_size)
        return p->max_size;
    return eof ? n : 0;
}
