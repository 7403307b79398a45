"""The evaluate-chain and import-beir flows with deterministic fakes: metrics, traces, failures counted."""

from __future__ import annotations

import json
import math
import re

import pytest

from ragloop.flows import beir as beir_flow
from ragloop.flows import evaluate as eval_flow
from ragloop.flows import golden as golden_flow
from ragloop.flows import index as index_flow
from ragloop.flows.cli import main
from ragloop.tasks.llm import LLMRequestError, ScriptedLLM, _SyncStructured
from ragloop.tasks.promotion import Refs
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, use_fakes, write_files

CORPUS = [
    {"_id": "d1", "title": "Harbour station", "text": "The harbour station has twelve docks and two chargers."},
    {"_id": "d2", "title": "Museum station", "text": "The museum station closes at midnight on weekdays."},
    {"_id": "d3", "title": "Fares", "text": "A single ride costs two credits; a day pass costs nine credits."},
    {"_id": "d4", "title": "Winter", "text": "In winter the fleet is serviced every Monday morning."},
]
QUERIES = [
    {"_id": "q1", "text": "How many docks does the harbour station have?"},
    {"_id": "q2", "text": "When does the museum station close?"},
    {"_id": "q3", "text": "What does a day pass cost?"},
    {"_id": "q4", "text": "An unjudged query"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\nq3\td4\t0\n"


@pytest.fixture
def beir_dir(tmp_path):
    return write_files(tmp_path / "beir", {
        "corpus.jsonl": "\n".join(json.dumps(d) for d in CORPUS) + "\n",
        "queries.jsonl": "\n".join(json.dumps(q) for q in QUERIES) + "\n",
        "qrels/test.tsv": QRELS,
    })


@pytest.fixture
def fakes(monkeypatch, fake_embedder):
    llm = ScriptedLLM()
    use_fakes(embedder=lambda config: fake_embedder)
    use_fakes(llm=lambda config: llm)
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    return llm


def test_import_beir_then_retrieval_only_eval(prefect_backend, fakes, beir_dir, lake_dir, capsys):
    assert main(["import-beir", str(beir_dir), "--chunking", "none", "--lake", str(lake_dir), "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["status"] == "ok" and imported["items"]["total"] == 3, "q4 has no positive judgment"
    assert imported["documents"]["new"] == 4 and imported["chunks"]["total"] == 4
    golden = {i["qa_id"]: i for i in Lake(str(lake_dir)).read_golden(imported["golden_set_id"]).to_pylist()}
    assert golden["q3"]["reference_doc_ids"] == ["d3"] and golden["q3"]["reference_chunk_ids"] == []

    code = main(["eval", "--lake", str(lake_dir), "--golden", "latest", "--retrieval", "vector", "--k", "4",
                 "--retrieval-only", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["status"] == "ok", summary
    assert summary["golden_set_id"] == imported["golden_set_id"]
    assert summary["items"] == {"total": 3, "failed": 0, "by_type": {"imported": 3}, "by_review": {"imported": 3}}
    assert set(summary["metrics"]) >= {"hit@1", "recall@4", "mrr@4", "ndcg@4"}
    assert summary["metrics"]["recall@4"] == 1.0, "k covers the whole corpus"
    for name, value in summary["metrics"].items():
        low, high = summary["ci"][name]
        assert low <= value <= high
    lineage = summary["lineage"]
    assert lineage["chain"]["retrieval"] == "vector" and lineage["chain"]["k"] == 4 and lineage["chain_hash"]
    assert lineage["table"]["version"] >= 1 and lineage["golden_set_id"] == imported["golden_set_id"]
    lake = Lake(str(lake_dir))
    items = lake.read_eval_items(summary["run_id"]).to_pylist()
    assert len(items) == 3 and all(len(i["retrieved_chunk_ids"]) == 4 for i in items)
    traces = lake.read_traces(summary["run_id"]).to_pylist()
    assert {t["step"] for t in traces} == {"retrieve"} and len(traces) == 3

    # The same lineage gives the same deterministic metrics.
    main(["eval", "--lake", str(lake_dir), "--retrieval", "vector", "--k", "4", "--retrieval-only", "--json"])
    again = json.loads(capsys.readouterr().out)
    assert again["metrics"] == summary["metrics"] and again["ci"] == summary["ci"]


@pytest.mark.parametrize("mode", ["fts", "hybrid"])
def test_fts_and_hybrid_retrieval_find_the_keyword_document(prefect_backend, fakes, beir_dir, lake_dir, mode):
    beir_flow.import_beir(path=str(beir_dir), lake=str(lake_dir), chunking="none")
    summary = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval=mode, k=2, retrieval_only=True)
    assert summary["status"] == "ok" and summary["metrics"]["hit@2"] > 0


def _answers(messages):
    user = messages[-1]["content"]
    passages = re.findall(r'"""\n(.*?)\n"""', user, re.S)
    return passages[0].splitlines()[-1] if passages else "The documents do not say."


def test_answers_guardrail_and_failed_items_are_counted(prefect_backend, fakes, beir_dir, lake_dir):
    beir_flow.import_beir(path=str(beir_dir), lake=str(lake_dir), chunking="none")
    fakes.add(_answers, LLMRequestError("HTTP 500 from the endpoint"), LLMRequestError("HTTP 500 again"), _answers, _answers)
    summary = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=2)
    assert summary["items"]["total"] == 3
    assert summary["items"]["failed"] >= 1
    assert summary["status"] == "gate_failed" and "items failed" in summary["gate"]["reasons"][-1], "over the failed fraction"
    items = Lake(str(lake_dir)).read_eval_items(summary["run_id"]).to_pylist()
    failed = [i for i in items if i["status"] == "failed"]
    assert failed and all("answer" in i["error"] for i in failed)
    steps = {t["step"] for t in Lake(str(lake_dir)).read_traces(summary["run_id"]).to_pylist()}
    assert {"retrieve", "guardrail", "answer"} <= steps
    answered = [i for i in items if i["status"] == "ok"]
    assert all(i["answer"] and i["grounded"] for i in answered), "answers copied from the context are grounded"
    assert summary["lineage"]["chain"]["answer"]["name"] == "answer"


def test_eval_bad_golden_exits_2(prefect_backend, fakes, beir_dir, lake_dir, capsys):
    beir_flow.import_beir(path=str(beir_dir), lake=str(lake_dir), chunking="none")
    assert main(["eval", "--lake", str(lake_dir), "--golden", "nope", "--retrieval-only", "--json"]) == 2
    assert "no such golden set" in json.loads(capsys.readouterr().out)["error"]


def _refs_bytes(lake_dir):
    return {p.name: p.read_bytes() for p in sorted((lake_dir / "refs").glob("*.json")) if not p.name.startswith("eval_cache")}


def test_experiments_never_promote_promote_is_explicit_and_the_gate_blocks(
        prefect_backend, fakes, beir_dir, lake_dir, capsys, monkeypatch):
    beir_flow.import_beir(path=str(beir_dir), lake=str(lake_dir), chunking="none")
    refs = Refs(Lake(str(lake_dir)))
    line = refs.lines().chosen
    assert line == f"beir-{beir_dir.name}-test"
    before = _refs_bytes(lake_dir)
    experiment = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, retrieval_only=True)
    assert experiment["gate"]["status"] == "no_baseline" and experiment["promoted"] is False
    assert experiment["promotion"]["reason"].startswith("experiment") and _refs_bytes(lake_dir) == before

    assert main(["eval", "--lake", str(lake_dir), "--retrieval", "vector", "--k", "3", "--retrieval-only", "--promote",
                 "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["gate"]["status"] == "no_baseline" and first["promoted"] is True and first["baseline_run_id"] is None
    assert refs.baseline(line).run_id == first["run_id"] and refs.baseline(line).table == first["lineage"]["table"]

    # An experiment of another chain: compared and gated against the baseline, refs byte-identical.
    before = _refs_bytes(lake_dir)
    code = main(["eval", "--lake", str(lake_dir), "--retrieval", "fts", "--k", "3", "--retrieval-only", "--json"])
    second = json.loads(capsys.readouterr().out)
    assert second["baseline_run_id"] == first["run_id"] and "hit@1" in second["deltas"]
    assert second["promoted"] is False and _refs_bytes(lake_dir) == before
    assert second["gate"]["status"] in ("inconclusive", "failed", "passed") and code == (0 if second["gate"]["status"] == "passed" else 3)
    assert second["gate"]["power"]["hit@1"]["n"] == 3, "the gate says what it could see at this n"

    assert main(["compare", first["run_id"], second["run_id"], "--lake", str(lake_dir), "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert compared["deltas"]["hit@1"]["n"] == 3 and "chain" in compared["lineage_changes"]
    assert main(["compare", first["run_id"], second["run_id"], "--lake", str(lake_dir)]) == 0
    human = capsys.readouterr().out
    assert '"retrieval": "fts"' in human, "lineage differences are shown whole, not cut"

    monkeypatch.setenv("RAGLOOP_GATE__FLOORS", '{"hit@1": 1.01}')
    baseline = refs.baseline(line)
    code = main(["eval", "--lake", str(lake_dir), "--retrieval", "vector", "--k", "3", "--retrieval-only", "--promote", "--json"])
    gated = json.loads(capsys.readouterr().out)
    assert code == 3 and gated["status"] == "gate_failed" and "under its floor" in gated["gate"]["reasons"][0]
    assert gated["promoted"] is False and refs.baseline(line) == baseline, "a failed gate promotes nothing"
    assert main(["promote", gated["run_id"], "--lake", str(lake_dir), "--json"]) == 2
    assert "only a passed run" in json.loads(capsys.readouterr().out)["error"]

    assert main(["lineage", gated["run_id"], "--lake", str(lake_dir), "--json"]) == 0
    lineage = json.loads(capsys.readouterr().out)
    assert lineage["run_status"] == "gate_failed" and lineage["lineage"]["chain_hash"] == gated["lineage"]["chain_hash"]

    assert main(["compare", first["run_id"], "no-such-run", "--lake", str(lake_dir), "--json"]) == 2


def test_promote_after_the_fact_and_a_retrieval_only_baseline_against_a_full_chain(
        prefect_backend, fakes, beir_dir, lake_dir, capsys, monkeypatch):
    beir_flow.import_beir(path=str(beir_dir), lake=str(lake_dir), chunking="none")
    refs = Refs(Lake(str(lake_dir)))
    monkeypatch.setenv("RAGLOOP_GATE__MIN_ITEMS", "1")
    experiment = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=2, retrieval_only=True)
    assert main(["promote", experiment["run_id"], "--lake", str(lake_dir), "--json"]) == 0
    promoted = json.loads(capsys.readouterr().out)
    assert promoted["promoted"] is True and refs.baseline(refs.lines().chosen).run_id == experiment["run_id"]
    assert main(["promote", experiment["run_id"], "--lake", str(lake_dir), "--json"]) == 2
    assert "already the baseline" in json.loads(capsys.readouterr().out)["error"]

    fakes.add(*[_answers] * 3)
    full = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=2)
    assert "refusal_correct" in full["gate"]["not_compared"]["candidate_only"]
    assert any("not compared (candidate only)" in w and "refusal_correct" in w for w in full["gate"]["warnings"])


class JudgeFake(_SyncStructured):
    """Deterministic judge: valid JSON for every ragas step except claim decomposition, which it cannot
    produce (so factual_correctness fails and must be counted, not dropped). A whole LLM (complete, and
    structured on top of it), so the judge's calls go through the LLM call cache like a real judge's."""

    model_id = "judge-fake@1"
    context_window = 8192

    def preflight(self, required_context_tokens):
        return {"model_id": self.model_id}

    def count_tokens(self, text):
        return len(text.split())

    def complete(self, messages, *, json_schema=None, **params):
        from ragloop.tasks.llm import Completion, Usage

        props = (json_schema or {}).get("properties", {})
        fields = set(props)
        if fields == {"claims"}:
            text = "I cannot"
        elif fields == {"statements"}:
            statements = ["The harbour station has twelve docks."]
            plain = props["statements"].get("items", {}).get("type") == "string"
            text = json.dumps({"statements": statements if plain else
                               [{"statement": s, "reason": "stated", "verdict": 1} for s in statements]})
        elif "noncommittal" in fields:
            text = json.dumps({"question": "How many docks does the harbour station have?", "noncommittal": 0})
        elif "classifications" in fields:
            text = json.dumps({"classifications": [{"statement": "twelve docks", "reason": "in context", "attributed": 1}]})
        elif "verdict" in fields:
            text = json.dumps({"reason": "useful", "verdict": 1})
        else:
            raise AssertionError(f"unexpected ragas structure {fields}")
        return Completion(text=text, usage=Usage(1, 1), latency_ms=1.0, model=self.model_id, finish_reason="stop")


def test_ragas_metrics_and_failed_judgments_are_counted(prefect_backend, fakes, tmp_path, lake_dir, monkeypatch):
    src = write_files(tmp_path / "src", {"harbour.md": "# Harbour\n\nThe harbour station has twelve docks and two chargers.",
                                         "fares.md": "# Fares\n\nA single ride costs two credits on weekdays."})
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    table = Lake(str(lake_dir)).connect_vectors().open_table("chunks__hash_fake")
    chunks = {r["doc_id"]: r["chunk_id"] for r in table.search().select(["doc_id", "chunk_id"]).limit(None).to_arrow().to_pylist()}
    golden = tmp_path / "golden.jsonl"
    golden.write_text(json.dumps({"question": "How many docks does the harbour station have?",
                                  "reference_answer": "The harbour station has twelve docks.",
                                  "reference_chunk_ids": [chunks["harbour.md"]], "qa_type": "single_hop"}) + "\n")
    golden_flow.import_golden_set(path=str(golden), lake=str(lake_dir))
    fakes.add(lambda messages: "The harbour station has twelve docks.")
    judge = JudgeFake()
    use_fakes(llm=lambda config: judge if config.provider == "fake" else fakes)
    monkeypatch.setenv("RAGLOOP_EVAL__JUDGE", '{"provider": "fake"}')
    monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")

    summary = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=2)
    m = summary["metrics"]
    assert m["id_context_recall"] == 1.0 and m["id_context_precision"] == 0.5
    assert m["rouge_l"] == 1.0 and m["semantic_similarity"] == pytest.approx(1.0)
    assert m["faithfulness"] == 1.0 and m["context_recall"] == 1.0 and m["context_precision"] > 0.99
    assert "answer_relevancy" in m and "factual_correctness" not in m
    assert summary["failed_judgments"] == {"factual_correctness": 1}
    assert summary["items"]["failed"] == 1 and summary["lineage"]["judge"] == "judge-fake@1"
    item = Lake(str(lake_dir)).read_eval_items(summary["run_id"]).to_pylist()[0]
    assert item["status"] == "failed" and item["failed_metrics"] == ["factual_correctness"]
    assert "factual_correctness" in item["error"]
    assert all(not math.isnan(v) for _, v in item["metrics"])


def test_embedding_rerank_reorders_fts_candidates_by_cosine(prefect_backend, fakes, beir_dir, lake_dir, monkeypatch):
    beir_flow.import_beir(path=str(beir_dir), lake=str(lake_dir), chunking="none")
    monkeypatch.setenv("RAGLOOP_EVAL__RERANK", "embedding")
    summary = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="fts", k=2, retrieval_only=True)
    assert summary["lineage"]["chain"]["rerank"] == {"kind": "embedding", "depth": 4}
    items = Lake(str(lake_dir)).read_eval_items(summary["run_id"]).to_pylist()
    for item in items:
        scores = item["retrieval_scores"]
        assert len(scores) <= 2 and scores == sorted(scores, reverse=True)
        assert all(-1.0 <= s <= 1.0 for s in scores), "cosine scores, not BM25"


def test_an_eval_on_an_ann_table_records_the_index_and_its_knobs(prefect_backend, fakes, beir_dir, lake_dir, monkeypatch):
    """Issue 22: above index.ann_min_rows the chain names the ANN search (index type, eval.ann) and the
    lineage the index's build parameters; a changed knob is a changed chain hash; exact search is not."""
    monkeypatch.setenv("RAGLOOP_INDEX__ANN_MIN_ROWS", "2")
    beir_flow.import_beir(path=str(beir_dir), lake=str(lake_dir), chunking="none")
    first = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="hybrid", k=2, retrieval_only=True)
    lineage = first["lineage"]
    assert lineage["chain"]["ann"] == {"index": "IvfHnswSq", "ef": 100, "refine_factor": 2, "nprobes": None}
    assert lineage["ann_index"] == {"type": "hnsw_sq", "num_partitions": None, "m": 20, "ef_construction": 300}
    assert first["metrics"]["recall@2"] == 1.0, "four rows: the graph finds them all"
    monkeypatch.setenv("RAGLOOP_EVAL__ANN__EF", "300")
    wider = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="hybrid", k=2, retrieval_only=True)
    assert wider["lineage"]["chain"]["ann"]["ef"] == 300 and wider["lineage"]["chain_hash"] != lineage["chain_hash"]
    monkeypatch.setenv("RAGLOOP_EVAL__EXACT", "true")
    exact = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="hybrid", k=2, retrieval_only=True)
    assert "ann" not in exact["lineage"]["chain"]


