"""`ragloop bakeoff` with deterministic fakes: a 2x2 matrix on a tiny BEIR corpus, with a chunker axis (one
table per chunker, built by the index path beside the served one), reuse of unchanged cells and tables, resume
after a cell that failed and after SIGKILLs (mid-table and mid-cells), the Pareto fronts, chunk-level evidence
a chunker cannot match, `--promote` through the gate (passed, failed, inconclusive), choice on train and score
on test, and a bad file failing before any work."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from ragloop.flows.cli import main
from ragloop.tasks import golden_sets
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.llm import ScriptedLLM
from ragloop.tasks.promotion import Refs
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, use_fakes, write_files
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
# 2x2 over an index axis: `none` is the served chunker (the fixture indexes with --chunking none), `small`
# splits every document in two, so its cells read a bake-off table built beside the served one.
BY_CHUNKER = """\
name: chunkers
choose_on: beir-beir-train
score_on: beir-beir-test
metric: ndcg@1
matrix:
  chunking: [{strategy: none}, {label: small, strategy: recursive, max_tokens: 8, overlap_tokens: 2}]
  retrieval: [vector, fts]
  k: [4]
"""
CONFIG = """\
# the project's config (comments and layout must survive --promote)
gate:
  min_items: 1        # two questions per line in these tests
  max_drop: 1.0       # a cell may not fail on a delta, only on a floor
eval:
  retrieval: vector   # what the baseline runs
  k: 2
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


def _dominated(p, others, metric):
    return any(o["metrics"][metric] >= p["metrics"][metric] and o["latency_p50_ms"] <= p["latency_p50_ms"]
               and (o["metrics"][metric] > p["metrics"][metric] or o["latency_p50_ms"] < p["latency_p50_ms"])
               for o in others)


def test_bakeoff_runs_cells_reuses_them_and_resumes(beir_lake, tmp_path, capsys, fake_embedder):
    died = []

    def embedder_dies_in_the_fourth_cell(config):
        # each cell's eval builds its embedder before it records its run: three eval runs recorded means
        # the fourth cell (fts-k4; cells run in matrix order, one at a time) is starting
        if not died and len(list((beir_lake / "runs").glob("*-eval-*.parquet"))) == 3:
            died.append(True)
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
            assert c["index"]["role"] == "serving" and c["evidence"]["chunk_level"] == "none", "BEIR: documents only"
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
    # the chosen cell's held-out run is reused when the choice stands (ties go to the lower latency, measured)
    assert second["held_out"]["cached"] is (second["chosen"] == first["chosen"])
    front = [again[n] for n in second["pareto"]["latency"]]
    assert all(not _dominated(c, second["cells"], "ndcg@1") for c in front), "a front cell is dominated"
    assert all(_dominated(c, front, "ndcg@1") for n, c in again.items() if n not in second["pareto"]["latency"]), \
        "a cell off the front is not dominated by the front"

    # unchanged: every cell is reused; the Markdown table names both splits
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--format", "markdown")
    assert code == 0 and out.out.count("(reused)") == 4
    assert "Chosen on `beir-beir-train`" in out.out and "Scored on `beir-beir-test` (held out" in out.out
    assert "| index |" not in out.out, "one served table: no index table"


