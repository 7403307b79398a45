"""Register the deployments with a Prefect work pool (`ragloop deploy --work-pool NAME`) instead of serving them."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from ragloop.deployments.definitions import build_deployments
from ragloop.tasks.commands import DeploySummary
from ragloop.tasks.settings import ConfigError, Settings
from ragloop.tasks.storage import Lake


def deploy_to_work_pool(settings: Settings, work_pool: str, api_url: str) -> DeploySummary:
    """Create or update nightly, prompt-changed, index and eval on `work_pool` (idempotent: deploying twice
    updates them in place). No image is built or pushed: a process pool's worker imports the flows from
    its installed ragloop; a Docker or Kubernetes pool runs the image named in `deployments.job_variables`.
    ConfigError when the pool does not exist.

    Each deployment is applied directly, as `prefect.deploy()` does after its checks: in Prefect 3.8.8 that
    function first lists the pool's online workers with limit/offset null, which the 3.8.8 server rejects
    (422 on /work_pools/NAME/workers/filter); it also prints on stdout, which carries our --json object."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            raise ConfigError(f"work pool {work_pool!r} does not exist on {api_url}: create it "
                              f"(`prefect work-pool create {work_pool} --type process`)") from None
    deployments = build_deployments(settings, for_work_pool=True)
    ids = [d.apply(work_pool_name=work_pool) for d in deployments]
    return DeploySummary(
        status="ok", work_pool=work_pool, api_url=api_url, lake=Lake(settings.lake).uri,
        deployments=[{"name": d.name, "flow": d.flow_name, "id": str(i), "entrypoint": d.entrypoint,
                      "schedules": [s.schedule.cron for s in d.schedules], "triggers": [e for t in d.triggers for e in t.expect],
                      "parameters": d.parameters} for d, i in zip(deployments, ids)])
