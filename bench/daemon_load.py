#!/usr/bin/env python3
"""Load on the HTTP daemon: many concurrent uploads and downloads from another
process, and the daemon's memory while it serves them.

Starts `ingest serve` (a subprocess, loopback only) on a fresh local store
(or --store s3://..., or --seaweedfs: a SeaweedFS S3 server started on
loopback for the run, tests/seaweedfs.py), then a client process (this script with --client)
that runs, with --clients concurrent connections:

  upload    --uploads files of a size mix (--sizes), a --dup share of them
            exact copies of an earlier one and an --edit share copies with
            one byte changed, streamed in 1 MiB pieces (chunked bodies)
  download  --downloads requests over the uploaded files: a --ranged share
            random byte ranges (64 KiB-4 MiB), the rest whole files, whose
            SHA-256 is checked against the upload's
  mixed     --mixed requests, uploads and downloads interleaved

each bounded by its count and by --duration seconds.  A 503 (too many
uploads in flight) is retried after its Retry-After, as a client should,
and counted.  With --big, one extra upload of that many novel bytes runs
through the upload phase: memory must not grow with the size of an upload.

Reported per phase and operation: requests, failures, 503s, requests/s,
MB/s (MB = 10^6 bytes of file data), latency p50/p95/p99; and the daemon's
RSS: after start, sampled peak (psutil, every 20 ms), and the kernel's
high-water mark (ru_maxrss, from /metrics).

    python bench/daemon_load.py --clients 16 --uploads 200 --downloads 400 --big 2G
    python bench/daemon_load.py --seaweedfs --big 2G
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import pathlib
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ingest.daemon.config import parse_size  # noqa: E402

PIECE = 1 << 20


# -- client process ---------------------------------------------------------------

def body(seed: int, size: int, edit_at: int | None):
    """The bytes of one upload, generated piece by piece (the client holds
    1 MiB of it at a time); the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    pos = 0
    while pos < size:
        n = min(PIECE, size - pos)
        piece = rng.bytes(n)
        if edit_at is not None and pos <= edit_at < pos + n:
            b = bytearray(piece)
            b[edit_at - pos] ^= 0xFF
            piece = bytes(b)
        pos += n
        yield piece


def sha_of(seed: int, size: int, edit_at: int | None) -> str:
    h = hashlib.sha256()
    for p in body(seed, size, edit_at):
        h.update(p)
    return h.hexdigest()


class Stats:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {}
        self.bytes: dict[str, int] = {}
        self.fail: dict[str, int] = {}
        self.busy: dict[str, int] = {}
        self.errors: list[str] = []

    def ok(self, op: str, seconds: float, nbytes: int) -> None:
        self.lat.setdefault(op, []).append(seconds)
        self.bytes[op] = self.bytes.get(op, 0) + nbytes

    def failed(self, op: str, why: str) -> None:
        self.fail[op] = self.fail.get(op, 0) + 1
        if len(self.errors) < 20:
            self.errors.append(f"{op}: {why}")

    def report(self, wall: float) -> dict:
        out = {}
        for op in sorted(set(self.lat) | set(self.fail)):
            lat = np.array(self.lat.get(op, [0.0]))
            n = len(self.lat.get(op, []))
            out[op] = {
                "requests": n, "failed": self.fail.get(op, 0), "busy_503": self.busy.get(op, 0),
                "rps": round(n / wall, 1), "MB_s": round(self.bytes.get(op, 0) / wall / 1e6, 1),
                "MB": round(self.bytes.get(op, 0) / 1e6, 1),
                "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1),
                "p95_ms": round(float(np.percentile(lat, 95)) * 1000, 1),
                "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1),
            }
        return out


