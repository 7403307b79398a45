"""Retriever on a real LanceDB table in tmp_path (fake embedder): user text is text, ties are stable,
a failing query fails alone."""

from __future__ import annotations

import pytest

from ragloop.tasks import chain, indexing
from ragloop.tasks.chunking import Chunker
from ragloop.tasks.ingestion import content_sha256
from ragloop.tasks.retrieval import Retriever
from ragloop.tasks.schemas import Document
from ragloop.tasks.settings import ChunkingConfig, IndexConfig
from ragloop.tasks.storage import Lake

TEXTS = {
    "spam.md": "What spam filter scores outbound mail? The outbound filter does.",
    "docks.md": "The harbour station has twelve docks and two chargers.",
    "copy-b.md": "Identical passage copied into two documents.",
    "copy-a.md": "Identical passage copied into two documents.",
}


def _doc(doc_id: str, text: str) -> Document:
    return Document(doc_id=doc_id, source_uri=doc_id, content_sha256=content_sha256(text, doc_id, {}),
                    text=text, title=doc_id, mime="text/markdown", bytes=len(text))


@pytest.fixture
def retriever(lake_dir, fake_embedder):
    lake = Lake(str(lake_dir))
    store = indexing.ChunkStore(lake, fake_embedder)
    chunker = Chunker(ChunkingConfig(max_tokens=32, overlap_tokens=0), fake_embedder.counter)
    chunks = chunker.chunk_documents([_doc(d, t) for d, t in TEXTS.items()])
    embedded = indexing.embed_missing(chunks, store, fake_embedder)
    store.commit_run([indexing.chunk_rows(chunks, embedded.vectors, store.dim)], [])
    store.refresh_indexes(IndexConfig())
    return Retriever(lake, store.name, store.version, fake_embedder)


QUERY_SYNTAX = [
    '"What spam filter scores outbound mail?"',
    "spam AND NOT mail OR filter",
    "title:spam +filter -mail (outbound) [mail] spam^2 filter~ spa*",
    '"unbalanced quote spam',
]


@pytest.mark.parametrize("mode", ["fts", "hybrid"])
@pytest.mark.parametrize("question", QUERY_SYNTAX)
def test_question_with_query_syntax_is_searched_as_plain_text(retriever, mode, question):
    [(hits, _, error)] = retriever.search_each([question], mode, 2)
    assert error is None and hits[0].doc_id == "spam.md"


@pytest.mark.parametrize("mode", ["fts", "hybrid"])
@pytest.mark.parametrize("question", ['" " ( ) * ~', "", "AND OR NOT"])
def test_question_with_no_searchable_word_does_not_fail(retriever, mode, question):
    [(hits, _, error)] = retriever.search_each([question], mode, 2)
    assert error is None and (mode == "hybrid" or question == "AND OR NOT" or hits == [])


def test_identical_texts_tie_broken_by_chunk_id(retriever):
    for mode in ("vector", "fts", "hybrid"):
        [(hits, _, _)] = retriever.search_each(["Identical passage copied into two documents."], mode, 2)
        assert {h.doc_id for h in hits} == {"copy-a.md", "copy-b.md"}
        assert hits[0].score == hits[1].score and hits[0].chunk_id < hits[1].chunk_id, mode
        [(top, _, _)] = retriever.search_each(["Identical passage copied into two documents."], mode, 1)
        assert top[0].chunk_id == hits[0].chunk_id, "the cut-off keeps the same copy every time"


def test_a_query_whose_search_fails_fails_alone(retriever, monkeypatch):
    real = retriever._search

    def flaky(query, vector, mode, k):
        if "docks" in query:
            raise RuntimeError("lance: boom")
        return real(query, vector, mode, k)

    monkeypatch.setattr(retriever, "_search", flaky)
    results = chain.run_retrieval(retriever, ["q1", "q2"], ["how many docks?", "spam filter"], "fts", 2)
    assert results[0].retrieval_failed and "RuntimeError: lance: boom" in results[0].error
    assert results[0].traces[0]["error"] and results[0].hits == []
    assert not results[1].retrieval_failed and results[1].hits[0].doc_id == "spam.md"


@pytest.mark.parametrize("fusion", [("rrf", 60), ("rrf", 1), ("linear", 0.0), ("linear", 1.0)])
def test_hybrid_fusion_settings_rank_the_same_hits(retriever, fusion):
    """Every fusion returns the matching chunk among the hybrid hits; linear at weight 1 orders by the vector leg."""
    retriever.fusion = fusion
    [(hits, _, error)] = retriever.search_each(["harbour station docks"], "hybrid", 4)
    assert error is None and "docks.md" in [h.doc_id for h in hits]
    if fusion == ("linear", 1.0):
        [(vector_hits, _, _)] = retriever.search_each(["harbour station docks"], "vector", 4)
        assert hits[0].doc_id == vector_hits[0].doc_id


def test_unknown_fusion_is_refused():
    from ragloop.tasks.retrieval import fusion_reranker

    with pytest.raises(ValueError, match="unknown hybrid fusion 'max'"):
        fusion_reranker("max", 1)


def test_fusion_enters_the_chain_and_cache_key_only_when_not_the_default():
    from ragloop.tasks import eval_run
    from ragloop.tasks.settings import EvalConfig

    models = eval_run.ChainModels(rewrite=None, answer=None)
    default = eval_run.describe_chain(EvalConfig(), models, True)
    assert "fusion" not in default
    assert eval_run.describe_chain(EvalConfig(rrf_k=10), models, True)["fusion"] == ["rrf", 10]
    assert eval_run.describe_chain(EvalConfig(fusion="linear"), models, True)["fusion"] == ["linear", 0.7]
    assert "fusion" not in eval_run.describe_chain(EvalConfig(retrieval="vector", rrf_k=10), models, True)
    assert eval_run._default_eval_fields(EvalConfig()) == {"target", "ann", "fusion", "rrf_k", "fusion_weight"}
    assert eval_run._default_eval_fields(EvalConfig(rrf_k=10)) == {"target", "ann", "fusion_weight"}
