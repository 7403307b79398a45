"""Golden sets in and out: JSONL (ragloop rows, ragas 0.2+ samples, ragas 0.1 testsets) and ragas EvaluationDataset (pure)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ragloop.tasks.question_types import IMPORTED, QUESTION_TYPES
from ragloop.tasks.schemas import utcnow


class GoldenImportError(ValueError):
    """An import file is unusable; the message names the file, line and field. Nothing is written."""


class EvidenceSpan(BaseModel):
    """A span of a reference chunk supporting the answer: text[start:end] of chunk `chunk_id`."""

    model_config = ConfigDict(extra="forbid")
    chunk_id: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class ImportedItem(BaseModel):
    """One imported item in ragloop's terms, whatever shape its line had (see SHAPES)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    reference_answer: str | None = None
    reference_chunk_ids: list[str] = Field(default_factory=list)
    reference_doc_ids: list[str] = Field(default_factory=list)
    reference_contexts: list[str] = Field(default_factory=list)  # matched to chunk texts
    qa_type: str = IMPORTED
    persona: str = ""
    qa_id: str | None = None
    evidence: list[EvidenceSpan] = Field(default_factory=list)  # what `golden export` writes; checked by the suite

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty or whitespace only")
        return value

    @model_validator(mode="before")
    @classmethod
    def _any_shape(cls, data: Any) -> Any:
        """A ragas line validates too: it is mapped to ragloop's fields first."""
        if isinstance(data, dict) and not set(data) <= RAGLOOP_FIELDS:
            shape = line_shape(data)
            return _ragloop_fields(data, shape)
        return data


# The line shapes an import recognises, each by its own fields; any other field is an error, so a file
# of another shape can never pass as items with empty references.
RAGLOOP_FIELDS = {"qa_id", "question", "reference_answer", "reference_chunk_ids", "reference_doc_ids",
                  "reference_contexts", "qa_type", "persona", "evidence"}
# What `golden export` writes beside them: provenance the import replaces with its own.
RAGLOOP_IGNORED = {"source_chunk_ids", "source_doc_ids", "source_doc_sha256s", "status", "review", "generator",
                   "prompt_id", "prompt_hash", "created_at", "reviewer", "reviewed_at", "review_reason", "review_event_id", "source"}
# ragas >= 0.2 SingleTurnSample (EvaluationDataset.to_jsonl) and its testset generator's extra columns.
RAGAS_FIELDS = {"user_input", "reference", "reference_contexts", "reference_context_ids", "persona_name",
                "query_style", "query_length", "synthesizer_name"}
RAGAS_IGNORED = {"retrieved_contexts", "retrieved_context_ids", "response", "multi_responses", "rubrics"}
# ragas 0.1 TestsetGenerator output (question, contexts, ground_truth, evolution_type, metadata, episode_done)
# and its evaluation datasets (answer; ground_truths before 0.1.0).
RAGAS01_FIELDS = {"question", "contexts", "ground_truth", "ground_truths", "evolution_type", "metadata", "episode_done"}
RAGAS01_IGNORED = {"answer"}
RAGAS01_TYPES = {"simple": "single_hop", "multi_context": "multi_hop"}  # reasoning, conditional: no ragloop type
SHAPES = {
    "ragloop": "ragloop rows (question, reference_chunk_ids / reference_doc_ids / reference_contexts, ...)",
    "ragas": "ragas 0.2+ samples (user_input, reference, reference_contexts, ...)",
    "ragas-0.1": "ragas 0.1 testsets (question, contexts, ground_truth, ...)",
}


