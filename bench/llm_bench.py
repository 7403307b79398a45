"""Measure 6 (product venv): synth (Q&A items/min) and eval (items/min) with the local model, and
against llama-cpp-python's OpenAI-compatible server on 127.0.0.1 at concurrency 1 and N.

The server's own maximum is measured in the same run: every request ragloop sent in a stage (the
same messages, max_tokens, seed, response_format) is replayed straight to the server with httpx at
concurrency 1, N and 1 again (the first replay directly follows ragloop's own requests); the fastest
replay is the server's maximum for that work, and ragloop's
efficiency = replay wall / ragloop's stage wall (1.0 = ragloop adds nothing to the server's time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common import REPO, fresh_dir, stop_process, write_json

RECORDED: list[dict] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: str, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "4096", "--seed", "0"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


def record_requests() -> None:
    """Wrap OpenAICompatLLM._post so every request body ragloop sends is kept for the replay."""
    from ragloop.tasks import llm

    original = llm.OpenAICompatLLM._post

    async def recording(self, batch, path, payload):
        data, latency_ms = await original(self, batch, path, payload)
        RECORDED.append({"path": path, "payload": payload, "latency_ms": latency_ms,
                         "completion_tokens": (data.get("usage") or {}).get("completion_tokens", 0)})
        return data, latency_ms

    llm.OpenAICompatLLM._post = recording

    local_complete = llm.LocalLLM.complete

    def counting(self, messages, **params):
        completion = local_complete(self, messages, **params)
        RECORDED.append({"path": "local", "payload": None, "latency_ms": completion.latency_ms,
                         "completion_tokens": completion.usage.completion_tokens})
        return completion

    llm.LocalLLM.complete = counting


async def replay(base_url: str, requests: list[dict], concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(req):
            nonlocal tokens
            async with sem:
                resp = await client.post(base_url + req["path"], json=req["payload"])
                resp.raise_for_status()
                tokens += (resp.json().get("usage") or {}).get("completion_tokens", 0)

        start = time.perf_counter()
        await asyncio.gather(*(one(r) for r in requests))
        wall = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(requests), "wall_s": wall,
            "requests_per_min": 60 * len(requests) / wall if wall else None,
            "completion_tokens_per_s": tokens / wall if wall else None}


def run_stages(lake_src: Path, work: Path, name: str, size: int, env: dict) -> dict:
    from ragloop.flows.evaluate import evaluate_chain
    from ragloop.flows.synth import synth_golden_set

    lake = work / name
    if lake.exists():
        shutil.rmtree(lake)
    shutil.copytree(lake_src, lake)
    for k in [k for k in os.environ if k.startswith("RAGLOOP_LLM__")]:
        del os.environ[k]
    os.environ.update(env)
    out: dict = {"variant": name, "env": env}

    RECORDED.clear()
    t = time.perf_counter()
    synth = synth_golden_set(lake=str(lake), size=size)
    wall = time.perf_counter() - t
    items = synth.get("items", {}).get("new", 0)
    out["synth"] = {"status": synth.get("status"), "wall_s": wall, "items_accepted": items,
                    "items_per_min": 60 * items / wall if wall else None, "rejects": synth.get("rejects"),
                    "timings_s": synth.get("timings_s"), "llm_requests": len(RECORDED) or None,
                    "llm_busy_s": sum(r["latency_ms"] for r in RECORDED) / 1000,
                    "error": synth.get("error")}
    synth_requests = list(RECORDED)

    RECORDED.clear()
    t = time.perf_counter()
    ev = evaluate_chain(lake=str(lake), golden="latest")
    wall = time.perf_counter() - t
    n = ev.get("items", {}).get("total", 0)
    out["eval"] = {"status": ev.get("status"), "wall_s": wall, "items": n, "failed": ev.get("items", {}).get("failed"),
                   "items_per_min": 60 * n / wall if wall else None, "llm_requests": len(RECORDED) or None,
                   "llm_busy_s": sum(r["latency_ms"] for r in RECORDED) / 1000,
                   "cached": ev.get("cached", False)}
    eval_requests = list(RECORDED)
    for k in env:
        os.environ.pop(k, None)
    return out, synth_requests, eval_requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lake", required=True, help="an indexed lake (copied per variant)")
    ap.add_argument("--size", type=int, default=6, help="synth.size: golden items to generate")
    ap.add_argument("--concurrency", type=int, default=4, help="N")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = fresh_dir(args.work)
    from ragloop.tasks.llm import packaged_model_path

    record_requests()
    gguf = str(packaged_model_path())
    out: dict = {"model": Path(gguf).name, "size": args.size, "concurrency_n": args.concurrency}
    local, _, _ = run_stages(Path(args.lake), work, "local", args.size, {"RAGLOOP_LLM__PROVIDER": "local"})
    out["local"] = local
    write_json(args.out, out)

    port = free_port()
    server = start_server(gguf, port, work / "server.log")
    base = f"http://127.0.0.1:{port}/v1"
    try:
        # One throw-away completion so neither ragloop's first stage nor a replay pays the model's
        # first-touch page-in.
        httpx.post(base + "/chat/completions", timeout=300, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}).raise_for_status()
        for c in (1, args.concurrency):
            env = {"RAGLOOP_LLM__PROVIDER": "openai", "RAGLOOP_LLM__BASE_URL": base,
                   "RAGLOOP_LLM__CONCURRENCY": str(c)}
            res, synth_req, eval_req = run_stages(Path(args.lake), work, f"openai_c{c}", args.size, env)
            for stage, reqs in (("synth", synth_req), ("eval", eval_req)):
                reqs = [r for r in reqs if r["payload"] is not None]
                if not reqs:
                    continue
                prefix = base.rsplit("/v1", 1)[0] + "/v1"
                # Order 1, N, 1: the first replay follows ragloop's own run of the same requests, so
                # concurrency 1 is replayed again last; each level keeps its faster replay, and
                # every replay is in the JSON with its completion tokens.
                order = [1, args.concurrency, 1] if args.concurrency != 1 else [1, 1]
                replays = [asyncio.run(replay(prefix, reqs, k)) for k in order]
                best = min(replays, key=lambda r: r["wall_s"])
                res[stage]["server_replay"] = replays
                res[stage]["server_max_wall_s"] = best["wall_s"]
                res[stage]["server_max_concurrency"] = best["concurrency"]
                res[stage]["efficiency"] = best["wall_s"] / res[stage]["wall_s"]
            out[f"openai_c{c}"] = res
            write_json(args.out, out)
    finally:
        stop_process(server, 20)
    write_json(args.out, out)


if __name__ == "__main__":
    main()
