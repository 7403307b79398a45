"""Eval throughput against an HTTP eval target: the example app (examples/own_app) served by its own
process on 127.0.0.1 over a lake of datasets/sample indexed with the configured (real) embedder, a golden
set of one question per chunk, evaluated at target concurrency 1 and 8 (README: Evaluating your own app).

    .venv/bin/python bench/target_bench.py [--items 200] [--concurrency 1 8] [--repeats 2]

Prints one JSON object: per concurrency, items/s over the target step (the calls, from the run's
timings_s) and over the whole eval flow run (Prefect start, scoring and writes included); best of repeats.
Never run by `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import REPO, offline_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the example app exited with {proc.returncode}")
        try:
            request = urllib.request.Request(url, data=json.dumps({"question": "warm up"}).encode(),
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=30).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the example app did not answer in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(offline_env())
    for name in [n for n in os.environ if n.startswith("RAGLOOP_")]:
        del os.environ[name]

    from ragloop.flows import evaluate as eval_flow
    from ragloop.flows import golden as golden_flow
    from ragloop.flows import index as index_flow
    from ragloop.tasks.storage import Lake

    work = Path(tempfile.mkdtemp(prefix="ragloop-target-bench-"))
    lake = str(work / "lake")
    os.chdir(REPO)
    started = time.perf_counter()
    indexed = index_flow.index_corpus(sources=[str(REPO / "datasets" / "sample")], lake=lake)
    table = Lake(lake).connect_vectors().open_table(indexed["table"]["name"])
    rows = sorted(table.search().select(["chunk_id", "text"]).limit(None).to_arrow().to_pylist(), key=lambda r: r["chunk_id"])
    golden = work / "golden.jsonl"
    with golden.open("w") as f:
        for i in range(args.items):
            row = rows[i % len(rows)]
            prose = " ".join(line for line in row["text"].splitlines() if line.strip() and not line.startswith("#"))
            question = f"{prose[:160]} ({i})"
            f.write(json.dumps({"question": question, "reference_chunk_ids": [row["chunk_id"]], "qa_type": "single_hop"}) + "\n")
    golden_flow.import_golden_set(path=str(golden), lake=lake)
    setup_s = time.perf_counter() - started

    port = free_port()
    url = f"http://127.0.0.1:{port}/ask"
    app = subprocess.Popen([sys.executable, "-m", "examples.own_app.app", "--port", str(port), "--lake", lake,
                            "--k", str(args.k)], cwd=REPO, env=offline_env(), stderr=subprocess.DEVNULL)
    results = {}
    try:
        wait_until_up(url, app)
        os.environ["RAGLOOP_GATE__MAX_FAILED_FRACTION"] = "1"
        for concurrency in args.concurrency:
            os.environ["RAGLOOP_EVAL__TARGET"] = json.dumps({"concurrency": concurrency, "http": {
                "url": url, "response": {"contexts": "sources", "text": "content", "doc_id": "source", "score": "score",
                                         "trace": "steps"}}})
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                summary = eval_flow.evaluate_chain(lake=lake, k=args.k)
                wall = time.perf_counter() - start
                runs.append({"target_s": summary["timings_s"]["target"], "flow_s": wall,
                             "items": summary["items"]["total"], "failed": summary["items"]["failed"],
                             "unmatched": summary["contexts"]["unmatched"], "chunk_hit@1": summary["metrics"].get("chunk_hit@1")})
            best = min(runs, key=lambda r: r["target_s"])
            results[str(concurrency)] = {**best, "items_per_s_target": round(best["items"] / best["target_s"], 2),
                                         "items_per_s_flow": round(best["items"] / best["flow_s"], 2), "runs": runs}
    finally:
        app.terminate()
        app.wait(timeout=30)
    print(json.dumps({"items": args.items, "k": args.k, "table": indexed["table"], "setup_s": round(setup_s, 1),
                      "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "by_concurrency": results}, indent=2))


if __name__ == "__main__":
    main()
