"""The write path: bytes -> chunks -> ids -> dedup -> frames -> packs -> store.

One `WriteSession` is shared by any number of files ingested together, so new
chunks of many small files fill the same packs.  Per file, blocks are windows
of the file's mapping (a regular file: no copy, and no fresh memory to fault
in; the frames hash their copies again, since a mapped file can change) or
are read into reused buffers (streams); chunking, BLAKE3 and SHA-256 of a
block run in the thread pool without the GIL (block k+1 chunked while block k
is hashed); the whole block is looked up in the index at once; new chunks are
copied into the file's current frame, and full frames are compressed in the
pool and appended, in file order, to the session's open pack, which goes to
the store 8 MiB at a time as it fills (Store.open_put) and is committed under
its id when full.

Write order (the crash-safety rule): a pack is stored, then its index shard;
a file's manifest only after every pack it uses is stored; its ref last.  A
crash leaves at most unreferenced packs, never a ref to something missing.

Memory is bounded by configuration: per file in flight three block buffers
(or four mapped windows, page cache) plus `max_frames_in_flight` frames; per
session the open pack (on the local store only its last unwritten 8 MiB;
elsewhere all of it) plus `max_packs_in_flight` packs being uploaded.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from array import array
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from mmap import ALLOCATIONGRANULARITY

import numpy as np

from . import chunking, hashing
from ._mapped import Window, read_files
from .compression import Compressor
from .index import LOCATION, encode_shard
from .manifest import Manifest
from .manifest import key as manifest_key
from .memory import uninitialized
from .pack import MAX_FRAME_CHUNKS, PackBuilder, frame_header
from .errors import IngestError
from .refs import MAX_INLINE_MANIFEST
from .refs import PREFIX as REF_PREFIX
from .refs import Ref, names_many
from .safetensors import DtypeMap
from .safetensors import parse_header as parse_safetensors_header
from .refs import key as ref_key

BLOCK_SIZE = 8 << 20
READ_AHEAD = 2            # blocks read ahead of the one being scanned
MAX_POOLED_BUFFERS = 12   # idle block buffers kept by a repository (~100 MiB)
PACK_WRITE = 8 << 20      # a filling pack's frames are handed to the store this much at a time
PACK_PREFIX = "packs/"
# Raw bytes of a frame that small files share.  Reading one small file
# decodes its whole frame: on S3 a 9 KB file would fetch ~330 KB of a 1 MiB
# frame.  256 KiB stores 0.13% more than 1 MiB frames on the package corpus
# (30.39 against 30.35 MB of packs; 128 KiB: 30.81), no slower to ingest.
SHARED_FRAME = 256 << 10

ReadInto = Callable[[memoryview], Awaitable[int]]


def pack_key(pack_id: bytes) -> str:
    return PACK_PREFIX + pack_id.hex()


@dataclass
class IngestResult:
    """What one ingested file cost and saved."""
    ref: str | None
    file_id: str
    size: int
    sha256: str | None    # None when the session was told not to compute it
    chunks: int
    new_chunks: int
    new_bytes: int        # raw bytes of chunks not stored before
    dedup_bytes: int      # size - new_bytes
    stored_bytes: int     # bytes this file added to packs (frames, compressed; of a shared
                          # frame, its part by raw bytes)

    def to_dict(self) -> dict:
        return asdict(self)


class _Pack:
    """The pack being filled, then uploaded."""

    def __init__(self, store) -> None:
        self.builder = PackBuilder()
        # Frames are handed to `out` PACK_WRITE bytes at a time as they are
        # added (the local store writes them to the pack's temporary file),
        # so their memory is reused by later frames.
        self.out = store.open_put()
        self.writes: list[asyncio.Future] = []
        self.pack_id: bytes | None = None
        self.stored: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ids: list[np.ndarray] = []       # chunk ids, per frame
        self.locs: list[np.ndarray] = []      # LOCATION rows without pack id, per frame
        self.sealing = False


COPY_NOGIL = 4 << 20      # _Frame.copy_in: shorter runs are copied with the GIL held


class _Frame:
    """New chunks of one file, compressed together."""
    __slots__ = ("data", "fill", "ids", "lengths", "pack", "offset", "length", "raw_len",
                 "codec", "placed", "element_size", "source", "runs")

    def __init__(self, size: int) -> None:
        self.element_size: int | None = None       # from the file format, if it says
        # The file its bytes were copied from, when that is a mapping whose
        # bytes may change after they were hashed (None: a private buffer).
        self.source: str | None = None
        # Allocated once at full size and filled in place: growing it chunk
        # by chunk cost 0.19 s of reallocation per 256 MiB.  Not zero-filled
        # (bytearray's memset of every frame was the loop thread's largest
        # cost on novel data): every byte up to `fill` is written before use.
        self.data = uninitialized(size)
        self.fill = 0
        # Copies into `data` not made yet: (source bytes, offset in data,
        # offset in source, length).  A frame filled from a mapping is copied
        # into in the pool, just before its bytes are hashed again and
        # compressed (copy_in), not on the event loop.
        self.runs: list | None = None
        self.ids: list[np.ndarray] = []
        self.lengths: list[int] = []
        self.pack: _Pack | None = None
        # Done once the frame is in a pack.  Exists from the start: another
        # file may dedup against this frame before it is even submitted.
        self.placed: asyncio.Future = asyncio.get_running_loop().create_future()

    def add(self, ids: np.ndarray, length: int) -> int:
        """Count in a chunk of `length` bytes (its id row `ids`) at the end
        of the frame; its offset in the frame.  The caller copies its bytes."""
        offset = self.fill
        self.fill += length
        self.ids.append(ids)
        self.lengths.append(length)
        return offset

    def copy_in(self) -> None:
        """Make the copies still owed to `data`, and let go of their sources.
        Runs below COPY_NOGIL (all of a frame's, at the default frame size)
        are copied with the GIL held, ~0.2 ms a MiB: numpy's copy gives it
        up, and beside a thread running Python taking it back was a wait of
        up to the switch interval per run.  Longer ones go through numpy
        without the GIL."""
        runs, self.runs = self.runs, None
        if runs:
            for src, at, s, n in runs:
                if n < COPY_NOGIL:
                    self.data[at:at + n] = memoryview(src)[s:s + n]
                else:
                    np.copyto(np.frombuffer(self.data, np.uint8)[at:at + n], src[s:s + n])

    def grow(self, size: int) -> None:
        self.copy_in()
        data = uninitialized(max(size, 2 * self.data.nbytes))
        data[:self.fill] = self.data[:self.fill]
        self.data = data


class _Deferred:
    """The new chunks of a file, whose frames get their place in a pack
    later: per chunk its row in the file, its frame and its offset in the
    frame, filled into the file's LOCATION rows at commit.  Compact arrays
    and one frame reference per run: a tuple per chunk was ~120 bytes of a
    large file's bookkeeping, kept until its commit."""
    __slots__ = ("rows", "offsets", "which", "frames")

    def __init__(self) -> None:
        self.rows = array("q")                # row of the chunk in the file
        self.offsets = array("I")             # its offset in its frame (< 16 MiB)
        self.which = array("I")               # its frame, as an index into frames
        self.frames: list[_Frame] = []        # a frame per run of chunks in one frame

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: int, frame: "_Frame", offset: int) -> None:
        if not self.frames or self.frames[-1] is not frame:
            self.frames.append(frame)
        self.rows.append(row)
        self.offsets.append(offset)
        self.which.append(len(self.frames) - 1)


