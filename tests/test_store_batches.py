"""put_many / get_many: the batch forms every store has (the local store's
own, and the per-object default S3 gets through RetryStore), and the write
order they keep in the engine."""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from ingest import Repository
from ingest.errors import IngestError, NotFound, StoreError
from ingest.stores import ObjectNotFound, open_store
from ingest.stores import local as local_mod
from ingest.stores.local import LocalStore
from ingest.stores.retry import RetryStore
from ingest.pipeline import scan_small_file
from helpers import run


def test_put_many_and_get_many(store_url):
    async def go():
        store = open_store(store_url)
        if not isinstance(store, RetryStore):
            store = RetryStore(store)           # the local store is used bare; count its calls
        try:
            assert await store.put("b/exists", b"old")
            got = await store.put_many([("b/one", b"1"), ("b/exists", b"new"), ("b/one", b"dup"),
                                        ("b/parts", [b"pa", memoryview(b"rt"), bytearray(b"s")]),
                                        ("b/empty", b"")], if_absent=True)
            # one of the two b/one puts of the batch wins (items have no order among them)
            assert got[1] is False and got[3:] == [True, True] and got[0] != got[2]
            one = b"1" if got[0] else b"dup"
            assert await store.get_many(["b/one", "b/exists", "b/missing", "b/parts", "b/empty"]) \
                == [one, b"old", None, b"parts", b""]
            assert await store.put_many([("b/exists", b"new"), ("c/d/e", b"deep")]) == [True, True]
            assert await store.get("b/exists") == b"new" and await store.get("c/d/e") == b"deep"
            assert await store.put_many([]) == [] and await store.get_many([]) == []
            with pytest.raises(IngestError):
                await store.put_many([("ok/key", b"x"), ("../escape", b"y")])
            m = store.metrics()
            assert m["put"]["errors"] >= 1 and m["put"]["bytes_out"] >= len(b"1parts") + 7
        finally:
            await store.close()
    run(go())


def test_get_ranges(store_url):
    async def go():
        store = open_store(store_url)
        if not isinstance(store, RetryStore):
            store = RetryStore(store)
        try:
            await store.put("packs/p", bytes(range(200)))
            await store.put("packs/q", b"qqqq")
            got = await store.get_ranges([("packs/p", 10, 20), ("packs/missing", 0, 5),
                                          ("packs/q", 1, 3), ("packs/p", 190, 300),
                                          ("packs/p", 10, 20), ("packs/p", 50, 50)])
            assert got == [bytes(range(10, 20)), None, b"qq", bytes(range(190, 200)),
                           bytes(range(10, 20)), b""]
            assert await store.get_ranges([]) == []
            assert store.metrics()["get"]["bytes_in"] >= 10 + 2 + 10 + 10
        finally:
            await store.close()
    run(go())


def test_open_put_streams_parts_and_commits_once(store_url):
    """A PutStream: parts written over several calls become one object at
    commit, if-absent like put(); abort stores nothing."""
    async def go():
        store = open_store(store_url)
        try:
            w = store.open_put()
            await asyncio.gather(*(w.write([bytes([i]) * 1000, memoryview(b"|")]) for i in range(5)))
            assert await store.head("packs/s") is None          # nothing visible before commit
            assert await w.commit("packs/s", if_absent=True)
            want = b"".join(bytes([i]) * 1000 + b"|" for i in range(5))
            assert await store.get("packs/s") == want
            again = store.open_put()
            await again.write([b"other"])
            assert not await again.commit("packs/s", if_absent=True)   # present: left alone
            assert await store.get("packs/s") == want
            dropped = store.open_put()
            await dropped.write([b"never"])
            await dropped.abort()
            assert await store.head("packs/never") is None
            empty = store.open_put()
            assert await empty.commit("packs/empty")
            assert await store.get("packs/empty") == b""
        finally:
            await store.close()
    run(go())
    if "://" not in store_url or store_url.startswith("file://"):
        assert not list((Path(store_url.replace("file://", "")) / "%tmp").iterdir())


