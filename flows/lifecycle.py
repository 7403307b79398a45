"""run-lifecycle flow: the nightly chain of stage flows - index, GE gate, refresh the golden set, eval, gate, monitor.

Each stage does only what its inputs require: unchanged documents are not re-embedded, an unchanged
index/prompt/settings state generates no Q&A, and an eval whose full lineage was already scored is
reused instead of recomputed.
"""

from __future__ import annotations

from prefect import flow

from flows.common import RunRecorder, flow_settings, lake_locked
from flows.evaluate import evaluate_chain
from flows.index import index_corpus
from flows.monitor import monitor_quality
from flows.synth import synth_golden_set
from tasks.storage import Lake


@flow(name="run-lifecycle")
@lake_locked("lifecycle")  # held across the stages, so no other run slips in between them
def run_lifecycle(sources: list[str] | None = None, lake: str | None = None, config_path: str | None = None,
                  progress: bool = False, size: int | None = None) -> dict:
    """One nightly pass; stops at the first stage that fails (its summary says why). `size`: the golden
    set's active items (synth.size), as `ragloop synth --size` takes it."""
    settings = flow_settings(config_path, {"lake": lake, "ingest": {"sources": sources}})
    run = RunRecorder(Lake(settings.lake), "lifecycle", settings)
    stages: dict[str, dict] = {}
    try:
        indexed = index_corpus(sources=sources, lake=lake, config_path=config_path, progress=progress)
        stages["index"] = _brief(indexed)
        failed_suites = [name for name, r in (indexed.get("validation") or {}).items() if not r.get("success")]
        if indexed["status"] != "ok" or failed_suites:
            # The GE gate: a snapshot or table that fails its suite is not evaluated or served; the
            # monitor still runs so the failure reaches the alert sinks.
            _monitor(run, stages, lake, config_path, None)
            return _finish(run, "failed", stages, f"index {indexed['status']}; failed suites: {failed_suites or 'none'}")

        synth = synth_golden_set(lake=lake, size=size, config_path=config_path)
        stages["synth"] = _brief(synth)
        if synth["status"] == "failed":
            _monitor(run, stages, lake, config_path, None)
            return _finish(run, "failed", stages, synth.get("error", "synth failed"))

        evaluated = evaluate_chain(lake=lake, golden="latest", config_path=config_path, reuse_cached=True, promote="nightly")
        stages["eval"] = _brief(evaluated)
        monitored = _monitor(run, stages, lake, config_path, evaluated.get("run_id"))
        status = "ok"
        if evaluated["status"] in ("gate_failed", "gate_inconclusive"):
            status = evaluated["status"]
        elif evaluated["status"] != "ok" or synth["status"] != "ok" or monitored["status"] != "ok":
            status = "partial"
        return _finish(run, status, stages, None)
    except BaseException as exc:
        run.finish("failed", {"error": f"{type(exc).__name__}: {exc}", "stages": stages})
        raise


def _monitor(run: RunRecorder, stages: dict, lake: str | None, config_path: str | None, eval_run_id: str | None) -> dict:
    """The monitor stage; it observes this night's eval (reused or not) under the lifecycle's run id."""
    monitored = monitor_quality(lake=lake, config_path=config_path, eval_run_id=eval_run_id, observer_run_id=run.run_id)
    stages["monitor"] = _brief(monitored)
    return monitored


def _brief(summary: dict) -> dict:
    keep = ("run_id", "status", "documents", "chunks", "table", "quarantine", "notes", "scope", "validation", "golden_set_id", "items",
            "by_type", "rejects", "coverage", "up_to_date", "metrics", "ci", "n", "failed_judgments", "gate", "cached", "promoted", "promotion", "stale_references", "golden_line", "index",
            "serving", "candidate", "disposition", "line",
            "results", "error", "lake", "alerts", "observations", "observed", "checks", "sinks", "report")
    return {k: summary[k] for k in keep if k in summary}


def _finish(run: RunRecorder, status: str, stages: dict, error: str | None) -> dict:
    run.lineage["stage_runs"] = {name: s.get("run_id") for name, s in stages.items()}
    run.logger.info("lifecycle %s: %s", status, {k: v.get("status") for k, v in stages.items()})
    report = stages.get("monitor", {}).get("report")
    if report:
        run.logger.info("report: %s", report)
    return run.finish(status, {"stages": stages, **({"report": report} if report else {}), **({"error": error} if error else {})})


@flow(name="prompt-changed")
@lake_locked("prompt-changed")
def prompt_changed(prompt: str, prompt_hash: str, lake: str | None = None, config_path: str | None = None) -> dict:
    """Triggered by `ragloop.prompt.changed`: re-evaluate the latest golden set with the prompts as
    they are now and gate the result against the baseline (promoted only if it passes; gate_failed or
    gate_inconclusive otherwise), then
    monitor, so the run's alerts and report sit beside its eval artifacts."""
    summary = evaluate_chain(lake=lake, golden="latest", config_path=config_path, promote="prompt-changed")
    monitored = monitor_quality(lake=lake, config_path=config_path)  # history, alerts and the report for this run
    summary = {**summary, "alerts": monitored["alerts"], "report": monitored["report"]}
    used = summary.get("lineage", {}).get("prompts", {})
    if prompt in used and used[prompt] != prompt_hash:
        summary.setdefault("warnings", []).append(
            f"event named {prompt}@{prompt_hash[:12]} but the file on disk is {used[prompt][:12]}: it changed again")
    return summary
