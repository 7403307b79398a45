"""The lake: the one module that knows where artifacts live and how they are written (I/O).

Layout under the lake root (a local path or an object-store URI; pyarrow filesystems):
    documents/snapshot_id=<id>/part-0.parquet   one snapshot per distinct corpus state
    documents/snapshot_id=<id>/stat_cache.json  the source files' stat signatures -> doc ids (ingest's no-op proof)
    quarantine/<run_id>.parquet                 files an ingest run could not use, with reasons
    validations/<run_id>/<suite>.json           great-expectations results
    runs/<run_id>.parquet                       run manifests (status, times, lineage, outputs)
    refs/<name>.json                            small pointers: latest snapshot (documents), serving and
                                                candidate index, golden-set lines, baselines (tasks.promotion
                                                writes those), prompt hashes last used by a run (prompts),
                                                each chunks table's embedder fingerprint (table__<table>) and
                                                full-text tokenizer (fts__<table>), eval cache keys
                                                (eval_cache__<key>), monitor state (monitor_state), the
                                                uncovered production questions (production_candidates)
    promotions/<run_id>.json                    every promotion (tasks.promotion), for rollback
    reviews/<batch_id>.parquet                  review events, append-only (tasks.review)
    golden/<golden_set_id>.parquet              golden-set versions
    eval/<run_id>/items.parquet, traces.parquet per-item results and per-step traces of an eval run
    llm_cache/part-<utc>-<uid>.parquet          the LLM call cache (tasks/llm_cache.py): append-only parts, each
                                                written whole (temp + rename); compaction merges them
    prompts/<name>__<hash>.parquet              the prompts registry
    locks/run.lock                              the lake's run lock (on s3://, a lease object: ObjectStoreLease)
    locks/review.lock                           review decisions' check-and-append (tasks.review)
    logs/parts/<import_id>.parquet              production log records, one part per import (tasks.production)
    logs/quarantine/<id>.parquet                log lines an import could not use, with reasons
    history/<observation_id>.parquet            metric values per observed eval run (monitor)
    alerts/alerts.jsonl                         every alert the monitor raised, one JSON per line
    reports/<run_id>/report.html (+ PNGs)       the monitor's HTML report per run (and a bake-off's)
    bakeoffs/<run_id>.parquet                   a bake-off's cells: config, run_id, metrics, latency, tokens, cost
    lancedb/chunks__<embedder_slug>.lance       chunk vectors (LanceDB)
    lancedb/chunks__<embedder_slug>__ck<hash12>.lance   a bake-off's table for an (embedder, chunker) pair that
                                                is not served (refs/bakeoff_table__<table>: the version built)
Every Parquet/JSON write goes to a temp name first and is renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ragloop.tasks import schemas

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class LakeLocked(RuntimeError):
    """Another run holds the lake's run lock; the message names the holder."""


class LeaseLost(LakeLocked):
    """This process's lease on an object-store lake expired and another run took it over: a write now
    could interleave with that run's, so it is refused (the message names the new holder)."""


