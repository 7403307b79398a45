"""Alert sinks behind one small interface: log, a JSONL file, a webhook (JSON POST) and a recording fake (I/O).

The Prefect-artifact sink lives in flows/monitor.py (tasks/ never imports prefect). Every sink returns
a delivery record instead of raising, so one broken sink never silences the others.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import urlsplit

import httpx

from ragloop.tasks.monitoring import SEVERITY_RANK
from ragloop.tasks.storage import Lake

logger = logging.getLogger(__name__)

LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0


class AlertSink(Protocol):
    name: str

    def send(self, alerts: Sequence[dict], context: dict) -> dict:
        """Deliver the alerts; returns {"sink", "status": sent|skipped|failed, "count", ...}, never raises."""


class LogSink:
    """Each alert as one log line at its severity's level."""

    name = "log"

    def __init__(self, log: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self.log = log or logger

    def send(self, alerts: Sequence[dict], context: dict) -> dict:
        for a in alerts:
            self.log.log(LEVELS.get(a["severity"], logging.WARNING), "ALERT [%s] %s: %s", a["severity"], a["kind"], a["message"])
        return {"sink": self.name, "status": "sent" if alerts else "skipped", "count": len(alerts)}


class JsonlSink:
    """Appends one JSON object per alert (with run_id and time) to a JSONL file in or beside the lake."""

    name = "jsonl"

    def __init__(self, lake: Lake, path: str) -> None:
        self.lake, self.path = lake, path

    def send(self, alerts: Sequence[dict], context: dict) -> dict:
        lines = [json.dumps({"run_id": context.get("run_id"), "at": context.get("at"), **a}, sort_keys=True, default=str)
                 for a in alerts]
        try:
            self.lake.append_lines(self.path, lines)
        except OSError as exc:
            return {"sink": self.name, "status": "failed", "count": 0, "error": f"{type(exc).__name__}: {exc}"}
        return {"sink": self.name, "status": "sent" if alerts else "skipped", "count": len(alerts), "path": self.path}


def webhook_payload(alerts: Sequence[dict], context: dict) -> dict:
    """Slack-compatible body: `text` is what Slack (and Mattermost, Teams' Slack mode) shows; generic
    receivers read the structured `alerts` list beside it."""
    counts = {s: sum(1 for a in alerts if a["severity"] == s) for s in ("critical", "warning", "info")}
    head = (f"ragloop: {len(alerts)} alert(s) from run {context.get('run_id')} "
            f"({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")
    lines = [f"• [{a['severity']}] {a['kind']}" + (f" `{a['metric']}`" if a.get("metric") else "") + f": {a['message']}"
             for a in alerts]
    if context.get("report"):
        lines.append(f"report: {context['report']}")
    return {"text": "\n".join([head, *lines]), "source": "ragloop", "run_id": context.get("run_id"),
            "lake": context.get("lake"), "report": context.get("report"), "alerts": list(alerts)}


class WebhookSink:
    """JSON POST to a webhook with retries: timeouts, connection errors, 429 and 5xx are retried with
    exponential backoff (Retry-After honoured, capped); other 4xx are final. The URL is a secret: it is
    never logged or returned, only its host."""

    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 10, retries: int = 3, backoff_s: float = 1.0,
                 min_severity: str = "warning", sleep: Callable[[float], None] = time.sleep) -> None:
        self._url = url
        self.host = urlsplit(url).netloc.rsplit("@", 1)[-1]
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.min_rank = SEVERITY_RANK[min_severity]
        self.sleep = sleep

    def send(self, alerts: Sequence[dict], context: dict) -> dict:
        # a cleared condition is news to whoever was told of it, whatever its (info) severity
        chosen = [a for a in alerts if SEVERITY_RANK.get(a["severity"], 1) >= self.min_rank or a["kind"] == "alert_cleared"]
        record: dict[str, Any] = {"sink": self.name, "host": self.host, "count": len(chosen)}
        if not chosen:
            return {**record, "status": "skipped", "attempts": 0}
        body = webhook_payload(chosen, context)
        error = None
        with httpx.Client(timeout=self.timeout_s) as client:
            for attempt in range(1, self.retries + 2):
                wait = self.backoff_s * 2 ** (attempt - 1)
                try:
                    response = client.post(self._url, json=body)
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}"
                else:
                    if response.is_success:
                        return {**record, "status": "sent", "attempts": attempt, "http_status": response.status_code}
                    error = f"HTTP {response.status_code}"
                    if response.status_code not in RETRY_STATUS:
                        return {**record, "status": "failed", "attempts": attempt, "error": error}
                    wait = max(wait, _retry_after(response))
                if attempt <= self.retries:
                    logger.warning("webhook %s: %s (attempt %d of %d); retrying in %.1f s",
                                   self.host, error, attempt, self.retries + 1, wait)
                    self.sleep(wait)
        return {**record, "status": "failed", "attempts": self.retries + 1, "error": error}


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.0


class RecordingSink:
    """Deterministic fake: keeps what it was sent (tests), optionally failing."""

    def __init__(self, name: str = "recording", fail: bool = False) -> None:
        self.name, self.fail = name, fail
        self.sent: list[tuple[list[dict], dict]] = []

    def send(self, alerts: Sequence[dict], context: dict) -> dict:
        if self.fail:
            return {"sink": self.name, "status": "failed", "count": 0, "error": "scripted failure"}
        self.sent.append((list(alerts), dict(context)))
        return {"sink": self.name, "status": "sent" if alerts else "skipped", "count": len(alerts)}


def deliver(sinks: Sequence[AlertSink], alerts: Sequence[dict], context: dict) -> list[dict]:
    """Send to every sink; one sink's failure is recorded and the others still run."""
    records = []
    for sink in sinks:
        try:
            records.append(sink.send(alerts, context))
        except Exception as exc:  # a sink bug must not cost the other sinks their alerts
            records.append({"sink": getattr(sink, "name", type(sink).__name__), "status": "failed",
                            "count": 0, "error": f"{type(exc).__name__}: {exc}"})
    return records
