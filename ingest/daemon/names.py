"""Namespaces and paths from request URLs, checked before anything is done.

A file's URL is /v1/files/<namespace>/<path> and its ref is
"<namespace>/<path>".  The URL is decoded here, component by component, from
the raw request target (aiohttp neither normalizes '..' nor refuses %00), and
every component is checked after decoding, so '%2e%2e' is refused exactly as
'..' is.  Refused: empty, '.' and '..' components, control characters (NUL
included), backslashes, malformed %-escapes or UTF-8, a namespace holding '/',
and names too long for the stores.
"""
from __future__ import annotations

import re

from ..errors import InvalidName
from ..hashing import parse_hex_id
from ..refs import check_name

NAMESPACE_MAX_BYTES = 128
# A local store keeps a component as a file name: at most 255 bytes, after it
# escapes '%' as '%25' and appends one '%'.
COMPONENT_MAX_BYTES = 254

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def decode(raw: str) -> str:
    """Percent-decode one URL component strictly (no '+' rule: this is a path)."""
    b = raw.encode("utf-8", "surrogateescape")
    if _BAD_ESCAPE.search(b):
        raise InvalidName("malformed %-escape in the URL")
    try:
        return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), b).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidName("the URL does not decode to UTF-8") from None


def check_component(part: str) -> None:
    if len(part.encode("utf-8")) + 2 * part.count("%") > COMPONENT_MAX_BYTES:
        raise InvalidName(f"a path component is longer than {COMPONENT_MAX_BYTES} bytes")


def check_namespace(ns: str) -> str:
    if not ns:
        raise InvalidName("empty namespace")
    if "/" in ns:
        raise InvalidName(f"a namespace is one path component: {ns!r}")
    if len(ns.encode("utf-8", "surrogatepass")) > NAMESPACE_MAX_BYTES:
        raise InvalidName(f"namespace longer than {NAMESPACE_MAX_BYTES} bytes")
    check_name(ns)
    check_component(ns)
    return ns


def check_ref(name: str) -> str:
    check_name(name)
    for part in name.split("/"):
        check_component(part)
    return name


def parse_files_target(tail: str) -> tuple[str, str, bool]:
    """The raw URL path after '/v1/files/' -> (namespace, path, is_listing).

    'ns/a/b.bin' names a file (path 'a/b.bin'); 'ns', 'ns/' and 'ns/a/' ask
    for a listing of everything under the prefix ('' or 'a/')."""
    raw_ns, sep, raw_rest = tail.partition("/")
    ns = check_namespace(decode(raw_ns))
    if not raw_rest:
        return ns, "", True
    listing = raw_rest.endswith("/")
    parts = raw_rest[:-1].split("/") if listing else raw_rest.split("/")
    path = "/".join(decode(p) for p in parts)
    check_ref(f"{ns}/{path}")
    return ns, path + ("/" if listing else ""), listing


def parse_file_id(raw: str) -> bytes:
    fid = parse_hex_id(decode(raw))
    if fid is None:
        raise InvalidName("a file id is 64 hex digits")
    return fid
