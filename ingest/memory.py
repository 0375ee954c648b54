"""Process-wide allocator tuning for ingest workloads (glibc only).

The write path allocates and frees ~1 MiB frame buffers at hundreds of MB/s.
With glibc's defaults freed heap memory is handed back to the kernel and
faulted in again on the next allocation: on 256 MiB of fp32 weights that was
145k minor page faults and a third of the CPU time in the kernel.  Keeping up
to 256 MiB of freed heap (and growing it 64 MiB at a time) took novel ingest
from 162 to 286 MB/s on this 2-core machine.  The CLI and daemon call
`tune_malloc()` at start; a hub backend embedding the library may call it
once, if it agrees to the retained memory.

Setting any of these turns off glibc's dynamic mmap threshold, which
otherwise rises to the size of freed blocks: left at 128 KiB, every 1 MiB
frame was a fresh mmap, faulted in and unmapped again.  Serving blocks up to
16 MiB from the retained heap took a 512 MiB novel file from 413-426 to
527-568 MB/s, 140k -> 58k page faults (one put_file, 2 runs each).
"""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 << 20
TOP_PAD = 64 << 20
MMAP_THRESHOLD = 16 << 20     # frames, small files, block buffers: from the heap

_done = False


def uninitialized(size: int) -> memoryview:
    """A writable buffer that is not zero-filled, for one that is written in
    full before it is read (block buffers, frames, byte-grouped planes):
    zero-filling them was the largest single cost of novel data on the
    loop thread, and most of a fresh process's first file (py-spy)."""
    return memoryview(np.empty(size, np.uint8))


def tune_malloc() -> bool:
    """Apply the settings above; False where the C library is not glibc."""
    global _done
    if _done:
        return True
    try:
        # libc.so.6 first: find_library runs ldconfig in a subprocess (~15 ms).
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = (bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_TOP_PAD, TOP_PAD))
          and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)))
    _done = ok
    return ok
