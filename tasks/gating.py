"""Comparing two eval runs item by item, and the regression gate with its power (pure).

The gate is a non-inferiority test per metric on the paired per-item deltas (candidate - baseline):
a metric *fails* when its delta's CI lies wholly below -max_drop (a drop beyond max_drop is shown),
*passes* when the CI's lower end is at or above -max_drop (no such drop, shown), and is
*inconclusive* otherwise: the data cannot tell. For a lower-is-better metric everything mirrors: the
regression is a rise, a metric fails when the CI lies wholly above +max_drop, and every message says
"rose"/"above". Fewer than `min_items` paired items is inconclusive unless a regression is shown: percentile-bootstrap CIs under-cover at such n, so a "no drop" there is no
evidence, while a shown drop still blocks.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ragloop.tasks.evaluation import bootstrap_ci
from ragloop.tasks.metrics import higher_is_better, metric_range
from ragloop.tasks.settings import GateBudgets, GateConfig


def paired_deltas(
    baseline: Sequence[Mapping], candidate: Sequence[Mapping], resamples: int, confidence: float, seed: int
) -> dict[str, dict]:
    """Per metric both runs scored: mean of (candidate - baseline) over the items both scored, with a
    bootstrap CI of that paired mean and the sample SD of the paired differences (for power).
    Rows: {"qa_id", "metrics": {name: value}}."""
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
            "sd": round(float(diffs.std(ddof=1)), 6) if len(pairs) > 1 else 0.0,
        }
    return out


def unpaired_metrics(baseline: Sequence[Mapping], candidate: Sequence[Mapping]) -> dict[str, list[str]]:
    """Metrics only one run measured (e.g. answer metrics against a retrieval-only baseline)."""
    base = {n for r in baseline for n in dict(r["metrics"])}
    cand = {n for r in candidate for n in dict(r["metrics"])}
    return {"baseline_only": sorted(base - cand), "candidate_only": sorted(cand - base)}


def detectable_drop(sd: float, n: int, alpha: float, power: float) -> float | None:
    """The smallest true mean drop a one-sided paired t-test at level `alpha` detects with `power`
    given n pairs whose differences have SD `sd` (statsmodels TTestPower). None when n < 2."""
    if n < 2:
        return None
    if sd == 0:
        return 0.0
    from statsmodels.stats.power import TTestPower

    effect = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="larger")
    return float(effect) * sd


def items_needed(sd: float, max_drop: float, alpha: float, power: float, minimum: int) -> int | None:
    """Paired items needed to detect a drop of `max_drop` with `power` (statsmodels TTestPower); at least
    `minimum`. None when max_drop is 0 (no finite n detects a zero drop) and the deltas vary."""
    if sd == 0:
        return minimum
    if max_drop <= 0:
        return None
    from statsmodels.stats.power import TTestPower

    n = TTestPower().solve_power(effect_size=max_drop / sd, nobs=None, alpha=alpha, power=power, alternative="larger")
    return max(minimum, int(math.ceil(float(n))))


# Paired items below which a metric's delta gives no verdict of regression: the bootstrap CI of 1-4 pairs has
# (nearly) no width, so "wholly below" would be shown by a single question (seen: refusal_recall -1.0, CI
# [-1, -1], n=1, on a run with one unanswerable item).
MIN_PAIRS_FOR_A_VERDICT = 5


def check_gate(
    metrics: Mapping[str, float],
    deltas: Mapping[str, Mapping] | None,
    failed: int,
    total: int,
    config: GateConfig,
    confidence: float = 0.95,
    not_compared: Mapping[str, list[str]] | None = None,
    no_baseline_reason: str | None = None,
    budget_reasons: Sequence[str] = (),
    ungated: Mapping[str, str] | None = None,
) -> dict:
    """The gate's verdict on a candidate run.

    `budget_reasons` (from check_budgets) fail the gate like a floor. For a lower-is-better metric
    (better="lower" in tasks/metrics.py METRIC_INFO) the floor is a ceiling and a rise is the drop.
    Returns {"status": passed | failed | inconclusive | no_baseline, "reasons": [...], "warnings": [...],
    "paired_items": n, "gated": [metrics], "not_compared": {baseline_only, candidate_only},
    "power": {metric: {n, sd, half_width, detectable_drop, items_needed}}}.
    `deltas` is None when there is no baseline (`no_baseline_reason` says why). Floors and the failed
    fraction are absolute and fail even without a baseline. Power uses a one-sided test at
    (1 - confidence) / 2, the level of "CI wholly below", and `config.power`.
    `ungated` (metric -> why, from tasks.calibration.gate_calibration: an uncalibrated judge) are reported,
    never gated: no floor, no drop, not counted as missing from `gate.metrics`; the result lists them.
    """
    reasons: list[str] = []
    ungated = dict(ungated or {})
    warnings: list[str] = [f"{name}: reported, not gated ({why})" for name, why in sorted(ungated.items())]
    for name, floor in sorted(config.floors.items()):
        value = metrics.get(name)
        if name in ungated:
            continue
        if value is None:
            reasons.append(f"{name}: floor {floor} set but the run has no such metric")
        elif higher_is_better(name) and value < floor:
            reasons.append(f"{name} = {value:.4f} is under its floor {floor}")
        elif not higher_is_better(name) and value > floor:
            reasons.append(f"{name} = {value:.4f} is over its ceiling {floor} (lower is better)")
    fraction = failed / total if total else 0.0
    if fraction > config.max_failed_fraction:
        reasons.append(f"{failed} of {total} items failed ({fraction:.1%} > {config.max_failed_fraction:.1%})")
    reasons.extend(budget_reasons)
    result = {"reasons": reasons, "warnings": warnings, "paired_items": 0, "gated": [], "max_drop": config.max_drop,
              "not_compared": dict(not_compared or {"baseline_only": [], "candidate_only": []}), "power": {},
              "ungated": ungated}
    if deltas is None:
        result["status"] = "failed" if reasons else "no_baseline"
        if not reasons:
            warnings.append(no_baseline_reason or "no baseline on this golden-set line yet: nothing to compare with")
        return result

    alpha = (1 - confidence) / 2
    wanted = [m for m in (list(config.metrics) or sorted(deltas)) if m not in ungated]
    gated = [m for m in wanted if m in deltas]
    missing = [m for m in config.metrics if m not in deltas and m not in ungated]
    result["gated"] = gated
    result["paired_items"] = max((d["n"] for d in deltas.values()), default=0)
    for side, names in result["not_compared"].items():
        if names:
            warnings.append(f"not compared ({side.replace('_', ' ')}): {', '.join(names)}")
    undecided, inconclusive_small = [], []
    for name in gated:
        d = deltas[name]
        low, high = _oriented_ci(name, d["ci"])
        sd = float(d.get("sd", 0.0))
        result["power"][name] = {
            "n": d["n"], "sd": round(sd, 6), "half_width": round((high - low) / 2, 6),
            "detectable_drop": _round(detectable_drop(sd, d["n"], alpha, config.power)),
            "items_needed": items_needed(sd, config.max_drop, alpha, config.power, config.min_items),
        }
        verdict = metric_verdict(name, d["ci"], config.max_drop)
        if verdict == "failed" and d["n"] < MIN_PAIRS_FOR_A_VERDICT:
            # A bootstrap over 1-4 pairs has (nearly) no width: it shows nothing. Inconclusive (which blocks
            # by default), not a regression the data cannot show.
            inconclusive_small.append(f"{name}: {d['delta']:+.4f} on only n={d['n']} paired item(s): too few to show "
                                      f"a change (a verdict needs {MIN_PAIRS_FOR_A_VERDICT})")
        elif verdict == "failed":  # a regression shown blocks (small-n CIs err towards blocking here)
            moved, side, bound = _regression_words(name, config.max_drop)
            reasons.append(f"{name} {moved} {d['delta']:+.4f} vs baseline (CI [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
                           f"wholly {side} {bound}, n={d['n']})")
        elif verdict == "inconclusive":
            undecided.append(name)
    if reasons:
        result["status"] = "failed"
        return result
    inconclusive = list(inconclusive_small)
    if result["paired_items"] < config.min_items:
        drops = [f"{m} {deltas[m]['delta']:+.4f}" for m in gated if _worse(m, deltas[m]["delta"])]
        inconclusive.append(f"only {result['paired_items']} paired items (gate.min_items {config.min_items})"
                            + (f"; observed regressions: {', '.join(drops)}" if drops else ""))
    for name in undecided:
        _, side, bound = _regression_words(name, config.max_drop)
        ci = deltas[name]["ci"]
        inconclusive.append(f"{name}: CI of the delta [{ci[0]:+.4f}, {ci[1]:+.4f}] reaches {side} {bound}; "
                            + power_note(name, result["power"][name], config.max_drop))
    if missing:
        inconclusive.append(f"gate.metrics not measured by both runs: {', '.join(missing)}")
    if not gated:
        inconclusive.append("no metric was measured by both runs")
    result["reasons"] = inconclusive
    result["status"] = "inconclusive" if inconclusive else "passed"
    return result


def _oriented_ci(name: str, ci: Sequence[float]) -> tuple[float, float]:
    """The delta's CI with a rise of a lower-is-better metric turned into a drop, (low, high)."""
    sign = 1.0 if higher_is_better(name) else -1.0
    low, high = sorted((sign * ci[0], sign * ci[1]))
    return low, high


