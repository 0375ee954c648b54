"""The chunker: golden cut points, block-split invariance, bounds, and the
fast kernel against the plain reference kernel."""
import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import _chunker
from ingest.chunking import DEFAULT_PARAMS, ChunkParams, StreamChunker, chunk_ends, find_ends

SMALL = ChunkParams(64, 256, 1024, 10, 6)      # many chunks from little data, for property tests


def golden_data() -> bytes:
    rng = np.random.default_rng(2026)
    return (rng.integers(0, 256, 4 << 20, dtype=np.uint8).tobytes() + bytes(1 << 20)
            + b"The quick brown fox. " * 50000)


def digest(ends: np.ndarray) -> str:
    return blake3.blake3(ends.astype("<u8").tobytes()).hexdigest()


def test_golden_cut_points_default_params():
    # A change here moves every cut point and silently defeats dedup against
    # every existing store: bump the chunking format instead.
    data = golden_data()
    ends = chunk_ends(data)
    assert len(ends) == 81
    assert ends[:8].tolist() == [79321, 160906, 196340, 238392, 287677, 318225, 354843, 428643]
    assert digest(ends) == "aac5bbdc5548deebc3aebc5218d7ff5efece36d3e5f6defcbb798430ece28d5b"


@pytest.mark.parametrize("params,count,expected", [
    (ChunkParams(2048, 8192, 65536, 15, 11), 111,
     "556b8a0b1ed1e51a97340ce1414494e9501f85ddbfe86bb8f30aee2165a7255b"),
    (SMALL, 3614, "dc93429f7e2ce4a78ebd8784de4372d05efa08964b1e726b61b82bff13dbccb7"),
])
def test_golden_cut_points_param_grid(params, count, expected):
    ends = chunk_ends(golden_data()[:1 << 20], params)
    assert len(ends) == count
    assert digest(ends) == expected


def test_default_params_are_the_documented_ones():
    assert DEFAULT_PARAMS == ChunkParams(16384, 65536, 262144, 17, 13)


def check_bounds(data: bytes, ends: np.ndarray, p: ChunkParams) -> None:
    if not data:
        assert len(ends) == 0
        return
    assert int(ends[-1]) == len(data)
    lengths = np.diff(np.concatenate(([0], ends.astype(np.int64))))
    assert (lengths[:-1] >= p.min_size).all()
    assert (lengths >= 1).all()
    assert (lengths <= p.max_size).all()


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, SMALL, ChunkParams(4096, 4096, 4096, 20, 20)])
def test_bounds_on_random_and_constant_data(params):
    rng = np.random.default_rng(1)
    for data in (rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes(),
                 bytes(3 << 20), b"\xff" * 1000 + bytes(700_000)):
        check_bounds(data, chunk_ends(data, params), params)


def test_mean_chunk_size_near_64k():
    data = np.random.default_rng(3).integers(0, 256, 32 << 20, dtype=np.uint8).tobytes()
    mean = len(data) / len(chunk_ends(data))
    assert 56 << 10 <= mean <= 72 << 10


@pytest.mark.parametrize("data", [b"", b"x", bytes(100), bytes(range(256)) * 10])
def test_tiny_inputs_are_one_chunk(data):
    ends = chunk_ends(data)
    assert ends.tolist() == ([len(data)] if data else [])


def test_accepts_any_buffer():
    data = np.random.default_rng(4).integers(0, 256, 1 << 20, dtype=np.uint8)
    expect = chunk_ends(data.tobytes())
    for buf in (bytearray(data.tobytes()), memoryview(data.tobytes()), data, data.view(np.uint32)):
        assert np.array_equal(chunk_ends(buf), expect)


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, SMALL, ChunkParams(2048, 8192, 65536, 15, 11)])
def test_fast_kernel_matches_reference(params):
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes() + bytes(300_000)
    fast, _ = _chunker.find_ends(params.native(), data, True, 0, False)
    ref, _ = _chunker.find_ends(params.native(), data, True, 0, True)
    assert np.array_equal(fast, ref)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 60_000),
       splits=st.lists(st.integers(0, 60_000), max_size=12))
def test_stream_any_split_gives_same_chunks(seed, size, splits):
    rng = np.random.default_rng(seed)
    # Mix random and repetitive runs so both thresholds and max cuts occur.
    data = bytes(rng.integers(0, 256, size, dtype=np.uint8))
    data = data[: size // 2] + bytes(size // 4) + data[size // 2:]
    expect = chunk_ends(data, SMALL)
    sc = StreamChunker(SMALL)
    got = []
    prev = 0
    for cut in sorted(set(s % (len(data) + 1) for s in splits)) + [len(data)]:
        got.extend(sc.update(data[prev:cut]).tolist())
        prev = cut
    got.extend(sc.finish().tolist())
    assert got == expect.tolist()
    check_bounds(data, np.array(got, dtype=np.uint64), SMALL)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), block=st.integers(1, 5000))
def test_find_ends_resumes_with_scanned(seed, block):
    # The pipeline's form: keep the unfinished tail, pass `scanned` back.
    data = bytes(np.random.default_rng(seed).integers(0, 256, 40_000, dtype=np.uint8))
    expect = chunk_ends(data, SMALL).tolist()
    got, buf, base, scanned = [], b"", 0, 0
    for i in range(0, len(data), block):
        buf += data[i:i + block]
        eof = i + block >= len(data)
        ends, scanned = find_ends(buf, eof, scanned, SMALL)
        got += [base + int(e) for e in ends]
        if len(ends):
            base += int(ends[-1])
            buf = buf[int(ends[-1]):]
    assert got == expect


