"""Progress of a long stage: a tqdm bar on a terminal, else a log line every N items or every ~30 s (no I/O of its own
beyond stderr and the given logger; thread-safe, so an LLM batch may report from its worker thread)."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import Any, Callable, TextIO

from tqdm import tqdm

log = logging.getLogger(__name__)

EVERY_S = 30.0  # a log line at least this often while items finish (non-terminal mode)
MIN_GAP_S = 5.0  # and never more often than this, so a fast step logs only its final line


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Count finished items of one step: `update(n)` per item (failures included), `close()` at the end.

    enabled=False (a flow run without `progress`, or `--json`) counts silently. On a terminal
    (`stream.isatty()`) a tqdm bar shows done/total, rate and ETA; otherwise `log_to` (the run logger,
    else this module's logger) gets a line every `every_n` items (default: a tenth of the total) or
    every EVERY_S seconds, never more often than MIN_GAP_S, and a last line on close. `total` may
    grow (`add_total`) when a step plans more work as it goes; `note` holds extra figures shown after
    the count (e.g. accepted so far)."""

    def __init__(self, desc: str, total: int | None = None, *, unit: str = "item", enabled: bool = True,
                 log_to: logging.Logger | logging.LoggerAdapter | None = None, every_n: int | None = None,
                 every_s: float = EVERY_S, min_gap_s: float = MIN_GAP_S, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.n = 0
        self.note: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._log = log_to or log
        self._every_n, self._every_s, self._min_gap_s = every_n, every_s, min_gap_s
        self._started = self._last_t = clock()
        self._last_n = 0
        self._unlogged = False  # counts or notes changed since the last line
        self._closed = False
        stream = stream or sys.stderr
        self.mode = "off" if not enabled else ("bar" if _isatty(stream) else "log")
        self._bar = (tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
                     if self.mode == "bar" else None)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """n more items finished (counted once each, whether they succeeded or failed)."""
        with self._lock:
            if self.total is not None:  # a retried step must not count past the total
                n = max(0, min(n, self.total - self.n))
            self.n += n
            self._unlogged = True
            if self._bar is not None:
                self._bar.update(n)
            elif self.mode == "log":
                self._maybe_log()

    def __call__(self) -> None:
        """One item finished: a Progress is itself the `on_done` callback of an LLM batch."""
        self.update(1)

    def reach(self, n: int) -> None:
        """At least n items are done (a step that finished a whole batch, whether or not it reported each item)."""
        if n > self.n:
            self.update(n - self.n)

    def add_total(self, n: int) -> None:
        """n more items planned."""
        with self._lock:
            self.total = (self.total or 0) + n
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def set_note(self, **figures: Any) -> None:
        """Figures shown after the count (bar postfix, or the end of each log line)."""
        with self._lock:
            self.note.update(figures)
            self._unlogged = True
            if self._bar is not None:
                self._bar.set_postfix(self.note, refresh=True)

    def line(self) -> str:
        """The log line for the count so far: `desc: done/total unit (pct), rate, ETA; notes`."""
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = self.n / elapsed
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}s" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s")
        if self.total and self.n < self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        else:
            parts.append(f"elapsed {_duration(elapsed)}")
        line = ", ".join(parts)
        if self.note:
            line += "; " + ", ".join(f"{k} {v}" for k, v in self.note.items())
        return line

    def _maybe_log(self) -> None:
        now = self._clock()
        every_n = self._every_n or max(1, math.ceil((self.total or 10) / 10))
        since = now - self._last_t
        if since >= self._every_s or (self.n - self._last_n >= every_n and since >= self._min_gap_s):
            self._emit(now)

    def _emit(self, now: float) -> None:
        self._log.info("%s", self.line())
        self._last_t, self._last_n, self._unlogged = now, self.n, False

    def close(self) -> None:
        """The last line (log mode, when anything was counted or noted since the last one) or close the bar; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            elif self.mode == "log" and self.n and self._unlogged:
                self._emit(self._clock())


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
