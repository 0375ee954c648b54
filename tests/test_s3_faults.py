"""Faults during real ingests into SeaweedFS: the server killed in the middle
of an ingest and restarted, the server down for longer than the retry budget,
and S3 misconfiguration at the command line.  No mocks: the server is the
session's SeaweedFS, stopped with SIGKILL (a crash) and started again on the
same ports and data.

What must hold, whatever happens: an ingest either completes (and the file
reads back byte-exact) or ends with an `IngestError` whose message is one
line; afterwards `verify` finds no ref, manifest or index shard naming
anything missing or damaged, and files stored before are intact.

Outages are placed deterministically, never by sleeping: library ingests read
from a stream that pauses once enough data for a whole pack has gone in, and
the server is killed only after that pack is stored (the store's counters
say so), with the rest of the stream still to come.  The CLI ingest is frozen
with SIGSTOP once its first pack is in the bucket, the server killed, and the
CLI let go.  Every wait polls a condition, with a generous deadline only so
that a bug fails the test instead of hanging it.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ingest import Repository
from ingest.config import StoreConfig
from ingest.errors import IngestError, StoreError
from ingest.stores import open_store
from ingest.stores.retry import RetriesExhausted, RetryPolicy
from helpers import run

pytestmark = pytest.mark.s3

MiB = 1 << 20
STREAM_BLOCK = 1 * MiB
# Stores here are created with 16 MiB packs instead of 64 MiB: four times the
# packs for the same bytes (more uploads in flight when the server dies, two
# at once by the engine's default) in a quarter of the time.
PACK = 16 * MiB
DEADLINE = 120.0            # seconds; a hang guard for polls, not a measurement
# Generous for a restart (SeaweedFS restarts in 2-3 s): 40 attempts, at most
# 0.5 s apart, wait about 9 s in all (a 39-sleep sum under 5 s is vanishingly
# unlikely).
PATIENT = RetryPolicy(attempts=40, base=0.05, cap=0.5)
# Gives up within a fraction of a second of the server going away.
IMPATIENT = RetryPolicy(attempts=3, base=0.01, cap=0.05)


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


async def until(cond, what: str, timeout: float = DEADLINE) -> None:
    """Poll `cond()` every 10 ms until it holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


