"""The chunks table in LanceDB and the incremental index logic: plan, embed missing, upsert (I/O).

A document is current in the table when all its rows carry the snapshot's content hash and the
run's chunker hash. Everything else is (re)chunked; vectors are reused for any chunk text that
already has one, so only genuinely new text is encoded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ragloop.tasks import promotion, schemas
from ragloop.tasks.chunking import Chunk
from ragloop.tasks.embedding import Embedder
from ragloop.tasks.schemas import Document, utcnow
from ragloop.tasks.settings import AnnIndexConfig, ConfigError, IndexConfig
from ragloop.tasks.storage import Lake, chunks_table_name

log = logging.getLogger(__name__)

SQL_IN_BATCH = 500  # ids per IN (...) filter: keeps filter strings bounded
FTS_SAMPLE_ROWS = 5000  # chunk texts sampled to choose the full-text tokenizer (index.fts_tokenizer: auto)
# What `HnswSq(distance_type="cosine")` built before index.ann existed: a table whose ANN index has no
# ann__ ref has this one, so the default settings leave it in place.
LEGACY_ANN = {"type": "hnsw_sq", "num_partitions": None, "m": 20, "ef_construction": 300}
UNSPACED_MIN_SHARE = 0.01  # share of letters in scripts without spaces from which auto picks ICU
# Scripts written without spaces between words: Han, Hiragana, Katakana, Thai, Lao, Myanmar, Khmer.
_UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")
_ASCII_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))
_NON_ASCII = re.compile("[^\x00-\x7f]")


# An endpoint embedder's probe vector against the one its table recorded: the same weights answer a fixed text
# alike up to float noise (llama-cpp-python's server: above 0.9999 for a text alone and in a batch, measured in
# tests/integration/test_embedding_llama_server.py); another model lands far lower.
PROBE_MIN_COSINE = 0.99


class EmbedderMismatch(RuntimeError):
    """The table was built by different embedder weights; mixing vectors would be silent garbage."""


def check_probe(lake: Lake, table: str, embedder: Embedder, record: bool = True) -> float | None:
    """For an embedder with a `probe_vector` (an endpoint, whose weights cannot be hashed): the cosine between
    its probe vector and the one recorded for `table` (ref table__<table>__probe); EmbedderMismatch below
    PROBE_MIN_COSINE. The first time, the vector is recorded (record=True) and None returned; None too for
    embedders without a probe (local models are identified by their weights' hash)."""
    if not hasattr(embedder, "probe_vector"):
        return None
    vector = np.asarray(embedder.probe_vector, dtype=np.float64)
    name = f"table__{table}__probe"
    recorded = lake.read_ref(name)
    if recorded is None:
        if record:
            lake.write_ref(name, {"embedder": embedder.name, "vector": [float(v) for v in vector]})
        return None
    stored = np.asarray(recorded["vector"], dtype=np.float64)
    cosine = float(stored @ vector / (np.linalg.norm(stored) * np.linalg.norm(vector))) if len(stored) == len(vector) else -1.0
    if cosine < PROBE_MIN_COSINE:
        raise EmbedderMismatch(
            f"{embedder.name} answers the probe text differently from when table {table} was built (cosine "
            f"{cosine:.3f} < {PROBE_MIN_COSINE}): the endpoint serves other weights under this model id; give the "
            "new model its own id (a new table) or index into a new lake")
    return cosine


def sql_in(column: str, values: Iterable[str]) -> str:
    quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


def _batched(values: Sequence[str], size: int = SQL_IN_BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


class ChunkStore:
    """One embedder's LanceDB chunks table (created on first use; blue/green per embedder). `name`: another
    table of this embedder (a bake-off's, tasks.storage.bakeoff_table_name); None = the embedder's own."""

    def __init__(self, lake: Lake, embedder: Embedder, name: str | None = None) -> None:
        self.lake = lake
        self.name = name or chunks_table_name(embedder.slug)
        self.dim = embedder.dim
        self.fingerprint = {"embedder": embedder.name, "weights_sha256": embedder.weights_sha256, "dim": embedder.dim}
        recorded = lake.read_ref(f"table__{self.name}")
        if recorded and recorded != self.fingerprint:
            raise EmbedderMismatch(
                f"table {self.name} was built with {recorded}, not {self.fingerprint}; "
                "configure a different embedding.model name (new table) or use a new lake"
            )
        db = lake.connect_vectors()
        if self.name in db.table_names():
            self.table = db.open_table(self.name)
        else:
            self.table = db.create_table(self.name, schema=schemas.chunks_schema(self.dim))
        if not recorded:
            lake.write_ref(f"table__{self.name}", self.fingerprint)
        check_probe(lake, self.name, embedder)

    @classmethod
    def reader(cls, lake: Lake, name: str, dim: int, version: int) -> "ChunkStore":
        """A read-only view of an existing chunks table checked out at `version`, for vector look-ups on a
        Dask worker: no table is created and no ref is written (only the flow process writes)."""
        store = cls.__new__(cls)
        store.lake, store.name, store.dim = lake, name, dim
        store.table = lake.connect_vectors().open_table(name)
        store.table.checkout(version)
        return store

    @property
    def version(self) -> int:
        return self.table.version

    def count(self) -> int:
        return self.table.count_rows()

    def scan(self, columns: list[str], where: str | None = None) -> pa.Table:
        query = self.table.search().select(columns).limit(None)
        if where:
            query = query.where(where)
        return query.to_arrow()

    def profile(self) -> pa.Table:
        """The columns the chunks suite checks over the whole table (no texts, no vectors)."""
        return self.scan(["chunk_id", "doc_id", "position", "n_tokens"])

    def doc_state(self) -> dict[str, set[tuple[str, str]]]:
        """doc_id -> the set of (doc_sha256, chunker_hash) among its rows."""
        t = self.scan(["doc_id", "doc_sha256", "chunker_hash"])
        state: dict[str, set[tuple[str, str]]] = {}
        for doc_id, sha, ch in zip(t["doc_id"].to_pylist(), t["doc_sha256"].to_pylist(), t["chunker_hash"].to_pylist()):
            state.setdefault(doc_id, set()).add((sha, ch))
        return state

    def vectors_for(self, doc_ids: Sequence[str], text_shas: Sequence[str]) -> dict[str, np.ndarray]:
        """Existing vectors by text hash: first the documents' own rows, then any row with that text."""
        found: dict[str, np.ndarray] = {}
        for part in _batched(list(doc_ids)):
            self._collect(found, sql_in("doc_id", part))
        missing = [s for s in dict.fromkeys(text_shas) if s not in found]
        for part in _batched(missing):
            self._collect(found, sql_in("text_sha256", part))
        return found

    def _collect(self, found: dict[str, np.ndarray], where: str) -> None:
        t = self.scan(["text_sha256", "vector"], where)
        if t.num_rows == 0:
            return
        vectors = t["vector"].combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, self.dim)
        for sha, vec in zip(t["text_sha256"].to_pylist(), vectors):
            found.setdefault(sha, vec)

    def replace_documents(self, rows: pa.Table, doc_ids: Sequence[str]) -> int:
        """Upsert rows by chunk_id and drop the documents' other rows, in one atomic commit.

        Returns the number of stale rows deleted."""
        return self.commit_run([rows], doc_ids)

    def commit_run(self, batches: Iterable[pa.Table], doc_ids: Sequence[str], append: bool = False) -> int:
        """A whole run's writes as ONE commit: upsert every batch's rows by chunk_id and delete every
        other row of `doc_ids` (the re-chunked documents' stale rows and the vanished documents).

        `batches` is consumed lazily while LanceDB writes; until the commit, readers (and this run's
        vector look-ups) see the previous version whole. An exception raised by `batches` aborts the
        write: nothing is committed. Returns rows deleted.

        `append`: the caller has proven that no row of the batches' documents is in the table (an
        add-only plan: every document new, none to delete; `doc_ids` must be empty, else ValueError).
        The rows are then streamed to data files as they come and appended in the one commit, so memory
        stays flat however many rows the run writes. A merge-insert (the general case) holds the whole
        source in memory to join it with the table: about 5 KB per chunk row (peak RSS measured on a scratch
        table at 10k and 50k rows of 384 dimensions: 344 and 551 MB, against 263 and 282 MB appended).
        """
        if append and doc_ids:
            raise ValueError("commit_run: an append deletes nothing; doc_ids must be empty")
        schema = schemas.chunks_schema(self.dim)
        failure: list[BaseException] = []

        def record_batches() -> Iterator[pa.RecordBatch]:
            try:
                for rows in batches:
                    yield from rows.cast(schema).to_batches()
            except BaseException as exc:  # LanceDB wraps it; re-raised as itself below
                failure.append(exc)
                raise

        reader = pa.RecordBatchReader.from_batches(schema, record_batches())
        try:
            if append:
                self.table.add(reader)
                return 0
            builder = self.table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
            if doc_ids:
                builder = builder.when_not_matched_by_source_delete(sql_in("doc_id", doc_ids))
            result = builder.execute(reader)
        except Exception:
            if failure:
                raise failure[0] from None
            raise
        return int(result.num_deleted_rows)

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete every row of the documents (one commit per SQL_IN_BATCH ids); returns rows deleted."""
        deleted = 0
        for part in _batched(list(doc_ids)):
            where = sql_in("doc_id", part)
            deleted += self.table.count_rows(where)
            self.table.delete(where)
        return deleted

    def indexes_stale(self, config: IndexConfig) -> bool:
        """True when an index the config wants is missing or leaves rows out: a run that died after its
        last commit but before refreshing the indexes leaves the table so, and nothing else repairs it."""
        names = {idx.name for idx in self.table.list_indices()}
        rows = self.count()
        if config.fts and rows and "text_idx" not in names:
            return True
        if rows >= config.ann_min_rows and self.ann_built(names) != config.ann.build_params():
            return True  # missing, or built with other index.ann settings
        return any(getattr(self.table.index_stats(name), "num_unindexed_rows", 0) for name in names)

    def fts_tokenizer(self, config: IndexConfig) -> tuple[str, str]:
        """The full-text tokenizer this table needs, and why. `auto` picks ICU word segmentation when
        text in scripts written without spaces (Chinese, Japanese, Thai, ...) is at least
        UNSPACED_MIN_SHARE of a sample of the table's letters: the simple tokenizer splits on spaces
        and punctuation, so such a sentence would be one unsearchable token. Otherwise `simple`."""
        if config.fts_tokenizer != "auto":
            return config.fts_tokenizer, "index.fts_tokenizer"
        sample = self.table.search().select(["text"]).limit(FTS_SAMPLE_ROWS).to_arrow()["text"].to_pylist()
        share = unspaced_share(sample)
        if share >= UNSPACED_MIN_SHARE:
            return "icu", f"{share:.0%} of the sampled letters are in scripts written without spaces"
        return "simple", f"{share:.0%} of the sampled letters are in scripts written without spaces"

    def ann_built(self, names: Iterable[str] | None = None) -> dict | None:
        """The build parameters of the table's ANN index (AnnIndexConfig.build_params; LEGACY_ANN for an
        index built before they were recorded), None when it has none."""
        if "vector_idx" not in (names if names is not None else {i.name for i in self.table.list_indices()}):
            return None
        recorded = self.lake.read_ref(f"ann__{self.name}")
        return {k: v for k, v in recorded.items() if k not in ("rows", "build_s")} if recorded else dict(LEGACY_ANN)

    def refresh_indexes(self, config: IndexConfig) -> dict:
        """Keep the full-text index current (rebuilt when the tokenizer it needs changes); build an ANN
        index only once the table is big enough, and rebuild it when index.ann changes."""
        from lancedb.index import FTS

        names = {idx.name: idx for idx in self.table.list_indices()}
        rows = self.count()
        actions = {}
        if config.fts and rows:
            tokenizer, why = self.fts_tokenizer(config)
            recorded = (self.lake.read_ref(f"fts__{self.name}") or {}).get("tokenizer", "simple")
            if "text_idx" not in names or recorded != tokenizer:
                # ascii_folding (the default) keeps `cafe` finding `café` with every tokenizer.
                self.table.create_index("text", config=FTS(with_position=False, base_tokenizer=tokenizer),
                                        name="text_idx", replace=True)
                self.lake.write_ref(f"fts__{self.name}", {"tokenizer": tokenizer, "why": why})
                actions["fts"] = "created" if "text_idx" not in names else f"rebuilt ({recorded} -> {tokenizer})"
            else:
                actions["fts"] = "kept"
            actions["fts_tokenizer"] = f"{tokenizer} ({why})"
        built, wanted = self.ann_built(names), config.ann.build_params()
        if rows >= config.ann_min_rows and built != wanted:
            start = time.perf_counter()
            self.table.create_index("vector", config=ann_index(config.ann, self.dim), name="vector_idx", replace=True)
            self.lake.write_ref(f"ann__{self.name}", {**wanted, "rows": rows,
                                                      "build_s": round(time.perf_counter() - start, 1)})
            actions["ann"] = (f"created ({describe_ann(wanted)})" if built is None
                              else f"rebuilt ({describe_ann(built)} -> {describe_ann(wanted)})")
        elif built is not None:
            actions["ann"] = f"present ({describe_ann(built)})"
        else:
            actions["ann"] = f"none (exact search below {config.ann_min_rows} rows)"
        # Compaction folds the run's small commits together and brings every index up to date.
        # Old versions are kept (cleanup horizon ~forever): they are the promoted states a rollback
        # returns to, and LanceDB refuses to clean up tagged versions anyway.
        self.table.optimize(cleanup_older_than=dt.timedelta(days=config.keep_versions_days))
        return actions

    def tag(self, tag: str) -> None:
        self.table.tags.create(tag, self.table.version)


def ann_index(config: AnnIndexConfig, dim: int):
    """LanceDB's index definition for index.ann on cosine vectors of `dim` dimensions. ConfigError naming
    index.ann.num_sub_vectors when it does not divide dim (the CLI checks this before any work)."""
    from lancedb.index import HnswSq, IvfPq

    if config.type == "ivf_pq":
        if config.num_sub_vectors is not None and dim % config.num_sub_vectors:
            raise ConfigError(f"index.ann.num_sub_vectors: {config.num_sub_vectors} does not divide the "
                              f"embedding dimension {dim}")
        return IvfPq(distance_type="cosine", num_partitions=config.num_partitions,
                     num_sub_vectors=config.num_sub_vectors)
    return HnswSq(distance_type="cosine", num_partitions=config.num_partitions, m=config.m,
                  ef_construction=config.ef_construction)


def describe_ann(params: dict) -> str:
    """index.ann build parameters in one line, e.g. `hnsw_sq m=20 ef_construction=300 partitions=auto`."""
    shown = [(k, params[k]) for k in ("m", "ef_construction", "num_sub_vectors") if k in params]
    shown.append(("partitions", params.get("num_partitions")))
    return " ".join([params["type"]] + [f"{k}={'auto' if v is None else v}" for k, v in shown])


def index_store(lake: Lake, embedder: Embedder, which: str = "auto") -> tuple[ChunkStore, str]:
    """The chunks table later stages read, checked out at the version under test: the pending candidate
    of this embedder, else the served version (tasks.promotion.pick_index; exit 2 when neither fits).
    Returns (store, role)."""
    refs = promotion.Refs(lake)
    try:
        ref, role = promotion.pick_index(refs.serving(), refs.candidate(), chunks_table_name(embedder.slug), which)
    except promotion.PromotionError as exc:
        raise ConfigError(str(exc)) from exc
    store = ChunkStore(lake, embedder)
    store.table.checkout(ref.version)
    return store, role


def unspaced_share(texts: Iterable[str]) -> float:
    """Share of the letters in the texts that belong to scripts written without spaces (0.0 if none).
    Letters are what str.isalpha accepts, counted with ASCII letters in C (bytes.translate) and only the
    other characters one by one: the plain per-character loop took 0.15-0.2 s of every index refresh on a
    3,000-chunk table. No such script at all needs no letter count."""
    texts = list(texts)
    unspaced = sum(len(_UNSPACED.findall(text)) for text in texts)
    if not unspaced:
        return 0.0
    letters = sum(_letter_count(text) for text in texts)
    return unspaced / letters if letters else 0.0


def _letter_count(text: str) -> int:
    """sum(ch.isalpha() for ch in text): ASCII letters are exactly A-Z and a-z."""
    data = text.encode("utf-8", "surrogatepass")
    return len(data) - len(data.translate(None, _ASCII_LETTERS)) + sum(
        1 for ch in _NON_ASCII.findall(text) if ch.isalpha())


# -- the incremental index ----------------------------------------------------------------------
@dataclass
class IndexPlan:
    to_index: set[str]  # documents to (re)chunk: not in the table, or not at this content + chunker hash
    to_delete: list[str]  # documents in the table that the snapshot no longer has
    current: int  # documents already indexed as the snapshot has them
    replaced: list[str] = field(default_factory=list)  # to_index documents that have rows in the table now
    # The run whose recorded state proved this plan empty without a scan (index_run.plan_run), else None.
    proven_by: str | None = None

    def counts(self) -> dict[str, int]:
        """What this run does to the table, measured against the table (not the previous snapshot):
        a retry after a killed run reports the work it really redoes."""
        return {"new": len(self.to_index) - len(self.replaced), "changed": len(self.replaced),
                "unchanged": self.current, "deleted": len(self.to_delete)}


def plan_index(lake: Lake, snapshot_id: str, store: ChunkStore, chunker_hash: str) -> IndexPlan:
    """Which documents need (re)chunking and which are gone, from the snapshot and the table."""
    snap = lake.read_snapshot(snapshot_id, columns=["doc_id", "content_sha256"])
    wanted = dict(zip(snap["doc_id"].to_pylist(), snap["content_sha256"].to_pylist()))
    state = store.doc_state()
    to_index = {d for d, sha in wanted.items() if state.get(d) != {(sha, chunker_hash)}}
    to_delete = sorted(d for d in state if d not in wanted)
    return IndexPlan(to_index, to_delete, len(wanted) - len(to_index), sorted(d for d in to_index if d in state))


def iter_document_batches(lake: Lake, snapshot_id: str, wanted: set[str], size: int) -> Iterator[list[Document]]:
    """The wanted documents of a snapshot, streamed in batches of `size` (file order)."""
    batch: list[Document] = []
    if not wanted:
        return
    for record_batch in lake.iter_snapshot(snapshot_id):
        for row in record_batch.to_pylist():
            if row["doc_id"] not in wanted:
                continue
            batch.append(
                Document(
                    doc_id=row["doc_id"], source_uri=row["source_uri"], content_sha256=row["content_sha256"],
                    text=row["text"], title=row["title"], mime=row["mime"], bytes=row["bytes"],
                    metadata=json.loads(row["metadata"] or "{}"), ingested_at=row["ingested_at"],
                )
            )
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


@dataclass
class Embedded:
    vectors: np.ndarray
    encoded: int  # texts sent to the model
    reused: int  # chunks whose text already had a vector


def embed_missing(chunks: Sequence[Chunk], store: ChunkStore, embedder: Embedder,
                  fresh: "FreshVectors | None" = None) -> Embedded:
    """Vectors for the chunks, encoding only texts that have none yet (deduplicated): none in the
    table, and none in `fresh`, the vectors this run already encoded but has not committed."""
    if not chunks:
        return Embedded(np.zeros((0, store.dim), dtype=np.float32), 0, 0)
    doc_ids = list(dict.fromkeys(c.doc_id for c in chunks))
    known = fresh.lookup(c.text_sha256 for c in chunks) if fresh is not None else {}
    shas = [c.text_sha256 for c in chunks if c.text_sha256 not in known]
    if shas:
        known.update(store.vectors_for(doc_ids, shas))
    todo = {c.text_sha256: c.text for c in chunks if c.text_sha256 not in known}
    if todo:
        encoded = embedder.encode(list(todo.values()))
        known.update(zip(todo.keys(), encoded))
        if fresh is not None:
            fresh.add(zip(todo.keys(), encoded))
    vectors = np.stack([known[c.text_sha256] for c in chunks]).astype(np.float32)
    reused = sum(1 for c in chunks if c.text_sha256 not in todo)
    return Embedded(vectors, len(todo), reused)


class FreshVectors:
    """Vectors encoded by the running index run, by text hash, before its one commit makes them
    visible in the table. Bounded (oldest dropped first): it only saves re-encoding a text repeated
    across batches, so memory stays flat on a big first index."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._vectors: dict[str, np.ndarray] = {}

    def lookup(self, shas: Iterable[str]) -> dict[str, np.ndarray]:
        return {s: self._vectors[s] for s in shas if s in self._vectors}

    def add(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        for sha, vector in items:
            self._vectors[sha] = vector
        while len(self._vectors) > self.max_entries:
            del self._vectors[next(iter(self._vectors))]


def chunk_rows(chunks: Sequence[Chunk], vectors: np.ndarray, dim: int,
               doc_metadata: dict[str, dict] | None = None) -> pa.Table:
    """Table rows for the chunks. `doc_metadata` (doc_id -> the document's metadata: front matter,
    table row, pages) is merged into each chunk's metadata JSON, so retrieval can filter on it; the
    chunk's own keys (char offsets, truncation) win."""
    now = utcnow()
    doc_metadata = doc_metadata or {}
    columns = {
        "chunk_id": [c.chunk_id for c in chunks],
        "doc_id": [c.doc_id for c in chunks],
        "doc_sha256": [c.doc_sha256 for c in chunks],
        "text": [c.text for c in chunks],
        "text_sha256": [c.text_sha256 for c in chunks],
        "headings": [list(c.headings) for c in chunks],
        "position": [c.position for c in chunks],
        "n_tokens": [c.n_tokens for c in chunks],
        "metadata": [json.dumps({**doc_metadata.get(c.doc_id, {}), **c.metadata}, sort_keys=True) for c in chunks],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        "chunker_hash": [c.chunker_hash for c in chunks],
        "embedded_at": [now] * len(chunks),
    }
    return pa.table(columns, schema=schemas.chunks_schema(dim))
