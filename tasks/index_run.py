"""One index run's decisions and bookkeeping (lake and table I/O through the given store): the chunker
check, what the run carries over from its ingest, the batches of its one commit, whether indexes are
refreshed and the version tagged, where a validated version goes (serving or candidate), the typed
summary and its log lines."""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from ragloop.tasks import indexing, interrupts, promotion, validation
from ragloop.tasks.chunking import Chunk, Chunker
from ragloop.tasks.embedding import Embedder, load_embedder
from ragloop.tasks.indexing import ChunkStore, IndexPlan
from ragloop.tasks.progress import Progress
from ragloop.tasks.schemas import Document
from ragloop.tasks.settings import ChunkingConfig, ConfigError, EmbeddingConfig, IndexConfig
from ragloop.tasks.storage import Lake
from ragloop.tasks.summaries import StageSummary
from ragloop.tasks.validation import ValidationReport

CARRIED = ("documents", "quarantine", "scope", "notes", "carried_forward")  # what an index summary repeats of its ingest's
INDEXES_UNCHANGED = {"fts": "unchanged", "ann": "unchanged"}
FACT_COLUMNS = ["chunk_id", "text_length", "vector_dim", "vector_norm"]


class IndexSummary(StageSummary):
    """What index-corpus returns and records. A run whose ingest failed has the ingest's `documents`,
    `quarantine`, `scope`, `notes` (those it had), `error` and `validation`; a run whose chunks suite
    failed has everything but `serving`, `candidate` and `disposition`; an ok run has every field but
    `error`."""

    status: Literal["ok", "failed"] = Field(description="ok, or failed (the ingest failed, or the chunks suite)")
    documents: dict[str, int] | None = Field(
        None, description="the ingest's document counts: seen, new, changed, unchanged, deleted, quarantined")
    quarantine: list[dict[str, Any]] | None = Field(None, description="the ingest's [{source, reason, detail, new}]")
    scope: dict[str, Any] | None = Field(None, description="the ingest's scope: sources, other_sources_kept, forgotten, ...")
    notes: dict[str, int] | None = Field(None, description="the ingest's notes: count per note")
    carried_forward: list[str] | None = Field(
        None, description="the ingest's doc ids quarantined now whose previous version the snapshot keeps")
    error: str | None = Field(None, description="'ingest run <run_id> <status>[: <error>]' when the ingest failed")
    lake: str | None = Field(None, description="the lake's URI")
    snapshot_id: str | None = Field(None, description="the documents snapshot indexed")
    chunks: dict[str, int] | None = Field(
        None, description="chunks: total in the table; embedded (texts encoded), reused (vectors), written, deleted, "
                          "truncated by this run")
    documents_indexed: int | None = Field(None, description="documents (re)chunked by this run")
    index_plan: dict[str, int] | None = Field(
        None, description="documents new, changed, unchanged, deleted, measured against the table")
    table: dict[str, Any] | None = Field(None, description="{name, version} of the chunks table after the run")
    indexes: dict[str, str] | None = Field(None, description="what happened to each index: fts, fts_tokenizer, ann")
    validation: dict[str, Any] | None = Field(
        None, description="suite name (documents, chunks) -> {suite, success, evaluated, failures}")
    timings_s: dict[str, float] | None = Field(None, description="wall seconds per step (ingest, plan, chunk, embed, ...)")
    serving: dict[str, Any] | None = Field(None, description="{table, version} served after the run, or null")
    candidate: dict[str, Any] | None = Field(None, description="{table, version} pending its gate, or null")
    disposition: dict[str, str] | None = Field(
        None, description="{action: serve | candidate | ..., reason}: where this version went")


class Timer(Protocol):
    """A step timer (flows.common.StageTimer): `with timer(name):` adds wall seconds to `seconds[name]`."""

    seconds: dict[str, float]

    def __call__(self, name: str) -> AbstractContextManager: ...


