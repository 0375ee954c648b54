"""`ingest demo`: the engine's main job on realistic artifacts, end to end.

Makes a model checkpoint, a fine-tune of it and their bf16/fp16 conversions,
three versions of a dataset (JSONL, CSV, Parquet; rows inserted in the middle),
and four versions of an unpacked binary package; ingests them version by
version into the store, restores every file and compares it byte for byte,
runs `verify`, and prints what dedup and compression saved.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

from .artifacts import KINDS, make_corpus
from .progress import human
from .repository import Repository


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


async def run_demo(store: str, *, scale: float = 0.25, workdir: str | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="ingest-demo-") as tmp:
        root = Path(workdir or tmp)
        print(f"store: {store}")
        print(f"making artifacts (scale {scale}) in {root} ...")
        corpora = {k: make_corpus(k, root / k, scale=scale) for k in KINDS if k != "random"}
        async with await Repository.open(store) as repo:
            rows = []
            for kind, paths in corpora.items():
                for path in paths:
                    t = time.perf_counter()
                    results = await repo.put_tree([path])
                    dt = time.perf_counter() - t
                    size = sum(r.size for r in results)
                    new = sum(r.new_bytes for r in results)
                    stored = sum(r.stored_bytes for r in results)
                    rows.append((kind, path.name, size, new, stored, dt))
                    print(f"  {kind:8} {path.name:40} {human(size):>10}  new {human(new):>10}  "
                          f"stored {human(stored):>10}  {size / dt / 1e6:7.0f} MB/s")
            print("restoring and comparing every file ...")
            restored = 0
            for ref in await repo.list_refs():
                local = _find(root, ref.name)
                if local is None:
                    continue
                out = root / ".restored"
                await repo.restore(ref.name, out)
                if _sha256(out) != _sha256(local):
                    print(f"MISMATCH: {ref.name}")
                    return 1
                restored += 1
            print(f"  {restored} files restored byte-exact")
            rep = await repo.verify()
            print(f"verify: {'ok' if rep.ok else 'FAILED'} ({rep.packs} packs, {rep.chunks} chunks)")
            for p in rep.problems:
                print(f"  PROBLEM: {p}")
        total = sum(r[2] for r in rows)
        new = sum(r[3] for r in rows)
        stored = sum(r[4] for r in rows)
        print()
        if stored == 0:
            # A store that already holds every byte (an earlier demo into the
            # default store): dedup took all of it, and a ratio would be silly.
            print(f"input {human(total)}; all of it was already in {store}, nothing new "
                  f"stored (an earlier run? --store DIR starts from an empty one)")
        else:
            print(f"input {human(total)}; new after dedup {human(new)} ({new / total:.1%}); "
                  f"stored after compression {human(stored)} ({stored / total:.1%} of input, "
                  f"{total / stored:.2f}x smaller)")
        return 0 if rep.ok else 1


def _find(root: Path, ref: str) -> Path | None:
    """The local file a demo ref was made from (refs are DIR/relative or NAME)."""
    for kind_dir in root.iterdir():
        p = kind_dir.joinpath(*ref.split("/"))
        if p.is_file():
            return p
    return None
