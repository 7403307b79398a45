"""Review decisions without a browser: events, folding them into golden-set versions, stale items, synth's
respect for people's decisions, conflicts and the sheet round-trip (tasks.review)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from ragloop.tasks import promotion, review, synth_run
from ragloop.tasks import qa_generation as qa
from tests import review_fixtures as rf


@pytest.fixture
def lake5(lake_dir):
    return rf.build(lake_dir, 5)


def _index(info):
    return review.LakeIndex(info["lake"])


def _decide(info, item, action, payload=None, reviewer="ana", base="latest", queue="golden"):
    lake = info["lake"]
    if base == "latest":
        base = (review.latest_events(review.read_events(lake), ("golden", "stale"), line="synthetic").get(item) or {}).get("event_id")
    return review.record_decision(lake, review.Decision(queue, item, action, reviewer, payload or {}, base),
                                  line="synthetic", index=_index(info))


def _head(info, line="synthetic"):
    ref, rows = review.line_head(info["lake"], line)
    return ref, {r["qa_id"]: r for r in rows}


# -- pure rules -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spans, expected", [
    ([], [("abcdef", False)]),
    ([(1, 3)], [("a", False), ("bc", True), ("def", False)]),
    ([(0, 2), (1, 4)], [("abcd", True), ("ef", False)]),
    ([(4, 99)], [("abcd", False), ("ef", True)]),
    ([(3, 3), (-5, 1)], [("a", True), ("bcdef", False)]),
])
def test_highlight_cuts_text_into_evidence_segments(spans, expected):
    assert review.highlight("abcdef", spans) == expected


def test_word_diff_marks_deleted_and_inserted_words():
    assert review.word_diff("Station 1 has 11 docks", "Station 1 has 40 docks") == [
        ("same", "Station 1 has"), ("del", "11"), ("ins", "40"), ("same", "docks")]


@pytest.mark.parametrize("decision, message", [
    (review.Decision("golden", "q", "grade", "ana"), "action 'grade' is not one of approve, edit, reject, skip"),
    (review.Decision("nope", "q", "approve", "ana"), "unknown queue 'nope'"),
    (review.Decision("golden", "q", "approve", "  "), "no reviewer"),
    (review.Decision("golden", "q", "reject", "ana", {"reason": "meh"}), "reject reason 'meh' is not one of"),
    (review.Decision("golden", "q", "reject", "ana", {"reason": "other"}), "'other' needs a note"),
    (review.Decision("golden", "q", "edit", "ana", {}), "an edit must change"),
    (review.Decision("golden", "q", "edit", "ana", {"question": " "}), "question cannot be empty"),
    (review.Decision("answers", "q", "grade", "ana", {"grade": "great"}), "grade 'great' is not one of"),
    (review.Decision("compare", "q", "prefer", "ana", {"better": "both"}), "preference 'both' is not one of"),
])
def test_invalid_decisions_are_refused_naming_the_problem(decision, message):
    with pytest.raises(review.ReviewError, match=message):
        review.validate_decision(decision)


# -- applying decisions to golden-set versions --------------------------------------------------------------
def test_approve_edit_reject_apply_as_a_new_version_with_provenance(lake5):
    items = lake5["items"]
    a, e, r, untouched = items[0]["qa_id"], items[1]["qa_id"], items[2]["qa_id"], items[3]["qa_id"]
    _decide(lake5, a, "approve")
    _decide(lake5, e, "edit", {"reference_answer": "Eleven docks."}, reviewer="bo")
    _decide(lake5, r, "reject", {"reason": "ambiguous", "note": "which station?"})
    ref_before, _ = _head(lake5)
    assert ref_before.golden_set_id == lake5["golden_set_id"], "recording decisions writes no version"

    result = review.apply_reviews(lake5["lake"], "synthetic")

    ref, rows = _head(lake5)
    assert result["written"] and ref.golden_set_id == result["golden_set_id"] != lake5["golden_set_id"]
    assert ref.kind == "synthetic" and ref.inputs == "inputs-1", "the line keeps its kind and synth's inputs"
    assert ref.history == [lake5["golden_set_id"], ref.golden_set_id]
    assert (rows[a]["review"], rows[a]["status"], rows[a]["reviewer"]) == ("approved", "active", "ana")
    assert isinstance(rows[a]["reviewed_at"], dt.datetime) and rows[a]["review_event_id"]
    assert (rows[e]["review"], rows[e]["reference_answer"], rows[e]["reviewer"]) == ("edited", "Eleven docks.", "bo")
    assert rows[e]["question"] == items[1]["question"] and rows[e]["qa_id"] == e, "the item keeps its id"
    assert (rows[r]["review"], rows[r]["status"], rows[r]["review_reason"]) == ("rejected", "retired", "ambiguous: which station?")
    assert rows[untouched]["review"] == "synthetic" and rows[untouched]["reviewer"] is None
    assert result["applied"] == {"approve": 1, "edit": 1, "reject": 1}
    assert result["reviews"] == {"approved": 1, "edited": 1, "rejected": 1, "synthetic": 2}
    assert [r["qa_id"] for r in rows.values() if r["status"] == "active"] == [i["qa_id"] for i in items if i["qa_id"] != r]


def test_applying_twice_writes_nothing_new(lake5):
    _decide(lake5, lake5["items"][0]["qa_id"], "approve")
    first = review.apply_reviews(lake5["lake"], "synthetic")
    second = review.apply_reviews(lake5["lake"], "synthetic")
    assert first["written"] and not second["written"] and second["golden_set_id"] == first["golden_set_id"]
    assert second["applied"] == {}


def test_two_different_edits_of_one_item_are_two_versions(lake5):
    qa_id = lake5["items"][0]["qa_id"]
    _decide(lake5, qa_id, "edit", {"reference_answer": "Ten."})
    one = review.apply_reviews(lake5["lake"], "synthetic")["golden_set_id"]
    _decide(lake5, qa_id, "edit", {"reference_answer": "Ten docks."})
    two = review.apply_reviews(lake5["lake"], "synthetic")["golden_set_id"]
    assert one != two and _head(lake5)[1][qa_id]["reference_answer"] == "Ten docks."


def test_edit_repicks_evidence_and_staleness_follows_the_new_chunks(lake5):
    item = lake5["items"][0]
    other = next(c for c in lake5["chunks"] if c["chunk_id"] not in item["source_chunk_ids"])
    _decide(lake5, item["qa_id"], "edit", {"reference_chunk_ids": [other["chunk_id"]]})
    review.apply_reviews(lake5["lake"], "synthetic")
    row = _head(lake5)[1][item["qa_id"]]
    assert row["reference_chunk_ids"] == row["source_chunk_ids"] == [other["chunk_id"]]
    assert row["reference_doc_ids"] == [other["doc_id"]] and row["evidence"] == []


def test_edit_with_an_unknown_chunk_or_no_change_is_refused(lake5):
    item = lake5["items"][0]
    with pytest.raises(review.ReviewError, match="not in the served index: nope"):
        _decide(lake5, item["qa_id"], "edit", {"reference_chunk_ids": ["nope"]})
    with pytest.raises(review.ReviewError, match="changes nothing"):
        _decide(lake5, item["qa_id"], "edit", {"reference_answer": item["reference_answer"]})
    assert review.read_events(lake5["lake"]) == []


def test_the_latest_decision_on_an_item_wins(lake5):
    qa_id = lake5["items"][0]["qa_id"]
    _decide(lake5, qa_id, "reject", {"reason": "trivial"})
    _decide(lake5, qa_id, "approve")
    review.apply_reviews(lake5["lake"], "synthetic")
    row = _head(lake5)[1][qa_id]
    assert (row["review"], row["status"], row["review_reason"]) == ("approved", "active", None)


def test_skip_is_recorded_but_changes_nothing(lake5):
    qa_id = lake5["items"][0]["qa_id"]
    _decide(lake5, qa_id, "skip")
    assert [e["action"] for e in rf.events(lake5["lake"])] == ["skip"]
    assert not review.apply_reviews(lake5["lake"], "synthetic")["written"]


def test_events_are_append_only_with_before_and_after(lake5):
    qa_id = lake5["items"][0]["qa_id"]
    _decide(lake5, qa_id, "edit", {"question": "How many docks at station 0?"})
    _decide(lake5, qa_id, "approve")
    events = rf.events(lake5["lake"])
    assert [e["action"] for e in events] == ["edit", "approve"]
    assert json.loads(events[0]["before"])["question"] == lake5["items"][0]["question"]
    assert rf.after(events[0])["question"] == "How many docks at station 0?"
    assert rf.after(events[0])["chunk_texts"], "the chunk text the reviewer saw is kept for later diffs"
    assert {e["golden_set_id"] for e in events} == {lake5["golden_set_id"]} and {e["line"] for e in events} == {"synthetic"}
    files = sorted(p.name for p in (rf.Path(lake5["lake"].root) / "reviews").iterdir())
    assert len(files) == 2 and all(f.endswith(".parquet") for f in files)


# -- concurrent decisions -----------------------------------------------------------------------------------
def test_a_second_reviewer_deciding_an_item_already_decided_sees_the_first_decision(lake5):
    qa_id = lake5["items"][0]["qa_id"]
    seen_by_both = None  # both loaded the item before anyone decided it
    first = _decide(lake5, qa_id, "approve", reviewer="ana", base=seen_by_both)
    with pytest.raises(review.ReviewConflict) as conflict:
        _decide(lake5, qa_id, "reject", {"reason": "trivial"}, reviewer="bo", base=seen_by_both)
    assert conflict.value.latest["event_id"] == first["event_id"] and conflict.value.latest["reviewer"] == "ana"
    _decide(lake5, qa_id, "reject", {"reason": "trivial"}, reviewer="bo", base=first["event_id"])  # asked, confirmed
    assert [(e["reviewer"], e["action"]) for e in rf.events(lake5["lake"])] == [("ana", "approve"), ("bo", "reject")]


def _decide_at(lake_uri: str, qa_id: str, reviewer: str, start: float) -> str:
    """A reviewer in another process: waits for the shared start time, then approves with no decision seen."""
    import time

    lake = review.Lake(lake_uri)
    index = review.LakeIndex(lake)
    index.chunk_ids()  # load before the start, so both processes race on the decision itself
    time.sleep(max(0.0, start - time.time()))
    try:
        review.record_decision(lake, review.Decision("golden", qa_id, "approve", reviewer, {}, None), line="synthetic", index=index)
        return "decided"
    except review.ReviewConflict as exc:
        return f"conflict with {exc.latest['reviewer']}"


def test_two_review_processes_deciding_one_item_at_once_one_is_asked(lake5):
    """Two `ragloop review` servers (or a server and a sheet import) on one lake: the conflict check and the
    append hold the lake's review lock, so of two decisions on the same unseen item one lands and the other
    is a conflict naming the first reviewer, never two silent 'latest' decisions."""
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        for item in lake5["items"][:3]:
            start = time.time() + 3.0
            outcomes = pool.starmap(_decide_at, [(lake5["lake"].uri, item["qa_id"], name, start) for name in ("ana", "bo")])
            assert sorted(o.split(" ")[0] for o in outcomes) == ["conflict", "decided"], outcomes
            winner = next(e["reviewer"] for e in rf.events(lake5["lake"]) if e["item_id"] == item["qa_id"])
            assert f"conflict with {winner}" in outcomes
    assert len(rf.events(lake5["lake"])) == 3


def test_a_sheet_row_decided_in_the_app_since_the_export_is_a_conflict(lake5, tmp_path):
    items = lake5["items"]
    path = _golden_sheet(lake5, tmp_path, decisions={items[0]["qa_id"]: {"action": "approve"},
                                                      items[1]["qa_id"]: {"action": "reject", "reason": "trivial"}})
    app_decision = _decide(lake5, items[1]["qa_id"], "approve", reviewer="bo")  # in the browser, after the export
    with pytest.raises(review.ReviewError, match=rf"row 3: item {items[1]['qa_id']} was decided after this sheet was "
                                                  rf"exported \(approve by bo at .*\); to decide over it, set its seen_event_id to {app_decision['event_id']} "
                                                  r"\(nothing was applied\)"):
        review.import_sheet(lake5["lake"], path, "ana", _index(lake5))
    assert [e["event_id"] for e in rf.events(lake5["lake"])] == [app_decision["event_id"]], "nothing half-applied"
    text = path.read_text(encoding="utf-8-sig")  # the reviewer decides over it on purpose: the id the error named
    rows = list(csv.DictReader(io.StringIO(text)))
    rows[1]["seen_event_id"] = app_decision["event_id"]
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert review.import_sheet(lake5["lake"], path, "ana", _index(lake5))["by_action"] == {"approve": 1, "reject": 1}
    fresh = _golden_sheet(lake5, tmp_path)  # a new export carries the latest decisions
    seen = {r["qa_id"]: r["seen_event_id"] for r in csv.DictReader(fresh.open(encoding="utf-8-sig"))}
    latest = {e["item_id"]: e["event_id"] for e in rf.events(lake5["lake"])}
    assert seen == {i["qa_id"]: latest.get(i["qa_id"], "") for i in items} and seen[items[1]["qa_id"]] != app_decision["event_id"]


# -- stale items ----------------------------------------------------------------------------------------------
def _approve_and_change_corpus(info):
    item = info["items"][0]
    _decide(info, item["qa_id"], "approve")
    review.apply_reviews(info["lake"], "synthetic")
    doc = item["source_doc_ids"][0]
    n = doc.split("page")[1][0]
    rf.edit_document(info["lake"], rf.docs(), doc, f"has {10 + int(n)} docks", "has 40 docks")
    return item


def test_a_corpus_edit_puts_an_approved_item_in_the_stale_queue_and_nowhere_else(lake5):
    item = _approve_and_change_corpus(lake5)
    index = _index(lake5)
    ref, rows, events = review.effective_rows(lake5["lake"], "synthetic")
    stale = review.stale_ids(rows, index.chunk_ids())
    assert stale == {item["qa_id"]}, "an unreviewed item whose chunk changed is synth's to regenerate, not a person's"
    golden = review.golden_queue(rows, stale, events, "synthetic")
    assert item["qa_id"] not in {i["qa_id"] for i in golden.items}
    assert [i["qa_id"] for i in review.stale_queue(rows, stale, events, "synthetic").items] == [item["qa_id"]]


def test_reapprove_moves_a_stale_item_to_the_changed_chunk(lake5):
    item = _approve_and_change_corpus(lake5)
    index = _index(lake5)
    event = _decide(lake5, item["qa_id"], "reapprove", queue="stale")
    new_id = rf.after(event)["source_chunk_ids"][0]
    assert new_id != item["source_chunk_ids"][0] and "has 40 docks" in index.get([new_id])[new_id].text
    review.apply_reviews(lake5["lake"], "synthetic")
    row = _head(lake5)[1][item["qa_id"]]
    assert row["source_chunk_ids"] == row["reference_chunk_ids"] == [new_id]
    assert (row["status"], row["review"]) == ("active", "approved")
    assert review.stale_ids([row], index.chunk_ids()) == set()


def test_retire_takes_a_stale_item_out_of_the_active_set(lake5):
    item = _approve_and_change_corpus(lake5)
    _decide(lake5, item["qa_id"], "retire", queue="stale")
    review.apply_reviews(lake5["lake"], "synthetic")
    row = _head(lake5)[1][item["qa_id"]]
    assert (row["status"], row["review"]) == ("retired", "approved")


def test_the_stale_diff_shows_the_old_and_new_chunk_text(lake5):
    from ragloop.app.server import stale_diffs

    item = _approve_and_change_corpus(lake5)
    _, rows, events = review.effective_rows(lake5["lake"], "synthetic")
    row = next(r for r in rows if r["qa_id"] == item["qa_id"])
    (diff,) = stale_diffs(_index(lake5), row, events)
    assert diff["old_known"]
    assert ("del", str(10 + int(item["source_doc_ids"][0].split("page")[1][0]))) in diff["diff"] and ("ins", "40") in diff["diff"]


# -- synth respects people ---------------------------------------------------------------------------------
def _prev(qa_id, review_, status="active", chunks=("c1",), qa_type="single_hop"):
    return {"qa_id": qa_id, "review": review_, "status": status, "source_chunk_ids": list(chunks), "source_doc_ids": ["d"],
            "qa_type": qa_type, "prompt_id": "qa_single_hop@1", "prompt_hash": "old"}


def test_protect_human_keeps_holds_and_carries_decided_items():
    previous = [_prev("synth-stale", "synthetic"), _prev("human-stale", "approved"), _prev("human-outdated", "edited"),
                _prev("rejected", "rejected", status="retired"), _prev("synth-kept", "synthetic")]
    verdicts = {"synth-stale": "stale", "human-stale": "stale", "human-outdated": "outdated", "synth-kept": "kept"}
    kept_verdicts, held = review.protect_human(previous, verdicts)
    assert kept_verdicts == {"synth-stale": "stale", "human-outdated": "kept", "synth-kept": "kept"}
    assert {h["qa_id"]: h["status"] for h in held} == {"human-stale": "stale", "rejected": "retired"}


def test_synth_never_regenerates_a_rejected_pair_nor_overwrites_a_human_item(lake5):
    """plan_synth + fill_budget + assemble_golden over a set where people approved, edited (now stale) and rejected."""
    items = lake5["items"]
    _decide(lake5, items[0]["qa_id"], "reject", {"reason": "trivial"})
    _decide(lake5, items[1]["qa_id"], "edit", {"reference_answer": "Human words."})
    review.apply_reviews(lake5["lake"], "synthetic")
    rf.edit_document(lake5["lake"], rf.docs(), items[1]["source_doc_ids"][0], "near the harbour", "by the old harbour")
    _, previous = review.line_head(lake5["lake"], "synthetic")
    store = lake5["store"].__class__(lake5["lake"], rf.embedder())
    catalog = store.scan(["chunk_id", "doc_id"]).to_pylist()
    prompts = synth_run.load_synth_prompts(str(rf.Path(__file__).resolve().parents[2] / "prompts"))
    plan = synth_run.plan_synth(previous, None, catalog, prompts, "inputs-2", size=5)

    assert ("single_hop", items[0]["source_chunk_ids"][0]) in plan.rejected_pairs
    assert {h["qa_id"]: h["status"] for h in plan.held} == {items[0]["qa_id"]: "retired", items[1]["qa_id"]: "stale"}
    assert items[1]["qa_id"] not in {c["qa_id"] for c in plan.changed}, "a human-edited item is never regenerated"

    rejected_chunk = items[0]["source_chunk_ids"][0]
    rejected_ref = qa.ChunkRef(rejected_chunk, items[0]["source_doc_ids"][0], "sha", "text", 0)
    generated = []

    def plan_step(store, counts, config, rng, priority, ineligible, avoid=frozenset()):
        ineligible.clear()
        return [qa.GenTask("single_hop", "newcomer", [rejected_ref], [(0, 4)]),
                qa.GenTask("paraphrased", "newcomer", [rejected_ref], [(0, 4)])]

    def generate_step(tasks, prompts, llm, on_done=None, writer=None):
        generated.extend((t.qa_type, t.chunks[0].chunk_id) for t in tasks)
        return []

    budget = synth_run.fill_budget(plan, store, None, _NoLLM(), prompts, synth_run.SynthConfig(size=5, rounds=1),
                                   plan_step=plan_step, generate_step=generate_step)
    assert generated == [("paraphrased", rejected_chunk)], "the rejected (type, chunk) pair is never generated again"
    assert budget.report.ineligible_chunks["rejected_by_review"] == 1
    golden = synth_run.assemble_golden(plan, [])
    by_id = {i["qa_id"]: i for i in golden.items}
    assert by_id[items[1]["qa_id"]]["reference_answer"] == "Human words." and by_id[items[1]["qa_id"]]["status"] == "stale"
    assert by_id[items[0]["qa_id"]]["review"] == "rejected", "the rejection stays in the set, so it is never forgotten"


class _NoLLM:
    model_id = "none"

    def preflight(self, required_context_tokens):
        return {}

    def count_tokens(self, text):
        return len(text.split())


# -- the curated line ----------------------------------------------------------------------------------------
def test_promote_curated_writes_only_reviewed_items_and_chooses_the_line(lake5):
    items = lake5["items"]
    _decide(lake5, items[0]["qa_id"], "approve")
    _decide(lake5, items[1]["qa_id"], "edit", {"question": "How many docks at the harbour station?"})
    _decide(lake5, items[2]["qa_id"], "reject", {"reason": "duplicate"})
    review.apply_reviews(lake5["lake"], "synthetic")
    result = review.promote_curated(lake5["lake"], "synthetic", "curated")
    lines = promotion.Refs(lake5["lake"]).lines()
    assert lines.chosen == "curated" and lines.lines["curated"].kind == "curated"
    assert result["items"] == 2 and result["reviews"] == {"approved": 1, "edited": 1}
    _, rows = review.line_head(lake5["lake"], "curated")
    assert sorted(r["qa_id"] for r in rows) == sorted([items[0]["qa_id"], items[1]["qa_id"]])


def test_promote_curated_without_reviewed_items_is_refused(lake5):
    with pytest.raises(review.ReviewError, match="no approved or edited item"):
        review.promote_curated(lake5["lake"], "synthetic")


# -- answers ---------------------------------------------------------------------------------------------------
def test_grades_and_preferences_are_events_of_the_run(lake5):
    lake, qa_id = lake5["lake"], lake5["items"][0]["qa_id"]
    review.record_decision(lake, review.Decision("answers", qa_id, "grade", "ana", {"grade": "correct", "comment": "ok"}),
                           run_id=lake5["candidate_run"])
    review.record_decision(lake, review.Decision("compare", qa_id, "prefer", "ana", {"better": "candidate"}),
                           run_id=lake5["candidate_run"])
    _, items = review.answer_items(lake, lake5["candidate_run"])
    state = review.answers_queue(items, review.read_events(lake), lake5["candidate_run"])
    assert (state.done, state.left, state.by_reviewer) == (1, 4, {"ana": 1})
    assert [(e["queue"], e["run_id"], rf.after(e)) for e in rf.events(lake)] == [
        ("answers", lake5["candidate_run"], {"grade": "correct", "comment": "ok"}),
        ("compare", lake5["candidate_run"], {"better": "candidate"})]


# -- the sheet ----------------------------------------------------------------------------------------------------
def _fill(rows, decisions):
    for row in rows:
        row.update(decisions.get(row["qa_id"], {}))
    return rows


def _golden_sheet(info, tmp_path, fmt="csv", decisions=None):
    ref, rows, events = review.effective_rows(info["lake"], "synthetic")
    index = _index(info)
    sheet = review.golden_sheet(rows, "synthetic", ref.golden_set_id, index, review.stale_ids(rows, index.chunk_ids()), events)
    path = tmp_path / f"sheet.{fmt}"
    review.write_sheet(_fill(sheet, decisions or {}), review.GOLDEN_SHEET, path, fmt)
    return path


def _sheet_decisions(items, other_chunk):
    return {items[0]["qa_id"]: {"action": "approve"},
            items[1]["qa_id"]: {"action": "edit", "new_reference_answer": "Eleven docks, says the sheet."},
            items[2]["qa_id"]: {"action": "reject", "reason": "ambiguous", "note": "which one?"},
            items[3]["qa_id"]: {"action": "edit", "new_reference_chunk_ids": other_chunk},
            items[4]["qa_id"]: {"action": "skip"}}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_sheet_round_trip_equals_deciding_item_by_item(tmp_path, fmt):
    by_sheet, by_hand = rf.build(tmp_path / "a", 5), rf.build(tmp_path / "b", 5)
    items = by_sheet["items"]
    other = next(c["chunk_id"] for c in by_sheet["chunks"] if c["chunk_id"] not in items[3]["source_chunk_ids"])
    path = _golden_sheet(by_sheet, tmp_path, fmt, _sheet_decisions(items, other))
    result = review.import_sheet(by_sheet["lake"], path, "ana", _index(by_sheet))
    assert result["by_action"] == {"approve": 1, "edit": 2, "reject": 1}

    _decide(by_hand, items[0]["qa_id"], "approve")
    _decide(by_hand, items[1]["qa_id"], "edit", {"reference_answer": "Eleven docks, says the sheet."})
    _decide(by_hand, items[2]["qa_id"], "reject", {"reason": "ambiguous", "note": "which one?"})
    _decide(by_hand, items[3]["qa_id"], "edit", {"reference_chunk_ids": [other]})
    applied = review.apply_reviews(by_hand["lake"], "synthetic")
    assert result["applied"][0]["golden_set_id"] == applied["golden_set_id"]
    strip = lambda rows: {q: {k: v for k, v in r.items() if k not in ("reviewed_at", "review_event_id", "created_at")} for q, r in rows.items()}  # noqa: E731
    assert strip(_head(by_sheet)[1]) == strip(_head(by_hand)[1])


def test_the_csv_sheet_opens_in_a_spreadsheet_with_the_evidence_text(lake5, tmp_path):
    path = _golden_sheet(lake5, tmp_path)
    rows = list(csv.DictReader(path.open(encoding="utf-8-sig")))
    assert len(rows) == 5 and rows[0]["evidence"].startswith("Station") and rows[0]["action"] == ""
    assert set(rows[0]) == set(review.GOLDEN_SHEET)


@pytest.mark.parametrize("decisions, message", [
    ({"x": {}}, None),
    ({0: {"action": "approve"}, 2: {"action": "delete"}}, r"row 4: action 'delete' is not one of"),
    ({0: {"action": "reject", "reason": "nope"}}, r"row 2: item \w+: reject reason 'nope'"),
    ({1: {"action": "edit"}}, r"row 3: action edit, but new_question"),
    ({1: {"action": "edit", "new_reference_chunk_ids": "zzz"}}, r"row 3: item \w+: chunk\(s\) not in the served index: zzz"),
])
def test_a_bad_sheet_row_fails_the_whole_import_naming_the_row(lake5, tmp_path, decisions, message):
    items = lake5["items"]
    if message is None:  # an unknown qa_id
        path = _golden_sheet(lake5, tmp_path, decisions={items[0]["qa_id"]: {"action": "approve"}})
        text = path.read_text(encoding="utf-8-sig").replace(items[2]["qa_id"], "not-an-item")
        path.write_text(text, encoding="utf-8-sig")
        message = "row 4: unknown qa_id 'not-an-item'"
    else:
        path = _golden_sheet(lake5, tmp_path, decisions={items[i]["qa_id"]: d for i, d in decisions.items()})
    with pytest.raises(review.ReviewError, match=message) as err:
        review.import_sheet(lake5["lake"], path, "ana", _index(lake5))
    assert "nothing was applied" in str(err.value)
    assert review.read_events(lake5["lake"]) == [], "nothing half-applied"
    assert _head(lake5)[0].golden_set_id == lake5["golden_set_id"]


def test_an_answer_sheet_records_grades_and_preferences(lake5, tmp_path):
    lake = lake5["lake"]
    run, items = review.answer_items(lake, lake5["candidate_run"])
    _, base = review.answer_items(lake, lake5["baseline_run"])
    rows = review.answer_sheet(run, items, {b["qa_id"]: b for b in base})
    rows[0].update(grade="correct", better="candidate", comment="good")
    rows[1].update(grade="incorrect")
    path = tmp_path / "answers.csv"
    review.write_sheet(rows, review.ANSWER_SHEET, path, "csv")
    result = review.import_sheet(lake, path, "ana", _index(lake5))
    assert result["by_action"] == {"grade": 2, "prefer": 1}
    rows[2].update(grade="superb")
    review.write_sheet(rows, review.ANSWER_SHEET, path, "csv")
    with pytest.raises(review.ReviewError, match="row 4: item .*grade 'superb'"):
        review.import_sheet(lake, path, "ana", _index(lake5))
    assert len(review.read_events(lake)) == 3


def test_a_reviewed_version_the_golden_suite_fails_is_written_but_does_not_move_the_line(lake5, monkeypatch):
    from ragloop.tasks import golden_quality

    items = lake5["items"]
    ref_before, _ = review.line_head(lake5["lake"], "synthetic")
    _decide(lake5, items[0]["qa_id"], "reject", {"reason": "trivial"})
    # the serving index no longer holds the chunks the other items refer to: the suite's reference check fails
    monkeypatch.setattr(golden_quality, "serving_chunks", lambda lake: ({"table": "chunks", "version": 9}, []))
    result = review.apply_reviews(lake5["lake"], "synthetic")
    assert result["status"] == "failed" and "reference" in result["error"], result
    ref_after, _ = review.line_head(lake5["lake"], "synthetic")
    assert ref_after.golden_set_id == ref_before.golden_set_id, "the line stays on the version before"
    assert lake5["lake"].read_golden(result["golden_set_id"]).num_rows, "the reviewed version is written, nothing lost"


def test_synth_keeps_an_item_a_reviewer_made_from_production_traffic(lake5):
    """A production item (qa_type production, no prompt; its logged contexts matched to chunks, or none)
    lives in the line synth refreshes: synth keeps it while its chunks stand and holds it as stale when
    they change, like any item a person wrote."""
    items = lake5["items"]
    _, previous = review.line_head(lake5["lake"], "synthetic")
    made = [dict(previous[0], qa_id="prod-a", qa_type="production", source="production", review="approved", prompt_id=None,
                 prompt_hash=None, generator=None, source_chunk_ids=[], source_doc_ids=[], reference_chunk_ids=[]),
            dict(previous[1], qa_id="prod-b", qa_type="production", source="production", review="edited", prompt_id=None,
                 prompt_hash=None, generator=None)]
    rf.edit_document(lake5["lake"], rf.docs(), items[1]["source_doc_ids"][0], "near the harbour", "by the old harbour")
    store = lake5["store"].__class__(lake5["lake"], rf.embedder())
    catalog = store.scan(["chunk_id", "doc_id"]).to_pylist()
    prompts = synth_run.load_synth_prompts(str(rf.Path(__file__).resolve().parents[2] / "prompts"))
    plan = synth_run.plan_synth(previous + made, None, catalog, prompts, "inputs-2", size=5)
    assert "prod-a" in {i["qa_id"] for i in plan.kept}
    assert {h["qa_id"]: h["status"] for h in plan.held}.get("prod-b") == "stale"
    assert not {"prod-a", "prod-b"} & {c["qa_id"] for c in plan.changed}, "never regenerated"
