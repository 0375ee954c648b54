"""The engine end to end, on every store (`store_url` runs each test on the
local directory store and on a real SeaweedFS S3 server)."""
import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from ingest import IngestError, IntegrityError, InvalidName, NotFound, Repository, StoreConfig
from ingest.errors import StoreError
from ingest.chunking import ChunkParams
from ingest.stores.local import LocalStore
from ingest import repository

from helpers import rand, run, text

MiB = 1 << 20


SIZES = [0, 1, 100, 16 * 1024 - 1, 16 * 1024, 64 * 1024, 300_000, 3 * MiB + 17]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_sizes(store_url, size):
    data = rand(size, size)

    async def go():
        async with await Repository.open(store_url) as repo:
            r = await repo.put_bytes(data, ref="f.bin")
            assert r.size == size
            assert await repo.read("f.bin") == data
            assert await repo.read(r.file_id) == data
            if size:
                assert await repo.read("f.bin", size // 3, size - size // 5) == data[size // 3: size - size // 5]
    run(go())


def test_ranges_everywhere(store_url):
    data = rand(2 * MiB, 1) + text(2 * MiB, 2)
    rng = np.random.default_rng(7)

    async def go():
        async with await Repository.open(store_url) as repo:
            await repo.put_bytes(data, ref="mixed")
            for _ in range(40):
                a, b = sorted(rng.integers(0, len(data) + 10, 2).tolist())
                assert await repo.read("mixed", a, b) == data[a:b]
            assert await repo.read("mixed", len(data) - 1) == data[-1:]
            assert await repo.read("mixed", len(data) + 5) == b""
    run(go())


@pytest.mark.parametrize("content", ["text", "random"])
def test_dedup_reingest_and_insertion(store_url, content):
    """Random bytes are cut in coarse chunks (chunking.params_for), text in
    the store's own: either way an insertion re-stores about one chunk."""
    base = rand(6 * MiB, 3) if content == "random" else text(6 * MiB, 3)
    edited = base[:3 * MiB] + b"inserted row\n" * 10 + base[3 * MiB:]
    max_chunk = (1024 if content == "random" else 256) * 1024

    async def go():
        async with await Repository.open(store_url) as repo:
            first = await repo.put_bytes(base, ref="v1")
            assert first.new_bytes == len(base)
            mean = len(base) / first.chunks      # ~64 KiB fine, ~512 KiB coarse
            assert (mean > 256 * 1024) if content == "random" else (mean < 128 * 1024)
            again = await repo.put_bytes(base, ref="v1-again")
            assert again.new_bytes == 0 and again.stored_bytes == 0
            assert again.file_id == first.file_id
            second = await repo.put_bytes(edited, ref="v2")
            # An insertion only re-stores the chunk(s) around it.
            assert 0 < second.new_bytes <= 2 * max_chunk
            assert await repo.read("v2") == edited
        # A new process sees the index that the first one wrote (loaded in
        # the background; a write waits for it).
        async with await Repository.open(store_url) as repo:
            third = await repo.put_bytes(edited)
            assert len(repo.index) > 0
            assert third.new_bytes == 0
    run(go())


def test_compression_pays_and_random_stays_raw(store_url):
    async def go():
        async with await Repository.open(store_url) as repo:
            t = await repo.put_bytes(text(4 * MiB, 5), ref="text")
            assert t.stored_bytes < 0.5 * t.size
            r = await repo.put_bytes(rand(4 * MiB, 6), ref="random")
            # Incompressible: stored raw, only frame headers added.
            assert r.size <= r.stored_bytes <= r.size * 1.001
            w = (np.random.default_rng(0).standard_normal(MiB) * 0.02).astype(np.float32).tobytes()
            f = await repo.put_bytes(w, ref="weights")
            assert f.stored_bytes < 0.9 * f.size        # byte grouping finds the exponents
    run(go())


def test_stream_of_unknown_length_matches_bytes(store_url):
    data = rand(5 * MiB + 3, 8)

    async def pieces():
        rng = np.random.default_rng(9)
        pos = 0
        while pos < len(data):
            n = int(rng.integers(1, 300_000))
            yield data[pos:pos + n]
            pos += n

    async def go():
        async with await Repository.open(store_url) as repo:
            a = await repo.put_stream(pieces(), ref="streamed")
            b = await repo.put_bytes(data)
            assert a.file_id == b.file_id and b.new_bytes == 0
            assert await repo.read("streamed") == data
    run(go())


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": text(100_000, 1),
        "sub/b.bin": rand(2 * MiB, 2),
        "sub/deeper/c.bin": rand(2 * MiB, 2),        # same bytes as b: dedups
        "sub/empty": b"",
        "ünïcode näme.txt": b"hello",
        "sub/small": b"x" * 10,
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def test_tree_put_and_restore(store_url, tmp_path):
    src = tmp_path / "model-repo"
    files = make_tree(src)
    single = tmp_path / "single.bin"
    single.write_bytes(rand(1000, 4))

    async def go():
        async with await Repository.open(store_url) as repo:
            results = await repo.put_tree([src, single])
            refs = sorted(r.ref for r in results)
            assert refs == sorted(["model-repo/" + k for k in files] + ["single.bin"])
            by_ref = {r.ref: r for r in results}
            dup = [by_ref["model-repo/sub/b.bin"], by_ref["model-repo/sub/deeper/c.bin"]]
            assert sum(r.new_bytes for r in dup) == 2 * MiB    # stored once between them
            out = tmp_path / "out"
            names = await repo.restore_tree("model-repo/", out)
            assert len(names) == len(files)
            for rel, data in files.items():
                assert (out / rel).read_bytes() == data
            await repo.restore("single.bin", tmp_path / "single.out")
            assert (tmp_path / "single.out").read_bytes() == single.read_bytes()
            rep = await repo.verify()
            assert rep.ok, rep.problems
            assert rep.refs == len(files) + 1
    run(go())


def test_many_small_files_share_packs(store_url, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:03}.json").write_bytes(b'{"row": %d, "text": "%s"}\n' % (i, b"y" * (i % 50)))

    async def go():
        async with await Repository.open(store_url) as repo:
            results = await repo.put_tree([src])
            assert len(results) == 300
            st = await repo.stats()
            assert st["packs"] == 1
            for r in results[::37]:
                assert await repo.read(r.ref) == (src / r.ref.split("/", 1)[1]).read_bytes()
    run(go())


def test_errors_are_clear(store_url, tmp_path):
    async def go():
        async with await Repository.open(store_url) as repo:
            with pytest.raises(NotFound, match="unknown file id"):
                await repo.read("0" * 64)
            with pytest.raises(NotFound, match="no such file or ref"):
                await repo.read("nope")
            for bad in ("../escape", "/abs", "a//b", "a/./b", "nul\x00", "x" * 2000):
                with pytest.raises(InvalidName):
                    await repo.put_bytes(b"data", ref=bad)
            with pytest.raises(NotFound, match="no such file"):
                await repo.put_file(tmp_path / "missing")
            with pytest.raises(IngestError, match="is a directory"):
                await repo.put_file(tmp_path)
            with pytest.raises(NotFound):
                await repo.put_tree([tmp_path / "missing"])
            assert await repo.list_refs() == []          # nothing half-written
    run(go())


def test_put_tree_takes_a_plan_and_walks_nothing_again(tmp_path):
    """put_tree(planned=plan_tree_sized(paths)) ingests exactly that plan:
    the CLI walks the tree once to fail before opening the store."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha" * 1000)
    (src / "d" / "b.bin").write_bytes(os.urandom(5000))
    plan = repository.plan_tree_sized([src])
    assert sorted((ref, size) for _, ref, size in plan) == [("src/a.txt", 5000), ("src/d/b.bin", 5000)]

    async def go():
        async with await Repository.open(tmp_path / "store") as repo:
            got = await repo.put_tree([tmp_path / "not-walked"], planned=plan)
            assert sorted(r.ref for r in got) == ["src/a.txt", "src/d/b.bin"]
            assert await repo.read("src/a.txt") == b"alpha" * 1000
    run(go())


def test_close_waits_for_a_session_s_index_load(store_url):
    """A session starts loading the index at once; a repository closed
    before that load is done cancels and awaits it, so nothing of it is
    left pending to be destroyed with the loop (mid-request in the store)."""
    async def go():
        async with await Repository.open(store_url) as repo:
            await repo.put_bytes(b"x" * 1000, "seed")
        repo = await Repository.open(store_url)
        session = repo.session()
        await session.flush()
        assert repo._background, "the session started no index load"
        await repo.close()
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert run(go()) == []


def test_config_is_fixed_at_creation(store_url):
    odd = StoreConfig(chunking=ChunkParams(4096, 8192, 65536, 14, 11), frame_size=256 * 1024)

    async def go():
        async with await Repository.open(store_url, config=odd) as repo:
            assert repo.config == odd
        async with await Repository.open(store_url) as repo:
            assert repo.config == odd            # not silently replaced by the default
    run(go())


def test_zstd_level_is_a_writer_setting(tmp_path):
    """A writer's zstd_level overrides the store's for what it writes, and
    nothing else: the packs are byte for byte those of a store made at that
    level, the config is untouched, and any reader reads them."""
    data = text(3 * MiB, 5)

    async def ingest(path, **kw):
        async with await Repository.open(path, **kw) as repo:
            await repo.put_bytes(data, ref="t.txt")
            packs = sorted([o.key async for o in repo.store.list("packs/")])
            return packs, (await repo.stats())["pack_bytes"], repo.config.zstd_level

    made_at_1 = run(ingest(tmp_path / "a", config=StoreConfig(zstd_level=1)))
    written_at_1 = run(ingest(tmp_path / "b", zstd_level=1))
    at_3 = run(ingest(tmp_path / "c"))
    assert written_at_1[0] == made_at_1[0]                 # the same pack ids: the same bytes
    assert at_3[0] != made_at_1[0] and at_3[1] < made_at_1[1]
    assert (made_at_1[2], written_at_1[2], at_3[2]) == (1, 3, 3)

    async def read_back():
        async with await Repository.open(tmp_path / "b", zstd_level=19) as repo:
            assert await repo.read("t.txt") == data
            assert (await repo.verify()).ok
    run(read_back())
    for bad in (23, -8, 1.5, True, "1"):
        with pytest.raises(ValueError, match="zstd_level"):
            run(Repository.open(tmp_path / "d", zstd_level=bad))
    assert not (tmp_path / "d").exists()          # refused before anything was created


def test_open_missing_store_without_create(tmp_path):
    with pytest.raises(IngestError):
        run(Repository.open(tmp_path / "nothing", create=False))
    assert not (tmp_path / "nothing").exists()


def test_store_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(IngestError, match="not a directory"):
        run(Repository.open(f))


# -- damage: detected on read and by verify, never returned as data -------------

def _local_store(tmp_path) -> tuple[Path, bytes]:
    root = tmp_path / "store"
    data = text(3 * MiB, 11) + rand(MiB, 12)

    async def go():
        async with await Repository.open(root) as repo:
            await repo.put_bytes(data, ref="victim")
    run(go())
    return root, data


def _one(root: Path, prefix: str) -> Path:
    found = sorted((root / prefix).rglob("*"))
    found = [p for p in found if p.is_file()]
    assert found
    return found[0]


@pytest.mark.parametrize("where", ["pack-middle", "pack-footer", "pack-truncated"])
def test_damaged_pack_detected(tmp_path, where):
    root, data = _local_store(tmp_path)
    pack = _one(root, "packs")
    raw = bytearray(pack.read_bytes())
    if where == "pack-middle":
        raw[len(raw) // 3] ^= 0x40
    elif where == "pack-footer":
        raw[-40] ^= 0x01
    else:
        raw = raw[: len(raw) // 2]
    pack.write_bytes(bytes(raw))

    async def go():
        async with await Repository.open(root) as repo:
            if where != "pack-footer":
                with pytest.raises(IntegrityError):
                    await repo.read("victim")
            rep = await repo.verify()
            assert not rep.ok
            assert any("pack" in p for p in rep.problems)
    run(go())


def test_damaged_manifest_and_ref_detected(tmp_path):
    root, data = _local_store(tmp_path)
    man = _one(root, "files")
    raw = bytearray(man.read_bytes())
    raw[60] ^= 0x10
    man.write_bytes(bytes(raw))

    async def go():
        async with await Repository.open(root) as repo:
            with pytest.raises(IntegrityError):
                await repo.read("victim")
            rep = await repo.verify()
            assert any("manifest" in p for p in rep.problems)
            assert any("ref victim" in p for p in rep.problems)
    run(go())


def test_damaged_index_shard_costs_dedup_not_data(tmp_path):
    root, data = _local_store(tmp_path)
    shard = _one(root, "index")
    shard.write_bytes(shard.read_bytes()[:100])

    async def go():
        async with await Repository.open(root) as repo:
            assert await repo.read("victim") == data
            rep = await repo.verify()
            assert any("index shard" in p for p in rep.problems)
    run(go())


class FailingStore(LocalStore):
    """A real local store whose writes start failing under one prefix."""

    def __init__(self, root, fail_prefix: str) -> None:
        super().__init__(root)
        self.fail_prefix = fail_prefix

    async def put(self, key, data, *, if_absent=False):
        if key.startswith(self.fail_prefix):
            raise IngestError(f"injected failure writing {key}")
        return await super().put(key, data, if_absent=if_absent)


@pytest.mark.parametrize("fail_prefix", ["packs/", "index/", "files/", "refs/"])
def test_store_failing_mid_write_loses_nothing(tmp_path, fail_prefix):
    root = tmp_path / "store"
    old = rand(2 * MiB, 20)
    new = rand(2 * MiB, 21)

    async def go():
        async with await Repository.open(root) as repo:
            await repo.put_bytes(old, ref="old")
        async with await Repository.open(FailingStore(root, fail_prefix)) as repo:
            with pytest.raises(IngestError, match="injected"):
                await repo.put_bytes(new, ref="new")
        async with await Repository.open(root) as repo:
            assert [r.name for r in await repo.list_refs()] == ["old"]
            assert await repo.read("old") == old
            rep = await repo.verify()
            assert rep.ok, rep.problems          # at most unreferenced garbage
    run(go())


def test_sync_api(tmp_path):
    import ingest
    data = rand(MiB, 30)
    with ingest.open(tmp_path / "s") as repo:
        r = repo.put_bytes(data, ref="x")
        assert repo.read("x") == data
        assert b"".join(repo.iter_read("x", 10, 5000)) == data[10:5000]
        assert repo.stats()["refs"] == 1
        assert r.file_id == repo.list_refs()[0].file_id


def test_chunk_ids_ending_in_nul_bytes(store_url):
    # Regression: ids were once compared as numpy "S32", which drops trailing
    # NULs, so 1 chunk in 256 failed its own check on read.
    import blake3
    blob = next(b for i in range(100_000)
                if (b := b"blob %d" % i) and blake3.blake3(b).digest()[-1] == 0)

    async def go():
        async with await Repository.open(store_url) as repo:
            await repo.put_bytes(blob, ref="nul")
            assert await repo.read("nul") == blob
            assert (await repo.verify()).ok
    run(go())


def test_ref_and_refs_below_it_coexist(store_url):
    # A hub names a repo and the files inside it: "org/model" and "org/model/config.json".
    async def go():
        async with await Repository.open(store_url) as repo:
            await repo.put_bytes(b"repo card", ref="org/model")
            await repo.put_bytes(b"{}", ref="org/model/config.json")
            assert await repo.read("org/model") == b"repo card"
            assert await repo.read("org/model/config.json") == b"{}"
            assert [r.name for r in await repo.list_refs("org/")] == ["org/model", "org/model/config.json"]
    run(go())


def test_frames_never_exceed_the_u16_chunk_count(tmp_path):
    # 64-byte chunks in 8 MiB frames would be 131k chunks per frame; the
    # frame header counts them in 16 bits, so frames are cut at 65535.
    cfg = StoreConfig(chunking=ChunkParams(64, 64, 128, 1, 1), frame_size=8 << 20,
                      coarse_chunking=None)          # random bytes, cut fine all the same
    data = rand(9 * MiB, 40)

    async def go():
        async with await Repository.open(tmp_path / "s", config=cfg) as repo:
            r = await repo.put_bytes(data, ref="tiny-chunks")
            assert r.chunks > 65535
            assert await repo.read("tiny-chunks", 5 * MiB, 5 * MiB + 1000) == data[5 * MiB:5 * MiB + 1000]
            assert (await repo.verify()).ok
    run(go())


def test_unknown_chunker_in_config_is_refused(tmp_path):
    import json
    from ingest.config import KEY, MAGIC
    from ingest.envelope import seal
    from ingest.errors import FormatError
    from ingest.stores.local import LocalStore

    async def go():
        store = LocalStore(tmp_path / "s")
        cfg = {"chunker": "gear-nc-v999", "chunking": ChunkParams().to_dict(),
               "frame_size": 1 << 20, "pack_size": 64 << 20, "zstd_level": 3}
        await store.put(KEY, seal(MAGIC, 1, json.dumps(cfg).encode()))
        with pytest.raises(FormatError, match="chunker"):
            await Repository.open(tmp_path / "s")
    run(go())


def test_malformed_ref_and_config_payloads_are_format_errors():
    import json
    from ingest.config import MAGIC as CMAGIC
    from ingest.config import StoreConfig
    from ingest.envelope import seal
    from ingest.errors import FormatError
    from ingest.refs import MAGIC, Ref
    good = {"file_id": "a" * 64, "sha256": "b" * 64, "size": 1, "time": 1.0}
    for bad in ({**good, "size": 14.7}, {**good, "size": "14"}, {**good, "size": True},
                {**good, "time": "NaN"}, {**good, "file_id": "A" * 64}, [], None):
        with pytest.raises(FormatError):
            Ref.decode("x", seal(MAGIC, 1, json.dumps(bad).encode()))
    for bad in ([], None, {"chunker": "gear-nc-v1"}):
        with pytest.raises(FormatError):
            StoreConfig.decode(seal(CMAGIC, 1, json.dumps(bad).encode()))
    from ingest.envelope import unseal
    cfg = json.loads(bytes(unseal(StoreConfig().encode(), CMAGIC, {1}, "config")[1]))
    assert StoreConfig.decode(seal(CMAGIC, 1, json.dumps(cfg).encode())) == StoreConfig()
    for key, value in [("frame_size", 1048576.9), ("frame_size", "1048576"), ("pack_size", 67108864.0),
                       ("zstd_level", True), ("zstd_level", "3")]:
        with pytest.raises(FormatError, match=f"{key} is not an integer"):
            StoreConfig.decode(seal(CMAGIC, 1, json.dumps({**cfg, key: value}).encode()))
    with pytest.raises(FormatError, match="min_size is not an integer"):
        chunking = {**cfg["chunking"], "min_size": 16384.5}
        StoreConfig.decode(seal(CMAGIC, 1, json.dumps({**cfg, "chunking": chunking}).encode()))


def test_refs_read_the_same_with_and_without_the_json_parser():
    """decode() reads what encode() writes without json.loads; any other
    payload, valid or not, gets the parser and its checks, so both ways give
    the same answers."""
    import json
    from ingest.envelope import seal
    from ingest.errors import FormatError
    from ingest.refs import MAGIC, Ref, _CANONICAL
    for sha in (None, bytes(range(32))):
        for size in (0, 7, 1 << 40):
            r = Ref.new("a/b", bytes(range(1, 33)), size, sha)
            data = r.encode()
            assert _CANONICAL.fullmatch(data[16:-16])          # the fast way
            assert Ref.decode("a/b", data) == r
    fid = "c" * 64
    for payload, want in [
            # the parser's way: other spacing, key order, escapes, an int time
            ({"file_id": fid, "sha256": None, "size": 3, "time": 5}, (fid, None, 3, 5.0)),
            (json.dumps({"time": 1.5, "size": 3, "sha256": None, "file_id": fid}), (fid, None, 3, 1.5)),
            ('{"file_id": "\u0063' + "c" * 63 + '", "sha256": null, "size": 3, "time": 1.0}',
             (fid, None, 3, 1.0))]:
        raw = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        r = Ref.decode("x", seal(MAGIC, 1, raw.encode()))
        assert (r.file_id, r.sha256, r.size, r.time) == want
    # Canonical in shape but not valid: refused as the parser refuses it.
    for bad in ['{"file_id": "%s", "sha256": null, "size": 3, "time": 1e999}' % fid,
                '{"file_id": "%s", "sha256": null, "size": 03, "time": 1.0}' % fid]:
        with pytest.raises(FormatError):
            Ref.decode("x", seal(MAGIC, 1, bad.encode()))


def test_sealed_many_accepts_what_unseal_accepts():
    """The native batch check of envelopes says yes exactly where unseal()
    returns, on whole, damaged, truncated, padded and foreign objects."""
    from ingest.envelope import seal, sealed_many, unseal
    from ingest.errors import IngestError as Bad
    good = seal(b"IGRF", 1, b'{"a": 1}')
    flipped = [bytes(good[:i]) + bytes([good[i] ^ 0x40]) + bytes(good[i + 1:])
               for i in range(len(good))]
    datas = [good, seal(b"IGRF", 1, b""), seal(b"IGRF", 2, b"x"), seal(b"IGFM", 1, b"x"),
             good[:-1], good + b"\0", good[:31], b"", None, bytearray(good), memoryview(good),
             *flipped]
    want = []
    for d in datas:
        try:
            if not isinstance(d, bytes):
                raise Bad("not bytes")        # what a store returns is bytes; nothing else counts
            unseal(d, b"IGRF", {1}, "x")
            want.append(1)
        except Bad:
            want.append(0)
    assert list(sealed_many(datas, b"IGRF", 1)) == want
    assert want[:2] == [1, 1] and sum(want) == 2    # one flipped bit anywhere is refused
    assert sealed_many([], b"IGRF", 1) == b""


def test_names_many_judges_stored_refs_as_decode_does():
    """A batch's stored refs are matched against the files being written
    without decoding each; the answers are those of Ref.decode and a
    comparison, for canonical, parser-only, damaged and malformed refs."""
    import json
    from ingest.envelope import seal
    from ingest.errors import IngestError as Bad
    from ingest.refs import MAGIC, Ref, names_many
    fid, other, sha = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))
    good = Ref.new("a/b", fid, 10, None).encode()
    cases = [
        None, good, Ref.new("a/b", fid, 10, sha).encode(), Ref.new("a/b", other, 10, None).encode(),
        seal(MAGIC, 1, json.dumps({"size": 10, "time": 2, "sha256": None, "file_id": fid.hex()}).encode()),
        seal(MAGIC, 1, b'{"file_id": "%s", "sha256": null, "size": 10, "time": 1e999}' % fid.hex().encode()),
        seal(MAGIC, 1, b'{"file_id": "%s", "sha256": null, "size": 10, "time": x}' % fid.hex().encode()),
        seal(MAGIC, 2, good[16:-16]), good[:-1] + bytes([good[-1] ^ 1]), good[:20]]

    def decoded(data, f, s):
        if data is None:
            return False
        try:
            r = Ref.decode("a/b", data)
        except Bad:
            return False
        return r.file_id == f.hex() and (s is None or r.sha256 == s.hex())
    args = [(d, f, s) for d in cases for f in (fid, other) for s in (None, sha, other)]
    got = names_many(["a/b"] * len(args), [a[0] for a in args], [a[1] for a in args],
                     [a[2] for a in args])
    assert got == [decoded(*a) for a in args]
    assert any(got) and not all(got)


def test_reingest_writes_a_missing_manifest_under_a_new_name(tmp_path):
    """A file whose chunks are all stored gets its manifest built only when
    it is written: a ref already naming the file needs none, a new name
    does (here the manifest was lost, as a crash before it would lose it)."""
    src = tmp_path / "t"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.txt").write_bytes(text(3000 + 1000 * i, i))
    (src / "big.bin").write_bytes(text(3 * MiB, 9))          # streamed, not a batch

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            first = await repo.put_tree([src], sha256=False)
        # The small files' manifests are kept in the tree; big.bin's is at files/.
        lost = [LocalStore(tmp_path / "s")._path("files/" + r.file_id) for r in first]
        lost = [p for p in lost if p.exists()]
        assert len(lost) == 1
        for p in lost:
            os.remove(p)
        async with await Repository.open(tmp_path / "s") as repo:
            again = await repo.put_tree([src], sha256=False)  # refs name the files: nothing written
            assert sorted(r.file_id for r in again) == sorted(r.file_id for r in first)
            assert all(r.new_bytes == 0 for r in again)
            assert not [k async for k in repo.store.list("files/")]
            single = await repo.put_file(src / "big.bin", ref="elsewhere/big.bin")
            moved = tmp_path / "moved"
            src.rename(moved)
            (moved / "f0.txt").rename(tmp_path / "f0.txt")
            late = await repo.put_tree([moved, tmp_path / "f0.txt"], sha256=False)
            assert all(r.new_bytes == 0 for r in late) and single.new_bytes == 0
            for r in late:
                path = tmp_path / "f0.txt" if r.ref == "f0.txt" else moved / r.ref.split("/", 1)[1]
                assert await repo.read(r.ref) == path.read_bytes()
            assert await repo.read("elsewhere/big.bin") == (moved / "big.bin").read_bytes()
    run(go())


def test_packs_in_flight_follow_the_kind_of_store(store_url):
    """A local disk keeps 2 packs in flight, a remote store 4 (both stores
    take a pack as parts, so that is not what tells them apart)."""
    async def go():
        async with await Repository.open(store_url) as repo:
            assert repo.store.accepts_parts
            return repo.session().max_packs_in_flight
    assert run(go()) == (4 if "://" in store_url else 2)


def test_file_that_grows_past_its_size_hint(tmp_path):
    """Frames are sized to what a file's stat said is left; a file that grows
    while it is read (a log being appended to) still comes back whole."""
    data = rand(3 * MiB, 40) + b"text " * 50_000        # raw and compressible frames

    async def go():
        async with await Repository.open(tmp_path / "store") as repo:
            s = repo.session()
            pos = 0

            async def readinto(out: memoryview) -> int:
                nonlocal pos
                n = min(out.nbytes, len(data) - pos, 300_000)
                out[:n] = data[pos:pos + n]
                pos += n
                return n
            w = await s.write(readinto, size_hint=10_000)
            r = await s.commit(w, "grown")
            await s.flush()
            assert r.size == len(data)
            assert await repo.read("grown") == data
            assert (await repo.verify()).ok
    run(go())


def test_ingest_without_sha256(store_url, tmp_path):
    """sha256=False: same chunks, file ids and bytes; no SHA-256 anywhere,
    and a store that mixes both kinds still verifies."""
    import hashlib
    big = rand(20 * MiB + 5, 11)            # several blocks: the split BLAKE3 path
    src = make_tree(tmp_path / "tree")

    async def go():
        async with await Repository.open(store_url) as repo:
            a = await repo.put_bytes(big, ref="nosha/big", sha256=False)
            assert a.sha256 is None
            assert (await repo.get_ref("nosha/big")).sha256 is None
            _, m = await repo.resolve("nosha/big")
            assert m.sha256 is None
            assert await repo.read("nosha/big") == big
            b = await repo.put_bytes(big, ref="sha/big")
            assert b.file_id == a.file_id and b.new_bytes == 0
            assert b.sha256 == hashlib.sha256(big).hexdigest()
            results = await repo.put_tree([tmp_path / "tree"], sha256=False)
            assert results and all(r.sha256 is None for r in results)
            with_sha = await repo.put_tree([tmp_path / "tree"])
            assert sorted(r.file_id for r in with_sha) == sorted(r.file_id for r in results)
            for r in with_sha:
                rel = r.ref.split("/", 1)[1]
                assert r.sha256 == hashlib.sha256(src[rel]).hexdigest()
                # The ref that had none now carries it.
                assert (await repo.get_ref(r.ref)).sha256 == r.sha256
            rep = await repo.verify()
            assert rep.ok, rep.problems
        # A new process reads the sha-less refs and manifests back.
        async with await Repository.open(store_url, create=False) as repo:
            assert (await repo.get_ref("nosha/big")).sha256 is None
            assert await repo.read(a.file_id, 7, 7 + MiB) == big[7:7 + MiB]
    run(go())


def test_restore_many(store_url, tmp_path):
    """Small files in batches, large ones streamed; by ref or file id,
    duplicates and empty files, sizes in order, each reported once."""
    src = {f"s{i:03}.txt": text(300 + 37 * i, i) for i in range(150)}
    src["dup-a.bin"] = src["dup-b.bin"] = rand(500_000, 8)
    src["empty"] = b""
    src["large.bin"] = rand(5 * MiB, 9)
    src["mid.bin"] = rand(2 * MiB - 1, 10)

    async def go():
        async with await Repository.open(store_url) as repo:
            fids = {}
            for name, data in src.items():
                fids[name] = (await repo.put_bytes(data, ref=f"t/{name}", sha256=False)).file_id
            out = tmp_path / "out"
            out.mkdir()
            names = sorted(src)
            items = [(fids[n] if i % 2 else f"t/{n}", out / n) for i, n in enumerate(names)]
            seen = []
            sizes = await repo.restore_many(items, on_file=lambda i, n: seen.append((i, n)))
            assert sizes == [len(src[n]) for n in names]
            assert sorted(seen) == list(enumerate(sizes))
            for n in names:
                assert (out / n).read_bytes() == src[n], n
            assert not [p for p in out.iterdir() if p.name.endswith(".ingest-tmp")]
            assert await repo.restore_many([]) == []
            with pytest.raises(NotFound):
                await repo.restore_many([("t/s000.txt", out / "x"), ("t/nope", out / "y")])
    run(go())


def test_restore_many_damaged_pack_writes_no_bad_file(tmp_path):
    root = tmp_path / "s"
    small = {f"f{i}": text(2000 + i, i) for i in range(20)}

    async def put():
        async with await Repository.open(root) as repo:
            await repo.put_tree([_tree(tmp_path / "src", small)])
    run(put())
    pack = _one(root, "packs")
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    pack.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()

    async def go():
        async with await Repository.open(root) as repo:
            with pytest.raises(IntegrityError):
                await repo.restore_many([(f"src/{n}", out / n) for n in small])
    run(go())
    # Files written before the damaged one are whole; none is partial.
    for p in out.iterdir():
        assert p.read_bytes() == small[p.name]


def test_restore_many_an_output_that_cannot_be_written(tmp_path):
    """The batch's other files are restored whole, the one that cannot be
    written is named in the error, and no temporary file stays behind."""
    root = tmp_path / "s"
    small = {f"f{i}": text(3000 + i, i) for i in range(12)}

    async def go():
        async with await Repository.open(root) as repo:
            await repo.put_tree([_tree(tmp_path / "src", small)])
            out = tmp_path / "out"
            out.mkdir()
            (out / "f5").mkdir()                  # a directory where f5 would go
            with pytest.raises(IngestError, match="cannot write .*f5"):
                await repo.restore_many([(f"src/{n}", out / n) for n in small])
            for n in small:
                if n != "f5":
                    assert (out / n).read_bytes() == small[n], n
            assert (out / "f5").is_dir()
            assert not [p for p in out.iterdir() if p.name.endswith(".ingest-tmp")]
    run(go())


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_frame_cache_is_bounded_and_reused(tmp_path):
    from ingest.repository import FrameCache
    c = FrameCache(10)
    c.put(("p", 0), b"aaaa")
    c.put(("p", 4), b"bbbb")
    assert c.get(("p", 0))[0] == b"aaaa"       # now the most recent
    c.put(("p", 8), b"cccc")                   # over 10 bytes: the least recent goes
    assert c.get(("p", 4)) is None and c.get(("p", 0))[0] == b"aaaa" and c.bytes == 8
    assert c.put(("p", 12), b"x" * 11)[0] == b"x" * 11   # larger than the cache: not kept
    assert c.get(("p", 12)) is None and c.bytes == 8
    c.get(("p", 0))[1].add((0, 4, b"id"))
    assert c.put(("p", 0), b"aaaa")[1] == {(0, 4, b"id")}   # the kept entry, as it was

    base = text(3 * MiB, 3)
    edited = base[:MiB] + b"an edit in the middle\n" + base[MiB:]

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            await repo.put_bytes(base, ref="v1")
            await repo.put_bytes(edited, ref="v2")
            out = tmp_path / "out"
            out.mkdir()
            decoded, read = [], []
            real = repository.decompress
            real_read = repo.store._get_range

            def counting(*a):
                decoded.append(a[2])
                return real(*a)

            def reading(key, start, end):
                read.append(end - start)
                return real_read(key, start, end)
            repository.decompress = counting
            repo.store._get_range = reading
            try:
                # One after the other: at once, both could decode a frame
                # before either had cached it.
                await repo.restore_many([("v1", out / "v1")])
                read_v1 = sum(read)
                await repo.restore_many([("v2", out / "v2")])
            finally:
                repository.decompress = real
                del repo.store._get_range
            assert (out / "v1").read_bytes() == base and (out / "v2").read_bytes() == edited
            # v2's unchanged frames are v1's: decoded once for both files,
            # and not even read again.
            assert sum(decoded) < len(base) + len(edited) * 0.6
            assert 0 < sum(read) - read_v1 < read_v1 * 0.6
            assert repo.frame_cache.bytes <= repo.frame_cache.max_bytes
            # Ranges: the cached frames serve any part of a file.
            assert await repo.read("v2", MiB - 5, MiB + 100) == edited[MiB - 5:MiB + 100]
    run(go())


def test_pack_stream_failing_mid_write_loses_nothing(tmp_path, monkeypatch):
    """The local store writes a filling pack to its temporary file as it
    goes; a write that fails there (a full disk) fails the ingest, leaves no
    temporary file and loses nothing stored before."""
    from ingest.stores import local
    root = tmp_path / "store"
    old = rand(3 * MiB, 40)
    new = rand(24 * MiB, 41)              # several 8 MiB writes of one pack

    async def before():
        async with await Repository.open(root) as repo:
            await repo.put_bytes(old, ref="old")
    run(before())
    real = local._LocalPut._write
    calls = []

    def failing(self, parts):
        calls.append(1)
        if len(calls) == 2:
            raise StoreError("cannot write a new object: No space left on device (injected)")
        return real(self, parts)
    monkeypatch.setattr(local._LocalPut, "_write", failing)

    async def go():
        async with await Repository.open(root) as repo:
            with pytest.raises(IngestError, match="injected"):
                await repo.put_bytes(new, ref="new")
    run(go())
    monkeypatch.setattr(local._LocalPut, "_write", real)
    assert len(calls) >= 2
    assert not list((root / "%tmp").iterdir())

    async def after():
        async with await Repository.open(root) as repo:
            assert [r.name for r in await repo.list_refs()] == ["old"]
            assert await repo.read("old") == old
            rep = await repo.verify()
            assert rep.ok, rep.problems
            again = await repo.put_bytes(new, ref="new")     # and the store still takes it
            assert await repo.read("new") == new and again.size == len(new)
    run(after())


def test_manifest_of_many_chunks_is_built_like_a_small_ones(monkeypatch):
    """from_locations vectorized (large files) gives the same manifest, byte
    for byte, as the per-chunk loop small files take: packs and frames
    numbered by first use, frames revisited out of order included."""
    from ingest import manifest as mf
    from ingest.index import LOCATION
    r = np.random.default_rng(3)
    for trial in range(100):
        n = 1 if trial < 10 else int(r.integers(2, 400))    # one chunk has a path of its own
        packs = [r.bytes(32) for _ in range(int(r.integers(1, 4)))]
        locs = np.zeros(n, LOCATION)
        i = 0
        while i < n:
            run, p, fo = int(r.integers(1, 20)), int(r.integers(0, len(packs))), int(r.integers(0, 5)) * 1000
            sl = slice(i, i + run)
            locs["pack"][sl] = np.frombuffer(packs[p], "V32")[0]
            locs["frame_offset"][sl], locs["frame_length"][sl] = fo, fo + 7
            locs["frame_raw"][sl], locs["codec"][sl] = fo + 11, p
            i += run
        locs["offset"], locs["length"] = r.integers(0, 1000, n), r.integers(1, 1000, n)
        ids = r.integers(0, 256, (n, 32), dtype=np.uint8)
        size = int(locs["length"].sum())
        fast = mf.Manifest._from_many_locations(size, None, ids, locs)
        monkeypatch.setattr(mf, "_LOOP_UP_TO", 1 << 30)
        slow = mf.Manifest.from_locations(size, None, ids, locs)
        monkeypatch.undo()
        assert fast.encode() == slow.encode(), trial
        assert fast.file_id == slow.file_id
        assert np.array_equal(fast.locations(), slow.locations())


def test_incompressible_files_are_cut_coarse_the_same_every_way_in(tmp_path):
    """A file of random bytes of at least 1 MiB is cut with the store's
    coarse parameters (chunking.params_for), whichever way it comes in:
    put_tree (its small-file batch and its mapped path), put_file,
    put_bytes, put_stream.  Text and smaller files keep the store's own."""
    from ingest.chunking import UNIFORM_MIN_FILE
    files = {"small-random.bin": rand(UNIFORM_MIN_FILE + 5, 50),     # the small-file batch
             "big-random.bin": rand(12 * MiB + 3, 51),               # mapped blocks
             "under.bin": rand(UNIFORM_MIN_FILE - 1, 52),            # too short for coarse
             "text.txt": text(3 * MiB, 53)}
    root = tmp_path / "t"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)

    async def stream(data: bytes):
        for i in range(0, len(data), 300_000):
            yield data[i:i + 300_000]

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            assert repo.config.coarse_chunking == repo.config.chunking.coarsened()
            tree = {r.ref.split("/", 1)[1]: r for r in await repo.put_tree([root])}
            for name, data in files.items():
                ways = [tree[name], await repo.put_file(root / name),
                        await repo.put_bytes(data), await repo.put_stream(stream(data))]
                assert len({r.file_id for r in ways}) == 1, name
                mean = len(data) / ways[0].chunks
                if name.endswith("random.bin"):
                    assert mean > 256 * 1024, name
                else:
                    assert mean < 128 * 1024, name
                assert await repo.read(ways[0].file_id) == data
            assert (await repo.verify()).ok
    run(go())


