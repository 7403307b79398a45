"""The decisions of a bake-off, outside Prefect: its YAML file, the matrix of cells it expands to, each cell's
eval settings, the figures of a scored cell (paired deltas, latency, tokens, cost), the Pareto fronts, the cell
chosen on one golden line and the Markdown and HTML of the result (pure but for the file and lake reads named)."""

from __future__ import annotations

import html
import itertools
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from ragloop.tasks import gating
from ragloop.tasks.metrics import higher_is_better
from ragloop.tasks.settings import ConfigError, LLMConfig
from ragloop.tasks.summaries import StageSummary

DEFAULT_PRICES = "prices.yaml"


class BakeoffSummary(StageSummary):
    """What `ragloop bakeoff` returns (and records as its run's outputs)."""

    status: Literal["ok", "partial", "failed"] = Field(description="ok: every cell scored; partial: some failed; failed: none")
    name: str = Field(description="the bake-off's name (its file's `name`)")
    file: str = Field(description="the bake-off file")
    lake: str = Field(description="the lake URI")
    metric: str = Field(description="the quality metric the choice, verdicts and Pareto fronts use")
    choose_on: str = Field(description="the golden line the cells were scored and the choice made on")
    golden_set_id: str = Field(description="the golden-set version every cell was scored on")
    reference: dict[str, Any] = Field(description="{label, run_id}: what the deltas compare with (a named baseline cell, "
                                                  "else the line's baseline run; run_id None: not compared)")
    cells: list[dict[str, Any]] = Field(
        description="per cell: {name, config, status, run_id, cached, metrics, ci, deltas: {metric: {delta, ci, n, "
                    "verdict: better | worse | same}}, latency_p50_ms, latency_p95_ms, tokens_in, tokens_out, cost} "
                    "or {name, config, status: failed, error}")
    pareto: dict[str, list[str]] = Field(description="{latency, cost}: the cells on each quality-vs-x Pareto front")
    chosen: str | None = Field(description="the cell with the best metric on choose_on (None: no cell scored)")
    chosen_score: float | None = Field(description="its metric on choose_on")
    held_out: dict[str, Any] | None = Field(
        None, description="the chosen cell scored on score_on: {line, golden_set_id, run_id, value, ci, cached, status}")
    adopt: str | None = Field(None, description="the YAML that makes the chosen (or --promote) cell the configured chain")
    report: str | None = Field(None, description="the HTML report (Pareto chart and table)")
    results: str | None = Field(None, description="bakeoffs/<run_id>.parquet: one row per cell")
    promote: dict[str, Any] | None = Field(
        None, description="--promote CELL: {cell, applied: false, how}; the config is printed (adopt), not written")
    markdown: str | None = Field(None, description="--format markdown: the result as a Markdown table")


class Fusion(BaseModel):
    """One hybrid fusion setting: rrf with its constant k, or linear with the vector leg's weight."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rrf", "linear"] = "rrf"
    k: PositiveInt = 60
    weight: float = Field(default=0.7, ge=0, le=1)

    def label(self) -> str:
        return f"rrf{self.k}" if self.kind == "rrf" else f"lin{self.weight:g}"

    def eval_settings(self) -> dict:
        return ({"fusion": "rrf", "rrf_k": self.k} if self.kind == "rrf"
                else {"fusion": "linear", "fusion_weight": self.weight})


class Matrix(BaseModel):
    """The axes a bake-off crosses; every cell is one value of each. fusion applies to hybrid cells only,
    answer_prompt and llm to cells with an answer step (retrieval_only: false)."""

    model_config = ConfigDict(extra="forbid")

    retrieval: list[Literal["vector", "fts", "hybrid"]] = Field(default_factory=lambda: ["hybrid"], min_length=1)
    k: list[PositiveInt] = Field(default_factory=lambda: [5], min_length=1)
    rerank: list[Literal["none", "embedding"]] = Field(default_factory=lambda: ["none"], min_length=1)
    fusion: list[Fusion] = Field(default_factory=lambda: [Fusion()], min_length=1)
    answer_prompt: list[str] = Field(default_factory=list)
    llm: list[LLMConfig] = Field(default_factory=list)


class BakeoffSpec(BaseModel):
    """A bake-off file (README: Bake-offs). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    golden: str = "latest"  # the line (or id) every cell is scored on, when choose_on is not given
    choose_on: str | None = None  # the line the cells are compared and the best one chosen on
    score_on: str | None = None  # the line the chosen cell is then scored on (held out)
    metric: str = "ndcg@10"  # the quality the choice, the deltas' verdicts and the Pareto fronts use
    retrieval_only: bool = True
    concurrency: PositiveInt = 1  # cells evaluated at once
    baseline: str | None = None  # a cell name to compare against; None = the line's baseline run
    prices: str | None = None  # price table path (model id -> $ per 1k tokens in/out); default prices.yaml
    matrix: Matrix = Field(default_factory=Matrix)

    @model_validator(mode="after")
    def _lines(self) -> "BakeoffSpec":
        if (self.choose_on is None) != (self.score_on is None):
            raise ValueError("choose_on and score_on go together (settings chosen on one line, scored on the other)")
        if self.choose_on is not None and self.choose_on == self.score_on:
            raise ValueError("choose_on and score_on must be different lines (else the score is not held out)")
        if not self.retrieval_only and not self.matrix.answer_prompt:
            self.matrix.answer_prompt = ["answer"]
        if self.baseline is not None and self.baseline not in {c["name"] for c in expand_cells(self)}:
            raise ValueError(f"baseline: no cell named {self.baseline!r}")
        return self

    @property
    def choice_line(self) -> str:
        return self.choose_on or self.golden


