"""Packs: the large immutable objects that hold stored chunk bytes.

    pack     = header, frame*, footer envelope, trailer
    header   8 bytes   b"IGPK" version(u8) 0 0 0
    frame    24 bytes  b"IGFR" codec(u8) 0 nchunks(u16) raw_len(u32) stored_len(u32) xxh3_64(stored)(u64)
             then stored_len bytes (the frame's chunks, concatenated, encoded by codec)
    footer   envelope (see envelope.py) magic b"IGPF", payload =
             nframes(u32) nchunks(u32), FRAME_ROW * nframes, CHUNK_ROW * nchunks
    trailer  16 bytes  footer_len(u64) b"IGPK" version(u8) 0 0 0

pack id = BLAKE3-256 of the footer envelope, which lists every frame's offset
and XXH3 checksum and every chunk's BLAKE3 id: the id names the pack's
contents (cryptographically through the chunk ids, which every read checks).  A
reader of one chunk needs only the frame (offset and length come from the
index or a manifest); `verify` and index rebuilds read the footer.
"""
from __future__ import annotations

import struct

import blake3
import numpy as np
import xxhash

from .compression import CODECS, MAX_FRAME_RAW
from .envelope import OVERHEAD, seal, unseal
from .errors import FormatError, IntegrityError

VERSION = 1
HEADER = struct.Struct("<4sB3x")
FRAME_HEADER = struct.Struct("<4sBxHIIQ")
TRAILER = struct.Struct("<Q4sB3x")
FOOTER_COUNTS = struct.Struct("<II")
PACK_MAGIC, FRAME_MAGIC, FOOTER_MAGIC = b"IGPK", b"IGFR", b"IGPF"
MAX_FRAME_CHUNKS = 0xFFFF    # the frame header counts chunks in a u16

FRAME_ROW = np.dtype([("offset", "<u8"), ("length", "<u4"), ("raw_len", "<u4"),
                      ("codec", "u1"), ("nchunks", "<u2"), ("checksum", "<u8")], align=False)
CHUNK_ROW = np.dtype([("id", "V32"), ("frame", "<u4"), ("offset", "<u4"), ("length", "<u4")])


# python-xxhash gives up the GIL for inputs from ~100 KB on, and beside a
# thread running Python taking it back is a wait of up to the switch
# interval, for a hash of ~40 us per MiB: fed in pieces below that, it keeps
# the GIL (0.004 ms a 1 MiB checksum against 1-5 ms beside a spinning thread).
XXH_PIECE = 64 << 10


def _xxh3(parts) -> tuple[int, int]:
    """(xxh3_64 of the concatenation of `parts`, its length), with the GIL held."""
    h = xxhash.xxh3_64()
    n = 0
    for part in parts:
        mv = memoryview(part).cast("B")
        for i in range(0, mv.nbytes, XXH_PIECE):
            h.update(mv[i:i + XXH_PIECE])
        n += mv.nbytes
    return h.intdigest(), n


def frame_header(codec: int, nchunks: int, raw_len: int, stored: list) -> bytes:
    """Header of a frame whose stored bytes are the concatenation of `stored`."""
    digest, n = _xxh3(stored)
    return FRAME_HEADER.pack(FRAME_MAGIC, codec, nchunks, raw_len, n, digest)


def check_frame(buf, raw_len: int, codec: int, what: str,
                footer_row: tuple | None = None) -> memoryview:
    """Validate a frame (header + stored bytes) read from a pack; return the
    stored bytes.  With the pack footer's row for it, also check that the
    header's chunk count and checksum match the footer."""
    mv = memoryview(buf).cast("B")
    if mv.nbytes < FRAME_HEADER.size:
        raise IntegrityError(f"{what}: frame truncated")
    magic, got_codec, nchunks, got_raw, stored_len, checksum = FRAME_HEADER.unpack_from(mv)
    if magic != FRAME_MAGIC:
        raise IntegrityError(f"{what}: bad frame magic")
    if got_codec != codec or got_raw != raw_len or stored_len != mv.nbytes - FRAME_HEADER.size:
        raise IntegrityError(f"{what}: frame header does not match its index entry")
    if footer_row is not None and (footer_row[4], footer_row[5]) != (nchunks, checksum):
        raise IntegrityError(f"{what}: frame header does not match the pack footer")
    stored = mv[FRAME_HEADER.size:]
    if _xxh3((stored,))[0] != checksum:
        raise IntegrityError(f"{what}: frame checksum mismatch (pack is corrupted)")
    return stored


