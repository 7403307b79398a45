"""Alert sinks: the webhook against a real HTTP server on 127.0.0.1 (retries, Retry-After, final 4xx),
the JSONL file, the log, and one failing sink never silencing the others."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragloop.tasks import alerting
from ragloop.tasks.storage import Lake

ALERTS = [
    {"kind": "regression", "message": "ndcg@10 regressed: 0.5, 0.5 ...", "severity": "critical", "metric": "ndcg@10", "details": {}},
    {"kind": "corpus_drift", "message": "corpus changed by 30%", "severity": "warning", "metric": None, "details": {}},
    {"kind": "retrieval_drift", "message": "minor", "severity": "info", "metric": None, "details": {}},
]
CONTEXT = {"run_id": "mon-1", "at": "2026-11-25T02:00:00+00:00", "lake": "/lake", "report": "/lake/reports/mon-1/report.html"}


class Receiver:
    """A webhook endpoint on 127.0.0.1 answering from a script of (status, headers) per request."""

    def __init__(self, script: list[tuple[int, dict]]) -> None:
        self.script, self.bodies, self.paths = list(script), [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.bodies.append(json.loads(body))
                receiver.paths.append(self.path)
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/SECRETTOKEN"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(script=()):
        r = Receiver(list(script))
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_webhook_posts_a_slack_compatible_body(receiver_factory):
    r = receiver_factory()
    record = alerting.WebhookSink(r.url, min_severity="warning").send(ALERTS, CONTEXT)
    assert record["status"] == "sent" and record["attempts"] == 1 and record["count"] == 2
    body = r.bodies[0]
    assert body["text"].startswith("ragloop: 2 alert(s) from run mon-1 (1 critical, 1 warning)")
    assert "ndcg@10" in body["text"] and "report: /lake/reports/mon-1/report.html" in body["text"]
    assert [a["kind"] for a in body["alerts"]] == ["regression", "corpus_drift"]  # info is below min_severity
    assert r.paths == ["/services/T000/B000/SECRETTOKEN"]


@pytest.mark.parametrize("script, status, attempts, slept", [
    ([(500, {}), (503, {})], "sent", 3, [0.01, 0.02]),
    ([(429, {"Retry-After": "0.05"})], "sent", 2, [0.05]),
    ([(500, {})] * 4, "failed", 4, [0.01, 0.02, 0.04]),
    ([(404, {})], "failed", 1, []),   # a wrong URL is final: retrying cannot help
    ([(400, {})], "failed", 1, []),
])
def test_webhook_retries_transient_failures_only(receiver_factory, script, status, attempts, slept):
    r = receiver_factory(script)
    waits = []
    sink = alerting.WebhookSink(r.url, retries=3, backoff_s=0.01, sleep=waits.append)
    record = sink.send(ALERTS, CONTEXT)
    assert (record["status"], record["attempts"]) == (status, attempts)
    assert waits == pytest.approx(slept)
    assert len(r.bodies) == attempts


def test_webhook_retries_when_nothing_listens_and_never_reveals_the_url(caplog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/SECRETTOKEN"
    waits = []
    with caplog.at_level(logging.WARNING):
        record = alerting.WebhookSink(url, retries=2, backoff_s=0.01, sleep=waits.append).send(ALERTS, CONTEXT)
    assert record["status"] == "failed" and record["attempts"] == 3 and record["error"] == "ConnectError"
    assert len(waits) == 2
    assert "SECRETTOKEN" not in json.dumps(record) and "SECRETTOKEN" not in caplog.text
    assert record["host"] == f"127.0.0.1:{port}"


def test_webhook_with_nothing_at_its_severity_sends_nothing(receiver_factory):
    r = receiver_factory()
    record = alerting.WebhookSink(r.url, min_severity="critical").send(ALERTS[1:], CONTEXT)
    assert record["status"] == "skipped" and r.bodies == []


def test_jsonl_sink_appends_one_line_per_alert(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    sink = alerting.JsonlSink(lake, lake.default_alerts_path())
    sink.send(ALERTS[:2], CONTEXT)
    sink.send(ALERTS[2:], {**CONTEXT, "run_id": "mon-2"})
    lines = [json.loads(line) for line in (tmp_path / "lake" / "alerts" / "alerts.jsonl").read_text().splitlines()]
    assert [(line["run_id"], line["kind"]) for line in lines] == [
        ("mon-1", "regression"), ("mon-1", "corpus_drift"), ("mon-2", "retrieval_drift")]


def test_log_sink_logs_at_the_alert_severity(caplog):
    with caplog.at_level(logging.INFO, logger="ragloop.tasks.alerting"):
        alerting.LogSink().send(ALERTS, CONTEXT)
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING", "INFO"]
    assert "regression" in caplog.records[0].getMessage()


def test_one_failing_sink_does_not_silence_the_others():
    class Broken:
        name = "broken"

        def send(self, alerts, context):
            raise RuntimeError("sink bug")

    good = alerting.RecordingSink("good")
    records = alerting.deliver([Broken(), alerting.RecordingSink("down", fail=True), good], ALERTS, CONTEXT)
    assert [(r["sink"], r["status"]) for r in records] == [("broken", "failed"), ("down", "failed"), ("good", "sent")]
    assert "sink bug" in records[0]["error"]
    assert good.sent[0][0] == ALERTS
