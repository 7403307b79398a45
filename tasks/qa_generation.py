"""Synthetic golden sets: sample chunks, generate typed Q&A with prompts, filter, follow the corpus.

Pure logic over small inputs (chunk records, LLM results); the LanceDB reads it needs go through
ChunkStore and the LLM/embedder come in as interfaces.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ragloop.tasks import grounding
from ragloop.tasks.indexing import ChunkStore, sql_in
from ragloop.tasks.prompts import Prompt, PromptError
from ragloop.tasks.question_types import QUESTION_TYPES, QuestionType
from ragloop.tasks.schemas import utcnow
from ragloop.tasks.settings import SynthConfig

log = logging.getLogger(__name__)

REFUSAL_ANSWER = grounding.REFUSAL_ANSWER
CONTEXT_REFERENCE = re.compile(
    r"\b(the|this|that|these|above|given|provided)\s+(passages?|texts?|context|documents?|excerpts?|snippets?|sections?)\b"
    r"|\b(of|in|from) the following\b|\bthe following\s*\?", re.I
)
STOPWORDS = grounding.STOPWORDS
# "What is the difference between a Prompts and a Prompts?", "Is X or X better?": the same thing twice.
_PAIRED = re.compile(r"\bbetween\s+(.+?)\s+and\s+([^?.!]+)|^(?:.*?\b)?(\w[\w ]*?)\s+(?:vs\.?|versus|or)\s+([^?.!]+)", re.I)
_ARTICLE = re.compile(r"^(?:a|an|the|using|with)\s+", re.I)
# Words a question template adds around its topic; an "unanswerable" question made only of these and
# words an indexed chunk contains is answered by that chunk.
_QUESTION_WORDS = frozenset("purpose difference between use used using work works mean means meaning main role "
                            "explain describe example examples way ways best many much have has had there get "
                            "make need needs happen happens".split())


@dataclass(frozen=True)
class ChunkRef:
    chunk_id: str
    doc_id: str
    doc_sha256: str
    text: str
    position: int
    headings: tuple[str, ...] = ()  # the chunk's heading trail, outermost first

    @property
    def topic(self) -> str:
        """What the chunk is about, for a prompt: its innermost two headings ("Security › OAuth2 scopes"),
        else its document's path."""
        return " › ".join(self.headings[-2:]) if self.headings else self.doc_id


@dataclass
class GenTask:
    qa_type: str
    persona: str
    chunks: list[ChunkRef]
    # An extractive type's answer: one (start, end) sentence span per chunk, in chunk order.
    answer_spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def kind(self) -> QuestionType:
        return QUESTION_TYPES[self.qa_type]


@dataclass
class Candidate:
    task: GenTask
    question: str
    answer: str
    prompt: Prompt
    error: str | None = None
    finish_reason: str | None = None  # of the generating call: "length" means cut at max_tokens
    original_question: str = ""  # before a rewrite step (paraphrased): what the answer checks hold it to
    generator: str | None = None  # who wrote the question when not the LLM ("template:definition")
    # Set by reject_reason on acceptance: chunk_id -> [(start, end)] character spans supporting the answer.
    evidence: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


@dataclass
class GenerationReport:
    accepted: list[dict] = field(default_factory=list)
    rejects: Counter = field(default_factory=Counter)
    attempted: int = 0
    ineligible_chunks: Counter = field(default_factory=Counter)  # chunks not allowed to seed questions, by reason


