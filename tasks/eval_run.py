"""The decisions of one eval run, outside Prefect: the golden set and index it reads, the prompts and
models it preflights, the chain it describes and caches under, when a stored run is reused, its rows,
aggregates, lineage and gate, the summary it returns, and whether it is promoted (pure but for the
lake reads and writes each docstring names)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import pyarrow as pa
from pydantic import ConfigDict, Field

from ragloop.tasks import calibration, evaluation, gating, monitoring, promotion, schemas, targets
from ragloop.tasks.indexing import check_probe
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.llm import LLMConfigError, LLMUnavailable
from ragloop.tasks.metrics import scored_metrics
from ragloop.tasks.prompts import Prompt, PromptError, load_prompt_set
from ragloop.tasks.retrieval import Retriever, doc_ranking
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import ConfigError, EvalConfig, GateConfig, LLMConfig, Settings
from ragloop.tasks.storage import Lake, chunks_table_name
from ragloop.tasks.summaries import StageSummary

QUERY_BATCH = 256  # questions per call of each chain step


# -- the summary -------------------------------------------------------------------------------------
class EvalSummary(StageSummary):
    """What evaluate-chain returns (and records as its run's outputs). A reused run returns its stored
    summary, with `cached` and the fields it was recorded with; fields newer than such a run are
    optional and left out of the dump when the run lacks them (dump with exclude_unset=True)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # a reused run recorded by another version keeps its keys

    run_id: str = Field(description="the eval run (when cached: the reused run)")
    status: Literal["ok", "partial", "failed", "gate_failed", "gate_inconclusive"] = Field(
        description="from the gate verdict and failed items (tasks.gating.run_status); gate_* exit 3")
    lineage: dict[str, Any] = Field(
        description="what produced the run: code, config, index build, golden set, table, prompts, models, "
                    "chain and chain_hash, eval_cache_key")
    lake: str = Field(description="the lake URI")
    golden_set_id: str = Field(description="the golden-set version scored")
    metrics: dict[str, float] = Field(description="metric -> mean over the items that carry it")
    ci: dict[str, list[float]] = Field(description="metric -> [low, high] bootstrap CI of the mean")
    n: dict[str, int] = Field(description="metric -> items it was measured on")
    by_type: dict[str, dict[str, Any]] = Field(description="qa_type -> {n, metrics, ci}, as overall")
    items: dict[str, Any] = Field(description="{total, failed, by_type: {qa_type: items}, by_review: {synthetic | "
                                              "approved | edited | imported: items}, errors: {reason: items} (when "
                                              "items failed: the 5 commonest reasons)}: how much of the score rests "
                                              "on items a person checked")
    failed_judgments: dict[str, int] = Field(description="metric -> items whose judgment failed (counted, not NaN)")
    answers: dict[str, Any] = Field(
        description="{total, refused, ungrounded, degenerate, degenerate_by_reason: {reason: n}} over answered items")
    stale_references: dict[str, Any] | None = Field(
        None, description="{items, references, qa_ids (first few)} referencing chunks/documents the index lost")
    budgets: dict[str, Any] | None = Field(
        None, description="{items, item_latency_p50_s, item_latency_p95_s, tokens, tokens_per_item, cost}")
    gate: dict[str, Any] = Field(
        description="the gate's verdict (tasks.gating.check_gate): {status, reasons, warnings, power, ...}")
    golden_line: str | None = Field(None, description="the golden-set line, None for a version outside any line")
    index: dict[str, Any] | None = Field(None, description="{role: serving | candidate, table, version} scored on")
    baseline_run_id: str | None = Field(description="the baseline compared with; None when not compared")
    baseline_golden_set_id: str | None = Field(None, description="the baseline's golden set; None when not compared")
    deltas: dict[str, dict[str, Any]] | None = Field(
        description="metric -> paired {baseline, candidate, delta, ci, n, sd}; None when not compared")
    results: dict[str, str] = Field(description="{items, traces}: the Parquet paths in the lake")
    timings_s: dict[str, float] = Field(description="step -> wall seconds (rewrite, retrieve, ..., gate)")
    promotion: dict[str, Any] | None = Field(
        None, description="{promoted, reason, mode, line, serving_moved: {from, to} | None}")
    promoted: bool | None = Field(None, description="whether this run became its line's baseline")
    prefect_flow_run_id: str | None = Field(None, description="set on a reused run: the flow run that recorded it")
    cached: bool | None = Field(None, description="True when a stored run with the same inputs was reused")
    estimates: dict[str, dict[str, Any]] | None = Field(
        None, description="verdict metric -> share of answers people would pass: {threshold, judge, human, ppi: "
                          "{estimate, ci, width}, n_labelled, n_unlabelled, confidence} (tasks.calibration.run_estimates)")
    target: dict[str, Any] | None = Field(
        None, description="the eval target that answered, when not the built-in chain (tasks.targets.target_identity)")
    contexts: dict[str, int] | None = Field(
        None, description="a target's contexts by how they were matched to chunks: {total, id, exact, normalized, "
                          "unmatched} (tasks.targets.context_counts)")
    llm_cache: dict[str, Any] | None = Field(
        None, description="the LLM call cache (tasks.llm_cache.cache_report): {enabled, hits, misses, uncacheable, "
                          "stored, errors, tokens_saved, seconds_saved, by_role: {llm, judge}} or {enabled: false, reason}")

    def with_promotion(self, outcome: Mapping) -> "EvalSummary":
        """This summary with a promotion outcome (promotion and promoted set)."""
        self.promotion = dict(outcome)
        self.promoted = outcome["promoted"]
        return self


# -- what the run reads --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldenChoice:
    golden_set_id: str
    line: str | None  # the line it is the head (or a past version) of; None outside any line

    @property
    def line_key(self) -> str:
        """The key of the line's baseline: the line, or `id:<golden_set_id>` outside any line."""
        return self.line or f"id:{self.golden_set_id}"


def resolve_golden(refs: promotion.Refs, spec: str) -> GoldenChoice:
    """The golden set `spec` names ('latest' = the chosen line, a line, an id or unique prefix).
    Raises ConfigError naming the sets the lake has."""
    golden_set_id, line = refs.resolve_golden(spec, refs.lake.list_golden())
    if golden_set_id is None:
        lines = ", ".join(sorted(refs.lines().lines)) or "none"
        raise ConfigError(f"--golden {spec}: no such golden set or line in {refs.lake.uri} (lines: {lines}; "
                          f"golden sets: {', '.join(refs.lake.list_golden()) or 'none'}); run synth, golden import or "
                          "import-beir")
    return GoldenChoice(golden_set_id, line)


def pick_index(refs: promotion.Refs, embedder_slug: str, which: str) -> tuple[promotion.ServingRef, str]:
    """(ref, role) of the index to score (tasks.promotion.pick_index); ConfigError when none fits."""
    try:
        return promotion.pick_index(refs.serving(), refs.candidate(), chunks_table_name(embedder_slug), which)
    except promotion.PromotionError as exc:
        raise ConfigError(str(exc)) from exc


def active_items(lake: Lake, golden_set_id: str) -> list[dict]:
    """The golden set's active items, in stored order; ConfigError when it has none."""
    items = [i for i in lake.read_golden(golden_set_id).to_pylist() if i["status"] == "active"]
    if not items:
        raise ConfigError(f"golden set {golden_set_id} has no active items")
    return items


DEFAULT_FUSION = ("rrf", 60)


def fusion(config: EvalConfig) -> tuple[str, float]:
    """The hybrid fusion the retriever applies: ("rrf", rrf_k) or ("linear", fusion_weight)."""
    return ("rrf", config.rrf_k) if config.fusion == "rrf" else ("linear", config.fusion_weight)


def rerank_depth(config: EvalConfig) -> int:
    """Candidates per hit the retriever reranks by embedding (0 = no rerank)."""
    return config.rerank_depth if config.rerank == "embedding" else 0


# -- prompts and models ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainModels:
    """The prompts and models the chain under test uses; None where the chain has no such step."""

    rewrite: Prompt | None
    answer: Prompt | None
    llm: Any = None
    judge: Any = None

    @property
    def prompts(self) -> dict[str, Prompt]:
        """name -> prompt, in chain order (rewrite, answer)."""
        return {p.name: p for p in (self.rewrite, self.answer) if p is not None}

    @property
    def judge_id(self) -> str | None:
        return self.judge.model_id if self.judge else None


def wanted_prompts(config: EvalConfig, retrieval_only: bool) -> list[str]:
    """The prompt names the chain renders: the rewrite prompt (if any), then the answer prompt (unless
    retrieval-only); none when an eval target answers."""
    if config.target is not None:
        return []
    return ([config.rewrite_prompt] if config.rewrite_prompt else []) + ([] if retrieval_only else [config.answer_prompt])


def select_prompts(wanted: Sequence[str], prompts_dir) -> dict[str, Prompt]:
    """The wanted prompts from the prompt set (tasks.prompts.load_prompt_set); ConfigError on an invalid
    set or a missing name."""
    try:
        available = load_prompt_set(prompts_dir)
    except PromptError as exc:
        raise ConfigError(str(exc)) from exc
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ConfigError(f"eval: prompt(s) {missing} not found in {prompts_dir}")
    return {w: available[w] for w in wanted}


def largest_prompt_tokens(prompts: Mapping[str, Prompt], items: Sequence[Mapping], llm, longest_chunks: list[str]) -> int:
    """Tokens of the largest prompt the run can send (plus its reply budget): the longest question
    with the k longest chunks of the table as context."""
    longest = max(items, key=lambda i: len(i["question"]))["question"]
    sizes = []
    for prompt in prompts.values():
        variables = {"question": longest}
        if "contexts" in prompt.input_variables:
            variables["contexts"] = longest_chunks
        text = "\n".join(m["content"] for m in prompt.render(**variables))
        sizes.append(llm.count_tokens(text) + int(prompt.params.get("max_tokens", 256)))
    return max(sizes)


def prepare_models(config: EvalConfig, llm_config: LLMConfig, prompts_dir, retrieval_only: bool,
                   items: Sequence[Mapping], retriever, models) -> ChainModels:
    """Load the chain's prompts and build its LLM and judge from `models` (tasks.providers.Providers),
    each preflighted before any work: the endpoint answers and the largest prompt fits its window.
    No prompt, no LLM; no judge configured or retrieval-only, no judge. Raises ConfigError."""
    wanted = wanted_prompts(config, retrieval_only)
    prompts, llm = {}, None
    if wanted:
        prompts = select_prompts(wanted, prompts_dir)
        llm = models.build_llm(llm_config)
        try:
            llm.preflight(largest_prompt_tokens(prompts, items, llm, retriever.longest_texts(config.k)))
        except (PromptError, LLMUnavailable, LLMConfigError) as exc:
            raise ConfigError(str(exc)) from exc
    judge = None
    if config.judge is not None and not retrieval_only:
        judge = models.build_judge(config.judge)
        try:
            judge.preflight(4 * config.judge_max_tokens)  # ragas' prompts carry schemas and examples
        except (LLMUnavailable, LLMConfigError) as exc:
            raise ConfigError(f"eval.judge: {exc}") from exc
    return ChainModels(rewrite=prompts.get(config.rewrite_prompt or ""),
                       answer=None if retrieval_only else prompts.get(config.answer_prompt), llm=llm, judge=judge)


# -- the chain and its cache key ------------------------------------------------------------------------
def _prompt_ref(prompt: Prompt | None) -> dict | None:
    return {"name": prompt.name, "prompt_hash": prompt.prompt_hash} if prompt else None


def describe_chain(config: EvalConfig, models: ChainModels, retrieval_only: bool, target=None,
                   ann: Mapping | None = None) -> dict:
    """The chain under test as the lineage records it (its canonical hash is the chain_hash); with an eval
    target (tasks.targets.Target), the target's (tasks.targets.describe_target_chain). `ann`: what the
    vector search does with the table's ANN index (Retriever.ann_search; None = exact search)."""
    if target is not None:
        return targets.describe_target_chain(target.identity, config.k, config.min_grounding, retrieval_only)
    return {
        "rewrite": _prompt_ref(models.rewrite),
        "retrieval": config.retrieval, "k": config.k, "exact": config.exact,
        "rerank": {"kind": config.rerank, "depth": config.rerank_depth} if config.rerank != "none" else None,
        "guardrail": None if retrieval_only else {"refuse_below": config.refuse_below, "min_grounding": config.min_grounding},
        "answer": None if retrieval_only else _prompt_ref(models.answer),
        "llm": models.llm.model_id if models.llm else None,
        # only when hybrid with a non-default fusion, so the chain hashes of runs recorded before it still hold
        **({"fusion": list(fusion(config))} if config.retrieval == "hybrid" and fusion(config) != DEFAULT_FUSION else {}),
        # only where a vector search used an ANN index (whatever its knobs: the search before eval.ann
        # existed was another one), so the chains of exact searches, every table below
        # index.ann_min_rows, keep their hashes
        **({"ann": dict(ann)} if ann and config.retrieval in ("vector", "hybrid") else {}),
    }


def eval_cache_key(golden_set_id: str, serving: promotion.ServingRef, chain: Mapping, models: ChainModels,
                   embedder_weights_sha256: str, settings: Settings, calibrations: Mapping[str, str] | None = None) -> str:
    """Everything the metrics and the verdict depend on: equal key -> equal deterministic metrics
    (seeded bootstrap, seeded LLM) and gate, so a run with this key can be reused instead of recomputed.
    calibrations: judge_id -> its newest calibration_id (a new `ragloop calibrate` can change which
    judges may gate, so it makes the next eval score again rather than reuse a stale verdict)."""
    return canonical_hash({
        "calibrations": dict(sorted((calibrations or {}).items())),
        "golden_set_id": golden_set_id, "table": [serving.table, serving.version], "chain": chain,
        "prompts": {p.name: p.prompt_hash for p in models.prompts.values()}, "judge": models.judge_id,
        "embedder": embedder_weights_sha256,
        # eval.target's default (builtin) is left out, so the keys of runs recorded before it existed still hold
        "eval": settings.eval.model_dump(mode="json", exclude=_default_eval_fields(settings.eval)),
        "gate": settings.gate.model_dump(mode="json"),
    })


def _default_eval_fields(config: EvalConfig) -> set[str]:
    """Eval settings left out of the cache key at their defaults, so runs recorded before they existed keep
    their keys: target (builtin) and the hybrid fusion (rrf, 60; its other knobs). eval.ann is always left
    out: the chain carries it exactly where it acts (a search that used an ANN index)."""
    left_out = {"target", "ann"} if config.target is None else {"ann"}
    if fusion(config) == DEFAULT_FUSION:
        left_out |= {"fusion", "rrf_k", "fusion_weight"}
    elif config.fusion == "rrf":
        left_out.add("fusion_weight")
    else:
        left_out.add("rrf_k")
    return left_out


def cache_ref(cache_key: str) -> str:
    """The lake ref naming the run scored under this cache key."""
    return f"eval_cache__{cache_key[:32]}"


# -- reuse -----------------------------------------------------------------------------------------------
def reusable(record: Mapping | None, baseline: promotion.Promotion | None, gated: bool = False) -> bool:
    """A stored run can stand in for a new one if it finished (ok or partial; with `gated` also
    gate_failed or gate_inconclusive, for a bake-off's cells) and its verdict still holds: the line's
    baseline is the one it was gated against, or the run itself."""
    if not record or record["status"] not in (("ok", "partial") + (("gate_failed", "gate_inconclusive") if gated else ())):
        return False
    current = baseline.run_id if baseline else None
    return current in (record["run_id"], record["outputs"].get("baseline_run_id"))


@dataclass
class Reuse:
    summary: EvalSummary  # the stored run's summary, marked cached
    promote: bool  # the promotion rule still applies: asked to promote, and not the baseline yet


def reuse_of(record: Mapping, baseline: promotion.Promotion | None, line_key: str, mode: str | None) -> Reuse:
    """The summary a reused run returns. A run that is already its line's baseline says so (in
    promotion.reason and first among the gate's warnings) instead of repeating its first verdict."""
    summary = EvalSummary.model_validate({"run_id": record["run_id"], "status": record["status"],
                                          "lineage": record["lineage"], **record["outputs"], "cached": True})
    is_baseline = baseline is not None and baseline.run_id == record["run_id"]
    if mode and not is_baseline:
        return Reuse(summary, promote=True)
    if is_baseline:
        summary.with_promotion({**(summary.promotion or {}), "promoted": False,
                                "reason": f"reused run {record['run_id']} is already the baseline of line {line_key}"})
        summary.gate = {**summary.gate, "warnings": [f"verdict of the reused run when it ran ({summary.gate['status']})"]
                        + summary.gate.get("warnings", [])}
    return Reuse(summary, promote=False)


def find_reuse(lake: Lake, cache_key: str, baseline: promotion.Promotion | None, line_key: str,
               mode: str | None, gated: bool = False) -> Reuse | None:
    """The stored run scored under this cache key, if `reusable` (reads its cache ref and run record)."""
    cached = lake.read_ref(cache_ref(cache_key))
    record = lake.read_run(cached["run_id"]) if cached else None
    return reuse_of(record, baseline, line_key, mode) if reusable(record, baseline, gated) else None


# -- scoring -------------------------------------------------------------------------------------------
def batches(items: Sequence[Mapping], size: int = QUERY_BATCH) -> Iterator[tuple[list[str], list[str]]]:
    """(qa_ids, questions) per batch of `size` items, in order."""
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        yield [i["qa_id"] for i in batch], [i["question"] for i in batch]


def prepend_traces(results: Sequence, traces: Sequence[dict]) -> None:
    """Put each result's earlier-step trace (e.g. its rewrite) first among its traces (in place)."""
    for result, t in zip(results, traces):
        result.traces.insert(0, t)


def stale_warning(stale: Mapping[str, Sequence[str]], total: int, serving: promotion.ServingRef) -> str | None:
    """The log line for items referencing chunks or documents the index no longer holds (None if none)."""
    if not stale:
        return None
    return (f"{len(stale)} of {total} items reference chunks or documents no longer in {serving.table} "
            f"v{serving.version}: left out of the IR metrics at that level (stale_references)")


@dataclass(frozen=True)
class RetrievalScores:
    items: list[dict]  # the items as IR scoring and the judge see them: a level with a vanished reference dropped
    doc_rank: dict[str, list[str]]  # qa_id -> documents in the order of their best hit
    per_item: dict[str, dict[str, float]]  # qa_id -> IR metrics; {} for an item whose retrieval failed


def score_retrieval(items: Sequence[Mapping], results: Sequence, stale: Mapping[str, Sequence[str]],
                    config: EvalConfig) -> RetrievalScores:
    """IR metrics per item at document and chunk level, at the configured cutoffs up to k. An item
    without a ranking (its retrieval failed) is failed and counted, not scored as a miss."""
    doc_rank = {r.qa_id: doc_ranking(r.hits) for r in results}
    chunk_rank = {r.qa_id: [h.chunk_id for h in r.hits] for r in results}
    scored = [evaluation.without_stale_references(i, stale.get(i["qa_id"])) for i in items]
    per_item = evaluation.ir_item_metrics(scored, doc_rank, chunk_rank, evaluation.cutoffs(config, config.k))
    for r in results:
        if r.retrieval_failed:
            per_item[r.qa_id] = {}
    return RetrievalScores(scored, doc_rank, per_item)


def judge_items(scorer, items: Sequence[Mapping], results: Sequence, on_done: Callable[[], None] | None = None) -> list:
    """ragas metrics per item (tasks.ragas_metrics.RagasScorer); a judge failure is recorded on the item,
    never raised. on_done() once per item scored (progress)."""
    judged = []
    for item, r in zip(items, results):
        judged.append(scorer.score(item, [h.chunk_id for h in r.hits], [h.text for h in r.hits], r.answer, r.refused))
        if on_done is not None:
            on_done()
    return judged


@dataclass(frozen=True)
class ItemRows:
    rows: list[dict]  # one per item, shaped like schemas.EVAL_ITEMS but `metrics` a dict
    traces: list[dict]  # every step of every item, in item order


def item_rows(items: Sequence[Mapping], results: Sequence, judged: Sequence, scores: RetrievalScores,
              stale: Mapping[str, Sequence[str]]) -> ItemRows:
    """Per-item rows: retrieved ids and scores, the answer and its checks, IR + answer + judged metrics.
    An item is failed when its chain step or any judgment failed (the errors joined in `error`)."""
    rows, traces = [], []
    for item, result, scored in zip(items, results, judged):
        errors = ([result.error] if result.error else []) + [f"{m}: {why}" for m, why in scored.failed.items()]
        rows.append({
            "qa_id": item["qa_id"], "qa_type": item["qa_type"], "question": item["question"],
            "status": "failed" if errors else "ok", "error": "; ".join(errors) or None,
            "retrieved_chunk_ids": [h.chunk_id for h in result.hits], "retrieved_doc_ids": scores.doc_rank[item["qa_id"]],
            "retrieval_scores": [None if h.score is None else float(h.score) for h in result.hits],
            "answer": result.answer,
            "refused": result.refused, "grounded": result.grounded, "degenerate": result.degenerate,
            "relevance": result.relevance,
            "metrics": {**scores.per_item[item["qa_id"]], **scored_metrics(item, result), **scored.metrics},
            "failed_metrics": sorted(scored.failed),
            "stale_references": stale.get(item["qa_id"], []),
        })
        traces.extend(result.traces)
    return ItemRows(rows, traces)


@dataclass(frozen=True)
class Aggregates:
    metrics: dict[str, float]  # metric -> mean
    ci: dict[str, list[float]]  # metric -> [low, high]
    n: dict[str, int]  # metric -> items measured
    by_type: dict[str, dict]  # qa_type -> {n, metrics, ci}, types sorted


def aggregate_rows(rows: Sequence[Mapping], config: EvalConfig) -> Aggregates:
    """Means with bootstrap CIs overall and per question type (tasks.evaluation.aggregate)."""
    names = evaluation.metric_names(rows)
    metrics, ci, counts = evaluation.aggregate(rows, names, config)
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["qa_type"]].append(row)
    by_type = {}
    for qa_type, group in sorted(grouped.items()):
        means, cis, _ = evaluation.aggregate(group, names, config)
        by_type[qa_type] = {"n": len(group), "metrics": means, "ci": cis}
    return Aggregates(metrics, ci, counts, by_type)


