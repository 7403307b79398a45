"""The index-corpus flow end to end under a throwaway Prefect backend, with the hash fake embedder.

Replays the incremental-indexing failure modes known from other indexers.
"""

from __future__ import annotations

import json

import lancedb
import pytest

from ragloop.flows import index as index_flow
from ragloop.flows.cli import main
from tests.conftest import use_fakes, write_files

LONG_SECTION = "\n\n".join(f"Paragraph {i} talks about bicycles, docks and batteries number {i}." for i in range(40))


def _corpus(root):
    return write_files(
        root,
        {
            "guide.md": "# Guide\n\n## Start\n\nOpen the app and sign up.\n\n## Long part\n\n" + LONG_SECTION,
            "faq.md": "# FAQ\n\nHow do I pay? With a card.\n\n## Refunds\n\nRefunds take five days.",
            "notes.txt": "Plain notes about the fleet. The fleet has 260 bikes.",
        },
    )


@pytest.fixture
def fake(monkeypatch, fake_embedder):
    use_fakes(embedder=lambda config: fake_embedder)
    return fake_embedder


def _table_rows(lake_dir) -> list[dict]:
    db = lancedb.connect(str(lake_dir / "lancedb"))
    return db.open_table("chunks__hash_fake").to_arrow().drop_columns(["vector"]).to_pylist()


def _index(src, lake_dir, **kw):
    return index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir), **kw)


def test_index_first_run_embeds_every_chunk_and_keeps_all_chunks_of_a_long_doc(prefect_backend, fake, tmp_path, lake_dir):
    src = _corpus(tmp_path / "src")
    summary = _index(src, lake_dir)
    assert summary["status"] == "ok"
    assert summary["documents"] == {"seen": 3, "new": 3, "changed": 0, "unchanged": 0, "deleted": 0, "quarantined": 0}
    rows = _table_rows(lake_dir)
    assert summary["chunks"]["total"] == len(rows)
    guide = sorted((r for r in rows if r["doc_id"] == "guide.md"), key=lambda r: r["position"])
    assert len(guide) > 3, "the long document must be split into several chunks"
    assert [r["position"] for r in guide] == list(range(len(guide)))
    assert max(r["n_tokens"] for r in rows) <= fake.counter.max_tokens
    assert summary["chunks"]["embedded"] == len({r["text_sha256"] for r in rows})
    assert summary["table"]["name"] == "chunks__hash_fake"
    assert summary["validation"]["chunks"]["success"] and summary["validation"]["documents"]["success"]
    assert set(summary["lineage"]) >= {"snapshot_id", "chunker_hash", "embedder", "table", "config_hash", "git_commit", "ragloop_version"}


def test_index_second_run_is_a_noop(prefect_backend, fake, tmp_path, lake_dir):
    src = _corpus(tmp_path / "src")
    first = _index(src, lake_dir)
    before = _table_rows(lake_dir)
    fake.encoded.clear()
    second = _index(src, lake_dir)
    assert second["chunks"]["embedded"] == 0 and fake.encoded == []
    assert second["chunks"]["written"] == 0 and second["documents_indexed"] == 0
    assert second["documents"]["unchanged"] == 3
    assert second["table"]["version"] == first["table"]["version"], "nothing may be rewritten"
    assert second["snapshot_id"] == first["snapshot_id"]
    assert _table_rows(lake_dir) == before


