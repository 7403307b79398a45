"""Ingestion: one loader per format, text normalization, hashing, quarantine and snapshot diff (I/O).

Every file under a source root becomes documents or a quarantine record with a reason; nothing
is skipped silently except hidden files (``ingest.include_hidden``) and table sidecars.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import yaml

from ragloop.tasks import stat_cache
from ragloop.tasks.lineage import ragloop_version
from ragloop.tasks.registry import Registry
from ragloop.tasks.schemas import Document, Quarantined, QuarantineReason, utcnow
from ragloop.tasks.settings import IngestConfig
from ragloop.tasks.stat_cache import StatCache
from ragloop.tasks.storage import SNAPSHOT_KEY, Lake

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".schema.yaml"
BEIR_CORPUS_NAME = "corpus.jsonl"


class LoadError(Exception):
    """A file that cannot become documents; carries the quarantine reason."""

    def __init__(self, reason: QuarantineReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# -- text helpers -------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """NFC, LF line endings, no BOM, no trailing blanks at the ends of the text."""
    text = unicodedata.normalize("NFC", text.lstrip("\ufeff"))
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def content_sha256(text: str, title: str, metadata: dict) -> str:
    """Hash of everything a document row carries; any change makes the document 'changed'."""
    payload = json.dumps([text, title, metadata], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def decode_bytes(data: bytes) -> str:
    """UTF-8 (with or without BOM), or UTF-16 with a BOM; anything else is a decode_error."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LoadError(QuarantineReason.decode_error, f"invalid UTF-16: {exc}") from exc
    if b"\x00" in data[:8192]:
        raise LoadError(QuarantineReason.binary, "NUL bytes in a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(
            QuarantineReason.decode_error, f"not valid UTF-8 at byte {exc.start}: {exc.reason}"
        ) from exc


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# -- loaders: (path, data, context) -> [Loaded(text, title, mime, metadata, row key)] -------------------
@dataclass
class Loaded:
    text: str
    title: str
    mime: str
    metadata: dict = field(default_factory=dict)
    key: str | None = None  # row key within a table file (doc_id = relpath#key)
    # What the loader did that a user may want to see (summed into the run summary's `notes`), e.g.
    # {"notebook_outputs_dropped": 3}; not part of the document, so not part of its hash.
    notes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadContext:
    """What a loader may need beyond the file: its source root (snippet includes resolve inside it)."""

    root: Path
    config: IngestConfig


Loader = Callable[[Path, bytes, LoadContext | None], list[Loaded]]
# File extension (lower case, with its dot) -> loader; load_file quarantines a file no loader reads as
# `unsupported`.
LOADERS: Registry[Loader] = Registry("loader for file extension")


def register_loader(*extensions: str, replace: bool = False) -> Callable[[Loader], Loader]:
    """Decorator: register `loader(path, data, ctx) -> list[Loaded]` for files ending in `extensions`
    (".md", ...; matched case-insensitively). The loader raises LoadError(reason, detail) for a file it
    cannot read; it is quarantined with that reason. ValueError if an extension is taken and not `replace`."""
    def wrap(loader: Loader) -> Loader:
        for ext in extensions:
            if not ext.startswith("."):
                raise ValueError(f"loader extension {ext!r} must start with a dot")
            LOADERS.register(ext.lower(), loader, replace=replace)
        return loader

    return wrap


_HEADING_PREFIX_CHARS = 4096


