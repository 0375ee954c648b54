#!/usr/bin/env python3
"""End to end: ingest, re-ingest and restore speed, stored bytes and peak RSS, ours against hf_xet.

For each corpus kind of ingest.artifacts (model, dataset, package, random) the
corpus is generated once; then, for each repetition, each tool gets a fresh
local store and runs three phases, each in its own Python process:

  new      ingest every version, in version order, one call per version
           (the first time these bytes are seen: "new data", although later
           versions of a corpus dedup against earlier ones, as on a hub)
  dup      ingest every version again into the same store (all duplicate)
  restore  write every file of every version back to a fresh directory

Tools:
  ingest  our library in the child: Repository.open(STORE), put_tree([VERSION],
          sha256=S) per version (new, dup); repo.restore_many([(file_id, PATH), ...])
          for all files in one call (restore).
  hf_xet  hf_xet.upload_files(FILES_OF_VERSION, "local://STORE", ..., skip_sha256=not S)
          per version (new, dup); hf_xet.download_files([PyXetDownloadInfo(PATH, HASH,
          SIZE)...], "local://STORE", ...) for all files in one call (restore).
  borg    (stored bytes only, one run per corpus) `borg create --compression zstd,3`,
          one archive per version, as bench/stored_bytes.py.

Both tools do the same hashing: --sha256 skip (the default; S=False) has
neither compute the files' SHA-256, as a hub that already holds the
client's LFS oids runs them (huggingface_hub hands hf_xet the sha256s it
computed earlier); --sha256 compute has both compute it (S=True, each tool's
own default).

Before each child the parent calls sync(), so that no tool pays for the
write-back of another's (or the corpus generator's) unsynced data, and reads
what the child will read (the corpus for new and dup, the tool's own store
for restore) into the page cache: a hub ingests uploads from memory, and
this VM's DAMON pages out page cache untouched for a minute, so otherwise a
phase sometimes read from the disk at 13-27 ms per 8 MiB and sometimes not.

Time is measured inside the child, around the work only: interpreter start-up
and imports are excluded; opening the store (ours, and our index load,
which the first write does; hf_xet's session set-up inside its call) is
included.  The child's wall time from
the parent is kept in the JSON too.  MB/s = input bytes (all versions,
10^6 bytes per MB) / seconds.  Peak RSS is the child's own
peak (VmHWM, the high-water mark of its own address space; ru_maxrss
would include the parent's RSS at the fork), so it includes the
interpreter and the imported libraries (their baseline is reported too).  Stored bytes are the
apparent size of every file under the store directory after `new`.

Tools are interleaved phase by phase (ours new, hf_xet new, ours dup, ...,
the order flipped every repetition) so that noise on a shared machine hits
both; figures are medians over --repeat.  Ratios are the figures to trust.

    python bench/e2e.py --scale 1.0 --repeat 3 --json-out e2e.json
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TOOLS = ("ingest", "hf_xet")
PHASES = ("new", "dup", "restore")
# "Done when" targets of the issue: ours/hf_xet for speeds (at least), ours/min(hf_xet, borg)
# for stored bytes (at most).
TARGETS = {"new": 2.0, "dup": 1.5, "restore": 2.0}


# -- the child: one tool, one phase ----------------------------------------------

def _maxrss() -> int:
    """Peak RSS of this process in bytes.

    VmHWM of /proc/self/status: the high-water mark of this process's own
    address space.  getrusage's ru_maxrss is not used where VmHWM exists:
    Linux carries it across fork and exec, so a child reports at least the
    parent's RSS at the fork.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


def _cpu() -> float:
    """User + system CPU seconds of this process, all threads."""
    t = os.times()
    return t.user + t.system


