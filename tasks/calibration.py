"""Judges against people: how well each verdict-like metric agrees with human answer grades (Cohen's kappa
with a bootstrap CI, confusion matrix, base rates, the best threshold of a continuous metric), which
judges may gate, which items to label next, and prediction-powered estimates that use the human labels
to correct a judge's estimate.

Pure statistics (agreement, best_threshold, eligibility, label_next, ppi_estimates), the judge's
identity (judge_identities: a changed provider, model, prompt or check is another judge, uncalibrated),
and the lake side (answer_grades, calibrate_lake, gate_calibration), which reads review events and eval
items and writes `calibrations/`. No prefect.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import math
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pydantic import Field

from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.metrics import metric_info, metric_range
from ragloop.tasks.settings import CalibrationConfig, ConfigError
from ragloop.tasks.summaries import CommandSummary

log = logging.getLogger(__name__)

# metric -> how it reads as a verdict on the answer: "binary" (0/1 per item) or "continuous" (passes at
# value >= a threshold, the one that agrees best with people). Lower-is-better metrics are flipped first.
VERDICTS: dict[str, str] = {
    "grounded": "binary", "degenerate": "binary", "refusal_correct": "binary",
    "semantic_similarity": "continuous", "rouge_l": "continuous",
    "faithfulness": "continuous", "answer_relevancy": "continuous", "factual_correctness": "continuous",
}
# Judged metrics no answer grade checks: a person grading the answer says nothing about the ranking of contexts.
NOT_GRADED = {
    "context_precision": "no human label checks it: answer grades judge the answer, not the retrieved contexts",
    "context_recall": "no human label checks it: answer grades judge the answer, not the retrieved contexts",
}
# A human grade as a verdict. "partially_correct" fails: a judge that passes it passes an answer a
# person would not sign off (the counts of each grade are reported beside the figures).
HUMAN_PASS = {"correct": 1, "partially_correct": 0, "incorrect": 0}
RAGAS_DIRS = {"faithfulness": "faithfulness", "answer_relevancy": "answer_relevancy",
              "context_precision": "context_precision", "context_recall": "context_recall",
              "factual_correctness": "factual_correctness"}
LABEL_NEXT = 10
# Labels of each human verdict below which kappa gets no bootstrap CI (resamples holding 0-2 of a class make
# kappa undefined or +-1): the interval is shown from 5 of each, gating still needs gate.calibration.min_class_labels.
CI_MIN_CLASS_LABELS = 5


# -- verdicts and agreement (pure) ---------------------------------------------------------------------
def pass_score(metric: str, value: float) -> float:
    """The value turned so that higher passes: a lower-is-better metric is flipped within its range."""
    info = metric_info(metric)
    if info is None or info.higher_is_better:
        return float(value)
    low, high = metric_range(metric)
    return low + high - float(value)


def verdicts(metric: str, values: Sequence[float], threshold: float) -> np.ndarray:
    """1 where the judge passes the item (pass_score >= threshold), else 0."""
    return np.array([int(pass_score(metric, v) >= threshold) for v in values], dtype=int)


def kappa(human: Sequence[int], judge: Sequence[int]) -> float | None:
    """Cohen's kappa (scikit-learn) of two 0/1 raters; None where it is undefined (both rate one class)."""
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(np.asarray(human, dtype=int), np.asarray(judge, dtype=int), labels=[0, 1])
    return None if math.isnan(value) else float(value)


