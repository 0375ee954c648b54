"""The repository: a store plus its config and dedup index; the library API.

    repo = await Repository.open("file:///data/store")     # or a path, or s3://
    result = await repo.put_file("model.safetensors", ref="org/model/model.safetensors")
    data = await repo.read("org/model/model.safetensors", 0, 1 << 20)

Every method takes either a 64-hex file id or a ref name wherever a file is
named.  `ingest.open()` gives the same API synchronously.
"""
from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import operator
import os
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import gil, hashing
from ._mapped import Window, list_dir, place_files, remove_files, write_files
from .compression import decompress
from .config import KEY as CONFIG_KEY
from .config import StoreConfig, check_zstd_level
from .errors import FormatError, IngestError, IntegrityError, InvalidName, NotFound
from .index import PREFIX as INDEX_PREFIX
from .index import ChunkIndex, decode_shard
from .manifest import PREFIX as FILES_PREFIX
from .manifest import Manifest
from .manifest import key as manifest_key
from .output import DIRECT_MIN, OutputFile, StagePool
from .pack import TRAILER, check_frame, check_header, footer_location, parse_footer
from .pipeline import (PACK_PREFIX, IngestResult, WriteSession, pack_key, scan_small_file,
                       scan_small_files)
from .refs import PREFIX as REFS_PREFIX
from .refs import (MAX_TREE_FILES, TREES_PREFIX, Ref, Tree, TreeEntry, TreeRef, ancestors,
                   check_name, decode_ref)
from .refs import key as ref_key
from .refs import tree_key
from .stores import ObjectNotFound, Store, open_store

log = logging.getLogger("ingest")

READ_AHEAD = 4           # span requests in flight ahead of the one being returned
WRITE_BATCH = 8 << 20    # restore writes this much per thread hop
FILES_IN_FLIGHT = 8      # files of a tree ingested at once
VERIFY_PACKS = 2         # packs read and checked at once by verify()
SMALL_FILE = 2 << 20     # read, chunk and hash in one pool hop up to this size
# Small files of a tree scanned in one pool hop, holding at most about
# SMALL_BATCH_BYTES.  Each batch costs an index lookup, hops and a meta
# batch of its own whatever its size: 64 -> 256 files a batch (and the meta
# writer's MAX_BATCH with it) took a package re-ingest from 0.198 to 0.179 s
# and its new pass from 0.917 to 0.859 s (medians of 12 and 6 alternated
# pairs; 128 did as well as 256 on re-ingest).
SMALL_BATCH_FILES = 256
SMALL_BATCH_BYTES = 4 << 20
RESTORE_BATCH = 64            # files whose manifests restore_many reads at once
RESTORE_BATCH_BYTES = 8 << 20  # small files restored in one pool call, about this much
FRAME_CACHE_BYTES = 64 << 20   # decoded frames kept for reuse by later reads (FrameCache)
TREES_CACHED = 16              # decoded trees kept by id (immutable) for name lookups
TREES_RELIST = 1.0             # seconds between listings of trees/ for a file id not found
TREES_READ_AT_ONCE = 16        # trees read concurrently when indexing a listing of trees/


