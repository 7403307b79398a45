"""One ingest run's bookkeeping (lake I/O, no model): what the previous run knew, the quarantine rows,
the typed summary and whether the latest-snapshot ref moves."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from ragloop.tasks import ingestion, validation
from ragloop.tasks.settings import IndexConfig, IngestConfig
from ragloop.tasks.storage import Lake
from ragloop.tasks.summaries import StageSummary
from ragloop.tasks.validation import ValidationReport


class IngestSummary(StageSummary):
    """What ingest-corpus returns and records. A run stopped by the mass-delete guard has only `lake`
    and `error`; every other run has every field but `error`."""

    status: Literal["ok", "failed"] = Field(description="ok, or failed (mass-delete guard, or the documents suite)")
    lake: str = Field(description="the lake's URI")
    snapshot_id: str | None = Field(None, description="the documents snapshot written (content-derived id)")
    documents: dict[str, int] | None = Field(
        None, description="documents counted: seen, new, changed, unchanged, deleted, quarantined")
    quarantine: list[dict[str, Any]] | None = Field(
        None, description="[{source, reason, detail, new}]; new: not quarantined for that reason by the previous ingest")
    notes: dict[str, int] | None = Field(None, description="files left out by globs, and what loaders rewrote: count per note")
    carried_forward: list[str] | None = Field(
        None, description="doc ids quarantined now whose previous version the snapshot keeps")
    scope: dict[str, Any] | None = Field(
        None, description="sources (resolved paths), other_sources_kept and forgotten (documents), known_sources, labels")
    validation: dict[str, Any] | None = Field(None, description="{documents: {suite, success, evaluated, failures}}")
    error: str | None = Field(None, description="why the run stopped (mass-delete guard)")


@dataclass(frozen=True)
class PreviousIngest:
    """The ingest run the latest-snapshot ref points at (None on a new lake)."""

    run: dict | None

    @property
    def outputs(self) -> dict:
        return (self.run or {}).get("outputs") or {}

    @property
    def known_roots(self) -> list[str] | None:
        """The sources the previous snapshot's documents come from (None when not recorded)."""
        return self.outputs.get("scope", {}).get("known_sources")

    @property
    def quarantined(self) -> set[tuple[str, str]]:
        """(source, reason) of every file the previous run quarantined."""
        return {(q["source"], q["reason"]) for q in self.outputs.get("quarantine") or []}


def previous_ingest(lake: Lake) -> PreviousIngest:
    """The run that wrote the snapshot the 'documents' ref points at."""
    ref = lake.read_ref("documents")
    return PreviousIngest(lake.read_run(ref["run_id"]) if ref and ref.get("run_id") else None)


def documents_subject(snapshot_id: str) -> dict:
    """What the documents suite validates: a snapshot (content-addressed, written once, never changed)."""
    return {"snapshot_id": snapshot_id}


def reused_documents_report(lake: Lake, previous: PreviousIngest, snapshot_id: str) -> ValidationReport | None:
    """The previous ingest's documents verdict when this run's snapshot is the one it validated (a no-op
    re-ingest); None when the snapshot is new or the verdict cannot be reused (then validate)."""
    if previous.run is None or previous.outputs.get("snapshot_id") != snapshot_id:
        return None
    run_id = previous.run["run_id"]
    return validation.reuse(lake.read_validation(run_id, "documents"), "documents", documents_subject(snapshot_id), run_id)


def delete_guard(config: IndexConfig, allow_mass_delete: bool) -> float | None:
    """The share of a source's documents a run may delete (None: no limit, when explicitly allowed)."""
    return None if allow_mass_delete else config.max_delete_fraction


def quarantine_rows(result: ingestion.IngestResult, seen_at: dt.datetime) -> list[dict]:
    """The run's quarantine table rows, one per file set aside."""
    return [{"source_uri": q.source_uri, "reason": q.reason.value, "detail": q.detail,
             "snapshot_id": result.snapshot_id, "seen_at": seen_at} for q in result.quarantine]


def snapshot_or_refusal(lake: Lake, sources: list[str], config: IngestConfig, max_delete_fraction: float | None = None,
                        forget_sources: list[str] | None = None,
                        known_roots: list[str] | None = None) -> ingestion.IngestResult | ingestion.MassDeleteError:
    """ingestion.build_snapshot, with the mass-delete guard's refusal returned, not raised: a refusal is the
    run's answer (nothing written, the summary says why), not a crash, so the task that runs this ends
    completed and no orchestrator prints a traceback before the one-line message. Other errors raise."""
    try:
        return ingestion.build_snapshot(lake, sources, config, max_delete_fraction, forget_sources, known_roots)
    except ingestion.MassDeleteError as refusal:
        return refusal


def mass_delete_summary(run_id: str, lineage: dict, lake_uri: str, error: ingestion.MassDeleteError) -> IngestSummary:
    """A run the mass-delete guard stopped before any write."""
    return IngestSummary(run_id=run_id, status="failed", lineage=lineage, lake=lake_uri, error=str(error))


def summarize(run_id: str, lineage: dict, lake_uri: str, result: ingestion.IngestResult, report: ValidationReport,
              sources: list[str], previous: PreviousIngest) -> IngestSummary:
    """The summary of a run that wrote its snapshot: ok when the documents suite passed, else failed."""
    before = previous.quarantined
    return IngestSummary(
        run_id=run_id, status="ok" if report.success else "failed", lineage=lineage, lake=lake_uri,
        snapshot_id=result.snapshot_id, documents=result.counts,
        # `new` lets the human summary list only news and count the rest.
        quarantine=[{"source": q.source_uri, "reason": q.reason.value, "detail": q.detail,
                     "new": (q.source_uri, q.reason.value) not in before} for q in result.quarantine],
        # What globs left out and what loaders rewrote (notebooks, mkdocs dialects, CSV dialects).
        notes=result.notes,
        carried_forward=result.carried_forward,
        scope={"sources": ingestion.source_roots(list(sources)), "other_sources_kept": result.other_sources_kept,
               "forgotten": result.forgotten, "known_sources": result.known_roots, "labels": result.labels},
        validation={"documents": report.summary()},
    )


@dataclass(frozen=True)
class Published:
    """Whether the latest-snapshot ref moved, and the line to log about it (at `level`)."""

    moved: bool
    level: int
    message: str


def publish_snapshot(lake: Lake, summary: IngestSummary, result: ingestion.IngestResult,
                     report: ValidationReport) -> Published:
    """Point the 'documents' ref at the new snapshot, only when its documents suite passed."""
    if summary.status != "ok":
        return Published(False, logging.ERROR,
                         f"documents suite failed: {report.failures}; the latest-snapshot ref is not moved")
    lake.write_ref("documents", {"snapshot_id": result.snapshot_id, "run_id": summary.run_id})
    c = result.counts
    return Published(True, logging.INFO,
                     f"snapshot {result.snapshot_id}: {c['seen']} documents ({c['new']} new, {c['changed']} changed, "
                     f"{c['unchanged']} unchanged, {c['deleted']} deleted), {c['quarantined']} quarantined")
