"""index-corpus flow: ingest, then chunk and embed only what changed, upsert into LanceDB, validate, tag."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import flow_settings, stage_run
from ragloop.flows.ingest import ingest_sources
from ragloop.flows.runners import task_map
from ragloop.tasks import embedding, index_run, indexing, providers, validation

commit_run = task(indexing.ChunkStore.commit_run, name="write-chunks", cache_policy=NO_CACHE)
refresh_indexes = task(indexing.ChunkStore.refresh_indexes, name="refresh-indexes", cache_policy=NO_CACHE)
validate_chunks = task(validation.validate_chunks, name="validate-chunks", cache_policy=NO_CACHE)
# runner.kind dask: one window per task on a worker. Retried: a window only reads (the flow process commits
# by chunk id), so a retry after a worker died or a call raised duplicates nothing.
chunk_and_embed_window = task(index_run.chunk_and_embed_window, name="chunk-and-embed-window", retries=2,
                              retry_delay_seconds=1, cache_policy=NO_CACHE)


def check_chunking(settings) -> None:
    """ConfigError when the chunking or ANN settings do not fit the embedder (a chunk size or an overlap
    the model cannot take, PQ sub-vectors that do not divide its dimension) or an embeddings endpoint does
    not answer its probe; the CLI calls it before any flow starts, so the error is one line."""
    embedder = providers.current().build_embedder(settings.embedding)
    index_run.build_chunker(settings.chunking, embedder)
    embedding.preflight_embedder(embedder)
    indexing.ann_index(settings.index.ann, embedder.dim)


@flow(name="index-corpus")
def index_corpus(
    sources: list[str] | None = None,
    lake: str | None = None,
    chunking: str | None = None,
    config_path: str | None = None,
    progress: bool = False,
    allow_mass_delete: bool = False,
    forget_sources: list[str] | None = None,
    snapshot_id: str | None = None,
    table: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Bring the chunks table in line with the sources; embeds only text that has no vector yet.
    Other sources' documents are kept unless named in forget_sources (see ingest_corpus).

    A bake-off builds its tables through here: `snapshot_id` indexes that stored snapshot instead of
    ingesting, `table` names the table (tasks.storage.bakeoff_table_name; recorded, never served or made a
    candidate), `overrides` are further settings {section: {key: value}} (its embedding and chunking)."""
    extra = overrides or {}
    settings = flow_settings(config_path, {**extra, "lake": lake, "ingest": {"sources": sources},
                                           "chunking": {**extra.get("chunking", {}), **({"strategy": chunking} if chunking else {})}})
    embedder = providers.current().build_embedder(settings.embedding)
    chunker = index_run.build_chunker(settings.chunking, embedder)  # a config error before any work
    embedding.preflight_embedder(embedder)  # an endpoint answers its probe (and tells its dimension) before any work
    indexing.ann_index(settings.index.ann, embedder.dim)  # likewise
    with stage_run("index", settings) as stage:
        if snapshot_id is not None:
            ingested = index_run.stored_snapshot(stage.lake, snapshot_id)
        else:
            with stage.timer("ingest"):
                ingested = ingest_sources(list(settings.ingest.sources), settings.lake, config_path,
                                          allow_mass_delete, forget_sources)
        run = stage.start()
        stage.failure_outputs.update(index_run.carried_outputs(ingested))
        if (failed := index_run.ingest_failed(run.run_id, run.lineage, ingested)) is not None:
            return failed.finish(run)
        store = indexing.ChunkStore(stage.lake, embedder, table)
        run.lineage.update(index_run.index_lineage(ingested, chunker, settings.chunking, embedder))
        with stage.timer("plan"):
            plan = index_run.plan_run(stage.lake, store, ingested["snapshot_id"], chunker.hash, settings.index)
        job = index_run.window_job(stage.lake, store, settings, providers.current().embedder)
        with task_map(settings.runner, chunk_and_embed_window, {"job": job}, "docs", bool(plan.to_index)) as remote:
            batches = index_run.ChunkBatches(stage.lake, ingested["snapshot_id"], plan, chunker, store, embedder,
                                             settings.index.docs_per_batch, stage.timer, progress, log_to=run.logger,
                                             remote=remote)
            deleted = index_run.commit_plan(store, plan, batches, stage.timer, commit=commit_run)
        report, indexes, refresh = _validate_and_refresh(stage, run, store, plan, batches, embedder, settings.index)
        return _conclude(stage, run, store, ingested, chunker.hash, settings.index, plan, batches, deleted, indexes,
                         report, refresh, bakeoff=table is not None)


def _validate_and_refresh(stage, run, store: indexing.ChunkStore, plan, batches, embedder, index_config):
    """The chunks suite (timed `validate`) while the indexes refresh (timed `refresh_indexes`): it checks the
    committed rows (read first), which a refresh only re-organizes; its verdict names the version the refresh
    leaves. -> (validation report, what happened to each index, whether they were refreshed)."""
    refresh = index_run.needs_refresh(plan, store, index_config)
    with stage.timer("validate"):
        reused = index_run.reused_chunks_report(stage.lake, store, plan, embedder)
        table_frame = None if reused else store.profile().to_pandas()
        refreshing = refresh_indexes.submit(store, index_config) if refresh else None
        report = reused or validate_chunks(table_frame, batches.facts(), store.dim, embedder.counter.max_tokens)
    with stage.timer("refresh_indexes"):
        indexes = refreshing.result() if refreshing else index_run.INDEXES_UNCHANGED
    report = reused or validation.stamp(report, index_run.chunks_subject(store, embedder))
    stage.lake.write_validation(run.run_id, report.suite, report.result)
    return report, indexes, refresh


def _conclude(stage, run, store: indexing.ChunkStore, ingested: dict, chunker_hash: str, index_config, plan, batches,
              deleted, indexes, report, refresh: bool, bakeoff: bool) -> dict:
    """Tag the version, record lineage and the index state, place the version (serve it, make it the candidate,
    or record a bake-off table), and finish the run with its summary and log lines."""
    index_run.tag_version(store, run.run_id, refresh)
    run.lineage["table"] = index_run.table_ref(store)
    run.lineage.update(index_run.ann_lineage(store))
    timings_s = stage.timer.report()
    placed = index_run.place_version(stage.lake, store, run.run_id, chunker_hash, plan, report, bakeoff=bakeoff)
    index_run.record_state(stage.lake, store, run.run_id, ingested["snapshot_id"], chunker_hash, index_config, plan, report)
    summary = index_run.summarize(run.run_id, run.lineage, ingested, stage.lake.uri, store, plan, batches, deleted,
                                  store.count(), indexes, report, timings_s, placed)
    for level, message in index_run.log_lines(summary):
        run.logger.log(level, "%s", message)
    return summary.finish(run)
