"""The import-logs flow: a RAG app's production logs (JSONL or OTLP/OpenInference spans), redacted, into
the lake as one Parquet part per import (tasks.production)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import flow_settings, stage_run
from ragloop.tasks import production

import_logs_task = task(production.import_logs, name="import-logs", cache_policy=NO_CACHE)


@flow(name="import-logs")
def import_logs(path: str, fmt: str = "jsonl", lake: str | None = None, config_path: str | None = None) -> dict:
    """Import a log file or directory; summary `records` {read, new, known, quarantined, redacted},
    `import_id` and `path` of the part written (null when nothing was new), `quarantine` [{source, line,
    field, reason, detail}]. Status `partial` when lines were quarantined; re-importing adds nothing."""
    settings = flow_settings(config_path, {"lake": lake})
    with stage_run("logs-import", settings) as stage:
        run = stage.start()
        outputs = import_logs_task(stage.lake, Path(path), fmt, settings.logs.redact)
        run.lineage.update({"source_file": str(Path(path).resolve()), "format": fmt, "import_id": outputs["import_id"]})
        return production.LogsImportSummary(run_id=run.run_id, lineage=run.lineage, **outputs).finish(run)