async def client_main(p: dict) -> dict:
    import aiohttp
    base = p["url"]
    rnd = random.Random(1)
    sizes = [(parse_size(s), w) for s, w in p["sizes"]]
    deadline = time.monotonic() + p["duration"]
    uploaded: list[dict] = []         # {"name", "size", "sha256"}
    planned: list[tuple] = []         # (seed, size, edit_at) of uploads so far
    next_name = [0]

    def plan_upload() -> tuple[int, int, int | None]:
        r = rnd.random()
        if planned and r < p["dup"]:
            return rnd.choice(planned)
        if planned and r < p["dup"] + p["edit"]:
            seed, size, _ = rnd.choice(planned)
            return seed, size, rnd.randrange(size) if size else None
        size = rnd.choices([s for s, _ in sizes], [w for _, w in sizes])[0]
        t = (len(planned) + 1000, size, None)
        planned.append(t)
        return t

    async def upload(s, st: Stats, op: str, seed: int, size: int, edit_at) -> None:
        name = f"load/u{next_name[0]:06d}"
        next_name[0] += 1

        async def gen():
            for piece in body(seed, size, edit_at):
                yield piece
                await asyncio.sleep(0)
        t0 = time.perf_counter()
        while True:
            try:
                async with s.put(f"{base}/v1/files/{name}", data=gen()) as r:
                    if r.status == 503:
                        st.busy[op] = st.busy.get(op, 0) + 1
                        await r.read()
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        t0 = time.perf_counter()
                        continue
                    doc = await r.json()
                    if r.status not in (200, 201) or doc["size"] != size:
                        st.failed(op, f"{r.status} {doc}")
                        return
            except aiohttp.ClientError as e:
                st.failed(op, repr(e))
                return
            break
        st.ok(op, time.perf_counter() - t0, size)
        uploaded.append({"name": name, "size": size, "sha256": doc["sha256"],
                         "want": sha_of(seed, size, edit_at) if p["check"] else None})
        if p["check"] and doc["sha256"] != uploaded[-1]["want"]:
            st.failed(op + "_sha", name)

    async def download(s, st: Stats) -> None:
        f = rnd.choice(uploaded)
        ranged = rnd.random() < p["ranged"] and f["size"] > 0
        headers = {}
        if ranged:
            n = min(rnd.randint(64 << 10, 4 << 20), f["size"])
            a = rnd.randrange(f["size"] - n + 1)
            headers["Range"] = f"bytes={a}-{a + n - 1}"
        op = "get_range" if ranged else "get_full"
        t0 = time.perf_counter()
        h = hashlib.sha256()
        got = 0
        try:
            async with s.get(f"{base}/v1/files/{f['name']}", headers=headers) as r:
                if r.status == 503:
                    st.busy[op] = st.busy.get(op, 0) + 1
                    await r.read()
                    return
                if r.status != (206 if ranged else 200):
                    st.failed(op, f"{r.status}")
                    return
                async for block in r.content.iter_chunked(1 << 20):
                    got += len(block)
                    if not ranged:
                        h.update(block)
        except aiohttp.ClientError as e:
            st.failed(op, repr(e))
            return
        want = n if ranged else f["size"]
        if got != want or (not ranged and h.hexdigest() != f["sha256"]):
            st.failed(op, f"{f['name']}: wrong bytes")
            return
        st.ok(op, time.perf_counter() - t0, got)

    async def phase(name: str, count: int, job) -> dict:
        st = Stats()
        todo = iter(range(count))
        started = time.time()
        t0 = time.perf_counter()
        conn = aiohttp.TCPConnector(limit=p["clients"])
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            async def worker():
                for i in todo:
                    if time.monotonic() > deadline:
                        return
                    await job(s, st, i)
            await asyncio.gather(*(worker() for _ in range(p["clients"])))
        wall = time.perf_counter() - t0
        return {"phase": name, "seconds": round(wall, 2), "ops": st.report(wall),
                "errors": st.errors, "t0": started, "t1": time.time()}

    async def up_job(s, st, i):
        await upload(s, st, "put", *plan_upload())

    async def down_job(s, st, i):
        await download(s, st)

    async def mixed_job(s, st, i):
        if rnd.random() < 0.3:
            await upload(s, st, "put", *plan_upload())
        else:
            await download(s, st)

    phases = []
    big = None
    if p["big"]:
        async def big_upload():
            st = Stats()
            async with aiohttp.ClientSession() as s:
                await upload(s, st, "put_big", 7, p["big"], None)
            return st.report(1.0)
        big = asyncio.ensure_future(big_upload())
    phases.append(await phase("upload", p["uploads"], up_job))
    if big is not None:
        big_report = await big
        phases[0]["big_upload"] = big_report.get("put_big")
    phases.append(await phase("download", p["downloads"], down_job))
    phases.append(await phase("mixed", p["mixed"], mixed_job))
    return {"phases": phases}