@dataclass
class VerifyReport:
    refs: int = 0
    files: int = 0
    packs: int = 0
    chunks: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Repository:
    def __init__(self, store: Store, config: StoreConfig, *, workers: int | None = None,
                 switch_interval: float | None = gil.SWITCH_INTERVAL,
                 direct_writes: bool = True, zstd_level: int | None = None) -> None:
        """`switch_interval`: at most this many seconds of the interpreter's
        switch interval while the repository is open (ingest.gil says why);
        None leaves the host's alone.  `direct_writes`: restore() writes
        files of ingest.output.DIRECT_MIN bytes or more around the page
        cache (O_DIRECT) where the file system allows; False writes every
        file through the page cache.  `zstd_level`: the level this process
        compresses new frames at, None the store's (config.zstd_level).
        Readers never need it, so writers of one store may differ: level 1
        ingested the text corpora 1.1-1.5x faster than 3 for 4-10% more
        stored bytes (docs/PERFORMANCE.md, "What the new-data targets
        cost")."""
        self.store = store
        self.config = config
        self.zstd_level = config.zstd_level if zstd_level is None else check_zstd_level(zstd_level)
        self.index = ChunkIndex()
        self.executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2,
                                           thread_name_prefix="ingest")
        self._manifests: dict[bytes, Manifest] = {}
        self.stored_manifests: dict[bytes, None] = {}   # see pipeline._MetaWriter.known
        self.frame_cache = FrameCache(FRAME_CACHE_BYTES)
        self._trees: OrderedDict[bytes, Tree] = OrderedDict()   # by tree id (immutable)
        # File id -> (tree id, path) of the manifests trees keep, from every
        # tree this process has seen or found by listing trees/ (_scan_trees).
        self._in_trees: dict[bytes, tuple[bytes, str]] = {}
        self._indexed_trees: set[bytes] = set()
        self._trees_listed_at = float("-inf")
        self.block_buffers: list[memoryview] = []   # reused by write sessions
        self.direct_writes = direct_writes
        self.stages = StagePool()                    # reused by restore()
        # The index is loaded by the first write (index_ready), not at open:
        # reading files never needs it, and at scale it is the store's
        # largest metadata.
        self.index_loaded = False
        self._index_lock = asyncio.Lock()
        self._background: set[asyncio.Future] = set()   # see background()
        if switch_interval is not None:
            gil.lower(switch_interval)
        self._switch_interval = switch_interval

    # -- opening -----------------------------------------------------------------
    @classmethod
    async def open(cls, store: str | os.PathLike | Store, *, create: bool = True,
                   config: StoreConfig | None = None, workers: int | None = None,
                   switch_interval: float | None = gil.SWITCH_INTERVAL,
                   direct_writes: bool = True, zstd_level: int | None = None) -> "Repository":
        """Open the store at a URL or path (creating it if `create`) and read
        its config.  The index is loaded by the first write (index_ready):
        reading files never needs it.  `switch_interval`, `direct_writes`,
        `zstd_level`: see __init__."""
        if zstd_level is not None:
            check_zstd_level(zstd_level)      # before anything is created
        if not isinstance(store, Store):
            url = os.fspath(store)
            local = "://" not in url or url.startswith("file://")
            # Reading must not leave an empty directory behind a mistyped path.
            store = open_store(url, create=False) if local and not create else open_store(url)
        try:
            try:
                cfg = StoreConfig.decode(await store.get(CONFIG_KEY))
            except ObjectNotFound:
                if not create:
                    raise NotFound(f"no ingest store at {store.url}") from None
                # if-absent: two writers creating one store agree on one config.
                await store.put(CONFIG_KEY, (config or StoreConfig()).encode(), if_absent=True)
                cfg = StoreConfig.decode(await store.get(CONFIG_KEY))
            repo = cls(store, cfg, workers=workers, switch_interval=switch_interval,
                       direct_writes=direct_writes, zstd_level=zstd_level)
        except BaseException:
            await store.close()
            raise
        return repo

    async def index_ready(self) -> None:
        """Load the index shards in the store, once (every write calls this
        first; a daemon at start-up).  A load that fails raises here and is
        tried again by the next call."""
        if self.index_loaded:
            return
        async with self._index_lock:
            if not self.index_loaded:
                await self.refresh_index()
                self.index_loaded = True

    async def refresh_index(self) -> int:
        """Load index shards written since the last call (by this process or
        any other writer sharing the store); returns how many were new."""
        keys = [o.key async for o in self.store.list(INDEX_PREFIX)
                if o.key not in self.index.shards]

        async def load(key: str):
            try:
                data = await self.store.get(key)
                # Not in the pool: the first write's scans fill its queue,
                # and every lookup waits for the index (a package version's
                # first batches waited ~30 ms behind them).
                return key, await asyncio.to_thread(decode_shard, data, f"index shard {key}")
            except ObjectNotFound:
                return key, None
            except IntegrityError as e:
                # The index only speeds up dedup: a damaged shard costs
                # re-storing its chunks, never a wrong read.  `verify` reports
                # it.  A store that fails to answer is not that: it raises,
                # and the next call loads the shard (marked loaded, it would
                # have cost a daemon that shard's dedup for its whole life).
                log.warning("skipping %s", e)
                return key, None

        for chunk in _batches(keys, 16):
            got = await asyncio.gather(*(load(k) for k in chunk), return_exceptions=True)
            for g in got:
                if not isinstance(g, BaseException):
                    key, rows = g
                    if rows is not None:
                        self.index.add(*rows)
                    self.index.shards.add(key)
            _raise_first(got)
        return len(keys)

    def background(self, coro) -> asyncio.Future:
        """A task the repository owns (a session's early index load): one
        still running at close() is cancelled and awaited there, before the
        store closes under it.  Left behind, a repository opened and closed
        at once (a probe, a daemon stopped at start-up) destroyed a pending
        task at the loop's end, mid-request in the store's client."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        running = [t for t in self._background if not t.done()]
        for t in running:
            t.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.stages.close()
        if self._switch_interval is not None:
            self._switch_interval = None
            gil.release()
        await self.store.close()

    async def __aenter__(self) -> "Repository":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- writing -----------------------------------------------------------------
    def session(self, **options) -> WriteSession:
        """A write session for ingesting many files into shared packs; call
        `await session.flush()` when done."""
        return WriteSession(self, **options)

    async def put_file(self, path: str | os.PathLike, ref: str | None = None, *,
                       progress: Callable[[int], None] | None = None,
                       sha256: bool = True) -> IngestResult:
        """Ingest one file.  Every put_* takes `sha256=False` to skip the
        file's SHA-256 (the result, manifest and ref then carry none; see
        WriteSession)."""
        s = self.session(sha256=sha256)
        try:
            return await self._put_path(s, Path(path), ref, flush=True, progress=progress)
        finally:
            await _quiet_flush(s)

    async def put_bytes(self, data, ref: str | None = None, *, sha256: bool = True) -> IngestResult:
        mv = memoryview(data).cast("B")
        pos = 0

        async def readinto(out: memoryview) -> int:
            nonlocal pos
            n = min(out.nbytes, mv.nbytes - pos)
            out[:n] = mv[pos:pos + n]
            pos += n
            return n

        s = self.session(sha256=sha256)
        try:
            return await s.ingest(readinto, ref)
        finally:
            await _quiet_flush(s)

    async def put_stream(self, stream, ref: str | None = None, *,
                         progress: Callable[[int], None] | None = None,
                         sha256: bool = True) -> IngestResult:
        """Ingest a stream of unknown length: an async iterable of bytes-like
        blocks, an object with `async read(n)`, or a binary file object."""
        s = self.session(sha256=sha256)
        try:
            return await s.ingest(stream_reader(stream), ref, progress=progress)
        finally:
            await _quiet_flush(s)

    async def put_tree(self, paths: Iterable[str | os.PathLike], *,
                       on_result: Callable[[IngestResult], None] | None = None,
                       progress: Callable[[int], None] | None = None,
                       sha256: bool = True,
                       planned: list[tuple[str, str, int]] | None = None) -> list[IngestResult]:
        """Ingest files and directories (recursively).  A file's ref is its
        name; a directory's files get DIRNAME/relative/path, as `cp -r` would
        name them, through one tree ref at DIRNAME (docs/FORMAT.md 9.1):
        the directory's names are then exactly its files, whatever was
        named under DIRNAME/ before, and they appear together, once every
        file is stored, when this returns.  Every path is checked before
        anything is written; the tree is walked in a thread, not on the
        event loop.  `planned`: what `plan_tree_sized(paths)` returned, so
        the tree is not walked again (`paths` is then not read)."""
        # The session first: it starts loading the index, beside the walk.
        s = self.session(sha256=sha256)
        if planned is None:
            paths = list(paths)
            planned = await asyncio.to_thread(plan_tree_sized, paths)
        if not planned:
            return []
        # A directory's files (refs DIRNAME/...) are named by its tree, not
        # each by a ref.  The tree they replace, if any, tells which of their
        # manifests are stored already (written before it named them).
        roots = sorted({ref.split("/", 1)[0] for _, ref, _ in planned if "/" in ref})
        if len(planned) > MAX_TREE_FILES:
            per_root = Counter(ref.split("/", 1)[0] for _, ref, _ in planned if "/" in ref)
            big = [r for r, n in per_root.items() if n > MAX_TREE_FILES]
            if big:
                # Refused before anything is written, not when the tree is.
                raise InvalidName(f"a tree holds at most {MAX_TREE_FILES} files; "
                                  f"{big[0]} has {per_root[big[0]]}: put it in parts")
        old_trees = await self._old_trees(roots)
        commit_ref = [None if "/" in ref else ref for _, ref, _ in planned]
        # A small file of a tree keeps its manifest in the tree, not at
        # files/<id>: a package version's manifests were 959 of its 976
        # objects (a PUT each on S3).
        keep = [("/" in ref and size <= SMALL_FILE) for _, ref, size in planned]
        # Each file's entry in the tree its directory replaces, if any.
        prior: list[TreeEntry | None] = []
        for _, ref, _ in planned:
            root, sep, rel = ref.partition("/")
            prior.append(old_trees[root][1].get(rel) if sep and root in old_trees else None)
        named = [e and e.file_id for e in prior]
        slots = asyncio.Semaphore(FILES_IN_FLIGHT)
        results: list[IngestResult | None] = [None] * len(planned)
        writes_left = len(planned)
        written = asyncio.Event()

        def wrote(n: int) -> None:
            nonlocal writes_left
            writes_left -= n
            if not writes_left:
                written.set()

        async def commit(i: int, w, ref: str) -> None:
            # Commits wait outside the slots for packs shared with later files.
            results[i] = r = await s.commit(w, commit_ref[i], flush=False, named=named[i],
                                            keep=keep[i])
            r.ref = ref
            if on_result:
                on_result(r)

        async def one(i: int, path: str, ref: str) -> None:
            try:
                async with slots:        # the data phase is what needs bounding
                    w = await self._write_path(s, path, progress)
            except BaseException:
                written.set()
                raise
            finally:
                wrote(1)
            await commit(i, w, ref)

        async def batch(files: list[tuple[int, Path, str]]) -> None:
            # Small files in one pool hop and one index lookup per batch: per
            # file hops and lookups were most of a package tree's CPU time.
            try:
                async with slots:
                    scans = await self._run(scan_small_files, [p for _, p, _ in files],
                                            SMALL_FILE, s.params, s.sha256, s.coarse)
                    small, grown = [], []
                    for job, sc in zip(files, scans):
                        if isinstance(sc, OSError):
                            raise _open_error(job[1], sc)
                        if sc is None:
                            grown.append(job)
                        else:
                            small.append((job, sc))
                    ws = await s.write_scanned_many([sc for _, sc in small])
                    if progress:
                        progress(sum(w.size for w in ws))
            except BaseException:
                written.set()
                raise
            # Files that grew past SMALL_FILE since they were listed are
            # streamed, each counting itself as written.
            late = [asyncio.ensure_future(one(*job)) for job in grown]
            wrote(len(small))
            try:
                # Committed together: the batch's files mostly wait for the
                # same frames and pack.
                got = await s.commit_many(ws, [commit_ref[job[0]] for job, _ in small],
                                          [named[job[0]] for job, _ in small],
                                          [keep[job[0]] for job, _ in small])
                failed = None
                for (job, _), r in zip(small, got):
                    if isinstance(r, BaseException):
                        failed = failed or r
                        continue
                    r.ref = job[2]
                    results[job[0]] = r
                    if on_result:
                        on_result(r)
                await asyncio.gather(*late)
                if failed is not None:
                    raise failed
            except BaseException:
                for t in late:
                    t.cancel()
                raise

        tasks = [asyncio.ensure_future(batch(group) if isinstance(group, list) else one(*group))
                 for group in _group_small(planned)]
        try:
            await written.wait()
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                raise failed[0].exception()
            await s.flush()              # the last, partly filled pack
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _quiet_flush(s)
            raise
        if roots:
            await self._name_trees(roots, old_trees, results, prior)
        return [r for r in results if r is not None]

    async def _old_trees(self, roots: list[str]) -> dict[str, tuple[TreeRef, Tree]]:
        """The trees at these names, where trees are there (a damaged one is
        left out: it is replaced, and nothing is taken from it)."""
        out: dict[str, tuple[TreeRef, Tree]] = {}
        for name, data in zip(roots, await self.store.get_many([ref_key(r) for r in roots])):
            if data is None:
                continue
            try:
                r = decode_ref(name, data)
                if isinstance(r, TreeRef):
                    out[name] = (r, await self._load_tree(bytes.fromhex(r.tree_id), name))
            except IngestError:
                continue
        return out

    async def _name_trees(self, roots: list[str], old: dict[str, tuple[TreeRef, Tree]],
                          results: list[IngestResult | None],
                          prior: list[TreeEntry | None]) -> None:
        """Write each root's tree and tree ref (every manifest is stored by
        now), then delete the ref objects below it that would hide its
        names: what a tree names is what the directory held.  `prior[i]`:
        result i's entry in the tree it replaces."""
        entries: dict[str, dict[str, TreeEntry]] = {r: {} for r in roots}
        for r, e in zip(results, prior):
            if r is None:
                continue
            root, sep, rel = r.ref.partition("/")
            if not sep:
                continue
            fid = bytes.fromhex(r.file_id)
            manifest = r.manifest
            if manifest is None and e is not None and e.file_id == fid:
                manifest = e.manifest      # unchanged: where the replaced tree had it
            # A path listed twice: the later one, as a later ref would.
            entries[root][rel] = TreeEntry(rel, fid, r.size, r.sha256 and bytes.fromhex(r.sha256),
                                           manifest)
        for root in roots:
            prev = old.get(root)
            await self._put_tree_ref(root, Tree.of(entries[root].values()), prev and prev[0])
            below = [o.key async for o in self.store.list(ref_key(root) + "/")]
            for key in below:
                await self.store.delete(key)

    async def _write_path(self, s: WriteSession, path: str | os.PathLike, progress):
        try:
            small = await self._run(scan_small_file, path, SMALL_FILE, s.params, s.sha256,
                                    s.coarse)
        except OSError as e:
            raise _open_error(path, e) from None
        if small is not None:
            w = await s.write_scanned(*small)
            if progress:
                progress(w.size)
            return w
        try:
            f = await asyncio.to_thread(open, path, "rb", buffering=0)
        except OSError as e:
            raise _open_error(path, e) from None
        try:
            async def readinto(out: memoryview) -> int:
                try:
                    return await asyncio.to_thread(f.readinto, out)
                except OSError as e:
                    raise IngestError(f"cannot read {path}: {e.strerror}") from None
            fd = f.fileno()
            size, first = await asyncio.to_thread(_map_first, fd, s.block_size)
            if first is not None:
                return await s.write_file(fd, size, first, progress, name=str(path))
            return await s.write(readinto, progress, size_hint=size)
        finally:
            f.close()

    async def _put_path(self, s, path: str | os.PathLike, ref, *, flush, progress=None) -> IngestResult:
        if ref is not None:
            ref_key(ref)
        w = await self._write_path(s, path, progress)
        return await s.commit(w, ref, flush=flush)

    # -- reading -----------------------------------------------------------------
    async def resolve(self, name: str) -> tuple[bytes, Manifest]:
        """(file id, manifest) of a file id or ref name."""
        fid = hashing.parse_hex_id(name)
        if fid is None:
            ref = await self.get_ref(name)
            fid = bytes.fromhex(ref.file_id)
        m = self._manifests.get(fid)
        if m is None:
            got = (await self._manifest_objects([fid])).get(fid)
            if got is None:
                raise NotFound(f"unknown file id {fid.hex()}")
            m = await self._run(Manifest.decode, got[0], got[1], fid)
            self._cache_manifest(fid, m)
        return fid, m

    async def _manifest_objects(self, fids: list[bytes]) -> dict[bytes, tuple[bytes, str]]:
        """(stored manifest, its name for errors) of each file id found: kept
        by a tree this process has read (no files/ read), else at
        files/<id>, else kept by a tree it has not read yet."""
        out = {f: (d, f"manifest {f.hex()} (kept in a tree)")
               for f, d in (await self._kept_manifests(fids, list_trees=False)).items()}
        rest = [f for f in fids if f not in out]
        datas = await self.store.get_many([manifest_key(f) for f in rest]) if rest else []
        missing = []
        for f, d in zip(rest, datas):
            if d is None:
                missing.append(f)
            else:
                out[f] = (d, f"manifest {f.hex()}")
        if missing:
            out.update((f, (d, f"manifest {f.hex()} (kept in a tree)"))
                       for f, d in (await self._kept_manifests(missing)).items())
        return out

    def _cache_manifest(self, fid: bytes, m: Manifest) -> None:
        if len(self._manifests) >= 256:
            self._manifests.pop(next(iter(self._manifests)))
        self._manifests[fid] = m

    async def get_ref(self, name: str) -> Ref:
        """The file a name gives: its own ref, or its entry in the tree of
        the nearest ancestor that has a ref object (docs/FORMAT.md 9.3)."""
        (got,) = await self._lookup_many([name])
        if isinstance(got, BaseException):
            raise got
        return got

    async def _lookup_many(self, names: list[str]) -> list:
        """get_ref of many names, with one batch read of every ref object
        they need (each name and its ancestors); per name its Ref, or the
        NotFound or FormatError that get_ref would raise."""
        chains = [[check_name(n), *ancestors(n)] for n in names]
        # The names first; the ancestors only of names without a ref of
        # their own (a file ref, the common case, costs one read).
        keys = list(dict.fromkeys(ref_key(n) for n in names))
        datas = dict(zip(keys, await self.store.get_many(keys)))
        up = list(dict.fromkeys(ref_key(a) for chain in chains if datas[ref_key(chain[0])] is None
                                for a in chain[1:]))
        up = [k for k in up if k not in datas]
        if up:
            datas.update(zip(up, await self.store.get_many(up)))
        decoded: dict[str, object] = {}

        def ref_at(name: str):
            if name not in decoded:
                data = datas[ref_key(name)]
                try:
                    decoded[name] = None if data is None else decode_ref(name, data)
                except IngestError as e:
                    decoded[name] = e
            return decoded[name]

        out: list = []
        wanted: dict[bytes, list[tuple[int, str, TreeRef]]] = {}
        for i, chain in enumerate(chains):
            name = chain[0]
            out.append(NotFound(f"no such file or ref: {name}"))
            for at in chain:
                r = ref_at(at)
                if r is None:
                    continue
                if isinstance(r, BaseException):
                    out[i] = r
                elif isinstance(r, Ref):
                    if at == name:
                        out[i] = r
                elif at == name:
                    out[i] = NotFound(f"{name} is a tree of {r.files} files, not a file "
                                      f"(name one of them, or restore {name}/)")
                else:
                    wanted.setdefault(bytes.fromhex(r.tree_id), []).append((i, at, r))
                break
        for tid, uses in wanted.items():
            try:
                tree = await self._load_tree(tid, uses[0][2].name)
            except IngestError as e:
                for i, _, _ in uses:
                    out[i] = e
                continue
            for i, at, tref in uses:
                e = tree.get(chains[i][0][len(at) + 1:])
                if e is not None:
                    out[i] = Ref(chains[i][0], e.file_id.hex(), e.size,
                                 e.sha256 and e.sha256.hex(), tref.time)
        return out

    async def _load_tree(self, tid: bytes, name: str) -> Tree:
        tree = self._trees.get(tid)
        if tree is not None:
            self._trees.move_to_end(tid)
            return tree
        try:
            data = await self.store.get(tree_key(tid))
        except ObjectNotFound:
            raise IntegrityError(f"ref {name}: its tree {tid.hex()} is missing") from None
        tree = await self._run(Tree.decode, data, f"tree {tid.hex()}", tid)
        self._cache_tree(tid, tree)
        return tree

    def _cache_tree(self, tid: bytes, tree: Tree) -> None:
        self._trees[tid] = tree
        self._trees.move_to_end(tid)
        while len(self._trees) > TREES_CACHED:
            self._trees.popitem(last=False)
        if tid not in self._indexed_trees:
            self._indexed_trees.add(tid)
            for e in tree.entries:
                if e.manifest is not None:
                    self._in_trees.setdefault(e.file_id, (tid, e.path))

    async def _index_trees(self, keys: list[str]) -> None:
        """Read the trees at these keys (a listing of trees/) that this
        process has not indexed, so that _in_trees knows what they keep."""
        self._trees_listed_at = time.monotonic()
        todo = []
        for key in keys:
            tid = hashing.parse_hex_id(key[len(TREES_PREFIX):])
            if tid is not None and tid not in self._indexed_trees:
                todo.append((tid, key))

        async def one(tid: bytes, key: str) -> None:
            try:
                await self._load_tree(tid, key)
            except IntegrityError as e:
                # Damaged (or gone since the listing): not read again.  A
                # store that fails to answer is not that: it raises, and a
                # later lookup reads the tree again.
                log.warning("skipping %s: %s", key, e)
                self._indexed_trees.add(tid)

        # TREES_READ_AT_ONCE at a time: one by one, a store of a thousand
        # trees on S3 was a thousand round trips before the first answer.
        for batch in _batches(todo, TREES_READ_AT_ONCE):
            _raise_first(await asyncio.gather(*(one(tid, key) for tid, key in batch),
                                              return_exceptions=True))

    async def _kept_manifests(self, fids: list[bytes], *, list_trees: bool = True
                              ) -> dict[bytes, bytes]:
        """The manifests that trees keep for these file ids (docs/FORMAT.md
        9.2), found through the trees this process has seen; if some are
        not (and `list_trees`), the store's trees/ are listed again (at most
        every TREES_RELIST seconds: a file id nobody stored costs no
        listing each) and the new ones read."""
        if list_trees and any(f not in self._in_trees for f in fids) and (
                time.monotonic() - self._trees_listed_at >= TREES_RELIST):
            await self._index_trees([o.key async for o in self.store.list(TREES_PREFIX)])
        by_tree: dict[bytes, list[tuple[bytes, str]]] = {}
        for f in dict.fromkeys(fids):
            at = self._in_trees.get(f)
            if at is not None:
                by_tree.setdefault(at[0], []).append((f, at[1]))
        out: dict[bytes, bytes] = {}
        for tid, wanted in by_tree.items():
            try:
                tree = await self._load_tree(tid, f"trees/{tid.hex()}")
            except IntegrityError:
                continue        # damaged or gone: as if it kept none (a store failure raises)
            for f, path in wanted:
                e = tree.get(path)
                if e is not None and e.file_id == f and e.manifest is not None:
                    out[f] = e.manifest
        return out

    async def iter_read(self, name: str, start: int = 0, end: int | None = None
                        ) -> AsyncIterator[bytes | memoryview]:
        """Bytes [start, end) of a file, in order, as large blocks.

        Consecutive frames that lie back to back in one pack are fetched
        with one range request (up to SPAN_BYTES), READ_AHEAD requests in
        flight, and decoded in one pool call; every chunk is checked against
        its id before a byte of it is returned."""
        _, m = await self.resolve(name)
        async for b in self._iter_manifest(m, start, end):
            yield b

    async def _iter_manifest(self, m: Manifest, start: int = 0, end: int | None = None
                             ) -> AsyncIterator[bytes | memoryview]:
        end = m.size if end is None else min(end, m.size)
        if start < 0 or end < 0:
            raise ValueError("negative range")
        if start >= end:
            return
        ends = m.ends()
        lo = int(np.searchsorted(ends, start, side="right"))
        hi = int(np.searchsorted(ends, end - 1, side="right")) + 1
        locs = m.locations(lo, hi)
        ids = m.chunks["id"][lo:hi]
        spans = _plan_spans(m.chunks["frame"][lo:hi], locs)

        def fetch(span):
            return asyncio.ensure_future(self._read_span(locs, ids, span))

        window: list[asyncio.Future] = [fetch(sp) for sp in spans[:READ_AHEAD]]
        nxt = len(window)
        pos = int(ends[lo - 1]) if lo else 0          # file offset of the next block
        try:
            for _ in spans:
                blocks = await window.pop(0)
                if nxt < len(spans):
                    window.append(fetch(spans[nxt]))
                    nxt += 1
                for data in blocks:
                    n = len(data)
                    s = max(start - pos, 0)
                    e = min(end - pos, n)
                    pos += n
                    if s < e:
                        yield data if (s == 0 and e == n) else memoryview(data)[s:e]
        finally:
            for f in window:
                f.cancel()

    async def _read_span(self, locs: np.ndarray, ids: np.ndarray, span) -> list:
        """Fetch one span (frames back to back in one pack) and decode it.
        Frames the cache holds decoded are taken from it (and held, so an
        eviction meanwhile does not matter) and not read: the versions of a
        dataset share most frames, and reading them again for each file was
        a quarter of a dataset restore's thread time."""
        first, last, runs = span
        pack = bytes(locs[first]["pack"])
        pack_hex = pack.hex()
        cache = self.frame_cache
        held = None
        if cache is not None:
            held = [cache.get((pack_hex, int(locs["frame_offset"][a]))) for a, _ in runs]
            need = [runs[k][0] for k, e in enumerate(held) if e is None]
            if not need:
                return await self._run(_decode_span, None, 0, locs, ids, runs, pack_hex, cache,
                                       held)
            first, last = need[0], need[-1]
        off = int(locs[first]["frame_offset"])
        stop = int(locs[last]["frame_offset"]) + int(locs[last]["frame_length"])
        read = self.store.get_range_blocking
        if read is not None:
            # A local store: read and decode in one pool hop, not two.
            return await self._run(_read_decode_span, read, pack, off, stop, locs, ids, runs,
                                   cache, held)
        try:
            buf = await self.store.get(pack_key(pack), off, stop)
        except ObjectNotFound:
            buf = None
        return await self._run(_check_decode_span, buf, off, stop, locs, ids, runs, pack_hex,
                               cache, held)

    async def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        return b"".join([b async for b in self.iter_read(name, start, end)])

    async def restore(self, name: str, out: str | os.PathLike) -> int:
        """Write a file to `out` (through a temporary file, renamed when
        complete and verified); returns its size.  Files of DIRECT_MIN
        bytes or more are written with O_DIRECT where the file system
        allows it and `direct_writes` is on (ingest.output says why)."""
        out = Path(out)
        tmp = _tmp_path(out)
        _, m = await self.resolve(name)
        direct = self.direct_writes and m.size >= DIRECT_MIN
        batches = _write_batches(self._iter_manifest(m))
        try:
            first, second = ([], 0), None
            async for b in batches:                # the first two batches, if there are two
                if not first[0]:
                    first = b
                else:
                    second = b
                    break
            if second is None and not direct:
                # The whole file is in hand (most files of a tree): open, write
                # and rename in one thread hop instead of three.
                await asyncio.to_thread(_write_files, [(out, first[0])])
                return first[1]
            stage = self.stages.take()
            f = None
            n = 0
            try:
                try:
                    f = await _in_thread(OutputFile, tmp, stage, direct, undo=OutputFile.close)
                    for batch, size in (first, second or ([], 0)):
                        await _in_thread(f.write, batch)
                        n += size
                    async for batch, size in batches:
                        await _in_thread(f.write, batch)
                        n += size
                    await _in_thread(f.finish)
                finally:
                    if f is not None:
                        f.close()
                    self.stages.give(stage)
                os.replace(tmp, out)
            except OSError as e:
                _unlink_quietly(tmp)
                raise IngestError(f"cannot write {out}: {e.strerror}") from None
            except BaseException:
                _unlink_quietly(tmp)
                raise
            return n
        finally:
            await batches.aclose()

    async def restore_tree(self, prefix: str, out_dir: str | os.PathLike,
                           on_file: Callable[[str, int], None] | None = None) -> list[str]:
        """Restore every file whose ref starts with `prefix` (ending in '/')
        into out_dir, keeping the paths below the prefix."""
        if not prefix.endswith("/"):
            raise InvalidName("a tree prefix ends with '/'")
        check_name(prefix.rstrip("/"))
        out_dir = Path(out_dir)
        refs = await self.list_refs(prefix)
        if not refs:
            raise NotFound(f"no files under {prefix}")
        root = out_dir.absolute()
        targets = []
        for ref in refs:
            rel = ref.name[len(prefix):]
            check_name(rel)
            targets.append(root.joinpath(*rel.split("/")))
        try:
            await asyncio.to_thread(_make_dirs, {t.parent for t in targets})
        except OSError as e:
            raise IngestError(f"cannot create {e.filename}: {e.strerror}") from None
        names = [r.name for r in refs]
        await self.restore_many([(r.file_id, t) for r, t in zip(refs, targets)],
                                on_file=(lambda i, n: on_file(names[i], n)) if on_file else None)
        return names

    async def restore_many(self, items: Iterable[tuple[str, str | os.PathLike]],
                           on_file: Callable[[int, int], None] | None = None) -> list[int]:
        """Restore many files, each given as (file id or ref name, output
        path), as restore() would; returns their sizes, in order.
        `on_file(i, size)` is called as item i is done.  Output directories
        must exist.

        Small files go RESTORE_BATCH at a time: their manifests in one read,
        their spans in one batch of range reads (each distinct span once),
        then decoded, checked and written in one pool call.  One restore()
        per small file took five thread hops, and the hand-offs between
        threads were most of a tree's restore time (perf: a quarter of all
        samples in the scheduler)."""
        items = [(name, Path(out)) for name, out in items]
        sizes = [0] * len(items)
        large_slots = asyncio.Semaphore(4)
        small_slots = asyncio.Semaphore(2)     # one decoding while the next one reads

        def done(i: int, n: int) -> None:
            sizes[i] = n
            if on_file:
                on_file(i, n)

        async def large(i: int, name: str, out: Path) -> None:
            async with large_slots:
                done(i, await self.restore(name, out))

        async def small(group: list) -> None:
            async with small_slots:
                for i, n in await self._restore_small(group):
                    done(i, n)

        tasks: list[asyncio.Future] = []
        try:
            for batch in _batches(list(enumerate(items)), RESTORE_BATCH):
                fids = await self._file_ids([name for _, (name, _) in batch])
                manifests = await self._load_manifests(fids)
                group: list = []
                group_bytes = 0
                for (i, (name, out)), fid in zip(batch, fids):
                    m = manifests.get(fid)
                    if m is None or m.size > SMALL_FILE:
                        # Large, or missing or damaged (restore() says which).
                        tasks.append(asyncio.ensure_future(large(i, fid.hex(), out)))
                        continue
                    group.append((i, out, m))
                    group_bytes += m.size
                    if group_bytes >= RESTORE_BATCH_BYTES:
                        tasks.append(asyncio.ensure_future(small(group)))
                        group, group_bytes = [], 0
                if group:
                    tasks.append(asyncio.ensure_future(small(group)))
                # Bounded: at most one batch's worth of groups waits at a time.
                while len(tasks) > 2 * RESTORE_BATCH:
                    await tasks.pop(0)
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return sizes

    async def _file_ids(self, names: list[str]) -> list[bytes]:
        """The file id of each file id or ref name (refs read in one batch)."""
        fids: list[bytes | None] = [hashing.parse_hex_id(n) for n in names]
        named = [i for i, f in enumerate(fids) if f is None]
        if named:
            for i, got in zip(named, await self._lookup_many([names[i] for i in named])):
                if isinstance(got, BaseException):
                    raise got
                fids[i] = bytes.fromhex(got.file_id)
        return fids          # type: ignore[return-value]

    async def _restore_small(self, group: list[tuple[int, Path, Manifest]]) -> list[tuple[int, int]]:
        """Restore small files (index, output, manifest) with one batch of
        range reads and one pool call; returns (index, size) of each."""
        reads: dict[tuple[str, int, int], int] = {}
        planned: dict[int, tuple] = {}     # by id of the manifest: a file listed twice is planned once
        plans = []
        for i, out, m in group:
            plan = planned.get(id(m))
            if plan is None:
                locs = m.locations()
                parts = []
                for first, last, runs in (_plan_spans(m.chunks["frame"], locs) if len(locs) else []):
                    pack = bytes(locs[first]["pack"])
                    off = int(locs[first]["frame_offset"])
                    stop = int(locs[last]["frame_offset"]) + int(locs[last]["frame_length"])
                    r = (pack_key(pack), off, stop)
                    parts.append((reads.setdefault(r, len(reads)), runs, pack.hex()))
                plan = planned[id(m)] = (locs, m.chunks["id"], parts)
            plans.append((i, out, m.size, *plan))
        ranges = list(reads)
        bufs = await self.store.get_ranges(ranges)
        return await self._run(_write_small_files, plans, ranges, bufs, self.frame_cache)

    async def _load_manifests(self, fids: list[bytes]) -> dict[bytes, Manifest]:
        """Read and decode the manifests of many files (into the cache too);
        those missing or damaged are left out."""
        got = {f: self._manifests[f] for f in fids if f in self._manifests}
        fids = [f for f in dict.fromkeys(fids) if f not in got]
        if not fids:
            return got
        found = list((await self._manifest_objects(fids)).items())

        def decode_all():
            out = []
            for fid, (data, what) in found:
                try:
                    out.append((fid, Manifest.decode(data, what, fid)))
                except IngestError:
                    pass            # resolve() reads it again and says what is wrong
            return out
        for fid, m in await self._run(decode_all):
            self._cache_manifest(fid, m)
            got[fid] = m
        return got

    async def list_refs(self, prefix: str = "", *, after: str | None = None,
                        limit: int | None = None) -> list[Ref]:
        """Every name that starts with `prefix`, as get_ref would resolve
        it: file refs, and the entries of trees (listed under the prefix or
        above it), less those a deeper ref object hides; sorted by name.
        `after` and `limit`: only names after `after`, at most `limit` of
        them (a page).  A tree's entries are sorted, so a page of a tree of
        millions of files costs a search and the page, not the tree."""
        if limit is not None and limit < 1:
            return []
        # Read in batches of 256 (one thread hop each on the local store):
        # one get per ref was most of `ingest ls` on a tree of small files.
        found: dict[str, Ref | TreeRef] = {}
        keys: list[str] = []

        async def read() -> None:
            for key, data in zip(keys, await self.store.get_many(keys)):
                if data is not None:            # None: deleted while listing
                    name = key[len(REFS_PREFIX):]
                    found[name] = decode_ref(name, data)
            keys.clear()

        async for o in self.store.list(REFS_PREFIX + prefix):
            keys.append(o.key)
            if len(keys) >= 256:
                await read()
        # Trees above the prefix may hold names under it.
        above = ancestors(prefix + "x") if prefix else []
        keys += [ref_key(a) for a in above]
        if keys:
            await read()
        files = sorted((n, r) for n, r in found.items() if isinstance(r, Ref)
                       and n.startswith(prefix) and (after is None or n > after))
        sources = [iter(files)]
        for tname, tref in found.items():
            if isinstance(tref, TreeRef):
                tree = await self._load_tree(bytes.fromhex(tref.tree_id), tname)
                sources.append(_tree_names(tname, tref, tree, prefix, after, found))
        merged = heapq.merge(*sources, key=lambda item: item[0])
        return [r for _, r in itertools.islice(merged, limit)]

    async def delete_ref(self, name: str) -> None:
        """Delete what `name` resolves to: its own ref object (a file ref,
        or a tree ref and with it every name of that tree), and its entries
        in the nearest tree above it, which would otherwise show again."""
        chain = [check_name(name), *ancestors(name)]
        datas = await self.store.get_many([ref_key(a) for a in chain])
        deleted = False
        if datas[0] is not None:
            await self.store.delete(ref_key(name))
            deleted = True
        for at, data in zip(chain[1:], datas[1:]):
            if data is None:
                continue
            r = decode_ref(at, data)
            if isinstance(r, TreeRef):
                deleted = await self._drop_from_tree(r, name[len(at) + 1:]) or deleted
            break
        if not deleted:
            raise NotFound(f"no such ref: {name}")

    async def _drop_from_tree(self, tref: TreeRef, rel: str) -> bool:
        """Rewrite a tree without `rel` and anything below it; False if it
        held none of them."""
        tree = await self._load_tree(bytes.fromhex(tref.tree_id), tref.name)
        keep = [e for e in tree.entries if e.path != rel and not e.path.startswith(rel + "/")]
        if len(keep) == len(tree.entries):
            return False
        if not keep:
            await self.store.delete(ref_key(tref.name))
            return True
        await self._put_tree_ref(tref.name, Tree(keep))
        return True

    async def _put_tree_ref(self, name: str, tree: Tree, old: TreeRef | None = None) -> TreeRef:
        """Store a tree (if absent), then the tree ref naming it: the ref
        last, so it never names a missing tree.  Unchanged from `old`: only
        the ref's time is not rewritten."""
        data = tree.encode()
        tid = Tree.id_of(data)
        if old is not None and old.tree_id == tid.hex():
            return old
        await self.store.put(tree_key(tid), data, if_absent=True)
        self._cache_tree(tid, tree)
        ref = TreeRef(check_name(name), tid.hex(), len(tree.entries), tree.size, time.time())
        await self.store.put(ref_key(name), ref.encode())
        return ref

    # -- whole-store views ---------------------------------------------------------
    async def stats(self) -> dict:
        listed: dict[str, list] = {}
        for prefix in (PACK_PREFIX, INDEX_PREFIX, FILES_PREFIX, REFS_PREFIX, TREES_PREFIX):
            listed[prefix] = [o async for o in self.store.list(prefix)]
        sizes = {prefix: [o.size for o in objs] for prefix, objs in listed.items()}
        refs = await self.list_refs()
        await self.index_ready()          # "chunks" counts the index
        logical = sum(r.size for r in refs)
        stored = sum(sum(v) for v in sizes.values())
        # Files with a manifest: at files/<id>, or kept in a tree.
        await self._index_trees([o.key for o in listed[TREES_PREFIX]])
        files = {hashing.parse_hex_id(o.key[len(FILES_PREFIX):]) for o in listed[FILES_PREFIX]}
        files.update(self._in_trees)
        files.discard(None)
        return {
            "refs": len(refs),
            "files": len(files),
            "logical_bytes": logical,
            "stored_bytes": stored,
            "pack_bytes": sum(sizes[PACK_PREFIX]),
            "metadata_bytes": stored - sum(sizes[PACK_PREFIX]),
            "packs": len(sizes[PACK_PREFIX]),
            "chunks": len(self.index),
            "dedup_ratio": round(logical / stored, 4) if stored else None,
        }

    async def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Check everything: every ref resolves to a manifest that matches its
        id, every pack's footer and frames check out and every chunk hashes to
        its id, and every manifest's chunks are where it says."""
        rep = VerifyReport()

        def id_in(key: str, prefix: str, kind: str) -> bytes | None:
            """The id a key names, or None (and a problem) if it names none."""
            got = hashing.parse_hex_id(key[len(prefix):])
            if got is None:
                rep.problems.append(f"{key}: not a {kind} id")
            return got
        # pack id -> {(frame offset, frame length, raw length, codec, chunk offset, length, id)}
        chunks_at: dict[bytes, set] = {}

        async def check_pack(key: str, pid: bytes):
            try:
                data = await self.store.get(key)
                good, n = await self._run(_verify_pack, data, pid, f"pack {pid.hex()}")
            except IngestError as e:
                return str(e)
            if progress:
                progress(len(data))
            return good, n

        # Packs two at a time (a read beside a hash): 512 MiB took 0.93 s one
        # at a time.  At most VERIFY_PACKS packs are held in memory at once.
        window: list[tuple[bytes, asyncio.Future]] = []

        def settle(pid: bytes, out) -> None:
            if isinstance(out, str):
                rep.problems.append(out)
                return
            good, n = out
            chunks_at[pid] = good
            rep.chunks += len(good)
            rep.bytes_checked += n

        try:
            async for o in self.store.list(PACK_PREFIX):
                rep.packs += 1
                pid = id_in(o.key, PACK_PREFIX, "pack")
                if pid is None:
                    continue
                window.append((pid, asyncio.ensure_future(check_pack(o.key, pid))))
                if len(window) >= VERIFY_PACKS:
                    pid0, fut = window.pop(0)
                    settle(pid0, await fut)
            for pid0, fut in window:
                settle(pid0, await fut)
        finally:
            for _, fut in window:
                fut.cancel()
        ids_ok: dict[bytes, Manifest] = {}

        def check_manifest(fid: bytes, data, what: str) -> None:
            try:
                m = Manifest.decode(data, what, fid)
            except IngestError as e:
                rep.problems.append(str(e))
                return
            locs = m.locations()
            for i, (pack, foff, flen, fraw, codec, off, ln) in enumerate(zip(
                    locs["pack"].tolist(), locs["frame_offset"].tolist(),
                    locs["frame_length"].tolist(), locs["frame_raw"].tolist(),
                    locs["codec"].tolist(), locs["offset"].tolist(), locs["length"].tolist())):
                good = chunks_at.get(pack)
                if good is None:
                    rep.problems.append(f"{what}: chunk {i} is in missing or damaged pack {pack.hex()}")
                    return
                if (foff, flen, fraw, codec, off, ln, bytes(m.chunks["id"][i])) not in good:
                    rep.problems.append(f"{what}: chunk {i} is not where the manifest says")
                    return
            ids_ok[fid] = m

        listed: set[bytes] = set()
        async for o in self.store.list(FILES_PREFIX):
            rep.files += 1
            fid = id_in(o.key, FILES_PREFIX, "file")
            if fid is None:
                continue
            listed.add(fid)
            check_manifest(fid, await self.store.get(o.key),
                           f"manifest {o.key[len(FILES_PREFIX):]}")
        # Trees, and the manifests they keep (docs/FORMAT.md 9.2).
        trees: dict[bytes, Tree | None] = {}
        inline: set[bytes] = set()
        async for o in self.store.list(TREES_PREFIX):
            tid = id_in(o.key, TREES_PREFIX, "tree")
            if tid is None:
                continue
            try:
                trees[tid] = tree = Tree.decode(await self.store.get(o.key),
                                                f"tree {tid.hex()}", tid)
            except IngestError as e:
                trees[tid] = None
                rep.problems.append(str(e))
                continue
            for e in tree.entries:
                if e.manifest is None or e.file_id in inline:
                    continue
                inline.add(e.file_id)
                rep.files += e.file_id not in listed
                check_manifest(e.file_id, e.manifest, f"manifest of {e.path} in tree {tid.hex()}")

        def check(name: str, fid: str, size: int, sha: str | None) -> None:
            rep.refs += 1
            m = ids_ok.get(bytes.fromhex(fid))
            if m is None:
                rep.problems.append(f"ref {name}: file {fid} is missing or damaged")
            elif m.size != size or (m.sha256 is not None and sha is not None
                                    and m.sha256.hex() != sha):
                # Either may lack a sha256 (ingested with sha256=False).
                rep.problems.append(f"ref {name}: size or sha256 differs from its manifest")

        async for o in self.store.list(REFS_PREFIX):
            name = o.key[len(REFS_PREFIX):]
            try:
                ref = decode_ref(name, await self.store.get(o.key))
            except IngestError as e:
                rep.refs += 1
                rep.problems.append(str(e))
                continue
            if isinstance(ref, Ref):
                check(name, ref.file_id, ref.size, ref.sha256)
                continue
            tid = bytes.fromhex(ref.tree_id)
            if tid not in trees:
                rep.problems.append(f"ref {name}: its tree {ref.tree_id} is missing")
                continue
            tree = trees[tid]
            if tree is None:
                rep.problems.append(f"ref {name}: its tree {ref.tree_id} is damaged")
                continue
            if ref.files != len(tree.entries) or ref.size != tree.size:
                rep.problems.append(f"ref {name}: file count or size differs from its tree")
            for e in tree.entries:
                check(f"{name}/{e.path}", e.file_id.hex(), e.size, e.sha256 and e.sha256.hex())
        async for o in self.store.list(INDEX_PREFIX):
            try:
                _, locs = decode_shard(await self.store.get(o.key), f"index shard {o.key}")
            except IngestError as e:
                rep.problems.append(str(e))
                continue
            missing = {bytes(p) for p in np.unique(locs["pack"]).tolist()} - chunks_at.keys()
            if missing:
                rep.problems.append(f"index shard {o.key}: names {len(missing)} missing pack(s)")
        return rep