def write_results(lake: Lake, run_id: str, scored: ItemRows) -> dict[str, str]:
    """Write the run's items and traces to the lake; returns their paths {items, traces}."""
    items = pa.Table.from_pylist([{**r, "metrics": list(r["metrics"].items())} for r in scored.rows],
                                 schema=schemas.EVAL_ITEMS)
    return lake.write_eval(run_id, items, pa.Table.from_pylist(scored.traces, schema=schemas.TRACES))


def record_prompts(lake: Lake, models: ChainModels) -> None:
    """Register the prompt versions the run used (tasks.storage.Lake.record_prompt)."""
    for prompt in models.prompts.values():
        lake.record_prompt(prompt.name, prompt.prompt_hash, prompt.text)


# -- lineage ------------------------------------------------------------------------------------------
INDEX_LINEAGE_KEYS = ("snapshot_id", "chunker_hash", "chunker", "embedder", "ann_index")


def index_lineage(lake: Lake, serving: promotion.ServingRef) -> dict:
    """The lineage of the index run that built the scored table version ({} when unknown)."""
    index_run = lake.read_run(serving.run_id) if serving.run_id else None
    return (index_run or {}).get("lineage", {})


def run_lineage(built_from: Mapping, golden: GoldenChoice, serving: promotion.ServingRef, role: str,
                models: ChainModels, embedder, chain: Mapping, retrieval_only: bool,
                judges: Mapping[str, Mapping] | None = None) -> dict:
    """The eval's lineage entries, in order: what the table was built from (snapshot, chunker, embedder, ANN index,
    from `built_from`, the index run's lineage), then the golden set, table, prompts, models and chain."""
    return {
        **{k: built_from[k] for k in INDEX_LINEAGE_KEYS if k in built_from},
        "golden_set_id": golden.golden_set_id,
        "golden_line": golden.line,
        "table": {"name": serving.table, "version": serving.version},
        "index_role": role,
        "index_run_id": serving.run_id,
        "prompts": {p.name: p.prompt_hash for p in models.prompts.values()},
        "models": {"embedder": embedder.name, "embedder_weights_sha256": embedder.weights_sha256,
                   "llm": models.llm.model_id if models.llm else None, "judge": models.judge_id},
        "chain": dict(chain),
        "chain_hash": canonical_hash(chain),
        "judge": models.judge_id,
        "retrieval_only": retrieval_only,
        **({"judges": dict(judges)} if judges else {}),
    }