def test_a_noop_run_is_recorded_and_reuses_the_verdicts_on_the_same_snapshot_and_table_version(
        prefect_backend, fake, tmp_path, lake_dir):
    from ragloop.tasks.storage import Lake

    src = _corpus(tmp_path / "src")
    first = _index(src, lake_dir)
    second = _index(src, lake_dir)
    lake = Lake(str(lake_dir))
    assert second["status"] == "ok" and second["index_plan"] == {"new": 0, "changed": 0, "unchanged": 3, "deleted": 0}
    assert second["validation"]["chunks"]["reused_from"] == first["run_id"]
    assert second["validation"]["documents"]["reused_from"] == first["lineage"]["ingest_run_id"]
    assert second["validation"]["chunks"]["evaluated"] == first["validation"]["chunks"]["evaluated"]
    assert second["disposition"]["action"] == "keep" and second["serving"] == first["serving"]
    assert second["table"] == first["table"] and second["chunks"]["total"] == first["chunks"]["total"]
    record = lake.read_run(second["run_id"])
    assert record["status"] == "ok" and record["ended_at"] is not None
    assert record["outputs"]["validation"]["chunks"]["reused_from"] == first["run_id"]
    assert lake.read_validation(second["run_id"], "chunks")["meta"]["reused_from"] == first["run_id"]

    (src / "faq.md").write_text("# FAQ\n\nHow do I pay? With a card or cash.")
    third = _index(src, lake_dir)
    assert "reused_from" not in third["validation"]["chunks"] and "reused_from" not in third["validation"]["documents"]
    assert third["index_plan"]["changed"] == 1 and third["table"]["version"] > first["table"]["version"]


def test_index_change_and_delete(prefect_backend, fake, tmp_path, lake_dir):
    src = _corpus(tmp_path / "src")
    _index(src, lake_dir)
    old_guide = {r["chunk_id"]: r for r in _table_rows(lake_dir) if r["doc_id"] == "guide.md"}
    notes_chunks = sum(1 for r in _table_rows(lake_dir) if r["doc_id"] == "notes.txt")
    (src / "notes.txt").unlink()
    text = (src / "guide.md").read_text().replace("Open the app and sign up.", "Open the new app, then sign up with a card.")
    (src / "guide.md").write_text(text)
    fake.encoded.clear()

    summary = _index(src, lake_dir)
    assert summary["documents"]["changed"] == 1 and summary["documents"]["deleted"] == 1
    rows = _table_rows(lake_dir)
    assert not [r for r in rows if r["doc_id"] == "notes.txt"], "a deleted document's chunks must be gone"
    new_guide = {r["chunk_id"]: r for r in rows if r["doc_id"] == "guide.md"}
    assert set(old_guide) - set(new_guide), "the edited chunk must be replaced"
    assert set(old_guide) & set(new_guide), "untouched sibling chunks keep their ids"
    # Only text that is new is encoded; the untouched siblings reuse their vectors.
    assert summary["chunks"]["embedded"] == len(fake.encoded) == len(set(new_guide) - set(old_guide))
    assert summary["chunks"]["reused"] == len(set(new_guide) & set(old_guide))
    assert summary["chunks"]["deleted"] == notes_chunks + len(set(old_guide) - set(new_guide))
    assert summary["chunks"]["total"] == len(rows)
    assert all(r["doc_sha256"] != old_guide[next(iter(old_guide))]["doc_sha256"] for r in new_guide.values())
    assert len({(r["doc_id"], r["position"]) for r in rows}) == len(rows)


def test_index_more_changed_documents_than_one_batch(prefect_backend, fake, tmp_path, lake_dir, monkeypatch):
    monkeypatch.setenv("RAGLOOP_INDEX__DOCS_PER_BATCH", "2")
    files = {f"doc{i}.md": f"# Doc {i}\n\nBody {i} about station {i}.\n\n" + LONG_SECTION[: 300 + 20 * i] for i in range(7)}
    src = write_files(tmp_path / "src", files)
    _index(src, lake_dir)
    for i in range(7):
        (src / f"doc{i}.md").write_text(files[f"doc{i}.md"] + f"\n\nAppendix {i}.")
    summary = _index(src, lake_dir)
    assert summary["documents"]["changed"] == 7 and summary["documents_indexed"] == 7
    rows = _table_rows(lake_dir)
    assert {r["doc_id"] for r in rows} == set(files)
    assert all(any(f"Appendix {i}." in r["text"] for r in rows if r["doc_id"] == f"doc{i}.md") for i in range(7))
    assert len({r["chunk_id"] for r in rows}) == len(rows) == summary["chunks"]["total"]


