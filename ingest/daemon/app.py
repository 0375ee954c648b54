"""The daemon: HTTP routes over one Repository.

    PUT    /v1/files/{namespace}/{path}     stream the body into the pipeline, set the ref
    GET    /v1/files/{namespace}/{path}     the file (Range, ETag, If-None-Match); HEAD too
    DELETE /v1/files/{namespace}/{path}     remove the ref
    GET    /v1/files/{namespace}/[prefix/]  list refs, a page at a time
    GET    /v1/objects/{file_id}            a file by id (immutable); HEAD too
    GET    /v1/reconstruction/{file_id}     the manifest as JSON
    GET    /v1/openapi.yaml, /metrics, /healthz, /readyz

docs/DAEMON.md describes the behaviour; openapi.yaml the exact interface.
Each request is one JSON log line on the `ingest.daemon.access` logger.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import os
import resource
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from importlib import resources

from aiohttp import web

from ..errors import IngestError, IntegrityError, InvalidName, NotFound, StoreError
from ..refs import PREFIX as REFS_PREFIX
from ..refs import TreeRef, decode_ref
from ..refs import key as ref_key
from ..repository import Repository, stream_reader
from ..stores import ObjectNotFound, Store, open_store
from ..stores.retry import RetriesExhausted, RetryStore, TransientStoreError
from .auth import ANONYMOUS, Principal, TokenTable, bearer
from .body import Body, BodyError, Watchdog
from .config import ConfigError, Settings
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Counter, Gauge, Registry
from .names import check_ref, parse_file_id, parse_files_target
from .ranges import Unsatisfiable, if_range_holds, none_match, parse_range
from .reconstruction import reconstruction

log = logging.getLogger("ingest.daemon")
access_log = logging.getLogger("ingest.daemon.access")

FILES = "/v1/files/"
DEFAULT_PAGE = 100
LIST_FETCHES = 16            # ref objects read at once for a listing page
READY_PROBE_TIMEOUT = 5.0
OCTET = "application/octet-stream"


def openapi_text() -> bytes:
    return resources.files(__package__).joinpath("openapi.yaml").read_bytes()


@dataclass
class _Request:
    """What the daemon keeps about a request, for its log line and metrics."""
    rid: str = ""
    route: str = "other"
    principal: str = "-"
    bytes_in: int = 0
    aborted: str | None = None
    client_gone: bool = False
    no_continue: bool = False          # Expect: 100-continue answered without a 100
    log: dict = field(default_factory=dict)


_STATE = web.RequestKey("ingest", _Request) if hasattr(web, "RequestKey") else "ingest"


def _state(request: web.Request) -> _Request:
    # Created on first use: the Expect handler runs before the middleware.
    st = request.get(_STATE)
    if st is None:
        st = request[_STATE] = _Request()
    return st


class HTTPError(Exception):
    """An error answer; `close`: end the connection after it (the body was
    not read, or the client is gone)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.close = close


def _json_error(status: int, code: str, message: str, headers=None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status,
                             headers=headers or {})


def _store_status(e: StoreError) -> tuple[int, str]:
    if isinstance(e, (RetriesExhausted, TransientStoreError)):
        return 503, "store_unavailable"
    return 502, "store_error"


def _listing(ns: str, prefix: str, refs, last: str | None) -> web.Response:
    """A listing page: its refs' files, and a cursor after `last` (None: no more)."""
    return web.json_response({
        "namespace": ns, "prefix": prefix,
        "files": [{"path": r.name[len(ns) + 1:], "file_id": r.file_id, "size": r.size,
                   "sha256": r.sha256, "time": r.time} for r in refs],
        "next_cursor": _cursor(last) if last is not None else None})


def _cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _uncursor(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, ValueError):
        raise InvalidName("malformed cursor") from None


async def _quiet_flush(session) -> None:
    try:
        await session.flush()
    except Exception as e:              # noqa: BLE001 -- the uploads saw the error
        log.warning("write session flush failed: %s", e,
                    extra={"fields": {"event": "session_flush_failed"}})


