"""Commands that only read the lake start nothing: each runs in a fresh interpreter on a small real lake
and must leave prefect and the model libraries unimported (see flows/cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ragloop.flows import evaluate as eval_flow
from ragloop.tasks import providers
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.llm import ScriptedLLM
from ragloop.tasks.storage import Lake
from tests.conftest import REPO
from tests.reliability.helpers import import_station_golden, index_stations

# What a read-only command has no use for: the orchestrator (and its ephemeral server), the models,
# the judge library, the vector store, the validation suite, the plotting library.
FORBIDDEN = ("prefect", "torch", "sentence_transformers", "transformers", "llama_cpp", "ragas", "lancedb",
             "great_expectations", "matplotlib")
# The ragas export writes a ragas dataset from the chunk texts of the index: those two it needs.
FORBIDDEN_RAGAS_EXPORT = tuple(m for m in FORBIDDEN if m not in ("ragas", "lancedb"))

# Runs the CLI in a fresh interpreter, then reports, on a last line of its own, the forbidden modules
# that got imported. Only `golden export --format ragas` reads the index: it asks for the fake embedder
# the lake was built with (a subprocess cannot be monkeypatched from here).
DRIVER = """
import json, os, sys
if os.environ.get("FAKE_EMBEDDER"):
    from ragloop.tasks import providers
    from ragloop.tasks.embedding import HashEmbedder
    providers.install(providers.Providers(embedder=lambda config: HashEmbedder(dim=32, max_tokens=64)))
from ragloop.flows.cli import main
code = main(sys.argv[1:])
forbidden = os.environ["FORBIDDEN_MODULES"].split(",")
print(json.dumps({"exit_code": code, "imported": sorted(m for m in forbidden if m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def lake(prefect_backend, tmp_path_factory):
    """A small lake made by the real flows (hash embedder, no LLM): an index, an imported golden set
    with chunk references and two retrieval-only eval runs. Returns (root, lake path, eval run ids)."""
    root = tmp_path_factory.mktemp("read_only")
    lake_dir = root / "lake"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("RAGLOOP_"):
                mp.delenv(name)
        mp.chdir(root)
        mp.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
        embedder = HashEmbedder(dim=32, max_tokens=64)
        with providers.use(providers.Providers(embedder=lambda config: embedder, llm=lambda config: ScriptedLLM())):
            index_stations(root, lake_dir, 6)
            import_station_golden(root, lake_dir)
            runs = [eval_flow.evaluate_chain(lake=str(lake_dir), retrieval=mode, k=3, retrieval_only=True)["run_id"]
                    for mode in ("vector", "fts")]
    return root, lake_dir, runs


def _run_with(root, argv: list[str], forbidden: tuple[str, ...], fake_embedder: bool = False) -> tuple[dict, dict]:
    """(the command's JSON summary, the driver's report) from a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGLOOP_", "PREFECT_"))}
    env["RAGLOOP_PROMPTS_DIR"] = str(REPO / "prompts")
    env["FORBIDDEN_MODULES"] = ",".join(forbidden)
    if fake_embedder:
        env["FAKE_EMBEDDER"] = "1"
    proc = subprocess.run([sys.executable, "-c", DRIVER, *argv], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    *summary_lines, report_line = proc.stdout.strip().splitlines()
    return json.loads("\n".join(summary_lines)), json.loads(report_line)


@pytest.mark.parametrize("argv", [
    ["runs"],
    ["runs", "--flow", "eval", "--limit", "1"],
    ["lineage", "{run_a}"],
    ["compare", "{run_a}", "{run_b}"],
    ["golden", "list"],
    ["golden", "show", "latest"],
    ["golden", "diff", "latest", "latest"],
    ["golden", "export", "--out", "{root}/golden.jsonl"],
    ["prompts", "check"],
    ["calibrate"],
], ids=lambda argv: " ".join(a for a in argv if "{" not in a))
def test_read_only_commands_import_neither_prefect_nor_models(lake, argv):
    root, lake_dir, (run_a, run_b) = lake
    argv = [a.format(run_a=run_a, run_b=run_b, root=root) for a in argv] + ["--lake", str(lake_dir), "--json"]
    summary, report = _run_with(root, argv, FORBIDDEN)
    assert report == {"exit_code": 0, "imported": []}, summary
    assert summary["status"] == "ok"


def test_golden_export_as_ragas_needs_only_ragas_and_the_index(lake):
    root, lake_dir, _ = lake
    out = root / "golden.ragas.jsonl"
    summary, report = _run_with(root, ["golden", "export", "--format", "ragas", "--out", str(out), "--lake", str(lake_dir),
                                       "--json"], FORBIDDEN_RAGAS_EXPORT, fake_embedder=True)
    assert report == {"exit_code": 0, "imported": []}, summary
    assert summary["items"] == len(out.read_text().splitlines()) > 0


def test_golden_report_reads_the_lake_and_the_index_only(lake):
    root, lake_dir, _ = lake
    summary, report = _run_with(root, ["golden", "report", "--sample", "2", "--lake", str(lake_dir), "--json"],
                                tuple(m for m in FORBIDDEN if m != "lancedb"))
    assert report == {"exit_code": 0, "imported": []}, summary
    assert summary["generation"] is None and summary["items"]["active"] > 0 and len(summary["sample"]) == 2
    assert summary["coverage"]["of"] > 0


def test_a_read_only_usage_error_still_exits_2_without_prefect(lake):
    root, lake_dir, _ = lake
    summary, report = _run_with(root, ["lineage", "no-such-run", "--lake", str(lake_dir), "--json"], FORBIDDEN)
    assert report == {"exit_code": 2, "imported": []}
    assert "no-such-run" in summary["error"]


def test_lineage_prints_the_run_manifest_it_read(lake):
    root, lake_dir, (run_a, _) = lake
    summary, _ = _run_with(root, ["lineage", run_a, "--lake", str(lake_dir), "--json"], FORBIDDEN)
    assert summary["lineage"] == json.loads(json.dumps(Lake(str(lake_dir)).read_run(run_a)["lineage"], default=str))


@pytest.mark.parametrize("kind", ["sft", "preference"])
def test_export_reads_the_lake_and_the_index_only(lake, kind):
    root, lake_dir, _ = lake
    out = root / f"{kind}.jsonl"
    summary, report = _run_with(root, ["export", kind, "--out", str(out), "--lake", str(lake_dir), "--json"],
                                tuple(m for m in FORBIDDEN if m != "lancedb"))
    assert report == {"exit_code": 0, "imported": []}, summary
    assert summary["rows"] == len(out.read_text().splitlines())  # nothing reviewed or graded yet: 0 rows

