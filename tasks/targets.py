"""Eval targets: the team's own RAG app answers the golden questions instead of the built-in chain, as a
Python callable or an HTTP service; its contexts are matched to the chunks of the table under test so
IR metrics work for it too (pure but for the imports, the HTTP calls, the reachability check and the catalog
read each docstring names).

The contract a target meets (README: Evaluating your own app):

- input: the question (str) and, if the callable takes it, `conversation_id` (the item's qa_id: one
  conversation per golden item). An HTTP target gets them through its request template.
- output: a `TargetAnswer` (or any object with the same attributes) or a dict
  `{"answer": str, "contexts": [str | {"text", "chunk_id"?, "doc_id"?, "score"?}], "trace"?: [step]}`,
  contexts best first; a trace step is `{"step", "input"?, "output"?, "latency_ms"?, "prompt_tokens"?,
  "completion_tokens"?, "error"?}`. Callables may be sync or async.
- a context whose chunk_id the table holds is taken as that chunk; any other is matched by its text:
  exactly, then normalized (Markdown markup, Unicode compatibility forms and whitespace ignored).
  One matching nothing stays in the ranking as `unmatched:<hash>` (it is a retrieved non-reference) and
  is counted.
- an exception, a timeout, an HTTP error left after retries, a body that is not JSON, a reply
  without its answer, or no contexts fail that item (status failed, the reason in `error`), never the run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import inspect
import json
import logging
import os
import re
import reprlib
import socket
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from ragloop.tasks import chain, http_retry
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.retrieval import Hit
from ragloop.tasks.registry import import_file
from ragloop.tasks.settings import ConfigError, EvalTarget, HTTPTarget, HTTPTargetResponse

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\{(question|conversation_id|qa_id)\}")
MATCHES = ("id", "exact", "normalized", "unmatched")  # how a context was tied to a chunk, best first


# -- what a target returns -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetContext:
    """One retrieved context as the app saw it; ids and score where the app knows them."""

    text: str
    chunk_id: str | None = None
    doc_id: str | None = None
    score: float | None = None  # the app's own score, higher is better; stored, never used for ranking


@dataclass(frozen=True)
class TargetAnswer:
    """What a Python target returns (a dict of the same keys works too): the answer, its contexts best
    first, and optionally the app's own trace steps."""

    answer: str
    contexts: Sequence[TargetContext | str | Mapping[str, Any]]
    trace: Sequence[Mapping[str, Any]] = ()


class TargetFailure(Exception):
    """One item's call failed; the message is the reason stored on the item."""


