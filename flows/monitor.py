"""monitor-quality flow: history, the windowed regression rule, drift checks, budgets, alerts, report.

Each call observes the eval runs the history does not hold yet (and, from the nightly, the eval it
reused), compares the current state (snapshot, table version, golden questions' top-1 similarity)
with the state the previous monitor run saw, sends alerts to the configured sinks and writes an HTML
report plus Prefect artifacts with the same headline numbers.
"""

from __future__ import annotations

import functools

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import flow_settings, stage_run
from ragloop.tasks import providers
from ragloop.tasks import alerting, monitor_run, observing, production, reporting
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import MonitorConfig
from ragloop.tasks.storage import Lake


def build_sinks(config: MonitorConfig, lake: Lake, logger) -> tuple[list, list[dict]]:
    """The configured sinks (tasks/alerting.py SINKS), and a record for each one that cannot run."""
    return alerting.build_sinks(config, lake, logger, publish_markdown=create_markdown_artifact)


observe_runs = task(monitor_run.observe, name="observe-eval-runs", cache_policy=NO_CACHE)
sample_vectors = task(observing.sample_vectors, name="sample-vectors", cache_policy=NO_CACHE)
top1_similarities = task(observing.top1_similarities, name="top1-similarities", cache_policy=NO_CACHE)
deliver_alerts = task(alerting.deliver, name="deliver-alerts", cache_policy=NO_CACHE)
check_production = task(production.production_pass, name="production-checks", cache_policy=NO_CACHE)


@flow(name="monitor-quality")
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
    with stage_run("monitor", settings) as stage:
        run = stage.start()
        observed = observe_runs(stage.lake, eval_run_id, observer_run_id)
        selection = monitor_run.select_series(stage.lake, config)
        checks = {"regression": monitor_run.check_series_regression(stage.lake, selection.comparable, config)}
        previous = stage.lake.read_ref("monitor_state") or {}  # what the last pass saw
        at = utcnow().isoformat()
        embedder = functools.partial(providers.current().build_embedder, settings.embedding)
        drift = monitor_run.check_drift(stage.lake, previous, selection, config, sample=sample_vectors,
                                        top1=top1_similarities, embedder=embedder, logger=run.logger)
        checks.update(drift.checks)
        checks.update(monitor_run.health_checks(stage.lake, selection, failures, config))
        logs = check_production(stage.lake, selection.golden_rows, embedder, settings.logs, run.run_id)
        checks.update({"production": logs.check} if logs else {})
        notes = monitor_run.notifications(checks, previous)
        sinks, skipped = build_sinks(config, stage.lake, run.logger)
        deliveries = deliver_alerts(sinks, notes.to_send, monitor_run.delivery_context(run.run_id, at, stage.lake)) + skipped
        status = monitor_run.pass_status(deliveries)

        report_data = monitor_run.report_data(stage.lake, run.run_id, at, status, selection, checks, notes, drift,
                                              deliveries, config, logs)
        report_path = stage.lake.write_report(run.run_id, reporting.render_report(report_data))
        _publish_artifacts(monitor_run.report_artifacts(report_data, report_path, stage.lake.uri))
        monitor_run.record_check_history(stage.lake, run.run_id, checks, selection.latest_obs)
        state = monitor_run.next_state(run.run_id, at, drift, notes)
        stage.lake.write_ref("monitor_state", state)
        run.lineage.update(monitor_run.monitor_lineage(selection, state, previous))
        return monitor_run.summarize(run.run_id, status, run.lineage, stage.lake.uri, observed, selection, checks,
                                     notes, deliveries, report_path).finish(run)


def _publish_artifacts(artifacts: list[monitor_run.Artifact]) -> None:
    """The report's headline numbers in the Prefect UI (monitor_run.report_artifacts)."""
    for artifact in artifacts:
        if artifact.table is not None:
            create_table_artifact(table=artifact.table, key=artifact.key, description=artifact.description)
        else:
            create_markdown_artifact(markdown=artifact.markdown, key=artifact.key, description=artifact.description)
