"""Datasets for the next model from what people decided: SFT conversations from approved/edited golden
items, and preference pairs (prompt / chosen / rejected) from graded answers and baseline-vs-candidate
preferences. JSONL in the conversational formats Hugging Face `datasets` loads and TRL's SFT and DPO
trainers document; every line carries its lineage ids (lake reads, one file written).

The prompt is the chain's own answer prompt with the item's context: the chunks the newest eval run on the
line retrieved for the question (as they read in the served index), else its reference chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Literal, Mapping, Sequence

from pydantic import Field

from ragloop.tasks import promotion, review
from ragloop.tasks.calibration import answer_sha, eval_run_records
from ragloop.tasks.prompts import PromptError, load_prompt_set
from ragloop.tasks.settings import ConfigError
from ragloop.tasks.summaries import CommandSummary

log = logging.getLogger(__name__)


class ExportDatasetSummary(CommandSummary):
    """What `export sft` and `export preference` return."""

    kind: Literal["sft", "preference"] = Field(description="sft: {messages}; preference: {prompt, chosen, rejected}")
    path: str = Field(description="the JSONL file written")
    line: str = Field(description="the golden-set line read")
    golden_set_id: str = Field(description="the line's head version read")
    rows: int = Field(description="lines written")
    skipped: dict[str, int] = Field(description="reason -> items or pairs left out (no context, tie, ...)")
    sources: dict[str, int] = Field(description="where rows came from: {reference_vs_incorrect, correct_vs_incorrect, "
                                                "preference} (preference) or {review: n} (sft)")


def _line(lake, golden: str | None) -> tuple[str, str, list[dict]]:
    lines = promotion.Refs(lake).lines()
    name = lines.chosen if golden in (None, "latest") else golden
    if name not in lines.lines:
        raise ConfigError(f"--golden {golden or 'latest'}: no golden-set line {name!r} in {lake.uri} "
                          f"(have: {', '.join(sorted(lines.lines)) or 'none'})")
    ref, rows = review.line_head(lake, name)
    return name, ref.golden_set_id, rows


def _answer_prompt(prompts_dir):
    try:
        return load_prompt_set(prompts_dir)["answer"]
    except (PromptError, KeyError) as exc:
        raise ConfigError(f"export: the answer prompt cannot be loaded from {prompts_dir}: {exc}") from exc


class Contexts:
    """The context of each question: the newest eval run on the line that scored it, its retrieved chunks'
    texts from the served index; else the item's reference chunks."""

    def __init__(self, lake, line: str, index: review.MemoryIndex | None = None) -> None:
        self.index = index if index is not None else review.LakeIndex(lake)
        self.retrieved: dict[str, tuple[str, list[str]]] = {}
        self.answers: dict[str, dict[str, dict]] = {}  # run_id -> qa_id -> item
        for record in reversed(eval_run_records(lake)):  # oldest first: the newest run wins
            table = lake.read_eval_items(record["run_id"])
            if table is None:
                continue
            items = {r["qa_id"]: r for r in table.to_pylist()}
            self.answers[record["run_id"]] = items
            if record["golden_line"] == line:
                for qa_id, r in items.items():
                    if r["retrieved_chunk_ids"]:
                        self.retrieved[qa_id] = (record["run_id"], list(r["retrieved_chunk_ids"]))

    def of(self, item: Mapping) -> tuple[str | None, list[str], list[str]]:
        """(eval run or None for the references, chunk ids, texts) of an item's context."""
        run_id, ids = self.retrieved.get(item["qa_id"], (None, []))
        found = self.index.get(ids)
        if not found:
            run_id, ids = None, list(item.get("reference_chunk_ids") or [])
            found = self.index.get(ids)
        ids = [c for c in ids if c in found]
        return run_id, ids, [found[c].text for c in ids]


