"""The synth stage's decisions without Prefect: prompts, what is kept, the budget loop, status, summary."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from ragloop.tasks import indexing, promotion, synth_run
from ragloop.tasks import qa_generation as qa
from ragloop.tasks.chunking import Chunker
from ragloop.tasks.ingestion import content_sha256
from ragloop.tasks.llm import LLMUnavailable
from ragloop.tasks.schemas import Document
from ragloop.tasks.settings import ChunkingConfig, ConfigError, LLMConfig, SynthConfig
from ragloop.tasks.storage import Lake
from tests.conftest import REPO
from tests.synth_fakes import DOCS, PassageLLM


@pytest.fixture
def prompts():
    return synth_run.load_synth_prompts(str(REPO / "prompts"))


@pytest.fixture
def store(lake_dir, fake_embedder):
    """A real chunks table over the synth fakes' corpus (DOCS), embedded with the hash embedder."""
    store = indexing.ChunkStore(Lake(str(lake_dir)), fake_embedder)
    docs = [Document(doc_id=name, source_uri=name, content_sha256=content_sha256(text, name, {}), text=text,
                     title=name, mime="text/markdown", bytes=len(text)) for name, text in DOCS.items()]
    chunks = Chunker(ChunkingConfig(max_tokens=60, overlap_tokens=0), fake_embedder.counter).chunk_documents(docs)
    embedded = indexing.embed_missing(chunks, store, fake_embedder)
    store.replace_documents(indexing.chunk_rows(chunks, embedded.vectors, store.dim), [d.doc_id for d in docs])
    return store


def _config(**changes) -> SynthConfig:
    return SynthConfig(**{"size": 6, "min_context_tokens": 5, "question_writer": "rules_then_model", **changes})


def _catalog(store) -> list[dict]:
    return store.scan(["chunk_id", "doc_id"]).to_pylist()


def _fresh_plan(store, prompts, size: int) -> synth_run.SynthPlan:
    return synth_run.plan_synth([], None, _catalog(store), prompts, "inputs", size)


# -- prompts --------------------------------------------------------------------------------------
def test_prompts_with_an_undeclared_variable_are_a_config_error_naming_it(tmp_path):
    bad = tmp_path / "prompts"
    bad.mkdir()
    text = (REPO / "prompts" / "qa_abstract.yaml").read_text().replace("{{ persona }}", "{{ audience }}")
    (bad / "qa_abstract.yaml").write_text(text)
    with pytest.raises(ConfigError, match="qa_abstract.*audience|audience.*qa_abstract"):
        synth_run.load_synth_prompts(str(bad))


def test_a_prompt_set_without_a_synth_prompt_is_a_config_error(monkeypatch, prompts):
    monkeypatch.setattr(synth_run, "load_prompt_set", lambda directory: {k: v for k, v in prompts.items() if k != "qa_paraphrase"})
    with pytest.raises(ConfigError, match=r"missing prompt file\(s\) \['qa_paraphrase'\]"):
        synth_run.load_synth_prompts("somewhere")


def test_a_missing_prompts_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nowhere"):
        synth_run.load_synth_prompts(str(tmp_path / "nowhere"))


def test_generation_inputs_follow_the_table_settings_and_synth_prompts_only(prompts):
    base = synth_run.generation_inputs(("chunks", 3), SynthConfig(), LLMConfig(), prompts)
    answer_changed = {**prompts, "answer": dataclasses.replace(prompts["answer"], prompt_hash="other")}
    qa_changed = {**prompts, "qa_abstract": dataclasses.replace(prompts["qa_abstract"], prompt_hash="other")}
    assert synth_run.generation_inputs(("chunks", 3), SynthConfig(), LLMConfig(), answer_changed) == base, "eval's prompt"
    assert synth_run.generation_inputs(("chunks", 3), SynthConfig(), LLMConfig(), qa_changed) != base
    assert synth_run.generation_inputs(("chunks", 4), SynthConfig(), LLMConfig(), prompts) != base
    assert synth_run.generation_inputs(("chunks", 3), SynthConfig(size=21), LLMConfig(), prompts) != base
    assert synth_run.generation_inputs(("chunks", 3), SynthConfig(), LLMConfig(n_ctx=2048), prompts) != base


