"""The daemon's settings: command-line flags, else INGEST_* environment
variables, else defaults.

Every flag has an environment twin (`--max-uploads` and INGEST_MAX_UPLOADS),
so a systemd EnvironmentFile or a container's `--env-file` configures the
daemon without a command line.  Sizes take K/M/G/T suffixes (powers of 1024);
times are seconds.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, fields

from ..config import parse_zstd_level
from ..errors import IngestError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_SUFFIX = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}


class ConfigError(IngestError):
    """A flag, environment variable or the token file is not acceptable."""


def parse_size(text: str) -> int:
    """'64G' -> 68719476736; plain numbers are bytes."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _SUFFIX and t[-1:] else ""
    try:
        n = float(t[:len(t) - len(unit)])
    except ValueError:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M, 64G)") from None
    if n < 0:
        raise ConfigError(f"size must not be negative: {text!r}")
    return int(n * _SUFFIX[unit])


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"not a number of seconds: {text!r}") from None
    if v < 0:
        raise ConfigError(f"seconds must not be negative: {text!r}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ConfigError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise ConfigError(f"must be at least 1: {text!r}")
    return v


def _zstd_level(text: str) -> int:
    try:
        return parse_zstd_level(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ConfigError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise ConfigError(f"port out of range: {text!r}")
    return v


@dataclass
class Settings:
    store: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    tokens: str | None = None              # path of the token file; None: open, loopback only
    max_upload_size: int = 100 * GiB
    # Memory (docs/DAEMON.md has the measurements): ~35 MiB per upload in
    # flight (three 8 MiB read blocks, frames being compressed), ~35 MiB per
    # download of a large file (read-ahead spans, decoded frames), and
    # 64 MiB per pack for the open pack and those being stored.
    max_uploads: int = 8
    packs_in_flight: int = 2
    max_downloads: int = 16
    idle_timeout: float = 60.0             # a client silent this long is dropped
    drain_timeout: float = 30.0            # SIGTERM: uploads in flight get this long
    retry_after: int = 2                   # seconds, in 503 answers
    index_refresh: float = 60.0            # pick up other writers' index shards; 0: never
    workers: int | None = None             # engine thread pool; None: one per core
    zstd_level: int | None = None          # new frames' level; None: the store's
    list_limit: int = 1000                 # largest page a listing returns

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)

    def check(self) -> "Settings":
        if not self.store:
            raise ConfigError("no store: give --store or set INGEST_STORE")
        if self.tokens is None and not self.loopback_only:
            raise ConfigError(
                f"refusing to listen on {self.host} without a token file: anyone who can reach "
                "it could read and write every namespace (give --tokens FILE, or listen on "
                "127.0.0.1)")
        if self.max_upload_size < 1:
            raise ConfigError("--max-upload-size must be at least 1 byte")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# flag name, metavar, environment variable, parser, help
_OPTIONS = [
    ("host", "ADDR", "INGEST_HOST", str,
     "address to listen on (default 127.0.0.1; anything else needs --tokens)"),
    ("port", "PORT", "INGEST_PORT", _port, "TCP port (default 8080; 0 picks a free one)"),
    ("tokens", "FILE", "INGEST_TOKENS", str,
     "JSON file of bearer tokens and the namespaces each may read and write (see "
     "docs/DAEMON.md); without it the daemon is open to anyone and listens on loopback only"),
    ("max_upload_size", "BYTES", "INGEST_MAX_UPLOAD_SIZE", parse_size,
     "largest upload accepted, e.g. 50G (default 100G); larger ones get 413"),
    ("max_uploads", "N", "INGEST_MAX_UPLOADS", _count,
     "uploads in flight at once (default 8); more get 503 with Retry-After"),
    ("packs_in_flight", "N", "INGEST_PACKS_IN_FLIGHT", _count,
     "packs (~64 MiB each) being written to the store at once, for all uploads (default 2)"),
    ("max_downloads", "N", "INGEST_MAX_DOWNLOADS", _count,
     "downloads in flight at once (default 16); more get 503 with Retry-After"),
    ("idle_timeout", "SECONDS", "INGEST_IDLE_TIMEOUT", _seconds,
     "drop a client that sends or takes no bytes for this many seconds (default 60)"),
    ("drain_timeout", "SECONDS", "INGEST_DRAIN_TIMEOUT", _seconds,
     "on SIGTERM, let uploads in flight finish for up to this many seconds (default 30)"),
    ("retry_after", "SECONDS", "INGEST_RETRY_AFTER", _count,
     "Retry-After seconds in 503 answers (default 2)"),
    ("index_refresh", "SECONDS", "INGEST_INDEX_REFRESH", _seconds,
     "load other writers' new index shards every this many seconds; 0 never (default 60)"),
    ("workers", "N", "INGEST_WORKERS", _count, "engine worker threads (default: one per core)"),
    ("zstd_level", "N", "INGEST_ZSTD_LEVEL", _zstd_level,
     "zstd level of new data, -7..22 (default: the store's, 3): 1 ingests text 1.1-1.5x "
     "faster for 4-10%% more stored bytes"),
    ("list_limit", "N", "INGEST_LIST_LIMIT", _count, "largest page of a listing (default 1000)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, metavar, env, _, help_ in _OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, metavar=metavar,
                            default=None, help=f"{help_} [${env}]")


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Settings from parsed flags, then the environment, then defaults."""
    env = os.environ if environ is None else environ
    s = Settings()
    for name, _, var, parse, _ in _OPTIONS:
        raw = getattr(args, name, None)
        where = "--" + name.replace("_", "-")
        if raw is None and env.get(var):
            raw, where = env[var], "$" + var
        if raw is None:
            continue
        try:
            setattr(s, name, parse(raw))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    from ..cli import DEFAULT_STORE         # one default store for every command
    s.store = getattr(args, "store", None) or env.get("INGEST_STORE") or DEFAULT_STORE
    return s.check()


def settings(**overrides) -> Settings:
    """Settings for embedding and tests: defaults plus keyword overrides."""
    names = {f.name for f in fields(Settings)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    return Settings(**overrides).check()
