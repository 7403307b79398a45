"""`ragloop index`, `import-beir` and `eval` with `embedding.provider: openai` against a real embeddings server on
127.0.0.1 (tests/embedding_server.py): the table named by model and dimension, incremental re-runs, a wrong
reply refused before anything is written, query vectors from the same endpoint, usage errors before any work."""

from __future__ import annotations

import json

import lancedb
import numpy as np
import pytest

from ragloop.flows.cli import main
from ragloop.tasks import embedding_endpoint
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, write_files
from tests.embedding_server import EmbeddingServer
from tests.flows.test_eval_flow import CORPUS, QRELS, QUERIES

TABLE = "chunks__test_embedder__openai_d24"
DOCS = {
    "harbour.md": "# Harbour\n\nThe harbour station has twelve docks and two chargers.\n\n## Hours\n\nOpen from six to midnight.\n",
    "museum.md": "# Museum\n\nThe museum station closes at midnight on weekdays.\n",
    "fares.md": "# Fares\n\nA single ride costs two credits; a day pass costs nine credits.\n",
    "winter.md": "# Winter\n\nIn winter the fleet is serviced every Monday morning.\n",
    "night.md": "# Night buses\n\nNight buses leave the harbour every forty minutes.\n",
}


@pytest.fixture
def server():
    embedding_endpoint.forget_probes()
    with EmbeddingServer(dim=24) as running:
        yield running
    embedding_endpoint.forget_probes()


def write_config(tmp_path, server, **extra) -> str:
    embedding = {"provider": "openai", "base_url": server.base_url, "model": server.model, "batch_size": 2,
                 "backoff_s": 0.0, **extra}
    path = tmp_path / "endpoint.yaml"
    path.write_text(json.dumps({"embedding": embedding, "prompts_dir": str(REPO / "prompts")}), encoding="utf-8")
    return str(path)


def index(capsys, src, lake_dir, config) -> tuple[int, dict]:
    code = main(["index", "--source", str(src), "--lake", str(lake_dir), "--config", config, "--json"])
    return code, json.loads(capsys.readouterr().out)


def table_rows(lake_dir) -> list[dict]:
    return lancedb.connect(str(lake_dir / "lancedb")).open_table(TABLE).to_arrow().to_pylist()


def test_index_through_an_endpoint_is_incremental_and_refuses_a_wrong_reply_before_writing(
        prefect_backend, server, tmp_path, lake_dir, capsys):
    src = write_files(tmp_path / "docs", DOCS)
    config = write_config(tmp_path, server)
    code, first = index(capsys, src, lake_dir, config)
    assert code == 0, first
    assert first["table"]["name"] == TABLE
    embedded = first["chunks"]["embedded"]
    assert server.batches[0] == 1, "the probe: one text"
    assert sum(server.batches[1:]) == embedded and max(server.batches[1:]) <= 2, "batches of embedding.batch_size"
    rows = table_rows(lake_dir)
    stored = np.array([r["vector"] for r in rows])
    assert np.allclose(stored, server.fake.encode([r["text"] for r in rows]), atol=1e-5), "normalized server vectors"
    lineage = Lake(str(lake_dir)).read_run(first["run_id"])["lineage"]["embedder"]
    assert lineage["name"] == "openai:test-embedder" and lineage["dim"] == 24
    assert lineage["endpoint"]["base_url"] == server.base_url and lineage["max_tokens"] == 510

    attempts = server.attempts
    code, second = index(capsys, src, lake_dir, config)
    assert code == 0 and second["chunks"]["embedded"] == 0
    assert second["table"] == first["table"] and server.attempts == attempts, "nothing sent, nothing written"

    # A server that starts answering another dimension: refused inside the commit, the table stays as it was.
    (src / "fares.md").write_text("# Fares\n\nA single ride now costs three credits.\n", encoding="utf-8")
    server.wrong_dim = 32
    code, failed = index(capsys, src, lake_dir, config)
    assert code == 1 and "dimension 32, expected 24" in failed["error"]
    assert lancedb.connect(str(lake_dir / "lancedb")).open_table(TABLE).version == first["table"]["version"]
    assert table_rows(lake_dir) == rows

    # Back to normal, after two 503s: retried, and only the changed document's text is embedded (the failed
    # run's ingest already recorded the change, so it is the index plan that finds it).
    server.wrong_dim = None
    server.fail(2, 503)
    code, third = index(capsys, src, lake_dir, config)
    assert code == 0 and third["index_plan"]["changed"] == 1 and third["chunks"]["embedded"] == 1


