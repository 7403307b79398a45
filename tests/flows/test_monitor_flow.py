"""The monitor-quality flow with fakes: history, a regression only once it persists, drift after a
corpus change, alerts in every sink (the webhook on 127.0.0.1), the HTML report and Prefect artifacts."""

from __future__ import annotations

import json
import re

import pytest

from ragloop.flows import evaluate as eval_flow
from ragloop.flows import golden as golden_flow
from ragloop.flows import index as index_flow
from ragloop.flows.cli import main
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, use_fakes, write_files
from tests.flows.test_eval_flow import _answers
from tests.unit.test_alerting import Receiver

DOCS = {f"s{i}.md": f"# Station {i}\n\nStation {i} has {10 + i} docks and opens at {6 + i} in the morning." for i in range(12)}


@pytest.fixture
def lake_with_golden(prefect_backend, fakes_llm, tmp_path, lake_dir, monkeypatch):
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    table = Lake(str(lake_dir)).connect_vectors().open_table("chunks__hash_fake")
    rows = table.search().select(["doc_id", "chunk_id", "text"]).limit(None).to_arrow().to_pylist()
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({
        "question": f"How many docks does station {r['doc_id'][1:-3]} have?", "reference_answer": r["text"].split("\n")[-1],
        "reference_chunk_ids": [r["chunk_id"]], "qa_type": "single_hop" if i % 3 else "abstract"}) + "\n"
        for i, r in enumerate(rows)))
    golden_flow.import_golden_set(path=str(golden), lake=str(lake_dir))
    monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")
    monkeypatch.setenv("RAGLOOP_EVAL__RETRIEVAL", "hybrid")
    monkeypatch.setenv("RAGLOOP_EVAL__K", "2")
    return src, len(rows)


@pytest.fixture
def fakes_llm(monkeypatch, fake_embedder):
    from ragloop.tasks.llm import ScriptedLLM

    llm = ScriptedLLM()
    use_fakes(embedder=lambda config: fake_embedder)
    use_fakes(llm=lambda config: llm)
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    return llm


@pytest.fixture
def receiver(monkeypatch):
    r = Receiver([])
    monkeypatch.setenv("ALERT_WEBHOOK_URL", r.url)
    yield r
    r.close()


