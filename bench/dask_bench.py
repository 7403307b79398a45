"""Issue 22: the FastAPI docs' full index with runner.kind dask at 1 and 2 workers vs the local runner.

Each configuration runs in its own fresh process on a fresh lake (a copy of the corpus): a warm-up flow
first starts Prefect's ephemeral API, then `index_corpus` is timed (cluster start and stop included).
A sampler polls the process tree every 0.2 s for the peak RSS of each process (the flow process, the
Dask scheduler lives in it, nannies and workers) and its CPU seconds. The three tables must be equal
(chunk ids, texts, vector bytes): the script fails otherwise.

    .venv/bin/python bench/dask_bench.py [--files N] [--out bench/results/dask.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import OFFLINE_ENV, REPO, fresh_dir, machine_facts, write_json

FASTAPI = REPO.parent / "shared" / "data" / "corpora" / "fastapi-docs" / "docs"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
# 156 pages would be one window at the default 256 documents per window: nothing for a second worker.
# Every configuration gets the same 32-document windows (vectors do not depend on them: per-text ONNX).
DOCS_PER_WINDOW = "32"
CONFIGS = {"local": {"RAGLOOP_RUNNER__KIND": "local"},
           "dask-1": {"RAGLOOP_RUNNER__KIND": "dask", "RAGLOOP_RUNNER__WORKERS": "1"},
           "dask-2": {"RAGLOOP_RUNNER__KIND": "dask", "RAGLOOP_RUNNER__WORKERS": "2"}}

DRIVER = r"""
import json, sys, time
from prefect import flow
from ragloop.flows.common import ad_hoc_runs
from ragloop.flows.index import index_corpus

@flow
def warm_up() -> int:
    return 1

if __name__ == "__main__":
    with ad_hoc_runs():
        warm_up()
        start = time.perf_counter()
        summary = index_corpus(sources=[sys.argv[1]], lake=sys.argv[2])
        wall = time.perf_counter() - start
    print("RESULT " + json.dumps({"wall_s": wall, "chunks": summary["chunks"], "timings_s": summary["timings_s"],
                                  "status": summary["status"], "table": summary["table"]}))
"""


def scifact_times(src: Path, dst: Path, times: int) -> Path:
    """dst/corpus.jsonl: SciFact's documents `times` times over, copy i with ids `<id>~<i>` and its text prefixed
    with `[i] ` (copy 0 unchanged): distinct texts, so every copy is chunked and encoded (a plain duplicate's
    vectors would be reused by content and the encoder would do one copy's work)."""
    dst.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    with (dst / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for i in range(times):
            for rec in records:
                copy = rec if i == 0 else dict(rec, _id=f"{rec['_id']}~{i}", text=f"[{i}] {rec.get('text', '')}")
                out.write(json.dumps(copy) + "\n")
    return dst


def copy_corpus(dst: Path, files: int | None) -> Path:
    sources = sorted(p for p in FASTAPI.rglob("*") if p.is_file())[:files]
    for path in sources:
        target = dst / path.relative_to(FASTAPI)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    return dst


def sample_tree(pid: int, stop: threading.Event, peaks: dict) -> None:
    """Peak RSS (MB) and last CPU seconds per process of the tree under pid, keyed by pid."""
    import psutil

    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()  # own user + system: children_* would add reaped workers
                    rss, cpu = proc.memory_info().rss / 2**20, times.user + times.system
                    role = role_of(proc.cmdline(), proc.pid == pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            entry = peaks.setdefault(proc.pid, {"role": role, "peak_rss_mb": 0.0, "cpu_s": 0.0})
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], rss)
            entry["cpu_s"] = max(entry["cpu_s"], cpu)
        time.sleep(0.2)


def role_of(cmdline: list[str], is_root: bool) -> str:
    text = " ".join(cmdline)
    if is_root:
        return "flow process (+ scheduler)"
    if "resource_tracker" in text:
        return "multiprocessing resource tracker"
    if "spawn_main" in text:
        return "dask worker"
    if "prefect" in text or "uvicorn" in text:
        return "prefect API server"
    return text[:60]


def table_digest(lake: Path) -> str:
    """sha256 over (chunk_id, text, vector bytes) of every row, sorted by chunk_id."""
    sys.path.insert(0, str(REPO.parent))
    import lancedb

    db = lancedb.connect(str(lake / "lancedb"))
    (name,) = [n for n in db.table_names() if n.startswith("chunks__")]
    t = db.open_table(name).to_arrow().select(["chunk_id", "text", "vector"])
    vectors = t["vector"].combine_chunks().values.to_numpy(zero_copy_only=False).reshape(t.num_rows, -1)
    digest = hashlib.sha256()
    for i in sorted(range(t.num_rows), key=lambda i: t["chunk_id"][i].as_py()):
        digest.update(t["chunk_id"][i].as_py().encode() + t["text"][i].as_py().encode() + vectors[i].tobytes())
    return digest.hexdigest()


def run_one(name: str, env_extra: dict, src: Path, work: Path, window: str = DOCS_PER_WINDOW) -> dict:
    lake = fresh_dir(work / f"lake-{name}")
    env = {**os.environ, **OFFLINE_ENV, "RAGLOOP_INDEX__DOCS_PER_BATCH": window, **env_extra}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(src), str(lake)], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peaks: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_tree, args=(proc.pid, stop, peaks), daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{out[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["processes"] = sorted(peaks.values(), key=lambda p: -p["peak_rss_mb"])
    result["table_sha256"] = table_digest(lake)
    with open("/proc/loadavg") as fh:
        result["loadavg_after"] = fh.read().split()[:3]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=None, help="first N files of the corpus (default: all)")
    parser.add_argument("--scifact-times", type=int, default=None,
                        help="index SciFact's corpus this many times over (distinct texts) instead of the FastAPI docs")
    parser.add_argument("--only", default=",".join(CONFIGS), help="configurations, comma-separated")
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "dask-work"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "dask.json"))
    args = parser.parse_args()
    work = fresh_dir(args.work)
    src = (scifact_times(SCIFACT, work / "src", args.scifact_times) if args.scifact_times
           else copy_corpus(work / "src", args.files))
    window = "256" if args.scifact_times else DOCS_PER_WINDOW  # SciFact: the default windows, 21 per copy
    results = {}
    for name in args.only.split(","):
        results[name] = run_one(name, CONFIGS[name], src, work, window)
        r = results[name]
        print(f"{name}: {r['wall_s']:.1f} s, {r['chunks']['total']} chunks, "
              f"peak RSS {[round(p['peak_rss_mb']) for p in r['processes'][:4]]} MB", flush=True)
    base = results.get("local")
    if base:
        for name, r in results.items():
            r["wall_vs_local"] = round(r["wall_s"] / base["wall_s"], 3)
    digests = {r["table_sha256"] for r in results.values()}
    write_json(args.out, {"machine": machine_facts(), "files": args.files, "scifact_times": args.scifact_times,
                          "docs_per_window": window, "results": results,
                          "tables_equal": len(digests) == 1})
    print(json.dumps({n: r.get("wall_vs_local") for n, r in results.items()}), "tables equal:", len(digests) == 1)
    if len(digests) != 1:
        raise SystemExit("the runners wrote different tables")


if __name__ == "__main__":
    main()
