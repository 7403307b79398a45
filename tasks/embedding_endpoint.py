"""Embeddings from any OpenAI-compatible ``POST {base_url}/embeddings`` endpoint (OpenAI, Ollama, vLLM, TEI,
llama.cpp's server): batched, concurrency-limited, retried with backoff, every reply checked before use (I/O, httpx).

A reply is refused whole, with an EmbeddingReplyError, when it holds the wrong number of vectors, a vector of
the wrong dimension, a value that is not a finite number, or a zero vector; the index stage embeds inside its
one commit, so a refused reply leaves the table as it was. Vectors are L2-normalized here (cosine = dot
product, as for the local models); OpenAI's already are, many servers' are not.

The embedder's identity, and so its table (``chunks__<model>__openai_d<dim>``), is the model id and the
dimension (and whether the dimension is requested), not the server's address: the same model moved to
another host or port keeps its table and is indexed incrementally. The table also records the endpoint's
vector for a fixed probe text (tasks/indexing.py check_probe): other weights served under the same id are
refused instead of mixed in.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import httpx
import numpy as np

from ragloop.tasks import http_retry
from ragloop.tasks.embedding import TokenCounter, _special_token_count, _tokenizer_file, packaged_tokenizer_file, slugify
from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.llm import bearer_headers, redact_key
from ragloop.tasks.settings import ConfigError, EmbeddingConfig

log = logging.getLogger(__name__)

PROBE_TEXT = "ragloop embedding probe"
PROBE_TIMEOUT_S = 10.0  # the probe answers one short text: a server slower than this is not ready

# Probe vectors (unit, float32) found in this process, by (base_url, model, requested dimension): a bake-off
# or a Dask worker that builds the embedder again asks the endpoint once, not per build.
_PROBED: dict[tuple[str, str, int | None], np.ndarray] = {}
_PROBED_LOCK = threading.Lock()


class EmbeddingError(RuntimeError):
    """A request to the embeddings endpoint failed or its reply was refused; names the URL, never a key."""


class EmbeddingUnavailable(EmbeddingError):
    """The endpoint did not answer (connection errors, timeouts, 429/5xx after every retry)."""


class EmbeddingReplyError(EmbeddingError):
    """The endpoint answered, but not with what was asked (a 4xx, a body that is not JSON, the wrong number
    of vectors, the wrong dimension, values that are not finite numbers, a zero vector)."""


def parse_embeddings(data: Any, n: int, dim: int | None, url: str) -> np.ndarray:
    """An OpenAI embeddings reply as an n x dim float32 array of unit vectors, in input order (by each entry's
    `index` when every entry has one, else as listed). dim None: the first vector's length, checked on the
    rest. Raises EmbeddingReplyError naming what is wrong, so nothing of a bad reply is ever used."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise EmbeddingReplyError(f"{url} answered without a data list (not an OpenAI embeddings reply)")
    if len(entries) != n:
        raise EmbeddingReplyError(f"{url} answered {len(entries)} vectors for {n} texts")
    indexes = [e.get("index") if isinstance(e, dict) else None for e in entries]
    if all(isinstance(i, int) for i in indexes):
        if sorted(indexes) != list(range(n)):
            raise EmbeddingReplyError(f"{url} answered indexes {sorted(indexes)[:8]}... for {n} texts, not 0..{n - 1}")
        entries = [e for _, e in sorted(zip(indexes, entries), key=lambda pair: pair[0])]
    vectors = []
    for i, entry in enumerate(entries):
        values = entry.get("embedding") if isinstance(entry, dict) else None
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise EmbeddingReplyError(
                f"{url}: vector {i} is not a flat list of numbers (a base64 string, token-level vectors, or "
                "missing); the server must pool one vector per text")
        expected = dim if dim is not None else len(vectors[0]) if vectors else len(values)
        if len(values) != expected:
            raise EmbeddingReplyError(f"{url}: vector {i} has dimension {len(values)}, expected {expected}"
                                      + (" (embedding.dim)" if dim is not None else ""))
        vectors.append(values)
    array = np.asarray(vectors, dtype=np.float64)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise EmbeddingReplyError(f"{url}: vector {int(np.argmax(bad))} holds values that are not finite (NaN or inf)")
    norms = np.linalg.norm(array, axis=1)
    if (norms == 0).any():
        raise EmbeddingReplyError(f"{url}: vector {int(np.argmax(norms == 0))} is all zeros")
    return (array / norms[:, None]).astype(np.float32)


