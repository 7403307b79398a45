"""Eval targets through the real evaluate-chain flow: the example app (examples/own_app) as a Python callable
and served over HTTP on 127.0.0.1, its contexts matched to chunks by text, its IR metrics equal to the
built-in chain's with the same retrieval; a faulty HTTP target fails its items, never the run."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragloop.flows import evaluate as eval_flow
from ragloop.flows import golden as golden_flow
from ragloop.flows import index as index_flow
from ragloop.flows.cli import main
from ragloop.tasks.storage import Lake
from tests.conftest import use_fakes, write_files

CORPUS = {f"s{i}.md": f"# Station {i}\n\nStation {i} has {10 + i} docks and opens at {6 + i} in the morning.\n\n"
                      f"Its kiosk sells passes for zone {i % 3}." for i in range(8)}
IR = ("hit@", "recall@", "mrr@", "ndcg@", "chunk_hit@", "chunk_recall@", "chunk_mrr@", "chunk_ndcg@")
APP = "examples.own_app.app:answer"
HTTP_RESPONSE = {"answer": "answer", "contexts": "sources", "text": "content", "doc_id": "source", "score": "score",
                 "trace": "steps"}


@pytest.fixture
def corpus_lake(prefect_backend, fake_embedder, tmp_path, lake_dir, monkeypatch):
    """A lake with the corpus indexed by the fake embedder and a golden set of one question per chunk; the
    example app reads the same lake (RAGLOOP_LAKE) with the same embedder (the provider seam)."""
    use_fakes(embedder=lambda config: fake_embedder)
    index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", CORPUS))], lake=str(lake_dir))
    table = Lake(str(lake_dir)).connect_vectors().open_table("chunks__hash_fake")
    rows = sorted(table.search().select(["doc_id", "chunk_id"]).limit(None).to_arrow().to_pylist(),
                  key=lambda r: r["chunk_id"])
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({
        "question": f"How many docks does station {r['doc_id'][1:-3]} have, and when does it open?",
        "reference_chunk_ids": [r["chunk_id"]], "qa_type": "single_hop"}) + "\n" for r in rows))
    golden_flow.import_golden_set(path=str(golden), lake=str(lake_dir))
    monkeypatch.setenv("RAGLOOP_LAKE", str(lake_dir))
    monkeypatch.setenv("RAGLOOP_EVAL__K", "3")
    monkeypatch.setenv("RAGLOOP_GATE__MAX_FAILED_FRACTION", "1")
    return lake_dir


def _ir(summary: dict) -> dict:
    return {m: v for m, v in summary["metrics"].items() if m.startswith(IR)}


def _builtin_ir(lake_dir) -> dict:
    return _ir(eval_flow.evaluate_chain(lake=str(lake_dir), retrieval="vector", k=3, retrieval_only=True))


def test_the_example_app_as_a_python_target_scores_like_the_builtin_chain(corpus_lake, monkeypatch, capsys):
    builtin = _builtin_ir(corpus_lake)
    monkeypatch.setenv("RAGLOOP_EVAL__TARGET", json.dumps({"python": APP}))
    assert main(["eval", "--lake", str(corpus_lake), "--k", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] in ("ok", "partial") and summary["items"]["failed"] == 0, summary.get("error")
    assert _ir(summary) == builtin and builtin["chunk_hit@3"] > 0, "same retrieval, same IR metrics"
    n = summary["items"]["total"]
    assert summary["contexts"] == {"total": 3 * n, "id": 0, "exact": 3 * n, "normalized": 0, "unmatched": 0}
    identity = summary["target"]
    assert identity["kind"] == "python" and identity["callable"] == APP and len(identity["code_sha256"]) == 64
    assert summary["lineage"]["chain"]["target"] == identity and summary["lineage"]["target"] == identity
    assert summary["lineage"]["models"]["llm"] is None and summary["lineage"]["prompts"] == {}
    assert summary["answers"]["total"] == n and summary["metrics"]["grounded"] == 1.0, "extracted from the context"
    steps = {t["step"] for t in Lake(str(corpus_lake)).read_traces(summary["run_id"]).to_pylist()}
    assert steps == {"target", "match_contexts", "target:search", "target:extract", "grounding"}

    assert main(["eval", "--lake", str(corpus_lake), "--k", "3"]) == 0
    assert f"target python {APP}: {3 * n} contexts, {3 * n} matched to chunks" in capsys.readouterr().out


def test_the_example_app_served_over_http_scores_like_the_builtin_chain(corpus_lake, monkeypatch):
    from examples.own_app.app import serve_in_background

    builtin = _builtin_ir(corpus_lake)
    monkeypatch.setenv("OWN_APP_TOKEN", "s3cret-token")
    with serve_in_background() as url:
        monkeypatch.setenv("RAGLOOP_EVAL__TARGET", json.dumps({"concurrency": 4, "http": {
            "url": url, "headers_env": {"Authorization": "OWN_APP_TOKEN"}, "response": HTTP_RESPONSE}}))
        summary = eval_flow.evaluate_chain(lake=str(corpus_lake), k=3)
    items = Lake(str(corpus_lake)).read_eval_items(summary["run_id"]).to_pylist()
    assert summary["items"]["failed"] == 0, items[0]["error"]
    assert _ir(summary) == builtin
    assert summary["contexts"]["exact"] == summary["contexts"]["total"] > 0
    assert summary["target"]["kind"] == "http" and summary["target"]["url"] == url
    assert "s3cret-token" not in json.dumps(summary), "header values never reach the lineage"


def test_a_changed_target_changes_the_chain_hash(corpus_lake, monkeypatch):
    monkeypatch.setenv("RAGLOOP_EVAL__TARGET", json.dumps({"http": {"url": "http://127.0.0.1:9/a"}}))
    monkeypatch.setenv("RAGLOOP_EVAL__TARGET__MAX_RETRIES", "0")
    a = eval_flow.evaluate_chain(lake=str(corpus_lake), k=3)
    monkeypatch.setenv("RAGLOOP_EVAL__TARGET", json.dumps({"http": {"url": "http://127.0.0.1:9/b"}, "max_retries": 0}))
    b = eval_flow.evaluate_chain(lake=str(corpus_lake), k=3)
    assert a["lineage"]["chain_hash"] != b["lineage"]["chain_hash"]
    assert a["items"]["failed"] == a["items"]["total"], "nothing listens on port 9: every item fails, the run ends"
    assert a["status"] == "failed" and "metrics" in a, "nothing measured: failed, not a gate verdict"


class FaultyApp:
    """A target on 127.0.0.1 that answers by station number: 0 times out, 1 answers HTTP 500, 2 malformed
    JSON, 3 no contexts, 4 no answer field, 5 a context matching no chunk, the others a good reply."""

    def __init__(self, texts: dict[str, str]):
        self.texts = texts  # station number -> its chunk text
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                station = body["q"].split("station ")[1].split(" ")[0]
                text = server.texts[station]
                reply = {"answer": f"Station {station} has docks.", "sources": [{"content": text}]}
                status, data = 200, None
                if station == "0":
                    time.sleep(4.0)
                elif station == "1":
                    status = 500
                elif station == "2":
                    data = b"<html>not json"
                elif station == "3":
                    reply["sources"] = []
                elif station == "4":
                    del reply["answer"]
                elif station == "5":
                    reply["sources"] = [{"content": "A passage the index never held."}, {"content": text}]
                data = data or json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ask"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_faulty_http_target_fails_items_and_the_run_goes_on(corpus_lake, monkeypatch):
    table = Lake(str(corpus_lake)).connect_vectors().open_table("chunks__hash_fake")
    texts = {r["doc_id"][1:-3]: r["text"] for r in table.search().select(["doc_id", "text"]).limit(None).to_arrow().to_pylist()}
    with FaultyApp(texts) as app:
        monkeypatch.setenv("RAGLOOP_EVAL__TARGET", json.dumps({
            "timeout_s": 2.0, "max_retries": 1, "backoff_s": 0.01, "concurrency": 8,
            "http": {"url": app.url, "request": {"q": "{question}"},
                     "response": {"answer": "answer", "contexts": "sources", "text": "content"}}}))
        summary = eval_flow.evaluate_chain(lake=str(corpus_lake), k=3)
    assert summary["items"] == {**summary["items"], "total": 8, "failed": 5}
    assert summary["status"] == "partial"
    assert summary["contexts"] == {"total": 4, "id": 0, "exact": 3, "normalized": 0, "unmatched": 1}
    errors = {i["question"].split("station ")[1][0]: i["error"]
              for i in Lake(str(corpus_lake)).read_eval_items(summary["run_id"]).to_pylist() if i["status"] == "failed"}
    assert errors["0"] == f"target: {app.url} failed 2 times; last: timed out after 2s"
    assert errors["1"] == f"target: {app.url} failed 2 times; last: HTTP 500"
    assert errors["2"].startswith(f"target: {app.url} answered with a body that is not JSON")
    assert errors["3"] == "target: the reply has no contexts"
    assert errors["4"] == "target: the reply has no answer at 'answer' (no 'answer')"
    assert app.requests == 8 + 2, "the timeout and the 500 were retried once each, nothing else"
    assert summary["n"]["chunk_hit@3"] == 3, "failed items are scored on nothing; the unmatched one as a miss at rank 1"
    assert summary["items"]["errors"][f"target: {app.url} failed 2 times; last: HTTP 500"] == 1


def test_a_target_that_is_down_fails_before_any_work_naming_the_url(corpus_lake, monkeypatch, capsys):
    """Found by a new user: an app nothing listens on was tried item by item (each with its retries) before
    the run failed; the pre-flight now opens one connection and stops in one line, no run started."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        monkeypatch.setenv("RAGLOOP_EVAL__TARGET", json.dumps({"http": {"url": f"http://127.0.0.1:{port}/ask"}}))
        runs = len(Lake(str(corpus_lake)).read_runs())
        assert main(["eval", "--lake", str(corpus_lake), "--k", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: eval.target.http.url: nothing accepts connections at 127.0.0.1:{port} ")
    assert len(Lake(str(corpus_lake)).read_runs()) == runs, "no run started"


def test_a_target_failing_every_item_fails_the_run_saying_why_not_the_gate(corpus_lake, monkeypatch, capsys):
    """Found by a new user: every item failing (an app that is up but broken) reported gate_failed (exit 3),
    which a CI job reads as a quality regression, and the reason was only in items.parquet."""
    with FaultyApp({}) as app:
        app.httpd.RequestHandlerClass.do_POST = lambda handler: handler.send_error(503)
        monkeypatch.setenv("RAGLOOP_EVAL__TARGET", json.dumps({"timeout_s": 2.0, "max_retries": 0,
                                                               "http": {"url": app.url}}))
        assert main(["eval", "--lake", str(corpus_lake), "--k", "3"]) == 1
    human = capsys.readouterr().out
    assert ": failed" in human.splitlines()[0] and "8 failed" in human
    assert f"failed: 8 x target: {app.url} failed 1 times; last: HTTP 503" in human


@pytest.mark.parametrize("target, message", [
    ({"python": "no_such_package.app:answer"}, "eval.target.python: cannot import 'no_such_package.app:answer': "
                                               "ModuleNotFoundError"),
    ({"python": "examples.own_app.app:nope"}, "eval.target.python: cannot import 'examples.own_app.app:nope': "
                                              "AttributeError"),
    ({"http": {"url": "http://127.0.0.1:9/ask", "headers_env": {"X-Key": "UNSET_APP_KEY"}}},
     "eval.target.http.headers_env: env var(s) UNSET_APP_KEY not set"),
    ({"python": "app"}, "eval.target.python: Value error, expected 'package.module:callable'"),
])
def test_a_bad_target_fails_before_any_work_naming_it(corpus_lake, monkeypatch, capsys, target, message):
    monkeypatch.setenv("RAGLOOP_EVAL__TARGET", json.dumps(target))
    monkeypatch.delenv("UNSET_APP_KEY", raising=False)
    runs = len(Lake(str(corpus_lake)).read_runs())
    assert main(["eval", "--lake", str(corpus_lake), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert message in out["error"] and "\n" not in out["error"]
    assert len(Lake(str(corpus_lake)).read_runs()) == runs, "no run started"
