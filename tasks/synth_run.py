"""The synth stage's decisions: the prompts it needs, what the previous golden set keeps, the budget
loop that refills after rejects, the version it writes, its status and its typed summary.

No prefect here: the flow (flows/synth.py) passes its Prefect task wrappers in as the plan and
generate steps, and its StageTimer as `timer`. I/O goes through the ChunkStore and the Lake.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import pyarrow as pa
from pydantic import Field

from ragloop.tasks import grounding, promotion, review, schemas
from ragloop.tasks import qa_generation as qa
from ragloop.tasks.indexing import ChunkStore
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.llm import LLMConfigError, LLMUnavailable
from ragloop.tasks.progress import Progress
from ragloop.tasks.prompts import Prompt, PromptError, load_prompt_set
from ragloop.tasks.question_types import must_refuse, required_prompts
from ragloop.tasks.summaries import LineMove, StageSummary, SummaryModel
from ragloop.tasks.settings import ConfigError, LLMConfig, SynthConfig
from ragloop.tasks.storage import Lake

Timer = Callable[[str], ContextManager]


def _no_timer(name: str) -> ContextManager:
    return nullcontext()


# -- prompts --------------------------------------------------------------------------------------
def load_synth_prompts(prompts_dir: str | Path | None) -> dict[str, Prompt]:
    """The run's prompt set (tasks.prompts.load_prompt_set), checked to hold every prompt synth renders.
    Raises ConfigError (exit 2) naming an invalid file or the missing names."""
    try:
        prompts = load_prompt_set(prompts_dir)
    except PromptError as exc:
        raise ConfigError(str(exc)) from exc
    missing = [p for p in required_prompts() if p not in prompts]
    if missing:
        raise ConfigError(f"prompts_dir {prompts_dir}: missing prompt file(s) {missing}")
    return prompts


def record_prompts(lake: Lake, prompts: dict[str, Prompt]) -> None:
    """Register every prompt version the run loaded (idempotent: a known version is not rewritten)."""
    for prompt in prompts.values():
        lake.record_prompt(prompt.name, prompt.prompt_hash, prompt.text)


# -- what the previous golden set keeps ---------------------------------------------------------------
def read_previous(lake: Lake, refs: promotion.Refs) -> tuple[promotion.GoldenLine | None, list[dict]]:
    """The head of synth's own line (never the chosen line: synth follows its own) and its rows."""
    previous_ref = refs.lines().lines.get(promotion.SYNTHETIC)
    return previous_ref, (lake.read_golden(previous_ref.golden_set_id).to_pylist() if previous_ref else [])


# The code that decides which candidates pass: a change re-checks the kept items on the next synth.
FILTERS_HASH = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (qa, grounding))).hexdigest()[:16]


def generation_inputs(table: tuple[str, int], config: SynthConfig, llm: LLMConfig, prompts: dict[str, Prompt]) -> str:
    """Hash of what generation depends on: the table version, the synth and LLM settings, the filters' code
    (FILTERS_HASH) and the prompts synth renders (an answer-prompt change re-runs eval, not synth). Equal inputs: nothing to generate."""
    return canonical_hash({"table": list(table), "synth": config.model_dump(mode="json"), "filters": FILTERS_HASH,
                           "llm": llm.model_dump(mode="json"),
                           "prompts": {n: prompts[n].prompt_hash for n in sorted(required_prompts())}})


@dataclass
class SynthPlan:
    """What the previous golden set keeps and what this run generates."""

    kept: list[dict]  # previous active items kept exactly as they were
    changed: list[dict]  # previous active items now stale | retired | outdated (their `status` set so)
    priority: list[str]  # doc ids to seed first: those of stale/outdated items, then documents no kept item covers
    doc_ids: set[str]  # every document in the index
    inputs: str  # generation_inputs of this run
    up_to_date: bool  # inputs unchanged since the last synth and nothing changed: generate nothing
    need: int  # new items wanted in the first round
    # Items people decided (tasks.review) that synth carries as they are: rejected ones, and reviewed ones whose
    # chunks changed (status stale: they wait in the review app's stale queue, never regenerated).
    held: list[dict] = field(default_factory=list)
    rejected_pairs: frozenset = frozenset()  # (qa_type, chunk_id) people rejected: never generated again
    moved: list[str] = field(default_factory=list)  # qa_ids of kept items carried over a renamed document

    def status_counts(self) -> Counter:
        return Counter(i["status"] for i in self.changed)


