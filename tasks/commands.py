"""The commands that are not stage runs: compare, lineage, rollback, promote, golden list/use/show, runs
and prompts check, each a plain function returning its typed summary (lake I/O; no prefect, no model).

A problem the user can fix (an unknown run, line or golden set, nothing to roll back to, a run that may
not be promoted) raises ConfigError (exit 2). The CLI prints `model_dump(mode="json")`; `prompts check
--emit` sends its Prefect events from flows/cli.py. Heavy imports (numpy/scipy via tasks.gating, the
prompt templates) are made on call, so the read-only commands stay light (tests/flows/test_cli_read_only.py).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ragloop.tasks import promotion
from ragloop.tasks.settings import ConfigError, EvalConfig, GateConfig
from ragloop.tasks.storage import Lake
from ragloop.tasks.summaries import CommandSummary, SummaryModel

# Lineage keys that differ between any two runs: not worth listing as a change.
UNCOMPARED_LINEAGE = ("git_commit", "eval_cache_key")
GOLDEN_ITEM_FIELDS = ("qa_id", "question", "qa_type", "persona", "status", "review", "reference_answer",
                      "reference_chunk_ids", "reference_doc_ids", "generator", "created_at")


class CompareSummary(CommandSummary):
    """What `compare RUN_A RUN_B` returns: per-metric paired deltas (B - A) on the questions both runs scored."""

    golden_set_id: str | None = Field(description="run B's golden set")
    golden_set_ids: dict[str, str | None] = Field(description="{a, b}: each run's golden set (they may differ)")
    shared_items: int = Field(description="questions (qa_ids) both runs scored: the pairs")
    changed_questions: int = Field(description="shared qa_ids whose question text differs between the runs "
                                               "(edited in the golden set between them): paired, but not the same question")
    items: dict[str, int] = Field(description="{a, b}: items each run scored")
    run_a: str = Field(description="the baseline run id")
    run_b: str = Field(description="the candidate run id")
    deltas: dict[str, dict[str, Any]] = Field(
        description="{metric: {baseline, candidate (means over the pairs), delta (candidate - baseline), ci [low, high] "
                    "of the paired mean delta (eval.confidence, bootstrap), n (pairs), sd (of the paired differences)}}")
    not_compared: dict[str, list[str]] = Field(description="{baseline_only, candidate_only}: metrics only one run measured")
    lineage_changes: dict[str, dict[str, Any]] = Field(
        description="{lineage key: {a, b}}: what differs between the runs' lineages (git commit and cache key left out)")
    gate: dict[str, Any] = Field(
        description="the gate (tasks.gating.check_gate) applied to B with A as its baseline: {status, reasons, warnings, "
                    "paired_items, gated, max_drop, power, ungated, verdicts: {metric: passed | failed | inconclusive}}")


class LineageSummary(CommandSummary):
    """What `lineage RUN_ID` returns: the run's manifest as recorded (any flow)."""

    run_id: str = Field(description="the run")
    flow: str = Field(description="the flow that made it (ingest, index, synth, eval, monitor, lifecycle, ...)")
    run_status: str = Field(description="how the run ended (its own status; `status` is this command's)")
    started_at: str = Field(description="UTC start time, as str(datetime)")
    ended_at: str | None = Field(description="UTC end time, as str(datetime); null while running or if killed")
    lineage: dict[str, Any] = Field(description="what the run was made from, as its manifest recorded it")


class RollbackSummary(CommandSummary):
    """What `rollback` returns: a line's promoted state moved back to the promotion before the current one."""

    golden_set_id: str = Field(description="the golden set the restored baseline was scored on")
    line: str = Field(description="the golden-set line rolled back (id:<golden_set_id> for a set outside any line)")
    from_run_id: str = Field(description="the baseline run left")
    to_run_id: str = Field(description="the baseline run restored")
    table: dict[str, dict[str, Any]] = Field(description="{from, to}: {name, version} of the index each run was scored on")
    serving_before: dict[str, Any] | None = Field(description="the serving ref before the rollback (null: none)")
    prompts: dict[str, dict[str, Any]] = Field(
        description="{prompt: {promoted (hash the restored run used), file (hash in prompts/ now, null if missing), "
                    "matches}}")