def build_chunker(config: ChunkingConfig, embedder: Embedder) -> Chunker:
    """The run's chunker; ConfigError when the settings do not fit the embedder (a chunk size the model
    would silently truncate, an overlap as big as a chunk), checked before any work."""
    try:
        return Chunker(config, embedder.counter)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def carried_outputs(ingested: Mapping[str, Any]) -> dict[str, Any]:
    """What the index summary repeats of its ingest's summary (the keys of CARRIED it has)."""
    return {k: ingested[k] for k in CARRIED if k in ingested}


def ingest_failed(run_id: str, lineage: dict, ingested: Mapping[str, Any]) -> IndexSummary | None:
    """The failed summary of an index run whose ingest did not end ok; None when it did."""
    if ingested["status"] == "ok":
        return None
    error = f"ingest run {ingested['run_id']} {ingested['status']}" + (
        f": {ingested['error']}" if ingested.get("error") else "")
    return IndexSummary(run_id=run_id, status="failed", lineage=lineage, **carried_outputs(ingested), error=error,
                        validation=ingested.get("validation", {}))


def index_lineage(ingested: Mapping[str, Any], chunker: Chunker, chunking: ChunkingConfig, embedder: Embedder) -> dict:
    """The lineage an index run adds: its snapshot and ingest run, the chunker and the embedder."""
    return {
        "snapshot_id": ingested["snapshot_id"],
        "ingest_run_id": ingested["run_id"],
        "chunker_hash": chunker.hash,
        "chunker": {**chunking.model_dump(), "capacity": chunker.capacity},
        "embedder": {"name": embedder.name, "weights_sha256": embedder.weights_sha256,
                     "dim": embedder.dim, "max_tokens": embedder.counter.max_tokens,
                     **({"endpoint": embedder.endpoint} if getattr(embedder, "endpoint", None) else {})},
    }


def chunk_facts(chunks: Sequence, vectors: np.ndarray) -> pd.DataFrame:
    """Per-row facts of written chunks for the chunks suite: chunk_id, text_length, vector_dim, vector_norm."""
    return pd.DataFrame(
        {
            "chunk_id": [c.chunk_id for c in chunks],
            "text_length": [len(c.text) for c in chunks],
            "vector_dim": [vectors.shape[1]] * len(chunks),
            "vector_norm": np.linalg.norm(vectors, axis=1) if len(chunks) else [],
        }
    )


PIPELINE_DOCS = 32  # documents per chunking step of a window's chunk -> encode pipeline
PIPELINE_FIRST_DOCS = 4  # the first step's documents: the encoder waits for it alone, so the steps start small


def pipeline_steps(docs: Sequence, first: int, size: int) -> list[Sequence]:
    """The documents in consecutive steps of first, 2 x first, ... up to `size` each (then `size`): the
    encoder starts after a step of `first` documents instead of `size`, and the later, larger steps
    keep the per-step cost low."""
    steps, start, step = [], 0, max(1, min(first, size))
    while start < len(docs):
        steps.append(docs[start:start + step])
        start += step
        step = min(step * 2, size)
    return steps


def pipelined(items: Sequence, fn: Callable, timer: Timer, name: str, ahead: int = 2) -> Iterator:
    """fn(item) for each item in order; with several items, computed on one worker thread up to `ahead`
    items before the consumer asks (a bounded pipeline). Timed as `name`: the time the consumer waits.
    An exception in fn is raised to the consumer; leaving early waits for at most `ahead` items."""
    if len(items) < 2:
        for item in items:
            with timer(name):
                result = fn(item)
            yield result
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunking") as pool:
        pending = deque(pool.submit(fn, item) for item in items[:ahead])
        rest = iter(items[ahead:])
        try:
            while pending:
                with timer(name):
                    result = pending.popleft().result()
                following = next(rest, None)
                if following is not None:
                    pending.append(pool.submit(fn, following))
                yield result
        finally:
            for future in pending:
                future.cancel()


@dataclass(frozen=True)
class WindowJob:
    """What a worker needs to chunk and embed a window on its own: small and picklable. `version` is the
    table version the run started from (its vector look-ups see the state before the run's commit);
    `embedder_factory` builds the embedder from `embedding` (a module-level function: pickled by name)."""

    lake: str
    table: str
    dim: int
    version: int
    chunking: ChunkingConfig
    embedding: EmbeddingConfig
    embedder_factory: Callable[[EmbeddingConfig], Embedder] = load_embedder


