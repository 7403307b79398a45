"""Golden sets from outside synth: the import-golden-set and import-beir stages' decisions and typed
summaries, and the export (read-only: `ragloop golden export` runs it without Prefect). Reads import
files and the lake; writes golden set versions, and the export's one file.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
from pydantic import Field

from ragloop.tasks import golden_io, promotion, providers, schemas
from ragloop.tasks.indexing import index_store
from ragloop.tasks.qa_generation import golden_set_id_of
from ragloop.tasks.summaries import LineMove, StageSummary, SummaryModel
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import ConfigError, EmbeddingConfig
from ragloop.tasks.storage import Lake


class ImportItems(SummaryModel):
    """An imported golden set's items, in the shape of synth's counts (an import keeps nothing)."""

    total: int = Field(description="items in the imported golden set")
    new: int = Field(description="items written by this run (import-beir: 0 when the version existed)")
    kept: int = Field(description="always 0: an import replaces its line's head")
    stale: int = Field(description="always 0")
    retired: int = Field(description="always 0")
    rejected: int = Field(description="always 0: one bad line fails the whole import before any write")


def write_golden_rows(lake: Lake, rows: list[dict]) -> tuple[str, bool]:
    """(golden_set_id, written): the content-addressed version of rows; False when it already existed."""
    golden_set_id = golden_set_id_of(rows)
    return golden_set_id, lake.write_golden(golden_set_id, pa.Table.from_pylist(rows, schema=schemas.GOLDEN))


def _by_type(rows: Sequence[dict]) -> dict[str, int]:
    return dict(Counter(r["qa_type"] for r in rows))


# -- import-golden-set ------------------------------------------------------------------------------
def read_import(path: Path, line: str | None) -> tuple[str, list[golden_io.ImportedItem]]:
    """(line, items) of a JSONL import: the line name (default: the file's stem) checked, then every
    line of the file validated. ConfigError (exit 2) naming the line or the bad file line."""
    try:
        name = promotion.line_name(line or path.stem)
    except promotion.PromotionError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        return name, golden_io.read_import_file(path)
    except golden_io.GoldenImportError as exc:
        raise ConfigError(str(exc)) from exc


def resolve_import(items: list[golden_io.ImportedItem], catalog: list[dict], path: Path) -> list[dict]:
    """Golden rows of the items, their references checked against the index under test (catalog:
    {chunk_id, doc_id, text} rows). ConfigError (exit 2) naming the file and item."""
    chunk_docs = {r["chunk_id"]: r["doc_id"] for r in catalog}
    try:
        return golden_io.resolve_items(items, chunk_docs, golden_io.chunks_by_text(catalog), path.name)
    except golden_io.GoldenImportError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


class ImportGoldenSummary(StageSummary):
    """What an import-golden-set run returns (and its manifest stores as outputs)."""

    lake: str = Field(description="the lake's URI")
    golden_set_id: str = Field(description="the imported version, now the head of its line and the chosen line")
    items: ImportItems
    by_type: dict[str, int] = Field(description="items by qa_type, sorted")
    written: bool = Field(description="whether this run wrote the version (False: the same content existed)")
    line: LineMove | None = Field(default=None, description="the move of its line; absent when the golden suite failed")
    validation: dict[str, Any] | None = Field(
        default=None, description="{golden: {suite, success, evaluated, failures}}: the great-expectations golden suite")
    error: str | None = Field(default=None, description="why the run failed (the golden suite's failed expectations)")


def import_summary(run_id: str, lineage: dict[str, Any], lake_uri: str, golden_set_id: str, rows: list[dict],
                   written: bool, line: dict | None, validation: dict | None = None,
                   error: str | None = None) -> ImportGoldenSummary:
    """The summary of an import that wrote (or found) its version: ok with the line moved, or failed when
    the golden suite failed (error set, line absent: the version is written but heads no line)."""
    summary = ImportGoldenSummary(
        run_id=run_id, status="ok" if error is None else "failed", lineage=lineage, lake=lake_uri,
        golden_set_id=golden_set_id,
        items={"total": len(rows), "new": len(rows), "kept": 0, "stale": 0, "retired": 0, "rejected": 0},
        by_type=dict(sorted(_by_type(rows).items())), written=written,
    )
    if line is not None:
        summary.line = line
    if validation is not None:
        summary.validation = validation
    if error is not None:
        summary.error = error
    return summary


# -- export ---------------------------------------------------------------------------------------
EXPORT_FORMATS = ("jsonl", "ragas")


def export_statuses(include_inactive: bool) -> tuple[str, ...]:
    """The item statuses an export writes: active only, unless inactive items are asked for too."""
    return ("active", "stale", "retired") if include_inactive else ("active",)


def check_export(rows: list[dict], fmt: str, statuses: tuple[str, ...]) -> None:
    """ConfigError (exit 2) before any write: an unknown format, or a ragas export of items that
    reference documents only (ragas carries chunk texts as references: they would be silently lost)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt}: expected jsonl or ragas")
    if fmt == "ragas":
        doc_only = [r["qa_id"] for r in rows if r["status"] in statuses and r["reference_doc_ids"] and not r["reference_chunk_ids"]]
        if doc_only:
            raise ConfigError(f"--format ragas: {len(doc_only)} items reference documents only (e.g. {doc_only[0]}), which a "
                              "ragas dataset cannot carry (its references are context texts); use --format jsonl")


