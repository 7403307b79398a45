"""Promotion: what is served, what the gate compares with, which golden-set line is evaluated (refs I/O + pure rules).

This module is the only writer of the promotion refs (a structure test says so):

    refs/serving.json       ServingRef: the index the app serves and experiments read (table + version)
    refs/candidate.json     ServingRef: an index built with another embedder, encoder backend or chunker,
                            not served until its GE suite and the gate pass (blue/green)
    refs/golden_lines.json  GoldenLines: named lines ('synthetic' is synth's own; imports and curated
                            sets are others) and the *chosen* one that `--golden latest`, the nightly
                            and the prompt-changed flow evaluate
    refs/baselines.json     {line: Promotion}: per line, the run the gate compares a candidate with
    refs/bakeoff_table__<t> ServingRef: the version of a bake-off's table (tasks.storage.bakeoff_table_name)
                            and the index run that built it; such a table is scored, never served
    promotions/<run>.json   every promotion, the history `rollback` walks back

Decisions are plain functions (`index_disposition`, `promotion_decision`, `rollback_target`); `Refs`
applies them. Only the nightly, the prompt-changed flow and an explicit `--promote` / `ragloop promote`
may promote; every other eval is an experiment: compared and gated, never promoted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ragloop.tasks.schemas import utcnow
from ragloop.tasks.storage import Lake

SYNTHETIC = "synthetic"
PromoteMode = Literal["nightly", "prompt-changed", "explicit"]
PROMOTING_MODES = ("nightly", "prompt-changed", "explicit")
Verdict = Literal["passed", "failed", "inconclusive", "no_baseline"]


BAKEOFF_TABLE_NOT_SERVED = ("scored on a bake-off table, which is never served: configure its embedding and chunking, "
                            "`ragloop index` builds the candidate, `ragloop eval --promote` gates and serves it")


class PromotionError(ValueError):
    """A promotion, rollback or line change that cannot be done; the message says why (exit 2)."""


class _Ref(BaseModel):
    model_config = ConfigDict(extra="allow")  # refs written by newer versions keep their extra fields


class ServingRef(_Ref):
    table: str
    version: int
    run_id: str | None = None  # the index run that built this version
    chunker_hash: str | None = None
    reason: str | None = None  # why this ref was written (first index, content update, promotion, rollback)
    at: str | None = None
    rolled_back_from: dict | None = None  # set by a rollback: pins the version until the corpus changes
    rolled_back_at: str | None = None


class GoldenLine(_Ref):
    golden_set_id: str
    kind: Literal["synthetic", "imported", "curated", "pinned"] = "imported"
    run_id: str | None = None
    inputs: str | None = None  # synth's input hash (its up-to-date check)
    history: list[str] = Field(default_factory=list)  # every version the line has pointed at, oldest first
    updated_at: str | None = None


class GoldenLines(_Ref):
    chosen: str | None = None
    lines: dict[str, GoldenLine] = Field(default_factory=dict)

    def line_of(self, golden_set_id: str) -> str | None:
        """The line whose head is this version, else the line that held it most recently."""
        for name, line in self.lines.items():
            if line.golden_set_id == golden_set_id:
                return name
        for name, line in self.lines.items():
            if golden_set_id in line.history:
                return name
        return None


class Promotion(_Ref):
    run_id: str
    golden_set_id: str
    line: str
    table: dict  # {name, version} the run was scored on
    prompts: dict = Field(default_factory=dict)
    chain: dict | None = None
    chain_hash: str | None = None
    metrics: dict = Field(default_factory=dict)
    verdict: str = "passed"
    mode: str = "explicit"
    promoted_at: str = ""
    rolled_back_from: str | None = None
    rolled_back_at: str | None = None


# -- pure rules ------------------------------------------------------------------------------------
def line_name(raw: str) -> str:
    """A golden-set line name from user text: lower-case letters, digits, '-' and '_' (others become
    '-'); 'synthetic' is synth's own and cannot be imported into."""
    import re

    name = re.sub(r"[^a-z0-9_-]+", "-", raw.strip().lower()).strip("-")
    if not name or name in ("latest", SYNTHETIC):
        raise PromotionError(f"line {raw!r}: not a usable line name ('latest' and '{SYNTHETIC}' are reserved)")
    return name


