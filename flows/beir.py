"""import-beir flow: a BEIR dataset (corpus + queries + qrels) becomes a snapshot, an index and a golden set."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from ragloop.flows.common import flow_settings, stage_run
from ragloop.flows.index import index_corpus
from ragloop.tasks import golden_sets, promotion
from ragloop.tasks.golden_sets import ImportBeirSummary


@flow(name="import-beir")
def import_beir(path: str, lake: str | None = None, chunking: str | None = None, split: str = "test",
                config_path: str | None = None, progress: bool = False) -> dict:
    """Index DIR/corpus.jsonl (through the normal index flow) and import DIR's queries and qrels of
    `split` as a golden set with document-level references, on the line `beir-<dir>-<split>`, which
    becomes the chosen line (`--golden latest`)."""
    root = Path(path)
    settings = flow_settings(config_path, {"lake": lake})
    with stage_run("import-beir", settings) as stage:
        rows = golden_sets.read_beir(path, split)
        indexed = index_corpus(sources=[str(root / "corpus.jsonl")], lake=lake, chunking=chunking,
                               config_path=config_path, progress=progress)
        run = stage.start()
        failure = golden_sets.beir_failure(indexed, rows, stage.lake)
        if failure:
            return ImportBeirSummary(run_id=run.run_id, status="failed", lineage=run.lineage, **failure).record(run)
        golden_set_id, written = golden_sets.write_golden_rows(stage.lake, rows)
        line = golden_sets.beir_line(root, split)
        moved = promotion.Refs(stage.lake).set_line(line, golden_set_id, "imported", run.run_id, choose=True)
        run.lineage.update({**indexed["lineage"], "golden_set_id": golden_set_id, "golden_line": line,
                            "index_run_id": indexed["run_id"], "beir": {"path": str(root.resolve()), "split": split}})
        summary = golden_sets.beir_summary(run.run_id, run.lineage, stage.lake.uri, golden_set_id, rows, written,
                                           indexed, moved)
        return summary.record(run)
