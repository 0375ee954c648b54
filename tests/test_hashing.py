"""Chunk ids from the native BLAKE3 (ingest._blake3, the vendored C code)
against the `blake3` package, chunk by chunk, on every kind of chunk layout
and buffer; and the checks of its arguments."""
import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import _blake3, hashing
from ingest.chunking import chunk_ends

KIB, MIB = 1 << 10, 1 << 20


@pytest.fixture(scope="module")
def data() -> bytes:
    return np.random.default_rng(7).bytes(3 * MIB + 123)


def reference(buf, ends, start=0) -> np.ndarray:
    """The old chunk_ids: one `blake3` call per chunk."""
    mv = memoryview(buf).cast("B")
    out = np.empty((len(ends), 32), dtype=np.uint8)
    prev = start
    for i, end in enumerate(np.asarray(ends).tolist()):
        out[i] = np.frombuffer(blake3.blake3(mv[prev:end]).digest(), dtype=np.uint8)
        prev = end
    return out


def check(buf, ends, start=0) -> None:
    got = hashing.chunk_ids(buf, ends, start)
    assert got.dtype == np.uint8 and got.shape == (len(ends), 32)
    assert np.array_equal(got, reference(buf, ends, start))


def test_empty_input_is_the_official_test_vector():
    ids = _blake3.hash_chunks(b"", np.array([0], dtype=np.uint64))
    assert ids[0].tobytes().hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert hashing.chunk_ids(b"", np.array([0])).tobytes() == blake3.blake3(b"").digest()


def test_vendored_c_version():
    assert _blake3.version() == "1.3.3"


def _cuts(lengths) -> np.ndarray:
    return np.cumsum(np.array(lengths, dtype=np.int64))


