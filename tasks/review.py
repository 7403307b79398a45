"""Human review of golden sets and eval answers: decisions as append-only events, how they fold into a
new golden-set version with provenance, the queues the review app shows, and the sheet round-trip.

Pure rules (validate_decision, apply_event, fold_events, stale_ids, queue_state, highlight, word_diff,
parse_sheet) plus the few lake reads/writes they need (record_decision, apply_reviews, promote_curated,
import_sheet), which go through Lake and promotion.Refs. No prefect, no web framework: app/ is a thin
layer over these functions.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa

from ragloop.tasks import promotion, schemas
from ragloop.tasks.lineage import canonical_hash, new_run_id
from ragloop.tasks.qa_generation import golden_set_id_of, top_folder
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.storage import Lake

log = logging.getLogger(__name__)

HUMAN = ("approved", "edited")  # reviews a person made: synth keeps these items and never regenerates them
DECIDED = HUMAN + ("rejected",)
QUEUE_ACTIONS = {
    "golden": ("approve", "edit", "reject", "skip"),
    "stale": ("reapprove", "edit", "retire", "skip"),
    "answers": ("grade", "skip"),
    "compare": ("prefer", "skip"),
    "production": ("promote", "dismiss", "skip"),  # logged questions people rated down or the golden set misses
}
REJECT_REASONS = {
    "wrong_answer": "the reference answer is wrong",
    "not_in_evidence": "the evidence does not support the answer",
    "ambiguous": "the question is ambiguous",
    "trivial": "trivial or not useful",
    "duplicate": "duplicates another item",
    "off_topic": "not about the documents",
    "other": "other (say why in the note)",
}
GRADES = ("correct", "partially_correct", "incorrect")
PREFERENCES = ("baseline", "candidate", "tie")
EDIT_FIELDS = ("question", "reference_answer", "reference_chunk_ids")


class ReviewError(ValueError):
    """A decision or sheet that cannot be applied; the message names the item, row or field (exit 2, HTTP 400)."""


class ReviewConflict(Exception):
    """Someone decided the item after the reviewer last saw it: `latest` is that event (HTTP 409)."""

    def __init__(self, latest: dict) -> None:
        super().__init__(f"{latest['reviewer']} already recorded {latest['action']} on {latest['item_id']} at {latest['at']}")
        self.latest = latest


# -- the index as review needs it ------------------------------------------------------------------
@dataclass
class ChunkInfo:
    chunk_id: str
    doc_id: str
    text: str
    headings: list[str]
    position: int = 0


class MemoryIndex:
    """Chunks in memory: the interface review reads an index through (LakeIndex is the real one)."""

    def __init__(self, chunks: Iterable[ChunkInfo], old: Iterable[ChunkInfo] = ()) -> None:
        self._chunks = {c.chunk_id: c for c in chunks}
        self._old = {c.chunk_id: c for c in old}  # chunks of earlier versions (stale diffs)

    def chunk_ids(self) -> set[str]:
        return set(self._chunks)

    def doc_ids(self) -> set[str]:
        return {c.doc_id for c in self._chunks.values()}

    def get(self, chunk_ids: Sequence[str]) -> dict[str, ChunkInfo]:
        return {c: self._chunks[c] for c in chunk_ids if c in self._chunks}

    def doc_chunks(self, doc_id: str) -> list[ChunkInfo]:
        return sorted((c for c in self._chunks.values() if c.doc_id == doc_id), key=lambda c: c.position)

    def old(self, chunk_ids: Sequence[str]) -> dict[str, ChunkInfo]:
        return {c: self._old[c] for c in chunk_ids if c in self._old}

    def with_texts(self, texts: Sequence[str]) -> list[ChunkInfo]:
        """The chunks whose text is exactly one of these texts (a logged context), in the texts' order."""
        by_text: dict[str, list[ChunkInfo]] = {}
        for c in sorted(self._chunks.values(), key=lambda c: c.chunk_id):
            by_text.setdefault(c.text, []).append(c)
        return [c for t in dict.fromkeys(texts) for c in by_text.get(t, [])]

    def search(self, query: str, k: int = 8) -> list[ChunkInfo]:
        words = [w for w in query.lower().split() if w]
        scored = [(sum(c.text.lower().count(w) for w in words), c) for c in self._chunks.values()]
        return [c for s, c in sorted(scored, key=lambda sc: (-sc[0], sc[1].chunk_id)) if s > 0][:k]


class LakeIndex(MemoryIndex):
    """The served chunks table of a lake at its served version (read-only), for review pages: texts,
    heading trails, a search box (full-text when the table has its index, else word counts) and
    chunks of earlier table versions (what a stale item was approved on)."""

    COLUMNS = ["chunk_id", "doc_id", "text", "headings", "position"]

    def __init__(self, lake: Lake) -> None:
        refs = promotion.Refs(lake)
        ref = refs.serving() or refs.candidate()
        self.table = None
        rows: list[dict] = []
        if ref is not None:
            self.table = lake.connect_vectors().open_table(ref.table)
            self.table.checkout(ref.version)
            self.version = ref.version
            rows = self.table.search().select(self.COLUMNS).limit(None).to_arrow().to_pylist()
        super().__init__(_info(r) for r in rows)
        self.has_fts = bool(self.table) and any(i.name == "text_idx" for i in self.table.list_indices())

    def search(self, query: str, k: int = 8) -> list[ChunkInfo]:
        if self.has_fts and any(ch.isalnum() for ch in query):
            from lancedb.query import MatchQuery  # the user's text is never parsed as query syntax

            try:
                rows = self.table.search(MatchQuery(query, "text"), query_type="fts").select(self.COLUMNS).limit(k).to_list()
                return [_info(r) for r in rows]
            except Exception:  # noqa: BLE001 - an index the installed LanceDB cannot read: fall back to words
                log.debug("full-text search failed; counting words", exc_info=True)
        return super().search(query, k)

    def old(self, chunk_ids: Sequence[str]) -> dict[str, ChunkInfo]:
        """Chunks no longer in the served version, found in earlier versions (newest first, at most 30)."""
        wanted, found = set(chunk_ids) - set(self._chunks), {}
        if not wanted or self.table is None:
            return {}
        from ragloop.tasks.indexing import sql_in

        for version in sorted((v["version"] for v in self.table.list_versions()), reverse=True)[:30]:
            if version >= self.version:
                continue
            self.table.checkout(version)
            try:
                for row in self.table.search().where(sql_in("chunk_id", sorted(wanted - set(found)))) \
                        .select(self.COLUMNS).limit(None).to_list():
                    found[row["chunk_id"]] = _info(row)
            finally:
                self.table.checkout(self.version)
            if not wanted - set(found):
                break
        return found


