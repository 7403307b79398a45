"""Usage checks the CLI runs before any flow starts (reads files and the lake's refs only; no prefect, no model):
each failure is a ConfigError whose message is the one line the user sees (exit 2)."""

from __future__ import annotations

from pathlib import Path

from ragloop.tasks import promotion
from ragloop.tasks.settings import ConfigError, Settings, check_sources
from ragloop.tasks.storage import Lake


def open_lake(uri: str) -> Lake:
    """The lake at `uri`; ConfigError when the URI cannot be resolved (an unknown scheme, a bad bucket URI),
    or, for an object store (s3://, gs://, ...), when its bucket is missing or the endpoint cannot be reached."""
    try:
        lake = Lake(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError or ValueError depending on the scheme
        raise ConfigError(f"lake {uri}: cannot be opened ({exc})") from None
    if "://" in uri:
        check_bucket(lake)
    return lake


def check_bucket(lake: Lake) -> None:
    """ConfigError when an object-store lake's bucket does not exist, or its endpoint does not answer or
    refuses these credentials (one HeadBucket through pyarrow; the store's own retries apply, a few seconds).
    A run never creates a bucket: buckets are infrastructure (region, retention, access), made on purpose."""
    import pyarrow.fs as pafs

    bucket = lake.root.split("/", 1)[0]
    try:
        found = lake.fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError as exc:
        raise ConfigError(f"lake {lake.uri}: cannot reach bucket {bucket!r} ({str(exc).strip()}); check the endpoint "
                          "(AWS_ENDPOINT_URL) and credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE)") from None
    if not found:
        raise ConfigError(f"lake {lake.uri}: bucket {bucket!r} does not exist at this endpoint: create it first "
                          "(ragloop never creates buckets), or check --lake and AWS_ENDPOINT_URL")


# Commands that only read or act on what earlier runs left in the lake: on a misspelt --lake they must
# not start (and create an empty lake) but say so. index, ingest, run and import-beir create a lake.
EXISTING_LAKE_COMMANDS = ("review", "calibrate", "export", "golden use", "golden list", "golden show", "golden report",
                          "golden diff", "golden export", "rollback", "promote")
# The monitor on a lake without runs reports "nothing to watch" (a new deployment's first pass does), but
# says so on stderr: on a misspelt --lake that is the only sign.
WARN_EMPTY_LAKE_COMMANDS = ("monitor",)


def check_lake_exists(lake: Lake) -> None:
    """ConfigError when the lake is not there or has no runs yet (reads only; creates nothing)."""
    if not lake.exists(lake.root):
        raise ConfigError(f"lake {lake.uri}: not found: run `ragloop index` first (or check --lake)")
    if not lake.has_runs():
        raise ConfigError(f"lake {lake.uri}: no runs yet: run `ragloop index` first (or check --lake)")


def check_index(lake: Lake) -> None:
    """ConfigError when the lake holds no index (neither served nor pending) for synth or eval to read."""
    refs = promotion.Refs(lake)
    if refs.serving() is None and refs.candidate() is None:
        raise ConfigError(f"the lake {lake.uri} has no index yet: run `ragloop index` first (or check --lake)")


def check_index_choice(lake: Lake, which: str) -> None:
    """ConfigError when `eval --index serving|candidate` names an index the lake does not have (whether it is
    the configured embedder's table is checked in the stage, once the embedder is known)."""
    refs = promotion.Refs(lake)
    if which == "candidate" and refs.candidate() is None:
        raise ConfigError(f"--index candidate: no candidate index pending in {lake.uri} (index with a new embedder or "
                          "chunker to build one; `--index serving` or `auto` scores the served index)")
    if which == "serving" and refs.serving() is None:
        raise ConfigError(f"--index serving: nothing is served yet in {lake.uri} (`--index candidate` or `auto` "
                          "scores the pending candidate)")


def check_path(path: str, what: str) -> None:
    """ConfigError when a file or directory the command reads does not exist."""
    if not Path(path).expanduser().exists():
        raise ConfigError(f"{what}: not found: {path}")


def check_synth(settings: Settings) -> None:
    """The prompts synth renders parse and are all there."""
    from ragloop.tasks.synth_run import load_synth_prompts

    load_synth_prompts(settings.prompts_dir)


def check_eval(settings: Settings, retrieval_only: bool) -> None:
    """The prompts the chain under test renders parse and are all there; an eval target imports (Python)
    or has its header variables set and accepts connections (HTTP), tasks.targets.check_target."""
    from ragloop.tasks.eval_run import select_prompts, wanted_prompts

    if settings.eval.target is not None:
        from ragloop.tasks.targets import check_target

        check_target(settings.eval.target)
    wanted = wanted_prompts(settings.eval, retrieval_only)
    if wanted:
        select_prompts(wanted, settings.prompts_dir)


def check_import_rows(path: str) -> None:
    """Every line of a golden import file parses and validates (tasks.golden_io): a bad row is a usage
    error naming its line before Prefect starts. References are checked against the index in the stage."""
    from ragloop.tasks import golden_io

    try:
        golden_io.read_import_file(Path(path))
    except golden_io.GoldenImportError as exc:
        raise ConfigError(str(exc)) from exc


def check_prefect_server(api_url: str | None, timeout_s: float = 5.0) -> str:
    """The Prefect API URL a command that registers deployments needs (`deploy`): set, and its server
    answering `GET {api_url}/health` within timeout_s seconds. Returns the URL; ConfigError otherwise (the
    ephemeral server a flow run starts has no workers, schedules or triggers, so deploying to it is a mistake)."""
    if not api_url:
        raise ConfigError("deploy needs a Prefect server: start one (`make server`) and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api")
    import httpx

    try:
        ok = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError as exc:
        raise ConfigError(f"PREFECT_API_URL={api_url}: no Prefect server answers there ({type(exc).__name__}); "
                          "start one (`make server`)") from None
    if not ok:
        raise ConfigError(f"PREFECT_API_URL={api_url}: {api_url.rstrip('/')}/health does not answer 200; is it a Prefect API URL?")
    return api_url


def preflight(command: str, settings: Settings, *, sources: list[str] | None = None, golden: str | None = None,
              retrieval_only: bool = False, path: str | None = None, index: str = "auto") -> list[str]:
    """The cheap checks of one CLI command, in the order a user would fix them: the lake URI, the paths
    given, the prompts, then what the lake must already hold (an index; the golden set eval names).
    Raises ConfigError; returns warnings for the user (e.g. the monitor pointed at a lake with no runs)."""
    lake = open_lake(settings.lake)
    warnings: list[str] = []
    if command in EXISTING_LAKE_COMMANDS:
        check_lake_exists(lake)
    if command in WARN_EMPTY_LAKE_COMMANDS and not (lake.exists(lake.root) and lake.has_runs()):
        warnings.append(f"lake {lake.uri} has no runs yet: nothing to watch (check --lake)")
    if command in ("ingest", "index", "run"):
        check_sources(list(sources or settings.ingest.sources))
    if command == "import-beir" and path is not None:
        check_path(path, "import-beir")
    if command == "golden import" and path is not None:
        check_path(path, "golden import")
        check_import_rows(path)
    if command == "logs import" and path is not None:
        from pathlib import Path

        from ragloop.tasks.production import log_files

        log_files(Path(path))  # a missing file, or a folder without logs, is a usage error
    if command in ("synth", "run"):
        check_synth(settings)
    if command in ("eval", "run"):
        check_eval(settings, retrieval_only)
    if command in ("synth", "eval", "golden import"):
        check_index(lake)
    if command == "eval":
        from ragloop.tasks.eval_run import resolve_golden

        resolve_golden(promotion.Refs(lake), golden or "latest")
        check_index_choice(lake, index)
    return warnings
