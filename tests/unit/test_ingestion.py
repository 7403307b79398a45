"""Ingestion: loaders per format, quarantine reasons, text normalization and the snapshot diff."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest

from ragloop.tasks import ingestion
from ragloop.tasks.ingestion import (
    build_snapshot,
    decode_bytes,
    iter_sources,
    normalize_text,
    snapshot_id_of,
    source_roots,
    unique_sources,
)
from ragloop.tasks.schemas import Document, Quarantined, QuarantineReason
from ragloop.tasks.settings import IngestConfig
from ragloop.tasks.storage import Lake
from tests.conftest import write_files

GOOD_MD = "# Good\n\nA good document that must survive its bad neighbours.\n"

HTML_PAGE = """<!doctype html>
<html><head><title>Tide Tables</title></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li>
<li><a href="/contact">Contact</a></li></ul></nav>
<main><article>
<h1>Tide Tables</h1>
<p>The spring tide arrives twice a month when the sun and moon align, producing the largest
tidal range of the lunar cycle in coastal waters.</p>
<h2>Neap tides</h2>
<p>Neap tides occur when the sun and moon are at right angles, and the range between high and
low water is at its smallest for the month.</p>
</article></main>
<footer><p>Copyright 2024 Tidepool Inc. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
</body></html>
"""


def make_pdf(text: str, title: str | None = None) -> bytes:
    """A small deterministic PDF (fixed creation date) with one page of text."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    if title:
        pdf.set_title(title)
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(w=0, text=text)
    return bytes(pdf.output())


def ingest(root: Path, **config) -> tuple[dict[str, Document], dict[str, Quarantined]]:
    """Documents by doc_id and quarantine records by path relative to root."""
    docs: dict[str, Document] = {}
    quarantined: dict[str, Quarantined] = {}
    for item in iter_sources([str(root)], IngestConfig(**config)):
        if isinstance(item, Quarantined):
            quarantined[Path(item.source_uri.split('#', 1)[0]).relative_to(root.resolve()).as_posix()] = item
        else:
            assert item.doc_id not in docs, f"duplicate doc_id {item.doc_id}"
            docs[item.doc_id] = item
    return docs, quarantined


def fail_reading(monkeypatch, name: str, exc: Exception) -> None:
    """Make Path.read_bytes raise for one file name (tests run as root, so chmod cannot)."""
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == name:
            raise exc
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


