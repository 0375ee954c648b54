"""One conformance suite for every store (local directory and S3 on a real
SeaweedFS), then what only S3 and the retry wrapper can get wrong: errors,
If-None-Match, retries across a server restart."""
from __future__ import annotations

import array
import asyncio
import random
import socket
import threading
import tracemalloc

import pytest

from ingest.errors import InvalidName, NotFound, StoreError
from ingest.stores import ObjectInfo, ObjectNotFound, open_store
from ingest.stores.local import LocalStore
from ingest.stores.retry import RetriesExhausted, RetryPolicy, RetryStore, TransientStoreError
from helpers import run


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def listing(store, prefix: str = "") -> list[ObjectInfo]:
    return [info async for info in store.list(prefix)]


# -- conformance: every store ------------------------------------------------------

def test_put_get_round_trip(store_url):
    async def go():
        async with open_store(store_url) as store:
            for i, n in enumerate([0, 1, 1000, 1 << 20]):
                data = payload(n, i)
                assert await store.put(f"obj/{n}", data) is True
                assert await store.get(f"obj/{n}") == data
            # any bytes-like value; a plain put replaces
            assert await store.put("kinds/ba", bytearray(b"bytearray"))
            assert await store.put("kinds/mv", memoryview(b"xxmemoryview")[2:])
            assert await store.get("kinds/ba") == b"bytearray"
            assert await store.get("kinds/mv") == b"memoryview"
            assert await store.put("kinds/ba", b"replaced") is True
            assert await store.get("kinds/ba") == b"replaced"
    run(go())


def parts_cases():
    """Part lists a put must store as their concatenation: empty parts,
    memoryviews (sliced, and of a non-byte format), a mix of bytes /
    bytearray / memoryview, lists totalling 0 bytes, and parts crossing the
    1 MiB and 256 KiB pieces botocore and aiohttp read an S3 body in."""
    big = payload(3 << 20, 7)
    words = array.array("I", range(70_000))               # itemsize 4: cast to bytes
    return {
        "mixed": [b"abc", b"", bytearray(b"def"), memoryview(b"xxghi")[2:], b"", memoryview(b"")],
        "none": [],
        "all-empty": [b"", bytearray(), memoryview(b""), memoryview(b"abc")[3:]],
        "one": [payload(1000, 1)],
        "tuple": (b"tu", memoryview(bytearray(b"ple"))),
        "large": [b"\x01", memoryview(big)[:(1 << 20) - 1], b"", bytearray(payload(300_000, 2)),
                  memoryview(big)[(1 << 20) - 1:], memoryview(words), b"end"],
    }


def test_put_parts_round_trip(store_url):
    """A list of parts is stored as one object, byte-exact, by every store;
    the same list object can be put again (a retry passes it again)."""
    cases = parts_cases()

    async def go():
        async with open_store(store_url) as store:
            assert store.accepts_parts is True
            for name, parts in cases.items():
                want = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
                assert await store.put(f"parts/{name}", parts) is True
                assert await store.get(f"parts/{name}") == want, name
                assert await store.head(f"parts/{name}") == ObjectInfo(f"parts/{name}", len(want))
                # the same parts object again, under if_absent: stored once, then refused
                assert await store.put(f"again/{name}", parts, if_absent=True) is True
                assert await store.put(f"again/{name}", parts, if_absent=True) is False
                assert await store.get(f"again/{name}") == want, name
            # ranges across part boundaries read back what the parts hold
            large = b"".join(bytes(memoryview(p).cast("B")) for p in cases["large"])
            for start, end in [(0, 2), ((1 << 20) - 2, (1 << 20) + 2), (len(large) - 300_000, None)]:
                assert await store.get("parts/large", start, end) == large[start:end]
    run(go())


class AnswerLost:
    """Wraps a real store: its first put stores the object and then fails
    as if the answer had been lost (TransientStoreError), so RetryStore
    calls the inner put again with the same `data` object."""
    accepts_parts = True

    def __init__(self, inner) -> None:
        self.inner, self.url, self.puts = inner, inner.url, 0

    async def put(self, key, data, *, if_absent=False):
        self.puts += 1
        stored = await self.inner.put(key, data, if_absent=if_absent)
        if self.puts == 1:
            raise TransientStoreError(f"put {key}: connection reset after the request (injected)")
        return stored

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_put_parts_retried_stores_the_same_bytes(store_url):
    parts = parts_cases()["large"]
    want = b"".join(bytes(memoryview(p).cast("B")) for p in parts)

    async def go():
        base = open_store(store_url)
        inner = base.inner if isinstance(base, RetryStore) else base
        flaky = AnswerLost(inner)
        store = RetryStore(flaky, policy=RetryPolicy(attempts=3, base=0.001, cap=0.01))
        async with store:
            assert store.accepts_parts is True
            assert await store.put("k", parts) is True
            assert flaky.puts == 2
            got = await store.get("k")
            return got, store.metrics()["put"]
    got, m = run(go())
    assert len(got) == len(want) and got == want
    assert m["retries"] == 1 and m["errors"] == 0 and m["bytes_out"] == len(want)