def test_chunker_axis_builds_one_table_per_chunker_beside_the_served_one_and_reuses_it(beir_lake, tmp_path, capsys):
    lake = Lake(str(beir_lake))
    serving_before = lake.read_ref("serving")
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--json", text=BY_CHUNKER)
    first = json.loads(out.out)
    assert code == 0 and first["status"] == "ok", first
    cells = {c["name"]: c for c in first["cells"]}
    assert list(cells) == ["none-vector-k4", "none-fts-k4", "small-vector-k4", "small-fts-k4"]
    served, built = first["tables"]
    assert served["role"] == "serving" and served["table"] == serving_before["table"]
    assert served["cells"] == ["none-vector-k4", "none-fts-k4"] and served["chunking"] == {"strategy": "none"}
    assert built["role"] == "bakeoff" and built["table"].startswith(serving_before["table"] + "__ck")
    assert built["cells"] == ["small-vector-k4", "small-fts-k4"] and built["chunks"] > served["chunks"] == 4, "4 documents, split"
    assert built["bytes"] > 0 and built["build_s"] > 0
    # the lake's serving and candidate refs are untouched; the bake-off table is recorded as such
    assert lake.read_ref("serving") == serving_before and lake.read_ref("candidate") is None
    index_run = lake.read_run(built["index_run_id"])
    assert index_run["flow"] == "index" and index_run["outputs"]["disposition"]["action"] == "bakeoff"
    assert index_run["lineage"]["chunker"]["strategy"] == "recursive"
    assert index_run["lineage"]["snapshot_id"] == lake.read_run(serving_before["run_id"])["lineage"]["snapshot_id"]
    for name, c in cells.items():
        run = lake.read_run(c["run_id"])
        table = built if name.startswith("small") else served
        assert run["lineage"]["table"] == {"name": table["table"], "version": table["version"]}
        assert run["lineage"]["index_role"] == table["role"] and run["lineage"]["golden_set_id"] == first["golden_set_id"]
        assert run["lineage"]["chunker_hash"] == index_run["lineage"]["chunker_hash"] or not name.startswith("small")
    assert first["chosen"] in cells

    # again: the table is reused (same version, built by the same run; the no-op index run wrote nothing) and
    # every cell with it
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--json", text=BY_CHUNKER)
    second = json.loads(out.out)
    assert code == 0 and [t["version"] for t in second["tables"]] == [served["version"], built["version"]]
    assert second["tables"][1]["index_run_id"] == built["index_run_id"]
    assert all(c["cached"] for c in second["cells"])
    last_index = max((r for r in lake.read_runs().to_pylist() if r["flow"] == "index"), key=lambda r: r["started_at"])
    assert lake.read_run(last_index["run_id"])["outputs"]["chunks"] == {
        "total": built["chunks"], "embedded": 0, "reused": 0, "written": 0, "deleted": 0, "truncated": 0}
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--format", "markdown", text=BY_CHUNKER)
    assert "| index | role | embedding | chunking |" in out.out and built["table"] in out.out


def test_embedder_axis_reads_a_table_per_embedder(beir_lake, tmp_path, capsys, fake_embedder):
    others: dict[str, HashEmbedder] = {}

    def by_model(config):
        if config.model == "all-minilm-l6-v2":  # the configured (and served) one
            return fake_embedder
        return others.setdefault(config.model, HashEmbedder(dim=16, max_tokens=64, name=config.model))

    use_fakes(embedder=by_model)
    text = BAKEOFF.replace("matrix:", "matrix:\n  embedding: [{label: served}, {model: hash-small}]").replace("k: [2, 4]", "k: [4]")
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--json", text=text)
    summary = json.loads(out.out)
    assert code == 0 and summary["status"] == "ok", summary
    assert [c["name"] for c in summary["cells"]] == ["served-vector-k4", "served-fts-k4", "hash_small-vector-k4",
                                                     "hash_small-fts-k4"]
    tables = {t["table"]: t for t in summary["tables"]}
    assert [t["role"] for t in summary["tables"]] == ["serving", "bakeoff"]
    small = summary["tables"][1]
    assert small["table"].startswith("chunks__hash_small__ck") and small["embedding"] == {"model": "hash-small"}
    assert len(tables) == 2 and others["hash-small"].encoded, "the other embedder embedded the corpus"
    run = Lake(str(beir_lake)).read_run(summary["cells"][2]["run_id"])
    assert run["lineage"]["models"]["embedder"] == "hash-small" and run["lineage"]["table"]["name"] == small["table"]


