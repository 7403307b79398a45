"""An index run's decisions without Prefect: the chunker check, the ingest hand-over, the one commit's
batches and counts, refresh and tag, where a validated version goes, the summary and its log lines."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import pytest

from ragloop.tasks import index_run, indexing, interrupts
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.ingestion import build_snapshot
from ragloop.tasks.settings import ChunkingConfig, ConfigError, IndexConfig, IngestConfig
from ragloop.tasks.storage import Lake
from ragloop.tasks.validation import ValidationReport
from tests.conftest import write_files

SUMMARIES = json.loads((Path(__file__).parent / "data" / "stage_summaries.json").read_text())


class Timer:
    """What flows.common.StageTimer offers, without Prefect."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        yield
        self.seconds[name] += 1.0


def _report(success: bool = True) -> ValidationReport:
    failures = [] if success else [{"type": "expect_column_values_to_be_unique", "unexpected_count": 2}]
    return ValidationReport("chunks", success, 5, failures, {})


@pytest.fixture
def lake(lake_dir) -> Lake:
    return Lake(str(lake_dir))


@pytest.fixture
def store(lake, fake_embedder):
    return indexing.ChunkStore(lake, fake_embedder)


@pytest.fixture
def chunker(fake_embedder):
    return index_run.build_chunker(ChunkingConfig(max_tokens=16, overlap_tokens=0), fake_embedder)


def _snapshot(lake, tmp_path, files):
    result = build_snapshot(lake, [str(write_files(tmp_path / "src", files))], IngestConfig())
    lake.write_ref("documents", {"snapshot_id": result.snapshot_id, "run_id": "ingest-1"})
    return result.snapshot_id


@pytest.mark.parametrize("config, match", [
    (ChunkingConfig(max_tokens=65), "exceeds the embedder's limit of 64"),
    (ChunkingConfig(overlap_tokens=64), "must be smaller than the chunk size of 64"),  # the embedder's limit
])
def test_build_chunker_turns_a_misfit_into_a_config_error(fake_embedder, config, match):
    with pytest.raises(ConfigError, match=match):
        index_run.build_chunker(config, fake_embedder)


def test_carried_outputs_repeat_only_the_ingest_keys_it_has():
    ingested = {"run_id": "i", "status": "ok", "documents": {"seen": 1}, "notes": {}, "lake": "/l", "validation": {}}
    assert index_run.carried_outputs(ingested) == {"documents": {"seen": 1}, "notes": {}}
    assert list(index_run.carried_outputs({**ingested, "quarantine": []})) == ["documents", "quarantine", "notes"]


def test_an_ok_ingest_is_no_failure():
    assert index_run.ingest_failed("r", {}, {"run_id": "i", "status": "ok"}) is None


@pytest.mark.parametrize("ingested, error, keys", [
    ({"run_id": "i1", "status": "failed", "lake": "/l", "error": "source /s: 2 of its 3 documents would be deleted"},
     "ingest run i1 failed: source /s: 2 of its 3 documents would be deleted", ["error", "validation"]),
    ({"run_id": "i2", "status": "failed", "lake": "/l", "documents": {"seen": 3}, "quarantine": [], "scope": {},
      "notes": {}, "validation": {"documents": {"success": False}}},
     "ingest run i2 failed", ["documents", "quarantine", "scope", "notes", "error", "validation"]),
])
def test_a_failed_ingest_fails_the_index_run_with_what_the_ingest_had(ingested, error, keys):
    summary = index_run.ingest_failed("idx", {"config_hash": "c"}, ingested)
    assert summary.status == "failed" and summary.error == error
    assert list(summary.outputs()) == keys
    assert summary.validation == ingested.get("validation", {})


def test_index_lineage_names_snapshot_ingest_chunker_and_embedder(chunker, fake_embedder):
    lineage = index_run.index_lineage({"snapshot_id": "s1", "run_id": "i1"}, chunker, chunker.config, fake_embedder)
    assert lineage["snapshot_id"] == "s1" and lineage["ingest_run_id"] == "i1"
    assert lineage["chunker_hash"] == chunker.hash and lineage["chunker"]["capacity"] == 16
    assert lineage["embedder"] == {"name": fake_embedder.name, "weights_sha256": fake_embedder.weights_sha256,
                                   "dim": 32, "max_tokens": 64}