SPAN_BYTES = 8 << 20     # most bytes fetched by one range request on restore
SPAN_FRAMES = 16


def _plan_spans(chunk_frames: np.ndarray, locs: np.ndarray) -> list:
    """Group a read's chunks into runs (consecutive chunks of one frame) and
    the runs into spans (frames back to back in one pack): [(first chunk,
    last chunk, [(a, b) chunk ranges of its runs]), ...], indexes into locs."""
    n = len(chunk_frames)
    cuts = np.flatnonzero(np.diff(chunk_frames)) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    stops = np.concatenate((cuts, [n])).tolist()
    packs = locs["pack"][starts].tolist()
    offs = locs["frame_offset"][starts].tolist()
    lens = locs["frame_length"][starts].tolist()
    spans, cur = [], None
    for a, b, pack, off, ln in zip(starts, stops, packs, offs, lens):
        if (cur is not None and pack == cur_pack and off == cur_end
                and cur_end + ln - cur_start <= SPAN_BYTES and len(cur[2]) < SPAN_FRAMES):
            cur[2].append((a, b))
            cur[1] = b - 1
            cur_end = off + ln
            continue
        if cur is not None:
            spans.append(tuple(cur))
        cur = [a, b - 1, [(a, b)]]
        cur_pack, cur_start, cur_end = pack, off, off + ln
    if cur is not None:
        spans.append(tuple(cur))
    return spans