# -- what the previous golden set keeps ---------------------------------------------------------------
def _previous(prompts):
    single = prompts["qa_from_sentence"]

    def item(qa_id, chunks, docs, prompt_hash=single.prompt_hash, status="active"):
        return {"qa_id": qa_id, "source_chunk_ids": chunks, "source_doc_ids": docs, "status": status,
                "prompt_id": single.prompt_id, "prompt_hash": prompt_hash, "qa_type": "single_hop"}

    return [item("kept", ["c1"], ["d1"]), item("stale", ["c-old"], ["d2"]), item("retired", ["c9"], ["d9"]),
            item("outdated", ["c3"], ["d3"], prompt_hash="an-older-version"),
            item("inactive", ["c1"], ["d1"], status="retired")]


CATALOG = [{"chunk_id": c, "doc_id": d} for c, d in (("c1", "d1"), ("c2", "d2"), ("c3", "d3"), ("c4", "d4"))]


def test_plan_keeps_untouched_items_and_replaces_changed_ones_first(prompts):
    plan = synth_run.plan_synth(_previous(prompts), None, CATALOG, prompts, "inputs", size=5)
    assert [i["qa_id"] for i in plan.kept] == ["kept"]
    assert {i["qa_id"]: i["status"] for i in plan.changed} == {"stale": "stale", "retired": "retired", "outdated": "outdated"}
    assert plan.status_counts() == Counter({"stale": 1, "retired": 1, "outdated": 1})
    # documents of stale/outdated items first, then every document no kept item covers
    assert plan.priority == ["d2", "d3", "d2", "d3", "d4"]
    assert plan.need == 4 and not plan.up_to_date and plan.doc_ids == {"d1", "d2", "d3", "d4"}


@pytest.mark.parametrize(
    "previous_inputs, previous_names, up_to_date, need",
    [
        ("inputs", ["kept"], True, 0),  # same inputs, nothing changed: generate nothing
        ("other", ["kept"], False, 4),  # settings, table or prompts changed
        ("inputs", ["kept", "stale"], False, 4),  # an item changed: replace it
        (None, ["kept"], False, 4),  # a line without inputs (never made by synth)
    ],
)
def test_plan_is_up_to_date_only_when_inputs_match_and_nothing_changed(prompts, previous_inputs, previous_names,
                                                                        up_to_date, need):
    previous = [i for i in _previous(prompts) if i["qa_id"] in previous_names]
    ref = promotion.GoldenLine(golden_set_id="g1", kind="synthetic", inputs=previous_inputs)
    plan = synth_run.plan_synth(previous, ref, CATALOG, prompts, "inputs", size=5)
    assert (plan.up_to_date, plan.need) == (up_to_date, need)


def test_plan_needs_nothing_when_kept_items_fill_the_size(prompts):
    assert synth_run.plan_synth(_previous(prompts), None, CATALOG, prompts, "inputs", size=1).need == 0


# -- the budget loop ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "need, attempted, accepted, planned",
    [
        (5, 0, 0, 5),  # first round: the need
        (5, 5, 0, 10),  # nothing accepted yet: up to 2x the need
        (4, 10, 5, 8),  # half accepted: twice the need
        (2, 10, 8, 3),  # 80% accepted: ceil(2 / 0.8)
    ],
)
def test_planned_count_scales_by_the_accept_rate_up_to_twice_the_need(need, attempted, accepted, planned):
    report = qa.GenerationReport(accepted=[{}] * accepted, attempted=attempted)
    assert synth_run.planned_count(need, report) == planned


def test_fill_budget_fills_the_budget_with_typed_seeded_items(store, prompts, fake_embedder):
    config = _config()
    budget = synth_run.fill_budget(_fresh_plan(store, prompts, 6), store, fake_embedder.encode, PassageLLM(), prompts, config)
    report = budget.report
    assert len(report.accepted) == 6 and len({i["qa_type"] for i in report.accepted}) >= 3
    assert report.attempted == len(report.accepted) + sum(report.rejects.values()), "every candidate accounted for"
    assert sum(budget.attempted_by_type.values()) == report.attempted
    assert all(i["generator"] == PassageLLM.model_id and i["status"] == "active" for i in report.accepted)
    again = synth_run.fill_budget(_fresh_plan(store, prompts, 6), store, fake_embedder.encode, PassageLLM(), prompts, config)
    assert [i["qa_id"] for i in again.report.accepted] == [i["qa_id"] for i in report.accepted], "seeded: the same items"


