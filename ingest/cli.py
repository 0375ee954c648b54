"""The `ingest` command.

    ingest put [--store URL] [--json] PATH...     files and directories, recursively
    ingest get [--store URL] FILE_ID_OR_REF -o OUT  (a ref prefix ending in / restores a tree)
    ingest cat [--store URL] [--range START-END] FILE_ID_OR_REF
    ingest ls | stats | verify [--store URL]
    ingest demo [--store URL]

The store is --store, else $INGEST_STORE, else DEFAULT_STORE.  Errors print
one line on stderr and exit 1 (2 for usage errors); `verify` exits 1 when it
finds a problem.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from .errors import IngestError
from .config import parse_zstd_level
from .memory import tune_malloc
from .progress import Progress, human
from .repository import Repository, plan_tree_sized
from .sync import new_event_loop

DEFAULT_STORE = os.path.join(os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"),
                             "ingest", "store")


def store_url(args) -> str:
    return args.store or os.environ.get("INGEST_STORE") or DEFAULT_STORE


def zstd_level(args) -> int | None:
    """--zstd-level, else $INGEST_ZSTD_LEVEL, else None (the store's level)."""
    text, where = args.zstd_level, "--zstd-level"
    if text is None:
        text, where = os.environ.get("INGEST_ZSTD_LEVEL") or None, "$INGEST_ZSTD_LEVEL"
    if text is None:
        return None
    try:
        return parse_zstd_level(text)
    except ValueError as e:
        raise IngestError(f"{where}: {e}") from None


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def cmd_put(args) -> int:
    jobs = plan_tree_sized(args.paths)    # fail on a bad path before opening the store
    total = sum(size for _, _, size in jobs)
    prog = Progress("ingesting", total, enabled=False if args.json else None)
    repo = await Repository.open(store_url(args), zstd_level=zstd_level(args))
    async with repo:
        def on_result(r) -> None:
            if args.json:
                _emit({"path": r.ref, "file_id": r.file_id, "size": r.size, "sha256": r.sha256,
                       "new_bytes": r.new_bytes, "dedup_bytes": r.dedup_bytes,
                       "stored_bytes": r.stored_bytes, "chunks": r.chunks})

        results = await repo.put_tree(args.paths, on_result=on_result, progress=prog.advance,
                                      sha256=args.sha256, planned=jobs)
        prog.close()
    summary = {
        "files": len(results),
        "input_bytes": sum(r.size for r in results),
        "new_bytes": sum(r.new_bytes for r in results),
        "dedup_bytes": sum(r.dedup_bytes for r in results),
        "stored_bytes": sum(r.stored_bytes for r in results),
        "chunks": sum(r.chunks for r in results),
        "new_chunks": sum(r.new_chunks for r in results),
    }
    if args.json:
        _emit({"summary": summary})
    else:
        for r in results:
            print(f"{r.file_id[:16]}  {human(r.size):>10}  new {human(r.new_bytes):>10}  {r.ref}")
        ib = summary["input_bytes"]
        print(f"{summary['files']} files, {human(ib)} in, {human(summary['new_bytes'])} new, "
              f"{human(summary['stored_bytes'])} stored"
              + (f" ({summary['stored_bytes'] / ib:.1%} of input)" if ib else ""))
    return 0


async def cmd_get(args) -> int:
    async with await Repository.open(store_url(args), create=False,
                                     direct_writes=args.direct) as repo:
        if args.name.endswith("/"):
            names = await repo.restore_tree(args.name, args.output)
            if not args.quiet:
                print(f"restored {len(names)} files into {args.output}", file=sys.stderr)
            return 0
        out = Path(args.output)
        if out.is_dir():
            out = out / args.name.rsplit("/", 1)[-1]
        await repo.restore(args.name, out)
    return 0


def parse_range(text: str) -> tuple[int, int | None]:
    start, sep, end = text.partition("-")
    try:
        s = int(start) if start else 0
        e = int(end) if end else None
    except ValueError:
        raise IngestError(f"bad range {text!r}: use START-END (END exclusive), START- or -END") from None
    if not sep or s < 0 or (e is not None and e < s):
        raise IngestError(f"bad range {text!r}: use START-END (END exclusive), START- or -END")
    return s, e


async def cmd_cat(args) -> int:
    start, end = parse_range(args.range) if args.range else (0, None)
    out = sys.stdout.buffer
    async with await Repository.open(store_url(args), create=False) as repo:
        async for block in repo.iter_read(args.name, start, end):
            out.write(block)
    out.flush()
    return 0


async def cmd_ls(args) -> int:
    async with await Repository.open(store_url(args), create=False) as repo:
        refs = await repo.list_refs(args.prefix or "")
    for r in refs:
        if args.json:
            _emit({"path": r.name, "file_id": r.file_id, "size": r.size, "sha256": r.sha256,
                   "time": r.time})
        else:
            print(f"{r.file_id[:16]}  {r.size:>14}  {r.name}")
    return 0


async def cmd_stats(args) -> int:
    async with await Repository.open(store_url(args), create=False) as repo:
        st = await repo.stats()
    if args.json:
        _emit(st)
    else:
        print(f"store          {store_url(args)}")
        print(f"refs           {st['refs']}  ({st['files']} distinct files)")
        print(f"logical bytes  {human(st['logical_bytes'])}")
        print(f"stored bytes   {human(st['stored_bytes'])}  (packs {human(st['pack_bytes'])}, "
              f"metadata {human(st['metadata_bytes'])})")
        ratio = st["dedup_ratio"]
        print(f"dedup ratio    {ratio:.2f}x" if ratio else "dedup ratio    -")
        print(f"packs          {st['packs']}")
        print(f"chunks         {st['chunks']}")
    return 0


async def cmd_verify(args) -> int:
    async with await Repository.open(store_url(args), create=False) as repo:
        prog = Progress("verifying", enabled=False if args.json else None)
        rep = await repo.verify(progress=prog.advance)
        prog.close()
    if args.json:
        _emit({"ok": rep.ok, "refs": rep.refs, "files": rep.files, "packs": rep.packs,
               "chunks": rep.chunks, "problems": rep.problems})
    else:
        for p in rep.problems:
            print(f"PROBLEM: {p}")
        print(f"{'ok' if rep.ok else 'FAILED'}: {rep.refs} refs, {rep.files} files, {rep.packs} packs, "
              f"{rep.chunks} chunks, {human(rep.bytes_checked)} checked, {len(rep.problems)} problems")
    return 0 if rep.ok else 1


async def cmd_demo(args) -> int:
    from .demo import run_demo
    return await run_demo(store_url(args), scale=args.scale, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ingest", description=(
        "Content-defined dedup ingestion engine: chunk, dedup, compress and pack "
        "files into a store, and get any file or byte range back byte-exact."))
    ap.add_argument("--version", action="version", version="ingest 0.1.0")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    store_help = ("store path, file:// or s3:// URL (default: $INGEST_STORE, else "
                  + DEFAULT_STORE + ")")
    ap.add_argument("--store", metavar="URL", help=store_help)
    store = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: `ingest --store X put` and `ingest put --store X` both work.
    store.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=(
        "store path, file:// or s3:// URL (default: $INGEST_STORE, else " + DEFAULT_STORE + ")"))

    p = sub.add_parser("put", parents=[store], help="ingest files and directories")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per file, then a summary")
    p.add_argument("--no-sha256", dest="sha256", action="store_false",
                   help="do not compute each file's SHA-256 (refs then carry none)")
    p.add_argument("--zstd-level", metavar="N", help=(
        "compress new data at zstd level N, -7..22 (default: $INGEST_ZSTD_LEVEL, else the "
        "store's, 3): 1 ingests text 1.1-1.5x faster for 4-10%% more stored bytes"))
    p.set_defaults(fn=cmd_put)

    p = sub.add_parser("get", parents=[store], help="restore a file, or a tree (NAME ending in /)")
    p.add_argument("name", metavar="FILE_ID_OR_REF")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--buffered", dest="direct", action="store_false",
                   help="write every file through the page cache (by default files of "
                        "16 MiB or more bypass it with O_DIRECT where the file system allows)")
    p.set_defaults(fn=cmd_get)

    p = sub.add_parser("cat", parents=[store], help="write a file or byte range to stdout")
    p.add_argument("name", metavar="FILE_ID_OR_REF")
    p.add_argument("--range", metavar="START-END", help="bytes START (inclusive) to END (exclusive)")
    p.set_defaults(fn=cmd_cat)

    p = sub.add_parser("ls", parents=[store], help="list refs")
    p.add_argument("prefix", nargs="?", metavar="PREFIX")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_ls)

    p = sub.add_parser("stats", parents=[store], help="logical and stored bytes, dedup ratio")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("verify", parents=[store], help="check every ref, manifest, pack and chunk")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("demo", parents=[store], help=(
        "make realistic artifacts (model, fine-tune, dataset versions), ingest, "
        "restore and verify them, and report what was saved"))
    p.add_argument("--scale", type=float, default=0.25, help="artifact size factor (default 0.25)")
    p.add_argument("--workdir", help="where to write the artifacts (default: a temporary directory)")
    p.set_defaults(fn=cmd_demo)

    from . import daemon
    p = sub.add_parser("serve", parents=[store], help=(
        "run the HTTP daemon: upload, download, list and reconstruct files (docs/DAEMON.md)"))
    daemon.add_arguments(p)
    p.set_defaults(fn=daemon.serve)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_malloc()
    loop = new_event_loop()
    try:
        return loop.run_until_complete(args.fn(args))
    except IngestError as e:
        print(f"ingest: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ingest: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
