"""Token-bounded chunking (pure): markdown (heading-aware), recursive, none; content-derived ids.

Strategies are registered in CHUNKING_STRATEGIES under the names `chunking.strategy` accepts; a new one
is a function `(chunker, doc, spans) -> chunks` decorated with `@register_strategy("name")`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from markdown_it import MarkdownIt
from semantic_text_splitter import MarkdownSplitter, TextSplitter

from ragloop.tasks.embedding import TokenCounter
from ragloop.tasks.registry import Registry
from ragloop.tasks.schemas import Document
from ragloop.tasks.settings import ChunkingConfig

# Bump when the chunking logic changes in a way that changes chunks: it is part of chunker_hash,
# so every document is re-chunked (vectors of unchanged texts are still reused).
# 2: Markdown is packed block by block (a heading stays with its first content, a fence with its
#    code, code split across chunks is re-fenced); every chunk of a split table row carries its identity.
CHUNKER_VERSION = 2

MARKDOWN_MIMES = {"text/markdown", "text/html"}  # html is extracted to Markdown by ingestion
TABLE_ROW_MIME = "application/x-table-row"
_BLANK_LINES = re.compile(r"(?:[ \t]*\n)*")
_SHORT = 20  # tokens: a piece shorter than this carries too little to be retrieved on its own

# Per TokenCounter (shared per process for a tokenizer file): the splitters built from its tokenizer and
# its hash. Building a splitter serializes the whole tokenizer (40-110 ms each); a full FastAPI index
# needs about 15 sizes, and every run built them again. Splitters are immutable, so runs and threads share
# them (a race builds one twice, harmlessly).
_TOKENIZER_CACHE: "weakref.WeakKeyDictionary[TokenCounter, dict]" = weakref.WeakKeyDictionary()


def _splitter(counter: TokenCounter, cls: type, capacity: int, overlap: int) -> MarkdownSplitter | TextSplitter:
    """cls.from_huggingface_tokenizer(counter.tokenizer, capacity, overlap), built once per counter."""
    cache = _TOKENIZER_CACHE.setdefault(counter, {})
    key = (cls.__name__, capacity, overlap)
    if key not in cache:
        cache[key] = cls.from_huggingface_tokenizer(counter.tokenizer, capacity, overlap)
    return cache[key]


def _tokenizer_sha256(counter: TokenCounter) -> str:
    cache = _TOKENIZER_CACHE.setdefault(counter, {})
    if "sha256" not in cache:
        cache["sha256"] = sha256_text(counter.tokenizer.to_str())
    return cache["sha256"]


@dataclass
class _Unit:
    """A run of top-level Markdown blocks that must not be split apart: leading headings and the first
    block after them. `body` is where the headings end; `fence` the body's fence markup, if it is one."""

    start: int
    end: int
    body: int
    tokens: int = 0
    fence: bool = False


@dataclass
class _Piece:
    """A chunk under construction: `prefix` (a re-opened fence) + text[start:end] + `suffix` (its closer)."""

    start: int
    end: int
    tokens: int
    prefix: str = ""
    suffix: str = ""
    dedent: int = 0  # a piece of a fence nested in a list: its indentation, removed so it reads alone


@dataclass(frozen=True)
class _Parsed:
    """A Markdown text's block tokens (markdown-it, inline parsing off) and the offsets its lines start at."""

    tokens: list
    line_starts: list[int]


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


Spans = list[tuple[int, str]]  # (character offset, text) pieces from the text splitter


def _never(doc: Document) -> bool:
    return False


@dataclass(frozen=True)
class ChunkingStrategy:
    """A registered way to split documents into chunks.

    `split(chunker, doc, spans)` returns the document's chunks in reading order, built with
    `chunker.make_chunks` (which cuts anything over the embedder's limit and derives the chunk ids).
    `prose(doc)` is True for the documents it splits with the chunker's text splitter: chunk_documents
    splits all of those in one parallel call and passes each document's `spans` in (None otherwise).
    `version`: bump it when the strategy's output changes, so documents are re-chunked (0 = built-in,
    covered by CHUNKER_VERSION).
    """

    split: Callable[["Chunker", Document, Spans | None], list[Chunk]]
    prose: Callable[[Document], bool] = _never
    version: int = 0


CHUNKING_STRATEGIES: Registry[ChunkingStrategy] = Registry("chunking strategy", "chunking.strategy")


