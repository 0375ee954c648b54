# cython: language_level=3
"""Cython driver of native/mapguard.c: read-only windows of a file, mapped
without copying its bytes, that raise no SIGBUS when the file shrinks; and
batches of small-file I/O with the GIL released once a step (read_files,
write_new_files, write_files, place_files, remove_files): a thread making a few
syscalls per file gives up the GIL at each, and beside busy threads each
time is a wait to get it back."""
import os

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EINTR, EISDIR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport strerror
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_EXCL, O_RDONLY, O_TRUNC, O_WRONLY, open as c_open
from posix.stat cimport S_ISDIR, fstat, stat, struct_stat
from posix.unistd cimport close, link, read, unlink, write

cdef extern from "stdio.h" nogil:
    int rename(const char *old, const char *new)


cdef extern from "Python.h":
    object PyUnicode_DecodeFSDefault(const char *s)


cdef extern from "listdir.h" nogil:
    enum:
        LD_FILE
        LD_DIR
    ctypedef struct ld_entry:
        char *name
        uint64_t size
        int kind
    ctypedef struct ld_listing:
        ld_entry *entries
        size_t n
    int ld_list(const char *path, ld_listing *out)
    void ld_free(ld_listing *listing)


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


READ_GROUP = 64        # files read_files holds open at once (a tree batch's)


def read_files(paths, size_t limit=<size_t>-1 >> 1):
    """The whole contents of each file (bytes), read without the GIL: for
    each group of READ_GROUP files, one release to open and stat them, one
    to read them.  A thread that reads small files one syscall at a time
    takes the GIL back after each, and beside busy threads each time was a
    wait: a batch of 64 refs took 4-14 ms in a re-ingest, 1.3 ms alone.
    Per path, in order: its bytes; False if it holds more than `limit`
    bytes, or grew while it was read (read it the usual way); or the
    OSError that opening, stat or reading raised (IsADirectoryError for a
    directory)."""
    names = [os.fsencode(p) for p in paths]
    out = []
    for g in range(0, len(names), READ_GROUP):
        out += _read_group(names[g:g + READ_GROUP], limit)
    return out


def _read_group(list names, size_t limit):
    cdef Py_ssize_t n = len(names), i
    cdef size_t m = max(n, 1)
    cdef int *fds = <int *>malloc(m * sizeof(int))
    cdef int *errs = <int *>malloc(m * sizeof(int))
    cdef int *grew = <int *>malloc(m * sizeof(int))
    cdef size_t *sizes = <size_t *>malloc(m * sizeof(size_t))
    cdef size_t *got = <size_t *>malloc(m * sizeof(size_t))
    cdef char **bufs = <char **>malloc(m * sizeof(char *))
    cdef const char **cnames = _c_names(names)
    cdef struct_stat st
    cdef ssize_t r
    cdef char extra[1]
    if not (fds and errs and grew and sizes and got and bufs):
        free(fds); free(errs); free(grew); free(sizes); free(got); free(bufs); free(cnames)
        raise MemoryError()
    for i in range(n):
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


cdef const char **_c_names(list names) except NULL:
    cdef const char **out = <const char **>malloc(max(len(names), 1) * sizeof(char *))
    if out == NULL:
        raise MemoryError()
    for i in range(len(names)):
        out[i] = names[i]
    return out


cdef int _write_all(int fd, const char *buf, size_t size) noexcept nogil:
    """Write all of buf to fd; 0 or the errno that stopped it."""
    cdef size_t done = 0
    cdef ssize_t r
    while done < size:
        r = write(fd, buf + done, size - done)
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        done += r
    return 0


def write_new_files(paths, datas):
    """Create each path (it must not exist: O_EXCL, mode 0o644) and write
    its bytes (a bytes object each), without the GIL.  Per file, in order,
    0 or the errno that failed it; a file that failed half way is left for
    the caller to remove.  Not synced: the caller syncs (syncfs)."""
    datas = list(datas)
    for d in datas:
        if type(d) is not bytes:
            raise TypeError(f"write_new_files takes bytes, not {type(d).__name__}")
    return _write_batch(paths, [[d] for d in datas], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)


def write_files(paths, contents):
    """Create or truncate each path (mode 0o666 less the umask, as open()
    makes it) and write its contents, a list of bytes-like objects written
    in order, all without the GIL: a restore wrote each small file with an
    open, a write per block, a close and a rename, each giving up the GIL.
    Per file, in order, 0 or the errno that failed it; a file that failed
    half way is left for the caller to remove.  Not synced."""
    return _write_batch(paths, contents, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)


