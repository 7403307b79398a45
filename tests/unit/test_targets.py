"""Eval targets' pure decisions: config validation, identity and chain hash, request templates, reply field
paths, context matching (id, exact, normalized, unmatched), calls to Python callables, results per item."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from ragloop.tasks import eval_run, targets
from ragloop.tasks.eval_run import ChainModels
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.settings import ConfigError, EvalConfig, EvalTarget, HTTPTargetResponse, load_settings
from ragloop.tasks.targets import ChunkCatalog, TargetAnswer, TargetContext, TargetFailure

ROWS = [
    {"chunk_id": "c1", "doc_id": "d1", "text": "# Harbour\n\nThe harbour station has **twelve** docks."},
    {"chunk_id": "c2", "doc_id": "d2", "text": "Fares: a [day pass](https://x.example/pass) costs nine credits."},
    {"chunk_id": "c4", "doc_id": "d4", "text": "Same text in two documents."},
    {"chunk_id": "c3", "doc_id": "d3", "text": "Same text in two documents."},
]


# -- config ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, match", [
    ({"python": "app"}, r"eval\.target\.python: Value error, expected 'package\.module:callable'"),
    ({"python": "my app:answer"}, r"eval\.target\.python: Value error"),
    ({"python": "a:b", "colour": "red"}, r"eval\.target\.colour: unknown key"),
    ({"http": {"method": "POST"}}, r"eval\.target\.http\.url: Field required"),
    ({"http": {"url": "ftp://x"}}, r"eval\.target\.http\.url: Value error, must start with http:// or https://"),
    ({"http": {"url": "http://x", "respons": {}}}, r"eval\.target\.http\.respons: unknown key"),
    ({"http": {"url": "http://x", "method": "PUT"}}, r"eval\.target\.http\.method"),
    ({"http": {"url": "http://x", "headers_env": {"A": "RAGLOOP_KEY"}}}, r"eval\.target\.http\.headers_env: .*RAGLOOP_"),
    ({"python": "a:b", "http": {"url": "http://x"}}, r"eval\.target: Value error, give exactly one of python"),
    ({}, r"eval\.target: Value error, give exactly one of python"),
    ("mine", r"eval\.target: Value error, expected builtin or a mapping"),
    ({"python": "a:b", "concurrency": 0}, r"eval\.target\.concurrency"),
])
def test_a_bad_target_fails_at_load_naming_the_field(target, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(overrides={"eval": {"target": target}})


@pytest.mark.parametrize("target, kind", [("builtin", None), ({"python": "pkg.mod:App.answer"}, "python"),
                                          ({"python": "apps/my_app.py:answer"}, "python"),
                                          ({"http": {"url": "https://rag.example/ask"}}, "http")])
def test_good_targets_load(target, kind):
    loaded = load_settings(overrides={"eval": {"target": target}}).eval.target
    assert (loaded is None) if kind is None else (("python" if loaded.python else "http") == kind)


def test_a_python_target_that_does_not_import_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"^eval\.target\.python: cannot import 'nope_pkg\.app:answer': "
                                          r"ModuleNotFoundError: No module named 'nope_pkg'$"):
        targets.check_target(EvalTarget(python="nope_pkg.app:answer"))
    with pytest.raises(ConfigError, match=r"'json:dumps\.x': AttributeError"):
        targets.load_callable("json:dumps.x")
    with pytest.raises(ConfigError, match=r"'json:__doc__' is a str, not a callable"):
        targets.load_callable("json:__doc__")


def test_a_python_target_may_be_a_file(tmp_path, monkeypatch):
    (tmp_path / "my_app.py").write_text("def answer(question):\n    return {'answer': question, 'contexts': ['x']}\n")
    monkeypatch.chdir(tmp_path)
    fn, source = targets.load_callable("my_app.py:answer")
    assert fn("hi") == {"answer": "hi", "contexts": ["x"]} and source == tmp_path / "my_app.py"


def test_missing_header_variables_are_named_never_their_values():
    config = EvalTarget(http={"url": "http://x", "headers_env": {"Authorization": "APP_TOKEN", "X-Team": "TEAM"}})
    assert targets.missing_header_vars(config.http, {"TEAM": ""}) == ["APP_TOKEN"]
    with pytest.raises(ConfigError, match=r"^eval\.target\.http\.headers_env: env var\(s\) APP_TOKEN, TEAM not set$"):
        targets.check_target(config, {})
    targets.check_target(config, {"APP_TOKEN": "t", "TEAM": "a"}, reachable=False)


# -- identity and chain hash ----------------------------------------------------------------------------------
def test_the_chain_hash_changes_with_the_targets_identity(tmp_path):
    source = tmp_path / "app.py"
    source.write_text("def answer(q): ...\n")
    python = EvalTarget(python="app:answer")
    first = targets.target_identity(python, source)
    assert first == {"kind": "python", "callable": "app:answer", "code_sha256": targets.file_sha256(source)}
    source.write_text("def answer(q): return 1\n")
    changed_code = targets.target_identity(python, source)
    http = targets.target_identity(EvalTarget(http={"url": "http://a/ask"}))
    other_url = targets.target_identity(EvalTarget(http={"url": "http://b/ask"}))
    other_paths = targets.target_identity(EvalTarget(http={"url": "http://a/ask", "response": {"answer": "data.text"}}))
    limits = targets.target_identity(EvalTarget(http={"url": "http://a/ask"}, concurrency=16, timeout_s=5))
    chains = [canonical_hash(targets.describe_target_chain(i, 5, 0.5, False))
              for i in (first, changed_code, http, other_url, other_paths)]
    assert len(set(chains)) == 5
    assert limits == http, "concurrency and timeouts change no answer"
    assert targets.describe_target_chain(http, 5, 0.5, True)["grounding"] is None


def test_the_builtin_chain_and_its_cache_key_are_unchanged_by_the_target_setting(lake_dir):
    models = ChainModels(None, None)
    builtin = load_settings(overrides={"lake": str(lake_dir)})
    explicit = load_settings(overrides={"lake": str(lake_dir), "eval": {"target": "builtin"}})
    chain = eval_run.describe_chain(builtin.eval, models, True)
    assert "target" not in chain and chain == eval_run.describe_chain(explicit.eval, models, True)
    serving = eval_run.promotion.ServingRef(table="t", version=1)
    key = eval_run.eval_cache_key("g", serving, chain, models, "w", builtin)
    assert key == eval_run.eval_cache_key("g", serving, chain, models, "w", explicit)
    assert "target" not in builtin.eval.model_dump(exclude={"target"})
    assert eval_run.wanted_prompts(EvalConfig(target={"python": "a:b"}), False) == [], "the app brings its own LLM"


# -- requests and replies -------------------------------------------------------------------------------------------
def test_the_request_template_takes_the_question_and_conversation():
    template = {"input": {"query": "{question}", "session": "{conversation_id}"}, "note": "q={qa_id} {x}",
                "history": [], "n": 3, "tags": ["{question}"]}
    assert targets.render_request(template, {"question": 'Say "hi" {now}', "conversation_id": None, "qa_id": "q1"}) == {
        "input": {"query": 'Say "hi" {now}', "session": None}, "note": "q=q1 {x}", "history": [], "n": 3,
        "tags": ['Say "hi" {now}']}


@pytest.mark.parametrize("path, expected", [
    ("answer", "A"), ("data.items.1.text", "second"), ("data.items.-1.text", "second"), ("", {"keep": "all"}),
])
def test_field_paths(path, expected):
    data = {"answer": "A", "data": {"items": [{"text": "first"}, {"text": "second"}]}}
    assert targets.field_at(data if path else {"keep": "all"}, path) == expected


@pytest.mark.parametrize("path, missing", [("data.nope", "'nope'"), ("data.items.2", "'2'"), ("answer.x", "'x'")])
def test_a_missing_field_is_named(path, missing):
    with pytest.raises(KeyError, match=missing):
        targets.field_at({"answer": "A", "data": {"items": [1, 2]}}, path)


def test_a_reply_is_read_by_its_field_paths():
    paths = HTTPTargetResponse(answer="output.text", contexts="output.sources", text="page_content",
                               chunk_id="metadata.id", doc_id="metadata.source", score="relevance", trace="debug.steps")
    reply = targets.reply_from_json({"output": {"text": "Twelve.", "sources": [
        {"page_content": "The harbour has twelve docks.", "metadata": {"id": "c1", "source": "d1"}, "relevance": "0.9"},
        {"page_content": "Fares."}]}, "debug": {"steps": [{"step": "rerank", "latency_ms": 3}, {"no": "step"}]}}, paths)
    assert reply == TargetAnswer("Twelve.", [TargetContext("The harbour has twelve docks.", "c1", "d1", 0.9),
                                             TargetContext("Fares.")], [{"step": "rerank", "latency_ms": 3}])
    plain = targets.reply_from_json({"answer": "x", "contexts": ["one", "two"]}, HTTPTargetResponse(text=None))
    assert [c.text for c in plain.contexts] == ["one", "two"]


@pytest.mark.parametrize("data, reason", [
    ({"contexts": ["x"]}, "the reply has no answer at 'answer'"),
    ({"answer": "a"}, "the reply has no contexts at 'contexts'"),
    ({"answer": "a", "contexts": "x"}, "contexts at 'contexts' is a str, not a list"),
    ({"answer": "a", "contexts": []}, "the reply has no contexts"),
    ({"answer": 42, "contexts": ["x"]}, "the answer is an int \\(42\\), not a string"),
    ({"answer": "a", "contexts": [{"body": "x"}]}, "context 0 has no text at 'text': it is an object with keys body"),
    ({"answer": "a", "contexts": [7]}, "context 0 has no text at 'text': it is an int \\(7\\)"),
    ({"answer": "a", "contexts": [{"text": None}]}, "context 0 text is null, not a string"),
    ({"answer": "a", "contexts": ["x", {"text": ["p", "q"]}]}, "context 1 text is a list \\(\\['p', 'q'\\]\\), not a string"),
    ({"answer": "a", "contexts": [{"text": "x", "score": "high"}]}, "context 0 score 'high' is not a number"),
])
def test_a_reply_missing_what_is_needed_is_a_failure_with_its_reason(data, reason):
    with pytest.raises(TargetFailure, match=f"^{reason}"):
        targets.reply_from_json(data, HTTPTargetResponse(score="score"))


def test_python_replies_may_be_dicts_dataclasses_or_objects():
    @dataclass
    class Reply:
        answer: str
        contexts: list

    expected = TargetAnswer("a", [TargetContext("x", doc_id="d1")], [])
    assert targets.coerce_reply({"answer": "a", "contexts": [{"text": "x", "doc_id": "d1"}]}) == expected
    assert targets.coerce_reply(Reply("a", [TargetContext("x", doc_id="d1")])) == expected
    assert targets.coerce_reply(TargetAnswer("a", ("x",), [{"step": "s"}])).contexts == [TargetContext("x")]
    with pytest.raises(TargetFailure, match="the reply has no list of contexts"):
        targets.coerce_reply({"answer": "a", "contexts": "x"})
    with pytest.raises(TargetFailure, match="the reply has no answer"):
        targets.coerce_reply(None)


# -- matching -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, plain", [
    ("# Harbour\n\nThe harbour has **twelve**   docks.", "Harbour The harbour has twelve docks."),
    ("A [day pass](https://x) costs `9`\ncredits.", "A day pass costs 9 credits."),
    ("- one\n- two", "one two"),
    ("ﬁve　docks", "five docks"),  # a ligature and an ideographic space (NFKC)
])
def test_normalized_text_drops_markup_and_spacing(text, plain):
    assert targets.normalize_text(text) == plain


@pytest.mark.parametrize("context, matched", [
    (TargetContext("anything", chunk_id="c2"), ("c2", "id")),
    (TargetContext(ROWS[0]["text"]), ("c1", "exact")),
    (TargetContext(ROWS[0]["text"], chunk_id="their-own-id"), ("c1", "exact")),
    (TargetContext("Harbour The harbour station has twelve docks."), ("c1", "normalized")),
    (TargetContext("Fares: a day pass costs\n  nine credits."), ("c2", "normalized")),
    (TargetContext("Same text in two documents."), ("c3", "exact")),  # equal texts: the smallest chunk_id
    (TargetContext("Same text in two documents.", doc_id="d4"), ("c4", "exact")),  # ... unless the app says which
    (TargetContext("The harbour station has twelve docks"), (None, "unmatched")),  # a part is not the chunk
])
def test_contexts_match_chunks_by_id_then_exact_then_normalized_text(context, matched):
    assert ChunkCatalog(ROWS).match(context) == matched


def test_unmatched_contexts_keep_their_rank_and_are_counted():
    contexts = [TargetContext("Not in the index.", score=0.9), TargetContext(ROWS[1]["text"], score=0.5),
                TargetContext("Elsewhere.", doc_id="d1")]
    hits, how = targets.match_contexts(contexts, ChunkCatalog(ROWS))
    assert how == ["unmatched", "exact", "unmatched"]
    assert hits[0].chunk_id.startswith("unmatched:") and hits[0].doc_id == hits[0].chunk_id and hits[0].score == 0.9
    assert (hits[1].chunk_id, hits[1].doc_id) == ("c2", "d2") and hits[2].doc_id == "d1", "the app's doc_id still counts"
    assert targets.context_counts([how, ["id"]]) == {"total": 4, "id": 1, "exact": 1, "normalized": 0, "unmatched": 2}
    assert targets.target_line({"kind": "http", "url": "http://a/ask"}, targets.context_counts([how])) == (
        "target http http://a/ask: 3 contexts, 1 matched to chunks (id 0, exact 1, normalized 0), 2 unmatched")


# -- calls and results ----------------------------------------------------------------------------------------------
ITEMS = [{"qa_id": f"q{i}", "question": f"question {i}?"} for i in range(4)]


def _sync(question, conversation_id=None):
    if question.startswith("question 1"):
        raise RuntimeError("the app broke")
    if question.startswith("question 2"):
        time.sleep(1.5)
    return {"answer": f"{conversation_id}: {ROWS[0]['text']}", "contexts": [ROWS[0]["text"]]}


async def _async(question):
    await asyncio.sleep(0)
    return TargetAnswer("answer", [question])


def test_python_calls_fail_per_item_and_keep_item_order():
    done = []
    calls = targets.call_target(EvalTarget(python="x:y", timeout_s=0.5, concurrency=4), _sync, ITEMS,
                                on_done=lambda: done.append(1))
    assert [c.error for c in calls] == [None, "RuntimeError: the app broke", "timed out after 0.5s", None]
    assert calls[0].reply.answer.startswith("q0: ") and len(done) == 4
    async_calls = targets.call_target(EvalTarget(python="x:y"), _async, ITEMS[:2])
    assert [c.reply.contexts[0].text for c in async_calls] == ["question 0?", "question 1?"]


def test_results_carry_matched_hits_checked_answers_and_the_apps_trace():
    reply = targets.coerce_reply
    calls = [targets.Call(reply(TargetAnswer("The harbour station has twelve docks.", [ROWS[0]["text"], "Unknown."],
                                             [{"step": "rerank", "input": {"n": 2}, "output": ["c1"], "latency_ms": 2}])),
                          None, 5.0),
             targets.Call(None, "HTTP 500", 9.0),
             targets.Call(reply(TargetAnswer("I don't know.", [ROWS[1]["text"]])), None, 1.0)]
    done = targets.target_results(ITEMS[:3], calls, ChunkCatalog(ROWS), 0.5, retrieval_only=False)
    ok, failed, refused = done.results
    assert [h.chunk_id for h in ok.hits][0] == "c1" and ok.grounded is True and ok.refused is False
    assert [t["step"] for t in ok.traces] == ["target", "match_contexts", "target:rerank", "grounding"]
    assert ok.traces[1]["output"] == "id=0 exact=1 normalized=0 unmatched=1"
    assert ok.traces[2]["input"] == '{"n": 2}' and ok.traces[2]["output"] == '["c1"]'
    assert failed.error == "target: HTTP 500" and failed.retrieval_failed and failed.hits == []
    assert refused.refused is True and refused.grounded is None
    assert done.matches == {"q0": ["exact", "unmatched"], "q2": ["exact"]}
    only = targets.target_results(ITEMS[:1], calls[:1], ChunkCatalog(ROWS), 0.5, retrieval_only=True).results[0]
    assert only.answer is None and only.refused is None and len(only.hits) == 2


@pytest.mark.parametrize("contexts, reason", [
    ([3], "context 0 is an int \\(3\\), not a string or an object with a text"),
    ([{"page_content": "x"}], "context 0 has no text: it is an object with keys page_content"),
    (["ok", {}], "context 1 has no text: it is an empty object"),
])
def test_a_python_reply_with_a_wrong_context_names_what_it_got(contexts, reason):
    """Found by a new user: an int context was reported as 'context 0 text is a NoneType'."""
    with pytest.raises(TargetFailure, match=f"^{reason}$"):
        targets.coerce_reply({"answer": "a", "contexts": contexts})


def test_an_http_target_nothing_listens_on_fails_the_check_naming_the_url_field():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        config = EvalTarget(http={"url": f"http://127.0.0.1:{port}/ask"})
        with pytest.raises(ConfigError, match=f"^eval.target.http.url: nothing accepts connections at 127.0.0.1:{port} "):
            targets.check_target(config, {})
        targets.check_target(config, {}, reachable=False)  # the flow's own check leaves reachability to items


def test_an_http_target_that_listens_passes_the_check_and_gets_no_request():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        targets.check_target(EvalTarget(http={"url": f"http://127.0.0.1:{server.getsockname()[1]}/ask"}), {})
        conn, _ = server.accept()
        with conn:
            conn.settimeout(0.5)
            assert conn.recv(1) == b"", "the check opens and closes a connection, it sends no request"