# The deferred chunks of a file with none: shared, and never added to.
_NOTHING_NEW = _Deferred()


@dataclass
class _Written:
    """A file whose bytes are all chunked and framed, not yet committed."""
    size: int
    sha256: bytes | None
    ids: np.ndarray
    locs: np.ndarray           # LOCATION rows; rows of new chunks are filled at commit
    deferred: "_Deferred"      # new chunks' rows, frames and offsets, filled in at commit
    frames: list               # frames this file created
    new_chunks: int
    new_bytes: int
    # Raw bytes this file put in each of `frames`, when it shared them with
    # other files (None: the frames are the file's own).
    shares: list[int] | None = None
    # The file id, when it was computed with its batch's (write_scanned_many).
    fid: bytes | None = None

    def stored_bytes(self) -> int:
        """Stored bytes of the frames this file created; a shared frame's by
        the file's part of its raw bytes."""
        if self.shares is None:
            return sum(fr.length for fr in self.frames)
        return sum(fr.length * b // max(fr.raw_len, 1) for fr, b in zip(self.frames, self.shares))


class _FileState:
    """One file's progress through the data phase."""

    def __init__(self, size_hint: int | None) -> None:
        self.size_hint = size_hint
        # The frame being filled; made when the first new chunk needs it, so
        # a file that is all duplicate never allocates one.
        self.frame: _Frame | None = None
        self.frames: list[_Frame] = []             # frames this file created
        self.placing: deque[asyncio.Future] = deque()
        # When set, full frames are collected here for _place_many instead of
        # being placed one by one (a batch of small files).
        self.collect: list[_Frame] | None = None
        self.deferred = _Deferred()
        self.ids: list[np.ndarray] = []
        self.locs: list[np.ndarray] = []
        self.nchunks = self.new_chunks = self.new_bytes = 0
        self.base = 0                              # file offset of the next block
        self.dtypes: DtypeMap | None = None
        self.source: str | None = None             # see _Frame.source
        self.max_chunk: int | None = None          # of the parameters it is cut with

    def written(self, sha256: bytes | None) -> _Written:
        ids = np.concatenate(self.ids) if self.ids else np.empty((0, 32), np.uint8)
        locs = np.concatenate(self.locs) if self.locs else np.empty(0, LOCATION)
        size = int(locs["length"].sum(dtype=np.uint64))
        return _Written(size, sha256, ids, locs, self.deferred, self.frames,
                        self.new_chunks, self.new_bytes)


def scan_small_file(path, limit: int, params, sha256: bool = True, coarse=None
                    ) -> tuple[bytes, np.ndarray, np.ndarray, bytes | None] | None:
    """Read, chunk and hash a whole file of at most `limit` bytes in one go
    (in a pool thread); None if it turns out larger, or grew while read.
    SHA-256 only if `sha256`; `coarse`: the store's parameters for
    incompressible files (chunking.params_for).  The OSError of a file
    that cannot be read is raised."""
    (scan,) = scan_small_files([path], limit, params, sha256, coarse)
    if isinstance(scan, OSError):
        raise scan
    return scan


def scan_small_files(paths, limit: int, params, sha256: bool = True, coarse=None) -> list:
    """scan_small_file of each path in one pool task (one hop for a batch of
    a tree's small files instead of one each): per path its scan, None if it
    is larger than `limit` (or grew while read), or the OSError that opening
    or reading it raised.  The files are read in one native call
    (_mapped.read_files), not a few syscalls each that each gave up the GIL
    and waited to get it back."""
    out: list = []
    together = []            # files cut with `params` whatever their bytes: chunked and hashed at once
    for data in read_files(paths, limit):
        if data is False:
            out.append(None)
        elif isinstance(data, OSError):
            out.append(data)
        elif coarse is not None and len(data) >= chunking.UNIFORM_MIN_FILE:
            ends = chunking.chunk_ends(data, chunking.params_for(data, params, coarse))
            out.append((data, ends, hashing.chunk_ids(data, ends),
                        hashlib.sha256(data).digest() if sha256 else None))
        else:
            together.append(len(out))
            out.append(data)
    if together:
        # One native call each for the chunking and the hashing of them all
        # (per file, the two calls and their arrays were ~7 us of Python).
        datas = [out[i] for i in together]
        ends, counts = chunking.chunk_ends_many(datas, params)
        ids = hashing.chunk_ids_many(datas, ends, counts)
        pos = 0
        for i, data, n in zip(together, datas, counts.tolist()):
            out[i] = (data, ends[pos:pos + n], ids[pos:pos + n],
                      hashlib.sha256(data).digest() if sha256 else None)
            pos += n
    return out


class WriteSession:
    """`sha256=False`: do not compute files' SHA-256 (results, manifests and
    refs then have none).  A hub that already holds the client's LFS oid, or
    names content only by file id, saves ~0.55 CPU s per GB, a quarter to a
    third of the ingest's CPU."""

    def __init__(self, repo, *, max_frames_in_flight: int | None = None,
                 max_packs_in_flight: int | None = None, sha256: bool = True) -> None:
        self.repo = repo
        self.sha256 = sha256
        cfg = repo.config
        self.params = cfg.chunking
        self.coarse = cfg.coarse_chunking          # for incompressible files
        # Room kept before a block for the unfinished chunk carried over.
        self.reserve = max(self.params.max_size, self.coarse.max_size if self.coarse else 0)
        self.frame_size = cfg.frame_size
        self.pack_size = cfg.pack_size
        self.level = repo.zstd_level
        self.block_size = max(BLOCK_SIZE, 4 * self.reserve)
        self.max_frames = max_frames_in_flight or 2 * (os.cpu_count() or 2)
        if max_packs_in_flight is None:
            # Remote stores need more requests in flight to stay busy
            # (bench/s3_throughput.py, 512 MiB into SeaweedFS: 1.31x the raw
            # put time with 2 packs in flight, 1.15x with 4); a local disk does
            # not, and each pack in flight is up to 2 x 64 MiB of memory.
            max_packs_in_flight = 2 if repo.store.local else 4
        self.max_packs_in_flight = max_packs_in_flight
        self._pack_slots = asyncio.Semaphore(max_packs_in_flight)
        self._pack: _Pack | None = None
        self._uploads: set[asyncio.Task] = set()
        self._pending: dict[bytes, tuple[_Frame, int, int]] = {}   # new this session
        self._failed: BaseException | None = None
        self._meta = _MetaWriter(repo.store, repo.stored_manifests)
        # The index loads while the first file is opened, read, chunked and
        # hashed; its first lookup waits for it (_index_ready).
        self._index_load: asyncio.Future | None = None
        if not repo.index_loaded:
            try:
                self._index_load = repo.background(repo.index_ready())
                self._index_load.add_done_callback(_consume)
            except RuntimeError:            # made outside a running loop: loaded when needed
                pass

    async def _index_ready(self) -> None:
        """Before the first index lookup: the load started with the session,
        or (if it failed, or none was started) a load now, whose error is
        the caller's."""
        load, self._index_load = self._index_load, None
        if load is not None:
            await load
        elif not self.repo.index_loaded:
            await self.repo.index_ready()

    # -- CPU work, in the pool ------------------------------------------------
    def _compress(self, frame: _Frame) -> tuple[int, list, bytes]:
        """(codec, stored bytes, frame header) of a frame, in a pool thread."""
        frame.copy_in()
        data = memoryview(frame.data)[:frame.fill]
        if frame.source is not None:
            # Copied from a mapping of a file that someone may change (or
            # shrink: its pages then read as zeros) between the hashing and
            # the copy: the ids are checked against the copy itself, or the
            # index would name bytes that are not what is stored.
            ends = np.cumsum(np.array(frame.lengths, dtype=np.uint64))
            if not np.array_equal(hashing.chunk_ids(data, ends), np.concatenate(frame.ids)):
                raise IngestError(f"{frame.source} changed while it was read")
        codec, stored = Compressor.for_thread(self.level).compress(data, frame.element_size)
        return codec, stored, frame_header(codec, len(frame.lengths), frame.fill, stored)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.repo.executor, fn, *args)

    # -- packs -----------------------------------------------------------------
    async def _add_frame(self, frame: _Frame, codec: int, stored, head: bytes) -> None:
        if self._failed:
            raise self._failed
        if self._pack is None:
            self._pack = _Pack(self.repo.store)
        pack = self._pack
        ids = np.concatenate(frame.ids) if frame.ids else np.empty((0, 32), np.uint8)
        lengths = np.array(frame.lengths, dtype=np.uint64)
        _, offset = pack.builder.add_frame(codec, stored, frame.fill, ids, lengths, head)
        frame.pack, frame.offset, frame.codec = pack, offset, codec
        frame.length = pack.builder.size - offset
        frame.raw_len = frame.fill
        locs = np.zeros(len(lengths), dtype=LOCATION)
        locs["frame_offset"], locs["frame_length"] = offset, frame.length
        locs["frame_raw"], locs["codec"] = frame.raw_len, codec
        locs["offset"] = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else []
        locs["length"] = lengths
        pack.ids.append(ids)
        pack.locs.append(locs)
        # The pack holds what it needs; a frame stays referenced until its
        # file commits, and its per-chunk lists were most of what a large
        # file's bookkeeping grew by.
        frame.data = frame.ids = frame.lengths = None
        if pack.builder.untaken >= PACK_WRITE:
            pack.writes.append(asyncio.ensure_future(pack.out.write(pack.builder.take())))
        if pack.builder.size >= self.pack_size:
            await self._seal()

    async def _seal(self) -> None:
        pack, self._pack = self._pack, None
        if pack is None or pack.sealing:
            return
        pack.sealing = True
        await self._pack_slots.acquire()     # backpressure: bounded packs in flight
        task = asyncio.create_task(self._store_pack(pack))
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)

    async def _store_pack(self, pack: _Pack) -> None:
        try:
            try:
                for w in pack.writes:
                    await w
                pack_id, tail = await self._run(pack.builder.seal)
                pack.pack_id = pack_id
                pack.builder = None
                ids = np.concatenate(pack.ids)
                locs = np.concatenate(pack.locs)
                locs["pack"] = np.frombuffer(pack_id, dtype="V32")[0]
                # The shard is encoded while the pack is made durable (an
                # fsync, 7-11 ms for a small pack here), and stored after it.
                encoded = asyncio.ensure_future(self._run(encode_shard, ids, locs))
                try:
                    await pack.out.write(tail)
                    await pack.out.commit(pack_key(pack_id), if_absent=True)
                except BaseException:
                    encoded.add_done_callback(_consume)
                    raise
            except BaseException:
                for w in pack.writes:
                    w.add_done_callback(_consume)
                await asyncio.shield(pack.out.abort())
                raise
            key, shard = await encoded
            await self.repo.store.put(key, shard, if_absent=True)
            self.repo.index.add(ids, locs)
            self.repo.index.shards.add(key)
            for cid in ids.view("V32").reshape(-1).tolist():
                self._pending.pop(cid, None)
            pack.stored.set_result(pack_id)
        except BaseException as e:
            self._failed = e
            _fail(pack.stored, e)
        finally:
            self._pack_slots.release()

    async def flush(self) -> None:
        """Seal the open pack and wait until every pack is stored."""
        await self._seal()
        while self._uploads:
            await asyncio.gather(*list(self._uploads), return_exceptions=True)
        if self._failed:
            raise self._failed

    # -- files -----------------------------------------------------------------
    async def _place(self, frame: _Frame, after: asyncio.Future | None = None) -> None:
        try:
            codec, stored, head = await self._run(self._compress, frame)
            if after is not None:
                # Into the pack after the file's previous frame, though
                # compressed beside it: a file's frames then lie back to back
                # in file order, and a restore reads them in 8 MiB spans, not
                # about one frame per request (model corpus: 242 reads -> 120).
                await asyncio.shield(after)
            await self._add_frame(frame, codec, stored, head)
        except BaseException as e:
            self._forget(frame)
            _fail(frame.placed, e)
            raise
        frame.placed.set_result(None)

    async def _place_many(self, frames: list[_Frame]) -> None:
        """Place frames compressed in one pool call: the frames of a batch
        of small files, one each, which were one pool hop apiece."""
        try:
            coded = await self._run(lambda: [self._compress(f) for f in frames])
            for frame, (codec, stored, head) in zip(frames, coded):
                await self._add_frame(frame, codec, stored, head)
                frame.placed.set_result(None)
        except BaseException as e:
            for frame in frames:
                if not frame.placed.done():
                    self._forget(frame)
                _fail(frame.placed, e)
            raise

    def _forget(self, frame: _Frame) -> None:
        """A frame that will not be stored: the files that already dedup
        against its chunks fail with it, later ones store them again."""
        pending = self._pending
        for cid in np.concatenate(frame.ids).view("V32").reshape(-1).tolist() if frame.ids else ():
            hit = pending.get(cid)
            if hit is not None and hit[0] is frame:
                del pending[cid]

    def _submit(self, frame: _Frame, after: asyncio.Future | None = None) -> asyncio.Future:
        # Placed by its own task as soon as it is compressed (and `after`,
        # the file's previous frame, is placed), so a file that dedups
        # against this frame never waits on this file's reader.
        return asyncio.ensure_future(self._place(frame, after))

    async def ingest(self, readinto: ReadInto, ref: str | None = None, *,
                     flush: bool = True, progress: Callable[[int], None] | None = None
                     ) -> IngestResult:
        """Ingest one stream of bytes and name it `ref` (if given)."""
        if ref is not None:
            ref_key(ref)                      # refuse a bad name before any work
        return await self.commit(await self.write(readinto, progress), ref, flush=flush)

    async def write(self, readinto: ReadInto,
                    progress: Callable[[int], None] | None = None,
                    size_hint: int | None = None) -> _Written:
        """The data phase: read, chunk, hash, dedup and frame every byte.

        A reader task fills a small pool of reused buffers ahead of the
        scanner (`_write_blocks` has the rest).  `size_hint` (a file's size)
        lets a small file use one buffer of its own size instead of full
        blocks."""
        return await self._write_blocks(_BufferedBlocks(self, readinto, size_hint), progress)

    async def write_file(self, fd: int, size: int, first: Window,
                         progress: Callable[[int], None] | None = None,
                         name: str = "the file") -> _Written:
        """write() of a regular file of `size` bytes through windows of its
        mapping, with no copy into buffers.  `first`: the window of its first
        block, mapped by the caller (who reads it the usual way if that
        fails).  A file that shrinks while read raises IngestError instead of
        SIGBUS; one that grows is ingested as of `size`, then IngestError."""
        src = _MappedBlocks(fd, size, first, self.block_size, self.reserve, name)
        w = await self._write_blocks(src, progress)
        src.check_size()
        return w

    async def _write_blocks(self, src: "_BufferedBlocks | _MappedBlocks",
                            progress: Callable[[int], None] | None) -> _Written:
        """Blocks are pipelined: while block k's chunk ids are hashed in the
        pool, block k+1 is chunked beside it, and SHA-256 of each block runs
        chained beside both, so one file keeps two cores busy."""
        p = None
        st = _FileState(src.size_hint)
        st.source = src.source
        scanned, eof = 0, False
        sha = hashlib.sha256() if self.sha256 else None
        sha_done: asyncio.Future | None = None
        # Chunked blocks whose ids are being hashed: (token, view, ends, ids, sha done).
        # At most `held` wait while the next is chunked (none when the
        # source has a single buffer: the reader would have none to fill).
        blocks: deque = deque()
        try:
            while not eof or blocks:
                if not eof:
                    token, view, fresh, eof = await src.next()
                    if sha is not None:
                        # SHA-256 of the new bytes, chained after the previous block's.
                        sha_done = asyncio.ensure_future(self._sha_after(sha_done, sha, fresh))
                    del fresh
                    if p is None:               # the first block
                        p = chunking.params_for(view, self.params, self.coarse)
                        st.max_chunk = p.max_size
                        if len(view):
                            st.dtypes = parse_safetensors_header(view)
                    ends, scanned = await self._run(chunking.find_ends, view, eof, scanned, p)
                    src.advance(view, int(ends[-1]) if len(ends) else 0)
                    ids = asyncio.ensure_future(self._run(hashing.chunk_ids, view, ends))
                    blocks.append((token, view, ends, ids, sha_done))
                    del view
                if eof or len(blocks) > src.held:
                    token, view, ends, ids, done = blocks.popleft()
                    tail = await self._absorb(st, view, ends, await ids)
                    if progress and tail:
                        progress(tail)
                    del view
                    if done is not None:
                        await done                # before the buffer is reused
                    src.release(token)
                    del token
            await self._drain(st)
        except BaseException:
            for _, _, _, ids, _ in blocks:
                ids.add_done_callback(_consume)
            if sha_done is not None and not sha_done.done():
                sha_done.add_done_callback(_consume)
            self._abandon(st)
            raise
        finally:
            blocks.clear()
            src.close()
        return st.written(sha.digest() if sha is not None else None)

    async def write_scanned(self, data, ends: np.ndarray, ids: np.ndarray,
                            sha256: bytes | None, looked=None, collect: list | None = None
                            ) -> _Written:
        """The data phase for a whole file already in memory and scanned
        (`scan_small_file`): one pool hop per small file instead of six.
        With `collect`, its frames are left there for the caller to place."""
        st = _FileState(len(data))
        st.collect = collect
        view = memoryview(data)
        st.dtypes = parse_safetensors_header(view)
        try:
            await self._absorb(st, view, ends, ids, looked)
            await self._drain(st)
        except BaseException:
            self._abandon(st)
            raise
        return st.written(sha256)

    async def write_scanned_many(self, scans: list) -> list[_Written]:
        """write_scanned of many small files, with one index lookup for all
        their chunks (a lookup costs ~35 us however few ids it gets).  The
        new chunks of files that are not safetensors share frames (up to
        SHARED_FRAME raw bytes each), compressed together: a frame per file
        was a pool hop, a codec choice and a pack footer row per file, and
        the per-file steps on the event loop were most of a tree of small
        files' time.  A safetensors file keeps frames of its own, coded by
        its dtypes."""
        if not scans:
            return []
        await self._index_ready()
        index = self.repo.index
        found, locs, stored, fids = _look_up(index, scans)
        version = index.version
        out, pos, first = [], 0, 0
        frames: list[_Frame] = []        # frames to place, in order
        shared: list = [None]            # the shared frame being filled
        left = sum(len(d) for d, _, _, _ in scans)
        try:
            for k, (data, ends, ids, sha) in enumerate(scans):
                if index.version != version:
                    # A pack was indexed (its chunks left _pending) while this
                    # batch waited: the rest of it is looked up again.
                    found, locs, stored, fids = _look_up(index, scans[k:])
                    version, pos, first = index.version, 0, k
                n = len(ends)
                looked = (found[pos:pos + n], locs[pos:pos + n], version)
                pos += n
                view = memoryview(data)
                if stored[k - first]:
                    # Every chunk stored before (a re-ingest): nothing to
                    # frame, whatever the file's format.
                    w = _Written(view.nbytes, sha, ids, looked[1], _NOTHING_NEW, [], 0, 0, [])
                elif parse_safetensors_header(view) is None:
                    w = self._frame_shared(view, ends, ids, sha, looked, shared, frames, left)
                else:
                    w = await self.write_scanned(data, ends, ids, sha, looked, collect=frames)
                w.fid = fids[k - first]
                out.append(w)
                left -= len(data)
                if len(frames) >= self.max_frames:     # bounded like one file's frames
                    # All but the shared frame still being filled (it may
                    # sit before a safetensors file's frames).
                    full = [f for f in frames if f is not shared[0]]
                    frames = [f for f in frames if f is shared[0]]
                    await self._place_many(full)
        except BaseException:
            # Other files may already dedup against these frames' chunks.
            for frame in frames:
                self._submit(frame).add_done_callback(_consume)
            raise
        if frames:
            await self._place_many(frames)
        return out

    def _frame_shared(self, view: memoryview, ends: np.ndarray, ids: np.ndarray,
                      sha256: bytes | None, looked, shared: list, frames: list,
                      left: int) -> _Written:
        """A whole small file's data phase, without awaiting: its new chunks
        go into the shared frame `shared[0]` (a new one in `frames` when it
        is full), and it is returned as written."""
        found, locs, _ = looked
        lengths = locs["length"]          # set by _look_up
        d = _Deferred()
        mine: list[_Frame] = []
        shares: list[int] = []
        new_chunks = new_bytes = 0
        missing = np.flatnonzero(~found)
        if len(missing):
            pending = self._pending
            cap = min(self.frame_size, SHARED_FRAME)
            starts = (ends[missing] - lengths[missing]).tolist()
            for i, cid, s, ln in zip(missing.tolist(), ids[missing].view("V32").reshape(-1).tolist(),
                                     starts, lengths[missing].tolist()):
                hit = pending.get(cid)
                if hit is None:
                    frame = shared[0]
                    if frame is None or self._frame_full(frame) or (frame.fill and frame.fill + ln > cap):
                        frame = shared[0] = _Frame(max(1, min(cap, self.frame_size, left)))
                        frames.append(frame)
                    if frame.fill + ln > frame.data.nbytes:
                        frame.grow(frame.fill + ln)
                    frame.data[frame.fill:frame.fill + ln] = view[s:s + ln]
                    hit = pending[cid] = (frame, frame.add(ids[i:i + 1], ln))
                    new_chunks += 1
                    new_bytes += ln
                    if not mine or mine[-1] is not frame:
                        mine.append(frame)
                        shares.append(0)
                    shares[-1] += ln
                d.add(i, hit[0], hit[1])
        return _Written(view.nbytes, sha256, ids, locs, d, mine, new_chunks, new_bytes, shares)

    async def _absorb(self, st: "_FileState", view: memoryview, ends: np.ndarray,
                      ids: np.ndarray, looked=None) -> int:
        """Dedup one scanned block and frame its new chunks; returns the
        bytes of complete chunks it held.  `looked`: (found, locations,
        index version) of its ids, from a lookup done for many files."""
        if not len(ends):
            return 0
        tail = int(ends[-1])
        starts = np.empty(len(ends), dtype=np.uint64)
        starts[0] = 0
        starts[1:] = ends[:-1]
        lengths = ends - starts
        index = self.repo.index
        if looked is None:
            await self._index_ready()
            found, locs = index.lookup(ids)
            version = index.version
        else:
            found, locs, version = looked
        locs["length"] = lengths
        missing = np.flatnonzero(~found)
        if len(missing):
            src = np.frombuffer(view, np.uint8)
            run: list | None = None          # [frame, offset in frame, offset in view, length]
            id_bytes = ids[missing].view("V32").reshape(-1).tolist()
            try:
                for i, cid, s, ln in zip(missing.tolist(), id_bytes, starts[missing].tolist(),
                                         lengths[missing].tolist()):
                    hit = self._pending.get(cid)
                    if hit is None and index.version != version:
                        # A pack was indexed (its chunks left _pending) while this
                        # block waited: look again, or they would be stored twice.
                        f1, l1 = index.lookup(ids[i:i + 1])
                        if f1[0]:
                            locs[i] = l1[0]
                            continue
                    if hit is None:
                        if st.frame is not None and st.frame.fill + ln > self.frame_size:
                            # Only with chunks over half a frame (coarse ones):
                            # smaller ones close it before it gets here.
                            _copy_run(run, src)
                            run = None
                            await self._submit_for(st)
                        if st.frame is None:
                            st.frame = self._new_frame(st)
                        frame = st.frame
                        if st.dtypes is not None and not frame.fill:
                            frame.element_size = st.dtypes.element_size(st.base + s)
                        if frame.fill + ln > frame.data.nbytes:     # the file grew past its size
                            _copy_run(run, src)
                            run = None
                            frame.grow(frame.fill + ln)
                        # Consecutive new chunks are copied as one run, later.
                        if (run is not None and run[0] is frame and run[2] + run[3] == s
                                and run[1] + run[3] == frame.fill):
                            run[3] += ln
                        else:
                            _copy_run(run, src)
                            run = [frame, frame.fill, s, ln]
                        hit = self._pending[cid] = (frame, frame.add(ids[i:i + 1], ln))
                        st.new_chunks += 1
                        st.new_bytes += ln
                        if self._frame_full(frame, st.max_chunk):
                            _copy_run(run, src)
                            run = None
                            await self._submit_for(st)
                    st.deferred.add(st.nchunks + i, hit[0], hit[1])
            finally:
                # Even on the way out: another file may already dedup
                # against these chunks, and _abandon still stores the frame.
                _copy_run(run, src)
        st.ids.append(ids)
        st.locs.append(locs)
        st.nchunks += len(ends)
        st.base += tail
        return tail

    def _frame_full(self, frame: _Frame, max_chunk: int | None = None) -> bool:
        """Close the frame now: one more chunk (of up to `max_chunk` bytes,
        the file's max chunk size) could take it past frame_size, or past
        the u16 chunk count of its header.  Chunks that can be over half a
        frame (coarse ones) keep it open past half: the next one closes it
        first if it does not fit (_absorb), so a frame is not one chunk
        each.  Shared frames check each chunk's size themselves."""
        max_chunk = min(max_chunk or self.params.max_size, self.frame_size // 2)
        return (frame.fill > self.frame_size - max_chunk
                or len(frame.lengths) == MAX_FRAME_CHUNKS)

    async def _submit_for(self, st: "_FileState") -> None:
        st.frames.append(st.frame)
        if st.collect is not None:
            st.collect.append(st.frame)
            st.frame = None
            return
        st.placing.append(self._submit(st.frame, st.frames[-2].placed if len(st.frames) > 1 else None))
        st.frame = None
        while st.placing and (st.placing[0].done() or len(st.placing) >= self.max_frames):
            await st.placing.popleft()

    async def _drain(self, st: "_FileState") -> None:
        if st.frame is not None and st.frame.lengths:
            await self._submit_for(st)
        while st.placing:
            await st.placing.popleft()

    def _abandon(self, st: "_FileState") -> None:
        """Failing half way: other files may already dedup against the open
        frame's chunks, so it is still stored (as garbage at worst)."""
        if st.frame is not None and st.frame.lengths:
            self._submit(st.frame).add_done_callback(_consume)
            st.frame = None
        for fut in st.placing:
            fut.add_done_callback(_consume)

    def _new_frame(self, st: "_FileState | None" = None) -> _Frame:
        # A frame never holds more than frame_size: one more chunk is added
        # only while it is below frame_size - max_size.  Sized to what is left
        # of a file of known size, so a tree of small files does not allocate
        # a full frame each (a file that grows past its size still works: the
        # frame grows).
        size = self.frame_size
        if st is not None and st.size_hint is not None:
            size = max(1, min(size, st.size_hint - st.base))
        frame = _Frame(size)
        if st is not None:
            frame.source = st.source
        return frame

    async def _sha_after(self, prev: asyncio.Future | None, sha, data: memoryview) -> None:
        if prev is not None:
            await prev
        await self._run(sha.update, data)

    async def commit(self, w: _Written, ref: str | None = None, *,
                     flush: bool = True, named: bytes | None = None,
                     keep: bool = False) -> IngestResult:
        """Wait until every pack the file uses is stored, then write its
        manifest and ref.  With `flush`, seal the open pack now instead of
        waiting for it to fill (a single upload wants its answer now; a tree
        of files shares packs and flushes once at the end).  `named`: the
        file id a tree being replaced gave this file's name; if it is this
        file's, its manifest is stored (the tree was written after it) and
        nothing is written.  `keep`: write neither manifest nor ref, and
        return the encoded manifest as the result's `manifest` attribute
        (a tree keeps it, docs/FORMAT.md 9.2)."""
        await self._stored(w.deferred.frames, flush)
        fid, build = self._identify(w)
        if fid == named:
            return _result(w, ref, fid)
        manifest = _keepable(build) if keep else None
        if manifest is None:
            await self._meta.write(fid, build, ref, w.size, w.sha256)
        return _result(w, ref, fid, manifest)

    async def commit_many(self, ws: list[_Written], refs: list[str | None],
                          named: list[bytes | None] | None = None,
                          keep: list[bool] | None = None
                          ) -> list[IngestResult | BaseException]:
        """commit() of many files at once (a batch of a tree's small files,
        which mostly share their frames and packs): each frame and pack is
        waited for once, and the manifests and refs go to the meta writer
        together.  Per file its result, or the error that failed it (a
        failing file does not fail the others)."""
        named = named or [None] * len(ws)
        keep = keep or [False] * len(ws)
        try:
            await self._stored([fr for w in ws for fr in w.deferred.frames], False)
        except Exception:
            # Some frame or pack failed: which files does it fail?
            return await asyncio.gather(*(self.commit(w, ref, flush=False, named=nm, keep=kp)
                                          for w, ref, nm, kp in zip(ws, refs, named, keep)),
                                        return_exceptions=True)
        out: list = [None] * len(ws)
        todo, items = [], []
        for k, (w, ref) in enumerate(zip(ws, refs)):
            try:
                fid, build = self._identify(w)
            except Exception as e:
                out[k] = e
                continue
            if fid == named[k]:
                out[k] = _result(w, ref, fid)
                continue
            manifest = _keepable(build) if keep[k] else None
            if manifest is not None:
                out[k] = _result(w, ref, fid, manifest)
                continue
            todo.append((k, fid))
            items.append((fid, build, ref, w.size, w.sha256))
        for (k, fid), fut in zip(todo, await self._meta.write_many(items)):
            e = fut.exception()
            out[k] = e if e is not None else _result(ws[k], refs[k], fid)
        return out

    async def _stored(self, frames, flush: bool) -> None:
        """Wait until `frames` are placed and their packs stored (sealing the
        open pack first if `flush` and they use it)."""
        placed = {id(fr): fr for fr in frames}
        for fr in placed.values():
            await asyncio.shield(fr.placed)
        packs = {id(fr.pack): fr.pack for fr in placed.values()}
        if flush and self._pack is not None and id(self._pack) in packs:
            await self._seal()
        for pk in packs.values():
            await asyncio.shield(pk.stored)

    @classmethod
    def _identify(cls, w: _Written) -> tuple[bytes, Callable[[], Manifest]]:
        """(file id, a function that gives its manifest) of a written file,
        for the meta writer, which calls it only if it writes the manifest.
        A file whose chunks were all stored before (a re-ingest) gets its id
        from its chunk rows, and its manifest is built only then: when its
        ref already names the file, never."""
        if not len(w.deferred):
            ids, locs = w.ids, w.locs
            fid = w.fid if w.fid is not None else hashing.file_id(ids, locs["length"])
            return fid, lambda: Manifest.from_locations(w.size, w.sha256, ids, locs)
        manifest = cls._locate(w)
        return (w.fid if w.fid is not None else manifest.file_id), lambda: manifest

    @staticmethod
    def _locate(w: _Written) -> Manifest:
        """The file's manifest, its new chunks' rows filled in from where
        their frames were placed."""
        d = w.deferred
        locs = w.locs
        if len(d):
            # Vectorized: one structured-row update per chunk was 5 us each
            # (py-spy: commit's loop, the top item after the frame copies).
            rows = np.array(d.rows, dtype=np.int64)
            of = np.array(d.which, dtype=np.int64)
            table = np.zeros(len(d.frames), dtype=LOCATION)
            for k, fr in enumerate(d.frames):
                table[k] = (fr.pack.pack_id, fr.offset, fr.length, fr.raw_len, fr.codec, 0, 0)
            for col in ("pack", "frame_offset", "frame_length", "frame_raw", "codec"):
                locs[col][rows] = table[col][of]
            locs["offset"][rows] = np.array(d.offsets, dtype=np.uint32)
        return Manifest.from_locations(w.size, w.sha256, w.ids, locs)


def _look_up(index, scans: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[bytes]]:
    """One index lookup for the chunks of many scanned files: (found,
    locations with their lengths filled in, per file whether all of its
    chunks are stored, and the file ids), each computed for the batch at
    once: per file they were ~5 us of numpy calls on the event loop, and
    1.45 us for each file id (0.23 in one native call)."""
    counts = np.fromiter((len(sc[1]) for sc in scans), np.int64, len(scans))
    ids = np.concatenate([sc[2] for sc in scans])
    found, locs = index.lookup(ids)
    if not len(found):
        return (found, locs, np.ones(len(scans), dtype=bool),
                hashing.file_ids_many(ids, np.zeros(0, np.uint64), counts))
    ends = np.concatenate([sc[1] for sc in scans]).astype(np.uint64)
    firsts = np.cumsum(counts) - counts           # each file's first chunk
    prev = np.empty_like(ends)
    prev[0] = 0
    prev[1:] = ends[:-1]
    prev[firsts[counts > 0]] = 0                  # a file's first chunk starts at 0
    locs["length"] = ends - prev
    # A file without chunks has all of them; reduceat needs in-range starts.
    stored = np.ones(len(scans), dtype=bool)
    some = counts > 0
    stored[some] = np.logical_and.reduceat(found, firsts[some])
    return found, locs, stored, hashing.file_ids_many(ids, locs["length"], counts)


def _keepable(build: Callable[[], Manifest]) -> bytes | None:
    """The encoded manifest, if a tree may keep it (small enough)."""
    data = build().encode()
    return data if len(data) <= MAX_INLINE_MANIFEST else None


def _result(w: _Written, ref: str | None, fid: bytes,
            manifest: bytes | None = None) -> IngestResult:
    """The file's result; `manifest`, the encoded manifest a tree is to
    keep (commit(keep=True)), rides along as an attribute, not a field:
    it is not part of what a result reports."""
    r = IngestResult(ref, fid.hex(), w.size, w.sha256 and w.sha256.hex(), len(w.locs),
                     w.new_chunks, w.new_bytes, w.size - w.new_bytes, w.stored_bytes())
    r.manifest = manifest
    return r


class _BufferedBlocks:
    """Blocks read into reused buffers: a reader task fills free buffers
    (after `reserve` bytes of room for the unfinished chunk carried over) and
    queues them, READ_AHEAD ahead of the scanner.  For streams, and files
    that cannot be mapped."""

    def __init__(self, session: WriteSession, readinto: ReadInto, size_hint: int | None) -> None:
        self.size_hint = size_hint
        self.reserve = reserve = session.reserve
        # The repository's: block buffers outlive sessions (zero-filling three
        # 8 MiB buffers per put_tree call was a fifth of a re-ingest).
        self._pool = session.repo.block_buffers
        self._free: asyncio.Queue = asyncio.Queue()
        self._ready: asyncio.Queue = asyncio.Queue()
        if size_hint is not None and size_hint < session.block_size:
            # One read fills it, the next sees EOF: no block-sized buffers
            # (zero-filling 25 MB per small file was most of a tree's time).
            block = size_hint + 1
            self._pooled: list[memoryview] = []
            self._free.put_nowait(uninitialized(reserve + block))
            self.held = 0
        else:
            block = session.block_size
            self._pooled = [self._pool.pop() if self._pool else uninitialized(reserve + block)
                            for _ in range(READ_AHEAD + 1)]
            for b in self._pooled:
                self._free.put_nowait(b)
            self.held = 1
        self.source = None                  # the buffers are ours: their bytes do not change
        self._carry = b""
        self._reader = asyncio.ensure_future(self._read(readinto, block))

    async def _read(self, readinto: ReadInto, block: int) -> None:
        """Fill free buffers after `reserve` bytes; queue (buffer, n, eof)."""
        try:
            eof = False
            while not eof:
                buf = await self._free.get()
                mv = memoryview(buf)
                end = self.reserve + block
                pos = self.reserve
                while pos < end:
                    n = await readinto(mv[pos:end])
                    if not n:
                        eof = True
                        break
                    pos += n
                del mv
                self._ready.put_nowait((buf, pos - self.reserve, eof))
        except BaseException as e:          # handed to the scanner, which raises it
            self._ready.put_nowait(e)

    async def next(self):
        """(token, view from the unfinished chunk on, the new bytes, eof)."""
        item = await self._ready.get()
        if isinstance(item, BaseException):
            raise item
        buf, n, eof = item
        t, r = len(self._carry), self.reserve
        buf[r - t:r] = self._carry
        view = memoryview(buf)[r - t:r + n]
        return buf, view, view[t:], eof

    def advance(self, view: memoryview, cut: int) -> None:
        self._carry = bytes(view[cut:])           # < max_size bytes

    def release(self, buf) -> None:
        self._free.put_nowait(buf)

    def close(self) -> None:
        self._reader.cancel()
        self._pool.extend(self._pooled[:max(0, MAX_POOLED_BUFFERS - len(self._pool))])


class _MappedBlocks:
    """A regular file's blocks as windows of its mapping (`_mapped.Window`):
    no copy into a buffer, and no buffer whose fresh pages the kernel must
    zero (on this VM, faulting in fresh memory was ~40% of a re-ingest's
    samples).  Window k covers [k*block - reserve, (k+1)*block), so it starts
    before the unfinished chunk the previous block left (< max_size bytes);
    READ_AHEAD windows are mapped (MAP_POPULATE) ahead in threads.  A window
    that cannot be mapped is read with pread instead."""

    held = 1

    def __init__(self, fd: int, size: int, first: Window, block: int, reserve: int,
                 name: str) -> None:
        self.fd, self.size, self.name = fd, size, name
        self.source = name                  # frames check their copies (_Frame.source)
        self.size_hint = size
        self._block = block
        self._reserve = reserve
        self._n = max(1, -(-size // block))           # windows
        self._ahead: deque = deque()                  # (start, future of a window)
        done = asyncio.get_running_loop().create_future()
        done.set_result(first)
        self._ahead.append((0, done))
        self._mapped = 1                              # windows asked for
        self._k = 0                                   # windows handed out
        self._start = 0                               # file offset of the unfinished chunk
        self._seen = 0                                # bytes handed out as new

    def _span(self, k: int) -> tuple[int, int]:
        a = max(0, k * self._block - self._reserve)
        return a - a % ALLOCATIONGRANULARITY, min(self.size, (k + 1) * self._block)

    def _window(self, a: int, b: int):
        try:
            return Window(self.fd, a, b - a)
        except OSError:                       # out of slots or address space: read it
            data = os.pread(self.fd, b - a, a)
            if len(data) != b - a:
                raise IngestError(f"{self.name} shrank while it was read") from None
            return data

    async def next(self):
        while self._mapped < self._n and self._mapped <= self._k + READ_AHEAD:
            a, b = self._span(self._mapped)
            self._ahead.append((a, asyncio.ensure_future(asyncio.to_thread(self._window, a, b))))
            self._mapped += 1
        a, fut = self._ahead.popleft()
        w = await fut
        if self._start < a:                   # cannot happen: the carry is < max_size
            raise RuntimeError("unfinished chunk before its window")
        self._k += 1
        mv = memoryview(w)
        fresh = mv[self._seen - a:]
        self._seen = a + len(mv)
        return w, mv[self._start - a:], fresh, self._k == self._n

    def advance(self, view: memoryview, cut: int) -> None:
        self._start += cut

    def release(self, w) -> None:
        if getattr(w, "faulted", False):
            raise IngestError(f"{self.name} shrank while it was read")

    def check_size(self) -> None:
        if os.fstat(self.fd).st_size != self.size:
            raise IngestError(f"{self.name} changed size while it was read")

    def close(self) -> None:
        for _, fut in self._ahead:
            fut.add_done_callback(_consume)
        self._ahead.clear()


class _MetaWriter:
    """Writes the manifests and refs of files committed at about the same
    time as batches: every manifest of a batch is stored, then its refs (the
    write order per file is unchanged).  A tree's files become ready together
    when the pack they share is stored: one store call per batch instead of
    three per file (local store: one thread hop and one directory sync per
    batch; with the batched scans, package new-pass user CPU 1.9-2.3 ->
    1.2-1.5 s)."""

    MAX_BATCH = 256     # as a tree's batch of small files (repository.SMALL_BATCH_FILES)
    # Batches written at once.  A remote store's requests mostly wait on the
    # network; a local store's batch is hundreds of syscalls in a thread,
    # and batches side by side only fought over the GIL and the directories
    # (package new pass, alternated: 1.21-1.39 s and 1.47-1.67 CPU s with 4,
    # 1.14-1.29 s and 1.42-1.58 CPU s with 1; its small files alone
    # 0.90-1.04 s against 0.74-0.84 s).  A session is one writer; the
    # daemon's concurrent uploads are sessions of their own.
    IN_FLIGHT = 4
    IN_FLIGHT_LOCAL = 1
    LIST_FROM = 8     # refs of a batch checked with a listing instead of a read each (remote stores)
    LISTINGS = 8      # ref listings kept by a session (see _old_refs)
    KNOWN = 1 << 16   # file ids whose manifests a repository remembers as stored

    def __init__(self, store, known: dict | None = None) -> None:
        self.store = store
        # File ids whose manifests this process has stored or found stored
        # (insertion-ordered, oldest dropped first): a manifest is immutable,
        # so the next tree holding the same file writes only its ref (on S3
        # one PUT, not two).  A garbage collector, when there is one, must
        # not delete a manifest that a live ref names, which covers these.
        self.known = {} if known is None else known
        self._queue: list[tuple[tuple, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._slots = asyncio.Semaphore(self.IN_FLIGHT_LOCAL if store.local else self.IN_FLIGHT)
        self._writing: set[asyncio.Task] = set()
        self._listings: list[tuple[str, set[str]]] = []   # (prefix, keys under it), newest first

    async def write(self, fid: bytes, build: Callable[[], Manifest], ref: str | None, size: int,
                    sha256: bytes | None) -> None:
        """Store the file's manifest, `build()` (called only if it is
        written: a re-ingest whose ref already names the file writes
        nothing), and then the ref."""
        (fut,) = await self.write_many([(fid, build, ref, size, sha256)])
        fut.result()

    async def write_many(self, items: list[tuple]) -> list[asyncio.Future]:
        """write() of many (file id, build, ref, size, sha256) at once;
        per item its future, done (with its error, if it failed) when this
        returns."""
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in items]
        self._queue.extend(zip(items, futs))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        if futs:
            await asyncio.shield(asyncio.wait(futs))
        return futs

    async def _run(self) -> None:
        while self._queue:
            await asyncio.sleep(0)          # commits ready in this turn of the loop join
            await self._slots.acquire()
            batch, self._queue = self._queue[:self.MAX_BATCH], self._queue[self.MAX_BATCH:]
            task = asyncio.ensure_future(self._settle(batch))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _settle(self, batch) -> None:
        try:
            await self._resolve(batch)
        except BaseException:
            pass                    # every waiter has its outcome
        finally:
            self._slots.release()

    async def _resolve(self, batch) -> None:
        try:
            try:
                await self._write(batch)
            except Exception as e:
                if len(batch) == 1:
                    _fail(batch[0][1], e)
                    return
                # Which files failed?  Each again on its own (every write is
                # idempotent), so one bad file does not fail the uploads that
                # share its batch.
                for one in batch:
                    await self._resolve([one])
                return
        except BaseException as e:          # cancelled: whoever is left learns it
            for _, fut in batch:
                _fail(fut, e)
            raise
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _write(self, batch) -> None:
        items = [item for item, _ in batch]
        # Refs first: a ref that already names the same file needs nothing
        # written, not even its manifest (stored before any ref named it).
        # Re-ingesting a tree then costs one read per file; the manifests'
        # existence checks were a quarter of it (py-spy, package dup pass).
        named = [it for it in items if it[2] is not None]
        keys = [ref_key(ref) for _, _, ref, _, _ in named]
        olds = await self._old_refs(keys) if named else []
        current = {id(it) for it, yes in zip(named, names_many(
            [it[2] for it in named], olds, [it[0] for it in named], [it[4] for it in named])) if yes}
        todo = [it for it in items if id(it) not in current]
        if not todo:
            return
        manifests = {fid: build for fid, build, _, _, _ in todo if fid not in self.known}
        if manifests:
            await self.store.put_many([(manifest_key(fid), build().encode())
                                       for fid, build in manifests.items()],
                                      if_absent=True)
            for fid in manifests:
                self.known[fid] = None
            while len(self.known) > self.KNOWN:
                del self.known[next(iter(self.known))]
        refs = [(key, Ref.new(it[2], it[0], it[3], it[4]).encode())
                for it, key in zip(named, keys) if id(it) not in current]
        if refs:
            await self.store.put_many(refs)

    async def _old_refs(self, keys: list[str]) -> list[bytes | None]:
        """The stored refs at `keys` (None where absent).  On a remote store
        a batch's keys are first looked up in a listing, and only the refs
        that exist are read: a new tree's refs all miss, and one 404 GET per
        file was as costly as its PUT (py-spy, a package tree into SeaweedFS:
        40% of the samples).  A listing is of the batch's directory, kept for
        the session's later batches (a tree's), and bounded: past a few
        times the batch it gives up and every key is read.  A ref written by
        someone else after the listing is only overwritten, as it would be a
        moment after its read (refs are last-writer-wins)."""
        if self.store.local or len(keys) < self.LIST_FROM:
            return await self.store.get_many(keys)
        present = await self._present(keys)
        if present is None:
            return await self.store.get_many(keys)
        fetch = [k for k in keys if k in present]
        got = dict(zip(fetch, await self.store.get_many(fetch))) if fetch else {}
        return [got.get(k) for k in keys]

    async def _present(self, keys: list[str]) -> set[str] | None:
        prefix = os.path.commonprefix(keys)
        for listed, found in self._listings:
            if prefix.startswith(listed):
                return found
        limit = max(1000, 4 * len(keys))
        for p in dict.fromkeys((prefix[:prefix.rfind("/") + 1], prefix)):
            if len(p) <= len(REF_PREFIX):
                continue                  # all refs in the store: not worth a listing
            found: set[str] = set()
            async for info in self.store.list(p):
                found.add(info.key)
                if len(found) > limit:
                    break
            else:
                self._listings = [(p, found), *self._listings[:self.LISTINGS - 1]]
                return found
        return None


def _copy_run(run: list | None, src: np.ndarray) -> None:
    """Owe a run of new chunks to its frame (_Frame.copy_in makes the copy).
    A frame filled from a mapping (`source` set: `src` is a window, which
    lives as long as a view of it) is copied into in the pool, before its
    copy is hashed again: on the event loop the copy was a third of the
    loop thread's time on new incompressible data (cProfile, 64 MiB: 29 of
    87 ms).  From our own buffers, which the next block reuses, at once."""
    if run is not None:
        frame, dst, s, n = run
        if frame.runs is None:
            frame.runs = []
        frame.runs.append((src, dst, s, n))
        if frame.source is None:
            frame.copy_in()


def _fail(fut: asyncio.Future, e: BaseException) -> None:
    """Fail a future that others await (unless it is settled already),
    marked retrieved: its waiters re-raise the error, and a future nobody
    awaits any more is not reported as an unretrieved exception."""
    if not fut.done():
        fut.set_exception(e)
        fut.exception()


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
