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
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from ragloop.tasks import gating
from ragloop.tasks.metrics import higher_is_better
from ragloop.tasks.settings import ChunkingConfig, ConfigError, EmbeddingConfig, LLMConfig
from ragloop.tasks.summaries import StageSummary

DEFAULT_PRICES = "prices.yaml"


class BakeoffSummary(StageSummary):
    """What `ragloop bakeoff` returns (and records as its run's outputs)."""

    status: Literal["ok", "partial", "failed", "gate_failed", "gate_inconclusive"] = Field(
        description="ok: every cell scored; partial: some failed; failed: none (or --promote's cell could not be "
                    "scored); gate_failed / gate_inconclusive: --promote refused by the gate (exit 3)")
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
                    "verdict: better | worse | same}}, latency_p50_ms, latency_p95_ms, tokens_in, tokens_out, cost, "
                    "index: {table, version, role: serving | bakeoff, chunks, bytes, build_s}, evidence: {chunk_level: "
                    "none | matched | partial | unmatchable, items, scored, note}, comparable, note} or {name, config, "
                    "status: failed, error, index}")
    pareto: dict[str, list[str]] = Field(description="{latency, cost}: the cells on each quality-vs-x Pareto front")
    chosen: str | None = Field(description="the cell with the best metric on choose_on (None: no cell scored)")
    chosen_score: float | None = Field(description="its metric on choose_on")
    held_out: dict[str, Any] | None = Field(
        None, description="the chosen cell scored on score_on: {line, golden_set_id, run_id, value, ci, cached, status}")
    adopt: str | None = Field(None, description="the YAML that makes the chosen (or --promote) cell the configured chain")
    tables: list[dict[str, Any]] | None = Field(
        None, description="the indexes the cells read: [{table, version, role, embedding, chunking, chunks, bytes, "
                          "build_s, index_run_id, cells, error}]")
    report: str | None = Field(None, description="the HTML report (Pareto chart and table)")
    results: str | None = Field(None, description="bakeoffs/<run_id>.parquet: one row per cell")
    promote: dict[str, Any] | None = Field(
        None, description="--promote CELL: {cell, line, run_id, gate: {status, reasons}, applied, reason, baseline_moved, "
                          "config: {file, written, diff}, next}; applied only when the cell's eval on the gate line "
                          "(score_on, else choose_on) passed the gate against the line's baseline")
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
    # Index axes: settings over the configured `embedding` / `chunking` sections, each with an optional
    # `label` (the cell name's part; else made of the values). Each (embedding, chunking) pair reads its own
    # table: the served one when it is the served pair, else a bake-off table built from the served snapshot.
    embedding: list[dict[str, Any]] = Field(default_factory=list)
    chunking: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("embedding")
    @classmethod
    def _embedders(cls, entries: list[dict]) -> list[dict]:
        return [_candidate(EmbeddingConfig, entry, i) for i, entry in enumerate(entries)]

    @field_validator("chunking")
    @classmethod
    def _chunkers(cls, entries: list[dict]) -> list[dict]:
        return [_candidate(ChunkingConfig, entry, i) for i, entry in enumerate(entries)]