_HELD: dict[str, int] = {}  # lock path -> nesting depth held by this process (subflows re-enter)
_HELD_GUARD = threading.Lock()
_LEASES: dict[str, list["ObjectStoreLease"]] = {}  # lake URI -> the leases this process holds on it (the write fence)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _holder_alive(holder: dict) -> bool:
    """False only when the holder is provably gone: same host, and its pid is dead or was reused."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("pid_start")
    return not started or _process_start(pid) in (None, started)


LEASE_S = 60.0  # an object-store lock's lease: renewed every LEASE_S / 3 while held; a dead holder blocks at most this


def lease_expired(holder: dict | None, now: float) -> bool:
    """Whether an object-store lock's record no longer holds the lake: its `expires_at` (UTC ISO time) lies
    before `now` (epoch seconds), or it is unreadable. Clocks of the holder and the waiter must agree to
    well under the lease (NTP); a record without expires_at (an old local lock file copied up) is expired."""
    from datetime import datetime

    if not holder or not holder.get("expires_at"):
        return True
    try:
        return datetime.fromisoformat(holder["expires_at"]).timestamp() < now
    except (TypeError, ValueError):
        return True


def s3_location(path: str) -> tuple[str, str]:
    """(bucket, key) of a pyarrow S3 path `bucket/key...`."""
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise ValueError(f"not an S3 object path: {path!r}")
    return bucket, key


class ObjectStoreLease:
    """An exclusive lease held as one S3 object (I/O): created only if absent (PutObject If-None-Match: *),
    renewed and released only by its holder (If-Match: the ETag it wrote), taken over only once expired
    (If-Match: the ETag of the expired record, so of two waiters one wins). The record is
    {owner, pid, pid_start, host, lease_id, started_at, expires_at}. pyarrow's S3 filesystem cannot send
    these headers, so this goes through boto3; endpoint, region and credentials come from the standard AWS
    environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...), as pyarrow and LanceDB read them."""

    def __init__(self, path: str, lease_s: float = LEASE_S, client=None) -> None:
        self.bucket, self.key = s3_location(path)
        self.lease_s = lease_s
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client = client
        self.etag: str | None = None
        self.record: dict = {}
        self.expires_ts = 0.0  # epoch seconds at which the record last written expires
        self.lost = threading.Event()
        self._writing = threading.Lock()  # the heartbeat and check() renew through the same ETag
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _body(self, me: dict) -> bytes:
        expires = schemas.utcnow().timestamp() + self.lease_s
        from datetime import datetime, timezone

        self.expires_ts = expires
        self.record = {**me, "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat()}
        return json.dumps(self.record, sort_keys=True).encode()

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def _put(self, me: dict, **condition: str) -> bool:
        """One conditional PutObject; False when the condition failed (412, or 409 for a concurrent one)."""
        from botocore.exceptions import ClientError

        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(me),
                                               ContentType="application/json", **condition)["ETag"]
            return True
        except ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise

    def read(self) -> tuple[dict | None, str | None]:
        """(holder record, its ETag); (None, None) when there is no lock object."""
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None, None
            raise
        try:
            holder = json.loads(got["Body"].read() or b"null")
        except ValueError:
            holder = None
        return (holder if isinstance(holder, dict) else {}), got["ETag"]

    def try_acquire(self, me: dict) -> tuple[bool, dict | None]:
        """(True, None) when this call now holds the lease, else (False, the holder's record)."""
        if self._put(me, IfNoneMatch="*"):
            return True, None
        holder, etag = self.read()
        if etag is None:  # released between the two calls: try again at once
            return self.try_acquire(me)
        stale = lease_expired(holder, time.time()) or not _holder_alive(holder)
        if stale and self._put(me, IfMatch=etag):
            log.warning("s3://%s/%s: took over the expired lock of %s", self.bucket, self.key, holder)
            return True, None
        return False, holder

    def start_heartbeat(self) -> None:
        """Renew the lease every lease_s / 3 seconds in a daemon thread until release(); a renewal that finds
        the lease taken (the process stalled past its expiry) sets `lost` and logs an error."""
        def beat() -> None:
            from botocore.exceptions import BotoCoreError, ClientError

            while not self._stop.wait(self.lease_s / 3):
                try:
                    renewed = self._renew()
                except (BotoCoreError, ClientError) as exc:  # a blip: the next beat tries again within the lease
                    log.warning("s3://%s/%s: renewing the lock failed (%s); retrying", self.bucket, self.key, exc)
                    continue
                if not renewed:
                    log.error("s3://%s/%s: the lock was taken over after its lease expired: this run's further "
                              "writes to the lake are refused", self.bucket, self.key)
                    return

        self._beat = threading.Thread(target=beat, name=f"lease-{self.key}", daemon=True)
        self._beat.start()

    def _renew(self) -> bool:
        """Rewrite the record with a new expiry if the object is still the one this lease wrote (If-Match);
        False, and `lost` set, when another holder replaced it."""
        with self._writing:
            if self.lost.is_set():
                return False
            me = {k: v for k, v in self.record.items() if k != "expires_at"}
            if self._put(me, IfMatch=self.etag):
                return True
            self.lost.set()
            return False

    def check(self, margin_s: float | None = None) -> None:
        """The write fence, called before each write that makes something visible in the lake: returns while
        this process provably holds the lease, else raises LeaseLost. Provably: the lease was not found
        taken, and its record expires more than margin_s (default a tenth of the lease) from now, or a
        renewal now succeeds. A process that stalled past its expiry (a VM pause, a long GC, a debugger)
        thus renews before writing, or learns that another run took over and stops; what stays open is a
        stall between this check and the write itself, shorter than the margin."""
        margin_s = self.lease_s / 10 if margin_s is None else margin_s
        if not self.lost.is_set() and time.time() < self.expires_ts - margin_s:
            return
        if not self.lost.is_set():
            try:
                if self._renew():
                    return
            except Exception as exc:  # cannot prove we hold it: do not write
                raise LeaseLost(f"s3://{self.bucket}/{self.key}: cannot renew this run's lease before writing "
                                f"({type(exc).__name__}: {exc}); the write is refused") from exc
        holder, _ = self.read()
        who = (f"{holder.get('owner')} (pid {holder.get('pid')} on {holder.get('host')})" if holder else "nobody now")
        raise LeaseLost(f"s3://{self.bucket}/{self.key}: this run's lease expired and was taken over (held by {who}); "
                        "its further writes to the lake are refused; rerun once that run ends")

    def release(self) -> None:
        """Stop renewing and delete the lock object if it is still ours (If-Match)."""
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=30)
        if self.lost.is_set() or self.etag is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as exc:
            if self._code(exc) not in ("PreconditionFailed", "NoSuchKey", "404", "412"):
                raise
            log.warning("s3://%s/%s: the lock was no longer ours at release", self.bucket, self.key)