@dataclass
class WindowResult:
    """A window's chunks (document order) and their float32 vectors (len(chunks) x dim); `encoded` texts
    were sent to the model, `reused` chunks found a vector in the table."""

    chunks: list[Chunk]
    vectors: np.ndarray
    encoded: int
    reused: int


_WORKER_MODELS: dict[tuple, tuple[Embedder, Chunker]] = {}  # per process: (factory, embedding, chunking) -> both


def window_job(lake: Lake, store: ChunkStore, settings, embedder_factory: Callable[[EmbeddingConfig], Embedder]) -> WindowJob:
    """The job a worker needs for this run's windows (`settings`: the run's Settings)."""
    return WindowJob(lake.uri, store.name, store.dim, store.version, settings.chunking, settings.embedding,
                     embedder_factory)


def worker_models(job: WindowJob) -> tuple[Embedder, Chunker]:
    """The embedder and chunker of a job, built once per process (a Dask worker loads its model on its
    first window and keeps it; the config objects are frozen, so they key the cache)."""
    factory = job.embedder_factory
    key = (getattr(factory, "__module__", None), getattr(factory, "__qualname__", repr(factory)),
           job.embedding, job.chunking)
    if key not in _WORKER_MODELS:
        embedder = factory(job.embedding)
        _WORKER_MODELS[key] = (embedder, build_chunker(job.chunking, embedder))
    return _WORKER_MODELS[key]


def chunk_and_embed_window(docs: list[Document], job: WindowJob) -> WindowResult:
    """Chunk a window of documents and embed the chunk texts that have no vector in the table (read-only,
    at job.version); writes nothing, so a retried or duplicated call changes nothing. Same chunks and
    vectors as the local runner for a per-text encoder; a torch encoder gets this window's texts as its
    batch, as locally, except texts the local runner already encoded in an earlier window of the run."""
    embedder, chunker = worker_models(job)
    store = ChunkStore.reader(Lake(job.lake), job.table, job.dim, job.version)
    chunks = chunker.chunk_documents(docs)
    embedded = indexing.embed_missing(chunks, store, embedder)
    return WindowResult(chunks, embedded.vectors, embedded.encoded, embedded.reused)


def in_order(items: Iterable, submit: Callable[[Any], Any], ahead: int) -> Iterator[tuple[Any, Any]]:
    """(item, submit(item).result()) for each item, in input order, with at most `ahead` submitted and
    not yet consumed (a bounded window over a lazily read input). `submit` returns a future-like object;
    its exception is raised to the consumer. Leaving early leaves the pending futures to their runner."""
    pending: deque = deque()
    for item in items:
        pending.append((item, submit(item)))
        if len(pending) >= ahead:
            item, future = pending.popleft()
            yield item, future.result()
    while pending:
        item, future = pending.popleft()
        yield item, future.result()


WindowMap = Callable[[Iterator[list[Document]]], Iterator[tuple[list[Document], WindowResult]]]


