"""Synthetic golden sets: sample chunks, generate typed Q&A with prompts, filter, follow the corpus.

Pure logic over small inputs (chunk records, LLM results); the LanceDB reads it needs go through
ChunkStore and the LLM/embedder come in as interfaces.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tasks.indexing import ChunkStore, sql_in
from tasks.prompts import Prompt
from tasks.schemas import utcnow
from tasks.settings import SynthConfig

log = logging.getLogger(__name__)

QA_TYPES = ("single_hop", "multi_hop", "abstract", "unanswerable", "paraphrased")
PROMPT_FOR_TYPE = {
    "single_hop": "qa_single_hop",
    "multi_hop": "qa_multi_hop",
    "abstract": "qa_abstract",
    "unanswerable": "qa_unanswerable",
    "paraphrased": "qa_single_hop",  # generated single-hop, then rewritten by qa_paraphrase
}
REQUIRED_PROMPTS = ("qa_single_hop", "qa_multi_hop", "qa_abstract", "qa_unanswerable", "qa_paraphrase")
REFUSAL_ANSWER = "The documents do not say."
CONTEXT_REFERENCE = re.compile(
    r"\b(the|this|that|these|above|given|provided)\s+(passages?|texts?|context|documents?|excerpts?|snippets?|sections?)\b", re.I
)
STOPWORDS = frozenset(
    "the a an and or of to in on for with is are was were be been it its this that these those by as at "
    "from can you your what which who how when where why does do not no yes will would should may".split()
)


@dataclass(frozen=True)
class ChunkRef:
    chunk_id: str
    doc_id: str
    doc_sha256: str
    text: str
    position: int


@dataclass
class GenTask:
    qa_type: str
    persona: str
    chunks: list[ChunkRef]


@dataclass
class Candidate:
    task: GenTask
    question: str
    answer: str
    prompt: Prompt
    error: str | None = None


@dataclass
class GenerationReport:
    accepted: list[dict] = field(default_factory=list)
    rejects: Counter = field(default_factory=Counter)
    attempted: int = 0


# -- budget and staleness -------------------------------------------------------------------------
def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split a budget over types by weight (largest remainder, deterministic tie-break by order)."""
    live = {t: w for t, w in weights.items() if w > 0}
    norm = sum(live.values())
    raw = {t: total * w / norm for t, w in live.items()}
    counts = {t: int(v) for t, v in raw.items()}
    for t in sorted(live, key=lambda t: (-(raw[t] - counts[t]), QA_TYPES.index(t)))[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


REPLACED = ("stale", "retired", "outdated")  # statuses of items synth replaces within its budget


def classify_previous(items: list[dict], chunk_ids: set[str], doc_ids: set[str],
                      prompt_hashes: dict[str, str] | None = None) -> dict[str, str]:
    """qa_id -> kept | stale | retired | outdated for the active items of the previous golden set.

    kept: every source chunk still exists (same text, same chunker) and the item's generation prompt is
    unchanged; stale: a source chunk changed but its document is still there; retired: a source
    document is gone; outdated: made by another version of its prompt than `prompt_hashes` (name ->
    hash) holds now, so the golden set follows its generator.
    """
    out = {}
    for item in items:
        if item["status"] != "active":
            continue
        sources = item["source_chunk_ids"]
        docs = set(item["source_doc_ids"])
        prompt_name = (item.get("prompt_id") or "").split("@")[0]
        current = (prompt_hashes or {}).get(prompt_name)
        if all(c in chunk_ids for c in sources):
            out[item["qa_id"]] = "outdated" if current and item.get("prompt_hash") and current != item["prompt_hash"] else "kept"
        elif docs and all(d in doc_ids for d in docs):
            out[item["qa_id"]] = "stale"
        else:
            out[item["qa_id"]] = "retired"
    return out


# -- sampling -------------------------------------------------------------------------------------
def _fetch(store: ChunkStore, chunk_ids: Sequence[str]) -> dict[str, dict]:
    if not chunk_ids:
        return {}
    rows = store.scan(["chunk_id", "doc_id", "doc_sha256", "text", "position", "vector"], sql_in("chunk_id", chunk_ids))
    return {r["chunk_id"]: r for r in rows.to_pylist()}


def plan_tasks(
    store: ChunkStore, counts: dict[str, int], config: SynthConfig, rng: random.Random, priority_docs: Sequence[str] = (),
) -> list[GenTask]:
    """Generation tasks, stratified over documents: documents are visited round-robin (priority
    documents first, then the rest shuffled) and each task takes a chunk of the next document."""
    catalog = store.scan(["chunk_id", "doc_id", "position", "n_tokens"]).to_pylist()
    by_doc: dict[str, list[dict]] = {}
    for row in catalog:
        if row["n_tokens"] >= config.min_context_tokens:
            by_doc.setdefault(row["doc_id"], []).append(row)
    if not by_doc:
        return []
    for rows in by_doc.values():
        rows.sort(key=lambda r: r["position"])
    rest = sorted(d for d in by_doc if d not in set(priority_docs))
    rng.shuffle(rest)
    order = [d for d in priority_docs if d in by_doc] + rest
    slots = [t for t in QA_TYPES for _ in range(counts.get(t, 0))]
    rng.shuffle(slots)

    picks: list[tuple[str, str, list[str]]] = []  # (type, doc, chunk ids)
    for i, qa_type in enumerate(slots):
        doc = order[i % len(order)]
        rows = by_doc[doc]
        if qa_type == "abstract":
            chosen, budget = [], 0
            start = rng.randrange(len(rows))
            for row in rows[start:] + rows[:start]:
                if budget + row["n_tokens"] > config.max_context_tokens and chosen:
                    break
                chosen.append(row["chunk_id"])
                budget += row["n_tokens"]
            picks.append((qa_type, doc, chosen))
        else:
            picks.append((qa_type, doc, [rng.choice(rows)["chunk_id"]]))
    fetched = _fetch(store, sorted({c for _, _, ids in picks for c in ids}))
    tasks = []
    for i, (qa_type, doc, ids) in enumerate(picks):
        refs = [_ref(fetched[c]) for c in ids if c in fetched]
        if qa_type == "multi_hop":
            partner = _neighbour(store, fetched[ids[0]])
            if partner is None:
                qa_type = "single_hop"  # a one-chunk corpus has no second hop
            else:
                refs.append(partner)
        tasks.append(GenTask(qa_type, config.personas[i % len(config.personas)], refs))
    return tasks


def _ref(row: dict) -> ChunkRef:
    return ChunkRef(row["chunk_id"], row["doc_id"], row["doc_sha256"], row["text"], row["position"])


def _neighbour(store: ChunkStore, row: dict) -> ChunkRef | None:
    """The most similar chunk that is neither this chunk nor adjacent to it in its document."""
    hits = (
        store.table.search(np.asarray(row["vector"], dtype=np.float32))
        .distance_type("cosine")
        .select(["chunk_id", "doc_id", "doc_sha256", "text", "position", "_distance"])
        .limit(8)
        .to_list()
    )
    for hit in hits:
        same_doc = hit["doc_id"] == row["doc_id"]
        if hit["chunk_id"] == row["chunk_id"] or (same_doc and abs(hit["position"] - row["position"]) <= 1):
            continue
        if hit["_distance"] < 0.02:  # a near copy is not a second hop
            continue
        return _ref(hit)
    return None


# -- prompts -> messages -------------------------------------------------------------------------
def task_messages(task: GenTask, prompts: dict[str, Prompt]) -> tuple[Prompt, list[dict]]:
    prompt = prompts[PROMPT_FOR_TYPE[task.qa_type]]
    if task.qa_type == "multi_hop":
        return prompt, prompt.render(context_a=task.chunks[0].text, context_b=task.chunks[1].text, persona=task.persona)
    context = "\n\n".join(c.text for c in task.chunks)
    return prompt, prompt.render(context=context, persona=task.persona)


def generate_candidates(tasks: list[GenTask], prompts: dict[str, Prompt], llm) -> list[Candidate]:
    """One LLM structured call per task (batched per prompt), then the paraphrase step."""
    candidates: list[Candidate | None] = [None] * len(tasks)
    groups: dict[str, list[int]] = {}
    rendered = {}
    for i, task in enumerate(tasks):
        prompt, messages = task_messages(task, prompts)
        rendered[i] = (prompt, messages)
        groups.setdefault(prompt.name, []).append(i)
    for name, idxs in groups.items():
        prompt = prompts[name]
        results = llm.structured_many([rendered[i][1] for i in idxs], prompt.output_model(), **prompt.params)
        for i, res in zip(idxs, results):
            value = res.value
            candidates[i] = Candidate(
                tasks[i], getattr(value, "question", "") if value else "", getattr(value, "answer", "") if value else "",
                prompt, None if value is not None else (res.error or "no value"),
            )
    para_idx = [i for i, c in enumerate(candidates) if c and c.task.qa_type == "paraphrased" and not c.error]
    if para_idx:
        prompt = prompts["qa_paraphrase"]
        results = llm.structured_many(
            [prompt.render(question=candidates[i].question, persona=tasks[i].persona) for i in para_idx],
            prompt.output_model(), **prompt.params,
        )
        for i, res in zip(para_idx, results):
            cand = candidates[i]
            if res.value is None:
                cand.error = res.error or "no value"
            else:
                cand.question, cand.prompt = res.value.question, prompt
    return [c for c in candidates if c is not None]


def max_prompt_tokens(tasks: list[GenTask], prompts: dict[str, Prompt], count_tokens) -> int:
    """The largest rendered prompt plus its reply budget, in the LLM's tokens (for preflight)."""
    worst = 0
    for task in tasks:
        prompt, messages = task_messages(task, prompts)
        size = sum(count_tokens(m["content"]) + 8 for m in messages) + int(prompt.params.get("max_tokens", 256))
        worst = max(worst, size)
    para = prompts["qa_paraphrase"]
    return max(worst, sum(count_tokens(m["content"]) for m in para.render(question="x" * 300, persona="p")) + 128)


# -- filters -------------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS and len(w) > 2]


def answer_support(answer: str, context: str) -> float:
    """Share of the answer's content words that occur in the context (1.0 for an empty answer)."""
    words = _words(answer)
    if not words:
        return 0.0
    vocab = set(_words(context))
    return sum(1 for w in words if w in vocab) / len(words)


def verbatim_ratio(question: str, context: str) -> float:
    """Longest run the question shares with the context, as a share of the question's length."""
    q, c = question.lower(), context.lower()
    if not q:
        return 0.0
    match = difflib.SequenceMatcher(None, q, c, autojunk=False).find_longest_match(0, len(q), 0, len(c))
    return match.size / len(q)


def reject_reason(cand: Candidate, config: SynthConfig) -> str | None:
    """Why a candidate is rejected (one reason, in check order), or None if it passes."""
    if cand.error:
        return "unparseable"
    q, a = cand.question.strip(), cand.answer.strip()
    if not (config.min_question_chars <= len(q) <= config.max_question_chars):
        return "too_short" if len(q) < config.min_question_chars else "too_long"
    if cand.task.qa_type != "unanswerable" and (not a or len(a) > config.max_answer_chars):
        return "too_short" if not a else "too_long"
    if "\n" in q or (cand.task.qa_type != "paraphrased" and not q.endswith("?")):
        return "malformed"  # a cut-off question, or one with its answer run into it
    if CONTEXT_REFERENCE.search(q):
        return "refers_to_context"  # "what is the passage about?" means nothing to a retriever
    context = "\n\n".join(c.text for c in cand.task.chunks)
    if verbatim_ratio(q, context) > config.max_verbatim_ratio:
        return "copies_context"
    if cand.task.qa_type != "unanswerable" and answer_support(a, context) < config.min_answer_support:
        return "unsupported_answer"
    return None


def qa_id_of(question: str, qa_type: str, source_chunk_ids: Sequence[str]) -> str:
    payload = json.dumps([question.strip(), qa_type, sorted(source_chunk_ids)])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def to_item(cand: Candidate, generator: str) -> dict:
    chunks = cand.task.chunks
    answerable = cand.task.qa_type != "unanswerable"
    return {
        "qa_id": qa_id_of(cand.question, cand.task.qa_type, [c.chunk_id for c in chunks]),
        "question": cand.question.strip(),
        "reference_answer": cand.answer.strip() if answerable else REFUSAL_ANSWER,
        "reference_chunk_ids": [c.chunk_id for c in chunks] if answerable else [],
        "reference_doc_ids": list(dict.fromkeys(c.doc_id for c in chunks)) if answerable else [],
        "source_chunk_ids": [c.chunk_id for c in chunks],
        "source_doc_ids": list(dict.fromkeys(c.doc_id for c in chunks)),
        "source_doc_sha256s": list(dict.fromkeys(c.doc_sha256 for c in chunks)),
        "qa_type": cand.task.qa_type,
        "persona": cand.task.persona,
        "status": "active",
        "review": "synthetic",
        "generator": generator,
        "prompt_id": cand.prompt.prompt_id,
        "prompt_hash": cand.prompt.prompt_hash,
        "created_at": utcnow(),
    }


def drop_near_duplicates(
    items: list[dict], existing_questions: Sequence[str], encode, threshold: float
) -> tuple[list[dict], int]:
    """Keep items whose question is not within `threshold` cosine of an earlier or existing one."""
    if not items:
        return items, 0
    vectors = encode(list(existing_questions) + [i["question"] for i in items])
    kept_vectors = list(vectors[: len(existing_questions)])
    kept, dropped = [], 0
    for item, vec in zip(items, vectors[len(existing_questions):]):
        if kept_vectors and max(float(np.dot(vec, k)) for k in kept_vectors) >= threshold:
            dropped += 1
            continue
        kept.append(item)
        kept_vectors.append(vec)
    return kept, dropped


def golden_set_id_of(items: list[dict]) -> str:
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i["qa_id"]):
        digest.update(f"{item['qa_id']}\t{item['status']}\t{item['review']}\n".encode())
    return digest.hexdigest()[:24]
