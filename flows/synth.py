"""synth-golden-set flow: a typed, filtered, versioned golden set from the index that follows the corpus."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import RunRecorder, StageTimer, flow_settings, index_store, lake_locked
from ragloop.tasks import providers
from ragloop.tasks import promotion, schemas
from ragloop.tasks import qa_generation as qa
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.llm import LLMConfigError, LLMUnavailable
from ragloop.tasks.prompts import PromptError, load_prompt_set
from ragloop.tasks.question_types import must_refuse, required_prompts
from ragloop.tasks.settings import ConfigError
from ragloop.tasks.storage import Lake

generate_candidates = task(qa.generate_candidates, name="generate-qa", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
plan_tasks = task(qa.plan_tasks, name="plan-qa-tasks", cache_policy=NO_CACHE)


@flow(name="synth-golden-set")
@lake_locked("synth")
def synth_golden_set(lake: str | None = None, size: int | None = None, config_path: str | None = None) -> dict:
    """Keep untouched items, mark changed ones stale and vanished ones retired, and generate new
    items within the budget; writes a new golden set version (the previous stays readable)."""
    settings = flow_settings(config_path, {"lake": lake, "synth": {"size": size}})
    config = settings.synth
    try:
        prompts = load_prompt_set(settings.prompts_dir)
    except PromptError as exc:
        raise ConfigError(str(exc)) from exc
    missing = [p for p in required_prompts() if p not in prompts]
    if missing:
        raise ConfigError(f"prompts_dir {settings.prompts_dir}: missing prompt file(s) {missing}")
    store_lake = Lake(settings.lake)
    embedder = providers.current().build_embedder(settings.embedding)
    store, _ = index_store(store_lake, embedder)
    refs = promotion.Refs(store_lake)
    llm = providers.current().build_llm(settings.llm)
    timer = StageTimer()
    run = RunRecorder(store_lake, "synth", settings)
    try:
        catalog = store.scan(["chunk_id", "doc_id"]).to_pylist()
        chunk_ids = {r["chunk_id"] for r in catalog}
        doc_ids = {r["doc_id"] for r in catalog}
        previous_ref = refs.lines().lines.get(promotion.SYNTHETIC)  # synth follows its own line only
        previous = store_lake.read_golden(previous_ref.golden_set_id).to_pylist() if previous_ref else []
        current_prompts = {n: prompts[n].prompt_hash for n in required_prompts()}
        verdicts = qa.classify_previous(previous, chunk_ids, doc_ids, current_prompts)
        kept = [i for i in previous if verdicts.get(i["qa_id"]) == "kept"]
        changed = [dict(i, status=verdicts[i["qa_id"]]) for i in previous if verdicts.get(i["qa_id"]) in qa.REPLACED]
        covered = {d for i in kept for d in i["source_doc_ids"]}
        priority = sorted({d for i in changed if i["status"] in ("stale", "outdated") for d in i["source_doc_ids"]}) + sorted(doc_ids - covered)

        # What generation depends on: the table version, the prompts, the synth and LLM settings. When
        # none changed since the last synth it already made its attempts: a rerun generates nothing.
        inputs = canonical_hash({"table": [store.name, store.version], "synth": config.model_dump(mode="json"),
                                  "llm": settings.llm.model_dump(mode="json"),
                                  # only the prompts synth renders: an answer-prompt change re-runs eval, not synth
                                  "prompts": {n: prompts[n].prompt_hash for n in sorted(required_prompts())}})
        up_to_date = bool(previous_ref) and previous_ref.inputs == inputs and not changed
        rng = random.Random(config.seed)
        report = qa.GenerationReport()
        need = 0 if up_to_date else max(config.size - len(kept), 0)
        generator = llm.model_id
        preflight_done = False
        attempted_by_type: Counter = Counter()
        for _ in range(config.rounds):
            if need <= 0:
                break
            with timer("plan"):
                # After a round, plan for the accept rate seen so far (up to 2x the need), so a small
                # model's rejects do not leave the budget unfilled.
                accepted = len(report.accepted)
                planned = need if not report.attempted else min(2 * need, -(-need * report.attempted // max(accepted, 1)))
                tasks = plan_tasks(store, qa.allocate(planned, config.types), config, rng, priority, report.ineligible_chunks)
            if not tasks:
                break
            if not preflight_done:
                with timer("preflight"):
                    try:  # before any generation: the endpoint answers, the model fits the prompts
                        llm.preflight(qa.max_prompt_tokens(tasks, prompts, llm.count_tokens))
                    except (PromptError, LLMUnavailable, LLMConfigError) as exc:
                        raise ConfigError(str(exc)) from exc
                preflight_done = True
            with timer("generate"):
                candidates = generate_candidates(tasks, prompts, llm)
            report.attempted += len(candidates)
            attempted_by_type.update(c.task.qa_type for c in candidates)
            passed = []
            for cand in candidates:
                reason = qa.reject_reason(cand, config)
                if reason:
                    report.rejects[reason] += 1
                else:
                    passed.append(cand)
            with timer("answerable_check"):
                # An "unanswerable" item the index can answer would punish a chain for answering right.
                unanswerable = [c for c in passed if c.task.kind.must_refuse]
                found = qa.search_texts(store, embedder.encode, [c.question for c in unanswerable], config.answerable_check_k)
                answered = {id(c) for c, texts in zip(unanswerable, found)
                            if qa.answered_by(c.question, texts, config.answerable_coverage)}
            report.rejects["answerable"] += len(answered)
            fresh = [qa.to_item(c, generator) for c in passed if id(c) not in answered]
            with timer("dedupe"):
                fresh, dropped = qa.drop_near_duplicates(fresh, kept + report.accepted, embedder.encode,
                                                         config.near_duplicate_similarity, config.same_chunk_similarity)
            report.rejects["near_duplicate"] += dropped
            report.accepted.extend(fresh[:need])
            if len(fresh) > need:  # counted, so attempted == new + rejected always holds
                report.rejects["over_budget"] += len(fresh) - need
            need = config.size - len(kept) - len(report.accepted)
            priority = []  # later rounds sample freely

        active = kept + report.accepted
        status_counts = Counter(i["status"] for i in changed)
        regenerated = {i["qa_id"] for i in active}  # a new prompt may regenerate an item word for word
        changed = [i for i in changed if i["qa_id"] not in regenerated]
        items = active + changed
        if up_to_date:  # nothing changed or generated: the version stays, so the nightly's eval is reused
            golden_set_id, written = previous_ref.golden_set_id, False
        else:
            golden_set_id = qa.golden_set_id_of(items)
            written = store_lake.write_golden(golden_set_id, pa.Table.from_pylist(items, schema=schemas.GOLDEN))
        for prompt in prompts.values():
            store_lake.record_prompt(prompt.name, prompt.prompt_hash, prompt.text)
        run.lineage.update(
            {
                "golden_set_id": golden_set_id,
                "previous_golden_set_id": previous_ref.golden_set_id if previous_ref else None,
                "golden_line": promotion.SYNTHETIC,
                "table": {"name": store.name, "version": store.version},
                "prompts": {name: p.prompt_hash for name, p in sorted(prompts.items())},
                "llm": {"provider": settings.llm.provider, "model": generator},
                "embedder": {"name": embedder.name, "weights_sha256": embedder.weights_sha256},
                "seed": config.seed,
            }
        )
        by_type = Counter(i["qa_type"] for i in active)
        covered = {d for i in active for d in i["source_doc_ids"]}
        folders = Counter(qa.top_folder(d) for d in doc_ids)
        folders_covered = Counter(qa.top_folder(d) for d in covered if d in doc_ids)
        answerable_new = [i for i in report.accepted if not must_refuse(i["qa_type"])]
        outputs = {
            "lake": store_lake.uri,
            "golden_set_id": golden_set_id,
            "items": {"total": len(active), "new": len(report.accepted), "kept": len(kept),
                      "stale": status_counts["stale"], "retired": status_counts["retired"],
                      "outdated": status_counts["outdated"],
                      "rejected": sum(report.rejects.values())},
            "by_type": dict(sorted(by_type.items())),
            "rejects": dict(sorted((k, v) for k, v in report.rejects.items() if v)),
            "attempted": report.attempted,
            "up_to_date": up_to_date,
            "accept_rate_by_type": {t: round(sum(1 for i in report.accepted if i["qa_type"] == t) / n, 3)
                                    for t, n in sorted(attempted_by_type.items())},
            "coverage": {"documents": len(covered), "of": len(doc_ids),
                         "ratio": round(len(covered) / len(doc_ids), 3) if doc_ids else 0.0,
                         "folders": len(folders_covered), "of_folders": len(folders),
                         "by_folder": {f: {"documents": folders_covered[f], "of": n} for f, n in sorted(folders.items())}},
            "ineligible_chunks": dict(sorted(report.ineligible_chunks.items())),
            # new answerable items whose answer has evidence spans (always all of them: it is an accept rule)
            "evidence_supported": {"items": sum(1 for i in answerable_new if i["evidence"]), "of": len(answerable_new)},
            "written": written,
            "timings_s": timer.report(),
            "per_minute": {  # of generation time (LLM calls included), the figure to compare endpoints by
                "candidates": round(report.attempted * 60 / timer.seconds["generate"], 2) if timer.seconds.get("generate") else None,
                "accepted": round(len(report.accepted) * 60 / timer.seconds["generate"], 2) if timer.seconds.get("generate") else None,
            },
        }
        if not active:
            outputs["error"] = f"no accepted items: {report.attempted} generated, rejected by reason {dict(report.rejects)}"
            return run.finish("failed", outputs)
        status = "ok"
        if report.attempted and not report.accepted:
            status = "partial"
            outputs["error"] = f"no new item accepted out of {report.attempted}: {dict(report.rejects)}"
        elif report.attempted and len(active) < config.size:  # a shortfall is never a silent "ok"
            status = "partial"
            outputs["shortfall"] = {"asked": config.size, "active": len(active), "rounds": config.rounds,
                                    "rejects": dict(sorted((k, v) for k, v in report.rejects.items() if v))}
            outputs["error"] = (f"{len(active)} of {config.size} items after {config.rounds} rounds; "
                                f"rejected by reason {outputs['shortfall']['rejects']}")
        if not (up_to_date and previous_ref.golden_set_id == golden_set_id):
            # synth moves its own line; the chosen line (what the nightly evaluates) stays as the user set it
            outputs["line"] = refs.set_line(promotion.SYNTHETIC, golden_set_id, "synthetic", run.run_id, inputs)
        return run.finish(status, outputs)
    except BaseException as exc:
        run.finish("failed", {"error": f"{type(exc).__name__}: {exc}"})
        raise
