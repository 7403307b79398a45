"""The RAG chain under test: optional query rewrite, retrieval, guardrail, answer; a trace row per
step (I/O through the Retriever and LLM interfaces)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ragloop.tasks import grounding
from ragloop.tasks.llm import LLM, Completion, OnDone
from ragloop.tasks.prompts import GeneratedQuestion, Prompt
from ragloop.tasks.retrieval import Hit, Retriever
from ragloop.tasks.settings import EvalConfig

REFUSAL_PATTERN = re.compile(r"\b(do(es)? not (say|mention|contain)|don't know|cannot answer|can't answer|no information)\b", re.I)


@dataclass
class ChainResult:
    qa_id: str
    query: str  # what retrieval searched for (the rewrite, if any)
    hits: list[Hit]
    answer: str | None = None
    refused: bool | None = None
    grounded: bool | None = None
    degenerate: str | None = None  # loop | passage_spam | placeholder | truncated | echo (None: a real answer)
    finish_reason: str | None = None
    relevance: float | None = None  # best question-context cosine (the guardrail's evidence)
    error: str | None = None
    retrieval_failed: bool = False  # no ranking at all: the item is failed and scored on nothing
    traces: list[dict] = field(default_factory=list)


def trace(qa_id: str, step: str, input: str, output: str | None, latency_ms: float,
          prompt_tokens: int | None = None, completion_tokens: int | None = None, error: str | None = None,
          cached: bool | None = None, original_latency_ms: float | None = None) -> dict:
    """A trace row (schemas.TRACES). An LLM step served from the LLM call cache has cached=True, the
    lookup's latency_ms and the original call's tokens and latency (original_latency_ms)."""
    return {"qa_id": qa_id, "step": step, "input": input, "output": output, "latency_ms": latency_ms,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "error": error,
            "cached": cached, "original_latency_ms": original_latency_ms}


def is_refusal(answer: str) -> bool:
    return answer.strip() == grounding.REFUSAL_ANSWER or bool(REFUSAL_PATTERN.search(answer))


def rewrite_queries(qa_ids: Sequence[str], questions: Sequence[str], prompt: Prompt, llm: LLM) -> tuple[list[str], list[dict]]:
    """Rewritten queries (the original where the rewrite failed, with the error in its trace)."""
    results = llm.structured_many([prompt.render(question=q) for q in questions], GeneratedQuestion, **prompt.params)
    queries, traces = [], []
    for qa_id, question, result in zip(qa_ids, questions, results):
        ok = result.value is not None and result.value.question.strip()
        queries.append(result.value.question.strip() if ok else question)
        traces.append(trace(qa_id, "rewrite", question, queries[-1], result.latency_ms, result.usage.prompt_tokens,
                            result.usage.completion_tokens, None if ok else (result.error or "empty rewrite"),
                            result.cached, result.original_latency_ms))
    return queries, traces


def guard(results: Sequence[ChainResult], questions: Sequence[str], encode, config: EvalConfig) -> None:
    """Relevance guardrail, before any answer is generated: a question whose best retrieved chunk is
    less similar than `refuse_below` is refused (no LLM call)."""
    for result, question in zip(results, questions):
        if result.retrieval_failed:
            continue
        start = time.perf_counter()
        if result.hits:
            vectors = encode([question] + [h.text for h in result.hits])
            result.relevance = float(np.max(vectors[1:] @ vectors[0]))
        else:
            result.relevance = -1.0
        if result.relevance < config.refuse_below:
            result.answer, result.refused = grounding.REFUSAL_ANSWER, True
        result.traces.append(trace(result.qa_id, "guardrail", question,
                                   f"relevance={result.relevance:.3f} " + ("refuse" if result.refused else "pass"),
                                   (time.perf_counter() - start) * 1000))


def answer(results: Sequence[ChainResult], questions: Sequence[str], prompt: Prompt, llm: LLM, config: EvalConfig,
           on_done: OnDone | None = None) -> None:
    """Generate answers for results the guardrail passed; flag answers not grounded in their context.
    A failed call leaves the item with its error (counted as failed, never dropped). on_done() once per
    answer call as it finishes (progress)."""
    todo = [(r, q) for r, q in zip(results, questions) if not r.refused and not r.retrieval_failed]
    conversations = [prompt.render(question=q, contexts=[h.text for h in r.hits]) for r, q in todo]
    params = {k: v for k, v in prompt.params.items() if k in ("temperature", "max_tokens", "seed", "frequency_penalty")}
    completions = llm.complete_many(conversations, on_done=on_done, **params) if conversations else []
    for (result, question), completion in zip(todo, completions):
        if isinstance(completion, Exception):
            result.error = f"answer: {type(completion).__name__}: {completion}"
            result.traces.append(trace(result.qa_id, "answer", question, None, 0.0, error=result.error))
            continue
        assert isinstance(completion, Completion)
        text = completion.text.strip()
        result.answer, result.finish_reason = text, completion.finish_reason
        result.refused = is_refusal(text)
        result.traces.append(trace(result.qa_id, "answer", question, text, completion.latency_ms,
                                   completion.usage.prompt_tokens, completion.usage.completion_tokens,
                                   None if text else "empty answer", completion.cached, completion.original_latency_ms))
        if not text:
            result.error = "answer: empty reply"
    for result, question in zip(results, questions):
        if result.answer and not result.refused:
            check_answer(result, question, config.min_grounding)


def check_answer(result: ChainResult, question: str, min_grounding: float) -> None:
    """Set result.degenerate and result.grounded, with a `grounding` trace. Grounded means: not
    degenerate (a loop, passage-number spam, a placeholder, cut off, or an echo of the question,
    whatever words it shares with the context), every number (with its unit) and name of the answer
    in the retrieved context, and at least `min_grounding` of its content words (any script) there."""
    context = grounding.joined(h.text for h in result.hits)
    result.degenerate = grounding.degenerate_reason(result.answer, question, context, result.finish_reason)
    made_up = grounding.unsupported_facts(result.answer, context)
    support = grounding.support(result.answer, context)
    result.grounded = result.degenerate is None and not made_up and support >= min_grounding
    verdict = ("grounded" if result.grounded else "ungrounded") + (f" degenerate={result.degenerate}" if result.degenerate else "")
    if made_up:
        verdict += " not_in_context=" + ",".join(f.text + (f" {f.unit}" if f.unit else "") for f in made_up[:5])
    result.traces.append(trace(result.qa_id, "grounding", result.answer, f"support={support:.3f} {verdict}", 0.0))


def run_retrieval(retriever: Retriever, qa_ids: Sequence[str], queries: Sequence[str], mode: str, k: int) -> list[ChainResult]:
    """One result per query; a query whose search failed carries `retrieval_failed` and its error
    (it fails alone: the later steps skip it, the run goes on)."""
    out = []
    for qa_id, query, (hits, latency_ms, error) in zip(qa_ids, queries, retriever.search_each(queries, mode, k)):
        result = ChainResult(qa_id=qa_id, query=query, hits=hits)
        if error:
            result.error, result.retrieval_failed = f"retrieve: {error}", True
        result.traces.append(trace(qa_id, "retrieve", query, None if error else ",".join(h.chunk_id for h in hits),
                                   latency_ms, error=error))
        out.append(result)
    return out
