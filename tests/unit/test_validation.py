"""great-expectations suites: a verdict is reused for the same frame, never for a different one."""

from __future__ import annotations

import pandas as pd

from ragloop.tasks.validation import validate_documents


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
