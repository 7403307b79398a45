"""Bake-off decisions: the file, the matrix, verdicts, costs, the Pareto front and the Markdown table."""

from __future__ import annotations

import pytest

from ragloop.tasks import bakeoff
from ragloop.tasks.settings import ConfigError
from tests.conftest import REPO


def _write(tmp_path, text: str):
    path = tmp_path / "b.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, field", [
    ("name: x\nmatrix: {retrieval: [vector, bm25]}\n", "matrix.retrieval.1"),
    ("name: x\nmatrix: {k: [0]}\n", "matrix.k.0"),
    ("name: x\nmatrix: {fusion: [{kind: rrf, weight: 2}]}\n", "matrix.fusion.0.weight"),
    ("name: x\nmatrics: {}\n", "matrics"),
    ("matrix: {}\n", "name"),
    ("name: x\nconcurrency: 0\n", "concurrency"),
    ("name: x\nchoose_on: a\n", "choose_on and score_on go together"),
    ("name: x\nbaseline: nope\n", "baseline: no cell named 'nope'"),
])
def test_bad_bakeoff_file_names_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError, match=f"bakeoff .*b.yaml: .*{field}") as info:
        bakeoff.load_bakeoff(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_unreadable_or_non_mapping_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        bakeoff.load_bakeoff(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        bakeoff.load_bakeoff(_write(tmp_path, "- a\n"))


def test_example_file_expands_fusion_over_hybrid_cells_only():
    spec = bakeoff.load_bakeoff(REPO / "examples" / "bakeoff" / "scifact.yaml")
    cells = bakeoff.expand_cells(spec)
    names = [c["name"] for c in cells]
    assert names == ["vector-k10", "vector-k100", "fts-k10", "fts-k100",
                     "hybrid-k10-rrf60", "hybrid-k10-rrf10", "hybrid-k10-lin0.7",
                     "hybrid-k100-rrf60", "hybrid-k100-rrf10", "hybrid-k100-lin0.7"]
    assert cells[6]["eval"] == {"retrieval": "hybrid", "k": 10, "rerank": "none", "fusion": "linear", "fusion_weight": 0.7}
    assert cells[0]["eval"] == {"retrieval": "vector", "k": 10, "rerank": "none"} and cells[0]["llm"] is None
    assert spec.choose_on == "beir-scifact-train" and spec.score_on == "beir-scifact-test"


def test_answer_cells_cross_prompts_and_llms():
    spec = bakeoff.BakeoffSpec.model_validate({
        "name": "x", "retrieval_only": False,
        "matrix": {"retrieval": ["vector"], "k": [3], "answer_prompt": ["answer", "answer_short"],
                   "llm": [{"provider": "fake", "model": "a"}, {"provider": "fake", "model": "b"}]}})
    cells = bakeoff.expand_cells(spec)
    assert [c["name"] for c in cells] == ["vector-k3-answer-a", "vector-k3-answer-b",
                                          "vector-k3-answer_short-a", "vector-k3-answer_short-b"]
    assert bakeoff.cell_overrides(cells[1]) == {"eval": {"retrieval": "vector", "k": 3, "rerank": "none",
                                                         "answer_prompt": "answer"},
                                                "llm": {**cells[1]["llm"]}}
    assert cells[1]["llm"]["model"] == "b"


@pytest.mark.parametrize("points, front", [
    ([], []),
    ([{"name": "a", "q": 0.5, "c": 1.0}], ["a"]),
    # b dominates a (better and cheaper); c is dearer but better; d is dominated by c
    ([{"name": "a", "q": 0.5, "c": 2.0}, {"name": "b", "q": 0.6, "c": 1.0}, {"name": "c", "q": 0.8, "c": 5.0},
      {"name": "d", "q": 0.7, "c": 6.0}], ["b", "c"]),
    # equal points are both kept; same quality at higher cost is dominated
    ([{"name": "a", "q": 0.5, "c": 1.0}, {"name": "b", "q": 0.5, "c": 1.0}, {"name": "e", "q": 0.5, "c": 1.5}], ["a", "b"]),
    # a point without a value is left out
    ([{"name": "a", "q": None, "c": 0.0}, {"name": "b", "q": 0.1, "c": 3.0}], ["b"]),
])
def test_pareto_front_on_hand_made_points(points, front):
    assert bakeoff.pareto_front(points, "q", "c") == front


@pytest.mark.parametrize("name, ci, expected", [
    ("ndcg@10", [0.01, 0.05], "better"),
    ("ndcg@10", [-0.05, -0.01], "worse"),
    ("ndcg@10", [-0.01, 0.02], "same"),
    ("latency_ms", [0.01, 0.05], "worse"),  # lower is better
])
def test_verdict_follows_the_metric_direction(name, ci, expected, monkeypatch):
    monkeypatch.setattr(bakeoff, "higher_is_better", lambda m: m != "latency_ms")
    assert bakeoff.verdict(name, {"ci": ci}) == expected
    assert bakeoff.verdict(name, None) is None


def test_cost_uses_the_price_table_then_the_fallback(tmp_path):
    prices = bakeoff.load_prices(_write(tmp_path, "models:\n  m1: {in: 0.5, out: 1.5}\n  g.gguf: {in: 1, out: 1}\n"))
    assert bakeoff.cost(2000, 1000, "m1", prices, 9.0) == pytest.approx(2.5)
    assert bakeoff.cost(1000, 0, "g.gguf@sha256:abc", prices, 9.0) == pytest.approx(1.0)
    assert bakeoff.cost(1000, 1000, "other", prices, 0.25) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="models.m"):
        bakeoff.load_prices(_write(tmp_path, "models:\n  m: 3\n"))
    assert bakeoff.load_prices(None) == {}  # the test's cwd has no prices.yaml
    assert set(bakeoff.load_prices(REPO / "prices.yaml")) == {"SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_usage_sums_steps_per_item():
    traces = [{"qa_id": "a", "latency_ms": 10, "prompt_tokens": 5, "completion_tokens": 2},
              {"qa_id": "a", "latency_ms": 30, "prompt_tokens": None, "completion_tokens": None},
              {"qa_id": "b", "latency_ms": 20}]
    assert bakeoff.usage(traces) == {"latency_p50_ms": 30.0, "latency_p95_ms": 39.0, "tokens_in": 5, "tokens_out": 2}


def test_choose_cell_prefers_the_metric_then_latency():
    cells = [{"name": "a", "status": "ok", "metrics": {"m": 0.5}, "latency_p50_ms": 1.0},
             {"name": "b", "status": "ok", "metrics": {"m": 0.7}, "latency_p50_ms": 9.0},
             {"name": "c", "status": "ok", "metrics": {"m": 0.7}, "latency_p50_ms": 2.0},
             {"name": "d", "status": "failed"}]
    assert bakeoff.choose_cell(cells, "m") == "c"
    assert bakeoff.choose_cell(cells[3:], "m") is None
    assert bakeoff.bakeoff_status(cells) == "partial" and bakeoff.bakeoff_status(cells[:3]) == "ok"


SUMMARY = {
    "name": "demo", "status": "partial", "metric": "ndcg@10", "choose_on": "train", "golden_set_id": "g1",
    "file": "b.yaml", "reference": {"label": "cell vector-k10 (run r1)", "run_id": "r1"},
    "pareto": {"latency": ["vector-k10", "hybrid-k10"], "cost": ["hybrid-k10"]},
    "chosen": "hybrid-k10", "chosen_score": 0.71,
    "held_out": {"line": "test", "golden_set_id": "g2", "run_id": "r3", "value": 0.7012, "ci": [0.66, 0.74]},
    "cells": [
        {"name": "vector-k10", "status": "ok", "run_id": "r1", "cached": True, "metrics": {"ndcg@10": 0.65},
         "ci": {"ndcg@10": [0.6, 0.7]}, "deltas": {"ndcg@10": {"delta": 0.0, "ci": [0.0, 0.0], "verdict": "same"}},
         "latency_p50_ms": 3.25, "latency_p95_ms": 5.5, "tokens_in": 0, "tokens_out": 0, "cost": 0.0},
        {"name": "hybrid-k10", "status": "ok", "run_id": "r2", "metrics": {"ndcg@10": 0.71},
         "ci": {"ndcg@10": [0.66, 0.75]}, "deltas": {"ndcg@10": {"delta": 0.06, "ci": [0.02, 0.1], "verdict": "better"}},
         "latency_p50_ms": 7.0, "latency_p95_ms": 9.0, "tokens_in": 0, "tokens_out": 0, "cost": 0.0},
        {"name": "fts-k10", "status": "failed", "error": "RuntimeError: boom"},
    ],
}

MARKDOWN = """\
## Bake-off `demo`: partial

Cells scored on line `train` (golden set `g1`); metric `ndcg@10`; compared with cell vector-k10 (run r1).

| cell | ndcg@10 | 95% CI | Δ vs reference | Δ CI | verdict | p50 ms | p95 ms | tokens in/out | cost $ | Pareto | run |
|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|
| vector-k10 (reused) | 0.6500 | [0.6000, 0.7000] | +0.0000 | [+0.0000, +0.0000] | same | 3.2 | 5.5 | 0/0 | 0.000000 | latency | r1 |
| hybrid-k10 | 0.7100 | [0.6600, 0.7500] | +0.0600 | [+0.0200, +0.1000] | better | 7.0 | 9.0 | 0/0 | 0.000000 | cost, latency | r2 |
| fts-k10 | failed | | | | | | | | | | RuntimeError: boom |

**Chosen on `train`: `hybrid-k10`** (ndcg@10 0.7100).
Scored on `test` (held out, golden set `g2`): ndcg@10 0.7012 [0.6600, 0.7400], run r3.

_`ragloop bakeoff b.yaml`_
"""


def test_markdown_snapshot():
    assert bakeoff.bakeoff_markdown(SUMMARY) == MARKDOWN


def test_html_report_escapes_and_names_both_splits():
    page = bakeoff.bakeoff_html({**SUMMARY, "name": "<demo>"}, "pareto.png")
    assert "&lt;demo&gt;" in page and "<demo>" not in page
    assert "Chosen on line <b>train</b>" in page and "held-out line <b>test</b>" in page
    assert bakeoff.pareto_plot(SUMMARY).startswith(b"\x89PNG")
