"""A monitoring pass's decisions without Prefect, on a lake in tmp_path: what is observed, the series
watched, drift against the previous pass's state (vector samples and top-1 scores faked), the other
checks, which alerts go out, the status, artifacts, history rows, state, lineage and summary."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ragloop.tasks import monitor_run, schemas
from ragloop.tasks.monitoring import Alert, Check
from ragloop.tasks.reporting import ReportData
from ragloop.tasks.settings import MonitorConfig
from ragloop.tasks.storage import Lake

SUMMARIES = json.loads((Path(__file__).parent / "data" / "stage_summaries.json").read_text())
T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.timezone.utc)
CHAIN = {"retrieval": "hybrid", "k": 5, "answer": True}


@pytest.fixture
def lake(lake_dir) -> Lake:
    return Lake(str(lake_dir))


def _eval(lake: Lake, run_id: str, night: int, value: float, golden: str = "g1", mode: str = "nightly",
          chain_hash: str = "c1", status: str = "ok") -> None:
    at = T0 + dt.timedelta(days=night)
    lake.write_run({"run_id": run_id, "flow": "eval", "status": status, "started_at": at, "ended_at": at,
                    "lineage": {"chain_hash": chain_hash, "chain": CHAIN, "golden_line": "synthetic"},
                    "outputs": {"golden_set_id": golden, "metrics": {"ndcg@10": value},
                                "items": {"total": 2}, "promotion": {"mode": mode, "promoted": mode != "experiment"}}})


def _golden(lake: Lake, golden_set_id: str, qa_ids: list[str]) -> None:
    rows = [{"qa_id": q, "question": f"question {q}?", "status": "active", "reference_chunk_ids": []} for q in qa_ids]
    lake.write_golden(golden_set_id, pa.Table.from_pylist(rows, schema=schemas.GOLDEN))


def _items(lake: Lake, run_id: str, scores: dict[str, float]) -> None:
    rows = [{"qa_id": q, "status": "ok", "metrics": [("ndcg@10", v)], "retrieved_chunk_ids": []} for q, v in scores.items()]
    lake.write_eval(run_id, pa.Table.from_pylist(rows, schema=schemas.EVAL_ITEMS), schemas.TRACES.empty_table())


# -- observing and the series ---------------------------------------------------------------------
def test_every_completed_eval_is_observed_once(lake):
    _eval(lake, "e1", 0, 0.7)
    _eval(lake, "e2", 1, 0.7, status="failed")  # never observed
    assert monitor_run.observe(lake, None, None) == ["e1"]
    _eval(lake, "e3", 2, 0.6)
    assert monitor_run.observe(lake, None, None) == ["e3"]
    assert monitor_run.observe(lake, None, None) == []
    # an eval whose every item failed has no metric: nothing to observe, and not "new" on every pass after
    # (found by a new user: nine such runs were listed as newly observed by each monitor pass)
    _eval(lake, "e4", 3, 0.6)
    record = lake.read_run("e4")
    lake.write_run({**record, "outputs": {**record["outputs"], "metrics": {}}})
    assert monitor_run.observe(lake, None, None) == []
    assert monitor_run.observe(lake, None, None) == []


def test_a_night_that_reused_an_observed_eval_is_one_more_nightly_observation(lake):
    _eval(lake, "e1", 0, 0.7, mode="explicit")
    monitor_run.observe(lake, None, None)
    assert monitor_run.observe(lake, "e1", "night-2") == ["night-2"]
    assert monitor_run.observe(lake, "e1", "night-2") == [], "the same night is not observed twice"
    modes = {r["observation_id"]: r["mode"] for r in lake.read_history().to_pylist()}
    assert modes == {"e1": "explicit", "night-2": "nightly"}


def test_an_empty_history_watches_nothing(lake):
    selection = monitor_run.select_series(lake, MonitorConfig())
    assert selection.watched is None and selection.served == [] and selection.latest_obs is None
    assert selection.comparable == [] and selection.golden_rows == []


def test_the_watched_series_compares_only_runs_on_golden_sets_that_overlap_the_latest(lake):
    _golden(lake, "g1", ["q1", "q2", "q3", "q4"])
    _golden(lake, "g2", ["q1", "q2", "q3", "q5"])  # shares 3 of 4
    _golden(lake, "g3", ["x1", "x2", "x3", "q5"])  # shares 1 of 4
    _eval(lake, "e1", 0, 0.7, golden="g3")
    _eval(lake, "e2", 1, 0.7, golden="g1")
    _eval(lake, "e3", 2, 0.7, golden="g1", mode="experiment", chain_hash="c2")
    _eval(lake, "e4", 3, 0.6, golden="g2")
    monitor_run.observe(lake, None, None)
    selection = monitor_run.select_series(lake, MonitorConfig(min_golden_overlap=0.7))
    assert [o["run_id"] for o in selection.served] == ["e1", "e2", "e4"]
    assert [o["run_id"] for o in selection.experiments] == ["e3"]
    assert selection.latest_obs["run_id"] == "e4" and selection.latest_eval["golden_set_id"] == "g2"
    assert {r["qa_id"] for r in selection.golden_rows} == {"q1", "q2", "q3", "q5"}
    assert [o["run_id"] for o in selection.comparable] == ["e2", "e4"]


def test_the_regression_rule_runs_on_the_questions_every_compared_run_scored(lake):
    config = MonitorConfig(window=1, baseline_runs=1)
    for i, (run_id, scores) in enumerate({"e1": {"q1": 0.9, "q2": 0.9}, "e2": {"q1": 0.5, "q3": 0.1}}.items()):
        _eval(lake, run_id, i, 0.0)
        _items(lake, run_id, scores)
    monitor_run.observe(lake, None, None)
    series = monitor_run.select_series(lake, config).served
    check = monitor_run.check_series_regression(lake, series, config)
    assert check.figures["shared_items"] == 1 and check.figures["checked"]["ndcg@10"]["baseline"] == 0.9
    assert [a.metric for a in check.alerts] == ["ndcg@10"], "0.9 -> 0.5 on q1, whatever q2 and q3 scored"


# -- drift ------------------------------------------------------------------------------------------
class Sampler:
    """Vector samples per table version (a version missing from `versions` was pruned)."""

    def __init__(self, versions: dict[int, tuple[list[str], np.ndarray]]) -> None:
        self.versions, self.calls = versions, []

    def __call__(self, lake, table, version, limit):
        self.calls.append(version)
        if version not in self.versions:
            raise ValueError(f"version {version} not found")
        return self.versions[version]


def _vectors(n: int, shift: float = 0.0) -> np.ndarray:
    v = np.eye(4)[np.arange(n) % 4] + shift
    return v.astype(np.float32)


SERVING = {"table": "chunks__hash_fake", "version": 3, "run_id": "i3"}


@pytest.mark.parametrize("previous_table, sampled, replaced, baseline", [
    ({"name": "chunks__hash_fake", "version": 3}, [3], 0.0, False),   # same version: compared with itself
    ({"name": "chunks__hash_fake", "version": 2}, [3, 2], 0.5, False),  # two of four sampled chunks are new
    ({"name": "chunks__other", "version": 2}, [3], None, True),        # another table: a new baseline
    ({"name": "chunks__hash_fake", "version": 1}, [3, 1], None, True),  # pruned: a new baseline, logged
    ({}, [3], None, True),                                              # the first pass
])
def test_embedding_drift_compares_with_the_version_the_previous_pass_saw(lake, caplog, previous_table, sampled,
                                                                         replaced, baseline):
    sampler = Sampler({3: (["a", "b", "c", "d"], _vectors(4)), 2: (["a", "b", "x", "y"], _vectors(4, 0.1))})
    with caplog.at_level(logging.WARNING):
        drift = monitor_run.embedding_drift(lake, SERVING, {"table": previous_table}, MonitorConfig(), sampler,
                                            logging.getLogger("test"))
    assert sampler.calls == sampled
    figures = drift.checks["embedding"].figures
    assert figures.get("baseline", False) is baseline and figures.get("replaced_fraction") == replaced
    assert drift.state == {"table": {"name": "chunks__hash_fake", "version": 3}}
    assert ("unreadable" in caplog.text) == (previous_table.get("version") == 1)


class FakeEmbedder:
    slug = "hash_fake"


def _selection(golden_set_id: str = "g1", questions: int = 3) -> monitor_run.Selection:
    rows = [{"qa_id": f"q{i}", "question": f"question {i}?", "status": "active"} for i in range(questions)]
    obs = {"run_id": "e1", "golden_set_id": golden_set_id}
    return monitor_run.Selection(None, [obs], [], obs, {"run_id": "e1"}, rows, [obs])


def test_retrieval_drift_compares_top1_scores_on_the_same_golden_set_only(lake):
    top1 = lambda lake, table, version, embedder, questions: [0.5] * len(questions)  # noqa: E731
    same = monitor_run.retrieval_drift(lake, SERVING, {"golden_set_id": "g1", "top1": [0.9, 0.9, 0.9]}, _selection(),
                                       MonitorConfig(), top1, FakeEmbedder)
    assert same.checks["retrieval"].figures["top1_median_drop"] == pytest.approx(0.4)
    assert same.distributions["retrieval"] == ("top1_similarity", [0.9, 0.9, 0.9], [0.5, 0.5, 0.5])
    assert same.state == {"top1": [0.5, 0.5, 0.5], "golden_set_id": "g1"}
    other = monitor_run.retrieval_drift(lake, SERVING, {"golden_set_id": "g0", "top1": [0.9]}, _selection(),
                                        MonitorConfig(), top1, FakeEmbedder)
    assert other.checks["retrieval"].figures["baseline"] and other.distributions["retrieval"][1] is None


def test_retrieval_drift_needs_questions_and_the_served_tables_embedder(lake):
    def never(*args):
        raise AssertionError("not needed")

    assert monitor_run.retrieval_drift(lake, SERVING, {}, _selection(questions=0), MonitorConfig(), never, never).checks == {}

    class Other:
        slug = "minilm"

    assert monitor_run.retrieval_drift(lake, SERVING, {}, _selection(), MonitorConfig(), never, Other).checks == {}


def test_nothing_served_means_no_drift_checks(lake):
    drift = monitor_run.check_drift(lake, {}, _selection(), MonitorConfig(), sample=None, top1=None, embedder=None,
                                    logger=logging.getLogger("test"))
    assert drift == monitor_run.Drift()


def test_corpus_drift_needs_the_served_snapshot(lake):
    lake.write_run({"run_id": "i3", "flow": "index", "status": "ok", "started_at": T0, "ended_at": T0,
                    "lineage": {"snapshot_id": "gone"}, "outputs": {}})
    assert monitor_run.corpus_drift(lake, SERVING, {}, MonitorConfig()) == monitor_run.Drift()


# -- the other checks, alerts, status -------------------------------------------------------------
def test_health_checks_read_the_last_index_run_the_served_chains_budgets_and_failed_stages(lake):
    lake.write_run({"run_id": "i1", "flow": "index", "status": "failed", "started_at": T0, "ended_at": T0, "lineage": {},
                    "outputs": {"validation": {"chunks": {"success": False, "failures": ["dup"]}}}})
    assert list(monitor_run.health_checks(lake, monitor_run.Selection(None, [], []), [], MonitorConfig())) == ["validation"]
    _eval(lake, "e1", 0, 0.7)
    selection = _selection()
    checks = monitor_run.health_checks(lake, selection, [{"stage": "synth", "run_id": None, "error": "boom"}],
                                       MonitorConfig())
    assert list(checks) == ["validation", "budgets", "references", "stages"]
    assert checks["validation"].alerts[0].kind == "ge_failure" and checks["budgets"].figures["run_id"] == "e1"


def _check(*alerts: tuple[str, str]) -> Check:
    return Check({}, [Alert(kind=kind, message=kind, severity=severity) for kind, severity in alerts])


def test_alerts_follow_check_order_and_only_news_is_sent():
    checks = {"regression": _check(("regression", "critical")), "stages": _check(("stage_failed", "critical"))}
    first = monitor_run.notifications(checks, {})
    assert [a["kind"] for a in first.alerts] == ["regression", "stage_failed"] == [a["kind"] for a in first.to_send]
    again = monitor_run.notifications(checks, {"alerts": first.state})
    assert [a["kind"] for a in again.to_send] == ["stage_failed"], "a persisting condition is not re-sent; events are"
    cleared = monitor_run.notifications({}, {"alerts": first.state})
    assert [a["kind"] for a in cleared.to_send] == ["alert_cleared"] and cleared.state == {}


@pytest.mark.parametrize("deliveries, status", [
    ([], "ok"),
    ([{"sink": "log", "status": "sent"}, {"sink": "webhook", "status": "skipped"}], "ok"),
    ([{"sink": "log", "status": "sent"}, {"sink": "webhook", "status": "failed"}], "partial"),
])
def test_a_pass_is_partial_when_a_sink_failed(deliveries, status):
    assert monitor_run.pass_status(deliveries) == status


def test_the_delivery_context_names_the_pass_and_its_report(lake):
    context = monitor_run.delivery_context("m1", "2026-11-01T02:00:00+00:00", lake)
    assert context == {"run_id": "m1", "at": "2026-11-01T02:00:00+00:00", "lake": lake.uri,
                       "report": lake.report_path("m1")}


# -- report, history, state, lineage, summary -----------------------------------------------------
def _data(latest_eval: dict | None) -> ReportData:
    return ReportData(run_id="m1", at="t", status="ok", lake="/lake", alerts=[], series=[], latest_eval=latest_eval,
                      worst_items=[], checks={})


def test_the_by_type_artifact_is_published_only_when_the_latest_eval_has_question_types():
    assert [a.key.split("-")[1] for a in monitor_run.report_artifacts(_data(None), "/r.html", "/lake")] == ["monitor"]
    by_type = {"single_hop": {"n": 3, "metrics": {"ndcg@10": 0.123456}}}
    markdown, table = monitor_run.report_artifacts(_data({"by_type": by_type}), "/r.html", "/lake")
    assert markdown.markdown and markdown.table is None
    assert table.table == [{"qa_type": "single_hop", "n": 3, "ndcg@10": 0.1235}] and "per question type" in table.description


def test_drift_and_budget_figures_become_history_rows():
    checks = {"corpus": Check({"change_fraction": 0.25, "length_ks": None}, []),
              "budgets": Check({"cost": 2, "tokens_per_item": 10.5}, []), "regression": Check({"observations": 3}, [])}
    rows = monitor_run.check_history_rows("m1", checks, {"golden_set_id": "g1"}, T0)
    assert {(r["scope"], r["metric"], r["value"]) for r in rows} == {
        ("drift", "corpus.change_fraction", 0.25), ("budget", "budgets.tokens_per_item", 10.5), ("budget", "budgets.cost", 2.0)}
    assert {r["golden_set_id"] for r in rows} == {"g1"} and monitor_run.check_history_rows("m1", {}, None, T0) == []


def test_the_next_state_keeps_what_drift_compared_and_the_alert_state():
    drift = monitor_run.Drift(state={"snapshot_id": "s1", "table": {"name": "t", "version": 2}})
    notes = monitor_run.Notifications([], [], {"regression|ndcg": {"severity": "warning"}})
    state = monitor_run.next_state("m2", "t2", drift, notes)
    assert state == {"run_id": "m2", "at": "t2", "snapshot_id": "s1", "table": {"name": "t", "version": 2},
                     "alerts": {"regression|ndcg": {"severity": "warning"}}}
    lineage = monitor_run.monitor_lineage(_selection(), state, {"run_id": "m1"})
    assert lineage == {"eval_run_id": "e1", "golden_set_id": "g1", "snapshot_id": "s1",
                       "table": {"name": "t", "version": 2}, "previous_monitor_run_id": "m1"}
    empty = monitor_run.monitor_lineage(monitor_run.Selection(None, [], []), {}, {})
    assert set(empty.values()) == {None}


def test_the_summary_lists_the_last_experiments_and_counts_the_watched_series():
    experiments = [{"run_id": f"x{i}", "chain_label": "fts k3", "golden_line": "g", "metrics": {}} for i in range(25)]
    watched = {"golden_line": "g", "chain_hash": "c1", "chain_label": "hybrid k5"}
    selection = monitor_run.Selection(watched, [{"run_id": "e1"}], experiments)
    summary = monitor_run.summarize("m1", "partial", {}, "/lake", ["e1"], selection, {"stages": _check()},
                                    monitor_run.Notifications([], [], {}), [{"sink": "log", "status": "failed"}], "/r.html")
    assert summary.series == {**watched, "observations": 1} and summary.observations == 1
    assert [e["run_id"] for e in summary.experiments] == [f"x{i}" for i in range(5, 25)]
    assert set(summary.experiments[0]) == {"run_id", "chain_label", "golden_line"}
    assert summary.checks == {"stages": {}} and summary.status == "partial"


def test_worst_items_need_a_latest_eval(lake):
    assert monitor_run.worst_items(lake, None, [], MonitorConfig()) == []
    assert monitor_run.worst_items(lake, {"run_id": "never-written"}, [], MonitorConfig()) == []


@pytest.mark.parametrize("name", ["monitor_alerts"])
def test_monitor_summaries_of_the_flow_round_trip_through_the_model(name):
    produced = SUMMARIES[name]  # returned by monitor-quality (tests/unit/data/stage_summaries.json)
    model = monitor_run.MonitorSummary.model_validate(produced)
    assert model.dump() == produced
    assert set(model.outputs()) == set(produced) - {"run_id", "status", "lineage"}
