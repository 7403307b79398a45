"""A real Prefect server on 127.0.0.1: serve the deployments, emit `ragloop.prompt.changed` with
`ragloop prompts check --emit`, and see the triggered prompt-changed flow run complete."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, stop_process
from tests.flows.test_eval_flow import CORPUS, QRELS, QUERIES

pytestmark = pytest.mark.integration
BIN = os.path.dirname(sys.executable)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_prompt_change_event_triggers_a_gated_eval(tmp_path):
    lake, prompts = tmp_path / "lake", tmp_path / "prompts"
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    (beir / "qrels" / "test.tsv").write_text(QRELS)
    shutil.copytree(REPO / "prompts", prompts)
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGLOOP_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               RAGLOOP_LAKE=str(lake), RAGLOOP_PROMPTS_DIR=str(prompts), RAGLOOP_CONFIG=str(REPO / "ragloop.yaml"))
    ragloop = [os.path.join(BIN, "ragloop")]
    subprocess.run(ragloop + ["import-beir", str(beir), "--chunking", "none", "--json"], env=env, cwd=tmp_path,
                   check=True, capture_output=True, timeout=600)
    # The baseline: the prompts as they were, evaluated and promoted.
    subprocess.run(ragloop + ["eval", "--promote", "--json"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=600)

    served = {**env, "PREFECT_API_URL": api}
    logs = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([os.path.join(BIN, "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=logs, stderr=subprocess.STDOUT)
    serve = None
    try:
        _wait(lambda: _get(f"{api}/health"), 180, "the Prefect server")
        serve = subprocess.Popen([sys.executable, "-m", "ragloop.deployments.serve"], env={**served, "PYTHONPATH": str(REPO)},
                                 cwd=tmp_path, stdout=logs, stderr=subprocess.STDOUT)
        names = _wait(lambda: {d["name"] for d in _post(f"{api}/deployments/filter", {})} >= {"nightly", "prompt-changed"}
                      and {d["name"]: d for d in _post(f"{api}/deployments/filter", {})}, 120, "the served deployments")
        assert names["nightly"]["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        time.sleep(3)  # the trigger is registered with the deployment; give the event runner a moment

        answer = prompts / "answer.yaml"
        answer.write_text(answer.read_text().replace("Answer in one to three sentences", "Answer in one or two sentences"))
        checked = subprocess.run(ragloop + ["prompts", "check", "--emit", "--json"], env=served, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
        summary = json.loads(checked.stdout)
        assert checked.returncode == 0 and summary["emitted"] == 1 and summary["changed"][0]["name"] == "answer"

        def finished():
            runs = _post(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": ["prompt-changed"]}}})
            done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
            return done[0] if done else None

        run = _wait(finished, 300, "the triggered prompt-changed flow run")
        assert run["state_type"] == "COMPLETED", run["state"]
        assert run["parameters"] == {"prompt": "answer", "prompt_hash": summary["changed"][0]["prompt_hash"],
                                     "lake": summary["lake"]}, "the event names the lake it was checked against"
        # what the UI shows for it: the eval's metrics/gate and the monitor's headline, as artifacts keyed by lake
        from ragloop.tasks.reporting import artifact_key

        artifacts = _post(f"{api}/artifacts/filter", {"limit": 100, "offset": 0, "sort": "CREATED_DESC"})
        keys = {a["key"] for a in artifacts}
        wanted = {artifact_key(name, summary["lake"]) for name in ("ragloop-eval", "ragloop-monitor", "ragloop-prompt-changed")}
        assert wanted <= keys, keys
        assert any("Gate:" in (a["data"] or "") for a in artifacts if a["key"] == artifact_key("ragloop-eval", summary["lake"]))
    finally:
        stop_process(serve)
        stop_process(server)
        logs.close()


def _get(url):
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _post(url, body):
    try:
        response = httpx.post(url, json=body, timeout=10)
        return response.json() if response.status_code == 200 else []
    except httpx.HTTPError:
        return []