def test_index_strategy_change_rechunks_but_reuses_vectors(prefect_backend, fake, tmp_path, lake_dir):
    src = write_files(tmp_path / "src", {"a.txt": "Short note one.", "b.txt": "Short note two."})
    _index(src, lake_dir)
    fake.encoded.clear()
    summary = _index(src, lake_dir, chunking="recursive")
    assert summary["documents_indexed"] == 2
    assert summary["chunks"]["embedded"] == 0 and summary["chunks"]["reused"] == 2
    assert {r["chunker_hash"] for r in _table_rows(lake_dir)} == {summary["lineage"]["chunker_hash"]}


def test_index_quarantines_bad_files_and_indexes_good_ones(prefect_backend, fake, tmp_path, lake_dir):
    src = _corpus(tmp_path / "src")
    write_files(src, {"broken.pdf": b"%PDF-1.4\n1 0 obj <<", "blob.txt": b"\x00\x01\x02binary", "empty.md": ""})
    summary = _index(src, lake_dir)
    assert summary["status"] == "ok"
    reasons = {q["source"].rsplit("/", 1)[-1]: q["reason"] for q in summary["quarantine"]}
    assert reasons == {"broken.pdf": "parse_error", "blob.txt": "binary", "empty.md": "empty"}
    assert {r["doc_id"] for r in _table_rows(lake_dir)} == {"guide.md", "faq.md", "notes.txt"}


def test_cli_index_json_prints_one_object_and_records_the_run(prefect_backend, fake, tmp_path, lake_dir, capsys):
    src = _corpus(tmp_path / "src")
    code = main(["index", "--source", str(src), "--lake", str(lake_dir), "--json"])
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert code == 0 and out.count("\n") == 1
    assert summary["status"] == "ok" and summary["chunks"]["total"] > 0
    from ragloop.tasks.storage import Lake

    runs = Lake(str(lake_dir)).read_runs().to_pylist()
    assert {r["flow"]: r["status"] for r in runs} == {"ingest": "ok", "index": "ok"}
    assert all(r["ended_at"] is not None for r in runs)


