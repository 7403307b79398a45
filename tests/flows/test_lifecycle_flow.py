"""The run-lifecycle flow with fakes: one pass does the work, a second pass with nothing changed does none."""

from __future__ import annotations

import json
import re

from ragloop.flows.cli import main
from tests.conftest import REPO, use_fakes, write_files
from tests.flows.test_synth_flow import DOCS, PassageLLM


def test_second_night_with_nothing_changed_recomputes_nothing(prefect_backend, tmp_path, lake_dir, monkeypatch, fake_embedder, capsys):
    llm = PassageLLM()
    use_fakes(embedder=lambda config: fake_embedder)
    use_fakes(llm=lambda config: llm)
    use_fakes(llm=lambda config: llm)
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    monkeypatch.setenv("RAGLOOP_SYNTH__SIZE", "6")
    def complete_many(conversations, **params):
        llm.calls += len(conversations)
        return [_answer(c) for c in conversations]

    llm.complete_many = complete_many
    src = write_files(tmp_path / "src", DOCS)

    assert main(["run", "--source", str(src), "--lake", str(lake_dir), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "ok", first
    assert set(first["stages"]) == {"index", "synth", "eval", "monitor"}
    assert first["stages"]["monitor"]["observed"] == [first["stages"]["eval"]["run_id"]]
    assert first["report"] == first["stages"]["monitor"]["report"] and (lake_dir / "reports").is_dir()
    assert open(first["report"]).read().count("<table") >= 3
    assert first["stages"]["synth"]["items"]["new"] > 0 and "hit@1" in first["stages"]["eval"]["metrics"]

    calls = llm.calls
    assert main(["run", "--source", str(src), "--lake", str(lake_dir), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["stages"]["index"]["chunks"]["embedded"] == 0
    assert second["stages"]["synth"]["up_to_date"] and second["stages"]["synth"]["items"]["new"] == 0
    assert second["stages"]["eval"]["cached"] and second["stages"]["eval"]["run_id"] == first["stages"]["eval"]["run_id"]
    assert "already the baseline" in second["stages"]["eval"]["promotion"]["reason"], "not the first night's no_baseline story"
    assert llm.calls == calls, "no LLM call on a night with nothing changed"
    assert second["lineage"]["stage_runs"]["eval"] == first["stages"]["eval"]["run_id"]
    # the night is still observed (same values, counted as one more night) and nothing drifted
    monitor = second["stages"]["monitor"]
    assert monitor["observed"] == [second["run_id"]] and monitor["observations"] == 2
    assert monitor["checks"]["corpus"]["change_fraction"] == 0 and monitor["alerts"] == []

    assert main(["run", "--source", str(src), "--lake", str(lake_dir)]) == 0
    human = capsys.readouterr().out
    assert "nothing recomputed" in human and f"report: {lake_dir}" in human


def _answer(conversation):
    from ragloop.tasks.llm import Completion, Usage

    passages = re.findall(r'"""\n(.*?)\n"""', conversation[-1]["content"], re.S)
    text = passages[0].splitlines()[-1] if passages else "The documents do not say."
    return Completion(text=text, usage=Usage(1, 1), latency_ms=1.0, model="passage-fake@1", finish_reason="stop")


def test_a_failed_synth_reaches_every_sink_and_the_night_ends_failed(prefect_backend, tmp_path, lake_dir, monkeypatch,
                                                                    fake_embedder, capsys):
    from tests.unit.test_alerting import Receiver

    use_fakes(embedder=lambda config: fake_embedder)
    use_fakes(llm=lambda config: PassageLLM(garbage=True))  # nothing parses: synth fails
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    receiver = Receiver([])
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    try:
        src = write_files(tmp_path / "src", DOCS)
        code = main(["run", "--source", str(src), "--lake", str(lake_dir), "--json"])
        summary = json.loads(capsys.readouterr().out)
    finally:
        receiver.close()
    assert code == 1 and summary["status"] == "failed", summary
    assert "no accepted items" in summary["error"]
    assert set(summary["stages"]) == {"index", "synth", "monitor"}, "eval is skipped, the monitor still runs"
    monitor = summary["stages"]["monitor"]
    failed = [a for a in monitor["notified"] if a["kind"] == "stage_failed"]
    assert failed and failed[0]["metric"] == "stage.synth" and failed[0]["severity"] == "critical"
    assert {s["sink"]: s["status"] for s in monitor["sinks"]} == {"log": "sent", "jsonl": "sent", "artifact": "sent",
                                                                  "webhook": "sent"}
    assert any(a["kind"] == "stage_failed" for body in receiver.bodies for a in body["alerts"])
    jsonl = [json.loads(line) for line in (lake_dir / "alerts" / "alerts.jsonl").read_text().splitlines()]
    assert [a["kind"] for a in jsonl] == ["stage_failed"]

    import httpx
    from prefect.settings import PREFECT_API_URL

    runs = httpx.post(f"{PREFECT_API_URL.value()}/flow_runs/filter", json={
        "flows": {"name": {"any_": ["run-lifecycle"]}}, "sort": "START_TIME_DESC", "limit": 1}).json()
    assert runs[0]["state_type"] == "FAILED", "Prefect records the failed night as Failed, not Completed"
