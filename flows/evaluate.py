"""evaluate-chain flow: run the chain under test over a golden set, score it, store items and traces."""

from __future__ import annotations

from collections import Counter, defaultdict

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import RunRecorder, StageTimer, flow_settings, lake_locked
from ragloop.tasks import providers
from ragloop.tasks import chain as chain_steps
from ragloop.tasks import evaluation, gating, monitoring, promotion, reporting, schemas
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.llm import LLMConfigError, LLMUnavailable
from ragloop.tasks.metrics import scored_metrics
from ragloop.tasks.prompts import PromptError, load_prompt_set
from ragloop.tasks.ragas_metrics import RagasScorer
from ragloop.tasks.retrieval import Retriever, doc_ranking
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import ConfigError
from ragloop.tasks.storage import Lake, chunks_table_name

QUERY_BATCH = 256


def _prompt_ref(prompt) -> dict | None:
    return {"name": prompt.name, "prompt_hash": prompt.prompt_hash} if prompt else None


def _largest_prompt_tokens(prompts: dict, items: list[dict], llm, config, longest_chunks: list[str]) -> int:
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


run_retrieval = task(chain_steps.run_retrieval, name="retrieve", cache_policy=NO_CACHE)
rewrite_queries = task(chain_steps.rewrite_queries, name="rewrite-queries", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
guard = task(chain_steps.guard, name="guardrail", cache_policy=NO_CACHE)
answer = task(chain_steps.answer, name="answer", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)


@task(name="score-ragas", cache_policy=NO_CACHE)
def score_ragas(scorer: RagasScorer, items: list[dict], results: list) -> list:
    """ragas metrics per item; a judge failure is recorded on the item, never raised."""
    return [scorer.score(item, [h.chunk_id for h in r.hits], [h.text for h in r.hits], r.answer, r.refused)
            for item, r in zip(items, results)]


@flow(name="evaluate-chain")
@lake_locked("eval")
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
) -> dict:
    """Score the chain over the active items of a golden set; per-item results and traces go to
    the lake, the summary carries metrics with bootstrap CIs overall and per question type, the gate's
    verdict against the line's baseline, and whether the run was promoted.

    promote: None = an experiment (gated, never promoted); "nightly" | "prompt-changed" | "explicit"
    may promote. index: auto (the pending candidate index of this embedder, else the served one) |
    serving | candidate."""
    settings = flow_settings(config_path, {"lake": lake, "eval": {"retrieval": retrieval, "k": k}})
    config = settings.eval
    store_lake = Lake(settings.lake)
    refs = promotion.Refs(store_lake)
    golden_set_id, line = refs.resolve_golden(golden, store_lake.list_golden())
    if golden_set_id is None:
        raise ConfigError(f"--golden {golden}: no such golden set or line in {store_lake.uri} "
                          f"(have: {', '.join(store_lake.list_golden()) or 'none'}); run synth, golden import or import-beir")
    embedder = providers.current().build_embedder(settings.embedding)
    try:
        serving, role = promotion.pick_index(refs.serving(), refs.candidate(), chunks_table_name(embedder.slug), index)
    except promotion.PromotionError as exc:
        raise ConfigError(str(exc)) from exc
    items = [i for i in store_lake.read_golden(golden_set_id).to_pylist() if i["status"] == "active"]
    if not items:
        raise ConfigError(f"golden set {golden_set_id} has no active items")
    retriever = Retriever(store_lake, serving.table, serving.version, embedder, exact=config.exact,
                          rerank_depth=config.rerank_depth if config.rerank == "embedding" else 0)
    stale = evaluation.check_references(items, *retriever.catalog())
    prompts, llm = {}, None
    wanted = ([config.rewrite_prompt] if config.rewrite_prompt else []) + ([] if retrieval_only else [config.answer_prompt])
    if wanted:
        try:
            available = load_prompt_set(settings.prompts_dir)
        except PromptError as exc:
            raise ConfigError(str(exc)) from exc
        missing = [w for w in wanted if w not in available]
        if missing:
            raise ConfigError(f"eval: prompt(s) {missing} not found in {settings.prompts_dir}")
        prompts = {w: available[w] for w in wanted}
        llm = providers.current().build_llm(settings.llm)
        try:  # before any work: the endpoint answers and the largest prompt fits its window
            llm.preflight(_largest_prompt_tokens(prompts, items, llm, config, retriever.longest_texts(config.k)))
        except (PromptError, LLMUnavailable, LLMConfigError) as exc:
            raise ConfigError(str(exc)) from exc
    judge = None
    if config.judge is not None and not retrieval_only:
        judge = providers.current().build_judge(config.judge)
        try:
            judge.preflight(4 * config.judge_max_tokens)  # ragas' prompts carry schemas and examples
        except (LLMUnavailable, LLMConfigError) as exc:
            raise ConfigError(f"eval.judge: {exc}") from exc
    chain = {
        "rewrite": _prompt_ref(prompts.get(config.rewrite_prompt or "")),
        "retrieval": config.retrieval, "k": config.k, "exact": config.exact,
        "rerank": {"kind": config.rerank, "depth": config.rerank_depth} if config.rerank != "none" else None,
        "guardrail": None if retrieval_only else {"refuse_below": config.refuse_below, "min_grounding": config.min_grounding},
        "answer": _prompt_ref(prompts.get(config.answer_prompt)) if not retrieval_only else None,
        "llm": llm.model_id if llm else None,
    }
    judge_id = judge.model_id if judge else None
    line_key = line or f"id:{golden_set_id}"
    baseline = refs.baseline(line_key)
    # Everything the metrics depend on: equal key -> equal deterministic metrics (seeded bootstrap, seeded
    # LLM). The nightly reuses such a run instead of recomputing it.
    cache_key = canonical_hash({
        "golden_set_id": golden_set_id, "table": [serving.table, serving.version], "chain": chain,
        "prompts": {p.name: p.prompt_hash for p in prompts.values()}, "judge": judge_id,
        "embedder": embedder.weights_sha256, "eval": config.model_dump(mode="json"), "gate": settings.gate.model_dump(mode="json"),
    })
    if reuse_cached:
        cached = store_lake.read_ref(f"eval_cache__{cache_key[:32]}")
        record = store_lake.read_run(cached["run_id"]) if cached else None
        current = baseline.run_id if baseline else None
        # its verdict still holds only against the same baseline (or when it is the baseline itself)
        if record and record["status"] in ("ok", "partial") and current in (record["run_id"], record["outputs"].get("baseline_run_id")):
            get_run_logger().info("eval inputs unchanged since run %s: its results are reused", record["run_id"])
            summary = {"run_id": record["run_id"], "status": record["status"], "lineage": record["lineage"],
                       **record["outputs"], "cached": True}
            if promote and not (baseline and baseline.run_id == record["run_id"]):
                summary["promotion"] = _promote(refs, summary, line_key, promote, settings, role)
                summary["promoted"] = summary["promotion"]["promoted"]
            elif baseline and baseline.run_id == record["run_id"]:  # say so, not the reused run's first verdict
                summary["promotion"] = {**(summary.get("promotion") or {}), "promoted": False,
                                        "reason": f"reused run {record['run_id']} is already the baseline of line {line_key}"}
                summary["promoted"] = False
                summary["gate"] = {**summary["gate"], "warnings": [f"verdict of the reused run when it ran "
                                                                   f"({summary['gate']['status']})"] + summary["gate"].get("warnings", [])}
            return summary
    timer = StageTimer()
    run = RunRecorder(store_lake, "eval", settings)
    try:
        results = []
        for start in range(0, len(items), QUERY_BATCH):
            batch = items[start : start + QUERY_BATCH]
            qa_ids, questions = [i["qa_id"] for i in batch], [i["question"] for i in batch]
            queries, rewrite_traces = questions, []
            if config.rewrite_prompt:
                with timer("rewrite"):
                    queries, rewrite_traces = rewrite_queries(qa_ids, questions, prompts[config.rewrite_prompt], llm)
            with timer("retrieve"):
                batch_results = run_retrieval(retriever, qa_ids, queries, config.retrieval, config.k)
            for result, t in zip(batch_results, rewrite_traces):
                result.traces.insert(0, t)
            if not retrieval_only:
                with timer("guardrail"):
                    guard(batch_results, questions, embedder.encode, config)
                with timer("answer"):
                    answer(batch_results, questions, prompts[config.answer_prompt], llm, config)
            results.extend(batch_results)
        ks = evaluation.cutoffs(config, config.k)
        doc_rank = {r.qa_id: doc_ranking(r.hits) for r in results}
        chunk_rank = {r.qa_id: [h.chunk_id for h in r.hits] for r in results}
        scored = [evaluation.without_stale_references(i, stale.get(i["qa_id"])) for i in items]
        if stale:
            run.logger.warning("%d of %d items reference chunks or documents no longer in %s v%d: left out of the "
                               "IR metrics at that level (stale_references)", len(stale), len(items), serving.table,
                               serving.version)
        with timer("score"):
            per_item = evaluation.ir_item_metrics(scored, doc_rank, chunk_rank, ks)
            for r in results:  # no ranking to score: failed and counted, not scored as a miss
                if r.retrieval_failed:
                    per_item[r.qa_id] = {}
        with timer("ragas"):
            ragas_scores = score_ragas(RagasScorer(embedder.encode, judge, config.judge_max_tokens), scored, results)
        rows, traces = [], []
        for item, result, judged in zip(items, results, ragas_scores):
            errors = ([result.error] if result.error else []) + [f"{m}: {why}" for m, why in judged.failed.items()]
            rows.append({
                "qa_id": item["qa_id"], "qa_type": item["qa_type"], "question": item["question"],
                "status": "failed" if errors else "ok", "error": "; ".join(errors) or None,
                "retrieved_chunk_ids": [h.chunk_id for h in result.hits], "retrieved_doc_ids": doc_rank[item["qa_id"]],
                "retrieval_scores": [float(h.score) for h in result.hits], "answer": result.answer,
                "refused": result.refused, "grounded": result.grounded, "degenerate": result.degenerate,
                "relevance": result.relevance,
                "metrics": {**per_item[item["qa_id"]], **scored_metrics(item, result), **judged.metrics},
                "failed_metrics": sorted(judged.failed),
                "stale_references": stale.get(item["qa_id"], []),
            })
            traces.extend(result.traces)
        with timer("aggregate"):
            names = evaluation.metric_names(rows)
            metrics, ci, counts = evaluation.aggregate(rows, names, config)
            by_type = {}
            grouped = defaultdict(list)
            for row in rows:
                grouped[row["qa_type"]].append(row)
            for qa_type, group in sorted(grouped.items()):
                means, cis, _ = evaluation.aggregate(group, names, config)
                by_type[qa_type] = {"n": len(group), "metrics": means, "ci": cis}
        items_table = pa.Table.from_pylist(
            [{**r, "metrics": list(r["metrics"].items())} for r in rows], schema=schemas.EVAL_ITEMS)
        paths = store_lake.write_eval(run.run_id, items_table, pa.Table.from_pylist(traces, schema=schemas.TRACES))
        index_run = store_lake.read_run(serving.run_id) if serving.run_id else None
        index_lineage = (index_run or {}).get("lineage", {})
        run.lineage.update({k: index_lineage[k] for k in ("snapshot_id", "chunker_hash", "chunker", "embedder")
                            if k in index_lineage})  # what the serving table was built from
        run.lineage.update({
            "golden_set_id": golden_set_id,
            "golden_line": line,
            "table": {"name": serving.table, "version": serving.version},
            "index_role": role,
            "index_run_id": serving.run_id,
            "prompts": {p.name: p.prompt_hash for p in prompts.values()},
            "models": {"embedder": embedder.name, "embedder_weights_sha256": embedder.weights_sha256,
                       "llm": llm.model_id if llm else None, "judge": judge_id},
            "chain": chain,
            "chain_hash": canonical_hash(chain),
            "judge": judge_id,
            "retrieval_only": retrieval_only,
        })
        failed = sum(1 for r in rows if r["status"] == "failed")
        answered = [r for r in rows if r["answer"] is not None]
        for prompt in prompts.values():
            store_lake.record_prompt(prompt.name, prompt.prompt_hash, prompt.text)
        with timer("gate"):
            base_items = store_lake.read_eval_items(baseline.run_id) if baseline else None
            base_rows = [{"qa_id": r["qa_id"], "metrics": dict(r["metrics"])} for r in base_items.to_pylist()] if base_items else []
            shared = len({r["qa_id"] for r in base_rows} & {r["qa_id"] for r in rows})
            no_baseline = gating.baseline_problem(baseline and baseline.run_id, base_items is not None, shared, len(rows),
                                                  settings.gate.min_baseline_overlap, line_key)
            deltas = None if no_baseline else gating.paired_deltas(
                base_rows, rows, config.bootstrap_resamples, config.confidence, config.seed)
            budgets = monitoring.budget_figures(traces, len(rows), settings.monitor.price_per_1k_tokens)
            base_budgets = ((store_lake.read_run(baseline.run_id) or {}).get("outputs") or {}).get("budgets") if baseline else None
            gate = gating.check_gate(metrics, deltas, failed, len(rows), settings.gate, config.confidence,
                                     None if no_baseline else gating.unpaired_metrics(base_rows, rows), no_baseline,
                                     gating.check_budgets(budgets, base_budgets, settings.gate.budgets))
            if deltas is not None and baseline.chain_hash != run.lineage["chain_hash"]:
                gate["warnings"].insert(0, "the baseline ran another chain, compared on what both measured: "
                                        + "; ".join(gating.chain_differences(baseline.chain, chain)))
        outputs = {
            "lake": store_lake.uri,
            "golden_set_id": golden_set_id,
            "metrics": metrics,
            "ci": ci,
            "n": counts,
            "by_type": by_type,
            "items": {"total": len(rows), "failed": failed, "by_type": dict(Counter(r["qa_type"] for r in rows))},
            "failed_judgments": dict(sorted(Counter(m for r in rows for m in r["failed_metrics"]).items())),
            "answers": {"total": len(answered), "refused": sum(1 for r in answered if r["refused"]),
                        "ungrounded": sum(1 for r in answered if r["grounded"] is False),
                        "degenerate": sum(1 for r in answered if r["degenerate"]),
                        "degenerate_by_reason": dict(sorted(Counter(r["degenerate"] for r in answered if r["degenerate"]).items()))},
            "stale_references": evaluation.stale_summary(stale),
            "budgets": budgets,
            "gate": gate,
            "golden_line": line,
            "index": {"role": role, "table": serving.table, "version": serving.version},
            "baseline_run_id": baseline.run_id if baseline and deltas is not None else None,
            "baseline_golden_set_id": baseline.golden_set_id if baseline and deltas is not None else None,
            "deltas": deltas,
            "results": paths,
            "timings_s": timer.report(),
        }
        status = gating.run_status(gate["status"], settings.gate.on_inconclusive, failed)
        run.lineage["eval_cache_key"] = cache_key
        outputs["promotion"] = _promote(refs, {"run_id": run.run_id, "lineage": run.lineage, **outputs}, line_key,
                                        promote, settings, role)
        outputs["promoted"] = outputs["promotion"]["promoted"]
        store_lake.write_ref(f"eval_cache__{cache_key[:32]}", {"run_id": run.run_id})
        _publish_artifacts(run.run_id, status, outputs, run.lineage)
        return run.finish(status, outputs)
    except BaseException as exc:
        run.finish("failed", {"error": f"{type(exc).__name__}: {exc}"})
        raise