def test_fill_budget_refills_after_rejects_for_the_configured_rounds(store, prompts, fake_embedder):
    llm = PassageLLM(garbage=True)
    preflights = []
    llm.preflight = lambda required: preflights.append(required)
    budget = synth_run.fill_budget(_fresh_plan(store, prompts, 5), store, fake_embedder.encode, llm, prompts,
                                   _config(size=5, rounds=3))
    # round 1 plans the need (5); nothing accepted, so rounds 2 and 3 plan twice the need (10 each)
    assert budget.report.attempted == 25 and llm.calls == 25 and budget.report.rejects["unparseable"] == 25
    assert budget.report.accepted == [] and len(preflights) == 1, "the LLM is preflighted once"


def test_later_rounds_sample_freely_and_a_plan_step_can_be_injected(store, prompts, fake_embedder):
    priorities = []

    def plan_step(store, counts, config, rng, priority, ineligible, avoid=frozenset()):
        priorities.append(list(priority))
        return qa.plan_tasks(store, counts, config, rng, priority, ineligible, avoid)

    plan = _fresh_plan(store, prompts, 4)
    synth_run.fill_budget(plan, store, fake_embedder.encode, PassageLLM(garbage=True), prompts, _config(size=4, rounds=2),
                          plan_step=plan_step)
    assert priorities == [plan.priority, []]


def test_an_unreachable_llm_is_a_config_error_before_any_generation(store, prompts, fake_embedder):
    llm = PassageLLM()

    def refuse(required):
        raise LLMUnavailable("endpoint http://127.0.0.1:9/v1 did not answer")

    llm.preflight = refuse
    with pytest.raises(ConfigError, match="127.0.0.1:9"):
        synth_run.fill_budget(_fresh_plan(store, prompts, 4), store, fake_embedder.encode, llm, prompts, _config(size=4))
    assert llm.calls == 0


def test_nothing_needed_generates_nothing_and_times_nothing(store, prompts, fake_embedder):
    llm, steps = PassageLLM(), []
    plan = dataclasses.replace(_fresh_plan(store, prompts, 4), need=0)
    budget = synth_run.fill_budget(plan, store, fake_embedder.encode, llm, prompts, _config(size=4),
                                   timer=lambda name: _Step(steps, name))
    assert budget.report.attempted == 0 and llm.calls == 0 and steps == []


class _Step:
    """A timer step that records its name (the flow passes its StageTimer)."""

    def __init__(self, steps: list, name: str) -> None:
        self.steps, self.name = steps, name

    def __enter__(self):
        self.steps.append(self.name)

    def __exit__(self, *exc):
        return False


def test_the_timer_times_each_step_of_a_round(store, prompts, fake_embedder):
    steps: list[str] = []
    synth_run.fill_budget(_fresh_plan(store, prompts, 3), store, fake_embedder.encode, PassageLLM(), prompts,
                          _config(size=3, rounds=1), timer=lambda name: _Step(steps, name))
    assert steps == ["plan", "preflight", "generate", "answerable_check", "roundtrip", "dedupe"]


def test_screen_counts_rejects_by_reason_and_take_budget_counts_the_surplus(prompts):
    chunk = qa.ChunkRef("c1", "d1", "sha", "Riverside Hub has 32 docks, 10 of them with chargers.", 0)
    task = qa.GenTask("single_hop", "a rider", [chunk])
    good = qa.Candidate(task, "How many docks does Riverside Hub have?", "32 docks, 10 with chargers.", prompts["qa_single_hop"])
    bad = qa.Candidate(task, "", "", prompts["qa_single_hop"], error="invalid JSON")
    report = qa.GenerationReport()
    assert synth_run.screen([good, bad], SynthConfig(), report) == [good]
    assert report.rejects == Counter({"unparseable": 1})
    synth_run.take_budget([{"qa_id": "a"}, {"qa_id": "b"}, {"qa_id": "c"}], 2, report)
    assert [i["qa_id"] for i in report.accepted] == ["a", "b"] and report.rejects["over_budget"] == 1


# -- the version written ---------------------------------------------------------------------------
def _plan(kept=(), changed=(), up_to_date=False, doc_ids=("d1", "d2")) -> synth_run.SynthPlan:
    return synth_run.SynthPlan(list(kept), list(changed), [], set(doc_ids), "inputs", up_to_date, 0)


