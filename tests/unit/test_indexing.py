"""ChunkStore and the incremental-index helpers on a real LanceDB table in tmp_path (fake embedder)."""

from __future__ import annotations

import json

import pytest

from ragloop.tasks import indexing
from ragloop.tasks.chunking import Chunker
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.ingestion import content_sha256
from ragloop.tasks.schemas import Document
from ragloop.tasks.settings import AnnIndexConfig, ChunkingConfig, ConfigError, IndexConfig
from ragloop.tasks.storage import Lake


def _doc(doc_id: str, text: str) -> Document:
    return Document(doc_id=doc_id, source_uri=doc_id, content_sha256=content_sha256(text, doc_id, {}),
                    text=text, title=doc_id, mime="text/markdown", bytes=len(text))


@pytest.fixture
def store(lake_dir, fake_embedder):
    return indexing.ChunkStore(Lake(str(lake_dir)), fake_embedder)


@pytest.fixture
def chunker(fake_embedder):
    return Chunker(ChunkingConfig(max_tokens=16, overlap_tokens=0), fake_embedder.counter)


def _write(store, chunker, embedder, docs):
    chunks = chunker.chunk_documents(docs)
    embedded = indexing.embed_missing(chunks, store, embedder)
    store.replace_documents(indexing.chunk_rows(chunks, embedded.vectors, store.dim), [d.doc_id for d in docs])
    return chunks, embedded


def _rows(store):
    return store.table.to_arrow().drop_columns(["vector"]).to_pylist()


def test_replace_documents_is_one_commit_and_leaves_other_documents_alone(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc("a.md", "alpha " * 40), _doc("b.md", "beta " * 40)])
    b_rows = sorted((r["chunk_id"], r["text"]) for r in _rows(store) if r["doc_id"] == "b.md")
    version = store.version
    _write(store, chunker, fake_embedder, [_doc("a.md", "gamma words here")])
    assert store.version == version + 1
    rows = _rows(store)
    assert [r["text"] for r in rows if r["doc_id"] == "a.md"] == ["gamma words here"]
    assert sorted((r["chunk_id"], r["text"]) for r in rows if r["doc_id"] == "b.md") == b_rows


def test_embed_missing_reuses_vectors_of_identical_text_in_other_documents(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc("a.md", "shared sentence about docks")])
    fake_embedder.encoded.clear()
    chunks, embedded = _write(store, chunker, fake_embedder, [_doc("b.md", "shared sentence about docks")])
    assert embedded.encoded == 0 and embedded.reused == 1 and fake_embedder.encoded == []
    assert len({r["chunk_id"] for r in _rows(store)}) == 2, "same text in two documents is two chunks"


def test_embed_missing_encodes_each_new_text_once(store, chunker, fake_embedder):
    docs = [_doc("a.md", "repeat me please"), _doc("b.md", "repeat me please"), _doc("c.md", "unique text")]
    _, embedded = _write(store, chunker, fake_embedder, docs)
    assert embedded.encoded == 2 and sorted(fake_embedder.encoded) == ["repeat me please", "unique text"]


def test_quotes_in_document_ids_are_escaped(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc("o'brien.md", "first text"), _doc("x.md", "other")])
    _write(store, chunker, fake_embedder, [_doc("o'brien.md", "second text")])
    assert {r["doc_id"]: r["text"] for r in _rows(store)} == {"o'brien.md": "second text", "x.md": "other"}
    assert store.delete_documents(["o'brien.md"]) == 1
    assert [r["doc_id"] for r in _rows(store)] == ["x.md"]


