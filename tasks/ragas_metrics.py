"""Per-item ragas metrics: non-LLM ones always, LLM-judged ones when a judge is configured (I/O via
the embedder and LLM interfaces). A judgment that raises or yields NaN is a failure, never a score."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ragloop.tasks.question_types import must_refuse

log = logging.getLogger(__name__)

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")  # read once, at ragas' first import

NON_LLM = ("id_context_precision", "id_context_recall", "rouge_l", "semantic_similarity")
JUDGED = ("faithfulness", "answer_relevancy", "context_precision", "context_recall", "factual_correctness")


class JudgeError(RuntimeError):
    """The judge's reply could not be turned into the metric's structure (after repair and re-ask)."""


@dataclass
class ItemScores:
    metrics: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # metric -> why its judgment failed


def _embeddings(encode: Callable[[list[str]], Any]):
    from ragas.embeddings.base import BaseRagasEmbedding

    class EncoderEmbeddings(BaseRagasEmbedding):
        """ragas' embedding interface over ragloop's embedder (unit vectors; cosine = dot)."""

        def __init__(self) -> None:
            super().__init__(cache=None)

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return encode([text])[0].astype(float).tolist()

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_text(text)

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return encode(list(texts)).astype(float).tolist()

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return self.embed_texts(texts)

    return EncoderEmbeddings()


def _judge(llm, max_tokens: int):
    from ragas.llms.base import InstructorBaseRagasLLM

    class Judge(InstructorBaseRagasLLM):
        """ragas' judge interface over ragloop's LLM: its structured() parses, repairs and re-asks."""

        def generate(self, prompt: str, response_model):
            result = llm.structured([{"role": "user", "content": prompt}], response_model,
                                    temperature=0.0, max_tokens=max_tokens)
            if result.value is None:
                raise JudgeError(f"{response_model.__name__}: {result.error}")
            return result.value

        async def agenerate(self, prompt: str, response_model):
            return await asyncio.to_thread(self.generate, prompt, response_model)

    return Judge()


class RagasScorer:
    """Builds the ragas metric objects once per run and scores items one by one."""

    def __init__(self, encode: Callable[[list[str]], Any], judge_llm=None, judge_max_tokens: int = 512,
                 judge_metrics: Sequence[str] = JUDGED) -> None:
        from ragas.metrics._context_precision import IDBasedContextPrecision
        from ragas.metrics._context_recall import IDBasedContextRecall
        from ragas.metrics.collections import RougeScore, SemanticSimilarity

        self.embeddings = _embeddings(encode)
        self.id_precision, self.id_recall = IDBasedContextPrecision(), IDBasedContextRecall()
        self.rouge = RougeScore(rouge_type="rougeL", mode="fmeasure")
        self.similarity = SemanticSimilarity(embeddings=self.embeddings)
        self.judged: dict[str, Any] = {}
        if judge_llm is not None:
            from ragas.metrics.collections import (
                AnswerRelevancy, ContextPrecisionWithReference, ContextRecall, FactualCorrectness, Faithfulness,
            )

            judge = _judge(judge_llm, judge_max_tokens)
            self.judged = {
                "faithfulness": Faithfulness(llm=judge),
                "answer_relevancy": AnswerRelevancy(llm=judge, embeddings=self.embeddings, strictness=1),
                "context_precision": ContextPrecisionWithReference(llm=judge),
                "context_recall": ContextRecall(llm=judge),
                "factual_correctness": FactualCorrectness(llm=judge, mode="f1"),
            }
            self.judged = {name: metric for name, metric in self.judged.items() if name in set(judge_metrics)}

    def score(self, item: Mapping, retrieved_ids: Sequence[str], contexts: Sequence[str],
              answer: str | None, refused: bool | None) -> ItemScores:
        """Metrics for one item. ID-based context metrics need reference chunk ids; answer metrics
        need an answer and a reference answer; judged ones need the judge and a non-refusal."""
        from ragas.dataset_schema import SingleTurnSample

        out = ItemScores()
        if item["reference_chunk_ids"] and retrieved_ids:
            sample = SingleTurnSample(retrieved_context_ids=list(retrieved_ids),
                                      reference_context_ids=list(item["reference_chunk_ids"]))
            out.metrics["id_context_precision"] = float(self.id_precision.single_turn_score(sample))
            out.metrics["id_context_recall"] = float(self.id_recall.single_turn_score(sample))
        if not answer or not item["reference_answer"] or must_refuse(item["qa_type"]):
            return out
        reference = item["reference_answer"]
        # A refusal of an answerable question is scored like any wrong answer (low overlap, low
        # similarity), so a prompt that refuses everything shows up as a drop, not as missing data.
        out.metrics["rouge_l"] = float(self.rouge.score(reference=reference, response=answer).value)
        out.metrics["semantic_similarity"] = float(self.similarity.score(reference=reference, response=answer).value)
        if refused:
            return out  # nothing for a judge to assess: no statements, no claims
        inputs = {
            "faithfulness": dict(user_input=item["question"], response=answer, retrieved_contexts=list(contexts)),
            "answer_relevancy": dict(user_input=item["question"], response=answer),
            "context_precision": dict(user_input=item["question"], reference=reference, retrieved_contexts=list(contexts)),
            "context_recall": dict(user_input=item["question"], retrieved_contexts=list(contexts), reference=reference),
            "factual_correctness": dict(response=answer, reference=reference),
        }
        for name, metric in self.judged.items():
            if not contexts and "retrieved_contexts" in inputs[name]:
                out.failed[name] = "no retrieved context to judge"
                continue
            try:
                value = metric.score(**inputs[name]).value
            except Exception as exc:  # noqa: BLE001 - every judge failure is recorded, whatever raised it
                out.failed[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            if value is None or (isinstance(value, float) and math.isnan(value)):
                out.failed[name] = "the judge produced nothing to score (NaN)"
            else:
                out.metrics[name] = float(value)
        return out
