"""synth-golden-set flow: a typed, filtered, versioned golden set from the index that follows the corpus."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragloop.flows.common import flow_settings, stage_run
from ragloop.flows.runners import llm_map
from ragloop.tasks import golden_quality, promotion, providers, synth_run
from ragloop.tasks import qa_generation as qa
from ragloop.tasks.indexing import index_store
from ragloop.tasks.llm_remote import on_workers
from ragloop.tasks.progress import Progress

generate_candidates = task(qa.generate_candidates, name="generate-qa", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
plan_tasks = task(qa.plan_tasks, name="plan-qa-tasks", cache_policy=NO_CACHE)


@flow(name="synth-golden-set")
def synth_golden_set(lake: str | None = None, size: int | None = None, config_path: str | None = None,
                     progress: bool = False) -> dict:
    """Keep untouched items, mark changed ones stale and vanished ones retired, and generate new
    items within the budget; writes a new golden set version (the previous stays readable).
    progress: show candidates generated and items accepted (a bar on a terminal, else log lines)."""
    settings = flow_settings(config_path, {"lake": lake, "synth": {"size": size}})
    config = settings.synth
    with stage_run("synth", settings) as stage:
        prompts = synth_run.load_synth_prompts(settings.prompts_dir)
        embedder = providers.current().build_embedder(settings.embedding)
        store, _ = index_store(stage.lake, embedder)
        refs = promotion.Refs(stage.lake)
        llm = providers.current().build_llm(settings.llm)
        run = stage.start()
        previous_ref, previous = synth_run.read_previous(stage.lake, refs)
        inputs = synth_run.generation_inputs((store.name, store.version), config, settings.llm, prompts)
        plan = synth_run.plan_synth(previous, previous_ref, store.scan(["chunk_id", "doc_id"]).to_pylist(), prompts,
                                    inputs, config.size, chunk_rows=lambda: store.scan(synth_run.RENAME_COLUMNS).to_pylist(),
                                    writer=config.question_writer, config=config)
        with Progress("synth", unit="candidate", enabled=progress, log_to=run.logger) as track, \
                llm_map(settings.runner) as remote:
            writer = on_workers(llm, settings.llm, providers.current().llm, remote)  # runner dask: on workers
            budget = synth_run.fill_budget(plan, store, embedder.encode, writer, prompts, config, plan_step=plan_tasks,
                                           generate_step=generate_candidates, timer=stage.timer, progress=track)
        golden = synth_run.assemble_golden(plan, budget.report.accepted)
        golden_set_id, written = synth_run.write_version(stage.lake, golden, plan, previous_ref)
        synth_run.record_prompts(stage.lake, prompts)
        run.lineage.update(synth_run.synth_lineage(golden_set_id, previous_ref, store, prompts, settings.llm,
                                                   llm.model_id, embedder, config.seed))
        summary = synth_run.summarize(run.run_id, run.lineage, lake_uri=stage.lake.uri, golden_set_id=golden_set_id,
                                      written=written, plan=plan, golden=golden, budget=budget, config=config,
                                      timings_s=stage.timer.report(), generate_s=stage.timer.seconds.get("generate"))
        if synth_run.moves_line(summary, plan, previous_ref):
            report = golden_quality.validate_version(golden.items, golden_quality.referenced_chunk_texts(store, golden.items))
            stage.lake.write_validation(run.run_id, report.suite, report.result)
            if synth_run.record_validation(summary, *golden_quality.validation_outcome(report)):
                # synth moves its own line; the chosen line (what the nightly evaluates) stays as the user set it
                summary.line = refs.set_line(promotion.SYNTHETIC, golden_set_id, "synthetic", run.run_id, plan.inputs)
        return summary.record(run)
