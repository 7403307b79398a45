"""The deployments, built from settings (no server needed to build them; `serve.py` serves them).

- nightly: the lifecycle on a cron schedule in the configured timezone;
- prompt-changed: triggered by the custom event `ragloop.prompt.changed` (emitted by
  `ragloop prompts check --emit`), re-evaluates with the new prompt and gates it;
- index, eval: on demand.
"""

from __future__ import annotations

from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from ragloop.flows.evaluate import evaluate_chain
from ragloop.flows.index import index_corpus
from ragloop.flows.lifecycle import prompt_changed, run_lifecycle
from ragloop.tasks.settings import Settings
from ragloop.tasks.storage import Lake

PROMPT_CHANGED_EVENT = "ragloop.prompt.changed"
TAGS = ["ragloop"]


def build_deployments(settings: Settings, for_work_pool: bool = False) -> list:
    """RunnerDeployments for `prefect.serve` (or `prefect.deploy` to a work pool: deployments/work_pool.py).
    Each carries the lake as a parameter, resolved when they are built (so `make serve` from any directory
    runs on the configured lake); the prompt-changed trigger takes the lake from the event, which names the
    lake it was checked against (`prompts check --emit --lake X`).

    for_work_pool: the entrypoints are module paths (`ragloop.flows.index.index_corpus`), which a worker
    imports from the installed package (no source upload, no image build), and each deployment carries
    `deployments.job_variables`; schedules, triggers and parameters are the served ones."""
    d = settings.deployments
    lake = {"lake": Lake(settings.lake).uri}

    def pool() -> dict:  # a fresh dict each: Prefect writes the image into a deployment's job variables
        return ({"entrypoint_type": EntrypointType.MODULE_PATH, "job_variables": dict(d.job_variables)}
                if for_work_pool else {})

    return [
        run_lifecycle.to_deployment(
            name="nightly", schedules=[Cron(d.nightly_cron, timezone=d.timezone)], tags=TAGS, parameters=lake,
            description="Incremental index, GE gate, golden-set refresh, eval and gate; a no-change night does no work.",
            **pool(),
        ),
        prompt_changed.to_deployment(
            name="prompt-changed", tags=TAGS, **pool(),
            triggers=[DeploymentEventTrigger(
                name="on-prompt-change", expect={PROMPT_CHANGED_EVENT},
                parameters={"prompt": "{{ event.payload.name }}", "prompt_hash": "{{ event.payload.prompt_hash }}",
                            "lake": "{{ event.payload.lake }}"},
            )],
            description="Re-evaluate with the changed prompt and gate it against the baseline.",
        ),
        index_corpus.to_deployment(name="index", tags=TAGS, parameters=lake, description="Incremental ingest + index, on demand.",
                                   **pool()),
        evaluate_chain.to_deployment(name="eval", tags=TAGS, parameters=lake, **pool(),
                                     description="Evaluate the chain over a golden set, on demand (an experiment unless promote is set)."),
    ]
