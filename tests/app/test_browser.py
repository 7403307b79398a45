"""The review app in a real browser: Playwright driving Debian's chromium (/usr/bin/chromium) against the app
served by uvicorn on 127.0.0.1. Skipped, loudly, when Playwright or chromium is missing (`.ci/run` installs
chromium when it runs as root). Screenshots go to $REVIEW_SHOTS_DIR (default: the test's tmp dir)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from ragloop.app.server import create_app
from ragloop.flows import cli
from ragloop.tasks import review
from tests import review_fixtures as rf

CHROMIUM = os.environ.get("REVIEW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TESTS SKIPPED: the Python package playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"BROWSER TESTS SKIPPED: no chromium at {CHROMIUM} (apt-get install -y chromium, or set REVIEW_CHROMIUM)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """The app served by uvicorn in a thread, on loopback, with the loopback Host check on."""

    def __init__(self, lake_uri: str, **kwargs) -> None:
        import uvicorn

        self.port = _free_port()
        app = create_app(lake_uri, allowed_hosts={"127.0.0.1", "localhost"}, **kwargs)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the review app did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("REVIEW_SHOTS_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def review_lake(lake_dir):
    return rf.build(lake_dir, 5, hostile=True)


@pytest.fixture
def live(review_lake):
    app = Live(review_lake["lake"].uri)
    yield app
    app.stop()


@pytest.fixture
def page(browser, live):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    pg.on("console", lambda msg: pg.errors.append(msg.text) if msg.type == "error" else None)
    yield pg
    context.close()


def _current(page) -> str | None:
    return page.evaluate("() => document.querySelector('#current')?.dataset.item || null")


def _next(page, before: str | None) -> str | None:
    try:
        page.wait_for_function("id => (document.querySelector('#current')?.dataset.item || null) !== id", arg=before,
                               timeout=10000)
    except Exception as exc:
        raise AssertionError(f"the next item did not load; the page says: {page.inner_text('#flash')!r}; "
                             f"errors: {page.errors}") from exc
    return _current(page)


def _name(page, name: str = "ana") -> None:
    page.fill("#reviewer-name", name)
    page.press("#reviewer-name", "Enter")
    page.wait_for_function("() => document.querySelector('#flash').textContent.includes('reviewing as')")


def _export(lake_dir: Path, out: Path, golden: str = "synthetic") -> dict[str, dict]:
    assert cli.main(["golden", "export", "--golden", golden, "--include-inactive", "--out", str(out),
                     "--lake", str(lake_dir), "--json"]) == 0
    return {r["qa_id"]: r for r in map(json.loads, out.read_text().splitlines())}


def review_five_with_the_keyboard(page, live, review_lake, shots: Path | None = None) -> dict[str, str]:
    """approve, edit an answer, reject with a reason, re-pick evidence through search, skip: qa_id -> what was done."""
    page.goto(live.url + "/golden")
    _name(page)
    done = {}
    first = _current(page)
    if shots:
        page.screenshot(path=str(shots / "1_golden_queue.png"), full_page=True)
    page.keyboard.press("a")
    done[first] = "approve"
    item = _next(page, first)

    page.keyboard.press("e")
    page.wait_for_selector("#edit-panel:not([hidden])")
    page.keyboard.press("Control+a")
    page.keyboard.type("Edited in the browser: eleven docks.")
    page.keyboard.press("Control+Enter")
    done[item] = "edit_answer"
    item2 = _next(page, item)

    page.keyboard.press("r")
    page.wait_for_selector("#reject-panel:not([hidden])")
    page.keyboard.press("3")  # ambiguous
    page.keyboard.type("")
    if shots:
        page.screenshot(path=str(shots / "2_golden_reject.png"), full_page=True)
    page.keyboard.press("Enter")
    done[item2] = "reject"
    item3 = _next(page, item2)

    page.keyboard.press("e")
    page.wait_for_selector("#edit-panel:not([hidden])")
    page.keyboard.press("Control+/")
    page.keyboard.type("station 5 credits")
    page.keyboard.press("Enter")
    page.wait_for_selector("#search-results .add-chunk")
    page.wait_for_function("() => document.activeElement?.classList.contains('add-chunk')")
    if shots:
        page.screenshot(path=str(shots / "3_golden_edit_search.png"), full_page=True)
    page.keyboard.press("Enter")  # "Use instead" on the best hit
    page.wait_for_function("() => document.querySelector('#flash').textContent.includes('evidence replaced')")
    page.keyboard.press("Control+Enter")
    done[item3] = "repick"
    item4 = _next(page, item3)

    page.keyboard.press("s")
    done[item4] = "skip"
    _next(page, item4)
    return done


def test_review_five_items_and_grade_three_answers_then_golden_export_shows_exactly_those_changes(
        page, live, review_lake, lake_dir, tmp_path, shots):
    before = _export(lake_dir, tmp_path / "before.jsonl")
    started = time.monotonic()
    done = review_five_with_the_keyboard(page, live, review_lake, shots)
    assert page.inner_text(".progress li.current .done") == "4 done"

    page.goto(live.url + "/answers?run=" + review_lake["candidate_run"])
    graded = []
    for key in ("1", "2", "3"):
        item = _current(page)
        if not graded and shots:
            page.screenshot(path=str(shots / "5_answers_queue.png"), full_page=True)
        page.keyboard.press(key)
        graded.append(item)
        _next(page, item)
    page.goto(live.url + "/golden")
    page.uncheck("#promote")
    page.click("#apply")
    page.wait_for_function("() => document.querySelector('#flash').textContent.startsWith('applied')")
    seconds = time.monotonic() - started
    assert page.errors == []
    new_version = page.inner_text("#flash").split(" is now version ")[1][:12]
    assert page.inner_text("#line-version") == f"version {new_version}", "the bar shows the version just written"

    after = _export(lake_dir, tmp_path / "after.jsonl")
    changed = {q for q in before if {k: v for k, v in before[q].items() if k != "created_at"} !=
               {k: v for k, v in after[q].items() if k != "created_at"}}
    assert changed == {q for q, what in done.items() if what != "skip"}, "exactly the four decided items changed"
    by_action = {what: after[q] for q, what in done.items()}
    assert by_action["approve"]["review"] == "approved" and by_action["approve"]["reviewer"] == "ana"
    assert by_action["edit_answer"]["reference_answer"] == "Edited in the browser: eleven docks."
    assert by_action["edit_answer"]["review"] == "edited"
    assert (by_action["reject"]["status"], by_action["reject"]["review"]) == ("retired", "rejected")
    assert by_action["reject"]["review_reason"].startswith("ambiguous")
    five = next(c for c in review_lake["chunks"] if c["doc_id"] == "api/page5.md")
    assert by_action["repick"]["reference_chunk_ids"] == [five["chunk_id"]]
    assert by_action["skip"] == before[next(q for q, w in done.items() if w == "skip")]
    grades = [(e["item_id"], rf.after(e)["grade"]) for e in rf.events(review_lake["lake"]) if e["queue"] == "answers"]
    assert grades == list(zip(graded, ["correct", "partially_correct", "incorrect"]))
    print(f"\nbrowser review of 5 items + 3 grades + apply: {seconds:.1f} s")


def test_compare_and_stale_queues_in_the_browser(page, live, review_lake, lake_dir, shots):
    page.goto(live.url + "/compare?run=" + review_lake["candidate_run"])
    _name(page, "bo")
    assert page.inner_text("#baseline-answer") == "I do not know."
    assert page.inner_text("#candidate-answer").startswith("<b>Answer</b>")
    page.screenshot(path=str(shots / "6_compare_queue.png"), full_page=True)
    item = _current(page)
    page.keyboard.press("c")
    _next(page, item)

    item = review_lake["items"][0]
    lake = review_lake["lake"]
    review.record_decision(lake, review.Decision("golden", item["qa_id"], "approve", "ana"), line="synthetic",
                           index=review.LakeIndex(lake))
    review.apply_reviews(lake, "synthetic")
    n = int(item["source_doc_ids"][0].split("page")[1][0])
    rf.edit_document(lake, rf.docs(hostile=True), item["source_doc_ids"][0], f"has {10 + n} docks", "has 40 docks")
    page.goto(live.url + "/stale")
    assert _current(page) == item["qa_id"]
    assert page.inner_text(".diff del") == str(10 + n) and page.inner_text(".diff ins") == "40"
    page.screenshot(path=str(shots / "4_stale_queue.png"), full_page=True)
    page.keyboard.press("a")
    _next(page, item["qa_id"])
    assert page.is_visible("#queue-empty")
    assert page.errors == []


def test_a_hostile_item_renders_as_text_and_runs_no_script(page, live, review_lake, shots):
    hostile = next(i for i in review_lake["items"] if i["source_doc_ids"] == ["guide/hostile.md"])
    for path in (f"/golden?item={hostile['qa_id']}", f"/answers?run={review_lake['candidate_run']}&item={hostile['qa_id']}"):
        page.goto(live.url + path)
        assert page.evaluate("() => window.__pwned") is None, "no script from the data ran"
        assert page.title().startswith("ragloop review")
        assert page.evaluate("() => document.scripts.length") == 1, "only the app's own script"
        assert page.evaluate("() => document.querySelectorAll('#item img, #item b, #item i').length") == 0
        assert "<script>window.__pwned=3</script>" in page.inner_text("#question")
    page.goto(live.url + f"/golden?item={hostile['qa_id']}")
    assert "<script>window.__pwned = 1</script>" in page.inner_text("#item .chunk pre")
    page.screenshot(path=str(shots / "7_hostile_item.png"), full_page=True)
    page.keyboard.press("e")  # the edit form holds the hostile question as text too
    assert page.input_value("#edit-question").startswith("<script>window.__pwned=3</script>{{ 7*7 }}")
    assert page.evaluate("() => window.__pwned") is None and page.errors == []


def test_a_sheet_round_trip_equals_the_browser_path(page, live, review_lake, tmp_path):
    """The browser's decisions, written into a sheet and imported into a twin lake, give the same version."""
    review_five_with_the_keyboard(page, live, review_lake)
    page.uncheck("#promote")
    page.click("#apply")
    page.wait_for_function("() => document.querySelector('#flash').textContent.startsWith('applied')")
    browser_head = review.line_head(review_lake["lake"], "synthetic")[0].golden_set_id

    twin = rf.build(tmp_path / "twin", 5, hostile=True)
    assert twin["golden_set_id"] == review_lake["golden_set_id"]
    sheet = tmp_path / "sheet.csv"
    assert cli.main(["review", "export", "--queue", "golden", "--format", "csv", "--out", str(sheet),
                     "--lake", twin["lake"].uri]) == 0
    import csv

    rows = list(csv.DictReader(sheet.open(encoding="utf-8-sig")))
    decided = {e["item_id"]: e for e in rf.events(review_lake["lake"]) if e["action"] != "skip"}
    for row in rows:
        e = decided.get(row["qa_id"])
        if e is None:
            continue
        a = rf.after(e)
        row["action"] = e["action"]
        if e["action"] == "reject":
            row.update(reason=a["reason"], note=a["note"])
        if e["action"] == "edit":
            row["new_reference_answer"] = a.get("reference_answer", "")
            row["new_reference_chunk_ids"] = " ".join(a.get("reference_chunk_ids", []))
    with sheet.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert cli.main(["review", "import", str(sheet), "--reviewer", "ana", "--lake", twin["lake"].uri]) == 0
    assert review.line_head(twin["lake"], "synthetic")[0].golden_set_id == browser_head