# -- budget and staleness -------------------------------------------------------------------------
def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split a budget over types by weight (largest remainder, ties broken by registration order)."""
    live = {t: w for t, w in weights.items() if w > 0}
    norm = sum(live.values())
    raw = {t: total * w / norm for t, w in live.items()}
    counts = {t: int(v) for t, v in raw.items()}
    order = list(QUESTION_TYPES)
    for t in sorted(live, key=lambda t: (-(raw[t] - counts[t]), order.index(t)))[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


REPLACED = ("stale", "retired", "outdated")  # statuses of items synth replaces within its budget


def classify_previous(items: list[dict], chunk_ids: set[str], doc_ids: set[str],
                      prompt_hashes: dict[str, str] | None = None, writer: str | None = None) -> dict[str, str]:
    """qa_id -> kept | stale | retired | outdated for the active items of the previous golden set.

    kept: every source chunk still exists (same text, same chunker) and the item's generation prompt is
    unchanged; stale: a source chunk changed but its document is still there; retired: a source
    document is gone; outdated: made by another version of its prompt than `prompt_hashes` (name ->
    hash) holds now, or by a prompt it no longer holds at all, or (writer "rules") an extractive item whose
    question a model wrote, so the golden set follows its generator.
    """
    out = {}
    for item in items:
        if item["status"] != "active":
            continue
        sources = item["source_chunk_ids"]
        docs = set(item["source_doc_ids"])
        prompt_name = (item.get("prompt_id") or "").split("@")[0]
        current = (prompt_hashes or {}).get(prompt_name)
        # A prompt synth no longer renders at all (its type is generated by another one now) outdates too.
        retired_prompt = prompt_hashes is not None and bool(prompt_name) and current is None
        # Under question_writer "rules" no model writes an extractive question: one a model wrote is outdated.
        kind = QUESTION_TYPES.get(item.get("qa_type") or "")
        retired_prompt = retired_prompt or (writer == "rules" and kind is not None and kind.answer == "extractive"
                                            and bool(item.get("generator"))
                                            and not str(item["generator"]).startswith(TEMPLATE_GENERATOR))
        if all(c in chunk_ids for c in sources):
            changed_prompt = current and item.get("prompt_hash") and current != item["prompt_hash"]
            out[item["qa_id"]] = "outdated" if changed_prompt or retired_prompt else "kept"
        elif docs and all(d in doc_ids for d in docs):
            out[item["qa_id"]] = "stale"
        else:
            out[item["qa_id"]] = "retired"
    return out


# -- sampling -------------------------------------------------------------------------------------
def _fetch(store: ChunkStore, chunk_ids: Sequence[str]) -> dict[str, dict]:
    if not chunk_ids:
        return {}
    rows = store.scan(["chunk_id", "doc_id", "doc_sha256", "text", "position", "headings", "vector"],
                      sql_in("chunk_id", chunk_ids))
    return {r["chunk_id"]: r for r in rows.to_pylist()}


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s|^\s*[=-]{3,}\s*$")
_LINK_LINE = re.compile(r"^\s*(?:[-*+]|\d+[.)])?\s*(?:\[[^\]]*\]\([^)]*\)[\s,;|]*)+\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")
_FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1[^\n]*$", re.M | re.S)
MIN_PROSE_WORDS = 6  # content words outside code, headings and links: fewer state no fact to ask about


def ineligible_reason(text: str) -> str | None:
    """Why a chunk may not seed a question, or None: `code_only` (nothing but code fences),
    `heading_only`, `link_list`, `table_of_contents` (short list entries without sentences) or
    `no_prose` (fewer than MIN_PROSE_WORDS content words outside code, headings and links)."""
    had_code = bool(_FENCE.search(text))
    rest = _FENCE.sub("", text)
    lines = [ln for ln in rest.splitlines() if ln.strip()]
    body = [ln for ln in lines if not _HEADING.match(ln)]
    if not body:
        return "code_only" if had_code else "heading_only"
    links = [ln for ln in body if _LINK_LINE.match(ln)]
    if len(links) >= 3 and len(links) >= 0.6 * len(body):
        return "link_list"
    entries = [m.group(1) for ln in body if (m := _LIST_ITEM.match(ln))]
    short = [e for e in entries if len(e.split()) <= 6 and not e.rstrip().endswith((".", "!", "?", ":"))]
    if len(short) >= 4 and len(short) >= 0.7 * len(body):
        return "table_of_contents"
    prose = [ln for ln in body if not _LINK_LINE.match(ln)]
    if len(grounding.content_words(re.sub(r"\]\([^)]*\)", "]", "\n".join(prose)))) < MIN_PROSE_WORDS:
        return "code_only" if had_code else "no_prose"
    return None


# A sentence that leans on another ("It is...", "Or you might...", "Here's an example") or points
# elsewhere ("the following", "see below") states no fact a reader could check on its own.
_DEPENDENT_START = re.compile(
    r"^(?:it|its|it's|this|that|these|those|they|them|their|here|there|or|but|and|so|then|now|also|again|"
    r"next|first|finally|instead|otherwise|however|still|thus|hence|therefore|as|such|which|let's|let\s+us|"
    r"we|we'll|we're|you'll\s+see|in\s+this|in\s+that|for\s+example|for\s+instance|by\s+the\s+way|"
    r"of\s+course|in\s+fact|anyway|above|below|after\s+that|before\s+that|with\s+(?:it|that|this))\b", re.I)
_POINTER = re.compile(r"\b(?:following|below|above|previous|next\s+(?:section|chapter|step)|same\s+as|like\s+before|"
                      r"see|read\s+(?:more|the|about)|check\s+(?:the|out)|learn|later|example|screenshot|image|"
                      r"this|these|those)\b", re.I)
# A link to another page of the docs ("... in [Settings](advanced/settings.md)") points at its answer.
_INTERNAL_LINK = re.compile(r"\]\((?!https?:|mailto:)[^)]*\)")
# A changelog line ("* Add GitHub action to ...", "Re-enable checks") records a change, not how things are.
_CHANGELOG = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(?:[^\w`]*\s*)?(?:add|adds|added|fix|fixes|fixed|update|updates|updated|"
                        r"bump|bumps|remove|removes|removed|refactor|re-enable|enable|disable|upgrade|improve|"
                        r"document|tweak|rename|drop|deprecate|revert|merge|sync|translate)\b", re.I)
_INLINE_CODE = re.compile(r"`[^`]*`")
# A hedged sentence ("you might want to", "it would probably") tells a story, not a fact to check.
_HEDGE = re.compile(r"\b(?:might|would|could|probably|perhaps|maybe|possibly|likely|imagine|suppose)\b", re.I)
# "X is a ...", "X are the ...", "X means ...": a definition, answered by the sentence whatever is asked.
_DEFINITION = re.compile(r"^(?:an?\s+|the\s+)?(?P<term>[^,;:()]{2,60}?)\s*(?:\([^)]*\)\s*)?\s(?:is|are|means|refers\s+to)"
                         r"\s+(?:an?|the|one|some|just|simply|basically)\b", re.I)
# A "how do I ...?" question asks for a way: its answer sentence names one (code, or a verb of doing).
_HOW_QUESTION = re.compile(r"^\s*how\s+(?:to|do|does|can|could|should|would|is|are)\b", re.I)
_METHOD = re.compile(r"`|\b(?:use|using|pass|passing|set|setting|call|calling|add|adding|declare|declaring|import|"
                     r"install|create|creating|run|running|put|write|define|defining|return|returns|inherit|"
                     r"configure|by|with|through|via)\b", re.I)
_ABBREVIATION_END = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|approx|incl|no|fig|eq)\.$", re.I)
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
FACT_SENTENCE_WORDS = (6, 45)  # words of a sentence that can be a reference answer on its own


def fact_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of the sentences of a chunk that can be a reference answer verbatim: prose (no
    heading, code or template line; grounding.prose_spans), FACT_SENTENCE_WORDS long, a statement
    (ends with "." or "!"), standing on its own (no leading pronoun or connective: "It...", "Or...",
    "Here's..."; no pointer elsewhere: "the following", "see below", "an example"; no hedge: "you might
    want to"), with at least four content words outside inline code and links. In text order."""
    return list(_iter_fact_sentences(text))


def _iter_fact_sentences(text: str) -> Iterator[tuple[int, int]]:
    for start, end in grounding.prose_spans(text):
        sentence = text[start:end].strip()
        if sentence.startswith(("|", ">", "!", "[")) or _INTERNAL_LINK.search(sentence) or _CHANGELOG.match(sentence):
            continue  # a table row, quote, image or link line; a pointer to another page; a changelog line
        body = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", sentence)  # a list item's marker is not a word
        words = body.split()
        if not FACT_SENTENCE_WORDS[0] <= len(words) <= FACT_SENTENCE_WORDS[1]:
            continue
        if not body.rstrip("*_)\"'").endswith((".", "!")) or body.rstrip().endswith(("...", "…")):
            continue
        lead = body.lstrip("*_\"'(`")
        if (not lead or not (lead[0].isupper() or lead[0].isdigit()) or _DEPENDENT_START.match(lead)
                or _POINTER.search(body) or _HEDGE.search(body)):
            continue  # a fragment (a wrapped line's tail), or a sentence leaning on another
        if re.search(r"\b(?:that|it|them|this|these|those)\W*$", body, re.I):
            continue  # "... designed to satisfy that.": the fact is in the sentence before
        if (body.count("(") != body.count(")") or body.count("`") % 2 or body.count("**") % 2
                or _ABBREVIATION_END.search(body)):
            continue  # cut inside a parenthesis, code span or bold run, or at "e.g." (a split, not an end)
        prose = _INLINE_CODE.sub(" ", _LINK_TARGET.sub("]", body))
        if len(grounding.content_words(prose)) < 4 or grounding.placeholders(body, ""):
            continue
        yield start + (len(text[start:end]) - len(text[start:end].lstrip())), end


def candidate_sentences(text: str, writer: str = "rules_then_model") -> list[tuple[int, int]]:
    """The fact_sentences an extractive item may be asked about: with writer "rules", only those a question
    form fits (template_question), since no model writes the question."""
    return list(_iter_candidate_sentences(text, writer))


def has_candidate_sentence(text: str, writer: str = "rules_then_model") -> bool:
    """bool(candidate_sentences(text, writer)), stopping at the first sentence that qualifies."""
    return next(_iter_candidate_sentences(text, writer), None) is not None


def _iter_candidate_sentences(text: str, writer: str) -> Iterator[tuple[int, int]]:
    spans = _iter_fact_sentences(text)
    return (sp for sp in spans if template_question(text[sp[0]:sp[1]])) if writer == "rules" else spans


