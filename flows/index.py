"""index-corpus flow: ingest, then chunk and embed only what changed, upsert into LanceDB, validate, tag."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from ragloop.flows.common import RunRecorder, StageTimer, flow_settings, lake_locked
from ragloop.flows.ingest import ingest_corpus
from ragloop.tasks import providers
from ragloop.tasks import indexing, promotion, validation
from ragloop.tasks.chunking import Chunker
from ragloop.tasks.settings import ConfigError
from ragloop.tasks.storage import Lake

commit_run = task(indexing.ChunkStore.commit_run, name="write-chunks", cache_policy=NO_CACHE)
refresh_indexes = task(indexing.ChunkStore.refresh_indexes, name="refresh-indexes", cache_policy=NO_CACHE)
validate_chunks = task(validation.validate_chunks, name="validate-chunks", cache_policy=NO_CACHE)


def _facts(chunks: list, embedded: indexing.Embedded) -> pd.DataFrame:
    """Per-row facts of the written chunks for the chunks suite."""
    return pd.DataFrame(
        {
            "chunk_id": [c.chunk_id for c in chunks],
            "text_length": [len(c.text) for c in chunks],
            "vector_dim": [embedded.vectors.shape[1]] * len(chunks),
            "vector_norm": np.linalg.norm(embedded.vectors, axis=1) if len(chunks) else [],
        }
    )


def check_chunking(settings) -> None:
    """ConfigError when the chunking settings do not fit the embedder (a chunk size or an overlap the
    model cannot take); the CLI calls it before any flow starts, so the error is one line."""
    try:
        Chunker(settings.chunking, providers.current().build_embedder(settings.embedding).counter)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


@flow(name="index-corpus")
@lake_locked("index")
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
    try:  # checked before any work: a chunk size the model would silently truncate is a config error
        chunker = Chunker(settings.chunking, embedder.counter)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc

    timer = StageTimer()
    with timer("ingest"):
        ingested = ingest_corpus(sources=list(settings.ingest.sources), lake=settings.lake, config_path=config_path,
                                 allow_mass_delete=allow_mass_delete, forget_sources=forget_sources)
    store_lake = Lake(settings.lake)
    run = RunRecorder(store_lake, "index", settings)
    base_outputs = {k: ingested[k] for k in ("documents", "quarantine", "scope", "notes") if k in ingested}
    if ingested["status"] != "ok":
        return run.finish("failed", {**base_outputs, "error": f"ingest run {ingested['run_id']} {ingested['status']}"
                                     + (f": {ingested['error']}" if ingested.get("error") else ""),
                                     "validation": ingested.get("validation", {})})
    try:
        snapshot_id = ingested["snapshot_id"]
        store = indexing.ChunkStore(store_lake, embedder)
        run.lineage.update(
            {
                "snapshot_id": snapshot_id,
                "ingest_run_id": ingested["run_id"],
                "chunker_hash": chunker.hash,
                "chunker": {**settings.chunking.model_dump(), "capacity": chunker.capacity},
                "embedder": {"name": embedder.name, "weights_sha256": embedder.weights_sha256,
                             "dim": embedder.dim, "max_tokens": embedder.counter.max_tokens},
            }
        )
        with timer("plan"):
            plan = indexing.plan_index(store_lake, snapshot_id, store, chunker.hash)
        counts = {"embedded": 0, "reused": 0, "written": 0, "truncated": 0}
        written_frames = []
        bar = tqdm(total=len(plan.to_index), desc="indexing documents", unit="doc",
                   disable=not (progress and sys.stderr.isatty()), file=sys.stderr)
        fresh = indexing.FreshVectors()

        def batches():
            # Consumed by LanceDB inside the run's one commit (on its own thread): plain calls, no tasks.
            for docs in indexing.iter_document_batches(store_lake, snapshot_id, plan.to_index, settings.index.docs_per_batch):
                with timer("chunk"):
                    chunks = chunker.chunk_documents(docs)
                with timer("embed"):
                    embedded = indexing.embed_missing(chunks, store, embedder, fresh)
                written_frames.append(_facts(chunks, embedded))
                counts["embedded"] += embedded.encoded
                counts["reused"] += embedded.reused
                counts["written"] += len(chunks)
                counts["truncated"] += sum(1 for c in chunks if c.metadata.get("truncated"))
                bar.update(len(docs))
                yield indexing.chunk_rows(chunks, embedded.vectors, store.dim, {d.doc_id: d.metadata for d in docs})

        deleted = 0
        if plan.to_index or plan.to_delete:
            # One commit for the whole run: vanished documents and stale rows are deleted together with
            # the upserts, so no table version ever mixes this run's changes with the previous state, and
            # vectors are looked up while the vanished documents' rows still exist (a move re-embeds nothing).
            with timer("upsert"):
                deleted = commit_run(store, batches(), plan.replaced + plan.to_delete)
            # The batches were chunked and embedded inside the commit: upsert is what LanceDB itself took.
            timer.seconds["upsert"] -= timer.seconds.get("chunk", 0.0) + timer.seconds.get("embed", 0.0)
        bar.close()
        changed = bool(plan.to_index or plan.to_delete)
        refresh = changed or store.indexes_stale(settings.index)  # also repairs what a killed run left undone
        with timer("refresh_indexes"):
            index_actions = refresh_indexes(store, settings.index) if refresh else {"fts": "unchanged", "ann": "unchanged"}
        with timer("validate"):
            table_frame = store.profile().to_pandas()
            written = pd.concat(written_frames) if written_frames else pd.DataFrame(
                columns=["chunk_id", "text_length", "vector_dim", "vector_norm"])
            report = validate_chunks(table_frame, written, store.dim, embedder.counter.max_tokens)
        store_lake.write_validation(run.run_id, report.suite, report.result)
        if refresh:
            store.tag(run.run_id)
        table = {"name": store.name, "version": store.version}
        run.lineage["table"] = table
        outputs = {
            **base_outputs,
            "lake": store_lake.uri,
            "snapshot_id": snapshot_id,
            "chunks": {"total": len(table_frame), "embedded": counts["embedded"], "reused": counts["reused"],
                       "written": counts["written"], "deleted": deleted, "truncated": counts["truncated"]},
            "documents_indexed": len(plan.to_index),
            "index_plan": plan.counts(),
            "table": table,
            "indexes": index_actions,
            "validation": {**ingested.get("validation", {}), "chunks": report.summary()},
            "timings_s": timer.report(),
        }
        if not report.success:
            run.logger.error("chunks suite failed: %s; the serving table version is not moved", report.failures)
            return run.finish("failed", outputs)
        # Blue/green: a new embedder, backend or chunker is a candidate until the gate passes on it.
        placed = promotion.Refs(store_lake).record_index(store.name, store.version, run.run_id, chunker.hash, changed)
        outputs.update(serving=placed["serving"], candidate=placed["candidate"],
                       disposition={"action": placed["action"], "reason": placed["reason"]})
        run.logger.info("index version %s v%d: %s (%s)", store.name, store.version, placed["action"], placed["reason"])
        run.logger.info(
            "table %s v%d: %d chunks; %d documents re-chunked, %d texts embedded, %d vectors reused, %d chunks deleted",
            store.name, store.version, len(table_frame), len(plan.to_index), counts["embedded"], counts["reused"], deleted,
        )
        return run.finish("ok", outputs)
    except BaseException as exc:
        run.finish("failed", {**base_outputs, "error": f"{type(exc).__name__}: {exc}"})
        raise
