"""The LLM call cache: replies stored in the lake under a content hash of the call, and an LLM wrapper
that answers from it (I/O through tasks.storage.Lake).

Key: sha256 of (CACHE_FORMAT, the model's identity, the rendered messages, the sampling parameters).
The identity is what the lineage records as the model: the provider and `model_id` (local: the GGUF
file's name and sha256; openai: the endpoint's model id) plus, for an endpoint, its base_url (two
servers may serve different weights under one id, e.g. llama-server's file name). Parameters:
temperature, max_tokens, frequency_penalty, the JSON schema and how it is sent (json_mode), and the
effective seed of a sampled call.

Policy (`cacheable`): a call at temperature 0 is cached; a sampled call only when seeded and
`llm.cache_sampled` is on. Errors (a request that raised) and empty replies are never stored. A hit
returns the original text, finish_reason and token counts; its latency is the lookup's (honest: no model
ran), with the model's first latency as `original_latency_ms`.

Storage: append-only Parquet parts under `llm_cache/` (schemas.LLM_CACHE), never rewritten in place.
New entries are buffered and published as one new part (temp + rename) every FLUSH_EVERY entries or
FLUSH_AFTER_S seconds and when the run ends, so a kill loses at most the unpublished buffer and never
leaves a half-written part; two runs writing at once write different parts (a key both computed is
stored twice; readers keep the first). One file per entry would be as safe, but thousands of small
files are slow to list and open (above all on an object store), while a few parts load in one read.
Parts accumulate (one per flush); opening the cache merges them into one when there are COMPACT_AT or
more (the merged part is published before the old ones are deleted, so a concurrent reader sees every
entry at least once, and a reader that finds a part gone lists again).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pyarrow as pa

from ragloop.tasks import schemas
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.llm import (
    Completion, LLMUnavailable, Messages, OnDone, StructuredResult, Usage, _SyncStructured,
    structured_rounds,
)
from ragloop.tasks.settings import LLMConfig
from ragloop.tasks.storage import Lake

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the key or the stored reply changes meaning: old entries are then never hit
FLUSH_EVERY = 64  # entries buffered before a part is published
FLUSH_AFTER_S = 30.0  # ... or seconds since the last publish (a kill loses at most this much model time)
COMPACT_AT = 32  # parts that make opening the cache merge them into one
DEFAULTS = {"temperature": 0.0, "max_tokens": 256, "seed": None, "json_schema": None, "frequency_penalty": 0.0}


# -- the key and the policy (pure) -----------------------------------------------------------------------
def model_identity(config: LLMConfig, model_id: str) -> dict[str, str]:
    """{provider, model_id[, base_url]}: which model answers (the endpoint's address for provider openai)."""
    identity = {"provider": config.provider, "model_id": model_id}
    if config.provider == "openai" and config.base_url:
        identity["base_url"] = config.base_url.rstrip("/")
    return identity


def call_params(params: Mapping[str, Any], config: LLMConfig) -> dict[str, Any]:
    """The parameters that shape a reply, normalized as the providers apply them: defaults filled in, the
    JSON mode only when a schema is asked for, the effective seed (the call's, else llm.seed) only for a
    sampled call (greedy decoding ignores it, so a changed llm.seed keeps temperature-0 entries)."""
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    temperature = float(p["temperature"])
    seed = p["seed"] if p["seed"] is not None else config.seed
    return {
        "temperature": temperature, "max_tokens": int(p["max_tokens"]),
        "frequency_penalty": float(p["frequency_penalty"] or 0.0),
        "json_schema": p["json_schema"], "json_mode": config.json_mode if p["json_schema"] is not None else None,
        "seed": seed if temperature > 0 else None,
    }


def cacheable(params: Mapping[str, Any], allow_sampled: bool) -> bool:
    """Whether a call with these (normalized) params may be cached: temperature 0, or a seeded sampled
    call when allowed (llm.cache_sampled)."""
    if params["temperature"] == 0:
        return True
    return allow_sampled and params["seed"] is not None


def cache_key(identity: Mapping[str, str], messages: Messages, params: Mapping[str, Any]) -> str:
    """sha256 hex of the call: format version, model identity, messages (role, content, as sent), params."""
    return canonical_hash({"format": CACHE_FORMAT, "model": dict(identity),
                           "messages": [dict(m) for m in messages], "params": dict(params)})


def storable(completion: Completion) -> bool:
    """A reply worth keeping: a real one (an empty reply is an error to the chain: asked again next time)."""
    return bool(completion.text.strip())


# -- the store --------------------------------------------------------------------------------------------
class LLMCache:
    """The lake's LLM call cache: loaded on first lookup (all parts, one read), written in new parts.
    Thread-safe (answers may arrive from a provider's threads)."""

    def __init__(self, lake: Lake, flush_every: int = FLUSH_EVERY, flush_after_s: float = FLUSH_AFTER_S,
                 compact_at: int = COMPACT_AT) -> None:
        self.lake = lake
        self.flush_every, self.flush_after_s, self.compact_at = flush_every, flush_after_s, compact_at
        self._entries: dict[str, dict] | None = None
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        self._lock = threading.RLock()
        self.parts_written = 0

    def __repr__(self) -> str:
        return f"LLMCache({self.lake.uri}, {len(self._entries or {})} entries loaded, {len(self._pending)} pending)"

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            start = time.perf_counter()
            compact(self.lake, self.compact_at)
            self._entries = first_entries(self.lake.read_llm_cache())
            log.debug("llm cache: %d entries loaded in %.0f ms", len(self._entries), (time.perf_counter() - start) * 1000)
        return self._entries

    def get(self, key: str) -> dict | None:
        """The stored entry (a schemas.LLM_CACHE row) for this key, or None."""
        with self._lock:
            return self._load().get(key)

    def put(self, entry: Mapping) -> None:
        """Keep a new entry (visible to get() at once; published to the lake at the next flush)."""
        with self._lock:
            entries = self._load()
            if entry["key"] in entries:
                return
            entries[entry["key"]] = dict(entry)
            self._pending.append(dict(entry))

    def maybe_flush(self) -> None:
        """Publish the buffer when it is FLUSH_EVERY entries or FLUSH_AFTER_S seconds old."""
        with self._lock:
            if len(self._pending) >= self.flush_every or (
                    self._pending and time.monotonic() - self._last_flush >= self.flush_after_s):
                self.flush()

    def flush(self) -> None:
        """Publish buffered entries as one new part (nothing when none)."""
        with self._lock:
            if self._pending:
                self.lake.write_llm_cache_part(pa.Table.from_pylist(self._pending, schema=schemas.LLM_CACHE))
                self.parts_written += 1
                self._pending = []
            self._last_flush = time.monotonic()


def first_entries(table: pa.Table) -> dict[str, dict]:
    """key -> its earliest-created row (duplicates come from runs that computed the same call at once)."""
    out: dict[str, dict] = {}
    for row in table.to_pylist():
        held = out.get(row["key"])
        if held is None or (row["created_at"] and held["created_at"] and row["created_at"] < held["created_at"]):
            out[row["key"]] = row
    return out


def compact(lake: Lake, compact_at: int = COMPACT_AT) -> int:
    """Merge the cache's parts into one when there are `compact_at` or more; returns the parts merged (0
    when left alone). The merged part is published before the old ones go: no entry is ever missing."""
    parts = lake.llm_cache_parts()
    if len(parts) < max(2, compact_at):
        return 0
    try:
        rows = list(first_entries(lake.read_llm_cache(parts)).values())
    except (FileNotFoundError, OSError):  # another process is compacting these very parts
        return 0
    lake.write_llm_cache_part(pa.Table.from_pylist(rows, schema=schemas.LLM_CACHE))
    lake.delete_llm_cache_parts(parts)
    log.info("llm cache: %d parts merged into one (%d entries)", len(parts), len(rows))
    return len(parts)


# -- the wrapper ------------------------------------------------------------------------------------------
@dataclass
class CacheStats:
    """What a cached LLM did: calls answered from the cache, sent to the model, or not cacheable."""

    hits: int = 0
    misses: int = 0  # cacheable calls the model answered (stored unless they failed or came back empty)
    uncacheable: int = 0  # sampled calls (temperature > 0) sent straight to the model
    stored: int = 0
    errors: int = 0  # calls that failed (never stored)
    tokens_saved: int = 0  # prompt + completion tokens of the hits, as the original calls counted them
    seconds_saved: float = 0.0  # the hits' original model latencies, summed (concurrent calls overlapped)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "uncacheable": self.uncacheable, "stored": self.stored,
                "errors": self.errors, "tokens_saved": self.tokens_saved, "seconds_saved": round(self.seconds_saved, 3)}