def metric_verdict(name: str, ci: Sequence[float], max_drop: float) -> str:
    """One metric's non-inferiority verdict from its paired delta CI [low, high]: failed (a regression
    beyond max_drop is shown), passed (none is), inconclusive (the CI reaches past -max_drop). Before the
    gate's n and power rules, which can only make a passed metric's run inconclusive."""
    low, high = _oriented_ci(name, ci)
    if high < -max_drop:
        return "failed"
    return "inconclusive" if low < -max_drop else "passed"


def _worse(name: str, delta: float) -> bool:
    """Whether a delta (candidate - baseline) moved the metric the wrong way for its direction."""
    return delta < 0 if higher_is_better(name) else delta > 0


def _regression_words(name: str, max_drop: float) -> tuple[str, str, str]:
    """How a regression of this metric reads: ("dropped", "below", "-0.01") or, for a lower-is-better
    metric, ("rose", "above", "+0.01 (lower is better)")."""
    if higher_is_better(name):
        return "dropped", "below", f"-{max_drop}"
    return "rose", "above", f"+{max_drop} (lower is better)"


ABSURD_ITEMS_FACTOR = 100  # an items_needed beyond this many times the current n is reported as "far more"


def power_note(name: str, power: Mapping, max_drop: float) -> str:
    """What the gate could detect on this metric at its n, and what it would take to detect a regression
    of max_drop, in the metric's own direction (a drop, or a rise for a lower-is-better metric). When the
    detectable change exceeds the metric's whole declared range the gate cannot see any change; an
    items-needed figure beyond ABSURD_ITEMS_FACTOR x n is reported as "far more than the n items here"."""
    n, detectable, need = power["n"], power.get("detectable_drop"), power.get("items_needed")
    change = "drop" if higher_is_better(name) else "rise"
    low, high = metric_range(name)
    if detectable is None:
        seen = f"at n={n} no detectable {change} can be computed"
    elif detectable > high - low:
        seen = (f"the gate cannot detect any change on this metric with {n} items (the detectable {change} "
                f"{detectable:.4g} exceeds its whole range {low:g}-{high:g})")
    else:
        seen = f"at n={n} the detectable {change} is {detectable:.4g}"
    if not need:
        more = "more items"
    elif need > ABSURD_ITEMS_FACTOR * max(n, 1):
        more = f"far more than the {n} items here"
    else:
        more = f"~{need} items"
    return f"{seen}; it would take {more} to show a {change} of {max_drop}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def check_budgets(figures: Mapping | None, baseline: Mapping | None, budgets: GateBudgets) -> list[str]:
    """Reasons a run fails its cost/latency budgets (`figures` and the baseline's from
    tasks.monitoring.budget_figures); ratios apply only where the baseline spent something."""
    if not figures:
        return []
    reasons = []
    limits = (("item_latency_p95_s", budgets.max_item_latency_p95_s, "p95 item latency", "s"),
              ("tokens_per_item", budgets.max_tokens_per_item, "tokens per item", ""),
              ("cost", budgets.max_cost_per_run, "cost per run", ""))
    for key, limit, label, unit in limits:
        if limit is not None and figures.get(key, 0) > limit:
            reasons.append(f"budget: {label} {figures[key]}{unit} is over gate.budgets {limit}{unit}")
    ratios = (("item_latency_p95_s", budgets.max_latency_ratio, "p95 item latency"),
              ("tokens_per_item", budgets.max_tokens_ratio, "tokens per item"))
    for key, limit, label in ratios:
        before, now = (baseline or {}).get(key), figures.get(key)
        if limit is not None and before and now is not None and now / before > limit:
            reasons.append(f"budget: {label} {now} is {now / before:.2f}x the baseline's {before} "
                           f"(gate.budgets allows {limit}x)")
    return reasons


