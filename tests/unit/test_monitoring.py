"""The regression rule, drift checks and budgets on table-driven synthetic histories."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from ragloop.tasks import monitoring
from ragloop.tasks.settings import MonitorConfig

T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.timezone.utc)


def series(*nights: dict[str, float], golden: str = "g1") -> list[dict]:
    """One observation per night: {metric: value}, CI +-0.02."""
    return [{"observation_id": f"o{i}", "run_id": f"r{i}", "golden_set_id": golden, "at": T0 + dt.timedelta(days=i),
             "metrics": {m: {"value": v, "ci_low": v - 0.02, "ci_high": v + 0.02} for m, v in night.items()}}
            for i, night in enumerate(nights)]


def ndcg(*values: float) -> list[dict]:
    return series(*({"ndcg@10": v} for v in values))


@pytest.mark.parametrize("values, expected", [
    ((0.70, 0.71, 0.69, 0.70, 0.70, 0.70), []),                       # flat
    ((0.70, 0.71, 0.69, 0.70, 0.70, 0.55), []),                       # one bad night is noise, not a regression
    ((0.70, 0.71, 0.69, 0.70, 0.55, 0.70), []),                       # a dip that recovered
    ((0.70, 0.71, 0.69, 0.70, 0.60, 0.61), ["warning"]),              # a drop that persisted over the window
    ((0.70, 0.71, 0.69, 0.70, 0.40, 0.45), ["critical"]),             # a big persistent drop
    ((0.70, 0.66, 0.66), []),                                         # a persistent drop within max_drop
    ((0.70, 0.60), []),                                               # too short for a window + baseline
    ((0.50, 0.50, 0.50, 0.70, 0.80), []),                             # improvements never alert
])
def test_regression_needs_a_drop_that_persists_over_the_window(values, expected):
    check = monitoring.check_regression(ndcg(*values), MonitorConfig())
    assert [a.severity for a in check.alerts] == expected
    for alert in check.alerts:
        assert alert.kind == "regression" and alert.metric == "ndcg@10" and "ndcg@10" in alert.message


@pytest.mark.parametrize("values, expected", [
    ((0.05, 0.05, 0.05, 0.15, 0.16), ["warning"]),  # degenerate answers rose and stayed up
    ((0.30, 0.30, 0.30, 0.05, 0.05), []),           # fewer degenerate answers is an improvement
])
def test_a_lower_is_better_metric_regresses_by_rising(values, expected):
    check = monitoring.check_regression(series(*({"degenerate": v} for v in values)), MonitorConfig())
    assert [a.severity for a in check.alerts] == expected
    assert all("above its baseline" in a.message for a in check.alerts)


@pytest.mark.parametrize("window, values, alerts", [
    (1, (0.70, 0.70, 0.55), 1),   # window 1: a single night is enough
    (3, (0.70, 0.70, 0.55, 0.55), 0),  # window 3: two bad nights are not
    (3, (0.70, 0.70, 0.55, 0.55, 0.55), 1),
])
def test_window_length_is_configuration(window, values, alerts):
    assert len(monitoring.check_regression(ndcg(*values), MonitorConfig(window=window)).alerts) == alerts


def test_baseline_is_the_median_of_recent_runs_so_one_outlier_cannot_move_it():
    check = monitoring.check_regression(ndcg(0.70, 0.99, 0.70, 0.70, 0.70, 0.62, 0.62), MonitorConfig(baseline_runs=5))
    assert check.figures["checked"]["ndcg@10"]["baseline"] == pytest.approx(0.70)
    assert [a.severity for a in check.alerts] == ["warning"]
    assert check.alerts[0].details["beyond_ci"] is True  # 0.62 + 0.02 < 0.70


def test_only_configured_metrics_are_checked_and_each_is_named():
    hist = series({"ndcg@10": 0.7, "hit@5": 0.9}, {"ndcg@10": 0.7, "hit@5": 0.9},
                  {"ndcg@10": 0.5, "hit@5": 0.7}, {"ndcg@10": 0.5, "hit@5": 0.7})
    assert {a.metric for a in monitoring.check_regression(hist, MonitorConfig()).alerts} == {"ndcg@10", "hit@5"}
    assert {a.metric for a in monitoring.check_regression(hist, MonitorConfig(metrics=["hit@5"])).alerts} == {"hit@5"}


def test_a_metric_missing_from_the_window_is_not_a_regression():
    hist = series({"ndcg@10": 0.7, "hit@5": 0.9}, {"ndcg@10": 0.7, "hit@5": 0.9}, {"ndcg@10": 0.7}, {"ndcg@10": 0.7})
    assert monitoring.check_regression(hist, MonitorConfig()).alerts == []


def test_only_observations_on_overlapping_golden_sets_are_compared():
    old = series({"ndcg@10": 0.9}, {"ndcg@10": 0.9}, golden="other")
    new = series({"ndcg@10": 0.5}, {"ndcg@10": 0.5}, {"ndcg@10": 0.5}, golden="g1")
    for i, o in enumerate(new):
        o["at"] = T0 + dt.timedelta(days=10 + i)
    mixed = old + new
    assert monitoring.check_regression(mixed, MonitorConfig()).alerts  # naive: different question sets read as a drop
    kept = monitoring.comparable(mixed, {"g1": 1.0, "other": 0.1}, 0.5)
    assert monitoring.check_regression(kept, MonitorConfig()).alerts == []


def test_history_rows_cover_overall_and_per_type_with_cis():
    run = {"run_id": "e1", "outputs": {"golden_set_id": "g", "metrics": {"hit@5": 0.8, "grounded": 0.5},
                                       "ci": {"hit@5": [0.7, 0.9], "grounded": [0.2, 0.8]}, "n": {"hit@5": 10, "grounded": 4},
                                       "by_type": {"single_hop": {"n": 6, "metrics": {"hit@5": 1.0}, "ci": {"hit@5": [1.0, 1.0]}}}}}
    rows = monitoring.history_rows("e1", run, T0)
    assert {(r["scope"], r["metric"], r["value"], r["ci_low"], r["n"]) for r in rows} == {
        ("all", "hit@5", 0.8, 0.7, 10), ("all", "grounded", 0.5, 0.2, 4), ("type:single_hop", "hit@5", 1.0, 1.0, 6)}
    obs = monitoring.observations(rows)
    assert len(obs) == 1 and obs[0]["metrics"]["hit@5"]["ci_high"] == 0.9


DOCS = {f"d{i}": f"sha{i}" for i in range(10)}


@pytest.mark.parametrize("current, kinds, figures", [
    (dict(DOCS), [], {"added": 0, "removed": 0, "changed": 0}),
    ({**DOCS, "d10": "x"}, [], {"added": 1}),                                              # 10 % < 20 %
    ({**DOCS, "d0": "new", "d1": "new", "d10": "x"}, ["corpus_drift"], {"changed": 2, "added": 1}),   # 30 %
    ({k: v for k, v in DOCS.items() if k not in ("d0", "d1", "d2")}, ["corpus_drift"], {"removed": 3}),
])
def test_corpus_drift_counts_added_removed_changed(current, kinds, figures):
    lengths = [100] * 10
    check = monitoring.check_corpus_drift(DOCS, current, lengths, lengths, MonitorConfig())
    assert [a.kind for a in check.alerts] == kinds
    assert {k: check.figures[k] for k in figures} == figures


def test_length_distribution_shift_alerts_only_past_the_threshold():
    rng = np.random.default_rng(0)
    before = rng.normal(1000, 100, 400)
    same = rng.normal(1000, 100, 400)
    longer = rng.normal(1600, 100, 400)
    docs = {f"d{i}": "s" for i in range(400)}
    assert monitoring.check_corpus_drift(docs, docs, before, same, MonitorConfig()).alerts == []
    check = monitoring.check_corpus_drift(docs, docs, before, longer, MonitorConfig())
    assert [a.kind for a in check.alerts] == ["length_drift"] and check.figures["length_ks"] > 0.9


def test_first_observation_is_a_baseline_not_an_alert():
    assert monitoring.check_corpus_drift(None, DOCS, [], [1, 2], MonitorConfig()).figures["baseline"]
    assert monitoring.check_embedding_drift(None, np.ones((3, 4)), MonitorConfig()).alerts == []
    assert monitoring.check_retrieval_drift(None, [0.5, 0.6], MonitorConfig()).figures["baseline"]


def _cluster(center: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return center + 0.1 * rng.normal(size=(n, center.size))


def test_embedding_shift_is_the_centroid_distance():
    a = np.eye(8)[0]
    b = np.eye(8)[1]
    same = monitoring.check_embedding_drift(_cluster(a, 200, 0), _cluster(a, 200, 1), MonitorConfig())
    assert same.alerts == [] and same.figures["centroid_shift"] < 0.02
    moved = monitoring.check_embedding_drift(_cluster(a, 200, 0), _cluster(b, 200, 1), MonitorConfig(), 0.9)
    assert [a.kind for a in moved.alerts] == ["embedding_drift"] and moved.figures["centroid_shift"] > 0.5
    assert moved.figures["replaced_fraction"] == 0.9


@pytest.mark.parametrize("previous, current, alerts", [
    ([0.6] * 20, [0.6] * 20, 0),
    ([0.6] * 20, [0.57] * 20, 0),   # drop 0.03 < 0.05
    ([0.6] * 20, [0.45] * 20, 1),
    ([0.4] * 20, [0.7] * 20, 0),    # better retrieval never alerts
])
def test_retrieval_drift_on_the_median_top1_similarity(previous, current, alerts):
    check = monitoring.check_retrieval_drift(previous, current, MonitorConfig())
    assert len(check.alerts) == alerts
    assert check.figures["top1_median_drop"] == pytest.approx(np.median(previous) - np.median(current))


def test_a_failed_validation_suite_is_a_critical_alert():
    check = monitoring.check_validations(
        {"documents": {"success": True, "evaluated": 5}, "chunks": {"success": False, "failures": ["vector_norm out of range"]}},
        "idx-1")
    assert [(a.kind, a.severity, a.metric) for a in check.alerts] == [("ge_failure", "critical", "ge.chunks")]
    assert "vector_norm" in check.alerts[0].message and "idx-1" in check.alerts[0].message


def _traces(latencies_ms: list[float], tokens: int) -> list[dict]:
    return [{"qa_id": f"q{i}", "step": "answer", "latency_ms": ms, "prompt_tokens": tokens, "completion_tokens": 0}
            for i, ms in enumerate(latencies_ms)]


@pytest.mark.parametrize("latencies, tokens, config, kinds", [
    ([1000] * 10, 100, MonitorConfig(), []),
    ([1000] * 9 + [90_000], 100, MonitorConfig(), []),  # p95 of 10 items sits between the 9th and 10th
    ([70_000] * 10, 100, MonitorConfig(), ["latency_budget"]),
    ([1000] * 10, 5000, MonitorConfig(), ["token_budget"]),
    ([1000] * 10, 1000, MonitorConfig(price_per_1k_tokens=0.5, max_cost_per_run=4.0), ["cost_budget"]),
    ([70_000] * 10, 5000, MonitorConfig(max_item_latency_p95_s=None, max_tokens_per_item=None), []),
])
def test_budgets(latencies, tokens, config, kinds):
    check = monitoring.check_budgets(_traces(latencies, tokens), len(latencies), config)
    assert [a.kind for a in check.alerts] == kinds
    assert check.figures["tokens"] == tokens * len(latencies)


def test_item_latency_sums_all_steps_of_an_item():
    traces = [{"qa_id": "q", "step": s, "latency_ms": 40_000, "prompt_tokens": 0, "completion_tokens": 0}
              for s in ("retrieve", "answer")]
    check = monitoring.check_budgets(traces, 1, MonitorConfig())
    assert check.figures["item_latency_p95_s"] == 80.0 and [a.kind for a in check.alerts] == ["latency_budget"]


def test_monitor_config_is_validated():
    with pytest.raises(ValueError, match="critical_drop"):
        MonitorConfig(max_drop=0.2, critical_drop=0.1)
    with pytest.raises(ValueError, match="webhook_url_env"):
        MonitorConfig(webhook_url_env="RAGLOOP_HOOK")


def test_regression_compares_runs_on_the_questions_they_all_scored():
    # night 0 scored q1..q4; nights 1 and 2 a refreshed set: q1, q2 kept, q5..q8 new and harder
    good = {"hit@5": 1.0}
    per_item = {
        "r0": {q: good for q in ("q1", "q2", "q3", "q4")},
        "r1": {"q1": good, "q2": good, **{q: {"hit@5": 0.0} for q in ("q5", "q6")}},
        "r2": {"q1": good, "q2": good, **{q: {"hit@5": 0.0} for q in ("q5", "q6")}},
    }
    hist = series({"hit@5": 1.0}, {"hit@5": 0.5}, {"hit@5": 0.5})
    config = MonitorConfig()
    assert monitoring.check_regression(hist, config).alerts, "the raw means read as a drop"
    paired, info = monitoring.on_shared_items(hist, per_item, config)
    assert info["shared_items"] == 2 and [o["metrics"]["hit@5"]["value"] for o in paired] == [1.0, 1.0, 1.0]
    assert monitoring.check_regression(paired, config).alerts == []

    per_item["r2"] = {"q1": {"hit@5": 0.0}, "q2": {"hit@5": 0.0}, "q5": good, "q6": good}
    per_item["r1"] = dict(per_item["r2"])
    paired, _ = monitoring.on_shared_items(hist, per_item, config)
    assert [a.metric for a in monitoring.check_regression(paired, config).alerts] == ["hit@5"], "a real drop on shared questions"


def test_too_few_shared_questions_skip_the_rule_and_say_why():
    per_item = {"r0": {"q1": {"m": 1.0}}, "r1": {"q1": {"m": 0.0}, "q2": {"m": 0.0}, "q3": {"m": 0.0}},
                "r2": {"q1": {"m": 0.0}, "q2": {"m": 0.0}, "q3": {"m": 0.0}}}
    paired, info = monitoring.on_shared_items(series({"m": 1}, {"m": 0}, {"m": 0}), per_item, MonitorConfig())
    assert paired == [] and "only 1 of 3 questions" in info["reason"]


# -- one series per chain, alerts once (issue 14) ----------------------------------------------------
def _obs(i, mode="nightly", chain="c1", line="synthetic"):
    return {"observation_id": f"o{i}", "run_id": f"r{i}", "golden_set_id": "g", "at": i, "mode": mode,
            "chain_hash": chain, "golden_line": line, "chain_label": chain, "metrics": {}}


def test_watched_series_is_the_latest_served_chain_and_experiments_stay_apart():
    from ragloop.tasks.monitoring import watched_series

    obs = [_obs(1), _obs(2, mode="experiment", chain="fts"), _obs(3, mode=None), _obs(4, mode="experiment", chain="c1"),
           _obs(5, chain="c2"), _obs(6, mode="prompt-changed", chain="c2")]
    key, series, experiments = watched_series(obs)
    assert key["chain_hash"] == "c2" and [o["run_id"] for o in series] == ["r5", "r6"]
    assert [o["run_id"] for o in experiments] == ["r2", "r4"], "an experiment of the same chain is still an experiment"
    assert watched_series([_obs(1, mode="experiment")])[:2] == (None, [])


def test_alerts_are_sent_once_per_condition_and_once_when_cleared():
    from ragloop.tasks.monitoring import alerts_to_send

    regression = {"kind": "regression", "metric": "ndcg@10", "severity": "warning", "message": "down"}
    sent, state = alerts_to_send([regression], {})
    assert sent == [regression]
    again, state = alerts_to_send([regression], state)
    assert again == [], "a persisting condition is not re-sent"
    worse = {**regression, "severity": "critical"}
    assert alerts_to_send([worse], state)[0] == [worse], "a change of severity is news"
    cleared, state = alerts_to_send([], state)
    assert [(a["kind"], a["metric"], a["severity"]) for a in cleared] == [("alert_cleared", "ndcg@10", "info")]
    assert alerts_to_send([], state) == ([], {})
    failed = {"kind": "stage_failed", "metric": "stage.synth", "severity": "critical", "message": "x"}
    assert alerts_to_send([failed], {})[0] == [failed] and alerts_to_send([failed], {})[1] == {}, "events are always sent"


def test_latest_answered_skips_retrieval_only_runs():
    from ragloop.tasks.monitoring import latest_answered

    chains = {"r1": {"answer": {"name": "answer"}}, "r2": {"answer": None}}
    assert latest_answered([_obs(1), _obs(2)], chains.get)["run_id"] == "r1"
    assert latest_answered([_obs(2)], chains.get) is None


def test_chain_label_and_history_rows_carry_the_series():
    import datetime as dt

    from ragloop.tasks.monitoring import chain_label, history_rows

    assert chain_label({"retrieval": "hybrid", "k": 5, "answer": {"name": "answer"}, "rerank": {"kind": "embedding"}}) == \
        "hybrid k5 +rerank +answer"
    # an eval target's chain (found by a new user labelled '? k5 retrieval-only')
    assert chain_label({"target": {"kind": "python", "callable": "examples.own_app.app:answer"}, "k": 5,
                        "grounding": {"min_grounding": 0.5}}) == "target examples.own_app.app:answer k5"
    assert chain_label({"target": {"kind": "http", "url": "http://127.0.0.1:8000/ask"}, "k": 3, "grounding": None}) == \
        "target http://127.0.0.1:8000/ask k3 retrieval-only"
    run = {"run_id": "r1", "lineage": {"chain_hash": "h", "chain": {"retrieval": "fts", "k": 3}, "golden_line": "x"},
           "outputs": {"golden_set_id": "g", "metrics": {"hit@1": 1.0}, "promotion": {"mode": "experiment"}}}
    row = history_rows("r1", run, dt.datetime(2026, 11, 30))[0]
    assert (row["chain_hash"], row["golden_line"], row["mode"], row["chain_label"]) == ("h", "x", "experiment", "fts k3 retrieval-only")
    assert history_rows("n1", run, dt.datetime(2026, 11, 30), mode="nightly")[0]["mode"] == "nightly"


def test_stage_failures_are_critical_alerts():
    from ragloop.tasks.monitoring import check_stage_failures

    check = check_stage_failures([{"stage": "synth", "run_id": "s1", "error": "no accepted items"}])
    (alert,) = check.alerts
    assert (alert.kind, alert.severity, alert.metric) == ("stage_failed", "critical", "stage.synth")
    assert "no accepted items" in alert.message and "s1" in alert.message


@pytest.mark.parametrize("promotion, role, mode", [
    ({"mode": "nightly", "promoted": True}, "serving", "nightly"),
    ({"mode": "nightly", "promoted": False}, "serving", "nightly"),  # a failing night of what is served
    ({"mode": "nightly", "promoted": False}, "candidate", "candidate"),  # a candidate that stayed one
    ({"mode": "explicit", "promoted": False}, "serving", "experiment"),
    ({"mode": "explicit", "promoted": True}, "candidate", "explicit"),
    ({"mode": "experiment", "promoted": False}, "serving", "experiment"),
    (None, "serving", None),
])
def test_observation_mode(promotion, role, mode):
    from ragloop.tasks.monitoring import observation_mode

    outputs = {"index": {"role": role}, **({"promotion": promotion} if promotion else {})}
    assert observation_mode({"outputs": outputs}) == mode
