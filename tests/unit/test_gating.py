"""The regression gate on synthetic score tables: A/A passes, a real drop fails at n=300 and is inconclusive
at n=8, the detectable drop shrinks as n grows, a missing comparison never reads as a pass."""

from __future__ import annotations

import numpy as np
import pytest

from ragloop.tasks.gating import (baseline_problem, check_gate, detectable_drop, items_needed, paired_deltas, power_note,
                          run_status, unpaired_metrics)
from ragloop.tasks.settings import GateConfig


def _rows(values, metric="ndcg@10"):
    return [{"qa_id": f"q{i}", "metrics": {metric: float(v)}} for i, v in enumerate(values)]


def _gate(base, cand, config=GateConfig(), failed=0):
    deltas = paired_deltas(_rows(base), _rows(cand), resamples=1000, confidence=0.95, seed=0)
    return check_gate({"ndcg@10": float(np.mean(cand))}, deltas, failed, len(cand), config), deltas


def _noisy(n, seed=1):
    return np.random.default_rng(seed).uniform(0.2, 1.0, n)


def _drop(base, size=0.05, sd=0.15, seed=3):
    """A real drop of `size` on average, item by item noisy as real metric deltas are."""
    return np.clip(base + np.random.default_rng(seed).normal(-size, sd, base.size), 0, 1)


@pytest.fixture
def base():
    return _noisy(300)


def test_a_a_passes(base):
    gate, deltas = _gate(base, base)
    assert gate["status"] == "passed" and gate["reasons"] == [] and gate["paired_items"] == 300
    assert deltas["ndcg@10"]["delta"] == 0 and deltas["ndcg@10"]["ci"] == [0, 0]
    assert gate["power"]["ndcg@10"]["detectable_drop"] == 0.0, "identical runs: any drop would show"


def test_a_real_drop_fails_at_n_300(base):
    gate, deltas = _gate(base, _drop(base))
    assert gate["status"] == "failed" and "ndcg@10 dropped" in gate["reasons"][0] and "n=300" in gate["reasons"][0]
    assert deltas["ndcg@10"]["delta"] == pytest.approx(-0.05, abs=0.02)


def test_the_same_drop_at_n_8_is_inconclusive_and_says_what_would_detect_it(base):
    small = base[:8]
    gate, deltas = _gate(small, _drop(base)[:8])
    assert deltas["ndcg@10"]["delta"] < 0
    assert gate["status"] == "inconclusive", gate
    assert "only 8 paired items (gate.min_items 30)" in gate["reasons"][0]
    power = gate["power"]["ndcg@10"]
    assert power["detectable_drop"] > GateConfig().max_drop, "8 items cannot see a 0.01 drop"
    assert power["items_needed"] > 300, "a 0.01 drop under SD ~0.15 needs hundreds of items"


def test_the_detectable_drop_shrinks_as_n_grows(base):
    drops = []
    for n in (8, 50, 300):
        gate, _ = _gate(base[:n], _drop(base)[:n])
        drops.append(gate["power"]["ndcg@10"]["detectable_drop"])
    assert drops[0] > drops[1] > drops[2] > 0
    assert drops[2] == pytest.approx(drops[1] * np.sqrt(50 / 300), rel=0.35), "~ 1/sqrt(n) at a similar SD"


def test_a_ci_straddling_minus_max_drop_is_inconclusive_not_passed(base):
    # n=300 but a noisy, slightly negative delta: the CI reaches below -max_drop without lying wholly below it.
    gate, deltas = _gate(base, _drop(base, size=0.008, sd=0.2, seed=5))
    low, high = deltas["ndcg@10"]["ci"]
    assert low < -0.01 < high
    assert gate["status"] == "inconclusive" and "reaches below -0.01" in gate["reasons"][0]


def test_a_clear_improvement_passes_even_with_a_wide_ci(base):
    better = np.clip(base + np.random.default_rng(4).normal(0.1, 0.2, base.size), 0, 1)
    gate, deltas = _gate(base, better)
    assert deltas["ndcg@10"]["ci"][0] > 0 and gate["status"] == "passed", gate