# -- the gate ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineRun:
    """What the gate needs of the line's baseline run."""

    record: promotion.Promotion | None  # None: no baseline on the line yet
    rows: list[dict]  # its items as {qa_id, metrics: {name: value}}
    has_items: bool  # its items are still stored
    budgets: dict | None  # its budget figures (monitoring.budget_figures)


def load_baseline(lake: Lake, baseline: promotion.Promotion | None) -> BaselineRun:
    """Read the baseline run's items and budget figures from the lake."""
    if baseline is None:
        return BaselineRun(None, [], False, None)
    items = lake.read_eval_items(baseline.run_id)
    rows = [{"qa_id": r["qa_id"], "metrics": dict(r["metrics"])} for r in items.to_pylist()] if items else []
    budgets = ((lake.read_run(baseline.run_id) or {}).get("outputs") or {}).get("budgets")
    return BaselineRun(baseline, rows, items is not None, budgets)


@dataclass(frozen=True)
class GateAssessment:
    gate: dict  # tasks.gating.check_gate's verdict
    deltas: dict | None  # paired deltas; None when not compared
    budgets: dict  # this run's cost and latency figures
    baseline_run_id: str | None  # the baseline compared with (None when not compared)
    baseline_golden_set_id: str | None


def assess_gate(base: BaselineRun, rows: Sequence[Mapping], traces: Sequence[Mapping], metrics: Mapping[str, float],
                chain: Mapping, line_key: str, config: EvalConfig, gate_config: GateConfig,
                price_per_1k_tokens: float, calibration: Mapping[str, Mapping] | None = None) -> GateAssessment:
    """The gate against the line's baseline: compared on the questions both runs scored when they share
    enough of them (gate.min_baseline_overlap), with paired deltas, floors, the failed fraction and the
    budgets; a baseline of another chain is compared on what both measured, with a warning naming the
    differences first. `calibration` (tasks.calibration.gate_calibration) names the judged metrics and
    whether their judge is calibrated: the others are reported, not gated, and the gate says why."""
    baseline = base.record
    calibration = {m: dict(c) for m, c in (calibration or {}).items()}
    shared = len({r["qa_id"] for r in base.rows} & {r["qa_id"] for r in rows})
    no_baseline = gating.baseline_problem(baseline and baseline.run_id, base.has_items, shared, len(rows),
                                          gate_config.min_baseline_overlap, line_key)
    deltas = None if no_baseline else gating.paired_deltas(
        base.rows, rows, config.bootstrap_resamples, config.confidence, config.seed)
    budgets = monitoring.budget_figures(traces, len(rows), price_per_1k_tokens)
    failed = sum(1 for r in rows if r["status"] == "failed")
    gate = gating.check_gate(metrics, deltas, failed, len(rows), gate_config, config.confidence,
                             None if no_baseline else gating.unpaired_metrics(base.rows, rows), no_baseline,
                             gating.check_budgets(budgets, base.budgets, gate_config.budgets),
                             {m: c["reason"] for m, c in calibration.items() if not c["gated"]})
    gate["calibration"] = calibration
    if deltas is not None and baseline.chain_hash != canonical_hash(chain):
        gate["warnings"].insert(0, "the baseline ran another chain, compared on what both measured: "
                                + "; ".join(gating.chain_differences(baseline.chain, chain)))
    compared = baseline if deltas is not None else None
    return GateAssessment(gate, deltas, budgets, compared and compared.run_id, compared and compared.golden_set_id)


