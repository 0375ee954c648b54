"""Self-checks of the synthetic corpus generators (ingest.artifacts), at tiny scales."""
from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import struct

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zstandard

from ingest.artifacts import KINDS, make_corpus

SCALE = 0.02


def _files(paths: list[pathlib.Path]) -> dict[str, bytes]:
    """Relative path -> content, over files and directory trees."""
    out = {}
    for p in paths:
        if p.is_file():
            out[p.name] = p.read_bytes()
        else:
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    out[str(f.relative_to(p.parent))] = f.read_bytes()
    return out


def _size(paths) -> int:
    return sum(len(b) for b in _files(paths).values())


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, list[pathlib.Path]]:
    root = tmp_path_factory.mktemp("corpora")
    return {kind: make_corpus(kind, root / kind, scale=SCALE, seed=7) for kind in KINDS}


def test_kinds():
    assert KINDS == ("model", "dataset", "package", "random")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_corpus("nope", tmp_path)
    with pytest.raises(ValueError):
        make_corpus("random", tmp_path, scale=0)
    with pytest.raises(ValueError):
        make_corpus("random", tmp_path, scale=float("nan"))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind, corpora, tmp_path):
    again = make_corpus(kind, tmp_path / kind, scale=SCALE, seed=7)
    assert [p.name for p in again] == [p.name for p in corpora[kind]]
    assert _files(again) == _files(corpora[kind])


