#include "gearcdc.h"
#include "gear_table.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(CDC_PORTABLE)
#define CDC_X86 1
#include <immintrin.h>
#endif

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

/* First index j in [from, to) whose hash h_j (of buf[j-63..j]) is below thr,
 * or `to`, given h = h_{from-1}.  One lane: h = 2h + g is one LEA per byte, so
 * the loop-carried chain is a single cycle; the table load is off the chain. */
static size_t scan_from(const uint8_t *buf, size_t from, size_t to, uint64_t thr, uint64_t h)
{
    size_t j = from;
    while (j + 4 <= to) {                              /* 4 bytes per trip: fewer loop branches */
        h = (h << 1) + GEAR[buf[j]];     if (__builtin_expect(h < thr, 0)) return j;
        h = (h << 1) + GEAR[buf[j + 1]]; if (__builtin_expect(h < thr, 0)) return j + 1;
        h = (h << 1) + GEAR[buf[j + 2]]; if (__builtin_expect(h < thr, 0)) return j + 2;
        h = (h << 1) + GEAR[buf[j + 3]]; if (__builtin_expect(h < thr, 0)) return j + 3;
        j += 4;
    }
    for (; j < to; j++) {
        h = (h << 1) + GEAR[buf[j]];
        if (h < thr) return j;
    }
    return to;
}

/* The same from a 63-byte warm-up; needs from >= 63.  An empty range (a
 * window the lanes covered whole) costs nothing. */
static size_t scan_range(const uint8_t *buf, size_t from, size_t to, uint64_t thr)
{
    if (from >= to)
        return to;
    uint64_t h = 0;
    for (size_t j = from - 63; j < from; j++)
        h = (h << 1) + GEAR[buf[j]];
    return scan_from(buf, from, to, thr, h);
}

/* Set a hit bit on a branch the compiler may not turn into cmov/setcc: hits
 * are rare and a predicted branch costs less than a flag chain per byte. */
#define RARE_OR(m, bit) do { (m) |= (bit); __asm__ volatile(""); } while (0)

/* A lane kernel hashes `lanes` segments of seg bytes (seg a multiple of 64) at
 * once, lane i covering indices [start + i*seg, start + (i+1)*seg), in 64-byte
 * blocks, every lane warmed up on the 64 bytes before (start >= 64).  It stops
 * after the first block k where a lane has an index with h < thr and returns
 * the mask of those lanes (every lane has then been checked through the whole
 * block), or 0.  hs[i] is then lane i's hash just before that block (of index
 * start + i*seg + k - 1), so that the block can be searched again without a
 * warm-up; hs has room for MAX_LANES. */
typedef uint64_t (*lane_fn)(const uint8_t *buf, size_t start, size_t seg, uint64_t thr, size_t *block, uint64_t *hs);

typedef struct {
    const char *name;
    unsigned lanes;      /* 0: the one-lane scan only */
    lane_fn run;
} kernel;

/* Portable: four scalar lanes interleaved, so four independent chains fill
 * the integer pipes instead of one. */
static uint64_t lanes4(const uint8_t *buf, size_t start, size_t seg, uint64_t thr, size_t *block, uint64_t *hs)
{
    const uint8_t *p0 = buf + start, *p1 = p0 + seg, *p2 = p1 + seg, *p3 = p2 + seg;
    uint64_t h0 = 0, h1 = 0, h2 = 0, h3 = 0;
    for (long k = -64; k < (long)seg; k += 64) {
        uint64_t m = 0, g0 = h0, g1 = h1, g2 = h2, g3 = h3;
        for (long j = k; j < k + 64; j++) {
            h0 = (h0 << 1) + GEAR[p0[j]]; if (__builtin_expect(h0 < thr, 0)) RARE_OR(m, 1);
            h1 = (h1 << 1) + GEAR[p1[j]]; if (__builtin_expect(h1 < thr, 0)) RARE_OR(m, 2);
            h2 = (h2 << 1) + GEAR[p2[j]]; if (__builtin_expect(h2 < thr, 0)) RARE_OR(m, 4);
            h3 = (h3 << 1) + GEAR[p3[j]]; if (__builtin_expect(h3 < thr, 0)) RARE_OR(m, 8);
        }
        if (__builtin_expect(m != 0, 0) && k >= 0) {
            *block = (size_t)k;
            hs[0] = g0; hs[1] = g1; hs[2] = g2; hs[3] = g3;
            return m;
        }
    }
    return 0;
}

