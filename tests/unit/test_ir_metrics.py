"""IR metrics against hand-computed tables (trec_eval semantics: linear gain, log2(rank+1) discount)."""

from __future__ import annotations

import math

import pytest

from ragloop.tasks.ir_metrics import mean_metrics, score_rankings

RELEVANT = {"q1": {"a": 1, "c": 1}, "q2": {"x": 2, "y": 1}, "q3": {}, "q4": {"p": 1}}
RANKINGS = {"q1": ["a", "b", "c", "d"], "q2": ["z", "y", "x"], "q3": ["a"], "q4": []}

EXPECTED = {  # (query, metric) -> value, worked out by hand
    ("q1", "hit@1"): 1, ("q1", "recall@1"): 0.5, ("q1", "mrr@1"): 1, ("q1", "ndcg@1"): 1,
    ("q1", "hit@3"): 1, ("q1", "recall@3"): 1, ("q1", "mrr@3"): 1,
    ("q1", "ndcg@3"): (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)),
    ("q2", "hit@1"): 0, ("q2", "recall@1"): 0, ("q2", "mrr@1"): 0, ("q2", "ndcg@1"): 0,
    ("q2", "hit@3"): 1, ("q2", "recall@3"): 1, ("q2", "mrr@3"): 0.5,
    ("q2", "ndcg@3"): (1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3)),
    ("q4", "hit@3"): 0, ("q4", "recall@3"): 0, ("q4", "mrr@3"): 0, ("q4", "ndcg@3"): 0,
}


def test_metrics_match_the_hand_computed_table():
    scores = score_rankings(RELEVANT, RANKINGS, [1, 3])
    assert set(scores) == {"q1", "q2", "q4"}, "a query with nothing relevant has no IR metrics"
    for (query, metric), value in EXPECTED.items():
        assert scores[query][metric] == pytest.approx(value, abs=1e-4), (query, metric)


def test_order_is_the_ranking_not_tied_scores_or_ids():
    # trec_eval breaks score ties by id; passing ranks keeps the chain's order.
    scores = score_rankings({"q": {"a": 1}}, {"q": ["z", "a"]}, [1, 2])
    assert scores["q"]["hit@1"] == 0 and scores["q"]["mrr@2"] == 0.5


def test_repeated_ids_count_once_at_their_best_rank():
    scores = score_rankings({"q": {"a": 1}}, {"q": ["b", "b", "a"]}, [2])
    assert scores["q"]["hit@2"] == 1 and scores["q"]["mrr@2"] == 0.5


def test_mean_is_the_macro_average():
    means = mean_metrics(score_rankings(RELEVANT, RANKINGS, [3]))
    assert means["hit@3"] == pytest.approx(2 / 3) and means["mrr@3"] == pytest.approx(0.5)