class ChunkBatches:
    """The plan's documents chunked and embedded batch by batch, as chunk rows for the run's one commit,
    counting what was done: `counts` (embedded, reused, written, truncated) and `facts()`.

    LanceDB consumes the batches inside the commit, on its own thread. Locally (`remote` None) the
    windows are plain calls in this process. With `remote` (the Dask runner: a WindowMap that sends each
    window to chunk_and_embed_window on a worker and yields results in window order), workers return chunk
    rows and vectors and this process alone writes; `embed` then times the waits for workers.
    With `progress`, documents done show as a bar on a terminal, else as lines on `log_to` (tasks.progress)."""

    def __init__(self, lake: Lake, snapshot_id: str, plan: IndexPlan, chunker: Chunker, store: ChunkStore,
                 embedder: Embedder, docs_per_batch: int, timer: Timer, progress: bool = False,
                 log_to: logging.Logger | logging.LoggerAdapter | None = None, remote: WindowMap | None = None) -> None:
        self.lake, self.snapshot_id, self.plan = lake, snapshot_id, plan
        self.chunker, self.store, self.embedder = chunker, store, embedder
        self.docs_per_batch, self.timer, self.remote = docs_per_batch, timer, remote
        self.counts = {"embedded": 0, "reused": 0, "written": 0, "truncated": 0}
        self._frames: list[pd.DataFrame] = []
        self._fresh = indexing.FreshVectors()
        self._bar = Progress("indexing documents", len(plan.to_index), unit="doc", enabled=progress, log_to=log_to)

    def __iter__(self) -> Iterator[pa.Table]:
        windows = indexing.iter_document_batches(self.lake, self.snapshot_id, self.plan.to_index, self.docs_per_batch)
        for docs, (chunks, vectors) in self._worked(windows):
            interrupts.check()  # Ctrl-C: this runs on LanceDB's thread, which a KeyboardInterrupt never reaches
            self._frames.append(chunk_facts(chunks, vectors))
            self.counts["written"] += len(chunks)
            self.counts["truncated"] += sum(1 for c in chunks if c.metadata.get("truncated"))
            self._bar.update(len(docs))
            yield indexing.chunk_rows(chunks, vectors, self.store.dim, {d.doc_id: d.metadata for d in docs})

    def _worked(self, windows: Iterator[list[Document]]) -> Iterator[tuple[list[Document], tuple[list, np.ndarray]]]:
        if self.remote is None:
            for docs in windows:
                yield docs, self._chunk_and_embed(docs)
            return
        results = self.remote(windows)
        while True:
            with self.timer("embed"):
                done = next(results, None)
            if done is None:
                return
            docs, result = done
            self.counts["embedded"] += result.encoded
            self.counts["reused"] += result.reused
            yield docs, (result.chunks, result.vectors)

    def _chunk_and_embed(self, docs: list) -> tuple[list, np.ndarray]:
        """The window's chunks and their vectors. For an encoder whose vectors depend on each text alone,
        the window is chunked in steps on a worker thread (pipeline_steps: 4, 8, 16, then 32 documents,
        shortest first), up to two steps ahead of the encoder, so chunking overlaps encoding; `chunk` then
        times only the waits for chunks.
        Chunk ids are per document and vectors per text, so the rows are the same as in one piece (in
        another order within the window)."""
        # Shortest documents first: the encoder starts at once, and a long one (FastAPI's 700 KB release notes
        # take 2.6 s to chunk) is chunked while the encoder works through the steps before it, not while it waits.
        steps = pipeline_steps(sorted(docs, key=lambda d: len(d.text)), PIPELINE_FIRST_DOCS, PIPELINE_DOCS)
        if len(steps) < 2 or not getattr(self.embedder, "per_text", False):
            steps = [docs]
        chunks, parts = [], []
        for part in pipelined(steps, self.chunker.chunk_documents, self.timer, "chunk"):
            interrupts.check()
            with self.timer("embed"):
                embedded = indexing.embed_missing(part, self.store, self.embedder, self._fresh)
            chunks.extend(part)
            parts.append(embedded.vectors)
            self.counts["embedded"] += embedded.encoded
            self.counts["reused"] += embedded.reused
        return chunks, np.concatenate(parts) if parts else np.zeros((0, self.store.dim), dtype=np.float32)

    def facts(self) -> pd.DataFrame:
        """The facts of every chunk written so far (an empty frame with the columns when none)."""
        return pd.concat(self._frames) if self._frames else pd.DataFrame(columns=FACT_COLUMNS)

    def close(self) -> None:
        """Close the progress bar (once the commit consumed the batches)."""
        self._bar.close()


INDEX_SETTINGS = ("fts", "fts_tokenizer", "ann_min_rows", "ann")  # the index settings that shape the table's indexes


def _state_ref(store: ChunkStore) -> str:
    return f"indexed__{store.name}"


def _state(store: ChunkStore, snapshot_id: str, chunker_hash: str, config: IndexConfig) -> dict:
    return {"snapshot_id": snapshot_id, "chunker_hash": chunker_hash,
            "indexes": config.model_dump(include=set(INDEX_SETTINGS)), "version": store.version, "rows": store.count()}


