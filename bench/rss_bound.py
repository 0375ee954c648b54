#!/usr/bin/env python3
"""Peak RSS of ingesting (and restoring) one large file: the issue's bound is 1 GiB for 4 GiB.

A file of --gib GiB is written to a temp directory (deleted afterwards), then
a child process ingests it into a fresh local store with the library
(`Repository.open(STORE)`, `put_file(PATH)`) and, unless --no-restore,
another child restores it (`repo.restore(FILE_ID, OUT)`).  Contents (--content):

  random   incompressible bytes: every chunk new, every frame stored raw
  weights  a safetensors file holding one F32 tensor of N(0, 0.02) values:
           every chunk new, frames byte-grouped and zstd-coded (the
           compression path, with its grouping buffers)

Peak RSS is measured two ways and both are reported: the child's own
high-water mark (VmHWM of /proc/self/status, read when it finishes; it
includes the interpreter and imports, whose baseline is shown) and the
maximum of the child's RSS sampled with psutil from the parent every
--interval seconds.  The input file is read through the page cache, which
is not part of any process's RSS.

    python bench/rss_bound.py --gib 4 --json-out rss.json
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve()
LIMIT = 1 << 30        # issue: ingesting a 4 GiB file must not take more than 1 GiB of RSS

_CHILD = r"""
import asyncio, json, sys, time
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
spec = json.loads(sys.argv[1])
from ingest import Repository
if spec.get("tune_malloc"):
    from ingest import tune_malloc       # as `ingest put` and `ingest serve` do: the
    tune_malloc()                        # retained heap counts against the bound
try:
    from ingest.sync import new_event_loop
except ImportError:
    new_event_loop = asyncio.new_event_loop
base = hwm()
async def go():
    t0 = time.perf_counter()
    async with await Repository.open(spec["store"]) as repo:
        if spec["phase"] == "ingest":
            r = await repo.put_file(spec["path"], ref="big")
            out = {"file_id": r.file_id, "size": r.size, "new_bytes": r.new_bytes,
                   "stored_bytes": r.stored_bytes}
        else:
            out = {"size": await repo.restore(spec["file_id"], spec["path"])}
    out["seconds"] = time.perf_counter() - t0
    return out
loop = new_event_loop()
out = loop.run_until_complete(go())
loop.close()
out.update(rss_base=base, rss_peak=hwm())
print("@@RESULT@@" + json.dumps(out))
"""


def write_input(path: pathlib.Path, content: str, nbytes: int, seed: int) -> int:
    """Write `nbytes` of `content` to `path` in 64 MiB blocks; returns the size written."""
    import numpy as np
    rng = np.random.default_rng(seed)
    block = 64 << 20
    with open(path, "wb") as f:
        left = nbytes
        if content == "weights":
            n = (nbytes - 4096) // 4
            header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
            header += b" " * (-(8 + len(header)) % 8)
            f.write(len(header).to_bytes(8, "little") + header)
            left = 4 * n
        while left > 0:
            k = min(block, left)
            if content == "random":
                f.write(rng.bytes(k))
            else:
                f.write((rng.standard_normal(k // 4, dtype=np.float32) * np.float32(0.02)).tobytes())
            left -= k
    return path.stat().st_size


TUNE_MALLOC = True


def run_child(spec: dict, interval: float) -> dict:
    import psutil
    spec = dict(spec, tune_malloc=TUNE_MALLOC)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(HERE.parent.parent))
    ps = psutil.Process(proc.pid)
    sampled = 0
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            sampled = max(sampled, ps.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(interval)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or "@@RESULT@@" not in out:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    res = json.loads(out.rsplit("@@RESULT@@", 1)[1])
    res.update(rss_sampled_max=sampled, wall_seconds=wall)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=4.0, help="file size in GiB (default 4)")
    ap.add_argument("--content", default="random,weights", help="comma-separated: random, weights")
    ap.add_argument("--no-restore", action="store_true", help="measure ingest only")
    ap.add_argument("--interval", type=float, default=0.02, help="psutil sampling interval, seconds")
    ap.add_argument("--workdir", default=None, help="where the file and the store go (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tune-malloc", action="store_true",
                    help="keep glibc's allocator defaults in the child (the CLI tunes them)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    global TUNE_MALLOC
    TUNE_MALLOC = not args.no_tune_malloc
    nbytes = int(args.gib * (1 << 30))
    results = {"bytes": nbytes, "limit": LIMIT, "runs": {}}
    failed = False
    print(f"peak RSS of ingesting one {nbytes / 2**30:.2f} GiB file (limit {LIMIT / 2**30:.0f} GiB)")
    head = (f"{'content':8} {'phase':8} {'MB/s':>7} {'VmHWM MiB':>10} {'sampled MiB':>12} "
            f"{'base MiB':>9}  ok")
    print(head)
    print("-" * len(head))
    for content in [c for c in args.content.split(",") if c]:
        if content not in ("random", "weights"):
            ap.error(f"unknown content {content!r}")
        work = pathlib.Path(tempfile.mkdtemp(prefix="ingest-rss-", dir=args.workdir))
        try:
            src = work / f"big-{content}.bin"
            t0 = time.perf_counter()
            size = write_input(src, content, nbytes, args.seed)
            gen = time.perf_counter() - t0
            store = work / "store"
            runs = {}
            r = run_child({"phase": "ingest", "store": str(store), "path": str(src)}, args.interval)
            runs["ingest"] = r
            if not args.no_restore:
                out = work / "restored.bin"
                rr = run_child({"phase": "restore", "store": str(store), "path": str(out),
                                "file_id": r["file_id"]}, args.interval)
                rr["size_ok"] = out.stat().st_size == size
                out.unlink()
                runs["restore"] = rr
            for phase, x in runs.items():
                peak = max(x["rss_peak"], x["rss_sampled_max"])
                x["ok"] = peak <= LIMIT
                failed |= not x["ok"]
                print(f"{content:8} {phase:8} {size / x['seconds'] / 1e6:7.0f} {x['rss_peak'] / 2**20:10.0f} "
                      f"{x['rss_sampled_max'] / 2**20:12.0f} {x['rss_base'] / 2**20:9.0f}  "
                      f"{'PASS' if x['ok'] else 'FAIL'}", flush=True)
            results["runs"][content] = {"file_bytes": size, "generate_seconds": gen, **runs}
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
