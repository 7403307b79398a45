"""One monitoring pass's decisions and bookkeeping (lake I/O, no Prefect): which eval runs to observe,
the series watched, the drift checks against the state the previous pass kept, the other checks, which
alerts go out, the pass's status, its report data, its history rows, its state, lineage and summary.

The pure rules live in tasks.monitoring; the sinks in tasks.alerting. Model and vector reads that the
flow runs as Prefect tasks (vector samples, top-1 similarities) come in as callables."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field

from ragloop.tasks import monitoring, observing, production, reporting, schemas
from ragloop.tasks.embedding import Embedder
from ragloop.tasks.monitoring import Check
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import MonitorConfig
from ragloop.tasks.storage import Lake
from ragloop.tasks.summaries import StageSummary

log = logging.getLogger(__name__)

OBSERVED_STATUSES = ("ok", "partial", "gate_failed", "gate_inconclusive")
EXPERIMENTS_LISTED = 20  # the most recent experiments a report and a summary list
# check -> the figures recorded as history rows (scope drift/budget), so they trend like metrics
HISTORY_FIGURES = {"corpus": ("change_fraction", "length_ks"), "embedding": ("centroid_shift", "replaced_fraction"),
                   "retrieval": ("top1_median", "top1_ks"), "budgets": ("item_latency_p95_s", "tokens_per_item", "cost"),
                   "production": production.DAY_FIGURES}

SampleVectors = Callable[[Lake, str, int, int], "tuple[list[str], np.ndarray]"]  # observing.sample_vectors
Top1 = Callable[[Lake, str, int, Embedder, list[str]], "list[float]"]  # observing.top1_similarities


class MonitorSummary(StageSummary):
    """What monitor-quality returns and records; every field is always present."""

    status: Literal["ok", "partial"] = Field(description="ok, or partial when a sink could not deliver")
    lake: str = Field(description="the lake's URI")
    alerts: list[dict[str, Any]] = Field(
        description="the conditions that hold now: [{kind, message, severity, metric, details}]")
    notified: list[dict[str, Any]] = Field(
        description="what went to the sinks: new, changed and cleared conditions and every failed stage")
    observed: list[str] = Field(description="observation ids this pass added to the history")
    observations: int = Field(description="observations in the watched series")
    series: dict[str, Any] = Field(
        description="the watched series: {golden_line, chain_hash, chain_label, observations}; only observations "
                    "when none is watched")
    experiments: list[dict[str, Any]] = Field(
        description=f"the last {EXPERIMENTS_LISTED} experiment observations: [{{run_id, chain_label, golden_line}}]")
    checks: dict[str, dict[str, Any]] = Field(
        description="check (regression, corpus, embedding, retrieval, validation, budgets, references, stages, "
                    "production) -> its figures")
    sinks: list[dict[str, Any]] = Field(description="one delivery per sink: [{sink, status, count, ...}]")
    report: str = Field(description="path of the HTML report")


# -- observing ------------------------------------------------------------------------------------
def observe(lake: Lake, eval_run_id: str | None, observer_run_id: str | None) -> list[str]:
    """Append history for every completed eval run not observed yet. A night that reused an already
    observed eval (nothing changed) is one more observation of the same values, so persistence is
    counted in nights, not in distinct eval runs (mode 'nightly', whatever started the reused run).
    Returns the observation ids written."""
    history = lake.read_history()
    seen_runs = set(history["run_id"].to_pylist())
    seen_obs = set(history["observation_id"].to_pylist())
    written = []
    for run in observing.completed_runs(lake, "eval", OBSERVED_STATUSES):
        if run["run_id"] in seen_runs:
            continue
        rows = monitoring.history_rows(run["run_id"], run, run["ended_at"] or run["started_at"])
        if not rows:  # a run with no metric (every item failed): nothing to observe, and not "new" every pass
            continue
        lake.write_history(run["run_id"], pa.Table.from_pylist(rows, schema=schemas.HISTORY))
        written.append(run["run_id"])
        seen_runs.add(run["run_id"])
    if eval_run_id and observer_run_id and eval_run_id not in written and observer_run_id not in seen_obs:
        run = lake.read_run(eval_run_id)
        if run and run["status"] in OBSERVED_STATUSES:
            rows = monitoring.history_rows(observer_run_id, run, utcnow(), mode="nightly")
            if rows:
                lake.write_history(observer_run_id, pa.Table.from_pylist(rows, schema=schemas.HISTORY))
                written.append(observer_run_id)
    return written


@dataclass
class Selection:
    """The series the pass watches and what it reads of its latest observation."""

    watched: dict | None  # {golden_line, chain_hash, chain_label} of the watched series, None when none is
    served: list[dict]  # the watched series' observations, oldest first
    experiments: list[dict]  # experiment (and unpromoted candidate) observations, oldest first
    latest_obs: dict | None = None  # the latest served observation
    latest_eval: dict | None = None  # its eval run: {run_id, lineage, **outputs}
    golden_rows: list[dict] = field(default_factory=list)  # its golden set's items
    comparable: list[dict] = field(default_factory=list)  # served observations on golden sets that overlap it enough


def select_series(lake: Lake, config: MonitorConfig) -> Selection:
    """The watched series from the history (monitoring.watched_series), its latest eval run and golden
    set, and the observations scored on golden sets sharing at least `min_golden_overlap` of its questions."""
    observations = monitoring.observations(lake.read_history().to_pylist())
    watched, served, experiments = monitoring.watched_series(observations)
    if not served:
        return Selection(watched, served, experiments)
    latest = served[-1]
    record = lake.read_run(latest["run_id"]) or {}
    latest_eval = {"run_id": latest["run_id"], "lineage": record.get("lineage", {}), **record.get("outputs", {})}
    golden_rows = lake.read_golden(latest["golden_set_id"]).to_pylist() if lake.golden_exists(latest["golden_set_id"]) else []
    latest_ids = {r["qa_id"] for r in golden_rows}
    overlaps = {}
    for golden_id in {o["golden_set_id"] for o in served}:
        other = lake.read_golden(golden_id)["qa_id"].to_pylist() if lake.golden_exists(golden_id) else []
        overlaps[golden_id] = monitoring.golden_overlap(latest_ids, set(other))
    comparable = monitoring.comparable(served, overlaps, config.min_golden_overlap)
    return Selection(watched, served, experiments, latest, latest_eval, golden_rows, comparable)


def check_series_regression(lake: Lake, series: Sequence[Mapping], config: MonitorConfig) -> Check:
    """The windowed regression rule over the compared runs, re-averaged on the questions they all scored;
    the figures carry how many questions were shared (monitoring.on_shared_items)."""
    compared = series[-(config.window + config.baseline_runs):]
    per_item = {run_id: observing.item_metrics(lake, run_id) for run_id in {o["run_id"] for o in compared}}
    paired, pairing = monitoring.on_shared_items(series, per_item, config)
    regression = monitoring.check_regression(paired, config)
    return Check({**regression.figures, **pairing}, regression.alerts)


# -- drift: this pass against the state the previous one kept ------------------------------------
@dataclass
class Drift:
    """Drift checks, the distributions the report plots under them (check -> (plot name, previous values
    or None, current values)) and the parts of the monitor state they compare against next time."""

    checks: dict[str, Check] = field(default_factory=dict)
    distributions: dict[str, tuple] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: "Drift") -> "Drift":
        """Both drifts' checks, plots and state (the other's win on a shared name)."""
        return Drift({**self.checks, **other.checks}, {**self.distributions, **other.distributions},
                     {**self.state, **other.state})


def corpus_drift(lake: Lake, serving: Mapping | None, previous: Mapping, config: MonitorConfig) -> Drift:
    """Documents and their lengths in the served index's snapshot against the snapshot the previous pass
    saw (a baseline when there is none); nothing when the served snapshot is unknown or gone."""
    index_run = lake.read_run(serving["run_id"]) if serving and serving.get("run_id") else None
    snapshot_id = (index_run or {}).get("lineage", {}).get("snapshot_id")
    if not (snapshot_id and lake.snapshot_exists(snapshot_id)):
        return Drift()
    docs, lengths = observing.corpus_profile(lake, snapshot_id)
    prev_docs, prev_lengths = None, []
    if previous.get("snapshot_id") == snapshot_id:
        prev_docs, prev_lengths = docs, lengths
    elif previous.get("snapshot_id") and lake.snapshot_exists(previous["snapshot_id"]):
        prev_docs, prev_lengths = observing.corpus_profile(lake, previous["snapshot_id"])
    return Drift({"corpus": monitoring.check_corpus_drift(prev_docs, docs, prev_lengths, lengths, config)},
                 {"corpus": ("document_length_chars", prev_lengths if prev_docs is not None else None, lengths)},
                 {"snapshot_id": snapshot_id})


def embedding_drift(lake: Lake, serving: Mapping, previous: Mapping, config: MonitorConfig, sample: SampleVectors,
                    logger: logging.Logger | logging.LoggerAdapter) -> Drift:
    """A sample of the served version's vectors against the same table's version the previous pass saw,
    and the share of sampled chunks that are new; a baseline when that version is another table's or
    pruned (logged)."""
    ids, vectors = sample(lake, serving["table"], serving["version"], config.embedding_sample)
    prev_table = previous.get("table") or {}
    prev_vectors, replaced = None, None
    if prev_table.get("name") == serving["table"] and prev_table.get("version") == serving["version"]:
        prev_vectors, replaced = vectors, 0.0
    elif prev_table.get("name") == serving["table"] and prev_table.get("version") is not None:
        try:
            prev_ids, prev_vectors = sample(lake, serving["table"], prev_table["version"], config.embedding_sample)
            replaced = 1.0 - len(set(ids) & set(prev_ids)) / max(len(ids), 1)
        except (ValueError, RuntimeError, OSError) as exc:  # the version was pruned
            logger.warning("previous table version %s unreadable (%s): embedding drift starts a new baseline",
                           prev_table["version"], exc)
    return Drift({"embedding": monitoring.check_embedding_drift(prev_vectors, vectors, config, replaced)}, {},
                 {"table": {"name": serving["table"], "version": serving["version"]}})


def retrieval_drift(lake: Lake, serving: Mapping, previous: Mapping, selection: Selection, config: MonitorConfig,
                    top1: Top1, embedder: Callable[[], Embedder]) -> Drift:
    """Top-1 similarity of a sample of the latest golden questions at the served version, against the
    previous pass's scores on the same golden set. Nothing without questions, or when the served table
    is another embedder's (the embedder is built only when there are questions)."""
    questions = observing.sample_questions(selection.golden_rows, config.retrieval_sample)
    if not questions:
        return Drift()
    model = embedder()
    if model.slug not in serving["table"]:
        return Drift()
    golden_set_id = selection.latest_obs["golden_set_id"]
    scores = top1(lake, serving["table"], serving["version"], model, [q["question"] for q in questions])
    prev_scores = previous.get("top1") if previous.get("golden_set_id") == golden_set_id else None
    return Drift({"retrieval": monitoring.check_retrieval_drift(prev_scores, scores, config)},
                 {"retrieval": ("top1_similarity", prev_scores, scores)},
                 {"top1": scores, "golden_set_id": golden_set_id})


