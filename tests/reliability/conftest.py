"""Fixtures of the fault-injection suite: fakes wired into every flow, and the figures it reports.

Each test records what it tried and what the pipeline did (`figures`); the session prints them at
the end (`-rA` not needed) and writes them as JSON to $RELIABILITY_FIGURES_JSON when that is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import REPO, use_fakes

FIGURES: dict[str, dict] = {}
FIGURES_ENV = "RELIABILITY_FIGURES_JSON"  # read at session end; never set by the suite itself


@pytest.fixture
def figures():
    """figures(section, **values): record numbers for the session report (merged per section)."""

    def record(section: str, **values) -> None:
        FIGURES.setdefault(section, {}).update(values)

    return record


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for section, values in sorted(FIGURES.items()):
        terminalreporter.write_line(f"{section}: {json.dumps(values, sort_keys=True, default=str)}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2, sort_keys=True, default=str))


@pytest.fixture
def hash_embedder(monkeypatch, fake_embedder):
    """The deterministic hash embedder in every flow that loads an embedder."""
    use_fakes(embedder=lambda config: fake_embedder)
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    return fake_embedder


@pytest.fixture(autouse=True)
def model_writes_questions(monkeypatch):
    """The scripted PassageLLM writes golden questions here (see tests/flows/conftest.py)."""
    monkeypatch.setenv("RAGLOOP_SYNTH__QUESTION_WRITER", "model")