RENAME_COLUMNS = ["chunk_id", "doc_id", "doc_sha256", "text", "position", "chunker_hash"]  # what carry_over_renames reads


def carry_over_renames(items: Sequence[dict], verdicts: dict[str, str], chunk_rows: Sequence[dict]) -> dict[str, dict]:
    """qa_id -> the item re-pointed at its chunks' new ids, for retired items (a source document gone)
    whose every vanished source chunk reappears unchanged under another document: a renamed or moved
    file. A chunk is recognized by recomputing its id (tasks.chunking.chunk_id_of) under each gone
    document id of the item from a current chunk's text, chunker hash and occurrence in its document,
    so the text and the chunker must be the same. Reference, source and evidence chunk ids, doc ids
    and doc hashes follow; evidence offsets stay (same text). chunk_rows: {chunk_id, doc_id,
    doc_sha256, text, position, chunker_hash} of every chunk in the index. Items not fully found stay
    retired (absent from the result)."""
    from ragloop.tasks.chunking import chunk_id_of

    present = {r["chunk_id"] for r in chunk_rows}
    retired = [i for i in items if verdicts.get(i["qa_id"]) == "retired"]
    gone_docs = {d for i in retired for d in i["source_doc_ids"]} - {r["doc_id"] for r in chunk_rows}
    if not gone_docs:
        return {}
    seen: Counter = Counter()
    renamed: dict[str, dict] = {}  # old chunk id -> the current chunk row it would have been
    for row in sorted(chunk_rows, key=lambda r: (r["doc_id"], r["position"])):
        occurrence = seen[(row["doc_id"], row["text"])]
        seen[(row["doc_id"], row["text"])] += 1
        for doc in gone_docs:
            renamed.setdefault(chunk_id_of(doc, row["chunker_hash"], occurrence, row["text"]), row)
    out = {}
    for item in retired:
        missing = [c for c in item["source_chunk_ids"] if c not in present]
        if not missing or not all(c in renamed for c in missing):
            continue
        new_id = {c: renamed[c]["chunk_id"] for c in missing}
        rows = {c: renamed[c] for c in missing}
        doc_of = {r["chunk_id"]: r["doc_id"] for r in chunk_rows}
        old_doc = dict(zip(item["source_doc_ids"], item.get("source_doc_sha256s") or []))
        sha_of = {r["doc_id"]: r["doc_sha256"] for r in rows.values()}

        def repoint(ids: Sequence[str]) -> list[str]:
            return [new_id.get(c, c) for c in ids]

        sources, references = repoint(item["source_chunk_ids"]), repoint(item["reference_chunk_ids"])
        source_docs = list(dict.fromkeys(doc_of[c] for c in sources))
        out[item["qa_id"]] = dict(
            item, source_chunk_ids=sources, reference_chunk_ids=references, source_doc_ids=source_docs,
            reference_doc_ids=list(dict.fromkeys(doc_of[c] for c in references)),
            source_doc_sha256s=[sha_of.get(d) or old_doc.get(d, "") for d in source_docs],
            evidence=[dict(e, chunk_id=new_id.get(e["chunk_id"], e["chunk_id"])) for e in item.get("evidence") or []])
    return out


