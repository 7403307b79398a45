"""Small builders shared by the reliability tests: a station corpus, an indexed lake with an imported
golden set, and readers of the lake's state for exact comparisons."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lancedb

from ragloop.flows import golden as golden_flow
from ragloop.flows import index as index_flow
from tests.conftest import write_files


def station_docs(n: int) -> dict[str, str]:
    return {
        f"station{i:02d}.md": f"# Station {i}\n\nStation {i} has {10 + i} docks and {i % 4} chargers. "
        f"It opens at {5 + i % 4} in the morning and rides from it cost {i % 3 + 1} credits."
        for i in range(n)
    }


def index_stations(tmp_path: Path, lake_dir: Path, n: int, extra: dict[str, str] | None = None) -> dict:
    src = write_files(tmp_path / "src", {**station_docs(n), **(extra or {})})
    summary = index_flow.index_corpus(sources=[str(src)], lake=str(lake_dir))
    assert summary["status"] == "ok", summary
    return summary


def chunk_rows(lake_dir: Path, version: int | None = None) -> list[dict]:
    """Every row of the hash-embedder table (at a version if given), vectors as lists."""
    table = lancedb.connect(str(lake_dir / "lancedb")).open_table("chunks__hash_fake")
    if version is not None:
        table.checkout(version)
    return table.to_arrow().to_pylist()


def import_station_golden(tmp_path: Path, lake_dir: Path, question: str = "[item-{i:02d}] How many docks does station {i} have?") -> dict:
    """One single-hop item per station document, referencing that document's chunk."""
    by_doc = {r["doc_id"]: r["chunk_id"] for r in chunk_rows(lake_dir)}
    lines = []
    for doc_id, chunk_id in sorted(by_doc.items()):
        i = int(doc_id[len("station"):-len(".md")]) if doc_id.startswith("station") else None
        if i is None:
            continue
        lines.append(json.dumps({"question": question.format(i=i), "reference_answer": f"Station {i} has {10 + i} docks.",
                                 "reference_chunk_ids": [chunk_id], "qa_type": "single_hop"}))
    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary = golden_flow.import_golden_set(path=str(path), lake=str(lake_dir))
    assert summary["status"] == "ok", summary
    return summary


def copy_answer(messages: list[dict]) -> str:
    """An answer made of the first passage's last sentence: grounded by construction."""
    passages = re.findall(r'"""\n(.*?)\n"""', messages[-1]["content"], re.S)
    if passages:
        return passages[0].splitlines()[-1].split(". ")[-1]
    return "The documents do not say."
