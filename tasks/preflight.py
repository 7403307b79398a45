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
    else:
        found = Path(uri).expanduser()
        if found.exists() and not found.is_dir():
            raise ConfigError(f"lake {uri}: is a file; a lake is a folder (or an object-store URI)")
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
    if lake.uri.startswith("s3://"):
        check_s3_access(lake)


def check_s3_access(lake: Lake, environ=None) -> None:
    """ConfigError when an s3:// lake would fail later for want of settings the bucket check does not need:
    no AWS credentials for boto3 (the run lock's conditional writes), a plain-HTTP endpoint without
    AWS_ALLOW_HTTP=true (LanceDB refuses it, in a Rust error naming neither), or credentials the store refuses
    (a signed read under the lake's prefix)."""
    import os

    import boto3

    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    if endpoint.startswith("http://") and env.get("AWS_ALLOW_HTTP", "").lower() not in ("true", "1"):
        raise ConfigError(f"lake {lake.uri}: the endpoint {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true "
                          "(LanceDB refuses plain HTTP without it)")
    if boto3.Session().get_credentials() is None:
        raise ConfigError(f"lake {lake.uri}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    try:
        lake.fs.get_file_info(lake.root)
    except OSError as exc:
        raise ConfigError(f"lake {lake.uri}: the store refuses these credentials ({str(exc).strip()}); check "
                          "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE") from None


# Commands that only read or act on what earlier runs left in the lake: on a misspelt --lake they must
# not start (and create an empty lake) but say so. index, ingest, run and import-beir create a lake.
EXISTING_LAKE_COMMANDS = ("review", "calibrate", "export", "golden use", "golden list", "golden show", "golden report",
                          "golden diff", "golden export", "rollback", "promote")
# The monitor on a lake without runs reports "nothing to watch" (a new deployment's first pass does), but
# says so on stderr: on a misspelt --lake that is the only sign.
WARN_EMPTY_LAKE_COMMANDS = ("monitor",)
# Commands whose runs may send work to runner.address (README "Runner"): its scheduler must answer first.
RUNNER_COMMANDS = ("index", "run", "synth", "eval", "bakeoff", "import-beir")


def check_scheduler(address: str, timeout_s: float = 10.0) -> None:
    """ConfigError naming runner.address when no Dask scheduler answers there within timeout_s seconds: one
    connection and an `identity` request in Dask's own protocol (distributed.comm), then closed. Something
    else listening (the scheduler's HTTP dashboard on 8787, say) is refused too: the run would hang on it."""
    import asyncio
    import socket

    from distributed.comm import connect, parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme == "tcp":  # a refused port fails at once (distributed's connect retries it until the timeout)
        try:
            host_port = parse_host_port(location)
        except ValueError as exc:
            raise ConfigError(f"runner.address: {address}: not host:port ({exc})") from None
        try:
            socket.create_connection(host_port, timeout=timeout_s).close()
        except ConnectionRefusedError:
            raise ConfigError(f"runner.address: {address}: connection refused (nothing listens there); start a "
                              "scheduler with `dask scheduler`, or check the port (8786 by default)") from None
        except OSError:
            pass  # unreachable or slow: the protocol check below says so within timeout_s

    async def identity() -> object:
        comm = await connect(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout_s))
    except (asyncio.TimeoutError, TimeoutError):
        raise ConfigError(f"runner.address: {address}: no Dask scheduler answered within {timeout_s:.0f} s (is this "
                          "the scheduler's port, 8786 by default, and not its dashboard's, 8787?)") from None
    except OSError as exc:  # refused, unreachable (CommClosedError is one too: it hung up mid-handshake)
        raise ConfigError(f"runner.address: {address}: no Dask scheduler there ({type(exc).__name__}: "
                          f"{str(exc).strip() or 'connection closed'}); start one with `dask scheduler`") from None
    except Exception:  # something answered, but its bytes are no Dask frames (an HTTP server read as a length)
        raise ConfigError(f"runner.address: {address}: something answers there, but not in Dask's protocol (is this "
                          "the scheduler's port, 8786 by default, and not its dashboard's, 8787, or another "
                          "server's?)") from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise ConfigError(f"runner.address: {address}: answers, but not as a Dask scheduler (it says it is "
                          f"{reply.get('type') if isinstance(reply, dict) else type(reply).__name__!r})")


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
        from ragloop.tasks.production import log_files

        log_files(Path(path))  # a missing file, or a folder without logs, is a usage error
    if command in RUNNER_COMMANDS and settings.runner.kind == "dask" and settings.runner.address:
        check_scheduler(settings.runner.address)
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