def _row(qa_id: str, doc: str = "d1", qa_type: str = "single_hop", status: str = "active", evidence=True) -> dict:
    return {"qa_id": qa_id, "question": f"Question {qa_id}?", "reference_answer": "", "reference_chunk_ids": [],
            "reference_doc_ids": [doc], "source_chunk_ids": [f"c-{doc}"], "source_doc_ids": [doc], "source_doc_sha256s": [],
            "qa_type": qa_type, "persona": "", "status": status, "review": "synthetic", "generator": "fake",
            "prompt_id": "", "prompt_hash": "", "created_at": None,
            "evidence": [{"chunk_id": f"c-{doc}", "start": 0, "end": 4}] if evidence else []}


def test_a_regenerated_item_appears_once_as_the_new_active_item():
    golden = synth_run.assemble_golden(_plan(kept=[_row("k")], changed=[_row("n", status="outdated"), _row("z", status="retired")]),
                                       [_row("n")])
    assert [(i["qa_id"], i["status"]) for i in golden.items] == [("k", "active"), ("n", "active"), ("z", "retired")]
    assert [i["qa_id"] for i in golden.active] == ["k", "n"]


def test_write_version_reuses_the_previous_version_when_up_to_date(lake_dir):
    lake = Lake(str(lake_dir))
    golden = synth_run.SynthGolden([_row("k")], [_row("k")])
    ref = promotion.GoldenLine(golden_set_id="previous", kind="synthetic", inputs="inputs")
    assert synth_run.write_version(lake, golden, _plan(up_to_date=True), ref) == ("previous", False)
    assert lake.list_golden() == []
    golden_set_id, written = synth_run.write_version(lake, golden, _plan(), ref)
    assert written and golden_set_id == qa.golden_set_id_of(golden.items) and lake.list_golden() == [golden_set_id]
    assert synth_run.write_version(lake, golden, _plan(), ref) == (golden_set_id, False), "content-addressed"


# -- status and summary ---------------------------------------------------------------------------
def _summary(kept: int, accepted: int, attempted: int, size: int = 4, up_to_date: bool = False, generate_s=2.0):
    plan = _plan(kept=[_row(f"k{i}") for i in range(kept)], up_to_date=up_to_date)
    budget = synth_run.Budget(qa.GenerationReport(accepted=[_row(f"n{i}", "d2") for i in range(accepted)], attempted=attempted))
    budget.report.rejects.update({"unparseable": attempted - accepted, "answerable": 0})
    budget.attempted_by_type.update(["single_hop"] * attempted)
    golden = synth_run.assemble_golden(plan, budget.report.accepted)
    return synth_run.summarize("run-1", {"config_hash": "h"}, lake_uri="/lake", golden_set_id="g", written=True, plan=plan,
                               golden=golden, budget=budget, config=SynthConfig(size=size), timings_s={"generate": 2.0},
                               generate_s=generate_s)


@pytest.mark.parametrize(
    "kept, accepted, attempted, status, error, shortfall",
    [
        (0, 0, 5, "failed", "no accepted items: 5 generated, rejected by reason {'unparseable': 5, 'answerable': 0}", False),
        (2, 0, 3, "partial", "no new item accepted out of 3: {'unparseable': 3, 'answerable': 0}", False),
        (0, 2, 5, "partial", "2 of 4 items after 3 rounds; rejected by reason {'unparseable': 3}", True),
        (1, 3, 4, "ok", None, False),
        (4, 0, 0, "ok", None, False),  # up to date: nothing attempted, nothing short
        (3, 0, 0, "partial", "3 of 4 items (nothing generated: up to date)", True),  # up to date, still short
    ],
)
def test_status_is_never_a_silent_ok(kept, accepted, attempted, status, error, shortfall):
    summary = _summary(kept, accepted, attempted).model_dump(mode="json")
    assert summary["status"] == status and summary.get("error") == error
    assert ("shortfall" in summary) is shortfall and "line" not in summary
    if shortfall and attempted:
        # the mix of 4 (synth.types) is 2 single_hop, 1 multi_hop, 1 abstract: the set holds 2 single_hop
        assert summary["shortfall"] == {"asked": 4, "active": 2, "rounds": 3, "rejects": {"unparseable": 3},
                                        "by_type": {"abstract": 1, "multi_hop": 1}}


