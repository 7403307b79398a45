"""The Dask runner's close (runner.kind dask): `ragloop index` on a LocalCluster of 2 exits 0 with no traceback
on stderr, even when distributed logs at INFO and its scheduler logs the 'Batched Comm Closed' CommClosedError
a retiring worker can cause (a race of distributed's own shutdown, made certain here); distributed's other INFO
lines still show. The filter is on for the close of a block that ended normally only (flows.runners)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from ragloop.tasks.runner_logs import BATCHED_LOGGER, entered, is_benign_close_record
from tests.conftest import REPO
from tests.flows.test_index_dask import _corpus

# A child `ragloop index` with the hash fake embedder; distributed's scheduler logs the benign record at the start
# of every cluster close, as its BatchedSend does when a worker closed its stream first.
CHILD = textwrap.dedent("""
    import logging, sys
    import ragloop.flows
    from ragloop.flows import runners
    from ragloop.tasks.embedding import HashEmbedder
    from tests.conftest import use_fakes

    make_runner = runners.dask_task_runner

    def racing_runner(config):  # distributed imported here, as the runner does: after Prefect set up logging
        import distributed.deploy.spec as spec
        from distributed.comm.core import CommClosedError

        original = spec.SpecCluster._close

        async def racing_close(self):
            try:
                raise CommClosedError("in <TCP (closed) Scheduler connection to worker>: Stream is closed")
            except CommClosedError:
                logging.getLogger("distributed.batched").info("Batched Comm Closed %r", "<TCP (closed)>",
                                                              exc_info=True)
            return await original(self)

        spec.SpecCluster._close = racing_close
        return make_runner(config)

    runners.dask_task_runner = racing_runner
    use_fakes(embedder=lambda config: HashEmbedder(dim=32, max_tokens=64))
    from ragloop.flows.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_dask_index_run_closes_without_a_traceback(prefect_backend, tmp_path):
    import prefect.settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGLOOP_", "DASK_"))}
    env.update({"PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value(),
                "RAGLOOP_RUNNER__KIND": "dask", "RAGLOOP_RUNNER__WORKERS": "2", "RAGLOOP_INDEX__DOCS_PER_BATCH": "2",
                "DASK_LOGGING__DISTRIBUTED": "info"})  # the level at which distributed logs the record
    src = _corpus(tmp_path / "src", n=4)
    cmd = [sys.executable, "-c", CHILD, "index", "--source", str(src), "--lake", str(tmp_path / "lake")]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "CommClosedError" not in proc.stderr, proc.stderr[-3000:]
    assert "Batched Comm Closed" not in proc.stderr
    assert "distributed.scheduler - Closing scheduler" in proc.stderr, "distributed's other INFO lines still show"
    assert "table: chunks__hash_fake" in proc.stdout


class FakeRunner:
    """A context manager noting whether the benign record would be dropped while it exits."""

    def __init__(self) -> None:
        self.filtered_at_exit: bool | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.filtered_at_exit = _dropped()


def _dropped() -> bool:
    """Whether distributed.batched's filters now drop the benign record."""
    from distributed.comm.core import CommClosedError

    record = logging.LogRecord(BATCHED_LOGGER, logging.INFO, __file__, 1, "Batched Comm Closed %r", ("<TCP>",),
                               (CommClosedError, CommClosedError("closed"), None))
    assert is_benign_close_record(record)
    return not logging.getLogger(BATCHED_LOGGER).filter(record)


def test_the_filter_is_on_only_while_a_runner_closes_after_a_normal_block():
    fake = FakeRunner()
    with entered(fake) as runner:
        assert runner is fake and not _dropped(), "not while the block runs"
    assert fake.filtered_at_exit is True
    assert not _dropped(), "removed after the close"

    fake = FakeRunner()
    with pytest.raises(RuntimeError, match="window failed"):
        with entered(fake):
            raise RuntimeError("window failed")
    assert fake.filtered_at_exit is False, "a block that raised closes with nothing filtered"
    assert not _dropped()
