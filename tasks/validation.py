"""great-expectations suites for the documents snapshot and the chunks table (pure: DataFrame in, report out)."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass
class ValidationReport:
    suite: str
    success: bool
    evaluated: int
    failures: list[dict]  # one per failed expectation: type, kwargs, unexpected_count, sample
    result: dict  # the full GE result (JSON-able), stored with the run
    reused_from: str | None = None  # the run whose verdict on the same data this is (see reuse)

    def summary(self) -> dict:
        out = {"suite": self.suite, "success": self.success, "evaluated": self.evaluated, "failures": self.failures}
        return out if self.reused_from is None else {**out, "reused_from": self.reused_from}


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # no per-run INFO chatter
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


# A suite's verdict is a pure function of its frame and expectations: a re-run on the same data (a no-op
# re-index in a warm worker) reuses it instead of paying great-expectations' ~0.3 s of bookkeeping.
_REPORTS: OrderedDict[tuple, ValidationReport] = OrderedDict()
_REPORTS_KEPT = 8


def _frame_digest(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(repr(list(frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def suite_code() -> str:
    """Identity of the suites' definitions: this module's code and the great-expectations release."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(metadata.version("great_expectations").encode())
    return digest.hexdigest()[:16]


def _run_suite(name: str, frame: pd.DataFrame, expectations: list, subject: dict | None = None) -> ValidationReport:
    """The suite's report; the same frame and expectations in this process give the stored one (its
    result marked `meta.reused_result`). With `subject` (what immutable data the frame is a profile of,
    e.g. a snapshot id), the result records it under `meta.ragloop` for `reuse` by a later run."""
    key = (name, _frame_digest(frame), tuple(repr(e) for e in expectations))
    if key in _REPORTS:
        _REPORTS.move_to_end(key)
        old = _REPORTS[key]
        result = copy.deepcopy(old.result)
        result.setdefault("meta", {})["reused_result"] = True
        report = ValidationReport(old.suite, old.success, old.evaluated, copy.deepcopy(old.failures), result)
    else:
        report = _validate(name, frame, expectations)
        _REPORTS[key] = report
        while len(_REPORTS) > _REPORTS_KEPT:
            _REPORTS.popitem(last=False)
        report = ValidationReport(report.suite, report.success, report.evaluated, copy.deepcopy(report.failures),
                                  copy.deepcopy(report.result))
    return report if subject is None else stamp(report, subject)


def stamp(report: ValidationReport, subject: dict) -> ValidationReport:
    """The report with its result naming `subject` (the immutable data its frame profiles) and the suite
    code under `meta.ragloop`, so a later run may `reuse` it. Returns the same report, stamped."""
    report.result.setdefault("meta", {})["ragloop"] = {"subject": subject, "suite_code": suite_code(),
                                                       "evaluated": report.evaluated}
    return report


def reuse(stored: dict[str, Any] | None, suite: str, subject: dict, from_run: str) -> ValidationReport | None:
    """The verdict an earlier run stored (`stored`: its result, as Lake.write_validation wrote it) when
    it passed on the same subject with the same suite code: a suite's verdict is a function of its data,
    and the subject names immutable data (a content-addressed snapshot, a table version). The result is
    copied with `meta.reused_from` = the run that ran the suite (from_run, or the one it reused from).
    None when it cannot be reused (then validate)."""
    mine = ((stored or {}).get("meta") or {}).get("ragloop") or {}
    if not stored or not stored.get("success") or mine.get("subject") != subject or mine.get("suite_code") != suite_code():
        return None
    result = copy.deepcopy(stored)
    origin = result["meta"].get("reused_from") or from_run  # the run that ran the suite, through any reuses
    result["meta"]["reused_from"] = origin
    return ValidationReport(suite, True, int(mine.get("evaluated") or 0), [], result, origin)


# (suite name, its expectations' definitions) -> the batch definition and suite registered for them. Registering
# a data source, asset and suite serializes the whole context config each time (about a third of a suite run).
_REGISTERED: dict[tuple[str, str], tuple] = {}


def _registered(name: str, expectations: list) -> tuple:
    """The batch definition and suite of these expectations, registered in the context once per process."""
    import great_expectations as gx

    definition = hashlib.sha256(repr([repr(e) for e in expectations]).encode()).hexdigest()[:12]
    key = (name, definition)
    if key not in _REGISTERED:
        context = _context()
        source = context.data_sources.add_or_update_pandas(f"ragloop_{name}_{definition}")
        batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=f"{name}_{definition}", expectations=expectations))
        _REGISTERED[key] = (batch_definition, suite)
    return _REGISTERED[key]


def _validate(name: str, frame: pd.DataFrame, expectations: list) -> ValidationReport:
    """GE's verdict on the frame. Result format BASIC: each expectation's counts and up to 20 unexpected
    values; SUMMARY (GE's default) adds their value counts and row indexes, which nothing here reads, and
    took a quarter of a suite run. The verdict is the same."""
    batch_definition, suite = _registered(name, expectations)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="BASIC")
    raw = result.to_json_dict()
    failures = []
    for item in raw["results"]:
        if item["success"]:
            continue
        cfg = item["expectation_config"]
        res = item.get("result") or {}
        failures.append(
            {
                "expectation": cfg["type"],
                "kwargs": {k: v for k, v in cfg["kwargs"].items() if k != "batch_id"},
                "unexpected_count": res.get("unexpected_count"),
                "sample": (res.get("partial_unexpected_list") or [])[:5],
                "error": (item.get("exception_info") or {}).get("exception_message"),
            }
        )
    return ValidationReport(name, bool(raw["success"]), len(frame), failures, raw)