def index_disposition(serving: ServingRef | None, table: str, chunker_hash: str, changed: bool,
                      version: int | None = None) -> tuple[str, str]:
    """What an index run that passed its chunks suite does with the version it built.

    Returns (action, reason), action one of:
      serve      the first index of the lake, or a content update of the served table and chunker
      candidate  another table (embedder or encoder backend) or another chunker than the served one:
                 blue/green, served only after the gate passes on it
      keep       nothing changed and a rollback pinned the served version, or the served version is
                 the one built (a no-op run: nothing to write)
    """
    if serving is None:
        return "serve", "first index of the lake"
    if table != serving.table:
        return "candidate", f"table {table} differs from the served {serving.table} (embedder or encoder backend changed)"
    if serving.chunker_hash and chunker_hash != serving.chunker_hash:
        return "candidate", f"chunker {chunker_hash[:12]} differs from the served {serving.chunker_hash[:12]}"
    if serving.rolled_back_at and not changed:
        return "keep", f"served version {serving.version} pinned by the rollback at {serving.rolled_back_at}"
    if not changed and version == serving.version:
        return "keep", f"nothing changed: version {serving.version} stays served"
    return "serve", "content update of the served table"


def promotion_decision(verdict: str, mode: str | None, on_inconclusive: str) -> tuple[bool, str]:
    """(promote?, why) for an eval whose gate gave `verdict`, run in `mode` (None = an experiment)."""
    if mode not in PROMOTING_MODES:
        return False, ("experiment: only the nightly, the prompt-changed flow and `--promote` promote "
                       f"(gate verdict {verdict})")
    if verdict == "passed":
        return True, f"gate passed ({mode})"
    if verdict == "no_baseline":
        return True, f"no baseline yet on this line: this run becomes it ({mode})"
    if verdict == "inconclusive":
        if on_inconclusive == "warn":
            return True, f"gate inconclusive, promoted because gate.on_inconclusive is warn ({mode})"
        return False, "gate inconclusive (underpowered): nothing promoted (gate.on_inconclusive: block)"
    return False, "gate failed: nothing promoted"


def promotable_after_the_fact(record: dict, baseline: Promotion | None) -> str | None:
    """Why an eval run cannot be promoted by `ragloop promote` (None when it can): it must be a finished
    eval whose gate passed (or had no baseline), still against the line's current baseline."""
    if record.get("flow") != "eval":
        return f"run {record.get('run_id')} is a {record.get('flow')} run, not an eval"
    outputs = record.get("outputs") or {}
    verdict = (outputs.get("gate") or {}).get("status")
    if record.get("status") not in ("ok", "partial", "gate_failed", "gate_inconclusive") or verdict is None:
        return f"run {record['run_id']} did not finish (status {record.get('status')})"
    if baseline is not None and baseline.run_id == record["run_id"]:
        return f"run {record['run_id']} is already the baseline of its line"
    if (record.get("lineage") or {}).get("index_role") == "bakeoff":
        return f"run {record['run_id']} was {BAKEOFF_TABLE_NOT_SERVED}"
    if verdict not in ("passed", "no_baseline"):
        return f"run {record['run_id']}: its gate verdict is {verdict}; only a passed run can be promoted"
    compared_with = outputs.get("baseline_run_id")
    current = baseline.run_id if baseline else None
    if compared_with != current:
        return (f"run {record['run_id']} was gated against {compared_with or 'no baseline'}, but the line's baseline is now "
                f"{current or 'none'}: evaluate again with `ragloop eval --promote`")
    return None