def _info(row: dict) -> ChunkInfo:
    return ChunkInfo(row["chunk_id"], row["doc_id"], row["text"], list(row.get("headings") or []), int(row.get("position") or 0))


# -- events ----------------------------------------------------------------------------------------
@dataclass
class Decision:
    """What a reviewer asks for: an action on an item of a queue, with its payload."""

    queue: str
    item_id: str
    action: str
    reviewer: str
    payload: dict = field(default_factory=dict)
    base_event_id: str | None = None  # the latest event the reviewer saw on this item ("" / None: none)


def validate_decision(d: Decision) -> None:
    """ReviewError naming what is wrong: unknown queue or action, a missing reviewer, a rejection without
    a known reason (or 'other' without a note), a grade or preference outside its list, an empty edit."""
    if d.queue not in QUEUE_ACTIONS:
        raise ReviewError(f"unknown queue {d.queue!r} (one of {', '.join(QUEUE_ACTIONS)})")
    if d.action not in QUEUE_ACTIONS[d.queue]:
        raise ReviewError(f"item {d.item_id}: action {d.action!r} is not one of {', '.join(QUEUE_ACTIONS[d.queue])} "
                          f"({d.queue} queue)")
    if not (d.reviewer or "").strip():
        raise ReviewError("no reviewer: give --reviewer NAME or enter your name")
    p = d.payload
    if d.action == "reject":
        if p.get("reason") not in REJECT_REASONS:
            raise ReviewError(f"item {d.item_id}: reject reason {p.get('reason')!r} is not one of {', '.join(REJECT_REASONS)}")
        if p["reason"] == "other" and not (p.get("note") or "").strip():
            raise ReviewError(f"item {d.item_id}: reject reason 'other' needs a note saying why")
    if d.action == "edit":
        if not any(k in p for k in EDIT_FIELDS):
            raise ReviewError(f"item {d.item_id}: an edit must change question, reference_answer or reference_chunk_ids")
        if "question" in p and not str(p["question"]).strip():
            raise ReviewError(f"item {d.item_id}: the question cannot be empty")
    if d.action == "promote":
        if not str(p.get("reference_answer") or "").strip():
            raise ReviewError(f"item {d.item_id}: a golden item needs a reference answer (write one, or keep the logged answer)")
        if "question" in p and not str(p["question"]).strip():
            raise ReviewError(f"item {d.item_id}: the question cannot be empty")
    if d.action == "grade" and p.get("grade") not in GRADES:
        raise ReviewError(f"item {d.item_id}: grade {p.get('grade')!r} is not one of {', '.join(GRADES)}")
    if d.action == "prefer" and p.get("better") not in PREFERENCES:
        raise ReviewError(f"item {d.item_id}: preference {p.get('better')!r} is not one of {', '.join(PREFERENCES)}")


def make_event(d: Decision, before: dict, after: dict, golden_set_id: str | None, run_id: str | None,
               line: str | None, at: datetime) -> dict:
    """The event row; event_id is the hash of its content (same decision at the same instant, same id)."""
    row = {"reviewer": d.reviewer.strip(), "at": at, "queue": d.queue, "item_id": d.item_id, "action": d.action,
           "before": json.dumps(before, sort_keys=True, default=str), "after": json.dumps(after, sort_keys=True, default=str),
           "golden_set_id": golden_set_id, "run_id": run_id, "line": line, "base_event_id": d.base_event_id or None}
    row["event_id"] = canonical_hash({**row, "at": at.isoformat()})[:24]
    return row


def _order(e: dict) -> tuple:
    return (e["at"], e["event_id"])


def latest_events(events: Iterable[dict], queues: Sequence[str], line: str | None = None,
                  run_id: str | None = None) -> dict[str, dict]:
    """item_id -> the latest decision event (skips are not decisions) of these queues, on a line or a run."""
    out: dict[str, dict] = {}
    for e in sorted(events, key=_order):
        if e["queue"] not in queues or e["action"] == "skip":
            continue
        if line is not None and e["line"] != line:
            continue
        if run_id is not None and e["run_id"] != run_id:
            continue
        out[e["item_id"]] = e
    return out


def check_conflict(d: Decision, latest: dict | None) -> None:
    """ReviewConflict when the item's latest decision is not the one the reviewer saw (a skip never conflicts)."""
    if d.action == "skip" or latest is None:
        return
    if (d.base_event_id or None) != latest["event_id"]:
        raise ReviewConflict(latest)


# -- folding events into a golden-set version --------------------------------------------------------
def _loads(text: str | None) -> dict:
    return json.loads(text) if text else {}


def apply_event(row: dict, event: dict) -> dict:
    """The item after one decision (pure): provenance (review, reviewer, reviewed_at, review_event_id)
    and the fields the action changes. approve/reapprove keep an edited item's review 'edited'."""
    after = _loads(event["after"])
    new = dict(row, reviewer=event["reviewer"], reviewed_at=event["at"], review_event_id=event["event_id"])
    action = event["action"]
    if action == "approve":
        new.update(review="approved", status="active", review_reason=None)
    elif action == "reject":
        note = (after.get("note") or "").strip()
        new.update(review="rejected", status="retired", review_reason=after["reason"] + (f": {note}" if note else ""))
    elif action == "retire":
        new.update(status="retired", review_reason=(after.get("note") or "retired after its chunks changed").strip())
    elif action in ("edit", "reapprove"):
        for key in ("question", "reference_answer", "reference_chunk_ids", "reference_doc_ids", "source_chunk_ids",
                    "source_doc_ids", "evidence"):
            if key in after:
                new[key] = after[key]
        review = "edited" if action == "edit" or row.get("review") == "edited" else "approved"
        new.update(review=review, status="active", review_reason=None)
    return new


def fold_events(rows: Sequence[dict], events: Iterable[dict], line: str) -> list[dict]:
    """The line head's rows with every golden/stale decision on the line not yet applied to them: per item,
    the events after its review_event_id, in time order (the latest decision wins)."""
    by_item: dict[str, list[dict]] = {}
    for e in sorted(events, key=_order):
        if e["queue"] in ("golden", "stale") and e["action"] != "skip" and e["line"] == line:
            by_item.setdefault(e["item_id"], []).append(e)
    out = []
    for row in rows:
        pending = by_item.get(row["qa_id"], [])
        seen = [e["event_id"] for e in pending]
        if row.get("review_event_id") in seen:
            pending = pending[seen.index(row["review_event_id"]) + 1:]
        for e in pending:
            row = apply_event(row, e)
        out.append(row)
    return out


