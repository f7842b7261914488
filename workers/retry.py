"""Retrying one provider call with tenacity, within the request's deadline.

Exponential backoff with full jitter, capped by ``max_attempts`` and by a time budget
(the smaller of ``max_time_s`` and the time left before the deadline), so a retry never
starts when its wait would end past either. A provider's ``Retry-After`` raises the wait
to at least what it asked for. Only errors marked retryable are retried: timeouts,
connect errors, 408/409/429 and 5xx; a 4xx caused by the request is final.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from schemas.config import RetryConfig
from schemas.errors import BrokerError, CircuitOpen

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """Worth another attempt on the same deployment (an open breaker is not)."""
    return isinstance(exc, BrokerError) and exc.retryable and not isinstance(exc, CircuitOpen)


class _Backoff:
    """Full-jitter exponential backoff, but never shorter than the provider's Retry-After."""

    def __init__(self, policy: RetryConfig) -> None:
        self._jitter = wait_random_exponential(
            multiplier=policy.initial_backoff_s, max=policy.max_backoff_s
        )

    def __call__(self, state: RetryCallState) -> float:
        wait: float = self._jitter(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, BrokerError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryConfig,
    budget_s: float | None,
    on_retry: Callable[[BrokerError, float], None] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, fails for good, or retries run out.

    The first attempt runs bare: most calls succeed, and tenacity's bookkeeping costs a
    quarter of a worker's throughput when paid on every request.
    """
    started = time.monotonic()
    try:
        return await attempt()
    except BrokerError as exc:
        if policy.max_attempts == 1 or not is_retryable(exc):
            raise
        first_error = exc
    budget = policy.max_time_s if budget_s is None else min(policy.max_time_s, budget_s)
    wait = random.uniform(0, policy.initial_backoff_s)
    if first_error.retry_after is not None:
        wait = max(wait, first_error.retry_after)
    elapsed = time.monotonic() - started
    if elapsed + wait >= budget:
        raise first_error
    if on_retry is not None:
        on_retry(first_error, wait)
    await asyncio.sleep(wait)
    budget -= time.monotonic() - started
    policy = msgspec.structs.replace(
        policy,
        max_attempts=policy.max_attempts - 1,
        initial_backoff_s=min(policy.initial_backoff_s * 2, policy.max_backoff_s),
    )

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(exc, BrokerError):
            on_retry(exc, state.upcoming_sleep)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts) | stop_before_delay(budget),
        wait=_Backoff(policy),
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def run() -> T:  # tenacity awaits only what a coroutine *function* returns
        return await attempt()

    return await retrying(run)
