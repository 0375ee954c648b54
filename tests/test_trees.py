"""Trees: a directory named by one tree ref (docs/FORMAT.md 9.1-9.3)."""
from __future__ import annotations

import os
import struct

import pytest

from ingest import Repository
from ingest.envelope import seal
from ingest.errors import FormatError, IngestError, IntegrityError, NotFound
from ingest.refs import (TREE_MAGIC, TREE_VERSION, Ref, Tree, TreeEntry, TreeRef, ancestors,
                         decode_ref, tree_key)
from ingest.stores.local import LocalStore

from helpers import run, text


def _entry(path: str, seed: int = 0, sha: bool = True) -> TreeEntry:
    r = os.urandom(64)
    return TreeEntry(path, r[:32], 100 + seed, r[32:] if sha else None)


def test_tree_round_trip_sorted_and_addressed():
    t = Tree.of([_entry("b/x"), _entry("a"), _entry("é/ü", sha=False), _entry("a b")])
    data = t.encode()
    back = Tree.decode(data, "tree", Tree.id_of(data))
    assert [e.path for e in back.entries] == ["a", "a b", "b/x", "é/ü"]
    assert back.entries == t.entries and back.get("é/ü").sha256 is None
    assert back.size == sum(e.size for e in t.entries)
    with pytest.raises(IntegrityError, match="does not match its id"):
        Tree.decode(data, "tree", bytes(32))
    with pytest.raises(Exception, match="twice"):
        Tree.of([_entry("a"), _entry("a", 1)])


def _payload(count: int, *entries: bytes, tail: bytes = b"") -> bytes:
    return seal(TREE_MAGIC, TREE_VERSION, struct.pack("<I", count) + b"".join(entries) + tail)


def _raw(path: bytes, flags: int = 0, sha: bytes = b"") -> bytes:
    return struct.pack("<H", len(path)) + path + bytes(32) + struct.pack("<QB", 5, flags) + sha


@pytest.mark.parametrize("data, match", [
    (_payload(1 << 30), "claims"),                                     # no huge allocation
    (_payload(2, _raw(b"b"), _raw(b"a")), "not sorted"),
    (_payload(2, _raw(b"a"), _raw(b"a")), "not sorted or repeated"),
    (_payload(1, _raw(b"a", flags=4)), "flags"),
    (_payload(1, _raw(b"a", flags=2) + struct.pack("<I", 9) + b"short"), "does not fit"),
    (_payload(1, _raw(b"a", flags=2) + struct.pack("<I", (64 << 10) + 1)), "does not fit"),
    (_payload(1, _raw(b"a", flags=1)), "truncated"),                   # the sha256 is missing
    (_payload(1, _raw(b"a"), tail=b"x"), "after the last entry"),
    (_payload(1, _raw(b"\xff")), "not UTF-8"),
    (_payload(1, _raw(b"a/../b")), "bad path"),
    (_payload(1, _raw(b"/abs")), "bad path"),
    (_payload(1, struct.pack("<H", 60) + b"a" * 50), "truncated"),
])
def test_tree_decoder_refuses_bad_objects(data, match):
    with pytest.raises(FormatError, match=match):
        Tree.decode(data, "tree")


def test_tree_ref_format():
    r = TreeRef("ns/t", "ab" * 32, 3, 12, 1.5)
    assert decode_ref("ns/t", r.encode()) == r
    with pytest.raises(FormatError, match="is a tree of 3 files"):
        Ref.decode("ns/t", r.encode())
    bad = seal(b"IGRF", 2, b'{"files": -1, "size": 0, "time": 1, "tree": "' + b"ab" * 32 + b'"}')
    with pytest.raises(FormatError, match="malformed"):
        decode_ref("x", bad)
    bad = seal(b"IGRF", 2, b'{"files": 1, "size": 0, "time": 1}')
    with pytest.raises(FormatError, match="malformed tree ref"):
        decode_ref("x", bad)
    assert ancestors("a/b/c") == ["a/b", "a"] and ancestors("a") == []