def plan_synth(previous: list[dict], previous_ref: promotion.GoldenLine | None, catalog: Sequence[dict],
               prompts: dict[str, Prompt], inputs: str, size: int,
               chunk_rows: Callable[[], Sequence[dict]] | None = None, writer: str | None = None,
               config: SynthConfig | None = None) -> SynthPlan:
    """Classify the previous set's active items against the index (catalog: {chunk_id, doc_id} rows) and
    the current prompts and question writer (tasks.qa_generation.classify_previous), and size the budget: `size` active
    items, of which the kept ones count. An item whose document was renamed (its chunks' texts are back
    under a new doc_id) is kept, re-pointed, and listed in `moved` (carry_over_renames; chunk_rows() is
    called only when some item would be retired, and returns the rows it needs)."""
    chunk_ids = {r["chunk_id"] for r in catalog}
    doc_ids = {r["doc_id"] for r in catalog}
    current_prompts = {n: prompts[n].prompt_hash for n in required_prompts()}
    verdicts = qa.classify_previous(previous, chunk_ids, doc_ids, current_prompts, writer)
    moved = {}
    if chunk_rows is not None and "retired" in verdicts.values():
        moved = carry_over_renames(previous, verdicts, chunk_rows())
        previous = [moved.get(i["qa_id"], i) for i in previous]
        verdicts.update(dict.fromkeys(moved, "kept"))
    if config is not None and chunk_rows is not None and not (previous_ref and previous_ref.inputs == inputs):
        # The inputs changed (settings, prompts, or the filters' code): an item today's filters reject is
        # outdated like one from an older prompt; human-reviewed items stay (review.protect_human).
        texts = {r["chunk_id"]: r["text"] for r in chunk_rows()}
        candidates = [i for i in previous if verdicts.get(i["qa_id"]) == "kept" and i.get("review") in (None, "synthetic")]
        verdicts.update(dict.fromkeys(qa.failing_filters(candidates, texts, config), "outdated"))
    verdicts, held = review.protect_human(previous, verdicts)
    kept = [i for i in previous if verdicts.get(i["qa_id"]) == "kept"]
    changed = [dict(i, status=verdicts[i["qa_id"]]) for i in previous if verdicts.get(i["qa_id"]) in qa.REPLACED]
    covered = {d for i in kept for d in i["source_doc_ids"]}
    priority = (sorted({d for i in changed if i["status"] in ("stale", "outdated") for d in i["source_doc_ids"]})
                + sorted(doc_ids - covered))
    up_to_date = bool(previous_ref) and previous_ref.inputs == inputs and not changed and not moved
    need = 0 if up_to_date else max(size - len(kept), 0)
    return SynthPlan(kept, changed, priority, doc_ids, inputs, up_to_date, need, held, review.rejected_pairs(previous),
                     sorted(q for q in moved if verdicts.get(q) == "kept"))


# -- the budget loop ------------------------------------------------------------------------------
@dataclass
class Budget:
    """What the generation rounds produced."""

    report: qa.GenerationReport = field(default_factory=qa.GenerationReport)
    attempted_by_type: Counter = field(default_factory=Counter)  # candidates generated, by question type