def _faults() -> int:
    """Minor page faults of this process so far, all threads: pages it
    touched first (heap, page cache it mapped), which bench/machine.py
    prices for this machine."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child_ingest_ours(spec: dict) -> dict:
    import asyncio

    from ingest import Repository
    try:
        from ingest.sync import new_event_loop
    except ImportError:                               # pragma: no cover
        new_event_loop = asyncio.new_event_loop

    async def go():
        c0, f0, t0 = _cpu(), _faults(), time.perf_counter()
        config = None
        if spec.get("zstd_level") is not None:
            from ingest.config import StoreConfig
            config = StoreConfig(zstd_level=spec["zstd_level"])
        repo = await Repository.open(spec["store"], config=config)
        t_open = time.perf_counter() - t0
        files = []
        try:
            for batch in spec["batches"]:
                for r in await repo.put_tree(batch, sha256=spec["sha256"]):
                    files.append({"ref": r.ref, "file_id": r.file_id, "size": r.size,
                                  "new_bytes": r.new_bytes})
        finally:
            await repo.close()
        return time.perf_counter() - t0, _cpu() - c0, _faults() - f0, t_open, files

    base = _maxrss()
    loop = new_event_loop()
    try:
        seconds, cpu, faults, t_open, files = loop.run_until_complete(go())
    finally:
        loop.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "minor_faults": faults,
            "open_seconds": t_open, "files": files,
            "new_bytes": sum(f["new_bytes"] for f in files), "rss_base": base}


def child_restore_ours(spec: dict) -> dict:
    import asyncio

    from ingest import Repository
    try:
        from ingest.sync import new_event_loop
    except ImportError:                               # pragma: no cover
        new_event_loop = asyncio.new_event_loop

    async def go():
        c0, f0, t0 = _cpu(), _faults(), time.perf_counter()
        repo = await Repository.open(spec["store"], create=False)
        dirs = {os.path.dirname(f["out"]) for f in spec["files"]}
        try:
            for d in dirs:
                os.makedirs(d, exist_ok=True)
            n = sum(await repo.restore_many([(f["file_id"], f["out"]) for f in spec["files"]]))
        finally:
            await repo.close()
        return time.perf_counter() - t0, _cpu() - c0, _faults() - f0, n

    base = _maxrss()
    loop = new_event_loop()
    try:
        seconds, cpu, faults, n = loop.run_until_complete(go())
    finally:
        loop.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "minor_faults": faults, "bytes": n,
            "rss_base": base}


def child_ingest_hf_xet(spec: dict) -> dict:
    import hf_xet
    base = _maxrss()
    endpoint = "local://" + spec["store"]
    files = []
    c0, f0, t0 = _cpu(), _faults(), time.perf_counter()
    for batch in spec["batches"]:
        infos = hf_xet.upload_files(batch, endpoint, None, None, None, "model",
                                    skip_sha256=not spec["sha256"])
        files += [{"path": p, "hash": i.hash, "size": i.file_size} for p, i in zip(batch, infos)]
    seconds, cpu, faults = time.perf_counter() - t0, _cpu() - c0, _faults() - f0
    return {"seconds": seconds, "cpu_seconds": cpu, "minor_faults": faults, "files": files,
            "rss_base": base}


def child_restore_hf_xet(spec: dict) -> dict:
    import hf_xet
    base = _maxrss()
    c0, f0, t0 = _cpu(), _faults(), time.perf_counter()
    dirs = {os.path.dirname(f["out"]) for f in spec["files"]}
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    infos = [hf_xet.PyXetDownloadInfo(f["out"], f["hash"], f["size"]) for f in spec["files"]]
    hf_xet.download_files(infos, "local://" + spec["store"], None, None, None)
    seconds, cpu, faults = time.perf_counter() - t0, _cpu() - c0, _faults() - f0
    return {"seconds": seconds, "cpu_seconds": cpu, "minor_faults": faults,
            "bytes": sum(f["size"] for f in spec["files"]), "rss_base": base}


CHILDREN = {("ingest", "ingest"): child_ingest_ours, ("ingest", "restore"): child_restore_ours,
            ("hf_xet", "ingest"): child_ingest_hf_xet, ("hf_xet", "restore"): child_restore_hf_xet}


def _busy_thread() -> None:
    """A thread that runs Python bytecode nonstop (--busy-thread), as a
    host's CPU-bound thread or a busy event loop of a hub backend that
    embeds the library does: any other thread that gives up the GIL then
    waits up to the interpreter's switch interval (5 ms) to take it back."""
    import threading

    def spin():
        n = 0
        while True:
            n += 1

    threading.Thread(target=spin, name="busy", daemon=True).start()