@pytest.mark.parametrize("kind", ["model", "random"])
def test_seed_changes_content(kind, corpora, tmp_path):
    other = make_corpus(kind, tmp_path / kind, scale=SCALE, seed=8)
    assert _files(other) != _files(corpora[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_scale(kind, corpora, tmp_path):
    bigger = make_corpus(kind, tmp_path / kind, scale=2 * SCALE, seed=7)
    ratio = _size(bigger) / _size(corpora[kind])
    assert 1.5 < ratio < 2.6, ratio


def test_paths_are_versions_in_order(corpora):
    assert [p.name for p in corpora["dataset"]] == ["dataset-v1", "dataset-v2", "dataset-v3"]
    assert [p.name for p in corpora["package"]] == [f"package-1.{i}.0" for i in range(4)]
    assert all(p.is_dir() for p in corpora["dataset"] + corpora["package"])
    assert [p.name for p in corpora["random"]] == ["random.bin"]
    assert len(corpora["model"]) == 6 and all(p.suffix == ".safetensors" for p in corpora["model"])


# -- model --------------------------------------------------------------------

_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _read_safetensors(path: pathlib.Path) -> tuple[dict, dict[str, bytes]]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert 8 + n <= len(data) and n % 8 == 0
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    assert meta["format"] == "pt"
    body = data[8 + n:]
    spans = sorted((h["data_offsets"][0], h["data_offsets"][1], name) for name, h in header.items())
    pos = 0
    tensors = {}
    for begin, end, name in spans:
        h = header[name]
        assert begin == pos, "tensor data must be contiguous"
        assert end - begin == int(np.prod(h["shape"])) * np.dtype(_NP[h["dtype"]]).itemsize
        tensors[name] = body[begin:end]
        pos = end
    assert pos == len(body), "offsets must cover the file exactly"
    return header, tensors


def test_safetensors_layout(corpora):
    for path in corpora["model"]:
        header, tensors = _read_safetensors(path)
        dtypes = {h["dtype"] for h in header.values()}
        assert dtypes == {{"fp32": "F32", "bf16": "BF16", "fp16": "F16"}[path.name.split(".")[1]]}
        assert "model.embed_tokens.weight" in header and "lm_head.weight" in header
        assert any(".self_attn.q_proj.weight" in k for k in header)
        assert any(".mlp.down_proj.weight" in k for k in header)


def test_weights_look_like_weights(corpora):
    _, t = _read_safetensors(corpora["model"][0])
    q = np.frombuffer(t["model.layers.0.self_attn.q_proj.weight"], np.float32)
    assert abs(q.mean()) < 0.005 and 0.01 < q.std() < 0.05
    norm = np.frombuffer(t["model.norm.weight"], np.float32)
    assert 0.5 < norm.mean() < 2.5
    # bf16 is fp32 rounded: the top 16 bits, within one unit in the last place
    base_bf16 = {p.name: p for p in corpora["model"]}["model-base.bf16.safetensors"]
    _, tb = _read_safetensors(base_bf16)
    b = np.frombuffer(tb["model.layers.0.self_attn.q_proj.weight"], np.uint16).astype(np.uint32) << 16
    np.testing.assert_allclose(b.view(np.float32), q, rtol=2 ** -8)


def test_finetune_shares_most_tensors(corpora):
    by_name = {p.name: p for p in corpora["model"]}
    for dt in ("fp32", "bf16", "fp16"):
        hb, base = _read_safetensors(by_name[f"model-base.{dt}.safetensors"])
        hf, tuned = _read_safetensors(by_name[f"model-finetune.{dt}.safetensors"])
        assert hb == hf  # same names, shapes, offsets
        same = sum(len(v) for k, v in base.items() if tuned[k] == v)
        total = sum(len(v) for v in base.values())
        assert 0.5 < same / total < 0.98, same / total
        assert base["model.embed_tokens.weight"] == tuned["model.embed_tokens.weight"]
        assert base["model.norm.weight"] != tuned["model.norm.weight"]


# -- dataset ------------------------------------------------------------------

def _jsonl_rows(version_dir: pathlib.Path) -> dict[int, bytes]:
    rows = {}
    for line in (version_dir / "data" / "train.jsonl").read_bytes().splitlines():
        rows[json.loads(line)["id"]] = line
    return rows


def test_dataset_files_parse(corpora):
    for d in corpora["dataset"]:
        rows = _jsonl_rows(d)
        table = pq.read_table(d / "data" / "train.parquet")
        assert table.num_rows == len(rows)
        assert sorted(table["id"].to_pylist()) == sorted(rows)
        events = pacsv.read_csv(d / "data" / "events.csv")
        assert events.num_rows > 0 and "event_id" in events.column_names
        assert (d / "README.md").exists()


def test_dataset_versions_share_most_rows(corpora):
    versions = [_jsonl_rows(d) for d in corpora["dataset"]]
    for old, new in zip(versions, versions[1:]):
        kept = sum(1 for k, v in old.items() if new.get(k) == v)
        edited = sum(1 for k, v in old.items() if k in new and new[k] != v)
        added = len(new.keys() - old.keys())
        assert kept > 0.9 * len(old)
        assert edited >= 1
        assert added >= 2
        # new rows are inserted in the middle as well as appended
        ids = list(new)
        assert any(ids[i] > ids[i + 1] for i in range(len(ids) - 1))


def test_text_is_text(corpora):
    data = (corpora["dataset"][0] / "data" / "train.jsonl").read_bytes()
    ratio = len(zstandard.ZstdCompressor(level=3).compress(data)) / len(data)
    assert 0.2 < ratio < 0.6, ratio
    text = json.loads(data.splitlines()[0])["text"]
    assert " " in text and text[0].isupper()


# -- package ------------------------------------------------------------------

def test_package_versions(corpora):
    trees = []
    for d in corpora["package"]:
        files = {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}
        trees.append(files)
        ver = d.name.removeprefix("package-")
        record = files[f"hubkit-{ver}.dist-info/RECORD"].decode().splitlines()
        listed = {}
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            listed[path] = (digest, size)
        assert set(listed) == set(files)
        for path, (digest, size) in listed.items():
            if digest:
                h = base64.urlsafe_b64encode(hashlib.sha256(files[path]).digest()).rstrip(b"=").decode()
                assert digest == f"sha256={h}" and int(size) == len(files[path])
        so = [p for p in files if p.endswith(".so") or ".so." in p]
        assert len(so) >= 5 and all(files[p][:4] == b"\x7fELF" for p in so)
        assert any(p.endswith(".py") for p in files)
        sizes = [len(b) for b in files.values()]
        assert sum(s < 16 * 1024 for s in sizes) > len(sizes) // 2
    for old, new in zip(trees, trees[1:]):
        common = old.keys() & new.keys()  # dist-info is renamed every version
        same = sum(len(old[p]) for p in common if old[p] == new[p])
        assert len(common) > 0.9 * sum(not p.startswith("hubkit-") for p in old)
        assert any(old[p] != new[p] for p in common)
        assert same < sum(len(b) for b in new.values())
    # a changed shared object keeps most of its content (local changes)
    a, b = trees[0]["hubkit/_C.cpython-311-x86_64-linux-gnu.so"], trees[1]["hubkit/_C.cpython-311-x86_64-linux-gnu.so"]
    assert a != b
    shared = sum(1 for i in range(0, len(b) - 64, 1021) if b[i:i + 64] in a)
    assert shared > 0.5 * (len(b) // 1021), (shared, len(b) // 1021)


# -- random -------------------------------------------------------------------

def test_random_is_incompressible(corpora):
    (path,) = corpora["random"]
    data = path.read_bytes()
    assert len(data) == int(64 * 2 ** 20 * SCALE)
    assert len(zstandard.ZstdCompressor(level=3).compress(data)) > 0.99 * len(data)
