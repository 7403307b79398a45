"""ANN recall against brute force on a seeded synthetic table: the Retriever's ANN search with eval.ann
(index built by tasks.indexing.ann_index, as refresh_indexes builds it) against numpy's exact top-10 and
the Retriever's own exact search; the query-time knobs act; the chain records them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ragloop.tasks import eval_run, indexing
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.retrieval import Retriever
from ragloop.tasks.settings import AnnIndexConfig, AnnSearchConfig, EvalConfig
from ragloop.tasks.storage import Lake

ROWS, DIM, QUERIES, K = 10_000, 128, 100, 10


def mixture(rows: int, queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from one seeded mixture (rows / 500 centroids plus noise of norm 0.9), as the 1M-row
    bench draws them: every query's top 10 are near-ties among its cluster's members, a hard case."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((max(rows // 500, 1), dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)

    def sample(n: int) -> np.ndarray:
        v = centroids[rng.integers(0, len(centroids), n)] + rng.standard_normal((n, dim)).astype(np.float32) * 0.9 / np.sqrt(dim)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return sample(rows), sample(queries)


class LookupEmbedder:
    """Encodes the query text "q<i>" as the i-th synthetic query vector."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def encode(self, texts):
        return self.vectors[[int(t[1:]) for t in texts]]


def synthetic_table(lake: Lake, name: str, vectors: np.ndarray, index: AnnIndexConfig | None):
    """A chunks-like table (chunk_id c<i>, doc_id, text, vector) with the index ragloop builds for `index`."""
    n, dim = vectors.shape
    table = lake.connect_vectors().create_table(name, pa.table({
        "chunk_id": [f"c{i:05d}" for i in range(n)], "doc_id": [f"d{i // 3}" for i in range(n)],
        "text": [f"chunk {i}" for i in range(n)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    }))
    if index is not None:
        table.create_index("vector", config=indexing.ann_index(index, dim), name="vector_idx")
    return table


def recall_at_k(truth: list[list[str]], found: list[list[str]]) -> float:
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found)]))


def top_ids(retriever: Retriever, n: int) -> list[list[str]]:
    return [[h.chunk_id for h in hits] for hits, _ in retriever.search_many([f"q{i}" for i in range(n)], "vector", K)]


@pytest.fixture(scope="module")
def hnsw(tmp_path_factory):
    """The seeded table with the default index.ann (hnsw_sq), its queries and numpy's exact top-10."""
    lake = Lake(str(tmp_path_factory.mktemp("ann") / "lake"))
    base, queries = mixture(ROWS, QUERIES, DIM)
    table = synthetic_table(lake, "chunks__synthetic", base, AnnIndexConfig())
    truth = [[f"c{i:05d}" for i in np.argsort(-(base @ q), kind="stable")[:K]] for q in queries]
    return lake, table, LookupEmbedder(queries), truth


def _retriever(hnsw, **kwargs) -> Retriever:
    lake, table, embedder, _ = hnsw
    return Retriever(lake, "chunks__synthetic", table.version, embedder, **kwargs)


def test_exact_search_is_brute_force(hnsw):
    assert recall_at_k(hnsw[3], top_ids(_retriever(hnsw, exact=True), QUERIES)) == 1.0


def test_default_ann_knobs_keep_recall_where_lancedbs_own_defaults_lose_it(hnsw):
    """eval.ann's defaults (ef 100, refine 2) against the smallest search LanceDB allows (ef = the
    candidates fetched, quantized distances only): close to what ragloop searched before eval.ann."""
    truth = hnsw[3]
    default = recall_at_k(truth, top_ids(_retriever(hnsw, exact=False), QUERIES))
    narrow = recall_at_k(truth, top_ids(_retriever(hnsw, exact=False, ann=AnnSearchConfig(ef=1, refine_factor=None)), QUERIES))
    assert default >= 0.97, f"recall@10 {default:.3f} with eval.ann's defaults"
    assert narrow < 0.95 and default - narrow >= 0.03, f"narrow search {narrow:.3f}, defaults {default:.3f}"


def test_a_wider_graph_search_and_a_refine_raise_recall(hnsw):
    truth = hnsw[3]
    recall = {(ef, refine): recall_at_k(truth, top_ids(_retriever(hnsw, exact=False, ann=AnnSearchConfig(ef=ef, refine_factor=refine)), QUERIES))
              for ef, refine in [(18, None), (100, None), (100, 2)]}
    assert recall[(18, None)] < recall[(100, None)] < recall[(100, 2)], recall


def test_refine_factor_raises_ivf_pq_recall(tmp_path):
    """IVF_PQ's codes alone rank this table poorly; re-ranking more candidates by the stored vectors fixes it."""
    lake = Lake(str(tmp_path / "lake"))
    base, queries = mixture(4_000, 50, 64, seed=1)
    table = synthetic_table(lake, "chunks__pq", base, AnnIndexConfig(type="ivf_pq", num_partitions=4, num_sub_vectors=8))
    truth = [[f"c{i:05d}" for i in np.argsort(-(base @ q), kind="stable")[:K]] for q in queries]
    recall = {}
    for refine in (None, 4, 20):
        retriever = Retriever(lake, "chunks__pq", table.version, LookupEmbedder(queries), exact=False,
                              ann=AnnSearchConfig(refine_factor=refine, nprobes=4))
        recall[refine] = recall_at_k(truth, top_ids(retriever, 50))
    assert recall[None] < recall[4] < recall[20] and recall[20] >= 0.9, recall


def test_the_chain_records_the_ann_search_only_where_an_ann_index_is_searched(hnsw, tmp_path):
    models = eval_run.ChainModels(rewrite=None, answer=None)
    ann = _retriever(hnsw, exact=False).ann_search()
    assert ann == {"index": "IvfHnswSq", "ef": 100, "refine_factor": 2, "nprobes": None}
    assert _retriever(hnsw, exact=True).ann_search() is None
    lake = Lake(str(tmp_path / "lake"))
    small = synthetic_table(lake, "chunks__small", mixture(50, 1, 8)[0], None)
    assert Retriever(lake, "chunks__small", small.version, None, exact=False).ann_search() is None

    chain = eval_run.describe_chain(EvalConfig(retrieval="vector"), models, True, ann=ann)
    assert chain["ann"] == ann
    assert "ann" not in eval_run.describe_chain(EvalConfig(retrieval="fts"), models, True, ann=ann)
    assert "ann" not in eval_run.describe_chain(EvalConfig(retrieval="hybrid"), models, True, ann=None), \
        "an exact search keeps the chain (and hash) it had before eval.ann existed"
    wider = _retriever(hnsw, exact=False, ann=AnnSearchConfig(ef=200)).ann_search()
    hashes = {canonical_hash(eval_run.describe_chain(EvalConfig(retrieval="hybrid"), models, True, ann=a))
              for a in (ann, wider, None)}
    assert len(hashes) == 3, "a changed knob is a changed chain"