def check_drift(lake: Lake, previous: Mapping, selection: Selection, config: MonitorConfig, *, sample: SampleVectors,
                top1: Top1, embedder: Callable[[], Embedder], logger: logging.Logger | logging.LoggerAdapter) -> Drift:
    """Corpus, embedding and retrieval drift of what is served (refs/serving) since the previous pass."""
    serving = lake.read_ref("serving")
    drift = corpus_drift(lake, serving, previous, config)
    if serving:
        drift = drift.merge(embedding_drift(lake, serving, previous, config, sample, logger))
        drift = drift.merge(retrieval_drift(lake, serving, previous, selection, config, top1, embedder))
    return drift


# -- the other checks -----------------------------------------------------------------------------
def health_checks(lake: Lake, selection: Selection, failures: Sequence[Mapping] | None,
                  config: MonitorConfig) -> dict[str, Check]:
    """The last index run's suites, the served chain's budgets (of its latest answered eval, never a
    retrieval-only run's), stale golden references, and the night's failed stages; in that order."""
    checks: dict[str, Check] = {}
    last_index = observing.latest_run(lake, "index", ("ok", "failed"))
    if last_index:
        checks["validation"] = monitoring.check_validations(last_index["outputs"].get("validation"), last_index["run_id"])
    if selection.latest_obs:
        answered = monitoring.latest_answered(
            selection.served, lambda run_id: ((lake.read_run(run_id) or {}).get("lineage") or {}).get("chain"))
        if answered:
            traces = lake.read_traces(answered["run_id"])
            items_total = ((lake.read_run(answered["run_id"]) or {}).get("outputs", {}).get("items") or {}).get("total", 0)
            checks["budgets"] = monitoring.check_budgets(traces.to_pylist() if traces is not None else [], items_total, config)
            checks["budgets"].figures["run_id"] = answered["run_id"]
        checks["references"] = monitoring.check_stale_references(selection.latest_eval)
    if failures:
        checks["stages"] = monitoring.check_stage_failures(failures)
    return checks