#ifdef CDC_X86
/* AVX-512 VBMI: eight lanes in the qwords of a zmm, plus two scalar lanes
 * that run on the integer pipes the vector code leaves idle.  G lookups are
 * byte-plane table lookups (vpermi2b over 128 entries, twice, selected by bit
 * 7), turned back into qwords by a three-level unpack transpose. */
#define VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))

static uint8_t PLANES[8][256] __attribute__((aligned(64)));  /* byte p of GEAR[x] */
static uint8_t YPERM[64] __attribute__((aligned(64)));

static void vbmi_init(void)
{
    for (int p = 0; p < 8; p++)
        for (int x = 0; x < 256; x++)
            PLANES[p][x] = (uint8_t)(GEAR[x] >> (8 * p));
    /* Input qword q = 2r+e byte m = 2a+t takes byte 4e+a of lane 2r+t, so that
     * after the unpack transpose output vector 4e+a holds, in qword s, the G of
     * byte 4e+a of lane s: eight vectors for eight consecutive bytes. */
    for (int q = 0; q < 8; q++)
        for (int m = 0; m < 8; m++) {
            int r = q >> 1, e = q & 1, t = m & 1, a = m >> 1;
            YPERM[q * 8 + m] = (uint8_t)((2 * r + t) * 8 + 4 * e + a);
        }
}

/* Y0: qword s = the next 8 bytes of lane s.  Advances h over them and returns
 * the lane-wise minimum of the 8 hashes. */
VBMI static inline __m512i vbmi_step(__m512i Y0, __m512i yperm, __m512i *hp, const __m512i *T)
{
    __m512i Y = _mm512_permutexvar_epi8(yperm, Y0);
    __mmask64 hi = _mm512_movepi8_mask(Y), lo = ~hi;
#define LUT(p) _mm512_mask2_permutex2var_epi8(_mm512_load_si512(T + 4 * (p) + 2),              \
        _mm512_mask2_permutex2var_epi8(_mm512_load_si512(T + 4 * (p)), Y, lo,                  \
                                       _mm512_load_si512(T + 4 * (p) + 1)),                   \
        hi, _mm512_load_si512(T + 4 * (p) + 3))
    __m512i Z0 = LUT(0), Z1 = LUT(1), Z2 = LUT(2), Z3 = LUT(3), Z4 = LUT(4), Z5 = LUT(5), Z6 = LUT(6), Z7 = LUT(7);
#undef LUT
    __m512i A00 = _mm512_unpacklo_epi8(Z0, Z1), A01 = _mm512_unpackhi_epi8(Z0, Z1);
    __m512i A10 = _mm512_unpacklo_epi8(Z2, Z3), A11 = _mm512_unpackhi_epi8(Z2, Z3);
    __m512i A20 = _mm512_unpacklo_epi8(Z4, Z5), A21 = _mm512_unpackhi_epi8(Z4, Z5);
    __m512i A30 = _mm512_unpacklo_epi8(Z6, Z7), A31 = _mm512_unpackhi_epi8(Z6, Z7);
    __m512i h = *hp, mn = _mm512_set1_epi64(-1);
