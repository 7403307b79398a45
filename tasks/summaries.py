"""The base of a stage's typed summary: run id, status and lineage, then the stage's own outputs (pure)."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

_RUN_FIELDS = {"run_id", "status", "lineage"}


class Finishes(Protocol):
    """What a summary needs of a run recorder (flows.common.RunRecorder): end its manifest."""

    def finish(self, status: str, outputs: dict) -> dict: ...


class StageSummary(BaseModel):
    """What a stage run returns, and (every field but run_id, status, lineage) the `outputs` of its manifest.

    Output fields a run did not reach are absent from the dumps, not null: a summary keeps exactly the keys
    its run produced (e.g. an ingest stopped by the mass-delete guard has only `lake` and `error`)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(description="the run's id, <UTC time>-<flow>-<random> (tasks.lineage.new_run_id)")
    status: str = Field(description="how the run ended")
    lineage: dict[str, Any] = Field(description="what the run was made from: config hash, git commit, inputs' ids")

    def outputs(self) -> dict[str, Any]:
        """The manifest's outputs: the fields set on this summary, minus run_id, status and lineage."""
        return self.model_dump(exclude_unset=True, exclude=_RUN_FIELDS)

    def dump(self) -> dict[str, Any]:
        """The summary as the flow returns it (JSON types; unset output fields left out)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def finish(self, run: Finishes) -> dict[str, Any]:
        """End the run's manifest with this status and these outputs; returns `dump()`."""
        run.finish(self.status, self.outputs())
        return self.dump()
