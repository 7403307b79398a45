"""Production logs: import (JSONL or OpenTelemetry/OpenInference spans), redaction, and the monitor's
reference-free production section (answer checks, budgets, feedback, coverage of the golden set and the
topics it misses). Parsing, redaction and the checks are pure; `import_logs` and `production_pass` read
and write the lake through tasks.storage.Lake. No prefect.

**JSONL** (`--format jsonl`, the default): one JSON object per line; blank lines are skipped.

    question          string, required (non-empty)
    timestamp | at    required: ISO-8601 (a naive time is UTC) or epoch seconds
    answer            string or null (null: no answer was given)
    contexts          list of strings, or of objects with `text`/`content` (retrieved passages, rank order)
    latency_ms        number >= 0
    prompt_tokens, completion_tokens, tokens    integers >= 0 (tokens: total; prompt + completion if absent)
    conversation_id | session_id                string
    feedback          "up" | "down" | 1 | -1 | true | false | null, or an object {thumbs, rating, comment}
    rating            number (e.g. 1-5 stars; at or below logs.negative_rating_at_most counts as negative)
    comment           string

Any other field is ignored (counted in the summary's `ignored_fields`, never stored). A line that is not a
JSON object or has a required field missing or a field of the wrong type is quarantined with its line
number, the field and the reason; the other lines are imported.

**otel** (`--format otel`): OTLP JSON trace exports (`{"resourceSpans": [...]}`, one per file or one per
line as the OpenTelemetry collector's file exporter writes them) of spans carrying OpenInference
attributes, as Phoenix, OpenLLMetry-OpenInference and the OpenInference instrumentors write them. One
trace is one record: the root span's `input.value` / `output.value` (a JSON value is read for its
`question`/`query`/`input` and `answer`/`output`/`response` string), its start time and duration,
`session.id`; the first RETRIEVER span's `retrieval.documents.N.document.content`; the LLM spans'
`llm.token_count.prompt|completion|total` summed. OpenInference has no feedback attribute: ragloop reads
`feedback.thumbs`, `feedback.rating`, `feedback.comment` on any span of the trace.

**Identity**: `log_id` is the hash of the record as logged (before redaction), so re-importing a file
adds nothing; the same interaction logged again with other fields (feedback added later) is another
record. **Redaction** (`logs.redact`) replaces e-mail addresses, phone numbers and your own patterns in
the question, answer, contexts and comment before anything is written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field

from ragloop.tasks import grounding, schemas
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.monitoring import Alert, Check
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import ConfigError, LogsConfig, RedactConfig
from ragloop.tasks.storage import Lake
from ragloop.tasks.summaries import StageSummary

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "otel")
LOG_SUFFIXES = (".jsonl", ".json", ".ndjson")

# -- redaction --------------------------------------------------------------------------------------
# Simple documented patterns (no PII library is installed): an address with a dot in its domain; a phone
# number of 7 to 15 digits with optional +country code, (area) and space/dot/dash separators, never an
# ISO date or a plain decimal.
EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]?\d{2,5}){1,4}(?![\w])")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
REDACTED = grounding.REDACTION_MARKERS  # the degenerate check knows them: a redacted answer is no "placeholder"


class Redactor:
    """Replaces e-mail addresses, phone numbers and user patterns (logs.redact) in text; counts replacements."""

    def __init__(self, config: RedactConfig) -> None:
        self.rules: list[tuple[re.Pattern, str]] = []
        # user patterns first: a customer id that looks like a phone number is redacted as the user said
        self.rules += [(re.compile(p), "pattern") for p in config.patterns]
        if config.emails:
            self.rules.append((EMAIL, "email"))
        if config.phones:
            self.rules.append((PHONE, "phone"))

    def redact(self, text: str | None) -> tuple[str | None, int]:
        """(redacted text, spans replaced); None stays None."""
        if not text:
            return text, 0
        total = 0
        for pattern, kind in self.rules:
            def swap(m: re.Match, kind=kind) -> str:
                nonlocal total
                if kind == "phone" and not _phone_like(m.group(0)):
                    return m.group(0)
                total += 1
                return REDACTED[kind]
            text = pattern.sub(swap, text)
        return text, total

    def record(self, rec: dict) -> dict:
        """The record with its texts redacted and `redactions` set."""
        out, n = dict(rec), 0
        for key in ("question", "answer", "comment"):
            out[key], k = self.redact(rec.get(key))
            n += k
        contexts = []
        for text in rec.get("contexts") or []:
            text, k = self.redact(text)
            contexts.append(text)
            n += k
        out["contexts"], out["redactions"] = contexts, n
        return out


def _phone_like(text: str) -> bool:
    digits = sum(ch.isdigit() for ch in text)
    if not 7 <= digits <= 15 or _ISO_DATE.match(text.strip()):
        return False
    # one run of digits with a single dot is a decimal number, not a phone
    return not re.fullmatch(r"\d+\.\d+", text.strip())


# -- parsing ----------------------------------------------------------------------------------------
class BadLine(ValueError):
    """A log line or trace that cannot be imported: where, which field, why."""

    def __init__(self, field_: str, reason: str, detail: str) -> None:
        super().__init__(f"{field_ or 'line'}: {reason}: {detail}")
        self.field, self.reason, self.detail = field_, reason, detail


JSONL_FIELDS = {"question", "timestamp", "at", "answer", "contexts", "latency_ms", "prompt_tokens", "completion_tokens",
                "tokens", "conversation_id", "session_id", "feedback", "rating", "comment"}


def parse_time(value: Any, field_: str) -> dt.datetime:
    """A UTC datetime from ISO-8601 text (naive = UTC; a trailing Z is fine) or epoch seconds; BadLine otherwise."""
    if isinstance(value, bool) or value is None:
        raise BadLine(field_, "bad_type", f"expected an ISO-8601 time or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise BadLine(field_, "bad_value", f"epoch seconds must be >= 0, got {value!r}")
        return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)
    if isinstance(value, str):
        try:
            at = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadLine(field_, "bad_value", f"not an ISO-8601 time: {value[:40]!r}") from None
        return at.replace(tzinfo=dt.timezone.utc) if at.tzinfo is None else at.astimezone(dt.timezone.utc)
    raise BadLine(field_, "bad_type", f"expected an ISO-8601 time or epoch seconds, got {type(value).__name__}")


def _text(value: Any, field_: str, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadLine(field_, "missing" if value is None else "bad_type",
                      "required" if value is None else f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadLine(field_, "missing", "empty")
    return value


def _number(value: Any, field_: str, integer: bool = False) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadLine(field_, "bad_type", f"expected a number, got {value!r}")
    if value < 0:
        raise BadLine(field_, "bad_value", f"must be >= 0, got {value!r}")
    if integer and int(value) != value:
        raise BadLine(field_, "bad_type", f"expected an integer, got {value!r}")
    return int(value) if integer else float(value)


THUMBS = {"up": "up", "down": "down", "thumbs_up": "up", "thumbs_down": "down", "+1": "up", "-1": "down",
          "positive": "up", "negative": "down", 1: "up", -1: "down", True: "up", False: "down"}


def _thumbs(value: Any, field_: str) -> str | None:
    if value is None:
        return None
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in THUMBS or (isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (1, -1)):
        raise BadLine(field_, "bad_value", f"expected up or down (or 1/-1, true/false), got {value!r}")
    return THUMBS[key]


def _contexts(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadLine("contexts", "bad_type", f"expected a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            item = item.get("text", item.get("content", item.get("page_content")))
        if not isinstance(item, str):
            raise BadLine(f"contexts[{i}]", "bad_type", "expected a string or an object with text/content")
        out.append(item)
    return out


def record_from_json(data: Any) -> tuple[dict, list[str]]:
    """(record, ignored field names) of one JSONL line's object; BadLine naming the field otherwise."""
    if not isinstance(data, dict):
        raise BadLine("", "not_object", f"expected a JSON object, got {type(data).__name__}")
    if "timestamp" not in data and "at" not in data:
        raise BadLine("timestamp", "missing", "required (or `at`)")
    feedback = data.get("feedback")
    rating, comment = data.get("rating"), data.get("comment")
    if isinstance(feedback, dict):
        rating = feedback.get("rating", rating)
        comment = feedback.get("comment", comment)
        feedback = feedback.get("thumbs", feedback.get("value"))
        thumbs_field = "feedback.thumbs"
    else:
        thumbs_field = "feedback"
    prompt = _number(data.get("prompt_tokens"), "prompt_tokens", integer=True)
    completion = _number(data.get("completion_tokens"), "completion_tokens", integer=True)
    tokens = _number(data.get("tokens"), "tokens", integer=True)
    rec = {
        "question": _text(data.get("question"), "question", required=True),
        "at": parse_time(data["timestamp"] if "timestamp" in data else data["at"], "timestamp" if "timestamp" in data else "at"),
        "answer": _text(data.get("answer"), "answer"),
        "contexts": _contexts(data.get("contexts")),
        "latency_ms": _number(data.get("latency_ms"), "latency_ms"),
        "prompt_tokens": prompt, "completion_tokens": completion,
        "tokens": tokens if tokens is not None else (prompt or 0) + (completion or 0) if (prompt, completion) != (None, None) else None,
        "conversation_id": _text(data.get("conversation_id", data.get("session_id")), "conversation_id"),
        "feedback": _thumbs(feedback, thumbs_field),
        "rating": _number(rating, "rating"),
        "comment": _text(comment, "comment"),
    }
    return rec, sorted(set(data) - JSONL_FIELDS)