def stale_ids(rows: Iterable[dict], chunk_ids: set[str]) -> set[str]:
    """Items for the stale queue: marked stale by synth, or human-reviewed, active and holding a source
    chunk the index no longer has (their chunks changed since a person approved them)."""
    out = set()
    for r in rows:
        if r["status"] == "stale" and r.get("review") in HUMAN:
            out.add(r["qa_id"])
        elif r["status"] == "active" and r.get("review") in HUMAN and any(c not in chunk_ids for c in r["source_chunk_ids"]):
            out.add(r["qa_id"])
    return out


def rejected_pairs(rows: Iterable[dict]) -> frozenset[tuple[str, str]]:
    """(qa_type, chunk_id) pairs people rejected: synth never generates that type from those chunks again."""
    return frozenset((r["qa_type"], c) for r in rows if r.get("review") == "rejected" for c in r["source_chunk_ids"])


def blocked_task(qa_type: str, chunk_ids: Sequence[str], pairs: frozenset[tuple[str, str]]) -> bool:
    """Whether a generation task (its type and seed chunks) repeats a rejected pair."""
    return any((qa_type, c) in pairs for c in chunk_ids)


def protect_human(previous: Sequence[dict], verdicts: dict[str, str]) -> tuple[dict[str, str], list[dict]]:
    """Synth's verdicts with people's decisions respected: a human-reviewed active item is kept when only
    its prompt changed, and set aside as 'stale' (held for the stale queue, never regenerated) when its
    chunks changed or vanished; items a person rejected or that are already held stay in the set as they
    are. Returns (verdicts for synth's own items, held items)."""
    verdicts, held = dict(verdicts), []
    for item in previous:
        human = item.get("review") in HUMAN or item.get("review") == "rejected"
        if not human:
            continue
        verdict = verdicts.pop(item["qa_id"], None)
        if verdict in ("kept", "outdated"):
            verdicts[item["qa_id"]] = "kept"
        elif verdict in ("stale", "retired"):
            held.append(dict(item, status="stale"))
        elif item["status"] != "active":  # rejected, retired or stale already: carried as they are
            held.append(item)
    return verdicts, held


# -- what the pages show ---------------------------------------------------------------------------
def highlight(text: str, spans: Iterable[tuple[int, int]]) -> list[tuple[str, bool]]:
    """The text cut into (piece, is_evidence) segments; overlapping or out-of-range spans are merged and
    clipped. Pieces are plain text: the template escapes them."""
    merged: list[list[int]] = []
    for s, e in sorted((max(0, int(s)), min(len(text), int(e))) for s, e in spans):
        if e <= s:
            continue
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, at = [], 0
    for s, e in merged:
        if s > at:
            out.append((text[at:s], False))
        out.append((text[s:e], True))
        at = e
    if at < len(text) or not out:
        out.append((text[at:], False))
    return out


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """(op, text) segments from old to new by words: op is 'same', 'del' or 'ins'."""
    a, b = old.split(" "), new.split(" ")
    out: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(("same", " ".join(a[i1:i2])))
        if tag in ("delete", "replace"):
            out.append(("del", " ".join(a[i1:i2])))
        if tag in ("insert", "replace"):
            out.append(("ins", " ".join(b[j1:j2])))
    return out


def best_match(old_text: str, candidates: Sequence[ChunkInfo]) -> ChunkInfo | None:
    """The candidate chunk most like the old text (difflib ratio), None without candidates."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (difflib.SequenceMatcher(None, old_text, c.text, autojunk=False).ratio(), -c.position))


def old_chunk_texts(events: Iterable[dict], chunk_ids: Sequence[str]) -> dict[str, str]:
    """Chunk texts as a reviewer saw them, from the snapshots approve/edit/reapprove events keep."""
    found: dict[str, str] = {}
    for e in sorted(events, key=_order, reverse=True):
        for cid, text in (_loads(e["after"]).get("chunk_texts") or {}).items():
            if cid in chunk_ids and cid not in found:
                found[cid] = text
    return found


def evidence_spans(row: dict, chunk_id: str) -> list[tuple[int, int]]:
    return [(e["start"], e["end"]) for e in row.get("evidence") or [] if e["chunk_id"] == chunk_id]


def item_folder(row: dict) -> str:
    docs = row.get("source_doc_ids") or row.get("reference_doc_ids") or []
    return top_folder(docs[0]) if docs else "."


@dataclass
class QueueState:
    """One queue's items in review order, what is pending, and who did what."""

    items: list[dict]  # every item in the queue's scope, in order
    pending: list[str]  # item ids still to decide, in order
    done: int
    by_reviewer: dict[str, int]

    @property
    def left(self) -> int:
        return len(self.pending)


def filter_items(items: Iterable[dict], qa_type: str = "", folder: str = "") -> list[dict]:
    return [i for i in items if (not qa_type or i["qa_type"] == qa_type) and (not folder or item_folder(i) == folder)]


def golden_queue(rows: Sequence[dict], stale: set[str], events: Iterable[dict], line: str) -> QueueState:
    """Items to review: every item not in the stale queue that is active or was rejected; pending are the
    active ones nobody approved, edited or rejected yet (rows are already folded with the events)."""
    items = [r for r in rows if r["qa_id"] not in stale and (r["status"] == "active" or r.get("review") == "rejected")]
    pending = [r["qa_id"] for r in items if r["status"] == "active" and r.get("review") not in DECIDED]
    return QueueState(items, pending, len(items) - len(pending), _by_reviewer(events, ("golden",), line=line))


def stale_queue(rows: Sequence[dict], stale: set[str], events: Iterable[dict], line: str) -> QueueState:
    items = [r for r in rows if r["qa_id"] in stale]
    decided = set(latest_events(events, ("stale",), line=line))
    return QueueState(items, [r["qa_id"] for r in items], len(decided), _by_reviewer(events, ("stale",), line=line))


def answers_queue(items: Sequence[dict], events: Iterable[dict], run_id: str, queue: str = "answers") -> QueueState:
    decided = latest_events(events, (queue,), run_id=run_id)
    pending = [i["qa_id"] for i in items if i["qa_id"] not in decided]
    return QueueState(list(items), pending, len(items) - len(pending), _by_reviewer(events, (queue,), run_id=run_id))