def test_store_made_before_coarse_chunking_keeps_one_set(tmp_path):
    """A v1 config (chunker gear-nc-v1, no coarse parameters) reads back as
    such, and its writers cut random bytes as they always did."""
    import json
    from ingest.config import KEY, MAGIC
    from ingest.envelope import seal
    from ingest.stores.local import LocalStore
    data = rand(4 * MiB, 54)

    async def go():
        store = LocalStore(tmp_path / "s")
        cfg = {"chunker": "gear-nc-v1", "chunking": ChunkParams().to_dict(),
               "frame_size": 1 << 20, "pack_size": 64 << 20, "zstd_level": 3}
        await store.put(KEY, seal(MAGIC, 1, json.dumps(cfg).encode()))
        async with await Repository.open(tmp_path / "s") as repo:
            assert repo.config.coarse_chunking is None
            r = await repo.put_bytes(data)
            assert len(data) / r.chunks < 128 * 1024
    run(go())


def test_config_with_and_without_coarse_chunking():
    import json
    from ingest.config import MAGIC
    from ingest.envelope import seal, unseal
    from ingest.errors import FormatError

    def payload(cfg):
        return json.loads(bytes(unseal(cfg.encode(), MAGIC, {1}, "config")[1]))
    new = StoreConfig()
    assert new.coarse_chunking == ChunkParams(128 * 1024, 512 * 1024, 1 << 20, 20, 16)
    d = payload(new)
    assert d["chunker"] == "gear-nc-v2" and d["coarse_chunking"] == new.coarse_chunking.to_dict()
    assert StoreConfig.decode(new.encode()) == new
    old = StoreConfig(coarse_chunking=None)
    assert payload(old)["chunker"] == "gear-nc-v1" and "coarse_chunking" not in payload(old)
    assert StoreConfig.decode(old.encode()) == old
    # "auto" leaves it out when frame_size cannot hold the coarse chunks.
    assert StoreConfig(frame_size=512 * 1024).coarse_chunking is None
    with pytest.raises(ValueError):
        StoreConfig(frame_size=512 * 1024, coarse_chunking=ChunkParams().coarsened())
    # v2 without its coarse parameters is malformed.
    del d["coarse_chunking"]
    with pytest.raises(FormatError, match="malformed"):
        StoreConfig.decode(seal(MAGIC, 1, json.dumps(d).encode()))