def _innermost(store):
    while hasattr(store, "inner"):
        store = store.inner
    return store


class Daemon:
    """The HTTP service over one store.  `await start()`, then `await stop()`
    (drains requests in flight for up to settings.drain_timeout)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens: TokenTable | None = None
        self.repo: Repository | None = None
        self.open_error: str | None = "opening the store"
        self.draining = False
        self.uploads = 0
        self.downloads = 0
        self.active = 0
        self.port: int | None = None
        self.runner: web.AppRunner | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._force = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._session = None             # the WriteSession uploads share
        self._init_metrics()
        self.app = self._make_app()

    # -- metrics -----------------------------------------------------------------
    def _init_metrics(self) -> None:
        r = self.registry = Registry()
        self.m_requests = r.counter("ingest_http_requests_total", "HTTP requests answered.",
                                    ["route", "method", "status"])
        self.m_latency = r.histogram("ingest_http_request_duration_seconds",
                                     "Time from request to the last byte of the answer.",
                                     ["route", "method"])
        self.m_bytes_in = r.counter("ingest_upload_bytes_total",
                                    "Upload body bytes received (bytes in).")
        self.m_new = r.counter("ingest_upload_new_bytes_total",
                               "Bytes of stored uploads that were new to the store.")
        self.m_dedup = r.counter("ingest_upload_dedup_bytes_total",
                                 "Bytes of stored uploads that were already in the store.")
        self.m_stored = r.counter("ingest_upload_stored_bytes_total",
                                  "Bytes stored uploads added to packs (after compression).")
        self.m_bytes_out = r.counter("ingest_download_bytes_total", "File bytes sent.")
        self.m_uploads = r.counter("ingest_uploads_total", "Uploads by outcome.", ["result"])
        self.m_rejected = r.counter("ingest_rejected_total",
                                    "Requests refused with 503 before any work.", ["reason"])
        self.m_uploads_now = r.gauge("ingest_uploads_in_flight", "Uploads being received now.")
        self.m_downloads_now = r.gauge("ingest_downloads_in_flight", "Downloads being sent now.")
        self.m_ready = r.gauge("ingest_ready", "1 once the index is loaded and the store "
                                               "answered; 0 while opening or draining.")
        r.collector(self._store_metrics)
        r.collector(self._process_metrics)

    def _store_metrics(self):
        repo = self.repo
        if repo is None:
            return []
        index = Gauge("ingest_index_chunks", "Chunk ids in the in-memory dedup index.")
        index.set(len(repo.index))
        shards = Gauge("ingest_index_shards", "Index shards loaded.")
        shards.set(len(repo.index.shards))
        out = [index, shards]
        stats = getattr(repo.store, "metrics", None)
        if stats is not None:
            ops = {op: v for op, v in stats().items() if op != "total"}
            for name, key, help_ in (
                    ("ingest_store_requests_total", "requests",
                     "Store operations started (one per call, whatever the attempts)."),
                    ("ingest_store_retries_total", "retries", "Store attempts beyond the first."),
                    ("ingest_store_errors_total", "errors",
                     "Store operations that failed (after any retries).")):
                c = Counter(name, help_, ["op"])
                for op, v in ops.items():
                    c.inc(v.get(key, 0), op=op)
                out.append(c)
            got = Counter("ingest_store_received_bytes_total", "Bytes read from the store.")
            got.inc(sum(v.get("bytes_in", 0) for v in ops.values()))
            sent = Counter("ingest_store_sent_bytes_total", "Bytes written to the store.")
            sent.inc(sum(v.get("bytes_out", 0) for v in ops.values()))
            out += [got, sent]
        return out

    def _process_metrics(self):
        out = []
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            g = Gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
            g.set(rss)
            out.append(g)
        except (OSError, ValueError, IndexError):
            pass
        peak = Gauge("ingest_process_max_resident_memory_bytes",
                     "Peak resident memory size in bytes since start.")
        peak.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        out.append(peak)
        return out

    # -- application ---------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        files = FILES + r"{tail:[\s\S]*}"       # '.' would not match a decoded %0A
        r.add_route("PUT", files, self.put_file, expect_handler=self._expect_upload)
        r.add_route("GET", files, self.get_file)
        r.add_route("HEAD", files, self.get_file)
        r.add_route("DELETE", files, self.delete_file)
        r.add_route("GET", "/v1/objects/{file_id}", self.get_object)
        r.add_route("HEAD", "/v1/objects/{file_id}", self.get_object)
        r.add_route("GET", "/v1/reconstruction/{file_id}", self.get_reconstruction)
        r.add_route("GET", "/v1/openapi.yaml", self.get_openapi)
        r.add_route("GET", "/metrics", self.get_metrics)
        r.add_route("GET", "/healthz", self.get_healthz)
        r.add_route("GET", "/readyz", self.get_readyz)
        app.on_response_prepare.append(self._on_prepare)
        return app

    async def start(self) -> None:
        s = self.settings
        if s.tokens is not None:
            self.reload_tokens(initial=True)
        # A malformed store URL is a configuration error, reported now; a store
        # that does not answer yet is retried in the background (not ready).
        probe = open_store(s.store)
        await probe.close()
        self.runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None,
            keepalive_timeout=s.idle_timeout or 75.0,
            shutdown_timeout=1.0)           # after our own drain: cancel what is left
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.host, s.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info("listening", extra={"fields": {
            "event": "listening", "host": s.host, "port": self.port, "store": s.store,
            "auth": "tokens" if self.tokens else "none",
            "max_uploads": s.max_uploads, "max_upload_size": s.max_upload_size}})
        if self.tokens is None:
            log.warning("no token file: every request may read and write every namespace, "
                        "so the daemon listens on loopback only", extra={"fields": {
                            "event": "open_access", "host": s.host}})
        self._spawn(self._open_repo())

    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def reload_tokens(self, initial: bool = False) -> None:
        try:
            table, warnings = TokenTable.load(self.settings.tokens)
        except ConfigError as e:
            if initial:
                raise
            log.error("token file not reloaded, keeping the old one: %s", e,
                      extra={"fields": {"event": "tokens_error"}})
            return
        for w in warnings:
            log.warning(w, extra={"fields": {"event": "tokens_warning"}})
        self.tokens = table
        log.info("tokens loaded", extra={"fields": {"event": "tokens", "count": len(table)}})

    def _open_store(self) -> Store:
        store = open_store(self.settings.store)
        if not hasattr(store, "metrics"):
            # The same counters for every store; a local store has nothing
            # to retry, so this only counts.
            store = RetryStore(store, max_concurrency=64)
        return store

    async def _open_repo(self) -> None:
        delay = 0.2
        t0 = time.monotonic()
        while True:
            try:
                repo = await Repository.open(self._open_store(), workers=self.settings.workers,
                                             zstd_level=self.settings.zstd_level)
                try:
                    await repo.index_ready()        # ready means uploads dedup from the start
                except BaseException:
                    await repo.close()
                    raise
                self.repo = repo
                break
            except Exception as e:          # noqa: BLE001 -- retried and logged
                self.open_error = f"cannot open the store: {e}"
                log.error(self.open_error, extra={"fields": {"event": "store_open_failed",
                                                             "retry_in": delay}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.open_error = None
        self.m_ready.set(1)
        log.info("ready", extra={"fields": {
            "event": "ready", "seconds": round(time.monotonic() - t0, 3),
            "index_chunks": len(self.repo.index), "index_shards": len(self.repo.index.shards)}})
        every = self.settings.index_refresh
        while every > 0:
            await asyncio.sleep(every)
            try:
                n = await self.repo.refresh_index()
                if n:
                    log.info("index refreshed", extra={"fields": {"event": "index_refresh",
                                                                  "new_shards": n}})
            except Exception as e:          # noqa: BLE001 -- the next round tries again
                log.warning("index refresh failed: %s", e,
                            extra={"fields": {"event": "index_refresh_failed"}})

    async def wait_ready(self, timeout: float | None = None) -> None:
        async def ready():
            while self.repo is None:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(ready(), timeout)

    def force(self) -> None:
        """End the drain now (a second SIGTERM)."""
        self._force.set()

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish for up to
        drain_timeout, cancel what is left, close the store."""
        if self.runner is None:
            return
        self.draining = True
        self.m_ready.set(0)
        runner, self.runner = self.runner, None
        # Stop accepting connections, but not aiohttp's own graceful shutdown
        # yet: it marks every connection closing, after which aiohttp drops
        # the bytes that arrive on it, so an upload in flight would stall
        # instead of finishing.  Answers sent while draining close their
        # connection (_on_prepare); idle keep-alive ones go at cleanup.
        for site in list(runner.sites):
            await site.stop()
        log.info("draining", extra={"fields": {
            "event": "draining", "uploads_in_flight": self.uploads,
            "downloads_in_flight": self.downloads, "deadline": self.settings.drain_timeout}})
        t0 = time.monotonic()
        force = asyncio.ensure_future(self._force.wait())
        idle = asyncio.ensure_future(self._idle.wait())
        await asyncio.wait([force, idle], timeout=self.settings.drain_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        force.cancel()
        idle.cancel()
        left = self.active
        await runner.cleanup()
        if self._session is not None:
            # Frames of uploads cut off mid-way that others deduplicated against.
            await _quiet_flush(self._session)
            self._session = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.repo is not None:
            await self.repo.close()
            self.repo = None
        log.info("stopped", extra={"fields": {
            "event": "stopped", "drain_seconds": round(time.monotonic() - t0, 3),
            "requests_cut_off": left}})

    # -- plumbing --------------------------------------------------------------
    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        rid = _state(request).rid
        if rid:
            response.headers["X-Request-Id"] = rid
        if self.draining:
            response.force_close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        t0 = time.perf_counter()
        rid = request.headers.get("X-Request-Id", "")
        if not (0 < len(rid) <= 128 and rid.isprintable() and rid.isascii()):
            rid = uuid.uuid4().hex
        st = _state(request)
        st.rid = rid
        st.route = self._route_label(request)
        self.active += 1
        self._idle.clear()
        resp: web.StreamResponse | None = None
        error = None
        status = 500
        try:
            try:
                resp = await handler(request)
            except HTTPError as e:
                resp = _json_error(e.status, e.code, e.message, e.headers)
                error = e.message
                if e.close:
                    resp.force_close()
            except web.HTTPException as e:        # aiohttp's own: no route, wrong method
                resp = _json_error(e.status, e.reason.lower().replace(" ", "_"), e.reason,
                                   {k: v for k, v in e.headers.items() if k == "Allow"})
                error = e.reason
            except BodyError as e:
                resp = _json_error(e.status, e.code, str(e))
                error = str(e)
            except NotFound as e:
                resp, error = _json_error(404, "not_found", str(e)), str(e)
            except InvalidName as e:
                resp, error = _json_error(400, "invalid_name", str(e)), str(e)
            except IntegrityError as e:
                error = f"stored data failed an integrity check: {e}"
                log.error(error, extra={"fields": {"event": "integrity_error", "request_id": rid}})
                resp = _json_error(500, "integrity_error", error)
            except StoreError as e:
                code_status, code = _store_status(e)
                resp, error = _json_error(code_status, code, f"store: {e}",
                                          {"Retry-After": str(self.settings.retry_after)}
                                          if code_status == 503 else None), str(e)
            except IngestError as e:
                resp, error = _json_error(500, "error", str(e)), str(e)
            except asyncio.CancelledError:
                status, error = 499, "cancelled (shutdown deadline or client gone)"
                raise
            except Exception as e:                # noqa: BLE001 -- answered, logged with traceback
                log.exception("unexpected error", extra={"fields": {"request_id": rid}})
                resp = _json_error(500, "internal", "internal error")
                error = f"{type(e).__name__}: {e}"
            status = resp.status
            if st.client_gone:
                status = 499
            return resp
        finally:
            self.active -= 1
            if not self.active:
                self._idle.set()
            dt = time.perf_counter() - t0
            route = st.route
            self.m_requests.inc(route=route, method=request.method, status=str(status))
            self.m_latency.observe(dt, route=route, method=request.method)
            sent = 0
            if resp is not None:
                sent = resp.body_length if resp.prepared else (resp.content_length or 0)
            fields = {
                "event": "request", "request_id": rid, "method": request.method,
                "path": request.raw_path, "route": route, "status": status,
                "ms": round(dt * 1000, 2), "bytes_in": st.bytes_in,
                "bytes_out": sent,
                "client": request.remote, "token": st.principal,
            }
            if error:
                fields["error"] = error
            if st.aborted:
                fields["aborted"] = st.aborted
            fields.update(st.log)
            access_log.info("request", extra={"fields": fields})

    @staticmethod
    def _route_label(request: web.Request) -> str:
        info = request.match_info
        route = getattr(info, "route", None)
        resource = getattr(route, "resource", None)
        canon = getattr(resource, "canonical", None) if resource is not None else None
        return {FILES + "{tail}": "files", "/v1/objects/{file_id}": "objects",
                "/v1/reconstruction/{file_id}": "reconstruction",
                "/v1/openapi.yaml": "openapi", "/metrics": "metrics", "/healthz": "healthz",
                "/readyz": "readyz"}.get(canon, "other")

    def _principal(self, request: web.Request) -> Principal:
        if self.tokens is None:
            return ANONYMOUS
        token = bearer(request.headers.get("Authorization"))
        if token is None:
            raise HTTPError(401, "unauthorized", "a bearer token is required",
                            {"WWW-Authenticate": 'Bearer realm="ingest"'})
        p = self.tokens.lookup(token)
        if p is None:
            raise HTTPError(401, "unauthorized", "unknown token",
                            {"WWW-Authenticate": 'Bearer realm="ingest", error="invalid_token"'})
        _state(request).principal = p.name
        return p

    def _repo(self) -> Repository:
        if self.repo is None:
            raise HTTPError(503, "not_ready", self.open_error or "not ready",
                            {"Retry-After": str(self.settings.retry_after)})
        return self.repo

    def _busy(self, reason: str, message: str) -> HTTPError:
        return HTTPError(503, reason, message, {"Retry-After": str(self.settings.retry_after)})

    @staticmethod
    def _target(request: web.Request) -> tuple[str, str, bool]:
        raw = request.rel_url.raw_path
        return parse_files_target(raw[len(FILES):])

    # -- uploads -----------------------------------------------------------------
    def _admit_upload(self, request: web.Request) -> tuple[str, str]:
        p = self._principal(request)
        ns, path, listing = self._target(request)
        if listing:
            raise HTTPError(400, "invalid_name",
                            "an upload names a file, not a prefix ending in '/'")
        if not p.can_write(ns):
            raise HTTPError(403, "forbidden", f"token {p.name!r} may not write namespace {ns!r}")
        if self.draining:
            raise self._busy("draining", "the daemon is shutting down")
        self._repo()
        length = request.content_length
        if length is not None and length > self.settings.max_upload_size:
            raise HTTPError(413, "too_large", f"upload of {length} bytes is larger than the "
                                              f"limit of {self.settings.max_upload_size} bytes")
        if self.uploads >= self.settings.max_uploads:
            raise self._busy("uploads_busy", f"{self.uploads} uploads in flight, the most "
                                             "this daemon takes at once; try again shortly")
        return ns, path

    async def _expect_upload(self, request: web.Request):
        """Expect: 100-continue: refuse before the client sends a byte."""
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise HTTPError(417, "expectation_failed", "only Expect: 100-continue is supported")
        try:
            self._admit_upload(request)
        except (HTTPError, IngestError):
            # No 100 Continue: the handler answers with the error at once and
            # the client never sends its body.
            _state(request).no_continue = True
            return None
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    async def put_file(self, request: web.Request) -> web.StreamResponse:
        try:
            ns, path = self._admit_upload(request)
        except HTTPError as e:
            # Counted here, not in _admit_upload: Expect: 100-continue runs it twice.
            if e.status == 413:
                self.m_uploads.inc(result="too_large")
            elif e.status == 503:
                self.m_rejected.inc(reason=e.code)
            # After Expect: 100-continue without a 100, the client sends no
            # body: close rather than wait for one.
            e.close = e.close or _state(request).no_continue
            raise
        name = f"{ns}/{path}"
        repo = self.repo
        self.uploads += 1
        self.m_uploads_now.set(self.uploads)

        st = _state(request)

        def on_bytes(n: int) -> None:
            st.bytes_in += n
            self.m_bytes_in.inc(n)

        body = Body(request.content, limit=self.settings.max_upload_size,
                    declared=request.content_length, idle_timeout=self.settings.idle_timeout,
                    on_bytes=on_bytes)
        try:
            existed = await repo.store.head(ref_key(name)) is not None
            r = await self._ingest(repo, body, name, request.content_length)
        except BodyError as e:
            self.m_uploads.inc(result=e.result)
            if e.status == 499:
                st.client_gone = True
            # A stalled, vanished or malformed body: the connection is done.
            # Too large: aiohttp reads and drops the rest for a few seconds
            # (lingering), so the client gets to read the 413.
            raise HTTPError(e.status, e.code, str(e), close=e.status != 413) from None
        except asyncio.CancelledError:
            self.m_uploads.inc(result="cancelled")
            raise
        except BaseException:
            self.m_uploads.inc(result="failed")
            raise
        finally:
            body.close()
            self.uploads -= 1
            self.m_uploads_now.set(self.uploads)
        self.m_uploads.inc(result="stored")
        self.m_new.inc(r.new_bytes)
        self.m_dedup.inc(r.dedup_bytes)
        self.m_stored.inc(r.stored_bytes)
        doc = {"namespace": ns, "path": path, "file_id": r.file_id, "size": r.size,
               "sha256": r.sha256, "chunks": r.chunks, "new_chunks": r.new_chunks,
               "new_bytes": r.new_bytes, "dedup_bytes": r.dedup_bytes,
               "stored_bytes": r.stored_bytes}
        st.log = {"file_id": r.file_id, "size": r.size, "new_bytes": r.new_bytes,
                  "stored_bytes": r.stored_bytes}
        return web.json_response(doc, status=200 if existed else 201,
                                 headers={"ETag": f'"{r.file_id}"',
                                          "Location": request.rel_url.raw_path})

    async def _ingest(self, repo: Repository, body: Body, name: str, length: int | None):
        """Store one upload through the daemon's write session.

        One session for all uploads, not one each (put_stream): concurrent
        uploads fill the same packs, so pack memory is one open pack plus
        --packs-in-flight being stored for the whole daemon instead of per
        upload, block buffers are reused, and a known Content-Length lets a
        small upload read into a buffer of its own size.  The manifest and
        ref are still written only once all of this upload's packs are
        stored (commit).  A session whose pack upload failed keeps failing,
        so a failure not caused by the client retires it."""
        session = self._session
        if session is None or session.repo is not repo:
            session = self._session = repo.session(
                max_packs_in_flight=self.settings.packs_in_flight)
        try:
            written = await session.write(stream_reader(body), size_hint=length)
            return await session.commit(written, name, flush=True)
        except (BodyError, asyncio.CancelledError):
            raise
        except BaseException:
            if self._session is session:
                self._session = None
                self._spawn(_quiet_flush(session))
            raise

    # -- reads -------------------------------------------------------------------
    async def get_file(self, request: web.Request) -> web.StreamResponse:
        p = self._principal(request)
        ns, path, listing = self._target(request)
        if not p.can_read(ns):
            raise HTTPError(403, "forbidden", f"token {p.name!r} may not read namespace {ns!r}")
        if listing:
            _state(request).route = "list"
            return await self._list(request, ns, path)
        repo = self._repo()
        ref = await repo.get_ref(f"{ns}/{path}")
        fid, m = await repo.resolve(ref.file_id)
        return await self._send(request, fid, m, cache="no-cache",
                                last_modified=formatdate(ref.time, usegmt=True))

    async def get_object(self, request: web.Request) -> web.StreamResponse:
        p = self._principal(request)
        if not p.can_read_any:
            raise HTTPError(403, "forbidden", f"token {p.name!r} may not read any namespace")
        fid = parse_file_id(request.match_info["file_id"])
        fid, m = await self._repo().resolve(fid.hex())
        return await self._send(request, fid, m, cache="public, max-age=31536000, immutable")

    async def _send(self, request: web.Request, fid: bytes, m, *, cache: str,
                    last_modified: str | None = None) -> web.StreamResponse:
        etag = f'"{fid.hex()}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": cache,
                   "X-Ingest-File-Id": fid.hex()}
        if m.sha256 is not None:          # None: ingested with sha256=False
            headers["Repr-Digest"] = "sha-256=:" + base64.b64encode(m.sha256).decode() + ":"
        if last_modified:
            headers["Last-Modified"] = last_modified
        if none_match(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        size = m.size
        rng = None
        if request.method == "GET" and if_range_holds(request.headers.get("If-Range"), etag):
            try:
                rng = parse_range(request.headers.get("Range"), size)
            except Unsatisfiable:
                raise HTTPError(416, "range_not_satisfiable",
                                f"the range is outside the file ({size} bytes)",
                                {"Content-Range": f"bytes */{size}", **headers}) from None
        start, end = rng or (0, size)
        if rng:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        resp = web.StreamResponse(status=206 if rng else 200, headers=headers)
        resp.content_type = OCTET
        resp.content_length = end - start
        if request.method == "HEAD":
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        if self.downloads >= self.settings.max_downloads:
            self.m_rejected.inc(reason="downloads_busy")
            raise self._busy("downloads_busy", f"{self.downloads} downloads in flight; "
                                               "try again shortly")
        self.downloads += 1
        self.m_downloads_now.set(self.downloads)
        blocks = self.repo.iter_read(fid.hex(), start, end)
        watchdog = None
        try:
            # The first block is read before the status line goes out, so a
            # missing or damaged pack at the start still gets an error status.
            block = await anext(blocks, None)
            await resp.prepare(request)
            watchdog = Watchdog(self.settings.idle_timeout, lambda: self._cut(request, "idle"))
            try:
                while block is not None:
                    watchdog.waiting()
                    await resp.write(block)
                    watchdog.done()
                    self.m_bytes_out.inc(len(block))
                    block = await anext(blocks, None)
                await resp.write_eof()
            except IngestError as e:
                # Headers are out: cut the connection so the client sees a
                # short body, never damaged bytes presented as the file.
                log.error("download cut: %s", e, extra={"fields": {
                    "event": "download_cut", "request_id": _state(request).rid}})
                _state(request).log = {"error": str(e)}
                self._cut(request, "store error")
            except ConnectionError:
                _state(request).aborted = "idle" if watchdog.fired else "client disconnected"
            return resp
        finally:
            if watchdog is not None:
                watchdog.cancel()
            await blocks.aclose()
            self.downloads -= 1
            self.m_downloads_now.set(self.downloads)

    @staticmethod
    def _cut(request: web.Request, why: str) -> None:
        _state(request).aborted = why
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _list(self, request: web.Request, ns: str, prefix: str) -> web.Response:
        repo = self._repo()
        q = request.query
        try:
            limit = int(q.get("limit", DEFAULT_PAGE))
        except ValueError:
            raise HTTPError(400, "bad_request", "limit must be a whole number") from None
        if not 1 <= limit <= self.settings.list_limit:
            raise HTTPError(400, "bad_request", f"limit must be 1..{self.settings.list_limit}")
        after = None
        if q.get("cursor"):
            after = _uncursor(q["cursor"])
            check_ref(f"{ns}/{after}")
            if not after.startswith(prefix):
                raise InvalidName("the cursor belongs to another listing")
        base = f"{REFS_PREFIX}{ns}/"
        try:
            whole = await repo.store.get(ref_key(ns))
        except ObjectNotFound:
            whole = None
        if whole is not None and isinstance(decode_ref(ns, whole), TreeRef):
            # The namespace is a tree the library stored (put_tree of a
            # directory named like it): its names come from the tree and the
            # refs below it together, as Repository.list_refs resolves them,
            # a page at a time (a search into the sorted tree, not all of it).
            refs = await repo.list_refs(f"{ns}/{prefix}", after=f"{ns}/{after}" if after else None,
                                        limit=limit + 1)
            more = len(refs) > limit
            refs = refs[:limit]
            return _listing(ns, prefix, refs, refs[-1].name[len(ns) + 1:] if more else None)
        names = await self._list_keys(repo.store, base + prefix,
                                      base + after if after else None, limit + 1)
        more = len(names) > limit
        names = [k[len(base):] for k in names[:limit]]
        slots = asyncio.Semaphore(LIST_FETCHES)

        async def one(rel: str):
            async with slots:
                try:
                    return await repo.get_ref(f"{ns}/{rel}")
                except NotFound:
                    return None         # deleted while listing
        refs = await asyncio.gather(*(one(n) for n in names))
        return _listing(ns, prefix, [r for r in refs if r is not None],
                        names[-1] if more else None)

    @staticmethod
    async def _list_keys(store, prefix: str, after: str | None, n: int) -> list[str]:
        """Up to n keys under prefix, after `after`.  A store that lists from a
        key (S3's StartAfter) starts there; any other is listed from the
        start, skipping ahead (a local store lists a namespace from memory)."""
        server_side = after is not None and "start_after" in inspect.signature(
            _innermost(store).list).parameters
        it = store.list(prefix, start_after=after) if server_side else store.list(prefix)
        out = []
        try:
            async for o in it:
                if after is not None and o.key <= after:
                    continue
                out.append(o.key)
                if len(out) >= n:
                    break
        finally:
            await it.aclose()
        return out

    async def get_reconstruction(self, request: web.Request) -> web.Response:
        p = self._principal(request)
        if not p.can_read_any:
            raise HTTPError(403, "forbidden", f"token {p.name!r} may not read any namespace")
        fid = parse_file_id(request.match_info["file_id"])
        fid, m = await self._repo().resolve(fid.hex())
        q = request.query
        try:
            start = int(q.get("start", 0))
            end = int(q.get("end", m.size))
        except ValueError:
            raise HTTPError(400, "bad_request", "start and end are byte offsets") from None
        if start < 0 or end < start:
            raise HTTPError(400, "bad_request", "want 0 <= start <= end")
        chunks = q.get("chunks", "").lower() in ("1", "true", "yes")
        doc = await asyncio.to_thread(reconstruction, fid, m, start, end, chunks)
        return web.json_response(doc, headers={"ETag": f'"{fid.hex()}"',
                                               "Cache-Control": "public, max-age=31536000, "
                                                                "immutable"})

    async def delete_file(self, request: web.Request) -> web.Response:
        p = self._principal(request)
        ns, path, listing = self._target(request)
        if listing:
            raise HTTPError(400, "invalid_name", "DELETE names one file, not a prefix")
        if not p.can_write(ns):
            raise HTTPError(403, "forbidden", f"token {p.name!r} may not write namespace {ns!r}")
        await self._repo().delete_ref(f"{ns}/{path}")
        return web.Response(status=204)

    # -- service endpoints ---------------------------------------------------------
    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi_text(), content_type="application/yaml")

    async def get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.registry.render(),
                            headers={"Content-Type": METRICS_TYPE})

    async def get_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"ready": False, "reason": "draining"}, status=503)
        if self.repo is None:
            return web.json_response({"ready": False, "reason": self.open_error}, status=503)
        from ..config import KEY as CONFIG_KEY
        try:
            found = await asyncio.wait_for(self.repo.store.head(CONFIG_KEY), READY_PROBE_TIMEOUT)
        except (asyncio.TimeoutError, StoreError) as e:
            return web.json_response({"ready": False, "reason": f"store: {e or 'timeout'}"},
                                     status=503)
        if found is None:
            return web.json_response({"ready": False, "reason": "store config is missing"},
                                     status=503)
        return web.json_response({"ready": True, "index_chunks": len(self.repo.index)})
