"""great-expectations suites: a verdict is reused for the same frame (or, across runs, the same immutable
subject), never for a different one."""

from __future__ import annotations

import pandas as pd

from ragloop.tasks import validation
from ragloop.tasks.validation import reuse, validate_documents


def profile(text_length: int) -> pd.DataFrame:
    return pd.DataFrame({"doc_id": ["a", "b"], "text_length": [10, text_length], "content_sha256": ["0" * 64] * 2,
                         "bytes": [10, 12], "mime": ["text/plain"] * 2})


def test_the_same_frame_reuses_the_verdict_and_says_so():
    first = validate_documents(profile(7))
    again = validate_documents(profile(7))
    assert first.success and again.success and again.evaluated == first.evaluated
    assert again.result["meta"]["reused_result"] is True
    assert "reused_result" not in first.result["meta"]


def test_a_changed_frame_is_validated_again():
    assert validate_documents(profile(5)).success
    failed = validate_documents(profile(0))
    assert not failed.success and "reused_result" not in failed.result["meta"]
    assert [f["expectation"] for f in failed.failures] == ["expect_column_values_to_be_between"]


# -- a later run reuses a stored verdict on the same immutable data (issue 23: the no-op re-index) ----------
def test_a_stamped_passing_verdict_is_reused_for_the_same_subject_only():
    stored = validate_documents(profile(9), subject={"snapshot_id": "s1"})
    assert stored.result["meta"]["ragloop"]["subject"] == {"snapshot_id": "s1"}
    again = reuse(stored.result, "documents", {"snapshot_id": "s1"}, "run-1")
    assert again.success and again.evaluated == 2 and again.reused_from == "run-1" and again.failures == []
    assert again.result["meta"]["reused_from"] == "run-1" and again.summary()["reused_from"] == "run-1"
    assert "reused_from" not in stored.summary()
    assert reuse(stored.result, "documents", {"snapshot_id": "s2"}, "run-1") is None
    assert reuse(again.result, "documents", {"snapshot_id": "s1"}, "run-2").reused_from == "run-1", \
        "a reuse of a reuse names the run that ran the suite"


def test_a_failed_unstamped_missing_or_older_suite_verdict_is_not_reused(monkeypatch):
    failed = validate_documents(profile(0), subject={"snapshot_id": "s0"})
    assert not failed.success and reuse(failed.result, "documents", {"snapshot_id": "s0"}, "r") is None
    unstamped = validate_documents(profile(11))
    assert reuse(unstamped.result, "documents", {"snapshot_id": "s0"}, "r") is None
    assert reuse(None, "documents", {"snapshot_id": "s0"}, "r") is None
    stamped = validate_documents(profile(12), subject={"snapshot_id": "s3"})
    monkeypatch.setattr(validation, "suite_code", lambda: "another suite definition")
    assert reuse(stamped.result, "documents", {"snapshot_id": "s3"}, "r") is None