def rollback_target(history: list[Promotion], current: Promotion | None, rolled_back: set[str] = frozenset()) -> Promotion:
    """The state in force before the current one: the latest earlier promotion in a line's history
    (oldest first) that was not itself rolled back (`rolled_back`: run ids a rollback left)."""
    if current is None:
        raise PromotionError("nothing was ever promoted on this line, nothing to roll back")
    ids = [p.run_id for p in history]
    at = ids.index(current.run_id) if current.run_id in ids else -1
    earlier = [p for p in history[:max(at, 0)] if p.run_id not in rolled_back]
    if at <= 0 or not earlier:
        raise PromotionError(f"run {current.run_id} is the line's first promotion in force; there is no earlier "
                             "promoted state to return to")
    return earlier[-1]


def pick_index(serving: ServingRef | None, candidate: ServingRef | None, table: str,
               which: str = "auto") -> tuple[ServingRef, str]:
    """The index an eval or synth reads for the configured embedder's `table`: (ref, role).

    auto: the pending candidate when it is this table, else the served index. Raises PromotionError
    naming what to do when neither is this table."""
    if serving is None and candidate is None:
        raise PromotionError("the lake has no index yet: run `ragloop index` first")
    if which in ("auto", "candidate") and candidate is not None and candidate.table == table:
        return candidate, "candidate"
    if which == "candidate":
        raise PromotionError(f"no candidate index pending for table {table}")
    if serving is not None and serving.table == table:
        return serving, "serving"
    have = serving.table if serving else candidate.table
    raise PromotionError(f"embedding.model: the lake serves table {have}, but the configured embedder reads "
                         f"{table}; index with this embedder first (it becomes a candidate) or configure the served one")


