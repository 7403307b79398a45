"""Register the deployments with a Prefect work pool (`ragloop deploy --work-pool NAME`) instead of serving them."""

from __future__ import annotations

import contextlib
import sys

from prefect import deploy
from prefect.exceptions import ObjectNotFound

from ragloop.deployments.definitions import build_deployments
from ragloop.tasks.commands import DeploySummary
from ragloop.tasks.settings import ConfigError, Settings
from ragloop.tasks.storage import Lake


def deploy_to_work_pool(settings: Settings, work_pool: str, api_url: str) -> DeploySummary:
    """Create or update nightly, prompt-changed, index and eval on `work_pool` (idempotent: deploying twice
    updates them in place). No image is built or pushed: a process pool's worker imports the flows from
    its installed ragloop; a Docker or Kubernetes pool runs the image named in `deployments.job_variables`.
    ConfigError when the pool does not exist (Prefect would say so only after its banner)."""
    deployments = build_deployments(settings, for_work_pool=True)
    try:  # Prefect prints its progress and table on stdout; ours carries the one summary (--json)
        with contextlib.redirect_stdout(sys.stderr):
            ids = deploy(*deployments, work_pool_name=work_pool, build=False, push=False,
                         print_next_steps_message=False, ignore_warnings=True)
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound) or "Could not find work pool" in str(exc):
            raise ConfigError(f"work pool {work_pool!r} does not exist on {api_url}: create it "
                              f"(`prefect work-pool create {work_pool} --type process`)") from None
        raise
    if len(ids) != len(deployments):
        raise RuntimeError(f"{len(deployments) - len(ids)} of {len(deployments)} deployments could not be created "
                           f"on work pool {work_pool!r} (Prefect's log above names them)")
    return DeploySummary(
        status="ok", work_pool=work_pool, api_url=api_url, lake=Lake(settings.lake).uri,
        deployments=[{"name": d.name, "flow": d.flow_name, "id": str(i), "entrypoint": d.entrypoint,
                      "schedules": [s.schedule.cron for s in d.schedules], "triggers": [e for t in d.triggers for e in t.expect],
                      "parameters": d.parameters} for d, i in zip(deployments, ids)])