def _broken_prompts(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir(exist_ok=True)
    for path in (REPO / "prompts").glob("*.yaml"):
        text = path.read_text()
        if path.stem == "answer":
            text = text.replace("Answer in one to three sentences", 'Always reply "I don\'t know." Answer in one to three sentences')
        (prompts / path.name).write_text(text)
    return prompts


def _monitor(lake_dir, capsys) -> dict:
    assert main(["monitor", "--lake", str(lake_dir), "--json"]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_a_regression_alerts_only_once_it_persists_and_reaches_every_sink(lake_with_golden, fakes_llm, lake_dir, tmp_path,
                                                                          monkeypatch, capsys, receiver):
    _, n = lake_with_golden
    fakes_llm.add(*[_answers] * n)
    good = eval_flow.evaluate_chain(lake=str(lake_dir), promote="explicit")
    assert good["gate"]["status"] == "no_baseline" and good["promoted"]
    first = _monitor(lake_dir, capsys)
    assert first["status"] == "ok" and first["alerts"] == [] and first["observed"] == [good["run_id"]]
    assert receiver.bodies == [], "no alert, no webhook call"

    # The endpoint behind the same model id starts refusing (same prompts, same chain): nightly evals.
    # Same model id, same messages: the LLM call cache would replay the good answers, so these runs
    # bypass it, as a run watching an endpoint for such drift must (README "LLM call cache").
    fakes_llm.add(*["I don't know."] * n)
    bad1 = eval_flow.evaluate_chain(lake=str(lake_dir), promote="nightly", no_cache=True)
    assert bad1["status"] == "gate_failed" and bad1["lineage"]["chain_hash"] == good["lineage"]["chain_hash"]
    after_one = _monitor(lake_dir, capsys)
    assert [a for a in after_one["alerts"] if a["kind"] == "regression"] == [], "one bad run is not a regression yet"

    fakes_llm.add(*["I don't know."] * n)
    eval_flow.evaluate_chain(lake=str(lake_dir), promote="nightly", no_cache=True)
    summary = _monitor(lake_dir, capsys)
    regressions = {a["metric"]: a for a in summary["alerts"] if a["kind"] == "regression"}
    assert {"refusal_correct", "semantic_similarity"} <= set(regressions), summary["alerts"]
    assert regressions["refusal_correct"]["severity"] == "critical"  # 1.0 -> 0.0
    assert "refusal_correct regressed" in regressions["refusal_correct"]["message"]

    # every sink got it
    assert {s["sink"]: s["status"] for s in summary["sinks"]} == {"log": "sent", "jsonl": "sent", "artifact": "sent", "webhook": "sent"}
    posted = receiver.bodies[-1]
    assert "refusal_correct" in posted["text"] and {a["metric"] for a in posted["alerts"]} >= {"refusal_correct"}
    jsonl = [json.loads(line) for line in (lake_dir / "alerts" / "alerts.jsonl").read_text().splitlines()]
    assert {(a["run_id"], a["metric"]) for a in jsonl if a["kind"] == "regression"} >= {(summary["run_id"], "refusal_correct")}

    # the report: trends over the three runs, per-type table, worst items with traces, lineage
    report = lake_dir / "reports" / summary["run_id"] / "report.html"
    assert summary["report"] == str(report) and report.exists()
    html = report.read_text()
    for png in ("trends.png", "by_type.png", "top1_similarity.png", "document_length_chars.png"):
        assert (report.parent / png).stat().st_size > 1000, png
        assert f'src="{png}"' in html
    assert "abstract" in html and "single_hop" in html and "refusal_correct regressed" in html
    assert "I don&#39;t know." in html, "worst items show their answers (escaped)"
    golden_section = html.split("<h2>Golden set</h2>", 1)[1].split("<h2>", 1)[0]
    assert re.search(r"\d+ active of \d+ items", golden_section) and "Evidence-supported" in golden_section \
        and "<details>" in golden_section, "the golden set's quality, with sample items to read"
    assert summary["observations"] == 3

    # the Prefect artifacts carry the same headline (read over the API the UI uses)
    monitor_md = _artifacts("ragloop-monitor", lake_dir)
    assert any("refusal_correct" in (a["data"] or "") for a in monitor_md), [(a["key"], (a["data"] or "")[:300]) for a in monitor_md]
    assert _artifacts("ragloop-by-type", lake_dir) and _artifacts("ragloop-alerts", lake_dir)

    # the same condition the next night is not sent again; once it clears, that is sent once
    again = _monitor(lake_dir, capsys)
    assert {a["metric"] for a in again["alerts"] if a["kind"] == "regression"} >= {"refusal_correct"}
    assert again["notified"] == [] and len(receiver.bodies) == 1, "a persisting condition is not re-sent"
    for _ in range(2):
        fakes_llm.add(*[_answers] * n)
        eval_flow.evaluate_chain(lake=str(lake_dir), promote="nightly")
    cleared = _monitor(lake_dir, capsys)
    assert not [a for a in cleared["alerts"] if a["kind"] == "regression"]
    assert {a["metric"] for a in cleared["notified"] if a["kind"] == "alert_cleared"} >= {"refusal_correct"}
    assert len(receiver.bodies) == 2 and "cleared" in receiver.bodies[-1]["text"]
    assert _monitor(lake_dir, capsys)["notified"] == [], "cleared once"


def _artifacts(name: str, lake_dir) -> list[dict]:
    import httpx
    from prefect.settings import PREFECT_API_URL

    from ragloop.tasks.reporting import artifact_key

    key = artifact_key(name, Lake(str(lake_dir)).uri)
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json={
        "artifacts": {"key": {"any_": [key]}}, "limit": 50, "offset": 0, "sort": "CREATED_DESC"})
    response.raise_for_status()
    return response.json()


def test_corpus_change_shows_as_drift_and_a_rerun_without_change_shows_none(lake_with_golden, fakes_llm, lake_dir,
                                                                           capsys, monkeypatch):
    src, n = lake_with_golden
    fakes_llm.add(*[_answers] * n)
    eval_flow.evaluate_chain(lake=str(lake_dir), retrieval_only=True, promote="nightly")
    monkeypatch.setenv("RAGLOOP_MONITOR__SINKS", '["log", "jsonl"]')
    base = _monitor(lake_dir, capsys)
    assert base["checks"]["corpus"]["baseline"] and base["checks"]["embedding"]["baseline"]
    same = _monitor(lake_dir, capsys)
    assert same["alerts"] == []
    assert same["checks"]["corpus"]["change_fraction"] == 0 and same["checks"]["embedding"]["centroid_shift"] == pytest.approx(0, abs=1e-9)
    assert same["checks"]["retrieval"]["top1_median_drop"] == 0

    for i in range(4):  # 4 of 12 documents rewritten: 33 % > 20 %
        (src / f"s{i}.md").write_text(f"# Depot {i}\n\nThe depot repaints trams in spring and keeps spare wheels {i}.")
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    drifted = _monitor(lake_dir, capsys)
    corpus = drifted["checks"]["corpus"]
    assert (corpus["changed"], corpus["added"], corpus["removed"]) == (4, 0, 0)
    assert "corpus_drift" in {a["kind"] for a in drifted["alerts"]}
    assert 0 < drifted["checks"]["embedding"]["replaced_fraction"] < 1
    assert drifted["checks"]["retrieval"]["top1_median_previous"] >= drifted["checks"]["retrieval"]["top1_median"] - 1e-9
    assert {s["sink"] for s in drifted["sinks"]} == {"log", "jsonl"}


def test_webhook_outage_makes_the_run_partial_but_keeps_the_other_sinks(lake_with_golden, fakes_llm, lake_dir, capsys,
                                                                       monkeypatch):
    _, n = lake_with_golden
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{port}/hook")
    monkeypatch.setenv("RAGLOOP_MONITOR__WEBHOOK_RETRIES", "1")
    monkeypatch.setenv("RAGLOOP_MONITOR__WEBHOOK_BACKOFF_S", "0")
    monkeypatch.setenv("RAGLOOP_MONITOR__MAX_TOKENS_PER_ITEM", "1")  # every run is over this budget
    fakes_llm.add(*[_answers] * n)
    eval_flow.evaluate_chain(lake=str(lake_dir), promote="nightly")
    summary = _monitor(lake_dir, capsys)
    assert summary["status"] == "partial"
    sinks = {s["sink"]: s for s in summary["sinks"]}
    assert sinks["webhook"]["status"] == "failed" and sinks["webhook"]["attempts"] == 2
    assert sinks["jsonl"]["status"] == "sent" and "token_budget" in {a["kind"] for a in summary["alerts"]}


def test_monitor_on_an_empty_lake_reports_nothing_to_watch(prefect_backend, lake_dir, capsys, monkeypatch):
    monkeypatch.setenv("RAGLOOP_MONITOR__SINKS", '["log"]')
    summary = _monitor(lake_dir, capsys)
    assert summary["status"] == "ok" and summary["alerts"] == [] and summary["observations"] == 0
    assert "No eval run observed yet" in open(summary["report"]).read()


def test_a_refreshed_golden_set_is_gated_against_the_last_promoted_run_on_shared_questions(
        lake_with_golden, fakes_llm, lake_dir, tmp_path, monkeypatch):
    _, n = lake_with_golden
    fakes_llm.add(*[_answers] * n)
    good = eval_flow.evaluate_chain(lake=str(lake_dir), promote="explicit")
    assert good["gate"]["status"] == "no_baseline" and good["promoted"]
    # a new golden set version: the same questions plus two new ones (as a synth refresh would make)
    refreshed = tmp_path / "refreshed.jsonl"
    lines = (tmp_path / "golden.jsonl").read_text().splitlines()
    extra = [json.dumps({"question": f"Which station opens at {h} in the morning?", "reference_answer": "one",
                         "reference_chunk_ids": json.loads(lines[0])["reference_chunk_ids"], "qa_type": "single_hop"})
             for h in (6, 7)]
    refreshed.write_text("\n".join(lines + extra) + "\n")
    golden_flow.import_golden_set(path=str(refreshed), lake=str(lake_dir), line="golden")  # a new version of the line
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(_broken_prompts(tmp_path)))
    fakes_llm.add(*["I don't know."] * (n + 2))
    bad = eval_flow.evaluate_chain(lake=str(lake_dir))
    assert bad["golden_set_id"] != good["golden_set_id"]
    assert bad["baseline_run_id"] == good["run_id"] and bad["baseline_golden_set_id"] == good["golden_set_id"]
    assert bad["status"] == "gate_failed" and bad["deltas"]["refusal_correct"]["n"] == n, "paired on the shared questions"