class PromoteSummary(CommandSummary):
    """What `promote RUN_ID` returns: a passed eval run made its line's baseline after the fact."""

    run_id: str = Field(description="the eval run promoted")
    line: str = Field(description="its golden-set line (id:<golden_set_id> for a set outside any line)")
    promoted: Literal[True] = Field(description="always true (a run that may not be promoted raises)")
    reason: str = Field(description="why: promoted by hand, with the run's gate verdict")
    serving_moved: dict[str, Any] | None = Field(
        description="{from, to} ({table, version} or null) when the run scored the candidate index, which now serves")
    serving: dict[str, Any] | None = Field(description="{table, version} served after the promotion, or null")
    candidate: dict[str, Any] | None = Field(description="{table, version} of a pending candidate index, or null")


class GoldenLineRow(SummaryModel):
    """One golden-set line as `golden list` shows it."""

    golden_set_id: str = Field(description="the line's head version")
    kind: str = Field(description="synthetic | imported | curated | pinned")
    versions: int = Field(description="versions the line has pointed at")
    updated_at: str | None = Field(description="when the head last moved (UTC ISO), null for old lakes")
    baseline_run_id: str | None = Field(description="the line's baseline eval run, null before its first promotion")


class GoldenListSummary(CommandSummary):
    """What `golden list` returns: the lines, their versions, the chosen one and each line's baseline."""

    chosen: str | None = Field(description="the chosen line: what --golden latest, the nightly and prompt-changed evaluate")
    lines: dict[str, GoldenLineRow] = Field(description="{line: {golden_set_id, kind, versions, updated_at, baseline_run_id}}, "
                                                     "by name")


class GoldenUseSummary(CommandSummary):
    """What `golden use LINE|ID` returns: the chosen line after and before (an id outside any line is pinned)."""

    chosen: str = Field(description="the chosen line now (pinned-<id12> for a pinned version)")
    previous_chosen: str | None = Field(description="the chosen line before")
    golden_set_id: str = Field(description="the chosen line's head version")


class GoldenShowSummary(CommandSummary):
    """What `golden show ID` returns: the items of one golden set."""

    golden_set_id: str = Field(description="the version shown")
    line: str | None = Field(description="the line it heads or last belonged to, null if none")
    count: int = Field(description="items in the set, every status")
    by_status: dict[str, int] = Field(description="{status: items}, by status name")
    by_type: dict[str, int] = Field(description="{qa_type: items}, by type name")
    items: list[dict[str, Any]] = Field(
        description="[{qa_id, question, qa_type, persona, status, review, reference_answer, reference_chunk_ids, "
                    "reference_doc_ids, generator, created_at (str)}] in stored order")


class RunRow(SummaryModel):
    """One run manifest as `runs` lists it."""

    run_id: str = Field(description="the run's id")
    flow: str = Field(description="the flow that made it")
    status: str = Field(description="the run's status as its manifest records it")
    started_at: str = Field(description="UTC, as str(datetime)")
    ended_at: str | None = Field(description="UTC, as str(datetime); null while running or if killed")
    seconds: float | None = Field(description="wall time, 0.1 s resolution; null while running or if killed")
    golden_set_id: str | None = Field(description="from the lineage, for runs that read a golden set")
    snapshot_id: str | None = Field(description="from the lineage, for runs that read a documents snapshot")
    error: Any = Field(description="the run's `error` output (a message), null if none")


