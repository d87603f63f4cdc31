"""Bounded, classified retries for the bootstrap's AWS calls (snapshot reads, S3 uploads, loader calls).

Room in the design: the bootstrap's share of DESIGN rule 6. botocore's own retries are off (`daemon.aws`), so
every failure is seen here: retryable ones (`daemon.aws.classify_aws_error`: throttling, 5xx, timeouts, dropped
connections) back off with full jitter, a bounded number of times; anything else, or the last failure, is
raised. A bootstrap is a one-off job: it stops loudly rather than waiting forever like the streaming pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from daemon.aws import classify_aws_error
from daemon.sinks.base import full_jitter

log = structlog.get_logger("daemon.bootstrap")
T = TypeVar("T")


async def with_retries(
    action: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = 8,
    initial_seconds: float = 0.2,
    max_seconds: float = 10.0,
    only: frozenset[str] | None = None,
) -> T:
    """Run `action`; retry retryable AWS failures up to `attempts` calls in all. `only` limits the retried
    reasons (a call that is not idempotent is retried only when the service refused it, e.g. `throttling`)."""
    attempt = 0
    while True:
        try:
            return await action()
        except Exception as exc:
            attempt += 1
            cls = classify_aws_error(exc)
            if not cls.retryable or attempt >= attempts or (only is not None and cls.reason not in only):
                raise
            delay = full_jitter(attempt, initial_seconds, max_seconds)
            log.warning(
                "bootstrap call failed, retrying",
                what=what,
                reason=cls.reason,
                attempt=attempt,
                delay=round(delay, 3),
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            await asyncio.sleep(delay)
