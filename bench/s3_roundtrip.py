#!/usr/bin/env python3
"""A corpus's whole round trip through SeaweedFS: new, re-ingest, restore.

Starts SeaweedFS on loopback (tests/seaweedfs.py), makes an
ingest.artifacts corpus, and for each round, into a fresh bucket: `put_tree`
of every version (new), the same again (re-ingest: every byte a duplicate),
then one `restore_many` of every file by file id into a fresh directory,
compared byte for byte with the input afterwards (untimed).  Each phase
opens its own Repository, as a new process would; time and this process's
CPU seconds per phase, medians over rounds.

    python bench/s3_roundtrip.py --corpus package --repeat 3
"""
from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ingest  # noqa: E402
from ingest import Repository  # noqa: E402
from ingest.artifacts import make_corpus  # noqa: E402
from ingest.sync import new_event_loop  # noqa: E402
from s3_throughput import _load_seaweedfs  # noqa: E402

PHASES = ("new", "dup", "restore")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def round_trip(url: str, versions: list[pathlib.Path], out: pathlib.Path) -> dict:
    times: dict[str, tuple[float, float]] = {}
    files: list[tuple[str, str]] = []
    for phase in ("new", "dup"):
        c0, t0 = _cpu(), time.perf_counter()
        async with await Repository.open(url) as repo:
            got = []
            for v in versions:
                got += [(r.file_id, r.ref) for r in await repo.put_tree([v], sha256=False)]
        times[phase] = (time.perf_counter() - t0, _cpu() - c0)
        files = got
    items = []
    for fid, ref in files:
        p = out.joinpath(*ref.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        items.append((fid, p))
    c0, t0 = _cpu(), time.perf_counter()
    async with await Repository.open(url, create=False) as repo:
        await repo.restore_many(items)
    times["restore"] = (time.perf_counter() - t0, _cpu() - c0)
    return {"times": times, "files": files}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="package", choices=("model", "dataset", "package"))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=pathlib.Path)
    args = ap.parse_args()
    work = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="ingest-s3rt-"))
    work.mkdir(parents=True, exist_ok=True)
    versions = sorted(make_corpus(args.corpus, work / "corpus", args.scale))
    base = work / "corpus"
    ingest.tune_malloc()
    sw = _load_seaweedfs()
    # A server of its own each run: with --workdir kept between runs, the
    # buckets of the last one were still there (CreateBucket refused).
    weed_dir = pathlib.Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=work))
    weed = sw.SeaweedFS(weed_dir)
    weed.start()
    os.environ.update(weed.env())
    loop = new_event_loop()
    runs: dict[str, list[tuple[float, float]]] = {p: [] for p in PHASES}
    bad = 0
    try:
        for r in range(args.repeat):
            bucket = f"roundtrip-{r}"
            weed.create_bucket(bucket)
            out = work / f"restored-{r}"
            res = loop.run_until_complete(round_trip(f"s3://{bucket}/store", versions, out))
            for p in PHASES:
                runs[p].append(res["times"][p])
            wrong = sum((out / ref).read_bytes() != (base / ref).read_bytes()
                        for _, ref in res["files"])
            shutil.rmtree(out, ignore_errors=True)
            bad += wrong
            print(f"round {r + 1}: " + ", ".join(
                f"{p} {t:.2f} s (cpu {c:.2f})" for p, (t, c) in res["times"].items())
                + f", {len(res['files'])} files, {wrong} differ", flush=True)
    finally:
        loop.close()
        weed.stop()
        shutil.rmtree(weed_dir, ignore_errors=True)
    print(f"{args.corpus} into SeaweedFS, medians of {args.repeat}: " + ", ".join(
        f"{p} {statistics.median(t for t, _ in runs[p]):.2f} s "
        f"(cpu {statistics.median(c for _, c in runs[p]):.2f})" for p in PHASES))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
