"""Bearer tokens and what each may do.

The token file is JSON:

    {"tokens": [
        {"name": "hub-frontend", "sha256": "<hex SHA-256 of the token>",
         "read": ["*"], "write": ["*"]},
        {"name": "ci-org-a", "token": "<the token itself>",
         "read": ["org-a"], "write": ["org-a"]}
    ]}

`read` lets a token GET, HEAD and list a namespace's files; `write` lets it
PUT and DELETE them (write does not imply read); "*" is every namespace.
Reading by file id (/v1/objects, /v1/reconstruction) needs read access to at
least one namespace: a file id is a hash of the content, so knowing one is
knowing the file.

A token is stored either as itself or as its SHA-256 (preferred: the file
then holds nothing a thief could use).  Presented tokens are hashed and
compared against every entry with hmac.compare_digest, all entries every
time, so neither the comparison nor the number of entries tried depends on
how much of a secret a guess got right.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from dataclasses import dataclass

from ..errors import InvalidName
from .config import ConfigError
from .names import check_namespace

MIN_TOKEN_CHARS = 16      # a shorter secret is guessable over a network
ALL = "*"


@dataclass(frozen=True)
class Principal:
    """Who made a request: a token's name and its namespaces."""
    name: str
    read: frozenset[str]
    write: frozenset[str]

    def can_read(self, namespace: str) -> bool:
        return ALL in self.read or namespace in self.read

    def can_write(self, namespace: str) -> bool:
        return ALL in self.write or namespace in self.write

    @property
    def can_read_any(self) -> bool:
        return bool(self.read)


# Without a token file (loopback only) every request acts as this.
ANONYMOUS = Principal("anonymous", frozenset({ALL}), frozenset({ALL}))


class TokenTable:
    def __init__(self, entries: list[tuple[bytes, Principal]]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        """The principal of a presented token, or None."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for want, principal in self._entries:
            # No early exit: every entry costs the same whether or not one matched.
            if hmac.compare_digest(digest, want):
                found = principal
        return found

    @classmethod
    def load(cls, path: str) -> tuple["TokenTable", list[str]]:
        """Read a token file; returns the table and warnings worth logging."""
        warnings = []
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                raw = f.read(1 << 20)
        except OSError as e:
            raise ConfigError(f"cannot read token file {path}: {e.strerror}") from None
        try:
            doc = json.loads(raw)
            items = doc["tokens"]
            if not isinstance(items, list):
                raise TypeError("'tokens' must be a list")
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"token file {path}: not {{\"tokens\": [...]}} JSON ({e})") from None
        entries: list[tuple[bytes, Principal]] = []
        names: set[str] = set()
        plaintext = False
        for i, item in enumerate(items):
            where = f"token file {path}, entry {i}"
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: not an object")
            unknown = set(item) - {"name", "token", "sha256", "read", "write"}
            if unknown:
                raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
            name = item.get("name")
            if not isinstance(name, str) or not name or len(name) > 128:
                raise ConfigError(f"{where}: needs a 'name' (1-128 characters)")
            if name in names:
                raise ConfigError(f"{where}: name {name!r} is used twice")
            names.add(name)
            if ("token" in item) == ("sha256" in item):
                raise ConfigError(f"{where} ({name}): give exactly one of 'token' and 'sha256'")
            if "token" in item:
                tok = item["token"]
                if not isinstance(tok, str) or len(tok) < MIN_TOKEN_CHARS:
                    raise ConfigError(f"{where} ({name}): a token has at least "
                                      f"{MIN_TOKEN_CHARS} characters")
                digest = hashlib.sha256(tok.encode("utf-8", "surrogateescape")).digest()
                plaintext = True
            else:
                try:
                    digest = bytes.fromhex(item["sha256"])
                except (TypeError, ValueError):
                    digest = b""
                if len(digest) != 32:
                    raise ConfigError(f"{where} ({name}): 'sha256' must be 64 hex digits")
            scopes = []
            for what in ("read", "write"):
                ns = item.get(what, [])
                if not isinstance(ns, list) or not all(isinstance(n, str) for n in ns):
                    raise ConfigError(f"{where} ({name}): '{what}' must be a list of namespaces")
                for n in ns:
                    if n != ALL:
                        try:
                            check_namespace(n)
                        except InvalidName as e:
                            raise ConfigError(f"{where} ({name}): {e}") from None
                scopes.append(frozenset(ns))
            entries.append((digest, Principal(name, *scopes)))
        if not entries:
            raise ConfigError(f"token file {path} lists no tokens")
        if plaintext and stat.S_IMODE(mode) & 0o077:
            warnings.append(f"token file {path} holds plaintext tokens and is readable by "
                            "other users: chmod 600 it, or store 'sha256' instead")
        return cls(entries), warnings


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None