def test_the_plan_is_one_commit_that_counts_its_work_and_a_rerun_commits_nothing(lake, store, chunker, fake_embedder,
                                                                                tmp_path):
    long = " ".join(f"alpha{i} words" for i in range(40))
    snapshot_id = _snapshot(lake, tmp_path, {"a.md": f"# A\n\n{long}", "b.txt": "bravo", "c.txt": "bravo"})
    plan = indexing.plan_index(lake, snapshot_id, store, chunker.hash)
    timer, commits = Timer(), []

    def commit(store_, batches, doc_ids, append):
        commits.append((doc_ids, append))
        return indexing.ChunkStore.commit_run(store_, batches, doc_ids, append=append)

    batches = index_run.ChunkBatches(lake, snapshot_id, plan, chunker, store, fake_embedder, 1, timer)
    assert index_run.commit_plan(store, plan, batches, timer, commit=commit) == 0
    assert commits == [([], True)], "a first index only adds documents: streamed as an append"
    rows = store.count()
    assert rows > 3, "the long document is several chunks"
    assert batches.counts == {"embedded": rows - 1, "reused": 1, "written": rows, "truncated": 0}, \
        "c's text was encoded for b in an earlier batch of the same commit"
    assert sorted(batches.facts()["chunk_id"]) == sorted(store.profile()["chunk_id"].to_pylist())
    assert timer.seconds["upsert"] == 1.0 - timer.seconds["chunk"] - timer.seconds["embed"], "upsert minus the work inside"
    assert index_run.changes_table(plan)

    again = indexing.plan_index(lake, snapshot_id, store, chunker.hash)
    timer = Timer()
    batches = index_run.ChunkBatches(lake, snapshot_id, again, chunker, store, fake_embedder, 1, timer)
    assert index_run.commit_plan(store, again, batches, timer, commit=commit) == 0 and len(commits) == 1
    assert not index_run.changes_table(again) and "upsert" not in timer.seconds
    assert list(batches.facts().columns) == index_run.FACT_COLUMNS and batches.facts().empty


class _Store:
    def __init__(self, stale: bool) -> None:
        self.stale, self.asked, self.tags = stale, 0, []

    def indexes_stale(self, config) -> bool:
        self.asked += 1
        return self.stale

    def tag(self, tag: str) -> None:
        self.tags.append(tag)


@pytest.mark.parametrize("changed, stale, refresh, asked", [
    (True, False, True, 0),    # a change always refreshes; staleness is not even looked at
    (False, True, True, 1),    # a no-op run repairs what a killed run left undone
    (False, False, False, 1),
])
def test_indexes_are_refreshed_after_a_change_or_when_stale(changed, stale, refresh, asked):
    plan = indexing.IndexPlan({"a.md"} if changed else set(), [], 0)
    store = _Store(stale)
    assert index_run.needs_refresh(plan, store, IndexConfig()) is refresh and store.asked == asked
    index_run.tag_version(store, "run-1", refresh)
    assert store.tags == (["run-1"] if refresh else [])


def test_a_version_that_failed_its_suite_moves_no_ref(lake, store):
    plan = indexing.IndexPlan({"a.md"}, [], 0)
    assert index_run.place_version(lake, store, "r1", "h1", plan, _report(success=False)) is None
    assert lake.read_ref("serving") is None and lake.read_ref("candidate") is None


def test_the_first_validated_version_is_served(lake, store):
    placed = index_run.place_version(lake, store, "r1", "h1", indexing.IndexPlan({"a.md"}, [], 0), _report())
    assert placed["action"] == "serve" and placed["serving"] == {"table": store.name, "version": store.version}
    assert lake.read_ref("serving")["run_id"] == "r1"


def _summary(store, placed, report):
    class Batches:
        counts = {"embedded": 4, "reused": 1, "written": 5, "truncated": 0}

    ingested = {"run_id": "i1", "status": "ok", "snapshot_id": "s1", "documents": {"seen": 2}, "quarantine": [],
                "scope": {}, "notes": {}, "validation": {"documents": {"success": True}}}
    plan = indexing.IndexPlan({"a.md", "b.md"}, ["c.md"], 1, ["b.md"])
    return index_run.summarize("idx", {"config_hash": "c"}, ingested, "/lake", store, plan, Batches(), 3, 9,
                               {"fts": "created"}, report, {"ingest": 0.5}, placed)


