"""The ingest stat cache (lake I/O through storage): a file whose stat is unchanged since the previous
snapshot reuses its documents' stored rows (and their content hashes) instead of being read, parsed and
hashed again, so a no-op re-ingest proves itself from `stat` alone.

A file's signature is (size, mtime_ns, ctime_ns, inode, device), plus the same of its table sidecar when
it has one. It is trusted only when both times are older than RACY_S before the run started (git's
"racily clean" rule: a write landing in the same timestamp tick as our read would go unseen), and only
when the ingest settings that shape parsing and the ragloop version are those that stored it. Anything
else is read and hashed. The blind spot is a rewrite that keeps size, mtime and ctime and inode alike:
ctime cannot be set back by a program (os.utime moves it forward), so in practice a file system with
coarse or absent ctime (some network and FAT mounts), or a clock set back. `ingest.verify_hashes: true`
reads and hashes every file on every run.

The content-hash fallback: each entry also keeps the sha256 of the bytes its documents were parsed from
(files without a sidecar). A file whose signature differs or cannot be trusted yet (a fresh copy, a
`touch`, a checkout that rewrote it unchanged) is read and hashed; equal bytes reuse the stored documents
without parsing them, since a built-in loader's documents are a function of the bytes alone (with the
same settings and loader code). Racy files are kept this way (hash only) until their signature settles.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Iterator

from ragloop.tasks.settings import IngestConfig
from ragloop.tasks.storage import Lake

RACY_S = 2
# Loader notes of a file whose documents read other files (mkdocs snippet includes): never cached, since
# the included file can change while this one's stat does not.
FOREIGN_NOTES = frozenset({"snippets_resolved", "snippets_dropped"})
# Rows read ahead of the file order and not yet claimed (changed or deleted files' rows); past this many
# the oldest are dropped, which costs those files a read, never a wrong answer.
READ_AHEAD_ROWS = 4096
LOADER_MODULES = ("ingestion.py", "mkdocs.py", "stat_cache.py", "schemas.py")


def signature(path: Path, sidecar: Path | None = None) -> list[int] | None:
    """The file's stat signature (with its sidecar's, or [0] when it has none), or None when it is not a
    plain regular file (a link, a FIFO, gone): such files are always read."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    if sidecar is not None:
        try:
            side = os.lstat(sidecar)
            sig += [side.st_size, side.st_mtime_ns, side.st_ctime_ns, side.st_ino] if stat.S_ISREG(side.st_mode) else [-1]
        except FileNotFoundError:
            sig += [0]
        except OSError:
            return None
    return sig