#define HALF(e) {                                                                                   \
        __m512i B0l = _mm512_unpacklo_epi16(A0##e, A1##e), B0h = _mm512_unpackhi_epi16(A0##e, A1##e); \
        __m512i B1l = _mm512_unpacklo_epi16(A2##e, A3##e), B1h = _mm512_unpackhi_epi16(A2##e, A3##e); \
        h = _mm512_add_epi64(_mm512_add_epi64(h, h), _mm512_unpacklo_epi32(B0l, B1l)); mn = _mm512_min_epu64(mn, h); \
        h = _mm512_add_epi64(_mm512_add_epi64(h, h), _mm512_unpackhi_epi32(B0l, B1l)); mn = _mm512_min_epu64(mn, h); \
        h = _mm512_add_epi64(_mm512_add_epi64(h, h), _mm512_unpacklo_epi32(B0h, B1h)); mn = _mm512_min_epu64(mn, h); \
        h = _mm512_add_epi64(_mm512_add_epi64(h, h), _mm512_unpackhi_epi32(B0h, B1h)); mn = _mm512_min_epu64(mn, h); }
    HALF(0) HALF(1)
#undef HALF
    *hp = h;
    return mn;
}

#define SLANE(i, q) { s##i = (s##i << 1) + GEAR[q##i[j]]; if (__builtin_expect(s##i < thr, 0)) RARE_OR(sm, 1u << (8 + i)); }

VBMI static uint64_t avx512vbmi(const uint8_t *buf, size_t start, size_t seg, uint64_t thr, size_t *block, uint64_t *hs)
{
    const uint8_t *base = buf + start;
    const uint8_t *q0 = base + 8 * seg, *q1 = base + 9 * seg;
    const __m512i *T = (const __m512i *)PLANES;
    const __m512i yperm = _mm512_load_si512(YPERM), t = _mm512_set1_epi64((long long)thr);
    __m512i h = _mm512_setzero_si512();
    uint64_t s0 = 0, s1 = 0;
    for (long k = -64; k < (long)seg; k += 64) {
        /* 8x8 qword transpose: d_j qword s = qword j of lane s's 64-byte block */
        __m512i L0 = _mm512_loadu_si512(base + k), L1 = _mm512_loadu_si512(base + seg + k);
        __m512i L2 = _mm512_loadu_si512(base + 2 * seg + k), L3 = _mm512_loadu_si512(base + 3 * seg + k);
        __m512i L4 = _mm512_loadu_si512(base + 4 * seg + k), L5 = _mm512_loadu_si512(base + 5 * seg + k);
        __m512i L6 = _mm512_loadu_si512(base + 6 * seg + k), L7 = _mm512_loadu_si512(base + 7 * seg + k);
        __m512i a0 = _mm512_unpacklo_epi64(L0, L1), a1 = _mm512_unpackhi_epi64(L0, L1);
        __m512i a2 = _mm512_unpacklo_epi64(L2, L3), a3 = _mm512_unpackhi_epi64(L2, L3);
        __m512i a4 = _mm512_unpacklo_epi64(L4, L5), a5 = _mm512_unpackhi_epi64(L4, L5);
        __m512i a6 = _mm512_unpacklo_epi64(L6, L7), a7 = _mm512_unpackhi_epi64(L6, L7);
        __m512i c0 = _mm512_shuffle_i64x2(a0, a2, 0x88), c1 = _mm512_shuffle_i64x2(a1, a3, 0x88);
        __m512i c2 = _mm512_shuffle_i64x2(a0, a2, 0xdd), c3 = _mm512_shuffle_i64x2(a1, a3, 0xdd);
        __m512i c4 = _mm512_shuffle_i64x2(a4, a6, 0x88), c5 = _mm512_shuffle_i64x2(a5, a7, 0x88);
        __m512i c6 = _mm512_shuffle_i64x2(a4, a6, 0xdd), c7 = _mm512_shuffle_i64x2(a5, a7, 0xdd);
        __m512i d0 = _mm512_shuffle_i64x2(c0, c4, 0x88), d1 = _mm512_shuffle_i64x2(c1, c5, 0x88);
        __m512i d2 = _mm512_shuffle_i64x2(c2, c6, 0x88), d3 = _mm512_shuffle_i64x2(c3, c7, 0x88);
        __m512i d4 = _mm512_shuffle_i64x2(c0, c4, 0xdd), d5 = _mm512_shuffle_i64x2(c1, c5, 0xdd);
        __m512i d6 = _mm512_shuffle_i64x2(c2, c6, 0xdd), d7 = _mm512_shuffle_i64x2(c3, c7, 0xdd);
        unsigned sm = 0;
        long j;
        const __m512i h_before = h;
        const uint64_t s0_before = s0, s1_before = s1;
        __m512i mn = vbmi_step(d0, yperm, &h, T);
        for (j = k; j < k + 16; j++) { SLANE(0, q) SLANE(1, q) }
        mn = _mm512_min_epu64(mn, vbmi_step(d1, yperm, &h, T));
        mn = _mm512_min_epu64(mn, vbmi_step(d2, yperm, &h, T));
        for (; j < k + 32; j++) { SLANE(0, q) SLANE(1, q) }
        mn = _mm512_min_epu64(mn, vbmi_step(d3, yperm, &h, T));
        mn = _mm512_min_epu64(mn, vbmi_step(d4, yperm, &h, T));
        for (; j < k + 48; j++) { SLANE(0, q) SLANE(1, q) }
        mn = _mm512_min_epu64(mn, vbmi_step(d5, yperm, &h, T));
        mn = _mm512_min_epu64(mn, vbmi_step(d6, yperm, &h, T));
        mn = _mm512_min_epu64(mn, vbmi_step(d7, yperm, &h, T));
        for (; j < k + 64; j++) { SLANE(0, q) SLANE(1, q) }
        uint64_t m = (uint64_t)_mm512_cmplt_epu64_mask(mn, t) | sm;
        if (__builtin_expect(m != 0, 0) && k >= 0) {
            *block = (size_t)k;
            _mm512_storeu_si512(hs, h_before);
            hs[8] = s0_before;
            hs[9] = s1_before;
            return m;
        }
    }
    return 0;
}
#endif