LAYOUTS = {
    "one chunk": [3 * MIB + 123],
    "empty chunks": [0, 0, 5, 0, 0, 1000, 0],
    "one-byte chunks": [1] * 200,
    "64 B blocks": [63, 64, 65, 128, 64 * 15, 64 * 16, 64 * 17],
    "1 KiB chunks": [KIB - 1, KIB, KIB + 1, 2 * KIB - 1, 2 * KIB, 2 * KIB + 1, 3 * KIB, 4 * KIB,
                     16 * KIB, 16 * KIB + 1],
    "64 KiB": [64 * KIB] * 10 + [64 * KIB - 1, 64 * KIB + 1],
    "over 1 MiB": [MIB + 1, 2 * MIB - 7],
    "mixed": [0, 1, 64, 1023, 0, 2048, 64 * KIB, 1, MIB + 3, 0, 17],
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts_match_blake3_package(data, name):
    ends = _cuts(LAYOUTS[name])
    assert int(ends[-1]) <= len(data)
    check(data, ends)
    check(data, ends.astype(np.uint64))


def test_ends_from_the_chunker(data):
    ends = chunk_ends(data)
    assert ends.dtype == np.uint64 and len(ends) > 10
    check(data, ends)


def test_no_ends_gives_no_ids(data):
    for ends in (np.array([], dtype=np.uint64), np.array([], dtype=np.int64)):
        assert _blake3.hash_chunks(data, ends).shape == (0, 32)
        assert _blake3.hash_chunks(b"", ends).shape == (0, 32)
    assert _blake3.hash_chunks(data, np.array([], dtype=np.int64), len(data)).shape == (0, 32)


def test_start_after_zero(data):
    ends = np.array([5000, 5000, 70000, 2 * MIB], dtype=np.int64)
    check(data, ends, start=4999)
    check(data, ends, start=5000)
    check(data, ends[2:], start=64 * KIB)
    first = hashing.chunk_ids(data, ends[:1], start=4999)
    assert first[0].tobytes() == blake3.blake3(data[4999:5000]).digest()


def test_any_contiguous_buffer(data):
    ends = _cuts([0, 1, 1000, 64 * KIB, 100 * KIB])
    size = int(ends[-1])
    part = data[11:11 + size]
    want = reference(part, ends)
    buffers = {
        "bytes": part,
        "bytearray": bytearray(part),
        "memoryview slice": memoryview(data)[11:11 + size],
        "memoryview of bytearray": memoryview(bytearray(data))[11:11 + size],
        "numpy uint8": np.frombuffer(part, dtype=np.uint8),
        "numpy uint8 slice": np.frombuffer(data, dtype=np.uint8)[11:11 + size],
        "numpy uint32": np.frombuffer(data[:size // 4 * 4 + 4], dtype=np.uint32),
        "2-d numpy": np.frombuffer(data[:size + 3 * 7 - size % 7], dtype=np.uint8).reshape(-1, 7),
    }
    for name, buf in buffers.items():
        view = memoryview(buf).cast("B")
        assert len(view) >= size, name
        got = hashing.chunk_ids(buf, ends)
        assert np.array_equal(got, reference(view, ends)), name
        if bytes(view[:size]) == part:
            assert np.array_equal(got, want), name


def test_non_contiguous_buffer_is_refused(data):
    strided = np.frombuffer(data, dtype=np.uint8)[::2]
    with pytest.raises(TypeError):
        _blake3.hash_chunks(strided, np.array([10]))


@pytest.mark.parametrize("ends,start,size", [
    ([10, 5], 0, 100),              # decreasing
    ([10, 20, 19, 30], 0, 100),
    ([5], 6, 100),                  # start after the first end
    ([101], 0, 100),                # past the buffer
    ([50, 100, 101], 0, 100),
    ([1], 0, 0),
    ([-1, 10], 0, 100),             # negative end
    ([10], -1, 100),                # negative start
    ([], 101, 100),                 # start past the buffer
])
def test_invalid_ends_raise_value_error(ends, start, size):
    buf = bytes(size)
    with pytest.raises(ValueError):
        _blake3.hash_chunks(buf, np.array(ends, dtype=np.int64), start)
    if min(ends, default=0) >= 0:
        with pytest.raises(ValueError):
            hashing.chunk_ids(buf, np.array(ends, dtype=np.uint64), start)


def test_ends_must_be_a_1d_integer_array():
    with pytest.raises(TypeError):
        _blake3.hash_chunks(bytes(10), np.array([1.0, 2.0]))
    with pytest.raises(TypeError):
        _blake3.hash_chunks(bytes(10), np.array([[1, 2]]))
    assert _blake3.hash_chunks(bytes(10), []).shape == (0, 32)
    # Other integer widths and lists are taken as they are.
    check(bytes(range(10)), np.array([1, 4, 10], dtype=np.uint16))
    assert np.array_equal(_blake3.hash_chunks(bytes(range(10)), [1, 4, 10]),
                          reference(bytes(range(10)), [1, 4, 10]))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 300 * KIB),
       cuts=st.lists(st.floats(0, 1), max_size=40), start_frac=st.floats(0, 1))
def test_random_layouts_match_blake3_package(seed, size, cuts, start_frac):
    buf = np.random.default_rng(seed).bytes(size)
    start = int(start_frac * size)
    # Sorted cut points in [start, size]; repeats are empty chunks.
    ends = np.sort(np.array([start + int(c * (size - start)) for c in cuts], dtype=np.int64))
    check(buf, ends, start)


def test_threads_hashing_at_once(data):
    """The C code keeps no state between calls but the CPU features it reads
    at import: threads without the GIL hash side by side correctly."""
    from concurrent.futures import ThreadPoolExecutor
    ends = [_cuts([64 * KIB] * 40 + [i]) for i in range(8)]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda e: hashing.chunk_ids(data, e), ends))
    for e, g in zip(ends, got):
        assert np.array_equal(g, reference(data, e))


def _file_id_by_the_spec(rows: list[tuple[bytes, int]]) -> bytes:
    """hashing's module docstring, written out without numpy."""
    leaf = [cid + n.to_bytes(8, "little") for cid, n in rows]
    level = [blake3.blake3(b"\x00" + b"".join(leaf[i:i + 64])).digest()
             for i in range(0, max(len(leaf), 1), 64)]
    k = 1
    while len(level) > 1:
        level = [blake3.blake3(bytes([k]) + b"".join(level[i:i + 64])).digest()
                 for i in range(0, len(level), 64)]
        k += 1
    return level[0]


@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 4096, 4097])
def test_file_id_follows_the_spec(n):
    """The file id of any number of rows (one row takes a path of its own)
    is the Merkle root the docstring and FORMAT.md define."""
    r = np.random.default_rng(n)
    ids = r.integers(0, 256, (n, 32), dtype=np.uint8)
    lengths = r.integers(0, 1 << 40, n, dtype=np.uint64)
    want = _file_id_by_the_spec([(bytes(ids[i]), int(lengths[i])) for i in range(n)])
    assert hashing.file_id(ids, lengths) == want
    if n == 1:
        assert hashing.file_id(ids[0], lengths) == want   # one id as a flat row


