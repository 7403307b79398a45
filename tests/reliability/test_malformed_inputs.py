"""Malformed inputs: every kind of bad file, mixed with good ones, through the real index flow.

100 % of the bad files are quarantined with the right reason (and a detail saying why), 100 % of the
good ones are indexed, a second run changes nothing, and no file over the size limit is ever read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lancedb
import pytest

from ragloop.flows import index as index_flow
from ragloop.tasks.ingestion import iter_sources
from ragloop.tasks.settings import IngestConfig
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, write_files
from tests.unit.test_ingestion import HTML_PAGE, make_pdf

SIZE_LIMIT = 64 * 1024  # ingest.max_file_bytes in the fast tests; the slow one uses the default (50 MiB)
NON_UTF8_NAME = os.fsdecode(b"caf\xe9-latin1-name.txt")  # a file name that is not valid UTF-8

GOOD = {
    "guide.md": "# Guide\n\n## Start\n\nOpen the app and sign up with a card.\n",
    "notes.txt": "Plain notes about the fleet. The fleet has 260 bikes.",
    "page.html": HTML_PAGE,
    "report.pdf": make_pdf("Barnacles filter plankton at high tide."),
    "bom-utf16.txt": "Tide tables, encoded as UTF-16 with a BOM.".encode("utf-16"),
    "tables/stations.csv": "station_id,docks\nS1,12\nS2,9\n",
    "tables/stations.schema.yaml": "table: stations\nid_column: station_id\n",
    "rows.jsonl": '{"k": "a", "v": 1}\n{"k": "b", "v": 2}\n',
    "odd names/r\u00e9sum\u00e9 \u2013 'quoted' #1 (v2) [final].md": "# Odd\n\nA good document with an odd name.",
    "odd names/semi;colon,comma & percent%.txt": "Another good document with an odd name.",
    "odd names/\u65e5\u672c\u8a9e.md": "# Unicode\n\nA good document named in Japanese.",
    "deep/a/b/c/d/e/nested.txt": "A good document five directories down.",
}
GOOD_DOC_IDS = {
    "guide.md", "notes.txt", "page.html", "report.pdf", "bom-utf16.txt", "tables/stations.csv#S1",
    "tables/stations.csv#S2", "rows.jsonl#row=0", "rows.jsonl#row=1",
    "odd names/r\u00e9sum\u00e9 \u2013 'quoted' #1 (v2) [final].md", "odd names/semi;colon,comma & percent%.txt",
    "odd names/\u65e5\u672c\u8a9e.md", "deep/a/b/c/d/e/nested.txt",
}


def _outside_link(root: Path) -> None:
    outside = write_files(root.parent / "outside", {"secret.txt": "not part of the corpus"})
    os.symlink(outside / "secret.txt", root / "escape.txt")


def _outside_dir_link(root: Path) -> None:
    outside = write_files(root.parent / "outside_dir", {"inner.txt": "not part of the corpus"})
    os.symlink(outside, root / "escape_dir")


def _symlink_loop(root: Path) -> None:
    os.symlink(root / "loop_b.txt", root / "loop_a.txt")
    os.symlink(root / "loop_a.txt", root / "loop_b.txt")


def _fifo(root: Path) -> None:
    os.mkfifo(root / "pipe.txt")


def _unreadable(root: Path) -> None:
    path = root / "locked.txt"
    path.write_text("fine text that nobody may read")
    path.chmod(0)


def _non_utf8_name(root: Path) -> None:
    (root / NON_UTF8_NAME).write_text("the content is fine, the name is not")


# (kind, file name as quarantined, content or setup, reason, detail pattern)
BAD = [
    ("binary", "blob.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "binary", "NUL bytes"),
    ("zero_bytes", "empty.md", b"", "empty", "^0 bytes$"),
    ("whitespace_only", "blank.md", " \n\n\t\n", "empty", "no text after extraction"),
    ("invalid_utf8", "latin1.txt", "caf\u00e9 au lait".encode("latin-1"), "decode_error", "not valid UTF-8 at byte 3"),
    ("mixed_encodings", "mixed.md", "# Mixed\n\nna\u00efve UTF-8, then ".encode() + "cp1252 \u201cquotes\u201d".encode("cp1252"),
     "decode_error", "not valid UTF-8 at byte"),
    ("utf16_without_bom", "utf16.txt", "no byte order mark".encode("utf-16-le"), "binary", "NUL bytes"),
    ("too_large", "huge.txt", b"x" * (SIZE_LIMIT + 1), "too_large", f"{SIZE_LIMIT + 1} bytes > ingest.max_file_bytes={SIZE_LIMIT}"),
    ("truncated_pdf", "truncated.pdf", make_pdf("Barnacles filter plankton at high tide.")[:400], "parse_error", "^pdf: "),
    ("not_a_pdf", "fake.pdf", b"GIF89a not a pdf at all", "parse_error", "no %PDF- header"),
    ("html_bomb", "bomb.html", "<html><body>" + "<div>" * 4_000 + "<p>deep</p>" + "</div>" * 4_000 + "</body></html>",
     "parse_error", "nesting too deep"),
    ("ragged_csv", "ragged.csv", "a,b\n1,2\n3,4,5\n", "parse_error", "CSV parse error"),
    ("bad_jsonl", "broken.jsonl", '{"k": "a"}\n{"k": \n', "parse_error", "^table: "),
    ("bad_front_matter", "front.md", "---\ntitle: [unclosed\n---\nbody\n", "parse_error", "front matter"),
    ("symlink_outside_root", "escape.txt", _outside_link, "outside_root", "link to .*outside/secret.txt"),
    ("dir_symlink_outside_root", "escape_dir", _outside_dir_link, "outside_root", "directory link to .*outside_dir"),
    ("broken_symlink", "dangling.txt", lambda root: os.symlink(root / "nowhere.txt", root / "dangling.txt"),
     "unreadable", "broken link"),
    ("symlink_loop_a", "loop_a.txt", _symlink_loop, "unreadable", "Symlink loop"),
    ("symlink_loop_b", "loop_b.txt", None, "unreadable", "Symlink loop"),
    ("fifo", "pipe.txt", _fifo, "unsupported", "not a regular file"),
    ("no_read_permission", "locked.txt", _unreadable, "unreadable", "Permission denied"),
    ("non_utf8_file_name", os.fsencode(NON_UTF8_NAME).decode("utf-8", "backslashreplace"), _non_utf8_name,
     "decode_error", "file name is not valid UTF-8"),
    ("unsupported_extension", "image.png", b"\x89PNG\r\n\x1a\n\x00\x00", "unsupported", r"no loader for \.png"),
]


def build_corpus(root: Path, monkeypatch) -> Path:
    """The good files plus every bad kind under root."""
    write_files(root, GOOD)
    for _, name, content, _, _ in BAD:
        if callable(content):
            content(root)
        elif content is not None:
            write_files(root, {name: content})
    if os.geteuid() == 0:
        # root reads any file whatever its mode: make the read fail the way it does for a normal user
        real = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self.name == "locked.txt":
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return root


def quarantined_by_name(records: list[dict], root: Path) -> dict[str, dict]:
    prefix = str(root.resolve()) + "/"
    out = {}
    for record in records:
        assert record["source"].startswith(prefix), record
        name = record["source"][len(prefix):]
        assert name not in out, f"{name} quarantined twice"
        out[name] = record
    return out


def table_doc_ids(lake_dir: Path) -> dict[str, int]:
    table = lancedb.connect(str(lake_dir / "lancedb")).open_table("chunks__hash_fake")
    counts: dict[str, int] = {}
    for doc_id in table.search().select(["doc_id"]).limit(None).to_arrow()["doc_id"].to_pylist():
        counts[doc_id] = counts.get(doc_id, 0) + 1
    return counts


def test_every_bad_kind_is_quarantined_with_its_reason_and_every_good_file_indexed(
    prefect_backend, hash_embedder, tmp_path, lake_dir, monkeypatch, figures
):
    monkeypatch.setenv("RAGLOOP_INGEST__MAX_FILE_BYTES", str(SIZE_LIMIT))
    src = build_corpus(tmp_path / "src", monkeypatch)
    reads: list[int] = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.stat().st_size) or real_read(self))

    summary = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))

    assert summary["status"] == "ok", summary.get("error")
    got = quarantined_by_name(summary["quarantine"], src)
    expected = {name: (reason, detail) for _, name, _, reason, detail in BAD}
    assert sorted(got) == sorted(expected), "exactly the bad files are quarantined"
    wrong = {name: (got[name]["reason"], got[name]["detail"]) for name, (reason, detail) in expected.items()
             if got[name]["reason"] != reason or not re.search(detail, got[name]["detail"])}
    assert wrong == {}, "each bad file carries its own reason and a detail that says why"
    indexed = table_doc_ids(lake_dir)
    assert set(indexed) == GOOD_DOC_IDS, "every good file is indexed, nothing else"
    assert all(n >= 1 for n in indexed.values())
    assert summary["documents"]["seen"] == len(GOOD_DOC_IDS) and summary["documents"]["quarantined"] == len(BAD)
    stored = Lake(str(lake_dir)).read_quarantine().to_pylist()
    assert sorted((r["source_uri"], r["reason"]) for r in stored) == sorted(
        (q["source"], q["reason"]) for q in summary["quarantine"]), "the lake keeps the same quarantine records"
    assert max(reads) <= SIZE_LIMIT, "memory bounded: no file over ingest.max_file_bytes is ever read"

    again = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert again["status"] == "ok" and again["chunks"]["written"] == 0 and again["chunks"]["embedded"] == 0
    assert again["table"]["version"] == summary["table"]["version"], "a rerun over the same bad files changes nothing"
    assert quarantined_by_name(again["quarantine"], src).keys() == got.keys()
    figures("1_malformed_inputs", bad_kinds_tried=len(BAD), bad_quarantined_with_right_reason=len(BAD) - len(wrong),
            good_docs_expected=len(GOOD_DOC_IDS), good_docs_indexed=len(set(indexed) & GOOD_DOC_IDS),
            largest_read_bytes=max(reads))


@pytest.mark.slow
def test_a_good_file_turning_bad_keeps_its_previous_version(prefect_backend, hash_embedder, tmp_path, lake_dir):
    src = write_files(tmp_path / "src", {k: GOOD[k] for k in ("guide.md", "notes.txt", "report.pdf")})
    first = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    before = table_doc_ids(lake_dir)
    (src / "guide.md").write_bytes(b"\x00\x01 overwritten by a crashed editor")
    (src / "report.pdf").write_bytes(GOOD["report.pdf"][:300])
    second = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert second["status"] == "ok"
    assert {q["source"].rsplit("/", 1)[-1]: q["reason"] for q in second["quarantine"]} == {
        "guide.md": "binary", "report.pdf": "parse_error"}
    assert second["documents"]["deleted"] == 0 and second["snapshot_id"] == first["snapshot_id"]
    assert table_doc_ids(lake_dir) == before, "nothing lost to a transient bad write"


# -- the 200 MB file, memory measured in a child process ------------------------------------------
MEMORY_PROBE = """
import json, resource, sys
from ragloop.tasks.ingestion import build_snapshot
from ragloop.tasks.settings import IngestConfig
from ragloop.tasks.storage import Lake
result = build_snapshot(Lake(sys.argv[2]), [sys.argv[1]], IngestConfig())
print(json.dumps({"quarantine": [[q.source_uri, q.reason.value, q.detail] for q in result.quarantine],
                  "seen": result.counts["seen"], "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _probe(src: Path, lake: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(src), str(lake)], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_200_mb_file_is_quarantined_without_being_read(tmp_path, figures):
    good = {k: GOOD[k] for k in ("guide.md", "notes.txt", "page.html", "report.pdf")}
    baseline = _probe(write_files(tmp_path / "small", good), tmp_path / "lake_small")
    big_src = write_files(tmp_path / "big", good)
    with open(big_src / "dump.txt", "wb") as fh:  # 200 MB of text, written in 1 MB blocks
        block = b"all work and no play makes a dull log line\n" * 24_000
        for _ in range(200 * 1024 * 1024 // len(block) + 1):
            fh.write(block)
    size = (big_src / "dump.txt").stat().st_size
    assert size >= 200 * 1024 * 1024
    result = _probe(big_src, tmp_path / "lake_big")
    assert result["seen"] == baseline["seen"] == 4
    assert result["quarantine"] == [[str((big_src / "dump.txt").resolve()), "too_large",
                                     f"{size} bytes > ingest.max_file_bytes={50 * 1024 * 1024}"]]
    growth_mb = (result["max_rss_kb"] - baseline["max_rss_kb"]) / 1024
    assert growth_mb < 32, f"peak memory grew {growth_mb:.0f} MB with a 200 MB file in the corpus"
    figures("1_malformed_inputs", big_file_mb=round(size / 2**20), big_file_rss_growth_mb=round(growth_mb, 1))


@pytest.mark.slow
@pytest.mark.parametrize("depth", [300, 10_000, 1_000_000])
def test_html_bombs_of_any_depth_are_parse_errors(tmp_path, depth):
    root = write_files(tmp_path / "src", {"bomb.html": "<div>" * depth + "x" + "</div>" * depth, "ok.txt": "fine"})
    items = list(iter_sources([str(root)], IngestConfig()))
    reasons = {Path(getattr(i, "source_uri", "")).name: getattr(i, "reason", None) for i in items}
    assert reasons["bomb.html"].value == "parse_error"
    assert sum(1 for i in items if hasattr(i, "doc_id")) == 1
