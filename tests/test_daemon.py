"""The HTTP daemon, driven over real TCP on 127.0.0.1 with aiohttp's client.

Most tests run the daemon in this process on its own event loop thread (a
real listening socket, the real store); the shutdown test runs
`python -m ingest.cli serve` as a subprocess and signals it.  Every test
that touches data runs on both stores (`store_url`).  Waits poll the
daemon's /metrics up to a generous deadline; nothing asserts on time.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import blake3
import numpy as np
import pytest
import yarl

from ingest import Repository, StoreConfig
from ingest.compression import decompress
from ingest.daemon import Daemon, settings
from ingest.daemon import auth as auth_mod
from ingest.daemon.auth import TokenTable
from ingest.daemon.config import ConfigError, from_args
from ingest.daemon.ranges import Unsatisfiable, parse_range
from ingest.pack import check_frame
from ingest.stores import open_store
from ingest.sync import new_event_loop
from helpers import run

ADMIN, READER = "admin-token-0123456789", "reader-token-0123456789"
WRITER, NOBODY = "writer-token-0123456789", "nobody-token-0123456789"


def data(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


class Served:
    """A Daemon on its own loop thread, listening on a free loopback port."""

    def __init__(self, **overrides) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.settings = settings(port=0, **overrides)

        async def boot() -> Daemon:
            d = Daemon(self.settings)
            await d.start()
            return d
        self.daemon = self._call(boot())
        self.url = f"http://127.0.0.1:{self.daemon.port}"

    def _call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_ready(self) -> None:
        self._call(self.daemon.wait_ready(30))

    def stop(self) -> None:
        try:
            self._call(self.daemon.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture
def serve(store_url):
    """serve(**settings) -> a ready Served daemon on this test's store."""
    started: list[Served] = []

    def start(ready: bool = True, **overrides) -> Served:
        overrides.setdefault("store", store_url)
        s = Served(**overrides)
        started.append(s)
        if ready:
            s.wait_ready()
        return s
    yield start
    for s in started:
        s.stop()


def auth(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def url(base: str, raw: str) -> yarl.URL:
    return yarl.URL(base + raw, encoded=True)         # sent exactly as written


async def put(s: aiohttp.ClientSession, base: str, path: str, body, token=None, **kw):
    async with s.put(url(base, "/v1/files/" + path), data=body, headers=auth(token), **kw) as r:
        doc = await r.json() if r.content_type == "application/json" else None
        return r.status, doc, r.headers


def parse_metrics(text: str) -> dict[str, float]:
    """{'name{labels}': value}, checking every line is valid exposition format."""
    out = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)'
                        r'(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})?'
                        r' ([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN)$')
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = sample.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


