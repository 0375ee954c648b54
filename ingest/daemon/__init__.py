"""`ingest serve`: the engine as an HTTP service (aiohttp, on uvloop when
installed).  See docs/DAEMON.md and openapi.yaml next to this file.

    ingest serve --store s3://bucket/prefix --host 0.0.0.0 --tokens /etc/ingest/tokens.json

Embedding (tests, other programs):

    daemon = Daemon(settings(store=url, port=0)); await daemon.start(); ...; await daemon.stop()
"""
from __future__ import annotations

import argparse

from .config import Settings, settings

__all__ = ["Daemon", "Settings", "add_arguments", "serve", "settings"]


def __getattr__(name: str):
    # aiohttp is imported when the daemon is used, not by every `ingest` command.
    if name == "Daemon":
        from .app import Daemon
        return Daemon
    raise AttributeError(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import add_arguments as add
    add(parser)


async def serve(args: argparse.Namespace) -> int:
    from .config import from_args
    from .server import run
    return await run(from_args(args))
