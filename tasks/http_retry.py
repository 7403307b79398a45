"""One HTTP request under a concurrency limit and a whole-request deadline, retried on timeouts,
transport errors, 429 and 5xx with exponential backoff (Retry-After honoured): the loop the
OpenAI-compatible LLM and embeddings clients and the HTTP eval target share (I/O, httpx)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import httpx

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 60.0  # a server asking for a longer pause is treated as down, not waited for


class GaveUp(Exception):
    """Every attempt failed (timeout, transport error, 429/5xx), or the server asked for a pause longer
    than MAX_RETRY_AFTER_S; the message names the URL and the last reason, never a header value."""


@dataclass(frozen=True)
class RetryPolicy:
    """timeout_s bounds each attempt whole (headers and body); max_retries attempts follow the first;
    backoff_s is the first pause (seconds), doubled per retry."""

    timeout_s: float
    max_retries: int
    backoff_s: float

    def backoff(self, attempt: int) -> float:
        """Seconds before retry `attempt` + 1: exponential with "equal jitter" (half fixed, half random),
        so parallel callers spread out."""
        base = self.backoff_s * (2 ** attempt)
        return base / 2 + random.uniform(0, base / 2)


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def retryable(status: int) -> bool:
    """429 and 5xx are worth another attempt; any other status is the server's answer."""
    return status == 429 or status >= 500


async def send(client: httpx.AsyncClient, semaphore: asyncio.Semaphore, method: str, url: str, policy: RetryPolicy,
               *, headers: Callable[[], Mapping[str, str]] | None = None, before_attempt: Callable[[], None] | None = None,
               **request: Any) -> tuple[httpx.Response, float]:
    """(response, latency in ms of that attempt, queueing and retries excluded) for the first response
    that is not retryable: a status below 400 or a 4xx other than 429 (the caller decides what those
    mean). `headers()` is called per attempt (a key read from the environment each time);
    `before_attempt()` runs inside the concurrency slot and may raise to stop early. `request`: httpx
    keyword arguments (json, params). Raises GaveUp."""
    attempts = policy.max_retries + 1
    for attempt in range(attempts):
        retry_after = None
        try:
            async with semaphore:
                if before_attempt is not None:
                    before_attempt()
                start = time.perf_counter()
                # httpx's timeout bounds each read, not the request: a server trickling its body would
                # hold the request open forever. policy.timeout_s bounds the whole request.
                resp = await asyncio.wait_for(
                    client.request(method, url, headers=dict(headers() if headers else {}), **request), policy.timeout_s)
                latency_ms = (time.perf_counter() - start) * 1000
        except (httpx.TimeoutException, asyncio.TimeoutError):
            reason = f"timed out after {policy.timeout_s:g}s"
        except httpx.TransportError as exc:
            reason = type(exc).__name__
        else:
            if not retryable(resp.status_code):
                return resp, latency_ms
            reason = f"HTTP {resp.status_code}"
            retry_after = retry_after_s(resp.headers.get("retry-after"))
        if attempt + 1 >= attempts:
            raise GaveUp(f"{url} failed {attempts} times; last: {reason}")
        if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
            raise GaveUp(f"{url} asked to retry after {retry_after:.0f}s ({reason})")
        delay = retry_after if retry_after is not None else policy.backoff(attempt)
        log.warning("%s: %s; retry %d/%d in %.2fs", url, reason, attempt + 1, attempts - 1, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def run_sync(coro_factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, also when the caller is inside an event loop
    (then on a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()