def _field(loc: Sequence) -> str:
    return ".".join(str(p) for p in loc) or "(file)"


def load_bakeoff(path: str | Path) -> BakeoffSpec:
    """The bake-off file, validated; ConfigError (exit 2, one line) naming the file and the first bad field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"bakeoff {path}: cannot read it ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"bakeoff {path}: not YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"bakeoff {path}: expected a mapping with name and matrix, got {type(data).__name__}")
    try:
        return BakeoffSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"bakeoff {path}: {_field(err['loc'])}: {err['msg']}") from exc


# -- the matrix ------------------------------------------------------------------------------------------
def expand_cells(spec: BakeoffSpec) -> list[dict]:
    """The cells, in matrix order: [{name, eval: {setting: value}, llm: {...} | None}]. Fusion settings multiply
    hybrid cells only; answer prompts and LLMs multiply cells only when not retrieval-only. Names are unique."""
    m = spec.matrix
    prompts: list[str | None] = [None] if spec.retrieval_only else list(m.answer_prompt)
    llms: list[LLMConfig | None] = [None] if spec.retrieval_only or not m.llm else list(m.llm)
    cells = []
    for mode, k, rerank, prompt, llm in itertools.product(m.retrieval, m.k, m.rerank, prompts, llms):
        for fusion in (m.fusion if mode == "hybrid" else [None]):
            parts = [mode, f"k{k}"] + ([fusion.label()] if fusion and len(m.fusion) > 1 else [])
            parts += ["rerank"] if rerank != "none" else []
            parts += [prompt] if prompt and len(prompts) > 1 else []
            parts += [_slug(llm.model or llm.model_path or llm.provider)] if llm and len(llms) > 1 else []
            settings = {"retrieval": mode, "k": k, "rerank": rerank, **(fusion.eval_settings() if fusion else {})}
            if prompt:
                settings["answer_prompt"] = prompt
            cells.append({"name": "-".join(parts), "eval": settings,
                          "llm": llm.model_dump(mode="json", exclude_none=True) if llm else None})
    names = [c["name"] for c in cells]
    if len(set(names)) != len(names):  # two LLMs or fusions that label alike: number them
        cells = [{**c, "name": f"{c['name']}-{i}"} for i, c in enumerate(cells)]
    return cells


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", Path(text).name).strip("_")[:24] or "llm"


def cell_overrides(cell: Mapping) -> dict:
    """The settings overrides that make the configured chain this cell's: {eval: {...}, llm: {...}?}."""
    return {"eval": dict(cell["eval"]), **({"llm": dict(cell["llm"])} if cell.get("llm") else {})}


def promote_cell(spec: BakeoffSpec, name: str | None) -> dict | None:
    """The cell `--promote NAME` names (None when not given); ConfigError naming the cells when there is none."""
    if name is None:
        return None
    cells = expand_cells(spec)
    found = next((c for c in cells if c["name"] == name), None)
    if found is None:
        raise ConfigError(f"bakeoff --promote {name}: no such cell (have: {', '.join(c['name'] for c in cells)})")
    return found