def planned_count(need: int, report: qa.GenerationReport) -> int:
    """Tasks to plan for a round: the need at first; after a round, the need scaled by the accept rate
    seen so far, up to 2x the need, so a small model's rejects do not leave the budget unfilled."""
    if not report.attempted:
        return need
    return min(2 * need, -(-need * report.attempted // max(len(report.accepted), 1)))


def round_counts(need: int, targets: dict[str, int], report: qa.GenerationReport,
                 attempted_by_type: Counter) -> dict[str, int]:
    """Tasks per question type for the next round. Round 1: the type mix of the need (targets). Later
    rounds: each type's own shortfall (target - accepted), scaled by that type's accept rate so far, up
    to twice the shortfall (a type nothing of which passed gets twice its shortfall, not the leftover of
    the types that pass easily, so the mix is kept where the model can make it); if every type reached
    its target but the total did not (items dropped as duplicates), planned_count over the mix."""
    if not report.attempted:
        return dict(targets)
    accepted = Counter(i["qa_type"] for i in report.accepted)
    counts = {}
    for qa_type, target in targets.items():
        missing = max(target - accepted[qa_type], 0)
        tried, passed = attempted_by_type[qa_type], accepted[qa_type]
        counts[qa_type] = missing if not tried else min(2 * missing, -(-missing * tried // passed) if passed else 2 * missing)
    if not any(counts.values()):
        return qa.allocate(planned_count(need, report), {t: float(n) for t, n in targets.items() if n})
    return counts


def preflight(llm, tasks: list[qa.GenTask], prompts: dict[str, Prompt]) -> None:
    """Before any generation: the endpoint answers and the model fits the largest prompt. ConfigError (exit 2)."""
    try:
        llm.preflight(qa.max_prompt_tokens(tasks, prompts, llm.count_tokens))
    except (PromptError, LLMUnavailable, LLMConfigError) as exc:
        raise ConfigError(str(exc)) from exc


def screen(candidates: Sequence[qa.Candidate], config: SynthConfig, report: qa.GenerationReport) -> list[qa.Candidate]:
    """The candidates no filter rejects (tasks.qa_generation.reject_reason); rejects are counted by reason."""
    passed = []
    for cand in candidates:
        reason = qa.reject_reason(cand, config)
        if reason:
            report.rejects[reason] += 1
        else:
            passed.append(cand)
    return passed


def drop_answerable(passed: list[qa.Candidate], store: ChunkStore, encode, config: SynthConfig,
                    report: qa.GenerationReport) -> list[qa.Candidate]:
    """Drop "unanswerable" candidates the index can answer (they would punish a chain for answering
    right); counted as rejects["answerable"]."""
    unanswerable = [c for c in passed if c.task.kind.must_refuse]
    found = qa.search_texts(store, encode, [c.question for c in unanswerable], config.answerable_check_k)
    answered = {id(c) for c, texts in zip(unanswerable, found) if qa.answered_by(c.question, texts, config.answerable_coverage)}
    report.rejects["answerable"] += len(answered)
    return [c for c in passed if id(c) not in answered]


def drop_roundtrip(passed: list[qa.Candidate], encode, config: SynthConfig,
                   report: qa.GenerationReport) -> list[qa.Candidate]:
    """Drop extractive candidates whose question leads to another sentence of its chunk than its answer
    (tasks.qa_generation.roundtrip_failures); counted as rejects["roundtrip"]."""
    failed = qa.roundtrip_failures(passed, encode, config.roundtrip_margin)
    report.rejects["roundtrip"] += len(failed)
    return [c for i, c in enumerate(passed) if i not in failed]


def recheck_unanswerable(plan: SynthPlan, store: ChunkStore, encode, config: SynthConfig) -> int:
    """Kept synthetic "unanswerable" items the index answers today (the `answerable` check with today's
    settings, as for a new candidate) become outdated and their slots are regenerated: plan.kept,
    plan.changed and plan.need change in place. Returns how many moved."""
    kept = [i for i in plan.kept if must_refuse(i["qa_type"]) and i.get("review") in (None, "synthetic")]
    found = qa.search_texts(store, encode, [i["question"] for i in kept], config.answerable_check_k)
    answered = {i["qa_id"] for i, texts in zip(kept, found) if qa.answered_by(i["question"], texts, config.answerable_coverage)}
    if answered:
        plan.changed.extend(dict(i, status="outdated") for i in plan.kept if i["qa_id"] in answered)
        plan.kept[:] = [i for i in plan.kept if i["qa_id"] not in answered]
        plan.need += len(answered)
    return len(answered)


def take_budget(fresh: list[dict], need: int, report: qa.GenerationReport) -> None:
    """Accept up to `need` of the fresh items; the rest count as rejects["over_budget"], so that
    attempted == new + rejected always holds."""
    report.accepted.extend(fresh[:need])
    if len(fresh) > need:
        report.rejects["over_budget"] += len(fresh) - need


def fill_budget(plan: SynthPlan, store: ChunkStore, encode, llm, prompts: dict[str, Prompt], config: SynthConfig, *,
                plan_step=qa.plan_tasks, generate_step=qa.generate_candidates, timer: Timer = _no_timer,
                progress: Progress | None = None) -> Budget:
    """Generate new items in up to config.rounds rounds until plan.need items are accepted (kept + new ==
    config.size). Round 1 seeds plan.priority documents first; later rounds sample freely. The LLM is
    preflighted once, before the first generation. Seeded (config.seed): the same inputs, the same plan.

    plan_step/generate_step default to tasks.qa_generation.plan_tasks/generate_candidates (the flow
    passes its Prefect task wrappers); timer(name) times the steps plan, preflight, generate,
    answerable_check, roundtrip and dedupe. `progress` counts candidates generated of those planned so far (each
    round adds its tasks to the total) and notes the items accepted of those needed. When the inputs
    changed, kept "unanswerable" items the index now answers are outdated first (recheck_unanswerable)."""
    track = progress or Progress("synth", enabled=False)
    rng = random.Random(config.seed)
    budget = Budget()
    if not plan.up_to_date:
        recheck_unanswerable(plan, store, encode, config)
    report, need, priority, preflight_done = budget.report, plan.need, plan.priority, False
    asked: set[str] = set()  # chunks this run's earlier rounds asked about: later rounds ask elsewhere
    targets = qa.allocate(need, config.types) if need > 0 else {}  # the type mix of the new items
    for _ in range(config.rounds):
        if need <= 0:
            break
        with timer("plan"):
            counts = round_counts(need, targets, report, budget.attempted_by_type)
            tasks = plan_step(store, counts, config, rng, priority, report.ineligible_chunks, frozenset(asked))
            allowed = [t for t in tasks if not review.blocked_task(t.qa_type, [c.chunk_id for c in t.chunks], plan.rejected_pairs)]
            if len(allowed) < len(tasks):
                report.ineligible_chunks["rejected_by_review"] += len(tasks) - len(allowed)
                tasks = allowed
        if not tasks:
            break
        if not preflight_done:
            with timer("preflight"):
                preflight(llm, tasks, prompts)
            preflight_done = True
        with timer("generate"):
            track.add_total(len(tasks))
            done = track.n
            candidates = generate_step(tasks, prompts, llm, on_done=track, writer=config.question_writer)
            track.reach(done + len(tasks))  # an LLM that does not report each item still moves the count
        asked.update(c.chunk_id for t in tasks for c in t.chunks)
        report.attempted += len(candidates)
        budget.attempted_by_type.update(c.task.qa_type for c in candidates)
        passed = screen(candidates, config, report)
        with timer("answerable_check"):
            passed = drop_answerable(passed, store, encode, config, report)
        with timer("roundtrip"):
            passed = drop_roundtrip(passed, encode, config, report)
        fresh = [qa.to_item(c, llm.model_id) for c in passed]
        with timer("dedupe"):
            fresh, dropped = qa.drop_near_duplicates(fresh, plan.kept + report.accepted, encode,
                                                     config.near_duplicate_similarity, config.same_chunk_similarity)
        report.rejects["near_duplicate"] += dropped
        take_budget(fresh, need, report)
        need = config.size - len(plan.kept) - len(report.accepted)
        track.set_note(accepted=f"{len(report.accepted)}/{plan.need}")
        priority = []  # later rounds sample freely
    return budget


# -- the version written ---------------------------------------------------------------------------
@dataclass
class SynthGolden:
    """The new golden set: active items (kept + new), then the replaced ones no new item regenerated."""

    active: list[dict]
    items: list[dict]


def assemble_golden(plan: SynthPlan, accepted: list[dict]) -> SynthGolden:
    """Active items first; a replaced item that a new prompt regenerated word for word (same qa_id)
    appears once, as the new active item; items people decided that are not active come last, as they are."""
    active = plan.kept + accepted
    regenerated = {i["qa_id"] for i in active}
    return SynthGolden(active, active + [i for i in plan.changed + plan.held if i["qa_id"] not in regenerated])


def write_version(lake: Lake, golden: SynthGolden, plan: SynthPlan,
                  previous_ref: promotion.GoldenLine | None) -> tuple[str, bool]:
    """(golden_set_id, written). Up to date: the previous version stays, so the nightly's eval is
    reused; else the content-addressed version is written (False when it already exists)."""
    if plan.up_to_date:
        return previous_ref.golden_set_id, False
    golden_set_id = qa.golden_set_id_of(golden.items)
    return golden_set_id, lake.write_golden(golden_set_id, pa.Table.from_pylist(golden.items, schema=schemas.GOLDEN))


def synth_lineage(golden_set_id: str, previous_ref: promotion.GoldenLine | None, store: ChunkStore,
                  prompts: dict[str, Prompt], llm_config: LLMConfig, generator: str, embedder, seed: int) -> dict:
    """What the golden set was made from, merged into the run's lineage."""
    return {
        "golden_set_id": golden_set_id,
        "previous_golden_set_id": previous_ref.golden_set_id if previous_ref else None,
        "golden_line": promotion.SYNTHETIC,
        "table": {"name": store.name, "version": store.version},
        "prompts": {name: p.prompt_hash for name, p in sorted(prompts.items())},
        "llm": {"provider": llm_config.provider, "model": generator},
        "embedder": {"name": embedder.name, "weights_sha256": embedder.weights_sha256},
        "seed": seed,
    }


# -- the summary ----------------------------------------------------------------------------------
class SynthItems(SummaryModel):
    total: int = Field(description="active items in the written golden set (kept + new)")
    new: int = Field(description="items accepted this run")
    kept: int = Field(description="previous active items kept (unchanged, or moved)")
    moved: int | None = Field(default=None, description="kept items carried over a renamed or moved document: "
                                                        "same text, re-pointed at its new chunk and doc ids")
    stale: int = Field(description="previous items whose source chunk changed (document still there)")
    retired: int = Field(description="previous items whose source document is gone")
    outdated: int = Field(description="previous items made by another version of their prompt")
    rejected: int = Field(description="candidates rejected this run, all reasons")


class FolderCoverage(SummaryModel):
    documents: int = Field(description="documents of the folder some active item comes from")
    of: int = Field(description="documents of the folder in the index")


class Coverage(SummaryModel):
    documents: int = Field(description="indexed documents some active answerable item comes from (an unanswerable one covers nothing)")
    of: int = Field(description="documents in the index")
    ratio: float = Field(description="documents / of, 3 decimals (0.0 for an empty index)")
    folders: int = Field(description="report folders some active item comes from")
    of_folders: int = Field(description="report folders in the index: top-level folders ('.' = the root), a folder "
                                        "holding most documents split into its subfolders (qa_generation.report_folders)")
    by_folder: dict[str, FolderCoverage] = Field(description="report folder -> coverage, sorted by folder")


class EvidenceSupported(SummaryModel):
    items: int = Field(description="new answerable items whose answer has evidence spans")
    of: int = Field(description="new answerable items (an accept rule: always all of them)")


class PerMinute(SummaryModel):
    candidates: float | None = Field(description="candidates per minute of generation time (LLM calls included); None without generation")
    accepted: float | None = Field(description="accepted items per minute of generation time; None without generation")


class Shortfall(SummaryModel):
    asked: int = Field(description="synth.size: the active items wanted")
    active: int = Field(description="active items reached")
    rounds: int = Field(description="synth.rounds: generation rounds allowed")
    rejects: dict[str, int] = Field(description="rejects by reason (non-zero, sorted)")
    by_type: dict[str, int] = Field(default_factory=dict, description="question type -> active items missing against "
                                    "its share of synth.size (synth.types), non-zero: where the mix fell short")


class SynthSummary(StageSummary):
    """What a synth-golden-set run returns (and its manifest stores as outputs)."""

    lake: str = Field(description="the lake's URI")
    golden_set_id: str = Field(description="the golden set version this run leaves as synth's line head")
    items: SynthItems
    by_type: dict[str, int] = Field(description="active items by question type, sorted")
    rejects: dict[str, int] = Field(description="rejected candidates by reason (non-zero, sorted)")
    attempted: int = Field(description="candidates generated this run (== new + rejected)")
    up_to_date: bool = Field(description="inputs unchanged since the last synth: nothing generated, version reused")
    accept_rate_by_type: dict[str, float] = Field(description="accepted / attempted per question type, 3 decimals")
    per_type: dict[str, dict[str, int]] | None = Field(
        default=None, description="{type: {accepted, attempted}}: candidates generated and accepted this run, by type")
    coverage: Coverage
    ineligible_chunks: dict[str, int] = Field(description="chunks not allowed to seed questions, by reason (last round)")
    evidence_supported: EvidenceSupported
    written: bool = Field(description="whether this run wrote a new golden set version")
    timings_s: dict[str, float] = Field(description="wall seconds per step (plan, preflight, generate, answerable_check, dedupe)")
    per_minute: PerMinute
    shortfall: Shortfall | None = Field(default=None, description="set when fewer than synth.size items are active")
    error: str | None = Field(default=None, description="why the run is failed or partial")
    line: LineMove | None = Field(default=None, description="the move of synth's line; absent when the version is reused "
                                                            "or failed the golden suite")
    validation: dict[str, Any] | None = Field(
        default=None, description="{golden: {suite, success, evaluated, failures}}: the great-expectations golden suite "
                                  "run on a version before it becomes the line's head")


def _nonzero(rejects: Counter) -> dict[str, int]:
    return dict(sorted((k, v) for k, v in rejects.items() if v))


def summarize(run_id: str, lineage: dict[str, Any], *, lake_uri: str, golden_set_id: str, written: bool,
              plan: SynthPlan, golden: SynthGolden, budget: Budget, config: SynthConfig,
              timings_s: dict[str, float], generate_s: float | None) -> SynthSummary:
    """The run's summary with its status: failed without any active item; partial when generation ran
    but accepted nothing, or left fewer than config.size active items (a shortfall is never a silent
    "ok"); else ok. generate_s: seconds spent generating (None/0 when nothing was generated)."""
    report, active, status_counts = budget.report, golden.active, plan.status_counts()
    covered = {d for i in active if not must_refuse(i["qa_type"]) for d in i["source_doc_ids"]}  # an unanswerable item covers nothing
    folder_of = qa.report_folders(sorted(plan.doc_ids))
    folders = Counter(folder_of.values())
    folders_covered = Counter(folder_of[d] for d in covered if d in folder_of)
    answerable_new = [i for i in report.accepted if not must_refuse(i["qa_type"])]
    summary = SynthSummary(
        run_id=run_id, status="ok", lineage=lineage, lake=lake_uri, golden_set_id=golden_set_id,
        items={"total": len(active), "new": len(report.accepted), "kept": len(plan.kept),
               "moved": len(plan.moved), "stale": status_counts["stale"],
               "retired": status_counts["retired"], "outdated": status_counts["outdated"],
               "rejected": sum(report.rejects.values())},
        by_type=dict(sorted(Counter(i["qa_type"] for i in active).items())),
        rejects=_nonzero(report.rejects), attempted=report.attempted, up_to_date=plan.up_to_date,
        accept_rate_by_type={t: round(sum(1 for i in report.accepted if i["qa_type"] == t) / n, 3)
                             for t, n in sorted(budget.attempted_by_type.items())},
        per_type={t: {"accepted": sum(1 for i in report.accepted if i["qa_type"] == t), "attempted": n}
                  for t, n in sorted(budget.attempted_by_type.items())},
        coverage={"documents": len(covered), "of": len(plan.doc_ids),
                  "ratio": round(len(covered) / len(plan.doc_ids), 3) if plan.doc_ids else 0.0,
                  "folders": len(folders_covered), "of_folders": len(folders),
                  "by_folder": {f: {"documents": folders_covered[f], "of": n} for f, n in sorted(folders.items())}},
        ineligible_chunks=dict(sorted(report.ineligible_chunks.items())),
        evidence_supported={"items": sum(1 for i in answerable_new if i["evidence"]), "of": len(answerable_new)},  # new only
        written=written, timings_s=timings_s,
        per_minute={"candidates": round(report.attempted * 60 / generate_s, 2) if generate_s else None,
                    "accepted": round(len(report.accepted) * 60 / generate_s, 2) if generate_s else None},
    )
    if not active:
        summary.status = "failed"
        summary.error = f"no accepted items: {report.attempted} generated, rejected by reason {dict(report.rejects)}"
    elif report.attempted and not report.accepted:
        summary.status = "partial"
        summary.error = f"no new item accepted out of {report.attempted}: {dict(report.rejects)}"
    elif len(active) < config.size:  # also on an up-to-date night: the set is still short
        summary.status = "partial"
        wanted, have = qa.allocate(config.size, config.types), Counter(i["qa_type"] for i in active)
        summary.shortfall = {"asked": config.size, "active": len(active), "rounds": config.rounds,
                             "rejects": _nonzero(report.rejects),
                             "by_type": {t: n - have[t] for t, n in sorted(wanted.items()) if n > have[t]}}
        summary.error = (f"{len(active)} of {config.size} items" + (f" after {config.rounds} rounds; rejected by "
                         f"reason {summary.shortfall.rejects}" if report.attempted else " (nothing generated: up to date)"))
    return summary


def record_validation(summary: SynthSummary, validation: dict[str, Any], error: str | None) -> bool:
    """Put the golden suite's outcome (tasks.golden_quality.validation_outcome) on the summary; a failed
    suite makes the run failed (the version stays written, nothing lost, but does not head the line).
    Returns whether the line may move."""
    summary.validation = validation
    if error is not None:
        summary.status = "failed"
        summary.error = error
    return error is None


def moves_line(summary: SynthSummary, plan: SynthPlan, previous_ref: promotion.GoldenLine | None) -> bool:
    """Whether synth's own line moves to the summary's version: not on a failed run, and not when the
    version is the line's head already (up to date). The chosen line is never moved by synth."""
    if summary.status == "failed":
        return False
    return not (plan.up_to_date and previous_ref.golden_set_id == summary.golden_set_id)
