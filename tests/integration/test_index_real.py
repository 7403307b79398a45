"""The index stage on the real packaged MiniLM, over a slice of the FastAPI docs (../shared/data)."""

from __future__ import annotations

import shutil

import lancedb
import numpy as np
import pytest

from ragloop.flows.index import index_corpus
from ragloop.tasks.embedding import SentenceTransformerEmbedder
from ragloop.tasks.settings import EmbeddingConfig
from tests.conftest import SHARED_DATA

FASTAPI_DOCS = SHARED_DATA / "corpora" / "fastapi-docs" / "docs"
SLICE = ["tutorial/first-steps.md", "tutorial/query-params.md", "deployment/docker.md", "async.md", "index.md"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not FASTAPI_DOCS.exists(), reason="../shared/data is not beside the repo"),
]


@pytest.fixture(scope="module")
def embedder():
    return SentenceTransformerEmbedder(EmbeddingConfig())


@pytest.fixture
def docs_slice(tmp_path):
    root = tmp_path / "docs"
    for rel in SLICE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FASTAPI_DOCS / rel, root / rel)
    return root


def test_real_index_respects_the_model_limit_and_is_idempotent(prefect_backend, docs_slice, lake_dir, embedder):
    first = index_corpus(sources=[str(docs_slice)], lake=str(lake_dir))
    assert first["status"] == "ok", first
    assert first["documents"]["new"] == len(SLICE)
    table = lancedb.connect(str(lake_dir / "lancedb")).open_table(f"chunks__{embedder.slug}")
    rows = table.to_arrow().to_pylist()
    assert len(rows) == first["chunks"]["total"] > len(SLICE)

    # Counted with the model's own tokenizer (as sentence-transformers tokenizes), never truncated.
    tok = embedder.model.tokenizer
    lengths = [len(tok(r["text"], add_special_tokens=True)["input_ids"]) for r in rows]
    assert max(lengths) <= embedder.model.max_seq_length

    # Stored vectors are the model's own embeddings of the stored text.
    sample = rows[:4]
    fresh = embedder.encode([r["text"] for r in sample])
    stored = np.array([r["vector"] for r in sample], dtype=np.float32)
    assert np.allclose(fresh, stored, atol=1e-4)

    # Markdown headings travel with the chunks.
    assert any("Docker" in " ".join(r["headings"]) for r in rows if r["doc_id"] == "deployment/docker.md")

    second = index_corpus(sources=[str(docs_slice)], lake=str(lake_dir))
    assert second["chunks"]["embedded"] == 0 and second["documents"]["unchanged"] == len(SLICE)
    assert second["table"]["version"] == first["table"]["version"]

    (docs_slice / "async.md").unlink()
    page = docs_slice / "tutorial" / "first-steps.md"
    page.write_text(page.read_text() + "\n\n## One more thing\n\nRestart the server after changing settings.\n")
    third = index_corpus(sources=[str(docs_slice)], lake=str(lake_dir))
    assert third["documents"]["changed"] == 1 and third["documents"]["deleted"] == 1
    assert 0 < third["chunks"]["embedded"] <= 3
    rows = lancedb.connect(str(lake_dir / "lancedb")).open_table(f"chunks__{embedder.slug}").to_arrow().to_pylist()
    assert len(rows) == third["chunks"]["total"]
    assert not [r for r in rows if r["doc_id"] == "async.md"]


def test_real_none_strategy_truncates_exactly_like_the_model(prefect_backend, docs_slice, lake_dir, embedder):
    summary = index_corpus(sources=[str(docs_slice)], lake=str(lake_dir), chunking="none")
    assert summary["status"] == "ok"
    rows = lancedb.connect(str(lake_dir / "lancedb")).open_table(f"chunks__{embedder.slug}").to_arrow().to_pylist()
    assert len(rows) == len(SLICE)
    assert summary["chunks"]["truncated"] == sum(1 for r in rows if '"truncated": true' in r["metadata"]) > 0
    # The vector of the stored (truncated) text equals the model's embedding of the full document.
    from ragloop.tasks.storage import Lake

    lake = Lake(str(lake_dir))
    docs = {d["doc_id"]: d["text"] for d in lake.read_snapshot(summary["snapshot_id"]).to_pylist()}
    row = next(r for r in rows if '"truncated": true' in r["metadata"])
    full = embedder.encode([docs[row["doc_id"]]])[0]
    assert float(np.dot(full, np.array(row["vector"], dtype=np.float32))) > 0.9999
