"""Micro-benchmarks of the engine's stages: chunker, hashing, compression, index lookups.

Not part of the normal test run (pytest's testpaths is tests/); run them by name:

    pytest bench/test_micro.py --benchmark-only
    pytest bench/test_micro.py --benchmark-only -k compress --benchmark-columns=median,ops

Sizes are the pipeline's: 8 MiB blocks (pipeline.BLOCK_SIZE) for chunking and
hashing, 1 MiB frames (StoreConfig.frame_size) for compression, one block's
~128 chunk ids per index lookup.  Each benchmark records its input size in
extra_info["bytes"] and, once timed, extra_info["MB/s"] (median; MB = 10^6 B)
for `--benchmark-json`.
"""
from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

from ingest import hashing  # noqa: E402
from ingest.chunking import ChunkParams, StreamChunker, chunk_ends  # noqa: E402
from ingest.compression import Compressor, decompress, group_bytes  # noqa: E402
from ingest.index import LOCATION, ChunkIndex, decode_shard, encode_shard  # noqa: E402

BLOCK = 8 << 20
FRAME = 1 << 20
MIN, AVG, MAX = 16 * 1024, 64 * 1024, 256 * 1024


def _run(benchmark, fn, *args, nbytes: int | None = None):
    if nbytes is not None:
        benchmark.extra_info["bytes"] = nbytes
    out = benchmark(fn, *args)
    stats = getattr(benchmark, "stats", None)
    if nbytes is not None and stats is not None:
        benchmark.extra_info["MB/s"] = round(nbytes / stats.stats.median / 1e6, 1)
    return out


@pytest.fixture(scope="module")
def block() -> bytes:
    return np.random.default_rng(1).bytes(BLOCK)


@pytest.fixture(scope="module")
def block_ends(block) -> np.ndarray:
    return chunk_ends(block)


# -- chunker -----------------------------------------------------------------------

def test_chunk_ends(benchmark, block):
    ends = _run(benchmark, chunk_ends, block, nbytes=len(block))
    assert int(ends[-1]) == len(block)


def test_chunk_ends_fastcdc_reference(benchmark, block):
    """fastcdc's Cython chunker on the same block and sizes, for the ratio."""
    fastcdc_cy = pytest.importorskip("fastcdc.fastcdc_cy").fastcdc_cy
    chunks = _run(benchmark, lambda b: list(fastcdc_cy(b, MIN, AVG, MAX)), memoryview(block),
                  nbytes=len(block))
    assert sum(c.length for c in chunks) == len(block)


@pytest.mark.parametrize("piece", [64 << 10, 1 << 20])
def test_stream_chunker(benchmark, block, block_ends, piece):
    """StreamChunker fed in pieces: the cost of carrying the unfinished chunk."""
    mv = memoryview(block)

    def run():
        c = StreamChunker()
        out = [c.update(mv[i:i + piece]) for i in range(0, len(mv), piece)]
        out.append(c.finish())
        return np.concatenate(out)
    ends = _run(benchmark, run, nbytes=len(block))
    assert np.array_equal(ends, block_ends)


def test_chunk_ends_small_params(benchmark, block):
    """Smaller chunks (4/16/64 KiB): more cut checks per byte fall past min_size."""
    p = ChunkParams(4096, 16384, 65536)
    _run(benchmark, chunk_ends, block, p, nbytes=len(block))


# -- hashing -------------------------------------------------------------------------

def test_chunk_ids(benchmark, block, block_ends):
    """BLAKE3 of every chunk of a block (the per-block id step of the pipeline)."""
    ids = _run(benchmark, hashing.chunk_ids, block, block_ends, nbytes=len(block))
    assert ids.shape == (len(block_ends), 32)


def _chunk_ids_per_call(buf, ends, start=0):
    """chunk_ids as it was before ingest._blake3: one `blake3` call (and GIL
    hand-off) per chunk."""
    import blake3
    mv = memoryview(buf).cast("B")
    out = np.empty((len(ends), 32), dtype=np.uint8)
    prev = start
    for i, end in enumerate(ends.tolist()):
        out[i] = np.frombuffer(blake3.blake3(mv[prev:end]).digest(), dtype=np.uint8)
        prev = end
    return out