# -- loaders ---------------------------------------------------------------------------------------
def test_load_markdown_front_matter_gives_metadata_and_title(tmp_path):
    root = write_files(tmp_path / "src", {
        "guide/kelp.md": "---\ntitle: Kelp Forests\ntags: [algae, coast]\ndate: 2024-01-02\n---\n"
                         "# Heading Not Title\n\nKelp grows fast.\n",
    })
    docs, quarantined = ingest(root)
    assert not quarantined
    doc = docs["guide/kelp.md"]
    assert doc.title == "Kelp Forests"
    assert doc.metadata == {"front_matter": {"title": "Kelp Forests", "tags": ["algae", "coast"], "date": "2024-01-02"}}
    assert doc.text == "# Heading Not Title\n\nKelp grows fast."  # front matter stripped from the text
    assert doc.mime == "text/markdown"
    assert doc.source_uri == str((root / "guide/kelp.md").resolve())


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Intro line\n\n# First H1\n\nbody\n\n# Second H1\n", "First H1"),
        ("## Only an H2\n\nbody\n", "notes"),  # no H1: the file stem
        ("no headings at all\n", "notes"),
    ],
)
def test_load_markdown_title_from_first_h1_else_stem(tmp_path, text, title):
    root = write_files(tmp_path / "src", {"notes.md": text})
    docs, _ = ingest(root)
    assert docs["notes.md"].title == title
    assert docs["notes.md"].metadata == {}


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("w " * 3000 + "\n# Deep\n", "Deep"),  # past the 4 KB prefix: the whole text is parsed
        ("w " * 2044 + "\n\nTitle\n===\n" + "w " * 3000, "Title"),  # setext underline just past the prefix
        ("```\n" + "w " * 3000 + "\n# not a heading\n```\n# Real\n", "Real"),  # fence opened in the prefix
        ("# First\n" + "w " * 3000 + "\n# Second\n", "First"),
    ],
)
def test_first_heading_is_the_same_with_or_without_the_prefix_shortcut(text, title):
    from markdown_it import MarkdownIt

    assert ingestion._first_heading(text) == title
    tokens = MarkdownIt("commonmark").disable(["inline", "text_join"]).parse(text)
    first = next(tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h1")
    assert first == title


def test_load_markdown_title_ignores_comment_in_code_fence(tmp_path):
    root = write_files(tmp_path / "src", {
        "setup.md": "Install it:\n\n```bash\n# install deps\npip install x\n```\n\n# Real Title\n\nbody\n",
    })
    docs, _ = ingest(root)
    assert docs["setup.md"].title == "Real Title"


def test_load_text_plain(tmp_path):
    root = write_files(tmp_path / "src", {"tides.txt": "\ufeffHigh water\r\nLow water\r\n\r\n"})
    docs, _ = ingest(root)
    doc = docs["tides.txt"]
    assert (doc.text, doc.title, doc.mime) == ("High water\nLow water", "tides", "text/plain")
    assert doc.bytes == len("\ufeffHigh water\r\nLow water\r\n\r\n".encode())


def test_load_html_keeps_headings_drops_boilerplate(tmp_path):
    root = write_files(tmp_path / "src", {"page.html": HTML_PAGE})
    docs, quarantined = ingest(root)
    assert not quarantined
    doc = docs["page.html"]
    lines = doc.text.splitlines()
    assert "# Tide Tables" in lines
    assert "## Neap tides" in lines
    assert "spring tide arrives twice a month" in doc.text
    for boilerplate in ("About us", "Contact", "Copyright", "Privacy policy"):
        assert boilerplate not in doc.text
    assert doc.title == "Tide Tables"
    assert doc.mime == "text/html"


def test_load_pdf_extracts_text_and_title(tmp_path):
    root = write_files(tmp_path / "src", {
        "barnacles.pdf": make_pdf("Barnacles filter plankton at high tide.", title="Barnacle Notes"),
        "untitled.pdf": make_pdf("Limpets cling to rocks."),
    })
    docs, quarantined = ingest(root)
    assert not quarantined
    pdf = docs["barnacles.pdf"]
    assert "Barnacles filter plankton at high tide." in pdf.text
    assert pdf.title == "Barnacle Notes"
    assert pdf.metadata == {"pages": 1}
    assert pdf.mime == "application/pdf"
    assert docs["untitled.pdf"].title == "untitled"


def test_load_table_csv_with_sidecar_one_document_per_row(tmp_path):
    root = write_files(tmp_path / "src", {
        "data/species.csv": "id,name,depth\n7,Kelp,5\n9,Urchin,12\n",
        "data/species.schema.yaml": "table: species\ndescription: Tidepool species\nid_column: id\n"
                                    "title_column: name\ncolumns:\n  depth: depth in metres\n  name: common name\n",
    })
    docs, quarantined = ingest(root)
    assert not quarantined
    assert sorted(docs) == ["data/species.csv#7", "data/species.csv#9"]  # the sidecar is not a document
    doc = docs["data/species.csv#9"]
    assert doc.text.splitlines() == [
        "species: Tidepool species",
        "id: 9",
        "name (common name): Urchin",
        "depth (depth in metres): 12",
    ]
    assert doc.title == "Urchin"
    assert doc.metadata == {
        "table": "species",
        "table_description": "Tidepool species",
        "columns": {"depth": "depth in metres", "name": "common name"},
        "row": {"id": 9, "name": "Urchin", "depth": 12},
        "id_column": "id",  # the row's identity, carried by every chunk of a split row
        "row_key": "9",
    }
    assert doc.source_uri.endswith("data/species.csv#9")


def test_load_table_jsonl_without_sidecar_keys_rows_by_index(tmp_path):
    root = write_files(tmp_path / "src", {"rows.jsonl": '{"k": "a", "v": 1}\n{"k": "b", "v": 2}\n'})
    docs, _ = ingest(root)
    assert sorted(docs) == ["rows.jsonl#row=0", "rows.jsonl#row=1"]
    doc = docs["rows.jsonl#row=1"]
    assert doc.text == "rows\nk: b\nv: 2"
    assert doc.title == "rows row=1"
    assert doc.metadata["row"] == {"k": "b", "v": 2}
    assert doc.mime == "application/x-table-row"


def test_load_table_duplicate_id_is_parse_error(tmp_path):
    root = write_files(tmp_path / "src", {
        "t.csv": "id,v\n1,a\n1,b\n",
        "t.schema.yaml": "id_column: id\n",
    })
    docs, quarantined = ingest(root)
    assert not docs
    assert quarantined["t.csv"].reason is QuarantineReason.parse_error
    assert "duplicate id value '1'" in quarantined["t.csv"].detail


def test_iter_beir_corpus_id_and_title_plus_text(tmp_path):
    root = write_files(tmp_path / "beir", {
        "corpus.jsonl": json.dumps({"_id": "d1", "title": "Kelp", "text": "Kelp grows fast."}) + "\n"
                        + json.dumps({"_id": "d2", "title": "", "text": "Urchins graze."}) + "\n\n"
                        + json.dumps({"_id": "d3", "title": "", "text": "  "}) + "\n",
    })
    docs, quarantined = ingest(root)
    assert sorted(docs) == ["d1", "d2"]
    assert docs["d1"].text == "Kelp Kelp grows fast."
    assert docs["d1"].title == "Kelp"
    assert docs["d2"].text == "Urchins graze."
    assert docs["d1"].source_uri.endswith("corpus.jsonl#line=1")
    assert [q.reason for q in quarantined.values()] == [QuarantineReason.empty]


def test_decode_bytes_utf16_with_bom():
    assert decode_bytes("h\u00e9llo".encode("utf-16")) == "h\u00e9llo"


def test_discover_skips_hidden_unless_included(tmp_path):
    root = write_files(tmp_path / "src", {"a.txt": "visible", ".hidden.txt": "h", ".git/config.txt": "g"})
    assert sorted(ingest(root)[0]) == ["a.txt"]
    assert sorted(ingest(root, include_hidden=True)[0]) == [".git/config.txt", ".hidden.txt", "a.txt"]


# -- quarantine --------------------------------------------------------------------------------------
def _symlink_outside(root: Path, tmp_path: Path, monkeypatch) -> None:
    outside = write_files(tmp_path / "outside", {"secret.txt": "not yours"})
    os.symlink(outside / "secret.txt", root / "bad.txt")


def _unreadable(root: Path, tmp_path: Path, monkeypatch) -> None:
    (root / "bad.txt").write_text("fine text, but the read fails", encoding="utf-8")
    fail_reading(monkeypatch, "bad.txt", PermissionError(13, "Permission denied"))


QUARANTINE_CASES = [
    # (id, bad file name, content or setup callable, ingest config, reason, detail pattern)
    ("binary", "bad.txt", b"abc\x00def", {}, QuarantineReason.binary, "NUL bytes"),
    ("empty", "bad.txt", b"", {}, QuarantineReason.empty, "0 bytes"),
    ("empty_after_extraction", "bad.md", "  \n\n\t\n", {}, QuarantineReason.empty, "no text after extraction"),
    ("too_large", "bad.txt", "x" * 500, {"max_file_bytes": 200}, QuarantineReason.too_large,
     "500 bytes > ingest.max_file_bytes=200"),
    ("decode_error", "bad.txt", b"caf\xe9 au lait", {}, QuarantineReason.decode_error, "not valid UTF-8 at byte 3"),
    ("truncated_pdf", "bad.pdf", make_pdf("Barnacles filter plankton.")[:500], {},
     QuarantineReason.parse_error, "pdf: "),
    ("not_a_pdf", "bad.pdf", b"hello, I am text", {}, QuarantineReason.parse_error, "no %PDF- header"),
    ("ragged_csv", "bad.csv", "a,b\n1,2\n3,4,5\n", {}, QuarantineReason.parse_error, "CSV parse error"),
    ("sidecar_absent_column", "bad.csv", lambda root, tmp_path, mp: write_files(root, {
        "bad.csv": "a,b\n1,2\n", "bad.schema.yaml": "columns:\n  zz: not here\n"}), {},
     QuarantineReason.parse_error, r"absent columns \['zz'\]"),
    ("sidecar_unknown_key", "bad.csv", lambda root, tmp_path, mp: write_files(root, {
        "bad.csv": "a,b\n1,2\n", "bad.schema.yaml": "colums:\n  a: typo\n"}), {},
     QuarantineReason.parse_error, "sidecar bad.schema.yaml"),
    ("malformed_front_matter", "bad.md", "---\ntitle: [unclosed\n---\nbody\n", {},
     QuarantineReason.parse_error, "front matter"),
    ("outside_root", "bad.txt", _symlink_outside, {}, QuarantineReason.outside_root, "link to .*outside"),
    ("unsupported_png", "bad.png", b"\x89PNG\r\n\x1a\n", {}, QuarantineReason.unsupported, r"no loader for \.png"),
    ("unsupported_xyz", "bad.xyz", "text", {}, QuarantineReason.unsupported, r"no loader for \.xyz"),
    ("unreadable", "bad.txt", _unreadable, {}, QuarantineReason.unreadable, "Permission denied"),
]


@pytest.mark.parametrize(
    ("name", "content", "config", "reason", "detail"),
    [case[1:] for case in QUARANTINE_CASES],
    ids=[case[0] for case in QUARANTINE_CASES],
)
def test_load_file_quarantines_with_reason(tmp_path, monkeypatch, name, content, config, reason, detail):
    root = write_files(tmp_path / "src", {"good.md": GOOD_MD, "sub/also_good.txt": "still here"})
    if callable(content):
        content(root, tmp_path, monkeypatch)
    else:
        write_files(root, {name: content})
    docs, quarantined = ingest(root, **config)
    assert list(quarantined) == [name]
    record = quarantined[name]
    assert record.reason is reason
    assert record.source_uri == str(root.resolve() / name)
    assert re.search(detail, record.detail), record.detail
    assert sorted(docs) == ["good.md", "sub/also_good.txt"]
    assert docs["good.md"].title == "Good"


def test_iter_sources_missing_source_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="source not found: .*nowhere"):
        list(iter_sources([str(tmp_path / "nowhere")], IngestConfig()))


