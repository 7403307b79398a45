"""The monitor's HTML report with its PNG plots, and the markdown the Prefect artifacts show (pure).

render_report() returns {file name: bytes}; tasks/storage.py decides where they go. Every value from
the lake (questions, answers, document text in traces) is HTML-escaped by the template engine.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import jinja2
import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

from ragloop.tasks.metrics import higher_is_better, metric_range  # noqa: E402

PREFERRED = ("ndcg@10", "ndcg@5", "hit@5", "recall@10", "recall@5", "mrr@10", "mrr@5", "semantic_similarity",
             "rouge_l", "refusal_correct", "refusal_recall", "grounded", "degenerate", "faithfulness", "answer_relevancy")
MAX_TREND_METRICS = 8
REFUSAL_METRICS = ("refusal_recall", "false_refusal", "degenerate")


@dataclass
class ReportData:
    run_id: str
    at: str
    status: str
    lake: str
    alerts: list[dict]
    series: list[dict]  # observations (monitoring.observations), oldest first
    latest_eval: dict | None  # the latest observed eval run's summary (outputs + lineage)
    worst_items: list[dict]  # [{qa_id, qa_type, question, answer, score, metric, retrieved_chunk_ids, error, traces}]
    checks: dict[str, dict]  # check name -> figures
    # check name -> (plot name, previous values or None, current values): drawn under that check's panel
    distributions: dict[str, tuple[str, Sequence[float] | None, Sequence[float]]] = field(default_factory=dict)
    deliveries: list[dict] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)  # configured headline metrics; empty = chosen here
    watched: dict | None = None  # the series watched: {golden_line, chain_hash, chain_label}
    experiments: list[dict] = field(default_factory=list)  # experiment observations, listed apart
    golden: dict | None = None  # `golden report` of the latest eval's golden set (tasks.golden_quality), None if unread
    production: dict | None = None  # the production section (tasks.production.ProductionPass.report), None without logs


def worst_item(row: Mapping, golden: Mapping, metric: str | None, texts: Mapping[str, Mapping],
               traces: Sequence[Mapping]) -> dict:
    """One worst item as the report shows it: question, reference answer, the chain's answer, and the
    retrieved and expected chunks with their document, heading trail and text (`texts`: chunk_id ->
    {doc_id, headings, text}), so a person can see why it failed without opening Parquet."""
    def chunk(chunk_id: str, expected: set[str]) -> dict:
        found = texts.get(chunk_id) or {}
        return {"chunk_id": chunk_id, "doc_id": found.get("doc_id", "(not in the evaluated index)"),
                "headings": " › ".join(found.get("headings") or []), "text": found.get("text") or "",
                "relevant": chunk_id in expected}

    expected = set(golden.get("reference_chunk_ids") or [])
    metrics = row.get("metrics") or {}
    return {"qa_id": row["qa_id"], "qa_type": row["qa_type"], "question": row["question"], "answer": row["answer"],
            "reference_answer": golden.get("reference_answer") or "",
            "reference_doc_ids": list(golden.get("reference_doc_ids") or []),
            "metric": metric if metric in metrics else "failed" if row["status"] == "failed" else "-",
            "score": float(metrics.get(metric, 0.0)) if metric else 0.0,
            "retrieved": [chunk(c, expected) for c in row.get("retrieved_chunk_ids") or []],
            "expected_missing": [chunk(c, expected) for c in sorted(expected - set(row.get("retrieved_chunk_ids") or []))],
            "stale_references": list(row.get("stale_references") or []),
            "error": row.get("error"), "traces": list(traces)}


def figure_rows(figures: Mapping) -> list[dict]:
    """A check's figures as table rows a person can read: scalars as values, a mapping of mappings as a
    nested table (one row per key), lists joined; never a cell of raw JSON."""
    rows = []
    for key, value in figures.items():
        if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            columns = sorted({c for v in value.values() for c in v})
            rows.append({"key": key, "table": {"columns": columns, "rows": [
                [name] + [_cell(v.get(c)) for c in columns] for name, v in value.items()]}})
        elif isinstance(value, Mapping):
            rows.append({"key": key, "value": ", ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "-"})
        else:
            rows.append({"key": key, "value": _cell(value)})
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


def run_label(obs: Mapping) -> str:
    """An x-axis label for an observation: the short run id (time and suffix) and the chain."""
    run_id = str(obs.get("observation_id") or obs.get("run_id") or "")
    short = run_id[4:13].replace("T", " ") + " " + run_id.rsplit("-", 1)[-1][:4] if "-" in run_id else run_id[:12]
    return short + (f"\n{obs['chain_label']}" if obs.get("chain_label") else "")


def headline_metrics(available: Sequence[str], configured: Sequence[str] = ()) -> list[str]:
    """The metrics the report leads with: the configured ones, else the usual IR and answer metrics
    the run has (ndcg/hit/recall/mrr at the largest cutoff, then answer metrics)."""
    if configured:
        return [m for m in configured if m in available]
    chosen = []
    for family in ("ndcg@", "hit@", "recall@", "mrr@"):
        cutoffs = sorted((int(m.split("@")[1]), m) for m in available if m.startswith(family) and m.split("@")[1].isdigit())
        if cutoffs:
            chosen.append(cutoffs[-1][1])
    chosen += [m for m in PREFERRED if "@" not in m and m in available]
    chosen += [m for m in sorted(available) if m not in chosen and not m.startswith(("chunk_", "hit@", "ndcg@", "recall@", "mrr@"))]
    return chosen[:MAX_TREND_METRICS]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _trend_plot(series: Sequence[Mapping], names: Sequence[str]) -> bytes:
    cols = 2 if len(names) > 1 else 1
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 2.6 * rows), squeeze=False)
    xs = list(range(len(series)))
    labels = [run_label(o) for o in series]
    # a new golden-set version between two observations: marked, so a step is not read as a drift
    changes = [x for x in xs[1:] if series[x]["golden_set_id"] != series[x - 1]["golden_set_id"]]
    for ax, name in zip(axes.flat, names):
        points = [(x, o["metrics"].get(name)) for x, o in zip(xs, series) if o["metrics"].get(name, {}).get("value") is not None]
        if points:
            px = [x for x, _ in points]
            values = [m["value"] for _, m in points]
            low = [m["ci_low"] if m["ci_low"] is not None else m["value"] for _, m in points]
            high = [m["ci_high"] if m["ci_high"] is not None else m["value"] for _, m in points]
            if len(px) > 1:
                ax.fill_between(px, low, high, alpha=0.2, color="#4C72B0", label="95% CI")
            ax.errorbar(px, values, yerr=[[v - lo for v, lo in zip(values, low)], [hi - v for v, hi in zip(values, high)]],
                        marker="o", color="#4C72B0", ecolor="#7F9CC9", capsize=3, label=name)
        for x in changes:
            ax.axvline(x - 0.5, color="#B45309", linestyle="--", linewidth=1)
            ax.annotate("golden set changed", (x - 0.5, 1.0), fontsize=6, color="#B45309", rotation=90, va="top", ha="right")
        ax.set_title(name if higher_is_better(name) else f"{name} (lower is better)", fontsize=10)
        ax.set_ylim(*_padded(metric_range(name), 0.02))
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def _by_type_plot(by_type: Mapping[str, Mapping], names: Sequence[str]) -> bytes:
    types = sorted(by_type)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(types) + 2), 3.2))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [by_type[t]["metrics"].get(name, float("nan")) for t in types]  # missing: no bar, not a zero
        ax.bar([x + i * width for x in range(len(types))], values, width=width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(types))])
    ax.set_xticklabels([f"{t}\n(n={by_type[t].get('n', '?')})" for t in types], fontsize=8)
    low = min(metric_range(n)[0] for n in names)
    high = max(metric_range(n)[1] for n in names)
    if math.isfinite(low) and math.isfinite(high):
        ax.set_ylim(low, high + 0.05 * (high - low))
    ax.legend(fontsize=7, ncol=min(len(names), 4))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


PRODUCTION_RATES = ("uncovered", "negative_rate", "feedback_rate", "refusal", "degenerate", "grounded")


def _production_plot(by_day: Mapping[str, Mapping]) -> bytes:
    """Per day: the production rates (0-1) on the left, latency p50/p95 (ms) on the right."""
    days = sorted(by_day)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.4, 3.0))
    for name in PRODUCTION_RATES:
        points = [(i, by_day[d][name]) for i, d in enumerate(days) if by_day[d].get(name) is not None]
        if points:
            left.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    left.set_ylim(-0.02, 1.02)
    left.set_title("rates per day", fontsize=10)
    for name in ("latency_p50_ms", "latency_p95_ms"):
        points = [(i, by_day[d][name]) for i, d in enumerate(days) if by_day[d].get(name) is not None]
        if points:
            right.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    right.set_title("latency per day (ms)", fontsize=10)
    for ax in (left, right):
        ax.set_xticks(range(len(days)))
        ax.set_xticklabels(days, rotation=45, ha="right", fontsize=6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def _padded(bounds: tuple[float, float], share: float) -> tuple[float | None, float | None]:
    """A plot's y limits: the metric's range widened by `share` of it on each side (None for an open end)."""
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        return (low if math.isfinite(low) else None), (high if math.isfinite(high) else None)
    return low - share * (high - low), high + share * (high - low)


def _histogram(previous: Sequence[float] | None, current: Sequence[float], xlabel: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6.2, 2.8))
    data = [list(current)] + ([list(previous)] if previous is not None and len(previous) else [])
    lo = min(min(d) for d in data if d)
    hi = max(max(d) for d in data if d)
    bins = 30 if hi > lo else 1
    if previous is not None and len(previous):
        ax.hist(previous, bins=bins, range=(lo, hi) if hi > lo else None, alpha=0.5, label=f"previous (n={len(previous)})", color="#999999")
    ax.hist(current, bins=bins, range=(lo, hi) if hi > lo else None, alpha=0.6, label=f"current (n={len(current)})", color="#4C72B0")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ragloop report {{ d.run_id }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}.wide{overflow-x:auto}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}.num{text-align:right;font-variant-numeric:tabular-nums}
.critical{background:#fde2e1}.warning{background:#fff4d6}.info{background:#e8f1fb}.ok{color:#1a7f37}.bad{color:#b42318}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:6px;font-size:12px;max-height:220px;overflow:auto}
details{margin:6px 0}img{max-width:100%}.muted{color:#777;font-size:12px}
</style></head><body>
<h1>ragloop quality report</h1>
<p class="muted">monitor run {{ d.run_id }} · {{ d.at }} · lake {{ d.lake }} · status {{ d.status }}</p>

<h2>Alerts ({{ d.alerts|length }})</h2>
{% if d.alerts %}<table><tr><th>severity</th><th>kind</th><th>metric</th><th>message</th></tr>
{% for a in d.alerts %}<tr class="{{ a.severity }}"><td>{{ a.severity }}</td><td>{{ a.kind }}</td><td>{{ a.metric or "" }}</td><td>{{ a.message }}</td></tr>
{% endfor %}</table>{% else %}<p class="ok">No alerts: no persistent regression, drift, failed validation or budget overrun.</p>{% endif %}
{% if d.deliveries %}<p class="muted">sinks: {% for s in d.deliveries %}{{ s.sink }} {{ s.status }}{% if s.error %} ({{ s.error }}){% endif %}{% if not loop.last %} · {% endif %}{% endfor %}</p>{% endif %}

<h2>Latest evaluation</h2>
{% if latest %}
<p>eval run <b>{{ latest.run_id }}</b> · golden set {{ latest.golden_set_id }} · {{ latest["items"].total }} items ({{ latest["items"].failed }} failed) · gate {{ latest.gate.status if latest.gate else "n/a" }}</p>
<table><tr><th>metric</th><th class="num">value</th><th class="num">95% CI</th><th class="num">n</th><th class="num">Δ previous run</th></tr>
{% for m in headline %}<tr><td>{{ m.name }}{% if not m.higher_is_better %} <span class="muted">(lower is better)</span>{% endif %}</td><td class="num">{{ "%.4f"|format(m.value) }}</td>
<td class="num">{% if m.ci %}[{{ "%.4f"|format(m.ci[0]) }}, {{ "%.4f"|format(m.ci[1]) }}]{% endif %}</td><td class="num">{{ m.n or "" }}</td>
<td class="num {{ 'bad' if m.worse else '' }}">{{ "%+.4f"|format(m.delta) if m.delta is not none else "" }}</td></tr>
{% endfor %}</table>
{% if latest.gate and latest.gate.calibration %}<h3>Judges</h3>
<p class="muted">A judged metric gates only when its judge agrees with people (<code>ragloop calibrate</code>, gate.calibration).</p>
<table><tr><th>metric</th><th>gated</th><th class="num">labels</th><th class="num">kappa [95% CI]</th><th>why</th></tr>
{% for name, c in latest.gate.calibration.items() %}<tr><td>{{ name }}</td><td class="{{ 'ok' if c.gated else 'bad' }}">{{ "yes" if c.gated else "no: reported only" }}</td>
<td class="num">{{ c.get("n") if c.get("n") is not none else "" }}</td><td class="num">{% if c.get("kappa") is not none %}{{ "%.2f"|format(c.kappa) }}{% if c.get("kappa_ci") %} [{{ "%.2f"|format(c.kappa_ci[0]) }}, {{ "%.2f"|format(c.kappa_ci[1]) }}]{% endif %}{% endif %}</td><td>{{ c.reason }}</td></tr>
{% endfor %}</table>{% endif %}
{% if latest.estimates %}<h3>Share of answers people would pass</h3>
<p class="muted">Plain: the judge's verdicts over every item. Labels only: the human grades alone. PPI: the judge over every item, its bias corrected by the graded ones (prediction-powered inference, ppi-python); valid when the graded items are a random sample.</p>
<table><tr><th>metric</th><th class="num">graded / not</th><th class="num">plain judge [CI] width</th><th class="num">labels only [CI] width</th><th class="num">PPI [CI] width</th></tr>
{% for name, e in latest.estimates.items() %}<tr><td>{{ name }}</td><td class="num">{{ e.n_labelled }} / {{ e.n_unlabelled }}</td>
{% for key in ("judge", "human", "ppi") %}<td class="num">{% if e.get(key) %}{{ "%.3f"|format(e[key].estimate) }} [{{ "%.3f"|format(e[key].ci[0]) }}, {{ "%.3f"|format(e[key].ci[1]) }}] {{ "%.3f"|format(e[key].width) }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}
{% else %}<p>No eval run observed yet: run <code>ragloop eval</code> or <code>ragloop run</code>.</p>{% endif %}

<h2>Trends</h2>
{% if d.watched %}<p>Watched series: golden-set line <b>{{ d.watched.golden_line or "?" }}</b>, chain <b>{{ d.watched.chain_label or "?" }}</b>
<span class="muted">({{ (d.watched.chain_hash or "")[:12] }})</span>: what the nightly, the prompt-changed flow or an explicit promotion evaluated last.</p>{% endif %}
{% if images.trends %}<p class="muted">{{ d.series|length }} observations of this series (one per eval run, and one per night that reused an unchanged eval); shaded: 95% bootstrap CI; dashed: the golden set changed.</p>
<img src="{{ images.trends }}" alt="metric trends">{% else %}<p>No history yet.</p>{% endif %}
<h3>Experiments ({{ d.experiments|length }})</h3>
{% if d.experiments %}<p class="muted">Evals that did not score what is served when they ran: experiments, a <code>--promote</code>
that the gate did not promote, and nightly runs of a candidate index that stayed a candidate. Compared with the baseline, never
part of the series above (<code>ragloop promote RUN_ID</code> can still promote a passed one later).</p>
<table><tr><th>run</th><th>mode</th><th>chain</th><th>golden line</th>{% for m in experiment_metrics %}<th class="num">{{ m }}</th>{% endfor %}</tr>
{% for o in d.experiments %}<tr><td>{{ o.run_id }}</td><td>{{ o.mode }}</td><td>{{ o.chain_label or "" }}</td><td>{{ o.golden_line or "" }}</td>{% for m in experiment_metrics %}<td class="num">{% if m in o.metrics and o.metrics[m].value is not none %}{{ "%.4f"|format(o.metrics[m].value) }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>{% else %}<p class="muted">None.</p>{% endif %}

<h2>By question type</h2>
{% if by_type %}{% if images.by_type %}<img src="{{ images.by_type }}" alt="metrics by question type">{% endif %}
<table><tr><th>type</th><th class="num">n</th>{% for name in type_metrics %}<th class="num">{{ name }}</th>{% endfor %}</tr>
{% for t, group in by_type %}<tr><td>{{ t }}</td><td class="num">{{ group.n }}</td>{% for name in type_metrics %}<td class="num">{% if name in group.metrics %}{{ "%.3f"|format(group.metrics[name]) }}{% if group.ci and name in group.ci %}<br><span class="muted">[{{ "%.2f"|format(group.ci[name][0]) }}, {{ "%.2f"|format(group.ci[name][1]) }}]</span>{% endif %}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>{% else %}<p>No per-type results.</p>{% endif %}

<h2>Golden set</h2>
{% if d.golden %}{% set g = d.golden %}<p>{{ g.golden_set_id }}{% if g.line %} (line {{ g.line }}){% endif %}: {{ g["items"].active }} active of {{ g["items"].total }} items.
Evidence-supported: {{ g.evidence_supported["items"] }} of {{ g.evidence_supported.of }} answerable items (grounding, not correctness: read the sample).
Coverage: {{ g.coverage.documents }} of {{ g.coverage.of }} indexed documents.
Duplicates ({{ g.duplicates.measure }}): {{ g.duplicates["items"] }} of {{ g.duplicates.of }}.</p>
<table><tr><th>type</th><th class="num">active</th><th class="num">total</th>{% if g.generation and g.generation.per_type %}<th class="num">accepted / attempted (last synth)</th>{% endif %}</tr>
{% for t, n in g.by_type.items() %}<tr><td>{{ t }}</td><td class="num">{{ n.active }}</td><td class="num">{{ n.total }}</td>{% if g.generation and g.generation.per_type %}<td class="num">{% if t in g.generation.per_type %}{{ g.generation.per_type[t].accepted }} / {{ g.generation.per_type[t].attempted }}{% endif %}</td>{% endif %}</tr>
{% endfor %}</table>
{% if g.generation and g.generation.per_type %}{% set unaccepted = [] %}{% for t, n in g.generation.per_type.items() %}{% if n.accepted == 0 %}{% do unaccepted.append(t ~ " 0 / " ~ n.attempted) %}{% endif %}{% endfor %}{% if unaccepted %}<p class="warning">Attempted, none accepted: {{ unaccepted|join(", ") }}</p>{% endif %}{% endif %}
{% if g.generation and g.generation.rejects %}<p>Rejects: {% for r, n in g.generation.rejects.items() %}{{ r }} {{ n }}{% if not loop.last %}, {% endif %}{% endfor %}</p>{% endif %}
<table><tr><th>folder</th><th class="num">documents with an item</th><th class="num">of</th></tr>
{% for f, c in g.coverage.by_folder.items() %}<tr><td>{{ f }}</td><td class="num">{{ c.documents }}</td><td class="num">{{ c.of }}</td></tr>{% endfor %}</table>
{% for s in g.sample %}<details><summary>{{ s.qa_type }} · {{ s.question }}</summary><table><tr><th>answer</th><td>{{ s.answer }}</td></tr>
{% for e in s.evidence %}<tr><th>evidence {{ e.chunk_id[:12] }}</th><td>{{ e.window }}</td></tr>{% else %}<tr><th>evidence</th><td class="muted">none</td></tr>{% endfor %}</table></details>
{% endfor %}{% else %}<p class="muted">Not read (no evaluated golden set, or no index to read it against).</p>{% endif %}

<h2>Production</h2>
{% if d.production %}{% set p = d.production %}{% set f = p.figures %}
<p>{{ f.window_logs }} logged answers over {{ f.days }} days ({{ f.first_day }} to {{ f.last_day }}), no reference needed: ragloop's
degenerate/grounded checks, refusals, question-to-first-context similarity, latency, tokens and feedback{% if f.day %}; alerts judge {{ f.day }}{% endif %}.
{% if f.reason %}<span class="muted">{{ f.reason }}</span>{% endif %}
Coverage: {% if f.coverage %}{{ f.coverage }}{% else %}a question is covered when an active golden question ({{ f.golden_questions }}) is within the cosine threshold{% endif %}.</p>
{% if images.production %}<img src="{{ images.production }}" alt="production trends per day">{% endif %}
<div class="wide"><table><tr><th>day</th>{% for c in production_columns %}<th class="num">{{ c }}</th>{% endfor %}</tr>
{% for day, row in p.by_day|dictsort %}<tr><td>{{ day }}</td>{% for c in production_columns %}<td class="num">{{ row[c]|cell }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
<h3>What users ask that the golden set does not cover ({{ p.topics|length }} topics, {{ f.uncovered_checked }} uncovered questions checked)</h3>
{% if p.topics %}<table><tr><th>topic (its most distinctive words)</th><th class="num">questions</th><th class="num">share of uncovered</th><th>days</th><th>example questions</th></tr>
{% for t in p.topics %}<tr><td><b>{{ t.label }}</b></td><td class="num">{{ t.size }}</td><td class="num">{{ "%.0f%%"|format(100 * t.share) }}</td>
<td>{% for day, n in t.days.items() %}{{ day }}: {{ n }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td><ul>{% for q in t.examples %}<li>{{ q }}</li>{% endfor %}</ul></td></tr>
{% endfor %}</table><p class="muted">Uncovered questions are candidates in the review app's production queue (<code>ragloop review</code>), with questions people rated down.</p>
{% else %}<p class="muted">None: no group of uncovered questions large enough to name.</p>{% endif %}
{% else %}<p class="muted">No production logs in this lake (<code>ragloop logs import FILE</code>).</p>{% endif %}

<h2>Worst items</h2>
{% if d.worst_items %}{% for item in d.worst_items %}<details{% if loop.first %} open{% endif %}><summary><b>{{ item.metric }} {{ "%.3f"|format(item.score) }}</b> · {{ item.qa_type }} · {{ item.question }}</summary>
<table><tr><th>question</th><td>{{ item.question }}</td></tr>
<tr><th>reference answer</th><td>{{ item.reference_answer or "(none)" }}</td></tr>
<tr><th>answer</th><td>{{ item.answer if item.answer is not none else "(no answer step)" }}</td></tr>
<tr><th>expected documents</th><td>{{ item.reference_doc_ids|join(", ") or "(none: must be refused)" }}</td></tr>
{% if item.stale_references %}<tr><th>stale references</th><td class="bad">{{ item.stale_references|join(", ") }} (not in the evaluated index)</td></tr>{% endif %}
{% if item.error %}<tr><th>error</th><td class="bad">{{ item.error }}</td></tr>{% endif %}<tr><th>qa_id</th><td class="muted">{{ item.qa_id }}</td></tr></table>
<table><tr><th>#</th><th>retrieved document</th><th>headings</th><th>text</th></tr>
{% for c in item.retrieved %}<tr class="{{ 'ok' if c.relevant else '' }}"><td class="num">{{ loop.index }}{% if c.relevant %} ✓{% endif %}</td><td>{{ c.doc_id }}</td><td>{{ c.headings }}</td><td><pre>{{ c.text[:700] }}</pre></td></tr>
{% else %}<tr><td colspan="4">nothing retrieved</td></tr>{% endfor %}
{% for c in item.expected_missing %}<tr class="warning"><td>missed</td><td>{{ c.doc_id }}</td><td>{{ c.headings }}</td><td><pre>{{ c.text[:700] }}</pre></td></tr>{% endfor %}</table>
{% if item.traces %}<table><tr><th>step</th><th class="num">ms</th><th class="num">tokens</th><th>output</th><th>error</th></tr>
{% for t in item.traces %}<tr><td>{{ t.step }}</td><td class="num">{{ "%.0f"|format(t.latency_ms or 0) }}</td><td class="num">{{ (t.prompt_tokens or 0) + (t.completion_tokens or 0) }}</td><td><pre>{{ (t.output or "")[:600] }}</pre></td><td>{{ t.error or "" }}</td></tr>
{% endfor %}</table>{% endif %}</details>
{% endfor %}{% else %}<p>No item results.</p>{% endif %}

<h2>Checks</h2>
{% for name, rows in check_rows %}<h3>{{ name }}</h3>
<table>{% for r in rows %}<tr><th>{{ r.key }}</th><td class="num">{% if r.table %}<table><tr><th></th>{% for c in r.table.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in r.table.rows %}<tr>{% for v in row %}<td class="num">{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% else %}{{ r.value }}{% endif %}</td></tr>{% endfor %}</table>
{% if images[name] %}<img src="{{ images[name] }}" alt="{{ name }} distribution">{% endif %}
{% endfor %}

<h2>Lineage of the latest evaluation</h2>
{% if latest %}<pre>{{ lineage }}</pre>{% else %}<p>None yet.</p>{% endif %}
</body></html>
"""

