"""The CLI's human summaries say what a run did in words that match its exit code and its counts."""

from __future__ import annotations

from ragloop.flows.cli import _human_index, _with_error


def _index_summary(**over) -> dict:
    """A whole index summary, as an ok run returns it (disposition, serving, table and chunks included)."""
    summary = {"run_id": "r1", "status": "ok",
               "documents": {"seen": 3, "new": 0, "changed": 1, "unchanged": 2, "deleted": 0, "quarantined": 0},
               "index_plan": {"new": 0, "changed": 1, "unchanged": 2, "deleted": 0},
               "chunks": {"total": 9, "embedded": 2, "reused": 1, "written": 3, "deleted": 1, "truncated": 0},
               "table": {"name": "chunks__m", "version": 4}, "lake": "/lake",
               "disposition": {"action": "serve", "reason": "first index of the lake"},
               "serving": {"table": "chunks__m", "version": 4}, "candidate": None}
    return {**summary, **over}


def test_a_whole_ok_summary_reads_as_the_readme_shows_it():
    lines = _human_index(_index_summary())
    assert lines[:2] == ["run r1: ok", "documents: 3 seen - 0 new, 1 changed, 2 unchanged, 0 deleted, 0 quarantined"]
    assert "index serve: first index of the lake" in lines and "serving: chunks__m v4" in lines


def test_an_error_reads_as_a_warning_when_the_run_went_on_and_exits_0():
    assert _with_error([], {"status": "partial", "error": "2 of 10 items failed"}) == ["warning: 2 of 10 items failed"]
    assert _with_error([], {"status": "failed", "error": "boom"}) == ["error: boom"]
    assert _with_error(["x"], {"status": "ok"}) == ["x"]


def test_an_index_of_sources_without_documents_warns():
    empty = {"seen": 0, "new": 0, "changed": 0, "unchanged": 0, "deleted": 0, "quarantined": 0}
    lines = _human_index(_index_summary(documents=empty, index_plan={"new": 0, "changed": 0, "unchanged": 0,
                                                                     "deleted": 0}))
    assert any(line.startswith("warning: no documents under the sources") for line in lines)
    assert not any("warning" in line for line in _human_index(_index_summary()))
    emptied = {**empty, "deleted": 3}  # allowed with --allow-mass-delete: what the user asked for
    assert not any("warning" in line for line in _human_index(_index_summary(documents=emptied)))


def test_documents_kept_from_before_are_named_so_unchanged_may_exceed_seen():
    documents = {"seen": 2, "new": 0, "changed": 0, "unchanged": 3, "deleted": 0, "quarantined": 1}
    lines = _human_index(_index_summary(documents=documents, carried_forward=["bad.md"],
                                        index_plan={"new": 0, "changed": 0, "unchanged": 3, "deleted": 0}))
    assert "kept from before: 1 document(s) whose file is quarantined now (counted unchanged; --json lists them)" in lines


def test_a_retry_shows_the_work_counted_against_the_table_when_it_differs_from_the_snapshot_diff():
    retry = _index_summary(documents={"seen": 3, "new": 0, "changed": 0, "unchanged": 3, "deleted": 0, "quarantined": 0},
                           index_plan={"new": 0, "changed": 2, "unchanged": 1, "deleted": 1})
    assert "against the table: 0 new, 2 changed, 1 unchanged, 1 deleted" in _human_index(retry)
    assert not any(line.startswith("against the table") for line in _human_index(_index_summary()))
