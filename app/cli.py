"""`ragloop review`: the review app, and the same loop without a browser (sheet export/import, apply).
No prefect: the commands read and write the lake through tasks.review."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable


def add_review_parser(sub, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The `review` command and its actions (export, import, apply) on the CLI's subparsers."""
    p = sub.add_parser("review", help="review golden items and grade answers in a local web app; or export/import a sheet")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs RAGLOOP_REVIEW_TOKEN)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--reviewer", help="your name on every decision (else the name entered in the app)")
    p.add_argument("--line", help="the golden-set line to review (default: synthetic, else the chosen line)")
    common(p)
    rsub = p.add_subparsers(dest="review_command", required=False, metavar="ACTION")
    e = rsub.add_parser("export", help="write a sheet to fill in a spreadsheet: golden items or answers to grade")
    e.add_argument("--queue", choices=["golden", "answers"], required=True)
    e.add_argument("--run", metavar="RUN_ID", help="answers: the eval run (default: the latest with answers)")
    e.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    e.add_argument("--out", required=True, metavar="FILE")
    e.add_argument("--line", default=argparse.SUPPRESS, help="golden: the line (default: synthetic, else the chosen line)")
    common(e)
    i = rsub.add_parser("import", help="apply a filled sheet: every row checked first, nothing applied on an error (exit 2)")
    i.add_argument("path", metavar="FILE")
    i.add_argument("--reviewer", default=argparse.SUPPRESS, help="the name recorded on the decisions (default: $USER)")
    common(i)
    a = rsub.add_parser("apply", help="write the line's recorded decisions as a new golden-set version")
    a.add_argument("--line", default=argparse.SUPPRESS, help="the line (default: synthetic, else the chosen line)")
    a.add_argument("--promote-to", metavar="LINE", help="also write its approved and edited items as this curated line, and choose it")
    common(a)


def run_review(args: argparse.Namespace) -> dict:
    """Dispatch `review [ACTION]`; ReviewError and PromotionError become ConfigError (exit 2)."""
    from ragloop.tasks import promotion, review
    from ragloop.tasks.settings import ConfigError, load_settings
    from ragloop.tasks.storage import Lake

    settings = load_settings(args.config, {"lake": args.lake} if args.lake else {})
    lake = Lake(settings.lake)
    try:
        action = getattr(args, "review_command", None)
        if action is None:
            return _serve(lake, args, settings.logs)
        if action == "export":
            return _export(lake, args)
        if action == "import":
            reviewer = getattr(args, "reviewer", None) or os.environ.get("USER") or "sheet"
            return review.import_sheet(lake, Path(args.path), reviewer, review.LakeIndex(lake))
        line = _line(lake, args)
        result = review.apply_reviews(lake, line)
        if args.promote_to and result["status"] == "ok":  # a version the golden suite failed is not promoted
            result["promotion"] = review.promote_curated(lake, line, args.promote_to)
        return result
    except (review.ReviewError, promotion.PromotionError) as exc:
        raise ConfigError(str(exc)) from exc


def _line(lake, args) -> str:
    from ragloop.tasks import review

    line = getattr(args, "line", None) or review.default_line(lake)
    if not line:
        raise review.ReviewError(f"{lake.uri} has no golden-set line yet: run `ragloop synth` or `ragloop golden import` first")
    return line


def _serve(lake, args, logs=None) -> dict:
    from ragloop.app import server

    token = os.environ.get("RAGLOOP_REVIEW_TOKEN") or None
    server.check_bind(args.host, token)
    url = f"http://{args.host}:{args.port}/"
    sys.stderr.write(f"ragloop review: {url} on lake {lake.uri}" + (" (open it with ?token=<RAGLOOP_REVIEW_TOKEN>)" if token else "")
                     + "; Ctrl+C stops\n")
    sys.stderr.flush()
    server.serve(lake.uri, args.host, args.port, args.reviewer, token, getattr(args, "line", None), logs)
    return {"status": "ok", "url": url, "lake": lake.uri}


def _export(lake, args) -> dict:
    from ragloop.tasks import review

    out = Path(args.out)
    if args.queue == "golden":
        line = _line(lake, args)
        index = review.LakeIndex(lake)
        ref, rows, events = review.effective_rows(lake, line)
        sheet = review.golden_sheet(rows, line, ref.golden_set_id, index, review.stale_ids(rows, index.chunk_ids()), events)
        count = review.write_sheet(sheet, review.GOLDEN_SHEET, out, args.format)
        return {"status": "ok", "queue": "golden", "line": line, "golden_set_id": ref.golden_set_id, "rows": count,
                "path": str(out.resolve())}
    runs = review.eval_runs(lake)
    run_id = args.run
    if not run_id:
        with_answers = [r for r in runs if _has_answers(lake, r["run_id"])]
        if not with_answers:
            raise review.ReviewError(f"{lake.uri} has no eval run with answers: run `ragloop eval` first")
        run_id = with_answers[0]["run_id"]
    run, items = review.answer_items(lake, run_id)
    baseline = None
    if run["baseline_run_id"]:
        try:
            baseline = {b["qa_id"]: b for b in review.answer_items(lake, run["baseline_run_id"])[1]}
        except review.ReviewError:
            baseline = None
    count = review.write_sheet(review.answer_sheet(run, items, baseline, review.read_events(lake)), review.ANSWER_SHEET,
                               out, args.format)
    return {"status": "ok", "queue": "answers", "run_id": run_id, "baseline_run_id": run["baseline_run_id"] if baseline else None,
            "rows": count, "path": str(out.resolve())}


def _has_answers(lake, run_id: str) -> bool:
    table = lake.read_eval_items(run_id)
    return table is not None and any(a is not None for a in table.column("answer").to_pylist())


def human_review(summary: dict) -> list[str]:
    if "url" in summary:
        return [f"review app stopped ({summary['url']})"]
    if "rows" in summary:
        what = f"line {summary['line']} version {summary['golden_set_id']}" if summary["queue"] == "golden" else f"run {summary['run_id']}"
        return [f"{summary['rows']} rows of the {summary['queue']} queue ({what}) written to {summary['path']}",
                "fill the action / grade columns and run `ragloop review import FILE`"]
    lines = []
    if "events" in summary:
        lines.append(f"{summary['events']} decisions imported from {summary['path']}: "
                     + (", ".join(f"{k} {v}" for k, v in summary["by_action"].items()) or "none"))
        applied = summary.get("applied") or []
    else:
        applied = [summary]
    for a in applied:
        moved = "new version" if a["written"] else "unchanged"
        lines.append(f"line {a['line']}: {a['golden_set_id']} ({moved}; was {a['previous_golden_set_id']})")
        lines.append("  by review: " + ", ".join(f"{k} {v}" for k, v in a["reviews"].items()))
    promoted = summary.get("promotion")
    if promoted:
        lines.append(f"curated line {promoted['line']}: {promoted['golden_set_id']} with {promoted['items']} reviewed items; "
                     f"chosen (was {promoted['previous_chosen']})")
    return lines