static const kernel KERNELS[CDC_KERNEL_COUNT] = {
    {"scalar", 0, 0},
    {"lanes4", 4, lanes4},
#ifdef CDC_X86
    {"avx512vbmi", 10, avx512vbmi},
#else
    {"avx512vbmi", 0, 0},
#endif
};

#define MIN_SEG 256
#define MAX_LANES 16     /* at least every kernel's lanes (hs in find_first) */

/* Window: how far one lane-parallel pass reaches.  A hit ends the pass, and
 * what the lanes past it hashed is wasted, so the window is a fraction (in
 * sixteenths) of the expected distance between hits (2^64 / thr), cut to a
 * whole number of 64-byte blocks per lane so that no tail is left for the
 * scalar scan.  The fractions in cut_with were chosen by counting the bytes
 * each kernel hashes (tests/test_chunking.py checks the cuts, not this). */
static size_t window_for(const kernel *K, uint64_t thr, unsigned sixteenths)
{
    uint64_t expect = thr ? (~(uint64_t)0 / thr) : ~(uint64_t)0;
    if (expect > (1u << 20))
        expect = 1u << 20;
    size_t q = (size_t)(K->lanes ? K->lanes : 1) * 64;
    size_t w = (size_t)(expect / 16 * sixteenths);
    w -= w % q;
    return w < q ? q : w;
}