def test_local_ranged_reads_see_replaced_and_deleted_objects(tmp_path):
    """Ranged reads go through kept-open files; another process replacing
    or deleting the object is still seen at once."""
    reader, writer = LocalStore(tmp_path / "s"), LocalStore(tmp_path / "s")
    assert writer._put("packs/p", b"a" * 100, False)
    assert reader._get("packs/p", 0, 10) == b"a" * 10
    assert writer._put("packs/p", b"b" * 100, False)           # a new file under the name
    assert reader._get("packs/p", 0, 10) == b"b" * 10
    assert reader._get_ranges([("packs/p", 95, 200)]) == [b"b" * 5]
    writer._delete("packs/p")
    assert reader._get_ranges([("packs/p", 0, 10)]) == [None]
    with pytest.raises(ObjectNotFound):
        reader._get("packs/p", 0, 10)
    # Many objects: the kept-open files stay bounded and reads stay right.
    from ingest.stores import local
    for i in range(local.RANGE_FILES + 10):
        writer._put(f"packs/{i}", bytes([i % 256]) * 8, False)
    for i in range(local.RANGE_FILES + 10):
        assert reader._get(f"packs/{i}", 2, 4) == bytes([i % 256]) * 2
    assert len(reader._open) == local.RANGE_FILES
    run(reader.close())
    assert not reader._open


def test_local_ranged_reads_from_many_threads_with_eviction(tmp_path, monkeypatch):
    """Kept-open files are shared and evicted while other threads read:
    every read still returns its own object's bytes (a file closed under a
    reader, or a descriptor reused by another open, would not)."""
    import random
    import threading
    from ingest.stores import local
    monkeypatch.setattr(local, "RANGE_FILES", 3)
    store = LocalStore(tmp_path / "s")
    objs = {f"packs/{i}": os.urandom(4096) for i in range(12)}
    for k, v in objs.items():
        store._put(k, v, True)
    errors: list = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(400):
                k = rnd.choice(list(objs))
                a = rnd.randrange(0, 4096)
                b = rnd.randrange(a, 4097)
                got = store._get(k, a, b)
                if got != objs[k][a:b]:
                    errors.append((k, a, b))
        except Exception as e:          # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(store._open) <= 3 and all(e[1] == 0 for e in store._open.values())
    run(store.close())


def test_local_put_many_leaves_no_temporary_files(tmp_path):
    store = LocalStore(tmp_path / "s")
    items = [(f"files/{i:04x}", os.urandom(100)) for i in range(100)]
    assert store._put_many(items + items[:3], True) == [True] * 100 + [False] * 3
    assert run(store.get_many([k for k, _ in items])) == [d for _, d in items]
    assert not list((tmp_path / "s" / "%tmp").iterdir())
    (tmp_path / "s" / "blocked%").mkdir()          # a directory where the object would go
    with pytest.raises(StoreError, match="cannot write blocked"):
        store._put_many([("files/new", b"x"), ("blocked", b"y")], False)
    assert not list((tmp_path / "s" / "%tmp").iterdir())


def test_local_store_remakes_directories_removed_under_it(tmp_path):
    """The store remembers the directories it made; one that someone else
    removed since is made again, not an error, for a batch and for a
    streamed object; replaced objects leave no temporary file."""
    import shutil
    root = tmp_path / "s"
    store = LocalStore(root)
    assert store._put_many([("files/a", b"a"), ("refs/x/y/z", b"z")], True) == [True, True]
    shutil.rmtree(root / "files")
    shutil.rmtree(root / "refs" / "x")
    assert store._put_many([("files/b", b"b")], True) == [True]
    assert store._put_many([("refs/x/y/z", b"z2"), ("refs/x/y/w", b"w")], False) == [True, True]
    shutil.rmtree(root / "refs" / "x")

    async def streamed():
        w = store.open_put()
        await w.write([b"str", b"eamed"])
        assert await w.commit("refs/x/y/s")
    run(streamed())
    assert run(store.get_many(["files/a", "files/b", "refs/x/y/z", "refs/x/y/s"])) \
        == [None, b"b", None, b"streamed"]
    assert run(store.get("refs/x/y/s", 3)) == b"eamed" and run(store.get("refs/x/y/s", 8)) == b""
    assert run(store.get("refs/x/y/s", 99)) == b""
    assert not list((root / "%tmp").iterdir())