def child_main() -> int:
    spec = json.loads(sys.stdin.read())
    if spec.get("busy_thread"):
        _busy_thread()
    if spec["tool"] == "ingest" and spec.get("tune_malloc"):
        from ingest import tune_malloc       # as `ingest put` and `ingest serve` do
        tune_malloc()
    out = CHILDREN[(spec["tool"], spec["kind"])](spec)
    out["rss_peak"] = _maxrss()
    sys.stdout.write("\n@@RESULT@@" + json.dumps(out) + "\n")
    return 0


# -- the parent ----------------------------------------------------------------------

class ToolError(RuntimeError):
    pass


TUNE_MALLOC = True       # --no-tune-malloc: our children keep glibc's defaults
SHA256 = False           # --sha256 compute: both tools compute every file's SHA-256
BUSY_THREAD = False      # --busy-thread: each child runs a thread of Python bytecode beside the work
ZSTD_LEVEL = None        # --zstd-level: our stores are created at this level (default: StoreConfig's)


def run_child(spec: dict, scratch: pathlib.Path) -> dict:
    spec = dict(spec, tune_malloc=TUNE_MALLOC, sha256=SHA256, busy_thread=BUSY_THREAD,
                zstd_level=ZSTD_LEVEL)
    env = dict(os.environ)
    # keep hf_xet's logs and caches out of $HOME and out of the measured store
    env.update(HF_HOME=str(scratch / "hf_home"), HF_XET_CACHE=str(scratch / "hf_xet_cache"),
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    # Start every child with no dirty pages: otherwise the previous child's
    # unsynced writes (hf_xet's store, a restore's files, a corpus just
    # generated) are written back during this one, costing it CPU, and an
    # fsync in it (ours, per object) also waits for them (ext4 ordered mode).
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--child"],
                          input=json.dumps(spec), capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-10:]
        raise ToolError(f"{spec['tool']} {spec['kind']}: exit {proc.returncode}\n    " + "\n    ".join(tail))
    out = json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])
    out["wall_seconds"] = wall
    return out


def warm(paths) -> None:
    """Read files into the page cache (see the module docstring)."""
    buf = bytearray(8 << 20)
    for p in paths:
        try:
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        except OSError:
            pass


