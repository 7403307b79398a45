"""The ingest stat cache: unchanged files are proven by stat and reused unread; anything else is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ragloop.tasks import stat_cache
from ragloop.tasks.ingestion import build_snapshot
from ragloop.tasks.settings import IngestConfig
from ragloop.tasks.storage import Lake
from tests.conftest import write_files

FILES = {
    "a.md": "# Alpha\n\n!!! note\n    An admonition the mkdocs dialect rewrites.\n\nAlpha body text.\n",
    "b.txt": "Bravo plain text, long enough to be a document.\n",
    "t.csv": "id,name\n1,one\n2,two\n",
    "t.schema.yaml": "table: numbers\ndescription: small numbers\nid_column: id\n",
}


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_files(tmp_path / "src", FILES)


@pytest.fixture
def trust_now(monkeypatch):
    """Files written by the test a moment ago count as settled (the racy-file window is 2 s otherwise)."""
    monkeypatch.setattr(stat_cache, "RACY_S", 0)


def ingest(lake: Lake, corpus: Path, **config):
    result = build_snapshot(lake, [str(corpus)], IngestConfig(**config))
    lake.write_ref("documents", {"snapshot_id": result.snapshot_id, "run_id": "x"})
    return result


def rows(lake: Lake, snapshot_id: str) -> dict[str, dict]:
    return {r["doc_id"]: r for r in lake.read_snapshot(snapshot_id).to_pylist()}


def rewrite_keeping_size_and_mtime(path: Path, text: str) -> None:
    st = path.stat()
    assert len(text.encode()) == st.st_size
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_noop_reingest_reads_no_file_and_changes_nothing(lake, corpus, trust_now):
    first = ingest(lake, corpus)
    assert first.unchanged_by_stat == 0
    second = ingest(lake, corpus)
    assert second.unchanged_by_stat == 3  # a.md, b.txt, t.csv (the sidecar is part of t.csv's signature)
    assert second.snapshot_id == first.snapshot_id and second.written is False
    assert second.counts == {**first.counts, "new": 0, "unchanged": first.counts["seen"]}
    assert second.notes == first.notes and second.notes  # the loader notes are replayed, not lost
    assert rows(lake, second.snapshot_id) == rows(lake, first.snapshot_id)


def test_a_reused_file_yields_what_reading_it_yields(lake, corpus, trust_now):
    ingest(lake, corpus)
    cached = ingest(lake, corpus)
    fresh = build_snapshot(Lake(str(corpus.parent / "other")), [str(corpus)], IngestConfig())
    assert cached.unchanged_by_stat == 3 and fresh.unchanged_by_stat == 0
    strip = lambda r: {k: v for k, v in r.items() if k != "ingested_at"}  # noqa: E731
    assert {d: strip(r) for d, r in rows(lake, cached.snapshot_id).items()} == \
        {d: strip(r) for d, r in rows(Lake(str(corpus.parent / "other")), fresh.snapshot_id).items()}


def test_edit_keeping_size_and_restoring_mtime_is_still_seen(lake, corpus, trust_now):
    """os.utime can put mtime back, never ctime: the signature's ctime catches the edit."""
    first = ingest(lake, corpus)
    rewrite_keeping_size_and_mtime(corpus / "b.txt", "Bravo PLAIN text, long enough to be a document.\n")
    second = ingest(lake, corpus)
    assert second.counts["changed"] == 1 and second.unchanged_by_stat == 2
    assert rows(lake, second.snapshot_id)["b.txt"]["text"].startswith("Bravo PLAIN")
    assert second.snapshot_id != first.snapshot_id


def test_a_replaced_file_with_the_same_size_and_mtime_is_seen(lake, corpus, trust_now):
    """Write-to-temp-and-rename (editors, rsync, git checkout) gives a new inode."""
    ingest(lake, corpus)
    st = (corpus / "b.txt").stat()
    tmp = corpus / "b.txt.new"
    tmp.write_text("Bravo plain text, LONG enough to be a document.\n", encoding="utf-8")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, corpus / "b.txt")
    second = ingest(lake, corpus)
    assert second.counts["changed"] == 1


def test_a_changed_sidecar_rereads_its_table(lake, corpus, trust_now):
    ingest(lake, corpus)
    (corpus / "t.schema.yaml").write_text("table: numbers\ndescription: tiny numbers\nid_column: id\n")
    second = ingest(lake, corpus)
    assert second.counts["changed"] == 2 and second.unchanged_by_stat == 2


def test_verify_hashes_reads_every_file(lake, corpus, trust_now):
    ingest(lake, corpus)
    second = ingest(lake, corpus, verify_hashes=True)
    assert second.unchanged_by_stat == 0 and second.counts["unchanged"] == 3 + 1  # the csv has two rows
    assert second.unchanged_by_content == 0, "and parses it"


