# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython driver of the Gear CDC kernel (native/gearcdc.c).

Buffers in, numpy offset arrays out: one array of end offsets per call instead
of a Python object per chunk.  The scan runs without the GIL, so threads of a
pool chunk different blocks at once.
"""
import numpy as np
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset

cdef extern from "gearcdc.h" nogil:
    ctypedef struct cdc_params:
        size_t min_size
        size_t normal_size
        size_t max_size
        uint64_t strict
        uint64_t loose
    size_t cdc_cut_reference(const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)
    size_t cdc_cut_kernel(int kernel, const cdc_params *p, const uint8_t *buf, size_t n, size_t scanned, int eof)
    int cdc_kernel_available(int kernel)
    const char *cdc_kernel_name(int kernel)
    int cdc_kernel_default()
    int CDC_KERNEL_COUNT

cdef uint8_t _empty[1]
cdef int _default = cdc_kernel_default()   # detects the CPU, fills the kernels' tables


def kernels():
    """Names of the cut kernels this CPU can run, slowest first; all cut alike."""
    return [cdc_kernel_name(k).decode() for k in range(CDC_KERNEL_COUNT) if cdc_kernel_available(k)]


def default_kernel():
    """The kernel find_ends uses unless told otherwise."""
    return cdc_kernel_name(_default).decode()


cdef int _kernel_id(kernel) except -2:
    if kernel is None:
        return -1
    for k in range(CDC_KERNEL_COUNT):
        if cdc_kernel_name(k).decode() == kernel:
            if not cdc_kernel_available(k):
                raise ValueError(f"kernel {kernel!r} is not available on this CPU")
            return k
    raise ValueError(f"unknown kernel {kernel!r}")


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


def byte_counts(const uint8_t[::1] buf):
    """How often each byte value occurs in buf: a (256,) int64 array.  Four
    interleaved tables, without the GIL (numpy's bincount widened every byte
    to an int64 first: 2 MB of fresh memory for a 256 KiB sample)."""
    out = np.zeros(256, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef uint64_t t[4][256]
    cdef size_t n = buf.shape[0], i = 0, j
    memset(t, 0, sizeof(t))
    with nogil:
        while i + 4 <= n:
            t[0][buf[i]] += 1
            t[1][buf[i + 1]] += 1
            t[2][buf[i + 2]] += 1
            t[3][buf[i + 3]] += 1
            i += 4
        while i < n:
            t[0][buf[i]] += 1
            i += 1
        for j in range(256):
            o[j] = t[0][j] + t[1][j] + t[2][j] + t[3][j]
    return out


def find_ends(Params params, const uint8_t[::1] buf, bint eof, size_t scanned=0, bint reference=False,
              kernel=None):
    """Cut buf into chunks; return (ends, scanned).

    ends: uint64 array of chunk end offsets in buf.  Bytes after the last end
    are an unfinished chunk (only when eof is false); pass them again, followed
    by more input, with the returned `scanned` so they are not rescanned.
    reference: use the plain reference kernel; kernel: a name from kernels()
    (default: the fastest available).  Every kernel cuts identically.
    """
    cdef int kid = _kernel_id(kernel)
    if kid < 0:
        kid = _default
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
                cut = cdc_cut_kernel(kid, &params.p, p + start, n - start, scanned, eof)
            if cut == 0:
                scanned = n - start
                break
            start += cut
            scanned = 0
            o[count] = start
            count += 1
    return out[:count], scanned


def find_ends_many(Params params, list bufs):
    """chunk_ends of each of many whole buffers (bytes objects), with the
    GIL released once for all of them: (the ends of every buffer in order,
    each an offset into its own buffer, uint64; per buffer its number of
    chunks, int64).  A tree's small files were a call each, and each call
    gave the GIL up and waited to get it back."""
    cdef Py_ssize_t n = len(bufs), i
    cdef size_t total = 0, count = 0, start, cut, size, k
    for b in bufs:
        if type(b) is not bytes:
            raise TypeError(f"find_ends_many takes bytes, not {type(b).__name__}")
        total += <size_t>PyBytes_GET_SIZE(b) // params.p.min_size + 2
    cdef const uint8_t **ptrs = <const uint8_t **>malloc(max(n, 1) * sizeof(uint8_t *))
    cdef size_t *sizes = <size_t *>malloc(max(n, 1) * sizeof(size_t))
    if ptrs == NULL or sizes == NULL:
        free(ptrs); free(sizes)
        raise MemoryError()
    out = np.empty(total, dtype=np.uint64)
    counts = np.empty(n, dtype=np.int64)
    cdef uint64_t[::1] o = out
    cdef int64_t[::1] c = counts
    try:
        for i in range(n):
            b = bufs[i]
            ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(b)
            sizes[i] = PyBytes_GET_SIZE(b)
        with nogil:
            for i in range(n):
                size = sizes[i]
                start = 0
                k = 0
                while start < size:
                    cut = cdc_cut_kernel(_default, &params.p, ptrs[i] + start, size - start, 0, 1)
                    if cut == 0:                 # cannot happen at eof; keep the bytes whole
                        cut = size - start
                    start += cut
                    o[count] = start
                    count += 1
                    k += 1
                c[i] = k
    finally:
        free(ptrs)
        free(sizes)
    return out[:count], counts