def test_ranges(store_url):
    data = payload(1000)

    async def go():
        async with open_store(store_url) as store:
            await store.put("r", data)
            await store.put("empty", b"")
            assert await store.get("r", 100) == data[100:]
            assert await store.get("r", 100, 250) == data[100:250]
            assert await store.get("r", 0, 1) == data[:1]
            assert await store.get("r", 999) == data[999:]
            assert await store.get("r", 900, 5000) == data[900:]      # past the end: what exists
            assert await store.get("r", 1000) == b""
            assert await store.get("r", 5000) == b""
            assert await store.get("r", 5000, 6000) == b""
            assert await store.get("r", 10, 10) == b""
            assert await store.get("empty") == b""
            assert await store.get("empty", 0, 10) == b""
            assert await store.get("empty", 5) == b""
            for start, end in [(0, None), (5, None), (0, 10), (3, 3)]:
                with pytest.raises(ObjectNotFound):
                    await store.get("missing", start, end)
    run(go())


def test_missing_object(store_url):
    async def go():
        async with open_store(store_url) as store:
            with pytest.raises(ObjectNotFound, match="missing/key") as info:
                await store.get("missing/key")
            assert isinstance(info.value, NotFound) and isinstance(info.value, StoreError)
            assert await store.head("missing/key") is None
    run(go())


def test_if_absent(store_url):
    async def go():
        async with open_store(store_url) as store:
            assert await store.put("a", b"first", if_absent=True) is True
            assert await store.put("a", b"second", if_absent=True) is False
            assert await store.get("a") == b"first"
            await store.delete("a")
            assert await store.put("a", b"third", if_absent=True) is True
            assert await store.get("a") == b"third"
    run(go())


def test_concurrent_if_absent_has_one_winner(store_url):
    async def go():
        async with open_store(store_url) as store:
            for round_ in range(3):
                key = f"race/{round_}"
                bodies = [payload(5000, i) for i in range(12)]
                won = await asyncio.gather(*(store.put(key, b, if_absent=True) for b in bodies))
                assert won.count(True) == 1
                assert await store.get(key) == bodies[won.index(True)]
    run(go())


def test_head(store_url):
    async def go():
        async with open_store(store_url) as store:
            await store.put("h/x", payload(1234))
            await store.put("h/empty", b"")
            assert await store.head("h/x") == ObjectInfo("h/x", 1234)
            assert await store.head("h/empty") == ObjectInfo("h/empty", 0)
            assert await store.head("h") is None           # a "directory" is not an object
            with pytest.raises(ObjectNotFound):
                await store.get("h")
            assert await store.head("h/y") is None
    run(go())


def test_key_and_keys_under_it_coexist(store_url):
    """`refs/org/model` and `refs/org/model/config.json` are both objects
    (S3 allows it; a file system needs care), created in either order."""
    async def go():
        async with open_store(store_url) as store:
            await store.put("m", b"parent")
            await store.put("m/c", b"child")
            await store.put("n/c", b"child first")
            await store.put("n", b"parent second")
            assert [(o.key, o.size) for o in await listing(store)] == [
                ("m", 6), ("m/c", 5), ("n", 13), ("n/c", 11)]
            assert await store.get("m") == b"parent" and await store.get("n/c") == b"child first"
            await store.delete("m")
            await store.delete("n/c")
            assert await store.head("m") is None and await store.get("m/c") == b"child"
            assert await store.head("n/c") is None and await store.get("n") == b"parent second"
    run(go())


def test_list_prefixes_and_order(store_url):
    keys = ["b", "a/2", "a/10", "a/1", "ab", "c/d/e", "refs/main", "config", "z" * 200]

    async def go():
        async with open_store(store_url) as store:
            assert await listing(store) == []
            for i, k in enumerate(keys):
                await store.put(k, b"x" * i)
            everything = await listing(store)
            assert [o.key for o in everything] == sorted(keys)
            assert {o.key: o.size for o in everything} == {k: i for i, k in enumerate(keys)}
            assert [o.key for o in await listing(store, "a/")] == ["a/1", "a/10", "a/2"]
            assert [o.key for o in await listing(store, "a")] == ["a/1", "a/10", "a/2", "ab"]
            assert [o.key for o in await listing(store, "c/d/")] == ["c/d/e"]
            assert [o.key for o in await listing(store, "a/1")] == ["a/1", "a/10"]
            assert await listing(store, "x") == []
    run(go())


