"""What each eval metric means, declared once (pure): direction, range, level, and for some a per-item scorer.

The gate (tasks/gating.py), the monitor (tasks/monitoring.py) and the report (tasks/reporting.py) read
METRIC_INFO instead of assuming every metric is higher-is-better in [0, 1]. Metrics with a cutoff
(`ndcg@10`, `chunk_hit@5`) are declared once under their base name (`ndcg`, `chunk_hit`).

IR metrics (tasks/ir_metrics.py) and ragas metrics (tasks/ragas_metrics.py) are computed where they are
and only declared here; a metric with a `score` function is computed per item by `scored_metrics`
(the eval flow calls it for every item), so a new check of the chain's result is one function here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from ragloop.tasks.question_types import must_refuse
from ragloop.tasks.registry import Registry

Level = Literal["doc", "chunk", "answer", "judge"]  # retrieval by document / by chunk, the answer, an LLM judge
Scorer = Callable[[Mapping, Any], "float | None"]  # (golden item, chain.ChainResult) -> value, None = not applicable


@dataclass(frozen=True)
class MetricInfo:
    """One metric: `better` says which way is good ("lower": a rise is the drop the gate and the monitor
    look for), `range` its possible values (the report's plot axes), `level` what it scores, and
    `score` the per-item scorer for metrics computed by scored_metrics (None: computed elsewhere)."""

    name: str
    level: Level
    better: Literal["higher", "lower"] = "higher"
    range: tuple[float, float] = (0.0, 1.0)
    description: str = ""
    score: Scorer | None = None

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"metric {self.name!r}: better must be 'higher' or 'lower', not {self.better!r}")
        if not self.range[0] < self.range[1]:
            raise ValueError(f"metric {self.name!r}: range {self.range} must be (low, high) with low < high")

    @property
    def higher_is_better(self) -> bool:
        return self.better == "higher"


METRIC_INFO: Registry[MetricInfo] = Registry("metric")


def base_name(name: str) -> str:
    """The name a metric is declared under: its cutoff dropped (`ndcg@10` -> `ndcg`)."""
    return name.split("@", 1)[0]


def metric_info(name: str) -> MetricInfo | None:
    """The declaration of a metric as reported (`ndcg@10`, `chunk_mrr@5`, `faithfulness`), or None for an
    undeclared one."""
    return METRIC_INFO.get(base_name(name))


def higher_is_better(name: str) -> bool:
    """The metric's direction; an undeclared metric (e.g. a floor on a name no run reports) counts as
    higher-is-better."""
    info = metric_info(name)
    return info.higher_is_better if info else True


def metric_range(name: str) -> tuple[float, float]:
    """The metric's declared range; (0, 1) for an undeclared one."""
    info = metric_info(name)
    return info.range if info else (0.0, 1.0)


def register_metric(name: str, *, level: Level, better: Literal["higher", "lower"] = "higher",
                    range: tuple[float, float] = (0.0, 1.0), description: str = "", replace: bool = False):
    """Decorator: declare metric `name` and score it per item with the decorated function
    `(golden item, chain result) -> float | None` (None when the metric does not apply to the item).
    ValueError if the name is taken and not `replace`."""
    def wrap(score: Scorer) -> Scorer:
        METRIC_INFO.register(name, MetricInfo(name, level, better, range, description or (score.__doc__ or "").strip(),
                                              score), replace=replace)
        return score

    return wrap


def scored_metrics(item: Mapping, result: Any) -> dict[str, float]:
    """Every metric with a scorer that applies to the item, in registration order.

    Raises ValueError when a scorer returns NaN or a value outside its metric's declared range (a bug
    in the scorer: it must not pass as a score)."""
    out = {}
    for info in METRIC_INFO.values():
        if info.score is None:
            continue
        value = info.score(item, result)
        if value is None:
            continue
        value = float(value)
        if math.isnan(value) or not info.range[0] <= value <= info.range[1]:
            raise ValueError(f"metric {info.name}: scorer returned {value}, outside its range {info.range}")
        out[info.name] = value
    return out


# -- declared here, computed elsewhere ------------------------------------------------------------------
for _base, _what in (("hit", "a relevant one in the top k"), ("recall", "share of the relevant ones in the top k"),
                     ("mrr", "1 / rank of the first relevant one"), ("ndcg", "graded ranking quality of the top k")):
    METRIC_INFO.register(_base, MetricInfo(_base, "doc", description=f"documents: {_what} (trec_eval)"))
    METRIC_INFO.register(f"chunk_{_base}", MetricInfo(f"chunk_{_base}", "chunk", description=f"chunks: {_what} (trec_eval)"))
for _name, _level, _what in (
    ("id_context_precision", "chunk", "share of the retrieved chunks that are references (ragas)"),
    ("id_context_recall", "chunk", "share of the reference chunks retrieved (ragas)"),
    ("rouge_l", "answer", "ROUGE-L F1 of the answer against the reference answer"),
    ("semantic_similarity", "answer", "embedder cosine of the answer and the reference answer"),
    ("faithfulness", "judge", "share of the answer's claims its contexts support"),
    ("answer_relevancy", "judge", "how well the answer addresses the question"),
    ("context_precision", "judge", "ranking of the contexts that bear on the reference"),
    ("context_recall", "judge", "share of the reference's claims the contexts hold"),
    ("factual_correctness", "judge", "F1 of the answer's claims against the reference's"),
):
    METRIC_INFO.register(_name, MetricInfo(_name, _level, description=_what))


# -- scored here: checks of the chain's answer that need no judge, 0/1 per item ------------------------
# None when no answer step ran (retrieval-only) or it failed: nothing to score.
@register_metric("refusal_correct", level="answer")
def refusal_correct(item: Mapping, result: Any) -> float | None:
    """Refused exactly when the item must be refused (all items)."""
    return None if result.refused is None else float(result.refused == must_refuse(item["qa_type"]))


@register_metric("refusal_recall", level="answer")
def refusal_recall(item: Mapping, result: Any) -> float | None:
    """Refused, on must-refuse items only (a chain that answers everything scores 0)."""
    return None if result.refused is None or not must_refuse(item["qa_type"]) else float(result.refused)


@register_metric("false_refusal", level="answer", better="lower")
def false_refusal(item: Mapping, result: Any) -> float | None:
    """Refused, on answerable items only."""
    return None if result.refused is None or must_refuse(item["qa_type"]) else float(result.refused)


@register_metric("grounded", level="answer")
def grounded(item: Mapping, result: Any) -> float | None:
    """An answered item's answer is mostly made of its contexts' words."""
    return None if result.refused is None or result.refused or result.grounded is None else float(result.grounded)


@register_metric("degenerate", level="answer", better="lower")
def degenerate(item: Mapping, result: Any) -> float | None:
    """An answered item's answer is garbage (loop, echo, placeholder, truncated, passage spam)."""
    return None if result.refused is None or result.refused or result.grounded is None else float(result.degenerate is not None)