# -- config: identity, checks ------------------------------------------------------------------------------
def load_callable(spec: str) -> tuple[Callable, Path | None]:
    """(callable, its module's source file) for 'package.module:callable' or 'path/to/app.py:callable'
    (relative to the working directory). Raises ConfigError in one line naming the spec and the cause."""
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            module = import_file(path, "ragloop_target")
        else:
            module = importlib.import_module(module_name)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # the app's own import error, reported as the target's
        raise ConfigError(f"eval.target.python: cannot import {spec!r}: {type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"eval.target.python: {spec!r} is a {type(obj).__name__}, not a callable")
    source = getattr(module, "__file__", None)
    return obj, Path(source) if source else None


def missing_header_vars(http: HTTPTarget, environ: Mapping[str, str] | None = None) -> list[str]:
    """The env vars named by headers_env that are not set (empty counts as set)."""
    environ = os.environ if environ is None else environ
    return [var for var in http.headers_env.values() if var not in environ]


def check_target(config: EvalTarget, environ: Mapping[str, str] | None = None, reachable: bool = True) -> None:
    """The cheap checks before any work: a Python target imports; an HTTP target's header variables are
    set and (reachable) something accepts a TCP connection at its host and port (check_reachable).
    Raises ConfigError naming the field."""
    if config.python is not None:
        load_callable(config.python)
        return
    if missing := missing_header_vars(config.http, environ):
        raise ConfigError(f"eval.target.http.headers_env: env var(s) {', '.join(missing)} not set")
    if reachable:
        check_reachable(config.http.url, min(config.timeout_s, 5.0))


def check_reachable(url: str, timeout_s: float) -> None:
    """Something accepts a TCP connection at the URL's host and port within timeout_s seconds. Only a
    connection is opened and closed, no request is sent (a golden question reaching a live app is the
    eval's work, not the check's). Raises ConfigError naming eval.target.http.url: an app that is down
    fails the run in one line before any item is tried, instead of every item failing after its retries."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"eval.target.http.url: {exc}") from None
    host = parts.hostname or ""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError) or isinstance(exc, socket.timeout):
            reason = f"no answer within {timeout_s:g}s"
        raise ConfigError(f"eval.target.http.url: nothing accepts connections at {host}:{port} ({reason}); "
                          "is the app running?") from None


def file_sha256(path: Path | None) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path and path.is_file() else None


def target_identity(config: EvalTarget, source: Path | None = None) -> dict:
    """What the lineage and chain hash record of the target: python -> {kind, callable, code_sha256 (its
    module's source file)}; http -> {kind, url, method, config_hash (request, response, header names)}.
    The limits (concurrency, timeouts, retries) change no answer and are left out."""
    if config.python is not None:
        return {"kind": "python", "callable": config.python, "code_sha256": file_sha256(source)}
    http = config.http
    return {"kind": "http", "url": http.url, "method": http.method,
            "config_hash": canonical_hash(http.model_dump(mode="json"))}


def describe_target_chain(identity: Mapping, k: int, min_grounding: float, retrieval_only: bool) -> dict:
    """The chain under test when a target answers (its canonical hash is the chain_hash): the target's
    identity, the cutoff k the contexts are scored at and ragloop's own answer checks."""
    return {"target": dict(identity), "k": k,
            "grounding": None if retrieval_only else {"min_grounding": min_grounding}}


# -- replies ------------------------------------------------------------------------------------------------
def field_at(data: Any, path: str) -> Any:
    """The value at a dotted path ('data.answer', 'choices.0.message.content'; '' = data itself).
    Raises KeyError naming the first missing step."""
    value = data
    for step in [s for s in path.split(".") if s] if path else []:
        if isinstance(value, Mapping) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        else:
            raise KeyError(f"{path!r} (no {step!r})")
    return value


def render_request(template: Any, values: Mapping[str, Any]) -> Any:
    """The template with {question}, {conversation_id}, {qa_id} replaced in every string; a string that is
    exactly one placeholder takes the value whole (None stays null). Other braces are left as they are."""
    if isinstance(template, str):
        whole = PLACEHOLDER.fullmatch(template)
        if whole:
            return values.get(whole.group(1))
        return PLACEHOLDER.sub(lambda m: "" if values.get(m.group(1)) is None else str(values[m.group(1)]), template)
    if isinstance(template, Mapping):
        return {k: render_request(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render_request(v, values) for v in template]
    return template


def _optional(data: Any, path: str | None) -> Any:
    if path is None:
        return None
    try:
        return field_at(data, path)
    except KeyError:
        return None


def reply_from_json(data: Any, paths: HTTPTargetResponse) -> TargetAnswer:
    """A TargetAnswer from an HTTP target's JSON by the configured field paths. Raises TargetFailure when the
    answer or the contexts are missing or of the wrong type; ids, scores and the trace are optional."""
    try:
        answer = field_at(data, paths.answer)
    except KeyError as exc:
        raise TargetFailure(f"the reply has no answer at {exc.args[0]}") from None
    try:
        contexts = field_at(data, paths.contexts)
    except KeyError as exc:
        raise TargetFailure(f"the reply has no contexts at {exc.args[0]}") from None
    if not isinstance(contexts, list):
        raise TargetFailure(f"contexts at {paths.contexts!r} is a {type(contexts).__name__}, not a list")
    out = []
    for i, c in enumerate(contexts):
        if paths.text is None or isinstance(c, str):  # a bare string context is its own text
            text = c
        else:
            try:
                text = field_at(c, paths.text)
            except KeyError:
                raise TargetFailure(f"context {i} has no text at {paths.text!r}: it is {_shown(c)}") from None
        out.append({"text": text, "chunk_id": _optional(c, paths.chunk_id), "doc_id": _optional(c, paths.doc_id),
                    "score": _optional(c, paths.score)})
    trace = _optional(data, paths.trace)
    return coerce_reply({"answer": answer, "contexts": out, "trace": trace if isinstance(trace, list) else []})


def _shown(value: Any) -> str:
    """What a reply held instead of what was wanted, short enough for an item's error: 'null', 'an object
    with keys body, url', 'an int (42)'."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        keys = ", ".join(str(k) for k in list(value)[:6]) + (", ..." if len(value) > 6 else "")
        return f"an object with keys {keys}" if keys else "an empty object"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name} ({reprlib.repr(value)})"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TargetFailure(f"{what} is {_shown(value)}, not a string")
    return value


def _context(value: Any, i: int) -> TargetContext:
    if isinstance(value, str):
        return TargetContext(value)
    if not isinstance(value, Mapping) and not hasattr(value, "text"):
        raise TargetFailure(f"context {i} is {_shown(value)}, not a string or an object with a text")
    get = value.get if isinstance(value, Mapping) else (lambda name: getattr(value, name, None))
    if isinstance(value, Mapping) and "text" not in value:
        raise TargetFailure(f"context {i} has no text: it is {_shown(value)}")
    text = _text(get("text"), f"context {i} text")
    score = get("score")
    try:
        score = None if score is None else float(score)
    except (TypeError, ValueError):
        raise TargetFailure(f"context {i} score {score!r} is not a number") from None
    ids = [get(name) for name in ("chunk_id", "doc_id")]
    return TargetContext(text, *(None if v is None else str(v) for v in ids), score)


def coerce_reply(value: Any) -> TargetAnswer:
    """A TargetAnswer from what a target returned: a TargetAnswer, a dict, or an object with `answer` and
    `contexts` attributes. Raises TargetFailure for a missing or non-string answer, contexts that are not
    a list of texts or context dicts, or no contexts at all."""
    get = value.get if isinstance(value, Mapping) else (lambda name: getattr(value, name, None))
    answer = get("answer")
    if answer is None:
        raise TargetFailure("the reply has no answer")
    answer = _text(answer, "the answer")
    contexts = get("contexts")
    if contexts is None or isinstance(contexts, (str, bytes)) or not isinstance(contexts, Iterable):
        raise TargetFailure("the reply has no list of contexts")
    contexts = [_context(c, i) for i, c in enumerate(contexts)]
    if not contexts:
        raise TargetFailure("the reply has no contexts")
    trace = get("trace") or ()
    return TargetAnswer(answer, contexts, [t for t in trace if isinstance(t, Mapping) and t.get("step")])


# -- matching contexts to chunks ---------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark")


def normalize_text(text: str) -> str:
    """Text as a reader sees it: Markdown markup dropped (headings, emphasis, links keep their words, code
    its content), Unicode compatibility forms folded (NFKC) and whitespace collapsed to single spaces."""
    parts = []
    for token in _markdown().parse(unicodedata.normalize("NFKC", text)):
        if token.type == "inline":
            for child in token.children or []:
                if child.type in ("text", "code_inline"):
                    parts.append(child.content)
                elif child.type in ("softbreak", "hardbreak"):
                    parts.append(" ")
                elif child.type == "image":
                    parts.append(" ".join(c.content for c in child.children or []))
        elif token.type in ("fence", "code_block", "html_block"):
            parts.append(token.content)
        if token.nesting == -1 or token.type in ("fence", "code_block", "html_block", "hr"):
            parts.append(" ")
    return " ".join("".join(parts).split())


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class ChunkCatalog:
    """The chunks of the table under test, findable by id, by exact text and by normalized text. Texts are
    kept as digests; the normalized index is built on the first context exact text does not match."""

    def __init__(self, rows: Iterable[Mapping[str, str]]) -> None:
        rows = sorted(rows, key=lambda r: r["chunk_id"])  # equal texts resolve to the smallest chunk_id
        self.doc_of = {r["chunk_id"]: r["doc_id"] for r in rows}
        self._texts = [(r["chunk_id"], r["text"]) for r in rows]
        self.by_text: dict[bytes, list[str]] = {}
        for chunk_id, text in self._texts:
            self.by_text.setdefault(_digest(text), []).append(chunk_id)
        self._by_normalized: dict[bytes, list[str]] | None = None

    @property
    def by_normalized(self) -> dict[bytes, list[str]]:
        if self._by_normalized is None:
            self._by_normalized = {}
            for chunk_id, text in self._texts:
                self._by_normalized.setdefault(_digest(normalize_text(text)), []).append(chunk_id)
            self._texts = []
        return self._by_normalized

    def _pick(self, chunk_ids: list[str], doc_id: str | None) -> str:
        return next((c for c in chunk_ids if self.doc_of[c] == doc_id), chunk_ids[0])

    def match(self, context: TargetContext) -> tuple[str | None, str]:
        """(chunk_id or None, how): `id` (the app's chunk_id is in the table), `exact`, `normalized`
        or `unmatched`. Among chunks of equal text, one of the app's doc_id wins, else the smallest id."""
        if context.chunk_id is not None and context.chunk_id in self.doc_of:
            return context.chunk_id, "id"
        exact = self.by_text.get(_digest(context.text))
        if exact:
            return self._pick(exact, context.doc_id), "exact"
        normalized = self.by_normalized.get(_digest(normalize_text(context.text)))
        if normalized:
            return self._pick(normalized, context.doc_id), "normalized"
        return None, "unmatched"


def read_catalog(retriever) -> ChunkCatalog:
    """The catalog of the retriever's table version (reads chunk_id, doc_id and text of every chunk)."""
    rows = retriever.table.search().select(["chunk_id", "doc_id", "text"]).limit(None).to_arrow().to_pylist()
    return ChunkCatalog(rows)


def match_contexts(contexts: Sequence[TargetContext], catalog: ChunkCatalog) -> tuple[list[Hit], list[str]]:
    """The contexts as ranked hits, in the app's order, and how each was matched (MATCHES). An unmatched
    context keeps its rank as chunk `unmatched:<sha256 of its text, 12 hex>` and, without a doc_id of its
    own, document of the same id: a retrieved non-reference, never dropped."""
    hits, how = [], []
    for context in contexts:
        chunk_id, kind = catalog.match(context)
        if chunk_id is None:
            chunk_id = "unmatched:" + hashlib.sha256(context.text.encode("utf-8")).hexdigest()[:12]
            doc_id = context.doc_id or chunk_id
        else:
            doc_id = catalog.doc_of[chunk_id]
        hits.append(Hit(chunk_id, doc_id, context.text, context.score))
        how.append(kind)
    return hits, how


def context_counts(matches: Iterable[Sequence[str]]) -> dict[str, int]:
    """{total, id, exact, normalized, unmatched}: contexts by how they were matched, over all items."""
    counts = Counter(kind for item in matches for kind in item)
    return {"total": sum(counts.values()), **{kind: counts.get(kind, 0) for kind in MATCHES}}


def target_line(identity: Mapping[str, Any], counts: Mapping[str, int] | None) -> str:
    """The summary's line about the target and its contexts, e.g. 'target python examples.own_app.app:answer:
    12 contexts, 11 matched to chunks (id 0, exact 10, normalized 1), 1 unmatched'."""
    name = identity.get("callable") or identity.get("url")
    counts = dict(counts or context_counts([]))
    matched = counts["total"] - counts["unmatched"]
    return (f"target {identity.get('kind')} {name}: {counts['total']} contexts, {matched} matched to chunks "
            f"(id {counts['id']}, exact {counts['exact']}, normalized {counts['normalized']}), "
            f"{counts['unmatched']} unmatched")


# -- calling the target ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One item's call: the reply or the reason it failed, and its latency (ms; queueing excluded)."""

    reply: TargetAnswer | None
    error: str | None
    latency_ms: float


def _takes_conversation_id(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "conversation_id" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


async def _call_python(fn: Callable, question: str, qa_id: str, config: EvalTarget, pool, semaphore) -> Any:
    kwargs = {"conversation_id": qa_id} if _takes_conversation_id(fn) else {}
    async with semaphore:
        start = time.perf_counter()
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
            value = await asyncio.wait_for(fn(question, **kwargs), config.timeout_s)
        else:
            loop = asyncio.get_running_loop()
            value = await asyncio.wait_for(loop.run_in_executor(pool, lambda: fn(question, **kwargs)), config.timeout_s)
            if inspect.isawaitable(value):
                value = await asyncio.wait_for(value, config.timeout_s)
        return value, (time.perf_counter() - start) * 1000


def _redact(text: str, http: HTTPTarget) -> str:
    for var in http.headers_env.values():
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text


async def _call_http(client, semaphore, question: str, qa_id: str, config: EvalTarget) -> tuple[Any, float]:
    http = config.http
    body = render_request(http.request, {"question": question, "conversation_id": qa_id, "qa_id": qa_id})
    request = {"json": body} if http.method == "POST" else {"params": body}
    policy = http_retry.RetryPolicy(config.timeout_s, config.max_retries, config.backoff_s)
    headers = lambda: {name: os.environ.get(var, "") for name, var in http.headers_env.items()}  # noqa: E731
    try:
        resp, latency_ms = await http_retry.send(client, semaphore, http.method, http.url, policy, headers=headers,
                                                 **request)
    except http_retry.GaveUp as exc:
        raise TargetFailure(str(exc)) from None
    if resp.status_code >= 400:
        raise TargetFailure(f"{http.url} answered HTTP {resp.status_code}: {_redact(resp.text[:200], http)}")
    try:
        return resp.json(), latency_ms
    except ValueError:
        raise TargetFailure(f"{http.url} answered with a body that is not JSON ({resp.text[:80]!r})") from None


def call_target(config: EvalTarget, fn: Callable | None, items: Sequence[Mapping],
                on_done: Callable[[], None] | None = None) -> list[Call]:
    """Ask the target every item's question, at most config.concurrency at a time; one Call per item, in
    item order. on_done() once per item as it finishes (any thread). A sync callable runs on a thread of its
    own pool; past timeout_s its item fails and the thread is left to finish (it cannot be stopped)."""
    import httpx


    async def run() -> list[Call]:
        semaphore = asyncio.Semaphore(config.concurrency)
        pool = concurrent.futures.ThreadPoolExecutor(config.concurrency, thread_name_prefix="ragloop-target")
        limits = httpx.Limits(max_connections=config.concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(config.timeout_s), limits=limits) as client:

            async def one(item) -> Call:
                start = time.perf_counter()
                try:
                    if fn is not None:
                        value, latency_ms = await _call_python(fn, item["question"], item["qa_id"], config, pool, semaphore)
                        reply = coerce_reply(value)
                    else:
                        value, latency_ms = await _call_http(client, semaphore, item["question"], item["qa_id"], config)
                        reply = reply_from_json(value, config.http.response)
                    return Call(reply, None, latency_ms)
                except TargetFailure as exc:
                    return Call(None, str(exc), (time.perf_counter() - start) * 1000)
                except (asyncio.TimeoutError, TimeoutError):
                    return Call(None, f"timed out after {config.timeout_s:g}s", (time.perf_counter() - start) * 1000)
                except Exception as exc:  # the app's own error fails its item, never the run
                    return Call(None, f"{type(exc).__name__}: {exc}", (time.perf_counter() - start) * 1000)
                finally:
                    if on_done is not None:
                        on_done()

            try:
                return list(await asyncio.gather(*(one(item) for item in items)))
            finally:
                pool.shutdown(wait=False, cancel_futures=True)

    return http_retry.run_sync(run)


# -- from calls to the chain's results ---------------------------------------------------------------------------
def _trace_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _number(value: Any, kind=float):
    try:
        return None if value is None else kind(value)
    except (TypeError, ValueError):
        return None


def app_trace(qa_id: str, step: Mapping[str, Any]) -> dict:
    """A trace row of the app's own step, beside ragloop's: step `target:<its step>`."""
    return chain.trace(qa_id, f"target:{step['step']}", _trace_text(step.get("input")) or "",
                       _trace_text(step.get("output")), _number(step.get("latency_ms")) or 0.0,
                       _number(step.get("prompt_tokens"), int), _number(step.get("completion_tokens"), int),
                       _trace_text(step.get("error")))


@dataclass
class TargetResults:
    """The chain results of a target's run, and how each item's contexts were matched (qa_id -> MATCHES)."""

    results: list[chain.ChainResult]
    matches: dict[str, list[str]] = field(default_factory=dict)


def target_results(items: Sequence[Mapping], calls: Sequence[Call], catalog: ChunkCatalog, min_grounding: float,
                   retrieval_only: bool) -> TargetResults:
    """One ChainResult per item, as the built-in chain's: the matched contexts as hits, the answer with
    ragloop's refusal and grounding checks (none when retrieval-only), and the traces `target` (the call),
    `match_contexts`, the app's own steps and `grounding`. A failed call, or a reply without contexts, is
    an item with no ranking (retrieval_failed) and its error."""
    out = TargetResults([])
    for item, call in zip(items, calls):
        qa_id, question = item["qa_id"], item["question"]
        result = chain.ChainResult(qa_id=qa_id, query=question, hits=[])
        result.traces.append(chain.trace(qa_id, "target", question, call.reply.answer if call.reply else None,
                                         call.latency_ms, error=call.error))
        if call.reply is None:
            result.error, result.retrieval_failed = f"target: {call.error}", True
            out.results.append(result)
            continue
        result.hits, how = match_contexts(call.reply.contexts, catalog)
        out.matches[qa_id] = how
        counts = Counter(how)
        result.traces.append(chain.trace(qa_id, "match_contexts", ",".join(h.chunk_id for h in result.hits),
                                         " ".join(f"{kind}={counts.get(kind, 0)}" for kind in MATCHES), 0.0))
        result.traces.extend(app_trace(qa_id, step) for step in call.reply.trace)
        if not retrieval_only:
            result.answer = call.reply.answer.strip()
            result.refused = chain.is_refusal(result.answer)
            if result.answer and not result.refused:
                chain.check_answer(result, question, min_grounding)
        out.results.append(result)
    return out


# -- the prepared target -------------------------------------------------------------------------------------------
@dataclass
class Target:
    """A target ready to run: its config, identity, callable (Python targets), the catalog its contexts are
    matched against, and the context counts of the last run (for the summary)."""

    config: EvalTarget
    identity: dict
    fn: Callable | None
    catalog: ChunkCatalog
    counts: dict[str, int] | None = None

    @property
    def reusable(self) -> bool:
        """Whether a stored run can stand for a new one: a Python target's code is hashed; an HTTP
        service can change behind its URL, so it is always asked again."""
        return self.identity["kind"] == "python"

    def run(self, items: Sequence[Mapping], min_grounding: float, retrieval_only: bool,
            on_done: Callable[[], None] | None = None) -> list[chain.ChainResult]:
        """Ask, match and check every item (call_target, target_results); records the context counts."""
        done = target_results(items, call_target(self.config, self.fn, items, on_done), self.catalog,
                              min_grounding, retrieval_only)
        self.counts = context_counts(done.matches.values())
        return done.results

    def summary(self) -> dict:
        """{target: identity, contexts: counts} for the eval summary."""
        return {"target": dict(self.identity), "contexts": dict(self.counts or context_counts([]))}


def prepare_target(config: EvalTarget, retriever) -> Target:
    """Check and load the target (check_target: import, env vars; reachability is the CLI pre-flight's, so a
    flow run against an app that went down fails its items, each saying why) and read the table's catalog. Raises
    ConfigError."""
    check_target(config, reachable=False)
    fn, source = load_callable(config.python) if config.python is not None else (None, None)
    return Target(config, target_identity(config, source), fn, read_catalog(retriever))