def test_experiments_of_other_chains_stay_out_of_the_nightly_series(lake_with_golden, fakes_llm, lake_dir, capsys,
                                                                    monkeypatch):
    _, n = lake_with_golden
    monkeypatch.setenv("RAGLOOP_MONITOR__SINKS", '["log"]')
    fakes_llm.add(*[_answers] * n)
    first = eval_flow.evaluate_chain(lake=str(lake_dir), promote="nightly")
    eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="fts", k=3, retrieval_only=True)  # A/B experiments
    eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=1, retrieval_only=True)
    fakes_llm.add(*[_answers] * n)
    second = eval_flow.evaluate_chain(lake=str(lake_dir), promote="nightly")
    summary = _monitor(lake_dir, capsys)
    assert summary["observations"] == 2 and summary["alerts"] == [], summary["alerts"]
    assert summary["series"]["chain_hash"] == first["lineage"]["chain_hash"] == second["lineage"]["chain_hash"]
    assert sorted(e["chain_label"] for e in summary["experiments"]) == ["fts k3 retrieval-only", "vector k1 retrieval-only"]
    html = open(summary["report"]).read()
    assert "Experiments (2)" in html and "fts k3 retrieval-only" in html


def test_budgets_are_read_from_the_served_chains_latest_answered_eval(lake_with_golden, fakes_llm, lake_dir, capsys,
                                                                      monkeypatch):
    _, n = lake_with_golden
    monkeypatch.setenv("RAGLOOP_MONITOR__SINKS", '["log"]')
    monkeypatch.setenv("RAGLOOP_MONITOR__MAX_TOKENS_PER_ITEM", "1")
    fakes_llm.add(*[_answers] * n)
    nightly = eval_flow.evaluate_chain(lake=str(lake_dir), promote="nightly")
    eval_flow.evaluate_chain(lake=str(lake_dir), retrieval_only=True)  # 0 tokens, an experiment: never the budget's source
    summary = _monitor(lake_dir, capsys)
    assert summary["checks"]["budgets"]["run_id"] == nightly["run_id"]
    assert summary["checks"]["budgets"]["tokens_per_item"] > 1 and "token_budget" in {a["kind"] for a in summary["alerts"]}