async def metrics(s: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with s.get(base + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_metrics(await r.text())


async def wait_metric(s, base: str, name: str, pred, deadline: float = 30.0) -> dict:
    end = time.monotonic() + deadline
    while True:
        m = await metrics(s, base)
        if pred(m.get(name, 0.0)):
            return m
        assert time.monotonic() < end, f"{name} never satisfied the condition: {m.get(name)}"
        await asyncio.sleep(0.02)


async def store_keys(store_url: str, prefix: str) -> list[str]:
    store = open_store(store_url)
    try:
        return [o.key async for o in store.list(prefix)]
    finally:
        await store.close()


class Gate:
    """An upload body that sends `head`, waits until released, then sends `tail`."""

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head, self.tail = head, tail
        self.release = asyncio.Event()

    async def body(self):
        yield self.head
        await self.release.wait()
        yield self.tail


# -- upload, download, dedup -----------------------------------------------------

def test_upload_download_dedup(serve, store_url):
    d = serve()
    blob = data(3 << 20, 1)

    async def main():
        async with aiohttp.ClientSession() as s:
            st, r1, h = await put(s, d.url, "org/model/weights.bin", blob)
            assert st == 201 and h["ETag"] == f'"{r1["file_id"]}"'
            assert r1["size"] == len(blob) and r1["sha256"] == hashlib.sha256(blob).hexdigest()
            assert r1["new_bytes"] == len(blob) and r1["dedup_bytes"] == 0
            assert r1["stored_bytes"] > 0
            # Same bytes under another name, streamed in odd pieces: nothing new.
            pieces = (blob[i:i + 77777] for i in range(0, len(blob), 77777))

            async def gen():
                for p in pieces:
                    yield p
            st, r2, _ = await put(s, d.url, "org/copy/weights.bin", gen())
            assert st == 201 and r2["file_id"] == r1["file_id"]
            assert r2["new_bytes"] == 0 and r2["dedup_bytes"] == len(blob)
            assert r2["stored_bytes"] == 0
            # Overwriting a ref answers 200, and the ref follows the new bytes.
            edited = blob[:1000] + b"x" + blob[1001:]
            st, r3, _ = await put(s, d.url, "org/copy/weights.bin", edited)
            assert st == 200 and r3["file_id"] != r1["file_id"]
            assert 0 < r3["new_bytes"] < len(blob) // 4
            for path, want in (("org/model/weights.bin", blob),
                               ("org/copy/weights.bin", edited)):
                async with s.get(d.url + "/v1/files/" + path) as r:
                    assert r.status == 200 and r.headers["Content-Length"] == str(len(want))
                    assert await r.read() == want
            async with s.get(f"{d.url}/v1/objects/{r1['file_id']}") as r:
                assert r.status == 200 and "immutable" in r.headers["Cache-Control"]
                assert await r.read() == blob
            async with s.get(f"{d.url}/v1/objects/{'0' * 64}") as r:
                assert r.status == 404 and (await r.json())["error"] == "not_found"
            async with s.get(d.url + "/v1/files/org/missing.bin") as r:
                assert r.status == 404
            m = await metrics(s, d.url)
            assert m["ingest_upload_bytes_total"] == 3 * len(blob)
            assert m["ingest_upload_new_bytes_total"] == r1["new_bytes"] + r3["new_bytes"]
            new = m["ingest_upload_new_bytes_total"]
            assert m["ingest_upload_dedup_bytes_total"] == 3 * len(blob) - new
            assert m['ingest_uploads_total{result="stored"}'] == 3
            assert m["ingest_download_bytes_total"] >= 3 * len(blob)
    run(main())


def test_empty_file(serve):
    d = serve()

    async def main():
        async with aiohttp.ClientSession() as s:
            st, r, _ = await put(s, d.url, "ns/empty", b"")
            assert st == 201 and r["size"] == 0
            async with s.get(d.url + "/v1/files/ns/empty") as g:
                assert g.status == 200 and await g.read() == b""
            async with s.get(d.url + "/v1/files/ns/empty", headers={"Range": "bytes=0-"}) as g:
                assert g.status == 416 and g.headers["Content-Range"] == "bytes */0"
    run(main())


# -- ranges and conditional requests ---------------------------------------------

def test_parse_range_rules():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 5)
    assert parse_range("bytes=7-", 10) == (7, 10)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=-30", 10) == (0, 10)
    assert parse_range("bytes=5-400", 10) == (5, 10)
    assert parse_range("bytes=5-1", 10) is None                 # invalid: ignored
    assert parse_range("bytes=0-1,4-5", 10) is None             # several: whole file
    assert parse_range("items=0-1", 10) is None
    for bad in ("bytes=10-", "bytes=-0", "bytes=10-20"):
        with pytest.raises(Unsatisfiable):
            parse_range(bad, 10)


def test_ranges_and_conditionals(serve):
    d = serve()
    blob = data(3 << 20 | 12345, 2)
    n = len(blob)

    async def main():
        async with aiohttp.ClientSession() as s:
            _, r, _ = await put(s, d.url, "ns/r.bin", blob)
            etag = f'"{r["file_id"]}"'
            for base in (d.url + "/v1/files/ns/r.bin", f"{d.url}/v1/objects/{r['file_id']}"):
                cases = [("bytes=0-0", 0, 1), ("bytes=100-199", 100, 200),
                         ("bytes=1048000-2097500", 1048000, 2097501),     # across frames
                         (f"bytes={n - 10}-", n - 10, n), ("bytes=-500", n - 500, n),
                         (f"bytes=-{n + 10}", 0, n), (f"bytes=10-{n + 100}", 10, n)]
                for spec, a, b in cases:
                    async with s.get(base, headers={"Range": spec}) as g:
                        assert g.status == 206, spec
                        assert g.headers["Content-Range"] == f"bytes {a}-{b - 1}/{n}", spec
                        assert g.headers["Content-Length"] == str(b - a)
                        assert await g.read() == blob[a:b], spec
                for spec in (f"bytes={n}-", "bytes=-0", f"bytes={n + 5}-{n + 9}"):
                    async with s.get(base, headers={"Range": spec}) as g:
                        assert g.status == 416, spec
                        assert g.headers["Content-Range"] == f"bytes */{n}"
                for spec in ("bytes=5-1", "bytes=0-1,4-5", "items=0-1", "bytes=abc"):
                    async with s.get(base, headers={"Range": spec}) as g:
                        assert g.status == 200, spec
                        assert len(await g.read()) == n
                async with s.get(base, headers={"Range": "bytes=0-9", "If-Range": etag}) as g:
                    assert g.status == 206 and await g.read() == blob[:10]
                async with s.get(base, headers={"Range": "bytes=0-9", "If-Range": '"other"'}) as g:
                    assert g.status == 200 and len(await g.read()) == n
                async with s.head(base, headers={"Range": "bytes=0-9"}) as g:
                    assert g.status == 200 and g.headers["Content-Length"] == str(n)
                    assert g.headers["ETag"] == etag and g.headers["Accept-Ranges"] == "bytes"
                    assert await g.read() == b""
                for inm, want in ((etag, 304), (f"W/{etag}", 304), ('"x", ' + etag, 304),
                                  ("*", 304), ('"other"', 200)):
                    async with s.get(base, headers={"If-None-Match": inm}) as g:
                        assert g.status == want, inm
                        assert g.headers["ETag"] == etag
                        body = await g.read()
                        assert body == (b"" if want == 304 else blob)
            digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
            async with s.head(d.url + "/v1/files/ns/r.bin") as g:
                assert g.headers["Repr-Digest"] == f"sha-256=:{digest}:"
                assert g.headers["Cache-Control"] == "no-cache" and "Last-Modified" in g.headers
    run(main())


# -- listing, delete, reconstruction ---------------------------------------------

def test_listing_pagination_and_delete(serve):
    d = serve()
    names = ["d/f0", "d/f1", "d/f2", "d/sub/f3", "e/g0", "top", "top2"]

    async def main():
        async with aiohttp.ClientSession() as s:
            for i, name in enumerate(names):
                assert (await put(s, d.url, f"lst/{name}", data(1000 + i, i)))[0] == 201
            assert (await put(s, d.url, "lst2/other", b"x"))[0] == 201

            async def pages(path: str, limit: int) -> list[list[str]]:
                out, cursor = [], None
                while True:
                    q = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
                    async with s.get(d.url + path, params=q) as r:
                        assert r.status == 200
                        doc = await r.json()
                    out.append([f["path"] for f in doc["files"]])
                    for f in doc["files"]:
                        assert len(f["file_id"]) == 64 and f["size"] >= 1000
                    cursor = doc["next_cursor"]
                    if cursor is None:
                        return out
                    assert len(out) < 20

            got = await pages("/v1/files/lst/", 2)
            assert [len(p) for p in got] == [2, 2, 2, 1]
            assert sum(got, []) == sorted(names)
            assert sum(await pages("/v1/files/lst", 3), []) == sorted(names)
            under_d = sum(await pages("/v1/files/lst/d/", 2), [])
            assert under_d == ["d/f0", "d/f1", "d/f2", "d/sub/f3"]
            assert await pages("/v1/files/nothing/", 5) == [[]]
            for q in ({"limit": "0"}, {"limit": "x"}, {"limit": "100000"}, {"cursor": "%%%"},
                      {"cursor": base64.urlsafe_b64encode(b"e/g0").decode()}):
                async with s.get(d.url + "/v1/files/lst/d/", params=q) as r:
                    assert r.status == 400, q
            async with s.delete(d.url + "/v1/files/lst/top") as r:
                assert r.status == 204
            async with s.get(d.url + "/v1/files/lst/top") as r:
                assert r.status == 404
            async with s.delete(d.url + "/v1/files/lst/top") as r:
                assert r.status == 404
            async with s.delete(d.url + "/v1/files/lst/d/") as r:
                assert r.status == 400
            async with s.get(d.url + "/v1/files/lst/top2") as r:
                assert r.status == 200
            assert "top" not in sum(await pages("/v1/files/lst/", 100), [])
    run(main())


def test_a_tree_stored_by_the_library_is_served(serve, store_url, tmp_path):
    """A directory put with put_tree is one tree ref (docs/FORMAT.md 9.1):
    the daemon lists and serves its files by name beside its own uploads,
    an upload replaces one of them, and a DELETE takes a name out of the
    tree."""
    src = tmp_path / "ns"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(data(5000, 1))
    (src / "sub" / "b.bin").write_bytes(data(7000, 2))

    async def store_tree():
        async with await Repository.open(store_url) as repo:
            await repo.put_tree([src])
    run(store_tree())
    d = serve()

    async def main():
        async with aiohttp.ClientSession() as s:
            async with s.get(d.url + "/v1/files/ns/sub/b.bin") as r:
                assert r.status == 200 and await r.read() == data(7000, 2)
            assert (await put(s, d.url, "ns/c.bin", b"uploaded"))[0] == 201
            pages, cursor = [], None
            while True:
                q = {"limit": "1", **({"cursor": cursor} if cursor else {})}
                async with s.get(d.url + "/v1/files/ns/", params=q) as r:
                    assert r.status == 200
                    doc = await r.json()
                pages.append([f["path"] for f in doc["files"]])
                cursor = doc["next_cursor"]
                if cursor is None:
                    break
            assert pages == [["a.bin"], ["c.bin"], ["sub/b.bin"]]
            async with s.get(d.url + "/v1/files/ns/sub/") as r:
                assert [f["path"] for f in (await r.json())["files"]] == ["sub/b.bin"]
            assert (await put(s, d.url, "ns/a.bin", b"replaced"))[0] in (200, 201)
            async with s.get(d.url + "/v1/files/ns/a.bin") as r:
                assert await r.read() == b"replaced"
            async with s.delete(d.url + "/v1/files/ns/sub/b.bin") as r:
                assert r.status == 204
            async with s.get(d.url + "/v1/files/ns/sub/b.bin") as r:
                assert r.status == 404
            async with s.delete(d.url + "/v1/files/ns/sub/b.bin") as r:
                assert r.status == 404
    run(main())


def test_reconstruction_matches_bytes(serve, store_url):
    d = serve()
    base = data(2 << 20, 3)
    blob = base[:700_000] + data(300_000, 4) + base      # shares most chunks with `base`

    async def main():
        async with aiohttp.ClientSession() as s:
            await put(s, d.url, "ns/base", base)
            _, r, _ = await put(s, d.url, "ns/blob", blob)
            fid = r["file_id"]
            async with s.get(f"{d.url}/v1/reconstruction/{fid}", params={"chunks": "1"}) as g:
                assert g.status == 200
                doc = await g.json()
            assert (doc["file_id"], doc["size"], doc["sha256"]) == (
                fid, len(blob), hashlib.sha256(blob).hexdigest())
            assert len(doc["packs"]) >= 2                         # its own pack and base's
            store = open_store(store_url)
            try:
                async def rebuild(doc) -> bytes:
                    out = bytearray()
                    first = doc["terms"][0]["file_range"][0]
                    for t in doc["terms"]:
                        assert t["file_range"][0] == first + len(out)     # contiguous, in order
                        f = doc["frames"][t["frame"]]
                        pack = doc["packs"][f["pack"]]
                        assert pack["key"] == "packs/" + pack["id"]
                        buf = await store.get(pack["key"], f["offset"], f["offset"] + f["length"])
                        codec = {"raw": 0, "zstd": 1, "zstd+bg2": 2, "zstd+bg4": 3}[f["codec"]]
                        raw = decompress(codec, check_frame(buf, f["raw_length"], codec, "t"),
                                         f["raw_length"])
                        a, b = t["raw_range"]
                        assert b - a == t["file_range"][1] - t["file_range"][0]
                        out += raw[a:b]
                        if "chunks" in doc:
                            pos = a
                            for i in range(*t["chunks"]):
                                k = i - doc["chunks"]["first"]
                                ln = doc["chunks"]["lengths"][k]
                                got = blake3.blake3(raw[pos:pos + ln]).hexdigest()
                                assert got == doc["chunks"]["ids"][k]
                                pos += ln
                            assert pos == b
                    return bytes(out)
                assert await rebuild(doc) == blob
                assert doc["terms"][0]["file_range"][0] == 0
                assert doc["terms"][-1]["file_range"][1] == len(blob)
                # A byte range: the terms cover it with whole chunks.
                async with s.get(f"{d.url}/v1/reconstruction/{fid}",
                                 params={"start": "1000000", "end": "1500000"}) as g:
                    part = await g.json()
                s0, e0 = part["terms"][0]["file_range"][0], part["terms"][-1]["file_range"][1]
                assert s0 <= 1_000_000 and e0 >= 1_500_000 and e0 - s0 < len(blob) // 2
                assert await rebuild(part) == blob[s0:e0]
            finally:
                await store.close()
            async with s.get(f"{d.url}/v1/reconstruction/{'1' * 64}") as g:
                assert g.status == 404
            async with s.get(f"{d.url}/v1/reconstruction/xyz") as g:
                assert g.status == 400
            async with s.get(f"{d.url}/v1/reconstruction/{fid}",
                             params={"start": "9", "end": "3"}) as g:
                assert g.status == 400
    run(main())


# -- who may do what -------------------------------------------------------------

def write_tokens(path: Path) -> Path:
    path.write_text(json.dumps({"tokens": [
        {"name": "admin", "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(),
         "read": ["*"], "write": ["*"]},
        {"name": "reader", "token": READER, "read": ["a"]},
        {"name": "writer", "token": WRITER, "write": ["a"]},
        {"name": "nobody", "token": NOBODY},
    ]}))
    path.chmod(0o600)
    return path


def test_auth(serve, tmp_path):
    d = serve(tokens=str(write_tokens(tmp_path / "tokens.json")))

    async def main():
        async with aiohttp.ClientSession() as s:
            st, r, _ = await put(s, d.url, "a/x", b"hello a", ADMIN)
            assert st == 201
            fid = r["file_id"]
            assert (await put(s, d.url, "b/x", b"hello b", ADMIN))[0] == 201
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                            {"Authorization": f"Basic {ADMIN}"}, {"Authorization": "Bearer"},
                            {"Authorization": f"Bearer {ADMIN}x"}):
                async with s.get(d.url + "/v1/files/a/x", headers=headers) as g:
                    assert g.status == 401, headers
                    assert g.headers["WWW-Authenticate"].startswith("Bearer")
                    assert (await g.json())["error"] == "unauthorized"
                async with s.put(d.url + "/v1/files/a/y", data=b"z", headers=headers) as g:
                    assert g.status == 401
            # 401 before anything is said about the path.
            async with s.get(url(d.url, "/v1/files/a/../x")) as g:
                assert g.status == 401
            # Expect: 100-continue is refused before the body is sent.
            async with s.put(d.url + "/v1/files/a/y", data=b"z" * 100000, expect100=True) as g:
                assert g.status == 401
            expect = [  # token, method, path, status
                (READER, "GET", "/v1/files/a/x", 200), (READER, "GET", "/v1/files/b/x", 403),
                (READER, "GET", "/v1/files/a/", 200), (READER, "GET", "/v1/files/b/", 403),
                (READER, "PUT", "/v1/files/a/new", 403), (READER, "DELETE", "/v1/files/a/x", 403),
                (READER, "GET", f"/v1/objects/{fid}", 200),
                (READER, "GET", f"/v1/reconstruction/{fid}", 200),
                (WRITER, "PUT", "/v1/files/a/new", 201), (WRITER, "PUT", "/v1/files/b/new", 403),
                (WRITER, "GET", "/v1/files/a/x", 403),            # write does not imply read
                (WRITER, "GET", f"/v1/objects/{fid}", 403),
                (WRITER, "DELETE", "/v1/files/a/new", 204),
                (NOBODY, "GET", "/v1/files/a/x", 403), (NOBODY, "PUT", "/v1/files/a/z", 403),
                (NOBODY, "GET", f"/v1/reconstruction/{fid}", 403),
                (ADMIN, "GET", "/v1/files/b/x", 200), (ADMIN, "DELETE", "/v1/files/b/x", 204),
            ]
            for token, method, path, want in expect:
                async with s.request(method, d.url + path, headers=auth(token),
                                     data=b"data" if method == "PUT" else None) as g:
                    assert g.status == want, (token, method, path, await g.text())
                    if want == 403:
                        assert (await g.json())["error"] == "forbidden"
            for path in ("/metrics", "/healthz", "/readyz", "/v1/openapi.yaml"):
                async with s.get(d.url + path) as g:
                    assert g.status == 200, path
            m = await metrics(s, d.url)
            assert m['ingest_http_requests_total{route="files",method="GET",status="401"}'] >= 5
    run(main())


