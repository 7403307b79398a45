"""evaluate-chain flow: run the chain under test over a golden set, score it, store items and traces."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import StageTimer, flow_settings, stage_run
from ragloop.flows.runners import llm_map
from ragloop.tasks import chain as chain_steps
from ragloop.tasks import eval_run, promotion, providers, reporting, targets
from ragloop.tasks.eval_run import ChainModels, EvalSummary
from ragloop.tasks.progress import Progress
from ragloop.tasks.ragas_metrics import RagasScorer
from ragloop.tasks.retrieval import Retriever
from ragloop.tasks.settings import EvalConfig

# Content hashes are our idempotency mechanism, not Prefect's result cache (STYLE.md).
run_retrieval = task(chain_steps.run_retrieval, name="retrieve", cache_policy=NO_CACHE)
rewrite_queries = task(chain_steps.rewrite_queries, name="rewrite-queries", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
guard = task(chain_steps.guard, name="guardrail", cache_policy=NO_CACHE)
answer = task(chain_steps.answer, name="answer", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
score_ragas = task(eval_run.judge_items, name="score-ragas", cache_policy=NO_CACHE)
# No task retries: the target's HTTP calls are retried per item (tasks.http_retry), a failed item fails alone.
call_target = task(targets.Target.run, name="call-target", cache_policy=NO_CACHE)


@flow(name="evaluate-chain")
def evaluate_chain(
    lake: str | None = None,
    golden: str = "latest",
    retrieval: str | None = None,
    k: int | None = None,
    retrieval_only: bool = False,
    config_path: str | None = None,
    reuse_cached: bool = False,
    promote: str | None = None,
    index: str = "auto",
    progress: bool = False,
    no_cache: bool = False,
    overrides: dict | None = None,
    table: dict | None = None,
    reuse_gated: bool = False,
) -> dict:
    """Score the chain over the active items of a golden set; per-item results and traces go to
    the lake, the summary carries metrics with bootstrap CIs overall and per question type, the gate's
    verdict against the line's baseline, and whether the run was promoted.
    promote: None = an experiment (gated, never promoted); "nightly" | "prompt-changed" | "explicit"
    may promote. index: auto (the pending candidate index of this embedder, else the served one) |
    serving | candidate. progress: show items through the chain and the judge's scoring (a bar on a
    terminal, else log lines). no_cache: bypass the LLM call cache (tasks/llm_cache.py), reads and writes.
    A bake-off cell's: overrides {section: {key: value}} (retrieval and k win over them); table {table, version,
    run_id, chunker_hash} scored instead of `index`, never promoted; reuse_gated: reuse gate_failed/inconclusive runs too."""
    extra = overrides or {}
    given = {key: value for key, value in (("retrieval", retrieval), ("k", k)) if value is not None}
    settings = flow_settings(config_path, {**extra, "lake": lake, "eval": {**extra.get("eval", {}), **given}})
    config, on_inconclusive = settings.eval, settings.gate.on_inconclusive
    with stage_run("eval", settings) as stage, llm_map(settings.runner) as remote:
        plan = eval_run.plan_eval(stage.lake, settings, golden, index, retrieval_only, providers.current(),
                                  use_llm_cache=not no_cache, table=table, remote=remote)
        line, models = plan.chosen.line_key, plan.models
        reuse = (eval_run.find_reuse(stage.lake, plan.cache_key, plan.baseline, line, promote, reuse_gated)
                 if reuse_cached and plan.reusable else None)
        if reuse is not None:
            get_run_logger().info("eval inputs unchanged since run %s: its results are reused", reuse.summary.run_id)
            summary = (_promote(plan.refs, reuse.summary, line, promote, on_inconclusive, plan.role)
                       if reuse.promote else reuse.summary)
            return summary.dump()

        run, timer = stage.start(), stage.timer
        with Progress("eval chain", len(plan.items), enabled=progress, log_to=run.logger) as track:
            results = _answer_items(timer, plan, config, retrieval_only, track)
        if warning := eval_run.stale_warning(plan.stale, len(plan.items), plan.serving):
            run.logger.warning("%s", warning)
        with timer("score"):
            scores = eval_run.score_retrieval(plan.items, results, plan.stale, config)
        with timer("ragas"), Progress("eval judge", len(plan.items), enabled=progress and models.judge is not None,
                                      log_to=run.logger) as track:
            scorer = RagasScorer(plan.embedder.encode, models.judge, config.judge_max_tokens, config.judge_metrics)
            judged = score_ragas(scorer, scores.items, results, on_done=track)
        scored = eval_run.item_rows(plan.items, results, judged, scores, plan.stale)
        with timer("aggregate"):
            aggregates = eval_run.aggregate_rows(scored.rows, config)
        summary = eval_run.conclude(stage.lake, run, plan, scored, aggregates, timer, settings, retrieval_only)
        summary = _promote(plan.refs, summary, line, promote, on_inconclusive, plan.role)
        stage.lake.write_ref(eval_run.cache_ref(plan.cache_key), {"run_id": run.run_id})
        _publish_artifacts(summary.run_id, summary.status, summary.outputs(), summary.lineage)
        return summary.finish(run)


def _answer_items(timer: StageTimer, plan: eval_run.EvalPlan, config: EvalConfig, retrieval_only: bool,
                  track: Progress) -> list[chain_steps.ChainResult]:
    """The items through what answers them: the eval target (timed as `target`) or the built-in chain."""
    if plan.target is None:
        return _run_chain(timer, plan.retriever, plan.embedder, plan.items, plan.models, config, track)
    with timer("target"):
        results = call_target(plan.target, plan.items, config.min_grounding, retrieval_only, on_done=track)
    track.reach(len(results))
    return results


def _run_chain(timer: StageTimer, retriever: Retriever, embedder, items: list[dict], models: ChainModels,
               config: EvalConfig, track: Progress) -> list[chain_steps.ChainResult]:
    """The chain over the items, a batch at a time: rewrite (when the chain has a rewrite prompt),
    retrieve, then guardrail and answer (when it has an answer prompt: not retrieval-only).
    `track` counts items through the chain: each answer as it arrives, every item by the end of its batch."""
    results = []
    for qa_ids, questions in eval_run.batches(items):
        queries, rewrite_traces = questions, []
        if models.rewrite:
            with timer("rewrite"):
                queries, rewrite_traces = rewrite_queries(qa_ids, questions, models.rewrite, models.llm)
        with timer("retrieve"):
            batch = run_retrieval(retriever, qa_ids, queries, config.retrieval, config.k)
        eval_run.prepend_traces(batch, rewrite_traces)
        if models.answer:
            with timer("guardrail"):
                guard(batch, questions, embedder.encode, config)
            with timer("answer"):
                answer(batch, questions, models.answer, models.llm, config, on_done=track)
        results.extend(batch)
        track.reach(len(results))  # refused, failed and retrieval-only items count when their batch ends
    return results


def _promote(refs: promotion.Refs, summary: EvalSummary, line: str, mode: str | None, on_inconclusive: str,
             role: str) -> EvalSummary:
    """Apply the promotion rule to a scored (or reused) run and log what it did."""
    plan = eval_run.plan_promotion(summary, line, mode, on_inconclusive, role)
    outcome = eval_run.apply_promotion(refs, plan)
    get_run_logger().log(*eval_run.promotion_log(summary.run_id, outcome))
    return summary.with_promotion(outcome)


def _publish_artifacts(run_id: str, status: str, outputs: dict, lineage: dict) -> None:
    """The eval's headline in the Prefect UI: metrics with CIs, the gate and its deltas, per-type table."""
    metrics, ci, deltas = outputs["metrics"], outputs["ci"], outputs.get("deltas") or {}
    gate = outputs["gate"]
    lines = [f"# ragloop eval {run_id}: {status}", "",
             f"Golden set `{outputs['golden_set_id']}`, {outputs['items']['total']} items ({outputs['items']['failed']} failed); "
             f"chain `{lineage.get('chain_hash', '')[:12]}`, prompts "
             + ", ".join(f"{k}@{v[:12]}" for k, v in sorted((lineage.get("prompts") or {}).items())) + ".", "",
             f"**Gate: {gate['status']}** vs baseline {outputs.get('baseline_run_id') or '(none)'}; "
             f"promoted: {str(outputs['promoted']).lower()} ({outputs['promotion']['reason']})", ""]
    lines += [f"- {reason}" for reason in gate["reasons"] + gate.get("warnings", [])]
    lines += ["", "| metric | value | 95% CI | Δ vs baseline | Δ CI |", "|---|---:|---:|---:|---:|"]
    for name in sorted(metrics):
        d = deltas.get(name)
        lines.append(f"| {name} | {metrics[name]:.4f} | [{ci[name][0]:.4f}, {ci[name][1]:.4f}] | "
                     + (f"{d['delta']:+.4f} | [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] |" if d else " | |"))
    create_markdown_artifact(markdown="\n".join(lines), key=reporting.artifact_key("ragloop-eval", outputs["lake"]),
                             description=f"eval {run_id} on lake {outputs['lake']}: metrics and gate")
    if outputs.get("by_type"):
        create_table_artifact(key=reporting.artifact_key("ragloop-eval-by-type", outputs["lake"]),
                              description=f"eval {run_id} on lake {outputs['lake']}: metrics per question type", table=[
            {"qa_type": t, "n": g["n"], **{m: round(v, 4) for m, v in sorted(g["metrics"].items()) if not m.startswith("chunk_")}}
            for t, g in sorted(outputs["by_type"].items())])
