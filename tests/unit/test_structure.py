"""Guards for the project's own conventions (STYLE.md, DESIGN.md §2 and §6)."""

from __future__ import annotations

import re

from ragloop.flows.cli import COMMANDS, _parser
from tests.conftest import REPO


def test_tasks_never_import_prefect():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "tasks").rglob("*.py")
        if re.search(r"^\s*(from|import)\s+prefect\b", p.read_text(), re.M)
    ]
    assert offenders == []


def test_the_eval_chain_imports_nothing_from_the_synth_modules():
    """Helpers both stages use live in a shared tasks module (grounding, prompts), not in synth's."""
    eval_chain = ("flows/evaluate.py", "tasks/chain.py", "tasks/evaluation.py")
    offenders = [
        path for path in eval_chain
        if re.search(r"^\s*(from|import)\s+ragloop\.(tasks\.qa_generation|flows\.synth)\b"
                     r"|^\s*from\s+ragloop\.(tasks|flows)\s+import\s+.*\b(qa_generation|synth)\b",
                     (REPO / path).read_text(), re.M)
    ]
    assert offenders == []


def test_data_folders_hold_no_python():
    for folder in ("datasets", "prompts"):
        root = REPO / folder
        assert not [p for p in root.rglob("*.py")] if root.exists() else True
    assert not (REPO / "datasets" / "__init__.py").exists(), "it would shadow Hugging Face 'datasets'"


def test_every_cli_command_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    subparsers = next(a for a in _parser()._actions if a.dest == "command")
    assert set(subparsers.choices) == set(COMMANDS)
    missing = [name for name in COMMANDS if f"ragloop {name}" not in readme]
    assert missing == []


def test_readme_and_ci_run_the_same_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make run" in readme


def test_every_tight_pin_says_why():
    """A dependency with an upper bound or exact pin carries a comment on its line or the line above."""
    lines = (REPO / "pyproject.toml").read_text().splitlines()
    unexplained = []
    for i, line in enumerate(lines):
        spec = re.match(r'\s*"([A-Za-z0-9_.\-\[\]]+)([^"]*)"', line)
        if not spec or not re.search(r"<|==", spec.group(2)):
            continue
        if "#" not in line and not lines[i - 1].strip().startswith("#"):
            unexplained.append(spec.group(1))
    assert unexplained == []