def _tree_names(tname: str, tref: TreeRef, tree: Tree, prefix: str, after: str | None,
                found: dict) -> Iterator[tuple[str, Ref]]:
    """(name, Ref) of a tree's entries that start with `prefix`, come after
    `after` and no ref object in `found` hides, in order: from a binary
    search to where they start (the entries are sorted by path, which is
    name order), lazily."""
    base = tname + "/"
    if base.startswith(prefix):
        sub = ""                     # the prefix is above the tree: all of it
    elif prefix.startswith(base):
        sub = prefix[len(base):]     # the prefix is inside the tree
    else:
        return
    entries = tree.entries
    start = bisect.bisect_left(entries, sub, key=_PATH) if sub else 0
    if after is not None and after >= base:
        if not after.startswith(base):
            return                   # every name here sorts before `after`
        start = max(start, bisect.bisect_right(entries, after[len(base):], key=_PATH))
    # By index from `start`: islice() would step through the entries before it.
    for i in range(start, len(entries)):
        e = entries[i]
        if not e.path.startswith(sub):
            return
        name = base + e.path
        if name in found:
            continue                 # its own ref object says what it is
        # Hidden by a ref object between the tree and the name?
        depth = e.path.count("/")
        if depth and any(a in found for a in ancestors(name)[:depth]):
            continue
        yield name, Ref(name, e.file_id.hex(), e.size, e.sha256 and e.sha256.hex(), tref.time)


