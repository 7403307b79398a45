"""One seam for the systems a run talks to: the embedder, the LLM, the judge.

Flows never build these themselves; they ask `current()` for them, so a run's models come from its
settings in one place, and tests inject deterministic fakes through `install(...)` instead of
patching flow modules:

    providers.install(providers.Providers(embedder=lambda config: fake, llm=lambda config: scripted))

Nothing heavy loads here: the default factories import the model code only when called, and the
models themselves load on first use (see tasks.embedding.load_embedder, tasks.llm.load_llm).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from ragloop.tasks.embedding import Embedder
    from ragloop.tasks.llm import LLM
    from ragloop.tasks.settings import EmbeddingConfig, LLMConfig


def _default_embedder(config: "EmbeddingConfig") -> "Embedder":
    from ragloop.tasks.embedding import load_embedder

    return load_embedder(config)


def _default_llm(config: "LLMConfig") -> "LLM":
    from ragloop.tasks.llm import load_llm

    return load_llm(config)


@dataclass(frozen=True)
class Providers:
    """Factories from settings to the run's external systems.

    embedder: EmbeddingConfig -> Embedder (settings.embedding).
    llm: LLMConfig -> LLM, for the chain's LLM (settings.llm) and for the judge (settings.eval.judge,
         also an LLMConfig); a factory can tell them apart by the config it receives.
    """

    embedder: Callable[["EmbeddingConfig"], Any] = _default_embedder
    llm: Callable[["LLMConfig"], Any] = _default_llm

    def build_embedder(self, config: "EmbeddingConfig") -> "Embedder":
        return self.embedder(config)

    def build_llm(self, config: "LLMConfig") -> "LLM":
        return self.llm(config)

    def build_judge(self, config: "LLMConfig") -> "LLM":
        """The eval judge (settings.eval.judge): an LLM built like any other, from its own config."""
        return self.llm(config)


_DEFAULT = Providers()
_current: Providers = _DEFAULT


def current() -> Providers:
    """The providers every flow uses in this process (the real ones unless a test installed others)."""
    return _current


def install(providers: Providers | None) -> Providers:
    """Make `providers` the current ones (None = the real defaults); returns the previous ones."""
    global _current
    previous, _current = _current, providers or _DEFAULT
    return previous


@contextmanager
def use(providers: Providers) -> Iterator[Providers]:
    """`install` for the duration of a with-block, then restore what was there."""
    previous = install(providers)
    try:
        yield providers
    finally:
        install(previous)
