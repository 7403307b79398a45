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


# -- index axes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, field", [
    ("name: x\nmatrix: {chunking: [{strategy: none, max_token: 3}]}\n", "matrix.chunking: entry 0: max_token: Extra inputs"),
    ("name: x\nmatrix: {chunking: [{strategy: recursive, max_tokens: 8, overlap_tokens: 8}]}\n",
     "matrix.chunking: entry 0: .*overlap_tokens must be smaller"),
    ("name: x\nmatrix: {embedding: [{backend: tensorflow}]}\n", "matrix.embedding: entry 0: backend: Input should be"),
    ("name: x\nmatrix: {embedding: [{label: 'a b', backend: torch}]}\n", "matrix.embedding: entry 0: label: letters"),
    ("name: x\nmatrix: {embedding: [torch]}\n", "matrix.embedding.0: Input should be a valid dictionary"),
])
def test_bad_index_axis_entry_names_the_entry_and_field(tmp_path, text, field):
    with pytest.raises(ConfigError, match=f"bakeoff .*b.yaml: {field}"):
        bakeoff.load_bakeoff(_write(tmp_path, text))


def test_index_axes_lead_the_cell_names_and_set_their_sections():
    spec = bakeoff.BakeoffSpec.model_validate({"name": "x", "matrix": {
        "embedding": [{"label": "int8"}, {"backend": "torch"}],
        "chunking": [{"strategy": "none"}, {"strategy": "recursive", "max_tokens": 128, "overlap_tokens": 16}],
        "retrieval": ["vector"], "k": [10]}})
    cells = bakeoff.expand_cells(spec)
    assert [c["name"] for c in cells] == ["int8-none-vector-k10", "int8-recursive-128-16-vector-k10",
                                          "torch-none-vector-k10", "torch-recursive-128-16-vector-k10"]
    assert cells[0]["embedding"] == {} and cells[2]["embedding"] == {"backend": "torch"}, "labels are not settings"
    assert bakeoff.cell_overrides(cells[3]) == {
        "eval": {"retrieval": "vector", "k": 10, "rerank": "none"}, "embedding": {"backend": "torch"},
        "chunking": {"strategy": "recursive", "max_tokens": 128, "overlap_tokens": 16}}
    groups = bakeoff.table_groups(cells)
    assert [g["cells"] for g in groups.values()] == [[c["name"]] for c in cells], "four pairs, four tables"
    one_axis = bakeoff.expand_cells(bakeoff.BakeoffSpec.model_validate(
        {"name": "x", "matrix": {"chunking": [{"strategy": "none"}], "retrieval": ["vector", "fts"], "k": [3]}}))
    assert [c["name"] for c in one_axis] == ["vector-k3", "fts-k3"], "an axis of one entry adds no name part"
    assert len(bakeoff.table_groups(one_axis)) == 1


def _ref(**kw):
    from ragloop.tasks.promotion import ServingRef

    return ServingRef(**{"table": "chunks__m", "version": 3, "run_id": "idx", "chunker_hash": "c" * 64, **kw})


@pytest.mark.parametrize("serving, slug, chunker, expected", [
    (_ref(), "m", "c" * 64, {"role": "serving", "table": "chunks__m"}),
    (_ref(chunker_hash=None), "m", "d" * 64, {"role": "serving", "table": "chunks__m"}),  # an old ref: the table decides
    (_ref(), "m", "d" * 64, {"role": "bakeoff", "table": "chunks__m__ckdddddddddddd"}),  # another chunker
    (_ref(), "m2", "c" * 64, {"role": "bakeoff", "table": "chunks__m2__ckcccccccccccc"}),  # another embedder
])
def test_a_pair_reads_the_served_table_only_when_it_is_the_served_pair(serving, slug, chunker, expected):
    assert bakeoff.plan_table(serving, slug, chunker) == expected


def test_a_lake_without_an_index_is_refused():
    with pytest.raises(ConfigError, match="no served index yet"):
        bakeoff.plan_table(None, "m", "c")


