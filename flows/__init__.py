"""Prefect orchestration of ragloop's stages; importing this package sets offline runtime defaults."""

import os

# Offline and quiet by default; any of these can be overridden from the environment.
_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A fresh Prefect home migrates its SQLite database on first start: give it time.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "RAGAS_DO_NOT_TRACK": "true",
    "LANCEDB_LOG": "error",
    # The Dask runner's scheduler and workers log their start and stop at INFO through Prefect's console
    # handler (~40 lines a run): warnings and errors only, unless DASK_LOGGING__DISTRIBUTED says otherwise.
    "DASK_LOGGING__DISTRIBUTED": "warning",
}
for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)
if not os.environ.get("PREFECT_API_URL"):
    # No server configured: run against a temporary local one (Prefect's ephemeral mode).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