def pick_fact_sentence(text: str, rng: random.Random, like: str = "",
                       writer: str = "rules_then_model") -> tuple[int, int] | None:
    """One of text's fact_sentences, seeded: the one sharing most content words with `like` when given
    (the second hop of a multi-hop question), else a random one weighted towards sentences a question
    can be written for by rule (template_question) and sentences stating numbers, names or identifiers
    (grounding.facts). writer "rules": only sentences a question form fits. None when the chunk has none."""
    spans = candidate_sentences(text, writer)
    if not spans:
        return None
    if like:
        wanted = set(grounding.content_words(like))
        scores = [len(wanted & set(grounding.content_words(text[s:e]))) for s, e in spans]
        best = max(scores)
        return rng.choice([sp for sp, sc in zip(spans, scores) if sc == best])
    weights = [1 + min(len(grounding.facts(text[s:e])), 3) + 6 * bool(template_question(text[s:e])) for s, e in spans]
    return rng.choices(spans, weights=weights)[0]


TEMPLATE_GENERATOR = "template"  # generator prefix of a question written by template_question ("template:definition")
_EMPHASIS = re.compile(r"(?<![\w*])[*_]{1,2}(?=\S)|(?<=\S)[*_]{1,2}(?![\w*])")
_SUBJECT_START = re.compile(r"^(?:the|an?)\s+", re.I)
_PARTICIPLE = (r"(?:[a-z]+ed|built|made|written|sent|kept|run|set|given|shown|done|known|found|held|read|"
               r"based|meant|thrown|taken|chosen|seen)")
# (form, pattern over the sentence without emphasis or list marker and without its final stop)
_TEMPLATES = (
    ("definition", re.compile(r"^(?P<art>an?\s+|the\s+)?(?P<term>[^,;:()]{2,60}?)\s*(?:\([^)]*\)\s*)?\s"
                              r"(?P<be>is|are)\s+(?:an?|the|one|some|just|simply|basically)\s", re.I)),
    ("purpose", re.compile(r"^To (?P<purpose>[^,]{8,120}),\s+(?P<rest>\S.{8,})$")),
    ("goal", re.compile(r"^If you (?:want|need|would like) to (?P<goal>[^,]{6,120}),\s+(?P<rest>\S.{8,})$")),
    ("means", re.compile(r"^You can (?P<act>[a-z]+ [^,]{3,80}?) (?:by|using|through|via|with (?:(?:the|an?) )?`)"
                         r"(?P<how>\S.{3,})$")),
    ("passive", re.compile(r"^(?P<art>the\s+|an?\s+)?(?P<subj>[^,;:()]{2,50}?) (?P<be>is|are) "
                           r"(?:(?:also|only|always|automatically|usually|now|then) )?(?P<part>" + _PARTICIPLE +
                           r") (?P<prep>on|by|with|in|from|to|for|as|into) (?P<rest>\S.{2,})$", re.I)),
    ("object", re.compile(r"^(?P<art>the\s+|an?\s+)?(?P<subj>[^,;:()]{2,50}?) (?P<verb>returns|requires|accepts|"
                          r"supports|contains|uses|provides|includes|creates|generates|takes|expects|defines|stores|"
                          r"handles|validates|converts|reads|sends|receives) (?P<obj>\S.{2,})$", re.I)),
)


_NOT_SUBJECT_START = frozenset("because since although though while when whenever if unless for with without in on at by "
                               "from of as after before during to into so and or but then also now there here what which "
                               "who you we i they it".split())
_PRONOUN = re.compile(r"\b(?:it|its|they|them|their|this|these|those|that|which|he|she|him|her)\b", re.I)
_FUNCTION_WORDS = frozenset("all some each every most many any both only several other another".split())


def _subject_ok(subject: str) -> bool:
    """A subject a question can name: one to six words, not opening with a conjunction, preposition or
    pronoun ("Because pydantic data structures", "For OAuth2 they"), holding no pronoun."""
    words = subject.split()
    return (0 < len(words) <= 6 and subject[0] not in "\"'*_[(" and words[0].lower().strip("`*_") not in _NOT_SUBJECT_START
            and not _DEPENDENT_START.match(subject) and not _PRONOUN.search(subject))


_PRONOUN_START = re.compile(r"(?:it|they|we|you|he|she|there|this|that)\b", re.I)
_CLAUSE_WORD = re.compile(r"\b(?:if|when|whether|because|that|which|where|who)\b", re.I)
_VAGUE_HEAD = re.compile(r"^(?:(?:the|an?)\s+)?(?:most|least|best|worst|first|last|only|same|other|next|main|following)\b", re.I)


def _term_ok(term: str) -> bool:
    """A term a definition question can name: no clause inside it ("Check if there"), and not a bare
    superlative or ordinal ("the most secure", "the first"): "What is the most secure?" asks about nothing."""
    return not _CLAUSE_WORD.search(term) and not _VAGUE_HEAD.match(term)


def _clause_ok(clause: str) -> bool:
    """A purpose, goal or action a question can carry: no pronoun pointing outside it ("configure them"),
    not ending on a dangling "and <word>" (cut at its own "with"), not opening with "which"."""
    return not _PRONOUN.search(clause) and not re.search(r"\b(?:and|or)\s+\w+$", clause.strip())


def _sentence_case(term: str, body: str) -> str:
    """A term that opens its sentence keeps its capital only when it is a name: "Containers" becomes
    "containers" when the sentence also writes it in lower case, "FastAPI" stays."""
    first = term.split()[0]
    if first.lower() in _FUNCTION_WORDS or (first[:1].isupper() and first[1:].islower()
                                            and re.search(rf"\b{re.escape(first.lower())}\b", body[len(first):])):
        return first.lower() + term[len(first):]
    return term


def template_question(sentence: str) -> tuple[str, str] | None:
    """(question, form) that a documentation sentence answers, written by rule, without a model, or
    None when no form fits. Forms, tried in order:
      definition  "An environment variable (...) is a value ..."   -> "What is an environment variable?"
      purpose     "To send data, use POST ..."                     -> "How do you send data?"
      goal        "If you want to X, ..."                          -> "How can you X?"
      means       "You can X with/by/using Y"                      -> "How can you X?"
      passive     "The TLS certificates are associated with ..."   -> "What are the TLS certificates associated with?"
      object      "The TestClient returns ..."                     -> "What does the TestClient return?"
    The subject of a definition, passive or object sentence is at most six words and no pronoun; an
    object sentence's subject is specific (code, or two words or more: not just the product's name).
    Markdown emphasis is dropped; code marks stay."""
    body = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", sentence).strip()
    body = _EMPHASIS.sub("", body).rstrip(" .!")
    for form, pattern in _TEMPLATES:
        m = pattern.match(body)
        if not m:
            continue
        g = m.groupdict()
        art = (g.get("art") or "").lower()
        if form == "definition" and _subject_ok(g["term"]) and _term_ok(g["term"]):
            return f"What {g['be'].lower()} {art}{_sentence_case(g['term'].strip(), body)}?", form
        if form == "purpose" and _clause_ok(g["purpose"]):
            return f"How do you {g['purpose'].strip()}?", form
        if form in ("goal", "means") and _clause_ok(g.get("goal") or g.get("act")):
            return f"How can you {(g.get('goal') or g.get('act')).strip()}?", form
        subject = _sentence_case((g.get("subj") or "").strip(), body) if g.get("subj") else ""
        if form == "passive" and g["prep"].lower() == "to" and not re.match(r"(?:the|an?|`|[A-Z\d])", g["rest"]):
            continue  # "is pleased to announce", "is designed to satisfy": an infinitive, not a place
        if form == "passive" and g["prep"].lower() == "as" and _PRONOUN_START.match(g["rest"]):
            continue  # "is always required as it has to be ...": "as" means because here
        if form == "passive" and _subject_ok(subject) and g["prep"].lower() == "for" and re.match(r"\d|(?:an?|one|two|three|several|many) \w+s?\b", g["rest"]):
            return f"How long {g['be'].lower()} {art}{subject} {g['part']}?", form  # "kept for 30 days"
        if form == "passive" and _subject_ok(subject):
            return f"What {g['be'].lower()} {art}{subject} {g['part']} {g['prep'].lower()}?", form
        # "What does FastAPI provide?" has a hundred answers in FastAPI's docs: the subject must be specific
        specific = "`" in subject or len(subject.split()) >= 2
        if form == "object" and _subject_ok(subject) and specific:
            return f"What does {art}{subject} {g['verb'].lower()[:-1]}?", form
    return None