def _candidate(section: type[BaseModel], entry: dict, index: int) -> dict:
    """An index-axis entry checked against its settings section (unknown keys and bad values fail naming them)."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry {index}: expected a mapping of settings, got {entry!r}")
    label = entry.get("label")
    if label is not None and not (isinstance(label, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", label)):
        raise ValueError(f"entry {index}: label: letters, digits, _ . - (got {label!r})")
    try:
        section.model_validate({k: v for k, v in entry.items() if k != "label"})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"entry {index}: {_field(err['loc'])}: {err['msg']}") from None
    return entry


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
        raise ConfigError(f"bakeoff {path}: {_field(err['loc'])}: {err['msg'].removeprefix('Value error, ')}") from exc


def check_metric(spec: BakeoffSpec, metric_ks: Sequence[int]) -> None:
    """ConfigError (before any work) when no cell could report `metric`: a name no metric is declared under
    (tasks.metrics, extensions included: call after the settings loaded them), or a cutoff no cell computes
    (eval.metric_ks up to each cell's k, and k itself: `ndcg@10` with k 5 is never computed, so every cell
    would be "not measured" and nothing chosen)."""
    from ragloop.tasks.metrics import METRIC_INFO, base_name, metric_info

    if metric_info(spec.metric) is None:
        raise ConfigError(f"bakeoff: metric: unknown metric {spec.metric!r} (declared: {', '.join(METRIC_INFO)})")
    cutoff = spec.metric.partition("@")[2]
    computed = sorted({c for k in spec.matrix.k for c in metric_ks if c <= k} | set(spec.matrix.k))
    if cutoff and (not cutoff.isdigit() or int(cutoff) not in computed):
        raise ConfigError(f"bakeoff: metric: no cell computes {spec.metric} (cutoffs with matrix.k {spec.matrix.k} "
                          f"and eval.metric_ks: {', '.join(map(str, computed))}): choose "
                          f"{base_name(spec.metric)}@{computed[-1]} or add a k")


# -- the matrix ------------------------------------------------------------------------------------------
def expand_cells(spec: BakeoffSpec) -> list[dict]:
    """The cells, in matrix order: [{name, eval: {setting: value}, llm: {...} | None, embedding: {...} | None,
    chunking: {...} | None}] (embedding and chunking without their labels; None = the configured section).
    Fusion settings multiply hybrid cells only; answer prompts and LLMs multiply cells only when not
    retrieval-only. An axis with one entry adds nothing to the names; names are unique."""
    m = spec.matrix
    prompts: list[str | None] = [None] if spec.retrieval_only else list(m.answer_prompt)
    llms: list[LLMConfig | None] = [None] if spec.retrieval_only or not m.llm else list(m.llm)
    embedders: list[dict | None] = list(m.embedding) or [None]
    chunkers: list[dict | None] = list(m.chunking) or [None]
    cells = []
    for embedding, chunking, mode, k, rerank, prompt, llm in itertools.product(
            embedders, chunkers, m.retrieval, m.k, m.rerank, prompts, llms):
        for fusion in (m.fusion if mode == "hybrid" else [None]):
            parts = [axis_label(embedding)] if len(embedders) > 1 else []
            parts += [axis_label(chunking)] if len(chunkers) > 1 else []
            parts += [mode, f"k{k}"] + ([fusion.label()] if fusion and len(m.fusion) > 1 else [])
            parts += ["rerank"] if rerank != "none" else []
            parts += [prompt] if prompt and len(prompts) > 1 else []
            parts += [_slug(llm.model or llm.model_path or llm.provider)] if llm and len(llms) > 1 else []
            settings = {"retrieval": mode, "k": k, "rerank": rerank, **(fusion.eval_settings() if fusion else {})}
            if prompt:
                settings["answer_prompt"] = prompt
            cells.append({"name": "-".join(parts), "eval": settings,
                          "llm": llm.model_dump(mode="json", exclude_none=True) if llm else None,
                          "embedding": _settings_of(embedding), "chunking": _settings_of(chunking)})
    names = [c["name"] for c in cells]
    if len(set(names)) != len(names):  # two LLMs or fusions that label alike: number them
        cells = [{**c, "name": f"{c['name']}-{i}"} for i, c in enumerate(cells)]
    return cells


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", Path(text).name).strip("_")[:24] or "llm"


def _settings_of(entry: Mapping | None) -> dict | None:
    return None if entry is None else {k: v for k, v in entry.items() if k != "label"}


def axis_label(entry: Mapping | None) -> str:
    """An index-axis entry's part of a cell name: its `label`, else its values joined by '-' ('default': {})."""
    if entry is None:
        return "configured"
    if entry.get("label"):
        return str(entry["label"])
    return "-".join(_slug(str(v)) for k, v in entry.items() if k != "label") or "default"


def cell_overrides(cell: Mapping) -> dict:
    """The settings overrides that make the configured chain this cell's: {eval: {...}, llm?, embedding?,
    chunking?} (the last three only where the cell sets them)."""
    return {"eval": dict(cell["eval"]),
            **{section: dict(cell[section]) for section in ("llm", "embedding", "chunking") if cell.get(section)}}


def index_overrides(cell: Mapping) -> dict:
    """The settings that choose a cell's table: {embedding?, chunking?} (empty: the configured ones)."""
    return {section: dict(cell[section]) for section in ("embedding", "chunking") if cell.get(section)}


def table_key(cell: Mapping) -> str:
    """Cells with equal keys read the same table (the same embedding and chunking settings)."""
    import json

    return json.dumps(index_overrides(cell), sort_keys=True)


