"""tune_malloc: freed frame-sized blocks are reused, not faulted in again."""
import subprocess
import sys

import pytest

CHILD = """
import resource, sys
from ingest import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
elif sys.argv[1] == "trim-only":          # what tune_malloc set before it set the mmap threshold
    import ctypes
    assert ctypes.CDLL("libc.so.6").mallopt(-1, 256 << 20)
keep = [bytearray(64 << 20)]             # grow the heap once, as a running ingest has
del keep
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    frame = bytearray(1 << 20)           # a frame buffer: zero-filled, written, freed
    del frame
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True,
                         capture_output=True, text=True).stdout
    return int(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_tuned_malloc_reuses_freed_frames():
    # Setting the trim threshold alone turns off glibc's dynamic mmap
    # threshold: every 1 MiB frame is then a fresh mmap, ~256 faults each.
    assert faults("trim-only") > 20000
    assert faults("tuned") < 2000