@pytest.mark.skipif(local_mod._syncfs is None, reason="syncfs(2) is Linux-only")
def test_local_batch_sync_syncs_the_file_system_not_each_object(tmp_path, monkeypatch):
    """A batch of at least SYNC_FS_FROM objects: one syncfs() before the
    objects are placed and one after, no per-object fsync; a smaller batch,
    or batch_sync=False: an fsync per object and per directory."""
    calls = {"syncfs": 0, "fsync": 0}
    placed_at_sync = []
    real_syncfs, real_fsync = local_mod._syncfs, os.fsync

    def syncfs(fd):
        calls["syncfs"] += 1
        placed_at_sync.append(sum(store._path(k).exists() for k, _ in items))
        return real_syncfs(fd)

    def fsync(fd):
        calls["fsync"] += 1
        real_fsync(fd)

    monkeypatch.setattr(local_mod, "_syncfs", syncfs)
    monkeypatch.setattr(local_mod.os, "fsync", fsync)
    n = local_mod.SYNC_FS_FROM
    store = LocalStore(tmp_path / "s")
    items = [(f"refs/ns/d{i % 3}/f{i}", os.urandom(50)) for i in range(n + 2)]
    assert store._put_many(items, False) == [True] * len(items)
    assert calls == {"syncfs": 2, "fsync": 0}
    assert placed_at_sync == [0, len(items)]      # data durable before any object is placed
    assert run(store.get_many([k for k, _ in items])) == [d for _, d in items]
    store._put_many(items[:n - 1], True)          # all present: nothing staged
    assert calls == {"syncfs": 2, "fsync": 0}
    small = [(f"files/s{i}", b"x") for i in range(n - 1)]
    assert store._put_many(small, True) == [True] * (n - 1)
    assert calls["syncfs"] == 2 and calls["fsync"] == (n - 1) + 1   # objects + one directory
    off = LocalStore(tmp_path / "off", batch_sync=False)
    assert off._put_many(items, False) == [True] * len(items)
    assert calls["syncfs"] == 2 and calls["fsync"] > n + 2
    assert not list((tmp_path / "s" / "%tmp").iterdir())


def test_local_batch_sync_failure_places_nothing(tmp_path, monkeypatch):
    """syncfs() reports a write-back error: the batch fails with a clear
    error, no object of it is visible, no temporary file is left."""
    import ctypes
    import errno

    def failing(fd):
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(local_mod, "_syncfs", failing)
    store = LocalStore(tmp_path / "s")
    assert store.batch_sync
    items = [(f"files/{i:04x}", b"data") for i in range(local_mod.SYNC_FS_FROM)]
    with pytest.raises(StoreError, match=f"cannot write a batch of {local_mod.SYNC_FS_FROM} objects: Input/output error"):
        store._put_many(items, True)
    assert run(store.get_many([k for k, _ in items])) == [None] * len(items)
    assert not list((tmp_path / "s" / "%tmp").iterdir())


def test_local_store_sweeps_stale_temporary_files_once(tmp_path):
    """A crashed writer's temporary files (a day old) go at the store's first
    write; a fresh one (a live writer's) and stored objects stay."""
    root = tmp_path / "s"
    store = LocalStore(root)
    assert store._put_many([("files/kept", b"stored")], False) == [True]
    tmp = root / "%tmp"
    stale, fresh = tmp / "dead.tmp", tmp / "live.tmp"
    stale.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y")
    day_ago = time.time() - local_mod.TMP_STALE_SECONDS - 60
    os.utime(stale, (day_ago, day_ago))
    os.utime(root / "files" / "kept%", (day_ago, day_ago))   # old objects are not temporary
    assert store._put_many([("files/more", b"z")], False) == [True]
    assert stale.exists()                         # this store swept already, at its first write
    again = LocalStore(root)
    assert run(again.put("files/third", b"w"))
    assert not stale.exists() and fresh.exists()
    assert run(again.get_many(["files/kept", "files/more", "files/third"])) == [b"stored", b"z", b"w"]
    assert again.sweep_tmp(older_than=0) == 1 and not fresh.exists()


class ReadOnlyRefs(LocalStore):
    """put() of refs fails: a subclass's put() is what put_many goes through."""

    async def put(self, key, data, *, if_absent=False):
        if key.startswith("refs/"):
            raise IngestError(f"injected failure writing {key}")
        return await super().put(key, data, if_absent=if_absent)


