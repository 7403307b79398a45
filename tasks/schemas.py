"""Record types and Arrow schemas of the lake's artifacts (pure)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import Enum

import pyarrow as pa


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class QuarantineReason(str, Enum):
    binary = "binary"
    empty = "empty"
    too_large = "too_large"
    decode_error = "decode_error"
    parse_error = "parse_error"
    outside_root = "outside_root"
    unreadable = "unreadable"
    unsupported = "unsupported"  # an extension no loader handles (listed, never silently skipped)


@dataclass(frozen=True)
class Document:
    doc_id: str
    source_uri: str
    content_sha256: str
    text: str
    title: str
    mime: str
    bytes: int
    metadata: dict = field(default_factory=dict)
    ingested_at: dt.datetime | None = None


@dataclass(frozen=True)
class Quarantined:
    source_uri: str
    reason: QuarantineReason
    detail: str


TS = pa.timestamp("us", tz="UTC")

DOCUMENTS = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source_uri", pa.string()),
        ("content_sha256", pa.string()),
        ("text", pa.large_string()),
        ("title", pa.string()),
        ("metadata", pa.string()),  # JSON
        ("mime", pa.string()),
        ("bytes", pa.int64()),
        ("ingested_at", TS),
    ]
)

QUARANTINE = pa.schema(
    [
        ("source_uri", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("snapshot_id", pa.string()),
        ("seen_at", TS),
    ]
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("flow", pa.string()),
        ("status", pa.string()),
        ("started_at", TS),
        ("ended_at", TS),
        ("lineage", pa.string()),  # JSON
        ("outputs", pa.string()),  # JSON
    ]
)


def chunks_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("chunk_id", pa.string()),
            ("doc_id", pa.string()),
            ("doc_sha256", pa.string()),
            ("text", pa.string()),
            ("text_sha256", pa.string()),
            ("headings", pa.list_(pa.string())),
            ("position", pa.int32()),
            ("n_tokens", pa.int32()),
            ("metadata", pa.string()),  # JSON
            ("vector", pa.list_(pa.float32(), dim)),
            ("chunker_hash", pa.string()),
            ("embedded_at", TS),
        ]
    )

PROMPTS = pa.schema(
    [
        ("name", pa.string()),
        ("prompt_hash", pa.string()),
        ("text", pa.string()),
        ("first_seen_at", TS),
    ]
)

GOLDEN = pa.schema(
    [
        ("qa_id", pa.string()),
        ("question", pa.string()),
        ("reference_answer", pa.string()),
        ("reference_chunk_ids", pa.list_(pa.string())),  # what retrieval should find ([] if unanswerable)
        ("reference_doc_ids", pa.list_(pa.string())),
        ("source_chunk_ids", pa.list_(pa.string())),  # what the item was generated from (staleness)
        ("source_doc_ids", pa.list_(pa.string())),
        ("source_doc_sha256s", pa.list_(pa.string())),
        ("qa_type", pa.string()),
        ("persona", pa.string()),
        ("status", pa.string()),  # active | stale | retired | outdated (made by an older generation prompt)
        ("review", pa.string()),  # synthetic | approved | edited | rejected | imported
        ("generator", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt_hash", pa.string()),
        ("created_at", TS),
        # Spans of reference chunk text that support the reference answer: text[start:end] in Python
        # characters, per chunk. Empty for unanswerable and imported items; null in sets written
        # before the column existed (read as empty).
        ("evidence", pa.list_(pa.struct([("chunk_id", pa.string()), ("start", pa.int32()), ("end", pa.int32())]))),
        # Provenance of a human review (tasks.review): who decided, when, why (a rejection's reason) and the
        # last review event applied to the item. Null on items no person has decided yet.
        ("reviewer", pa.string()),
        ("reviewed_at", TS),
        ("review_reason", pa.string()),
        ("review_event_id", pa.string()),
        # Where a person took the item from: "production" for a logged user question a reviewer turned into a
        # golden item (tasks.review, the production queue); null for synthetic and imported items.
        ("source", pa.string()),
    ]
)


EVAL_ITEMS = pa.schema(
    [
        ("qa_id", pa.string()),
        ("qa_type", pa.string()),
        ("question", pa.string()),
        ("status", pa.string()),  # ok | failed (a step failed; counted, never dropped)
        ("error", pa.string()),
        ("retrieved_chunk_ids", pa.list_(pa.string())),
        ("retrieved_doc_ids", pa.list_(pa.string())),
        ("retrieval_scores", pa.list_(pa.float64())),
        ("answer", pa.string()),
        ("refused", pa.bool_()),
        ("grounded", pa.bool_()),  # the guardrail's grounding check on the answer (None: no answer)
        ("degenerate", pa.string()),  # loop | passage_spam | placeholder | truncated | echo; None: not degenerate
        ("relevance", pa.float64()),  # best question-context cosine, the refusal guardrail's evidence
        ("metrics", pa.map_(pa.string(), pa.float64())),
        ("failed_metrics", pa.list_(pa.string())),  # metrics whose judgment failed for this item
        ("stale_references", pa.list_(pa.string())),  # reference ids the index no longer holds (left out of IR metrics)
    ]
)

TRACES = pa.schema(
    [
        ("qa_id", pa.string()),
        ("step", pa.string()),  # rewrite | retrieve | answer | guardrail | judge:<metric>
        ("input", pa.string()),
        ("output", pa.string()),
        ("latency_ms", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("error", pa.string()),
        # LLM steps served from the LLM call cache (tasks/llm_cache.py): latency_ms is the lookup's, tokens
        # are the original call's, original_latency_ms the model's when it first answered (null: not cached)
        ("cached", pa.bool_()),
        ("original_latency_ms", pa.float64()),
    ]
)

# The LLM call cache (tasks/llm_cache.py): one row per distinct call, in append-only parts.
LLM_CACHE = pa.schema(
    [
        ("key", pa.string()),  # sha256 of (format, model identity, messages, sampling params)
        ("text", pa.string()),  # the reply, exactly as the model gave it
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("latency_ms", pa.float64()),  # the original call's model latency
        ("model", pa.string()),  # the reply's model field
        ("finish_reason", pa.string()),
        ("identity", pa.string()),  # JSON: {provider, model_id[, base_url]} (for inspection; it is in the key)
        ("params", pa.string()),  # JSON: the sampling parameters (for inspection; they are in the key)
        ("created_at", TS),
    ]
)


HISTORY = pa.schema(
    [
        ("observation_id", pa.string()),  # the run that observed it: an eval run, or a night reusing one
        ("run_id", pa.string()),  # the run that produced the value (eval run; monitor run for drift figures)
        ("flow", pa.string()),  # eval | monitor
        ("golden_set_id", pa.string()),
        ("scope", pa.string()),  # all | type:<qa_type> | drift | budget
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n", pa.int64()),
        ("at", TS),
        # which series the observation belongs to: the monitor watches one (golden line, chain) at a time
        ("golden_line", pa.string()),
        ("chain_hash", pa.string()),
        ("chain_label", pa.string()),  # short human name of the chain, for plot axes
        ("mode", pa.string()),  # nightly | prompt-changed | explicit | experiment (null: written before modes)
    ]
)


# Review events (tasks.review), append-only: one Parquet file per write under reviews/. `before`/`after`
# are JSON objects of the fields the action changed; `golden_set_id` is the version decided on, `run_id`
# the eval run for answer grades.
REVIEWS = pa.schema(
    [
        ("event_id", pa.string()),
        ("reviewer", pa.string()),
        ("at", TS),
        ("queue", pa.string()),  # golden | stale | answers | compare
        ("item_id", pa.string()),  # the qa_id (golden, stale, answers, compare)
        ("action", pa.string()),  # approve | edit | reject | skip | reapprove | retire | grade | prefer
        ("before", pa.string()),  # JSON
        ("after", pa.string()),  # JSON
        ("golden_set_id", pa.string()),
        ("run_id", pa.string()),
        ("line", pa.string()),  # the golden-set line the item belongs to
        ("base_event_id", pa.string()),  # the latest event the reviewer saw on the item (conflict check)
    ]
)

# One judge's agreement with human answer grades (tasks/calibration.py), one file per calibration.
CALIBRATIONS = pa.schema(
    [
        ("calibration_id", pa.string()),  # hash of the content: the same labels and judge, the same id
        ("judge_id", pa.string()),  # hash of `judge`: a changed judge is another judge, uncalibrated
        ("metric", pa.string()),
        ("judge", pa.string()),  # JSON: kind, provider, model, prompt hashes / params / code hash
        ("n", pa.int64()),  # labelled items the metric scored
        ("labels", pa.string()),  # JSON {correct, partially_correct, incorrect}
        ("accuracy", pa.float64()),
        ("kappa", pa.float64()),  # Cohen's kappa (scikit-learn); null when undefined (one class only)
        ("kappa_low", pa.float64()),
        ("kappa_high", pa.float64()),
        ("confusion", pa.string()),  # JSON [[tn, fp], [fn, tp]]: rows human fail/pass, columns judge fail/pass
        ("base_rate_human", pa.float64()),
        ("base_rate_judge", pa.float64()),
        ("threshold", pa.float64()),  # the judge passes an item at value >= threshold (continuous metrics)
        ("run_ids", pa.list_(pa.string())),
        ("calibrated_at", TS),
    ]
)



# Production logs (tasks/production.py): one Parquet file per import holding only the records the lake did
# not have (log_id is the hash of the record as logged, before redaction), redacted before they were written.
PRODUCTION_LOGS = pa.schema(
    [
        ("log_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("contexts", pa.list_(pa.string())),  # retrieved passages, in rank order
        ("latency_ms", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("tokens", pa.int64()),  # total (prompt + completion when only those were logged)
        ("at", TS),  # when the question was asked
        ("conversation_id", pa.string()),
        ("feedback", pa.string()),  # up | down | null (no thumbs given)
        ("rating", pa.float64()),  # e.g. 1-5 stars, as logged; null when none
        ("comment", pa.string()),
        ("redactions", pa.int64()),  # how many spans redaction replaced in this record
        ("import_id", pa.string()),
        ("source_format", pa.string()),  # jsonl | otel
        ("imported_at", TS),
    ]
)

# Log lines an import could not use, with the reason (one file per import that had any).
LOG_QUARANTINE = pa.schema(
    [
        ("source", pa.string()),  # the file
        ("line", pa.int64()),  # 1-based line number in it (otel: the line holding the span's export)
        ("field", pa.string()),  # the field at fault, or "" for the whole line
        ("reason", pa.string()),  # not_json | not_object | missing | bad_type | bad_value | unknown_field
        ("detail", pa.string()),
        ("import_id", pa.string()),
        ("seen_at", TS),
    ]
)
