"""The interpreter's switch interval while a Repository is open.

Every CPU stage runs native code that gives up the GIL (zstd, BLAKE3, the
chunker, file reads), and each time its thread wants it back.  Beside a
thread running Python bytecode (a hub backend's busy event loop, any
CPU-bound thread of the host) it waits for up to the switch interval, 5 ms
by default, before the interpreter makes that thread let go.  A pipeline
takes the GIL back hundreds of times a second, so those waits, not the
work, set its speed: beside one spinning thread a package tree took 9.4 s
to ingest instead of 1.5 s, a model 9.7 s instead of 0.53 s
(bench/e2e.py --busy-thread has the ratios against hf_xet, whose Rust core
takes the GIL once per call).

So while any Repository is open the switch interval is at most
SWITCH_INTERVAL, 1 ms, and the host's own value comes back when the last
one closes, unless the host changed it meanwhile.  Beside the spinning
thread: model 9.7 -> 2.8 s, dataset 4.4 -> 1.4 s, package 9.4 -> 3.2 s.
0.5 ms did better there (1.8, 1.0, 2.6 s) but cost a model restore 10%
alone (0.398 -> 0.442 s, 8 alternated pairs: with four files in flight our
own threads contend, and each forced switch is a context switch); 1 ms
alone was within the noise of the host's 5 ms (0.396 against 0.404 s).
`Repository(..., switch_interval=None)` leaves the interval alone.
Threads that share the GIL change hands more often; for a thread that
never waits for another one nothing changes.
"""
from __future__ import annotations

import sys
import threading

SWITCH_INTERVAL = 0.001

_lock = threading.Lock()
_holders = 0
_saved: float | None = None     # the host's interval, while we hold a lower one
_ours: float | None = None      # the one we set


def lower(interval: float) -> None:
    """One more holder of an interval of at most `interval` seconds."""
    global _holders, _saved, _ours
    if not interval > 0:
        raise ValueError("switch_interval must be a positive number of seconds")
    with _lock:
        _holders += 1
        current = sys.getswitchinterval()
        if current > interval:
            if _saved is None:
                _saved = current
            sys.setswitchinterval(interval)
            _ours = sys.getswitchinterval()


def release() -> None:
    """One holder less; the last one gives the host its interval back (if
    the host did not set another meanwhile)."""
    global _holders, _saved, _ours
    with _lock:
        if _holders <= 0:
            raise RuntimeError("switch interval released more often than lowered")
        _holders -= 1
        if _holders == 0 and _saved is not None:
            if sys.getswitchinterval() == _ours:
                sys.setswitchinterval(_saved)
            _saved = _ours = None
