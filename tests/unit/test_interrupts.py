"""The process-wide stop request the CLI's Ctrl-C sets for work on other threads."""

from __future__ import annotations

import threading

import pytest

from ragloop.tasks import interrupts


def test_check_raises_on_any_thread_once_a_stop_is_requested_until_cleared():
    interrupts.check()  # nothing requested: nothing happens
    seen: list[BaseException] = []

    def worker() -> None:
        try:
            interrupts.check()
        except interrupts.StopRequested as exc:
            seen.append(exc)

    try:
        interrupts.request_stop()
        assert interrupts.requested()
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert len(seen) == 1 and "Ctrl-C" in str(seen[0])
        with pytest.raises(interrupts.StopRequested):
            interrupts.check()
    finally:
        interrupts.clear()
    assert not interrupts.requested()
    interrupts.check()
