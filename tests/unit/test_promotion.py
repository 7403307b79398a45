"""Promotion rules and the refs they write: only promoting modes promote, blue/green candidates, golden-set
lines that synth never displaces, rollback, promotion after the fact."""

from __future__ import annotations

import pytest

from ragloop.tasks import promotion
from ragloop.tasks.promotion import (GoldenLines, Promotion, PromotionError, Refs, ServingRef, index_disposition, line_name,
                             pick_index, promotable_after_the_fact, promotion_decision, rollback_target)
from ragloop.tasks.storage import Lake


@pytest.fixture
def refs(lake_dir):
    return Refs(Lake(str(lake_dir)))


def _serving(table="chunks__a", version=3, chunker="c1", **kw):
    return ServingRef(table=table, version=version, chunker_hash=chunker, **kw)


@pytest.mark.parametrize("serving, table, chunker, changed, action", [
    (None, "chunks__a", "c1", True, "serve"),
    (_serving(), "chunks__a", "c1", True, "serve"),
    (_serving(), "chunks__a", "c1", False, "serve"),
    (_serving(), "chunks__b", "c1", True, "candidate"),
    (_serving(), "chunks__a__onnx_int8", "c1", True, "candidate"),
    (_serving(), "chunks__a", "c2", True, "candidate"),
    (_serving(rolled_back_at="2026-11-30T00:00:00"), "chunks__a", "c1", False, "keep"),
    (_serving(rolled_back_at="2026-11-30T00:00:00"), "chunks__a", "c1", True, "serve"),
])
def test_index_disposition(serving, table, chunker, changed, action):
    assert index_disposition(serving, table, chunker, changed)[0] == action


@pytest.mark.parametrize("verdict, mode, policy, promoted", [
    ("passed", None, "block", False),  # an experiment never promotes
    ("no_baseline", None, "block", False),
    ("passed", "nightly", "block", True),
    ("passed", "prompt-changed", "block", True),
    ("passed", "explicit", "block", True),
    ("no_baseline", "explicit", "block", True),
    ("failed", "explicit", "warn", False),
    ("inconclusive", "nightly", "block", False),
    ("inconclusive", "nightly", "warn", True),
])
def test_promotion_decision(verdict, mode, policy, promoted):
    ok, reason = promotion_decision(verdict, mode, policy)
    assert ok is promoted and reason
    if mode is None:
        assert reason.startswith("experiment")


def test_pick_index_prefers_a_pending_candidate_of_this_table():
    serving, candidate = _serving(), _serving(table="chunks__b", version=1)
    assert pick_index(serving, candidate, "chunks__b") == (candidate, "candidate")
    same_table = _serving(version=7, chunker="c2")
    assert pick_index(serving, same_table, "chunks__a", "serving") == (serving, "serving")
    assert pick_index(serving, candidate, "chunks__a") == (serving, "serving")
    with pytest.raises(PromotionError, match="configured embedder reads chunks__c"):
        pick_index(serving, candidate, "chunks__c")
    with pytest.raises(PromotionError, match="no index yet"):
        pick_index(None, None, "chunks__a")
    with pytest.raises(PromotionError, match="no candidate index pending"):
        pick_index(serving, None, "chunks__a", "candidate")


def test_record_index_builds_candidates_and_serves_content_updates(refs):
    first = refs.record_index("chunks__a", 2, "i1", "c1", True)
    assert first["action"] == "serve" and first["serving"] == {"table": "chunks__a", "version": 2}
    switched = refs.record_index("chunks__b", 1, "i2", "c1", True)
    assert switched["action"] == "candidate" and switched["serving"]["table"] == "chunks__a"
    assert switched["candidate"] == {"table": "chunks__b", "version": 1}
    back = refs.record_index("chunks__a", 4, "i3", "c1", True)  # config went back: the candidate is moot
    assert back["action"] == "serve" and back["candidate"] is None and "dropped" in back["reason"]


def _promo(run_id, line="synthetic", version=2, at="2026-11-30T00:00:0", table="chunks__a"):
    return Promotion(run_id=run_id, golden_set_id="g1", line=line, table={"name": table, "version": version},
                     promoted_at=at + run_id[-1], chunker_hash="c1")