_PATH = operator.attrgetter("path")


class FrameCache:
    """Decoded frames, least recently used first out, shared by the pool's
    threads: the files of a restore_many (dataset versions, a fine-tune and
    its base) mostly reuse the same frames, and decompressing each again
    per file was most of their restore's decode time.  Holds frames whose
    checksum passed, each with the (offset, length, id) of the chunks found
    to match their ids in it, which later reads do not hash again (this
    process decoded and checked those bytes itself; they never leave
    memory)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: OrderedDict[tuple[str, int], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> tuple | None:
        """(raw frame, set of checked chunks) or None."""
        with self._lock:
            entry = self._frames.get(key)
            if entry is not None:
                self._frames.move_to_end(key)
            return entry

    def put(self, key: tuple[str, int], raw) -> tuple:
        """Keep a decoded frame (unless it is larger than the whole cache);
        returns its entry, to record the chunks checked in it."""
        entry = (raw, set())
        if len(raw) > self.max_bytes:
            return entry
        with self._lock:
            if key in self._frames:
                return self._frames[key]
            self._frames[key] = entry
            self.bytes += len(raw)
            while self.bytes > self.max_bytes:
                self.bytes -= len(self._frames.popitem(last=False)[1][0])
        return entry


def _read_decode_span(read, pack: bytes, off: int, stop: int, locs: np.ndarray,
                      ids: np.ndarray, runs: list, cache: FrameCache | None = None,
                      held: list | None = None) -> list:
    try:
        buf = read(pack_key(pack), off, stop)
    except ObjectNotFound:
        buf = None
    return _check_decode_span(buf, off, stop, locs, ids, runs, pack.hex(), cache, held)


def _check_decode_span(buf, off: int, stop: int, locs: np.ndarray, ids: np.ndarray,
                       runs: list, pack_hex: str, cache: FrameCache | None = None,
                       held: list | None = None) -> list:
    """Decode a span read as pack bytes [off, stop); `buf` None: the pack is missing."""
    if buf is None:
        raise IntegrityError(f"missing pack {pack_hex}")
    if len(buf) != stop - off:
        raise IntegrityError(f"pack {pack_hex} is shorter than its frames (truncated)")
    return _decode_span(buf, off, locs, ids, runs, pack_hex, cache, held)


def _decode_span(buf, base: int, locs: np.ndarray, ids: np.ndarray, runs: list,
                 pack_hex: str, cache: FrameCache | None = None,
                 held: list | None = None) -> list:
    """Decode the runs of a span from `buf`, pack bytes from `base` on;
    held[k], when given and not None, is run k's frame, decoded already
    (FrameCache entry), which `buf` need not cover."""
    mv = memoryview(buf) if buf is not None else None
    out = []
    for k, (a, b) in enumerate(runs):
        foff = int(locs["frame_offset"][a])
        entry = held[k] if held is not None else None
        if entry is None:
            ln = int(locs["frame_length"][a])
            frame = mv[foff - base:foff - base + ln]
        else:
            frame = None
        out.append(_decode_run(frame, locs[a:b], ids[a:b], f"pack {pack_hex} frame at {foff}",
                               cache, (pack_hex, foff), entry))
    return out


def _decode_run(buf, locs: np.ndarray, ids: np.ndarray, what: str,
                cache: FrameCache | None = None, key: tuple[str, int] | None = None,
                entry: tuple | None = None):
    loc = locs[0]
    if entry is None and cache is not None:
        entry = cache.get(key)
    if entry is None:
        stored = check_frame(buf, int(loc["frame_raw"]), int(loc["codec"]), what)
        raw = decompress(int(loc["codec"]), stored, int(loc["frame_raw"]))
        entry = cache.put(key, raw) if cache is not None else (raw, set())
    raw, checked = entry
    offs, lens = locs["offset"], locs["length"]
    a = int(offs[0])
    b = int(offs[-1]) + int(lens[-1])
    keys = list(zip(offs.tolist(), lens.tolist(), ids.view("V32").reshape(-1).tolist()))
    if not checked.issuperset(keys):
        # Every chunk not checked before, in one native call.
        if hashing.first_mismatch(raw, offs, lens, ids) >= 0:
            raise IntegrityError(f"{what}: chunk does not match its id (data is corrupted)")
        checked.update(keys)
    if len(offs) > 1 and not np.array_equal(offs[1:], offs[:-1] + lens[:-1]):
        # Not back to back in the frame (a chunk used twice in a row): not
        # one run, copied out chunk by chunk.
        mv = memoryview(raw)
        return b"".join([mv[off:off + ln] for off, ln, _ in keys])
    # decompress() gives bytes or a read-only view: the cache's frame is safe
    # to hand out, and a view of part of it costs no copy.
    return raw if (a, b) == (0, len(raw)) else memoryview(raw)[a:b]


def _verify_pack(data: bytes, pack_id: bytes, what: str) -> tuple[set, int]:
    check_header(data[:8], what)
    off, length = footer_location(len(data), data[-TRAILER.size:], what)
    footer = data[off:off + length]
    import blake3
    if blake3.blake3(footer).digest() != pack_id:
        raise IntegrityError(f"{what}: footer does not match the pack id")
    frames, chunks = parse_footer(footer, what)
    good = set()
    mv = memoryview(data)
    end = 8
    for fi, fr in enumerate(frames.tolist()):
        foff, flen, raw_len, codec = fr[0], fr[1], fr[2], fr[3]
        if foff < end or foff + flen > off:
            raise FormatError(f"{what}: frame {fi} overlaps another or lies outside the pack")
        end = foff + flen
        stored = check_frame(mv[foff:foff + flen], raw_len, codec, f"{what} frame {fi}", fr)
        raw = memoryview(decompress(codec, stored, raw_len))
        sel = chunks[chunks["frame"] == fi]
        bad = hashing.first_mismatch(raw, sel["offset"], sel["length"], sel["id"])
        if bad >= 0:
            raise IntegrityError(f"{what}: frame {fi} chunk at {int(sel['offset'][bad])} "
                                 "does not match its id")
        for cid, c_off, c_len in zip(sel["id"].tolist(), sel["offset"].tolist(), sel["length"].tolist()):
            good.add((foff, flen, raw_len, codec, c_off, c_len, cid))
    return good, len(data)


def _map_first(fd: int, block: int) -> tuple[int, Window | None]:
    """(size, the mapped window of its first block), or (size, None) when the
    file is not a regular one or cannot be mapped: read it instead."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not st.st_size:
        return st.st_size, None
    try:
        return st.st_size, Window(fd, 0, min(st.st_size, block))
    except OSError:
        return st.st_size, None