# -- alerts ---------------------------------------------------------------------------------------
@dataclass
class Notifications:
    """The alerts that hold now, those to send (monitoring.alerts_to_send), and the alert state to keep."""

    alerts: list[dict]
    to_send: list[dict]
    state: dict[str, dict]


def notifications(checks: Mapping[str, Check], previous: Mapping) -> Notifications:
    """Every check's alerts (in check order) and which of them go to the sinks, given the alert state
    the previous pass kept."""
    alerts = [a.to_dict() for check in checks.values() for a in check.alerts]
    to_send, state = monitoring.alerts_to_send(alerts, previous.get("alerts") or {})
    return Notifications(alerts, to_send, state)


def delivery_context(run_id: str, at: str, lake: Lake) -> dict:
    """What every sink is told besides the alerts: the pass, its time, the lake and the report's path."""
    return {"run_id": run_id, "at": at, "lake": lake.uri, "report": lake.report_path(run_id)}


def pass_status(deliveries: Sequence[Mapping]) -> str:
    """`partial` when a sink failed to deliver, else `ok` (a sink skipped for want of its URL is not a failure)."""
    return "partial" if any(d["status"] == "failed" for d in deliveries) else "ok"


# -- report, history, state, summary --------------------------------------------------------------
def worst_items(lake: Lake, latest_obs: Mapping | None, golden_rows: list[dict], config: MonitorConfig) -> list[dict]:
    """The lowest-scoring items of the latest eval run, with their traces (failed items first)."""
    if not latest_obs:
        return []
    items = lake.read_eval_items(latest_obs["run_id"])
    if items is None:
        return []
    rows = items.to_pylist()
    for r in rows:
        r["metrics"] = dict(r["metrics"] or [])
    names = reporting.headline_metrics(sorted({m for r in rows for m in r["metrics"]}), config.metrics)
    answer_first = [m for m in ("semantic_similarity", "faithfulness") if m in names]
    metric = (answer_first or names or [None])[0]
    golden = {g["qa_id"]: g for g in golden_rows}

    def badness(r):  # failed items first, then the lowest scores; items without the metric last
        value = r["metrics"].get(metric) if metric else None
        return (r["status"] != "failed", value is None, value if value is not None else 0.0, r["qa_id"])

    worst = sorted(rows, key=badness)[: config.report_worst_items]
    traces = lake.read_traces(latest_obs["run_id"])
    by_item: dict[str, list[dict]] = {}
    for t in traces.to_pylist() if traces is not None else []:
        by_item.setdefault(t["qa_id"], []).append(t)
    table = ((lake.read_run(latest_obs["run_id"]) or {}).get("lineage") or {}).get("table") or {}
    wanted = [c for r in worst for c in (r["retrieved_chunk_ids"] or []) + (golden.get(r["qa_id"], {}).get("reference_chunk_ids") or [])]
    texts = observing.chunk_texts(lake, table["name"], table["version"], wanted) if table.get("name") else {}
    return [reporting.worst_item(r, golden.get(r["qa_id"], {}), metric, texts, by_item.get(r["qa_id"], [])) for r in worst]


