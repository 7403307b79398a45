"""The `ragloop` command: each stage runs as a Prefect flow; --json prints one JSON object on stdout.

Exit codes: 0 ok, 1 failed, 2 bad usage or config, 3 gate failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GATE = 0, 1, 2, 3
STATUS_EXIT = {"ok": EXIT_OK, "partial": EXIT_OK, "failed": EXIT_FAILED, "gate_failed": EXIT_GATE}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragloop", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: $RAGLOOP_CONFIG or ./ragloop.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lake", help="lake root: a path or object-store URI (default: the 'lake' setting)")
        p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")

    p = sub.add_parser("ingest", help="load sources into a documents snapshot (quarantining bad files)")
    p.add_argument("--source", action="append", metavar="PATH", help="a directory or file; repeatable")
    common(p)

    p = sub.add_parser("index", help="ingest, then chunk + embed what changed and upsert into LanceDB")
    p.add_argument("--source", action="append", metavar="PATH", help="a directory or file; repeatable")
    p.add_argument("--chunking", choices=["markdown", "recursive", "none"], help="chunking strategy")
    common(p)

    p = sub.add_parser("synth", help="generate or refresh the synthetic golden set from the index")
    p.add_argument("--size", type=int, help="active items the golden set should hold (synth.size)")
    common(p)

    p = sub.add_parser("golden", help="golden sets: `golden export` to JSONL or ragas, `golden import` from JSONL")
    gsub = p.add_subparsers(dest="golden_command", required=True, metavar="ACTION")
    g = gsub.add_parser("export", help="write a golden set as JSONL (ragloop columns) or a ragas EvaluationDataset")
    g.add_argument("--golden", default="latest", help="golden_set_id, a unique prefix, or 'latest' (default)")
    g.add_argument("--format", choices=["jsonl", "ragas"], default="jsonl")
    g.add_argument("--out", required=True, metavar="PATH", help="the JSONL file to write")
    g.add_argument("--include-inactive", action="store_true", help="also stale and retired items (jsonl)")
    common(g)
    g = gsub.add_parser("import", help="import a JSONL golden set (ragloop rows or ragas samples) checked against the index")
    g.add_argument("path", metavar="FILE")
    common(g)

    p = sub.add_parser("prompts", help="prompt versions: `prompts check` lists prompts changed since last recorded")
    psub = p.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    c = psub.add_parser("check", help="list prompts whose file hash differs from the lake's registry")
    common(c)
    return parser


def _human_index(summary: dict) -> list[str]:
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    d = summary.get("documents")
    if d:
        lines.append(
            f"documents: {d['seen']} seen - {d['new']} new, {d['changed']} changed, {d['unchanged']} unchanged, "
            f"{d['deleted']} deleted, {d['quarantined']} quarantined"
        )
    c = summary.get("chunks")
    if c:
        lines.append(
            f"chunks: {c['total']} in table - {c['embedded']} texts embedded, {c['reused']} vectors reused, "
            f"{c['deleted']} deleted" + (f", {c['truncated']} truncated to the model's limit" if c.get("truncated") else "")
        )
    if summary.get("table"):
        lines.append(f"table: {summary['table']['name']} version {summary['table']['version']}")
    if summary.get("lake"):
        lines.append(f"lake: {summary['lake']}")
    for q in summary.get("quarantine", []):
        lines.append(f"quarantined: {q['source']} ({q['reason']}: {q['detail']})")
    for name, report in (summary.get("validation") or {}).items():
        if not report.get("success"):
            lines.append(f"validation {name} FAILED: {report.get('failures')}")
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    return lines


def _run_ingest(args: argparse.Namespace) -> dict:
    from flows.ingest import ingest_corpus

    return ingest_corpus(sources=args.source, lake=args.lake, config_path=args.config)


def _run_index(args: argparse.Namespace) -> dict:
    from flows.index import index_corpus

    return index_corpus(
        sources=args.source, lake=args.lake, chunking=args.chunking, config_path=args.config,
        progress=not args.json,
    )


def _human_synth(summary: dict) -> list[str]:
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    if summary.get("items"):
        i = summary["items"]
        lines.append(
            f"golden set {summary['golden_set_id']}: {i['total']} active - {i['new']} new, {i['kept']} kept, "
            f"{i['stale']} stale, {i['retired']} retired; {i['rejected']} candidates rejected"
        )
        lines.append("by type: " + ", ".join(f"{k} {v}" for k, v in summary.get("by_type", {}).items()))
        if summary.get("rejects"):
            lines.append("rejects: " + ", ".join(f"{k} {v}" for k, v in summary["rejects"].items()))
        cov = summary.get("coverage", {})
        lines.append(f"coverage: {cov.get('documents')} of {cov.get('of')} documents")
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    return lines


def _run_synth(args: argparse.Namespace) -> dict:
    from flows.synth import synth_golden_set

    return synth_golden_set(lake=args.lake, size=args.size, config_path=args.config)


def _run_golden(args: argparse.Namespace) -> dict:
    from flows.golden import export_golden_set, import_golden_set

    if args.golden_command == "import":
        return import_golden_set(path=args.path, lake=args.lake, config_path=args.config)
    return export_golden_set(args.out, args.format, args.golden, args.include_inactive, args.lake, args.config)


def _human_golden(summary: dict) -> list[str]:
    if "path" in summary:
        return [f"golden set {summary['golden_set_id']}: {summary['items']} items written to {summary['path']} ({summary['format']})"]
    return _human_synth(summary)


def _run_prompts(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from tasks.prompts import PromptError, changed_prompts, load_prompts
    from tasks.settings import ConfigError, load_settings
    from tasks.storage import Lake

    settings = load_settings(args.config, {"lake": args.lake} if args.lake else {})
    try:
        current = load_prompts(Path(settings.prompts_dir))
    except PromptError as exc:
        raise ConfigError(str(exc)) from exc
    changes = changed_prompts(current, Lake(settings.lake).last_prompt_hashes())
    return {"status": "ok", "prompts": len(current), "changed": changes}


def _human_prompts(summary: dict) -> list[str]:
    if not summary["changed"]:
        return [f"{summary['prompts']} prompts, none changed since last recorded"]
    return [f"{c['name']}: {c['status']} ({(c['previous_hash'] or '-')[:12]} -> {c['prompt_hash'][:12]})" for c in summary["changed"]]


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[dict], list[str]]]] = {
    "ingest": (_run_ingest, _human_index),
    "index": (_run_index, _human_index),
    "synth": (_run_synth, _human_synth),
    "prompts": (_run_prompts, _human_prompts),
    "golden": (_run_golden, _human_golden),
}


def _emit(summary: dict, as_json: bool, human: Callable[[dict], list[str]]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str, sort_keys=True) + "\n")
    else:
        sys.stdout.write("\n".join(human(summary)) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.json:
        # stdout carries exactly one JSON object; keep stderr to warnings unless asked otherwise.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    import flows  # noqa: F401  (sets the offline runtime defaults before prefect is imported)
    from tasks.settings import ConfigError, load_settings

    run, human = COMMANDS[args.command]
    try:
        load_settings(args.config)  # a bad config fails here, before Prefect starts or any work
        summary: dict[str, Any] = run(args)
    except ConfigError as exc:
        _emit({"status": "failed", "error": str(exc), "exit_code": EXIT_USAGE}, args.json, lambda s: [f"error: {s['error']}"])
        return EXIT_USAGE
    except Exception as exc:  # the flow already recorded the failure in its run manifest
        logging.getLogger("ragloop").debug("command failed", exc_info=True)
        _emit({"status": "failed", "error": f"{type(exc).__name__}: {exc}"}, args.json, lambda s: [f"error: {s['error']}"])
        return EXIT_FAILED
    _emit(summary, args.json, human)
    return STATUS_EXIT.get(summary.get("status", "failed"), EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