def _open_error(path, e: OSError) -> IngestError:
    """The one-line error for a file that cannot be opened or read."""
    if isinstance(e, FileNotFoundError):
        return NotFound(f"no such file: {path}")
    if isinstance(e, IsADirectoryError):
        return IngestError(f"is a directory: {path}")
    return IngestError(f"cannot read {path}: {e.strerror}")


async def _write_batches(blocks: AsyncIterator) -> AsyncIterator[tuple[list, int]]:
    """(blocks, bytes) of up to WRITE_BATCH bytes or 256 blocks at a time:
    one thread hop per batch when writing them out."""
    batch: list = []
    size = 0
    try:
        async for block in blocks:
            batch.append(block)
            size += len(block)
            if size >= WRITE_BATCH or len(batch) >= 256:
                yield batch, size
                batch, size = [], 0
        if batch:
            yield batch, size
    finally:
        await blocks.aclose()


def _write_small_files(plans: list, ranges: list, bufs: list,
                       cache: FrameCache | None = None) -> list[tuple[int, int]]:
    """Decode, check and write small files from their fetched spans (in a
    pool thread); a file listed twice (same planned locations) is decoded
    once.  The files are written together (_write_files); if one cannot be
    decoded, those before it are still written, then the error is raised."""
    done: list[tuple[int, int]] = []
    items: list[tuple[Path, list]] = []
    decoded: dict[int, list] = {}              # by id of its locations: same manifest
    try:
        for i, out, size, locs, ids, parts in plans:
            blocks = decoded.get(id(locs))
            if blocks is None:
                blocks = []
                for r, runs, pack_hex in parts:
                    _, start, stop = ranges[r]
                    blocks += _check_decode_span(bufs[r], start, stop, locs, ids, runs, pack_hex,
                                                 cache)
                decoded[id(locs)] = blocks
            items.append((out, blocks))
            done.append((i, size))
    except BaseException:
        try:
            _write_files(items)
        except IngestError:
            pass                           # the decoding error is the one to report
        raise
    _write_files(items)
    return done


