"""The HTML report and its markdown twin: real PNG plots, the numbers shown, lake text escaped."""

from __future__ import annotations

import datetime as dt

from ragloop.tasks import reporting

T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.timezone.utc)
HOSTILE = '<script>alert("x")</script> {{ 7*7 }}'


def _data(**overrides) -> reporting.ReportData:
    series = [{"observation_id": f"o{i}", "run_id": f"r{i}", "golden_set_id": "g", "at": T0 + dt.timedelta(days=i),
               "metrics": {"ndcg@10": {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1},
                           "semantic_similarity": {"value": 0.5, "ci_low": None, "ci_high": None}}}
              for i, v in enumerate([0.7, 0.71, 0.5])]
    latest = {"run_id": "r2", "golden_set_id": "g", "items": {"total": 12, "failed": 1}, "gate": {"status": "failed"},
              "metrics": {"ndcg@10": 0.5, "semantic_similarity": 0.5}, "ci": {"ndcg@10": [0.4, 0.6], "semantic_similarity": [0.4, 0.6]},
              "n": {"ndcg@10": 12, "semantic_similarity": 9},
              "by_type": {"single_hop": {"n": 9, "metrics": {"ndcg@10": 0.6, "semantic_similarity": 0.5}, "ci": {"ndcg@10": [0.5, 0.7]}},
                          "unanswerable": {"n": 3, "metrics": {}, "ci": {}}},
              "lineage": {"golden_set_id": "g", "table": {"name": "chunks__x", "version": 4}}}
    values = dict(
        run_id="m1", at="2026-11-25T02:00:00+00:00", status="ok", lake="/lake",
        alerts=[{"kind": "regression", "severity": "critical", "metric": "ndcg@10", "message": "ndcg@10 regressed", "details": {}}],
        series=series, latest_eval=latest,
        worst_items=[{"qa_id": "q1", "qa_type": "single_hop", "question": HOSTILE, "answer": HOSTILE, "metric": "ndcg@10",
                      "score": 0.0, "retrieved_chunk_ids": ["c9"], "reference_chunk_ids": ["c1"], "error": None,
                      "traces": [{"step": "answer", "latency_ms": 12.0, "prompt_tokens": 3, "completion_tokens": 4,
                                  "output": HOSTILE, "error": None}]}],
        checks={"corpus": {"documents": 10, "change_fraction": 0.1}, "retrieval": {"top1_median": 0.6}},
        distributions={"corpus": ("document_length_chars", [10, 20, 30], [10, 25, 40]), "retrieval": ("top1_similarity", None, [0.5, 0.6])},
    )
    values.update(overrides)
    return reporting.ReportData(**values)


def test_report_has_real_plots_and_the_headline_numbers():
    files = reporting.render_report(_data())
    assert set(files) == {"report.html", "trends.png", "by_type.png", "document_length_chars.png", "top1_similarity.png"}
    for name, payload in files.items():
        if name.endswith(".png"):
            assert payload.startswith(b"\x89PNG") and len(payload) > 2000, name
    html = files["report.html"].decode()
    assert "12 items (1 failed)" in html and "gate failed" in html
    assert "0.5000" in html and "[0.4000, 0.6000]" in html and "-0.2100" in html  # value, CI, delta vs previous run
    assert 'src="trends.png"' in html and 'src="top1_similarity.png"' in html
    assert "unanswerable" in html and "ndcg@10 regressed" in html and "chunks__x" in html


def test_text_from_the_lake_is_escaped_never_rendered():
    html = reporting.render_report(_data())["report.html"].decode()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "{{ 7*7 }}" in html and "49" not in html.split("worst", 1)[-1].split("Drift")[0]


def test_an_empty_lake_still_gets_a_report():
    files = reporting.render_report(_data(series=[], latest_eval=None, worst_items=[], alerts=[], checks={}, distributions={}))
    assert set(files) == {"report.html"}
    html = files["report.html"].decode()
    assert "No eval run observed yet" in html and "No alerts" in html


def test_headline_metrics_prefer_the_largest_cutoff_then_answer_metrics():
    names = ["hit@1", "hit@5", "ndcg@3", "ndcg@10", "chunk_ndcg@10", "grounded", "semantic_similarity", "mrr@10"]
    assert reporting.headline_metrics(names) == ["ndcg@10", "hit@5", "mrr@10", "semantic_similarity", "grounded"]
    assert reporting.headline_metrics(names, ["grounded", "missing"]) == ["grounded"]


def test_markdown_summary_carries_the_same_numbers():
    md = reporting.markdown_summary(_data(), "/lake/reports/m1/report.html")
    assert "| ndcg@10 | 0.5000 | [0.4000, 0.6000] |" in md and "**critical** `regression`" in md
    assert "/lake/reports/m1/report.html" in md


