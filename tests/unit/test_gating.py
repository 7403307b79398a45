"""The regression gate on synthetic score tables: A/A passes, a real drop fails, a tiny noisy drop does not."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.gating import check_gate, paired_deltas
from tasks.settings import GateConfig


def _rows(values):
    return [{"qa_id": f"q{i}", "metrics": {"ndcg@10": float(v)}} for i, v in enumerate(values)]


def _gate(base, cand, config=GateConfig(), failed=0):
    deltas = paired_deltas(_rows(base), _rows(cand), resamples=1000, confidence=0.95, seed=0)
    return check_gate({"ndcg@10": float(np.mean(cand))}, deltas, failed, len(cand), config), deltas


@pytest.fixture
def base():
    return np.random.default_rng(1).uniform(0.2, 1.0, 300)


def test_a_a_passes(base):
    gate, deltas = _gate(base, base)
    assert gate == {"status": "passed", "reasons": []}
    assert deltas["ndcg@10"]["delta"] == 0 and deltas["ndcg@10"]["ci"] == [0, 0]


def test_a_real_drop_fails(base):
    gate, deltas = _gate(base, base - 0.1)
    assert gate["status"] == "failed" and "ndcg@10 dropped" in gate["reasons"][0]
    assert deltas["ndcg@10"]["delta"] == pytest.approx(-0.1)


def test_a_tiny_noisy_drop_does_not_fail(base):
    noise = np.random.default_rng(2).normal(-0.003, 0.05, base.size)
    gate, deltas = _gate(base, base + noise)
    assert deltas["ndcg@10"]["delta"] < 0
    assert gate["status"] == "passed", gate


def test_floor_and_failed_fraction(base):
    gate, _ = _gate(base, base, GateConfig(floors={"ndcg@10": 0.99, "mrr@10": 0.1}), failed=30)
    reasons = " | ".join(gate["reasons"])
    assert "under its floor 0.99" in reasons and "mrr@10: floor 0.1 set but the run has no such metric" in reasons
    assert "30 of 300 items failed" in reasons


def test_only_items_both_runs_scored_are_paired():
    deltas = paired_deltas(_rows([1, 1, 0]), _rows([1, 1])[:1] + [{"qa_id": "q9", "metrics": {"ndcg@10": 0.0}}],
                           resamples=100, confidence=0.95, seed=0)
    assert deltas["ndcg@10"]["n"] == 1


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
