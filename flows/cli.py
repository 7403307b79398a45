"""The `ragloop` command: each stage runs as a Prefect flow; --json prints one JSON object on stdout.

Exit codes: 0 ok, 1 failed, 2 bad usage or config, 3 gate failed.

Commands that are not stage runs (runs, lineage, compare, promote, rollback, golden list/use/show/report/diff/export,
prompts check) call a plain function from tasks/ (tasks/commands.py, tasks/golden_sets.py) that returns the
command's typed summary, and import it lazily: the read-only ones never import prefect nor start its
server, and load no model (tests/flows/test_cli_read_only.py holds them to it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import threading
from typing import Any, Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GATE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
INTERRUPT_GRACE_S = 10.0
STATUS_EXIT = {"ok": EXIT_OK, "partial": EXIT_OK, "failed": EXIT_FAILED, "gate_failed": EXIT_GATE,
               "gate_inconclusive": EXIT_GATE}


def _positive_int(text: str) -> int:
    """argparse type: a usage error in one line before any flow starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's usage-error contract (a misspelt option, an unknown command): one `error: ...`
    line on stderr, or with --json anywhere in the arguments the one error object on stdout; exit 2. Its
    subcommand parsers get the same `json_errors` (_parser passes it to them). `json_errors`: whether --json is
    among the arguments, known before parsing (the error can come before --json is parsed)."""

    def __init__(self, *args, json_errors: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def error(self, message: str):  # type: ignore[override]
        hint = f" (`{self.prog} --help` lists them)" if "argument" in message else ""
        _emit_error({"status": "failed", "error": " ".join(message.split()) + hint, "exit_code": EXIT_USAGE},
                    self.json_errors)
        sys.exit(EXIT_USAGE)


def _parser(json_errors: bool = False) -> argparse.ArgumentParser:
    from typing import get_args

    from ragloop.tasks.settings import ChunkingStrategyName

    # No argparse `choices`: the settings check the name (a registered strategy passes too), exit 2 if unknown.
    chunking_help = f"chunking strategy: {', '.join(get_args(ChunkingStrategyName))} or a registered one"
    parser = _Parser(prog="ragloop", description=__doc__.splitlines()[0], json_errors=json_errors)
    parser.add_argument("--config", help="config file (default: $RAGLOOP_CONFIG or ./ragloop.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=functools.partial(_Parser, json_errors=json_errors))

    def common(p: argparse.ArgumentParser) -> None:
        # --config also after the subcommand (`ragloop index --config x.yaml`); SUPPRESS keeps one given before it.
        p.add_argument("--config", default=argparse.SUPPRESS, help="config file (default: $RAGLOOP_CONFIG or ./ragloop.yaml)")
        p.add_argument("--lake", help="lake root: a path or object-store URI (default: the 'lake' setting)")
        p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")

    p = sub.add_parser("ingest", help="load sources into a documents snapshot (quarantining bad files)")
    p.add_argument("--source", action="append", metavar="PATH", help="a directory or file; repeatable")
    p.add_argument("--allow-mass-delete", action="store_true",
                   help="delete even when a source lost more than index.max_delete_fraction of its documents")
    common(p)

    p = sub.add_parser("index", help="ingest, then chunk + embed what changed and upsert into LanceDB")
    p.add_argument("--source", action="append", metavar="PATH", help="a directory or file; repeatable")
    p.add_argument("--chunking", metavar="STRATEGY", help=chunking_help)
    p.add_argument("--allow-mass-delete", action="store_true",
                   help="delete even when a source lost more than index.max_delete_fraction of its documents")
    p.add_argument("--forget-source", action="append", metavar="PATH",
                   help="delete the documents of this source (not given with --source); repeatable")
    common(p)

    p = sub.add_parser("run", help="the nightly chain once: index, GE gate, refresh the golden set, eval, gate")
    p.add_argument("--source", action="append", metavar="PATH", help="a directory or file; repeatable")
    p.add_argument("--size", type=_positive_int, help="active items the golden set should hold (synth.size)")
    p.add_argument("--no-cache", action="store_true", help="the eval bypasses the LLM call cache (llm.cache)")
    common(p)

    p = sub.add_parser("runs", help="the lake's runs, newest first (reads the lake only)")
    p.add_argument("--flow", help="only runs of this flow (ingest, index, synth, eval, monitor, lifecycle, ...)")
    p.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20; 0 = all)")
    common(p)

    p = sub.add_parser("synth", help="generate or refresh the synthetic golden set from the index")
    p.add_argument("--size", type=_positive_int, help="active items the golden set should hold (synth.size)")
    common(p)

    p = sub.add_parser("eval", help="run the chain under test over a golden set and score it")
    p.add_argument("--golden", default="latest", help="golden_set_id, a unique prefix, or 'latest' (default)")
    p.add_argument("--retrieval", choices=["vector", "fts", "hybrid"], help="retrieval mode (eval.retrieval)")
    p.add_argument("--k", type=_positive_int, help="chunks retrieved (eval.k)")
    p.add_argument("--retrieval-only", action="store_true", help="IR metrics only, no answer generation")
    p.add_argument("--promote", action="store_true",
                   help="promote the run if its gate passes (default: an experiment, compared but never promoted)")
    p.add_argument("--index", choices=["auto", "serving", "candidate"], default="auto",
                   help="the index to evaluate: auto (a pending candidate, else the served one)")
    p.add_argument("--no-cache", action="store_true",
                   help="bypass the LLM call cache: every answer, rewrite and judge call goes to the model (llm.cache)")
    common(p)

    p = sub.add_parser("promote", help="promote a passed eval run after the fact (its line's baseline; serving if it scored a candidate)")
    p.add_argument("run_id", metavar="RUN_ID")
    common(p)

    p = sub.add_parser("monitor", help="history, windowed regression rule, drift and budget checks, alerts, HTML report")
    common(p)

    p = sub.add_parser("import-beir", help="index a BEIR corpus and import its queries + qrels as a golden set")
    p.add_argument("path", metavar="DIR", help="a BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--chunking", metavar="STRATEGY", help=chunking_help + " (none = BEIR setup)")
    p.add_argument("--split", default="test", help="the qrels split to import (default: test)")
    common(p)

    p = sub.add_parser("calibrate", help="judges vs human answer grades: kappa with CI, who may gate, what to grade next")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--run", metavar="RUN_ID", help="one eval run (default: every eval run on the chosen line)")
    scope.add_argument("--golden", metavar="LINE", help="every eval run on this golden-set line (default: latest, the chosen one)")
    common(p)

    p = sub.add_parser("export", help="datasets for the next model: sft conversations or preference pairs (JSONL)")
    p.add_argument("kind", choices=["sft", "preference"])
    p.add_argument("--out", required=True, metavar="FILE", help="the JSONL file to write")
    p.add_argument("--golden", metavar="LINE", help="the golden-set line (default: latest, the chosen one)")
    common(p)

    p = sub.add_parser("compare", help="per-metric deltas between two eval runs on the same golden set, with paired CIs")
    p.add_argument("run_a", metavar="RUN_A", help="the baseline run id")
    p.add_argument("run_b", metavar="RUN_B", help="the candidate run id")
    p.add_argument("--format", choices=["text", "markdown"], default="text",
                   help="markdown: a GitHub-flavoured table with the gate's verdict, to post on a pull request")
    common(p)

    p = sub.add_parser("bakeoff", help="score a matrix of chain settings (each cell an eval experiment), choose on one "
                                       "golden line, score on another; table, paired deltas, Pareto chart, report")
    p.add_argument("file", metavar="FILE.yaml", help="the bake-off file (README: Bake-offs; examples/bakeoff/scifact.yaml)")
    p.add_argument("--format", choices=["text", "markdown"], default="text",
                   help="markdown: the result as a GitHub-flavoured table")
    p.add_argument("--promote", metavar="CELL",
                   help="make CELL the configured chain through the gate: its eval on score_on (else choose_on) must pass "
                        "against the line's baseline; then its settings are written to the config file (exit 3 when refused)")
    common(p)

    p = sub.add_parser("rollback", help="return a golden-set line's promoted state (serving table version, baseline) to the previous promotion")
    p.add_argument("--golden", default="latest", help="a line name, golden_set_id or unique prefix, or 'latest' (the chosen line)")
    common(p)

    p = sub.add_parser("lineage", help="the full lineage of a run")
    p.add_argument("run_id", metavar="RUN_ID")
    common(p)

    p = sub.add_parser("golden", help="golden sets: list, use, show, report, diff, export (JSONL or ragas), import (JSONL)")
    gsub = p.add_subparsers(dest="golden_command", required=True, metavar="ACTION")
    g = gsub.add_parser("export", help="write a golden set as JSONL (ragloop columns) or a ragas EvaluationDataset")
    g.add_argument("--golden", default="latest", help="golden_set_id, a unique prefix, or 'latest' (default)")
    g.add_argument("--format", choices=["jsonl", "ragas"], default="jsonl")
    g.add_argument("--out", required=True, metavar="PATH", help="the JSONL file to write")
    g.add_argument("--include-inactive", action="store_true", help="also stale and retired items (jsonl)")
    common(g)
    g = gsub.add_parser("import", help="import a JSONL golden set (ragloop rows or ragas samples) checked against the index")
    g.add_argument("path", metavar="FILE")
    g.add_argument("--line", help="the golden-set line it becomes the head of (default: the file's stem); it becomes the chosen line")
    common(g)
    g = gsub.add_parser("use", help="choose the line (or pin a version) that `--golden latest`, the nightly and prompt-changed evaluate")
    g.add_argument("spec", metavar="LINE|ID")
    common(g)
    g = gsub.add_parser("list", help="the golden-set lines, their versions, the chosen one and each line's baseline")
    common(g)
    g = gsub.add_parser("show", help="a golden set's items: question, type, status, review, reference answer and evidence")
    g.add_argument("spec", metavar="ID", help="golden_set_id, a unique prefix, a line name, or 'latest'")
    common(g)
    g = gsub.add_parser("report", help="a golden set's quality: per type, rejects, coverage by folder, duplicates, "
                                       "evidence support and a sample with its evidence marked")
    g.add_argument("spec", metavar="ID|LINE", nargs="?", default="latest",
                   help="golden_set_id, a unique prefix, a line name, or 'latest' (default: the chosen line's head)")
    g.add_argument("--sample", type=int, default=5, metavar="N", help="active items to show with their evidence (default 5)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sample (default 0)")
    common(g)
    g = gsub.add_parser("diff", help="the items added, retired and changed from golden-set version A to B")
    g.add_argument("spec_a", metavar="A", help="golden_set_id, a unique prefix, a line name, or 'latest'")
    g.add_argument("spec_b", metavar="B", help="golden_set_id, a unique prefix, a line name, or 'latest'")
    common(g)

    p = sub.add_parser("prompts", help="prompt versions: `prompts check` lists prompts changed since last recorded")
    psub = p.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    c = psub.add_parser("check", help="list prompts whose file hash differs from the lake's registry")
    c.add_argument("--emit", action="store_true",
                   help="emit a `ragloop.prompt.changed` Prefect event per prompt changed since a run used it (needs PREFECT_API_URL)")
    common(c)

    p = sub.add_parser("logs", help="production logs: `logs import` reads a RAG app's logs (JSONL or OTLP spans), redacted")
    lsub = p.add_subparsers(dest="logs_command", required=True, metavar="ACTION")
    g = lsub.add_parser("import", help="import JSONL records or OTLP/OpenInference spans; bad lines quarantined, re-import adds nothing")
    g.add_argument("path", metavar="FILE|DIR", help="a log file, or a directory of .jsonl/.json/.ndjson files")
    g.add_argument("--format", choices=["jsonl", "otel"], default="jsonl",
                   help="jsonl (ragloop's log records, README) or otel (OTLP JSON spans with OpenInference attributes)")
    common(g)

    p = sub.add_parser("deploy", help="register the deployments (nightly, prompt-changed, index, eval) with a Prefect "
                                      "work pool instead of serving them (needs PREFECT_API_URL)")
    p.add_argument("--work-pool", required=True, metavar="NAME", help="an existing work pool (e.g. `prefect work-pool "
                                                                     "create NAME --type process`)")
    common(p)

    from ragloop.app.cli import add_review_parser  # argparse only: no web framework imported here

    add_review_parser(sub, common)
    return parser


def _with_error(lines: list[str], summary: dict) -> list[str]:
    """The summary's error as the last line: `error:` when the run failed, `warning:` when it went on (a
    partial run exits 0, so its line must not read as a failure)."""
    if summary.get("error"):
        lines.append(f"{'warning' if summary.get('status') == 'partial' else 'error'}: {summary['error']}")
    return lines


def _human_index(summary: dict) -> list[str]:
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    d = summary.get("documents")
    if d:
        lines.append(
            f"documents: {d['seen']} seen - {d['new']} new, {d['changed']} changed, {d['unchanged']} unchanged, "
            f"{d['deleted']} deleted, {d['quarantined']} quarantined"
        )
    plan = summary.get("index_plan")
    if plan and d and any(plan.get(k) != d.get(k) for k in ("new", "changed", "deleted")):
        # a retry of an interrupted run: its ingest already published the snapshot, the table did not change
        lines.append(f"against the table: {plan['new']} new, {plan['changed']} changed, {plan['unchanged']} "
                     f"unchanged, {plan['deleted']} deleted")
    scope = summary.get("scope") or {}
    if scope.get("other_sources_kept") or scope.get("forgotten"):
        lines.append(f"other sources: {scope['other_sources_kept']} documents kept, {scope['forgotten']} forgotten")
    c = summary.get("chunks")
    if c:
        lines.append(
            f"chunks: {c['total']} in table - {c['embedded']} texts embedded, {c['reused']} vectors reused, "
            f"{c['deleted']} deleted" + (f", {c['truncated']} truncated to the model's limit" if c.get("truncated") else "")
        )
    if summary.get("table"):
        lines.append(f"table: {summary['table']['name']} version {summary['table']['version']}")
    if summary.get("disposition"):
        placed, serving, cand = summary["disposition"], summary.get("serving"), summary.get("candidate")
        lines.append(f"index {placed['action']}: {placed['reason']}")
        if serving:
            lines.append(f"serving: {serving['table']} v{serving['version']}"
                         + (f"; candidate {cand['table']} v{cand['version']} awaits the gate (eval --promote, or the nightly)"
                            if cand else ""))
    if summary.get("lake"):
        lines.append(f"lake: {summary['lake']}")
    if summary.get("notes"):
        lines.append("ingest notes: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary["notes"].items()))
    if (summary.get("scope") or {}).get("labels"):
        lines.append("doc id prefixes (several sources): "
                     + ", ".join(f"{label}/ = {root}" for root, label in summary["scope"]["labels"].items()))
    if summary.get("carried_forward"):
        lines.append(f"kept from before: {len(summary['carried_forward'])} document(s) whose file is quarantined "
                     "now (counted unchanged; --json lists them)")
    if d and not (d["seen"] or d["quarantined"] or d["deleted"]) and summary.get("status") == "ok":
        lines.append("warning: no documents under the sources: check --source, and ingest.include / "
                     "ingest.exclude" + (" (see the ingest notes)" if summary.get("notes") else ""))
    quarantined = summary.get("quarantine", [])
    for q in quarantined:
        if q.get("new", True):
            lines.append(f"quarantined: {q['source']} ({q['reason']}: {q['detail']})")
    known = sum(1 for q in quarantined if not q.get("new", True))
    if known:
        lines.append(f"quarantined as before: {known} file(s) (--json lists them)")
    for name, report in (summary.get("validation") or {}).items():
        if not report.get("success"):
            lines.append(f"validation {name} FAILED: {report.get('failures')}")
    return _with_error(lines, summary)


def _settings(args: argparse.Namespace):
    """The settings with --lake applied (the commands that call tasks/ functions directly)."""
    from ragloop.tasks.settings import load_settings

    return load_settings(args.config, {"lake": args.lake} if args.lake else {})


def _lake(settings):
    from ragloop.tasks.preflight import open_lake

    return open_lake(settings.lake)  # a lake URI that cannot be resolved is a usage error (exit 2)


def _run_ingest(args: argparse.Namespace) -> dict:
    from ragloop.flows.ingest import ingest_corpus

    return ingest_corpus(sources=args.source, lake=args.lake, config_path=args.config,
                         allow_mass_delete=args.allow_mass_delete)


def _run_index(args: argparse.Namespace) -> dict:
    from ragloop.flows.index import index_corpus

    return index_corpus(
        sources=args.source, lake=args.lake, chunking=args.chunking, config_path=args.config,
        progress=not args.json, allow_mass_delete=args.allow_mass_delete, forget_sources=args.forget_source,
    )


def _human_synth(summary: dict) -> list[str]:
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    if summary.get("items"):
        i = summary["items"]
        lines.append(
            f"golden set {summary['golden_set_id']}: {i['total']} active - {i['new']} new, {i['kept']} kept, "
            f"{i['stale']} stale, {i['retired']} retired" + (f", {i['outdated']} outdated (made by an older prompt "
                                                                "or question writer)" if i.get("outdated") else "")
            + f"; {i['rejected']} candidates rejected"
        )
        if summary.get("up_to_date"):
            lines.append("up to date: index, prompts and settings unchanged since the last synth; nothing generated")
        lines.append("by type: " + ", ".join(f"{k} {v}" for k, v in summary.get("by_type", {}).items()))
        if summary.get("rejects"):
            lines.append("rejects: " + ", ".join(f"{k} {v}" for k, v in summary["rejects"].items()))
        short = (summary.get("shortfall") or {}).get("by_type")
        if short:
            lines.append("short of the type mix: " + ", ".join(f"{k} {v}" for k, v in short.items()))
        cov = summary.get("coverage")
        if cov:  # synth's; an import has none
            lines.append(f"coverage: {cov.get('documents')} of {cov.get('of')} documents")
    return _with_error(lines, summary)


def _run_synth(args: argparse.Namespace) -> dict:
    from ragloop.flows.synth import synth_golden_set

    return synth_golden_set(lake=args.lake, size=args.size, config_path=args.config, progress=not args.json)


def _run_lifecycle(args: argparse.Namespace) -> dict:
    from ragloop.flows.lifecycle import run_lifecycle

    state = run_lifecycle(sources=args.source, lake=args.lake, config_path=args.config, progress=not args.json,
                          size=args.size, no_cache=args.no_cache, return_state=True)
    summary = state.result(raise_on_failure=False)  # a failed night is a Failed flow run carrying its summary
    if isinstance(summary, BaseException):
        raise summary
    return summary


def _human_lifecycle(summary: dict) -> list[str]:
    lines = [f"lifecycle {summary['run_id']}: {summary['status']}"]
    printers = {"index": _human_index, "synth": _human_synth, "eval": _human_eval, "monitor": _human_monitor}
    for name, stage in summary.get("stages", {}).items():
        lines.append(f"-- {name}")
        shown = {k: v for k, v in stage.items() if not (name == "monitor" and k == "report")}  # printed last, once
        lines.extend(printers[name]({"run_id": stage.get("run_id", "?"), "status": stage.get("status"), **shown}))
        if stage.get("cached"):
            lines.append("(inputs unchanged since this run: its results were reused, nothing recomputed)")
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    return _with_error(lines, summary)


def _run_monitor(args: argparse.Namespace) -> dict:
    from ragloop.flows.monitor import monitor_quality

    return monitor_quality(lake=args.lake, config_path=args.config)


def _human_monitor(summary: dict) -> list[str]:
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    if "alerts" in summary:
        lines.append(f"{summary.get('observations', 0)} observations in the history"
                     + (f" ({len(summary['observed'])} new)" if summary.get("observed") else ""))
        checks = summary.get("checks") or {}
        for name in ("corpus", "embedding", "retrieval", "budgets"):
            if name in checks:
                figures = {k: v for k, v in checks[name].items() if not isinstance(v, (dict, list))}
                lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        lines.append(f"alerts: {len(summary['alerts'])}" if summary["alerts"] else "alerts: none")
        lines.extend(f"  [{a['severity']}] {a['kind']}: {a['message']}" for a in summary["alerts"])
        sinks = [f"{d['sink']} {d['status']}" + (f" ({d['error']})" if d.get("error") else "") for d in summary.get("sinks", [])]
        if summary["alerts"] or any(d["status"] == "failed" for d in summary.get("sinks", [])):
            lines.append("sinks: " + ", ".join(sinks))
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    return _with_error(lines, summary)


def _run_eval(args: argparse.Namespace) -> dict:
    from ragloop.flows.evaluate import evaluate_chain

    return evaluate_chain(lake=args.lake, golden=args.golden, retrieval=args.retrieval, k=args.k,
                          retrieval_only=args.retrieval_only, config_path=args.config,
                          promote="explicit" if args.promote else None, index=args.index, progress=not args.json,
                          no_cache=args.no_cache)


def _human_eval(summary: dict) -> list[str]:
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    if "metrics" in summary:
        i = summary["items"]
        checked = sum(n for r, n in (i.get("by_review") or {}).items() if r in ("approved", "edited"))
        lines.append(f"golden set {summary['golden_set_id']}: {i['total']} items ({checked} checked by a person), "
                     f"{i['failed']} failed"
                     + (f" (judgments failed: {summary['failed_judgments']})" if summary.get("failed_judgments") else ""))
        lines.extend(f"  failed: {n} x {reason}" for reason, n in (i.get("errors") or {}).items())
        metrics, ci = summary["metrics"], summary["ci"]
        ranked = sorted({n.split("@")[1] for n in metrics if "@" in n}, key=int)
        if ranked:  # IR metrics as a table: family x k, mean and CI half-width
            lines.append(f"  {'metric':<14}" + "".join(f"{'@' + k:>16}" for k in ranked))
            for family in ("hit", "recall", "mrr", "ndcg", "chunk_hit", "chunk_recall", "chunk_mrr", "chunk_ndcg"):
                cells = [f"{family}@{k}" for k in ranked]
                if any(c in metrics for c in cells):
                    lines.append(f"  {family:<14}" + "".join(
                        f"{metrics[c]:>9.4f} ±{(ci[c][1] - ci[c][0]) / 2:.3f}" if c in metrics else f"{'-':>16}" for c in cells))
        for name in sorted(n for n in metrics if "@" not in n):
            low, high = ci[name]
            lines.append(f"  {name:<22} {metrics[name]:.4f}  [{low:.4f}, {high:.4f}]  n={summary['n'][name]}")
        lines.append(f"results: {summary['results']['items']}")
    from ragloop.tasks.llm_cache import cache_line

    if line := cache_line(summary.get("llm_cache")):
        lines.append(line)
    stale = summary.get("stale_references") or {}
    if stale.get("items"):
        lines.append(f"stale references: {stale['items']} items reference {stale['references']} chunks/documents the index "
                     f"no longer holds, left out of those IR metrics (e.g. {', '.join(stale['qa_ids'][:3])})")
    if summary.get("target"):
        from ragloop.tasks.targets import target_line

        lines.append(target_line(summary["target"], summary.get("contexts")))
    lines.extend(_gate_lines(summary))
    return _with_error(lines, summary)


def _gate_lines(summary: dict) -> list[str]:
    gate = summary.get("gate")
    if not gate:
        return []
    from ragloop.tasks.gating import power_note
    index = summary.get("index") or {}
    lines = [f"gate: {gate['status']}" + (f" vs baseline {summary['baseline_run_id']}" if summary.get("baseline_run_id") else "")
             + (f" on line {summary['golden_line']}" if summary.get("golden_line") else "")
             + (f"; index under test: {index['role']} {index['table']} v{index['version']}" if index else "")]
    lines.extend(f"  {reason}" for reason in gate.get("reasons", []))
    lines.extend(f"  warning: {w}" for w in gate.get("warnings", []))
    for name, p in sorted((gate.get("power") or {}).items()):
        if name in (summary.get("deltas") or {}):
            d = summary["deltas"][name]
            lines.append(f"  {name:<22} {d['delta']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]  "
                         + power_note(name, p, gate.get("max_drop")))
    promo = summary.get("promotion")
    if promo:
        lines.append(f"promoted: {str(promo['promoted']).lower()} ({promo['reason']})")
        if promo.get("serving_moved"):
            to = promo["serving_moved"]["to"]
            lines.append(f"serving moved to {to['name']} v{to['version']}")
    return lines


def _run_import_beir(args: argparse.Namespace) -> dict:
    from ragloop.flows.beir import import_beir

    return import_beir(path=args.path, lake=args.lake, chunking=args.chunking, split=args.split,
                       config_path=args.config, progress=not args.json)


def _human_import_beir(summary: dict) -> list[str]:
    lines = _human_index(summary)
    if summary.get("golden_set_id"):
        lines.append(f"golden set {summary['golden_set_id']}: {summary['items']['total']} queries with qrels")
    return lines


def _run_compare(args: argparse.Namespace) -> dict:
    from ragloop.tasks.commands import compare_runs

    settings = _settings(args)
    if args.json and args.format == "markdown":
        from ragloop.tasks.settings import ConfigError

        raise ConfigError("compare: choose --json or --format markdown, not both")
    summary = compare_runs(_lake(settings), args.run_a, args.run_b, settings.eval, settings.gate).model_dump(mode="json")
    if args.format == "markdown":
        from ragloop.tasks.commands import compare_markdown

        summary["markdown"] = compare_markdown(summary, settings.eval.confidence)
    return summary


def _run_bakeoff(args: argparse.Namespace) -> dict:
    from ragloop.tasks import bakeoff

    if args.json and args.format == "markdown":
        from ragloop.tasks.settings import ConfigError

        raise ConfigError("bakeoff: choose --json or --format markdown, not both")
    import os

    from ragloop.tasks import providers

    spec = bakeoff.load_bakeoff(args.file)  # a bad file fails here, before Prefect starts (exit 2, naming the field)
    bakeoff.check_metric(spec, _settings(args).eval.metric_ks)
    bakeoff.load_prices(spec.prices)  # a named price table that is missing or malformed: before any run
    bakeoff.check_promote(spec, args.promote, args.config, os.environ)
    bakeoff.check_lines(_lake(_settings(args)), spec)
    bakeoff.check_tables(bakeoff.expand_cells(spec), args.config, args.lake, providers.current())
    from ragloop.flows.bakeoff import run_bakeoff

    summary = run_bakeoff(path=args.file, lake=args.lake, config_path=args.config, promote=args.promote)
    if args.format == "markdown":
        summary["markdown"] = bakeoff.bakeoff_markdown(summary)
    return summary


def _human_bakeoff(summary: dict) -> list[str]:
    if "markdown" in summary:
        return [summary["markdown"].rstrip("\n")]
    lines = [f"bake-off {summary['name']} ({summary['run_id']}): {summary['status']}, {len(summary['cells'])} cells "
             f"on line {summary['choose_on']}, metric {summary['metric']}"]
    for c in summary["cells"]:
        if c["status"] == "failed":
            lines.append(f"  {c['name']:<28} failed: {c.get('error')}")
            continue
        value, ci = c["metrics"].get(summary["metric"]), c["ci"].get(summary["metric"])
        d = (c.get("deltas") or {}).get(summary["metric"])
        lines.append(f"  {c['name']:<28} " + (f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if value is not None else "not measured")
                     + (f"  {d['delta']:+.4f} {d['verdict']}" if d else "")
                     + f"  p50 {c['latency_p50_ms']:.1f} ms p95 {c['latency_p95_ms']:.1f} ms  cost ${c['cost']:.6f}"
                     + ("  (reused)" if c.get("cached") else ""))
    lines.append(f"Pareto (quality vs latency): {', '.join(summary['pareto']['latency'])}")
    lines.append(f"Pareto (quality vs cost): {', '.join(summary['pareto']['cost'])}")
    lines.append(f"chosen on {summary['choose_on']}: {summary['chosen']} ({summary['chosen_score']})")
    held = summary.get("held_out")
    if held:
        lines.append(f"scored on {held['line']} (held out): " + (f"{held['value']:.4f}"
                                                                 + (f" [{held['ci'][0]:.4f}, {held['ci'][1]:.4f}]" if held.get("ci") else "")
                                                                 + f" run {held['run_id']}"
                                                                 if "value" in held else f"failed: {held.get('error')}"))
    for t in summary.get("tables") or []:
        if len(summary.get("tables") or []) > 1 or t.get("role") == "bakeoff":
            lines.append(f"index {t.get('table')} ({t.get('role')}): " + (f"failed: {t['error']}" if t.get("error") else
                         f"v{t.get('version')}, {t.get('chunks')} chunks, {_mb(t.get('bytes'))}, built in {t.get('build_s')} s"))
    for c in summary["cells"]:
        if c.get("note") or (c.get("evidence") or {}).get("note"):
            lines.append(f"note {c['name']}: {c.get('note') or c['evidence']['note']}")
    promote = summary.get("promote")
    if promote:
        gate = promote.get("gate") or {}
        lines.append(f"promote {promote['cell']} on line {promote['line']} (run {promote.get('run_id')}), gate "
                     f"{gate.get('status')}: " + ("applied" if promote["applied"] else "refused") + f" ({promote['reason']})")
        if promote["applied"]:
            config = promote["config"]
            lines.append(f"  {config['file']}: " + ("updated" if config["written"] else "already had these settings")
                         + ("; baseline moved to this run" if promote["baseline_moved"] else ""))
            lines.extend("  " + line for line in config["diff"].splitlines())
            if promote.get("next"):
                lines.append(f"  next: {promote['next']}")
    elif summary.get("adopt"):
        lines.append("config of the chosen cell (`--promote CELL` writes it, through the gate):")
        lines.extend("  " + line for line in summary["adopt"].splitlines())
    lines.append(f"report: {summary.get('report')}")
    return lines


def _mb(size: int | None) -> str:
    return "? MB" if size is None else f"{size / 1e6:.1f} MB"


def _human_compare(summary: dict) -> list[str]:
    if "markdown" in summary:  # --format markdown: the comment alone
        return [summary["markdown"].rstrip("\n")]
    ids = summary.get("golden_set_ids") or {}
    lines = [f"{summary['run_a']} (baseline) -> {summary['run_b']} (candidate): delta = candidate - baseline, "
             f"{summary['shared_items']} shared questions"
             + (f" (golden sets {ids['a']} and {ids['b']})" if ids.get("a") != ids.get("b") else f" (golden set {ids.get('b')})")]
    if summary.get("changed_questions"):
        lines.append(f"  warning: {summary['changed_questions']} of the {summary['shared_items']} shared qa_ids have a "
                     "different question text in the two runs (edited between them): those pairs are not like for like")
    for name, d in summary["deltas"].items():
        lines.append(f"  {name:<22} {d['baseline']:.4f} -> {d['candidate']:.4f}  {d['delta']:+.4f} "
                     f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]  n={d['n']}")
    for side, names in summary["not_compared"].items():
        if names:
            who = summary["run_a"] if side == "baseline_only" else summary["run_b"]
            lines.append(f"  only in {who}: {', '.join(names)}")
    gate = summary.get("gate")
    if gate:
        lines.append(f"gate (the candidate against the baseline): {gate['status']}")
        lines.extend(f"  {reason}" for reason in gate.get("reasons", []))
    for key, change in summary["lineage_changes"].items():
        lines.append(f"  lineage {key}:")
        lines.append(f"    a: {json.dumps(change['a'], default=str, sort_keys=True)}")
        lines.append(f"    b: {json.dumps(change['b'], default=str, sort_keys=True)}")
    return lines


def _run_lineage(args: argparse.Namespace) -> dict:
    from ragloop.tasks.commands import run_lineage

    return run_lineage(_lake(_settings(args)), args.run_id).model_dump(mode="json")


def _human_lineage(summary: dict) -> list[str]:
    return [f"run {summary['run_id']} ({summary['flow']}, {summary['run_status']})",
            json.dumps(summary["lineage"], indent=2, sort_keys=True, default=str)]


def _run_rollback(args: argparse.Namespace) -> dict:
    from ragloop.tasks.commands import rollback_line

    settings = _settings(args)
    return rollback_line(_lake(settings), args.golden, settings.prompts_dir).model_dump(mode="json")


def _run_promote(args: argparse.Namespace) -> dict:
    from ragloop.tasks.commands import promote_run

    return promote_run(_lake(_settings(args)), args.run_id).model_dump(mode="json")


def _human_promote(summary: dict) -> list[str]:
    lines = [f"run {summary['run_id']} promoted as the baseline of line {summary['line']} ({summary['reason']})"]
    if summary.get("serving_moved"):
        lines.append(f"serving moved to {summary['serving_moved']['to']['name']} v{summary['serving_moved']['to']['version']}")
    return lines


def _human_rollback(summary: dict) -> list[str]:
    t = summary["table"]
    lines = [f"line {summary['line']}: promoted state rolled back from run {summary['from_run_id']} "
             f"to run {summary['to_run_id']}",
             f"serving table: {t['to']['name']} version {t['to']['version']} (was {t['from']['name']} version {t['from']['version']})"]
    for name, p in summary["prompts"].items():
        lines.append(f"prompt {name}: {p['promoted'][:12]}" + ("" if p["matches"] else
                     f" - the file in prompts/ is {(p['file'] or 'missing')[:12]}: restore it from version control"))
    return lines


def _run_golden(args: argparse.Namespace) -> dict:
    if args.golden_command in ("use", "list"):
        return _golden_lines(args)
    if args.golden_command == "show":
        return _golden_show(args)
    if args.golden_command in ("report", "diff"):
        return _golden_quality(args)
    if args.golden_command == "export":
        return _golden_export(args)
    from ragloop.flows.golden import import_golden_set

    return import_golden_set(path=args.path, lake=args.lake, config_path=args.config, line=args.line)


def _golden_export(args: argparse.Namespace) -> dict:
    """`golden export`: read the lake, write one file (no Prefect; ragas only for --format ragas)."""
    from pathlib import Path

    from ragloop.tasks.golden_sets import export_golden_set

    settings = _settings(args)
    return export_golden_set(_lake(settings), settings.embedding, Path(args.out), args.format, args.golden,
                             args.include_inactive)


def _golden_lines(args: argparse.Namespace) -> dict:
    """`golden use` and `golden list`: only refs, no Prefect."""
    from ragloop.tasks.commands import golden_lines, use_line

    lake = _lake(_settings(args))
    summary = use_line(lake, args.spec) if args.golden_command == "use" else golden_lines(lake)
    return summary.model_dump(mode="json")


def _golden_show(args: argparse.Namespace) -> dict:
    """`golden show ID`: the items of one golden set, read from the lake (no Prefect)."""
    from ragloop.tasks.commands import show_golden

    return show_golden(_lake(_settings(args)), args.spec).model_dump(mode="json")


def _golden_quality(args: argparse.Namespace) -> dict:
    """`golden report` and `golden diff`: read the lake (the report also the serving index's texts; no Prefect,
    no model)."""
    from ragloop.tasks.golden_quality import golden_diff, golden_report

    lake = _lake(_settings(args))
    if args.golden_command == "diff":
        return golden_diff(lake, args.spec_a, args.spec_b).model_dump(mode="json")
    return golden_report(lake, args.spec, args.sample, args.seed).model_dump(mode="json")


def _human_golden_report(summary: dict) -> list[str]:
    items, cov, ev, dup = summary["items"], summary["coverage"], summary["evidence_supported"], summary["duplicates"]
    lines = [f"golden set {summary['golden_set_id']}" + (f" (line {summary['line']})" if summary.get("line") else "")
             + f": {items['active']} active of {items['total']} items",
             "per type (active/total): " + ", ".join(f"{t} {c['active']}/{c['total']}" for t, c in summary["by_type"].items())]
    gen = summary["generation"]
    if gen is None:
        lines.append("generation: not recorded (no synth run wrote this version: imported or reviewed)")
    else:
        per_type = gen.get("per_type")
        lines.append(f"generation (synth run {gen['run_id']}): {gen['accepted']} accepted of {gen['attempted']} attempted; "
                     + ("per type " + ", ".join(f"{t} {c['accepted']}/{c['attempted']}" for t, c in per_type.items())
                        if per_type else "per type accept rate " + (", ".join(f"{t} {r}" for t, r in gen["accept_rate_by_type"].items())
                                                                     or "not recorded")))
        lines.append("rejects: " + (", ".join(f"{k} {v}" for k, v in gen["rejects"].items()) or "none"))
    lines.append(f"coverage: {cov['documents']} of {cov['of']} indexed documents have an active item"
                 + (f" ({summary['index']['table']} v{summary['index']['version']})" if summary.get("index") else " (no index)"))
    lines += [f"    {folder}: {c['documents']}/{c['of']}" for folder, c in cov["by_folder"].items()]
    lines.append(f"duplicates: {dup['items']} of {dup['of']} active items ({dup['rate']:.1%}); {dup['measure']}")
    rate = f"{ev['rate']:.1%}" if ev["rate"] is not None else "-"
    lines.append(f"evidence-supported: {ev['items']} of {ev['of']} active answerable items ({rate})"
                 + ("; failing: " + ", ".join(f"{k} {v}" for k, v in ev["failures"].items()) if ev["failures"] else ""))
    for s in summary["sample"]:
        lines += ["", f"[{s['qa_type']}] {s['qa_id']}", f"  Q: {s['question']}", f"  A: {s['answer']}"]
        for e in s["evidence"] or []:
            window = e["window"] if e["window"] is not None else "(chunk not in the index)"
            lines.append(f"  evidence {e['chunk_id'][:12]} [{e['start']}:{e['end']}]: " + " ".join(window.split()))
        if not s["evidence"]:
            lines.append("  evidence: none")
    return lines


def _human_golden_diff(summary: dict) -> list[str]:
    c = summary["counts"]
    lines = [f"golden diff {summary['a']} -> {summary['b']}: {c['added']} added, {c['retired']} retired, "
             f"{c['changed']} changed, {c['regenerated']} changed (regenerated), {c['unchanged']} unchanged"]
    lines += [f"+ added   {i['qa_id']} {i['qa_type']} [{i['status']}]: {i['question']}" for i in summary["added"]]
    lines += [f"- retired {i['qa_id']} {i['qa_type']} ({i['status_after'] or 'absent'} in B): {i['question']}"
              for i in summary["retired"]]

    def fields(changes: dict) -> list[str]:
        return [f"      {name}: {v['before']!r} -> {v['after']!r}" for name, v in changes.items()]

    for i in summary["changed"]:
        lines += [f"~ changed {i['qa_id']} {i['qa_type']}"] + fields(i["fields"])
    for i in summary["regenerated"]:
        lines += [f"~ changed (regenerated) {i['qa_id_before']} -> {i['qa_id_after']} {i['qa_type']}"] + fields(i["fields"])
    return lines


def _run_calibrate(args: argparse.Namespace) -> dict:
    """`calibrate`: judges against human grades, stored with their identity (tasks/calibration.py; no Prefect)."""
    from ragloop.tasks.calibration import calibrate_lake

    settings = _settings(args)
    return calibrate_lake(_lake(settings), settings.gate.calibration, args.run, args.golden,
                          resamples=settings.eval.bootstrap_resamples, confidence=settings.eval.confidence,
                          seed=settings.eval.seed).model_dump(mode="json")


def _human_calibrate(summary: dict) -> list[str]:
    lines = [f"calibrated on {summary['scope']}: {summary['graded']} of {summary['items']} answers of the newest run "
             f"graded; labels {summary['labels']}",
             f"{'metric':22} {'n':>4} {'acc':>6} {'kappa':>6} {'95% CI':>16} {'thr':>5}  may gate"]
    for name, m in summary["metrics"].items():
        ci = f"[{m['kappa_ci'][0]:+.2f}, {m['kappa_ci'][1]:+.2f}]" if m["kappa_ci"] else "-"
        kappa = f"{m['kappa']:+.2f}" if m["kappa"] is not None else "-"
        acc = f"{m['accuracy']:.2f}" if m["accuracy"] is not None else "-"
        lines.append(f"{name:22} {m['n']:>4} {acc:>6} {kappa:>6} {ci:>16} {m['threshold']:>5.2f}  "
                     f"{'yes' if m['may_gate'] else 'no: ' + m['reason']}")
        ppi, plain = m["estimates"].get("ppi"), m["estimates"].get("judge")
        if ppi and plain:
            lines.append(f"{'':22} share passing: judge {plain['estimate']:.2f} [{plain['ci'][0]:.2f}, {plain['ci'][1]:.2f}], "
                         f"PPI {ppi['estimate']:.2f} [{ppi['ci'][0]:.2f}, {ppi['ci'][1]:.2f}]")
    lines += [f"not gated: {name}: {why}" for name, why in summary["not_gated"].items() if name not in summary["metrics"]]
    lines += [f"warning: {w}" for w in summary["warnings"]]
    if summary["label_next"]:
        lines.append("grade next (the metrics disagree most): " + ", ".join(r["qa_id"] for r in summary["label_next"]))
    return lines


def _run_export(args: argparse.Namespace) -> dict:
    """`export sft|preference`: JSONL datasets from reviewed items and graded answers (tasks/exports.py; no Prefect)."""
    from pathlib import Path

    from ragloop.tasks.exports import export_dataset

    settings = _settings(args)
    return export_dataset(_lake(settings), args.kind, Path(args.out), settings.prompts_dir, args.golden).model_dump(mode="json")


def _human_export(summary: dict) -> list[str]:
    return [f"{summary['rows']} {summary['kind']} rows from line {summary['line']} ({summary['golden_set_id']}) -> "
            f"{summary['path']}; sources {summary['sources']}; skipped {summary['skipped']}"]


def _run_runs(args: argparse.Namespace) -> dict:
    """`runs`: the run manifests in the lake, newest first (no Prefect)."""
    from ragloop.tasks.commands import list_runs

    return list_runs(_lake(_settings(args)), args.flow, args.limit).model_dump(mode="json")


def _human_runs(summary: dict) -> list[str]:
    if not summary["runs"]:
        return [f"no runs in {summary['lake']}"]
    lines = [f"{'run_id':<40} {'flow':<14} {'status':<18} {'started_at':<26} seconds"]
    for r in summary["runs"]:
        lines.append(f"{r['run_id']:<40} {r['flow']:<14} {r['status']:<18} {r['started_at'][:26]:<26} "
                     f"{r['seconds'] if r['seconds'] is not None else 'running or killed'}"
                     + (f"  error: {r['error'][:80]}" if r.get("error") else ""))
    if summary["total"] > summary["shown"]:
        lines.append(f"({summary['shown']} of {summary['total']} shown; --limit 0 for all)")
    return lines


def _human_golden(summary: dict) -> list[str]:
    if "sample" in summary:
        return _human_golden_report(summary)
    if "regenerated" in summary:
        return _human_golden_diff(summary)
    if "items" in summary and isinstance(summary["items"], list):
        lines = [f"golden set {summary['golden_set_id']}" + (f" (line {summary['line']})" if summary.get("line") else "")
                 + f": {summary['count']} items - " + ", ".join(f"{k} {v}" for k, v in summary["by_status"].items())]
        for i in summary["items"]:
            lines.append(f"[{i['status']}/{i['review']}] {i['qa_id']} {i['qa_type']}: {i['question']}")
            if i.get("reference_answer"):
                lines.append(f"    answer: {i['reference_answer']}")
            lines.append(f"    evidence: {', '.join(i['reference_doc_ids']) or 'none (unanswerable)'}"
                         + (f" ({len(i['reference_chunk_ids'])} chunks)" if i["reference_chunk_ids"] else ""))
        return lines
    if "path" in summary:
        return [f"golden set {summary['golden_set_id']}: {summary['items']} items written to {summary['path']} ({summary['format']})"]
    if "lines" in summary:
        if not summary["lines"]:
            return ["no golden-set line yet: run synth, golden import or import-beir"]
        return [f"{'*' if name == summary['chosen'] else ' '} {name:<24} {line['golden_set_id']}  {line['kind']:<9} "
                f"{line['versions']} version(s), baseline {line['baseline_run_id'] or 'none'}"
                for name, line in summary["lines"].items()] + ["(* = chosen: what --golden latest, the nightly and prompt-changed evaluate)"]
    if "chosen" in summary:
        return [f"chosen line: {summary['chosen']} ({summary['golden_set_id']}); was {summary['previous_chosen'] or 'none'}"]
    lines = _human_synth(summary)
    line = summary.get("line")
    if line:
        lines.append(f"line {line['line']}" + (f"; chosen line is now {line['chosen']} (was {line['previous_chosen'] or 'none'})"
                                                if line["chosen"] != line["previous_chosen"] else f"; chosen line: {line['chosen']}"))
    return lines


def _run_prompts(args: argparse.Namespace) -> dict:
    """`prompts check`: reads the prompt files and the lake (no Prefect); --emit sends an event per change."""
    from ragloop.tasks.commands import check_prompts

    settings = _settings(args)
    summary = check_prompts(_lake(settings), settings.prompts_dir)
    if args.emit and summary.to_emit():
        summary.emitted = _emit_prompt_changes(summary.to_emit(), summary.lake)
    return summary.model_dump(mode="json")


def _emit_prompt_changes(changes: list[dict], lake_uri: str) -> int:
    """Send a `ragloop.prompt.changed` Prefect event per change; returns how many were emitted."""
    from ragloop.tasks.settings import ConfigError

    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("--emit needs a Prefect server to send events to: start one (`make server`) and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api")
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    emitted = 0
    for change in changes:
        event = emit_event(
            event="ragloop.prompt.changed",
            resource={"prefect.resource.id": f"ragloop.prompt.{change['name']}", "prefect.resource.name": change["name"]},
            payload={**change, "lake": lake_uri},  # the triggered run evaluates the lake that was checked
        )
        emitted += event is not None
    EventsWorker.drain_all()  # send before the process exits
    return emitted


def _run_deploy(args: argparse.Namespace) -> dict:
    """`deploy --work-pool NAME`: the served deployments, registered with a work pool (the server was checked
    in _precheck)."""
    from ragloop.deployments.work_pool import deploy_to_work_pool

    return deploy_to_work_pool(_settings(args), args.work_pool, os.environ["PREFECT_API_URL"]).model_dump(mode="json")


def _human_deploy(summary: dict) -> list[str]:
    lines = [f"work pool {summary['work_pool']} on {summary['api_url']}: {len(summary['deployments'])} deployments "
             f"(lake {summary['lake']})"]
    for d in summary["deployments"]:
        when = ", ".join([f"cron {c}" for c in d["schedules"]] + [f"on {e}" for e in d["triggers"]]) or "on demand"
        lines.append(f"  {d['flow']}/{d['name']}: {when}")
    lines.append(f"start a worker: prefect worker start --pool {summary['work_pool']}")
    return lines


def _human_prompts(summary: dict) -> list[str]:
    if not summary["changed"]:
        lines = [f"{summary['prompts']} prompts, none changed since last recorded"]
    else:
        lines = [f"{c['name']}: {c['status']} ({(c['previous_hash'] or '-')[:12]} -> {c['prompt_hash'][:12]})"
                 for c in summary["changed"]]
    folder = summary.get("prompts_dir")
    if folder:  # a project prompts/ without some file: that prompt is the packaged default, say so
        lines += [f"{name}: packaged default (no {os.path.join(folder, name)}.yaml)"
                  for name, origin in summary.get("sources", {}).items() if origin == "packaged"]
    return lines


def _run_logs(args: argparse.Namespace) -> dict:
    from ragloop.flows.logs import import_logs

    return import_logs(path=args.path, fmt=args.format, lake=args.lake, config_path=args.config)


def _human_logs(summary: dict) -> list[str]:
    r = summary["records"]
    lines = [f"run {summary['run_id']}: {summary['status']}",
             f"{r['read']} records read from {len(summary['files'])} file(s) ({summary['format']}): {r['new']} new, "
             f"{r['known']} already in the lake, {r['quarantined']} lines quarantined; {summary['redactions']} spans "
             f"redacted in {r['redacted']} records; {summary['seconds']} s"]
    if summary.get("path"):
        lines.append(f"written: {summary['path']}")
    lines += [f"quarantined: {q['source']} line {q['line']}" + (f" {q['field']}" if q["field"] else "")
              + f": {q['reason']} ({q['detail']})" for q in summary["quarantine"]]
    if r["quarantined"] > len(summary["quarantine"]):
        lines.append(f"... {r['quarantined'] - len(summary['quarantine'])} more quarantined lines (logs/quarantine/ in the lake)")
    if summary.get("ignored_fields"):
        lines.append("ignored fields (not stored): " + ", ".join(f"{k} {v}" for k, v in summary["ignored_fields"].items()))
    return _with_error(lines, summary)


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[dict], list[str]]]] = {
    "ingest": (_run_ingest, _human_index),
    "index": (_run_index, _human_index),
    "synth": (_run_synth, _human_synth),
    "run": (_run_lifecycle, _human_lifecycle),
    "prompts": (_run_prompts, _human_prompts),
    "deploy": (_run_deploy, _human_deploy),
    "golden": (_run_golden, _human_golden),
    "eval": (_run_eval, _human_eval),
    "monitor": (_run_monitor, _human_monitor),
    "import-beir": (_run_import_beir, _human_import_beir),
    "compare": (_run_compare, _human_compare),
    "bakeoff": (_run_bakeoff, _human_bakeoff),
    "lineage": (_run_lineage, _human_lineage),
    "rollback": (_run_rollback, _human_rollback),
    "promote": (_run_promote, _human_promote),
    "runs": (_run_runs, _human_runs),
    "calibrate": (_run_calibrate, _human_calibrate),
    "export": (_run_export, _human_export),
    "logs": (_run_logs, _human_logs),
    "review": (lambda args: _review_cli().run_review(args), lambda summary: _review_cli().human_review(summary)),
}


def _review_cli():
    """`review`: the review app and its sheet round-trip (ragloop.app.cli); no Prefect."""
    from ragloop.app import cli

    return cli


# Commands that start flow runs (the rest never import prefect).
FLOW_COMMANDS = {"ingest", "index", "synth", "run", "monitor", "eval", "import-beir", "golden import", "logs import",
                 "bakeoff"}


def _command_name(args: argparse.Namespace) -> str:
    """The command with its action for the commands that have actions run as flows (golden import, logs import)."""
    if args.command == "golden":
        return f"golden {args.golden_command}"
    if args.command == "logs":
        return f"logs {args.logs_command}"
    return args.command


def _ad_hoc(args: argparse.Namespace):
    """A CLI command's flow runs are ad hoc: no Prefect heartbeats (flows/common.py: ad_hoc_runs)."""
    command = _command_name(args)
    if command not in FLOW_COMMANDS:
        return contextlib.nullcontext()
    from ragloop.flows.common import ad_hoc_runs

    return ad_hoc_runs()


