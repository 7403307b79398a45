"""Question types of synthetic golden sets, one object each, registered by name (pure).

Every rule that differs by question type (which prompt writes it, which chunks it is asked about,
which checks it must pass, whether the chain must refuse it) lives on its QuestionType; synth
(tasks/qa_generation.py, flows/synth.py) and eval (tasks/evaluation.py, tasks/ragas_metrics.py) look
it up by the item's `qa_type`. `synth.types` accepts the registered names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ragloop.tasks.registry import Registry

# How a question type picks its chunks from one document (tasks/qa_generation.py SAMPLERS):
#   one_chunk     a random eligible chunk; the prompt gets `context`
#   related_pair  a random eligible chunk and its nearest chunk elsewhere in the index (not a neighbour
#                 in the same document); the prompt gets `context_a` and `context_b`
#   chunk_run     consecutive chunks from a random one, up to synth.max_context_tokens; the prompt gets
#                 them joined as `context`
Sampling = Literal["one_chunk", "related_pair", "chunk_run"]
IMPORTED = "imported"  # the type of an imported golden item that names no registered type
PRODUCTION = "production"  # the type of a golden item a reviewer made from a logged production question


@dataclass(frozen=True)
class QuestionType:
    """One kind of synthetic question.

    name: the `qa_type` stored on golden items and the key in `synth.types`.
    prompt: the generation prompt (prompts/<prompt>.yaml); `rewrite_prompt`, if set, rewrites each
        generated question in a second call (paraphrased: a hurried user's wording).
    sampling: which chunks it is asked about (see Sampling); `fallback` is the type generated instead
        when the sampling finds too few chunks (None: no question for that slot).
    must_refuse: the documents do not answer it: the item has no reference answer or ids, the chain is
        scored on refusing it, and synth rejects one the index does answer (`answerable`).
    question_mark: the question must end with "?" (a paraphrase may drop it).
    evidence_in_every_chunk: the answer must have evidence in each of its chunks (multi-hop).
    references: "sampled" = every chunk it was asked about is a reference; "evidence" = only those the
        answer has evidence in (a summary over a run of chunks).
    answer: "generated" = the prompt writes question and answer from the chunk text (`context`, or
        `context_a`/`context_b`), and the answer's evidence is searched for afterwards; "extractive" =
        synth first picks a fact-stating sentence in each chunk (tasks/qa_generation.fact_sentences), the
        prompt writes only the question from `topic`/`sentence` (or `topic_a`, `sentence_a`, `topic_b`,
        `sentence_b`), and the reference answer is that sentence verbatim, its span the evidence:
        grounded by construction, so a small model cannot put a made-up fact into a reference.

    Raises ValueError for an unknown sampling or references value.
    """

    name: str
    prompt: str
    sampling: Sampling = "one_chunk"
    rewrite_prompt: str | None = None
    fallback: str | None = None
    must_refuse: bool = False
    question_mark: bool = True
    evidence_in_every_chunk: bool = False
    references: Literal["sampled", "evidence"] = "sampled"
    answer: Literal["generated", "extractive"] = "generated"

    def __post_init__(self) -> None:
        if self.sampling not in get_args(Sampling):
            raise ValueError(f"question type {self.name!r}: sampling must be one of {get_args(Sampling)}, "
                             f"not {self.sampling!r}")
        if self.references not in ("sampled", "evidence"):
            raise ValueError(f"question type {self.name!r}: references must be 'sampled' or 'evidence'")
        if self.answer not in ("generated", "extractive"):
            raise ValueError(f"question type {self.name!r}: answer must be 'generated' or 'extractive'")
        if self.answer == "extractive" and (self.must_refuse or self.sampling == "chunk_run"):
            raise ValueError(f"question type {self.name!r}: an extractive answer needs one_chunk or related_pair "
                             "sampling and an answerable type")

    @property
    def prompts(self) -> tuple[str, ...]:
        """The prompt files generating this type needs."""
        return (self.prompt,) + ((self.rewrite_prompt,) if self.rewrite_prompt else ())


# Registration order is the order types take budget ties and plan slots in (tasks/qa_generation.allocate).
QUESTION_TYPES: Registry[QuestionType] = Registry("question type", "synth.types")


def register_question_type(kind: QuestionType, *, replace: bool = False) -> QuestionType:
    """Register a question type under its name (what `synth.types` and golden items call it).
    ValueError if the name is taken and not `replace`."""
    return QUESTION_TYPES.register(kind.name, kind, replace=replace)


def must_refuse(qa_type: str) -> bool:
    """Whether a golden item of this type must be refused; False for a type no entry is registered for
    (an imported item's own label)."""
    kind = QUESTION_TYPES.get(qa_type)
    return bool(kind and kind.must_refuse)


def required_prompts() -> tuple[str, ...]:
    """Every prompt the registered question types generate with, each once, in registration order."""
    return tuple(dict.fromkeys(p for kind in QUESTION_TYPES.values() for p in kind.prompts))


for _kind in (
    QuestionType("single_hop", prompt="qa_from_sentence", answer="extractive"),
    QuestionType("multi_hop", prompt="qa_from_sentences", sampling="related_pair", fallback="single_hop",
                 evidence_in_every_chunk=True, answer="extractive"),
    QuestionType("abstract", prompt="qa_abstract", sampling="chunk_run", references="evidence"),
    QuestionType("unanswerable", prompt="qa_unanswerable", must_refuse=True),
    QuestionType("paraphrased", prompt="qa_from_sentence", rewrite_prompt="qa_paraphrase", question_mark=False,
                 answer="extractive"),
):
    register_question_type(_kind)