def test_a_prompt_that_always_refuses_fails_the_gate_naming_the_metrics(prefect_backend, fakes, tmp_path, lake_dir, monkeypatch, capsys):
    docs = {f"s{i}.md": f"# Station {i}\n\nStation {i} has {10 + i} docks and opens at {6 + i} in the morning." for i in range(12)}
    index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", docs))], lake=str(lake_dir))
    table = Lake(str(lake_dir)).connect_vectors().open_table("chunks__hash_fake")
    rows = table.search().select(["doc_id", "chunk_id", "text"]).limit(None).to_arrow().to_pylist()
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({
        "question": f"How many docks does station {r['doc_id'][1:-3]} have?", "reference_answer": r["text"].split("\n")[-1],
        "reference_chunk_ids": [r["chunk_id"]], "qa_type": "single_hop"}) + "\n" for r in rows))
    golden_flow.import_golden_set(path=str(golden), lake=str(lake_dir))
    monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")
    fakes.add(*[_answers] * len(rows))
    baseline = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="hybrid", k=2, promote="explicit")
    assert baseline["gate"]["status"] == "no_baseline" and baseline["promoted"], baseline["gate"]

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for path in (REPO / "prompts").glob("*.yaml"):
        text = path.read_text()
        if path.stem == "answer":
            text = text.replace("Answer in one to three sentences", 'Always reply "I don\'t know." Answer in one to three sentences')
        (prompts / path.name).write_text(text)
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(prompts))
    fakes.add(*["I don't know."] * len(rows))
    code = main(["eval", "--lake", str(lake_dir), "--retrieval", "hybrid", "--k", "2", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 3 and summary["status"] == "gate_failed"
    reasons = " ".join(summary["gate"]["reasons"])
    assert "refusal_correct dropped" in reasons and "semantic_similarity dropped" in reasons
    assert summary["lineage"]["prompts"]["answer"] != baseline["lineage"]["prompts"]["answer"]
    refs = Refs(Lake(str(lake_dir)))
    assert refs.baseline(refs.lines().chosen).run_id == baseline["run_id"]


# -- issue 17: user text is text, one failure fails alone, CJK is searchable ------------------------------
SYNTAX_CORPUS = {
    "spam.md": "# Mail\n\nWhat spam filter scores outbound mail? The outbound relay runs the filter.",
    "docks.md": "# Harbour\n\nThe harbour station has twelve docks and two chargers.",
    "fares.md": "# Fares\n\nA single ride costs two credits; a day pass costs nine credits.",
}
SYNTAX_QUESTIONS = {
    "spam.md": ['"What spam filter scores outbound mail?"', "spam AND NOT relay OR filter", "title:spam +filter -(outbound) [mail]^2 ~ *"],
    "docks.md": ['How many "docks" (chargers too) - harbour?'],
}


def _golden_for(tmp_path, lake_dir, questions: dict[str, list[str]]) -> None:
    table = Lake(str(lake_dir)).connect_vectors().open_table("chunks__hash_fake")
    chunks = {r["doc_id"]: r["chunk_id"] for r in table.search().select(["doc_id", "chunk_id"]).limit(None).to_arrow().to_pylist()}
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"question": q, "reference_answer": "x", "reference_chunk_ids": [chunks[d]],
                                          "qa_type": "single_hop"}, ensure_ascii=False) + "\n"
                              for d, qs in questions.items() for q in qs), encoding="utf-8")
    golden_flow.import_golden_set(path=str(golden), lake=str(lake_dir))


