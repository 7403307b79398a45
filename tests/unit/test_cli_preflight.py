"""Usage errors come first, in one line: the CLI's pre-flight stops a misspelt path, a bad config value or
prompt file, a lake without an index, before any flow (so before prefect is even imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Runs the CLI in a fresh interpreter; a last stderr line of its own says whether prefect got imported.
DRIVER = """
import sys
from ragloop.flows.cli import main
code = main(sys.argv[1:])
sys.stderr.write("PREFECT_IMPORTED=%s\\n" % ("prefect" in sys.modules))
sys.exit(code)
"""


def _ragloop(cwd, *args, env=None) -> tuple[int, list[str], list[str], bool]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAGLOOP_")}
    clean["RAGLOOP_PROMPTS_DIR"] = str(REPO / "prompts")
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=120)
    err = done.stderr.splitlines()
    imported = err.pop() == "PREFECT_IMPORTED=True"
    return done.returncode, done.stdout.splitlines(), err, imported


@pytest.fixture
def broken_prompts(tmp_path):
    folder = tmp_path / "bad_prompts"
    folder.mkdir()
    (folder / "qa_single_hop.yaml").write_text("name: qa_single_hop\ntemplate: [unclosed\n")
    return folder


@pytest.mark.parametrize("args, env, message", [
    (["index", "--source", "/nope/docs"], {}, "error: ingest.sources: not found: /nope/docs"),
    (["ingest", "--source", "docs", "--source", "/nope/b"], {}, "error: ingest.sources: not found: /nope/b"),
    (["synth", "--lake", "empty-lake"], {}, "no index yet"),
    (["eval", "--lake", "empty-lake"], {}, "no index yet"),
    (["runs", "--lake", "foo://bucket/lake"], {}, "error: lake foo://bucket/lake: cannot be opened"),
    (["index", "--lake", "foo://bucket/lake", "--source", "docs"], {}, "cannot be opened"),
    (["import-beir", "/nope/scifact"], {}, "error: import-beir: not found: /nope/scifact"),
    (["golden", "import", "/nope/g.jsonl"], {}, "error: golden import: not found: /nope/g.jsonl"),
    (["synth"], {"RAGLOOP_SYNTH__SIZE": "0"}, "synth.size"),
    (["synth", "--lake", "empty-lake"], {"RAGLOOP_PROMPTS_DIR": "bad_prompts"}, "qa_single_hop.yaml: invalid YAML"),
    (["index", "--lake", "a-file", "--source", "docs"], {}, "error: lake a-file: is a file; a lake is a folder"),
    (["index", "--source", "docs"], {"RAGLOOP_RUNNER__KIND": "dask", "RAGLOOP_RUNNER__ADDRESS": "tcp://127.0.0.1:abc"},
     "error: runner.address: tcp://127.0.0.1:abc: not host:port"),
], ids=["index-source", "ingest-second-source", "synth-no-index", "eval-no-index", "runs-bad-lake-uri",
        "index-bad-lake-uri", "beir-path", "golden-import-path", "bad-config-value", "bad-prompt-file",
        "lake-is-a-file", "dask-address-port"])
def test_a_usage_error_is_one_line_exit_2_before_prefect(tmp_path, broken_prompts, args, env, message):
    (tmp_path / "docs").mkdir()
    (tmp_path / "a-file").write_text("not a lake")
    code, out, err, prefect_imported = _ragloop(tmp_path, *args, env=env)
    assert (code, out, len(err)) == (2, [], 1), (out, err)  # the error on stderr: stdout stays clean
    assert err[0].startswith("error: ") and message in err[0]
    assert not prefect_imported
    assert not (tmp_path / "empty-lake").exists(), "a checked lake is not created"


def test_a_usage_error_in_json_mode_is_one_json_object(tmp_path):
    code, out, err, prefect_imported = _ragloop(tmp_path, "synth", "--lake", "empty-lake", "--json")
    assert (code, len(out), err, prefect_imported) == (2, 1, [], False)
    assert json.loads(out[0]) == {"status": "failed", "exit_code": 2,
                                  "error": f"the lake {tmp_path / 'empty-lake'} has no index yet: run `ragloop index` "
                                           "first (or check --lake)"}


@pytest.mark.parametrize("args", [
    ["review"], ["calibrate"], ["export", "sft", "--out", "x.jsonl"], ["golden", "use", "synthetic"],
    ["rollback"], ["promote", "r1"],
], ids=lambda a: " ".join(a[:2]))
def test_a_command_on_an_existing_lake_does_not_create_a_misspelt_one(tmp_path, args):
    code, out, err, prefect_imported = _ragloop(tmp_path, *args, "--lake", "lakke")
    assert (code, out, len(err), prefect_imported) == (2, [], 1, False), (out, err)
    assert err[0] == f"error: lake {tmp_path / 'lakke'}: not found: run `ragloop index` first (or check --lake)"
    assert not (tmp_path / "lakke").exists()


def test_a_lake_directory_without_runs_is_a_usage_error_too(tmp_path):
    (tmp_path / "lake").mkdir()
    code, out, err, _ = _ragloop(tmp_path, "rollback", "--lake", "lake")
    assert code == 2 and out == [] and err == [f"error: lake {tmp_path / 'lake'}: no runs yet: run `ragloop index` first (or check --lake)"]


def test_the_monitor_on_a_lake_without_runs_warns_before_reporting_nothing_to_watch(tmp_path):
    from ragloop.tasks.preflight import preflight
    from ragloop.tasks.settings import load_settings

    settings = load_settings(overrides={"lake": str(tmp_path / "lakke")})
    assert preflight("monitor", settings) == [f"lake {tmp_path / 'lakke'} has no runs yet: nothing to watch (check --lake)"]
    assert not (tmp_path / "lakke").exists(), "the check creates nothing"


def test_eval_index_choice_names_a_missing_index_before_any_flow(tmp_path):
    from ragloop.tasks.preflight import check_index_choice
    from ragloop.tasks.settings import ConfigError
    from ragloop.tasks.storage import Lake

    lake = Lake(str(tmp_path / "lake"))
    lake.write_ref("serving", {"table": "chunks__m", "version": 3})
    check_index_choice(lake, "auto")
    check_index_choice(lake, "serving")
    with pytest.raises(ConfigError, match=r"^--index candidate: no candidate index pending in "):
        check_index_choice(lake, "candidate")
    lake.write_ref("candidate", {"table": "chunks__other", "version": 1})
    lake.delete_ref("serving")
    check_index_choice(lake, "candidate")
    with pytest.raises(ConfigError, match=r"^--index serving: nothing is served yet"):
        check_index_choice(lake, "serving")


@pytest.mark.parametrize("args, names", [
    (["index", "--sources", "corpus"], "unrecognized arguments: --sources corpus"),
    (["indx"], "invalid choice: 'indx'"),
    (["index", "--limit"], "unrecognized arguments: --limit"),
    (["index", "--source"], "argument --source: expected one argument"),  # raised by the command's own parser
])
def test_an_argparse_usage_error_is_one_line_or_the_one_json_object(capsys, args, names):
    """A misspelt option or command keeps the usage-error contract: one `error:` line (no usage block), exit 2;
    with --json, the one error object on stdout and nothing on stderr."""
    from ragloop.flows.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and names in err and "--help" in err

    with pytest.raises(SystemExit) as stop:
        main([*args, "--json"])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and err == ""
    reported = json.loads(out)
    assert reported["status"] == "failed" and reported["exit_code"] == 2 and names in reported["error"]


def test_a_server_that_answers_in_another_protocol_is_no_scheduler_and_says_so():
    """An HTTP server on runner.address answers at once; its bytes read as a Dask frame length once made
    distributed allocate exabytes (MemoryError) and that text reached the user."""
    import socket
    import threading
    import time

    from ragloop.tasks.preflight import check_scheduler
    from ragloop.tasks.settings import ConfigError

    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" * 64)
            time.sleep(0.5)
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(ConfigError) as caught:
            check_scheduler(f"tcp://127.0.0.1:{server.getsockname()[1]}", timeout_s=5)
    finally:
        server.close()
    message = str(caught.value)
    assert message.startswith("runner.address: tcp://127.0.0.1:") and "8787" in message
    assert "MemoryError" not in message and "EiB" not in message