def test_tree_batches_keep_the_write_order(tmp_path):
    """Manifests of a batch are stored before any of its refs; when the refs
    fail nothing names a missing file and verify passes."""
    tree = tmp_path / "tree"
    for i in range(150):
        (tree / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 7}" / f"f{i}.txt").write_bytes(os.urandom(i * 37) + b"x" * (i * 50))
    root = tmp_path / "store"

    async def go():
        async with await Repository.open(ReadOnlyRefs(root)) as repo:
            with pytest.raises(IngestError, match="injected"):
                await repo.put_tree([tree])
        async with await Repository.open(root) as repo:
            assert await repo.list_refs() == []
            assert (await repo.verify()).ok
            results = await repo.put_tree([tree])
            assert len(results) == 150 and len(await repo.list_refs()) == 150
            for r in results:
                assert await repo.read(r.ref) == (tmp_path / r.ref).read_bytes()
            again = await repo.put_tree([tree])       # unchanged: refs read, not rewritten
            assert [r.file_id for r in again] == [r.file_id for r in results]
            assert all(r.new_bytes == 0 for r in again)
            assert (await repo.verify()).ok
    run(go())


def test_small_files_of_a_tree_share_frames(tmp_path):
    """A batch of small files puts its new chunks in shared frames (not one
    per file, at most SHARED_FRAME raw bytes each); every file reads back byte-exact, alone and as a range, the
    per-file stored bytes add up to the frames', and a small safetensors
    file keeps a frame of its own, coded by its dtype."""
    import json
    import struct
    import numpy as np
    from ingest.compression import ZSTD_BG2
    from ingest.pipeline import SHARED_FRAME
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(60):
        (tree / f"f{i:02d}.json").write_bytes(b'{"k%d": "%s"}' % (i, b"v" * (40 + i)) * (50 + i))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [4096], "data_offsets": [0, 8192]}}).encode()
    rng = np.random.default_rng(1)
    weights = (rng.standard_normal(4096).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    (tree / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + weights.tobytes())
    root = tmp_path / "store"

    async def go():
        async with await Repository.open(root) as repo:
            results = await repo.put_tree([tree], sha256=False)
            assert len(results) == 61
            frames = {}
            for r in results:
                m = (await repo.resolve(r.file_id))[1]      # kept in the tree
                keys = {(m.packs[f["pack"]], int(f["offset"])): (int(f["length"]), int(f["codec"]))
                        for f in m.frames}
                assert all(int(f["raw_len"]) <= SHARED_FRAME for f in m.frames)
                if r.ref.endswith(".safetensors"):
                    assert len(keys) == 1 and next(iter(keys.values()))[1] == ZSTD_BG2
                    own = next(iter(keys))
                frames.update(keys)
                assert await repo.read(r.ref) == (tmp_path / r.ref).read_bytes()
            # 60 json files, ~390 KB: a few shared frames of at most SHARED_FRAME each
            assert 2 <= len(frames) - 1 <= 4
            assert own not in {k for k in frames if k != own} and len(frames) >= 2
            total = sum(length for length, _ in frames.values())
            stored = sum(r.stored_bytes for r in results)
            assert total - len(results) <= stored <= total
            r = results[7]
            data = (tmp_path / r.ref).read_bytes()
            assert await repo.read(r.ref, 10, 30) == data[10:30]
            assert (await repo.verify()).ok
    run(go())


def test_small_safetensors_files_between_shared_frames(tmp_path, monkeypatch):
    """Small safetensors files (frames of their own) between other small
    files of one batch: once the batch holds max_frames frames they are
    placed, but not the shared frame still being filled, which comes before
    them (it was placed with them, and the next file wrote into it)."""
    import json
    import struct
    import numpy as np
    rng = np.random.default_rng(5)
    tree = tmp_path / "tree"
    tree.mkdir()

    def safetensors(path, n):
        header = json.dumps({"w": {"dtype": "BF16", "shape": [n], "data_offsets": [0, 2 * n]}}).encode()
        w = (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        path.write_bytes(struct.pack("<Q", len(header)) + header + w.tobytes())

    (tree / "a.json").write_bytes(b'{"a": 1}' * 500)
    safetensors(tree / "b.safetensors", 900_000)       # 1.8 MB: two frames each
    safetensors(tree / "c.safetensors", 900_000)
    (tree / "d.json").write_bytes(b'{"d": 2}' * 700)
    (tree / "e.bin").write_bytes(rng.bytes(5000))
    from ingest import pipeline
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 2)    # max_frames 4, as on CI

    async def go():
        async with await Repository.open(tmp_path / "store") as repo:
            results = await repo.put_tree([tree], sha256=False)
            assert sorted(r.ref for r in results) == sorted(f"tree/{p.name}" for p in tree.iterdir())
            for r in results:
                assert await repo.read(r.ref) == (tmp_path / r.ref).read_bytes()
            assert (await repo.verify()).ok
    run(go())


class OneBadRef(LocalStore):
    """Refuses to write one ref: the others of its batch must still land."""

    async def put(self, key, data, *, if_absent=False):
        if key == "refs/tree/d3/f3.txt":
            raise IngestError(f"injected failure writing {key}")
        return await super().put(key, data, if_absent=if_absent)


def test_one_failing_ref_fails_only_its_file(tmp_path):
    tree = tmp_path / "tree"
    for i in range(20):
        (tree / f"d{i}").mkdir(parents=True)
        (tree / f"d{i}" / f"f{i}.txt").write_bytes(b"%d " % i * (100 + i))
    root = tmp_path / "store"

    async def go():
        async with await Repository.open(OneBadRef(root)) as repo:
            s = repo.session()
            ws = await s.write_scanned_many(
                [scan_small_file(tree / f"d{i}" / f"f{i}.txt", 1 << 20, s.params)
                 for i in range(20)])
            commits = [asyncio.ensure_future(s.commit(w, f"tree/d{i}/f{i}.txt", flush=False))
                       for i, w in enumerate(ws)]
            await s.flush()                  # the commits wait for the shared pack
            got = await asyncio.gather(*commits, return_exceptions=True)
            failed = [i for i, r in enumerate(got) if isinstance(r, BaseException)]
            assert failed == [3] and "injected" in str(got[3])
        async with await Repository.open(root) as repo:
            names = sorted(r.name for r in await repo.list_refs())
            assert names == sorted(f"tree/d{i}/f{i}.txt" for i in range(20) if i != 3)
            assert (await repo.verify()).ok
    run(go())


def test_a_directory_is_named_by_one_tree(store_url, tmp_path):
    """put_tree of a directory names its small files with one tree, which
    keeps their manifests, and one tree ref: no object per file.  A
    re-ingest of it unchanged writes nothing, a changed one a tree and its
    ref (beside its new data); the names are then exactly the directory's
    files."""
    tree = tmp_path / "tree"
    for i in range(40):
        (tree / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 3}" / f"f{i}.txt").write_bytes(b"line %d\n" % i * (i + 1))

    async def keys(store, prefix):
        return sorted([o.key async for o in store.list(prefix)])

    async def go():
        store = open_store(store_url)
        remote = isinstance(store, RetryStore)

        def puts():
            return store.metrics()["put"]["requests"] if remote else 0
        async with await Repository.open(store) as repo:
            first = await repo.put_tree([tree])
            assert await keys(store, "refs/") == ["refs/tree"]
            assert len(await keys(store, "trees/")) == 1
            assert await keys(store, "files/") == []          # small: kept in the tree
            names = sorted(r.ref for r in first)
            assert [r.name for r in await repo.list_refs("tree/")] == names
            t0 = (await repo.get_ref("tree/d0/f0.txt")).time

            p0 = puts()
            again = await repo.put_tree([tree])
            assert sorted(r.ref for r in again) == names
            if remote:
                assert puts() == p0                      # nothing written
            assert (await repo.get_ref("tree/d0/f0.txt")).time == t0

            (tree / "d1" / "f1.txt").write_bytes(b"changed")
            (tree / "d2" / "new.txt").write_bytes(b"added")
            (tree / "d0" / "f3.txt").unlink()
            p0 = puts()
            changed = {r.ref: r for r in await repo.put_tree([tree])}
            if remote:
                # A pack and its index shard, the tree (with the manifests), its ref.
                assert puts() - p0 == 4
            assert len(changed) == 40
            assert await repo.read("tree/d1/f1.txt") == b"changed"
            assert await repo.read("tree/d2/new.txt") == b"added"
            with pytest.raises(NotFound):
                await repo.get_ref("tree/d0/f3.txt")          # gone with the file
            listed = [r.name for r in await repo.list_refs("tree/")]
            assert listed == sorted(changed)
            assert len(await keys(store, "trees/")) == 2 and await keys(store, "refs/") == ["refs/tree"]
            rep = await repo.verify()
            assert rep.ok, rep.problems
            assert rep.refs == 40
    run(go())


def test_a_known_manifest_is_not_written_again(store_url, tmp_path):
    """The same files under new names (a version of a tree that changed
    little): only its tree and tree ref are written, not their manifests
    again."""
    import shutil
    tree = tmp_path / "v1"
    tree.mkdir()
    for i in range(20):
        (tree / f"f{i}.txt").write_bytes(b"same %d\n" % i * 50)

    async def go():
        store = open_store(store_url)
        remote = isinstance(store, RetryStore)
        async with await Repository.open(store) as repo:
            first = await repo.put_tree([tree])
            shutil.copytree(tree, tmp_path / "v2")
            puts0 = store.metrics()["put"]["requests"] if remote else 0
            second = await repo.put_tree([tmp_path / "v2"])
            if remote:
                assert store.metrics()["put"]["requests"] - puts0 == 2      # tree and ref alone
            assert sorted(r.file_id for r in second) == sorted(r.file_id for r in first)
            for r in second:
                assert await repo.read(r.ref) == (tmp_path / r.ref).read_bytes()
        async with await Repository.open(store_url) as repo:       # a new process's view
            assert (await repo.verify()).ok
            assert len(await repo.list_refs()) == 40
    run(go())


@pytest.mark.s3
def test_two_directories_in_one_put_tree_make_two_trees(s3_url, tmp_path):
    """Two directories given to one put_tree get a tree each; their files'
    names cost no request each: one read of the names the trees replace,
    one listing below each of them (what a tree hides), two puts each."""
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        for i in range(6):
            (tmp_path / name / f"f{i}").write_bytes(b"%s %d" % (name.encode(), i))

    async def go():
        store = open_store(s3_url)
        async with await Repository.open(store) as repo:
            await repo.put_bytes(b"stale", ref="beta/old")          # hidden by beta's tree
            await repo.index_ready()          # its listing of index/ is not the tree's
            m0 = store.metrics()
            got = await repo.put_tree([tmp_path / "alpha", tmp_path / "beta"])
            m1 = store.metrics()
            assert len(got) == 12
            assert m1["list"]["requests"] - m0["list"]["requests"] == 2
            assert m1["get"]["requests"] - m0["get"]["requests"] <= 2
            assert sorted([o.key async for o in store.list("refs/")]) == ["refs/alpha", "refs/beta"]
            assert await repo.read("beta/f3") == b"beta 3"
            with pytest.raises(NotFound):
                await repo.read("beta/old")
    run(go())


def test_local_batch_of_bytes_is_written_natively_like_one_by_one(tmp_path, monkeypatch):
    """A local batch of bytes objects goes through _put_many_native (one
    native call a step); it answers as the per-object path does, and leaves
    no temporary file whatever happens."""
    from ingest.stores import local
    store = LocalStore(tmp_path / "s")
    calls = []
    real = local.LocalStore._put_many_native
    monkeypatch.setattr(local.LocalStore, "_put_many_native",
                        lambda self, *a: calls.append(1) or real(self, *a))
    assert store._put("n/exists", b"old", False)
    got = store._put_many([("n/a", b"1"), ("n/exists", b"new"), ("n/deep/er/b", b"2"),
                           ("n/empty", b"")], True)
    assert got == [True, False, True, True] and calls
    assert [store._get(k, 0, None) for k in ("n/a", "n/exists", "n/deep/er/b", "n/empty")] \
        == [b"1", b"old", b"2", b""]
    assert store._put_many([("n/a", b"one"), ("n/exists", b"new"), ("n/c", b"3"), ("n/d", b"4")],
                           False) == [True] * 4
    assert store._get("n/a", 0, None) == b"one" and store._get("n/exists", 0, None) == b"new"
    # If-absent objects all there: nothing is written (they are stat'ed first).
    assert store._put_many([(k, b"x") for k in ("n/a", "n/c", "n/d", "n/exists")], True) == [False] * 4
    assert store._get("n/c", 0, None) == b"3"
    # A file where a directory must go fails the batch with a clear error.
    (tmp_path / "s" / "blocked").write_bytes(b"")
    with pytest.raises(IngestError, match="cannot write"):
        store._put_many([("n/e", b"5"), ("blocked/x", b"6"), ("n/f", b"7"), ("n/g", b"8")], True)
    # A directory removed under the store after it was made is made again.
    shutil.rmtree(tmp_path / "s" / "n" / "deep")
    assert store._put_many([("n/deep/er/c", b"9")] * 1 + [(f"n/h{i}", b"h") for i in range(3)],
                           True) == [True] * 4
    assert store._get("n/deep/er/c", 0, None) == b"9"
    assert not list((tmp_path / "s" / "%tmp").iterdir())