def plan_run(lake: Lake, store: ChunkStore, snapshot_id: str, chunker_hash: str, config: IndexConfig) -> IndexPlan:
    """The run's plan. When the table is as the last run that validated it left it (the same version and
    row count: LanceDB versions are immutable) and that run indexed this snapshot with this chunker and
    these index settings, the plan is empty and proven without a scan (`proven_by` = that run); its
    indexes were current and its chunks verdict holds. Otherwise indexing.plan_index."""
    recorded = lake.read_ref(_state_ref(store)) or {}
    mine = _state(store, snapshot_id, chunker_hash, config)
    if recorded.get("run_id") and all(recorded.get(k) == v for k, v in mine.items()):
        return IndexPlan(set(), [], int(recorded["documents"]), [], proven_by=recorded["run_id"])
    return indexing.plan_index(lake, snapshot_id, store, chunker_hash)


def chunks_subject(store: ChunkStore, embedder: Embedder) -> dict:
    """What the chunks suite validates: a table version (immutable), checked against this dim and limit."""
    return {"table": store.name, "version": store.version, "dim": store.dim, "max_tokens": embedder.counter.max_tokens}


def reused_chunks_report(lake: Lake, store: ChunkStore, plan: IndexPlan, embedder: Embedder) -> ValidationReport | None:
    """The chunks verdict of the run that proved the plan empty, on the very table version this run leaves
    (a run that writes nothing checks a subset of what that run checked); None: validate."""
    if plan.proven_by is None:
        return None
    return validation.reuse(lake.read_validation(plan.proven_by, "chunks"), "chunks", chunks_subject(store, embedder),
                            plan.proven_by)


def record_state(lake: Lake, store: ChunkStore, run_id: str, snapshot_id: str, chunker_hash: str, config: IndexConfig,
                 plan: IndexPlan, report: ValidationReport) -> None:
    """After a run whose chunks suite passed on the table it leaves: what lets the next run prove a no-op
    without a scan (plan_run). Not rewritten by a run that reused that verdict (nothing changed)."""
    if not report.success or report.reused_from is not None:
        return
    documents = plan.current + len(plan.to_index)
    lake.write_ref(_state_ref(store), {"run_id": run_id, "documents": documents,
                                       **_state(store, snapshot_id, chunker_hash, config)})


def changes_table(plan: IndexPlan) -> bool:
    """Whether the plan writes anything: documents to (re)chunk or to delete."""
    return bool(plan.to_index or plan.to_delete)


def appends_only(plan: IndexPlan) -> bool:
    """Whether the plan only adds documents the table has no row of (nothing re-chunked, nothing deleted):
    its rows can be appended as they are written instead of merged by chunk id (ChunkStore.commit_run)."""
    return not plan.replaced and not plan.to_delete


def commit_plan(store: ChunkStore, plan: IndexPlan, batches: ChunkBatches, timer: Timer,
                commit: Callable[..., int] = ChunkStore.commit_run) -> int:
    """Write the plan as the run's one commit (`commit`: ChunkStore.commit_run or its task wrapper);
    nothing when the plan changes nothing. Returns rows deleted. An add-only plan (a first index, new
    documents only) is streamed as an append, so the flow process's memory stays flat on a big corpus.

    One commit: vanished documents and stale rows are deleted together with the upserts, so no table
    version ever mixes this run's changes with the previous state, and vectors are looked up while the
    vanished documents' rows still exist (a move re-embeds nothing). The batches are chunked and embedded
    inside the commit, so the `upsert` timing keeps only what LanceDB itself took."""
    deleted = 0
    if changes_table(plan):
        with timer("upsert"):
            deleted = commit(store, batches, plan.replaced + plan.to_delete, append=appends_only(plan))
        timer.seconds["upsert"] -= timer.seconds.get("chunk", 0.0) + timer.seconds.get("embed", 0.0)
    batches.close()
    return deleted


def needs_refresh(plan: IndexPlan, store: ChunkStore, config: IndexConfig) -> bool:
    """Refresh the indexes when the run changed the table, or when they are stale (what a killed run
    left undone is repaired by the next run, even one that changes nothing). A plan proven empty from the
    recorded state needs nothing: that state was recorded with current indexes at this very version."""
    return changes_table(plan) or (plan.proven_by is None and store.indexes_stale(config))


