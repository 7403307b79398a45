"""Scripted fakes for synth: a small corpus and an LLM that writes questions from the passages it is shown."""

from __future__ import annotations

import hashlib
import json
import re

from ragloop.tasks.llm import Completion, StructuredResult, Usage, _SyncStructured
from ragloop.tasks.prompts import OUTPUT_MODELS

DOCS = {
    f"page{i}.md": f"# Page {i}\n\n## Facts\n\nStation {i} has {10 + i} docks and {i} chargers near the harbour. "
    f"Rides from station {i} cost {i} credits on weekdays.\n\n## Hours\n\nStation {i} opens at {6 + i % 3} in the morning "
    f"and closes at midnight, except on festival days when it stays open all night long."
    for i in range(8)
}


class PassageLLM:
    """Deterministic fake: questions and answers built from the passage it is shown."""

    model_id = "passage-fake@1"
    context_window = 4096

    def __init__(self, garbage: bool = False) -> None:
        self.garbage = garbage
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def preflight(self, required_context_tokens: int) -> dict:
        return {"model": self.model_id, "required": required_context_tokens}

    def structured_many(self, conversations, output_model, **params):
        return [self._one(messages, output_model) for messages in conversations]

    def _one(self, messages, output_model):
        self.calls += 1
        if self.garbage:
            return StructuredResult(value=None, raw="{not json", attempts=3, error="invalid JSON", usage=Usage(0, 0), latency_ms=1.0)
        value = passage_reply(messages, output_model, self.calls)
        return StructuredResult(value=value, raw=value.model_dump_json(), attempts=1, error=None, usage=Usage(10, 10),
                                latency_ms=1.0)


def passage_reply(messages, output_model, turn: int):
    """The output_model a PassageLLM writes for these messages on call number `turn` (which rotates the
    words and facts it picks, so that questions about one chunk differ)."""
    user = messages[-1]["content"]
    passages = re.findall(r'"""\n(.*?)\n"""', user, re.S)
    sentences = re.findall(r"^Sentence(?: [AB] \(topic: [^)]*\))?: (.*)$", user, re.M)
    if sentences:  # extractive: the question names two words of each sentence and its station
        words = []
        for s in sentences:  # two of its words, rotating with the turn so questions differ
            found = re.findall(r"[a-z]{5,}", s)
            words += [found[(turn + k) % len(found)] for k in range(min(2, len(found)))]
        names = [(re.findall(r"[A-Z][a-z]+ \d+", s) or ["it"])[0] for s in sentences]
        return output_model(question=f"What about {' '.join(words)} at {' and '.join(dict.fromkeys(names))}?")
    if output_model.__name__ == "QAPair":
        # One fact sentence from each passage (a multi-hop answer needs evidence in both), picked by
        # the turn so that questions about one chunk differ; the question names its words.
        facts = []
        for p in passages:
            prose = " ".join(line for line in p.splitlines() if not line.startswith("#"))
            sentences = [s for s in re.split(r"(?<=\.)\s", prose) if s.strip()]
            facts.append(sentences[turn % len(sentences)] if sentences else "")
        names = [(re.findall(r"[A-Za-z]+ \d+", p) or ["it"])[0] for p in passages]
        topic = " ".join(w for f in facts for w in re.findall(r"[a-z]{5,}", f)[:3])
        return output_model(question=f"What about {topic} at {' and '.join(dict.fromkeys(names))}?",
                            answer=" ".join(facts))
    if "Question:" in user:  # the paraphrase prompt
        original = user.split("Question:", 1)[1].splitlines()[0].strip()
        return output_model(question="quick q: " + original.lower().rstrip("?"))
    words = re.findall(r"[A-Za-z]+ \d+", passages[0]) or ["it"]
    return output_model(question=f"Who painted the signs at {words[0]} in 1970?")


class PassageCompleter(_SyncStructured):
    """Deterministic fake whose reply is a function of the messages alone (no call counter), so it answers
    the same in any process and any order (the Dask runner's workers): JSON asked for by a schema is
    passage_reply's, with the turn taken from a hash of the last turn (a query rewrite: the question in
lower case); an answer (no schema) is the first
    sentence of the first passage shown, or the refusal when there is none."""

    model_id = "passage-completer@1"
    context_window = 4096

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def preflight(self, required_context_tokens: int) -> dict:
        return {"model": self.model_id, "required": required_context_tokens}

    def complete(self, messages, *, json_schema=None, **params) -> Completion:
        user = messages[-1]["content"]
        if json_schema is not None and '"""' not in user and "Question:" not in user:  # eval's query rewrite
            text = json.dumps({"question": user.strip().splitlines()[-1].strip().lower()})
        elif json_schema is not None:
            output_model = OUTPUT_MODELS[json_schema["title"]]
            turn = int(hashlib.sha256(user.encode()).hexdigest()[:8], 16)
            text = passage_reply(messages, output_model, turn).model_dump_json()
        else:
            passages = re.findall(r'"""\n(.*?)\n"""', user, re.S)
            prose = [line for p in passages for line in p.splitlines() if line.strip() and not line.startswith("#")]
            text = re.split(r"(?<=\.)\s", prose[0])[0] if prose else "The documents do not say."
        return Completion(text=text, usage=Usage(self.count_tokens(user), self.count_tokens(text)), latency_ms=1.0,
                          model=self.model_id, finish_reason="stop")
