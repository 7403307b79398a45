"""monitor-quality flow: history, the windowed regression rule, drift checks, budgets, alerts, report.

Each call observes the eval runs the history does not hold yet (and, from the nightly, the eval it
reused), compares the current state (snapshot, table version, golden questions' top-1 similarity)
with the state the previous monitor run saw, sends alerts to the configured sinks and writes an HTML
report plus Prefect artifacts with the same headline numbers.
"""

from __future__ import annotations

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import RunRecorder, flow_settings, lake_locked
from ragloop.tasks import providers
from ragloop.tasks import alerting, monitoring, observing, reporting, schemas
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import MonitorConfig
from ragloop.tasks.storage import Lake

OBSERVED_STATUSES = ("ok", "partial", "gate_failed", "gate_inconclusive")


def build_sinks(config: MonitorConfig, lake: Lake, logger) -> tuple[list, list[dict]]:
    """The configured sinks (tasks/alerting.py SINKS), and a record for each one that cannot run."""
    return alerting.build_sinks(config, lake, logger, publish_markdown=create_markdown_artifact)


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
        lake.write_history(run["run_id"], pa.Table.from_pylist(rows, schema=schemas.HISTORY))
        written.append(run["run_id"])
        seen_runs.add(run["run_id"])
    if eval_run_id and observer_run_id and eval_run_id not in written and observer_run_id not in seen_obs:
        run = lake.read_run(eval_run_id)
        if run and run["status"] in OBSERVED_STATUSES:
            rows = monitoring.history_rows(observer_run_id, run, utcnow(), mode="nightly")
            lake.write_history(observer_run_id, pa.Table.from_pylist(rows, schema=schemas.HISTORY))
            written.append(observer_run_id)
    return written


observe_runs = task(observe, name="observe-eval-runs", cache_policy=NO_CACHE)
sample_vectors = task(observing.sample_vectors, name="sample-vectors", cache_policy=NO_CACHE)
top1_similarities = task(observing.top1_similarities, name="top1-similarities", cache_policy=NO_CACHE)
deliver_alerts = task(alerting.deliver, name="deliver-alerts", cache_policy=NO_CACHE)


