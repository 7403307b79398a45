"""Registries keyed like the settings: every built-in name has an entry (and only those), and a toy entry
of each kind is registered and picked up from the settings (STYLE: registries keyed like the settings)."""

from __future__ import annotations

import logging
import random
from typing import get_args

import pyarrow as pa
import pytest

from ragloop.tasks import alerting, evaluation, gating, ingestion, ir_metrics, metrics, monitoring, reporting
from ragloop.tasks import qa_generation as qa
from ragloop.tasks.chain import ChainResult
from ragloop.tasks.chunking import CHUNKING_STRATEGIES, Chunker, register_strategy
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.prompts import load_prompts
from ragloop.tasks.question_types import (
    QUESTION_TYPES, QuestionType, Sampling, must_refuse, register_question_type, required_prompts,
)
from ragloop.tasks.ragas_metrics import JUDGED, NON_LLM
from ragloop.tasks.registry import Registry, UnknownName
from ragloop.tasks.schemas import Document
from ragloop.tasks.settings import (
    AlertSinkName, ChunkingStrategyName, ConfigError, EvalConfig, GateConfig, IngestConfig, MonitorConfig, QAType,
    Settings, load_settings,
)
from ragloop.tasks.storage import Lake
from tests.conftest import REPO

REGISTRIES = (CHUNKING_STRATEGIES, QUESTION_TYPES, alerting.SINKS, metrics.METRIC_INFO, ingestion.LOADERS)
ALERTS = [{"kind": "regression", "message": "ndcg@10 regressed", "severity": "critical", "metric": "ndcg@10", "details": {}}]
CONTEXT = {"run_id": "mon-1", "at": "2026-11-25T02:00:00+00:00", "lake": "/lake", "report": None}


@pytest.fixture(autouse=True)
def _restore_registries():
    """Toy entries live for one test only: the registries stay as the code defines them."""
    saved = [(registry, dict(registry)) for registry in REGISTRIES]
    yield
    for registry, entries in saved:
        registry.clear()
        registry.update(entries)


# -- structure: the closed lists in settings and the registries agree -----------------------------------
@pytest.mark.parametrize(
    "literal, registry",
    [(ChunkingStrategyName, CHUNKING_STRATEGIES), (QAType, QUESTION_TYPES), (AlertSinkName, alerting.SINKS)],
    ids=["chunking.strategy", "synth.types", "monitor.sinks"],
)
def test_every_settings_literal_value_has_a_registry_entry_and_no_other(literal, registry):
    names = set(get_args(literal))
    assert not names - set(registry), f"register an entry for each of these {registry.kind} names"
    assert not set(registry) - names, f"add these names to the {registry.setting} list in tasks/settings.py"


def test_the_default_settings_name_registered_entries_only():
    settings = Settings()
    assert settings.chunking.strategy in CHUNKING_STRATEGIES
    assert set(settings.synth.types) <= set(QUESTION_TYPES)
    assert set(settings.monitor.sinks) <= set(alerting.SINKS)


def test_every_sampling_a_question_type_may_declare_has_a_sampler():
    assert set(qa.SAMPLERS) == set(get_args(Sampling))
    assert {k.fallback for k in QUESTION_TYPES.values() if k.fallback} <= set(QUESTION_TYPES)


def test_every_metric_the_eval_reports_is_declared_and_resolves_by_its_base_name():
    ir = ir_metrics.score_rankings({"q": {"d1": 1}}, {"q": ["d1", "d2"]}, [1, 5, 10])["q"]
    reported = list(ir) + [evaluation.CHUNK_PREFIX + name for name in ir] + list(NON_LLM) + list(JUDGED)
    item = {"qa_type": "single_hop"}
    reported += list(metrics.scored_metrics(item, ChainResult("q", "q", [], answer="a", refused=False, grounded=True)))
    assert [name for name in reported if metrics.metric_info(name) is None] == []
    assert metrics.metric_info("ndcg@10").name == "ndcg" and metrics.metric_info("chunk_mrr@5").level == "chunk"
    assert {n for n, i in metrics.METRIC_INFO.items() if not i.higher_is_better} == {"degenerate", "false_refusal"}
    assert metrics.higher_is_better("not_declared") and metrics.metric_range("not_declared") == (0.0, 1.0)