def folder_path(doc_id: str) -> tuple[str, ...]:
    """The folders of a document id, outermost first; a table row's file counts as a folder
    ("tables/stations.csv#S1" -> ("tables", "stations.csv")), a top-level file has none."""
    path, _, row = doc_id.partition("#")
    parts = tuple(p for p in path.split("/") if p)
    return parts if row else parts[:-1]


def top_folder(doc_id: str) -> str:
    """The top-level folder a document is reported under ("." for files at the root)."""
    parts = folder_path(doc_id)
    return parts[0] if parts else "."


def report_folders(doc_ids: Sequence[str], max_depth: int = 3) -> dict[str, str]:
    """doc_id -> the folder its coverage is reported under: its top-level folder ("." at the root),
    except that a folder holding more than half of all documents is split into its subfolders (down
    to max_depth levels), so a corpus under one `docs/` folder reports `docs/tutorial`, `docs/advanced`,
    ... rather than one line. Files directly in a split folder report as that folder."""
    out = {d: (folder_path(d)[:1] or (".",)) for d in doc_ids}
    for _ in range(max_depth - 1):
        sizes = Counter(out.values())
        big = {f for f, n in sizes.items() if f != (".",) and n > len(out) / 2}
        if not big:
            break
        for d, f in out.items():
            parts = folder_path(d)
            if f in big and len(parts) > len(f):
                out[d] = parts[: len(f) + 1]
    return {d: "/".join(f) for d, f in out.items()}


def stratified_order(doc_ids: Sequence[str], rng: random.Random, depth: int = 0) -> list[str]:
    """Documents interleaved over the folder tree, seeded: each folder (and the files directly in
    it, together) is one stream, and streams take turns in a shuffled order, recursively. The first
    n documents therefore span as many folders as n allows, whatever the paths sort like."""
    groups: dict[str, list[str]] = {}
    files: list[str] = []
    for doc in sorted(doc_ids):
        parts = folder_path(doc)
        if len(parts) > depth:
            groups.setdefault(parts[depth], []).append(doc)
        else:
            files.append(doc)
    rng.shuffle(files)
    streams = [files] if files else []
    streams += [stratified_order(groups[name], rng, depth + 1) for name in sorted(groups)]
    rng.shuffle(streams)
    order: list[str] = []
    for i in range(max((len(s) for s in streams), default=0)):
        order.extend(s[i] for s in streams if i < len(s))
    return order


_ELIGIBLE: dict[tuple, tuple[dict[str, list[dict]], Counter]] = {}  # eligible_chunks by table version and settings
_ELIGIBLE_KEEP = 2


def eligible_chunks(store: ChunkStore, config: SynthConfig) -> tuple[dict[str, list[dict]], Counter]:
    """The chunks that may seed a question, by document in position order ({doc_id: [{chunk_id, doc_id,
    position, n_tokens, facts}]}, facts: it holds a candidate sentence), and the others counted by
    ineligible_reason. Read and judged once per table version (versions never change) and settings in a
    process: every synth round planned from the same table (9,725 SciFact chunks: about 2.7 s a round). A
    store without a lake, name and version (a stand-in) is read every time."""
    lake, name, version = getattr(store, "lake", None), getattr(store, "name", None), getattr(store, "version", None)
    key = (getattr(lake, "uri", None), name, version, config.min_context_tokens, config.question_writer)
    if None in key[:3]:
        return _judge_chunks(store, config)
    if key not in _ELIGIBLE:
        while len(_ELIGIBLE) >= _ELIGIBLE_KEEP:
            _ELIGIBLE.pop(next(iter(_ELIGIBLE)))
        _ELIGIBLE[key] = _judge_chunks(store, config)
    by_doc, skipped = _ELIGIBLE[key]
    return {d: list(rows) for d, rows in by_doc.items()}, Counter(skipped)


def _judge_chunks(store: ChunkStore, config: SynthConfig) -> tuple[dict[str, list[dict]], Counter]:
    by_doc: dict[str, list[dict]] = {}
    skipped: Counter = Counter()
    for row in store.scan(["chunk_id", "doc_id", "position", "n_tokens", "text"]).to_pylist():
        if row["n_tokens"] < config.min_context_tokens:
            continue
        text = row.pop("text")
        why = ineligible_reason(text)
        if why:
            skipped[why] += 1
            continue
        row["facts"] = has_candidate_sentence(text, config.question_writer)
        by_doc.setdefault(row["doc_id"], []).append(row)
    for rows in by_doc.values():
        rows.sort(key=lambda r: r["position"])
    return by_doc, skipped


def plan_tasks(
    store: ChunkStore, counts: dict[str, int], config: SynthConfig, rng: random.Random, priority_docs: Sequence[str] = (),
    ineligible: Counter | None = None, avoid: frozenset[str] = frozenset(),
) -> list[GenTask]:
    """Generation tasks, stratified over the folder tree and documents: documents are visited in
    stratified_order (priority documents first, stratified among themselves), each task takes an
    eligible chunk of the next document. Chunks that state no facts (ineligible_reason) never seed
    a question; their counts by reason are written into `ineligible` when given. Chunks in `avoid` (the
    ones earlier rounds of this run already asked about) are passed over while others are left. An extractive type
    takes the next document with a chunk holding a fact sentence, and its task carries the sentence
    picked in each chunk (pick_fact_sentence; the second hop's is the one closest to the first's)."""
    by_doc, skipped = eligible_chunks(store, config)
    if ineligible is not None:
        ineligible.clear()
        ineligible.update(skipped)
    if not by_doc:
        return []
    first = [d for d in dict.fromkeys(priority_docs) if d in by_doc]
    order = stratified_order(first, rng) + stratified_order([d for d in by_doc if d not in set(first)], rng)
    slots = [t for t in QUESTION_TYPES for _ in range(counts.get(t, 0))]
    rng.shuffle(slots)

    picks: list[tuple[str, str, list[str]]] = []  # (type, doc, chunk ids)
    taken: set[str] = set()  # chunks this plan already asks about: the next slot asks elsewhere while it can
    for i, qa_type in enumerate(slots):
        kind = QUESTION_TYPES[qa_type]
        # An extractive type skips documents without a fact sentence; chunks asked about before are
        # taken again only when no other chunk is left (a small corpus).
        for skip in (avoid | taken, frozenset()):
            found = _next_doc(order, i, by_doc, kind.answer == "extractive", skip)
            if found:
                picks.append((qa_type, found[0], SAMPLERS[kind.sampling](found[1], rng, config)))
                taken.update(picks[-1][2])
                break
    fetched = _fetch(store, sorted({c for _, _, ids in picks for c in ids}))
    tasks = []
    for i, (qa_type, doc, ids) in enumerate(picks):
        task = _task(store, qa_type, [_ref(fetched[c]) for c in ids if c in fetched], fetched, rng, config.question_writer)
        if task is not None:
            task.persona = config.personas[i % len(config.personas)]
            tasks.append(task)
    return tasks


