"""import-beir flow: a BEIR dataset (corpus + queries + qrels) becomes a snapshot, an index and a golden set."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
from prefect import flow

from ragloop.flows.common import RunRecorder, flow_settings, lake_locked
from ragloop.flows.index import index_corpus
from ragloop.tasks import promotion, schemas
from ragloop.tasks.qa_generation import golden_set_id_of
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import ConfigError
from ragloop.tasks.storage import Lake


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


@flow(name="import-beir")
@lake_locked("import-beir")
def import_beir(path: str, lake: str | None = None, chunking: str | None = None, split: str = "test",
                config_path: str | None = None, progress: bool = False) -> dict:
    """Index DIR/corpus.jsonl (through the normal index flow) and import DIR's queries and qrels of
    `split` as a golden set with document-level references, on the line `beir-<dir>-<split>`, which
    becomes the chosen line (`--golden latest`)."""
    root = Path(path)
    missing = [p for p in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv") if not (root / p).is_file()]
    if missing:
        raise ConfigError(f"{path}: not a BEIR dataset directory, missing {', '.join(missing)}")
    settings = flow_settings(config_path, {"lake": lake})
    rows = read_beir_golden(root, split)
    if not rows:
        raise ConfigError(f"{path}: qrels/{split}.tsv has no positive judgment for any query in queries.jsonl")
    indexed = index_corpus(sources=[str(root / "corpus.jsonl")], lake=lake, chunking=chunking,
                           config_path=config_path, progress=progress)
    store_lake = Lake(settings.lake)
    run = RunRecorder(store_lake, "import-beir", settings)
    if indexed["status"] != "ok":
        return run.finish("failed", {"error": f"index run {indexed['run_id']} ended {indexed['status']}", "index": indexed})
    known = set(store_lake.read_snapshot(indexed["lineage"]["snapshot_id"], columns=["doc_id"])["doc_id"].to_pylist())
    unknown = sorted({d for r in rows for d in r["reference_doc_ids"] if d not in known})
    if unknown:
        return run.finish("failed", {"error": f"qrels name {len(unknown)} documents not in the corpus, e.g. {unknown[:3]}"})
    golden_set_id = golden_set_id_of(rows)
    written = store_lake.write_golden(golden_set_id, pa.Table.from_pylist(rows, schema=schemas.GOLDEN))
    line = promotion.line_name(f"beir-{root.resolve().name}-{split}")
    chosen = promotion.Refs(store_lake).set_line(line, golden_set_id, "imported", run.run_id, choose=True)
    run.lineage.update({**indexed["lineage"], "golden_set_id": golden_set_id, "golden_line": line, "index_run_id": indexed["run_id"],
                        "beir": {"path": str(root.resolve()), "split": split}})
    return run.finish("ok", {
        "lake": store_lake.uri,
        "golden_set_id": golden_set_id,
        "items": {"total": len(rows), "new": len(rows) if written else 0, "kept": 0, "stale": 0, "retired": 0, "rejected": 0},
        "by_type": dict(Counter(r["qa_type"] for r in rows)),
        "documents": indexed["documents"],
        "chunks": indexed["chunks"],
        "table": indexed["table"],
        "serving": indexed.get("serving"),
        "candidate": indexed.get("candidate"),
        "disposition": indexed.get("disposition"),
        "quarantine": indexed.get("quarantine", []),
        "line": chosen,
    })
