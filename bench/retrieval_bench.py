"""Measure 5 (product venv): query latency p50/p95 for vector, fts and hybrid retrieval.

- SciFact: ragloop's own Retriever on the serving table the index bench built (query encoding
  included, one query per call, as the eval chain issues them); exact search (below
  index.ann_min_rows), and ANN on a copy of the table with ragloop's HNSW-SQ index, recall@10 beside.
- A synthetic table of --rows seeded random unit vectors of the same dimension (with short seeded
  texts for fts/hybrid): exact (brute force) vs ANN (the index ragloop builds above
  ann_min_rows, index.ann's defaults), recall@10 of ANN against a numpy brute force over the
  queries, in the same run: before (LanceDB's own query defaults, as ragloop searched before
  eval.ann existed) and after (eval.ann's defaults), a sweep of the query knobs, and the ratios to
  brute force. Rows and queries are drawn from one seeded mixture of clusters (rows/500 centroids
  plus noise): uniform random vectors in 384 dimensions have no meaningful neighbours (every
  top-10 past the first is a near-tie), which says nothing about an index on real embeddings.
  The mixture is still harder than real embeddings: within a cluster the noise is isotropic, so a
  query's top 10 are near-ties among ~500 members. `lid_at_20` (local intrinsic dimensionality,
  maximum-likelihood estimate from each query's 20 nearest distances, median) says how hard a table
  is for an ANN index; it is reported for the SciFact table too (MiniLM: ~20; this mixture: ~80).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from common import fresh_dir, percentile, read_qrels, read_queries, write_json

K = 10


def stats(latencies_ms: list[float], cpu_ms: list[float] | None = None) -> dict:
    """p50/p95 of wall latencies; with cpu_ms (the process's CPU time per query, every thread), their p50/p95
    too: on a shared machine wall time includes waiting for a core, CPU time does not."""
    out = {"p50_ms": percentile(latencies_ms, 50), "p95_ms": percentile(latencies_ms, 95), "n": len(latencies_ms)}
    if cpu_ms:
        out.update({"cpu_p50_ms": percentile(cpu_ms, 50), "cpu_p95_ms": percentile(cpu_ms, 95)})
    return out


def recall_at_k(exact: list[list], approx: list[list]) -> float:
    return float(np.mean([len(set(a[:K]) & set(e[:K])) / max(len(e[:K]), 1) for e, a in zip(exact, approx)]))


def lid(top_cosines: np.ndarray) -> float:
    """Median local intrinsic dimensionality (Levina-Bickel maximum likelihood) from each query's nearest
    cosines (queries x n, best first): how fast distances grow with the neighbour count. Low on data
    with structure (real embeddings), high on isotropic noise; the higher, the harder for ANN."""
    d = np.sqrt(np.maximum(2 - 2 * top_cosines.astype(np.float64), 1e-12))
    per_query = -1 / np.mean(np.log(d[:, :-1] / d[:, -1:]), axis=1)
    return float(np.median(per_query))


# Query-knob settings swept on the ANN index (eval.ann ef, refine_factor), beside the defaults.
SWEEP = [(ef, refine) for refine in (None, 2, 4) for ef in (25, 50, 100, 200)]


def ann_runs(table, qvecs, truth: list[list], exact: dict, exact_recall: float = 1.0) -> dict:
    """ANN search-only latency and recall@10 against `truth` (ids best first), before (LanceDB's query
    defaults: ef 1.5 x limit, quantized distances; ragloop's search before eval.ann), after (eval.ann's
    defaults, through tasks.retrieval.ann_knobs as the Retriever applies them) and the SWEEP, each with
    its ratios to the brute-force search `exact` ({p50_ms, p95_ms, cpu_...}) timed in the same run, whose
    recall against `truth` is `exact_recall`."""
    from ragloop.tasks.retrieval import ann_knobs
    from ragloop.tasks.settings import AnnSearchConfig

    def run(config) -> tuple[dict, list]:
        lat, cpu, ids = [], [], []
        for v in qvecs:
            t, c = time.perf_counter(), time.process_time()
            b = table.search(v, vector_column_name="vector").distance_type("cosine")
            if config is not None:
                b = ann_knobs(b, config, K)
            rows_ = b.limit(K).select(["chunk_id", "_distance"]).to_arrow()
            lat.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
            ids.append(rows_["chunk_id"].to_pylist())
        return stats(lat, cpu), ids

    def measured(config) -> dict:
        run(config)  # warm
        timing, ids = run(config)
        recall = recall_at_k(truth, ids)
        return {**timing, "recall_at_10": recall, "recall_over_exact": recall / exact_recall,
                "load_1m": os.getloadavg()[0],
                "p95_over_exact": timing["p95_ms"] / exact["p95_ms"] if exact.get("p95_ms") else None,
                "cpu_p95_over_exact": (timing["cpu_p95_ms"] / exact["cpu_p95_ms"]) if exact.get("cpu_p95_ms") else None}

    default = AnnSearchConfig()
    out = {"before": measured(None), "after": measured(default),
           "after_knobs": default.model_dump(mode="json"), "sweep": []}
    for ef, refine in SWEEP:
        out["sweep"].append({"ef": ef, "refine_factor": refine, **measured(AnnSearchConfig(ef=ef, refine_factor=refine))})
    return out


def scifact(lake: str, queries_file: Path, n_queries: int, work: Path) -> dict:
    from ragloop.tasks.embedding import load_embedder
    from ragloop.tasks.indexing import ann_index, describe_ann
    from ragloop.tasks.settings import AnnIndexConfig
    from ragloop.tasks.retrieval import Retriever
    from ragloop.tasks.settings import load_settings
    from ragloop.tasks.storage import Lake

    settings = load_settings(None, {"lake": lake})
    embedder = load_embedder(settings.embedding)
    store_lake = Lake(settings.lake)
    serving = store_lake.read_ref("serving")
    queries = [json.loads(l)["text"] for l in queries_file.read_text().splitlines() if l.strip()][:n_queries]
    out: dict = {"queries": len(queries), "table_rows": None}
    retriever = Retriever(store_lake, serving["table"], serving["version"], embedder, exact=True)
    out["table_rows"] = retriever.table.count_rows()
    retriever.search_many(queries[:3], "hybrid", K)  # warm: model load, index files in cache
    results = {}
    for mode in ("vector", "fts", "hybrid"):
        lat, ids = [], []
        for q in queries:
            (hits, ms), = retriever.search_many([q], mode, K)
            lat.append(ms)
            ids.append([h.chunk_id for h in hits])
        results[mode] = ids
        out[f"{mode}_exact"] = stats(lat)

    # ANN on a copy of the table (the serving table itself stays exact, as ragloop serves it below 100k rows),
    # with the index index.ann's defaults build; brute force on the same copy, search only, for the ratios.
    import lancedb

    copy_dir = fresh_dir(work / "scifact_ann")
    data = retriever.table.to_arrow()
    table = lancedb.connect(str(copy_dir)).create_table("chunks", data)
    vectors = embedder.encode(queries)
    lat, cpu, exact_ids = [], [], []
    for _ in range(2):  # the first pass warms the page cache
        lat, cpu, exact_ids = [], [], []
        for v in vectors:
            t, c = time.perf_counter(), time.process_time()
            rows = (table.search(v, vector_column_name="vector").distance_type("cosine").bypass_vector_index()
                    .limit(K).select(["chunk_id", "_distance"]).to_arrow())
            lat.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
            exact_ids.append(rows["chunk_id"].to_pylist())
    out["vector_exact_search_only"] = stats(lat, cpu)
    stored = np.stack(data["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    out["lid_at_20"] = lid(np.sort(np.asarray(vectors, dtype=np.float32) @ stored.T, axis=1)[:, ::-1][:, :20])
    t = time.perf_counter()
    config = AnnIndexConfig()
    table.create_index("vector", config=ann_index(config, stored.shape[1]), name="vector_idx")
    out["ann_build_s"] = time.perf_counter() - t
    out["ann_index"] = describe_ann(config.build_params())
    out["ann"] = ann_runs(table, vectors, exact_ids, out["vector_exact_search_only"])
    # Earlier runs' keys: the search as ragloop issued it before eval.ann.
    out["vector_ann_search_only"] = {k: out["ann"]["before"][k] for k in ("p50_ms", "p95_ms", "cpu_p50_ms", "cpu_p95_ms", "n")}
    out["ann_recall_at_10"] = out["ann"]["before"]["recall_at_10"]
    shutil.rmtree(copy_dir, ignore_errors=True)
    return out


def quality(lake: str, backend: str | None, root: Path) -> dict:
    """SciFact nDCG@10 etc. of a lake the index bench built (chunked, exact vector search, 100 chunks per
    query, documents ranked by their best chunk): the shipped encoder and the PyTorch one, same run."""
    from ragloop.tasks.embedding import load_embedder
    from ragloop.tasks.ir_metrics import mean_metrics, score_rankings
    from ragloop.tasks.retrieval import Retriever, doc_ranking
    from ragloop.tasks.settings import load_settings
    from ragloop.tasks.storage import Lake

    qrels = read_qrels(root)
    texts = read_queries(root, qrels)
    overrides = {"lake": lake, "embedding": {"backend": backend}} if backend else {"lake": lake}
    settings = load_settings(None, overrides)
    embedder = load_embedder(settings.embedding)
    store_lake = Lake(settings.lake)
    serving = store_lake.read_ref("serving")
    retriever = Retriever(store_lake, serving["table"], serving["version"], embedder, exact=True)
    # A subset corpus (quick mode) keeps only the queries whose relevant documents are all in it.
    present = set(retriever.table.search().select(["doc_id"]).limit(None).to_arrow()["doc_id"].to_pylist())
    ids = [q for q in texts if set(qrels[q]) <= present]
    results = retriever.search_many([texts[q] for q in ids], "vector", 100)
    rankings = {q: doc_ranking(hits) for q, (hits, _) in zip(ids, results)}
    metrics = mean_metrics(score_rankings({q: qrels[q] for q in ids}, rankings, [10, 100]))
    return {"encoder": embedder.name, "table": serving["table"], "queries": len(ids),
            **{k: metrics[k] for k in ("ndcg@10", "recall@100", "mrr@10")}}


def synthetic(rows: int, dim: int, n_queries: int, work: Path, seed: int = 0, exact_queries: int = 20) -> dict:
    import lancedb
    import pyarrow as pa
    from lancedb.index import FTS

    from ragloop.tasks.indexing import ann_index, describe_ann
    from ragloop.tasks.retrieval import ann_knobs
    from ragloop.tasks.settings import AnnIndexConfig, AnnSearchConfig

    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((max(rows // 500, 1), dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sigma = 0.9 / np.sqrt(dim)  # noise norm ~0.9: cosine to the centroid ~0.75, like topical embeddings

    def sample(n: int) -> np.ndarray:
        v = centroids[rng.integers(0, len(centroids), n)] + rng.standard_normal((n, dim)).astype(np.float32) * sigma
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    vocab = [f"w{i}" for i in range(5000)]
    probs = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf-like word frequencies
    probs /= probs.sum()
    db = lancedb.connect(str(fresh_dir(work / "synthetic")))
    out: dict = {"rows": rows, "dim": dim, "queries": n_queries, "seed": seed}
    t = time.perf_counter()
    table = None
    step = 100_000
    all_vecs = np.empty((rows, dim), dtype=np.float32)  # kept for the numpy ground truth (1.5 GB at 1M)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        vecs = sample(n)
        all_vecs[start:start + n] = vecs
        words = rng.choice(len(vocab), size=(n, 12), p=probs)
        texts = [" ".join(vocab[w] for w in row) for row in words]
        batch = pa.table({
            "chunk_id": pa.array([f"c{start + i}" for i in range(n)]),
            "text": pa.array(texts),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
        })
        if table is None:
            table = db.create_table("chunks", batch)
        else:
            table.add(batch)
    out["write_s"] = time.perf_counter() - t

    qvecs = sample(n_queries)
    qtexts = [" ".join(vocab[w] for w in rng.choice(len(vocab), size=3, p=probs)) for _ in range(n_queries)]

    t = time.perf_counter()
    table.create_index("text", config=FTS(with_position=False), name="text_idx")
    out["fts_build_s"] = time.perf_counter() - t

    # Ground truth for recall: brute-force cosine top-10 in numpy over every query. LanceDB's own exact
    # search is timed on at most exact_queries of them (about a second per query at 1M rows).
    truth, nearest = [], []
    for qv in qvecs:
        scores = all_vecs @ qv
        top = np.argpartition(-scores, 20)[:20]
        top = top[np.argsort(-scores[top])]
        truth.append([f"c{i}" for i in top[:K]])
        nearest.append(scores[top])
    out["lid_at_20"] = lid(np.array(nearest))
    del all_vecs
    exact_n = min(n_queries, exact_queries)
    out["exact_queries"] = exact_n

    def run(mode: str, exact: bool, limit: int | None = None) -> tuple[dict, list]:
        lat, cpu, ids = [], [], []
        for v, q in list(zip(qvecs, qtexts))[:limit]:
            t, c = time.perf_counter(), time.process_time()
            if mode == "vector":
                b = table.search(v, vector_column_name="vector").distance_type("cosine")
                if exact:
                    b = b.bypass_vector_index()
                rows_ = b.limit(K).select(["chunk_id"]).to_arrow()
            elif mode == "fts":
                rows_ = table.search(q, query_type="fts").limit(K).select(["chunk_id"]).to_arrow()
            else:
                b = table.search(query_type="hybrid").vector(v).text(q).limit(K)
                b = b.bypass_vector_index() if exact else ann_knobs(b, AnnSearchConfig(), K)
                rows_ = b.select(["chunk_id"]).to_arrow()
            lat.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
            ids.append(rows_["chunk_id"].to_pylist())
        return stats(lat, cpu), ids

    run("vector", True, 2)  # warm the page cache
    out["vector_exact"], exact_ids = run("vector", True, exact_n)
    out["lancedb_exact_recall_at_10_vs_numpy"] = recall_at_k(truth[:exact_n], exact_ids)
    out["fts"], _ = run("fts", True)
    out["hybrid_exact"], _ = run("hybrid", True, exact_n)
    t = time.perf_counter()
    config = AnnIndexConfig()
    table.create_index("vector", config=ann_index(config, dim), name="vector_idx")
    out["ann_build_s"] = time.perf_counter() - t
    out["ann_index"] = describe_ann(config.build_params()) + " (index.ann's defaults, as tasks/indexing.py builds it)"
    out["ann"] = ann_runs(table, qvecs, truth, out["vector_exact"], out["lancedb_exact_recall_at_10_vs_numpy"])
    out["vector_ann"] = {k: out["ann"]["after"][k] for k in ("p50_ms", "p95_ms", "cpu_p50_ms", "cpu_p95_ms", "n")}
    out["ann_recall_at_10"] = out["ann"]["after"]["recall_at_10"]
    run("hybrid", False)  # warm
    out["hybrid_ann"], _ = run("hybrid", False)  # eval.ann's defaults on the vector leg, as the Retriever searches
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lake", required=True, help="the SciFact lake of the index bench")
    ap.add_argument("--queries", required=True, help="SciFact queries.jsonl")
    ap.add_argument("--n-queries", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--synthetic-queries", type=int, default=100)
    ap.add_argument("--torch-lake", help="the index bench's lake built with backend torch: quality beside the shipped one")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = fresh_dir(args.work)
    out = {"scifact": scifact(args.lake, Path(args.queries), args.n_queries, work)}
    root = Path(args.queries).parent
    if (root / "qrels" / "test.tsv").exists():
        out["quality"] = {"shipped": quality(args.lake, None, root)}
        if args.torch_lake:
            out["quality"]["torch"] = quality(args.torch_lake, "torch", root)
            out["quality"]["ndcg_at_10_delta"] = out["quality"]["shipped"]["ndcg@10"] - out["quality"]["torch"]["ndcg@10"]
            out["quality"]["holds"] = abs(out["quality"]["ndcg_at_10_delta"]) <= 0.005
        write_json(args.out, out)
    write_json(args.out, out)  # partial result first: the synthetic table is the long part
    out["synthetic"] = synthetic(args.rows, 384, args.synthetic_queries, work)
    shutil.rmtree(work / "synthetic", ignore_errors=True)
    write_json(args.out, out)


if __name__ == "__main__":
    main()