def _next_doc(order: list[str], start: int, by_doc: dict[str, list[dict]], need_facts: bool,
              skip: frozenset[str]) -> tuple[str, list[dict]] | None:
    """The first document from order[start] on (wrapping) with chunk rows to ask about, and those rows."""
    for j in range(len(order)):
        doc = order[(start + j) % len(order)]
        rows = [r for r in by_doc[doc] if (r["facts"] or not need_facts) and r["chunk_id"] not in skip]
        if rows:
            return doc, rows
    return None


def _task(store: ChunkStore, qa_type: str, refs: list[ChunkRef], fetched: dict[str, dict],
          rng: random.Random, writer: str = "rules_then_model") -> GenTask | None:
    """The task of one pick: a related pair gets its partner chunk (or falls back to its fallback type),
    an extractive type its answer sentence(s); None when no question can be asked."""
    kind = QUESTION_TYPES[qa_type]
    extractive = kind.answer == "extractive"
    if kind.sampling == "related_pair":
        partner = _neighbour(store, fetched[refs[0].chunk_id], need_facts=extractive, writer=writer)
        if partner is None:  # a one-chunk corpus has no second hop
            if kind.fallback is None:
                return None
            qa_type, kind = kind.fallback, QUESTION_TYPES[kind.fallback]
            extractive = kind.answer == "extractive"
        else:
            refs = refs + [partner]
    if not extractive:
        return GenTask(qa_type, "", refs)
    spans: list[tuple[int, int]] = []
    for ref in refs:
        like = refs[0].text[slice(*spans[0])] if spans else ""
        span = pick_fact_sentence(ref.text, rng, like=like, writer=writer)
        if span is None:
            return None
        spans.append(span)
    return GenTask(qa_type, "", refs, spans)


def _one_chunk(rows: list[dict], rng: random.Random, config: SynthConfig) -> list[str]:
    return [rng.choice(rows)["chunk_id"]]


def _chunk_run(rows: list[dict], rng: random.Random, config: SynthConfig) -> list[str]:
    chosen, budget = [], 0
    start = rng.randrange(len(rows))
    for row in rows[start:] + rows[:start]:
        if budget + row["n_tokens"] > config.max_context_tokens and chosen:
            break
        chosen.append(row["chunk_id"])
        budget += row["n_tokens"]
    return chosen


# question_types.Sampling -> (a document's eligible chunk rows in order, rng, config) -> chunk ids. A
# related_pair starts from one chunk; plan_tasks adds its partner from the index (_neighbour).
SAMPLERS = {"one_chunk": _one_chunk, "related_pair": _one_chunk, "chunk_run": _chunk_run}


def _ref(row: dict) -> ChunkRef:
    return ChunkRef(row["chunk_id"], row["doc_id"], row["doc_sha256"], row["text"], row["position"],
                    tuple(row.get("headings") or ()))


def _neighbour(store: ChunkStore, row: dict, need_facts: bool = False, writer: str = "rules_then_model") -> ChunkRef | None:
    """The most similar chunk that is neither this chunk nor adjacent to it in its document (and, with
    need_facts, holds a fact sentence)."""
    hits = (
        store.table.search(np.asarray(row["vector"], dtype=np.float32))
        .distance_type("cosine")
        .select(["chunk_id", "doc_id", "doc_sha256", "text", "position", "headings", "_distance"])
        .limit(8)
        .to_list()
    )
    for hit in hits:
        same_doc = hit["doc_id"] == row["doc_id"]
        if hit["chunk_id"] == row["chunk_id"] or (same_doc and abs(hit["position"] - row["position"]) <= 1):
            continue
        if hit["_distance"] < 0.02:  # a near copy is not a second hop
            continue
        if ineligible_reason(hit["text"]):  # a link list or code block is no hop either
            continue
        if need_facts and not candidate_sentences(hit["text"], writer):
            continue
        return _ref(hit)
    return None


# -- prompts -> messages -------------------------------------------------------------------------
def task_variables(task: GenTask) -> dict[str, str]:
    """Everything a generation prompt may use for this task: `context` (the chunks joined) and
    `persona`; `context_a`/`context_b` and `topic_a`/`topic_b` for a pair; an extractive task's
    `topic`/`sentence` (one chunk) or `sentence_a`/`sentence_b`. A prompt takes the ones it declares."""
    chunks = task.chunks
    out = {"context": "\n\n".join(c.text for c in chunks), "persona": task.persona, "topic": chunks[0].topic}
    if len(chunks) == 2:
        out.update(context_a=chunks[0].text, context_b=chunks[1].text, topic_a=chunks[0].topic, topic_b=chunks[1].topic)
    sentences = [c.text[s:e] for c, (s, e) in zip(chunks, task.answer_spans)]
    if sentences:
        out["sentence"] = " ".join(sentences)
        if len(sentences) == 2:
            out.update(sentence_a=sentences[0], sentence_b=sentences[1])
    return out


def task_messages(task: GenTask, prompts: dict[str, Prompt]) -> tuple[Prompt, list[dict]]:
    """The generation prompt of the task's type and its rendered messages; PromptError when the prompt
    declares a variable this task cannot fill (e.g. `sentence` on a type whose answer is generated)."""
    prompt = prompts[task.kind.prompt]
    available = task_variables(task)
    missing = [k for k in prompt.input_variables if k not in available]
    if missing:
        raise PromptError(f"prompt {prompt.name!r}: variable(s) {missing} cannot be filled for question type "
                          f"{task.qa_type!r} (answer: {task.kind.answer}); it offers {sorted(available)}")
    return prompt, prompt.render(**{k: v for k, v in available.items() if k in prompt.input_variables})


def templated(task: GenTask) -> tuple[str, str] | None:
    """(question, form) written by rule for an extractive task, or None (the model writes it): one
    sentence's template_question, or for a pair of sentences that both have one, the two joined
    ("What is X based on, and how can you run Y?", form "pair")."""
    sentences = [c.text[s:e] for c, (s, e) in zip(task.chunks, task.answer_spans)]
    found = [template_question(x) for x in sentences]
    if not found or not all(found):
        return None
    if len(found) == 1:
        return found[0]
    first, second = found[0][0].rstrip("?"), found[1][0]
    return f"{first}, and {second[0].lower()}{second[1:]}", "pair"