class PackBuilder:
    """Accumulates frames in memory and seals them into one pack object."""

    def __init__(self) -> None:
        self._taken = 0            # pack bytes handed out by take() so far
        self.parts: list = [HEADER.pack(PACK_MAGIC, VERSION)]
        self.size = HEADER.size
        self.frames: list[tuple] = []
        self.chunks: list[np.ndarray] = []

    def add_frame(self, codec: int, stored: list, raw_len: int, chunk_ids: np.ndarray,
                  chunk_lengths: np.ndarray, head: bytes | None = None) -> tuple[int, int]:
        """Append one frame (stored bytes as a list of buffers); returns
        (frame index, offset of its header).  `head`: its frame_header(),
        when the caller computed it already (in a pool thread: the checksum
        reads every stored byte)."""
        n = len(chunk_lengths)
        if head is None:
            head = frame_header(codec, n, raw_len, stored)
        _, got_codec, got_n, got_raw, stored_len, checksum = FRAME_HEADER.unpack(head)
        if (got_codec, got_n, got_raw) != (codec, n, raw_len):
            raise ValueError("frame header does not describe this frame")
        length = FRAME_HEADER.size + stored_len
        offset = self.size
        index = len(self.frames)
        self.parts.append(head)
        self.parts.extend(stored)
        self.size += length
        self.frames.append((offset, length, raw_len, codec, n, checksum))
        rows = np.empty(n, dtype=CHUNK_ROW)
        rows["id"] = np.ascontiguousarray(chunk_ids).view("V32").reshape(-1)
        rows["frame"] = index
        lengths = np.asarray(chunk_lengths, dtype=np.uint64)
        rows["offset"] = np.concatenate(([0], np.cumsum(lengths)[:-1])) if n else []
        rows["length"] = lengths
        self.chunks.append(rows)
        return index, offset

    def take(self) -> list:
        """The parts added since the last take() (the header, then frames),
        to be written now; seal() then returns only what follows them."""
        parts, self.parts = self.parts, []
        self._taken = self.size
        return parts

    @property
    def untaken(self) -> int:
        """Bytes added since the last take()."""
        return self.size - self._taken

    def seal(self) -> tuple[bytes, list]:
        """(pack id, parts to write in order, after any taken before).  Reads
        back the footer it built before returning, as restic's packer does."""
        frames = np.array(self.frames, dtype=FRAME_ROW)
        chunks = np.concatenate(self.chunks) if self.chunks else np.empty(0, CHUNK_ROW)
        payload = FOOTER_COUNTS.pack(len(frames), len(chunks)) + frames.tobytes() + chunks.tobytes()
        footer = seal(FOOTER_MAGIC, VERSION, payload)
        pack_id = blake3.blake3(footer).digest()
        parse_footer(footer, "new pack")      # self-check before anything is stored
        trailer = TRAILER.pack(len(footer), PACK_MAGIC, VERSION)
        return pack_id, self.parts + [footer, trailer]


def parse_footer(footer, what: str) -> tuple[np.ndarray, np.ndarray]:
    _, payload = unseal(footer, FOOTER_MAGIC, {VERSION}, f"{what} footer")
    if payload.nbytes < FOOTER_COUNTS.size:
        raise FormatError(f"{what}: footer too short")
    nframes, nchunks = FOOTER_COUNTS.unpack_from(payload)
    need = FOOTER_COUNTS.size + nframes * FRAME_ROW.itemsize + nchunks * CHUNK_ROW.itemsize
    if need != payload.nbytes:
        raise FormatError(f"{what}: footer claims {nframes} frames and {nchunks} chunks "
                          f"({need} bytes), holds {payload.nbytes}")
    off = FOOTER_COUNTS.size
    frames = np.frombuffer(payload, FRAME_ROW, nframes, off)
    chunks = np.frombuffer(payload, CHUNK_ROW, nchunks, off + nframes * FRAME_ROW.itemsize)
    if nframes and (frames["raw_len"].max() > MAX_FRAME_RAW or
                    not np.isin(frames["codec"], list(CODECS)).all()):
        raise FormatError(f"{what}: footer has an invalid frame entry")
    if nchunks and (chunks["frame"].max() >= nframes or
                    (chunks["offset"].astype(np.uint64) + chunks["length"]
                     > frames["raw_len"][chunks["frame"]]).any()):
        raise FormatError(f"{what}: footer has a chunk outside its frame")
    return frames, chunks


def footer_location(pack_size: int, tail, what: str) -> tuple[int, int]:
    """(offset, length) of the footer envelope, from the last TRAILER.size bytes."""
    if len(tail) != TRAILER.size or pack_size < HEADER.size + TRAILER.size + OVERHEAD:
        raise FormatError(f"{what}: too short to be a pack")
    length, magic, version = TRAILER.unpack(tail)
    if magic != PACK_MAGIC:
        raise FormatError(f"{what}: bad pack trailer magic")
    if version != VERSION:
        raise FormatError(f"{what}: unsupported pack version {version}")
    if length > pack_size - HEADER.size - TRAILER.size or length < OVERHEAD:
        raise FormatError(f"{what}: footer length {length} out of range")
    return pack_size - TRAILER.size - length, length


def check_header(head, what: str) -> None:
    if len(head) < HEADER.size:
        raise FormatError(f"{what}: too short to be a pack")
    magic, version = HEADER.unpack_from(head)
    if magic != PACK_MAGIC:
        raise FormatError(f"{what}: bad pack magic")
    if version != VERSION:
        raise FormatError(f"{what}: unsupported pack version {version}")
