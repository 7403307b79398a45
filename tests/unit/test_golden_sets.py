"""The import-golden-set and import-beir stages' decisions and summaries, and the export's checks (no Prefect)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ragloop.tasks import golden_sets
from ragloop.tasks.settings import ConfigError
from ragloop.tasks.storage import Lake
from tests.conftest import write_files

QUERIES = [{"_id": "q1", "text": "How many docks?"}, {"_id": "q2", "text": "When does it close?"},
           {"_id": "q3", "text": "Unjudged"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\nq2\td2\t1\nq3\td4\t0\n"


def _beir(tmp_path, qrels=QRELS, skip=()):
    files = {"corpus.jsonl": "{}\n", "queries.jsonl": "\n".join(json.dumps(q) for q in QUERIES) + "\n", "qrels/test.tsv": qrels}
    return write_files(tmp_path / "beir", {k: v for k, v in files.items() if k not in skip})


def test_beir_rows_are_doc_level_references_of_positive_judgments(tmp_path):
    rows = golden_sets.read_beir(str(_beir(tmp_path)), "test")
    assert [(r["qa_id"], r["reference_doc_ids"]) for r in rows] == [("q1", ["d1"]), ("q2", ["d2", "d3"])], "q3: no positive"
    assert all(r["reference_chunk_ids"] == [] and r["qa_type"] == "imported" and r["generator"] == "beir:beir/test"
               for r in rows)


@pytest.mark.parametrize(
    "skip, qrels, split, needle",
    [
        (("queries.jsonl",), QRELS, "test", "not a BEIR dataset directory, missing queries.jsonl"),
        ((), QRELS, "dev", "missing qrels/dev.tsv"),
        ((), "query-id\tcorpus-id\tscore\nq1\td1\t0\n", "test", "qrels/test.tsv has no positive judgment"),
    ],
)
def test_an_unusable_beir_directory_is_a_config_error(tmp_path, skip, qrels, split, needle):
    with pytest.raises(ConfigError, match=needle):
        golden_sets.read_beir(str(_beir(tmp_path, qrels, skip)), split)


def test_beir_line_is_named_after_the_directory_and_split(tmp_path):
    assert golden_sets.beir_line(_beir(tmp_path), "test") == "beir-beir-test"


def test_beir_failure_names_a_failed_index_run_and_qrels_outside_the_corpus(tmp_path, lake_dir):
    lake = Lake(str(lake_dir))
    failed = {"status": "failed", "run_id": "r-index"}
    assert golden_sets.beir_failure(failed, [], lake) == {"error": "index run r-index ended failed", "index": failed}
    lake.write_parquet(pa.table({"doc_id": ["d1", "d2"]}), f"{lake.snapshot_dir('s1')}/part-0.parquet")
    indexed = {"status": "ok", "run_id": "r-index", "lineage": {"snapshot_id": "s1"}}
    rows = golden_sets.read_beir(str(_beir(tmp_path)), "test")
    assert golden_sets.beir_failure(indexed, rows, lake) == {"error": "qrels name 1 documents not in the corpus, e.g. ['d3']"}
    assert golden_sets.beir_failure(indexed, rows[:1], lake) is None


def test_import_line_and_file_errors_are_config_errors(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "How many docks?"}\n{oops\n')
    with pytest.raises(ConfigError, match="'synthetic' are reserved"):
        golden_sets.read_import(path, "synthetic")
    with pytest.raises(ConfigError, match="line 2: not JSON"):
        golden_sets.read_import(path, None)
    path.write_text('{"question": "How many docks?"}\n')
    line, items = golden_sets.read_import(path, None)
    assert line == "set" and [i.question for i in items] == ["How many docks?"]


def test_resolve_import_names_the_file_of_an_unknown_reference(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "How many docks?", "reference_chunk_ids": ["nope"]}\n')
    _, items = golden_sets.read_import(path, None)
    with pytest.raises(ConfigError, match=r"set\.jsonl: .*not in the index"):
        golden_sets.resolve_import(items, [{"chunk_id": "c1", "doc_id": "d1", "text": "t"}], path)


@pytest.mark.parametrize(
    "fmt, rows, needle",
    [
        ("csv", [], "--format csv: expected jsonl or ragas"),
        ("ragas", [{"qa_id": "q1", "status": "active", "reference_doc_ids": ["d1"], "reference_chunk_ids": []}],
         "1 items reference documents only"),
        ("ragas", [{"qa_id": "q1", "status": "retired", "reference_doc_ids": ["d1"], "reference_chunk_ids": []}], None),
        ("jsonl", [{"qa_id": "q1", "status": "active", "reference_doc_ids": ["d1"], "reference_chunk_ids": []}], None),
    ],
)
def test_check_export(fmt, rows, needle):
    if needle is None:
        golden_sets.check_export(rows, fmt, golden_sets.export_statuses(False))
    else:
        with pytest.raises(ConfigError, match=needle):
            golden_sets.check_export(rows, fmt, golden_sets.export_statuses(False))


def test_export_statuses():
    assert golden_sets.export_statuses(False) == ("active",)
    assert golden_sets.export_statuses(True) == ("active", "stale", "retired")


# Summaries as the flows returned them (import-golden-set of one item; import-beir of tests/flows/test_eval_flow.py's
# dataset), lineage shortened.
LINE = {"line": "g", "chosen": "g", "previous_chosen": "synthetic", "changed": True}
IMPORT_SUMMARY = {
    "run_id": "20261130T081115Z-import-golden-101c81", "status": "ok",
    "lineage": {"golden_set_id": "5a9ae3e512cf2e98d4c1fa8a", "golden_line": "g", "table": {"name": "chunks__hash_fake", "version": 3}},
    "lake": "/tmp/lake", "golden_set_id": "5a9ae3e512cf2e98d4c1fa8a",
    "items": {"total": 1, "new": 1, "kept": 0, "stale": 0, "retired": 0, "rejected": 0},
    "by_type": {"imported": 1}, "written": True, "line": LINE,
}
BEIR_SUMMARY = {
    "run_id": "20261130T081118Z-import-beir-57921f", "status": "ok",
    "lineage": {"snapshot_id": "6e4e37c006c28d78fbd7be3f", "golden_set_id": "0991cdae361120397ee929b4"},
    "lake": "/tmp/lake3", "golden_set_id": "0991cdae361120397ee929b4",
    "items": {"total": 3, "new": 3, "kept": 0, "stale": 0, "retired": 0, "rejected": 0}, "by_type": {"imported": 3},
    "documents": {"seen": 4, "new": 4, "changed": 0, "unchanged": 0, "deleted": 0, "quarantined": 0},
    "chunks": {"total": 4, "embedded": 4, "reused": 0, "written": 4, "deleted": 0, "truncated": 0},
    "table": {"name": "chunks__hash_fake", "version": 3}, "serving": {"table": "chunks__hash_fake", "version": 3},
    "candidate": None, "disposition": {"action": "serve", "reason": "first index of the lake"}, "quarantine": [],
    "line": {"line": "beir-beir-test", "chosen": "beir-beir-test", "previous_chosen": None, "changed": True},
}


@pytest.mark.parametrize(
    "model, summary",
    [
        (golden_sets.ImportGoldenSummary, IMPORT_SUMMARY),
        (golden_sets.ImportBeirSummary, BEIR_SUMMARY),
        (golden_sets.ImportBeirSummary, {"run_id": "r", "status": "failed", "lineage": {}, "error": "qrels name 1 documents"}),
        (golden_sets.ExportSummary, {"status": "ok", "golden_set_id": "g", "format": "jsonl", "items": 1, "path": "/tmp/e.jsonl"}),
    ],
)
def test_summary_models_round_trip_flow_summaries(model, summary):
    assert model.model_validate(summary).model_dump(mode="json") == summary


def test_summaries_built_by_the_stage_functions():
    rows = [{"qa_type": "imported"}, {"qa_type": "imported"}]
    imported = golden_sets.import_summary("r", {}, "/lake", "g", rows, False, LINE).model_dump(mode="json")
    assert imported["items"] == {"total": 2, "new": 2, "kept": 0, "stale": 0, "retired": 0, "rejected": 0}
    assert imported["written"] is False and imported["line"] == LINE
    indexed = {k: BEIR_SUMMARY[k] for k in ("documents", "chunks", "table", "serving", "candidate", "disposition", "quarantine")}
    beir = golden_sets.beir_summary("r", {}, "/lake", "g", rows, False, indexed, LINE).model_dump(mode="json")
    assert beir["items"]["new"] == 0, "the version existed: nothing new"
    assert {k: beir[k] for k in indexed} == indexed and "error" not in beir
