"""What the monitor reads to compare states (I/O): document profiles, vector samples at a table
version, top-1 retrieval similarities of the golden questions, the latest run of a flow."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from ragloop.tasks.embedding import Embedder
from ragloop.tasks.indexing import _batched, sql_in
from ragloop.tasks.retrieval import Retriever
from ragloop.tasks.storage import Lake


def corpus_profile(lake: Lake, snapshot_id: str) -> tuple[dict[str, str], list[int]]:
    """({doc_id: content_sha256}, text lengths in characters) of one documents snapshot."""
    profile = lake.snapshot_profile(snapshot_id)
    return dict(zip(profile["doc_id"], profile["content_sha256"])), [int(n) for n in profile["text_length"]]


def _stable_rank(chunk_id: str) -> str:
    return hashlib.sha256(chunk_id.encode()).hexdigest()


def sample_vectors(lake: Lake, table_name: str, version: int, limit: int) -> tuple[list[str], np.ndarray]:
    """Chunk ids and vectors at one table version; above `limit` rows a deterministic sample (the ids
    with the smallest hashes, so two versions sample the same unchanged chunks)."""
    table = lake.connect_vectors().open_table(table_name)
    table.checkout(version)
    if table.count_rows() <= limit:
        rows = table.search().select(["chunk_id", "vector"]).limit(None).to_arrow()
    else:
        ids = table.search().select(["chunk_id"]).limit(None).to_arrow()["chunk_id"].to_pylist()
        chosen = sorted(ids, key=_stable_rank)[:limit]
        parts = [table.search().where(sql_in("chunk_id", batch)).select(["chunk_id", "vector"]).limit(None).to_arrow()
                 for batch in _batched(chosen)]
        rows = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    if rows.num_rows == 0:
        return [], np.zeros((0, 0), dtype=np.float32)
    vectors = np.stack(rows["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    return rows["chunk_id"].to_pylist(), vectors


def top1_similarities(lake: Lake, table_name: str, version: int, embedder: Embedder,
                      questions: list[str]) -> list[float]:
    """Cosine similarity of each question's best chunk (exact vector search at the given version)."""
    if not questions:
        return []
    retriever = Retriever(lake, table_name, version, embedder, exact=True)
    return [hits[0].score if hits else 0.0 for hits, _ in retriever.search_many(questions, "vector", 1)]


def sample_questions(golden_rows: list[dict], limit: int) -> list[dict]:
    """Active golden items, a deterministic sample of at most `limit` (by qa_id hash)."""
    active = [r for r in golden_rows if r["status"] == "active"]
    return sorted(active, key=lambda r: _stable_rank(r["qa_id"]))[:limit]


def latest_run(lake: Lake, flow: str, statuses: tuple[str, ...]) -> dict | None:
    """The most recently started run of a flow among the given statuses, with lineage/outputs parsed."""
    runs = completed_runs(lake, flow, statuses)
    return max(runs, key=lambda r: (r["started_at"], r["run_id"])) if runs else None


def completed_runs(lake: Lake, flow: str, statuses: tuple[str, ...]) -> list[dict]:
    """Every run of a flow among the given statuses, oldest first, with lineage/outputs parsed."""
    runs = [r for r in lake.read_runs().to_pylist() if r["flow"] == flow and r["status"] in statuses]
    runs.sort(key=lambda r: (r["ended_at"] or r["started_at"], r["run_id"]))
    return [{**r, "lineage": json.loads(r["lineage"] or "{}"), "outputs": json.loads(r["outputs"] or "{}")} for r in runs]


def item_metrics(lake: Lake, run_id: str) -> dict[str, dict[str, float]]:
    """qa_id -> {metric: value} of one eval run's items (failed judgments are simply absent)."""
    items = lake.read_eval_items(run_id)
    if items is None:
        return {}
    return {r["qa_id"]: dict(r["metrics"] or []) for r in items.select(["qa_id", "metrics"]).to_pylist()}


def chunk_texts(lake: Lake, table_name: str, version: int, chunk_ids: list[str]) -> dict[str, dict]:
    """chunk_id -> {doc_id, headings, text} for chunks of a table version (the one an eval read), so a
    report can show what was retrieved instead of ids. Ids the version does not hold are absent."""
    from ragloop.tasks.indexing import sql_in

    if not chunk_ids:
        return {}
    try:
        table = lake.connect_vectors().open_table(table_name)
        table.checkout(version)
    except Exception:  # LanceDB raises ValueError/RuntimeError/OSError for a missing table or version
        return {}
    rows = table.search().where(sql_in("chunk_id", sorted(set(chunk_ids)))).select(
        ["chunk_id", "doc_id", "headings", "text"]).limit(None).to_arrow().to_pylist()
    return {r["chunk_id"]: {"doc_id": r["doc_id"], "headings": list(r["headings"] or []), "text": r["text"]} for r in rows}
