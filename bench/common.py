"""Shared by every bench script, in both environments (stdlib only): data preparation, facts, stats."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAGAS_DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    # As flows/ sets it: steps that use tasks/ without flows/ (retrieval) otherwise log LanceDB's
    # hybrid-query deprecation warning twice per query.
    "LANCEDB_LOG": "error",
}
MUTATION_FRACTION = 0.01


def offline_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLOOP_")}
    env.update(OFFLINE_ENV)
    env.update(extra or {})
    return env


def write_json(path: Path | str, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), numpy's default method."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@contextmanager
def stopwatch(into: list):
    start = time.perf_counter()
    try:
        yield
    finally:
        into.append(time.perf_counter() - start)


def fresh_dir(path: Path | str) -> Path:
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# -- machine facts --------------------------------------------------------------------------------
def machine_facts() -> dict:
    cpu_model, flags = None, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model is None:
                cpu_model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    mem_kb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "cpu_flags": sorted(f for f in flags.split() if f in {"avx2", "avx512f", "avx512_vnni", "amx_int8", "fma"}),
        "ram_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": load,
    }


def git_commit() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def pip_versions(python: str, names: list[str]) -> dict:
    """Installed versions of the named distributions in the environment of `python`."""
    code = (
        "import json,sys\nfrom importlib import metadata\nout={}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n]=metadata.version(n)\n"
        "    except metadata.PackageNotFoundError: out[n]=None\n"
        "print(json.dumps(out))"
    )
    try:
        res = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60)
        return json.loads(res.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- data preparation -------------------------------------------------------------------------------
def prepare_scifact(src: Path, dst: Path, n_docs: int | None) -> dict:
    """dst/corpus.jsonl = the first n_docs lines of SciFact's corpus (all when None)."""
    fresh_dir(dst)
    n = 0
    with (src / "corpus.jsonl").open(encoding="utf-8") as fin, (dst / "corpus.jsonl").open("w", encoding="utf-8") as fout:
        for line in fin:
            if not line.strip():
                continue
            if n_docs is not None and n >= n_docs:
                break
            fout.write(line if line.endswith("\n") else line + "\n")
            n += 1
    return {"kind": "beir", "docs": n, "path": str(dst)}


def prepare_markdown(src: Path, dst: Path, n_files: int | None) -> dict:
    """dst = the first n_files Markdown files of src (sorted by path, folders kept); all when None."""
    fresh_dir(dst)
    files = sorted(p for p in src.rglob("*.md") if p.is_file())
    if n_files is not None:
        files = files[:n_files]
    for p in files:
        target = dst / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    return {"kind": "markdown", "docs": len(files), "bytes": sum(p.stat().st_size for p in files), "path": str(dst)}


def duplicate_beir(src: Path, dst: Path, times: int) -> dict:
    """dst/corpus.jsonl = src's documents `times` times over, copy i with ids `<id>~<i>` (copy 0 keeps them)."""
    fresh_dir(dst)
    lines = [json.loads(l) for l in (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
    with (dst / "corpus.jsonl").open("w", encoding="utf-8") as fout:
        for i in range(times):
            for rec in lines:
                rec = dict(rec, _id=rec["_id"] if i == 0 else f"{rec['_id']}~{i}")
                fout.write(json.dumps(rec) + "\n")
    return {"kind": "beir", "docs": len(lines) * times, "path": str(dst)}


def mutate(live: Path, seed: int, fraction: float = MUTATION_FRACTION) -> list[str]:
    """Change `fraction` of the documents in place (seeded): a sentence appended to each. Returns their ids."""
    rng = random.Random(seed)
    note = f" Revision {seed}: the authors added this sentence in a later version of the document."
    corpus = live / "corpus.jsonl"
    if corpus.exists():
        recs = [json.loads(l) for l in corpus.read_text(encoding="utf-8").splitlines() if l.strip()]
        k = max(1, round(len(recs) * fraction))
        picked = sorted(rng.sample(range(len(recs)), k))
        for i in picked:
            recs[i]["text"] = recs[i]["text"] + note
        corpus.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        return [str(recs[i]["_id"]) for i in picked]
    files = sorted(p for p in live.rglob("*.md") if p.is_file())
    k = max(1, round(len(files) * fraction))
    picked = sorted(rng.sample(files, k))
    for p in picked:
        with p.open("a", encoding="utf-8") as fh:
            fh.write("\n\n" + note.strip() + "\n")
    return [str(p.relative_to(live)) for p in picked]


def load_documents(live: Path) -> list[tuple[str, str]]:
    """(doc_id, text) as ragloop's ingest sees them: BEIR title + ' ' + text; Markdown files as read."""
    corpus = live / "corpus.jsonl"
    if corpus.exists():
        out = []
        for line in corpus.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                text = f"{rec.get('title') or ''} {rec.get('text') or ''}".strip()
                out.append((str(rec["_id"]), text))
        return out
    return [(str(p.relative_to(live)), p.read_text(encoding="utf-8")) for p in sorted(live.rglob("*.md")) if p.is_file()]


def read_qrels(root: Path) -> dict[str, dict[str, int]]:
    """A BEIR dataset's test qrels: query id -> {document id: relevance > 0}."""
    import csv

    qrels: dict[str, dict[str, int]] = {}
    with (root / "qrels" / "test.tsv").open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if int(row["score"]) > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def read_queries(root: Path, wanted) -> dict[str, str]:
    """Query id -> text for the ids in `wanted`, from a BEIR dataset's queries.jsonl."""
    queries = {}
    for line in (root / "queries.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if str(rec["_id"]) in wanted:
                queries[str(rec["_id"])] = rec["text"]
    return queries


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Terminate a server process, killing it if it has not exited within timeout seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