def test_every_format_of_the_design_has_a_loader():
    assert {".md", ".txt", ".html", ".pdf", ".csv", ".parquet", ".jsonl", ".ipynb"} <= set(ingestion.LOADERS)


def test_a_registry_names_its_setting_for_an_unknown_name_and_refuses_a_taken_one():
    registry: Registry[int] = Registry("widget", "widgets.kind")
    registry.register("one", 1)

    @registry.register("two")
    def two():
        return 2

    assert registry["two"] is two and registry.get("three") is None
    with pytest.raises(UnknownName, match=r"unknown widget 'three' \(widgets.kind\); registered: one, two"):
        registry["three"]
    with pytest.raises(ValueError, match="widget 'one' is already registered"):
        registry.register("one", 11)
    assert registry.register("one", 11, replace=True) == 11


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"chunking": {"strategy": "semantic"}}, r"chunking\.strategy: .*unknown chunking strategy 'semantic'"),
        ({"synth": {"types": {"riddle": 1.0}}}, r"synth\.types: .*unknown question type 'riddle'"),
        ({"monitor": {"sinks": ["log", "pager"]}}, r"monitor\.sinks\.1: .*unknown alert sink 'pager'"),
    ],
)
def test_an_unregistered_name_in_the_settings_is_an_error_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_settings(overrides=overrides)


# -- a toy entry of each kind, picked up from the settings ---------------------------------------------
def _doc(text: str, mime: str = "text/plain") -> Document:
    return Document(doc_id="notes.txt", source_uri="/src/notes.txt", content_sha256="sha", text=text, title="t",
                    mime=mime, bytes=len(text))


def test_a_registered_chunking_strategy_is_used_when_the_settings_name_it():
    @register_strategy("paragraphs")
    def split_paragraphs(chunker, doc, spans=None):
        """One chunk per blank-line separated paragraph."""
        offsets, start = [], 0
        for para in doc.text.split("\n\n"):
            offsets.append((doc.text.index(para, start), para, ()))
            start = offsets[-1][0] + len(para)
        return chunker.make_chunks(doc, offsets)

    settings = load_settings(overrides={"chunking": {"strategy": "paragraphs", "overlap_tokens": 0}})
    chunker = Chunker(settings.chunking, HashEmbedder().counter)
    doc = _doc("First paragraph here.\n\nSecond one.\n\nThird and last.")
    chunks = chunker.chunk_documents([doc])
    assert [c.text for c in chunks] == ["First paragraph here.", "Second one.", "Third and last."]
    assert [c.metadata["char_start"] for c in chunks] == [0, 23, 36]
    builtin = Chunker(load_settings(overrides={"chunking": {"overlap_tokens": 0}}).chunking, HashEmbedder().counter)
    assert chunker.hash != builtin.hash, "another strategy, other chunk ids"
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("paragraphs")(split_paragraphs)


def test_a_registered_sink_receives_the_alerts_when_the_settings_name_it(tmp_path):
    pager = alerting.RecordingSink("pager")

    @alerting.register_sink("pager")
    def page_on_call(setup):
        return pager

    @alerting.register_sink("sms")
    def sms(setup):
        raise alerting.SinkUnavailable("no SMS gateway configured")

    settings = load_settings(overrides={"lake": str(tmp_path / "lake"), "monitor": {"sinks": ["log", "pager", "sms"]}})
    sinks, skipped = alerting.build_sinks(settings.monitor, Lake(settings.lake), logging.getLogger("test"))
    records = alerting.deliver(sinks, ALERTS, CONTEXT)
    assert [r["sink"] for r in records] == ["log", "pager"] and all(r["status"] == "sent" for r in records)
    assert pager.sent == [(ALERTS, CONTEXT)]
    assert skipped == [{"sink": "sms", "status": "skipped", "count": 0, "error": "no SMS gateway configured"}]