def test_a_placed_run_is_ok_and_says_where_its_version_went(store):
    placed = {"action": "candidate", "reason": "new embedder", "serving": None, "candidate": {"table": "t", "version": 2}}
    summary = _summary(store, placed, _report())
    assert summary.status == "ok" and summary.disposition == {"action": "candidate", "reason": "new embedder"}
    assert summary.chunks == {"total": 9, "embedded": 4, "reused": 1, "written": 5, "deleted": 3, "truncated": 0}
    assert summary.index_plan == {"new": 1, "changed": 1, "unchanged": 1, "deleted": 1}
    assert summary.validation == {"documents": {"success": True}, "chunks": _report().summary()}
    assert summary.dump()["serving"] is None, "a null that was set stays in the summary"
    assert [level for level, _ in index_run.log_lines(summary)] == [logging.INFO, logging.INFO]
    assert "candidate (new embedder)" in index_run.log_lines(summary)[0][1]
    assert "9 chunks; 2 documents re-chunked, 4 texts embedded, 1 vectors reused, 3 chunks deleted" in \
        index_run.log_lines(summary)[1][1]


def test_a_run_whose_suite_failed_has_no_placement_and_logs_the_failures(store):
    summary = _summary(store, None, _report(success=False))
    assert summary.status == "failed"
    assert not {"serving", "candidate", "disposition", "error"} & set(summary.dump())
    [(level, message)] = index_run.log_lines(summary)
    assert level == logging.ERROR and "expect_column_values_to_be_unique" in message and "not moved" in message


@pytest.mark.parametrize("name", ["index_ok", "index_ingest_failed"])
def test_index_summaries_of_the_flow_round_trip_through_the_model(name):
    produced = SUMMARIES[name]  # returned by index-corpus (tests/unit/data/stage_summaries.json)
    model = index_run.IndexSummary.model_validate(produced)
    assert model.dump() == produced
    assert set(model.outputs()) == set(produced) - {"run_id", "status", "lineage"}


@pytest.mark.parametrize("n, first, size, sizes", [
    (0, 4, 32, []),
    (3, 4, 32, [3]),
    (156, 4, 32, [4, 8, 16, 32, 32, 32, 32]),
    (10, 1, 3, [1, 2, 3, 3, 1]),
    (5, 8, 2, [2, 2, 1]),  # a first step bigger than the size is the size
])
def test_pipeline_steps_start_small_and_cover_every_document_in_order(n, first, size, sizes):
    steps = index_run.pipeline_steps(list(range(n)), first, size)
    assert [len(s) for s in steps] == sizes
    assert [d for s in steps for d in s] == list(range(n))


def test_pipelined_keeps_order_bounds_lookahead_and_raises_in_the_consumer():
    started = []

    def work(i):
        started.append(i)
        if i == 5:
            raise ValueError("chunking failed on 5")
        return i * 10

    timer = Timer()
    seen = []
    with pytest.raises(ValueError, match="chunking failed on 5"):
        for result in index_run.pipelined(list(range(8)), work, timer, "chunk", ahead=2):
            seen.append(result)
            assert len(started) <= len(seen) + 2, "never more than two steps ahead"
    assert seen == [0, 10, 20, 30, 40]
    assert list(index_run.pipelined([3], work, timer, "chunk")) == [30]
    assert list(index_run.pipelined([], work, timer, "chunk")) == []


