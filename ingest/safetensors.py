"""Element sizes of the tensors in a safetensors file, read from its header.

A safetensors file starts with a u64 (LE) header length N and N bytes of JSON
mapping tensor names to {"dtype", "shape", "data_offsets": [begin, end]},
offsets relative to the end of the header.  Knowing the dtype lets the
compressor byte-group float tensors (2-way for bf16/fp16, 4-way for fp32)
without guessing from samples.  Anything that does not parse as such a
header simply gives no hints; it is never an error.
"""
from __future__ import annotations

import bisect
import json

ELEMENT_SIZE = {"F32": 4, "F16": 2, "BF16": 2}
MAX_HEADER = 100 << 20


class DtypeMap:
    """Element size (or None) at a file offset."""

    def __init__(self, ranges: list[tuple[int, int, int]]) -> None:
        ranges.sort()
        self._starts = [r[0] for r in ranges]
        self._ranges = ranges

    def __len__(self) -> int:
        return len(self._ranges)

    def element_size(self, offset: int) -> int | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0:
            start, end, k = self._ranges[i]
            if offset < end:
                return k
        return None


def parse_header(head) -> DtypeMap | None:
    """A DtypeMap from the first bytes of a file, or None if they are not a
    complete safetensors header."""
    head = memoryview(head)
    if head.nbytes < 10:
        return None
    n = int.from_bytes(head[:8], "little")
    if not 2 <= n <= MAX_HEADER or 8 + n > head.nbytes or head[8] != ord("{"):
        return None
    try:
        meta = json.loads(bytes(head[8:8 + n]))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    base = 8 + n
    ranges = []
    for name, t in meta.items():
        if name == "__metadata__" or not isinstance(t, dict):
            continue
        k = ELEMENT_SIZE.get(t.get("dtype"))
        offs = t.get("data_offsets")
        if k and isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs):
            if 0 <= offs[0] <= offs[1]:
                ranges.append((base + offs[0], base + offs[1], k))
    return DtypeMap(ranges) if ranges else None
