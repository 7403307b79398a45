"""`compare --format markdown`: the pull-request comment, snapshot-tested on a seeded pair of runs, and the
example CI workflow that posts it (parsed, never run)."""

from __future__ import annotations

import datetime as dt
import os
import random
import re

import pyarrow as pa
import pytest
import yaml
from markdown_it import MarkdownIt

from ragloop.flows.cli import main
from ragloop.tasks import commands, schemas
from ragloop.tasks.settings import EvalConfig, GateConfig
from ragloop.tasks.storage import Lake
from tests.conftest import REPO

SNAPSHOT = REPO / "tests" / "unit" / "data" / "compare_markdown.md"
UPDATE = "UPDATE_SNAPSHOTS"  # set to rewrite the snapshot after an intended change
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
N = 40


def _write_run(lake: Lake, run_id: str, rows: list[dict], lineage: dict, at: int) -> None:
    items = [{"qa_id": f"q{i:02d}", "qa_type": "single_hop", "question": f"Question {i}?", "status": "ok", "error": None,
              "retrieved_chunk_ids": [], "retrieved_doc_ids": [], "retrieval_scores": [], "answer": "an answer",
              "refused": False, "grounded": True, "degenerate": None, "relevance": None, "metrics": m,
              "failed_metrics": [], "stale_references": []} for i, m in enumerate(rows)]
    lake.write_eval(run_id, pa.Table.from_pylist(items, schema=schemas.EVAL_ITEMS), schemas.TRACES.empty_table())
    means = {name: sum(r[name] for r in rows if name in r) / sum(1 for r in rows if name in r)
             for name in sorted({n for r in rows for n in r})}
    start = T0 + dt.timedelta(minutes=at)
    lake.write_run({"run_id": run_id, "flow": "eval", "status": "ok", "started_at": start,
                    "ended_at": start + dt.timedelta(seconds=30),
                    "lineage": {"golden_set_id": "g0ld3n5e7", "git_commit": run_id, **lineage},
                    "outputs": {"metrics": means, "budgets": {"tokens_per_item": 300.0}}})


@pytest.fixture
def seeded_pair(lake_dir):
    """Baseline and candidate on the same 40 questions (random.Random(21)): hit@5 unchanged (passes),
    ndcg@5 jittered (inconclusive), rouge_l down by about 0.1 (fails), degenerate (lower is better)
    unchanged, faithfulness only in the candidate; the candidate switched to hybrid retrieval and a new
    answer prompt."""
    rng = random.Random(21)
    base, cand = [], []
    for _ in range(N):
        hit = float(rng.random() < 0.7)
        ndcg, rouge = rng.uniform(0.3, 0.9), rng.uniform(0.4, 0.8)
        degenerate = float(rng.random() < 0.1)
        base.append({"hit@5": hit, "ndcg@5": round(ndcg, 4), "rouge_l": round(rouge, 4), "degenerate": degenerate})
        cand.append({"hit@5": hit, "ndcg@5": round(min(1.0, max(0.0, ndcg + rng.uniform(-0.08, 0.08))), 4),
                     "rouge_l": round(rouge - 0.1 + rng.uniform(-0.02, 0.02), 4), "degenerate": degenerate,
                     "faithfulness": round(rng.uniform(0.5, 1.0), 4)})
    lake = Lake(str(lake_dir))
    chain = {"retrieval": "vector", "k": 5, "answer": {"name": "answer", "prompt_hash": "a" * 64}}
    _write_run(lake, "20260301T000000Z-eval-base01", base, {"chain": chain, "prompts": {"answer": "a" * 64}}, 0)
    _write_run(lake, "20260301T001000Z-eval-cand01", cand,
               {"chain": {**chain, "retrieval": "hybrid", "answer": {"name": "answer", "prompt_hash": "b" * 64}},
                "prompts": {"answer": "b" * 64}}, 10)
    return lake


def _markdown(lake: Lake) -> str:
    summary = commands.compare_runs(lake, "20260301T000000Z-eval-base01", "20260301T001000Z-eval-cand01",
                                    EvalConfig(), GateConfig()).model_dump(mode="json")
    return commands.compare_markdown(summary, 0.95)


def test_the_pull_request_comment_matches_its_snapshot(seeded_pair):
    text = _markdown(seeded_pair)
    if os.environ.get(UPDATE):
        SNAPSHOT.write_text(text, encoding="utf-8")
    assert text == SNAPSHOT.read_text(encoding="utf-8"), f"set {UPDATE}=1 to accept the new text"
    assert _markdown(seeded_pair) == text, "seeded: the same runs give the same comment"


def test_the_comment_is_a_github_table_without_html(seeded_pair):
    text = _markdown(seeded_pair)
    assert not re.search(r"<[A-Za-z/!]", text), "GitHub-flavoured Markdown only, no HTML"
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert len(rows) == 1 + 4, "a header and one row per metric both runs measured"
    cells = {re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)[0]: re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows[1:]}
    assert cells["rouge_l"][-1] == "❌ fail" and cells["hit@5"][-1] == "✅ pass"
    assert cells["ndcg@5"][-1] == "⚠️ inconclusive" and cells["degenerate ↓"][-1] == "✅ pass"
    assert text.startswith("### ragloop eval: ❌ gate failed")
    assert "- not compared (candidate only): faithfulness" in text
    assert "`chain` (answer: answer@aaaaaaaaaaaa → answer@bbbbbbbbbbbb; retrieval: vector → hybrid)" in text


def test_compare_format_markdown_on_the_cli(seeded_pair, lake_dir, capsys):
    args = ["compare", "20260301T000000Z-eval-base01", "20260301T001000Z-eval-cand01", "--lake", str(lake_dir)]
    assert main([*args, "--format", "markdown"]) == 0
    assert capsys.readouterr().out == _markdown(seeded_pair)
    assert main([*args, "--format", "markdown", "--json"]) == 2
    assert "choose --json or --format markdown" in capsys.readouterr().out
    assert main(args) == 0
    assert "gate (the candidate against the baseline): failed" in capsys.readouterr().out


def test_the_example_ci_workflow_parses_and_posts_the_comment():
    path = REPO / "examples" / "ci" / "ragloop-pr.yml"
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    scripts = "\n".join(step.get("run", "") for step in steps)
    assert "ragloop eval" in scripts and "--format markdown" in scripts and "gh pr comment" in scripts
    assert workflow["permissions"]["pull-requests"] == "write"
