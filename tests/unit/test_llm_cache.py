"""The LLM call cache: keys, policy, the cached wrapper over a scripted model, and the lake's parts."""

from __future__ import annotations

import dataclasses
import time

import pyarrow as pa
import pytest
from pydantic import BaseModel

from ragloop.tasks import llm_cache, schemas
from ragloop.tasks.llm import LLMRequestError, LLMUnavailable, ScriptedLLM
from ragloop.tasks.llm_cache import CachedLLM, LLMCache, cache_key, cacheable, call_params, model_identity
from ragloop.tasks.settings import LLMConfig
from ragloop.tasks.storage import Lake

MESSAGES = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "How many docks?"}]
LOCAL = LLMConfig()


class TimedScripted(ScriptedLLM):
    """A scripted model whose replies take a recorded 120 ms (the cache must keep the original's)."""

    def complete(self, messages, **params):
        return dataclasses.replace(super().complete(messages, **params), latency_ms=120.0)


class Answer(BaseModel):
    question: str


@pytest.fixture
def lake(tmp_path):
    return Lake(str(tmp_path / "lake"))


def _key(**changes):
    identity = changes.pop("identity", model_identity(LOCAL, "m.gguf@sha256:aa"))
    messages = changes.pop("messages", MESSAGES)
    return cache_key(identity, messages, call_params({"max_tokens": 200, **changes}, LOCAL))


def test_the_key_is_the_model_the_messages_and_the_params():
    assert _key() == _key(), "content-addressed: equal calls, equal keys"
    other_calls = [
        _key(identity=model_identity(LOCAL, "m.gguf@sha256:bb")),  # another file, even under the same name
        _key(identity=model_identity(LLMConfig(provider="openai", base_url="http://a/v1"), "m")),
        _key(messages=[*MESSAGES[:1], {"role": "user", "content": "How many docks? "}]),
        _key(max_tokens=201), _key(frequency_penalty=0.5), _key(json_schema={"type": "object"}),
    ]
    assert len({_key(), *other_calls}) == len(other_calls) + 1


def test_an_endpoint_is_identified_by_its_address_and_model_id():
    a = model_identity(LLMConfig(provider="openai", base_url="http://127.0.0.1:1/v1/"), "llama")
    b = model_identity(LLMConfig(provider="openai", base_url="http://127.0.0.1:2/v1"), "llama")
    assert a == {"provider": "openai", "model_id": "llama", "base_url": "http://127.0.0.1:1/v1"} and a != b


def test_greedy_calls_ignore_the_seed_sampled_ones_keep_it():
    assert _key(seed=1) == _key(seed=2), "temperature 0 decodes greedily: the seed changes nothing"
    assert _key(temperature=0.7, seed=1) != _key(temperature=0.7, seed=2)


@pytest.mark.parametrize("temperature, allow_sampled, expected", [
    (0.0, False, True), (0.0, True, True), (0.7, False, False), (0.7, True, True)])
def test_only_greedy_calls_are_cached_unless_sampled_ones_are_allowed(temperature, allow_sampled, expected):
    assert cacheable(call_params({"temperature": temperature}, LOCAL), allow_sampled) is expected


def test_a_second_run_is_answered_from_the_cache_exactly_as_the_first(lake):
    first_model = TimedScripted(["Twelve docks.", "It closes at midnight."])
    first = CachedLLM(first_model, LLMCache(lake), LOCAL)
    conversations = [MESSAGES, [{"role": "user", "content": "When does it close?"}]]
    original = first.complete_many(conversations, max_tokens=200)
    assert first.stats.as_dict() | {"seconds_saved": 0} == {
        "hits": 0, "misses": 2, "uncacheable": 0, "stored": 2, "errors": 0, "tokens_saved": 0, "seconds_saved": 0}
    first.cache.flush()

    empty = TimedScripted()  # any request would raise ScriptExhausted
    again = CachedLLM(empty, LLMCache(lake), LOCAL)
    done = []
    replayed = again.complete_many(conversations, max_tokens=200, on_done=lambda: done.append(1))
    assert empty.requests == [] and len(done) == 2
    for before, after in zip(original, replayed):
        assert (after.text, after.usage, after.finish_reason, after.model) == (
            before.text, before.usage, before.finish_reason, before.model)
        assert after.cached and after.original_latency_ms == 120.0 and after.latency_ms < 120.0
    stats = again.stats.as_dict()
    assert stats["hits"] == 2 and stats["misses"] == 0
    assert stats["tokens_saved"] == sum(c.usage.prompt_tokens + c.usage.completion_tokens for c in original)
    assert stats["seconds_saved"] == 0.24