@pytest.mark.parametrize("impl", ["native", "per-chunk-blake3"])
@pytest.mark.parametrize("layout", ["64k", "cdc"])
def test_chunk_ids_vs_per_chunk(benchmark, block, block_ends, layout, impl):
    """The one native call against the old loop, on the block cut into 64 KiB
    chunks and into the chunker's (same mean size, uneven lengths)."""
    ends = np.arange(AVG, BLOCK + 1, AVG, dtype=np.uint64) if layout == "64k" else block_ends
    fn = hashing.chunk_ids if impl == "native" else _chunk_ids_per_call
    ids = _run(benchmark, fn, block, ends, nbytes=len(block))
    assert np.array_equal(ids, _chunk_ids_per_call(block, ends))


@pytest.mark.parametrize("impl", ["native", "per-chunk-blake3"])
def test_chunk_ids_beside_a_busy_loop(benchmark, block, impl):
    """64 KiB chunks hashed while another thread wakes every 0.2 ms for 0.3 ms
    of Python, as the event loop does under load: each GIL hand-off can cost
    the hashing thread one of those bursts, once per chunk for the old loop,
    once per block for the native call."""
    import threading
    import time
    ends = np.arange(AVG, BLOCK + 1, AVG, dtype=np.uint64)
    fn = hashing.chunk_ids if impl == "native" else _chunk_ids_per_call
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            t_end = time.perf_counter() + 0.0003
            while time.perf_counter() < t_end:
                pass
            time.sleep(0.0002)
    t = threading.Thread(target=loop)
    t.start()
    try:
        _run(benchmark, fn, block, ends, nbytes=len(block))
    finally:
        stop.set()
        t.join()


def test_blake3_whole_block(benchmark, block):
    """One BLAKE3 over the whole block: the ceiling for test_chunk_ids."""
    import blake3
    _run(benchmark, lambda b: blake3.blake3(b).digest(), block, nbytes=len(block))


def test_sha256_block(benchmark, block):
    """SHA-256 of a block (every file's sha256, computed beside the chunk ids)."""
    _run(benchmark, lambda b: hashlib.sha256(b).digest(), block, nbytes=len(block))


@pytest.mark.parametrize("nchunks", [1024, 65536])
def test_file_id(benchmark, nchunks):
    """Merkle root over chunk rows: 1024 chunks ~ 64 MiB, 65536 ~ 4 GiB of file."""
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 256, (nchunks, 32), dtype=np.uint8)
    lengths = np.full(nchunks, AVG, dtype=np.uint64)
    fid = _run(benchmark, hashing.file_id, ids, lengths, nbytes=nchunks * AVG)
    assert len(fid) == 32


# -- compression ---------------------------------------------------------------------