@pytest.mark.parametrize("mode", ["fts", "hybrid"])
def test_questions_with_query_syntax_are_searched_as_text(prefect_backend, fakes, tmp_path, lake_dir, mode):
    index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", SYNTAX_CORPUS))], lake=str(lake_dir))
    _golden_for(tmp_path, lake_dir, SYNTAX_QUESTIONS)
    summary = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval=mode, k=2, retrieval_only=True)
    assert summary["status"] == "ok" and summary["items"] == {"total": 4, "failed": 0, "by_type": {"single_hop": 4},
                                                        "by_review": {"imported": 4}}
    assert summary["metrics"]["hit@2"] == 1.0


def test_an_item_whose_retrieval_fails_fails_alone(prefect_backend, fakes, tmp_path, lake_dir, monkeypatch):
    from ragloop.tasks.retrieval import Retriever

    index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", SYNTAX_CORPUS))], lake=str(lake_dir))
    _golden_for(tmp_path, lake_dir, {"spam.md": ["Which spam filter scores outbound mail?"],
                                     "docks.md": ["How many docks does the harbour have?"]})
    real = Retriever._search

    def flaky(self, query, vector, mode, k):
        if "docks" in query:
            raise RuntimeError("LanceDB error on this one query")
        return real(self, query, vector, mode, k)

    monkeypatch.setattr(Retriever, "_search", flaky)
    monkeypatch.setenv("RAGLOOP_GATE__MAX_FAILED_FRACTION", "0.5")
    summary = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="hybrid", k=2, retrieval_only=True)
    assert summary["status"] == "partial" and summary["items"]["failed"] == 1 and summary["items"]["total"] == 2
    assert summary["metrics"]["hit@2"] == 1.0 and summary["n"]["hit@2"] == 1, "scored on the item that has a ranking"
    items = {i["question"]: i for i in Lake(str(lake_dir)).read_eval_items(summary["run_id"]).to_pylist()}
    failed = items["How many docks does the harbour have?"]
    assert failed["status"] == "failed" and failed["error"].startswith("retrieve: RuntimeError: LanceDB error")
    assert failed["metrics"] == [] and failed["retrieved_chunk_ids"] == []


