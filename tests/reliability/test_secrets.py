"""Secrets: an API key given through the environment never lands in the lake, the logs, the traces,
the reports, the Prefect backend (flow runs, logs, artifacts) or the CLI's output.

The key is really used (the endpoint rejects requests without it) and the endpoint echoes it back
in its error bodies, the way some servers do; then every byte the run left behind is scanned.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from ragloop.flows.cli import main
from tests.reliability.fault_server import FaultServer
from tests.conftest import write_files
from tests.reliability.helpers import copy_answer, import_station_golden, station_docs

SECRET = "sk-rl-9f3b7c2e4d1a8f6b0c5e7d9a2b4c6e8f"
HOOK_TOKEN = "hk7Q2xW9vLp4Rz8Tn3"  # the secret part of a webhook URL (Slack puts it in the path)
LEAKS = re.compile("|".join(re.escape(s) for s in (SECRET, SECRET[6:22], HOOK_TOKEN)))  # a secret, or a recognisable piece


def scan(paths: list[Path]) -> tuple[int, list[str]]:
    """(files scanned, files holding the secret), over every regular file under the paths."""
    scanned, hits = 0, []
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        for path in files:
            scanned += 1
            data = path.read_bytes()
            if LEAKS.search(data.decode("latin-1")) or LEAKS.search(data.decode("utf-16-le", "ignore")):
                hits.append(str(path))
    return scanned, hits


def test_the_scanner_finds_a_planted_secret(tmp_path):
    write_files(tmp_path / "control", {"a/clean.txt": "nothing here", "b/leak.parquet": b"\x00PAR1" + SECRET[6:22].encode()})
    assert scan([tmp_path / "control"]) == (2, [str(tmp_path / "control/b/leak.parquet")])


def _prefect_database_dir() -> Path:
    import prefect.settings

    url = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    return Path(url.split(":///", 1)[1]).parent


def _drain_prefect_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()


def test_an_api_key_from_env_never_appears_anywhere(prefect_backend, hash_embedder, tmp_path, lake_dir, monkeypatch,
                                                     capfd, caplog, figures):
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    src = write_files(tmp_path / "src", station_docs(6))
    plans = {"item-01": [{"status": 500}], "item-02": [{"status": 400}], "item-03": [{"status": 429, "retry_after": "0"}]}
    with FaultServer(plans, reply=copy_answer, require_key=SECRET) as server:
        for name, value in {"PROVIDER": "openai", "BASE_URL": server.url, "MODEL": "fault-model",
                            "BACKOFF_S": "0.01", "MAX_RETRIES": "1"}.items():
            monkeypatch.setenv(f"RAGLOOP_LLM__{name}", value)
        monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")
        monkeypatch.setenv("RAGLOOP_GATE__MAX_FAILED_FRACTION", "0.5")
        assert main(["index", "--source", str(src), "--lake", str(lake_dir)]) == 0
        import_station_golden(tmp_path, lake_dir)
        code = main(["eval", "--lake", str(lake_dir), "--retrieval", "vector", "--k", "2", "--promote"])  # watched
        # a key pasted into the config is refused without echoing it back
        monkeypatch.setenv("RAGLOOP_LLM__API_KEY", SECRET)
        bad_config = main(["eval", "--lake", str(lake_dir), "--json"])
        monkeypatch.delenv("RAGLOOP_LLM__API_KEY")
    # the monitor: alerts (a budget every run exceeds) go to a webhook whose URL holds a token; nothing
    # listens there, so the sink fails - and neither its error, the report nor the artifacts show the URL
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:9/services/T0/B0/{HOOK_TOKEN}")
    monkeypatch.setenv("RAGLOOP_MONITOR__MAX_TOKENS_PER_ITEM", "1")
    monkeypatch.setenv("RAGLOOP_MONITOR__WEBHOOK_RETRIES", "0")
    monitored = main(["monitor", "--lake", str(lake_dir), "--json"])
    assert code == 0 and bad_config == 2 and monitored == 0
    assert list((lake_dir / "reports").glob("*/report.html")) and (lake_dir / "alerts" / "alerts.jsonl").exists()
    assert server.requests, "the endpoint was called"
    assert server.attempts["item-02"] == 1 and server.attempts["item-01"] == 2
    _drain_prefect_logs()
    out = capfd.readouterr()

    scanned, hits = scan([lake_dir, _prefect_database_dir()])
    streams = {"stdout": out.out, "stderr": out.err, "logging": caplog.text,
               **{f"log record {i}": r.getMessage() for i, r in enumerate(caplog.records)}}
    leaked_streams = [name for name, text in streams.items() if LEAKS.search(text)]
    assert scanned > 20 and hits == [], f"the key leaked into {hits}"
    assert leaked_streams == []
    assert "***" in out.out + out.err + caplog.text or any(
        "***" in (r.get("error") or "") for r in _eval_items(lake_dir)), "the echoed key was blanked, not dropped silently"
    figures("6_secrets", files_scanned=scanned, log_records_scanned=len(caplog.records), files_with_secret=len(hits),
            streams_with_secret=len(leaked_streams), result="clean" if not hits and not leaked_streams else "LEAK")


def _eval_items(lake_dir: Path) -> list[dict]:
    from ragloop.tasks.storage import Lake

    lake = Lake(str(lake_dir))
    runs = [r for r in lake.read_runs().to_pylist() if r["flow"] == "eval"]
    tables = [lake.read_eval_items(r["run_id"]) for r in runs]
    return [row for t in tables if t is not None for row in t.to_pylist()]
