"""LLM interface: structured parsing/repair with the scripted fake; the OpenAI client against a local stub."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import BaseModel, ValidationError

from ragloop.tasks.llm import (
    PREFLIGHT_TIMEOUT_S,
    LLMConfig,
    LLMConfigError,
    LLMRequestError,
    LLMUnavailable,
    LocalLLM,
    OpenAICompatLLM,
    ScriptedLLM,
    ScriptExhausted,
    StructuredResult,
    load_llm,
)


class QA(BaseModel):
    question: str
    answer: str


ASK = [{"role": "user", "content": "Write a question about Tidepool."}]
GOOD = QA(question="What is Tidepool?", answer="A queue service.")


# -- structured output with the scripted fake ---------------------------------------------------
@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"question": "What is Tidepool?", "answer": "A queue service."}', GOOD),
        ('```json\n{"question": "What is Tidepool?", "answer": "A queue service."}\n```', GOOD),
        ('Sure! Here it is: {"question": "What is Tidepool?", "answer": "A queue service."} Hope it helps.', GOOD),
        ('{"question": "What is Tidepool?", "answer": "A queue service.",}', GOOD),
        ("{'question': 'What is Tidepool?', 'answer': 'A queue service.'}", GOOD),
        ('{"question": "What is Tidepool?", "answer": "A queue serv',
         QA(question="What is Tidepool?", answer="A queue serv")),
        ('[{"question": "What is Tidepool?", "answer": "A queue service."}]', GOOD),
    ],
    ids=["valid", "fenced", "prose-around", "trailing-comma", "single-quotes", "truncated", "wrapped-in-list"],
)
def test_structured_repairs_broken_json_in_one_attempt(reply, expected):
    llm = ScriptedLLM([reply])
    result = llm.structured(ASK, QA)
    assert (result.value, result.attempts, result.error, result.raw) == (expected, 1, None, reply)
    assert llm.requests[0]["json_schema"] == QA.model_json_schema()


def test_structured_reasks_with_the_validation_error():
    first = '{"question": "What is Tidepool?"}'
    llm = ScriptedLLM([first, GOOD.model_dump_json()])
    result = llm.structured(ASK, QA, temperature=0.3, max_tokens=50)
    assert (result.value, result.attempts, result.error) == (GOOD, 2, None)
    reask = llm.requests[1]["messages"]
    assert reask[: len(ASK)] == ASK
    assert reask[-2] == {"role": "assistant", "content": first}
    assert reask[-1]["role"] == "user" and "answer: Field required" in reask[-1]["content"]
    assert '"required":["question","answer"]' in reask[-1]["content"]  # the schema is restated
    assert [r["temperature"] for r in llm.requests] == [0.3, 0.3]
    assert result.usage.completion_tokens == sum(len(r.split()) for r in [first, GOOD.model_dump_json()])


@pytest.mark.parametrize("max_repairs", [0, 1, 2])
def test_structured_gives_up_after_max_repairs_with_an_error(max_repairs):
    llm = ScriptedLLM(["I cannot answer that."] * 5)
    result = llm.structured(ASK, QA, max_repairs=max_repairs)
    assert result.value is None and result.attempts == 1 + max_repairs == len(llm.requests)
    assert result.error and "no JSON object" in result.error
    assert result.raw == "I cannot answer that."


def test_structured_reports_a_truncated_reply_that_cannot_validate():
    llm = ScriptedLLM(['{"question": "What is'])
    result = llm.structured(ASK, QA, max_repairs=0)
    assert result.value is None and "answer: Field required" in result.error


@pytest.mark.parametrize(
    "exc, outcome",
    [
        (LLMRequestError("prompt exceeds context window"), "result"),
        (LLMUnavailable("http://127.0.0.1:1/v1 failed 5 times"), "raises"),
        (LLMConfigError("model file not found: /x.gguf"), "raises"),
    ],
)
def test_structured_turns_only_request_errors_into_results(exc, outcome):
    llm = ScriptedLLM([exc])
    if outcome == "raises":
        with pytest.raises(type(exc), match=str(exc)):
            llm.structured(ASK, QA)
    else:
        result = llm.structured(ASK, QA)
        assert (result.value, result.attempts, result.error) == (None, 1, f"LLMRequestError: {exc}")


def test_structured_many_keeps_input_order_and_isolates_failures():
    llm = ScriptedLLM([GOOD.model_dump_json(), "nope", "still nope", '{"question": "b", "answer": "c"}'])
    results = llm.structured_many([ASK, ASK, ASK], QA, max_repairs=1)
    assert [r.value for r in results] == [GOOD, None, QA(question="b", answer="c")]
    assert [r.attempts for r in results] == [1, 2, 1]
    assert all(isinstance(r, StructuredResult) for r in results)


def test_scripted_llm_is_deterministic_and_says_when_the_script_runs_out():
    llm = ScriptedLLM(["a", lambda messages: messages[-1]["content"].upper(), LLMRequestError("bad")])
    out = llm.complete_many([ASK, ASK, ASK])
    assert [getattr(c, "text", None) for c in out[:2]] == ["a", ASK[-1]["content"].upper()]
    assert isinstance(out[2], LLMRequestError)
    with pytest.raises(ScriptExhausted, match="no reply left for request 4"):
        llm.complete(ASK)
    assert len(llm.requests) == 4


# -- config and loading -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, match",
    [
        ({"provider": "openai"}, "needs base_url"),
        ({"api_key": "sk-x"}, "Extra inputs are not permitted"),
        ({"concurrency": 0}, "greater than 0"),
        ({"json_mode": "grammar"}, "json_mode"),
        ({"n_ctx": 300}, "must be 0 or a multiple of 256, not 300"),
    ],
)
def test_llm_config_rejects(fields, match):
    with pytest.raises(ValidationError, match=match):
        LLMConfig(**fields)


@pytest.mark.parametrize(
    "fields, cls",
    [({}, LocalLLM), ({"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}, OpenAICompatLLM),
     ({"provider": "fake"}, ScriptedLLM)],
)
def test_load_llm_builds_without_loading_or_connecting(fields, cls):
    assert type(load_llm(LLMConfig(**fields))) is cls


def test_local_preflight_names_a_missing_model_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(LLMConfigError, match=f"not found: {missing}"):
        LocalLLM(LLMConfig(model_path=str(missing))).preflight(100)


# -- an OpenAI-compatible stub on 127.0.0.1 ------------------------------------------------------
class Stub:
    """Scripted /v1/chat/completions answers (dicts: status, headers, sleep, body, usage); tracks concurrency."""

    def __init__(self) -> None:
        self.script: deque[dict] = deque()
        self.default: dict = {}
        self.requests: list[dict] = []
        self.models: list[dict] = [{"id": "stub-model"}]
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.url = ""

    def next_action(self) -> dict:
        with self.lock:
            return self.script.popleft() if self.script else dict(self.default)


def _handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: dict | str, headers: dict | None = None) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            try:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                pass

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": stub.models})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
            action = stub.next_action()
            try:
                time.sleep(action.get("sleep", 0))
                status = action.get("status", 200)
                if status != 200:
                    payload = action.get("body", {"error": {"message": f"stub says {status}"}})
                    if payload == "echo-auth":  # a server that echoes request headers in its errors
                        payload = {"error": f"bad request; you sent {self.headers.get('Authorization')}"}
                    self._send(status, payload, action.get("headers"))
                    return
                content = action.get("content", "echo: " + body["messages"][-1]["content"])
                reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}]}
                if action.get("usage", True):
                    reply["usage"] = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                self._send(200, reply)
            finally:
                with stub.lock:
                    stub.in_flight -= 1

    return Handler


@pytest.fixture
def stub():
    s = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    server.daemon_threads = True
    s.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield s
    server.shutdown()
    server.server_close()


def _client(stub: Stub, **overrides) -> OpenAICompatLLM:
    fields = dict(provider="openai", base_url=stub.url, model="stub-model", backoff_s=0.01, timeout_s=5,
                  api_key_env="RAGLOOP_TEST_LLM_KEY")
    return OpenAICompatLLM(LLMConfig(**(fields | overrides)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "script, overrides, requests, min_seconds",
    [
        ([{"status": 500}], {}, 2, 0.0),
        ([{"status": 503}, {"status": 502}], {}, 3, 0.0),
        ([{"status": 429, "headers": {"Retry-After": "1"}}], {}, 2, 0.95),
        ([{"sleep": 1.0}], {"timeout_s": 0.3}, 2, 0.3),
    ],
    ids=["500-then-ok", "503-502-then-ok", "429-honours-retry-after", "timeout-then-ok"],
)
def test_openai_retries_transient_failures(stub, script, overrides, requests, min_seconds):
    stub.script.extend(script)
    llm = _client(stub, **overrides)
    start = time.monotonic()
    completion = llm.complete(ASK, max_tokens=20)
    elapsed = time.monotonic() - start
    assert completion.text == "echo: " + ASK[-1]["content"]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 7)
    assert completion.model == "stub-model" and completion.finish_reason == "stop"
    assert len(stub.requests) == requests
    assert elapsed >= min_seconds
    assert elapsed < min_seconds + 0.9  # backoff_s=0.01: nothing but the server's wait is long


@pytest.mark.parametrize("status", [400, 404, 422])
def test_openai_does_not_retry_client_errors(stub, status):
    stub.script.append({"status": status})
    with pytest.raises(LLMRequestError, match=f"{stub.url}/chat/completions answered HTTP {status}"):
        _client(stub).complete(ASK)
    assert len(stub.requests) == 1


def test_openai_gives_up_after_max_retries(stub):
    stub.default = {"status": 500}
    with pytest.raises(LLMUnavailable, match=r"/chat/completions failed 3 times; last: HTTP 500"):
        _client(stub, max_retries=2).complete(ASK)
    assert len(stub.requests) == 3


def test_openai_batch_stops_retrying_once_the_endpoint_is_down(stub):
    stub.default = {"status": 500}
    results = _client(stub, max_retries=1, concurrency=1).complete_many([ASK] * 4)
    assert all(isinstance(r, LLMUnavailable) for r in results)
    assert len(stub.requests) <= 5  # without the shared outage flag: 4 items x 2 attempts = 8


def test_openai_concurrency_never_exceeds_the_limit(stub):
    stub.default = {"sleep": 0.15}
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(9)]
    results = _client(stub, concurrency=3).complete_many(conversations)
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(9)]
    assert stub.max_in_flight == 3


def test_openai_counts_tokens_itself_when_the_server_omits_usage(stub):
    stub.script.append({"usage": False, "content": "twelve chars"})
    completion = _client(stub).complete(ASK)
    assert completion.usage.completion_tokens == 4  # 12 UTF-8 bytes / 3
    assert completion.usage.prompt_tokens == -(-len(ASK[0]["content"]) // 3)


@pytest.mark.parametrize(
    "json_mode, expected",
    [
        ("schema", {"type": "json_object", "schema": QA.model_json_schema()}),
        ("json_schema", {"type": "json_schema", "json_schema": {"name": "QA", "schema": QA.model_json_schema()}}),
        ("object", {"type": "json_object"}),
        ("off", None),
    ],
)
def test_openai_structured_asks_for_json_per_json_mode(stub, json_mode, expected):
    stub.script.append({"content": GOOD.model_dump_json()})
    result = _client(stub, json_mode=json_mode).structured(ASK, QA, temperature=0.2, max_tokens=64, seed=7)
    assert result.value == GOOD
    body = stub.requests[0]["body"]
    assert body.get("response_format") == expected
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == ("stub-model", 0.2, 64, 7)


def test_openai_structured_many_reasks_and_keeps_order(stub):
    stub.script.extend([{"content": "not json", "sleep": 0.05}, {"content": '{"question": "b", "answer": "c"}'},
                        {"content": GOOD.model_dump_json()}])
    results = _client(stub, concurrency=1).structured_many([ASK, ASK], QA, max_repairs=1)
    assert [(r.value, r.attempts) for r in results] == [(GOOD, 2), (QA(question="b", answer="c"), 1)]
    reask = stub.requests[2]["body"]["messages"]
    assert reask[-2]["content"] == "not json" and "no JSON object" in reask[-1]["content"]


def test_openai_works_when_called_from_inside_an_event_loop(stub):
    async def main():
        return _client(stub).complete(ASK).text

    assert asyncio.run(main()) == "echo: " + ASK[-1]["content"]


# -- the API key ----------------------------------------------------------------------------------
SECRET = "sk-ragloop-test-4f9c1d"


def test_api_key_is_sent_as_bearer_and_never_leaks(stub, monkeypatch, caplog):
    monkeypatch.setenv("RAGLOOP_TEST_LLM_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    llm = _client(stub, max_retries=1)
    stub.script.extend([{"status": 500}, {"status": 400, "body": "echo-auth"}])
    with pytest.raises(LLMRequestError, match="HTTP 400") as rejected:
        llm.complete(ASK)
    stub.default = {"status": 503}
    with pytest.raises(LLMUnavailable) as down:
        llm.complete(ASK)
    assert stub.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert "***" in str(rejected.value)  # the server echoed the header; the message blanks the key
    leaks = [text for text in (repr(llm), repr(llm.config), str(rejected.value), str(down.value), caplog.text,
                               *(r.getMessage() for r in caplog.records)) if SECRET in text]
    assert leaks == []
    assert caplog.records, "the retries were logged"


def test_no_authorization_header_without_the_key(stub, monkeypatch):
    monkeypatch.delenv("RAGLOOP_TEST_LLM_KEY", raising=False)
    _client(stub).complete(ASK)
    assert "Authorization" not in stub.requests[0]["headers"]


def test_rejected_credentials_are_a_config_error(stub, monkeypatch):
    monkeypatch.setenv("RAGLOOP_TEST_LLM_KEY", SECRET)
    stub.script.append({"status": 401})
    with pytest.raises(LLMConfigError, match=r"refused the credentials \(HTTP 401\); check \$RAGLOOP_TEST_LLM_KEY"):
        _client(stub).structured(ASK, QA)
    assert len(stub.requests) == 1


# -- preflight -------------------------------------------------------------------------------------
def test_preflight_fails_fast_when_nothing_listens():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    llm = OpenAICompatLLM(LLMConfig(provider="openai", base_url=url, model="m"))
    start = time.monotonic()
    with pytest.raises(LLMUnavailable, match=f"no OpenAI-compatible endpoint answers at {url}/models"):
        llm.preflight(100)
    assert time.monotonic() - start < PREFLIGHT_TIMEOUT_S + 1


@pytest.mark.parametrize(
    "models, overrides, required, error, match",
    [
        ([{"id": "stub-model"}], {"model": "wanted-model"}, 10, LLMConfigError,
         "model 'wanted-model' is not served by"),
        ([{"id": "a"}, {"id": "b"}], {"model": None}, 10, LLMConfigError, r"serves \['a', 'b'\]; set llm.model"),
        ([{"id": "stub-model"}], {"n_ctx": 512}, 1000, LLMConfigError, "context window 512 tokens < 1000 required"),
        ([{"id": "stub-model", "max_model_len": 4096}], {"n_ctx": 512}, 5000, LLMConfigError, "context window 4096"),
        # llm.model unset: the only served model's reported window counts, not llm.n_ctx (issue 17, kind 10)
        ([{"id": "small-server", "meta": {"n_ctx": 1024}}], {"model": None, "n_ctx": 4096}, 2000, LLMConfigError,
         "context window 1024 tokens < 2000 required"),
    ],
    ids=["model-not-listed", "model-ambiguous", "window-too-small", "window-reported-by-server",
         "window-reported-model-unset"],
)
def test_preflight_rejects(stub, models, overrides, required, error, match):
    stub.models = models
    with pytest.raises(error, match=match):
        _client(stub, **overrides).preflight(required)


@pytest.mark.parametrize(
    "models, configured, model_id, window",
    [
        ([{"id": "stub-model"}, {"id": "other"}], "stub-model", "stub-model", 4096),
        ([{"id": "only-one"}], None, "only-one", 4096),
        ([{"id": "stub-model", "max_model_len": 8192}], "stub-model", "stub-model", 8192),
    ],
)
def test_preflight_reports_the_served_model(stub, models, configured, model_id, window):
    stub.models = models
    llm = _client(stub, model=configured)
    report = llm.preflight(1000)
    assert (report["model_id"], report["context_window"], report["base_url"]) == (model_id, window, stub.url)
    assert llm.model_id == model_id
    llm.complete(ASK)
    assert stub.requests[0]["body"]["model"] == model_id


# -- progress: on_done once per item ------------------------------------------------------------
def test_scripted_batches_call_on_done_once_per_item_failures_included():
    done = []
    llm = ScriptedLLM(["a", LLMRequestError("bad"), "c"])
    out = llm.complete_many([ASK, ASK, ASK], on_done=lambda: done.append(1))
    assert len(out) == 3 and isinstance(out[1], LLMRequestError) and len(done) == 3
    llm.add("nope", GOOD.model_dump_json(), LLMRequestError("down"))
    results = llm.structured_many([ASK, ASK], QA, max_repairs=1, on_done=lambda: done.append(2))
    assert [r.attempts for r in results] == [2, 1] and done[3:] == [2, 2], "once per conversation, not per attempt"
    assert "on_done" not in llm.requests[-1], "never passed on to a request"


def test_openai_batches_call_on_done_once_per_item_even_when_the_endpoint_is_down(stub):
    done = []
    stub.default = {"status": 500}
    results = _client(stub, max_retries=1, concurrency=2).complete_many([ASK] * 5, on_done=lambda: done.append(1))
    assert all(isinstance(r, LLMUnavailable) for r in results) and len(done) == 5
    stub.default = {}
    stub.script.extend([{"content": "not json"}, {"content": GOOD.model_dump_json()}, {"content": GOOD.model_dump_json()}])
    results = _client(stub, concurrency=1).structured_many([ASK, ASK], QA, max_repairs=1, on_done=lambda: done.append(2))
    assert [r.value for r in results] == [GOOD, GOOD] and done[5:] == [2, 2]