def test_list_order_around_slash(store_url):
    """Keys that sort between "a" and "a/" ("a-b", "a.c"): a local store and
    AWS list in plain string order; SeaweedFS 4.48 walks its directory tree
    and lists the "a/" subtree first.  Pinned so a change shows up here."""
    keys = ["a0", "a.c", "a/x", "a-b"]

    async def go():
        async with open_store(store_url) as store:
            for k in keys:
                await store.put(k, b"")
            return [o.key for o in await listing(store)]
    got = run(go())
    if store_url.startswith("s3://"):
        assert got == ["a/x", "a-b", "a.c", "a0"]
    else:
        assert got == sorted(keys) == ["a-b", "a.c", "a/x", "a0"]


def test_list_many_keys_crosses_pages(store_url):
    # S3 returns at most 1000 keys per ListObjectsV2 page.
    n = 1100
    keys = [f"many/{i:05d}" for i in range(n)]

    async def go():
        async with open_store(store_url) as store:
            sem = asyncio.Semaphore(32)

            async def put(i, k):
                async with sem:
                    await store.put(k, b"v" * (i % 7))
            await asyncio.gather(*(put(i, k) for i, k in enumerate(keys)))
            got = await listing(store, "many/")
            assert [o.key for o in got] == keys
            assert [o.size for o in got] == [i % 7 for i in range(n)]
    run(go())


def test_delete_is_idempotent(store_url):
    async def go():
        async with open_store(store_url) as store:
            await store.put("d/x", b"data")
            await store.delete("d/x")
            assert await store.head("d/x") is None
            with pytest.raises(ObjectNotFound):
                await store.get("d/x")
            await store.delete("d/x")
            await store.delete("never/was")
            assert await listing(store, "d/") == []
    run(go())


@pytest.mark.parametrize("key", [
    "", "..", "a/../b", "./a", "/abs", "a//b", "a/", "a\x00b", "a\\b", "a\nb", "k" * 1025,
])
def test_invalid_keys_rejected(store_url, key):
    async def go():
        async with open_store(store_url) as store:
            for call in (lambda: store.put(key, b"x"), lambda: store.get(key),
                         lambda: store.head(key), lambda: store.delete(key)):
                with pytest.raises(InvalidName):
                    await call()
            assert await listing(store) == []
    run(go())


def test_concurrent_puts_and_gets(store_url):
    blobs = {f"c/{i:03d}": payload(1000 + i * 37, i) for i in range(64)}

    async def go():
        async with open_store(store_url) as store:
            assert all(await asyncio.gather(*(store.put(k, v) for k, v in blobs.items())))
            got = await asyncio.gather(*(store.get(k) for k in blobs))
            assert dict(zip(blobs, got)) == blobs
    run(go())


def test_store_opened_outside_event_loop(store_url):
    store = open_store(store_url)          # no loop running here

    async def go():
        async with store:
            await store.put("k", b"v")
            assert await store.get("k") == b"v"
    run(go())


# -- the retry wrapper ------------------------------------------------------------

def test_backoff_is_full_jitter_under_an_exponential_cap():
    policy = RetryPolicy(attempts=10, base=0.1, cap=2.0)
    rng = random.Random(7)
    for retry in range(9):
        bound = min(2.0, 0.1 * 2 ** retry)
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound   # spread, not fixed
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_retry_store_limits_concurrency(tmp_path):
    class CountingStore(LocalStore):
        in_flight = peak = 0

        async def put(self, key, data, *, if_absent=False):
            CountingStore.in_flight += 1
            CountingStore.peak = max(CountingStore.peak, CountingStore.in_flight)
            try:
                await asyncio.sleep(0.01)       # hold the slot so calls overlap
                return await super().put(key, data, if_absent=if_absent)
            finally:
                CountingStore.in_flight -= 1

    async def go(limit):
        CountingStore.peak = 0
        store = RetryStore(CountingStore(tmp_path / f"s{limit}"), max_concurrency=limit)
        await asyncio.gather(*(store.put(f"k{i}", b"x") for i in range(12)))
        return CountingStore.peak, store.metrics()

    peak, metrics = run(go(3))
    assert peak == 3
    assert metrics["put"] == {"requests": 12, "retries": 0, "errors": 0, "bytes_in": 0, "bytes_out": 12}
    assert run(go(100))[0] == 12


class FlakyStore(LocalStore):
    """A real local store that fails its first `failures` puts and, once,
    its listing after `list_fail_at` keys, with TransientStoreError: the
    retry wrapper's logic, without a server."""

    def __init__(self, root, failures=0, list_fail_at=None):
        super().__init__(root)
        self.failures, self.list_fail_at = failures, list_fail_at
        self.put_attempts = 0

    async def put(self, key, data, *, if_absent=False):
        self.put_attempts += 1
        if self.put_attempts <= self.failures:
            raise TransientStoreError(f"put {key}: 503 SlowDown (injected)")
        return await super().put(key, data, if_absent=if_absent)

    async def list(self, prefix=""):
        n = 0
        async for info in super().list(prefix):
            if n == self.list_fail_at:
                self.list_fail_at = None
                raise TransientStoreError("list: connection reset (injected)")
            n += 1
            yield info


