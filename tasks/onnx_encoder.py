"""ONNX Runtime backends for the embedder: export a local sentence-transformers model once, then encode without torch.

The graph is exported offline from the model's own weights (torch's TorchScript exporter) into a
cache directory, and its int8 variant is made from it with ONNX Runtime's dynamic quantization.
Files are keyed by the weights' sha256 and EXPORT_FORMAT and written atomically, so concurrent
workers can share a cache. Encoding reproduces sentence-transformers' pipeline: its tokenizer with
the model's max_seq_length, length-sorted batches, the Pooling module's mode, L2 normalization.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from ragloop.tasks import interrupts

log = logging.getLogger(__name__)

# Bump when the export or quantization recipe changes: new cache files and a new embedder identity.
EXPORT_FORMAT = 1
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_SUPPORTED_MODULES = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                      "sentence_transformers.models.Normalize"}


class OnnxUnsupported(ValueError):
    """The model cannot run on an ONNX backend (the message says why and names embedding.backend)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ragloop" / "onnx"


def pooling_mode(model_dir: Path) -> str:
    """'mean' or 'cls', read from the model's modules.json and Pooling config; OnnxUnsupported otherwise."""
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():
        raise OnnxUnsupported(f"embedding.backend: {model_dir} has no modules.json (not a sentence-transformers model)")
    modules = json.loads(modules_file.read_text())
    kinds = {m["type"] for m in modules}
    if not kinds <= _SUPPORTED_MODULES:
        raise OnnxUnsupported(
            f"embedding.backend: ONNX backends run Transformer + Pooling (+ Normalize) models; {model_dir} also has "
            f"{sorted(kinds - _SUPPORTED_MODULES)}; use backend 'torch'"
        )
    pooling = next((m for m in modules if m["type"].endswith(".Pooling")), None)
    if pooling is None:
        raise OnnxUnsupported(f"embedding.backend: {model_dir} has no Pooling module; use backend 'torch'")
    config = json.loads((model_dir / pooling["path"] / "config.json").read_text())
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise OnnxUnsupported(f"embedding.backend: pooling {config} of {model_dir} is not mean or cls; use backend 'torch'")


def _atomic_write(target: Path, write) -> None:
    """Call write(tmp_path), then rename onto target: readers never see a half-written graph."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def _quiet_tools():
    """Silence the exporter's tracer warnings and the quantizer's advice (logged on the root logger):
    they describe the tools' internals, not anything a user can act on; export is checked by tests."""
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(max(level, logging.ERROR))
        try:
            yield
        finally:
            root.setLevel(level)


def _export_fp32(model_dir: Path, target: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    bert = st[0].auto_model.eval()
    dummy = st.tokenizer(["a warm-up sentence", "and another one"], padding=True, return_tensors="pt")
    names = [n for n in _INPUTS if n in dummy]

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    axes = {n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]}

    def write(path: Path) -> None:
        with torch.no_grad(), _quiet_tools():
            # dynamo=False: the TorchScript exporter needs only the onnx package, no onnxscript.
            torch.onnx.export(LastHiddenState(bert), tuple(dummy[n] for n in names), str(path), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)

    _atomic_write(target, write)


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weight scales: with one scale per tensor, MiniLM's vectors fell to cosine 0.90-0.97 of
    # the fp32 ones; per channel they stay at 0.986-0.998 for the same speed (300 SciFact documents).
    def write(path: Path) -> None:
        with _quiet_tools():
            quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, per_channel=True)

    _atomic_write(target, write)


def exported_graph(model_dir: Path, weights_sha256: str, backend: str, cache_dir: Path) -> Path:
    """The ONNX file for this model and backend, exported (and quantized) on first use; idempotent."""
    stem = f"{weights_sha256[:16]}-f{EXPORT_FORMAT}"
    fp32 = cache_dir / f"{stem}-fp32.onnx"
    if not fp32.exists():
        log.info("exporting %s to ONNX (once per model) at %s", model_dir, fp32)
        _export_fp32(model_dir, fp32)
    if backend == "onnx":
        return fp32
    int8 = cache_dir / f"{stem}-int8.onnx"
    if not int8.exists():
        log.info("quantizing %s to int8 at %s", fp32.name, int8)
        _quantize_int8(fp32, int8)
    return int8


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=2)
def shared_session(graph: Path, tokenizer_file: Path, max_seq_length: int, pooling: str, workers: int | None,
                   stamp: tuple[int, int]) -> "OnnxSession":
    """One OnnxSession per graph file (and its size and mtime: `stamp`) and settings in a process: loading
    an int8 graph into ONNX Runtime took 0.1-0.2 s of every index run. A session only reads its graph and
    ORT's Run is thread-safe, so runs and threads share it."""
    return OnnxSession(graph, tokenizer_file, max_seq_length, pooling, workers)


class OnnxSession:
    """Encodes texts with an exported graph: tokenize, run, pool, normalize (no torch at encode time).

    Each text runs alone, on one of `workers` threads with one ONNX Runtime thread each. Alone, a text
    needs no padding, and its int8 vector depends on the text only: dynamic quantization scales the
    activations of a whole call, so in a padded batch a vector would shift with its batch-mates
    (cosine down to 0.990 between the same text alone and in a batch of 64). Measured on 400 SciFact
    documents, 2 cores: 11.5-12.3 s, against 14.8-17.3 s for one text per call on two ORT threads,
    17.8-19.3 s for length-sorted batches of 64, and 22.6-23.4 s for PyTorch at batch 64.
    """

    def __init__(self, graph: Path, tokenizer_file: Path, max_seq_length: int, pooling: str,
                 workers: int | None = None, output_name: str | None = None) -> None:
        """output_name: the graph output holding the token states (batch x tokens x dim); None = the first."""
        self.graph = graph
        self.output_name = output_name
        self.tokenizer_file = tokenizer_file
        self.max_seq_length = max_seq_length
        self.pooling = pooling
        self.workers = workers or available_cpus()

    @cached_property
    def tokenizer(self) -> Tokenizer:
        tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        tokenizer.enable_truncation(max_length=self.max_seq_length)  # counts the special tokens, as the model does
        tokenizer.no_padding()
        return tokenizer

    @cached_property
    def session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Parallel across texts, not inside one: small matrices scale badly over threads.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(self.graph), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in session.get_inputs()}
        return session

    @cached_property
    def pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.workers, thread_name_prefix="onnx-encode")

    def _run_one(self, encoding) -> np.ndarray:
        interrupts.check()  # a Ctrl-C stops a long encode between texts (the stop request of tasks.interrupts)
        feed = {"input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}
        outputs = [self.output_name] if self.output_name else None
        hidden = self.session.run(outputs, {k: v for k, v in feed.items() if k in self.input_names})[0][0]
        pooled = hidden[0] if self.pooling == "cls" else hidden.mean(axis=0)  # no padding: every token counts
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors in input order; each depends only on its own text."""
        _ = self.session  # built once, before the threads share it (Run is thread-safe)
        encodings = self.tokenizer.encode_batch(list(texts))  # tokenized up front, in parallel in Rust
        return np.asarray(list(self.pool.map(self._run_one, encodings)), dtype=np.float32)
