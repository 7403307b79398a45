"""A team's own RAG app, as small as one gets: vector search over the LanceDB table ragloop maintains,
with the same embedder, and an extractive answer (the best passage's first sentence; a real app calls
its LLM there). ragloop evaluates it as an eval target (README: Evaluating your own app):

    eval:
      target: {python: "examples.own_app.app:answer"}

or, served over HTTP (POST /ask {"question", "conversation_id"} -> {"answer", "sources", "steps"}):

    python -m examples.own_app.app --port 8000 [--lake datasets/lake] [--k 5]

The app reads the lake, embedder and k from ragloop's settings (ragloop.yaml, RAGLOOP_* env vars);
it searches the serving table version, returns contexts without chunk ids (ragloop matches them by
text) and its own trace steps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import threading
import time
from functools import lru_cache
from typing import Iterator

from pydantic import BaseModel

from ragloop.tasks import providers
from ragloop.tasks.promotion import Refs
from ragloop.tasks.settings import load_settings
from ragloop.tasks.storage import Lake, chunks_table_name

class Ask(BaseModel):
    """The body of POST /ask."""

    question: str
    conversation_id: str | None = None


TIE_MARGIN = 8  # extra candidates, so chunks tied on score at the cut-off are chosen by chunk_id


@lru_cache(maxsize=2)
def _embedder(factories: providers.Providers, config):
    return factories.build_embedder(config)


@lru_cache(maxsize=8)
def _table(lake_uri: str, name: str, version: int | None):
    table = Lake(lake_uri).connect_vectors().open_table(name)
    if version is not None:
        table.checkout(version)
    return table


def search(question: str, k: int | None = None) -> list[dict]:
    """The k chunks nearest the question by cosine, best first: [{text, doc_id, chunk_id, score}]."""
    settings = load_settings()
    embedder = _embedder(providers.current(), settings.embedding)
    serving = Refs(Lake(settings.lake)).serving()
    table = _table(settings.lake, serving.table if serving else chunks_table_name(embedder.slug),
                   serving.version if serving else None)
    k = k or settings.eval.k
    rows = (table.search(embedder.encode([question])[0], vector_column_name="vector").distance_type("cosine")
            .limit(k + TIE_MARGIN).select(["chunk_id", "doc_id", "text", "_distance"]).to_arrow().to_pylist())
    hits = [{"text": r["text"], "doc_id": r["doc_id"], "chunk_id": r["chunk_id"], "score": 1.0 - r["_distance"]}
            for r in rows]
    return sorted(hits, key=lambda h: (-h["score"], h["chunk_id"]))[:k]


def first_sentence(passage: str) -> str:
    """The passage's first sentence, its Markdown heading lines left out."""
    prose = " ".join(line for line in passage.splitlines() if line.strip() and not line.startswith("#"))
    return re.split(r"(?<=[.!?])\s", prose, maxsplit=1)[0] if prose else passage.strip()


def answer(question: str, conversation_id: str | None = None) -> dict:
    """The app's reply in ragloop's target contract: {answer, contexts: [{text, doc_id, score}], trace}."""
    start = time.perf_counter()
    hits = search(question)
    searched = time.perf_counter()
    reply = first_sentence(hits[0]["text"]) if hits else "I don't know."
    return {
        "answer": reply,
        "contexts": [{"text": h["text"], "doc_id": h["doc_id"], "score": h["score"]} for h in hits],
        "trace": [{"step": "search", "input": question, "output": [h["doc_id"] for h in hits],
                   "latency_ms": (searched - start) * 1000},
                  {"step": "extract", "input": conversation_id, "output": reply,
                   "latency_ms": (time.perf_counter() - searched) * 1000}],
    }


def create_app():
    """The HTTP service: POST /ask {question, conversation_id?} -> {answer, sources: [{content, source, score}],
    steps}; field names of its own, which the eval target's `response` paths map."""
    from fastapi import FastAPI

    api = FastAPI(title="own-app")

    @api.post("/ask")
    def ask(body: Ask) -> dict:  # sync: FastAPI runs it on its thread pool
        reply = answer(body.question, body.conversation_id)
        return {"answer": reply["answer"], "steps": reply["trace"],
                "sources": [{"content": c["text"], "source": c["doc_id"], "score": c["score"]} for c in reply["contexts"]]}

    return api


@contextlib.contextmanager
def serve_in_background(host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the app from this process on a free port, in a thread, for the duration of the block; yields
    its /ask URL (tests and benchmarks)."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning", access_log=False))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the example app did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}/ask"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m examples.own_app.app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--lake", help="the lake (default: ragloop's lake setting)")
    parser.add_argument("--k", type=int, help="contexts per answer (default: eval.k)")
    args = parser.parse_args(argv)
    if args.lake:
        os.environ["RAGLOOP_LAKE"] = args.lake
    if args.k:
        os.environ["RAGLOOP_EVAL__K"] = str(args.k)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