class CachedLLM:
    """An LLM (tasks.llm.LLM) whose cacheable calls are answered from an LLMCache when seen before.

    complete/complete_many look each call up and send only the misses to the wrapped model (in one
    batch: an endpoint's concurrency is kept). structured/structured_many run the parse-and-repair
    loop here, on top of the cached complete_many: one conversation at a time over a sequential
    (in-process or scripted) model, as it would; in rounds of concurrent calls over an endpoint.
    Everything else (model_id, context_window, count_tokens, preflight) is the wrapped model's."""

    def __init__(self, inner, cache: LLMCache, config: LLMConfig) -> None:
        self.inner = inner
        self.cache = cache
        self.config = config
        self.stats = CacheStats()
        self._identity: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"CachedLLM({self.inner!r}, {self.stats.as_dict()})"

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def preflight(self, required_context_tokens: int) -> dict[str, Any]:
        return self.inner.preflight(required_context_tokens)

    @property
    def identity(self) -> dict[str, str]:
        if self._identity is None:
            self._identity = model_identity(self.config, self.inner.model_id)
        return self._identity

    # - completions ---------------------------------------------------------------------------------
    def complete(self, messages: Messages, **params: Any) -> Completion:
        """One completion, from the cache when seen before; raises the wrapped model's LLMError."""
        result = self.complete_many([messages], **params)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def complete_many(self, messages_list: Sequence[Messages], *, on_done: OnDone | None = None,
                      **params: Any) -> list[Completion | Exception]:
        """Completions in input order (a failed request is its LLMError): hits from the cache, misses from
        the wrapped model in one batch, then stored. on_done() once per conversation."""
        normalized = call_params(params, self.config)
        if not cacheable(normalized, self.config.cache_sampled):
            with self.stats.lock:
                self.stats.uncacheable += len(messages_list)
            return self.inner.complete_many(messages_list, on_done=on_done, **params)
        out: list[Completion | Exception | None] = [None] * len(messages_list)
        keys = [cache_key(self.identity, m, normalized) for m in messages_list]
        misses = []
        for i, key in enumerate(keys):
            start = time.perf_counter()
            entry = self.cache.get(key)
            if entry is None:
                misses.append(i)
                continue
            out[i] = _from_entry(entry, (time.perf_counter() - start) * 1000)
            with self.stats.lock:
                self.stats.hits += 1
                self.stats.tokens_saved += entry["prompt_tokens"] + entry["completion_tokens"]
                self.stats.seconds_saved += (entry["latency_ms"] or 0.0) / 1000
            if on_done is not None:
                on_done()
        # Misses go to the model in slices, each stored and flushed as it returns, so a kill loses at most
        # FLUSH_AFTER_S of answers: one call at a time to a sequential model, FLUSH_EVERY to an endpoint
        # (its concurrency works within a slice). After an outage the rest fail fast without a request.
        size = 1 if isinstance(self.inner, _SyncStructured) else FLUSH_EVERY
        outage: LLMUnavailable | None = None
        for start in range(0, len(misses), size):
            todo = misses[start : start + size]
            if outage is not None:
                answered = [LLMUnavailable(f"skipped: {outage}") for _ in todo]
                for _ in todo:
                    if on_done is not None:
                        on_done()
            else:
                answered = self.inner.complete_many([messages_list[i] for i in todo], on_done=on_done, **params)
            for i, result in zip(todo, answered):
                out[i] = result
                self._store(keys[i], normalized, result)
                if isinstance(result, LLMUnavailable) and outage is None:
                    outage = result
            self.cache.maybe_flush()
        return out  # type: ignore[return-value]

    def _store(self, key: str, params: Mapping[str, Any], result: Completion | Exception) -> None:
        with self.stats.lock:
            self.stats.misses += 1
            if isinstance(result, Exception):
                self.stats.errors += 1
                return
        if not storable(result):
            return
        self.cache.put({"key": key, "text": result.text, "prompt_tokens": result.usage.prompt_tokens,
                        "completion_tokens": result.usage.completion_tokens, "latency_ms": result.latency_ms,
                        "model": result.model, "finish_reason": result.finish_reason,
                        "identity": json.dumps(self.identity, sort_keys=True),
                        "params": json.dumps(params, sort_keys=True), "created_at": schemas.utcnow()})
        with self.stats.lock:
            self.stats.stored += 1

    # - structured output ---------------------------------------------------------------------------
    def structured(self, messages: Messages, output_model, *, max_repairs: int = 2, **params: Any) -> StructuredResult:
        """Ask for JSON, repair and validate it, re-asking with the error up to max_repairs times."""
        return self.structured_many([messages], output_model, max_repairs=max_repairs, **params)[0]

    def structured_many(self, messages_list: Sequence[Messages], output_model, *, max_repairs: int = 2,
                        on_done: OnDone | None = None, **params: Any) -> list[StructuredResult]:
        """structured() per conversation, in input order; a rejected request is the item's error, an outage
        or config error raises (as the wrapped models do)."""
        # A sequential model answers one conversation's repairs before the next conversation, as its own
        # structured_many would (a scripted fake's reply queue depends on that order).
        groups = ([[i] for i in range(len(messages_list))] if isinstance(self.inner, _SyncStructured)
                  else [list(range(len(messages_list)))])
        return structured_rounds(self.complete_many, messages_list, output_model, max_repairs, on_done, params, groups)


