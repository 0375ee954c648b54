"""Content ids: chunk ids, file ids, and the hex form used in keys.

chunk id = BLAKE3-256(chunk bytes).
file id  = root of a Merkle tree over the ordered (chunk id, length) rows:
    leaf rows   row_i = chunk_id_i (32 bytes) || length_i (u64 LE)
    level 0     node  = BLAKE3(b"\\x00" || row_j || ... )    for each run of FANOUT rows
    level k     node  = BLAKE3(bytes([k]) || child || ...)   for each run of FANOUT children
    root        the single node of the top level (a file with no chunks hashes
                the empty level-0 run)
With FANOUT = 64 a 10 GB file needs ~2,500 BLAKE3 calls for its id, and a
byte range can be verified from its own rows plus a few sibling hashes.
"""
from __future__ import annotations

import re

import blake3
import numpy as np

from . import _blake3

_HEX = re.compile(r"[0-9a-f]+")

ID_LEN = 32
FANOUT = 64
ROW = np.dtype([("id", "V32"), ("length", "<u8")])
if _blake3.FILE_ID_FANOUT != FANOUT:       # file_ids_many builds the same tree natively
    raise ImportError(f"ingest._blake3 was built with a file-id fan-out of "
                      f"{_blake3.FILE_ID_FANOUT}, not {FANOUT}: rebuild it")


def chunk_id(data) -> bytes:
    return blake3.blake3(data).digest()


def chunk_ids(buf, ends: np.ndarray, start: int = 0) -> np.ndarray:
    """BLAKE3-256 of each chunk buf[prev:end] (prev: `start`, then the previous
    end) for the given ends; (len(ends), 32) uint8.

    One native call (ingest._blake3, the official BLAKE3 C code) that hashes
    every chunk with the GIL released, rather than a `blake3` call per chunk
    that hands the GIL over each time.  buf is any C-contiguous buffer; ends
    are non-decreasing byte offsets into it, at least `start`, at most its size
    (ValueError otherwise); an end equal to the previous one is an empty chunk.
    """
    return _blake3.hash_chunks(buf, ends, start)


def chunk_ids_many(bufs: list[bytes], ends: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """chunk_ids of many bytes objects in one native call, with ends and
    counts as chunking.chunk_ends_many returns them: one (n, 32) array of
    every chunk's id, in order."""
    return _blake3.hash_chunks_many(bufs, ends, counts)


def file_ids_many(ids: np.ndarray, lengths: np.ndarray, counts) -> list[bytes]:
    """file_id of many files in one native call: ids (n, 32) and lengths of
    every file's chunks in order, counts the chunks of each file."""
    return _blake3.file_ids_many(ids, lengths, counts)


def first_mismatch(buf, offsets, lengths, ids: np.ndarray) -> int:
    """Index of the first chunk buf[offset:offset + length] whose BLAKE3 is
    not its id (ids: (n, 32) uint8 or V32 rows), or -1 when all match.  One
    native call with the GIL released once (_blake3.hash_spans), not a
    `blake3` call per chunk, each of which gave the GIL up and waited to
    get it back.  A chunk that lies past the end of buf does not match."""
    offsets = np.asarray(offsets, dtype=np.uint64)
    lengths = np.asarray(lengths, dtype=np.uint64)
    want = np.ascontiguousarray(ids).view(np.uint8).reshape(len(offsets), ID_LEN)
    inside = offsets + lengths <= memoryview(buf).nbytes
    if inside.all():
        got = _blake3.hash_spans(buf, offsets, lengths)
        if got.tobytes() == want.tobytes():
            return -1
        bad = (got != want).any(axis=1)
    else:
        bad = ~inside
        bad[inside] = (_blake3.hash_spans(buf, offsets[inside], lengths[inside])
                       != want[inside]).any(axis=1)
    return int(np.flatnonzero(bad)[0])


def file_id(ids: np.ndarray, lengths: np.ndarray) -> bytes:
    """Merkle root over the chunk rows (see module docstring)."""
    if len(lengths) == 1:
        # One row, one leaf: most small files.  The same bytes as below,
        # without building a structured array for them.
        return blake3.blake3(b"\x00" + np.ascontiguousarray(ids, dtype=np.uint8).tobytes()
                             + int(lengths[0]).to_bytes(8, "little")).digest()
    rows = np.empty(len(lengths), dtype=ROW)
    if len(lengths):
        rows["id"] = np.ascontiguousarray(ids, dtype=np.uint8).view("V32").reshape(-1)
        rows["length"] = lengths
    raw = rows.tobytes()
    step = FANOUT * ROW.itemsize
    level = [blake3.blake3(b"\x00" + raw[i:i + step]).digest()
             for i in range(0, max(len(raw), 1), step)]
    k = 1
    while len(level) > 1:
        level = [blake3.blake3(bytes([k]) + b"".join(level[i:i + FANOUT])).digest()
                 for i in range(0, len(level), FANOUT)]
        k += 1
    return level[0]


def parse_hex_id(text: str) -> bytes | None:
    """The 32 bytes of a 64-character hex id, or None if `text` is not one."""
    if len(text) != 2 * ID_LEN or not _HEX.fullmatch(text):
        return None
    return bytes.fromhex(text)