def test_parsing_settings_invalidate_the_cache(lake, corpus, trust_now):
    ingest(lake, corpus)
    second = ingest(lake, corpus, markdown_dialect="commonmark")
    assert second.unchanged_by_stat == 0 and second.counts["changed"] == 1  # a.md reads differently


def test_files_younger_than_the_racy_window_are_read(lake, corpus):
    """Written a moment ago: a write in the same timestamp tick as our read could go unseen, so no trust
    in their stat; their bytes are read and hashed, and equal bytes reuse the stored documents unparsed."""
    first = ingest(lake, corpus)
    second = ingest(lake, corpus)
    assert second.unchanged_by_stat == 0
    assert second.unchanged_by_content == 2  # a.md, b.txt; t.csv has a sidecar: always parsed when not proven by stat
    assert second.snapshot_id == first.snapshot_id and rows(lake, second.snapshot_id) == rows(lake, first.snapshot_id)


def test_a_touched_file_with_the_same_bytes_is_reused_by_their_hash(lake, corpus, trust_now):
    first = ingest(lake, corpus)
    os.utime(corpus / "a.md")  # a checkout or a copy that rewrote it unchanged
    second = ingest(lake, corpus)
    assert second.unchanged_by_stat == 2 and second.unchanged_by_content == 1
    assert second.counts["changed"] == 0 and second.snapshot_id == first.snapshot_id
    third = ingest(lake, corpus)
    assert third.unchanged_by_stat == 3 and third.unchanged_by_content == 0, "the new signature was kept"


def test_a_same_size_edit_fails_the_hash_and_is_parsed(lake, corpus, tmp_path):
    """Without trust in any stat (fresh files), only the bytes decide."""
    ingest(lake, corpus)
    text = (corpus / "b.txt").read_text()
    (corpus / "b.txt").write_text(text.replace("Bravo", "BRAVO"))
    second = ingest(lake, corpus)
    assert second.unchanged_by_content == 1 and second.counts["changed"] == 1  # a.md reused, b.txt parsed
    assert rows(lake, second.snapshot_id)["b.txt"]["text"].startswith("BRAVO")


def test_trust_needs_both_times_older_than_the_window():
    cache = stat_cache.StatCache.__new__(stat_cache.StatCache)
    cache.started_ns = 10 * 1_000_000_000
    assert cache.trusted([1, 7_000_000_000, 7_000_000_000, 1, 1])
    assert not cache.trusted([1, 7_000_000_000, 8_500_000_000, 1, 1])  # ctime inside the window
    assert not cache.trusted([1, 9_000_000_000, 7_000_000_000, 1, 1])  # mtime inside the window
    assert not cache.trusted([1, 11_000_000_000, 7_000_000_000, 1, 1])  # mtime in the future


def test_a_file_with_snippet_includes_is_never_reused(lake, tmp_path, trust_now):
    """Its text depends on another file, whose edit leaves the including file's stat as it was."""
    root = write_files(tmp_path / "docs", {"page.md": "# Page\n\n--8<-- \"part.md\"\n", "part.md": "Part one.\n"})
    ingest(lake, root)
    (root / "part.md").write_text("Part two.\n")
    second = ingest(lake, root)
    assert second.unchanged_by_stat == 0
    assert "Part two." in rows(lake, second.snapshot_id)["page.md"]["text"]


def test_symlinks_are_always_read(lake, tmp_path, trust_now):
    root = write_files(tmp_path / "docs", {"real.txt": "Real text of a real document.\n"})
    (root / "link.txt").symlink_to(root / "real.txt")
    ingest(lake, root)
    assert ingest(lake, root).unchanged_by_stat == 1  # real.txt only


def test_a_new_lake_or_a_missing_cache_reads_everything(lake, corpus, trust_now):
    first = ingest(lake, corpus)
    (Path(lake.snapshot_dir(first.snapshot_id)) / "stat_cache.json").unlink()
    assert ingest(lake, corpus).unchanged_by_stat == 0
    assert ingest(lake, corpus).unchanged_by_stat == 3  # and the cache is written again


def test_a_beir_corpus_is_reused_whole(lake, tmp_path, trust_now):
    root = write_files(tmp_path / "beir", {"corpus.jsonl": '{"_id": "d1", "title": "One", "text": "First abstract."}\n'
                                                           '{"_id": "d2", "title": "Two", "text": "Second abstract."}\n'})
    first = ingest(lake, root)
    second = ingest(lake, root)
    assert second.unchanged_by_stat == 1 and second.counts["unchanged"] == 2
    assert rows(lake, second.snapshot_id) == rows(lake, first.snapshot_id)
