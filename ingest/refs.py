"""Refs: `refs/<name>`, the names people give files, and trees.

A ref name is a relative '/'-separated path (a daemon uses
"<namespace>/<path>").  Envelope magic b"IGRF", version 1, payload JSON:
{"file_id": hex, "size": int, "sha256": hex or null (not computed),
"time": unix seconds}.
Refs are the only objects that are overwritten (a new upload under the same
name); they are written last, so a ref never points at a missing manifest.

A tree ref (IGRF version 2, payload JSON {"tree": hex, "files": int,
"size": int, "time": unix seconds}) names a whole directory at once: the
names NAME/PATH of every entry of the tree object `trees/<hex>` (magic
b"IGTR", version 1; `Tree`), which lists each file's path below NAME, file
id, size and SHA-256.  A put_tree of a directory writes one tree and one
tree ref instead of a ref per file.  A name resolves to the first ref
object found from the name itself up through its ancestors (deepest
first): a file ref there is the file, a tree ref there has the entry or
nothing (docs/FORMAT.md section 9).
"""
from __future__ import annotations

import json
import math
import re
import struct
import time
from dataclasses import dataclass

import blake3

from .envelope import CHECKSUM_LEN, HEADER, seal, sealed_many, unseal
from .errors import FormatError, IngestError, IntegrityError, InvalidName
from .hashing import parse_hex_id

MAGIC, VERSION = b"IGRF", 1
TREE_REF_VERSION = 2
PREFIX = "refs/"
TREE_MAGIC, TREE_VERSION = b"IGTR", 1
TREES_PREFIX = "trees/"
MAX_TREE_FILES = 1 << 24      # entries a tree may hold (a decoder's bound)
MAX_INLINE_MANIFEST = 64 << 10  # the largest manifest a tree entry may carry
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
        """A file ref; a tree ref here is a FormatError (decode_ref reads either)."""
        got = decode_ref(name, data)
        if isinstance(got, TreeRef):
            raise FormatError(f"ref {name}: is a tree of {got.files} files, not a file")
        return got

    @classmethod
    def _decode_v1(cls, name: str, payload: memoryview) -> "Ref":
        what = f"ref {name}"
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


@dataclass(frozen=True)
class TreeRef:
    """`refs/<name>` naming a tree: every NAME/PATH of its entries."""
    name: str
    tree_id: str          # hex
    files: int
    size: int             # bytes of all its files
    time: float

    def encode(self) -> bytes:
        d = {"files": self.files, "size": self.size, "time": self.time, "tree": self.tree_id}
        return seal(MAGIC, TREE_REF_VERSION, json.dumps(d).encode())

    @classmethod
    def _decode_v2(cls, name: str, payload: memoryview) -> "TreeRef":
        what = f"ref {name}"
        try:
            d = json.loads(bytes(payload))
            files, size, t = d["files"], d["size"], d["time"]
            if (type(files) is not int or type(size) is not int
                    or not isinstance(t, (int, float)) or isinstance(t, bool)
                    or not math.isfinite(t)):
                raise ValueError("files and size must be integers and time a finite number")
            ref = cls(name, str(d["tree"]), files, size, float(t))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{what}: malformed tree ref ({e})") from None
        if parse_hex_id(ref.tree_id) is None or files < 0 or size < 0:
            raise FormatError(f"{what}: malformed tree id, file count or size")
        return ref


def decode_ref(name: str, data) -> "Ref | TreeRef":
    """The ref object at `refs/<name>`: a file ref (version 1) or a tree
    ref (version 2)."""
    version, payload = unseal(data, MAGIC, {VERSION, TREE_REF_VERSION}, f"ref {name}")
    if version == TREE_REF_VERSION:
        return TreeRef._decode_v2(name, payload)
    return Ref._decode_v1(name, payload)


def tree_key(tree_id: bytes) -> str:
    return TREES_PREFIX + tree_id.hex()


@dataclass(frozen=True)
class TreeEntry:
    path: str                  # below the tree's name, '/'-separated
    file_id: bytes
    size: int
    sha256: bytes | None
    manifest: bytes | None = None   # the file's manifest object (IGFM), kept in the tree


_ENTRY = struct.Struct("<H")
_ENTRY_TAIL = struct.Struct("<32sQB")