def test_a_budget_over_its_gate_blocks_promotion(lake_with_golden, fakes_llm, lake_dir, monkeypatch):
    _, n = lake_with_golden
    fakes_llm.add(*[_answers] * n)
    baseline = eval_flow.evaluate_chain(lake=str(lake_dir), promote="explicit")
    assert baseline["promoted"] and baseline["budgets"]["tokens_per_item"] > 0
    monkeypatch.setenv("RAGLOOP_GATE__BUDGETS__MAX_TOKENS_PER_ITEM", "1")
    fakes_llm.add(*[_answers] * n)
    over = eval_flow.evaluate_chain(lake=str(lake_dir), promote="explicit")
    assert over["status"] == "gate_failed" and not over["promoted"]
    assert any(r.startswith("budget: tokens per item") for r in over["gate"]["reasons"]), over["gate"]


def test_two_lakes_on_one_prefect_database_keep_separate_artifacts(prefect_backend, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAGLOOP_MONITOR__SINKS", '["log"]')
    lakes = [tmp_path / "lake_a", tmp_path / "lake_b"]
    reports = {}
    for lake in lakes:
        reports[lake.name] = _monitor(lake, capsys)["run_id"]
    for lake in lakes:
        artifacts = _artifacts("ragloop-monitor", lake)
        assert artifacts and all(reports[lake.name] in (a["data"] or "") for a in artifacts[:1]), (lake, artifacts[:1])
    assert _artifacts("ragloop-monitor", lakes[0])[0]["key"] != _artifacts("ragloop-monitor", lakes[1])[0]["key"]


def test_the_monitor_summary_is_a_dump_of_its_model(prefect_backend, lake_dir, capsys, monkeypatch):
    from ragloop.tasks.monitor_run import MonitorSummary

    monkeypatch.setenv("RAGLOOP_MONITOR__SINKS", '["log", "webhook"]')
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    summary = _monitor(lake_dir, capsys)
    assert MonitorSummary.model_validate(summary).dump() == summary
