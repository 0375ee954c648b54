"""Running the daemon as a process: JSON logs on stderr, signals, exit status.

SIGTERM or SIGINT: stop listening, let requests in flight finish for up to
--drain-timeout, then exit 0.  A second one ends the drain at once.
SIGHUP: reload the token file (a bad file is logged and the old one kept).
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time

from .app import Daemon
from .body import BodyError
from .config import Settings

log = logging.getLogger("ingest.daemon")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's
    `fields` (passed as extra={"fields": {...}})."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        doc.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _not_answered_already(record: logging.LogRecord) -> bool:
    """aiohttp logs "Unhandled exception" when it drains the rest of a body
    that we failed on purpose (a stalled upload); the request was answered
    (408) and logged already."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, BodyError)


def setup_logging(stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_not_answered_already)
    for name in ("ingest", "aiohttp"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False


async def run(settings: Settings) -> int:
    setup_logging()
    daemon = Daemon(settings)
    await daemon.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: ending the drain now", sig.name,
                        extra={"fields": {"event": "force_stop"}})
            daemon.force()
            return
        log.info("%s: draining", sig.name, extra={"fields": {"event": "signal",
                                                             "signal": sig.name}})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_tokens if settings.tokens
                            else lambda: None)
    try:
        await stop.wait()
        await daemon.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    # Connection tasks aiohttp cancelled at shutdown (lingering reads of
    # refused uploads) get to finish before the loop closes.
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in rest:
        t.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
    return 0