def test_params_validation():
    with pytest.raises(ValueError):
        ChunkParams(32, 64, 128)
    with pytest.raises(ValueError):
        ChunkParams(1024, 512, 4096)
    with pytest.raises(ValueError):
        ChunkParams(strict_bits=10, loose_bits=12)


def test_stream_update_after_finish_fails():
    sc = StreamChunker()
    sc.finish()
    with pytest.raises(ValueError):
        sc.update(b"x")


KERNEL_PARAMS = [
    DEFAULT_PARAMS,
    SMALL,
    ChunkParams(2048, 8192, 65536, 15, 11),
    ChunkParams(64, 65536, 262144, 12, 8),      # lanes on, a hit every few KiB: hit resolution
    ChunkParams(1024, 32768, 131072, 13, 10),
    ChunkParams(4096, 4096, 8192, 20, 20),      # normal == min, max cuts forced
    ChunkParams(64, 1 << 20, 1 << 20, 14, 14),  # one threshold, long windows
]


def kernel_inputs(rng):
    """Random, constant and repetitive bytes, lengths near 0, 64, min, normal and max."""
    yield rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    yield rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes() + bytes(200_000) + b"ab" * 40_000
    yield bytes(rng.integers(0, 4, 400_000, dtype=np.uint8))     # low-entropy: many equal windows
    for n in (0, 1, 30, 63, 64, 65, 127, 200):
        yield rng.integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("kernel", _chunker.kernels())
@pytest.mark.parametrize("params", KERNEL_PARAMS, ids=lambda p: f"{p.min_size}-{p.normal_size}-{p.max_size}")
def test_every_kernel_cuts_like_the_reference(kernel, params):
    rng = np.random.default_rng(hash((kernel, params.min_size, params.strict_bits)) & 0xffff)
    native = params.native()
    sizes = {params.min_size, params.normal_size, params.max_size}
    datas = list(kernel_inputs(rng))
    base = rng.integers(0, 256, params.max_size + 4096, dtype=np.uint8).tobytes()
    for s in sizes:                                  # a chunk boundary right at the limits
        for d in (-65, -64, -63, -2, -1, 0, 1, 2, 63, 64, 65):
            if 0 <= s + d <= len(base):
                datas.append(base[:s + d])
    for data in datas:
        ref, _ = _chunker.find_ends(native, data, True, 0, True)
        got, _ = _chunker.find_ends(native, data, True, 0, False, kernel)
        assert np.array_equal(got, ref), (kernel, params, len(data))
        # unfinished input resumed with `scanned`, as the pipeline does
        for cut in (len(data) // 3, len(data) // 2):
            e1, sc1 = _chunker.find_ends(native, data[:cut], False, 0, False, kernel)
            r1, rs1 = _chunker.find_ends(native, data[:cut], False, 0, True)
            assert np.array_equal(e1, r1) and sc1 == rs1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 200_000),
       strict=st.integers(8, 16), gap=st.integers(0, 6), min_size=st.sampled_from([64, 256, 1024, 4096]))
def test_kernels_match_reference_random_params(seed, size, strict, gap, min_size):
    params = ChunkParams(min_size, max(min_size, 8 * min_size), 64 * min_size, strict, max(1, strict - gap))
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    ref, _ = _chunker.find_ends(params.native(), data, True, 0, True)
    for kernel in _chunker.kernels():
        got, _ = _chunker.find_ends(params.native(), data, True, 0, False, kernel)
        assert np.array_equal(got, ref), kernel


def test_kernel_selection():
    names = _chunker.kernels()
    assert names[:2] == ["scalar", "lanes4"] and _chunker.default_kernel() in names
    with pytest.raises(ValueError):
        _chunker.find_ends(DEFAULT_PARAMS.native(), b"x" * 100, True, 0, False, "no-such-kernel")


def test_byte_counts_match_numpy():
    rng = np.random.default_rng(5)
    for n in (0, 1, 3, 4, 5, 1000, 256 << 10):
        a = rng.integers(0, 256, n, dtype=np.uint8)
        assert np.array_equal(_chunker.byte_counts(a), np.bincount(a, minlength=256))
    assert _chunker.byte_counts(b"\xff" * 9)[255] == 9


def test_params_for_picks_coarse_only_for_uniform_bytes_of_a_large_file():
    from ingest.chunking import UNIFORM_MIN_FILE, UNIFORM_SAMPLE, is_uniform, params_for
    fine = ChunkParams()
    coarse = fine.coarsened()
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, UNIFORM_MIN_FILE, dtype=np.uint8).tobytes()
    assert is_uniform(noise)
    assert params_for(noise, fine, coarse) == coarse         # a file, or the head of a longer one
    assert params_for(noise[:-1], fine, coarse) == fine      # under 1 MiB, or a head too short
    assert params_for(noise, fine, None) == fine             # a store without coarse
    assert not is_uniform(noise[:UNIFORM_SAMPLE - 1])               # the sample must be whole
    # Structure anywhere in the sample puts a file out: a 4 KiB header of
    # zeros, float weights, text.
    assert not is_uniform(bytes(4096) + noise)
    w = rng.normal(size=UNIFORM_MIN_FILE // 4).astype(np.float32).tobytes()
    assert params_for(w, fine, coarse) == fine
    assert params_for(b"some text, " * 100_000, fine, coarse) == fine
    # Past the sample nothing counts: the rule reads the first 256 KiB only.
    assert params_for(noise[:UNIFORM_SAMPLE] + bytes(UNIFORM_MIN_FILE), fine, coarse) == coarse