def content_digest(data: bytes) -> str:
    """The hash of a file's bytes, as the cache keeps it."""
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=1)
def loader_code() -> str:
    """A hash of the code that turns files into documents (an edited loader invalidates the cache)."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in LOADER_MODULES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(config: IngestConfig, version: str) -> str:
    """What else decides a file's documents: the parsing settings, the ragloop version, the loaders' code."""
    data = config.model_dump(mode="json", exclude={"sources", "rows_per_batch", "verify_hashes"})
    return hashlib.sha256(json.dumps([data, version, loader_code()], sort_keys=True).encode()).hexdigest()[:16]


class PreviousRows:
    """The previous snapshot's rows, streamed once in file order; `take` claims a file's rows by doc id."""

    def __init__(self, lake: Lake, snapshot_id: str | None, limit: int = READ_AHEAD_ROWS) -> None:
        self._batches: Iterator = lake.iter_snapshot(snapshot_id) if snapshot_id else iter(())
        self._ahead: dict[str, dict] = {}
        self.limit = limit

    def take(self, doc_ids: list[str]) -> list[dict] | None:
        """The rows of these documents (each claimed once), or None when any is not found."""
        out = []
        for doc_id in doc_ids:
            row = self._ahead.pop(doc_id, None)
            while row is None:
                batch = next(self._batches, None)
                if batch is None:
                    return None
                for r in batch.to_pylist():
                    self._ahead[r["doc_id"]] = r
                row = self._ahead.pop(doc_id, None)
                while len(self._ahead) > self.limit:
                    self._ahead.pop(next(iter(self._ahead)))
            out.append(row)
        return out


class StatCache:
    """Last snapshot's file signatures -> (doc ids, loader notes), and this run's, to store with the new one."""

    def __init__(self, lake: Lake, previous_snapshot_id: str | None, config: IngestConfig, version: str,
                 started_ns: int | None = None) -> None:
        self.fingerprint = fingerprint(config, version)
        self.verify = config.verify_hashes
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        stored = lake.read_stat_cache(previous_snapshot_id) if previous_snapshot_id else None
        self.old: dict[str, dict] = (stored or {}).get("files", {}) if (stored or {}).get("fingerprint") == self.fingerprint else {}
        self.new: dict[str, dict] = {}
        self.rows = PreviousRows(lake, previous_snapshot_id if self.old and not self.verify else None)
        self.hits = 0  # files reused by their signature
        self.content_hits = 0  # files reused by the hash of their bytes

    def trusted(self, sig: list[int]) -> bool:
        """Both times older than RACY_S before the run started (a fresher file may still be being written)."""
        horizon = self.started_ns - RACY_S * 1_000_000_000
        return sig[1] < horizon and sig[2] < horizon

    def lookup(self, uri: str, label: str | None, sig: list[int] | None) -> tuple[list[dict], dict] | None:
        """The stored rows and loader notes of an unchanged file, or None: read it."""
        entry = self.old.get(uri)
        if self.verify or sig is None or entry is None or entry["sig"] != sig or entry["label"] != label or not self.trusted(sig):
            return None
        found = self._take(uri, entry)
        if found is not None:
            self.hits += 1
            self.new[uri] = entry
        return found

    def _take(self, uri: str, entry: dict) -> tuple[list[dict], dict] | None:
        rows = self.rows.take(entry["doc_ids"])
        if rows is None or any(r["source_uri"].split("#", 1)[0] != uri for r in rows):
            return None
        return rows, entry["notes"]

    def wants_content(self, uri: str, label: str | None, sig: list[int] | None) -> bool:
        """Whether a file that `lookup` did not prove unchanged can still be proven by hashing its bytes:
        a plain file without a sidecar whose stored entry has the hash of the bytes it was parsed from."""
        entry = self.old.get(uri)
        return (not self.verify and sig is not None and sig[5:] == [0] and entry is not None
                and entry["label"] == label and bool(entry.get("content")))

    def lookup_content(self, uri: str, label: str | None, sig: list[int], data: bytes) -> tuple[list[dict], dict] | None:
        """The stored rows and loader notes when `data` (the file's bytes, read now) are the bytes its
        documents were parsed from; the entry takes the new signature (kept only when trusted)."""
        entry = self.old[uri]
        if content_digest(data) != entry["content"]:
            return None
        found = self._take(uri, entry)
        if found is not None:
            self.content_hits += 1
            self.new[uri] = {**entry, "sig": sig if self.trusted(sig) else None}
        return found

    def record(self, uri: str, label: str | None, sig: list[int] | None, doc_ids: list[str], notes: dict,
               content: str | None = None) -> None:
        """Remember a file just read: its signature when it can be trusted next time, and `content` (the
        digest of the bytes its documents came from, content_digest) for the hash fallback."""
        if sig is None or not doc_ids or FOREIGN_NOTES & set(notes):
            return
        trusted = self.trusted(sig)
        if trusted or content:
            self.new[uri] = {"sig": sig if trusted else None, "label": label, "doc_ids": doc_ids, "notes": notes,
                             **({"content": content} if content and sig[5:] == [0] else {})}

    def discard(self, source_uri: str) -> None:
        """Forget the file a document came from (its document did not make it into the snapshot as read)."""
        self.new.pop(source_uri.split("#", 1)[0], None)

    def keep_others(self, in_scope) -> None:
        """Carry the entries of files this run did not look at (other sources' documents are kept)."""
        for uri, entry in self.old.items():
            if uri not in self.new and not in_scope(uri):
                self.new[uri] = entry

    def save(self, lake: Lake, snapshot_id: str) -> None:
        """Store this run's signatures beside the snapshot (skipped when they are what is stored)."""
        data = {"fingerprint": self.fingerprint, "files": self.new}
        if lake.read_stat_cache(snapshot_id) != data:
            lake.write_stat_cache(snapshot_id, data)