def test_figure_rows_never_show_raw_json():
    from ragloop.tasks.reporting import figure_rows

    rows = figure_rows({"observations": 3, "checked": {"ndcg@10": {"baseline": 0.7, "window": [0.5, 0.4]}},
                        "failures": ["a", "b"], "pairing": {"shared_items": 4}})
    by_key = {r["key"]: r for r in rows}
    assert by_key["observations"]["value"] == "3" and by_key["failures"]["value"] == "a, b"
    assert by_key["checked"]["table"] == {"columns": ["baseline", "window"], "rows": [["ndcg@10", "0.7", "0.5, 0.4"]]}
    assert by_key["pairing"]["value"] == "shared_items: 4"
    assert not any("{" in str(r.get("value", "")) for r in rows)


def test_worst_item_shows_texts_and_marks_relevant_and_missed_chunks():
    from ragloop.tasks.reporting import worst_item

    row = {"qa_id": "q", "qa_type": "single_hop", "question": "How many docks?", "answer": "Nine.", "status": "ok",
           "metrics": {"semantic_similarity": 0.2}, "retrieved_chunk_ids": ["c2", "c1"], "error": None}
    golden = {"reference_answer": "Twelve.", "reference_chunk_ids": ["c1", "c3"], "reference_doc_ids": ["a.md"]}
    texts = {"c1": {"doc_id": "a.md", "headings": ["Harbour", "Docks"], "text": "Twelve docks."},
             "c2": {"doc_id": "b.md", "headings": [], "text": "Nine benches."}}
    item = worst_item(row, golden, "semantic_similarity", texts, [])
    assert item["reference_answer"] == "Twelve." and item["score"] == 0.2
    assert [(c["doc_id"], c["relevant"]) for c in item["retrieved"]] == [("b.md", False), ("a.md", True)]
    assert item["retrieved"][1]["headings"] == "Harbour › Docks"
    assert [c["chunk_id"] for c in item["expected_missing"]] == ["c3"]
    assert item["expected_missing"][0]["doc_id"] == "(not in the evaluated index)"


def test_artifact_keys_carry_the_lake():
    from ragloop.tasks.reporting import artifact_key

    a, b = artifact_key("ragloop-monitor", "/lakes/a"), artifact_key("ragloop-monitor", "/lakes/b")
    assert a != b and a.startswith("ragloop-monitor-") and a == artifact_key("ragloop-monitor", "/lakes/a")
    assert all(ch.isalnum() or ch == "-" for ch in a) and a == a.lower()


def test_the_per_type_table_shows_refusal_on_each_side():
    data = _data()
    by_type = data.latest_eval["by_type"]
    by_type["unanswerable"]["metrics"] = {"refusal_recall": 0.25}
    by_type["single_hop"]["metrics"]["false_refusal"] = 0.125
    html = reporting.render_report(data)["report.html"].decode()
    table = html.split("unanswerable", 1)[1].split("</tr>", 1)[0]
    assert "0.250" in table, "the unanswerable row is not blank: its refusal recall"
    assert "false_refusal" in html and "0.125" in html


def test_the_report_shows_which_judges_gate_and_ppi_beside_the_plain_judge_estimate():
    latest = _data().latest_eval
    latest["gate"] = {"status": "passed", "calibration": {
        "faithfulness": {"gated": False, "reason": "12 labels < gate.calibration.min_labels 30", "n": 12, "kappa": 0.05,
                         "kappa_ci": [-0.2, 0.3]},
        "factual_correctness": {"gated": True, "reason": "calibrated: kappa 0.81 on 40 labels", "n": 40, "kappa": 0.81,
                                "kappa_ci": [0.66, 0.93]}}}
    latest["estimates"] = {"faithfulness": {
        "n_labelled": 30, "n_unlabelled": 270, "judge": {"estimate": 0.74, "ci": [0.69, 0.79], "width": 0.1},
        "human": {"estimate": 0.6, "ci": [0.42, 0.78], "width": 0.36}, "ppi": {"estimate": 0.61, "ci": [0.5, 0.72], "width": 0.22}}}
    html = reporting.render_report(_data(latest_eval=latest))["report.html"].decode()
    assert "Judges" in html and "no: reported only" in html and "12 labels &lt; gate.calibration.min_labels 30" in html
    assert "0.81 [0.66, 0.93]" in html and "30 / 270" in html
    assert "0.740 [0.690, 0.790] 0.100" in html and "0.610 [0.500, 0.720] 0.220" in html
    # an uncalibrated judge has no n or kappa, and a run whose every answer is graded no PPI: the monitor used
    # to fail rendering both (seen on a real lake)
    latest["gate"]["calibration"]["answer_relevancy"] = {"gated": False, "judge_id": "9b10e9e3",
                                                          "reason": "uncalibrated judge: run `ragloop calibrate`"}
    latest["estimates"]["grounded"] = {"n_labelled": 18, "n_unlabelled": 0, "confidence": 0.95,
                                       "judge": {"estimate": 0.5, "ci": [0.3, 0.7], "width": 0.4},
                                       "human": {"estimate": 0.2, "ci": [0.0, 0.4], "width": 0.4}}
    html = reporting.render_report(_data(latest_eval=latest))["report.html"].decode()
    assert "uncalibrated judge: run `ragloop calibrate`" in html and "18 / 0" in html