def test_errors_and_empty_replies_are_never_cached(lake):
    model = ScriptedLLM([LLMRequestError("HTTP 400"), "", "Twelve docks."])
    cached = CachedLLM(model, LLMCache(lake), LOCAL)
    with pytest.raises(LLMRequestError, match="HTTP 400"):
        cached.complete(MESSAGES)
    assert cached.complete(MESSAGES).text == "", "an empty reply is returned, not stored"
    assert cached.complete(MESSAGES).text == "Twelve docks."
    assert cached.complete(MESSAGES).text == "Twelve docks." and len(model.requests) == 3
    assert cached.stats.errors == 1 and cached.stats.stored == 1 and cached.stats.hits == 1


def test_sampled_calls_go_to_the_model_every_time(lake):
    model = ScriptedLLM(["one", "two"])
    cached = CachedLLM(model, LLMCache(lake), LOCAL)
    assert [cached.complete(MESSAGES, temperature=0.8).text for _ in range(2)] == ["one", "two"]
    assert cached.stats.uncacheable == 2 and cached.stats.stored == 0

    allowed = CachedLLM(ScriptedLLM(["three"]), LLMCache(lake), LLMConfig(cache_sampled=True))
    assert [allowed.complete(MESSAGES, temperature=0.8, seed=7).text for _ in range(2)] == ["three", "three"]


def test_an_outage_fails_the_remaining_misses_without_storing_them(lake):
    model = ScriptedLLM([LLMUnavailable("nothing listening")])

    class Endpoint:  # a concurrent provider: misses go in slices; after an outage the rest are skipped
        model_id = "endpoint-model"

        def complete_many(self, messages_list, on_done=None, **params):
            return [model.complete_many([m], **params)[0] if i == 0 else LLMUnavailable("down")
                    for i, m in enumerate(messages_list)]

    cached = CachedLLM(Endpoint(), LLMCache(lake, flush_every=1), LOCAL)
    results = cached.complete_many([[{"role": "user", "content": f"q{i}"}] for i in range(3)])
    assert all(isinstance(r, LLMUnavailable) for r in results) and cached.stats.stored == 0
    assert lake.llm_cache_parts() == []


def test_structured_repairs_are_cached_and_replayed_in_order(lake):
    model = ScriptedLLM(["not json", '{"question": "How many docks?"}', '{"question": "When?"}'])
    first = CachedLLM(model, LLMCache(lake), LOCAL)
    results = first.structured_many([MESSAGES, [{"role": "user", "content": "other"}]], Answer, max_repairs=1)
    assert [r.value.question for r in results] == ["How many docks?", "When?"] and results[0].attempts == 2
    assert not results[0].cached and first.stats.stored == 3
    first.cache.flush()

    again = CachedLLM(ScriptedLLM(), LLMCache(lake), LOCAL)
    replay = again.structured_many([MESSAGES, [{"role": "user", "content": "other"}]], Answer, max_repairs=1)
    assert [(r.value, r.attempts, r.raw, r.usage) for r in replay] == [
        (r.value, r.attempts, r.raw, r.usage) for r in results]
    assert all(r.cached for r in replay) and again.stats.hits == 3


def test_a_rejected_structured_request_is_the_items_error_and_is_asked_again(lake):
    model = ScriptedLLM([LLMRequestError("HTTP 400"), '{"question": "Q?"}'])
    cached = CachedLLM(model, LLMCache(lake), LOCAL)
    assert cached.structured(MESSAGES, Answer).error.startswith("LLMRequestError")
    assert cached.structured(MESSAGES, Answer).value.question == "Q?"


def _entry(key: str, text: str = "reply", at: float = 0.0) -> dict:
    return {"key": key, "text": text, "prompt_tokens": 3, "completion_tokens": 1, "latency_ms": 5.0, "model": "m",
            "finish_reason": "stop", "identity": "{}", "params": "{}",
            "created_at": schemas.utcnow().fromtimestamp(1_700_000_000 + at, tz=schemas.utcnow().tzinfo)}


