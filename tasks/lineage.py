"""Lineage and run identity: what produced a result (code, config, data, models) (pure but for git)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any


def canonical_hash(value: Any) -> str:
    """sha256 of the canonical JSON of a value (sorted keys, no spaces): equal content, equal hash."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def new_run_id(flow: str, now: dt.datetime | None = None) -> str:
    """Sortable and unique: <UTC time>-<flow>-<random>."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{flow}-{secrets.token_hex(3)}"


@lru_cache(maxsize=1)
def ragloop_version() -> str:
    try:
        return metadata.version("ragloop")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The code's commit (suffixed '-dirty' with uncommitted changes), or 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def base_lineage(config_hash: str) -> dict:
    return {"git_commit": git_commit(), "ragloop_version": ragloop_version(), "config_hash": config_hash}