def test_cli_index_prints_its_summary_in_words_and_exits_0(prefect_backend, fake, tmp_path, lake_dir, capsys):
    src = _corpus(tmp_path / "src")
    assert main(["index", "--source", str(src), "--lake", str(lake_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(": ok") and lines[1].startswith("documents: 3 seen - 3 new")
    assert "index serve: first index of the lake" in lines and not any(line.startswith(("error", "warning")) for line in lines)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["index", "--source", str(empty), "--lake", str(tmp_path / "other")]) == 0
    assert "warning: no documents under the sources" in capsys.readouterr().out


def test_cli_missing_source_exits_2_before_any_work(prefect_backend, tmp_path, lake_dir, capsys):
    code = main(["index", "--source", str(tmp_path / "nope"), "--lake", str(lake_dir), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 2 and "ingest.sources" in summary["error"] and "nope" in summary["error"]
    assert not (lake_dir / "runs").exists()


# -- issue 17: moves reuse vectors, one commit per run, scoped cleanup, the mass-delete guard ------------
def test_index_rename_folder_move_and_nfc_respelling_reuse_every_vector(prefect_backend, fake, tmp_path, lake_dir):
    import shutil
    import unicodedata

    nfd = unicodedata.normalize("NFD", "résumé.md")
    src = write_files(tmp_path / "src", {"a.md": "# A\n\nAlpha text about docks.", "guide/b.md": "# B\n\nBravo text.",
                                         "guide/c.md": "# C\n\nCharlie text.", nfd: "# R\n\nRésumé text."})
    first = _index(src, lake_dir)
    total = first["chunks"]["total"]
    (src / "a.md").rename(src / "z.md")  # mv a.md z.md
    shutil.move(str(src / "guide"), str(src / "guides"))  # a folder rename moves two documents
    (src / nfd).rename(src / unicodedata.normalize("NFC", "résumé.md"))
    fake.encoded.clear()
    moved = _index(src, lake_dir)
    assert moved["status"] == "ok"
    assert moved["chunks"]["embedded"] == 0 and fake.encoded == [], "a move re-embeds nothing"
    assert moved["chunks"]["reused"] == 3 and moved["index_plan"] == {"new": 3, "changed": 0, "unchanged": 1, "deleted": 3}
    assert sorted(r["doc_id"] for r in _table_rows(lake_dir)) == sorted(
        ["z.md", "guides/b.md", "guides/c.md", unicodedata.normalize("NFC", "résumé.md")])
    assert moved["chunks"]["total"] == total


def test_index_run_that_dies_midway_commits_nothing_and_the_retry_counts_its_work(
        prefect_backend, fake, tmp_path, lake_dir, monkeypatch):
    monkeypatch.setenv("RAGLOOP_INDEX__DOCS_PER_BATCH", "1")
    src = _corpus(tmp_path / "src")
    _index(src, lake_dir)
    before = sorted((r["chunk_id"], r["doc_sha256"]) for r in _table_rows(lake_dir))
    table = lancedb.connect(str(lake_dir / "lancedb")).open_table("chunks__hash_fake")
    version = table.version
    (src / "notes.txt").unlink()
    (src / "guide.md").write_text((src / "guide.md").read_text() + "\n\n## New\n\nA new section on helmets.")
    (src / "faq.md").write_text((src / "faq.md").read_text() + "\n\nAnd a new answer on lockers.")
    real = fake.encode
    calls = []

    def dies_on_second_batch(texts):
        calls.append(texts)
        if len(calls) == 2:
            raise RuntimeError("killed between two batches")
        return real(texts)

    monkeypatch.setattr(fake, "encode", dies_on_second_batch)
    with pytest.raises(RuntimeError, match="killed between two batches"):
        _index(src, lake_dir)
    table.checkout_latest()
    assert table.version == version, "no table version holds half a run"
    assert sorted((r["chunk_id"], r["doc_sha256"]) for r in _table_rows(lake_dir)) == before
    monkeypatch.setattr(fake, "encode", real)
    retry = _index(src, lake_dir)
    assert retry["documents"]["changed"] == 0, "the ingest already recorded the edit"
    assert retry["index_plan"] == {"new": 0, "changed": 2, "unchanged": 0, "deleted": 1}, "the retry reports what it redoes"
    assert retry["chunks"]["embedded"] > 0


def test_index_with_one_source_keeps_the_other_sources_documents(prefect_backend, fake, tmp_path, lake_dir, capsys):
    s1 = write_files(tmp_path / "s1", {"one.md": "# One\n\nfirst source text"})
    s2 = write_files(tmp_path / "s2", {"two.md": "# Two\n\nsecond source text", "three.md": "# Three\n\nmore"})
    index_flow.index_corpus(sources=[str(s1), str(s2)], lake=str(lake_dir))
    only_s1 = index_flow.index_corpus(sources=[str(s1)], lake=str(lake_dir))
    assert only_s1["status"] == "ok" and only_s1["chunks"]["deleted"] == 0
    assert only_s1["scope"]["other_sources_kept"] == 2
    # Two sources: doc ids carry the source's label (issue 17, kind 5); back to one, plain paths again.
    assert {r["doc_id"] for r in _table_rows(lake_dir)} == {"s1/one.md", "s2/two.md", "s2/three.md"}
    code = main(["index", "--source", str(s1), "--forget-source", str(s2), "--lake", str(lake_dir), "--json"])
    forgot = json.loads(capsys.readouterr().out)
    assert code == 0 and forgot["scope"]["forgotten"] == 2
    assert {r["doc_id"] for r in _table_rows(lake_dir)} == {"one.md"}


def _task_runs(state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=runs, sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50)


def test_index_of_an_emptied_source_stops_before_any_write(prefect_backend, fake, tmp_path, lake_dir, capfd):
    src = _corpus(tmp_path / "src")
    _index(src, lake_dir)
    rows, refs = _table_rows(lake_dir), json.loads((lake_dir / "refs" / "documents.json").read_text())
    for name in ("guide.md", "faq.md"):
        (src / name).unlink()  # 2 of 3 gone: a failed sync
    capfd.readouterr()
    assert main(["index", "--source", str(src), "--lake", str(lake_dir)]) == 1
    out = capfd.readouterr().out
    assert "error: ingest run" in out and "2 of its 3 documents would be deleted" in out
    # The refusal is the run's answer, not a crash: no task of the run fails (a failed task is logged with
    # its traceback before the one-line message).
    state = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir), return_state=True)
    assert state.result()["status"] == "failed"
    assert {run.name.rsplit("-", 1)[0]: run.state.type.value for run in _task_runs(state)} == {"build-snapshot": "COMPLETED"}
    code = main(["index", "--source", str(src), "--lake", str(lake_dir), "--json"])
    summary = json.loads(capfd.readouterr().out)
    assert code == 1 and summary["status"] == "failed"
    assert f"source {src.resolve()}: 2 of its 3 documents would be deleted" in summary["error"]
    assert "--allow-mass-delete" in summary["error"]
    assert _table_rows(lake_dir) == rows and json.loads((lake_dir / "refs" / "documents.json").read_text()) == refs
    code = main(["index", "--source", str(src), "--allow-mass-delete", "--lake", str(lake_dir), "--json"])
    assert code == 0 and json.loads(capfd.readouterr().out)["documents"]["deleted"] == 2
    assert {r["doc_id"] for r in _table_rows(lake_dir)} == {"notes.txt"}


def test_front_matter_reaches_the_chunk_rows(prefect_backend, fake, tmp_path, lake_dir):
    src = write_files(tmp_path / "src", {"a.md": "---\nteam: ops\nlang: en\n---\n# A\n\nAlpha text.", "b.md": "# B\n\nBravo."})
    _index(src, lake_dir)
    meta = {r["doc_id"]: json.loads(r["metadata"]) for r in _table_rows(lake_dir)}
    assert meta["a.md"]["front_matter"] == {"team": "ops", "lang": "en"} and "front_matter" not in meta["b.md"]


def test_index_and_ingest_summaries_are_dumps_of_their_models(prefect_backend, fake, tmp_path, lake_dir):
    from ragloop.flows.ingest import ingest_corpus
    from ragloop.tasks.index_run import IndexSummary
    from ragloop.tasks.ingest_run import IngestSummary

    src = _corpus(tmp_path / "src")
    indexed = _index(src, lake_dir)
    assert IndexSummary.model_validate(indexed).dump() == indexed
    ingested = ingest_corpus(sources=[str(src)], lake=str(lake_dir))
    assert IngestSummary.model_validate(ingested).dump() == ingested


# -- issue 22: the ANN index follows index.ann ------------------------------------------------------------
def test_cli_pq_sub_vectors_that_do_not_divide_the_dimension_exit_2_before_any_work(prefect_backend, fake, tmp_path,
                                                                                     lake_dir, capsys, monkeypatch):
    monkeypatch.setenv("RAGLOOP_INDEX__ANN__TYPE", "ivf_pq")
    monkeypatch.setenv("RAGLOOP_INDEX__ANN__NUM_SUB_VECTORS", "5")
    code = main(["index", "--source", str(_corpus(tmp_path / "src")), "--lake", str(lake_dir), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 2 and summary["error"] == "index.ann.num_sub_vectors: 5 does not divide the embedding dimension 32"
    assert not (lake_dir / "runs").exists()


def test_index_builds_the_ann_index_of_index_ann_and_rebuilds_it_when_that_changes(prefect_backend, fake, tmp_path,
                                                                                   lake_dir, monkeypatch):
    src = _corpus(tmp_path / "src")
    monkeypatch.setenv("RAGLOOP_INDEX__ANN_MIN_ROWS", "5")
    first = _index(src, lake_dir)
    assert first["indexes"]["ann"] == "created (hnsw_sq m=20 ef_construction=300 partitions=auto)"
    assert first["lineage"]["ann_index"] == {"type": "hnsw_sq", "num_partitions": None, "m": 20, "ef_construction": 300}
    assert _index(src, lake_dir)["indexes"]["ann"] == "unchanged"
    monkeypatch.setenv("RAGLOOP_INDEX__ANN__M", "8")
    rebuilt = _index(src, lake_dir)
    assert rebuilt["indexes"]["ann"] == ("rebuilt (hnsw_sq m=20 ef_construction=300 partitions=auto -> "
                                         "hnsw_sq m=8 ef_construction=300 partitions=auto)")
    assert rebuilt["chunks"]["embedded"] == 0