# -- text helpers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\r\nb\r\n", "a\nb"),
        ("a\rb", "a\nb"),
        ("\ufeffhello", "hello"),
        ("cafe\u0301", "caf\u00e9"),  # NFD -> NFC
        ("\ufeff  cafe\u0301\r\n\r\n  ", "caf\u00e9"),
        ("  inner  spaces  kept  ", "inner  spaces  kept"),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_text_equal_for_equivalent_inputs(tmp_path):
    root = write_files(tmp_path / "src", {
        "a/doc.txt": "caf\u00e9\nline".encode("utf-8"),
        "b/doc.txt": "\ufeffcafe\u0301\r\nline\r\n".encode("utf-8"),
    })
    docs, _ = ingest(root)
    assert docs["a/doc.txt"].content_sha256 == docs["b/doc.txt"].content_sha256


def test_snapshot_id_of_is_order_independent():
    pairs = [("a.md", "1" * 64), ("b.md", "2" * 64), ("c.csv#3", "3" * 64)]
    assert snapshot_id_of(pairs) == snapshot_id_of(list(reversed(pairs)))
    assert snapshot_id_of(pairs) == snapshot_id_of([pairs[1], pairs[2], pairs[0]])
    assert snapshot_id_of(pairs) != snapshot_id_of(pairs[:2])
    assert snapshot_id_of(pairs) != snapshot_id_of([("a.md", "9" * 64)] + pairs[1:])
    assert len(snapshot_id_of(pairs)) == 24


