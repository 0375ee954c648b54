# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython driver of the Gear CDC kernel (native/gearcdc.c).

Buffers in, numpy offset arrays out: one array of end offsets per call instead
of a Python object per chunk.  The scan runs without the GIL, so threads of a
pool chunk different blocks at once.
"""
import numpy as np
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

cdef extern from "gearcdc.h" nogil:
    ctypedef struct cdc_params:
        size_t min_size
        size_t normal_size
        size_t max_size
        uint64_t strict
        uint64_t loose
    size_t cdc_cut(const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)
    size_t cdc_cut_reference(const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)

cdef uint8_t _empty[1]


cdef class Params:
    """Chunking parameters; see ingest.chunking.ChunkParams for the meaning."""
    cdef cdc_params p

    def __cinit__(self, size_t min_size, size_t normal_size, size_t max_size,
                  uint64_t strict, uint64_t loose):
        if min_size < 64:
            raise ValueError("min_size must be at least 64 bytes")
        if not (min_size <= normal_size <= max_size):
            raise ValueError("need min_size <= normal_size <= max_size")
        self.p.min_size = min_size
        self.p.normal_size = normal_size
        self.p.max_size = max_size
        self.p.strict = strict
        self.p.loose = loose

    @property
    def max_size(self):
        return self.p.max_size

    @property
    def min_size(self):
        return self.p.min_size


def find_ends(Params params, const uint8_t[::1] buf, bint eof, size_t scanned=0, bint reference=False):
    """Cut buf into chunks; return (ends, scanned).

    ends: uint64 array of chunk end offsets in buf.  Bytes after the last end
    are an unfinished chunk (only when eof is false); pass them again, followed
    by more input, with the returned `scanned` so they are not rescanned.
    """
    cdef size_t n = buf.shape[0]
    cdef const uint8_t *p = &buf[0] if n else _empty
    cdef size_t cap = n // params.p.min_size + 2
    out = np.empty(cap, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    cdef size_t count = 0, start = 0, cut
    with nogil:
        while start < n:
            if reference:
                cut = cdc_cut_reference(&params.p, p + start, n - start, scanned, eof)
            else:
                cut = cdc_cut(&params.p, p + start, n - start, scanned, eof)
            if cut == 0:
                scanned = n - start
                break
            start += cut
            scanned = 0
            o[count] = start
            count += 1
    return out[:count], scanned
