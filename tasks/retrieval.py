"""Retrieval over a pinned version of the chunks table: vector (exact or ANN), full-text, hybrid (I/O)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Sequence

from ragloop.tasks.embedding import Embedder
from ragloop.tasks.indexing import sql_in
from ragloop.tasks.settings import AnnSearchConfig
from ragloop.tasks.storage import Lake

Mode = Literal["vector", "fts", "hybrid"]
COLUMNS = ["chunk_id", "doc_id", "text"]
# Extra candidates fetched beyond k so that hits tied on score at the cut-off are chosen by chunk_id,
# not by the table's physical row order (identical texts in two documents have identical vectors).
TIE_MARGIN = 8


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    text: str
    score: float  # higher is better: cosine similarity (vector), BM25 (fts), RRF (hybrid)


class Retriever:
    """Searches one table at one version (the serving one), so an eval reads a fixed index."""

    def __init__(self, lake: Lake, table_name: str, version: int, embedder: Embedder, exact: bool = True,
                 rerank_depth: int = 0, fusion: tuple[str, float] = ("rrf", 60),
                 ann: AnnSearchConfig | None = None) -> None:
        self.table = lake.connect_vectors().open_table(table_name)
        self.table.checkout(version)
        self.table_name, self.version = table_name, version
        self.embedder = embedder
        self.exact = exact
        self.ann = ann or AnnSearchConfig()
        # rerank_depth > 0: fetch k * depth candidates, then order them by the embedder's cosine with
        # the query (their stored vectors) - a semantic rerank for fts and hybrid candidate lists.
        self.rerank_depth = rerank_depth
        # Hybrid fusion: ("rrf", K) or ("linear", vector weight) - see EvalConfig.fusion.
        self.fusion = fusion
        indices = {i.name: i for i in self.table.list_indices()}
        self.has_fts = "text_idx" in indices
        # LanceDB's name for the ANN index this version has (e.g. IvfHnswSq), None below index.ann_min_rows.
        self.ann_index = indices["vector_idx"].index_type if "vector_idx" in indices else None

    def ann_search(self) -> dict | None:
        """What a vector search does with the ANN index, for the chain: {index, ef, refine_factor, nprobes};
        None when vector search is exact (eval.exact, or no ANN index on this version)."""
        if self.exact or self.ann_index is None:
            return None
        return {"index": self.ann_index, **self.ann.model_dump(mode="json")}

    def catalog(self) -> tuple[set[str], set[str]]:
        """(chunk ids, document ids) held by this table version."""
        t = self.table.search().select(["chunk_id", "doc_id"]).limit(None).to_arrow()
        return set(t["chunk_id"].to_pylist()), set(t["doc_id"].to_pylist())

    def longest_texts(self, k: int) -> list[str]:
        """The k chunk texts with the most tokens: the worst case an answer prompt can receive."""
        sizes = self.table.search().select(["chunk_id", "n_tokens"]).limit(None).to_arrow().to_pylist()
        top = [r["chunk_id"] for r in sorted(sizes, key=lambda r: -r["n_tokens"])[:k]]
        if not top:
            return []
        return self.table.search().where(sql_in("chunk_id", top)).select(["text"]).limit(None).to_arrow()["text"].to_pylist()

    def search_many(self, queries: Sequence[str], mode: Mode, k: int) -> list[tuple[list[Hit], float]]:
        """Top-k hits per query, best first (ties by chunk_id), with the search latency in ms (query
        encoding included, amortized over the batch). Raises on the first query whose search fails."""
        out = []
        for hits, latency_ms, error in self.search_each(queries, mode, k):
            if error:
                raise RuntimeError(f"search failed: {error}")
            out.append((hits, latency_ms))
        return out

    def search_each(self, queries: Sequence[str], mode: Mode, k: int) -> list[tuple[list[Hit], float, str | None]]:
        """As search_many, with the error of each query whose search failed (no hits then) instead of
        raising: one bad query never fails the others."""
        if mode in ("fts", "hybrid") and not self.has_fts:
            raise ValueError(f"table {self.table_name} has no full-text index (index.fts: false)")
        start = time.perf_counter()
        needs_vectors = mode != "fts" or self.rerank_depth > 0
        vectors = self.embedder.encode(list(queries)) if needs_vectors else [None] * len(queries)
        encode_ms = (time.perf_counter() - start) * 1000 / max(len(queries), 1)
        out = []
        for query, vector in zip(queries, vectors):
            start = time.perf_counter()
            try:
                if self.rerank_depth:
                    hits = self._rerank(self._search(query, vector, mode, k * self.rerank_depth), vector)[:k]
                else:
                    hits = self._search(query, vector, mode, k)
                error = None
            except Exception as exc:  # LanceDB raises ValueError/RuntimeError/OSError; the item fails alone
                hits, error = [], f"{type(exc).__name__}: {exc}"
            out.append((hits, encode_ms + (time.perf_counter() - start) * 1000, error))
        return out

    def _rerank(self, hits: list[Hit], vector) -> list[Hit]:
        if not hits:
            return hits
        where = sql_in("chunk_id", [h.chunk_id for h in hits])
        rows = self.table.search().where(where).select(["chunk_id", "vector"]).limit(None).to_arrow()
        stored = dict(zip(rows["chunk_id"].to_pylist(), rows["vector"].to_numpy(zero_copy_only=False)))
        scored = [Hit(h.chunk_id, h.doc_id, h.text, float(stored[h.chunk_id] @ vector)) for h in hits]
        return ranked(scored)

    def _search(self, query: str, vector, mode: Mode, k: int) -> list[Hit]:
        limit = k + TIE_MARGIN
        if mode == "vector":
            builder = self.table.search(vector, vector_column_name="vector").distance_type("cosine")
            builder = self._vector_search(builder, limit)
            rows = builder.limit(limit).select(COLUMNS + ["_distance"]).to_arrow().to_pylist()
            return ranked([Hit(r["chunk_id"], r["doc_id"], r["text"], 1.0 - r["_distance"]) for r in rows])[:k]
        text_query = plain_text_query(query)
        if mode == "fts":
            if text_query is None:
                return []
            rows = (self.table.search(text_query, query_type="fts").limit(limit)
                    .select(COLUMNS + ["_score"]).to_arrow().to_pylist())
            return ranked([Hit(r["chunk_id"], r["doc_id"], r["text"], r["_score"]) for r in rows])[:k]
        if text_query is None:  # nothing to match as text: the vector leg alone
            return self._search(query, vector, "vector", k)
        builder = (self.table.search(query_type="hybrid").vector(vector).text(text_query).limit(limit)
                   .rerank(reranker=fusion_reranker(*self.fusion)))
        builder = self._vector_search(builder, limit)
        rows = builder.select(COLUMNS).to_arrow().to_pylist()
        return ranked([Hit(r["chunk_id"], r["doc_id"], r["text"], r["_relevance_score"]) for r in rows])[:k]


    def _vector_search(self, builder, limit: int):
        """Brute force when exact; else the ANN knobs (eval.ann), where the version has an ANN index."""
        if self.exact:
            return builder.bypass_vector_index()
        if self.ann_index is None:
            return builder
        return ann_knobs(builder, self.ann, limit)


def ann_knobs(builder, config: AnnSearchConfig, limit: int):
    """A LanceDB vector or hybrid query with eval.ann applied. ef is raised to limit x refine_factor
    when lower: LanceDB rejects an HNSW search whose candidate list is shorter than what it fetches."""
    builder = builder.ef(max(config.ef, limit * (config.refine_factor or 1)))
    if config.refine_factor:
        builder = builder.refine_factor(config.refine_factor)
    if config.nprobes:
        builder = builder.nprobes(config.nprobes)
    return builder


def fusion_reranker(kind: str, value: float):
    """LanceDB's hybrid fusion: RRFReranker(K=value) for "rrf", LinearCombinationReranker(weight=value) for
    "linear" (value = the vector leg's weight in [0, 1]). ValueError on another kind."""
    from lancedb.rerankers import LinearCombinationReranker, RRFReranker

    if kind == "rrf":
        return RRFReranker(K=int(value))
    if kind == "linear":
        return LinearCombinationReranker(weight=float(value))
    raise ValueError(f"unknown hybrid fusion {kind!r} (rrf | linear)")


def plain_text_query(text: str):
    """The user's text as a full-text match query, never parsed as query syntax: quotes, AND/OR/NOT,
    `+ - : ( ) [ ] ^ ~ *` are just characters, which the index's own tokenizer splits like the
    indexed text (a bare string would be parsed, and a quoted one becomes a phrase query that an
    index without positions rejects). None for text with no word in it."""
    from lancedb.query import MatchQuery

    if not any(ch.isalnum() for ch in text):
        return None
    return MatchQuery(text, "text")


def ranked(hits: Sequence[Hit]) -> list[Hit]:
    """Best first; equal scores ordered by chunk_id, so ties never depend on the table's row order."""
    return sorted(hits, key=lambda h: (-h.score, h.chunk_id))


def doc_ranking(hits: Sequence[Hit]) -> list[str]:
    """Documents in the order of their best chunk."""
    return list(dict.fromkeys(h.doc_id for h in hits))