def check_lines(lake, spec: BakeoffSpec) -> None:
    """ConfigError (before any work) when a golden line the spec names is not in the lake (reads its refs)."""
    from ragloop.tasks import promotion
    from ragloop.tasks.eval_run import resolve_golden

    refs = promotion.Refs(lake)
    for field, line in (("choose_on", spec.choose_on), ("score_on", spec.score_on),
                        ("golden", None if spec.choose_on else spec.golden)):
        if line is not None:
            try:
                resolve_golden(refs, line)
            except ConfigError as exc:
                raise ConfigError(f"bakeoff {field}: {exc}") from exc


def adopt_yaml(cell: Mapping) -> str:
    """The YAML to put in ragloop.yaml to make this cell the configured chain."""
    return yaml.safe_dump(cell_overrides(cell), sort_keys=True)


# -- prices ------------------------------------------------------------------------------------------------
def load_prices(path: str | Path | None) -> dict[str, dict[str, float]]:
    """The price table: model id -> {in, out} $ per 1k tokens. A missing default file is an empty table;
    ConfigError on a named file that is missing or a malformed entry."""
    if path is None:
        if not Path(DEFAULT_PRICES).exists():
            return {}
        path = DEFAULT_PRICES
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"prices {path}: cannot read it ({' '.join(str(exc).split())})") from exc
    table = {}
    for model, price in (data.get("models") or {}).items():
        if not isinstance(price, dict) or set(price) - {"in", "out"}:
            raise ConfigError(f"prices {path}: models.{model}: expected {{in: $ per 1k, out: $ per 1k}}")
        table[str(model)] = {"in": float(price.get("in", 0.0)), "out": float(price.get("out", 0.0))}
    return table


def cost(tokens_in: int, tokens_out: int, model: str | None, prices: Mapping[str, Mapping[str, float]],
         fallback_per_1k: float) -> float:
    """$ for these tokens at the model's price (in and out per 1k), else at monitor.price_per_1k_tokens."""
    price = prices.get(model or "") or prices.get((model or "").split("@")[0])  # a local id is "<file>@sha256:..."
    if price is None:
        return (tokens_in + tokens_out) / 1000.0 * fallback_per_1k
    return tokens_in / 1000.0 * price["in"] + tokens_out / 1000.0 * price["out"]


# -- one cell's figures ---------------------------------------------------------------------------------------
def usage(traces: Sequence[Mapping]) -> dict:
    """Per-item latency (all steps summed, ms) p50/p95 and tokens in/out over a run's traces."""
    per_item: dict[str, float] = {}
    tokens_in = tokens_out = 0
    for t in traces:
        per_item[t["qa_id"]] = per_item.get(t["qa_id"], 0.0) + float(t.get("latency_ms") or 0.0)
        tokens_in += int(t.get("prompt_tokens") or 0)
        tokens_out += int(t.get("completion_tokens") or 0)
    ms = np.asarray(list(per_item.values()) or [0.0])
    return {"latency_p50_ms": round(float(np.percentile(ms, 50)), 3), "latency_p95_ms": round(float(np.percentile(ms, 95)), 3),
            "tokens_in": tokens_in, "tokens_out": tokens_out}


def verdict(name: str, delta: Mapping | None) -> str | None:
    """better | worse (the paired delta's CI excludes 0, in the metric's direction) | same; None without a delta."""
    if not delta:
        return None
    low, high = delta["ci"]
    sign = 1 if higher_is_better(name) else -1
    if sign * low > 0 and sign * high > 0:
        return "better"
    if sign * low < 0 and sign * high < 0:
        return "worse"
    return "same"


def compare_cell(reference_rows: Sequence[Mapping] | None, rows: Sequence[Mapping], resamples: int, confidence: float,
                 seed: int) -> dict[str, dict]:
    """metric -> paired delta vs the reference run (tasks.gating.paired_deltas) with its `verdict`; {} without one.
    Rows: {qa_id, metrics: {name: value}}."""
    if not reference_rows:
        return {}
    deltas = gating.paired_deltas(reference_rows, rows, resamples, confidence, seed)
    return {m: {**d, "verdict": verdict(m, d)} for m, d in deltas.items()}