def extractive_answer(task: GenTask) -> str:
    """An extractive task's reference answer: its sentences verbatim, in chunk order, one space apart."""
    return " ".join(c.text[s:e].strip() for c, (s, e) in zip(task.chunks, task.answer_spans))


def generate_candidates(tasks: list[GenTask], prompts: dict[str, Prompt], llm, on_done=None,
                        writer: str = "rules_then_model") -> list[Candidate]:
    """One LLM structured call per task (batched per prompt), then the rewrite step of the types that
    have one (paraphrased), batched per rewrite prompt. An extractive one-sentence task whose sentence
    fits a question form (template_question: "What is <term>?", "How do you <purpose>?", ...) gets that
    question without a call, unless writer is "model" (synth.question_writer); with writer "rules" the
    rewrite step is casual_rewrite, not the model. on_done() once per task as its first call
    finishes (progress; the LLM calls it, possibly from its worker thread)."""
    candidates: list[Candidate | None] = [None] * len(tasks)
    groups: dict[str, list[int]] = {}
    rendered = {}
    for i, task in enumerate(tasks):
        found = templated(task) if writer != "model" else None
        if found:
            # a sentence of a known form answers a question written by rule: no call, no invented words
            candidates[i] = Candidate(task, found[0], extractive_answer(task), prompts[task.kind.prompt],
                                      generator=f"{TEMPLATE_GENERATOR}:{found[1]}")
            if on_done:
                on_done()
            continue
        prompt, messages = task_messages(task, prompts)
        rendered[i] = (prompt, messages)
        groups.setdefault(prompt.name, []).append(i)
    for name, idxs in groups.items():
        prompt = prompts[name]
        results = llm.structured_many([rendered[i][1] for i in idxs], prompt.output_model(), on_done=on_done,
                                      **prompt.params)
        for i, res in zip(idxs, results):
            value = res.value
            answer = getattr(value, "answer", "") if value else ""
            if tasks[i].answer_spans:  # extractive: the answer is the picked sentence(s), never the model's
                answer = extractive_answer(tasks[i])
            candidates[i] = Candidate(
                tasks[i], getattr(value, "question", "") if value else "", answer,
                prompt, None if value is not None else (res.error or "no value"), res.finish_reason,
            )
    rewrites: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        if c and c.task.kind.rewrite_prompt and not c.error:
            if writer == "rules":  # no model writes a question: the hurried user's wording by rule too
                c.original_question, c.question = c.question, casual_rewrite(c.question)
                continue
            rewrites.setdefault(c.task.kind.rewrite_prompt, []).append(i)
    for name, para_idx in rewrites.items():
        prompt = prompts[name]
        results = llm.structured_many(
            [prompt.render(question=candidates[i].question, persona=tasks[i].persona) for i in para_idx],
            prompt.output_model(), **prompt.params,
        )
        for i, res in zip(para_idx, results):
            cand = candidates[i]
            if res.value is None:
                cand.error = res.error or "no value"
            else:
                cand.original_question = cand.question
                rewritten = res.value.question
                if _normalized(rewritten) == _normalized(cand.question):
                    rewritten = casual_rewrite(cand.question)  # the model gave the question back unchanged
                cand.question, cand.prompt = rewritten, prompt
    return [c for c in candidates if c is not None]


def _normalized(text: str) -> str:
    return " ".join(grounding.tokens(text))


_CASUAL_OPENERS = ((r"^how do (?:you|i) ", "how to "), (r"^how can (?:you|i) ", "how to "),
                   (r"^what (?:is|are) (?:an?|the) ", ""), (r"^what (?:is|are) ", ""), (r"^what does ", ""))


def casual_rewrite(question: str) -> str:
    """A question as a hurried user types it into a search box, by rule: lower case (code kept as
    written), the opener shortened ("How do you X?" -> "how to X", "What is the Y?" -> "Y"), no question
    mark. Used when the model returns a paraphrase identical to its question."""
    text = question.strip().rstrip("?").strip()
    parts = re.split(r"(`[^`]*`)", text)
    text = "".join(p if p.startswith("`") else p.lower() for p in parts)
    for pattern, repl in _CASUAL_OPENERS:
        new = re.sub(pattern, repl, text)
        if new != text:
            text = new
            break
    return text


def max_prompt_tokens(tasks: list[GenTask], prompts: dict[str, Prompt], count_tokens) -> int:
    """The largest rendered prompt plus its reply budget, in the LLM's tokens (for preflight)."""
    worst = 0
    for task in tasks:
        prompt, messages = task_messages(task, prompts)
        size = sum(count_tokens(m["content"]) + 8 for m in messages) + int(prompt.params.get("max_tokens", 256))
        worst = max(worst, size)
    for name in dict.fromkeys(k.rewrite_prompt for k in QUESTION_TYPES.values() if k.rewrite_prompt):
        rewrite = prompts[name]
        rendered = rewrite.render(question="x" * 300, persona="p")
        worst = max(worst, sum(count_tokens(m["content"]) for m in rendered) + 128)
    return worst


# -- filters -------------------------------------------------------------------------------------
REJECT_REASONS = (
    "unparseable", "too_short", "too_long", "malformed", "refers_to_context", "placeholder", "repetition",
    "truncated", "copies_context", "circular", "made_up_fact", "unsupported_question", "question_form", "unsupported_answer",
    "missing_evidence", "answerable", "roundtrip", "near_duplicate", "over_budget",
)
_REPEATED_RUN = re.compile(r"\b(\w+(?:\W+\w+){2,})\W+(?:\w+\W+){0,3}?\1\b", re.I)  # 3+ words said twice
_WH = frozenset("how what which why when where who whom whose about regarding does do did can could should would will is are "
                "was were may might must shall".split())


def question_support(question: str, source: str) -> float:
    """Share of the question's topic words (content words beyond question-template words) found in
    source, as a word, a 5-letter stem ("creating" ~ "create") or inside a compound ("web socket" in
    "WebSockets"); 1.0 for a question with no topic words. A question a small model padded with words
    of its own ("... in a Python context", a few-shot example's product name) scores low."""
    words = [w for w in dict.fromkeys(grounding.content_words(question)) if w not in _QUESTION_WORDS | _WH]
    if not words:
        return 1.0
    return _words_found(words, source, compounds=True) / len(words)


def _words_found(words: Sequence[str], text: str, compounds: bool = False) -> int:
    """How many of words text holds: as a word, or by a 5-letter stem ("create" meets "creating",
    "application" "applications"); with compounds, also inside a run of its words ("web socket" in
    "WebSockets")."""
    vocab = set(grounding.tokens(text))
    stems = {v[:5] for v in vocab if len(v) >= 5}
    flat = "".join(grounding.tokens(text)) if compounds else ""
    return sum(1 for w in words if w in vocab or (len(w) >= 5 and w[:5] in stems) or (compounds and len(w) >= 3 and w in flat))