# -- the summary and promotion ------------------------------------------------------------------------------
def item_errors(rows: Sequence[Mapping], limit: int = 5) -> dict[str, int]:
    """The most common reasons items failed, {reason (first 160 characters): count}, so a run whose items
    fail says why without reading items.parquet."""
    reasons = Counter(str(r.get("error") or "unknown")[:160] for r in rows if r["status"] == "failed")
    return dict(reasons.most_common(limit))


def summarize(run_id: str, lineage: Mapping, lake_uri: str, golden: GoldenChoice, aggregates: Aggregates,
              scored: ItemRows, stale: Mapping[str, Sequence[str]], assessment: GateAssessment,
              serving: promotion.ServingRef, role: str, paths: Mapping[str, str], timings_s: Mapping[str, float],
              on_inconclusive: str, estimates: Mapping[str, dict] | None = None,
              reviews: Mapping[str, int] | None = None, target: Mapping[str, Any] | None = None) -> EvalSummary:
    """The run's summary before promotion: counts of items (by type, and by review: how many a person
    approved or edited), failed judgments and answers, the gate and its status (tasks.gating.run_status).
    target: {target, contexts} of an eval target's run (tasks.targets.Target.summary); None for the built-in chain."""
    rows = scored.rows
    failed = sum(1 for r in rows if r["status"] == "failed")
    answered = [r for r in rows if r["answer"] is not None]
    return EvalSummary(
        run_id=run_id,
        status=gating.run_status(assessment.gate["status"], on_inconclusive, failed, len(rows)),
        lineage=dict(lineage),
        lake=lake_uri,
        golden_set_id=golden.golden_set_id,
        metrics=aggregates.metrics,
        ci=aggregates.ci,
        n=aggregates.n,
        by_type=aggregates.by_type,
        items={"total": len(rows), "failed": failed, "by_type": dict(Counter(r["qa_type"] for r in rows)),
               "by_review": dict(sorted((reviews or {}).items())), **({"errors": item_errors(rows)} if failed else {})},
        failed_judgments=dict(sorted(Counter(m for r in rows for m in r["failed_metrics"]).items())),
        answers={"total": len(answered), "refused": sum(1 for r in answered if r["refused"]),
                 "ungrounded": sum(1 for r in answered if r["grounded"] is False),
                 "degenerate": sum(1 for r in answered if r["degenerate"]),
                 "degenerate_by_reason": dict(sorted(Counter(r["degenerate"] for r in answered if r["degenerate"]).items()))},
        stale_references=evaluation.stale_summary(stale),
        budgets=assessment.budgets,
        gate=assessment.gate,
        golden_line=golden.line,
        index={"role": role, "table": serving.table, "version": serving.version},
        baseline_run_id=assessment.baseline_run_id,
        baseline_golden_set_id=assessment.baseline_golden_set_id,
        deltas=assessment.deltas,
        results=dict(paths),
        timings_s=dict(timings_s),
        **({"estimates": dict(estimates)} if estimates else {}),
        **(dict(target) if target else {}),
    )