class SlowIndexStore(LocalStore):
    """Listing index/ waits for `release`, or fails `fail` more times."""
    def __init__(self, root, release=None, fail=0):
        super().__init__(root)
        self.release, self.fail = release, fail

    async def list(self, prefix=""):
        if prefix.startswith("index/"):
            if self.release is not None:
                await self.release.wait()
            if self.fail:
                self.fail -= 1
                raise StoreError("index listing failed")
        async for info in super().list(prefix):
            yield info


def test_index_is_loaded_by_the_first_write_not_by_reads(tmp_path):
    """open() does not load the index: reads never need it; the first
    write loads it (and so still dedups against everything stored)."""
    data = text(3 * MiB, 60)

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            r = await repo.put_bytes(data, ref="a")
        release = asyncio.Event()
        async with await Repository.open(SlowIndexStore(tmp_path / "s", release)) as repo:
            assert await asyncio.wait_for(repo.read("a"), 10) == data
            assert len(repo.index) == 0
            put = asyncio.ensure_future(repo.put_bytes(data, ref="b"))
            await asyncio.sleep(0.2)
            assert not put.done()                # waits for the index
            release.set()
            again = await asyncio.wait_for(put, 10)
            assert again.new_bytes == 0 and again.file_id == r.file_id
            assert (await repo.stats())["chunks"] == len(repo.index) > 0
    run(go())


