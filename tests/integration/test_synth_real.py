"""The synth stage on the real packaged MiniLM and the real local SmolLM2 (llama.cpp in-process)."""

from __future__ import annotations

import shutil

import lancedb
import pytest

from ragloop.flows.index import index_corpus
from ragloop.flows.synth import synth_golden_set
from ragloop.tasks import grounding
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, SHARED_DATA

FASTAPI_DOCS = SHARED_DATA / "corpora" / "fastapi-docs" / "docs"
SLICE = ["tutorial/query-params.md", "tutorial/path-params.md", "deployment/docker.md", "async.md"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not FASTAPI_DOCS.exists(), reason="../shared/data is not beside the repo"),
]


def test_real_synth_generates_checked_items_and_follows_an_edit(prefect_backend, tmp_path, lake_dir, monkeypatch):
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    root = tmp_path / "docs"
    for rel in SLICE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FASTAPI_DOCS / rel, root / rel)
    index_corpus(sources=[str(root)], lake=str(lake_dir))

    first = synth_golden_set(lake=str(lake_dir), size=6)
    assert first["status"] in ("ok", "partial"), first  # partial: fewer than 6 passed the filters, said so
    assert first["items"]["total"] > 0
    assert (first["status"] == "partial") == (first["items"]["total"] < 6)
    assert first["attempted"] == first["items"]["new"] + first["items"]["rejected"], "every candidate is accounted for"
    assert first["lineage"]["llm"]["model"].startswith("SmolLM2-135M-Instruct.Q4_1.gguf@sha256:")
    lake = Lake(str(lake_dir))
    items = lake.read_golden(first["golden_set_id"]).to_pylist()
    table = lancedb.connect(str(lake_dir / "lancedb")).open_table(first["lineage"]["table"]["name"])
    chunk_ids = set(table.search().select(["chunk_id"]).limit(None).to_arrow()["chunk_id"].to_pylist())
    assert all(set(i["reference_chunk_ids"]) <= chunk_ids for i in items)
    assert all(i["question"].strip() and i["prompt_hash"] for i in items)
    # Evidence by construction: every accepted answerable item has spans inside each reference chunk,
    # and those spans hold every number and name of its answer.
    texts = dict(zip(*table.search().select(["chunk_id", "text"]).limit(None).to_arrow().to_pydict().values()))
    for item in items:
        if item["qa_type"] == "unanswerable":
            assert item["evidence"] == [] and item["reference_chunk_ids"] == []
            continue
        assert {e["chunk_id"] for e in item["evidence"]} == set(item["reference_chunk_ids"]), item
        assert all(0 <= e["start"] < e["end"] <= len(texts[e["chunk_id"]]) for e in item["evidence"]), item
        evidence = "\n".join(texts[e["chunk_id"]][e["start"]:e["end"]] for e in item["evidence"])
        assert grounding.unsupported_facts(item["reference_answer"], evidence) == [], item

    # Edit a line of the chunk an item was made from: that item goes stale; items of other documents
    # are kept exactly as they were.
    target = next(i for i in items if i["source_chunk_ids"])
    chunk_text = table.search().where(f"chunk_id = '{target['source_chunk_ids'][0]}'").select(["text"]).to_arrow()["text"][0].as_py()
    edited_doc = target["source_doc_ids"][0]
    path = root / edited_doc
    original = path.read_text()
    line = max((ln for ln in chunk_text.splitlines() if ln.strip() and ln in original), key=len)
    path.write_text(original.replace(line, line + " Edited for the test.", 1))
    index_corpus(sources=[str(root)], lake=str(lake_dir))
    second = synth_golden_set(lake=str(lake_dir), size=6)
    after = {i["qa_id"]: i for i in lake.read_golden(second["golden_set_id"]).to_pylist()}
    assert after[target["qa_id"]]["status"] == "stale"
    assert second["items"]["stale"] >= 1
    for item in items:
        if edited_doc not in item["source_doc_ids"]:
            assert after[item["qa_id"]] == item
    assert second["items"]["kept"] + second["items"]["new"] == second["items"]["total"]
