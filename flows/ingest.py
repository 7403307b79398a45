"""ingest-corpus flow: sources -> documents snapshot + quarantine + GE validation + run manifest."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import check_sources, flow_settings, stage_run
from ragloop.tasks import ingestion, validation

# Content hashes are our idempotency mechanism, not Prefect's result cache (STYLE.md).
build_snapshot = task(ingestion.build_snapshot, name="build-snapshot", cache_policy=NO_CACHE)
validate_documents = task(validation.validate_documents, name="validate-documents", cache_policy=NO_CACHE)


@flow(name="ingest-corpus")
def ingest_corpus(sources: list[str] | None = None, lake: str | None = None, config_path: str | None = None,
                  allow_mass_delete: bool = False, forget_sources: list[str] | None = None) -> dict:
    """Load every source file, quarantine bad ones, write a snapshot and move the ref if it validates.

    Documents of sources not given are kept (scoped cleanup) unless their source is in forget_sources;
    a source losing more than index.max_delete_fraction of its documents fails the run before any
    write, unless allow_mass_delete."""
    settings = flow_settings(config_path, {"lake": lake, "ingest": {"sources": sources}})
    check_sources(settings.ingest.sources)
    with stage_run("ingest", settings) as stage:
        store, run = stage.lake, stage.start()
        previous = store.read_ref("documents")
        previous_run = store.read_run(previous["run_id"]) if previous and previous.get("run_id") else None
        known_roots = ((previous_run or {}).get("outputs") or {}).get("scope", {}).get("known_sources")
        try:
            result = build_snapshot(store, list(settings.ingest.sources), settings.ingest,
                                    None if allow_mass_delete else settings.index.max_delete_fraction, forget_sources,
                                    known_roots)
        except ingestion.MassDeleteError as exc:
            run.logger.error("%s", exc)
            return run.finish("failed", {"lake": store.uri, "error": str(exc)})
        store.write_quarantine(
            run.run_id,
            [
                {"source_uri": q.source_uri, "reason": q.reason.value, "detail": q.detail,
                 "snapshot_id": result.snapshot_id, "seen_at": run.started_at}
                for q in result.quarantine
            ],
        )
        before = {(q["source"], q["reason"]) for q in ((previous_run or {}).get("outputs") or {}).get("quarantine") or []}
        frame = store.snapshot_profile(result.snapshot_id)
        report = validate_documents(frame)
        store.write_validation(run.run_id, report.suite, report.result)
        run.lineage.update({"snapshot_id": result.snapshot_id, "previous_snapshot_id": result.previous_snapshot_id})
        outputs = {
            "lake": store.uri,
            "snapshot_id": result.snapshot_id,
            "documents": result.counts,
            # `new`: not quarantined (for the same reason) by the previous ingest, so the human summary can
            # list only news and count the rest.
            "quarantine": [{"source": q.source_uri, "reason": q.reason.value, "detail": q.detail,
                            "new": (q.source_uri, q.reason.value) not in before} for q in result.quarantine],
            # What globs left out and what loaders rewrote (notebooks, mkdocs dialects, CSV dialects).
            "notes": result.notes,
            "carried_forward": result.carried_forward,
            "scope": {"sources": ingestion.source_roots(list(settings.ingest.sources)),
                      "other_sources_kept": result.other_sources_kept, "forgotten": result.forgotten,
                      "known_sources": result.known_roots, "labels": result.labels},
            "validation": {"documents": report.summary()},
        }
        if not report.success:
            run.logger.error("documents suite failed: %s; the latest-snapshot ref is not moved", report.failures)
            return run.finish("failed", outputs)
        store.write_ref("documents", {"snapshot_id": result.snapshot_id, "run_id": run.run_id})
        c = result.counts
        run.logger.info(
            "snapshot %s: %d documents (%d new, %d changed, %d unchanged, %d deleted), %d quarantined",
            result.snapshot_id, c["seen"], c["new"], c["changed"], c["unchanged"], c["deleted"], c["quarantined"],
        )
        return run.finish("ok", outputs)