def answer_support(answer: str, context: str) -> float:
    """Share of the answer's content words (any script) that occur in the context; 0.0 when the answer
    has no content words (an empty answer, or stopwords only)."""
    return grounding.support(answer, context)


def verbatim_ratio(question: str, context: str) -> float:
    """Longest run the question shares with the context, as a share of the question's length."""
    q, c = question.lower(), context.lower()
    if not q:
        return 0.0
    match = difflib.SequenceMatcher(None, q, c, autojunk=False).find_longest_match(0, len(q), 0, len(c))
    return match.size / len(q)


def _term(text: str) -> str:
    words = [w.removesuffix("s") for w in grounding.tokens(_ARTICLE.sub("", text.strip()))]
    return " ".join(words)


def is_circular(question: str, answer: str = "") -> bool:
    """A question about nothing: the same term on both sides of a comparison ("the difference
    between a Prompts and a Prompts", "X vs X"), a question about itself, or an answer that only
    restates its question."""
    m = _PAIRED.search(question.strip())
    if m:
        left, right = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        # "between the LLM and the LLM, and how do you decide ...": the second term ends at a clause
        right = re.split(r"[,;]|\s(?:and|or|which|how|when|why|if)\s", right or "", maxsplit=1)[0]
        if left and right and _term(left) and _term(left) == _term(right):
            return True
    if re.search(r"\b(this|the)\s+question\b", question, re.I):
        return True
    return bool(answer) and grounding.echoes(answer, question)


def _evidence(cand: Candidate) -> dict[str, list[tuple[int, int]]]:
    if cand.task.answer_spans:  # extractive: the answer is these sentences
        return {c.chunk_id: [span] for c, span in zip(cand.task.chunks, cand.task.answer_spans)}
    # Multi-hop and abstract items spread over chunks: each chunk's spans are found on its own.
    return {c.chunk_id: spans for c in cand.task.chunks if (spans := grounding.evidence_spans(cand.answer, c.text))}


def reject_reason(cand: Candidate, config: SynthConfig) -> str | None:
    """Why a candidate is rejected (one reason, in REJECT_REASONS order), or None if it passes.

    On acceptance of an answerable item, cand.evidence holds the spans supporting its answer; the
    answer's numbers (with units) and names must all lie in them and the question's in its chunks
    (`made_up_fact`), a multi-hop answer needs evidence in both chunks (`missing_evidence`). An
    extractive item's answer is its sentence(s), so the checks fall on the question: its topic words
    must come from the sentences and their topics, half of them from the sentences themselves
    (`unsupported_question`, config.min_question_support), and a question that restates its whole
    answer sentence asks nothing (`circular`). Its fit to the sentence is checked afterwards with the
    embedder (roundtrip_failures).
    """
    cand.evidence = {}
    if cand.error:
        return "unparseable"
    q, a = cand.question.strip(), cand.answer.strip()
    kind = cand.task.kind
    answerable = not kind.must_refuse
    if not (config.min_question_chars <= len(q) <= config.max_question_chars):
        return "too_short" if len(q) < config.min_question_chars else "too_long"
    if answerable and (not a or len(a) > config.max_answer_chars):
        return "too_short" if not a else "too_long"
    if "\n" in q or (kind.question_mark and not q.endswith("?")) or q.count("?") > 1:
        return "malformed"  # a cut-off question, one with its answer run into it, or two questions
    if CONTEXT_REFERENCE.search(q):
        return "refers_to_context"  # "what is the passage about?" means nothing to a retriever
    context = grounding.joined(c.text for c in cand.task.chunks)
    if grounding.placeholders(q, context) or (answerable and grounding.placeholders(a, context)):
        return "placeholder"
    if answerable and (grounding.repetition(a) or grounding.passage_spam(a)):
        return "repetition"
    if grounding.repetition(q) or _REPEATED_RUN.search(q):
        return "repetition"  # "How do I X? How do I X?", "... in a group of paths in a group of paths?"
    extractive = bool(cand.task.answer_spans)
    if answerable and grounding.truncated(a, context, None if extractive else cand.finish_reason):
        return "truncated"
    if verbatim_ratio(q, context) > config.max_verbatim_ratio:
        return "copies_context"
    if is_circular(q, a if answerable else ""):
        return "circular"
    if not answerable:
        return None
    if grounding.unsupported_facts(q, context) or grounding.unsupported_facts(a, context):
        return "made_up_fact"
    if extractive:
        # A paraphrase may drop words or add a typo: what it asks is held to the question it rewrote.
        asked = cand.original_question or q
        topics = " ".join(c.topic for c in cand.task.chunks)
        if (question_support(asked, f"{a} {topics}") < config.min_question_support
                or question_support(asked, a) < 0.5):  # at least half its words from the sentence itself
            return "unsupported_question"
        if cand.original_question and question_support(q, f"{asked} {a}") < config.min_question_support:
            return "unsupported_question"  # a rewrite that brought words of its own (a few-shot example's)
        if _HOW_QUESTION.match(asked) and not _METHOD.search(a):
            return "question_form"  # "How do I ...?" answered by a sentence that names no way to do it
    evidence = _evidence(cand)
    spans = grounding.joined(grounding.spans_text(c.text, evidence.get(c.chunk_id, [])) for c in cand.task.chunks)
    if grounding.unsupported_facts(a, spans):
        return "made_up_fact"  # in a chunk, but only beside the supporting sentences (max_spans)
    if not evidence or answer_support(a, spans) < config.min_answer_support:
        return "unsupported_answer"
    if kind.evidence_in_every_chunk and len(evidence) < len(cand.task.chunks):
        return "missing_evidence"
    cand.evidence = evidence
    return None


def roundtrip_failures(cands: Sequence[Candidate], encode, margin: float) -> set[int]:
    """Indexes of extractive candidates whose question does not lead back to its answer: in each of its
    chunks, the answer sentence must be the prose sentence most similar to the question (embedder
    cosine), or within `margin` of it. Roundtrip consistency (Alberti et al., 2019), within the chunk
    only: a retrieval roundtrip over the index would keep only questions the retriever already gets
    right, and flatter it. Generated (non-extractive) candidates and questions written by rule (not
    rewritten) are never failed here."""
    jobs = []  # (candidate index, sentence texts, index of the answer sentence)
    for i, cand in enumerate(cands):
        if (cand.generator or "").startswith(TEMPLATE_GENERATOR) and not cand.original_question:
            continue  # written by rule from the sentence's own words: it cannot drift to another sentence
        for chunk, (start, end) in zip(cand.task.chunks, cand.task.answer_spans):
            spans = grounding.prose_spans(chunk.text)
            answer = next((k for k, (s, e) in enumerate(spans) if s <= start < e or start <= s < end), None)
            if answer is not None and len(spans) > 1:
                jobs.append((i, [chunk.text[s:e] for s, e in spans], answer))
    if not jobs:
        return set()
    vectors = encode([cands[i].question for i, _, _ in jobs] + [t for _, texts, _ in jobs for t in texts])
    questions, rest = vectors[: len(jobs)], vectors[len(jobs):]
    failed, offset = set(), 0
    for (i, texts, answer), q in zip(jobs, questions):
        sims = rest[offset: offset + len(texts)] @ q
        offset += len(texts)
        if sims[answer] < float(np.max(sims)) - margin:
            failed.add(i)
    return failed


