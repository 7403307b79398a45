"""bakeoff flow: every cell of a matrix is an ordinary eval run (an experiment) on one golden line; the best
cell is chosen there, scored on a held-out line, and the result lands as a table, a Pareto chart and a report."""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor

from prefect import flow, get_run_logger

from ragloop.flows.common import flow_settings, stage_run
from ragloop.flows.evaluate import evaluate_chain
from ragloop.tasks import bakeoff, promotion
from ragloop.tasks.bakeoff import BakeoffSummary
from ragloop.tasks.eval_run import resolve_golden


@flow(name="bakeoff")
def run_bakeoff(path: str, lake: str | None = None, config_path: str | None = None) -> dict:
    """Score each cell of the bake-off file at `path` on its choose_on line (reusing any cell whose eval cache
    key is unchanged, so a killed bake-off resumes), compare them with the reference, choose the best and
    score it on score_on. Cells run `concurrency` at a time; a cell that raises is recorded failed, the rest go on."""
    spec = bakeoff.load_bakeoff(path)
    settings = flow_settings(config_path, {"lake": lake})
    cells = bakeoff.expand_cells(spec)
    with stage_run("bakeoff", settings) as stage:
        run = stage.start()
        golden = resolve_golden(promotion.Refs(stage.lake), spec.choice_line)
        prices = bakeoff.load_prices(spec.prices)
        with ThreadPoolExecutor(max_workers=spec.concurrency) as pool:
            # each cell in a copy of this flow's context, so its eval is a subflow of the bake-off
            futures = [pool.submit(contextvars.copy_context().run, _score_cell, cell, spec.choice_line, spec, lake,
                                   config_path) for cell in cells]
            outcomes = [f.result() for f in futures]
        rows = [bakeoff.cell_result(cell, summary, error, stage.lake, prices, settings.monitor.price_per_1k_tokens)
                for cell, (summary, error) in zip(cells, outcomes)]
        baseline = promotion.Refs(stage.lake).baseline(golden.line_key)
        reference = bakeoff.reference_run(spec, rows, baseline.run_id if baseline else None)
        ref_rows = bakeoff.item_metric_rows(stage.lake, reference["run_id"]) if reference["run_id"] else None
        result = bakeoff.conclude(spec, rows, reference, ref_rows, stage.lake, settings.eval)
        held = None
        if spec.score_on and result["chosen"]:
            chosen = next(c for c in cells if c["name"] == result["chosen"])
            scored, error = _score_cell(chosen, spec.score_on, spec, lake, config_path)
            held = bakeoff.held_out(spec.score_on, scored, spec.metric) if scored else {"line": spec.score_on, "error": error}
        run.lineage.update({"golden_set_id": golden.golden_set_id, "golden_line": golden.line, "bakeoff": spec.model_dump(mode="json")})
        summary = BakeoffSummary(run_id=run.run_id, lineage=run.lineage, name=spec.name, file=str(path), lake=stage.lake.uri,
                                 choose_on=spec.choice_line, golden_set_id=golden.golden_set_id, cells=rows,
                                 held_out=held, **result)
        dumped = summary.dump()
        summary.results = stage.lake.write_bakeoff(run.run_id, bakeoff.cells_table(rows))
        summary.report = stage.lake.write_report(run.run_id, {"pareto.png": bakeoff.pareto_plot(dumped),
                                                              "report.html": bakeoff.bakeoff_html(dumped, "pareto.png").encode()})
        return summary.finish(run)


def _score_cell(cell: dict, line: str, spec: bakeoff.BakeoffSpec, lake: str | None,
                config_path: str | None) -> tuple[dict | None, str | None]:
    """(eval summary, None), or (None, the error) when the cell's eval raised."""
    try:
        return evaluate_chain(lake=lake, golden=line, retrieval_only=spec.retrieval_only, config_path=config_path,
                              reuse_cached=True, overrides=bakeoff.cell_overrides(cell)), None
    except Exception as exc:  # one cell failing must not lose the others: recorded, retried on the next bake-off
        get_run_logger().warning("cell %s on %s failed: %s: %s", cell["name"], line, type(exc).__name__, exc)
        return None, f"{type(exc).__name__}: {exc}"
