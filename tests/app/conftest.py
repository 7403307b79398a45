"""Fixtures of the review app's tests: a review lake and a Starlette TestClient with a session and CSRF token."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from ragloop.app.server import create_app
from tests import review_fixtures as rf


class Client:
    """A TestClient that loaded a page (session cookie) and knows its CSRF token."""

    def __init__(self, app, **kwargs) -> None:
        self.http = TestClient(app, **kwargs)
        self.csrf = None

    def start(self, path: str = "/golden", **kwargs):
        page = self.http.get(path, **kwargs)
        match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
        self.csrf = match.group(1) if match else None
        return page

    def post(self, path: str, body: dict, csrf: str | None = "auto", **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if csrf == "auto":
            csrf = self.csrf
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return self.http.post(path, json=body, headers=headers, **kwargs)


@pytest.fixture
def review_lake(lake_dir):
    return rf.build(lake_dir, 5, hostile=True)


@pytest.fixture
def client(review_lake):
    c = Client(create_app(review_lake["lake"].uri))
    c.start()
    return c
