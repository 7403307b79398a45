"""A docs site as users have them (issue 17, kinds 5, 7, 8, 10, 12, 13): a 20-file mkdocs folder with
notebooks, admonitions, content tabs, snippets, a theme override and assets, indexed with exclude globs;
the CLI's listing commands and its one-line usage errors. Hash fake embedder, throwaway Prefect backend."""

from __future__ import annotations

import json
import re

import lancedb
import pytest

from ragloop.flows import index as index_flow
from ragloop.flows.cli import main
from tests.conftest import use_fakes, write_files


def _notebook(title: str, code: str, output: str) -> str:
    return json.dumps({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
        "cells": [
            {"cell_type": "markdown", "id": "m", "metadata": {}, "source": f"# {title}\n\nThis notebook walks through {title.lower()}."},
            {"cell_type": "code", "id": "c", "metadata": {}, "execution_count": 1, "source": code,
             "outputs": [{"output_type": "stream", "name": "stdout", "text": output}]},
        ],
    })


DOCS = {
    "index.md": '# Tidewatch\n\nTidewatch predicts tides for harbour masters.\n\n!!! note "Before you start"\n'
                "    You need a station id from your harbour office.\n",
    "getting-started.md": '# Getting started\n\nPick your platform.\n\n=== "Python"\n\n    ## Install with pip\n\n'
                          '    Run the installer in a virtual environment.\n\n    ```bash\n    pip install tidewatch\n    ```\n\n'
                          '=== "Docker"\n\n    ## Install with Docker\n\n    Pull the image and run it with a volume.\n',
    "guide/config.md": "# Configuration\n\nSettings live in tidewatch.toml.\n\n??? tip \"Environment variables\"\n"
                       "    Every setting can be given as TIDEWATCH_ variable.\n\n--8<-- \"includes/glossary.md\"\n",
    "guide/deploy.md": "# Deploy\n\n/// warning | Backups first\nTake a backup of the station database.\n///\n\n"
                       "```python\nfrom tidewatch import serve\nserve(port=8080)\n```\n",
    "guide/advanced.md": '# Advanced\n\n=== "Cluster"\n\n    !!! danger\n        Cluster mode needs three nodes.\n\n'
                         '    ## Quorum\n\n    Nodes vote on the leader.\n',
    "api/reference.md": "# API reference\n\n## predict(station, hours)\n\nReturns a list of tide heights in metres.\n",
    "api/errors.md": '# Errors\n\nThe error codes are:\n\n--8<-- "includes/codes.md:2:3"\n',
    "tutorials/intro.ipynb": _notebook("Intro to tides", "import tidewatch\ntidewatch.predict('OSL', 6)", "NOISY-OUTPUT 1.2 1.4\n"),
    "tutorials/analysis.ipynb": _notebook("Analysis", "df = tidewatch.history('OSL')\ndf.describe()", "NOISY-OUTPUT count 365\n"),
    "tutorials/plots.ipynb": _notebook("Plots", "df.plot(x='time', y='height')", "NOISY-OUTPUT <Axes>\n"),
    "includes/glossary.md": "**Station**: a tide gauge with an id like OSL.\n",
    "includes/codes.md": "Codes\n- E1 station unknown\n- E2 gauge offline\n- E3 not shown\n",
    "overrides/main.html": "{% extends 'base.html' %}{% block announce %}New release!{% endblock %}",
    "overrides/partials/header.html": "<header>{{ config.site_name }}</header>",
    "assets/logo.png": b"\x89PNG\r\n\x1a\n" + bytes(64),
    "assets/extra.css": ".md-header { color: teal; }",
    "assets/app.js": "console.log('tides');",
    "data/sample-data.txt": "timestamp,height\n" * 2000,
    "changelog.md": "# Changelog\n\n## 1.2\n\n- Faster predictions for long horizons.\n",
    "faq.md": "# FAQ\n\n## Why metres?\n\nHarbour charts use metres.\n",
}
CONFIG = "ingest:\n  exclude:\n    - overrides/\n    - assets/\n    - data/\n    - includes/   # snippet targets: read where included, not indexed alone\n"