def test_cells_without_a_chunking_entry_take_the_served_chunking_when_the_config_differs():
    from ragloop.tasks.settings import ChunkingConfig

    cells = [{"name": "a", "chunking": None}, {"name": "b", "chunking": {"strategy": "recursive"}}]
    served = {"strategy": "none", "max_tokens": None, "overlap_tokens": 32}
    pinned = bakeoff.pin_chunking(cells, served, ChunkingConfig())  # the config says markdown
    assert pinned[0]["chunking"] == served and pinned[1]["chunking"] == {"strategy": "recursive"}
    assert bakeoff.pin_chunking(cells, served, ChunkingConfig(strategy="none"))[0]["chunking"] is None
    assert bakeoff.pin_chunking(cells, None, ChunkingConfig())[0]["chunking"] is None


@pytest.mark.parametrize("n, refs, level, scored", [
    ({"ndcg@10": 20}, 0, "none", 0),  # a BEIR import: documents only
    ({"ndcg@10": 20, "chunk_ndcg@10": 12, "chunk_hit@1": 12}, 12, "matched", 12),
    ({"ndcg@10": 20, "chunk_ndcg@10": 5}, 12, "partial", 5),
    ({"ndcg@10": 20}, 12, "unmatchable", 0),  # another chunker: no reference chunk is in the table
])
def test_chunk_evidence_says_what_the_cell_could_score(n, refs, level, scored):
    evidence = bakeoff.chunk_evidence({"n": n}, refs, "chunks__m__ckabc")
    assert (evidence["chunk_level"], evidence["scored"]) == (level, scored)
    assert (evidence["note"] is None) == (level in ("none", "matched"))
    if level == "unmatchable":
        assert "12 of 12 items" in evidence["note"] and "chunks__m__ckabc" in evidence["note"]
        assert bakeoff.comparability("chunk_ndcg@10", {"ndcg@10": 0.5}, evidence)[0] is False
        assert bakeoff.comparability("ndcg@10", {"ndcg@10": 0.5}, evidence) == (True, None), "documents still compare"
    if level == "partial":
        assert bakeoff.comparability("chunk_ndcg@10", {"chunk_ndcg@10": 0.9}, evidence)[0] is False, "other questions"


def test_a_cell_without_the_metric_is_not_compared_and_not_chosen():
    evidence = {"chunk_level": "none", "note": None}
    ok, why = bakeoff.comparability("ndcg@10", {"ndcg@5": 0.7}, evidence)
    assert not ok and "not measured" in why
    cells = [{"name": "a", "status": "ok", "metrics": {"m": 0.9}, "comparable": False},
             {"name": "b", "status": "gate_failed", "metrics": {"m": 0.5}, "comparable": True}]
    assert bakeoff.choose_cell(cells, "m") == "b", "a gate verdict against the baseline is not a failure"


def test_markdown_lists_the_indexes_and_the_notes_when_there_is_an_index_axis():
    summary = {**SUMMARY, "tables": [
        {"table": "chunks__m", "role": "serving", "chunks": 9711, "bytes": 12_500_000, "build_s": 180.0,
         "chunking": {"strategy": "markdown"}, "cells": ["vector-k10"]},
        {"table": "chunks__m__ckabc", "role": "bakeoff", "chunks": 20000, "bytes": 25_000_000, "build_s": 360.5,
         "chunking": {"strategy": "recursive", "max_tokens": 128}, "cells": ["hybrid-k10"]}],
        "cells": [{**SUMMARY["cells"][1], "note": "chunk_ndcg@10: chunk-level evidence unmatchable: ..."}]}
    text = bakeoff.bakeoff_markdown(summary)
    assert "| chunks__m__ckabc | bakeoff | configured | strategy=recursive, max_tokens=128 | 20000 | 25.0 | 360.5 | hybrid-k10 |" in text
    assert "- `hybrid-k10`: chunk_ndcg@10: chunk-level evidence unmatchable" in text
    page = bakeoff.bakeoff_html(summary, "pareto.png")
    assert "<h2>Indexes</h2>" in page and "chunk-level evidence unmatchable" in page


# -- --promote -------------------------------------------------------------------------------------------------
def _summary(status="ok", verdict="passed", reasons=()):
    return {"run_id": "r9", "status": status, "baseline_run_id": "r1",
            "gate": {"status": verdict, "reasons": list(reasons)}}