def test_chunk_level_evidence_another_chunker_cannot_match_is_said_and_not_compared(beir_lake, tmp_path, capsys):
    lake = Lake(str(beir_lake))
    served = lake.read_ref("serving")
    table = lake.connect_vectors().open_table(served["table"])
    chunk_of = {r["doc_id"]: r["chunk_id"] for r in table.search().select(["doc_id", "chunk_id"]).limit(None).to_arrow().to_pylist()}
    rows = golden_sets.read_beir_golden(beir_lake.parent / "beir", "train")
    for r in rows:  # a curated set whose evidence is the served chunks (chunking none: one per document)
        r.update(reference_chunk_ids=[chunk_of[d] for d in r["reference_doc_ids"]], qa_type="single_hop",
                 review="approved", generator="test")
    golden_set_id, _ = golden_sets.write_golden_rows(lake, rows)
    Refs(lake).set_line("curated", golden_set_id, "curated", None)
    text = BY_CHUNKER.replace("choose_on: beir-beir-train\nscore_on: beir-beir-test\nmetric: ndcg@1",
                              "golden: curated\nmetric: chunk_ndcg@1").replace("[vector, fts]", "[vector]")
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--json", text=text)
    summary = json.loads(out.out)
    assert code == 0, summary
    same, other = summary["cells"]
    assert same["evidence"] == {"chunk_level": "matched", "items": 2, "scored": 2, "note": None} and same["comparable"]
    assert other["evidence"]["chunk_level"] == "unmatchable" and other["comparable"] is False
    assert "chunk_ndcg@1" not in other["metrics"] and "ndcg@1" in other["metrics"], "documents are still scored"
    assert "unmatchable" in other["note"] and other["index"]["table"] in other["note"]
    assert summary["chosen"] == same["name"] and other["name"] not in summary["pareto"]["latency"]
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--format", "markdown", text=text)
    assert f"- `{other['name']}`: chunk_ndcg@1: chunk-level evidence unmatchable" in out.out