static size_t find_first(const kernel *K, const uint8_t *buf, size_t from, size_t to, uint64_t thr, size_t window)
{
    if (!K->lanes)
        return scan_range(buf, from, to, thr);
    if (from < 64) {                       /* lanes warm up on the 64 bytes before */
        size_t e = to < 64 ? to : 64;
        size_t r = scan_range(buf, from, e, thr);
        if (r < e)
            return r;
        from = e;
    }
    while (from < to) {
        size_t w = to - from;
        if (w > window)
            w = window;
        size_t seg = (w / K->lanes) & ~(size_t)63;
        if (seg < MIN_SEG) {
            size_t r = scan_range(buf, from, from + w, thr);
            if (r < from + w)
                return r;
            from += w;
            continue;
        }
        size_t k;
        uint64_t hs[MAX_LANES];
        uint64_t m = K->run(buf, from, seg, thr, &k, hs);
        if (m) {
            /* Lane l, the lowest with a hit in block k, has its first hit
             * there: found again from the lane's hash before the block.  The
             * lanes below it have none before k + 64, and what is left of
             * each is searched in order, each with all the lanes: carrying
             * them on in step with the rest hashed ten lanes for the work of
             * one to nine (bytes hashed per byte chunked: 0.94 -> 0.80). */
            unsigned l = (unsigned)__builtin_ctzll(m);
            size_t a = from + l * seg + k;
            size_t best = scan_from(buf, a, a + 64, thr, hs[l]);
            for (unsigned i = 0; i < l; i++) {
                size_t s0 = from + i * seg + k + 64, e0 = from + (i + 1) * seg;
                if (s0 < e0) {
                    size_t r = find_first(K, buf, s0, e0, thr, window);
                    if (r < e0)
                        return r;
                }
            }
            return best;
        }
        size_t tail = from + K->lanes * seg;
        size_t r = scan_range(buf, tail, from + w, thr);
        if (r < from + w)
            return r;
        from += w;
    }
    return to;
}

/* Windows in sixteenths of the expected distance between hits: for the
 * default parameters 32,000 bytes (strict) and 3,840 (loose).  Bytes hashed
 * per byte chunked, model corpus: 0.80 vector + 0.04 scalar, against 0.93 +
 * 0.013 with whole expected distances and lanes carried on after a hit; any
 * of 2-4/16 and 6-12/16 is within 1% of this by that count. */
#define STRICT_WINDOW 4
#define LOOSE_WINDOW 8

static size_t cut_with(const kernel *K, const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)
{
    size_t limit = n < p->max_size ? n : p->max_size;
    size_t len = p->min_size > scanned + 1 ? p->min_size : scanned + 1;
    if (len <= limit) {
        /* index j = len - 1 ends the chunk of length len */
        if (len <= p->normal_size) {
            size_t end = limit < p->normal_size ? limit : p->normal_size;
            size_t j = find_first(K, buf, len - 1, end, p->strict, window_for(K, p->strict, STRICT_WINDOW));
            if (j < end)
                return j + 1;
            len = end + 1;
        }
        if (len <= limit) {
            size_t j = find_first(K, buf, len - 1, limit, p->loose, window_for(K, p->loose, LOOSE_WINDOW));
            if (j < limit)
                return j + 1;
        }
    }
    if (n >= p->max_size)
        return p->max_size;
    return eof ? n : 0;
}

int cdc_kernel_available(int k)
{
    if (k < 0 || k >= CDC_KERNEL_COUNT)
        return 0;
    if (k == CDC_KERNEL_AVX512VBMI) {
#ifdef CDC_X86
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vbmi");
#else
        return 0;
#endif
    }
    return 1;
}

const char *cdc_kernel_name(int k)
{
    return k >= 0 && k < CDC_KERNEL_COUNT ? KERNELS[k].name : 0;
}

static int default_kernel = -1;

int cdc_kernel_default(void)
{
    if (default_kernel < 0) {
#ifdef CDC_X86
        vbmi_init();
#endif
        /* lanes4 hashes faster than scalar on long ranges but loses to it on
         * whole chunks here (warm-ups, hit resolution): scalar is the fallback. */
        default_kernel = cdc_kernel_available(CDC_KERNEL_AVX512VBMI) ? CDC_KERNEL_AVX512VBMI : CDC_KERNEL_SCALAR;
    }
    return default_kernel;
}

size_t cdc_cut_kernel(int k, const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)
{
    cdc_kernel_default();
    return cut_with(&KERNELS[k], p, buf, n, scanned, eof);
}

size_t cdc_cut(const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)
{
    return cut_with(&KERNELS[cdc_kernel_default()], p, buf, n, scanned, eof);
}
