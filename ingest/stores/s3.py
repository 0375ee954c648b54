"""A store in an S3 bucket (AWS S3 or any compatible server), via aiobotocore.

Credentials, region and endpoint come from the standard AWS settings
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE,
~/.aws/config and credentials, AWS_ENDPOINT_URL, AWS_REGION or
AWS_DEFAULT_REGION); explicit arguments override them.

This class makes exactly one attempt per request: botocore's own retries are
switched off, and failures worth repeating are raised as TransientStoreError
for retry.RetryStore, which `open_store` wraps around it.  One place decides
retries, and its counters see every attempt.

The client is created on first use inside the running event loop (the store
may be built outside any loop) and belongs to that loop; `close()` closes it.
First use also checks that the bucket exists: a missing bucket must be an
error before any write, and some servers answer a write to a missing bucket
with a retryable 500 or even create the bucket.
"""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import io
import itertools
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import aiohttp
import botocore.exceptions as bce
import botocore.loaders
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from ..errors import StoreError
from .base import ObjectInfo, ObjectNotFound, Store, as_parts, check_key
from .retry import TransientStoreError
from .s3fast import SignedRequests, payload_digests

PROBE_DIR = ".ingest-probe"      # under the prefix; holds the If-None-Match probe for an instant
# PUTs larger than this (packs) have their payload hashes computed in a
# worker thread before they go through s3fast.SignedRequests; smaller ones
# (manifests, refs, trees, index shards) on the event loop.
FAST_PUT_MAX = 1 << 20
# Answers to one of our own signed requests that say the endpoint wants
# something only botocore does (a redirect, another region, a signature it
# reads differently): that request and all later ones go through botocore.
_FAST_REFUSED_STATUS = {301, 302, 307, 400, 403}
PAYLOAD_SIGNING_ENV = "INGEST_S3_PAYLOAD_SIGNING"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                    "all_proxy")

# Error codes from the S3 API that say "try again" (besides any 5xx status).
_TRANSIENT_CODES = {
    "SlowDown", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    # AWS: a concurrent conditional write or a delete raced this one; retrying
    # gives the true answer (412 if the other write stored the object).
    "ConditionalRequestConflict", "OperationAborted",
}
_AUTH_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
    "InvalidSecurity",
}
# Answers to a conditional PUT that mean "this server does not do If-None-Match".
_NO_CONDITIONAL_CODES = {"NotImplemented", "InvalidArgument", "InvalidRequest"}
_CONNECTION_ERRORS = (
    bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
    bce.ConnectionClosedError, bce.ResponseStreamingError, bce.IncompleteReadError,
    bce.HTTPClientError, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError,
)


class BucketNotFound(StoreError):
    """The bucket named in the store URL does not exist at the endpoint."""


