"""Every endpoint of the review app through Starlette's TestClient: pages, fragments, search, decisions,
apply, the reviewer name, auth (token, host), CSRF, conflicts and escaping of hostile text."""

from __future__ import annotations

import json
import os

import pytest

from ragloop.app import server
from ragloop.app.server import create_app
from ragloop.flows import cli
from ragloop.tasks import promotion, review
from tests import review_fixtures as rf
from tests.app.conftest import Client


def _named(client, name="ana"):
    assert client.post("/api/reviewer", {"name": name}).status_code == 200


def _first_pending(review_lake):
    _, rows, events = review.effective_rows(review_lake["lake"], "synthetic")
    return review.golden_queue(rows, set(), events, "synthetic").pending[0]


def _decide(client, item, action="approve", payload=None, base="", queue="golden", **extra):
    return client.post("/api/decide", {"queue": queue, "item_id": item, "action": action, "payload": payload or {},
                                       "base_event_id": base, "line": "synthetic", **extra})


# -- pages ------------------------------------------------------------------------------------------------
def test_home_redirects_to_the_golden_queue(client):
    response = client.http.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/golden"


def test_the_golden_page_shows_the_item_with_its_evidence_doc_path_and_heading_trail(client, review_lake):
    page = client.http.get("/golden")
    item = next(i for i in review_lake["items"] if i["qa_id"] == _first_pending(review_lake))
    assert page.status_code == 200
    assert f'data-item="{item["qa_id"]}"' in page.text
    assert item["reference_answer"] in page.text
    assert f"<mark>{item['reference_answer']}</mark>" in page.text, "the evidence span is highlighted"
    assert item["source_doc_ids"][0] in page.text and "› Page" in page.text
    assert '<span class="done" data-done="0">0 done</span> / <span class="left" data-left="6">6 left</span>' in page.text


@pytest.mark.parametrize("path, expected", [
    ("/stale", "Nothing pending in this queue"),
    ("/answers", "The chain's answer"),
    ("/compare", "Baseline (20260101T000000Z-eval-base01)"),
])
def test_every_queue_page_renders(client, path, expected):
    page = client.http.get(path)
    assert page.status_code == 200 and expected in page.text


def test_filters_by_type_and_folder(client, review_lake):
    page = client.http.get("/golden?type=paraphrased&folder=api")
    ids = [i["qa_id"] for i in review_lake["items"] if i["qa_type"] == "paraphrased" and i["source_doc_ids"][0].startswith("api/")]
    assert any(f'data-item="{q}"' in page.text for q in ids)
    assert "Nothing pending" in client.http.get("/golden?type=no_such_type").text


def test_a_fragment_is_the_next_item_without_a_page(client, review_lake):
    first = client.http.get("/fragment/golden").json()
    second = client.http.get(f"/fragment/golden?skipped={first['item_id']}").json()
    assert first["item_id"] and second["item_id"] and first["item_id"] != second["item_id"]
    assert "<html" not in first["item_html"] and "done" in first["progress_html"]
    assert client.http.get("/fragment/nope").status_code == 404


def test_search_finds_chunks_of_the_served_index(client):
    response = client.http.get("/api/search?q=docks harbour")
    assert response.status_code == 200 and response.text.count('class="add-chunk"') >= 3
    assert "No chunk matches" in client.http.get("/api/search?q=zebra").text


def test_static_assets_ship_with_the_package(client):
    assert "addEventListener" in client.http.get("/static/app.js").text
    assert "mark" in client.http.get("/static/app.css").text


def test_an_unknown_line_or_run_is_a_clear_error(client):
    assert "no golden-set line &#39;nope&#39;" in client.http.get("/golden?line=nope").text
    assert client.http.get("/answers?run=nope").status_code == 400


