"""Frame codecs: round trips for every kind of data, choices, damage."""
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import _bytegroup
from ingest.compression import (CODECS, RAW, ZSTD, ZSTD_BG2, ZSTD_BG4, Compressor, decompress,
                                group_bytes)
from ingest.errors import IntegrityError
from ingest.safetensors import parse_header

rng = np.random.default_rng(0)
FP32 = (rng.standard_normal(1 << 18) * 0.02).astype(np.float32).tobytes()
BF16 = (np.frombuffer(FP32, np.uint32) >> 16).astype(np.uint16).tobytes()
TEXT = b" ".join(np.array([b"alpha", b"beta", b"row", b"data", b"\n"])[rng.integers(0, 5, 300_000)].tolist())[:1 << 20]
RANDOM = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("data,hint,codec,max_ratio", [
    (FP32, None, ZSTD_BG4, 0.87),
    (FP32, 4, ZSTD_BG4, 0.87),
    (BF16, None, ZSTD_BG2, 0.72),
    (BF16, 2, ZSTD_BG2, 0.72),
    (TEXT, None, ZSTD, 0.2),
    (RANDOM, None, RAW, 1.0),
    (RANDOM, 4, RAW, 1.0),          # a wrong hint costs nothing: every plane stays raw
])
def test_codec_choice_and_round_trip(data, hint, codec, max_ratio):
    got, parts = Compressor(3).compress(data, hint)
    stored = b"".join(parts)
    assert CODECS[got] == CODECS[codec]
    assert len(stored) <= max_ratio * len(data)
    assert bytes(decompress(got, stored, len(data))) == data


def test_a_grouping_guessed_from_the_middle_is_checked_on_the_whole_frame():
    """A frame whose middle looks like floats but which repeats at long
    range (as a shared library does): the sample says 4-way grouping, the
    whole frame stores less plain, and plain is what gets stored."""
    r = np.random.default_rng(7)
    v = (r.standard_normal(128 * 256) * 0.02).astype(np.float32)
    v[r.random(v.size) < 0.4] = 0                  # sparse weights: plain sample ratio ~0.66
    frame = v.tobytes() * 8                        # 1 MiB repeating every 128 KiB
    c = Compressor(3)
    assert c.choose(memoryview(frame)) == ZSTD_BG4          # the sample's verdict
    codec, out = c.compress(frame)
    assert codec == ZSTD
    assert sum(len(x) for x in out) == len(c._zc.compress(frame))
    assert decompress(codec, b"".join(out), len(frame)) == frame
    # With the dtype from the format the grouping is not second-guessed.
    assert c.compress(frame, 4)[0] == ZSTD_BG4


def test_a_frame_incompressible_in_the_middle_is_still_compressed():
    """The middle sample says raw, but the frame is mostly text (a Parquet
    file's first frame was like this): it is compressed, not stored raw.
    A frame random all through stays raw."""
    c = Compressor(3)
    frame = TEXT[:3 << 17] + RANDOM[:1 << 18] + TEXT[3 << 17:6 << 17]
    mid = len(frame) // 2
    assert len(c._zc.compress(frame[mid - 16384:mid + 16384])) > 0.97 * 32768
    codec, out = c.compress(frame)
    assert codec == ZSTD and sum(map(len, out)) < 0.5 * len(frame)
    assert decompress(codec, b"".join(out), len(frame)) == frame
    assert c.compress(RANDOM)[0] == RAW


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=5000), k=st.sampled_from([1, 2, 3, 4, 8]))
def test_native_grouping_matches_reference(data, k):
    a = np.frombuffer(data, np.uint8)
    m = len(a) // k
    ref = a[:m * k].reshape(-1, k).T.tobytes() + a[m * k:].tobytes()
    assert bytes(_bytegroup.group(data, k)) == ref
    assert bytes(_bytegroup.ungroup(ref, k)) == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=20000), hint=st.sampled_from([None, 2, 4]))
def test_any_bytes_round_trip(data, hint):
    codec, parts = Compressor(3).compress(data, hint)
    assert bytes(decompress(codec, b"".join(parts), len(data))) == data


