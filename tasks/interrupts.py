"""A process-wide stop request, for work a KeyboardInterrupt does not reach.

Ctrl-C raises KeyboardInterrupt in the main thread only. An index run's chunks are chunked and
encoded inside LanceDB's commit, on LanceDB's own thread (ChunkStore.commit_run consumes them
there), so after a Ctrl-C that thread would go on encoding until the process exits. The CLI's
Ctrl-C handler calls request_stop(); the loops that feed the commit call check() between steps,
which raises StopRequested there, and LanceDB aborts the commit (atomic: nothing is written).
"""

from __future__ import annotations

import threading

_STOP = threading.Event()


class StopRequested(RuntimeError):
    """Raised by check() once a stop was requested (on the thread that checks)."""


def request_stop() -> None:
    """Ask every check() in this process to raise StopRequested (the CLI's first Ctrl-C)."""
    _STOP.set()


def clear() -> None:
    """Forget a stop request (a new command in the same process starts clean)."""
    _STOP.clear()


def requested() -> bool:
    return _STOP.is_set()


def check() -> None:
    """StopRequested if a stop was requested; otherwise nothing (one Event read: cheap in a loop)."""
    if _STOP.is_set():
        raise StopRequested("stopped: Ctrl-C (SIGINT)")