def tag_version(store: ChunkStore, run_id: str, refreshed: bool) -> None:
    """Tag the table version with the run id when this run refreshed it (a no-op run tags nothing)."""
    if refreshed:
        store.tag(run_id)


def place_version(lake: Lake, store: ChunkStore, run_id: str, chunker_hash: str, plan: IndexPlan,
                  report: ValidationReport, bakeoff: bool = False) -> dict | None:
    """Blue/green: a version that passed its chunks suite is served, or is a candidate until the gate
    passes on it (a new embedder, backend or chunker); see promotion.index_disposition. A bake-off's table
    (`bakeoff`) is only recorded (promotion.Refs.record_bakeoff_table): serving and candidate stay. Returns
    {action, reason, serving, candidate}, or None when the suite failed (no ref moves)."""
    if not report.success:
        return None
    refs = promotion.Refs(lake)
    if bakeoff:
        return refs.record_bakeoff_table(store.name, store.version, run_id, chunker_hash)
    return refs.record_index(store.name, store.version, run_id, chunker_hash, changes_table(plan))


def stored_snapshot(lake: Lake, snapshot_id: str) -> dict[str, Any]:
    """What an index run built from a stored documents snapshot (no ingest: a bake-off's table is built from
    the served table's snapshot) takes from its ingest: {status, run_id: None, snapshot_id, validation}.
    ConfigError when the lake has no such snapshot."""
    if not lake.snapshot_exists(snapshot_id):
        raise ConfigError(f"index: no documents snapshot {snapshot_id} in {lake.uri}")
    return {"status": "ok", "run_id": None, "snapshot_id": snapshot_id, "validation": {}}


def summarize(run_id: str, lineage: dict, ingested: Mapping[str, Any], lake_uri: str, store: ChunkStore,
              plan: IndexPlan, batches: ChunkBatches, deleted: int, total: int, indexes: dict,
              report: ValidationReport, timings_s: dict[str, float], placed: dict | None) -> IndexSummary:
    """The summary of an index run that validated its table: ok when placed, failed when the suite failed."""
    counts = batches.counts
    placement = {} if placed is None else {
        "serving": placed["serving"], "candidate": placed["candidate"],
        "disposition": {"action": placed["action"], "reason": placed["reason"]}}
    return IndexSummary(
        run_id=run_id, status="ok" if placed is not None else "failed", lineage=lineage, **carried_outputs(ingested),
        lake=lake_uri, snapshot_id=ingested["snapshot_id"],
        chunks={"total": total, "embedded": counts["embedded"], "reused": counts["reused"],
                "written": counts["written"], "deleted": deleted, "truncated": counts["truncated"]},
        documents_indexed=len(plan.to_index), index_plan=plan.counts(), table=table_ref(store), indexes=indexes,
        validation={**ingested.get("validation", {}), "chunks": report.summary()}, timings_s=timings_s, **placement)


def table_ref(store: ChunkStore) -> dict[str, Any]:
    """{name, version} of the store's table as it stands."""
    return {"name": store.name, "version": store.version}


def ann_lineage(store: ChunkStore) -> dict[str, Any]:
    """{"ann_index": build parameters} of the table's ANN index for the run's lineage ({} without one)."""
    built = store.ann_built()
    return {"ann_index": built} if built else {}


def log_lines(summary: IndexSummary) -> list[tuple[int, str]]:
    """(level, message) to log about a run that validated its table."""
    table, chunks = summary.table or {}, summary.chunks or {}
    if summary.disposition is None:
        failures = ((summary.validation or {}).get("chunks") or {}).get("failures")
        return [(logging.ERROR, f"chunks suite failed: {failures}; the serving table version is not moved")]
    return [
        (logging.INFO, f"index version {table['name']} v{table['version']}: {summary.disposition['action']} "
                       f"({summary.disposition['reason']})"),
        (logging.INFO, f"table {table['name']} v{table['version']}: {chunks['total']} chunks; "
                       f"{summary.documents_indexed} documents re-chunked, {chunks['embedded']} texts embedded, "
                       f"{chunks['reused']} vectors reused, {chunks['deleted']} chunks deleted"),
    ]