def test_summary_counts_coverage_rates_and_throughput():
    summary = _summary(1, 3, 4).model_dump(mode="json")
    assert summary["items"] == {"total": 4, "new": 3, "kept": 1, "moved": 0, "stale": 0, "retired": 0, "outdated": 0,
                                "rejected": 1}
    assert summary["rejects"] == {"unparseable": 1}, "zero counts left out"
    assert summary["accept_rate_by_type"] == {"single_hop": 0.75} and summary["by_type"] == {"single_hop": 4}
    assert summary["coverage"] == {"documents": 2, "of": 2, "ratio": 1.0, "folders": 1, "of_folders": 1,
                                   "by_folder": {".": {"documents": 2, "of": 2}}}
    assert summary["evidence_supported"] == {"items": 3, "of": 3}
    assert summary["per_minute"] == {"candidates": 120.0, "accepted": 90.0}
    assert _summary(4, 0, 0, generate_s=None).model_dump(mode="json")["per_minute"] == {"candidates": None, "accepted": None}


@pytest.mark.parametrize(
    "status_case, up_to_date, previous_id, moves",
    [
        ("failed", False, None, False),  # a failed run leaves the line where it was
        ("ok", True, "g", False),  # up to date: the head already is this version
        ("ok", False, "g-old", True),
        ("ok", False, None, True),  # the first synth creates the line
    ],
)
def test_moves_line(status_case, up_to_date, previous_id, moves):
    summary = _summary(0, 0, 5) if status_case == "failed" else _summary(1, 3, 4)
    ref = promotion.GoldenLine(golden_set_id=previous_id, kind="synthetic") if previous_id else None
    assert synth_run.moves_line(summary, _plan(up_to_date=up_to_date), ref) is moves


# A synth summary as the flow returned it (tests/flows/test_synth_flow.py's corpus, size 60: a shortfall),
# its lineage shortened.
FLOW_SUMMARY = {
    "run_id": "20261130T081110Z-synth-84048a", "status": "partial",
    "lineage": {"config_hash": "2bc5a18e266ac504832b6221453b24a49983470bc85566bd3eff676089a38258",
                "golden_set_id": "9b7904c90450d223a62500f7", "previous_golden_set_id": "5444c6748c2f39ce206cebf8",
                "golden_line": "synthetic", "table": {"name": "chunks__hash_fake", "version": 3}, "seed": 0},
    "lake": "/tmp/lake", "golden_set_id": "9b7904c90450d223a62500f7",
    "items": {"total": 39, "new": 29, "kept": 10, "stale": 0, "retired": 0, "outdated": 0, "rejected": 137},
    "by_type": {"abstract": 5, "multi_hop": 2, "paraphrased": 8, "single_hop": 13, "unanswerable": 11},
    "rejects": {"near_duplicate": 137}, "attempted": 166, "up_to_date": False,
    "accept_rate_by_type": {"abstract": 0.154, "multi_hop": 0.0, "paraphrased": 0.292, "single_hop": 0.121, "unanswerable": 0.588},
    "coverage": {"documents": 8, "of": 8, "ratio": 1.0, "folders": 1, "of_folders": 1, "by_folder": {".": {"documents": 8, "of": 8}}},
    "ineligible_chunks": {}, "evidence_supported": {"items": 19, "of": 19}, "written": True,
    "timings_s": {"plan": 0.218, "preflight": 0.044, "generate": 0.225, "answerable_check": 0.074, "dedupe": 0.058},
    "per_minute": {"candidates": 44293.07, "accepted": 7737.95},
    "shortfall": {"asked": 60, "active": 39, "rounds": 3, "rejects": {"near_duplicate": 137}},
    "error": "39 of 60 items after 3 rounds; rejected by reason {'near_duplicate': 137}",
    "line": {"line": "synthetic", "chosen": "synthetic", "previous_chosen": "synthetic", "changed": True},
}


def test_the_summary_model_round_trips_a_flow_summary():
    model = synth_run.SynthSummary.model_validate(FLOW_SUMMARY)
    assert model.model_dump(mode="json") == FLOW_SUMMARY
    assert list(model.model_dump(mode="json")) == list(FLOW_SUMMARY), "the keys keep their order"
    assert model.outputs() == {k: v for k, v in FLOW_SUMMARY.items() if k not in ("run_id", "status", "lineage")}
    up_to_date = {k: v for k, v in FLOW_SUMMARY.items() if k not in ("shortfall", "error", "line")}
    assert synth_run.SynthSummary.model_validate(up_to_date).model_dump(mode="json") == up_to_date, "optional keys stay absent"


