"""Chunk statistics of a docs folder with the real embedder's tokenizer (issue 17, kind 9).

Usage: PYTHONPATH=. .venv/bin/python bench/chunk_stats.py DIR [--show N]
Prints chunk count, token sizes, the share under 20 tokens, heading-only and fence-opener-only
chunks, and chunks whose code fences are unbalanced (an odd number of fence lines).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics

from ragloop.tasks import ingestion
from ragloop.tasks.chunking import Chunker
from ragloop.tasks.embedding import load_embedder
from ragloop.tasks.settings import IngestConfig, load_settings

FENCE = re.compile(r"^ *(`{3,}|~{3,})", re.M)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--show", type=int, default=0, help="print the N shortest chunks")
    args = parser.parse_args()
    settings = load_settings(overrides={"lake": "/nonexistent"})
    embedder = load_embedder(settings.embedding)
    chunker = Chunker(settings.chunking, embedder.counter)
    docs = [d for d in ingestion.iter_sources([args.root], IngestConfig()) if not isinstance(d, ingestion.Quarantined)]
    chunks = chunker.chunk_documents(docs)
    tokens = [c.n_tokens for c in chunks]
    small = [c for c in chunks if c.n_tokens < 20]
    print(json.dumps({
        "documents": len(docs), "chunks": len(chunks), "capacity": chunker.capacity,
        "under_20_tokens": len(small), "under_20_pct": round(100 * len(small) / max(len(chunks), 1), 2),
        "heading_only": sum(bool(re.fullmatch(r"#{1,6} .*", c.text.strip())) for c in chunks),
        "fence_opener_only": sum(bool(re.fullmatch(r"(```|~~~)\S*", c.text.strip())) for c in chunks),
        "unbalanced_fences": sum(len(FENCE.findall(c.text)) % 2 for c in chunks),
        "tokens": {"mean": round(statistics.mean(tokens), 1), "median": statistics.median(tokens),
                   "max": max(tokens), "total": sum(tokens)},
    }, indent=1))
    for c in sorted(small, key=lambda c: c.n_tokens)[:args.show]:
        print(f"{c.n_tokens:>3} {c.doc_id}: {c.text[:120]!r}")


if __name__ == "__main__":
    main()