def test_nothing_is_published_before_a_flush_and_a_killed_writers_temp_file_is_ignored(lake):
    cache = LLMCache(lake, flush_every=10, flush_after_s=3600)
    cache.put(_entry("a"))
    cache.maybe_flush()
    assert lake.llm_cache_parts() == [], "buffered: a kill here loses it, and corrupts nothing"
    cache.flush()
    (part,) = lake.llm_cache_parts()
    with open(part + ".tmp-deadbeef", "wb") as fh:  # a writer killed mid-write leaves only a temp name
        fh.write(b"PAR1 half a file")
    assert LLMCache(lake).get("a")["text"] == "reply" and len(lake.llm_cache_parts()) == 1


def test_concurrent_writers_publish_separate_parts_and_readers_keep_the_first_entry(lake):
    one, two = LLMCache(lake), LLMCache(lake)
    one.put(_entry("shared", "first", at=0))
    two.put(_entry("shared", "second", at=5))
    two.put(_entry("only-two"))
    two.flush()
    one.flush()
    assert len(lake.llm_cache_parts()) == 2
    reader = LLMCache(lake)
    assert reader.get("shared")["text"] == "first" and reader.get("only-two") is not None


def test_opening_a_cache_of_many_parts_merges_them_without_losing_an_entry(lake):
    for i in range(6):
        cache = LLMCache(lake)
        cache.put(_entry(f"k{i}"))
        cache.put(_entry("dup", f"v{i}", at=i))
        cache.flush()
    assert len(lake.llm_cache_parts()) == 6
    merged = LLMCache(lake, compact_at=4)
    assert merged.get("dup")["text"] == "v0" and all(merged.get(f"k{i}") for i in range(6))
    assert len(lake.llm_cache_parts()) == 1
    assert lake.read_llm_cache().num_rows == 7


def test_thousands_of_entries_load_in_one_read(lake):
    rows = [_entry(f"{i:064x}", "An answer of about a sentence or two, as the chain's answers are. " * 4)
            for i in range(5000)]
    for start in range(0, 5000, 1000):
        lake.write_llm_cache_part(pa.Table.from_pylist(rows[start : start + 1000], schema=schemas.LLM_CACHE))
    start = time.perf_counter()
    cache = LLMCache(lake)
    assert cache.get(f"{4999:064x}") is not None
    assert time.perf_counter() - start < 3.0, "one read of five parts, not 5,000 file opens"


def test_the_report_sums_the_roles_and_the_line_says_what_was_saved(lake):
    cache = LLMCache(lake)
    llm, judge = CachedLLM(ScriptedLLM(["a"]), cache, LOCAL), CachedLLM(ScriptedLLM(), cache, LOCAL)
    llm.complete(MESSAGES)
    judge.complete(MESSAGES)  # the same call and model: answered from the answer step's entry
    report = llm_cache.cache_report(llm, judge, True)
    assert report["hits"] == 1 and report["misses"] == 1 and report["by_role"]["judge"]["hits"] == 1
    assert lake.llm_cache_parts(), "the report publishes what was buffered"
    assert llm_cache.cache_line(report).startswith("llm cache: 1 hits, 1 misses (50% hits); saved")
    assert llm_cache.cache_report(llm, None, False, "--no-cache") == {"enabled": False, "reason": "--no-cache"}
    assert llm_cache.cache_line({"enabled": False, "reason": "--no-cache"}) == "llm cache: off (--no-cache)"


def test_cache_llms_wraps_each_model_by_its_own_switch(lake):
    llm, judge = ScriptedLLM(), ScriptedLLM()
    a, b, cache = llm_cache.cache_llms(lake, llm, LOCAL, judge, LLMConfig(cache=False))
    assert isinstance(a, CachedLLM) and b is judge and cache is not None
    assert llm_cache.cache_llms(lake, llm, LOCAL, judge, LOCAL, enabled=False) == (llm, judge, None)
    assert llm_cache.cache_llms(lake, llm, LLMConfig(cache=False), None, None) == (llm, None, None)
