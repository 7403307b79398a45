"""Comparing two eval runs item by item and the regression gate (pure)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tasks.evaluation import bootstrap_ci, higher_is_better
from tasks.settings import GateConfig


def paired_deltas(
    baseline: Sequence[Mapping], candidate: Sequence[Mapping], resamples: int, confidence: float, seed: int
) -> dict[str, dict]:
    """Per metric both runs scored: mean of (candidate - baseline) over the items both scored, with a
    bootstrap CI of that paired mean. Rows: {"qa_id", "metrics": {name: value}}."""
    base = {r["qa_id"]: dict(r["metrics"]) for r in baseline}
    cand = {r["qa_id"]: dict(r["metrics"]) for r in candidate}
    shared = sorted(base.keys() & cand.keys())
    names = sorted({n for q in shared for n in base[q]} & {n for q in shared for n in cand[q]})
    out = {}
    for name in names:
        pairs = [(base[q][name], cand[q][name]) for q in shared if name in base[q] and name in cand[q]]
        if not pairs:
            continue
        diffs = np.array([c - b for b, c in pairs], dtype=float)
        low, high = bootstrap_ci(diffs, resamples, confidence, seed)
        out[name] = {
            "baseline": round(float(np.mean([b for b, _ in pairs])), 6),
            "candidate": round(float(np.mean([c for _, c in pairs])), 6),
            "delta": round(float(diffs.mean()), 6),
            "ci": [round(low, 6), round(high, 6)],
            "n": len(pairs),
        }
    return out


def check_gate(
    metrics: Mapping[str, float], deltas: Mapping[str, Mapping] | None, failed: int, total: int, config: GateConfig
) -> dict:
    """{"status": "passed" | "failed", "reasons": [...]}. Fails when a metric is under its floor, when a
    delta's CI lies wholly below -max_drop (a drop beyond noise), or when too many items failed. For a
    lower-is-better metric (evaluation.LOWER_IS_BETTER) the floor is a ceiling and a rise is the drop."""
    reasons = []
    for name, floor in sorted(config.floors.items()):
        value = metrics.get(name)
        if value is None:
            reasons.append(f"{name}: floor {floor} set but the run has no such metric")
        elif higher_is_better(name) and value < floor:
            reasons.append(f"{name} = {value:.4f} is under its floor {floor}")
        elif not higher_is_better(name) and value > floor:
            reasons.append(f"{name} = {value:.4f} is over its ceiling {floor} (lower is better)")
    for name, d in sorted((deltas or {}).items()):
        if config.metrics and name not in config.metrics:
            continue
        if higher_is_better(name) and d["ci"][1] < -config.max_drop:
            reasons.append(f"{name} dropped {d['delta']:+.4f} vs baseline (CI [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
                           f"wholly below -{config.max_drop})")
        elif not higher_is_better(name) and d["ci"][0] > config.max_drop:
            reasons.append(f"{name} rose {d['delta']:+.4f} vs baseline (CI [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
                           f"wholly above +{config.max_drop}; lower is better)")
    fraction = failed / total if total else 0.0
    if fraction > config.max_failed_fraction:
        reasons.append(f"{failed} of {total} items failed ({fraction:.1%} > {config.max_failed_fraction:.1%})")
    return {"status": "failed" if reasons else "passed", "reasons": reasons}
