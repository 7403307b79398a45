"""`ragloop logs import` and the monitor's production section end to end with fakes: a log whose topic
shifts halfway makes the monitor raise the coverage alert naming the new topic with example questions,
the report shows it, and re-importing adds nothing."""

from __future__ import annotations

import json

from ragloop.flows.cli import main
from ragloop.tasks.storage import Lake
from tests import production_fixtures as pf
from tests.flows.test_monitor_flow import fakes_llm, lake_with_golden  # noqa: F401  (fixtures)


def _cli(args, capsys) -> tuple[int, dict]:
    code = main(args + ["--json"])
    return code, json.loads(capsys.readouterr().out)


def test_logs_import_then_monitor_alerts_on_coverage_and_names_the_new_topic(lake_with_golden, lake_dir, tmp_path, capsys):
    path = pf.write_jsonl(tmp_path / "logs" / "app.jsonl", pf.records(400, days=8))
    code, summary = _cli(["logs", "import", str(path.parent), "--lake", str(lake_dir)], capsys)
    assert code == 0 and summary["status"] == "ok" and summary["records"]["new"] == 400
    code, again = _cli(["logs", "import", str(path), "--lake", str(lake_dir)], capsys)
    assert code == 0 and again["records"] == {"read": 400, "new": 0, "known": 400, "quarantined": 0, "redacted": 0}
    assert Lake(str(lake_dir)).read_logs().num_rows == 400

    code, monitor = _cli(["monitor", "--lake", str(lake_dir)], capsys)
    assert code == 0
    figures = monitor["checks"]["production"]
    by_day = figures["by_day"]
    days = sorted(by_day)
    assert figures["window_logs"] == 400 and by_day[days[0]]["uncovered"] < by_day[days[-1]]["uncovered"] and by_day[days[-1]]["uncovered"] > 0.9
    alert = next(a for a in monitor["alerts"] if a["kind"] == "query_coverage")
    assert "users now ask about" in alert["message"]
    top = alert["details"]["topics"][0]
    assert all(q in alert["message"] for q in top["examples"])
    assert any(w in top["label"] for w in ("refund", "card", "payment", "money", "charge", "credit"))

    html = open(monitor["report"], encoding="utf-8").read()
    assert "<h2>Production</h2>" in html and top["label"] in html and "production.png" in html
    for q in top["examples"]:
        assert q.replace("'", "&#39;") in html
    history = Lake(str(lake_dir)).read_history().to_pylist()
    assert {r["metric"] for r in history if r["scope"] == "production"} >= {"production.uncovered", "production.negative_rate"}
    candidates = Lake(str(lake_dir)).read_ref("production_candidates")["uncovered"]
    assert candidates and all(c["similarity"] < 0.5 for c in candidates)


def test_a_missing_log_file_is_one_line_and_exit_2_before_prefect(lake_dir, tmp_path, capsys):
    code, summary = _cli(["logs", "import", str(tmp_path / "nope.jsonl"), "--lake", str(lake_dir)], capsys)
    assert code == 2 and "not found" in summary["error"]
