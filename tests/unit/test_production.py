"""Production logs: JSONL and OTLP/OpenInference import, quarantine with reasons, idempotency, redaction,
and the monitor's reference-free production section (coverage and topics on a log whose topic shifts)."""

from __future__ import annotations

import json

import pytest

from ragloop.tasks import production
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.settings import ConfigError, LogsConfig, RedactConfig
from ragloop.tasks.storage import Lake
from tests import production_fixtures as pf


@pytest.fixture
def lake(lake_dir) -> Lake:
    return Lake(str(lake_dir))


def test_jsonl_import_stores_every_field_once_and_a_reimport_adds_nothing(lake, tmp_path):
    path = pf.write_jsonl(tmp_path / "app.jsonl", pf.records(40))
    first = production.import_logs(lake, path, "jsonl", RedactConfig())
    assert first["status"] == "ok" and first["records"] == {"read": 40, "new": 40, "known": 0, "quarantined": 0,
                                                            "redacted": 1}
    rows = sorted(lake.read_logs().to_pylist(), key=lambda r: r["at"])
    assert len(rows) == 40 and len({r["log_id"] for r in rows}) == 40
    r = rows[0]
    assert r["question"].startswith(("How", "When", "Where", "Is")) and r["contexts"][1] == "Riders buy passes in the app."
    assert r["feedback"] == "down" and r["comment"] == "wrong" and r["conversation_id"] == "c0"
    assert r["tokens"] == r["prompt_tokens"] + r["completion_tokens"] and r["latency_ms"] > 0
    assert r["at"].isoformat() == "2026-11-01T00:00:00+00:00" and r["source_format"] == "jsonl"

    again = production.import_logs(lake, path, "jsonl", RedactConfig())
    assert again["records"]["new"] == 0 and again["records"]["known"] == 40 and again["path"] is None
    assert lake.read_logs().num_rows == 40
    assert len(list((tmp_path / "lake" / "logs" / "parts").iterdir())) == 1


def test_otel_openinference_spans_become_one_record_per_trace_with_the_same_ids_as_jsonl(lake, tmp_path):
    recs = pf.records(12)
    path = tmp_path / "spans.json"
    path.write_text(json.dumps(pf.otlp_export(recs)))
    summary = production.import_logs(lake, path, "otel", RedactConfig(emails=False, phones=False))
    assert summary["records"]["new"] == 12 and summary["records"]["quarantined"] == 0
    rows = sorted(lake.read_logs().to_pylist(), key=lambda r: r["at"])
    first = recs[0]
    assert rows[0]["question"] == first["question"] and rows[0]["answer"] == first["answer"]
    assert rows[0]["contexts"] == first["contexts"]
    assert rows[0]["prompt_tokens"] == first["prompt_tokens"] and rows[0]["tokens"] == first["prompt_tokens"] + first["completion_tokens"]
    assert rows[0]["latency_ms"] == pytest.approx(first["latency_ms"]) and rows[0]["conversation_id"] == "c0"
    assert rows[0]["feedback"] == "down" and rows[0]["source_format"] == "otel"
    # the collector's file exporter: one export per line
    lines = tmp_path / "lines.jsonl"
    lines.write_text("\n".join(json.dumps(pf.otlp_export([r], first=i)) for i, r in enumerate(recs[:3])) + "\n")
    assert production.import_logs(lake, lines, "otel", RedactConfig(emails=False, phones=False))["records"]["new"] == 0


def test_bad_lines_are_quarantined_with_line_field_and_reason_and_the_rest_imported(lake, tmp_path):
    good = pf.records(3)
    lines = [json.dumps(good[0]), "{not json", json.dumps([1, 2]), json.dumps({"answer": "x", "timestamp": 0}),
             json.dumps({**good[1], "latency_ms": "fast"}), json.dumps({**good[1], "timestamp": "yesterday"}),
             json.dumps({**good[1], "feedback": "meh"}), "", json.dumps({**good[2], "user_id": "u7"})]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary = production.import_logs(lake, path, "jsonl", RedactConfig())
    assert summary["status"] == "partial" and summary["records"]["new"] == 2
    got = [(q["line"], q["field"], q["reason"]) for q in summary["quarantine"]]
    assert got == [(2, "", "not_json"), (3, "", "not_object"), (4, "question", "missing"), (5, "latency_ms", "bad_type"),
                   (6, "timestamp", "bad_value"), (7, "feedback", "bad_value")]
    assert summary["ignored_fields"] == {"user_id": 1}
    stored = lake.read_log_quarantine().to_pylist()
    assert len(stored) == 6 and stored[0]["source"] == str(path)
    production.import_logs(lake, path, "jsonl", RedactConfig())  # the same bad lines: the same file, rewritten
    assert lake.read_log_quarantine().num_rows == 6