# Lenient undefined: an optional field missing from an older run renders empty rather than losing the report.
_ENV = jinja2.Environment(autoescape=True, extensions=["jinja2.ext.do"])
_ENV.filters["cell"] = lambda value: _cell(value)


def render_report(d: ReportData) -> dict[str, bytes]:
    """{"report.html": ..., "<plot>.png": ...}: the HTML refers to the PNGs by relative name."""
    files: dict[str, bytes] = {}
    images: dict[str, str | None] = {"trends": None, "by_type": None}
    available = sorted({m for o in d.series for m in o["metrics"]})
    names = headline_metrics(available, d.metrics)
    if d.series and names:
        files["trends.png"] = _trend_plot(d.series, names)
        images["trends"] = "trends.png"
    latest = d.latest_eval
    headline, by_type, type_metrics = [], [], []
    if latest:
        metrics, cis, counts = latest.get("metrics") or {}, latest.get("ci") or {}, latest.get("n") or {}
        previous = d.series[-2]["metrics"] if len(d.series) > 1 else {}
        for name in headline_metrics(sorted(metrics), d.metrics) or sorted(metrics):
            before = (previous.get(name) or {}).get("value")
            delta = metrics[name] - before if before is not None else None
            higher = higher_is_better(name)
            headline.append({"name": name, "value": metrics[name], "ci": cis.get(name), "n": counts.get(name),
                             "delta": delta, "higher_is_better": higher,
                             "worse": delta is not None and (delta < 0 if higher else delta > 0)})
        groups = latest.get("by_type") or {}
        by_type = sorted(groups.items())
        type_names = sorted({m for g in groups.values() for m in g.get("metrics", {})})
        type_metrics = headline_metrics(type_names, d.metrics)[:6]
        # refusal is judged per side: the unanswerable row would otherwise be blank (no IR references)
        type_metrics += [m for m in REFUSAL_METRICS if m in type_names and m not in type_metrics]
        if groups and type_metrics:
            files["by_type.png"] = _by_type_plot(groups, type_metrics[:4])
            images["by_type"] = "by_type.png"
    for check, (plot, previous_values, current_values) in d.distributions.items():
        if current_values is not None and len(current_values):
            files[f"{plot}.png"] = _histogram(previous_values, current_values, plot.replace("_", " "))
            images[check] = f"{plot}.png"
    production_columns: list[str] = []
    if d.production and d.production.get("by_day"):
        files["production.png"] = _production_plot(d.production["by_day"])
        images["production"] = "production.png"
        production_columns = [c for c in next(iter(d.production["by_day"].values()))]
    for name in d.checks:
        images.setdefault(name, None)
    experiment_metrics = headline_metrics(sorted({m for o in d.experiments for m in o["metrics"]}), d.metrics)[:4]
    check_rows = [(name, figure_rows({k: v for k, v in figures.items() if not (name == "production" and k == "by_day")}))
                  for name, figures in d.checks.items()]
    html = _ENV.from_string(TEMPLATE).render(
        d=d, latest=latest, headline=headline, by_type=by_type, type_metrics=type_metrics, images=images,
        experiment_metrics=experiment_metrics, check_rows=check_rows, production_columns=production_columns,
        lineage=json.dumps((latest or {}).get("lineage") or {}, indent=2, sort_keys=True, default=str))
    files["report.html"] = html.encode("utf-8")
    return files


