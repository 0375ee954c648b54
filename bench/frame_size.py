"""How many consecutive new chunks to compress together (the frame size).

Per-chunk compression (frame = one 64 KiB chunk) keeps range reads cheapest
but gives zstd little context; larger frames store fewer bytes but a range
read decompresses up to a whole frame at each end.  For each frame size this
ingests every corpus of ingest.artifacts into a fresh local store and reports
stored bytes (as a fraction of input) and the median time of random 4 KiB
range reads (`--reads` of them, after a warm-up).

    python bench/frame_size.py --scale 0.5 --sizes 65536,262144,1048576,4194304
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from ingest import Repository, StoreConfig
from ingest.artifacts import KINDS, make_corpus


async def one(kind: str, paths: list[Path], store: Path, frame: int, reads: int) -> dict:
    cfg = StoreConfig(frame_size=frame)
    async with await Repository.open(store, config=cfg) as repo:
        results = []
        for p in paths:
            results += await repo.put_tree([p])
        size = sum(r.size for r in results)
        stored = (await repo.stats())["pack_bytes"]
        rng = random.Random(0)
        big = [r for r in results if r.size > 4096]
        times = []
        for i in range(reads + 10):
            r = rng.choice(big)
            start = rng.randrange(0, r.size - 4096)
            repo._manifests.clear() if i < 10 else None
            t = time.perf_counter()
            await repo.read(r.file_id, start, start + 4096)
            if i >= 10:
                times.append(time.perf_counter() - t)
    return {"kind": kind, "frame": frame, "input": size, "stored": stored,
            "ratio": stored / size, "read_ms": 1000 * statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--sizes", default="262144,524288,1048576,2097152,4194304",
                    help="frame sizes in bytes (>= the 256 KiB max chunk)")
    ap.add_argument("--kinds", default=",".join(k for k in KINDS if k != "random"))
    ap.add_argument("--reads", type=int, default=200)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        tmp = Path(tmp)
        print(f"{'corpus':8} {'frame':>8} {'input MiB':>10} {'stored':>8} {'4K read ms':>11}")
        for kind in args.kinds.split(","):
            paths = make_corpus(kind, tmp / "src" / kind, scale=args.scale)
            for frame in sizes:
                r = asyncio.run(one(kind, paths, tmp / f"store-{kind}-{frame}", frame, args.reads))
                print(f"{kind:8} {frame >> 10:>7}K {r['input'] / 2**20:>10.1f} "
                      f"{r['ratio']:>8.3f} {r['read_ms']:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