def test_a_trace_without_a_question_is_quarantined_naming_input_value(lake, tmp_path):
    export = pf.otlp_export(pf.records(2))
    spans = export["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0]["attributes"] = [a for a in spans[0]["attributes"] if a["key"] != "input.value"]
    path = tmp_path / "spans.json"
    path.write_text(json.dumps(export))
    summary = production.import_logs(lake, path, "otel", RedactConfig())
    assert summary["records"]["new"] == 1
    assert [(q["field"], q["reason"]) for q in summary["quarantine"]] == [("input.value", "missing")]


@pytest.mark.parametrize("text, config, expected, n", [
    ("mail me at jane.doe+rag@mail.example.co.uk today", RedactConfig(), "mail me at [EMAIL] today", 1),
    ("call +44 20 7946 0958 or (555) 123-4567", RedactConfig(), "call [PHONE] or [PHONE]", 2),
    ("station 12 opens 2026-11-29 at 06:30, 3.14159 km", RedactConfig(), "station 12 opens 2026-11-29 at 06:30, 3.14159 km", 0),
    ("ticket CUST-00917 and jane@example.org", RedactConfig(emails=False, patterns=[r"CUST-\d+"]),
     "ticket [REDACTED] and jane@example.org", 1),
    ("+1 555 123 4567", RedactConfig(phones=False), "+1 555 123 4567", 0),
])
def test_redaction_replaces_emails_phones_and_user_patterns(text, config, expected, n):
    assert production.Redactor(config).redact(text) == (expected, n)


def test_redaction_runs_before_anything_is_stored(lake, tmp_path):
    recs = [dict(pf.records(1)[0], question="I am jane@example.org, call 020 7946 0958",
                 contexts=["Customer CUST-123 said hi"], feedback={"thumbs": "down", "comment": "mail jane@example.org"})]
    path = pf.write_jsonl(tmp_path / "pii.jsonl", recs)
    summary = production.import_logs(lake, path, "jsonl", RedactConfig(patterns=[r"CUST-\d+"]))
    assert summary["redactions"] == 4 and summary["records"]["redacted"] == 1
    row = lake.read_logs().to_pylist()[0]
    assert row["question"] == "I am [EMAIL], call [PHONE]" and row["contexts"] == ["Customer [REDACTED] said hi"]
    assert row["comment"] == "mail [EMAIL]" and row["redactions"] == 4
    raw = b"".join(p.read_bytes() for p in (tmp_path / "lake").rglob("*.parquet"))
    assert b"jane@example.org" not in raw and b"7946" not in raw


def test_a_bad_redaction_pattern_is_a_config_error_naming_it():
    from ragloop.tasks.settings import load_settings

    with pytest.raises(ConfigError, match=r"logs.redact.patterns.*bad regex"):
        load_settings(overrides={"logs": {"redact": {"patterns": ["(unclosed"]}}})


def test_import_errors_are_usage_errors(lake, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        production.import_logs(lake, tmp_path / "nope.jsonl", "jsonl", RedactConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .jsonl"):
        production.import_logs(lake, tmp_path / "empty", "jsonl", RedactConfig())


def _rows(n=400, days=8):
    recs = pf.records(n, days=days)
    parsed = production.parse_jsonl(json.dumps(r) for r in recs)
    return [dict(r, log_id=production.log_id_of(r)) for r in parsed.records]


def test_coverage_alert_names_the_new_topic_with_example_questions_when_the_traffic_shifts():
    encode = HashEmbedder(dim=64, max_tokens=64).encode
    config = LogsConfig(sample_per_day=100)
    result = production.production_check(_rows(), pf.GOLDEN_A, encode, config)
    days = sorted(result.by_day)
    assert len(days) == 8
    early, late = result.by_day[days[0]], result.by_day[days[-1]]
    assert early["uncovered"] < 0.1 and late["uncovered"] > 0.9
    alert = next(a for a in result.check.alerts if a.kind == "query_coverage")
    assert alert.metric == "production.uncovered" and days[-1] in alert.message
    top = result.topics[0]
    billing = {"refund", "card", "payment", "money", "charge", "charged", "failed", "credit", "cancelled", "double", "order"}
    assert set(top.label.split(", ")) <= billing, top.label
    assert len(top.examples) == 3 and all(q in alert.message for q in top.examples)
    assert all(any(w in q for w in ("refund", "charge", "payment", "money")) for q in top.examples)
    assert "users now ask about" in alert.message and "the golden set does not" in alert.message
    assert {c["log_id"] for c in result.candidates} <= {r["log_id"] for r in _rows()}
    assert all(c["similarity"] < config.coverage_similarity for c in result.candidates)
    # deterministic: the same logs give the same figures and topics
    again = production.production_check(_rows(), pf.GOLDEN_A, encode, config)
    assert again.by_day == result.by_day and [t.label for t in again.topics] == [t.label for t in result.topics]


def test_no_coverage_alert_while_the_golden_set_covers_the_traffic():
    encode = HashEmbedder(dim=64, max_tokens=64).encode
    rows = [r for r in _rows() if "station" in r["question"]]
    result = production.production_check(rows, pf.GOLDEN_A, encode, LogsConfig())
    assert not [a for a in result.check.alerts if a.kind == "query_coverage"]
    assert result.check.figures["uncovered"] < 0.1


def test_feedback_latency_tokens_and_answer_checks_per_day():
    rows = _rows(200, days=2)
    result = production.production_check(rows, [], None, LogsConfig(max_negative_feedback=0.3))
    day = result.by_day[sorted(result.by_day)[0]]
    assert day["logs"] == 100 and day["feedback_rate"] == pytest.approx(
        sum(1 for r in rows[:100] if r["feedback"]) / 100, abs=1e-4)
    assert day["negative_rate"] == pytest.approx(15 / 32, abs=1e-4)  # every 7th is down (15), every other 5th up (17)
    assert 300 <= day["latency_p50_ms"] <= day["latency_p95_ms"] <= 2500
    assert day["refusal"] == pytest.approx(sum(1 for r in rows[:100] if r["answer"].startswith("The documents")) / 100, abs=0.01)
    assert day["grounded"] == 1.0 and day["degenerate"] == 0.0
    assert day["uncovered"] is None and result.check.figures["coverage"].startswith("not measured")
    kinds = {a.kind for a in result.check.alerts}
    assert "negative_feedback" in kinds and "query_coverage" not in kinds


@pytest.mark.parametrize("answer, contexts, expected", [
    ("Station 4 has 12 docks.", ["Station 4 has 12 docks and opens at 6."], {"refused": False, "degenerate": None, "grounded": True}),
    ("Station 4 has 99 docks.", ["Station 4 has 12 docks."], {"refused": False, "degenerate": None, "grounded": False}),
    ("The documents do not say.", ["x"], {"refused": True, "degenerate": None, "grounded": None}),
    ("docks docks docks docks docks docks docks docks docks docks docks docks", ["docks"],
     {"refused": False, "degenerate": "loop", "grounded": False}),
    (None, [], {"refused": None, "degenerate": None, "grounded": None}),
])
def test_answer_checks_are_ragloops_reference_free_rules(answer, contexts, expected):
    got = production.answer_checks({"question": "How many docks has station 4?", "answer": answer, "contexts": contexts}, 0.5)
    assert got == expected


def test_few_logs_a_day_show_figures_but_judge_no_alert():
    rows = _rows(30, days=3)
    result = production.production_check(rows, [], None, LogsConfig(max_negative_feedback=0.0))
    assert result.check.alerts == [] and "no day has 20 logs" in result.check.figures["reason"]


def test_a_bad_line_quoting_personal_data_is_quarantined_redacted_and_an_all_bad_file_fails(lake, tmp_path):
    """Found by a new user: a bad timestamp's value ('call jane@example.com or +1 555 123 4567') was echoed
    into the quarantine detail, the summary and the run manifest unredacted; and a file whose every line
    was quarantined (e.g. --format otel on JSONL) imported nothing with status partial, exit 0."""
    path = tmp_path / "pii.jsonl"
    path.write_text(json.dumps({"question": "q", "timestamp": "call jane@example.com or +1 555 123 4567"}) + "\n")
    summary = production.import_logs(lake, path, "jsonl", RedactConfig())
    assert summary["status"] == "failed" and summary["records"]["read"] == 0
    detail = summary["quarantine"][0]["detail"]
    assert "jane@example.com" not in detail and "555 123" not in detail and "[EMAIL]" in detail
    assert not any("jane@example.com" in str(r) for r in lake.read_log_quarantine().to_pylist())