def test_promoting_a_candidate_moves_serving_and_clears_it(refs):
    refs.record_index("chunks__a", 2, "i1", "c1", True)
    refs.record_index("chunks__b", 1, "i2", "c1", True)
    moved = refs.promote(_promo("r1", table="chunks__b", version=1), candidate_evaluated=True)
    assert moved["serving_moved"] == {"from": {"table": "chunks__a", "version": 2}, "to": {"name": "chunks__b", "version": 1}}
    assert refs.candidate() is None and refs.serving().table == "chunks__b"
    assert refs.baseline("synthetic").run_id == "r1"
    assert refs.promote(_promo("r2"), candidate_evaluated=False)["serving_moved"] is None


def test_lines_synth_never_displaces_the_chosen_one(refs):
    refs.set_line("synthetic", "s1", "synthetic", "run1", inputs="h1")
    assert refs.lines().chosen == "synthetic", "the first line is chosen"
    refs.set_line("curated", "c1", "imported", "run2", choose=True)
    refs.set_line("synthetic", "s2", "synthetic", "run3", inputs="h2")
    lines = refs.lines()
    assert lines.chosen == "curated" and lines.lines["synthetic"].history == ["s1", "s2"]
    assert refs.resolve_golden("latest", ["c1", "s1", "s2"]) == ("c1", "curated")
    assert refs.resolve_golden("synthetic", []) == ("s2", "synthetic")
    assert refs.resolve_golden("s1", ["c1", "s1", "s2"]) == ("s1", "synthetic"), "an old version belongs to its line"
    assert refs.resolve_golden("nope", ["c1"]) == (None, None)


def test_golden_use_by_line_or_id(refs):
    refs.set_line("synthetic", "s1aaaa", "synthetic", "r", inputs="h")
    refs.set_line("synthetic", "s2bbbb", "synthetic", "r", inputs="h2")
    refs.set_line("curated", "c1cccc", "imported", "r", choose=True)
    assert refs.use("synthetic", [])["chosen"] == "synthetic"
    pinned = refs.use("s1a", ["s1aaaa", "s2bbbb", "c1cccc"])
    assert pinned["chosen"] == "pinned-s1aaaa" and refs.resolve_golden("latest", [])[0] == "s1aaaa"
    with pytest.raises(PromotionError, match="no such line"):
        refs.use("zzz", ["s1aaaa"])


def test_old_lakes_refs_become_lines(lake_dir):
    lake = Lake(str(lake_dir))
    lake.write_ref("golden", {"golden_set_id": "s1", "run_id": "r1", "inputs": "h"})
    lake.write_ref("golden_latest", {"golden_set_id": "i1", "run_id": "r2"})
    lines = Refs(lake).lines()
    assert isinstance(lines, GoldenLines) and lines.chosen == "imported"
    assert lines.lines["synthetic"].inputs == "h" and lines.lines["imported"].golden_set_id == "i1"


def test_rollback_walks_the_lines_history(refs):
    refs.record_index("chunks__a", 2, "i1", "c1", True)
    refs.promote(_promo("r1", version=2), candidate_evaluated=False)
    refs.record_index("chunks__a", 5, "i2", "c1", True)
    refs.promote(_promo("r2", version=5), candidate_evaluated=False)
    done = refs.rollback("synthetic", lambda name, version: None)
    assert (done["from"].run_id, done["to"].run_id) == ("r2", "r1")
    serving = refs.serving()
    assert (serving.version, serving.rolled_back_from["version"]) == (2, 5) and serving.rolled_back_at
    assert refs.baseline("synthetic").run_id == "r1"
    with pytest.raises(PromotionError, match="first promotion"):
        refs.rollback("synthetic", lambda name, version: None)
    refs.promote(_promo("r3", version=9), candidate_evaluated=False)
    with pytest.raises(PromotionError, match="not readable"):
        refs.rollback("synthetic", lambda name, version: "version gone")
    assert refs.baseline("synthetic").run_id == "r3", "a refused rollback changes nothing"


