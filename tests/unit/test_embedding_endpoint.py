"""The OpenAI-compatible embeddings provider: reply checks, batching, retries, concurrency, the probe and the
identity, on a scripted transport and on a real HTTP server on 127.0.0.1 (tests/embedding_server.py)."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import numpy as np
import pytest

from ragloop.tasks import embedding_endpoint
from ragloop.tasks.embedding import load_embedder, preflight_embedder
from ragloop.tasks.embedding_endpoint import (
    EmbeddingReplyError,
    EmbeddingUnavailable,
    OpenAICompatEmbedder,
    parse_embeddings,
)
from ragloop.tasks.settings import ConfigError, EmbeddingConfig, load_settings
from tests.embedding_server import EmbeddingServer

URL = "http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def _fresh_probes():
    embedding_endpoint.forget_probes()
    yield
    embedding_endpoint.forget_probes()


def config(**fields) -> EmbeddingConfig:
    return EmbeddingConfig(**{"provider": "openai", "base_url": URL, "model": "m", "backoff_s": 0.0, **fields})


def reply(vectors, index=True, usage=None) -> dict:
    data = [{"object": "embedding", "embedding": v, **({"index": i} if index else {})} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, **({"usage": usage} if usage else {})}


class Scripted:
    """A transport answering each embeddings request from a queue of (status, body) or a function of the
    texts; records the texts of every request."""

    def __init__(self, *answers, dim: int = 4):
        self.answers = list(answers)
        self.dim = dim
        self.requests: list[list[str]] = []
        self.headers: list[dict] = []

    def vectors(self, texts):
        return [[float(len(t)), 1.0] + [0.5] * (self.dim - 2) for t in texts]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body["input"])
        self.headers.append(dict(request.headers))
        answer = self.answers.pop(0) if self.answers else None
        if callable(answer):
            answer = answer(body["input"])
        if answer is None:
            answer = (200, reply(self.vectors(body["input"])))
        status, payload = answer
        # json.dumps writes NaN as the bare token some servers send (httpx's json= refuses it)
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return httpx.Response(status, text=text, headers={"content-type": "application/json"})


def embedder(transport, **fields) -> OpenAICompatEmbedder:
    return OpenAICompatEmbedder(config(**fields), transport=httpx.MockTransport(transport))


# -- settings ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "embedding, field",
    [
        ({"provider": "openai", "model": "m"}, "base_url"),
        ({"provider": "openai", "model": "m", "base_url": "127.0.0.1:8080/v1"}, "base_url"),
        ({"provider": "openai", "base_url": URL}, "model"),
        ({"provider": "openai", "model": "m", "base_url": URL, "batch_size": 0}, "batch_size"),
        ({"provider": "openai", "model": "m", "base_url": URL, "batch_size": 4096}, "batch_size"),
        ({"provider": "openai", "model": "m", "base_url": URL, "concurrency": 0}, "concurrency"),
        ({"provider": "openai", "model": "m", "base_url": URL, "request_dimensions": True}, "request_dimensions"),
        ({"provider": "openai", "model": "m", "base_url": URL, "backend": "onnx"}, "backend"),
        ({"provider": "local", "base_url": URL}, "base_url"),
        ({"dim": 384}, "dim"),
        ({"provider": "vertex"}, "provider"),
    ],
    ids=["no-base-url", "base-url-without-scheme", "no-model", "batch-0", "batch-over-2048", "concurrency-0",
         "request-dimensions-without-dim", "backend-with-openai", "base-url-with-local", "dim-with-local",
         "unknown-provider"],
)
def test_bad_embedding_config_fails_naming_the_field(embedding, field):
    with pytest.raises(ConfigError, match=rf"embedding\.?.*{field}"):
        load_settings(overrides={"embedding": embedding})


def test_an_openai_config_read_back_from_its_dump_is_still_valid():
    loaded = load_settings(overrides={"embedding": {"provider": "openai", "model": "m", "base_url": URL}})
    assert EmbeddingConfig(**loaded.embedding.model_dump()) == loaded.embedding
    assert EmbeddingConfig(**EmbeddingConfig().model_dump()) == EmbeddingConfig()  # local defaults too


def test_load_embedder_builds_the_endpoint_client_without_sending_anything():
    built = load_embedder(config())
    assert isinstance(built, OpenAICompatEmbedder) and built.requests == 0
    assert built.name == "openai:m"


# -- replies ----------------------------------------------------------------------------------------------
def test_parse_embeddings_orders_by_index_and_normalizes():
    data = {"data": [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [3.0, 4.0]}]}
    out = parse_embeddings(data, 2, 2, URL)
    assert out.dtype == np.float32
    assert np.allclose(out, [[0.6, 0.8], [0.0, 1.0]])


@pytest.mark.parametrize(
    "data, n, dim, message",
    [
        ({"data": [{"embedding": [1.0, 0.0]}]}, 2, 2, "1 vectors for 2 texts"),
        ({"data": [{"embedding": [1.0, 0.0, 0.0]}]}, 1, 2, "dimension 3, expected 2"),
        ({"data": [{"embedding": [1.0, 0.0]}, {"embedding": [1.0, 0.0, 1.0]}]}, 2, None, "dimension 3, expected 2"),
        ({"data": [{"embedding": [math.nan, 0.0]}]}, 1, 2, "not finite"),
        ({"data": [{"embedding": [math.inf, 0.0]}]}, 1, 2, "not finite"),
        ({"data": [{"embedding": [0.0, 0.0]}]}, 1, 2, "all zeros"),
        ({"data": [{"embedding": "AAAAAA=="}]}, 1, 2, "not a flat list of numbers"),
        ({"data": [{"embedding": [[1.0, 0.0], [0.0, 1.0]]}]}, 1, 2, "not a flat list of numbers"),
        ({"data": [{"embedding": [True, 1.0]}]}, 1, 2, "not a flat list of numbers"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}, 2, 1, "indexes"),
        ({"error": "busy"}, 1, 2, "without a data list"),
    ],
    ids=["too-few", "wrong-dim", "dims-disagree", "nan", "inf", "zero", "base64", "token-level", "bool",
         "duplicate-index", "no-data"],
)
def test_parse_embeddings_refuses_a_bad_reply_whole(data, n, dim, message):
    with pytest.raises(EmbeddingReplyError, match=message):
        parse_embeddings(data, n, dim, URL)


# -- batching, retries, concurrency -----------------------------------------------------------------------
def test_encode_batches_texts_and_keeps_input_order():
    script = Scripted()
    client = embedder(script, dim=4, batch_size=4)
    texts = [f"text {'x' * i}" for i in range(10)]
    out = client.encode(texts)
    assert [len(r) for r in script.requests] == [4, 4, 2]
    assert sorted(t for r in script.requests for t in r) == sorted(texts)
    expected = np.array(script.vectors(texts), dtype=np.float64)
    assert np.allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    assert client.requests == 3


def test_a_503_and_a_429_are_retried_then_answered():
    script = Scripted((503, {"error": "busy"}), (429, {"error": "slow down"}))
    client = embedder(script, dim=4, batch_size=8)
    assert client.encode(["a", "b"]).shape == (2, 4)
    assert len(script.requests) == 3 and client.requests == 3


def test_connection_errors_are_retried():
    calls = {"n": 0}
    script = Scripted()

    def flaky(request):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise httpx.ConnectError("refused", request=request)
        return script(request)

    assert embedder(flaky, dim=4).encode(["a"]).shape == (1, 4)
    assert calls["n"] == 3


def test_an_endpoint_that_stays_down_gives_up_after_max_retries():
    script = Scripted(*[(503, {"error": "busy"})] * 10)
    with pytest.raises(EmbeddingUnavailable, match=r"failed 3 times; last: HTTP 503"):
        embedder(script, dim=4, max_retries=2).encode(["a"])
    assert len(script.requests) == 3


def test_a_4xx_is_not_retried_and_names_the_status_without_the_key(monkeypatch):
    monkeypatch.setenv("EMBED_KEY", "sk-secret-123")
    script = Scripted((400, "input too long for sk-secret-123"))
    with pytest.raises(EmbeddingReplyError, match=r"HTTP 400 \(a text longer.*\*\*\*") as err:
        embedder(script, dim=4, api_key_env="EMBED_KEY").encode(["a"])
    assert "sk-secret-123" not in str(err.value)
    assert len(script.requests) == 1
    assert script.headers[0]["authorization"] == "Bearer sk-secret-123"  # read from the env at request time


def test_a_reply_with_the_wrong_dimension_fails_the_whole_call():
    script = Scripted(None, lambda texts: (200, reply([[1.0] * 5 for _ in texts])))
    with pytest.raises(EmbeddingReplyError, match="dimension 5, expected 4"):
        embedder(script, dim=4, batch_size=1, concurrency=1).encode(["a", "b", "c"])


def test_requests_in_flight_stay_within_concurrency():
    state = {"now": 0, "most": 0}
    script = Scripted()

    async def slow(request):
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        await asyncio.sleep(0.02)
        state["now"] -= 1
        return script(request)

    client = embedder(slow, dim=4, batch_size=1, concurrency=3)
    assert client.encode([str(i) for i in range(12)]).shape == (12, 4)
    assert state["most"] == 3


def test_once_one_request_gives_up_the_others_stop_retrying():
    script = Scripted(*[(503, {"error": "down"})] * 40)
    with pytest.raises(EmbeddingUnavailable, match="failed 3 times"):
        embedder(script, dim=4, batch_size=1, concurrency=1, max_retries=2).encode([str(i) for i in range(8)])
    # Backoff releases the slot, so the requests interleave; once the first gives up, no other retries on.
    assert len(script.requests) < 8 * 3


# -- the probe and the identity ---------------------------------------------------------------------------
def test_the_probe_finds_the_dimension_once_per_process():
    script = Scripted(dim=6)
    first = embedder(script)
    assert first.dim == 6 and len(script.requests) == 1
    assert script.requests[0] == [embedding_endpoint.PROBE_TEXT]
    assert first.slug == "m__openai_d6"
    again = embedder(script)  # a second build (a bake-off cell, a Dask worker) asks nothing
    assert again.dim == 6 and preflight_embedder(again)["probed"] is False and len(script.requests) == 1


@pytest.mark.parametrize(
    "answer, fields, message",
    [
        (lambda t: (200, reply([[1.0] * 6])), {"dim": 4}, r"embedding\.dim: .* answers 6-dimensional vectors .* configured 4"),
        ((404, {"error": "model 'm' not found"}), {}, r"embedding\.model: the probe request was refused.*HTTP 404"),
        ((401, {"error": "bad key"}), {}, r"embedding\.api_key_env: .*credentials"),
        (lambda t: (200, reply([[math.nan, 1.0]])), {}, r"embedding\.model: .*not finite"),
    ],
    ids=["configured-dim-differs", "unknown-model", "bad-key", "nan"],
)
def test_a_failed_probe_is_a_config_error_naming_the_field(answer, fields, message):
    with pytest.raises(ConfigError, match=message):
        preflight_embedder(embedder(Scripted(answer), **fields))


def test_an_endpoint_that_does_not_answer_the_probe_names_base_url():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ConfigError, match=r"embedding\.base_url: no OpenAI-compatible embeddings endpoint answers"):
        embedder(refuse).dim


def test_identity_is_the_model_and_dimension_not_the_address():
    here = OpenAICompatEmbedder(config(dim=8))
    moved = OpenAICompatEmbedder(config(dim=8, base_url="http://127.0.0.1:10/v1"))
    other_dim = OpenAICompatEmbedder(config(dim=16))
    asked = OpenAICompatEmbedder(config(dim=8, request_dimensions=True))
    assert here.slug == moved.slug == "m__openai_d8" and here.weights_sha256 == moved.weights_sha256
    assert other_dim.slug == "m__openai_d16" and other_dim.weights_sha256 != here.weights_sha256
    assert asked.weights_sha256 != here.weights_sha256
    assert here.name == "openai:m" and here.endpoint["base_url"] == URL


def test_request_dimensions_sends_the_dimension():
    bodies = []
    script = Scripted()

    def record(request):
        bodies.append(json.loads(request.content))
        return script(request)

    embedder(record, dim=4, request_dimensions=True).encode(["a"])
    assert bodies[0] == {"model": "m", "input": ["a"], "dimensions": 4}


def test_the_token_counter_uses_the_configured_limit(tmp_path):
    counted = OpenAICompatEmbedder(config(max_tokens=100)).counter
    assert counted.max_tokens == 98  # [CLS] and [SEP] of the packaged WordPiece tokenizer come off
    with pytest.raises(ConfigError, match=r"embedding\.tokenizer: no tokenizer.json"):
        OpenAICompatEmbedder(config(tokenizer=str(tmp_path))).counter
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"embedding\.tokenizer: .* is not a tokenizers JSON file"):
        OpenAICompatEmbedder(config(tokenizer=str(tmp_path))).counter


# -- a real server on 127.0.0.1 -----------------------------------------------------------------------------
def server_embedder(server: EmbeddingServer, **fields) -> OpenAICompatEmbedder:
    return OpenAICompatEmbedder(config(base_url=server.base_url, model=server.model, **fields))


def test_real_server_batches_retries_and_checks_the_dimension():
    with EmbeddingServer(dim=24) as server:
        client = server_embedder(server, batch_size=5, concurrency=2)
        assert client.dim == 24 and server.batches == [1]  # the probe
        texts = [f"document number {i} about retries" for i in range(12)]
        vectors = client.encode(texts)
        assert sorted(server.batches[1:]) == [2, 5, 5] and server.max_in_flight <= 2
        expected = np.array(server.fake.encode(texts))
        assert np.allclose(vectors, expected, atol=1e-5), "normalized, in input order although listed reversed"

        server.fail(2, 503)
        attempts = server.attempts
        assert np.allclose(client.encode(texts[:3]), expected[:3], atol=1e-5)
        assert server.attempts - attempts == 3

        server.wrong_dim = 30
        with pytest.raises(EmbeddingReplyError, match="dimension 30, expected 24"):
            client.encode(texts[:2])
        server.wrong_dim, server.nan = None, True
        with pytest.raises(EmbeddingReplyError, match="not finite"):
            client.encode(texts[:2])
        server.nan, server.drop_one = False, True
        with pytest.raises(EmbeddingReplyError, match="1 vectors for 2 texts"):
            client.encode(texts[:2])


def test_real_server_key_and_model_errors_at_the_probe(monkeypatch):
    with EmbeddingServer(require_key="sk-live") as server:
        with pytest.raises(ConfigError, match=r"embedding\.api_key_env"):
            server_embedder(server).preflight()
        monkeypatch.setenv("OPENAI_API_KEY", "sk-live")
        embedding_endpoint.forget_probes()
        assert server_embedder(server).preflight()["dim"] == 24
        with pytest.raises(ConfigError, match=r"embedding\.model: .*HTTP 404"):
            OpenAICompatEmbedder(config(base_url=server.base_url, model="other")).preflight()


# -- the probe vector guards the table -----------------------------------------------------------------------
class Probed:
    name = "openai:m"

    def __init__(self, vector):
        self.probe_vector = np.asarray(vector, dtype=np.float32)


def test_check_probe_records_then_refuses_other_weights_under_the_same_id(tmp_path):
    from ragloop.tasks.indexing import EmbedderMismatch, check_probe
    from ragloop.tasks.storage import Lake

    lake = Lake(str(tmp_path / "lake"))
    assert check_probe(lake, "chunks__m__openai_d3", Probed([1, 0, 0]), record=False) is None
    assert lake.read_ref("table__chunks__m__openai_d3__probe") is None, "a reader records nothing"
    assert check_probe(lake, "chunks__m__openai_d3", Probed([1, 0, 0])) is None
    assert check_probe(lake, "chunks__m__openai_d3", Probed([0.9999, 0.01, 0])) > 0.99, "float noise passes"
    with pytest.raises(EmbedderMismatch, match=r"answers the probe text differently .*cosine 0\.707"):
        check_probe(lake, "chunks__m__openai_d3", Probed([0.7071, 0.7071, 0]))
    assert check_probe(lake, "chunks__other", object()) is None, "a local model has no probe"


def test_the_probe_vector_is_the_endpoints_unit_vector_for_the_probe_text():
    client = embedder(Scripted(lambda texts: (200, reply([[3.0, 4.0]]))))
    assert np.allclose(client.probe_vector, [0.6, 0.8]) and client.dim == 2
