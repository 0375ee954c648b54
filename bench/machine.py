#!/usr/bin/env python3
"""What memory costs on this machine: the first touch of a page in a new process.

On the shared VMs this project is measured on, a page of memory that a new
process touches for the first time cost 0.5-9 us (the host backs it then:
8-9 us after a few idle seconds), against ~0.02 us for a page the process
touches again: at the dear end 128 MiB of fresh memory is ~0.3 s, as long
as a whole phase of the end-to-end benchmark.  Both tools pay it for every page they touch (heap, and the page
cache of every file a restore writes), so it does not favour either, but it
moves the absolute figures from run to run and doubles a restore's CPU
seconds.  `bench/e2e.py` runs this probe before its first corpus and records
the result; run it alone to see what a machine does:

    python bench/machine.py [--mib 64] [--dir DIR] [--runs 3]

Reported, each the median over --runs new processes (us per 4 KiB page):
  anon first    np.empty(MiB) touched once per page, in a new process
  anon again    the same pages touched again (no fault)
  anon reused   a second buffer of the same size after the first was freed
                (with ingest.tune_malloc, glibc keeps the freed pages: no fault)
  file new      writing a new file of MiB bytes in --dir (page cache pages
                the kernel allocates fresh), per page, no fsync
  file after delete  the file deleted, then a second one written (the
                kernel reuses the first one's pages)
  file rewrite  the second file written again in place (its pages cached)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, os, sys, time
import numpy as np
mib, path = int(sys.argv[1]), sys.argv[2]
n = mib << 20
pages = n // 4096
out = {}
a = np.empty(n, np.uint8)
t = time.perf_counter(); a[::4096] = 1; out["anon_first"] = time.perf_counter() - t
t = time.perf_counter(); a[::4096] = 2; out["anon_again"] = time.perf_counter() - t
del a
# As the engine's processes run: 8 MiB pieces come from the heap and the
# freed ones are kept for the next buffer, not unmapped.
from ingest import tune_malloc
tune_malloc()
bufs = [np.empty(8 << 20, np.uint8) for _ in range(max(n // (8 << 20), 1))]
for b in bufs:
    b[::4096] = 1
del bufs, b
bufs = [np.empty(8 << 20, np.uint8) for _ in range(max(n // (8 << 20), 1))]
t = time.perf_counter()
for b in bufs:
    b[::4096] = 1
out["anon_reused"] = time.perf_counter() - t
del bufs, b
block = os.urandom(1 << 20)
def write_file(name, flags=os.O_CREAT | os.O_TRUNC):
    fd = os.open(name, os.O_WRONLY | flags, 0o600)
    t = time.perf_counter()
    for _ in range(mib):
        os.write(fd, block)
    t = time.perf_counter() - t
    os.close(fd)
    return t
out["file_new"] = write_file(path + ".a")
os.unlink(path + ".a")                  # its page cache is freed, then reused by .b
out["file_after_delete"] = write_file(path + ".b")
out["file_rewrite"] = write_file(path + ".b", 0)     # in place over its cached pages
os.unlink(path + ".b")
print(json.dumps({k: v / pages * 1e6 for k, v in out.items()}))
"""

FIELDS = ("anon_first", "anon_again", "anon_reused", "file_new", "file_after_delete", "file_rewrite")


def probe(mib: int = 64, directory: str | None = None, runs: int = 3) -> dict:
    """Median us per page of each measure over `runs` new processes."""
    samples: dict[str, list[float]] = {k: [] for k in FIELDS}
    with tempfile.TemporaryDirectory(prefix="ingest-machine-", dir=directory) as d:
        for i in range(runs):
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(mib), os.path.join(d, f"f{i}")],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"machine probe failed: {proc.stderr.strip()[-500:]}")
            for k, v in json.loads(proc.stdout).items():
                samples[k].append(v)
    return {"mib": mib, "runs": runs,
            "us_per_page": {k: round(statistics.median(v), 3) for k, v in samples.items()},
            "us_per_page_all": {k: [round(x, 3) for x in v] for k, v in samples.items()}}


def describe(p: dict) -> str:
    u = p["us_per_page"]
    return (f"memory, us per 4 KiB page (median of {p['runs']} new processes, {p['mib']} MiB): "
            f"first touch {u['anon_first']:.2f}, again {u['anon_again']:.3f}, "
            f"freed and reused {u['anon_reused']:.2f}; writing a new file {u['file_new']:.2f}, "
            f"one just after deleting another {u['file_after_delete']:.2f}, "
            f"rewriting it in place {u['file_rewrite']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64, help="MiB touched and written per measure")
    ap.add_argument("--dir", default=None, help="directory for the file measures (default: a temp dir)")
    ap.add_argument("--runs", type=int, default=3, help="new processes; medians are reported")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.mib < 8 or args.runs < 1:
        ap.error("--mib must be at least 8 and --runs at least 1")
    p = probe(args.mib, args.dir, args.runs)
    print(json.dumps(p, indent=2) if args.json else describe(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