def _tmp_path(out: Path) -> Path:
    """Where a restored file is written before it is renamed to `out`."""
    return out.with_name(f".{out.name}.ingest-tmp")


def _write_files(items: list[tuple[Path, list]]) -> None:
    """Write whole restored files, each (output path, blocks): every
    temporary file (_tmp_path) created and written, then every one renamed
    to its output, each step one native call for all of them
    (beside a busy thread each syscall made from Python was a wait for the
    GIL).  Files that fail leave no temporary file behind; the first
    failure is raised once the others are in place."""
    # An output listed twice is written once, as its last listing says.
    outs = dict(items)
    if not outs:
        return
    paths = list(outs)
    tmps = [_tmp_path(out) for out in paths]
    errs = write_files(tmps, list(outs.values()))
    ok = [k for k, e in enumerate(errs) if not e]
    placed = place_files([tmps[k] for k in ok], [paths[k] for k in ok], False) if ok else []
    for k, e in zip(ok, placed):
        errs[k] = e
    failed = [k for k, e in enumerate(errs) if e]
    if failed:
        remove_files([tmps[k] for k in failed])
        k = failed[0]
        raise IngestError(f"cannot write {paths[k]}: {os.strerror(errs[k])}")


def _make_dirs(dirs) -> None:
    for d in sorted(dirs):
        d.mkdir(parents=True, exist_ok=True)


