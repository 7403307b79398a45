"""The lifecycle on an s3:// lake (moto's S3 server) gives the same results as on a local lake: index, an
incremental change, synth with the scripted fakes, eval with promotion, rollback, and a run killed at a
named write point then re-run. Prints the object-store lake's wall-time overhead."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from ragloop.flows import evaluate as eval_flow
from ragloop.flows import index as index_flow
from ragloop.flows import synth as synth_flow
from ragloop.flows.cli import main
from ragloop.tasks.storage import Lake
from tests.conftest import REPO, use_fakes, write_files
from tests.synth_fakes import DOCS, PassageLLM

TABLE = "chunks__hash_fake"


@pytest.fixture
def fakes(monkeypatch, fake_embedder):
    use_fakes(embedder=lambda config: fake_embedder, llm=lambda config: PassageLLM())
    monkeypatch.setenv("RAGLOOP_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    monkeypatch.setenv("RAGLOOP_SYNTH__QUESTION_WRITER", "model")
    monkeypatch.setenv("RAGLOOP_GATE__ON_INCONCLUSIVE", "warn")  # 6 items cannot power a gate; promote anyway


def lake_state(uri: str) -> dict:
    """What a run determines, read through the Lake (any URI): snapshot, chunk rows, serving/golden refs."""
    lake = Lake(uri)
    snapshot = lake.read_ref("documents")["snapshot_id"]
    table = lake.connect_vectors().open_table(TABLE)
    rows = sorted((r["chunk_id"], r["doc_id"], r["text"], tuple(round(v, 6) for v in r["vector"]))
                  for r in table.to_arrow().select(["chunk_id", "doc_id", "text", "vector"]).to_pylist())
    serving = lake.read_ref("serving") or {}
    return {"snapshot_id": snapshot, "chunks": rows, "serving_version": serving.get("version"),
            "golden": sorted(lake.list_golden())}


def _stable(summary: dict) -> dict:
    """A summary without what differs between two equal runs: ids, times, the lake's location."""
    drop = {"run_id", "lineage", "lake", "started_at", "ended_at", "seconds", "paths", "report", "baseline_run_id",
            "timings", "artifacts", "from_run_id", "to_run_id", "serving_before", "scope",
            "results", "per_minute"}  # results: file paths in the lake; per_minute: synth's speed
    if isinstance(summary, dict):
        return {k: _stable(v) for k, v in summary.items() if k not in drop and not k.endswith(("_ms", "_s"))}
    if isinstance(summary, list):
        return [_stable(v) for v in summary]
    return summary


def _lifecycle(uri: str, src, capsys) -> tuple[list[dict], list[dict], float]:
    """index, incremental index, synth, eval + promote, a second change promoted, rollback; (summaries, states, s)."""
    start = time.perf_counter()
    out, states = [], []
    out.append(index_flow.index_corpus(sources=[str(src)], lake=uri))
    states.append(lake_state(uri))
    first = next(iter(DOCS))
    (src / first).write_text(DOCS[first] + "\n\nA later paragraph was added to this document.\n")
    out.append(index_flow.index_corpus(sources=[str(src)], lake=uri))
    states.append(lake_state(uri))
    out.append(synth_flow.synth_golden_set(lake=uri, size=6))
    out.append(eval_flow.evaluate_chain(lake=uri, retrieval="vector", k=3, retrieval_only=True, promote="explicit"))
    (src / "extra.md").write_text("# Extra\n\nAn extra document that the index picks up as new.\n")
    out.append(index_flow.index_corpus(sources=[str(src)], lake=uri))
    out.append(eval_flow.evaluate_chain(lake=uri, retrieval="vector", k=3, retrieval_only=True, promote="explicit"))
    states.append(lake_state(uri))
    capsys.readouterr()
    assert main(["rollback", "--lake", uri, "--json"]) == 0
    out.append(json.loads(capsys.readouterr().out))
    states.append(lake_state(uri))
    return out, states, time.perf_counter() - start