def _baseline(beir_lake, capsys, line="beir-beir-test"):
    """Make a run of the configured chain (eval: vector, k 2) the line's baseline, as `eval --promote` does."""
    code = main(["eval", "--golden", line, "--retrieval-only", "--promote", "--lake", str(beir_lake), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["promoted"], summary
    return summary["run_id"]


def test_promote_passes_the_gate_then_writes_the_config_and_moves_the_baseline(beir_lake, tmp_path, capsys):
    config = tmp_path / "ragloop.yaml"  # the tests' cwd: what the settings (and --promote) read
    config.write_text(CONFIG, encoding="utf-8")
    lake = Refs(Lake(str(beir_lake)))
    base = _baseline(beir_lake, capsys)
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--promote", "fts-k4", "--json")
    summary = json.loads(out.out)
    promote = summary["promote"]
    assert code == 0 and promote["applied"] and promote["gate"]["status"] == "passed", promote
    assert promote["line"] == "beir-beir-test", "gated on the held-out line"
    assert promote["baseline_moved"] and lake.baseline("beir-beir-test").run_id == promote["run_id"] != base
    assert Lake(str(beir_lake)).read_run(promote["run_id"])["lineage"]["chain"]["retrieval"] == "fts"
    text = config.read_text(encoding="utf-8")
    assert "  retrieval: fts      # what the baseline runs\n" in text and "  k: 4\n" in text and "rerank: none" in text
    # the cell read the served table, built with --chunking none under a markdown default: what it measured
    assert "chunking:\n  strategy: none\n" in text
    assert text.startswith("# the project's config") and "  min_items: 1        # two questions" in text
    assert "\n-  k: 2\n" in promote["config"]["diff"] and "\n+  k: 4\n" in promote["config"]["diff"] and promote["config"]["written"] and promote["next"] is None
    assert "retrieval: fts" in summary["adopt"]

    # a cell on a bake-off table passes too: its settings are written, but no baseline moves (its table is not
    # served: blue/green through `ragloop index` then `eval --promote`, which `next` says)
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--promote", "small-vector-k4", "--json", text=BY_CHUNKER)
    promote = json.loads(out.out)["promote"]
    assert code == 0 and promote["applied"] and not promote["baseline_moved"], promote
    assert lake.baseline("beir-beir-test").run_id != promote["run_id"]
    assert "ragloop index" in promote["next"] and "eval --promote" in promote["next"]
    text = config.read_text(encoding="utf-8")
    assert "chunking:\n  strategy: recursive\n  max_tokens: 8\n  overlap_tokens: 2\n" in text
    assert "  retrieval: vector   # what the baseline runs\n" in text
    assert main(["promote", promote["run_id"], "--lake", str(beir_lake)]) == 2, "nor by hand"
    assert "bake-off table" in capsys.readouterr().err


@pytest.mark.parametrize("extra, status, reason", [
    ("", "gate_inconclusive", "inconclusive"),  # two questions are too few to tell (min_items 30)
    ("gate:\n  min_items: 1\n  floors: {ndcg@1: 1.01}\n", "gate_failed", "floor"),  # a floor no run reaches
])
def test_promote_is_refused_when_the_gate_fails_or_is_inconclusive(beir_lake, tmp_path, capsys, extra, status, reason):
    config = tmp_path / "ragloop.yaml"
    config.write_text("eval:\n  retrieval: vector\n  k: 2\n", encoding="utf-8")
    base = _baseline(beir_lake, capsys)
    config.write_text(config.read_text() + extra, encoding="utf-8")
    before = config.read_bytes()
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--promote", "fts-k4", "--json")
    summary = json.loads(out.out)
    assert code == 3 and summary["status"] == status, summary
    promote = summary["promote"]
    assert not promote["applied"] and promote["gate"]["status"] == status.removeprefix("gate_")
    assert reason in promote["reason"] and promote["config"] is None
    assert config.read_bytes() == before, "the config is not touched"
    assert Refs(Lake(str(beir_lake))).baseline("beir-beir-test").run_id == base


def test_promote_refuses_before_any_work_when_an_env_var_would_override_it(beir_lake, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAGLOOP_EVAL__K", "7")
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--promote", "fts-k4")
    assert code == 2 and "RAGLOOP_EVAL__K would override" in out.err
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--promote", "nope")
    assert code == 2 and "no such cell" in out.err


@pytest.mark.slow  # two child processes and two more bake-offs: ~50 s on a loaded 2-core machine (make test-slow)
def test_bakeoff_killed_mid_table_and_mid_cells_converges_on_the_next_run(beir_lake, tmp_path, capsys):
    """SIGKILL the bake-off process twice (inside its table's build, then between cells); the next run
    reuses every cell that finished and the table, and its scores equal those of a run that was never killed."""
    path = tmp_path / "bakeoff.yaml"
    path.write_text(BY_CHUNKER, encoding="utf-8")
    lake = Lake(str(beir_lake))
    serving = lake.read_ref("serving")
    assert _child_bakeoff(beir_lake, path, "commit_run:1:pre", tmp_path / "kill1.log") == "killed"
    assert _child_bakeoff(beir_lake, path, "write_eval:3:pre", tmp_path / "kill2.log") == "killed"
    killed = [r for r in lake.read_runs().to_pylist() if r["flow"] == "bakeoff"]
    assert len(killed) == 2 and all(r["status"] == "running" and r["ended_at"] is None for r in killed), \
        "a killed run says it did not complete"
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--json", text=BY_CHUNKER)
    summary = json.loads(out.out)
    assert code == 0 and summary["status"] == "ok", summary
    assert [c["cached"] for c in summary["cells"]] == [True, True, False, False], "two cells finished before the kill"
    built = summary["tables"][1]
    assert lake.read_run(built["index_run_id"])["status"] == "ok" and built["chunks"] > 4
    assert lake.read_ref("serving") == serving and lake.read_ref("candidate") is None
    clean_lake = tmp_path / "clean"
    _copy_lake_before_bakeoffs(beir_lake, clean_lake)
    code, out = _bakeoff(tmp_path, clean_lake, capsys, "--json", text=BY_CHUNKER)
    clean = json.loads(out.out)
    assert [(c["name"], c["metrics"]) for c in clean["cells"]] == [(c["name"], c["metrics"]) for c in summary["cells"]]
    best = max(c["metrics"]["ndcg@1"] for c in clean["cells"])  # ties go to the lower latency, measured: either may win
    assert clean["chosen_score"] == summary["chosen_score"] == best


def _copy_lake_before_bakeoffs(src, dest):
    """A copy of the lake as the fixture left it (documents, served table, golden lines): no bake-off table."""
    import shutil

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*__ck*", "eval", "bakeoffs", "reports", "eval_cache__*",
                                                             "bakeoff_table__*", "locks"))


def _child_env() -> dict:
    import prefect.settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLOOP_")}
    env.update({"PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value(),
                "PREFECT_LOGGING_LEVEL": "WARNING", "RAGLOOP_PROMPTS_DIR": str(REPO / "prompts")})
    return env


def _child_bakeoff(lake_dir, path, kill: str, log) -> str:
    """Run `ragloop bakeoff` in a child with the fakes (tests/reliability/crash_worker.py), SIGKILLed at `kill`
    (TARGET:N:pre|post). Returns 'killed' or 'completed'."""
    cmd = [sys.executable, "-m", "tests.reliability.crash_worker", "bakeoff", "--lake", str(lake_dir), "--file", str(path),
           "--kill", kill]
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=_child_env(), cwd=str(path.parent))
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line.decode()) for line in proc.stdout], daemon=True).start()
        try:
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()  # by pid: only the child this test started
                proc.wait()
    if code == -9:
        return "killed"
    assert code == 0, f"the child failed (exit {code}); see {log}:\n{log.read_text()[-3000:]}"
    return "completed"


