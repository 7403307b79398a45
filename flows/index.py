"""index-corpus flow: ingest, then chunk and embed only what changed, upsert into LanceDB, validate, tag."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import flow_settings, stage_run
from ragloop.flows.ingest import ingest_sources
from ragloop.flows.runners import task_map
from ragloop.tasks import index_run, indexing, providers, validation

commit_run = task(indexing.ChunkStore.commit_run, name="write-chunks", cache_policy=NO_CACHE)
refresh_indexes = task(indexing.ChunkStore.refresh_indexes, name="refresh-indexes", cache_policy=NO_CACHE)
validate_chunks = task(validation.validate_chunks, name="validate-chunks", cache_policy=NO_CACHE)
# runner.kind dask: one window per task on a worker. Retried: a window only reads (the flow process commits
# by chunk id), so a retry after a worker died or a call raised duplicates nothing.
chunk_and_embed_window = task(index_run.chunk_and_embed_window, name="chunk-and-embed-window", retries=2,
                              retry_delay_seconds=1, cache_policy=NO_CACHE)


def check_chunking(settings) -> None:
    """ConfigError when the chunking settings do not fit the embedder (a chunk size or an overlap the
    model cannot take); the CLI calls it before any flow starts, so the error is one line."""
    index_run.build_chunker(settings.chunking, providers.current().build_embedder(settings.embedding))


@flow(name="index-corpus")
def index_corpus(
    sources: list[str] | None = None,
    lake: str | None = None,
    chunking: str | None = None,
    config_path: str | None = None,
    progress: bool = False,
    allow_mass_delete: bool = False,
    forget_sources: list[str] | None = None,
) -> dict:
    """Bring the chunks table in line with the sources; embeds only text that has no vector yet.
    Other sources' documents are kept unless named in forget_sources (see ingest_corpus)."""
    settings = flow_settings(config_path, {"lake": lake, "chunking": {"strategy": chunking}, "ingest": {"sources": sources}})
    embedder = providers.current().build_embedder(settings.embedding)
    chunker = index_run.build_chunker(settings.chunking, embedder)  # a config error before any work
    with stage_run("index", settings) as stage:
        with stage.timer("ingest"):
            ingested = ingest_sources(list(settings.ingest.sources), settings.lake, config_path,
                                      allow_mass_delete, forget_sources)
        run = stage.start()
        stage.failure_outputs.update(index_run.carried_outputs(ingested))
        if (failed := index_run.ingest_failed(run.run_id, run.lineage, ingested)) is not None:
            return failed.finish(run)
        store = indexing.ChunkStore(stage.lake, embedder)
        run.lineage.update(index_run.index_lineage(ingested, chunker, settings.chunking, embedder))
        with stage.timer("plan"):
            plan = indexing.plan_index(stage.lake, ingested["snapshot_id"], store, chunker.hash)
        job = index_run.window_job(stage.lake, store, settings, providers.current().embedder)
        with task_map(settings.runner, chunk_and_embed_window, {"job": job}, "docs", bool(plan.to_index)) as remote:
            batches = index_run.ChunkBatches(stage.lake, ingested["snapshot_id"], plan, chunker, store, embedder,
                                             settings.index.docs_per_batch, stage.timer, progress, log_to=run.logger,
                                             remote=remote)
            deleted = index_run.commit_plan(store, plan, batches, stage.timer, commit=commit_run)
        refresh = index_run.needs_refresh(plan, store, settings.index)
        with stage.timer("refresh_indexes"):
            indexes = refresh_indexes(store, settings.index) if refresh else index_run.INDEXES_UNCHANGED
        with stage.timer("validate"):
            table_frame = store.profile().to_pandas()
            report = validate_chunks(table_frame, batches.facts(), store.dim, embedder.counter.max_tokens)
        stage.lake.write_validation(run.run_id, report.suite, report.result)
        index_run.tag_version(store, run.run_id, refresh)
        run.lineage["table"] = index_run.table_ref(store)
        timings_s = stage.timer.report()
        placed = index_run.place_version(stage.lake, store, run.run_id, chunker.hash, plan, report)
        summary = index_run.summarize(run.run_id, run.lineage, ingested, stage.lake.uri, store, plan, batches, deleted,
                                      len(table_frame), indexes, report, timings_s, placed)
        for level, message in index_run.log_lines(summary):
            run.logger.log(level, "%s", message)
        return summary.finish(run)
