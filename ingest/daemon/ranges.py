"""HTTP range requests and conditional GETs (RFC 9110 sections 13 and 14).

One range per request: a multi-range request is answered with the whole file
(200), which the RFC allows, rather than a multipart body no client of a
file hub asks for.  ETags are strong: a file id names exactly one sequence
of bytes.
"""
from __future__ import annotations

import re

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    """No byte of the file lies in the requested range (answer 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) to send for a Range header value, or None for the whole
    file (no header, a unit other than bytes, a syntax error or several
    ranges: the RFC lets a server ignore those).  Raises Unsatisfiable."""
    if not header:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    m = _SPEC.match(spec)
    if not m or m.group(1) == m.group(2) == "":
        return None
    first, last = m.group(1), m.group(2)
    if first == "":                       # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable()
        return max(size - n, 0), size
    start = int(first)
    if last != "" and int(last) < start:
        return None                       # invalid: ignore the header
    if start >= size:
        raise Unsatisfiable()
    end = size if last == "" else min(int(last) + 1, size)
    return start, end


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def none_match(header: str | None, etag: str) -> bool:
    """If-None-Match matches (weak comparison): answer 304 to a GET or HEAD."""
    if header is None:
        return False
    tags = _tags(header)
    return "*" in tags or any(_opaque(t) == etag for t in tags)


def if_range_holds(header: str | None, etag: str) -> bool:
    """Honour Range only if If-Range is absent or names this ETag (strong
    comparison).  A date is never a strong validator here: send it all."""
    return header is None or header.strip() == etag