class ExportSummary(SummaryModel):
    """What `golden export` returns (a read-only command: no run, no manifest)."""

    status: str = Field(description="always ok (problems raise ConfigError)")
    golden_set_id: str = Field(description="the exported version")
    format: str = Field(description="jsonl | ragas")
    items: int = Field(description="items written to the file")
    path: str = Field(description="the file written, absolute")


def export_golden_set(lake: Lake, embedding: EmbeddingConfig, out: Path, fmt: str = "jsonl", golden: str = "latest",
                      include_inactive: bool = False) -> dict:
    """Write a golden set to JSONL (ragloop's columns) or a ragas EvaluationDataset JSONL.

    Reads the lake (and, for ragas, the chunk texts of the index under test); writes only `out`.
    Returns the ExportSummary as JSON-ready data."""
    golden_set_id, _ = promotion.Refs(lake).resolve_golden(golden, lake.list_golden())
    if golden_set_id is None:
        raise ConfigError(f"--golden {golden}: no such golden set in {lake.uri} "
                          f"(have: {', '.join(lake.list_golden()) or 'none'})")
    rows = lake.read_golden(golden_set_id).to_pylist()
    statuses = export_statuses(include_inactive)
    check_export(rows, fmt, statuses)
    if fmt == "jsonl":
        count = golden_io.export_rows(rows, out, statuses)
    else:
        store, _ = index_store(lake, providers.current().build_embedder(embedding))
        wanted = {c for r in rows for c in r["reference_chunk_ids"]}
        texts = {r["chunk_id"]: r["text"] for r in store.scan(["chunk_id", "text"]).to_pylist() if r["chunk_id"] in wanted}
        dataset = golden_io.to_ragas_dataset(rows, texts, statuses)
        out.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_jsonl(out)
        count = len(dataset)
    return ExportSummary(status="ok", golden_set_id=golden_set_id, format=fmt, items=count,
                         path=str(out.resolve())).model_dump(mode="json")