def test_a_tiny_noisy_drop_within_the_margin_passes(base):
    noise = np.random.default_rng(2).normal(-0.002, 0.03, base.size)
    gate, deltas = _gate(base, base + noise)
    assert deltas["ndcg@10"]["delta"] < 0 and deltas["ndcg@10"]["ci"][0] > -0.01
    assert gate["status"] == "passed", gate


def test_floor_and_failed_fraction(base):
    gate, _ = _gate(base, base, GateConfig(floors={"ndcg@10": 0.99, "mrr@10": 0.1}), failed=30)
    reasons = " | ".join(gate["reasons"])
    assert gate["status"] == "failed"
    assert "under its floor 0.99" in reasons and "mrr@10: floor 0.1 set but the run has no such metric" in reasons
    assert "30 of 300 items failed" in reasons


def test_no_baseline_is_its_own_verdict_never_passed():
    gate = check_gate({"ndcg@10": 0.7}, None, 0, 10, GateConfig(), no_baseline_reason="no baseline on line x yet")
    assert gate["status"] == "no_baseline" and gate["warnings"] == ["no baseline on line x yet"]
    floored = check_gate({"ndcg@10": 0.2}, None, 0, 10, GateConfig(floors={"ndcg@10": 0.5}))
    assert floored["status"] == "failed", "a floor holds without a baseline"


def test_metrics_only_one_run_measured_are_named_and_a_configured_one_missing_is_inconclusive(base):
    retrieval_only = _rows(base)
    full = [{"qa_id": r["qa_id"], "metrics": {**r["metrics"], "refusal_correct": 1.0}} for r in retrieval_only]
    deltas = paired_deltas(retrieval_only, full, 200, 0.95, 0)
    not_compared = unpaired_metrics(retrieval_only, full)
    assert not_compared == {"baseline_only": [], "candidate_only": ["refusal_correct"]}
    gate = check_gate({}, deltas, 0, 300, GateConfig(), not_compared=not_compared)
    assert gate["status"] == "passed" and "not compared (candidate only): refusal_correct" in gate["warnings"]
    strict = check_gate({}, deltas, 0, 300, GateConfig(metrics=["ndcg@10", "refusal_correct"]), not_compared=not_compared)
    assert strict["status"] == "inconclusive" and "refusal_correct" in strict["reasons"][-1]
    nothing = check_gate({}, {}, 0, 300, GateConfig())
    assert nothing["status"] == "inconclusive" and "no metric was measured by both runs" in nothing["reasons"]


def test_a_lower_is_better_metric_rising_is_a_drop(base):
    zeros, ones = _rows(np.zeros(300), "degenerate"), _rows(np.ones(300), "degenerate")
    gate = check_gate({}, paired_deltas(zeros, ones, 200, 0.95, 0), 0, 300, GateConfig())
    assert gate["status"] == "failed" and "degenerate rose +1.0000" in gate["reasons"][0]
    assert "wholly above +0.01 (lower is better)" in gate["reasons"][0], gate["reasons"]


def test_power_helpers_match_statsmodels_and_edge_cases():
    from statsmodels.stats.power import TTestPower

    alpha = 0.025
    d = TTestPower().solve_power(nobs=50, alpha=alpha, power=0.8, alternative="larger")
    assert detectable_drop(0.2, 50, alpha, 0.8) == pytest.approx(d * 0.2)
    assert detectable_drop(0.2, 1, alpha, 0.8) is None and detectable_drop(0.0, 10, alpha, 0.8) == 0.0
    need = items_needed(0.2, 0.01, alpha, 0.8, 30)
    assert detectable_drop(0.2, need, alpha, 0.8) <= 0.01 < detectable_drop(0.2, need - 1, alpha, 0.8)
    assert items_needed(0.0, 0.01, alpha, 0.8, 30) == 30 and items_needed(0.2, 0.0, alpha, 0.8, 30) is None


