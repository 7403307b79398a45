"""LLM calls on workers (runner.kind dask, issue 22): an LLM whose completions run in small batches through a
map the flow supplies (Prefect tasks on its DaskTaskRunner), and the worker side that answers a batch with
the real model, built once per process from its picklable config. Pure wiring, no prefect import."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from pydantic import BaseModel

from ragloop.tasks.llm import (
    LLM, Completion, LLMUnavailable, Messages, OnDone, StructuredResult, load_llm, structured_rounds,
)
from ragloop.tasks.settings import LLMConfig

log = logging.getLogger(__name__)

# Conversations per task: small enough that a few batches per worker keep every worker busy (a local GGUF
# answers one at a time, ~2-5 s each), big enough that a task's overhead (~50 ms) stays negligible and an
# endpoint's own concurrency (llm.concurrency) works within a batch.
ITEMS_PER_TASK = 4


@dataclass(frozen=True)
class LLMJob:
    """What a worker needs to build the model: its config and the factory (providers' llm: pickled by name
    when a module-level function, by value when a test's closure)."""

    config: LLMConfig
    factory: Callable[[LLMConfig], LLM] = load_llm


@dataclass(frozen=True)
class Batch:
    """One task's conversations and the completion params they share (temperature, max_tokens, ...)."""

    conversations: list[Messages]
    params: dict[str, Any]


BatchMap = Callable[[Iterable[Batch], LLMJob], Iterator[tuple[Batch, list]]]
"""batches -> (batch, complete_batch(batch, job)'s result) in batch order (flows.runners.llm_map)."""

_WORKER_LLMS: dict[tuple, LLM] = {}  # per process: (factory, config) -> the model, loaded once


def worker_llm(job: LLMJob) -> LLM:
    """The job's model, built once per process (a Dask worker loads a GGUF on its first batch and keeps it)."""
    factory = job.factory
    key = (getattr(factory, "__module__", None), getattr(factory, "__qualname__", repr(factory)), job.config)
    if key not in _WORKER_LLMS:
        _WORKER_LLMS[key] = factory(job.config)
    return _WORKER_LLMS[key]


def complete_batch(batch: Batch, job: LLMJob) -> list[Completion | Exception]:
    """The batch's completions in order, by the job's model in this process; a failed request is its LLMError
    (a value, so one bad item fails alone); anything else raises (the task is retried, then the run fails,
    as a local call would). Reads and writes nothing: a retried or duplicated batch changes nothing."""
    return worker_llm(job).complete_many(batch.conversations, **batch.params)


def batches(conversations: Sequence[Messages], params: dict[str, Any], size: int = ITEMS_PER_TASK) -> list[Batch]:
    """The conversations in consecutive batches of `size` (the last may be smaller), each with the params."""
    return [Batch(list(conversations[i:i + size]), dict(params)) for i in range(0, len(conversations), size)]


class RemoteLLM:
    """An LLM (tasks.llm.LLM) whose completions run on workers through `remote`; what needs no model run
    (model_id, context_window, count_tokens, preflight) is asked of `local`, the same model built in this
    process (a GGUF then loads here too, for its tokenizer, when a prompt is measured).

    The LLM call cache stays in front of it (tasks.llm_cache.CachedLLM wraps a RemoteLLM), so a cache hit
    never reaches a worker. Results are the local model's for the same messages and params: a model whose
    reply depends only on them gives the local runner's answers."""

    def __init__(self, local: LLM, job: LLMJob, remote: BatchMap, items_per_task: int = ITEMS_PER_TASK) -> None:
        self.local, self.job, self.remote, self.items_per_task = local, job, remote, items_per_task

    def __repr__(self) -> str:
        return f"RemoteLLM({self.local!r}, {self.items_per_task} per task)"

    @property
    def model_id(self) -> str:
        return self.local.model_id

    @property
    def context_window(self) -> int:
        return self.local.context_window

    def count_tokens(self, text: str) -> int:
        return self.local.count_tokens(text)

    def preflight(self, required_context_tokens: int) -> dict[str, Any]:
        return self.local.preflight(required_context_tokens)

    def complete(self, messages: Messages, **params: Any) -> Completion:
        """One completion on a worker; raises its LLMError."""
        result = self.complete_many([messages], **params)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def complete_many(self, messages_list: Sequence[Messages], *, on_done: OnDone | None = None,
                      **params: Any) -> list[Completion | Exception]:
        """One completion per conversation, in input order, computed on workers ITEMS_PER_TASK at a time; a
        failed request is its LLMError. Once a batch reports the endpoint down (LLMUnavailable), no further
        batch is sent: the rest fail fast as skipped. on_done() once per conversation, as its batch returns."""
        outage: list[LLMUnavailable] = []

        def to_send() -> Iterator[Batch]:
            for batch in batches(messages_list, params, self.items_per_task):
                if outage:
                    return
                yield batch

        out: list[Completion | Exception] = []
        for _, results in self.remote(to_send(), self.job):
            for result in results:
                out.append(result)
                if isinstance(result, LLMUnavailable) and not outage:
                    outage.append(result)
                if on_done is not None:
                    on_done()
        for _ in range(len(messages_list) - len(out)):
            out.append(LLMUnavailable(f"skipped: {outage[0]}"))
            if on_done is not None:
                on_done()
        return out

    def structured(self, messages: Messages, output_model: type[BaseModel], *, max_repairs: int = 2,
                   **params: Any) -> StructuredResult:
        """Ask for JSON, repair and validate it, re-asking with the error up to max_repairs times."""
        return self.structured_many([messages], output_model, max_repairs=max_repairs, **params)[0]

    def structured_many(self, messages_list: Sequence[Messages], output_model: type[BaseModel], *,
                        max_repairs: int = 2, on_done: OnDone | None = None, **params: Any) -> list[StructuredResult]:
        """structured() per conversation, in input order, in rounds: every conversation's first ask on the
        workers at once, then the re-asks of those whose reply did not parse. A rejected request is the item's
        error; an outage or config error raises (as the local models do)."""
        return structured_rounds(self.complete_many, messages_list, output_model, max_repairs, on_done, params)


def on_workers(llm: LLM | None, config: LLMConfig, factory: Callable[[LLMConfig], LLM],
               remote: BatchMap | None) -> LLM | None:
    """`llm` as a RemoteLLM whose calls run through `remote` (the Dask runner), or `llm` itself when there is
    no remote map (the local runner) or no model."""
    if llm is None or remote is None:
        return llm
    return RemoteLLM(llm, LLMJob(config, factory), remote)
