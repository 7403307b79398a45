"""`ragloop bakeoff` with deterministic fakes: a 2x2 matrix on a tiny BEIR corpus, reuse of unchanged cells,
resume after a cell that failed, choice on train and score on test, and a bad file failing before any work."""

from __future__ import annotations

import json

import pytest

from ragloop.flows.cli import main
from ragloop.tasks.storage import Lake
from tests.conftest import use_fakes, write_files
from ragloop.tasks.llm import ScriptedLLM
from tests.conftest import REPO
from tests.flows.test_eval_flow import CORPUS, QUERIES

TRAIN = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"
TEST = "query-id\tcorpus-id\tscore\nq3\td3\t1\nq1\td1\t1\n"
BAKEOFF = """\
name: tiny
choose_on: beir-beir-train
score_on: beir-beir-test
metric: ndcg@1
matrix:
  retrieval: [vector, fts]
  k: [2, 4]
"""


@pytest.fixture
def fakes(monkeypatch, fake_embedder):
    use_fakes(embedder=lambda config: fake_embedder, llm=lambda config: ScriptedLLM())
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))


@pytest.fixture
def beir_lake(prefect_backend, fakes, tmp_path, lake_dir, capsys):
    root = write_files(tmp_path / "beir", {
        "corpus.jsonl": "\n".join(json.dumps(d) for d in CORPUS) + "\n",
        "queries.jsonl": "\n".join(json.dumps(q) for q in QUERIES) + "\n",
        "qrels/train.tsv": TRAIN, "qrels/test.tsv": TEST,
    })
    for split in ("train", "test"):
        assert main(["import-beir", str(root), "--chunking", "none", "--lake", str(lake_dir), "--split", split,
                     "--json"]) == 0
    capsys.readouterr()
    return lake_dir


def _bakeoff(tmp_path, lake_dir, capsys, *extra, text=BAKEOFF):
    path = tmp_path / "bakeoff.yaml"
    path.write_text(text, encoding="utf-8")
    code = main(["bakeoff", str(path), "--lake", str(lake_dir), *extra])
    return code, capsys.readouterr()


def test_bakeoff_runs_cells_reuses_them_and_resumes(beir_lake, tmp_path, capsys, fake_embedder):
    builds = []

    def embedder_dies_in_the_fourth_cell(config):
        builds.append(config)
        if len(builds) == 4:  # cells run in order, one eval (one embedder) each: fts-k4 dies the first time
            raise RuntimeError("killed")
        return fake_embedder

    use_fakes(embedder=embedder_dies_in_the_fourth_cell)
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--json")
    first = json.loads(out.out)
    assert code == 0 and first["status"] == "partial", first  # partial exits 0, as an eval with failed items
    cells = {c["name"]: c for c in first["cells"]}
    assert list(cells) == ["vector-k2", "vector-k4", "fts-k2", "fts-k4"]
    assert cells["fts-k4"]["status"] == "failed" and "killed" in cells["fts-k4"]["error"]
    assert all(c["status"] == "ok" and not c["cached"] for n, c in cells.items() if n != "fts-k4")
    lake = Lake(str(beir_lake))
    for c in cells.values():
        if c["status"] == "ok":
            run = lake.read_run(c["run_id"])
            assert run["flow"] == "eval" and run["outputs"]["promoted"] is False, "an experiment, never promoted"
            assert run["lineage"]["golden_set_id"] == first["golden_set_id"]
            assert run["lineage"]["chain"]["retrieval"] == c["config"]["eval"]["retrieval"]
            assert c["latency_p95_ms"] >= c["latency_p50_ms"] >= 0 and c["tokens_in"] == 0 and c["cost"] == 0.0
    assert first["choose_on"] == "beir-beir-train" and first["held_out"]["line"] == "beir-beir-test"
    assert first["chosen"] in cells and first["held_out"]["golden_set_id"] != first["golden_set_id"]
    assert set(first["pareto"]) == {"latency", "cost"} and first["pareto"]["cost"]
    assert first["report"].endswith("report.html") and (beir_lake / "bakeoffs" / f"{first['run_id']}.parquet").exists()

    # the second bake-off: the three finished cells are reused, the failed one runs now
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--json")
    second = json.loads(out.out)
    assert code == 0 and second["status"] == "ok", second
    again = {c["name"]: c for c in second["cells"]}
    assert {n for n, c in again.items() if c["cached"]} == {"vector-k2", "vector-k4", "fts-k2"}
    assert not again["fts-k4"]["cached"]
    assert all(again[n]["run_id"] == cells[n]["run_id"] for n in ("vector-k2", "vector-k4", "fts-k2"))
    assert second["held_out"]["cached"] is True, "the chosen cell's held-out run is reused too"

    # unchanged: every cell is reused; the Markdown table names both splits
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--format", "markdown")
    assert code == 0 and out.out.count("(reused)") == 4
    assert "Chosen on `beir-beir-train`" in out.out and "Scored on `beir-beir-test` (held out" in out.out


def test_named_baseline_cell_gives_paired_deltas_and_promote_prints_the_config(beir_lake, tmp_path, capsys):
    text = BAKEOFF.replace("matrix:", "baseline: vector-k4\nmatrix:")
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--promote", "fts-k2", "--json", text=text)
    summary = json.loads(out.out)
    assert code == 0, summary
    cells = {c["name"]: c for c in summary["cells"]}
    assert summary["reference"]["run_id"] == cells["vector-k4"]["run_id"]
    assert cells["vector-k4"]["deltas"]["ndcg@1"]["delta"] == 0.0 and cells["vector-k4"]["deltas"]["ndcg@1"]["verdict"] == "same"
    assert all("ndcg@1" in c["deltas"] for c in cells.values())
    assert summary["promote"] == {"cell": "fts-k2", "applied": False,
                                  "how": "put `adopt` in ragloop.yaml, then `ragloop eval --promote` gates it"}
    assert "retrieval: fts" in summary["adopt"] and "k: 2" in summary["adopt"]


@pytest.mark.parametrize("text, message", [
    ("name: x\nmatrix: {retrieval: [bm25]}\n", "matrix.retrieval.0"),
    ("name: x\nchoose_on: nope\nscore_on: beir-beir-test\n", "bakeoff choose_on: --golden nope: no such golden set"),
])
def test_bad_bakeoff_file_exits_2_in_one_line_before_any_work(beir_lake, tmp_path, capsys, text, message):
    runs = len(Lake(str(beir_lake)).read_runs().to_pylist()) if hasattr(Lake, "read_runs") else None
    code, out = _bakeoff(tmp_path, beir_lake, capsys, text=text)
    assert code == 2 and out.out == ""
    assert message in out.err and out.err.count("\n") == 1 and out.err.startswith("error: ")
    if runs is not None:
        assert len(Lake(str(beir_lake)).read_runs().to_pylist()) == runs, "no run started"