def failing_filters(items: Sequence[dict], chunk_texts: dict[str, str], config: SynthConfig) -> dict[str, str]:
    """qa_id -> the reject reason today's filters give an item made by an earlier synth (reject_reason
    over its question, answer, chunks and, for an extractive item, its evidence spans as the answer
    sentences). Items whose chunks are not all in chunk_texts, human-made ones and must-refuse ones
    the index check decides are not judged here."""
    out = {}
    for item in items:
        kind = QUESTION_TYPES.get(item.get("qa_type") or "")
        sources = list(item.get("source_chunk_ids") or [])
        if kind is None or not sources or any(c not in chunk_texts for c in sources):
            continue
        chunks = [ChunkRef(c, "", "", chunk_texts[c], 0) for c in sources]
        spans = []
        if kind.answer == "extractive":
            by_chunk = {e["chunk_id"]: (e["start"], e["end"]) for e in item.get("evidence") or []}
            spans = [by_chunk[c] for c in sources if c in by_chunk]
            if len(spans) != len(sources):
                out[item["qa_id"]] = "missing_evidence"
                continue
        cand = Candidate(GenTask(item["qa_type"], item.get("persona") or "", chunks, spans), item["question"],
                         "" if kind.must_refuse else item["reference_answer"], None, None, None,
                         generator=item.get("generator"))
        reason = reject_reason(cand, config)
        if reason:
            out[item["qa_id"]] = reason
    return out


def answered_by(question: str, texts: Sequence[str], coverage: float) -> bool:
    """Whether one of texts answers an "unanswerable" question: it holds the question's facts and
    at least `coverage` of its topic words (content words beyond the template words of a question)."""
    words = [w for w in dict.fromkeys(grounding.content_words(question)) if w not in _QUESTION_WORDS]
    if len(words) < 2:
        return False
    question_facts = grounding.facts(question)
    for text in texts:
        if _words_found(words, text) >= coverage * len(words) and all(grounding.fact_in(f, text) for f in question_facts):
            return True
    return False


def search_texts(store: ChunkStore, encode, questions: Sequence[str], k: int) -> list[list[str]]:
    """The texts of the k chunks nearest each question (cosine), in rank order: what the index would
    retrieve for it."""
    if not questions:
        return []
    vectors = encode(list(questions))
    return [[h["text"] for h in store.table.search(np.asarray(v, dtype=np.float32)).distance_type("cosine")
             .select(["text", "_distance"]).limit(k).to_list()] for v in vectors]


def qa_id_of(question: str, qa_type: str, source_chunk_ids: Sequence[str]) -> str:
    payload = json.dumps([question.strip(), qa_type, sorted(source_chunk_ids)])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def to_item(cand: Candidate, generator: str) -> dict:
    """The golden row of an accepted candidate. A type with references="evidence" (abstract) refers to
    the chunks its answer has evidence in (the ones it summarizes), not every chunk it was shown;
    `evidence` lists the spans. A must-refuse type gets the refusal answer and no references."""
    chunks = cand.task.chunks
    answerable = not cand.task.kind.must_refuse
    cited = cand.task.kind.references == "evidence" and cand.evidence
    refs = [c for c in chunks if c.chunk_id in cand.evidence] if cited else chunks
    return {
        "qa_id": qa_id_of(cand.question, cand.task.qa_type, [c.chunk_id for c in chunks]),
        "question": cand.question.strip(),
        "reference_answer": cand.answer.strip() if answerable else REFUSAL_ANSWER,
        "reference_chunk_ids": [c.chunk_id for c in refs] if answerable else [],
        "reference_doc_ids": list(dict.fromkeys(c.doc_id for c in refs)) if answerable else [],
        "source_chunk_ids": [c.chunk_id for c in chunks],
        "source_doc_ids": list(dict.fromkeys(c.doc_id for c in chunks)),
        "source_doc_sha256s": list({c.doc_id: c.doc_sha256 for c in chunks}.values()),  # one per source_doc_ids entry
        "qa_type": cand.task.qa_type,
        "persona": cand.task.persona,
        "status": "active",
        "review": "synthetic",
        "generator": cand.generator or generator,
        "prompt_id": cand.prompt.prompt_id,
        "prompt_hash": cand.prompt.prompt_hash,
        "created_at": utcnow(),
        "evidence": [{"chunk_id": c.chunk_id, "start": s, "end": e}
                     for c in chunks for s, e in cand.evidence.get(c.chunk_id, [])] if answerable else [],
    }


def _evidence_key(item: dict) -> tuple:
    return tuple(sorted((e["chunk_id"], e["start"], e["end"]) for e in item.get("evidence") or []))


def drop_near_duplicates(
    items: list[dict], existing: Sequence[dict], encode, threshold: float, same_chunk_threshold: float | None = None,
) -> tuple[list[dict], int]:
    """Keep items whose question is not within `threshold` cosine of an earlier or existing one, nor
    within `same_chunk_threshold` of one made from a shared source chunk (two questions about one
    paragraph are duplicates well before their wording is), nor with the very evidence spans of one
    (the same answer sentence). Items and existing: {question, source_chunk_ids, evidence?}; order
    decides which of two duplicates stays."""
    if not items:
        return items, 0
    same = threshold if same_chunk_threshold is None else min(threshold, same_chunk_threshold)
    vectors = encode([e["question"] for e in existing] + [i["question"] for i in items])
    kept_vectors = [(vec, set(e.get("source_chunk_ids") or [])) for vec, e in zip(vectors[: len(existing)], existing)]
    answers = {_evidence_key(e) for e in existing} - {()}
    kept, dropped = [], 0
    for item, vec in zip(items, vectors[len(existing):]):
        sources = set(item.get("source_chunk_ids") or [])
        key = _evidence_key(item)
        if key in answers or any(float(np.dot(vec, k)) >= (same if sources & ks else threshold) for k, ks in kept_vectors):
            dropped += 1  # the same answer sentence(s) twice is one item, however the questions differ
            continue
        kept.append(item)
        kept_vectors.append((vec, sources))
        if key:
            answers.add(key)
    return kept, dropped


def golden_set_id_of(items: list[dict]) -> str:
    """Content hash of a version: each item's id, status, review, question, reference answer, chunk ids
    (reference and source: an item synth carried over a renamed document keeps its qa_id but points at new
    chunks) and evidence spans. Any change of what an item says or points at is a new version: an import
    that fixes a typo under the same qa_id, or a human edit, is never mistaken for the version before."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i["qa_id"]):
        digest.update(f"{item['qa_id']}\t{item['status']}\t{item['review']}\n".encode())
        evidence = [[e["chunk_id"], e["start"], e["end"]] for e in (item.get("evidence") or [])]
        digest.update(json.dumps([item.get("question"), item.get("reference_answer"), list(item["reference_chunk_ids"] or []),
                                  list(item["source_chunk_ids"] or []), evidence]).encode())
    return digest.hexdigest()[:24]
