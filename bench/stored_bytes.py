#!/usr/bin/env python3
"""Stored bytes and ingest speed: our engine against hf_xet and borg, per corpus.

For each corpus kind of ingest.artifacts (model, dataset, package, random) the
script generates the corpus once, then ingests all of its versions, in
version order, into a fresh store with each tool:

  ingest  `ingest put --store DIR --json PATHS...` (subprocess)
  hf_xet  `hf_xet.upload_files(files, "local://DIR", ...)` (subprocess running Python)
  borg    `borg init -e none DIR` (untimed), then `borg create --compression zstd,3 DIR::NAME PATHS`

By default each version is a separate call (a hub receives versions as
separate uploads), so every tool pays its start-up once per version;
--single-call gives each tool all versions in one call (one borg archive).

Reported per corpus and tool: input bytes (logical, all versions), stored
bytes (apparent size of every file under the store directory after the last
version, measured the same way for all tools), stored/input, wall time
(median over --repeat runs, each into a fresh store) and MB/s of input
(MB = 10^6 bytes).  Stored bytes differ between runs only by the few bytes
of timestamps some tools record; the median run is reported.  Everything runs on local directories; nothing uses the
network.

    python bench/stored_bytes.py --scale 1.0 --repeat 3 --json-out results.json
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from ingest.artifacts import KINDS, make_corpus  # noqa: E402

TOOLS = ("ingest", "hf_xet", "borg")

# Runs in a subprocess: ingest the given files into a local hf_xet CAS.
_HF_XET_UPLOAD = r"""
import sys, hf_xet
store, files = sys.argv[1], sys.argv[2:]
hf_xet.upload_files(files, "local://" + store, None, None, None, "model", skip_sha256=True)
"""


class ToolError(RuntimeError):
    pass


# -- measuring ------------------------------------------------------------------

def tree_files(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def dir_bytes(path: pathlib.Path) -> tuple[int, int, dict[str, int]]:
    """(apparent bytes, allocated bytes, apparent bytes per top-level entry) of all regular files."""
    apparent = allocated = 0
    parts: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISREG(st.st_mode):
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
            rel = pathlib.Path(dirpath, name).relative_to(path).parts
            key = "/".join(rel[:-1][:3]) or "."
            parts[key] = parts.get(key, 0) + st.st_size
    return apparent, allocated, dict(sorted(parts.items(), key=lambda kv: -kv[1]))


def run(cmd: list[str], *, env=None, cwd=None, what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise ToolError(f"{what}: command not found: {cmd[0]} ({e})") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise ToolError(f"{what}: exit {proc.returncode}: {shlex.join(cmd[:4])}...\n    " + "\n    ".join(tail))
    return proc


# -- tools ----------------------------------------------------------------------

class Tool:
    name = ""
    per_version = ""  # how it is run, one call per version
    single = ""  # how it is run with --single-call

    def version(self) -> str:
        raise NotImplementedError

    def prepare(self, store: pathlib.Path, scratch: pathlib.Path) -> None:
        """Create an empty store (not timed)."""

    def ingest(self, store: pathlib.Path, scratch: pathlib.Path, corpus_root: pathlib.Path,
               paths: list[pathlib.Path], label: str) -> dict:
        """Ingest `paths` (one version or all of them); return details for the JSON output."""
        raise NotImplementedError


class IngestTool(Tool):
    name = "ingest"
    per_version = "ingest put --store DIR --json VERSION_PATH, one call per version"
    single = "ingest put --store DIR --json ALL_VERSION_PATHS, one call"

    def __init__(self, cmd: str | None):
        if cmd:
            self.cmd = shlex.split(cmd)
        else:
            exe = shutil.which("ingest")
            self.cmd = [exe] if exe else [sys.executable, "-m", "ingest.cli"]

    def version(self) -> str:
        try:
            v = importlib.metadata.version("ingest")
        except importlib.metadata.PackageNotFoundError:
            v = "not installed"
        repo = pathlib.Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        return f"ingest {v}" + (f" (git {rev})" if rev else "")

    def ingest(self, store, scratch, corpus_root, paths, label):
        proc = run(self.cmd + ["put", "--store", str(store), "--json"] + [str(p) for p in paths],
                   what="ingest put")
        summary = None
        files = 0
        for line in proc.stdout.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise ToolError(f"ingest put --json printed a line that is not JSON: {line[:200]}") from None
            if "summary" in obj:
                summary = obj["summary"]
            else:
                files += 1
        if summary is None:
            raise ToolError("ingest put --json printed no {\"summary\": ...} object")
        return {"files_reported": files, "summary": summary}


class HfXetTool(Tool):
    name = "hf_xet"
    per_version = ('hf_xet.upload_files(files, "local://DIR", None, None, None, "model", skip_sha256=True) '
                   "in a fresh Python process, one per version (directories expanded to files)")
    single = per_version.replace("one per version", "one for all versions")

    def version(self) -> str:
        try:
            return f"hf_xet {importlib.metadata.version('hf_xet')}"
        except importlib.metadata.PackageNotFoundError:
            raise ToolError("hf_xet is not installed (pip install hf_xet)") from None

    def ingest(self, store, scratch, corpus_root, paths, label):
        files = [str(f) for p in paths for f in tree_files(p)]
        env = dict(os.environ)
        # keep hf_xet's logs and any cache out of $HOME and out of the measured store
        env.update(HF_HOME=str(scratch / "hf_home"), HF_XET_CACHE=str(scratch / "hf_xet_cache"),
                   HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
        run([sys.executable, "-c", _HF_XET_UPLOAD, str(store)] + files, env=env, what="hf_xet upload_files")
        return {"files": len(files)}


class BorgTool(Tool):
    name = "borg"
    per_version = ("borg init -e none REPO (untimed); borg create --compression zstd,3 REPO::vN VERSION_PATH, "
                   "one archive per version; default chunker (buzhash, ~2 MiB chunks)")
    single = per_version.replace("REPO::vN VERSION_PATH, one archive per version",
                                 "REPO::all ALL_VERSION_PATHS, one archive")

    def __init__(self):
        self.exe = shutil.which("borg")

    def _env(self, scratch):
        env = dict(os.environ)
        env.update(BORG_BASE_DIR=str(scratch / "borg_base"),  # fresh cache, config and keys per run
                   BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
                   BORG_PASSPHRASE="")
        return env

    def version(self) -> str:
        if not self.exe:
            raise ToolError("borg not found (apt-get install -y borgbackup)")
        return run([self.exe, "--version"], what="borg --version").stdout.strip()

    def prepare(self, store, scratch):
        if not self.exe:
            raise ToolError("borg not found (apt-get install -y borgbackup)")
        run([self.exe, "init", "-e", "none", str(store)], env=self._env(scratch), what="borg init")

    def ingest(self, store, scratch, corpus_root, paths, label):
        rel = [str(p.relative_to(corpus_root)) for p in paths]
        run([self.exe, "create", "--compression", "zstd,3", f"{store}::{label}"] + rel,
            env=self._env(scratch), cwd=corpus_root, what="borg create")
        return {"archive": label}


# -- the benchmark --------------------------------------------------------------

def bench_tool(tool: Tool, kind: str, corpus_root: pathlib.Path, versions: list[pathlib.Path],
               input_bytes: int, work: pathlib.Path, repeat: int, single_call: bool) -> dict:
    batches = [versions] if single_call else [[v] for v in versions]
    times, stored, details = [], [], []
    for r in range(repeat):
        run_dir = work / f"{kind}-{tool.name}-{r}"
        store, scratch = run_dir / "store", run_dir / "scratch"
        scratch.mkdir(parents=True)
        try:
            tool.prepare(store, scratch)
            per_call = []
            for i, batch in enumerate(batches):
                label = "all" if single_call else f"v{i + 1}"
                t0 = time.perf_counter()
                info = tool.ingest(store, scratch, corpus_root, batch, label)
                dt = time.perf_counter() - t0
                per_call.append({"label": label, "seconds": round(dt, 4), **info})
            times.append(sum(c["seconds"] for c in per_call))
            stored.append(dir_bytes(store))
            details.append(per_call)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    # Stored bytes vary by a few bytes between runs where a tool records times
    # (our refs, borg's archive metadata): report the median run, keep the spread.
    apparent, allocated, parts = sorted(stored)[(len(stored) - 1) // 2]
    med = statistics.median(times)
    return {
        "stored_bytes": apparent,
        "stored_bytes_spread": max(s[0] for s in stored) - min(s[0] for s in stored),
        "stored_bytes_allocated": allocated,
        "stored_bytes_by_dir": parts,
        "stored_bytes_all_runs": [s[0] for s in stored],
        "ratio": apparent / input_bytes if input_bytes else None,
        "seconds_median": med,
        "seconds_all_runs": times,
        "mb_per_s": input_bytes / med / 1e6 if med > 0 else None,
        "calls": details[-1],
    }


def fmt_table(results: dict) -> str:
    head = f"{'corpus':9} {'input MiB':>10} {'tool':7} {'stored MiB':>11} {'ratio':>7} {'time s':>8} {'MB/s':>8}"
    lines = [head, "-" * len(head)]
    for kind, res in results["corpora"].items():
        first = True
        for tool, r in res["tools"].items():
            c1 = kind if first else ""
            c2 = f"{res['input_bytes'] / 2**20:10.1f}" if first else " " * 10
            first = False
            if "error" in r:
                lines.append(f"{c1:9} {c2} {tool:7} FAILED: {r['error'].splitlines()[0]}")
                continue
            lines.append(f"{c1:9} {c2} {tool:7} {r['stored_bytes'] / 2**20:11.1f} {r['ratio']:7.3f} "
                         f"{r['seconds_median']:8.2f} {r['mb_per_s']:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="corpus scale (1.0: model 256 MiB, dataset ~100 MiB, "
                    "package ~160 MiB, random 64 MiB; default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and corpus; times are medians")
    ap.add_argument("--single-call", action="store_true",
                    help="give each tool all versions in one call (one borg archive) instead of one call per version")
    ap.add_argument("--ingest-cmd", default=None, help="command for our CLI (default: `ingest` on PATH)")
    ap.add_argument("--workdir", default=None, help="where corpora and stores go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated corpora")
    ap.add_argument("--json-out", default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)

    kinds = [k for k in args.kinds.split(",") if k]
    tools_wanted = [t for t in args.tools.split(",") if t]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}")
    for t in tools_wanted:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    all_tools = {"ingest": lambda: IngestTool(args.ingest_cmd), "hf_xet": HfXetTool, "borg": BorgTool}
    tools: dict[str, Tool] = {t: all_tools[t]() for t in tools_wanted}
    versions, broken = {}, {}
    for name, tool in tools.items():
        try:
            versions[name] = tool.version()
        except ToolError as e:
            broken[name] = str(e)
            versions[name] = None

    mode = "single-call" if args.single_call else "per-version"
    results = {
        "scale": args.scale, "seed": args.seed, "repeat": args.repeat, "mode": mode,
        "versions": versions,
        "how": {name: tool.single if args.single_call else tool.per_version for name, tool in tools.items()},
        "stored_bytes_means": "apparent size (st_size) of every regular file under the store directory",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "corpora": {},
    }
    print(f"scale {args.scale}, seed {args.seed}, {mode}, repeat {args.repeat}")
    for name in tools:
        print(f"  {name:7} {versions[name] or 'UNAVAILABLE: ' + broken[name]}: {results['how'][name]}")

    work = pathlib.Path(tempfile.mkdtemp(prefix="stored-bytes-", dir=args.workdir))
    failed = False
    try:
        for kind in kinds:
            corpus_root = work / "corpus" / kind
            t0 = time.perf_counter()
            paths = make_corpus(kind, corpus_root, scale=args.scale, seed=args.seed)
            gen_s = time.perf_counter() - t0
            input_bytes = sum(f.stat().st_size for p in paths for f in tree_files(p))
            n_files = sum(len(tree_files(p)) for p in paths)
            res = {"versions": [p.name for p in paths], "files": n_files, "input_bytes": input_bytes,
                   "generate_seconds": round(gen_s, 3), "tools": {}}
            results["corpora"][kind] = res
            print(f"\n{kind}: {len(paths)} versions, {n_files} files, {input_bytes / 2**20:.1f} MiB "
                  f"(generated in {gen_s:.1f} s)", flush=True)
            for name, tool in tools.items():
                if name in broken:
                    res["tools"][name] = {"error": broken[name]}
                    failed = True
                    continue
                try:
                    r = bench_tool(tool, kind, corpus_root, paths, input_bytes, work / "runs", args.repeat,
                                   args.single_call)
                except ToolError as e:
                    res["tools"][name] = {"error": str(e)}
                    print(f"  {name:7} FAILED: {e}", flush=True)
                    failed = True
                    continue
                res["tools"][name] = r
                print(f"  {name:7} stored {r['stored_bytes'] / 2**20:8.1f} MiB  ratio {r['ratio']:.3f}  "
                      f"{r['seconds_median']:7.2f} s  {r['mb_per_s']:7.1f} MB/s", flush=True)
            if not args.keep:
                shutil.rmtree(corpus_root, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"\nkept corpora under {work / 'corpus'}")

    print()
    print(fmt_table(results))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
