"""An S3 endpoint on 127.0.0.1 for the object-store lake tests: moto in server mode (a real HTTP S3 API, so
pyarrow, LanceDB and boto3 all talk to it as to S3). Endpoint, region and credentials go through the
standard AWS environment variables, never files. Without moto the tests skip, saying why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings

import pytest

from tests.conftest import stop_process

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """The endpoint URL of a moto S3 server for the session, with the AWS_* variables pointing at it."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    try:
        import boto3  # noqa: F401
    except ImportError:
        server = None
    if server is None:
        reason = ("OBJECT-STORE LAKE TESTS SKIPPED: moto[server] or boto3 is not installed "
                  "(pip install -e '.[dev]' installs them)")
        warnings.warn(reason)
        pytest.skip(reason)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=url)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_lake(s3_endpoint) -> str:
    """A fresh bucket; returns the lake URI s3://<bucket>/lake."""
    import boto3

    bucket = f"ragloop-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lake"