# -- the refs, read and written in one place ---------------------------------------------------------
class Refs:
    """Reads and writes the promotion refs of one lake (see the module docstring)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    # serving and candidate
    def serving(self) -> ServingRef | None:
        data = self.lake.read_ref("serving")
        return ServingRef.model_validate(data) if data else None

    def candidate(self) -> ServingRef | None:
        data = self.lake.read_ref("candidate")
        return ServingRef.model_validate(data) if data else None

    def record_index(self, table: str, version: int, run_id: str, chunker_hash: str, changed: bool) -> dict:
        """Apply index_disposition to a version that passed its chunks suite; returns
        {action, reason, serving, candidate} as they stand afterwards."""
        serving = self.serving()
        action, reason = index_disposition(serving, table, chunker_hash, changed, version)
        now = utcnow().isoformat()
        built = ServingRef(table=table, version=version, run_id=run_id, chunker_hash=chunker_hash, reason=reason, at=now)
        if action == "serve":
            self._write("serving", built)
            pending = self.candidate()
            if pending is not None:  # the config went back to the served identity: the candidate is moot
                self.lake.delete_ref("candidate")
                reason += f"; candidate {pending.table} v{pending.version} dropped"
        elif action == "candidate":
            self._write("candidate", built)
        return {"action": action, "reason": reason, **self.state()}

    def record_bakeoff_table(self, table: str, version: int, run_id: str, chunker_hash: str) -> dict:
        """A bake-off table's version that passed its chunks suite: refs/bakeoff_table__<table> names the run
        that built it (kept when the run changed nothing). Serving and candidate never move. Returns
        {action: bakeoff, reason, serving, candidate}."""
        name = f"bakeoff_table__{table}"
        known = self.lake.read_ref(name)
        if not known or known.get("version") != version:
            self._write(name, ServingRef(table=table, version=version, run_id=run_id, chunker_hash=chunker_hash,
                                         reason="built for a bake-off", at=utcnow().isoformat()))
        return {"action": "bakeoff", "reason": f"bake-off table {table} v{version}: never served", **self.state()}

    def bakeoff_table(self, table: str) -> ServingRef | None:
        """The version of a bake-off table last built and the run that built it (None: never built)."""
        data = self.lake.read_ref(f"bakeoff_table__{table}")
        return ServingRef.model_validate(data) if data else None

    def state(self) -> dict:
        serving, candidate = self.serving(), self.candidate()
        pick = lambda r: {"table": r.table, "version": r.version} if r else None  # noqa: E731
        return {"serving": pick(serving), "candidate": pick(candidate)}

    # golden-set lines
    def lines(self) -> GoldenLines:
        data = self.lake.read_ref("golden_lines")
        if data:
            return GoldenLines.model_validate(data)
        return self._lines_from_old_refs()

    def _lines_from_old_refs(self) -> GoldenLines:
        """Lakes written before lines existed: refs/golden.json (synth's) and golden_latest.json."""
        lines = GoldenLines()
        synthetic, latest = self.lake.read_ref("golden"), self.lake.read_ref("golden_latest")
        if synthetic:
            lines.lines[SYNTHETIC] = GoldenLine(golden_set_id=synthetic["golden_set_id"], kind="synthetic",
                                                run_id=synthetic.get("run_id"), inputs=synthetic.get("inputs"),
                                                history=[synthetic["golden_set_id"]])
            lines.chosen = SYNTHETIC
        if latest and (not synthetic or latest["golden_set_id"] != synthetic["golden_set_id"]):
            lines.lines["imported"] = GoldenLine(golden_set_id=latest["golden_set_id"], kind="imported",
                                                 run_id=latest.get("run_id"), history=[latest["golden_set_id"]])
            lines.chosen = "imported"
        return lines

    def set_line(self, name: str, golden_set_id: str, kind: str, run_id: str | None, inputs: str | None = None,
                 choose: bool = False) -> dict:
        """Point a line at a version (creating the line); the chosen line changes only when `choose`
        or when no line is chosen yet. Returns {line, chosen, previous_chosen, changed}."""
        lines = self.lines()
        old = lines.lines.get(name)
        history = list(old.history) if old else []
        if golden_set_id not in history:
            history.append(golden_set_id)
        changed = old is None or old.golden_set_id != golden_set_id or old.inputs != inputs
        lines.lines[name] = GoldenLine(golden_set_id=golden_set_id, kind=kind, run_id=run_id, inputs=inputs,
                                       history=history, updated_at=utcnow().isoformat())
        previous = lines.chosen
        if choose or lines.chosen is None or lines.chosen not in lines.lines:
            lines.chosen = name
        if changed or previous != lines.chosen:
            self._write("golden_lines", lines)
        return {"line": name, "chosen": lines.chosen, "previous_chosen": previous, "changed": changed}

    def use(self, spec: str, known_ids: list[str]) -> dict:
        """Choose what `--golden latest` evaluates: a line name, or a golden-set id (or unique prefix).
        An id that is not the head of a line is pinned as its own line `pinned-<id12>`."""
        lines = self.lines()
        if spec in lines.lines:
            name = spec
        else:
            matches = [g for g in known_ids if g.startswith(spec)]
            if len(matches) != 1:
                raise PromotionError(f"golden use {spec}: no such line (have: {', '.join(sorted(lines.lines)) or 'none'}) "
                                     f"and {'no' if not matches else 'more than one'} golden set id matches")
            gid = matches[0]
            name = next((n for n, line in lines.lines.items() if line.golden_set_id == gid), None)
            if name is None:
                name = f"pinned-{gid[:12]}"
                lines.lines[name] = GoldenLine(golden_set_id=gid, kind="pinned", history=[gid],
                                               updated_at=utcnow().isoformat())
        previous, lines.chosen = lines.chosen, name
        self._write("golden_lines", lines)
        return {"chosen": name, "previous_chosen": previous, "golden_set_id": lines.lines[name].golden_set_id}

    def resolve_golden(self, spec: str, known_ids: list[str]) -> tuple[str | None, str | None]:
        """(golden_set_id, line) for 'latest' (the chosen line), a line name, or an id / unique prefix.
        (None, None) when nothing matches."""
        lines = self.lines()
        if spec == "latest":
            if lines.chosen and lines.chosen in lines.lines:
                return lines.lines[lines.chosen].golden_set_id, lines.chosen
            return None, None
        if spec in lines.lines:
            return lines.lines[spec].golden_set_id, spec
        matches = [g for g in known_ids if g.startswith(spec)]
        if len(matches) != 1:
            return None, None
        return matches[0], lines.line_of(matches[0])

    # baselines and promotions
    def baseline(self, line: str) -> Promotion | None:
        data = (self.lake.read_ref("baselines") or {}).get(line)
        if data:
            return Promotion.model_validate(data)
        old = self.lake.read_ref("promoted_latest")  # a lake from before lines: its last promotion
        if old and not self.lake.read_ref("baselines") and self.lines().line_of(old["golden_set_id"]) == line:
            return Promotion.model_validate({"line": line, **old})
        return None

    def history(self, line: str) -> list[Promotion]:
        """Every promotion on a line, oldest first (rollback records left out)."""
        records = [Promotion.model_validate({"line": r.get("line", ""), **r}) for r in self.lake.read_promotions()
                   if r.get("kind") != "rollback"]
        return sorted((r for r in records if r.line == line), key=lambda r: (r.promoted_at, r.run_id))

    def rolled_back(self, line: str) -> set[str]:
        """Run ids a rollback on this line has left: never returned to by a later rollback."""
        return {r["rolled_back"] for r in self.lake.read_promotions() if r.get("kind") == "rollback" and r.get("line") == line}

    def promote(self, record: Promotion, candidate_evaluated: bool) -> dict:
        """Make a gated run its line's baseline; if it was scored on the candidate index, serve that
        version (and drop the candidate when it is the same version). Returns the serving move."""
        self.lake.write_promotion(record.run_id, record.model_dump(mode="json"))
        baselines = self.lake.read_ref("baselines") or {}
        baselines[record.line] = record.model_dump(mode="json")
        self.lake.write_ref("baselines", baselines)
        moved = None
        if candidate_evaluated:
            before = self.serving()
            candidate = self.candidate()
            built = candidate if candidate and candidate.table == record.table["name"] else None
            self._write("serving", ServingRef(
                table=record.table["name"], version=record.table["version"],
                run_id=built.run_id if built else None, chunker_hash=built.chunker_hash if built else None,
                reason=f"promoted with eval run {record.run_id}", at=utcnow().isoformat()))
            if candidate and (candidate.table, candidate.version) == (record.table["name"], record.table["version"]):
                self.lake.delete_ref("candidate")
            moved = {"from": {"table": before.table, "version": before.version} if before else None,
                     "to": dict(record.table)}
        return {"serving_moved": moved}

    def rollback(self, line: str, readable) -> dict:
        """Return a line's promoted state to the promotion before the current one: its baseline, and the
        served index version it was scored on (which must still be `readable(table, version)`), pinned
        until the corpus changes."""
        current = self.baseline(line)
        target = rollback_target(self.history(line), current, self.rolled_back(line))
        table = target.table
        problem = readable(table["name"], table["version"])
        if problem:
            raise PromotionError(f"cannot roll back to run {target.run_id}: table {table['name']} version "
                                 f"{table['version']} is not readable ({problem})")
        before = self.serving()
        now = utcnow().isoformat()
        self._write("serving", ServingRef(
            table=table["name"], version=table["version"], run_id=target.model_extra.get("index_run_id"),
            chunker_hash=target.model_extra.get("chunker_hash") or (before.chunker_hash if before else None),
            reason=f"rolled back from eval run {current.run_id} to {target.run_id}", at=now,
            rolled_back_from=before.model_dump(mode="json", exclude_none=True) if before else None, rolled_back_at=now))
        baselines = self.lake.read_ref("baselines") or {}
        baselines[line] = {**target.model_dump(mode="json"), "rolled_back_from": current.run_id, "rolled_back_at": now}
        self.lake.write_ref("baselines", baselines)
        self.lake.write_promotion(f"rollback-{current.run_id}", {"kind": "rollback", "line": line, "rolled_back": current.run_id,
                                                                "to": target.run_id, "at": now})
        return {"from": current, "to": target, "serving_before": before}

    def _write(self, name: str, ref: BaseModel) -> None:
        self.lake.write_ref(name, ref.model_dump(mode="json", exclude_none=True))
