"""ingest-corpus flow: sources -> documents snapshot + quarantine + GE validation + run manifest."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import check_sources, flow_settings, stage_run
from ragloop.tasks import ingest_run, ingestion, validation

# Content hashes are our idempotency mechanism, not Prefect's result cache (STYLE.md).
build_snapshot = task(ingest_run.snapshot_or_refusal, name="build-snapshot", cache_policy=NO_CACHE)
validate_documents = task(validation.validate_documents, name="validate-documents", cache_policy=NO_CACHE)


@flow(name="ingest-corpus")
def ingest_corpus(sources: list[str] | None = None, lake: str | None = None, config_path: str | None = None,
                  allow_mass_delete: bool = False, forget_sources: list[str] | None = None) -> dict:
    """Load every source file, quarantine bad ones, write a snapshot and move the ref if it validates.

    Documents of sources not given are kept (scoped cleanup) unless their source is in forget_sources;
    a source losing more than index.max_delete_fraction of its documents fails the run before any
    write, unless allow_mass_delete."""
    return ingest_sources(sources, lake, config_path, allow_mass_delete, forget_sources)


def ingest_sources(sources: list[str] | None, lake: str | None, config_path: str | None,
                   allow_mass_delete: bool = False, forget_sources: list[str] | None = None) -> dict:
    """The ingest stage as tasks of the calling flow: its own ingest-corpus run, or the index-corpus run
    (so an index run is one flow run, not two). Either way it writes its own 'ingest' run manifest."""
    settings = flow_settings(config_path, {"lake": lake, "ingest": {"sources": sources}})
    check_sources(settings.ingest.sources)
    with stage_run("ingest", settings) as stage:
        run = stage.start()
        previous = ingest_run.previous_ingest(stage.lake)
        result = build_snapshot(stage.lake, list(settings.ingest.sources), settings.ingest,
                                ingest_run.delete_guard(settings.index, allow_mass_delete), forget_sources,
                                previous.known_roots)
        if isinstance(result, ingestion.MassDeleteError):
            run.logger.error("%s", result)
            return ingest_run.mass_delete_summary(run.run_id, run.lineage, stage.lake.uri, result).finish(run)
        stage.lake.write_quarantine(run.run_id, ingest_run.quarantine_rows(result, run.started_at))
        report = ingest_run.reused_documents_report(stage.lake, previous, result.snapshot_id) or validate_documents(
            stage.lake.snapshot_profile(result.snapshot_id), ingest_run.documents_subject(result.snapshot_id))
        stage.lake.write_validation(run.run_id, report.suite, report.result)
        run.lineage.update({"snapshot_id": result.snapshot_id, "previous_snapshot_id": result.previous_snapshot_id})
        summary = ingest_run.summarize(run.run_id, run.lineage, stage.lake.uri, result, report, settings.ingest.sources, previous)
        published = ingest_run.publish_snapshot(stage.lake, summary, result, report)
        run.logger.log(published.level, "%s", published.message)
        return summary.finish(run)
