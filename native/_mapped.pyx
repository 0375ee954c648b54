# cython: language_level=3
"""Cython driver of native/mapguard.c: read-only windows of a file, mapped
without copying its bytes, that raise no SIGBUS when the file shrinks."""
from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdint cimport uint64_t
from libc.string cimport strerror


cdef extern from "mapguard.h" nogil:
    int MG_SLOTS
    int mg_map(int fd, uint64_t offset, size_t length, int populate, void **addr, int *slot)
    int mg_faulted(int slot)
    void mg_unmap(void *addr, size_t length, int slot)


SLOTS = MG_SLOTS


cdef class Window:
    """Bytes [offset, offset + length) of an open file, as a read-only buffer.

    offset must be a multiple of mmap.ALLOCATIONGRANULARITY.  The mapping
    lives as long as the object and every view of it.  If the file shrinks
    while mapped, the bytes past its new end read as zeros and `faulted`
    becomes true: check it once done with the bytes.  OSError(EBUSY) when
    SLOTS windows are open already; other OSErrors are mmap's (ENODEV: the
    file system does not map files)."""
    cdef void *addr
    cdef size_t length
    cdef int slot

    def __cinit__(self, int fd, uint64_t offset, size_t length, bint populate=True):
        cdef int err
        self.addr = NULL
        self.length = length
        with nogil:
            err = mg_map(fd, offset, length, populate, &self.addr, &self.slot)
        if err:
            self.addr = NULL
            raise OSError(err, strerror(err).decode())

    @property
    def faulted(self) -> bool:
        """A page could not be read (the file is now shorter) and read as zeros."""
        return bool(mg_faulted(self.slot))

    def __len__(self):
        return self.length

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.addr, self.length, 1, flags)

    def __dealloc__(self):
        if self.addr != NULL:
            mg_unmap(self.addr, self.length, self.slot)
            self.addr = NULL