class OpenAICompatEmbedder:
    """An OpenAI-compatible embeddings endpoint behind the Embedder interface (tasks/embedding.py).

    encode() sends `embedding.batch_size` texts per request, at most `embedding.concurrency` requests in
    flight, each retried on timeouts, connection errors, 429 and 5xx (tasks/http_retry.py); once one request
    has given up, the others of the call stop instead of retrying on their own. Nothing is sent until a
    vector or the dimension is needed. `transport` replaces httpx's network transport (tests)."""

    per_text = True  # a text's vector is asked for by its text alone (servers batch internally, as they like)

    def __init__(self, config: EmbeddingConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if config.provider != "openai" or not config.base_url:
            raise ConfigError("embedding.base_url: provider 'openai' needs base_url")
        self.config = config
        self.model_name = config.model
        self.base_url = config.base_url.rstrip("/")
        self.url = f"{self.base_url}/embeddings"
        self.name = f"openai:{config.model}"
        self.transport = transport
        self.requests = 0  # requests sent by encode() and the probe, retries included
        self.usage_tokens = 0  # input tokens the endpoint reported (usage.prompt_tokens), when it does

    def __repr__(self) -> str:
        return f"OpenAICompatEmbedder(base_url={self.base_url!r}, model={self.model_name!r})"

    # -- identity ----------------------------------------------------------------------------------------
    @property
    def _probe_key(self) -> tuple[str, str, int | None]:
        return self.base_url, self.model_name, self.config.dim if self.config.request_dimensions else None

    @property
    def dim(self) -> int:
        """The configured dimension, or the one the probe found (one request, the first time it is asked)."""
        if self.config.dim is not None:
            return self.config.dim
        found = _PROBED.get(self._probe_key)
        return len(found) if found is not None else self.preflight()["dim"]

    @property
    def probe_vector(self) -> np.ndarray:
        """The endpoint's unit vector for PROBE_TEXT (one request, the first time in this process): the table
        records it, so a server that later answers it differently under the same model id is caught."""
        if self._probe_key not in _PROBED:
            self.preflight()
        return _PROBED[self._probe_key]

    @property
    def slug(self) -> str:
        return f"{slugify(self.model_name)}__openai_d{self.dim}"

    @cached_property
    def weights_sha256(self) -> str:
        """No weights are visible through an endpoint: the hash of what stands for them (provider, model id,
        dimension, whether the dimension is requested). The server's address is not part of it."""
        return canonical_hash({"provider": "openai", "model": self.model_name, "dim": self.dim,
                               "request_dimensions": self.config.request_dimensions})

    @property
    def endpoint(self) -> dict[str, Any]:
        """What the lineage records besides the identity: where the vectors came from and how chunks were counted."""
        return {"provider": "openai", "base_url": self.base_url, "model": self.model_name,
                "request_dimensions": self.config.request_dimensions,
                "tokenizer": str(self.tokenizer_file) if self.config.tokenizer else "packaged MiniLM WordPiece (estimate)"}

    @cached_property
    def tokenizer_file(self) -> Path:
        if self.config.tokenizer is None:
            return packaged_tokenizer_file()
        path = Path(self.config.tokenizer).expanduser()
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"embedding.tokenizer: no tokenizer.json at {self.config.tokenizer}")
        return path

    @cached_property
    def counter(self) -> TokenCounter:
        """Counts with embedding.tokenizer; the limit is embedding.max_tokens (special tokens come off it when
        the tokenizer adds any)."""
        try:
            tokenizer = _tokenizer_file(str(self.tokenizer_file), self.tokenizer_file.stat().st_mtime_ns)
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ConfigError(f"embedding.tokenizer: {self.tokenizer_file} is not a tokenizers JSON file ({exc})") from None
        limit = self.config.max_tokens - _special_token_count(tokenizer)
        if limit < 1:
            raise ConfigError(f"embedding.max_tokens: {self.config.max_tokens} leaves no room after the tokenizer's "
                              "special tokens")
        return TokenCounter(tokenizer, limit)

    # -- requests ----------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return bearer_headers(self.config.api_key_env)

    def _redact(self, text: str) -> str:
        return redact_key(text, self.config.api_key_env)

    def _payload(self, texts: Sequence[str]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model_name, "input": list(texts)}
        if self.config.request_dimensions:
            payload["dimensions"] = self.config.dim
        return payload

    async def _request(self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, texts: Sequence[str],
                       dim: int | None, policy: http_retry.RetryPolicy, outage: list[EmbeddingUnavailable]) -> np.ndarray:
        def attempt() -> None:
            if outage:  # another request of this call found the endpoint down
                raise EmbeddingUnavailable(f"{self.url} skipped: {outage[0]}")
            self.requests += 1

        try:
            resp, _ = await http_retry.send(client, semaphore, "POST", self.url, policy, json=self._payload(texts),
                                            headers=self._headers, before_attempt=attempt)
        except http_retry.GaveUp as exc:
            outage.append(EmbeddingUnavailable(str(exc)))
            raise outage[-1] from None
        if resp.status_code in (401, 403):
            raise EmbeddingReplyError(f"{self.url} refused the credentials (HTTP {resp.status_code}); check "
                                      f"${self.config.api_key_env}")
        if resp.status_code >= 400:
            hint = (" (a text longer than the model takes? lower embedding.max_tokens)"
                    if resp.status_code in (400, 413, 422) else "")
            raise EmbeddingReplyError(f"{self.url} answered HTTP {resp.status_code}{hint}: "
                                      f"{self._redact(resp.text[:300])}")
        try:
            data = resp.json()
        except ValueError:
            raise EmbeddingReplyError(f"{self.url} answered with a body that is not JSON") from None
        vectors = parse_embeddings(data, len(texts), dim, self.url)
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.usage_tokens += usage["prompt_tokens"]
        return vectors

    def _post_batches(self, batches: list[Sequence[str]], dim: int | None, timeout_s: float,
                      max_retries: int) -> list[np.ndarray]:
        policy = http_retry.RetryPolicy(timeout_s, max_retries, self.config.backoff_s)

        async def run() -> list[np.ndarray]:
            limits = httpx.Limits(max_connections=self.config.concurrency)
            async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits,
                                         transport=self.transport) as client:
                semaphore, outage = asyncio.Semaphore(self.config.concurrency), []
                return await asyncio.gather(
                    *(self._request(client, semaphore, b, dim, policy, outage) for b in batches),
                    return_exceptions=True)

        results = http_retry.run_sync(run)
        # An outage is reported as the outage (not as a batch skipped because of it); else the first failure.
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = next((f for f in failures if isinstance(f, EmbeddingUnavailable) and "skipped" not in str(f)),
                         failures[0])
            raise first
        return results

    def preflight(self) -> dict[str, Any]:
        """One probe request: the endpoint answers, knows the model and returns one finite vector of the
        configured dimension (or tells it, when none is configured). Once per process per endpoint, model
        and requested dimension. Raises ConfigError naming the field to fix."""
        key = self._probe_key
        with _PROBED_LOCK:
            if key in _PROBED:
                return {"provider": "openai", "base_url": self.base_url, "model": self.model_name,
                        "dim": len(_PROBED[key]), "probed": False}
            start = time.perf_counter()
            try:
                # A short deadline and one retry: a server that cannot answer one text now is not ready.
                vector = self._post_batches([[PROBE_TEXT]], None, min(self.config.timeout_s, PROBE_TIMEOUT_S),
                                            min(self.config.max_retries, 1))[0]
            except EmbeddingUnavailable as exc:
                raise ConfigError(f"embedding.base_url: no OpenAI-compatible embeddings endpoint answers ({exc})") from None
            except EmbeddingReplyError as exc:
                field = "api_key_env" if "credentials" in str(exc) else "model"
                raise ConfigError(f"embedding.{field}: the probe request was refused: {exc}") from None
            found = int(vector.shape[1])
            if self.config.dim is not None and found != self.config.dim:
                raise ConfigError(f"embedding.dim: {self.url} answers {found}-dimensional vectors for model "
                                  f"{self.model_name!r}, configured {self.config.dim}")
            _PROBED[key] = vector[0]
        return {"provider": "openai", "base_url": self.base_url, "model": self.model_name, "dim": found,
                "probed": True, "latency_ms": (time.perf_counter() - start) * 1000}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit float32 vectors, one row per text, in input order. Raises EmbeddingUnavailable (the endpoint
        is down after every retry) or EmbeddingReplyError (a reply refused: nothing of it is returned)."""
        dim = self.dim
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        size = self.config.batch_size
        batches = [list(texts[i:i + size]) for i in range(0, len(texts), size)]
        return np.concatenate(self._post_batches(batches, dim, self.config.timeout_s, self.config.max_retries))


def forget_probes() -> None:
    """Drop the dimensions probed in this process (tests that restart a server under the same URL)."""
    with _PROBED_LOCK:
        _PROBED.clear()