def test_plan_index_finds_new_changed_and_deleted_documents(lake_dir, store, chunker, fake_embedder):
    lake = Lake(str(lake_dir))
    old = [_doc("keep.md", "same"), _doc("edit.md", "before"), _doc("gone.md", "bye")]
    _write(store, chunker, fake_embedder, old)
    new = [_doc("keep.md", "same"), _doc("edit.md", "after"), _doc("add.md", "hello")]
    writer = lake.snapshot_writer()
    writer.write([{**d.__dict__, "metadata": "{}", "ingested_at": None} for d in new])
    writer.finish("snap1")
    plan = indexing.plan_index(lake, "snap1", store, chunker.hash)
    assert plan.to_index == {"edit.md", "add.md"} and plan.to_delete == ["gone.md"] and plan.current == 1
    other = Chunker(ChunkingConfig(strategy="recursive", max_tokens=16, overlap_tokens=0), fake_embedder.counter)
    assert indexing.plan_index(lake, "snap1", store, other.hash).to_index == {"keep.md", "edit.md", "add.md"}


def test_refresh_indexes_builds_fts_always_and_ann_only_above_the_threshold(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc(f"d{i}.md", f"station {i} has docks and chargers") for i in range(12)])
    small = store.refresh_indexes(IndexConfig(ann_min_rows=1000))
    assert small["fts"] == "created" and small["ann"].startswith("none")
    hits = store.table.search("chargers", query_type="fts").limit(3).to_arrow()
    assert hits.num_rows == 3
    big = store.refresh_indexes(IndexConfig(ann_min_rows=10))
    assert big["ann"] == "created (hnsw_sq m=20 ef_construction=300 partitions=auto)" and big["fts"] == "kept"
    assert {i.name for i in store.table.list_indices()} == {"text_idx", "vector_idx"}
    assert store.refresh_indexes(IndexConfig(ann_min_rows=10))["ann"].startswith("present (hnsw_sq m=20")


def test_a_changed_ann_setting_rebuilds_the_index_and_the_default_keeps_an_older_one(store, chunker, fake_embedder):
    """index.ann is recorded with the index (ann__ ref); an index built before it existed counts as the
    default HNSW-SQ, so upgrading rebuilds nothing."""
    from lancedb.index import HnswSq

    _write(store, chunker, fake_embedder, [_doc(f"d{i}.md", f"station {i} has docks and chargers") for i in range(12)])
    store.table.create_index("vector", config=HnswSq(distance_type="cosine"), name="vector_idx")  # as before index.ann
    default = IndexConfig(ann_min_rows=10, fts=False)
    assert store.ann_built() == indexing.LEGACY_ANN and not store.indexes_stale(default)
    assert store.refresh_indexes(default)["ann"] == "present (hnsw_sq m=20 ef_construction=300 partitions=auto)"
    narrow = IndexConfig(ann_min_rows=10, fts=False, ann=AnnIndexConfig(m=8, ef_construction=50))
    assert store.indexes_stale(narrow), "a changed index.ann is work for the next run"
    action = store.refresh_indexes(narrow)["ann"]
    assert action == ("rebuilt (hnsw_sq m=20 ef_construction=300 partitions=auto -> "
                      "hnsw_sq m=8 ef_construction=50 partitions=auto)")
    [vector_idx] = [i for i in store.table.list_indices() if i.name == "vector_idx"]
    assert vector_idx.index_details["hnsw"]["max_connections"] == 8
    assert not store.indexes_stale(narrow) and store.refresh_indexes(narrow)["ann"].startswith("present (hnsw_sq m=8")
    pq = IndexConfig(ann_min_rows=10, fts=False, ann=AnnIndexConfig(type="ivf_pq", num_partitions=1, num_sub_vectors=4))
    assert store.refresh_indexes(pq)["ann"].endswith("-> ivf_pq num_sub_vectors=4 partitions=1)")
    assert store.ann_built() == {"type": "ivf_pq", "num_partitions": 1, "num_sub_vectors": 4}


def test_pq_sub_vectors_must_divide_the_dimension():
    with pytest.raises(ConfigError, match="index.ann.num_sub_vectors: 5 does not divide the embedding dimension 32"):
        indexing.ann_index(AnnIndexConfig(type="ivf_pq", num_sub_vectors=5), 32)
    assert type(indexing.ann_index(AnnIndexConfig(type="ivf_pq", num_sub_vectors=8), 32)).__name__ == "IvfPq"


