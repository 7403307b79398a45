"""Text checks shared by synth and eval (pure): Unicode-aware content words, facts (numbers with
their units, names, identifiers), evidence spans, and the marks of a garbage text (loops, echoes,
placeholders, truncation, passage-number spam).

All checks are deterministic functions of their strings; offsets are Python string indices
(characters, not bytes), so `text[start:end]` is the span.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

# The exact reply the answer prompt asks for when the context lacks the answer: the reference answer of
# an unanswerable golden item (synth) and the answer the chain's guardrail gives (eval).
REFUSAL_ANSWER = "The documents do not say."
STOPWORDS = frozenset(
    "the a an and or of to in on for with is are was were be been it its this that these those by as at "
    "from can you your what which who how when where why does do not no yes will would should may".split()
)
# Scripts written without spaces between words: Han, kana, Hangul. A run of them is split into
# character bigrams, so a copied Chinese sentence matches its context and a made-up one does not.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|(?:(?![{_CJK}])[^\W_])+")
_CJK_RUN = re.compile(rf"^[{_CJK}]+$")

# Units a number is read with: "10 years" is not supported by a context saying "10 days".
UNITS = frozenset(
    "ms s sec second minute min hour h hr day week month year kb mb gb tb kib mib gib byte bit "
    "px em rem km m cm mm kg g mg % percent credit dock token request worker thread core cpu "
    "station euro dollar usd eur times".split()
)
_NUMBER = re.compile(r"(?<![\w.\-])(\d+(?:[.,:]\d+)*)(?:\s*(%|[A-Za-z]+))?")
_LIST_MARKER = re.compile(r"^\s*\d+[.)]\s", re.M)
_NAME = re.compile(r"[A-Z][\w\-]*(?:\.[A-Za-z_]\w*)*(?:\(\))?")
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*(?:(?:\.|_)\w+)+(?:\(\))?|\b\w+\(\)")
_NOT_IDENTIFIERS = frozenset({"e.g", "i.e", "etc.", "vs."})
_SENTENCE_START = set(".!?:;\n-*#>\"'(`|")
_SENTENCE = re.compile(r"[^\n]+?(?:[.!?\u3002\uff01\uff1f](?=\s|$)|$)", re.M)
_PLACEHOLDER = re.compile(r"\[[^\]\s][^\]\n]{0,39}\](?!\()|\{[^{}\s][^{}\n]{0,39}\}|<[A-Za-z_/][^<>\n]{0,39}>")
_PASSAGE_MARK = re.compile(r"\[\d{1,2}\]|\b[Pp]assage\s+\d{1,2}\b")
_TERMINAL = tuple(".!?)]}\"'`*\u3002\uff01\uff1f\u300d\u300f")
_DANGLING = frozenset("and or the a an of to in on for with by as at from that which is are was were be "
                      "your its their this these".split())


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens in any script; runs of CJK characters become character bigrams."""
    out: list[str] = []
    for tok in _TOKEN.findall(text.lower()):
        if _CJK_RUN.match(tok):
            out.extend([tok] if len(tok) == 1 else [tok[i:i + 2] for i in range(len(tok) - 1)])
        else:
            out.append(tok)
    return out


def content_words(text: str) -> list[str]:
    """Tokens that carry meaning: not a stopword and longer than 2 letters, or a number, or CJK."""
    return [t for t in tokens(text) if t not in STOPWORDS and (len(t) > 2 or t.isdigit() or _CJK_RUN.match(t))]


def support(text: str, context: str) -> float:
    """Share of text's content words that occur in context (0.0 when text has none)."""
    words = content_words(text)
    if not words:
        return 0.0
    vocab = set(tokens(context))
    return sum(1 for w in words if w in vocab) / len(words)


# -- facts ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    kind: str  # number | name
    text: str  # as written
    unit: str = ""  # numbers: the unit word that follows, singular and lower-case ("" if none)


def _unit(word: str | None) -> str:
    if not word:
        return ""
    w = word.lower()
    for cand in (w, w[:-1] if w.endswith("s") else w, w[:-2] if w.endswith("es") else w):
        if cand in UNITS:
            return cand
    return ""


