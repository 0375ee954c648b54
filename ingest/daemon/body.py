"""Upload bodies read straight into the pipeline, and idle-client watchdogs.

aiohttp's request stream pauses the socket once ~128 KiB are buffered, and
the pipeline only reads when it has a free block buffer, so an upload of any
size holds a bounded amount of memory and a slow store slows the client
down instead of filling RAM.  Whatever goes wrong with the body (the client
vanishes, it sends more than allowed or less than it announced, it stalls)
is raised from `read`, which makes `put_stream` fail before a manifest or
ref is written.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import http_exceptions
from aiohttp.streams import StreamReader


class BodyError(Exception):
    """The upload body cannot be stored; `status` is the HTTP answer."""
    status = 400
    code = "bad_body"
    result = "bad_body"           # the ingest_uploads_total label


class ClientGone(BodyError):
    status, code, result = 499, "client_disconnected", "disconnected"


class TooLarge(BodyError):
    status, code, result = 413, "too_large", "too_large"


class IdleTimeout(BodyError):
    status, code, result = 408, "idle_timeout", "timeout"


class Watchdog:
    """Calls `expire()` once when a wait on the client (`waiting()` ...
    `done()`) lasts longer than `timeout` seconds.  Time spent on our side
    (a slow store applying backpressure) is never counted against the client."""

    def __init__(self, timeout: float, expire: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.expire = expire
        self.since: float | None = None
        self.fired = False
        self._handle = self.loop.call_later(timeout, self._check) if timeout > 0 else None

    def waiting(self) -> None:
        self.since = self.loop.time()

    def done(self) -> None:
        self.since = None

    def _check(self) -> None:
        now = self.loop.time()
        if self.since is not None and now - self.since >= self.timeout:
            self.fired = True
            self._handle = None
            self.expire()
            return
        wait = self.timeout if self.since is None else self.since + self.timeout - now
        self._handle = self.loop.call_later(max(wait, 0.01), self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Body:
    """`async read(n)` over a request's body, for `Repository.put_stream`."""

    def __init__(self, content: StreamReader, *, limit: int, declared: int | None,
                 idle_timeout: float, on_bytes: Callable[[int], None]) -> None:
        self.content = content
        self.limit = limit
        self.declared = declared
        self.received = 0
        self.on_bytes = on_bytes
        self.watchdog = Watchdog(idle_timeout, self._idle)

    def _idle(self) -> None:
        self.content.set_exception(IdleTimeout(
            f"no upload bytes for {self.watchdog.timeout:g} s; giving up"))

    async def read(self, n: int) -> bytes:
        self.watchdog.waiting()
        try:
            data = await self.content.read(min(n, self.limit + 1 - self.received))
        except BodyError:
            raise
        except ConnectionError:
            raise ClientGone("the client disconnected during the upload") from None
        except http_exceptions.HttpProcessingError as e:
            raise BodyError(f"malformed request body: {e.message}") from None
        finally:
            self.watchdog.done()
        if data:
            self.received += len(data)
            self.on_bytes(len(data))
            if self.received > self.limit:
                raise TooLarge(f"upload larger than the limit of {self.limit} bytes")
        elif self.declared is not None and self.received != self.declared:
            # aiohttp raises on a short body itself; never store a truncated one.
            raise ClientGone(f"body ended after {self.received} of {self.declared} bytes")
        return data

    def close(self) -> None:
        self.watchdog.cancel()
