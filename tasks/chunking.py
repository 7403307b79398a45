"""Token-bounded chunking (pure): markdown (heading-aware), recursive, none; content-derived ids."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from markdown_it import MarkdownIt
from semantic_text_splitter import MarkdownSplitter, TextSplitter

from tasks.embedding import TokenCounter
from tasks.schemas import Document
from tasks.settings import ChunkingConfig

# Bump when the chunking logic changes in a way that changes chunks: it is part of chunker_hash,
# so every document is re-chunked (vectors of unchanged texts are still reused).
CHUNKER_VERSION = 1

MARKDOWN_MIMES = {"text/markdown", "text/html"}  # html is extracted to Markdown by ingestion


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    doc_sha256: str
    text: str
    text_sha256: str
    headings: tuple[str, ...]
    position: int
    n_tokens: int
    chunker_hash: str
    metadata: dict = field(default_factory=dict)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Chunker:
    """Splits documents into chunks no longer than the embedder reads; one instance per run."""

    def __init__(self, config: ChunkingConfig, counter: TokenCounter) -> None:
        if config.max_tokens is not None and config.max_tokens > counter.max_tokens:
            raise ValueError(
                f"chunking.max_tokens={config.max_tokens} exceeds the embedder's limit of "
                f"{counter.max_tokens} tokens; the model would silently truncate every longer chunk"
            )
        self.config = config
        self.counter = counter
        self.capacity = config.max_tokens or counter.max_tokens
        overlap = min(config.overlap_tokens, self.capacity - 1)
        tokenizer = counter.tokenizer
        self._markdown = MarkdownSplitter.from_huggingface_tokenizer(tokenizer, self.capacity, overlap)
        self._text = TextSplitter.from_huggingface_tokenizer(tokenizer, self.capacity, overlap)
        # Only block structure is needed (heading lines); skipping inline parsing halves the cost.
        self._md_parser = MarkdownIt("commonmark").disable(["inline", "text_join"])
        self.hash = sha256_text(
            json.dumps(
                {
                    "version": CHUNKER_VERSION,
                    "strategy": config.strategy,
                    "capacity": self.capacity,
                    "overlap": overlap,
                    "tokenizer": sha256_text(tokenizer.to_str()),
                },
                sort_keys=True,
            )
        )

    def chunk_document(self, doc: Document, spans: list[tuple[int, str]] | None = None) -> list[Chunk]:
        """The document's chunks in reading order; equal inputs give equal chunk ids.

        `spans` are the splitter's (offset, text) pieces of this document when the caller already has
        them (chunk_documents splits a whole window in one parallel call).
        """
        splitter = self._splitter(doc)
        if splitter is None:
            text, source_tokens = self.counter.truncate(doc.text.strip(), self.capacity)
            return self._make_chunks(doc, [(0, text, ())],
                                     {"truncated": source_tokens > self.capacity, "source_tokens": source_tokens})
        spans = splitter.chunk_indices(doc.text) if spans is None else spans
        if splitter is self._markdown:
            return self._make_chunks(doc, self._split_markdown(doc.text, spans), {})
        return self._make_chunks(doc, [(offset, text, ()) for offset, text in spans], {})

    def chunk_documents(self, docs: Iterable[Document]) -> list[Chunk]:
        """All chunks of the documents, document by document.

        The splitting itself (token-sized, Rust) is the costly part: each splitter gets all of its
        documents in one `chunk_all_indices` call, which runs them in parallel and releases the GIL.
        The output is the same as chunk_document one at a time.
        """
        docs = list(docs)
        spans: list[list[tuple[int, str]] | None] = [None] * len(docs)
        for splitter in (self._markdown, self._text):
            picked = [i for i, d in enumerate(docs) if self._splitter(d) is splitter]
            if picked:
                for i, found in zip(picked, splitter.chunk_all_indices([docs[i].text for i in picked])):
                    spans[i] = found
        return [chunk for doc, found in zip(docs, spans) for chunk in self.chunk_document(doc, found)]

    def _splitter(self, doc: Document) -> MarkdownSplitter | TextSplitter | None:
        """The splitter for this document; None for strategy 'none' (one truncated chunk)."""
        if self.config.strategy == "none":
            return None
        if self.config.strategy == "markdown" and doc.mime in MARKDOWN_MIMES:
            return self._markdown
        return self._text

    def _split_markdown(self, text: str, spans: list[tuple[int, str]]) -> list[tuple[int, str, tuple[str, ...]]]:
        headings = self._heading_offsets(text)
        pieces = []
        for offset, chunk in spans:
            trail: list[tuple[int, str]] = []
            for start, level, title in headings:
                if start > offset:
                    break
                trail = [h for h in trail if h[0] < level] + [(level, title)]
            pieces.append((offset, chunk, tuple(title for _, title in trail)))
        return pieces

    def _heading_offsets(self, text: str) -> list[tuple[int, int, str]]:
        """(char offset, level, title) of every ATX/setext heading; code fences are respected."""
        line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        tokens = self._md_parser.parse(text)
        out = []
        for i, tok in enumerate(tokens):
            if tok.type == "heading_open" and tok.map:
                title = tokens[i + 1].content.strip() if i + 1 < len(tokens) else ""
                out.append((line_starts[tok.map[0]], int(tok.tag[1]), title))
        return out

    def _make_chunks(self, doc: Document, pieces, extra: dict) -> list[Chunk]:
        chunks: list[Chunk] = []
        seen: dict[str, int] = {}
        for offset, text, headings in pieces:
            for piece_offset, piece, n_tokens in self._enforce_limit(offset, text):
                if not piece.strip():
                    continue
                occurrence = seen.get(piece, 0)
                seen[piece] = occurrence + 1
                chunk_id = sha256_text(f"{doc.doc_id}\x00{self.hash}\x00{occurrence}\x00{piece}")[:32]
                metadata = {"char_start": piece_offset, "char_end": piece_offset + len(piece), **extra}
                chunks.append(
                    Chunk(
                        chunk_id=chunk_id,
                        doc_id=doc.doc_id,
                        doc_sha256=doc.content_sha256,
                        text=piece,
                        text_sha256=sha256_text(piece),
                        headings=headings,
                        position=len(chunks),
                        n_tokens=n_tokens if n_tokens is not None else self.counter.count(piece),
                        chunker_hash=self.hash,
                        metadata=metadata,
                    )
                )
        return chunks

    def _enforce_limit(self, offset: int, text: str) -> Iterator[tuple[int, str, int | None]]:
        """Guarantee the model's limit even if a splitter ever overshoots: cut at token offsets.

        Yields (offset, piece, token count); the count is the one truncate() just made for a piece that
        fits whole (no second tokenization), None for a cut piece (the caller counts it exactly).
        """
        limit = self.counter.max_tokens
        while text:
            head, n = self.counter.truncate(text, limit)
            if n <= limit:
                yield offset, text, n
                return
            yield offset, head, None
            rest = text[len(head):]
            stripped = rest.lstrip()
            offset += len(head) + len(rest) - len(stripped)
            text = stripped