CJK_CORPUS = {
    "tokyo.md": "# 東京駅\n\n東京駅には自転車の駐輪場が二十あります。営業時間は朝六時から夜十二時までです。",
    "osaka.md": "# 大阪\n\n大阪の美術館駅は平日の深夜に閉まります。",
    "beijing.md": "# 北京\n\n北京的地铁站每天早上六点开门，晚上十一点关门。",
    "shanghai.md": "# 上海\n\n上海的单程票价格是两元，一日票是九元。",
    "cafe.md": "# Café\n\nLe café du port ouvre à sept heures.",
}


def test_chinese_and_japanese_questions_get_full_text_hits(prefect_backend, fakes, tmp_path, lake_dir):
    indexed = index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", CJK_CORPUS))], lake=str(lake_dir))
    assert indexed["indexes"]["fts_tokenizer"].startswith("icu")
    _golden_for(tmp_path, lake_dir, {"tokyo.md": ["東京駅の駐輪場はいくつありますか？"], "osaka.md": ["美術館駅はいつ閉まりますか？"],
                                     "beijing.md": ["北京的地铁站几点开门？"], "shanghai.md": ["上海的一日票多少钱？"],
                                     "cafe.md": ["When does the cafe open?"]})
    summary = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="fts", k=1, retrieval_only=True)
    assert summary["items"]["failed"] == 0 and summary["metrics"]["hit@1"] == 1.0
    items = Lake(str(lake_dir)).read_eval_items(summary["run_id"]).to_pylist()
    assert all(i["retrieved_chunk_ids"] for i in items), "no CJK question comes back empty"


