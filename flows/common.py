"""Shared orchestration helpers: settings for a flow run and the run manifest lifecycle."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import get_run_logger
from prefect.runtime import flow_run

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


# Prefect 3.8's sync flow engine joins its heartbeat thread at every flow run's end, and that thread
# sleeps in whole seconds: each run is rounded up to the next second (0.5-1 s on a no-op index).
HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


# The settings a run started from (and the PREFECT_* environment then) -> the same without heartbeats.
# Prefect's temporary_settings re-reads every setting from the environment (0.05-0.2 s per run); a warm
# process entering ad_hoc_runs for each run reuses the copy it made for the same settings.
_NO_HEARTBEATS: dict[str, tuple] = {}


@contextmanager
def ad_hoc_runs() -> Iterator[None]:
    """Flow runs started inside run without Prefect heartbeats, unless the environment sets their
    frequency. For runs started by hand (the CLI): heartbeats let a Prefect automation mark a killed
    run Crashed, which only a served deployment relies on; a killed CLI run is visible from its
    manifest ('running', no ended_at) and its lock is taken over. Served deployments keep them."""
    if any(os.environ.get(name) for name in HEARTBEAT_ENV):
        yield
        return
    import prefect.context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    context = prefect.context.get_settings_context()
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("PREFECT_")))
    base, env, settings = _NO_HEARTBEATS.get("last", (None, None, None))
    if base is not context.settings or env != environment:
        settings = context.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
        _NO_HEARTBEATS["last"] = (context.settings, environment, settings)
    with prefect.context.SettingsContext(profile=context.profile, settings=settings):
        yield


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
        self.finished = False
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
        self.finished = True
        return {"run_id": self.run_id, "status": status, "lineage": self.lineage, **outputs}


class Stage:
    """One run of a stage inside `stage_run`: its settings, lake, step timer and (once started) manifest."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.lake = Lake(settings.lake)
        self.timer = StageTimer()
        self.run: RunRecorder | None = None
        # Merged into the manifest when the body raises after start() (e.g. the lake and table it ran on).
        self.failure_outputs: dict[str, Any] = {}

    def start(self) -> RunRecorder:
        """Write the run manifest with status 'running' (once) and return its recorder."""
        if self.run is None:
            self.run = RunRecorder(self.lake, self.name, self.settings)
        return self.run


@contextmanager
def stage_run(name: str, settings: Settings) -> Iterator[Stage]:
    """The one way a stage runs: under the lake's run lock, with a run manifest, failures recorded.

    The lock (tasks.storage.Lake.lock) is re-entrant for subflows in the same process; another
    process waits `lock_wait_s`, then fails with LakeLocked naming the holder. `stage.start()` writes
    the manifest ('running'); the body ends it with `run.finish(status, outputs)`. A body that raises
    after start() leaves the manifest 'failed' with the error (plus `stage.failure_outputs`) and the
    exception propagates. A body that returns without start() (e.g. a reused eval) writes no manifest.
    """
    stage = Stage(name, settings)
    with stage.lake.lock(f"{name} flow {flow_run.name or ''}".strip(), wait_s=settings.lock_wait_s):
        try:
            yield stage
        except BaseException as exc:
            if stage.run is not None and not stage.run.finished:
                stage.run.finish("failed", {**stage.failure_outputs, "error": f"{type(exc).__name__}: {exc}"})
            raise
