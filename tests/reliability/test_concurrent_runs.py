"""Two runs at once on the same lake (the nightly and a manual index): the second fails at once with a
message naming the holder, or waits for it; the table is never corrupted. Stale locks of dead runs
are taken over."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest

from ragloop.flows import index as index_flow
from ragloop.flows.cli import main
from ragloop.tasks.storage import Lake, LakeLocked
from tests.reliability.test_crash_recovery import _env, clean, index_state, runs_of  # noqa: F401  (fixture)


def _start_paused_index(lake, source, pause_s: float):
    """A child index run that stops mid-run (before its first LanceDB commit) for pause_s, holding the lock."""
    cmd = [sys.executable, "-m", "tests.reliability.crash_worker", "index", "--lake", str(lake), "--source", str(source),
           "--pause", f"commit_run:1:{pause_s}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), cwd=str(lake.parent))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.decode()) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    while not lines.get(timeout=max(0.1, deadline - time.monotonic())).startswith("PAUSED"):
        pass
    return proc


def test_a_second_run_fails_clearly_or_waits_and_the_table_stays_whole(clean, tmp_path, monkeypatch, capsys, figures):
    lake = tmp_path / "lake"
    expected = clean.state("fresh")
    child = _start_paused_index(lake, clean.v2, pause_s=4)
    try:
        holder = json.loads((lake / "locks" / "run.lock").read_text())
        assert (holder["pid"], holder["host"]) == (child.pid, socket.gethostname())
        with pytest.raises(LakeLocked, match=rf"is locked by index flow .*\(pid {child.pid} on {socket.gethostname()}, since "):
            index_flow.index_corpus(sources=[str(clean.v2)], lake=str(lake))
        code = main(["index", "--source", str(clean.v2), "--lake", str(lake), "--json"])
        refused = json.loads(capsys.readouterr().out)
        assert code == 1 and f"pid {child.pid}" in refused["error"], refused

        monkeypatch.setenv("RAGLOOP_LOCK_WAIT_S", "120")  # the setting: wait for the holder instead
        start = time.monotonic()
        waited = index_flow.index_corpus(sources=[str(clean.v2)], lake=str(lake))
        waited_s = time.monotonic() - start
        assert child.wait(timeout=60) == 0, "the first run finished normally"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert waited["status"] == "ok" and waited["chunks"]["written"] == 0, "the waiting run found the work done"
    assert waited_s > 1, "it waited for the holder"
    assert index_state(lake) == expected, "the table is exactly a clean run's"
    statuses = sorted((r["flow"], r["status"]) for r in runs_of(lake).values())
    assert statuses == [("index", "ok"), ("index", "ok"), ("ingest", "ok"), ("ingest", "ok")]
    assert not (lake / "locks" / "run.lock").exists(), "released"
    figures("3_concurrent_runs", second_run_without_wait="failed: LakeLocked naming pid/host/start",
            cli_exit_code=code, second_run_with_wait=f"waited {waited_s:.1f}s then ok (nothing left to do)",
            table_state="identical to a clean run")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    "holder, outcome",
    [
        (lambda: {"owner": "index flow old", "pid": _dead_pid(), "host": socket.gethostname(),
                  "started_at": "2026-01-01T00:00:00"}, "taken over"),
        (lambda: {"owner": "index flow mine", "pid": os.getpid(), "pid_start": "1", "host": socket.gethostname(),
                  "started_at": "2026-01-01T00:00:00"}, "taken over"),  # the pid was reused by another process
        (lambda: {"owner": "nightly lifecycle", "pid": 1, "host": "other-host", "started_at": "2026-01-01T00:00:00"},
         r"locked by nightly lifecycle \(pid 1 on other-host, since 2026-01-01T00:00:00\)"),
        (lambda: {"owner": "manual index", "pid": os.getppid(), "host": socket.gethostname(),
                  "started_at": "2026-01-01T00:00:00"}, r"locked by manual index \(pid \d+ on "),
    ],
    ids=["dead-pid", "reused-pid", "other-host", "live-pid"],
)
def test_stale_locks_are_taken_over_live_ones_refuse(lake_dir, holder, outcome):
    lake = Lake(str(lake_dir))
    (lake_dir / "locks").mkdir(parents=True)
    (lake_dir / "locks" / "run.lock").write_text(json.dumps(holder()))
    if outcome == "taken over":
        with lake.lock("test") as me:
            assert json.loads((lake_dir / "locks" / "run.lock").read_text())["pid"] == me["pid"] == os.getpid()
        assert os.listdir(lake_dir / "locks") == []
    else:
        with pytest.raises(LakeLocked, match=outcome):
            with lake.lock("test", wait_s=0.3, poll_s=0.1):
                pass


def test_the_lock_is_reentrant_in_a_process_and_released_on_error(lake_dir):
    lake = Lake(str(lake_dir))
    with pytest.raises(RuntimeError, match="boom"):
        with lake.lock("outer"):
            with lake.lock("subflow"):
                assert json.loads((lake_dir / "locks" / "run.lock").read_text())["owner"] == "outer"
            raise RuntimeError("boom")
    assert not (lake_dir / "locks" / "run.lock").exists()


def test_an_unwritten_lock_file_is_stale_only_after_a_while(lake_dir):
    (lake_dir / "locks").mkdir(parents=True)
    path = lake_dir / "locks" / "run.lock"
    path.write_text("")
    with pytest.raises(LakeLocked, match="locked by a run that is starting"):
        with Lake(str(lake_dir)).lock("test"):
            pass
    os.utime(path, (time.time() - 60, time.time() - 60))
    with Lake(str(lake_dir)).lock("test"):
        pass