# -- build_snapshot --------------------------------------------------------------------------------
@pytest.fixture
def lake(lake_dir) -> Lake:
    return Lake(str(lake_dir))


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_files(tmp_path / "src", {
        "a.md": "# Alpha\n\nalpha text",
        "b.txt": "bravo text",
        "c.txt": "charlie text",
        "t.csv": "id,v\n1,one\n2,two\n",
        "t.schema.yaml": "id_column: id\n",
    })


def accept(lake: Lake, result) -> None:
    """What the flow does once validation passes: move the documents ref."""
    lake.write_ref("documents", {"snapshot_id": result.snapshot_id, "run_id": "x"})


def rows_by_id(lake: Lake, snapshot_id: str) -> dict[str, dict]:
    return {r["doc_id"]: r for r in lake.read_snapshot(snapshot_id).to_pylist()}


def snapshot_dirs(lake: Lake) -> list[str]:
    return sorted(p.name for p in (Path(lake.root) / "documents").iterdir())


ALL_IDS = ["a.md", "b.txt", "c.txt", "t.csv#1", "t.csv#2"]


def test_build_snapshot_first_run_all_new(lake, corpus):
    r = build_snapshot(lake, [str(corpus)], IngestConfig())
    assert r.counts == {"seen": 5, "new": 5, "changed": 0, "unchanged": 0, "deleted": 0, "quarantined": 0}
    assert r.previous_snapshot_id is None
    assert r.written is True
    assert r.carried_forward == [] and r.quarantine == []
    rows = rows_by_id(lake, r.snapshot_id)
    assert sorted(rows) == ALL_IDS
    assert r.snapshot_id == snapshot_id_of([(d, row["content_sha256"]) for d, row in rows.items()])
    assert lake.read_ref("documents") is None  # the caller moves the ref, not build_snapshot