@dataclass(frozen=True)
class PromotionPlan:
    outcome: dict  # {promoted, reason, mode, line, serving_moved (None until applied)}
    record: promotion.Promotion | None  # the baseline record to write; None when not promoted
    candidate_evaluated: bool  # scored on the candidate index: promoting it serves that version


def plan_promotion(summary: EvalSummary, line: str, mode: str | None, on_inconclusive: str, role: str) -> PromotionPlan:
    """Apply the promotion rule (tasks.promotion.promotion_decision) to a scored run."""
    verdict = summary.gate["status"]
    ok, reason = promotion.promotion_decision(verdict, mode, on_inconclusive)
    if summary.status == "failed":  # every item failed: nothing was measured, whatever the gate's rules allowed
        ok, reason = False, "every item failed: nothing measured to promote"
    elif ok and summary.lineage.get("index_role", role) == "bakeoff":
        ok, reason = False, promotion.BAKEOFF_TABLE_NOT_SERVED
    outcome = {"promoted": ok, "reason": reason, "mode": mode or "experiment", "line": line, "serving_moved": None}
    if not ok:
        return PromotionPlan(outcome, None, False)
    lineage = summary.lineage
    record = promotion.Promotion(
        run_id=summary.run_id, golden_set_id=summary.golden_set_id, line=line, table=lineage["table"],
        prompts=lineage.get("prompts") or {}, chain=lineage.get("chain"), chain_hash=lineage.get("chain_hash"),
        metrics=summary.metrics, verdict=verdict, mode=mode, promoted_at=utcnow().isoformat(),
        index_run_id=lineage.get("index_run_id"), chunker_hash=lineage.get("chunker_hash"))
    return PromotionPlan(outcome, record, lineage.get("index_role", role) == "candidate")