async def _in_thread(fn, *args, undo=None):
    """asyncio.to_thread, except that a cancelled caller still waits for
    the thread to be done (it may be using a buffer that is given back, to
    be reused, once the caller is gone) and then passes what the call
    returned, if it returned, to `undo`."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        if not fut.cancelled() and fut.exception() is None and undo is not None:
            undo(fut.result())
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def stream_reader(stream):
    """Adapt a stream to `async readinto(memoryview) -> int`."""
    if hasattr(stream, "__aiter__"):
        it = stream.__aiter__()
        pending = memoryview(b"")

        async def readinto(out: memoryview) -> int:
            nonlocal pending
            while not pending:
                try:
                    pending = memoryview(await it.__anext__()).cast("B")
                except StopAsyncIteration:
                    return 0
            n = min(out.nbytes, pending.nbytes)
            out[:n] = pending[:n]
            pending = pending[n:]
            return n
        return readinto
    read = getattr(stream, "read", None)
    if read is not None and asyncio.iscoroutinefunction(read):
        async def readinto(out: memoryview) -> int:
            data = await read(out.nbytes)
            out[:len(data)] = data
            return len(data)
        return readinto
    if hasattr(stream, "readinto"):
        async def readinto(out: memoryview) -> int:
            return (await asyncio.to_thread(stream.readinto, out)) or 0
        return readinto
    raise TypeError("put_stream needs an async iterable, an async read(), or a binary file")


def plan_tree(paths: Iterable[str | os.PathLike]) -> Iterable[tuple[str, str]]:
    """(file, ref) for every regular file under `paths`, checking each path
    exists first.  Symlinks to files are followed; symlinked directories are
    not entered (no loops); sockets, fifos and devices are skipped."""
    return [(p, ref) for p, ref, _ in plan_tree_sized(paths)]


def plan_tree_sized(paths: Iterable[str | os.PathLike]) -> list[tuple[str, str, int]]:
    """plan_tree with each file's size, from the stat that found it.  Files
    are paths as strings, a directory's files in name order before its
    subdirectories (in name order, depth first).  Each directory is listed
    and its entries stat'ed in one native call (_mapped.list_dir): os.walk
    and a Path per file took 8-9 ms for a package version's 569 files,
    scandir and a stat_result per file 4.7 ms, the native listing 1.8 ms,
    all of it ahead of any work on the tree."""
    jobs = []
    for raw in paths:
        p = os.fspath(raw)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise NotFound(f"no such file or directory: {raw}") from None
        except OSError as e:
            raise IngestError(f"cannot access {raw}: {e.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            jobs.append((p, os.path.basename(p), st.st_size))
        elif stat.S_ISDIR(st.st_mode):
            _walk(p, Path(p).resolve().name or "root", jobs)
        else:
            raise IngestError(f"not a regular file or directory: {raw}")
    for _, ref, _ in jobs:
        check_name(ref)
    return jobs


def _walk(top: str, name: str, jobs: list) -> None:
    stack = [(top, name)]                    # (directory, its ref prefix)
    while stack:
        d, prefix = stack.pop()
        try:
            files, subdirs = list_dir(d)     # one native call a directory
        except OSError as e:
            _raise(e)
        head = d if d.endswith("/") else d + "/"
        jobs += [(head + f, f"{prefix}/{f}", size) for f, size in files]
        stack += [(head + s, f"{prefix}/{s}") for s in reversed(subdirs)]


def _raise(e: OSError):
    raise IngestError(f"cannot read directory {e.filename}: {e.strerror}")


def _group_small(planned: list[tuple[str, str, int]]):
    """Per job in order: (i, path, ref) for a file streamed on its own, or a
    list of them for a batch of small files (at most SMALL_BATCH_FILES and
    about SMALL_BATCH_BYTES: the memory one slot may hold)."""
    group: list = []
    held = 0
    for i, (path, ref, size) in enumerate(planned):
        if size > SMALL_FILE:
            yield (i, path, ref)
            continue
        if group and (len(group) >= SMALL_BATCH_FILES or held + size > SMALL_BATCH_BYTES):
            yield group
            group, held = [], 0
        group.append((i, path, ref))
        held += size
    if group:
        yield group


def _raise_first(results: list) -> None:
    """Raise the first exception among gather(return_exceptions=True)
    results: every call of the batch has ended by then, none is left running."""
    for r in results:
        if isinstance(r, BaseException):
            raise r


def _batches(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


async def _quiet_flush(s: WriteSession) -> None:
    try:
        await s.flush()
    except BaseException:
        pass