def validate_documents(frame: pd.DataFrame, subject: dict | None = None) -> ValidationReport:
    """Snapshot suite over a profile (doc_id, text_length, content_sha256, bytes, mime; no texts):
    ids unique and present, text non-empty, hashes well-formed, sizes positive. `subject`: see _run_suite."""
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="doc_id"),
        gxe.ExpectColumnValuesToBeUnique(column="doc_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="text_length"),
        gxe.ExpectColumnValuesToBeBetween(column="text_length", min_value=1),
        gxe.ExpectColumnValueLengthsToEqual(column="content_sha256", value=64),
        gxe.ExpectColumnValuesToBeBetween(column="bytes", min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="mime"),
    ]
    return _run_suite("documents", frame, expectations, subject)


def validate_chunks(table_frame: pd.DataFrame, written: pd.DataFrame, dim: int, max_tokens: int,
                    subject: dict | None = None) -> ValidationReport:
    """Chunks suite: ids unique, one row per (doc, position), token counts within the model's limit,
    and for rows written this run: non-empty text, vectors of the right dimension and unit norm.
    `subject`: see _run_suite."""
    import great_expectations.expectations as gxe

    frame = table_frame.merge(written, on="chunk_id", how="left")
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="chunk_id"),
        gxe.ExpectColumnValuesToBeUnique(column="chunk_id"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["doc_id", "position"]),
        gxe.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=1, max_value=max_tokens),
        gxe.ExpectColumnValuesToBeBetween(column="text_length", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="vector_dim", value_set=[dim]),
        gxe.ExpectColumnValuesToBeBetween(column="vector_norm", min_value=0.99, max_value=1.01),
    ]
    if frame.empty:
        frame = pd.DataFrame(columns=["chunk_id", "doc_id", "position", "n_tokens", "text_length", "vector_dim", "vector_norm"])
    return _run_suite("chunks", frame, expectations, subject)


GOLDEN_STATUSES = ("active", "stale", "retired", "outdated")  # what synth, import and review write


def golden_frame(rows: list[dict], chunk_texts: dict[str, str], answerable: dict[str, bool]) -> pd.DataFrame:
    """One row per golden item: qa_id, question, qa_type, status, and the checks GE cannot express as
    column expectations, as booleans (True for items they do not apply to: not active, or unanswerable):
    references_in_index (every reference_chunk_id is in chunk_texts, the serving index's chunk_id -> text)
    and evidence_in_chunks (every span's chunk is indexed and 0 <= start < end <= len(its text)).
    answerable: qa_type -> whether its items must be answered (unknown types count as answerable)."""
    out = []
    for r in rows:
        checked = r.get("status") == "active" and answerable.get(r.get("qa_type"), True)
        spans = r.get("evidence") or []
        out.append({
            "qa_id": r.get("qa_id"), "question": r.get("question"), "qa_type": r.get("qa_type"), "status": r.get("status"),
            "references_in_index": not checked or all(c in chunk_texts for c in r.get("reference_chunk_ids") or []),
            "evidence_in_chunks": not checked or all(
                e["chunk_id"] in chunk_texts and 0 <= e["start"] < e["end"] <= len(chunk_texts[e["chunk_id"]]) for e in spans),
        })
    columns = ["qa_id", "question", "qa_type", "status", "references_in_index", "evidence_in_chunks"]
    return pd.DataFrame(out, columns=columns)


def validate_golden(rows: list[dict], chunk_texts: dict[str, str], answerable: dict[str, bool]) -> ValidationReport:
    """Golden-set suite, run on a version before it becomes a line's head: qa_id present and unique,
    question present and not whitespace-only, qa_type registered (the keys of `answerable`), status one
    of GOLDEN_STATUSES, and for active answerable items every reference chunk in the serving index and
    every evidence span inside its chunk (golden_frame). Each failure names its expectation and column."""
    import great_expectations.expectations as gxe

    frame = golden_frame(rows, chunk_texts, answerable)
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="qa_id"),
        gxe.ExpectColumnValuesToBeUnique(column="qa_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="question"),
        gxe.ExpectColumnValuesToMatchRegex(column="question", regex=r"\S"),
        gxe.ExpectColumnValuesToBeInSet(column="qa_type", value_set=sorted(answerable)),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(GOLDEN_STATUSES)),
        gxe.ExpectColumnValuesToBeInSet(column="references_in_index", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="evidence_in_chunks", value_set=[True]),
    ]
    report = _run_suite("golden", frame, expectations)
    for failure in report.failures:  # a computed check's sample is [False]: name the items instead
        column = failure["kwargs"].get("column")
        if column in ("references_in_index", "evidence_in_chunks"):
            failure["sample"] = frame.loc[~frame[column].astype(bool), "qa_id"].head(5).tolist()
    return report