def _promote(refs: promotion.Refs, summary: dict, line: str, mode: str | None, settings, role: str) -> dict:
    """Apply the promotion rule to a scored run; returns {promoted, reason, mode, line, serving_moved}."""
    verdict = summary["gate"]["status"]
    ok, reason = promotion.promotion_decision(verdict, mode, settings.gate.on_inconclusive)
    out = {"promoted": ok, "reason": reason, "mode": mode or "experiment", "line": line, "serving_moved": None}
    if not ok:
        get_run_logger().warning("not promoted: %s; serving, baseline and prompts stay where they were", reason)
        return out
    lineage = summary["lineage"]
    record = promotion.Promotion(
        run_id=summary["run_id"], golden_set_id=summary["golden_set_id"], line=line, table=lineage["table"],
        prompts=lineage.get("prompts") or {}, chain=lineage.get("chain"), chain_hash=lineage.get("chain_hash"),
        metrics=summary["metrics"], verdict=verdict, mode=mode, promoted_at=utcnow().isoformat(),
        index_run_id=lineage.get("index_run_id"), chunker_hash=lineage.get("chunker_hash"))
    out.update(refs.promote(record, candidate_evaluated=(lineage.get("index_role", role) == "candidate")))
    get_run_logger().info("promoted run %s as the baseline of line %s (%s)%s", summary["run_id"], line, reason,
                          f"; serving moved to {out['serving_moved']['to']}" if out["serving_moved"] else "")
    return out


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
