"""Measures 1 and 3 (product venv, one warm process): full index vs pure encode of the same texts,
incremental (1 % changed) and no-op re-index vs full, and the CLI's cold start beside them.

The process stays up between runs, as a served deployment's worker does: Prefect (ephemeral API)
and the imports are warm after a warm-up run; each flow run still builds its own embedder, as a
deployment run does. Runs are timed as `ragloop index` runs them, without Prefect heartbeats
(flows.common.ad_hoc_runs); the no-op is also timed with them on, as a served deployment's run has them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import fresh_dir, median, mutate, stop_process, write_json


def table_texts(lake: str) -> tuple[list[str], list[list[str]]]:
    """The unique chunk texts of the serving table (what was encoded) and their per-window grouping.

    Windows follow the table's row order in groups of index.docs_per_batch documents, which is how
    the flow met them; a text is counted in the first window that has it.
    """
    from ragloop.tasks.settings import load_settings
    from ragloop.tasks.storage import Lake

    settings = load_settings(None, {"lake": lake})
    store_lake = Lake(settings.lake)
    serving = store_lake.read_ref("serving")
    table = store_lake.connect_vectors().open_table(serving["table"])
    rows = table.search().select(["doc_id", "text", "text_sha256"]).limit(None).to_arrow().to_pylist()
    seen, texts, windows, docs_in_window = set(), [], [[]], set()
    for r in rows:
        if r["doc_id"] not in docs_in_window and len(docs_in_window) >= settings.index.docs_per_batch:
            windows.append([])
            docs_in_window = set()
        docs_in_window.add(r["doc_id"])
        if r["text_sha256"] in seen:
            continue
        seen.add(r["text_sha256"])
        texts.append(r["text"])
        windows[-1].append(r["text"])
    return texts, [w for w in windows if w]


def cpu_s() -> float:
    """CPU seconds of this process (all threads): steadier than wall time on a shared machine."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_index(index_corpus, src: Path, lake: Path, heartbeats: bool = False) -> dict:
    """One index run, timed. Without heartbeats, as `ragloop index` and other ad hoc runs do
    (flows.common.ad_hoc_runs); with them, as a served deployment's run does."""
    from ragloop.flows.common import ad_hoc_runs

    start, cpu0 = time.perf_counter(), cpu_s()
    with contextlib.nullcontext() if heartbeats else ad_hoc_runs():
        result = index_corpus(sources=[str(src)], lake=str(lake))
    wall, cpu = time.perf_counter() - start, cpu_s() - cpu0
    if result.get("status") != "ok":
        raise RuntimeError(f"index run ended {result.get('status')}: {result.get('error')}")
    return {"wall_s": wall, "cpu_s": cpu, "timings_s": result.get("timings_s", {}), "chunks": result.get("chunks", {}),
            "documents": result.get("documents", {}), "documents_indexed": result.get("documents_indexed"),
            "table_version": result.get("table", {}).get("version")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", required=True, help="the pristine dataset folder (copied before every full run)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--repeats", type=int, default=1, help="full index runs (median)")
    ap.add_argument("--encode-repeats", type=int, default=2)
    ap.add_argument("--inc-repeats", type=int, default=2)
    ap.add_argument("--noop-repeats", type=int, default=3)
    ap.add_argument("--cli-repeats", type=int, default=2)
    ap.add_argument("--windowed", type=int, default=1, help="1: also time encode per docs_per_batch window")
    ap.add_argument("--torch-reference", type=int, default=1,
                    help="1: when the configured backend is not torch, also index + encode with backend torch")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from ragloop.flows.index import index_corpus
    from ragloop.tasks.embedding import load_embedder
    from ragloop.tasks.settings import load_settings

    src, work = Path(args.src), fresh_dir(args.work)
    out: dict = {"src": str(src), "docs_per_batch": load_settings().index.docs_per_batch,
                 "batch_size": load_settings().embedding.batch_size,
                 "backend": load_embedder(load_settings().embedding).backend}

    # Warm-up: imports, the Prefect API, the model files in the page cache.
    warm_src = work / "warm_src"
    warm_src.mkdir()
    (warm_src / "warm.md").write_text("# Warm-up\n\nA tiny document so the first timed run is warm.\n")
    t = time.perf_counter()
    run_index(index_corpus, warm_src, work / "warm_lake")
    out["warmup_s"] = time.perf_counter() - t

    embedder = load_embedder(load_settings().embedding)
    t = time.perf_counter()
    embedder.encode(["model load"])
    out["model_load_s"] = time.perf_counter() - t

    live = work / "live"
    fulls = []
    for r in range(args.repeats):
        if live.exists():
            shutil.rmtree(live)
        shutil.copytree(src, live)
        lake = work / f"lake{r}"
        if lake.exists():
            shutil.rmtree(lake)
        fulls.append(run_index(index_corpus, live, lake))
    out["full"] = fulls
    out["full_wall_s"] = median(f["wall_s"] for f in fulls)
    out["lake"] = str(lake)

    texts, windows = table_texts(str(lake))
    out["encoded_texts"] = len(texts)
    out["chars_encoded"] = sum(len(t) for t in texts)
    enc, enc_cpu, enc_win = [], [], []
    embedder.encode(texts[:64])  # first-batch allocations outside the timing
    for _ in range(args.encode_repeats):
        t, c = time.perf_counter(), cpu_s()
        embedder.encode(texts)
        enc.append(time.perf_counter() - t)
        enc_cpu.append(cpu_s() - c)
        if args.windowed:
            t = time.perf_counter()
            for w in windows:
                embedder.encode(w)
            enc_win.append(time.perf_counter() - t)
    out["encode_s"] = enc
    out["encode_wall_s"] = median(enc)
    out["encode_cpu_s"] = median(enc_cpu)
    out["full_cpu_s"] = median(f["cpu_s"] for f in fulls)
    out["encode_windowed_s"] = enc_win
    out["encode_windowed_wall_s"] = median(enc_win)
    out["windows"] = len(windows)

    if out["backend"] != "torch" and args.torch_reference:
        out["torch"] = torch_reference(index_corpus, load_embedder, load_settings, src, work)
        write_json(args.out, out)

    incs = []
    for r in range(args.inc_repeats):
        changed = mutate(live, seed=100 + r)
        res = run_index(index_corpus, live, lake)
        res["changed_docs"] = len(changed)
        incs.append(res)
    out["incremental"] = incs
    out["incremental_wall_s"] = median(i["wall_s"] for i in incs)

    noops = [run_index(index_corpus, live, lake) for _ in range(args.noop_repeats)]
    out["noop"] = noops
    out["noop_wall_s"] = median(n["wall_s"] for n in noops)
    # The same no-op with Prefect's flow-run heartbeats on (a served deployment's runs keep them): the
    # 3.8 engine joins a heartbeat thread that sleeps in whole seconds, so each run ends on a whole second.
    noops_hb = [run_index(index_corpus, live, lake, heartbeats=True) for _ in range(args.noop_repeats)]
    out["noop_with_heartbeats"] = noops_hb
    out["noop_with_heartbeats_wall_s"] = median(n["wall_s"] for n in noops_hb)

    # Cold start: the same no-op as a fresh `ragloop index` process (interpreter, imports, ephemeral
    # Prefect API start, model load), timed from outside.
    cli = []
    ragloop = str(Path(sys.executable).parent / "ragloop")
    for _ in range(args.cli_repeats):
        t = time.perf_counter()
        res = subprocess.run([ragloop, "index", "--source", str(live), "--lake", str(lake), "--json"],
                             cwd=os.getcwd(), capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - t
        inner = {}
        try:
            inner = json.loads(res.stdout)
        except ValueError:
            pass
        cli.append({"wall_s": wall, "rc": res.returncode, "timings_s": inner.get("timings_s"),
                    "stderr_tail": res.stderr[-400:] if res.returncode else ""})
    out["cli_noop"] = cli
    out["cli_noop_wall_s"] = median(c["wall_s"] for c in cli if c["rc"] == 0)
    t = time.perf_counter()
    subprocess.run([ragloop, "--help"], capture_output=True, env=os.environ.copy())
    out["cli_help_wall_s"] = time.perf_counter() - t
    write_json(args.out, out)
    if args.cli_repeats:
        try:
            out["cli_noop_with_server"] = cli_against_server(ragloop, live, lake, work, args.cli_repeats)
            out["cli_noop_with_server_wall_s"] = median(c["wall_s"] for c in out["cli_noop_with_server"] if c["rc"] == 0)
        except Exception as exc:  # a report, not a failure of the whole measure
            out["cli_noop_with_server_error"] = f"{type(exc).__name__}: {exc}"
        write_json(args.out, out)


def torch_reference(index_corpus, load_embedder, load_settings, src: Path, work: Path) -> dict:
    """The same full index and pure encode with embedding.backend=torch (PyTorch sentence-transformers)."""
    os.environ["RAGLOOP_EMBEDDING__BACKEND"] = "torch"
    try:
        embedder = load_embedder(load_settings().embedding)
        embedder.encode(["model load"])
        live, lake = work / "live_torch", work / "lake_torch"
        shutil.copytree(src, live)
        full = run_index(index_corpus, live, lake)
        texts, _ = table_texts(str(lake))
        embedder.encode(texts[:64])
        t, c = time.perf_counter(), cpu_s()
        embedder.encode(texts)
        encode_wall, encode_cpu = time.perf_counter() - t, cpu_s() - c
        shutil.rmtree(live, ignore_errors=True)
        return {"full": full, "full_wall_s": full["wall_s"], "full_cpu_s": full["cpu_s"], "encoded_texts": len(texts),
                "encode_wall_s": encode_wall, "encode_cpu_s": encode_cpu, "lake": str(lake)}
    finally:
        del os.environ["RAGLOOP_EMBEDDING__BACKEND"]


def cli_against_server(ragloop: str, live: Path, lake: Path, work: Path, repeats: int) -> list[dict]:
    """The same CLI no-op with PREFECT_API_URL at a running `prefect server` (as after `make server`):
    what is left of the cold start once no ephemeral API has to start and stop."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect_home")}
    prefect = str(Path(sys.executable).parent / "prefect")
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=(work / "prefect_server.log").open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("prefect server did not start")
                time.sleep(1)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            res = subprocess.run([ragloop, "index", "--source", str(live), "--lake", str(lake), "--json"],
                                 cwd=os.getcwd(), capture_output=True, text=True, env=env)
            runs.append({"wall_s": time.perf_counter() - t, "rc": res.returncode,
                         "stderr_tail": res.stderr[-400:] if res.returncode else ""})
        return runs
    finally:
        stop_process(server, 30)


if __name__ == "__main__":
    main()
