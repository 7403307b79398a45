"""Golden-set quality: the report's measures, the diff between two versions, and both commands on a small lake."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ragloop.tasks import golden_quality as gq
from ragloop.tasks import schemas
from ragloop.tasks.qa_generation import golden_set_id_of
from ragloop.tasks.settings import ConfigError
from ragloop.tasks.storage import Lake
from tests import review_fixtures as rf

TEXT = "Riverside Hub has 32 docks and 4 chargers. It opened in 2019 beside the harbour."


def _item(qa_id: str, question: str = "How many docks does Riverside Hub have?", answer: str = "32 docks.",
          qa_type: str = "single_hop", status: str = "active", chunks: tuple[str, ...] = ("c1",),
          docs: tuple[str, ...] = ("guide/a.md",), evidence: list | None = None) -> dict:
    return {"qa_id": qa_id, "question": question, "reference_answer": answer, "reference_chunk_ids": list(chunks),
            "reference_doc_ids": list(docs), "source_chunk_ids": list(chunks), "source_doc_ids": list(docs),
            "source_doc_sha256s": [], "qa_type": qa_type, "persona": "", "status": status, "review": "synthetic",
            "generator": "g", "prompt_id": "p", "prompt_hash": "h", "created_at": schemas.utcnow(),
            "evidence": [{"chunk_id": "c1", "start": 0, "end": 42}] if evidence is None else evidence}


def test_by_type_counts_active_and_total():
    rows = [_item("a"), _item("b", status="stale"), _item("c", qa_type="unanswerable")]
    assert gq.by_type(rows) == {"single_hop": {"active": 1, "total": 2}, "unanswerable": {"active": 1, "total": 1}}


def test_coverage_by_top_folder_counts_documents_with_an_active_item():
    rows = [_item("a", docs=("guide/a.md",)), _item("b", docs=("api/x.md",), status="retired"),
            _item("c", docs=("gone/z.md",))]
    cov = gq.folder_coverage(rows, ["guide/a.md", "guide/a.md", "guide/b.md", "api/x.md", "root.md"])
    assert cov["documents"] == 1 and cov["of"] == 4 and cov["ratio"] == 0.25
    assert cov["by_folder"] == {".": {"documents": 0, "of": 1}, "api": {"documents": 0, "of": 1},
                                "guide": {"documents": 1, "of": 2}}


def test_lexical_duplicates_name_their_measure_and_pair_near_identical_questions():
    rows = [_item("a", "How many docks does Riverside Hub have?"), _item("b", "How many docks does the Riverside Hub have?"),
            _item("c", "When did Riverside Hub open?"), _item("d", "How many docks does Riverside Hub have?", status="stale")]
    dup = gq.lexical_duplicates(rows)
    assert dup["pairs"] == [["a", "b"]] and dup["items"] == 2 and dup["of"] == 3 and dup["rate"] == 0.667
    assert dup["measure"].startswith("lexical")
    assert gq.lexical_duplicates([])["rate"] == 0.0


@pytest.mark.parametrize("evidence, answer, texts, problem", [
    ([{"chunk_id": "c1", "start": 0, "end": 42}], "32 docks.", {"c1": TEXT}, None),
    ([], "32 docks.", {"c1": TEXT}, "no_evidence"),
    ([{"chunk_id": "c9", "start": 0, "end": 10}], "32 docks.", {"c1": TEXT}, "chunk_missing"),
    ([{"chunk_id": "c1", "start": 40, "end": 400}], "32 docks.", {"c1": TEXT}, "span_outside_chunk"),
    ([{"chunk_id": "c1", "start": 10, "end": 5}], "32 docks.", {"c1": TEXT}, "span_outside_chunk"),
    ([{"chunk_id": "c1", "start": 0, "end": 42}], "It opened in 2019.", {"c1": TEXT}, "unsupported_facts"),
], ids=["supported", "no_evidence", "chunk_missing", "past_end", "start_after_end", "fact_outside_span"])
def test_evidence_problem_per_reason(evidence, answer, texts, problem):
    assert gq.evidence_problem(_item("a", answer=answer, evidence=evidence), texts) == problem


def test_evidence_supported_rate_leaves_out_unanswerable_and_inactive_items():
    rows = [_item("a"), _item("b", evidence=[]), _item("c", qa_type="unanswerable", evidence=[]),
            _item("d", evidence=[], status="retired")]
    assert gq.evidence_supported(rows, {"c1": TEXT}) == {"items": 1, "of": 2, "rate": 0.5, "failures": {"no_evidence": 1}}


def test_marked_window_marks_the_span_inside_a_short_window():
    text = "x" * 100 + "32 docks" + "y" * 100
    window = gq.marked_window(text, 100, 108, window=5)
    assert window == "…xxxxx«32 docks»yyyyy…"
    assert gq.marked_window("32 docks", 0, 8) == "«32 docks»"


def test_sample_is_seeded_and_shows_the_evidence_text():
    rows = [_item(f"q{i}") for i in range(10)] + [_item("z", status="retired")]
    one, again = gq.sample_items(rows, {"c1": TEXT}, 3, seed=7), gq.sample_items(rows, {"c1": TEXT}, 3, seed=7)
    assert one == again and len(one) == 3 and all(s["qa_id"] != "z" for s in one)
    assert [s["qa_id"] for s in one] == sorted(s["qa_id"] for s in one)
    assert one[0]["evidence"][0]["text"] == TEXT[:42] and one[0]["evidence"][0]["window"].startswith("«Riverside")
    assert gq.sample_items(rows, {}, 1, seed=0)[0]["evidence"][0]["window"] is None  # chunk not in the index


def test_generation_record_comes_from_the_synth_run_that_wrote_the_version():
    runs = [
        {"run_id": "r2", "flow": "synth", "started_at": 2, "lineage": json.dumps({"golden_set_id": "g1"}),
         "outputs": json.dumps({"written": False})},  # an up-to-date run that reused it
        {"run_id": "r1", "flow": "synth", "started_at": 1, "lineage": json.dumps({"golden_set_id": "g1"}),
         "outputs": json.dumps({"written": True, "attempted": 5, "items": {"new": 3}, "rejects": {"made_up_fact": 2},
                                "per_type": {"single_hop": {"accepted": 3, "attempted": 5}},
                                "accept_rate_by_type": {"single_hop": 0.6}})},
        {"run_id": "e1", "flow": "eval", "started_at": 3, "lineage": json.dumps({"golden_set_id": "g1"}), "outputs": "{}"},
    ]
    record = gq.generation_record(runs, "g1")
    assert record["run_id"] == "r1" and record["attempted"] == 5 and record["accepted"] == 3
    assert record["rejects"] == {"made_up_fact": 2} and record["per_type"]["single_hop"] == {"accepted": 3, "attempted": 5}
    assert gq.generation_record(runs, "imported-set") is None


# -- diff -----------------------------------------------------------------------------------------------
def test_diff_lists_added_retired_changed_and_pairs_regenerated_items():
    a = [_item("keep"), _item("edit", answer="32 docks."), _item("gone", chunks=("c5",)),
         _item("stale", chunks=("c6",)), _item("old-text", question="How many docks?", chunks=("c7",)),
         _item("was-retired", status="retired")]
    b = [_item("keep"), _item("edit", answer="Thirty-two docks."), _item("stale", chunks=("c6",), status="stale"),
         _item("new", chunks=("c8",)), _item("new-text", question="How many docks are there?", chunks=("c7",)),
         _item("was-retired", status="retired")]
    diff = gq.diff_rows(a, b)
    assert diff["counts"] == {"added": 1, "retired": 2, "changed": 1, "regenerated": 1, "unchanged": 2}
    assert [i["qa_id"] for i in diff["added"]] == ["new"]
    assert [(i["qa_id"], i["status_after"]) for i in diff["retired"]] == [("gone", None), ("stale", "stale")]
    assert diff["changed"] == [{"qa_id": "edit", "qa_type": "single_hop",
                                "fields": {"reference_answer": {"before": "32 docks.", "after": "Thirty-two docks."}}}]
    regen = diff["regenerated"][0]
    assert (regen["qa_id_before"], regen["qa_id_after"]) == ("old-text", "new-text")
    assert regen["fields"] == {"question": {"before": "How many docks?", "after": "How many docks are there?"}}


@pytest.mark.parametrize("before, after, fields", [
    ({}, {"evidence": [{"chunk_id": "c1", "start": 0, "end": 10}]}, {"evidence": {"before": [["c1", 0, 42]],
                                                                                   "after": [["c1", 0, 10]]}}),
    ({"status": "stale"}, {}, {"status": {"before": "stale", "after": "active"}}),
    ({}, {"question": "Q" * 200}, {"question": {"before": "How many docks does Riverside Hub have?",
                                                "after": "Q" * 200}}),
    ({"question": "A" * 100 + "x"}, {"question": "A" * 100 + "y"}, {"question": {"before": "A" * 100 + "x",
                                                                                  "after": "A" * 100 + "y"}}),
], ids=["evidence", "status", "long_question_whole", "change_after_char_100_shows"])
def test_diff_field_changes(before, after, fields):
    diff = gq.diff_rows([_item("x", **{k: v for k, v in before.items()})], [dict(_item("x"), **after)])
    assert diff["changed"][0]["fields"] == fields


def test_diff_of_a_version_with_itself_is_empty():
    rows = [_item("a"), _item("b", status="stale")]
    assert gq.diff_rows(rows, rows)["counts"] == {"added": 0, "retired": 0, "changed": 0, "regenerated": 0, "unchanged": 2}


# -- the commands on a small lake -----------------------------------------------------------------------
def _write(lake: Lake, rows: list[dict]) -> str:
    gid = golden_set_id_of(rows)
    lake.write_golden(gid, pa.Table.from_pylist(rows, schema=schemas.GOLDEN))
    return gid


def test_golden_report_on_a_lake(lake_dir):
    built = rf.build(lake_dir, n=4)
    report = gq.golden_report(built["lake"], "latest", sample=2, seed=1)
    assert report.golden_set_id == built["golden_set_id"] and report.line == "synthetic"
    assert report.items == {"total": 4, "active": 4}
    assert report.generation is None  # the fixture's line was written by no synth run: not recorded
    assert report.evidence_supported == {"items": 4, "of": 4, "rate": 1.0, "failures": {}}
    assert report.coverage["of"] == 6 and set(report.coverage["by_folder"]) == {"api", "guide"}
    assert report.index["version"] == built["store"].version
    assert len(report.sample) == 2 and all("«Station" in s["evidence"][0]["window"] for s in report.sample)
    assert report.model_dump(mode="json") == gq.golden_report(built["lake"], built["golden_set_id"], 2, 1).model_dump(mode="json")
    with pytest.raises(ConfigError, match="golden report nope: no such golden set"):
        gq.golden_report(built["lake"], "nope")
    with pytest.raises(ConfigError, match="--sample -1"):
        gq.golden_report(built["lake"], "latest", sample=-1)


def test_golden_diff_on_a_lake_resolves_ids_and_lines(lake_dir):
    built = rf.build(lake_dir, n=3)
    lake, items = built["lake"], built["items"]
    b = _write(lake, items[:2] + [dict(items[2], status="retired")])
    diff = gq.golden_diff(lake, "synthetic", b[:10])
    assert (diff.a, diff.b, diff.lines) == (built["golden_set_id"], b, {"a": "synthetic", "b": None})
    assert diff.counts == {"added": 0, "retired": 1, "changed": 0, "regenerated": 0, "unchanged": 2}
    with pytest.raises(ConfigError, match="golden diff nope"):
        gq.golden_diff(lake, "nope", b)


# -- the great-expectations golden suite -----------------------------------------------------------------
CHUNKS = {"c1": TEXT}


@pytest.mark.parametrize("rows, expectation, column, sample", [
    ([_item("a"), _item("a")], "expect_column_values_to_be_unique", "qa_id", ["a", "a"]),
    ([_item("a", question="  \t ")], "expect_column_values_to_match_regex", "question", ["  \t "]),
    ([_item("a", question=None)], "expect_column_values_to_not_be_null", "question", []),
    ([_item("a", evidence=[{"chunk_id": "c1", "start": 40, "end": len(TEXT) + 1}])],
     "expect_column_values_to_be_in_set", "evidence_in_chunks", ["a"]),
    ([_item("a", evidence=[{"chunk_id": "c1", "start": 9, "end": 9}])],
     "expect_column_values_to_be_in_set", "evidence_in_chunks", ["a"]),
    ([_item("a", chunks=("missing",), evidence=[])], "expect_column_values_to_be_in_set", "references_in_index", ["a"]),
    ([_item("a", qa_type="trivia")], "expect_column_values_to_be_in_set", "qa_type", ["trivia"]),
    ([_item("a", status="deleted")], "expect_column_values_to_be_in_set", "status", ["deleted"]),
], ids=["duplicate_qa_id", "whitespace_question", "null_question", "span_past_chunk_end", "empty_span",
        "missing_reference", "unregistered_type", "unknown_status"])
def test_golden_suite_names_the_failed_expectation(rows, expectation, column, sample):
    report = gq.validate_version(rows, CHUNKS)
    assert not report.success
    failed = [(f["expectation"], f["kwargs"]["column"]) for f in report.failures]
    assert failed == [(expectation, column)]
    if sample:
        assert report.failures[0]["sample"] == sample
    validation, error = gq.validation_outcome(report)
    assert validation["golden"]["success"] is False and expectation in error and "not made the line's head" in error


def test_golden_suite_passes_a_good_set_and_skips_inactive_and_unanswerable_items():
    rows = [_item("a"), _item("b", qa_type="unanswerable", chunks=(), evidence=[]),
            _item("c", status="retired", chunks=("gone",), evidence=[{"chunk_id": "gone", "start": 0, "end": 3}]),
            _item("d", qa_type="imported", evidence=[])]
    report = gq.validate_version(rows, CHUNKS)
    assert report.success and report.failures == [] and report.evaluated == 4
    assert gq.validation_outcome(report) == ({"golden": report.summary()}, None)
    assert gq.validate_version([], {}).success