def _tree(tmp_path, name="pkg", files=None):
    root = tmp_path / name
    files = files or {"a.txt": b"alpha " * 100, "sub/b.txt": b"beta " * 200,
                      "sub/deep/c.bin": os.urandom(3000)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, files


def test_names_resolve_through_the_nearest_ref_object(tmp_path):
    src, files = _tree(tmp_path)

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            await repo.put_tree([src])
            for rel, data in files.items():
                assert await repo.read(f"pkg/{rel}") == data
                assert (await repo.get_ref(f"pkg/{rel}")).size == len(data)
            with pytest.raises(NotFound, match="is a tree of 3 files"):
                await repo.get_ref("pkg")
            with pytest.raises(NotFound):
                await repo.get_ref("pkg/nothing")
            # A file ref below the tree is deeper: it wins for its name.
            await repo.put_bytes(b"newer", ref="pkg/sub/b.txt")
            assert await repo.read("pkg/sub/b.txt") == b"newer"
            # A file ref at an ancestor ends the search.
            await repo.put_bytes(b"a file", ref="pkg/sub")
            with pytest.raises(NotFound):
                await repo.get_ref("pkg/sub/deep/c.bin")
            names = [r.name for r in await repo.list_refs("pkg/")]
            assert names == ["pkg/a.txt", "pkg/sub", "pkg/sub/b.txt"]
            assert [r.name for r in await repo.list_refs("pkg/sub/")] == ["pkg/sub/b.txt"]
            assert [r.name for r in await repo.list_refs("pkg/a")] == ["pkg/a.txt"]
            assert [r.name for r in await repo.list_refs()] == names
            # Deleting the file at pkg/sub takes the tree's names below it
            # too (the file had replaced them); pkg/sub/b.txt is a name of its own.
            await repo.delete_ref("pkg/sub")
            with pytest.raises(NotFound):
                await repo.get_ref("pkg/sub/deep/c.bin")
            assert [r.name for r in await repo.list_refs("pkg/")] == ["pkg/a.txt", "pkg/sub/b.txt"]
            # A deeper tree (none that put_tree makes: its trees are at a
            # DIRNAME) hides the shallower one's entries below it.
            z = await repo.put_bytes(b"zed", ref="z")
            await repo.put_tree([src])
            await repo._put_tree_ref("pkg/sub", Tree.of(
                [TreeEntry("z.txt", bytes.fromhex(z.file_id), z.size, None)]))
            assert await repo.read("pkg/sub/z.txt") == b"zed"
            with pytest.raises(NotFound):
                await repo.get_ref("pkg/sub/b.txt")        # not looked for in pkg's tree
            assert [r.name for r in await repo.list_refs("pkg/")] == ["pkg/a.txt", "pkg/sub/z.txt"]
            assert [r.name for r in await repo.list_refs("pkg/sub/")] == ["pkg/sub/z.txt"]
            rep = await repo.verify()
            assert rep.ok, rep.problems
    run(go())


def test_put_tree_replaces_what_was_named_below_it(tmp_path):
    src, files = _tree(tmp_path)

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            await repo.put_bytes(b"old one", ref="pkg/a.txt")
            await repo.put_bytes(b"stale", ref="pkg/gone/x")
            await repo.put_tree([src])
            assert [r.name for r in await repo.list_refs("pkg/")] == sorted(
                f"pkg/{r}" for r in files)
            assert await repo.read("pkg/a.txt") == files["a.txt"]
            assert sorted([o.key async for o in repo.store.list("refs/")]) == ["refs/pkg"]
            # A file put over the tree's own name replaces the whole tree.
            await repo.put_bytes(b"now a file", ref="pkg")
            assert await repo.read("pkg") == b"now a file"
            assert await repo.list_refs("pkg/") == []
            assert (await repo.verify()).ok
    run(go())


def test_delete_inside_a_tree(tmp_path):
    src, files = _tree(tmp_path)

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            await repo.put_tree([src])
            await repo.put_bytes(b"override", ref="pkg/a.txt")
            await repo.delete_ref("pkg/a.txt")          # the file ref and the tree's entry
            with pytest.raises(NotFound):
                await repo.get_ref("pkg/a.txt")
            await repo.delete_ref("pkg/sub")            # a directory of the tree
            assert await repo.list_refs("pkg/") == []
            with pytest.raises(NotFound):
                await repo.delete_ref("pkg/sub/b.txt")
            assert not [o.key async for o in repo.store.list("refs/")]   # emptied: deleted
            await repo.put_tree([src])
            await repo.delete_ref("pkg")                # the whole tree
            assert await repo.list_refs() == []
            assert (await repo.verify()).ok
    run(go())


def test_verify_finds_a_missing_or_damaged_tree(tmp_path):
    src, _ = _tree(tmp_path)

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            await repo.put_tree([src])
            tid = bytes.fromhex(decode_ref("pkg", await repo.store.get("refs/pkg")).tree_id)
            path = LocalStore(tmp_path / "s")._path(tree_key(tid))
            data = bytearray(path.read_bytes())
            data[30] ^= 1
            path.write_bytes(bytes(data))
        async with await Repository.open(tmp_path / "s") as repo:
            rep = await repo.verify()
            assert any("does not match its id" in p for p in rep.problems)
            assert any("its tree" in p and "damaged" in p for p in rep.problems)
            with pytest.raises(IntegrityError):
                await repo.get_ref("pkg/a.txt")
            os.remove(path)
        async with await Repository.open(tmp_path / "s") as repo:
            rep = await repo.verify()
            assert any("is missing" in p for p in rep.problems)
            with pytest.raises(IntegrityError, match="missing"):
                await repo.read("pkg/a.txt")
    run(go())


class FailingTrees(LocalStore):
    """A real local store that cannot write trees."""

    async def put(self, key, data, *, if_absent=False):
        if key.startswith("trees/"):
            raise IngestError(f"injected failure writing {key}")
        return await super().put(key, data, if_absent=if_absent)


def test_a_tree_that_cannot_be_written_changes_no_name(tmp_path):
    src, files = _tree(tmp_path)

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            await repo.put_tree([src])
        (src / "a.txt").write_bytes(text(5000, 3))
        (src / "sub" / "b.txt").unlink()
        async with await Repository.open(FailingTrees(tmp_path / "s")) as repo:
            with pytest.raises(IngestError, match="injected"):
                await repo.put_tree([src])
        async with await Repository.open(tmp_path / "s") as repo:
            # The old tree still names the old files, all readable.
            assert [r.name for r in await repo.list_refs()] == sorted(f"pkg/{r}" for r in files)
            assert await repo.read("pkg/a.txt") == files["a.txt"]
            assert await repo.read("pkg/sub/b.txt") == files["sub/b.txt"]
            rep = await repo.verify()
            assert rep.ok, rep.problems
    run(go())


def test_a_tree_too_large_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from ingest import repository as repository_mod
    from ingest.errors import InvalidName
    monkeypatch.setattr(repository_mod, "MAX_TREE_FILES", 2)
    src, _ = _tree(tmp_path)                               # three files

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            with pytest.raises(InvalidName, match="at most 2 files; pkg has 3"):
                await repo.put_tree([src])
            for prefix in ("packs/", "files/", "trees/", "refs/"):
                assert not [o async for o in repo.store.list(prefix)], prefix
    run(go())


class CountingStore(LocalStore):
    """A real local store that counts its listings."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    async def list(self, prefix: str = ""):
        self.listed.append(prefix)
        async for o in super().list(prefix):
            yield o


def test_small_files_keep_their_manifests_in_the_tree(tmp_path):
    big = os.urandom(3 << 20)                         # past SMALL_FILE: files/<id>
    src, files = _tree(tmp_path, files={"a.txt": b"alpha " * 100, "sub/b.txt": b"beta " * 200,
                                        "big.bin": big})

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            got = {r.ref: r for r in await repo.put_tree([src])}
        ids = {r.ref: r.file_id for r in got.values()}
        store = CountingStore(tmp_path / "s")
        assert [o.key async for o in store.list("files/")] == ["files/" + ids["pkg/big.bin"]]
        async with await Repository.open(store) as repo:
            # By bare file id, in a process that has seen no tree: one listing of trees/.
            for rel, data in files.items():
                assert await repo.read(ids[f"pkg/{rel}"]) == data
            assert store.listed.count("trees/") == 1
            out = tmp_path / "out"
            out.mkdir()
            sizes = await repo.restore_many([(ids[f"pkg/{r}"], out / r.replace("/", "_"))
                                             for r in files])
            assert sizes == [len(d) for d in files.values()]
            with pytest.raises(NotFound):
                await repo.read("ab" * 32)                   # nobody stored it
            with pytest.raises(NotFound):
                await repo.read("cd" * 32)
            assert store.listed.count("trees/") <= 2         # not a listing per miss
            rep = await repo.verify()
            assert rep.ok and rep.files == 3, rep
            st = await repo.stats()
            assert st["files"] == 3 and st["refs"] == 3
    run(go())


def test_a_replacing_tree_keeps_the_manifests_of_what_it_keeps(tmp_path):
    src, files = _tree(tmp_path)

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            await repo.put_tree([src])
            old = decode_ref("pkg", await repo.store.get("refs/pkg")).tree_id
            (src / "a.txt").write_bytes(b"changed")
            await repo.put_tree([src])
            await repo.store.delete("trees/" + old)            # as a collector would
        async with await Repository.open(tmp_path / "s") as repo:
            assert await repo.read("pkg/a.txt") == b"changed"
            for rel in ("sub/b.txt", "sub/deep/c.bin"):
                assert await repo.read(f"pkg/{rel}") == files[rel]
                assert await repo.read((await repo.get_ref(f"pkg/{rel}")).file_id) == files[rel]
            rep = await repo.verify()
            assert rep.ok, rep.problems
    run(go())


def test_verify_checks_the_manifests_a_tree_keeps(tmp_path):
    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            a = await repo.put_bytes(b"first file", ref="x/a")
            b = await repo.put_bytes(b"second file", ref="x/b")
            # A tree whose entry for a carries b's manifest.
            wrong = await repo.store.get("files/" + b.file_id)
            await repo._put_tree_ref("t", Tree.of([TreeEntry(
                "a", bytes.fromhex(a.file_id), a.size, None, wrong)]))
            rep = await repo.verify()
            assert any("manifest of a in tree" in p for p in rep.problems), rep.problems
    run(go())


def test_list_refs_pages_agree_with_name_resolution(tmp_path):
    """A page (after, limit) of list_refs is the full listing's slice, and
    the full listing is every name get_ref resolves: a tree of nested and
    non-ASCII paths, a file ref over one of its names, a file ref at one of
    its directories (hiding the names below it), a deeper tree, refs below
    the tree with names of their own, and a ref beside it."""
    paths = sorted({f"{d}/{f}" for d in ("a", "a/b", "b", "é", "z z") for f in ("1", "2", "x.y", "ü")}
                   | {"top", "a-b", "a.c", "a0"})

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            blob = await repo.put_bytes(b"content", ref="blob")
            fid = bytes.fromhex(blob.file_id)
            await repo._put_tree_ref("ns", Tree.of(TreeEntry(p, fid, 7, None) for p in paths))
            await repo.put_bytes(b"over", ref="ns/a/2")           # over an entry
            await repo.put_bytes(b"a file", ref="ns/b")           # over a directory
            await repo._put_tree_ref("ns/é", Tree.of([TreeEntry("deep/q", fid, 7, None)]))
            await repo.put_bytes(b"new", ref="ns/a/b/new")        # a name of its own
            await repo.put_bytes(b"beside", ref="nt")
            candidates = {f"ns/{p}" for p in paths} | {"ns/a/2", "ns/b", "ns/é/deep/q",
                                                        "ns/a/b/new", "nt", "blob"}
            resolves = set()
            for name in candidates:
                try:
                    await repo.get_ref(name)
                    resolves.add(name)
                except NotFound:
                    pass
            assert "ns/b/1" not in resolves and "ns/é/1" not in resolves    # hidden
            for prefix in ("", "ns/", "ns/a", "ns/a/", "ns/a/b/", "ns/é/", "ns/z z/", "n", "ns/q/"):
                full = await repo.list_refs(prefix)
                names = [r.name for r in full]
                assert names == sorted(n for n in resolves if n.startswith(prefix)), prefix
                for r in full:
                    g = await repo.get_ref(r.name)
                    assert (r.name, r.file_id, r.size) == (g.name, g.file_id, g.size)
                afters = [None] + names + [n + "\0" for n in names[::3]] + ["ns/a/b", "ns/b/", "nt0"]
                for after in afters:
                    rest = [r for r in full if after is None or r.name > after]
                    for limit in (1, 2, 7, None):
                        got = await repo.list_refs(prefix, after=after, limit=limit)
                        assert got == rest[:limit], (prefix, after, limit)
            assert await repo.list_refs("ns/", limit=0) == []
    run(go())


def test_trees_indexed_for_a_bare_file_id_are_read_together_and_a_store_failure_is_not_damage(
        tmp_path, monkeypatch):
    """Finding a bare file id among trees this process has not read reads
    them several at a time; a tree the store fails to return is not taken
    for a damaged one (which would hide its files for the process's life):
    the lookup fails with the store's error, and the next one finds it."""
    import asyncio
    from ingest import repository as R
    from ingest.errors import StoreError
    monkeypatch.setattr(R, "TREES_RELIST", 0.0)
    ids = []

    async def put():
        async with await Repository.open(tmp_path / "s") as repo:
            for i in range(40):
                d = tmp_path / f"src{i}" / f"d{i}"
                d.mkdir(parents=True)
                (d / "f.txt").write_bytes(b"file %d " % i * 50)
                ids.extend(r.file_id for r in await repo.put_tree([d]))
    run(put())

    class SlowFlaky(LocalStore):
        in_flight = peak = 0
        fail = None

        async def get(self, key, start=0, end=None):
            if not key.startswith("trees/"):
                return await super().get(key, start, end)
            if SlowFlaky.fail is None:
                SlowFlaky.fail = key
            if key == SlowFlaky.fail and not getattr(self, "failed", False):
                self.failed = True
                raise StoreError(f"get {key}: the store did not answer")
            SlowFlaky.in_flight += 1
            SlowFlaky.peak = max(SlowFlaky.peak, SlowFlaky.in_flight)
            try:
                await asyncio.sleep(0.002)
                return await super().get(key, start, end)
            finally:
                SlowFlaky.in_flight -= 1

    async def go():
        store = SlowFlaky(tmp_path / "s")
        async with await Repository.open(store) as repo:
            failed = None
            for fid in ids:
                try:
                    await repo.read(fid)
                except StoreError as e:
                    failed = e
                    break
            assert failed is not None and "did not answer" in str(failed)
            # Every file, the failed tree's included, reads on the next try.
            for i, fid in enumerate(ids):
                assert await repo.read(fid) == b"file %d " % i * 50
    run(go())
    assert 1 < SlowFlaky.peak <= R.TREES_READ_AT_ONCE


def test_a_store_failure_reading_a_kept_manifest_is_not_not_found(tmp_path):
    """A small file read by bare id whose tree the store fails to return
    (after this process had indexed it) gets the store's error, which a
    daemon answers with 503, not NotFound (404: as if it did not exist)."""
    from ingest.errors import StoreError
    src, files = _tree(tmp_path)

    class Flaky(LocalStore):
        fail = False

        async def get(self, key, start=0, end=None):
            if Flaky.fail and key.startswith("trees/"):
                raise StoreError(f"get {key}: the store did not answer")
            return await super().get(key, start, end)

    async def go():
        async with await Repository.open(Flaky(tmp_path / "s")) as repo:
            got = await repo.put_tree([src])
            fid = got[0].file_id
            repo._trees.clear()                  # indexed, no longer cached
            repo._manifests.clear()
            Flaky.fail = True
            with pytest.raises(StoreError, match="did not answer"):
                await repo.read(fid)
            Flaky.fail = False
            assert await repo.read(fid) == files[got[0].ref.split("/", 1)[1]]
    run(go())