def facts(text: str) -> list[Fact]:
    """Numbers (with the unit after them), proper names and code identifiers in text, in order.

    A capitalized word at the start of a sentence is a name only if it looks like one anyway
    (CamelCase, ALLCAPS, digits): "Use the flag" says nothing about a name called Use. List
    markers ("1. ") and passage markers ("[2]") are not facts.
    """
    found: list[Fact] = []
    masked = _LIST_MARKER.sub(lambda m: " " * len(m.group(0)), _PASSAGE_MARK.sub(lambda m: " " * len(m.group(0)), text))
    for m in _NUMBER.finditer(masked):
        found.append(Fact("number", m.group(1).replace(",", ""), _unit(m.group(2))))
    for m in _NAME.finditer(masked):
        word = m.group(0)
        start = m.start()
        if start > 0 and (masked[start - 1].isalnum() or masked[start - 1] in "_"):
            continue  # inside a word or identifier
        before = masked[:start].rstrip()
        at_start = not before or before[-1] in _SENTENCE_START
        looks_named = bool(re.search(r"[a-z][A-Z]|[A-Z]{2}|\d|[._(]", word))
        if len(word) < 2 or word.lower() in STOPWORDS or (at_start and not looks_named):
            continue
        found.append(Fact("name", word))
    for m in _IDENTIFIER.finditer(masked):
        if m.group(0).lower() in _NOT_IDENTIFIERS or len(m.group(0)) < 4:
            continue
        if not any(f.text == m.group(0) for f in found):
            found.append(Fact("name", m.group(0)))
    return found


def _number_in(fact: Fact, text: str) -> bool:
    plain = text.replace(",", "")
    for m in _NUMBER.finditer(plain):
        if m.group(1) != fact.text:
            continue
        if not fact.unit:
            return True
        after = plain[m.start(1) + len(m.group(1)): m.start(1) + len(m.group(1)) + 30].lower()
        if any(_unit(w) == fact.unit for w in re.findall(r"%|[a-z]+", after)[:3]):
            return True
    return False


def fact_in(fact: Fact, text: str) -> bool:
    """Whether the fact occurs in text: the same number (and unit, if it had one), or the same name
    or identifier ignoring case."""
    if fact.kind == "number":
        return _number_in(fact, text)
    name = fact.text.lower().removesuffix("()")
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text.lower()) is not None or (
        name.endswith("s") and re.search(rf"(?<![\w]){re.escape(name[:-1])}", text.lower()) is not None)


def unsupported_facts(text: str, evidence: str) -> list[Fact]:
    """The facts of text that evidence does not contain (a made-up number, unit, date or name)."""
    return [f for f in facts(text) if not fact_in(f, evidence)]


