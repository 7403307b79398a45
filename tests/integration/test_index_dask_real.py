"""runner.kind dask with the real packaged MiniLM in ONNX int8: a FastAPI slice indexed on a LocalCluster of
2 processes gives the local runner's table byte for byte (chunk ids, texts, vector bytes, row count)."""

from __future__ import annotations

import shutil

import lancedb
import pytest

from ragloop.flows.index import index_corpus
from tests.conftest import SHARED_DATA

FASTAPI_DOCS = SHARED_DATA / "corpora" / "fastapi-docs" / "docs"
SLICE = ["tutorial/first-steps.md", "tutorial/query-params.md", "deployment/docker.md", "async.md", "index.md"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not FASTAPI_DOCS.exists(), reason="../shared/data is not beside the repo"),
]


def _rows(lake) -> list[tuple[str, str, bytes]]:
    db = lancedb.connect(str(lake / "lancedb"))
    (name,) = [n for n in db.table_names() if n.startswith("chunks__")]
    table = db.open_table(name).to_arrow()
    vectors = table["vector"].combine_chunks().values.to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)
    return sorted(zip(table["chunk_id"].to_pylist(), table["text"].to_pylist(), (v.tobytes() for v in vectors)))


def test_dask_runner_gives_the_local_table_byte_for_byte_with_the_real_int8_encoder(prefect_backend, tmp_path,
                                                                                     monkeypatch):
    root = tmp_path / "docs"
    for rel in SLICE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FASTAPI_DOCS / rel, root / rel)
    monkeypatch.setenv("RAGLOOP_INDEX__DOCS_PER_BATCH", "2")  # 3 windows over 2 workers
    local = index_corpus(sources=[str(root)], lake=str(tmp_path / "local"))
    monkeypatch.setenv("RAGLOOP_RUNNER__KIND", "dask")
    monkeypatch.setenv("RAGLOOP_RUNNER__WORKERS", "2")
    dask = index_corpus(sources=[str(root)], lake=str(tmp_path / "dask"))
    assert local["status"] == dask["status"] == "ok"
    assert local["lineage"]["embedder"]["name"] == "all-minilm-l6-v2+onnx-int8"
    rows = _rows(tmp_path / "dask")
    assert rows == _rows(tmp_path / "local")
    assert len(rows) == dask["chunks"]["total"] == local["chunks"]["total"] > len(SLICE)
