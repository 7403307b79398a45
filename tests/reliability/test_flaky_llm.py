"""A flaky LLM endpoint: timeouts, 500s, 429s with Retry-After, malformed JSON and slow streams.

Transient faults are retried (Retry-After honoured), the items that still fail are counted as failed
with their reason, the eval run ends `partial` with the counts, and no metric is a silent NaN.
"""

from __future__ import annotations

import math
import time

import pytest

from ragloop.flows import evaluate as eval_flow
from ragloop.tasks.llm import LLMConfig, LLMRequestError, LLMUnavailable, OpenAICompatLLM
from ragloop.tasks.storage import Lake
from tests.reliability.fault_server import FaultServer
from tests.reliability.helpers import copy_answer, import_station_golden, index_stations

TIMEOUT_S = 0.5
ASK = [{"role": "user", "content": "[item-01] How many docks?"}]


def _client(server: FaultServer, **overrides) -> OpenAICompatLLM:
    fields = dict(provider="openai", base_url=server.url, model="fault-model", timeout_s=TIMEOUT_S, backoff_s=0.01,
                  max_retries=2)
    return OpenAICompatLLM(LLMConfig(**(fields | overrides)))


@pytest.mark.parametrize(
    "plan, outcome, attempts, min_s, max_s",
    # Upper bounds are loose on purpose (a loaded CI machine): each is far below what the bug it guards
    # against would take, e.g. a timeout that did not cut a 20 s sleep or a 20 s trickling body.
    [
        ([{"status": 500}], "ok", 2, 0, 5),
        ([{"status": 503}, {"status": 502}], "ok", 3, 0, 5),
        ([{"status": 429, "retry_after": "1"}], "ok", 2, 0.95, 6),
        ([{"sleep": 20.0}], "ok", 2, TIMEOUT_S, 10),
        ([{"dribble": 20.0}], "ok", 2, TIMEOUT_S, 10),  # a trickling body is cut at llm.timeout_s, then retried
        ([{"status": 500}] * 3, r"LLMUnavailable:.*failed 3 times; last: HTTP 500", 3, 0, 5),
        ([{"status": 429, "retry_after": "3600"}], r"LLMUnavailable:.*asked to retry after 3600s", 1, 0, 5),
        ([{"malformed": '{"choices": [{"message": {"content": "cut'}], r"LLMRequestError:.*body that is not JSON", 1, 0, 5),
        ([{"no_choices": True}], r"LLMRequestError:.*without choices\[0\]\.message", 1, 0, 5),
        ([{"status": 400}], r"LLMRequestError:.*answered HTTP 400", 1, 0, 5),
    ],
    ids=["500", "503-502", "429-retry-after", "timeout", "slow-stream", "500-every-time", "429-too-long",
         "malformed-json", "no-choices", "400"],
)
def test_client_retries_transient_faults_and_fails_permanent_ones(plan, outcome, attempts, min_s, max_s):
    with FaultServer({"item-01": plan}) as server:
        start = time.monotonic()
        result = _client(server).complete_many([ASK])[0]
        elapsed = time.monotonic() - start
    if outcome == "ok":
        assert result.text == "A grounded answer taken from the passages."
    else:
        assert isinstance(result, (LLMUnavailable, LLMRequestError))
        import re

        assert re.search(outcome, f"{type(result).__name__}: {result}"), result
    assert server.attempts["item-01"] == attempts
    assert min_s <= elapsed < max_s


# item -> fault plan; transient ones recover within llm.max_retries=2, permanent ones never do
TRANSIENT = {
    "item-01": [{"status": 500}],
    "item-02": [{"status": 429, "retry_after": "1"}],
    "item-03": [{"sleep": 3.0}],
    "item-04": [{"dribble": 4.0}],
    "item-05": [{"status": 503}, {"status": 502}],
    "item-09": [{"sleep": 3.0}, {"status": 500}],
}
PERMANENT = {
    "item-06": [{"malformed": '{"id": "x", "choices": [{"message": {"content": "The answer is'}],
    "item-07": [{"status": 400}],
    "item-08": [{"no_choices": True}],
    "item-10": [{"malformed": "not json at all"}],
}


def test_eval_against_a_flaky_endpoint_ends_partial_with_the_failures_counted(
    prefect_backend, hash_embedder, tmp_path, lake_dir, monkeypatch, figures
):
    index_stations(tmp_path, lake_dir, 12)
    golden = import_station_golden(tmp_path, lake_dir)
    with FaultServer({**TRANSIENT, **PERMANENT}, reply=copy_answer) as server:
        for name, value in {"PROVIDER": "openai", "BASE_URL": server.url, "MODEL": "fault-model", "TIMEOUT_S": "1",
                            "BACKOFF_S": "0.01", "MAX_RETRIES": "2", "CONCURRENCY": "4"}.items():
            monkeypatch.setenv(f"RAGLOOP_LLM__{name}", value)
        monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")  # every item reaches the LLM
        monkeypatch.setenv("RAGLOOP_GATE__MAX_FAILED_FRACTION", "0.5")
        start = time.monotonic()
        summary = eval_flow.evaluate_chain(lake=str(lake_dir), golden=golden["golden_set_id"], retrieval="vector", k=2)
        elapsed = time.monotonic() - start

    assert summary["status"] == "partial", summary.get("gate")
    assert summary["items"]["total"] == 12
    assert summary["items"]["failed"] == len(PERMANENT), "every permanently failing item is counted, no other"
    items = {i["question"][1:8]: i for i in Lake(str(lake_dir)).read_eval_items(summary["run_id"]).to_pylist()}
    failed = {k for k, i in items.items() if i["status"] == "failed"}
    assert failed == set(PERMANENT)
    assert all(items[k]["error"].startswith("answer: LLMRequestError") for k in failed), "each failure says why"
    assert all(items[k]["answer"] and items[k]["status"] == "ok" for k in TRANSIENT), "transient faults recovered"
    for k in TRANSIENT:
        assert server.attempts[k] == len(TRANSIENT[k]) + 1, f"{k}: one retry per transient fault"
    for k in PERMANENT:
        assert server.attempts[k] == 1, f"{k}: a permanent fault is not retried"
    assert elapsed < 30, "timeouts and slow streams are bounded by llm.timeout_s"

    # Zero silent NaN: every number is finite; failed items carry no answer metric instead of a NaN.
    numbers = list(summary["metrics"].values()) + [v for ci in summary["ci"].values() for v in ci]
    numbers += [v for i in items.values() for _, v in i["metrics"]]
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert all("refusal_correct" not in dict(items[k]["metrics"]) for k in failed)
    assert summary["n"]["refusal_correct"] == 12 - len(PERMANENT)
    assert summary["n"]["chunk_hit@1"] == 12, "retrieval metrics still count every item"
    traces = Lake(str(lake_dir)).read_traces(summary["run_id"]).to_pylist()
    assert sum(1 for t in traces if t["step"] == "answer" and t["error"]) == len(PERMANENT)
    figures("4_flaky_llm", faults_injected=sum(server.faults_served.values()),
            faults_by_kind=dict(server.faults_served), transient_items=len(TRANSIENT), permanent_items=len(PERMANENT),
            items_counted_failed=summary["items"]["failed"], status=summary["status"], eval_seconds=round(elapsed, 1))
