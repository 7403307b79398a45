"""Ctrl-C during `ragloop index`: the encoding on LanceDB's thread stops too, the process leaves at once
(not after the grace period), nothing is committed, and --json still prints its one object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragloop.tasks.storage import Lake
from tests.conftest import REPO, write_files

# `ragloop index` in a child, on a fake embedder that takes 1 s per call and logs each call to a file.
# The grace period is an hour, so an exit within seconds is the run stopping itself.
SLOW_INDEX = """
import sys, time
from pathlib import Path
from ragloop.flows import cli
from ragloop.tasks.embedding import HashEmbedder
from tests.conftest import use_fakes

calls = Path(sys.argv[1])

class Slow(HashEmbedder):
    def encode(self, texts):
        with calls.open("a") as f:
            f.write(f"{len(texts)}\\n")
        time.sleep(1.0)
        return super().encode(texts)

use_fakes(embedder=lambda config: Slow(dim=32, max_tokens=64))
cli.INTERRUPT_GRACE_S = 3600.0
sys.exit(cli.main(sys.argv[2:]))
"""


def _interrupted_index(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[int], float]:
    docs = write_files(tmp_path / "docs", {f"d{i:03d}.md": f"# Doc {i}\n\nSome words about topic {i}.\n"
                                           for i in range(120)})
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Its own process group, signalled as a whole: a terminal's Ctrl-C also reaches Prefect's temporary server.
    proc = subprocess.Popen([sys.executable, "-c", SLOW_INDEX, str(calls), "index", "--source", str(docs),
                             "--lake", str(tmp_path / "lake"), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (calls.exists() and calls.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started encoding"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=120)
    waited = time.monotonic() - start
    time.sleep(1.5)  # a thread still encoding would log another call by now
    encoded = [int(n) for n in calls.read_text().split()]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), encoded, waited


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_stops_the_encoding_and_the_process_at_once(tmp_path, as_json):
    done, encoded, waited = _interrupted_index(tmp_path, *(["--json"] if as_json else []))
    assert done.returncode == 130, done.stderr[-2000:]
    assert waited < 20, f"left after {waited:.1f} s: the stop did not reach the run"
    assert "the run did not stop within" not in done.stderr
    assert "interrupted: the run stopped" in done.stderr
    assert len(encoded) <= 2, f"{len(encoded)} encode calls: the encoding went on after Ctrl-C"
    assert sum(encoded) < 120, "not every document was encoded"
    if as_json:
        reply = json.loads(done.stdout)  # exactly one object
        assert reply["status"] == "interrupted" and reply["exit_code"] == 130 and "interrupted" in reply["error"]
    else:
        assert done.stdout == ""
    lake = Lake(str(tmp_path / "lake"))
    db = lake.connect_vectors()
    assert all(db.open_table(name).count_rows() == 0 for name in db.table_names()), "no chunk row committed"
    index_runs = [r for r in lake.read_runs().to_pylist() if r["flow"] == "index"]
    assert [r["status"] for r in index_runs] == ["failed"]
    assert json.loads(index_runs[0]["outputs"])["error"] == "KeyboardInterrupt: Ctrl-C (SIGINT)"
