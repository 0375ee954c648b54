"""Restored files written around the page cache (ingest.output)."""
from __future__ import annotations

import asyncio
import errno
import mmap
import os

import pytest

from ingest import Repository
from ingest import output
from ingest import repository as repository_mod
from ingest.output import ALIGN, STAGE_BYTES, OutputFile, StagePool


def _direct_works(d) -> bool:
    """Whether the file system under d takes an aligned O_DIRECT write,
    asked of the kernel directly (not through the code under test)."""
    if not output.O_DIRECT:
        return False
    p = os.path.join(d, "probe")
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | output.O_DIRECT, 0o644)
    except OSError as e:
        assert e.errno == errno.EINVAL
        return False
    buf = mmap.mmap(-1, ALIGN)
    try:
        os.write(fd, buf)
        return True
    except OSError as e:
        assert e.errno == errno.EINVAL
        return False
    finally:
        os.close(fd)
        buf.close()
        os.unlink(p)


def _blocks(total: int, sizes: list[int], seed: int = 1) -> list[bytes]:
    data = os.urandom(total) if seed else bytes(total)
    out, pos, k = [], 0, 0
    while pos < total:
        n = min(sizes[k % len(sizes)], total - pos)
        out.append(data[pos:pos + n])
        pos += n
        k += 1
    return out


def _write(path, blocks, stage, direct: bool, batch: int = 7) -> OutputFile:
    f = OutputFile(path, stage, direct)
    try:
        for i in range(0, len(blocks), batch):
            f.write(blocks[i:i + batch])
        f.finish()
    finally:
        f.close()
    return f


@pytest.mark.parametrize("total", [0, 1, ALIGN - 1, ALIGN, STAGE_BYTES, 2 * STAGE_BYTES + 12345,
                                   3 * STAGE_BYTES - ALIGN])
def test_output_file_writes_exact_bytes(tmp_path, total):
    blocks = _blocks(total, [1, 4095, 70000, 1 << 20, 3 * (1 << 20) + 17])
    stage = mmap.mmap(-1, STAGE_BYTES)
    f = _write(tmp_path / "out", blocks, stage, direct=True)
    assert f.size == total
    assert (tmp_path / "out").read_bytes() == b"".join(blocks)
    # Still direct at the end unless a tail of less than ALIGN went buffered.
    assert f.direct == (_direct_works(tmp_path) and total % ALIGN == 0)
    stage.close()


def test_output_file_direct_where_the_file_system_takes_it(tmp_path):
    f = OutputFile(tmp_path / "out", mmap.mmap(-1, STAGE_BYTES), True)
    try:
        assert f.direct == _direct_works(tmp_path)
    finally:
        f.close()
    f = OutputFile(tmp_path / "out2", mmap.mmap(-1, STAGE_BYTES), False)
    try:
        assert not f.direct
    finally:
        f.close()


def test_output_file_on_tmpfs(tmp_path):
    """tmpfs refused O_DIRECT at open before Linux 6.6 and takes it since:
    either way the bytes come out exact, direct as the kernel allows."""
    shm = "/dev/shm"
    if not os.path.isdir(shm):
        pytest.skip("no /dev/shm here")
    d = os.path.join(shm, f"ingest-test-{os.getpid()}")
    os.mkdir(d)
    try:
        blocks = _blocks(STAGE_BYTES + 3 * ALIGN, [1 << 20, 999])
        f = _write(os.path.join(d, "out"), blocks, mmap.mmap(-1, STAGE_BYTES), direct=True)
        assert f.direct == _direct_works(d)
        with open(os.path.join(d, "out"), "rb") as fh:
            assert fh.read() == b"".join(blocks)
    finally:
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)