def test_a_table_refuses_vectors_from_other_weights(lake_dir, store):
    with pytest.raises(indexing.EmbedderMismatch, match="was built with"):
        indexing.ChunkStore(Lake(str(lake_dir)), HashEmbedder(dim=32, name="hash-fake", max_tokens=64).__class__(dim=16))


def test_tag_marks_the_current_version(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc("a.md", "text")])
    store.tag("run-1")
    assert store.table.tags.list()["run-1"]["version"] == store.version


def test_commit_run_writes_every_batch_in_one_commit_with_the_deletes(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc("gone.md", "old words"), _doc("edit.md", "before the edit")])
    version = store.version
    batches = []
    for doc in [_doc("edit.md", "after the edit"), _doc("new.md", "brand new text")]:
        chunks = chunker.chunk_documents([doc])
        batches.append(indexing.chunk_rows(chunks, indexing.embed_missing(chunks, store, fake_embedder).vectors, store.dim))
    assert store.commit_run(iter(batches), ["edit.md", "gone.md"]) == 2
    assert store.version == version + 1, "upserts of every batch and the deletes are one commit"
    assert sorted((r["doc_id"], r["text"]) for r in _rows(store)) == [("edit.md", "after the edit"), ("new.md", "brand new text")]


def test_commit_run_that_fails_midway_commits_nothing(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc("gone.md", "old words"), _doc("edit.md", "before the edit")])
    version, before = store.version, _rows(store)

    def batches():
        chunks = chunker.chunk_documents([_doc("edit.md", "after the edit")])
        yield indexing.chunk_rows(chunks, indexing.embed_missing(chunks, store, fake_embedder).vectors, store.dim)
        raise RuntimeError("killed while embedding the second batch")

    with pytest.raises(RuntimeError, match="killed while embedding"):
        store.commit_run(batches(), ["edit.md", "gone.md"])
    assert store.version == version and _rows(store) == before, "a failed run leaves the previous state whole"


def _batches_of(store, chunker, fake_embedder, docs):
    for doc in docs:
        chunks = chunker.chunk_documents([doc])
        yield indexing.chunk_rows(chunks, indexing.embed_missing(chunks, store, fake_embedder).vectors, store.dim)


def test_an_append_streams_every_batch_into_one_commit_and_keeps_other_rows(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc("old.md", "old words stay")])
    version = store.version
    docs = [_doc(f"new{i}.md", f"brand new text number {i}") for i in range(3)]
    assert store.commit_run(_batches_of(store, chunker, fake_embedder, docs), [], append=True) == 0
    assert store.version == version + 1, "every batch in one commit"
    assert sorted(r["doc_id"] for r in _rows(store)) == ["new0.md", "new1.md", "new2.md", "old.md"]


def test_an_append_that_fails_midway_commits_nothing(store, chunker, fake_embedder):
    _write(store, chunker, fake_embedder, [_doc("old.md", "old words stay")])
    version, before = store.version, _rows(store)

    def batches():
        yield from _batches_of(store, chunker, fake_embedder, [_doc("new.md", "written to a data file")])
        raise RuntimeError("killed while embedding the second batch")

    with pytest.raises(RuntimeError, match="killed while embedding"):
        store.commit_run(batches(), [], append=True)
    assert store.version == version and _rows(store) == before, "the streamed data files are not in any version"


def test_an_append_refuses_deletes(store, chunker, fake_embedder):
    with pytest.raises(ValueError, match="doc_ids must be empty"):
        store.commit_run(iter([]), ["gone.md"], append=True)