def test_the_lifecycle_on_an_s3_lake_equals_the_local_one(prefect_backend, fakes, s3_lake, tmp_path, capsys):
    local_src = write_files(tmp_path / "local-src", DOCS)
    s3_src = write_files(tmp_path / "s3-src", DOCS)
    # The s3 lake first: the run that goes first also pays the warm-up (imports, the first flow and task runs),
    # so the printed ratio errs against the object store.
    remote, remote_states, remote_s = _lifecycle(s3_lake, s3_src, capsys)
    local, local_states, local_s = _lifecycle(str(tmp_path / "lake"), local_src, capsys)
    assert [s["status"] for s in remote] == ["ok"] * len(remote), [s.get("error") for s in remote]
    assert remote[1]["documents"]["changed"] == 1 and remote[4]["documents"]["new"] == 1
    assert remote[3]["promoted"] and remote[5]["promoted"]
    assert remote_states == local_states, "the same chunks, vectors, snapshot, golden sets and serving versions"
    assert [_stable(s) for s in remote] == [_stable(s) for s in local]
    assert remote_states[-1]["serving_version"] == remote_states[1]["serving_version"] != remote_states[2]["serving_version"]
    print(f"\nOBJECT-STORE OVERHEAD (moto on 127.0.0.1, {len(DOCS)} docs, 7 steps): local {local_s:.1f} s, "
          f"s3 {remote_s:.1f} s, ratio {remote_s / local_s:.2f}", file=sys.stderr)


@pytest.mark.parametrize("kill", ["commit_run:1:post", "move_into_place:3:pre"])
def test_an_index_run_killed_at_a_write_point_on_s3_converges_on_rerun(prefect_backend, fakes, s3_lake, tmp_path, kill):
    from tests.reliability.test_crash_recovery import _env

    v1 = write_files(tmp_path / "v1", DOCS)
    v2 = write_files(tmp_path / "v2", {**DOCS, "extra.md": "# Extra\n\nAn extra document, new in v2.\n"})
    clean = str(tmp_path / "clean")
    for lake in (clean, s3_lake):
        assert index_flow.index_corpus(sources=[str(v1)], lake=lake)["status"] == "ok"
    assert index_flow.index_corpus(sources=[str(v2)], lake=clean)["status"] == "ok"

    child = subprocess.run([sys.executable, "-m", "tests.reliability.crash_worker", "index", "--lake", s3_lake,
                            "--source", str(v2), "--kill", kill], env=_env(), cwd=str(tmp_path), capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -9, (child.returncode, child.stderr[-2000:])
    rerun = index_flow.index_corpus(sources=[str(v2)], lake=s3_lake)  # takes over the dead pid's lease at once
    assert rerun["status"] == "ok", rerun
    got, want = lake_state(s3_lake), lake_state(clean)
    assert (got["snapshot_id"], got["chunks"]) == (want["snapshot_id"], want["chunks"])
    assert Lake(s3_lake).read_ref("serving")["table"] == TABLE


def test_a_missing_bucket_or_an_unreachable_endpoint_is_a_usage_error_before_any_run(s3_endpoint, tmp_path, capsys,
                                                                                      monkeypatch):
    """ragloop never creates a bucket: a misspelt one exits 2 naming it, before any flow run; so does an
    endpoint nothing answers on."""
    import boto3

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSome text.\n")
    assert main(["index", "--source", str(docs), "--lake", "s3://no-such-bucket-here/lake"]) == 2
    err = capsys.readouterr().err
    assert "bucket 'no-such-bucket-here' does not exist" in err and "Traceback" not in err
    assert "no-such-bucket-here" not in {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    assert main(["runs", "--lake", "s3://any-bucket/lake"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach bucket 'any-bucket'" in err and "AWS_ENDPOINT_URL" in err


def test_missing_credentials_or_allow_http_are_usage_errors_before_any_run(s3_lake, tmp_path, capsys, monkeypatch):
    """What the bucket check alone would let through, and LanceDB or boto3 would fail on mid-run: no
    credentials, a plain-HTTP endpoint without AWS_ALLOW_HTTP. Each exits 2 naming what to set."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSome text.\n")
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    assert main(["index", "--source", str(docs), "--lake", s3_lake]) == 2
    assert "set AWS_ALLOW_HTTP=true" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert main(["runs", "--lake", s3_lake]) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials found" in err and "Traceback" not in err
