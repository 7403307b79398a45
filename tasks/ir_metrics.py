"""IR metrics per query (hit@k, recall@k, mrr@k, ndcg@k) computed by trec_eval via pytrec_eval (pure).

trec_eval is what BEIR's published numbers come from, so a SciFact run here is comparable to them.
Rankings are passed as ranks (scores n, n-1, ...): trec_eval would otherwise re-sort tied scores by
document id, and the metrics must describe the order the chain actually returned.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pytrec_eval


def _as_scores(ranking: Sequence[str]) -> dict[str, float]:
    seen: dict[str, float] = {}
    for rank, item in enumerate(ranking):
        if item not in seen:  # a repeated id counts once, at its best rank
            seen[item] = float(len(ranking) - rank)
    return seen


def score_rankings(
    relevant: Mapping[str, Mapping[str, int]], rankings: Mapping[str, Sequence[str]], ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Per query: {"hit@k", "recall@k", "mrr@k", "ndcg@k"} for each k.

    relevant: query -> {id: graded relevance > 0}; rankings: query -> ids best first. A query with
    no relevant ids (an unanswerable question) has no IR metrics and is left out of the result.
    """
    qrels = {q: {d: int(g) for d, g in rel.items() if g > 0} for q, rel in relevant.items()}
    qrels = {q: rel for q, rel in qrels.items() if rel}
    out: dict[str, dict[str, float]] = {q: {} for q in qrels}
    if not qrels:
        return {}
    for k in sorted(set(ks)):
        # Cut each ranking at k ourselves: trec_eval's recip_rank has no cutoff, and success/ndcg_cut/
        # recall then agree on exactly which ids were retrieved.
        run = {q: _as_scores(list(dict.fromkeys(rankings.get(q, [])))[:k]) for q in qrels}
        run = {q: (r or {"\x00none": 0.0}) for q, r in run.items()}  # trec_eval drops queries with no rows
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}", f"recall.{k}", f"success.{k}", "recip_rank"})
        for q, m in evaluator.evaluate(run).items():
            out[q][f"hit@{k}"] = m[f"success_{k}"]
            out[q][f"recall@{k}"] = m[f"recall_{k}"]
            out[q][f"mrr@{k}"] = m["recip_rank"]
            out[q][f"ndcg@{k}"] = m[f"ndcg_cut_{k}"]
    return out


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Macro average over queries of each metric name."""
    if not per_query:
        return {}
    names = sorted({n for m in per_query.values() for n in m})
    return {n: sum(m[n] for m in per_query.values()) / len(per_query) for n in names}
