"""Ctrl-C stops a command promptly, even when the run would wait on Prefect's stopped temporary server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

# A command that swallows the first KeyboardInterrupt and then hangs, as an interrupted flow does while
# it reports its crash to the temporary server the same Ctrl-C stopped.
HANGS_AFTER_INTERRUPT = """
import sys, time
from ragloop.flows.cli import _stop_on_interrupt
_stop_on_interrupt(grace_s={grace})
try:
    print("READY", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    pass
time.sleep(60)
"""


def _start(grace: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HANGS_AFTER_INTERRUPT.format(grace=grace)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_the_first_ctrl_c_interrupts_and_the_process_exits_130_after_the_grace_period():
    proc = _start(grace=1.0)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert time.monotonic() - start < 20
    err = proc.stderr.read()
    assert "interrupted: stopping the run (at most 1 s" in err
    assert "the run did not stop within 1 s; exiting" in err


def test_a_second_ctrl_c_exits_at_once():
    proc = _start(grace=600.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert "interrupted: second Ctrl-C; exiting" in proc.stderr.read()


# The race a Ctrl-C sets off: the terminal also stopped Prefect's temporary server, so reporting the crash to
# it can fail, and that error (not the KeyboardInterrupt) reaches the CLI.
FAILS_AFTER_INTERRUPT = """
import sys
from ragloop.flows import cli
from ragloop.tasks import interrupts

def run(args):
    interrupts.request_stop()  # what the Ctrl-C handler did
    raise ConnectionError("All connection attempts failed")

cli.COMMANDS["ingest"] = (run, lambda summary: [])
sys.exit(cli.main(["ingest", "--source", sys.argv[1], "--lake", sys.argv[2], *sys.argv[3:]]))
"""


def test_an_error_after_a_ctrl_c_is_reported_as_the_interruption(tmp_path):
    import json

    (tmp_path / "src").mkdir()
    for extra in ([], ["--json"]):
        done = subprocess.run([sys.executable, "-c", FAILS_AFTER_INTERRUPT, str(tmp_path / "src"),
                               str(tmp_path / "lake"), *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 130, done.stderr[-2000:]
        assert "interrupted: the run stopped" in done.stderr and "ConnectionError" not in done.stderr + done.stdout
        if extra:
            stopped = "interrupted: the run stopped; `ragloop runs` lists it as failed if it had started"
            assert json.loads(done.stdout) == {"status": "interrupted", "exit_code": 130, "error": stopped}
        else:
            assert done.stdout == ""
