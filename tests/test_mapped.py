"""Files read through windows of their mapping (ingest._mapped and the
mapped path of the pipeline): the same chunks, ids and SHA-256 as reading
them, and a file that shrinks under the mapping is an error, not a SIGBUS."""
import errno
import hashlib
import mmap
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ingest import IngestError, Repository, pipeline, repository
from ingest import _mapped
from ingest._mapped import SLOTS, Window

from helpers import rand, run, text

MiB = 1 << 20
BLOCK = pipeline.BLOCK_SIZE
PAGE = mmap.ALLOCATIONGRANULARITY


def test_window_reads_the_file_and_is_read_only(tmp_path):
    data = rand(5 * PAGE + 123, 1)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        w = Window(fd, 0, len(data))
        assert len(w) == len(data) and bytes(w) == data and not w.faulted
        with pytest.raises(TypeError):
            memoryview(w)[0:1] = b"x"
        assert bytes(Window(fd, 2 * PAGE, 3 * PAGE, False)) == data[2 * PAGE:5 * PAGE]
        with pytest.raises(OSError) as e:
            Window(fd, 100, 10)                      # offset not page aligned
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError):
            Window(fd, 0, 0)
        # Every slot taken: EBUSY (the pipeline then reads the block).
        held = []
        with pytest.raises(OSError) as e:
            for _ in range(SLOTS + 1):
                held.append(Window(fd, 0, PAGE))
        assert e.value.errno == errno.EBUSY and len(held) <= SLOTS
        del held
        assert bytes(Window(fd, 0, PAGE)) == data[:PAGE]   # slots come back
    finally:
        os.close(fd)


def test_window_of_a_file_that_shrinks_reads_zeros_and_says_so(tmp_path):
    data = rand(16 * PAGE, 2)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        w = Window(fd, 0, len(data))
        keep = 3 * PAGE + 10
        os.truncate(p, keep)
        a = np.frombuffer(w, np.uint8)
        assert a[4 * PAGE:].sum() == 0               # past the new end: zeros, no SIGBUS
        assert bytes(a[:keep]) == data[:keep]
        assert w.faulted
        del a, w
        assert not Window(fd, 0, PAGE).faulted
    finally:
        os.close(fd)


def test_sigbus_outside_our_windows_still_kills(tmp_path):
    """The handler takes only faults inside its own windows: any other
    mapping's SIGBUS goes to the handler before it (here the default, which
    kills the process), with or without faulthandler."""
    p = tmp_path / "f"
    p.write_bytes(b"x" * 65536)
    code = textwrap.dedent(f"""
        import faulthandler, mmap, os, sys
        from ingest._mapped import Window
        if sys.argv[1] == "fh":
            faulthandler.enable()
        fd = os.open({str(p)!r}, os.O_RDONLY)
        w = Window(fd, 0, 4096)
        m = mmap.mmap(fd, 65536, prot=mmap.PROT_READ)
        os.truncate({str(p)!r}, 0)
        print(m[40000])
        print("survived")
    """)
    for mode in ("plain", "fh"):
        p.write_bytes(b"x" * 65536)
        r = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True)
        assert r.returncode == -7 or r.returncode == 135, (mode, r)   # SIGBUS
        assert "survived" not in r.stdout
        if mode == "fh":
            assert "Bus error" in r.stderr


SIZES = [repository.SMALL_FILE + 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345]