def test_other_weights_served_under_the_same_model_id_are_refused(prefect_backend, server, tmp_path, lake_dir, capsys):
    src = write_files(tmp_path / "docs", DOCS)
    config = write_config(tmp_path, server)
    code, first = index(capsys, src, lake_dir, config)
    assert code == 0 and Lake(str(lake_dir)).read_ref(f"table__{TABLE}__probe")["embedder"] == "openai:test-embedder"
    server.other_weights = True  # same id, same dimension, other vectors: only the probe can tell
    embedding_endpoint.forget_probes()  # as a new process would: it probes again
    (src / "fares.md").write_text("# Fares\n\nA single ride now costs three credits.\n", encoding="utf-8")
    code, failed = index(capsys, src, lake_dir, config)
    assert code == 1 and "answers the probe text differently" in failed["error"], failed
    assert lancedb.connect(str(lake_dir / "lancedb")).open_table(TABLE).version == first["table"]["version"]


def test_eval_embeds_its_queries_through_the_same_endpoint(prefect_backend, server, tmp_path, lake_dir, capsys):
    beir = write_files(tmp_path / "beir", {
        "corpus.jsonl": "\n".join(json.dumps(d) for d in CORPUS) + "\n",
        "queries.jsonl": "\n".join(json.dumps(q) for q in QUERIES) + "\n",
        "qrels/test.tsv": QRELS,
    })
    config = write_config(tmp_path, server, batch_size=8)
    assert main(["import-beir", str(beir), "--chunking", "none", "--lake", str(lake_dir), "--config", config,
                 "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["table"]["name"] == TABLE and imported["chunks"]["embedded"] == 4
    before = list(server.batches)
    code = main(["eval", "--lake", str(lake_dir), "--config", config, "--retrieval", "vector", "--k", "4",
                 "--retrieval-only", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    assert sum(server.batches[len(before):]) >= 3, "the three judged questions were embedded by the server"
    assert summary["metrics"]["hit@4"] == 1.0
    assert summary["lineage"]["models"]["embedder"] == "openai:test-embedder"

    server.other_weights = True  # the queries would now be embedded by another model: refused
    embedding_endpoint.forget_probes()
    code = main(["eval", "--lake", str(lake_dir), "--config", config, "--retrieval", "fts", "--retrieval-only", "--json"])
    failed = json.loads(capsys.readouterr().out)
    assert code == 1 and "answers the probe text differently" in failed["error"], failed


@pytest.mark.parametrize(
    "extra, message",
    [({"dim": 16}, "embedding.dim: .* answers 24-dimensional vectors"),
     ({"model": "missing-model"}, "embedding.model: the probe request was refused"),
     ({"base_url": "http://127.0.0.1:9/v1"}, "embedding.base_url: no OpenAI-compatible embeddings endpoint answers"),
     ({"batch_size": 0}, "embedding.batch_size")],
    ids=["wrong-dim", "unknown-model", "nothing-listening", "bad-batch-size"],
)
def test_endpoint_usage_errors_exit_2_before_any_work(prefect_backend, server, tmp_path, lake_dir, capsys, extra, message):
    import re

    src = write_files(tmp_path / "docs", DOCS)
    code, failed = index(capsys, src, lake_dir, write_config(tmp_path, server, **extra))
    assert code == 2 and re.search(message, failed["error"]), failed
    assert not Lake(str(lake_dir)).has_runs() if lake_dir.exists() else True