def _precheck(args: argparse.Namespace) -> None:
    """Usage errors a flow would only find after Prefect starts (a misspelt --source or --lake, a prompt
    file that does not parse, a lake without an index, an unknown --golden, a chunk overlap the model
    cannot take), raised first so they print as one line (exit 2). The checks up to the chunking one
    import neither prefect nor a model (tasks/preflight.py)."""
    from ragloop.tasks.preflight import preflight

    command = _command_name(args)
    for warning in preflight(command, _settings(args), sources=getattr(args, "source", None),
                             golden=getattr(args, "golden", None), retrieval_only=getattr(args, "retrieval_only", False),
                             path=getattr(args, "path", None), index=getattr(args, "index", "auto")):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if args.command in ("index", "run", "import-beir"):
        from ragloop.flows.index import check_chunking
        from ragloop.tasks.settings import load_settings

        chunking = getattr(args, "chunking", None)
        check_chunking(load_settings(args.config, {"chunking": {"strategy": chunking}} if chunking else {}))
    if args.command == "deploy":
        from ragloop.tasks.preflight import check_prefect_server

        check_prefect_server(os.environ.get("PREFECT_API_URL"))


class _UsageErrorsInOneLine(logging.Filter):
    """Prefect logs the exception a flow or task run raised, traceback and all; a ConfigError is a usage
    error that the CLI prints as one line (and the run's final state still names), so its record is
    dropped. Any other exception keeps Prefect's full log."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ragloop.tasks.settings import ConfigError

        return not (record.exc_info and isinstance(record.exc_info[1], ConfigError))


def _quiet_usage_errors() -> None:
    """Install the filter on Prefect's run loggers (by name: prefect need not be imported yet; its
    logging setup adds handlers but keeps a logger's filters)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UsageErrorsInOneLine) for f in logger.filters):
            logger.addFilter(_UsageErrorsInOneLine())


