"""Judge calibration: agreement figures against hand-computed tables, the best threshold, who may gate,
which items to label next, PPI against ppi-python with its coverage, and calibrate_lake on a tiny lake."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ragloop.tasks import calibration as cal
from ragloop.tasks import review, schemas
from ragloop.tasks.gating import check_gate, paired_deltas
from ragloop.tasks.settings import CalibrationConfig, EvalConfig, GateConfig
from ragloop.tasks.storage import Lake


# -- agreement against hand-computed tables ---------------------------------------------------------------
# kappa = (po - pe) / (1 - pe), pe = p_h1 * p_j1 + p_h0 * p_j0; confusion [[tn, fp], [fn, tp]].
@pytest.mark.parametrize("human, judge, accuracy, kappa, confusion, rates", [
    # perfect agreement: po = 1, pe = .4*.4 + .6*.6 = .52 -> 1
    ([1, 1, 1, 0, 0], [1, 1, 1, 0, 0], 1.0, 1.0, [[2, 0], [0, 3]], (0.6, 0.6)),
    # chance agreement: po = .5, pe = .5 -> 0
    ([1, 1, 0, 0], [1, 0, 1, 0], 0.5, 0.0, [[1, 1], [1, 1]], (0.5, 0.5)),
    # a constant judge (passes everything): po = .3, pe = .3 * 1 + .7 * 0 = .3 -> 0
    ([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1] * 10, 0.3, 0.0, [[0, 7], [0, 3]], (0.3, 1.0)),
    # always wrong on the fail class, one miss on the pass class: po = 3/8, pe = .5*7/8 + .5*1/8 = .5 -> -.25
    ([1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1, 1, 1], 0.375, -0.25, [[0, 4], [1, 3]], (0.5, 0.875)),
    # substantial: po = .8, pe = .5 -> .6
    ([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 1], 0.8, 0.6, [[4, 1], [1, 4]], (0.5, 0.5)),
])
def test_agreement_matches_hand_computed_tables(human, judge, accuracy, kappa, confusion, rates):
    out = cal.agreement(human, judge, resamples=200, seed=0)
    assert out["n"] == len(human) and out["accuracy"] == pytest.approx(accuracy)
    assert out["kappa"] == pytest.approx(kappa, abs=1e-9)
    assert out["confusion"] == confusion
    assert (out["base_rates"]["human"], out["base_rates"]["judge"]) == pytest.approx(rates)
    low, high = out["kappa_ci"]
    assert low <= out["kappa"] + 1e-9 and high >= out["kappa"] - 1e-9


def test_kappa_is_undefined_when_both_raters_use_one_class_and_the_ci_leaves_such_resamples_out():
    assert cal.kappa([1, 1, 1], [1, 1, 1]) is None
    out = cal.agreement([1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], resamples=500, seed=1)
    assert out["kappa"] == 1.0 and out["undefined_resamples"] > 0 and out["kappa_ci"] == [1.0, 1.0]


def test_the_vectorized_bootstrap_kappa_equals_scikit_learns():
    rng = np.random.default_rng(7)
    h, j = rng.integers(0, 2, (200, 15)), rng.integers(0, 2, (200, 15))
    fast = cal._kappa_rows(h, j)
    slow = np.array([np.nan if (k := cal.kappa(a, b)) is None else k for a, b in zip(h, j)])
    np.testing.assert_allclose(fast, slow, equal_nan=True)


def test_the_best_threshold_is_where_the_continuous_judge_agrees_best():
    human = [1, 1, 1, 0, 0, 0]
    assert cal.best_threshold(human, [0.9, 0.8, 0.6, 0.55, 0.2, 0.1]) == 0.6
    assert cal.best_threshold([], []) == 0.5


def test_a_lower_is_better_metric_is_flipped_before_its_verdict():
    assert list(cal.verdicts("degenerate", [0.0, 1.0], 0.5)) == [1, 0]
    assert list(cal.verdicts("grounded", [0.0, 1.0], 0.5)) == [0, 1]


# -- who may gate ------------------------------------------------------------------------------------------
CONFIG = CalibrationConfig(min_labels=30, min_kappa=0.6)


@pytest.mark.parametrize("n, kappa, ci, may, needed, words", [
    (0, None, None, False, 30, "no human grades"),
    (12, 0.9, [0.7, 1.0], False, 18, "12 labels < gate.calibration.min_labels 30"),
    (40, 0.05, None, False, 0, "kappa 0.05 < gate.calibration.min_kappa 0.6"),
    (40, 0.05, [-0.2, 0.3], False, 0, "kappa 0.05 [-0.20, 0.30] is wholly under gate.calibration.min_kappa 0.6"),
    (40, None, None, False, 0, "undefined"),
    (40, 0.8, [0.65, 0.95], True, 0, "calibrated"),
])
def test_eligibility_needs_both_labels_and_kappa(n, kappa, ci, may, needed, words):
    out = cal.eligibility(n, kappa, ci, CONFIG)
    assert out["may_gate"] is may and out["labels_needed"] == needed and words in out["reason"]


def test_labels_for_ci_grows_with_the_ci_and_is_none_when_labels_cannot_help():
    assert cal.eligibility(30, 0.8, [0.5, 1.0], CONFIG)["labels_for_ci"] == 68  # 30 * (0.3 / 0.2)^2 = 67.5
    assert cal.eligibility(30, 0.4, [0.1, 0.7], CONFIG)["labels_for_ci"] is None


def test_label_next_puts_the_items_the_metrics_disagree_on_first():
    items = [{"qa_id": "a", "run_id": "r", "question": "?", "metrics": {"grounded": 1.0, "degenerate": 0.0}},
             {"qa_id": "b", "run_id": "r", "question": "?", "metrics": {"grounded": 1.0, "degenerate": 1.0}},
             {"qa_id": "c", "run_id": "r", "question": "?", "metrics": {"hit@1": 1.0}}]
    ranked = cal.label_next(items, {})
    assert [r["qa_id"] for r in ranked] == ["b", "a"] and ranked[0]["disagreement"] == 0.5
    assert ranked[0]["passes"] == {"degenerate": 0, "grounded": 1}


# -- PPI -----------------------------------------------------------------------------------------------------
def _synthetic(seed: int, n: int = 60, big_n: int = 600, p: float = 0.6):
    """People's verdicts Y ~ Bernoulli(p); a lenient judge: it passes 95% of what people pass and 40% of
    what they fail, so its own mean (~0.74) is biased."""
    rng = np.random.default_rng(seed)
    y = rng.binomial(1, p, n + big_n)
    yhat = np.where(y == 1, rng.random(n + big_n) < 0.95, rng.random(n + big_n) < 0.4).astype(int)
    return y[:n], yhat[:n], yhat[n:]


def test_ppi_equals_ppi_python_and_is_narrower_than_labels_alone():
    from ppi_py import classical_mean_ci, ppi_mean_ci, ppi_mean_pointestimate

    y, yhat, rest = _synthetic(0)
    out = cal.ppi_estimates(y, yhat, rest, confidence=0.9)
    assert out["ppi"]["estimate"] == pytest.approx(float(ppi_mean_pointestimate(y, yhat, rest)[0]), abs=1e-6)
    low, high = ppi_mean_ci(y, yhat, rest, alpha=0.1)
    assert out["ppi"]["ci"] == pytest.approx([float(low[0]), float(high[0])], abs=1e-6)
    assert out["human"]["ci"] == pytest.approx([float(v) for v in classical_mean_ci(y, alpha=0.1)], abs=1e-6)
    assert out["ppi"]["width"] < out["human"]["width"]
    assert out["n_labelled"] == 60 and out["n_unlabelled"] == 600


def test_ppi_covers_the_true_share_near_the_nominal_level_where_the_plain_judge_does_not():
    seeds, p = 300, 0.6
    covered_ppi = covered_judge = 0
    for seed in range(seeds):
        out = cal.ppi_estimates(*_synthetic(seed, p=p), confidence=0.9)
        covered_ppi += out["ppi"]["ci"][0] <= p <= out["ppi"]["ci"][1]
        covered_judge += out["judge"]["ci"][0] <= p <= out["judge"]["ci"][1]
    assert 0.85 <= covered_ppi / seeds <= 0.95  # nominal 0.90; 300 seeds: SE ~ 0.017
    assert covered_judge / seeds < 0.5  # the judge's own estimate is biased: its CI misses


# -- the gate --------------------------------------------------------------------------------------------------
def _calibration_row(identity, n, kappa, low, high):
    return {"calibration_id": "c", "judge_id": cal.judge_id(identity), "metric": identity["metric"], "judge": "{}",
            "n": n, "labels": "{}", "accuracy": 0.9, "kappa": kappa, "kappa_low": low, "kappa_high": high,
            "confusion": "[]", "base_rate_human": 0.5, "base_rate_judge": 0.5, "threshold": 0.5, "run_ids": [],
            "calibrated_at": "2026-01-01"}


JUDGE = {"kind": "llm", "metric": "faithfulness", "provider": "openai", "model": "m", "ragas": "0.4.3", "prompt_hash": "p"}


def test_the_gate_ignores_an_uncalibrated_judge_and_gates_on_a_calibrated_one():
    metrics = ["faithfulness", "hit@1"]
    base = [{"qa_id": f"q{i}", "metrics": {"faithfulness": 0.9, "hit@1": 1.0}} for i in range(40)]
    cand = [{"qa_id": f"q{i}", "metrics": {"faithfulness": 0.3, "hit@1": 1.0}} for i in range(40)]
    deltas = paired_deltas(base, cand, 200, 0.95, 0)
    gate_config = GateConfig(floors={"faithfulness": 0.5})
    for stored, gated in (({}, False), ({cal.judge_id(JUDGE): _calibration_row(JUDGE, 12, 0.9, 0.7, 1.0)}, False),
                          ({cal.judge_id(JUDGE): _calibration_row(JUDGE, 40, 0.1, -0.2, 0.3)}, False),
                          ({cal.judge_id(JUDGE): _calibration_row(JUDGE, 40, 0.8, 0.65, 0.95)}, True)):
        status = cal.gate_calibration(metrics, {"faithfulness": JUDGE}, stored, gate_config.calibration)
        assert list(status) == ["faithfulness"] and status["faithfulness"]["gated"] is gated
        ungated = {m: s["reason"] for m, s in status.items() if not s["gated"]}
        gate = check_gate({"faithfulness": 0.3, "hit@1": 1.0}, deltas, 0, 40, gate_config, ungated=ungated)
        if gated:
            assert gate["status"] == "failed" and "faithfulness" in gate["gated"]
            assert any("faithfulness dropped" in r for r in gate["reasons"])
            assert any("under its floor" in r for r in gate["reasons"])
        else:
            assert gate["status"] == "passed" and gate["gated"] == ["hit@1"]
            assert gate["ungated"] == ungated and any("faithfulness: reported, not gated" in w for w in gate["warnings"])


def test_a_changed_judge_is_uncalibrated_again():
    stored = {cal.judge_id(JUDGE): _calibration_row(JUDGE, 40, 0.8, 0.65, 0.95)}
    other = {**JUDGE, "prompt_hash": "changed"}
    status = cal.gate_calibration(["faithfulness"], {"faithfulness": other}, stored, CONFIG)
    assert status["faithfulness"]["gated"] is False and "uncalibrated judge" in status["faithfulness"]["reason"]


def test_context_metrics_are_never_gated_on_answer_grades_and_checks_only_when_asked():
    status = cal.gate_calibration(["context_recall", "grounded"], {}, {}, CONFIG)
    assert list(status) == ["context_recall"] and "not the retrieved contexts" in status["context_recall"]["reason"]
    with_checks = cal.gate_calibration(["grounded"], {}, {}, CalibrationConfig(levels=["answer", "judge"]))
    assert with_checks["grounded"]["gated"] is False


def test_judge_identities_name_the_model_prompts_and_check_code():
    ids = cal.judge_identities(["faithfulness", "grounded", "semantic_similarity", "hit@1"],
                               EvalConfig(judge={"provider": "openai", "base_url": "http://127.0.0.1:1/v1"}),
                               "judge@1", "emb", "w")
    assert set(ids) == {"faithfulness", "grounded", "semantic_similarity"}
    assert ids["faithfulness"]["model"] == "judge@1" and ids["faithfulness"]["provider"] == "openai"
    assert len(ids["faithfulness"]["prompt_hash"]) == 64
    assert ids["grounded"]["params"] == {"min_grounding": 0.5} and len(ids["grounded"]["code"]) == 64
    assert ids["semantic_similarity"]["weights_sha256"] == "w"


# -- calibrate_lake on a tiny lake -------------------------------------------------------------------------------
def _eval_run(lake: Lake, run_id: str, values: list[tuple[str, str, float]], judges: dict) -> None:
    lake.write_run({"run_id": run_id, "flow": "eval", "status": "ok", "started_at": None, "ended_at": None,
                    "lineage": {"golden_line": "synthetic", "golden_set_id": "g1", "judges": judges},
                    "outputs": {"golden_line": "synthetic", "golden_set_id": "g1"}})
    rows = [{"qa_id": q, "qa_type": "single_hop", "question": f"{q}?", "status": "ok", "answer": a,
             "metrics": [("semantic_similarity", v), ("grounded", float(v > 0.5))], "failed_metrics": [],
             "retrieved_chunk_ids": [], "retrieved_doc_ids": [], "retrieval_scores": [], "stale_references": []}
            for q, a, v in values]
    lake.write_eval(run_id, pa.Table.from_pylist(rows, schema=schemas.EVAL_ITEMS), schemas.TRACES.empty_table())


def _grade(lake: Lake, run_id: str, grades: dict[str, str]) -> None:
    events = [review.make_event(review.Decision("answers", q, "grade", "ana", {"grade": g}), {}, {"grade": g}, None,
                                run_id, None, schemas.utcnow()) for q, g in grades.items()]
    review.write_events(lake, events)


def test_calibrate_lake_reports_stores_and_follows_answers_into_other_runs(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    judges = cal.judge_identities(["semantic_similarity", "grounded"], EvalConfig(), None, "emb", "w")
    values = [(f"q{i}", f"answer {i}", v) for i, v in enumerate([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.05])]
    _eval_run(lake, "20260101T000000Z-eval-a", values, judges)
    _grade(lake, "20260101T000000Z-eval-a", {"q0": "correct", "q1": "correct", "q2": "partially_correct",
                                             "q4": "incorrect", "q5": "incorrect"})
    # a later run gave the same answers to q0..q5: the grades follow the answer text
    _eval_run(lake, "20260102T000000Z-eval-b", values[:6] + [("q6", "new answer", 0.95)], judges)
    out = cal.calibrate_lake(lake, CalibrationConfig(min_labels=3, min_kappa=0.58, min_class_labels=2),
                             run="20260102T000000Z-eval-b", resamples=100)
    sim = out.metrics["semantic_similarity"]
    assert out.graded == 5 and sim["n"] == 5 and sim["labels"] == {"correct": 2, "partially_correct": 1, "incorrect": 2}
    # The threshold to use is chosen on all five labels (0.8 splits them perfectly), but the agreement is
    # measured leave-one-out: without q1, 0.9 is the best threshold and q1 (0.8) is failed. po .8, pe .56.
    assert sim["threshold"] == 0.8 and sim["threshold_selection"] == "leave-one-out"
    assert sim["kappa"] == pytest.approx(0.24 / 0.44, abs=1e-6) and not sim["may_gate"] and sim["stored"]
    assert out.metrics["grounded"]["kappa"] == pytest.approx(0.32 / 0.52, abs=1e-6)  # po .8, pe .48: partial fails, grounded passed it
    assert "semantic_similarity" in out.not_gated and out.may_gate == ["grounded"]
    assert [r["qa_id"] for r in out.label_next] == ["q3", "q6"]
    stored = lake.read_calibrations().to_pylist()
    assert {r["metric"] for r in stored} == {"semantic_similarity", "grounded"}
    assert json.loads(stored[0]["judge"])["metric"] in ("semantic_similarity", "grounded")
    again = cal.calibrate_lake(lake, CalibrationConfig(min_labels=3, min_kappa=0.58, min_class_labels=2),
                               run="20260102T000000Z-eval-b", resamples=100)
    assert not again.metrics["semantic_similarity"]["stored"]  # same labels, same calibration: nothing new
    with pytest.raises(Exception, match="no finished eval run"):
        cal.calibrate_lake(lake, CONFIG, run="nope")


def test_one_passing_answer_among_forty_cannot_calibrate_a_continuous_metric():
    """Found on a real lake: 1 correct answer among 40 graded, and semantic_similarity's in-sample threshold
    split it off perfectly (kappa 1.00, CI [1, 1], may gate). Leave-one-out agreement and the per-class
    minimum keep that figure from flattering."""
    human = [1] + [0] * 39
    scores = [0.95] + [0.2 + 0.01 * i for i in range(39)]
    in_sample = [int(s >= cal.best_threshold(human, scores)) for s in scores]
    assert cal.kappa(human, in_sample) == 1.0, "the flattering figure"
    entry = cal.metric_calibration("semantic_similarity", list(zip(human, scores)), CalibrationConfig(), 200, 0.95, 0)
    assert not entry["may_gate"] and entry["kappa_ci"] is None, "no interval from a single passing label"
    assert "only 1 'pass' grade(s) among 40 labels < gate.calibration.min_class_labels 10" in entry["reason"]


def test_six_passing_labels_get_a_kappa_interval_but_no_gate():
    """From 5 labels of each verdict kappa gets its bootstrap CI (wide, honestly so); gating still needs
    gate.calibration.min_class_labels of each."""
    human = [1] * 6 + [0] * 30
    judged = [1, 1, 1, 1, 0, 0] + [1] * 3 + [0] * 27
    entry = cal.metric_calibration("grounded", list(zip(human, judged)), CalibrationConfig(), 300, 0.95, 0)
    low, high = entry["kappa_ci"]
    assert low < entry["kappa"] < high and high - low > 0.3
    assert not entry["may_gate"] and "only 6 'pass' grade(s) among 36 labels" in entry["reason"]
    chance = cal.metric_calibration("grounded", list(zip(human, [1, 0] * 18)), CalibrationConfig(), 300, 0.95, 0)
    assert chance["kappa_ci"][1] < 0.6 and not chance["may_gate"]
    assert "wholly under gate.calibration.min_kappa 0.6: the judge does not agree with people" in chance["reason"]
    few = cal.metric_calibration("grounded", list(zip([1] * 4 + [0] * 32, judged)), CalibrationConfig(), 300, 0.95, 0)
    assert few["kappa_ci"] is None


def test_a_share_interval_stays_within_zero_and_one():
    """Seen on a real lake: a judge passing 15 of 18 answers printed the CI [0.66, 1.01]."""
    est = cal.ppi_estimates([1, 0, 0, 1, 0, 0, 0, 0, 1, 0], [1] * 9 + [0], [1] * 8)
    assert all(0.0 <= v <= 1.0 for part in ("judge", "human", "ppi") for v in est[part]["ci"])
    assert est["judge"]["ci"][1] == 1.0 and est["judge"]["width"] == round(1.0 - est["judge"]["ci"][0], 6)