def _write(rows: Sequence[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(out)


def sft_rows(items: Sequence[Mapping], contexts: Contexts, prompt, golden_set_id: str, line: str) -> tuple[list[dict], Counter]:
    """One conversation per approved or edited active item: the answer prompt's system and user messages
    with the item's context, and the reviewed reference answer as the assistant's."""
    rows, skipped = [], Counter()
    for item in items:
        if item["status"] != "active" or item.get("review") not in review.HUMAN:
            skipped["not_reviewed"] += 1
            continue
        if not (item.get("reference_answer") or "").strip():
            skipped["no_reference_answer"] += 1
            continue
        run_id, ids, texts = contexts.of(item)
        messages = prompt.render(question=item["question"], contexts=texts)
        rows.append({"messages": messages + [{"role": "assistant", "content": item["reference_answer"]}],
                     "qa_id": item["qa_id"], "qa_type": item["qa_type"], "golden_set_id": golden_set_id, "line": line,
                     "review": item["review"], "reviewer": item.get("reviewer"),
                     "review_event_id": item.get("review_event_id"), "context_chunk_ids": ids,
                     "context_run_id": run_id, "prompt_name": prompt.name, "prompt_hash": prompt.prompt_hash})
    return rows, skipped


def _latest(events: Sequence[dict], queue: str) -> dict[tuple[str, str], dict]:
    out = {}
    for e in sorted(events, key=lambda e: (e["at"], e["event_id"])):
        if e["queue"] == queue and e["action"] != "skip":
            out[(e["run_id"], e["item_id"])] = e
    return out


def preference_rows(items: Sequence[Mapping], events: Sequence[dict], contexts: Contexts, prompt,
                    golden_set_id: str, line: str) -> tuple[list[dict], Counter, Counter]:
    """Pairs for the line's questions, each once (by the hashes of both answers):
    - `preference`: a baseline-vs-candidate preference (ties left out);
    - `correct_vs_incorrect`: an answer graded correct vs one graded incorrect, of any runs;
    - `reference_vs_incorrect`: the reviewed reference answer (approved/edited items) vs an incorrect one."""
    by_qa = {i["qa_id"]: i for i in items if i["status"] == "active"}
    graded: dict[str, dict[str, list[dict]]] = {}
    for (run_id, qa_id), e in _latest(events, "answers").items():
        answer = (contexts.answers.get(run_id) or {}).get(qa_id, {}).get("answer")
        grade = json.loads(e["after"] or "{}").get("grade")
        if qa_id in by_qa and answer and grade in ("correct", "incorrect"):
            graded.setdefault(qa_id, {}).setdefault(grade, []).append({"answer": answer, "run_id": run_id, "event_id": e["event_id"]})
    candidates: list[tuple[str, str, dict, dict]] = []
    skipped = Counter()
    for (run_id, qa_id), e in _latest(events, "compare").items():
        after = json.loads(e["after"] or "{}")
        if qa_id not in by_qa:
            continue
        if after.get("better") == "tie":
            skipped["tie"] += 1
            continue
        cand = (contexts.answers.get(run_id) or {}).get(qa_id, {}).get("answer")
        base_run = after.get("baseline_run_id")
        base = (contexts.answers.get(base_run) or {}).get(qa_id, {}).get("answer")
        if not cand or not base:
            skipped["answer_missing"] += 1
            continue
        sides = {"candidate": {"answer": cand, "run_id": run_id}, "baseline": {"answer": base, "run_id": base_run}}
        chosen, rejected = (sides["candidate"], sides["baseline"]) if after["better"] == "candidate" else (sides["baseline"], sides["candidate"])
        candidates.append(("preference", qa_id, {**chosen, "event_id": e["event_id"]}, {**rejected, "event_id": e["event_id"]}))
    for qa_id, by_grade in sorted(graded.items()):
        for bad in by_grade.get("incorrect", []):
            for good in by_grade.get("correct", []):
                candidates.append(("correct_vs_incorrect", qa_id, good, bad))
            item = by_qa[qa_id]
            if item.get("review") in review.HUMAN and (item.get("reference_answer") or "").strip():
                candidates.append(("reference_vs_incorrect", qa_id,
                                   {"answer": item["reference_answer"], "run_id": None, "event_id": item.get("review_event_id")}, bad))
    rows, seen, sources = [], set(), Counter()
    for source, qa_id, chosen, rejected in candidates:
        key = (qa_id, answer_sha(chosen["answer"]), answer_sha(rejected["answer"]))
        if chosen["answer"].strip() == rejected["answer"].strip():
            skipped["same_answer"] += 1
            continue
        if key in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        item = by_qa[qa_id]
        run_id, ids, texts = contexts.of(item)
        sources[source] += 1
        rows.append({"prompt": prompt.render(question=item["question"], contexts=texts),
                     "chosen": [{"role": "assistant", "content": chosen["answer"]}],
                     "rejected": [{"role": "assistant", "content": rejected["answer"]}],
                     "pair_id": hashlib.sha256("|".join(key).encode()).hexdigest()[:16], "source": source,
                     "qa_id": qa_id, "golden_set_id": golden_set_id, "line": line,
                     "chosen_run_id": chosen["run_id"], "chosen_event_id": chosen["event_id"],
                     "rejected_run_id": rejected["run_id"], "rejected_event_id": rejected["event_id"],
                     "context_chunk_ids": ids, "context_run_id": run_id,
                     "prompt_name": prompt.name, "prompt_hash": prompt.prompt_hash})
    return rows, skipped, sources


def export_dataset(lake, kind: str, out: Path, prompts_dir, golden: str | None = None,
                   index: review.MemoryIndex | None = None) -> ExportDatasetSummary:
    """Write the SFT or preference JSONL of a golden-set line (default: the chosen one) to `out`."""
    line, golden_set_id, items = _line(lake, golden)
    prompt = _answer_prompt(prompts_dir)
    contexts = Contexts(lake, line, index)
    if kind == "sft":
        rows, skipped = sft_rows(items, contexts, prompt, golden_set_id, line)
        sources = Counter(r["review"] for r in rows)
    elif kind == "preference":
        rows, skipped, sources = preference_rows(items, review.read_events(lake), contexts, prompt, golden_set_id, line)
    else:
        raise ConfigError(f"export {kind}: expected sft or preference")
    _write(rows, out)
    return ExportDatasetSummary(status="ok", kind=kind, path=str(out.resolve()), line=line, golden_set_id=golden_set_id,
                                rows=len(rows), skipped=dict(sorted(skipped.items())), sources=dict(sorted(sources.items())))
