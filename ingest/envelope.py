"""The envelope every small stored object is sealed in.

    header   16 bytes  magic(4) version(u8) reserved(u8, 0) reserved(u16, 0) payload_len(u64 LE)
    payload  payload_len bytes
    checksum 16 bytes  first 16 bytes of BLAKE3(header + payload)

Manifests, refs, the store config, index shards and pack footers all use it,
so one parser checks magic, version, every length and the checksum before any
caller sees a byte of payload.  The payload starts at offset 16, which keeps
Arrow buffers inside an index shard 8-byte aligned for zero-copy reads.
"""
from __future__ import annotations

import struct

import blake3

from . import _blake3
from .errors import FormatError, IntegrityError

HEADER = struct.Struct("<4sBBHQ")
CHECKSUM_LEN = 16
OVERHEAD = HEADER.size + CHECKSUM_LEN


def seal(magic: bytes, version: int, payload) -> bytes:
    payload = memoryview(payload).cast("B")
    head = HEADER.pack(magic, version, 0, 0, payload.nbytes)
    h = blake3.blake3(head)
    h.update(payload)
    return b"".join((head, payload, h.digest(CHECKSUM_LEN)))


def unseal(data, magic: bytes, versions: frozenset[int] | set[int], what: str) -> tuple[int, memoryview]:
    """Check an envelope and return (version, payload).  `what` names the
    object in error messages ("manifest 3fa2...")."""
    mv = memoryview(data).cast("B")
    if mv.nbytes < OVERHEAD:
        raise FormatError(f"{what}: truncated ({mv.nbytes} bytes)")
    got_magic, version, _, _, length = HEADER.unpack_from(mv)
    if got_magic != magic:
        raise FormatError(f"{what}: bad magic {bytes(got_magic)!r}, expected {magic!r}")
    if version not in versions:
        raise FormatError(f"{what}: unsupported format version {version} "
                          f"(this build reads {sorted(versions)})")
    if length != mv.nbytes - OVERHEAD:
        raise FormatError(f"{what}: length field says {length} payload bytes, "
                          f"object holds {mv.nbytes - OVERHEAD}")
    body = mv[: HEADER.size + length]
    if blake3.blake3(body).digest(CHECKSUM_LEN) != bytes(mv[HEADER.size + length:]):
        raise IntegrityError(f"{what}: checksum mismatch (object is corrupted)")
    return version, mv[HEADER.size: HEADER.size + length]


def sealed_many(datas: list, magic: bytes, version: int) -> bytes:
    """For each of `datas` (bytes or None), 1 if unseal() with this magic
    and version would accept it, else 0; checked in one native call."""
    return _blake3.sealed_many(datas, magic, version)