def register_strategy(name: str, *, prose: Callable[[Document], bool] = _never, version: int = 0):
    """Decorator: register `split(chunker, doc, spans) -> list[Chunk]` as chunking strategy `name`
    (the value `chunking.strategy` selects it by). ValueError if the name is taken."""
    def wrap(split):
        CHUNKING_STRATEGIES.register(name, ChunkingStrategy(split, prose, version))
        return split

    return wrap


def _dedent(line: str, n: int) -> str:
    """The line without up to n leading spaces."""
    return line[min(n, len(line) - len(line.lstrip(" "))):]


def chunk_id_of(doc_id: str, chunker_hash: str, occurrence: int, text: str) -> str:
    """A chunk's id: its document, the chunker, which occurrence of this exact text in the document
    (0 for the first) and the text. synth recomputes it to recognize a renamed document's chunks."""
    return sha256_text(f"{doc_id}\x00{chunker_hash}\x00{occurrence}\x00{text}")[:32]


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
        self.strategy = CHUNKING_STRATEGIES[config.strategy]
        self.capacity = config.max_tokens or counter.max_tokens
        if config.overlap_tokens >= self.capacity:
            # Cutting it silently would change every chunk (and the corpus's vectors) without a word.
            raise ValueError(
                f"chunking.overlap_tokens={config.overlap_tokens} must be smaller than the chunk size of "
                f"{self.capacity} tokens (chunking.max_tokens, or the embedder's limit)"
            )
        overlap = self.overlap = config.overlap_tokens
        self._text = _splitter(counter, TextSplitter, self.capacity, overlap)
        # Only block structure is needed (heading lines); skipping inline parsing halves the cost.
        self._md_parser = MarkdownIt("commonmark").disable(["inline", "text_join"])
        identity = {
            "version": CHUNKER_VERSION,
            "strategy": config.strategy,
            "capacity": self.capacity,
            "overlap": overlap,
            "tokenizer": _tokenizer_sha256(counter),
        }
        if self.strategy.version:  # only registered strategies set one; built-ins keep their existing hashes
            identity["strategy_version"] = self.strategy.version
        self.hash = sha256_text(json.dumps(identity, sort_keys=True))

    def chunk_document(self, doc: Document, spans: Spans | None = None) -> list[Chunk]:
        """The document's chunks in reading order, by the configured strategy; equal inputs give equal
        chunk ids.

        `spans` are the text splitter's (offset, text) pieces of this document when the caller already
        has them (chunk_documents splits a whole window in one parallel call).
        """
        return self.strategy.split(self, doc, spans)

    def chunk_documents(self, docs: Iterable[Document]) -> list[Chunk]:
        """All chunks of the documents, document by document.

        The splitting itself (token-sized, Rust) is the costly part: the text splitter gets all the
        documents the strategy sends to it in one `chunk_all_indices` call, which runs them in parallel
        and releases the GIL. The output is the same as chunk_document one at a time.
        """
        docs = list(docs)
        spans: list[Spans | None] = [None] * len(docs)
        picked = [i for i, d in enumerate(docs) if self.strategy.prose(d)]  # Markdown is packed block by block
        if picked:
            for i, found in zip(picked, self._text.chunk_all_indices([docs[i].text for i in picked])):
                spans[i] = found
        return [chunk for doc, found in zip(docs, spans) for chunk in self.chunk_document(doc, found)]

    # -- building blocks for strategies -----------------------------------------------------------------
    def markdown_chunks(self, doc: Document) -> list[Chunk]:
        """Markdown packed block by block, each chunk with its heading trail (see _pack_markdown)."""
        parsed = self._parse(doc.text)  # once: units, fences and headings all read the same block parse
        return self.make_chunks(doc, self._split_markdown(doc.text, self._pack_markdown(doc.text, parsed), parsed))

    def text_chunks(self, doc: Document, spans: Spans | None = None) -> list[Chunk]:
        """Token-bounded pieces from the text splitter (sentence and line boundaries, with overlap)."""
        spans = self._text.chunk_indices(doc.text) if spans is None else spans
        return self.make_chunks(doc, [(offset, text, ()) for offset, text in spans])

    def whole_chunk(self, doc: Document) -> list[Chunk]:
        """The document as one chunk, cut at the chunk size; the metadata says whether it was cut."""
        text, source_tokens = self.counter.truncate(doc.text.strip(), self.capacity)
        return self.make_chunks(doc, [(0, text, ())], {"truncated": source_tokens > self.capacity,
                                                        "source_tokens": source_tokens})

    def _parse(self, text: str) -> _Parsed:
        """The text's CommonMark block tokens and its line start offsets."""
        return _Parsed(self._md_parser.parse(text), [0] + [m.end() for m in re.finditer("\n", text)])

    def _split_markdown(self, text: str, spans: list[tuple[int, str, int]],
                        parsed: _Parsed) -> list[tuple[int, str, tuple[str, ...], int]]:
        """(offset, text, heading trail at the offset, end offset) for each packed span."""
        headings = self._heading_offsets(parsed)
        # trails[i]: the heading trail just after heading i (each heading drops the trail's headings of its
        # level or deeper); a span's trail is that of the last heading at or before its offset.
        trails: list[tuple[str, ...]] = []
        trail: list[tuple[int, str]] = []
        for _, level, title in headings:
            trail = [h for h in trail if h[0] < level] + [(level, title)]
            trails.append(tuple(t for _, t in trail))
        starts = [start for start, _, _ in headings]
        pieces = []
        for offset, chunk, end in spans:
            before = bisect.bisect_right(starts, offset)
            pieces.append((offset, chunk, trails[before - 1] if before else (), end))
        return pieces

    # -- Markdown: block packing ------------------------------------------------------------------
    def _pack_markdown(self, text: str, parsed: _Parsed) -> list[tuple[int, str, int]]:
        """(offset, chunk text, end offset) of a Markdown document packed block by block.

        Top-level blocks (from the CommonMark parse) are packed greedily up to the capacity; a heading
        is packed with the block after it, so no chunk is a heading alone or a fence opener alone, and a
        short section joins its neighbours instead of becoming a chunk of a few tokens. A unit longer
        than the capacity is split inside (Markdown-aware for prose, by lines for code) and every piece
        that starts or ends inside a fenced block is re-fenced with the block's opener (language kept).
        """
        units = self._units(text, parsed)
        if not units:
            return []
        counts = self.counter.count_many([text[u.start:u.end] for u in units])
        for unit, n in zip(units, counts):
            unit.tokens = n
        fences = self._fences(text, parsed)
        # Tokens of each section (a heading unit up to the next one), for the short-section rule below.
        section: dict[int, int] = {}
        head = None
        for i, unit in enumerate(units):
            if unit.body > unit.start or head is None:
                head = i
            section[head] = section.get(head, 0) + unit.tokens
        out: list[_Piece] = []
        cur: _Piece | None = None
        for i, unit in enumerate(units):
            # Every heading starts a chunk, so an edit changes the chunks of its own section only (their
            # ids and vectors elsewhere are kept); a short section joins the chunk before it when it fits.
            if i in section and cur is not None and not (
                    section[i] < self.capacity // 4 and cur.tokens + section[i] <= self.capacity and not cur.suffix):
                out.append(cur)
                cur = None
            if cur is not None and not cur.suffix and cur.tokens + unit.tokens <= self.capacity:
                cur.end, cur.tokens = unit.end, cur.tokens + unit.tokens
                continue
            if unit.tokens <= self.capacity:
                if cur is not None:
                    out.append(cur)
                cur = _Piece(unit.start, unit.end, unit.tokens)
                continue
            pieces = self._split_unit(text, unit, cur, fences)
            if cur is not None and pieces[0].start != cur.start:
                out.append(cur)  # it did not fit in front of the unit's first piece
            out.extend(pieces[:-1])
            cur = pieces[-1]
        if cur is not None:
            out.append(cur)
        spans = []
        for p in out:
            body = text[p.start:p.end]
            lead = len(_BLANK_LINES.match(body).group(0))
            kept = body[lead:].rstrip()
            if p.dedent:
                kept = "\n".join(_dedent(line, p.dedent) for line in kept.split("\n"))
                kept = (_dedent(p.prefix, p.dedent) + kept + p.suffix.replace(" " * p.dedent, "", 1)).strip("\n")
            elif p.prefix or p.suffix:
                kept = (p.prefix + kept + p.suffix).strip("\n")
            if kept.strip():
                spans.append((p.start + lead, kept, p.start + lead + len(body[lead:].rstrip())))
        return spans

    def _units(self, text: str, parsed: _Parsed) -> list[_Unit]:
        """Contiguous units covering the text: each top-level block from its first line to the next
        block (blank lines and link definitions included), with leading headings bound to the block after."""
        line_starts = parsed.line_starts
        blocks: list[tuple[int, str]] = []
        for tok in parsed.tokens:
            if tok.level == 0 and tok.map is not None and tok.nesting >= 0:
                blocks.append((line_starts[tok.map[0]] if tok.map[0] < len(line_starts) else len(text), tok.type))
        if not blocks:
            return [_Unit(0, len(text), 0)] if text.strip() else []
        blocks[0] = (0, blocks[0][1])
        units: list[_Unit] = []
        pending: int | None = None  # start of leading headings waiting for their first content
        for i, (start, kind) in enumerate(blocks):
            end = blocks[i + 1][0] if i + 1 < len(blocks) else len(text)
            if kind == "heading_open":
                pending = start if pending is None else pending
                if i + 1 == len(blocks):
                    units.append(_Unit(pending, end, end))
                continue
            units.append(_Unit(start if pending is None else pending, end, start, fence=kind == "fence"))
            pending = None
        return units

    def _fences(self, text: str, parsed: _Parsed) -> list[tuple[int, int, str, str]]:
        """(start, end, opener line, closer line) of every fenced code block, nested ones included."""
        line_starts = parsed.line_starts
        out = []
        for tok in parsed.tokens:
            if tok.type != "fence" or tok.map is None:
                continue
            first, last = tok.map[0], tok.map[1]
            start = line_starts[first]
            end = line_starts[last] if last < len(line_starts) else len(text)
            opener = text[start:text.find("\n", start) if "\n" in text[start:end] else end]
            indent = opener[:len(opener) - len(opener.lstrip(" "))]
            out.append((start, end, opener, indent + tok.markup))
        return out

    def _split_unit(self, text: str, unit: _Unit, cur: _Piece | None, fences) -> list[_Piece]:
        """Pieces of a unit longer than the capacity; its headings (and a short `cur` before it) lead
        the first piece. Pieces inside a fence get its opener and closer, so every fence is balanced."""
        margin = max([self.counter.count(o + "\n" + c) + 2 for s, e, o, c in fences if s < unit.end and e > unit.start] or [0])
        head_start = unit.start
        head_tokens = self.counter.count(text[unit.start:unit.body]) if unit.body > unit.start else 0
        if cur is not None and not cur.prefix and cur.tokens + head_tokens <= self.capacity // 4:
            head_start, head_tokens = cur.start, cur.tokens + head_tokens  # join a short chunk before the unit
        room = self.capacity - margin
        body = text[unit.body:unit.end]
        spans = self._body_spans(body, room, unit.fence)
        if head_tokens and spans and head_tokens + spans[0][2] > room and room - head_tokens >= 32:
            first_room = room - head_tokens
            first = self._body_spans(body, first_room, unit.fence)[0]
            rest = self._body_spans(body[first[1]:], room, unit.fence)
            spans = [first] + [(first[1] + a, first[1] + b, n) for a, b, n in rest]
        pieces = [_Piece(unit.body + a, unit.body + b, n) for a, b, n in spans]
        if pieces and head_tokens and head_tokens + pieces[0].tokens <= room:
            pieces[0].start, pieces[0].tokens = head_start, head_tokens + pieces[0].tokens
        elif pieces and head_tokens:
            pieces.insert(0, _Piece(head_start, unit.body, head_tokens))
        for piece in pieces:
            # The splitter starts a piece after its leading spaces: start it at its line instead.
            line_start = text.rfind("\n", 0, piece.start) + 1
            if not text[line_start:piece.start].strip():
                piece.start = line_start
            for start, end, opener, closer in fences:
                opener_end = start + len(opener)
                if start <= piece.start < end or start < piece.end <= end:
                    piece.dedent = max(piece.dedent, len(opener) - len(opener.lstrip(" ")))
                if start < piece.start < end and piece.start >= opener_end and not piece.prefix:
                    piece.prefix = opener + "\n"
                if start < piece.end < end and not text[piece.start:piece.end].rstrip().endswith(closer.strip()):
                    if piece.end > opener_end or piece.start < start:
                        piece.suffix = "\n" + closer
        return pieces

    def _body_spans(self, body: str, room: int, code: bool) -> list[tuple[int, int, int]]:
        """(start, end, tokens) of `body` split to at most `room` tokens: by lines for code, else Markdown-aware."""
        splitter = self._sized_splitter(max(room, 1), code)
        spans: list[tuple[int, int, int]] = []
        for offset, piece in splitter.chunk_indices(body):
            end, n = offset + len(piece), self.counter.count(piece)
            # The splitter cuts long lists between items, leaving a lead-in line ("* Tutorial:") alone:
            # a piece this short joins its neighbour when both fit.
            if spans and (n < _SHORT or spans[-1][2] < _SHORT):
                merged = self.counter.count(body[spans[-1][0]:end])
                if merged <= room:
                    spans[-1] = (spans[-1][0], end, merged)
                    continue
            spans.append((offset, end, n))
        return spans

    def _sized_splitter(self, room: int, code: bool) -> MarkdownSplitter | TextSplitter:
        return _splitter(self.counter, TextSplitter if code else MarkdownSplitter, room, min(self.overlap, room // 2))

    # -- table rows ------------------------------------------------------------------------------------
    def table_row_chunks(self, doc: Document) -> list[Chunk]:
        """A table row's chunks; when the row is split, each piece starts with the row's identity line
        (table, id column and row key), so no piece is anonymous. Identity also goes into the metadata."""
        meta = doc.metadata or {}
        table = meta.get("table") or doc.doc_id.split("#", 1)[0]
        key = meta.get("row_key") or doc.doc_id.split("#", 1)[-1]
        id_column = meta.get("id_column")
        identity = {"table": table, "id_column": id_column, "row_key": key}
        text = doc.text.strip()
        if self.counter.count(text) <= self.capacity:
            return self.make_chunks(doc, [(0, text, ())], identity)
        line = f"{table} row {id_column}={key}" if id_column else f"{table} row {key}"
        room = self.capacity - self.counter.count(line) - 1
        if room < 16:
            return self.make_chunks(doc, [(0, text, ())], identity)
        splitter = self._sized_splitter(room, True)
        pieces = [(offset, f"{line}\n{piece}", (), offset + len(piece)) for offset, piece in splitter.chunk_indices(text)]
        return self.make_chunks(doc, pieces, identity)

    def _heading_offsets(self, parsed: _Parsed) -> list[tuple[int, int, str]]:
        """(char offset, level, title) of every ATX/setext heading; code fences are respected."""
        line_starts, tokens = parsed.line_starts, parsed.tokens
        out = []
        for i, tok in enumerate(tokens):
            if tok.type == "heading_open" and tok.map:
                title = tokens[i + 1].content.strip() if i + 1 < len(tokens) else ""
                out.append((line_starts[tok.map[0]], int(tok.tag[1]), title))
        return out

    def make_chunks(self, doc: Document, pieces, extra: dict | None = None) -> list[Chunk]:
        """Chunks from (offset, text, heading trail[, end offset]) pieces: empty pieces dropped, any piece
        over the embedder's limit cut (_enforce_limit), ids from (doc, chunker hash, occurrence, text);
        `extra` goes into every chunk's metadata."""
        extra = extra or {}
        chunks: list[Chunk] = []
        seen: dict[str, int] = {}
        for offset, text, headings, *end in pieces:
            for piece_offset, piece, n_tokens in self._enforce_limit(offset, text):
                if not piece.strip():
                    continue
                occurrence = seen.get(piece, 0)
                seen[piece] = occurrence + 1
                chunk_id = chunk_id_of(doc.doc_id, self.hash, occurrence, piece)
                char_end = end[0] if end and piece == text else piece_offset + len(piece)
                metadata = {"char_start": piece_offset, "char_end": char_end, **extra}
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


# -- the built-in strategies (chunking.strategy) ---------------------------------------------------------
def _prose(doc: Document) -> bool:
    return doc.mime != TABLE_ROW_MIME


@register_strategy("recursive", prose=_prose)
def split_recursive(chunker: Chunker, doc: Document, spans: Spans | None = None) -> list[Chunk]:
    """Token-bounded text pieces on sentence and line boundaries; a table row that is split keeps its
    identity line on every piece."""
    if doc.mime == TABLE_ROW_MIME:
        return chunker.table_row_chunks(doc)
    return chunker.text_chunks(doc, spans)


@register_strategy("markdown", prose=lambda doc: doc.mime not in MARKDOWN_MIMES and _prose(doc))
def split_markdown(chunker: Chunker, doc: Document, spans: Spans | None = None) -> list[Chunk]:
    """Heading-aware: Markdown (and HTML, extracted to Markdown) packed block by block with its heading
    trail; any other document as 'recursive'."""
    if doc.mime in MARKDOWN_MIMES:
        return chunker.markdown_chunks(doc)
    return split_recursive(chunker, doc, spans)


@register_strategy("none")
def keep_whole(chunker: Chunker, doc: Document, spans: Spans | None = None) -> list[Chunk]:
    """One chunk per document, cut at the chunk size (the BEIR setup: a corpus of short passages)."""
    return chunker.whole_chunk(doc)
