"""Golden sets in and out of the lake: import-golden-set flow (JSONL) and export (JSONL, ragas)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from ragloop.flows.common import flow_settings, index_store, stage_run
from ragloop.tasks import golden_io, golden_sets, promotion, providers
from ragloop.tasks.indexing import ChunkStore
from ragloop.tasks.settings import ConfigError, Settings
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
        moved = promotion.Refs(stage.lake).set_line(line, golden_set_id, "imported", run.run_id, choose=True)
        run.lineage.update({"golden_set_id": golden_set_id, "golden_line": line,
                            "table": {"name": store.name, "version": store.version},
                            "source_file": str(Path(path).resolve())})
        summary = golden_sets.import_summary(run.run_id, run.lineage, stage.lake.uri, golden_set_id, rows, written, moved)
        return summary.record(run)


def export_golden_set(out: str, fmt: str = "jsonl", golden: str = "latest", include_inactive: bool = False,
                      lake: str | None = None, config_path: str | None = None) -> dict:
    """Write a golden set to JSONL (ragloop's columns) or a ragas EvaluationDataset JSONL (read-only)."""
    settings = flow_settings(config_path, {"lake": lake})
    store_lake = Lake(settings.lake)
    golden_set_id, _ = promotion.Refs(store_lake).resolve_golden(golden, store_lake.list_golden())
    if golden_set_id is None:
        raise ConfigError(f"--golden {golden}: no such golden set in {store_lake.uri} "
                          f"(have: {', '.join(store_lake.list_golden()) or 'none'})")
    rows = store_lake.read_golden(golden_set_id).to_pylist()
    statuses = golden_sets.export_statuses(include_inactive)
    golden_sets.check_export(rows, fmt, statuses)
    target = Path(out)
    if fmt == "jsonl":
        count = golden_io.export_rows(rows, target, statuses)
    else:
        wanted = {c for r in rows for c in r["reference_chunk_ids"]}
        texts = {r["chunk_id"]: r["text"] for r in _store(settings, store_lake).scan(["chunk_id", "text"]).to_pylist()
                 if r["chunk_id"] in wanted}
        dataset = golden_io.to_ragas_dataset(rows, texts, statuses)
        target.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_jsonl(target)
        count = len(dataset)
    return golden_sets.ExportSummary(status="ok", golden_set_id=golden_set_id, format=fmt, items=count,
                                     path=str(target.resolve())).model_dump(mode="json")
