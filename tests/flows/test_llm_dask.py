"""runner.kind dask (issue 22): synth's question writing and eval's rewrites and answers run as `llm-batch`
Prefect tasks on a LocalCluster of 2 processes, reported to the flow's API as children of its run, and give the
local runner's golden set and answers. PassageCompleter (a reply that is a function of the messages alone)
crosses to the workers by cloudpickle; the flow process's own instance then answers nothing."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from ragloop.flows import evaluate as eval_flow
from ragloop.flows import index as index_flow
from ragloop.flows import synth as synth_flow
from ragloop.flows.runners import flow_api_url, llm_map
from ragloop.tasks.llm import Completion, Usage
from ragloop.tasks.llm_remote import on_workers
from ragloop.tasks.settings import load_settings
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, use_fakes, write_files
from tests.flows.test_eval_flow import JudgeFake
from tests.synth_fakes import DOCS, PassageCompleter

GOLDEN_COLUMNS = ["qa_id", "question", "reference_answer", "reference_chunk_ids", "qa_type", "persona", "generator"]


class CountingCompleter(PassageCompleter):
    """PassageCompleter counting the calls it answers in this process."""

    def __init__(self) -> None:
        self.calls = 0

    def complete(self, messages, **params):
        self.calls += 1
        return super().complete(messages, **params)


class CountingJudge(JudgeFake):
    """JudgeFake counting the calls it answers in this process."""

    calls = 0

    def complete(self, messages, **params):
        self.calls += 1
        return super().complete(messages, **params)


@pytest.fixture
def indexed(monkeypatch, fake_embedder, tmp_path):
    """An indexed lake of the synth corpus (local runner); the prompts and a small synth budget."""
    use_fakes(embedder=lambda config: fake_embedder)
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    lake = tmp_path / "indexed"
    assert index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", DOCS))], lake=str(lake))["status"] == "ok"
    return lake


def _dask(monkeypatch):
    monkeypatch.setenv("RAGLOOP_RUNNER__KIND", "dask")
    monkeypatch.setenv("RAGLOOP_RUNNER__WORKERS", "2")


def _copy(lake, to):
    shutil.copytree(lake, to)
    return str(to)


def _task_runs(state) -> dict[str, list]:
    """Task-run name prefix (llm-batch, generate-qa, ...) -> the task runs of the flow run that ended in `state`."""
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.name.rsplit("-", 1)[0], []).append(run)
    return out


def test_dask_synth_writes_the_local_golden_set_from_workers(prefect_backend, indexed, monkeypatch, tmp_path):
    local_llm, dask_llm = CountingCompleter(), CountingCompleter()
    use_fakes(llm=lambda config: local_llm)
    local = synth_flow.synth_golden_set(lake=_copy(indexed, tmp_path / "local"), size=8)
    _dask(monkeypatch)
    use_fakes(llm=lambda config: dask_llm)
    state = synth_flow.synth_golden_set(lake=_copy(indexed, tmp_path / "dask"), size=8, return_state=True)
    dask = state.result()
    assert local["status"] == dask["status"] != "failed" and local["items"]["new"] > 0
    assert dask["golden_set_id"] == local["golden_set_id"]
    assert dask["items"] == local["items"] and dask["by_type"] == local["by_type"]
    rows = {name: Lake(str(tmp_path / name)).read_golden(local["golden_set_id"]).select(GOLDEN_COLUMNS).to_pylist()
            for name in ("local", "dask")}
    assert rows["dask"] == rows["local"]
    assert local_llm.calls > 0 and dask_llm.calls == 0, "with the dask runner the workers answer, not the flow"
    runs = _task_runs(state)
    assert runs.get("llm-batch") and all(r.state.is_completed() for r in runs["llm-batch"]), sorted(runs)


def test_dask_eval_gives_the_local_answers_and_metrics(prefect_backend, indexed, monkeypatch, tmp_path):
    use_fakes(llm=lambda config: PassageCompleter())
    golden = synth_flow.synth_golden_set(lake=str(indexed), size=8)
    assert golden["status"] != "failed" and golden["items"]["total"] > 0
    monkeypatch.setenv("RAGLOOP_EVAL__REWRITE_PROMPT", "query_rewrite")
    monkeypatch.setenv("RAGLOOP_EVAL__JUDGE", '{"provider": "fake"}')
    local_llm, local_judge = CountingCompleter(), CountingJudge()
    dask_llm, dask_judge = CountingCompleter(), CountingJudge()
    use_fakes(llm=lambda config: local_judge if config.provider == "fake" else local_llm)
    local = eval_flow.evaluate_chain(lake=_copy(indexed, tmp_path / "local"))
    _dask(monkeypatch)
    use_fakes(llm=lambda config: dask_judge if config.provider == "fake" else dask_llm)
    state = eval_flow.evaluate_chain(lake=_copy(indexed, tmp_path / "dask"), return_state=True)
    dask = state.result()
    # gate_failed: JudgeFake fails every factual_correctness judgment
    assert local["status"] == dask["status"] != "failed", (local.get("error"), dask.get("error"))
    assert dask["metrics"] == local["metrics"] and dask["items"] == local["items"]
    assert "faithfulness" in dask["metrics"] and dask["failed_judgments"] == local["failed_judgments"]
    columns = ["qa_id", "answer", "retrieved_chunk_ids", "metrics", "failed_metrics"]
    items = {name: sorted(Lake(str(tmp_path / name)).read_eval_items(summary["run_id"]).select(columns).to_pylist(),
                          key=lambda r: r["qa_id"])
             for name, summary in (("local", local), ("dask", dask))}
    assert items["dask"] == items["local"]
    assert sum(1 for i in items["dask"] if i["answer"]) > 0
    traces = Lake(str(tmp_path / "dask")).read_traces(dask["run_id"]).to_pylist()
    assert {"rewrite", "answer"} <= {t["step"] for t in traces}
    assert local_llm.calls > 0 and dask_llm.calls == 0, "with the dask runner the workers answer, not the flow"
    assert local_judge.calls > 0 and dask_judge.calls == 0, "and judge"
    assert dask["llm_cache"]["misses"] == local["llm_cache"]["misses"] > 0, "the cache stays in the flow process"
    assert dask["llm_cache"]["by_role"]["judge"]["misses"] > 0
    assert _task_runs(state).get("llm-batch")


def test_dask_eval_whose_calls_all_hit_the_cache_starts_no_cluster(prefect_backend, indexed, monkeypatch):
    import distributed

    use_fakes(llm=lambda config: PassageCompleter())
    assert synth_flow.synth_golden_set(lake=str(indexed), size=8)["status"] != "failed"
    first = eval_flow.evaluate_chain(lake=str(indexed))
    _dask(monkeypatch)

    def no_cluster(*args, **kwargs):
        raise AssertionError("a LocalCluster was started")

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    state = eval_flow.evaluate_chain(lake=str(indexed), return_state=True)
    again = state.result()
    assert again["llm_cache"]["hits"] == first["llm_cache"]["misses"] > 0 and again["llm_cache"]["misses"] == 0
    assert again["metrics"] == first["metrics"]
    assert "llm-batch" not in _task_runs(state), "cache hits never go to a worker"


class ProbeLLM(PassageCompleter):
    """Replies with what the answering process sees: the Prefect API its settings name, and whether it
    started an ephemeral Prefect server of its own."""

    def complete(self, messages, **params):
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL

        own = any(s.server_process is not None for s in SubprocessASGIServer._instances.values())
        return Completion(text=json.dumps({"api_url": PREFECT_API_URL.value(), "own_server": own, "pid": os.getpid()}),
                          usage=Usage(1, 1), latency_ms=0.0, model=self.model_id, finish_reason="stop")


@flow(name="probe-workers")
def _probe_workers() -> tuple[str, list]:
    config = load_settings(overrides={"runner": {"kind": "dask", "workers": 1}, "llm": {"provider": "fake"}})
    with llm_map(config.runner) as remote:
        llm = on_workers(ProbeLLM(), config.llm, lambda c: ProbeLLM(), remote)
        replies = llm.complete_many([[{"role": "user", "content": "where?"}]])
    return flow_api_url(), [json.loads(r.text) for r in replies]


def test_workers_report_to_the_flow_api_when_it_is_an_ephemeral_server(prefect_backend):
    """With no PREFECT_API_URL the flow process starts an ephemeral server; its workers use that one
    instead of each starting another (a ~220 MB process apiece)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    harness = PREFECT_API_URL.value()
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert PREFECT_API_URL.value() is None
        state = _probe_workers(return_state=True)
        flow_api, replies = state.result()
    assert flow_api.startswith("http://127.0.0.1:") and flow_api != harness
    [reply] = replies
    assert reply["pid"] != os.getpid(), "answered on a worker"
    assert reply["api_url"] == flow_api and reply["own_server"] is False
