"""Where a heavy stage's items run (settings.runner): in the flow's process, or as Prefect tasks on
prefect-dask's DaskTaskRunner (a LocalCluster of `workers` processes, or the scheduler at `address`)."""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import Task

from ragloop.tasks.index_run import WindowMap, in_order
from ragloop.tasks.settings import RunnerConfig

IN_FLIGHT_PER_WORKER = 2  # windows submitted ahead per worker: one running, one queued behind it


def dask_task_runner(config: RunnerConfig):
    """The DaskTaskRunner for the config (not started): a LocalCluster of `workers` single-threaded
    processes (dashboard on a free port), or a client of the scheduler at `address`."""
    from prefect_dask import DaskTaskRunner

    if config.address:
        return DaskTaskRunner(address=config.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": ":0"})


@contextmanager
def task_map(config: RunnerConfig, task: Task, fixed: dict[str, Any], item_name: str,
             needed: bool = True) -> Iterator[WindowMap | None]:
    """None with the local runner (or when `needed` is false: no cluster for a run with no work); with
    `dask`, a started DaskTaskRunner for the block and a map: items -> (item, task(item, **fixed)'s result),
    in item order, at most IN_FLIGHT_PER_WORKER x workers submitted ahead.

    The map may be consumed on another thread (LanceDB pulls the index's batches on its own): submissions
    run in a copy of this thread's context, so each task run stays a child of the flow run."""
    if config.kind == "local" or not needed:
        yield None
        return
    context = contextvars.copy_context()
    with dask_task_runner(config) as runner:
        def submit(item):
            return context.run(runner.submit, task, {item_name: item, **fixed})

        yield lambda items: in_order(items, submit, IN_FLIGHT_PER_WORKER * config.workers)
