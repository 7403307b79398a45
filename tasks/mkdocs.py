"""mkdocs Markdown dialects to plain Markdown (pure, except reading snippet files under the source root).

mkdocs-material sites write admonitions (`!!! note "Title"` + an indented body), content tabs
(`=== "Python"` + a 4-space-indented body), pymdownx blocks (`/// tip` ... `///`) and snippet
includes (`--8<-- "file.md"`), and Python-Markdown attr_list blocks (`## Install { #install .wide }`,
or a `{: .note }` line after a block). Read as CommonMark, an indented body is a code block (its headings
vanish from the heading trail) and a snippet marker is indexed literally. normalize() turns each into
what a reader sees: a bold label line and the body at its own indentation, the included text in place,
a heading without its attr list (a standalone attr-list line goes). Code fences are left as written.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ADMONITION = re.compile(r'^(?P<indent> *)(?:!!!|\?\?\?\+?)\s*(?P<kind>[\w-]+)(?P<classes>(?:\s+[\w-]+)*)\s*(?:"(?P<title>[^"]*)")?\s*$')
TAB = re.compile(r'^(?P<indent> *)===[!+]{0,2}\s+"(?P<title>[^"]*)"\s*$')
BLOCK_OPEN = re.compile(r"^/{3,}\s*(?P<kind>[\w-]+)\s*(?:\|\s*(?P<title>.*?))?\s*$")
BLOCK_CLOSE = re.compile(r"^/{3,}\s*$")
SNIPPET = re.compile(r"""^(?P<indent> *)--8<--\s+(?P<q>["']?)(?P<target>[^"']+?)(?P=q)\s*$""")
SNIPPET_BLOCK = re.compile(r"^(?P<indent> *)--8<--\s*$")
SNIPPET_SECTION = re.compile(r"^\s*(?:<!--\s*)?[;]?--8<--\s*\[(?:start|end):[^\]]*\]")
_ATTR = r"""(?:[#.][\w:-]+|[\w:-]+=(?:"[^"]*"|'[^']*'|[^\s"'}]+))"""  # #id, .class, key=value
ATTR_LIST = rf"\{{:?\s*{_ATTR}(?:\s+{_ATTR})*\s*\}}"  # attr_list: `{ #id .class key=value }`, optional ':'
HEADING_ATTRS = re.compile(rf"^(?P<heading> {{0,3}}#{{1,6}}\s.*?)\s*{ATTR_LIST}\s*#*\s*$")
ATTR_LINE = re.compile(rf"^ {{0,3}}{ATTR_LIST}\s*$")
FENCE = re.compile(r"^\s*(?P<mark>`{3,}|~{3,})")
MAX_DEPTH = 4  # snippet includes nest at most this deep (and never cycle)


def normalize(text: str, path: Path, root: Path) -> tuple[str, dict[str, int]]:
    """(plain Markdown, counts of what was rewritten: admonitions, content_tabs, blocks, snippets_resolved,
    snippets_dropped, attr_lists). Snippets resolve against the including file's folder, then the source root; a
    target outside the source root, missing, or a URL is dropped (counted), never read."""
    notes: Counter = Counter()
    if not any(mark in text for mark in ("!!!", "???", "===", "--8<--", "///", "{")):
        return text, {}
    lines = _normalize(text.split("\n"), path, root.resolve(), notes, {path.resolve()})
    return "\n".join(lines), dict(sorted(notes.items()))


def _indented_block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines from `start` that are blank or indented by at least indent + 4 (the body), dedented by
    indent + 4, and the index after them; trailing blank lines are left to the caller."""
    body, i, need = [], start, " " * (indent + 4)
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith(need)):
        body.append(lines[i][len(need):] if lines[i].strip() else "")
        i += 1
    while body and not body[-1].strip():
        body.pop()
        i -= 1
    return body, i


def _label(kind: str, title: str | None) -> str | None:
    if title is not None:
        return f"**{title.strip()}**" if title.strip() else None  # `!!! note ""` shows no title
    return f"**{kind.replace('-', ' ').capitalize()}**"


def _normalize(lines: list[str], path: Path, root: Path, notes: Counter, seen: set[Path], depth: int = 0) -> list[str]:
    out: list[str] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if fence is not None:
            out.append(line)
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                fence = None
            i += 1
            continue
        if m := FENCE.match(line):
            fence = m.group("mark")
            out.append(line)
            i += 1
            continue
        m = ADMONITION.match(line) or TAB.match(line)
        if m:
            indent = len(m.group("indent"))
            body, i = _indented_block(lines, i + 1, indent)
            is_tab = line.lstrip().startswith("===")
            notes["content_tabs" if is_tab else "admonitions"] += 1
            label = _label("", m.group("title")) if is_tab else _label(m.group("kind"), m.group("title"))
            pad = " " * indent
            inner = _normalize(body, path, root, notes, seen, depth)
            out.extend(([pad + label, ""] if label else []) + [pad + b if b else "" for b in inner])
            continue
        if m := BLOCK_OPEN.match(line):
            notes["blocks"] += 1
            label = _label(m.group("kind"), m.group("title"))
            out.extend([label, ""] if label else [])
            i += 1
            continue
        if BLOCK_CLOSE.match(line):
            i += 1
            continue
        if SNIPPET_SECTION.match(line):
            i += 1
            continue
        if m := SNIPPET.match(line):
            out.extend(_include(m.group("target"), m.group("indent"), path, root, notes, seen, depth))
            i += 1
            continue
        if m := SNIPPET_BLOCK.match(line):
            j = i + 1
            targets = []
            while j < len(lines) and not SNIPPET_BLOCK.match(lines[j]):
                if lines[j].strip() and not lines[j].strip().startswith(";"):
                    targets.append(lines[j].strip())
                j += 1
            for target in targets:
                out.extend(_include(target, m.group("indent"), path, root, notes, seen, depth))
            i = j + 1
            continue
        if ATTR_LINE.match(line):
            notes["attr_lists"] += 1
            i += 1
            continue
        if m := HEADING_ATTRS.match(line):
            notes["attr_lists"] += 1
            line = m.group("heading")
        out.append(line)
        i += 1
    return out


def _include(target: str, indent: str, path: Path, root: Path, notes: Counter, seen: set[Path], depth: int) -> list[str]:
    """The snippet's lines (normalized, indented like the marker), or [] when it cannot be resolved."""
    name, start, end = target, None, None
    if m := re.fullmatch(r"(?P<name>.+?):(?P<start>-?\d*)(?::(?P<end>-?\d*))?", target):
        name = m.group("name")
        start = int(m.group("start")) if m.group("start") else None
        end = int(m.group("end")) if m.group("end") else None
    found = None
    if "://" not in name and depth < MAX_DEPTH:
        for base in (path.parent, root):
            candidate = (base / name).resolve()
            if candidate.is_file() and candidate.is_relative_to(root) and candidate not in seen:
                found = candidate
                break
    if found is None:
        notes["snippets_dropped"] += 1
        return []
    try:
        lines = found.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError):
        notes["snippets_dropped"] += 1
        return []
    if start is not None or end is not None:  # pymdownx line ranges are 1-based and inclusive
        lines = lines[(start or 1) - 1:end]
    notes["snippets_resolved"] += 1
    inner = _normalize(lines, found, root, notes, seen | {found}, depth + 1)
    while inner and not inner[-1].strip():
        inner.pop()
    return [indent + ln if ln else "" for ln in inner]
