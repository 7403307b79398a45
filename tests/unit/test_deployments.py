"""Deployments build without a server: names, schedules, triggers; the --emit hook needs a server."""

from __future__ import annotations

import json

import pytest

from ragloop.deployments.definitions import PROMPT_CHANGED_EVENT, build_deployments
from ragloop.flows.cli import main
from ragloop.tasks.settings import ConfigError, load_settings


def test_deployments_have_their_names_schedules_and_triggers():
    settings = load_settings(overrides={"deployments": {"nightly_cron": "30 3 * * *", "timezone": "Europe/Berlin"}})
    deployments = {d.name: d for d in build_deployments(settings)}
    assert set(deployments) == {"nightly", "prompt-changed", "index", "eval"}
    (schedule,) = deployments["nightly"].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 3 * * *", "Europe/Berlin")
    (trigger,) = deployments["prompt-changed"].triggers
    assert trigger.expect == {PROMPT_CHANGED_EVENT}
    assert trigger.parameters == {"prompt": "{{ event.payload.name }}", "prompt_hash": "{{ event.payload.prompt_hash }}",
                                  "lake": "{{ event.payload.lake }}"}, "the triggered run evaluates the lake that was checked"
    assert not deployments["index"].schedules and not deployments["eval"].triggers
    from ragloop.tasks.storage import Lake

    lake = Lake(settings.lake).uri
    assert lake.startswith("/") and all(deployments[n].parameters == {"lake": lake} for n in ("nightly", "index", "eval")), \
        "the served deployments carry the lake resolved when they were built, not the serving process's working directory"
    assert all("ragloop" in d.tags for d in deployments.values())


@pytest.mark.parametrize("field, value, match", [("timezone", "Mars/Olympus", "unknown IANA timezone"),
                                                 ("nightly_cron", "0 2 * *", "5 cron fields")])
def test_bad_schedule_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(overrides={"deployments": {field: value}})


def test_emit_without_a_server_exits_2_naming_what_to_do(tmp_path, monkeypatch, capsys):
    from tests.conftest import REPO

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from ragloop.tasks.storage import Lake

    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    assert main(["prompts", "check", "--emit", "--lake", str(tmp_path / "lake"), "--json"]) == 0, \
        "never-used prompts are listed as new but not emitted: nothing to send"
    assert json.loads(capsys.readouterr().out)["emitted"] == 0
    Lake(str(tmp_path / "lake")).record_prompt("answer", "0" * 64, "an older answer prompt")
    code = main(["prompts", "check", "--emit", "--lake", str(tmp_path / "lake"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and "PREFECT_API_URL" in out["error"]


def test_work_pool_deployments_are_the_served_ones_with_module_entrypoints():
    settings = load_settings(overrides={"deployments": {"job_variables": {"env": {"RAGLOOP_CONFIG": "/app/ragloop.yaml"}}}})
    served = {d.name: d for d in build_deployments(settings)}
    pooled = {d.name: d for d in build_deployments(settings, for_work_pool=True)}
    assert set(pooled) == set(served)
    for name, d in pooled.items():
        assert (d.schedules, d.triggers, d.parameters, d.tags) == \
            (served[name].schedules, served[name].triggers, served[name].parameters, served[name].tags), name
        assert d.entrypoint.startswith("ragloop.flows.") and ":" not in d.entrypoint, \
            "a worker imports the flow from the installed package: no source upload, no image"
        assert d.job_variables == {"env": {"RAGLOOP_CONFIG": "/app/ragloop.yaml"}} and not served[name].job_variables
    assert pooled["index"].entrypoint == "ragloop.flows.index.index_corpus"
    assert pooled["nightly"].job_variables is not pooled["index"].job_variables, "Prefect writes into them"


@pytest.mark.parametrize("api_url, match", [(None, "needs a Prefect server.*PREFECT_API_URL"),
                                            ("http://127.0.0.1:9/api", "no Prefect server answers there")])
def test_deploy_without_a_server_exits_2_in_one_line(tmp_path, monkeypatch, capsys, api_url, match):
    import re

    if api_url:
        monkeypatch.setenv("PREFECT_API_URL", api_url)
    else:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
    code = main(["deploy", "--work-pool", "ragloop", "--lake", str(tmp_path / "lake"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and out["exit_code"] == 2 and re.search(match, out["error"]) and "\n" not in out["error"]
    assert not (tmp_path / "lake").exists(), "nothing was done"