def _from_entry(entry: Mapping, lookup_ms: float) -> Completion:
    return Completion(text=entry["text"], usage=Usage(int(entry["prompt_tokens"]), int(entry["completion_tokens"])),
                      latency_ms=lookup_ms, model=entry["model"], finish_reason=entry["finish_reason"], cached=True,
                      original_latency_ms=entry["latency_ms"])


# -- wiring for a run -----------------------------------------------------------------------------------
def cache_llms(lake: Lake, llm, llm_config: LLMConfig, judge, judge_config: LLMConfig | None,
               enabled: bool = True) -> tuple[Any, Any, LLMCache | None]:
    """(llm, judge, cache): each wrapped in a CachedLLM over the lake's cache when its config says
    `cache: true` and `enabled` (False: --no-cache); unwrapped otherwise. A missing model stays None."""
    cache = LLMCache(lake) if enabled and ((llm is not None and llm_config.cache) or
                                          (judge is not None and judge_config is not None and judge_config.cache)) else None
    if cache is None:
        return llm, judge, None
    wrapped_llm = CachedLLM(llm, cache, llm_config) if llm is not None and llm_config.cache else llm
    wrapped_judge = CachedLLM(judge, cache, judge_config) if judge is not None and judge_config and judge_config.cache else judge
    return wrapped_llm, wrapped_judge, cache


