"""The review app's production queue: a thumbs-down logged answer and an uncovered question are candidates
with their logged answer and contexts; promoting one and applying reviews makes a golden item with
provenance `source: production` (the same event log, CSRF and apply machinery as the other queues)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from ragloop.tasks import production, promotion, review, schemas
from ragloop.tasks.settings import RedactConfig
from tests import production_fixtures as pf


def _log(question: str, answer: str, contexts: list[str], feedback: str | None, minute: int) -> dict:
    rec = {"question": question, "answer": answer, "contexts": contexts, "at": dt.datetime(2026, 11, 3, 9, minute, tzinfo=dt.timezone.utc),
           "latency_ms": 800.0, "prompt_tokens": 300, "completion_tokens": 20, "tokens": 320, "conversation_id": "c1",
           "feedback": feedback, "rating": None, "comment": "wrong dock count" if feedback == "down" else None}
    return {**production.Redactor(RedactConfig()).record(rec), "log_id": production.log_id_of(rec), "import_id": "i1",
            "source_format": "jsonl", "imported_at": rec["at"]}


@pytest.fixture
def logs(review_lake):
    chunk = review_lake["chunks"][0]
    rows = [_log("How many docks at <b>the</b> harbour station?", "It has <i>99</i> docks.", [chunk["text"], "not in the index"], "down", 1),
            _log("Is the app nice?", "Yes.", [], "up", 2),
            _log("How do I get a refund for a double charge?", "The documents do not say.", [], None, 3)]
    review_lake["lake"].write_logs("i1", pa.Table.from_pylist(rows, schema=schemas.PRODUCTION_LOGS))
    review_lake["lake"].write_ref("production_candidates", {"run_id": "m1", "uncovered": [
        {"log_id": rows[2]["log_id"], "topic": "refund, charge, double", "similarity": 0.12}]})
    return {"down": rows[0], "up": rows[1], "uncovered": rows[2], "chunk": chunk}


def test_a_thumbs_down_answer_and_an_uncovered_question_are_in_the_production_queue(client, logs):
    page = client.http.get("/production")
    assert page.status_code == 200
    # newest first: the uncovered question, then the rated-down answer; the thumbs-up one is not a candidate
    assert f'data-item="{logs["uncovered"]["log_id"]}"' in page.text and "refund, charge, double" in page.text
    assert "Is the app nice?" not in page.text
    assert '<span class="left" data-left="2">2 left</span>' in page.text
    frag = client.http.get(f"/fragment/production?item={logs['down']['log_id']}").json()
    html = frag["item_html"]
    assert frag["item_id"] == logs["down"]["log_id"]
    assert "How many docks at &lt;b&gt;the&lt;/b&gt; harbour station?" in html and "<b>the</b>" not in html
    assert "It has &lt;i&gt;99&lt;/i&gt; docks." in html and "negative feedback" in html and "wrong dock count" in html
    assert "not in the index" in html
    # an answer a person rated down is not offered as the reference: the reviewer writes the right one
    assert '<textarea id="promote-answer" rows="4"></textarea>' in html and "rated the logged answer down" in html
    uncovered = client.http.get(f"/fragment/production?item={logs['uncovered']['log_id']}").json()["item_html"]
    assert '<textarea id="promote-answer" rows="4"></textarea>' not in uncovered


def test_promoting_a_candidate_and_applying_makes_a_golden_item_with_source_production(client, logs, review_lake):
    assert client.post("/api/reviewer", {"name": "ana"}).status_code == 200
    down = logs["down"]
    bad = client.post("/api/decide", {"queue": "production", "item_id": down["log_id"], "action": "promote",
                                      "payload": {"reference_answer": "  "}, "base_event_id": "", "line": "synthetic"})
    assert bad.status_code == 400 and "reference answer" in bad.json()["error"]
    no_csrf = client.post("/api/decide", {"queue": "production", "item_id": down["log_id"], "action": "promote",
                                          "payload": {"reference_answer": "x"}}, csrf=None)
    assert no_csrf.status_code == 403
    ok = client.post("/api/decide", {"queue": "production", "item_id": down["log_id"], "action": "promote",
                                     "payload": {"reference_answer": "The harbour station has 12 docks."},
                                     "base_event_id": "", "line": "synthetic"})
    assert ok.status_code == 200, ok.text
    again = client.post("/api/decide", {"queue": "production", "item_id": down["log_id"], "action": "dismiss",
                                        "payload": {}, "base_event_id": "", "line": "synthetic"})
    assert again.status_code == 409  # someone (ana) decided it since: the usual conflict check
    page = client.http.get("/production")
    assert '<span class="left" data-left="1">1 left</span>' in page.text

    applied = client.post("/api/apply", {"line": "synthetic"})
    assert applied.status_code == 200, applied.text
    assert applied.json()["applied"] == {"promote": 1}
    head = promotion.Refs(review_lake["lake"]).lines().lines["synthetic"].golden_set_id
    item = next(r for r in review_lake["lake"].read_golden(head).to_pylist() if r.get("source") == "production")
    assert item["question"] == down["question"] and item["reference_answer"] == "The harbour station has 12 docks."
    assert item["qa_type"] == "production" and item["review"] == "edited" and item["reviewer"] == "ana"
    assert item["status"] == "active" and item["generator"] == "production"
    assert item["reference_chunk_ids"] == [logs["chunk"]["chunk_id"]]
    # applying again adds nothing: the item is already in the line
    assert client.post("/api/apply", {"line": "synthetic"}).json()["written"] is False


def test_approving_the_logged_answer_keeps_it_as_an_approved_reference(client, logs, review_lake):
    client.post("/api/reviewer", {"name": "bo"})
    up = logs["uncovered"]
    assert client.post("/api/decide", {"queue": "production", "item_id": up["log_id"], "action": "promote",
                                       "payload": {"question": up["question"], "reference_answer": up["answer"]},
                                       "base_event_id": "", "line": "synthetic"}).status_code == 200
    review.apply_reviews(review_lake["lake"], "synthetic")
    head = promotion.Refs(review_lake["lake"]).lines().lines["synthetic"].golden_set_id
    item = next(r for r in review_lake["lake"].read_golden(head).to_pylist() if r.get("source") == "production")
    assert item["review"] == "approved" and item["reference_chunk_ids"] == []


def test_a_log_that_is_not_a_candidate_cannot_be_decided(client, logs):
    client.post("/api/reviewer", {"name": "ana"})
    response = client.post("/api/decide", {"queue": "production", "item_id": logs["up"]["log_id"], "action": "dismiss",
                                           "payload": {}, "base_event_id": "", "line": "synthetic"})
    assert response.status_code == 400 and "not a production candidate" in response.json()["error"]


def test_the_fixture_log_generator_marks_every_seventh_answer_down():
    recs = pf.records(70)
    assert sum(1 for r in recs if isinstance(r.get("feedback"), dict)) == 10