def _kappa_rows(h: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cohen's kappa of each row pair of two (B, n) 0/1 arrays, NaN where undefined. The same formula as
    scikit-learn's (a test holds them equal), vectorized: the bootstrap needs thousands of them."""
    po = (h == j).mean(axis=1)
    ph, pj = h.mean(axis=1), j.mean(axis=1)
    pe = ph * pj + (1 - ph) * (1 - pj)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def agreement(human: Sequence[int], judge: Sequence[int], resamples: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> dict:
    """Agreement of a judge's 0/1 verdicts with people's on the same items: n, accuracy, Cohen's kappa
    with a percentile-bootstrap CI (resamples where kappa is undefined are left out and counted),
    confusion [[tn, fp], [fn, tp]] (rows: human fail/pass; columns: judge fail/pass) and base rates."""
    from sklearn.metrics import accuracy_score, confusion_matrix

    h, j = np.asarray(human, dtype=int), np.asarray(judge, dtype=int)
    n = len(h)
    if n == 0:
        return {"n": 0, "accuracy": None, "kappa": None, "kappa_ci": None, "confusion": [[0, 0], [0, 0]],
                "base_rates": {"human": None, "judge": None}, "undefined_resamples": 0}
    point = kappa(h, j)
    ci, undefined = None, 0
    if n > 1 and resamples > 0:
        idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
        boot = _kappa_rows(h[idx], j[idx])
        undefined = int(np.isnan(boot).sum())
        if undefined < resamples:
            tail = (1 - confidence) / 2 * 100
            ci = [round(float(np.nanpercentile(boot, tail)), 6), round(float(np.nanpercentile(boot, 100 - tail)), 6)]
    return {
        "n": n,
        "accuracy": round(float(accuracy_score(h, j)), 6),
        "kappa": None if point is None else round(point, 6),
        "kappa_ci": ci,
        "confusion": confusion_matrix(h, j, labels=[0, 1]).tolist(),
        "base_rates": {"human": round(float(h.mean()), 6), "judge": round(float(j.mean()), 6)},
        "undefined_resamples": undefined,
    }


def best_threshold(human: Sequence[int], scores: Sequence[float]) -> float:
    """The threshold on pass scores (pass at >= it) whose verdicts agree best with people: highest kappa,
    then highest accuracy, then nearest 0.5. Candidates are the observed scores. Its own kappa on the labels
    it was chosen on is optimistic: calibration reports the leave-one-out agreement (loo_verdicts)."""
    h = np.asarray(human, dtype=int)
    s = np.asarray(scores, dtype=float)
    candidates = np.unique(s)
    if len(candidates) == 0:
        return 0.5
    j = (s[None, :] >= candidates[:, None]).astype(int)
    k = np.nan_to_num(_kappa_rows(np.broadcast_to(h, j.shape), j), nan=-2.0)
    acc = (j == h[None, :]).mean(axis=1)
    order = sorted(range(len(candidates)), key=lambda i: (-round(k[i], 12), -acc[i], abs(candidates[i] - 0.5)))
    return float(candidates[order[0]])


def loo_verdicts(human: Sequence[int], scores: Sequence[float]) -> np.ndarray:
    """Each item's verdict at the best threshold chosen on the *other* items (leave-one-out), so the
    agreement of a continuous metric is not flattered by picking its threshold on the labels it is scored
    on (with one passing answer among 40, an in-sample threshold always separates it: kappa 1.0)."""
    h, s = np.asarray(human, dtype=int), np.asarray(scores, dtype=float)
    out = np.zeros(len(h), dtype=int)
    for i in range(len(h)):
        rest = np.arange(len(h)) != i
        out[i] = int(s[i] >= best_threshold(h[rest], s[rest]))
    return out


def eligibility(n: int, kappa_value: float | None, kappa_ci: Sequence[float] | None,
                config: CalibrationConfig, class_counts: Sequence[int] | None = None) -> dict:
    """Whether a judge may gate under gate.calibration, why, how many more labels it needs
    (`labels_needed`: to reach min_labels), and roughly how many labels in all would put the lower end of
    its kappa CI above min_kappa at the current kappa (`labels_for_ci`, CI width ~ 1/sqrt(n); None when
    more labels cannot help: kappa itself is under the bar)."""
    out: dict[str, Any] = {"may_gate": False, "labels_needed": max(0, config.min_labels - n), "labels_for_ci": None}
    if kappa_value is not None and kappa_value > config.min_kappa:
        low = kappa_ci[0] if kappa_ci else None
        if low is None:
            out["labels_for_ci"] = config.min_labels
        elif low >= config.min_kappa:
            out["labels_for_ci"] = n
        else:
            out["labels_for_ci"] = int(math.ceil(n * ((kappa_value - low) / (kappa_value - config.min_kappa)) ** 2))
    if n == 0:
        out["reason"] = "no human grades on answers this judge scored"
    elif n < config.min_labels:
        out["reason"] = (f"{n} labels < gate.calibration.min_labels {config.min_labels}: "
                         f"grade {config.min_labels - n} more answers")
    elif kappa_ci is not None and kappa_value is not None and kappa_ci[1] < config.min_kappa:
        out["reason"] = (f"kappa {kappa_value:.2f} [{kappa_ci[0]:.2f}, {kappa_ci[1]:.2f}] is wholly under "
                         f"gate.calibration.min_kappa {config.min_kappa}: the judge does not agree with people, and "
                         "more labels will not change that")
    elif class_counts is not None and min(class_counts) < config.min_class_labels:
        fails, passes = class_counts
        scarce = "pass" if passes < fails else "fail"
        out["reason"] = (f"only {min(class_counts)} '{scarce}' grade(s) among {n} labels < "
                         f"gate.calibration.min_class_labels {config.min_class_labels}: grade more answers people "
                         f"would {scarce}")
    elif kappa_value is None:
        out["reason"] = "kappa is undefined: the people's grades or the judge's verdicts hold one class only"
    elif kappa_value < config.min_kappa:
        out["reason"] = (f"kappa {kappa_value:.2f} < gate.calibration.min_kappa {config.min_kappa}: the judge does "
                         "not agree with people well enough to gate")
    else:
        out["may_gate"] = True
        out["reason"] = f"calibrated: kappa {kappa_value:.2f} on {n} labels (>= {config.min_kappa}, >= {config.min_labels})"
    return out


def label_next(items: Sequence[Mapping], thresholds: Mapping[str, float], limit: int = LABEL_NEXT) -> list[dict]:
    """The unlabelled items to grade next: where the verdict metrics disagree most (the share of the
    minority verdict among them), then the ones most metrics scored, then by qa_id.
    items: {qa_id, run_id, question, metrics: {name: value}} not yet graded."""
    ranked = []
    for item in items:
        votes = {m: int(pass_score(m, v) >= thresholds.get(m, 0.5)) for m, v in item["metrics"].items()
                 if m in VERDICTS}
        if not votes:
            continue
        passed = sum(votes.values())
        split = min(passed, len(votes) - passed) / len(votes)
        ranked.append({"qa_id": item["qa_id"], "run_id": item["run_id"], "question": item["question"],
                       "disagreement": round(split, 4), "passes": votes})
    ranked.sort(key=lambda r: (-r["disagreement"], -len(r["passes"]), r["qa_id"]))
    return ranked[:limit]


def ppi_estimates(labels: Sequence[float], labelled: Sequence[float], unlabelled: Sequence[float],
                  confidence: float = 0.95) -> dict:
    """The share of answers people would pass, three ways, each {estimate, ci, width}:
    `judge`, the plain judge estimate (mean verdict over every item, normal CI); `human`, people's labels
    alone (classical CI); `ppi`, prediction-powered (PPI++, ppi-python): the judge over every item,
    its bias corrected by the labelled ones. Valid when the labelled items are a random sample of the run."""
    from ppi_py import classical_mean_ci, ppi_mean_ci, ppi_mean_pointestimate

    y, yhat, rest = (np.asarray(a, dtype=float) for a in (labels, labelled, unlabelled))
    alpha = 1 - confidence
    out: dict[str, Any] = {"n_labelled": int(len(y)), "n_unlabelled": int(len(rest)), "confidence": confidence}
    every = np.concatenate([yhat, rest])
    if len(every):
        mean, se = float(every.mean()), float(every.std(ddof=1) / math.sqrt(len(every))) if len(every) > 1 else 0.0
        out["judge"] = _estimate(mean, (mean - _z(alpha) * se, mean + _z(alpha) * se))
    if len(y) >= 2:
        out["human"] = _estimate(float(y.mean()), classical_mean_ci(y, alpha=alpha))
    if len(y) >= 2 and len(rest) >= 2:
        point = ppi_mean_pointestimate(y, yhat, rest)
        out["ppi"] = _estimate(float(np.ravel(point)[0]), ppi_mean_ci(y, yhat, rest, alpha=alpha))
    return out


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def _estimate(point: float, ci) -> dict:
    """{estimate, ci, width} of a share: normal-approximation intervals can pass 0 or 1 (a judge passing 15
    of 18 printed [0.66, 1.01]); a share's interval is cut to [0, 1]."""
    low, high = (min(1.0, max(0.0, float(np.ravel(v)[0]))) for v in ci)
    return {"estimate": round(point, 6), "ci": [round(low, 6), round(high, 6)], "width": round(high - low, 6)}


# -- who the judge is -----------------------------------------------------------------------------------
def _sha(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
    return h.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def ragas_prompt_hash(metric: str) -> str | None:
    """sha256 of the source files of the ragas metric (its prompts and their examples live there), read
    without importing ragas; None when ragas is not installed."""
    spec = importlib.util.find_spec("ragas")
    if spec is None or not spec.submodule_search_locations or metric not in RAGAS_DIRS:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "metrics" / "collections" / RAGAS_DIRS[metric]
    files = sorted(folder.glob("*.py")) if folder.is_dir() else []
    return _sha(f.read_text(encoding="utf-8") for f in files) if files else None


def _check_code(metric: str) -> str:
    """sha256 of the code that decides a check: its scorer, and for grounded/degenerate the grounding module."""
    info = metric_info(metric)
    parts = [inspect.getsource(info.score)] if info and info.score else []
    if metric in ("grounded", "degenerate"):
        from ragloop.tasks import grounding

        parts.append(inspect.getsource(grounding))
    return _sha(parts)


def judge_identities(metrics: Iterable[str], eval_config, judge_model_id: str | None,
                     embedder_name: str | None, embedder_weights: str | None) -> dict[str, dict]:
    """metric -> who judges it, for the verdict-like and judged metrics among `metrics`: an LLM judge by
    provider, model id, ragas version and prompt hash; ragloop's checks by their parameters and code
    hash; similarity by its embedder. Anything here changing makes the metric's judge uncalibrated."""
    out = {}
    for metric in sorted(set(metrics)):
        info = metric_info(metric)
        if info is None or (metric not in VERDICTS and metric not in NOT_GRADED):
            continue
        if info.level == "judge":
            judge = getattr(eval_config, "judge", None)
            out[metric] = {"kind": "llm", "metric": metric, "provider": judge.provider if judge else None,
                           "model": judge_model_id, "ragas": _version("ragas"),
                           "prompt_hash": ragas_prompt_hash(metric),
                           "max_tokens": getattr(eval_config, "judge_max_tokens", None)}
        elif metric == "semantic_similarity":
            out[metric] = {"kind": "embedding", "metric": metric, "embedder": embedder_name,
                           "weights_sha256": embedder_weights, "ragas": _version("ragas")}
        elif metric == "rouge_l":
            out[metric] = {"kind": "overlap", "metric": metric, "ragas": _version("ragas")}
        else:
            params = {"min_grounding": eval_config.min_grounding} if metric in ("grounded", "degenerate") else \
                {"refuse_below": eval_config.refuse_below}
            out[metric] = {"kind": "check", "metric": metric, "params": params, "code": _check_code(metric)}
    return out


def judge_id(identity: Mapping) -> str:
    return canonical_hash(dict(identity))[:24]


# -- the lake side --------------------------------------------------------------------------------------
def answer_sha(answer: str | None) -> str:
    return hashlib.sha256((answer or "").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Grade:
    grade: str
    run_id: str
    event_id: str
    reviewer: str

    @property
    def passed(self) -> int:
        return HUMAN_PASS[self.grade]


def answer_grades(lake) -> dict[tuple[str, str], Grade]:
    """(qa_id, answer hash) -> the latest human grade of that answer to that question, from the answer
    grade events of every eval run: a grade follows its answer text into any run that gave the same answer."""
    events = sorted((e for e in lake.read_reviews().to_pylist() if e["queue"] == "answers" and e["action"] == "grade"),
                    key=lambda e: (e["at"], e["event_id"]))
    answers: dict[str, dict[str, str | None]] = {}
    out: dict[tuple[str, str], Grade] = {}
    for e in events:
        run = e["run_id"]
        if run not in answers:
            table = lake.read_eval_items(run)
            answers[run] = {r["qa_id"]: r["answer"] for r in table.to_pylist()} if table is not None else {}
        if e["item_id"] not in answers[run]:
            continue
        grade = json.loads(e["after"] or "{}").get("grade")
        if grade in HUMAN_PASS:
            out[(e["item_id"], answer_sha(answers[run][e["item_id"]]))] = Grade(grade, run, e["event_id"], e["reviewer"])
    return out


def eval_run_records(lake) -> list[dict]:
    """Finished eval runs, newest first: {run_id, golden_line, golden_set_id, lineage, confidence...}."""
    out = []
    for r in sorted(lake.read_runs().to_pylist(), key=lambda r: r["run_id"], reverse=True):
        if r["flow"] != "eval" or r["status"] not in ("ok", "partial", "gate_failed", "gate_inconclusive"):
            continue
        outputs, lineage = json.loads(r["outputs"] or "{}"), json.loads(r["lineage"] or "{}")
        out.append({"run_id": r["run_id"], "golden_line": outputs.get("golden_line") or lineage.get("golden_line"),
                    "golden_set_id": outputs.get("golden_set_id") or lineage.get("golden_set_id"), "lineage": lineage})
    return out


def run_items(lake, run_id: str) -> list[dict]:
    """An eval run's items as calibration reads them: {qa_id, run_id, question, answer, metrics}."""
    table = lake.read_eval_items(run_id)
    if table is None:
        return []
    return [{"qa_id": r["qa_id"], "run_id": run_id, "question": r["question"], "answer": r["answer"],
             "metrics": dict(r["metrics"] or [])} for r in table.to_pylist()]


def identities_of(record: Mapping, items: Sequence[Mapping]) -> dict[str, dict]:
    """The judges of a run: as its lineage recorded them (`judges`), else (a run from before calibration
    existed) rebuilt from its lineage with today's code, the provider unknown."""
    lineage = record["lineage"]
    if lineage.get("judges"):
        return dict(lineage["judges"])
    names = {m for i in items for m in i["metrics"]}
    models = lineage.get("models") or {}
    guardrail = (lineage.get("chain") or {}).get("guardrail") or {}
    settings = SimpleNamespace(judge=None, judge_max_tokens=None, min_grounding=guardrail.get("min_grounding"),
                               refuse_below=guardrail.get("refuse_below"))
    return judge_identities(names, settings, models.get("judge") or lineage.get("judge"), models.get("embedder"),
                            models.get("embedder_weights_sha256"))


def select_runs(lake, run: str | None, golden: str | None) -> tuple[list[dict], str]:
    """The eval runs to calibrate on, newest first, and what they are ('run X' / 'line L'): one run, or
    every run on a golden-set line (default: the chosen line). ConfigError when there are none."""
    records = eval_run_records(lake)
    if run:
        chosen = [r for r in records if r["run_id"] == run]
        if not chosen:
            raise ConfigError(f"--run {run}: no finished eval run with that id in {lake.uri} (see `ragloop runs --flow eval`)")
        return chosen, f"run {run}"
    from ragloop.tasks import promotion

    lines = promotion.Refs(lake).lines()
    line = lines.chosen if golden in (None, "latest") else golden
    chosen = [r for r in records if r["golden_line"] == line]
    if not chosen:
        raise ConfigError(f"--golden {golden or 'latest'}: no eval run on golden-set line {line!r} in {lake.uri} "
                          f"(lines with runs: {', '.join(sorted({str(r['golden_line']) for r in records})) or 'none'})")
    return chosen, f"line {line}"


class CalibrateSummary(CommandSummary):
    """What `calibrate` returns: per verdict-like metric, its judge's agreement with human answer grades
    and whether it may gate; which items to grade next."""

    scope: str = Field(description="what was calibrated on: 'run RUN_ID' or 'line LINE' (every eval run on it)")
    runs: list[str] = Field(description="the eval runs read, newest first (the newest defines the current judges)")
    items: int = Field(description="items of the newest run")
    graded: int = Field(description="items of the newest run with a human grade (by question and answer text)")
    labels: dict[str, int] = Field(description="{correct, partially_correct, incorrect}: grades used, any metric")
    requirements: dict[str, Any] = Field(description="gate.calibration: {min_labels, min_kappa, levels}")
    metrics: dict[str, dict[str, Any]] = Field(
        description="metric -> {judge_id, judge, kind (binary | continuous), n, labels, accuracy, kappa, kappa_ci, "
                    "confusion [[tn, fp], [fn, tp]] (rows human fail/pass, columns judge), base_rates {human, judge}, "
                    "threshold, may_gate, reason, labels_needed, labels_for_ci, estimates {judge, human, ppi: "
                    "{estimate, ci, width}, n_labelled, n_unlabelled}, other_judge_items, stored}")
    may_gate: list[str] = Field(description="metrics whose judge is calibrated (the gate uses them)")
    not_gated: dict[str, str] = Field(description="metric -> why its judge may not gate")
    label_next: list[dict[str, Any]] = Field(
        description="up to 10 ungraded items of the newest run where the metrics' verdicts disagree most: "
                    "{qa_id, run_id, question, disagreement, passes {metric: 0|1}}")
    warnings: list[str] = Field(description="what the figures cannot show (e.g. a judge that cannot judge)")


def metric_calibration(metric: str, pairs: Sequence[tuple[int, float]], config: CalibrationConfig,
                       resamples: int, confidence: float, seed: int) -> dict:
    """One metric's calibration from (human pass, metric value) pairs: verdicts at 0.5 (binary) or at the
    best threshold (continuous), agreement, and eligibility under `config`."""
    kind = VERDICTS[metric]
    human = [h for h, _ in pairs]
    scores = [pass_score(metric, v) for _, v in pairs]
    threshold = best_threshold(human, scores) if kind == "continuous" and pairs else 0.5
    if kind == "continuous" and len(pairs) > 2:
        judge = loo_verdicts(human, scores).tolist()  # the threshold's choice is part of what is measured
    else:
        judge = [int(s >= threshold) for s in scores]
    stats = agreement(human, judge, resamples, confidence, seed)
    counts = [human.count(0), human.count(1)]
    if min(counts) < CI_MIN_CLASS_LABELS:  # a bootstrap over 1-4 labels of a class is not an interval
        stats["kappa_ci"] = None
    return {"kind": kind, "threshold": round(threshold, 6),
            "threshold_selection": "leave-one-out" if kind == "continuous" and len(pairs) > 2 else "fixed", **stats,
            **eligibility(stats["n"], stats["kappa"], stats["kappa_ci"], config, counts)}


def calibrate_lake(lake, config: CalibrationConfig, run: str | None = None, golden: str | None = None, *,
                   resamples: int = 1000, confidence: float = 0.95, seed: int = 0, at=None) -> CalibrateSummary:
    """Calibrate every verdict-like metric of the newest selected run against the human grades: the current
    judge of each metric is the newest run's; items of other runs count when the same judge scored them
    (deduplicated by question and answer text). Each calibration with labels is stored in the lake with the
    judge's identity (idempotent: the same labels store nothing new)."""
    import pyarrow as pa

    from ragloop.tasks import schemas

    records, scope = select_runs(lake, run, golden)
    grades = answer_grades(lake)
    newest = records[0]
    runs = [(r, run_items(lake, r["run_id"])) for r in records]
    current = identities_of(newest, runs[0][1])
    metric_names = sorted({m for _, items in runs for i in items for m in i["metrics"]} & (set(VERDICTS) | set(NOT_GRADED)))
    results: dict[str, dict] = {}
    not_gated: dict[str, str] = {}
    used_labels: dict[tuple[str, str], Grade] = {}
    warnings_: list[str] = []
    now = at or schemas.utcnow()
    for metric in metric_names:
        identity = current.get(metric)
        if metric in NOT_GRADED or identity is None:
            not_gated[metric] = NOT_GRADED.get(metric, "the newest run has no judge identity for it")
            continue
        jid = judge_id(identity)
        pairs, keys, other = [], set(), 0
        for record, items in runs:
            same = judge_id(identities_of(record, items).get(metric) or {}) == jid
            for item in items:
                key = (item["qa_id"], answer_sha(item["answer"]))
                if metric not in item["metrics"] or key not in grades or key in keys:
                    continue
                if not same:
                    other += 1
                    continue
                keys.add(key)
                used_labels[key] = grades[key]
                pairs.append((grades[key].passed, item["metrics"][metric]))
        entry = {"judge_id": jid, "judge": identity,
                 "labels": _grade_counts(grades[k] for k in keys),
                 **metric_calibration(metric, pairs, config, resamples, confidence, seed),
                 "other_judge_items": other}
        newest_items = [i for i in runs[0][1] if metric in i["metrics"]]
        labelled = [(grades[k].passed, pass_score(metric, i["metrics"][metric]))
                    for i in newest_items if (k := (i["qa_id"], answer_sha(i["answer"]))) in grades]
        unlabelled = [pass_score(metric, i["metrics"][metric]) for i in newest_items
                      if (i["qa_id"], answer_sha(i["answer"])) not in grades]
        thr = entry["threshold"]
        entry["estimates"] = ppi_estimates([h for h, _ in labelled], [int(s >= thr) for _, s in labelled],
                                           [int(s >= thr) for s in unlabelled], confidence)
        entry["stored"] = False
        if entry["n"]:
            row = calibration_row(metric, entry, [r["run_id"] for r in records], now)
            entry["stored"] = lake.write_calibration(pa.Table.from_pylist([row], schema=schemas.CALIBRATIONS))
        if not entry["may_gate"]:
            not_gated[metric] = entry["reason"]
        if entry["n"] >= config.min_labels and entry["kappa"] is not None and abs(entry["kappa"]) < 0.2:
            warnings_.append(f"{metric}: kappa {entry['kappa']:.2f} on {entry['n']} labels: its judge agrees with "
                             "people no better than chance; it cannot judge these answers")
        results[metric] = entry
    thresholds = {m: e["threshold"] for m, e in results.items()}
    ungraded = [i for i in runs[0][1] if (i["qa_id"], answer_sha(i["answer"])) not in grades and i["answer"] is not None]
    graded = sum(1 for i in runs[0][1] if (i["qa_id"], answer_sha(i["answer"])) in grades)
    if not grades:
        warnings_.append("no human answer grades in this lake: grade answers in `ragloop review` or with "
                         "`ragloop review export --queue answers` + `ragloop review import`")
    return CalibrateSummary(
        status="ok", scope=scope, runs=[r["run_id"] for r in records], items=len(runs[0][1]), graded=graded,
        labels=_grade_counts(used_labels.values()),
        requirements={"min_labels": config.min_labels, "min_kappa": config.min_kappa, "levels": list(config.levels)},
        metrics=results, may_gate=sorted(m for m, e in results.items() if e["may_gate"]),
        not_gated=dict(sorted(not_gated.items())), label_next=label_next(ungraded, thresholds), warnings=warnings_)


def _grade_counts(grades: Iterable[Grade]) -> dict[str, int]:
    counts = {g: 0 for g in HUMAN_PASS}
    for g in grades:
        counts[g.grade] += 1
    return counts


def calibration_row(metric: str, entry: Mapping, run_ids: Sequence[str], at) -> dict:
    """The stored row of one metric's calibration (schemas.CALIBRATIONS)."""
    ci = entry["kappa_ci"] or [None, None]
    content = {"judge_id": entry["judge_id"], "metric": metric, "n": entry["n"], "labels": entry["labels"],
               "kappa": entry["kappa"], "ci": ci, "confusion": entry["confusion"], "threshold": entry["threshold"]}
    return {"calibration_id": canonical_hash(content)[:24], "judge_id": entry["judge_id"], "metric": metric,
            "judge": json.dumps(entry["judge"], sort_keys=True), "n": entry["n"], "labels": json.dumps(entry["labels"]),
            "accuracy": entry["accuracy"], "kappa": entry["kappa"], "kappa_low": ci[0], "kappa_high": ci[1],
            "confusion": json.dumps(entry["confusion"]), "base_rate_human": entry["base_rates"]["human"],
            "base_rate_judge": entry["base_rates"]["judge"], "threshold": entry["threshold"],
            "run_ids": list(run_ids), "calibrated_at": at}


def latest_calibrations(rows: Iterable[Mapping]) -> dict[str, dict]:
    """judge_id -> its newest stored calibration row."""
    out: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["calibrated_at"], r["calibration_id"])):
        out[row["judge_id"]] = dict(row)
    return out


def gate_calibration(metrics: Iterable[str], identities: Mapping[str, Mapping], stored: Mapping[str, Mapping],
                     config: CalibrationConfig) -> dict[str, dict]:
    """metric -> {gated, reason, judge_id, n, kappa, kappa_ci, threshold, calibrated_at} for the run's
    metrics whose level is held to gate.calibration: gated only when the stored calibration of the very
    judge that scored the run has enough labels and kappa (eligibility). Other metrics are not listed."""
    out = {}
    for metric in sorted(set(metrics)):
        info = metric_info(metric)
        if info is None or info.level not in config.levels:
            continue
        if metric in NOT_GRADED or metric not in VERDICTS:
            out[metric] = {"gated": False, "reason": NOT_GRADED.get(metric, "no human grade can check this metric")}
            continue
        identity = identities.get(metric)
        jid = judge_id(identity) if identity else None
        row = stored.get(jid) if jid else None
        if row is None:
            out[metric] = {"gated": False, "judge_id": jid,
                           "reason": "uncalibrated judge: no calibration of this judge (provider, model, prompts) "
                                     "against human grades; run `ragloop calibrate`"}
            continue
        ci = [row["kappa_low"], row["kappa_high"]] if row["kappa_low"] is not None else None
        verdict = eligibility(row["n"], row["kappa"], ci, config)
        out[metric] = {"gated": verdict["may_gate"], "reason": verdict["reason"], "judge_id": jid, "n": row["n"],
                       "kappa": row["kappa"], "kappa_ci": ci, "threshold": row["threshold"],
                       "calibrated_at": str(row["calibrated_at"])}
    return out


def run_estimates(rows: Sequence[Mapping], grades: Mapping[tuple[str, str], Grade], thresholds: Mapping[str, float],
                  confidence: float, min_labels: int = 2) -> dict[str, dict]:
    """metric -> ppi_estimates over one eval run's items for every verdict-like metric with at least
    `min_labels` graded items (grades matched by question and answer text); verdicts at the metric's
    calibrated threshold (0.5 when none)."""
    out = {}
    names = sorted({m for r in rows for m in dict(r["metrics"])} & set(VERDICTS))
    for metric in names:
        thr = thresholds.get(metric, 0.5)
        labelled, unlabelled = [], []
        for r in rows:
            value = dict(r["metrics"]).get(metric)
            if value is None:
                continue
            verdict = int(pass_score(metric, value) >= thr)
            grade = grades.get((r["qa_id"], answer_sha(r.get("answer"))))
            (labelled.append((grade.passed, verdict)) if grade else unlabelled.append(verdict))
        if len(labelled) >= min_labels:
            out[metric] = {"threshold": thr, **ppi_estimates([h for h, _ in labelled], [j for _, j in labelled],
                                                             unlabelled, confidence)}
    return out


def eval_judges(lake, metrics: Iterable[str], identities: Mapping[str, Mapping],
                config: CalibrationConfig) -> dict[str, dict]:
    """gate_calibration against the calibrations stored in the lake (the newest per judge)."""
    return gate_calibration(metrics, identities, latest_calibrations(lake.read_calibrations().to_pylist()), config)


def eval_estimates(lake, rows: Sequence[Mapping], identities: Mapping[str, Mapping],
                   confidence: float) -> dict[str, dict]:
    """run_estimates for an eval run's rows with the lake's human grades, each metric's verdict at the
    threshold of its judge's stored calibration (0.5 when none)."""
    grades = answer_grades(lake)
    if not grades:
        return {}
    stored = latest_calibrations(lake.read_calibrations().to_pylist())
    thresholds = {m: stored[judge_id(i)]["threshold"] for m, i in identities.items() if judge_id(i) in stored}
    return run_estimates(rows, grades, thresholds, confidence)