def test_the_summary_model_rejects_unknown_keys():
    with pytest.raises(ValueError, match="surprise"):
        synth_run.SynthSummary.model_validate({**FLOW_SUMMARY, "surprise": 1})


class _ReportingLLM(PassageLLM):
    """PassageLLM that reports each finished conversation, as the real LLMs do."""

    def structured_many(self, conversations, output_model, on_done=None, **params):
        out = []
        for messages in conversations:
            out.append(self._one(messages, output_model))
            if on_done is not None:  # the rewrite step does not count: candidates are counted once
                on_done()
        return out


@pytest.mark.parametrize("llm_class, garbage", [(_ReportingLLM, False), (_ReportingLLM, True), (PassageLLM, False)],
                         ids=["reports-each", "every-candidate-fails", "reports-nothing"])
def test_fill_budget_progress_counts_every_candidate_once_and_notes_the_accepted(store, prompts, fake_embedder, caplog,
                                                                                 llm_class, garbage):
    import io
    import logging

    from ragloop.tasks.progress import Progress

    caplog.set_level(logging.INFO, logger="test.synth")
    track = Progress("synth", unit="candidate", log_to=logging.getLogger("test.synth"), stream=io.StringIO(),
                     every_n=1, min_gap_s=0)
    budget = synth_run.fill_budget(_fresh_plan(store, prompts, 5), store, fake_embedder.encode, llm_class(garbage=garbage),
                                   prompts, _config(size=5, rounds=3), progress=track)
    track.close()
    assert track.n == track.total == budget.report.attempted > 0
    assert track.note == {"accepted": f"{len(budget.report.accepted)}/5"}
    lines = [r.getMessage() for r in caplog.records if r.name == "test.synth"]
    assert lines and lines[-1].startswith(f"synth: {track.n}/{track.n} candidates (100%)")
    assert lines[-1].endswith(f"accepted {len(budget.report.accepted)}/5")


# -- a renamed document carries its items over -------------------------------------------------------------
def _chunks(doc: str, texts: list[str], chunker: str = "ch1", sha: str | None = None) -> list[dict]:
    """Catalog rows of a document as the chunker makes them (ids from tasks.chunking.chunk_id_of)."""
    from ragloop.tasks.chunking import chunk_id_of

    seen: Counter = Counter()
    rows = []
    for position, text in enumerate(texts):
        rows.append({"chunk_id": chunk_id_of(doc, chunker, seen[text], text), "doc_id": doc,
                     "doc_sha256": sha or f"sha-{doc}", "text": text, "position": position, "chunker_hash": chunker})
        seen[text] += 1
    return rows


def _item_on(qa_id: str, rows: list[dict], prompts, qa_type: str = "single_hop") -> dict:
    single = prompts["qa_from_sentence"]
    docs = list(dict.fromkeys(r["doc_id"] for r in rows))
    return {"qa_id": qa_id, "question": f"{qa_id}?", "qa_type": qa_type, "status": "active", "review": "synthetic",
            "source_chunk_ids": [r["chunk_id"] for r in rows], "reference_chunk_ids": [r["chunk_id"] for r in rows],
            "source_doc_ids": docs, "reference_doc_ids": docs, "source_doc_sha256s": [rows[0]["doc_sha256"]],
            "evidence": [{"chunk_id": r["chunk_id"], "start": 0, "end": 4} for r in rows],
            "prompt_id": single.prompt_id, "prompt_hash": single.prompt_hash}


TEXTS = ["Station 1 has 11 docks.", "Rides cost 2 credits.", "Rides cost 2 credits."]  # a repeated text: occurrence 1