# -- decisions --------------------------------------------------------------------------------------------
def test_a_decision_needs_a_reviewer_name(client, review_lake):
    response = _decide(client, _first_pending(review_lake))
    assert response.status_code == 400 and "no reviewer" in response.json()["error"]
    _named(client, "ana")
    assert _decide(client, _first_pending(review_lake)).status_code == 200
    (event,) = rf.events(review_lake["lake"])
    assert (event["reviewer"], event["action"], event["queue"], event["line"]) == ("ana", "approve", "golden", "synthetic")


def test_the_reviewer_flag_names_every_decision(review_lake):
    c = Client(create_app(review_lake["lake"].uri, reviewer="carla"))
    page = c.start()
    assert 'value="carla"' in page.text
    assert _decide(c, _first_pending(review_lake)).status_code == 200
    assert rf.events(review_lake["lake"])[0]["reviewer"] == "carla"


@pytest.mark.parametrize("body, message", [
    ({"action": "reject", "payload": {"reason": "nope"}}, "reject reason 'nope'"),
    ({"action": "explode"}, "action 'explode' is not one of"),
    ({"queue": "nope"}, "unknown queue"),
    ({"action": "edit", "payload": {"reference_chunk_ids": ["nope"]}}, "not in the served index"),
    ({"item_id": "not-an-item"}, "item not-an-item is not in line synthetic"),
    ({"payload": "text"}, "payload must be an object"),
])
def test_bad_decisions_are_400_with_the_reason(client, review_lake, body, message):
    _named(client)
    base = {"queue": "golden", "item_id": _first_pending(review_lake), "action": "approve", "payload": {}, "line": "synthetic"}
    response = client.post("/api/decide", {**base, **body})
    assert response.status_code == 400 and message in response.json()["error"]
    assert rf.events(review_lake["lake"]) == []


def test_edit_with_evidence_repicked_through_search(client, review_lake):
    _named(client)
    item = _first_pending(review_lake)
    hits = client.http.get("/api/search?q=station 5 credits").text
    chunk = hits.split('data-chunk="')[1].split('"')[0]
    response = _decide(client, item, "edit", {"reference_answer": "Fifteen.", "reference_chunk_ids": [chunk]})
    assert response.status_code == 200
    assert rf.after(rf.events(review_lake["lake"])[0])["reference_chunk_ids"] == [chunk]


def test_grades_and_preferences_on_eval_runs(client, review_lake):
    _named(client)
    item = review_lake["items"][0]["qa_id"]
    run = review_lake["candidate_run"]
    assert _decide(client, item, "grade", {"grade": "partially_correct", "comment": "half"}, queue="answers", run=run).status_code == 200
    assert _decide(client, item, "prefer", {"better": "tie"}, queue="compare", run=run).status_code == 200
    events = rf.events(review_lake["lake"])
    assert [(e["queue"], e["run_id"]) for e in events] == [("answers", run), ("compare", run)]
    assert rf.after(events[1]) == {"better": "tie", "baseline_run_id": review_lake["baseline_run"]}
    assert '<span class="done" data-done="1">1 done</span>' in client.http.get(f"/answers?run={run}").text


def test_the_second_reviewer_sees_the_first_decision_and_nothing_is_lost(review_lake):
    ana, bo = Client(create_app(review_lake["lake"].uri, reviewer="ana")), Client(create_app(review_lake["lake"].uri, reviewer="bo"))
    ana.start(), bo.start()
    item = _first_pending(review_lake)
    assert _decide(ana, item, "approve").status_code == 200
    conflict = _decide(bo, item, "reject", {"reason": "trivial"})
    assert conflict.status_code == 409
    seen = conflict.json()["conflict"]
    assert (seen["reviewer"], seen["action"]) == ("ana", "approve")
    assert _decide(bo, item, "reject", {"reason": "trivial"}, base=seen["event_id"]).status_code == 200
    assert [(e["reviewer"], e["action"]) for e in rf.events(review_lake["lake"])] == [("ana", "approve"), ("bo", "reject")]
    page = ana.http.get(f"/golden?status=all&item={item}").text
    assert "Last decision: <strong>reject</strong> by bo" in page