@pytest.fixture
def fake(monkeypatch, fake_embedder):
    use_fakes(embedder=lambda config: fake_embedder)
    use_fakes(embedder=lambda config: fake_embedder)
    return fake_embedder


def _rows(lake_dir) -> list[dict]:
    db = lancedb.connect(str(lake_dir / "lancedb"))
    return db.open_table("chunks__hash_fake").to_arrow().drop_columns(["vector"]).to_pylist()


def test_docs_site_indexed_as_a_user_wants_with_each_choice_in_the_summary(prefect_backend, fake, tmp_path, lake_dir, capsys):
    assert len(DOCS) == 20
    src = write_files(tmp_path / "docs", DOCS)
    (tmp_path / "site.yaml").write_text(CONFIG)
    # --config after the subcommand (issue 17, kind 12)
    code = main(["index", "--source", str(src), "--lake", str(lake_dir), "--config", str(tmp_path / "site.yaml"), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    assert summary["documents"]["seen"] == 12 and summary["documents"]["quarantined"] == 0
    assert summary["notes"] == {
        "admonitions": 3, "blocks": 1, "content_tabs": 3, "excluded": 8, "notebook_cells_with_outputs_dropped": 3,
        "notebooks": 3, "snippets_resolved": 2,
    }
    rows = _rows(lake_dir)
    assert {r["doc_id"] for r in rows} == {
        "index.md", "getting-started.md", "guide/config.md", "guide/deploy.md", "guide/advanced.md", "api/reference.md",
        "api/errors.md", "tutorials/intro.ipynb", "tutorials/analysis.ipynb", "tutorials/plots.ipynb", "changelog.md", "faq.md"}
    text = "\n".join(r["text"] for r in rows)
    for raw in ("!!!", "???", '=== "', "--8<--", "///", "NOISY-OUTPUT", "New release", "console.log", "timestamp,height"):
        assert raw not in text, raw
    by_doc = {d: "\n".join(r["text"] for r in rows if r["doc_id"] == d) for d in {r["doc_id"] for r in rows}}
    assert "**Before you start**" in by_doc["index.md"]
    assert "Station**: a tide gauge" in by_doc["guide/config.md"]  # the snippet, in place
    assert "E1 station unknown" in by_doc["api/errors.md"] and "E3" not in by_doc["api/errors.md"]  # line range 2:3
    assert "```python\nimport tidewatch" in by_doc["tutorials/intro.ipynb"]
    trails = {tuple(r["headings"]) for r in rows}
    # Tab bodies are Markdown, not indented code: their headings are headings.
    assert any("Install with pip" in t for t in trails) or "## Install with pip" in by_doc["getting-started.md"]
    assert any("Quorum" in h for r in rows for h in r["headings"]) or "## Quorum" in by_doc["guide/advanced.md"]
    for r in rows:
        assert len(re.findall(r"^ *(?:```|~~~)", r["text"], flags=re.M)) % 2 == 0, r["text"]
        assert not all(ln.startswith("#") for ln in r["text"].splitlines() if ln.strip()), r["text"]

    # The human summary says what was left out and rewritten.
    code = main(["index", "--source", str(src), "--lake", str(lake_dir), "--config", str(tmp_path / "site.yaml")])
    out = capsys.readouterr().out
    assert code == 0 and "ingest notes: admonitions 3, blocks 1, content tabs 3, excluded 8" in out


def test_runs_and_golden_show_read_the_lake(prefect_backend, fake, tmp_path, lake_dir, capsys):
    src = write_files(tmp_path / "docs", {k: v for k, v in DOCS.items() if k.endswith(".md") and "includes" not in k})
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert main(["runs", "--lake", str(lake_dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["total"] == 4 and [r["flow"] for r in listed["runs"]].count("index") == 2
    starts = [r["started_at"] for r in listed["runs"]]
    assert starts == sorted(starts, reverse=True) and all(r["status"] == "ok" for r in listed["runs"])
    assert main(["runs", "--flow", "index", "--limit", "1", "--lake", str(lake_dir)]) == 0
    human = capsys.readouterr().out
    assert human.count(" index ") == 1 and "(1 of 2 shown" in human
    assert main(["runs", "--flow", "idnex", "--lake", str(lake_dir)]) == 2
    assert "no run of that flow" in capsys.readouterr().err

    # A ragas 0.1 testset imports with its references (kind 7), then `golden show` lists its items.
    faq = next(r for r in _rows(lake_dir) if r["doc_id"] == "faq.md")
    testset = tmp_path / "testset.jsonl"
    testset.write_text(json.dumps({"question": "Why are heights in metres?", "contexts": [faq["text"]],
                                   "ground_truth": "Harbour charts use metres.", "evolution_type": "simple",
                                   "metadata": [{"source": "faq.md"}], "episode_done": True}) + "\n")
    assert main(["golden", "import", str(testset), "--lake", str(lake_dir), "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert main(["golden", "show", "testset", "--lake", str(lake_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["golden_set_id"] == imported["golden_set_id"] and shown["by_status"] == {"active": 1}
    (item,) = shown["items"]
    assert item["reference_doc_ids"] == ["faq.md"] and item["reference_answer"] == "Harbour charts use metres."
    assert item["qa_type"] == "single_hop"
    assert main(["golden", "show", "testset", "--lake", str(lake_dir)]) == 0
    assert "evidence: faq.md (1 chunks)" in capsys.readouterr().out
    bad = tmp_path / "other.jsonl"
    bad.write_text(json.dumps({"query": "Why?", "truth": "x"}) + "\n")
    assert main(["golden", "import", str(bad), "--lake", str(lake_dir), "--json"]) == 2
    assert "line 1: no 'question' or 'user_input' field" in json.loads(capsys.readouterr().out)["error"]


def test_usage_errors_are_one_line_before_any_flow(prefect_backend, fake, tmp_path, lake_dir, capsys, monkeypatch):
    src = write_files(tmp_path / "docs", {"a.md": "# A\n\nalpha"})
    assert main(["index", "--source", str(tmp_path / "dcos"), "--lake", str(lake_dir)]) == 2
    out = capsys.readouterr()
    assert out.err == f"error: ingest.sources: not found: {tmp_path / 'dcos'}\n" and out.out == ""
    monkeypatch.setenv("RAGLOOP_CHUNKING__OVERLAP_TOKENS", "400")
    assert main(["index", "--source", str(src), "--lake", str(lake_dir)]) == 2
    assert "chunking.overlap_tokens=400 must be smaller than the chunk size of 64" in capsys.readouterr().err
    assert not (lake_dir / "runs").exists(), "nothing ran"


def test_two_sources_with_the_same_file_name_both_indexed(prefect_backend, fake, tmp_path, lake_dir):
    a = write_files(tmp_path / "teamA", {"notes.md": "# Notes\n\nTeam A ships on Mondays."})
    b = write_files(tmp_path / "teamB", {"notes.md": "# Notes\n\nTeam B ships on Fridays."})
    first = index_flow.index_corpus(sources=[str(a), str(b)], lake=str(lake_dir))
    assert first["documents"]["quarantined"] == 0 and first["scope"]["labels"] == {
        str(a.resolve()): "teamA", str(b.resolve()): "teamB"}
    assert {r["doc_id"] for r in _rows(lake_dir)} == {"teamA/notes.md", "teamB/notes.md"}
    again = index_flow.index_corpus(sources=[str(b), str(a)], lake=str(lake_dir))
    assert again["chunks"]["embedded"] == 0 and again["documents"]["unchanged"] == 2