def test_only_items_both_runs_scored_are_paired():
    deltas = paired_deltas(_rows([1, 1, 0]), _rows([1, 1])[:1] + [{"qa_id": "q9", "metrics": {"ndcg@10": 0.0}}],
                           resamples=100, confidence=0.95, seed=0)
    assert deltas["ndcg@10"]["n"] == 1


@pytest.mark.parametrize("args, expected", [
    ((None, False, 0, 10, 0.5, "x"), "no baseline on golden-set line x yet"),
    (("r1", False, 0, 10, 0.5, "x"), "has no stored items"),
    (("r1", True, 4, 10, 0.5, "x"), "shares 4 of 10 questions"),
    (("r1", True, 5, 10, 0.5, "x"), None),
])
def test_baseline_problem(args, expected):
    problem = baseline_problem(*args)
    assert (problem is None) if expected is None else (expected in problem)


@pytest.mark.parametrize("verdict, policy, failed, status", [
    ("failed", "block", 0, "gate_failed"), ("inconclusive", "block", 0, "gate_inconclusive"),
    ("inconclusive", "warn", 0, "ok"), ("passed", "block", 2, "partial"), ("no_baseline", "block", 0, "ok"),
])
def test_run_status(verdict, policy, failed, status):
    assert run_status(verdict, policy, failed) == status


def test_a_run_whose_every_item_failed_is_failed_not_a_gate_verdict():
    """Found by a new user: an eval target whose URL was down failed all 5 items and reported gate_failed
    (exit 3), which a CI job reads as a quality regression. Nothing was measured: failed (exit 1)."""
    assert run_status("failed", "block", 5, 5) == "failed"
    assert run_status("passed", "block", 4, 5) == "partial" and run_status("failed", "block", 4, 5) == "gate_failed"


def test_chain_differences_name_each_changed_setting():
    from ragloop.tasks.gating import chain_differences

    assert chain_differences({"retrieval": "hybrid", "k": 5, "answer": {"name": "answer"}},
                             {"retrieval": "fts", "k": 5, "answer": None}) == [
        "answer: {'name': 'answer'} -> None", "retrieval: hybrid -> fts"]
    assert chain_differences(None, None) == []


@pytest.mark.parametrize(
    "name, base, cand, floors, needle",
    [
        ("degenerate", [0.0] * 100, [1.0] * 30 + [0.0] * 70, {}, "degenerate rose +0.3000"),  # more garbage answers
        ("degenerate", [1.0] * 30 + [0.0] * 70, [0.0] * 100, {}, None),  # fewer garbage answers: an improvement
        ("false_refusal", [0.0] * 100, [0.0] * 100, {"false_refusal": 0.1}, None),
        ("false_refusal", [0.0] * 100, [1.0] * 20 + [0.0] * 80, {"false_refusal": 0.1}, "over its ceiling 0.1"),
    ],
)
def test_lower_is_better_metrics_fail_on_a_rise_and_floors_are_ceilings(name, base, cand, floors, needle):
    rows = lambda values: [{"qa_id": f"q{i}", "metrics": {name: v}} for i, v in enumerate(values)]  # noqa: E731
    deltas = paired_deltas(rows(base), rows(cand), resamples=1000, confidence=0.95, seed=0)
    gate = check_gate({name: float(np.mean(cand))}, deltas, 0, len(cand), GateConfig(floors=floors))
    assert gate["status"] == ("failed" if needle else "passed"), gate
    assert not needle or needle in gate["reasons"][0]


def test_an_undecided_lower_is_better_metric_says_its_ci_reaches_above_not_below():
    # degenerate (lower is better) rose on 3 of 40 items: the CI of the delta is about [0, +0.15], which
    # reaches above +0.01 (a possible regression) and never below -0.01.
    name = "degenerate"
    rows = lambda values: [{"qa_id": f"q{i}", "metrics": {name: v}} for i, v in enumerate(values)]  # noqa: E731
    deltas = paired_deltas(rows([0.0] * 40), rows([1.0] * 3 + [0.0] * 37), 1000, 0.95, 0)
    assert deltas[name]["ci"][0] <= 0 < 0.01 < deltas[name]["ci"][1]
    gate = check_gate({name: 0.075}, deltas, 0, 40, GateConfig())
    assert gate["status"] == "inconclusive", gate
    reason = next(r for r in gate["reasons"] if r.startswith(name))
    assert "reaches above +0.01 (lower is better)" in reason and "below" not in reason, reason
    assert "detectable rise" in reason and "drop" not in reason, reason