def test_the_built_in_sinks_come_from_the_registry(tmp_path, monkeypatch):
    published = []
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    sinks, skipped = alerting.build_sinks(MonitorConfig(), Lake(str(tmp_path / "lake")), logging.getLogger("test"),
                                          publish_markdown=lambda **kw: published.append(kw))
    assert [s.name for s in sinks] == ["log", "jsonl", "artifact"]
    assert skipped == [{"sink": "webhook", "status": "skipped", "count": 0, "error": "ALERT_WEBHOOK_URL is not set"}]
    alerting.deliver(sinks, ALERTS, CONTEXT)
    assert published[0]["key"] == reporting.artifact_key("ragloop-alerts", "/lake") and "ndcg@10" in published[0]["markdown"]
    no_flow, skipped = alerting.build_sinks(MonitorConfig(sinks=["artifact"]), Lake(str(tmp_path / "lake")),
                                            logging.getLogger("test"))
    assert no_flow == [] and skipped[0]["sink"] == "artifact"


@pytest.fixture
def answer_words():
    @metrics.register_metric("answer_words", level="answer", better="lower", range=(0, 1000))
    def count_words(item, result):
        """Words in the answer: shorter is better."""
        return None if result.answer is None else len(result.answer.split())

    return count_words


def _rows(values, name="answer_words"):
    return [{"qa_id": f"q{i}", "metrics": {name: float(v)}} for i, v in enumerate(values)]


def test_a_registered_metric_is_scored_and_aggregated(answer_words):
    item = {"qa_type": "single_hop"}
    scored = metrics.scored_metrics(item, ChainResult("q", "q", [], answer="four words right here", refused=False,
                                                      grounded=True))
    assert scored["answer_words"] == 4.0 and scored["refusal_correct"] == 1.0
    assert metrics.scored_metrics(item, ChainResult("q", "q", [])) == {}, "no answer step: nothing applies"
    means, cis, counts = evaluation.aggregate(_rows([10, 20, 30]), ["answer_words"], EvalConfig())
    assert means == {"answer_words": 20.0} and counts == {"answer_words": 3} and cis["answer_words"][0] <= 20 <= cis["answer_words"][1]
    assert metrics.metric_info("answer_words").description == "Words in the answer: shorter is better."
    with pytest.raises(ValueError, match=r"answer_words: scorer returned 1001.0, outside its range"):
        metrics.scored_metrics(item, ChainResult("q", "q", [], answer="w " * 1001, refused=False))


def test_the_gate_the_monitor_and_the_report_read_a_registered_metric_s_direction(answer_words):
    base, cand = _rows([10 + i % 3 for i in range(40)]), _rows([20 + i % 3 for i in range(40)])
    deltas = gating.paired_deltas(base, cand, 500, 0.95, 0)
    gate = gating.check_gate({"answer_words": 21.0}, deltas, 0, 40, GateConfig(floors={"answer_words": 15}))
    assert gate["status"] == "failed"
    assert any("answer_words = 21.0000 is over its ceiling 15" in r for r in gate["reasons"])
    assert any(r.startswith("answer_words rose +10.0000") for r in gate["reasons"]), gate["reasons"]
    better = gating.check_gate({"answer_words": 1.0}, gating.paired_deltas(cand, base, 500, 0.95, 0), 0, 40, GateConfig())
    assert better["status"] == "passed", "fewer words is an improvement"

    series = [{"run_id": f"r{i}", "metrics": {"answer_words": {"value": v, "ci_low": v - 1, "ci_high": v + 1}}}
              for i, v in enumerate([10, 10, 10, 20, 20])]
    (alert,) = monitoring.check_regression(series, MonitorConfig()).alerts
    assert alert.metric == "answer_words" and "above its baseline 10.0000" in alert.message

    latest = {"run_id": "r4", "golden_set_id": "g", "items": {"total": 40, "failed": 0}, "metrics": {"answer_words": 25.0},
              "ci": {"answer_words": [24.0, 26.0]}, "n": {"answer_words": 40}}
    obs = [{"observation_id": s["run_id"], "golden_set_id": "g", "at": "2026-11-0{}".format(i + 1), **s}
           for i, s in enumerate(series)]
    data = reporting.ReportData(run_id="m1", at="now", status="ok", lake="/lake", alerts=[], series=obs, latest_eval=latest,
                                worst_items=[], checks={})
    html = reporting.render_report(data)["report.html"].decode()
    assert "answer_words <span class=\"muted\">(lower is better)</span>" in html
    assert '<td class="num bad">+5.0000</td>' in html, "a rise of a lower-is-better metric is shown as worse"


