"""The summary base: only the keys set are dumped, outputs are what a manifest stores, record ends the run."""

from __future__ import annotations

import pytest

from ragloop.tasks.run_summary import LineMove, RunSummary


class _Summary(RunSummary):
    count: int
    error: str | None = None
    line: LineMove | None = None


class _Run:
    """A RunRecorder stand-in: remembers how the run was finished."""

    def __init__(self) -> None:
        self.finished = None

    def finish(self, status, outputs):
        self.finished = (status, outputs)
        return {}


def test_optional_keys_are_absent_until_set_then_validated():
    summary = _Summary(run_id="r", status="ok", lineage={"seed": None}, count=1)
    assert summary.model_dump(mode="json") == {"run_id": "r", "status": "ok", "lineage": {"seed": None}, "count": 1}
    summary.error = "boom"
    summary.line = {"line": "l", "chosen": "l", "previous_chosen": None, "changed": True}
    assert isinstance(summary.line, LineMove) and summary.model_dump(mode="json")["error"] == "boom"
    with pytest.raises(ValueError, match="count"):
        summary.count = "many"


def test_record_finishes_the_run_with_the_outputs_and_returns_the_summary():
    run = _Run()
    summary = _Summary(run_id="r", status="partial", lineage={}, count=2, error="short")
    assert summary.record(run) == {"run_id": "r", "status": "partial", "lineage": {}, "count": 2, "error": "short"}
    assert run.finished == ("partial", {"count": 2, "error": "short"})
