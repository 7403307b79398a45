"""The synth-golden-set flow with a deterministic fake LLM: types, filters, versions, staleness, failures."""

from __future__ import annotations

import json
import shutil

import lancedb
import pytest

from ragloop.flows import index as index_flow
from ragloop.flows import synth as synth_flow
from ragloop.flows.cli import main
from ragloop.tasks.golden_sets import ExportSummary, ImportGoldenSummary
from ragloop.tasks.llm import LLMUnavailable
from ragloop.tasks.synth_run import SynthSummary
from tests.conftest import REPO, use_fakes, write_files
from tests.synth_fakes import DOCS, PassageLLM  # noqa: F401  (DOCS, PassageLLM: other flow tests import them from here)


@pytest.fixture
def fakes(monkeypatch, fake_embedder):
    llm = PassageLLM()
    use_fakes(embedder=lambda config: fake_embedder)
    use_fakes(embedder=lambda config: fake_embedder)
    use_fakes(llm=lambda config: llm)
    use_fakes(embedder=lambda config: fake_embedder)
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    return llm


def _golden(lake_dir, golden_set_id):
    from ragloop.tasks.storage import Lake

    return Lake(str(lake_dir)).read_golden(golden_set_id).to_pylist()


def test_synth_builds_a_typed_golden_set_tied_to_existing_chunks(prefect_backend, fakes, tmp_path, lake_dir):
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    summary = synth_flow.synth_golden_set(lake=str(lake_dir), size=10)
    assert summary["status"] == "ok", summary
    assert SynthSummary.model_validate(summary).model_dump(mode="json") == summary, "the typed summary round-trips"
    assert summary["items"]["total"] == summary["items"]["new"] > 0
    assert len(summary["by_type"]) >= 3
    items = _golden(lake_dir, summary["golden_set_id"])
    chunk_ids = set(lancedb.connect(str(lake_dir / "lancedb")).open_table("chunks__hash_fake")
                    .search().select(["chunk_id"]).limit(None).to_arrow()["chunk_id"].to_pylist())
    assert all(set(i["reference_chunk_ids"]) <= chunk_ids and set(i["source_chunk_ids"]) <= chunk_ids for i in items)
    assert all(i["prompt_hash"] and i["generator"] == "passage-fake@1" for i in items)
    assert {i["qa_type"] for i in items if not i["reference_chunk_ids"]} <= {"unanswerable"}
    assert summary["coverage"]["of"] == len(DOCS) and summary["coverage"]["documents"] > 1
    assert summary["coverage"]["by_folder"] == {".": {"documents": summary["coverage"]["documents"], "of": len(DOCS)}}
    texts = dict(zip(*lancedb.connect(str(lake_dir / "lancedb")).open_table("chunks__hash_fake")
                     .search().select(["chunk_id", "text"]).limit(None).to_arrow().to_pydict().values()))
    for item in items:  # evidence by construction: spans inside each reference chunk, for every answerable item
        assert {e["chunk_id"] for e in item["evidence"]} == (set(item["reference_chunk_ids"]) if item["reference_chunk_ids"] else set())
        assert all(0 <= e["start"] < e["end"] <= len(texts[e["chunk_id"]]) for e in item["evidence"])
    assert summary["evidence_supported"]["items"] == summary["evidence_supported"]["of"] > 0
    assert set(summary["lineage"]["prompts"]) >= {"qa_from_sentence", "qa_from_sentences", "qa_paraphrase"}
    assert summary["lineage"]["table"]["version"] > 0

    calls = fakes.calls
    again = synth_flow.synth_golden_set(lake=str(lake_dir), size=10)
    assert again["up_to_date"] and again["attempted"] == 0 and fakes.calls == calls, "nothing changed: nothing generated"
    assert again["golden_set_id"] == summary["golden_set_id"] and again["items"]["kept"] == summary["items"]["total"]

    # a changed answer prompt is eval's business: synth stays up to date
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    answer = prompts / "answer.yaml"
    answer.write_text(answer.read_text().replace("Answer in one to three sentences", "Answer in one or two sentences"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAGLOOP_PROMPTS_DIR", str(prompts))
        third = synth_flow.synth_golden_set(lake=str(lake_dir), size=10)
    assert third["up_to_date"] and fakes.calls == calls


def test_synth_follows_the_corpus(prefect_backend, fakes, tmp_path, lake_dir):
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    first = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    before = {i["qa_id"]: i for i in _golden(lake_dir, first["golden_set_id"])}
    touched = {d for i in before.values() for d in i["source_doc_ids"]}
    edited, removed = sorted(touched)[:2]
    (src / edited).write_text(DOCS[edited].replace("midnight", "one in the morning"))
    (src / removed).unlink()
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))

    second = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    after = {i["qa_id"]: i for i in _golden(lake_dir, second["golden_set_id"])}
    for qa_id, item in before.items():
        docs = set(item["source_doc_ids"])
        if removed in docs:
            assert after[qa_id]["status"] == "retired"
        elif edited not in docs:
            assert after[qa_id] == item, "untouched items are kept exactly as they were"
    assert second["items"]["retired"] >= 1
    assert second["items"]["kept"] + second["items"]["new"] == second["items"]["total"]
    assert second["golden_set_id"] != first["golden_set_id"]
    assert _golden(lake_dir, first["golden_set_id"]) == list(before.values()), "the previous version stays readable"


