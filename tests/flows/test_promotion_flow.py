"""Promotion end to end, each test from a promoted baseline: blue/green embedder and chunker switches,
golden-set lines that survive a corpus change, vanished references, outdated items after a qa_* prompt edit."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from ragloop.flows import evaluate as eval_flow
from ragloop.flows import index as index_flow
from ragloop.flows import monitor as monitor_flow
from ragloop.flows import synth as synth_flow
from ragloop.flows.cli import main
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.promotion import Refs
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, use_fakes, write_files
from tests.flows.test_synth_flow import DOCS, PassageLLM
from tests.reliability.helpers import chunk_rows, import_station_golden, station_docs


@pytest.fixture
def embedders(monkeypatch, fake_embedder):
    """Switchable embedder for every flow: set `use[0]` to the one the config 'names'."""
    use = [fake_embedder]
    use_fakes(embedder=lambda config: use[0])
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    return use


def _refs_bytes(lake_dir):
    return {p.name: p.read_bytes() for p in sorted((lake_dir / "refs").glob("*.json")) if not p.name.startswith("eval_cache")}


def _promoted_baseline(tmp_path, lake_dir, n=40):
    src = write_files(tmp_path / "src", station_docs(n))
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    import_station_golden(tmp_path, lake_dir)
    baseline = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, retrieval_only=True, promote="explicit")
    assert baseline["promoted"] and baseline["gate"]["status"] == "no_baseline"
    return src, baseline


def test_an_embedder_switch_is_a_candidate_served_only_when_its_gate_passes(
        prefect_backend, embedders, tmp_path, lake_dir, capsys):
    src, baseline = _promoted_baseline(tmp_path, lake_dir)
    refs = Refs(Lake(str(lake_dir)))
    served = refs.state()["serving"]

    embedders[0] = HashEmbedder(dim=2, max_tokens=64, name="hash-bad")  # two dimensions: retrieval collapses
    switched = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert switched["disposition"]["action"] == "candidate" and switched["serving"] == served
    assert switched["candidate"]["table"] == "chunks__hash_bad"
    code = main(["eval", "--lake", str(lake_dir), "--retrieval", "vector", "--k", "3", "--retrieval-only", "--promote", "--json"])
    failed = json.loads(capsys.readouterr().out)
    assert code == 3 and failed["status"] == "gate_failed" and failed["index"]["role"] == "candidate", failed["gate"]
    assert failed["promoted"] is False and failed["baseline_run_id"] == baseline["run_id"]
    assert refs.state()["serving"] == served and refs.baseline("golden").run_id == baseline["run_id"]
    assert refs.candidate().table == "chunks__hash_bad", "the rejected candidate stays a candidate, never served"

    # The same words' vectors under another name: an equally good candidate passes and is served.
    embedders[0] = HashEmbedder(dim=32, max_tokens=64, name="hash-good")
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert refs.candidate().table == "chunks__hash_good"
    good = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, retrieval_only=True, promote="explicit")
    assert good["gate"]["status"] == "passed" and good["promoted"], good["gate"]
    assert good["promotion"]["serving_moved"]["to"]["name"] == "chunks__hash_good"
    assert refs.serving().table == "chunks__hash_good" and refs.candidate() is None


def test_a_worse_chunker_fails_on_300_items_and_is_inconclusive_on_8(prefect_backend, embedders, tmp_path, lake_dir,
                                                                       monkeypatch, capsys):
    # 300 documents of 40 words from a shared vocabulary; each question is 6 words spread over its
    # document: whole-document chunks hold all six, 24-token chunks a few each (a real but noisy drop).
    rng = random.Random(0)
    vocab = [f"w{j}" for j in range(300)]
    words = [rng.sample(vocab, 40) for _ in range(300)]
    src = write_files(tmp_path / "src", {f"s{i:03d}.txt": " ".join(w) for i, w in enumerate(words)})
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"question": " ".join(w[j] for j in sorted(rng.sample(range(40), 6))),
                                          "reference_doc_ids": [f"s{i:03d}.txt"], "qa_type": "single_hop"}) + "\n"
                              for i, w in enumerate(words)))
    assert main(["golden", "import", str(golden), "--lake", str(lake_dir), "--json"]) == 0
    small = tmp_path / "small.jsonl"
    small.write_text("".join(golden.read_text().splitlines(keepends=True)[:8]))
    assert main(["golden", "import", str(small), "--lake", str(lake_dir), "--json"]) == 0
    capsys.readouterr()
    for line in ("golden", "small"):
        assert main(["eval", "--lake", str(lake_dir), "--golden", line, "--retrieval", "vector", "--k", "10",
                     "--retrieval-only", "--promote", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["promoted"]
    refs = Refs(Lake(str(lake_dir)))
    served, baselines = refs.state()["serving"], {line: refs.baseline(line).run_id for line in ("golden", "small")}

    monkeypatch.setenv("RAGLOOP_CHUNKING__MAX_TOKENS", "24")
    monkeypatch.setenv("RAGLOOP_CHUNKING__OVERLAP_TOKENS", "0")
    worse = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert worse["disposition"]["action"] == "candidate" and "chunker" in worse["disposition"]["reason"]
    assert worse["serving"] == served and worse["candidate"]["version"] > served["version"]
    results = {}
    for line in ("golden", "small"):
        code = main(["eval", "--lake", str(lake_dir), "--golden", line, "--retrieval", "vector", "--k", "10",
                     "--retrieval-only", "--promote", "--json"])
        results[line] = (code, json.loads(capsys.readouterr().out))
    code, big = results["golden"]
    assert code == 3 and big["status"] == "gate_failed" and big["gate"]["paired_items"] == 300, big["gate"]
    assert any(r.startswith("ndcg@10 dropped") for r in big["gate"]["reasons"])
    code, few = results["small"]
    assert code == 3 and few["status"] == "gate_inconclusive", few["gate"]
    assert "only 8 paired items" in few["gate"]["reasons"][0]
    assert few["gate"]["power"]["ndcg@10"]["detectable_drop"] > big["gate"]["power"]["ndcg@10"]["detectable_drop"]
    assert refs.state()["serving"] == served, "neither run moved serving"
    assert {line: refs.baseline(line).run_id for line in ("golden", "small")} == baselines


def test_a_curated_line_stays_chosen_across_a_corpus_change_while_synth_refreshes_its_own(
        prefect_backend, embedders, tmp_path, lake_dir, monkeypatch, capsys):
    llm = PassageLLM()
    use_fakes(llm=lambda config: llm)
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    first = synth_flow.synth_golden_set(lake=str(lake_dir), size=6)
    rows = chunk_rows(lake_dir)
    curated = tmp_path / "curated.jsonl"
    curated.write_text("".join(json.dumps({"question": f"What does {r['doc_id']} say?", "reference_chunk_ids": [r["chunk_id"]],
                                           "qa_type": "single_hop"}) + "\n" for r in rows[:4]))
    assert main(["golden", "import", str(curated), "--lake", str(lake_dir), "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["line"] == {"line": "curated", "chosen": "curated", "previous_chosen": "synthetic", "changed": True}

    write_files(src, {"page1.md": DOCS["page1.md"].replace("closes at midnight", "closes at ten"),
                      "page9.md": "# Page 9\n\n## Facts\n\nStation 9 has 19 docks and a cafe by the harbour wall."})
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    second = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)  # more items: synth must write a new version
    refs = Refs(Lake(str(lake_dir)))
    lines = refs.lines()
    assert second["golden_set_id"] != first["golden_set_id"] and lines.lines["synthetic"].golden_set_id == second["golden_set_id"]
    assert lines.chosen == "curated", "synth refreshed its line and left the chosen one alone"
    assert main(["golden", "list", "--lake", str(lake_dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["chosen"] == "curated" and listed["lines"]["synthetic"]["versions"] == 2
    evaluated = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, retrieval_only=True)
    assert evaluated["golden_set_id"] == imported["golden_set_id"] and evaluated["golden_line"] == "curated"

    assert main(["golden", "use", "synthetic", "--lake", str(lake_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chosen"] == "synthetic"
    assert refs.resolve_golden("latest", [])[0] == second["golden_set_id"]
    assert main(["golden", "use", "nope", "--lake", str(lake_dir), "--json"]) == 2


def test_vanished_references_are_counted_left_out_and_alerted(prefect_backend, embedders, tmp_path, lake_dir, monkeypatch):
    src = write_files(tmp_path / "src", station_docs(6))
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    import_station_golden(tmp_path, lake_dir)
    baseline = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, retrieval_only=True, promote="explicit")
    assert baseline["stale_references"]["items"] == 0
    (src / "station02.md").write_text("# Station 2\n\nStation 2 was rebuilt: it has forty docks now.")
    (src / "station03.md").unlink()
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    after = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, retrieval_only=True, promote="nightly")
    stale = after["stale_references"]
    assert stale["items"] == 2 and stale["references"] == 3, stale  # station02's chunk; station03's chunk and doc
    items = {r["qa_id"]: r for r in Lake(str(lake_dir)).read_eval_items(after["run_id"]).to_pylist()}
    stale_items = [r for r in items.values() if r["stale_references"]]
    assert len(stale_items) == 2
    for row in stale_items:
        names = dict(row["metrics"])
        assert not any(n.startswith("chunk_") for n in names), "a vanished chunk reference is not scored as a miss"
    assert after["n"]["chunk_hit@1"] == 4 and after["n"]["hit@1"] == 5, "station02's document is still there"
    assert "chunk_hit@1" not in after["gate"]["not_compared"]["baseline_only"], "both runs measured it on 4 items"
    monkeypatch.setenv("RAGLOOP_MONITOR__SINKS", '["log"]')
    monitored = monitor_flow.monitor_quality(lake=str(lake_dir))
    alerts = [a for a in monitored["alerts"] if a["kind"] == "stale_references"]
    assert alerts and "2 of 6 golden items" in alerts[0]["message"]


def test_a_qa_prompt_edit_marks_the_items_it_made_outdated_and_regenerates_them(
        prefect_backend, embedders, tmp_path, lake_dir, monkeypatch):
    llm = PassageLLM()
    use_fakes(llm=lambda config: llm)
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    first = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    lake = Lake(str(lake_dir))
    before = lake.read_golden(first["golden_set_id"]).to_pylist()
    made_by_single = {i["qa_id"] for i in before if i["status"] == "active" and i["prompt_id"].startswith("qa_from_sentence@")}
    assert made_by_single

    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    edited = prompts / "qa_from_sentence.yaml"
    edited.write_text(edited.read_text().replace("You write one question", "You write exactly one question", 1))
    assert edited.read_text() != (REPO / "prompts" / "qa_from_sentence.yaml").read_text()
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(prompts))
    second = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    assert second["items"]["outdated"] == len(made_by_single) and not second["up_to_date"]
    rows = {i["qa_id"]: i for i in lake.read_golden(second["golden_set_id"]).to_pylist()}
    assert {q for q, i in rows.items() if i["status"] == "outdated"} <= made_by_single
    active = [i for i in rows.values() if i["status"] == "active"]
    new_hash = [i for i in active if i["prompt_id"].startswith("qa_from_sentence@")]
    assert new_hash
    from ragloop.tasks.prompts import load_prompts

    current = load_prompts(prompts)["qa_from_sentence"].prompt_hash
    assert all(i["prompt_hash"] == current for i in new_hash), "every active single-hop item is from the edited prompt"
    third = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    assert third["up_to_date"] and third["golden_set_id"] == second["golden_set_id"], "the refresh is done once"