def test_promotable_after_the_fact():
    base = _promo("r1")
    passed = {"run_id": "r2", "flow": "eval", "status": "ok",
              "outputs": {"gate": {"status": "passed"}, "baseline_run_id": "r1"}}
    assert promotable_after_the_fact(passed, base) is None
    assert "already the baseline" in promotable_after_the_fact({**passed, "run_id": "r1"}, base)
    assert "bake-off table" in promotable_after_the_fact({**passed, "lineage": {"index_role": "bakeoff"}}, base)
    assert "baseline is now r9" in promotable_after_the_fact(passed, _promo("r9"))
    failed = {**passed, "status": "gate_failed", "outputs": {"gate": {"status": "failed"}, "baseline_run_id": "r1"}}
    assert "only a passed run" in promotable_after_the_fact(failed, base)
    assert "not an eval" in promotable_after_the_fact({**passed, "flow": "index"}, base)
    first = {**passed, "outputs": {"gate": {"status": "no_baseline"}, "baseline_run_id": None}}
    assert promotable_after_the_fact(first, None) is None


def test_rollback_target_needs_an_earlier_promotion():
    with pytest.raises(PromotionError, match="nothing was ever promoted"):
        rollback_target([], None)


@pytest.mark.parametrize("raw, name", [("Curated Set", "curated-set"), ("beir-scifact-test", "beir-scifact-test")])
def test_line_name(raw, name):
    assert line_name(raw) == name


@pytest.mark.parametrize("raw", ["synthetic", "latest", "  ", "///"])
def test_reserved_or_empty_line_names_are_refused(raw):
    with pytest.raises(PromotionError):
        line_name(raw)


def test_only_the_promotion_module_writes_promotion_refs():
    import re
    from pathlib import Path

    root = Path(promotion.__file__).resolve().parents[1]
    owned = r"(serving|candidate|golden_lines|baselines|golden|golden_latest|promoted_latest|promoted__\w*)"
    offenders = []
    for path in [*root.glob("tasks/*.py"), *root.glob("flows/*.py"), *root.glob("deployments/*.py")]:
        if path.name == "promotion.py":
            continue
        text = path.read_text()
        if re.search(rf"write_ref\(\s*f?[\"']{owned}[\"'{{]", text) or re.search(r"\.(write_promotion|delete_ref)\(", text):
            offenders.append(path.name)
    assert offenders == []


def test_a_second_rollback_never_returns_to_a_rolled_back_promotion(refs):
    refs.record_index("chunks__a", 2, "i1", "c1", True)
    for run, version in (("r1", 2), ("r2", 3)):
        refs.promote(_promo(run, version=version), candidate_evaluated=False)
    assert refs.rollback("synthetic", lambda name, version: None)["to"].run_id == "r1"
    refs.promote(_promo("r3", version=4), candidate_evaluated=False)
    done = refs.rollback("synthetic", lambda name, version: None)
    assert (done["from"].run_id, done["to"].run_id) == ("r3", "r1"), "r2 was rolled back: not a state to return to"


def test_a_no_op_index_keeps_the_served_version_without_rewriting_it(refs):
    refs.record_index("chunks__a", 2, "i1", "c1", True)
    before = refs.serving()
    kept = refs.record_index("chunks__a", 2, "i2", "c1", False)
    assert kept["action"] == "keep" and refs.serving() == before


def test_a_bakeoff_table_is_recorded_never_served(refs):
    refs.record_index("chunks__a", 2, "i1", "c1", True)
    done = refs.record_bakeoff_table("chunks__a__ckc2", 4, "i2", "c2")
    assert done["action"] == "bakeoff" and done["serving"] == {"table": "chunks__a", "version": 2}
    assert done["candidate"] is None and refs.bakeoff_table("chunks__a__ckc2").run_id == "i2"
    refs.record_bakeoff_table("chunks__a__ckc2", 4, "i3", "c2")  # a no-op run keeps the run that built the version
    assert refs.bakeoff_table("chunks__a__ckc2").run_id == "i2"
    refs.record_bakeoff_table("chunks__a__ckc2", 5, "i4", "c2")
    assert (refs.bakeoff_table("chunks__a__ckc2").version, refs.bakeoff_table("chunks__a__ckc2").run_id) == (5, "i4")
    assert refs.bakeoff_table("chunks__b__ckc2") is None