def test_an_improving_lower_is_better_metric_is_no_observed_regression_at_small_n():
    rows = lambda values: [{"qa_id": f"q{i}", "metrics": {"degenerate": v}} for i, v in enumerate(values)]  # noqa: E731
    deltas = paired_deltas(rows([1.0] * 4 + [0.0] * 6), rows([0.0] * 10), 200, 0.95, 0)
    gate = check_gate({}, deltas, 0, 10, GateConfig())
    assert gate["status"] == "inconclusive" and "observed regressions" not in gate["reasons"][0], gate["reasons"]
    worse = check_gate({}, paired_deltas(rows([0.0] * 10), rows([1.0] + [0.0] * 9), 200, 0.95, 0), 0, 10, GateConfig())
    assert "observed regressions: degenerate +0.1000" in worse["reasons"][0], worse["reasons"]


@pytest.mark.parametrize(
    "name, power, needles, absent",
    [
        # a detectable change beyond the metric's whole 0-1 range and an absurd items-needed figure
        ("degenerate", {"n": 4, "detectable_drop": 1.06, "items_needed": 26165},
         ["cannot detect any change on this metric with 4 items", "whole range 0-1", "far more than the 4 items here",
          "a rise of 0.01"], ["26165", "~"]),
        ("ndcg@10", {"n": 300, "detectable_drop": 0.02, "items_needed": 1200},
         ["at n=300 the detectable drop is 0.02", "it would take ~1200 items to show a drop of 0.01"], ["cannot"]),
    ],
)
def test_power_note_caps_what_exceeds_the_range_or_is_absurd(name, power, needles, absent):
    note = power_note(name, power, 0.01)
    assert all(n in note for n in needles) and not any(a in note for a in absent), note


def test_a_drop_on_one_paired_item_is_inconclusive_not_shown():
    """Found by a new user: one unanswerable question refused by the baseline and not by the candidate gave
    refusal_recall -1.0 with the bootstrap CI [-1, -1] at n=1, and the gate said 'failed'. Too few pairs
    to show anything: inconclusive (which blocks by default), naming the n; five pairs can show a drop."""
    base_rows = [{"qa_id": f"q{i}", "status": "ok", "metrics": [("ndcg@10", 0.8)] + ([("refusal_recall", 1.0)] if i == 0 else [])}
                 for i in range(40)]
    cand_rows = [{"qa_id": f"q{i}", "status": "ok", "metrics": [("ndcg@10", 0.8)] + ([("refusal_recall", 0.0)] if i == 0 else [])}
                 for i in range(40)]
    deltas = paired_deltas(base_rows, cand_rows, 200, 0.95, 0)
    assert deltas["refusal_recall"]["n"] == 1 and deltas["refusal_recall"]["ci"] == [-1.0, -1.0]
    gate = check_gate({"ndcg@10": 0.8, "refusal_recall": 0.0}, deltas, 0, 40, GateConfig())
    assert gate["status"] == "inconclusive"
    assert any("refusal_recall: -1.0000 on only n=1 paired item(s): too few to show a change" in r for r in gate["reasons"])
    five = [dict(r, metrics=r["metrics"] + ([("refusal_recall", 1.0)] if 0 < int(r["qa_id"][1:]) < 5 else [])) for r in base_rows]
    five_c = [dict(r, metrics=r["metrics"] + ([("refusal_recall", 0.0)] if 0 < int(r["qa_id"][1:]) < 5 else [])) for r in cand_rows]
    shown = check_gate({}, paired_deltas(five, five_c, 200, 0.95, 0), 0, 40, GateConfig())
    assert shown["status"] == "failed" and "refusal_recall dropped" in shown["reasons"][0]
