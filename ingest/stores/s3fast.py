"""Signed S3 object requests without botocore's per-request machinery.

botocore spends 1.9-2.3 ms of CPU on every request here (py-spy, small PUTs
and GETs into SeaweedFS on loopback: the hook emitter a third of it, SigV4
signing 18%, response parsing 10%, the endpoint ruleset 7%, the user-agent
string 7%), which makes a tree of small files on S3 bound by the client's
CPU, not by the server.  `SignedRequests` does the object requests,
GetObject, HeadObject and PutObject (a pack's too), as one SigV4-signed
aiohttp request each, and answers as the botocore
client would (the same dicts, `ClientError` with the same `Error` and
`ResponseMetadata` fields, botocore's connection exceptions), so the
S3Store's logic (If-None-Match, 412, 416, error mapping) is the same code
for both paths.

What stays with botocore: credentials (resolved and refreshed by the
session: each request asks for the current frozen set), the bucket's URL
(taken from the HeadBucket request botocore sends when the store connects,
so addressing style and endpoint rules are botocore's), listings, deletes,
every request under a proxy, and every request after
the server refuses one of ours or ours fail before any worked
(S3Store._refused, S3Store._unproven): a signature, region or redirect
answer, or a connection that only botocore's settings make, means this
endpoint wants something only botocore does.

Integrity is as botocore's: every PUT sends its body's CRC32 in
x-amz-checksum-crc32 (S3 and SeaweedFS refuse a body that does not match
it), and over http the body's SHA-256 is signed too (S3 checks it;
SeaweedFS 4.x does not), over https not (`payload_signing` changes that).
A pack's body goes as its parts, never joined, its hashes computed in a
worker thread in one pass: botocore hashes it on the event loop over 1 MiB
copies, ~85 ms of the loop per 64 MiB pack here, and then aiohttp reads it
through the default executor in 256 KiB copies.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import html
import re
import zlib
from urllib.parse import quote, urlsplit

import aiohttp
import botocore.exceptions as bce
from yarl import URL

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
SEND_PIECE = 1 << 20        # most bytes of a body handed to aiohttp at once
# A body larger than this waits for the server's 100 Continue, as botocore's
# PUTs do: a refusal (403, 412, a redirect) then comes before the body,
# not after megabytes of it, or as a connection the server closed on it.
EXPECT_CONTINUE_FROM = 1 << 20
_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]*)</\1>")


class SignedRequests:
    """GetObject, HeadObject and PutObject against one bucket's URL (so no
    Bucket argument), taking and answering what botocore's client does."""

    def __init__(self, bucket_url: str, region: str, credentials, *, max_connections: int,
                 connect_timeout: float, read_timeout: float,
                 payload_signing: bool | None = None) -> None:
        parts = urlsplit(bucket_url)
        self._scheme = parts.scheme
        self._host = parts.netloc
        self._base_path = parts.path.rstrip("/")
        self.endpoint_url = f"{parts.scheme}://{parts.netloc}"
        self._region = region
        self._credentials = credentials
        # None: as botocore does for S3, over https the payload is not hashed
        # into the signature (TLS protects it; its CRC32 still goes with it),
        # over http its SHA-256 is signed.
        self.signs_payload = (parts.scheme != "https" if payload_signing is None
                              else payload_signing)
        self._keys: dict[tuple[str, str], bytes] = {}     # (secret, date) -> signing key
        # Set by the first answer that shows the way works (a success, or
        # a 404, 412 or 416): until then any failure of ours is the
        # caller's cue to use botocore instead (S3Store._unproven).
        self.proven = False
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                          sock_read=read_timeout),
            # No Accept-Encoding: a server must not gzip an object's bytes
            # on the way (they are read as stored, auto_decompress off).
            skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            auto_decompress=False)

    async def close(self) -> None:
        await self._session.close()

    # -- the three operations, answering as botocore's client does -----------------
    async def get_object(self, *, Key: str, Range: str | None = None) -> dict:
        headers = {"range": Range} if Range else {}
        status, hdrs, body = await self._request("GET", Key, headers, b"", EMPTY_SHA256, "GetObject")
        return {"Body": _Body(body), "ContentLength": len(body),
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": hdrs}}

    async def head_object(self, *, Key: str) -> dict:
        status, hdrs, _ = await self._request("HEAD", Key, {}, b"", EMPTY_SHA256, "HeadObject")
        return {"ContentLength": int(hdrs.get("content-length", 0)),
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": hdrs}}

    async def put_object(self, *, Key: str, Body, IfNoneMatch: str | None = None,
                         Digests: tuple[str | None, str] | None = None) -> dict:
        """`Body`: bytes, or a list of byte buffers sent as their
        concatenation (a pack's parts, never joined).  `Digests`: the
        body's (SHA-256 hex or None, CRC32 header value) from
        payload_digests(), computed by the caller off the event loop;
        without them they are computed here (small bodies)."""
        parts = [memoryview(Body).cast("B")] if isinstance(Body, (bytes, bytearray, memoryview)) \
            else [memoryview(v).cast("B") for v in Body]
        size = sum(v.nbytes for v in parts)
        sha, crc = Digests if Digests is not None else payload_digests(parts, self.signs_payload)
        headers = {"x-amz-checksum-crc32": crc}
        if IfNoneMatch is not None:
            headers["if-none-match"] = IfNoneMatch
        body = parts[0] if len(parts) == 1 and size <= SEND_PIECE else _pieces(parts)
        status, hdrs, _ = await self._request("PUT", Key, headers, body,
                                              sha or UNSIGNED_PAYLOAD, "PutObject", size)
        return {"ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": hdrs}}

    # -- one request -------------------------------------------------------------------
    async def _request(self, method: str, key: str, headers: dict, body,
                       payload_hash: str, op: str, size: int = 0) -> tuple[int, dict, bytes]:
        path = quote(f"{self._base_path}/{key}", safe="/~")
        creds = await self._frozen()
        headers = self._sign(method, path, headers, payload_hash, creds)
        if method == "PUT":
            # Not signed (botocore does not either); set here so that a body
            # given in pieces is sent with it rather than chunked.
            headers["content-length"] = str(size)
        url = URL(f"{self._scheme}://{self._host}{path}", encoded=True)
        try:
            async with self._session.request(method, url, headers=headers,
                                             data=body if method == "PUT" else None,
                                             expect100=size > EXPECT_CONTINUE_FROM,
                                             allow_redirects=False) as resp:
                data = await resp.read()
                status = resp.status
                hdrs = {k.lower(): v for k, v in resp.headers.items()}
        except aiohttp.ClientConnectorError as e:
            raise bce.EndpointConnectionError(endpoint_url=self.endpoint_url, error=e) from None
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as e:
            raise bce.ReadTimeoutError(endpoint_url=self.endpoint_url, error=e) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientPayloadError) as e:
            raise bce.ConnectionClosedError(endpoint_url=self.endpoint_url, error=e) from None
        if status < 300 or status in (404, 412, 416):
            self.proven = True
        if status >= 300:
            fields = dict(_ERROR_FIELD.findall(data[:4096])) if data else {}
            code = html.unescape(fields.get(b"Code", b"").decode("utf-8", "replace")) or str(status)
            message = html.unescape(fields.get(b"Message", b"").decode("utf-8", "replace"))
            raise bce.ClientError({"Error": {"Code": code, "Message": message},
                                   "ResponseMetadata": {"HTTPStatusCode": status,
                                                        "HTTPHeaders": hdrs}}, op)
        return status, hdrs, data

    async def _frozen(self):
        get = self._credentials.get_frozen_credentials
        creds = get()
        if asyncio.iscoroutine(creds):           # aiobotocore's refreshable credentials
            creds = await creds
        return creds

    def _sign(self, method: str, path: str, headers: dict, payload_hash: str, creds) -> dict:
        """SigV4 (header auth) over host, the x-amz-* headers and those given."""
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        date = amz_date[:8]
        headers = dict(headers, **{"x-amz-date": amz_date, "x-amz-content-sha256": payload_hash})
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        signed = dict(headers, host=self._host)
        names = sorted(signed)
        canonical = "\n".join((method, path, "",
                               "".join(f"{n}:{' '.join(str(signed[n]).split())}\n" for n in names),
                               ";".join(names), payload_hash))
        scope = f"{date}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(creds.secret_key, date), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["host"] = self._host
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return headers

    def _signing_key(self, secret: str, date: str) -> bytes:
        key = self._keys.get((secret, date))
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (date, self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            if len(self._keys) > 8:
                self._keys.clear()
            self._keys[(secret, date)] = key
        return key


def payload_digests(parts, sha256: bool = True) -> tuple[str | None, str]:
    """(SHA-256 hex or None when not `sha256`, base64 big-endian CRC32) of
    the concatenation of byte buffers, in one pass over them and without
    joining them.  Blocking (both hashes give up the GIL on large buffers):
    a large body's belong in a worker thread; botocore computes them on the
    event loop, over 1 MiB copies (S3Store's PartsReader)."""
    h = hashlib.sha256() if sha256 else None
    crc = 0
    for v in parts:
        if h is not None:
            h.update(v)
        crc = zlib.crc32(v, crc)
    return (h.hexdigest() if h is not None else None,
            base64.b64encode(crc.to_bytes(4, "big")).decode())


async def _pieces(parts: list[memoryview]):
    """A body's bytes as views of at most SEND_PIECE bytes, for aiohttp to
    write one at a time, waiting for the socket between them (so the
    transport's buffer never holds a copy of more than one piece)."""
    for v in parts:
        for i in range(0, v.nbytes, SEND_PIECE):
            yield v[i:i + SEND_PIECE]


class _Body:
    """A GetObject body already read, shaped as botocore's streaming body is
    used by S3Store.get (`async with resp["Body"] as b: await b.read()`)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aenter__(self) -> "_Body":
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    async def read(self) -> bytes:
        return self._data
