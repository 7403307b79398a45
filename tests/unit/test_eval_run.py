"""The eval run's decisions without Prefect: inputs, preflight, chain and cache key, reuse, rows,
aggregates, lineage, gate, summary and promotion."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from ragloop.tasks import eval_run, providers, schemas
from ragloop.tasks.chain import ChainResult
from ragloop.tasks.eval_run import BaselineRun, ChainModels, EvalSummary, GoldenChoice
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.llm import LLMUnavailable, ScriptedLLM
from ragloop.tasks.promotion import Promotion, Refs, ServingRef
from ragloop.tasks.retrieval import Hit
from ragloop.tasks.settings import ConfigError, EvalConfig, GateConfig, LLMConfig, load_settings
from ragloop.tasks.storage import Lake

RECORDED = Path(__file__).parent / "data" / "eval_summaries.json"  # from the eval flow test's beir fixture
SERVING = ServingRef(table="chunks__hash_fake", version=3, run_id="index-run")


@pytest.fixture
def lake(lake_dir) -> Lake:
    return Lake(str(lake_dir))


def _golden(lake: Lake, golden_set_id: str, statuses=("active", "active")) -> None:
    rows = [{"qa_id": f"{golden_set_id}-{i}", "question": f"question {i}?", "qa_type": "single_hop", "status": s,
             "reference_chunk_ids": [f"c{i}"], "reference_doc_ids": [f"d{i}"]} for i, s in enumerate(statuses)]
    lake.write_golden(golden_set_id, pa.Table.from_pylist(rows, schema=schemas.GOLDEN))


def _result(qa_id, hits=(("c1", "d1", 0.9),), answer=None, refused=None, grounded=None, degenerate=None,
            error=None, retrieval_failed=False) -> ChainResult:
    return ChainResult(qa_id=qa_id, query=qa_id, hits=[Hit(c, d, f"text of {c}", s) for c, d, s in hits], answer=answer,
                       refused=refused, grounded=grounded, degenerate=degenerate, error=error,
                       retrieval_failed=retrieval_failed, traces=[{"qa_id": qa_id, "step": "retrieve"}])


def _item(qa_id, chunks=("c1",), docs=("d1",), qa_type="single_hop") -> dict:
    return {"qa_id": qa_id, "question": f"{qa_id}?", "qa_type": qa_type,
            "reference_chunk_ids": list(chunks), "reference_doc_ids": list(docs)}


def _row(qa_id, metrics, qa_type="single_hop", status="ok", answer=None, **kw) -> dict:
    return {"qa_id": qa_id, "qa_type": qa_type, "status": status, "metrics": metrics, "answer": answer,
            "refused": kw.get("refused"), "grounded": kw.get("grounded"), "degenerate": kw.get("degenerate"),
            "failed_metrics": kw.get("failed_metrics", []), "error": kw.get("error")}


# -- inputs --------------------------------------------------------------------------------------------
def test_an_unknown_golden_set_names_what_the_lake_has(lake):
    _golden(lake, "g1")
    with pytest.raises(ConfigError, match=r"--golden nope: no such golden set or line in .* \(lines: none; golden sets: g1\)"):
        eval_run.resolve_golden(Refs(lake), "nope")
    Refs(lake).set_line("synthetic", "g1", "synthetic", "r1")  # the line's name is what a user types
    with pytest.raises(ConfigError, match=r"\(lines: synthetic; golden sets: g1\)"):
        eval_run.resolve_golden(Refs(lake), "nope")


def test_latest_is_the_chosen_line_and_an_id_outside_lines_keys_its_own_baseline(lake):
    _golden(lake, "g1")
    _golden(lake, "g2")
    Refs(lake).set_line("curated", "g1", "curated", None)
    assert eval_run.resolve_golden(Refs(lake), "latest") == GoldenChoice("g1", "curated")
    assert eval_run.resolve_golden(Refs(lake), "latest").line_key == "curated"
    outside = eval_run.resolve_golden(Refs(lake), "g2")
    assert outside.line is None and outside.line_key == "id:g2"


def test_only_active_items_are_scored_and_none_is_an_error(lake):
    _golden(lake, "g1", ("active", "stale", "active"))
    assert [i["qa_id"] for i in eval_run.active_items(lake, "g1")] == ["g1-0", "g1-2"]
    _golden(lake, "g2", ("retired",))
    with pytest.raises(ConfigError, match="golden set g2 has no active items"):
        eval_run.active_items(lake, "g2")


def test_a_lake_without_an_index_is_a_config_error(lake):
    with pytest.raises(ConfigError, match="no index yet"):
        eval_run.pick_index(Refs(lake), "hash_fake", "auto")


@pytest.mark.parametrize("rerank, depth", [("none", 0), ("embedding", 4)])
def test_rerank_depth(rerank, depth):
    assert eval_run.rerank_depth(EvalConfig(rerank=rerank, rerank_depth=4)) == depth


# -- prompts and models -----------------------------------------------------------------------------
class _Retriever:
    def __init__(self):
        self.asked = []

    def longest_texts(self, k):
        self.asked.append(k)
        return ["a long chunk " * 20] * k


class _Judge:
    model_id = "judge@1"

    def __init__(self, fail=False):
        self.fail, self.required = fail, None

    def preflight(self, required):
        self.required = required
        if self.fail:
            raise LLMUnavailable("nothing listening")


def _models(llm=None, judge=None):
    built = []

    def factory(config: LLMConfig):
        built.append(config.provider)
        return judge if config.provider == "fake" else llm

    return providers.Providers(llm=factory), built


ITEMS = [_item("q1"), {**_item("q2"), "question": "a much longer question than the first one?"}]


def test_retrieval_only_loads_no_prompt_and_builds_no_model(settings):
    factories, built = _models(ScriptedLLM(), _Judge())
    retriever = _Retriever()
    config = EvalConfig(judge={"provider": "fake"})
    models = eval_run.prepare_models(config, settings.llm, settings.prompts_dir, True, ITEMS, retriever, factories)
    assert models == ChainModels(rewrite=None, answer=None) and models.prompts == {}
    assert built == [] and retriever.asked == [], "no prompt: no LLM, no preflight; retrieval-only: no judge"


def test_the_llm_is_preflighted_with_the_largest_prompt_and_the_judge_with_its_budget(settings):
    llm, judge = ScriptedLLM(), _Judge()
    factories, built = _models(llm, judge)
    retriever = _Retriever()
    config = EvalConfig(k=3, judge={"provider": "fake"}, judge_max_tokens=100)
    models = eval_run.prepare_models(config, settings.llm, settings.prompts_dir, False, ITEMS, retriever, factories)
    assert models.answer.name == "answer" and models.rewrite is None and list(models.prompts) == ["answer"]
    assert models.llm is llm and models.judge is judge and models.judge_id == "judge@1"
    assert built == ["local", "fake"] and retriever.asked == [3]
    assert judge.required == 400, "ragas' prompts carry schemas and examples"
    tokens = eval_run.largest_prompt_tokens(models.prompts, ITEMS, llm, retriever.longest_texts(3))
    assert tokens > llm.count_tokens("a much longer question than the first one?") + 3 * 60


@pytest.mark.parametrize("llm, judge, match", [
    (ScriptedLLM(context_window=10), None, r"context window 10 <"),
    (ScriptedLLM(), _Judge(fail=True), r"^eval\.judge: nothing listening"),
])
def test_a_model_that_fails_its_preflight_is_a_config_error(settings, llm, judge, match):
    factories, _ = _models(llm, judge)
    config = EvalConfig(judge={"provider": "fake"} if judge else None)
    with pytest.raises(ConfigError, match=match):
        eval_run.prepare_models(config, settings.llm, settings.prompts_dir, False, ITEMS, _Retriever(), factories)


def test_a_missing_prompt_is_named(settings):
    factories, built = _models(ScriptedLLM())
    with pytest.raises(ConfigError, match=r"eval: prompt\(s\) \['nope'\] not found in prompts"):
        eval_run.prepare_models(EvalConfig(answer_prompt="nope"), settings.llm, settings.prompts_dir, False, ITEMS,
                                _Retriever(), factories)
    assert built == []


@pytest.mark.parametrize("rewrite, retrieval_only, wanted", [
    (None, True, []), (None, False, ["answer"]), ("query_rewrite", True, ["query_rewrite"]),
    ("query_rewrite", False, ["query_rewrite", "answer"]),
])
def test_wanted_prompts_in_chain_order(rewrite, retrieval_only, wanted):
    assert eval_run.wanted_prompts(EvalConfig(rewrite_prompt=rewrite), retrieval_only) == wanted


# -- chain and cache key --------------------------------------------------------------------------------
def _prompt(name, prompt_hash="h" * 64):
    return SimpleNamespace(name=name, prompt_hash=prompt_hash, text=f"{name} text")


def test_a_retrieval_only_chain_has_no_guardrail_answer_or_llm():
    chain = eval_run.describe_chain(EvalConfig(retrieval="fts", k=4, rerank="embedding"), ChainModels(None, None), True)
    assert chain == {"rewrite": None, "retrieval": "fts", "k": 4, "exact": False, "rerank": {"kind": "embedding", "depth": 4},
                     "guardrail": None, "answer": None, "llm": None}


def test_a_full_chain_names_its_prompts_guardrail_and_llm():
    models = ChainModels(_prompt("query_rewrite", "r" * 64), _prompt("answer"), llm=ScriptedLLM(model_id="m@1"))
    chain = eval_run.describe_chain(EvalConfig(rewrite_prompt="query_rewrite"), models, False)
    assert chain["rewrite"] == {"name": "query_rewrite", "prompt_hash": "r" * 64}
    assert chain["answer"] == {"name": "answer", "prompt_hash": "h" * 64} and chain["llm"] == "m@1"
    assert chain["guardrail"] == {"refuse_below": 0.2, "min_grounding": 0.5} and chain["rerank"] is None


def test_the_cache_key_changes_with_anything_the_metrics_depend_on(lake_dir):
    settings = load_settings(overrides={"lake": str(lake_dir)})
    models = ChainModels(None, _prompt("answer"))
    chain = eval_run.describe_chain(settings.eval, models, False)
    key = eval_run.eval_cache_key("g1", SERVING, chain, models, "w", settings)
    assert key == eval_run.eval_cache_key("g1", SERVING, dict(chain), models, "w", settings)
    other_gate = load_settings(overrides={"lake": str(lake_dir), "gate": {"max_drop": 0.2}})
    assert key != eval_run.eval_cache_key("g1", SERVING, chain, models, "w", other_gate)
    assert key != eval_run.eval_cache_key("g1", SERVING.model_copy(update={"version": 4}), chain, models, "w", settings)
    assert key != eval_run.eval_cache_key("g1", SERVING, chain, ChainModels(None, _prompt("answer", "x" * 64)), "w", settings)
    # a new calibration can change which judges gate: the next eval scores again instead of reusing a verdict
    calibrated = eval_run.eval_cache_key("g1", SERVING, chain, models, "w", settings, {"judge-a": "cal-1"})
    assert calibrated != key and calibrated != eval_run.eval_cache_key("g1", SERVING, chain, models, "w", settings,
                                                                       {"judge-a": "cal-2"})
    assert eval_run.cache_ref(key) == f"eval_cache__{key[:32]}"


# -- reuse --------------------------------------------------------------------------------------------------
def _baseline(run_id="base", **kw) -> Promotion:
    return Promotion(run_id=run_id, golden_set_id="g1", line="golden", table={"name": "chunks__hash_fake", "version": 3}, **kw)


def _record(run_id="run", status="ok", baseline_run_id="base") -> dict:
    summary = json.loads(RECORDED.read_text())["fresh"]
    outputs = {k: v for k, v in summary.items() if k not in ("run_id", "status", "lineage")}
    return {"run_id": run_id, "status": status, "lineage": summary["lineage"],
            "outputs": {**outputs, "baseline_run_id": baseline_run_id, "prefect_flow_run_id": "f"}}


@pytest.mark.parametrize("record, baseline, ok", [
    (None, _baseline(), False),
    (_record(status="failed"), _baseline(), False),
    (_record(status="gate_failed"), _baseline(), False),
    (_record(status="partial"), _baseline(), True),  # gated against the current baseline
    (_record(), _baseline("newer"), False),  # the baseline moved since: its verdict no longer holds
    (_record(), _baseline("run"), True),  # it is the baseline itself
    (_record(baseline_run_id=None), None, True),  # no baseline then, none now
    (_record(baseline_run_id=None), _baseline(), False),
])
def test_a_stored_run_is_reused_only_against_the_same_baseline(record, baseline, ok):
    assert eval_run.reusable(record, baseline) is ok


def test_a_reused_run_that_is_the_baseline_says_so_instead_of_its_first_verdict():
    reuse = eval_run.reuse_of(_record(), _baseline("run"), "golden", "nightly")
    assert reuse.promote is False and reuse.summary.cached is True and reuse.summary.promoted is False
    assert reuse.summary.promotion["reason"] == "reused run run is already the baseline of line golden"
    assert reuse.summary.promotion["mode"] == "experiment", "the rest of its first promotion is kept"
    first = _record()["outputs"]["gate"]
    assert reuse.summary.gate["warnings"] == [f"verdict of the reused run when it ran ({first['status']})"] + first["warnings"]


@pytest.mark.parametrize("mode, promote", [("nightly", True), (None, False)])
def test_a_reused_run_not_yet_the_baseline_is_promoted_only_when_asked(mode, promote):
    reuse = eval_run.reuse_of(_record(), _baseline(), "golden", mode)
    assert reuse.promote is promote
    dumped = reuse.summary.model_dump(mode="json", exclude_unset=True)
    record = _record()
    assert dumped == {"run_id": "run", "status": "ok", "lineage": record["lineage"], **record["outputs"], "cached": True}


def test_find_reuse_reads_the_cache_ref_and_the_run(lake):
    record = _record()
    lake.write_run({**record, "flow": "eval", "started_at": None, "ended_at": None})
    assert eval_run.find_reuse(lake, "k" * 64, _baseline(), "golden", None) is None, "no cache ref yet"
    lake.write_ref(eval_run.cache_ref("k" * 64), {"run_id": "run"})
    assert eval_run.find_reuse(lake, "k" * 64, _baseline(), "golden", None).summary.run_id == "run"
    assert eval_run.find_reuse(lake, "k" * 64, _baseline("newer"), "golden", None) is None


# -- scoring ------------------------------------------------------------------------------------------------
def test_batches_keep_order():
    items = [_item(f"q{i}") for i in range(5)]
    assert [ids for ids, _ in eval_run.batches(items, 2)] == [["q0", "q1"], ["q2", "q3"], ["q4"]]
    assert next(eval_run.batches(items, 2))[1] == ["q0?", "q1?"]


def test_an_earlier_steps_trace_goes_first():
    results = [_result("q1"), _result("q2")]
    eval_run.prepend_traces(results, [{"step": "rewrite", "qa_id": "q1"}, {"step": "rewrite", "qa_id": "q2"}])
    assert [t["step"] for t in results[1].traces] == ["rewrite", "retrieve"]


def test_stale_references_leave_that_level_out_and_a_failed_retrieval_scores_nothing():
    items = [_item("q1"), _item("q2", chunks=("gone",)), _item("q3")]
    results = [_result("q1"), _result("q2", hits=(("c2", "d1", 0.8),)), _result("q3", hits=(), retrieval_failed=True)]
    stale = {"q2": ["gone"]}
    scores = eval_run.score_retrieval(items, results, stale, EvalConfig(k=1, metric_ks=[1]))
    assert scores.per_item["q1"]["hit@1"] == 1.0 and scores.per_item["q1"]["chunk_hit@1"] == 1.0
    assert "chunk_hit@1" not in scores.per_item["q2"] and scores.per_item["q2"]["hit@1"] == 1.0
    assert scores.per_item["q3"] == {} and scores.items[1]["reference_chunk_ids"] == []
    assert scores.doc_rank == {"q1": ["d1"], "q2": ["d1"], "q3": []}
    assert eval_run.stale_warning(stale, 3, SERVING).startswith("1 of 3 items reference chunks or documents no longer "
                                                                "in chunks__hash_fake v3")
    assert eval_run.stale_warning({}, 3, SERVING) is None


def test_the_judge_scores_each_item_on_its_retrieved_contexts():
    class Scorer:
        def score(self, item, ids, contexts, answer, refused):
            return (item["qa_id"], ids, contexts, answer, refused)

    results = [_result("q1", answer="twelve", refused=False)]
    assert eval_run.judge_items(Scorer(), [_item("q1")], results) == [("q1", ["c1"], ["text of c1"], "twelve", False)]


def test_rows_merge_metrics_and_fail_an_item_on_any_error():
    items = [_item("q1"), _item("q2"), _item("q3", chunks=(), docs=(), qa_type="unanswerable")]
    results = [_result("q1", answer="twelve docks", refused=False, grounded=True),
               _result("q2", error="answer: HTTP 500"),
               _result("q3", answer="I don't know.", refused=True)]
    judged = [SimpleNamespace(metrics={"faithfulness": 1.0}, failed={}),
              SimpleNamespace(metrics={}, failed={}),
              SimpleNamespace(metrics={}, failed={"factual_correctness": "invalid JSON"})]
    scores = eval_run.score_retrieval(items, results, {}, EvalConfig(k=1, metric_ks=[1]))
    scored = eval_run.item_rows(items, results, judged, scores, {"q2": ["c9"]})
    q1, q2, q3 = scored.rows
    assert q1["status"] == "ok" and q1["error"] is None and q1["metrics"]["faithfulness"] == 1.0
    assert q1["metrics"]["grounded"] == 1.0 and q1["metrics"]["hit@1"] == 1.0 and q1["retrieval_scores"] == [0.9]
    assert q2["status"] == "failed" and q2["error"] == "answer: HTTP 500" and q2["stale_references"] == ["c9"]
    assert q3["status"] == "failed" and q3["error"] == "factual_correctness: invalid JSON"
    assert q3["failed_metrics"] == ["factual_correctness"] and q3["metrics"]["refusal_recall"] == 1.0
    assert [t["qa_id"] for t in scored.traces] == ["q1", "q2", "q3"]


def test_aggregates_overall_and_per_question_type():
    rows = [_row("a", {"hit@1": 1.0}), _row("b", {"hit@1": 0.0}), _row("c", {"hit@1": 1.0, "rouge_l": 0.5}, qa_type="abstract")]
    agg = eval_run.aggregate_rows(rows, EvalConfig(bootstrap_resamples=50))
    assert agg.metrics == {"hit@1": pytest.approx(2 / 3, abs=1e-6), "rouge_l": 0.5} and agg.n == {"hit@1": 3, "rouge_l": 1}
    assert list(agg.by_type) == ["abstract", "single_hop"]
    assert agg.by_type["single_hop"] == {"n": 2, "metrics": {"hit@1": 0.5}, "ci": {"hit@1": agg.by_type["single_hop"]["ci"]["hit@1"]}}
    assert agg.by_type["abstract"]["ci"]["rouge_l"] == [0.5, 0.5]


def test_results_and_prompts_are_written_to_the_lake(lake):
    scored = eval_run.ItemRows(
        [{"qa_id": "q1", "qa_type": "single_hop", "question": "q?", "status": "ok", "error": None, "retrieved_chunk_ids": ["c1"],
          "retrieved_doc_ids": ["d1"], "retrieval_scores": [0.9], "answer": None, "refused": None, "grounded": None,
          "degenerate": None, "relevance": None, "metrics": {"hit@1": 1.0}, "failed_metrics": [], "stale_references": []}],
        [{"qa_id": "q1", "step": "retrieve", "input": "q?", "output": "c1", "latency_ms": 1.0}])
    paths = eval_run.write_results(lake, "run-1", scored)
    assert set(paths) == {"items", "traces"}
    assert lake.read_eval_items("run-1").to_pylist()[0]["metrics"] == [("hit@1", 1.0)]
    eval_run.record_prompts(lake, ChainModels(None, _prompt("answer")))
    assert lake.read_ref("prompts") == {"answer": "h" * 64}


# -- lineage --------------------------------------------------------------------------------------------------
def test_lineage_says_what_the_table_was_built_from_then_what_the_eval_used(fake_embedder):
    built_from = {"snapshot_id": "s1", "chunker_hash": "ch", "embedder": "hash-fake", "git_commit": "not copied"}
    models = ChainModels(None, _prompt("answer"), llm=ScriptedLLM(model_id="m@1"), judge=_Judge())
    chain = {"retrieval": "vector", "k": 3}
    lineage = eval_run.run_lineage(built_from, GoldenChoice("g1", None), SERVING, "candidate", models, fake_embedder, chain, False)
    assert list(lineage)[:3] == ["snapshot_id", "chunker_hash", "embedder"] and "git_commit" not in lineage
    assert lineage["golden_line"] is None and lineage["table"] == {"name": "chunks__hash_fake", "version": 3}
    assert lineage["index_role"] == "candidate" and lineage["index_run_id"] == "index-run"
    assert lineage["prompts"] == {"answer": "h" * 64} and lineage["chain_hash"] == canonical_hash(chain)
    assert lineage["models"] == {"embedder": "hash-fake", "embedder_weights_sha256": fake_embedder.weights_sha256,
                                 "llm": "m@1", "judge": "judge@1"}
    assert lineage["judge"] == "judge@1" and lineage["retrieval_only"] is False


def test_the_index_lineage_is_read_from_its_run(lake):
    lake.write_run({"run_id": "index-run", "flow": "index", "status": "ok", "started_at": None, "ended_at": None,
                    "lineage": {"snapshot_id": "s1"}, "outputs": {}})
    assert eval_run.index_lineage(lake, SERVING) == {"snapshot_id": "s1"}
    assert eval_run.index_lineage(lake, SERVING.model_copy(update={"run_id": None})) == {}


# -- the gate ---------------------------------------------------------------------------------------------------
CHAIN = {"retrieval": "vector", "k": 3}
GATE = GateConfig(min_items=1)
ROWS = [_row(f"q{i}", {"hit@1": 1.0}) for i in range(4)]


def _assess(base: BaselineRun, rows=ROWS, chain=CHAIN, gate=GATE):
    return eval_run.assess_gate(base, rows, [], {"hit@1": 1.0}, chain, "golden", EvalConfig(bootstrap_resamples=50), gate, 0.0)


def test_without_a_baseline_the_gate_says_so_and_nothing_is_compared():
    assessment = _assess(BaselineRun(None, [], False, None))
    assert assessment.gate["status"] == "no_baseline" and assessment.deltas is None
    assert assessment.baseline_run_id is None and assessment.baseline_golden_set_id is None
    assert "no baseline on golden-set line golden yet" in assessment.gate["warnings"][0]
    assert assessment.budgets["items"] == 4 and assessment.budgets["tokens"] == 0


def test_a_baseline_of_another_chain_is_compared_with_its_differences_named_first():
    base = BaselineRun(_baseline(chain={"retrieval": "fts", "k": 3}, chain_hash="other"), ROWS, True, None)
    assessment = _assess(base)
    assert assessment.gate["status"] == "passed" and assessment.deltas["hit@1"]["n"] == 4
    assert assessment.baseline_run_id == "base" and assessment.baseline_golden_set_id == "g1"
    assert assessment.gate["warnings"][0] == ("the baseline ran another chain, compared on what both measured: "
                                              "retrieval: fts -> vector")
    same = _assess(BaselineRun(_baseline(chain=CHAIN, chain_hash=canonical_hash(CHAIN)), ROWS, True, None))
    assert not any("another chain" in w for w in same.gate["warnings"])


def test_a_baseline_sharing_too_few_questions_is_not_compared():
    base = BaselineRun(_baseline(), [_row("other", {"hit@1": 1.0})], True, None)
    assessment = _assess(base)
    assert assessment.gate["status"] == "no_baseline" and assessment.baseline_run_id is None
    assert "shares 0 of 4 questions" in assessment.gate["warnings"][0]


def test_a_baseline_without_stored_items_is_not_compared(lake):
    base = eval_run.load_baseline(lake, _baseline())
    assert base.has_items is False and base.rows == [] and base.budgets is None
    assert "has no stored items" in _assess(base).gate["warnings"][0]
    assert eval_run.load_baseline(lake, None) == BaselineRun(None, [], False, None)


def test_the_baselines_budgets_bound_the_candidates():
    traces = [{"qa_id": r["qa_id"], "latency_ms": 1.0, "prompt_tokens": 300, "completion_tokens": 0} for r in ROWS]
    base = BaselineRun(_baseline(chain=CHAIN, chain_hash=canonical_hash(CHAIN)), ROWS, True, {"tokens_per_item": 100.0})
    assessment = eval_run.assess_gate(base, ROWS, traces, {"hit@1": 1.0}, CHAIN, "golden",
                                      EvalConfig(bootstrap_resamples=50), GATE, 0.0)
    assert assessment.gate["status"] == "failed" and "tokens per item 300.0 is 3.00x" in assessment.gate["reasons"][0]


# -- summary and promotion ----------------------------------------------------------------------------------------
def _summary(verdict="passed", role="serving") -> EvalSummary:
    rows = [_row("q1", {"hit@1": 1.0}, answer="twelve", refused=False, grounded=False, degenerate="loop",
                 failed_metrics=["factual_correctness"], status="failed", error="factual_correctness: JudgeError"),
            _row("q2", {"hit@1": 0.0}, answer="I don't know.", refused=True),
            _row("q3", {"hit@1": 1.0}, qa_type="abstract")]
    assessment = eval_run.GateAssessment({"status": verdict, "reasons": [], "warnings": []}, None, {"items": 3},
                                         None, None)
    return eval_run.summarize(
        "run-1", {"table": {"name": "chunks__hash_fake", "version": 3}, "chain_hash": "c", "index_role": role},
        "/lake", GoldenChoice("g1", "golden"), eval_run.Aggregates({"hit@1": 0.667}, {"hit@1": [0.0, 1.0]}, {"hit@1": 3}, {}),
        eval_run.ItemRows(rows, []), {"q1": ["c9"]}, assessment, SERVING, role, {"items": "i", "traces": "t"},
        {"retrieve": 0.1}, "block")


def test_the_summary_counts_items_answers_and_failed_judgments():
    summary = _summary()
    assert summary.status == "partial", "an item failed, the gate passed"
    assert summary.items == {"total": 3, "failed": 1, "by_type": {"single_hop": 2, "abstract": 1}, "by_review": {},
                             "errors": {"factual_correctness: JudgeError": 1}}
    assert summary.answers == {"total": 2, "refused": 1, "ungrounded": 1, "degenerate": 1, "degenerate_by_reason": {"loop": 1}}
    assert summary.failed_judgments == {"factual_correctness": 1}
    assert summary.stale_references == {"items": 1, "references": 1, "qa_ids": ["q1"]}
    assert summary.index == {"role": "serving", "table": "chunks__hash_fake", "version": 3}
    assert summary.promotion is None and "cached" not in summary.model_dump(exclude_unset=True)
    assert set(summary.outputs()) == set(summary.model_dump(exclude_unset=True)) - {"run_id", "status", "lineage"}


@pytest.mark.parametrize("verdict, status", [("failed", "gate_failed"), ("inconclusive", "gate_inconclusive"),
                                             ("no_baseline", "partial")])
def test_the_status_follows_the_gate(verdict, status):
    assert _summary(verdict).status == status


def test_an_experiment_is_never_promoted_and_writes_nothing(lake):
    plan = eval_run.plan_promotion(_summary(), "golden", None, "block", "serving")
    assert plan.record is None and plan.outcome["mode"] == "experiment" and plan.outcome["promoted"] is False
    outcome = eval_run.apply_promotion(Refs(lake), plan)
    assert outcome == plan.outcome and Refs(lake).baseline("golden") is None
    level, message = eval_run.promotion_log("run-1", outcome)
    assert level == logging.WARNING and message.startswith("not promoted: experiment")


def test_a_passed_nightly_becomes_the_baseline_and_a_candidate_index_is_served(lake):
    summary = _summary(role="candidate")
    plan = eval_run.plan_promotion(summary, "golden", "nightly", "block", "serving")
    assert plan.candidate_evaluated, "the role the run was scored on, from its lineage"
    assert plan.record.run_id == "run-1" and plan.record.metrics == {"hit@1": 0.667} and plan.record.mode == "nightly"
    outcome = eval_run.apply_promotion(Refs(lake), plan)
    assert outcome["promoted"] and outcome["serving_moved"]["to"] == {"name": "chunks__hash_fake", "version": 3}
    assert Refs(lake).baseline("golden").run_id == "run-1" and Refs(lake).serving().version == 3
    level, message = eval_run.promotion_log("run-1", outcome)
    assert level == logging.INFO and message.startswith("promoted run run-1 as the baseline of line golden (gate passed")
    assert "serving moved to" in message
    assert summary.with_promotion(outcome).promoted is True and summary.promotion == outcome


def test_a_run_on_a_bakeoff_table_is_never_promoted(lake):
    plan = eval_run.plan_promotion(_summary(role="bakeoff"), "golden", "explicit", "block", "serving")
    assert plan.record is None and not plan.outcome["promoted"] and "bake-off table" in plan.outcome["reason"]
    ref, role = eval_run.bakeoff_index({"table": "chunks__hash_fake__ckabc", "version": 2, "run_id": "i"}, "hash_fake")
    assert (ref.table, ref.version, role) == ("chunks__hash_fake__ckabc", 2, "bakeoff")
    with pytest.raises(ConfigError, match="not a bake-off table of embedder other"):
        eval_run.bakeoff_index({"table": "chunks__hash_fake__ckabc", "version": 2}, "other")
    with pytest.raises(ConfigError, match="not a bake-off table"):
        eval_run.bakeoff_index({"table": "chunks__hash_fake", "version": 2}, "hash_fake")


@pytest.mark.parametrize("status, gated, ok", [("gate_failed", True, True), ("gate_inconclusive", True, True),
                                               ("gate_failed", False, False), ("failed", True, False)])
def test_a_bakeoff_also_reuses_cells_whose_gate_failed(status, gated, ok):
    assert eval_run.reusable(_record(status=status), _baseline(), gated) is ok


@pytest.mark.parametrize("which", ["fresh", "reused"])
def test_the_summary_model_round_trips_a_summary_the_flow_returned(which):
    recorded = json.loads(RECORDED.read_text())[which]
    summary = EvalSummary.model_validate(recorded)
    dumped = summary.model_dump(mode="json", exclude_unset=True)
    assert dumped == recorded and list(dumped) == list(recorded)
    assert (summary.cached is True) is (which == "reused")


# -- progress: each item counted once -----------------------------------------------------------
def test_answer_reports_each_answer_call_once_failures_included():
    from ragloop.tasks import chain
    from ragloop.tasks.llm import LLMRequestError

    done = []
    prompt = SimpleNamespace(params={"max_tokens": 16}, render=lambda question, contexts: [{"role": "user", "content": question}])
    results = [_result("q1"), _result("q2"), _result("q3", retrieval_failed=True, error="retrieve: x"), _result("q4", refused=True)]
    llm = ScriptedLLM(["It has text of c1.", LLMRequestError("bad")])
    chain.answer(results, ["q1?", "q2?", "q3?", "q4?"], prompt, llm, EvalConfig(), on_done=lambda: done.append(1))
    assert len(done) == 2 == len(llm.requests), "the skipped items are counted by the caller, at the batch's end"
    assert results[1].error.startswith("answer: LLMRequestError")


def test_judge_items_reports_each_item_once():
    done = []
    scorer = SimpleNamespace(score=lambda item, ids, texts, answer, refused: {"qa_id": item["qa_id"]})
    judged = eval_run.judge_items(scorer, [_item("q1"), _item("q2")], [_result("q1"), _result("q2")],
                                  on_done=lambda: done.append(1))
    assert judged == [{"qa_id": "q1"}, {"qa_id": "q2"}] and len(done) == 2


def test_judge_metrics_choose_which_ragas_metrics_the_judge_scores():
    import numpy as np

    from ragloop.tasks.ragas_metrics import JUDGED, RagasScorer
    from ragloop.tasks.settings import ConfigError, load_settings
    from tests.flows.test_eval_flow import JudgeFake

    def encode(texts):
        return np.ones((len(texts), 4), dtype="float32")

    assert set(RagasScorer(encode, JudgeFake()).judged) == set(JUDGED)
    assert set(RagasScorer(encode, JudgeFake(), 512, ["faithfulness", "answer_relevancy"]).judged) == {"faithfulness", "answer_relevancy"}
    assert load_settings(overrides={"eval": {"judge_metrics": ["faithfulness"]}}).eval.judge_metrics == ["faithfulness"]
    with pytest.raises(ConfigError, match="eval.judge_metrics"):
        load_settings(overrides={"eval": {"judge_metrics": ["faithfullness"]}})
