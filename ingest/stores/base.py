"""The one small interface every object store implements.

Keys are '/'-separated relative names made of safe components (see
`check_key`); values are immutable bytes except under `refs/` and `config`.
Implementations: local.LocalStore (a directory), s3.S3Store (aiobotocore).
"""
from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ..errors import InvalidName, NotFound, StoreError

MAX_KEY_BYTES = 1024        # S3's own key limit


class ObjectNotFound(NotFound, StoreError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


_BAD_KEY_CHAR = re.compile("[\x00-\x1f\\\\]")     # control characters (NUL too) and backslash


def check_key(key: str) -> str:
    """Refuse keys that could escape a directory or confuse a store."""
    if not isinstance(key, str) or not key:
        raise InvalidName("empty object key")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidName(f"object key longer than {MAX_KEY_BYTES} bytes")
    if _BAD_KEY_CHAR.search(key) or key.startswith("/"):
        raise InvalidName(f"invalid object key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidName(f"invalid object key {key!r}")
    return key


def as_parts(data) -> list[memoryview]:
    """The bytes of a put as byte views: one bytes-like object, or a list or
    tuple of them (a pack's parts) stored as their concatenation."""
    return [memoryview(p).cast("B") for p in (data if isinstance(data, (list, tuple)) else (data,))]


async def _gather_all(aws) -> list:
    """Results of all awaitables once every one has ended; then the first
    error, if any, is raised."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return list(results)


class PutStream:
    """One object written in parts as they come (a pack being filled), and
    stored under its key only by commit(): until then no reader sees it."""

    async def write(self, parts: list) -> None:
        """Append bytes-like parts; calls are applied in the order made."""
        raise NotImplementedError

    async def commit(self, key: str, *, if_absent: bool = False) -> bool:
        """Store what was written under `key`, as put() would."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Drop what was written; nothing is stored."""


class _BufferedPut(PutStream):
    """The default: parts are kept in memory and put() at commit."""

    def __init__(self, store: "Store") -> None:
        self._store = store
        self._parts: list = []

    async def write(self, parts: list) -> None:
        self._parts.extend(parts)

    async def commit(self, key: str, *, if_absent: bool = False) -> bool:
        parts, self._parts = self._parts, []
        data = parts if self._store.accepts_parts else b"".join(parts)
        return await self._store.put(key, data, if_absent=if_absent)

    async def abort(self) -> None:
        self._parts = []


class Store(abc.ABC):
    """Async object store.  All methods may raise StoreError."""

    url: str
    # True if put() also takes a list of bytes-like parts to store as one
    # object (the local store writes them with writev: a 64 MiB pack is not
    # joined in memory first).  Callers check before passing a list.
    accepts_parts: bool = False
    # True for a store on this machine's disks: a write costs no round trip,
    # so fewer requests in flight keep it busy (see WriteSession).
    local: bool = False
    # A blocking get(key, start, end) that a worker thread may call directly
    # (the local store's), so a reader does its read and its decoding in
    # one thread hop; None for stores that need the event loop.
    get_range_blocking = None

    @abc.abstractmethod
    async def put(self, key: str, data, *, if_absent: bool = False) -> bool:
        """Store `data` (bytes-like) under `key`, atomically: readers see the
        whole object or none.  With if_absent, leave an existing object alone
        and return False; otherwise return True."""

    def open_put(self) -> PutStream:
        """A PutStream for one object whose bytes arrive over time.  By
        default they are buffered and put() at commit; the local store
        writes them to its temporary file as they come."""
        return _BufferedPut(self)

    async def put_many(self, items: Sequence[tuple[str, object]], *,
                       if_absent: bool = False) -> list[bool]:
        """put() each (key, data) of a batch of small objects: one result per
        item, in order.  Items are independent (no order among them), and all
        have ended when this returns; the first error is raised after that.
        Stores that can make a batch durable more cheaply than one object at
        a time override this (the local store: one directory sync per batch)."""
        return await _gather_all(self.put(k, d, if_absent=if_absent) for k, d in items)

    @abc.abstractmethod
    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the object (end None: to its end).  Raises
        ObjectNotFound.  A range past the end returns what exists."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """get() of each whole object of a batch: get_ranges of (key, 0, None)."""
        return await self.get_ranges([(k, 0, None) for k in keys])

    async def get_ranges(self, ranges: Sequence[tuple[str, int, int | None]]
                         ) -> list[bytes | None]:
        """get(key, start, end) of each (key, start, end) of a batch (the
        spans of many small files; end None: the whole object), None where
        the object does not exist; the first other error is raised once all
        have ended.  Stores override this one, not get_many."""
        async def one(key: str, start: int, end: int | None) -> bytes | None:
            try:
                return await self.get(key, start, end)
            except ObjectNotFound:
                return None
        return await _gather_all(one(*r) for r in ranges)

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo | None:
        """Size of the object, or None when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; no error when it is already gone."""

    async def close(self) -> None:
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
