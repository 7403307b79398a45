"""A full index run of one corpus in a warm process, made to be sampled by py-spy (product venv).

`py-spy record --format raw -- python bench/profile_index.py ...` samples the whole process;
summarize() keeps only the samples under timed_full_run() and folds them into the pipeline's parts.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from pathlib import Path

from common import fresh_dir, write_json

# Inclusive buckets, first match wins (checked against every frame of a sample's stack).
BUCKETS = [
    ("great-expectations (ingest suite)", ("great_expectations",)),
    ("encode (model forward)", ("SentenceTransformer.encode", "encode (sentence_transformers")),
    ("chunk", ("chunk_documents", "Chunker.chunk_document")),
    ("ingest flow", ("ingest_corpus",)),
    ("vector lookup (vectors_for)", ("vectors_for",)),
    ("upsert (merge_insert)", ("replace_documents",)),
    ("plan", ("plan_index",)),
    ("refresh indexes / optimize", ("refresh_indexes",)),
    ("validate", ("validate_chunks", "profile (tasks/indexing")),
    ("model load", ("model (tasks/embedding",)),
]


def timed_full_run(index_corpus, src: Path, lake: Path) -> float:
    start = time.perf_counter()
    index_corpus(sources=[str(src)], lake=str(lake))
    return time.perf_counter() - start


def timed_noop_runs(index_corpus, src: Path, lake: Path, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        index_corpus(sources=[str(src)], lake=str(lake))
    return (time.perf_counter() - start) / n


def summarize(raw: Path, marker: str = "timed_full_run") -> dict:
    counts: Counter = Counter()
    top: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if marker not in stack:
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        for name, keys in BUCKETS:
            if any(k in f for f in frames for k in keys):
                counts[name] += n
                break
        else:
            counts["other (Prefect, orchestration)"] += n
        top[frames[-1].split(" (")[0] + " (" + frames[-1].split(" (")[-1]] += n
    return {"samples": total,
            "share": {k: round(v / total, 4) for k, v in counts.most_common()} if total else {},
            "top_self_frames": [(k, round(v / total, 4)) for k, v in top.most_common(15)] if total else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--summarize", help="a py-spy raw file to fold (no index run)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.summarize:
        write_json(args.out, {"full_run": summarize(Path(args.summarize)),
                              "noop_run": summarize(Path(args.summarize), "timed_noop_runs")})
        return
    from ragloop.flows.index import index_corpus

    work = fresh_dir(args.work)
    warm = work / "warm_src"
    warm.mkdir()
    (warm / "warm.md").write_text("# Warm-up\n\nA tiny document.\n")
    index_corpus(sources=[str(warm)], lake=str(work / "warm_lake"))
    live = work / "live"
    shutil.copytree(args.src, live)
    wall = timed_full_run(index_corpus, live, work / "lake")
    noop = timed_noop_runs(index_corpus, live, work / "lake", 5)
    write_json(args.out, {"wall_s": wall, "noop_wall_s": noop})


if __name__ == "__main__":
    main()