def table_groups(cells: Sequence[Mapping]) -> dict[str, dict]:
    """{table_key: {overrides: {embedding?, chunking?}, cells: [names]}}, in the order cells first use them."""
    groups: dict[str, dict] = {}
    for cell in cells:
        group = groups.setdefault(table_key(cell), {"overrides": index_overrides(cell), "cells": []})
        group["cells"].append(cell["name"])
    return groups


def plan_table(serving, embedder_slug: str, chunker_hash: str) -> dict:
    """Which table a cell's (embedder, chunker) pair reads: {role: serving, table} when it is the served pair
    (the served table; a served ref without a chunker hash matches on the table), else {role: bakeoff, table:
    tasks.storage.bakeoff_table_name}, built by the index path from the served snapshot and never served, so
    the lake's serving table and its versions are not touched. `serving`: promotion.ServingRef; ConfigError
    when the lake serves nothing yet (run `ragloop index` or `import-beir` first)."""
    from ragloop.tasks.storage import bakeoff_table_name, chunks_table_name

    if serving is None:
        raise ConfigError("bakeoff: the lake has no served index yet: run `ragloop index` (or import-beir) first")
    if serving.table == chunks_table_name(embedder_slug) and serving.chunker_hash in (None, chunker_hash):
        return {"role": "serving", "table": serving.table}
    return {"role": "bakeoff", "table": bakeoff_table_name(embedder_slug, chunker_hash)}


def served_chunking(lake, serving) -> dict | None:
    """The chunking settings the served table was built with (its index run's lineage), None when unknown."""
    record = lake.read_run(serving.run_id) if serving is not None and serving.run_id else None
    chunker = ((record or {}).get("lineage") or {}).get("chunker")
    return {k: chunker[k] for k in ChunkingConfig.model_fields if k in chunker} if chunker else None


def pin_chunking(cells: Sequence[Mapping], served: Mapping | None, configured: ChunkingConfig) -> list[dict]:
    """Cells without a chunking entry take the served table's chunking when it differs from the configured
    one (an index imported with `--chunking none` under a `markdown` config): as `ragloop eval` scores the
    served table, they read it, and an embedder axis changes one thing only (its tables use the served
    chunker). Their settings then say so, so `--promote` writes what was measured."""
    if served is None:
        return [dict(c) for c in cells]
    try:
        if ChunkingConfig.model_validate(dict(served)) == configured:
            return [dict(c) for c in cells]
    except ValidationError:
        return [dict(c) for c in cells]
    return [{**c, "chunking": c.get("chunking") or dict(served)} for c in cells]


def source_snapshot(lake, serving) -> str:
    """The documents snapshot a bake-off table is built from: the served table's (its index run's lineage),
    else the lake's latest; ConfigError when neither is known."""
    record = lake.read_run(serving.run_id) if serving.run_id else None
    snapshot = ((record or {}).get("lineage") or {}).get("snapshot_id") or (lake.read_ref("documents") or {}).get("snapshot_id")
    if not snapshot:
        raise ConfigError("bakeoff: the served index's documents snapshot is unknown: run `ragloop index` first")
    return snapshot


def index_figures(lake, ref, role: str) -> dict:
    """A table's figures for the result: {table, version, role, chunks, bytes (on disk, every version kept),
    build_s (wall seconds of the index run that built this version, ingest left out; None when unknown),
    index_run_id}. `ref`: promotion.ServingRef (reads the index run's record and the table's files)."""
    record = lake.read_run(ref.run_id) if ref.run_id else None
    outputs = (record or {}).get("outputs") or {}
    timings = {k: v for k, v in (outputs.get("timings_s") or {}).items() if k != "ingest"}
    return {"table": ref.table, "version": ref.version, "role": role, "index_run_id": ref.run_id,
            "chunks": (outputs.get("chunks") or {}).get("total"), "bytes": lake.table_bytes(ref.table),
            "build_s": round(sum(timings.values()), 3) if timings else None}


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


# -- --promote CELL: through the gate, then into the config file ------------------------------------------
def gate_line(spec: BakeoffSpec) -> str:
    """The line `--promote` gates on: the held-out score_on line (a score that did not choose the cell), else
    the line the cells were scored on."""
    return spec.score_on or spec.choice_line


