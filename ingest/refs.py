"""Refs: `refs/<name>`, the names people give files.

A ref name is a relative '/'-separated path (a daemon uses
"<namespace>/<path>").  Envelope magic b"IGRF", version 1, payload JSON:
{"file_id": hex, "size": int, "sha256": hex or null (not computed),
"time": unix seconds}.
Refs are the only objects that are overwritten (a new upload under the same
name); they are written last, so a ref never points at a missing manifest.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass

from .envelope import CHECKSUM_LEN, HEADER, seal, sealed_many, unseal
from .errors import FormatError, IngestError, InvalidName
from .hashing import parse_hex_id

MAGIC, VERSION = b"IGRF", 1
PREFIX = "refs/"
MAX_NAME_BYTES = 900          # leaves room for the prefix under S3's 1024-byte key limit
_CONTROL = re.compile("[\x00-\x1f\x7f]")
# The payload exactly as encode() writes it: read without the JSON parser
# (9.1 -> 3.5 us a ref; a tree's re-ingest reads one per file).  Anything
# else, valid JSON or not, goes through json.loads and its checks.
_CANONICAL = re.compile(
    rb'\{"file_id": "([0-9a-f]{64})", "sha256": (?:null|"([0-9a-f]{64})"), '
    rb'"size": (0|[1-9][0-9]*), "time": (-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\}')


def _canonical(data, start: int, end: int) -> re.Match | None:
    """The match of data[start:end] if it is a payload exactly as encode()
    writes it, with a finite time (groups: file id, sha256, size, time),
    else None: the caller then has json.loads decide."""
    m = _CANONICAL.fullmatch(data, start, end)
    return m if m is not None and math.isfinite(float(m.group(4))) else None


def check_name(name: str) -> str:
    """Refuse names that could escape a directory or a namespace."""
    if not isinstance(name, str) or not name:
        raise InvalidName("empty name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidName(f"name longer than {MAX_NAME_BYTES} bytes")
    if name.startswith("/") or "\\" in name:
        raise InvalidName(f"name must be a relative path with '/' separators: {name!r}")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise InvalidName(f"name has an empty, '.' or '..' component: {name!r}")
    if _CONTROL.search(name):
        raise InvalidName(f"name has a control character: {name!r}")
    return name


def key(name: str) -> str:
    return PREFIX + check_name(name)


@dataclass(frozen=True)
class Ref:
    name: str
    file_id: str
    size: int
    sha256: str | None
    time: float

    def encode(self) -> bytes:
        # The fields by hand, sorted: dataclasses.asdict deep-copies each value.
        d = {"file_id": self.file_id, "sha256": self.sha256, "size": self.size, "time": self.time}
        return seal(MAGIC, VERSION, json.dumps(d).encode())

    @classmethod
    def decode(cls, name: str, data) -> "Ref":
        what = f"ref {name}"
        _, payload = unseal(data, MAGIC, {VERSION}, what)
        m = _canonical(payload, 0, payload.nbytes)
        if m is not None:
            fid, sha, size, t = m.groups()
            return cls(name, fid.decode(), int(size), sha and sha.decode(), float(t))
        try:
            d = json.loads(bytes(payload))
            size, t = d["size"], d["time"]
            if (type(size) is not int or not isinstance(t, (int, float)) or isinstance(t, bool)
                    or not math.isfinite(t)):
                raise ValueError("size must be an integer and time a finite number")
            sha = d["sha256"]
            ref = cls(name, str(d["file_id"]), size, None if sha is None else str(sha), float(t))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{what}: malformed ({e})") from None
        if (parse_hex_id(ref.file_id) is None or ref.size < 0
                or (ref.sha256 is not None and parse_hex_id(ref.sha256) is None)):
            raise FormatError(f"{what}: malformed file id, sha256 or size")
        return ref

    @classmethod
    def new(cls, name: str, file_id: bytes, size: int, sha256: bytes | None) -> "Ref":
        return cls(check_name(name), file_id.hex(), size, sha256 and sha256.hex(), time.time())


def names_many(names: list[str], datas: list, fids: list[bytes],
               sha256s: list[bytes | None]) -> list[bool]:
    """For each stored ref (bytes, or None if absent): does it name file
    fids[i], with SHA-256 sha256s[i] when that is given?  What Ref.decode
    and a comparison would say (a damaged or malformed ref names nothing),
    for a batch: the envelopes are checked in one native call and a
    canonical payload is matched without being decoded (4.5 -> ~1.5 us a
    ref; a tree's re-ingest checks one per file)."""
    ok = sealed_many(datas, MAGIC, VERSION)
    out = []
    for name, data, good, fid, sha in zip(names, datas, ok, fids, sha256s):
        if not good:
            out.append(False)      # absent, or unseal() would refuse it
            continue
        m = _canonical(data, HEADER.size, len(data) - CHECKSUM_LEN)
        if m is not None:
            got_fid, got_sha = m.group(1).decode(), m.group(2)
            got_sha = got_sha and got_sha.decode()
        else:                      # not as encode() writes it: the full decoder decides
            try:
                old = Ref.decode(name, data)
            except IngestError:
                out.append(False)
                continue
            got_fid, got_sha = old.file_id, old.sha256
        out.append(got_fid == fid.hex() and (sha is None or got_sha == sha.hex()))
    return out
