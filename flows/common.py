"""Shared orchestration helpers: settings for a flow run and the run manifest lifecycle."""

from __future__ import annotations

import functools
import inspect
import time
from contextlib import contextmanager
from typing import Any, Callable

from prefect import get_run_logger
from prefect.runtime import flow_run

# index_store is plain work (tasks.indexing); the flows that read the index import it from here.
from ragloop.tasks.indexing import index_store  # noqa: F401
from ragloop.tasks.lineage import base_lineage, new_run_id
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import Settings, load_settings
from ragloop.tasks.storage import Lake


def flow_settings(config_path: str | None, overrides: dict[str, Any]) -> Settings:
    """Settings for one flow run: yaml < env < the flow's parameters (None means 'not given')."""
    clean = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
            if not value:
                continue
        if value is not None and value != "":  # "" = not given (e.g. an event payload without the field)
            clean[key] = value
    return load_settings(config_path, clean)


def lake_locked(flow_name: str) -> Callable:
    """Run the decorated flow function under the lake's run lock (tasks.storage.Lake.lock).

    Goes under @flow: the lake comes from the flow's own `lake`/`config_path` parameters, resolved like
    the flow resolves them. Subflows in the same process re-enter the lock; another process waits up
    to the `lock_wait_s` setting, then fails with LakeLocked naming the holder (pid, host, since when).
    """

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            settings = flow_settings(bound.arguments.get("config_path"), {"lake": bound.arguments.get("lake")})
            run_name = flow_run.name or ""
            with Lake(settings.lake).lock(f"{flow_name} flow {run_name}".strip(), wait_s=settings.lock_wait_s):
                return fn(*args, **kwargs)

        return locked

    return decorate


def check_sources(sources: list[str]) -> None:
    """Fail before any work when a source path does not exist (exit 2, naming it)."""
    from ragloop.tasks.settings import check_sources as check

    check(sources)


class StageTimer:
    """Wall seconds per named step of a run, reported in the summary as `timings_s`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def report(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


class RunRecorder:
    """Writes the run manifest when a run starts ('running') and when it ends (final status).

    A run killed midway keeps status 'running' with no ended_at: visibly not completed.
    """

    def __init__(self, lake: Lake, flow: str, settings: Settings) -> None:
        self.lake = lake
        self.flow = flow
        self.run_id = new_run_id(flow)
        self.started_at = utcnow()
        self.lineage: dict[str, Any] = base_lineage(settings.config_hash())
        self.logger = get_run_logger()
        self._write("running", None, {})

    def _write(self, status: str, ended_at, outputs: dict) -> None:
        self.lake.write_run(
            {
                "run_id": self.run_id,
                "flow": self.flow,
                "status": status,
                "started_at": self.started_at,
                "ended_at": ended_at,
                "lineage": self.lineage,
                "outputs": {**outputs, "prefect_flow_run_id": str(flow_run.id or "")},
            }
        )

    def finish(self, status: str, outputs: dict) -> dict:
        """Record the final status; returns the summary (run_id, status, lineage, outputs)."""
        self._write(status, utcnow(), outputs)
        return {"run_id": self.run_id, "status": status, "lineage": self.lineage, **outputs}
