"""An ingest run's bookkeeping without Prefect: the previous run, quarantine rows, the summary, the ref."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from ragloop.tasks import ingest_run
from ragloop.tasks.ingestion import MassDeleteError, build_snapshot
from ragloop.tasks.settings import IndexConfig, IngestConfig
from ragloop.tasks.storage import Lake
from ragloop.tasks.validation import ValidationReport
from tests.conftest import write_files

SUMMARIES = json.loads((Path(__file__).parent / "data" / "stage_summaries.json").read_text())
T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def lake(lake_dir) -> Lake:
    return Lake(str(lake_dir))


@pytest.fixture
def result(lake, tmp_path):
    src = write_files(tmp_path / "src", {"a.md": "# A\n\nalpha", "blob.txt": b"\x00\x01binary", "empty.md": ""})
    return build_snapshot(lake, [str(src)], IngestConfig())


def _report(success: bool) -> ValidationReport:
    return ValidationReport("documents", success, 3, [] if success else [{"type": "expect_x"}], {})


def test_a_new_lake_has_no_previous_ingest(lake):
    previous = ingest_run.previous_ingest(lake)
    assert previous.run is None and previous.known_roots is None and previous.quarantined == set()


def test_the_previous_ingest_is_the_run_the_documents_ref_names(lake):
    lake.write_run({"run_id": "i1", "flow": "ingest", "status": "ok", "started_at": T0, "ended_at": T0, "lineage": {},
                    "outputs": {"scope": {"known_sources": ["/src"]},
                                "quarantine": [{"source": "/src/x.pdf", "reason": "parse_error", "detail": "", "new": True}]}})
    lake.write_ref("documents", {"snapshot_id": "s1", "run_id": "i1"})
    previous = ingest_run.previous_ingest(lake)
    assert previous.known_roots == ["/src"] and previous.quarantined == {("/src/x.pdf", "parse_error")}


@pytest.mark.parametrize("allow, limit", [(False, 0.5), (True, None)])
def test_the_delete_guard_is_lifted_only_when_allowed(allow, limit):
    assert ingest_run.delete_guard(IndexConfig(max_delete_fraction=0.5), allow) == limit


def test_quarantine_rows_carry_the_snapshot_and_when_they_were_seen(result):
    rows = ingest_run.quarantine_rows(result, T0)
    assert sorted((Path(r["source_uri"]).name, r["reason"]) for r in rows) == [("blob.txt", "binary"), ("empty.md", "empty")]
    assert {r["snapshot_id"] for r in rows} == {result.snapshot_id} and {r["seen_at"] for r in rows} == {T0}


def test_a_quarantined_file_is_news_only_when_the_previous_run_did_not_set_it_aside_for_that_reason(result):
    blob = next(q.source_uri for q in result.quarantine if q.source_uri.endswith("blob.txt"))
    previous = ingest_run.PreviousIngest({"outputs": {"quarantine": [{"source": blob, "reason": "binary"}]}})
    summary = ingest_run.summarize("r1", {}, "/lake", result, _report(True), ["/src"], previous)
    assert {Path(q["source"]).name: q["new"] for q in summary.quarantine} == {"blob.txt": False, "empty.md": True}


def test_a_validated_snapshot_moves_the_ref_and_logs_its_counts(lake, result):
    summary = ingest_run.summarize("r1", {}, lake.uri, result, _report(True), ["/src"], ingest_run.PreviousIngest(None))
    assert summary.status == "ok" and summary.validation == {"documents": _report(True).summary()}
    published = ingest_run.publish_snapshot(lake, summary, result, _report(True))
    assert published.moved and published.level == logging.INFO
    assert published.message.endswith("1 documents (1 new, 0 changed, 0 unchanged, 0 deleted), 2 quarantined")
    assert lake.read_ref("documents") == {"snapshot_id": result.snapshot_id, "run_id": "r1"}


def test_a_snapshot_that_failed_its_suite_leaves_the_ref_alone(lake, result):
    summary = ingest_run.summarize("r1", {}, lake.uri, result, _report(False), ["/src"], ingest_run.PreviousIngest(None))
    published = ingest_run.publish_snapshot(lake, summary, result, _report(False))
    assert summary.status == "failed" and not published.moved and published.level == logging.ERROR
    assert "expect_x" in published.message and lake.read_ref("documents") is None


def test_a_mass_delete_summary_has_only_the_lake_and_the_error():
    summary = ingest_run.mass_delete_summary("r1", {"config_hash": "c"}, "/lake", MassDeleteError("2 of 3 would go"))
    assert summary.dump() == {"run_id": "r1", "status": "failed", "lineage": {"config_hash": "c"}, "lake": "/lake",
                              "error": "2 of 3 would go"}


def test_the_mass_delete_guard_refusal_is_returned_and_other_errors_raise(lake, tmp_path):
    src = write_files(tmp_path / "guarded", {"a.md": "# A\n\nalpha", "b.md": "# B\n\nbravo", "c.md": "# C\n\nc"})
    first = ingest_run.snapshot_or_refusal(lake, [str(src)], IngestConfig(), 0.5)
    lake.write_ref("documents", {"snapshot_id": first.snapshot_id, "run_id": "ingest-1"})
    for name in ("a.md", "b.md"):
        (src / name).unlink()
    refusal = ingest_run.snapshot_or_refusal(lake, [str(src)], IngestConfig(), 0.5)
    assert isinstance(refusal, MassDeleteError) and "2 of its 3 documents would be deleted" in str(refusal)
    with pytest.raises(FileNotFoundError, match="source not found"):
        ingest_run.snapshot_or_refusal(lake, [str(tmp_path / "missing")], IngestConfig(), 0.5)


class _Run:
    def __init__(self) -> None:
        self.finished: list[tuple[str, dict]] = []

    def finish(self, status: str, outputs: dict) -> dict:
        self.finished.append((status, outputs))
        return {}


def test_finishing_records_the_outputs_and_returns_the_summary():
    summary = ingest_run.mass_delete_summary("r1", {}, "/lake", MassDeleteError("gone"))
    run = _Run()
    assert summary.finish(run) == summary.dump()
    assert run.finished == [("failed", {"lake": "/lake", "error": "gone"})]


@pytest.mark.parametrize("name", ["ingest_ok", "ingest_mass_delete"])
def test_ingest_summaries_of_the_flow_round_trip_through_the_model(name):
    produced = SUMMARIES[name]  # returned by ingest-corpus (tests/unit/data/stage_summaries.json)
    model = ingest_run.IngestSummary.model_validate(produced)
    assert model.dump() == produced
    assert set(model.outputs()) == set(produced) - {"run_id", "status", "lineage"}


def test_a_summary_with_an_unknown_key_is_rejected():
    with pytest.raises(ValueError, match="extra"):
        ingest_run.IngestSummary.model_validate({**SUMMARIES["ingest_ok"], "surprise": 1})


def test_an_unchanged_snapshot_reuses_the_documents_verdict_of_the_ingest_that_validated_it(lake, result):
    from ragloop.tasks import validation

    subject = ingest_run.documents_subject(result.snapshot_id)
    stored = validation.validate_documents(lake.snapshot_profile(result.snapshot_id), subject)
    lake.write_validation("ingest-1", "documents", stored.result)
    previous = ingest_run.PreviousIngest({"run_id": "ingest-1", "outputs": {"snapshot_id": result.snapshot_id}})
    reused = ingest_run.reused_documents_report(lake, previous, result.snapshot_id)
    assert reused.success and reused.reused_from == "ingest-1" and reused.evaluated == stored.evaluated
    assert ingest_run.reused_documents_report(lake, previous, "another-snapshot") is None
    assert ingest_run.reused_documents_report(lake, ingest_run.PreviousIngest(None), result.snapshot_id) is None