def test_tokens_are_compared_in_constant_time(tmp_path, monkeypatch):
    table, warnings = TokenTable.load(str(write_tokens(tmp_path / "t.json")))
    assert warnings == []
    calls = []
    real = auth_mod.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)
    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    # A match on the first entry, on the last, and no match: every entry is
    # compared each time, always as two 32-byte digests, whatever was sent.
    for token, name in ((ADMIN, "admin"), (NOBODY, "nobody"), ("x" * 5000, None), ("", None)):
        calls.clear()
        p = table.lookup(token)
        assert (p.name if p else None) == name
        assert calls == [(32, 32)] * len(table)


def test_token_file_checks(tmp_path):
    def load(doc, mode=0o600):
        p = tmp_path / "t.json"
        p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
        p.chmod(mode)
        return TokenTable.load(str(p))
    for bad in ("not json", {"tokens": []}, {"tokens": [{"name": "x", "token": "short"}]},
                {"tokens": [{"name": "x", "sha256": "abc"}]},
                {"tokens": [{"name": "x", "token": READER, "sha256": "0" * 64}]},
                {"tokens": [{"name": "x", "token": READER, "read": ["../etc"]}]},
                {"tokens": [{"name": "x", "token": READER, "red": ["a"]}]},
                {"tokens": [{"name": "x", "token": READER}, {"name": "x", "token": WRITER}]}):
        with pytest.raises(ConfigError):
            load(bad)
    _, warnings = load({"tokens": [{"name": "x", "token": READER, "read": ["a"]}]}, 0o644)
    assert warnings and "chmod 600" in warnings[0]
    with pytest.raises(ConfigError, match="cannot read"):
        TokenTable.load(str(tmp_path / "missing.json"))