# -- evidence spans -------------------------------------------------------------------------------
def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence or line of text, whitespace trimmed, in order."""
    spans = []
    for m in _SENTENCE.finditer(text):
        start, end = m.start(), m.end()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


_NOT_PROSE = re.compile(r"^\s*(?:#{1,6}\s|\{[%*{#]|:::|<[A-Za-z/!]|\|?\s*:?-{3,}|```|~~~)")


def prose_spans(text: str) -> list[tuple[int, int]]:
    """sentence_spans without headings, code-fence lines, template tags (`{% ... %}`, `{* ... *}`),
    HTML lines, table rules and `::: directives`: the sentences a fact can be stated in."""
    fenced: list[tuple[int, int]] = []
    for m in re.finditer(r"^\s*(```|~~~).*?^\s*\1[^\n]*$", text, re.M | re.S):
        fenced.append((m.start(), m.end()))
    return [(s, e) for s, e in sentence_spans(text)
            if not _NOT_PROSE.match(text[s:e]) and not any(fs <= s < fe for fs, fe in fenced)]


def evidence_spans(answer: str, text: str, max_spans: int = 4) -> list[tuple[int, int]]:
    """The prose sentences of text that support answer, in text order: greedy cover of the answer's
    facts first, then of its content words; a sentence is taken only if it adds a fact or two new
    words (one, for a short answer). Headings, code and template lines are never evidence: an answer
    "supported" by a heading alone is a guess. Empty when nothing in text supports the answer."""
    wanted_facts = facts(answer)
    wanted_words = set(content_words(answer))
    spans = prose_spans(text)
    info = []
    for start, end in spans:
        sentence = text[start:end]
        info.append(((start, end), {f for f in wanted_facts if fact_in(f, sentence)}, set(tokens(sentence)) & wanted_words))
    chosen: list[tuple[int, int]] = []
    covered_facts: set[Fact] = set()
    covered_words: set[str] = set()
    min_new = 1 if len(wanted_words) <= 3 else 2
    while len(chosen) < max_spans:
        best, best_gain = None, (0, 0)
        for span, fs, ws in info:
            if span in chosen:
                continue
            gain = (len(fs - covered_facts), len(ws - covered_words))
            if gain > best_gain:
                best, best_gain = (span, fs, ws), gain
        if best is None or (best_gain[0] == 0 and best_gain[1] < min_new):
            break
        chosen.append(best[0])
        covered_facts |= best[1]
        covered_words |= best[2]
    return sorted(chosen)


# -- garbage --------------------------------------------------------------------------------------
def repetition(text: str) -> bool:
    """A loop: a word trigram that comes back three times and makes up a fifth of the text, or a
    sentence or line (of 12+ characters) written twice."""
    words = tokens(text)
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if grams:
        counts = Counter(grams)
        repeated = sum(c - 1 for c in counts.values() if c > 1)
        if counts.most_common(1)[0][1] >= 3 and repeated / len(grams) >= 0.2:
            return True
    pieces = [re.sub(r"\W+", " ", text[s:e].lower()).strip() for s, e in sentence_spans(text)]
    seen = Counter(p for p in pieces if len(p) >= 12)
    return any(c >= 2 for c in seen.values())


# What ragloop's own redaction (tasks/production.py, logs.redact) writes in place of personal data: not a
# template slot the model left, so never a "placeholder" answer.
REDACTION_MARKERS = {"email": "[EMAIL]", "phone": "[PHONE]", "pattern": "[REDACTED]"}


def placeholders(text: str, context: str = "") -> list[str]:
    """Template slots (`[x]`, `{x}`, `<x>`) in text that the context does not contain itself
    (FastAPI's `{item_id}` is a real path parameter when the docs say so). Markdown links and
    ragloop's redaction markers (REDACTION_MARKERS) are not slots."""
    return [m.group(0) for m in _PLACEHOLDER.finditer(text)
            if m.group(0) not in context and not re.fullmatch(r"\[\d{1,2}\]", m.group(0))
            and m.group(0) not in REDACTION_MARKERS.values()]


def passage_spam(text: str) -> bool:
    """Passage numbers instead of an answer: three or more `[n]`/"Passage n" marks, or one mark for
    every eight words or fewer."""
    marks = _PASSAGE_MARK.findall(text)
    return len(marks) >= 3 or (bool(marks) and len(tokens(text)) <= 8 * len(marks))


def truncated(text: str, context: str = "", finish_reason: str | None = None) -> bool:
    """Cut off: the model hit max_tokens, a code fence is left open, the text ends on a dangling
    word or comma, or its last word is a strict prefix of a context word that is not a word itself
    ("... run the comm" when the context says "command")."""
    if finish_reason == "length":
        return True
    stripped = text.rstrip()
    if not stripped or stripped.count("```") % 2:
        return bool(stripped)
    if stripped.endswith((",", ";", ":", "(", "-", "/", "=")):
        return True
    if stripped.endswith(_TERMINAL):
        return False
    words = tokens(stripped)
    if not words:
        return False
    last = words[-1]
    if last in _DANGLING and len(words) > 3:
        return True
    if context and len(last) >= 2 and not last.isdigit() and not _CJK_RUN.match(last):
        vocab = set(tokens(context))
        if last not in vocab and any(w.startswith(last) and len(w) > len(last) for w in vocab):
            return True
    return False


def echoes(answer: str, question: str) -> bool:
    """The answer restates the question: it adds no content word the question lacks."""
    words = content_words(answer)
    asked = set(content_words(question))
    return bool(words) and all(w in asked for w in words)


def degenerate_reason(answer: str, question: str, context: str, finish_reason: str | None = None) -> str | None:
    """Why an answer is garbage whatever its words share with the context: loop, passage_spam,
    placeholder, truncated or echo (checked in that order), or None."""
    if repetition(answer):
        return "loop"
    if passage_spam(answer):
        return "passage_spam"
    if placeholders(answer, context):
        return "placeholder"
    if truncated(answer, context, finish_reason):
        return "truncated"
    if echoes(answer, question):
        return "echo"
    return None


def joined(texts: Iterable[str]) -> str:
    return "\n\n".join(texts)


def spans_text(text: str, spans: Sequence[tuple[int, int]]) -> str:
    return " ".join(text[s:e] for s, e in spans)