def apply_promotion(refs: promotion.Refs, plan: PromotionPlan) -> dict:
    """Write the plan's promotion (baseline, history, serving move); returns the outcome
    {promoted, reason, mode, line, serving_moved}. Writes nothing when not promoted."""
    outcome = dict(plan.outcome)
    if plan.record is not None:
        outcome.update(refs.promote(plan.record, candidate_evaluated=plan.candidate_evaluated))
    return outcome


def promotion_log(run_id: str, outcome: Mapping) -> tuple[int, str]:
    """(logging level, message) for a promotion outcome."""
    if not outcome["promoted"]:
        return logging.WARNING, f"not promoted: {outcome['reason']}; serving, baseline and prompts stay where they were"
    moved = f"; serving moved to {outcome['serving_moved']['to']}" if outcome["serving_moved"] else ""
    return logging.INFO, f"promoted run {run_id} as the baseline of line {outcome['line']} ({outcome['reason']}){moved}"


# -- the run's two halves around the chain (the flow runs the chain and the judge between them) ----------
@dataclass
class EvalPlan:
    """What an eval run is made of, resolved before any item runs (plan_eval)."""

    refs: promotion.Refs
    chosen: GoldenChoice
    embedder: Any
    serving: promotion.ServingRef
    role: str  # serving | candidate
    items: list[dict]
    retriever: Retriever
    stale: dict[str, list[str]]  # qa_id -> references no longer in the table
    models: ChainModels
    chain: dict
    baseline: promotion.Promotion | None
    cache_key: str
    target: Any = None  # tasks.targets.Target when an eval target answers; None: the built-in chain
    llm_cache_off: str | None = None  # why the LLM call cache is not used (None: it is)

    @property
    def reusable(self) -> bool:
        """Whether a stored run with the same cache key may stand for this one (tasks.targets.Target.reusable)."""
        return self.target is None or self.target.reusable