def test_retry_store_retries_transient_errors(tmp_path):
    async def go(failures, attempts):
        inner = FlakyStore(tmp_path / f"s{failures}-{attempts}", failures=failures)
        store = RetryStore(inner, policy=RetryPolicy(attempts=attempts, base=0.001, cap=0.01))
        try:
            return await store.put("k", b"abc"), inner.put_attempts, store.metrics()["put"]
        except RetriesExhausted as e:
            return e, inner.put_attempts, store.metrics()["put"]

    ok, tries, m = run(go(failures=3, attempts=4))
    assert ok is True and tries == 4
    assert m == {"requests": 1, "retries": 3, "errors": 0, "bytes_in": 0, "bytes_out": 3}
    error, tries, m = run(go(failures=5, attempts=3))
    assert isinstance(error, RetriesExhausted) and isinstance(error.cause, TransientStoreError)
    assert str(error).startswith("put k: 503 SlowDown (injected) (gave up after 3 attempts in ")
    assert tries == 3 and m["retries"] == 2 and m["errors"] == 1


def test_retry_store_relists_without_repeats(tmp_path):
    keys = [f"k/{i:03d}" for i in range(50)]

    async def go():
        inner = FlakyStore(tmp_path / "s", list_fail_at=20)
        for k in keys:
            await inner.put(k, b"")
        store = RetryStore(inner, policy=RetryPolicy(base=0.001))
        return [o.key for o in await listing(store, "k/")], store.metrics()["list"]
    got, m = run(go())
    assert got == keys
    assert m["retries"] == 1 and m["errors"] == 0


def test_retry_store_counts_errors_not_misses(tmp_path):
    async def go():
        store = RetryStore(LocalStore(tmp_path / "s"))
        await store.put("k", b"abc")
        assert await store.get("k", 1) == b"bc"
        with pytest.raises(ObjectNotFound):
            await store.get("nope")
        with pytest.raises(InvalidName):
            await store.get("../x")
        return store.metrics()
    m = run(go())
    assert m["get"] == {"requests": 3, "retries": 0, "errors": 1, "bytes_in": 2, "bytes_out": 0}
    assert m["total"]["requests"] == 4 and m["total"]["bytes_out"] == 3


# -- S3 only --------------------------------------------------------------------

def test_s3_url_parsing():
    from ingest.stores.s3 import parse_s3_url
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    for bad in ["s3:///prefix", "s3://bucket/../x", "s3://bucket/a//b", "s3://bucket/p?x=1"]:
        with pytest.raises(StoreError):
            parse_s3_url(bad)



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.s3
def test_s3_open_store_wraps_with_retries(s3_url):
    from ingest.stores.s3 import S3Store
    store = open_store(s3_url)
    assert isinstance(store, RetryStore) and isinstance(store.inner, S3Store)
    assert store.inner.bucket == s3_url[5:].split("/")[0] and store.inner.prefix == "store/"
    assert store.url == s3_url + "/"


@pytest.mark.s3
def test_s3_seaweedfs_honours_if_none_match(s3_url, seaweedfs):
    """Measured, not assumed: the probe finds SeaweedFS refuses a second
    If-None-Match write with 412, and cleans up after itself."""
    async def go():
        async with open_store(s3_url) as store:
            assert store.inner.conditional_put is None
            assert await store.put("k", b"1", if_absent=True) is True
            assert store.inner.conditional_put is True
            return await listing(store)
    assert run(go()) == [ObjectInfo("k", 1)]
    bucket = s3_url[5:].split("/")[0]
    assert seaweedfs.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 1


@pytest.mark.s3
def test_s3_if_absent_race_between_clients(s3_url):
    """Separate stores (separate clients, as separate processes would be)
    racing on one key: the server's If-None-Match leaves one winner."""
    bodies = [payload(5000, i) for i in range(3)]

    async def go():
        stores = [open_store(s3_url) for _ in bodies]
        try:
            won = await asyncio.gather(*(s.put("race", b, if_absent=True)
                                         for s, b in zip(stores, bodies)))
            return won, await stores[0].get("race")
        finally:
            for s in stores:
                await s.close()
    won, stored = run(go())
    assert won.count(True) == 1 and stored == bodies[won.index(True)]


@pytest.mark.s3
def test_s3_head_then_put_fallback(s3_url):
    async def go():
        async with open_store(s3_url, conditional_put=False) as store:
            assert await store.put("k", b"first", if_absent=True) is True
            assert await store.put("k", b"second", if_absent=True) is False
            assert await store.get("k") == b"first"
            assert store.inner.conditional_put is False
    run(go())


@pytest.mark.s3
def test_s3_head_then_put_fallback_with_parts(s3_url):
    """The fallback's PUT after its HEAD reads the parts from the start."""
    parts = [b"first ", memoryview(bytearray(payload(2 << 20, 3))), b""]
    want = b"".join(bytes(p) for p in parts)

    async def go():
        async with open_store(s3_url, conditional_put=False) as store:
            assert await store.put("k", parts, if_absent=True) is True
            assert await store.put("k", [b"second"], if_absent=True) is False
            assert await store.get("k") == want
    run(go())


