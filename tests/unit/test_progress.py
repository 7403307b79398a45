"""Progress of long stages: silent when off, a bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import io
import logging

import pytest

from ragloop.tasks.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def logger(caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    return logging.getLogger("test.progress")


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_progress_off_counts_silently(logger, caplog):
    stream = Terminal()
    with Progress("synth", 3, enabled=False, log_to=logger, stream=stream) as p:
        p.update(2)
        p()
    assert (p.n, p.mode, stream.getvalue(), _lines(caplog)) == (3, "off", "", [])


def test_progress_on_a_terminal_draws_a_bar_and_logs_nothing(logger, caplog):
    stream = Terminal()
    with Progress("eval chain", 4, enabled=True, log_to=logger, stream=stream) as p:
        for _ in range(4):
            p()
    assert p.mode == "bar" and "eval chain" in stream.getvalue() and "4/4" in stream.getvalue()
    assert _lines(caplog) == []


def test_progress_off_a_terminal_logs_every_n_items_and_a_last_line(logger, caplog):
    clock, stream = Clock(), io.StringIO()
    p = Progress("synth", 10, unit="candidate", log_to=logger, stream=stream, every_n=4, min_gap_s=0, clock=clock)
    for _ in range(10):
        clock.now += 1.0
        p.update()
    p.set_note(accepted="3/5")
    p.close()
    p.close()  # idempotent
    lines = _lines(caplog)
    assert p.mode == "log" and stream.getvalue() == ""
    assert lines == ["synth: 4/10 candidates (40%), 1.00/s, ETA 6s",
                     "synth: 8/10 candidates (80%), 1.00/s, ETA 2s",
                     "synth: 10/10 candidates (100%), 1.00/s, elapsed 10s; accepted 3/5"]


def test_progress_off_a_terminal_logs_every_30_seconds_when_items_are_slow(logger, caplog):
    clock = Clock()
    p = Progress("eval judge", 1000, log_to=logger, stream=io.StringIO(), clock=clock)
    for _ in range(3):
        clock.now += 31
        p.update()
    assert len(_lines(caplog)) == 3 and _lines(caplog)[-1].startswith("eval judge: 3/1000 items (0%)")


def test_progress_of_a_fast_step_logs_only_its_last_line(logger, caplog):
    clock = Clock()
    p = Progress("eval chain", 100, log_to=logger, stream=io.StringIO(), clock=clock)
    for _ in range(100):
        clock.now += 0.02
        p.update()
    p.close()
    assert _lines(caplog) == ["eval chain: 100/100 items (100%), 50/s, elapsed 2s"]


def test_progress_reach_and_a_growing_total_never_count_an_item_twice():
    p = Progress("synth", enabled=False)
    p.add_total(5)
    p.update(3)
    p.reach(5)
    p.reach(4)
    p.update(2)  # a retried step reporting again: clamped to the total
    assert (p.n, p.total) == (5, 5)
    p.add_total(5)
    p.update()
    assert (p.n, p.total) == (6, 10)