def cache_report(llm, judge, enabled: bool, why_off: str | None = None) -> dict[str, Any]:
    """The eval summary's `llm_cache`: {enabled, hits, misses, uncacheable, stored, errors, tokens_saved,
    seconds_saved, by_role: {llm | judge: the same counts}}, summed over the roles that used the cache;
    {enabled: false, reason} when no call could use it. Publishes what is still buffered first."""
    roles = {name: m for name, m in (("llm", llm), ("judge", judge)) if isinstance(m, CachedLLM)}
    if not enabled or not roles:
        return {"enabled": False, "reason": why_off or "no LLM step in this chain"}
    caches = {id(m.cache): m.cache for m in roles.values()}
    for cache in caches.values():
        cache.flush()
    by_role = {name: m.stats.as_dict() for name, m in roles.items()}
    total = {k: sum(r[k] for r in by_role.values()) for k in next(iter(by_role.values()))}
    total["seconds_saved"] = round(total["seconds_saved"], 3)
    return {"enabled": True, **total, "by_role": by_role}


def cache_line(report: Mapping[str, Any] | None) -> str | None:
    """The human summary's line for `llm_cache` (None when the summary has none)."""
    if not report:
        return None
    if not report.get("enabled"):
        return f"llm cache: off ({report.get('reason')})"
    calls = report["hits"] + report["misses"]
    rate = f" ({report['hits'] / calls:.0%} hits)" if calls else ""
    extra = f", {report['uncacheable']} not cacheable (sampled)" if report.get("uncacheable") else ""
    return (f"llm cache: {report['hits']} hits, {report['misses']} misses{rate}{extra}; saved "
            f"{report['tokens_saved']:,} tokens and {report['seconds_saved']:.1f} s of model time")

