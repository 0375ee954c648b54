"""A Store wrapper that retries transient failures, bounds concurrency and
counts requests.

Stores say what is worth retrying by raising TransientStoreError (throttling,
5xx, timeouts, refused or dropped connections); everything else (a missing
object, a missing bucket, bad credentials, an invalid key) fails at once.
Backoff is exponential with full jitter: before retry n the wrapper sleeps a
uniform random time in [0, min(cap, base * 2**n)], so clients that failed
together do not retry together.  The concurrency slot is held per attempt, not
across the sleeps, so a backing-off request does not starve the others.

Every operation is idempotent except a put with if_absent: if a first attempt
stored the object but its answer was lost, the retry finds the object there
and reports False.  Content-addressed objects are the same bytes either way;
a caller using if_absent as a lock must not read False as "someone else won".
"""
from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..errors import StoreError
from .base import ObjectInfo, ObjectNotFound, Store, as_parts

OPERATIONS = ("put", "get", "head", "list", "delete")


class TransientStoreError(StoreError):
    """A failure that may pass if the request is repeated."""


class RetriesExhausted(StoreError):
    """A transient failure persisted through every attempt; `cause` is the last one."""

    def __init__(self, message: str, cause: TransientStoreError) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    The defaults wait at most 0.1 + 0.2 + ... + 12.8 + 15 = 40.5 s over 10
    attempts (about half that on average): enough to ride out a server
    restart (SeaweedFS restarts in about 2 s) or a burst of S3 SlowDown.
    """
    attempts: int = 10          # tries per operation, the first included
    base: float = 0.1           # seconds; the backoff cap before the first retry
    cap: float = 15.0           # seconds; no single backoff is longer

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.cap < 0:
            raise ValueError(f"invalid retry policy {self}")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to sleep before retry number `retry` (0-based): full jitter."""
        return rng.uniform(0.0, min(self.cap, self.base * (2.0 ** retry)))


@dataclass
class OpMetrics:
    requests: int = 0       # operations started (one per call, however many attempts)
    retries: int = 0        # attempts beyond the first
    errors: int = 0         # operations that raised (ObjectNotFound is an answer, not an error)
    bytes_in: int = 0       # bytes received from the store (get)
    bytes_out: int = 0      # bytes sent to the store by puts that stored them


