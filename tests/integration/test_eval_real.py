"""The eval stage on the real packaged MiniLM and the real local SmolLM2, over a SciFact slice."""

from __future__ import annotations

import json

import pytest

from ragloop.flows.beir import import_beir
from ragloop.flows.evaluate import evaluate_chain
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, SHARED_DATA

SCIFACT = SHARED_DATA / "scifact"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SCIFACT.exists(), reason="../shared/data is not beside the repo"),
]


@pytest.fixture
def scifact_slice(tmp_path):
    """Five test queries, their judged abstracts and 95 other abstracts, in BEIR layout."""
    lines = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]
    qrels = [line.split("\t") for line in lines]
    queries = list(dict.fromkeys(q for q, _, _ in qrels))[:5]
    judged = {d for q, d, _ in qrels if q in queries}
    corpus = []
    with (SCIFACT / "corpus.jsonl").open() as src:
        for line in src:
            doc = json.loads(line)
            if doc["_id"] in judged or len(corpus) < 95 + len(judged):
                corpus.append(line)
    root = tmp_path / "scifact-slice"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(corpus))
    (root / "queries.jsonl").write_text("".join(
        line + "\n" for line in (SCIFACT / "queries.jsonl").read_text().splitlines()
        if json.loads(line)["_id"] in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        "\t".join(r) + "\n" for r in qrels if r[0] in queries))
    return root


def test_real_eval_retrieval_and_answers(prefect_backend, scifact_slice, lake_dir, monkeypatch):
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    imported = import_beir(path=str(scifact_slice), lake=str(lake_dir), chunking="none")
    assert imported["status"] == "ok" and imported["items"]["total"] == 5

    ir = evaluate_chain(lake=str(lake_dir), retrieval="vector", k=10, retrieval_only=True, promote="explicit")
    assert ir["status"] == "ok" and ir["metrics"]["recall@10"] >= 0.6, ir["metrics"]

    full = evaluate_chain(lake=str(lake_dir), retrieval="hybrid", k=3)
    assert full["items"]["total"] == 5 and full["answers"]["total"] == 5
    assert full["lineage"]["chain"]["llm"].startswith("SmolLM2-135M-Instruct.Q4_1.gguf@sha256:")
    items = Lake(str(lake_dir)).read_eval_items(full["run_id"]).to_pylist()
    assert all(i["answer"] for i in items if i["status"] == "ok")
    traces = Lake(str(lake_dir)).read_traces(full["run_id"]).to_pylist()
    answer_traces = [t for t in traces if t["step"] == "answer"]
    assert answer_traces and all(t["completion_tokens"] > 0 and t["latency_ms"] > 0 for t in answer_traces if not t["error"])
    assert "hit@3" in full["metrics"] and full["baseline_run_id"] == ir["run_id"]
