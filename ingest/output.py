"""Writing restored files: large ones around the page cache.

A restore of a large file writes every byte into page-cache pages the
kernel must first find, zero and charge, then write back later; a VM whose
host takes idle guest memory back charges a new file's pages at 14 us each
(bench/machine.py: 1.1-1.5 us just after a delete, 0.45 rewriting in
place), so buffered writes ran at 300-380 MB/s and most of a model
restore's CPU.  `OutputFile` writes through `O_DIRECT` instead: the bytes
go from one reused, page-aligned staging buffer straight to the device
(1.1-1.4 GB/s here, ~0.02 CPU s per 256 MiB against 0.7-0.9 buffered),
and the file is not left in the page cache, which a restore that feeds a
cache or a replica does not want filled anyway.

Where the file system refuses `O_DIRECT` (tmpfs, some FUSE and network
file systems: EINVAL at open or at the first write), the same file is
written buffered, through the same staging buffer; nothing else changes.
The last bytes that do not fill a whole `ALIGN` block are written
buffered too (clearing `O_DIRECT` on the descriptor), so the file never
needs padding or truncating.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os

O_DIRECT = getattr(os, "O_DIRECT", 0)        # 0 where the platform has none
ALIGN = 4096                 # offset, length and address alignment of direct writes
STAGE_BYTES = 8 << 20        # one staging buffer: what each direct write carries
DIRECT_MIN = 16 << 20        # smaller files are written buffered

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


class StagePool:
    """Page-aligned staging buffers of STAGE_BYTES, kept for reuse: a
    fresh buffer's pages are the cost being avoided.  Taken and given back
    on one thread (the event loop)."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._free: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        # Private: mmap's default, a shared anonymous mapping, is shmem, whose
        # pages cost ~25% more to fault in (2.8 against 3.5 ms per buffer).
        return self._free.pop() if self._free else mmap.mmap(-1, STAGE_BYTES,
                                                             flags=mmap.MAP_PRIVATE)

    def give(self, buf: mmap.mmap) -> None:
        if len(self._free) < self.keep:
            self._free.append(buf)
        else:
            buf.close()

    def close(self) -> None:
        for b in self._free:
            b.close()
        self._free.clear()


class OutputFile:
    """One file being written, in order, from blocks of bytes (any
    bytes-like objects); `direct` asks for O_DIRECT, which is used where the
    file system takes it.  Blocking: call from a worker thread.  `finish()`
    writes what is staged; `close()` always."""

    def __init__(self, path: str | os.PathLike, stage: mmap.mmap, direct: bool) -> None:
        self.fd = -1
        self.direct = False
        if direct and O_DIRECT:
            try:
                self.fd = os.open(path, _FLAGS | O_DIRECT, 0o666)
                self.direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        if self.fd < 0:
            self.fd = os.open(path, _FLAGS, 0o666)
        self._stage = memoryview(stage)
        self._fill = 0
        self.size = 0

    def write(self, blocks) -> None:
        if not self.direct and not self._fill:
            for b in blocks:                 # buffered: no need to stage
                mv = memoryview(b).cast("B")
                self.size += len(mv)
                self._write(mv)
            return
        stage = self._stage
        cap = len(stage)
        for b in blocks:
            mv = memoryview(b).cast("B")
            n = len(mv)
            self.size += n
            pos = 0
            while pos < n:
                k = min(n - pos, cap - self._fill)
                stage[self._fill:self._fill + k] = mv[pos:pos + k]
                self._fill += k
                pos += k
                if self._fill == cap:
                    self._write(stage)
                    self._fill = 0

    def finish(self) -> None:
        """Write the staged rest: whole ALIGN blocks as the file goes, the
        last partial block buffered."""
        fill = self._fill
        self._fill = 0
        whole = fill - fill % ALIGN if self.direct else fill
        if whole:
            self._write(self._stage[:whole])
        if whole < fill:
            self._buffered()
            self._write(self._stage[whole:fill])

    def close(self) -> None:
        self._stage.release()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _write(self, data: memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n:
            try:
                pos += os.write(self.fd, data[pos:])
            except OSError as e:
                # EINVAL from a direct write: an alignment this file system
                # wants and ALIGN is not (or a short write left the rest
                # unaligned).  The failed call wrote nothing: go on without
                # O_DIRECT from where it stopped.
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                self._buffered()

    def _buffered(self) -> None:
        if self.direct:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~O_DIRECT)
            self.direct = False