@pytest.mark.parametrize("new_doc, new_texts, chunker, moved, retired", [
    ("guides/b.md", TEXTS, "ch1", True, []),  # renamed and moved to another folder, same text: carried over
    # renamed and edited: the items on the unchanged first chunk follow it; the repeated text is now the
    # first occurrence of its text, not the same chunk
    ("a-renamed.md", TEXTS[:1] + ["Rides cost 3 credits.", TEXTS[2]], "ch1", ["first", "pair"], ["repeat"]),
    ("a-renamed.md", TEXTS, "ch2", [], ["first", "pair", "repeat"]),  # another chunker: not the same chunks
])
def test_plan_carries_items_over_a_renamed_document(prompts, new_doc, new_texts, chunker, moved, retired):
    old = _chunks("a.md", TEXTS)
    other = _chunks("c.md", ["Station 3 has 13 docks."])
    new = _chunks(new_doc, new_texts, chunker, sha="sha-new")
    previous = [_item_on("first", old[:1], prompts), _item_on("repeat", old[2:3], prompts),
                _item_on("pair", [old[0], other[0]], prompts, "multi_hop"), _item_on("other", other, prompts)]
    catalog = new + other
    calls = []
    plan = synth_run.plan_synth(previous, None, catalog, prompts, "inputs", size=4,
                                chunk_rows=lambda: calls.append(1) or catalog)
    if moved is True:
        by_id = {i["qa_id"]: i for i in plan.kept}
        assert plan.moved == ["first", "pair", "repeat"] and not plan.changed and plan.need == 0
        assert by_id["first"]["source_chunk_ids"] == by_id["first"]["reference_chunk_ids"] == [new[0]["chunk_id"]]
        assert by_id["repeat"]["source_chunk_ids"] == [new[2]["chunk_id"]], "the second occurrence maps to the second"
        assert by_id["pair"]["source_chunk_ids"] == [new[0]["chunk_id"], other[0]["chunk_id"]]
        assert by_id["pair"]["source_doc_ids"] == by_id["pair"]["reference_doc_ids"] == [new_doc, "c.md"]
        assert by_id["first"]["source_doc_sha256s"] == ["sha-new"]
        assert by_id["first"]["evidence"] == [{"chunk_id": new[0]["chunk_id"], "start": 0, "end": 4}]
        assert by_id["other"] == previous[3], "untouched items are kept as they were"
        assert qa.golden_set_id_of(plan.kept) != qa.golden_set_id_of(previous), "re-pointed items are a new version"
    else:
        assert plan.moved == moved and {i["qa_id"]: i["status"] for i in plan.changed} == dict.fromkeys(retired, "retired")
    assert calls == [1], "the chunk texts are read once, and only because some item would be retired"


def test_plan_reads_no_chunk_text_when_nothing_would_be_retired(prompts):
    rows = _chunks("a.md", TEXTS)
    plan = synth_run.plan_synth([_item_on("first", rows[:1], prompts)], None, rows, prompts, "inputs", size=1,
                                chunk_rows=lambda: pytest.fail("read chunk texts for nothing"))
    assert plan.moved == [] and [i["qa_id"] for i in plan.kept] == ["first"]


def test_a_moved_item_makes_the_plan_not_up_to_date_and_is_counted(prompts):
    old, new = _chunks("a.md", TEXTS), _chunks("b.md", TEXTS)
    ref = promotion.GoldenLine(golden_set_id="g1", kind="synthetic", inputs="inputs")
    plan = synth_run.plan_synth([_item_on("first", old[:1], prompts)], ref, new, prompts, "inputs", size=1,
                                chunk_rows=lambda: new)
    assert plan.moved == ["first"] and not plan.up_to_date and plan.need == 0
    golden = synth_run.assemble_golden(plan, [])
    summary = synth_run.summarize("r", {}, lake_uri="l", golden_set_id="g2", written=True, plan=plan, golden=golden,
                                  budget=synth_run.Budget(), config=_config(size=1), timings_s={}, generate_s=None)
    assert summary.items.moved == 1 and summary.items.kept == 1 and summary.items.retired == 0
    assert summary.status == "ok"


def test_later_rounds_plan_each_types_own_shortfall_by_its_accept_rate():
    targets = {"single_hop": 6, "unanswerable": 2, "abstract": 2}
    assert synth_run.round_counts(10, targets, qa.GenerationReport(), Counter()) == targets, "round 1: the mix"
    accepted = [{"qa_type": "single_hop"}] * 6 + [{"qa_type": "abstract"}]
    report = qa.GenerationReport(accepted=accepted, attempted=12)
    tried = Counter({"single_hop": 6, "unanswerable": 3, "abstract": 3})
    # single-hop is full; nothing unanswerable passed: twice its shortfall; abstract 1 of 3: ceil(1 * 3 / 1), max 2
    assert synth_run.round_counts(3, targets, report, tried) == {"single_hop": 0, "unanswerable": 4, "abstract": 2}
    full = qa.GenerationReport(accepted=[{"qa_type": t} for t, n in targets.items() for _ in range(n)][:9], attempted=10)
    full.accepted.append({"qa_type": "abstract"})  # every type at its target, yet one short overall (a duplicate)
    assert sum(synth_run.round_counts(1, {"single_hop": 6, "unanswerable": 2, "abstract": 2}, full,
                                      Counter({"single_hop": 6, "unanswerable": 2, "abstract": 2})).values()) >= 1