def tree_files(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def dir_bytes(path: pathlib.Path) -> int:
    """Apparent size (st_size) of every regular file under `path`, as bench/stored_bytes.py."""
    return dir_usage(path)[0]


def dir_usage(path: pathlib.Path) -> tuple[int, int]:
    """(apparent bytes, regular files) under `path`: on an object store each
    file would be an object, a PUT to write it (capacity planning)."""
    total = count = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                count += 1
    return total, count


def same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


class Corpus:
    def __init__(self, kind: str, root: pathlib.Path, versions: list[pathlib.Path]):
        self.kind, self.root, self.versions = kind, root, versions
        self.files = [[f for f in tree_files(v)] for v in versions]      # per version
        self.input_bytes = sum(f.stat().st_size for fs in self.files for f in fs)
        self.n_files = sum(len(fs) for fs in self.files)


def run_phase(tool: str, phase: str, corpus: Corpus, store: pathlib.Path, scratch: pathlib.Path,
              state: dict, verify: bool) -> dict:
    """One tool, one phase, in a child; `state` carries what `new` returned to `restore`."""
    if phase in ("new", "dup"):
        warm([f for fs in corpus.files for f in fs])
        if tool == "ingest":
            batches = [[str(v)] for v in corpus.versions]
        else:
            batches = [[str(f) for f in fs] for fs in corpus.files]
        out = run_child({"tool": tool, "kind": "ingest", "store": str(store), "batches": batches}, scratch)
        if phase == "new":
            state["files"] = out["files"]
        out.pop("files", None)
        return out
    # restore: every file of every version, to out/<path relative to the corpus root>
    out_dir = scratch / "restored"
    shutil.rmtree(out_dir, ignore_errors=True)
    srcs = [f for fs in corpus.files for f in fs]
    files = []
    if tool == "ingest":
        by_ref = {f["ref"]: f for f in state["files"]}
        for v, fs in zip(corpus.versions, corpus.files):
            for f in fs:
                ref = f.name if v.is_file() else "/".join((v.name,) + f.relative_to(v).parts)
                files.append({"file_id": by_ref[ref]["file_id"],
                              "out": str(out_dir / f.relative_to(corpus.root))})
    else:
        by_path = {f["path"]: f for f in state["files"]}
        for f in srcs:
            r = by_path[str(f)]
            files.append({"hash": r["hash"], "size": r["size"], "out": str(out_dir / f.relative_to(corpus.root))})
    warm(tree_files(store))
    try:
        out = run_child({"tool": tool, "kind": "restore", "store": str(store), "files": files},
                        scratch)
        if verify:
            bad = [str(f) for f in srcs if not same_file(f, out_dir / f.relative_to(corpus.root))]
            if bad:
                raise ToolError(f"{tool} restore: {len(bad)} files differ from their source, e.g. {bad[0]}")
            out["verified"] = True
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return out          # out_dir goes with its repetition's directory (see bench_corpus)


def bench_corpus(corpus: Corpus, tools: list[str], work: pathlib.Path, repeat: int, verify: bool,
                 log) -> dict:
    runs: dict[str, dict[str, list[dict]]] = {t: {p: [] for p in PHASES} for t in tools}
    stored: dict[str, list[int]] = {t: [] for t in tools}
    stored_after_dup: dict[str, list[int]] = {t: [] for t in tools}
    objects: dict[str, list[int]] = {t: [] for t in tools}
    errors: dict[str, str] = {}
    # Directories are deleted only when the corpus is done: ext4 skips inodes
    # freed in the last ~30 s when it allocates one (recently_deleted), so
    # creating thousands of small objects right after deleting the last
    # repetition's store scanned past thousands of them (perf: 19% of our
    # package `new` pass) -- a cost only the tool that writes a file per
    # object pays, and not one a long-running store sees.
    done_dirs: list[pathlib.Path] = []
    for r in range(repeat):
        order = tools if r % 2 == 0 else tools[::-1]
        dirs = {}
        for t in tools:
            d = work / f"{corpus.kind}-{t}-{r}"
            (d / "scratch").mkdir(parents=True)
            dirs[t] = (d / "store", d / "scratch")
        state: dict[str, dict] = {t: {} for t in tools}
        try:
            for phase in PHASES:
                for t in order:
                    if t in errors:
                        continue
                    store, scratch = dirs[t]
                    try:
                        out = run_phase(t, phase, corpus, store, scratch, state[t], verify)
                    except ToolError as e:
                        errors[t] = str(e)
                        log(f"  {t:7} {phase:8} FAILED: {e}")
                        continue
                    runs[t][phase].append(out)
                    if phase == "new":
                        nbytes, nfiles = dir_usage(store)
                        stored[t].append(nbytes)
                        objects[t].append(nfiles)
                    elif phase == "dup":
                        stored_after_dup[t].append(dir_bytes(store))
                    log(f"  rep {r + 1} {t:7} {phase:8} {out['seconds']:7.2f} s "
                        f"{corpus.input_bytes / out['seconds'] / 1e6:8.1f} MB/s  "
                        f"cpu {out['cpu_seconds']:6.2f} s  "
                        f"faults {out.get('minor_faults', 0):7d}  "
                        f"peak RSS {out['rss_peak'] / 2**20:7.1f} MiB")
        finally:
            done_dirs += [dirs[t][0].parent for t in tools]
    for d in done_dirs:
        shutil.rmtree(d, ignore_errors=True)
    res = {}
    for t in tools:
        if t in errors:
            res[t] = {"error": errors[t]}
            continue
        tr = {}
        for p in PHASES:
            secs = [o["seconds"] for o in runs[t][p]]
            med = statistics.median(secs)
            tr[p] = {"seconds_median": med, "seconds_all_runs": secs,
                     "mb_per_s": corpus.input_bytes / med / 1e6,
                     "wall_seconds_all_runs": [o["wall_seconds"] for o in runs[t][p]],
                     "cpu_seconds_median": statistics.median(o["cpu_seconds"] for o in runs[t][p]),
                     "cpu_seconds_all_runs": [o["cpu_seconds"] for o in runs[t][p]],
                     "minor_faults_all_runs": [o.get("minor_faults") for o in runs[t][p]],
                     "rss_peak_max": max(o["rss_peak"] for o in runs[t][p]),
                     "rss_base": max(o["rss_base"] for o in runs[t][p])}
            if t == "ingest" and p != "restore":
                tr[p]["open_seconds_all_runs"] = [o["open_seconds"] for o in runs[t][p]]
                tr[p]["new_bytes"] = runs[t][p][-1]["new_bytes"]
        tr["stored_bytes"] = sorted(stored[t])[(len(stored[t]) - 1) // 2]
        tr["stored_bytes_all_runs"] = stored[t]
        tr["stored_bytes_after_dup_all_runs"] = stored_after_dup[t]
        tr["stored_objects"] = sorted(objects[t])[(len(objects[t]) - 1) // 2]
        res[t] = tr
    return res


def bench_borg(corpus: Corpus, work: pathlib.Path) -> dict:
    exe = shutil.which("borg")
    if not exe:
        return {"error": "borg not found (apt-get install -y borgbackup)"}
    d = work / f"{corpus.kind}-borg"
    store = d / "repo"
    d.mkdir(parents=True)
    env = dict(os.environ)
    env.update(BORG_BASE_DIR=str(d / "base"), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_PASSPHRASE="")
    try:
        p = subprocess.run([exe, "init", "-e", "none", str(store)], env=env, capture_output=True, text=True)
        if p.returncode:
            return {"error": f"borg init: {p.stderr.strip()[-300:]}"}
        t0 = time.perf_counter()
        for i, v in enumerate(corpus.versions):
            p = subprocess.run([exe, "create", "--compression", "zstd,3", f"{store}::v{i + 1}",
                                str(v.relative_to(corpus.root))], env=env, cwd=corpus.root,
                               capture_output=True, text=True)
            if p.returncode:
                return {"error": f"borg create: {p.stderr.strip()[-300:]}"}
        seconds = time.perf_counter() - t0
        return {"stored_bytes": dir_bytes(store), "seconds": seconds,
                "mb_per_s": corpus.input_bytes / seconds / 1e6}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def speed_ratios(o: dict, h: dict) -> dict:
    """Per phase: ours/hf_xet as the ratio of median MB/s (`p`) and as the
    median of the per-repetition ratios (`p_paired`, with min and max): the
    two runs of a repetition are adjacent in time, so their ratio cancels
    load that drifts over the run."""
    r = {}
    for p in PHASES:
        if p in o and p in h:
            r[p] = o[p]["mb_per_s"] / h[p]["mb_per_s"]
            pairs = [b / a for a, b in zip(o[p]["seconds_all_runs"], h[p]["seconds_all_runs"])]
            r[p + "_paired"] = statistics.median(pairs)
            r[p + "_paired_all_runs"] = pairs
    return r


def fmt_tables(results: dict) -> str:
    L = []
    head = (f"{'corpus':8} {'MiB':>6} {'phase':8} {'ours MB/s':>10} {'hf_xet MB/s':>12} "
            f"{'ours/hf_xet':>12} {'paired':>7} {'(min-max)':>11} {'target':>7}  ok    "
            f"{'CPU s ours':>10} {'hf_xet':>7}")
    L += ["Speed (median MB/s of input; ours/hf_xet: ratio of the medians, and the median (min-max) "
          "of the per-repetition ratios; higher is better; ok judges the paired median; "
          "CPU s: median user+sys seconds of the child, all threads)"]
    if results.get("busy_thread"):
        L += ["Beside a busy thread (--busy-thread): both tools' children ran a thread of pure Python "
              "bytecode beside the work, whose CPU the CPU s include; the targets are the issue's, "
              "set for runs without one"]
    L += [head, "-" * len(head)]
    for kind, c in results["corpora"].items():
        o, h = c["tools"].get("ingest", {}), c["tools"].get("hf_xet", {})
        for i, p in enumerate(PHASES):
            c1 = kind if i == 0 else ""
            c2 = f"{c['input_bytes'] / 2**20:6.0f}" if i == 0 else ""
            a = o.get(p, {}).get("mb_per_s")
            b = h.get(p, {}).get("mb_per_s")
            ratio = c["ratios"].get(p)
            paired = c["ratios"].get(p + "_paired")
            pairs = c["ratios"].get(p + "_paired_all_runs") or []
            spread = f"({min(pairs):.2f}-{max(pairs):.2f})" if pairs else "-"
            ok = "" if paired is None else ("PASS" if paired >= TARGETS[p] else "FAIL")
            L.append(f"{c1:8} {c2:>6} {p:8} {_f(a, 10, 1)} {_f(b, 12, 1)} {_f(ratio, 12, 2)} "
                     f"{_f(paired, 7, 2)} {spread:>11} "
                     f"{TARGETS[p]:>6.1f}x  {ok:4}  {_f(o.get(p, {}).get('cpu_seconds_median'), 10, 2)} "
                     f"{_f(h.get(p, {}).get('cpu_seconds_median'), 7, 2)}")
    head = (f"{'corpus':8} {'ours MiB':>9} {'hf_xet MiB':>11} {'borg MiB':>9} {'ours/in':>8} "
            f"{'xet/in':>7} {'borg/in':>8} {'ours/min':>9}  ok    {'objects ours':>12} {'hf_xet':>6}")
    L += ["", "Stored bytes after `new` (apparent bytes under the store; ours/min(hf_xet, borg) must be <= 1;"
          " objects: files under the store, a PUT each on an object store)",
          head, "-" * len(head)]
    for kind, c in results["corpora"].items():
        inp = c["input_bytes"]
        s = {t: c["tools"].get(t, {}).get("stored_bytes") for t in ("ingest", "hf_xet")}
        s["borg"] = c.get("borg", {}).get("stored_bytes")
        r = c["ratios"].get("stored_vs_min")
        ok = "" if r is None else ("PASS" if r <= 1.0 else "FAIL")
        n = {t: c["tools"].get(t, {}).get("stored_objects") for t in ("ingest", "hf_xet")}
        L.append(f"{kind:8} {_f(_mib(s['ingest']), 9, 1)} {_f(_mib(s['hf_xet']), 11, 1)} "
                 f"{_f(_mib(s['borg']), 9, 1)} {_f(_div(s['ingest'], inp), 8, 3)} "
                 f"{_f(_div(s['hf_xet'], inp), 7, 3)} {_f(_div(s['borg'], inp), 8, 3)} {_f(r, 9, 3)}  "
                 f"{ok:4}  {_f(n['ingest'], 12, 0)} {_f(n['hf_xet'], 6, 0)}")
    head = f"{'corpus':8} {'phase':8} {'ours MiB':>9} {'hf_xet MiB':>11}   (baseline after imports: ours / hf_xet)"
    L += ["", "Peak RSS of the child (max over runs, MiB)", head, "-" * len(head)]
    for kind, c in results["corpora"].items():
        o, h = c["tools"].get("ingest", {}), c["tools"].get("hf_xet", {})
        for i, p in enumerate(PHASES):
            a, b = o.get(p, {}), h.get(p, {})
            L.append(f"{kind if i == 0 else '':8} {p:8} {_f(_mib(a.get('rss_peak_max')), 9, 1)} "
                     f"{_f(_mib(b.get('rss_peak_max')), 11, 1)}   "
                     f"({_f(_mib(a.get('rss_base')), 5, 0)} / {_f(_mib(b.get('rss_base')), 5, 0)})")
    if "borg" in results["corpora"].get(next(iter(results["corpora"]), ""), {}):
        L += ["", "borg (one run, for reference): " + ", ".join(
            f"{k} {c['borg']['mb_per_s']:.0f} MB/s" for k, c in results["corpora"].items()
            if "mb_per_s" in c.get("borg", {}))]
    mem = results.get("host", {}).get("memory")
    if mem:
        import machine
        L += ["", "This machine's " + machine.describe(mem)]
    return "\n".join(L)


def _f(x, w, d):
    return f"{'-':>{w}}" if x is None else f"{x:{w}.{d}f}"


def _mib(x):
    return None if x is None else x / 2**20


def _div(a, b):
    return None if a is None or not b else a / b


def main(argv: list[str] | None = None) -> int:
    from ingest.artifacts import KINDS, make_corpus

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="corpus scale (1.0: model 256 MiB, dataset ~104 MiB, package ~169 MiB, random 64 MiB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of ingest,hf_xet")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; times are medians")
    ap.add_argument("--no-borg", action="store_true", help="skip borg's stored bytes")
    ap.add_argument("--no-tune-malloc", action="store_true",
                    help="do not call ingest.tune_malloc() in our children (the CLI and daemon do)")
    ap.add_argument("--sha256", choices=("skip", "compute"), default="skip",
                    help="whether both tools compute every file's SHA-256 (default: neither)")
    ap.add_argument("--busy-thread", action="store_true",
                    help="each child (both tools) runs a thread of pure Python bytecode beside the "
                         "timed work, as in a busy host process that embeds the library")
    ap.add_argument("--zstd-level", type=int, default=None,
                    help="create our stores at this zstd level (default: StoreConfig's, 3): what a "
                         "faster or denser level costs in stored bytes and buys in speed, side by side")
    ap.add_argument("--no-verify", action="store_true", help="do not compare restored files to the input")
    ap.add_argument("--no-machine-probe", action="store_true",
                    help="skip bench/machine.py's measure of what a fresh page of memory costs here")
    ap.add_argument("--workdir", default=None, help="where corpora and stores go (default: a temp dir)")
    ap.add_argument("--json-out", default=None, help="write the results as JSON to this file")
    ap.add_argument("--from-json", default=None, help="print the tables of an earlier --json-out and exit")
    args = ap.parse_args(argv)
    global TUNE_MALLOC, SHA256, BUSY_THREAD, ZSTD_LEVEL
    ZSTD_LEVEL = args.zstd_level
    TUNE_MALLOC = not args.no_tune_malloc
    BUSY_THREAD = args.busy_thread
    SHA256 = args.sha256 == "compute"
    if args.from_json:
        res = json.loads(pathlib.Path(args.from_json).read_text())
        for c in res["corpora"].values():
            c["ratios"].update(speed_ratios(c["tools"].get("ingest", {}), c["tools"].get("hf_xet", {})))
        print(fmt_tables(res))
        return 0
    kinds = [k for k in args.kinds.split(",") if k]
    tools = [t for t in args.tools.split(",") if t]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}")
    for t in tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.zstd_level is not None:
        from ingest.config import check_zstd_level
        try:
            check_zstd_level(args.zstd_level)
        except ValueError as e:
            ap.error(f"--zstd-level: {e}")

    def ver(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None
    rev = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    results = {
        "scale": args.scale, "seed": args.seed, "repeat": args.repeat, "busy_thread": BUSY_THREAD,
        "zstd_level": ZSTD_LEVEL,
        "versions": {"ingest": f"{ver('ingest')} (git {rev}{'+dirty' if dirty else ''})",
                     "hf_xet": ver("hf_xet")},
        "how": {
            "ingest": f"library in a child process: Repository.open + put_tree([version], "
                      f"sha256={SHA256}) per version; "
                      "restore: repo.restore_many(all (file_id, path)) in one call.",
            "hf_xet": 'upload_files(files of version, "local://STORE", None, None, None, "model", '
                      f"skip_sha256={not SHA256}) per version; restore: download_files(all files, "
                      "local://STORE) in one call",
            "sha256": "both tools compute every file's SHA-256" if SHA256 else "neither tool computes SHA-256",
            "busy_thread": ("each child ran a thread of pure Python bytecode beside the timed work"
                            if BUSY_THREAD else "no other thread in the children"),
            "borg": "borg create --compression zstd,3, one archive per version, one run",
            "timing": "inside the child, imports excluded, store open included; median over repeats; "
                      "tools interleaved phase by phase, order flipped each repeat",
            "mb_per_s": "input bytes of all versions / seconds, MB = 1e6 bytes",
            "rss": "child's own peak RSS (VmHWM of /proc/self/status), bytes",
            "cpu_seconds": "user + system seconds of the child (all threads) over the timed work",
            "minor_faults": "minor page faults of the child over the timed work (pages touched first)",
        },
        "targets": TARGETS,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "corpora": {},
    }
    missing = [t for t in tools if t == "hf_xet" and not ver("hf_xet")]
    if missing:
        print("hf_xet is not installed (pip install hf_xet)", file=sys.stderr)
        return 1
    print(f"scale {args.scale}, repeat {args.repeat}; ingest {results['versions']['ingest']}, "
          f"hf_xet {results['versions']['hf_xet']}; {os.cpu_count()} CPUs")
    if BUSY_THREAD:
        print("busy thread: each child runs a thread of pure Python bytecode beside the work")
    if ZSTD_LEVEL is not None:
        print(f"our stores are created at zstd level {ZSTD_LEVEL} (--zstd-level)")
    print("SHA-256 of every file: " + ("both tools compute it" if SHA256 else "neither tool computes it")
          + " (--sha256)", flush=True)

    def log(msg):
        print(msg, flush=True)

    work = pathlib.Path(tempfile.mkdtemp(prefix="ingest-e2e-", dir=args.workdir))
    failed = False
    try:
        if not args.no_machine_probe:
            # What the host charges for memory a new process touches first
            # (every child is one): on shared VMs it moves both tools'
            # figures from run to run (bench/machine.py).
            import machine
            results["host"]["memory"] = machine.probe(64, str(work), 3)
            log(machine.describe(results["host"]["memory"]))
        for kind in kinds:
            root = work / "corpus" / kind
            t0 = time.perf_counter()
            corpus = Corpus(kind, root, make_corpus(kind, root, scale=args.scale, seed=args.seed))
            log(f"\n{kind}: {len(corpus.versions)} versions, {corpus.n_files} files, "
                f"{corpus.input_bytes / 2**20:.1f} MiB (generated in {time.perf_counter() - t0:.1f} s)")
            c = {"versions": [v.name for v in corpus.versions], "files": corpus.n_files,
                 "input_bytes": corpus.input_bytes}
            c["tools"] = bench_corpus(corpus, tools, work / "runs", args.repeat, not args.no_verify, log)
            if not args.no_borg:
                c["borg"] = bench_borg(corpus, work / "runs")
                if "error" in c["borg"]:
                    log(f"  borg FAILED: {c['borg']['error']}")
                else:
                    log(f"  borg stored {c['borg']['stored_bytes'] / 2**20:.1f} MiB "
                        f"({c['borg']['mb_per_s']:.0f} MB/s)")
            o, h = c["tools"].get("ingest", {}), c["tools"].get("hf_xet", {})
            c["ratios"] = ratios = speed_ratios(o, h)
            for p in PHASES:
                if p in o and p in h:
                    ratios[p + "_rss"] = o[p]["rss_peak_max"] / h[p]["rss_peak_max"]
            peers = [x.get("stored_bytes") for x in (h, c.get("borg", {})) if x.get("stored_bytes")]
            if "stored_bytes" in o and peers:
                ratios["stored_vs_min"] = o["stored_bytes"] / min(peers)
            if "stored_bytes" in o and "stored_bytes" in h:
                ratios["stored_vs_hf_xet"] = o["stored_bytes"] / h["stored_bytes"]
            if "stored_bytes" in o and "stored_bytes" in c.get("borg", {}):
                ratios["stored_vs_borg"] = o["stored_bytes"] / c["borg"]["stored_bytes"]
            failed |= any("error" in x for x in c["tools"].values())
            results["corpora"][kind] = c
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(fmt_tables(results))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        sys.exit(child_main())
    sys.exit(main())
