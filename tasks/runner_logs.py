"""The one log record a Dask runner's orderly close may leave that is noise, a filter dropping it while a
cluster closes, and `entered`, which runs a task runner's block and closes it under that filter
(flows.runners). Plain logging; no prefect or distributed import."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, ContextManager, Iterator

BATCHED_LOGGER = "distributed.batched"  # the logger of distributed's BatchedSend (the scheduler<->worker stream)
BATCHED_CLOSED_MSG = "Batched Comm Closed %r"  # distributed's BatchedSend logs it with exc_info on CommClosedError
COMM_CLOSED = "CommClosedError"  # distributed.comm.core.CommClosedError, matched by name (no import needed)


def is_benign_close_record(record: logging.LogRecord) -> bool:
    """True for distributed's 'Batched Comm Closed' record carrying a CommClosedError: a BatchedSend found its
    stream already closed by the other side. While a LocalCluster closes, the scheduler retires its workers;
    a worker closes its end of the stream while the scheduler's stream to it still has a message to write,
    and that write raises CommClosedError, which distributed logs (at INFO, with the full traceback) and
    drops. It is a race of distributed's own shutdown, not a lost task: every task's result was gathered
    before the close began. Any other record, or this message with another exception, is not benign."""
    if record.name != BATCHED_LOGGER or record.msg != BATCHED_CLOSED_MSG or not record.exc_info:
        return False
    exc_type = record.exc_info[0]
    return exc_type is not None and exc_type.__name__ == COMM_CLOSED


class BenignCloseFilter(logging.Filter):
    """Drops is_benign_close_record records; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_benign_close_record(record)


@contextmanager
def quiet_benign_close() -> Iterator[BenignCloseFilter]:
    """BenignCloseFilter on the distributed.batched logger for the block only (the close of a cluster whose
    work is done), removed after it; the logger's other records, and every other logger, are untouched."""
    logger = logging.getLogger(BATCHED_LOGGER)
    quiet = BenignCloseFilter()
    logger.addFilter(quiet)
    try:
        yield quiet
    finally:
        logger.removeFilter(quiet)


@contextmanager
def entered(runner: ContextManager[Any]) -> Iterator[Any]:
    """`runner` (a task runner: a context manager) entered for the block. When the block ends normally (its
    results gathered), the runner closes (for a DaskTaskRunner: client, then cluster: scheduler, nannies,
    worker processes) under quiet_benign_close: during that close distributed's scheduler can log 'Batched
    Comm Closed' with a CommClosedError traceback when a retiring worker shuts its stream before the
    scheduler's last message to it is written (a race inside distributed's own orderly shutdown, not the
    close order: prefect-dask closes the client, then the cluster, which retires its workers itself).
    distributed logs it at INFO, so it shows with DASK_LOGGING__DISTRIBUTED=info. Only that record is
    dropped, only during this close; a block that raised closes with nothing filtered."""
    entered_as = runner.__enter__()
    try:
        yield entered_as
    except BaseException:
        if not runner.__exit__(*sys.exc_info()):
            raise
        return
    with quiet_benign_close():
        runner.__exit__(None, None, None)
