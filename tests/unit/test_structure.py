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
    eval_chain = ("flows/evaluate.py", "tasks/eval_run.py", "tasks/chain.py", "tasks/evaluation.py")
    offenders = [
        path for path in eval_chain
        if re.search(r"^\s*(from|import)\s+ragloop\.(tasks\.(qa_generation|synth_run)|flows\.synth)\b"
                     r"|^\s*from\s+ragloop\.(tasks|flows)\s+import\s+.*\b(qa_generation|synth_run|synth)\b",
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


def _flow_module_aliases(tree) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ragloop.flows":
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ragloop.flows."):
            continue  # names imported from a flow module are functions, not the module
        elif isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.name.startswith("ragloop.flows.") and a.asname}
    return names


def test_no_test_patches_a_flow_module():
    """Fakes go in through the one provider seam (tasks.providers), never by patching a flow module."""
    import ast

    offenders = []
    for path in (REPO / "tests").rglob("*.py"):
        tree = ast.parse(path.read_text())
        flows = _flow_module_aliases(tree)
        for node in ast.walk(tree):
            target = None
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "setattr" and node.args:
                target = node.args[0]
            elif isinstance(node, ast.Assign):
                target = next((t.value for t in node.targets if isinstance(t, ast.Attribute)), None)
            if isinstance(target, ast.Name) and target.id in flows:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(target, ast.Constant) and str(target.value).startswith("ragloop.flows"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.Call) and any(isinstance(a, ast.Constant) and a.value in ("load_embedder", "load_llm")
                                                  for a in node.args[1:2]):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")  # e.g. a loop over flow modules
    assert offenders == []


def test_flows_get_models_only_from_the_provider_seam():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "flows").glob("*.py")
                 if re.search(r"\b(load_embedder|load_llm|SentenceTransformerEmbedder|LocalLLM|OpenAICompatLLM)\b", p.read_text())]
    assert offenders == []


MAX_FLOW_BODY_LINES = 60


def flow_body_lines() -> dict[str, int]:
    """Lines of every @flow function, from `def` to its last line, by flows/<module>.py:<function>."""
    import ast

    sizes = {}
    for path in sorted((REPO / "flows").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            names = {getattr(d.func if isinstance(d, ast.Call) else d, "id", None) for d in node.decorator_list}
            if "flow" not in names:
                continue
            sizes[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1  # signature and docstring too
    return sizes


def test_flow_bodies_are_wiring():
    """Flows wire, tasks decide (STYLE.md): no flow body over MAX_FLOW_BODY_LINES lines."""
    sizes = flow_body_lines()
    assert len(sizes) >= 9, sizes  # the measure finds the flows
    assert {name: n for name, n in sizes.items() if n > MAX_FLOW_BODY_LINES} == {}
