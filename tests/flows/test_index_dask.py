"""runner.kind dask (issue 22): the index's chunk+embed windows on a LocalCluster of 2 processes write the
same table as the local runner, a window whose worker dies or raises is retried without duplicates, and a
bad runner config exits 2 naming the field. The hash fake embedder crosses to the workers by cloudpickle."""

from __future__ import annotations

import gc
import json
import os

import lancedb
import pytest

from ragloop.flows import index as index_flow
from ragloop.flows.cli import main
from tests.conftest import use_fakes, write_files

COLUMNS = ["chunk_id", "doc_id", "text", "text_sha256", "position", "n_tokens", "metadata", "chunker_hash"]


def _corpus(root, n: int = 7):
    return write_files(root, {
        f"doc{i}.md": f"# Doc {i}\n\n## Part\n\n" + "\n\n".join(
            f"Paragraph {j} of doc {i} is about bicycles, docks and batteries {i * j}." for j in range(12))
        + "\n\n## Shared\n\nThe same closing sentence in every document."
        for i in range(n)
    })


def _table(lake_dir) -> list[dict]:
    """Every row but embedded_at, vectors as bytes, sorted by chunk_id."""
    table = lancedb.connect(str(lake_dir / "lancedb")).open_table("chunks__hash_fake").to_arrow()
    rows = table.select(COLUMNS).to_pylist()
    vectors = table["vector"].combine_chunks().values.to_numpy(zero_copy_only=False).reshape(len(rows), -1)
    for row, vector in zip(rows, vectors):
        row["vector"] = vector.tobytes()
    return sorted(rows, key=lambda r: r["chunk_id"])


@pytest.fixture
def small_windows(monkeypatch):
    monkeypatch.setenv("RAGLOOP_INDEX__DOCS_PER_BATCH", "2")  # 7 documents = 4 windows


def _dask(monkeypatch):
    monkeypatch.setenv("RAGLOOP_RUNNER__KIND", "dask")
    monkeypatch.setenv("RAGLOOP_RUNNER__WORKERS", "2")


def test_dask_runner_writes_the_same_table_as_the_local_runner(prefect_backend, fake_embedder, small_windows,
                                                               monkeypatch, tmp_path):
    use_fakes(embedder=lambda config: fake_embedder)
    src = _corpus(tmp_path / "src")
    local = index_flow.index_corpus(sources=[str(src)], lake=str(tmp_path / "local"))
    _dask(monkeypatch)
    dask = index_flow.index_corpus(sources=[str(src)], lake=str(tmp_path / "dask"))
    assert local["status"] == dask["status"] == "ok"
    assert _table(tmp_path / "dask") == _table(tmp_path / "local")
    assert dask["chunks"]["total"] == local["chunks"]["total"] == dask["chunks"]["written"]
    # A text repeated across windows is encoded once per window on workers (no run-wide memo), once locally.
    assert dask["chunks"]["embedded"] >= local["chunks"]["embedded"]
    again = index_flow.index_corpus(sources=[str(src)], lake=str(tmp_path / "dask"))
    assert again["chunks"]["written"] == 0 and again["table"]["version"] == dask["table"]["version"]


class _DiesOnce:
    """An embedder factory whose first encode anywhere (marker file) exits its process or raises."""

    def __init__(self, fake, marker, how: str) -> None:
        self.fake, self.marker, self.how = fake, str(marker), how

    def __call__(self, config):
        return self

    def __getattr__(self, name):
        if name.startswith("__") or name in ("fake", "marker", "how"):  # unpickling: not set yet
            raise AttributeError(name)
        return getattr(self.fake, name)

    def encode(self, texts):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return self.fake.encode(texts)
        os.close(fd)
        if self.how == "exit":
            os._exit(1)
        raise RuntimeError("injected: the first window fails")


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_dask_window_that_fails_once_is_retried_without_duplicates(prefect_backend, fake_embedder, small_windows,
                                                                   monkeypatch, tmp_path, how):
    dies = _DiesOnce(fake_embedder, tmp_path / "died", how)
    use_fakes(embedder=dies)
    src = _corpus(tmp_path / "src")
    _dask(monkeypatch)
    summary = index_flow.index_corpus(sources=[str(src)], lake=str(tmp_path / "dask"))
    assert (tmp_path / "died").exists(), "the fault was injected"
    assert summary["status"] == "ok"
    rows = _table(tmp_path / "dask")
    assert len(rows) == len({r["chunk_id"] for r in rows}) == summary["chunks"]["total"]
    monkeypatch.setenv("RAGLOOP_RUNNER__KIND", "local")
    use_fakes(embedder=lambda config: fake_embedder)
    index_flow.index_corpus(sources=[str(src)], lake=str(tmp_path / "local"))
    assert rows == _table(tmp_path / "local")


@pytest.mark.parametrize("env, field", [
    ({"RAGLOOP_RUNNER__KIND": "spark"}, "runner.kind"),
    ({"RAGLOOP_RUNNER__KIND": "dask", "RAGLOOP_RUNNER__WORKERS": "0"}, "runner.workers"),
    ({"RAGLOOP_RUNNER__KIND": "dask", "RAGLOOP_RUNNER__ADDRESS": "scheduler:8786"}, "runner.address"),
    ({"RAGLOOP_RUNNER__ADDRESS": "tcp://h:8786"}, "runner"),
])
def test_cli_bad_runner_config_exits_2_naming_the_field(prefect_backend, tmp_path, lake_dir, monkeypatch, capsys,
                                                        env, field):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    src = _corpus(tmp_path / "src", n=1)
    code = main(["index", "--source", str(src), "--lake", str(lake_dir), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 2 and f"{field}:" in summary["error"]
    assert not (lake_dir / "runs").exists()


def test_the_flow_process_keeps_no_trail_of_the_windows_it_sent(prefect_backend, fake_embedder, monkeypatch, tmp_path):
    """distributed keeps each stream's last messages for its developers (1,000 by default, up to 1 MB each): the
    flow process kept every window it sent, documents and all, and grew with the corpus. The runner bounds
    that log, so the documents alive when the commit ends are those of a few windows, not the corpus."""
    from ragloop.flows.runners import MESSAGE_LOG_LENGTH
    from ragloop.tasks import index_run
    from ragloop.tasks.schemas import Document

    use_fakes(embedder=lambda config: fake_embedder)
    monkeypatch.setenv("RAGLOOP_INDEX__DOCS_PER_BATCH", "1")  # one window per document
    _dask(monkeypatch)
    alive: list[int] = []
    close = index_run.ChunkBatches.close

    def counting_close(self):  # called once the commit consumed every window
        gc.collect()
        alive.append(sum(1 for o in gc.get_objects() if isinstance(o, Document)))
        close(self)

    monkeypatch.setattr(index_run.ChunkBatches, "close", counting_close)
    n = 8 * MESSAGE_LOG_LENGTH
    summary = index_flow.index_corpus(sources=[str(_corpus(tmp_path / "src", n=n))], lake=str(tmp_path / "lake"))
    assert summary["status"] == "ok" and summary["documents_indexed"] == n
    assert len(alive) == 1 and alive[0] <= 4 * MESSAGE_LOG_LENGTH, f"{alive[0]} of {n} documents still held"
