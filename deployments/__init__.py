"""Prefect deployments as code: nightly, prompt-changed, and on-demand index / eval."""