GARBAGE = {  # question -> (planted answer, expected degenerate reason, expected grounded)
    "How many docks does the harbour station have?": ("[1] # Harbour\n" * 20, "loop", False),
    "What does a single ride cost?": ("What does a single ride cost?", "echo", False),
    "When does the museum station close?": ("The museum station closes at midnight on weekdays.", None, True),
    "How many chargers does the harbour station have?": ("The harbour station has 14 chargers.", None, False),  # made up
    "Who painted the harbour station?": ("The harbour station was painted by Monet in 1970.", None, False),
}


def test_looping_and_echoing_answers_are_degenerate_not_grounded(prefect_backend, fakes, tmp_path, lake_dir, monkeypatch):
    src = write_files(tmp_path / "src", {
        "harbour.md": "# Harbour\n\nThe harbour station has twelve docks and two chargers.",
        "fares.md": "# Fares\n\nA single ride costs two credits on weekdays.",
        "hours.md": "# Hours\n\nThe museum station closes at midnight on weekdays."})
    index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    table = Lake(str(lake_dir)).connect_vectors().open_table("chunks__hash_fake")
    chunks = {r["doc_id"]: r["chunk_id"] for r in table.search().select(["doc_id", "chunk_id"]).limit(None).to_arrow().to_pylist()}
    refs = ["harbour.md", "fares.md", "hours.md", "harbour.md", None]
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"question": q, "reference_chunk_ids": [chunks[d]] if d else [],
                                          "qa_type": "single_hop" if d else "unanswerable"}) + "\n"
                              for q, d in zip(GARBAGE, refs)))
    golden_flow.import_golden_set(path=str(golden), lake=str(lake_dir))
    monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")
    planted = lambda messages: GARBAGE[re.search(r"Question: (.*)", messages[-1]["content"]).group(1)][0]  # noqa: E731
    fakes.add(*[planted] * len(GARBAGE))

    summary = eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=2)
    rows = {r["question"]: r for r in Lake(str(lake_dir)).read_eval_items(summary["run_id"]).to_pylist()}
    for question, (_, reason, grounded) in GARBAGE.items():
        assert (rows[question]["degenerate"], rows[question]["grounded"]) == (reason, grounded), question
    m = summary["metrics"]
    assert m["degenerate"] == pytest.approx(2 / 5) and summary["n"]["degenerate"] == 5
    assert m["grounded"] == pytest.approx(1 / 5)
    assert summary["answers"]["degenerate"] == 2 and summary["answers"]["degenerate_by_reason"] == {"echo": 1, "loop": 1}
    # refusal is visible per side: the unanswerable item was answered (recall 0), no answerable one refused
    assert m["refusal_recall"] == 0.0 and summary["n"]["refusal_recall"] == 1
    assert m["false_refusal"] == 0.0 and summary["n"]["false_refusal"] == 4
    assert summary["by_type"]["unanswerable"]["metrics"]["refusal_recall"] == 0.0
    traces = [t for t in Lake(str(lake_dir)).read_traces(summary["run_id"]).to_pylist() if t["step"] == "grounding"]
    assert any("not_in_context=14" in t["output"] for t in traces)