def test_changed_inputs_recheck_kept_items_against_todays_filters(prompts):
    text = "Scopes are declared with `Security(scopes=[...])` on each dependency of a path operation function."
    abstract = prompts["qa_abstract"]
    item = {"qa_id": "invented", "qa_type": "abstract", "status": "active", "review": "synthetic",
            "question": "How are scopes declared at different levels?",
            "reference_answer": "Scopes are declared using a custom decorator that allows declaring scopes directly.",
            "source_chunk_ids": ["c1"], "source_doc_ids": ["d1"], "reference_chunk_ids": ["c1"],
            "evidence": [{"chunk_id": "c1", "start": 0, "end": 60}], "generator": "model@1",
            "prompt_id": abstract.prompt_id, "prompt_hash": abstract.prompt_hash}
    catalog = [{"chunk_id": "c1", "doc_id": "d1"}]
    rows = lambda: [{"chunk_id": "c1", "doc_id": "d1", "doc_sha256": "s", "text": text, "position": 0,  # noqa: E731
                     "chunker_hash": "h"}]
    ref = promotion.GoldenLine(golden_set_id="g0", kind="synthetic", inputs="old-inputs", run_id="r0")
    same = synth_run.plan_synth([item], ref, catalog, prompts, "old-inputs", 1, chunk_rows=rows, config=SynthConfig())
    assert [i["qa_id"] for i in same.kept] == ["invented"] and same.up_to_date, "unchanged inputs: nothing re-judged"
    changed = synth_run.plan_synth([item], ref, catalog, prompts, "new-inputs", 1, chunk_rows=rows, config=SynthConfig())
    assert changed.kept == [] and changed.status_counts() == Counter({"outdated": 1}) and changed.need == 1


def test_kept_unanswerable_items_the_index_answers_are_outdated(store, prompts, fake_embedder):
    answered = {"qa_id": "answered", "qa_type": "unanswerable", "review": "synthetic", "status": "active",
                "question": "How many docks does station 3 have near the harbour?", "source_doc_ids": ["page3.md"]}
    fine = dict(answered, qa_id="fine", question="Who painted the kiosk murals in 1970?")
    plan = synth_run.SynthPlan([answered, fine], [], [], set(), "inputs", False, 0)
    assert synth_run.recheck_unanswerable(plan, store, fake_embedder.encode, _config()) == 1
    assert [i["qa_id"] for i in plan.kept] == ["fine"] and plan.need == 1
    assert [(i["qa_id"], i["status"]) for i in plan.changed] == [("answered", "outdated")]


def test_the_chunks_eligible_to_seed_questions_are_judged_once_per_table_version(store, fake_embedder, monkeypatch):
    scans = []
    real_scan = store.scan
    monkeypatch.setattr(store, "scan", lambda columns, where=None: scans.append(columns) or real_scan(columns, where))
    config = _config(question_writer="rules")
    first = qa.eligible_chunks(store, config)
    assert qa.eligible_chunks(store, config) == first and len(scans) == 1, "a second round reads nothing"
    assert any(first[0].values()), "the fakes' corpus has chunks to ask about"
    first[0].clear()
    assert qa.eligible_chunks(store, config) == qa.eligible_chunks(store, config) != ({}, Counter()), \
        "callers get copies"
    qa.eligible_chunks(store, _config(question_writer="model"))
    assert len(scans) == 2, "other settings: judged again"
    store.delete_documents([next(iter(DOCS))])
    after = qa.eligible_chunks(store, config)
    assert len(scans) == 3 and next(iter(DOCS)) not in after[0], "a new table version: judged again"
    rows = real_scan(["text"]).to_pylist()
    assert [qa.has_candidate_sentence(r["text"], w) for r in rows for w in ("rules", "model")] == \
        [bool(qa.candidate_sentences(r["text"], w)) for r in rows for w in ("rules", "model")]
