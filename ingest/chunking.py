"""Content-defined chunking: where uploads are cut into dedup units.

The cut rule lives in native/gearcdc.c (Gear hash, FastCDC-style normalized
cutting); this module holds the parameters and the Python-facing forms:
`chunk_ends` for one buffer and `StreamChunker` for input read in blocks of any
size.  A store records its ChunkParams in its config and every writer uses
them, so chunking never changes under existing data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import _chunker


def json_int(d: dict, key: str) -> int:
    """d[key], which must be a JSON integer: 1048576.9, "1048576" and true
    are not (int() would take each), so a damaged or hand-edited store config is
    refused rather than read as something nobody wrote."""
    v = d[key]
    if type(v) is not int:
        raise ValueError(f"{key} is not an integer: {v!r}")
    return v


@dataclass(frozen=True)
class ChunkParams:
    """min/normal/max chunk sizes and the bit counts of the two thresholds.

    A length up to `normal_size` ends a chunk with probability 2**-strict_bits
    per byte, beyond it 2**-loose_bits (normalized chunking): chunk
    sizes cluster around the average instead of spreading geometrically,
    which dedups better for the same average.  Defaults measured on 128 MiB
    of random bytes: mean 63.4 KiB, std 18.8 KiB, no chunk forced at max_size.
    """

    min_size: int = 16 * 1024
    normal_size: int = 64 * 1024
    max_size: int = 256 * 1024
    strict_bits: int = 17
    loose_bits: int = 13

    def __post_init__(self) -> None:
        if self.min_size < 64:
            raise ValueError("min_size must be at least 64")
        if not self.min_size <= self.normal_size <= self.max_size:
            raise ValueError("need min_size <= normal_size <= max_size")
        if not (1 <= self.loose_bits <= self.strict_bits <= 63):
            raise ValueError("need 1 <= loose_bits <= strict_bits <= 63")

    def native(self) -> _chunker.Params:
        return _chunker.Params(self.min_size, self.normal_size, self.max_size,
                               1 << (64 - self.strict_bits), 1 << (64 - self.loose_bits))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChunkParams":
        return cls(**{k: json_int(d, k) for k in ("min_size", "normal_size", "max_size",
                                                   "strict_bits", "loose_bits")})

    def coarsened(self) -> "ChunkParams":
        """The parameters for incompressible files (see `params_for`): 8x
        the average and minimum, 4x the maximum."""
        return ChunkParams(8 * self.min_size, 8 * self.normal_size, 4 * self.max_size,
                           min(63, self.strict_bits + 3), min(63, self.loose_bits + 3))


DEFAULT_PARAMS = ChunkParams()
_default_native = DEFAULT_PARAMS.native()

# Incompressible files get coarse chunks.  A chunk's metadata (its id in the
# pack footer, the index and the manifest, ~134 bytes) is 0.2% of a 64 KiB
# chunk, which compression cannot win back when the bytes do not compress:
# 64 MiB of random bytes took 1.0022x their size in 64 KiB chunks and
# 1.00047x in 512 KiB ones (borg, 2 MiB chunks: 1.00068x).  Only data whose
# byte histogram is all but uniform qualifies: random, encrypted or already
# compressed bytes, which seldom dedup in part.  Headers (safetensors,
# tar, Parquet footers aside) and any structure put a file out of it, and
# weights never are uniform bytes.  The rule is the file's, not the code
# path's, so every way in (put_tree, put_file, put_bytes, put_stream, the
# daemon) cuts a file the same: at least UNIFORM_MIN_FILE bytes, and the
# first UNIFORM_SAMPLE of them within chi-square UNIFORM_CHI2 of uniform
# (integers only; a uniform random sample scores 255 +- 23).
UNIFORM_MIN_FILE = 1 << 20
UNIFORM_SAMPLE = 256 << 10
UNIFORM_CHI2 = 400


def is_uniform(head) -> bool:
    """Whether the first UNIFORM_SAMPLE bytes of `head` (all of them must be
    there) have a byte histogram within chi-square UNIFORM_CHI2 of uniform."""
    a = np.frombuffer(memoryview(head).cast("B")[:UNIFORM_SAMPLE], np.uint8)
    if len(a) < UNIFORM_SAMPLE:
        return False
    dev = _chunker.byte_counts(a) - UNIFORM_SAMPLE // 256
    # chi2 = sum(dev^2) / E with E = UNIFORM_SAMPLE / 256, without division.
    return int((dev * dev).sum()) * 256 < UNIFORM_CHI2 * UNIFORM_SAMPLE


def params_for(head, params: ChunkParams, coarse: ChunkParams | None) -> ChunkParams:
    """The parameters to cut a file with, from its first bytes `head` (at
    least UNIFORM_MIN_FILE of them, or the whole file): `coarse` (the
    store's, None: never) when the file is incompressible by the rule above.
    A head shorter than UNIFORM_MIN_FILE gets `params`: the whole of a
    smaller file, or the first block of one that grew past the size it had
    when opened."""
    if coarse is None or memoryview(head).nbytes < UNIFORM_MIN_FILE:
        return params
    return coarse if is_uniform(head) else params


def _native(params: ChunkParams | None) -> _chunker.Params:
    return _default_native if params is None or params == DEFAULT_PARAMS else params.native()


def chunk_ends(buf, params: ChunkParams | None = None) -> np.ndarray:
    """End offset of every chunk of `buf` (any bytes-like object), as uint64.

    The last end equals len(buf); an empty buffer has no chunks.
    """
    ends, _ = _chunker.find_ends(_native(params), memoryview(buf).cast("B"), True)
    return ends


def chunk_ends_many(bufs: list[bytes], params: ChunkParams | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """chunk_ends of each of many bytes objects, in one native call: (all
    their ends in order, each an offset into its own buffer; per buffer its
    number of chunks)."""
    return _chunker.find_ends_many(_native(params), bufs)


def find_ends(buf, eof: bool, scanned: int = 0, params: ChunkParams | None = None):
    """Low-level form for callers that keep their own buffer (the pipeline).

    Returns (ends, scanned): bytes after ends[-1] are an unfinished chunk to
    pass again, at the front of the next call's buffer, with `scanned`.
    """
    return _chunker.find_ends(_native(params), buf, eof, scanned)


class StreamChunker:
    """Chunk a stream fed in pieces of any size; cuts equal `chunk_ends` of the whole.

    `update(data)` returns the absolute end offsets completed so far and
    `finish()` the last one.  It copies only the unfinished chunk (less than
    max_size bytes) between calls.
    """

    def __init__(self, params: ChunkParams | None = None) -> None:
        self._params = _native(params)
        self._tail = bytearray()     # bytes of the unfinished chunk
        self._base = 0               # absolute offset of _tail[0]
        self._scanned = 0
        self._done = False

    def update(self, data) -> np.ndarray:
        if self._done:
            raise ValueError("update() after finish()")
        mv = memoryview(data).cast("B")
        if not mv.nbytes:
            return np.empty(0, dtype=np.uint64)
        if self._tail:
            self._tail += mv
            buf = memoryview(self._tail)
        else:
            buf = mv
        ends, self._scanned = _chunker.find_ends(self._params, buf, False, self._scanned)
        consumed = int(ends[-1]) if len(ends) else 0
        rest = bytes(buf[consumed:])
        del buf
        self._tail = bytearray(rest)
        out = ends + np.uint64(self._base)
        self._base += consumed
        return out

    def finish(self) -> np.ndarray:
        self._done = True
        ends, _ = _chunker.find_ends(self._params, memoryview(self._tail), True, self._scanned)
        self._tail = bytearray()
        return ends + np.uint64(self._base)