def line_shape(data: Any) -> str:
    """Which shape a parsed line has: 'ragloop', 'ragas' or 'ragas-0.1'; ValueError naming the field otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    keys = set(data)
    if "user_input" in keys:
        shape, allowed = "ragas", RAGAS_FIELDS | RAGAS_IGNORED
    elif "question" in keys and keys & {"contexts", "ground_truth", "ground_truths", "evolution_type", "episode_done"}:
        shape, allowed = "ragas-0.1", RAGAS01_FIELDS | RAGAS01_IGNORED
    elif "question" in keys:
        shape, allowed = "ragloop", RAGLOOP_FIELDS | RAGLOOP_IGNORED
    else:
        raise ValueError(f"no 'question' or 'user_input' field (fields: {sorted(keys)}); expected one of: "
                         + "; ".join(SHAPES.values()))
    unknown = sorted(keys - allowed)
    if unknown:
        raise ValueError(f"field {unknown[0]!r} is not a field of {SHAPES[shape]}"
                         + (f" (also {unknown[1:]})" if len(unknown) > 1 else ""))
    return shape


def _as_list(value: Any, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"field {field!r}: expected a list, got {type(value).__name__}")
    return value


def check_qa_type(data: dict) -> None:
    """ValueError when a ragloop row's own `qa_type` is not a registered type (or IMPORTED), or names a
    type the chain must answer while the row gives no reference chunks, docs or contexts."""
    qa_type = data["qa_type"]
    if qa_type != IMPORTED and qa_type not in QUESTION_TYPES:
        raise ValueError(f"qa_type {qa_type!r} is not a registered question type "
                         f"(registered: {', '.join(QUESTION_TYPES)}; or {IMPORTED!r})")
    kind = QUESTION_TYPES.get(qa_type)
    if kind and not kind.must_refuse and not any(
        data.get(f) for f in ("reference_chunk_ids", "reference_doc_ids", "reference_contexts")
    ):
        raise ValueError(f"qa_type {qa_type!r} needs reference_chunk_ids, reference_doc_ids or reference_contexts "
                         "(only a must-refuse type such as 'unanswerable' has none)")


def to_item(data: dict, shape: str) -> ImportedItem:
    """The ImportedItem for a line of the given shape (pydantic's errors name the ragloop field)."""
    return ImportedItem.model_validate(_ragloop_fields(data, shape))


def _ragloop_fields(data: dict, shape: str) -> dict:
    if shape == "ragloop":
        return {k: v for k, v in data.items() if k in RAGLOOP_FIELDS}
    if shape == "ragas":
        style = data.get("query_style")
        return {
            "question": data["user_input"], "reference_answer": data.get("reference"),
            "reference_contexts": _as_list(data.get("reference_contexts"), "reference_contexts"),
            "reference_chunk_ids": _as_list(data.get("reference_context_ids"), "reference_context_ids"),
            "persona": data.get("persona_name") or "",
            **({"qa_type": style} if style in QUESTION_TYPES else {}),
        }
    truth = data.get("ground_truth")
    if truth is None and data.get("ground_truths"):
        truth = "\n".join(map(str, _as_list(data["ground_truths"], "ground_truths")))
    # With an `answer`, the line is an evaluation dataset: its contexts are what a chain retrieved, not references.
    contexts = [] if "answer" in data else _as_list(data.get("contexts"), "contexts")
    return {
        "question": data["question"], "reference_answer": truth, "reference_contexts": contexts,
        "qa_type": RAGAS01_TYPES.get(data.get("evolution_type"), IMPORTED),
    }


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
    """Parse every line first; any bad line fails the whole import, naming the line and field.

    Each line is recognised as one of SHAPES by its fields; a file holds one shape, and a field no shape
    knows is an error (a testset of another shape must never import as items with empty references)."""
    if not path.is_file():
        raise GoldenImportError(f"{path}: not a file")
    items, errors, first_shape = [], [], None
    with path.open(encoding="utf-8") as src:
        for number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                shape = line_shape(data)
                if first_shape is None:
                    first_shape = (shape, number)
                elif shape != first_shape[0]:
                    raise ValueError(f"{SHAPES[shape]}, but line {first_shape[1]} is {SHAPES[first_shape[0]]}")
                if shape == "ragloop" and data.get("qa_type") is not None:
                    check_qa_type(data)
                items.append(to_item(data, shape))
            except json.JSONDecodeError as exc:
                errors.append(f"line {number}: not JSON ({exc.msg})")
            except ValidationError as exc:
                fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(line)'}: {e['msg']}" for e in exc.errors())
                errors.append(f"line {number}: {fields}")
            except ValueError as exc:
                errors.append(f"line {number}: {exc}")
    if errors:
        shown = errors[:5] + ([f"... and {len(errors) - 5} more"] if len(errors) > 5 else [])
        raise GoldenImportError(f"{path}: " + "; ".join(shown))
    if not items:
        raise GoldenImportError(f"{path}: no items")
    return items


def chunks_by_text(catalog: Iterable[dict]) -> dict[str, list[str]]:
    """Stripped chunk text -> every chunk_id holding it, sorted: the same passage can live in several
    documents (a copied section, a shared footer), and each copy is an equally right answer."""
    out: dict[str, list[str]] = {}
    for row in catalog:
        out.setdefault(row["text"].strip(), []).append(row["chunk_id"])
    return {text: sorted(ids) for text, ids in out.items()}


def resolve_items(
    items: list[ImportedItem], chunk_docs: dict[str, str], text_to_chunks: dict[str, list[str]], source: str
) -> list[dict]:
    """Golden rows for imported items. Chunk ids must exist in the index; ragas reference_contexts are
    matched by exact (stripped) text to every chunk holding that text (see chunks_by_text), so the
    relevant set does not depend on which copy a tie in retrieval puts first. Unknown references fail
    the import, naming the lines."""
    rows, errors = [], []
    known_docs = set(chunk_docs.values())
    for number, item in enumerate(items, start=1):
        chunk_ids = list(item.reference_chunk_ids)
        for text in item.reference_contexts:
            found = text_to_chunks.get(text.strip())
            if not found:
                errors.append(f"item {number}: a reference_contexts entry matches no chunk text in the index")
            chunk_ids.extend(c for c in found or [] if c not in chunk_ids)
        unknown = [c for c in chunk_ids if c not in chunk_docs]
        if unknown:
            errors.append(f"item {number}: reference_chunk_ids not in the index: {unknown[:3]}")
        stray = [e.chunk_id for e in item.evidence if e.chunk_id not in chunk_ids or e.end <= e.start]
        if stray:
            errors.append(f"item {number}: evidence spans must lie in its reference chunks with start < end: {stray[:3]}")
        doc_ids = list(dict.fromkeys(item.reference_doc_ids + [chunk_docs[c] for c in chunk_ids if c in chunk_docs]))
        missing_docs = [d for d in item.reference_doc_ids if d not in known_docs]
        if missing_docs:
            errors.append(f"item {number}: reference_doc_ids not in the index: {missing_docs[:3]}")
        qa_type = item.qa_type if item.qa_type in QUESTION_TYPES else IMPORTED
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
                "evidence": [e.model_dump() for e in item.evidence],  # spans are checked by the golden suite
            }
        )
    if errors:
        shown = errors[:5] + ([f"... and {len(errors) - 5} more"] if len(errors) > 5 else [])
        raise GoldenImportError("; ".join(shown))
    duplicates = len(rows) - len({r["qa_id"] for r in rows})
    if duplicates:
        raise GoldenImportError(f"{duplicates} duplicate item(s) (same qa_id, or same question and references)")
    return rows