class RunsSummary(CommandSummary):
    """What `runs` returns: the lake's run manifests, newest first."""

    lake: str = Field(description="the lake's URI")
    total: int = Field(description="runs matching --flow")
    shown: int = Field(description="runs listed (at most --limit)")
    runs: list[RunRow] = Field(description="[{run_id, flow, status, started_at, ended_at, seconds, golden_set_id, "
                                           "snapshot_id, error}], newest first")


class DeploySummary(CommandSummary):
    """What `deploy --work-pool NAME` returns: the deployments registered with a work pool (tasks/preflight.py
    checks the server first; deployments/work_pool.py registers them)."""

    work_pool: str = Field(description="the work pool the deployments run on")
    api_url: str = Field(description="the Prefect API they were registered with (PREFECT_API_URL)")
    lake: str = Field(description="the lake the deployments carry as their `lake` parameter")
    deployments: list[dict[str, Any]] = Field(
        description="[{name, flow, id, entrypoint, schedules (cron strings), triggers (event names), parameters}], "
                    "in definition order")


class PromptsCheckSummary(CommandSummary):
    """What `prompts check` returns: prompts whose file differs from the version the lake last recorded."""

    lake: str = Field(description="the lake's URI")
    prompts: int = Field(description="prompt files in prompts_dir")
    changed: list[dict[str, Any]] = Field(
        description="[{name, prompt_hash, previous_hash (null if new), status: new|changed}], by name")
    emitted: int = Field(description="`ragloop.prompt.changed` events sent (--emit only; else 0)")
    prompts_dir: str | None = Field(
        description="the project's prompts directory overlaid on the packaged defaults (null: none, all packaged)")
    sources: dict[str, str] = Field(
        description="each prompt's origin by name: project (a file in prompts_dir) or packaged (the packaged "
                    "default: no prompts_dir, or no file of that name in it)")

    def to_emit(self) -> list[dict[str, Any]]:
        """The changes worth an event: only a prompt that changed since a run used it has a baseline to gate
        against; a new prompt (never used by a run) is listed but not emitted."""
        return [c for c in self.changed if c["status"] == "changed"]


def compare_runs(lake: Lake, run_a: str, run_b: str, config: EvalConfig, gate_config: GateConfig | None = None) -> CompareSummary:
    """Pair two eval runs' items by qa_id and compare each metric both scored (bootstrap CI of the paired
    mean delta, seeded by eval.seed: the same runs compare the same way), and apply the gate (`gate_config`,
    default the default gate) to B with A as its baseline. Reads the lake only."""
    from ragloop.tasks import gating

    runs = {}
    for run_id in (run_a, run_b):
        record = lake.read_run(run_id)
        items = lake.read_eval_items(run_id)
        if record is None or items is None:
            raise ConfigError(f"{run_id}: no eval run with that id in {lake.uri}")
        runs[run_id] = (record, items.to_pylist())
    (a, a_items), (b, b_items) = runs[run_a], runs[run_b]
    ga, gb = a["lineage"].get("golden_set_id"), b["lineage"].get("golden_set_id")
    shared = {r["qa_id"] for r in a_items} & {r["qa_id"] for r in b_items}
    if not shared:
        raise ConfigError(f"runs share no question (golden sets {ga} and {gb}): their items cannot be paired")
    question_a = {r["qa_id"]: r.get("question") for r in a_items}
    edited = sum(question_a[r["qa_id"]] != r.get("question") for r in b_items if r["qa_id"] in shared)
    rows_a, rows_b = ([{"qa_id": r["qa_id"], "metrics": dict(r["metrics"])} for r in items] for items in (a_items, b_items))
    deltas = gating.paired_deltas(rows_a, rows_b, config.bootstrap_resamples, config.confidence, config.seed)
    changed = {k: {"a": a["lineage"].get(k), "b": b["lineage"].get(k)} for k in sorted(set(a["lineage"]) | set(b["lineage"]))
               if a["lineage"].get(k) != b["lineage"].get(k) and k not in UNCOMPARED_LINEAGE}
    not_compared = gating.unpaired_metrics(rows_a, rows_b)
    gate = compare_gate(a, b, b_items, deltas, not_compared, config, gate_config or GateConfig())
    return CompareSummary(status="ok", golden_set_id=gb, golden_set_ids={"a": ga, "b": gb}, shared_items=len(shared),
                          changed_questions=edited,
                          items={"a": len(a_items), "b": len(b_items)}, run_a=run_a, run_b=run_b, deltas=deltas,
                          not_compared=not_compared, lineage_changes=changed, gate=gate)