@pytest.mark.s3
@pytest.mark.parametrize("fast_requests", [True, False], ids=["signed-here", "botocore"])
def test_s3_put_of_parts_copies_no_whole_body(s3_url, fast_requests):
    """48 MiB of parts go out without a buffer anywhere near their size:
    no join, and no BytesIO copy in aiohttp (a bytes body costs one),
    either way a pack goes."""
    block = payload(4 << 20, 4)
    parts = [memoryview(block)] * 12

    async def go():
        async with open_store(s3_url, fast_requests=fast_requests) as store:
            await store.put("warm", b"x")           # client, connection pool, probe: not measured
            tracemalloc.start()
            try:
                assert await store.put("big", parts, if_absent=True) is True
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert await store.get("big") == block * 12
            return peak
    peak = run(go())
    assert peak < (8 << 20), f"peak {peak / (1 << 20):.1f} MiB traced during a 48 MiB put"


@pytest.mark.s3
@pytest.mark.parametrize("fast_requests", [True, False], ids=["signed-here", "botocore"])
def test_s3_put_of_parts_retried_after_server_killed_mid_body(s3_url, seaweedfs, monkeypatch,
                                                               fast_requests):
    """The server dies (SIGKILL) with half the body sent; the put retries
    until it is back and stores every byte: each attempt reads the parts
    from the start, and the server kept nothing of the torn request.  Both
    ways a large body goes: our own signed request (the default) and
    botocore's."""
    from ingest.stores import s3, s3fast
    parts = [payload(5 << 20, 5), b"", bytearray(payload(7 << 20 | 3, 6)),
             memoryview(payload(9 << 20, 7))[1:]]
    want = b"".join(bytes(p) for p in parts)
    reached, killed = threading.Event(), threading.Event()
    real_read = s3.PartsReader.read
    real_pieces = s3fast._pieces

    def read(self, size=-1):
        # aiohttp streams the body from the default executor; botocore's
        # checksum and signing reads run on the event loop's thread
        if (threading.current_thread() is not threading.main_thread()
                and self.tell() >= (8 << 20) and not reached.is_set()):
            reached.set()
            killed.wait(60)
        return real_read(self, size)

    async def pieces(views):
        sent = 0
        async for piece in real_pieces(views):
            if sent >= (8 << 20) and not reached.is_set():
                reached.set()
                await asyncio.to_thread(killed.wait, 60)
            sent += piece.nbytes
            yield piece
    monkeypatch.setattr(s3.PartsReader, "read", read)
    monkeypatch.setattr(s3fast, "_pieces", pieces)
    policy = RetryPolicy(attempts=40, base=0.05, cap=0.5)

    async def go():
        async with open_store(s3_url, retry=policy, fast_requests=fast_requests) as store:
            await store.put("warm", b"x")
            put = asyncio.create_task(store.put("k", parts, if_absent=True))
            try:
                assert await asyncio.to_thread(reached.wait, 60), "the body was never streamed"
                seaweedfs.stop()
            finally:
                killed.set()
            try:
                while store.metrics()["put"]["retries"] < 1 and not put.done():
                    await asyncio.sleep(0.01)
            finally:
                await asyncio.to_thread(seaweedfs.start)
            assert await put is True
            assert (store.inner._fast is not None) is fast_requests   # no hand-over either way
            return await store.get("k"), store.metrics()["put"]
    got, m = run(go())
    assert len(got) == len(want) and got == want
    assert m["retries"] >= 1 and m["errors"] == 0


@pytest.mark.s3
def test_s3_fast_requests_agree_with_botocore(s3_url):
    """Objects written by our own signed requests read back through botocore
    and the other way round, under keys that need escaping; range reads,
    HEAD, missing keys, If-None-Match and a read past the end answer alike."""
    keys = ["plain", "sp ace/plus+sign", "pct%25/raw%", "tilde~(paren)!*'", "ünï/キー", "a=b&c;d,e"]
    bodies = {k: payload(100 + 37 * i, i) for i, k in enumerate(keys)}

    async def go():
        async with open_store(s3_url) as fast, open_store(s3_url, fast_requests=False) as boto:
            await fast.put("warm", b"")
            await boto.put("warm", b"")
            assert fast.inner._fast is not None and boto.inner._fast is None
            half = len(keys) // 2
            for k in keys[:half]:
                assert await fast.put(k, bodies[k], if_absent=True) is True
            for k in keys[half:]:
                assert await boto.put(k, bodies[k], if_absent=True) is True
            for k in keys:
                for a, b in ((fast, boto), (boto, fast)):
                    assert await a.get(k) == bodies[k]
                    assert await a.get(k, 5, 50) == bodies[k][5:50]
                    assert await a.get(k, len(bodies[k])) == b""
                    assert await a.head(k) == ObjectInfo(k, len(bodies[k]))
                    assert await a.put(k, b"other", if_absent=True) is False
            assert [o.key for o in await listing(fast)] == sorted(keys + ["warm"])
            for store in (fast, boto):
                with pytest.raises(ObjectNotFound):
                    await store.get("missing")
                assert await store.head("missing") is None
                assert await store.get("warm") == b""
            assert fast.inner._fast is not None and fast.inner._fast.proven   # nothing made it give up
    run(go())


