"""Golden sets in and out: JSONL (ragloop's own rows or ragas samples) and ragas EvaluationDataset (pure)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.schemas import utcnow

QA_TYPES = ("single_hop", "multi_hop", "abstract", "unanswerable", "paraphrased", "imported")


class GoldenImportError(ValueError):
    """An import file is unusable; the message names the file, line and field. Nothing is written."""


class ImportedItem(BaseModel):
    """One JSONL line: ragloop's field names, or ragas' SingleTurnSample names for the same things."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    question: str = Field(min_length=1, validation_alias="question")
    reference_answer: str | None = None
    reference_chunk_ids: list[str] = Field(default_factory=list)
    reference_doc_ids: list[str] = Field(default_factory=list)
    reference_contexts: list[str] = Field(default_factory=list)  # ragas: matched to chunk texts
    qa_type: str = "imported"
    persona: str = ""
    qa_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _ragas_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "question" not in data and "user_input" in data:
            data = dict(data)
            data["question"] = data.pop("user_input")
            data.setdefault("reference_answer", data.pop("reference", None))
            data.setdefault("reference_chunk_ids", data.pop("reference_context_ids", None) or [])
            data.setdefault("persona", data.pop("persona_name", None) or "")
            style = data.pop("query_style", None)
            if style in QA_TYPES:
                data.setdefault("qa_type", style)
        return data


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def export_rows(rows: Iterable[dict], path: Path, statuses: tuple[str, ...] = ("active",)) -> int:
    """Write golden rows with the given statuses as JSONL (ragloop's columns); returns the count."""
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            if row["status"] not in statuses:
                continue
            out.write(json.dumps({k: _jsonable(v) for k, v in row.items()}, ensure_ascii=False) + "\n")
            count += 1
    return count


def to_ragas_dataset(rows: Iterable[dict], chunk_texts: dict[str, str], statuses: tuple[str, ...] = ("active",)):
    """A ragas EvaluationDataset of SingleTurnSamples: question, reference answer, reference contexts
    (the chunk texts, in reference order) and their ids, persona and question type."""
    from ragas import EvaluationDataset, SingleTurnSample  # heavy import, only when exporting

    samples = []
    for row in rows:
        if row["status"] not in statuses:
            continue
        ids = [c for c in row["reference_chunk_ids"] if c in chunk_texts]
        samples.append(
            SingleTurnSample(
                user_input=row["question"],
                reference=row["reference_answer"],
                reference_contexts=[chunk_texts[c] for c in ids],
                reference_context_ids=ids,
                persona_name=row["persona"] or None,
                query_style=row["qa_type"],
            )
        )
    return EvaluationDataset(samples=samples)


def read_import_file(path: Path) -> list[ImportedItem]:
    """Parse every line first; any bad line fails the whole import, naming the line and field."""
    if not path.is_file():
        raise GoldenImportError(f"{path}: not a file")
    items, errors = [], []
    with path.open(encoding="utf-8") as src:
        for number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            try:
                items.append(ImportedItem.model_validate(json.loads(line)))
            except json.JSONDecodeError as exc:
                errors.append(f"line {number}: not JSON ({exc.msg})")
            except ValidationError as exc:
                fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(line)'}: {e['msg']}" for e in exc.errors())
                errors.append(f"line {number}: {fields}")
    if errors:
        shown = errors[:5] + ([f"... and {len(errors) - 5} more"] if len(errors) > 5 else [])
        raise GoldenImportError(f"{path}: " + "; ".join(shown))
    if not items:
        raise GoldenImportError(f"{path}: no items")
    return items


def resolve_items(
    items: list[ImportedItem], chunk_docs: dict[str, str], text_to_chunk: dict[str, str], source: str
) -> list[dict]:
    """Golden rows for imported items. Chunk ids must exist in the index; ragas reference_contexts are
    matched to chunk ids by exact (stripped) text. Unknown references fail the import, naming the lines."""
    rows, errors = [], []
    known_docs = set(chunk_docs.values())
    for number, item in enumerate(items, start=1):
        chunk_ids = list(item.reference_chunk_ids)
        for text in item.reference_contexts:
            found = text_to_chunk.get(text.strip())
            if found is None:
                errors.append(f"item {number}: a reference_contexts entry matches no chunk text in the index")
            elif found not in chunk_ids:
                chunk_ids.append(found)
        unknown = [c for c in chunk_ids if c not in chunk_docs]
        if unknown:
            errors.append(f"item {number}: reference_chunk_ids not in the index: {unknown[:3]}")
        doc_ids = list(dict.fromkeys(item.reference_doc_ids + [chunk_docs[c] for c in chunk_ids if c in chunk_docs]))
        missing_docs = [d for d in item.reference_doc_ids if d not in known_docs]
        if missing_docs:
            errors.append(f"item {number}: reference_doc_ids not in the index: {missing_docs[:3]}")
        qa_type = item.qa_type if item.qa_type in QA_TYPES else "imported"
        qa_id = item.qa_id or hashlib.sha256(
            json.dumps([item.question.strip(), qa_type, sorted(chunk_ids), sorted(doc_ids)]).encode()
        ).hexdigest()[:24]
        rows.append(
            {
                "qa_id": qa_id,
                "question": item.question.strip(),
                "reference_answer": (item.reference_answer or "").strip(),
                "reference_chunk_ids": chunk_ids,
                "reference_doc_ids": doc_ids,
                "source_chunk_ids": chunk_ids,
                "source_doc_ids": doc_ids,
                "source_doc_sha256s": [],
                "qa_type": qa_type,
                "persona": item.persona,
                "status": "active",
                "review": "imported",
                "generator": f"import:{source}",
                "prompt_id": "",
                "prompt_hash": "",
                "created_at": utcnow(),
                "evidence": [],  # an imported item says which chunks, not which spans
            }
        )
    if errors:
        shown = errors[:5] + ([f"... and {len(errors) - 5} more"] if len(errors) > 5 else [])
        raise GoldenImportError("; ".join(shown))
    duplicates = len(rows) - len({r["qa_id"] for r in rows})
    if duplicates:
        raise GoldenImportError(f"{duplicates} duplicate item(s) (same qa_id, or same question and references)")
    return rows

