"""Golden sets in and out of the lake: import-golden-set flow (JSONL) and export (JSONL, ragas)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
from prefect import flow

from ragloop.flows.common import RunRecorder, flow_settings, index_store, lake_locked
from ragloop.tasks import providers
from ragloop.tasks import golden_io, promotion, schemas
from ragloop.tasks.indexing import ChunkStore
from ragloop.tasks.qa_generation import golden_set_id_of
from ragloop.tasks.settings import ConfigError, Settings
from ragloop.tasks.storage import Lake


def _store(settings: Settings) -> tuple[Lake, ChunkStore]:
    lake = Lake(settings.lake)
    return lake, index_store(lake, providers.current().build_embedder(settings.embedding))[0]


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
    statuses = ("active", "stale", "retired") if include_inactive else ("active",)
    target = Path(out)
    if fmt == "jsonl":
        count = golden_io.export_rows(rows, target, statuses)
    elif fmt == "ragas":
        doc_only = [r["qa_id"] for r in rows if r["status"] in statuses and r["reference_doc_ids"] and not r["reference_chunk_ids"]]
        if doc_only:  # ragas carries chunk texts as references: document-level ones would be silently lost
            raise ConfigError(f"--format ragas: {len(doc_only)} items reference documents only (e.g. {doc_only[0]}), which a "
                              "ragas dataset cannot carry (its references are context texts); use --format jsonl")
        _, store = _store(settings)
        wanted = {c for r in rows for c in r["reference_chunk_ids"]}
        texts = {r["chunk_id"]: r["text"] for r in store.scan(["chunk_id", "text"]).to_pylist() if r["chunk_id"] in wanted}
        dataset = golden_io.to_ragas_dataset(rows, texts, statuses)
        target.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_jsonl(target)
        count = len(dataset)
    else:
        raise ConfigError(f"--format {fmt}: expected jsonl or ragas")
    return {"status": "ok", "golden_set_id": golden_set_id, "format": fmt, "items": count, "path": str(target.resolve())}