def test_settings_from_flags_and_environment(tmp_path):
    import argparse
    from ingest.daemon import add_arguments
    ap = argparse.ArgumentParser()
    ap.add_argument("--store")
    add_arguments(ap)
    env = {"INGEST_STORE": str(tmp_path), "INGEST_MAX_UPLOADS": "3", "INGEST_PORT": "9000",
           "INGEST_MAX_UPLOAD_SIZE": "2G"}
    s = from_args(ap.parse_args(["--port", "9100", "--idle-timeout", "5"]), env)
    assert (s.store, s.port, s.max_uploads, s.max_upload_size, s.idle_timeout) == (
        str(tmp_path), 9100, 3, 2 << 30, 5.0)
    with pytest.raises(ConfigError, match="INGEST_MAX_UPLOADS"):
        from_args(ap.parse_args([]), {**env, "INGEST_MAX_UPLOADS": "0"})
    # Without a token file only loopback is allowed.
    with pytest.raises(ConfigError, match="without a token file"):
        from_args(ap.parse_args(["--host", "0.0.0.0"]), env)
    s = from_args(ap.parse_args(["--host", "0.0.0.0", "--tokens", "t.json"]), env)
    assert s.host == "0.0.0.0" and not s.loopback_only
    assert from_args(ap.parse_args(["--host", "::1"]), env).loopback_only
    assert from_args(ap.parse_args([]), env).zstd_level is None      # the store's
    assert from_args(ap.parse_args([]), {**env, "INGEST_ZSTD_LEVEL": "1"}).zstd_level == 1
    assert from_args(ap.parse_args(["--zstd-level", "-3"]), env).zstd_level == -3
    for bad in ("23", "one"):
        with pytest.raises(ConfigError, match="INGEST_ZSTD_LEVEL"):
            from_args(ap.parse_args([]), {**env, "INGEST_ZSTD_LEVEL": bad})


