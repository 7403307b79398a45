"""runner.address (issue 22): a real `dask scheduler` and `dask worker` started as processes on 127.0.0.1, used
by index-corpus (chunk+embed windows) and synth-golden-set (question writing) through the address alone: the
same table and golden set as the local runner, and the work done by that worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragloop.flows import index as index_flow
from ragloop.flows import synth as synth_flow
from tests.conftest import REPO, stop_process, use_fakes, write_files
from tests.flows.test_index_dask import _corpus, _table
from tests.synth_fakes import DOCS, PassageCompleter

DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """The address of a scheduler with one single-threaded worker process; both stopped after the module."""
    from distributed import Client

    root = tmp_path_factory.mktemp("dask")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the worker imports the tests' fakes (tests.*)
    env = {k: v for k, v in env.items() if not k.startswith("RAGLOOP_")}
    file = root / "scheduler.json"
    scheduler = worker = None
    try:
        scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                      "--scheduler-file", str(file)], cwd=root, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        worker = subprocess.Popen([DASK, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                   "--host", "127.0.0.1"], cwd=root, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        stop_process(worker)
        stop_process(scheduler)


def _on(monkeypatch, address: str) -> None:
    monkeypatch.setenv("RAGLOOP_RUNNER__KIND", "dask")
    monkeypatch.setenv("RAGLOOP_RUNNER__ADDRESS", address)


def _worker_pids(address: str) -> set[int]:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return set(client.run(os.getpid).values())


class PidCompleter(PassageCompleter):
    """PassageCompleter that notes, in a file per process, that this process answered."""

    def __init__(self, root: str) -> None:
        self.root = root

    def complete(self, messages, **params):
        Path(self.root, str(os.getpid())).touch()
        return super().complete(messages, **params)


def test_index_through_a_scheduler_address_writes_the_local_table(prefect_backend, scheduler, fake_embedder,
                                                                  monkeypatch, tmp_path):
    use_fakes(embedder=lambda config: fake_embedder)
    monkeypatch.setenv("RAGLOOP_INDEX__DOCS_PER_BATCH", "2")  # 7 documents = 4 windows
    src = _corpus(tmp_path / "src")
    local = index_flow.index_corpus(sources=[str(src)], lake=str(tmp_path / "local"))
    _on(monkeypatch, scheduler)
    state = index_flow.index_corpus(sources=[str(src)], lake=str(tmp_path / "remote"), return_state=True)
    remote = state.result()
    assert local["status"] == remote["status"] == "ok"
    assert _table(tmp_path / "remote") == _table(tmp_path / "local")
    from tests.flows.test_llm_dask import _task_runs

    windows = _task_runs(state).get("chunk-and-embed-window", [])
    assert len(windows) == 4 and all(r.state.is_completed() for r in windows)


def test_synth_through_a_scheduler_address_writes_the_local_golden_set(prefect_backend, scheduler, fake_embedder,
                                                                       monkeypatch, tmp_path):
    use_fakes(embedder=lambda config: fake_embedder)
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    indexed = tmp_path / "indexed"
    index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", DOCS))], lake=str(indexed))
    shutil.copytree(indexed, tmp_path / "remote")
    answered = tmp_path / "answered"
    answered.mkdir()
    use_fakes(llm=lambda config: PidCompleter(str(answered)))
    local = synth_flow.synth_golden_set(lake=str(indexed), size=8)
    assert {int(p.name) for p in answered.iterdir()} == {os.getpid()}
    shutil.rmtree(answered)
    answered.mkdir()
    _on(monkeypatch, scheduler)
    remote = synth_flow.synth_golden_set(lake=str(tmp_path / "remote"), size=8)
    assert remote["status"] == local["status"] != "failed" and remote["items"]["new"] > 0
    assert remote["golden_set_id"] == local["golden_set_id"]
    answered_by = {int(p.name) for p in answered.iterdir()}
    assert answered_by and answered_by <= _worker_pids(scheduler), "the scheduler's worker answered"


def test_the_cli_checks_the_scheduler_before_any_run(scheduler, tmp_path, monkeypatch, capsys):
    """runner.address is tried before any work: the real scheduler passes the check; an HTTP server (a
    dashboard's port, an easy mix-up) or a port nothing listens on exits 2 naming the field, in seconds,
    instead of a run that hangs on it or fails after its retrieval."""
    import http.server
    import socket
    import threading

    from ragloop.flows.cli import main
    from ragloop.tasks.preflight import check_scheduler
    from ragloop.tasks.settings import ConfigError

    check_scheduler(scheduler)  # a real scheduler answers
    http_server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nothing = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    try:
        start = time.monotonic()
        with pytest.raises(ConfigError, match="runner.address: .*connection refused"):
            check_scheduler(nothing)  # the default 10 s timeout: a refused port does not wait it out
        assert time.monotonic() - start < 5
        docs = write_files(tmp_path / "docs", {"a.md": "# A\n\nSome text.\n"})
        _on(monkeypatch, f"tcp://127.0.0.1:{http_server.server_address[1]}")
        start = time.monotonic()
        assert main(["index", "--source", str(docs), "--lake", str(tmp_path / "lake")]) == 2
        assert time.monotonic() - start < 30
        err = capsys.readouterr().err
        assert "runner.address: tcp://127.0.0.1:" in err and "8787" in err and "Traceback" not in err
        assert not (tmp_path / "lake").exists(), "nothing ran"
    finally:
        http_server.shutdown()