def test_a_pipelined_window_gives_the_same_chunk_ids_and_vectors(lake, store, chunker, fake_embedder, tmp_path,
                                                                  monkeypatch):
    files = {f"d{i:02}.md": f"# Doc {i}\n\n" + " ".join(f"w{(i * 7 + j) % 50} text{j}" for j in range(30 + i))
             for i in range(20)}
    files["dup.md"] = files["d03.md"]  # a text repeated in another step of the window
    snapshot_id = _snapshot(lake, tmp_path, files)
    plan = indexing.plan_index(lake, snapshot_id, store, chunker.hash)
    (docs,) = list(indexing.iter_document_batches(lake, snapshot_id, plan.to_index, 256))
    monkeypatch.setattr(index_run, "PIPELINE_FIRST_DOCS", 1)
    monkeypatch.setattr(index_run, "PIPELINE_DOCS", 3)

    def window(per_text: bool):
        monkeypatch.setattr(fake_embedder, "per_text", per_text, raising=False)
        batches = index_run.ChunkBatches(lake, snapshot_id, plan, chunker, store, fake_embedder, 256, Timer())
        chunks, vectors = batches._chunk_and_embed(docs)
        return chunks, vectors, batches.counts

    whole, vectors, counts = window(per_text=False)
    piped, piped_vectors, piped_counts = window(per_text=True)
    assert [c.chunk_id for c in whole] == [c.chunk_id for d in docs for c in whole if c.doc_id == d.doc_id], \
        "in one piece: document order"
    assert sorted(c.chunk_id for c in piped) == sorted(c.chunk_id for c in whole) and len(whole) > 40
    vector_of = {c.chunk_id: v.tobytes() for c, v in zip(whole, vectors)}
    assert all(vector_of[c.chunk_id] == v.tobytes() for c, v in zip(piped, piped_vectors))
    assert piped_vectors.dtype == vectors.dtype
    assert piped_counts["embedded"] == counts["embedded"], "each distinct text is encoded once either way"
    length = {d.doc_id: len(d.text) for d in docs}
    order = list(dict.fromkeys(c.doc_id for c in piped))
    assert [length[d] for d in order] == sorted(length.values()), "pipelined: shortest documents first"


# -- issue 22: windows on workers (runner.kind dask), here in-process ----------------------------------------
def test_in_order_keeps_input_order_bounds_what_is_submitted_and_raises_in_the_consumer():
    from concurrent.futures import Future

    submitted: list[int] = []

    def submit(item):
        submitted.append(item)
        future = Future()
        if item == 4:
            future.set_exception(RuntimeError("window 4 failed"))
        else:
            future.set_result(item * 10)
        return future

    results = index_run.in_order(iter(range(4)), submit, ahead=2)
    assert next(results) == (0, 0) and submitted == [0, 1], "at most `ahead` submitted before the first result"
    assert list(results) == [(1, 10), (2, 20), (3, 30)]
    with pytest.raises(RuntimeError, match="window 4 failed"):
        list(index_run.in_order(iter(range(6)), submit, ahead=2))
    assert list(index_run.in_order(iter([]), submit, ahead=3)) == []


def _fake_factory(config):
    from ragloop.tasks.embedding import HashEmbedder

    _fake_factory.calls += 1
    return HashEmbedder(dim=32, max_tokens=64)


_fake_factory.calls = 0


def test_a_window_on_a_worker_gives_the_local_chunks_and_vectors_and_builds_its_model_once(lake, store, chunker,
                                                                                            fake_embedder, tmp_path):
    from ragloop.tasks.settings import EmbeddingConfig

    files = {f"d{i}.md": f"# Doc {i}\n\n" + " ".join(f"w{(i * 7 + j) % 50} text{j}" for j in range(30 + i))
             for i in range(6)}
    snapshot_id = _snapshot(lake, tmp_path, files)
    plan = indexing.plan_index(lake, snapshot_id, store, chunker.hash)
    windows = list(indexing.iter_document_batches(lake, snapshot_id, plan.to_index, 2))
    job = index_run.WindowJob(lake.uri, store.name, store.dim, store.version, ChunkingConfig(max_tokens=16, overlap_tokens=0),
                              EmbeddingConfig(), _fake_factory)
    index_run._WORKER_MODELS.clear()
    _fake_factory.calls = 0

    local = index_run.ChunkBatches(lake, snapshot_id, plan, chunker, store, fake_embedder, 2, Timer())
    remote = index_run.ChunkBatches(lake, snapshot_id, plan, chunker, store, fake_embedder, 2, Timer(),
                                    remote=lambda docs: ((d, index_run.chunk_and_embed_window(d, job)) for d in docs))
    local_rows, remote_rows = [t.drop_columns(["embedded_at"]) for t in local], [t.drop_columns(["embedded_at"]) for t in remote]
    assert len(windows) == 3 and len(remote_rows) == 3
    assert all(a.equals(b) for a, b in zip(local_rows, remote_rows))
    assert remote.counts["written"] == local.counts["written"] > 0
    assert _fake_factory.calls == 1, "one embedder per worker process, not per window"
    assert index_run.window_job(lake, store, _settings(lake), _fake_factory).version == store.version