def test_output_file_falls_back_when_a_direct_write_is_refused(tmp_path):
    """A stage that is not page-aligned makes the kernel refuse the direct
    write (EINVAL): the file goes on buffered from where it stopped."""
    if not _direct_works(tmp_path):
        pytest.skip("this file system takes no O_DIRECT writes")
    backing = mmap.mmap(-1, STAGE_BYTES + ALIGN)
    stage = memoryview(backing)[1:1 + STAGE_BYTES]        # misaligned by one byte
    blocks = _blocks(2 * STAGE_BYTES + 5, [1 << 20, 12345])
    f = OutputFile(tmp_path / "out", stage, True)
    try:
        assert f.direct
        for b in blocks:
            f.write([b])
        f.finish()
        assert not f.direct                                # it fell back
    finally:
        f.close()
    stage.release()
    assert (tmp_path / "out").read_bytes() == b"".join(blocks)


def test_stage_pool_reuses_and_bounds():
    pool = StagePool(keep=2)
    a, b, c = pool.take(), pool.take(), pool.take()
    assert len({id(a), id(b), id(c)}) == 3 and len(a) == STAGE_BYTES
    for x in (a, b, c):
        pool.give(x)
    assert not a.closed and not b.closed and c.closed    # kept two, closed the third
    assert pool.take() is b
    pool.close()
    assert a.closed and not b.closed


def _record_outputs(monkeypatch) -> list:
    made = []

    class Recording(OutputFile):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
    monkeypatch.setattr(repository_mod, "OutputFile", Recording)
    return made


@pytest.mark.parametrize("direct_writes", [True, False])
def test_restore_of_large_files_direct_or_not(tmp_path, monkeypatch, direct_writes):
    made = _record_outputs(monkeypatch)
    sizes = [repository_mod.WRITE_BATCH // 2, output.DIRECT_MIN - 1, output.DIRECT_MIN,
             3 * STAGE_BYTES + 4321]
    srcs = []
    for i, n in enumerate(sizes):
        p = tmp_path / f"in{i}"
        p.write_bytes(os.urandom(n))
        srcs.append(p)
    out = tmp_path / "out"
    out.mkdir()

    async def go():
        async with await Repository.open(tmp_path / "store",
                                         direct_writes=direct_writes) as repo:
            ids = [(await repo.put_file(p, ref=f"t/{p.name}")).file_id for p in srcs]
            got = await repo.restore_many([(fid, out / p.name) for fid, p in zip(ids, srcs)])
            return got, await repo.restore(f"t/{srcs[-1].name}", out / "again")
    got, one = asyncio.run(go())
    assert got == sizes and one == sizes[-1]
    for p in srcs:
        assert (out / p.name).read_bytes() == p.read_bytes()
    assert (out / "again").read_bytes() == srcs[-1].read_bytes()
    assert not [n for n in os.listdir(out) if n.endswith(".ingest-tmp")]
    # A file in hand (one write batch) below DIRECT_MIN is written in one
    # go; every other one through an OutputFile, direct from DIRECT_MIN on.
    direct_ok = _direct_works(tmp_path)
    expect = []
    for n in sizes + [sizes[-1]]:
        direct = direct_writes and n >= output.DIRECT_MIN
        if direct or n > repository_mod.WRITE_BATCH:
            # Still direct at the end unless a tail of less than ALIGN went buffered.
            expect.append((n, direct and direct_ok and n % ALIGN == 0))
    assert sorted((f.size, f.direct) for f in made) == sorted(expect)
    assert any(d for _, d in expect) == (direct_writes and direct_ok)


def test_restore_cancelled_mid_file_leaves_nothing_and_keeps_the_stage(tmp_path):
    src = tmp_path / "in"
    src.write_bytes(os.urandom(5 * STAGE_BYTES))

    async def go():
        async with await Repository.open(tmp_path / "store") as repo:
            fid = (await repo.put_file(src, ref="big")).file_id
            repo.frame_cache = None
            task = asyncio.ensure_future(repo.restore(fid, tmp_path / "out"))
            while not any(n.endswith(".ingest-tmp") for n in os.listdir(tmp_path)):
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            kept = list(repo.stages._free)
            # The stage came back and works for the next restore.
            assert len(kept) == 1 and not kept[0].closed
            assert await repo.restore(fid, tmp_path / "out") == 5 * STAGE_BYTES
    asyncio.run(go())
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".ingest-tmp")]