class AccessDenied(StoreError):
    """The credentials are missing, wrong, expired or not permitted."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/")."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"not an S3 URL (want s3://bucket/prefix): {url!r}")
    if parsed.query or parsed.fragment or parsed.params:
        raise StoreError(f"S3 URL must not have a query or fragment: {url!r}")
    prefix = parsed.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError:
            raise StoreError(f"invalid prefix in S3 URL {url!r}") from None
        prefix += "/"
    return parsed.netloc, prefix


def _code(e: bce.ClientError) -> tuple[str, int]:
    err = e.response.get("Error", {})
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", "") or status), int(status or 0)


class PartsBody:
    """The bytes of one put: one bytes-like object or a list of them, kept as
    they are (no copy, no join).  Each request gets its own `reader()`, so a
    second request of the same put (RetryStore's retry, the HEAD-then-PUT
    fallback after a 501) starts again at byte 0."""

    __slots__ = ("views", "size")

    def __init__(self, data) -> None:
        self.views = [v for v in as_parts(data) if v.nbytes]
        self.size = sum(v.nbytes for v in self.views)

    def reader(self) -> "PartsReader":
        return PartsReader(self.views, self.size)

    def joined(self) -> bytes:
        return b"".join(self.views)


class PartsReader(io.RawIOBase):
    """A read-only, seekable file over a list of byte buffers, for botocore.

    What botocore 1.43 / aiobotocore 3.10 / aiohttp 3.14 do with it (read in
    their sources): botocore sizes it with seek(0, 2)/tell() (Content-Length),
    adds `Expect: 100-continue` (any body with read()), and over http reads it
    in 1 MiB pieces on the event loop for the CRC32 checksum header and the
    SigV4 payload SHA-256, seeking back to the start after each.  aiohttp then
    sends it as an IOBasePayload (size unknown to it, so botocore's
    Content-Length stands): read(256 KiB) in the default executor, one piece
    at a time, each written to the socket before the next.  Over https
    botocore instead wraps it in an aws-chunked stream with the CRC32 as a
    trailer and UNSIGNED-PAYLOAD (no SHA-256), read in 1 MiB pieces on the
    loop as aiohttp sends it.  Either way at most a 1 MiB piece is copied,
    never the whole body; a bytes body instead is wrapped by botocore in a
    BytesIO, whose getbuffer() in aiohttp's BytesIOPayload copies all of it.

    The parts must not change while a request reads them.  Reads may come
    from another thread, one at a time."""

    def __init__(self, views: list[memoryview], size: int) -> None:
        super().__init__()
        self._views = views
        self._ends = list(itertools.accumulate(v.nbytes for v in views))
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _pieces(self, n: int):
        """Views of the next `n` bytes (fewer at the end); advances."""
        pos, end = self._pos, min(self._size, self._pos + n)
        if pos >= end:
            return []
        out = []
        i = bisect.bisect_right(self._ends, pos)
        while pos < end:
            v = self._views[i]
            start = pos - (self._ends[i] - v.nbytes)
            take = min(v.nbytes - start, end - pos)
            out.append(v[start:start + take])
            pos += take
            i += 1
        self._pos = pos
        return out

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        if size is None or size < 0:
            size = max(0, self._size - self._pos)
        pieces = self._pieces(size)
        return pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b) -> int:
        self._checkClosed()
        out = memoryview(b).cast("B")
        n = 0
        for piece in self._pieces(out.nbytes):
            out[n:n + piece.nbytes] = piece
            n += piece.nbytes
        return n


class S3Store(Store):
    accepts_parts = True        # put() takes a pack's parts: see PartsBody

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, profile: str | None = None,
                 max_concurrency: int = 16, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, conditional_put: bool | None = None,
                 fast_requests: bool = True, payload_signing: bool | None = None) -> None:
        """`prefix` is "" or ends in "/".  `conditional_put`: None probes once
        whether the server honours If-None-Match; True/False skip the probe.
        `fast_requests`: GETs, HEADs and PUTs as requests signed here
        (s3fast) rather than through botocore, until the server refuses one;
        False sends everything through botocore.  `payload_signing`: whether
        a PUT's SigV4 signature covers its body's SHA-256; None does as
        botocore does (over http yes, over https no), unless
        $INGEST_S3_PAYLOAD_SIGNING says (true/false; how the CLI and the
        daemon set it).  Every PUT carries its CRC32 either way, which S3
        and SeaweedFS check; SeaweedFS 4.x does not check the signed
        SHA-256, which costs ~0.9 CPU s per GiB here."""
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}"
        self.endpoint_url = endpoint_url
        # botocore reads AWS_DEFAULT_REGION only; other AWS tools prefer AWS_REGION.
        self.region = region or os.environ.get("AWS_REGION") or None
        self.profile = profile
        self.max_concurrency = max_concurrency
        self.conditional_put = conditional_put
        self.fast_requests = fast_requests
        self.payload_signing = (payload_signing if payload_signing is not None
                                else _env_bool(PAYLOAD_SIGNING_ENV))
        self._fast: SignedRequests | None = None
        self._config = AioConfig(
            max_pool_connections=max_concurrency,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},   # RetryStore retries
            **({} if self.payload_signing is None
               else {"s3": {"payload_signing_enabled": self.payload_signing}}),
        )
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._init_lock = asyncio.Lock()
        self._probe_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future] = {}    # if-absent puts in flight, by full key

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None,
                 max_concurrency: int = 16, **options) -> "S3Store":
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, endpoint_url=endpoint_url,
                   max_concurrency=max_concurrency, **options)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    # -- client lifecycle ------------------------------------------------------
    async def _s3(self, op: str, key: str = ""):
        """The client, created on first use; `op` and `key` name the request
        that triggered creation in any error it raises."""
        loop = asyncio.get_running_loop()
        if self._client is not None:
            if loop is not self._loop:
                raise StoreError(f"{self.url}: store used from a second event loop; "
                                 "open one store per loop")
            return self._client
        async with self._init_lock:
            if self._client is None:
                self._client = await self._connect(op, key)
                self._loop = loop
        return self._client

    async def _connect(self, op: str, key: str):
        session = AioSession(profile=self.profile)
        session.register_component("data_loader", _shared_loader())
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(session.create_client(
                "s3", region_name=self.region, endpoint_url=self.endpoint_url,
                config=self._config))
        except bce.ProfileNotFound as e:
            raise StoreError(f"{self.url}: {e}") from None
        except bce.BotoCoreError as e:
            raise StoreError(f"{self.url}: cannot create S3 client: {e}") from None
        # The bucket's URL as botocore addresses it (endpoint, path or
        # virtual-host style), from the HeadBucket it sends next.
        seen: list[str] = []
        client.meta.events.register("before-send.s3.HeadBucket",
                                    lambda request, **_: seen.append(request.url))
        try:
            await self._check_bucket(client, op, key)
            if self.fast_requests and seen:
                self._fast = await self._signed_requests(session, client, seen[0], stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return client

    async def _signed_requests(self, session, client, bucket_url: str, stack
                               ) -> SignedRequests | None:
        """The fast path for this store, or None where it cannot do what
        botocore would (no credentials, a bucket URL with a query, a proxy
        to go through)."""
        if "?" in bucket_url or self._config.proxies or any(
                os.environ.get(v) for v in _PROXY_VARIABLES):
            return None                 # a proxy is botocore's to honour
        try:
            creds = await session.get_credentials()
        except bce.BotoCoreError:
            return None
        if creds is None:
            return None
        fast = SignedRequests(bucket_url, client.meta.region_name or "us-east-1", creds,
                              payload_signing=self.payload_signing,
                              max_connections=self.max_concurrency,
                              connect_timeout=self._config.connect_timeout,
                              read_timeout=self._config.read_timeout)
        stack.push_async_callback(fast.close)
        return fast

    def _refused(self, e: bce.ClientError) -> bool:
        """Whether our own request's error says to use botocore from now on
        (it then sends the request again, and gives the true answer)."""
        if _code(e)[1] in _FAST_REFUSED_STATUS:
            self._fast = None
            return True
        return False

    def _unproven(self, fast: SignedRequests) -> bool:
        """A failure other than an HTTP answer (connection, TLS, timeout)
        before our requests ever worked here: the network may want what only
        botocore does (its CA bundle, its settings), so botocore from now
        on.  Once they have worked, such a failure is the server's, and
        raised as it is."""
        if fast.proven:
            return False
        self._fast = None
        return True

    async def _object_call(self, op: str, client, k: str, fast_kw: dict, boto_kw: dict):
        """Object request `op` (get_object, head_object, put_object) through
        our own signed requests when they are on, else, or when they give
        way (_refused, _unproven), through botocore."""
        fast = self._fast
        if fast is not None:
            try:
                return await getattr(fast, op)(Key=k, **fast_kw)
            except bce.ClientError as e:
                if not self._refused(e):
                    raise
            except Exception:
                if not self._unproven(fast):
                    raise
        return await getattr(client, op)(Bucket=self.bucket, Key=k, **boto_kw)

    async def _put_object(self, client, k: str, body: "PartsBody", **kw) -> None:
        fast = self._fast
        if fast is None:
            fast_kw = {}                      # botocore's alone (_object_call)
        elif body.size <= FAST_PUT_MAX:
            fast_kw = dict(kw, Body=body.joined())
        else:
            # A pack: sent as its parts, its hashes computed in a worker
            # thread in one pass over them; botocore hashes on the event loop,
            # over 1 MiB copies (~85 ms of the loop per 64 MiB here).
            fast_kw = dict(kw, Body=body.views,
                           Digests=await asyncio.to_thread(payload_digests, body.views,
                                                           fast.signs_payload))
        await self._object_call("put_object", client, k, fast_kw, dict(kw, Body=body.reader()))

    async def _check_bucket(self, client, op: str, key: str) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
        except bce.ClientError as e:
            code, status = _code(e)
            if status == 404 or code == "NoSuchBucket":
                raise BucketNotFound(f"{op} {self._where(key)}: bucket {self.bucket!r} does not "
                                     f"exist at {client.meta.endpoint_url}") from None
            if status == 403:
                # Bad credentials, or good ones without s3:ListBucket: HEAD has
                # no body to tell which.  Let the first real request say.
                return
            raise self._error(op, key, e, client) from None
        except Exception as e:
            raise self._error(op, key, e, client) from None

    async def close(self) -> None:
        stack, self._stack, self._client, self._loop = self._stack, None, None, None
        self._fast = None
        if stack is not None:
            await stack.aclose()

    # -- errors ------------------------------------------------------------------
    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _error(self, op: str, key: str, e: BaseException, client=None) -> StoreError:
        """Translate a botocore/aiohttp exception into a one-line StoreError."""
        where = self._where(key)
        endpoint = (client or self._client).meta.endpoint_url if (client or self._client) else "S3"
        if isinstance(e, bce.ClientError):
            code, status = _code(e)
            msg = e.response.get("Error", {}).get("Message", "") or f"HTTP {status}"
            if code == "NoSuchBucket":
                return BucketNotFound(f"{op} {where}: bucket {self.bucket!r} does not exist at {endpoint}")
            if code in _AUTH_CODES or status == 403:
                return AccessDenied(f"{op} {where}: access denied ({code}): check the AWS "
                                    f"credentials and their permissions for {endpoint}")
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return TransientStoreError(f"{op} {where}: {code}: {msg}")
            return StoreError(f"{op} {where}: {code}: {msg}")
        if isinstance(e, bce.NoCredentialsError):
            return AccessDenied(f"{op} {where}: no AWS credentials found (set AWS_ACCESS_KEY_ID "
                                "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
        if isinstance(e, (bce.EndpointConnectionError, bce.ConnectTimeoutError)):
            return TransientStoreError(f"{op} {where}: cannot connect to {endpoint}: {_cause(e)}")
        if isinstance(e, _CONNECTION_ERRORS):
            return TransientStoreError(f"{op} {where}: connection to {endpoint} failed: "
                                       f"{type(e).__name__}: {_cause(e)}")
        if isinstance(e, bce.BotoCoreError):
            return StoreError(f"{op} {where}: {e}")
        return StoreError(f"{op} {where}: {type(e).__name__}: {e}")

    # -- operations --------------------------------------------------------------
    async def put(self, key: str, data, *, if_absent: bool = False) -> bool:
        """`data` is one bytes-like object or a list/tuple of them (a pack's
        parts), stored as their concatenation without joining them."""
        k = self.prefix + check_key(key)
        body = PartsBody(data)
        client = await self._s3("put", key)
        try:
            if not if_absent:
                await self._put_object(client, k, body)
                return True
            return await self._put_once(client, k, key, body)
        except StoreError:
            raise
        except Exception as e:
            raise self._error("put", key, e) from None

    async def _put_once(self, client, k: str, key: str, body: "PartsBody") -> bool:
        """If-absent put, one at a time per key within this store.

        A caller arriving while another if-absent put of the same key is in
        flight waits for it: if it stored the object or found it there, the
        answer is False without a request (the object exists, as a request
        would have found); if it failed, the caller tries itself.  Why: on
        SeaweedFS 4.48, 8-16 concurrent conditional PUTs of one key took 1-5 s
        (whole seconds: a server-side lock retried every second) against 20 ms
        for one; and with HEAD-then-PUT this closes the race within a process.
        """
        while (pending := self._pending.get(k)) is not None:
            if await asyncio.shield(pending) is not None:
                return False
        done = asyncio.get_running_loop().create_future()
        self._pending[k] = done
        outcome = None
        try:
            outcome = await self._put_if_absent(client, k, key, body)
            return outcome
        finally:
            del self._pending[k]
            done.set_result(outcome)        # None: failed, the waiters try themselves

    async def _put_if_absent(self, client, k: str, key: str, body: "PartsBody") -> bool:
        if self.conditional_put is None:
            await self._probe_conditional_put(client)
        if self.conditional_put:
            try:
                await self._put_object(client, k, body, IfNoneMatch="*")
                return True
            except bce.ClientError as e:
                code, status = _code(e)
                if status == 412 or code == "PreconditionFailed":
                    return False
                if status == 501 or code == "NotImplemented":
                    self.conditional_put = False      # fall through to HEAD-then-PUT
                else:
                    raise
        # HEAD-then-PUT: two writers in different processes can both see
        # "absent" and both write; the last one wins and both return True
        # (see docs/STORES.md).
        if await self._head(client, k, key) is not None:
            return False
        await self._put_object(client, k, body)
        return True

    async def _probe_conditional_put(self, client) -> None:
        """Find out once whether the server honours If-None-Match: '*': write a
        probe object twice; a 412 on the second write means it does."""
        async with self._probe_lock:
            if self.conditional_put is not None:
                return
            probe = f"{PROBE_DIR}/{uuid.uuid4().hex}"
            k = self.prefix + probe
            try:
                try:
                    for _ in range(2):
                        await client.put_object(Bucket=self.bucket, Key=k, Body=b"", IfNoneMatch="*")
                    self.conditional_put = False           # second write not refused: ignored
                except bce.ClientError as e:
                    code, status = _code(e)
                    if status == 412 or code == "PreconditionFailed":
                        self.conditional_put = True
                    elif status in (400, 501) and code in _NO_CONDITIONAL_CODES | {"400", "501"}:
                        self.conditional_put = False
                    else:
                        raise
                finally:
                    with contextlib.suppress(Exception):
                        await client.delete_object(Bucket=self.bucket, Key=k)
            except StoreError:
                raise
            except Exception as e:
                raise self._error("put", probe, e) from None

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        k = self.prefix + check_key(key)
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"negative byte range [{start}, {end}) for {key}")
        client = await self._s3("get", key)
        try:
            if end is not None and end <= start:
                if await self._head(client, k, key) is None:
                    raise ObjectNotFound(f"object not found: {key}")
                return b""
            kwargs = {}
            if start or end is not None:
                kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
            try:
                resp = await self._object_call("get_object", client, k, kwargs, kwargs)
            except bce.ClientError as e:
                code, status = _code(e)
                if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                    raise ObjectNotFound(f"object not found: {key}") from None
                if status == 416 or code == "InvalidRange":
                    return await self._past_end(client, k, key, start, e)
                raise
            async with resp["Body"] as body:
                data = await body.read()
            if kwargs and resp["ResponseMetadata"]["HTTPStatusCode"] == 200:
                data = data[start:end]       # the server ignored Range and sent it all
            return data
        except StoreError:
            raise
        except Exception as e:
            raise self._error("get", key, e) from None

    async def _past_end(self, client, k: str, key: str, start: int, e: bce.ClientError) -> bytes:
        """A 416: the range starts at or past the end (S3 refuses even bytes=0-
        on an empty object).  Return b"" if so, as the interface promises."""
        size = None
        content_range = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("content-range", "")
        if content_range.startswith("bytes */"):
            with contextlib.suppress(ValueError):
                size = int(content_range[len("bytes */"):])
        if size is None:
            info = await self._head(client, k, key)
            if info is None:
                raise ObjectNotFound(f"object not found: {key}")
            size = info.size
        if start >= size:
            return b""
        raise e

    async def _head(self, client, k: str, key: str) -> ObjectInfo | None:
        try:
            resp = await self._object_call("head_object", client, k, {}, {})
        except bce.ClientError as e:
            if _code(e)[1] == 404:
                return None
            raise
        return ObjectInfo(key, resp["ContentLength"])

    async def head(self, key: str) -> ObjectInfo | None:
        k = self.prefix + check_key(key)
        client = await self._s3("head", key)
        try:
            return await self._head(client, k, key)
        except Exception as e:
            raise self._error("head", key, e) from None

    async def list(self, prefix: str = "", *, start_after: str | None = None
                   ) -> AsyncIterator[ObjectInfo]:
        """Objects under `prefix` in the server's key order, from after key
        `start_after` if given.  AWS orders keys by their UTF-8 bytes;
        SeaweedFS walks its directory tree, so a "dir/" subtree comes before
        a sibling key sorting between "dir" and "dir/" (e.g. "dir-x")."""
        client = await self._s3("list", prefix)
        cut = len(self.prefix)
        kwargs = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after is not None:
            kwargs["StartAfter"] = self.prefix + start_after
        try:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(**kwargs):
                for obj in page.get("Contents", ()):
                    yield ObjectInfo(obj["Key"][cut:], obj["Size"])
        except (bce.BotoCoreError, bce.ClientError, aiohttp.ClientError,
                asyncio.TimeoutError, ConnectionError) as e:
            raise self._error("list", prefix, e) from None

    async def delete(self, key: str) -> None:
        k = self.prefix + check_key(key)
        client = await self._s3("delete", key)
        try:
            await client.delete_object(Bucket=self.bucket, Key=k)
        except bce.ClientError as e:
            if _code(e)[0] != "NoSuchKey":
                raise self._error("delete", key, e) from None
        except Exception as e:
            raise self._error("delete", key, e) from None


def _env_bool(name: str) -> bool | None:
    """A yes/no environment setting: None when unset, empty or `auto`."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise StoreError(f"{name}={os.environ[name]!r}: use true, false or auto")


@functools.cache
def _shared_loader():
    """One botocore model loader for every store: each new session would
    otherwise parse the S3 service model again (90 ms of a 100-300 ms open).
    Sessions themselves are not shared: they cache credentials, and a store
    opened later must see the AWS settings of that moment."""
    return botocore.loaders.create_loader()


def _cause(e: BaseException) -> str:
    """The innermost useful reason, e.g. 'Connection refused'."""
    inner = getattr(e, "kwargs", {}).get("error") if isinstance(e, bce.BotoCoreError) else None
    while inner is not None:
        reason = getattr(inner, "os_error", None) or getattr(inner, "__cause__", None)
        if reason is None:
            break
        inner = reason
    if isinstance(inner, OSError) and inner.errno:
        return os.strerror(inner.errno)     # asyncio's text is "Connect call failed (...)"
    return str(inner or e)