def test_many_buffers_chunk_and_hash_as_one_at_a_time():
    """chunk_ends_many + chunk_ids_many (one native call each for a batch of
    small files) give each buffer the ends and ids it gets on its own."""
    from ingest import chunking
    rng = np.random.default_rng(11)
    bufs = [b"", b"x", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), bytes(200_000),
            rng.integers(0, 256, 700_000, dtype=np.uint8).tobytes()]
    ends, counts = chunking.chunk_ends_many(bufs)
    ids = hashing.chunk_ids_many(bufs, ends, counts)
    assert counts.tolist()[:2] == [0, 1] and len(ends) == len(ids) == counts.sum()
    pos = 0
    for b, n in zip(bufs, counts.tolist()):
        one = chunking.chunk_ends(b)
        assert np.array_equal(ends[pos:pos + n], one)
        assert np.array_equal(ids[pos:pos + n], hashing.chunk_ids(b, one))
        pos += n
    with pytest.raises(ValueError):
        hashing.chunk_ids_many(bufs[:2], np.array([2], np.uint64), np.array([0, 1]))   # past the end
    with pytest.raises(ValueError):
        hashing.chunk_ids_many(bufs[:2], np.array([1], np.uint64), np.array([0, 2]))   # counts != ends
    with pytest.raises(TypeError):
        chunking.chunk_ends_many([bytearray(b"abc")])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 1 << 32), st.integers(0, 200_000), st.integers(0, 12))
def test_spans_hash_as_the_blake3_package(seed, size, n):
    """hash_spans of any spans inside the buffer (overlapping, repeated,
    empty, out of order) equals blake3 of each slice; first_mismatch finds
    the first changed id, and a span past the end never matches."""
    rng = np.random.default_rng(seed)
    buf = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    offs = rng.integers(0, size + 1, n).astype(np.uint64)
    lens = np.array([rng.integers(0, size - o + 1) for o in offs], dtype=np.uint64)
    want = [blake3.blake3(buf[o:o + ln]).digest() for o, ln in zip(offs.tolist(), lens.tolist())]
    got = _blake3.hash_spans(buf, offs, lens)
    assert got.shape == (n, 32) and [r.tobytes() for r in got] == want
    ids = np.frombuffer(b"".join(want), np.uint8).reshape(n, 32).copy()
    assert hashing.first_mismatch(buf, offs, lens, ids) == -1
    assert hashing.first_mismatch(buf, offs, lens, ids.view("V32").reshape(-1)) == -1
    if n:
        k = int(rng.integers(0, n))
        bad = ids.copy()
        bad[k, int(rng.integers(0, 32))] ^= 1 << int(rng.integers(0, 8))
        assert hashing.first_mismatch(buf, offs, lens, bad) == k
        past = lens.copy()
        past[k] = size - int(offs[k]) + 1
        assert hashing.first_mismatch(buf, offs, past, ids) == k
        with pytest.raises(ValueError):
            _blake3.hash_spans(buf, offs, past)


@pytest.mark.parametrize("counts", [[0], [1], [2], [63, 64, 65], [4095], [4096], [4097],
                                    [64 * 64 * 64 + 5], [1, 0, 3, 200, 64, 1, 0]])
def test_file_ids_many_is_file_id_of_each(counts):
    """The native batch of file ids follows the spec's Merkle tree as
    hashing.file_id does: one level, two, three, and files without chunks."""
    rng = np.random.default_rng(sum(counts) + len(counts))
    n = sum(counts)
    ids = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    lengths = rng.integers(0, 1 << 40, n).astype(np.uint64)
    got = hashing.file_ids_many(ids, lengths, counts)
    pos, want = 0, []
    for c in counts:
        want.append(hashing.file_id(ids[pos:pos + c], lengths[pos:pos + c]))
        pos += c
    assert got == want
    assert len(set(got)) == len(set(want))


def test_file_ids_many_refuses_counts_that_do_not_add_up():
    ids = np.zeros((3, 32), np.uint8)
    with pytest.raises(ValueError):
        hashing.file_ids_many(ids, np.ones(3, np.uint64), [1, 1])
    with pytest.raises(ValueError):
        hashing.file_ids_many(ids, np.ones(2, np.uint64), [1, 2])
    with pytest.raises(ValueError):
        hashing.file_ids_many(ids, np.ones(3, np.uint64), [4, -1])
