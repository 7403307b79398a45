"""A local OpenAI-compatible endpoint on 127.0.0.1 that injects faults per item, deterministically.

Each chat request is keyed by a marker found in its last user message (e.g. ``[item-07]``); the
item's fault plan lists what its 1st, 2nd, ... attempt gets, then it is answered normally. Plans
keyed by item (not by arrival order) keep the outcome independent of concurrency. Faults:
``{"status": 500}``, ``{"status": 429, "retry_after": "1"}``, ``{"sleep": s}`` (the client times out),
``{"dribble": s}`` (200 whose body trickles in for s seconds: a slow stream), ``{"malformed": text}``
(200 with a body that is not JSON), ``{"no_choices": True}`` and ``{"status": 400}``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MARKER = re.compile(r"\[(item-\d+)\]")


class FaultServer:
    def __init__(self, plans: dict[str, list[dict]], reply: Callable[[list[dict]], str] | None = None,
                 model: str = "fault-model", require_key: str | None = None) -> None:
        self.plans = plans
        self.reply = reply or (lambda messages: "A grounded answer taken from the passages.")
        self.model = model
        self.require_key = require_key
        self.attempts: Counter = Counter()  # item -> requests received
        self.faults_served: Counter = Counter()  # fault kind -> times injected
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _action(self, body: dict) -> tuple[str | None, dict]:
        content = str(body["messages"][-1].get("content") or "")
        found = MARKER.search(content)
        item = found.group(1) if found else None
        with self.lock:
            self.requests.append(body)
            if item is None:
                return None, {}
            self.attempts[item] += 1
            plan = self.plans.get(item, [])
            n = self.attempts[item]
            action = plan[n - 1] if n <= len(plan) else {}
            if action:
                self.faults_served[_kind(action)] += 1
            return item, action

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, data: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _authorized(self) -> bool:
                if server.require_key and self.headers.get("Authorization") != f"Bearer {server.require_key}":
                    self._send(401, json.dumps({"error": "bad key"}).encode())
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": server.model}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                _, action = server._action(body)
                if "status" in action:
                    headers = {"Retry-After": action["retry_after"]} if "retry_after" in action else {}
                    # Some servers echo the request headers in their errors: the key must not leak from there.
                    echo = {"error": {"message": f"fault {action['status']}",
                                      "request_headers": {"authorization": self.headers.get("Authorization")}}}
                    self._send(action["status"], json.dumps(echo).encode(), headers)
                    return
                if "sleep" in action:
                    time.sleep(action["sleep"])
                if "malformed" in action:
                    self._send(200, action["malformed"].encode())
                    return
                if action.get("no_choices"):
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
                    return
                reply = {"id": "x", "object": "chat.completion", "model": server.model,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": server.reply(body["messages"])}}],
                         "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}}
                data = json.dumps(reply).encode()
                if "dribble" in action:  # headers now, then the body a few bytes at a time
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.flush()
                        pieces = [data[i : i + 8] for i in range(0, len(data), 8)]
                        pause = action["dribble"] / len(pieces)
                        for piece in pieces:
                            self.wfile.write(piece)
                            self.wfile.flush()
                            time.sleep(pause)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                self._send(200, data)

        return Handler


def _kind(action: dict) -> str:
    if "status" in action:
        return f"http_{action['status']}"
    for key in ("sleep", "dribble", "malformed", "no_choices"):
        if key in action:
            return {"sleep": "timeout", "dribble": "slow_stream", "malformed": "malformed_json",
                    "no_choices": "no_choices"}[key]
    return "other"