class RetryStore(Store):
    """Wrap `inner` with retries, a concurrency limit and counters."""

    def __init__(self, inner: Store, *, policy: RetryPolicy | None = None,
                 max_concurrency: int = 16, rng: random.Random | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.inner = inner
        self.url = inner.url
        self.policy = policy or RetryPolicy()
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._rng = rng or random.Random()
        self._ops = {op: OpMetrics() for op in OPERATIONS}
        self._lists_after = "start_after" in inspect.signature(inner.list).parameters
        # put() may take a list of parts when the inner store does (see base.Store).
        self.accepts_parts = getattr(inner, "accepts_parts", False)
        self.local = getattr(inner, "local", False)

    def __repr__(self) -> str:
        return f"RetryStore({self.inner!r})"

    def metrics(self) -> dict[str, dict[str, int]]:
        """Counters by operation: {"put": {"requests", "retries", "errors",
        "bytes_in", "bytes_out"}, "get": ..., ...}, plus "total" summing them."""
        out = {op: dict(vars(m)) for op, m in self._ops.items()}
        out["total"] = {k: sum(m[k] for m in out.values()) for k in vars(OpMetrics())}
        return out

    def _give_up(self, attempts: int, t0: float, e: TransientStoreError) -> RetriesExhausted:
        return RetriesExhausted(
            f"{e} (gave up after {attempts} attempts in {time.monotonic() - t0:.1f} s)", e)

    async def _call(self, op: str, fn, *args, **kwargs):
        m = self._ops[op]
        m.requests += 1
        t0 = time.monotonic()
        attempt = 0
        while True:
            try:
                async with self._slots:
                    return await fn(*args, **kwargs)
            except TransientStoreError as e:
                attempt += 1
                if attempt >= self.policy.attempts:
                    m.errors += 1
                    raise self._give_up(attempt, t0, e) from e
                m.retries += 1
                await asyncio.sleep(self.policy.backoff(attempt - 1, self._rng))
            except ObjectNotFound:
                raise
            except Exception:
                m.errors += 1
                raise

    async def put(self, key: str, data, *, if_absent: bool = False) -> bool:
        stored = await self._call("put", self.inner.put, key, data, if_absent=if_absent)
        if stored:
            self._ops["put"].bytes_out += _nbytes(data)
        return stored

    async def put_many(self, items, *, if_absent: bool = False) -> list[bool]:
        items = list(items)
        if type(self.inner).put_many is Store.put_many:
            # No batch form: each put on its own, retried and limited as usual.
            return await Store.put_many(self, items, if_absent=if_absent)
        # One batch call, retried whole: every put in it is atomic and
        # idempotent (if-absent keys are content-addressed, refs overwrite).
        stored = await self._call("put", self.inner.put_many, items, if_absent=if_absent)
        self._ops["put"].bytes_out += sum(_nbytes(d) for (_, d), ok in zip(items, stored) if ok)
        return stored

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        data = await self._call("get", self.inner.get, key, start, end)
        self._ops["get"].bytes_in += len(data)
        return data

    async def get_ranges(self, ranges) -> list[bytes | None]:
        """The inner store's batch call, retried whole, or, if it has none,
        each get retried and limited (get_many comes here too)."""
        ranges = list(ranges)
        if type(self.inner).get_ranges is Store.get_ranges:
            return await Store.get_ranges(self, ranges)
        found = await self._call("get", self.inner.get_ranges, ranges)
        self._ops["get"].bytes_in += sum(len(d) for d in found if d is not None)
        return found

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._call("head", self.inner.head, key)

    async def delete(self, key: str) -> None:
        await self._call("delete", self.inner.delete, key)

    async def list(self, prefix: str = "", *, start_after: str | None = None
                   ) -> AsyncIterator[ObjectInfo]:
        """List; after a transient failure, list again from the last key
        yielded.  A store whose list() takes `start_after` (S3: StartAfter)
        resumes there on the server, in the server's own order; any other is
        listed again from the start, skipping keys up to the last one yielded
        (such stores list in plain string order).  The retry budget restarts
        whenever the listing makes progress, so a long listing is not failed
        by a few scattered errors."""
        m = self._ops["list"]
        m.requests += 1
        t0 = time.monotonic()
        attempt = 0
        last = start_after
        resumable = self._lists_after
        if start_after is not None and not resumable:
            raise TypeError(f"{self.inner!r}.list() does not take start_after")
        while True:
            skip = False
            if last is None:
                it = aiter(self.inner.list(prefix))
            elif resumable:
                it = aiter(self.inner.list(prefix, start_after=last))
            else:
                it = aiter(self.inner.list(prefix))
                skip = True
            try:
                while True:
                    async with self._slots:
                        try:
                            info = await anext(it)
                        except StopAsyncIteration:
                            return
                    if skip:
                        if info.key <= last:
                            continue
                        skip = False
                    last = info.key
                    attempt = 0
                    yield info
            except TransientStoreError as e:
                attempt += 1
                if attempt >= self.policy.attempts:
                    m.errors += 1
                    raise self._give_up(attempt, t0, e) from e
                m.retries += 1
            except Exception:
                m.errors += 1
                raise
            finally:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    await aclose()
            await asyncio.sleep(self.policy.backoff(attempt - 1, self._rng))

    async def close(self) -> None:
        await self.inner.close()


def _nbytes(data) -> int:
    """Bytes in a put's data: one bytes-like object or a list of parts."""
    return sum(v.nbytes for v in as_parts(data))