def test_payload_digests_are_those_of_the_joined_body():
    import base64
    import hashlib
    import zlib
    from ingest.stores.s3fast import payload_digests
    parts = [payload(3 << 20, 1), b"", bytearray(payload(1001, 2)), memoryview(payload(70000, 3))[7:]]
    joined = b"".join(bytes(p) for p in parts)
    crc = base64.b64encode(zlib.crc32(joined).to_bytes(4, "big")).decode()
    assert payload_digests([memoryview(p) for p in parts]) == (hashlib.sha256(joined).hexdigest(), crc)
    assert payload_digests([memoryview(p) for p in parts], sha256=False) == (None, crc)


def _count_botocore(store, op: str) -> list:
    """Requests `op` botocore sends for this (connected) store, as they go."""
    sent: list = []
    store.inner._client.meta.events.register(f"before-send.s3.{op}",
                                             lambda request, **_: sent.append(request.url))
    return sent


@pytest.mark.s3
@pytest.mark.parametrize("signing", [None, True, False], ids=["as-botocore", "signed", "unsigned"])
def test_s3_large_puts_are_signed_here(s3_url, signing):
    """A pack-sized put of many parts goes out as our own signed request,
    not botocore's, its payload hashed off the event loop; with
    payload_signing False its signature leaves the SHA-256 out (the CRC32
    still goes), and every way reads back byte for byte."""
    from ingest.stores import s3fast
    parts = [payload(1 << 20, i) for i in range(5)] + [b"", memoryview(payload(3 << 20 | 5, 9))[3:]]
    want = b"".join(bytes(p) for p in parts)
    hashes: list[str] = []

    async def go():
        async with open_store(s3_url, payload_signing=signing) as store:
            await store.put("warm", b"x")
            fast = store.inner._fast
            assert fast is not None and fast.signs_payload is (signing is not False)
            real_sign = fast._sign
            fast._sign = lambda m, p, h, ph, c: (m == "PUT" and hashes.append(ph)
                                                 or real_sign(m, p, h, ph, c))
            boto = _count_botocore(store, "PutObject")
            assert await store.put("big", parts) is True
            assert await store.put("big2", parts, if_absent=True) is True
            assert await store.put("big2", parts, if_absent=True) is False
            # (the probe of If-None-Match is botocore's, under .ingest-probe/)
            assert [u for u in boto if "/big" in u] == [] and store.inner._fast is fast
            return await store.get("big"), await store.get("big2")
    assert run(go()) == (want, want)
    import hashlib
    sha = hashlib.sha256(want).hexdigest()
    assert hashes == [sha if signing is not False else s3fast.UNSIGNED_PAYLOAD] * 3


def test_s3_payload_signing_from_the_environment(monkeypatch):
    """$INGEST_S3_PAYLOAD_SIGNING sets the default (the CLI and the daemon
    take no S3 options); an explicit argument wins; a bad value is an error
    that names the variable."""
    from ingest.stores.s3 import S3Store
    for value, want in (("", None), ("auto", None), ("false", False), ("0", False),
                        ("True", True), ("yes", True)):
        monkeypatch.setenv("INGEST_S3_PAYLOAD_SIGNING", value)
        store = S3Store("b")
        assert store.payload_signing is want, value
        # botocore's way takes the same setting
        assert (store._config.s3 or {}).get("payload_signing_enabled") is want, value
    monkeypatch.setenv("INGEST_S3_PAYLOAD_SIGNING", "false")
    assert S3Store("b", payload_signing=True).payload_signing is True
    monkeypatch.setenv("INGEST_S3_PAYLOAD_SIGNING", "maybe")
    with pytest.raises(StoreError, match="INGEST_S3_PAYLOAD_SIGNING='maybe'"):
        S3Store("b")