@functools.cache
def _block_parser():
    """A CommonMark parser for block structure only (headings, fences), built once per process."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").disable(["inline", "text_join"])


def _first_heading(text: str) -> str | None:
    """The first level-1 heading's text; `# comments` inside code fences are not headings.

    Block structure is decided line by line from the lines above (a setext underline only turns the
    paragraph right above it into a heading), so an h1 that ends before the last line of a prefix is
    the document's first h1. Titles are usually near the top: parsing the first 4 KB first keeps a
    re-ingest of unchanged Markdown from parsing every file whole.
    """
    parser = _block_parser()
    cut = text.rfind("\n", 0, _HEADING_PREFIX_CHARS) if len(text) > _HEADING_PREFIX_CHARS else -1
    if cut > 0:
        prefix = text[:cut]
        found = _h1(parser.parse(prefix), complete_before=prefix.count("\n"))
        if found is not None:
            return found or None
    return _h1(parser.parse(text)) or None


def _h1(tokens, complete_before: int | None = None) -> str | None:
    """The first h1's text ('' for an empty one), None if there is none (or it touches the prefix's end)."""
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.tag == "h1" and i + 1 < len(tokens):
            if complete_before is not None and (tok.map is None or tok.map[1] > complete_before):
                return None
            return tokens[i + 1].content.strip()
    return None


@register_loader(".md", ".markdown")
def load_markdown(path: Path, data: bytes, ctx: LoadContext | None = None) -> list[Loaded]:
    import frontmatter

    from ragloop.tasks import mkdocs

    raw = decode_bytes(data)
    try:
        post = frontmatter.loads(raw)
    except Exception as exc:  # front matter YAML errors come in many types
        raise LoadError(QuarantineReason.parse_error, f"front matter: {exc}") from exc
    content, notes = post.content, {}
    if ctx is None or ctx.config.markdown_dialect == "mkdocs":
        content, notes = mkdocs.normalize(content, path, ctx.root if ctx else path.parent)
    text = normalize_text(content)
    meta = _json_safe(dict(post.metadata))
    title = str(meta.get("title") or _first_heading(text) or path.stem)
    return [Loaded(text, title, "text/markdown", {"front_matter": meta} if meta else {}, notes=notes)]


@register_loader(".ipynb")
def load_notebook(path: Path, data: bytes, ctx: LoadContext | None = None) -> list[Loaded]:
    """A Jupyter notebook as Markdown: markdown cells as they are, code cells fenced with the kernel's
    language; outputs are dropped unless ingest.notebook_outputs (they are mostly noise: reprs, plots)."""
    import nbformat

    try:
        nb = nbformat.reads(decode_bytes(data), as_version=4)
    except LoadError:
        raise
    except Exception as exc:  # nbformat raises JSON, validation and version errors
        raise LoadError(QuarantineReason.parse_error, f"notebook: {type(exc).__name__}: {exc}") from exc
    language = (nb.metadata.get("kernelspec", {}).get("language") or nb.metadata.get("language_info", {}).get("name")
                or "python")
    keep_outputs = bool(ctx and ctx.config.notebook_outputs)
    parts, dropped = [], 0
    for cell in nb.cells:
        source = cell.get("source", "")
        if not source.strip():
            continue
        if cell.cell_type == "markdown":
            parts.append(source.strip())
        elif cell.cell_type == "code":
            parts.append(f"```{language}\n{source.rstrip()}\n```")
            outputs = cell.get("outputs", [])
            dropped += bool(outputs) and not keep_outputs
            for out in outputs if keep_outputs else []:
                shown = out.get("text") or (out.get("data") or {}).get("text/plain")
                if shown:
                    parts.append("```text\n" + ("".join(shown) if isinstance(shown, list) else shown).rstrip() + "\n```")
    text = normalize_text("\n\n".join(parts))
    title = _first_heading(text) or path.stem
    notes = {"notebooks": 1, **({"notebook_cells_with_outputs_dropped": dropped} if dropped else {})}
    return [Loaded(text, title, "text/markdown", {"notebook": {"cells": len(nb.cells), "language": language}}, notes=notes)]


@register_loader(".txt")
def load_text(path: Path, data: bytes, ctx: LoadContext | None = None) -> list[Loaded]:
    return [Loaded(normalize_text(decode_bytes(data)), path.stem, "text/plain")]


def _check_html_depth(html: str) -> None:
    """An HTML bomb (nesting past libxml2's depth limit) is a parse_error, not a silently empty page."""
    import lxml.html

    parser = lxml.html.HTMLParser()
    try:
        lxml.html.document_fromstring(html, parser=parser)
    except Exception:  # an empty or unparseable page: trafilatura decides what it yields
        return
    for error in parser.error_log:
        if error.type_name == "ERR_RESOURCE_LIMIT":
            raise LoadError(QuarantineReason.parse_error, f"html: {error.message} (nesting too deep)")


@register_loader(".html", ".htm")
def load_html(path: Path, data: bytes, ctx: LoadContext | None = None) -> list[Loaded]:
    import trafilatura

    html = decode_bytes(data)
    _check_html_depth(html)
    try:
        text = trafilatura.extract(
            html, output_format="markdown", include_tables=True, include_comments=False,
            include_links=False, favor_recall=True,
        )
        meta = trafilatura.extract_metadata(html)
    except Exception as exc:  # lxml/trafilatura raise a variety of errors on hostile markup
        raise LoadError(QuarantineReason.parse_error, f"html: {exc}") from exc
    title = (meta.title if meta and meta.title else None) or path.stem
    # Markdown output keeps the page's headings, so the markdown chunker sees its structure.
    return [Loaded(normalize_text(text or ""), title, "text/html")]


@register_loader(".pdf")
def load_pdf(path: Path, data: bytes, ctx: LoadContext | None = None) -> list[Loaded]:
    import pypdf

    if not data.startswith(b"%PDF-"):
        raise LoadError(QuarantineReason.parse_error, "not a PDF (no %PDF- header)")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise LoadError(QuarantineReason.parse_error, "encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        info_title = (reader.metadata.title if reader.metadata else None) or None
    except LoadError:
        raise
    except Exception as exc:  # pypdf raises many types on truncated/corrupt files
        raise LoadError(QuarantineReason.parse_error, f"pdf: {type(exc).__name__}: {exc}") from exc
    text = normalize_text("\n\n".join(p.strip() for p in pages))
    return [Loaded(text, str(info_title or path.stem), "application/pdf", {"pages": len(pages)})]


def read_sidecar(path: Path) -> dict:
    """The table's sidecar (``name.schema.yaml``): table, description, id_column, columns."""
    sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
    if not sidecar.exists():
        return {}
    try:
        spec = yaml.safe_load(sidecar.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LoadError(QuarantineReason.parse_error, f"sidecar {sidecar.name}: {exc}") from exc
    allowed = {"table", "description", "id_column", "title_column", "columns"}
    if not isinstance(spec, dict) or set(spec) - allowed:
        raise LoadError(
            QuarantineReason.parse_error,
            f"sidecar {sidecar.name}: expected keys {sorted(allowed)}, got {sorted(spec) if isinstance(spec, dict) else type(spec).__name__}",
        )
    if not isinstance(spec.get("columns", {}), dict):
        raise LoadError(QuarantineReason.parse_error, f"sidecar {sidecar.name}: columns must be a mapping")
    return spec


CSV_DELIMITERS = ",;\t|"
_SNIFF_CHARS = 64 * 1024


def decode_csv(data: bytes) -> tuple[str, str]:
    """(text, encoding) of a CSV as spreadsheets write it: UTF-8 (or UTF-16 with a BOM) first, else the
    encoding charset-normalizer finds (Windows-1252, Latin-1, Shift-JIS...); decode_error if none fits."""
    try:
        return decode_bytes(data), "utf-8"
    except LoadError as exc:
        if exc.reason is not QuarantineReason.decode_error:
            raise
        from charset_normalizer import from_bytes

        matches = from_bytes(data)
        best = matches.best()
        if best is not None:
            # Short samples often fit several code pages equally well (chaos and coherence tied); Excel in
            # Western locales writes Windows-1252, so it wins such a tie (cp1250 would turn è into č).
            tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
            best = next((m for m in tied if m.encoding == "cp1252"), best)
        if best is None:
            raise LoadError(QuarantineReason.decode_error,
                            f"CSV is not UTF-8 and no other text encoding fits ({exc.detail})") from exc
        return str(best), best.encoding


def sniff_delimiter(text: str) -> str:
    """The CSV's delimiter among , ; TAB | (csv.Sniffer on the first 64 KB); ',' when the sample has only
    one column (the sniffer then has nothing to find)."""
    import csv

    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS:  # a cut last line would look ragged
        sample = sample[:sample.rfind("\n") + 1] or sample
    try:
        return csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _read_table(path: Path, data: bytes) -> tuple[pa.Table, dict[str, int]]:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    notes: dict[str, int] = {}
    try:
        if path.suffix == ".csv":
            text, encoding = decode_csv(data)
            delimiter = sniff_delimiter(text)
            if encoding != "utf-8":
                notes[f"csv_encoding_{encoding}"] = 1
            if delimiter != ",":
                notes[f"csv_delimiter_{ {';': 'semicolon', chr(9): 'tab', '|': 'pipe'}[delimiter]}"] = 1
            table = pacsv.read_csv(io.BytesIO(text.encode("utf-8")),
                                   parse_options=pacsv.ParseOptions(delimiter=delimiter))
        elif path.suffix == ".jsonl":
            table = pajson.read_json(io.BytesIO(data))
        else:
            table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise LoadError(QuarantineReason.parse_error, f"table: {exc}") from exc
    # Bytes columns would be indexed as Python reprs (b'Cr\xe8me'): text that is not text is no document.
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        raise LoadError(QuarantineReason.decode_error, f"table: column(s) {binary} hold bytes that are not text")
    return table, notes


@register_loader(".csv", ".parquet", ".jsonl")
def load_table(path: Path, data: bytes, ctx: LoadContext | None = None) -> list[Loaded]:
    """Each row becomes a document; the sidecar's descriptions go into text and metadata, and the row's
    identity (table, id column, row key) into metadata, so every chunk of a split row can carry it."""
    spec = read_sidecar(path)
    table, notes = _read_table(path, data)
    name = str(spec.get("table") or path.stem)
    described = {str(k): str(v) for k, v in (spec.get("columns") or {}).items()}
    missing = [c for c in described if c not in table.column_names]
    if missing:
        raise LoadError(QuarantineReason.parse_error, f"sidecar describes absent columns {missing}")
    id_column = spec.get("id_column")
    if id_column and id_column not in table.column_names:
        raise LoadError(QuarantineReason.parse_error, f"id_column {id_column!r} not in the table")
    title_column = spec.get("title_column")
    header = name + (f": {spec['description']}" if spec.get("description") else "")
    out: list[Loaded] = []
    seen_keys: set[str] = set()
    for i, row in enumerate(table.to_pylist()):
        key = str(row[id_column]) if id_column else f"row={i}"
        if key in seen_keys:
            raise LoadError(QuarantineReason.parse_error, f"duplicate {id_column} value {key!r}")
        seen_keys.add(key)
        lines = [header]
        for col, value in row.items():
            label = f"{col} ({described[col]})" if col in described else col
            lines.append(f"{label}: {'' if value is None else value}")
        title = str(row[title_column]) if title_column and row.get(title_column) else f"{name} {key}"
        metadata = {
            "table": name,
            "table_description": spec.get("description"),
            "columns": described,
            "row": _json_safe(row),
            "id_column": id_column or None,
            "row_key": key,
        }
        out.append(Loaded(normalize_text("\n".join(lines)), title, "application/x-table-row", metadata, key,
                          notes=notes if not out else {}))
    return out


def iter_beir_corpus(path: Path) -> Iterator[Document | Quarantined]:
    """Stream a BEIR corpus.jsonl: doc_id = _id, text = title + ' ' + text (MTEB's convention)."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            uri = f"{path}#line={lineno}"
            try:
                rec = json.loads(raw)
                doc_id = str(rec["_id"])
                title = str(rec.get("title") or "")
                body = str(rec.get("text") or "")
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
                yield Quarantined(uri, QuarantineReason.parse_error, f"corpus record: {exc}")
                continue
            text = normalize_text(f"{title} {body}")
            if not text:
                yield Quarantined(uri, QuarantineReason.empty, f"document {doc_id} has no text")
                continue
            meta = _json_safe(rec.get("metadata") or {})
            yield Document(
                doc_id=doc_id, source_uri=uri, content_sha256=content_sha256(text, title, meta),
                text=text, title=title, mime="text/plain", bytes=len(raw), metadata=meta,
            )


def is_beir_corpus(path: Path) -> bool:
    if path.name != BEIR_CORPUS_NAME:
        return False
    with path.open("rb") as fh:
        first = fh.readline()
    try:
        return "_id" in json.loads(first)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
        return False


# -- discovery -------------------------------------------------------------------------------------
def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


@functools.lru_cache(maxsize=64)
def _globs(patterns: tuple[str, ...]):
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(patterns) if patterns else None


def selected(rel: str, config: IngestConfig) -> str | None:
    """None when a file (path relative to its source root) is to be loaded, else why not: 'excluded'
    (matches an ingest.exclude glob) or 'not_included' (ingest.include is set and it matches none).
    Globs are gitignore-style: `*.png`, `overrides/`, `docs/**/*.ipynb`, `!keep.md`."""
    include, exclude = _globs(tuple(config.include)), _globs(tuple(config.exclude))
    if exclude is not None and exclude.match_file(rel):
        return "excluded"
    if include is not None and not include.match_file(rel):
        return "not_included"
    return None


def discover(root: Path, config: IngestConfig, notes: Counter | None = None) -> Iterator[Path | Quarantined]:
    """Files under root in sorted order; links leaving the root come back as quarantine records.
    Files left out by ingest.include / ingest.exclude are counted in `notes` (excluded, not_included)."""
    root = root.resolve()
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in list(dirnames):
            sub = base / name
            if sub.is_symlink():
                dirnames.remove(name)
                target = sub.resolve()
                if not target.is_relative_to(root):
                    yield Quarantined(str(sub), QuarantineReason.outside_root, f"directory link to {target}")
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(root)
            if not config.include_hidden and _hidden(rel):
                continue
            if name.endswith(SIDECAR_SUFFIX):
                continue
            skipped = selected(unicodedata.normalize("NFC", rel.as_posix()), config)
            if skipped:
                if notes is not None:
                    notes[skipped] += 1
                continue
            yield path


def load_file(path: Path, root: Path, config: IngestConfig, label: str | None = None,
              notes: Counter | None = None, on_read: Callable[[bytes], None] | None = None
              ) -> Iterator[Document | Quarantined]:
    """A file's documents, or one quarantine record saying why it has none. With `label` (a lake of
    several sources), path-derived doc ids are `label/relative path`; loader notes go into `notes`;
    `on_read` gets the bytes the documents are parsed from (not called for a BEIR corpus)."""
    uri = str(path)
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:  # a name the lake cannot store; the record shows its bytes escaped
        yield Quarantined(os.fsencode(uri).decode("utf-8", "backslashreplace"), QuarantineReason.decode_error,
                          "file name is not valid UTF-8")
        return
    try:
        if path.is_symlink():
            try:
                target = path.resolve()
            except RuntimeError as exc:  # Python 3.11 raises RuntimeError on a symlink loop
                raise LoadError(QuarantineReason.unreadable, str(exc)) from exc
            if not target.is_relative_to(root):
                raise LoadError(QuarantineReason.outside_root, f"link to {target}")
        if not path.exists():
            raise LoadError(QuarantineReason.unreadable, "broken link")
        if not path.is_file():  # a FIFO would block the read forever; devices and sockets are no documents
            raise LoadError(QuarantineReason.unsupported, "not a regular file")
        if is_beir_corpus(path):
            yield from iter_beir_corpus(path)
            return
        loader = LOADERS.get(path.suffix.lower())
        if loader is None:
            raise LoadError(QuarantineReason.unsupported, f"no loader for {path.suffix or 'files without extension'}")
        size = path.stat().st_size
        if size == 0:
            raise LoadError(QuarantineReason.empty, "0 bytes")
        if size > config.max_file_bytes:
            raise LoadError(QuarantineReason.too_large, f"{size} bytes > ingest.max_file_bytes={config.max_file_bytes}")
        data = path.read_bytes()
        if on_read is not None:
            on_read(data)
        loaded = loader(path, data, LoadContext(root, config))
    except LoadError as exc:
        yield Quarantined(uri, exc.reason, exc.detail)
        return
    except PermissionError as exc:
        yield Quarantined(uri, QuarantineReason.unreadable, str(exc))
        return
    except OSError as exc:
        yield Quarantined(uri, QuarantineReason.unreadable, f"{type(exc).__name__}: {exc}")
        return
    except RecursionError:
        yield Quarantined(uri, QuarantineReason.parse_error, "nesting too deep to parse")
        return
    rel = path.relative_to(root).as_posix() if path != root else path.name
    # NFC: the same name spelt decomposed (as macOS file systems and some archives write it) or
    # composed is the same document, so a re-spelt name keeps its doc_id and its chunks.
    rel = unicodedata.normalize("NFC", rel)
    if label is not None:
        rel = f"{label}/{rel}"
    produced = 0
    for item in loaded:
        if notes is not None:
            notes.update(item.notes)
        if not item.text:
            continue
        produced += 1
        doc_id = f"{rel}#{item.key}" if item.key is not None else rel
        yield Document(
            doc_id=doc_id, source_uri=uri if item.key is None else f"{uri}#{item.key}",
            content_sha256=content_sha256(item.text, item.title, item.metadata),
            text=item.text, title=item.title, mime=item.mime, bytes=len(data), metadata=item.metadata,
        )
    if not produced:
        yield Quarantined(uri, QuarantineReason.empty, "no text after extraction")


def source_labels(roots: list[str]) -> dict[str, str]:
    """A short, stable label per source root (resolved path), unique among `roots`: the directory's name
    (a file source: its folder's name); names shared by several roots get a hash of their path appended.
    Depends only on the set of roots, never on their order."""
    def name(root: str) -> str:
        p = Path(root)
        return unicodedata.normalize("NFC", (p.parent.name if p.is_file() else p.name) or "root").replace("/", "_")

    names = {r: name(r) for r in sorted(set(roots))}
    shared = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {r: f"{n}-{hashlib.sha256(r.encode()).hexdigest()[:8]}" if n in shared else n for r, n in names.items()}


def iter_sources(sources: list[str], config: IngestConfig, labels: dict[str, str] | None = None,
                 notes: Counter | None = None, cache: StatCache | None = None) -> Iterator[Document | Quarantined]:
    """Every document or quarantine record under the sources, file by file in sorted order.

    `labels` (resolved root -> label) prefixes each source's path-derived doc ids, so two sources
    holding the same relative path give two documents; None keeps plain relative paths (one source).
    With `cache`, a file whose stat signature is unchanged yields its stored documents unread."""
    for source in sources:
        root = Path(source).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"source not found: {source}")
        root = root.resolve()
        base = root.parent if root.is_file() else root
        label = (labels or {}).get(str(root))
        for entry in discover(root, config, notes):
            if isinstance(entry, Quarantined):
                yield entry
            elif cache is None:
                yield from load_file(entry, base, config, label, notes)
            else:
                yield from _load_cached(entry, base, config, label, notes, cache)


def _load_cached(path: Path, base: Path, config: IngestConfig, label: str | None, notes: Counter | None,
                 cache: StatCache) -> Iterator[Document | Quarantined]:
    """load_file, or the file's stored documents when its stat signature says it is unchanged."""
    uri = str(path)
    loader = LOADERS.get(path.suffix.lower())
    # Only built-in loaders (and the BEIR corpus reader) are known to read nothing but the file (and a
    # table's sidecar).
    own = loader is not None and loader.__module__ == __name__
    sig = stat_cache.signature(path, path.with_name(path.stem + SIDECAR_SUFFIX)) if own else None
    hit = cache.lookup(uri, label, sig)
    if hit is None and cache.wants_content(uri, label, sig):
        try:
            hit = cache.lookup_content(uri, label, sig, path.read_bytes())
        except OSError:
            hit = None  # load_file says why
    if hit is not None:
        rows, file_notes = hit
        if notes is not None:
            notes.update(file_notes)
        for r in rows:
            yield Document(doc_id=r["doc_id"], source_uri=r["source_uri"], content_sha256=r["content_sha256"],
                           text=r["text"], title=r["title"], mime=r["mime"], bytes=r["bytes"],
                           metadata=json.loads(r["metadata"]) if r["metadata"] else {})
        return
    file_notes: Counter = Counter()
    doc_ids: list[str] | None = []
    read: list[str] = []  # the digest of the bytes the documents are parsed from
    for item in load_file(path, base, config, label, file_notes,
                          on_read=lambda data: read.append(stat_cache.content_digest(data))):
        if isinstance(item, Quarantined):
            doc_ids = None
        elif doc_ids is not None:
            doc_ids.append(item.doc_id)
        yield item
    if notes is not None:
        notes.update(file_notes)
    if doc_ids:
        cache.record(uri, label, sig, doc_ids, dict(file_notes), read[0] if read else None)


# -- snapshot ------------------------------------------------------------------------------------
def snapshot_id_of(pairs: list[tuple[str, str]]) -> str:
    """Content-derived snapshot id: hash of the sorted (doc_id, content_sha256) pairs."""
    digest = hashlib.sha256()
    for doc_id, sha in sorted(pairs):
        digest.update(f"{doc_id}\t{sha}\n".encode())
    return digest.hexdigest()[:24]


@dataclass
class IngestResult:
    snapshot_id: str
    previous_snapshot_id: str | None
    counts: dict[str, int]
    quarantine: list[Quarantined]
    written: bool
    carried_forward: list[str]
    other_sources_kept: int = 0  # documents of sources this run was not given, kept as they were
    forgotten: int = 0  # documents dropped because their source was named in forget_sources
    known_roots: list[str] = field(default_factory=list)  # every source the snapshot's documents come from
    notes: dict[str, int] = field(default_factory=dict)  # files left out by globs, loader choices (see Loaded)
    labels: dict[str, str] = field(default_factory=dict)  # root -> doc id prefix, when the lake has several sources
    unchanged_by_stat: int = 0  # files whose stored documents were reused unread (tasks/stat_cache.py)
    unchanged_by_content: int = 0  # files read and hashed, whose stored documents were reused unparsed


class MassDeleteError(RuntimeError):
    """A source would lose more than the allowed share of its documents (an unmounted share, a failed
    sync); raised before anything is written. The message names the source and the counts."""


def unique_sources(sources: list[str]) -> list[str]:
    """The sources with each path once (`docs`, `./docs/` and `docs` again are one source), first spelling
    kept: a source named twice would otherwise be read twice, its documents quarantined as duplicates."""
    found: dict[str, str] = {}
    for source in sources:
        found.setdefault(str(Path(source).expanduser().resolve()), source)
    return list(found.values())


def source_roots(sources: list[str]) -> list[str]:
    """The resolved paths of the sources, each once: the scope a run's deletions are limited to."""
    return list(dict.fromkeys(str(Path(s).expanduser().resolve()) for s in sources))


def under_root(source_uri: str, root: str) -> bool:
    """Whether a document (by its source_uri: a file path, or `path#row key`) came from this root."""
    return source_uri == root or source_uri.startswith((root.rstrip("/") + "/", root + "#"))


def _document_row(doc: Document, ingested_at: dt.datetime) -> dict:
    return {
        "doc_id": doc.doc_id, "source_uri": doc.source_uri, "content_sha256": doc.content_sha256,
        "text": doc.text, "title": doc.title, "metadata": json.dumps(doc.metadata, sort_keys=True),
        "mime": doc.mime, "bytes": doc.bytes, "ingested_at": ingested_at,
    }


def build_snapshot(lake: Lake, sources: list[str], config: IngestConfig, max_delete_fraction: float | None = None,
                   forget_sources: list[str] | None = None, known_roots: list[str] | None = None) -> IngestResult:
    """Stream every source into a new documents snapshot and diff it against the latest one.

    A file that was good before and is now quarantined keeps its previous version in the snapshot
    (nothing is lost to a transient bad write); a file that is gone is 'deleted'. Deletion is scoped to
    the sources given: documents of other sources are kept as they were, unless their source is in
    `forget_sources` (`known_roots`: the sources of the previous snapshot, None if not recorded; one
    source named where one other was known is taken as that source moved). With `max_delete_fraction`, a source that would lose more than that share of its
    documents raises MassDeleteError before the snapshot is published.
    Does not move the 'documents' ref: the caller does that once validation passes.
    """
    sources = unique_sources(sources)
    prev_ref = lake.read_ref("documents")
    prev_id = prev_ref["snapshot_id"] if prev_ref else None
    previous: dict[str, tuple[str, dt.datetime, str]] = {}
    previous_keys: list[tuple] = []  # the previous snapshot's rows in file order (storage.snapshot_key)
    if prev_id and lake.snapshot_exists(prev_id):
        t = lake.read_snapshot(prev_id, columns=list(SNAPSHOT_KEY))
        previous_keys = list(zip(*(t[c].to_pylist() for c in SNAPSHOT_KEY)))
        previous = {k[0]: (k[1], k[5], k[2]) for k in previous_keys}

    now = utcnow()
    counts = {"seen": 0, "new": 0, "changed": 0, "unchanged": 0, "deleted": 0, "quarantined": 0}
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    seen_uris: list[str] = []
    quarantine: list[Quarantined] = []
    quarantined_uris: set[str] = set()
    roots = source_roots(sources)
    forget = source_roots(forget_sources or [])
    moved = _moved_source(roots, known_roots, forget)
    known = roots if moved else sorted((set(known_roots or []) - set(forget)) | set(roots))
    # Doc ids are unique across sources by construction: a lake of several sources prefixes each path
    # with its source's label (from the whole set, so stable whichever subset a run names); a lake of
    # one source keeps plain relative paths, as before.
    labels = source_labels(known) if len(known) > 1 else {}
    notes: Counter = Counter()
    cache = StatCache(lake, prev_id if previous else None, config, ragloop_version())
    # An unchanged corpus gives the previous snapshot's rows in its order: the writer writes nothing then.
    writer = lake.snapshot_writer((prev_id, previous_keys) if previous else None)
    buffer: list[dict] = []
    try:
        for item in iter_sources(sources, config, labels, notes, cache):
            if isinstance(item, Quarantined):
                quarantine.append(item)
                quarantined_uris.add(item.source_uri)
                continue
            counts["seen"] += 1
            if item.doc_id in seen:
                cache.discard(item.source_uri)
                quarantine.append(Quarantined(item.source_uri, QuarantineReason.parse_error,
                                              f"duplicate doc_id {item.doc_id!r} (another source has it)"))
                continue
            seen.add(item.doc_id)
            seen_uris.append(item.source_uri)
            before = previous.get(item.doc_id)
            if before is None:
                counts["new"] += 1
                at = now
            elif before[0] == item.content_sha256:
                counts["unchanged"] += 1
                at = before[1]
            else:
                counts["changed"] += 1
                at = now
            pairs.append((item.doc_id, item.content_sha256))
            buffer.append(_document_row(item, at))
            if len(buffer) >= config.rows_per_batch:
                writer.write(buffer)
                buffer = []
        writer.write(buffer)
        in_scope = {d for d, (_, _, uri) in previous.items() if moved or any(under_root(uri, r) for r in roots)}
        forgotten = {d for d, (_, _, uri) in previous.items() if d not in seen and d not in in_scope
                     and any(under_root(uri, r) for r in forget)}
        others = {d for d in previous if d not in seen and d not in in_scope and d not in forgotten}
        carried = _carry_forward(lake, prev_id, quarantined_uris, previous, seen, writer, pairs)
        kept = _carry_forward(lake, prev_id, set(), {d: previous[d] for d in others}, seen, writer, pairs, everything=True)
        counts["unchanged"] += len(carried)
        counts["deleted"] = sum(1 for doc_id in previous if doc_id not in seen)
        counts["quarantined"] = len(quarantine)
        if max_delete_fraction is not None:
            had = {r: len(in_scope) if moved else sum(1 for d in in_scope if under_root(previous[d][2], r)) for r in roots}
            # A quarantined file keeps its previous version (carried): not a delete.
            _check_mass_delete(had, seen_uris + [previous[d][2] for d in carried], max_delete_fraction)
        snapshot_id = snapshot_id_of(pairs)
        written = writer.finish(snapshot_id)
    except BaseException:
        writer.abort()
        raise
    cache.keep_others(lambda uri: any(under_root(uri, r) for r in roots))
    cache.save(lake, snapshot_id)
    log.info("%d files unchanged by stat (not read), %d by the hash of their bytes (not parsed)", cache.hits,
             cache.content_hits)
    return IngestResult(snapshot_id, prev_id, counts, quarantine, written, carried, len(kept), len(forgotten), known,
                        dict(sorted(notes.items())), {r: labels[r] for r in roots if r in labels}, cache.hits,
                        cache.content_hits)


def _moved_source(roots: list[str], known_roots: list[str] | None, forget: list[str]) -> bool:
    """A run naming one source, on a corpus that came from one other source (or from sources not
    recorded, as before scoped cleanup), is that source moved or renamed: its documents are in scope."""
    if len(roots) != 1 or forget:
        return False
    return known_roots is None or (len(known_roots) == 1 and known_roots[0] != roots[0])


def _check_mass_delete(had: dict[str, int], seen_uris: list[str], fraction: float) -> None:
    """Raise MassDeleteError naming every source whose document count (`had`: root -> documents before)
    would shrink by more than `fraction`. Net shrinkage, so a renamed file or folder is no loss."""
    problems = []
    for root, before in had.items():
        now = sum(1 for uri in seen_uris if under_root(uri, root))
        if before and (before - now) / before > fraction:
            problems.append(f"source {root}: {before - now} of its {before} documents would be deleted ({now} left)")
    if problems:
        raise MassDeleteError(
            "; ".join(problems) + f" (more than index.max_delete_fraction={fraction}); nothing was written. "
            "If the source really lost them, run again with --allow-mass-delete")


def _carry_forward(lake, prev_id, uris: set[str], previous, seen, writer, pairs, everything: bool = False) -> list[str]:
    """Copy the previous rows of documents whose source (a file, a table row, a corpus line) is
    quarantined now (or, with everything=True, of all `previous` documents not seen). Matched by
    source_uri, so it works for path-derived and source-given ids."""
    wanted = {
        doc_id for doc_id, (_, _, uri) in previous.items() if doc_id not in seen
        and (everything or uri in uris or uri.split("#", 1)[0] in uris)
    }
    if not wanted:
        return []
    for batch in lake.iter_snapshot(prev_id):
        rows = [r for r in batch.to_pylist() if r["doc_id"] in wanted]
        writer.write(rows)
        for r in rows:
            seen.add(r["doc_id"])
            pairs.append((r["doc_id"], r["content_sha256"]))
    return sorted(wanted)