def compare_gate(a: dict, b: dict, b_items: list[dict], deltas: dict, not_compared: dict, config: EvalConfig,
                 gate_config: GateConfig) -> dict:
    """The gate's verdict on run B (record and items) against run A as its baseline, as an eval would give
    it: paired deltas, floors on B's metrics, B's failed items, B's budgets against A's, and the judged
    metrics B's own gate did not gate (an uncalibrated judge) reported, not gated. Adds `verdicts`:
    {metric: passed | failed | inconclusive} for each gated metric (tasks.gating.metric_verdict)."""
    from ragloop.tasks import gating

    outputs_a, outputs_b = a.get("outputs") or {}, b.get("outputs") or {}
    metrics = outputs_b.get("metrics") or {}
    failed = sum(1 for r in b_items if r.get("status") == "failed")
    budgets = gating.check_budgets(outputs_b.get("budgets"), outputs_a.get("budgets"), gate_config.budgets)
    ungated = (outputs_b.get("gate") or {}).get("ungated") or {}
    # A metric whose delta is not a number (a NaN score in a run) can neither pass nor fail: left out, said so.
    finite = {m: d for m, d in deltas.items() if all(math.isfinite(x) for x in (d["delta"], *d["ci"], d.get("sd", 0.0)))}
    gate = gating.check_gate(metrics, finite, failed, len(b_items), gate_config, config.confidence, not_compared,
                             None, budgets, ungated)
    if len(finite) < len(deltas):
        gate["warnings"].append("not gated (the delta is not a number): " + ", ".join(sorted(set(deltas) - set(finite))))
    gate["verdicts"] = {m: gating.metric_verdict(m, finite[m]["ci"], gate_config.max_drop) for m in gate["gated"]}
    return gate


def run_lineage(lake: Lake, run_id: str) -> LineageSummary:
    """The run's manifest: flow, how it ended, when, and its lineage. Reads the lake only."""
    record = lake.read_run(run_id)
    if record is None:
        raise ConfigError(f"{run_id}: no run with that id in {lake.uri}")
    return LineageSummary(status="ok", run_id=record["run_id"], flow=record["flow"], run_status=record["status"],
                          started_at=str(record["started_at"]),
                          ended_at=str(record["ended_at"]) if record["ended_at"] else None, lineage=record["lineage"])


def rollback_line(lake: Lake, golden: str, prompts_dir: str | Path) -> RollbackSummary:
    """Return a golden-set line (a line name, golden_set_id or unique prefix, or 'latest') to its previous
    promotion: baseline and serving index version, which must still be readable. Writes the refs under the
    lake's lock; prompt files are only compared (a differing one must be restored from version control)."""
    from ragloop.tasks.prompts import PromptError, load_prompt_set

    refs = promotion.Refs(lake)
    golden_set_id, line = refs.resolve_golden(golden, lake.list_golden())
    if golden_set_id is None:
        raise ConfigError(f"--golden {golden}: no such golden set or line in {lake.uri}")
    line = line or f"id:{golden_set_id}"

    def readable(name: str, version: int) -> str | None:  # index.keep_versions_days keeps promoted versions
        try:
            lake.connect_vectors().open_table(name).checkout(version)
        except Exception as exc:  # LanceDB raises ValueError/RuntimeError/OSError for a missing table or version
            return str(exc)
        return None

    with lake.lock("rollback"):
        try:
            done = refs.rollback(line, readable)
        except promotion.PromotionError as exc:
            raise ConfigError(f"line {line}: {exc}") from exc
    current, previous, before = done["from"], done["to"], done["serving_before"]
    try:
        files = {name: p.prompt_hash for name, p in load_prompt_set(prompts_dir).items()}
    except PromptError:
        files = {}
    prompts = {name: {"promoted": h, "file": files.get(name), "matches": files.get(name) == h}
               for name, h in sorted(previous.prompts.items())}
    return RollbackSummary(status="ok", golden_set_id=previous.golden_set_id, line=line, from_run_id=current.run_id,
                           to_run_id=previous.run_id, table={"from": current.table, "to": previous.table},
                           serving_before=before.model_dump(mode="json", exclude_none=True) if before else None,
                           prompts=prompts)