def log_id_of(rec: Mapping) -> str:
    """Content hash of a record as logged (before redaction): the same line imported twice is one record."""
    keys = ("question", "answer", "contexts", "latency_ms", "prompt_tokens", "completion_tokens", "tokens",
            "conversation_id", "feedback", "rating", "comment")
    return canonical_hash({"at": rec["at"].isoformat(), **{k: rec.get(k) for k in keys}})[:24]


@dataclass
class Parsed:
    """What a file's lines gave: records (with `line`), quarantined lines, ignored field counts."""

    records: list[dict] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)  # {line, field, reason, detail}
    ignored_fields: Counter = field(default_factory=Counter)


def parse_jsonl(lines: Iterable[str]) -> Parsed:
    """Records of a JSONL log (line numbers from 1); a bad line is quarantined, never fatal."""
    out = Parsed()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadLine("", "not_json", f"{exc.msg} at column {exc.colno}") from None
            rec, ignored = record_from_json(data)
        except BadLine as exc:
            out.bad.append({"line": n, "field": exc.field, "reason": exc.reason, "detail": exc.detail})
            continue
        out.ignored_fields.update(ignored)
        out.records.append({**rec, "line": n})
    return out


def _otlp_value(value: Any) -> Any:
    """An OTLP JSON AnyValue ({"stringValue": ...}, {"intValue": "3"}, arrays) as a plain value."""
    if not isinstance(value, dict):
        return value
    for key, cast in (("stringValue", str), ("intValue", int), ("doubleValue", float), ("boolValue", bool)):
        if key in value:
            return cast(value[key])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in (value["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in value:
        return {kv["key"]: _otlp_value(kv.get("value")) for kv in (value["kvlistValue"] or {}).get("values") or []}
    return None


def span_attributes(span: Mapping) -> dict[str, Any]:
    """A span's attributes as one flat {dotted key: value} dict, from OTLP's [{key, value}] list or a
    (nested) mapping as other exporters write it."""
    raw = span.get("attributes") or {}
    flat: dict[str, Any] = {}
    if isinstance(raw, list):
        for kv in raw:
            if isinstance(kv, dict) and "key" in kv:
                flat[kv["key"]] = _otlp_value(kv.get("value"))
        return flat

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = node
    walk("", raw)
    return flat


def _io_text(value: Any, mime: Any, keys: Sequence[str]) -> str | None:
    """input.value / output.value as the user's text: a JSON value's first string under `keys` (or the last
    message's content), else the text itself."""
    if value is None:
        return None
    text = str(value)
    if mime == "application/json" or text.lstrip()[:1] in "{[":
        try:
            data = json.loads(text)
        except ValueError:
            return text
        if isinstance(data, str):
            return data
        if isinstance(data, dict):
            for key in keys:
                if isinstance(data.get(key), str):
                    return data[key]
            messages = data.get("messages")
            if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
                content = messages[-1].get("content")
                if isinstance(content, str):
                    return content
    return text


def _nanos(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def record_from_trace(spans: Sequence[dict]) -> dict:
    """One record from a trace's spans ({attrs, start, end, parent, kind}); BadLine when it holds no question."""
    roots = [s for s in spans if not s["parent"]] or sorted(spans, key=lambda s: s["start"] or 0)[:1]
    root = sorted(roots, key=lambda s: (s["kind"] not in ("CHAIN", "AGENT"), s["start"] or 0))[0]
    a = root["attrs"]
    question = _io_text(a.get("input.value"), a.get("input.mime_type"), ("question", "query", "input", "user_input"))
    if not question or not question.strip():
        raise BadLine("input.value", "missing", "the trace's root span has no input.value")
    answer = _io_text(a.get("output.value"), a.get("output.mime_type"), ("answer", "output", "response", "content"))
    retrievers = sorted((s for s in spans if s["kind"] == "RETRIEVER"), key=lambda s: s["start"] or 0)
    contexts: list[str] = []
    if retrievers:
        docs = {}
        for key, value in retrievers[0]["attrs"].items():
            m = re.fullmatch(r"retrieval\.documents\.(\d+)\.document\.content", key)
            if m and isinstance(value, str):
                docs[int(m.group(1))] = value
        contexts = [docs[i] for i in sorted(docs)]
    counts = {"prompt": 0, "completion": 0, "total": 0}
    seen = False
    for s in spans:
        for part in counts:
            value = s["attrs"].get(f"llm.token_count.{part}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                counts[part] += int(value)
                seen = True
    merged = {k: v for s in spans for k, v in s["attrs"].items()}
    if root["start"] is None:
        raise BadLine("startTimeUnixNano", "missing", "the root span has no start time")
    latency = (root["end"] - root["start"]) / 1e6 if root["end"] is not None else None
    return {
        "question": question, "answer": answer, "contexts": contexts,
        "at": dt.datetime.fromtimestamp(root["start"] / 1e9, dt.timezone.utc),
        "latency_ms": latency if latency is None or latency >= 0 else None,
        "prompt_tokens": counts["prompt"] if seen else None, "completion_tokens": counts["completion"] if seen else None,
        "tokens": (counts["total"] or counts["prompt"] + counts["completion"]) if seen else None,
        "conversation_id": _text(merged.get("session.id"), "session.id"),
        "feedback": _thumbs(merged.get("feedback.thumbs"), "feedback.thumbs"),
        "rating": _number(merged.get("feedback.rating"), "feedback.rating"),
        "comment": _text(merged.get("feedback.comment"), "feedback.comment"),
    }


def parse_otel(text: str) -> Parsed:
    """Records of an OTLP JSON export (one object, or one per line): one per trace with a question."""
    out = Parsed()
    stripped = text.strip()
    if not stripped:
        return out
    try:
        documents = [(1, json.loads(stripped))]
    except json.JSONDecodeError:
        documents = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                documents.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                out.bad.append({"line": n, "field": "", "reason": "not_json", "detail": f"{exc.msg} at column {exc.colno}"})
    traces: dict[str, list[dict]] = {}
    first_line: dict[str, int] = {}
    for n, doc in documents:
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceSpans"), list):
            out.bad.append({"line": n, "field": "resourceSpans", "reason": "missing",
                            "detail": "not an OTLP JSON trace export (no resourceSpans list)"})
            continue
        for rs in doc["resourceSpans"]:
            for ss in (rs or {}).get("scopeSpans") or (rs or {}).get("instrumentationLibrarySpans") or []:
                for span in (ss or {}).get("spans") or []:
                    trace_id = str(span.get("traceId") or "")
                    if not trace_id:
                        out.bad.append({"line": n, "field": "traceId", "reason": "missing", "detail": "a span without traceId"})
                        continue
                    attrs = span_attributes(span)
                    traces.setdefault(trace_id, []).append({
                        "attrs": attrs, "parent": span.get("parentSpanId") or "", "kind": str(attrs.get("openinference.span.kind") or "").upper(),
                        "start": _nanos(span.get("startTimeUnixNano")), "end": _nanos(span.get("endTimeUnixNano"))})
                    first_line.setdefault(trace_id, n)
    for trace_id, spans in traces.items():
        try:
            rec = record_from_trace(spans)
        except BadLine as exc:
            out.bad.append({"line": first_line[trace_id], "field": exc.field, "reason": exc.reason,
                            "detail": f"trace {trace_id}: {exc.detail}"})
            continue
        out.records.append({**rec, "line": first_line[trace_id]})
    return out


def log_files(path: Path) -> list[Path]:
    """The files an import reads: the file, or a directory's *.jsonl/*.json/*.ndjson files (recursive,
    sorted); ConfigError when there are none."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOG_SUFFIXES)
        if files:
            return files
        raise ConfigError(f"logs import: no {', '.join(LOG_SUFFIXES)} files under {path}")
    raise ConfigError(f"logs import: not found: {path}")


# -- import ---------------------------------------------------------------------------------------------
class LogsImportSummary(StageSummary):
    """What `ragloop logs import` returns and records."""

    status: Literal["ok", "partial", "failed"] = Field(
        description="ok; partial when some lines were quarantined; failed when every line was (nothing imported, exit 1)")
    lake: str = Field(description="the lake's URI")
    format: str = Field(description="jsonl or otel")
    files: list[str] = Field(description="the files read")
    records: dict[str, int] = Field(description="{read, new, known, quarantined, redacted}: records (otel: traces) "
                                                "read, newly stored, already in the lake, lines quarantined, records "
                                                "with something redacted")
    import_id: str | None = Field(description="the id of the Parquet part written (content hash), null when nothing was new")
    path: str | None = Field(description="the Parquet part written, null when nothing was new")
    quarantine: list[dict[str, Any]] = Field(description="the first 20 quarantined lines: [{source, line, field, reason, detail}]")
    ignored_fields: dict[str, int] = Field(description="fields the format does not use, with how many records had them (never stored)")
    redactions: int = Field(description="spans redaction replaced")
    seconds: float = Field(description="wall time of parsing, redaction and the write")
    error: str = Field(default="", description="what went wrong (failed runs)")


def import_logs(lake: Lake, path: Path, fmt: str, config: RedactConfig) -> dict:
    """Parse, redact and store a log file or directory: the records the lake does not hold yet as ONE
    Parquet part (`logs/parts/<import_id>.parquet`, written atomically), the bad lines under
    `logs/quarantine/`. Re-importing adds nothing. Returns the summary's outputs (LogsImportSummary fields
    but run_id, status, lineage) plus `status`."""
    import time

    start = time.perf_counter()
    if fmt not in FORMATS:
        raise ConfigError(f"logs import: --format {fmt!r} is not one of {', '.join(FORMATS)}")
    files = log_files(path)
    redactor = Redactor(config)
    known = set(lake.read_logs(["log_id"]).column("log_id").to_pylist())
    now = utcnow()
    new_rows, bad, ignored = {}, [], Counter()
    read = 0
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        parsed = parse_jsonl(text.splitlines()) if fmt == "jsonl" else parse_otel(text)
        read += len(parsed.records)
        ignored.update(parsed.ignored_fields)
        # a bad line's detail quotes its value: redacted like a record, so no personal data is stored by quarantine
        bad += [{"source": str(file), **b, "detail": redactor.redact(b.get("detail"))[0]} for b in parsed.bad]
        for rec in parsed.records:
            log_id = log_id_of(rec)
            if log_id in known or log_id in new_rows:
                continue
            row = redactor.record(rec)
            row.pop("line", None)
            new_rows[log_id] = {**row, "log_id": log_id, "source_format": fmt, "imported_at": now}
    import_id = canonical_hash(sorted(new_rows))[:24] if new_rows else None
    written = None
    if new_rows:
        rows = [dict(r, import_id=import_id) for _, r in sorted(new_rows.items(), key=lambda kv: (kv[1]["at"], kv[0]))]
        written = lake.write_logs(import_id, pa.Table.from_pylist(rows, schema=schemas.PRODUCTION_LOGS))
    if bad:
        # keyed by content, so a re-import of the same bad lines rewrites the same file
        qid = canonical_hash([[b["source"], b["line"], b["field"], b["reason"], b["detail"]] for b in bad])[:24]
        lake.write_log_quarantine(qid, pa.Table.from_pylist(
            [{**b, "import_id": import_id, "seen_at": now} for b in bad], schema=schemas.LOG_QUARANTINE))
    redacted = [r for r in new_rows.values() if r["redactions"]]
    # every line quarantined (e.g. --format otel on a JSONL file): nothing was imported, a failure a script sees
    status = ("failed" if not read else "partial") if bad else "ok"
    return {"status": status, "lake": lake.uri, "format": fmt, "files": [str(f) for f in files],
            "records": {"read": read, "new": len(new_rows), "known": read - len(new_rows), "quarantined": len(bad),
                        "redacted": len(redacted)},
            "import_id": import_id, "path": written, "quarantine": bad[:20], "ignored_fields": dict(sorted(ignored.items())),
            "redactions": sum(r["redactions"] for r in new_rows.values()), "seconds": round(time.perf_counter() - start, 3)}


# -- the monitor's production section -----------------------------------------------------------------------
Encode = Callable[[Sequence[str]], np.ndarray]
DAY_FIGURES = ("logs", "answered", "feedback_rate", "negative_rate", "latency_p50_ms", "latency_p95_ms", "tokens_p50",
               "tokens_p95", "checked", "degenerate", "grounded", "refusal", "top1_median", "uncovered")


def is_negative(row: Mapping, config: LogsConfig) -> bool:
    """Thumbs down, or a rating at or below logs.negative_rating_at_most."""
    return row.get("feedback") == "down" or (row.get("rating") is not None and row["rating"] <= config.negative_rating_at_most)


def has_feedback(row: Mapping) -> bool:
    return row.get("feedback") is not None or row.get("rating") is not None


def day_of(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).date().isoformat()


def in_window(rows: Sequence[dict], window_days: int) -> list[dict]:
    """The rows of the last `window_days` days up to the newest one, oldest first."""
    if not rows:
        return []
    newest = max(r["at"] for r in rows).astimezone(dt.timezone.utc).date()
    first = newest - dt.timedelta(days=window_days - 1)
    return sorted((r for r in rows if r["at"].astimezone(dt.timezone.utc).date() >= first), key=lambda r: (r["at"], r["log_id"]))


def sample_rows(rows: Sequence[dict], n: int, seed: int) -> list[dict]:
    """Up to n rows, a seeded sample that depends on the rows' ids only (not on their order)."""
    ordered = sorted(rows, key=lambda r: r["log_id"])
    if len(ordered) <= n:
        return ordered
    picked = np.random.default_rng(seed).choice(len(ordered), size=n, replace=False)
    return [ordered[i] for i in sorted(picked)]


def answer_checks(row: Mapping, min_grounding: float) -> dict:
    """Reference-free checks of one logged answer: {refused, degenerate (reason or None), grounded}, with
    ragloop's own rules (tasks.grounding, tasks.chain.is_refusal); all None without an answer."""
    from ragloop.tasks.chain import is_refusal

    answer = row.get("answer")
    if not answer or not answer.strip():
        return {"refused": None, "degenerate": None, "grounded": None}
    if is_refusal(answer):
        return {"refused": True, "degenerate": None, "grounded": None}
    context = grounding.joined(row.get("contexts") or [])
    degenerate = grounding.degenerate_reason(answer, row["question"], context)
    grounded = degenerate is None and not grounding.unsupported_facts(answer, context) \
        and grounding.support(answer, context) >= min_grounding
    return {"refused": False, "degenerate": degenerate, "grounded": grounded}


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def _mean(values: Sequence[float | bool]) -> float | None:
    return round(float(np.mean([float(v) for v in values])), 4) if len(values) else None


@dataclass
class Topic:
    """A group of uncovered production questions: its top words, size and the questions nearest its centre."""

    label: str
    size: int
    share: float  # of the uncovered questions checked
    examples: list[str]
    log_ids: list[str]
    days: dict[str, int]  # day -> questions of this topic that day


def cluster_topics(questions: Sequence[str], vectors: np.ndarray, log_ids: Sequence[str], days: Sequence[str],
                   config: LogsConfig) -> list[Topic]:
    """Uncovered questions grouped by meaning (scikit-learn agglomerative clustering, average linkage on
    cosine distance, cut at 1 - logs.topic_similarity: no cluster count to guess), the largest
    `max_topics` of at least `min_topic_size` questions, each labelled by its three most distinctive words
    (TF-IDF of the topic's questions against the other topics') and shown by the questions nearest its
    centroid. Deterministic for the same input."""
    if len(questions) < config.min_topic_size:
        return []
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.text import TfidfVectorizer

    labels = AgglomerativeClustering(n_clusters=None, distance_threshold=1.0 - config.topic_similarity, metric="cosine",
                                     linkage="average").fit_predict(np.asarray(vectors, dtype=np.float64))
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    kept = sorted((g for g in groups.values() if len(g) >= config.min_topic_size), key=lambda g: (-len(g), min(g)))[: config.max_topics]
    if not kept:
        return []
    docs = [" ".join(questions[i] for i in g) for g in kept]
    try:
        tfidf = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_][\w-]+\b", sublinear_tf=True)
        matrix = tfidf.fit_transform(docs).toarray()
        terms = tfidf.get_feature_names_out()
    except ValueError:  # nothing but stop words
        matrix, terms = np.zeros((len(kept), 0)), []
    out = []
    for row, g in zip(matrix, kept):
        top = [terms[j] for j in np.argsort(-row, kind="stable")[:3] if row[j] > 0]
        centre = np.mean(vectors[g], axis=0)
        nearest = sorted(g, key=lambda i: (-float(vectors[i] @ centre), i))
        # examples that differ by more than a number first ("refund 2" and "refund 3" say the same thing)
        seen, distinct, rest = set(), [], []
        for i in nearest:
            key = re.sub(r"\d+", "#", questions[i].lower())
            (rest if key in seen else distinct).append(questions[i])
            seen.add(key)
        examples = list(dict.fromkeys(distinct + rest))[: config.topic_examples]
        out.append(Topic(", ".join(top) or "(no distinctive words)", len(g), round(len(g) / len(questions), 4), examples,
                         [log_ids[i] for i in nearest], dict(sorted(Counter(days[i] for i in g).items()))))
    return out


@dataclass
class ProductionPass:
    """The monitor's production section: its check (figures + alerts), the topics, the per-day trend and
    the uncovered questions offered to the review app."""

    check: Check
    by_day: dict[str, dict]
    topics: list[Topic]
    candidates: list[dict]  # [{log_id, topic, similarity}] uncovered questions, most recent day first

    def report(self) -> dict:
        """What the HTML report's Production section shows."""
        return {"figures": {k: v for k, v in self.check.figures.items() if k != "by_day"}, "by_day": self.by_day,
                "topics": [t.__dict__ for t in self.topics]}


def production_check(rows: Sequence[dict], golden_questions: Sequence[str], encode: Encode | None,
                     config: LogsConfig) -> ProductionPass:
    """Reference-free quality of the logged answers per day (the last `window_days` days): feedback and
    negative-feedback rates, latency and token p50/p95 (ms, tokens; over every log of the day), and on a
    seeded sample of `sample_per_day` logs per day: degenerate, grounded and refusal rates, the median
    cosine between the question and its first context, and the share of questions with no active golden
    question within `coverage_similarity` (uncovered; clustered into topics). `encode` (texts -> unit
    vectors) None skips the embedder figures. Alerts (thresholds in logs.*) are judged on the newest day
    with at least `min_day_logs` logs; a topic is named with example questions in the coverage alert."""
    window = in_window(rows, config.window_days)
    if not window:
        return ProductionPass(Check({"window_logs": 0, "reason": "no production logs (ragloop logs import FILE)"}, []), {}, [], [])
    by_day_rows: dict[str, list[dict]] = {}
    for r in window:
        by_day_rows.setdefault(day_of(r["at"]), []).append(r)
    sampled = {day: sample_rows(day_rows, config.sample_per_day, config.seed) for day, day_rows in by_day_rows.items()}
    checked = [r for day in sorted(sampled) for r in sampled[day]]
    top1, covered_sim = {}, {}
    if encode is not None and checked:
        questions = encode([r["question"] for r in checked])
        with_context = [(i, r) for i, r in enumerate(checked) if r.get("contexts")]
        if with_context:
            contexts = encode([r["contexts"][0] for _, r in with_context])
            for (i, r), c in zip(with_context, contexts):
                top1[r["log_id"]] = float(questions[i] @ c)
        if golden_questions:
            golden = encode(list(golden_questions))
            best = (questions @ golden.T).max(axis=1)
            covered_sim = {r["log_id"]: float(s) for r, s in zip(checked, best)}
    verdicts = {r["log_id"]: answer_checks(r, config.min_grounding) for r in checked}

    by_day: dict[str, dict] = {}
    for day, day_rows in sorted(by_day_rows.items()):
        sample = sampled[day]
        latencies = [r["latency_ms"] for r in day_rows if r.get("latency_ms") is not None]
        tokens = [r["tokens"] for r in day_rows if r.get("tokens") is not None]
        with_feedback = [r for r in day_rows if has_feedback(r)]
        v = [verdicts[r["log_id"]] for r in sample]
        answered = [x for x in v if x["refused"] is not None]
        judged = [x for x in answered if not x["refused"]]
        sims = [covered_sim[r["log_id"]] for r in sample if r["log_id"] in covered_sim]
        t1 = [top1[r["log_id"]] for r in sample if r["log_id"] in top1]
        by_day[day] = {
            "logs": len(day_rows), "answered": sum(1 for r in day_rows if r.get("answer")),
            "feedback_rate": _mean([has_feedback(r) for r in day_rows]),
            "negative_rate": _mean([is_negative(r, config) for r in with_feedback]),
            "latency_p50_ms": _pct(latencies, 50), "latency_p95_ms": _pct(latencies, 95),
            "tokens_p50": _pct(tokens, 50), "tokens_p95": _pct(tokens, 95), "checked": len(sample),
            "degenerate": _mean([x["degenerate"] is not None for x in judged]),
            "grounded": _mean([bool(x["grounded"]) for x in judged]),
            "refusal": _mean([x["refused"] for x in answered]),
            "top1_median": round(float(np.median(t1)), 4) if t1 else None,
            "uncovered": _mean([s < config.coverage_similarity for s in sims]) if sims else None,
        }

    uncovered = [r for r in checked if r["log_id"] in covered_sim and covered_sim[r["log_id"]] < config.coverage_similarity]
    topics: list[Topic] = []
    if uncovered and encode is not None:
        vectors = encode([r["question"] for r in uncovered])
        topics = cluster_topics([r["question"] for r in uncovered], np.asarray(vectors), [r["log_id"] for r in uncovered],
                                [day_of(r["at"]) for r in uncovered], config)
    topic_of = {log_id: t.label for t in topics for log_id in t.log_ids}
    candidates = [{"log_id": r["log_id"], "topic": topic_of.get(r["log_id"]), "similarity": round(covered_sim[r["log_id"]], 4)}
                  for r in sorted(uncovered, key=lambda r: (r["at"], r["log_id"]), reverse=True)][: config.max_candidates]

    judged_days = [d for d in sorted(by_day) if by_day[d]["logs"] >= config.min_day_logs]
    day = judged_days[-1] if judged_days else None
    figures: dict[str, Any] = {"window_logs": len(window), "days": len(by_day), "first_day": min(by_day), "last_day": max(by_day),
                               "day": day, "golden_questions": len(golden_questions),
                               "uncovered_checked": len(uncovered), "topics": len(topics)}
    if day:
        figures.update({k: by_day[day][k] for k in DAY_FIGURES})
    else:
        figures["reason"] = f"no day has {config.min_day_logs} logs (logs.min_day_logs): figures shown, no alert judged"
    if not golden_questions:
        figures["coverage"] = "not measured: no active golden question to compare with"
    figures["by_day"] = by_day
    alerts = production_alerts(by_day[day], day, topics, config) if day else []
    return ProductionPass(Check(figures, alerts), by_day, topics, candidates)


def production_alerts(f: Mapping, day: str, topics: Sequence[Topic], config: LogsConfig) -> list[Alert]:
    """The production alerts of one day's figures (None thresholds and missing figures are not judged)."""
    alerts = []

    def over(name: str, limit, kind: str, message: Callable[[], str], severity: str = "warning", below: bool = False) -> None:
        """An alert when f[name] passes `limit` (under it with below=True); the message is formatted only then."""
        value = f[name]
        if value is None or limit is None or (value >= limit if below else value <= limit):
            return
        alerts.append(Alert(kind=kind, severity=severity, metric=f"production.{name}", message=message(),
                            details={"day": day, "value": value, "threshold": limit, "logs": f["logs"], "checked": f["checked"]}))

    topic_text = ""
    if topics:
        t = topics[0]
        topic_text = (f"; users now ask about '{t.label}' ({t.size} questions, e.g. "
                      + "; ".join(f'"{q}"' for q in t.examples) + ") and the golden set does not")
    over("uncovered", config.max_uncovered, "query_coverage",
         lambda: f"{f['uncovered']:.0%} of the production questions of {day} have no golden question within cosine "
         f"{config.coverage_similarity} (threshold {config.max_uncovered:.0%}, {f['checked']} checked){topic_text}")
    if alerts and topics:
        alerts[-1].details["topics"] = [{"label": t.label, "size": t.size, "examples": t.examples} for t in topics]
    over("negative_rate", config.max_negative_feedback, "negative_feedback",
         lambda: f"negative feedback on {day}: {f['negative_rate']:.0%} of rated answers (threshold {config.max_negative_feedback:.0%})")
    over("degenerate", config.max_degenerate, "production_degenerate",
         lambda: f"{f['degenerate']:.0%} of the logged answers checked on {day} are degenerate (threshold {config.max_degenerate:.0%})")
    over("grounded", config.min_grounded, "production_ungrounded",
         lambda: f"only {f['grounded']:.0%} of the logged answers checked on {day} are grounded in their contexts "
         f"(floor {config.min_grounded:.0%})", below=True)
    over("refusal", config.max_refusal, "production_refusal",
         lambda: f"{f['refusal']:.0%} of the logged answers on {day} are refusals (threshold {config.max_refusal:.0%})")
    over("top1_median", config.min_top1_median, "production_retrieval",
         lambda: f"median question-to-first-context cosine on {day} is {f['top1_median']:.3f} (floor {config.min_top1_median})", below=True)
    over("latency_p95_ms", config.max_latency_p95_ms, "production_latency",
         lambda: f"p95 latency on {day} is {f['latency_p95_ms']:.0f} ms (budget {config.max_latency_p95_ms:.0f} ms)")
    over("tokens_p95", config.max_tokens_p95, "production_tokens",
         lambda: f"p95 tokens per answer on {day} is {f['tokens_p95']:.0f} (budget {config.max_tokens_p95})")
    return alerts


def active_golden_questions(lake: Lake, golden_rows: Sequence[dict] | None) -> list[str]:
    """The active questions of the golden set the monitor watches (`golden_rows`), else of the chosen line's head."""
    rows = list(golden_rows or [])
    if not rows:
        from ragloop.tasks import promotion

        lines = promotion.Refs(lake).lines()
        ref = lines.lines.get(lines.chosen) if lines.chosen else None
        if ref is not None and lake.golden_exists(ref.golden_set_id):
            rows = lake.read_golden(ref.golden_set_id).to_pylist()
    return [r["question"] for r in rows if r["status"] == "active" and r.get("question")]


def production_pass(lake: Lake, golden_rows: Sequence[dict] | None, embedder: Callable[[], Any] | None,
                    config: LogsConfig, run_id: str) -> ProductionPass | None:
    """Read the window of logs, run production_check with the embedder (built only when there are logs),
    and keep the uncovered questions for the review app (refs/production_candidates.json). None when the
    lake holds no logs."""
    table = lake.read_logs()
    if table.num_rows == 0:
        return None
    rows = in_window(table.to_pylist(), config.window_days)
    encode = embedder().encode if embedder is not None else None
    result = production_check(rows, active_golden_questions(lake, golden_rows), encode, config)
    lake.write_ref("production_candidates", {"run_id": run_id, "at": utcnow().isoformat(), "uncovered": result.candidates})
    return result


def history_figures(check: Check) -> dict[str, float]:
    """The day's scalar figures the monitor keeps as history rows (scope production)."""
    return {k: float(v) for k, v in check.figures.items() if k in DAY_FIGURES and isinstance(v, (int, float))}


# -- the review app's production queue -----------------------------------------------------------------------
def review_candidates(lake: Lake, config: LogsConfig) -> list[dict]:
    """Logged answers with negative feedback and the uncovered questions the last monitor pass kept
    (refs/production_candidates.json), newest first, each once: the log row plus `reasons`
    (negative_feedback, uncovered) and `topic`."""
    table = lake.read_logs()
    if table.num_rows == 0:
        return []
    rows = {r["log_id"]: r for r in table.to_pylist()}
    out: dict[str, dict] = {}
    for r in rows.values():
        if is_negative(r, config):
            out[r["log_id"]] = {**r, "reasons": ["negative_feedback"], "topic": None}
    for c in (lake.read_ref("production_candidates") or {}).get("uncovered") or []:
        r = rows.get(c["log_id"])
        if r is None:
            continue
        item = out.setdefault(c["log_id"], {**r, "reasons": [], "topic": None})
        item["reasons"].append("uncovered")
        item["topic"] = c.get("topic")
    return sorted(out.values(), key=lambda r: (r["at"], r["log_id"]), reverse=True)