@pytest.mark.parametrize("summary, error, ok, status, reason", [
    (_summary(), None, True, "ok", "gate passed on line test against its baseline r1"),
    (_summary(verdict="no_baseline"), None, True, "ok", "no baseline on line test yet"),
    (_summary("gate_inconclusive", "inconclusive", ["ndcg@10: 20 items < 30"]), None, False, "gate_inconclusive",
     "gate inconclusive on line test (underpowered: nothing promoted): ndcg@10: 20 items < 30"),
    (_summary("gate_failed", "failed", ["ndcg@10 0.41 below floor 0.5"]), None, False, "gate_failed",
     "gate failed on line test: ndcg@10 0.41 below floor 0.5"),
    (_summary("failed", "passed"), None, False, "failed", "every item"),
    (None, "RuntimeError: boom", False, "failed", "failed: RuntimeError: boom"),
])
def test_promote_verdict_follows_the_gate(summary, error, ok, status, reason):
    verdict = bakeoff.promote_verdict(summary, error, "test")
    assert (verdict["ok"], verdict["status"]) == (ok, status) and reason in verdict["reason"]


def test_a_refusal_names_the_first_two_reasons_and_counts_the_rest():
    verdict = bakeoff.promote_verdict(_summary("gate_failed", "failed", ["a dropped", "b dropped", "c", "d"]), None, "t")
    assert verdict["reason"] == "gate failed on line t: a dropped; b dropped (and 2 more in promote.gate.reasons)"
    assert verdict["gate"]["reasons"] == ["a dropped", "b dropped", "c", "d"]


def test_only_a_cell_on_the_served_table_moves_the_baseline():
    from ragloop.tasks.promotion import Promotion

    base = Promotion(run_id="r1", golden_set_id="g", line="test", table={"name": "chunks__m", "version": 3})
    assert bakeoff.moves_baseline("serving", base, "r9") and bakeoff.moves_baseline("serving", None, "r9")
    assert not bakeoff.moves_baseline("serving", base, "r1"), "already the baseline"
    assert not bakeoff.moves_baseline("bakeoff", base, "r9"), "a bake-off table is never served"
    assert "ragloop index" in bakeoff.next_steps("bakeoff", "c") and bakeoff.next_steps("serving", "c") is None


CONFIG = """\
# ragloop.yaml
chunking:
  strategy: markdown            # markdown | recursive | none
  max_tokens: null              # null = the embedder's limit

eval:                           # the chain under test
  retrieval: hybrid
  k: 5                          # chunks retrieved
  metric_ks: [1, 3, 5, 10]
"""


def test_edited_config_changes_only_the_cells_keys_and_keeps_comments_and_layout():
    after = bakeoff.edited_config(CONFIG, {"eval": {"retrieval": "fts", "k": 100, "rerank": "none"},
                                           "chunking": {"max_tokens": 128}, "embedding": {"backend": "torch"}})
    assert after == CONFIG.replace("retrieval: hybrid", "retrieval: fts").replace(
        "  k: 5                          # chunks retrieved\n",
        "  k: 100                        # chunks retrieved\n").replace(
        "  max_tokens: null              #", "  max_tokens: 128               #").replace(
        "  metric_ks: [1, 3, 5, 10]\n", "  metric_ks: [1, 3, 5, 10]\n  rerank: none\n") + "embedding:\n  backend: torch\n"
    assert bakeoff.edited_config(CONFIG, {}) == CONFIG, "a round trip changes nothing"
    diff = bakeoff.config_diff(CONFIG, after, "ragloop.yaml")
    assert diff.startswith("--- a/ragloop.yaml\n+++ b/ragloop.yaml\n") and "\n-  retrieval: hybrid\n" in diff
    assert "\n+  retrieval: fts\n" in diff and diff.count("\n+") == 7  # retrieval, k, max_tokens, rerank, embedding: backend
    assert bakeoff.edited_config("", {"eval": {"k": 3}}) == "eval:\n  k: 3\n"
    with pytest.raises(ConfigError, match="eval in the config file is not a mapping"):
        bakeoff.edited_config("eval: 3\n", {"eval": {"k": 3}})
    with pytest.raises(ConfigError, match="not YAML"):
        bakeoff.edited_config("eval: [\n", {"eval": {"k": 3}})


def test_env_vars_that_would_override_what_promote_writes_are_found():
    overrides = {"eval": {"retrieval": "fts", "k": 3}, "chunking": {"max_tokens": 128}}
    environ = {"RAGLOOP_EVAL__K": "5", "RAGLOOP_CHUNKING": "{}", "RAGLOOP_LLM__MODEL": "x", "HOME": "/"}
    assert bakeoff.env_conflicts(overrides, environ) == ["RAGLOOP_EVAL__K", "RAGLOOP_CHUNKING"]


