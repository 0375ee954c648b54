"""A file's manifest as JSON: where each byte range of it lies in which pack,
so a client can fetch packs from the object store itself.

    {"file_id", "size", "sha256", "start", "end",
     "packs":  [{"id", "key"}],                       key relative to the store root
     "frames": [{"pack", "offset", "length", "raw_length", "codec"}],
     "terms":  [{"frame", "chunks": [lo, hi], "raw_range": [a, b], "file_range": [s, e]}],
     "chunks": {"first", "ids", "lengths"}}           only when asked for

To rebuild bytes [s, e) of a term: range-read [offset, offset + length) of
the frame's pack, check and decode the frame (docs/FORMAT.md, section 6),
and take bytes [a, b) of the raw frame.  Terms are maximal runs of chunks
that are contiguous in one frame, in file order; they cover whole chunks,
so the first and last may reach outside [start, end).  Chunk ids let a
client check every chunk it decodes (BLAKE3-256 of its bytes).
"""
from __future__ import annotations

import numpy as np

from ..compression import CODECS
from ..manifest import Manifest
from ..pipeline import pack_key


def reconstruction(fid: bytes, m: Manifest, start: int, end: int, with_chunks: bool) -> dict:
    end = min(end, m.size)
    ends = m.ends()
    if start < end:
        lo = int(np.searchsorted(ends, start, side="right"))
        hi = int(np.searchsorted(ends, end - 1, side="right")) + 1
    else:
        lo = hi = 0
    c = m.chunks[lo:hi]
    frame = c["frame"].astype(np.int64)
    off = c["offset"].astype(np.int64)
    ln = c["length"].astype(np.int64)
    stops = off + ln
    brk = (frame[1:] != frame[:-1]) | (off[1:] != stops[:-1])
    cuts = np.flatnonzero(brk) + 1
    rs = np.concatenate(([0], cuts)).astype(np.int64) if len(c) else np.empty(0, np.int64)
    re = np.concatenate((cuts, [len(c)])).astype(np.int64) if len(c) else np.empty(0, np.int64)
    file_ends = ends[lo:hi].astype(np.int64)
    file_starts = file_ends - ln
    terms = [{"frame": f, "chunks": [lo + a, lo + b], "raw_range": [ra, rb],
              "file_range": [fa, fb]}
             for f, a, b, ra, rb, fa, fb in zip(
                 frame[rs].tolist(), rs.tolist(), re.tolist(), off[rs].tolist(),
                 stops[re - 1].tolist(), file_starts[rs].tolist(), file_ends[re - 1].tolist())]
    doc = {
        "file_id": fid.hex(),
        "size": m.size,
        "sha256": m.sha256 and m.sha256.hex(),
        "start": min(start, end),
        "end": end,
        "packs": [{"id": p.hex(), "key": pack_key(p)} for p in m.packs],
        "frames": [{"pack": p, "offset": o, "length": n, "raw_length": r,
                    "codec": CODECS.get(k, str(k))}
                   for p, o, n, r, k in zip(m.frames["pack"].tolist(), m.frames["offset"].tolist(),
                                            m.frames["length"].tolist(),
                                            m.frames["raw_len"].tolist(),
                                            m.frames["codec"].tolist())],
        "terms": terms,
    }
    if with_chunks:
        doc["chunks"] = {"first": lo,
                         "ids": [bytes(x).hex() for x in c["id"].tolist()],
                         "lengths": ln.tolist()}
    return doc