def promote_run(lake: Lake, run_id: str) -> PromoteSummary:
    """Make a finished eval run whose gate passed (against the line's current baseline) its line's baseline;
    serve its index if it scored the candidate. Writes the refs under the lake's lock."""
    from ragloop.tasks.schemas import utcnow

    refs = promotion.Refs(lake)
    record = lake.read_run(run_id)
    if record is None:
        raise ConfigError(f"{run_id}: no run with that id in {lake.uri}")
    lineage, outputs = record["lineage"], record["outputs"]
    line = outputs.get("golden_line") or lineage.get("golden_line") or f"id:{lineage.get('golden_set_id')}"
    with lake.lock("promote"):
        problem = promotion.promotable_after_the_fact(record, refs.baseline(line))
        if problem:
            raise ConfigError(f"promote: {problem}")
        moved = refs.promote(promotion.Promotion(
            run_id=record["run_id"], golden_set_id=lineage["golden_set_id"], line=line, table=lineage["table"],
            prompts=lineage.get("prompts") or {}, chain=lineage.get("chain"), chain_hash=lineage.get("chain_hash"),
            metrics=outputs.get("metrics") or {}, verdict=outputs["gate"]["status"], mode="explicit",
            promoted_at=utcnow().isoformat(), index_run_id=lineage.get("index_run_id"),
            chunker_hash=lineage.get("chunker_hash")), candidate_evaluated=lineage.get("index_role") == "candidate")
    return PromoteSummary(status="ok", run_id=record["run_id"], line=line, promoted=True,
                          reason=f"promoted by hand (gate {outputs['gate']['status']})", **moved, **refs.state())


def golden_lines(lake: Lake) -> GoldenListSummary:
    """The golden-set lines by name, the chosen one, and each line's baseline run. Reads the lake only."""
    refs = promotion.Refs(lake)
    lines = refs.lines()

    def baseline_of(name: str) -> str | None:
        baseline = refs.baseline(name)
        return baseline.run_id if baseline else None

    return GoldenListSummary(status="ok", chosen=lines.chosen, lines={
        name: GoldenLineRow(golden_set_id=line.golden_set_id, kind=line.kind, versions=len(line.history),
                         updated_at=line.updated_at, baseline_run_id=baseline_of(name))
        for name, line in sorted(lines.lines.items())})


def use_line(lake: Lake, spec: str) -> GoldenUseSummary:
    """Choose the line (a name), or pin a version (an id or unique prefix), that `--golden latest`, the
    nightly and prompt-changed evaluate. Writes refs/golden_lines.json under the lake's lock."""
    with lake.lock("golden use"):
        try:
            used = promotion.Refs(lake).use(spec, lake.list_golden())
        except promotion.PromotionError as exc:
            raise ConfigError(str(exc)) from exc
    return GoldenUseSummary(status="ok", **used)


