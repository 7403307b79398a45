"""A child process for the crash tests: runs the index or synth flow with the deterministic fakes and
can SIGKILL itself at an exact point (the Nth call of a storage/index operation, before or after it).

    python -m tests.reliability.crash_worker index|synth --lake DIR [--source DIR] [--kill TARGET:N:pre|post]
                                                         [--pause TARGET:N:SECONDS]
    python -m tests.reliability.crash_worker bakeoff --lake DIR --file BAKEOFF.yaml [--kill ...]

Prints READY once imported (the parent's timer starts there), PAUSED when a --pause point is reached
(it then sleeps there, mid-run, holding whatever the run holds), COUNTS <json> (calls per target) and
DONE <json summary> when the flow returns. The hooks are installed before the flows are imported,
so the Prefect task wrappers capture the hooked functions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter

COUNTS: Counter = Counter()

# target name -> (owner import path, attribute)
TARGETS = {
    "move_into_place": ("ragloop.tasks.storage:Lake", "_move_into_place"),  # every atomic write's rename
    "write_run": ("ragloop.tasks.storage:Lake", "write_run"),
    "write_ref": ("ragloop.tasks.storage:Lake", "write_ref"),
    "snapshot_write": ("ragloop.tasks.storage:SnapshotWriter", "write"),
    "snapshot_finish": ("ragloop.tasks.storage:SnapshotWriter", "finish"),
    "store_open": ("ragloop.tasks.indexing:ChunkStore", "__init__"),
    "replace_documents": ("ragloop.tasks.indexing:ChunkStore", "replace_documents"),
    "commit_run": ("ragloop.tasks.indexing:ChunkStore", "commit_run"),  # an index run's one LanceDB commit
    "delete_documents": ("ragloop.tasks.indexing:ChunkStore", "delete_documents"),
    "refresh_indexes": ("ragloop.tasks.indexing:ChunkStore", "refresh_indexes"),
    "tag": ("ragloop.tasks.indexing:ChunkStore", "tag"),
    "encode": ("ragloop.tasks.embedding:HashEmbedder", "encode"),
    "write_golden": ("ragloop.tasks.storage:Lake", "write_golden"),
    "write_eval": ("ragloop.tasks.storage:Lake", "write_eval"),  # an eval run's items and traces (a bake-off's cells)
    "record_prompt": ("ragloop.tasks.storage:Lake", "record_prompt"),
}


def _owner(path: str):
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def install_hooks(kill: tuple[str, int, str] | None, pause: tuple[str, int, float] | None = None) -> None:
    for target, (owner_path, attr) in TARGETS.items():
        owner = _owner(owner_path)
        real = getattr(owner, attr)

        def hooked(*args, __real=real, __target=target, **kwargs):
            COUNTS[__target] += 1
            if pause and pause[0] == __target and pause[1] == COUNTS[__target]:
                print("PAUSED", flush=True)
                time.sleep(pause[2])
            if kill and kill[0] == __target and kill[1] == COUNTS[__target] and kill[2] == "pre":
                os.kill(os.getpid(), signal.SIGKILL)
            result = __real(*args, **kwargs)
            if kill and kill[0] == __target and kill[1] == COUNTS[__target] and kill[2] == "post":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, attr, hooked)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=["index", "synth", "bakeoff"])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--source")
    parser.add_argument("--file", help="bakeoff: the bake-off file")
    parser.add_argument("--kill", help="TARGET:N:pre|post")
    parser.add_argument("--pause", help="TARGET:N:SECONDS")
    args = parser.parse_args(argv)
    kill = pause = None
    if args.kill:
        target, n, when = args.kill.split(":")
        kill = (target, int(n), when)
    if args.pause:
        target, n, seconds = args.pause.split(":")
        pause = (target, int(n), float(seconds))
    import ragloop.flows  # noqa: F401  (offline defaults)
    from ragloop.tasks import providers
    from ragloop.tasks.embedding import HashEmbedder

    install_hooks(kill, pause)
    from ragloop.flows import index as index_flow
    from ragloop.flows import synth as synth_flow
    from tests.flows.test_synth_flow import PassageLLM

    embedder = HashEmbedder(dim=32, max_tokens=64)  # what the fake_embedder fixture builds
    providers.install(providers.Providers(embedder=lambda config: embedder, llm=lambda config: PassageLLM()))
    print("READY", flush=True)
    if args.stage == "bakeoff":  # through the CLI, as a person runs it (its checks, then the flow)
        from ragloop.flows.cli import main as cli

        code = cli(["bakeoff", args.file, "--lake", args.lake, "--json"])
        print("COUNTS " + json.dumps(COUNTS), flush=True)
        print("DONE " + json.dumps({"exit": code}), flush=True)
        return 0
    if args.stage == "index":
        summary = index_flow.index_corpus(sources=[args.source], lake=args.lake)
    else:
        summary = synth_flow.synth_golden_set(lake=args.lake)
    print("COUNTS " + json.dumps(COUNTS), flush=True)
    print("DONE " + json.dumps({k: summary.get(k) for k in ("run_id", "status", "table", "golden_set_id")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
