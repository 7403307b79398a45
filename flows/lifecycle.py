"""run-lifecycle flow: the nightly chain of stage flows - index, GE gate, refresh the golden set, eval, gate, monitor.

Each stage does only what its inputs require: unchanged documents are not re-embedded, an unchanged
index/prompt/settings state generates no Q&A, and an eval whose full lineage was already scored is
reused instead of recomputed.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from ragloop.flows.common import RunRecorder, flow_settings, stage_run
from ragloop.flows.evaluate import evaluate_chain
from ragloop.flows.index import index_corpus
from ragloop.flows.monitor import monitor_quality
from ragloop.flows.synth import synth_golden_set
from ragloop.tasks import nightly, reporting
from ragloop.tasks.storage import Lake


@flow(name="run-lifecycle")
def run_lifecycle(sources: list[str] | None = None, lake: str | None = None, config_path: str | None = None,
                  progress: bool = False, size: int | None = None, no_cache: bool = False):
    """One nightly pass; stops at the first stage that fails. The monitor always runs: a failed stage
    reaches every alert sink as `stage_failed`, and the flow run ends Failed (its data is the summary).
    `size`: the golden set's active items (synth.size), as `ragloop synth --size` takes it. `no_cache`:
    the eval bypasses the LLM call cache (`ragloop run --no-cache`)."""
    settings = flow_settings(config_path, {"lake": lake, "ingest": {"sources": sources}})
    with stage_run("lifecycle", settings) as stage:  # the lock is held across the stages: no run slips in between
        run, stages = stage.start(), {}
        stage.failure_outputs = {"stages": stages}
        failure = _stage(stages, "index", index_corpus, sources=sources, lake=lake, config_path=config_path, progress=progress)
        if not failure:
            failure = _stage(stages, "synth", synth_golden_set, lake=lake, size=size, config_path=config_path,
                             progress=progress)
        if not failure:
            failure = _stage(stages, "eval", evaluate_chain, lake=lake, golden="latest", config_path=config_path,
                             reuse_cached=True, promote="nightly", progress=progress, no_cache=no_cache)
        _stage(stages, "monitor", monitor_quality, lake=lake, config_path=config_path,
               eval_run_id=stages.get("eval", {}).get("run_id"), observer_run_id=run.run_id,
               failures=[failure] if failure else [])
        summary = _finish(run, nightly.night_status(stages, failure), stages, failure and failure["error"])
        if summary["status"] == "failed":
            return Failed(message=f"{failure['stage'] if failure else 'a'} stage failed: {summary.get('error')}", data=summary)
        return summary


def _stage(stages: dict, name: str, flow_fn, **params) -> dict | None:
    """Run one stage flow; its brief goes into `stages`. Returns the failure ({stage, run_id, error}) if
    it failed, by status or by raising (an exception fails the stage, not the night's bookkeeping)."""
    try:
        summary = flow_fn(**params)
    except Exception as exc:  # any stage error: recorded, alerted by the monitor, the night ends Failed
        summary = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    stages[name] = nightly.stage_summary(name, summary)
    return nightly.stage_failure(name, summary)


def _finish(run: RunRecorder, status: str, stages: dict, error: str | None) -> dict:
    run.lineage["stage_runs"] = {name: s.get("run_id") for name, s in stages.items()}
    run.logger.info("lifecycle %s: %s", status, {k: v.get("status") for k, v in stages.items()})
    report = stages.get("monitor", {}).get("report")
    if report:
        run.logger.info("report: %s", report)
    summary = nightly.LifecycleSummary(run_id=run.run_id, status=status, lineage=run.lineage, stages=stages)
    if report:
        summary.report = report
    if error:
        summary.error = error
    return summary.finish(run)


@flow(name="prompt-changed")
def prompt_changed(prompt: str, prompt_hash: str, lake: str | None = None, config_path: str | None = None):
    """Triggered by `ragloop.prompt.changed` (whose payload names the lake): re-evaluate the chosen
    golden-set line with the prompts as they are now and gate the result against the baseline (promoted
    only if it passes; gate_failed or gate_inconclusive otherwise), then monitor. The run carries a
    `ragloop-prompt-changed-<lake>` artifact with the verdict and the alerts; a failed eval reaches every
    sink as `stage_failed` and the run ends Failed."""
    lake = lake or None  # an event without a lake: the configured one
    settings = flow_settings(config_path, {"lake": lake})
    with stage_run("prompt-changed", settings):  # the lock only: its eval and monitor record their own runs
        stages: dict[str, dict] = {}
        failure = _stage(stages, "eval", evaluate_chain, lake=lake, golden="latest", config_path=config_path,
                         promote="prompt-changed")
        _stage(stages, "monitor", monitor_quality, lake=lake, config_path=config_path, failures=[failure] if failure else [])
        monitored = stages["monitor"]
        summary = {**stages["eval"], "alerts": monitored.get("alerts", []), "report": monitored.get("report"), "stages": stages}
        used = summary.get("lineage", {}).get("prompts", {})
        if prompt in used and used[prompt] != prompt_hash:
            summary.setdefault("warnings", []).append(
                f"event named {prompt}@{prompt_hash[:12]} but the file on disk is {used[prompt][:12]}: it changed again")
        lake_uri = Lake(settings.lake).uri
        create_markdown_artifact(markdown=reporting.prompt_changed_markdown(prompt, prompt_hash, summary, lake_uri),
                                 key=reporting.artifact_key("ragloop-prompt-changed", lake_uri),
                                 description=f"prompt {prompt} changed: eval verdict and alerts on lake {lake_uri}")
        if failure:
            return Failed(message=f"{failure['stage']} failed: {failure['error']}", data={**summary, "status": "failed"})
        return summary