def show_golden(lake: Lake, spec: str) -> GoldenShowSummary:
    """The items of a golden set (an id, unique prefix, line name or 'latest'), counted by status and type.
    Reads the lake only."""
    golden_set_id, line = promotion.Refs(lake).resolve_golden(spec, lake.list_golden())
    if golden_set_id is None:
        raise ConfigError(f"golden show {spec}: no such golden set or line in {lake.uri} "
                          f"(have: {', '.join(lake.list_golden()) or 'none'}; see `ragloop golden list`)")
    rows = lake.read_golden(golden_set_id).to_pylist()
    items = [{k: (str(r[k]) if k == "created_at" else r.get(k)) for k in GOLDEN_ITEM_FIELDS} for r in rows]
    return GoldenShowSummary(status="ok", golden_set_id=golden_set_id, line=line, count=len(items),
                             by_status=dict(sorted(Counter(i["status"] for i in items).items())),
                             by_type=dict(sorted(Counter(i["qa_type"] for i in items).items())), items=items)


def list_runs(lake: Lake, flow: str | None = None, limit: int | None = 20) -> RunsSummary:
    """The lake's run manifests (of one flow if given), newest first, at most `limit` (0 or None: all).
    Reads the lake only."""
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit {limit}: must be >= 0")
    rows = lake.read_runs().to_pylist()
    flows = sorted({r["flow"] for r in rows})
    if flow and flow not in flows:
        raise ConfigError(f"--flow {flow}: no run of that flow in {lake.uri} (flows with runs: {', '.join(flows) or 'none'})")
    rows = [r for r in rows if not flow or r["flow"] == flow]
    rows.sort(key=lambda r: (r["started_at"], r["run_id"]), reverse=True)
    runs = []
    for r in rows[:limit] if limit else rows:
        lineage, outputs = json.loads(r["lineage"] or "{}"), json.loads(r["outputs"] or "{}")
        seconds = (r["ended_at"] - r["started_at"]).total_seconds() if r["ended_at"] else None
        runs.append(RunRow(run_id=r["run_id"], flow=r["flow"], status=r["status"], started_at=str(r["started_at"]),
                           ended_at=str(r["ended_at"]) if r["ended_at"] else None,
                           seconds=round(seconds, 1) if seconds is not None else None,
                           golden_set_id=lineage.get("golden_set_id"), snapshot_id=lineage.get("snapshot_id"),
                           error=outputs.get("error")))
    return RunsSummary(status="ok", lake=lake.uri, total=len(rows), shown=len(runs), runs=runs)


def check_prompts(lake: Lake, prompts_dir: str | Path) -> PromptsCheckSummary:
    """The prompts in prompts_dir whose hash differs from the one the lake last recorded (new ones
    included), by name, and where each comes from (the project's file or the packaged default); `emitted` is 0 (the CLI's --emit sets it). Reads the lake and the prompt files."""
    from ragloop.tasks.prompts import PromptError, changed_prompts, load_prompt_set, project_prompts_dir, prompt_sources

    try:
        current = load_prompt_set(prompts_dir)
    except PromptError as exc:
        raise ConfigError(str(exc)) from exc
    changes = changed_prompts(current, lake.last_prompt_hashes())
    project = project_prompts_dir(prompts_dir)
    return PromptsCheckSummary(status="ok", lake=lake.uri, prompts=len(current), changed=changes, emitted=0,
                               prompts_dir=None if project is None else str(project),
                               sources=prompt_sources(current, prompts_dir))


# -- compare as a pull-request comment ------------------------------------------------------------------
VERDICT_MARK = {"passed": "✅ pass", "failed": "❌ fail", "inconclusive": "⚠️ inconclusive"}
GATE_HEADLINE = {"passed": "✅ gate passed", "failed": "❌ gate failed", "inconclusive": "⚠️ gate inconclusive",
                 "no_baseline": "gate: no baseline"}


def _cell(text: Any) -> str:
    """A table cell: pipes escaped, one line."""
    return " ".join(str(text).replace("|", "\\|").split())