def test_check_promote_fails_before_any_work(tmp_path):
    spec = bakeoff.BakeoffSpec.model_validate({"name": "x", "matrix": {"retrieval": ["fts"], "k": [3]}})
    assert bakeoff.check_promote(spec, None, None, {}) is None
    assert bakeoff.check_promote(spec, "fts-k3", str(_write(tmp_path, "eval: {k: 5}\n")), {})["name"] == "fts-k3"
    with pytest.raises(ConfigError, match="no such cell"):
        bakeoff.check_promote(spec, "vector-k3", None, {})
    with pytest.raises(ConfigError, match="RAGLOOP_EVAL__K would override"):
        bakeoff.check_promote(spec, "fts-k3", None, {"RAGLOOP_EVAL__K": "5"})
    with pytest.raises(ConfigError, match="not YAML"):
        bakeoff.check_promote(spec, "fts-k3", str(_write(tmp_path, "eval: [\n")), {})


def test_write_text_atomic_replaces_whole_and_keeps_the_mode(tmp_path):
    path = tmp_path / "ragloop.yaml"
    path.write_text("a: 1\n")
    path.chmod(0o640)
    bakeoff.write_text_atomic(path, "a: 2\n")
    assert path.read_text() == "a: 2\n" and oct(path.stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in tmp_path.iterdir()] == ["ragloop.yaml"], "no temp file left"


def test_label_offsets_move_overlapping_labels_apart():
    points = [(0, 0, 50), (10, 2, 50), (200, 1, 50), (20, 4, 50)]  # three crowd one spot, one stands apart
    offsets = bakeoff.label_offsets(points, height=10, step=11)
    boxes = [(x, y + off, w) for (x, y, w), off in zip(points, offsets)]
    for i, (x, y, w) in enumerate(boxes):
        for (x2, y2, w2) in boxes[i + 1:]:
            assert not (x < x2 + w2 and x2 < x + w and y < y2 + 10 and y2 < y + 10), (boxes, offsets)
    assert offsets[2] == 3.0, "a label with room stays next to its point"


def test_pareto_plot_draws_a_cost_panel_only_when_costs_differ():
    varied = {**SUMMARY, "cells": [{**c, "cost": i * 0.5} for i, c in enumerate(SUMMARY["cells"])]}
    flat, both = bakeoff.pareto_plot(SUMMARY), bakeoff.pareto_plot(varied)
    assert flat.startswith(b"\x89PNG") and both.startswith(b"\x89PNG") and both != flat


def test_the_chunking_example_crosses_two_chunkers_with_the_retrieval_cells():
    spec = bakeoff.load_bakeoff(REPO / "examples" / "bakeoff" / "scifact-chunking.yaml")
    cells = bakeoff.expand_cells(spec)
    assert len(cells) == 10 and cells[0]["name"] == "md254-vector-k100" and cells[-1]["name"] == "rec128-hybrid-k100-lin0.7"
    assert [len(g["cells"]) for g in bakeoff.table_groups(cells).values()] == [5, 5]
    assert cells[-1]["chunking"] == {"strategy": "recursive", "max_tokens": 128, "overlap_tokens": 32}


@pytest.mark.parametrize("metric, ks, error", [
    ("ndcg@10", [10, 100], None),
    ("ndcg@100", [10, 100], None),  # each cell's own k is a cutoff
    ("semantic_similarity", [5], None),
    ("nosuchmetric@5", [5], "unknown metric 'nosuchmetric@5'"),
    ("ndcg@10", [5], r"no cell computes ndcg@10 .*1, 3, 5\): choose ndcg@5"),  # the defaults' trap: k 5
    ("ndcg@7", [10], "no cell computes ndcg@7"),  # not in metric_ks, not a k
])
def test_a_metric_no_cell_reports_fails_before_any_work(metric, ks, error):
    spec = bakeoff.BakeoffSpec.model_validate({"name": "x", "metric": metric, "matrix": {"k": ks}})
    if error is None:
        bakeoff.check_metric(spec, [1, 3, 5, 10])
    else:
        with pytest.raises(ConfigError, match=error):
            bakeoff.check_metric(spec, [1, 3, 5, 10])
