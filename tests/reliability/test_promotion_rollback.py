"""Bad candidates are not promoted: a failed GE suite or a failed gate leaves the serving table version
and the promoted prompts where they were; `ragloop rollback` returns to the previous promoted state."""

from __future__ import annotations

import json

import numpy as np

from ragloop.flows import evaluate as eval_flow
from ragloop.flows import index as index_flow
from ragloop.flows.cli import main
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.llm import ScriptedLLM
from ragloop.tasks.promotion import Refs
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, use_fakes, write_files
from tests.reliability.helpers import chunk_rows, copy_answer, import_station_golden, station_docs


class UnnormalizedEmbedder(HashEmbedder):
    """The hash embedder gone wrong: vectors of norm 3 (the chunks suite requires unit norms)."""

    def encode(self, texts):
        return super().encode(texts) * np.float32(3.0)


def _eval(lake_dir, **kw) -> dict:
    return eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, promote="explicit", **kw)


def _state(lake: Lake, golden_set_id: str) -> dict:
    refs = Refs(lake)
    promoted = refs.baseline(refs.lines().line_of(golden_set_id))
    return {"serving": {"table": refs.serving().table, "version": refs.serving().version},
            "promoted_run": promoted.run_id, "promoted_table": promoted.table, "promoted_prompts": promoted.prompts}


def test_bad_candidates_are_not_promoted_and_rollback_restores_the_previous_state(
    prefect_backend, hash_embedder, tmp_path, lake_dir, monkeypatch, capsys, figures
):
    use_fakes(llm=lambda config: ScriptedLLM([copy_answer] * 50))
    monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")
    monkeypatch.setenv("RAGLOOP_GATE__MIN_ITEMS", "1")  # 6 items: this test is about refs, not power
    src = write_files(tmp_path / "src", station_docs(6))
    first_index = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    golden = import_station_golden(tmp_path, lake_dir)["golden_set_id"]
    lake = Lake(str(lake_dir))
    p1 = _eval(lake_dir)
    assert p1["gate"]["status"] == "no_baseline" and p1["promoted"]
    s1 = _state(lake, golden)
    assert s1["serving"]["version"] == first_index["table"]["version"] and s1["promoted_prompts"]["answer"]
    blocked = []

    # 1. A failed gate (a changed answer prompt under a floor it cannot reach) promotes nothing.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for path in (REPO / "prompts").glob("*.yaml"):
        prompts.joinpath(path.name).write_text(path.read_text().replace("one to three sentences", "one short sentence"))
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(prompts))
    monkeypatch.setenv("RAGLOOP_GATE__FLOORS", '{"chunk_hit@1": 1.01}')
    gated = _eval(lake_dir)
    assert gated["status"] == "gate_failed" and gated["lineage"]["prompts"]["answer"] != s1["promoted_prompts"]["answer"]
    assert _state(lake, golden) == s1, "a failed gate leaves serving version and prompts where they were"
    blocked.append("gate_failed")
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.delenv("RAGLOOP_GATE__FLOORS")

    # 2. A failed GE suite on the chunks does not move the serving version, whatever the table holds now.
    write_files(src, {"station90.md": "# Station 90\n\nA new station with forty docks."})
    use_fakes(embedder=lambda config: UnnormalizedEmbedder(dim=32, max_tokens=64))
    broken = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert broken["status"] == "failed" and not broken["validation"]["chunks"]["success"]
    assert _state(lake, golden) == s1, "a failed GE suite leaves the serving version where it was"
    blocked.append("ge_failed")
    use_fakes(embedder=lambda config: hash_embedder)

    # 3. A good candidate is promoted: a new index version and a passing eval.
    second_index = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert second_index["status"] == "ok" and second_index["table"]["version"] > s1["serving"]["version"]
    assert {r["doc_id"] for r in chunk_rows(lake_dir)} >= {"station90.md"}
    p2 = _eval(lake_dir)
    assert p2["gate"]["status"] == "passed" and p2["baseline_run_id"] == p1["run_id"] and p2["promoted"]
    s2 = _state(lake, golden)
    assert s2["serving"]["version"] == second_index["table"]["version"] and s2["promoted_run"] == p2["run_id"]

    # 4. Rollback returns to the previous promoted state; evals then read the restored version.
    assert main(["rollback", "--lake", str(lake_dir), "--golden", "latest", "--json"]) == 0
    rolled = json.loads(capsys.readouterr().out)
    assert (rolled["from_run_id"], rolled["to_run_id"]) == (p2["run_id"], p1["run_id"])
    assert _state(lake, golden) == s1, "serving version and promoted prompts are the first promotion's again"
    assert rolled["line"] == "golden"
    assert all(p["matches"] for p in rolled["prompts"].values())
    assert main(["rollback", "--lake", str(lake_dir), "--json"]) == 2, "nothing before the first promotion"
    assert "first promotion" in json.loads(capsys.readouterr().out)["error"]
    nightly = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))  # nothing changed since
    assert nightly["serving"]["version"] == s1["serving"]["version"], "a no-op index keeps the rollback's pin"
    assert _state(lake, golden) == s1
    after = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, retrieval_only=True)
    assert after["promoted"] is False and _state(lake, golden) == s1, "an experiment leaves every ref where it was"
    assert after["lineage"]["table"]["version"] == s1["serving"]["version"]
    assert "station90.md" not in {d for i in lake.read_eval_items(after["run_id"]).to_pylist() for d in i["retrieved_doc_ids"]}
    write_files(src, {"station91.md": "# Station 91\n\nAnother new station with ten docks."})
    moved = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert moved["serving"]["version"] == moved["table"]["version"] > s2["serving"]["version"], "a changed corpus is a new candidate"
    figures("5_promotion", candidates_blocked=blocked, promoted_state_unchanged_after_block=True,
            rollback=f"{p2['run_id']} -> {p1['run_id']}, serving v{s2['serving']['version']} -> v{s1['serving']['version']}")
