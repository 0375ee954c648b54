# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython driver of native/bytegroup.c: byte (un)grouping without the GIL."""
from libc.stdint cimport uint8_t

cdef extern from "bytegroup.h" nogil:
    void bytegroup(const uint8_t *src, uint8_t *dst, size_t n, size_t k)
    void byteungroup(const uint8_t *src, uint8_t *dst, size_t n, size_t k)


# Below this, the work keeps the GIL: giving it up costs a thread that wants
# it back up to the interpreter's switch interval (5 ms) beside any thread
# running Python, for the ~3 us of grouping a codec probe's 32 KiB sample.
# Whole frames (0.06-0.1 ms a MiB) give it up: holding it for them made a
# model restore 12% slower (0.307 -> 0.345 s, 16 rotated runs), its other
# threads kept from their Python meanwhile.
DEF NOGIL_BYTES = 64 << 10


cdef object _output(size_t n, size_t k, out):
    if k < 1:
        raise ValueError("k must be >= 1")
    if out is None:
        return bytearray(n)
    if len(memoryview(out)) != n:
        raise ValueError("out must be as long as src")
    return out


def group(const uint8_t[::1] src, size_t k, out=None):
    """Byte k-grouping of src into a new bytearray (or `out`, of equal size)."""
    cdef size_t n = src.shape[0]
    res = _output(n, k, out)
    cdef uint8_t[::1] o = res
    if n >= NOGIL_BYTES:
        with nogil:
            bytegroup(&src[0], &o[0], n, k)
    elif n:
        bytegroup(&src[0], &o[0], n, k)
    return res


def ungroup(const uint8_t[::1] src, size_t k, out=None):
    """Inverse of group()."""
    cdef size_t n = src.shape[0]
    res = _output(n, k, out)
    cdef uint8_t[::1] o = res
    if n >= NOGIL_BYTES:
        with nogil:
            byteungroup(&src[0], &o[0], n, k)
    elif n:
        byteungroup(&src[0], &o[0], n, k)
    return res