def test_damaged_grouped_frames_never_decode_to_the_original():
    raw = FP32 + b"xyz"
    codec, parts = Compressor(3).compress(raw, 4)
    assert codec == ZSTD_BG4
    stored = b"".join(parts)
    bad_table = bytearray(stored)
    struct.pack_into("<I", bad_table, 0, 0x7FFF_FFFF)          # plane longer than the frame
    for damaged in (bytes(bad_table), stored[:-1], stored[:10], stored + b"!"):
        with pytest.raises(IntegrityError):
            decompress(codec, damaged, len(raw))
    # A flipped byte inside plane data either fails to decode or decodes to
    # different bytes, which the chunk ids then reject.
    flipped = bytearray(stored)
    flipped[len(stored) // 2] ^= 0xFF
    try:
        out = decompress(codec, bytes(flipped), len(raw))
    except IntegrityError:
        pass
    else:
        assert bytes(out) != raw


def test_bad_codecs_and_raw_lengths():
    with pytest.raises(IntegrityError):
        decompress(ZSTD, b"not zstd", 100)
    with pytest.raises(IntegrityError):
        decompress(7, b"", 0)
    with pytest.raises(IntegrityError):
        decompress(RAW, b"short", 10)


def test_zstd_output_is_bounded_by_raw_len():
    codec, parts = Compressor(3).compress(TEXT)
    with pytest.raises(IntegrityError):
        decompress(codec, b"".join(parts), 1000)          # claims less than the frame holds


def safetensors_bytes(tensors: dict) -> bytes:
    header, body, off = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, (dtype, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": [len(data)], "data_offsets": [off, off + len(data)]}
        body += data
        off += len(data)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def test_safetensors_header_gives_element_sizes():
    blob = safetensors_bytes({"a": ("F32", b"\0" * 400), "b": ("BF16", b"\0" * 200), "c": ("I64", b"\0" * 80)})
    m = parse_header(blob)
    base = 8 + struct.unpack("<Q", blob[:8])[0]
    assert m.element_size(base) == 4 and m.element_size(base + 399) == 4
    assert m.element_size(base + 400) == 2
    assert m.element_size(base + 600) is None                  # integers: let sampling decide
    assert m.element_size(0) is None


@pytest.mark.parametrize("blob", [b"", b"\x05" * 8, struct.pack("<Q", 10) + b"not json..",
                                  struct.pack("<Q", 1 << 40) + b"{}", struct.pack("<Q", 2) + b"[]",
                                  struct.pack("<Q", 20) + b'{"a": {"dtype": 5}}'])
def test_safetensors_garbage_gives_no_hints(blob):
    assert parse_header(blob) is None


def test_zstd_frame_claiming_a_huge_size_is_refused_before_allocating():
    import zstandard
    # A valid frame of 1000 bytes whose header is rewritten by a hostile
    # writer is still refused by the declared-size check; a frame that
    # honestly declares 512 MiB for a 4 KiB slot never reaches zstd.
    big = zstandard.ZstdCompressor().compress(bytes(512 << 20)[:1 << 20])   # declares 1 MiB
    with pytest.raises(IntegrityError, match="claims"):
        decompress(ZSTD, big, 4096)


@pytest.mark.parametrize("data,hint", [(FP32, None), (FP32, 4), (BF16, None), (TEXT, None),
                                       (RANDOM, None), (FP32[:4097], None), (b"", None)])
def test_batched_zstd_calls_store_what_one_call_per_buffer_stores(monkeypatch, data, hint):
    # The probes and planes of a frame go through multi_compress_to_buffer
    # (one GIL release); it must choose and store byte for byte what a
    # compress() call per buffer did.
    import ingest.compression as c
    batched = Compressor(3).compress(data, hint)
    monkeypatch.setattr(c, "_MULTI", False)
    single = Compressor(3).compress(data, hint)
    assert batched[0] == single[0]
    assert [bytes(memoryview(p)) for p in batched[1]] == [bytes(memoryview(p)) for p in single[1]]


def test_compress_all_gives_each_buffer_its_own_zstd_frame():
    from ingest.compression import _compress_all
    import zstandard
    zc = zstandard.ZstdCompressor(level=3)
    parts = [TEXT[:1000], memoryview(FP32)[8:70_000], b"x", TEXT[5:300_000]]
    out = _compress_all(zc, parts)
    assert [bytes(memoryview(z)) for z in out] == [zc.compress(p) for p in parts]
    d = zstandard.ZstdDecompressor()
    assert [d.decompress(bytes(memoryview(z))) for z in out] == [bytes(p) for p in parts]