class Tree:
    """A directory's files, sorted by path (UTF-8 bytes).  Payload: u32
    count, then per entry u16 path length, the path, the 32-byte file id,
    u64 size, u8 flags (1: a SHA-256 follows; 2: a manifest follows),
    [32-byte SHA-256], [u32 length, the manifest object].  Its id is
    BLAKE3-256 of the whole sealed object.  A small file's manifest lives
    in its tree rather than at `files/<id>` (docs/FORMAT.md 9.2)."""

    def __init__(self, entries: list[TreeEntry]) -> None:
        self.entries = entries
        self._by_path: dict[str, TreeEntry] | None = None

    @classmethod
    def of(cls, entries) -> "Tree":
        """From unsorted entries; a path given twice is an error."""
        items = sorted(entries, key=lambda e: e.path.encode("utf-8", "surrogatepass"))
        for a, b in zip(items, items[1:]):
            if a.path == b.path:
                raise InvalidName(f"a tree lists {a.path!r} twice")
        return cls(items)

    def get(self, path: str) -> TreeEntry | None:
        if self._by_path is None:
            self._by_path = {e.path: e for e in self.entries}
        return self._by_path.get(path)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def encode(self) -> bytes:
        if len(self.entries) > MAX_TREE_FILES:
            raise InvalidName(f"a tree holds at most {MAX_TREE_FILES} files, "
                              f"not {len(self.entries)}")
        parts = [struct.pack("<I", len(self.entries))]
        for e in self.entries:
            p = e.path.encode("utf-8", "surrogatepass")
            flags = (1 if e.sha256 else 0) | (2 if e.manifest else 0)
            parts += [_ENTRY.pack(len(p)), p, _ENTRY_TAIL.pack(e.file_id, e.size, flags)]
            if e.sha256:
                parts.append(e.sha256)
            if e.manifest:
                if len(e.manifest) > MAX_INLINE_MANIFEST:
                    raise ValueError(f"a manifest of {len(e.manifest)} bytes is kept in "
                                     f"files/, not in a tree")
                parts += [struct.pack("<I", len(e.manifest)), e.manifest]
        return seal(TREE_MAGIC, TREE_VERSION, b"".join(parts))

    @staticmethod
    def id_of(data) -> bytes:
        return blake3.blake3(data).digest()

    @classmethod
    def decode(cls, data, what: str, tree_id: bytes | None = None) -> "Tree":
        """Check and read a tree object; with `tree_id`, its content must
        hash to it (IntegrityError otherwise)."""
        if tree_id is not None and cls.id_of(data) != tree_id:
            raise IntegrityError(f"{what}: content does not match its id (corrupted)")
        _, payload = unseal(data, TREE_MAGIC, {TREE_VERSION}, what)
        mv = payload
        n_bytes = mv.nbytes
        if n_bytes < 4:
            raise FormatError(f"{what}: truncated")
        (count,) = struct.unpack_from("<I", mv, 0)
        # Each entry takes at least 2 + 1 + 41 bytes: a count the payload
        # cannot hold is refused before anything is allocated for it.
        if count > MAX_TREE_FILES or count * 44 > n_bytes - 4:
            raise FormatError(f"{what}: claims {count} entries in {n_bytes} bytes")
        entries = []
        pos, prev = 4, None
        try:
            for _ in range(count):
                (ln,) = _ENTRY.unpack_from(mv, pos)
                pos += 2
                raw = bytes(mv[pos:pos + ln])
                if len(raw) != ln:
                    raise FormatError(f"{what}: truncated entry")
                pos += ln
                fid, size, flags = _ENTRY_TAIL.unpack_from(mv, pos)
                pos += _ENTRY_TAIL.size
                sha = manifest = None
                if flags & 1:
                    sha = bytes(mv[pos:pos + 32])
                    if len(sha) != 32:
                        raise FormatError(f"{what}: truncated entry")
                    pos += 32
                if flags & 2:
                    (mlen,) = struct.unpack_from("<I", mv, pos)
                    pos += 4
                    if mlen > MAX_INLINE_MANIFEST or pos + mlen > n_bytes:
                        raise FormatError(f"{what}: a manifest of {mlen} bytes does not fit")
                    manifest = bytes(mv[pos:pos + mlen])
                    pos += mlen
                if flags & ~3:
                    raise FormatError(f"{what}: unknown entry flags {flags:#x}")
                if prev is not None and raw <= prev:
                    raise FormatError(f"{what}: entries not sorted or repeated")
                prev = raw
                path = raw.decode("utf-8")
                check_name(path)
                entries.append(TreeEntry(path, fid, size, sha, manifest))
        except struct.error:
            raise FormatError(f"{what}: truncated entry") from None
        except UnicodeDecodeError:
            raise FormatError(f"{what}: a path is not UTF-8") from None
        except InvalidName as e:
            raise FormatError(f"{what}: bad path ({e})") from None
        if pos != n_bytes:
            raise FormatError(f"{what}: {n_bytes - pos} bytes after the last entry")
        return cls(entries)


def ancestors(name: str) -> list[str]:
    """The names above `name`, deepest first: a/b/c -> [a/b, a]."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


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
