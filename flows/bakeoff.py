"""bakeoff flow: every cell of a matrix is an ordinary eval run (an experiment) on one golden line, over the
table of its (embedder, chunker) pair; the best cell is chosen there, scored on a held-out line, and the
result lands as a table, a Pareto chart and a report. `--promote CELL` takes a cell through the gate into
the config file."""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor

from prefect import flow, get_run_logger

from ragloop.flows.common import flow_settings, stage_run
from ragloop.flows.evaluate import evaluate_chain
from ragloop.flows.index import index_corpus
from ragloop.tasks import bakeoff, commands, index_run, promotion, providers
from ragloop.tasks.bakeoff import BakeoffSummary
from ragloop.tasks.eval_run import resolve_golden


@flow(name="bakeoff")
def run_bakeoff(path: str, lake: str | None = None, config_path: str | None = None, promote: str | None = None) -> dict:
    """Build or reuse the table of each (embedder, chunker) pair, score each cell of the bake-off file at
    `path` on its choose_on line (reusing any cell whose eval cache key is unchanged, so a killed bake-off
    resumes), compare them with the reference, choose the best and score it on score_on. Cells run
    `concurrency` at a time; a cell (or a table) that raises is recorded failed, the rest go on.
    promote: a cell name; its eval on the gate line (bakeoff.gate_line) must pass the gate, then its
    settings are written to the config file (and, on the served table, its run becomes the line's baseline)."""
    spec = bakeoff.load_bakeoff(path)
    settings = flow_settings(config_path, {"lake": lake})
    cells = bakeoff.expand_cells(spec)
    with stage_run("bakeoff", settings) as stage:
        run = stage.start()
        golden = resolve_golden(promotion.Refs(stage.lake), spec.choice_line)
        served = promotion.Refs(stage.lake).serving()
        cells = bakeoff.pin_chunking(cells, bakeoff.served_chunking(stage.lake, served), settings.chunking)
        prices = bakeoff.load_prices(spec.prices)
        groups = bakeoff.table_groups(cells)
        tables = {key: _prepare_table(group, stage.lake, lake, config_path) for key, group in groups.items()}
        with_chunk_refs = bakeoff.chunk_reference_items(stage.lake.read_golden(golden.golden_set_id).to_pylist())
        with ThreadPoolExecutor(max_workers=spec.concurrency) as pool:
            # each cell in a copy of this flow's context, so its eval is a subflow of the bake-off
            futures = [pool.submit(contextvars.copy_context().run, _score_cell, cell, spec.choice_line, spec, lake,
                                   config_path, tables[bakeoff.table_key(cell)]) for cell in cells]
            outcomes = [f.result() for f in futures]
        rows = [bakeoff.cell_result(cell, summary, error, stage.lake, prices, settings.monitor.price_per_1k_tokens,
                                    tables[bakeoff.table_key(cell)]["index"], with_chunk_refs, spec.metric)
                for cell, (summary, error) in zip(cells, outcomes)]
        baseline = promotion.Refs(stage.lake).baseline(golden.line_key)
        reference = bakeoff.reference_run(spec, rows, baseline.run_id if baseline else None)
        ref_rows = bakeoff.item_metric_rows(stage.lake, reference["run_id"]) if reference["run_id"] else None
        result = bakeoff.conclude(spec, rows, reference, ref_rows, stage.lake, settings.eval)
        held = None
        if spec.score_on and result["chosen"]:
            chosen = next(c for c in cells if c["name"] == result["chosen"])
            scored, error = _score_cell(chosen, spec.score_on, spec, lake, config_path, tables[bakeoff.table_key(chosen)])
            held = bakeoff.held_out(spec.score_on, scored, spec.metric) if scored else {"line": spec.score_on, "error": error}
        promoted = None
        if promote is not None:
            cell = next(c for c in cells if c["name"] == promote)
            promoted = _promote_cell(cell, spec, stage.lake, lake, config_path, tables[bakeoff.table_key(cell)])
            result.update(bakeoff.after_promote(result, promoted, cell))
        run.lineage.update({"golden_set_id": golden.golden_set_id, "golden_line": golden.line, "bakeoff": spec.model_dump(mode="json")})
        summary = BakeoffSummary(run_id=run.run_id, lineage=run.lineage, name=spec.name, file=str(path), lake=stage.lake.uri,
                                 choose_on=spec.choice_line, golden_set_id=golden.golden_set_id, cells=rows,
                                 held_out=held, promote=promoted,
                                 tables=bakeoff.table_rows(groups, tables),
                                 **result)
        dumped = summary.dump()
        summary.results = stage.lake.write_bakeoff(run.run_id, bakeoff.cells_table(rows))
        summary.report = stage.lake.write_report(run.run_id, {"pareto.png": bakeoff.pareto_plot(dumped),
                                                              "report.html": bakeoff.bakeoff_html(dumped, "pareto.png").encode()})
        return summary.finish(run)


