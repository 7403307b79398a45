"""Quality monitoring: history rows, the windowed regression rule, drift checks and budgets (pure).

Every check returns its figures (for the history and the report) and the alerts they raise; nothing
here reads the lake or sends anything (tasks/monitor_run.py reads a pass's inputs, tasks/alerting.py has the sinks).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from ragloop.tasks.metrics import higher_is_better
from ragloop.tasks.settings import MonitorConfig

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Alert:
    """One finding: `kind` says which check raised it; `metric` names the metric when there is one."""

    kind: str  # regression | corpus_drift | length_drift | embedding_drift | retrieval_drift | ge_failure
    #            | latency_budget | token_budget | cost_budget | stage_failed | stale_references | alert_cleared
    message: str
    severity: str  # info | warning | critical
    metric: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """What one check measured and what it raised."""

    figures: dict[str, Any]
    alerts: list[Alert]


# -- history ------------------------------------------------------------------------------------


EXPERIMENT = "experiment"


def chain_label(chain: Mapping | None) -> str:
    """A short name for a chain, e.g. 'hybrid k5 +rerank +answer' (plot axes and report rows)."""
    if not chain:
        return "?"
    if chain.get("target"):  # an eval target (tasks/targets.py): the app answered, named by its callable or URL
        target = chain["target"]
        name = target.get("callable") or target.get("url") or target.get("kind", "?")
        return f"target {name} k{chain.get('k', '?')}" + ("" if chain.get("grounding") else " retrieval-only")
    parts = [str(chain.get("retrieval", "?")), f"k{chain.get('k', '?')}"]
    parts += ["+rewrite"] if chain.get("rewrite") else []
    parts += ["+rerank"] if chain.get("rerank") else []
    parts += ["+answer"] if chain.get("answer") else ["retrieval-only"]
    return " ".join(parts)


CANDIDATE = "candidate"
UNSERVED = (EXPERIMENT, CANDIDATE)


def observation_mode(eval_run: Mapping) -> str | None:
    """How an eval run counts for the monitor: its mode (nightly, prompt-changed, explicit) when it was
    promoted or scored the served index; 'experiment' for experiments and for an explicit `--promote`
    that was not promoted; 'candidate' for a nightly or prompt-changed run on a candidate index that was
    not promoted (not what is served). None for runs recorded before modes existed."""
    outputs = eval_run.get("outputs") or {}
    promotion = outputs.get("promotion")
    if not promotion:
        return None
    mode = promotion.get("mode")
    if promotion.get("promoted") or mode == EXPERIMENT:
        return mode
    if mode == "explicit":
        return EXPERIMENT
    return CANDIDATE if (outputs.get("index") or {}).get("role") == "candidate" else mode


def history_rows(observation_id: str, eval_run: Mapping, at: dt.datetime, mode: str | None = None) -> list[dict]:
    """History rows for one observation of an eval run: every metric overall (scope `all`, with its
    CI and n) and per question type (scope `type:<qa_type>`), tagged with the series they belong to
    (golden line, chain hash) and the mode (`mode` overrides the run's own, e.g. a nightly reusing it)."""
    outputs = eval_run.get("outputs") or {}
    lineage = eval_run.get("lineage") or {}
    golden = outputs.get("golden_set_id") or lineage.get("golden_set_id")
    base = {"observation_id": observation_id, "run_id": eval_run["run_id"], "flow": "eval", "golden_set_id": golden, "at": at,
            "golden_line": outputs.get("golden_line") or lineage.get("golden_line"), "chain_hash": lineage.get("chain_hash"),
            "chain_label": chain_label(lineage.get("chain")), "mode": mode or observation_mode(eval_run)}
    rows = []

    def add(scope: str, metrics: Mapping, cis: Mapping, counts: Mapping | int | None) -> None:
        for name, value in sorted(metrics.items()):
            low, high = (cis.get(name) or [None, None]) if cis else (None, None)
            n = counts.get(name) if isinstance(counts, Mapping) else counts
            rows.append({**base, "scope": scope, "metric": name, "value": _num(value), "ci_low": _num(low),
                         "ci_high": _num(high), "n": n})

    add("all", outputs.get("metrics") or {}, outputs.get("ci") or {}, outputs.get("n") or {})
    for qa_type, group in sorted((outputs.get("by_type") or {}).items()):
        add(f"type:{qa_type}", group.get("metrics") or {}, group.get("ci") or {}, group.get("n"))
    return rows


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def observations(rows: Iterable[Mapping], scope: str = "all") -> list[dict]:
    """History rows of one scope grouped per observation, oldest first:
    [{observation_id, run_id, golden_set_id, at, metrics: {name: {value, ci_low, ci_high}}}]."""
    grouped: dict[str, dict] = {}
    for r in rows:
        if r["scope"] != scope or r["flow"] != "eval":
            continue
        obs = grouped.setdefault(r["observation_id"], {
            "observation_id": r["observation_id"], "run_id": r["run_id"], "golden_set_id": r["golden_set_id"],
            "at": r["at"], "golden_line": r.get("golden_line"), "chain_hash": r.get("chain_hash"),
            "chain_label": r.get("chain_label"), "mode": r.get("mode"), "metrics": {}})
        obs["metrics"][r["metric"]] = {"value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
    return sorted(grouped.values(), key=lambda o: (o["at"], o["observation_id"]))


def watched_series(observations_: Sequence[Mapping]) -> tuple[dict | None, list[dict], list[dict]]:
    """Split observations (oldest first) into the series the monitor watches and the experiments.

    The watched series is the (golden line, chain hash) of the latest observation that was not an
    experiment, i.e. what the nightly, the prompt-changed flow or an explicit promotion evaluated:
    what is served. Experiments never enter it; observations of other lines or chains are other
    series (a prompt change that is promoted starts a new one). Returns (key, series, experiments)."""
    experiments = [dict(o) for o in observations_ if o.get("mode") in UNSERVED]
    served = [o for o in observations_ if o.get("mode") not in UNSERVED]
    if not served:
        return None, [], experiments
    key = {"golden_line": served[-1].get("golden_line"), "chain_hash": served[-1].get("chain_hash"),
           "chain_label": served[-1].get("chain_label")}
    series = [dict(o) for o in served
              if (o.get("golden_line"), o.get("chain_hash")) == (key["golden_line"], key["chain_hash"])]
    return key, series, experiments


def latest_answered(series: Sequence[Mapping], chain_of) -> dict | None:
    """The latest observation whose run's chain ran an answer step (`chain_of(run_id)` -> chain dict):
    the run budgets are read from, so a retrieval-only run never stands in for the served chain."""
    for obs in reversed(series):
        if (chain_of(obs["run_id"]) or {}).get("answer"):
            return dict(obs)
    return None


def check_stage_failures(failures: Sequence[Mapping]) -> Check:
    """A stage of the night that failed ({stage, run_id, error}) is a critical `stage_failed` alert."""
    alerts = [Alert(kind="stage_failed", severity="critical", metric=f"stage.{f['stage']}",
                    message=f"the {f['stage']} stage failed" + (f" (run {f['run_id']})" if f.get("run_id") else "")
                            + f": {f.get('error') or 'no detail'}",
                    details=dict(f)) for f in failures]
    return Check({"failed_stages": [f["stage"] for f in failures]}, alerts)


# -- alert state: once per condition ------------------------------------------------------------
EVENT_KINDS = frozenset({"stage_failed"})  # each one is news; never deduplicated


def alert_key(alert: Mapping) -> str:
    return f"{alert['kind']}|{alert.get('metric') or ''}"


def alerts_to_send(active: Sequence[Mapping], previous: Mapping[str, Mapping]) -> tuple[list[dict], dict[str, dict]]:
    """Which alerts go to the sinks: a condition when it first appears or its severity changes, an
    `alert_cleared` (info) once when it is gone; a persisting condition is not re-sent every night.
    `previous`: the state the last monitor run kept ({key: {severity, message}}). Returns (to send,
    state to keep)."""
    state, out = {}, []
    for alert in active:
        if alert["kind"] in EVENT_KINDS:
            out.append(dict(alert))
            continue
        key = alert_key(alert)
        state[key] = {"severity": alert["severity"], "message": alert["message"], "kind": alert["kind"],
                      "metric": alert.get("metric")}
        before = previous.get(key)
        if before is None or before.get("severity") != alert["severity"]:
            out.append(dict(alert))
    for key, before in sorted(previous.items()):
        if key not in state:
            out.append({"kind": "alert_cleared", "severity": "info", "metric": before.get("metric"),
                        "message": f"cleared: {before.get('message')}",
                        "details": {"cleared_kind": before.get("kind"), "key": key}})
    return out, state


# -- regression ---------------------------------------------------------------------------------


def check_regression(series: Sequence[Mapping], config: MonitorConfig) -> Check:
    """The windowed regression rule over one series of observations (oldest first).

    A metric regresses when each of the last `window` observations is more than `max_drop` below the
    baseline, the median of up to `baseline_runs` observations before the window. A single bad
    night is never enough (window >= 2 by default); the drop's size sets the severity.
    """
    if len(series) < config.window + 1:
        return Check({"observations": len(series), "checked": [], "reason": f"needs {config.window + 1} observations"}, [])
    window = series[-config.window:]
    before = series[: -config.window]
    names = config.metrics or sorted(window[-1]["metrics"])
    alerts, checked = [], {}
    for name in names:
        current = [o["metrics"].get(name, {}).get("value") for o in window]
        baseline_values = [o["metrics"][name]["value"] for o in before if o["metrics"].get(name, {}).get("value") is not None]
        baseline_values = baseline_values[-config.baseline_runs:]
        if any(v is None for v in current) or not baseline_values:
            continue
        baseline = float(np.median(baseline_values))
        # a lower-is-better metric (degenerate, false_refusal: METRIC_INFO) regresses by rising
        drops = [baseline - v if higher_is_better(name) else v - baseline for v in current]
        checked[name] = {"baseline": round(baseline, 6), "window": [round(v, 6) for v in current],
                         "min_drop": round(min(drops), 6)}
        if min(drops) <= config.max_drop:
            continue
        severity = "critical" if min(drops) > config.critical_drop else "warning"
        highs = [o["metrics"][name].get("ci_high") for o in window]
        lows = [o["metrics"][name].get("ci_low") for o in window]
        beyond_ci = (all(h is not None and h < baseline for h in highs) if higher_is_better(name)
                     else all(lo is not None and lo > baseline for lo in lows))
        values = ", ".join(f"{v:.4f}" for v in current)
        side = "below" if higher_is_better(name) else "above"
        alerts.append(Alert(
            kind="regression", metric=name, severity=severity,
            message=(f"{name} regressed: {values} on the last {len(window)} runs, at least {min(drops):.4f} {side} its "
                     f"baseline {baseline:.4f} (median of {len(baseline_values)} earlier runs; threshold {config.max_drop})"
                     + (f"; every CI lies {side} the baseline" if beyond_ci else "")),
            details={"baseline": baseline, "window": current, "baseline_runs": len(baseline_values),
                     "run_ids": [o["run_id"] for o in window], "ci_high": highs, "beyond_ci": beyond_ci},
        ))
    return Check({"observations": len(series), "checked": checked}, alerts)


def comparable(series: Sequence[Mapping], overlaps: Mapping[str, float], min_overlap: float) -> list[dict]:
    """The observations scored on golden sets that share at least `min_overlap` of the latest set's
    questions (overlaps: golden_set_id -> shared fraction), so a new question set never reads as a drop."""
    return [o for o in series if overlaps.get(o["golden_set_id"], 0.0) >= min_overlap]


def on_shared_items(series: Sequence[Mapping], per_item: Mapping[str, Mapping[str, Mapping[str, float]]],
                    config: MonitorConfig) -> tuple[list[dict], dict]:
    """The observations the regression rule compares, re-averaged over the questions all of them
    scored (per_item: run_id -> qa_id -> {metric: value}), so a golden set that gained or lost items
    between nights cannot read as a drop. Returns ([] and the reason) when too few are shared."""
    considered = list(series[-(config.window + config.baseline_runs):])
    if not considered:
        return [], {"shared_items": 0}
    sets = [set(per_item.get(o["run_id"], {})) for o in considered]
    shared = set.intersection(*sets)
    latest = len(sets[-1])
    info = {"shared_items": len(shared), "latest_items": latest, "compared_runs": len(considered)}
    if not shared or len(shared) < config.min_golden_overlap * latest:
        return [], {**info, "reason": f"only {len(shared)} of {latest} questions are shared by the compared runs"}
    out = []
    for o in considered:
        items = per_item[o["run_id"]]
        names = sorted({m for q in shared for m in items[q]})
        metrics = {}
        for name in names:
            values = [items[q][name] for q in shared if name in items[q] and items[q][name] is not None]
            if values:
                metrics[name] = {"value": float(np.mean(values)), "ci_low": None, "ci_high": None}
        out.append({**o, "metrics": metrics})
    return out, info


# -- drift --------------------------------------------------------------------------------------


def check_corpus_drift(previous: Mapping[str, str] | None, current: Mapping[str, str],
                       previous_lengths: Sequence[float], current_lengths: Sequence[float], config: MonitorConfig) -> Check:
    """Documents added/removed/changed between two snapshots ({doc_id: content_sha256}) and the shift of
    their length distribution (two-sample Kolmogorov-Smirnov statistic)."""
    if previous is None:
        return Check({"documents": len(current), "baseline": True}, [])
    added = len(current.keys() - previous.keys())
    removed = len(previous.keys() - current.keys())
    changed = sum(1 for d in current.keys() & previous.keys() if current[d] != previous[d])
    fraction = (added + removed + changed) / max(len(previous), 1)
    figures = {"documents": len(current), "previous_documents": len(previous), "added": added, "removed": removed,
               "changed": changed, "change_fraction": round(fraction, 6)}
    alerts = []
    if fraction > config.max_corpus_change:
        alerts.append(Alert(
            kind="corpus_drift", severity="warning", metric="corpus.change_fraction",
            message=(f"corpus changed by {fraction:.1%} since the last monitored snapshot (+{added} added, -{removed} "
                     f"removed, ~{changed} changed of {len(previous)}; threshold {config.max_corpus_change:.0%})"),
            details=dict(figures)))
    if len(previous_lengths) and len(current_lengths):
        ks = stats.ks_2samp(np.asarray(previous_lengths, float), np.asarray(current_lengths, float))
        figures.update({"length_ks": round(float(ks.statistic), 6), "length_p_value": float(ks.pvalue),
                        "length_median_previous": float(np.median(previous_lengths)),
                        "length_median": float(np.median(current_lengths))})
        if ks.statistic > config.max_length_shift:
            alerts.append(Alert(
                kind="length_drift", severity="warning", metric="corpus.length_ks",
                message=(f"document length distribution shifted: KS {ks.statistic:.3f} > {config.max_length_shift} "
                         f"(median {figures['length_median_previous']:.0f} -> {figures['length_median']:.0f} characters)"),
                details={k: figures[k] for k in ("length_ks", "length_p_value", "length_median_previous", "length_median")}))
    return Check(figures, alerts)


def check_embedding_drift(previous: np.ndarray | None, current: np.ndarray, config: MonitorConfig,
                          replaced_fraction: float | None = None) -> Check:
    """Shift of the chunk-vector distribution between two table versions: the cosine distance between
    the centroids of the (normalized) vectors, plus the share of chunks not present before."""
    if previous is None or len(previous) == 0 or len(current) == 0:
        return Check({"vectors": int(len(current)), "baseline": True}, [])
    shift = _centroid_distance(previous, current)
    figures = {"vectors": int(len(current)), "previous_vectors": int(len(previous)), "centroid_shift": round(shift, 6)}
    if replaced_fraction is not None:
        figures["replaced_fraction"] = round(replaced_fraction, 6)
    alerts = []
    if shift > config.max_embedding_shift:
        alerts.append(Alert(
            kind="embedding_drift", severity="warning", metric="embedding.centroid_shift",
            message=(f"chunk embeddings shifted: centroid cosine distance {shift:.4f} > {config.max_embedding_shift} "
                     "between the previous and the current table version"),
            details=dict(figures)))
    return Check(figures, alerts)


def _centroid_distance(a: np.ndarray, b: np.ndarray) -> float:
    def centroid(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
        return v.mean(axis=0)

    ca, cb = centroid(a), centroid(b)
    denom = np.linalg.norm(ca) * np.linalg.norm(cb)
    return float(1.0 - (ca @ cb) / denom) if denom > 0 else 0.0


def check_retrieval_drift(previous: Sequence[float] | None, current: Sequence[float], config: MonitorConfig) -> Check:
    """Shift of the top-1 retrieval similarity of the golden questions: median drop and KS statistic."""
    if not len(current):
        return Check({"questions": 0}, [])
    cur = np.asarray(current, dtype=float)
    figures = {"questions": int(cur.size), "top1_median": round(float(np.median(cur)), 6),
               "top1_p10": round(float(np.percentile(cur, 10)), 6)}
    if previous is None or not len(previous):
        return Check({**figures, "baseline": True}, [])
    prev = np.asarray(previous, dtype=float)
    drop = float(np.median(prev) - np.median(cur))
    ks = stats.ks_2samp(prev, cur)
    figures.update({"top1_median_previous": round(float(np.median(prev)), 6), "top1_median_drop": round(drop, 6),
                    "top1_ks": round(float(ks.statistic), 6)})
    alerts = []
    if drop > config.max_top1_drop:
        alerts.append(Alert(
            kind="retrieval_drift", severity="warning", metric="retrieval.top1_median",
            message=(f"top-1 retrieval similarity fell: median {np.median(prev):.3f} -> {np.median(cur):.3f} "
                     f"(drop {drop:.3f} > {config.max_top1_drop}; KS {ks.statistic:.3f})"),
            details=dict(figures)))
    return Check(figures, alerts)


def check_validations(validation: Mapping[str, Mapping] | None, run_id: str | None) -> Check:
    """A great-expectations suite that failed on the last index run is a critical alert."""
    figures, alerts = {}, []
    for suite, result in sorted((validation or {}).items()):
        figures[suite] = {"success": bool(result.get("success")), "evaluated": result.get("evaluated"),
                          "failures": result.get("failures") or []}
        if not result.get("success"):
            failures = result.get("failures") or []
            alerts.append(Alert(
                kind="ge_failure", severity="critical", metric=f"ge.{suite}",
                message=f"great-expectations suite '{suite}' failed on index run {run_id}: "
                        + ("; ".join(str(f) for f in failures[:5]) or "no detail"),
                details={"suite": suite, "run_id": run_id, "failures": failures}))
    return Check(figures, alerts)


def check_stale_references(eval_summary: Mapping | None) -> Check:
    """Golden items whose references the evaluated index no longer holds (left out of IR metrics by the
    eval) are a warning: the golden-set line needs a refresh or a review."""
    stale = (eval_summary or {}).get("stale_references") or {}
    n, total = int(stale.get("items") or 0), int(((eval_summary or {}).get("items") or {}).get("total") or 0)
    figures = {"items": n, "of": total, "references": int(stale.get("references") or 0)}
    alerts = []
    if n:
        alerts.append(Alert(
            kind="stale_references", severity="warning", metric="stale_references",
            message=(f"{n} of {total} golden items of eval run {eval_summary.get('run_id')} reference chunks or documents "
                     f"the index no longer holds (e.g. {', '.join(stale.get('qa_ids') or [])}); they were left out of "
                     "those IR metrics: refresh or review the golden-set line"),
            details={"run_id": eval_summary.get("run_id"), "golden_line": eval_summary.get("golden_line"), **figures}))
    return Check(figures, alerts)


# -- budgets ------------------------------------------------------------------------------------


def budget_figures(traces: Sequence[Mapping], items: int, price_per_1k_tokens: float) -> dict:
    """Cost and latency of one eval run from its traces (one row per step per item): p50/p95 item
    latency in seconds (all steps of an item summed), tokens (prompt + completion), tokens per item,
    cost = tokens / 1000 * price."""
    per_item_ms: dict[str, float] = {}
    tokens = 0
    for t in traces:
        per_item_ms[t["qa_id"]] = per_item_ms.get(t["qa_id"], 0.0) + float(t.get("latency_ms") or 0.0)
        tokens += int(t.get("prompt_tokens") or 0) + int(t.get("completion_tokens") or 0)
    latencies = np.asarray(list(per_item_ms.values()) or [0.0]) / 1000.0
    n = max(items, 1)
    cost = tokens / 1000.0 * price_per_1k_tokens
    return {"items": items, "item_latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
            "item_latency_p95_s": round(float(np.percentile(latencies, 95)), 3), "tokens": tokens,
            "tokens_per_item": round(tokens / n, 1), "cost": round(cost, 6)}


def check_budgets(traces: Sequence[Mapping], items: int, config: MonitorConfig) -> Check:
    """Latency and token/cost budgets of one eval run, from its traces (one row per step per item)."""
    figures = budget_figures(traces, items, config.price_per_1k_tokens)
    cost = figures["cost"]
    alerts = []
    if config.max_item_latency_p95_s is not None and figures["item_latency_p95_s"] > config.max_item_latency_p95_s:
        alerts.append(Alert(kind="latency_budget", severity="warning", metric="budget.item_latency_p95_s",
                            message=f"p95 item latency {figures['item_latency_p95_s']:.1f} s is over its budget "
                                    f"{config.max_item_latency_p95_s} s", details=dict(figures)))
    if config.max_tokens_per_item is not None and figures["tokens_per_item"] > config.max_tokens_per_item:
        alerts.append(Alert(kind="token_budget", severity="warning", metric="budget.tokens_per_item",
                            message=f"{figures['tokens_per_item']:.0f} tokens per item is over its budget "
                                    f"{config.max_tokens_per_item}", details=dict(figures)))
    if config.max_cost_per_run is not None and cost > config.max_cost_per_run:
        alerts.append(Alert(kind="cost_budget", severity="critical", metric="budget.cost",
                            message=f"eval cost {cost:.4f} is over its budget {config.max_cost_per_run}",
                            details=dict(figures)))
    return Check(figures, alerts)


def golden_overlap(latest_ids: set[str], other_ids: set[str]) -> float:
    """Share of the latest golden set's questions that another golden set also holds."""
    return len(latest_ids & other_ids) / len(latest_ids) if latest_ids else 0.0