def test_daemon_writes_at_its_zstd_level(serve, tmp_path):
    """--zstd-level reaches the engine: an upload's packs are those of a
    store made at that level (the daemon's store is at the default, 3)."""
    body = b"".join(b"%d,event %d\n" % (i, i % 977) for i in range(150_000))
    s = serve(zstd_level=1)

    async def go():
        async with aiohttp.ClientSession() as c:
            status, doc, _ = await put(c, s.url, "ns/rows.csv", body)
            assert status in (200, 201), doc
            async with c.get(s.url + "/v1/files/ns/rows.csv") as r:
                assert await r.read() == body
        async with await Repository.open(tmp_path / "lib", config=StoreConfig(zstd_level=1)) as repo:
            await repo.put_bytes(body, ref="rows.csv")
            return sorted([o.key async for o in repo.store.list("packs/")])
    mine = run(go())

    async def served_packs():
        return sorted([o.key async for o in s.daemon.repo.store.list("packs/")])
    assert s.daemon.repo.zstd_level == 1
    assert s._call(served_packs()) == mine


# -- bad names -------------------------------------------------------------------

BAD_PATHS = [
    "/v1/files/ns/../x", "/v1/files/ns/a/%2e%2e/x", "/v1/files/ns/a/%2E%2E", "/v1/files/%2e%2e/x",
    "/v1/files/../x", "/v1/files/ns/./a", "/v1/files/ns/a//b", "/v1/files//x",
    "/v1/files/ns/a%00b", "/v1/files/%00/x", "/v1/files/ns/a%0Ab", "/v1/files/ns/a%5Cb",
    "/v1/files/a%2Fb/x", "/v1/files/ns/%zz", "/v1/files/ns/%ff%fe",
    "/v1/files/ns/" + "x" * 300, "/v1/files/" + "n" * 200 + "/x",
    "/v1/files/ns/" + "/".join(["y" * 200] * 5),            # over 900 bytes in all
    "/v1/files/ns/" + "%25" * 100,                             # fits a URL, not a file name
]