def test_eval_gates_on_a_judge_only_once_calibrate_finds_it_agrees_with_people(prefect_backend, fakes, tmp_path, lake_dir,
                                                                                monkeypatch, capsys):
    """The whole loop through the CLI: an eval whose answer checks are held to gate.calibration reports them
    ungated ('uncalibrated judge'); a person grades the answers (review events); `calibrate` stores each
    check's agreement; the next eval gates on the checks that agree with people and says why not for the rest."""
    from ragloop.tasks import review

    docs = {f"s{i}.md": f"# Station {i}\n\nStation {i} has {10 + i} docks and opens at {6 + i} in the morning." for i in range(12)}
    index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", docs))], lake=str(lake_dir))
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({
        "question": f"How many docks does station {i} have?", "reference_answer": f"Station {i} has {10 + i} docks.",
        "reference_doc_ids": [f"s{i}.md"], "qa_type": "single_hop"}) + "\n" for i in range(12)))
    golden_flow.import_golden_set(path=str(golden), lake=str(lake_dir))
    monkeypatch.setenv("RAGLOOP_EVAL__REFUSE_BELOW", "-1")
    monkeypatch.setenv("RAGLOOP_GATE__CALIBRATION__LEVELS", '["answer"]')
    monkeypatch.setenv("RAGLOOP_GATE__CALIBRATION__MIN_LABELS", "8")
    monkeypatch.setenv("RAGLOOP_GATE__CALIBRATION__MIN_CLASS_LABELS", "3")

    def chain_answer(messages):  # right (and in the context) for even stations, an off-topic claim for odd ones
        station = int(re.search(r"station (\d+) have\?", messages[-1]["content"]).group(1))
        return f"Station {station} has {10 + station} docks." if station % 2 == 0 else "The museum closes at midnight on weekdays."

    fakes.add(*[chain_answer] * 36)
    args = ["eval", "--retrieval", "vector", "--k", "12", "--lake", str(lake_dir), "--json"]
    assert main([*args, "--promote"]) == 0  # the line's baseline: the next run is compared with it
    first = json.loads(capsys.readouterr().out)
    calibration = first["gate"]["calibration"]
    assert {"grounded", "semantic_similarity"} <= set(calibration)
    assert not any(c["gated"] for c in calibration.values())
    assert "uncalibrated judge" in calibration["semantic_similarity"]["reason"]
    assert any(w.startswith("semantic_similarity: reported, not gated (uncalibrated judge") for w in first["gate"]["warnings"])

    lake = Lake(str(lake_dir))
    for item in lake.read_eval_items(first["run_id"]).to_pylist():
        grade = "correct" if item["answer"].startswith("Station") else "incorrect"
        review.record_decision(lake, review.Decision("answers", item["qa_id"], "grade", "ana", {"grade": grade}),
                               run_id=first["run_id"])
    assert main(["calibrate", "--run", first["run_id"], "--lake", str(lake_dir), "--json"]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert calibrated["graded"] == 12 and calibrated["labels"] == {"correct": 6, "incorrect": 6, "partially_correct": 0}
    assert {"grounded", "semantic_similarity"} <= set(calibrated["may_gate"])
    assert calibrated["metrics"]["grounded"]["kappa"] == 1.0  # grounded exactly where a person said correct
    assert calibrated["metrics"]["semantic_similarity"]["kappa"] >= 0.6  # leave-one-out thresholds on a hash embedder
    assert "degenerate" in calibrated["not_gated"], "a check that never fires cannot show agreement"

    assert main(args) in (0, 3)
    second = json.loads(capsys.readouterr().out)
    calibration = second["gate"]["calibration"]
    assert calibration["semantic_similarity"]["gated"] and calibration["grounded"]["gated"]
    assert calibration["grounded"]["n"] == 12 and calibration["grounded"]["kappa"] == 1.0
    assert not calibration["degenerate"]["gated"] and calibration["degenerate"]["reason"]
    assert {"semantic_similarity", "grounded"} <= set(second["gate"]["gated"])
    assert "degenerate" in second["gate"]["ungated"] and "semantic_similarity" not in second["gate"]["ungated"]
    human_args = [a for a in args if a != "--json"]
    assert main(human_args) in (0, 3)
    human = capsys.readouterr().out
    assert "degenerate: reported, not gated" in human