def chunks_table_name(embedder_slug: str) -> str:
    return f"chunks__{embedder_slug}"


def bakeoff_table_name(embedder_slug: str, chunker_hash: str) -> str:
    """A bake-off's table for an (embedder, chunker) pair the lake does not serve: chunks__<embedder_slug>__
    ck<first 12 of the chunker hash>. The index path writes it only when asked by name (never serves it)."""
    return f"{chunks_table_name(embedder_slug)}__ck{chunker_hash[:12]}"


class Lake:
    """Paths and atomic reads/writes of the lake's artifacts."""

    def __init__(self, uri: str) -> None:
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
            self.uri = uri.rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(uri).expanduser().resolve())
            self.uri = self.root

    # -- paths ---------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def snapshot_dir(self, snapshot_id: str) -> str:
        return self._path("documents", f"snapshot_id={snapshot_id}")

    @property
    def lancedb_uri(self) -> str:
        return posixpath.join(self.uri, "lancedb")

    # -- primitives ----------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _tmp_name(self, path: str) -> str:
        return f"{path}.tmp-{uuid.uuid4().hex[:12]}"

    def check_fence(self) -> None:
        """Raise LeaseLost if a lease this process holds on this lake was lost (ObjectStoreLease.check);
        every atomic write passes here before its rename, so a run that lost its lock makes nothing visible."""
        for lease in list(_LEASES.get(self.uri, ())):
            lease.check()

    def _move_into_place(self, tmp: str, path: str) -> None:
        try:
            self.check_fence()
        except LeaseLost:
            with suppress(OSError):
                self.fs.delete_file(tmp)
            raise
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        self.fs.move(tmp, path)

    def write_parquet(self, table: pa.Table, path: str) -> None:
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = self._tmp_name(path)
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(table, out, compression="zstd")
        self._move_into_place(tmp, path)

    def write_json(self, data: Any, path: str) -> None:
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = self._tmp_name(path)
        with self.fs.open_output_stream(tmp) as out:
            out.write(json.dumps(data, indent=2, sort_keys=True, default=str).encode())
        self._move_into_place(tmp, path)

    def read_json(self, path: str) -> Any | None:
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as src:
            return json.loads(src.read().decode())

    # -- refs ----------------------------------------------------------------------------------
    def read_ref(self, name: str) -> dict | None:
        return self.read_json(self._path("refs", f"{name}.json"))

    def write_ref(self, name: str, data: dict) -> None:
        self.write_json(data, self._path("refs", f"{name}.json"))

    def delete_ref(self, name: str) -> None:
        self.check_fence()
        path = self._path("refs", f"{name}.json")
        if self.exists(path):
            self.fs.delete_file(path)

    # -- the run lock ----------------------------------------------------------------------------
    @contextmanager
    def lock(self, owner: str, wait_s: float = 0.0, poll_s: float = 0.2, name: str = "run",
             lease_s: float = LEASE_S) -> Iterator[dict]:
        """Hold the lake's run lock (locks/run.lock: owner, pid, host, started_at), or another named lock
        (locks/<name>.lock: e.g. 'review', the review decisions' check-and-append, which must not wait for
        a nightly holding the run lock).

        Re-entrant within a process (a flow's subflows). Otherwise waits up to wait_s seconds, polling every
        poll_s, then raises LakeLocked naming the holder. On a local lake the lock file is created with
        O_EXCL and a lock whose holder is provably dead (same host, pid gone) is taken over. On an s3://
        lake it is a lease (ObjectStoreLease: conditional PutObject, with expires_at lease_s seconds ahead,
        renewed by a heartbeat thread), taken over when it expired or its holder is provably dead. Other
        object stores (gs://, ...) log that the lock is not enforced.
        """
        if isinstance(self.fs, pafs.S3FileSystem):
            path = self._path("locks", f"{name}.lock")
            yield from self._reenter_or(path, lambda me: self._hold_lease(path, me, wait_s, poll_s, lease_s), owner)
            return
        if not isinstance(self.fs, pafs.LocalFileSystem):
            log.warning("lake %s: the run lock needs a local or s3:// lake; concurrent runs are not excluded", self.uri)
            yield {}
            return
        path = self._path("locks", f"{name}.lock")
        yield from self._reenter_or(path, lambda me: self._hold_file(path, me, wait_s, poll_s), owner)

    def _reenter_or(self, path: str, hold, owner: str) -> Iterator[dict]:
        """Yield once: the record already held by this process (a subflow), or `hold(me)`'s."""
        with _HELD_GUARD:
            if _HELD.get(path):
                _HELD[path] += 1
                reentered = True
            else:
                reentered = False
        if reentered:
            try:
                yield self.read_json(path) or {}
            finally:
                with _HELD_GUARD:
                    _HELD[path] -= 1
            return
        me = {"owner": owner, "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
              "host": socket.gethostname(), "started_at": schemas.utcnow().isoformat()}
        yield from hold(me)

    @staticmethod
    def _locked(uri: str, path: str, holder: dict | None, how: str) -> LakeLocked:
        who = (f"{holder.get('owner')} (pid {holder.get('pid')} on {holder.get('host')}, "
               f"since {holder.get('started_at')})") if holder else "a run that is starting"
        return LakeLocked(f"lake {uri} is locked by {who}; {how}")

    def _hold_lease(self, path: str, me: dict, wait_s: float, poll_s: float, lease_s: float) -> Iterator[dict]:
        lease = ObjectStoreLease(path, lease_s=lease_s)
        me = {**me, "lease_id": uuid.uuid4().hex}
        deadline = time.monotonic() + wait_s
        while True:
            held, holder = lease.try_acquire(me)
            if held:
                break
            if time.monotonic() >= deadline:
                raise self._locked(self.uri, path, holder, (
                    f"wait for it to finish; its lease expires at {(holder or {}).get('expires_at')} unless renewed, "
                    "then the next run takes the lock over")) from None
            time.sleep(poll_s)
        with _HELD_GUARD:
            _HELD[path] = 1
            _LEASES.setdefault(self.uri, []).append(lease)
        lease.start_heartbeat()
        try:
            yield lease.record
        finally:
            with _HELD_GUARD:
                _HELD.pop(path, None)
                held = _LEASES.get(self.uri, [])
                if lease in held:
                    held.remove(lease)
                if not held:
                    _LEASES.pop(self.uri, None)
            lease.release()

    def _hold_file(self, path: str, me: dict, wait_s: float, poll_s: float) -> Iterator[dict]:
        deadline = time.monotonic() + wait_s
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = self._lock_holder(path)
                    age_s = time.time() - os.stat(path).st_mtime
                except FileNotFoundError:  # released meanwhile: try again at once
                    continue
                # A holder killed between creating the file and writing it leaves it empty: stale after a while.
                stale = not _holder_alive(holder) if holder is not None else age_s > 10
                if stale:
                    log.warning("lake %s: taking over the stale run lock of %s", self.uri, holder or "an unwritten lock file")
                    stale_path = f"{path}.stale-{uuid.uuid4().hex[:8]}"
                    try:  # rename first: of two processes seeing the same stale lock, one removes it
                        os.rename(path, stale_path)
                        os.remove(stale_path)
                    except FileNotFoundError:
                        pass
                    continue
                if time.monotonic() >= deadline:
                    raise self._locked(self.uri, path, holder,
                                       f"wait for it to finish, or remove {path} if that process is gone") from None
                time.sleep(poll_s)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
        with _HELD_GUARD:
            _HELD[path] = 1
        try:
            yield me
        finally:
            with _HELD_GUARD:
                _HELD.pop(path, None)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    @staticmethod
    def _lock_holder(path: str) -> dict | None:
        """The lock file's holder; None while its creator has not written it (yet). FileNotFoundError
        when it was released."""
        with open(path, encoding="utf-8") as fh:
            try:
                holder = json.loads(fh.read() or "null")
            except ValueError:
                return None
        return holder if isinstance(holder, dict) else None

    # -- documents snapshots -------------------------------------------------------------------
    def snapshot_exists(self, snapshot_id: str) -> bool:
        return self.exists(posixpath.join(self.snapshot_dir(snapshot_id), "part-0.parquet"))

    def snapshot_writer(self, previous: tuple[str, list[tuple]] | None = None) -> "SnapshotWriter":
        return SnapshotWriter(self, previous)

    def iter_snapshot(
        self, snapshot_id: str, columns: list[str] | None = None, batch_size: int = 512
    ) -> Iterator[pa.RecordBatch]:
        """Stream a snapshot's rows in file order, batch by batch (memory stays flat)."""
        path = posixpath.join(self.snapshot_dir(snapshot_id), "part-0.parquet")
        with self.fs.open_input_file(path) as src:
            yield from pq.ParquetFile(src).iter_batches(batch_size=batch_size, columns=columns)

    def read_snapshot(self, snapshot_id: str, columns: list[str] | None = None) -> pa.Table:
        path = posixpath.join(self.snapshot_dir(snapshot_id), "part-0.parquet")
        return pq.read_table(path, columns=columns, filesystem=self.fs)

    def read_stat_cache(self, snapshot_id: str) -> dict | None:
        """The file signatures ingest stored beside a snapshot (tasks/stat_cache.py), None if absent."""
        return self.read_json(posixpath.join(self.snapshot_dir(snapshot_id), "stat_cache.json"))

    def write_stat_cache(self, snapshot_id: str, data: dict) -> None:
        self.write_json(data, posixpath.join(self.snapshot_dir(snapshot_id), "stat_cache.json"))

    def snapshot_profile(self, snapshot_id: str) -> "pd.DataFrame":
        """Per-document facts for validation, streamed so the texts are never all in memory."""
        import pandas as pd
        import pyarrow.compute as pc

        parts = []
        for batch in self.iter_snapshot(snapshot_id, columns=["doc_id", "text", "content_sha256", "bytes", "mime"]):
            parts.append(
                pa.table(
                    {
                        "doc_id": batch["doc_id"],
                        "text_length": pc.utf8_length(batch["text"]),
                        "content_sha256": batch["content_sha256"],
                        "bytes": batch["bytes"],
                        "mime": batch["mime"],
                    }
                )
            )
        if not parts:
            return pd.DataFrame(columns=["doc_id", "text_length", "content_sha256", "bytes", "mime"])
        return pa.concat_tables(parts).to_pandas()

    # -- quarantine, validations, runs ---------------------------------------------------------
    def write_quarantine(self, run_id: str, rows: list[dict]) -> None:
        table = pa.Table.from_pylist(rows, schema=schemas.QUARANTINE)
        self.write_parquet(table, self._path("quarantine", f"{run_id}.parquet"))

    def read_quarantine(self) -> pa.Table:
        return self._read_dir("quarantine", schemas.QUARANTINE)

    def write_validation(self, run_id: str, suite: str, result: dict) -> str:
        path = self._path("validations", run_id, f"{suite}.json")
        self.write_json(result, path)
        return path

    def read_validation(self, run_id: str, suite: str) -> dict | None:
        """The suite result a run stored (write_validation), None if absent."""
        return self.read_json(self._path("validations", run_id, f"{suite}.json"))

    def write_run(self, record: dict) -> None:
        row = dict(record)
        for key in ("lineage", "outputs"):
            row[key] = json.dumps(row.get(key) or {}, sort_keys=True, default=str)
        table = pa.Table.from_pylist([row], schema=schemas.RUNS)
        self.write_parquet(table, self._path("runs", f"{record['run_id']}.parquet"))

    def has_runs(self) -> bool:
        """Whether any run has been recorded here (without reading them)."""
        path = self._path("runs")
        return self.exists(path) and any(
            i.path.endswith(".parquet") for i in self.fs.get_file_info(pafs.FileSelector(path))
        )

    def read_runs(self) -> pa.Table:
        return self._read_dir("runs", schemas.RUNS)

    def read_run(self, run_id: str) -> dict | None:
        path = self._path("runs", f"{run_id}.parquet")
        if not self.exists(path):
            return None
        row = pq.read_table(path, filesystem=self.fs).to_pylist()[0]
        for key in ("lineage", "outputs"):
            row[key] = json.loads(row[key] or "{}")
        return row

    def _read_dir(self, name: str, schema: pa.Schema) -> pa.Table:
        path = self._path(name)
        if not self.exists(path):
            return schema.empty_table()
        files = [
            info.path
            for info in self.fs.get_file_info(pafs.FileSelector(path))
            if info.path.endswith(".parquet")
        ]
        if not files:
            return schema.empty_table()
        return pads.dataset(files, schema=schema, filesystem=self.fs, format="parquet").to_table()

    # -- promotion history (written only through tasks.promotion.Refs) ----------------------------
    def write_promotion(self, run_id: str, record: dict) -> None:
        self.write_json(record, self._path("promotions", f"{run_id}.json"))

    def read_promotions(self) -> list[dict]:
        """Every promotion record of the lake (any line), unordered."""
        selector = pafs.FileSelector(self._path("promotions"), allow_not_found=True)
        records = [self.read_json(i.path) for i in self.fs.get_file_info(selector) if i.path.endswith(".json")]
        return [r for r in records if r]

    # -- eval results ----------------------------------------------------------------------------
    def write_eval(self, run_id: str, items: pa.Table, traces: pa.Table) -> dict[str, str]:
        """Per-item results and per-step traces of one eval run (Parquet, one pair per run)."""
        paths = {"items": self._path("eval", run_id, "items.parquet"), "traces": self._path("eval", run_id, "traces.parquet")}
        self.write_parquet(items, paths["items"])
        self.write_parquet(traces, paths["traces"])
        return paths

    def read_eval_items(self, run_id: str) -> pa.Table | None:
        path = self._path("eval", run_id, "items.parquet")
        return pq.read_table(path, filesystem=self.fs) if self.exists(path) else None

    def read_traces(self, run_id: str) -> pa.Table | None:
        path = self._path("eval", run_id, "traces.parquet")
        return pq.read_table(path, filesystem=self.fs) if self.exists(path) else None

    # -- the LLM call cache (tasks/llm_cache.py) ---------------------------------------------------
    def llm_cache_parts(self) -> list[str]:
        """The cache's published parts (paths), sorted by name (= by write time); temp files left out."""
        selector = pafs.FileSelector(self._path("llm_cache"), allow_not_found=True)
        return sorted(i.path for i in self.fs.get_file_info(selector) if i.path.endswith(".parquet"))

    def read_llm_cache(self, parts: list[str] | None = None, attempts: int = 3) -> pa.Table:
        """Every row of the given parts (default: all of them), in part order. A part that vanishes while
        being read (another process compacted it away) makes the listing start over, up to `attempts` times."""
        for attempt in range(attempts):
            files = self.llm_cache_parts() if parts is None else parts
            if not files:
                return schemas.LLM_CACHE.empty_table()
            try:
                return pads.dataset(files, schema=schemas.LLM_CACHE, filesystem=self.fs, format="parquet").to_table()
            except (FileNotFoundError, OSError):
                if parts is not None or attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")

    def write_llm_cache_part(self, table: pa.Table) -> str:
        """Publish new cache rows as one new part (temp + rename: readers see all of it or nothing)."""
        stamp = schemas.utcnow().strftime("%Y%m%dT%H%M%S%fZ")
        path = self._path("llm_cache", f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet")
        self.write_parquet(table.cast(schemas.LLM_CACHE), path)
        return path

    def delete_llm_cache_parts(self, parts: list[str], tmp_older_than_s: float = 3600.0) -> None:
        """Delete merged parts (one already gone is fine) and temp files a killed writer left behind."""
        for path in parts:
            try:
                self.fs.delete_file(path)
            except (FileNotFoundError, OSError):
                pass
        selector = pafs.FileSelector(self._path("llm_cache"), allow_not_found=True)
        now = time.time()
        for info in self.fs.get_file_info(selector):
            if ".tmp-" in posixpath.basename(info.path) and info.mtime is not None \
                    and now - info.mtime.timestamp() > tmp_older_than_s:
                try:
                    self.fs.delete_file(info.path)
                except (FileNotFoundError, OSError):
                    pass

    # -- prompts registry ----------------------------------------------------------------------
    def record_prompt(self, name: str, prompt_hash: str, text: str) -> bool:
        """Record that a run used this prompt version: the registry keeps each version once (with its
        text) and refs/prompts.json the version last used per name. False if the version was known."""
        path = self._path("prompts", f"{name}__{prompt_hash[:16]}.parquet")
        new = not self.exists(path)
        if new:
            row = {"name": name, "prompt_hash": prompt_hash, "text": text, "first_seen_at": schemas.utcnow()}
            self.write_parquet(pa.Table.from_pylist([row], schema=schemas.PROMPTS), path)
        used = self.read_ref("prompts") or {}
        if used.get(name) != prompt_hash:
            self.write_ref("prompts", {**used, name: prompt_hash})
        return new

    def read_prompt_registry(self) -> pa.Table:
        return self._read_dir("prompts", schemas.PROMPTS)

    def prompt_text(self, prompt_hash: str) -> str | None:
        rows = [r for r in self.read_prompt_registry().to_pylist() if r["prompt_hash"] == prompt_hash]
        return rows[0]["text"] if rows else None

    def last_prompt_hashes(self) -> dict[str, str]:
        """name -> the prompt version last used by a run (a revert to an older version counts)."""
        return dict(self.read_ref("prompts") or {})

    # -- golden sets ---------------------------------------------------------------------------
    def golden_path(self, golden_set_id: str) -> str:
        return self._path("golden", f"{golden_set_id}.parquet")

    def write_golden(self, golden_set_id: str, table: pa.Table) -> bool:
        """Write a golden set version (content-addressed); False if that version already exists."""
        path = self.golden_path(golden_set_id)
        if self.exists(path):
            return False
        self.write_parquet(table, path)
        return True

    def read_golden(self, golden_set_id: str) -> pa.Table:
        return pq.read_table(self.golden_path(golden_set_id), filesystem=self.fs, schema=schemas.GOLDEN)

    def golden_exists(self, golden_set_id: str) -> bool:
        return self.exists(self.golden_path(golden_set_id))

    def list_golden(self) -> list[str]:
        selector = pafs.FileSelector(self._path("golden"), allow_not_found=True)
        return sorted(posixpath.basename(i.path)[: -len(".parquet")] for i in self.fs.get_file_info(selector)
                      if i.path.endswith(".parquet"))

    # -- review events (tasks.review) ------------------------------------------------------------
    def write_reviews(self, batch_id: str, table: pa.Table) -> str:
        """Append review events: one new file per batch (temp + rename), so a batch is all or nothing
        and two writers never touch the same file."""
        path = self._path("reviews", f"{batch_id}.parquet")
        if self.exists(path):
            raise FileExistsError(path)
        self.write_parquet(table, path)
        return path

    def read_reviews(self) -> pa.Table:
        """Every review event of the lake, unordered."""
        return self._read_dir("reviews", schemas.REVIEWS)

    # -- production logs (tasks.production) --------------------------------------------------------
    def write_logs(self, import_id: str, table: pa.Table) -> str:
        """One import's new records as one Parquet part (temp + rename: all or nothing); returns its path."""
        path = self._path("logs", "parts", f"{import_id}.parquet")
        self.write_parquet(table, path)
        return path

    def read_logs(self, columns: list[str] | None = None) -> pa.Table:
        """Every imported production log record (all parts), unordered."""
        table = self._read_dir(posixpath.join("logs", "parts"), schemas.PRODUCTION_LOGS)
        return table.select(columns) if columns else table

    def write_log_quarantine(self, quarantine_id: str, table: pa.Table) -> None:
        self.write_parquet(table, self._path("logs", "quarantine", f"{quarantine_id}.parquet"))

    def read_log_quarantine(self) -> pa.Table:
        return self._read_dir(posixpath.join("logs", "quarantine"), schemas.LOG_QUARANTINE)

    # -- judge calibrations (tasks.calibration) ---------------------------------------------------
    def write_calibration(self, table: pa.Table) -> bool:
        """One calibration of one judge (`calibrations/<judge_id>__<calibration_id>.parquet`); False when
        that calibration (same judge, same labels, same figures) is already stored."""
        row = table.slice(0, 1).to_pylist()[0]
        path = self._path("calibrations", f"{row['judge_id'][:24]}__{row['calibration_id'][:16]}.parquet")
        if self.exists(path):
            return False
        self.write_parquet(table, path)
        return True

    def read_calibrations(self) -> pa.Table:
        """Every stored calibration, unordered."""
        return self._read_dir("calibrations", schemas.CALIBRATIONS)

    # -- monitoring ----------------------------------------------------------------------------
    def write_history(self, observation_id: str, table: pa.Table) -> None:
        """One observation's metric rows (rewriting the same observation replaces it: idempotent)."""
        self.write_parquet(table, self._path("history", f"{observation_id}.parquet"))

    def read_history(self) -> pa.Table:
        return self._read_dir("history", schemas.HISTORY)

    def default_alerts_path(self) -> str:
        return self._path("alerts", "alerts.jsonl")

    def append_lines(self, path: str, lines: list[str]) -> None:
        """Append text lines to a file (JSONL); object stores cannot append, so they rewrite it."""
        if not lines:
            return
        payload = "".join(line.rstrip("\n") + "\n" for line in lines).encode("utf-8")
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            with open(path, "ab") as out:
                out.write(payload)
            return
        old = b""
        if self.exists(path):
            with self.fs.open_input_stream(path) as src:
                old = src.read()
        with self.fs.open_output_stream(path) as out:
            out.write(old + payload)

    def report_path(self, run_id: str) -> str:
        return self._path("reports", run_id, "report.html")

    def write_report(self, run_id: str, files: dict[str, bytes]) -> str:
        """Write a run's report files (report.html and its PNGs) under reports/<run_id>/; returns the HTML path."""
        folder = posixpath.dirname(self.report_path(run_id))
        self.fs.create_dir(folder, recursive=True)
        for name in sorted(files, key=lambda n: n == "report.html"):  # the HTML last: its images exist first
            path = posixpath.join(folder, name)
            tmp = self._tmp_name(path)
            with self.fs.open_output_stream(tmp) as out:
                out.write(files[name])
            self._move_into_place(tmp, path)
        return self.report_path(run_id)

    def write_bakeoff(self, run_id: str, cells: pa.Table) -> str:
        """Write a bake-off's cells (one row per cell) to bakeoffs/<run_id>.parquet; returns the path."""
        path = self._path("bakeoffs", f"{run_id}.parquet")
        self.write_parquet(cells, path)
        return path

    # -- LanceDB -------------------------------------------------------------------------------
    def connect_vectors(self):
        import lancedb

        return lancedb.connect(self.lancedb_uri)

    def table_bytes(self, name: str) -> int | None:
        """Bytes the LanceDB table takes in the lake, every version kept (None when it is not there)."""
        folder = posixpath.join(self.root, "lancedb", f"{name}.lance")
        if not self.exists(folder):
            return None
        infos = self.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


SNAPSHOT_KEY = ("doc_id", "content_sha256", "source_uri", "mime", "bytes", "ingested_at")


def snapshot_key(row: dict) -> tuple:
    """What decides a document row: content_sha256 covers its text, title and metadata."""
    return tuple(row[c] for c in SNAPSHOT_KEY)


class SnapshotWriter:
    """Streams documents into a temp Parquet file; finish() names it by its content-derived id.

    If a snapshot with that id already exists the temp file is dropped: re-ingesting an
    unchanged corpus writes nothing. With `previous` (the latest snapshot's id and its rows' keys in
    file order, see snapshot_key), rows equal to it, in its order, are only counted: nothing is written
    unless a row differs, and then the previous snapshot's matching rows are copied first. A no-op
    re-ingest so writes (and compresses) no byte.
    """

    def __init__(self, lake: Lake, previous: tuple[str, list[tuple]] | None = None) -> None:
        self.lake = lake
        self.tmp = lake._tmp_name(lake._path("documents", "incoming.parquet"))
        lake.fs.create_dir(posixpath.dirname(self.tmp), recursive=True)
        self.previous_id, self._previous_keys = previous or (None, [])
        self._same = 0  # leading rows equal to the previous snapshot's, not written yet
        self._writer: pq.ParquetWriter | None = None
        self._stream = None
        self._deferring = previous is not None
        self.rows = 0

    def _open(self) -> None:
        self._stream = self.lake.fs.open_output_stream(self.tmp)
        self._writer = pq.ParquetWriter(self._stream, schemas.DOCUMENTS, compression="zstd")
        if self._deferring and self._same:  # the rows counted so far: copied from the previous snapshot
            left = self._same
            for batch in self.lake.iter_snapshot(self.previous_id):
                part = batch.slice(0, left)
                self._writer.write_table(pa.Table.from_batches([part], schema=schemas.DOCUMENTS))
                left -= part.num_rows
                if not left:
                    break
        self._deferring = False

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.rows += len(rows)
        if self._deferring:
            keys = self._previous_keys
            for i, row in enumerate(rows):
                if self._same < len(keys) and snapshot_key(row) == keys[self._same]:
                    self._same += 1
                    continue
                rows = rows[i:]
                self._open()
                break
            else:
                return
        elif self._writer is None:
            self._open()
        self._writer.write_table(pa.Table.from_pylist(rows, schema=schemas.DOCUMENTS))

    def finish(self, snapshot_id: str) -> bool:
        """Close and publish; returns False when the snapshot already existed (nothing written)."""
        if self._deferring and self._same == len(self._previous_keys) and snapshot_id == self.previous_id \
                and self.lake.snapshot_exists(snapshot_id):
            return False
        if self._writer is None:
            self._open()
        self._writer.close()
        self._stream.close()
        if self.lake.snapshot_exists(snapshot_id):
            self.lake.fs.delete_file(self.tmp)
            return False
        target = posixpath.join(self.lake.snapshot_dir(snapshot_id), "part-0.parquet")
        self.lake._move_into_place(self.tmp, target)
        return True

    def abort(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
            self._stream.close()
        finally:
            if self.lake.exists(self.tmp):
                self.lake.fs.delete_file(self.tmp)