def test_bad_paths_refused(serve, store_url):
    d = serve()

    async def main():
        async with aiohttp.ClientSession() as s:
            for raw in BAD_PATHS:
                for method in ("PUT", "GET", "DELETE"):
                    async with s.request(method, url(d.url, raw),
                                         data=b"payload" if method == "PUT" else None) as g:
                        assert g.status == 400, (method, raw, await g.text())
                        assert (await g.json())["error"] == "invalid_name"
            for raw in ("/v1/objects/..", "/v1/objects/%2e%2e", "/v1/reconstruction/" + "g" * 64):
                async with s.get(url(d.url, raw)) as g:
                    assert g.status in (400, 404), raw
            async with s.put(d.url + "/v1/files/ns/", data=b"x") as g:
                assert g.status == 400                  # a prefix is not a file name
            # Legal but unusual names work.
            st, _, _ = await put(s, d.url, "ns/%2Bplus%20space/%C3%A9t%C3%A9.bin", b"ok")
            assert st == 201
            async with s.get(d.url + "/v1/files/ns/+plus space/été.bin") as g:
                assert g.status == 200 and await g.read() == b"ok"
    run(main())
    assert run(store_keys(store_url, "refs/")) == ["refs/ns/+plus space/été.bin"]


# -- limits ----------------------------------------------------------------------

def test_max_upload_size(serve, store_url):
    d = serve(max_upload_size=1 << 20)

    async def main():
        async with aiohttp.ClientSession() as s:
            st, r, _ = await put(s, d.url, "ns/big", data(2 << 20))           # Content-Length
            assert st == 413 and r["error"] == "too_large"
            async with s.put(d.url + "/v1/files/ns/big", data=data(2 << 20), expect100=True) as g:
                assert g.status == 413

            async def chunks():                                              # no length given
                for i in range(4):
                    yield data(512 << 10, i)
            st, r, _ = await put(s, d.url, "ns/big", chunks())
            assert st == 413 and r["error"] == "too_large"
            st, _, _ = await put(s, d.url, "ns/fits", data(1 << 20, 9))
            assert st == 201
            async with s.get(d.url + "/v1/files/ns/big") as g:
                assert g.status == 404
            m = await metrics(s, d.url)
            assert m['ingest_uploads_total{result="too_large"}'] == 3
    run(main())
    assert run(store_keys(store_url, "refs/")) == ["refs/ns/fits"]


def test_overload_answers_503_with_retry_after(serve):
    d = serve(max_uploads=1, retry_after=7)

    async def main():
        async with aiohttp.ClientSession() as s:
            gate = Gate(data(100_000, 1), data(100_000, 2))
            first = asyncio.ensure_future(put(s, d.url, "ns/first", gate.body()))
            await wait_metric(s, d.url, "ingest_uploads_in_flight", lambda v: v == 1)
            st, r, h = await put(s, d.url, "ns/second", b"second")
            assert st == 503 and h["Retry-After"] == "7" and r["error"] == "uploads_busy"
            async with s.put(d.url + "/v1/files/ns/second", data=b"s" * 100000,
                             expect100=True) as g:
                assert g.status == 503 and g.headers["Retry-After"] == "7"
            # Reads are not uploads: still served.
            async with s.get(d.url + "/v1/files/ns/") as g:
                assert g.status == 200
            gate.release.set()
            st, r, _ = await first
            assert st == 201 and r["size"] == 200_000
            assert (await put(s, d.url, "ns/second", b"second"))[0] == 201
            m = await metrics(s, d.url)
            assert m['ingest_rejected_total{reason="uploads_busy"}'] == 2
    run(main())


def test_download_limit_and_stalled_reader(serve):
    d = serve(max_downloads=1, idle_timeout=1.0)
    blob = data(24 << 20, 6)            # more than loopback socket buffers hold

    async def main():
        async with aiohttp.ClientSession() as s:
            assert (await put(s, d.url, "ns/big", blob))[0] == 201
            async with aiohttp.ClientSession() as s2:
                stalled = await s2.get(d.url + "/v1/files/ns/big")   # headers read, body not
                assert stalled.status == 200
                await wait_metric(s, d.url, "ingest_downloads_in_flight", lambda v: v == 1)
                async with s.get(d.url + "/v1/files/ns/big") as g:
                    assert g.status == 503 and g.headers["Retry-After"] == "2"
                # The stalled reader is cut off after idle_timeout; the slot frees.
                await wait_metric(s, d.url, "ingest_downloads_in_flight", lambda v: v == 0)
                with pytest.raises(aiohttp.ClientPayloadError):
                    await stalled.read()
                stalled.release()
            async with s.get(d.url + "/v1/files/ns/big") as g:
                assert g.status == 200 and await g.read() == blob
            m = await metrics(s, d.url)
            assert m['ingest_rejected_total{reason="downloads_busy"}'] == 1
    run(main())


def raw_request(port: int, head: bytes, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head + body)
    return sock


