"""Alert sinks behind one small interface: log, a JSONL file, a Prefect artifact, a webhook (JSON POST)
and a recording fake (I/O).

SINKS maps each name `monitor.sinks` accepts to a factory that builds the sink from a SinkSetup;
build_sinks builds the configured ones. The artifact sink gets Prefect's create_markdown_artifact from
the flow (tasks/ never imports prefect). Every sink returns a delivery record instead of raising, so one
broken sink never silences the others.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import urlsplit

import httpx

from ragloop.tasks import reporting
from ragloop.tasks.monitoring import SEVERITY_RANK
from ragloop.tasks.registry import Registry
from ragloop.tasks.settings import MonitorConfig
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


class ArtifactSink:
    """Alerts as a Prefect markdown artifact on the monitor's flow run (key `ragloop-alerts` plus the lake's
    identity); `publish` is prefect.artifacts.create_markdown_artifact, passed in by the flow."""

    name = "artifact"

    def __init__(self, publish: Callable[..., Any]) -> None:
        self.publish = publish

    def send(self, alerts: Sequence[dict], context: dict) -> dict:
        if not alerts:
            return {"sink": self.name, "status": "skipped", "count": 0}
        lines = [f"# ragloop alerts ({len(alerts)})", ""] + [
            f"- **{a['severity']}** `{a['kind']}`" + (f" ({a['metric']})" if a.get("metric") else "")
            + f": {reporting.md_escape(a['message'])}" for a in alerts]
        self.publish(markdown="\n".join(lines), key=reporting.artifact_key("ragloop-alerts", context["lake"]),
                     description=f"alerts of monitor run {context.get('run_id')} on lake {context['lake']}")
        return {"sink": self.name, "status": "sent", "count": len(alerts)}


# -- the sink registry (monitor.sinks) ------------------------------------------------------------------
@dataclass(frozen=True)
class SinkSetup:
    """What a sink factory may build its sink from: the monitor's settings, the lake, the flow's logger,
    and Prefect's create_markdown_artifact (None outside a flow run)."""

    config: MonitorConfig
    lake: Lake
    logger: logging.Logger | logging.LoggerAdapter
    publish_markdown: Callable[..., Any] | None = None


class SinkUnavailable(Exception):
    """Raised by a sink factory when its sink cannot run now (e.g. its URL variable is unset): the sink
    is reported as skipped with this message, and the others still run."""


SinkFactory = Callable[[SinkSetup], AlertSink]
SINKS: Registry[SinkFactory] = Registry("alert sink", "monitor.sinks")


def register_sink(name: str, *, replace: bool = False) -> Callable[[SinkFactory], SinkFactory]:
    """Decorator: register `factory(setup: SinkSetup) -> AlertSink` under `name` (the value
    `monitor.sinks` lists it by). The factory raises SinkUnavailable when the sink cannot run.
    ValueError if the name is taken and not `replace`."""
    return SINKS.register(name, replace=replace)


@register_sink("log")
def _log_sink(setup: SinkSetup) -> AlertSink:
    return LogSink(setup.logger)


@register_sink("jsonl")
def _jsonl_sink(setup: SinkSetup) -> AlertSink:
    return JsonlSink(setup.lake, setup.config.alerts_file or setup.lake.default_alerts_path())


@register_sink("artifact")
def _artifact_sink(setup: SinkSetup) -> AlertSink:
    if setup.publish_markdown is None:
        raise SinkUnavailable("no Prefect flow run to attach an artifact to")
    return ArtifactSink(setup.publish_markdown)


@register_sink("webhook")
def _webhook_sink(setup: SinkSetup) -> AlertSink:
    config = setup.config
    url = os.environ.get(config.webhook_url_env, "").strip()
    if not url:
        raise SinkUnavailable(f"{config.webhook_url_env} is not set")
    return WebhookSink(url, timeout_s=config.webhook_timeout_s, retries=config.webhook_retries,
                       backoff_s=config.webhook_backoff_s, min_severity=config.webhook_min_severity)


def build_sinks(config: MonitorConfig, lake: Lake, logger: logging.Logger | logging.LoggerAdapter,
                publish_markdown: Callable[..., Any] | None = None) -> tuple[list[AlertSink], list[dict]]:
    """The sinks `config.sinks` names, in its order, and a `skipped` delivery record ({sink, status,
    count, error}) for each one that cannot run. Raises UnknownName for a name no sink is registered under."""
    setup = SinkSetup(config, lake, logger, publish_markdown)
    sinks, skipped = [], []
    for name in config.sinks:
        try:
            sinks.append(SINKS[name](setup))
        except SinkUnavailable as exc:
            skipped.append({"sink": name, "status": "skipped", "count": 0, "error": str(exc)})
    return sinks, skipped


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