# -- import-beir ----------------------------------------------------------------------------------
def check_beir_dir(path: str, split: str) -> None:
    """ConfigError (exit 2) unless the directory holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""
    missing = [p for p in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv") if not (Path(path) / p).is_file()]
    if missing:
        raise ConfigError(f"{path}: not a BEIR dataset directory, missing {', '.join(missing)}")


def read_beir_golden(root: Path, split: str) -> list[dict]:
    """Golden rows from queries.jsonl and qrels/<split>.tsv: doc-level references (score > 0), the
    BEIR query id as qa_id. Queries without a positive judgment in the split are left out."""
    qrels: dict[str, dict[str, int]] = {}
    with (root / "qrels" / f"{split}.tsv").open(encoding="utf-8", newline="") as src:
        for row in csv.DictReader(src, delimiter="\t"):
            if int(row["score"]) > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    rows, now = [], utcnow()
    with (root / "queries.jsonl").open(encoding="utf-8") as src:
        for line in src:
            query = json.loads(line)
            docs = qrels.get(str(query["_id"]))
            if not docs:
                continue
            rows.append({
                "qa_id": str(query["_id"]), "question": query["text"], "reference_answer": "",
                "reference_chunk_ids": [], "reference_doc_ids": sorted(docs),
                "source_chunk_ids": [], "source_doc_ids": sorted(docs), "source_doc_sha256s": [],
                "qa_type": "imported", "persona": "", "status": "active", "review": "imported",
                "generator": f"beir:{root.name}/{split}", "prompt_id": "", "prompt_hash": "", "created_at": now,
            })
    return rows


def read_beir(path: str, split: str) -> list[dict]:
    """read_beir_golden of a checked directory (check_beir_dir); ConfigError (exit 2) when no query has a
    positive judgment in the split."""
    check_beir_dir(path, split)
    rows = read_beir_golden(Path(path), split)
    if not rows:
        raise ConfigError(f"{path}: qrels/{split}.tsv has no positive judgment for any query in queries.jsonl")
    return rows


def beir_line(root: Path, split: str) -> str:
    """The golden-set line of a BEIR import: beir-<directory name>-<split>."""
    return promotion.line_name(f"beir-{root.resolve().name}-{split}")


def beir_failure(indexed: dict, rows: list[dict], lake: Lake) -> dict | None:
    """Why the import cannot go on after indexing (outputs of a failed run), or None: the index run did
    not end ok, or the qrels name documents the indexed snapshot does not hold."""
    if indexed["status"] != "ok":
        return {"error": f"index run {indexed['run_id']} ended {indexed['status']}", "index": indexed}
    known = set(lake.read_snapshot(indexed["lineage"]["snapshot_id"], columns=["doc_id"])["doc_id"].to_pylist())
    unknown = sorted({d for r in rows for d in r["reference_doc_ids"] if d not in known})
    if unknown:
        return {"error": f"qrels name {len(unknown)} documents not in the corpus, e.g. {unknown[:3]}"}
    return None


class ImportBeirSummary(StageSummary):
    """What an import-beir run returns (and its manifest stores as outputs). A failed run carries only
    `error` (and `index` when the index run failed); an ok run carries the rest."""

    lake: str | None = Field(default=None, description="the lake's URI")
    golden_set_id: str | None = Field(default=None, description="the imported version, head of its line and the chosen line")
    items: ImportItems | None = None
    by_type: dict[str, int] | None = Field(default=None, description="items by qa_type (all 'imported')")
    documents: dict[str, Any] | None = Field(default=None, description="the index run's document counts")
    chunks: dict[str, Any] | None = Field(default=None, description="the index run's chunk counts")
    table: dict[str, Any] | None = Field(default=None, description="the chunks table {name, version} indexed")
    serving: Any = Field(default=None, description="the index run's serving table version")
    candidate: Any = Field(default=None, description="the index run's candidate table version, if any")
    disposition: dict[str, Any] | None = Field(default=None, description="the index run's {action, reason}")
    quarantine: list[dict[str, Any]] | None = Field(default=None, description="sources the ingest quarantined")
    line: LineMove | None = Field(default=None, description="the move of the line beir-<dir>-<split>")
    error: str | None = Field(default=None, description="why the run failed")
    index: dict[str, Any] | None = Field(default=None, description="the failed index run's summary")


def beir_summary(run_id: str, lineage: dict[str, Any], lake_uri: str, golden_set_id: str, rows: list[dict],
                 written: bool, indexed: dict, line: dict) -> ImportBeirSummary:
    """The summary of an import-beir run that indexed the corpus and wrote (or found) its golden set."""
    return ImportBeirSummary(
        run_id=run_id, status="ok", lineage=lineage, lake=lake_uri, golden_set_id=golden_set_id,
        items={"total": len(rows), "new": len(rows) if written else 0, "kept": 0, "stale": 0, "retired": 0, "rejected": 0},
        by_type=_by_type(rows), documents=indexed["documents"], chunks=indexed["chunks"], table=indexed["table"],
        serving=indexed.get("serving"), candidate=indexed.get("candidate"), disposition=indexed.get("disposition"),
        quarantine=indexed.get("quarantine", []), line=line,
    )