def test_client_disconnect_mid_upload_leaves_nothing(serve, store_url):
    d = serve()
    port = d.daemon.port

    async def main():
        async with aiohttp.ClientSession() as s:
            # Chunked: three chunks of a longer body, then the socket closes.
            part = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in
                            (data(1 << 20, 1), data(1 << 20, 2), data(1 << 20, 3)))
            sock = raw_request(port, b"PUT /v1/files/ns/cut HTTP/1.1\r\nHost: x\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n", part)
            await wait_metric(s, d.url, "ingest_upload_bytes_total", lambda v: v >= 3 << 20)
            sock.close()
            gone = 'ingest_uploads_total{result="disconnected"}'
            await wait_metric(s, d.url, gone, lambda v: v == 1)
            # Content-Length announced, a tenth of it sent, then a half-close.
            sock = raw_request(port, b"PUT /v1/files/ns/cut2 HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 10000000\r\n\r\n", data(1 << 20, 4))
            await wait_metric(s, d.url, "ingest_uploads_in_flight", lambda v: v == 1)
            sock.shutdown(socket.SHUT_WR)
            m = await wait_metric(s, d.url, gone, lambda v: v == 2)
            sock.close()
            assert m["ingest_uploads_in_flight"] == 0
            assert m.get('ingest_uploads_total{result="stored"}', 0) == 0
            for name in ("cut", "cut2"):
                async with s.get(d.url + "/v1/files/ns/" + name) as g:
                    assert g.status == 404
            assert await store_keys(store_url, "refs/") == []
            assert await store_keys(store_url, "files/") == []
            # And the daemon goes on serving.
            blob = data(3 << 20, 1)
            st, r, _ = await put(s, d.url, "ns/after", blob)
            assert st == 201
            async with s.get(d.url + "/v1/files/ns/after") as g:
                assert await g.read() == blob
    run(main())


def test_stalled_upload_times_out(serve, store_url):
    d = serve(idle_timeout=0.5)

    async def main():
        sock = raw_request(d.daemon.port, b"PUT /v1/files/ns/stall HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Length: 5000\r\n\r\n", b"x" * 100)
        try:
            reply = await asyncio.to_thread(sock.recv, 4096)          # blocks until answered
        finally:
            sock.close()
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert await store_keys(store_url, "refs/") == []
    run(main())


# -- integrity -------------------------------------------------------------------

def test_damaged_pack_is_never_served_as_data(serve, store_url):
    d = serve()
    blob = data(24 << 20, 5)

    async def main():
        async with aiohttp.ClientSession() as s:
            _, r, _ = await put(s, d.url, "ns/f", blob)
            async with s.get(f"{d.url}/v1/reconstruction/{r['file_id']}") as g:
                doc = await g.json()
            assert len(doc["packs"]) == 1 and len(doc["frames"]) >= 2
            key = "packs/" + doc["packs"][0]["id"]
            store = open_store(store_url)       # the pack object itself, on either store
            try:
                pristine = await store.get(key)
            finally:
                await store.close()

            async def damage(frame: dict) -> None:
                raw = bytearray(pristine)
                raw[frame["offset"] + 24 + frame["length"] // 2] ^= 1    # past the frame header
                st = open_store(store_url)
                try:
                    await st.put(key, bytes(raw))                  # overwrite in place
                    assert await st.get(key) == bytes(raw)
                finally:
                    await st.close()
            # Frames sit in the pack in the order they were compressed, not
            # file order: the reconstruction says which one comes first.
            await damage(doc["frames"][doc["terms"][0]["frame"]])
            async with s.get(d.url + "/v1/files/ns/f") as g:
                assert g.status == 500
                err = await g.json()
                assert err["error"] == "integrity_error" and "integrity" in err["message"]
            # A frame far from the first in the file and in the pack: the
            # engine reads up to 8 MiB of back-to-back frames per request,
            # so this one is read after the status line went out.
            first = doc["frames"][doc["terms"][0]["frame"]]
            later = [doc["frames"][t["frame"]] for t in doc["terms"]
                     if t["file_range"][0] > len(blob) // 2
                     and abs(doc["frames"][t["frame"]]["offset"] - first["offset"]) > 10 << 20]
            assert later
            await damage(later[-1])
            # A daemon that has not read the file yet: one that has may hold
            # the later frame, decoded and checked before the damage, in its
            # frame cache, and serve those (right) bytes from there.
            fresh = serve()
            got = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                async with s.get(fresh.url + "/v1/files/ns/f") as g:
                    assert g.status == 200
                    async for block in g.content.iter_any():
                        got += block
            assert len(got) < len(blob) and blob.startswith(bytes(got))
    run(main())


# -- service endpoints, readiness ------------------------------------------------

def test_metrics_health_ready_openapi(serve):
    d = serve()

    async def main():
        async with aiohttp.ClientSession() as s:
            await put(s, d.url, "ns/a", data(100_000))
            async with s.get(d.url + "/healthz") as g:
                assert g.status == 200 and (await g.json())["status"] == "ok"
            async with s.get(d.url + "/readyz") as g:
                assert g.status == 200 and (await g.json())["ready"] is True
            async with s.get(d.url + "/v1/files/ns/a", headers={"X-Request-Id": "trace-42"}) as g:
                assert g.headers["X-Request-Id"] == "trace-42"
            m = await metrics(s, d.url)
            for name in ("ingest_upload_bytes_total", "ingest_upload_new_bytes_total",
                         "ingest_upload_stored_bytes_total", "ingest_index_chunks",
                         'ingest_store_requests_total{op="put"}',
                         'ingest_http_requests_total{route="files",method="PUT",status="201"}',
                         'ingest_http_request_duration_seconds_count{route="files",method="PUT"}',
                         "process_resident_memory_bytes"):
                assert m[name] > 0, name
            for name in ("ingest_upload_dedup_bytes_total", "ingest_uploads_in_flight",
                         'ingest_store_retries_total{op="get"}',
                         'ingest_store_errors_total{op="put"}'):
                assert m[name] == 0, name
            le_inf = 'ingest_http_request_duration_seconds_bucket{route="files",method="PUT",le="+Inf"}'
            assert m[le_inf] == 1
            assert m["ingest_ready"] == 1
            async with s.get(d.url + "/v1/openapi.yaml") as g:
                assert g.status == 200
                text = await g.text()
            async with s.post(d.url + "/v1/files/ns/a") as g:
                assert g.status == 405 and "PUT" in g.headers["Allow"]
            async with s.get(d.url + "/nothing/here") as g:
                assert g.status == 404 and (await g.json())["error"] == "not_found"
        return text

    text = run(main())
    import yaml   # in the test extras: this check must run in CI
    spec = yaml.safe_load(text)
    assert text == (Path(__file__).parent.parent / "ingest/daemon/openapi.yaml").read_text()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops
                  if m in ("get", "put", "delete", "head", "post", "patch")}
    served = set()
    for route in d.daemon.app.router.routes():
        path = route.resource.canonical
        if path == "/v1/files/{tail}":          # one route, two documented shapes
            path = "/v1/files/{namespace}/{path}"
            if route.method == "GET":
                served.add(("GET", "/v1/files/{namespace}/"))
        served.add((route.method, path))
    assert documented == served