def _settings(lake):
    from ragloop.tasks.settings import load_settings

    return load_settings(overrides={"lake": lake.uri})


def test_only_an_add_only_plan_is_appended(lake, store, chunker, fake_embedder, tmp_path):
    """An append never merges by chunk id: a plan that re-chunks or deletes a document goes through the merge."""
    first = _snapshot(lake, tmp_path / "v1", {"a.txt": "alpha", "b.txt": "bravo"})
    plan = indexing.plan_index(lake, first, store, chunker.hash)
    assert index_run.appends_only(plan)
    index_run.commit_plan(store, plan, index_run.ChunkBatches(lake, first, plan, chunker, store, fake_embedder, 8,
                                                              Timer()), Timer())
    added = _snapshot(lake, tmp_path / "v2", {"a.txt": "alpha", "b.txt": "bravo", "c.txt": "charlie"})
    assert index_run.appends_only(indexing.plan_index(lake, added, store, chunker.hash))
    for files in ({"a.txt": "alpha edited", "b.txt": "bravo"}, {"a.txt": "alpha"}):
        snapshot_id = _snapshot(lake, tmp_path / str(len(files)) / files["a.txt"].replace(" ", "_"), files)
        changed = indexing.plan_index(lake, snapshot_id, store, chunker.hash)
        assert not index_run.appends_only(changed), files
        index_run.commit_plan(store, changed, index_run.ChunkBatches(lake, snapshot_id, changed, chunker, store,
                                                                     fake_embedder, 8, Timer()), Timer())
        texts = sorted(store.scan(["text"])["text"].to_pylist())
        assert texts == sorted(files.values()), "merged: no stale row left, none doubled"


def test_a_worker_reads_the_table_without_writing_a_ref_or_creating_it(lake, store):
    before = sorted(p.name for p in Path(lake.uri).rglob("*"))
    reader = indexing.ChunkStore.reader(lake, store.name, store.dim, store.version)
    assert reader.vectors_for(["nope.md"], ["0" * 64]) == {}
    assert sorted(p.name for p in Path(lake.uri).rglob("*")) == before
    with pytest.raises(Exception):
        indexing.ChunkStore.reader(lake, "chunks__missing", store.dim, 1)


# -- issue 23: a no-op proven from the recorded state, without a scan or a suite run ----------------------------
def _run(lake, store, chunker, embedder, snapshot_id, run_id, config=IndexConfig()):
    """An index run's table steps as the flow takes them, without Prefect."""
    from ragloop.tasks import validation

    plan = index_run.plan_run(lake, store, snapshot_id, chunker.hash, config)
    batches = index_run.ChunkBatches(lake, snapshot_id, plan, chunker, store, embedder, 8, Timer())
    index_run.commit_plan(store, plan, batches, Timer())
    refresh = index_run.needs_refresh(plan, store, config)
    if refresh:
        store.refresh_indexes(config)
    report = index_run.reused_chunks_report(lake, store, plan, embedder) or validation.validate_chunks(
        store.profile().to_pandas(), batches.facts(), store.dim, embedder.counter.max_tokens,
        index_run.chunks_subject(store, embedder))
    lake.write_validation(run_id, report.suite, report.result)
    index_run.tag_version(store, run_id, refresh)
    index_run.record_state(lake, store, run_id, snapshot_id, chunker.hash, config, plan, report)
    return plan, report


def test_a_rerun_on_the_state_the_last_run_left_is_proven_empty_without_a_scan(lake, store, chunker, fake_embedder,
                                                                               tmp_path, monkeypatch):
    snapshot_id = _snapshot(lake, tmp_path, {"a.md": "# A\n\nalpha bravo", "b.txt": "charlie delta"})
    first, checked = _run(lake, store, chunker, fake_embedder, snapshot_id, "run-1")
    assert first.proven_by is None and checked.reused_from is None and checked.success
    state = lake.read_ref(f"indexed__{store.name}")
    assert state["run_id"] == "run-1" and state["version"] == store.version and state["documents"] == 2

    def no_scan(*args, **kwargs):
        raise AssertionError("a proven no-op scans nothing")

    monkeypatch.setattr(indexing.ChunkStore, "doc_state", no_scan)
    monkeypatch.setattr(indexing.ChunkStore, "indexes_stale", no_scan)
    monkeypatch.setattr(indexing.ChunkStore, "profile", no_scan)
    version = store.version
    plan, report = _run(lake, store, chunker, fake_embedder, snapshot_id, "run-2")
    assert plan.proven_by == "run-1" and plan.counts() == {"new": 0, "changed": 0, "unchanged": 2, "deleted": 0}
    assert report.success and report.reused_from == "run-1" and report.evaluated == checked.evaluated
    assert store.version == version and lake.read_ref(f"indexed__{store.name}") == state, "nothing rewritten"