cdef list _write_batch(paths, contents, int flags, int mode):
    """Open each path with `flags` and `mode` and write its parts, in one
    release of the GIL; per file 0 or an errno."""
    names = [os.fsencode(p) for p in paths]
    contents = [list(c) for c in contents]
    cdef Py_ssize_t n = len(names), i, j, k, total = 0
    if len(contents) != n:
        raise ValueError(f"{len(contents)} contents for {n} paths")
    for c in contents:
        total += len(c)
    cdef const char **cn = _c_names(names)
    cdef Py_buffer *views = <Py_buffer *>malloc(max(total, 1) * sizeof(Py_buffer))
    cdef Py_ssize_t *first = <Py_ssize_t *>malloc((n + 1) * sizeof(Py_ssize_t))
    cdef int *errs = <int *>malloc(max(n, 1) * sizeof(int))
    cdef Py_ssize_t held = 0
    cdef int fd
    try:
        if views == NULL or first == NULL or errs == NULL:
            raise MemoryError()
        for i in range(n):
            first[i] = held
            for part in contents[i]:
                PyObject_GetBuffer(part, &views[held], PyBUF_SIMPLE)
                held += 1
        first[n] = held
        with nogil:
            for i in range(n):
                errs[i] = 0
                fd = c_open(cn[i], flags, mode)
                if fd < 0:
                    errs[i] = errno
                    continue
                for k in range(first[i], first[i + 1]):
                    errs[i] = _write_all(fd, <const char *>views[k].buf, views[k].len)
                    if errs[i]:
                        break
                if close(fd) != 0 and not errs[i]:
                    errs[i] = errno
        return [errs[i] for i in range(n)]
    finally:
        for j in range(held):
            PyBuffer_Release(&views[j])
        free(cn); free(views); free(first); free(errs)


def place_files(tmps, finals, bint link_only):
    """Put each temporary file at its final path, without the GIL: a hard
    link with `link_only` (it fails with EEXIST if the final path exists:
    atomic if-absent; the temporary name stays), else a rename over
    whatever is there.  Per file, 0 or the errno."""
    a = [os.fsencode(p) for p in tmps]
    b = [os.fsencode(p) for p in finals]
    cdef Py_ssize_t n = len(a), i
    if len(b) != n:
        raise ValueError(f"{len(b)} final paths for {n} temporary files")
    cdef const char **ca = _c_names(a)
    cdef const char **cb = NULL
    cdef int *errs = <int *>malloc(max(n, 1) * sizeof(int))
    try:
        cb = _c_names(b)
        if errs == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                errs[i] = 0
                if (link(ca[i], cb[i]) if link_only else rename(ca[i], cb[i])) != 0:
                    errs[i] = errno
        return [errs[i] for i in range(n)]
    finally:
        free(ca); free(cb); free(errs)


def remove_files(paths):
    """Unlink each path, without the GIL; errors (a name already gone) are
    ignored.  How many were removed."""
    names = [os.fsencode(p) for p in paths]
    cdef Py_ssize_t n = len(names), i
    cdef int removed = 0
    cdef const char **cn = _c_names(names)
    try:
        with nogil:
            for i in range(n):
                if unlink(cn[i]) == 0:
                    removed += 1
        return removed
    finally:
        free(cn)


def paths_exist(paths):
    """Whether each path names something (stat(2) succeeds, symlinks
    followed, as os.path.exists), without the GIL."""
    names = [os.fsencode(p) for p in paths]
    cdef Py_ssize_t n = len(names), i
    cdef const char **cn = _c_names(names)
    cdef char *found = <char *>malloc(max(n, 1))
    cdef struct_stat st
    try:
        if found == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                found[i] = stat(cn[i], &st) == 0
        return [bool(found[i]) for i in range(n)]
    finally:
        free(cn); free(found)


def list_dir(path):
    """(files, subdirectories) of a directory, both in name order (byte
    order of the names, which is code point order for UTF-8 names): files
    as (name, size), a symlink to a file counting as the file; directories
    to enter as names, symlinks to directories left out (no loops); other
    file types, and entries gone before they could be stat'ed, left out.
    The listing and every stat without the GIL: a tree walk in Python, a
    stat and its stat_result per file, was 8 us a file, ahead of any work
    on the tree.  OSError if the directory cannot be opened or read."""
    cdef bytes p = os.fsencode(path)
    cdef const char *cp = p
    cdef ld_listing listing
    cdef ld_entry *e
    cdef int err
    cdef size_t i
    with nogil:
        err = ld_list(cp, &listing)
    if err:
        raise OSError(err, strerror(err).decode(), os.fsdecode(p))
    files, dirs = [], []
    try:
        for i in range(listing.n):
            e = &listing.entries[i]
            if e.kind == LD_FILE:
                files.append((PyUnicode_DecodeFSDefault(e.name), e.size))
            elif e.kind == LD_DIR:
                dirs.append(PyUnicode_DecodeFSDefault(e.name))
    finally:
        ld_free(&listing)
    return files, dirs
