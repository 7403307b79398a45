"""The run lock on an s3:// lake: a lease object created only if absent, renewed while held, taken over
only when expired (or its holder provably dead); a second run fails naming the holder, or waits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ragloop.tasks.storage import Lake, LakeLocked, LeaseLost, ObjectStoreLease, s3_location

HOLD = """
import sys, time
from ragloop.tasks.storage import Lake
with Lake(sys.argv[1]).lock("index flow child", lease_s=float(sys.argv[3])):
    print("HELD", flush=True)
    time.sleep(float(sys.argv[2]))
print("RELEASED", flush=True)
"""


def _hold_in_child(lake_uri: str, hold_s: float, lease_s: float = 60.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, lake_uri, str(hold_s), str(lease_s)], stdout=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def _lock_object(lake_uri: str) -> tuple[str, str]:
    lake = Lake(lake_uri)
    return s3_location(lake._path("locks", "run.lock"))


def test_a_second_run_on_an_s3_lake_fails_naming_the_holder_or_waits(s3_lake):
    child = _hold_in_child(s3_lake, hold_s=3)
    try:
        with pytest.raises(LakeLocked, match=rf"is locked by index flow child \(pid {child.pid} on {socket.gethostname()}, "
                                             r"since .*its lease expires at "):
            with Lake(s3_lake).lock("manual index"):
                pass
        start = time.monotonic()
        with Lake(s3_lake).lock("manual index", wait_s=60) as me:
            waited_s = time.monotonic() - start
            assert me["owner"] == "manual index" and me["pid"] == os.getpid()
        assert child.wait(timeout=30) == 0 and child.stdout.read().strip() == "RELEASED"
    finally:
        if child.poll() is None:
            child.kill()
    assert waited_s > 1, "it waited for the holder"
    import boto3

    bucket, key = _lock_object(s3_lake)
    assert boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount") == 0, "released: deleted"


def test_the_lease_is_renewed_while_held_and_reentrant_for_subflows(s3_lake):
    lake = Lake(s3_lake)
    bucket, key = _lock_object(s3_lake)
    with lake.lock("nightly", lease_s=1.5) as me:
        first = me["expires_at"]
        with lake.lock("a subflow") as inner:
            assert inner["owner"] == "nightly"
        time.sleep(2.5)  # past the first expiry: a live holder's heartbeat keeps it
        held, holder = ObjectStoreLease(f"{bucket}/{key}", lease_s=1.5).try_acquire(
            {"owner": "other", "pid": 1, "host": "elsewhere"})
        assert not held and holder["owner"] == "nightly" and holder["expires_at"] > first


def test_an_expired_lease_of_another_host_is_taken_over_a_live_one_is_not(s3_lake):
    import boto3

    bucket, key = _lock_object(s3_lake)
    record = {"owner": "nightly on a dead VM", "pid": 4242, "host": "worker-7", "started_at": "2026-01-01T00:00:00+00:00",
              "expires_at": "2999-01-01T00:00:00+00:00"}
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())
    with pytest.raises(LakeLocked, match="nightly on a dead VM .pid 4242 on worker-7"):
        with Lake(s3_lake).lock("index"):
            pass
    record["expires_at"] = "2020-01-01T00:00:00+00:00"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())
    with Lake(s3_lake).lock("index") as me:
        assert json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())["lease_id"] == me["lease_id"]


def test_a_killed_holder_on_this_host_is_taken_over_at_once_and_of_two_takers_one_wins(s3_lake):
    child = _hold_in_child(s3_lake, hold_s=120, lease_s=600)
    child.kill()
    child.wait()
    bucket, key = _lock_object(s3_lake)
    takers = [ObjectStoreLease(f"{bucket}/{key}", lease_s=60) for _ in range(2)]
    results = [t.try_acquire({"owner": f"taker {i}", "pid": os.getpid(), "host": socket.gethostname()})[0]
               for i, t in enumerate(takers)]
    assert results == [True, False], "the dead pid's lease is taken over at once; the second taker finds it held"


def _stall(lake: Lake) -> ObjectStoreLease:
    """The lease this process holds on the lake, its heartbeat stopped: the process 'stalled'."""
    from ragloop.tasks import storage

    (lease,) = storage._LEASES[lake.uri]
    lease._stop.set()
    lease._beat.join(timeout=30)
    return lease


def test_a_run_that_stalled_past_its_lease_and_was_taken_over_writes_nothing_more(s3_lake):
    """The fence: a holder paused past its expiry (its heartbeat could not run) whose lease another run took
    over is refused at its next write, naming the new holder, and the lake keeps the new holder's state."""
    lake = Lake(s3_lake)
    bucket, key = _lock_object(s3_lake)
    with lake.lock("nightly", lease_s=1.0):
        lake.write_ref("probe", {"by": "nightly"})
        _stall(lake)
        time.sleep(1.3)
        other = ObjectStoreLease(f"{bucket}/{key}", lease_s=60)
        assert other.try_acquire({"owner": "index on worker-2", "pid": 77, "host": "worker-2"})[0]
        import boto3

        ref_bucket, ref_key = s3_location(lake._path("refs", "probe.json"))  # the other run writes its ref
        boto3.client("s3").put_object(Bucket=ref_bucket, Key=ref_key, Body=json.dumps({"by": "index on worker-2"}).encode())
        with pytest.raises(LeaseLost, match=r"lease expired and was taken over \(held by index on worker-2 "
                                            r"\(pid 77 on worker-2\)\)"):
            lake.write_ref("probe", {"by": "nightly"})
        with pytest.raises(LeaseLost):
            lake.delete_ref("probe")
    assert Lake(s3_lake).read_ref("probe") == {"by": "index on worker-2"}
    held, _ = ObjectStoreLease(f"{bucket}/{key}").read()
    assert held["owner"] == "index on worker-2", "the lost lease's release left the new holder's lock alone"
    names = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [n for n in names if ".tmp-" in n], "the refused write's temp object was removed"


def test_a_stalled_run_whose_lease_nobody_took_renews_before_writing(s3_lake):
    lake = Lake(s3_lake)
    with lake.lock("nightly", lease_s=1.0) as me:
        lease = _stall(lake)
        time.sleep(1.3)  # expired, but no other run came
        lake.write_ref("probe", {"by": "nightly"})
        assert lease.expires_ts > time.time() + 0.5, "the fence renewed the lease before the write"
        assert not lease.lost.is_set() and me["owner"] == "nightly"
    assert Lake(s3_lake).read_ref("probe") == {"by": "nightly"}