@pytest.mark.parametrize("change", ["snapshot", "chunker", "index settings", "table moved on", "rows differ",
                                    "verdict missing"])
def test_anything_the_state_does_not_prove_plans_and_validates_as_before(lake, store, chunker, fake_embedder,
                                                                          tmp_path, change):
    snapshot_id = _snapshot(lake, tmp_path, {"a.md": "# A\n\nalpha bravo", "b.txt": "charlie delta"})
    _run(lake, store, chunker, fake_embedder, snapshot_id, "run-1")
    config = IndexConfig()
    if change == "snapshot":
        snapshot_id = _snapshot(lake, tmp_path / "other", {"a.md": "# A\n\nalpha bravo", "c.txt": "echo"})
    elif change == "chunker":
        chunker = index_run.build_chunker(ChunkingConfig(max_tokens=12, overlap_tokens=0), fake_embedder)
    elif change == "index settings":
        config = IndexConfig(fts=False)
    elif change == "table moved on":  # e.g. a run killed after its commit, before its indexes and its state
        store.delete_documents(["b.txt"])
    elif change == "rows differ":  # a table rebuilt to the same version number
        lake.write_ref(f"indexed__{store.name}", {**lake.read_ref(f"indexed__{store.name}"), "rows": 99})
    elif change == "verdict missing":
        (Path(lake.root) / "validations" / "run-1" / "chunks.json").unlink()
    plan, report = _run(lake, store, chunker, fake_embedder, snapshot_id, "run-2", config)
    if change == "verdict missing":  # the table state still proves the plan; the suite runs again
        assert plan.proven_by == "run-1" and report.reused_from is None and report.success
        assert lake.read_ref(f"indexed__{store.name}")["run_id"] == "run-2"
        return
    assert plan.proven_by is None and report.reused_from is None
    if change == "table moved on":
        assert plan.to_index == {"b.txt"}, "the deleted rows are written again"


class _StopsAfterFirstEncode(HashEmbedder):
    """The fake embedder, asking the process to stop (as the CLI's Ctrl-C handler does) once it encoded."""

    def __init__(self) -> None:
        super().__init__(dim=32, max_tokens=64)
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        interrupts.request_stop()
        return super().encode(texts)


def test_a_stop_request_ends_the_run_after_the_window_in_hand_and_commits_nothing(lake, store, chunker, tmp_path):
    """A Ctrl-C reaches the batches LanceDB consumes on its own thread (tasks.interrupts): the window being
    encoded ends, no further text is encoded, and the run's one commit writes nothing."""
    snapshot_id = _snapshot(lake, tmp_path, {f"d{i}.txt": f"document number {i} with a few words" for i in range(6)})
    plan = indexing.plan_index(lake, snapshot_id, store, chunker.hash)
    embedder = _StopsAfterFirstEncode()
    batches = index_run.ChunkBatches(lake, snapshot_id, plan, chunker, store, embedder, 1, Timer())
    try:
        with pytest.raises(interrupts.StopRequested, match="Ctrl-C"):
            index_run.commit_plan(store, plan, batches, Timer())
    finally:
        interrupts.clear()
    assert embedder.calls == [1], "one one-document window encoded, then nothing"
    assert store.count() == 0, "the aborted commit wrote no row"
    again = index_run.ChunkBatches(lake, snapshot_id, plan, chunker, store, HashEmbedder(dim=32, max_tokens=64), 1,
                                   Timer())
    index_run.commit_plan(store, plan, again, Timer())
    assert store.count() == 6, "cleared, the next run in the process goes through"