@pytest.mark.s3
def test_s3_unsigned_put_with_a_wrong_crc32_is_refused(s3_url, monkeypatch):
    """Without a signed SHA-256 the CRC32 is what protects the body on the
    way: the server checks it (SeaweedFS and S3 both), so a body that does
    not match it is refused and nothing is stored.  Through the store, the
    refused put goes again through botocore (as any refusal of ours does)
    and stores the body intact."""
    import botocore.exceptions as bce
    from ingest.stores import s3
    from ingest.stores.s3fast import payload_digests
    parts = [payload(2 << 20, 1), payload(1 << 20, 2)]
    views = [memoryview(p) for p in parts]

    async def go():
        async with open_store(s3_url, payload_signing=False) as store:
            await store.put("warm", b"x")
            fast = store.inner._fast
            with pytest.raises(bce.ClientError) as e:
                await fast.put_object(Key=store.inner.prefix + "big", Body=views,
                                      Digests=(None, "AAAAAA=="))
            assert e.value.response["Error"]["Code"] == "BadDigest"
            assert await store.head("big") is None
            monkeypatch.setattr(s3, "payload_digests",
                                lambda v, sha256=True: (None, "AAAAAA=="))
            assert await store.put("big", parts) is True
            assert store.inner._fast is None
            return await store.get("big")
    assert run(go()) == b"".join(parts)
    assert payload_digests(views, sha256=False)[1] != "AAAAAA=="


