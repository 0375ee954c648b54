/* Content-defined chunking with a Gear hash and FastCDC-style normalized cutting.
 *
 * The hash at byte j is h_j = sum_{k=0..63} GEAR[b_{j-k}] << k (mod 2^64): it
 * depends only on the 64 bytes ending at j, never on where a scan started, so
 * a cut can be found from any 64-byte warm-up and every kernel, any block
 * split and any number of threads give the same cuts.  A chunk of length L
 * ends after byte L-1 when h_{L-1} < threshold, with a strict threshold below
 * the normal size and a loose one above it (normalized chunking), never
 * shorter than min_size (unless at end of input) nor longer than max_size.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t min_size;     /* >= 64 */
    size_t normal_size;  /* strict threshold applies to lengths <= normal_size */
    size_t max_size;
    uint64_t strict;     /* cut when h < strict   (lengths in [min, normal]) */
    uint64_t loose;      /* cut when h < loose    (lengths in (normal, max]) */
} cdc_params;

/* Length of the chunk that starts at buf[0], given n available bytes of which
 * the first `scanned` were already scanned without a cut (0 if none).
 * Returns 0 when no cut is found and more input is needed; when eof is set
 * the chunk ends at n at the latest. */
size_t cdc_cut(const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof);

/* Kernels: the same cuts, computed differently.  scalar: one hash chain;
 * lanes4: four chains over four segments of the scanned range (portable);
 * avx512vbmi: eight lanes in a zmm plus two scalar ones (x86-64 with
 * AVX-512 F/BW/VBMI, detected at run time).  cdc_cut uses avx512vbmi where
 * available, else scalar (cdc_kernel_default). */
enum { CDC_KERNEL_SCALAR = 0, CDC_KERNEL_LANES4 = 1, CDC_KERNEL_AVX512VBMI = 2, CDC_KERNEL_COUNT = 3 };
int cdc_kernel_available(int kernel);
const char *cdc_kernel_name(int kernel);
int cdc_kernel_default(void);   /* also initialises the kernels' tables: call once before cdc_cut_kernel */
size_t cdc_cut_kernel(int kernel, const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof);

/* Same cut, plain and obviously right: the reference every faster kernel is
 * tested against. */
size_t cdc_cut_reference(const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof);