def cached_models(lake: Lake, settings: Settings, models: ChainModels, use_cache: bool) -> tuple[ChainModels, str | None]:
    """The chain's LLM and judge behind the lake's LLM call cache (tasks.llm_cache) where their config says
    `cache: true` and `use_cache` (False: --no-cache); returns (models, why the cache is off or None)."""
    from dataclasses import replace

    from ragloop.tasks import llm_cache

    judge_config = settings.eval.judge
    llm, judge, cache = llm_cache.cache_llms(lake, models.llm, settings.llm, models.judge, judge_config, use_cache)
    if cache is None:
        return models, "--no-cache" if not use_cache else "llm.cache: false" if models.llm or models.judge else None
    return replace(models, llm=llm, judge=judge), None


def bakeoff_index(table: Mapping, embedder_slug: str) -> tuple[promotion.ServingRef, str]:
    """(ref, "bakeoff") for a bake-off's table {table, version, run_id, chunker_hash}; ConfigError when the
    table is not one of this embedder's (its vectors would not match the questions')."""
    ref = promotion.ServingRef.model_validate(dict(table))
    if not ref.table.startswith(chunks_table_name(embedder_slug) + "__"):
        raise ConfigError(f"eval: table {ref.table} is not a bake-off table of embedder {embedder_slug}")
    return ref, "bakeoff"