def test_embed_missing_reuses_vectors_encoded_earlier_in_the_same_run(store, chunker, fake_embedder):
    fresh = indexing.FreshVectors(max_entries=10)
    first = chunker.chunk_documents([_doc("a.md", "a footer every page repeats")])
    indexing.embed_missing(first, store, fake_embedder, fresh)
    fake_embedder.encoded.clear()
    again = indexing.embed_missing(chunker.chunk_documents([_doc("b.md", "a footer every page repeats")]), store, fake_embedder, fresh)
    assert again.encoded == 0 and fake_embedder.encoded == [], "not committed yet, but already encoded"


def test_document_metadata_reaches_the_chunk_rows(store, chunker, fake_embedder):
    chunks = chunker.chunk_documents([_doc("a.md", "front matter travels")])
    rows = indexing.chunk_rows(chunks, indexing.embed_missing(chunks, store, fake_embedder).vectors, store.dim,
                               {"a.md": {"front_matter": {"lang": "en", "team": "ops"}}})
    store.commit_run([rows], [])
    meta = json.loads(_rows(store)[0]["metadata"])
    assert meta["front_matter"] == {"lang": "en", "team": "ops"} and meta["char_start"] == 0
    hits = store.scan(["doc_id"], "metadata LIKE '%\"team\": \"ops\"%'")
    assert hits["doc_id"].to_pylist() == ["a.md"], "retrieval can filter on it"


@pytest.mark.parametrize("texts, tokenizer", [
    (["The harbour station has twelve docks.", "Le café du port ouvre à sept heures."], "simple"),
    (["東京駅には自転車の駐輪場が二十あります。", "The harbour station has twelve docks."], "icu"),
    (["北京的地铁站每天早上六点开门。"], "icu"),
])
def test_fts_tokenizer_auto_segments_scripts_written_without_spaces(store, chunker, fake_embedder, texts, tokenizer):
    _write(store, chunker, fake_embedder, [_doc(f"d{i}.md", t) for i, t in enumerate(texts)])
    actions = store.refresh_indexes(IndexConfig())
    assert actions["fts"] == "created" and actions["fts_tokenizer"].startswith(tokenizer)


def test_icu_full_text_index_finds_cjk_words_and_keeps_accent_folding(store, chunker, fake_embedder):
    from ragloop.tasks.retrieval import plain_text_query

    _write(store, chunker, fake_embedder, [_doc("ja.md", "東京駅には自転車の駐輪場が二十あります。"),
                                           _doc("zh.md", "北京的地铁站每天早上六点开门。"),
                                           _doc("fr.md", "Le café du port ouvre à sept heures.")])
    store.refresh_indexes(IndexConfig())

    def top(question):
        rows = store.table.search(plain_text_query(question), query_type="fts").limit(1).select(["doc_id"]).to_list()
        return rows[0]["doc_id"] if rows else None

    assert top("東京駅の駐輪場はいくつ？") == "ja.md"
    assert top("地铁站几点开门？") == "zh.md"
    assert top("cafe") == "fr.md"
    # A table that gains such text later gets its index rebuilt with the tokenizer it now needs.
    assert store.refresh_indexes(IndexConfig(fts_tokenizer="simple"))["fts"] == "rebuilt (icu -> simple)"


def test_unspaced_share_counts_letters_as_isalpha_does():
    import random

    rng = random.Random(7)
    texts = ["東京駅には自転車の駐輪場が二十あります。", "café Ωμέγα ñ 123 _x_ ǅ ʰ", "", "plain ASCII text, 42 docks."]
    texts += ["".join(chr(rng.randrange(0x20, 0x20000)) for _ in range(200)).encode("utf-8", "ignore").decode() + "ก"
              for _ in range(50)]
    for sample in (texts, texts[:2], texts[3:4]):
        letters = sum(1 for t in sample for ch in t if ch.isalpha())
        unspaced = sum(len(indexing._UNSPACED.findall(t)) for t in sample)
        assert indexing.unspaced_share(sample) == (unspaced / letters if letters and unspaced else 0.0)