# -- choosing -------------------------------------------------------------------------------------------------
def pareto_front(points: Sequence[Mapping], quality: str, cost_key: str) -> list[str]:
    """Names of the points no other point dominates (quality at least as high AND cost at least as low, one
    strictly): the quality-vs-cost trade-offs worth considering, in ascending cost. Points: {name, quality: float,
    cost_key: float}; a point missing either value is left out. Equal points are all kept."""
    usable = [p for p in points if p.get(quality) is not None and p.get(cost_key) is not None]
    front = []
    for p in usable:
        dominated = any(o[quality] >= p[quality] and o[cost_key] <= p[cost_key]
                        and (o[quality] > p[quality] or o[cost_key] < p[cost_key]) for o in usable)
        if not dominated:
            front.append(p)
    return [p["name"] for p in sorted(front, key=lambda p: (p[cost_key], -p[quality], p["name"]))]


def choose_cell(cells: Sequence[Mapping], metric: str) -> str | None:
    """The cell with the best `metric` (its direction); ties go to the lower p50 latency, then the name.
    None when no cell scored the metric."""
    scored = [c for c in cells if c.get("status") in ("ok", "partial") and metric in (c.get("metrics") or {})]
    if not scored:
        return None
    sign = 1 if higher_is_better(metric) else -1
    best = min(scored, key=lambda c: (-sign * c["metrics"][metric], c.get("latency_p50_ms") or 0.0, c["name"]))
    return best["name"]


def bakeoff_status(cells: Sequence[Mapping]) -> str:
    """ok when every cell scored; partial when some failed; failed when none scored."""
    failed = sum(1 for c in cells if c["status"] == "failed")
    return "ok" if not failed else "failed" if failed == len(cells) else "partial"


# -- the result as Markdown and HTML ---------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def bakeoff_markdown(summary: Mapping) -> str:
    """The bake-off as a GitHub-flavoured Markdown table: per cell its metric with CI, the paired delta vs the
    reference and its verdict, latency, tokens, cost, Pareto membership; then the choice and held-out score."""
    metric, ref = summary["metric"], summary.get("reference") or {}
    lines = [f"## Bake-off `{summary['name']}`: {summary['status']}", "",
             f"Cells scored on line `{summary['choose_on']}` (golden set `{summary['golden_set_id']}`); "
             f"metric `{metric}`; compared with {ref.get('label') or 'nothing (no baseline on the line)'}.", "",
             f"| cell | {metric} | 95% CI | Δ vs reference | Δ CI | verdict | p50 ms | p95 ms | tokens in/out | cost $ | Pareto | run |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|"]
    fronts = summary.get("pareto") or {}
    for c in summary["cells"]:
        if c["status"] == "failed":
            lines.append(f"| {c['name']} | failed | | | | | | | | | | {(c.get('error') or '')[:60]} |")
            continue
        value, ci = (c.get("metrics") or {}).get(metric), (c.get("ci") or {}).get(metric)
        d = (c.get("deltas") or {}).get(metric)
        marks = [axis for axis, names in sorted(fronts.items()) if c["name"] in names]
        lines.append(f"| {c['name']}{' (reused)' if c.get('cached') else ''} | {_fmt(value)} | "
                     + (f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "") + " | "
                     + (f"{d['delta']:+.4f} | [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] | {d['verdict']}" if d else " | | ")
                     + f" | {_fmt(c.get('latency_p50_ms'), 1)} | {_fmt(c.get('latency_p95_ms'), 1)} | "
                     f"{c.get('tokens_in', 0)}/{c.get('tokens_out', 0)} | {_fmt(c.get('cost'), 6)} | "
                     f"{', '.join(marks)} | {c.get('run_id') or ''} |")
    chosen = summary.get("chosen")
    lines.append("")
    if chosen:
        lines.append(f"**Chosen on `{summary['choose_on']}`: `{chosen}`** ({metric} {_fmt(summary.get('chosen_score'))}).")
    held = summary.get("held_out")
    if held:
        ci = held.get("ci")
        lines.append(f"Scored on `{held['line']}` (held out, golden set `{held['golden_set_id']}`): {metric} "
                     f"{_fmt(held.get('value'))}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
                     + f", run {held['run_id']}.")
    lines += ["", f"_`ragloop bakeoff {summary.get('file', '')}`_"]
    return "\n".join(lines) + "\n"