def test_synth_with_zero_accepted_items_fails_with_reasons(prefect_backend, fakes, tmp_path, lake_dir, capsys):
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    fakes.garbage = True
    code = main(["synth", "--lake", str(lake_dir), "--size", "5", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1 and summary["status"] == "failed"
    assert summary["items"]["total"] == 0 and summary["rejects"]["unparseable"] >= 5
    assert "no accepted items" in summary["error"]
    assert SynthSummary.model_validate(summary).model_dump(mode="json") == summary


def test_synth_unreachable_endpoint_exits_2_before_generation(prefect_backend, fakes, tmp_path, lake_dir, capsys, monkeypatch):
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))

    def refuse(required):
        raise LLMUnavailable("endpoint http://127.0.0.1:9/v1 did not answer")

    monkeypatch.setattr(fakes, "preflight", refuse)
    code = main(["synth", "--lake", str(lake_dir), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 2 and "127.0.0.1:9" in summary["error"] and fakes.calls == 0


def test_synth_prompt_with_an_undeclared_variable_exits_2_naming_it(prefect_backend, fakes, tmp_path, lake_dir, capsys, monkeypatch):
    bad = tmp_path / "prompts"
    bad.mkdir()
    for p in (REPO / "prompts").glob("*.yaml"):
        (bad / p.name).write_text(p.read_text())
    (bad / "qa_abstract.yaml").write_text((bad / "qa_abstract.yaml").read_text().replace("{{ persona }}", "{{ audience }}"))
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(bad))
    code = main(["synth", "--lake", str(lake_dir), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 2 and "qa_abstract" in summary["error"] and "audience" in summary["error"]
    assert fakes.calls == 0


def test_golden_set_round_trips_through_jsonl_and_ragas(prefect_backend, fakes, tmp_path, lake_dir, capsys):
    from ragas import EvaluationDataset

    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    synth = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    items = [i for i in _golden(lake_dir, synth["golden_set_id"]) if i["status"] == "active"]

    assert main(["golden", "export", "--lake", str(lake_dir), "--out", str(tmp_path / "g.jsonl"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["golden_set_id"] == synth["golden_set_id"] and exported["items"] == len(items)
    assert ExportSummary.model_validate(exported).model_dump(mode="json") == exported
    lines = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [line["qa_id"] for line in lines] == [i["qa_id"] for i in items]

    assert main(["golden", "export", "--lake", str(lake_dir), "--format", "ragas", "--out", str(tmp_path / "r.jsonl")]) == 0
    dataset = EvaluationDataset.from_jsonl(str(tmp_path / "r.jsonl"))
    table = lancedb.connect(str(lake_dir / "lancedb")).open_table("chunks__hash_fake")
    texts = dict(zip(*table.search().select(["chunk_id", "text"]).limit(None).to_arrow().to_pydict().values()))
    assert len(dataset) == len(items)
    for sample, item in zip(dataset.samples, items):
        assert sample.user_input == item["question"] and sample.reference == item["reference_answer"]
        assert sample.reference_contexts == [texts[c] for c in item["reference_chunk_ids"]]
    capsys.readouterr()

    # A ragas file comes back with its contexts matched to chunk ids by text.
    assert main(["golden", "import", str(tmp_path / "r.jsonl"), "--lake", str(lake_dir), "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["status"] == "ok" and imported["items"]["total"] == len(items)
    assert ImportGoldenSummary.model_validate(imported).model_dump(mode="json") == imported
    back = {i["question"]: i for i in _golden(lake_dir, imported["golden_set_id"])}
    for item in items:
        assert back[item["question"]]["reference_chunk_ids"] == item["reference_chunk_ids"]
        assert back[item["question"]]["review"] == "imported"
    from ragloop.tasks.promotion import Refs
    from ragloop.tasks.storage import Lake

    refs = Refs(Lake(str(lake_dir)))
    assert refs.resolve_golden("latest", [])[0] == imported["golden_set_id"] and refs.lines().chosen == "r"
    assert refs.lines().lines["synthetic"].golden_set_id == synth["golden_set_id"], "synth's own line is untouched"


@pytest.mark.parametrize(
    "lines, needle",
    [
        (['{"question": "How many docks?", "reference_answer": "10"}', "{oops"], "line 2: not JSON"),
        (['{"reference_answer": "10"}'], "line 1: no 'question'"),
        (['{"question": "How many docks?", "reference_chunk_ids": ["no-such-chunk"]}'], "not in the index"),
        (['{"user_input": "Hours?", "reference": "6", "reference_contexts": ["text that is nowhere"]}'], "matches no chunk text"),
    ],
)
def test_golden_import_rejects_bad_files_before_writing(prefect_backend, fakes, tmp_path, lake_dir, capsys, lines, needle):
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["golden", "import", str(bad), "--lake", str(lake_dir), "--json"]) == 2
    assert needle in json.loads(capsys.readouterr().out)["error"]
    assert not (lake_dir / "golden").exists()


def test_synth_cli_shows_progress_off_a_terminal_and_keeps_json_clean(prefect_backend, fakes, tmp_path, lake_dir, capsys,
                                                                       caplog):
    import logging

    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    caplog.set_level(logging.INFO)
    assert main(["synth", "--lake", str(lake_dir), "--size", "5"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("synth: ")]
    assert lines and "candidates (100%)" in lines[-1] and "accepted 5/5" in lines[-1], lines
    capsys.readouterr()
    caplog.clear()
    assert main(["synth", "--lake", str(lake_dir), "--size", "7", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "ok" and summary["items"]["total"] == 7
    assert not [r for r in caplog.records if r.getMessage().startswith("synth: ")], "--json: no progress"


def test_a_renamed_document_carries_its_items_over_and_the_next_night_writes_nothing(prefect_backend, fakes, tmp_path,
                                                                                       lake_dir):
    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    first = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    before = {i["qa_id"]: i for i in _golden(lake_dir, first["golden_set_id"])}
    renamed = sorted(d for i in before.values() for d in i["source_doc_ids"])[0]
    (src / "moved").mkdir()
    (src / renamed).rename(src / "moved" / renamed)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    calls = fakes.calls

    second = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    assert second["status"] == "ok", second
    assert second["items"]["moved"] >= 1 and second["items"]["retired"] == 0 and second["items"]["new"] == 0
    assert fakes.calls == calls, "a rename generates nothing"
    assert second["validation"]["golden"]["success"] and second["golden_set_id"] != first["golden_set_id"]
    after = {i["qa_id"]: i for i in _golden(lake_dir, second["golden_set_id"])}
    assert set(after) == set(before) and all(i["status"] == "active" for i in after.values())
    moved = [q for q, i in before.items() if renamed in i["source_doc_ids"]]
    assert moved and all(f"moved/{renamed}" in after[q]["source_doc_ids"] and renamed not in after[q]["source_doc_ids"]
                         for q in moved)

    third = synth_flow.synth_golden_set(lake=str(lake_dir), size=8)
    assert third["up_to_date"] and not third["written"] and third["golden_set_id"] == second["golden_set_id"]
    assert fakes.calls == calls

    from ragloop.tasks.golden_quality import golden_diff, golden_report
    from ragloop.tasks.storage import Lake

    lake = Lake(str(lake_dir))
    report = golden_report(lake, first["golden_set_id"], sample=2)
    assert report.generation["run_id"] == first["run_id"] and report.generation["attempted"] == first["attempted"]
    assert report.generation["per_type"] == first["per_type"] and report.generation["rejects"] == first["rejects"]
    diff = golden_diff(lake, first["golden_set_id"], "synthetic")
    assert diff.counts["changed"] == len(moved) and diff.counts["added"] == diff.counts["retired"] == 0
    assert all(set(c["fields"]) == {"evidence"} for c in diff.changed), "a rename re-points evidence, nothing else"


def test_synth_does_not_move_its_line_to_a_version_that_fails_the_golden_suite(prefect_backend, fakes, tmp_path,
                                                                               lake_dir, monkeypatch):
    from ragloop.tasks import golden_quality
    from ragloop.tasks.promotion import Refs
    from ragloop.tasks.storage import Lake

    src = write_files(tmp_path / "src", DOCS)
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    monkeypatch.setattr(golden_quality, "referenced_chunk_texts", lambda store, rows: {})  # every reference "missing"
    summary = synth_flow.synth_golden_set(lake=str(lake_dir), size=4)
    assert summary["status"] == "failed" and "line" not in summary
    failures = summary["validation"]["golden"]["failures"]
    assert {f["kwargs"]["column"] for f in failures} == {"references_in_index", "evidence_in_chunks"}
    assert "references_in_index" in summary["error"]
    lake = Lake(str(lake_dir))
    assert summary["golden_set_id"] in lake.list_golden(), "the version is written: nothing lost"
    assert Refs(lake).lines().lines.get("synthetic") is None