def _short(value: Any, width: int = 40) -> str:
    """A lineage value in a few characters: hashes cut to 12, long JSON cut with an ellipsis."""
    if isinstance(value, dict) and "prompt_hash" in value:  # a prompt reference: name@hash
        return f"{value.get('name')}@{str(value['prompt_hash'])[:12]}"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, str) and len(value) >= 32 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return text if len(text) <= width else text[: width - 1] + "…"


def _lineage_change(key: str, change: dict) -> str:
    """One changed lineage key as `key` (what changed), sub-keys of a dict listed one by one."""
    a, b = change.get("a"), change.get("b")
    if isinstance(a, dict) and isinstance(b, dict):
        parts = [f"{k}: {_short(a.get(k))} → {_short(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    else:
        parts = [f"{_short(a)} → {_short(b)}"]
    return f"`{key}` ({'; '.join(_cell(p) for p in parts)})"


def compare_markdown(summary: dict, confidence: float = 0.95) -> str:
    """`compare --format markdown`: the comparison as a GitHub-flavoured Markdown comment for a pull request
    (no HTML): the gate's verdict, a table of each compared metric (baseline, candidate, paired delta with
    its CI, the metric's verdict; lower-is-better metrics marked ↓), the gate's reasons and warnings (the
    metrics only one run has among them) and what changed between the runs' lineages. `summary`: a CompareSummary dump.
    Deterministic: the same summary gives the same text."""
    from ragloop.tasks.metrics import higher_is_better

    gate, deltas = summary["gate"], summary["deltas"]
    ids = summary.get("golden_set_ids") or {}
    golden = (f"golden set `{ids.get('b')}`" if ids.get("a") == ids.get("b")
              else f"golden sets `{ids.get('a')}` (baseline) and `{ids.get('b')}` (candidate)")
    lines = [f"### ragloop eval: {GATE_HEADLINE.get(gate['status'], 'gate: ' + gate['status'])}", "",
             f"Candidate `{summary['run_b']}` vs baseline `{summary['run_a']}` on {golden}, "
             f"{summary['shared_items']} paired questions. Δ = candidate − baseline with its {confidence:.0%} paired "
             f"bootstrap CI; a metric fails when the CI lies wholly beyond a drop of {gate.get('max_drop')} "
             f"(↓: lower is better, a rise is the drop).", "",
             "| metric | baseline | candidate | Δ | CI | verdict |", "|:--|--:|--:|--:|:-:|:--|"]
    verdicts = gate.get("verdicts") or {}
    ungated = gate.get("ungated") or {}
    for name, d in deltas.items():
        label = name + ("" if higher_is_better(name) else " ↓")
        verdict = VERDICT_MARK.get(verdicts.get(name), "not gated" + (" (uncalibrated judge)" if name in ungated else ""))
        lines.append(f"| {_cell(label)} | {d['baseline']:.4f} | {d['candidate']:.4f} | {d['delta']:+.4f} | "
                     f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] | {verdict} |")
    if not deltas:
        lines.append("| (no metric measured by both runs) | | | | | |")
    lines.append("")
    if gate.get("reasons"):
        lines += ["**Why:**", ""] + [f"- {_cell(r)}" for r in gate["reasons"]] + [""]
    warnings = list(gate.get("warnings") or [])
    if summary.get("changed_questions"):
        warnings.append(f"{summary['changed_questions']} of the {summary['shared_items']} paired questions were "
                        "edited between the runs: those pairs are not like for like")
    if warnings:
        lines += ["**Warnings:**", ""] + [f"- {_cell(w)}" for w in warnings] + [""]
    changes = summary.get("lineage_changes") or {}
    if changes:
        lines.append("Changed between the runs: " + ", ".join(_lineage_change(k, v) for k, v in changes.items()) + ".")
    lines += ["", f"_`ragloop compare {summary['run_a']} {summary['run_b']} --format markdown`_"]
    return "\n".join(lines).rstrip() + "\n"