@pytest.mark.parametrize("fail", [1, 2])
def test_index_that_fails_to_load_fails_writes_not_reads(tmp_path, fail):
    """An index load that fails fails the write that needed it, with the
    store's error, and the next write loads it; reads never notice."""
    data = text(2 * MiB, 61)

    async def go():
        async with await Repository.open(tmp_path / "s") as repo:
            await repo.put_bytes(data, ref="a")
        async with await Repository.open(SlowIndexStore(tmp_path / "s", fail=fail)) as repo:
            assert await repo.read("a") == data
            for _ in range(fail):
                with pytest.raises(StoreError, match="index listing failed"):
                    await repo.put_bytes(data, ref="b")
                assert await repo.read("a") == data
            assert (await repo.put_bytes(data, ref="b")).new_bytes == 0   # loaded now
    run(go())


def test_decoded_runs_are_checked_chunk_by_chunk():
    """A run read from a decoded frame: every chunk is checked against its
    id (one native call), a chunk used twice in a row comes out twice, a
    run of chunks back to back comes out as one view, and a wrong id or a
    chunk past the frame's end is an IntegrityError."""
    import blake3
    from ingest.index import LOCATION
    raw = rand(300_000, seed=7)

    def run_of(spans, ids=None):
        locs = np.zeros(len(spans), dtype=LOCATION)
        locs["offset"] = [o for o, _ in spans]
        locs["length"] = [n for _, n in spans]
        if ids is None:
            ids = np.array([blake3.blake3(raw[o:o + n]).digest() for o, n in spans], dtype="V32")
        return locs, ids

    spans = [(0, 100_000), (100_000, 50_000), (100_000, 50_000), (250_000, 50_000)]
    locs, ids = run_of(spans)
    out = repository._decode_run(None, locs, ids, "test", entry=(raw, set()))
    assert bytes(out) == b"".join(raw[o:o + n] for o, n in spans)

    locs, ids = run_of([(100_000, 50_000), (150_000, 60_000)])
    out = repository._decode_run(None, locs, ids, "test", entry=(raw, set()))
    assert isinstance(out, memoryview) and bytes(out) == raw[100_000:210_000]

    bad = ids.copy()
    bad[1] = blake3.blake3(b"something else").digest()
    with pytest.raises(IntegrityError, match="does not match its id"):
        repository._decode_run(None, locs, bad, "test", entry=(raw, set()))
    locs, ids = run_of([(250_000, 50_000)])
    locs["length"] = 50_001
    with pytest.raises(IntegrityError, match="does not match its id"):
        repository._decode_run(None, locs, ids, "test", entry=(raw, set()))