@flow(name="monitor-quality")
@lake_locked("monitor")
def monitor_quality(lake: str | None = None, config_path: str | None = None, eval_run_id: str | None = None,
                    observer_run_id: str | None = None, failures: list[dict] | None = None) -> dict:
    """One monitoring pass over the lake; summary has `alerts` [{kind, message, severity, metric}] (the
    conditions that hold now), `notified` (what went to the sinks: new, changed and cleared conditions,
    and every failed stage in `failures` [{stage, run_id, error}]) and `report` (the HTML path). It
    watches one series, the (golden line, chain) last evaluated by the nightly, the prompt-changed flow
    or an explicit promotion; experiments are listed, never compared. Status `partial` when a sink
    could not deliver."""
    settings = flow_settings(config_path, {"lake": lake})
    config = settings.monitor
    store_lake = Lake(settings.lake)
    logger = get_run_logger()
    run = RunRecorder(store_lake, "monitor", settings)
    try:
        observed = observe_runs(store_lake, eval_run_id, observer_run_id)
        history = store_lake.read_history().to_pylist()
        series_all = monitoring.observations(history)
        watched, served, experiments = monitoring.watched_series(series_all)
        latest_obs = served[-1] if served else None
        latest_eval, golden_rows, series = None, [], []
        if latest_obs:
            record = store_lake.read_run(latest_obs["run_id"]) or {}
            latest_eval = {"run_id": latest_obs["run_id"], "lineage": record.get("lineage", {}), **record.get("outputs", {})}
            golden_rows = store_lake.read_golden(latest_obs["golden_set_id"]).to_pylist() \
                if store_lake.golden_exists(latest_obs["golden_set_id"]) else []
            latest_ids = {r["qa_id"] for r in golden_rows}
            overlaps = {}
            for golden_id in {o["golden_set_id"] for o in served}:
                other = store_lake.read_golden(golden_id)["qa_id"].to_pylist() if store_lake.golden_exists(golden_id) else []
                overlaps[golden_id] = monitoring.golden_overlap(latest_ids, set(other))
            series = monitoring.comparable(served, overlaps, config.min_golden_overlap)
        per_item = {run_id: observing.item_metrics(store_lake, run_id)
                    for run_id in {o["run_id"] for o in series[-(config.window + config.baseline_runs):]}}
        paired, pairing = monitoring.on_shared_items(series, per_item, config)
        regression = monitoring.check_regression(paired, config)
        checks: dict[str, monitoring.Check] = {"regression": monitoring.Check({**regression.figures, **pairing},
                                                                              regression.alerts)}
        previous = store_lake.read_ref("monitor_state") or {}
        state: dict = {"run_id": run.run_id, "at": utcnow().isoformat()}
        distributions: dict = {}

        serving = store_lake.read_ref("serving")
        index_run = store_lake.read_run(serving["run_id"]) if serving and serving.get("run_id") else None
        snapshot_id = (index_run or {}).get("lineage", {}).get("snapshot_id")
        if snapshot_id and store_lake.snapshot_exists(snapshot_id):
            docs, lengths = observing.corpus_profile(store_lake, snapshot_id)
            prev_docs, prev_lengths = None, []
            if previous.get("snapshot_id") == snapshot_id:
                prev_docs, prev_lengths = docs, lengths
            elif previous.get("snapshot_id") and store_lake.snapshot_exists(previous["snapshot_id"]):
                prev_docs, prev_lengths = observing.corpus_profile(store_lake, previous["snapshot_id"])
            checks["corpus"] = monitoring.check_corpus_drift(prev_docs, docs, prev_lengths, lengths, config)
            distributions["corpus"] = ("document_length_chars", prev_lengths if prev_docs is not None else None, lengths)
            state["snapshot_id"] = snapshot_id
        if serving:
            ids, vectors = sample_vectors(store_lake, serving["table"], serving["version"], config.embedding_sample)
            prev_table = previous.get("table") or {}
            prev_vectors, replaced = None, None
            if prev_table.get("name") == serving["table"] and prev_table.get("version") == serving["version"]:
                prev_vectors, replaced = vectors, 0.0
            elif prev_table.get("name") == serving["table"] and prev_table.get("version") is not None:
                try:
                    prev_ids, prev_vectors = sample_vectors(store_lake, serving["table"], prev_table["version"],
                                                            config.embedding_sample)
                    replaced = 1.0 - len(set(ids) & set(prev_ids)) / max(len(ids), 1)
                except (ValueError, RuntimeError, OSError) as exc:  # the version was pruned
                    logger.warning("previous table version %s unreadable (%s): embedding drift starts a new baseline",
                                   prev_table["version"], exc)
            checks["embedding"] = monitoring.check_embedding_drift(prev_vectors, vectors, config, replaced)
            state["table"] = {"name": serving["table"], "version": serving["version"]}
            questions = observing.sample_questions(golden_rows, config.retrieval_sample)
            if questions:
                embedder = providers.current().build_embedder(settings.embedding)
                if embedder.slug in serving["table"]:
                    scores = top1_similarities(store_lake, serving["table"], serving["version"], embedder,
                                               [q["question"] for q in questions])
                    prev_scores = previous.get("top1") if previous.get("golden_set_id") == latest_obs["golden_set_id"] else None
                    checks["retrieval"] = monitoring.check_retrieval_drift(prev_scores, scores, config)
                    distributions["retrieval"] = ("top1_similarity", prev_scores, scores)
                    state.update({"top1": scores, "golden_set_id": latest_obs["golden_set_id"]})
        last_index = observing.latest_run(store_lake, "index", ("ok", "failed"))
        if last_index:
            checks["validation"] = monitoring.check_validations(last_index["outputs"].get("validation"), last_index["run_id"])
        if latest_obs:
            answered = monitoring.latest_answered(
                served, lambda run_id: ((store_lake.read_run(run_id) or {}).get("lineage") or {}).get("chain"))
            if answered:  # budgets of the served chain's latest answered eval, never of a retrieval-only run
                traces = store_lake.read_traces(answered["run_id"])
                items_total = ((store_lake.read_run(answered["run_id"]) or {}).get("outputs", {}).get("items") or {}).get("total", 0)
                checks["budgets"] = monitoring.check_budgets(traces.to_pylist() if traces is not None else [], items_total, config)
                checks["budgets"].figures["run_id"] = answered["run_id"]
            checks["references"] = monitoring.check_stale_references(latest_eval)
        if failures:
            checks["stages"] = monitoring.check_stage_failures(failures)

        alerts = [a.to_dict() for check in checks.values() for a in check.alerts]
        notify, state["alerts"] = monitoring.alerts_to_send(alerts, previous.get("alerts") or {})
        context = {"run_id": run.run_id, "at": state["at"], "lake": store_lake.uri,
                   "report": store_lake.report_path(run.run_id)}
        sinks, skipped = build_sinks(config, store_lake, logger)
        deliveries = deliver_alerts(sinks, notify, context) + skipped
        failed_sinks = [d for d in deliveries if d["status"] == "failed"]
        status = "partial" if failed_sinks else "ok"

        report_data = reporting.ReportData(
            run_id=run.run_id, at=state["at"], status=status, lake=store_lake.uri, alerts=alerts, series=served,
            watched=watched, experiments=experiments[-20:],
            latest_eval=latest_eval, worst_items=_worst_items(store_lake, latest_obs, golden_rows, config),
            checks={name: c.figures for name, c in checks.items()},
            distributions=distributions, deliveries=deliveries, metrics=list(config.metrics))
        report_path = store_lake.write_report(run.run_id, reporting.render_report(report_data))
        _publish_artifacts(report_data, report_path, store_lake.uri)
        _record_monitor_history(store_lake, run.run_id, checks, latest_obs)
        store_lake.write_ref("monitor_state", state)
        run.lineage.update({"eval_run_id": latest_obs["run_id"] if latest_obs else None,
                            "golden_set_id": latest_obs["golden_set_id"] if latest_obs else None,
                            "snapshot_id": state.get("snapshot_id"), "table": state.get("table"),
                            "previous_monitor_run_id": previous.get("run_id")})
        return run.finish(status, {
            "lake": store_lake.uri,
            "alerts": alerts,
            "notified": notify,
            "observed": observed,
            "observations": len(served),
            "series": {**(watched or {}), "observations": len(served)},
            "experiments": [{"run_id": o["run_id"], "chain_label": o.get("chain_label"), "golden_line": o.get("golden_line")}
                            for o in experiments[-20:]],
            "checks": {name: c.figures for name, c in checks.items()},
            "sinks": deliveries,
            "report": report_path,
        })
    except BaseException as exc:
        run.finish("failed", {"error": f"{type(exc).__name__}: {exc}"})
        raise


