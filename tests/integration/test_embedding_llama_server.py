"""embedding.provider openai against llama-cpp-python's own OpenAI-compatible server on 127.0.0.1, serving
embeddings from the packaged SmolLM2 GGUF (the only GGUF here offline; a chat model, so its vectors say
little about meaning: this tests the protocol, batching and the checks, not retrieval quality)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import lancedb
import numpy as np
import pytest

from ragloop.flows.index import index_corpus
from ragloop.tasks import embedding_endpoint
from ragloop.tasks.embedding_endpoint import OpenAICompatEmbedder
from ragloop.tasks.llm import packaged_model_path
from ragloop.tasks.settings import ConfigError, EmbeddingConfig
from tests.conftest import stop_process, write_files
from tests.integration.test_llm_real import _free_port

pytestmark = pytest.mark.integration
ALIAS = "smollm2-embed"


def _serve(tmp_path_factory, *extra: str):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_embed") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_model_path()), "--model_alias", ALIAS,
           "--embedding", "true", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
           *extra]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=1).is_success:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc, timeout=10)
            pytest.fail(f"llama_cpp.server did not answer within 60 s:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def pooled_url(tmp_path_factory):
    """The server with mean pooling (the GGUF has no pooling type of its own): one vector per text."""
    proc, url = _serve(tmp_path_factory, "--kv_overrides", "llama.pooling_type=int:1")
    try:
        yield url
    finally:
        stop_process(proc, timeout=10)


@pytest.fixture(autouse=True)
def _fresh_probes():
    embedding_endpoint.forget_probes()
    yield
    embedding_endpoint.forget_probes()


def config(url: str, **extra) -> EmbeddingConfig:
    return EmbeddingConfig(provider="openai", base_url=url, model=ALIAS, batch_size=2, max_tokens=256, **extra)


def test_llama_server_embeddings_are_probed_batched_and_deterministic(pooled_url):
    client = OpenAICompatEmbedder(config(pooled_url))
    assert client.dim == 576 and client.requests == 1  # SmolLM2-135M's hidden size, found by the probe
    texts = ["FastAPI declares path parameters in the route.", "Docker images ship the app.", "Query strings",
             "Dependencies are injected.", "Uvicorn serves ASGI apps."]
    first = client.encode(texts)
    assert first.shape == (5, 576) and client.requests == 1 + 3, "batches of 2, 2 and 1"
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    again = client.encode(texts[:1])
    assert float(again[0] @ first[0]) > 0.9999, "the same text, the same vector"


def test_ragloop_index_against_the_llama_server(prefect_backend, pooled_url, tmp_path, lake_dir):
    src = write_files(tmp_path / "docs", {
        "a.md": "# Path parameters\n\nDeclare them in the route with the same syntax as format strings.\n",
        "b.md": "# Docker\n\nBuild an image from the official Python image and copy the app.\n",
        "c.md": "# Dependencies\n\nA dependency is a function FastAPI calls before the endpoint.\n",
    })
    (tmp_path / "ragloop.yaml").write_text(json.dumps({"embedding": config(pooled_url).model_dump(
        include={"provider", "base_url", "model", "batch_size", "max_tokens"})}))
    first = index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert first["status"] == "ok" and first["table"]["name"] == "chunks__smollm2_embed__openai_d576"
    rows = lancedb.connect(str(lake_dir / "lancedb")).open_table(first["table"]["name"]).to_arrow().to_pylist()
    assert len(rows) == first["chunks"]["total"] == 3
    second = index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert second["chunks"]["embedded"] == 0 and second["table"] == first["table"]


def test_a_gguf_without_pooling_answers_token_vectors_which_the_probe_refuses(tmp_path_factory):
    proc, url = _serve(tmp_path_factory)
    try:
        with pytest.raises(ConfigError, match="not a flat list of numbers"):
            OpenAICompatEmbedder(config(url)).preflight()
    finally:
        stop_process(proc, timeout=10)