def _by_reviewer(events: Iterable[dict], queues: Sequence[str], line: str | None = None, run_id: str | None = None) -> dict[str, int]:
    items: dict[str, set] = {}
    for e in events:
        if e["queue"] in queues and e["action"] != "skip" and (line is None or e["line"] == line) \
                and (run_id is None or e["run_id"] == run_id):
            items.setdefault(e["reviewer"], set()).add(e["item_id"])
    return {name: len(ids) for name, ids in sorted(items.items())}


def next_pending(state: QueueState, visible: Sequence[dict], skipped: Sequence[str] = ()) -> str | None:
    """The first pending item among the visible (filtered) ones that this reviewer has not skipped; once
    everything left was skipped, the first skipped one again."""
    ids = [i["qa_id"] for i in visible]
    pending = [q for q in state.pending if q in ids]
    fresh = [q for q in pending if q not in set(skipped)]
    return (fresh or pending or [None])[0]


# -- the lake side: one reviewed line ------------------------------------------------------------------
_WRITE_LOCK = threading.RLock()  # one decision at a time per process: the conflict check and the write are one step
DECISION_LOCK_WAIT_S = 10.0  # a decision is a read and one small append: another process holds the lock for ms


def read_events(lake: Lake) -> list[dict]:
    return lake.read_reviews().to_pylist()


def write_events(lake: Lake, events: list[dict]) -> None:
    """Append events as one batch file (all or nothing)."""
    if not events:
        return
    batch = f"{events[0]['at']:%Y%m%dT%H%M%S%fZ}-{hashlib.sha256(''.join(e['event_id'] for e in events).encode()).hexdigest()[:12]}"
    lake.write_reviews(batch, pa.Table.from_pylist(events, schema=schemas.REVIEWS))


def default_line(lake: Lake) -> str | None:
    """The line to review: synth's own when there is one, else the chosen line."""
    lines = promotion.Refs(lake).lines()
    if promotion.SYNTHETIC in lines.lines:
        return promotion.SYNTHETIC
    return lines.chosen


def line_head(lake: Lake, line: str) -> tuple[promotion.GoldenLine, list[dict]]:
    """The line's ref and its head version's rows; ReviewError for an unknown line."""
    lines = promotion.Refs(lake).lines()
    if line not in lines.lines:
        raise ReviewError(f"no golden-set line {line!r} in {lake.uri} (have: {', '.join(sorted(lines.lines)) or 'none'})")
    ref = lines.lines[line]
    return ref, lake.read_golden(ref.golden_set_id).to_pylist()


def effective_rows(lake: Lake, line: str, events: list[dict] | None = None) -> tuple[promotion.GoldenLine, list[dict], list[dict]]:
    """(line ref, the head's rows with the line's unapplied decisions folded in, every event)."""
    ref, rows = line_head(lake, line)
    events = read_events(lake) if events is None else events
    return ref, fold_events(rows, events, line), events


def _chunk_payload(index: MemoryIndex, chunk_ids: Sequence[str], item: str) -> dict:
    found = index.get(chunk_ids)
    missing = [c for c in chunk_ids if c not in found]
    if missing:
        raise ReviewError(f"item {item}: chunk(s) not in the served index: {', '.join(missing[:3])}")
    return {"reference_chunk_ids": list(chunk_ids), "reference_doc_ids": list(dict.fromkeys(found[c].doc_id for c in chunk_ids))}


def decision_change(d: Decision, row: dict, index: MemoryIndex, events: Sequence[dict] = ()) -> tuple[dict, dict]:
    """(before, after) of a golden or stale decision on an item: the fields it changes, with a snapshot of
    the chunk texts the reviewer saw (what the stale queue diffs against later)."""
    p = d.payload
    if d.action in ("skip",):
        return {}, {}
    if d.action == "reject":
        return {"review": row.get("review"), "status": row["status"]}, {"reason": p["reason"], "note": (p.get("note") or "").strip()}
    if d.action == "retire":
        return {"status": row["status"]}, {"status": "retired", "note": (p.get("note") or "").strip()}
    if d.action == "approve":
        texts = {c: i.text for c, i in index.get(row["source_chunk_ids"]).items()}
        return {"review": row.get("review")}, {"review": "approved", "chunk_texts": texts}
    if d.action == "edit":
        after: dict[str, Any] = {}
        if "question" in p:
            after["question"] = str(p["question"]).strip()
        if "reference_answer" in p:
            after["reference_answer"] = str(p["reference_answer"]).strip()
        if "reference_chunk_ids" in p:
            ids = [c for c in dict.fromkeys(_as_ids(p["reference_chunk_ids"]))]
            after.update(_chunk_payload(index, ids, d.item_id))
            if ids:  # the person says the answer comes from these chunks: staleness follows them
                after["source_chunk_ids"] = ids
                after["source_doc_ids"] = after["reference_doc_ids"]
            after["evidence"] = [e for e in row.get("evidence") or [] if e["chunk_id"] in ids]
        changed = {k: v for k, v in after.items() if k in EDIT_FIELDS and v != row.get(k)}
        if not changed:
            raise ReviewError(f"item {d.item_id}: the edit changes nothing (same question, answer and evidence)")
        source = after.get("source_chunk_ids", row["source_chunk_ids"])
        after["chunk_texts"] = {c: i.text for c, i in index.get(source).items()}
        return {k: row.get(k) for k in after if k in row}, after
    if d.action == "reapprove":
        return {k: row.get(k) for k in ("source_chunk_ids", "reference_chunk_ids", "reference_doc_ids")}, \
            reapproval(row, index, events)
    return {}, dict(p)