def _worst_items(lake: Lake, latest_obs: dict | None, golden_rows: list[dict], config: MonitorConfig) -> list[dict]:
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


def _publish_artifacts(data: reporting.ReportData, report_path: str, lake_uri: str) -> None:
    """The report's headline numbers in the Prefect UI: a markdown summary and a per-type table, under
    keys that carry the lake's identity."""
    create_markdown_artifact(markdown=reporting.markdown_summary(data, report_path),
                             key=reporting.artifact_key("ragloop-monitor", lake_uri),
                             description=f"ragloop quality monitor of lake {lake_uri}: headline metrics and alerts")
    latest = data.latest_eval or {}
    groups = latest.get("by_type") or {}
    names = reporting.headline_metrics(sorted({m for g in groups.values() for m in g.get("metrics", {})}), data.metrics)[:6]
    if groups:
        table = [{"qa_type": t, "n": g.get("n"), **{m: round(g["metrics"][m], 4) for m in names if m in g["metrics"]}}
                 for t, g in sorted(groups.items())]
        create_table_artifact(table=table, key=reporting.artifact_key("ragloop-by-type", lake_uri),
                              description=f"latest eval on lake {lake_uri}, metrics per question type")


def _record_monitor_history(lake: Lake, run_id: str, checks: dict, latest_obs: dict | None) -> None:
    """Drift and budget figures as history rows too (scope drift/budget), so they trend like metrics."""
    picks = {"corpus": ("change_fraction", "length_ks"), "embedding": ("centroid_shift", "replaced_fraction"),
             "retrieval": ("top1_median", "top1_ks"), "budgets": ("item_latency_p95_s", "tokens_per_item", "cost")}
    at = utcnow()
    rows = []
    for name, keys in picks.items():
        figures = checks[name].figures if name in checks else {}
        for key in keys:
            if isinstance(figures.get(key), (int, float)):
                rows.append({"observation_id": run_id, "run_id": run_id, "flow": "monitor",
                             "golden_set_id": latest_obs["golden_set_id"] if latest_obs else None,
                             "scope": "budget" if name == "budgets" else "drift", "metric": f"{name}.{key}",
                             "value": float(figures[key]), "ci_low": None, "ci_high": None, "n": None, "at": at})
    if rows:
        lake.write_history(run_id, pa.Table.from_pylist(rows, schema=schemas.HISTORY))