def report_data(lake: Lake, run_id: str, at: str, status: str, selection: Selection, checks: Mapping[str, Check],
                notes: Notifications, drift: Drift, deliveries: list[dict], config: MonitorConfig,
                logs: production.ProductionPass | None = None) -> reporting.ReportData:
    """Everything the HTML report and the Prefect artifacts show of this pass (`logs`: its production section)."""
    return reporting.ReportData(
        run_id=run_id, at=at, status=status, lake=lake.uri, alerts=notes.alerts, series=selection.served,
        watched=selection.watched, experiments=selection.experiments[-EXPERIMENTS_LISTED:],
        latest_eval=selection.latest_eval,
        worst_items=worst_items(lake, selection.latest_obs, selection.golden_rows, config),
        checks={name: c.figures for name, c in checks.items()},
        distributions=drift.distributions, deliveries=deliveries, metrics=list(config.metrics),
        golden=golden_quality_of(lake, selection.latest_eval), production=logs.report() if logs else None)


def golden_quality_of(lake: Lake, latest_eval: Mapping | None) -> dict | None:
    """`ragloop golden report` of the golden set the latest eval scored (3 sample items), for the report's
    Golden set section; None without an eval, or when the version or the index cannot be read."""
    golden_set_id = (latest_eval or {}).get("golden_set_id")
    if not golden_set_id:
        return None
    from ragloop.tasks import golden_quality
    from ragloop.tasks.settings import ConfigError

    try:
        return golden_quality.golden_report(lake, golden_set_id, sample=3).model_dump(mode="json")
    except (ConfigError, OSError, ValueError) as exc:
        log.warning("golden set %s: no quality section in the report (%s)", golden_set_id, exc)
        return None