def test_an_index_shard_the_store_fails_to_return_is_loaded_on_the_next_try(tmp_path):
    """A store failure while loading the index is raised (the daemon is not
    ready yet, a write fails and may be retried), not taken for a damaged
    shard: marked loaded, that shard's chunks would be stored again for the
    rest of the process's life.  The next load reads it, and dedups."""
    blobs = [rand(300_000, seed=i) for i in range(3)]

    async def put():
        async with await Repository.open(tmp_path / "s", config=StoreConfig(pack_size=1 << 20)) as repo:
            for i, b in enumerate(blobs):
                await repo.put_bytes(b, ref=f"b{i}")
    run(put())

    class Flaky(LocalStore):
        failed = False

        async def get(self, key, start=0, end=None):
            if key.startswith("index/") and not Flaky.failed:
                Flaky.failed = True
                raise StoreError(f"get {key}: the store did not answer")
            return await super().get(key, start, end)

    async def go():
        async with await Repository.open(Flaky(tmp_path / "s")) as repo:
            shards = [o.key async for o in repo.store.list("index/")]
            assert len(shards) >= 2
            with pytest.raises(StoreError, match="did not answer"):
                await repo.index_ready()
            assert not repo.index_loaded
            await repo.index_ready()
            assert repo.index.shards == set(shards)
            return [(await repo.put_bytes(b, ref=f"again{i}")).new_bytes for i, b in enumerate(blobs)]
    assert run(go()) == [0, 0, 0]