def test_build_snapshot_rerun_identical_writes_nothing(lake, corpus):
    first = build_snapshot(lake, [str(corpus)], IngestConfig())
    accept(lake, first)
    before = rows_by_id(lake, first.snapshot_id)
    second = build_snapshot(lake, [str(corpus)], IngestConfig(rows_per_batch=1))
    assert second.snapshot_id == first.snapshot_id
    assert second.previous_snapshot_id == first.snapshot_id
    assert second.counts == {"seen": 5, "new": 0, "changed": 0, "unchanged": 5, "deleted": 0, "quarantined": 0}
    assert second.written is False
    assert snapshot_dirs(lake) == [f"snapshot_id={first.snapshot_id}"]  # no temp files left behind
    assert rows_by_id(lake, first.snapshot_id) == before


def test_build_snapshot_counts_changed_and_deleted(lake, corpus):
    first = build_snapshot(lake, [str(corpus)], IngestConfig())
    accept(lake, first)
    (corpus / "b.txt").write_text("bravo text, edited", encoding="utf-8")
    (corpus / "c.txt").unlink()
    write_files(corpus, {"d.txt": "delta text"})
    r = build_snapshot(lake, [str(corpus)], IngestConfig())
    assert r.counts == {"seen": 5, "new": 1, "changed": 1, "unchanged": 3, "deleted": 1, "quarantined": 0}
    assert r.snapshot_id != first.snapshot_id
    assert r.written is True
    rows = rows_by_id(lake, r.snapshot_id)
    assert sorted(rows) == ["a.md", "b.txt", "d.txt", "t.csv#1", "t.csv#2"]
    assert rows["b.txt"]["text"] == "bravo text, edited"


def test_build_snapshot_keeps_ingested_at_for_unchanged_docs(lake, corpus, monkeypatch):
    t1 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    t2 = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(ingestion, "utcnow", lambda: t1)
    first = build_snapshot(lake, [str(corpus)], IngestConfig())
    accept(lake, first)
    (corpus / "b.txt").write_text("bravo text, edited", encoding="utf-8")
    monkeypatch.setattr(ingestion, "utcnow", lambda: t2)
    r = build_snapshot(lake, [str(corpus)], IngestConfig())
    rows = rows_by_id(lake, r.snapshot_id)
    assert rows["b.txt"]["ingested_at"] == t2
    assert {d: rows[d]["ingested_at"] for d in ALL_IDS if d != "b.txt"} == {
        d: t1 for d in ALL_IDS if d != "b.txt"
    }


@pytest.mark.parametrize(
    ("breaks", "carried"),
    [
        ("binary", ["a.md"]),
        ("bad_front_matter", ["a.md"]),
        ("ragged_csv", ["t.csv#1", "t.csv#2"]),
        ("unreadable", ["b.txt"]),
    ],
)
def test_build_snapshot_carries_forward_newly_quarantined_file(lake, corpus, monkeypatch, breaks, carried):
    first = build_snapshot(lake, [str(corpus)], IngestConfig())
    accept(lake, first)
    before = rows_by_id(lake, first.snapshot_id)
    if breaks == "binary":
        (corpus / "a.md").write_bytes(b"\x00\x01\x02")
    elif breaks == "bad_front_matter":
        (corpus / "a.md").write_text("---\ntitle: [oops\n---\nbody\n", encoding="utf-8")
    elif breaks == "ragged_csv":
        (corpus / "t.csv").write_text("id,v\n1,one\n2,two,extra\n", encoding="utf-8")
    else:
        fail_reading(monkeypatch, "b.txt", PermissionError(13, "Permission denied"))
    r = build_snapshot(lake, [str(corpus)], IngestConfig())
    assert r.carried_forward == carried
    assert r.counts["deleted"] == 0
    assert r.counts["quarantined"] == 1
    assert r.counts["unchanged"] == 5
    assert r.snapshot_id == first.snapshot_id  # the corpus state is the previous one
    rows = rows_by_id(lake, r.snapshot_id)
    assert sorted(rows) == ALL_IDS
    for doc_id in carried:
        assert rows[doc_id] == before[doc_id]


def test_build_snapshot_carries_forward_corrupted_beir_corpus(lake, tmp_path):
    root = write_files(tmp_path / "beir", {
        "corpus.jsonl": json.dumps({"_id": "d1", "title": "Kelp", "text": "Kelp grows fast."}) + "\n",
        "notes.txt": "notes",
    })
    first = build_snapshot(lake, [str(root)], IngestConfig())
    accept(lake, first)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "title": "Kelp", "text": "Kelp gr', encoding="utf-8")
    r = build_snapshot(lake, [str(root)], IngestConfig())
    assert r.counts["quarantined"] == 1
    assert r.counts["deleted"] == 0
    assert r.carried_forward == ["d1"]