@pytest.mark.s3
def test_not_ready_until_the_store_answers(s3_url):
    """Only an S3 store can be missing while the daemon runs: a bucket."""
    d = Served(store=s3_url.replace("s3://", "s3://no-such-bucket-"))

    async def main():
        async with aiohttp.ClientSession() as s:
            async with s.get(d.url + "/healthz") as g:
                assert g.status == 200
            end = time.monotonic() + 30
            while True:                           # until the first attempt has failed
                async with s.get(d.url + "/readyz") as g:
                    assert g.status == 503
                    reason = (await g.json())["reason"]
                if "cannot open the store" in reason:
                    break
                assert time.monotonic() < end, reason
                await asyncio.sleep(0.05)
            async with s.get(d.url + "/v1/files/ns/x") as g:
                assert g.status == 503 and "Retry-After" in g.headers
            m = await metrics(s, d.url)
            assert m["ingest_ready"] == 0
    try:
        run(main())
    finally:
        d.stop()


# -- the process: signals, logs --------------------------------------------------

def start_process(store_url: str, *args: str):
    """(process, port, its parsed log lines so far, set once it logs 'draining')."""
    proc = subprocess.Popen([sys.executable, "-m", "ingest.cli", "serve", "--store", store_url,
                             "--port", "0", *args], stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    port: list[int] = []
    seen = threading.Event()
    ready = threading.Event()
    draining = threading.Event()

    def read():
        for line in proc.stderr:
            try:
                rec = json.loads(line)
            except ValueError:
                rec = {"not_json": line}
            lines.append(rec)
            if rec.get("event") == "listening":
                port.append(rec["port"])
                seen.set()
            elif rec.get("event") == "ready":
                ready.set()
            elif rec.get("event") == "draining":
                draining.set()
        seen.set()
    threading.Thread(target=read, daemon=True).start()
    assert seen.wait(60) and port, f"daemon did not start: {lines}"
    assert ready.wait(60), f"daemon not ready: {lines}"
    return proc, port[0], lines, draining


def test_sigterm_drains_an_upload_then_exits_0(store_url):
    proc, port, lines, draining = start_process(store_url, "--drain-timeout", "60")
    base = f"http://127.0.0.1:{port}"
    head, tail = data(2 << 20, 7), data(2 << 20, 8)
    try:
        async def main():
            async with aiohttp.ClientSession() as s:
                gate = Gate(head, tail)
                upload = asyncio.ensure_future(put(s, base, "ns/drained", gate.body()))
                await wait_metric(s, base, "ingest_upload_bytes_total", lambda v: v >= len(head))
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(draining.wait, 30)
                with pytest.raises(OSError):                # no longer listening
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                gate.release.set()
                return await upload
        st, r, _ = run(main())
        assert st == 201 and r["size"] == len(head) + len(tail)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def check():
        async with await Repository.open(store_url, create=False) as repo:
            assert await repo.read("ns/drained") == head + tail
    run(check())
    assert not [rec for rec in lines if "not_json" in rec]     # every line is one JSON object
    events = [rec.get("event") for rec in lines]
    assert "open_access" in events                # no token file: says so
    assert events.index("draining") < events.index("stopped")
    req = [rec for rec in lines if rec.get("event") == "request" and rec["method"] == "PUT"]
    assert req and req[0]["status"] == 201 and req[0]["bytes_in"] == len(head) + len(tail)
    assert req[0]["path"] == "/v1/files/ns/drained" and len(req[0]["request_id"]) == 32


def test_file_ingested_without_sha256_is_served_without_digest(serve, store_url):
    blob = data(300_000, 9)

    async def ingest():
        async with await Repository.open(store_url) as repo:
            return await repo.put_bytes(blob, ref="ns/nosha.bin", sha256=False)
    fid = asyncio.run(ingest()).file_id
    d = serve()

    async def main():
        async with aiohttp.ClientSession() as s:
            async with s.get(d.url + "/v1/files/ns/nosha.bin") as g:
                assert g.status == 200 and await g.read() == blob
                assert "Repr-Digest" not in g.headers
                assert g.headers["X-Ingest-File-Id"] == fid
            async with s.get(f"{d.url}/v1/reconstruction/{fid}") as g:
                assert g.status == 200
                assert (await g.json())["sha256"] is None
    run(main())