def _emit(summary: dict, as_json: bool, human: Callable[[dict], list[str]]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str, sort_keys=True) + "\n")
    else:
        sys.stdout.write("\n".join(human(summary)) + "\n")
    sys.stdout.flush()


def _emit_error(summary: dict, as_json: bool) -> None:
    """A failed command: with --json its object on stdout (stdout always carries the one object);
    otherwise `error: ...` on stderr, so a pipeline reading stdout gets nothing instead of an error text."""
    if as_json:
        _emit(summary, True, lambda s: [])
    else:
        print(f"error: {summary['error']}", file=sys.stderr, flush=True)


_EXITING = threading.Lock()  # the first interrupted exit prints and leaves; a racing one returns
STOPPED = "the run stopped; `ragloop runs` lists it as failed if it had started"


def _exit_interrupted(why: str, as_json: bool) -> None:
    """`interrupted: <why>` on stderr (with --json also the one object on stdout: status interrupted, exit
    code 130), then leave at once: not sys.exit, as Prefect's exit hooks would wait on its stopped
    temporary server. Returns only when another thread is already leaving."""
    if not _EXITING.acquire(blocking=False):
        return
    print(f"interrupted: {why}", file=sys.stderr, flush=True)
    if as_json:
        _emit({"status": "interrupted", "error": f"interrupted: {why}", "exit_code": EXIT_INTERRUPTED}, True,
              lambda s: [])
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def _quiet_after_interrupt() -> None:
    """After a Ctrl-C, Prefect's temporary server is gone (a terminal signals the whole process group), so
    its log shipping and event workers would print connection errors and whole event dumps on the way out.
    The run's manifest records the interruption; those lines add nothing. Silenced: the stdlib's handler
    error printing (Prefect's log worker honours it) and the event workers' loggers."""
    logging.raiseExceptions = False
    for name in ("prefect.events", "prefect._internal.concurrency"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _stop_on_interrupt(grace_s: float | None = None, as_json: bool = False) -> Callable[[], None]:
    """Ctrl-C stops a command promptly. The terminal sends it to the whole process group, which also
    stops Prefect's temporary server; the interrupted run would then wait on that dead server for
    minutes. So: the first Ctrl-C interrupts the stage (its run manifest records `failed:
    KeyboardInterrupt: Ctrl-C (SIGINT)`; a LanceDB commit is atomic and the lake lock of a dead process is
    taken over) and asks work on other threads to stop (tasks.interrupts: an index run's encoding runs on
    LanceDB's thread), and the process exits 130 at the latest `grace_s` later; a second Ctrl-C exits at
    once. Returns a function that puts the previous SIGINT handler back (main() called in-process leaves
    none behind)."""
    import signal

    from ragloop.tasks import interrupts

    grace_s = INTERRUPT_GRACE_S if grace_s is None else grace_s
    interrupts.clear()

    def on_sigint(signum, frame):
        if interrupts.requested():
            _exit_interrupted("second Ctrl-C; exiting", as_json)
            return
        interrupts.request_stop()
        _quiet_after_interrupt()
        print(f"interrupted: stopping the run (at most {grace_s:.0f} s; Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)
        timer = threading.Timer(grace_s, _exit_interrupted,
                                args=(f"the run did not stop within {grace_s:.0f} s; exiting", as_json))
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt("Ctrl-C (SIGINT)")

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGINT, on_sigint)
    return lambda: signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    args = _parser(json_errors="--json" in (sys.argv[1:] if argv is None else argv)).parse_args(argv)
    restore = _stop_on_interrupt(as_json=args.json)
    try:
        return _main(args)
    finally:
        restore()


def _main(args: argparse.Namespace) -> int:
    if args.json:
        # stdout carries exactly one JSON object; keep stderr to warnings unless asked otherwise.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    import ragloop.flows  # noqa: F401  (sets the offline runtime defaults before prefect is imported)
    from ragloop.tasks import interrupts
    from ragloop.tasks.settings import ConfigError, load_settings

    run, human = COMMANDS[args.command]
    try:
        load_settings(args.config)  # a bad config fails here, before Prefect starts or any work
        _precheck(args)
        _quiet_usage_errors()
        with _ad_hoc(args):
            summary: dict[str, Any] = run(args)
    except KeyboardInterrupt:
        _exit_interrupted(STOPPED, args.json)
        raise  # only when the grace timer is already exiting the process
    except ConfigError as exc:
        one_line = " ".join(str(exc).split())  # a usage error is one line, whatever text it quotes
        _emit_error({"status": "failed", "error": one_line, "exit_code": EXIT_USAGE}, args.json)
        return EXIT_USAGE
    except Exception as exc:  # the flow already recorded the failure in its run manifest
        if interrupts.requested():  # after a Ctrl-C: Prefect's report of it to its stopped server failed
            _exit_interrupted(STOPPED, args.json)
        logging.getLogger("ragloop").debug("command failed", exc_info=True)
        _emit_error({"status": "failed", "error": f"{type(exc).__name__}: {exc}"}, args.json)
        return EXIT_FAILED
    _emit(summary, args.json, human)
    return STATUS_EXIT.get(summary.get("status", "failed"), EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