def test_build_snapshot_missing_source_leaves_no_temp_file(lake, tmp_path):
    with pytest.raises(FileNotFoundError, match="source not found"):
        build_snapshot(lake, [str(tmp_path / "nowhere")], IngestConfig())
    leftovers = list((Path(lake.root) / "documents").iterdir())
    assert leftovers == []


# -- scoped cleanup and the mass-delete guard (issue 17: 15, 16) ------------------------------------
@pytest.fixture
def two_sources(tmp_path) -> tuple[Path, Path]:
    return (write_files(tmp_path / "s1", {"one.md": "# One\n\nfirst source", "two.md": "# Two\n\nfirst source again"}),
            write_files(tmp_path / "s2", {"three.md": "# Three\n\nsecond source", "four.md": "# Four\n\nmore"}))


def test_build_snapshot_with_one_source_keeps_the_other_sources_documents(lake, two_sources):
    s1, s2 = two_sources
    both = build_snapshot(lake, [str(s1), str(s2)], IngestConfig())
    accept(lake, both)
    assert both.known_roots == sorted([str(s1.resolve()), str(s2.resolve())])
    (s1 / "two.md").unlink()
    r = build_snapshot(lake, [str(s1)], IngestConfig(), known_roots=both.known_roots)
    # A lake of two sources prefixes doc ids with each source's label (issue 17, kind 5).
    assert sorted(rows_by_id(lake, r.snapshot_id)) == ["s1/one.md", "s2/four.md", "s2/three.md"]
    assert r.counts["deleted"] == 1 and r.other_sources_kept == 2 and r.forgotten == 0
    accept(lake, r)
    forgot = build_snapshot(lake, [str(s1)], IngestConfig(), forget_sources=[str(s2)], known_roots=r.known_roots)
    assert sorted(rows_by_id(lake, forgot.snapshot_id)) == ["one.md"] and forgot.forgotten == 2
    assert forgot.known_roots == [str(s1.resolve())]


def test_build_snapshot_of_a_moved_source_folder_deletes_what_it_no_longer_has(lake, tmp_path):
    old = write_files(tmp_path / "docs", {"a.md": "# A\n\nalpha", "b.md": "# B\n\nbravo", "c.md": "# C\n\ncharlie"})
    first = build_snapshot(lake, [str(old)], IngestConfig())
    accept(lake, first)
    new = tmp_path / "documentation"
    old.rename(new)
    (new / "c.md").unlink()
    moved = build_snapshot(lake, [str(new)], IngestConfig(), max_delete_fraction=0.5, known_roots=first.known_roots)
    assert sorted(rows_by_id(lake, moved.snapshot_id)) == ["a.md", "b.md"] and moved.other_sources_kept == 0


def test_build_snapshot_stops_before_writing_when_a_source_comes_back_empty(lake, two_sources):
    s1, s2 = two_sources
    first = build_snapshot(lake, [str(s1), str(s2)], IngestConfig())
    accept(lake, first)
    for path in s2.iterdir():
        path.unlink()
    write_files(s2, {"four.md": "# Four\n\nmore"})  # 1 of 2 left: exactly the limit, allowed
    assert build_snapshot(lake, [str(s1), str(s2)], IngestConfig(), max_delete_fraction=0.5).counts["deleted"] == 1
    (s2 / "four.md").unlink()
    with pytest.raises(ingestion.MassDeleteError, match=rf"source {re.escape(str(s2.resolve()))}: 2 of its 2 documents"):
        build_snapshot(lake, [str(s1), str(s2)], IngestConfig(), max_delete_fraction=0.5)
    assert snapshot_dirs(lake) == sorted(snapshot_dirs(lake)) and all("tmp" not in d for d in snapshot_dirs(lake))
    assert build_snapshot(lake, [str(s1), str(s2)], IngestConfig()).counts["deleted"] == 2, "no guard: an explicit override"


def test_quarantined_files_keep_their_version_and_are_no_deletes_for_the_guard(lake, tmp_path):
    """Two of three files turning bad (a crashed editor's binary write, a truncated export) are quarantined and
    keep their previous version: nothing is deleted, so the mass-delete guard has nothing to stop."""
    src = write_files(tmp_path / "src", {"a.md": "# A\n\nalpha", "b.md": "# B\n\nbeta", "c.md": "# C\n\ngamma"})
    first = build_snapshot(lake, [str(src)], IngestConfig())
    accept(lake, first)
    (src / "a.md").write_bytes(b"\x00\x01 overwritten by a crashed editor")
    (src / "b.md").write_bytes(b"\x00\x02\x03 also binary now")
    second = build_snapshot(lake, [str(src)], IngestConfig(), max_delete_fraction=0.5)
    assert sorted(q.reason.value for q in second.quarantine) == ["binary", "binary"]
    assert second.counts["deleted"] == 0 and second.snapshot_id == first.snapshot_id


