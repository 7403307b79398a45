"""The lake's pure helpers (an object-store lease's expiry, S3 object paths) and the snapshot writer."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ragloop.tasks.storage import Lake, lease_expired, s3_location, snapshot_key

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("holder, expired", [
    ({"expires_at": "2026-06-01T12:00:01+00:00"}, False),
    ({"expires_at": "2026-06-01T11:59:59+00:00"}, True),
    ({"expires_at": "2026-06-01T14:00:01+02:00"}, False),  # the same instant in another zone, one second ahead
    ({"owner": "a local lock file copied up"}, True),
    ({"expires_at": "not a time"}, True),
    (None, True),
    ({}, True),
])
def test_a_lease_is_expired_only_past_its_expires_at(holder, expired):
    assert lease_expired(holder, NOW) is expired


def test_s3_location_splits_bucket_and_key():
    assert s3_location("bucket/lake/locks/run.lock") == ("bucket", "lake/locks/run.lock")
    with pytest.raises(ValueError, match="not an S3 object path"):
        s3_location("bucket")


def test_a_bakeoff_table_is_named_after_its_embedder_and_chunker_and_measured(tmp_path):
    from ragloop.tasks.storage import bakeoff_table_name

    name = bakeoff_table_name("m", "0123456789abcdef" * 4)
    assert name == "chunks__m__ck0123456789ab"
    lake = Lake(str(tmp_path / "lake"))
    assert lake.table_bytes(name) is None
    folder = tmp_path / "lake" / "lancedb" / f"{name}.lance" / "data"
    folder.mkdir(parents=True)
    (folder / "a.lance").write_bytes(b"x" * 10)
    (folder.parent / "v1.manifest").write_bytes(b"y" * 5)
    assert lake.table_bytes(name) == 15


# -- the snapshot writer: an unchanged corpus writes no byte (issue 23) ----------------------------------------
AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _row(doc_id: str, text: str = "text", size: int = 4) -> dict:
    return {"doc_id": doc_id, "source_uri": f"/src/{doc_id}", "content_sha256": f"sha-{doc_id}-{text}", "text": text,
            "title": doc_id, "metadata": "{}", "mime": "text/plain", "bytes": size, "ingested_at": AT}


def _previous(lake: Lake, rows: list[dict]) -> tuple[str, list[tuple]]:
    writer = lake.snapshot_writer()
    writer.write(rows)
    assert writer.finish("prev")
    return "prev", [snapshot_key(r) for r in lake.read_snapshot("prev").to_pylist()]


def _files(lake: Lake) -> list[str]:
    return sorted(str(p.relative_to(lake.root)) for p in Path(lake.root).rglob("*") if p.is_file())


def test_rows_equal_to_the_previous_snapshot_in_order_write_nothing(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    rows = [_row(f"d{i}") for i in range(5)]
    previous = _previous(lake, rows)
    before = _files(lake)
    writer = lake.snapshot_writer(previous)
    writer.write(rows[:2])
    writer.write(rows[2:])
    assert writer.finish("prev") is False
    assert _files(lake) == before, "no temp file was even opened"


@pytest.mark.parametrize("new_rows", [
    [_row("d0"), _row("d1"), _row("d2", "edited"), _row("d3"), _row("d4")],  # a change in the middle
    [_row("d0"), _row("d1"), _row("d2"), _row("d3")],  # the last document deleted
    [_row("d0"), _row("d1"), _row("d2"), _row("d3"), _row("d4"), _row("d5")],  # one added at the end
    [_row("d0"), _row("d1", size=9), _row("d2"), _row("d3"), _row("d4")],  # the same content, other raw bytes
    [_row("d1"), _row("d0"), _row("d2"), _row("d3"), _row("d4")],  # the same rows in another order
], ids=["changed", "deleted", "added", "bytes", "order"])
def test_the_first_differing_row_writes_the_same_snapshot_as_a_plain_writer(tmp_path, new_rows):
    lake = Lake(str(tmp_path / "lake"))
    previous = _previous(lake, [_row(f"d{i}") for i in range(5)])
    deferred = lake.snapshot_writer(previous)
    for i in range(0, len(new_rows), 2):  # batches that straddle the first difference
        deferred.write(new_rows[i:i + 2])
    assert deferred.finish("new") is True
    plain = Lake(str(tmp_path / "plain")).snapshot_writer()
    plain.write(new_rows)
    plain.finish("new")
    assert lake.read_snapshot("new").equals(Lake(str(tmp_path / "plain")).read_snapshot("new"))
    assert not [f for f in _files(lake) if ".tmp-" in f]


def test_an_aborted_writer_leaves_no_file_whether_or_not_it_opened_one(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    previous = _previous(lake, [_row("d0"), _row("d1")])
    before = _files(lake)
    quiet = lake.snapshot_writer(previous)
    quiet.write([_row("d0")])
    quiet.abort()
    opened = lake.snapshot_writer(previous)
    opened.write([_row("d0"), _row("x")])
    opened.abort()
    assert _files(lake) == before
    assert pq.read_table(Path(lake.snapshot_dir("prev")) / "part-0.parquet").num_rows == 2
