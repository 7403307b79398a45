"""Datasets for the next model: SFT conversations from reviewed items and preference pairs from graded
answers, written as JSONL that Hugging Face `datasets` loads (tasks.exports)."""

from __future__ import annotations

import json

import pytest

from ragloop.tasks import exports, review
from ragloop.tasks.settings import ConfigError
from tests import review_fixtures as rf


@pytest.fixture
def reviewed(lake_dir):
    info = rf.build(lake_dir, 5)
    lake, items = info["lake"], info["items"]
    index = review.LakeIndex(lake)

    def decide(queue, qa_id, action, payload, run_id=None, line=None):
        latest = review.latest_events(review.read_events(lake), (queue,) if queue in ("answers", "compare") else ("golden", "stale"),
                                      run_id=run_id, line=line).get(qa_id)
        review.record_decision(lake, review.Decision(queue, qa_id, action, "ana", payload, (latest or {}).get("event_id")),
                               line=line, run_id=run_id, index=index)

    decide("golden", items[0]["qa_id"], "approve", {}, line="synthetic")
    decide("golden", items[1]["qa_id"], "edit", {"reference_answer": "Station 1 has 11 docks."}, line="synthetic")
    decide("golden", items[2]["qa_id"], "reject", {"reason": "trivial"}, line="synthetic")
    review.apply_reviews(lake, "synthetic")
    cand, base = info["candidate_run"], info["baseline_run"]
    decide("answers", items[0]["qa_id"], "grade", {"grade": "correct"}, run_id=cand)
    decide("answers", items[0]["qa_id"], "grade", {"grade": "incorrect"}, run_id=base)
    decide("answers", items[1]["qa_id"], "grade", {"grade": "incorrect"}, run_id=base)
    decide("compare", items[3]["qa_id"], "prefer", {"better": "candidate", "baseline_run_id": base}, run_id=cand)
    decide("compare", items[4]["qa_id"], "prefer", {"better": "tie", "baseline_run_id": base}, run_id=cand)
    return info


def _load(path):
    datasets = pytest.importorskip("datasets", reason="Hugging Face `datasets` is not installed: the exports are "
                                                      "not checked against its loader (pip install datasets)")
    return datasets.load_dataset("json", data_files=str(path), split="train")


def test_sft_export_holds_one_conversation_per_reviewed_item_and_loads_with_datasets(reviewed, tmp_path):
    out = tmp_path / "sft.jsonl"
    summary = exports.export_dataset(reviewed["lake"], "sft", out, "prompts")
    assert summary.rows == 2 and summary.sources == {"approved": 1, "edited": 1}
    assert summary.skipped == {"not_reviewed": 3}  # two synthetic items and the rejected one
    ds = _load(out)
    assert len(ds) == 2 and set(ds.column_names) >= {"messages", "qa_id", "golden_set_id", "review_event_id",
                                                     "context_chunk_ids", "prompt_hash"}
    edited = next(r for r in ds if r["review"] == "edited")
    assert [m["role"] for m in edited["messages"]] == ["system", "user", "assistant"]
    assert edited["messages"][-1]["content"] == "Station 1 has 11 docks."
    assert reviewed["items"][1]["reference_answer"] in edited["messages"][1]["content"]  # its chunk is the context
    assert edited["golden_set_id"] == summary.golden_set_id and edited["review_event_id"]


def test_preference_export_pairs_chosen_and_rejected_answers_and_loads_with_datasets(reviewed, tmp_path):
    out = tmp_path / "pref.jsonl"
    summary = exports.export_dataset(reviewed["lake"], "preference", out, "prompts")
    assert summary.sources == {"correct_vs_incorrect": 1, "preference": 1, "reference_vs_incorrect": 2}
    assert summary.skipped == {"tie": 1}
    ds = _load(out)
    assert len(ds) == 4 and set(ds.column_names) >= {"prompt", "chosen", "rejected", "pair_id", "qa_id",
                                                     "chosen_run_id", "rejected_run_id", "chosen_event_id"}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    pref = next(r for r in rows if r["source"] == "preference")
    assert pref["chosen_run_id"] == reviewed["candidate_run"] and pref["rejected_run_id"] == reviewed["baseline_run"]
    assert pref["rejected"][0]["content"] == "I do not know."
    ref = [r for r in rows if r["source"] == "reference_vs_incorrect"]
    assert {r["chosen"][0]["content"] for r in ref} == {reviewed["items"][0]["reference_answer"], "Station 1 has 11 docks."}
    assert len({r["pair_id"] for r in rows}) == 4


def test_an_unknown_line_is_a_usage_error(reviewed, tmp_path):
    with pytest.raises(ConfigError, match="no golden-set line 'nope'"):
        exports.export_dataset(reviewed["lake"], "sft", tmp_path / "x.jsonl", "prompts", golden="nope")
