"""CLI flow runs go without Prefect heartbeats unless the environment asks for them (flows/common.py)."""

from __future__ import annotations

import pytest

from ragloop.flows.cli import _ad_hoc, _parser
from ragloop.flows.common import HEARTBEAT_ENV, ad_hoc_runs


def heartbeat_frequency():
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


@pytest.fixture
def no_heartbeat_env(monkeypatch):
    for name in HEARTBEAT_ENV:
        monkeypatch.delenv(name, raising=False)


def test_ad_hoc_runs_turn_heartbeats_off_and_back(no_heartbeat_env):
    before = heartbeat_frequency()
    with ad_hoc_runs():
        assert heartbeat_frequency() is None
    assert heartbeat_frequency() == before


def test_a_warm_process_reuses_its_heartbeat_free_settings_until_the_environment_changes(no_heartbeat_env, monkeypatch):
    from prefect.settings import get_current_settings

    # `ragloop --json` run in-process by earlier tests sets PREFECT_LOGGING_LEVEL=WARNING (setdefault): start without it
    monkeypatch.delenv("PREFECT_LOGGING_LEVEL", raising=False)
    with ad_hoc_runs():
        first = get_current_settings()
    with ad_hoc_runs():
        assert get_current_settings() is first, "no second copy of every setting for the same settings"
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    with ad_hoc_runs():
        changed = get_current_settings()
        assert changed is not first and changed.logging.level == "WARNING" and heartbeat_frequency() is None


def test_a_frequency_set_in_the_environment_is_kept(monkeypatch):
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    before = heartbeat_frequency()
    with ad_hoc_runs():
        assert heartbeat_frequency() == before


@pytest.mark.parametrize("argv, off", [
    (["index", "--source", "docs"], True),
    (["ingest", "--source", "docs"], True),
    (["run"], True),
    (["runs"], False),  # read-only commands never import prefect for this
    (["lineage", "RUN"], False),
])
def test_the_cli_runs_flows_ad_hoc(no_heartbeat_env, argv, off):
    with _ad_hoc(_parser().parse_args(argv)):
        assert (heartbeat_frequency() is None) is off