@dataclass(frozen=True)
class Artifact:
    """A Prefect artifact to publish: markdown text or table rows, under a key carrying the lake's identity."""

    key: str
    description: str
    markdown: str | None = None
    table: list[dict] | None = None


def report_artifacts(data: reporting.ReportData, report_path: str, lake_uri: str) -> list[Artifact]:
    """The report's headline numbers for the Prefect UI: a markdown summary, and a per-type table of the
    latest eval's headline metrics when it has question types."""
    out = [Artifact(key=reporting.artifact_key("ragloop-monitor", lake_uri),
                    description=f"ragloop quality monitor of lake {lake_uri}: headline metrics and alerts",
                    markdown=reporting.markdown_summary(data, report_path))]
    latest = data.latest_eval or {}
    groups = latest.get("by_type") or {}
    names = reporting.headline_metrics(sorted({m for g in groups.values() for m in g.get("metrics", {})}), data.metrics)[:6]
    if groups:
        table = [{"qa_type": t, "n": g.get("n"), **{m: round(g["metrics"][m], 4) for m in names if m in g["metrics"]}}
                 for t, g in sorted(groups.items())]
        out.append(Artifact(key=reporting.artifact_key("ragloop-by-type", lake_uri),
                            description=f"latest eval on lake {lake_uri}, metrics per question type", table=table))
    return out


def check_history_rows(run_id: str, checks: Mapping[str, Check], latest_obs: Mapping | None,
                       at: dt.datetime) -> list[dict]:
    """Drift, budget and production figures (HISTORY_FIGURES) as history rows (scope drift/budget/production;
    production: the newest judged day's figures, so they trend per monitor pass)."""
    rows = []
    for name, keys in HISTORY_FIGURES.items():
        figures = checks[name].figures if name in checks else {}
        for key in keys:
            if isinstance(figures.get(key), (int, float)):
                rows.append({"observation_id": run_id, "run_id": run_id, "flow": "monitor",
                             "golden_set_id": latest_obs["golden_set_id"] if latest_obs else None,
                             "scope": {"budgets": "budget", "production": "production"}.get(name, "drift"), "metric": f"{name}.{key}",
                             "value": float(figures[key]), "ci_low": None, "ci_high": None, "n": None, "at": at})
    return rows


def record_check_history(lake: Lake, run_id: str, checks: Mapping[str, Check], latest_obs: Mapping | None) -> None:
    """Write the pass's drift and budget history rows, if any, so they trend like metrics."""
    rows = check_history_rows(run_id, checks, latest_obs, utcnow())
    if rows:
        lake.write_history(run_id, pa.Table.from_pylist(rows, schema=schemas.HISTORY))


def next_state(run_id: str, at: str, drift: Drift, notes: Notifications) -> dict:
    """The monitor_state ref the next pass compares against: {run_id, at, [snapshot_id], [table], [top1,
    golden_set_id], alerts}."""
    return {"run_id": run_id, "at": at, **drift.state, "alerts": notes.state}


def monitor_lineage(selection: Selection, state: Mapping, previous: Mapping) -> dict:
    """What the pass looked at: the latest eval run and golden set, snapshot, table, previous pass."""
    latest = selection.latest_obs
    return {"eval_run_id": latest["run_id"] if latest else None,
            "golden_set_id": latest["golden_set_id"] if latest else None,
            "snapshot_id": state.get("snapshot_id"), "table": state.get("table"),
            "previous_monitor_run_id": previous.get("run_id")}


def summarize(run_id: str, status: str, lineage: dict, lake_uri: str, observed: list[str], selection: Selection,
              checks: Mapping[str, Check], notes: Notifications, deliveries: list[dict], report_path: str) -> MonitorSummary:
    """The pass's summary."""
    return MonitorSummary(
        run_id=run_id, status=status, lineage=lineage, lake=lake_uri, alerts=notes.alerts, notified=notes.to_send,
        observed=observed, observations=len(selection.served),
        series={**(selection.watched or {}), "observations": len(selection.served)},
        experiments=[{"run_id": o["run_id"], "chain_label": o.get("chain_label"), "golden_line": o.get("golden_line")}
                     for o in selection.experiments[-EXPERIMENTS_LISTED:]],
        checks={name: c.figures for name, c in checks.items()}, sinks=deliveries, report=report_path)
