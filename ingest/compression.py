"""Frame codecs: how a run of new chunks is stored.

A frame is the concatenation of consecutive new chunks of one file (up to the
store's frame size, 1 MiB by default).  Compressing ~1 MiB runs instead of
single 64 KiB chunks is what closes most of the gap to borg's stored bytes
(bench/frame_size.py: 256 KiB frames store 3% more, 4 MiB frames 1% less but
make a 4 KiB range read 6x slower).

Codecs (the byte stored in pack footers, index rows and manifests):
    RAW       0  stored as is (compression would not pay)
    ZSTD      1  one zstd frame at the store's level
    ZSTD_BG2  2  2-way byte grouping, each plane zstd or raw  (bf16/fp16)
    ZSTD_BG4  4  4-way byte grouping, each plane zstd or raw  (fp32)
Byte grouping puts byte j of every element into plane j, so the sign and
exponent bytes of floats sit together where zstd can model them.  The planes
are then coded one by one: in N(0, 0.02) fp32 weights the three mantissa
planes are incompressible (ratio 1.00) and the exponent plane compresses to
0.40, so compressing planes separately does a quarter of the zstd work of
compressing the grouped frame whole, for the same 0.85.

Grouped layout: k little-endian u32 plane lengths (top bit set: the plane is
a zstd frame; clear: raw), the k plane payloads, then the raw tail of
raw_len % k bytes.  Each plane holds raw_len // k bytes once decoded.
"""
from __future__ import annotations

import struct
import threading

import zstandard

from . import _bytegroup
from .errors import IntegrityError
from .memory import uninitialized

RAW, ZSTD, ZSTD_BG2, ZSTD_BG4 = 0, 1, 2, 4
MAX_FRAME_RAW = 64 << 20    # parsers refuse frames claiming more (configs allow 16 MiB)
CODECS = {RAW: "raw", ZSTD: "zstd", ZSTD_BG2: "zstd+bg2", ZSTD_BG4: "zstd+bg4"}
_GROUP = {ZSTD_BG2: 2, ZSTD_BG4: 4}
_BY_ELEMENT = {2: ZSTD_BG2, 4: ZSTD_BG4}

PROBE = 32 * 1024           # sample bytes compressed per candidate codec
PLANE_PROBE = 16 * 1024     # sample bytes of a plane probed before coding it
RAW_IF_ABOVE = 0.97         # a sample or plane compressing worse than this stays raw
# A grouping chosen without a dtype from the format is checked against plain
# zstd of the whole frame when the sample compresses plain below this:
# float weights sample at 0.78-0.80 (bf16) and 0.92-0.94 (fp16, fp32), the
# frames of shared libraries that grouping misjudged at 0.55-0.61.
CHECK_GROUPING_BELOW = 0.7
# Planes of float bytes are close to i.i.d. symbols: matches barely help and
# looking for them is most of zstd's time.  A fast strategy that only takes
# matches of 7+ bytes with a tiny hash table leaves the work to the entropy
# coder: on the model corpus the fp32 exponent plane stores 0.360 at 501 MB/s
# against level 1's 0.397 at 177 MB/s (bf16: 0.361 at 510 vs 0.379 at 262);
# level 3 is worse than level 1 on these planes (0.436).
PLANE_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=17, hash_log=8, chain_log=8, search_log=1, min_match=7,
    target_length=0, strategy=zstandard.STRATEGY_FAST)
COMPRESSED = 0x8000_0000


def group_bytes(data, k: int) -> memoryview:
    """Byte k-grouping (native); a tail shorter than one element is kept as
    is.  Into a buffer that is not zero-filled first (one per frame)."""
    mv = memoryview(data).cast("B")
    out = uninitialized(mv.nbytes)
    _bytegroup.group(mv, k, out)
    return out


def ungroup_bytes(data, k: int) -> bytearray:
    return _bytegroup.ungroup(memoryview(data).cast("B"), k)


