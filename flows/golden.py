"""The import-golden-set flow (JSONL into the lake). Export is read-only work: tasks.golden_io.export_golden_set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
from prefect import flow

from ragloop.flows.common import RunRecorder, flow_settings, lake_locked
from ragloop.tasks import golden_io, promotion, schemas
from ragloop.tasks.embedding import load_embedder
from ragloop.tasks.indexing import ChunkStore, index_store
from ragloop.tasks.qa_generation import golden_set_id_of
from ragloop.tasks.settings import ConfigError, Settings
from ragloop.tasks.storage import Lake


def _store(settings: Settings) -> tuple[Lake, ChunkStore]:
    lake = Lake(settings.lake)
    return lake, index_store(lake, load_embedder(settings.embedding))[0]


@flow(name="import-golden-set")
@lake_locked("import-golden")
def import_golden_set(path: str, lake: str | None = None, config_path: str | None = None, line: str | None = None) -> dict:
    """Import a JSONL golden set (ragloop rows or ragas samples) checked against the index under test;
    every line is validated before anything is written. It becomes the head of its golden-set line
    (default: the file's stem) and the chosen line; synth's own line is left alone."""
    settings = flow_settings(config_path, {"lake": lake})
    try:
        line = promotion.line_name(line or Path(path).stem)
    except promotion.PromotionError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        items = golden_io.read_import_file(Path(path))
    except golden_io.GoldenImportError as exc:
        raise ConfigError(str(exc)) from exc
    store_lake, store = _store(settings)
    catalog = store.scan(["chunk_id", "doc_id", "text"]).to_pylist()
    chunk_docs = {r["chunk_id"]: r["doc_id"] for r in catalog}
    try:
        rows = golden_io.resolve_items(items, chunk_docs, golden_io.chunks_by_text(catalog), Path(path).name)
    except golden_io.GoldenImportError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    run = RunRecorder(store_lake, "import-golden", settings)
    golden_set_id = golden_set_id_of(rows)
    written = store_lake.write_golden(golden_set_id, pa.Table.from_pylist(rows, schema=schemas.GOLDEN))
    chosen = promotion.Refs(store_lake).set_line(line, golden_set_id, "imported", run.run_id, choose=True)
    run.lineage.update({"golden_set_id": golden_set_id, "golden_line": line,
                        "table": {"name": store.name, "version": store.version}, "source_file": str(Path(path).resolve())})
    return run.finish("ok", {
        "lake": store_lake.uri,
        "golden_set_id": golden_set_id,
        "items": {"total": len(rows), "new": len(rows), "kept": 0, "stale": 0, "retired": 0, "rejected": 0},
        "by_type": dict(sorted(Counter(r["qa_type"] for r in rows).items())),
        "written": written,
        "line": chosen,
    })
