"""Shared fixtures: a lake in tmp_path, deterministic fakes, offline runtime defaults."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

import ragloop.flows  # noqa: F401  (offline runtime defaults before anything imports prefect)
from ragloop.tasks import providers
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test sees the developer's RAGLOOP_* variables or writes into the repo."""
    for name in list(os.environ):
        if name.startswith("RAGLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _real_providers():
    """Every test starts and ends with the real providers (tasks.providers); `use_fakes` swaps them."""
    providers.install(None)
    yield
    providers.install(None)


def use_fakes(embedder=None, llm=None) -> None:
    """Build the run's embedder and/or LLM (chain and judge) with these factories (config -> object)
    for the rest of the test, through the one provider seam every flow uses."""
    changes = {name: factory for name, factory in (("embedder", embedder), ("llm", llm)) if factory is not None}
    providers.install(dataclasses.replace(providers.current(), **changes))


@pytest.fixture
def lake_dir(tmp_path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def settings(lake_dir) -> Settings:
    return load_settings(overrides={"lake": str(lake_dir)})


@pytest.fixture
def fake_embedder() -> HashEmbedder:
    return HashEmbedder(dim=32, max_tokens=64)


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    """Create files under root from {relative path: text or bytes}; returns root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def stop_process(proc, timeout: float = 30) -> None:
    """Terminate a helper server started by a test; kill it if it does not exit in time."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def prefect_backend():
    """One throwaway Prefect backend shared by every flow and integration test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
