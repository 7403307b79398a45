"""Typed summaries: what every stage run returns and records, defined once as pydantic models (pure).

Each stage's model lives with the stage's decisions (tasks/ingest_run.py IngestSummary, index_run.py
IndexSummary, synth_run.py SynthSummary, eval_run.py EvalSummary, monitor_run.py MonitorSummary,
golden_sets.py ImportGoldenSummary/ImportBeirSummary/ExportSummary; commands.py those of the commands
that are not runs, on CommandSummary) on the bases here; `summary_models()` maps each command to its
model. The flow builds its outputs through the model and returns `dump()`; the lifecycle nests the
stages' dumps; the CLI prints them; a test checks README "Summary JSON" against the models' fields.

A summary holds exactly the keys that were set: a field with a default is an optional key, absent (not
null) when the run did not reach it, so `"error" in summary` keeps its meaning, while a None that was
set (e.g. `candidate`: no pending candidate) stays.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# What a run manifest stores beside its outputs (flows.common.RunRecorder); the rest are outputs.
RUN_KEYS = frozenset({"run_id", "status", "lineage"})


class Finishes(Protocol):
    """What a summary needs of a run recorder (flows.common.RunRecorder): end its manifest."""

    def finish(self, status: str, outputs: dict) -> dict: ...


class SummaryModel(BaseModel):
    """A summary, or a part of one, that serializes only the fields that were set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_serializer(mode="wrap")
    def _set_keys_only(self, handler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set or k in (self.model_extra or {})}


class StageSummary(SummaryModel):
    """What a stage run returns; every field but run_id, status and lineage is an output of its manifest."""

    run_id: str = Field(description="the run's id, <UTC time>-<flow>-<random> (tasks.lineage.new_run_id)")
    status: str = Field(description="how the run ended (each stage narrows it: ok | partial | failed | gate_*)")
    lineage: dict[str, Any] = Field(description="what the run was made from: config hash, git commit, inputs' ids")

    def outputs(self) -> dict[str, Any]:
        """The manifest's outputs: the fields set on this summary, minus run_id, status and lineage (JSON types)."""
        return {k: v for k, v in self.dump().items() if k not in RUN_KEYS}

    def dump(self) -> dict[str, Any]:
        """The summary as the flow returns it (JSON types; unset optional fields left out)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def finish(self, run: Finishes) -> dict[str, Any]:
        """End the run's manifest with this status and these outputs; returns `dump()`."""
        run.finish(self.status, self.outputs())
        return self.dump()

    record = finish


class CommandSummary(SummaryModel):
    """What a command that is not a stage run returns (tasks/commands.py): no run id nor lineage of its
    own, but always `status`. NaN and infinities stay floats in the JSON dump, as `json.dumps` writes them."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    status: Literal["ok"] = Field(description="always ok: a problem raises ConfigError (exit 2, {status: failed, error})")


class LineMove(SummaryModel):
    """Where a golden set went among the golden-set lines (tasks.promotion.Refs.set_line)."""

    line: str = Field(description="the line now pointing at the golden set")
    chosen: str | None = Field(description="the chosen line after the move (what --golden latest evaluates)")
    previous_chosen: str | None = Field(description="the chosen line before the move")
    changed: bool = Field(description="whether the line's head or inputs changed")


def summary_models() -> dict[str, type[SummaryModel]]:
    """Command -> the model of the summary it returns (`--json`). Imported on call: the stage modules
    import this one."""
    from ragloop.tasks import commands, golden_quality
    from ragloop.tasks.bakeoff import BakeoffSummary
    from ragloop.tasks.calibration import CalibrateSummary
    from ragloop.tasks.eval_run import EvalSummary
    from ragloop.tasks.exports import ExportDatasetSummary
    from ragloop.tasks.golden_sets import ExportSummary, ImportBeirSummary, ImportGoldenSummary
    from ragloop.tasks.index_run import IndexSummary
    from ragloop.tasks.ingest_run import IngestSummary
    from ragloop.tasks.monitor_run import MonitorSummary
    from ragloop.tasks.nightly import LifecycleSummary
    from ragloop.tasks.production import LogsImportSummary
    from ragloop.tasks.synth_run import SynthSummary

    return {"ingest": IngestSummary, "index": IndexSummary, "synth": SynthSummary, "eval": EvalSummary,
            "monitor": MonitorSummary, "run": LifecycleSummary, "golden import": ImportGoldenSummary,
            "import-beir": ImportBeirSummary, "golden export": ExportSummary, "bakeoff": BakeoffSummary,
            "compare": commands.CompareSummary, "lineage": commands.LineageSummary,
            "rollback": commands.RollbackSummary, "promote": commands.PromoteSummary,
            "golden list": commands.GoldenListSummary, "golden use": commands.GoldenUseSummary,
            "golden show": commands.GoldenShowSummary,
            "golden report": golden_quality.GoldenReportSummary, "golden diff": golden_quality.GoldenDiffSummary, "runs": commands.RunsSummary,
            "prompts check": commands.PromptsCheckSummary, "deploy": commands.DeploySummary, "calibrate": CalibrateSummary,
            "export sft": ExportDatasetSummary, "export preference": ExportDatasetSummary,
            "logs import": LogsImportSummary}