def test_a_metric_with_a_cutoff_resolves_by_its_base_name():
    metrics.METRIC_INFO.register("toy_reach", metrics.MetricInfo("toy_reach", "doc", better="lower", range=(0, 50)))
    assert metrics.metric_info("toy_reach@5").name == "toy_reach"
    assert not metrics.higher_is_better("toy_reach@10") and metrics.metric_range("toy_reach@10") == (0, 50)


def test_a_registered_loader_reads_a_new_extension(tmp_path):
    @ingestion.register_loader(".toy")
    def load_toy(path, data, ctx=None):
        text = ingestion.normalize_text(ingestion.decode_bytes(data))
        return [ingestion.Loaded(text, path.stem.title(), "text/plain", {"lines": text.count("\n") + 1})]

    (tmp_path / "notes.TOY").write_text("toy notes\nsecond line\n")
    (doc,) = ingestion.load_file(tmp_path / "notes.TOY", tmp_path, IngestConfig())
    assert (doc.doc_id, doc.text, doc.title, doc.metadata) == ("notes.TOY", "toy notes\nsecond line", "Notes", {"lines": 2})
    with pytest.raises(ValueError, match=r"loader for file extension '\.md' is already registered"):
        ingestion.register_loader(".md")(load_toy)


class _Store:
    """A ChunkStore stand-in over rows in memory (scan only)."""

    def __init__(self, n_docs: int) -> None:
        self.rows = [{"chunk_id": f"c{i}", "doc_id": f"doc{i}.md", "doc_sha256": "s", "position": 0, "n_tokens": 50,
                      "text": f"The station {i} dock is operated by crew {i + 3} every morning of the week.", "vector": [0.0],
                      "headings": [f"Station {i}"]}
                     for i in range(n_docs)]

    def scan(self, columns, where=None):
        rows = [r for r in self.rows if where is None or f"'{r['chunk_id']}'" in where]
        return pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows])


YES_NO_PROMPT = """name: qa_yes_no
input_variables: [context, persona]
output: QAPair
user: |
  {{ context }}
  Write one yes/no question {{ persona }} might ask that the passage answers, and the answer.
"""


def test_a_registered_question_type_is_planned_prompted_and_filtered(tmp_path):
    register_question_type(QuestionType("yes_no", prompt="qa_yes_no"))
    register_question_type(QuestionType("out_of_scope", prompt="qa_unanswerable", must_refuse=True))
    settings = load_settings(overrides={"synth": {"types": {"single_hop": 1, "yes_no": 1, "out_of_scope": 1}}})
    counts = qa.allocate(6, settings.synth.types)
    assert counts == {"single_hop": 2, "yes_no": 2, "out_of_scope": 2}
    tasks = qa.plan_tasks(_Store(6), counts, settings.synth, random.Random(0))
    assert sorted(t.qa_type for t in tasks) == ["out_of_scope"] * 2 + ["single_hop"] * 2 + ["yes_no"] * 2
    assert required_prompts()[-1] == "qa_yes_no"

    (tmp_path / "qa_yes_no.yaml").write_text(YES_NO_PROMPT)
    prompts = {**load_prompts(REPO / "prompts"), **load_prompts(tmp_path)}
    yes_no = next(t for t in tasks if t.qa_type == "yes_no")
    prompt, messages = qa.task_messages(yes_no, prompts)
    assert prompt.name == "qa_yes_no" and yes_no.chunks[0].text in messages[-1]["content"]

    refused = next(t for t in tasks if t.qa_type == "out_of_scope")
    cand = qa.Candidate(refused, "Which company built the station's charging docks?", "", prompts["qa_unanswerable"])
    assert qa.reject_reason(cand, settings.synth) is None
    item = qa.to_item(cand, "test")
    assert item["reference_answer"] == qa.REFUSAL_ANSWER and item["reference_chunk_ids"] == [] and must_refuse("out_of_scope")
    assert metrics.scored_metrics(item, ChainResult("q", "q", [], answer=qa.REFUSAL_ANSWER, refused=True)) == {
        "refusal_correct": 1.0, "refusal_recall": 1.0}