def _as_ids(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return [str(v) for v in value or []]


def reapproval(row: dict, index: MemoryIndex, events: Sequence[dict] = ()) -> dict:
    """The fields a re-approval writes: each source chunk the index lost is replaced by the most similar
    chunk of its document now (references follow); ReviewError when a document is gone (retire or edit)."""
    present = index.chunk_ids()
    old = {**{c: i.text for c, i in index.old(row["source_chunk_ids"]).items()},
           **old_chunk_texts(events, row["source_chunk_ids"])}
    mapping: dict[str, str] = {}
    for cid in row["source_chunk_ids"]:
        if cid in present:
            mapping[cid] = cid
            continue
        docs = row["source_doc_ids"] or row["reference_doc_ids"]
        candidates = [c for d in docs for c in index.doc_chunks(d)]
        match = best_match(old.get(cid, ""), candidates)
        if match is None:
            raise ReviewError(f"item {row['qa_id']}: its document is gone from the index; retire it or pick new evidence with edit")
        mapping[cid] = match.chunk_id
    sources = list(dict.fromkeys(mapping.values()))
    refs = list(dict.fromkeys(mapping.get(c, c) for c in row["reference_chunk_ids"]))
    found = index.get(sources + refs)
    return {"source_chunk_ids": sources, "source_doc_ids": list(dict.fromkeys(found[c].doc_id for c in sources)),
            "reference_chunk_ids": refs, "reference_doc_ids": list(dict.fromkeys(found[c].doc_id for c in refs)),
            "evidence": [], "chunk_texts": {c: found[c].text for c in sources}, "replaced": mapping}


def record_decision(lake: Lake, d: Decision, *, line: str | None = None, run_id: str | None = None,
                    index: MemoryIndex | None = None, at: datetime | None = None, candidate: dict | None = None) -> dict:
    """Validate a decision, check nobody decided the item since the reviewer looked (ReviewConflict), and
    append its event. Golden/stale decisions name the line; answer grades and preferences the eval run;
    production decisions the line a promoted question joins and the logged `candidate` (a log row)."""
    validate_decision(d)
    # Threads of one server take _WRITE_LOCK; other processes (a second `ragloop review` on the lake, a sheet
    # import) the lake's review lock: the conflict check and the append are one step across both.
    with _WRITE_LOCK, lake.lock("review decision", wait_s=DECISION_LOCK_WAIT_S, poll_s=0.05, name="review"):
        events = read_events(lake)
        if d.queue == "production":
            if line is None or index is None or candidate is None:
                raise ReviewError("a production decision needs its line, the index and the logged question")
            ref, _ = line_head(lake, line)
            check_conflict(d, latest_events(events, ("production",)).get(d.item_id))
            before, after = production_change(d, candidate, index)
            event = make_event(d, before, after, ref.golden_set_id, None, line, at or utcnow())
        elif d.queue in ("golden", "stale"):
            if line is None or index is None:
                raise ReviewError("a golden or stale decision needs its line and the index")
            ref, rows, _ = effective_rows(lake, line, events)
            row = next((r for r in rows if r["qa_id"] == d.item_id), None)
            if row is None:
                raise ReviewError(f"item {d.item_id} is not in line {line} (version {ref.golden_set_id})")
            check_conflict(d, latest_events(events, ("golden", "stale"), line=line).get(d.item_id))
            before, after = decision_change(d, row, index, events)
            event = make_event(d, before, after, ref.golden_set_id, None, line, at or utcnow())
        else:
            if run_id is None:
                raise ReviewError("an answer grade needs its eval run")
            check_conflict(d, latest_events(events, (d.queue,), run_id=run_id).get(d.item_id))
            after = {k: v for k, v in d.payload.items() if k in ("grade", "comment", "better", "baseline_run_id")}
            event = make_event(d, {}, after, None, run_id, None, at or utcnow())
        write_events(lake, [event])
    return event


# -- the production queue: logged questions that become golden items -----------------------------------------
def production_queue(candidates: Sequence[dict], events: Iterable[dict]) -> QueueState:
    """Production candidates (tasks.production.review_candidates, each with qa_id = its log_id) in order;
    pending: those nobody promoted or dismissed yet (on any line)."""
    decided = latest_events(events, ("production",))
    items = list(candidates)
    pending = [i["qa_id"] for i in items if i["qa_id"] not in decided]
    return QueueState(items, pending, len(items) - len(pending), _by_reviewer(events, ("production",)))


def production_change(d: Decision, log_row: dict, index: MemoryIndex) -> tuple[dict, dict]:
    """(before, after) of a production decision: before is the logged question, answer and contexts; a
    promote's after is the golden item's question, reference answer and the served chunks holding the
    logged contexts' exact texts (its references; none when the index no longer holds them)."""
    before = {"log_id": log_row["log_id"], "question": log_row["question"], "answer": log_row.get("answer"),
              "contexts": list(log_row.get("contexts") or [])}
    if d.action == "skip":
        return {}, {}
    if d.action == "dismiss":
        return before, {"note": str(d.payload.get("note") or "").strip()}
    question = str(d.payload.get("question") or log_row["question"]).strip()
    answer = str(d.payload["reference_answer"]).strip()
    chunks = index.with_texts(before["contexts"])
    return before, {"log_id": log_row["log_id"], "question": question, "reference_answer": answer,
                    "reference_chunk_ids": [c.chunk_id for c in chunks],
                    "reference_doc_ids": list(dict.fromkeys(c.doc_id for c in chunks)),
                    "kept_logged_answer": answer == (log_row.get("answer") or "").strip() and question == log_row["question"].strip(),
                    "chunk_texts": {c.chunk_id: c.text for c in chunks}}


def production_items(events: Iterable[dict], line: str, rows: Sequence[dict]) -> list[dict]:
    """Golden rows for the questions promoted into this line and not in it yet: type `production`, source
    `production`, review approved (the logged answer kept) or edited (a reference written), with the
    reviewer's provenance. A promote later dismissed is not added."""
    from ragloop.tasks.qa_generation import qa_id_of
    from ragloop.tasks.question_types import PRODUCTION

    have = {r["qa_id"] for r in rows}
    out = []
    for e in latest_events(events, ("production",), line=line).values():
        if e["action"] != "promote":
            continue
        after = _loads(e["after"])
        qa_id = qa_id_of(after["question"], PRODUCTION, [f"log:{after['log_id']}"])
        if qa_id in have:
            continue
        have.add(qa_id)
        out.append({"qa_id": qa_id, "question": after["question"], "reference_answer": after["reference_answer"],
                    "reference_chunk_ids": after["reference_chunk_ids"], "reference_doc_ids": after["reference_doc_ids"],
                    "source_chunk_ids": after["reference_chunk_ids"], "source_doc_ids": after["reference_doc_ids"],
                    "source_doc_sha256s": [], "qa_type": PRODUCTION, "persona": None, "status": "active",
                    "review": "approved" if after.get("kept_logged_answer") else "edited", "generator": "production",
                    "prompt_id": None, "prompt_hash": None, "created_at": e["at"], "evidence": [],
                    "reviewer": e["reviewer"], "reviewed_at": e["at"], "review_reason": None,
                    "review_event_id": e["event_id"], "source": "production"})
    return sorted(out, key=lambda r: r["qa_id"])


# -- applying: a new version of the line, and the curated line ------------------------------------------
def apply_reviews(lake: Lake, line: str, events: list[dict] | None = None) -> dict:
    """Write the line's head with its unapplied decisions as a new version (content-addressed; the line's
    kind and synth inputs stay) and move the line to it, unless the golden suite fails on it (status
    failed with the error; the version stays written). Returns {status, line, golden_set_id, previous,
    written, applied {action: n}, reviews {review: n}}."""
    with _WRITE_LOCK, lake.lock("review apply"):
        ref, head = line_head(lake, line)
        events = read_events(lake) if events is None else events
        rows = fold_events(head, events, line)
        applied = Counter(e["action"] for r, h in zip(rows, head) if r.get("review_event_id") != h.get("review_event_id")
                          for e in events if e["event_id"] == r["review_event_id"])
        promoted = production_items(events, line, rows)
        rows += promoted
        if promoted:
            applied["promote"] = len(promoted)
        new_id = golden_set_id_of(rows)
        written = False
        if new_id != ref.golden_set_id or rows != head:
            if new_id == ref.golden_set_id:  # only provenance moved (a re-approval with the same content)
                new_id = canonical_hash([new_id, [r.get("review_event_id") for r in rows]])[:24]
            written = lake.write_golden(new_id, pa.Table.from_pylist(rows, schema=schemas.GOLDEN))
            run_id = new_run_id("review")
            error = _golden_suite(lake, run_id, rows)
            if error:  # the version stays written (nothing lost) but does not head the line
                return {"status": "failed", "error": error, "line": line, "golden_set_id": new_id,
                        "previous_golden_set_id": ref.golden_set_id, "written": written,
                        "applied": dict(sorted(applied.items())), "reviews": review_counts(rows)}
            promotion.Refs(lake).set_line(line, new_id, kind=ref.kind, run_id=run_id, inputs=ref.inputs)
    return {"status": "ok", "line": line, "golden_set_id": new_id, "previous_golden_set_id": ref.golden_set_id,
            "written": written, "applied": dict(sorted(applied.items())), "reviews": review_counts(rows)}


def _golden_suite(lake: Lake, run_id: str, rows: list[dict]) -> str | None:
    """The great-expectations golden suite (tasks.golden_quality.validate_version) on a reviewed version,
    against the serving index's chunk texts (read from LanceDB, no model); its result is stored under
    validations/<run_id>/. The error when it fails, else None; None without an index to check against."""
    from ragloop.tasks import golden_quality

    serving, catalog = golden_quality.serving_chunks(lake)
    if serving is None:
        return None
    report = golden_quality.validate_version(rows, {r["chunk_id"]: r["text"] for r in catalog})
    lake.write_validation(run_id, report.suite, report.result)
    return golden_quality.validation_outcome(report)[1]


def review_counts(rows: Iterable[dict]) -> dict[str, int]:
    """Active items by review, plus rejected ones: what a summary says about how reviewed a set is."""
    counts = Counter(r.get("review") or "synthetic" for r in rows if r["status"] == "active")
    counts["rejected"] = sum(1 for r in rows if r.get("review") == "rejected")
    return dict(sorted((k, v) for k, v in counts.items() if v))


def curated_rows(rows: Iterable[dict]) -> list[dict]:
    """The items a curated line holds: active items a person approved or edited."""
    return [r for r in rows if r["status"] == "active" and r.get("review") in HUMAN]


def promote_curated(lake: Lake, source_line: str, curated_line: str = "curated") -> dict:
    """Write the reviewed items of the source line's head as the head of a curated line and choose it (what
    the nightly, prompt-changed and `--golden latest` evaluate). ReviewError when nothing is reviewed."""
    name = promotion.line_name(curated_line)
    with lake.lock("review promote"):
        ref, head = line_head(lake, source_line)
        rows = curated_rows(head)
        if not rows:
            raise ReviewError(f"line {source_line} (version {ref.golden_set_id}) has no approved or edited item to promote; "
                              "apply reviews first")
        new_id = golden_set_id_of(rows)
        if new_id == ref.golden_set_id:
            new_id = canonical_hash([new_id, "curated"])[:24]
        lake.write_golden(new_id, pa.Table.from_pylist(rows, schema=schemas.GOLDEN))
        moved = promotion.Refs(lake).set_line(name, new_id, kind="curated", run_id=new_run_id("review"), choose=True)
    return {"status": "ok", "line": name, "golden_set_id": new_id, "items": len(rows), "from_line": source_line,
            "from_golden_set_id": ref.golden_set_id, "chosen": moved["chosen"], "previous_chosen": moved["previous_chosen"],
            "reviews": review_counts(rows)}


# -- answers from eval runs ---------------------------------------------------------------------------------
def eval_runs(lake: Lake) -> list[dict]:
    """Finished eval runs whose items hold answers, newest first: {run_id, golden_set_id, baseline_run_id, status}."""
    out = []
    for r in sorted(lake.read_runs().to_pylist(), key=lambda r: r["run_id"], reverse=True):
        if r["flow"] != "eval":
            continue
        outputs = json.loads(r["outputs"] or "{}")
        lineage = json.loads(r["lineage"] or "{}")
        out.append({"run_id": r["run_id"], "status": r["status"], "baseline_run_id": outputs.get("baseline_run_id"),
                    "golden_set_id": outputs.get("golden_set_id") or lineage.get("golden_set_id")})
    return out


def answer_items(lake: Lake, run_id: str) -> tuple[dict, list[dict]]:
    """(run info, items): each eval item with its answer, retrieved chunk ids and the golden reference
    answer; ReviewError for an unknown run or one without answers (retrieval-only)."""
    run = next((r for r in eval_runs(lake) if r["run_id"] == run_id), None)
    table = lake.read_eval_items(run_id)
    if run is None or table is None:
        raise ReviewError(f"no eval run {run_id} in {lake.uri} (see `ragloop runs --flow eval`)")
    references = {}
    if run["golden_set_id"] and lake.golden_exists(run["golden_set_id"]):
        references = {r["qa_id"]: r for r in lake.read_golden(run["golden_set_id"]).to_pylist()}
    items = []
    for r in table.to_pylist():
        ref = references.get(r["qa_id"], {})
        items.append({"qa_id": r["qa_id"], "qa_type": r["qa_type"], "question": r["question"], "answer": r["answer"],
                      "retrieved_chunk_ids": list(r["retrieved_chunk_ids"] or []), "status": r["status"],
                      "reference_answer": ref.get("reference_answer") or "",
                      "reference_chunk_ids": list(ref.get("reference_chunk_ids") or []),
                      "source_doc_ids": list(ref.get("source_doc_ids") or r.get("retrieved_doc_ids") or [])})
    if not any(i["answer"] is not None for i in items):
        raise ReviewError(f"eval run {run_id} has no answers to grade (a retrieval-only run)")
    return run, items


# -- the sheet --------------------------------------------------------------------------------------------
GOLDEN_SHEET = ("line", "golden_set_id", "qa_id", "qa_type", "persona", "folder", "doc_ids", "question",
                "reference_answer", "reference_chunk_ids", "evidence", "review", "action", "new_question",
                "new_reference_answer", "new_reference_chunk_ids", "reason", "note", "seen_event_id")
ANSWER_SHEET = ("run_id", "baseline_run_id", "qa_id", "qa_type", "question", "reference_answer", "answer",
                "baseline_answer", "grade", "comment", "better", "seen_event_id")
# seen_event_id: the item's latest decision when the sheet was exported. On import, a row whose item was decided
# since (in the app, or by another sheet) is a conflict naming who decided it and that decision's id: nothing is
# applied; putting that id in the row confirms deciding over it (as the app asks). A sheet without the column
# (written by hand) decides over whatever is there.
SHEET_ACTIONS = ("approve", "edit", "reject", "skip", "")


def golden_sheet(rows: Sequence[dict], line: str, golden_set_id: str, index: MemoryIndex, stale: set[str],
                 events: Sequence[dict] = ()) -> list[dict]:
    """One sheet row per item of the golden queue (pending first), with the evidence text to judge by and
    the item's latest decision event (seen_event_id)."""
    state = golden_queue(rows, stale, [], line)
    latest = latest_events(events, ("golden", "stale"), line=line)
    order = {q: i for i, q in enumerate(state.pending)}
    out = []
    for r in sorted(state.items, key=lambda r: order.get(r["qa_id"], len(order))):
        chunks = index.get(r["reference_chunk_ids"] or r["source_chunk_ids"])
        spans = [chunks[c].text[s:e] for c in chunks for s, e in evidence_spans(r, c)]
        out.append({"line": line, "golden_set_id": golden_set_id, "qa_id": r["qa_id"], "qa_type": r["qa_type"],
                    "persona": r["persona"], "folder": item_folder(r), "doc_ids": " ".join(r["reference_doc_ids"] or r["source_doc_ids"]),
                    "question": r["question"], "reference_answer": r["reference_answer"],
                    "reference_chunk_ids": " ".join(r["reference_chunk_ids"]),
                    "evidence": " ... ".join(spans) or " ... ".join(c.text for c in chunks.values()),
                    "review": r.get("review") or "", "action": "", "new_question": "", "new_reference_answer": "",
                    "new_reference_chunk_ids": "", "reason": "", "note": "",
                    "seen_event_id": (latest.get(r["qa_id"]) or {}).get("event_id") or ""})
    return out


def answer_sheet(run: dict, items: Sequence[dict], baseline: dict[str, dict] | None, events: Sequence[dict] = ()) -> list[dict]:
    """One sheet row per answer of an eval run (with the baseline's answer when compared) and the item's
    latest grade or preference event (seen_event_id)."""
    latest = latest_events(events, ANSWER_QUEUES, run_id=run["run_id"])
    return [{"run_id": run["run_id"], "baseline_run_id": run.get("baseline_run_id") or "" if baseline else "",
             "qa_id": i["qa_id"], "qa_type": i["qa_type"], "question": i["question"], "reference_answer": i["reference_answer"],
             "answer": i["answer"] or "", "baseline_answer": ((baseline or {}).get(i["qa_id"]) or {}).get("answer") or "",
             "grade": "", "comment": "", "better": "", "seen_event_id": (latest.get(i["qa_id"]) or {}).get("event_id") or ""}
            for i in items]


ANSWER_QUEUES = ("answers", "compare")


def sheet_conflict(label: str, row: dict, latest: dict | None) -> str | None:
    """The error of a sheet row whose item was decided after the sheet was exported (None: no conflict, or
    a sheet without the seen_event_id column)."""
    if "seen_event_id" not in row:
        return None
    seen = str(row.get("seen_event_id") or "").strip()
    if (latest or {}).get("event_id", "") == seen:
        return None
    if latest is None:
        return f"{label}: seen_event_id {seen!r} is not the item's latest decision (it has none)"
    return (f"{label}: item {latest['item_id']} was decided after this sheet was exported ({latest['action']} by "
            f"{latest['reviewer']} at {latest['at']:%Y-%m-%d %H:%M:%S}); to decide over it, set its seen_event_id to "
            f"{latest['event_id']}")


def write_sheet(rows: Sequence[dict], columns: Sequence[str], path: Path, fmt: str) -> int:
    """Write sheet rows as CSV (UTF-8 with BOM, so spreadsheets read accents) or JSONL; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with path.open("w", encoding="utf-8-sig", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        with path.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps({k: row[k] for k in columns}, ensure_ascii=False) + "\n")
    else:
        raise ReviewError(f"--format {fmt}: expected csv or jsonl")
    return len(rows)


def read_sheet(path: Path) -> tuple[list[tuple[str, dict]], str]:
    """((row label, row) pairs, queue) of a filled sheet, CSV or JSONL by its content. Labels count as a
    spreadsheet does ('row 2' is the first data row under the header) or as a file does ('line 1')."""
    if not path.is_file():
        raise ReviewError(f"{path}: not a file")
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("{"):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ReviewError(f"{path}: line {n}: not JSON ({exc.msg})") from None
                if not isinstance(data, dict):
                    raise ReviewError(f"{path}: line {n}: expected a JSON object")
                rows.append((f"line {n}", {k: ("" if v is None else v) for k, v in data.items()}))
    else:
        reader = csv.DictReader(io.StringIO(text))
        rows = [(f"row {n}", {k: (v or "") for k, v in r.items() if k is not None}) for n, r in enumerate(reader, start=2)]
    if not rows:
        raise ReviewError(f"{path}: no rows")
    keys = set(rows[0][1])
    if {"qa_id", "action", "line"} <= keys:
        return rows, "golden"
    if {"qa_id", "grade", "run_id"} <= keys:
        return rows, "answers"
    raise ReviewError(f"{path}: not a review sheet (a golden sheet has line, qa_id, action; an answer sheet run_id, qa_id, "
                      f"grade); columns: {sorted(keys)}")


def sheet_decisions(rows: Sequence[tuple[str, dict]], queue: str, reviewer: str, known: dict[str, set[str]],
                    source: str) -> list[tuple[Decision, str, str]]:
    """Decisions of a filled sheet, every row checked before any is used: (decision, line or run id, row label).
    known: line or run id -> its item ids. ReviewError naming the first bad row(s); blank rows are skipped."""
    errors: list[str] = []
    out: list[tuple[Decision, str, str]] = []
    seen: dict[tuple[str, str], str] = {}
    for label, row in rows:
        try:
            scope = str(row.get("line" if queue == "golden" else "run_id", "")).strip()
            qa_id = str(row.get("qa_id", "")).strip()
            if scope not in known:
                raise ReviewError(f"{'line' if queue == 'golden' else 'run_id'} {scope!r} is not in the lake")
            if qa_id not in known[scope]:
                raise ReviewError(f"unknown qa_id {qa_id!r} (not in {scope})")
            decisions = _row_decisions(row, queue, qa_id, reviewer)
            for d in decisions:
                key = (scope, d.queue, qa_id)
                if key in seen:
                    raise ReviewError(f"qa_id {qa_id} is decided twice (also {seen[key]})")
                seen[key] = label
                validate_decision(d)
                out.append((d, scope, label))
        except ReviewError as exc:
            errors.append(f"{label}: {exc}")
    if errors:
        shown = errors[:5] + ([f"... and {len(errors) - 5} more"] if len(errors) > 5 else [])
        raise ReviewError(f"{source}: " + "; ".join(shown) + " (nothing was applied)")
    return out


def _row_decisions(row: dict, queue: str, qa_id: str, reviewer: str) -> list[Decision]:
    if queue == "answers":
        grade, better = str(row.get("grade", "")).strip(), str(row.get("better", "")).strip()
        out = []
        if grade:
            out.append(Decision("answers", qa_id, "grade", reviewer, {"grade": grade, "comment": str(row.get("comment", "")).strip()}))
        if better:
            if not str(row.get("baseline_run_id", "")).strip():
                raise ReviewError("'better' needs a baseline run (this run has none)")
            out.append(Decision("compare", qa_id, "prefer", reviewer, {"better": better, "baseline_run_id": row["baseline_run_id"]}))
        return out
    action = str(row.get("action", "")).strip().lower()
    if action not in SHEET_ACTIONS:
        raise ReviewError(f"action {action!r} is not one of approve, edit, reject, skip (or blank)")
    if action in ("", "skip"):
        return []
    payload: dict[str, Any] = {}
    if action == "reject":
        payload = {"reason": str(row.get("reason", "")).strip(), "note": str(row.get("note", "")).strip()}
    if action == "edit":
        for col, key in (("new_question", "question"), ("new_reference_answer", "reference_answer"),
                         ("new_reference_chunk_ids", "reference_chunk_ids")):
            value = str(row.get(col, "")).strip()
            if value:
                payload[key] = value
        if not payload:
            raise ReviewError("action edit, but new_question, new_reference_answer and new_reference_chunk_ids are all blank")
    return [Decision("golden", qa_id, action, reviewer, payload)]


def import_sheet(lake: Lake, path: Path, reviewer: str, index: MemoryIndex) -> dict:
    """Apply a filled sheet: every row validated and every change computed first (ReviewError naming the row,
    nothing written), then all events as one batch, then (golden sheets) a new version of each line."""
    rows, queue = read_sheet(path)
    with _WRITE_LOCK, lake.lock("review sheet import", wait_s=DECISION_LOCK_WAIT_S, poll_s=0.05, name="review"):
        new_events, lines_decided = _sheet_events(lake, path, rows, queue, reviewer, index)
        write_events(lake, new_events)
    applied = [apply_reviews(lake, line) for line in lines_decided]
    failed = [a for a in applied if a["status"] != "ok"]
    return {"status": "failed" if failed else "ok", **({"error": failed[0]["error"]} if failed else {}),
            "queue": queue, "path": str(path.resolve()), "events": len(new_events),
            "by_action": dict(sorted(Counter(e["action"] for e in new_events).items())), "applied": applied}


def _sheet_events(lake: Lake, path: Path, rows: list[tuple[str, dict]], queue: str, reviewer: str,
                  index: MemoryIndex) -> tuple[list[dict], list[str]]:
    """(the events a sheet's rows make, the golden lines they decide on); ReviewError naming the rows that
    fail (a bad value, a change that cannot apply, an item decided since the export)."""
    events = read_events(lake)
    by_label = dict(rows)
    now = utcnow()
    new_events: list[dict] = []
    errors: list[str] = []
    if queue == "golden":
        lines = promotion.Refs(lake).lines().lines
        heads = {name: effective_rows(lake, name, events)[1] for name in {str(r.get("line", "")).strip() for _, r in rows} if name in lines}
        known = {name: {r["qa_id"] for r in heads[name]} for name in heads}
        decisions = sheet_decisions(rows, queue, reviewer, known, str(path))
        for d, line, label in decisions:
            row = next(r for r in heads[line] if r["qa_id"] == d.item_id)
            latest = latest_events(events, ("golden", "stale"), line=line).get(d.item_id)
            d.base_event_id = (latest or {}).get("event_id")
            conflict = sheet_conflict(label, by_label[label], latest)
            if conflict:
                errors.append(conflict)
                continue
            try:
                before, after = decision_change(d, row, index, events)
            except ReviewError as exc:
                errors.append(f"{label}: {exc}")
                continue
            new_events.append(make_event(d, before, after, lines[line].golden_set_id, None, line, now))
    else:
        runs = {r["run_id"] for r in eval_runs(lake)}
        scopes = {str(r.get("run_id", "")).strip() for _, r in rows}
        known = {run: {i["qa_id"] for i in answer_items(lake, run)[1]} for run in scopes if run in runs}
        decisions = sheet_decisions(rows, queue, reviewer, known, str(path))
        for d, run, label in decisions:
            conflict = sheet_conflict(label, by_label[label], latest_events(events, ANSWER_QUEUES, run_id=run).get(d.item_id))
            if conflict:
                errors.append(conflict)
                continue
            d.base_event_id = (latest_events(events, (d.queue,), run_id=run).get(d.item_id) or {}).get("event_id")
            new_events.append(make_event(d, {}, dict(d.payload), None, run, None, now))
    if errors:
        errors = list(dict.fromkeys(errors))  # a row's grade and preference conflict once
        raise ReviewError(f"{path}: " + "; ".join(errors[:5]) + (f"; ... and {len(errors) - 5} more" if len(errors) > 5 else "")
                          + " (nothing was applied)")
    return new_events, (sorted({line for _, line, _ in decisions}) if queue == "golden" else [])