def test_apply_writes_a_version_and_promotes_the_curated_line(client, review_lake):
    _named(client)
    item = _first_pending(review_lake)
    _decide(client, item, "approve")
    response = client.post("/api/apply", {"line": "synthetic", "promote_to": "curated"})
    assert response.status_code == 200, response.text
    result = response.json()
    lines = promotion.Refs(review_lake["lake"]).lines()
    assert lines.lines["synthetic"].golden_set_id == result["golden_set_id"] != review_lake["golden_set_id"]
    assert lines.chosen == "curated" and result["promotion"]["items"] == 1
    assert client.post("/api/apply", {"line": "synthetic", "promote_to": "latest"}).status_code == 400


def test_apply_with_nothing_reviewed_cannot_promote(client):
    response = client.post("/api/apply", {"line": "synthetic", "promote_to": "curated"})
    assert response.status_code == 400 and "no approved or edited item" in response.json()["error"]


def test_state_changes_are_post_only(client):
    for path in ("/api/decide", "/api/apply", "/api/reviewer"):
        assert client.http.get(path).status_code == 405


# -- CSRF ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("csrf", [None, "0" * 64, ""])
def test_a_post_without_the_right_csrf_token_is_refused(client, review_lake, csrf):
    response = client.post("/api/reviewer", {"name": "mallory"}, csrf=csrf)
    assert response.status_code == 403 and "CSRF" in response.json()["error"]


def test_a_post_without_a_session_is_refused(review_lake):
    c = Client(create_app(review_lake["lake"].uri))
    response = c.post("/api/reviewer", {"name": "mallory"}, csrf="x")
    assert response.status_code == 403


def test_a_csrf_token_of_another_session_is_refused(review_lake):
    app = create_app(review_lake["lake"].uri)
    a, b = Client(app), Client(app)
    a.start(), b.start()
    assert a.csrf != b.csrf
    assert a.post("/api/reviewer", {"name": "x"}, csrf=b.csrf).status_code == 403


def test_a_form_post_is_refused(client):
    response = client.http.post("/api/reviewer", data={"name": "x"}, headers={"X-CSRF-Token": client.csrf})
    assert response.status_code == 415