@pytest.mark.parametrize("size", SIZES)
def test_mapped_file_matches_the_same_bytes_read(tmp_path, monkeypatch, size):
    """put_file maps the file; put_bytes reads the same bytes into buffers:
    the same file id, chunks and SHA-256, and it reads back."""
    data = (text(size // 2, size) + rand(size, size))[:size]
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    mapped = []
    real = pipeline.WriteSession.write_file

    async def spy(self, *a, **k):
        mapped.append(True)
        return await real(self, *a, **k)
    monkeypatch.setattr(pipeline.WriteSession, "write_file", spy)

    async def go():
        async with await Repository.open(tmp_path / "a") as repo:
            a = await repo.put_file(p, "f")
            assert await repo.read("f") == data
            _, ma = await repo.resolve("f")
        async with await Repository.open(tmp_path / "b") as repo:
            b = await repo.put_bytes(data, "f")
            _, mb = await repo.resolve("f")
            c = await repo.put_file(p, "g", sha256=False)
            assert c.new_bytes == 0 and c.file_id == b.file_id
            assert (await repo.verify()).ok
        return a, b, ma, mb
    a, b, ma, mb = run(go())
    assert mapped == [True, True]
    assert a.file_id == b.file_id and a.size == size
    assert a.sha256 == b.sha256 == hashlib.sha256(data).hexdigest()
    assert np.array_equal(ma.chunks["id"], mb.chunks["id"])
    assert np.array_equal(ma.chunks["length"], mb.chunks["length"])


def test_windows_that_cannot_be_mapped_are_read(tmp_path, monkeypatch):
    """Out of slots (or address space) after the first block: the rest is
    read with pread, and nothing changes; a file whose first block cannot
    be mapped (a file system without mmap) is read into buffers."""
    data = rand(3 * BLOCK + 777, 5)
    p = tmp_path / "f.bin"
    p.write_bytes(data)

    def busy(*a, **k):
        raise OSError(errno.EBUSY, "busy")

    async def go(name):
        async with await Repository.open(tmp_path / name) as repo:
            r = await repo.put_file(p, "f")
            assert await repo.read("f") == data
            return r
    want = run(go("plain"))
    monkeypatch.setattr(pipeline, "Window", busy)
    assert run(go("pread")).file_id == want.file_id
    monkeypatch.setattr(repository, "Window", busy)
    assert run(go("buffers")).file_id == want.file_id
    assert want.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("change", ["truncate", "append"])
def test_file_changed_while_mapped_is_a_clear_error(tmp_path, change):
    """A file truncated while it is read fails with IngestError (not SIGBUS),
    one appended to does too; nothing names it, and the store still verifies
    and takes the next file."""
    data = rand(5 * BLOCK, 6)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    done = []

    def progress(n):
        if not done:
            done.append(n)
            if change == "truncate":
                os.truncate(p, MiB)
            else:
                with open(p, "ab") as f:
                    f.write(b"more")

    async def go():
        async with await Repository.open(tmp_path / "store") as repo:
            with pytest.raises(IngestError, match="while it was read"):
                await repo.put_file(p, "f", progress=progress)
            assert await repo.list_refs() == []
            p.write_bytes(data)
            r = await repo.put_file(p, "f")
            assert await repo.read("f") == data
            assert r.sha256 == hashlib.sha256(data).hexdigest()
            assert (await repo.verify()).ok
    run(go())
    assert done


def test_file_overwritten_while_mapped_never_stores_a_wrong_id(tmp_path):
    """Bytes changed in place between their hashing and their copy into a
    frame (a mapping shows the file as it is now): the frame's copy is
    hashed again, so the store never names bytes it does not hold.  The
    ingest fails with IngestError, or, if the change came before the
    hashing, it ingested the new bytes; either way the store verifies and a
    later file that shares the chunks reads back."""
    old = rand(4 * BLOCK, 7)
    new = old[:BLOCK] + rand(3 * BLOCK, 8)
    p = tmp_path / "f.bin"
    p.write_bytes(old)

    def progress(n):
        if progress.first:
            progress.first = False
            with open(p, "r+b") as f:
                f.seek(BLOCK)
                f.write(new[BLOCK:])
    progress.first = True

    async def go():
        async with await Repository.open(tmp_path / "store") as repo:
            try:
                r = await repo.put_file(p, "f", progress=progress, sha256=False)
            except IngestError as e:
                assert "changed while it was read" in str(e)
            else:
                assert await repo.read(r.file_id) == new
            q = tmp_path / "g.bin"
            q.write_bytes(new)
            await repo.put_file(q, "g")
            assert await repo.read("g") == new
            rep = await repo.verify()
            assert rep.ok, rep.problems
    run(go())


def test_a_tree_of_mapped_files_releases_every_window(tmp_path):
    """Many large files in flight at once (put_tree): all come back, and
    every window is unmapped afterwards (all SLOTS can be taken again)."""
    root = tmp_path / "tree"
    root.mkdir()
    files = {f"f{i}.bin": rand(BLOCK + 4096 * i + 1, 70 + i) for i in range(12)}
    for name, data in files.items():
        (root / name).write_bytes(data)

    async def go():
        async with await Repository.open(tmp_path / "store") as repo:
            got = {r.ref.split("/", 1)[1]: r for r in await repo.put_tree([root])}
            for name, data in files.items():
                assert await repo.read(got[name].file_id) == data
    run(go())
    fd = os.open(root / "f0.bin", os.O_RDONLY)
    held = []
    try:
        for _ in range(SLOTS):
            held.append(Window(fd, 0, PAGE))     # EBUSY if a window leaked
    finally:
        held.clear()
        os.close(fd)


def test_read_files_reads_many_files_and_says_what_failed(tmp_path):
    """_mapped.read_files: each file's bytes, False past the limit, and the
    OSError (with its errno) of a path it could not read."""
    from ingest._mapped import read_files
    files = {"empty": b"", "small": b"x" * 7, "bigger": os.urandom(300_000)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "dir").mkdir()
    got = read_files([tmp_path / "small", str(tmp_path / "empty"), tmp_path / "missing",
                      tmp_path / "dir", tmp_path / "bigger", b"%s" % bytes(tmp_path / "small")])
    assert got[0] == b"x" * 7 and got[1] == b"" and got[4] == files["bigger"] and got[5] == got[0]
    assert isinstance(got[2], FileNotFoundError) and got[2].filename == str(tmp_path / "missing")
    assert isinstance(got[3], IsADirectoryError)
    assert read_files([tmp_path / "bigger", tmp_path / "small"], 7) == [False, b"x" * 7]
    assert read_files([]) == []
    # Past one group of files held open at once, in order.
    from ingest._mapped import READ_GROUP
    many = [tmp_path / ("small" if i % 3 else "missing") for i in range(2 * READ_GROUP + 5)]
    got = read_files(many)
    assert [g if isinstance(g, bytes) else None for g in got] == \
        [b"x" * 7 if i % 3 else None for i in range(len(many))]


def test_local_store_batch_reads_a_directory_key_as_missing(tmp_path):
    """get_many's native batch read answers like a read one at a time: a key
    whose file name is a directory is absent, like a missing one."""
    from ingest.stores.local import LocalStore
    store = LocalStore(tmp_path / "s")
    for k in ("r/a", "r/b", "r/c"):
        assert store._put(k, k.encode(), False)
    (tmp_path / "s" / "r" / "d%").mkdir()
    want = [b"r/a", None, b"r/b", None, b"r/c"]
    keys = ["r/a", "r/missing", "r/b", "r/d", "r/c"]
    assert store._get_ranges([(k, 0, None) for k in keys]) == want
    assert [store._get_or_none(k, 0, None) for k in keys] == want


def test_paths_exist_is_os_path_exists(tmp_path):
    from ingest._mapped import paths_exist
    (tmp_path / "f").write_bytes(b"")
    (tmp_path / "d").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    paths = [tmp_path / "f", tmp_path / "d", tmp_path / "missing", tmp_path / "dangling", b"/"]
    assert paths_exist(paths) == [os.path.exists(p) for p in paths] == [True, True, False, False, True]


def _scandir_walk(top: str, name: str) -> list:
    """The tree walk as it was written with os.scandir: the reference."""
    jobs, stack = [], [(top, name)]
    while stack:
        d, prefix = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for e in entries:
            if e.is_dir():
                if not e.is_symlink():
                    subdirs.append(e)
                continue
            try:
                st = e.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                jobs.append((e.path, f"{prefix}/{e.name}", st.st_size))
        stack.extend((e.path, f"{prefix}/{e.name}") for e in reversed(subdirs))
    return jobs


def test_list_dir_walks_a_tree_as_scandir_did(tmp_path):
    """The native listing gives the tree walk what os.scandir and a stat per
    entry gave: symlinks to files followed (the target's size), symlinks to
    directories not entered, fifos and dangling links left out, names in
    order (also past the first 64 entries and for names that are not
    UTF-8), and an OSError for a directory that cannot be listed."""
    from ingest._mapped import list_dir
    from ingest.repository import plan_tree_sized
    top = tmp_path / "t"
    (top / "a" / "b").mkdir(parents=True)
    (top / "z").mkdir()
    (top / "f1").write_bytes(b"x" * 3)
    (top / "a" / "f2").write_bytes(b"y" * 70)
    (top / "a" / "b" / "é").write_bytes(b"")
    (top / "with space").write_bytes(b"s")
    (top / ".hidden").write_bytes(b"hh")
    (top / "lnk").symlink_to(top / "a" / "f2")
    (top / "dirlnk").symlink_to(top / "a")
    (top / "dangling").symlink_to(top / "nowhere")
    os.mkfifo(top / "fifo")
    os.close(os.open(os.fsencode(top) + b"/bad\xffname", os.O_CREAT | os.O_WRONLY, 0o644))
    for i in range(150):
        (top / "z" / f"{i:03d}-{150 - i}").write_bytes(b"q" * i)

    files, dirs = list_dir(top)
    assert dirs == ["a", "z"]
    assert dict(files) == {".hidden": 2, "bad\udcffname": 0, "f1": 3, "lnk": 70, "with space": 1}
    assert [n for n, _ in files] == sorted(n for n, _ in files)
    zf, zd = list_dir(top / "z")
    assert zd == [] and zf == [(f"{i:03d}-{150 - i}", i) for i in range(150)]

    want = _scandir_walk(str(top), "t")
    assert plan_tree_sized([top]) == want
    assert plan_tree_sized([str(top) + "/"]) == want
    assert len(want) == 5 + 1 + 1 + 150

    with pytest.raises(FileNotFoundError):
        list_dir(top / "missing")
    with pytest.raises(NotADirectoryError):
        list_dir(top / "f1")


def test_write_files_writes_parts_in_order_truncates_and_reports_errno(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    b.write_bytes(b"an older and longer content")
    data = np.arange(100_000, dtype=np.uint32).tobytes()
    errs = _mapped.write_files(
        [a, b, tmp_path / "missing" / "x", c],
        [[b"head ", memoryview(data)[8:], bytearray(b" tail")], [b"new"], [b"lost"], []])
    assert errs[0] == errs[1] == errs[3] == 0 and errs[2] == errno.ENOENT
    assert a.read_bytes() == b"head " + data[8:] + b" tail"
    assert b.read_bytes() == b"new" and c.read_bytes() == b""
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(a.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(ValueError):
        _mapped.write_files([a], [])
    with pytest.raises(TypeError):
        _mapped.write_files([a], [[object()]])