@pytest.mark.parametrize("text, message", [
    ("name: x\nmatrix: {retrieval: [bm25]}\n", "matrix.retrieval.0"),
    ("name: x\nmetric: ndcg@5\nchoose_on: nope\nscore_on: beir-beir-test\n",
     "bakeoff choose_on: --golden nope: no such golden set"),
    ("name: x\n", "bakeoff: metric: no cell computes ndcg@10"),  # the default metric with the default k 5
    ("name: x\nmetric: ndcg@5\nprices: missing.yaml\n", "prices missing.yaml: cannot read it"),
])
def test_bad_bakeoff_file_exits_2_in_one_line_before_any_work(beir_lake, tmp_path, capsys, text, message):
    runs = len(Lake(str(beir_lake)).read_runs().to_pylist()) if hasattr(Lake, "read_runs") else None
    code, out = _bakeoff(tmp_path, beir_lake, capsys, text=text)
    assert code == 2 and out.out == ""
    assert message in out.err and out.err.count("\n") == 1 and out.err.startswith("error: ")
    if runs is not None:
        assert len(Lake(str(beir_lake)).read_runs().to_pylist()) == runs, "no run started"


class _BrokenEncoder(HashEmbedder):
    def encode(self, texts):
        raise RuntimeError("encoder crashed")


def test_a_table_that_fails_to_build_fails_its_cells_only(beir_lake, tmp_path, capsys, fake_embedder):
    broken = _BrokenEncoder(dim=16, max_tokens=64, name="broken")
    use_fakes(embedder=lambda config: fake_embedder if config.model == "all-minilm-l6-v2" else broken)
    text = BAKEOFF.replace("matrix:", "matrix:\n  embedding: [{label: served}, {label: broken, model: broken}]")
    code, out = _bakeoff(tmp_path, beir_lake, capsys, "--json", text=text.replace("k: [2, 4]", "k: [4]"))
    summary = json.loads(out.out)
    assert code == 0 and summary["status"] == "partial", summary
    cells = {c["name"]: c for c in summary["cells"]}
    assert [cells[n]["status"] for n in ("served-vector-k4", "served-fts-k4")] == ["ok", "ok"]
    assert all("encoder crashed" in cells[n]["error"] for n in ("broken-vector-k4", "broken-fts-k4"))
    assert "encoder crashed" in summary["tables"][1]["error"] and summary["chosen"].startswith("served")
    assert Lake(str(beir_lake)).read_ref("serving")["table"] == summary["tables"][0]["table"]