def _middle(data: memoryview, size: int) -> memoryview:
    n = data.nbytes
    if n <= size:
        return data
    mid = (n // 2 - size // 2) & ~7
    return data[mid: mid + size]


class Compressor:
    """Chooses a codec per frame and compresses it; one per thread (zstd
    contexts are not thread-safe), see `for_thread`."""

    _local = threading.local()

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._zc = zstandard.ZstdCompressor(level=level)
        self._z1 = zstandard.ZstdCompressor(compression_params=PLANE_PARAMS)
        self._zcheck = zstandard.ZstdCompressor(level=1)

    @classmethod
    def for_thread(cls, level: int) -> "Compressor":
        comps = getattr(cls._local, "comps", None)
        if comps is None:
            comps = cls._local.comps = {}
        c = comps.get(level)
        if c is None:
            c = comps[level] = cls(level)
        return c

    def _plane_costs(self, planes: list) -> list[int]:
        """Estimated stored bytes of each plane (raw where it does not pay),
        from a sample of each, all coded in one call."""
        samples = [_middle(p, PLANE_PROBE) for p in planes]
        return [p.nbytes if n > s.nbytes * RAW_IF_ABOVE else p.nbytes * n // max(s.nbytes, 1)
                for p, s, n in zip(planes, samples, _sizes(self._z1, samples))]

    def choose(self, data: memoryview, element_size: int | None = None) -> int:
        """The codec for a frame.  With an element size from the file format
        (safetensors dtype) only that grouping is considered; otherwise a
        sample is tried plain and 2- and 4-way grouped, at a few percent of
        the frame's compression cost."""
        return self._choose(data, element_size)[0]

    def _choose(self, data: memoryview, element_size: int | None) -> tuple[int, bool]:
        """(codec, whether a grouping chosen from the sample alone should be
        checked against plain zstd on the whole frame)."""
        if element_size in _BY_ELEMENT:
            return _BY_ELEMENT[element_size], False
        sample = _middle(data, PROBE)
        n = sample.nbytes
        best, best_len = RAW, n * RAW_IF_ABOVE
        # Plain is estimated at the level it would be stored at: the plane
        # coder's fast strategy undersells zstd on anything but float
        # planes, and grouping won frames where it stored more.
        plain = len(self._zc.compress(sample))
        mixed = False
        if plain < best_len:
            best, best_len = ZSTD, plain
        elif data.nbytes >= 4 * PROBE and self._compressible_elsewhere(data):
            # A frame is not always one kind of bytes: the first frame of a
            # Parquet file sampled 0.97 in the middle, and stored raw, while
            # plain zstd takes it to 0.74 (its first 128 KiB are 0.03).  Not
            # raw, then; a grouping that the sample favours is checked on
            # the whole frame.
            best, mixed = ZSTD, True
        # The planes of both groupings are probed in one call.
        groups = [(codec, k, memoryview(group_bytes(sample, k))) for codec, k in _GROUP.items()]
        planes = [g[j * (n // k):(j + 1) * (n // k)] for _, k, g in groups for j in range(k)]
        costs = self._plane_costs(planes)
        for codec, k, _ in groups:
            est = sum(costs[:k]) + n - k * (n // k)
            costs = costs[k:]
            if est < best_len * 0.98:           # grouping must clearly win
                best, best_len = codec, est
        return best, mixed or plain < n * CHECK_GROUPING_BELOW

    def _compressible_elsewhere(self, data: memoryview) -> bool:
        """Whether a sample at a quarter or three quarters of the frame
        compresses (level 1: a yes or no, on bytes that are mostly not)."""
        n = data.nbytes
        probes = []
        for at in (n // 4, 3 * n // 4):
            at &= ~7
            probes.append(data[at - PROBE // 2: at + PROBE // 2])
        return any(z < p.nbytes * RAW_IF_ABOVE for p, z in zip(probes, _sizes(self._zcheck, probes)))

    def compress(self, data, element_size: int | None = None) -> tuple[int, list]:
        """(codec, stored bytes as a list of buffers to write in order) for
        one frame: grouped planes are not joined into one more copy."""
        mv = memoryview(data).cast("B")
        codec, check = self._choose(mv, element_size)
        if codec == RAW:
            return RAW, [mv]
        if codec == ZSTD:
            out = [self._zc.compress(mv)]
        else:
            out = self._compress_planes(mv, _GROUP[codec])
            if check and out is not None:
                # A guess from a sample that plain zstd found compressible:
                # grouping breaks zstd's matches, and in a shared library's
                # frames with long-range repeats the middle 32 KiB looked
                # like floats while the whole frame stored 0.32 plain
                # against 0.56 grouped.  Plain level 1 of the whole frame
                # (at most what the stored level would give) decides.
                if len(self._zcheck.compress(mv)) <= sum(len(x) for x in out):
                    codec, out = ZSTD, [self._zc.compress(mv)]
        if out is None or sum(len(x) for x in out) >= mv.nbytes:
            return RAW, [mv]
        return codec, out

    def _compress_planes(self, mv: memoryview, k: int) -> list | None:
        n = mv.nbytes
        m = n // k
        g = memoryview(group_bytes(mv, k))
        planes = [g[j * m:(j + 1) * m] for j in range(k)]
        coded = [j for j, cost in enumerate(self._plane_costs(planes)) if cost < m]
        lengths, parts = [m] * k, list(planes)
        for j, z in zip(coded, _compress_all(self._z1, [planes[j] for j in coded])):
            if len(z) < m:
                lengths[j] = len(z) | COMPRESSED
                parts[j] = z
        if all(not (x & COMPRESSED) for x in lengths):
            return None                           # nothing paid: store the frame raw
        return [struct.pack(f"<{k}I", *lengths), *parts, g[k * m:]]


# A thread that gives up the GIL waits, beside a thread running Python, up to
# the interpreter's switch interval (5 ms) to take it back: each zstandard
# call does so once, whatever its size.  Several buffers for one compressor
# go in one call (multi_compress_to_buffer, C backend only), so a frame's
# probes and planes cost two waits, not eight or more.
_MULTI = hasattr(zstandard.ZstdCompressor, "multi_compress_to_buffer")


def _compress_all(zc: zstandard.ZstdCompressor, parts: list) -> list:
    """Each buffer compressed (zstd frames identical to zc.compress's), with
    the GIL given up once; BufferSegments, or bytes without the C backend."""
    if len(parts) > 1 and _MULTI and all(memoryview(p).nbytes for p in parts):
        try:
            out = zc.multi_compress_to_buffer(parts, threads=1)
        except NotImplementedError:
            pass
        else:
            return [out[i] for i in range(len(out))]
    return [zc.compress(p) for p in parts]


def _sizes(zc: zstandard.ZstdCompressor, parts: list) -> list[int]:
    return [len(z) for z in _compress_all(zc, parts)]


_dctx = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_dctx, "d", None)
    if d is None:
        d = _dctx.d = zstandard.ZstdDecompressor()
    return d


def _unzstd(data, size: int) -> bytes:
    try:
        # A frame header may claim any content size and zstd would allocate
        # it before failing: check the claim against what the index says.
        declared = zstandard.frame_content_size(data)
        if declared not in (size, zstandard.CONTENTSIZE_UNKNOWN):
            raise IntegrityError(f"zstd frame claims {declared} bytes, expected {size}")
        out = _decompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"corrupted frame: {e}") from None
    if len(out) != size:
        raise IntegrityError(f"frame decompressed to {len(out)} bytes, expected {size}")
    return out


def decompress(codec: int, stored, raw_len: int) -> bytes | memoryview:
    """Inverse of Compressor.compress: bytes, or a read-only memoryview for
    a grouped frame.  Output is bounded by raw_len; any inconsistency raises
    IntegrityError."""
    stored = memoryview(stored).cast("B")
    if codec == RAW:
        if stored.nbytes != raw_len:
            raise IntegrityError(f"raw frame holds {stored.nbytes} bytes, expected {raw_len}")
        return bytes(stored)
    if codec == ZSTD:
        return _unzstd(stored, raw_len)
    k = _GROUP.get(codec)
    if k is None:
        raise IntegrityError(f"unknown codec {codec}")
    m = raw_len // k
    head = 4 * k
    if stored.nbytes < head:
        raise IntegrityError("grouped frame shorter than its plane table")
    lengths = struct.unpack_from(f"<{k}I", stored)
    grouped = uninitialized(raw_len)      # every byte is written before use
    pos = head
    for j, ln in enumerate(lengths):
        size = ln & ~COMPRESSED
        if pos + size > stored.nbytes or (not ln & COMPRESSED and size != m):
            raise IntegrityError("grouped frame plane table does not match its data")
        part = stored[pos:pos + size]
        grouped[j * m:(j + 1) * m] = _unzstd(part, m) if ln & COMPRESSED else part
        pos += size
    if stored.nbytes - pos != raw_len - k * m:
        raise IntegrityError("grouped frame tail has the wrong length")
    grouped[k * m:] = stored[pos:]
    out = uninitialized(raw_len)
    _bytegroup.ungroup(grouped, k, out)
    return out.toreadonly()
