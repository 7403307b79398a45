"""index-corpus flow: ingest, then chunk and embed only what changed, upsert into LanceDB, validate, tag."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from flows.common import RunRecorder, StageTimer, flow_settings, lake_locked
from flows.ingest import ingest_corpus
from tasks import indexing, promotion, validation
from tasks.chunking import Chunker
from tasks.embedding import load_embedder
from tasks.settings import ConfigError
from tasks.storage import Lake

chunk_documents = task(Chunker.chunk_documents, name="chunk-documents", cache_policy=NO_CACHE)
embed_missing = task(indexing.embed_missing, name="embed-missing", cache_policy=NO_CACHE)
delete_documents = task(indexing.ChunkStore.delete_documents, name="delete-documents", cache_policy=NO_CACHE)
refresh_indexes = task(indexing.ChunkStore.refresh_indexes, name="refresh-indexes", cache_policy=NO_CACHE)
validate_chunks = task(validation.validate_chunks, name="validate-chunks", cache_policy=NO_CACHE)


@task(name="upsert-chunks", cache_policy=NO_CACHE)
def upsert_chunks(
    store: indexing.ChunkStore, chunks: list, embedded: indexing.Embedded, doc_ids: list[str]
) -> tuple[int, pd.DataFrame]:
    """Replace the batch's documents in the table; returns (stale rows deleted, per-row facts for
    the chunks suite)."""
    stale = store.replace_documents(indexing.chunk_rows(chunks, embedded.vectors, store.dim), doc_ids)
    return stale, pd.DataFrame(
        {
            "chunk_id": [c.chunk_id for c in chunks],
            "text_length": [len(c.text) for c in chunks],
            "vector_dim": [embedded.vectors.shape[1]] * len(chunks),
            "vector_norm": np.linalg.norm(embedded.vectors, axis=1) if len(chunks) else [],
        }
    )


@flow(name="index-corpus")
@lake_locked("index")
def index_corpus(
    sources: list[str] | None = None,
    lake: str | None = None,
    chunking: str | None = None,
    config_path: str | None = None,
    progress: bool = False,
) -> dict:
    """Bring the chunks table in line with the sources; embeds only text that has no vector yet."""
    settings = flow_settings(config_path, {"lake": lake, "chunking": {"strategy": chunking}, "ingest": {"sources": sources}})
    embedder = load_embedder(settings.embedding)
    try:  # checked before any work: a chunk size the model would silently truncate is a config error
        chunker = Chunker(settings.chunking, embedder.counter)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc

    timer = StageTimer()
    with timer("ingest"):
        ingested = ingest_corpus(sources=list(settings.ingest.sources), lake=settings.lake, config_path=config_path)
    store_lake = Lake(settings.lake)
    run = RunRecorder(store_lake, "index", settings)
    base_outputs = {k: ingested[k] for k in ("documents", "quarantine") if k in ingested}
    if ingested["status"] != "ok":
        return run.finish("failed", {**base_outputs, "error": f"ingest run {ingested['run_id']} {ingested['status']}",
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
        with timer("delete"):
            deleted = delete_documents(store, plan.to_delete) if plan.to_delete else 0
        counts = {"embedded": 0, "reused": 0, "written": 0, "truncated": 0}
        written_frames = []
        bar = tqdm(total=len(plan.to_index), desc="indexing documents", unit="doc",
                   disable=not (progress and sys.stderr.isatty()), file=sys.stderr)
        for docs in indexing.iter_document_batches(store_lake, snapshot_id, plan.to_index, settings.index.docs_per_batch):
            with timer("chunk"):
                chunks = chunk_documents(chunker, docs)
            with timer("embed"):
                embedded = embed_missing(chunks, store, embedder)
            with timer("upsert"):
                stale, facts = upsert_chunks(store, chunks, embedded, [d.doc_id for d in docs])
            written_frames.append(facts)
            deleted += stale
            counts["embedded"] += embedded.encoded
            counts["reused"] += embedded.reused
            counts["written"] += len(chunks)
            counts["truncated"] += sum(1 for c in chunks if c.metadata.get("truncated"))
            bar.update(len(docs))
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
