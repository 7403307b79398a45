"""What a night of the lifecycle concluded from its stages' summaries (pure)."""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import Field

from ragloop.tasks.summaries import StageSummary, summary_models

GATE_STATUSES = ("gate_failed", "gate_inconclusive")


def stage_failure(stage: str, summary: Mapping) -> dict | None:
    """{stage, run_id, error} when a stage failed: its status is `failed`, or (index) a great-expectations
    suite failed, which stops the night before anything is evaluated or served. None otherwise."""
    failed_suites = [name for name, r in (summary.get("validation") or {}).items() if not r.get("success")]
    if summary.get("status") == "failed" or (stage == "index" and failed_suites):
        error = summary.get("error") or (f"great-expectations suites failed: {', '.join(failed_suites)}"
                                         if failed_suites else f"{stage} ended {summary.get('status')}")
        return {"stage": stage, "run_id": summary.get("run_id"), "error": error}
    return None


def night_status(stages: Mapping[str, Mapping], failure: Mapping | None) -> str:
    """failed when a stage failed; the eval's gate status when the gate failed or was inconclusive;
    partial when a stage was partial (a sink could not deliver, items failed); else ok."""
    if failure or any(s.get("status") == "failed" for s in stages.values()):
        return "failed"
    evaluated = stages.get("eval") or {}
    if evaluated.get("status") in GATE_STATUSES:
        return evaluated["status"]
    return "partial" if any(s.get("status") != "ok" for s in stages.values()) else "ok"


class LifecycleSummary(StageSummary):
    """What run-lifecycle (`ragloop run`, the nightly) returns: each stage's own summary, nested."""

    status: Literal["ok", "partial", "failed", "gate_failed", "gate_inconclusive"] = Field(
        description="night_status: failed when a stage failed, the gate's status, partial, or ok")
    stages: dict[str, dict[str, Any]] = Field(
        description="index, synth, eval, monitor -> that stage's summary (its model's dump); a stage that "
                    "raised is {status: failed, error}")
    report: str | None = Field(None, description="the monitor's HTML report, when it wrote one")
    error: str | None = Field(None, description="the failed stage's error")


def stage_summary(stage: str, summary: Mapping) -> dict:
    """A stage's summary as the lifecycle nests it: checked against the stage's model (tasks.summaries
    .summary_models) and dumped; a stage that raised before it had a run is {status: failed, error}."""
    if "run_id" not in summary:
        return {"status": summary.get("status", "failed"), "error": summary.get("error")}
    return summary_models()[stage].model_validate(dict(summary)).dump()