def remote_models(settings: Settings, models: ChainModels, providers, remote) -> ChainModels:
    """The chain's LLM and judge with their completions on workers (tasks.llm_remote.RemoteLLM over `remote`,
    the Dask runner's batch map; built there by the providers' llm factory from their configs); `models`
    itself when `remote` is None (the local runner)."""
    from dataclasses import replace

    from ragloop.tasks.llm_remote import on_workers

    if remote is None:
        return models
    return replace(models, llm=on_workers(models.llm, settings.llm, providers.llm, remote),
                   judge=on_workers(models.judge, settings.eval.judge, providers.llm, remote))


def plan_eval(lake: Lake, settings: Settings, golden: str, index: str, retrieval_only: bool, providers,
              use_llm_cache: bool = True, table: Mapping | None = None, remote=None) -> EvalPlan:
    """Resolve the golden set, the index version, the active items, the chain's models (preflighted, behind
    the LLM call cache unless `use_llm_cache` is False or the config turns it off; their misses computed on
    workers through `remote`, tasks.llm_remote.BatchMap, when given) and the cache key.
    `table`: a bake-off's table to score instead of the served or candidate index (bakeoff_index).
    Raises ConfigError (exit 2) for a missing golden set, index, prompt or endpoint.
    `providers`: tasks.providers.Providers (the embedder, LLM and judge come from it)."""
    config = settings.eval
    refs = promotion.Refs(lake)
    chosen = resolve_golden(refs, golden)
    embedder = providers.build_embedder(settings.embedding)
    serving, role = bakeoff_index(table, embedder.slug) if table else pick_index(refs, embedder.slug, index)
    check_probe(lake, serving.table, embedder, record=False)  # an endpoint still serving the table's weights
    items = active_items(lake, chosen.golden_set_id)
    retriever = Retriever(lake, serving.table, serving.version, embedder, exact=config.exact,
                          rerank_depth=rerank_depth(config), fusion=fusion(config), ann=config.ann)
    stale = evaluation.check_references(items, *retriever.catalog())
    target = targets.prepare_target(config.target, retriever) if config.target is not None else None
    models = prepare_models(config, settings.llm, settings.prompts_dir, retrieval_only, items, retriever, providers)
    chain = describe_chain(config, models, retrieval_only, target, retriever.ann_search())
    stored = calibration.latest_calibrations(lake.read_calibrations().to_pylist())
    cache_key = eval_cache_key(chosen.golden_set_id, serving, chain, models, embedder.weights_sha256, settings,
                               {judge: row["calibration_id"] for judge, row in stored.items()})
    models, cache_off = cached_models(lake, settings, remote_models(settings, models, providers, remote), use_llm_cache)
    return EvalPlan(refs, chosen, embedder, serving, role, items, retriever, stale, models, chain,
                    refs.baseline(chosen.line_key), cache_key, target, cache_off)


def conclude(lake: Lake, run, plan: EvalPlan, scored: ItemRows, aggregates: Aggregates, timer, settings: Settings,
             retrieval_only: bool) -> EvalSummary:
    """After scoring: write the items and traces, complete the run's lineage (index build, judges' identities,
    cache key), record the prompts, assess the gate (timed as `gate`) and build the summary (not yet promoted).
    `run`: flows.common.RunRecorder (run_id, lineage); `timer`: flows.common.StageTimer."""
    from ragloop.tasks import calibration

    config, gate_config, embedder = settings.eval, settings.gate, plan.embedder
    paths = write_results(lake, run.run_id, scored)
    judges = calibration.judge_identities(aggregates.metrics, config, plan.models.judge_id, embedder.name,
                                          embedder.weights_sha256)
    run.lineage.update(run_lineage(index_lineage(lake, plan.serving), plan.chosen, plan.serving, plan.role, plan.models,
                                   embedder, plan.chain, retrieval_only, judges))
    if plan.target is not None:
        run.lineage["target"] = dict(plan.target.identity)
    record_prompts(lake, plan.models)
    with timer("gate"):
        assessment = assess_gate(load_baseline(lake, plan.baseline), scored.rows, scored.traces, aggregates.metrics,
                                 plan.chain, plan.chosen.line_key, config, gate_config,
                                 settings.monitor.price_per_1k_tokens,
                                 calibration.eval_judges(lake, aggregates.metrics, judges, gate_config.calibration))
    run.lineage["eval_cache_key"] = plan.cache_key
    summary = summarize(run.run_id, run.lineage, lake.uri, plan.chosen, aggregates, scored, plan.stale, assessment,
                     plan.serving, plan.role, paths, timer.report(), gate_config.on_inconclusive,
                     calibration.eval_estimates(lake, scored.rows, judges, config.confidence),
                     Counter(i.get("review") or "synthetic" for i in plan.items),
                     plan.target.summary() if plan.target is not None else None)
    if plan.models.llm is not None or plan.models.judge is not None:
        from ragloop.tasks.llm_cache import cache_report

        summary.llm_cache = cache_report(plan.models.llm, plan.models.judge, plan.llm_cache_off is None, plan.llm_cache_off)
    return summary