def wait_until(cond, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


async def paused_stream(data: bytes, pause_at: int, pause):
    """`data` in 1 MiB blocks; before the block at `pause_at`, `await pause()`.
    The ingest cannot finish while paused: the rest of the bytes are still to
    come, so whatever `pause` does happens in the middle of the ingest."""
    assert pause_at % STREAM_BLOCK == 0 and 0 < pause_at < len(data)
    mv = memoryview(data)
    for pos in range(0, len(data), STREAM_BLOCK):
        if pos == pause_at:
            await pause()
        yield mv[pos:pos + STREAM_BLOCK]


async def open_repo(store) -> Repository:
    """A new repository with PACK-sized packs."""
    repo = await Repository.open(store, config=StoreConfig(pack_size=PACK))
    assert repo.config.pack_size == PACK
    return repo


def stored_bytes(store) -> int:
    return store.metrics()["put"]["bytes_out"]


async def check_store(url: str, expect: dict[str, bytes], *, verify: bool = True) -> None:
    """From a fresh repository (no state of the writer): exactly the refs in
    `expect`, each reading back byte-exact, and `verify` finds nothing wrong."""
    async with await Repository.open(url, create=False) as repo:
        assert sorted(r.name for r in await repo.list_refs()) == sorted(expect)
        for name, data in expect.items():
            assert await repo.read(name) == data, f"{name} does not read back"
        if not verify:
            return
        report = await repo.verify()
        assert report.ok, report.problems
        assert report.refs == len(expect)


# -- the library ---------------------------------------------------------------------

def test_ingest_completes_across_server_restart(s3_url, seaweedfs):
    """The server dies after the ingest's first pack is stored, with half the
    file still to come; it is restarted once the ingest has retried a few
    times.  The ingest completes, retrying what failed, and everything reads
    back."""
    before = random_bytes(4 * MiB, 1)
    data = random_bytes(64 * MiB, 2)            # four packs
    pause_at = 32 * MiB                         # over a pack's worth of chunks is in

    async def go():
        store = open_store(s3_url, retry=PATIENT)
        async with await open_repo(store) as repo:
            await repo.put_bytes(before, ref="before")
            out0 = stored_bytes(store)
            ingest_over = asyncio.Event()
            restarter = None

            async def restart_when_retrying() -> int:
                r0 = store.metrics()["total"]["retries"]
                try:
                    # Proof the ingest is running into the dead server.
                    await until(lambda: store.metrics()["total"]["retries"] >= r0 + 3
                                or ingest_over.is_set(), "the ingest to retry")
                    return store.metrics()["total"]["retries"] - r0
                finally:
                    await asyncio.to_thread(seaweedfs.start)

            async def kill_server():
                nonlocal restarter
                await until(lambda: stored_bytes(store) - out0 >= PACK,
                            "the ingest's first pack to be stored")
                await asyncio.to_thread(seaweedfs.stop)
                restarter = asyncio.create_task(restart_when_retrying())

            try:
                result = await repo.put_stream(paused_stream(data, pause_at, kill_server), ref="big")
            finally:
                ingest_over.set()
                retries_while_down = await restarter if restarter else None
            return result, retries_while_down, store.metrics()

    result, retries_while_down, m = run(go())
    assert retries_while_down is not None and retries_while_down >= 3
    assert result.size == len(data) and result.new_bytes == len(data)
    assert m["put"]["errors"] == 0 and m["put"]["retries"] >= 1
    run(check_store(s3_url, {"before": before, "big": data}))


def test_ingest_fails_cleanly_when_server_stays_down(s3_url, seaweedfs):
    """The server dies in the middle of an ingest and stays down past a small
    retry budget: the ingest ends with a one-line StoreError naming the
    request, no ref is written, and after a restart the store verifies, the
    earlier file is intact and the same ingest goes through."""
    before = random_bytes(4 * MiB, 3)
    data = random_bytes(64 * MiB, 4)
    pause_at = 32 * MiB

    async def go():
        store = open_store(s3_url, retry=IMPATIENT)
        async with await open_repo(store) as repo:
            await repo.put_bytes(before, ref="before")
            out0 = stored_bytes(store)

            async def kill_server():
                await until(lambda: stored_bytes(store) - out0 >= PACK,
                            "the ingest's first pack to be stored")
                await asyncio.to_thread(seaweedfs.stop)

            try:
                with pytest.raises(IngestError) as info:
                    await asyncio.wait_for(
                        repo.put_stream(paused_stream(data, pause_at, kill_server), ref="big"),
                        DEADLINE)
                was_down = not seaweedfs.running
            finally:
                await asyncio.to_thread(seaweedfs.start)
            return info.value, was_down, store.metrics()

    error, was_down, m = run(go())
    assert was_down                                  # it failed on its own, not by the restart
    message = str(error)
    assert isinstance(error, RetriesExhausted), f"{type(error).__name__}: {message}"
    assert isinstance(error, StoreError)
    assert "\n" not in message and f"{s3_url}/" in message
    assert "gave up after 3 attempts" in message
    assert m["put"]["errors"] >= 1
    # Nothing names what the failed ingest did not finish; a pack it did store
    # is at worst unreferenced, and verify checks that every pack is whole.
    run(check_store(s3_url, {"before": before}))

    async def again():
        async with await Repository.open(s3_url) as repo:
            return await repo.put_bytes(data, ref="big")
    assert run(again()).size == len(data)
    run(check_store(s3_url, {"before": before, "big": data}))


# -- the command line ------------------------------------------------------------------

def cli(*args, store) -> list[str]:
    return [sys.executable, "-m", "ingest.cli", "--store", str(store), *map(str, args)]


def ingest(*args, store, env=None, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(cli(*args, store=store), capture_output=True,
                       env=dict(os.environ, **(env or {})))
    if check and p.returncode != 0:
        raise AssertionError(f"ingest {args} failed ({p.returncode}): {p.stderr.decode()}")
    return p


def test_cli_put_across_server_restart(s3_url, seaweedfs, tmp_path):
    """`ingest put` of a 96 MiB file (six packs) is frozen once its first
    pack is in the bucket and its ref is not; the server is killed, the CLI
    let go against the dead server, and the server restarted.  With the
    CLI's default retry policy (up to 40 s of backoff) the put completes; in
    the unlikely case it gives up first, it must say so in one line and leave
    no ref.  Either way `ingest verify` passes afterwards."""
    before, big = tmp_path / "before.bin", tmp_path / "big.bin"
    before.write_bytes(random_bytes(4 * MiB, 5))
    big.write_bytes(random_bytes(96 * MiB, 6))

    async def create():              # the CLI uses the store's config: 16 MiB packs
        async with await open_repo(s3_url) as repo:
            await repo.put_file(before, ref="before.bin")
    run(create())

    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    client = seaweedfs.client()

    def count(under: str) -> int:
        return client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{under}").get("KeyCount", 0)

    packs_before = count("packs/")
    p = subprocess.Popen(cli("put", "--json", big, store=s3_url),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: count("packs/") > packs_before or p.poll() is not None,
                   "the CLI's first pack")
        os.kill(p.pid, signal.SIGSTOP)
        try:
            assert p.poll() is None, "the CLI ended before the server could be stopped"
            assert count("refs/big.bin") == 0           # so the ingest is not over
            seaweedfs.stop()
        finally:
            os.kill(p.pid, signal.SIGCONT)
        seaweedfs.start()                               # ~2.5 s: the CLI runs into the outage
        out, err = p.communicate(timeout=DEADLINE)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = err.decode()
    assert "Traceback" not in err
    expect = {"before.bin": before.read_bytes()}
    if p.returncode == 0:
        assert err == "" and b'"path": "big.bin"' in out
        expect["big.bin"] = big.read_bytes()
    else:
        assert p.returncode == 1 and err.startswith("ingest: error: ") and err.count("\n") == 1, err
    run(check_store(s3_url, expect, verify=False))
    v = ingest("verify", store=s3_url, check=False)
    assert v.returncode == 0 and v.stdout.decode().startswith("ok:"), v.stdout.decode() + v.stderr.decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The CLI has no retry option; this runs its real main() with a 3-attempt
# default policy so that an unreachable endpoint fails in a fraction of a
# second instead of after up to 40 s of backoff.
SHORT_RETRIES_CLI = """
import sys
from ingest.stores import retry
retry.RetryPolicy.__init__.__defaults__ = (3, 0.01, 0.05)
from ingest.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command, case", [
    *(("put", case) for case in ("missing bucket", "wrong secret", "unknown key id",
                                 "no credentials", "unreachable endpoint")),
    ("ls", "missing bucket"),            # opening an existing store: create=False
    ("ls", "wrong secret"),
])
def test_cli_store_errors_are_one_line(command, case, s3_url, seaweedfs, tmp_path):
    """Misconfigured S3 at the command line: exit 1, one line on stderr that
    says what is wrong, no traceback, nothing on stdout; and a put writes
    nothing (tests/test_stores.py checks the same errors at the store level)."""
    f = tmp_path / "x.bin"
    f.write_bytes(random_bytes(100_000, 7))
    url, env, argv = s3_url, {}, [sys.executable, "-m", "ingest.cli"]
    if case == "missing bucket":
        url = f"s3://t-missing-{os.urandom(6).hex()}/store"
        expect = f"bucket '{url[5:].split('/')[0]}' does not exist at {seaweedfs.endpoint}"
    elif case == "wrong secret":
        env = {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}
        expect = "access denied (SignatureDoesNotMatch): check the AWS credentials"
    elif case == "unknown key id":
        env = {"AWS_ACCESS_KEY_ID": "no-such-key"}
        expect = "access denied (InvalidAccessKeyId): check the AWS credentials"
    elif case == "no credentials":
        env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
        expect = "no AWS credentials found"
    else:
        endpoint = f"http://127.0.0.1:{_free_port()}"
        env = {"AWS_ENDPOINT_URL": endpoint}
        argv = [sys.executable, "-c", SHORT_RETRIES_CLI]
        expect = f"cannot connect to {endpoint}: Connection refused (gave up after 3 attempts"
    args = ["put", f] if command == "put" else ["ls"]
    full_env = {k: v for k, v in dict(os.environ, **env).items() if v is not None}
    p = subprocess.run([*argv, "--store", url, *map(str, args)], capture_output=True, env=full_env)
    err = p.stderr.decode()
    assert p.returncode == 1, (p.returncode, err)
    assert err.startswith("ingest: error: ") and err.count("\n") == 1, err
    assert expect in err and url in err, err
    assert "Traceback" not in err and p.stdout == b""
    # Nothing was written, and the bucket was not created by the attempt.
    names = [b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]]
    bucket = url[5:].split("/")[0]
    if case == "missing bucket":
        assert bucket not in names
    else:
        assert seaweedfs.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
