"""Serve every deployment against the Prefect server in PREFECT_API_URL (`make serve`)."""

from __future__ import annotations

import ragloop.flows  # noqa: F401  (runtime defaults before prefect is imported)
from prefect import serve

from ragloop.deployments.definitions import build_deployments
from ragloop.tasks.settings import load_settings

if __name__ == "__main__":
    serve(*build_deployments(load_settings()))
