# cython: language_level=3
"""Cython driver of native/mapguard.c: read-only windows of a file, mapped
without copying its bytes, that raise no SIGBUS when the file shrinks; and
read_files, many small files read with the GIL released twice in all."""
import os

from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EINTR, EISDIR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport strerror
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, open as c_open
from posix.stat cimport S_ISDIR, fstat, struct_stat
from posix.unistd cimport close, read


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


def read_files(paths, size_t limit=<size_t>-1 >> 1):
    """The whole contents of each file (bytes), read without the GIL: one
    release to open and stat them all, one to read them all.  A thread that
    reads small files one syscall at a time takes the GIL back after each,
    and beside busy threads each time was a wait: a batch of 64 refs took
    4-14 ms in a re-ingest, 1.3 ms alone.  Per path, in order: its bytes;
    False if it holds more than `limit` bytes, or grew while it was read
    (read it the usual way); or the OSError that opening, stat or reading
    raised (IsADirectoryError for a directory)."""
    names = [os.fsencode(p) for p in paths]
    cdef Py_ssize_t n = len(names), i
    cdef size_t m = max(n, 1)
    cdef int *fds = <int *>malloc(m * sizeof(int))
    cdef int *errs = <int *>malloc(m * sizeof(int))
    cdef int *grew = <int *>malloc(m * sizeof(int))
    cdef size_t *sizes = <size_t *>malloc(m * sizeof(size_t))
    cdef size_t *got = <size_t *>malloc(m * sizeof(size_t))
    cdef char **bufs = <char **>malloc(m * sizeof(char *))
    cdef const char **cnames = <const char **>malloc(m * sizeof(char *))
    cdef struct_stat st
    cdef ssize_t r
    cdef char extra[1]
    if not (fds and errs and grew and sizes and got and bufs and cnames):
        free(fds); free(errs); free(grew); free(sizes); free(got); free(bufs); free(cnames)
        raise MemoryError()
    for i in range(n):
        cnames[i] = names[i]
        fds[i] = -1
        bufs[i] = NULL
        errs[i] = grew[i] = 0
        sizes[i] = got[i] = 0
    out = [None] * n
    try:
        with nogil:
            for i in range(n):
                fds[i] = c_open(cnames[i], O_RDONLY | O_CLOEXEC)
                if fds[i] < 0:
                    errs[i] = errno
                elif fstat(fds[i], &st) != 0:
                    errs[i] = errno
                elif S_ISDIR(st.st_mode):
                    errs[i] = EISDIR
                elif <size_t>st.st_size > limit:
                    grew[i] = 1                   # too large: the caller reads it
                else:
                    sizes[i] = st.st_size
        for i in range(n):
            if fds[i] >= 0 and not errs[i] and not grew[i]:
                b = PyBytes_FromStringAndSize(NULL, sizes[i])
                out[i] = b
                bufs[i] = PyBytes_AS_STRING(b)
        with nogil:
            for i in range(n):
                if bufs[i] != NULL:
                    while got[i] < sizes[i]:
                        r = read(fds[i], bufs[i] + got[i], sizes[i] - got[i])
                        if r < 0:
                            if errno == EINTR:
                                continue
                            errs[i] = errno
                            break
                        if r == 0:
                            break                 # shorter than it was: what it holds now
                        got[i] += r
                    if not errs[i] and got[i] == sizes[i]:
                        # Anything past the size it had means it grew.
                        while True:
                            r = read(fds[i], extra, 1)
                            if r < 0 and errno == EINTR:
                                continue
                            if r < 0:
                                errs[i] = errno
                            elif r > 0:
                                grew[i] = 1
                            break
                if fds[i] >= 0:
                    close(fds[i])
                    fds[i] = -1
        for i in range(n):
            if errs[i]:
                out[i] = OSError(errs[i], strerror(errs[i]).decode(), os.fsdecode(names[i]))
            elif grew[i]:
                out[i] = False
            elif got[i] < sizes[i]:
                out[i] = out[i][:got[i]]
        return out
    finally:
        for i in range(n):
            if fds[i] >= 0:
                close(fds[i])
        free(fds); free(errs); free(grew); free(sizes); free(got); free(bufs); free(cnames)
