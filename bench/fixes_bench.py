"""Before/after of small fixes proposed for tasks/ (product venv), applied here as subclasses only:
the product code is not changed. Each checks that the output is identical, then times both.

- chunk_once: Chunker._make_chunks counts every chunk's tokens again although _enforce_limit has
  just tokenized it (truncate() returns the count); take the count from there.
- weights_hash_cached: every flow run builds a new embedder and re-hashes the 90 MB of weights
  (weights_sha256); cache the digest by (path, size, mtime) as tasks/llm.py does for the GGUF.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import lru_cache
from pathlib import Path

from common import load_documents, write_json


def patched_chunker_class():
    from tasks.chunking import Chunk, Chunker, sha256_text

    class ChunkOnce(Chunker):
        def _make_chunks(self, doc, pieces, extra):
            chunks = []
            seen: dict[str, int] = {}
            for offset, text, headings in pieces:
                for piece_offset, piece, n_tokens in self._enforce_limit_counted(offset, text):
                    if not piece.strip():
                        continue
                    occurrence = seen.get(piece, 0)
                    seen[piece] = occurrence + 1
                    chunk_id = sha256_text(f"{doc.doc_id}\x00{self.hash}\x00{occurrence}\x00{piece}")[:32]
                    metadata = {"char_start": piece_offset, "char_end": piece_offset + len(piece), **extra}
                    chunks.append(Chunk(chunk_id=chunk_id, doc_id=doc.doc_id, doc_sha256=doc.content_sha256,
                                        text=piece, text_sha256=sha256_text(piece), headings=headings,
                                        position=len(chunks), n_tokens=n_tokens, chunker_hash=self.hash,
                                        metadata=metadata))
            return chunks

        def _enforce_limit_counted(self, offset, text):
            limit = self.counter.max_tokens
            while text:
                head, n = self.counter.truncate(text, limit)
                if n <= limit:
                    yield offset, text, n
                    return
                yield offset, head, limit  # a cut at token `limit`'s end re-tokenizes to `limit` tokens
                rest = text[len(head):]
                stripped = rest.lstrip()
                offset += len(head) + len(rest) - len(stripped)
                text = stripped

    return Chunker, ChunkOnce


def to_documents(live: Path):
    from tasks.schemas import Document

    docs = []
    for doc_id, text in load_documents(live):
        mime = "text/markdown" if doc_id.endswith(".md") else "text/plain"
        docs.append(Document(doc_id=doc_id, source_uri=doc_id, content_sha256="x", text=text, title="", mime=mime,
                             bytes=len(text), metadata={}, ingested_at=None))
    return docs


def bench_chunking(live: Path, repeats: int) -> dict:
    from tasks.embedding import load_embedder
    from tasks.settings import load_settings

    settings = load_settings()
    counter = load_embedder(settings.embedding).counter
    before_cls, after_cls = patched_chunker_class()
    docs = to_documents(live)
    out = {"documents": len(docs)}
    results, times = {}, {"before": [], "after": []}
    chunkers = {"before": before_cls(settings.chunking, counter), "after": after_cls(settings.chunking, counter)}
    for _ in range(repeats):  # interleaved, so a change in the machine's load hits both alike
        for name, chunker in chunkers.items():
            t = time.perf_counter()
            results[name] = chunker.chunk_documents(docs)
            times[name].append(time.perf_counter() - t)
    for name in times:
        out[f"{name}_s"] = statistics.median(times[name])
    out["chunks"] = len(results["before"])
    out["identical"] = results["before"] == results["after"]
    out["speedup"] = out["before_s"] / out["after_s"]
    return out


def bench_weights_hash(repeats: int) -> dict:
    from tasks import embedding
    from tasks.settings import load_settings

    config = load_settings().embedding
    before = []
    for _ in range(repeats):
        emb = embedding.SentenceTransformerEmbedder(config)  # a new instance per flow run, as flows do
        t = time.perf_counter()
        digest = emb.weights_sha256
        before.append(time.perf_counter() - t)

    @lru_cache(maxsize=8)
    def cached(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str:
        return embedding._hash_files([Path(p) for p in paths])

    after = []
    for _ in range(repeats):
        emb = embedding.SentenceTransformerEmbedder(config)
        t = time.perf_counter()
        files = sorted(p for p in emb.path.rglob("*") if p.suffix in {".safetensors", ".bin", ".onnx"})
        same = cached(tuple(map(str, files)), tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in files))
        after.append(time.perf_counter() - t)
    return {"before_s": statistics.median(before), "after_warm_s": statistics.median(after[1:] or after),
            "identical": same == digest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", required=True, help="a corpus folder (Markdown files or a BEIR corpus.jsonl)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    write_json(args.out, {"chunk_once": bench_chunking(Path(args.src), args.repeats),
                          "weights_hash_cached": bench_weights_hash(args.repeats)})


if __name__ == "__main__":
    main()