def test_doc_id_is_the_nfc_spelling_of_the_file_name(tmp_path):
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "café.md")
    root = write_files(tmp_path / "src", {decomposed: "# Café\n\ntext"})
    [doc] = [d for d in iter_sources([str(root)], IngestConfig()) if isinstance(d, Document)]
    assert doc.doc_id == unicodedata.normalize("NFC", "café.md")


# -- two sources with the same relative path (issue 17, kind 5) -----------------------------------
def test_two_sources_with_the_same_relative_path_give_two_documents_in_either_order(lake, tmp_path):
    team_a = write_files(tmp_path / "teamA", {"notes.md": "# Notes\n\nteam A writes this", "a.md": "# A\n\nonly A"})
    team_b = write_files(tmp_path / "teamB", {"notes.md": "# Notes\n\nteam B writes that"})
    first = build_snapshot(lake, [str(team_a), str(team_b)], IngestConfig())
    assert not first.quarantine
    rows = rows_by_id(lake, first.snapshot_id)
    assert sorted(rows) == ["teamA/a.md", "teamA/notes.md", "teamB/notes.md"]
    assert "team B" in rows["teamB/notes.md"]["text"]
    accept(lake, first)
    swapped = build_snapshot(lake, [str(team_b), str(team_a)], IngestConfig(), known_roots=first.known_roots)
    assert swapped.snapshot_id == first.snapshot_id and swapped.counts["unchanged"] == 3  # stable, order-free
    accept(lake, swapped)
    only_b = build_snapshot(lake, [str(team_b)], IngestConfig(), known_roots=swapped.known_roots)
    assert sorted(rows_by_id(lake, only_b.snapshot_id)) == sorted(rows)  # labels come from the lake's sources


def test_one_source_lake_keeps_plain_relative_doc_ids(lake, tmp_path):
    src = write_files(tmp_path / "docs", {"notes.md": "# Notes\n\ntext", "sub/b.md": "# B\n\nbee"})
    result = build_snapshot(lake, [str(src)], IngestConfig(), known_roots=[str(src.resolve())])
    assert sorted(rows_by_id(lake, result.snapshot_id)) == ["notes.md", "sub/b.md"] and result.labels == {}


@pytest.mark.parametrize(
    ("roots", "labels"),
    [
        (["/x/teamA", "/x/teamB"], {"/x/teamA": "teamA", "/x/teamB": "teamB"}),
        (["/a/docs", "/b/docs", "/c/api"], {"/c/api": "api"}),  # shared names get a hash of their path
    ],
)
def test_source_labels_are_unique_and_order_free(roots, labels):
    got = ingestion.source_labels(roots)
    assert got == ingestion.source_labels(list(reversed(roots)))
    assert len(set(got.values())) == len(roots) and all("/" not in v for v in got.values())
    for root, label in labels.items():
        assert got[root] == label
    assert all(got[r].startswith("docs-") for r in roots if r.endswith("/docs"))


# -- CSV as spreadsheets write it (issue 17, kind 6) ----------------------------------------------------
@pytest.mark.parametrize(
    ("content", "note"),
    [
        ("id;label;price\n1;Crème brûlée;4,50\n2;Café;2,00\n".encode("cp1252"), "csv_encoding_cp1252"),
        ("id;label;price\n1;Crème brûlée;4,50\n2;Café;2,00\n".encode("utf-8"), "csv_delimiter_semicolon"),
        ("id\tlabel\tprice\n1\tCrème brûlée\t4.50\n2\tCafé\t2.00\n".encode("utf-8"), "csv_delimiter_tab"),
        ("\ufeffid,label,price\n1,Crème brûlée,4.50\n2,Café,2.00\n".encode("utf-8"), None),
    ],
    ids=["windows-1252-semicolon", "utf8-semicolon", "tab", "utf8-bom-comma"],
)
def test_csv_encoding_and_delimiter_are_detected(tmp_path, content, note):
    root = write_files(tmp_path / "src", {"menu.csv": content, "menu.schema.yaml": "id_column: id\n"})
    notes = ingestion.Counter()
    items = list(iter_sources([str(root)], IngestConfig(), notes=notes))
    docs = {d.doc_id: d for d in items if isinstance(d, Document)}
    assert sorted(docs) == ["menu.csv#1", "menu.csv#2"], items
    assert "label: Crème brûlée" in docs["menu.csv#1"].text.splitlines()
    assert "b'" not in docs["menu.csv#1"].text
    assert docs["menu.csv#2"].metadata["row"]["label"] == "Café"
    if note:
        assert notes[note] == 1


