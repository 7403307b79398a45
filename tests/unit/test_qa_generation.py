"""Golden-set logic: budget split, staleness, filters, near-duplicates, ids (no LLM, no model)."""

from __future__ import annotations

import pytest

from tasks import qa_generation as qa
from tasks.embedding import HashEmbedder
from tasks.prompts import load_prompts
from tasks.settings import SynthConfig
from tests.conftest import REPO

CONTEXT = "Riverside Hub has 32 docks, 10 of them with chargers. Backups run nightly at 02:15 and are kept 35 days."


@pytest.mark.parametrize(
    "total, weights, expected",
    [
        (10, {"single_hop": 0.4, "multi_hop": 0.2, "abstract": 0.15, "unanswerable": 0.1, "paraphrased": 0.15},
         {"single_hop": 4, "multi_hop": 2, "abstract": 2, "unanswerable": 1, "paraphrased": 1}),
        (3, {"single_hop": 1.0, "multi_hop": 0.0}, {"single_hop": 3}),
        (1, {"single_hop": 1, "abstract": 1}, {"single_hop": 1, "abstract": 0}),
        (0, {"single_hop": 1}, {"single_hop": 0}),
    ],
)
def test_allocate_splits_the_budget_exactly(total, weights, expected):
    counts = qa.allocate(total, weights)
    assert counts == expected and sum(counts.values()) == total


def _item(qa_id, chunks, docs, status="active"):
    return {"qa_id": qa_id, "source_chunk_ids": chunks, "source_doc_ids": docs, "status": status}


def test_classify_previous_keeps_untouched_marks_changed_stale_and_vanished_retired():
    items = [
        _item("k", ["c1", "c2"], ["d1"]),
        _item("s", ["c3"], ["d2"]),
        _item("r", ["c4"], ["d3"]),
        _item("m", ["c1", "c5"], ["d1", "d3"]),
        _item("old", ["c9"], ["d9"], status="retired"),
    ]
    verdicts = qa.classify_previous(items, chunk_ids={"c1", "c2", "c3x"}, doc_ids={"d1", "d2"})
    assert verdicts == {"k": "kept", "s": "stale", "r": "retired", "m": "retired"}


def _cand(question, answer, qa_type="single_hop", error=None, context=CONTEXT):
    prompts = load_prompts(REPO / "prompts")
    chunk = qa.ChunkRef("c1", "d1", "sha", context, 0)
    return qa.Candidate(qa.GenTask(qa_type, "a rider", [chunk]), question, answer, prompts["qa_single_hop"], error)


@pytest.mark.parametrize(
    "question, answer, qa_type, error, reason",
    [
        ("How many docks does Riverside Hub have?", "32 docks, 10 with chargers.", "single_hop", None, None),
        ("", "", "single_hop", "invalid JSON", "unparseable"),
        ("Docks?", "32", "single_hop", None, "too_short"),
        ("How many docks? " * 30, "32 docks", "single_hop", None, "too_long"),
        ("How many docks does Riverside Hub have?", "", "single_hop", None, "too_short"),
        ("Riverside Hub has 32 docks, 10 of them with chargers?", "32 docks", "single_hop", None, "copies_context"),
        ("How many docks does Riverside Hub have?", "Forty bicycles painted blue downtown.", "single_hop", None, "unsupported_answer"),
        ("Which company manufactured the Riverside chargers?", "", "unanswerable", None, None),
        ("What is the difference between", "", "unanswerable", None, "malformed"),
        ("How many docks?\nRiverside Hub has 32.", "32 docks", "single_hop", None, "malformed"),
        ("how many docks at riverside hub", "32 docks", "paraphrased", None, None),
        ("What is the passage about?", "32 docks", "single_hop", None, "refers_to_context"),
        ("What does this text cover?", "32 docks", "abstract", None, "refers_to_context"),
    ],
)
def test_reject_reason_table(question, answer, qa_type, error, reason):
    assert qa.reject_reason(_cand(question, answer, qa_type, error), SynthConfig()) == reason


def test_answer_support_and_verbatim_ratio():
    assert qa.answer_support("32 docks with chargers", CONTEXT) == 1.0
    assert qa.answer_support("purple elephants", CONTEXT) == 0.0
    assert qa.verbatim_ratio("backups run nightly at 02:15", CONTEXT) == 1.0
    assert qa.verbatim_ratio("when are backups taken?", CONTEXT) < 0.5


def test_drop_near_duplicates_against_existing_and_within_batch():
    emb = HashEmbedder(dim=64)
    items = [{"question": q} for q in ["how many docks at riverside", "How many docks at Riverside", "when do backups run"]]
    kept, dropped = qa.drop_near_duplicates(items, ["when do backups run"], emb.encode, 0.95)
    assert [i["question"] for i in kept] == ["how many docks at riverside"] and dropped == 2


def test_to_item_unanswerable_has_no_retrieval_references_but_keeps_sources():
    item = qa.to_item(_cand("Which firm built the chargers?", "", "unanswerable"), "fake-llm")
    assert item["reference_chunk_ids"] == [] and item["reference_doc_ids"] == []
    assert item["source_chunk_ids"] == ["c1"] and item["source_doc_ids"] == ["d1"]
    assert item["reference_answer"] == qa.REFUSAL_ANSWER and item["status"] == "active"
    assert item["prompt_hash"] and item["prompt_id"].startswith("qa_single_hop@")


def test_ids_are_content_derived():
    a = qa.to_item(_cand("How many docks does Riverside Hub have?", "32 docks."), "g")
    b = qa.to_item(_cand("How many docks does Riverside Hub have?", "32 docks."), "g")
    assert a["qa_id"] == b["qa_id"]
    assert qa.golden_set_id_of([a]) == qa.golden_set_id_of([b])
    assert qa.golden_set_id_of([a]) != qa.golden_set_id_of([dict(a, status="stale")])
