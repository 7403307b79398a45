"""Scoring an eval run: per-item IR metrics at document and chunk level, aggregates with bootstrap
confidence intervals, overall and per question type (pure)."""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from ragloop.tasks.ir_metrics import score_rankings
from ragloop.tasks.settings import EvalConfig

# Chunk-level IR metrics; unprefixed names are document-level (as in BEIR). What each metric means (its
# direction, range, level) is declared in tasks/metrics.py METRIC_INFO.
CHUNK_PREFIX = "chunk_"


def cutoffs(config: EvalConfig, k: int) -> list[int]:
    """The k values metrics are reported at: the configured ones up to k, and k itself."""
    return sorted({c for c in config.metric_ks if c <= k} | {k})


def ir_item_metrics(
    items: Sequence[Mapping], doc_rankings: Mapping[str, Sequence[str]],
    chunk_rankings: Mapping[str, Sequence[str]], ks: Sequence[int],
) -> dict[str, dict[str, float]]:
    """qa_id -> metrics. Document level from reference_doc_ids; chunk level (prefixed `chunk_`) from
    reference_chunk_ids where the item has them. Items with no references (unanswerable) get none."""
    doc_rel = {i["qa_id"]: {d: 1 for d in i["reference_doc_ids"]} for i in items}
    chunk_rel = {i["qa_id"]: {c: 1 for c in i["reference_chunk_ids"]} for i in items}
    out: dict[str, dict[str, float]] = {i["qa_id"]: {} for i in items}
    for qa_id, metrics in score_rankings(doc_rel, doc_rankings, ks).items():
        out[qa_id].update(metrics)
    for qa_id, metrics in score_rankings(chunk_rel, chunk_rankings, ks).items():
        out[qa_id].update({CHUNK_PREFIX + name: value for name, value in metrics.items()})
    return out


def check_references(items: Sequence[Mapping], chunk_ids: set[str], doc_ids: set[str]) -> dict[str, list[str]]:
    """qa_id -> the reference chunk and document ids the index no longer holds (items with none left out).
    Such an item cannot be scored at that level: a vanished reference would read as a miss."""
    out = {}
    for item in items:
        missing = [c for c in item["reference_chunk_ids"] if c not in chunk_ids]
        missing += [d for d in item["reference_doc_ids"] if d not in doc_ids]
        if missing:
            out[item["qa_id"]] = missing
    return out


def without_stale_references(item: Mapping, missing: Sequence[str] | None) -> dict:
    """The item as IR scoring sees it: a level (chunk or document) with a vanished reference is dropped
    whole, so the item is left out of that level's metrics instead of scoring 0."""
    if not missing:
        return dict(item)
    gone = set(missing)
    out = dict(item)
    if gone & set(item["reference_chunk_ids"]):
        out["reference_chunk_ids"] = []
    if gone & set(item["reference_doc_ids"]):
        out["reference_doc_ids"] = []
    return out


def stale_summary(stale: Mapping[str, Sequence[str]], sample: int = 5) -> dict:
    """{items, references, qa_ids (first few)} for the eval summary."""
    return {"items": len(stale), "references": sum(len(v) for v in stale.values()), "qa_ids": sorted(stale)[:sample]}


def bootstrap_ci(values: Sequence[float], resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (scipy.stats.bootstrap); a single value or constant
    values give a zero-width interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    if data.size == 1 or np.all(data == data[0]):
        return (float(data[0]), float(data[0]))
    from scipy import stats  # ~0.6 s to import: paid only when an interval is computed, not by importers

    result = stats.bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence,
                             method="percentile", random_state=np.random.default_rng(seed))
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def aggregate(
    rows: Iterable[Mapping], names: Sequence[str], config: EvalConfig
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, int]]:
    """Mean, CI and n per metric over the rows that carry it (rows: {"metrics": {name: value}})."""
    rows = list(rows)
    means, cis, counts = {}, {}, {}
    for name in names:
        values = [r["metrics"][name] for r in rows if name in r["metrics"]]
        if not values:
            continue
        means[name] = round(float(np.mean(values)), 6)
        low, high = bootstrap_ci(values, config.bootstrap_resamples, config.confidence, config.seed)
        cis[name] = [round(low, 6), round(high, 6)]
        counts[name] = len(values)
    return means, cis, counts


def metric_names(rows: Iterable[Mapping]) -> list[str]:
    names: set[str] = set()
    for r in rows:
        names.update(r["metrics"])
    return sorted(names)
