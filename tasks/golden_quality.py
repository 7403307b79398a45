"""Golden-set quality: the report (`ragloop golden report`) and the diff between two versions
(`ragloop golden diff`). The measures are pure functions over golden rows and chunk texts; the two
commands read the lake (and, for the report, the chunk texts of the serving index) and write nothing.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

from pydantic import Field

from ragloop.tasks import grounding, promotion
from ragloop.tasks.qa_generation import report_folders
from ragloop.tasks.question_types import must_refuse
from ragloop.tasks.settings import ConfigError
from ragloop.tasks.storage import Lake
from ragloop.tasks.summaries import CommandSummary

# The report's duplicate measure is lexical, not synth's embedding cosine: a read-only command loads no
# model. Two questions whose content-word sets overlap this much (Jaccard) count as near-duplicates.
LEXICAL_DUPLICATE_JACCARD = 0.7
DUPLICATE_MEASURE = f"lexical: Jaccard of the questions' content-word sets >= {LEXICAL_DUPLICATE_JACCARD}"
WINDOW_CHARS = 60  # chunk text shown on each side of an evidence span in the sample
MIN_WORD_SUPPORT = 0.8  # share of an answer's content words its evidence spans must hold (synth's default)
DIFF_FIELDS = ("question", "reference_answer", "evidence", "status")
EVIDENCE_FAILURES = ("no_evidence", "chunk_missing", "span_outside_chunk", "unsupported_facts", "unsupported_words")


# -- the measures (pure) ---------------------------------------------------------------------------
def by_type(rows: Sequence[dict]) -> dict[str, dict[str, int]]:
    """{qa_type: {active, total}} by type name."""
    total = Counter(r["qa_type"] for r in rows)
    active = Counter(r["qa_type"] for r in rows if r["status"] == "active")
    return {t: {"active": active[t], "total": n} for t, n in sorted(total.items())}


def folder_coverage(rows: Sequence[dict], chunk_docs: Iterable[str]) -> dict[str, Any]:
    """Documents with >= 1 active item / documents in the index, overall and per top-level folder
    (tasks.qa_generation.report_folders: top-level folders, a folder with most documents split; '.' = the root). chunk_docs: the doc_id of every indexed chunk.
    An answerable item counts for its source documents that are still indexed; an unanswerable one asks
    about something its document does not say, so it covers nothing."""
    docs = set(chunk_docs)
    covered = {d for r in rows if r["status"] == "active" and not must_refuse(r["qa_type"])
               for d in (r.get("source_doc_ids") or []) if d in docs}
    folder_of = report_folders(sorted(docs))
    folders = Counter(folder_of.values())
    folders_covered = Counter(folder_of[d] for d in covered)
    return {"documents": len(covered), "of": len(docs),
            "ratio": round(len(covered) / len(docs), 3) if docs else 0.0,
            "by_folder": {f: {"documents": folders_covered[f], "of": n} for f, n in sorted(folders.items())}}


def _words(question: str) -> frozenset[str]:
    return frozenset(w.lower() for w in grounding.content_words(question))


def lexical_duplicates(rows: Sequence[dict], threshold: float = LEXICAL_DUPLICATE_JACCARD) -> dict[str, Any]:
    """Share of active items whose question is within `threshold` (Jaccard of content-word sets) of another
    active item's: {rate (3 decimals, 0.0 for no item), items (duplicated), of (active), measure, pairs
    [[qa_id, qa_id]] (at most 10, stored order)}. Quadratic in the items: fine for golden-set sizes."""
    active = [(r["qa_id"], _words(r["question"] or "")) for r in rows if r["status"] == "active"]
    dup: set[str] = set()
    pairs = []
    for i, (qa_i, wi) in enumerate(active):
        for qa_j, wj in active[i + 1:]:
            union = wi | wj
            if union and len(wi & wj) / len(union) >= threshold:
                dup.update((qa_i, qa_j))
                pairs.append([qa_i, qa_j])
    return {"rate": round(len(dup) / len(active), 3) if active else 0.0, "items": len(dup), "of": len(active),
            "measure": DUPLICATE_MEASURE, "pairs": pairs[:10]}


def evidence_problem(row: dict, chunk_texts: dict[str, str]) -> str | None:
    """Why an answerable item's evidence does not support it (one of EVIDENCE_FAILURES), or None.
    chunk_texts: chunk_id -> text of the serving index. Spans are text[start:end] in Python characters."""
    evidence = row.get("evidence") or []
    if not evidence:
        return "no_evidence"
    if any(e["chunk_id"] not in chunk_texts for e in evidence):
        return "chunk_missing"
    if any(not (0 <= e["start"] < e["end"] <= len(chunk_texts[e["chunk_id"]])) for e in evidence):
        return "span_outside_chunk"
    spans = grounding.joined(grounding.spans_text(chunk_texts[e["chunk_id"]], [(e["start"], e["end"])]) for e in evidence)
    answer = row.get("reference_answer") or ""
    if grounding.unsupported_facts(answer, spans):
        return "unsupported_facts"
    if grounding.support(answer, spans) < MIN_WORD_SUPPORT:
        return "unsupported_words"  # "... using a custom decorator": words no span says
    return None


def evidence_supported(rows: Sequence[dict], chunk_texts: dict[str, str]) -> dict[str, Any]:
    """Of the active answerable items, those whose evidence spans exist, lie inside their chunk's text,
    contain the answer's facts (numbers, units, dates, names: tasks.grounding.unsupported_facts) and
    MIN_WORD_SUPPORT of its content words (synth's default min_answer_support). A supported answer can
    still be wrong for its question: this measures grounding, not correctness (read the sample).
    {items, of, rate (3 decimals; null for no answerable item), failures {reason: n}}."""
    answerable = [r for r in rows if r["status"] == "active" and not must_refuse(r["qa_type"])]
    problems = Counter(p for r in answerable if (p := evidence_problem(r, chunk_texts)))
    ok = len(answerable) - sum(problems.values())
    return {"items": ok, "of": len(answerable), "rate": round(ok / len(answerable), 3) if answerable else None,
            "failures": dict(sorted(problems.items()))}


def marked_window(text: str, start: int, end: int, window: int = WINDOW_CHARS) -> str:
    """The span text[start:end] inside `window` characters of its chunk on each side, marked «…»; '…'
    where the chunk text goes on. Out-of-range spans are clipped."""
    start, end = max(0, min(start, len(text))), max(0, min(end, len(text)))
    lo, hi = max(0, start - window), min(len(text), end + window)
    return ("…" if lo else "") + text[lo:start] + "«" + text[start:end] + "»" + text[end:hi] + ("…" if hi < len(text) else "")


def sample_items(rows: Sequence[dict], chunk_texts: dict[str, str], n: int, seed: int) -> list[dict]:
    """n active items drawn with random.Random(seed) (the same set and seed, the same sample), in qa_id
    order, each {qa_id, qa_type, question, answer, evidence [{chunk_id, start, end, text, window}]};
    text/window are null when the chunk is not in the index."""
    active = sorted((r for r in rows if r["status"] == "active"), key=lambda r: r["qa_id"])
    picked = sorted(random.Random(seed).sample(active, min(n, len(active))), key=lambda r: r["qa_id"])
    out = []
    for r in picked:
        spans = []
        for e in r.get("evidence") or []:
            text = chunk_texts.get(e["chunk_id"])
            spans.append({"chunk_id": e["chunk_id"], "start": e["start"], "end": e["end"],
                          "text": text[e["start"]:e["end"]] if text is not None else None,
                          "window": marked_window(text, e["start"], e["end"]) if text is not None else None})
        out.append({"qa_id": r["qa_id"], "qa_type": r["qa_type"], "question": r["question"],
                    "answer": r.get("reference_answer"), "evidence": spans})
    return out


def generation_record(runs: Iterable[dict], golden_set_id: str) -> dict | None:
    """What the synth run that wrote `golden_set_id` recorded: {run_id, attempted, accepted, per_type
    {type: {accepted, attempted}} (null in manifests before it was recorded), accept_rate_by_type,
    rejects {reason: n}}; None when no synth run wrote it (an imported or reviewed version). runs: run
    manifests with lineage/outputs as dicts or JSON text. The earliest run that wrote it wins."""
    found = []
    for run in runs:
        if run["flow"] != "synth":
            continue
        lineage, outputs = (json.loads(run[k] or "{}") if isinstance(run[k], str) else (run[k] or {})
                            for k in ("lineage", "outputs"))
        if lineage.get("golden_set_id") == golden_set_id and outputs.get("written"):
            found.append((run["started_at"], run["run_id"], outputs))
    if not found:
        return None
    _, run_id, outputs = min(found, key=lambda f: (f[0], f[1]))
    return {"run_id": run_id, "attempted": outputs.get("attempted"), "accepted": (outputs.get("items") or {}).get("new"),
            "per_type": outputs.get("per_type"), "accept_rate_by_type": outputs.get("accept_rate_by_type") or {},
            "rejects": outputs.get("rejects") or {}}


def _short(value: Any) -> Any:
    """Values are kept whole: a change after the 80th character must show (the human output wraps)."""
    return value


def _field(row: dict, name: str) -> Any:
    if name == "evidence":
        return [[e["chunk_id"], e["start"], e["end"]] for e in row.get("evidence") or []]
    return row.get(name)


def field_changes(a: dict, b: dict) -> dict[str, dict[str, Any]]:
    """{field: {before, after}} for the DIFF_FIELDS that differ; strings whole, evidence as
    [[chunk_id, start, end]]."""
    return {f: {"before": _short(_field(a, f)), "after": _short(_field(b, f))}
            for f in DIFF_FIELDS if _field(a, f) != _field(b, f)}


def diff_rows(rows_a: Sequence[dict], rows_b: Sequence[dict]) -> dict[str, Any]:
    """Items added, retired and changed from version A to B.

    added: qa_id in B, not in A. retired: active in A, absent or not active in B. changed: qa_id in
    both, not retired, some DIFF_FIELDS differ. An added item and a retired one of the same qa_type
    and the same source_chunk_ids (a text regenerated by synth gets a new qa_id) are paired instead,
    as regenerated. Returns {counts {added, retired, changed, regenerated, unchanged}, added [{qa_id,
    qa_type, status, question}], retired [{qa_id, qa_type, question, status_after (null: absent)}],
    changed [{qa_id, qa_type, fields {field: {before, after}}}], regenerated [{qa_id_before,
    qa_id_after, qa_type, fields}]}, lists in A's then B's stored order."""
    a = {r["qa_id"]: r for r in rows_a}
    b = {r["qa_id"]: r for r in rows_b}
    added = [r for r in rows_b if r["qa_id"] not in a]
    retired = [r for r in rows_a if r["status"] == "active" and (r["qa_id"] not in b or b[r["qa_id"]]["status"] != "active")]
    retired_ids = {r["qa_id"] for r in retired}

    def key(r: dict) -> tuple:
        return r["qa_type"], tuple(sorted(r.get("source_chunk_ids") or []))

    waiting: dict[tuple, list[dict]] = defaultdict(list)
    for r in added:
        if r["status"] == "active" and r.get("source_chunk_ids"):
            waiting[key(r)].append(r)
    regenerated, paired = [], set()
    for r in retired:
        if waiting.get(key(r)):
            new = waiting[key(r)].pop(0)
            paired.update((r["qa_id"], new["qa_id"]))
            regenerated.append({"qa_id_before": r["qa_id"], "qa_id_after": new["qa_id"], "qa_type": r["qa_type"],
                                "fields": field_changes(r, new)})
    changed, unchanged = [], 0
    for r in rows_a:
        if r["qa_id"] in b and r["qa_id"] not in retired_ids:
            fields = field_changes(r, b[r["qa_id"]])
            if fields:
                changed.append({"qa_id": r["qa_id"], "qa_type": r["qa_type"], "fields": fields})
            else:
                unchanged += 1
    added_out = [{"qa_id": r["qa_id"], "qa_type": r["qa_type"], "status": r["status"], "question": _short(r["question"])}
                 for r in added if r["qa_id"] not in paired]
    retired_out = [{"qa_id": r["qa_id"], "qa_type": r["qa_type"], "question": _short(r["question"]),
                    "status_after": b[r["qa_id"]]["status"] if r["qa_id"] in b else None}
                   for r in retired if r["qa_id"] not in paired]
    return {"counts": {"added": len(added_out), "retired": len(retired_out), "changed": len(changed),
                       "regenerated": len(regenerated), "unchanged": unchanged},
            "added": added_out, "retired": retired_out, "changed": changed, "regenerated": regenerated}


# -- the commands (read the lake) ------------------------------------------------------------------
class GoldenReportSummary(CommandSummary):
    """What `golden report [ID|LINE]` returns: the quality of one golden-set version."""

    golden_set_id: str = Field(description="the version reported")
    line: str | None = Field(description="the line it heads or last belonged to, null if none")
    items: dict[str, int] = Field(description="{total, active}: items in the version, every status / active")
    by_type: dict[str, dict[str, int]] = Field(description="{qa_type: {active, total}}, by type name")
    generation: dict[str, Any] | None = Field(
        description="what the synth run that wrote the version recorded: {run_id, attempted, accepted, per_type "
                    "{type: {accepted, attempted}} (null for runs before it was recorded), accept_rate_by_type, "
                    "rejects {reason: n}}; null when not recorded (an imported or reviewed version)")
    coverage: dict[str, Any] = Field(
        description="{documents (with >= 1 active item), of (documents in the serving index), ratio, by_folder "
                    "{top-level folder: {documents, of}}}")
    duplicates: dict[str, Any] = Field(
        description="{rate, items, of (active), measure (lexical, named), pairs [[qa_id, qa_id]] (at most 10)}")
    evidence_supported: dict[str, Any] = Field(
        description="{items, of (active answerable items), rate (null: none), failures {no_evidence | chunk_missing "
                    "| span_outside_chunk | unsupported_facts | unsupported_words: n}}")
    index: dict[str, Any] | None = Field(description="{table, version} of the serving index read, null without an index")
    sample: list[dict[str, Any]] = Field(
        description="[{qa_id, qa_type, question, answer, evidence [{chunk_id, start, end, text, window (the span "
                    "marked «…» in its chunk text)}]}]: --sample N active items, seeded by --seed, in qa_id order")


class GoldenDiffSummary(CommandSummary):
    """What `golden diff A B` returns: the items added, retired and changed from version A to version B."""

    a: str = Field(description="version A's golden_set_id")
    b: str = Field(description="version B's golden_set_id")
    lines: dict[str, str | None] = Field(description="{a, b}: the line each version heads or belonged to, null if none")
    counts: dict[str, int] = Field(description="{added, retired, changed, regenerated, unchanged}")
    added: list[dict[str, Any]] = Field(description="[{qa_id, qa_type, status, question}]: in B, not in A")
    retired: list[dict[str, Any]] = Field(
        description="[{qa_id, qa_type, question, status_after}]: active in A, absent (null) or not active in B")
    changed: list[dict[str, Any]] = Field(
        description="[{qa_id, qa_type, fields {question | reference_answer | evidence | status: {before, after}}}]")
    regenerated: list[dict[str, Any]] = Field(
        description="[{qa_id_before, qa_id_after, qa_type, fields}]: a retired and an added item with the same "
                    "qa_type and source_chunk_ids (synth regenerated the text, so the qa_id changed)")


def resolve_version(lake: Lake, spec: str, command: str) -> tuple[str, str | None]:
    """(golden_set_id, line) of an id, unique prefix, line name or 'latest'; ConfigError (exit 2) if none."""
    golden_set_id, line = promotion.Refs(lake).resolve_golden(spec, lake.list_golden())
    if golden_set_id is None:
        raise ConfigError(f"{command} {spec}: no such golden set or line in {lake.uri} "
                          f"(have: {', '.join(lake.list_golden()) or 'none'}; see `ragloop golden list`)")
    return golden_set_id, line


def serving_chunks(lake: Lake) -> tuple[dict[str, Any] | None, list[dict]]:
    """({table, version}, [{chunk_id, doc_id, text}]) of the serving index (else the pending candidate) at
    its ref's version; (None, []) without an index. Reads LanceDB, loads no model."""
    refs = promotion.Refs(lake)
    ref = refs.serving() or refs.candidate()
    if ref is None:
        return None, []
    table = lake.connect_vectors().open_table(ref.table)
    table.checkout(ref.version)
    rows = table.search().select(["chunk_id", "doc_id", "text"]).limit(None).to_arrow().to_pylist()
    return {"table": ref.table, "version": ref.version}, rows


def golden_report(lake: Lake, spec: str = "latest", sample: int = 5, seed: int = 0) -> GoldenReportSummary:
    """The quality report of a golden-set version against the serving index. Reads the lake only."""
    if sample < 0:
        raise ConfigError(f"--sample {sample}: must be >= 0")
    golden_set_id, line = resolve_version(lake, spec, "golden report")
    rows = lake.read_golden(golden_set_id).to_pylist()
    index, chunks = serving_chunks(lake)
    texts = {c["chunk_id"]: c["text"] for c in chunks}
    return GoldenReportSummary(
        status="ok", golden_set_id=golden_set_id, line=line,
        items={"total": len(rows), "active": sum(r["status"] == "active" for r in rows)}, by_type=by_type(rows),
        generation=generation_record(lake.read_runs().to_pylist(), golden_set_id),
        coverage=folder_coverage(rows, (c["doc_id"] for c in chunks)), duplicates=lexical_duplicates(rows),
        evidence_supported=evidence_supported(rows, texts), index=index,
        sample=sample_items(rows, texts, sample, seed))


def golden_diff(lake: Lake, spec_a: str, spec_b: str) -> GoldenDiffSummary:
    """The items added, retired, changed and regenerated from version A to version B (ids, prefixes, line
    names or 'latest'). Reads the lake only."""
    a, line_a = resolve_version(lake, spec_a, "golden diff")
    b, line_b = resolve_version(lake, spec_b, "golden diff")
    diff = diff_rows(lake.read_golden(a).to_pylist(), lake.read_golden(b).to_pylist())
    return GoldenDiffSummary(status="ok", a=a, b=b, lines={"a": line_a, "b": line_b}, **diff)


# -- the suite a version passes before it becomes a line's head ------------------------------------------
def referenced_chunk_texts(store, rows: Sequence[dict]) -> dict[str, str]:
    """chunk_id -> text of the chunks the rows refer to (references and evidence) that the store's table
    version holds (a tasks.indexing.ChunkStore; one filtered scan)."""
    from ragloop.tasks.indexing import sql_in

    wanted = sorted({c for r in rows for c in (r.get("reference_chunk_ids") or [])}
                    | {e["chunk_id"] for r in rows for e in (r.get("evidence") or [])})
    if not wanted:
        return {}
    return {r["chunk_id"]: r["text"] for r in store.scan(["chunk_id", "text"], sql_in("chunk_id", wanted)).to_pylist()}


def validate_version(rows: Sequence[dict], chunk_texts: dict[str, str]):
    """The great-expectations golden suite (tasks.validation.validate_golden) over a version's rows, with
    the registered question types (plus `imported` and `production`): a ValidationReport."""
    from ragloop.tasks.question_types import IMPORTED, PRODUCTION, QUESTION_TYPES
    from ragloop.tasks.validation import validate_golden

    answerable = {name: not kind.must_refuse for name, kind in QUESTION_TYPES.items()} | {IMPORTED: True, PRODUCTION: True}
    return validate_golden(list(rows), chunk_texts, answerable)


def validation_outcome(report) -> tuple[dict[str, Any], str | None]:
    """({golden: the suite's summary}, error or None): what a stage summary reports of the suite; the
    error names the failed expectations (the version is written but is not made a line's head)."""
    error = None
    if not report.success:
        failed = "; ".join(f"{f['expectation']}({f['kwargs'].get('column')}): {f['unexpected_count']} e.g. {f['sample'][:3]}"
                           for f in report.failures)
        error = f"golden-set suite failed, the version is written but not made the line's head: {failed}"
    return {"golden": report.summary()}, error
