"""The import-golden-set flow (JSONL into the lake). Export is read-only work: tasks.golden_sets.export_golden_set."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from ragloop.flows.common import flow_settings, stage_run
from ragloop.tasks import golden_quality, golden_sets, promotion, providers
from ragloop.tasks.indexing import ChunkStore, index_store
from ragloop.tasks.settings import Settings
from ragloop.tasks.storage import Lake


def _store(settings: Settings, lake: Lake) -> ChunkStore:
    return index_store(lake, providers.current().build_embedder(settings.embedding))[0]


@flow(name="import-golden-set")
def import_golden_set(path: str, lake: str | None = None, config_path: str | None = None, line: str | None = None) -> dict:
    """Import a JSONL golden set (ragloop rows or ragas samples) checked against the index under test;
    every line is validated before anything is written. It becomes the head of its golden-set line
    (default: the file's stem) and the chosen line; synth's own line is left alone."""
    settings = flow_settings(config_path, {"lake": lake})
    with stage_run("import-golden", settings) as stage:
        line, items = golden_sets.read_import(Path(path), line)
        store = _store(settings, stage.lake)
        rows = golden_sets.resolve_import(items, store.scan(["chunk_id", "doc_id", "text"]).to_pylist(), Path(path))
        run = stage.start()
        golden_set_id, written = golden_sets.write_golden_rows(stage.lake, rows)
        report = golden_quality.validate_version(rows, golden_quality.referenced_chunk_texts(store, rows))
        stage.lake.write_validation(run.run_id, report.suite, report.result)
        validation, error = golden_quality.validation_outcome(report)
        moved = None if error else promotion.Refs(stage.lake).set_line(line, golden_set_id, "imported", run.run_id, choose=True)
        run.lineage.update({"golden_set_id": golden_set_id, "golden_line": line,
                            "table": {"name": store.name, "version": store.version},
                            "source_file": str(Path(path).resolve())})
        summary = golden_sets.import_summary(run.run_id, run.lineage, stage.lake.uri, golden_set_id, rows, written, moved,
                                             validation, error)
        return summary.record(run)