def _prepare_table(group: dict, lake_obj, lake: str | None, config_path: str | None) -> dict:
    """The table a group of cells reads: {ref (None: the served index), index (figures), error}. A pair that
    is not served gets its bake-off table through the index flow (incremental: an unchanged table is reused,
    a killed build is redone); a failure is recorded for its cells, the other tables go on."""
    overrides = group["overrides"]
    try:
        settings = flow_settings(config_path, {**overrides, "lake": lake})
        embedder = providers.current().build_embedder(settings.embedding)
        chunker = index_run.build_chunker(settings.chunking, embedder)
        refs = promotion.Refs(lake_obj)
        serving = refs.serving()
        plan = bakeoff.plan_table(serving, embedder.slug, chunker.hash)
        if plan["role"] == "serving":
            return {"ref": None, "index": bakeoff.index_figures(lake_obj, serving, "serving"), "error": None}
        built = index_corpus(lake=lake, config_path=config_path, snapshot_id=bakeoff.source_snapshot(lake_obj, serving),
                             table=plan["table"], overrides=overrides)
        ref = refs.bakeoff_table(plan["table"])
        if built["status"] != "ok" or ref is None:
            raise RuntimeError(f"index run {built['run_id']} {built['status']}: {built.get('error') or 'chunks suite failed'}")
        return {"ref": ref.model_dump(mode="json", exclude_none=True), "index": bakeoff.index_figures(lake_obj, ref, "bakeoff"),
                "error": None}
    except Exception as exc:  # one table failing must not lose the other tables' cells
        get_run_logger().warning("table for %s failed: %s: %s", overrides or "the configured index", type(exc).__name__, exc)
        return {"ref": None, "index": {"table": None, "role": "bakeoff"}, "error": f"{type(exc).__name__}: {exc}"}


def _score_cell(cell: dict, line: str, spec: bakeoff.BakeoffSpec, lake: str | None, config_path: str | None,
                table: dict) -> tuple[dict | None, str | None]:
    """(eval summary, None), or (None, the error) when the cell's table failed or its eval raised."""
    if table["error"]:
        return None, f"table: {table['error']}"
    try:
        return evaluate_chain(lake=lake, golden=line, retrieval_only=spec.retrieval_only, config_path=config_path,
                              reuse_cached=True, reuse_gated=True, overrides=bakeoff.cell_overrides(cell),
                              table=table["ref"]), None
    except Exception as exc:  # one cell failing must not lose the others: recorded, retried on the next bake-off
        get_run_logger().warning("cell %s on %s failed: %s: %s", cell["name"], line, type(exc).__name__, exc)
        return None, f"{type(exc).__name__}: {exc}"


def _promote_cell(cell: dict, spec: bakeoff.BakeoffSpec, lake_obj, lake: str | None, config_path: str | None,
                  table: dict) -> dict:
    """--promote: the cell's eval on the gate line (an experiment, reused when unchanged) must pass the gate
    against the line's baseline; then its run becomes the baseline (on the served table) and its settings are
    written to the config file. Returns the summary's `promote` block."""
    line = bakeoff.gate_line(spec)
    summary, error = _score_cell(cell, line, spec, lake, config_path, table)
    verdict = bakeoff.promote_verdict(summary, error, line)
    role = table["index"].get("role")
    block = {"cell": cell["name"], "line": line, "run_id": summary["run_id"] if summary else None, "gate": verdict["gate"],
             "applied": False, "status": verdict["status"], "reason": verdict["reason"], "baseline_moved": False,
             "config": None, "next": None}
    if not verdict["ok"]:
        get_run_logger().warning("--promote %s refused: %s", cell["name"], verdict["reason"])
        return block
    path = bakeoff.config_file(config_path)
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    after = bakeoff.edited_config(before, bakeoff.cell_overrides(cell))
    refs = promotion.Refs(lake_obj)
    if bakeoff.moves_baseline(role, refs.baseline(summary.get("golden_line") or f"id:{summary['golden_set_id']}"), summary["run_id"]):
        commands.promote_run(lake_obj, summary["run_id"])
        block["baseline_moved"] = True
    if after != before:
        bakeoff.write_text_atomic(path, after)
    block.update(applied=True, config={"file": str(os.path.abspath(path)), "written": after != before,
                                       "diff": bakeoff.config_diff(before, after, path.name)},
                 next=bakeoff.next_steps(role, cell["name"]))
    get_run_logger().info("--promote %s: %s; %s %s", cell["name"], verdict["reason"], path,
                          "updated" if after != before else "already had its settings")
    return block