# -- driver ---------------------------------------------------------------------

class Daemon:
    def __init__(self, store: str, extra: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "serve", "--store", store, "--host", "127.0.0.1",
             "--port", "0", *extra], stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.port = None
        self.status: dict[int, int] = {}
        self.problems: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(120) or self.port is None:
            self.stop()
            raise SystemExit(f"daemon did not start: {self.problems}")

    def _read(self) -> None:
        for line in self.proc.stderr:
            try:
                rec = json.loads(line)
            except ValueError:
                self.problems.append(line.rstrip())
                continue
            ev = rec.get("event")
            if ev == "request":
                self.status[rec["status"]] = self.status.get(rec["status"], 0) + 1
            elif ev == "listening":
                self.port = rec["port"]
            elif ev == "ready":
                self._ready.set()
            elif rec.get("level") in ("error", "warning") and ev != "open_access":
                self.problems.append(rec.get("msg", line))
        self._ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class RSSSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        import psutil
        self.p = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self.samples = 0
        self.series: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                rss = self.p.memory_info().rss
            except Exception:       # noqa: BLE001 -- the process ended
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self.series.append((time.time(), rss))
            time.sleep(self.every)


def scrape(port: int) -> dict[str, float]:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\S+) (\S+)$", line)
        if m and not line.startswith("#"):
            out[m.group(1)] = float(m.group(2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="store URL (default: a fresh local directory)")
    ap.add_argument("--seaweedfs", action="store_true",
                    help="start a SeaweedFS S3 server on loopback and use a bucket on it")
    ap.add_argument("--clients", type=int, default=16, help="concurrent connections (16)")
    ap.add_argument("--uploads", type=int, default=200)
    ap.add_argument("--downloads", type=int, default=400)
    ap.add_argument("--mixed", type=int, default=200)
    ap.add_argument("--sizes", default="64K:4,1M:3,8M:2,64M:1",
                    help="upload size mix, SIZE:WEIGHT,... (default 64K:4,1M:3,8M:2,64M:1)")
    ap.add_argument("--dup", type=float, default=0.25, help="share of exact re-uploads (0.25)")
    ap.add_argument("--edit", type=float, default=0.15,
                    help="share of re-uploads with one byte changed (0.15)")
    ap.add_argument("--ranged", type=float, default=0.5, help="share of ranged downloads (0.5)")
    ap.add_argument("--big", default="0", help="one extra upload of this size, e.g. 2G")
    ap.add_argument("--duration", type=float, default=300, help="seconds per run at most (300)")
    ap.add_argument("--no-check", action="store_true", help="skip SHA-256 checks of uploads")
    ap.add_argument("--daemon-args", default="", help="extra `ingest serve` flags, quoted")
    ap.add_argument("--json-out")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        sys.stdout.write(json.dumps(asyncio.run(client_main(json.loads(a.client)))))
        return 0

    tmp = tempfile.mkdtemp(prefix="ingest-load-")
    store = a.store or os.path.join(tmp, "store")
    weed = None
    if a.seaweedfs:
        spec = importlib.util.spec_from_file_location("seaweedfs", ROOT / "tests" / "seaweedfs.py")
        sw = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sw)
        weed = sw.SeaweedFS(os.path.join(tmp, "seaweedfs"), volume_size_limit_mb=1024)
        weed.start()
        os.environ.update(weed.env())             # the daemon inherits them
        weed.create_bucket("load")
        store = "s3://load/store"
    try:
        daemon = Daemon(store, a.daemon_args.split())
    except BaseException:
        if weed:
            weed.stop()
        raise
    try:
        base_rss = RSSSampler(daemon.proc.pid).p.memory_info().rss
        sampler = RSSSampler(daemon.proc.pid)
        sampler.start()
        params = {"url": f"http://127.0.0.1:{daemon.port}", "clients": a.clients,
                  "uploads": a.uploads, "downloads": a.downloads, "mixed": a.mixed,
                  "sizes": [s.split(":") for s in a.sizes.split(",")],
                  "dup": a.dup, "edit": a.edit, "ranged": a.ranged, "big": parse_size(a.big),
                  "duration": a.duration, "check": not a.no_check}
        params["sizes"] = [(s, float(w)) for s, w in params["sizes"]]
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--client", json.dumps(params)],
                             capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            raise SystemExit("client process failed")
        result = json.loads(out.stdout)
        sampler.done.set()
        sampler.join()
        for ph in result["phases"]:
            in_phase = [rss for t, rss in sampler.series if ph["t0"] <= t <= ph["t1"]]
            ph["rss_peak_MiB"] = round(max(in_phase, default=0) / 2**20, 1)
        m = scrape(daemon.port)
    finally:
        code = daemon.stop()
        if weed:
            weed.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result.update({
        "command": " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "store": (f"SeaweedFS {store} on loopback" if weed else
                  store if a.store else "local (fresh directory)"),
        "wall_seconds": round(wall, 1),
        "daemon": {
            "rss_after_start_MiB": round(base_rss / 2**20, 1),
            "rss_peak_sampled_MiB": round(sampler.peak / 2**20, 1),
            "rss_samples": sampler.samples,
            "rss_high_water_MiB": round(m.get("ingest_process_max_resident_memory_bytes", 0)
                                        / 2**20, 1),
            "upload_bytes_in_MB": round(m.get("ingest_upload_bytes_total", 0) / 1e6, 1),
            "new_MB": round(m.get("ingest_upload_new_bytes_total", 0) / 1e6, 1),
            "dedup_MB": round(m.get("ingest_upload_dedup_bytes_total", 0) / 1e6, 1),
            "stored_MB": round(m.get("ingest_upload_stored_bytes_total", 0) / 1e6, 1),
            "responses_by_status": {str(k): v for k, v in sorted(daemon.status.items())},
            "exit_status": code,
            "problems_logged": daemon.problems[:10],
        },
    })
    print_report(result)
    if a.json_out:
        pathlib.Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    bad = sum(op["failed"] for ph in result["phases"] for op in ph["ops"].values())
    return 1 if bad or code else 0