def env_conflicts(overrides: Mapping[str, Mapping], environ: Mapping[str, str]) -> list[str]:
    """RAGLOOP_* variables that would override a setting `--promote` writes to the config file (so the
    configured chain would not be the cell's); a section given whole as one variable counts too."""
    found = []
    for section, values in overrides.items():
        whole = f"RAGLOOP_{section.upper()}"
        found += [whole] if whole in environ else []
        found += [f"{whole}__{key.upper()}" for key in values if f"{whole}__{key.upper()}" in environ]
    return found


def promote_verdict(summary: Mapping | None, error: str | None, line: str) -> dict:
    """Whether the cell's eval on the gate line lets it become the configured chain: {ok, status, reason,
    gate: {status, reasons}}. Passed, or no baseline on the line yet (the run becomes it, as with
    `ragloop eval --promote`), may; failed and inconclusive refuse (status gate_failed / gate_inconclusive,
    exit 3, as the eval gate's); an eval that raised or whose every item failed refuses with status failed."""
    if summary is None:
        return {"ok": False, "status": "failed", "reason": f"the cell's eval on line {line} failed: {error}", "gate": None}
    gate = {"status": summary["gate"]["status"], "reasons": list(summary["gate"].get("reasons") or [])}
    shown = gate["reasons"][:2]  # the rest are in gate.reasons: a refusal should read in one breath
    why = ("; ".join(shown) + (f" (and {len(gate['reasons']) - 2} more in promote.gate.reasons)"
                               if len(gate["reasons"]) > 2 else "")) or "no reason given"
    if summary["status"] == "failed":
        return {"ok": False, "status": "failed", "reason": f"every item of the cell's eval on line {line} failed", "gate": gate}
    if gate["status"] == "passed":
        return {"ok": True, "status": "ok", "reason": f"gate passed on line {line} against its baseline "
                                                        f"{summary.get('baseline_run_id')}", "gate": gate}
    if gate["status"] == "no_baseline":
        return {"ok": True, "status": "ok", "reason": f"no baseline on line {line} yet: the cell's run becomes it", "gate": gate}
    if gate["status"] == "inconclusive":
        return {"ok": False, "status": "gate_inconclusive",
                "reason": f"gate inconclusive on line {line} (underpowered: nothing promoted): {why}", "gate": gate}
    return {"ok": False, "status": "gate_failed", "reason": f"gate failed on line {line}: {why}", "gate": gate}


def _round_trip():
    """ruamel.yaml in round-trip mode, set to write ragloop.yaml back as it was (comments, column-aligned
    comments, flow lists, `null`) but for the values changed."""
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import SafeRepresenter

    rt = YAML()
    rt.width = 4096  # never re-wrap a long line
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(type(None), SafeRepresenter.represent_none)  # `null`, not the round trip's ""
    return rt


