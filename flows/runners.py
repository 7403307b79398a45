"""Where a heavy stage's items run (settings.runner): in the flow's process, or as Prefect tasks on
prefect-dask's DaskTaskRunner (a LocalCluster of `workers` processes, or the scheduler at `address`)."""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from ragloop.tasks import llm_remote
from ragloop.tasks.index_run import WindowMap, in_order
from ragloop.tasks.runner_logs import entered
from ragloop.tasks.settings import RunnerConfig

IN_FLIGHT_PER_WORKER = 2  # windows (LLM batches) submitted ahead per worker: one running, one queued behind it

# A batch only reads (answers go back to the flow process, which alone writes the lake and the LLM call cache):
# a retry after its worker died or its call raised duplicates nothing.
complete_llm_batch = task(llm_remote.complete_batch, name="llm-batch", retries=2, retry_delay_seconds=1,
                          cache_policy=NO_CACHE)


def flow_api_url() -> str:
    """The Prefect API this process reports to: PREFECT_API_URL, else the address of the ephemeral server
    this process started (a run without a configured server)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or str(get_client(sync_client=True).api_url)


@contextmanager
def reporting_to_flow_api() -> Iterator[str]:
    """Settings for the block with PREFECT_API_URL set to the flow's API (flow_api_url). prefect-dask ships
    the submitting context's settings with each task, so workers then report their task runs to the flow's
    API as children of its run, instead of each starting an ephemeral server of its own (~220 MB apiece)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = flow_api_url()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


def dask_task_runner(config: RunnerConfig):
    """The DaskTaskRunner for the config (not started): a LocalCluster of `workers` single-threaded
    processes (dashboard on a free port), or a client of the scheduler at `address`."""
    from prefect_dask import DaskTaskRunner

    if config.address:
        return DaskTaskRunner(address=config.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": ":0"})


# distributed keeps each stream's last `distributed.admin.low-level-log-length` messages (1,000 by default) for
# its developers, each up to 1 MB: the scheduler's stream to a worker kept every window it sent, documents and
# all (~3.5 KB per chunk of the flow process's memory at 3x SciFact). This bound keeps the flow flat.
MESSAGE_LOG_LENGTH = 10


@contextmanager
def started_runner(config: RunnerConfig) -> Iterator[Any]:
    """dask_task_runner(config) entered for the block and closed quietly (tasks.runner_logs.entered), with
    distributed's developer message logs bounded to MESSAGE_LOG_LENGTH while it runs (in this process and the
    workers it starts, which get its config)."""
    import importlib

    import dask

    importlib.import_module("distributed")  # its config defaults first: a set before they load would mask them

    with dask.config.set({"distributed.admin.low-level-log-length": MESSAGE_LOG_LENGTH}):
        with entered(dask_task_runner(config)) as runner:
            yield runner


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
    with reporting_to_flow_api(), started_runner(config) as runner:
        context = contextvars.copy_context()

        def submit(item):
            return context.run(runner.submit, task, {item_name: item, **fixed})

        yield lambda items: in_order(items, submit, IN_FLIGHT_PER_WORKER * config.workers)


@contextmanager
def llm_map(config: RunnerConfig) -> Iterator[llm_remote.BatchMap | None]:
    """None with the local runner; with `dask`, a map for tasks.llm_remote.RemoteLLM: (batches, job) ->
    (batch, complete_llm_batch(batch, job)'s result), in batch order, at most IN_FLIGHT_PER_WORKER x workers
    submitted ahead. The DaskTaskRunner is entered for the block, but its cluster (or its connection to the
    scheduler at `address`) is made on the first batch: a run whose calls all hit the LLM call cache, or that
    makes none, starts nothing. Batches may be sent from any thread; each task run is a child of the flow run."""
    if config.kind == "local":
        yield None
        return
    with reporting_to_flow_api(), started_runner(config) as runner:
        context = contextvars.copy_context()

        def submit(batch, job):
            return context.copy().run(runner.submit, complete_llm_batch, {"batch": batch, "job": job})

        yield lambda batches, job: in_order(batches, lambda b: submit(b, job), IN_FLIGHT_PER_WORKER * config.workers)