def print_report(r: dict) -> None:
    print(f"# {r['command']}")
    print(f"# {r['machine']}; store: {r['store']}; wall {r['wall_seconds']} s")
    head = f"{'phase':9} {'op':10} {'reqs':>6} {'fail':>5} {'503s':>5} {'req/s':>8} {'MB/s':>8} " \
           f"{'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"
    print(head)
    for ph in r["phases"]:
        for op, s in ph["ops"].items():
            print(f"{ph['phase']:9} {op:10} {s['requests']:>6} {s['failed']:>5} {s['busy_503']:>5} "
                  f"{s['rps']:>8} {s['MB_s']:>8} {s['p50_ms']:>9} {s['p95_ms']:>9} {s['p99_ms']:>9}")
        if ph.get("big_upload"):
            b = ph["big_upload"]
            print(f"{'':9} {'big put':10} {b['requests']:>6} {b['failed']:>5} {'':>5} {'':>8} "
                  f"{'':>8} {b['p50_ms']:>9}  ({b['MB']} MB in one upload)")
        for e in ph["errors"]:
            print(f"  error: {e}")
        print(f"{'':9} daemon RSS peak in this phase: {ph['rss_peak_MiB']} MiB")
    d = r["daemon"]
    print(f"daemon RSS: {d['rss_after_start_MiB']} MiB after start, peak {d['rss_peak_sampled_MiB']} "
          f"MiB sampled ({d['rss_samples']} samples), high-water {d['rss_high_water_MiB']} MiB")
    print(f"bytes: {d['upload_bytes_in_MB']} MB in, {d['new_MB']} MB new, {d['dedup_MB']} MB "
          f"deduplicated, {d['stored_MB']} MB stored; responses {d['responses_by_status']}")
    if d["problems_logged"]:
        print(f"daemon logged: {d['problems_logged']}")


if __name__ == "__main__":
    sys.exit(main())
