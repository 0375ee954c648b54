"""Object stores behind one interface (base.Store), opened by URL."""
from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from ..errors import StoreError
from .base import ObjectInfo, ObjectNotFound, Store, check_key
from .local import LocalStore     # the default: imported here, not on the first open


__all__ = ["ObjectInfo", "ObjectNotFound", "Store", "check_key", "open_store"]


def open_store(url: str | os.PathLike, **options) -> Store:
    """Open a store: `file:///path`, a plain path, or `s3://bucket/prefix`.

    An S3 store comes wrapped in retry.RetryStore (retries with backoff, a
    concurrency limit, `metrics()`); `retry=RetryPolicy(...)` tunes it."""
    url = os.fspath(url)
    if url.startswith("s3://"):
        from .retry import RetryStore
        from .s3 import S3Store
        policy = options.pop("retry", None)
        store = S3Store.from_url(url, **options)
        return RetryStore(store, policy=policy, max_concurrency=store.max_concurrency)
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"file URL must name a local path: {url}")
        url = unquote(parsed.path)
    elif "://" in url:
        raise StoreError(f"unsupported store URL {url!r} (use a path, file:// or s3://)")
    return LocalStore(url, **options)
