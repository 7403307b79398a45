"""ragloop stage logic: plain functions and small classes; no Prefect import here."""
