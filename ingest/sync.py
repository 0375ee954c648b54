"""Blocking wrappers over the async Repository, for scripts and notebooks.

    with ingest.open("/data/store") as repo:
        repo.put_file("model.safetensors", ref="model.safetensors")
        head = repo.read("model.safetensors", 0, 4096)

Each SyncRepository runs its own event loop on a background thread, so it
also works where a loop is already running (Jupyter).
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator

from .repository import Repository

try:  # uvloop when installed: the loop only orchestrates, but cheaply
    import uvloop as _uvloop
except ImportError:  # pragma: no cover
    _uvloop = None


log = logging.getLogger("ingest")


def _orphaned_body_writer(context: dict) -> bool:
    """True for aiohttp's request-body writer task dying of a lost connection.

    botocore sends S3 PUTs with `Expect: 100-continue`; when the server goes
    away at that moment, aiohttp fails the request (which the retry wrapper
    sees and retries) *and* leaves its inner `ClientRequest.write_bytes` task
    holding the same connection error, which nobody awaits.  asyncio would
    print that as a multi-line traceback on stderr long after the request
    was retried successfully.  It carries no information the request's own
    error did not, so it is logged at debug level instead."""
    exc, task = context.get("exception"), context.get("future")
    if not isinstance(exc, ConnectionError) and type(exc).__module__.split(".")[0] != "aiohttp":
        return False
    coro = getattr(task, "get_coro", lambda: None)()
    return getattr(coro, "__qualname__", "") == "ClientRequest.write_bytes"


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    if _orphaned_body_writer(context):
        log.debug("aiohttp body writer ended with %r after its request failed", context["exception"])
        return
    loop.default_exception_handler(context)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop the CLI, the daemon and SyncRepository run on: uvloop when
    installed, with aiohttp's orphaned body-writer errors kept off stderr."""
    loop = _uvloop.new_event_loop() if _uvloop else asyncio.new_event_loop()
    loop.set_exception_handler(_exception_handler)
    return loop


class SyncRepository:
    def __init__(self, url: str | os.PathLike, **options) -> None:
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ingest-loop",
                                        daemon=True)
        self._thread.start()
        try:
            self.repo: Repository = self._call(Repository.open(url, **options))
        except BaseException:
            self._stop()
            raise

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str):
        attr = getattr(self.repo, name)
        if asyncio.iscoroutinefunction(attr):
            return lambda *a, **k: self._call(attr(*a, **k))
        return attr

    def iter_read(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        agen = self.repo.iter_read(name, start, end)
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._call(agen.aclose())

    def close(self) -> None:
        if self._loop.is_running():
            try:
                self._call(self.repo.close())
            finally:
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> "SyncRepository":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open(url: str | os.PathLike, **options) -> SyncRepository:  # noqa: A001
    """Open a store synchronously; see Repository.open for the options."""
    return SyncRepository(url, **options)
