"""The lake's pure helpers: an object-store lease's expiry and S3 object paths."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ragloop.tasks.storage import lease_expired, s3_location

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("holder, expired", [
    ({"expires_at": "2026-06-01T12:00:01+00:00"}, False),
    ({"expires_at": "2026-06-01T11:59:59+00:00"}, True),
    ({"expires_at": "2026-06-01T14:00:01+02:00"}, False),  # the same instant in another zone, one second ahead
    ({"owner": "a local lock file copied up"}, True),
    ({"expires_at": "not a time"}, True),
    (None, True),
    ({}, True),
])
def test_a_lease_is_expired_only_past_its_expires_at(holder, expired):
    assert lease_expired(holder, NOW) is expired


def test_s3_location_splits_bucket_and_key():
    assert s3_location("bucket/lake/locks/run.lock") == ("bucket", "lake/locks/run.lock")
    with pytest.raises(ValueError, match="not an S3 object path"):
        s3_location("bucket")
