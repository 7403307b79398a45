"""What a night concluded from its stages (tasks/nightly.py)."""

from __future__ import annotations

import pytest

from ragloop.tasks.nightly import night_status, stage_failure


@pytest.mark.parametrize("stage, summary, failed", [
    ("index", {"status": "ok", "validation": {"chunks": {"success": True}}}, False),
    ("index", {"status": "ok", "validation": {"chunks": {"success": False}}}, True),
    ("synth", {"status": "failed", "error": "no accepted items"}, True),
    ("synth", {"status": "partial"}, False),
    ("eval", {"status": "gate_failed"}, False),
])
def test_stage_failure(stage, summary, failed):
    failure = stage_failure(stage, {"run_id": "r", **summary})
    assert (failure is not None) is failed
    if failure:
        assert failure["stage"] == stage and failure["error"]


@pytest.mark.parametrize("stages, failure, status", [
    ({"index": {"status": "ok"}, "eval": {"status": "ok"}, "monitor": {"status": "ok"}}, None, "ok"),
    ({"index": {"status": "ok"}, "eval": {"status": "gate_inconclusive"}, "monitor": {"status": "ok"}}, None, "gate_inconclusive"),
    ({"index": {"status": "ok"}, "eval": {"status": "ok"}, "monitor": {"status": "partial"}}, None, "partial"),
    ({"index": {"status": "ok"}, "synth": {"status": "failed"}}, {"stage": "synth"}, "failed"),
])
def test_night_status(stages, failure, status):
    assert night_status(stages, failure) == status
