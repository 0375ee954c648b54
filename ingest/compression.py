"""Frame codecs: how a run of new chunks is stored.

A frame is the concatenation of consecutive new chunks of one file (up to the
store's frame size).  Compressing ~1 MiB runs instead of single 64 KiB chunks
is what closes most of the gap to borg's stored bytes, and a range read still
decompresses at most one frame at each end.

Codecs (the byte stored in pack footers, index rows and manifests):
    RAW       0  stored as is (compression would not pay)
    ZSTD      1  zstd
    ZSTD_BG2  2  2-way byte grouping, then zstd  (bf16/fp16 tensors)
    ZSTD_BG4  4  4-way byte grouping, then zstd  (fp32 tensors)
Byte grouping puts byte k of every element together, so the slowly varying
sign/exponent bytes of floats sit in long runs zstd can model.
"""
from __future__ import annotations

import threading

import numpy as np
import zstandard

from .errors import IntegrityError

RAW, ZSTD, ZSTD_BG2, ZSTD_BG4 = 0, 1, 2, 4
CODECS = {RAW: "raw", ZSTD: "zstd", ZSTD_BG2: "zstd+bg2", ZSTD_BG4: "zstd+bg4"}
_GROUP = {ZSTD: 1, ZSTD_BG2: 2, ZSTD_BG4: 4}

SAMPLE = 64 * 1024          # bytes tried per candidate codec
RAW_IF_ABOVE = 0.97         # sample ratio above which a frame is stored raw


def group_bytes(data, k: int) -> bytes:
    """Byte k-grouping: element bytes 0 of all elements, then bytes 1, ...;
    a tail shorter than one element is kept as is."""
    a = np.frombuffer(data, dtype=np.uint8)
    n = len(a) - len(a) % k
    return a[:n].reshape(-1, k).T.tobytes() + a[n:].tobytes()


def ungroup_bytes(data, k: int) -> bytes:
    a = np.frombuffer(data, dtype=np.uint8)
    n = len(a) - len(a) % k
    return a[:n].reshape(k, -1).T.tobytes() + a[n:].tobytes()


class Compressor:
    """Chooses a codec per frame and compresses it; one per thread (zstd
    contexts are not thread-safe), see `for_thread`."""

    _local = threading.local()

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._zc = zstandard.ZstdCompressor(level=level)
        self._probe = zstandard.ZstdCompressor(level=1)

    @classmethod
    def for_thread(cls, level: int) -> "Compressor":
        comps = getattr(cls._local, "comps", None)
        if comps is None:
            comps = cls._local.comps = {}
        c = comps.get(level)
        if c is None:
            c = comps[level] = cls(level)
        return c

    def _sample(self, data: memoryview) -> memoryview:
        n = data.nbytes
        if n <= SAMPLE:
            return data
        mid = (n // 2) & ~7
        return data[mid: mid + SAMPLE]

    def choose(self, data: memoryview, element_size: int | None = None) -> int:
        """Pick the codec by compressing a sample with each candidate at
        level 1: a few percent of the frame's cost, and it catches both
        incompressible data and float tensors without needing a dtype."""
        sample = self._sample(data)
        if element_size in (2, 4):
            candidates = [ZSTD_BG2 if element_size == 2 else ZSTD_BG4]
        else:
            candidates = [ZSTD, ZSTD_BG2, ZSTD_BG4]
        best, best_len = RAW, sample.nbytes * RAW_IF_ABOVE
        for codec in candidates:
            k = _GROUP[codec]
            s = sample if k == 1 else group_bytes(sample, k)
            n = len(self._probe.compress(s))
            if n < best_len:
                best, best_len = codec, n
        return best

    def compress(self, data, element_size: int | None = None) -> tuple[int, bytes | memoryview]:
        """(codec, stored bytes) for one frame."""
        mv = memoryview(data).cast("B")
        codec = self.choose(mv, element_size)
        if codec == RAW:
            return RAW, mv
        k = _GROUP[codec]
        out = self._zc.compress(mv if k == 1 else group_bytes(mv, k))
        if len(out) >= mv.nbytes:
            return RAW, mv
        return codec, out


_dctx = threading.local()


def decompress(codec: int, stored, raw_len: int) -> bytes:
    """Inverse of Compressor.compress; output is bounded by raw_len, and any
    mismatch raises IntegrityError."""
    if codec == RAW:
        out = bytes(stored)
    elif codec in _GROUP:
        d = getattr(_dctx, "d", None)
        if d is None:
            d = _dctx.d = zstandard.ZstdDecompressor()
        try:
            out = d.decompress(stored, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"corrupted frame: {e}") from None
        k = _GROUP[codec]
        if k != 1:
            out = ungroup_bytes(out, k)
    else:
        raise IntegrityError(f"unknown codec {codec}")
    if len(out) != raw_len:
        raise IntegrityError(f"frame decompressed to {len(out)} bytes, expected {raw_len}")
    return out