@pytest.mark.s3
@pytest.mark.parametrize("size", [4, 3 << 20], ids=["small", "pack"])
def test_s3_fast_requests_give_way_to_botocore_when_refused(s3_url, size):
    """A request of ours the server refuses (here: signed with a wrong
    secret, as a region or signature botocore would have got right) is sent
    again through botocore, which succeeds, and botocore carries on alone;
    a pack-sized body too (sent after the server's 100 Continue)."""
    class WrongSecret:
        def __init__(self, creds):
            self.creds = creds

        async def get_frozen_credentials(self):
            c = await self.creds.get_frozen_credentials()
            return type(c)(c.access_key, c.secret_key + "x", c.token)

    async def go():
        async with open_store(s3_url) as store:
            await store.put("warm", b"w")
            fast = store.inner._fast
            assert fast is not None
            fast._credentials = WrongSecret(fast._credentials)
            return await _handed_over_to_botocore(store, [payload(size - size // 3, 1),
                                                          payload(size // 3, 2)])
    m = run(go())
    assert m["total"]["errors"] == 0 and m["total"]["retries"] == 0


async def _handed_over_to_botocore(store, body=(b"data",)) -> dict:
    """An if-absent put (of `body`'s parts) and a get that the signed path
    gives to botocore: both succeed, and botocore keeps the store; its
    metrics."""
    assert await store.put("k", list(body), if_absent=True) is True
    assert store.inner._fast is None
    assert await store.get("k") == b"".join(body)
    return store.metrics()


@pytest.mark.s3
def test_s3_fast_requests_that_never_connected_give_way_to_botocore(s3_url):
    """Our requests fail to connect before any of them worked (as a proxy
    or a CA bundle only botocore knows would make them): the request goes
    through botocore, and so does everything after.  Once ours have
    worked, a connection failure is the server's and is raised (the fault
    tests kill the server under a proven fast path)."""
    async def go():
        async with open_store(s3_url) as store:
            await store.inner._s3("put")           # connected, no request of ours yet
            fast = store.inner._fast
            assert fast is not None and not fast.proven
            fast._host = f"127.0.0.1:{_free_port()}"      # nothing listens there
            return await _handed_over_to_botocore(store)
    m = run(go())
    assert m["total"]["errors"] == 0 and m["total"]["retries"] == 0


@pytest.mark.s3
def test_s3_fast_requests_stay_off_under_a_proxy(s3_url, monkeypatch):
    """With a proxy in the environment every request is botocore's, which
    honours it (this one is for https only, so the http endpoint is reached
    directly either way)."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_free_port()}")

    async def go():
        async with open_store(s3_url) as store:
            assert await store.put("k", b"data") is True
            assert await store.get("k") == b"data"
            return store.inner._fast
    assert run(go()) is None


@pytest.mark.s3
def test_s3_prefix_isolates_stores(s3_url):
    bucket_url = s3_url.rsplit("/", 1)[0]

    async def go():
        async with open_store(s3_url) as inside, open_store(bucket_url) as root, \
                open_store(bucket_url + "/store2") as sibling:
            await inside.put("a/k", b"in")
            await root.put("outside", b"out")
            await sibling.put("a/k", b"sib")
            assert await listing(inside) == [ObjectInfo("a/k", 2)]
            assert [o.key for o in await listing(root)] == ["outside", "store/a/k", "store2/a/k"]
            assert await root.get("store/a/k") == b"in"
            assert await inside.head("outside") is None
    run(go())


@pytest.mark.s3
@pytest.mark.parametrize("variable, value, code", [
    ("AWS_SECRET_ACCESS_KEY", "wrong-secret", "SignatureDoesNotMatch"),
    ("AWS_ACCESS_KEY_ID", "no-such-key", "InvalidAccessKeyId"),
])
def test_s3_bad_credentials_are_a_clear_error(s3_url, monkeypatch, variable, value, code):
    from ingest.stores.s3 import AccessDenied
    monkeypatch.setenv(variable, value)

    async def go():
        async with open_store(s3_url) as store:
            with pytest.raises(AccessDenied, match=f"put {s3_url}/chunks/x: access denied \\({code}\\)"):
                await store.put("chunks/x", b"data")
            with pytest.raises(AccessDenied, match="check the AWS credentials"):
                await store.head("chunks/x")
            return store.metrics()
    m = run(go())
    assert m["total"]["retries"] == 0 and m["total"]["errors"] == 2     # not retried


@pytest.mark.s3
def test_s3_missing_bucket_is_a_clear_error(seaweedfs):
    from ingest.stores.s3 import BucketNotFound
    name = "t-no-such-bucket-here"

    async def go():
        async with open_store(f"s3://{name}/p") as store:
            for call in (lambda: store.put("k", b"x"), lambda: store.get("k"), lambda: listing(store)):
                with pytest.raises(BucketNotFound, match=f"bucket '{name}' does not exist at {seaweedfs.endpoint}"):
                    await call()
            return store.metrics()
    m = run(go())
    assert m["total"]["retries"] == 0
    # and the failed put did not create it as a side effect
    assert name not in [b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]]


@pytest.mark.s3
def test_s3_unreachable_endpoint_fails_after_retries(s3_url):
    endpoint = f"http://127.0.0.1:{_free_port()}"      # nothing listens there

    async def go():
        store = open_store(s3_url, endpoint_url=endpoint,
                           retry=RetryPolicy(attempts=3, base=0.01, cap=0.05))
        async with store:
            with pytest.raises(RetriesExhausted) as info:
                await store.put("chunks/abc", b"data")
            return info.value, store.metrics()
    error, m = run(go())
    message = str(error)
    assert f"put {s3_url}/chunks/abc: cannot connect to {endpoint}: Connection refused" in message
    assert "gave up after 3 attempts" in message and "\n" not in message
    assert m["put"]["requests"] == 1 and m["put"]["retries"] == 2 and m["put"]["errors"] == 1


@pytest.mark.s3
def test_s3_put_retries_across_server_restart(s3_url, seaweedfs):
    """Kill the server, start a put, restart the server while the put backs
    off: the put succeeds, the data written before the crash is intact, and
    the retry counter shows the put did retry."""
    policy = RetryPolicy(attempts=40, base=0.05, cap=0.5)      # ~10 s budget, restart takes ~2 s
    before, after = payload(100_000, 1), payload(100_000, 2)

    async def go():
        async with open_store(s3_url, retry=policy) as store:
            await store.put("before", before)
            seaweedfs.stop()
            try:
                put = asyncio.create_task(store.put("after", after, if_absent=True))
                while store.metrics()["put"]["retries"] < 2 and not put.done():
                    await asyncio.sleep(0.01)
                assert not put.done()
            finally:
                await asyncio.to_thread(seaweedfs.start)
            assert await put is True
            assert await store.get("before") == before
            assert await store.get("after") == after
            return store.metrics()
    m = run(go())
    assert m["put"]["retries"] >= 2 and m["put"]["errors"] == 0 and m["put"]["requests"] == 2


@pytest.mark.s3
def test_s3_list_resumes_after_failure_mid_listing(s3_url, seaweedfs):
    n = 1500         # two ListObjectsV2 pages: the server dies between them
    keys = [f"k/{i:05d}" for i in range(n)]
    policy = RetryPolicy(attempts=40, base=0.05, cap=0.5)

    async def go():
        async with open_store(s3_url, retry=policy) as store:
            sem = asyncio.Semaphore(32)

            async def put(k):
                async with sem:
                    await store.put(k, b"")
            await asyncio.gather(*(put(k) for k in keys))
            got = []
            restart = None
            async for info in store.list("k/"):
                got.append(info.key)
                if len(got) == 1000:          # first page consumed; the next fetch fails
                    seaweedfs.stop()
                    restart = asyncio.create_task(_start_when_retrying(store, seaweedfs))
            await restart
            return got, store.metrics()
    got, m = run(go())
    assert got == keys                        # no key lost, none repeated
    assert m["list"]["retries"] >= 1 and m["list"]["errors"] == 0


async def _start_when_retrying(store, server):
    try:
        while store.metrics()["list"]["retries"] < 1:
            await asyncio.sleep(0.01)
    finally:
        await asyncio.to_thread(server.start)


def test_local_object_paths_escape_each_component(tmp_path):
    """An object's file is its key's components, '%' escaped in each, the
    last one ending in a lone '%' (the layout STORES.md gives); keys that
    could leave the store are refused before any path is made."""
    import os
    from ingest.errors import InvalidName
    from ingest.stores.local import LocalStore
    store = LocalStore(tmp_path / "s")
    root = str(tmp_path / "s")
    for key in ["a", "refs/a/b", "files/ab%cd", "x/%/y%", "refs/p/é/ü%25", "%tmp/x"]:
        parts = [p.replace("%", "%25") for p in key.split("/")]
        assert store._path_str(key) == os.path.join(root, *parts[:-1], parts[-1] + "%")
    for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/", "a\\b", "a\x00b"]:
        with pytest.raises(InvalidName):
            store._path_str(bad)
