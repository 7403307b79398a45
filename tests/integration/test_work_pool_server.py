"""A real Prefect server on 127.0.0.1 and a process work pool: `ragloop deploy --work-pool` registers the
deployments, a `prefect worker` on this machine picks up a run of `index`, and its result is in the lake."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO, stop_process
from tests.integration.test_deployments_server import _free_port, _get, _post, _wait

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~95 s on 2 shared cores (server start, worker, index run)
BIN = os.path.dirname(sys.executable)


def test_deploy_to_a_process_work_pool_and_a_worker_runs_index(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "lakes.md").write_text("# Lakes\n\nA lake is a body of water surrounded by land.\n")
    (corpus / "rivers.md").write_text("# Rivers\n\nA river flows downhill into a lake or the sea.\n")
    lake = tmp_path / "lake"
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGLOOP_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               RAGLOOP_LAKE=str(lake), RAGLOOP_CONFIG=str(REPO / "ragloop.yaml"))
    served = {**env, "PREFECT_API_URL": api}
    ragloop, prefect = os.path.join(BIN, "ragloop"), os.path.join(BIN, "prefect")
    logs = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=logs, stderr=subprocess.STDOUT)
    worker = None
    try:
        _wait(lambda: _get(f"{api}/health"), 180, "the Prefect server")
        missing = subprocess.run([ragloop, "deploy", "--work-pool", "nowhere", "--json"], env=served, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=300)
        assert missing.returncode == 2 and "prefect work-pool create nowhere" in json.loads(missing.stdout)["error"]

        subprocess.run([prefect, "work-pool", "create", "local", "--type", "process"], env=served, cwd=tmp_path,
                       check=True, capture_output=True, timeout=120)
        deployed = subprocess.run([ragloop, "deploy", "--work-pool", "local", "--json"], env=served, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        summary = json.loads(deployed.stdout)
        by_name = {d["name"]: d for d in summary["deployments"]}
        assert set(by_name) == {"nightly", "prompt-changed", "index", "eval"}
        assert by_name["nightly"]["schedules"] == ["0 2 * * *"]
        assert by_name["prompt-changed"]["triggers"] == ["ragloop.prompt.changed"]

        registered = {d["name"]: d for d in _post(f"{api}/deployments/filter", {})}
        assert {registered[n]["work_pool_name"] for n in by_name} == {"local"}
        assert registered["nightly"]["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        assert registered["index"]["parameters"] == {"lake": str(lake)}
        assert registered["index"]["entrypoint"] == "ragloop.flows.index.index_corpus"

        worker = subprocess.Popen([prefect, "worker", "start", "--pool", "local", "--type", "process"],
                                  env=served, cwd=tmp_path, stdout=logs, stderr=subprocess.STDOUT)
        created = httpx.post(f"{api}/deployments/{registered['index']['id']}/create_flow_run",
                             json={"parameters": {"sources": [str(corpus)], "chunking": "none"}}, timeout=30)
        run = created.json()
        assert created.status_code == 201 and run["parameters"]["lake"] == str(lake), run

        def finished():
            state = _get_json(f"{api}/flow_runs/{run['id']}")
            return state if state and state["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        done = _wait(finished, 420, "the worker's index flow run")
        assert done["state_type"] == "COMPLETED", (done["state"], (tmp_path / "server.log").read_text()[-3000:])
    finally:
        stop_process(worker)
        stop_process(server)
        logs.close()

    from ragloop.tasks.storage import Lake

    runs = Lake(str(lake)).read_runs().to_pylist()
    assert [(r["flow"], r["status"]) for r in runs if r["flow"] == "index"] == [("index", "ok")]
    table = Lake(str(lake)).read_ref("serving")
    assert table and Lake(str(lake)).connect_vectors().open_table(table["table"]).count_rows() == 2


def _get_json(url):
    try:
        response = httpx.get(url, timeout=10)
        return response.json() if response.status_code == 200 else None
    except httpx.HTTPError:
        return None
