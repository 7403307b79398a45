"""A real OpenAI-compatible embeddings server on 127.0.0.1 (stdlib http.server, a free port), for tests.

``POST /v1/embeddings`` answers deterministic vectors: the hash fake's (tasks.embedding.HashEmbedder) for
each input text, scaled by 3 so the client's normalization is exercised. ``GET /v1/models`` lists the one
model. It can be told to fail: ``fail(n, status)`` answers the next n embedding requests with that status;
``wrong_dim``, ``drop_one`` and ``nan`` corrupt every later reply; ``other_weights`` answers every
later request with reversed vectors, as another model under the same id would. It records each request's batch size
and the largest number of requests it held at once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ragloop.tasks.embedding import HashEmbedder


class EmbeddingServer:
    def __init__(self, dim: int = 24, model: str = "test-embedder", require_key: str | None = None,
                 delay_s: float = 0.0) -> None:
        self.dim, self.model, self.require_key, self.delay_s = dim, model, require_key, delay_s
        self.fake = HashEmbedder(dim=dim, max_tokens=10_000, name="server-hash")
        self.batches: list[int] = []  # texts per embeddings request that got vectors
        self.attempts = 0  # embeddings requests received, failed ones included
        self.failures: list[int] = []  # statuses still to answer, one per coming request
        self.wrong_dim: int | None = None
        self.drop_one = False
        self.nan = False
        self.other_weights = False
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> "EmbeddingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, n: int, status: int = 503) -> None:
        with self.lock:
            self.failures.extend([status] * n)

    def vectors(self, texts: list[str]) -> list[list[float]]:
        with self.lock:  # the fake records what it encoded: one thread at a time
            return [[3.0 * float(x) for x in row] for row in self.fake.encode(texts)]

    def _answer(self, body: dict) -> tuple[int, dict]:
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if body.get("model") != self.model:
            return 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
        if not isinstance(texts, list) or not texts:
            return 400, {"error": {"message": "input must be a non-empty list"}}
        vectors = self.vectors(texts)
        if self.other_weights:
            vectors = [v[::-1] for v in vectors]
        if self.wrong_dim is not None:
            vectors = [(v * self.wrong_dim)[: self.wrong_dim] for v in vectors]
        if self.nan:
            vectors[0][0] = float("nan")
        if self.drop_one:
            vectors = vectors[:-1]
        with self.lock:
            self.batches.append(len(texts))
        # Listed in reverse with their indexes, as a server answering from parallel workers may.
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)][::-1]
        return 200, {"object": "list", "model": self.model, "data": data,
                     "usage": {"prompt_tokens": sum(len(t.split()) for t in texts), "total_tokens": 0}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()  # NaN goes out as the bare token NaN, as some servers do
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/embeddings":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                with server.lock:
                    server.attempts += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    status = server.failures.pop(0) if server.failures else None
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    if server.require_key and self.headers.get("Authorization") != f"Bearer {server.require_key}":
                        self._send(401, {"error": {"message": "invalid api key"}})
                    elif status is not None:
                        self._send(status, {"error": {"message": "overloaded"}})
                    else:
                        self._send(*server._answer(body))
                finally:
                    with server.lock:
                        server.in_flight -= 1

        return Handler
