"""The summary base: only the keys set are dumped, outputs are what a manifest stores, record ends the run."""

from __future__ import annotations

import pytest

from ragloop.tasks.summaries import LineMove, StageSummary


class _Summary(StageSummary):
    count: int
    error: str | None = None
    line: LineMove | None = None


class _Run:
    """A RunRecorder stand-in: remembers how the run was finished."""

    def __init__(self) -> None:
        self.finished = None

    def finish(self, status, outputs):
        self.finished = (status, outputs)
        return {}


def test_optional_keys_are_absent_until_set_then_validated():
    summary = _Summary(run_id="r", status="ok", lineage={"seed": None}, count=1)
    assert summary.model_dump(mode="json") == {"run_id": "r", "status": "ok", "lineage": {"seed": None}, "count": 1}
    summary.error = "boom"
    summary.line = {"line": "l", "chosen": "l", "previous_chosen": None, "changed": True}
    assert isinstance(summary.line, LineMove) and summary.model_dump(mode="json")["error"] == "boom"
    with pytest.raises(ValueError, match="count"):
        summary.count = "many"


def test_record_finishes_the_run_with_the_outputs_and_returns_the_summary():
    run = _Run()
    summary = _Summary(run_id="r", status="partial", lineage={}, count=2, error="short")
    assert summary.record(run) == {"run_id": "r", "status": "partial", "lineage": {}, "count": 2, "error": "short"}
    assert run.finished == ("partial", {"count": 2, "error": "short"})


def _readme_summary_keys() -> dict[str, set[str]]:
    """README "Summary JSON": command -> the top-level keys its bullet names (backticked, outside {} and [])."""
    import re

    from tests.conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text.split("### Summary JSON", 1)[1].split("\n## ", 1)[0]
    out = {}
    for bullet in re.split(r"\n- ", section)[1:]:
        command, _, rest = bullet.partition(":")
        depth, keys, token, inside = 0, set(), "", False
        for ch in rest:
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
            elif ch == "`" and depth == 0:
                if inside:
                    keys.add(token)
                token, inside = "", not inside
            elif inside:
                token += ch
        out[command.strip("` ")] = keys
    return out


def test_the_readme_lists_exactly_each_command_summary_fields():
    from ragloop.tasks.summaries import RUN_KEYS, summary_models

    documented = _readme_summary_keys()
    models = summary_models()
    assert set(documented) == set(models)
    for command, model in models.items():
        assert documented[command] == set(model.model_fields) - RUN_KEYS, command


def test_every_stage_summary_model_forbids_unknown_keys_except_a_reused_eval():
    from ragloop.tasks.summaries import summary_models

    for command, model in summary_models().items():
        assert model.model_config.get("extra") == ("allow" if command == "eval" else "forbid"), command
