"""tasks/llm_remote.py: RemoteLLM over an in-process batch map (what the Dask runner's map does, without
Dask): input order, per-item errors, outage fast-fail, repair rounds, progress, one model per process."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from ragloop.tasks import llm_remote
from ragloop.tasks.llm import LLMRequestError, LLMUnavailable, ScriptedLLM
from ragloop.tasks.llm_remote import Batch, LLMJob, RemoteLLM, batches, complete_batch, on_workers, worker_llm
from ragloop.tasks.settings import LLMConfig

CONFIG = LLMConfig(provider="fake")


def _echo(messages) -> str:
    return "re: " + messages[-1]["content"]


class EchoLLM(ScriptedLLM):
    """Replies with the last turn (endless: a function of the messages); 'fail' and 'down' raise."""

    def complete(self, messages, **params):
        content = messages[-1]["content"]
        if content == "fail":
            raise LLMRequestError("rejected")
        if content == "down":
            raise LLMUnavailable("nothing listening")
        self.replies.append(_echo)
        return super().complete(messages, **params)


def _conversations(*contents):
    return [[{"role": "user", "content": c}] for c in contents]


class InProcess:
    """A BatchMap that answers each batch with complete_batch here, recording the batches sent."""

    def __init__(self) -> None:
        self.sent: list[Batch] = []

    def __call__(self, to_send, job):
        for batch in to_send:
            self.sent.append(batch)
            yield batch, complete_batch(batch, job)


@pytest.fixture(autouse=True)
def _fresh_worker_models(monkeypatch):
    monkeypatch.setattr(llm_remote, "_WORKER_LLMS", {})


def _remote(model, size=2):
    remote = InProcess()
    return RemoteLLM(model, LLMJob(CONFIG, lambda config: model), remote, items_per_task=size), remote


def test_batches_split_in_order_with_the_params():
    out = batches(_conversations("a", "b", "c"), {"temperature": 0.0}, size=2)
    assert [[m[0]["content"] for m in b.conversations] for b in out] == [["a", "b"], ["c"]]
    assert all(b.params == {"temperature": 0.0} for b in out)


def test_complete_many_keeps_order_and_reports_each_item():
    llm, remote = _remote(EchoLLM())
    done = []
    out = llm.complete_many(_conversations("a", "b", "fail", "d", "e"), on_done=lambda: done.append(1), max_tokens=9)
    assert [r.text if not isinstance(r, Exception) else type(r).__name__ for r in out] == [
        "re: a", "re: b", "LLMRequestError", "re: d", "re: e"]
    assert len(done) == 5 and len(remote.sent) == 3 and remote.sent[0].params == {"max_tokens": 9}


def test_an_outage_stops_sending_batches_and_skips_the_rest():
    llm, remote = _remote(EchoLLM())
    done = []
    out = llm.complete_many(_conversations("a", "down", "c", "d", "e", "f"), on_done=lambda: done.append(1))
    assert out[0].text == "re: a" and isinstance(out[1], LLMUnavailable)
    assert all(isinstance(r, LLMUnavailable) and "skipped" in str(r) for r in out[2:])
    assert len(remote.sent) == 1, "no batch is sent after the one that found the endpoint down"
    assert len(out) == len(done) == 6


class Answer(BaseModel):
    answer: str


def test_structured_many_re_asks_only_the_unparsed_in_rounds():
    model = ScriptedLLM()
    llm, remote = _remote(model, size=4)
    model.add('{"answer": "one"}', "not json", '{"answer": "two"}')
    done = []
    results = llm.structured_many(_conversations("q1", "q2"), Answer, on_done=lambda: done.append(1))
    assert [r.value.answer for r in results] == ["one", "two"]
    assert [r.attempts for r in results] == [1, 2] and len(done) == 2
    assert [len(b.conversations) for b in remote.sent] == [2, 1], "round 2 re-asks the second alone"
    assert "could not be used" in remote.sent[1].conversations[0][-1]["content"]


def test_structured_raises_an_outage_and_keeps_a_rejected_request_as_the_error():
    llm, _ = _remote(EchoLLM())
    assert llm.structured(_conversations("fail")[0], Answer).error.startswith("LLMRequestError")
    with pytest.raises(LLMUnavailable, match="nothing listening"):
        llm.structured(_conversations("down")[0], Answer)


def test_worker_builds_the_model_once_per_config():
    built = []

    def factory(config):
        built.append(config)
        return EchoLLM()

    job = LLMJob(CONFIG, factory)
    assert worker_llm(job) is worker_llm(LLMJob(CONFIG, factory))
    worker_llm(LLMJob(LLMConfig(provider="fake", seed=1), factory))
    assert len(built) == 2


def test_identity_and_tokens_come_from_the_local_model():
    local = ScriptedLLM(model_id="m@1", context_window=123)
    llm = on_workers(local, CONFIG, lambda config: local, InProcess())
    assert isinstance(llm, RemoteLLM) and llm.model_id == "m@1" and llm.context_window == 123
    assert llm.count_tokens("a b c") == 3 and llm.preflight(100)["model_id"] == "m@1"
    assert on_workers(local, CONFIG, lambda config: local, None) is local, "the local runner: unchanged"
    assert on_workers(None, CONFIG, lambda config: local, InProcess()) is None