def chain_differences(baseline_chain: Mapping | None, candidate_chain: Mapping | None) -> list[str]:
    """The chain settings that differ between baseline and candidate, as 'key: old -> new' lines."""
    a, b = dict(baseline_chain or {}), dict(candidate_chain or {})
    return [f"{key}: {a.get(key)} -> {b.get(key)}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def baseline_problem(baseline_run_id: str | None, has_items: bool, shared: int, total: int, min_overlap: float,
                     line: str) -> str | None:
    """Why a candidate has no usable baseline (None when it has one): none promoted on the line yet, its
    items are gone, or it shares too few of the candidate's questions to pair on."""
    if baseline_run_id is None:
        return f"no baseline on golden-set line {line} yet: nothing to compare with"
    if not has_items:
        return f"the baseline run {baseline_run_id} has no stored items"
    if total and shared < max(1, min_overlap * total):
        return (f"the baseline run {baseline_run_id} shares {shared} of {total} questions "
                f"(< gate.min_baseline_overlap {min_overlap:.0%}): not comparable")
    return None


def run_status(verdict: str, on_inconclusive: str, failed_items: int, total_items: int | None = None) -> str:
    """An eval run's status from its gate verdict: failed (exit 1) when every item failed (nothing was
    measured: a dead target or endpoint, not a quality regression); gate_failed and gate_inconclusive (when
    blocking) exit 3; otherwise partial when items failed, else ok."""
    if total_items and failed_items == total_items:
        return "failed"
    if verdict == "failed":
        return "gate_failed"
    if verdict == "inconclusive" and on_inconclusive == "block":
        return "gate_inconclusive"
    return "partial" if failed_items else "ok"
