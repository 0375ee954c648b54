"""A store in a local directory: the embedded default.

Every write goes to a temporary file in `<root>/%tmp`, is fsynced, then
renamed (or hard-linked, for if-absent) into place and the directory fsynced,
so a crash leaves either the old state or the whole new object, never a torn
one.  Blocking file I/O runs on the default thread pool.

Key components map to path components with '%' escaped as '%25', and an
object's file name ends in a lone '%'.  Directory names never do, so keys
`a` and `a/b` can both exist, as on S3 (a ref for a model and one for a file
inside it), and the temporary directory `%tmp` can never be a key.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from .._mapped import paths_exist, place_files, read_files, remove_files, write_new_files
from ..errors import StoreError
from .base import ObjectInfo, ObjectNotFound, PutStream, Store, as_parts, check_key

TMP = "%tmp"
RANGE_FILES = 64      # objects kept open for ranged reads (a restore's packs)
SYNC_FS_FROM = 4      # a batch of at least this many objects is made durable with syncfs()
TMP_STALE_SECONDS = 24 * 3600   # a temporary file untouched this long is a crashed writer's
MAX_KNOWN_DIRS = 4096           # directories a store remembers having made
WHOLE_READS_FROM = 4            # whole objects of a get_many read in one native call


def _enc(part: str) -> str:
    return part.replace("%", "%25")


def _dec(name: str) -> str:
    return name.replace("%25", "%")


class LocalStore(Store):
    """`batch_sync`: make a batch of small objects (`put_many`) durable with
    two syncfs() calls on the store's file system instead of an fsync per
    object and per directory (Linux; elsewhere, or False, fsyncs).  The
    guarantee is the same; the cost is that syncfs() also writes back other
    dirty data of that file system, so turn it off where the store shares a
    file system with heavy unrelated writers."""

    accepts_parts = True
    local = True
    def __init__(self, root: str | os.PathLike, *, create: bool = True,
                 batch_sync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.batch_sync = batch_sync and _syncfs is not None
        self.url = self.root.as_uri()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {self.root} exists and is not a directory")
        if not self.root.exists():
            if not create:
                raise StoreError(f"no store at {self.root}")
            try:
                self.root.mkdir(parents=True)
            except OSError as e:
                raise StoreError(f"cannot create store directory {self.root}: {e.strerror}") from None
        try:
            (self.root / TMP).mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot write to store directory {self.root}: {e.strerror}") from None
        # Ranged reads (of packs) go through open files kept here, LRU:
        # opening the pack again for each span was a fifth of a small-file
        # restore's thread time (py-spy, package corpus).  key -> [fd, users,
        # evicted, (dev, inode)]; an evicted file is closed when its last
        # reader is done.  Each read stats the path first, so an object
        # replaced or deleted by another process is never read stale.
        self._open: OrderedDict[str, list] = OrderedDict()
        self._open_lock = threading.Lock()
        self._swept = False
        # Directories this store made or found (bounded): a mkdir per object
        # was a syscall and a caught FileExistsError each.
        self._dirs: set[str] = set()
        self._root = str(self.root)
        self._base = self._root.rstrip("/") + "/"     # what every object's path starts with

    def _path(self, key: str) -> Path:
        return Path(self._path_str(key))

    def _path_str(self, key: str) -> str:
        """The file of an object, as a string: the batch calls need no Path
        (joinpath was ~13 us a key, os.path.join of its components 7.8).
        check_key leaves no empty, '.' or '..' component and no leading
        '/', so each component escaped and joined is the key escaped."""
        return self._base + _enc(check_key(key)) + "%"

    # -- blocking implementations, run in threads ---------------------------
    def _put(self, key: str, data, if_absent: bool) -> bool:
        return self._put_many([(key, data)], if_absent)[0]

    def sweep_tmp(self, older_than: float = TMP_STALE_SECONDS) -> int:
        """Delete the temporary files in `%tmp` not written for `older_than`
        seconds: what a writer that crashed mid-object left (a pack's
        temporary file can be 64 MiB).  A live writer touches its file at
        every part; one stalled for that long fails its commit with a clear
        error, and nothing stored is ever touched.  The first write of each
        LocalStore sweeps once.  Returns how many files went."""
        cutoff = time.time() - older_than
        gone = 0
        try:
            entries = os.scandir(self.root / TMP)
        except FileNotFoundError:
            return 0
        with entries:
            for e in entries:
                if not e.name.endswith(".tmp"):
                    continue
                try:
                    if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(e.path)
                        gone += 1
                except OSError:
                    pass            # gone meanwhile, or not ours to delete
        return gone

    def _new_tmp(self) -> tuple[Path, int]:
        """A new temporary file for an object being written, and its fd."""
        self._sweep_once()
        tmp = self.root / TMP / f"{uuid.uuid4().hex}.tmp"
        return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def _place(self, tmp: Path, path: Path, key: str, if_absent: bool) -> bool:
        """Put a synced temporary file in place: a hard link for if-absent
        (it fails if the object is present: atomic), else a rename."""
        if if_absent:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        os.replace(tmp, path)
        self._forget(key)               # a kept open file holds the old bytes
        return True

    def _place_in_new_dir(self, tmp, path, key: str, if_absent: bool) -> bool:
        """_place, once the final directory, removed (by someone else) since
        it was made, is made again."""
        d = os.path.dirname(os.fspath(path))
        self._dirs.discard(d)
        self._mkdirs(d)
        return self._place(tmp, path, key, if_absent)

    def _put_many(self, items, if_absent: bool) -> list[bool]:
        """put() of each item, in phases over the whole batch: write every
        temporary file, then settle them all at once (_settle).  One thread
        hop and one directory sync for a batch: 256 small objects took ~60
        ms here, 0.23 ms each."""
        if (self.batch_sync and len(items) >= SYNC_FS_FROM
                and all(type(data) is bytes for _, data in items)):
            return self._put_many_native(items, if_absent)
        results = [False] * len(items)
        staged: list[list] = []            # [key, temporary path, final path, fd]
        where: list[int] = []              # item no. of each staged object
        key = ""
        try:
            for i, (key, data) in enumerate(items):
                path = self._path(key)
                if if_absent and path.exists():
                    continue
                self._mkdirs(path.parent)
                tmp, fd = self._new_tmp()
                staged.append([key, tmp, path, fd])
                where.append(i)
                _write_fd(fd, data)
        except OSError as e:
            self._discard(staged)
            raise StoreError(f"cannot write {key}: {e.strerror or e}") from None
        try:
            for i, placed in zip(where, self._settle(staged, if_absent)):
                results[i] = placed
            return results
        finally:
            self._discard(staged)

    def _put_many_native(self, items: list[tuple[str, bytes]], if_absent: bool) -> list[bool]:
        """_put_many of a batch of bytes objects made durable with syncfs(),
        each step for the whole batch in one native call (_mapped): stat the
        if-absent objects, create and write the temporary files, syncfs,
        link or rename them into place, syncfs, remove what is left.  In
        Python, each object's five syscalls gave up the GIL and waited to
        get it back: a package version's 64 refs took ~14 ms in a batch
        beside the scans, ~5.5 alone.  An if-absent object that appears
        after its stat is found by its link failing (EEXIST)."""
        key = ""
        out = [False] * len(items)
        try:
            paths = [self._path_str(key) for key, _ in items]
            todo = ([i for i, there in enumerate(paths_exist(paths)) if not there] if if_absent
                    else list(range(len(items))))
            for i in todo:
                key = items[i][0]
                self._mkdirs(os.path.dirname(paths[i]))
        except OSError as e:
            raise StoreError(f"cannot write {key}: {e.strerror or e}") from None
        if not todo:
            return out
        items = [items[i] for i in todo]
        finals = [paths[i] for i in todo]
        self._sweep_once()
        prefix = os.path.join(self._root, TMP, uuid.uuid4().hex)
        tmps = [f"{prefix}-{i}.tmp" for i in range(len(items))]
        left = tmps                                    # temporary names that may exist
        try:
            for (key, _), err in zip(items, write_new_files(tmps, [d for _, d in items])):
                if err:
                    raise StoreError(f"cannot write {key}: {os.strerror(err)}")
            key = f"a batch of {len(items)} objects"
            self._syncfs()
            for i, err in enumerate(place_files(tmps, finals, if_absent)):
                key = items[i][0]
                if err == errno.ENOENT:
                    out[todo[i]] = self._place_in_new_dir(tmps[i], finals[i], key, if_absent)
                elif err == errno.EEXIST and if_absent:
                    out[todo[i]] = False
                elif err:
                    raise StoreError(f"cannot write {key}: {os.strerror(err)}")
                else:
                    out[todo[i]] = True
                    if not if_absent:
                        self._forget(key)              # a kept open file holds the old bytes
            if not if_absent:
                left = []                              # every one renamed
            key = f"a batch of {len(items)} objects"
            self._syncfs()
            return out
        except OSError as e:
            raise StoreError(f"cannot write {key}: {e.strerror or e}") from None
        finally:
            if left:
                remove_files(left)

    def _sweep_once(self) -> None:
        if not self._swept:
            self._swept = True
            try:
                self.sweep_tmp()
            except OSError:
                pass                    # a sweep that cannot run must not fail the write

    def _mkdirs(self, d: str | Path) -> None:
        d = os.fspath(d)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            if len(self._dirs) >= MAX_KNOWN_DIRS:
                self._dirs.clear()
            self._dirs.add(d)

    def _settle(self, staged: list[list], if_absent: bool) -> list[bool]:
        """Make written temporary files ([key, temporary path, final path,
        fd], fd set to None once closed) durable, put each in place, then
        make the new entries durable; whether each was placed.  With
        `batch_sync`, a batch of SYNC_FS_FROM or more takes one syncfs() per
        sync (2,318 manifests and 2,318 refs in batches of 64: 1.2-1.3 s ->
        0.38-0.41 s, fresh store, this VM's ext4; every fsync waits for its
        own cache flush); otherwise an fsync per file and per directory."""
        key = ""
        try:
            whole_fs = self.batch_sync and len(staged) >= SYNC_FS_FROM
            if whole_fs:
                key = f"a batch of {len(staged)} objects"
                self._syncfs()
            else:
                for st in staged:
                    key = st[0]
                    os.fsync(st[3])
            placed, dirs = [], set()
            for st in staged:
                key, tmp, path, fd = st
                os.close(fd)
                st[3] = None
                try:
                    placed.append(self._place(tmp, path, key, if_absent))
                except FileNotFoundError:
                    placed.append(self._place_in_new_dir(tmp, path, key, if_absent))
                if not if_absent:
                    st[1] = None                # renamed: no temporary name left
                dirs.add(path.parent)
            if whole_fs:
                key = f"a batch of {len(staged)} objects"
                self._syncfs()
            else:
                for d in dirs:
                    _fsync_dir(d)
            return placed
        except OSError as e:
            raise StoreError(f"cannot write {key}: {e.strerror or e}") from None

    @staticmethod
    def _discard(staged: list[list]) -> None:
        """Close what is still open and remove the temporary names (linked,
        or never placed; gone already if renamed)."""
        for st in staged:
            if st[3] is not None:
                os.close(st[3])
                st[3] = None
            if st[1] is None:
                continue
            try:
                os.unlink(st[1])
            except OSError:
                pass

    def _syncfs(self) -> None:
        """Everything written to the store's file system so far is durable."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def _get(self, key: str, start: int, end: int | None) -> bytes:
        if end is not None:
            return self._get_range(key, start, end)
        path = self._path(key)
        try:
            # os-level calls, not open(): a tree's re-ingest reads a ref per
            # file, and most of a missing one's cost was building the file
            # object and its exception.  An object is never written in place
            # (it is renamed or linked there whole), so its size is final.
            fd = os.open(path, os.O_RDONLY)
            try:
                return _pread_all(fd, start, os.fstat(fd).st_size - start)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise ObjectNotFound(f"object not found: {key}") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"object not found: {key}") from None
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e.strerror or e}") from None

    @property
    def get_range_blocking(self):
        # Not for a subclass that changes get() (fault injection in tests).
        return self._get_range if type(self).get is LocalStore.get else None

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object through a kept open file; fewer
        at the object's end."""
        entry = self._acquire(key)
        try:
            return _pread_all(entry[0], start, end - start)
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e.strerror or e}") from None
        finally:
            self._release(entry)

    def _acquire(self, key: str) -> list:
        path = self._path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._forget(key)
            raise ObjectNotFound(f"object not found: {key}") from None
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e.strerror or e}") from None
        if _isdir(st):
            raise ObjectNotFound(f"object not found: {key}")
        ident = (st.st_dev, st.st_ino)
        with self._open_lock:
            entry = self._open.get(key)
            if entry is not None and entry[3] == ident:
                self._open.move_to_end(key)
                entry[1] += 1
                return entry
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"object not found: {key}") from None
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e.strerror or e}") from None
        fst = os.fstat(fd)
        ident = (fst.st_dev, fst.st_ino)
        with self._open_lock:
            entry = self._open.get(key)
            if entry is not None and entry[3] == ident:    # another reader opened it meanwhile
                os.close(fd)
                entry[1] += 1
                return entry
            if entry is not None:                         # replaced since it was opened
                self._evict(self._open.pop(key))
            entry = self._open[key] = [fd, 1, False, ident]
            while len(self._open) > RANGE_FILES:
                self._evict(self._open.popitem(last=False)[1])
            return entry

    def _release(self, entry: list) -> None:
        with self._open_lock:
            entry[1] -= 1
            if entry[2] and not entry[1]:
                os.close(entry[0])

    def _evict(self, entry: list) -> None:       # with _open_lock held
        entry[2] = True
        if not entry[1]:
            os.close(entry[0])

    def _forget(self, key: str) -> None:
        with self._open_lock:
            entry = self._open.pop(key, None)
            if entry is not None:
                self._evict(entry)

    def _get_ranges(self, ranges: list[tuple[str, int, int | None]]) -> list[bytes | None]:
        out: list = [None] * len(ranges)
        whole = [i for i, (_, start, end) in enumerate(ranges) if start == 0 and end is None]
        if len(whole) < WHOLE_READS_FROM:
            whole = []
        else:
            # Whole objects (a batch's refs) in one native call: read one by
            # one, each syscall gave the GIL up and waited to get it back.
            got = read_files([self._path_str(ranges[i][0]) for i in whole])
            for i, data in zip(whole, got):
                key = ranges[i][0]
                if isinstance(data, bytes):
                    out[i] = data
                elif data is False:         # not as it was stat'ed: the usual way
                    out[i] = self._get_or_none(key, 0, None)
                elif not isinstance(data, (FileNotFoundError, IsADirectoryError)):
                    raise StoreError(f"cannot read {key}: {data.strerror or data}")
        done = set(whole)
        for i, (key, start, end) in enumerate(ranges):
            if i not in done:
                out[i] = self._get_or_none(key, start, end)
        return out

    def _get_or_none(self, key: str, start: int, end: int | None) -> bytes | None:
        try:
            return self._get(key, start, end)
        except ObjectNotFound:
            return None

    def _head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size) if not _isdir(st) else None

    def _list(self, prefix: str) -> list[ObjectInfo]:
        # Walk only the directory that holds the prefix.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root.joinpath(*map(_enc, base.split("/"))) if base else self.root
        out = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else "/".join(map(_dec, rel.split(os.sep))) + "/"
            if rel == "":
                dirnames[:] = [d for d in dirnames if d != TMP]
            for name in filenames:
                if not name.endswith("%"):
                    continue
                key = rel + _dec(name[:-1])
                if key.startswith(prefix):
                    try:
                        out.append(ObjectInfo(key, os.stat(os.path.join(dirpath, name)).st_size))
                    except FileNotFoundError:
                        pass
        out.sort(key=lambda o: o.key)
        return out

    def _delete(self, key: str) -> None:
        self._forget(key)
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot delete {key}: {e.strerror or e}") from None

    # -- async interface -----------------------------------------------------
    async def put(self, key: str, data, *, if_absent: bool = False) -> bool:
        return await asyncio.to_thread(self._put, key, data, if_absent)

    def open_put(self) -> PutStream:
        if type(self).put is not LocalStore.put:     # a subclass that changes put() keeps it
            return super().open_put()
        return _LocalPut(self)

    async def put_many(self, items, *, if_absent: bool = False) -> list[bool]:
        if type(self).put is not LocalStore.put:     # a subclass that changes put() keeps it
            return await super().put_many(items, if_absent=if_absent)
        return await asyncio.to_thread(self._put_many, list(items), if_absent)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return await asyncio.to_thread(self._get, key, start, end)

    async def get_ranges(self, ranges) -> list[bytes | None]:
        if type(self).get is not LocalStore.get:     # a subclass that changes get() keeps it
            return await super().get_ranges(ranges)
        return await asyncio.to_thread(self._get_ranges, list(ranges))

    async def head(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self._head, key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(self._list, prefix):
            yield info

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    async def close(self) -> None:
        with self._open_lock:
            entries, self._open = list(self._open.values()), OrderedDict()
            for entry in entries:
                self._evict(entry)
        await super().close()


class _LocalPut(PutStream):
    """Parts go to a temporary file as they come (in order, one thread hop
    per write(); the session writes a filling pack 8 MiB at a time); commit
    fsyncs it and links or renames it into place, as put() does.  A pack's
    frames are then on their way to the disk while the pack fills, and
    their memory is free for the next frames: copying new chunks into fresh
    memory (first touch: ~0.7 ms per MiB on this VM) and writing the whole
    64 MiB pack at the end were a fifth of a novel 64 MiB file's time."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._tmp: Path | None = None
        self._fd: int | None = None
        self._written = 0
        self._order = asyncio.Lock()

    def _write(self, parts: list) -> None:
        try:
            if self._fd is None:
                self._tmp, self._fd = self._store._new_tmp()
            _write_fd(self._fd, parts)
        except OSError as e:
            raise StoreError(f"cannot write a new object: {e.strerror or e}") from None
        n = sum(memoryview(p).nbytes for p in parts)
        if _sync_file_range is not None and n:
            # Start the disk on these bytes now (a hint: commit's fsync is
            # what makes them durable), so the fsync waits only for the
            # last part: a 64 MiB pack's fsync was ~30-40 ms at the end of
            # a new file's ingest, with the disk idle while it filled.
            _sync_file_range(self._fd, self._written, n, SYNC_FILE_RANGE_WRITE)
        self._written += n

    def _commit(self, key: str, if_absent: bool) -> bool:
        path = self._store._path(key)
        if self._fd is None:
            self._write([])
        st = [key, self._tmp, path, self._fd]
        try:
            try:
                self._store._mkdirs(path.parent)
            except OSError as e:
                raise StoreError(f"cannot write {key}: {e.strerror or e}") from None
            return self._store._settle([st], if_absent)[0]
        finally:
            self._store._discard([st])          # what _settle left: an fd, a temporary name
            self._tmp = self._fd = None
            self._written = 0

    def _drop(self) -> None:
        LocalStore._discard([[None, self._tmp, None, self._fd]])
        self._tmp = self._fd = None
        self._written = 0

    async def write(self, parts: list) -> None:
        async with self._order:
            await asyncio.to_thread(self._write, parts)

    async def commit(self, key: str, *, if_absent: bool = False) -> bool:
        check_key(key)
        async with self._order:
            return await asyncio.to_thread(self._commit, key, if_absent)

    async def abort(self) -> None:
        async with self._order:
            await asyncio.to_thread(self._drop)


def _libc(name: str, *argtypes):
    """A libc function (ctypes drops the GIL for the call), or None where
    there is none (not Linux)."""
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


_syncfs = _libc("syncfs", ctypes.c_int)                          # Linux, glibc or musl
_sync_file_range = _libc("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                         ctypes.c_uint)
SYNC_FILE_RANGE_WRITE = 2       # start writeback of the range's dirty pages; do not wait


def _pread_all(fd: int, start: int, want: int) -> bytes:
    """Up to `want` bytes of fd from `start`, fewer only at its end (pread
    may return less before it)."""
    parts: list[bytes] = []
    got = 0
    while got < want:
        more = os.pread(fd, want - got, start + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _write_fd(fd: int, data) -> None:
    """Write all of a put's data (one buffer or a list of parts) to fd."""
    for view in as_parts(data):
        while view:
            view = view[os.write(fd, view):]


def _isdir(st) -> bool:
    import stat
    return stat.S_ISDIR(st.st_mode)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
