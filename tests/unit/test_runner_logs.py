"""tasks/runner_logs.py: only distributed's 'Batched Comm Closed' record with a CommClosedError is benign, and
quiet_benign_close drops it on distributed.batched for its block only."""

from __future__ import annotations

import logging

from ragloop.tasks.runner_logs import BATCHED_CLOSED_MSG, BATCHED_LOGGER, is_benign_close_record, quiet_benign_close


class CommClosedError(OSError):
    """Named as distributed.comm.core's (matched by name: tasks/ import no distributed)."""


def _record(name=BATCHED_LOGGER, msg=BATCHED_CLOSED_MSG, exc=CommClosedError) -> logging.LogRecord:
    exc_info = (exc, exc("closed"), None) if exc else None
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, ("<TCP (closed)>",), exc_info)


def test_only_the_batched_comm_closed_record_with_comm_closed_error_is_benign():
    assert is_benign_close_record(_record())
    assert not is_benign_close_record(_record(exc=OSError)), "another exception"
    assert not is_benign_close_record(_record(exc=None)), "no exception"
    assert not is_benign_close_record(_record(msg="Error in batched write")), "another message"
    assert not is_benign_close_record(_record(name="distributed.worker")), "another logger"


def test_quiet_benign_close_drops_that_record_in_its_block_only():
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger(BATCHED_LOGGER)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # only this test's handler sees the records
    logger.addHandler(handler)
    try:
        with quiet_benign_close():
            logger.handle(_record())
            logger.handle(_record(exc=OSError))
        logger.handle(_record())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    assert [r.exc_info[0] for r in seen] == [OSError, CommClosedError]
    assert not logger.filters
