"""Typed stage summaries: the base every stage's summary model shares (pure, no I/O).

A summary dumps exactly the keys that were set: a field with a default is an optional key, absent
(not null) when the stage did not set it, so the dict a flow returns keeps its shape
(`"error" in summary`, `summary.get("line")`) while its contents are checked by the model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# What a run manifest stores beside its outputs (flows.common.RunRecorder); the rest are outputs.
RUN_KEYS = frozenset({"run_id", "status", "lineage"})


class SummaryModel(BaseModel):
    """A summary (or a part of one) that serializes only the fields that were set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_serializer(mode="wrap")
    def _set_keys_only(self, handler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}


class LineMove(SummaryModel):
    """Where a golden set went among the golden-set lines (tasks.promotion.Refs.set_line)."""

    line: str = Field(description="the line now pointing at the golden set")
    chosen: str | None = Field(description="the chosen line after the move (what --golden latest evaluates)")
    previous_chosen: str | None = Field(description="the chosen line before the move")
    changed: bool = Field(description="whether the line's head or inputs changed")


class RunSummary(SummaryModel):
    """The summary of one stage run: run_id, status and lineage, then the stage's outputs."""

    run_id: str = Field(description="the run's id (its manifest in the lake)")
    status: str = Field(description="ok | partial | failed (the stage's own statuses)")
    lineage: dict[str, Any] = Field(description="what the run was made from: config hash, code version, inputs")

    def outputs(self) -> dict[str, Any]:
        """The keys the run manifest stores as outputs (everything but run_id, status, lineage), JSON-ready."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in RUN_KEYS}

    def record(self, run) -> dict[str, Any]:
        """End the run's manifest with this summary (run: flows.common.RunRecorder); returns the summary dict."""
        run.finish(self.status, self.outputs())
        return self.model_dump(mode="json")
