"""The dedup index: where each stored chunk lives.

On the store, `index/<id>.arrow` shards are Arrow IPC files (one row per chunk,
sorted by chunk id) sealed in an envelope (magic b"IGIX"), written after the
pack they describe.  Several writers can share a bucket: each writes its own
shards and picks up the others' by listing `index/`.

In memory, `ChunkIndex` keeps sorted runs of (first 8 bytes of id, full id,
location) and answers a whole block's lookups with one vectorized
`searchsorted` per run.  New runs are merged LSM-style, so adding is
amortized O(log n) per chunk.
"""
from __future__ import annotations

import blake3
import numpy as np
# pyarrow looks numpy.ma up when it converts numpy arrays, and numpy imports
# it lazily: 18 ms inside the first shard a process writes (the flush of its
# first upload), not at start-up with everything else.
import numpy.ma  # noqa: F401
import pyarrow as pa

from .compression import CODECS, MAX_FRAME_RAW
from .envelope import seal, unseal
from .errors import FormatError

MAGIC, VERSION = b"IGIX", 1
PREFIX = "index/"

# Where a chunk is: its frame in a pack, and its place inside the raw frame.
LOCATION = np.dtype([("pack", "V32"), ("frame_offset", "<u8"), ("frame_length", "<u4"),
                     ("frame_raw", "<u4"), ("codec", "u1"), ("offset", "<u4"),
                     ("length", "<u4")])

# pack_id is dictionary-encoded (a shard names one pack, or a few once
# merged) and the IPC buffers are zstd-compressed: 90 -> ~40 bytes per row,
# of which 32 are the incompressible chunk id.
SCHEMA = pa.schema([
    ("chunk_id", pa.binary(32)), ("pack_id", pa.dictionary(pa.int32(), pa.binary(32))),
    ("frame_offset", pa.uint64()), ("frame_length", pa.uint32()),
    ("frame_raw_len", pa.uint32()), ("codec", pa.uint8()),
    ("chunk_offset", pa.uint32()), ("chunk_length", pa.uint32()),
], metadata={"format": "ingest-index", "version": str(VERSION)})
_NUMERIC = [("frame_offset", "frame_offset"), ("frame_length", "frame_length"),
            ("frame_raw_len", "frame_raw"), ("codec", "codec"),
            ("chunk_offset", "offset"), ("chunk_length", "length")]


def _fixed(values: np.ndarray) -> pa.Array:
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(values), [None, pa.py_buffer(raw)])


def _fixed_np(col) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise FormatError("index shard has null ids")
    buf = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
    return buf[arr.offset * 32:(arr.offset + len(arr)) * 32].view("V32")


def encode_shard(ids: np.ndarray, locs: np.ndarray) -> tuple[str, bytes]:
    """(key, object bytes) of a shard holding these rows."""
    ids = np.ascontiguousarray(ids).view("V32").reshape(-1)
    # "S32" sorts as memcmp (trailing NULs only pad equal-length values)
    order = np.argsort(ids.view(np.uint8).reshape(-1, 32).view("S32").reshape(-1), kind="stable")
    ids, locs = ids[order], locs[order]
    packs, which = np.unique(locs["pack"], return_inverse=True)
    cols = [_fixed(ids), pa.DictionaryArray.from_arrays(
        pa.array(which.astype(np.int32)), _fixed(packs))]
    cols += [pa.array(locs[src]) for _, src in _NUMERIC]
    table = pa.Table.from_arrays(cols, schema=SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SCHEMA, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    obj = seal(MAGIC, VERSION, sink.getvalue())
    return f"{PREFIX}{blake3.blake3(obj).hexdigest()}.arrow", obj


def decode_shard(data, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids as V32, LOCATION rows) of a shard object."""
    _, payload = unseal(data, MAGIC, {VERSION}, what)
    try:
        table = pa.ipc.open_file(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise FormatError(f"{what}: not a valid Arrow file ({e})") from None
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise FormatError(f"{what}: unexpected columns {table.schema.names}")
    locs = np.empty(table.num_rows, dtype=LOCATION)
    packs = table.column("pack_id").combine_chunks()
    if packs.null_count or len(packs.dictionary) == 0 and len(packs):
        raise FormatError(f"{what}: bad pack ids")
    which = packs.indices.to_numpy()
    if len(which) and (which.min() < 0 or which.max() >= len(packs.dictionary)):
        raise FormatError(f"{what}: pack index out of range")
    locs["pack"] = _fixed_np(packs.dictionary)[which] if len(which) else []
    for col, dst in _NUMERIC:
        locs[dst] = table.column(col).to_numpy()
    if len(locs) and (locs["frame_raw"].max() > MAX_FRAME_RAW
                      or not np.isin(locs["codec"], list(CODECS)).all()
                      or ((locs["offset"].astype(np.uint64) + locs["length"]) > locs["frame_raw"]).any()):
        raise FormatError(f"{what}: invalid row")
    return _fixed_np(table.column("chunk_id")).copy(), locs


def _keys(ids_v32: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids_v32).view(np.uint8).reshape(-1, 32)[:, :8].copy().view("<u8").reshape(-1)


class ChunkIndex:
    """In-memory lookup table of chunk id -> LOCATION."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.shards: set[str] = set()     # shard keys already loaded
        self.version = 0                  # bumped by every add

    def __len__(self) -> int:
        return sum(len(k) for k, _, _ in self._runs)

    def add(self, ids: np.ndarray, locs: np.ndarray) -> None:
        if not len(locs):
            return
        self.version += 1
        ids = np.ascontiguousarray(ids).view("V32").reshape(-1)
        keys = _keys(ids)
        order = np.argsort(keys, kind="stable")
        self._runs.append((keys[order], ids[order], locs[order]))
        # Merge while the newest run is at least half the one before it:
        # O(log n) runs, each row merged O(log n) times.
        while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]):
            b, a = self._runs.pop(), self._runs.pop()
            keys = np.concatenate((a[0], b[0]))
            order = np.argsort(keys, kind="stable")
            self._runs.append((keys[order], np.concatenate((a[1], b[1]))[order],
                               np.concatenate((a[2], b[2]))[order]))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, LOCATION per id; rows where not found are zero)."""
        ids = np.ascontiguousarray(ids).view("V32").reshape(-1)
        n = len(ids)
        found = np.zeros(n, dtype=bool)
        out = np.zeros(n, dtype=LOCATION)
        if not n:
            return found, out
        keys = _keys(ids)
        for rkeys, rids, rlocs in self._runs:
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            pos = np.searchsorted(rkeys, keys[todo])
            # Several ids may share an 8-byte prefix: step through equal keys.
            while len(todo):
                ok = pos < len(rkeys)
                todo, pos = todo[ok], pos[ok]
                same = rkeys[pos] == keys[todo]
                todo, pos = todo[same], pos[same]
                hit = rids[pos] == ids[todo]
                found[todo[hit]] = True
                out[todo[hit]] = rlocs[pos[hit]]
                todo, pos = todo[~hit], pos[~hit] + 1
        return found, out
