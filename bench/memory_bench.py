"""Measure 4 (product venv, one fresh process per corpus): peak RSS of a full index run.

Run once on SciFact (1x) and once on SciFact with every document duplicated under new ids (10x);
the ratio of the two peaks shows whether indexing streams (flat memory) or holds the corpus.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from pathlib import Path

from common import fresh_dir, write_json


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", required=True)
    ap.add_argument("--lake", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from ragloop.flows.index import index_corpus

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.perf_counter()

    def sample() -> None:  # an RSS curve beside the peak: flat, or growing with the corpus?
        while not stop.is_set():
            samples.append((round(time.perf_counter() - start, 1), round(rss_mb(), 1)))
            stop.wait(2.0)

    baseline = rss_mb()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result = index_corpus(sources=[args.src], lake=str(fresh_dir(args.lake)))
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    write_json(args.out, {
        "src": args.src, "status": result.get("status"), "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "rss_after_imports_mb": baseline,
        "documents": result.get("documents"), "chunks": result.get("chunks"), "timings_s": result.get("timings_s"),
        "rss_curve_mb": samples[:: max(1, len(samples) // 60)],
    })


if __name__ == "__main__":
    main()
