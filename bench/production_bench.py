"""Production logs end to end with the REAL default embedder: index datasets/sample, import a small golden set
about docking stations, generate N log lines whose topic shifts halfway (stations -> card refunds), then
`ragloop logs import` and `ragloop monitor`; prints the import rate, the coverage alert, the topics with
their example questions and the thumbs-down answers in the review app's production queue.

    .venv/bin/python bench/production_bench.py [--lines 1000] [--out bench/results/production.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' log generator; bench/ is never imported by the package

from tests import production_fixtures as pf  # noqa: E402

RAGLOOP = str(REPO / ".venv" / "bin" / "ragloop")


def ragloop(*args: str) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([RAGLOOP, *args, "--json"], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"ragloop {' '.join(args)} exited {proc.returncode}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ragloop-production-"))
    lake = str(work / "lake")
    index, index_s = ragloop("index", "--source", str(REPO / "datasets" / "sample"), "--lake", lake)
    doc = sorted(d for d in ["index.md"])[0]
    golden = work / "golden.jsonl"
    golden.write_text("".join(json.dumps({"question": q, "reference_answer": "See the stations table.",
                                          "reference_doc_ids": [doc], "qa_type": "single_hop"}) + "\n" for q in pf.GOLDEN_A))
    imported, _ = ragloop("golden", "import", str(golden), "--line", "stations", "--lake", lake)
    logs = pf.write_jsonl(work / "logs" / "app.jsonl", pf.records(args.lines, days=10))
    first, first_s = ragloop("logs", "import", str(logs), "--lake", lake)
    again, again_s = ragloop("logs", "import", str(logs), "--lake", lake)
    monitor, monitor_s = ragloop("monitor", "--lake", lake)

    from starlette.testclient import TestClient

    from ragloop.app.server import create_app
    from ragloop.tasks import production
    from ragloop.tasks.settings import LogsConfig
    from ragloop.tasks.storage import Lake

    candidates = production.review_candidates(Lake(lake), LogsConfig())
    down = [c for c in candidates if "negative_feedback" in c["reasons"]]
    page = TestClient(create_app(lake)).get("/production")
    fig = monitor["checks"].get("production", {})
    result = {
        "lines": args.lines, "lake": lake, "index_s": round(index_s, 1), "golden_items": imported.get("items"),
        "import": {"records": first["records"], "task_seconds": first["seconds"], "cli_seconds": round(first_s, 2),
                   "lines_per_s_task": round(args.lines / max(first["seconds"], 1e-9)),
                   "lines_per_s_cli": round(args.lines / first_s, 1), "redactions": first["redactions"]},
        "reimport": {"records": again["records"], "cli_seconds": round(again_s, 2)},
        "monitor_s": round(monitor_s, 1),
        "alerts": [{"kind": a["kind"], "severity": a["severity"], "message": a["message"]} for a in monitor["alerts"]],
        "coverage_alert": any(a["kind"] == "query_coverage" for a in monitor["alerts"]),
        "by_day": {d: {k: v[k] for k in ("logs", "uncovered", "negative_rate", "refusal", "grounded", "top1_median",
                                          "latency_p95_ms")} for d, v in (fig.get("by_day") or {}).items()},
        "queue": {"candidates": len(candidates), "thumbs_down": len(down),
                  "page_lists_left": page.text.count("left</span>"), "page_status": page.status_code,
                  "first_item_in_page": bool(candidates) and candidates[0]["log_id"] in page.text},
        "report": monitor.get("report"),
    }
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