def pareto_plot(summary: Mapping) -> bytes:
    """PNG: quality vs p50 latency and quality vs cost, one point per scored cell, the fronts drawn as steps."""
    from ragloop.tasks.reporting import _png, plt

    metric = summary["metric"]
    cells = [c for c in summary["cells"] if c["status"] != "failed" and metric in (c.get("metrics") or {})]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), squeeze=False)
    for ax, (axis, key, label) in zip(axes[0], (("latency", "latency_p50_ms", "p50 latency per item (ms)"),
                                                ("cost", "cost", "cost of the run ($)"))):
        front = set((summary.get("pareto") or {}).get(axis, []))
        ax.set_title(f"{metric} vs {axis}", fontsize=10)
        if len({c.get(key) or 0.0 for c in cells}) <= 1 and axis == "cost":
            # every cell costs the same (retrieval-only: $0): a column of labels on top of each other says nothing
            ax.text(0.5, 0.5, f"every cell costs ${(cells[0].get(key) or 0.0) if cells else 0.0:.6f}\n"
                    "(no LLM step, or one price): no cost trade-off", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for c in cells:
            on = c["name"] in front
            ax.scatter(c.get(key) or 0.0, c["metrics"][metric], s=46 if on else 26,
                       color="tab:red" if on else "tab:blue", zorder=3)
            ax.annotate(c["name"], (c.get(key) or 0.0, c["metrics"][metric]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        line = sorted((c for c in cells if c["name"] in front), key=lambda c: c.get(key) or 0.0)
        if line:
            ax.step([c.get(key) or 0.0 for c in line], [c["metrics"][metric] for c in line], where="post",
                    color="tab:red", alpha=0.6, label="Pareto front")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    return _png(fig)


def bakeoff_html(summary: Mapping, chart_name: str) -> str:
    """The HTML report: the Pareto chart (a PNG beside it) and the Markdown table's rows as an HTML table."""
    esc = html.escape
    metric = summary["metric"]
    rows = []
    for c in summary["cells"]:
        d = (c.get("deltas") or {}).get(metric) or {}
        ci = (c.get("ci") or {}).get(metric)
        rows.append("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in (
            c["name"], c["status"], _fmt((c.get("metrics") or {}).get(metric)),
            f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "", f"{d['delta']:+.4f}" if d else "",
            d.get("verdict") or "", _fmt(c.get("latency_p50_ms"), 1), _fmt(c.get("latency_p95_ms"), 1),
            f"{c.get('tokens_in', 0)}/{c.get('tokens_out', 0)}", _fmt(c.get("cost"), 6), c.get("run_id") or "")) + "</tr>")
    held = summary.get("held_out") or {}
    head = "".join(f"<th>{esc(h)}</th>" for h in ("cell", "status", metric, "95% CI", "Δ vs reference", "verdict",
                                                   "p50 ms", "p95 ms", "tokens in/out", "cost $", "run"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ragloop bake-off {esc(summary['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body>
<h1>Bake-off {esc(summary['name'])}: {esc(summary['status'])}</h1>
<p>Chosen on line <b>{esc(str(summary['choose_on']))}</b>: <b>{esc(str(summary.get('chosen')))}</b>
({esc(metric)} {esc(_fmt(summary.get('chosen_score')))}).
{f"Scored on held-out line <b>{esc(held['line'])}</b>: {esc(metric)} {esc(_fmt(held.get('value')))}." if held else "No held-out line (score_on not given): the choice and its score come from the same items."}
Reference: {esc((summary.get('reference') or {}).get('label') or 'none')}.</p>
<img src="{esc(chart_name)}" alt="Pareto chart: {esc(metric)} vs latency and vs cost" style="max-width:100%">
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""


# -- the lake reads of a scored cell ------------------------------------------------------------------------------
def item_metric_rows(lake, run_id: str) -> list[dict]:
    """A stored eval run's items as {qa_id, metrics: {name: value}} (reads eval/<run_id>/items.parquet); [] if gone."""
    items = lake.read_eval_items(run_id)
    return [{"qa_id": r["qa_id"], "metrics": dict(r["metrics"])} for r in items.to_pylist()] if items else []


def reference_run(spec: BakeoffSpec, cells: Sequence[Mapping], baseline_run_id: str | None) -> dict:
    """What the cells are compared with: the named baseline cell's run, else the line's baseline run, else
    nothing. {label, run_id | None}."""
    if spec.baseline is not None:
        named = next((c for c in cells if c["name"] == spec.baseline), None)
        run_id = named.get("run_id") if named else None
        return {"label": f"cell {spec.baseline} (run {run_id})", "run_id": run_id}
    if baseline_run_id:
        return {"label": f"the line's baseline run {baseline_run_id} (the serving configuration)", "run_id": baseline_run_id}
    return {"label": None, "run_id": None}


def cell_result(cell: Mapping, summary: Mapping | None, error: str | None, lake, prices: Mapping,
                fallback_per_1k: float) -> dict:
    """One cell's row: its config, run, metrics with CIs, latency p50/p95 per item (ms), tokens in/out and cost
    (reads the run's traces). A cell whose eval raised is {status: failed, error}."""
    row = {"name": cell["name"], "config": cell_overrides(cell)}
    if summary is None:
        return {**row, "status": "failed", "error": error, "run_id": None}
    traces = lake.read_traces(summary["run_id"])
    figures = usage(traces.to_pylist() if traces is not None else [])
    model = ((summary.get("lineage") or {}).get("chain") or {}).get("llm")
    return {**row, "status": summary["status"], "run_id": summary["run_id"], "cached": bool(summary.get("cached")),
            "golden_set_id": summary["golden_set_id"], "chain_hash": (summary.get("lineage") or {}).get("chain_hash"),
            "metrics": summary["metrics"], "ci": summary["ci"], **figures,
            "cost": round(cost(figures["tokens_in"], figures["tokens_out"], model, prices, fallback_per_1k), 6)}


def conclude(spec: BakeoffSpec, rows: list[dict], reference: Mapping, reference_rows: Sequence[Mapping] | None,
             lake, eval_config) -> dict:
    """Deltas vs the reference (per cell), the Pareto fronts on the spec's metric (quality vs p50 latency and
    vs cost), the chosen cell and the status; reads the cells' items. `eval_config`: resamples, confidence, seed."""
    for row in rows:
        if row["status"] != "failed" and reference_rows:
            row["deltas"] = compare_cell(reference_rows, item_metric_rows(lake, row["run_id"]),
                                         eval_config.bootstrap_resamples, eval_config.confidence, eval_config.seed)
    points = [{"name": r["name"], "q": r["metrics"].get(spec.metric), "latency": r.get("latency_p50_ms"),
               "cost": r.get("cost")} for r in rows if r["status"] != "failed"]
    if not higher_is_better(spec.metric):
        points = [{**p, "q": None if p["q"] is None else -p["q"]} for p in points]
    chosen = choose_cell(rows, spec.metric)
    return {"status": bakeoff_status(rows), "metric": spec.metric, "reference": dict(reference),
            "pareto": {"latency": pareto_front(points, "q", "latency"), "cost": pareto_front(points, "q", "cost")},
            "chosen": chosen,
            "chosen_score": next((r["metrics"][spec.metric] for r in rows if r["name"] == chosen), None),
            "adopt": adopt_yaml(next(c for c in expand_cells(spec) if c["name"] == chosen)) if chosen else None}


def held_out(line: str, summary: Mapping, metric: str) -> dict:
    """The chosen cell's score on the held-out line: {line, golden_set_id, run_id, value, ci, cached}."""
    return {"line": line, "golden_set_id": summary["golden_set_id"], "run_id": summary["run_id"],
            "value": summary["metrics"].get(metric), "ci": summary["ci"].get(metric), "cached": bool(summary.get("cached")),
            "status": summary["status"]}


def cells_table(rows: Sequence[Mapping]):
    """The cells as an Arrow table for the lake (config, metrics, ci, deltas as JSON text)."""
    import json

    import pyarrow as pa

    return pa.Table.from_pylist([
        {"cell_id": r["name"], "status": r["status"], "run_id": r.get("run_id"), "config": json.dumps(r["config"], sort_keys=True),
         "metrics": json.dumps(r.get("metrics") or {}, sort_keys=True), "ci": json.dumps(r.get("ci") or {}, sort_keys=True),
         "deltas": json.dumps(r.get("deltas") or {}, sort_keys=True), "latency_p50_ms": r.get("latency_p50_ms"),
         "latency_p95_ms": r.get("latency_p95_ms"), "tokens_in": r.get("tokens_in"), "tokens_out": r.get("tokens_out"),
         "cost": r.get("cost"), "error": r.get("error")} for r in rows],
        schema=pa.schema([("cell_id", pa.string()), ("status", pa.string()), ("run_id", pa.string()),
                          ("config", pa.string()), ("metrics", pa.string()), ("ci", pa.string()), ("deltas", pa.string()),
                          ("latency_p50_ms", pa.float64()), ("latency_p95_ms", pa.float64()), ("tokens_in", pa.int64()),
                          ("tokens_out", pa.int64()), ("cost", pa.float64()), ("error", pa.string())]))