# -- auth -------------------------------------------------------------------------------------------------
def test_with_a_token_every_request_must_carry_it(review_lake):
    c = Client(create_app(review_lake["lake"].uri, token="s3cret"))
    assert c.http.get("/golden").status_code == 401
    assert c.http.get("/static/app.js").status_code == 401
    assert c.http.get("/golden", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.http.get("/golden?token=wrong").status_code == 401
    redirect = c.http.get("/golden?token=s3cret&type=single_hop", follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"] == "/golden?type=single_hop"
    page = c.start()  # the cookie the redirect set
    assert page.status_code == 200 and c.csrf
    assert c.post("/api/reviewer", {"name": "ana"}).status_code == 200
    other = Client(create_app(review_lake["lake"].uri, token="s3cret"))
    assert other.http.get("/golden", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_binding_beyond_loopback_needs_a_token(review_lake, monkeypatch, capsys):
    with pytest.raises(review.ReviewError, match="RAGLOOP_REVIEW_TOKEN"):
        server.check_bind("0.0.0.0", None)
    server.check_bind("0.0.0.0", "t")
    server.check_bind("127.0.0.1", None)
    server.check_bind("::1", None)
    monkeypatch.delenv("RAGLOOP_REVIEW_TOKEN", raising=False)
    code = cli.main(["review", "--host", "0.0.0.0", "--lake", review_lake["lake"].uri])
    assert code == 2 and "RAGLOOP_REVIEW_TOKEN" in capsys.readouterr().err


def test_an_unknown_host_header_is_refused_on_loopback(review_lake):
    c = Client(create_app(review_lake["lake"].uri, allowed_hosts={"127.0.0.1", "localhost"}), base_url="http://evil.example")
    assert c.http.get("/golden").status_code == 400
    ok = Client(create_app(review_lake["lake"].uri, allowed_hosts={"127.0.0.1", "localhost"}), base_url="http://127.0.0.1:8765")
    assert ok.http.get("/golden").status_code == 200


# -- escaping ---------------------------------------------------------------------------------------------
def test_hostile_text_renders_as_text(client, review_lake):
    hostile = next(i for i in review_lake["items"] if i["source_doc_ids"] == ["guide/hostile.md"])
    page = client.http.get(f"/golden?item={hostile['qa_id']}")
    assert page.status_code == 200
    assert "<script>window" not in page.text and "<img src=x" not in page.text and "<b>page</b>" not in page.text
    assert "&lt;script&gt;window.__pwned=3&lt;/script&gt;" in page.text, "the question's script tag is shown as text"
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text, "the chunk's script tag is shown as text"
    assert "› Hostile &lt;b&gt;page&lt;/b&gt;" in page.text, "heading trails are escaped"
    assert "{{ 7*7 }}" in page.text and "&lt;img src=x onerror=" in page.text, "template syntax in data is never evaluated"
    assert page.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    fragment = client.http.get(f"/fragment/golden?item={hostile['qa_id']}").json()
    assert "<script>window" not in fragment["item_html"] and "&lt;script&gt;" in fragment["item_html"]
    answers = client.http.get(f"/answers?run={review_lake['candidate_run']}&item={hostile['qa_id']}").text
    assert "&lt;b&gt;Answer&lt;/b&gt;" in answers and "<b>Answer</b>" not in answers
    search = client.http.get("/api/search?q=pwned instructions").text
    assert "<script>" not in search and "&lt;script&gt;" in search


def test_a_hostile_reviewer_name_and_edit_are_stored_and_shown_as_text(client, review_lake):
    _named(client, '<script>alert(1)</script>')
    item = _first_pending(review_lake)
    assert _decide(client, item, "edit", {"question": "<img src=x onerror=alert(1)> {{ 7*7 }}?"}).status_code == 200
    page = client.http.get(f"/golden?status=all&item={item}").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt; {{ 7*7 }}?" in page


# -- the app writes only into the lake ------------------------------------------------------------------------
def test_a_review_session_writes_only_inside_the_lake(client, review_lake, tmp_path):
    def files():
        return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}

    before = files()
    _named(client)
    item = _first_pending(review_lake)
    _decide(client, item, "edit", {"reference_answer": "x"})
    client.post("/api/apply", {"line": "synthetic", "promote_to": "curated"})
    new = files() - before
    assert new and all(p.startswith("lake" + os.sep) for p in new), sorted(new)
    assert json.loads(json.dumps(sorted(new)))  # something was written, all of it under the lake


def test_the_review_commands_and_app_never_import_prefect(review_lake, tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom ragloop.flows import cli\nimport ragloop.app.server\n"
            f"assert cli.main(['review', 'export', '--queue', 'golden', '--out', {str(tmp_path / 's.csv')!r}, "
            f"'--lake', {review_lake['lake'].uri!r}]) == 0\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import re

    assert not [p for p in rf.Path(server.__file__).parent.rglob("*.py")
                if re.search(r"^\s*(from|import)\s+prefect\b", p.read_text(), re.M)]


def test_the_answers_header_counts_a_compare_queue_only_for_a_run_with_a_baseline(client, review_lake):
    def header(run: str) -> str:
        page = client.http.get(f"/answers?run={run}").text
        return page.split('<ul class="progress">', 1)[1].split("</ul>", 1)[0]

    assert "compare" in header(review_lake["candidate_run"]), "the candidate run has a baseline"
    assert "compare" not in header(review_lake["baseline_run"]), "nothing to compare for the baseline run itself"
