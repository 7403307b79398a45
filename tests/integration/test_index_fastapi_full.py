"""Slow: the whole FastAPI docs corpus (155 files) through the CLI, as a new user would run it."""

from __future__ import annotations

import json
import shutil

import lancedb
import pytest

from ragloop.flows.cli import main
from tests.conftest import SHARED_DATA

FASTAPI_DOCS = SHARED_DATA / "corpora" / "fastapi-docs" / "docs"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(not FASTAPI_DOCS.exists(), reason="../shared/data is not beside the repo"),
]


def _index(src, lake, capsys) -> dict:
    code = main(["index", "--source", str(src), "--lake", str(lake), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    return summary


def test_full_fastapi_docs_index_reindex_edit_delete(prefect_backend, tmp_path, lake_dir, capsys):
    src = tmp_path / "docs"
    shutil.copytree(FASTAPI_DOCS, src)
    n_files = sum(1 for p in src.rglob("*") if p.is_file())

    first = _index(src, lake_dir, capsys)
    assert first["documents"]["seen"] + first["documents"]["quarantined"] == n_files == 155

    second = _index(src, lake_dir, capsys)
    assert second["chunks"]["embedded"] == 0
    assert second["documents"]["unchanged"] == first["documents"]["seen"]
    assert second["table"]["version"] == first["table"]["version"]

    page = src / "tutorial" / "first-steps.md"
    page.write_text(page.read_text() + "\n\nOne extra closing paragraph about restarting the server.\n")
    (src / "async.md").unlink()
    third = _index(src, lake_dir, capsys)
    assert third["documents"]["changed"] == 1 and third["documents"]["deleted"] == 1

    table = lancedb.connect(str(lake_dir / "lancedb")).open_table(third["table"]["name"])
    rows = table.search().select(["doc_id", "n_tokens"]).limit(None).to_arrow().to_pylist()
    assert len(rows) == third["chunks"]["total"]
    page_chunks = sum(1 for r in rows if r["doc_id"] == "tutorial/first-steps.md")
    assert 0 < third["chunks"]["embedded"] <= page_chunks
    assert not [r for r in rows if r["doc_id"] == "async.md"]
    assert max(r["n_tokens"] for r in rows) <= third["lineage"]["embedder"]["max_tokens"]