def markdown_summary(d: ReportData, report_path: str | None) -> str:
    """The same headline numbers as the HTML report, as markdown for a Prefect artifact."""
    lines = [f"# ragloop monitor {d.run_id}", ""]
    latest = d.latest_eval
    if latest:
        metrics, cis = latest.get("metrics") or {}, latest.get("ci") or {}
        lines += [f"Latest eval **{latest.get('run_id')}** on golden set `{latest.get('golden_set_id')}`: "
                  f"{(latest.get('items') or {}).get('total')} items, gate **{(latest.get('gate') or {}).get('status', 'n/a')}**.", "",
                  "| metric | value | 95% CI |", "|---|---:|---:|"]
        for name in headline_metrics(sorted(metrics), d.metrics):
            ci = cis.get(name)
            lines.append(f"| {name} | {metrics[name]:.4f} | " + (f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "") + " |")
    lines += ["", f"## Alerts ({len(d.alerts)})", ""]
    lines += [f"- **{a['severity']}** `{a['kind']}`: {md_escape(a['message'])}" for a in d.alerts] or ["None."]
    if report_path:
        lines += ["", f"HTML report: `{report_path}`"]
    return "\n".join(lines)


def prompt_changed_markdown(prompt: str, prompt_hash: str, summary: Mapping, lake_uri: str) -> str:
    """The prompt-changed run's own artifact: which prompt, the gate's verdict and the alerts."""
    gate = summary.get("gate") or {}
    promotion = summary.get("promotion") or {}
    lines = [f"# prompt {prompt} changed ({prompt_hash[:12]})", "", f"Lake `{lake_uri}`; eval run `{summary.get('run_id')}`: "
             f"**{summary.get('status')}**, gate **{gate.get('status', 'n/a')}**, promoted: "
             f"**{str(promotion.get('promoted', False)).lower()}** ({md_escape(promotion.get('reason', 'no eval'))}).", ""]
    lines += [f"- {md_escape(r)}" for r in gate.get("reasons", []) + gate.get("warnings", [])]
    if summary.get("error"):
        lines += [f"- error: {md_escape(str(summary['error']))}"]
    alerts = summary.get("alerts") or []
    lines += ["", f"## Alerts ({len(alerts)})", ""] + ([f"- **{a['severity']}** `{a['kind']}`: {md_escape(a['message'])}"
                                                       for a in alerts] or ["None."])
    if summary.get("report"):
        lines += ["", f"HTML report: `{summary['report']}`"]
    return "\n".join(lines)


def artifact_key(name: str, lake_uri: str) -> str:
    """A Prefect artifact key that carries the lake's identity (lower-case letters, digits, dashes), so
    two lakes sharing one Prefect database never show each other's 'latest' artifact."""
    import hashlib

    return f"{name}-{hashlib.sha256(lake_uri.encode()).hexdigest()[:10]}"


def md_escape(text: str) -> str:
    """Text safe inside a markdown list item or table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
