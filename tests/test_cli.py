"""The `ingest` command as a user runs it: a subprocess, exit codes, output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MiB = 1 << 20


def ingest(*args, store, check=True, env=None, stdin=None):
    e = dict(os.environ, **(env or {}))
    p = subprocess.run([sys.executable, "-m", "ingest.cli", "--store", str(store), *map(str, args)],
                       capture_output=True, env=e, input=stdin)
    if check and p.returncode != 0:
        raise AssertionError(f"ingest {args} failed ({p.returncode}): {p.stderr.decode()}")
    return p


@pytest.fixture
def tree(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "dataset"
    (root / "train").mkdir(parents=True)
    base = rng.integers(0, 256, 3 * MiB, dtype=np.uint8).tobytes()
    (root / "train" / "part-0.bin").write_bytes(base)
    (root / "train" / "part-1.bin").write_bytes(base[:MiB] + b"new rows" + base[MiB:])
    (root / "README.md").write_text("# dataset\n" * 100)
    (root / "empty.txt").write_bytes(b"")
    return root


def test_put_json_get_tree_round_trip(store_url, tree, tmp_path):
    p = ingest("put", "--json", tree, store=store_url)
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    files, summary = lines[:-1], lines[-1]["summary"]
    assert sorted(f["path"] for f in files) == sorted(
        ["dataset/README.md", "dataset/empty.txt", "dataset/train/part-0.bin", "dataset/train/part-1.bin"])
    for f in files:
        assert set(f) >= {"path", "file_id", "size", "new_bytes", "stored_bytes"}
    assert summary["files"] == 4
    assert summary["input_bytes"] == sum(f["size"] for f in files)
    assert summary["new_bytes"] < summary["input_bytes"] * 0.6       # part-1 dedups against part-0
    assert p.stderr == b""                                           # no progress bar with --json

    out = tmp_path / "restored"
    ingest("get", "dataset/", "-o", out, store=store_url)
    for f in tree.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(tree)).read_bytes() == f.read_bytes()

    one = tmp_path / "one.bin"
    fid = next(f["file_id"] for f in files if f["path"].endswith("part-1.bin"))
    ingest("get", fid, "-o", one, store=store_url)
    assert one.read_bytes() == (tree / "train" / "part-1.bin").read_bytes()

    cat = ingest("cat", "--range", "1000-2000", "dataset/train/part-1.bin", store=store_url)
    assert cat.stdout == (tree / "train" / "part-1.bin").read_bytes()[1000:2000]

    ls = ingest("ls", "--json", store=store_url)
    assert len(ls.stdout.decode().splitlines()) == 4
    st = json.loads(ingest("stats", "--json", store=store_url).stdout)
    assert st["refs"] == 4 and st["stored_bytes"] < st["logical_bytes"]
    v = ingest("verify", store=store_url)
    assert v.stdout.decode().startswith("ok:")


def test_put_no_sha256(tmp_path, tree):
    import hashlib
    store = tmp_path / "s"
    files = [json.loads(x) for x in ingest("put", "--json", "--no-sha256", tree,
                                             store=store).stdout.decode().splitlines()[:-1]]
    assert len(files) == 4 and all(f["sha256"] is None for f in files)
    ls = [json.loads(x) for x in ingest("ls", "--json", store=store).stdout.decode().splitlines()]
    assert all(r["sha256"] is None for r in ls)
    again = [json.loads(x) for x in ingest("put", "--json", tree,
                                             store=store).stdout.decode().splitlines()[:-1]]
    readme = next(f for f in again if f["path"] == "dataset/README.md")
    assert readme["sha256"] == hashlib.sha256((tree / "README.md").read_bytes()).hexdigest()
    assert ingest("verify", store=store).stdout.decode().startswith("ok:")


def test_put_zstd_level_from_flag_or_environment(tmp_path):
    f = tmp_path / "rows.csv"
    f.write_bytes(b"".join(b"%d,row %d,%d\n" % (i, i * 7 % 1000, i % 13) for i in range(200_000)))

    def packs(name, *args, env=None):
        store = tmp_path / name
        ingest("put", *args, f, store=store, env=env)
        assert ingest("cat", "rows.csv", store=store).stdout == f.read_bytes()
        return sorted(p.name for p in (store / "packs").iterdir())

    flag = packs("flag", "--zstd-level", "1")
    assert packs("env", env={"INGEST_ZSTD_LEVEL": "1"}) == flag
    assert packs("default") != flag
    assert packs("flag-wins", "--zstd-level", "3", env={"INGEST_ZSTD_LEVEL": "1"}) == packs("three")
    for args, env, where in [(["--zstd-level", "30"], None, "--zstd-level"),
                             ([], {"INGEST_ZSTD_LEVEL": "fast"}, "$INGEST_ZSTD_LEVEL")]:
        p = ingest("put", *args, f, store=tmp_path / "bad", env=env, check=False)
        err = p.stderr.decode()
        assert p.returncode == 1 and where in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()


def test_put_single_file_ref_is_its_name(tmp_path):
    store = tmp_path / "s"
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"weights" * 1000)
    p = ingest("put", "--json", f, store=store)
    assert json.loads(p.stdout.decode().splitlines()[0])["path"] == "model.safetensors"
    assert ingest("cat", "model.safetensors", store=store).stdout == f.read_bytes()


def test_default_store_from_environment(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"hello")
    env = dict(os.environ, INGEST_STORE=str(tmp_path / "envstore"))
    subprocess.run([sys.executable, "-m", "ingest.cli", "put", str(f)], check=True, env=env,
                   capture_output=True)
    assert (tmp_path / "envstore" / "config%").is_file()      # the local store's object file


@pytest.mark.parametrize("args,message", [
    (["put", "/definitely/missing"], "no such file or directory"),
    (["get", "nope", "-o", "x"], "no such file or ref"),
    (["get", "0" * 64, "-o", "x"], "unknown file id"),
    (["cat", "--range", "9-3", "whatever"], "bad range"),
])
def test_errors_are_one_line_and_nonzero(tmp_path, args, message):
    store = tmp_path / "s"
    ingest("put", __file__, store=store)                 # the store exists
    p = ingest(*args, store=store, check=False)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_store_path_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    p = ingest("put", __file__, store=f, check=False)
    assert p.returncode == 1 and "not a directory" in p.stderr.decode()


def test_unreadable_file_fails_cleanly(tmp_path):
    if os.geteuid() == 0:
        # root may open any file; /proc/self/mem opens but fails on read (EIO).
        f = Path("/proc/self/mem")
    else:
        f = tmp_path / "secret"
        f.write_bytes(b"x")
        f.chmod(0)
    p = ingest("put", f, store=tmp_path / "s", check=False)
    assert p.returncode == 1 and "cannot read" in p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()


def test_verify_detects_bit_flip(tmp_path, tree):
    store = tmp_path / "s"
    ingest("put", tree, store=store)
    pack = next((store / "packs").iterdir())
    raw = bytearray(pack.read_bytes())
    # The middle of the pack: the 3 MiB of random bytes of the two parts are
    # nearly all of it, whichever order the tree's files were packed in (at
    # a fixed small offset the README's frame sometimes lay instead).
    raw[len(raw) // 2] ^= 1
    pack.write_bytes(bytes(raw))
    v = ingest("verify", store=store, check=False)
    assert v.returncode == 1 and "PROBLEM" in v.stdout.decode()
    # The byte lies in what both parts share, or in the chunks around the
    # insertion that only part-1 has: one of them, at least, fails.
    failed = 0
    for i in (0, 1):
        out = tmp_path / f"o{i}"
        g = ingest("get", f"dataset/train/part-{i}.bin", "-o", out, store=store, check=False)
        if g.returncode:
            assert g.returncode == 1 and not out.exists()     # never returned as data
            failed += 1
        else:
            assert out.read_bytes() == (tree / "train" / f"part-{i}.bin").read_bytes()
    assert failed


def test_demo_twice_into_one_store(tmp_path):
    """`ingest demo` restores and verifies what it ingested (exit 0); run
    again into the same store, every byte dedups and it says so, instead
    of a ratio over zero stored bytes."""
    store = tmp_path / "store"
    first = ingest("demo", "--scale", "0.02", store=store)
    out = first.stdout.decode()
    assert "restored byte-exact" in out and "verify: ok" in out and "x smaller" in out
    second = ingest("demo", "--scale", "0.02", store=store).stdout.decode()
    assert "verify: ok" in second and "nothing new stored" in second and "x smaller" not in second


@pytest.mark.parametrize("flags", [[], ["--buffered"]])
def test_get_large_file_direct_or_buffered(tmp_path, flags):
    """A file past ingest.output.DIRECT_MIN comes back byte-exact whether
    it bypasses the page cache (the default) or not (--buffered)."""
    from ingest.output import DIRECT_MIN
    src = tmp_path / "big.bin"
    src.write_bytes(np.random.default_rng(1).integers(0, 256, DIRECT_MIN + 12345,
                                                      dtype=np.uint8).tobytes())
    store = tmp_path / "s"
    ingest("put", src, store=store)
    out = tmp_path / "out.bin"
    ingest("get", *flags, "big.bin", "-o", out, store=store)
    assert out.read_bytes() == src.read_bytes()
    assert not list(tmp_path.glob(".*ingest-tmp"))
