"""The commands that are not runs, without Prefect: each returns its typed summary with `status`, or raises
ConfigError naming the problem; the ones that move refs move exactly what they say."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest

from ragloop.tasks import commands, schemas
from ragloop.tasks.promotion import Refs
from ragloop.tasks.settings import ConfigError, EvalConfig
from ragloop.tasks.storage import Lake
from tests import review_fixtures as rf
from tests.conftest import REPO

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def lake5(lake_dir):
    """The review lake: a served index, a synthetic line of 5 items, two eval runs (no metrics)."""
    return rf.build(lake_dir, n=5)


def _eval_run(info: dict, run_id: str, metrics: list[dict], at: int, lineage: dict | None = None,
              outputs: dict | None = None, items: list[dict] | None = None) -> str:
    """An eval run on the lake's golden line: one item row per metrics dict, a manifest started `at` minutes
    after T0 (lineage: golden set, line and the served table, plus `lineage`)."""
    items = (items or info["items"])[:len(metrics)]
    store = info["store"]
    rows = [{"qa_id": it["qa_id"], "qa_type": it["qa_type"], "question": it["question"], "status": "ok", "error": None,
             "retrieved_chunk_ids": [], "retrieved_doc_ids": [], "retrieval_scores": [], "answer": None, "refused": False,
             "grounded": None, "degenerate": None, "relevance": None, "metrics": m, "failed_metrics": [],
             "stale_references": []} for it, m in zip(items, metrics)]
    info["lake"].write_eval(run_id, pa.Table.from_pylist(rows, schema=schemas.EVAL_ITEMS),
                            pa.Table.from_pylist([], schema=schemas.TRACES))
    start = T0 + dt.timedelta(minutes=at)
    info["lake"].write_run({
        "run_id": run_id, "flow": "eval", "status": "ok", "started_at": start, "ended_at": start + dt.timedelta(seconds=2.34),
        "lineage": {"golden_set_id": info["golden_set_id"], "golden_line": "synthetic", "git_commit": f"c-{run_id}",
                    "table": {"name": store.name, "version": store.version}, **(lineage or {})},
        "outputs": {"golden_set_id": info["golden_set_id"], "gate": {"status": "no_baseline"}, "baseline_run_id": None,
                    **(outputs or {})}})
    return run_id


# -- compare ----------------------------------------------------------------------------------------
def test_compare_pairs_items_by_question_and_says_what_it_could_not_compare(lake5):
    a = _eval_run(lake5, "a", [{"hit@1": 0.0, "mrr@3": 0.5}] * 4, 10, lineage={"chain": {"k": 3}})
    b = _eval_run(lake5, "b", [{"hit@1": 1.0, "faithfulness": 0.9}] * 5, 20, lineage={"chain": {"k": 5}})
    summary = commands.compare_runs(lake5["lake"], a, b, EvalConfig(bootstrap_resamples=200))
    data = summary.model_dump(mode="json")
    assert data["status"] == "ok" and (data["run_a"], data["run_b"]) == ("a", "b")
    assert data["shared_items"] == 4 and data["items"] == {"a": 4, "b": 5}
    assert data["golden_set_ids"] == {"a": lake5["golden_set_id"], "b": lake5["golden_set_id"]}
    assert data["deltas"]["hit@1"] == {"baseline": 0.0, "candidate": 1.0, "delta": 1.0, "ci": [1.0, 1.0], "n": 4, "sd": 0.0}
    assert data["not_compared"] == {"baseline_only": ["mrr@3"], "candidate_only": ["faithfulness"]}
    assert data["lineage_changes"] == {"chain": {"a": {"k": 3}, "b": {"k": 5}}}, "git_commit differs on every run: left out"
    assert commands.compare_runs(lake5["lake"], a, b, EvalConfig(bootstrap_resamples=200)) == summary, "seeded"


def test_compare_counts_shared_qa_ids_whose_question_was_edited_and_says_which_way_the_delta_goes(lake5):
    from ragloop.flows.cli import _human_compare

    edited = [dict(it) for it in lake5["items"]]
    edited[1]["question"] = edited[1]["question"] + " (reworded)"
    a = _eval_run(lake5, "a", [{"hit@1": 0.0}] * 3, 10)
    b = _eval_run(lake5, "b", [{"hit@1": 1.0}] * 3, 20, items=edited)
    data = commands.compare_runs(lake5["lake"], a, b, EvalConfig(bootstrap_resamples=50)).model_dump(mode="json")
    assert data["shared_items"] == 3 and data["changed_questions"] == 1
    lines = _human_compare(data)
    assert lines[0].startswith("a (baseline) -> b (candidate): delta = candidate - baseline"), lines[0]
    assert any("1 of the 3 shared qa_ids have a different question text" in line for line in lines), lines
    same = commands.compare_runs(lake5["lake"], a, a, EvalConfig(bootstrap_resamples=50)).model_dump(mode="json")
    assert same["changed_questions"] == 0 and not any("question text" in line for line in _human_compare(same))


@pytest.mark.filterwarnings("ignore:The BCa confidence interval cannot be calculated")
def test_compare_keeps_a_nan_metric_as_json_nan(lake5):
    a = _eval_run(lake5, "a", [{"ndcg@3": math.nan}] * 3, 10)
    b = _eval_run(lake5, "b", [{"ndcg@3": 0.5}] * 3, 20)
    data = commands.compare_runs(lake5["lake"], a, b, EvalConfig(bootstrap_resamples=50)).model_dump(mode="json")
    assert '"delta": NaN' in json.dumps(data), "the CLI prints what json.dumps made of the plain dict"


def test_compare_refuses_unknown_runs_and_runs_without_a_shared_question(lake5):
    a = _eval_run(lake5, "a", [{"hit@1": 1.0}] * 2, 10)
    other = _eval_run(lake5, "other", [{"hit@1": 1.0}], 20, items=lake5["items"][4:])
    with pytest.raises(ConfigError, match="nope: no eval run with that id"):
        commands.compare_runs(lake5["lake"], a, "nope", EvalConfig())
    with pytest.raises(ConfigError, match="runs share no question"):
        commands.compare_runs(lake5["lake"], a, other, EvalConfig())


# -- lineage and runs ---------------------------------------------------------------------------------
def test_lineage_is_the_manifest_as_recorded(lake5):
    run = _eval_run(lake5, "a", [{"hit@1": 1.0}], 10, lineage={"seed": 7})
    data = commands.run_lineage(lake5["lake"], run).model_dump(mode="json")
    assert data == {"status": "ok", "run_id": "a", "flow": "eval", "run_status": "ok",
                    "started_at": "2026-01-01 00:10:00+00:00", "ended_at": "2026-01-01 00:10:02.340000+00:00",
                    "lineage": lake5["lake"].read_run(run)["lineage"]}
    with pytest.raises(ConfigError, match="nope: no run with that id"):
        commands.run_lineage(lake5["lake"], "nope")


def _manifests(lake: Lake) -> None:
    """Three run manifests: index at T0, eval a at +1 min, eval b at +2 min (still running)."""
    for run_id, flow, minutes, outputs in (("i", "index", 0, {}), ("a", "eval", 1, {"error": "boom"}), ("b", "eval", 2, None)):
        start = T0 + dt.timedelta(minutes=minutes)
        lake.write_run({"run_id": run_id, "flow": flow, "status": "ok" if outputs is not None else "running",
                        "started_at": start, "ended_at": start + dt.timedelta(seconds=2.34) if outputs is not None else None,
                        "lineage": {"snapshot_id": "s1"} if flow == "index" else {"golden_set_id": "g1"},
                        "outputs": outputs or {}})


@pytest.mark.parametrize("flow, limit, shown, total", [
    (None, 20, ["b", "a", "i"], 3),
    (None, 0, ["b", "a", "i"], 3),
    (None, 1, ["b"], 3),
    ("eval", 20, ["b", "a"], 2),
    ("index", 20, ["i"], 1),
])
def test_runs_lists_newest_first_within_the_limit(lake_dir, flow, limit, shown, total):
    lake = Lake(str(lake_dir))
    _manifests(lake)
    data = commands.list_runs(lake, flow, limit).model_dump(mode="json")
    assert [r["run_id"] for r in data["runs"]] == shown and (data["total"], data["shown"]) == (total, len(shown))
    assert data["status"] == "ok" and data["lake"] == lake.uri


def test_runs_shows_times_seconds_lineage_ids_and_errors(lake_dir):
    lake = Lake(str(lake_dir))
    _manifests(lake)
    rows = {r["run_id"]: r for r in commands.list_runs(lake).model_dump(mode="json")["runs"]}
    assert rows["a"] == {"run_id": "a", "flow": "eval", "status": "ok", "started_at": "2026-01-01 00:01:00+00:00",
                         "ended_at": "2026-01-01 00:01:02.340000+00:00", "seconds": 2.3, "golden_set_id": "g1",
                         "snapshot_id": None, "error": "boom"}
    assert (rows["b"]["ended_at"], rows["b"]["seconds"], rows["b"]["error"]) == (None, None, None)
    assert rows["i"]["snapshot_id"] == "s1" and rows["i"]["golden_set_id"] is None


@pytest.mark.parametrize("flow, limit, message", [
    (None, -1, r"--limit -1: must be >= 0"),
    ("idnex", 20, r"--flow idnex: no run of that flow in .* \(flows with runs: eval, index\)"),
])
def test_runs_refuses_a_negative_limit_and_an_unknown_flow(lake_dir, flow, limit, message):
    lake = Lake(str(lake_dir))
    _manifests(lake)
    with pytest.raises(ConfigError, match=message):
        commands.list_runs(lake, flow, limit)


# -- golden lines ---------------------------------------------------------------------------------------
def test_golden_list_use_and_show(lake5):
    lake = lake5["lake"]
    curated = rf.write_line(lake, lake5["items"][:2], line="curated")
    listed = commands.golden_lines(lake).model_dump(mode="json")
    assert listed["status"] == "ok" and listed["chosen"] == "synthetic" and list(listed["lines"]) == ["curated", "synthetic"]
    assert listed["lines"]["curated"] | {"updated_at": None} == {
        "golden_set_id": curated, "kind": "imported", "versions": 1, "updated_at": None, "baseline_run_id": None}

    used = commands.use_line(lake, "curated").model_dump(mode="json")
    assert used == {"status": "ok", "chosen": "curated", "previous_chosen": "synthetic", "golden_set_id": curated}
    assert Refs(lake).lines().chosen == "curated"
    with pytest.raises(ConfigError, match="golden use nope: no such line"):
        commands.use_line(lake, "nope")

    shown = commands.show_golden(lake, "latest").model_dump(mode="json")
    assert (shown["status"], shown["golden_set_id"], shown["line"], shown["count"]) == ("ok", curated, "curated", 2)
    assert shown["by_status"] == {"active": 2} and shown["by_type"] == {"paraphrased": 1, "single_hop": 1}
    assert [i["qa_id"] for i in shown["items"]] == [i["qa_id"] for i in lake5["items"][:2]]
    assert isinstance(shown["items"][0]["created_at"], str)
    assert commands.show_golden(lake, lake5["golden_set_id"][:8]).line == "synthetic"
    with pytest.raises(ConfigError, match=r"golden show nope: no such golden set or line .* see `ragloop golden list`"):
        commands.show_golden(lake, "nope")


# -- promote and rollback ---------------------------------------------------------------------------------
def _promotable(info: dict, run_id: str, at: int, baseline: str | None, prompts: dict | None = None) -> str:
    return _eval_run(info, run_id, [{"hit@1": 1.0}], at, lineage={"prompts": prompts or {}},
                     outputs={"gate": {"status": "passed" if baseline else "no_baseline"}, "baseline_run_id": baseline,
                              "golden_line": "synthetic"})


def test_promote_makes_a_passed_run_the_baseline_once(lake5):
    lake = lake5["lake"]
    run = _promotable(lake5, "p1", 10, None)
    data = commands.promote_run(lake, run).model_dump(mode="json")
    assert data == {"status": "ok", "run_id": "p1", "line": "synthetic", "promoted": True,
                    "reason": "promoted by hand (gate no_baseline)", "serving_moved": None,
                    "serving": {"table": lake5["store"].name, "version": lake5["store"].version}, "candidate": None}
    assert Refs(lake).baseline("synthetic").run_id == "p1"
    with pytest.raises(ConfigError, match="promote: run p1 is already the baseline of its line"):
        commands.promote_run(lake, run)
    failed = _eval_run(lake5, "f", [{"hit@1": 0.0}], 20, outputs={"gate": {"status": "failed"}, "baseline_run_id": "p1"})
    with pytest.raises(ConfigError, match="only a passed run can be promoted"):
        commands.promote_run(lake, failed)
    with pytest.raises(ConfigError, match="nope: no run with that id"):
        commands.promote_run(lake, "nope")


def test_rollback_returns_to_the_previous_promotion_and_compares_the_prompt_files(lake5, tmp_path):
    lake = lake5["lake"]
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    from ragloop.tasks.prompts import load_prompt_set

    answer = load_prompt_set(prompts)["answer"].prompt_hash
    commands.promote_run(lake, _promotable(lake5, "p1", 10, None, prompts={"answer": answer, "gone": "0" * 64}))
    commands.promote_run(lake, _promotable(lake5, "p2", 20, "p1", prompts={"answer": "f" * 64}))
    with pytest.raises(ConfigError, match="--golden nope: no such golden set or line"):
        commands.rollback_line(lake, "nope", prompts)

    data = commands.rollback_line(lake, "latest", prompts).model_dump(mode="json")
    table = {"name": lake5["store"].name, "version": lake5["store"].version}
    assert data | {"serving_before": None} == {
        "status": "ok", "golden_set_id": lake5["golden_set_id"], "line": "synthetic", "from_run_id": "p2",
        "to_run_id": "p1", "table": {"from": table, "to": table}, "serving_before": None,
        "prompts": {"answer": {"promoted": answer, "file": answer, "matches": True},
                    "gone": {"promoted": "0" * 64, "file": None, "matches": False}}}
    assert data["serving_before"]["version"] == table["version"] and Refs(lake).baseline("synthetic").run_id == "p1"
    with pytest.raises(ConfigError, match="line synthetic: run p1 is the line's first promotion in force"):
        commands.rollback_line(lake, "synthetic", prompts)


# -- prompts check ------------------------------------------------------------------------------------------
def test_prompts_check_lists_new_and_changed_prompts_and_emits_only_changed_ones(lake_dir, tmp_path):
    lake = Lake(str(lake_dir))
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    from ragloop.tasks.prompts import load_prompt_set

    recorded = load_prompt_set(prompts)
    for prompt in recorded.values():
        lake.record_prompt(prompt.name, prompt.prompt_hash, prompt.text)
    unchanged = commands.check_prompts(lake, prompts).model_dump(mode="json")
    assert unchanged == {"status": "ok", "lake": lake.uri, "prompts": len(recorded), "changed": [], "emitted": 0,
                         "prompts_dir": str(prompts), "sources": {name: "project" for name in sorted(recorded)}}

    answer = prompts / "answer.yaml"
    answer.write_text(answer.read_text().replace("one to three sentences", "one short sentence"))
    (prompts / "query_rewrite.yaml").rename(prompts / "query_rewrite2.yaml")
    (prompts / "query_rewrite2.yaml").write_text((prompts / "query_rewrite2.yaml").read_text()
                                                 .replace("name: query_rewrite", "name: query_rewrite2"))
    summary = commands.check_prompts(lake, prompts)
    assert [(c["name"], c["status"]) for c in summary.changed] == [("answer", "changed"), ("query_rewrite2", "new")]
    assert summary.changed[0]["previous_hash"] == recorded["answer"].prompt_hash
    assert [c["name"] for c in summary.to_emit()] == ["answer"], "a new prompt has no baseline to gate against"

    answer.write_text(answer.read_text() + ": : [bad\n")
    with pytest.raises(ConfigError, match="answer.yaml: invalid YAML"):
        commands.check_prompts(lake, prompts)


# -- the contract -------------------------------------------------------------------------------------------
def test_every_command_summary_requires_status_ok():
    from ragloop.tasks.summaries import CommandSummary, summary_models

    models = {name: m for name, m in summary_models().items() if issubclass(m, CommandSummary)}
    assert set(models) >= {"compare", "lineage", "rollback", "promote", "golden list", "golden use", "golden show",
                           "runs", "prompts check"}  # and the later ones (calibrate, export ...)
    for model in models.values():
        assert model.model_fields["status"].is_required(), model.__name__
    with pytest.raises(ValueError, match="status"):
        commands.GoldenUseSummary(status="failed", chosen="a", previous_chosen=None, golden_set_id="g")


def test_importing_the_commands_imports_neither_prefect_nor_scipy():
    code = ("import sys, ragloop.tasks.commands\n"
            "print(sorted(m for m in ('prefect', 'scipy', 'lancedb', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_prompts_check_says_which_prompts_are_the_packaged_defaults(lake_dir, tmp_path, monkeypatch):
    from ragloop.flows.cli import _human_prompts

    monkeypatch.chdir(tmp_path)
    lake = Lake(str(lake_dir))
    assert set(commands.check_prompts(lake, "prompts").sources.values()) == {"packaged"}  # no prompts/: no note
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    (tmp_path / "prompts" / "answer.yaml").unlink()
    summary = commands.check_prompts(lake, "prompts").model_dump(mode="json")
    assert summary["prompts_dir"] == "prompts" and summary["sources"]["answer"] == "packaged"
    assert {o for n, o in summary["sources"].items() if n != "answer"} == {"project"}
    assert "answer: packaged default (no prompts/answer.yaml)" in _human_prompts(summary)