def edited_config(text: str, overrides: Mapping[str, Mapping]) -> str:
    """The config file's text with each {section: {key: value}} set, everything else as it was (pure).
    ConfigError when the text is not a YAML mapping or a section is not one."""
    import io

    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    rt = _round_trip()
    try:
        data = rt.load(text) if text.strip() else CommentedMap()
    except YAMLError as exc:
        raise ConfigError(f"bakeoff --promote: the config file is not YAML ({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(data, dict):
        raise ConfigError("bakeoff --promote: the config file's top level is not a mapping")
    for section, values in overrides.items():
        if data.get(section) is None:
            data[section] = CommentedMap()
        if not isinstance(data[section], dict):
            raise ConfigError(f"bakeoff --promote: {section} in the config file is not a mapping")
        for key, value in values.items():
            data[section][key] = value
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()


def config_diff(before: str, after: str, name: str) -> str:
    """A unified diff of the config file (what a reviewer reads); '' when nothing changes."""
    import difflib

    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{name}", f"b/{name}"))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, then rename it into place (a reader sees old or new, whole)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_file(config_path: str | None) -> Path:
    """The config file `--promote` edits: --config, else $RAGLOOP_CONFIG, else ./ragloop.yaml (created when
    missing), as the settings read them."""
    import os

    from ragloop.tasks.settings import CONFIG_ENV_VAR, DEFAULT_CONFIG_FILE

    return Path(config_path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE)


def check_promote(spec: BakeoffSpec, name: str | None, config_path: str | None, environ: Mapping[str, str]) -> dict | None:
    """Before any work: the cell `--promote NAME` names (None without --promote), and ConfigError when it
    cannot become the configured chain whatever the gate says: no such cell, a RAGLOOP_* variable that
    would override what is written, or a config file that is not writable YAML."""
    import os

    cell = promote_cell(spec, name)
    if cell is None:
        return None
    # a cell without a chunking entry may be given the served chunking (pin_chunking), which is written too
    conflicts = env_conflicts({"chunking": dict.fromkeys(ChunkingConfig.model_fields), **cell_overrides(cell)}, environ)
    if conflicts:
        raise ConfigError(f"bakeoff --promote {name}: {', '.join(conflicts)} would override what is written to the config "
                          "file: unset it first")
    path = config_file(config_path)
    edited_config(path.read_text(encoding="utf-8") if path.exists() else "", cell_overrides(cell))
    folder = path.parent if str(path.parent) else Path(".")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise ConfigError(f"bakeoff --promote {name}: {path} is not writable")
    return cell


def moves_baseline(role: str, baseline, run_id: str) -> bool:
    """Whether a cell that passed the gate also becomes its line's baseline: only a cell on the served table
    (a bake-off table is not served, tasks.promotion.BAKEOFF_TABLE_NOT_SERVED) that is not the baseline yet.
    `baseline`: the line's promotion.Promotion or None."""
    return role == "serving" and (baseline is None or baseline.run_id != run_id)


def after_promote(result: Mapping, promoted: Mapping, cell: Mapping) -> dict:
    """What --promote changes in the bake-off's result: the adopted cell's YAML when applied, else the status
    that refused it (gate_failed / gate_inconclusive exit 3, failed exit 1)."""
    return {"adopt": adopt_yaml(cell)} if promoted["applied"] else {"status": promoted["status"]}


def table_rows(groups: Mapping[str, Mapping], tables: Mapping[str, Mapping]) -> list[dict]:
    """The result's `tables`: per (embedding, chunking) pair its index figures, settings, cells and error."""
    return [{**tables[key]["index"], **group["overrides"], "cells": list(group["cells"]),
             **({"error": tables[key]["error"]} if tables[key]["error"] else {})} for key, group in groups.items()]


def check_tables(cells: Sequence[Mapping], config_path: str | None, lake: str | None, models) -> None:
    """Before any work: every (embedding, chunking) pair's settings load and its chunker fits its embedder
    (a chunk size the model would truncate fails here, not after an hour of indexing). ConfigError naming the
    pair's first cell. `models`: tasks.providers.Providers (loads each embedder's tokenizer, not its weights)."""
    from ragloop.tasks.index_run import build_chunker
    from ragloop.tasks.settings import load_settings

    for group in table_groups(cells).values():
        try:
            settings = load_settings(config_path, {**group["overrides"], "lake": lake})
            build_chunker(settings.chunking, models.build_embedder(settings.embedding))
        except ConfigError as exc:
            raise ConfigError(f"bakeoff: the index of cell {group['cells'][0]} ({group['overrides'] or 'configured'}): "
                              f"{exc}") from exc


def next_steps(role: str, cell: str) -> str | None:
    """What is left to do by hand after a cell became the configured chain (None: nothing)."""
    if role != "bakeoff":
        return None
    return (f"cell {cell} read a bake-off table (another embedder or chunker than the served one), which is never served: "
            "`ragloop index` now builds it as the candidate index, and `ragloop eval --promote` (or the nightly) gates it "
            "against the baseline and serves it")


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
    Any scored cell competes, whatever its own gate said against the line's baseline (gate_failed is a verdict,
    not a failure); cells not comparable on the metric (cell_result's `comparable`) are left out. None when no
    cell scored it."""
    scored = [c for c in cells if c.get("status") not in (None, "failed") and metric in (c.get("metrics") or {})
              and c.get("comparable", True)]
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
    indexes = index_table(summary)
    if indexes:
        lines += ["", "| index | role | embedding | chunking | chunks | size MB | build s | cells |",
                  "|---|---|---|---|---:|---:|---:|---|"]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in indexes]
    notes = cell_notes(summary)
    if notes:
        lines += [""] + [f"- `{name}`: {note}" for name, note in notes]
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
    promote = summary.get("promote")
    if promote:
        lines.append(f"`--promote {promote['cell']}`: " + ("**applied**" if promote["applied"] else "**refused**")
                     + f" ({promote['reason']}).")
    lines += ["", f"_`ragloop bakeoff {summary.get('file', '')}`_"]
    return "\n".join(lines) + "\n"


def index_table(summary: Mapping) -> list[list[str]]:
    """Rows [table, role, embedding, chunking, chunks, MB, build s, cells] of the indexes the cells read, when
    the bake-off has an index axis or reads a bake-off table ([] when every cell read the served table)."""
    tables = summary.get("tables") or []
    if len(tables) < 2 and not any(t.get("role") == "bakeoff" for t in tables):
        return []
    settings = lambda t, section: ", ".join(f"{k}={v}" for k, v in (t.get(section) or {}).items()) or "configured"  # noqa: E731
    return [[t.get("table") or "failed", t.get("role") or "", settings(t, "embedding"), settings(t, "chunking"),
             _fmt(t.get("chunks")), "" if t.get("bytes") is None else f"{t['bytes'] / 1e6:.1f}",
             "" if t.get("build_s") is None else f"{t['build_s']:.1f}",
             ", ".join(t.get("cells") or []) if not t.get("error") else f"failed: {t['error'][:80]}"] for t in tables]


def cell_notes(summary: Mapping) -> list[tuple[str, str]]:
    """(cell, note) for cells not comparable on the metric or whose chunk-level evidence did not match."""
    out = []
    for c in summary["cells"]:
        note = c.get("note") or (c.get("evidence") or {}).get("note")
        if note:
            out.append((c["name"], note))
    return out


def label_offsets(points: Sequence[tuple[float, float, int]], height: float = 10.0, step: float = 11.0) -> list[float]:
    """Vertical offsets (points) for text labels at display positions (x, y, width), so no two overlap: each
    label, taken bottom-up, moves up by `step` until its box [x, x + width] x [y + off, y + off + height]
    clears every box placed before it (pure; deterministic)."""
    placed: list[tuple[float, float, float, float]] = []
    offsets = [0.0] * len(points)
    for i in sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0])):
        x, y, width = points[i]
        off = 3.0
        while any(x < px + pw and px < x + width and y + off < py + ph and py < y + off + height
                  for px, py, pw, ph in placed):
            off += step
        offsets[i] = off
        placed.append((x, y + off, width, height))
    return offsets


def pareto_plot(summary: Mapping) -> bytes:
    """PNG: quality vs p50 latency and quality vs cost, one point per comparable scored cell, the fronts drawn as
    steps, labels moved apart so none hides another. When every cell costs the same (retrieval-only cells: $0)
    the cost panel says so in one line and the latency panel takes the width."""
    from ragloop.tasks.reporting import _png, plt

    metric = summary["metric"]
    cells = [c for c in summary["cells"] if c["status"] != "failed" and metric in (c.get("metrics") or {})
             and c.get("comparable", True)]
    flat_cost = len({c.get("cost") or 0.0 for c in cells}) <= 1
    panels = [("latency", "latency_p50_ms", "p50 latency per item (ms)")]
    if not flat_cost:
        panels.append(("cost", "cost", "cost of the run ($)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(12 if flat_cost else 14, 5.2), squeeze=False)
    for ax, (axis, key, label) in zip(axes[0], panels):
        front = set((summary.get("pareto") or {}).get(axis, []))
        title = f"{metric} vs {axis} ({len(cells)} cells; red: the Pareto front"
        title += f"; chosen: {summary.get('chosen')})" if summary.get("chosen") else ")"
        if flat_cost:
            title += f"\nevery cell costs ${(cells[0].get('cost') or 0.0) if cells else 0.0:.6f}: no cost trade-off to chart"
        ax.set_title(title, fontsize=10)
        xs = [c.get(key) or 0.0 for c in cells]
        ys = [c["metrics"][metric] for c in cells]
        for c, x, y in zip(cells, xs, ys):
            on = c["name"] in front
            ax.scatter(x, y, s=60 if on else 28, color="tab:red" if on else "tab:blue", zorder=3,
                       edgecolor="black" if c["name"] == summary.get("chosen") else "none", linewidth=1.2)
        line = sorted((c for c in cells if c["name"] in front), key=lambda c: c.get(key) or 0.0)
        if line:
            ax.step([c.get(key) or 0.0 for c in line], [c["metrics"][metric] for c in line], where="post",
                    color="tab:red", alpha=0.6, label="Pareto front")
            ax.legend(loc="lower right", fontsize=8)
        if xs:
            span = (max(xs) - min(xs)) or 1.0
            ax.set_xlim(min(xs) - 0.05 * span, max(xs) + 0.45 * span)  # room for the labels on the right
            yspan = (max(ys) - min(ys)) or 0.01
            ax.set_ylim(min(ys) - 0.08 * yspan, max(ys) + 0.25 * yspan)
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        fig.canvas.draw()  # the transforms below need the final limits
        to_px = ax.transData.transform
        size = 7
        display = [(*to_px((x, y)), len(c["name"]) * size * 0.62 * fig.dpi / 72) for c, x, y in zip(cells, xs, ys)]
        offsets = label_offsets([(px + 4, py, w) for px, py, w in display], height=size * 1.3 * fig.dpi / 72,
                                step=size * 1.4 * fig.dpi / 72)
        for c, x, y, off in zip(cells, xs, ys, offsets):
            ax.annotate(c["name"], (x, y), fontsize=size, xytext=(4, off * 72 / fig.dpi), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if off > 4 else None,
                        fontweight="bold" if c["name"] == summary.get("chosen") else "normal")
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
    held_ci = f" [{held['ci'][0]:.4f}, {held['ci'][1]:.4f}]" if held.get("ci") else ""
    indexes = index_table(summary)
    index_html = "" if not indexes else (
        "<h2>Indexes</h2><table class=\"text\"><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in (
            "table", "role", "embedding", "chunking", "chunks", "size MB", "build s", "cells")) + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in indexes) + "</tbody></table>")
    notes_html = "".join(f"<li><b>{esc(name)}</b>: {esc(note)}</li>" for name, note in cell_notes(summary))
    promote = summary.get("promote")
    promote_html = "" if not promote else (
        f"<p><b>--promote {esc(promote['cell'])}</b>: {'applied' if promote['applied'] else 'refused'} "
        f"({esc(promote['reason'])}).</p>"
        + (f"<pre>{esc(promote['config']['diff'])}</pre>" if promote.get("config") and promote["config"].get("diff") else ""))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ragloop bake-off {esc(summary['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}table.text td{{text-align:left}}</style>
</head><body>
<h1>Bake-off {esc(summary['name'])}: {esc(summary['status'])}</h1>
<p>Chosen on line <b>{esc(str(summary['choose_on']))}</b>: <b>{esc(str(summary.get('chosen')))}</b>
({esc(metric)} {esc(_fmt(summary.get('chosen_score')))}).
{f"Scored on held-out line <b>{esc(held['line'])}</b>: {esc(metric)} {esc(_fmt(held.get('value')))}{held_ci}." if held else "No held-out line (score_on not given): the choice and its score come from the same items."}
Reference: {esc((summary.get('reference') or {}).get('label') or 'none')}.</p>
<img src="{esc(chart_name)}" alt="Pareto chart: {esc(metric)} vs latency and vs cost" style="max-width:100%">
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
{f"<ul>{notes_html}</ul>" if notes_html else ""}
{index_html}
{promote_html}
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


def chunk_reference_items(golden_rows: Sequence[Mapping]) -> int:
    """Active golden items with chunk-level references (synthetic and curated sets; a BEIR import has none)."""
    return sum(1 for r in golden_rows if r.get("status") == "active" and r.get("reference_chunk_ids"))


def chunk_evidence(summary: Mapping, with_chunk_refs: int, table: str | None) -> dict:
    """Whether a cell could score the golden set's chunk-level evidence: {chunk_level, items, scored, note}.

    Chunk ids are content hashes over the chunker, so a table built by another chunker than the golden
    set's holds none of its reference chunks: the eval leaves those items out of the chunk_* metrics (their
    references are stale) and scores documents only. chunk_level: none (the set has no chunk references),
    matched (every such item scored at chunk level), partial (some), unmatchable (none)."""
    if not with_chunk_refs:
        return {"chunk_level": "none", "items": 0, "scored": 0, "note": None}
    n = summary.get("n") or {}
    scored = max((v for m, v in n.items() if m.startswith("chunk_")), default=0)
    if scored >= with_chunk_refs:
        return {"chunk_level": "matched", "items": with_chunk_refs, "scored": scored, "note": None}
    kind = "unmatchable" if scored == 0 else "partial"
    return {"chunk_level": kind, "items": with_chunk_refs, "scored": scored,
            "note": f"chunk-level evidence {kind}: {with_chunk_refs - scored} of {with_chunk_refs} items reference chunks "
                    f"that table {table} does not hold (another chunker, or a stale golden set); chunk_* metrics "
                    f"{'not scored' if kind == 'unmatchable' else f'rest on {scored} items only'}; document-level metrics "
                    "are scored on every item"}


def comparability(metric: str, metrics: Mapping, evidence: Mapping) -> tuple[bool, str | None]:
    """(comparable, why not): a cell is set beside the others on `metric` only when it measured it, and, for
    a chunk-level metric, on every item with chunk references (else its score is over other questions)."""
    if metric.startswith("chunk_") and evidence["chunk_level"] in ("partial", "unmatchable"):
        return False, f"{metric}: {evidence['note']}"
    if metric not in metrics:
        return False, f"{metric} not measured (a cut-off above the cell's k, or no item carries it)"
    return True, None


def cell_result(cell: Mapping, summary: Mapping | None, error: str | None, lake, prices: Mapping,
                fallback_per_1k: float, index: Mapping | None = None, with_chunk_refs: int = 0,
                metric: str | None = None) -> dict:
    """One cell's row: its config, run, metrics with CIs, latency p50/p95 per item (ms), tokens in/out and cost
    (reads the run's traces), its index figures (`index`), the golden set's chunk-level evidence it could
    score (chunk_evidence) and whether it is comparable on `metric`. A cell whose eval raised is
    {status: failed, error}."""
    row = {"name": cell["name"], "config": cell_overrides(cell), **({"index": dict(index)} if index else {})}
    if summary is None:
        return {**row, "status": "failed", "error": error, "run_id": None}
    traces = lake.read_traces(summary["run_id"])
    figures = usage(traces.to_pylist() if traces is not None else [])
    model = ((summary.get("lineage") or {}).get("chain") or {}).get("llm")
    evidence = chunk_evidence(summary, with_chunk_refs, (index or {}).get("table"))
    comparable, note = comparability(metric, summary["metrics"], evidence) if metric else (True, None)
    return {**row, "status": summary["status"], "run_id": summary["run_id"], "cached": bool(summary.get("cached")),
            "golden_set_id": summary["golden_set_id"], "chain_hash": (summary.get("lineage") or {}).get("chain_hash"),
            "metrics": summary["metrics"], "ci": summary["ci"], **figures,
            "cost": round(cost(figures["tokens_in"], figures["tokens_out"], model, prices, fallback_per_1k), 6),
            "evidence": evidence, "comparable": comparable, "note": note}


def conclude(spec: BakeoffSpec, rows: list[dict], reference: Mapping, reference_rows: Sequence[Mapping] | None,
             lake, eval_config) -> dict:
    """Deltas vs the reference (per cell), the Pareto fronts on the spec's metric (quality vs p50 latency and
    vs cost), the chosen cell and the status; reads the cells' items. `eval_config`: resamples, confidence, seed."""
    for row in rows:
        if row["status"] != "failed" and reference_rows:
            row["deltas"] = compare_cell(reference_rows, item_metric_rows(lake, row["run_id"]),
                                         eval_config.bootstrap_resamples, eval_config.confidence, eval_config.seed)
    points = [{"name": r["name"], "q": r["metrics"].get(spec.metric), "latency": r.get("latency_p50_ms"),
               "cost": r.get("cost")} for r in rows if r["status"] != "failed" and r.get("comparable", True)]
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
         "cost": r.get("cost"), "error": r.get("error"), "table": (r.get("index") or {}).get("table"),
         "evidence": json.dumps(r.get("evidence") or {}, sort_keys=True), "comparable": r.get("comparable")} for r in rows],
        schema=pa.schema([("cell_id", pa.string()), ("status", pa.string()), ("run_id", pa.string()),
                          ("config", pa.string()), ("metrics", pa.string()), ("ci", pa.string()), ("deltas", pa.string()),
                          ("latency_p50_ms", pa.float64()), ("latency_p95_ms", pa.float64()), ("tokens_in", pa.int64()),
                          ("tokens_out", pa.int64()), ("cost", pa.float64()), ("error", pa.string()),
                          ("table", pa.string()), ("evidence", pa.string()), ("comparable", pa.bool_())]))
