# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython driver of native/bytegroup.c: byte (un)grouping without the GIL."""
from libc.stdint cimport uint8_t

cdef extern from "bytegroup.h" nogil:
    void bytegroup(const uint8_t *src, uint8_t *dst, size_t n, size_t k)
    void byteungroup(const uint8_t *src, uint8_t *dst, size_t n, size_t k)


def group(const uint8_t[::1] src, size_t k, uint8_t[::1] out=None):
    """Byte k-grouping of src into a new bytearray (or `out`, of equal size)."""
    cdef size_t n = src.shape[0]
    if k < 1:
        raise ValueError("k must be >= 1")
    if out is None:
        res = bytearray(n)
        out = res
    elif out.shape[0] != n:
        raise ValueError("out must be as long as src")
    else:
        res = out
    if n:
        with nogil:
            bytegroup(&src[0], &out[0], n, k)
    return res


def ungroup(const uint8_t[::1] src, size_t k, uint8_t[::1] out=None):
    """Inverse of group()."""
    cdef size_t n = src.shape[0]
    if k < 1:
        raise ValueError("k must be >= 1")
    if out is None:
        res = bytearray(n)
        out = res
    elif out.shape[0] != n:
        raise ValueError("out must be as long as src")
    else:
        res = out
    if n:
        with nogil:
            byteungroup(&src[0], &out[0], n, k)
    return res