def _frame(kind: str) -> tuple[bytes, int | None]:
    """(1 MiB frame, element size hint the pipeline would pass)."""
    rng = np.random.default_rng(3)
    if kind == "random":
        return rng.bytes(FRAME), None
    if kind == "fp32":
        return (rng.standard_normal(FRAME // 4, dtype=np.float32) * np.float32(0.02)).tobytes(), 4
    if kind == "fp32-nohint":
        return (rng.standard_normal(FRAME // 4, dtype=np.float32) * np.float32(0.02)).tobytes(), None
    if kind in ("bf16", "fp16"):
        w = rng.standard_normal(FRAME // 2, dtype=np.float32) * np.float32(0.02)
        if kind == "fp16":
            return w.astype(np.float16).tobytes(), 2
        return (w.view(np.uint32) >> 16).astype(np.uint16).tobytes(), 2
    raise ValueError(kind)


@pytest.fixture(scope="module")
def corpus_frames(tmp_path_factory) -> dict[str, bytes]:
    """1 MiB of real-looking text and package bytes from ingest.artifacts."""
    from ingest.artifacts import make_corpus
    out = {}
    for kind, suffixes in (("dataset", (".jsonl", ".csv", ".json")), ("package", (".py", ".txt", ".md"))):
        root = tmp_path_factory.mktemp(kind)
        paths = make_corpus(kind, root, scale=0.1)
        files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        pick = [f for f in files if f.suffix in suffixes] or files
        data = b"".join(f.read_bytes() for f in pick[:400])
        while len(data) < FRAME:
            data += b"".join(f.read_bytes() for f in files)
        out[kind] = data[:FRAME]
    return out


def _frame_for(kind: str, corpus_frames) -> tuple[bytes, int | None]:
    if kind in ("dataset", "package"):
        return corpus_frames[kind], None
    return _frame(kind)


def _stored_bytes(stored) -> bytes:
    if isinstance(stored, (list, tuple)):
        return b"".join(bytes(p) for p in stored)
    return bytes(stored)


KINDS = ["random", "fp32", "fp32-nohint", "bf16", "fp16", "dataset", "package"]


@pytest.mark.parametrize("kind", KINDS)
def test_compress_frame(benchmark, kind, corpus_frames):
    data, hint = _frame_for(kind, corpus_frames)
    comp = Compressor(level=3)
    codec, stored = _run(benchmark, comp.compress, data, hint, nbytes=len(data))
    benchmark.extra_info["codec"] = codec
    benchmark.extra_info["ratio"] = round(len(_stored_bytes(stored)) / len(data), 4)


@pytest.mark.parametrize("kind", KINDS)
def test_decompress_frame(benchmark, kind, corpus_frames):
    data, hint = _frame_for(kind, corpus_frames)
    codec, stored = Compressor(level=3).compress(data, hint)
    stored = _stored_bytes(stored)
    out = _run(benchmark, decompress, codec, stored, len(data), nbytes=len(data))
    assert bytes(out) == data


@pytest.mark.parametrize("k", [2, 4])
def test_group_bytes(benchmark, k):
    data = np.random.default_rng(4).bytes(FRAME)
    _run(benchmark, group_bytes, data, k, nbytes=FRAME)


# -- index ---------------------------------------------------------------------------

INDEX_ROWS = 1 << 20            # ~64 GiB of unique data at 64 KiB chunks
SHARD_ROWS = 1024               # ~one 64 MiB pack's chunks


def _ids(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def big_index():
    """A ChunkIndex of INDEX_ROWS ids, added one pack-sized shard at a time (as loaded)."""
    rng = np.random.default_rng(5)
    ids = _ids(rng, INDEX_ROWS)
    locs = np.zeros(INDEX_ROWS, dtype=LOCATION)
    locs["length"] = AVG
    index = ChunkIndex()
    for i in range(0, INDEX_ROWS, SHARD_ROWS):
        index.add(ids[i:i + SHARD_ROWS], locs[i:i + SHARD_ROWS])
    return index, ids


@pytest.mark.parametrize("hits", ["all", "none", "half"])
def test_index_lookup_block(benchmark, big_index, hits):
    """Dedup lookup of one 8 MiB block's ~128 chunk ids in a 1M-chunk index."""
    index, ids = big_index
    rng = np.random.default_rng(6)
    n = BLOCK // AVG
    present = ids[rng.choice(len(ids), n, replace=False)]
    absent = _ids(rng, n)
    q = {"all": present, "none": absent,
         "half": np.concatenate((present[: n // 2], absent[n // 2:]))}[hits]
    found, _ = _run(benchmark, index.lookup, q, nbytes=n * AVG)
    assert int(found.sum()) == {"all": n, "none": 0, "half": n // 2}[hits]


def test_index_lookup_file(benchmark, big_index):
    """One lookup of 65536 ids (a 4 GiB file in one call)."""
    index, ids = big_index
    q = ids[np.random.default_rng(7).choice(len(ids), 65536, replace=False)]
    found, _ = _run(benchmark, index.lookup, q, nbytes=65536 * AVG)
    assert found.all()


def test_index_add_shard(benchmark):
    """Adding pack-sized shards to a growing index (merges amortized in)."""
    rng = np.random.default_rng(8)
    n_shards = 256
    ids = _ids(rng, SHARD_ROWS * n_shards)
    locs = np.zeros(len(ids), dtype=LOCATION)

    def run():
        index = ChunkIndex()
        for i in range(0, len(ids), SHARD_ROWS):
            index.add(ids[i:i + SHARD_ROWS], locs[i:i + SHARD_ROWS])
        return index
    index = _run(benchmark, run)
    assert len(index) == len(ids)
    benchmark.extra_info["rows"] = len(ids)


def test_index_shard_encode(benchmark):
    rng = np.random.default_rng(9)
    ids, locs = _ids(rng, SHARD_ROWS), np.zeros(SHARD_ROWS, dtype=LOCATION)
    _run(benchmark, encode_shard, ids, locs)


def test_index_shard_decode(benchmark):
    """Decoding one shard: what opening a store costs per pack."""
    rng = np.random.default_rng(10)
    ids, locs = _ids(rng, SHARD_ROWS), np.zeros(SHARD_ROWS, dtype=LOCATION)
    locs["frame_raw"], locs["length"] = FRAME, AVG
    _, obj = encode_shard(ids, locs)
    got_ids, _ = _run(benchmark, decode_shard, obj, "bench shard")
    assert len(got_ids) == SHARD_ROWS


def test_not_collected_by_default():
    """This file lives outside testpaths; the normal `pytest` run never imports it."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert "bench" not in cfg["tool"]["pytest"]["ini_options"]["testpaths"]
