"""The LLM call cache against a real OpenAI-compatible endpoint on 127.0.0.1 that counts its requests:
an unchanged eval re-run makes zero chat requests, a failed call is asked again, --no-cache asks all."""

from __future__ import annotations

import json

from ragloop.flows import evaluate as eval_flow
from ragloop.flows.cli import _parser, main
from ragloop.tasks.storage import Lake
from tests.reliability.fault_server import FaultServer
from tests.reliability.helpers import copy_answer, import_station_golden, index_stations

ITEMS = 12


def _reply(messages: list[dict]) -> str:
    """A rewrite returns the question as it was (so retrieval, and the answer's prompt, stay the same)."""
    user = messages[-1]["content"]
    if "Rewrite this question" in user:
        return json.dumps({"question": user.strip().splitlines()[-1].strip()})
    return copy_answer(messages)


def _steps(lake_dir, run_id: str, step: str) -> dict[str, dict]:
    return {t["qa_id"]: t for t in Lake(str(lake_dir)).read_traces(run_id).to_pylist() if t["step"] == step}


def test_an_unchanged_eval_rerun_makes_no_llm_call(prefect_backend, hash_embedder, tmp_path, lake_dir, monkeypatch,
                                                   capsys, figures):
    index_stations(tmp_path, lake_dir, ITEMS)
    golden = import_station_golden(tmp_path, lake_dir)["golden_set_id"]
    # item-03's first request (its rewrite) is rejected: a failed call, never cached.
    with FaultServer({"item-03": [{"status": 400}]}, reply=_reply) as server:
        for name, value in {"PROVIDER": "openai", "BASE_URL": server.url, "MODEL": "fault-model",
                            "BACKOFF_S": "0.01", "MAX_RETRIES": "1"}.items():
            monkeypatch.setenv(f"RAGLOOP_LLM__{name}", value)
        monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")  # every item reaches the LLM
        monkeypatch.setenv("RAGLOOP_EVAL__REWRITE_PROMPT", "query_rewrite")
        monkeypatch.setenv("RAGLOOP_GATE__MAX_FAILED_FRACTION", "0.5")

        def run(**params) -> tuple[dict, int]:
            before = len(server.requests)
            summary = eval_flow.evaluate_chain(lake=str(lake_dir), golden=golden, retrieval="vector", k=2, **params)
            return summary, len(server.requests) - before

        first, first_calls = run()
        retry, retry_calls = run()
        again, again_calls = run()

        assert first_calls == 2 * ITEMS, "a rewrite and an answer per item"
        assert first["llm_cache"] | {"by_role": None, "seconds_saved": None} == {
            "enabled": True, "hits": 0, "misses": 2 * ITEMS, "uncacheable": 0, "stored": 2 * ITEMS - 1, "errors": 1,
            "tokens_saved": 0, "seconds_saved": None, "by_role": None}
        assert retry_calls == 1, "only the rejected rewrite is asked again: errors are not cached"
        assert retry["llm_cache"]["hits"] == 2 * ITEMS - 1 and retry["llm_cache"]["misses"] == 1
        assert again_calls == 0, "an unchanged eval re-run makes zero LLM calls"
        cache = again["llm_cache"]
        assert cache["hits"] == 2 * ITEMS and cache["misses"] == 0 and cache["tokens_saved"] == 2 * ITEMS * 49
        assert cache["by_role"] == {"llm": {k: v for k, v in cache.items() if k not in ("enabled", "by_role")}}

        # The replayed answers are the originals: text, metrics, tokens; latency is the lookup's, the
        # model's first latency is kept beside it.
        lake = Lake(str(lake_dir))
        answers = {r["qa_id"]: (r["answer"], r["metrics"]) for r in lake.read_eval_items(retry["run_id"]).to_pylist()}
        assert answers == {r["qa_id"]: (r["answer"], r["metrics"]) for r in lake.read_eval_items(again["run_id"]).to_pylist()}
        assert again["metrics"] == retry["metrics"]
        original, replayed = _steps(lake_dir, first["run_id"], "answer"), _steps(lake_dir, again["run_id"], "answer")
        for qa_id, trace in replayed.items():
            assert trace["cached"] is True and not original[qa_id]["cached"]
            assert (trace["prompt_tokens"], trace["completion_tokens"]) == (40, 9)
            assert trace["original_latency_ms"] == original[qa_id]["latency_ms"]
        assert sum(t["latency_ms"] for t in replayed.values()) < sum(t["latency_ms"] for t in original.values())

        before = len(server.requests)
        assert main(["eval", "--lake", str(lake_dir), "--golden", golden, "--retrieval", "vector", "--k", "2",
                     "--no-cache", "--json"]) == 0
        bypassed = json.loads(capsys.readouterr().out)
        assert len(server.requests) - before == 2 * ITEMS and bypassed["llm_cache"] == {"enabled": False,
                                                                                         "reason": "--no-cache"}
        assert main(["eval", "--lake", str(lake_dir), "--golden", golden, "--retrieval", "vector", "--k", "2"]) == 0
        assert f"llm cache: {2 * ITEMS} hits, 0 misses (100% hits); saved {2 * ITEMS * 49:,} tokens" in capsys.readouterr().out
    figures("llm_cache", first_run_calls=first_calls, rerun_after_an_error_calls=retry_calls,
            unchanged_rerun_calls=again_calls, no_cache_calls=2 * ITEMS, parts=len(lake.llm_cache_parts()))


def test_run_takes_no_cache_too():
    assert _parser().parse_args(["run", "--no-cache"]).no_cache is True
    assert _parser().parse_args(["eval"]).no_cache is False