def test_csv_that_is_no_text_is_quarantined_naming_the_problem(tmp_path):
    root = write_files(tmp_path / "src", {"blob.csv": bytes(range(1, 256)) * 20, "good.md": GOOD_MD})
    _, quarantined = ingest(root)
    assert quarantined["blob.csv"].reason in (QuarantineReason.decode_error, QuarantineReason.parse_error)
    assert re.search(r"encoding|bytes that are not text|CSV", quarantined["blob.csv"].detail)


# -- docs sites: globs, notebooks, mkdocs dialects (issue 17, kind 8) ----------------------------------
NOTEBOOK = json.dumps({
    "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
    "cells": [
        {"cell_type": "markdown", "id": "a", "metadata": {}, "source": "# Loading data\n\nRead the tide table."},
        {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": 1, "source": "import pandas as pd\ndf = pd.read_csv('tides.csv')",
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "OUTPUT-NOISE 12345\n"}]},
        {"cell_type": "raw", "id": "c", "metadata": {}, "source": "raw cell"},
    ],
})


@pytest.mark.parametrize(("outputs", "noise"), [(False, False), (True, True)])
def test_notebook_markdown_and_code_cells_outputs_dropped_by_default(tmp_path, outputs, noise):
    root = write_files(tmp_path / "src", {"intro.ipynb": NOTEBOOK})
    docs, quarantined = ingest(root, notebook_outputs=outputs)
    assert not quarantined
    doc = docs["intro.ipynb"]
    assert doc.title == "Loading data" and doc.mime == "text/markdown"
    assert "```python\nimport pandas as pd" in doc.text and "Read the tide table." in doc.text
    assert ("OUTPUT-NOISE" in doc.text) is noise


def test_broken_notebook_is_a_parse_error(tmp_path):
    root = write_files(tmp_path / "src", {"bad.ipynb": '{"cells": ', "good.md": GOOD_MD})
    _, quarantined = ingest(root)
    assert quarantined["bad.ipynb"].reason is QuarantineReason.parse_error
    assert "notebook" in quarantined["bad.ipynb"].detail


@pytest.mark.parametrize(
    ("include", "exclude", "loaded", "excluded", "not_included"),
    [
        ([], [], ["a.md", "assets/logo.png", "data/big.txt", "overrides/main.html"], 0, 0),
        ([], ["assets/", "overrides/", "data/*.txt"], ["a.md"], 3, 0),
        (["*.md"], [], ["a.md"], 0, 3),
        (["**/*.md", "data/"], ["data/big.txt"], ["a.md"], 1, 2),
    ],
)
def test_include_and_exclude_globs_choose_files_and_count_the_rest(tmp_path, include, exclude, loaded, excluded, not_included):
    root = write_files(tmp_path / "src", {"a.md": GOOD_MD, "assets/logo.png": b"\x89PNG\r\n", "data/big.txt": "sample",
                                          "overrides/main.html": "<html><body>{% block x %}{% endblock %}</body></html>"})
    notes = ingestion.Counter()
    seen = [Path(i.source_uri).relative_to(root.resolve()).as_posix()
            for i in iter_sources([str(root)], IngestConfig(include=include, exclude=exclude), notes=notes)]
    assert sorted(seen) == loaded
    assert notes["excluded"] == excluded and notes["not_included"] == not_included


def test_bad_glob_fails_at_load_naming_the_field():
    with pytest.raises(ValueError, match="exclude: bad glob"):
        IngestConfig(exclude=["[z-a]"])


def test_a_source_named_twice_is_read_once(tmp_path):
    src = write_files(tmp_path / "src", {"a.md": "# A\n\nalpha", "b.md": "# B\n\nbravo"})
    lake = Lake(str(tmp_path / "lake"))
    result = build_snapshot(lake, [str(src), str(src) + "/", str(tmp_path / "." / "src")], IngestConfig())
    assert result.counts["seen"] == 2 and result.quarantine == []
    assert source_roots([str(src), str(src) + "/"]) == [str(src.resolve())]
    assert unique_sources(["docs", "./docs/", "other", "docs"]) == ["docs", "other"]
